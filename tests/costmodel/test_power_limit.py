"""A power limit below the rated power lowers the clock compute runs at (costmodel.power), never the memory
bandwidth, and a capped device never reports more power than its cap (costmodel.energy)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from llmsim.costmodel import Options, Plan, estimate
from llmsim.costmodel.compute import device_rates
from llmsim.costmodel.energy import step_energy_j
from llmsim.costmodel.power import PowerLimitError, busy_power_w, clock_share, device_clock_share
from tests.costmodel.helpers import CATALOG, Device, Link, gpt2, profiled
from llmsim.costmodel import ClusterSpec

IDLE, FULL = 70.0, 700.0  # h100-sxm's idle estimate and rated power


def test_a_limit_that_does_not_bind_leaves_the_clock_alone() -> None:
    assert clock_share(None, FULL, IDLE) == 1.0
    assert clock_share(FULL, FULL, IDLE) == 1.0
    assert clock_share(900.0, FULL, IDLE) == 1.0


def test_below_the_draw_the_clock_share_is_below_one_and_falls_with_the_limit() -> None:
    limits = np.linspace(IDLE + 1.0, FULL - 1.0, 60)
    shares = [clock_share(float(w), FULL, IDLE) for w in limits]
    assert all(0 < s < 1 for s in shares)
    assert all(a < b for a, b in zip(shares, shares[1:]))


def test_hand_computed_h100_at_500_watts() -> None:
    # P_dyn ~ f^3: (500 - 70) / (700 - 70) = 430 / 630 = 0.68254; its cube root is 0.88046
    assert clock_share(500.0, FULL, IDLE) == pytest.approx(0.88046, abs=1e-5)
    # half the dynamic power: 2^(-1/3) = 0.7937 of the clock
    assert clock_share(IDLE + (FULL - IDLE) / 2, FULL, IDLE) == pytest.approx(2 ** (-1 / 3))


def test_a_limit_at_or_below_idle_is_refused() -> None:
    with pytest.raises(PowerLimitError, match="idle"):
        clock_share(IDLE, FULL, IDLE)


def test_the_catalog_part_of_the_torchtitan_runs() -> None:
    d = CATALOG.device("h100-sxm-96gb")
    h100 = CATALOG.device("h100-sxm")
    assert d.memory_bytes == 96 * 2**30
    assert d.memory_bw_bytes_per_s == pytest.approx(2.4e12)
    assert d.power_limit_w == 500 and d.max_power_w == 700
    assert d.peak_flops == h100.peak_flops and d.compute_units == h100.compute_units
    assert d.efficiency == h100.efficiency.model_copy(update={"source": d.efficiency.source})
    assert "96GB HBM2e with 2.4 TB/sec" in d.source and "500W power limit" in d.source
    assert device_clock_share(d) == pytest.approx(clock_share(500.0, 700.0, d.idle_power_w))
    assert device_clock_share(h100) == 1.0


def test_the_pcie_a100_is_rated_at_300_watts_and_its_gemm_rate_is_measured_not_derated_again() -> None:
    """a100-80gb-pcie: 300 W is its rating, not a limit under a higher one, so no DVFS share applies on top of its
    measured MAMF (256.4 of 312 TFLOP/s, taken at that power); a busy card draws 300 W. Its GEMM ceiling is
    256.4 / 267.9 of the SXM4 part's, its memory 1,935 / 2,039."""
    pcie, sxm = CATALOG.device("a100-80gb-pcie"), CATALOG.device("a100-80gb")
    assert device_clock_share(pcie) == 1.0 and busy_power_w(pcie) == 300 and busy_power_w(sxm) == 400
    a = device_rates(_cluster(pcie), "float16")
    b = device_rates(_cluster(sxm), "float16")
    assert a.clock_share == b.clock_share == 1.0
    assert a.efficiency.matmul / b.efficiency.matmul == pytest.approx(256.4 / 267.9, rel=1e-3)
    assert a.memory_bw == pytest.approx(b.memory_bw * 1935 / 2039)


def _cluster(device: Device) -> ClusterSpec:
    return ClusterSpec(device=device, intra=Link(), inter=Link(), nodes=1, devices_per_node=1)


def test_the_limit_derates_flops_and_leaves_memory_bandwidth() -> None:
    free, capped = Device(), Device(power_limit_w=250.0)  # idle 100 W, rated 400 W
    a, b = device_rates(_cluster(free), "bfloat16"), device_rates(_cluster(capped), "bfloat16")
    share = clock_share(250.0, 400.0, 100.0)
    assert b.sustained_flops == pytest.approx(a.sustained_flops * share)
    assert b.memory_time(1e9) == a.memory_time(1e9)
    assert b.matmul_time(1e12, 0.0) == pytest.approx(a.matmul_time(1e12, 0.0) / share)
    fp8 = dataclasses.replace(capped, peak_flops={"bfloat16": 1e15, "float8": 2e15})
    assert device_rates(_cluster(fp8), "float8").gemm.clock_share == pytest.approx(share)


def test_a_capped_step_is_slower_on_compute_and_draws_no_more_than_the_cap() -> None:
    w = gpt2(batch=8)
    plan, options = Plan(micro_batch=8), Options()
    free = estimate(w, *profiled(w), plan, _cluster(Device()), options)
    capped = estimate(w, *profiled(w), plan, _cluster(Device(power_limit_w=250.0)), options)
    assert capped.compute_time_s > free.compute_time_s
    assert capped.energy_j / capped.step_time_s <= 250.0 + 1e-9
    assert free.energy_j / free.step_time_s > 250.0  # the same step uncapped draws more: the cap is what binds


def test_energy_uses_the_cap_as_the_busy_power() -> None:
    capped = Device(power_limit_w=250.0)
    assert busy_power_w(capped) == 250.0 and busy_power_w(Device()) == 400.0
    assert busy_power_w(Device(power_limit_w=900.0)) == 400.0
    assert step_energy_j(capped, 2, step_s=1.0, busy_s=1.0) == pytest.approx(2 * 250.0)
    for busy in (0.0, 0.3, 1.0, 5.0):
        assert step_energy_j(capped, 1, step_s=1.0, busy_s=busy) <= 250.0


def test_a_scenario_sets_the_limit_on_the_modeled_backends(tmp_path, capsys) -> None:
    from llmsim.cli import main
    from llmsim.modeled import ModeledSettings

    rated = ModeledSettings(hardware="h100-sxm", devices_per_node=1).cluster(CATALOG)
    capped = ModeledSettings(hardware="h100-sxm", devices_per_node=1, power_limit_w=500).cluster(CATALOG)
    lifted = ModeledSettings(hardware="h100-sxm-96gb", devices_per_node=1, power_limit_w=700).cluster(CATALOG)
    assert rated.device.power_limit_w is None and CATALOG.device("h100-sxm").power_limit_w is None  # no leak
    assert device_rates(capped, "bfloat16").clock_share == pytest.approx(clock_share(500, 700, 70))
    assert device_rates(lifted, "bfloat16").clock_share == 1.0  # the Grand Teton part at its 700 W rating
    w = gpt2(batch=8)
    a = estimate(w, *profiled(w), Plan(micro_batch=8), rated, Options())
    b = estimate(w, *profiled(w), Plan(micro_batch=8), capped, Options())
    assert b.compute_time_s > a.compute_time_s and b.energy_j / b.step_time_s <= 500 + 1e-9

    path = tmp_path / "capped.yaml"
    path.write_text("name: capped\nworkload: {model: {preset: gpt2-small, layers: 2, seq_len: 256}, mode: train, "
                    "batch: 8}\nbackends:\n  roofline: {hardware: h100-sxm, devices_per_node: 1, power_limit_w: 60}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "backends.roofline.power_limit_w: 60 W; allowed for h100-sxm: above its idle power 70 W" in err
    assert "\n" not in err
