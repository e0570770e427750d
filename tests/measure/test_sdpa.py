"""llmsim.measure.sdpa: which kernel torch's scaled_dot_product_attention ran, seen by a dispatch mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode

from llmsim.measure.sdpa import AttentionKernels, attention_kernel_watch, watching_first_call


def _qkv(requires_grad: bool) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(1, 2, 16, 8, requires_grad=requires_grad) for _ in range(3))


def test_the_kernel_sdpa_dispatches_to_is_seen_with_and_without_autograd() -> None:
    """With autograd the composite decomposes before the mode, which sees the backend op; in inference mode the
    composite reaches the mode whole and is decomposed there. On the CPU both run the fused flash-style loop."""
    for grad in (True, False):
        watch = AttentionKernels()
        context = torch.enable_grad() if grad else torch.inference_mode()
        with context, watch:
            out = F.scaled_dot_product_attention(*_qkv(grad), is_causal=True)
        assert watch.kernel == "flash-cpu" and out.shape == (1, 2, 16, 8)


def test_the_math_path_under_autograd_leaves_the_kernel_unknown() -> None:
    """A math-only call (a backend the fused kernels refuse) decomposes into matmuls before the mode: no name."""
    watch = AttentionKernels()
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH), watch:
        F.scaled_dot_product_attention(*_qkv(True))
    assert watch.kernel is None


def test_only_the_first_call_is_watched_and_none_without_an_untimed_step() -> None:
    watch = AttentionKernels()
    active: list[bool] = []

    def run(mark: object) -> None:
        active.append(_get_current_dispatch_mode() is watch)

    step = watching_first_call(run, watch)
    for _ in range(3):
        step(None)
    assert active == [True, False, False]
    assert attention_kernel_watch(0, compiled=False) is None      # warmup 0: the first call would be timed
    assert attention_kernel_watch(2, compiled=True) is None       # the mode would be traced into the graph
    assert isinstance(attention_kernel_watch(1, compiled=False), AttentionKernels)
