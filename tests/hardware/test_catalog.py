"""The hardware catalog: the contract names, a source for every entry, user files and plugin entries."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmsim.cli import main
from llmsim.errors import ScenarioError
from llmsim.hardware import load_catalog

DEVICES = ["a100-40gb", "a100-80gb", "a100-80gb-pcie", "h100-sxm", "h200", "tpu-v4", "tpu-v5e", "tpu-v5p", "cpu-host"]
LINKS = ["pcie4", "pcie5", "nvlink3", "nvlink3-bridge", "nvlink4", "ib-hdr200x8", "ib-ndr400x8", "roce400x8", "opa100x4",
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
        assert d.intra_node in catalog.links, name
        # a TPU without a published data-center link (v4) names none: multi-slice v4 asks the user for one
        assert d.inter_node in catalog.links or (d.torus is not None and d.inter_node is None), name
    # dense, not sparse, peaks: the datasheet numbers the MFU convention uses
    assert catalog.device("a100-80gb").peak_flops["bfloat16"] == 312e12
    assert catalog.device("h100-sxm").peak_flops["bfloat16"] == pytest.approx(989.4e12)


def test_the_a100_80gb_pcie_is_the_sxm4_die_with_its_own_memory_power_gemm_rate_and_bridge() -> None:
    """a100-80gb-pcie (NVIDIA A100 datasheet, A100 80GB PCIe column): the SXM4 part's peaks, SMs and clock; 1,935
    GB/s; 300 W; its own measured GEMM fraction (ml-engineering MAMF 256.4 of 312 TFLOP/s, where the SXM4 part's is
    267.9); two cards joined by an NVLink bridge of 600 GB/s both ways (one peer, not switched), the pairs of a host
    over PCIe Gen4."""
    catalog = load_catalog()
    pcie, sxm = catalog.device("a100-80gb-pcie"), catalog.device("a100-80gb")
    assert pcie.memory_bw_bytes_per_s == 1935e9 and sxm.memory_bw_bytes_per_s == 2039e9
    assert pcie.memory_bytes == sxm.memory_bytes == 80 * 2**30
    assert pcie.max_power_w == 300 and sxm.max_power_w == 400 and pcie.power_limit_w is None
    assert pcie.peak_flops == sxm.peak_flops and pcie.compute_units == sxm.compute_units == 108
    assert pcie.sm_clock_hz == sxm.sm_clock_hz and pcie.eager_launch_s == sxm.eager_launch_s
    assert pcie.efficiency.matmul == pytest.approx(256.4 / 312, abs=5e-4)
    assert sxm.efficiency.matmul == pytest.approx(267.9 / 312, abs=5e-4)
    assert pcie.efficiency == sxm.efficiency.model_copy(update={"source": pcie.efficiency.source,
                                                                "matmul": pcie.efficiency.matmul})
    assert "256.4" in pcie.efficiency.source
    assert "1,935 GB/s" in pcie.source and "max TDP 300 W" in pcie.source and "NC96ads v4" in pcie.source
    bridge = catalog.link("nvlink3-bridge")
    assert (pcie.devices_per_node, pcie.intra_node, pcie.inter_node) == (2, "nvlink3-bridge", "pcie4")
    assert bridge.bandwidth_bytes_per_s == catalog.link("nvlink3").bandwidth_bytes_per_s == 300e9
    assert not bridge.fully_connected and catalog.link("nvlink3").fully_connected
    assert "NVLink Bridge for 2 GPUs: 600 GB/s" in bridge.source


def test_a_bridge_joins_one_pair_and_no_more(tmp_path: Path, capsys) -> None:
    """An NVLink bridge joins two cards (`max_devices: 2`): a node of 4 or 8 on it, or nodes joined by it, is a
    one-line error naming the key (exit 2 from the command line), not a cluster priced as if one bridge joined
    them all; a pair, and pairs over pcie4, are fine."""
    catalog = load_catalog()
    assert catalog.link("nvlink3-bridge").max_devices == 2 and catalog.link("nvlink3").max_devices is None
    assert catalog.cluster("a100-80gb-pcie", 2).devices_per_node == 2
    for kwargs, key in (({"devices_per_node": 4}, "devices_per_node"), ({"devices_per_node": 8}, "devices_per_node"),
                        ({"inter_node": "nvlink3-bridge"}, "inter_node")):
        with pytest.raises(ScenarioError) as info:
            catalog.cluster("a100-80gb-pcie", 2, **kwargs)
        assert info.value.key == key and "joins at most 2 devices" in info.value.message
    assert catalog.cluster("a100-80gb-pcie", 1, inter_node="nvlink3-bridge").devices_per_node == 2
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": "bridge", "workload": {"model": {"preset": "tiny", "seq_len": 16}, "mode": "decode", "batch": 1},
        "strategies": [{"name": "tp4", "tp": 4}],
        "backends": {"roofline": {"hardware": "a100-80gb-pcie", "nodes": 1, "devices_per_node": 4}}}))
    assert main(["run", str(scenario), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "backends.roofline.devices_per_node" in err and "nvlink3" in err


def _write(tmp_path: Path, entries: list[dict]) -> Path:
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump({"entries": entries}))
    return path


GPU = dict(name="my-gpu", type="device", peak_flops={"bfloat16": 1e15}, memory_bytes=1e11,
           memory_bw_bytes_per_s=4e12, idle_power_w=80, max_power_w=700)


def test_an_entry_without_a_source_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="source"):
        load_catalog([_write(tmp_path, [GPU])])
    # a plugin's: left out with the reason (cli warns), the other entries kept
    catalog = load_catalog(plugin_entries=[("acme", {"name": "x-link", "type": "link", "bandwidth_bytes_per_s": 1e9,
                                                     "latency_s": 1e-6})])
    assert "x-link" not in catalog.links and "source" in catalog.broken_plugins["acme"]


def test_a_user_file_adds_a_device_with_its_own_efficiency(tmp_path: Path) -> None:
    entry = dict(GPU, source="vendor sheet", intra_node="nvlink4", inter_node="ib-ndr400x8",
                 efficiency={"matmul": 0.7, "memory": 0.8, "source": "our measurement"})
    catalog = load_catalog([_write(tmp_path, [entry])])
    assert catalog.device("my-gpu").efficiency.matmul == 0.7
    assert catalog.device("my-gpu").efficiency.attention == 0.5   # unset fields keep the defaults


def test_a_power_limit_at_or_below_idle_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    from llmsim.cli import main

    path = _write(tmp_path, [dict(GPU, power_limit_w=80, source="vendor sheet")])
    with pytest.raises(ScenarioError, match=r"entries\[0\]\.power_limit_w: 80 W is at or below idle_power_w"):
        load_catalog([path])
    assert main(["hardware", "--hardware", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "power_limit_w" in err and "Traceback" not in err
    with pytest.raises(ScenarioError, match=r"power_limit_w: 701 W is above max_power_w \(700 W\)"):
        load_catalog([_write(tmp_path, [dict(GPU, power_limit_w=701, source="vendor sheet")])])
    limited = load_catalog([_write(tmp_path, [dict(GPU, power_limit_w=450, source="vendor sheet")])])
    assert limited.device("my-gpu").power_limit_w == 450


def test_duplicates_and_unknown_default_links_are_errors_of_the_file_that_has_them(tmp_path: Path) -> None:
    path = _write(tmp_path, [dict(GPU, name="h100-sxm", source="copy")])
    with pytest.raises(ScenarioError, match=r"'h100-sxm': a catalog entry with this name already exists \(in the "
                                            r"built-in catalog\)") as info:
        load_catalog([path])
    assert info.value.file == str(path) and info.value.key == "entries[0].name"   # was entries.h100-sxm
    path = _write(tmp_path, [dict(GPU, source="sheet", intra_node="warp-drive")])
    with pytest.raises(ScenarioError, match="unknown link 'warp-drive'") as info:
        load_catalog([path])
    # keyed as the file's validation errors are (entries[0].memory_bytes): was entries.my-gpu.intra_node
    assert info.value.file == str(path) and info.value.key == "entries[0].intra_node"
    assert info.value.message.startswith("unknown link 'warp-drive' (device 'my-gpu'); allowed: ")
    with pytest.raises(ScenarioError, match="efficiency"):
        load_catalog([_write(tmp_path, [dict(GPU, source="sheet", efficiency={"matmul": 1.5})])])


def test_a_catalog_key_path_names_the_entry_by_its_index_as_validation_errors_do(tmp_path: Path) -> None:
    """One style for a catalog file's key paths: entries[i], the entry's place in its file, as pydantic's errors of
    the same file read (entries[0].memory_bytes); a duplicate name or an unknown default link said entries.NAME."""
    other = dict(GPU, name="my-gpu-2", source="sheet")
    path = _write(tmp_path, [dict(GPU, source="sheet"), dict(other, name="my-gpu")])
    with pytest.raises(ScenarioError) as info:
        load_catalog([path])
    # a fresh-user trial: the file's own duplicate named the file but not which entry came first
    assert (info.value.key, info.value.message) == ("entries[1].name", "'my-gpu': entries[0].name of this file has "
                                                                       "this name already; give each entry its own "
                                                                       "name")
    path = _write(tmp_path, [dict(GPU, source="sheet"), dict(other, inter_node="warp-drive")])
    with pytest.raises(ScenarioError) as info:
        load_catalog([path])
    assert info.value.key == "entries[1].inter_node" and "(device 'my-gpu-2')" in info.value.message
    # a plugin's entries count in the list its hook returned (each was entries[0] before)
    plugin = [("hw", dict(GPU, source="sheet")), ("hw", dict(other, intra_node="warp-drive"))]
    with pytest.raises(ScenarioError) as info:
        load_catalog(plugin_entries=plugin)
    assert (info.value.file, info.value.key) == ("plugin hw", "entries[1].intra_node")


def test_a_duplicate_name_in_one_file_names_both_entries_and_across_files_the_first_files_entry(
        tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """A fresh-user trial: a catalog whose entries[3] repeats entries[0]'s name was told the name exists 'in hw.yaml',
    the very file, without saying which entry had it first."""
    from llmsim.cli import main

    link = dict(type="link", bandwidth_bytes_per_s=1e11, latency_s=5e-6, source="sheet")
    entries = [dict(GPU, source="sheet"), dict(link, name="a"), dict(link, name="b"), dict(link, name="my-gpu")]
    path = _write(tmp_path, entries)
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err == (f"llmsim: error: {path}: entries[3].name: 'my-gpu': entries[0].name of this "
                                       f"file has this name already; give each entry its own name\n")
    first = tmp_path / "first"
    first.mkdir()
    one = _write(first, [dict(link, name="a"), dict(GPU, source="sheet")])
    two = _write(tmp_path, [dict(link, name="my-gpu")])
    with pytest.raises(ScenarioError) as info:
        load_catalog([one, two])
    assert (info.value.file, info.value.key, info.value.message) == (
        str(two), "entries[0].name", f"'my-gpu': a catalog entry with this name already exists (in {one}, "
                                     f"entries[1].name); give yours another name")


def test_catalog_cluster_takes_the_entry_defaults_and_the_callers_choices() -> None:
    catalog = load_catalog()
    tpu = catalog.cluster("tpu-v4", nodes=2)   # 2 hosts of 4 chips without a topology: one 2x2x2 slice
    assert (tpu.devices_per_node, tpu.world, tpu.intra.name, tpu.topology) == (8, 8, "ici-v4", (2, 2, 2))
    a100 = catalog.cluster("a100-80gb", 3, devices_per_node=4, inter_node="roce400x8")
    assert (a100.nodes, a100.devices_per_node, a100.intra.name, a100.inter.name) == (3, 4, "nvlink3", "roce400x8")
    assert catalog.cluster("cpu-host", intra_node="loopback", inter_node="loopback").devices_per_node == 8
    with pytest.raises(ScenarioError) as both:  # both missing links named at once (trial 30), not one per run
        catalog.cluster("cpu-host")
    assert str(both.value).startswith("intra_node: device 'cpu-host' names no default intra_node or inter_node "
                                      "link; set intra_node and inter_node, each one of: ")
    with pytest.raises(ScenarioError, match=r"^inter_node: device 'cpu-host' names no default inter_node link; "
                                            r"set inter_node, one of: .*loopback"):
        catalog.cluster("cpu-host", intra_node="loopback")
    # one device moves nothing over a link: no link asked for (trial 39), loopback standing in for both
    one = catalog.cluster("cpu-host", devices_per_node=1)
    assert (one.world, one.intra.name, one.inter.name) == (1, "loopback", "loopback")
    with pytest.raises(ScenarioError, match="names no default intra_node or inter_node link"):
        catalog.cluster("cpu-host", nodes=2, devices_per_node=1)
    with pytest.raises(ScenarioError, match=r"^inter_node: unknown link 'warp'"):
        catalog.cluster("h200", inter_node="warp")
    with pytest.raises(ScenarioError, match=r"^hardware: unknown device 'h900'"):
        catalog.cluster("h900")


def test_roofline_cluster_and_planner_place_a_tpu_alike() -> None:
    """One route from a hardware name to a cluster: a tpu-v4 host holds 4 chips for every caller (the
    roofline used to assume 8 whatever the device, the planner the catalog's 4)."""
    from llmsim.config import parse_scenario
    from llmsim.planner.config import parse_plan
    from llmsim.planner.search import resolve_hardware
    from llmsim.plugins import get_plugin_manager
    from llmsim.registry import BackendRegistry
    from llmsim.runner import plan_cases

    workload = {"model": {"preset": "tiny"}, "mode": "train", "batch": 8}
    registry = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "roofline,cluster"}))
    scenario = parse_scenario({"name": "tpu", "workload": workload, "strategies": [{"name": "dp"}],
                               "backends": {"roofline": {"hardware": "tpu-v4", "nodes": 2},
                                            "cluster": {"hardware": "tpu-v4", "nodes": 2}}})
    assert [p.case.layout.world for p in plan_cases(scenario, registry)] == [8, 8]
    plan = parse_plan({"name": "tpu", "workload": workload, "goal": {"tokens": 1e6},
                       "hardware": [{"name": "tpu-v4", "usd_per_device_hour": 1.0}]})
    [hw] = resolve_hardware(plan, load_catalog())
    assert hw.devices_per_node == 4 and hw.cluster(8).topology == (2, 2, 2) and hw.cluster(64).wrap == (True,) * 3


@pytest.mark.parametrize("text, key, words", [
    ("- {name: x1}\n", None, "expected a mapping at the top level (entries: [{type: device"),
    ("entries:\n  - {name: x1}\n", "entries[0].type", "each entry needs type: device or type: link"),
    ("entries:\n  - {type: gizmo, name: x1}\n", "entries[0].type", "'gizmo': allowed: device, link"),
    ("entries: 5\n", "entries", "expected a list of entries"),
    ("devices:\n  - {name: x1}\n", "entries", "a catalog file holds entries: [{type: device, name: ...}, {type: "
                                             "link, name: ...}] (unknown top-level key: devices)"),
    ("entries:\n  - {type: device, name: x1, memory_bytes: -5, memory_bw_bytes_per_s: 1.0e12}\n",
     "entries[0].memory_bytes", "(and 3 more problems: entries[0].idle_power_w, entries[0].max_power_w"),
    # a negative or zero peak priced nothing and gave 'ok' rows (trial 23); a range names its bound
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: -5.0e12}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, source: my datasheet}\n",
     "entries[0].peak_flops.bfloat16", "-5e+12: out of range; allowed: >= 1e+08"),
    # a unit slip (TFLOP/s, TB/s) priced NaN or 1e11-second TTFTs in "ok" rows (trial 34): refused at the floors
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 989}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, source: my datasheet}\n",
     "entries[0].peak_flops.bfloat16", "989: out of range; allowed: >= 1e+08"),
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 9.89e14}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.35, idle_power_w: 100, max_power_w: 700, source: my datasheet}\n",
     "entries[0].memory_bw_bytes_per_s", "3.35 B/s is below 1e+08 (100 MB/s): a bandwidth in other units? allowed: "
                                         "0 (not modeled) or bytes/s >= 1e+08"),
    ("entries:\n  - {type: link, name: l1, bandwidth_bytes_per_s: 400, latency_s: 1.0e-6, source: my sheet}\n",
     "entries[0].bandwidth_bytes_per_s", "400: out of range; allowed: >= 1e+06"),
    # trial 35: time and clock slips (MHz for Hz, seconds for microseconds) priced 1,000-second steps "ok"
    ("entries:\n  - {type: link, name: l1, bandwidth_bytes_per_s: 1.0e11, latency_s: 3.0, source: my sheet}\n",
     "entries[0].latency_s", "3.0: out of range; allowed: >= 0 and <= 0.01"),
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 9.89e14}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, sm_clock_hz: 1830, source: my sheet}\n",
     "entries[0].sm_clock_hz", "1830: out of range; allowed: >= 1e+08"),
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 9.89e14}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, eager_launch_s: 34.9, source: my sheet}\n",
     "entries[0].eager_launch_s", "34.9: out of range; allowed: >= 0 and <= 0.01"),
    # ... and the same slips in the efficiency block (trial 35): a kernel's fixed time, the custom all-reduce's
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 9.89e14}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, efficiency: {kernel_latency_s: 10}, "
     "source: my sheet}\n",
     "entries[0].efficiency.kernel_latency_s", "10: out of range; allowed: >= 0 and <= 0.01"),
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 9.89e14}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, "
     "efficiency: {custom_all_reduce_two_shot_round_s: 1.86}, source: my sheet}\n",
     "entries[0].efficiency.custom_all_reduce_two_shot_round_s", "1.86: out of range; allowed: >= 0 and <= 0.01"),
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 9.89e14}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, sm_clock_hz: 1.83e9, "
     "efficiency: {kernel_latency_cycles: 1e12, kernel_latency_s: 1e-5}, source: my sheet}\n",
     "entries[0].efficiency.kernel_latency_cycles",
     "1e+12: out of range at sm_clock_hz 1.83e+09; allowed: >= 0 and <= 1.83e+07 (0.01 s)"),
    # trial 48: vLLM's all-reduce + RMSNorm fusion limits, the tp size and the bytes each with its own rule
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 9.89e14}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, "
     "allreduce_rms_fusion_max_bytes: {2: -1}, source: my sheet}\n",
     "entries[0].allreduce_rms_fusion_max_bytes[2]", "-1: the largest all-reduce input in bytes; allowed: a number of "
                                                      "bytes > 0"),
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 9.89e14}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, "
     "allreduce_rms_fusion_max_bytes: {1: 1048576}, source: my sheet}\n",
     "entries[0].allreduce_rms_fusion_max_bytes[1]", "1: a tp size; allowed: whole numbers >= 2"),
    # trial 37: a quoted boolean, a link's flag latency in other units, cycles of .inf
    ("entries:\n  - {type: link, name: l1, bandwidth_bytes_per_s: 1.0e11, latency_s: 1.0e-6, shared_per_node: 'yes', "
     "source: my sheet}\n",
     "entries[0].shared_per_node", "'yes' is text, not a boolean (allowed: true, false)"),
    ("entries:\n  - {type: link, name: l1, bandwidth_bytes_per_s: 1.0e11, latency_s: 1.0e-6, flag_latency_s: 0.5, "
     "source: my sheet}\n",
     "entries[0].flag_latency_s", "0.5: out of range; allowed: >= 0 and <= 0.01"),
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 9.89e14}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, sm_clock_hz: 1.83e9, "
     "efficiency: {kernel_latency_cycles: .inf}, source: my sheet}\n",
     "entries[0].efficiency.kernel_latency_cycles", "inf: expected a finite number"),
    # trial 36: a quoted number passed every bound of a catalog entry (pydantic's lax mode reads '3.8' as 3.8)
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 9.89e14}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, "
     "efficiency: {custom_all_reduce_one_shot_s: '3.8'}, source: my sheet}\n",
     "entries[0].efficiency.custom_all_reduce_one_shot_s",
     "'3.8' is text, not a number (write it without quotes); allowed: >= 0 and <= 0.01"),
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: '1.2e15'}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, source: my sheet}\n",
     "entries[0].peak_flops.bfloat16",
     "'1.2e15' is text, not a number (write it without quotes); allowed: >= 1e+08"),
    # trial 37: a mapping's value named no range; a tuple field got pydantic's own words
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: true}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, source: my sheet}\n",
     "entries[0].peak_flops.bfloat16", "true is a boolean, not a number"),
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 9.89e14}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, "
     "efficiency: {matmul_tiles: '3'}, source: my sheet}\n",
     "entries[0].efficiency.matmul_tiles",
     "'3': expected a list of [rows, cols] GEMM output tiles, each side a whole number from 1 to 4096; allowed: "
     "e.g. [[128, 128], [128, 256]]"),
    # trial 39: one number for peak_flops named no dtype keys
    ("entries:\n  - {type: device, name: x1, peak_flops: 1.2e15, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, source: my sheet}\n",
     "entries[0].peak_flops", "1.2e+15: expected a mapping of dtype to dense peak FLOP/s; allowed: keys float32, "
                              "bfloat16, float16, float8, float4, int8, e.g. {bfloat16: 9.89e14}"),
    # trial 39: a tile side of 0 divided by zero in a `failed` row; -5 or 100000 priced every GEMM as one wave;
    # pydantic's echo of the dropped item ("too short") was counted as another problem
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 9.89e14}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, "
     "efficiency: {matmul_tiles: [[0, 128]]}, source: my sheet}\n",
     "entries[0].efficiency.matmul_tiles[0][0]", "0: out of range; allowed: >= 1 and <= 4096"),
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 9.89e14}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, "
     "efficiency: {matmul_tiles: [['128', 128]]}, source: my sheet}\n",
     "entries[0].efficiency.matmul_tiles[0][0]", "'128': expected a list of [rows, cols] GEMM output tiles"),
    ("entries:\n  - {type: link, name: l1, bandwidth_bytes_per_s: 1.0e11, latency_s: '5e-6', source: my sheet}\n",
     "entries[0].latency_s", "'5e-6' is text, not a number (write it without quotes); allowed: >= 0 and <= 0.01"),
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 1.0e15}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 10, source: my datasheet}\n",
     "entries[0].max_power_w", "10 W is below idle_power_w (100 W); allowed: >= idle_power_w"),
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 1.0e15}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: -3, idle_power_w: 100, max_power_w: 700, source: my datasheet}\n",
     "entries[0].memory_bw_bytes_per_s", "-3: out of range; allowed: >= 0"),
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: .nan}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, source: my datasheet}\n",
     "entries[0].peak_flops.bfloat16", "nan: expected a finite number"),
    # pydantic's own words were left here (trial 24): 'Input should be a valid number', 'String should have at
    # least 3 characters', an unknown key without the keys its entry type takes
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: abc}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, source: my datasheet}\n",
     "entries[0].peak_flops.bfloat16", "'abc' is text, not a number"),
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 1.0e15}, memory_bytes: 1" + "0" * 400 + ", "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, source: my datasheet}\n",
     "entries[0].memory_bytes", "too large for a number (at most ~1.8e308)"),
    ("entries:\n  - {type: device, name: x1, peak_flops: {bfloat16: 1.0e15}, memory_bytes: 8.0e10, "
     "memory_bw_bytes_per_s: 3.0e12, idle_power_w: 100, max_power_w: 700, source: x}\n",
     "entries[0].source", "'x': too short; allowed: at least 3 characters"),
    ("entries:\n  - {type: link, name: l1, bandwidth_bytes_per_s: 1.0e9, latency_s: 1.0e-6, source: my sheet, "
     "bogus: 1}\n",
     "entries[0].bogus", "unknown key; allowed: name, type, bandwidth_bytes_per_s, latency_s, efficiency"),
    ("entries:\n  - {type: link, name: l1, bandwidth_bytes_per_s: 1.0e9, latency_s: 1.0e-6, efficiency: 2, "
     "source: my sheet}\n",
     "entries[0].efficiency", "2: out of range; allowed: > 0 and <= 1"),
])
def test_a_bad_catalog_file_is_one_line_that_says_what_a_catalog_holds(tmp_path: Path, text: str, key: str | None,
                                                                       words: str) -> None:
    """A catalog is `entries:` (not a scenario's name:, workload:), each entry a device or a link; every
    problem past the first is counted and located, as a scenario's are."""
    path = tmp_path / "hw.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_catalog([path])
    assert info.value.key == key and words in info.value.message, info.value.message


def test_validate_of_a_catalog_file_checks_its_entries(tmp_path: Path, capsys) -> None:
    """`llmsim validate hw.yaml` checks a catalog as a scenario would load it; it said 'name: required key is
    missing' of a scenario before (trial 24)."""
    path = _write(tmp_path, [dict(GPU, source="vendor sheet")])
    assert main(["validate", str(path)]) == 0
    assert "ok — a hardware catalog of 1 device (my-gpu) and 0 links" in capsys.readouterr().out
    bad = _write(tmp_path, [dict(GPU, source="vendor sheet", intra_node="warp-drive")])
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "entries[0].intra_node: unknown link 'warp-drive' (device 'my-gpu')" in err
    # trial 41: --set and --backend were ignored and the file said ok
    for flag in (["--set", "entries[0].memory_bytes=-1"], ["--backend", "nosuch"]):
        assert main(["validate", str(path), *flag]) == 2
        used = "a scenario or a plan" if flag[0] == "--set" else "a scenario"
        assert capsys.readouterr().err.strip() == (f"llmsim: error: validate: {flag[0]} is for {used}; {path} is "
                                                   f"a hardware catalog, checked as written (leave {flag[0]} out, or "
                                                   f"edit the file)")


@pytest.mark.parametrize("listed, said", [
    ("[nothere.yaml]", "hardware_catalog[0]: 'nothere.yaml': no such file in"),
    ("[adir]", "hardware_catalog[0]: 'adir': is a folder in"),
    ("['{tmp}']", "hardware_catalog[0]: '{tmp}': is a folder, not a hardware file"),   # trial 33: not "in" itself
    ("[hw.yaml, ./hw.yaml]", "hardware_catalog[1]: './hw.yaml' is listed twice (also hardware_catalog[0])"),
])
def test_a_hardware_catalog_path_that_names_no_usable_file_is_the_scenarios_error(tmp_path: Path, capsys,
                                                                                 listed: str, said: str) -> None:
    (tmp_path / "adir").mkdir()
    _write(tmp_path, [dict(GPU, source="vendor sheet")])
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"name: s\nhardware_catalog: {listed.format(tmp=tmp_path)}\nworkload: {{model: {{preset: tiny}}, mode: decode, "
                        f"batch: 1}}\nstrategies: [{{name: single}}]\nbackends: {{roofline: {{hardware: my-gpu}}}}\n")
    assert main(["validate", str(scenario)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"s.yaml: {said.format(tmp=tmp_path)}" in err, err


@pytest.mark.parametrize("where, entry", [
    ("entries[0].compute_units", dict(GPU, compute_units=True)),
    ("entries[0].efficiency.matmul", dict(GPU, efficiency={"matmul": True, "source": "x"})),
    ("entries[0].peak_flops.bfloat16", dict(GPU, peak_flops={"bfloat16": False})),
])
def test_a_boolean_for_a_number_in_a_hardware_file_is_refused_naming_the_key(tmp_path: Path, capsys, where: str,
                                                                            entry: dict) -> None:
    """YAML's true/false is not 1/0 in a hardware file, as in a scenario (pydantic's lax mode read it as one)."""
    assert main(["validate", str(_write(tmp_path, [dict(entry, source="vendor sheet")]))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{where}: " in err and "is a boolean" in err, err


def test_validate_of_a_bare_list_of_entries_says_they_go_under_entries(tmp_path: Path, capsys) -> None:
    """A catalog written as a top-level list of entries (no `entries:`) is not taken for a broken scenario."""
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump([dict(GPU, source="vendor sheet")]))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lists its devices and links under entries:" in err, err


def test_the_same_hardware_file_given_twice_says_so(tmp_path: Path, capsys, monkeypatch) -> None:
    """Trial 41: `--hardware hw.yaml --hardware ./hw.yaml` said its entry 'already exists (in hw.yaml)'."""
    path = _write(tmp_path, [dict(GPU, source="vendor sheet")])
    monkeypatch.chdir(tmp_path)
    assert main(["hardware", "--hardware", path.name, "--hardware", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (f"llmsim: error: {path}: the same hardware file is given twice (also "
                                               f"as {path.name}); give it once")


def test_validate_of_a_catalog_notes_a_device_without_peaks(tmp_path: Path, capsys) -> None:
    """Trial 41: a device with `peak_flops: {}` validated as ok, and every case on it was then skipped."""
    path = _write(tmp_path, [dict(GPU, source="vendor sheet", peak_flops={})])
    assert main(["validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert "ok — a hardware catalog of 1 device (my-gpu)" in captured.out
    assert captured.err.strip() == (f"llmsim: note: {path}: entries[0].peak_flops: none given for 'my-gpu': every "
                                    f"modeled case on this device is skipped (give e.g. peak_flops: {{bfloat16: "
                                    f"989.4e12}}, FLOP/s of dense math per dtype)")
    with_peaks = _write(tmp_path, [dict(GPU, source="vendor sheet")])
    assert main(["validate", str(with_peaks)]) == 0 and capsys.readouterr().err == ""
