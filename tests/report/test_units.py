"""How numbers with units read (llmsim.report.units)."""

from __future__ import annotations

import pytest

from llmsim.report.units import fmt_watts


@pytest.mark.parametrize("watts, text", [(1.0, "1 W"), (850.0, "850 W"), (1_400.0, "1.4 kW"), (12_345.0, "12.3 kW"),
                                         (2.5e6, "2.5 MW")])
def test_a_power_reads_in_the_unit_that_shows_it(watts: float, text: str) -> None:
    """Trial 29: a plan's limits.max_power_w of 1 read 'power: 1.4 kW > 0.0 kW' (kW to one decimal)."""
    assert fmt_watts(watts) == text
