"""Built-in llmsim backends, registered through the `llmsim` entry-point group like any plugin."""
