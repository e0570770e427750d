"""scripts/gemm_check.py: published single-GEMM timings against the per-GEMM price of the iteration
(validation/gemm_microbench.csv; the arithmetic, the byte definition, and that every row is sourced)."""

from __future__ import annotations

import sys

import pytest

from llmsim.costmodel.compute import device_rates
from llmsim.costmodel.efficiency import gemm_efficiency
from llmsim.hardware import load_catalog
from tests.scripts.scriptload import load_script


@pytest.fixture(scope="module")
def g():
    return load_script("gemm_check.py")


@pytest.fixture(scope="module")
def rows(g):
    return g.read_rows(g.DEFAULT_CSV)


def test_every_row_is_sourced_and_priceable(g, rows):
    assert len(rows) >= 40
    assert len({r.row_id for r in rows}) == len(rows)
    catalog = load_catalog()
    for r in rows:
        assert r.source and r.published_tflops > 0 and r.m >= 1
        assert r.hardware in catalog.devices
    # DeepGEMM's README prints GB/s next to TFLOP/s: the byte definition (FP8 A and B, BF16 D) reproduces it
    dg01 = next(r for r in rows if r.row_id == "DG01")
    assert dg01.nbytes / dg01.published_s / 1e9 == pytest.approx(1688, rel=0.005)
    dg10 = next(r for r in rows if r.row_id == "DG10")
    assert dg10.nbytes / dg10.published_s / 1e9 == pytest.approx(2604, rel=0.005)


def test_price_is_the_iterations_roofline(g):
    rates = device_rates(load_catalog().cluster("h100-sxm"), "bfloat16")
    eff = rates.efficiency
    # one row, memory-bound: bytes at the streaming fraction of 3.35 TB/s, whatever the clock
    gemv = g.GemmRow("x", "h100-sxm", "bfloat16", 1, 12288, 5376, 1.0, "k", "s")
    p = g.price(gemv, rates)
    assert gemv.nbytes == (1 * 5376 + 5376 * 12288) * 2 + 1 * 12288 * 2
    assert p.bound == "memory"
    assert p.priced_s == pytest.approx(gemv.nbytes / (3.35e12 * eff.memory))
    assert p.burst_s == pytest.approx(p.priced_s)
    # a large square GEMM, compute-bound: FLOPs at the sustained peak x MAMF x the tile-wave efficiency
    big = g.GemmRow("y", "h100-sxm", "bfloat16", 8192, 8192, 8192, 1.0, "k", "s")
    p = g.price(big, rates)
    wave = gemm_efficiency(8192, 8192, 132, eff.matmul_tiles)
    assert p.bound == "compute" and p.wave == pytest.approx(wave)
    assert p.priced_s == pytest.approx(2 * 8192 ** 3 / (989.4e12 * eff.sustained * eff.matmul * wave))
    assert p.burst_s == pytest.approx(p.priced_s * eff.sustained)  # the boost clock: sustained = 1
    assert p.ideal_compute_s == pytest.approx(2 * 8192 ** 3 / (989.4e12 * eff.matmul))


def test_float8_prices_at_the_fp8_gemm_rates(g):
    rates = device_rates(load_catalog().cluster("h100-sxm"), "float8")
    row = g.GemmRow("z", "h100-sxm", "float8", 4096, 7168, 16384, 1.0, "k", "s")
    p = g.price(row, rates)
    fp8 = rates.gemm
    assert row.nbytes == (4096 * 16384 + 16384 * 7168) * 1 + 4096 * 7168 * 2
    assert p.bound == "compute"
    assert p.priced_s == pytest.approx(row.flops / (1978.9e12 * fp8.efficiency.sustained * fp8.efficiency.matmul
                                                    * p.wave))
    assert fp8.efficiency.matmul == rates.efficiency.matmul_float8


def test_report_prints_every_row_and_the_bands(g, rows):
    text = g.report(g.price_all(rows))
    for r in rows:
        assert r.row_id in text
    assert "float8   m 17-128" in text and "bfloat16 m 1-16" in text


def test_bad_csv_is_one_line_exit_2(g, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("row_id,hardware,dtype,m,n,k,published_tflops,kernel,assumptions,source\n"
                   "A1,h100-sxm,int3,1,2,3,4.0,k,a,s\n")
    assert g.main(["--path", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "int3" in err and "float8" in err
    missing = tmp_path / "missing.csv"
    missing.write_text("row_id,m\nA1,1\n")
    assert g.main(["--path", str(missing)]) == 2
    assert "missing column" in capsys.readouterr().err


@pytest.mark.parametrize("row, words", [
    ("A1,nodev,bfloat16,128,256,512,100.0,k,a,s", "unknown device 'nodev'"),
    ("A1,h100-sxm,bfloat16,0,256,512,100.0,k,a,s", "must be >= 1"),
    ("A1,h100-sxm,bfloat16,128,wide,512,100.0,k,a,s", "whole numbers"),
    ("A1,h100-sxm,bfloat16,128,256,512,-1,k,a,s", "published_tflops > 0"),
])
def test_a_bad_row_is_one_line_exit_2_not_a_traceback(g, tmp_path, capsys, row, words):
    """An unknown device, a zero or non-numeric dimension, a non-positive rate: one line naming the file, exit 2."""
    bad = tmp_path / "bad.csv"
    bad.write_text("row_id,hardware,dtype,m,n,k,published_tflops,kernel,assumptions,source\n" + row + "\n")
    assert g.main(["--path", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and words in err
