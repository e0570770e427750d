"""Options.params_fp32 on the time side (the memory side: test_memory_by_hand.py): the gradients a layer's
GEMMs produce are 16-bit and reduced before their upcast, so data-parallel reductions move 2-byte elements even
though the kept gradients are fp32; the optimizer writes no 16-bit copy of the weights."""

from __future__ import annotations

import pytest

from llmsim.costmodel import Options, Plan
from llmsim.costmodel.cluster import plan_on
from llmsim.costmodel.compute import device_rates
from llmsim.costmodel.work import ADAM_STATE_RW_BYTES, optimizer_step_time, train_work
from tests.costmodel.helpers import a100_cluster, gpt2, profiled


def test_gradient_reductions_move_the_16_bit_cotangent() -> None:
    workload = gpt2(batch=8)
    profile, sharing = profiled(workload)
    cluster = a100_cluster()
    plan = plan_on(Plan(dp=8, zero=3, micro_batch=1, microbatches=1), cluster)
    fp32 = train_work(workload, profile, sharing, plan, cluster, Options(main_grads_fp32=True)).stages[0]
    own = train_work(workload, profile, sharing, plan, cluster,
                     Options(main_grads_fp32=True, params_fp32=True)).stages[0]
    assert own.grad_bytes_layer == pytest.approx(fp32.grad_bytes_layer / 2, rel=1e-12)
    assert own.param_bytes_layer == fp32.param_bytes_layer      # the gathered bf16 cast either way


def test_the_optimizer_reads_an_fp32_gradient_and_writes_no_16_bit_copy() -> None:
    rates = device_rates(a100_cluster(), "bfloat16")
    n = 1e9
    mixed = optimizer_step_time(rates, n, 1, "bfloat16", Options(main_grads_fp32=True))
    own = optimizer_step_time(rates, n, 1, "bfloat16", Options(params_fp32=True))
    assert mixed == pytest.approx(rates.memory_time(n * (ADAM_STATE_RW_BYTES + 4 + 2)), rel=1e-12)
    assert own == pytest.approx(rates.memory_time(n * (ADAM_STATE_RW_BYTES + 4)), rel=1e-12)


def test_without_master_weights_adam_reads_and_writes_16_bit_parameters_and_moments() -> None:
    """Options.master_weights False: one pass reading and writing the 16-bit parameter, m and v and reading the
    gradient, 2 x 3 x 2 + 2 = 14 B per parameter against the fused mixed-precision kernel's 24 + 2 + 2."""
    rates = device_rates(a100_cluster(), "bfloat16")
    n = 1e9
    none = optimizer_step_time(rates, n, 1, "bfloat16", Options(master_weights=False))
    assert none == pytest.approx(rates.memory_time(n * 14), rel=1e-12)
    assert optimizer_step_time(rates, n, 4, "bfloat16", Options(master_weights=False)) == pytest.approx(none / 4)
    fp32 = optimizer_step_time(rates, n, 1, "float32", Options(master_weights=False))
    assert fp32 == optimizer_step_time(rates, n, 1, "float32", Options())   # fp32 is its own master


def test_a_foreach_optimizer_reads_and_writes_the_traced_loop_on_an_accelerator() -> None:
    """Options.optimizer "foreach" (torch AdamW's default on CUDA: one pass per operation): the traced loop's bytes
    of this device's share, over ZeRO's shard, at the memory rate; "fused" prices its one pass and ignores the
    trace. The launches' fixed time is not counted (the operator count is the single-tensor loop's)."""
    rates = device_rates(a100_cluster(), "bfloat16")
    assert rates.efficiency.op_overhead_s == 0   # an accelerator, not the eager CPU host
    n, traced = 1e9, (50e9, 616.0)
    foreach = optimizer_step_time(rates, n, 2, "bfloat16", Options(master_weights=False, optimizer="foreach"), traced)
    assert foreach == pytest.approx(rates.memory_time(50e9 / 2), rel=1e-12)
    fused = optimizer_step_time(rates, n, 2, "bfloat16", Options(master_weights=False), traced)
    assert fused == pytest.approx(rates.memory_time(n / 2 * 14), rel=1e-12)


def test_a_foreach_optimizer_over_an_fp32_master_runs_the_loop_on_fp32_tensors() -> None:
    """Trial 38: foreach priced the bf16 loop whatever the precision. With an fp32 master (the default) the same
    operations run over fp32 master, m and v: 4 / 2 times the traced bf16 bytes, plus the 16-bit weight copy;
    params_fp32 has no copy."""
    rates = device_rates(a100_cluster(), "bfloat16")
    n, traced = 1e9, (50e9, 616.0)
    mixed = optimizer_step_time(rates, n, 1, "bfloat16", Options(optimizer="foreach"), traced)
    assert mixed == pytest.approx(rates.memory_time(100e9 + n * 2), rel=1e-12)
    own = optimizer_step_time(rates, n, 1, "bfloat16", Options(optimizer="foreach", params_fp32=True), traced)
    assert own == pytest.approx(rates.memory_time(100e9), rel=1e-12)
