"""The hardware catalog: the contract names, a source for every entry, user files and plugin entries."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmsim.errors import ScenarioError
from llmsim.hardware import load_catalog

DEVICES = ["a100-40gb", "a100-80gb", "h100-sxm", "h200", "tpu-v4", "tpu-v5e", "tpu-v5p", "cpu-host"]
LINKS = ["pcie4", "pcie5", "nvlink3", "nvlink4", "ib-hdr200x8", "ib-ndr400x8", "roce400x8", "opa100x4",
         "ici-v4", "ici-v5p", "ethernet-100g", "loopback"]


def test_contract_names_exist_with_sources() -> None:
    catalog = load_catalog()
    assert set(DEVICES) <= set(catalog.devices)
    assert set(LINKS) <= set(catalog.links)
    for entry in [*catalog.devices.values(), *catalog.links.values()]:
        assert len(entry.source) > 20, entry.name


def test_accelerators_carry_every_number_the_cost_model_needs() -> None:
    catalog = load_catalog()
    for name in DEVICES[:-1]:
        d = catalog.device(name)
        assert d.peak_flops.get("bfloat16", 0) > 1e14, name
        assert d.memory_bytes > 1e10 and d.memory_bw_bytes_per_s > 5e11, name
        assert 0 < d.idle_power_w < d.max_power_w, name
        assert d.intra_node in catalog.links and d.inter_node in catalog.links, name
    # dense, not sparse, peaks: the datasheet numbers the MFU convention uses
    assert catalog.device("a100-80gb").peak_flops["bfloat16"] == 312e12
    assert catalog.device("h100-sxm").peak_flops["bfloat16"] == pytest.approx(989.4e12)


def _write(tmp_path: Path, entries: list[dict]) -> Path:
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump({"entries": entries}))
    return path


GPU = dict(name="my-gpu", type="device", peak_flops={"bfloat16": 1e15}, memory_bytes=1e11,
           memory_bw_bytes_per_s=4e12, idle_power_w=80, max_power_w=700)


def test_an_entry_without_a_source_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="source"):
        load_catalog([_write(tmp_path, [GPU])])
    with pytest.raises(ScenarioError, match="source"):
        load_catalog(plugin_entries=[("acme", {"name": "x-link", "type": "link", "bandwidth_bytes_per_s": 1e9,
                                              "latency_s": 1e-6})])


def test_a_user_file_adds_a_device_with_its_own_efficiency(tmp_path: Path) -> None:
    entry = dict(GPU, source="vendor sheet", intra_node="nvlink4", inter_node="ib-ndr400x8",
                 efficiency={"matmul": 0.7, "memory": 0.8, "source": "our measurement"})
    catalog = load_catalog([_write(tmp_path, [entry])])
    assert catalog.device("my-gpu").efficiency.matmul == 0.7
    assert catalog.device("my-gpu").efficiency.attention == 0.5   # unset fields keep the defaults


def test_duplicates_and_unknown_default_links_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="already exists"):
        load_catalog([_write(tmp_path, [dict(GPU, name="h100-sxm", source="copy")])])
    with pytest.raises(ScenarioError, match="unknown link 'warp-drive'"):
        load_catalog([_write(tmp_path, [dict(GPU, source="sheet", intra_node="warp-drive")])])
    with pytest.raises(ScenarioError, match="efficiency"):
        load_catalog([_write(tmp_path, [dict(GPU, source="sheet", efficiency={"matmul": 1.5})])])
