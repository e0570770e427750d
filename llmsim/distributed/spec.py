"""What one distributed run executes (WorkerSpec), what each rank reports (RankRecord), and which
strategy combinations are not run here (and why).

Both are plain pydantic models so that the spec travels to worker processes, and to other nodes under
torchrun, as a JSON file, and the records come back the same way: no pickling of live objects.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from llmsim.config import SharingChoice, Strategy, Workload
from llmsim.strategy import Layout

# torch.distributed backend per device type: the code path takes a device type so that NCCL on CUDA
# is the same program as gloo on CPU.
PG_BACKENDS: dict[str, str] = {"cpu": "gloo", "cuda": "nccl"}


# What rank 0 writes into the run's folder: the spec and every rank's RankRecord (launch reads it).
RESULT_FILE = "result.json"

# The launcher's pid, passed to the ranks it starts: a rank whose parent is no longer that process was
# orphaned before it could ask to die with its parent (worker._exit_with_parent).
LAUNCHER_PID_ENV = "LLMSIM_LAUNCHER_PID"


class WorkerSpec(BaseModel):
    """Everything a rank needs to build the workload, parallelize it and time it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workload: Workload
    sharing: SharingChoice
    strategy: Strategy
    dp: int
    tp: int = 1
    pp: int = 1
    cp: int = 1
    micro_batch: int = 1
    microbatches: int = 1
    stage_layers: tuple[int, ...] = Field((), description="layers of each pipeline stage (llmsim.stages); "
                                                          "() = the default split")
    seed: int = 0
    steps: int = Field(5, ge=1)
    warmup: int = Field(2, ge=0)
    threads: int | None = Field(None, ge=1, description="intra-op threads per rank")
    device_type: str = "cpu"
    profile_comm: bool = Field(True, description="one extra profiled step per rank to measure exposed communication")

    @classmethod
    def from_layout(cls, workload: Workload, sharing: SharingChoice, strategy: Strategy, layout: Layout,
                    **settings: object) -> "WorkerSpec":
        return cls(workload=workload, sharing=sharing, strategy=strategy, dp=layout.dp, tp=layout.tp, pp=layout.pp, cp=layout.cp,
                   micro_batch=layout.micro_batch, microbatches=layout.microbatches,
                   stage_layers=layout.stage_layers, **settings)  # type: ignore[arg-type]

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp * self.cp


class RankRecord(BaseModel):
    """One rank's measurements. Times are per timed step, taken after a barrier (so ranks start together)."""

    model_config = ConfigDict(extra="forbid")

    rank: int
    host: str
    threads: int
    step_times_s: list[float]
    optimizer_times_s: list[float] = Field(default_factory=list, description="train: after backward + grad sync")
    first_token_times_s: list[float] = Field(default_factory=list, description="decode: the prefill")
    losses: list[float] = Field(default_factory=list, description="train: the global loss of each step (all steps)")
    peak_memory_bytes: float
    memory_method: str
    comm_exposed_s: float | None = Field(None, description="collectives not overlapped by compute, profiled step")
    p2p_exposed_s: float | None = Field(None, description="pipeline send/recv (incl. waiting: bubble), profiled step")
    comm_busy_s: float | None = Field(None, description="all communication time, overlapped or not, profiled step")
    profiled_step_s: float | None = None
    notes: dict[str, str] = Field(default_factory=dict)
    expert_tokens: list[list[int]] = Field(default_factory=list, description="MoE: tokens routed to each expert "
                                           "per distinct MoE layer over every step run, all ranks (rank 0 only)")


def unsupported_reason(spec: WorkerSpec) -> str | None:
    """Why this strategy is not run by the measured multi-process backend, or None when it is.

    Every combination here is one torch.distributed does not offer on this path (yet); the caller turns
    the reason into a `skipped` row, so a sweep over strategies still runs the others.
    """
    s, mode = spec.strategy, spec.workload.mode
    if spec.cp > 1:
        return ("context parallelism (cp > 1) is not run by the measured backend: torch's context_parallel "
                "(ring attention) needs CUDA SDPA kernels (flash / memory-efficient), not gloo on CPU")
    if spec.device_type not in PG_BACKENDS:
        return f"device type {spec.device_type!r} has no torch.distributed backend here (allowed: {', '.join(PG_BACKENDS)})"
    if spec.tp > 1 and spec.sharing.lora is not None:
        return "tensor parallelism with LoRA adapters is not supported (the adapters wrap the projections TP shards)"
    moe = spec.workload.model.moe
    if moe is not None:
        if s.sp:
            return ("sequence parallelism with mixture-of-experts layers is not run by the measured backend (the "
                    "MoE layer takes the whole sequence on every TP rank): use sp: false")
        if s.expert_tp not in (1, spec.tp):
            return (f"etp={s.expert_tp}: the measured backend splits the experts over all the TP ranks (etp = "
                    f"tp = {spec.tp}) or none (etp = 1)")
        if s.ep > 1 and spec.dp % s.ep:
            return (f"ep={s.ep}: the measured backend carves the expert group out of the data-parallel ranks "
                    f"only; ep must divide dp={spec.dp}")
        if s.ep > 1 and s.zero > 0:
            return "expert parallelism with ZeRO/FSDP (zero > 0) is not implemented in the measured backend"
    if s.sp and mode == "decode":
        return "sequence parallelism shards the sequence; decode generates one token at a time (use sp: false)"
    if spec.pp > 1:
        if mode != "train":
            return ("pipeline parallelism is run for training only: torch.distributed.pipelining schedules "
                    "drive forward+backward over micro-batches; prefill/decode with a KV cache are not staged")
        if spec.tp > 1 and s.sp:
            return ("pipeline x tensor parallelism runs without sequence parallelism here (sp hands sequence-"
                    "sharded DTensors between stages, which the pipeline's send/recv does not take): use sp: false")
        if s.zero > 0 and spec.tp > 1:
            return ("pipeline x tensor parallel x ZeRO (pp, tp and zero together) is not implemented in the "
                    "measured backend")
        if spec.sharing.layer_groups is not None and spec.sharing.layer_groups < spec.workload.model.layers:
            return ("cross-layer sharing (layer_groups) would share one block across pipeline stages, which "
                    "torch.distributed.pipelining cannot do")
    return None
