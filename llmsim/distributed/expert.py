"""Expert parallelism over torch.distributed: each MoE layer's routed experts split over the ranks of an
expert-parallel (ep) group, tokens dispatched to their experts and combined back with all-to-all.

The design is Megatron-Core's all-to-all token dispatcher (megatron/core/transformer/moe/token_dispatcher.py,
MoEAlltoAllTokenDispatcher), written with public c10d calls:
1. the layer sorts its (token, expert) assignments by expert (MoELayer.forward: permute);
2. the ranks exchange how many rows each sends to each expert (an all-to-all of E counts per rank);
3. rows travel to the rank holding their expert: `all_to_all_single` with uneven splits (dispatch);
4. the received rows, ordered by source rank then expert, are regrouped by local expert, run through the
   local experts, and put back in source order;
5. they travel back (the reverse all-to-all: combine) and the layer weights and sums them per token.
gloo offers all_to_all_single with uneven splits on CPU (torch 2.13, ProcessGroupGloo::alltoall_base), so no
emulation is needed; its backward is the reverse all-to-all (`_AllToAll` below).

Which ranks: the ep group is carved out of the data-parallel ranks of one pipeline stage (and tensor-parallel
rank): ranks (pp, d, t) with d in one block of ep consecutive dp indices. Rank i of a group holds experts
[i*E/ep, (i+1)*E/ep). Expert gradients: every rank's loss is its replica's mean, the global loss their mean
over dp, and an expert's gradient on its rank sums the contributions of all ep ranks' tokens (they come back
through the combine's backward); the expert-data-parallel group (edp = dp/ep ranks holding the same experts,
per tensor-parallel rank) sums it and the sum is divided by dp (`sync_expert_gradients`). Non-expert
parameters are averaged over dp as before, without the experts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from llmsim.distributed.parallelize import _local
from llmsim.workload.model import Transformer
from llmsim.workload.moe import ExpertDispatcher, MoELayer, run_experts


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with uneven splits; the backward sends the gradients back the way the rows came."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, send: list[int], recv: list[int],  # noqa: ANN401
                group: dist.ProcessGroup) -> torch.Tensor:
        ctx.send, ctx.recv, ctx.group = send, recv, group
        out = rows.new_empty((sum(recv), *rows.shape[1:]))
        dist.all_to_all_single(out, rows.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # noqa: ANN401
        out = grad.new_empty((sum(ctx.send), *grad.shape[1:]))
        dist.all_to_all_single(out, grad.contiguous(), output_split_sizes=ctx.send, input_split_sizes=ctx.recv,
                               group=ctx.group)
        return out, None, None, None


def all_to_all(rows: torch.Tensor, send: list[int], recv: list[int], group: dist.ProcessGroup) -> torch.Tensor:
    """Rows split by `send` (rows for each group rank, in rank order) exchanged; `recv` rows from each rank."""
    return _AllToAll.apply(rows, send, recv, group)


class AllToAllDispatcher(ExpertDispatcher):
    """MoELayer.dispatcher for a rank of an ep group holding experts [rank*E/ep, (rank+1)*E/ep)."""

    def __init__(self, group: dist.ProcessGroup, ep: int, rank: int, experts: int) -> None:
        self.group, self.ep, self.rank = group, ep, rank
        self.local = experts // ep
        self.experts = range(rank * self.local, (rank + 1) * self.local)

    def __call__(self, layer: MoELayer, rows: torch.Tensor, counts: list[int]) -> torch.Tensor:
        ep, local = self.ep, self.local
        # How many rows each rank sends to each of my experts: (ep sources, local experts).
        mine = torch.tensor(counts, dtype=torch.int64, device=rows.device)
        received = torch.empty_like(mine)
        dist.all_to_all_single(received, mine, group=self.group)
        from_each = received.view(ep, local).tolist()  # from_each[s][j]: rows source s sends to my expert j
        send = [sum(counts[p * local:(p + 1) * local]) for p in range(ep)]
        recv = [sum(row) for row in from_each]
        arrived = all_to_all(rows, send, recv, self.group)  # ordered by source, then by expert
        order, starts, start = [], [], 0
        for s in range(ep):  # row index of each (source, expert) segment in `arrived`
            starts.append([])
            for j in range(local):
                starts[s].append(start)
                start += from_each[s][j]
        for j in range(local):
            for s in range(ep):
                order.extend(range(starts[s][j], starts[s][j] + from_each[s][j]))
        index = torch.tensor(order, dtype=torch.int64, device=rows.device)
        grouped = arrived.index_select(0, index)  # by local expert
        per_expert = [sum(from_each[s][j] for s in range(ep)) for j in range(local)]
        done = run_experts(layer, grouped, per_expert, self.experts)
        back = torch.empty_like(done).index_copy(0, index, done)  # source order again
        return all_to_all(back, recv, send, self.group)  # combine: to the ranks the rows came from


@dataclass
class ExpertParallelState:
    """What a training step needs after backward: the MoE layers whose routed experts are reduced over their
    edp group only, and the groups."""

    layers: list[MoELayer] = field(default_factory=list)
    edp_group: dist.ProcessGroup | None = None
    edp: int = 1
    dp: int = 1

    @property
    def expert_params(self) -> list[nn.Parameter]:
        """The routed experts' parameters as they are now (tensor parallelism replaces the fused Linears)."""
        return [p for layer in self.layers for p in layer.experts.parameters()]

    def is_expert(self, p: nn.Parameter) -> bool:
        return any(p is q for q in self.expert_params)

    def sync_expert_gradients(self) -> None:
        """Expert gradients summed over the expert-data-parallel group and divided by dp (module docstring):
        1/dp, not 1/edp, since each local gradient already sums its ep group's replicas. Megatron-Core's
        factor (distributed/distributed_data_parallel.py: expert_gradient_scaling_factor = 1/dp_size with a
        sum over the expert-data-parallel group; docs/moe.md, the scale rule)."""
        grads = [_local(p.grad) for p in self.expert_params if p.grad is not None]  # etp = tp: local shards
        if not grads:
            return
        if self.edp > 1 and self.edp_group is not None:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, group=self.edp_group)
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
        for g in grads:
            g.div_(self.dp)


def apply_expert_parallel(model: Transformer, root: DeviceMesh, ep: int) -> ExpertParallelState:
    """Keep this rank's experts in every MoE layer, give the layers the all-to-all dispatcher, and create the
    ep and edp groups on the (pp, dp, tp) mesh (every rank creates every group, in the same order: c10d)."""
    grid = root.mesh  # (pp, dp, tp) global ranks
    pp, dp, tp = grid.shape
    me = dist.get_rank()
    ep_group = edp_group = None
    ep_rank = 0
    for p in range(pp):
        for t in range(tp):
            for block in range(dp // ep):
                members = [int(grid[p, block * ep + i, t]) for i in range(ep)]
                group = dist.new_group(members)
                if me in members:
                    ep_group, ep_rank = group, members.index(me)
            for i in range(ep):
                members = [int(grid[p, block * ep + i, t]) for block in range(dp // ep)]
                group = dist.new_group(members)
                if me in members:
                    edp_group = group
    assert ep_group is not None
    state = ExpertParallelState(layers=model.moe_modules(), edp_group=edp_group, edp=dp // ep, dp=dp)
    for layer in model.moe_modules():
        dispatcher = AllToAllDispatcher(ep_group, ep, ep_rank, layer.num_experts)
        for e in range(layer.num_experts):
            if e not in dispatcher.experts:
                del layer.experts[str(e)]
        layer.dispatcher = dispatcher
    return state


def routing_loads(model: Transformer, group: dist.ProcessGroup | None) -> list[list[int]]:
    """Tokens routed to each expert in each distinct MoE layer over the run so far, summed over `group` (the
    data-parallel ranks of this stage: each routed its own tokens). Collective over the group."""
    loads = [m.tokens_per_expert.clone() for m in model.moe_modules()]
    if not loads:
        return []
    flat = torch.stack(loads)
    if group is not None:
        dist.all_reduce(flat, group=group)
    return flat.tolist()
