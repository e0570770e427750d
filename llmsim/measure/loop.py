"""The warm-up and timed loop every measured backend and every distributed rank runs.

`warmup` untimed steps first (allocator, caches, autotuning, XLA compilation), with their marks stamped
and dropped, each followed by a wait for the device. Then `steps` timed steps: the device is waited for before each (so work queued by the
previous step is not timed in this one), a stamp is taken, the step runs with a `mark` callback that
stamps its labels (`first_token` after a decode step's prefill, `backward_done` before a training
step's optimizer update), and a stamp ends it. Stamps are turned into seconds only after a final
wait (CUDA events can be read only then). An energy meter, if given, brackets the timed steps, and
where `energy_window_s` asks for a longer window than they took, further steps run under the meter
(untimed, waited for like the timed ones) until it is reached: a counter that updates every ~100 ms (NVML's
energy counter, ML.ENERGY's "Thermally Stable Profiling" post) cannot resolve a few milliseconds of steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from llmsim import interrupt
from llmsim.energy import EnergyMeter
from llmsim.measure.summary import Energy, StepSummary, summarize

if TYPE_CHECKING:  # annotations only: importing this module (a plugin's) does not import torch
    from llmsim.measure.device import MeasuredDevice
    from llmsim.workload.step import Mark

Keep = Literal["none", "timed", "all"]


@dataclass
class Timings:
    """What the loop measured, in seconds, one entry per timed step (marks only where a step made them)."""

    step_times_s: list[float]
    first_token_s: list[float] = field(default_factory=list)  # step start -> first_token
    optimizer_s: list[float] = field(default_factory=list)    # backward_done -> step end
    warmup_s: float = 0.0                                     # the warm-up steps, waited for
    energy_j: float | None = None                             # the meter over the metered steps
    energy_steps: int = 0                                     # steps under the meter (timed + window)
    energy_metered_s: float = 0.0                             # wall seconds the meter ran
    outputs: list[Any] = field(default_factory=list)          # what the steps returned (`keep`)

    def summary(self, decode_tokens: int = 1) -> StepSummary:
        return summarize(self.step_times_s, self.first_token_s, self.optimizer_s, decode_tokens)

    def metered_energy(self, meter: EnergyMeter | None) -> Energy | None:
        """The meter's energy per metered step, or None without a meter or a reading."""
        if meter is None or self.energy_j is None:
            return None
        return Energy(self.energy_j / (self.energy_steps or len(self.step_times_s)), meter.name)


def time_steps(run: Callable[[Mark], Any], device: MeasuredDevice, *, steps: int, warmup: int,
               before_step: Callable[[], None] | None = None, after_warmup: Callable[[], None] | None = None,
               meter: EnergyMeter | None = None, energy_window_s: float = 0.0, keep: Keep = "none",
               clock: Callable[[], float] = time.perf_counter) -> Timings:
    """Warm up, then time `steps` calls of `run(mark)` on `device`'s clock.

    `before_step`: called before each timed step, outside the clock (a distributed rank's barrier).
    `after_warmup`: called once between warm-up and timed steps (the xla backend counts compiled graphs).
    `keep`: which steps' return values to keep in `Timings.outputs` (losses read after the clock).
    `energy_window_s`: the least wall time the meter runs; after the timed steps, more steps run under it
    (their outputs and times dropped) until that much has passed since the meter started.
    A meter whose `stop` raises RuntimeError (it got no reading) leaves `energy_j` None.
    `clock`: the host clock of the warm-up's duration and the energy window (tests pass a fake one).
    """
    outputs: list[Any] = []
    started = clock()
    for _ in range(warmup):
        interrupt.check()  # a Ctrl-C whose KeyboardInterrupt a library lost stops here (llmsim.interrupt)
        # Marks stamp the device's clock during warm-up too (stamps dropped): a warm-up step must run exactly
        # what a timed one runs, and on XLA a stamp cuts the graph (warming up without it compiles other graphs).
        out = run(lambda _label: device.now())
        if keep == "all":
            outputs.append(out)
        device.wait()
    warmup_s = clock() - started
    if after_warmup is not None:
        after_warmup()

    stamps: list[tuple[Any, Any, dict[str, Any]]] = []
    device.wait()
    metered_from = clock()
    if meter is not None:
        meter.start()
    for _ in range(steps):
        interrupt.check()
        if before_step is not None:
            before_step()
        marks: dict[str, Any] = {}
        device.wait()
        start = device.now()
        out = run(lambda label, into=marks: into.__setitem__(label, device.now()))
        end = device.now()
        stamps.append((start, end, marks))
        if keep != "none":
            outputs.append(out)
    device.wait()
    energy_j, energy_steps, metered_s = None, 0, 0.0
    if meter is not None:
        energy_steps = steps
        while clock() - metered_from < energy_window_s:
            interrupt.check()
            if before_step is not None:
                before_step()
            device.wait()
            run(lambda _label: device.now())  # as a warm-up step: the same work, stamps dropped
            energy_steps += 1
        device.wait()
        metered_s = clock() - metered_from
        try:
            energy_j = meter.stop()
        except RuntimeError:  # no reading for this span (e.g. NVML with neither counter nor power)
            energy_j = None

    return Timings(
        step_times_s=[device.seconds(start, end) for start, end, _ in stamps],
        first_token_s=[device.seconds(start, m["first_token"]) for start, _, m in stamps if "first_token" in m],
        optimizer_s=[device.seconds(m["backward_done"], end) for _, end, m in stamps if "backward_done" in m],
        warmup_s=warmup_s, energy_j=energy_j, energy_steps=energy_steps,
        energy_metered_s=metered_s, outputs=outputs)
