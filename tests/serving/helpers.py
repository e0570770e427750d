"""Request lists, prices and runs shared by the serving tests."""

from __future__ import annotations

from typing import Any

from llmsim.costmodel.iteration import Mix
from llmsim.serving.replica import Pricer
from llmsim.serving.requests import ClosedLoop, Request
from llmsim.serving.schedulers import BUILTIN
from llmsim.serving.simulate import ServingOutcome, simulate_serving
from llmsim.serving.spec import SchedulerSpec, Slo

# A price that tests can add up by hand: a fixed cost per pass, per token computed, per key attended.
BASE_S, PER_TOKEN_S, PER_KEY_S = 0.010, 1e-5, 1e-8


def linear_seconds(mix: Mix) -> float:
    return BASE_S + PER_TOKEN_S * mix.tokens + PER_KEY_S * (mix.decode_keys + mix.prefill_pairs
                                                            + 0.5 * mix.prefill_square)


def linear_price(replica: int) -> Pricer:
    return lambda mix: (linear_seconds(mix), linear_seconds(mix))


def fixed_requests(n: int, gap: float, input_tokens: int, output_tokens: int) -> list[Request]:
    return [Request(i, i * gap, input_tokens, output_tokens) for i in range(n)]


def run(requests: list[Request], kind: str = "continuous", *, blocks: int = 100_000, block_tokens: int = 16,
        replicas: int = 1, router: str = "round-robin", context: int = 100_000, price: Any = linear_price,
        request_overhead_s: float = 0.0, stop_on_miss: Slo | None = None, closed_loop: ClosedLoop | None = None,
        **scheduler: Any) -> ServingOutcome:
    spec = SchedulerSpec(kind=kind, **scheduler)
    return simulate_serving(requests, replicas=replicas, make_scheduler=lambda kv: BUILTIN[kind](spec, kv),
                            kv_blocks=blocks, block_tokens=block_tokens, price=price, router=router,
                            context_tokens=context, request_overhead_s=request_overhead_s,
                            stop_on_miss=stop_on_miss, closed_loop=closed_loop)
