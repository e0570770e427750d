"""Run folders written by the tests: 'measured' times made by the cost model itself with known factors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from llmsim.config import SharingChoice, parse_scenario
from llmsim.costmodel import ClusterSpec, Efficiency, Plan, estimate
from llmsim.hardware import load_catalog
from llmsim.workload.profile import profile_workload

TRUE = dict(matmul=0.6, attention=0.3, memory_bw=8e9, op_overhead_s=2e-5)
PEAK = 1e11
# (mode, seq_len, batch): train, prefill and decode, so that every factor shows in some case
SHAPES = [("train", 64, 2), ("train", 32, 8), ("prefill", 64, 4), ("prefill", 16, 1), ("decode", 64, 2)]


def true_step_s(scenario_data: dict[str, Any], plan: Plan) -> float:
    """The step time of a one-device run of the scenario under `plan`, with the TRUE factors."""
    scenario = parse_scenario(scenario_data)
    catalog = load_catalog()
    device = catalog.device("cpu-host").model_copy(update=dict(
        peak_flops={"float32": PEAK}, memory_bw_bytes_per_s=TRUE["memory_bw"],
        efficiency=Efficiency(matmul=TRUE["matmul"], attention=TRUE["attention"], memory=1.0,
                              op_overhead_s=TRUE["op_overhead_s"])))
    loop = catalog.link("loopback")
    sharing = SharingChoice(True)
    profile = profile_workload(scenario.workload, sharing)
    return estimate(scenario.workload, profile, sharing, plan,
                    ClusterSpec(device=device, intra=loop, inter=loop, nodes=1, devices_per_node=1)).step_time_s


def synthetic_run(root: Path, mode: str, seq_len: int, batch: int, micro_batch: int, probes: bool = False,
                  **strategy: Any) -> Path:
    """A run folder of one cpu row whose 'measured' time is the cost model's with the TRUE factors, for
    the step the cpu backend runs: batch / micro_batch passes of micro_batch sequences (gradient
    accumulation in train; inference runs the whole batch at once, as the cost model does)."""
    data = {"name": f"syn-{mode}-{seq_len}-b{batch}-mb{micro_batch}", "seed": 0,
            "strategies": [{"name": "s", "micro_batch": micro_batch, **strategy}],
            "workload": {"model": {"preset": "tiny", "seq_len": seq_len}, "mode": mode, "batch": batch,
                         "decode_tokens": 8, "dtype": "float32"}}
    step = true_step_s(data, Plan(micro_batch=micro_batch, microbatches=batch // micro_batch))
    run = root / data["name"]
    run.mkdir()
    (run / "scenario.yaml").write_text(yaml.safe_dump(parse_scenario(data).model_dump(mode="json")))
    row = dict(scenario=data["name"], case="s", strategy="s", backend="cpu", kind="measured", status="ok",
               mode=mode, dtype="float32", step_time_s=step, peak_flops_per_s=PEAK)
    if probes:  # the cpu backend's probes: streaming rates around the true bandwidth, a cheaper operator
        row.update(stream_bytes_per_s=2 * TRUE["memory_bw"], stream_large_bytes_per_s=TRUE["memory_bw"] / 2,
                   op_overhead_s=TRUE["op_overhead_s"] / 4)
    (run / "results.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(dict(row, backend="roofline")) + "\n")
    return run
