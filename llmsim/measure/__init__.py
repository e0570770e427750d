"""How a measured backend measures: written once, used by the cpu, cuda and xla backends and by every
rank of a distributed run (llmsim.distributed.worker).

* `device`: one small object per device type (cpu; cuda with a synchronising or an event clock; xla)
  that owns the clock, how to wait for the device and how to measure its memory; `rank_device` picks
  a distributed rank's.
* `loop`: `time_steps`, the warm-up and the timed steps with their marks (`first_token`,
  `backward_done`), with an optional energy meter around the timed steps.
* `summary`: mean step time, p50/p99 latency, TTFT/TPOT and the optimizer's share; over several ranks
  the slowest rank per step and the profiled communication and bubble shares.
* `memory`: peak memory of a span: the resident-set high-water mark (`PeakRss`), the CUDA allocator's
  peak, what XLA reports.
* `row`: `measured_result`, a measured backend's result row (columns, extras, then the derived ones).
* `host_probes`: this host's peak FLOP/s, streaming bandwidth and per-operator cost, probed once and
  cached (the cpu backend's MFU and `llmsim calibrate` read them).

What stays in a backend plugin is what only it knows: its settings and availability, which device (and
so which clock) it runs on, and its own extras (NVML energy and the GPU's catalog match for cuda; compile
metrics and the PJRT device for xla; modeled power and the single-process C of a distributed run for
cpu). torch_xla and NVML are never imported here at import time.
"""
