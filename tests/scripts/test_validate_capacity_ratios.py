"""The capacity-ratio dev table (validation/serving_capacity_ratios.csv) in scripts/validate.py: a ratio a paper's
text states ("up to 2.6x higher serving capacity than vLLM") is priced from the capacity rows' rate searches
(one search per configuration, shared with the capacity table): `one` pair, or the largest ratio of the pairs for
`max` ("up to"); a capacity row a ratio uses needs its configuration, not its published capacity; bad cells are
one line with exit 2."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import llmsim.planner.serve as serve
from llmsim.planner.serve import rate_search
from tests.scripts.test_validate_capacity import _row, _write, v  # noqa: F401  (the module fixture)


def _tiny(v, **values: object) -> dict[str, object]:
    """The capacity tests' tiny row, with 1 simulated second a probe (a search is a few seconds here)."""
    return _row(v, **{"duration_s": 1, "rate_start": 100, **values})


def _slower(v, **values: object) -> dict[str, object]:
    """C2: C1 with twice the output tokens (a lower capacity)."""
    return _tiny(v, row_id="C2", output_median=60, output_p90=90, **values)


def _ratio(**values: object) -> dict[str, object]:
    row = {"row_id": "R1", "statement": "tiny: C1 / C2", "capacity_file": "capacity.csv", "numerator": "C1",
           "denominator": "C2", "reduction": "one", "published": 2.0, "skip_reason": "", "assumptions": "",
           "source": "test"}
    row.update(values)
    return row


def _tables(v, tmp_path: Path, ratios: list[dict[str, object]], capacity: list[dict[str, object]] | None = None,
            columns=None) -> Path:
    """capacity.csv (two tiny rows by default, C1 and the slower C2) and ratios.csv beside it."""
    _write(tmp_path, capacity or [_tiny(v), _slower(v)])
    path = tmp_path / "ratios.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns or list(ratios[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(ratios)
    return path


def _sustained(v, capacity: Path) -> dict[str, float]:
    """Each row's capacity by the planner's own search, called directly (not through the table)."""
    return {str(r["row_id"]): rate_search(v.capacity_task(r))[0].sustained_rate
            for r in v.read_capacity_runs(capacity)}


def test_the_ratio_table_loads_and_every_row_names_its_source_and_rows(v) -> None:
    rows = v.read_capacity_ratios(v.TABLES["capacity-ratios"].default)
    assert rows
    for r in rows:
        assert r["source"] and r["statement"] and r["assumptions"]
        assert r["skip_reason"] or r["published"] > 0
        for row_id in r["numerator"] + r["denominator"]:
            assert row_id in r["capacity_rows"]


@pytest.mark.slow
def test_a_ratio_is_the_ratio_of_the_rows_rate_searches(v, tmp_path: Path) -> None:
    [case] = v.capacity_ratio_cases(_tables(v, tmp_path, [_ratio()]))
    outcome = v.run_ratio_case(case)
    assert outcome.failure is None, outcome.failure
    direct = _sustained(v, tmp_path / "capacity.csv")
    c1, c2 = direct["C1"], direct["C2"]
    assert c1 > c2 > 0                                # longer outputs sustain less: the ratio is not 1 by luck
    assert outcome.predicted == pytest.approx(c1 / c2, rel=1e-12)
    assert outcome.error == pytest.approx(c1 / c2 / 2.0 - 1, rel=1e-12)


@pytest.mark.slow
def test_max_is_the_largest_pair_and_one_search_per_configuration(v, tmp_path: Path, monkeypatch) -> None:
    calls: list[float] = []

    def counting(task):  # noqa: ANN001, ANN202
        calls.append(task.goal_rate)
        return rate_search(task)

    monkeypatch.setattr(serve, "rate_search", counting)
    v._RATE_SEARCHES.clear()
    path = _tables(v, tmp_path, [_ratio(row_id="R1", numerator="C1 C2", denominator="C2 C1", reduction="max"),
                                 _ratio(row_id="R2", numerator="C2", denominator="C1", published=0.5)])
    outcomes = [v.run_ratio_case(c) for c in v.capacity_ratio_cases(path)]
    assert len(calls) == 2                            # C1 and C2 searched once each for both ratio rows
    up_to, one = outcomes
    assert up_to.result.pair == ("C1", "C2") and up_to.predicted == pytest.approx(1 / one.predicted)
    assert up_to.predicted > 1 > one.predicted
    # the capacity table of the same file reuses the searches
    v.run_capacity_case(v.capacity_cases(tmp_path / "capacity.csv")[0])
    assert len(calls) == 2


@pytest.mark.slow
def test_a_ratio_uses_a_skipped_capacity_rows_configuration_not_its_published_value(v, tmp_path: Path) -> None:
    capacity = [_tiny(v, published="", skip_reason="only in a figure"), _slower(v)]
    [case] = v.capacity_ratio_cases(_tables(v, tmp_path, [_ratio()], capacity))
    assert v.run_ratio_case(case).predicted > 1


def test_a_capacity_row_without_capacity_leaves_the_ratio_unpriced(v, tmp_path: Path) -> None:
    capacity = [_tiny(v, rate_start=0.5), _slower(v)]   # C1 sustains its rate_start: no capacity to report
    [case] = v.capacity_ratio_cases(_tables(v, tmp_path, [_ratio()], capacity))
    outcome = v.run_ratio_case(case)
    assert outcome.result is None and outcome.failure.startswith("C1: it sustains rate_start")


@pytest.mark.slow
def test_the_table_prints_each_ratio_and_the_median_of_its_errors(v, tmp_path: Path, capsys) -> None:
    path = _tables(v, tmp_path, [_ratio(), _ratio(row_id="R2", published=4.0),
                                 _ratio(row_id="R3", published="", skip_reason="ambiguous in the source")])
    assert v.main(["--table", "capacity-ratios", "--path", str(path)]) == 0
    out = capsys.readouterr().out
    predicted = v.run_ratio_case(v.capacity_ratio_cases(path)[0]).predicted
    errors = sorted(abs(predicted / p - 1) for p in (2.0, 4.0))
    assert f"median |error| {sum(errors) / 2:.1%} over 2 rows" in out
    assert "R3" in out and "ambiguous in the source" in out


@pytest.mark.parametrize(("change", "where", "words"), [
    ({"reduction": "min"}, "R1.reduction", "allowed: one, max"),
    ({"denominator": "C2 C1", "numerator": "C1", "reduction": "max"}, "R1.denominator", "as many"),
    ({"numerator": "C1 C2", "denominator": "C2 C1"}, "R1.numerator", "one pair"),
    ({"denominator": "C9"}, "R1.denominator", "'C9' is not a row"),
    ({"published": "-1"}, "R1.published", "positive number"),
    ({"published": "2.6x"}, "R1.published", "positive number"),
    ({"published": ""}, "R1.published", "required"),
    ({"capacity_file": "nowhere.csv"}, "R1.capacity_file", "not found"),
    ({"source": ""}, "R1.source", "names its"),
])
def test_a_bad_cell_is_one_line_and_exit_2(v, tmp_path: Path, capsys, change, where, words) -> None:
    path = _tables(v, tmp_path, [_ratio(**change)])
    assert v.main(["--table", "capacity-ratios", "--path", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and where in err and str(path) in err and words in err


def test_a_used_capacity_row_needs_its_configuration(v, tmp_path: Path, capsys) -> None:
    capacity = [_tiny(v, input_median="", published="", skip_reason="only in a figure"), _slower(v)]
    path = _tables(v, tmp_path, [_ratio()], capacity)
    assert v.main(["--table", "capacity-ratios", "--path", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "C1.input_median" in err and "capacity.csv" in err


def test_a_missing_column_is_one_line_and_exit_2(v, tmp_path: Path, capsys) -> None:
    columns = [c for c in v.CAPACITY_RATIOS if c != "reduction"]
    path = _tables(v, tmp_path, [_ratio()], columns=columns)
    assert v.main(["--table", "capacity-ratios", "--path", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "reduction" in err and "missing column" in err
