"""This host's probed rates are measured once per machine, dtype and thread count, then read from the cache."""

from __future__ import annotations

from llmsim.measure.host_probes import host_peak_flops, host_rates


def test_host_rates_are_measured_once_and_cached(tmp_path) -> None:
    first = host_rates("float32", tmp_path)
    assert first.peak_flops_per_s > 1e8 and first.stream_bytes_per_s > 1e8
    assert 1e-8 < first.op_overhead_s < 1e-2  # between a C loop and a very slow Python host
    assert host_rates("float32", tmp_path) == first
    assert host_peak_flops("float32", tmp_path) == first.peak_flops_per_s
    assert len(list(tmp_path.glob("host-*.json"))) == 1


def test_rates_are_the_row_columns_llmsim_calibrate_reads(tmp_path) -> None:
    columns = host_rates("float32", tmp_path).columns()
    assert list(columns) == ["peak_flops_per_s", "stream_bytes_per_s", "stream_large_bytes_per_s", "op_overhead_s"]
