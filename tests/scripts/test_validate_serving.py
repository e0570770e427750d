"""The serving dev table (validation/serving_online.csv) in scripts/validate.py: every row loads and names its
source, a row's modeled figure is the serving simulation's own (the scenario it describes, run by `llmsim run`'s
path), the published unit becomes the column's SI unit, the printed medians are those of the printed errors,
and bad cells are one line with exit 2."""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

from llmsim.config import parse_scenario
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.results import read_rows
from llmsim.runner import plan_cases, run_scenario
from llmsim.serving.requests import draw_lengths
from llmsim.serving.spec import Lengths
from tests.scripts.scriptload import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def v():
    return load_script("validate.py", "validate_serving_under_test")


def _simulate(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The roofline backend's one serving row for a scenario, run as `llmsim run` runs it."""
    manager = get_plugin_manager()
    registry = BackendRegistry.from_manager(manager)
    scenario = parse_scenario(data, str(folder / "direct.yaml"))
    planned = plan_cases(scenario, registry, str(folder / "direct.yaml"), scenario_dir=folder)
    outcome = run_scenario(scenario, registry, planned, folder / "runs", manager=manager, scenario_dir=folder)
    [row] = read_rows(outcome.run_dir)
    return row


def _row(v, **values: object) -> dict[str, object]:
    """A tiny model on one A100 at 40 requests/s (numbers made up: the tests check the plumbing)."""
    row = dict.fromkeys(v.SERVING, "")
    row.update(row_id="S1", run="tiny", preset="tiny", dtype="bfloat16", hardware="a100-80gb", n_devices=1, tp=1,
               pp=1, intra_node="nvlink3", inter_node="ib-hdr200x8", request_rate=40, context=64, requests=30,
               input_len=20, output_len=12, scheduler="continuous", max_num_seqs=16, max_batched_tokens=64,
               kv_block_tokens=16, memory_utilization=0.9, metric="ttft_p50_ms", published=1.0, source="test")
    row.update(values)
    return row


def _write(tmp_path: Path, rows: list[dict[str, object]]) -> Path:
    path = tmp_path / "serving.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------- the committed table

def test_the_serving_table_loads_and_every_row_names_its_source(v) -> None:
    table = v.TABLES["serving"]
    assert table.kind == "serving" and table.default == ROOT / "validation" / "serving_online.csv"
    rows = v.read_serving_runs(table.default)
    assert len(rows) >= 10
    assert len({r["row_id"] for r in rows}) == len(rows), "row ids are unique"
    held_out = ("TensorRT-LLM", "mlperf inference", "inference_results", "nim", "docs.nvidia.com/nemo",
                "performance-summary", "performance summary")
    for r in rows:
        assert r["source"].startswith("https://") and len(r["source"]) > 40, r["row_id"]
        assert r["assumptions"], r["row_id"]
        assert r["metric"] in v.SERVING_METRICS and r["published"] > 0
        assert all(word.lower() not in r["source"].lower() for word in held_out), r["row_id"]
        if r["skip_reason"] is None:
            assert all(r[c] is not None for c in v.SERVING_REQUIRED), r["row_id"]
    # both kinds of published run: offline throughput (every request at once) and online at a request rate
    assert {r["request_rate"] for r in rows} >= {"offline", 1.0}
    cases = table.cases(table.default)
    assert [c.row_id for c in cases] == [r["row_id"] for r in rows]


def test_an_offline_row_is_the_serving_simulation_of_every_request_at_once(v, tmp_path: Path) -> None:
    """ST01, vLLM's throughput test of Llama 3 8B on one A100: 200 ShareGPT requests handed to the engine at
    once, their lengths drawn with seed 0 from exponential distributions whose means after the benchmark's filter
    are the sample's published ones (Llama 3 tokenizer), V0's asynchronous output processing on, priced as the
    scenario written out here by hand."""
    [st01] = [r for r in v.read_serving_runs(v.TABLES["serving"].default) if r["row_id"] == "ST01"]
    assert st01["lengths"] == "sharegpt-vllm-llama3" and st01["input_len"] is None and st01["output_len"] is None
    mean_in, mean_out = v.exponential_means_before_filter(*v.SHAREGPT_MEANS["sharegpt-vllm-llama3"], 4, 1024, 2048)
    sharegpt = Lengths.model_validate({"input": {"kind": "exponential", "mean": round(mean_in, 4)},
                                       "output": {"kind": "exponential", "mean": round(mean_out, 4)},
                                       "min": 4, "max_input": 1024, "max_total": 2048})
    pairs = draw_lengths(sharegpt, 200, 0)
    assert len(set(pairs)) > 150 and max(i + o for i, o in pairs) <= 2048      # a spread, under the filter
    (tmp_path / "at-once.csv").write_text("arrival_s,input_tokens,output_tokens\n"
                                          + "".join(f"0,{i},{o}\n" for i, o in pairs))
    data = {"name": "st01", "workload": {"model": {"preset": "llama3-8b", "seq_len": 8192}, "dtype": "bfloat16"},
            "strategies": [{"name": "tp1"}],
            "serving": {"requests": 200, "arrival": {"kind": "trace", "path": "at-once.csv"},
                        "scheduler": {"kind": "prefill-first", "max_num_seqs": 256, "max_batched_tokens": 8192,
                                      "async_output": True},
                        "kv_block_tokens": 16, "memory_utilization": 0.9},
            "backends": {"roofline": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 1,
                                      "intra_node": "nvlink3", "inter_node": "ib-hdr200x8", "all_reduce": "vllm"}},
            "seed": 0}
    direct = _simulate(data, tmp_path)
    [case] = [c for c in v.serving_cases(v.TABLES["serving"].default) if c.row_id == "ST01"]
    outcome = v.run_serving_case(case)
    assert direct["status"] == "ok" and direct["requests_done"] == 200
    assert outcome.predicted == direct["requests_per_s"]
    assert outcome.error == pytest.approx(direct["requests_per_s"] / st01["published"] - 1, rel=1e-12)


def test_an_online_row_is_the_serving_simulation_at_its_rate(v, tmp_path: Path) -> None:
    """SO06, vLLM's serving test of Llama 3 70B at tp 4 on H200 at 1 request/s (Poisson): the median ITL the
    validation prints is the simulation's own (V0's asynchronous output processing on), in seconds against the
    published milliseconds."""
    [so06] = [r for r in v.read_serving_runs(v.TABLES["serving"].default) if r["row_id"] == "SO06"]
    assert so06["metric"] == "itl_p50_ms" and so06["request_rate"] == 1.0
    data = {"name": "so06", "workload": {"model": {"preset": "llama3-70b", "seq_len": 8192}, "dtype": "bfloat16"},
            "strategies": [{"name": "tp4", "tp": 4}],
            "serving": {"requests": 200, "arrival": {"kind": "poisson", "rate": 1},
                        "lengths": v.LENGTH_DISTRIBUTIONS["sharegpt-vllm-llama3"],
                        "scheduler": {"kind": "prefill-first", "max_num_seqs": 256, "max_batched_tokens": 8192,
                                      "async_output": True},
                        "kv_block_tokens": 16, "memory_utilization": 0.9},
            "backends": {"roofline": {"hardware": "h200", "nodes": 1, "devices_per_node": 4,
                                      "intra_node": "nvlink4", "inter_node": "ib-ndr400x8", "all_reduce": "vllm"}},
            "seed": 0}
    direct = _simulate(data, tmp_path)
    [case] = [c for c in v.serving_cases(v.TABLES["serving"].default) if c.row_id == "SO06"]
    assert case.published_s == pytest.approx(so06["published"] / 1e3, rel=1e-12)   # ms -> s
    outcome = v.run_serving_case(case)
    assert outcome.predicted == direct["itl_p50_s"]
    # rows of one configuration share one simulation: the mean ITL row is the same run's itl_mean_s
    [so05] = [c for c in v.serving_cases(v.TABLES["serving"].default) if c.row_id == "SO05"]
    assert v.run_serving_case(so05).predicted == direct["itl_mean_s"]


# --------------------------------------------------------------------------- printing and bad input

def test_the_printed_medians_are_those_of_the_printed_rows_per_metric(v, tmp_path: Path, capsys) -> None:
    rows = [_row(v, row_id="S1", metric="ttft_p50_ms", published=3.0),
            _row(v, row_id="S2", metric="itl_p50_ms", published=2.0),
            _row(v, row_id="S3", metric="requests_per_s", published=20),
            _row(v, row_id="S4", metric="requests_per_s", published=40, request_rate="offline"),
            _row(v, row_id="S5", metric="ttft_mean_ms", published=1.0, skip_reason="a feature llmsim lacks")]
    assert v.main(["--table", "serving", "--path", str(_write(tmp_path, rows))]) == 0
    out = capsys.readouterr().out
    printed = {line.split()[0]: line.split() for line in out.splitlines()
               if line.split() and line.split()[0] in ("S1", "S2", "S3", "S4", "S5")}
    assert set(printed) == {"S1", "S2", "S3", "S4", "S5"}          # S5 only in the skipped list
    assert "skipped, 1 row (in no median): a feature llmsim lacks\n    S5" in out
    # row run metric published predicted error batch-max kv-peak preemptions
    errors = {k: float(p[-4].rstrip("%")) for k, p in printed.items() if k != "S5"}
    for k, p in printed.items():
        if k != "S5":
            predicted, published = p[-5], float(p[-6])
            decimals = len(predicted.split(".")[1]) if "." in predicted else 0
            # the error is of the unrounded prediction: within half a printed unit of it, and the error's own
            # last printed digit (0.05 points)
            tolerance = 0.5 * 10 ** -decimals / published + 5e-4
            assert 1 + errors[k] / 100 == pytest.approx(float(predicted) / published, abs=tolerance)
    throughput = [errors["S3"], errors["S4"]]
    line = next(x for x in out.splitlines() if x.strip().startswith("requests_per_s") and "median" in x)
    assert float(line.split("median |error|")[1].split("%")[0]) == pytest.approx(
        statistics.median(abs(e) for e in throughput), abs=0.06)
    overall = out.split("(every metric)")[0].rsplit("median |error| ", 1)[1]
    assert float(overall.split("%")[0]) == pytest.approx(statistics.median(abs(e) for e in errors.values()), abs=0.06)


@pytest.mark.parametrize(("column", "text", "says"), [
    ("request_rate", "fast", "request_rate: 'fast'"),
    ("request_rate", "-2", "request_rate: '-2'"),
    ("metric", "latency_ms", "metric: 'latency_ms': allowed: requests_per_s"),
    ("memory_utilization", "1.5", "memory_utilization"),
    ("source", "", "S1.source"),
    ("n_devices", "2", "S1.n_devices: 2 != tp x pp = 1"),
    ("context", "", "S1.context: required for a priced row"),
    ("hardware", "h999", "serving.csv: S1: backends.roofline.hardware"),     # refused by the scenario it describes
    ("scheduler", "fancy", "serving.csv: S1: serving.scheduler.kind"),
    ("lengths", "sharegpt", "S1.lengths: 'sharegpt': allowed: sharegpt-vllm-llama3, sharegpt-vllm-mistral"),
    ("lengths", "sharegpt-vllm-llama3", "S1.input_len: blank with lengths 'sharegpt-vllm-llama3'"),
    ("output_len", "", "S1.output_len: required for a priced row (or a lengths distribution"),
    ("waiting_served_ratio", "-1", "serving.csv: S1: serving.scheduler.waiting_served_ratio"),
    ("waiting_served_ratio", "0.3", "serving.csv: S1: serving.scheduler.waiting_served_ratio: waiting_served_ratio "
                                    "is for kind 'tgi' (got kind 'continuous')"),
    ("max_waiting_tokens", "many", "S1.max_waiting_tokens: 'many'"),
    ("delay_factor", "nan", "S1.delay_factor: 'nan': allowed: a finite number"),
    ("async_output", "yes", "S1.async_output: 'yes': allowed: true, false"),
    ("concurrency", "0", "S1.concurrency: '0': must be >= 1"),
    ("concurrency", "2.5", "S1.concurrency: '2.5'"),
    ("concurrency", "8", "S1.concurrency: 8 clients with request_rate 40.0: a closed loop is priced at request_rate "
                         "inf only"),
])
def test_a_bad_serving_cell_is_one_line_and_exit_2(v, tmp_path: Path, capsys, column: str, text: str,
                                                   says: str) -> None:
    path = _write(tmp_path, [_row(v, **{column: text})])
    assert v.main(["--table", "serving", "--path", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and "Traceback" not in err


def test_the_policy_keys_of_a_row_reach_its_scenario(v) -> None:
    """A TGI row's router settings (optional columns) become serving.scheduler keys; blank ones are left to the
    policy's defaults (TGI's own)."""
    row = _row(v, scheduler="tgi", max_batched_tokens=63)
    typed = {k: (v._serving_value(k, str(x)) if x != "" else None) for k, x in row.items()}
    typed.update(waiting_served_ratio=0.5, max_waiting_tokens=7, delay_factor=None, max_batch_total_tokens=None)
    scenario, _ = v.serving_scenario(typed)
    assert scenario["serving"]["scheduler"] == {"kind": "tgi", "max_num_seqs": 16, "max_batched_tokens": 63,
                                                "waiting_served_ratio": 0.5, "max_waiting_tokens": 7}
    typed.update(waiting_served_ratio=None, max_waiting_tokens=None)
    assert set(v.serving_scenario(typed)[0]["serving"]["scheduler"]) == {"kind", "max_num_seqs", "max_batched_tokens"}


def test_a_rows_async_output_reaches_its_scenario_and_the_vllm_0_6_rows_set_it(v) -> None:
    """`async_output` true becomes serving.scheduler.async_output; blank leaves the key out (false). The rows of
    vLLM V0 >= 0.6.0 with CUDA graphs (the CI builds of late 2024: SO, ST; the docs' batch-1 latency run SV02)
    set it; TGI, SGLang and vLLM V1 rows do not."""
    row = _row(v)
    typed = {k: (v._serving_value(k, str(x)) if x != "" else None) for k, x in row.items()}
    typed["async_output"] = v._serving_value("async_output", "True")
    assert v.serving_scenario(typed)[0]["serving"]["scheduler"]["async_output"] is True
    typed["async_output"] = None
    assert "async_output" not in v.serving_scenario(typed)[0]["serving"]["scheduler"]
    rows = {r["row_id"]: r for r in v.read_serving_runs(v.TABLES["serving"].default)}
    on = {k for k, r in rows.items() if r["async_output"]}
    assert on == {k for k in rows if k[:2] in ("SO", "ST")} | {"SV02"}


def test_a_rows_overlap_schedule_reaches_its_scenario_and_the_engines_that_overlap_set_it(v) -> None:
    """`overlap_schedule` true becomes serving.scheduler.overlap_schedule; blank leaves the key out (false). The
    SGLang 0.5.6 rows (SG) set it (the overlap scheduler is SGLang's default from v0.4) and so do the vLLM v0.19.1
    rows (SC: async scheduling, vLLM's default from v0.14); SGLang 0.2.14 (SB), TGI and the vLLM V0 / V1 < 0.14
    rows do not."""
    row = _row(v)
    typed = {k: (v._serving_value(k, str(x)) if x != "" else None) for k, x in row.items()}
    typed["overlap_schedule"] = v._serving_value("overlap_schedule", "true")
    assert v.serving_scenario(typed)[0]["serving"]["scheduler"]["overlap_schedule"] is True
    typed["overlap_schedule"] = None
    assert "overlap_schedule" not in v.serving_scenario(typed)[0]["serving"]["scheduler"]
    rows = {r["row_id"]: r for r in v.read_serving_runs(v.TABLES["serving"].default)}
    assert {k for k, r in rows.items() if r["overlap_schedule"]} == {k for k in rows if k[:2] in ("SG", "SC")}


def test_a_rows_recv_interval_reaches_its_scenario_and_the_rows_that_set_it_name_it(v) -> None:
    """`recv_interval` N becomes serving.scheduler.recv_interval; blank leaves the key out (1). Only the inferencex
    NVFP4 SGLang rows set it, each as its launch command's --scheduler-recv-interval (10 below 16 clients, 30
    from 16)."""
    row = _row(v)
    typed = {k: (v._serving_value(k, str(x)) if x != "" else None) for k, x in row.items()}
    typed["recv_interval"] = v._serving_value("recv_interval", "10")
    assert v.serving_scenario(typed)[0]["serving"]["scheduler"]["recv_interval"] == 10
    typed["recv_interval"] = None
    assert "recv_interval" not in v.serving_scenario(typed)[0]["serving"]["scheduler"]
    rows = {r["row_id"]: r for r in v.read_serving_runs(v.TABLES["inferencex"].default)}
    set_ = {k: r["recv_interval"] for k, r in rows.items() if r.get("recv_interval")}
    assert set_ == {f"IX{i}": (10 if i < 86 else 30) for i in range(82, 90)}
    for k, n in set_.items():
        assert f"--scheduler-recv-interval {n} " in rows[k]["assumptions"]


def test_the_vllm_v0_and_tgi_rows_name_their_engines_policy(v) -> None:
    """SO rows ran vLLM V0 (mid-2024) without chunked prefill, SN rows TGI 2.1: each is priced by that engine's
    policy."""
    rows = {r["row_id"]: r for r in v.read_serving_runs(v.TABLES["serving"].default)}
    assert {r["scheduler"] for k, r in rows.items() if k.startswith("SO")} == {"prefill-first"}
    assert {r["scheduler"] for k, r in rows.items() if k.startswith("SN")} == {"tgi"}


def test_a_concurrency_row_is_the_closed_loop_of_its_clients(v, tmp_path: Path, capsys) -> None:
    """A row measured with vLLM's --max-concurrency N at --request-rate inf (the optional `concurrency` column) is
    priced as the scenario's closed loop: N clients over the row's requests; blank keeps the open loop."""
    row = _row(v, request_rate="inf", concurrency=4, metric="requests_per_s", published=100.0)
    typed = {k: (v._serving_value(k, str(x)) if x != "" else None) for k, x in row.items()}
    scenario, trace = v.serving_scenario(typed)
    assert scenario["serving"]["arrival"] == {"kind": "concurrency", "clients": 4} and trace is None
    assert scenario["serving"]["lengths"] == {"input": 20, "output": 12}
    simulated = v.simulate_serving_row(typed)
    assert simulated["concurrency"] == 4 and simulated["status"] == "ok"
    assert simulated["request_rate"] == pytest.approx(30 / simulated["duration_s"], rel=1e-9)
    path = _write(tmp_path, [row])
    assert v.main(["--table", "serving", "--path", str(path)]) == 0
    assert "S1" in capsys.readouterr().out
    typed["concurrency"] = None   # blank: every request at t = 0, as before
    assert v.serving_scenario(typed)[0]["serving"]["arrival"]["kind"] == "trace"


def test_the_sharegpt_distributions_have_the_published_means_after_the_filter(v) -> None:
    """Each named ShareGPT distribution keeps, after the benchmark's filter, the prompt and output means its
    source printed (exactly by filtered_exponential_means; and in 200,000 draws of llmsim's own sampler), and
    the Mixtral rows read the Mistral tokenizer's, the Llama 3 rows Llama 3's."""
    f = v.SHAREGPT_FILTER
    assert v.SHAREGPT_MEANS["sharegpt-vllm-llama3"] == pytest.approx((213.40, 217.83), abs=0.01)
    assert v.SHAREGPT_MEANS["sharegpt-vllm-mistral"] == pytest.approx((247.27, 237.62), abs=0.01)
    # SGLang 0.3.0's 5,000-prompt sample: its output mean lies in the interval all four offline runs of
    # benchmark_vllm_060's README allow (output tok/s over req/s, req/s printed to 0.01)
    prompt_mean, output_mean = v.SHAREGPT_MEANS["sharegpt-sglang-llama3"]
    assert prompt_mean == pytest.approx(226.75, abs=0.01)
    for req_s, tok_s in ((22.03, 4281.51), (21.27, 4132.37), (19.84, 3856.01), (19.04, 3700.64)):
        assert tok_s / (req_s + 0.005) <= output_mean <= tok_s / (req_s - 0.005)
    for name, (target_in, target_out) in v.SHAREGPT_MEANS.items():
        block = v.LENGTH_DISTRIBUTIONS[name]
        exact = v.filtered_exponential_means(block["input"]["mean"], block["output"]["mean"], f["min"],
                                             f["max_input"], f["max_total"])
        assert exact == pytest.approx((target_in, target_out), rel=1e-4)
        pairs = draw_lengths(Lengths.model_validate(block), 200_000, 1)
        drawn_in = sum(i for i, _ in pairs) / len(pairs)
        drawn_out = sum(o for _, o in pairs) / len(pairs)
        assert drawn_in == pytest.approx(target_in, rel=0.01) and drawn_out == pytest.approx(target_out, rel=0.01)
        # the filter moves the means: the exponential's own means differ from the published ones
        assert block["output"]["mean"] != pytest.approx(target_out, rel=1e-3)
    rows = v.read_serving_runs(v.TABLES["serving"].default)
    for r in rows:
        if r["lengths"] in v.SHAREGPT_MEANS:
            mixtral = "mixtral" in str(r["run"]).lower()
            sglang_sample = "benchmark_vllm_060" in str(r["source"])  # SGLang 0.3.0's bench_serving, 5,000 prompts
            expected = ("sharegpt-vllm-mistral" if mixtral else
                        "sharegpt-sglang-llama3" if sglang_sample else "sharegpt-vllm-llama3")
            assert r["lengths"] == expected, r["row_id"]


def test_a_vllm_random_dataset_is_its_uniform_ranges_with_the_special_tokens_added_back(v) -> None:
    """vLLM's RandomDataset draws the prompt from floor/ceil of (input - special) x (1 -+ r) and the output from
    output x (1 -+ r), at least 1; the engine sees the special tokens too. The closed-loop rows' distribution is the
    blog's ~20k / ~2k at +-15% with Llama 3's one BOS, and every row naming a random dataset runs a closed loop."""
    assert v.vllm_random_lengths(20_000, 2_000, 0.15, 1) == {
        "input": {"kind": "uniform", "min": 17_000, "max": 23_000},
        "output": {"kind": "uniform", "min": 1_700, "max": 2_300}}
    assert v.vllm_random_lengths(1024, 1, 0.5, 0) == {"input": {"kind": "uniform", "min": 512, "max": 1536},
                                                      "output": {"kind": "uniform", "min": 1, "max": 2}}
    for name, *args in v.VLLM_RANDOM_DATASETS:
        block = v.LENGTH_DISTRIBUTIONS[name]
        assert block == v.vllm_random_lengths(*args)
        lo_in, hi_in = block["input"]["min"], block["input"]["max"]
        lo_out, hi_out = block["output"]["min"], block["output"]["max"]
        pairs = draw_lengths(Lengths.model_validate(block), 20_000, 0)
        assert all(lo_in <= i <= hi_in and lo_out <= o <= hi_out for i, o in pairs)
        assert sum(i for i, _ in pairs) / len(pairs) == pytest.approx((lo_in + hi_in) / 2, rel=0.01)
    rows = v.read_serving_runs(v.TABLES["serving"].default)
    names = {name for name, *_ in v.VLLM_RANDOM_DATASETS + v.SGLANG_RANDOM_DATASETS}
    random_rows = [r for r in rows if r["lengths"] in names]
    assert random_rows and all(r["concurrency"] and r["request_rate"] == "inf" for r in random_rows)


def test_an_sglang_random_dataset_draws_prompts_from_one_and_outputs_one_past_the_draw(v) -> None:
    """SGLang's sampler: prompts on max(int(input r), 1)..input, max_new_tokens on int(output r)..output, and the
    published totals count one generated token more a request; the cookbook's two scenarios at r = 0."""
    assert v.sglang_random_lengths(1_000, 1_000, 0.0) == {"input": {"kind": "uniform", "min": 1, "max": 1_000},
                                                          "output": {"kind": "uniform", "min": 1, "max": 1_001}}
    assert v.sglang_random_lengths(8_000, 1_000, 0.5) == {"input": {"kind": "uniform", "min": 4_000, "max": 8_000},
                                                          "output": {"kind": "uniform", "min": 501, "max": 1_001}}
    for name, *args in v.SGLANG_RANDOM_DATASETS:
        assert v.LENGTH_DISTRIBUTIONS[name] == v.sglang_random_lengths(*args)


def test_sglang_0_2_random_dataset_is_the_draws_whose_totals_its_printout_gives(v) -> None:
    """SGLang 0.2's sampler (no token added): numpy's global generator at bench_serving's seed 1 draws prompts on
    1..32 and max_new_tokens on 0..128 for PR #1262's 5,000 requests, and their sums are the printed totals
    (82,922 input, 321,605 generated); the named distribution prices the output on 1..128 (a 0 draw as 1)."""
    np = pytest.importorskip("numpy")
    np.random.seed(1)
    prompts = np.random.randint(1, 33, size=5_000)
    outputs = np.random.randint(0, 129, size=5_000)
    assert (int(prompts.sum()), int(outputs.sum())) == (82_922, 321_605)
    assert v.LENGTH_DISTRIBUTIONS["sglang-v02-random-32-128-r0"] == {
        "input": {"kind": "uniform", "min": 1, "max": 32}, "output": {"kind": "uniform", "min": 1, "max": 128}}
    assert v.sglang_v02_random_lengths(1_000, 1_000, 0.5)["output"] == {"kind": "uniform", "min": 500, "max": 1_000}


def test_filtered_means_match_a_brute_force_sum_and_the_solver_refuses_the_unreachable(v) -> None:
    """The prefix-sum expectation equals a direct double sum over every kept pair (a small filter), and a target
    mean past what the filter allows is an error, not a loop."""
    mean_in, mean_out, lo, max_in, max_total = 30.0, 50.0, 2, 60, 100
    p_in = v._rounded_exponential_pmf(mean_in, max_in)
    p_out = v._rounded_exponential_pmf(mean_out, max_total)
    kept = [(i, o, p_in[i - 1] * p_out[o - 1]) for i in range(lo, max_in + 1) for o in range(lo, max_total - i + 1)]
    total = sum(w for _, _, w in kept)
    brute = (sum(i * w for i, _, w in kept) / total, sum(o * w for _, o, w in kept) / total)
    assert v.filtered_exponential_means(mean_in, mean_out, lo, max_in, max_total) == pytest.approx(brute, rel=1e-12)
    with pytest.raises(ValueError, match="no exponential lengths"):
        v.exponential_means_before_filter(70.0, 50.0, lo, max_in, max_total)     # a prompt mean past max_input


def test_a_rows_kv_cache_dtype_reaches_its_scenario_and_the_fp8_rows_set_it(v) -> None:
    """`kv_cache_dtype` float8 becomes serving.kv_cache_dtype; blank leaves the key out (auto: the block as before
    the column). The fp8-kvcache post's FP8 rows set it, its BF16 rows do not."""
    row = _row(v)
    typed = {k: (v._serving_value(k, str(x)) if x != "" else None) for k, x in row.items()}
    typed["kv_cache_dtype"] = v._serving_value("kv_cache_dtype", "float8")
    assert v.serving_scenario(typed)[0]["serving"]["kv_cache_dtype"] == "float8"
    typed["kv_cache_dtype"] = None
    assert "kv_cache_dtype" not in v.serving_scenario(typed)[0]["serving"]
    rows = {r["row_id"]: r for r in v.read_serving_runs(v.TABLES["serving"].default)}
    fp8 = {k for k, r in rows.items() if r["kv_cache_dtype"] == "float8"}
    assert {"SC05", "SC06", "SC07", "SC08", "SC22", "SC24", "SC26", "SC28"} <= fp8
    assert not fp8 & {"SC01", "SC02", "SC03", "SC04", "SC21", "SC23", "SC25", "SC27"}
    assert all("FP8" in str(rows[k]["run"]) for k in fp8)
