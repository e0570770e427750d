"""The mixture-of-experts layer that replaces a block's MLP in MoE layers (docs/moe.md).

Router: a linear map hidden -> experts without bias, softmax in float32, top-k (Shazeer et al. 2017; Mixtral,
Qwen3-MoE, OLMoE route this way), the k gate weights optionally renormalised to sum to 1 (`norm_topk_prob`).
Routed experts: `experts` MLPs of the model's activation and width `expert_ffn_hidden`; each token's output is
sum_j gate_j * expert_{e_j}(x). Shared experts (DeepSeekMoE, Dai et al. 2024): one dense MLP of width
shared_experts * shared_expert_ffn_hidden (the same parameters and FLOPs as that many experts side by side)
that every token goes through. Load balancing: the Switch Transformer / GShard auxiliary loss (Fedus et al.
2021, eq. 4; Lepikhin et al. 2020) in Megatron-Core's top-k normalisation (moe_utils.switch_load_balancing_
loss_func):
    aux = coeff * E * sum_e f_e * P_e,  f_e = tokens routed to e / (N * k),  P_e = mean over tokens of p_e
(= coeff when routing is uniform). Its gradient enters where Megatron-Core puts it, through the layer's output
(moe_utils.MoEAuxLossAutoScaler: the forward passes the output through, the backward gives the aux loss the
gradient `aux_grad_scale`, 1 / micro-batches as for the main loss), so every pipeline stage trains its own
layers' aux losses without a cross-stage sum; the training step adds the losses' values to the loss it reports.
Capacity (GShard/Switch token dropping): with `capacity_factor` cf each
expert takes at most ceil(cf * N * k / E) of its assignments, those with the highest gate weight (Megatron-Core
--moe-token-drop-policy probs); a dropped assignment contributes nothing and the token keeps its residual.

Dispatch: the N*k (token, expert) assignments are sorted by expert (Megatron-Core's token permutation,
moe/moe_utils.permute), the experts run on contiguous row ranges, and the weighted outputs are added back per
token (unpermute). `dispatcher` (None = every expert on this device) replaces the expert computation by one
that exchanges rows with the other expert-parallel ranks (llmsim.distributed.expert).

On the meta device (the profile's trace) routing is data-dependent and cannot run, so the assignments are
*balanced*: each expert gets N*k/E of them (the remainder one each to the first experts), which makes the
traced expert FLOPs exactly those of top-k routing, 2 * N * k * (expert GEMM parameters) per forward.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llmsim.config import ModelSpec


def balanced_counts(assignments: int, experts: int) -> list[int]:
    """Assignments per expert when `assignments` (tokens * top_k) spread evenly over `experts`: the
    remainder goes one each to the first experts, so the counts add up exactly."""
    base, rest = divmod(assignments, experts)
    return [base + (1 if e < rest else 0) for e in range(experts)]


def load_imbalance(loads: list[list[int]]) -> float | None:
    """The busiest expert's tokens over the mean, the largest over the layers (`loads`: tokens per expert per
    MoE layer); None without a routed token. 1 = perfectly balanced; E = every token on one expert."""
    factors = [max(layer) * len(layer) / sum(layer) for layer in loads if sum(layer) > 0]
    return max(factors) if factors else None


def expert_capacity(tokens: int, top_k: int, experts: int, capacity_factor: float) -> int:
    """Most assignments one expert takes: ceil(cf * tokens * k / E) (GShard Sec. 2.2; Megatron-Core
    moe_utils.get_capacity)."""
    return math.ceil(capacity_factor * tokens * top_k / experts)


class AuxLossAutoScaler(torch.autograd.Function):
    """Identity on `output` whose backward also gives `aux_loss` the gradient `scale` (Megatron-Core
    moe/moe_utils.py MoEAuxLossAutoScaler): d(main loss + scale * aux)/d(aux), without adding aux to the loss."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, aux_loss: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(aux_loss)
        ctx.scale = scale
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:  # noqa: ANN001
        (aux_loss,) = ctx.saved_tensors
        return grad_output, torch.ones_like(aux_loss) * ctx.scale, None


class MoELayer(nn.Module):
    """Router, routed experts (an nn.ModuleDict keyed by expert index: an expert-parallel rank keeps its own)
    and shared experts. Input and output (B, T, hidden).

    `tokens_per_expert` (E,) accumulates the routed assignments of every real forward (before any capacity
    drop): what the measured runs report as the routing load. `aux_losses` collects the values
    (detached) of the auxiliary losses of the real forwards since the model's `pop_aux_loss`; `aux_grad_scale`
    is the gradient their backward gets (the training step sets 1 / micro-batches)."""

    def __init__(self, spec: ModelSpec, mlp_factory: type[nn.Module]) -> None:
        super().__init__()
        moe = spec.moe
        assert moe is not None
        self.num_experts, self.top_k = moe.experts, moe.top_k
        self.norm_topk_prob = moe.norm_topk_prob
        self.aux_loss_coeff = moe.aux_loss_coeff
        self.capacity_factor = moe.capacity_factor
        self.router = nn.Linear(spec.hidden, moe.experts, bias=False)
        self.experts = nn.ModuleDict({str(e): mlp_factory(spec, spec.expert_ffn) for e in range(moe.experts)})
        self.shared = (mlp_factory(spec, moe.shared_experts * spec.shared_expert_ffn)
                       if moe.shared_experts else None)
        self.register_buffer("tokens_per_expert", torch.zeros(moe.experts, dtype=torch.int64), persistent=False)
        self.aux_losses: list[torch.Tensor] = []
        self.aux_grad_scale = 1.0
        self.routing_log: list[torch.Tensor] = []  # training: the counts of each forward since `settle`
        self.dispatcher: ExpertDispatcher | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        flat = x.reshape(-1, h)  # (N, H)
        n, e, k = flat.shape[0], self.num_experts, self.top_k
        probs = self.router(flat).float().softmax(dim=-1)  # (N, E)
        weights, chosen = probs.topk(k, dim=-1)  # (N, k)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        routed = torch.zeros(e, device=flat.device, dtype=torch.float32).scatter_add_(
            0, chosen.reshape(-1), torch.ones(n * k, device=flat.device, dtype=torch.float32))  # (E,)
        aux = None
        if self.training and self.aux_loss_coeff > 0 and torch.is_grad_enabled():
            f = routed / (n * k)  # share of the assignments per expert (no gradient, as in Switch)
            p = probs.mean(dim=0)  # mean router probability per expert
            aux = self.aux_loss_coeff * e * (f * p).sum()
            if flat.device.type != "meta":
                self.aux_losses.append(aux.detach())
        order = chosen.reshape(-1).argsort(stable=True)  # assignments sorted by expert, (N*k,)
        gate = weights.reshape(-1)[order]
        if flat.device.type == "meta":
            counts = balanced_counts(n * k, e)
        else:
            with torch.no_grad():
                counts_now = routed.to(torch.int64)
                self.tokens_per_expert += counts_now
                if self.training:
                    self.routing_log.append(counts_now)
            counts = [int(c) for c in routed.tolist()]
        if self.capacity_factor is not None:
            order, gate, counts = self._drop(order, gate, counts, expert_capacity(n, k, e, self.capacity_factor))
        rows = flat.index_select(0, order // k)  # (sum counts, H): each assignment's token, grouped by expert
        if self.dispatcher is not None:
            out_rows = self.dispatcher(self, rows, counts)
        else:
            out_rows = run_experts(self, rows, counts, range(e))
        out_rows = out_rows * gate.unsqueeze(-1).to(out_rows.dtype)
        y = torch.zeros_like(flat).index_add(0, order // k, out_rows)  # (N, H)
        if self.shared is not None:
            y = y + self.shared(flat)
        if aux is not None:
            y = AuxLossAutoScaler.apply(y, aux, self.aux_grad_scale)
        return y.view(b, t, h)

    @staticmethod
    def _drop(order: torch.Tensor, gate: torch.Tensor, counts: list[int],
              capacity: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Keep at most `capacity` assignments per expert, those with the highest gate weights."""
        if all(c <= capacity for c in counts):
            return order, gate, counts
        if order.device.type == "meta":  # balanced: which rows are kept does not matter, only how many
            kept = [min(c, capacity) for c in counts]
            return order[:sum(kept)], gate[:sum(kept)], kept
        keep: list[torch.Tensor] = []
        start = 0
        for c in counts:
            segment = torch.arange(start, start + c, device=order.device)
            if c > capacity:
                best = gate[start:start + c].topk(capacity).indices.sort().values
                segment = segment[best]
            keep.append(segment)
            start += c
        index = torch.cat(keep)
        return order[index], gate[index], [min(c, capacity) for c in counts]

    def settle(self, keep_last: int | None = None) -> float:
        """The summed values of the aux losses since the last call, forgetting them. `keep_last`: only the last
        n training forwards count; earlier ones are taken out of `tokens_per_expert` too (a pipeline stage's
        metadata inference runs the stage once on placeholder tensors before its first schedule step)."""
        aux, log = self.aux_losses, self.routing_log
        if keep_last is not None:
            for counts in log[:max(len(log) - keep_last, 0)]:
                self.tokens_per_expert -= counts
            aux = aux[-keep_last:] if keep_last else []
        total = sum(float(a) for a in aux)
        self.aux_losses, self.routing_log = [], []
        return total

    def expert_params(self) -> int:
        """Parameters of the routed experts this module holds."""
        return sum(p.numel() for p in self.experts.parameters())


def run_experts(layer: MoELayer, rows: torch.Tensor, counts: list[int], experts: range) -> torch.Tensor:
    """Rows grouped by expert (counts[i] rows for experts[i], in order) through their experts, same order."""
    outs = []
    for expert, part in zip(experts, rows.split(counts)):
        outs.append(layer.experts[str(expert)](part))
    return torch.cat(outs) if outs else rows


class ExpertDispatcher:
    """How an MoE layer runs its grouped rows when the experts are spread over devices: called as
    dispatcher(layer, rows, counts) -> the experts' outputs in the same row order."""

    def __call__(self, layer: MoELayer, rows: torch.Tensor, counts: list[int]) -> torch.Tensor:
        raise NotImplementedError
