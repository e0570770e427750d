"""This host's probed rates: measured once per process, kept per machine, dtype and thread count as the
best figures seen so far (interference only slows a probe down)."""

from __future__ import annotations

import json

import pytest

from llmsim.measure import host_probes
from llmsim.measure.host_probes import HostRates, host_peak_flops, host_rates


@pytest.fixture(autouse=True)
def _fresh_process_memo():
    host_probes._best_rates.cache_clear()
    yield
    host_probes._best_rates.cache_clear()


def test_host_rates_are_measured_once_per_process_and_cached(tmp_path) -> None:
    first = host_rates("float32", tmp_path)
    assert first.peak_flops_per_s > 1e8 and first.stream_bytes_per_s > 1e8
    assert 1e-8 < first.op_overhead_s < 1e-2  # between a C loop and a very slow Python host
    assert host_rates("float32", tmp_path) is first
    assert host_peak_flops("float32", tmp_path) == first.peak_flops_per_s
    assert len(list(tmp_path.glob("host-*.json"))) == 1
    assert not list(tmp_path.glob("*.tmp"))


def _measured(rates: HostRates, monkeypatch) -> None:
    monkeypatch.setattr(host_probes, "measure_host_rates", lambda dtype: rates)


def test_a_figure_cached_at_a_busy_moment_is_replaced_by_a_better_one(tmp_path, monkeypatch) -> None:
    busy = HostRates(peak_flops_per_s=3.6e10, stream_bytes_per_s=1.7e9, stream_large_bytes_per_s=1.2e10,
                     op_overhead_s=9e-6)
    idle = HostRates(peak_flops_per_s=1.8e11, stream_bytes_per_s=1.7e11, stream_large_bytes_per_s=1.0e10,
                     op_overhead_s=7e-6)
    _measured(busy, monkeypatch)
    assert host_rates("float32", tmp_path) == busy
    host_probes._best_rates.cache_clear()  # a later process
    _measured(idle, monkeypatch)
    best = HostRates(peak_flops_per_s=1.8e11, stream_bytes_per_s=1.7e11, stream_large_bytes_per_s=1.2e10,
                     op_overhead_s=7e-6)
    assert host_rates("float32", tmp_path) == best
    (cached,) = tmp_path.glob("host-*.json")
    assert HostRates(**json.loads(cached.read_text())["rates"]) == best
    host_probes._best_rates.cache_clear()
    _measured(busy, monkeypatch)  # a busy moment later does not undo it
    assert host_rates("float32", tmp_path) == best


def test_an_unreadable_cache_costs_only_the_earlier_figures(tmp_path, monkeypatch) -> None:
    rates = HostRates(peak_flops_per_s=1e11, stream_bytes_per_s=1e10, stream_large_bytes_per_s=1e10,
                      op_overhead_s=1e-5)
    _measured(rates, monkeypatch)
    host_rates("float32", tmp_path)
    (cached,) = tmp_path.glob("host-*.json")
    cached.write_text("{not json")
    host_probes._best_rates.cache_clear()
    assert host_rates("float32", tmp_path) == rates


def test_rates_are_the_row_columns_llmsim_calibrate_reads(tmp_path) -> None:
    columns = host_rates("float32", tmp_path).columns()
    assert list(columns) == ["peak_flops_per_s", "stream_bytes_per_s", "stream_large_bytes_per_s", "op_overhead_s"]
