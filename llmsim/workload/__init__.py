"""The Transformer workload: presets, the model, one step of it, and its meta-device profile."""
