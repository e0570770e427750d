"""One rank of tests/distributed/test_moe_ep.py's gradient comparison (started once per rank by the test).

The rank builds its RankStep from the WorkerSpec (the strategy applied exactly as the cpu backend does), runs
one training step and, at `mark('backward_done')` (after every gradient reduction, before the optimizer),
takes each parameter's gradient. Under tensor parallelism the DTensor gradient is assembled with
`full_tensor()` (a collective over the TP group: every TP rank of a replica holds the same experts, so the
same parameters in the same order) and put back into the single process's row order where the fused qkv or
gated fc weight was relaid out (`qkv_shard_rows`, `swiglu_shard_rows`). The same process then runs the single
process's step (WorkloadStep, same seed and micro-batches, the whole global batch) and writes, per parameter
it holds, the largest relative difference to `<out>/grads-rank<N>.json`.

Usage: python ep_gradient_rank.py <spec.json> <out dir>   (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the env)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from llmsim.distributed.parallelize import qkv_shard_rows, swiglu_shard_rows
from llmsim.distributed.rank import RankStep
from llmsim.distributed.spec import WorkerSpec
from llmsim.workload.step import WorkloadStep


def _grads(named: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in named.items() if p.grad is not None}


def rank_gradients(spec: WorkerSpec) -> dict[str, torch.Tensor]:
    """Every gradient this rank holds after one step's backward and reductions, in the single process's
    layout (full tensors; only this rank's experts and, under pp, this stage's layers)."""
    step = RankStep(spec, torch.device("cpu"))
    named = dict(step.model.named_parameters())
    taken: dict[str, torch.Tensor] = {}

    def mark(what: str) -> None:
        if what == "backward_done":
            taken.update({n: p.grad for n, p in named.items() if p.grad is not None})

    step.step(mark)
    spec_model = step.model.spec
    heads, kv_heads = spec_model.heads, spec_model.kv_heads or spec_model.heads
    out: dict[str, torch.Tensor] = {}
    for name, grad in taken.items():
        full = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
        full = full.detach().clone()
        if hasattr(grad, "full_tensor") and spec.tp > 1:  # undo the per-shard row order of fused weights
            rows = None
            if name.endswith(("attn.qkv.weight", "attn.qkv.bias")):
                rows = qkv_shard_rows(heads, kv_heads, spec_model.head_dim, spec.tp)
            elif name.endswith(("fc.weight", "fc.bias")) and spec_model.activation in ("swiglu", "geglu"):
                rows = swiglu_shard_rows(full.shape[0] // 2, spec.tp)
            if rows is not None:
                back = torch.empty_like(full)
                back[torch.tensor(rows)] = full
                full = back
        out[name] = full
    return out


def reference_gradients(spec: WorkerSpec) -> dict[str, torch.Tensor]:
    """The single process's gradients of the same global batch (before its optimizer step)."""
    step = WorkloadStep(spec.workload, spec.sharing, seed=spec.seed, micro_batch=spec.micro_batch)
    named = dict(step.model.named_parameters())
    taken: dict[str, torch.Tensor] = {}

    def mark(what: str) -> None:
        if what == "backward_done":
            taken.update(_grads(named))

    step.step(mark)
    return taken


def main() -> int:
    spec = WorkerSpec.model_validate_json(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=spec.world)
    try:
        mine = rank_gradients(spec)
        ref = reference_gradients(spec)
        report: dict[str, dict[str, float]] = {}
        for name, g in mine.items():
            r = ref[name]
            scale = float(r.abs().max())
            report[name] = {"max_abs_diff": float((g - r).abs().max()), "ref_max_abs": scale,
                            "ratio": float(g.flatten() @ r.flatten() / (r.flatten() @ r.flatten()))
                            if scale > 0 else 1.0}
        (out / f"grads-rank{rank}.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
