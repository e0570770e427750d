"""What exists in the simulated cluster: links, devices with their two streams, and their placement.

SimPy style (carwash.py, latency.py): each class owns its resources and says what it is; what happens
to them lives in processes.py. Times are seconds, sizes bytes, bandwidths bytes/s per direction.

Symmetry: one pipeline replica is simulated. Each simulated `Device` is one pipeline stage and stands
for its tensor- and context-parallel peers (they run in lockstep: every layer ends in a collective over
them) and for the same stage of every other data-parallel replica (identical unless a fault sits in
the simulated replica, which then is the slowest and sets the synchronous step). A device's ports
carry the traffic of its own collectives; its peers' traffic crosses their own ports at the same time.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field

import simpy

from llmsim.costmodel.collectives import Tier

# A transfer is done when fewer bytes than this fraction of its size remain: the fair-share link advances
# remaining bytes in floating point, so the last timer leaves a rounding residue (relative ~1e-16).
DONE_FRACTION = 1e-9
DONE_ABS_BYTES = 1e-6


class CountingEnvironment(simpy.Environment):
    """A SimPy environment that counts the events it processes (the benchmark's events/s)."""

    def __init__(self, initial_time: float = 0) -> None:
        super().__init__(initial_time)
        self.events_processed = 0

    def step(self) -> None:
        self.events_processed += 1
        super().step()


@dataclass
class _Flow:
    remaining: float
    size: float
    done: simpy.Event


class Link:
    """A device's port onto a fabric (NVLink/NVSwitch inside a node, a NIC between nodes).

    Transfers crossing a link share its bandwidth equally while they overlap (processor sharing, what
    concurrent NCCL channels and network flows on one port approximately get): two transfers started
    together each take twice as long as one alone. `send` serializes the bytes; the propagation latency
    is a separate delay after the last byte (latency.py's delay process), so it does not hold the link.
    Each arrival or departure reschedules one timer: events per transfer do not grow with its size.
    """

    def __init__(self, env: simpy.Environment, name: str, bandwidth: float, latency: float) -> None:
        if bandwidth <= 0:
            raise ValueError(f"link {name}: bandwidth must be > 0, got {bandwidth}")
        self.env = env
        self.name = name
        self.bandwidth = bandwidth
        self.latency = latency
        self.flows: list[_Flow] = []
        self.bytes_sent = 0.0
        self.busy_s = 0.0          # time with at least one transfer on the link
        self._last = env.now
        self._version = 0

    def _advance(self) -> None:
        """Drain the bytes the active flows sent since the last change, at an equal share each."""
        now = self.env.now
        dt = now - self._last
        if dt > 0 and self.flows:
            share = self.bandwidth / len(self.flows) * dt
            for flow in self.flows:
                flow.remaining -= share
            self.busy_s += dt
        self._last = now

    def _reschedule(self) -> None:
        self._version += 1
        if not self.flows:
            return
        rate = self.bandwidth / len(self.flows)
        delay = max(min(f.remaining for f in self.flows), 0.0) / rate
        version = self._version
        self.env.timeout(delay).callbacks.append(lambda _ev: self._on_timer(version))

    def _on_timer(self, version: int) -> None:
        if version != self._version:  # a later arrival or departure replaced this timer
            return
        self._advance()
        # What the link moves in one step of the clock: late in a long simulation a residue smaller than this
        # cannot drain (now + delay rounds back to now), and its timer would fire forever. IEEE 754 double
        # spacing at `now` (math.ulp), twice for the rounding of now + delay.
        tick = 2 * math.ulp(self.env.now) * self.bandwidth / max(len(self.flows), 1)
        done = [f for f in self.flows if f.remaining <= max(f.size * DONE_FRACTION + DONE_ABS_BYTES, tick)]
        for flow in done:
            self.flows.remove(flow)
            flow.done.succeed()
        self._reschedule()

    def send(self, nbytes: float) -> simpy.Event:
        """An event that fires when the last of `nbytes` has left this port."""
        event = self.env.event()
        if nbytes <= 0:
            event.succeed()
            return event
        self._advance()
        self.flows.append(_Flow(remaining=nbytes, size=nbytes, done=event))
        self.bytes_sent += nbytes
        self._reschedule()
        return event

    def transfer(self, nbytes: float, latency: float):  # noqa: ANN201 (a SimPy process generator)
        """Serialize `nbytes` on this port, then wait `latency` in flight (not holding the port)."""
        if nbytes > 0:
            yield self.send(nbytes)
        if latency > 0:
            yield self.env.timeout(latency)


@dataclass
class Ledger:
    """Where one device's step went, in seconds; the remainder of the step is waiting (bubble)."""

    compute_s: float = 0.0   # kernels on the compute stream (layers, recompute, accumulation)
    comm_s: float = 0.0      # waiting for its own communication: exposed, not hidden behind compute
    other_s: float = 0.0     # optimizer step
    end_s: float = 0.0       # when this device finished the step

    @property
    def busy_s(self) -> float:
        """Time drawing compute power (the energy model's busy state)."""
        return self.compute_s + self.other_s


@dataclass(frozen=True)
class Span:
    """One interval of the simulated timeline, for the trace and the Gantt chart."""

    stage: int
    lane: str        # "compute" | "comm" | "p2p"
    name: str
    category: str    # forward | backward | optimizer | dp | zero | p2p | sync | ...
    start: float
    end: float


class Device:
    """One pipeline stage of the simulated replica: a compute stream and a communication stream.

    The compute stream runs the layers and the collectives Megatron puts on it (tensor parallel, which
    sit on the critical path); the communication stream runs gradient reductions and ZeRO gathers in
    issue order, overlapping with compute. `slowdown` > 1 makes every kernel slower (a straggler).
    """

    def __init__(self, env: simpy.Environment, stage: int, node: int, intra: Link, inter: Link,
                 slowdown: float = 1.0, dims: tuple[Link, ...] = ()) -> None:
        self.env = env
        self.stage = stage
        self.node = node
        self.compute = simpy.Resource(env, capacity=1)
        self.comm = simpy.Resource(env, capacity=1)
        self.ports: dict[Tier, Link] = {"intra": intra, "inter": inter}
        # On a TPU torus, the chip's links along each dimension (x, y, z): a ring collective along one
        # dimension crosses only that dimension's links (Phase.link), so collectives of axes laid on different
        # dimensions run side by side and those on one dimension share it.
        self.dims = dims
        self.slowdown = slowdown
        self.ledger = Ledger()

    def port(self, tier: Tier, link: int | None = None) -> Link:
        """The port a phase crosses: its torus dimension's links where it names one, else its tier's port."""
        return self.dims[link] if link is not None and self.dims else self.ports[tier]

    @property
    def links(self) -> tuple[Link, ...]:
        return (*self.ports.values(), *self.dims)


@dataclass(frozen=True)
class Placement:
    """Where the simulated replica's stages sit: Megatron rank order, tp innermost, then cp, pp, dp.

    Stage s of a replica is rank s * tp * cp (its tensor-parallel peers follow it), so it lives on node
    rank // devices_per_node, and two neighbouring stages talk over NVLink only if they share a node.
    """

    tp: int
    cp: int
    pp: int
    devices_per_node: int
    torus_dims: int = 0   # a TPU slice's dimensions: each gets its own links (Device.dims); 0 = not a torus

    def node_of(self, stage: int) -> int:
        return stage * self.tp * self.cp // self.devices_per_node

    def stage_of_rank(self, rank: int) -> int:
        """The pipeline stage a global rank belongs to (for faults named by rank)."""
        return rank // (self.tp * self.cp) % self.pp

    def hop_tier(self, src: int, dst: int) -> Tier:
        return "intra" if self.node_of(src) == self.node_of(dst) else "inter"


@dataclass(frozen=True)
class Faults:
    """Faults and variance of one simulated step (all off by default).

    straggler_stage / straggler_slowdown: the stage holding a slow device; its whole tensor-parallel group
    runs at that pace (they synchronize every layer). degraded_stage / degraded_tier /
    degraded_bandwidth_factor: a port of that stage's device at a fraction of its bandwidth; a ring
    collective moves at its slowest link, so every collective of that stage over that tier slows.
    jitter_std: each kernel's duration is multiplied by 1 + N(0, jitter_std), the maximum over the
    tensor-parallel peers that wait for each other, drawn from `seed`.
    """

    straggler_stage: int | None = None
    straggler_slowdown: float = 1.0
    degraded_stage: int | None = None
    degraded_tier: Tier = "inter"
    degraded_bandwidth_factor: float = 1.0
    jitter_std: float = 0.0
    seed: int = 0


@dataclass
class Replica:
    """The simulated pipeline replica: its devices and their ports."""

    env: CountingEnvironment
    devices: list[Device]
    placement: Placement
    spans: list[Span] | None = field(default=None)

    @classmethod
    def build(cls, env: CountingEnvironment, placement: Placement, intra_bw: float, intra_latency: float,
              inter_bw: float, inter_latency: float, faults: Faults, record: bool = False) -> "Replica":
        devices = []
        for s in range(placement.pp):
            intra_f = inter_f = 1.0
            if faults.degraded_stage == s:
                if faults.degraded_tier == "intra":
                    intra_f = faults.degraded_bandwidth_factor
                else:
                    inter_f = faults.degraded_bandwidth_factor
            dims = tuple(Link(env, f"stage{s}.ici-{'xyz'[d]}", intra_bw * intra_f, intra_latency)
                         for d in range(placement.torus_dims))
            devices.append(Device(
                env, stage=s, node=placement.node_of(s),
                intra=Link(env, f"stage{s}.intra", intra_bw * intra_f, intra_latency),
                inter=Link(env, f"stage{s}.inter", inter_bw * inter_f, inter_latency),
                slowdown=faults.straggler_slowdown if faults.straggler_stage == s else 1.0, dims=dims))
        return cls(env=env, devices=devices, placement=placement, spans=[] if record else None)

    def record(self, stage: int, lane: str, name: str, category: str, start: float) -> None:
        if self.spans is not None:
            self.spans.append(Span(stage, lane, name, category, start, self.env.now))
