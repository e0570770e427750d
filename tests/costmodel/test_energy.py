"""E = n (P_idle T + (P_max - P_idle) T_busy), busy time clamped to the step (costmodel.energy)."""

from __future__ import annotations

import pytest

from llmsim.costmodel.energy import step_energy_j
from tests.costmodel.helpers import Device

DEV = Device(idle_power_w=100.0, max_power_w=400.0)


def test_energy_is_idle_power_for_the_step_plus_the_excess_while_busy() -> None:
    assert step_energy_j(DEV, 8, step_s=2.0, busy_s=0.5) == pytest.approx(8 * (100 * 2.0 + 300 * 0.5))


def test_busy_time_is_clamped_to_the_step_and_to_zero() -> None:
    assert step_energy_j(DEV, 2, step_s=1.0, busy_s=3.0) == pytest.approx(2 * (100 + 300 * 1.0))
    assert step_energy_j(DEV, 2, step_s=1.0, busy_s=-1.0) == pytest.approx(2 * 100)
    assert step_energy_j(DEV, 2, step_s=1.0, busy_s=1.0) == pytest.approx(2 * 400)
