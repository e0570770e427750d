"""The warm-up and timed loop, on a device whose clock advances one second per stamp."""

from __future__ import annotations

from typing import Any

import pytest

from llmsim.energy import EnergyMeter
from llmsim.measure.device import MeasuredDevice
from llmsim.measure.loop import time_steps
from llmsim.measure.memory import PeakRss


class TickDevice(MeasuredDevice):
    """Each stamp is one second after the previous; records the order of waits and stamps."""

    kind = "cpu"
    clock = "ticks"

    def __init__(self) -> None:
        self.torch_device = "cpu"
        self.t = 0.0
        self.log: list[str] = []

    def wait(self) -> None:
        self.log.append("wait")

    def now(self) -> float:
        self.t += 1.0
        self.log.append("now")
        return self.t

    def memory(self) -> PeakRss:
        return PeakRss()


class Meter(EnergyMeter):
    name = "fake"
    device_kind = "cpu"

    def __init__(self, joules: float | None = 12.0) -> None:
        self.joules = joules
        self.events: list[str] = []

    @classmethod
    def available(cls) -> str | None:
        return None

    def start(self) -> None:
        self.events.append("start")

    def stop(self) -> float:
        self.events.append("stop")
        if self.joules is None:
            raise RuntimeError("no reading")
        return self.joules


def decode_step(mark: Any) -> str:
    mark("first_token")  # one tick after the start
    return "tokens"


def train_step(mark: Any) -> str:
    mark("backward_done")
    return "loss"


def test_step_times_and_marks_come_from_the_device_clock() -> None:
    device = TickDevice()
    timings = time_steps(decode_step, device, steps=3, warmup=2)
    # start, first_token, end: 2 ticks per step, the first token 1 tick after the start
    assert timings.step_times_s == [2.0, 2.0, 2.0]
    assert timings.first_token_s == [1.0, 1.0, 1.0] and timings.optimizer_s == []
    summary = timings.summary(decode_tokens=5)
    assert (summary.ttft_s, summary.tpot_s) == (1.0, pytest.approx(1.0 / 4))

    timings = time_steps(train_step, TickDevice(), steps=2, warmup=0)
    assert timings.optimizer_s == [1.0, 1.0] and timings.first_token_s == []
    assert timings.summary().other_time_s == 1.0


def test_warmup_is_untimed_and_waited_for_and_each_timed_step_starts_after_a_wait() -> None:
    device = TickDevice()
    calls: list[str] = []
    time_steps(lambda mark: calls.append("step"), device, steps=2, warmup=3,
               before_step=lambda: calls.append("barrier"), after_warmup=lambda: calls.append("warm"))
    assert calls == ["step"] * 3 + ["warm"] + ["barrier", "step"] * 2
    warmup, timed = device.log[:3], device.log[3:]
    assert warmup == ["wait"] * 3  # steps that mark nothing take no stamp in the warm-up
    assert timed == ["wait"] + ["wait", "now", "now"] * 2 + ["wait"]


def test_a_warm_up_step_stamps_its_marks_as_a_timed_step_does() -> None:
    """On XLA a stamp cuts the traced graph: a warm-up without the marks' stamps compiles other graphs than
    the timed steps run (a decode step then recompiled inside the clock: graphs_compiled_timed 2)."""
    device = TickDevice()
    time_steps(decode_step, device, steps=1, warmup=1)
    warmup = device.log[:device.log.index("wait") + 1]
    assert warmup == ["now", "wait"]  # the first_token mark stamped, then the wait after the step
    assert device.log[2:] == ["wait", "wait", "now", "now", "now", "wait"]


def test_outputs_kept_as_asked() -> None:
    step = iter(range(10))
    assert time_steps(lambda mark: next(step), TickDevice(), steps=2, warmup=1).outputs == []
    step = iter(range(10))
    assert time_steps(lambda mark: next(step), TickDevice(), steps=2, warmup=1, keep="timed").outputs == [1, 2]
    step = iter(range(10))
    assert time_steps(lambda mark: next(step), TickDevice(), steps=2, warmup=1, keep="all").outputs == [0, 1, 2]


def test_the_meter_brackets_the_timed_steps() -> None:
    meter = Meter(12.0)
    timings = time_steps(decode_step, TickDevice(), steps=3, warmup=1, meter=meter)
    assert meter.events == ["start", "stop"] and timings.energy_j == 12.0
    energy = timings.metered_energy(meter)
    assert energy is not None and (energy.j_per_step, energy.source) == (4.0, "fake")
    assert timings.metered_energy(None) is None


def test_a_meter_without_a_reading_leaves_the_energy_empty() -> None:
    meter = Meter(None)
    timings = time_steps(decode_step, TickDevice(), steps=2, warmup=0, meter=meter)
    assert timings.energy_j is None and timings.metered_energy(meter) is None


def test_an_energy_window_runs_more_steps_under_the_meter_and_divides_by_them() -> None:
    ticks = iter(range(1000))
    clock = lambda: next(ticks) * 0.01  # noqa: E731 - a host clock 10 ms further on at each reading

    meter = Meter(12.0)
    timings = time_steps(lambda mark: 1, TickDevice(), steps=2, warmup=0, meter=meter, energy_window_s=0.05,
                         keep="timed", clock=clock)
    # readings: warm-up start/end (ticks 0, 1), the meter's start (2), then one per check of the window: 3, 4, 5
    # and 6 are under 0.05 s after it and run a step each, 7 is not; tick 8 ends the window: 0.06 s metered.
    assert len(timings.step_times_s) == 2 and timings.outputs == [1, 1]  # the window's steps are not timed
    assert timings.energy_steps == 2 + 4 and timings.energy_metered_s == pytest.approx(0.06)
    energy = timings.metered_energy(meter)
    assert energy is not None and energy.j_per_step == pytest.approx(12.0 / 6)
    assert meter.events == ["start", "stop"]


def test_without_an_energy_window_only_the_timed_steps_are_metered() -> None:
    timings = time_steps(decode_step, TickDevice(), steps=3, warmup=0, meter=Meter(12.0))
    assert timings.energy_steps == 3
    assert time_steps(decode_step, TickDevice(), steps=3, warmup=0).energy_steps == 0
