"""How a measured backend measures: written once, used by the cpu, cuda and xla backends and by every
rank of a distributed run (llmsim.distributed.worker).

| module | what lives there |
| --- | --- |
| `device` | one small object per device type (cpu, cuda with a synchronising or an event clock, xla): its clock, how to wait for it, how to measure its memory; `rank_device` for a distributed rank |
| `loop` | `time_steps`: the warm-up and the timed steps with their marks (`first_token`, `backward_done`) and an optional energy meter around them |
| `summary` | step time, p50/p99 latency, TTFT/TPOT and the optimizer's share from the timings; over several ranks the slowest rank per step and the profiled communication and bubble shares |
| `memory` | peak memory of a span: the resident-set high-water mark (`PeakRss`), the CUDA allocator's peak, what XLA reports |
| `row` | `measured_result`: a measured backend's result row, columns and extras, then the derived ones |
| `host_probes` | this host's peak FLOP/s, streaming bandwidth and per-operator cost, probed once and cached |

What stays in a backend plugin is what only it knows: its settings and availability, which device (and
so which clock) it runs on, and its own extras (NVML energy and the GPU's catalog match for cuda; compile
metrics and the PJRT device for xla; modeled power and the single-process C of a distributed run for cpu).
torch_xla and NVML are never imported here at import time.
"""
