"""The workload profile as data: what one step costs per (phase, region, kind), with no torch in sight.

`WorkloadProfile` is what the cost model prices and what the tracer (llmsim.workload.trace, torch on the
meta device) fills in; kept apart from the tracer so that a planner or a sweep that already holds a profile
(passed in, or read back by llmsim.workload.profile_store) never imports torch (~1.5 s) nor torch._dynamo
(~1.4 s, which the meta-device trace pulls in: llmsim.workload.trace).
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("matmul", "attention", "other")
REGIONS = ("embed", "layers", "experts", "head")


@dataclass
class OpTotals:
    """FLOPs, HBM bytes and op count of the ops of one (phase, region, kind).

    `bytes` is what eager PyTorch moves: every op reads its inputs and writes its outputs. `fused_bytes`
    (the `other` kind only; None = the same as `bytes`) is what a compiler that fuses the elementwise chains
    between two GEMMs into one kernel moves (see _FusionTracker): each chain's external inputs, read once,
    and the outputs something outside the chain needs. `engine_bytes` (None = the same as `traffic(True)`) is what
    a serving engine moves where it runs an op unlike the trace: a model with LoRA traced for inference, whose
    scale and add a serving engine folds into the adapter's GEMMs (trace._OpRecorder._record_engine); only the
    serving iteration reads it (costmodel.iteration.token_costs)."""

    flops: float = 0.0
    bytes: float = 0.0
    count: int = 0
    fused_bytes: float | None = None
    engine_bytes: float | None = None

    def add(self, other: "OpTotals", scale: float = 1.0) -> None:
        if self.engine_bytes is not None or other.engine_bytes is not None:
            self.engine_bytes = self.served() + other.served() * scale
        if self.fused_bytes is not None or other.fused_bytes is not None:
            self.fused_bytes = self.traffic(True) + other.traffic(True) * scale
        self.flops += other.flops * scale
        self.bytes += other.bytes * scale
        self.count += int(round(other.count * scale))

    def traffic(self, compiled: bool) -> float:
        """HBM bytes of these ops, run eagerly (compiled False) or compiled with fusion (True)."""
        return self.fused_bytes if compiled and self.fused_bytes is not None else self.bytes

    def served(self) -> float:
        """HBM bytes of these ops in a serving engine: fused elementwise chains, LoRA inside its GEMMs."""
        return self.engine_bytes if self.engine_bytes is not None else self.traffic(True)

    def scaled(self, scale: float) -> "OpTotals":
        """These totals times `scale` (a profile scaled to another depth: costmodel.scaling)."""
        return OpTotals(flops=self.flops * scale, bytes=self.bytes * scale, count=int(round(self.count * scale)),
                        fused_bytes=None if self.fused_bytes is None else self.fused_bytes * scale,
                        engine_bytes=None if self.engine_bytes is None else self.engine_bytes * scale)


@dataclass(frozen=True)
class WorkloadProfile:
    """Costs of one step of the whole workload on one device (no parallelism applied).

    `ops[(phase, region, kind)]` holds FLOPs, bytes and op counts. The cost model divides these
    by the parallel degrees; it never needs torch again.
    """

    mode: str
    dtype: str
    batch: int
    seq_len: int
    layers: int
    tokens_per_step: int
    params: int                 # unique parameters, after sharing
    trainable_params: int
    param_bytes: int            # unique parameter bytes in the workload dtype
    trainable_param_bytes: int
    layer_params: int           # parameters of the distinct transformer blocks (all of them)
    embed_params: int           # token/position/type embeddings + untied head
    activation_bytes: int       # saved for backward over the whole batch (train), 0 otherwise
    activation_bytes_per_layer: int
    kv_cache_bytes: int         # decode/prefill of a decoder: the whole batch's cache
    ops: dict[tuple[str, str, str], OpTotals] = field(default_factory=dict)
    moe_layers: int = 0         # MoE layers in the full depth (0 = dense)
    expert_params: int = 0      # parameters of all routed experts, all layers
    active_params: int = 0      # parameters one token touches (non-expert + top_k routed + shared); = params dense
    # saved for backward inside the layers, all of them (train): activation_bytes_per_layer is it // layers; kept
    # whole so that a profile taken to another depth from layers that differ (LoRA's first) floors it as a trace
    activation_bytes_in_layers: int = 0

    def flops(self, phase: str | None = None, kind: str | None = None, region: str | None = None) -> float:
        return sum(t.flops for (p, r, k), t in self.ops.items()
                   if (phase is None or p == phase) and (kind is None or k == kind)
                   and (region is None or r == region))

    def bytes(self, phase: str | None = None, kind: str | None = None, region: str | None = None) -> float:
        return sum(t.bytes for (p, r, k), t in self.ops.items()
                   if (phase is None or p == phase) and (kind is None or k == kind)
                   and (region is None or r == region))

    @property
    def model_flops_per_step(self) -> float:
        """FLOPs of the step as traced (matmul + attention), the numerator of MFU."""
        return self.flops()

    def flops_by_kind(self) -> dict[str, float]:
        return {kind: self.flops(kind=kind) for kind in KINDS}

