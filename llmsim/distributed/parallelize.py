"""torch's own parallelisms applied to the one Transformer of `llmsim.workload.model`.

Nothing here communicates by itself: every byte moves through torch.distributed (DDP's reducer,
FSDP2 `fully_shard`, DTensor tensor/sequence parallel styles, `torch.distributed.pipelining`, and
plain c10d collectives on process groups of a DeviceMesh), so the measured times are torch's.

Layout of ranks: a DeviceMesh of shape (pp, dp, tp), tensor parallel innermost (neighbouring ranks,
the fastest link on a real node), pipeline outermost (the least traffic).

Fused projections under tensor parallelism. `attn.qkv` holds [q; k; v] in one weight (and a gated
`mlp.fc` holds [gate; up]). ColwiseParallel cuts the output dimension into `tp` contiguous pieces,
which would hand rank 0 all of q and half of k. Before sharding we therefore permute the rows into a
per-shard layout [q_0; k_0; v_0 | q_1; k_1; v_1 | ...], so that each contiguous piece holds exactly
that rank's heads (of any head_dim: the out projection's input, heads*head_dim wide, is cut along the same
heads). With grouped-query attention and tp > kv_heads each KV head is needed by tp/kv_heads
ranks; its rows are then replicated into each of those shards (the model's parameter count as reported
stays the one of `build_model`) and their gradients are summed over the ranks sharing them after
backward, so the replicas stay equal and the step is the single-device step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from llmsim.stages import default_split
from llmsim.workload.model import Block, Transformer
from llmsim.workload.moe import MoELayer

# DTensor (torch.distributed.tensor) is imported where tensor parallelism needs it: it costs a second
# or more of start-up per rank, which DDP and pipeline runs do not need to pay.
MESH_DIMS = ("pp", "dp", "tp")


def build_mesh(device_type: str, pp: int, dp: int, tp: int) -> DeviceMesh:
    """The (pp, dp, tp) mesh over the default process group (already initialized by the worker)."""
    return init_device_mesh(device_type, (pp, dp, tp), mesh_dim_names=MESH_DIMS)


def _local(t: torch.Tensor) -> torch.Tensor:
    """The rank-local storage of a tensor or DTensor (in-place ops on it change the parameter/grad)."""
    local = getattr(t, "_local_tensor", None)  # a DTensor's shard; DTensor exposes no public in-place view
    return t if local is None else local


# ------------------------------------------------------------------------------------- tensor parallel
def qkv_shard_rows(heads: int, kv_heads: int, head_dim: int, tp: int) -> list[int]:
    """Row indices of the fused [q; k; v] weight in per-shard order (see module docstring)."""
    q_per = heads // tp
    rows: list[int] = []
    k_base, v_base = heads * head_dim, (heads + kv_heads) * head_dim
    for r in range(tp):
        kv = range(r * kv_heads // tp, (r + 1) * kv_heads // tp) if kv_heads >= tp else [r * kv_heads // tp]
        for h in range(r * q_per, (r + 1) * q_per):
            rows += range(h * head_dim, (h + 1) * head_dim)
        for base in (k_base, v_base):
            for h in kv:
                rows += range(base + h * head_dim, base + (h + 1) * head_dim)
    return rows


def swiglu_shard_rows(ffn: int, tp: int) -> list[int]:
    """Row indices of the fused [gate; up] weight so that each shard holds [gate_r; up_r]."""
    per = ffn // tp
    rows: list[int] = []
    for r in range(tp):
        rows += range(r * per, (r + 1) * per)
        rows += range(ffn + r * per, ffn + (r + 1) * per)
    return rows


def _relayout(parent: nn.Module, name: str, rows: list[int]) -> None:
    """Replace parent.<name> (an nn.Linear) by one whose output rows are `rows` of the original."""
    old: nn.Linear = getattr(parent, name)
    index = torch.tensor(rows, device=old.weight.device)
    new = nn.Linear(old.in_features, len(rows), bias=old.bias is not None,
                    device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight.index_select(0, index))
        if old.bias is not None:
            new.bias.copy_(old.bias.index_select(0, index))
    new.weight.requires_grad_(old.weight.requires_grad)
    setattr(parent, name, new)


@dataclass
class TensorParallelState:
    """What a TP step needs after backward: the replicated KV rows whose gradients must be summed."""

    kv_sync: list[tuple[nn.Linear, int, dist.ProcessGroup]] = field(default_factory=list)
    vocab_parallel: bool = False  # embedding and LM head split over the vocabulary (loss_parallel needed)
    # q/k head norms (qk_norm): one head_dim weight shared by every head, replicated on the TP ranks, each
    # of which sees only its own heads; their gradients are partial sums over the TP group.
    head_norms: list[nn.Parameter] = field(default_factory=list)
    tp_group: dist.ProcessGroup | None = None

    def sync_replicated_kv(self) -> None:
        """Sum the gradients of KV rows replicated across ranks (tp > kv_heads), keeping the copies equal,
        and those of the q/k head norms over the TP group (each rank saw only its heads)."""
        for linear, q_rows, group in self.kv_sync:
            for p in (linear.weight, linear.bias):
                if p is not None and p.grad is not None:
                    dist.all_reduce(_local(p.grad)[q_rows:], group=group)
        for weight in self.head_norms:
            if weight.grad is not None:
                dist.all_reduce(weight.grad, group=self.tp_group)


def _kv_replica_groups(root: DeviceMesh, tp: int, kv_heads: int) -> dist.ProcessGroup | None:
    """The group of TP ranks that share this rank's KV head. Every rank creates every group (c10d rule)."""
    ranks = root.mesh.reshape(-1, tp).tolist()
    share = tp // kv_heads
    mine = None
    me = dist.get_rank()
    for tp_group in ranks:
        for i in range(0, tp, share):
            members = tp_group[i:i + share]
            group = dist.new_group(members)
            if me in members:
                mine = group
    return mine


class _SeqShardEntry:
    """Forward pre-hook of each block under sequence parallelism: the replicated residual stream that
    leaves the embeddings becomes a sequence-sharded DTensor (a local split, no communication; its
    backward all-gathers the gradient). Blocks after the first already receive a DTensor."""

    def __init__(self, mesh: DeviceMesh) -> None:
        self.mesh = mesh

    def __call__(self, _module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        from torch.distributed.tensor import DTensor, Replicate, Shard

        x = args[0]
        if not isinstance(x, DTensor):
            x = DTensor.from_local(x, self.mesh, [Replicate()], run_check=False).redistribute(self.mesh, [Shard(1)])
        return (x, *args[1:])


def _seq_gather_exit(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook of the final norm under sequence parallelism: all-gather the sequence, so the
    final norm, LM head and loss run replicated on plain tensors as without TP."""
    from torch.distributed.tensor import DTensor, Replicate

    x = args[0]
    if isinstance(x, DTensor):
        x = x.redistribute(x.device_mesh, [Replicate()]).to_local()
    return (x, *args[1:])


def _mlp_plan(block: Block, tp: int, expert_tp: bool) -> dict[str, Any]:
    """Column/row-parallel entries of an MoE layer's MLPs: the shared experts (a dense MLP of the TP group,
    Megatron-Core SharedExpertMLP) and, with expert tensor parallelism (etp = tp), every routed expert this
    rank holds (etp = 1: the experts stay whole, replicated over the TP ranks). The router stays replicated.
    Gated fc weights are relaid out per shard first."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    assert isinstance(block.mlp, MoELayer)
    mlps: dict[str, nn.Module] = {}
    if block.mlp.shared is not None:
        mlps["mlp.shared"] = block.mlp.shared
    if expert_tp:
        mlps.update({f"mlp.experts.{e}": m for e, m in block.mlp.experts.items()})
    plan: dict[str, Any] = {}
    for name, mlp in mlps.items():
        if mlp.gated:
            _relayout(mlp, "fc", swiglu_shard_rows(mlp.proj.in_features, tp))
        plan[f"{name}.fc"] = ColwiseParallel()
        plan[f"{name}.proj"] = RowwiseParallel()
    return plan


def apply_tensor_parallel(model: Transformer, root: DeviceMesh, *, sequence_parallel: bool,
                          vocab_parallel: bool = False, expert_tp: bool = True) -> TensorParallelState:
    """Megatron-style TP on every distinct block: qkv and fc column-wise, out and proj row-wise.

    With `vocab_parallel` (training: `vocab_parallel_loss` must then wrap forward, loss and backward),
    the token embedding and the LM head are split over the vocabulary as in Megatron-LM
    (VocabParallelEmbedding, a column-parallel head and a vocab-parallel cross-entropy): the embedding
    is row-wise (each rank looks up its vocabulary slice, one all-reduce), the head column-wise with
    logits left sharded on the vocabulary, and a tied head shares the embedding's sharded weight. Without
    it (inference, or a vocabulary tp does not divide) they stay replicated and the head all-gathers
    nothing. Position embeddings and the final norm stay replicated (their gradients are equal on all TP
    ranks because everything they see is replicated). With `sequence_parallel`, norms run on sequence
    shards (SequenceParallel) and the row-wise projections reduce-scatter onto the sequence dimension.
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, RowwiseParallel,
                                                   SequenceParallel, parallelize_module)

    mesh = root["tp"]
    tp = mesh.size()
    spec = model.spec
    heads, kv_heads, head_dim = spec.heads, spec.kv_heads or spec.heads, spec.head_dim
    state = TensorParallelState()
    kv_group = _kv_replica_groups(root, tp, kv_heads) if tp > kv_heads else None
    for block in model.blocks:
        assert isinstance(block, Block)
        _relayout(block.attn, "qkv", qkv_shard_rows(heads, kv_heads, head_dim, tp))
        moe = isinstance(block.mlp, MoELayer)
        mlp_plan = _mlp_plan(block, tp, expert_tp) if moe else {}
        if not moe and block.mlp.gated:
            _relayout(block.mlp, "fc", swiglu_shard_rows(spec.ffn_hidden or 4 * spec.hidden, tp))
        # Attention.forward splits and views with these counts: make them the local ones.
        block.attn.heads = heads // tp
        block.attn.kv_heads = max(kv_heads // tp, 1)
        _keep_local_sinks(block, mesh.get_local_rank(), heads // tp)
        row_out = Shard(1) if sequence_parallel else Replicate()
        plan: dict[str, Any] = {
            "attn.qkv": ColwiseParallel(),
            "attn.out": RowwiseParallel(output_layouts=row_out, use_local_output=not sequence_parallel),
        }
        if moe:  # MoE layers run with sp off (llmsim.distributed.spec): plain replicated tensors in and out
            plan.update(mlp_plan)
        else:
            plan.update({
                "mlp.fc": ColwiseParallel(),
                "mlp.proj": RowwiseParallel(output_layouts=row_out, use_local_output=not sequence_parallel)})
        if sequence_parallel:
            plan.update({
                "norm1": SequenceParallel(),
                **({"norm2": SequenceParallel()} if block.norm2 is not None else {}),
                "attn": PrepareModuleInput(input_layouts=(Shard(1), None, None, None),
                                           desired_input_layouts=(Replicate(), None, None, None),
                                           use_local_output=True),
                "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                          use_local_output=True),
            })
        parallelize_module(block, mesh, plan)
        if kv_group is not None:
            state.kv_sync.append((block.attn.qkv, (heads // tp) * head_dim, kv_group))
        for norm in (block.attn.q_norm, block.attn.k_norm):
            if norm is not None and norm.weight.requires_grad:
                state.head_norms.append(norm.weight)
                state.tp_group = mesh.get_group()
    if sequence_parallel:
        entry = _SeqShardEntry(mesh)
        for block in model.blocks:
            block.register_forward_pre_hook(entry)
        model.norm_f.register_forward_pre_hook(_seq_gather_exit)
    if vocab_parallel:
        _shard_vocabulary(model, mesh)
        state.vocab_parallel = True
    return state


def _keep_local_sinks(block: Block, rank: int, local_heads: int) -> None:
    """gpt-oss's attention sinks (one learned logit per query head, CoreAttention.sinks) follow their heads: the
    column-parallel qkv gives tp rank r the query heads r*local_heads .. (r+1)*local_heads - 1, so the rank keeps
    those heads' sinks as a plain parameter of its own (no tp reduction: no other rank reads them)."""
    sinks = getattr(block.attn.core, "sinks", None)
    if sinks is not None:
        block.attn.core.sinks = nn.Parameter(sinks.detach()[rank * local_heads:(rank + 1) * local_heads].clone())


def vocab_parallel_possible(spec: Any, tp: int) -> bool:
    """The embedding and head split over the vocabulary only when tp divides it (even shards)."""
    return tp > 1 and spec.vocab % tp == 0


def _shard_vocabulary(model: Transformer, mesh: DeviceMesh) -> None:
    """Row-wise token embedding and column-wise LM head over `mesh`, sharing one weight when tied."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tied = model.lm_head.weight is model.tok_emb.weight
    parallelize_module(model, mesh, {
        "tok_emb": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
        "lm_head": ColwiseParallel(input_layouts=Replicate(), output_layouts=Shard(-1), use_local_output=False),
    })
    if tied:  # both are Shard(0) over the vocabulary: point the head back at the embedding's parameter
        model.lm_head.weight = model.tok_emb.weight


def vocab_parallel_loss(enabled: bool) -> Any:
    """The context in which cross-entropy takes vocabulary-sharded logits (torch's loss_parallel)."""
    if not enabled:
        return contextlib.nullcontext()
    from torch.distributed.tensor.parallel import loss_parallel

    return loss_parallel()


def allreduce_gradients(params: list[nn.Parameter], group: dist.ProcessGroup, size: int) -> None:
    """Average gradients over the data-parallel group in one flat all-reduce.

    Used for TP x DP without ZeRO, where DDP does not take DTensor parameters; unlike DDP it does not
    overlap with backward (the time shows up as exposed communication).
    """
    grads = [_local(p.grad) for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    flat.div_(size)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


# ------------------------------------------------------------------------------------------ FSDP
def apply_fully_shard(model: Transformer, dp_mesh: DeviceMesh, zero: int) -> str:
    """FSDP2 over the data-parallel mesh: one unit per distinct block plus the root (embeddings, head).

    zero 3 reshards parameters after forward (FSDP / ZeRO-3). zero 1 and 2 keep them unsharded from
    forward to backward (reshard_after_forward=False), which is ZeRO-2: gradients and optimizer states
    sharded, parameters gathered once per step. ZeRO-1 (gradients not sharded) has no torch equivalent
    and runs as ZeRO-2: the same communication volume, slightly less gradient memory. Returns a note.
    """
    _fully_shard_units(model, list(model.blocks), dp_mesh, zero)
    if zero == 3:
        return "fully_shard(reshard_after_forward=True)"
    return "fully_shard(reshard_after_forward=False)" + ("; ZeRO-1 runs as ZeRO-2" if zero == 1 else "")


def _fully_shard_units(root: nn.Module, blocks: list[nn.Module], dp_mesh: DeviceMesh, zero: int) -> None:
    """One FSDP2 unit per block, then the root (what is left: embeddings, norm, head)."""
    from torch.distributed.fsdp import fully_shard

    reshard = zero == 3
    for block in blocks:
        fully_shard(block, mesh=dp_mesh, reshard_after_forward=reshard)
    fully_shard(root, mesh=dp_mesh, reshard_after_forward=reshard)


# ------------------------------------------------------------------------------------ pipeline
class StageModule(nn.Module):
    """The layers of one pipeline stage, cut from the Transformer (the same modules, not copies).

    Its forward is the model's own, in pieces (`Transformer.embed`, `run_layers`, `final`): the first
    stage embeds token ids, the last applies the final norm and the LM head. A tied LM head on a last
    stage that does not hold the embedding gets its own copy of the embedding matrix; `PipelineRunner`
    sums the two copies' gradients after each step (as Megatron's embedding group does), so both stay
    equal to the single-device tied weight.
    """

    def __init__(self, model: Transformer, layers: range, *, first: bool, last: bool) -> None:
        super().__init__()
        self.layers = layers
        self.first, self.last = first, last
        # The model's forward pieces as bound methods: the stage registers only its own modules below
        # (what the schedule, FSDP and the optimizer see), while running the model's code.
        self._embed, self._run_layers, self._final = model.embed, model.run_layers, model.final
        self.rope = model.rope
        self.blocks = nn.ModuleDict({str(i): model.block_for_layer(i) for i in layers})
        if first:
            self.tok_emb, self.pos_emb, self.type_emb = model.tok_emb, model.pos_emb, model.type_emb
        if last:
            self.norm_f = model.norm_f
            head = model.lm_head
            if not first and head.weight is model.tok_emb.weight:
                head = nn.Linear(head.in_features, head.out_features, bias=False,
                                 device=head.weight.device, dtype=head.weight.dtype)
                with torch.no_grad():
                    head.weight.copy_(model.tok_emb.weight)
                head.weight.requires_grad_(model.tok_emb.weight.requires_grad)
                self.tied_copy = True
            self.lm_head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            x = self._embed(x)
        x = self._run_layers(x, self.layers)
        if self.last:
            x = self._final(x, lm_head=self.lm_head)
        return x


def pipeline_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The workload's loss on one micro-batch (the schedule averages over micro-batches)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


SCHEDULES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B", "interleaved": "ScheduleInterleaved1F1B"}


class PipelineRunner:
    """Stages of this rank, their schedule, and the tied-embedding gradient sum between first and last.

    Rank r of the pipeline holds `stage_layers[r]` layers (llmsim.stages: the strategy's split, or the
    default one; layers % pp need not be 0), as v equal model chunks: torch's pipeline stages r, r+pp, ...
    (its interleaved placement; v = virtual_stages, 1 for gpipe and 1f1b). Stage c = k*pp + r holds the
    next stage_layers[r]/v layers after those of stages 0..c-1, Megatron-LM's layer order (chunk k of every
    rank before chunk k+1; transformer_layer.get_transformer_layer_offset). A first or last rank may hold
    no layer: its stage is the embedding, or the final norm, LM head and loss, alone. Data
    parallel replicas of a stage average their gradients once per step with one flat all-reduce after
    the schedule: DDP around a stage module fails in torch 2.13 when several micro-batch forwards
    precede their backwards (the reducer's rebuilt bucket indices double), so this path does not
    overlap the reduction with backward. With `zero` > 0 each stage is FSDP2-sharded over data parallel
    instead (a unit per block and one per stage module), and the schedule drives FSDP's gradient
    reduce-scatter on the last micro-batch.
    """

    def __init__(self, model: Transformer, root: DeviceMesh, *, schedule: str, virtual_stages: int,
                 microbatches: int, device: torch.device, zero: int = 0,
                 stage_layers: tuple[int, ...] | None = None,
                 experts: list[nn.Parameter] | None = None) -> None:
        import torch.distributed.pipelining as pipelining

        pp_mesh, dp_mesh = root["pp"], root["dp"]
        pp, rank = pp_mesh.size(), pp_mesh.get_local_rank()
        # The tied embedding lives on the first stage and (as a copy) on the last: one group per replica.
        # Decided and created before any stage is built: FSDP replaces the parameters it shards, after which
        # the tie is no longer visible, and every rank must create the same groups in the same order.
        self.embed_group: dist.ProcessGroup | None = None
        self.embed_params: list[nn.Parameter] = []
        tied = model.lm_head.weight is model.tok_emb.weight and model.tok_emb.weight.requires_grad
        if tied:
            grid = root.mesh  # (pp, dp, tp)
            for d in range(grid.shape[1]):
                for t in range(grid.shape[2]):
                    members = [int(grid[0, d, t]), int(grid[-1, d, t])]
                    group = dist.new_group(members)
                    if dist.get_rank() in members:
                        self.embed_group = group
        n_stages = pp * virtual_stages
        v_split = virtual_stages if schedule == "interleaved" else 1
        self.stage_layers = stage_layers or default_split(model.spec.layers, pp, v_split)
        assert len(self.stage_layers) == pp and sum(self.stage_layers) == model.spec.layers, self.stage_layers
        sizes = [self.stage_layers[c % pp] // virtual_stages for c in range(n_stages)]  # torch stage c's layers
        starts = [sum(sizes[:c]) for c in range(n_stages)]
        self.modules: list[StageModule] = []
        stages = []
        for v in range(virtual_stages):
            index = rank + v * pp
            module = StageModule(model, range(starts[index], starts[index] + sizes[index]),
                                 first=index == 0, last=index == n_stages - 1)
            if zero > 0 and dp_mesh.size() > 1:  # PP x ZeRO: FSDP2 units per block and per stage
                _fully_shard_units(module, list(module.blocks.values()), dp_mesh, zero)
            self.modules.append(module)
            stages.append(pipelining.PipelineStage(module, index, n_stages, device, group=pp_mesh.get_group()))
        cls = getattr(pipelining, SCHEDULES[schedule])
        if schedule == "interleaved":
            self.schedule = cls(stages, n_microbatches=microbatches, loss_fn=pipeline_loss)
        else:
            self.schedule = cls(stages[0], n_microbatches=microbatches, loss_fn=pipeline_loss)
        # FSDP reduce-scatters its own gradients (the stage drives its sync on the last micro-batch).
        self.dp_group = dp_mesh.get_group() if dp_mesh.size() > 1 and zero == 0 else None
        self.dp = dp_mesh.size()
        # Expert-parallel experts: reduced over their own group by the caller (llmsim.distributed.expert).
        self.expert_ids = {id(p) for p in experts or []}
        self.has_first = any(m.first for m in self.modules)
        self.has_last = any(m.last for m in self.modules)
        if tied:
            for m in self.modules:
                if m.first:
                    self.embed_params.append(m.tok_emb.weight)
                if getattr(m, "tied_copy", False):
                    self.embed_params.append(m.lm_head.weight)

    def parameters(self) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for m in self.modules:
            for p in m.parameters():
                seen.setdefault(id(p), p)
        return list(seen.values())

    def train_step(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """One pipelined forward+backward over all micro-batches; the mean loss on the last stage."""
        losses: list[torch.Tensor] = []
        args = (tokens,) if self.has_first else ()
        kwargs: dict[str, Any] = dict(target=targets, losses=losses) if self.has_last else {}
        self.schedule.step(*args, **kwargs)
        if self.dp_group is not None:
            allreduce_gradients([p for p in self.parameters() if p.requires_grad and id(p) not in self.expert_ids],
                                self.dp_group, self.dp)
        if self.embed_group is not None:
            for p in self.embed_params:  # under ZeRO both copies are sharded alike over dp: sum the shards
                if p.grad is not None:
                    dist.all_reduce(_local(p.grad), group=self.embed_group)
        return torch.stack(losses).mean().detach() if losses else None
