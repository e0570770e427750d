"""Real multi-device runs of the workload through torch.distributed.

`spec` says what a worker runs (and which strategies cannot run here, with the reason),
`parallelize` applies torch's own parallelisms to the one Transformer (DDP, FSDP2 `fully_shard`,
DTensor tensor/sequence parallel, `torch.distributed.pipelining`), `rank` is one rank's share of the
step (the single-process WorkloadStep, parallelized), `profiling` measures exposed communication from
one profiled step, `faults` injects failures for tests, `worker` is the per-rank program
(`python -m llmsim.distributed.worker`, also what `torchrun` starts on several nodes; it times the
steps with llmsim.measure), and `launch` starts the workers on this host, collects their records and
cleans up after failures.
"""

from llmsim.distributed.spec import RankRecord, WorkerSpec, unsupported_reason

__all__ = ["RankRecord", "WorkerSpec", "unsupported_reason"]
