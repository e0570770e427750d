"""The parts published serving and training runs use that the catalog lacked until session 20: H800, B300, GB300,
L40S, L40, MI355X. Each entry against the datasheet figures its source cites (dense peaks: the "with sparsity"
figures halved), its links, the NVML names that pick it, and a roofline run on it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from llmsim.cli import main
from llmsim.hardware import load_catalog
from llmsim.nvml import catalog_name_for

CATALOG = load_catalog()
GiB = 2**30

# name: (bf16 dense, fp8 dense, fp32, fp4 dense or None, memory bytes, bandwidth B/s, max W, SMs, intra, inter, MAMF
# fraction) as the cited datasheets (and MAMF table) give them.
DATASHEET = {
    # NVIDIA H800 datasheet (SXM): BF16 1,979 / FP8 3,958 with sparsity, FP32 67, 80 GB, 3.35 TB/s, 700 W
    "h800": (989.4e12, 1978.9e12, 66.9e12, None, 80 * GiB, 3.35e12, 700, 132, "nvlink4-h800", "ib-ndr400x8",
             792.1 / 989),
    # NVIDIA HGX B300 per 8 GPUs with sparsity: BF16 36, FP8 72 PFLOP/s, FP4 108 dense; FP32 600 TFLOP/s; 1,100 W
    "b300": (2250e12, 4500e12, 75e12, 13500e12, 270 * GiB, 8e12, 1100, 148, "nvlink5", "ib-xdr800x8", 1769.0 / 2250),
    # NVIDIA GB300 NVL72 per 72 GPUs: BF16 360, FP8 720 with sparsity, FP4 1,080 dense; 576 TB/s; 1.4 kW per GPU;
    # 284,208 MiB per GPU (MLPerf v5.1 Theia system description); matmul fraction gb200's (an estimate)
    "gb300": (2500e12, 5000e12, 80e12, 15000e12, 284208 * 2**20, 8e12, 1400, 148, "nvlink5", "ib-xdr800x8",
              1822.0 / 2500),
    # NVIDIA L40S datasheet: BF16 362.05 (733 sparse), FP8 733 (1,466 sparse), FP32 91.6, 48 GB GDDR6, 864 GB/s, 350 W
    "l40s": (362.05e12, 733e12, 91.6e12, None, 48 * GiB, 864e9, 350, 142, "pcie4", "ethernet-100g", 792.1 / 989),
    # NVIDIA L40 datasheet: BF16 181.05 (362.1 sparse), FP8 362 (724 sparse), FP32 90.5, 48 GB GDDR6, 864 GB/s, 300 W
    "l40": (181.05e12, 362e12, 90.5e12, None, 48 * GiB, 864e9, 300, 142, "pcie4", "ethernet-100g", 792.1 / 989),
    # AMD MI355X: 2,400 MHz x 512 FMA x 2 x 1,024 matrix cores = 2,516.6 TFLOP/s BF16 (AMD: 2.5 PFLOP/s), FP8 x2,
    # FP4 x4, FP32 157.3, 288 GB HBM3E, 8 TB/s, 1,400 W; MAMF 1565.0 TFLOP/s measured
    "mi355x": (2516.6e12, 5033.2e12, 157.3e12, 10066.3e12, 288 * GiB, 8e12, 1400, None, "xgmi-mi355", "roce400x8",
               1565.0 / 2516.6),
}


@pytest.mark.parametrize("name", sorted(DATASHEET))
def test_each_new_part_carries_its_datasheet_figures(name: str) -> None:
    bf16, fp8, fp32, fp4, memory, bandwidth, watts, sms, intra, inter, matmul = DATASHEET[name]
    d = CATALOG.device(name)
    assert d.peak_flops["bfloat16"] == pytest.approx(bf16) and d.peak_flops["float16"] == pytest.approx(bf16)
    assert d.peak_flops["float8"] == pytest.approx(fp8) and d.peak_flops["float32"] == pytest.approx(fp32)
    assert d.peak_flops.get("float4") == (None if fp4 is None else pytest.approx(fp4))
    assert d.memory_bytes == memory and d.memory_bw_bytes_per_s == bandwidth
    assert d.max_power_w == watts and 0 < d.idle_power_w < watts
    assert d.compute_units == sms
    assert (d.intra_node, d.inter_node) == (intra, inter)
    assert d.efficiency is not None and d.efficiency.matmul == pytest.approx(matmul, abs=5e-4)
    assert d.efficiency.kernel_latency_s > 0 and d.eager_launch_s > 0
    assert len(d.source) > 200 and len(d.efficiency.source) > 100


def test_the_h800_is_the_h100_sxm_with_its_nvlink_cut_to_400_gb_s_both_ways() -> None:
    h800, h100 = CATALOG.device("h800"), CATALOG.device("h100-sxm")
    assert h800.model_copy(update={"name": "x", "source": "", "intra_node": "", "efficiency": None}) == \
        h100.model_copy(update={"name": "x", "source": "", "intra_node": "", "efficiency": None})
    assert h800.efficiency.model_copy(update={"source": ""}) == h100.efficiency.model_copy(update={"source": ""})
    cut, full = CATALOG.link("nvlink4-h800"), CATALOG.link("nvlink4")
    assert cut.bandwidth_bytes_per_s == 200e9 and full.bandwidth_bytes_per_s == 450e9
    assert cut.fully_connected and cut.peer_access and cut.efficiency == full.efficiency
    assert "NVLink 400 GB/s" in cut.source and "160 GB/s" in cut.source  # DeepSeek-V3: 0.80 of 200 reached


def test_the_new_links_carry_their_line_rates() -> None:
    xgmi = CATALOG.link("xgmi-mi355")
    assert xgmi.bandwidth_bytes_per_s == pytest.approx(7 * 153.6e9 / 2) and xgmi.fully_connected
    xdr = CATALOG.link("ib-xdr800x8")
    assert xdr.bandwidth_bytes_per_s == 800e9 / 8 and not xdr.shared_per_node
    assert "4x ConnectX-8 IB XDR 800 Gb/s" in xdr.source


def test_blackwell_ultra_has_blackwells_fp8_and_mx_units_and_ada_none() -> None:
    for name in ("b300", "gb300"):
        assert CATALOG.device(name).microscaling and CATALOG.device(name).fp8_gemm_any_layout
    for name in ("h800", "l40s", "l40", "mi355x"):
        assert not CATALOG.device(name).microscaling and not CATALOG.device(name).fp8_gemm_any_layout
    assert CATALOG.device("gb300").devices_per_node == 72 and CATALOG.device("b300").devices_per_node == 8


@pytest.mark.parametrize("nvml_name, entry", [
    ("NVIDIA H800", "h800"),
    ("NVIDIA L40S", "l40s"),
    ("NVIDIA L40", "l40"),
    ("NVIDIA B300 SXM6 AC", "b300"),
    ("NVIDIA GB300", "gb300"),
    ("NVIDIA B200", "b200"),            # catalog entries before these, unmapped until now
    ("NVIDIA GB200", "gb200"),
    ("NVIDIA  L40S", "l40s"),           # spaces collapsed, as for the other names
    ("NVIDIA H800 PCIe", None),         # 114 SMs, lower clocks: not the SXM5 part
    ("NVIDIA L4", None),
    ("NVIDIA L40S MIG 1g.12gb", None),  # a slice of the board, not the board
])
def test_nvml_names_pick_the_new_entries_and_only_theirs(nvml_name: str, entry: str | None) -> None:
    assert catalog_name_for(nvml_name) == entry
    if entry is not None:
        assert entry in CATALOG.devices


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], hardware: str, **workload: object) -> pd.Series:
    data = {"name": f"part-{hardware}", "strategies": [{"name": "single"}],
            "backends": {"roofline": {"hardware": hardware, "nodes": 1, "devices_per_node": 1}},
            "workload": {"model": {"preset": "llama3-8b", "layers": 2, "seq_len": 2048}, "mode": "train",
                         "batch": 8, "dtype": "bfloat16", **workload}}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{hardware}.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 0
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    return pd.read_csv(folder / "results.csv").iloc[0]


@pytest.mark.parametrize("name", sorted(DATASHEET))
def test_a_roofline_run_prices_a_step_on_each_new_part(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      name: str) -> None:
    row = _run(tmp_path, capsys, name)
    assert row["status"] == "ok", row["error"]
    assert row["hardware"] == name and row["step_time_s"] > 0


def test_the_l40_trains_at_half_the_l40s_tensor_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Same die, memory and clock; the L40's dense BF16 peak is half the L40S's (181.05 vs 362.05 TFLOP/s), so a
    compute-bound training step takes longer on it, by at most the 2x of the peaks."""
    l40, l40s = (_run(tmp_path / n, capsys, n)["step_time_s"] for n in ("l40", "l40s"))
    assert 1.3 * l40s < l40 <= 2.0 * l40s
