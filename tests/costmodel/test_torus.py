"""TPU slices as tori (costmodel.torus): shapes, axis mapping, per-axis ring collectives, slices over DCN."""

from __future__ import annotations

import pytest

from llmsim.costmodel.cluster import collective_time, plan_on, torus_groups
from llmsim.costmodel.collectives import COLLECTIVE_BASE_LATENCY_S
from llmsim.costmodel.plan import Plan
from llmsim.costmodel.torus import Ring, TorusError, default_shape, map_axes, parse_topology, wraps
from llmsim.errors import ScenarioError
from llmsim.hardware import load_catalog

CATALOG = load_catalog()
GB = 1e9


def _link_bw(name: str) -> float:
    link = CATALOG.link(name)
    return link.bandwidth_bytes_per_s * link.efficiency


def test_slice_shapes_parse_and_default_to_cloud_tpu_shapes() -> None:
    assert parse_topology("4x4x8", 3) == (4, 4, 8)
    # Cloud TPU v5p's standard shapes (v5p page) and v5e's 16x16 pod
    assert [default_shape(n, 3) for n in (64, 128, 256, 512)] == [(4, 4, 4), (4, 4, 8), (4, 8, 8), (8, 8, 8)]
    assert default_shape(256, 2) == (16, 16)
    assert wraps((4, 4, 8), 4) == (True, True, True) and wraps((2, 4, 4), 4) == (False, True, True)
    for bad, message in (("4x4", "2 dimension"), ("4xx4", "not a slice shape"), ("0x4x4", "not a slice shape")):
        with pytest.raises(TorusError, match=message):
            parse_topology(bad, 3)


def test_a_ring_with_wraparound_moves_its_bytes_at_twice_the_link_bandwidth_of_a_line() -> None:
    """Two counter-rotating rings on a torus dimension vs one bidirectional ring folded onto a line."""
    bw = _link_bw("ici-v5p")
    torus = CATALOG.cluster("tpu-v5p", topology="4x4x4")          # every dimension wraps
    mesh = CATALOG.cluster("tpu-v5p", topology="2x4x4")           # 2 does not: ... and the 4s do
    assert torus.wrap == (True, True, True) and mesh.wrap == (False, True, True)
    line = torus_groups({"tp": 2, "dp": 16}, mesh)["tp"]           # tp on the 2-chip dimension: a line
    ring = torus_groups({"tp": 4, "dp": 16}, torus)["tp"]          # tp on a whole wrapped dimension
    size = 1 * GB
    latency = CATALOG.link("ici-v5p").latency_s
    assert collective_time("all-reduce", size, line, mesh) == pytest.approx(2 * size * 1 / 2 / bw + 2 * latency)
    assert collective_time("all-reduce", size, ring, torus) == pytest.approx(
        2 * size * 3 / 4 / (2 * bw) + 6 * latency)


def test_an_all_reduce_over_several_dimensions_runs_per_axis_phases() -> None:
    """dp over a 4x4x8 torus: reduce-scatter along x (S), y (S/4), z (S/16), then the all-gathers back."""
    cluster = CATALOG.cluster("tpu-v5p", topology="4x4x8")
    dp = torus_groups({"dp": 128}, cluster)["dp"]
    assert [(r.dim, r.size) for r in dp.rings] == [(0, 4), (1, 4), (2, 8)]
    bw, lat = 2 * _link_bw("ici-v5p"), CATALOG.link("ici-v5p").latency_s
    size = 1 * GB
    one_way = size * 3 / 4 / bw + size / 4 * 3 / 4 / bw + size / 16 * 7 / 8 / bw + (3 + 3 + 7) * lat
    assert collective_time("all-reduce", size, dp, cluster) == pytest.approx(2 * one_way)
    assert collective_time("reduce-scatter", size, dp, cluster) == pytest.approx(one_way)


def test_two_axes_on_one_dimension_share_its_links() -> None:
    """tp = 2 takes a stretch of x, dp the rest of x with stride 2: its two interleaved rings share x's links."""
    rings = map_axes((4, 4), (True, True), {"tp": 2, "cp": 1, "pp": 1, "dp": 8})
    assert rings["tp"] == (Ring(0, 2, 1, False),)
    assert rings["dp"] == (Ring(0, 2, 2, True), Ring(1, 4, 1, True))
    assert rings["dp"][0].bandwidth_factor == pytest.approx(1.0)   # 2 directions / 2 sharing rings


def test_a_user_mapping_pins_axes_and_impossible_mappings_are_one_line_errors() -> None:
    rings = map_axes((4, 4, 8), (True,) * 3, {"tp": 8, "cp": 1, "pp": 1, "dp": 16}, {"tp": "z"})
    assert rings["tp"] == (Ring(2, 8, 1, True),) and [r.dim for r in rings["dp"]] == [0, 1]
    with pytest.raises(TorusError, match=r"^mesh.tp: dimensions 'x' hold 4 chips but tp = 8; allowed for tp = 8 on 4x4x8: 'z'$"):
        map_axes((4, 4, 8), (True,) * 3, {"tp": 8, "cp": 1, "pp": 1, "dp": 16}, {"tp": "x"})
    with pytest.raises(TorusError, match="does not fill a 4x4x8 slice"):
        map_axes((4, 4, 8), (True,) * 3, {"tp": 8, "cp": 1, "pp": 1, "dp": 8})
    with pytest.raises(TorusError, match="names a dimension another axis already holds"):
        map_axes((4, 4, 8), (True,) * 3, {"tp": 8, "cp": 1, "pp": 1, "dp": 16}, {"tp": "z", "dp": "z"})
    with pytest.raises(ScenarioError, match=r"^mesh.tp: 'w'"):
        CATALOG.cluster("tpu-v5p", topology="4x4x8", mesh={"tp": "w"})
    with pytest.raises(ScenarioError, match=r"^topology: '4x4' has 2 dimension"):
        CATALOG.cluster("tpu-v5p", topology="4x4")
    with pytest.raises(ScenarioError, match=r"^topology: device 'h100-sxm' is not a TPU"):
        CATALOG.cluster("h100-sxm", topology="4x4x4")
    with pytest.raises(ScenarioError, match=r"^inter_node: 2 slices of tpu-v4"):
        CATALOG.cluster("tpu-v4", nodes=2, topology="4x4x4")


def test_slices_are_data_parallel_replicas_over_the_data_center_network() -> None:
    """ZeRO shards inside a slice; the DCN all-reduces each chip's shard across slices (dcn_data_parallelism)."""
    cluster = CATALOG.cluster("tpu-v5p", nodes=2, topology="4x4x4")
    assert (cluster.world, cluster.inter.name) == (128, "dcn-v5p")
    plan = plan_on(Plan(dp=128, zero=3), cluster)
    assert (plan.dcn_replicas, plan.zero_dp) == (2, 64)
    dp = torus_groups({"dp": 128}, cluster)["dp"]
    one_slice = torus_groups({"dp": 64}, CATALOG.cluster("tpu-v5p", topology="4x4x4"))["dp"]
    size = 1 * GB
    dcn = _link_bw("dcn-v5p")
    shard = size / 64                                   # what is left after the in-slice reduce-scatters
    # ring all-reduce over 2 slices: its bytes, 2 hops and the collective's launch
    across = 2 * shard * 1 / 2 / dcn + COLLECTIVE_BASE_LATENCY_S + 2 * CATALOG.link("dcn-v5p").latency_s
    assert collective_time("all-reduce", size, dp, cluster) == pytest.approx(
        collective_time("all-reduce", size, one_slice, cluster) + across, rel=1e-3)
    assert plan_on(Plan(dp=128, zero=0), cluster).dcn_replicas == 1   # plain DP: one hierarchical all-reduce


def test_slice_shapes_are_those_the_cloud_tpu_pages_offer() -> None:
    """v4/v5p: 2x2x1 .. 2x4x4 below a cube, whole 4x4x4 cubes above (sides up to the largest published shape,
    chips up to the largest slice); v5e/v6e: the listed 2D shapes up to 16x16."""
    v5p = CATALOG.devices["tpu-v5p"].torus.slice_shapes
    assert v5p.offers((4, 4, 8)) and v5p.offers((8, 4, 4)) and v5p.offers((1, 2, 2)) and v5p.offers((16, 16, 24))
    for bad in ((3, 5, 7), (64, 64, 64), (4, 4, 6), (2, 2, 3), (24, 24, 24)):
        assert not v5p.offers(bad), bad
    assert v5p.shapes_of(512, 3) == [(8, 8, 8), (4, 8, 16)]    # most even first
    assert v5p.shapes_of(16, 3) == [(2, 2, 4)] and v5p.shapes_of(96, 3) == []
    v5e = CATALOG.devices["tpu-v5e"].torus.slice_shapes
    assert v5e.shapes_of(128, 2) == [(8, 16)] and v5e.shapes_of(512, 2) == [] and not v5e.offers((4, 16))
    with pytest.raises(ScenarioError, match=r"^topology: 3x5x7 \(105 chips\) is not a tpu-v5p slice; allowed: "
                                            r"2x2x1, 2x2x2, 2x2x4, 2x4x4, or AxBxC with each side a multiple of 4 "
                                            r"up to 24, at most 6144 chips$"):
        CATALOG.cluster("tpu-v5p", topology="3x5x7")
    with pytest.raises(ScenarioError, match=r"^topology: 64x64x64 \(262144 chips\) is not a tpu-v5p slice"):
        CATALOG.cluster("tpu-v5p", topology="64x64x64")
    with pytest.raises(ScenarioError, match=r"^topology: 4x16 \(64 chips\) is not a tpu-v5e slice; allowed: 1x1, "):
        CATALOG.cluster("tpu-v5e", topology="4x16")
    # without a topology: the most even offered shape, or the allowed forms when none has that many chips
    assert CATALOG.cluster("tpu-v5e", nodes=16).topology == (8, 16)
    with pytest.raises(ScenarioError, match=r"^nodes: 512 chips \(nodes x devices_per_node\) form no tpu-v5e"):
        CATALOG.cluster("tpu-v5e", nodes=64)


@pytest.mark.parametrize("mesh, message", [
    ({"qq": "z"}, r"^mesh.qq: unknown mesh axis; allowed: tp, cp, pp, dp, fsdp, "),
    ({"tp": "zz"}, r"^mesh.tp: 'zz' names dimension 'z' twice; allowed: each dimension held by one axis"),
    ({"tp": "w"}, r"^mesh.tp: 'w' is not a set of this slice's dimensions; allowed: letters of x, y, z"),
    ({"tp": "z", "dp": "xz"}, r"^mesh.dp: 'xz' names dimension 'z' and mesh.tp both"),
    ({"fsdp": "xy", "dp": "z"}, r"^mesh.dp: the same axis as mesh.fsdp"),
])
def test_a_mapping_that_cannot_be_is_refused_with_the_cluster(mesh: dict, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        CATALOG.cluster("tpu-v5p", topology="4x4x8", mesh=mesh)


def _tp_layer_work(cluster, micro_batch: int):
    """GPT-2 small (h 768) at seq 1024, tp 4 with sequence parallelism x dp 16: one stage's work."""
    from llmsim.costmodel.work import train_work
    from tests.costmodel.helpers import gpt2, profiled

    workload = gpt2(batch=16 * micro_batch, seq_len=1024)
    profile, sharing = profiled(workload)
    plan = plan_on(Plan(dp=16, tp=4, sp=True, zero=3, micro_batch=micro_batch, microbatches=1), cluster)
    size = micro_batch * 1024 * 768 * 2    # the b*s*h bf16 activation each collective moves
    return train_work(workload, profile, sharing, plan, cluster), size


def test_on_a_tpu_slice_large_tensor_parallel_collectives_run_as_xla_windowed_einsums() -> None:
    """XLA's collective matmul (work.XLA_WINDOWED_EINSUM_THRESHOLD_BYTES): with the gathered activation at or
    above 256 MiB every tensor-parallel collective of a layer is tp - 1 neighbour messages of 1/tp of it, each
    under the partial GEMM of the chunk at hand; by hand: exposed = max(0, 3 x (size/4) / link - 3/4 GEMM)."""
    from llmsim.costmodel.work import XLA_WINDOWED_EINSUM_THRESHOLD_BYTES

    cluster = CATALOG.cluster("tpu-v5p", topology="4x4x4")
    work, size = _tp_layer_work(cluster, micro_batch=256)
    assert size >= XLA_WINDOWED_EINSUM_THRESHOLD_BYTES
    st = work.stages[0]
    assert st.tp_fwd == () and st.tp_bwd == ()          # no collective left on the critical path as a whole
    assert len(st.tp_fwd_overlap) == 4 and len(st.tp_bwd_overlap) == 4
    link = cluster.fabric.intra
    for item in st.tp_fwd_overlap + st.tp_bwd_overlap:
        (comm,) = item.hidden
        assert comm.op == "p2p" and comm.count == 3 and comm.size == pytest.approx(size / 4)
        alone = 3 * (size / 4 / link.bandwidth + link.latency)
        assert comm.time(cluster.fabric) == pytest.approx(alone)
        assert item.time(cluster.fabric) == pytest.approx(max(0.0, alone - item.gemm_s))

    small, small_size = _tp_layer_work(cluster, micro_batch=64)   # 96 MiB: below the threshold
    assert small_size < XLA_WINDOWED_EINSUM_THRESHOLD_BYTES
    assert small.stages[0].tp_fwd and small.stages[0].tp_fwd_overlap == ()


def test_windowed_einsums_are_xlas_on_tpu_slices_only() -> None:
    """The same plan on A100 nodes keeps NCCL's blocking collectives (no tp_comm_overlap asked)."""
    from tests.costmodel.helpers import a100_cluster

    work, _ = _tp_layer_work(a100_cluster(nodes=8, devices_per_node=8), micro_batch=256)
    assert work.stages[0].tp_fwd and work.stages[0].tp_fwd_overlap == ()


def test_selective_dots_regathers_run_as_windowed_einsums_on_a_tpu_slice() -> None:
    """Under `selective-dots` the two all-gathers of the recomputed norm outputs (for the QKV and MLP-up weight
    gradients) are windowed einsums too on a TPU slice: tp - 1 neighbour messages under those GEMMs."""
    from llmsim.costmodel.work import train_work
    from tests.costmodel.helpers import gpt2, profiled

    cluster = CATALOG.cluster("tpu-v5p", topology="4x4x4")
    workload = gpt2(batch=16 * 256, seq_len=1024)
    profile, sharing = profiled(workload)
    plan = plan_on(Plan(dp=16, tp=4, sp=True, zero=3, micro_batch=256, microbatches=1, recompute="selective-dots"),
                   cluster)
    st = train_work(workload, profile, sharing, plan, cluster).stages[0]
    assert st.tp_recompute == () and st.tp_recompute_overlap == ()
    assert len(st.tp_bwd_overlap) == 4 + 2                   # the backward's 4 windowed einsums + the 2 re-gathers
    for item in st.tp_bwd_overlap[4:]:
        (comm,) = item.hidden
        assert comm.op == "p2p" and comm.count == 3 and comm.size == pytest.approx(256 * 1024 * 768 * 2 / 4)
