"""Harness overhead: llmsim's cpu backend vs a bare hand-written torch loop over the same module.

Both run in this process, alternating A/B rounds so that machine noise hits both alike; the table
shows median tokens/s of each and their ratio (target: harness / bare >= 0.97).

    python benchmarks/bench_harness.py [--rounds 5] [--steps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from llmsim.backend import RunContext
from llmsim.config import parse_scenario
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases
from llmsim.workload.model import build_model
from llmsim_plugins.cpu import CpuBackend, CpuSettings

SCENARIO = {
    "name": "bench-harness",
    "workload": {"model": {"preset": "gpt2-small", "layers": 4, "seq_len": 256}, "mode": "train", "batch": 4,
                 "dtype": "float32"},
    # micro_batch = batch: one forward/backward per step, exactly what the bare loop below does.
    "strategies": [{"name": "single", "micro_batch": 4}],
    "backends": {"cpu": {}},
}


def bare_loop_tokens_per_s(case, steps: int, warmup: int) -> float:
    """What a user would write by hand: same module, same shapes, same optimizer."""
    w = case.workload
    torch.manual_seed(case.seed)
    model = build_model(w.model, tie_embeddings=case.sharing.tie_embeddings)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    idx = torch.randint(0, w.model.vocab, (w.batch, w.model.seq_len))
    tgt = torch.randint(0, w.model.vocab, (w.batch, w.model.seq_len))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = F.cross_entropy(model(idx).flatten(0, 1).float(), tgt.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return w.tokens_per_step / statistics.fmean(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    scenario = parse_scenario(SCENARIO)
    registry = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "cpu"}))
    case = plan_cases(scenario, registry)[0].case
    backend = CpuBackend(RunContext())
    settings = CpuSettings(steps=args.steps, warmup=1)
    harness, bare = [], []
    for _ in range(args.rounds):
        harness.append(backend.run(case, settings).tokens_per_s)
        bare.append(bare_loop_tokens_per_s(case, args.steps, 1))
    h, b = statistics.median(harness), statistics.median(bare)
    print(f"{'':24}{'tokens/s (median)':>20}{'rounds':>8}")
    print(f"{'llmsim cpu backend':24}{h:>20.1f}{args.rounds:>8}")
    print(f"{'bare torch loop':24}{b:>20.1f}{args.rounds:>8}")
    print(f"ratio harness/bare: {h / b:.3f}  (per round: "
          + ", ".join(f"{x / y:.3f}" for x, y in zip(harness, bare)) + ")")


if __name__ == "__main__":
    main()
