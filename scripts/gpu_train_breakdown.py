"""Where a training step's time goes on a GPU, by kind of kernel, beside what the roofline prices for each kind.

The first GPU check (scripts/gpu-check.sh, docs/accelerators.md) found the roofline pricing the forward and backward
passes of an 8-layer Llama-3-8B slice 13% slower than an H200 ran them, and the optimizer the other way: the step
agreed by cancellation. This script splits both sides the same way, so that a difference can be traced to one kind
of kernel:

* measured (needs a CUDA GPU): the cuda backend's own model (llmsim.workload.step.WorkloadStep), `--steps` training
  steps after warm-up ones, the GPU synchronised at the end of each phase (forward, backward, optimizer):
  - per phase, the wall seconds, and the SM clock and board power NVML reports during it (sampled every 5 ms);
  - from torch.profiler, each GPU kernel's seconds by phase and kind (`kernel_kind`: GEMMs, fused attention, the
    rest), a kernel placed by the host call that launched it (the profiler's correlation ids; the aten op around
    that call gives its kind and, for the rest, its name);
  - each GEMM shape's TFLOP/s (2 m n k from the aten op's input shapes).
* priced (runs anywhere): costmodel.compute.phase_times of the same workload for the scenario's roofline entry: the
  matmul / attention / other seconds of the layers, the embedding and the LM head, forward and backward, the
  optimizer step, and the whole step.

Prints one JSON object: `priced` (with the memory it prices and whether that fits the device: the measured side
needs it to), `measured` and `priced_over_measured` (per phase and kind). Default scenario:
scenarios/gpu-model-check.yaml with gpu-check.sh's training sets (mode train, 8 layers, batch 2); a scenario of
yours needs a `roofline` backend entry and is made a training step. `--set` adds to those settings. Exit 2 on a bad
scenario or argument or a case the cost model cannot price, 1 without a GPU (`--price-only` prints the priced side
alone).
Usage: python scripts/gpu_train_breakdown.py [scenario] [--set key=value ...] [--steps 3] [--price-only]
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmsim.config import SharingChoice, load_scenario  # noqa: E402
from llmsim.costmodel.compute import CostModelError  # noqa: E402
from llmsim.errors import ScenarioError  # noqa: E402
from llmsim.wording import whole_number_option  # noqa: E402

DEFAULT_SETS = ["workload.mode=train", "workload.model.layers=8", "workload.batch=2"]
WARMUP_STEPS = 3
MAX_STEPS = 20

# Kernel names by kind (lower case substrings). GEMMs: cuBLAS / cuBLASLt (nvjet on Hopper, sm90_xmma, cutlass),
# and the split-K reductions they launch; attention: the fused kernels torch's scaled_dot_product_attention runs
# (FlashAttention-2/3, cuDNN's fused attention, memory-efficient attention).
GEMM_NAMES = ("gemm", "nvjet", "xmma", "cutlass", "splitkreduce", "sm90_", "sm80_")
ATTENTION_NAMES = ("flash", "fmha", "attention", "cudnn_generated_fort_native_sdpa", "mem_eff", "sdpa")


GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
ATTENTION_OPS = ("aten::_cudnn_attention", "aten::_flash_attention", "aten::_efficient_attention",
                 "aten::_scaled_dot_product")


def kernel_kind(name: str, op: str = "") -> str:
    """'gemm', 'attention' or 'other' for a GPU kernel: by the aten op that launched it (`op`, when known: every
    kernel of a fused attention op is attention, every kernel of a GEMM op a GEMM, as the cost model prices them),
    else by the kernel's name."""
    if op.startswith(ATTENTION_OPS):
        return "attention"
    if op in GEMM_OPS:
        return "gemm"
    low = name.lower()
    if any(s in low for s in ATTENTION_NAMES):
        return "attention"
    if any(s in low for s in GEMM_NAMES):
        return "gemm"
    return "other"


def priced(scenario_path: str, sets: list[str]) -> dict:
    """The roofline's seconds per kind for one training step of the scenario's roofline entry (one device)."""

    from llmsim.costmodel import memory_breakdown
    from llmsim.costmodel.compute import phase_times_of, workload_rates
    from llmsim.modeled_serving import priced_options
    from llmsim.costmodel import Plan
    from llmsim.costmodel.cluster import plan_on
    from llmsim.costmodel.step import step_times
    from llmsim.costmodel.work import train_work
    from llmsim.plugins import get_plugin_manager
    from llmsim.registry import BackendRegistry
    from llmsim.runner import build_catalog, plan_cases
    from llmsim.workload.profile import profile_workload

    scenario = load_scenario(scenario_path, sets)
    if "roofline" not in scenario.backends:
        raise ScenarioError(scenario_path, "backends", f"no roofline entry; allowed: a scenario whose backends "
                                                       f"include roofline (present: {', '.join(scenario.backends)})")
    if scenario.workload.mode != "train":
        raise ScenarioError(scenario_path, "workload.mode", f"{scenario.workload.mode!r}; allowed: train "
                                                            f"(--set workload.mode=train)")
    registry = BackendRegistry.from_manager(get_plugin_manager())
    folder = Path(scenario_path).parent
    item = plan_cases(scenario, registry, scenario_path, only_backends=["roofline"], scenario_dir=folder)[0]
    case, settings = item.case, item.settings
    cluster = settings.cluster(build_catalog(scenario, folder, file=scenario_path))
    options = settings.options
    workload = case.workload
    profile = profile_workload(workload, case.sharing)
    plan = plan_on(Plan.of(case.strategy, case.layout), cluster)
    rates = workload_rates(cluster, workload)
    layers = workload.model.layers
    questions = (("forward", "layers", layers), ("backward", "layers", layers), ("forward", "embed", 1),
                 ("backward", "embed", 1), ("forward", "head", 1), ("backward", "head", 1))
    answers = phase_times_of(profile, workload, plan, options, rates, questions)
    out: dict[str, dict[str, float]] = {"forward": defaultdict(float), "backward": defaultdict(float)}
    micro = workload.batch // plan.micro_batch
    for (phase, region, _), t in zip(questions, answers):
        count = layers if region == "layers" else 1
        for kind, seconds in (("gemm", t.matmul), ("attention", t.attention), ("other", t.other)):
            out[phase][kind] += seconds * count * micro
    times = step_times(workload, profile, case.sharing, plan, cluster, options)
    work = train_work(workload, profile, case.sharing, plan, cluster, options)
    stage = work.stages[0]
    memory = memory_breakdown(workload, profile, case.sharing, plan, options, device=cluster.device)
    recipe = {k: v for k, v in priced_options(options, "train", workload.dtype, cluster.device).items()
              if k in ("attention_kernel", "optimizer", "master_weights")}
    passes = sum(sum(d.values()) for d in out.values())
    return {"device": cluster.device.name, "options": recipe,
            "memory_gb": round(memory.total / 1e9, 2), "fits": memory.fits(cluster.device.memory_bytes),
            "step_s": times.step, "optimizer_s": stage.optimizer_s,
            # the rest of the step: gradient accumulation, recomputation, communication (none on one device)
            "rest_s": round(times.step - passes - stage.optimizer_s, 6),
            "by_phase": {p: {k: round(v, 6) for k, v in d.items()} for p, d in out.items()}}


def measured(scenario_path: str, sets: list[str], steps: int, device: str = "cuda") -> dict:
    """The cuda backend's model, `steps` training steps: per phase (forward, backward, optimizer) the wall seconds
    (the GPU synchronised at the end of each phase), the GPU's mean SM clock and power over that phase (NVML, every
    5 ms), and from torch.profiler the GPU seconds by kernel kind, the non-GEMM ops of the passes by aten op, and
    each GEMM shape's TFLOP/s. Seconds are per step."""
    import threading

    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    from llmsim.workload.step import WorkloadStep

    scenario = load_scenario(scenario_path, sets)
    workload = scenario.workload
    step = WorkloadStep(workload, SharingChoice.resolve(scenario.sharing, workload.model), seed=scenario.seed,
                        device=device)
    optimizer = step.optimizer
    assert optimizer is not None
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    held: list[torch.Tensor] = []

    def forward() -> None:
        held.append(step.forward_loss())

    def backward() -> None:
        held.pop().backward()

    def update() -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    phases = (("forward", forward), ("backward", backward), ("optimizer", update))

    def one_step(windows: list | None = None) -> None:
        for name, run in phases:
            began = time.perf_counter_ns()
            with record_function(f"phase:{name}"):
                run()
                sync()
            if windows is not None:
                windows.append((name, began, time.perf_counter_ns()))

    for _ in range(WARMUP_STEPS):
        one_step()
    sync()

    # timed steps, NVML sampling beside them
    samples: list[tuple[int, float, float]] = []   # (perf_counter_ns, SM MHz, W)
    done = threading.Event()
    max_sm: object = None
    sampler = None
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device() if device == "cuda" else 0)
        max_sm = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)

        def sample() -> None:
            while not done.is_set():
                samples.append((time.perf_counter_ns(), pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                                pynvml.nvmlDeviceGetPowerUsage(handle) / 1e3))
                done.wait(0.005)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    except Exception as exc:  # NVML absent: the kernels are still timed
        max_sm = f"NVML unavailable: {exc}"
    windows: list[tuple[str, int, int]] = []
    began = time.perf_counter_ns()
    for _ in range(steps):
        one_step(windows)
    step_wall_s = (time.perf_counter_ns() - began) / 1e9 / steps
    done.set()
    if sampler is not None:
        sampler.join()
    wall: dict[str, dict] = {}
    for name, _ in phases:
        spans = [(a, b) for n, a, b in windows if n == name]
        inside = [(c, w) for t, c, w in samples if any(a <= t <= b for a, b in spans)]
        wall[name] = {"wall_s": round(sum(b - a for a, b in spans) / 1e9 / steps, 6),
                      "sm_mhz": round(sum(c for c, _ in inside) / len(inside)) if inside else None,
                      "power_w": round(sum(w for _, w in inside) / len(inside)) if inside else None,
                      "samples": len(inside)}

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            one_step()
    events = list(prof.profiler.kineto_results.events())
    ranges = [(e.start_ns(), e.end_ns(), e.name().split(":", 1)[1]) for e in events
              if e.device_type() == DeviceType.CPU and e.name().startswith("phase:")]

    def phase_at(t: int) -> str:
        return next((p for a, b, p in ranges if a <= t <= b), "unassigned")

    # the host's runtime / driver calls (cudaLaunchKernel, cuLaunchKernelEx, cudaMemcpyAsync ...) by correlation id:
    # a GPU activity carries its launching call's id. The GPU's own timestamps are not used to place a kernel: the
    # profiler aligns the two clocks only roughly (a phase's kernels landed in the next phase, measured).
    launches: dict[int, object] = {}
    linked: dict[int, object] = {}
    for e in events:
        if e.device_type() == DeviceType.CPU and e.name().startswith("cu"):
            launches[e.correlation_id()] = e
            linked[e.linked_correlation_id()] = e

    def launch_of(kernel):
        return launches.get(kernel.correlation_id()) or linked.get(kernel.linked_correlation_id())

    # which aten op launched a kernel of the passes: the innermost aten op of the launching thread around the call

    ops: dict[int, list] = defaultdict(list)   # thread -> [(start, end, name, shapes)] by start
    for e in events:
        if e.device_type() == DeviceType.CPU and e.name().startswith("aten::"):
            ops[e.start_thread_id()].append((e.start_ns(), e.end_ns(), e.name(), e.shapes()))
    starts = {}
    for thread, spans in ops.items():
        spans.sort(key=lambda o: o[0])
        starts[thread] = [o[0] for o in spans]

    def launcher(call) -> tuple[str, tuple, tuple]:
        """The innermost aten op around a launch, (name, input shapes, identity): of the ops of the launching
        thread that started before the launch, the latest-started one still running (a parent starts first)."""
        t, thread = call.start_ns(), call.start_thread_id()
        spans = ops.get(thread, [])
        for i in range(bisect.bisect_right(starts.get(thread, []), t) - 1, -1, -1):
            a, b, name, shapes = spans[i]
            if b >= t:
                return name, tuple(tuple(x) for x in shapes if x), (thread, a)
        return "?", (), ()

    by_phase: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, float] = defaultdict(float)
    other_ops: dict[tuple[str, str], list] = {}   # (phase, aten op) -> [s, kernels]
    other_names: dict[tuple[str, str], dict[str, float]] = {}   # (phase, aten op) -> {kernel name: s}
    gemm_shapes: dict[tuple, list] = {}           # (aten op, input shapes) -> [s, the op's calls, FLOPs per call]
    unlinked = 0.0   # GPU activities whose launching call was not found
    for k in events:
        # the profiler's own GPU-side spans of the record_function ranges are not kernels
        if k.device_type() != DeviceType.CUDA or k.name().startswith("phase:"):
            continue
        call = launch_of(k)
        if call is None:
            unlinked += 1 / steps
            continue
        phase, seconds = phase_at(call.start_ns()), k.duration_ns() / 1e9 / steps
        op, shapes, span = launcher(call) if phase in ("forward", "backward") else ("", (), ())
        kind = kernel_kind(k.name(), op)
        by_phase[phase][kind] += seconds
        counts[phase] += 1 / steps
        if kind == "other" and op:
            entry = other_ops.setdefault((phase, op), [0.0, 0.0])
            entry[0] += seconds
            entry[1] += 1 / steps
            names = other_names.setdefault((phase, op), defaultdict(float))
            names[k.name()[:80]] += seconds
        elif kind == "gemm" and op in GEMM_OPS:   # one op may launch several activities (a kernel and a memset)
            g = gemm_shapes.setdefault((op, shapes), [0.0, set(), gemm_flops(op, shapes)])
            g[0] += seconds
            g[1].add(span)
    return {
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else device, "torch": torch.__version__,
        "steps": steps, "step_wall_s": round(step_wall_s, 6), "max_sm_mhz": max_sm,
        "phases": wall,
        "gpu_s_by_kind": {p: {k: round(v, 6) for k, v in d.items()} for p, d in by_phase.items()},
        "kernels_per_step": {p: round(c, 1) for p, c in counts.items()},
        "unlinked_per_step": round(unlinked, 1),
        "other_ops": [{"phase": p, "op": op, "s_per_step": round(v[0], 6), "kernels_per_step": round(v[1], 1),
                       "kernel": max(other_names[(p, op)].items(), key=lambda kv: kv[1])[0]}
                      for (p, op), v in sorted(other_ops.items(), key=lambda kv: -kv[1][0])[:30]],
        "gemms": [{"op": op, "shapes": [list(x) for x in shapes], "s_per_step": round(v[0], 6),
                   "calls_per_step": round(len(v[1]) / steps, 2),
                   "tflops": round(v[2] * len(v[1]) / steps / v[0] / 1e12, 1) if v[0] and v[2] else None}
                  for (op, shapes), v in sorted(gemm_shapes.items(), key=lambda kv: -kv[1][0])[:16]],
    }


def gemm_flops(op: str, shapes: tuple) -> float | None:
    """2 m n k (times the batch for bmm) of a GEMM op from its input shapes (addmm/baddbmm: the bias first)."""
    mats = shapes[1:] if op in ("aten::addmm", "aten::baddbmm") else shapes
    if len(mats) < 2:
        return None
    a, b = mats[0], mats[1]
    if len(a) == 2 and len(b) == 2:
        return 2.0 * a[0] * a[1] * b[1]
    if len(a) == 3 and len(b) == 3:
        return 2.0 * a[0] * a[1] * a[2] * b[2]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default=str(ROOT / "scenarios" / "gpu-model-check.yaml"))
    parser.add_argument("--set", action="append", default=None, dest="sets", metavar="KEY=VALUE")
    parser.add_argument("--steps", default="3", help=f"training steps profiled (1 to {MAX_STEPS})")
    parser.add_argument("--price-only", action="store_true", help="print the roofline's side alone (no GPU)")
    args = parser.parse_args(argv)
    # the built-in scenario as scripts/gpu-check.sh runs it, a scenario of the user's made a training step; --set
    # adds to these (a later setting of a key wins)
    default = args.scenario == parser.get_default("scenario")
    sets = (DEFAULT_SETS if default else ["workload.mode=train"]) + (args.sets or [])
    try:
        price = priced(args.scenario, sets)
    except (ScenarioError, CostModelError) as exc:   # a bad file, or a case the cost model cannot price
        print(f"gpu_train_breakdown: {exc}", file=sys.stderr)
        return 2
    steps, problem = whole_number_option("--steps", args.steps, 1, MAX_STEPS)
    if problem is not None or steps is None:
        print(f"gpu_train_breakdown: {problem}", file=sys.stderr)
        return 2
    out: dict = {"priced": price}
    if not args.price_only and not price["fits"]:
        print(f"gpu_train_breakdown: {args.scenario}: the step needs {price['memory_gb']:g} GB on the roofline's "
              f"{price['device']}, more than it holds; allowed: a smaller step (--set workload.batch=..., "
              f"workload.model.layers=...), or --price-only", file=sys.stderr)
        return 2
    if not args.price_only:
        import torch
        if not torch.cuda.is_available():
            print("gpu_train_breakdown: no CUDA device (--price-only prints the roofline's side alone)",
                  file=sys.stderr)
            return 1
        got = out["measured"] = measured(args.scenario, sets, steps)
        out["priced_over_measured"] = {
            phase: {kind: round(seconds / got["gpu_s_by_kind"][phase][kind], 3)
                    for kind, seconds in kinds.items() if got["gpu_s_by_kind"].get(phase, {}).get(kind)}
            for phase, kinds in price["by_phase"].items()}
        got_opt = sum(got["gpu_s_by_kind"].get("optimizer", {}).values())
        if got_opt:
            out["priced_over_measured"]["optimizer"] = round(price["optimizer_s"] / got_opt, 3)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
