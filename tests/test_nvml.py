"""llmsim.nvml's naming of GPUs (the energy counters are tested with the cuda backend, tests/plugins/test_cuda.py)."""

from __future__ import annotations

import pytest

from llmsim.nvml import catalog_name_for, mig_profile, mig_reason


@pytest.mark.parametrize("nvml_name, profile, board", [
    ("NVIDIA A100 80GB PCIe MIG 1g.10gb", "1g.10gb", "a100-80gb-pcie"),
    ("NVIDIA A100-SXM4-40GB MIG 3g.20gb", "3g.20gb", "a100-40gb"),
    ("NVIDIA A100-SXM4-80GB MIG 7g.80gb", "7g.80gb", "a100-80gb"),
    ("NVIDIA H100 80GB HBM3 MIG 1g.10gb+me", "1g.10gb+me", "h100-sxm"),
])
def test_a_mig_instance_maps_to_no_catalog_device(nvml_name: str, profile: str, board: str) -> None:
    """A MIG instance is a slice of its board (compute and memory): the board's entry would price it as the whole
    board, so it maps to nothing, with a one-line reason naming the part and backends.cuda.hardware."""
    assert catalog_name_for(nvml_name) is None
    assert catalog_name_for(nvml_name.split(" MIG ")[0]) == board
    assert mig_profile(nvml_name) == profile
    reason = mig_reason(nvml_name)
    assert reason is not None and "\n" not in reason
    assert f"{nvml_name!r} is a MIG instance ({profile}:" in reason and "backends.cuda.hardware" in reason


def test_a_whole_board_has_no_mig_reason() -> None:
    assert mig_profile("NVIDIA H200") is None and mig_reason("NVIDIA A100 80GB PCIe") is None
    assert "1 compute slice and 10 GB" in str(mig_reason("NVIDIA A100 80GB PCIe MIG 1g.10gb"))
    assert "3 compute slices and 20 GB" in str(mig_reason("NVIDIA A100-SXM4-40GB MIG 3g.20gb"))
