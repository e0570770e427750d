"""Which replica a request goes to (data parallelism behind a load balancer).

* round-robin: request i to replica i mod R, whatever their load (a plain load balancer in front of
  independent servers).
* least-outstanding: the replica with the fewest requests routed to it and not yet finished (waiting or
  running), the lowest index on a tie: the "least outstanding requests" routing of load balancers (AWS
  ALB's `least_outstanding_requests`). vLLM's own data-parallel client weighs the two kinds,
  4 x waiting + running (vllm/v1/engine/core_client.py, `DPLBAsyncMPClient.get_core_engine_for_request`).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Protocol


class Routable(Protocol):
    index: int
    outstanding: int


class Router:
    """Picks a replica for each request; `policy` is serving.router."""

    POLICIES = ("round-robin", "least-outstanding")

    def __init__(self, policy: str, replicas: Seq[Routable]) -> None:
        if policy not in self.POLICIES:
            raise ValueError(f"router {policy!r}: allowed {', '.join(self.POLICIES)}")
        self.policy = policy
        self.replicas = list(replicas)
        self._next = 0

    def pick(self) -> Routable:
        if self.policy == "round-robin":
            replica = self.replicas[self._next % len(self.replicas)]
            self._next += 1
            return replica
        return min(self.replicas, key=lambda r: (r.outstanding, r.index))
