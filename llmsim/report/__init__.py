"""Report builders: markdown (and later HTML) from a run folder."""
