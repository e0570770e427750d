"""A measured result row, put together once for every measured backend.

The columns every measured row has: the workload's parameter and FLOP counts (from the meta-device
profile of the same module), the timing summary, peak memory, MFU against the given peak (model FLOPs
/ step time / devices / peak), energy, the T = m*C/n breakdown where the backend knows it, and the
extras each backend adds, with `step_times_s` (every timed step, for re-analysis) among them; then
`llmsim.results.fill_derived` derives tokens/s, TFLOP/s, the scaling columns and J/token.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from llmsim.backend import Backend, Case
from llmsim.measure.summary import Energy, MeasuredSplit, StepSummary
from llmsim.results import Result, fill_derived
from llmsim.workload.profile import profile_workload


def measured_result(backend: Backend, case: Case, summary: StepSummary, *, hardware: str,
                    peak_memory_bytes: float | None, peak_flops_per_s: float | None = None,
                    breakdown: MeasuredSplit | None = None, energy: Energy | None = None,
                    extra: dict[str, Any] | None = None, expert_tokens: list[list[int]] | None = None,
                    attention_kernel: str | None = None) -> Result:
    """The `ok` row of `case` measured by `backend`; MFU is left empty without a peak. `expert_tokens`: the
    tokens the run routed to each expert per MoE layer (expert_load_imbalance, and extra `expert_tokens`);
    `attention_kernel`: the SDPA kernel the run ran (llmsim.measure.sdpa), None where not watched."""
    profile = profile_workload(case.workload, case.sharing)
    values: dict[str, Any] = dict(
        hardware=hardware, nodes=1, attention_kernel=attention_kernel, params=profile.params, trainable_params=profile.trainable_params,
        params_active=profile.active_params, model_flops_per_step=profile.model_flops_per_step, peak_memory_bytes_per_device=peak_memory_bytes,
        **summary.columns())
    if breakdown is not None:
        values.update(asdict(breakdown))
    if peak_flops_per_s:
        values["mfu"] = profile.model_flops_per_step / summary.step_time_s / case.layout.world / peak_flops_per_s
    if energy is not None:
        values.update(energy_j_per_step=energy.j_per_step, energy_source=energy.source)
    values["extra"] = {**(extra or {}), "step_times_s": json.dumps([round(t, 6) for t in summary.step_times_s])}
    if expert_tokens:
        from llmsim.workload.moe import load_imbalance  # torch's module: imported where a MoE run is measured

        values["expert_load_imbalance"] = load_imbalance(expert_tokens)
        values["extra"]["expert_tokens"] = json.dumps(expert_tokens)
    return fill_derived(case.result(backend, **values), case.workload.tokens_per_step)
