"""Built-in llmsim backends, registered through the `llmsim` entry-point group like any plugin.

Measured: `cpu` (this machine, one process or several through torch.distributed), `cuda` (NVIDIA GPUs),
`xla` (torch_xla: TPU, or the PJRT CPU device). Modeled: `roofline` (the cost model's closed form) and
`cluster` (the SimPy simulation of the same work). Each is a thin module over the core (llmsim.measure,
llmsim.modeled, llmsim.sim); `example/` is a third-party plugin package for plugin authors to copy.
"""
