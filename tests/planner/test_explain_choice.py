"""The winner's and runner-up's limiting factor, the one change that would move each most, and the ±20%
sensitivity table (planner.whatif, explain.limit_of, explain.training_sensitivity) for training plans."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from llmsim.config import Sharing, SharingChoice, Workload
from llmsim.costmodel import Options, Plan, estimate
from llmsim.planner import run_plan
from llmsim.planner.explain import FACTORS, limit_of, sensitivity_rows, training_sensitivity
from llmsim.planner.search import Context, evaluate, objective_key, search, sharing_choice, workload_profile
from llmsim.planner.whatif import perturb_cluster
from llmsim.workload.profile import profile_workload
from tests.planner.helpers import BASE, hardware, small_catalog, small_plan


def _searched(memory_bytes: float) -> tuple:
    plan = small_plan(hardware=[{"name": "small-gpu", "usd_per_device_hour": 1.0, "devices_per_node": 4}])
    hw = hardware(plan, small_catalog(memory_bytes))
    rows, _ = search(plan, hw)
    sharing = sharing_choice(plan)
    profile = workload_profile(plan.workload, sharing)
    contexts = {(h.name, ""): Context(plan, h, profile, sharing) for h in hw}  # "": the plan's own precision
    return plan, rows, [e for e in rows if e.feasible][:2], contexts


def test_perturb_cluster_moves_one_number_and_leaves_the_original() -> None:
    node = BASE.cluster("h100-sxm", 2, 8)
    link = perturb_cluster(node, "link", 0.8)
    assert link.intra.bandwidth_bytes_per_s == pytest.approx(0.8 * node.intra.bandwidth_bytes_per_s)
    assert link.inter.bandwidth_bytes_per_s == pytest.approx(0.8 * node.inter.bandwidth_bytes_per_s)
    assert link.device is node.device
    gemm = perturb_cluster(node, "gemm", 1.2)
    assert gemm.efficiency.matmul == pytest.approx(1.2 * node.efficiency.matmul)
    assert gemm.efficiency.memory == node.efficiency.memory
    memory = perturb_cluster(node, "memory", 0.8)
    assert memory.efficiency.memory == pytest.approx(0.8 * node.efficiency.memory)
    assert node.efficiency.matmul == BASE.devices["h100-sxm"].efficiency.matmul  # the catalog is untouched
    assert perturb_cluster(node, "gemm", 1.0) is node


def test_what_ifs_move_a_large_model_step_the_right_way() -> None:
    """GEMM-bound training: -20% GEMM efficiency slows the step, +20% speeds it; a slower link never speeds it."""
    w = Workload.model_validate({"model": {"preset": "gpt2-small"}, "mode": "train", "batch": 16})
    sharing = SharingChoice.resolve(Sharing(), w.model)
    profile = profile_workload(w, sharing)
    plan = Plan(dp=2, tp=4, pp=1, micro_batch=8, microbatches=1)
    node = BASE.cluster("a100-80gb", 1, 8)
    step = {(k, f): estimate(w, profile, sharing, plan, perturb_cluster(node, k, f), Options()).step_time_s
            for k in ("link", "gemm", "memory") for f in (0.8, 1.0, 1.2)}
    assert step[("gemm", 0.8)] > step[("gemm", 1.0)] > step[("gemm", 1.2)]
    assert step[("link", 0.8)] > step[("link", 1.0)] > step[("link", 1.2)]
    assert step[("memory", 0.8)] >= step[("memory", 1.0)] >= step[("memory", 1.2)]


def test_sensitivity_rows_and_their_verdict() -> None:
    plan, rows, top, contexts = _searched(8e5)
    s = training_sensitivity(plan, top[0], top[1], contexts)
    assert [(r.knob, r.factor) for r in s.rows] == [(k, f) for k in ("link", "gemm", "memory") for f in (0.8, 1.2)]
    assert s.base == (top[0].cost_usd, top[1].cost_usd)
    # the verdict is the ranking's own: re-evaluate by hand for every what-if and compare
    key = objective_key(plan.objective)
    for r in s.rows:
        ctx = [contexts[(e.config.hardware, e.config.precision)] for e in top]
        again = [evaluate(replace(c, hardware=replace(c.hardware, node=perturb_cluster(c.hardware.node, r.knob,
                                                                                       r.factor))), e.config)
                 for c, e in zip(ctx, top)]
        assert r.winner == again[0].cost_usd and r.runner_up == again[1].cost_usd
        assert r.flips == (key(again[1]) < key(again[0]))
    table = sensitivity_rows(s)
    assert table[0][0] == "as priced" and len(table) == 7


def test_memory_is_the_limit_when_the_best_change_does_not_fit() -> None:
    """At 1.2 MB a device cannot hold the tiny model's activations without full recompute: dropping it would
    be cheaper but does not fit, so memory is what limits the winner."""
    plan, rows, top, contexts = _searched(1.2e6)
    assert top[0].config.recompute == "full"
    lim = limit_of(top[0], "winner", rows, plan, contexts, None)
    assert lim.factor == "memory"
    assert lim.change.startswith("recompute full -> none: cost -") and "memory" in lim.change
    assert lim.gain is not None and lim.gain < 0


def test_without_a_memory_block_the_factor_is_the_largest_time_share() -> None:
    plan, rows, top, contexts = _searched(3e6)
    for e, who in zip(top, ("winner", "runner-up")):
        lim = limit_of(e, who, rows, plan, contexts, training_sensitivity(plan, top[0], top[1], contexts))
        assert lim.factor in FACTORS
        if lim.factor != "memory":
            assert lim.shares[lim.factor] == max(lim.shares[k] for k in ("compute", "communication", "bubble"))


def test_the_plan_report_and_outcome_carry_limits_and_sensitivity(tmp_path: Path) -> None:
    plan = small_plan(hardware=[{"name": "small-gpu", "usd_per_device_hour": 1.0, "devices_per_node": 4}])
    outcome = run_plan(plan, small_catalog(1.2e6), tmp_path)
    why = outcome.explanation
    assert [lim.who for lim in why.limits] == ["winner", "runner-up"] and why.sensitivity is not None
    assert any(line.startswith("winner: limited by memory") for line in why.choice)
    # each clause says what it is: the limit and why, the step's time shares, the change (they read as one
    # parenthesis: "limited by memory (compute 96%, ...)", as if the shares were the memory limit's reason)
    line = next(line for line in why.choice if line.startswith("winner: limited by memory"))
    assert line.startswith("winner: limited by memory (the change that would help it most does not fit in memory); "
                           "step time: compute "), line
    assert "; the one change that would move it most: " in line
    md = (outcome.run_dir / "plan.md").read_text()
    assert "Limits and sensitivity" in md and "GEMM efficiency +20%" in md and "limited by memory" in md


def test_a_simulated_plan_is_re_priced_by_the_simulation(tmp_path: Path) -> None:
    """The top is ordered by the cluster simulation, so the what-ifs are too: the table's base is the simulated
    cost of each (else a roofline/simulation difference would read as a flip)."""
    plan = small_plan(simulate=True, hardware=[{"name": "small-gpu", "usd_per_device_hour": 1.0,
                                                "devices_per_node": 4}])
    outcome = run_plan(plan, small_catalog(8e5), tmp_path)
    s = outcome.explanation.sensitivity
    assert outcome.simulated and s is not None and "simulation" in s.priced_by
    assert s.base == pytest.approx((outcome.top[0].sim["cost_usd"], outcome.top[1].sim["cost_usd"]))
    assert s.base[0] <= s.base[1]


def test_each_clause_of_a_choice_line_says_what_it_is() -> None:
    from llmsim.planner.explain import Limit, choice_lines

    shares = {"compute": 0.96, "communication": 0.03, "bubble": 0.01, "other": 0.0}
    lines = choice_lines([Limit("winner", "memory", shares, "tp 8 -> 4: cost -12.0% (blocked: memory)", -0.12,
                                "the change that would help it most does not fit in memory"),
                          Limit("runner-up", "compute", shares, "no single change improves it", None,
                                "its largest share of the step time"),
                          Limit("winner", "compute", {}, "no rate met the SLO", None)], None)
    assert lines == [
        "winner: limited by memory (the change that would help it most does not fit in memory); step time: compute "
        "96%, communication 3%, bubble 1%; the one change that would move it most: tp 8 -> 4: cost -12.0% "
        "(blocked: memory)",
        "runner-up: limited by compute (its largest share of the step time); step time: compute 96%, communication "
        "3%, bubble 1%; the one change that would move it most: no single change improves it",
        "winner: limited by compute; the one change that would move it most: no rate met the SLO",
    ]



def test_the_limit_reads_the_step_as_the_sensitivity_prices_it(tmp_path: Path) -> None:
    """Issue 18: the limiting factor read the roofline's split while the sensitivity re-priced by simulation.
    A simulated plan's limits now read the simulated split, the one the what-ifs move."""
    from llmsim.planner.explain import step_shares
    plan = small_plan(simulate=True, hardware=[{"name": "small-gpu", "usd_per_device_hour": 1.0,
                                                "devices_per_node": 4}])
    outcome = run_plan(plan, small_catalog(8e5), tmp_path)
    s = outcome.explanation.sensitivity
    assert s is not None and all(p is not None for p in s.priced)
    for lim, priced, e in zip(outcome.explanation.limits, s.priced, outcome.top):
        assert priced.step_time_s == pytest.approx(e.sim["step_time_s"])
        assert lim.shares == step_shares(priced) and lim.shares_of == "simulated step time"


def test_a_split_unlike_the_rows_is_the_one_the_limit_reads() -> None:
    from llmsim.planner.explain import step_shares
    plan, rows, top, contexts = _searched(8e10)
    s = training_sensitivity(plan, top[0], top[1], contexts)
    step = top[0].step_time_s
    other = replace(top[0], compute_time_s=0.2 * step, comm_time_s=0.8 * step, bubble_time_s=0.0, other_time_s=0.0)
    lim = limit_of(top[0], "winner", rows, plan, contexts, replace(s, priced=(other, s.priced[1])))
    assert lim.shares == step_shares(other) and lim.factor == "communication"


def test_the_what_if_that_moves_the_objective_most_names_the_factor() -> None:
    """ZeRO-3 at 1024 ranks: compute is most of the step, but each layer waits for its gather, so +20% link
    bandwidth cuts the cost by 12% and +20% GEMM efficiency by 0.3%: the limit is communication, as the
    sensitivity says, not compute, as the shares alone would."""
    from llmsim.planner.explain import Sensitivity, SensitivityRow
    plan, rows, top, contexts = _searched(8e10)
    step, base = top[0].step_time_s, top[0].cost_usd
    split = replace(top[0], compute_time_s=0.82 * step, comm_time_s=0.18 * step, bubble_time_s=0.0, other_time_s=0.0)
    moved = {"link": 0.883, "gemm": 0.997, "memory": 0.999}
    s = Sensitivity("cost", "w", "r", (base, base), [SensitivityRow(k, f, base * (moved[k] if f > 1 else 1.1), base,
                                                                    True, True, False)
                                                     for k in moved for f in (0.8, 1.2)], priced=(split, split))
    lim = limit_of(top[0], "winner", rows, plan, contexts, s)
    assert lim.factor == "communication" and lim.why.startswith("link bandwidth +20% moves its cost most: -11.7%")
    # a what-if under the threshold leaves the shares to decide
    flat = replace(s, rows=[replace(r, winner=base * 0.995) if r.factor > 1 else r for r in s.rows])
    assert limit_of(top[0], "winner", rows, plan, contexts, flat).factor == "compute"


def test_a_step_that_memory_efficiency_moves_most_is_limited_by_memory_bandwidth() -> None:
    """A decode-like step: its cost is fixed by the device count (no what-if moves it), its compute share is the
    largest, yet +20% memory efficiency shortens the step by 6.6% and +20% GEMM efficiency by nothing: the
    kernels are bandwidth-bound, so the limit is memory bandwidth (it used to say compute, against the table)."""
    from llmsim.planner.explain import Sensitivity, SensitivityRow
    plan, rows, top, contexts = _searched(8e10)
    step, base = top[0].step_time_s, top[0].cost_usd
    split = replace(top[0], compute_time_s=0.78 * step, comm_time_s=0.22 * step, bubble_time_s=0.0, other_time_s=0.0)
    times = {"link": 0.99, "gemm": 1.0, "memory": 0.934}
    s = Sensitivity("cost", "w", "r", (base, base),
                    [SensitivityRow(k, f, base, base, True, True, False, times=(step * (times[k] if f > 1 else 1.1),
                                                                                step))
                     for k in times for f in (0.8, 1.2)], base_times=(step, step), priced=(split, split))
    lim = limit_of(top[0], "winner", rows, plan, contexts, s)
    assert lim.factor == "memory bandwidth" and "memory efficiency +20% moves its" in lim.why and "-6.6%" in lim.why
    assert lim.factor in FACTORS
    # when GEMM efficiency moves the step most, the compute share stands
    gemm = replace(s, rows=[replace(r, times=(step * 0.9, step)) if r.knob == "gemm" and r.factor > 1 else r
                            for r in s.rows])
    assert limit_of(top[0], "winner", rows, plan, contexts, gemm).factor == "compute"


def test_the_choice_line_says_tie_when_winner_and_runner_up_are_equal_in_every_case() -> None:
    """'stays ahead' would be false for two configurations of the same price in every what-if (the 70B plan's
    context-parallel variants): the line says they tie and the tie-break keeps the order; and a what-if in which
    the runner-up ranks first while both miss the goal says so."""
    from llmsim.planner.explain import Sensitivity, SensitivityRow, choice_lines

    def row(w: float, r: float, ok: bool = True, flips: bool = False) -> SensitivityRow:
        return SensitivityRow("link", 0.8, w, r, ok, ok, flips)

    tied = Sensitivity("cost (USD)", "a", "b", (10.0, 10.0), [row(11.0, 11.0), row(9.0, 9.0)])
    assert ("robust (the winner and the runner-up tie in every case; the tie-break keeps the order)"
            in choice_lines([], tied)[-1])
    ahead = Sensitivity("cost (USD)", "a", "b", (10.0, 12.0), [row(11.0, 13.0), row(9.0, 9.5)])
    assert choice_lines([], ahead)[-1].endswith("robust (the winner stays ahead in every case); the winner's cost "
                                                "(USD) moves most under link bandwidth -20%: +10.0%")
    both_miss = Sensitivity("cost (USD)", "a", "b", (10.0, 12.0), [row(11.0, 10.5, ok=False, flips=True)])
    assert sensitivity_rows(both_miss)[1][-1] == "runner-up (flips; both miss)"
    # the order holds in every what-if while the winner misses the goal in one: "robust" alone would hide that
    fragile = Sensitivity("cost (USD)", "a", "b", (10.0, 12.0), [row(11.0, 13.0, ok=False), row(9.0, 9.5)])
    assert ("robust (the winner stays ahead in every case); the winner misses the goal under link bandwidth -20%;"
            in choice_lines([], fragile)[-1])
    assert "misses the goal" not in choice_lines([], ahead)[-1]


def test_a_move_that_exposed_communication_cannot_explain_is_said_to_be_hidden_communication() -> None:
    """The 70B winner: exposed communication 4% of the step, yet link bandwidth -20% costs +19.5%: the
    collectives overlapped with compute stop hiding under it, which the shares alone do not show."""
    from llmsim.planner.explain import Limit, Sensitivity, SensitivityRow, choice_lines
    limit = Limit("winner", "compute", {"compute": 0.96, "communication": 0.04}, "none", None)
    s = Sensitivity("cost", "a", "b", (10.0, 12.0), [SensitivityRow("link", 0.8, 11.95, 14.0, True, True, False)])
    assert choice_lines([limit], s)[-1].endswith("moves most under link bandwidth -20%: +19.5% (its exposed "
                                                 "communication, 4% of the step, explains far less: collectives "
                                                 "that overlap compute stop hiding under it)")
    small = Sensitivity("cost", "a", "b", (10.0, 12.0), [SensitivityRow("link", 0.8, 10.1, 14.0, True, True, False)])
    assert choice_lines([limit], small)[-1].endswith("link bandwidth -20%: +1.0%")   # what 4% exposed can explain


def test_a_configuration_that_misses_in_a_what_if_names_what_it_breaks() -> None:
    """'(misses)' alone left the reader to guess whether the deadline, memory or power failed: the cell names
    the limits (search.Evaluation.limits / serve.CandidateResult.limits), and says only '(misses)' where none
    were recorded."""
    from llmsim.planner.explain import Sensitivity, SensitivityRow
    rows = [SensitivityRow("link", 0.8, 11.0, 10.5, False, True, True, limits=(("deadline", "power"), ())),
            SensitivityRow("gemm", 1.2, None, 9.0, False, True, True, limits=(("memory",), ())),
            SensitivityRow("memory", 0.8, 11.0, 12.0, False, True, True)]
    cells = sensitivity_rows(Sensitivity("cost (USD)", "a", "b", (10.0, 12.0), rows))
    assert cells[1][1].endswith("(misses: deadline, power)") and "misses" not in cells[1][2]
    assert cells[2][1] == "– (misses: memory)"
    assert cells[3][1].endswith("(misses)")
    # trial 40: "7.5 ms (misses: throughput)" beside "7.5 ms" read as a contradiction; with the reason kept, the
    # cell says what fell short and by how much
    said = SensitivityRow("link", 0.8, 7.5e-3, 8e-3, False, True, True, limits=(("throughput",), ()),
                          reasons=("throughput: 18,230 tokens/s < 20,000", ""))
    [_, cell] = sensitivity_rows(Sensitivity("time", "a", "b", (7.5e-3, 8e-3), [said]))
    assert cell[1].endswith("(misses throughput: 18,230 tokens/s < 20,000)"), cell


@pytest.mark.parametrize("memory_bytes", [1.2e6, 3e6])
def test_the_neighbours_found_on_the_columns_are_those_of_every_row(memory_bytes: float) -> None:
    """limit_of over search.Rows (its one-field neighbours found on Rows.field columns) says what it says over the
    same rows as a list of Evaluations (every row asked `_one_field_apart`), for every feasible row as `e`."""
    plan, rows, top, contexts = _searched(memory_bytes)
    listed = list(rows)
    asked = 0
    for e in [x for x in listed if x.feasible][:6] + top:
        for who in ("winner", "runner-up"):
            assert limit_of(e, who, rows, plan, contexts, None) == limit_of(e, who, listed, plan, contexts, None)
            asked += 1
    assert asked >= 8


def test_a_duration_no_run_reaches_reads_as_a_number_of_days_not_nineteen_digits() -> None:
    """Trial 29: goal.tokens 1.4e30 read 'takes 5083124457904510976.0 days'."""
    from llmsim.planner.explain import fmt_duration
    assert fmt_duration(4.39e23) == "5.08e+18 days"
    assert fmt_duration(86400 * 1234.5) == "1,234.5 days" and fmt_duration(7200) == "2.0 h"
