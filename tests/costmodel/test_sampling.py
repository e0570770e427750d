"""Options.sampler: FasterTransformer v5's top-p sampling after the LM head (costmodel.sampling)."""

from __future__ import annotations

import dataclasses

import pytest

from llmsim.config import ModelSpec, Workload
from llmsim.costmodel import Options, Plan
from llmsim.costmodel.cluster import plan_on
from llmsim.costmodel.compute import device_rates
from llmsim.costmodel.sampling import (SORT_PASSES, padded_vocab, sampling_bytes, sampling_kernels,
                                       sort_top_p_bytes_per_entry)
from llmsim.costmodel.step import price, step_times
from llmsim.costmodel.work import Groups, forward_work
from llmsim.costmodel.cluster import collective_time
from tests.costmodel.helpers import a100_cluster, profiled

FT = Options(attention="fused-softmax", sampler="sort-top-p")


def _gpt(batch: int, decode_tokens: int = 5) -> Workload:
    # FasterTransformer's GPT-style table model shape, shortened: vocab 51,200, hidden 1024, fp16
    model = ModelSpec(layers=2, hidden=1024, heads=16, ffn_hidden=4096, vocab=51200, seq_len=32,
                      max_positions=64, activation="gelu", norm="layernorm", positions="learned")
    return Workload(model=model, mode="decode", batch=batch, decode_tokens=decode_tokens, dtype="float16")


def test_bytes_per_entry_follow_the_kernels_of_faster_transformer_v5() -> None:
    # fp32 logits (+2 B over fp16), ids 4, softmax 3 x (4 + 4), top-1 read 4, 6 radix passes x (4 + 8 + 8)
    assert SORT_PASSES == 6
    assert sort_top_p_bytes_per_entry(2) == 2 + 4 + 24 + 4 + 6 * 20 == 154
    assert sort_top_p_bytes_per_entry(4) == 152          # fp32 workload: the head already writes fp32
    # ParallelGpt's vocab_size_padded_: ceil(vocab / tp) rounded up to 8, times tp
    assert padded_vocab(51200, 8) == 51200 and padded_vocab(50257, 1) == 50264 and padded_vocab(50257, 4) == 50272


def test_the_default_prices_no_sampling_and_leaves_the_step_unchanged() -> None:
    workload = _gpt(batch=8)
    profile, sharing = profiled(workload)
    plan, cluster = plan_on(Plan(tp=2, micro_batch=8), a100_cluster()), a100_cluster()
    assert sampling_bytes(workload, plan, 8, Options()) == 0.0 and sampling_kernels(plan, Options()) == 0
    base = step_times(workload, profile, sharing, plan, cluster, Options(attention="fused-softmax"))
    same = step_times(workload, profile, sharing, plan, cluster, dataclasses.replace(FT, sampler="none"))
    assert base == same


@pytest.mark.parametrize("tp", [1, 2, 8])
def test_each_token_step_adds_the_sort_passes_the_gather_and_their_kernels(tp: int) -> None:
    batch = 16
    workload = _gpt(batch=batch)
    profile, _ = profiled(workload)
    cluster = a100_cluster()
    plan = plan_on(Plan(tp=tp, micro_batch=batch), cluster)
    rates = device_rates(cluster, "float16")
    fabric = cluster.fabric

    def token(options: Options) -> float:
        return price(forward_work(workload, profile, plan, cluster, options, "decode", 4), fabric).step

    vocab = 51200
    per_entry = 154 + (8 if tp > 1 else 0)       # tp > 1: the transpose of the gathered fp32 logits
    memory = batch * vocab * per_entry / (rates.memory_bw * rates.efficiency.memory)
    kernels = (3 + 6 + 1 + (1 if tp > 1 else 0)) * rates.efficiency.kernel_latency_s
    gather = collective_time("all-gather", batch * vocab * 4, Groups.on(plan, cluster).tp, cluster) if tp > 1 else 0.0
    assert token(FT) - token(dataclasses.replace(FT, sampler="none")) == pytest.approx(memory + kernels + gather,
                                                                                       rel=1e-9)


def test_the_whole_generation_samples_once_per_generated_token() -> None:
    # FasterTransformer samples the first token right after the context phase (the prefill) and one per
    # decode step after it: decode_tokens samples in all, however the steps are split.
    workload = _gpt(batch=4, decode_tokens=7)
    profile, sharing = profiled(workload)
    cluster = a100_cluster()
    plan = plan_on(Plan(tp=4, micro_batch=4), cluster)
    with_ = step_times(workload, profile, sharing, plan, cluster, FT)
    without = step_times(workload, profile, sharing, plan, cluster, dataclasses.replace(FT, sampler="none"))
    one = (with_.tpot or 0.0) - (without.tpot or 0.0)
    assert one > 0
    assert (with_.ttft or 0.0) - (without.ttft or 0.0) == pytest.approx(one, rel=1e-9)
    assert with_.step - without.step == pytest.approx(7 * one, rel=1e-9)


def test_the_cluster_simulation_plays_the_same_sampling() -> None:
    from llmsim.sim.simulate import simulate_case

    workload = _gpt(batch=8, decode_tokens=3)
    profile, sharing = profiled(workload)
    cluster = a100_cluster()
    plan = plan_on(Plan(tp=8, micro_batch=8), cluster)
    roof = step_times(workload, profile, sharing, plan, cluster, FT)
    sim = simulate_case(workload, profile, sharing, plan, cluster, FT)
    assert sim.times.step == pytest.approx(roof.step, rel=1e-6)


def test_the_scenario_key_reaches_the_cost_model_and_a_bad_value_is_one_line(write_scenario, capsys) -> None:
    from llmsim.cli import main
    from llmsim.modeled import ModeledSettings

    assert ModeledSettings(sampler="sort-top-p").options.sampler == "sort-top-p"
    assert ModeledSettings().options.sampler == "none"
    good = write_scenario(backends={"roofline": {"devices_per_node": 1, "sampler": "sort-top-p"}})
    assert main(["validate", str(good)]) == 0
    capsys.readouterr()
    bad = write_scenario(backends={"roofline": {"devices_per_node": 1, "sampler": "beam"}}, name="bad.yaml")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"llmsim: error: {bad}: backends.roofline.sampler") and "\n" not in err
    assert "sort-top-p" in err and "Traceback" not in err
