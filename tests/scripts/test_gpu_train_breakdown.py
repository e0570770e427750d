"""scripts/gpu_train_breakdown.py: what runs without a GPU (the priced side, the kernel kinds, GEMM FLOPs, bad input);
the measured side needs one (scripts/gpu-check.sh runs it there; docs/accelerators.md has its numbers)."""

from __future__ import annotations

import json

import pytest

from tests.scripts.scriptload import load_script


@pytest.fixture(scope="module")
def b():
    return load_script("gpu_train_breakdown.py")


def test_a_kernel_takes_the_kind_of_the_op_that_launched_it_else_of_its_name(b) -> None:
    # cuDNN attention launches helper kernels with plain names: attention, as the cost model prices the op
    assert b.kernel_kind("void at::native::elementwise_kernel<128, 4>", "aten::_cudnn_attention_backward") == "attention"
    assert b.kernel_kind("Kernel2", "aten::mm") == "gemm"     # a cuBLAS kernel whose name says nothing
    assert b.kernel_kind("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT") == "gemm"
    assert b.kernel_kind("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16") == "attention"
    assert b.kernel_kind("void at::native::vectorized_elementwise_kernel<4>", "aten::mul") == "other"


def test_gemm_flops_are_2mnk_from_the_input_shapes(b) -> None:
    assert b.gemm_flops("aten::mm", ((4096, 4096), (4096, 14336))) == 2.0 * 4096 * 4096 * 14336
    assert b.gemm_flops("aten::addmm", ((14336,), (4096, 4096), (4096, 14336))) == 2.0 * 4096 * 4096 * 14336
    assert b.gemm_flops("aten::bmm", ((8, 64, 32), (8, 32, 16))) == 2.0 * 8 * 64 * 32 * 16
    assert b.gemm_flops("aten::mm", ((4096, 4096),)) is None


def test_the_priced_side_splits_the_roofline_step_by_phase_and_kind(b, capsys) -> None:
    """The default (gpu-model-check.yaml as an 8-layer training slice on the catalog's h200): every kind priced,
    the backward dearer than the forward, and the passes plus the optimizer inside the priced step."""
    assert b.main(["--price-only"]) == 0
    priced = json.loads(capsys.readouterr().out)["priced"]
    assert priced["device"] == "h200" and priced["fits"]
    assert priced["options"] == {"attention_kernel": "cudnn", "master_weights": False, "optimizer": "foreach"}
    fwd, bwd = priced["by_phase"]["forward"], priced["by_phase"]["backward"]
    assert all(fwd[k] > 0 and bwd[k] > fwd[k] for k in ("gemm", "attention", "other"))
    passes = sum(fwd.values()) + sum(bwd.values())
    assert passes + priced["optimizer_s"] + priced["rest_s"] == pytest.approx(priced["step_s"], abs=2e-6)
    assert priced["rest_s"] >= 0


@pytest.mark.parametrize("argv, words", [
    (["--set", "workload.mode=decode"], "workload.mode: 'decode'; allowed: train"),
    (["--steps", "0"], "--steps '0': allowed: a whole number from 1 to 20"),
    (["no-such.yaml"], "no-such.yaml: cannot read file"),
    # trial 39: a case the cost model refuses was a traceback (exit 1)
    (["--price-only", "--set", "backends.roofline.hardware=a100-80gb"],
     "attention kernel 'cudnn' has no measured efficiency on this device"),
])
def test_bad_input_is_one_line_and_exit_2(b, capsys, argv, words) -> None:
    assert b.main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_set_adds_to_the_built_in_training_step(b, capsys) -> None:
    """Trial 39: one --set dropped the script's own settings (8 layers, batch 2, train), so `--set workload.batch=4`
    priced the scenario's prefill and failed. Now it prices the 8-layer slice at batch 4: twice the passes' work."""
    assert b.main(["--price-only"]) == 0
    two = json.loads(capsys.readouterr().out)["priced"]
    assert b.main(["--price-only", "--set", "workload.batch=4"]) == 0
    four = json.loads(capsys.readouterr().out)["priced"]
    gemm = lambda p: p["by_phase"]["forward"]["gemm"] + p["by_phase"]["backward"]["gemm"]  # noqa: E731
    assert 1.8 < gemm(four) / gemm(two) < 2.2 and four["fits"]
