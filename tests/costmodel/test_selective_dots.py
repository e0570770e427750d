"""JAX's checkpoint_dots_with_no_batch_dims (`recompute: selective-dots`, MaxText's remat `minimal`): what a
layer keeps, what its backward recomputes and the collectives it repeats, against values worked out by hand.

MaxText's v5p 32B layer (h 10240, 32 heads of 256 = a d 8192, MHA, f 32768 non-gated, priced as gelu), bf16,
per token, as a sequential block: kept = h (layer input, the scan carry) + 8192 (q) + 8192 (k) + 8192 (v) + h
(attention-out, read by norm2's backward) + 32768 (MLP up) = 77824 elements x 2 bytes; with tp 4 and sp every one
of them divides by 4: 38912 bytes. The MLP-down output only joins the residual sum, whose derivative reads no
operand: JAX discards that residual (jax/_src/ad_checkpoint.py remat_partial_eval, `used_res`). As the parallel
block MaxText runs (parallel_block), the attention-out output only joins the sum too: 67584 elements, 33792 bytes.
"""

from __future__ import annotations

import pytest

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Options, Plan
from llmsim.costmodel.activations import layer_inventory
from llmsim.costmodel.cluster import plan_on
from llmsim.costmodel.compute import device_rates
from llmsim.costmodel.memory import activation_bytes_per_layer
from llmsim.costmodel.work import layer_phase_times, train_work
from tests.costmodel.helpers import a100_cluster, profiled

S = 2048


def _maxtext_32b(**model: object) -> Workload:
    fields = {"activation": "gelu", **model}
    spec = ModelSpec(layers=2, hidden=10240, heads=32, kv_heads=32, head_dim=256, ffn_hidden=32768, vocab=32768,
                     norm="rmsnorm", positions="rotary", seq_len=S, **fields)
    return Workload(model=spec, mode="train", batch=32)


def test_maxtext_32b_layer_keeps_the_projections_outputs_its_backward_reads() -> None:
    names = [t.name for t in layer_inventory(_maxtext_32b().model, "flash", "selective-dots", 2)]
    assert names == ["layer.input", "q.proj_output", "k.proj_output", "v", "o.output", "fc.output"]
    whole, _ = activation_bytes_per_layer(_maxtext_32b(), SharingChoice(True), Plan(micro_batch=1,
                                          recompute="selective-dots"), Options())
    assert whole == S * 77824 * 2
    split, working = activation_bytes_per_layer(_maxtext_32b(), SharingChoice(True),
                                                Plan(tp=4, sp=True, micro_batch=32, recompute="selective-dots"),
                                                Options())
    assert split == 32 * S * 38912                      # 2.550 GB per layer: x 32 layers = 81.6 GB
    none, _ = activation_bytes_per_layer(_maxtext_32b(), SharingChoice(True),
                                         Plan(tp=4, sp=True, micro_batch=32), Options())
    # while one layer is recomputed: the rest of its `none` set, all of it but what the policy already keeps
    # under the same name: the layer input, v (not rotated) and the MLP up output
    assert working == none - 32 * S * (10240 + 8192 + 32768) * 2 / 4


def test_a_gated_mlp_keeps_gate_and_up() -> None:
    names = [t.name for t in layer_inventory(_maxtext_32b(activation="swiglu").model, "flash", "selective-dots", 2)]
    assert "gate.output" in names and "up.output" in names and "fc.output" not in names


@pytest.mark.parametrize("tp,sp", [(1, False), (2, True), (2, False)])
def test_recompute_time_and_collectives(tp: int, sp: bool) -> None:
    """The backward recomputes the attention forward and every elementwise op, no GEMM; with sp the two
    all-gathers of the recomputed norm outputs run again (blocking on GPUs), without sp nothing."""
    workload = Workload(model=ModelSpec(preset="llama3-8b", layers=2, hidden=512, heads=8, kv_heads=2,
                                        ffn_hidden=1792, vocab=1024, seq_len=256), mode="train", batch=2)
    profile, sharing = profiled(workload)
    cluster = a100_cluster()
    plan = Plan(tp=tp, sp=sp, dp=1, micro_batch=1, microbatches=2, recompute="selective-dots")
    stage = train_work(workload, profile, sharing, plan, cluster).stages[0]
    fwd = layer_phase_times(profile, workload, plan_on(plan, cluster), Options(),
                            device_rates(cluster, workload.dtype), "forward")
    assert stage.recompute_layer_s == pytest.approx(fwd.attention + fwd.other, rel=1e-12)
    if tp > 1 and sp:
        assert [(c.op, c.size, c.count) for c in stage.tp_recompute] == [("all-gather", 256 * 512 * 2, 2)]
    else:
        assert stage.tp_recompute == ()
    assert stage.tp_recompute_overlap == ()


def test_a_parallel_block_keeps_neither_branch_output() -> None:
    """MaxText's own block: attention-out and MLP-down only feed their sum, so neither is kept; without
    recomputation the block has one norm (no norm2 input, statistics or output) and the MLP reads norm1's
    output, the tensor the QKV linear already keeps."""
    parallel = _maxtext_32b(parallel_block=True)
    names = [t.name for t in layer_inventory(parallel.model, "flash", "selective-dots", 2)]
    assert names == ["layer.input", "q.proj_output", "k.proj_output", "v", "fc.output"]
    split, _ = activation_bytes_per_layer(parallel, SharingChoice(True),
                                          Plan(tp=4, sp=True, micro_batch=32, recompute="selective-dots"), Options())
    assert split == 32 * S * 33792                      # 2.215 GB per layer: x 32 layers = 70.9 GB
    none = {t.name for t in layer_inventory(parallel.model, "flash", "none", 2)}
    assert not {n for n in none if n.startswith("norm2")} and "norm1.output" in none
    # none, per token, whole: input h + rstd (fp32) + norm1 output h + q, k, v, O (4 x 8192) + lse (32 fp32)
    # + MLP up and activation output (2 x 32768)
    none_bytes, _ = activation_bytes_per_layer(parallel, SharingChoice(True), Plan(micro_batch=1), Options())
    assert none_bytes == S * ((2 * 10240 + 4 * 8192 + 2 * 32768) * 2 + 4 + 32 * 4)
