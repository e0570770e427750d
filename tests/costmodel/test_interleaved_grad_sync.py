"""overlap_grad_reduce with the interleaved schedule: each model chunk's gradient reduction is issued when the
chunk's last micro-batch's backward is done (delayed by the pipeline rank, Megatron-Core's aligned grad sync)
and hides under the backward passes of the chunks still to finish (step.interleaved_reduce_exposed; the
cluster simulation plays the same launches, sim.processes.ChunkGradSync)."""

from __future__ import annotations

import numpy as np
import pytest

from llmsim.costmodel.cluster import Group
from llmsim.costmodel.collectives import Channel, Fabric
from llmsim.costmodel.step import interleaved_reduce_exposed, price
from llmsim.costmodel.work import Comm, StageWork, StepWork
from llmsim.sim import Placement, simulate

# No latency: a collective's time is its bytes over the bandwidth, so hand computations are exact.
FABRIC = Fabric(intra=Channel(bandwidth=1e11, latency=0.0), inter=Channel(bandwidth=1e10, latency=0.0))
DP = Group(4, 1, 4)              # 4 data-parallel ranks, one per node: the reduction crosses nodes
BACKWARD_LAYER_S = 1.0           # one layer's backward, one micro-batch
GRAD_BYTES_LAYER = 2e10          # per layer


def _work(p: int, v: int, m: int, overlap: bool = True) -> StepWork:
    st = StageWork(layers=1, fwd_layer_s=0.5, bwd_layer_s=BACKWARD_LAYER_S, grad_bytes_layer=GRAD_BYTES_LAYER)
    return StepWork(stages=(st,) * p, microbatches=m, schedule="interleaved", virtual_stages=v, dp_group=DP,
                    dp_op="reduce-scatter", zero=1, overlap_grad_reduce=overlap)


def _chunk_s() -> float:
    return Comm("reduce-scatter", GRAD_BYTES_LAYER, DP).time(FABRIC)


def test_the_closed_form_by_hand() -> None:
    """pp 2, v 3, chunk backward b = 1 s, every chunk's reduction R. Rank r issues the chunk with k chunks still to
    finish after it (k*pp - r) b before the end; the queue's finishing time is the max over k of that issue plus
    the reductions queued from it: R; 2R - (2 - r); 3R - (4 - r)."""
    for r, R, exposed in ((0, 1.5, 1.5), (1, 1.5, 2.0), (0, 0.5, 0.5), (1, 0.5, 0.5), (1, 3.0, 6.0)):
        assert interleaved_reduce_exposed(3, 2, r, R, R, R, 1.0) == pytest.approx(exposed, rel=1e-12)
    # the chunk final first carries the head's gradients, the one final last the embedding's
    assert interleaved_reduce_exposed(3, 2, 0, 4.0, 1.0, 2.0, 1.0) == pytest.approx(max(2.0, 3.0 - 2, 7.0 - 4))
    # columns (the planner's table): one value per candidate, each with its own v
    got = interleaved_reduce_exposed(np.array([3, 2]), 2, np.array([1, 1]), 1.5, 1.5, 1.5, 1.0)
    assert got.tolist() == pytest.approx([2.0, max(1.5, 3.0 - 1.0)])


def test_each_stage_exposes_what_its_remaining_backward_cannot_hide() -> None:
    """The roofline prices every pipeline rank with its own launch delay; the critical (here: the last) rank's
    data-parallel time is the hand value, not the whole reduction less one micro-batch's backward."""
    p, v, m = 2, 3, 4
    R = _chunk_s()
    assert R == pytest.approx(1.5, rel=1e-5)   # a ring reduce-scatter over 4 nodes: 3/4 of 2e10 B at 10 GB/s
    t = price(_work(p, v, m), FABRIC)
    # rank 1: max(R, 2R - (2 - 1) b, 3R - (4 - 1) b) with b = 1 s; rank 0 exposes less (R), the old model 4.5 - 3
    assert t.detail["data_parallel"] == pytest.approx(max(R, 2 * R - 1.0, 3 * R - 3.0), rel=1e-12)
    assert t.critical_stage == 1
    # the model before: the whole stage's reduction behind one micro-batch's backward of all v chunks
    whole = Comm("reduce-scatter", 3 * GRAD_BYTES_LAYER, DP).time(FABRIC)
    assert t.detail["data_parallel"] != pytest.approx(max(0.0, whole - 3.0))
    # without overlap, one reduction of everything after the last backward
    off = price(_work(p, v, m, overlap=False), FABRIC)
    assert off.detail["data_parallel"] == pytest.approx(whole, rel=1e-12)


def test_a_large_reduction_hides_chunk_by_chunk_under_the_cool_down() -> None:
    """GPT-3 175B in MLPerf's shape (pp 6, v 8, m = pp): a chunk's reduction (R) shorter than pp chunk backwards
    (pp b) hides but for the last chunk's and the rank's launch delay: R + max(0, r b + R - pp b)."""
    R, b, pp, v = 0.039, 0.0078, 6, 8
    for r in range(pp):
        assert interleaved_reduce_exposed(v, pp, r, R, R, R, b) == pytest.approx(R + max(0.0, r * b + R - pp * b))


def test_the_simulation_launches_one_reduction_per_chunk_at_megatrons_points() -> None:
    """The cluster simulation issues each chunk's reduction after the backward `rank` passes after the chunk's
    last one (the rest when the backward is over); its idle waits and forwards also pass under the
    communication, so it exposes at most the roofline's closed form, and less than one reduction at the end."""
    p, v, m = 2, 3, 4
    work = _work(p, v, m)
    out = simulate(work, Placement(tp=1, cp=1, pp=p, devices_per_node=1), FABRIC, record=True)
    for stage in range(p):
        reductions = [s for s in out.spans if s.stage == stage and s.category == "dp"]
        assert len(reductions) == v
        backwards = [s for s in out.spans if s.stage == stage and s.category == "backward"]
        last = {}                       # chunk -> index of its last backward on this stage
        for i, s in enumerate(backwards):
            last[int(s.name.split(".")[1])] = i
        issue_after = sorted(min(i + stage, len(backwards) - 1) for i in last.values())
        for span, after in zip(sorted(reductions, key=lambda s: s.start), issue_after):
            assert span.start >= backwards[after].end - 1e-12
    roofline = price(work, FABRIC)
    exposed = [led.comm_s for led in out.ledgers]
    assert max(exposed) <= roofline.detail["data_parallel"] + 1e-9
    assert max(exposed) < Comm("reduce-scatter", 3 * GRAD_BYTES_LAYER, DP).time(FABRIC)


# -- overlap_param_gather, interleaved ---------------------------------------------------------------------

def _gather_work(p: int, v: int, m: int, fwd_s: float, param_bytes: float) -> StepWork:
    st = StageWork(layers=1, fwd_layer_s=fwd_s, bwd_layer_s=2 * fwd_s, grad_bytes_layer=1e6,
                   param_bytes_layer=param_bytes, gather_after_step=(Comm("all-gather", v * param_bytes, DP),))
    return StepWork(stages=(st,) * p, microbatches=m, schedule="interleaved", virtual_stages=v, dp_group=DP,
                    dp_op="reduce-scatter", zero=1, overlap_param_gather=True)


def test_the_parameter_gather_closed_form_by_hand() -> None:
    """pp 2, v 3, chunk forward f = 1 s, every chunk's gather G. Chunks 0 and 1 start at once, chunk 2 at the
    forward (2 - 1)*2 - r; chunk c is needed at c*pp*f plus the waits before it.
    G = 3, rank 0: W0 = 3; chunk 1 done 6, needed 2 + 3 = 5: W1 = 4; chunk 2 issued 2 + 0, done 9, needed 4 + 4:
    W2 = 5. G = 1: only chunk 0's gather waits (1 s)."""
    from llmsim.costmodel.step import interleaved_gather_exposed

    assert interleaved_gather_exposed(2, 0, [3.0, 3.0, 3.0], 1.0) == pytest.approx(5.0)
    assert interleaved_gather_exposed(2, 1, [1.0, 1.0, 1.0], 1.0) == pytest.approx(1.0)
    # rank 1, G = 1.5, f = 1, pp 2: W0 = 1.5; chunk 1 done 3, needed 2 + 1.5: W1 = 1.5; chunk 2 issued
    # (2 - 1) * 1 + 0 = 1, done max(3, 1) + 1.5 = 4.5, needed 4 + 1.5 = 5.5: W2 = 1.5
    assert interleaved_gather_exposed(2, 1, [1.5, 1.5, 1.5], 1.0) == pytest.approx(1.5)
    # a gather slower than pp chunk forwards: the stream sets the pace, W = sum(G) - (v-1)*pp*f
    assert interleaved_gather_exposed(6, 5, [0.04] * 8, 0.004) == pytest.approx(8 * 0.04 - 7 * 6 * 0.004)


def test_the_roofline_and_the_simulation_gather_chunk_by_chunk() -> None:
    """The priced step's data-parallel time is the chunks' reduction plus the closed-form gather wait; the
    simulation, playing Megatron's launches, waits for the gathers no longer than the closed form says."""
    from llmsim.costmodel.step import interleaved_gather_exposed

    p, v, m, f = 2, 3, 2, 1.0
    G = Comm("all-gather", 4e10, DP).time(FABRIC)   # 3 s: slower than a chunk's pp forwards (2 s)
    work = _gather_work(p, v, m, f, 4e10)
    t = price(work, FABRIC)
    R = Comm("reduce-scatter", 1e6, DP).time(FABRIC)

    def exposed(stage: int) -> float:
        return interleaved_reduce_exposed(v, p, stage, R, R, R, 2 * f) + interleaved_gather_exposed(p, stage,
                                                                                                   [G] * v, f)
    assert interleaved_gather_exposed(p, 0, [G] * v, f) == pytest.approx(5.0, rel=1e-5)   # by hand, as above
    assert t.detail["data_parallel"] == pytest.approx(exposed(t.critical_stage), rel=1e-12)
    out = simulate(work, Placement(tp=1, cp=1, pp=p, devices_per_node=1), FABRIC, record=True)
    gathers = [s for s in out.spans if s.category == "dp" and s.name.startswith("all-gather")]
    assert len(gathers) == p * v                      # one per chunk and stage, none after the optimizer
    for stage in range(p):
        assert out.ledgers[stage].comm_s <= exposed(stage) + 1e-9
