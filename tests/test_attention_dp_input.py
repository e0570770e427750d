"""Bad attention_dp input (Strategy.attention_dp): one line naming the key and what is allowed, exit 2; and the
scenario that uses it validates."""

from __future__ import annotations

from llmsim.cli import main
from tests.conftest import REPO

SERVING = {"requests": 4, "arrival": {"kind": "poisson", "rate": 1.0}, "lengths": {"input": 8, "output": 4},
           "scheduler": {"kind": "continuous", "max_num_seqs": 4, "max_batched_tokens": 64}}
MLA = {"name": "mla", "workload": {"model": {"preset": "tiny-mla"}, "dtype": "float32"},
       "backends": {"roofline": {"hardware": "h100-sxm", "nodes": 1, "devices_per_node": 4}}}


def _error(write_scenario, capsys, **changes) -> str:  # noqa: ANN001
    path = write_scenario(**changes)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"llmsim: error: {path}: ")
    return err[len(f"llmsim: error: {path}: "):]


def test_attention_dp_must_divide_tp(write_scenario, capsys) -> None:
    err = _error(write_scenario, capsys, **MLA, serving=SERVING,
                 strategies=[{"name": "s", "tp": 4, "ep": 4, "etp": 1, "attention_dp": 3}])
    assert err == "strategies[0].attention_dp: 3 does not divide tp=4 (allowed: 1, 2, 4)"


def test_attention_dp_needs_a_mixture_of_experts(write_scenario, capsys) -> None:
    err = _error(write_scenario, capsys, workload={"model": {"preset": "tiny"}, "dtype": "float32"},
                 backends=MLA["backends"], serving=SERVING, strategies=[{"name": "s", "tp": 2, "attention_dp": 2}])
    assert err.startswith("strategies[0].attention_dp: 2: attention data parallelism is modeled for a "
                          "mixture-of-experts model only") and "allowed: 1" in err


def test_attention_dp_is_for_serving_only(write_scenario, capsys) -> None:
    err = _error(write_scenario, capsys, workload={"model": {"preset": "tiny-mla"}, "mode": "train", "batch": 2,
                                                   "dtype": "float32"},
                 strategies=[{"name": "s", "tp": 4, "ep": 4, "etp": 1, "attention_dp": 4}], backends=MLA["backends"])
    assert err == ("strategies[0].attention_dp: 4: attention data parallelism is modeled for serving (a serving: "
                   "block) only (allowed: 1)")


def test_attention_dp_with_pipeline_stages_is_refused(write_scenario, capsys) -> None:
    err = _error(write_scenario, capsys, **MLA, serving=SERVING,
                 strategies=[{"name": "s", "tp": 2, "pp": 2, "ep": 2, "etp": 1, "attention_dp": 2}])
    assert err.startswith("strategies[0].attention_dp: 2 with pp=2 is not modeled")


def test_attention_dp_with_a_recv_interval_is_refused(write_scenario, capsys) -> None:
    """SGLang's recv skipper asserts `not enable_dp_attention`: the scenario refuses the pair, naming the key."""
    serving = {**SERVING, "scheduler": {**SERVING["scheduler"], "recv_interval": 10}}
    err = _error(write_scenario, capsys, **MLA, serving=serving,
                 strategies=[{"name": "s", "tp": 4, "ep": 4, "etp": 1, "attention_dp": 2}])
    assert err.startswith("serving.scheduler.recv_interval: 10 with strategies[0].attention_dp=2")
    assert "allowed: 1" in err
    path = write_scenario(**MLA, serving=serving, strategies=[{"name": "s", "tp": 4, "ep": 4, "etp": 1}])
    assert main(["validate", str(path)]) == 0


def test_the_dp_attention_scenario_validates(capsys) -> None:
    path = REPO / "scenarios" / "serve-deepseek-v3-dp-attention.yaml"
    assert main(["validate", str(path)]) == 0
