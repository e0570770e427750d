"""The AMD Instinct entries' sourced figures, each against the number its source states."""
from __future__ import annotations

import pytest

from llmsim.hardware import load_catalog

# (link, field, published value, what the source states, a phrase of the source string that names it)
# AMD ROCm blog 'Understanding RCCL Bandwidth and xGMI Performance on AMD Instinct MI300X' (2025-03-02):
# 'rated up to 64 GB/s for each point-to-point link ... usable bandwidth to approximately 48 GB/s per link'.
LINK_FIGURES = [
    ("xgmi-mi300", "efficiency", 48.0 / 64.0, "48 of 64 GB/s usable per xGMI link", "48 GB/s per link"),
]


@pytest.mark.parametrize("link, field, published, what, phrase", LINK_FIGURES)
def test_the_xgmi_link_takes_the_measured_usable_share_of_its_rated_bandwidth(link, field, published, what,
                                                                                phrase) -> None:
    entry = load_catalog().links[link]
    assert getattr(entry, field) == pytest.approx(published), what
    assert phrase in entry.source, f"{link}: the source string must cite '{phrase}'"


def test_the_xgmi_rated_bandwidth_is_seven_links_of_64_gb_s_per_direction() -> None:
    # AMD Instinct MI300X datasheet: 7 Infinity Fabric links of 128 GB/s peak bidirectional (64 per direction).
    assert load_catalog().links["xgmi-mi300"].bandwidth_bytes_per_s == pytest.approx(7 * 64e9)
