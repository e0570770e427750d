"""Request-length distributions: the exponential and quantiles forms, the filter (rejection, not clipping),
one seed one list, one-line errors (exit 2), and the offline-batch mechanism a length spread brings."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from llmsim.serving.metrics import summarize
from llmsim.serving.requests import Request, build_requests, draw_lengths, quantile_tokens
from llmsim.serving.schedulers import BUILTIN
from llmsim.serving.spec import Lengths, QuantileLength, ServingCase, ServingSpec
from tests.serving.helpers import run
from tests.serving.test_spec import SERVING, _error

N = 20_000


def _lengths(**block: Any) -> Lengths:
    return Lengths.model_validate(block)


def test_exponential_lengths_have_the_asked_mean_and_median() -> None:
    """round(mean * E): mean `mean`, median mean * ln 2 (hand-checkable: 100 -> 69)."""
    outputs = [o for _, o in draw_lengths(_lengths(input=1, output={"kind": "exponential", "mean": 100}), N, 0)]
    assert statistics.fmean(outputs) == pytest.approx(100, rel=0.03)
    assert statistics.median(outputs) == pytest.approx(100 * math.log(2), rel=0.05)


def test_quantiles_are_linear_between_the_published_points() -> None:
    """Points (0, 10), (0.5, 20), (1, 100): F^-1(0.25) = 15, F^-1(0.75) = 60. Draws are rounded, so
    'at most 15 tokens' is F^-1(U) < 15.5, U < 0.275; at most 20: U < 0.5 + 0.5 x 0.5 / 80 = 0.503; at least
    60: U >= 0.5 + 0.5 x 39.5 / 80 = 0.747."""
    spec = QuantileLength(kind="quantiles", points=[(0, 10), (0.5, 20), (1, 100)])
    assert quantile_tokens(spec, 0.25) == 15 and quantile_tokens(spec, 0.75) == 60
    assert quantile_tokens(spec, 0.0) == 10 and quantile_tokens(spec, 1.0) == 100
    drawn = [i for i, _ in draw_lengths(_lengths(input=spec.model_dump(), output=1), N, 0)]
    assert min(drawn) == 10 and max(drawn) <= 100
    assert sum(d <= 20 for d in drawn) / N == pytest.approx(0.503, abs=0.01)
    assert sum(d <= 15 for d in drawn) / N == pytest.approx(0.275, abs=0.01)
    assert sum(d >= 60 for d in drawn) / N == pytest.approx(0.253, abs=0.01)


def test_the_filter_redraws_a_refused_pair_and_clips_nothing() -> None:
    """Prompts uniform on 1..100 with max_input 50: the prompts that pass are uniform on 1..50 (a clip would
    pile half of them on 50); min 4 drops 1..3; max_total bounds prompt + output."""
    lengths = _lengths(input={"kind": "uniform", "min": 1, "max": 100},
                       output={"kind": "exponential", "mean": 40}, min=4, max_input=50, max_total=80)
    pairs = draw_lengths(lengths, N, 0)
    assert all(4 <= i <= 50 and o >= 4 and i + o <= 80 for i, o in pairs)
    counts = Counter(i for i, _ in pairs)
    assert set(counts) == set(range(4, 51))
    assert counts[50] / N < 2.5 / 47          # about 1/47 each, a few times fewer at 50 (its outputs <= 30)
    assert counts[4] / N == pytest.approx(1 / 47, rel=0.25)


def test_the_same_seed_gives_the_same_filtered_list() -> None:
    block = {"input": {"kind": "exponential", "mean": 161.31}, "output": {"kind": "exponential", "mean": 337.99},
             "min": 4, "max_input": 1024, "max_total": 2048}
    spec = ServingSpec.model_validate({"requests": 200, "arrival": {"kind": "poisson", "rate": 1},
                                       "lengths": block})
    a = build_requests(ServingCase(spec, 0, BUILTIN["continuous"]))
    assert a == build_requests(ServingCase(spec, 0, BUILTIN["continuous"]))
    assert a != build_requests(ServingCase(spec, 1, BUILTIN["continuous"]))
    # the pairs a trace of the same block and seed is written from (scripts/validate.py, all-at-once rows)
    assert spec.lengths is not None
    assert [(r.input_tokens, r.output_tokens) for r in a] == draw_lengths(spec.lengths, 200, 0)


@pytest.mark.parametrize("change,expected", [
    ("serving.lengths.input={kind: exponential}", "serving.lengths.input: exponential: mean: required key is "
                                                  "missing; exponential takes mean"),
    ("serving.lengths.input={kind: lognormal, median: 100, sigma: .nan}",
     "serving.lengths.input: lognormal: sigma: nan: expected a finite number"),
    ("serving.lengths.input={kind: exponential, mean: 0}", "serving.lengths.input: exponential: mean: 0: out of "
                                                           "range; allowed: > 0"),
    ("serving.lengths.input={kind: quantiles, points: [[0.1, 5], [1, 9]]}",
     "serving.lengths.input: quantiles: points: the first p must be 0 and the last 1"),
    ("serving.lengths.input={kind: quantiles, points: [[0, 9], [1, 5]]}",
     "serving.lengths.input: quantiles: points: tokens must not fall: 5.0 after 9.0"),
    # a list's index in brackets, as every key path names it (it read points.1.1)
    ("serving.lengths.input={kind: quantiles, points: [[0, 9], [1, -5]]}",
     "serving.lengths.input: quantiles: points[1][1]: -5: out of range; allowed: > 0"),
    ("serving.lengths.input={kind: zipf, a: 2}", "serving.lengths.input: kind 'zipf': allowed: uniform, lognormal, "
                                                 "exponential, quantiles"),
    ("serving.lengths.max_total=20", "serving.lengths.max_total: 20: every prompt + output is longer (at least 24"),
    ("serving.lengths.max_input=10", "serving.lengths.max_input: 10: every prompt is longer (at least 16"),
    ("serving.lengths.min=9", "serving.lengths.min: 9: no output length reaches it"),
    ("serving.lengths.max_tokens=9", "serving.lengths.max_tokens: unknown key; allowed: input, output, min, "
                                     "max_input, max_total"),
    # one form for the whole block: named as such, with the shape meant (not five missing and unknown keys)
    ("serving.lengths={kind: lognormal, median: 100, sigma: 1}",
     "serving.lengths: one distribution (kind 'lognormal') given for the whole block: a lengths block takes input "
     "and output, each a token count or a form, e.g. {input: {kind: lognormal, ...}, output: 256}"),
])
def test_bad_lengths_are_one_line_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 change: str, expected: str) -> None:
    assert _error(tmp_path, capsys, change, data=SERVING).startswith(expected)


def test_an_offline_batch_with_a_length_spread_is_slower_than_one_at_the_mean() -> None:
    """200 requests at t = 0 (vLLM's offline benchmark): at equal lengths they run as one batch and finish
    together; with the same mean lengths spread out, the batch drains at the pace of its longest answers in
    a tail of small batches, where a decode step costs nearly as much as a full one. So fewer requests/s."""
    spread = draw_lengths(_lengths(input={"kind": "exponential", "mean": 160},
                                   output={"kind": "exponential", "mean": 340},
                                   min=4, max_input=1024, max_total=2048), 200, 0)
    mean_in = round(statistics.fmean(i for i, _ in spread))
    mean_out = round(statistics.fmean(o for _, o in spread))
    equal = [Request(k, 0.0, mean_in, mean_out) for k in range(200)]
    spread_requests = [Request(k, 0.0, i, o) for k, (i, o) in enumerate(spread)]
    rate = {name: summarize(run(requests, max_num_seqs=256, max_batched_tokens=1 << 20), None, None)["requests_per_s"]
            for name, requests in (("equal", equal), ("spread", spread_requests))}
    assert rate["spread"] < 0.8 * rate["equal"]


def test_the_report_names_the_new_forms_and_the_filter() -> None:
    import pandas as pd

    from llmsim.report.run import serving_text
    scenario = {"serving": {"arrival": {"kind": "poisson"},
                            "lengths": {"input": {"kind": "exponential", "mean": 161.31},
                                        "output": {"kind": "quantiles", "points": [[0, 4], [0.5, 200], [1, 2000]]},
                                        "min": 4, "max_total": 2048}}}
    text = serving_text(pd.DataFrame([{"request_rate": 1.0, "scheduler": "continuous"}]), scenario)
    assert ("mean 161.31 (exponential) → 4–2000 (quantiles) tokens (prompt → output; each ≥ 4, "
            "prompt + output ≤ 2048)") in text
