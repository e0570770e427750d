"""A board power limit below what a device draws at full clock: the clock it holds instead (DVFS).

A GPU enforces its power limit (`nvidia-smi -pl`) by lowering its SM clock, and with it the voltage, until
the board draws no more than the limit. Its compute throughput follows the clock; its memory bandwidth
follows the memory clock, which the limit leaves alone. The model:

    P(f) = P_idle + (P_full - P_idle) * (f / f_full) ** DVFS_POWER_EXPONENT

P_full is what the device draws under compute-bound load at the clock the catalog's FLOP rates assume
(`max_power_w`: the board's rated power, at which `Efficiency.sustained` was measured), P_idle the part that
does not scale with the clock (`idle_power_w`). A limit P_cap < P_full holds the clock at

    f_cap / f_full = ((P_cap - P_idle) / (P_full - P_idle)) ** (1 / DVFS_POWER_EXPONENT)

and every FLOP ceiling of the device is multiplied by that share (costmodel.compute.Rates.clock_share).
What is assumed (docs/costmodel.md, "Power limit"): all of the clock-dependent power is dynamic power of the
cores, the idle power is all of the rest (leakage, HBM and I/O at rest), the voltage stays on the linear part
of the voltage/frequency curve (no floor at V_min), and a compute-bound step keeps the device at its limit.

Pure functions, torch-free.
"""

from __future__ import annotations

import math
from typing import Protocol

# CMOS dynamic power is P = a C V^2 f; across the DVFS operating region the voltage needed rises about
# linearly with the clock, so dynamic power goes with f^3: "ramping voltage up linearly with clock
# frequency (f) results in dynamic power consumption with a cubic dependence on f" (D. J. Greaves,
# University of Cambridge Computer Laboratory, System-on-Chip Design course notes, "Dynamic Voltage and
# Frequency Scaling", www.cl.cam.ac.uk/teaching/1617/SysOnChip/materials.d/sp2-power/zhp32600611b.html).
DVFS_POWER_EXPONENT = 3.0


class PoweredDevice(Protocol):
    """The power figures of a catalog device (llmsim.hardware.DeviceSpec)."""

    idle_power_w: float
    max_power_w: float
    power_limit_w: float | None


class PowerLimitError(ValueError):
    """A power limit the device cannot run at (at or below its idle power)."""


def clock_share(power_limit_w: float | None, full_power_w: float, idle_power_w: float) -> float:
    """f_cap / f_full: the share of its full clock a compute-bound device holds under `power_limit_w`.

    Watts in, a dimensionless share out: 1.0 when there is no limit or the limit is at or above
    `full_power_w` (the limit does not bind); ((P_cap - P_idle) / (P_full - P_idle)) ** (1/3) below it
    (module docstring; the exponent is DVFS_POWER_EXPONENT, CMOS P_dyn = a C V^2 f with V ~ f). Raises
    PowerLimitError for a limit at or below the idle power (no clock runs there).
    """
    if power_limit_w is None or power_limit_w >= full_power_w:
        return 1.0
    if power_limit_w <= idle_power_w:
        raise PowerLimitError(f"power limit {power_limit_w:g} W is at or below the idle power {idle_power_w:g} W")
    dynamic = (power_limit_w - idle_power_w) / (full_power_w - idle_power_w)
    return math.pow(dynamic, 1.0 / DVFS_POWER_EXPONENT)


def device_clock_share(device: PoweredDevice) -> float:
    """`clock_share` of a catalog device at its own limit (`power_limit_w`, None = no limit below max)."""
    return clock_share(getattr(device, "power_limit_w", None), device.max_power_w, device.idle_power_w)


def busy_power_w(device: PoweredDevice) -> float:
    """Watts one device draws while it computes: its rated `max_power_w`, or its power limit when lower."""
    limit = getattr(device, "power_limit_w", None)
    return device.max_power_w if limit is None else min(device.max_power_w, limit)
