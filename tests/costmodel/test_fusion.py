"""Compiled execution: the fused elementwise traffic of the traced graph (workload.trace._FusionTracker) and
how the cost model prices it (Options.compile, DeviceSpec.compiled).

Hand-computed cases on meta tensors, N = bytes of one (rows x cols) bf16 tensor:
* chain  y = (relu(x @ w) * 2) + 1: eager, every op reads its input and writes its output (relu 2N, mul 2N,
  add 2N = 6N); fused, one kernel reads the GEMM's output and writes y: 2N.
* residual  h = x @ w; a = relu(h) + x; b = a @ w; c = b + a: the first chain reads h and x and writes a (the
  second GEMM reads it): 3N; the second reads b and a again (another fused region, after a GEMM) and
  writes c: 3N. Eager: relu 2N + add 3N + add 3N = 8N.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.module_tracker import ModuleTracker

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Options, Plan, estimate
from llmsim.costmodel.cluster import plan_on
from llmsim.costmodel.compute import device_rates, runs_compiled
from llmsim.workload.profile import profile_workload
from llmsim.workload.trace import _OpRecorder
from tests.costmodel.helpers import CATALOG

ROWS, COLS = 64, 32
N = ROWS * COLS * 2  # bf16


def _record(fn) -> dict:
    x = torch.empty(ROWS, COLS, dtype=torch.bfloat16, device="meta")
    w = torch.empty(COLS, COLS, dtype=torch.bfloat16, device="meta")
    tracker = ModuleTracker()
    recorder = _OpRecorder(tracker)
    with tracker, recorder:
        fn(x, w)
    return recorder.ops


def test_an_elementwise_chain_after_a_gemm_reads_its_input_and_writes_its_output_once() -> None:
    ops = _record(lambda x, w: torch.relu(x @ w) * 2 + 1)
    other = ops[("forward", "head", "other")]
    assert other.bytes == 6 * N
    # nothing reads y: dead code to a compiler, so only the GEMM output is read (next test: y needed)
    assert other.traffic(True) == 1 * N


def test_what_leaves_the_chain_is_written_and_a_later_chain_reads_it_again() -> None:
    def residual(x, w):
        a = torch.relu(x @ w) + x
        c = (a @ w) + a
        return c @ w  # c is needed outside its chain
    ops = _record(residual)
    other = ops[("forward", "head", "other")]
    assert other.bytes == 8 * N
    assert other.traffic(True) == 6 * N


def test_an_output_a_gemm_reads_is_written() -> None:
    ops = _record(lambda x, w: (torch.relu(x @ w) * 2 + 1) @ w)
    assert ops[("forward", "head", "other")].traffic(True) == 2 * N


def _tt_case(compile: bool | None, hardware: str = "h100-sxm"):
    spec = ModelSpec(preset="llama3-8b", layers=2, seq_len=1024)
    workload = Workload(model=spec, mode="train", batch=8, dtype="bfloat16")
    sharing = SharingChoice(tie_embeddings=False)
    # one device: no communication for the compute to hide behind
    cluster = CATALOG.cluster(hardware, nodes=1, devices_per_node=1)
    plan = plan_on(Plan(micro_batch=1, microbatches=8), cluster)
    return estimate(workload, profile_workload(workload, sharing), sharing, plan, cluster,
                    Options(compile=compile)).step_time_s


def test_a_compiled_run_is_faster_than_the_eager_one_by_the_elementwise_bytes_it_saves() -> None:
    """torchtitan publishes 8B FSDP 8 at 5762 (eager) and 6667 (torch.compile) tokens/s/GPU: fails on a
    model that prices both the same."""
    eager, compiled = _tt_case(False), _tt_case(True)
    assert compiled < eager
    assert _tt_case(None) == eager  # a GPU runs eagerly unless told


def test_a_tpu_runs_compiled_unless_told_otherwise() -> None:
    tpu = CATALOG.device("tpu-v5e")
    assert tpu.compiled and not CATALOG.device("h100-sxm").compiled
    cluster = CATALOG.cluster("tpu-v5e", nodes=1, topology="2x4")
    rates = device_rates(cluster, "bfloat16")
    assert runs_compiled(Options(), rates, "head") and runs_compiled(Options(), rates, "layers")
    assert not runs_compiled(Options(compile=False), rates, "layers")
    assert _tt_case(None, "tpu-v5e") == _tt_case(True, "tpu-v5e") < _tt_case(False, "tpu-v5e")


def test_torch_compile_on_a_gpu_compiles_the_blocks_only() -> None:
    """torchtitan's apply_compile compiles each TransformerBlock; embedding, head and loss run eagerly."""
    rates = device_rates(CATALOG.cluster("h100-sxm", nodes=1, devices_per_node=8), "bfloat16")
    assert runs_compiled(Options(compile=True), rates, "layers")
    assert not runs_compiled(Options(compile=True), rates, "head")


def test_fused_bytes_scale_with_depth_like_the_eager_ones() -> None:
    """Each block is its own compiled region, so every block moves the same fused bytes."""
    spec = ModelSpec(preset="llama3-8b", layers=2, seq_len=256)
    two = profile_workload(Workload(model=spec, mode="train", batch=1), SharingChoice(tie_embeddings=False))
    four = profile_workload(Workload(model=spec.model_copy(update={"layers": 4}), mode="train", batch=1),
                            SharingChoice(tie_embeddings=False))
    for phase in ("forward", "backward"):
        a, b = two.ops[(phase, "layers", "other")], four.ops[(phase, "layers", "other")]
        assert b.traffic(True) == 2 * a.traffic(True)
        assert 0 < a.traffic(True) < a.bytes
        assert dataclasses.replace(a).traffic(False) == a.bytes
