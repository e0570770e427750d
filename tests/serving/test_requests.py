"""The request list: seeded, the same at every rate apart from the gaps, and the trace files."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from llmsim.serving.requests import (TraceError, build_requests, read_trace, read_trace_in_file_order, trace_notes,
                                     trace_order_notes)
from llmsim.serving.schedulers import BUILTIN
from llmsim.serving.spec import ServingCase, ServingSpec


def _case(seed: int = 0, trace: str | None = None, **serving) -> ServingCase:
    data = {"requests": 4000, "arrival": {"kind": "poisson", "rate": 10},
            "lengths": {"input": {"kind": "uniform", "min": 10, "max": 20}, "output": 7}, **serving}
    return ServingCase(ServingSpec.model_validate(data), seed, BUILTIN["continuous"], trace)


def test_the_same_seed_gives_the_same_list_and_the_first_request_arrives_at_zero() -> None:
    a, b = build_requests(_case(3)), build_requests(_case(3))
    assert a == b and a[0].arrival_s == 0.0 and len(a) == 4000
    assert build_requests(_case(4)) != a


def test_a_sweep_keeps_the_lengths_and_scales_the_gaps() -> None:
    slow = build_requests(_case(arrival={"kind": "poisson", "rate": 5}))
    fast = build_requests(_case(arrival={"kind": "poisson", "rate": 20}))
    assert [(r.input_tokens, r.output_tokens) for r in slow] == [(r.input_tokens, r.output_tokens) for r in fast]
    assert fast[-1].arrival_s == pytest.approx(slow[-1].arrival_s / 4)


@pytest.mark.parametrize("kind,cv", [("poisson", 1.0), ("gamma", 3.0), ("gamma", 0.5), ("constant", 0.0)])
def test_arrival_gaps_have_the_asked_mean_and_variation(kind: str, cv: float) -> None:
    arrival = {"kind": kind, "rate": 10, **({"cv": cv} if kind == "gamma" else {})}
    times = [r.arrival_s for r in build_requests(_case(arrival=arrival))]
    gaps = [b - a for a, b in zip(times, times[1:])]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(0.1, rel=0.05)
    # a fixed seed: deterministic; the tolerance is the sampling error of 4,000 heavy-tailed (cv 3) gaps
    assert statistics.pstdev(gaps) / mean == pytest.approx(cv, abs=0.1, rel=0.1)


def test_lengths_follow_their_distribution() -> None:
    uniform = build_requests(_case())
    assert {r.input_tokens for r in uniform} == set(range(10, 21)) and {r.output_tokens for r in uniform} == {7}
    lognormal = build_requests(_case(lengths={"input": {"kind": "lognormal", "median": 200, "sigma": 0.5},
                                              "output": 1}))
    assert statistics.median(r.input_tokens for r in lognormal) == pytest.approx(200, rel=0.05)


def test_a_duration_gives_the_requests_that_arrive_in_it() -> None:
    requests = build_requests(_case(requests=None, duration_s=60, arrival={"kind": "constant", "rate": 2}))
    assert len(requests) == 120 and requests[-1].arrival_s == pytest.approx(59.5)


@pytest.mark.parametrize("rate,binding", [(2.0, "duration_s"), (50.0, "requests")])
def test_requests_and_duration_stop_arrivals_at_whichever_comes_first(rate: float, binding: str) -> None:
    """Both limits: at 2 requests/s the 30 s run out before 100 requests arrive, at 50 requests/s the count comes
    first. The list is a prefix of each one-limit list of the same seed (the same draws, cut earlier), and the same
    seed gives the same list."""
    arrival = {"kind": "poisson", "rate": rate}
    both = build_requests(_case(5, requests=100, duration_s=30, arrival=arrival))
    assert both == build_requests(_case(5, requests=100, duration_s=30, arrival=arrival))
    by_count = build_requests(_case(5, requests=100, arrival=arrival))
    by_time = build_requests(_case(5, requests=None, duration_s=30, arrival=arrival))
    assert both == by_count[:len(both)] == by_time[:len(both)]
    assert all(r.arrival_s < 30 for r in both)
    if binding == "duration_s":
        assert both == by_time and len(both) < 100
    else:
        assert both == by_count and len(by_time) > 100


def test_a_trace_is_cut_by_whichever_limit_comes_first(tmp_path: Path) -> None:
    path = _trace(tmp_path, "".join(f'{{"arrival_s": {t}, "input_tokens": 5, "output_tokens": 2}}\n'
                                    for t in range(10)), "t.jsonl")
    trace = {"arrival": {"kind": "trace", "path": "t.jsonl"}, "lengths": None}
    assert len(build_requests(_case(trace=path, requests=8, duration_s=3.5, **trace))) == 4     # time first
    assert len(build_requests(_case(trace=path, requests=2, duration_s=3.5, **trace))) == 2     # count first


def _trace(tmp_path: Path, text: str, name: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_trace_is_replayed_as_recorded_or_scaled_to_a_rate(tmp_path: Path) -> None:
    jsonl = _trace(tmp_path, '{"arrival_s": 100.5, "input_tokens": 10, "output_tokens": 3}\n'
                             '{"arrival_s": 101.5, "input_tokens": 20, "output_tokens": 4}\n\n'
                             '{"arrival_s": 103.5, "input_tokens": 30, "output_tokens": 5}\n', "t.jsonl")
    csv = _trace(tmp_path, "input_tokens,arrival_s,output_tokens\n20,1,4\n10,0,3\n30,3,5\n", "t.csv")
    for path in (jsonl, csv):
        recorded = build_requests(_case(trace=path, requests=None, lengths=None, arrival={"kind": "trace",
                                                                                          "path": path}))
        assert [(r.arrival_s, r.input_tokens, r.output_tokens) for r in recorded] == \
            [(0.0, 10, 3), (1.0, 20, 4), (3.0, 30, 5)]
    scaled = build_requests(_case(trace=csv, requests=2, lengths=None,
                                  arrival={"kind": "trace", "path": csv, "rate": 2}))
    # recorded: 2 gaps in 3 s, a mean rate of 2/3 per s; at 2 per s every gap is a third as long
    assert [r.arrival_s for r in scaled] == pytest.approx([0.0, 1 / 3])


def test_a_trace_replay_that_departs_from_its_file_is_said(tmp_path: Path) -> None:
    """Lengths given with a trace replace its recorded counts; more requests than it holds send what it holds.
    Both are said before a run (cli._note_trace); a plain replay says nothing."""
    csv = _trace(tmp_path, "arrival_s,input_tokens,output_tokens\n0,10,3\n1,20,4\n", "t.csv")
    rows = read_trace(csv)
    plain = _case(trace=csv, requests=None, lengths=None, arrival={"kind": "trace", "path": csv})
    assert trace_notes(plain.spec, rows) == []
    drawn = _case(trace=csv, requests=5, arrival={"kind": "trace", "path": csv})
    notes = dict(trace_notes(drawn.spec, rows))
    assert set(notes) == {"serving.lengths", "serving.requests"}
    assert "replaces the trace's recorded" in notes["serving.lengths"] and "the trace has 2 requests: they are all sent" in notes["serving.requests"]
    assert [r.output_tokens for r in build_requests(drawn)] == [7, 7]  # what the note says: drawn, not recorded
    [(key, note)] = trace_notes(plain.spec, rows, context=20)   # 20 + 4 tokens > 20: one request rejected
    assert key == "serving.arrival.path" and note.startswith("1 of the trace's 2 requests is longer than the context")
    assert trace_notes(plain.spec, rows, context=24) == []
    # trial 29: with duration_s too the arrivals stop at the span, so "all sent" was not true
    spanned = _case(trace=csv, requests=5, duration_s=0.5, lengths=None, arrival={"kind": "trace", "path": csv})
    assert dict(trace_notes(spanned.spec, rows))["serving.requests"].endswith(
        "they are sent up to duration_s=0.5 s, at most all of them")
    assert len(build_requests(spanned)) == 1


def test_a_trace_out_of_arrival_order_or_with_negative_times_is_said(tmp_path: Path) -> None:
    """Rows out of order are replayed sorted, times relative to the first arrival: said, not refused (trial 24)."""
    csv = _trace(tmp_path, "arrival_s,input_tokens,output_tokens\n-2,10,3\n1,20,4\n0.5,5,2\n", "t.csv")
    rows, lines = read_trace_in_file_order(csv)
    assert rows == [(-2.0, 10, 3), (1.0, 20, 4), (0.5, 5, 2)] and lines == [2, 3, 4]
    assert read_trace(csv) == [(-2.0, 10, 3), (0.5, 5, 2), (1.0, 20, 4)]
    order, negative = [note for _, note in trace_order_notes(rows, lines)]
    assert order == ("the trace's rows are not in arrival order (line 4's arrival_s 0.5 is before line 3's 1): "
                     "replayed sorted by arrival_s")
    assert negative.startswith("the first arrival is at -2 s (line 2)")
    in_order = _trace(tmp_path, "arrival_s,input_tokens,output_tokens\n0,10,3\n0,5,2\n1,20,4\n", "u.csv")
    assert trace_order_notes(*read_trace_in_file_order(in_order)) == []


@pytest.mark.parametrize("text,name,column", [
    ("arrival_s,input_tokens\n0,5\n", "a.csv", "output_tokens"),
    ('{"arrival_s": 0, "output_tokens": 3}\n', "a.jsonl", "input_tokens"),
    ("arrival_s,input_tokens,output_tokens\nsoon,5,3\n", "b.csv", "arrival_s"),
    ('{"arrival_s": 0, "input_tokens": 0, "output_tokens": 3}\n', "b.jsonl", "input_tokens"),
    ('{"arrival_s": 0, "input_tokens": 2.5, "output_tokens": 3}\n', "c.jsonl", "input_tokens"),
    # trial 29: a column or key given twice was read silently, the last one winning
    ("arrival_s,input_tokens,input_tokens,output_tokens\n0,100,200,20\n", "d.csv", "input_tokens"),
    ('{"arrival_s": 0, "input_tokens": 100, "output_tokens": 20, "input_tokens": 5}\n', "d.jsonl", "input_tokens"),
])
def test_a_bad_trace_names_its_file_and_column(tmp_path: Path, text: str, name: str, column: str) -> None:
    path = _trace(tmp_path, text, name)
    with pytest.raises(TraceError, match=column) as exc:
        read_trace(path)
    assert str(exc.value).startswith(path) and exc.value.column == column


def test_an_empty_or_unreadable_trace_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="has no requests"):
        read_trace(_trace(tmp_path, "arrival_s,input_tokens,output_tokens\n", "e.csv"))
    with pytest.raises(TraceError, match="not JSON"):
        read_trace(_trace(tmp_path, "{nope\n", "e.jsonl"))
    with pytest.raises(TraceError, match="cannot read"):
        read_trace(tmp_path / "missing.jsonl")


def test_a_trace_beyond_the_simulated_clock_is_refused_naming_its_line(tmp_path: Path) -> None:
    """An arrival 1e300 s after the first: every token time added to it rounded away (TTFT = TPOT = 0.0). The span
    is held to MAX_SIMULATED_S, as requests / rate is (issue 16, 1a)."""
    path = _trace(tmp_path, '{"arrival_s": 0, "input_tokens": 5, "output_tokens": 3}\n'
                            '{"arrival_s": 1e300, "input_tokens": 5, "output_tokens": 3}\n', "far.jsonl")
    with pytest.raises(TraceError) as exc:
        read_trace(path)
    assert str(exc.value) == (f"{path}: line 2: arrival_s 1e+300 is 1e+300 s after the first arrival (line 1); "
                              f"allowed: a trace spanning at most 1e+09 s (the simulated clock's resolution)")
    assert exc.value.column == "arrival_s"
    near = _trace(tmp_path, "arrival_s,input_tokens,output_tokens\n5,5,3\n1000000005,5,3\n", "near.csv")
    assert [t for t, _, _ in read_trace(near)] == [5.0, 1000000005.0]   # exactly 1e9 s: allowed


@pytest.mark.parametrize("line, problem", [
    pytest.param('{"arrival_s": 1' + "0" * 400 + ', "input_tokens": 5, "output_tokens": 3}',
                 "arrival_s 1" + "0" * 58 + "… is not finite", id="400-digits"),   # the value cut as every error cuts it
    ('{"arrival_s": 1' + "0" * 5000 + ', "input_tokens": 5, "output_tokens": 3}', "not a usable JSON object (a "
                                                                                   "number of more than 4,300 digits)"),
    ("[" * 200_000 + "]" * 200_000, "not a usable JSON object (nested too deeply)"),
    # trial 27: a token count no float holds said "is not a whole number >= 1", with all 400 digits
    pytest.param('{"arrival_s": 0, "input_tokens": 1' + "0" * 400 + ', "output_tokens": 3}',
                 "input_tokens 1" + "0" * 58 + "… is too large; allowed: a whole number >= 1 and <= 2147483647",
                 id="tokens-400-digits"),
])
def test_a_json_line_python_cannot_hold_is_a_trace_error(tmp_path: Path, line: str, problem: str) -> None:
    """An integer past float's range (OverflowError), past Python's digit limit or nested past the recursion
    limit (ValueError, RecursionError) were tracebacks, not one line."""
    path = _trace(tmp_path, line + "\n", "x.jsonl")
    with pytest.raises(TraceError) as exc:
        read_trace(path)
    assert str(exc.value).startswith(f"{path}: line 1: {problem}")


@pytest.mark.parametrize("text,name", [("\ufeffarrival_s,input_tokens,output_tokens\n0,5,3\n", "bom.csv"),
                                       ('\ufeff{"arrival_s": 0, "input_tokens": 5, "output_tokens": 3}\n', "bom.jsonl")])
def test_a_trace_saved_with_a_byte_order_mark_reads(tmp_path: Path, text: str, name: str) -> None:
    """Excel's "CSV UTF-8" starts the file with U+FEFF: the first column read '\\ufeffarrival_s' (issue 16, 1b)."""
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    assert read_trace(path) == [(0.0, 5, 3)]


@pytest.mark.parametrize("row,fields", [("0,5,3,9", 4), ("0,5", 2)])
def test_a_csv_row_whose_fields_do_not_match_the_header_is_refused(tmp_path: Path, row: str, fields: int) -> None:
    """csv.DictReader files extra fields under None and fills missing ones with None (issue 16, 1c)."""
    path = _trace(tmp_path, f"arrival_s,input_tokens,output_tokens\n0,5,3\n{row}\n", "n.csv")
    with pytest.raises(TraceError) as exc:
        read_trace(path)
    assert str(exc.value) == (f"{path}: line 3: {fields} fields, the header has 3 (arrival_s, input_tokens, "
                              f"output_tokens)")


@pytest.mark.parametrize("column", ["arrival_s", "input_tokens", "output_tokens"])
def test_a_boolean_is_no_number_in_any_trace_column(tmp_path: Path, column: str) -> None:
    """JSON true was read as 1.0 (bool is an int subclass; issue 16, 1d)."""
    row = {"arrival_s": 0, "input_tokens": 5, "output_tokens": 3, column: True}
    path = _trace(tmp_path, json.dumps(row) + "\n", "b.jsonl")
    with pytest.raises(TraceError, match=f"line 1: {column} true is not ") as exc:   # JSON's spelling
        read_trace(path)
    assert exc.value.column == column


def test_a_json_string_holding_a_number_reads_as_the_number_in_every_column(tmp_path: Path) -> None:
    """As a CSV field does: every CSV value is text (docs/serving.md says so)."""
    path = _trace(tmp_path, '{"arrival_s": "1.5", "input_tokens": "5", "output_tokens": "3.0"}\n'
                            '{"arrival_s": 0, "input_tokens": 6, "output_tokens": 2}\n', "s.jsonl")
    assert read_trace(path) == [(0.0, 6, 2), (1.5, 5, 3)]
    csv = _trace(tmp_path, "arrival_s,input_tokens,output_tokens\n0,5.0,3\n", "s.csv")
    assert read_trace(csv) == [(0.0, 5, 3)]
    for bad in ('"x"', '"2.5"', '"0"', '"nan"', "[1]", "null"):
        path = _trace(tmp_path, f'{{"arrival_s": 0, "input_tokens": {bad}, "output_tokens": 3}}\n', "bad.jsonl")
        with pytest.raises(TraceError, match="input_tokens .* is not a whole number >= 1"):
            read_trace(path)


def test_a_trace_whose_arrivals_are_all_at_one_time_says_it_has_no_rate(tmp_path: Path) -> None:
    """Every request at t = 0: no mean arrival rate (request_rate is left empty), and a rate scales no gap; both
    said before a run (issue 16, 1e)."""
    csv = _trace(tmp_path, "arrival_s,input_tokens,output_tokens\n7,10,3\n7,20,4\n", "t.csv")
    rows = read_trace(csv)
    recorded = _case(trace=csv, requests=None, lengths=None, arrival={"kind": "trace", "path": csv})
    [(key, note)] = trace_notes(recorded.spec, rows)
    assert key == "serving.arrival.path"
    assert note == ("every arrival of the trace is at the same time (2 requests at t = 0, a burst): it has no mean "
                    "arrival rate, so request_rate is left empty")
    scaled = _case(trace=csv, requests=None, lengths=None, arrival={"kind": "trace", "path": csv, "rate": 2})
    [(key, note)] = trace_notes(scaled.spec, rows)
    assert key == "serving.arrival.rate"
    assert note == ("every arrival of the trace is at the same time (2 requests at t = 0, a burst): there is no gap "
                    "for the rate to scale, so every request arrives at t = 0 whatever the rate (request_rate says "
                    "the rate asked)")
    assert [r.arrival_s for r in build_requests(scaled)] == [0.0, 0.0]
    one = _trace(tmp_path, "arrival_s,input_tokens,output_tokens\n7,10,3\n", "one.csv")
    assert trace_notes(recorded.spec, read_trace(one)) == []   # one request: nothing to say of gaps


def test_a_csv_trace_named_otherwise_is_read_as_jsonl_and_the_error_says_so(tmp_path: Path) -> None:
    path = _trace(tmp_path, "arrival_s,input_tokens,output_tokens\n0,10,5\n", "t.txt")
    with pytest.raises(TraceError, match=r"line 1: not JSON .*name does not end in \.csv is read as JSONL"):
        read_trace(path)
    with pytest.raises(TraceError) as exc:           # a .jsonl file's own error needs no hint
        read_trace(_trace(tmp_path, "{nope\n", "e.jsonl"))
    assert "read as JSONL" not in str(exc.value)


def test_a_trace_replaying_more_than_max_requests_is_refused_unless_cut(tmp_path: Path, monkeypatch) -> None:
    """Trial 35: a trace of 1,000,001 rows ran uncapped, past the bound a count or rate x duration_s has. Its
    requests or duration_s cut it below the bound (here 10, patched: the real one needs a 20 MB file)."""
    import llmsim.serving.requests as requests_module
    from llmsim.serving.requests import trace_count_problem

    monkeypatch.setattr(requests_module, "MAX_REQUESTS", 10)
    path = _trace(tmp_path, "arrival_s,input_tokens,output_tokens\n" + "".join(f"{t},10,3\n" for t in range(11)),
                  "t.csv")
    rows = read_trace(path)
    trace = {"arrival": {"kind": "trace", "path": path}, "lengths": None}
    assert trace_count_problem(_case(trace=path, requests=None, **trace).spec, rows) == (
        "arrival.path", "the trace replays 11 requests; allowed: at most 10 in one run (cut it with "
                        "serving.requests, or duration_s)")
    assert trace_count_problem(_case(trace=path, requests=10, **trace).spec, rows) is None
    assert trace_count_problem(_case(trace=path, requests=None, duration_s=10, **trace).spec, rows) is None  # t < 10
    assert trace_count_problem(_case(trace=path, requests=None, duration_s=10.5, **trace).spec, rows) is not None
    # scaled to 2 per s (recorded: 1 per s), 5.5 s holds 11 arrivals, 5 s holds 10
    fast = {"arrival": {"kind": "trace", "path": path, "rate": [1, 2]}, "lengths": None}
    assert trace_count_problem(_case(trace=path, requests=None, duration_s=5.5, **fast).spec, rows) is not None
    assert trace_count_problem(_case(trace=path, requests=None, duration_s=5, **fast).spec, rows) is None


def test_a_trace_is_not_counted_as_rate_times_duration(tmp_path: Path) -> None:
    """Trial 40: a 100-row trace at rate 200 for duration_s 10,000 was refused as '2e+06 requests'; a trace sends its
    rows (trace_count_problem counts those)."""
    from llmsim.serving.requests import trace_count_problem

    path = _trace(tmp_path, "arrival_s,input_tokens,output_tokens\n" + "".join(f"{t},10,3\n" for t in range(100)),
                  "t.csv")
    spec = _case(trace=path, requests=None, duration_s=10_000, lengths=None,
                 arrival={"kind": "trace", "path": path, "rate": 200}).spec
    assert trace_count_problem(spec, read_trace(path)) is None
    with pytest.raises(ValueError, match="2e\\+06 requests"):   # an open loop at that rate and span still is
        _case(requests=None, duration_s=10_000, arrival={"kind": "poisson", "rate": 200})


def test_a_trace_replayed_within_a_millisecond_is_noted_as_a_burst(tmp_path: Path) -> None:
    """Trial 40: 500 arrivals 0.1 us apart (not all at one time) got no burst note; scaled to a slow rate, or
    spanning more than BURST_SPAN_S, they get none."""
    path = _trace(tmp_path, "arrival_s,input_tokens,output_tokens\n" + "".join(f"{t * 1e-7},10,3\n" for t in range(500)),
                  "t.csv")
    rows = read_trace(path)
    recorded = _case(trace=path, requests=None, lengths=None, arrival={"kind": "trace", "path": path})
    [(key, note)] = trace_notes(recorded.spec, rows)
    assert key == "serving.arrival.path" and note.startswith("the trace's replay brings 500 requests within 4.99e-05 s")
    scaled = _case(trace=path, requests=None, lengths=None, arrival={"kind": "trace", "path": path, "rate": 10})
    assert trace_notes(scaled.spec, rows) == []          # 499 gaps of 0.1 s
    fast = _case(trace=path, requests=None, lengths=None, arrival={"kind": "trace", "path": path, "rate": 1e7})
    [(key, note)] = trace_notes(fast.spec, rows)
    assert key == "serving.arrival.rate" and note.startswith("the trace's replay scaled to 1e+07 requests/s brings 500")
