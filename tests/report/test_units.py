"""How numbers with units read (llmsim.report.units)."""

from __future__ import annotations

import pytest

from llmsim.report.units import fmt_watts


@pytest.mark.parametrize("watts, text", [(1.0, "1 W"), (850.0, "850 W"), (1_400.0, "1.4 kW"), (12_345.0, "12.3 kW"),
                                         (2.5e6, "2.5 MW")])
def test_a_power_reads_in_the_unit_that_shows_it(watts: float, text: str) -> None:
    """Trial 29: a plan's limits.max_power_w of 1 read 'power: 1.4 kW > 0.0 kW' (kW to one decimal)."""
    assert fmt_watts(watts) == text


@pytest.mark.parametrize("pct, text", [(12.34, "+12.3%"), (-4.0, "\u22124.0%"), (0.0, "0.0%"), (899.9, "+899.9%"),
                                       (900.0, "\u00d710.0"), (15691.8, "\u00d7158"), (-99.9, "\u221299.9%"),
                                       (-0.04, "0.0%"), (0.049, "0.0%"), (-0.05, "\u22120.1%")])
def test_a_change_reads_as_a_percent_or_as_a_ratio_from_tenfold(pct: float, text: str) -> None:
    """Trial 41: '+15691.8%' read worse than '×158'. Trial 42: '−0.0%' for a change that rounds to nothing."""
    from llmsim.report.units import fmt_change

    assert fmt_change(pct) == text
