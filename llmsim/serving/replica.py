"""One model replica as a SimPy process: its scheduler forms an iteration, the cost model prices it, the clock
advances by that much, and the iteration's tokens come out at its end.

SimPy style (llmsim.sim, SimPy's carwash.py): the `Replica` owns its scheduler and KV cache; `run` is its one
generator. A replica with nothing to do sleeps on an event that the next arrival routed to it triggers. An
engine's own host overheads (scheduling, detokenisation, HTTP) are not modelled: iterations run back to back.

Output processing overlapped with the next iteration (the scheduler spec's `async_output`: vLLM V0's
asynchronous output processor, vLLM >= 0.6.0). vllm/engine/llm_engine.py `step` appends the sampler output of
iteration N to `ctx.output_queue`; the model runner calls the engine's `async_callback` (`_process_model_outputs`:
detokenise, stop checks, build the RequestOutputs) while iteration N + 1 runs on the GPU
(vllm/worker/model_runner.py `execute_model`: after the forward pass is launched, before the sampler's result is
read). Where the tokens go from there depends on the front end. The OpenAI server's engine (vllm/engine/
multiprocessing/engine.py `MQLLMEngine`, its default front end; AsyncLLMEngine alike) registers
`process_request_outputs_callback` whenever the processor is on, and `_process_model_outputs` calls it at once
("Immediately process request outputs here"), sending iteration N's tokens to the API server from inside that
callback: right after iteration N + 1 was launched, not when it ends. The offline `LLM.generate` reads what
`step` returns, iteration N's outputs at the end of N + 1 (the queue drained at once only when no request is left
unfinished), so its wall time ends after the last iteration. Here (no host time is priced, so "after N + 1 was
launched" is "when N ended"): a token comes out at the end of the iteration that sampled it, as without the flag,
and the run's duration runs to the end of the replica's last iteration. What the flag changes is the work: V0
finds that a request is finished only when it processes its last token, so the finished request is scheduled
once more and its output of that step thrown away (`_process_model_outputs`, `finished_before`): when the replica
has nothing else to run, that wasted decode step of the finished requests is run and priced (`_wasted_step`);
when the next iteration decodes other requests, the finished ones are priced as decode rows of it (a prompt-only
iteration of prefill-first holds no running request, so none is added there). Their blocks are freed when the last
token is sampled, not a step later: the scheduler sees every token at once. Not priced: the host time between N's
end and N + 1's launch (scheduling, input preparation; for an eager prompt pass, launching the whole forward) by
which a streamed token leaves later still.

The next iteration formed while the current one runs (the scheduler spec's `overlap_schedule`: SGLang's overlap
scheduler, the default from v0.4). python/sglang/srt/managers/scheduler.py `event_loop_overlap`: each pass of its
loop receives the requests that reached the scheduler (`recv_requests`), forms the next batch
(`get_next_batch_to_run`), launches it behind the batch the GPU is running, and only then waits for that batch's
result (`process_batch_result` of the last batch). So the batch that runs after iteration N was formed when N
started, and a request arriving while N runs can join the iteration after the next one at the earliest (without
overlap, `event_loop_normal`, it joins the next). With nothing running the loop reads and launches at once. Here:
arrivals while an iteration runs are held and handed to the scheduler just after the next iteration is formed;
an idle replica takes them at once. Its tokens are not delayed (the result of N is processed as soon as N ends,
while N + 1 runs). Not modelled: that SGLang, too, learns a request is finished only when it processes its last
token, so the finished request is one more (discarded) row of the iteration formed meanwhile.
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
        self.last_end_s = 0.0         # when its last iteration ended (a wasted step may end after the last token)
        self.timeline = Timeline()    # batch, tokens, KV use and queue at each iteration's start
        self._wakeup: simpy.Event | None = None
        self._held: list[Sequence] | None = None   # overlap_schedule: arrivals the next iteration was formed without

    def arrive(self, seq: Sequence) -> None:
        """A request routed here: queue it (or, with overlap_schedule while an iteration runs, hold it until
        the next iteration is formed) and wake the replica if it sleeps."""
        self.outstanding += 1
        if self._held is not None:
            self._held.append(seq)
        else:
            self.scheduler.add(seq)
        if self._wakeup is not None and not self._wakeup.triggered:
            self._wakeup.succeed()

    def run(self) -> Generator[simpy.Event, Any, None]:
        env, scheduler = self.env, self.scheduler
        wasteful = scheduler.async_output       # finished requests are decoded once more (module docstring)
        overlap = scheduler.overlap_schedule    # arrivals join one iteration later (module docstring)
        finished: list[Sequence] = []           # requests that sampled their last token in the last iteration
        while True:
            iteration = scheduler.schedule(env.now)
            if overlap:                         # formed, as SGLang's loop does, before the last arrivals are read
                held, self._held = self._held, []
                if held:
                    for seq in held:
                        scheduler.add(seq)
                    if iteration is None:       # nothing ran: the engine reads them and schedules at once
                        continue
            if iteration is None:
                if finished:                    # nothing else to run: V0's wasted step of the finished requests
                    yield from self._wasted_step([(seq, 1) for seq in finished])
                    finished = []
                    continue
                self._held = None               # asleep: an arrival is read at once
                self._wakeup = env.event()
                yield self._wakeup
                self._wakeup = None
                continue
            mix = iteration.mix or mix_of(iteration.work, scheduler.kv.window)
            if finished and mix.decode_seqs:    # V0 decodes its finished requests once more (module docstring)
                mix = mix + mix_of([(seq, 1) for seq in finished], scheduler.kv.window)
            finished = []
            self.timeline.add(env.now, len(iteration.work), round(mix.tokens), scheduler.kv.used, len(scheduler.waiting))
            seconds, compute = self.price(mix)
            yield env.timeout(seconds)
            self.iterations += 1
            self.busy_s += seconds
            self.compute_s += compute
            self.last_end_s = env.now
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
                        if wasteful:
                            finished.append(seq)

    def _wasted_step(self, finished: list[tuple[Sequence, int]]) -> Generator[simpy.Event, Any, None]:
        """The decode step V0 runs for requests whose last token it has not processed yet (their stop is found
        while this step runs): priced and timed like any iteration, its tokens thrown away."""
        mix = mix_of(finished, self.scheduler.kv.window)
        self.timeline.add(self.env.now, len(finished), round(mix.tokens), self.scheduler.kv.used,
                          len(self.scheduler.waiting))
        seconds, compute = self.price(mix)
        yield self.env.timeout(seconds)
        self.iterations += 1
        self.busy_s += seconds
        self.compute_s += compute
        self.last_end_s = self.env.now
