"""Energy of a modeled step from the catalog's power figures.

Each device draws its idle power for the whole step and the difference to its maximum while it
computes: E = n * (P_idle * T + (P_max - P_idle) * T_busy). Waiting for communication or in the
pipeline bubble counts as idle; that underestimates a GPU spinning in a NCCL kernel, which draws more
than idle, and is the simplest model that still separates compute from waiting. A device with a power limit
below its maximum (`power_limit_w`) draws the limit while it computes, at the lower clock costmodel.power
gives it: P_max is then the limit (costmodel.power.busy_power_w), so no step reports more than the cap.
"""

from __future__ import annotations

from llmsim.costmodel.arrays import Num, maximum, minimum
from llmsim.costmodel.cluster import DeviceSpec
from llmsim.costmodel.power import busy_power_w


def step_energy_j(device: DeviceSpec, n_devices: Num, step_s: Num, busy_s: Num) -> Num:
    """Joules of one step on n devices, busy for busy_s of its step_s seconds (numbers or columns).

    E = n * (P_idle * step_s + (P_busy - P_idle) * busy_s), P_busy = costmodel.power.busy_power_w (the
    rated maximum, or the power limit where that is lower)."""
    busy = minimum(maximum(busy_s, 0.0), step_s)
    return n_devices * (device.idle_power_w * step_s + (busy_power_w(device) - device.idle_power_w) * busy)
