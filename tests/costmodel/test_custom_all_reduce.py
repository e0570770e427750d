"""vLLM's custom all-reduce (collectives.custom_all_reduce_*): its time from the kernel, by hand, and where an
engine that runs vLLM uses it instead of NCCL (Options.all_reduce "vllm"); NCCL engines are unchanged."""

from __future__ import annotations

import pytest

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Options, Plan, estimate
from llmsim.costmodel.cluster import Group, collective_phases, place_group
from llmsim.costmodel.collectives import (CUSTOM_AR_MAX_BYTES, Channel, Fabric, custom_all_reduce_kind,
                                          custom_all_reduce_phases, custom_two_shot_rounds, phases_time)
from llmsim.costmodel.scaling import with_layers
from llmsim.hardware import load_catalog
from llmsim.workload.profile import profile_workload

KiB = 1024
NVLINK = Channel(bandwidth=360e9, latency=3.4e-6, peer_access=True, fully_connected=True, flag_latency=0.6e-6)
PCIE = Channel(bandwidth=25.2e9, latency=5.7e-6, peer_access=True, fully_connected=False, flag_latency=1.0e-6)
HOST = Channel(bandwidth=1e9, latency=1.6e-4)           # processes on a CPU host: no GPU peer access
KERNEL_S = 12e-6


def test_one_shot_is_a_kernel_two_flags_one_load_round_and_every_peer_buffer_by_hand() -> None:
    # Llama 3 70B decode at batch 8: 8 x 8192 x 2 B = 128 KiB per all-reduce, tp 4 on H100 NVLink
    size, p = 128 * KiB, 4
    by_hand = 12e-6 + 3 * 0.6e-6 + 3 * 131072 / 360e9          # = 14.892 us
    got = phases_time(custom_all_reduce_phases("one-shot", size, p, NVLINK, KERNEL_S), Fabric(NVLINK, NVLINK))
    assert got == pytest.approx(by_hand, rel=1e-12)
    assert got == pytest.approx(14.892e-6, rel=1e-4)


def test_two_shot_moves_a_rings_volume_in_two_load_rounds_by_hand() -> None:
    size, p = 4 * 1024 * KiB, 4                                 # a 256-token prefill of a 8192-wide model
    by_hand = 12e-6 + 4 * 0.6e-6 + 2 * size * 3 / 4 / 360e9      # = 31.876 us
    got = phases_time(custom_all_reduce_phases("two-shot", size, p, NVLINK, KERNEL_S), Fabric(NVLINK, NVLINK))
    assert got == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize("p, size, kind", [
    (2, 4 * 1024 * KiB, "one-shot"),      # 2 GPUs: always the one-stage kernel
    (4, 512 * KiB - 16, "one-shot"), (4, 512 * KiB, "two-shot"),
    (6, 256 * KiB - 16, "one-shot"), (8, 256 * KiB - 16, "one-shot"), (8, 256 * KiB, "two-shot"),
    (8, CUSTOM_AR_MAX_BYTES - 16, "two-shot"),
])
def test_vllm_picks_one_shot_or_two_shot_by_its_kernels_thresholds(p: int, size: int, kind: str) -> None:
    assert custom_all_reduce_kind(size, p, 1, NVLINK) == kind


@pytest.mark.parametrize("p, size, nodes, channel, why", [
    (16, 128 * KiB, 1, NVLINK, "more than 8 GPUs"),
    (3, 128 * KiB, 1, NVLINK, "a world size it has no kernel for"),
    (8, 128 * KiB, 2, NVLINK, "a group across nodes"),
    (4, 128 * KiB, 1, PCIE, "more than 2 GPUs not fully connected"),
    (4, CUSTOM_AR_MAX_BYTES, 1, NVLINK, "8 MiB or more"),
    (4, 128 * KiB + 8, 1, NVLINK, "not a multiple of 16 bytes"),
    (2, 128 * KiB, 1, HOST, "no GPU peer access (vLLM on a CPU host)"),
])
def test_vllm_falls_back_to_nccl(p: int, size: int, nodes: int, channel: Channel, why: str) -> None:
    assert custom_all_reduce_kind(size, p, nodes, channel) is None, why


def test_two_gpus_over_pcie_run_the_custom_kernel_at_the_pcie_flag_latency() -> None:
    assert custom_all_reduce_kind(64 * KiB, 2, 1, PCIE) == "one-shot"
    got = phases_time(custom_all_reduce_phases("one-shot", 64 * KiB, 2, PCIE, KERNEL_S), Fabric(PCIE, PCIE))
    assert got == pytest.approx(KERNEL_S + 3 * 1.0e-6 + 64 * KiB / 25.2e9)


def test_the_engine_choice_reaches_the_collective_and_nccl_stays_the_default() -> None:
    cluster = load_catalog().cluster("h100-sxm", 2, devices_per_node=8)
    fabric = cluster.fabric
    # the kernel's fixed time as measured in a CUDA graph on H100 (catalog efficiency.custom_all_reduce_one_shot_s)
    assert fabric.intra.fully_connected and fabric.custom_fixed_s("one-shot") == pytest.approx(3.8e-6)
    size = 128 * KiB
    inside, across = place_group(4, 1, 8), place_group(16, 1, 8)
    nccl = collective_phases("all-reduce", size, inside, fabric)
    assert collective_phases("all-reduce", size, inside, fabric, "nccl") == nccl
    vllm = collective_phases("all-reduce", size, inside, fabric, "vllm")
    assert vllm == custom_all_reduce_phases("one-shot", size, 4, fabric.intra, fabric.custom_fixed_s("one-shot"))
    assert phases_time(vllm, fabric) < phases_time(nccl, fabric)
    # beyond 8 GPUs (here also across nodes) vLLM itself uses NCCL
    assert collective_phases("all-reduce", size, across, fabric, "vllm") == \
        collective_phases("all-reduce", size, across, fabric)
    # only all-reduces: a sequence-parallel reduce-scatter is NCCL's either way
    assert collective_phases("reduce-scatter", size, inside, fabric, "vllm") == \
        collective_phases("reduce-scatter", size, inside, fabric)


def test_a_link_that_is_not_fully_connected_keeps_nccl_beyond_two_gpus() -> None:
    cluster = load_catalog().cluster("h100-sxm", 1, devices_per_node=4, intra_node="pcie5")
    fabric = cluster.fabric
    group = Group(size=4, per_node=4, nodes=1)
    assert collective_phases("all-reduce", 128 * KiB, group, fabric, "vllm") == \
        collective_phases("all-reduce", 128 * KiB, group, fabric)


def _decode(tp: int, all_reduce: str, hardware: str = "h100-sxm"):
    model = ModelSpec(preset="llama3-70b", seq_len=32)
    workload = Workload(model=model, mode="decode", batch=8, decode_tokens=128, dtype="bfloat16")
    sharing = SharingChoice(tie_embeddings=False)
    profile = with_layers(profile_workload(workload.model_copy(
        update={"model": model.model_copy(update={"layers": 2})}), sharing), model.layers)
    cluster = load_catalog().cluster(hardware, 1, devices_per_node=tp)
    return workload, profile, cluster, estimate(workload, profile, sharing, Plan(tp=tp, micro_batch=8), cluster,
                                                Options(all_reduce=all_reduce))


def test_a_vllm_decode_step_saves_the_difference_of_its_all_reduces_and_nothing_else() -> None:
    workload, profile, cluster, nccl = _decode(4, "nccl")
    *_, vllm = _decode(4, "vllm")
    fabric = cluster.fabric
    group = Group(size=4, per_node=4, nodes=1)
    size = 8 * 8192 * 2                       # decode: batch 8 tokens x hidden x bf16
    per_ar = (phases_time(collective_phases("all-reduce", size, group, fabric), fabric)
              - phases_time(collective_phases("all-reduce", size, group, fabric, "vllm"), fabric))
    # 2 per layer x 80 layers + the embedding's, per token step; TPOT is one step
    assert nccl.tpot_s - vllm.tpot_s == pytest.approx((2 * 80 + 1) * per_ar, rel=1e-9)
    assert vllm.compute_time_s == pytest.approx(nccl.compute_time_s, rel=1e-12)


def test_one_device_has_no_all_reduce_to_choose() -> None:
    *_, nccl = _decode(1, "nccl", "h200")
    *_, vllm = _decode(1, "vllm", "h200")
    assert vllm.step_time_s == nccl.step_time_s


def test_the_catalog_says_which_links_give_gpu_peer_access_and_which_connect_every_pair() -> None:
    links = load_catalog().links
    for name in ("nvlink3", "nvlink4", "nvlink5", "xgmi-mi300"):
        assert links[name].peer_access and links[name].fully_connected, name
    for name in ("pcie4", "pcie5"):
        assert links[name].peer_access and not links[name].fully_connected, name
    for name in ("loopback", "ib-ndr400x8", "ici-v5p"):
        assert not links[name].peer_access, name
    host = load_catalog().cluster("cpu-host", 1, devices_per_node=2, intra_node="loopback", inter_node="loopback")
    assert collective_phases("all-reduce", 64 * KiB, Group(2, 2, 1), host.fabric, "vllm") == \
        collective_phases("all-reduce", 64 * KiB, Group(2, 2, 1), host.fabric)


# vllm-project/vllm PR #24111 (H100 SXM, benchmarks/kernels/benchmark_device_communicators.py: 10 all-reduces
# captured in one CUDA graph, wall time per all-reduce, printed in ms to 3 decimals): vLLM's one-shot kernel
# (ca_1stage) on a bf16 (32, 8192) tensor, 512 KiB, at tp 2 / 4 / 6.
PUBLISHED_ONE_SHOT_512KIB_H100_S = {2: 7e-6, 4: 10e-6, 6: 13e-6}


@pytest.mark.parametrize("p", sorted(PUBLISHED_ONE_SHOT_512KIB_H100_S))
def test_the_one_shot_kernel_on_h100_prices_as_measured_in_a_cuda_graph(p: int) -> None:
    # the catalog's fixed time (3.8 us) + 3 flags (0.6 us) + (p - 1) x 512 KiB at 360 GB/s is within the printed
    # resolution (0.5 us) of the published time at every tp; the generic kernel time (10 us) would be 6 us over
    fabric = load_catalog().cluster("h100-sxm", 1, devices_per_node=8).fabric
    fixed = fabric.custom_fixed_s("one-shot")
    got = phases_time(custom_all_reduce_phases("one-shot", 512 * KiB, p, fabric.intra, fixed), fabric)
    assert got == pytest.approx(PUBLISHED_ONE_SHOT_512KIB_H100_S[p], abs=0.5e-6)


def test_a_device_without_a_measurement_keeps_the_per_kernel_time_and_no_round_term() -> None:
    catalog = load_catalog()
    a100, h200 = (catalog.cluster(name, 1, devices_per_node=8) for name in ("a100-80gb", "h200"))
    assert a100.efficiency.custom_all_reduce_one_shot_s is None
    assert a100.efficiency.custom_all_reduce_two_shot_s is None
    assert a100.efficiency.custom_all_reduce_two_shot_round_s is None
    for kind in ("one-shot", "two-shot"):
        assert a100.fabric.custom_fixed_s(kind) == pytest.approx(18300 / 1.41e9)
        assert a100.fabric.custom_round_s(kind) == 0.0
    group = place_group(4, 1, 8)
    one, two = 128 * KiB, 4 * 1024 * KiB                 # a decode (one-shot) and a prefill (two-shot) all-reduce
    # A100: the two-shot kernel as before, one kernel of the pass + 4 flags + a ring's volume at the link rate
    assert collective_phases("all-reduce", two, group, a100.fabric, "vllm") == \
        custom_all_reduce_phases("two-shot", two, 4, a100.fabric.intra, 18300 / 1.41e9)
    # H200: the H100's measurements (same GH100 die, clocks and NVLink 4: an assumption)
    assert h200.fabric.custom_fixed_s("one-shot") == pytest.approx(3.8e-6)
    assert h200.fabric.custom_fixed_s("two-shot") == pytest.approx(7.4e-6)
    assert h200.fabric.custom_round_s("two-shot") == pytest.approx(1.86e-6)
    assert h200.fabric.custom_round_s("one-shot") == 0.0
    assert collective_phases("all-reduce", one, group, h200.fabric, "vllm") == \
        custom_all_reduce_phases("one-shot", one, 4, h200.fabric.intra, 3.8e-6)
    assert collective_phases("all-reduce", two, group, h200.fabric, "vllm") == \
        custom_all_reduce_phases("two-shot", two, 4, h200.fabric.intra, 7.4e-6, round_s=1.86e-6)


# The two-shot kernel's grid (CustomAllreduce::allreduce: at most 36 blocks of 512 threads, 16-byte packs) walks
# the rank's part, S/p, in rounds of 288 KiB, in each of its two stages.
@pytest.mark.parametrize("p, mib, rounds", [
    (4, 0.5, 1), (4, 1, 1), (4, 1.5, 2), (4, 2, 2), (4, 3, 3), (4, 4, 4),
    (6, 0.5, 1), (6, 1, 1), (6, 1.5, 1), (6, 2, 2), (6, 3, 2), (6, 4, 3),
    (8, 0.25, 1), (8, 7.5, 4),
])
def test_the_two_shot_kernels_grid_walks_the_ranks_part_in_rounds_of_288_kib(p: int, mib: float, rounds: int) -> None:
    assert custom_two_shot_rounds(mib * 1024 * KiB, p) == rounds


def test_a_part_below_one_round_needs_fewer_blocks_but_one_round() -> None:
    # 256 KiB = 16,384 packs: 32 blocks of 512 (under the cap of 36); tp 8: 2,048 packs each, one round
    assert custom_two_shot_rounds(256 * KiB, 8) == 1
    # 36 x 512 packs exactly per rank: one round; one pack more (on the last rank's remainder): two
    assert custom_two_shot_rounds(4 * 36 * 512 * 16, 4) == 1
    assert custom_two_shot_rounds(4 * 36 * 512 * 16 + 16, 4) == 2


def test_the_two_shot_kernel_on_h100_is_its_fixed_time_flags_grid_rounds_and_bytes_by_hand() -> None:
    # Llama 3 70B prefill of 256 tokens at tp 4: 256 x 8192 x 2 B = 4 MiB; the rank's part is 1 MiB, 4 rounds
    fabric = load_catalog().cluster("h100-sxm", 1, devices_per_node=8).fabric
    size, p = 4 * 1024 * KiB, 4
    by_hand = 7.4e-6 + 4 * 0.6e-6 + 2 * 4 * 1.86e-6 + 2 * size * 3 / 4 / 360e9       # = 42.16 us
    got = phases_time(collective_phases("all-reduce", size, place_group(p, 1, 8), fabric, "vllm"), fabric)
    assert got == pytest.approx(by_hand, rel=1e-12)
    assert got == pytest.approx(42.16e-6, rel=1e-3)


# vllm-project/vllm PR #24111 (H100 SXM, the same benchmark: 10 all-reduces in one CUDA graph, ms to 3 decimals):
# the two-shot kernel (ca_2stage) on bf16 (n, 8192) tensors of 0.5 / 1 / 1.5 / 2 / 3 / 4 MiB at tp 4 and 6
# (PR #24532 prints tp 4 again: 17 / 18 / 25 / 26 / 35 / 42 us).
PUBLISHED_TWO_SHOT_H100_S = {
    4: {0.5: 17e-6, 1: 18e-6, 1.5: 27e-6, 2: 27e-6, 3: 35e-6, 4: 43e-6},
    6: {0.5: 15e-6, 1: 17e-6, 1.5: 20e-6, 2: 26e-6, 3: 29e-6, 4: 37e-6},
}


@pytest.mark.parametrize("p", sorted(PUBLISHED_TWO_SHOT_H100_S))
def test_the_two_shot_kernel_on_h100_prices_as_measured_in_a_cuda_graph(p: int) -> None:
    # within 12% at every published point (the per-kernel time and link-rate bytes alone: up to 31% fast at tp 4)
    fabric = load_catalog().cluster("h100-sxm", 1, devices_per_node=8).fabric
    group = place_group(p, 1, 8)
    for mib, published in PUBLISHED_TWO_SHOT_H100_S[p].items():
        size = int(mib * 1024 * KiB)
        assert custom_all_reduce_kind(size, p, 1, fabric.intra) == "two-shot"
        got = phases_time(collective_phases("all-reduce", size, group, fabric, "vllm"), fabric)
        assert got == pytest.approx(published, rel=0.125), (p, mib)
