"""One model replica as a SimPy process: its scheduler forms an iteration, the cost model prices it, the clock
advances by that much, and the iteration's tokens come out at its end.

SimPy style (llmsim.sim, SimPy's carwash.py): the `Replica` owns its scheduler and KV cache; `run` is its one
generator. A replica with nothing to do sleeps on an event that the next arrival routed to it triggers. An
engine's own host overheads (scheduling, detokenisation, HTTP) are not modelled: iterations run back to back.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Generator
from typing import Any

import simpy

from llmsim.costmodel.iteration import Mix
from llmsim.serving.kvcache import Sequence
from llmsim.serving.schedulers import Scheduler, mix_of

# (iteration seconds, of which the devices compute) for one mix on this replica.
Pricer = Callable[[Mix], tuple[float, float]]


class Timeline:
    """One replica's state at the start of every iteration, in compact arrays (~40 bytes an iteration):
    when it started (simulated seconds, t = 0 at the first arrival), the sequences it runs (batch), the tokens
    it is priced for (static batching's padding included), the KV blocks in use while it runs and the requests left waiting. A 90,000-iteration run holds
    ~3.6 MB; `llmsim.serving.metrics.timeline_table` thins it when it is written."""

    __slots__ = ("time_s", "batch", "tokens", "kv_blocks_used", "waiting")

    def __init__(self) -> None:
        self.time_s = array("d")
        self.batch = array("l")
        self.tokens = array("l")
        self.kv_blocks_used = array("l")
        self.waiting = array("l")

    def __len__(self) -> int:
        return len(self.time_s)

    def add(self, now: float, batch: int, tokens: int, kv_used: int, waiting: int) -> None:
        self.time_s.append(now)
        self.batch.append(batch)
        self.tokens.append(tokens)
        self.kv_blocks_used.append(kv_used)
        self.waiting.append(waiting)


class Replica:
    """tp x pp devices serving one copy of the model behind the router."""

    def __init__(self, env: simpy.Environment, index: int, scheduler: Scheduler, price: Pricer,
                 on_finish: Callable[[Sequence], None]) -> None:
        self.env = env
        self.index = index
        self.scheduler = scheduler
        self.price = price
        self.on_finish = on_finish
        self.outstanding = 0          # routed here and not finished (the router's load figure)
        self.iterations = 0
        self.busy_s = 0.0             # time in iterations
        self.compute_s = 0.0          # of which the devices compute (energy)
        self.max_batch = 0            # most sequences in one iteration
        self.timeline = Timeline()    # batch, tokens, KV use and queue at each iteration's start
        self._wakeup: simpy.Event | None = None

    def arrive(self, seq: Sequence) -> None:
        """A request routed here: queue it and wake the replica if it sleeps."""
        self.outstanding += 1
        self.scheduler.add(seq)
        if self._wakeup is not None and not self._wakeup.triggered:
            self._wakeup.succeed()

    def run(self) -> Generator[simpy.Event, Any, None]:
        env, scheduler = self.env, self.scheduler
        while True:
            iteration = scheduler.schedule(env.now)
            if iteration is None:
                self._wakeup = env.event()
                yield self._wakeup
                self._wakeup = None
                continue
            mix = iteration.mix or mix_of(iteration.work)
            self.timeline.add(env.now, len(iteration.work), round(mix.tokens), scheduler.kv.used, len(scheduler.waiting))
            seconds, compute = self.price(mix)
            yield env.timeout(seconds)
            self.iterations += 1
            self.busy_s += seconds
            self.compute_s += compute
            if len(iteration.work) > self.max_batch:
                self.max_batch = len(iteration.work)
            now = env.now
            for seq, n in iteration.work:
                seq.computed += n
                request = seq.request
                if seq.computed >= request.input_tokens + seq.generated:   # every known token computed: sample
                    seq.generated += 1
                    seq.token_times.append(now)
                    if seq.generated >= request.output_tokens:
                        seq.finished = True
                        self.outstanding -= 1
                        scheduler.finish(seq)
                        self.on_finish(seq)
