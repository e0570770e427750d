"""Which fused attention kernel torch's `scaled_dot_product_attention` ran in a measured step.

SDPA picks its backend at run time, by the device, the dtype, the shapes and the torch version. On an H200, torch
2.11 ran cuDNN's fused attention where the roofline's default prices FlashAttention-2 (docs/accelerators.md,
"Where a training step's time goes"; pytorch/pytorch#162073 made cuDNN the default on compute capability 9.0 and
10.0 for 2.9). A measured row therefore records what ran (result column `attention_kernel`), in the roofline's
`attention` names where one matches, so that `llmsim report` shows when the two sides priced and ran different
kernels.

How: SDPA is a composite op that dispatches to one aten op per backend; a TorchDispatchMode around one untimed step
sees that op (under inference mode the composite reaches the mode whole, and is decomposed there to see it). The math fallback has no op of its own under autograd (it decomposes into matmuls and a softmax before
the mode), so a step that shows no fused op leaves the column empty.
"""

from __future__ import annotations

from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

# the aten op SDPA dispatched to -> the kernel's name (the roofline's `attention` names where one matches)
SDPA_KERNELS = {
    "_scaled_dot_product_cudnn_attention": "cudnn",               # cuDNN's fused attention (Hopper, Blackwell)
    "_scaled_dot_product_flash_attention": "flash",               # FlashAttention-2, torch's own build
    "_scaled_dot_product_efficient_attention": "efficient",       # memory-efficient attention (xFormers' kernel)
    "_scaled_dot_product_flash_attention_for_cpu": "flash-cpu",   # the CPU's fused flash-style loop
    "_scaled_dot_product_attention_math": "math",                 # the math path where it reaches the mode whole
    "_scaled_dot_product_fused_attention_overrideable": "overrideable",  # a backend's own (XPU, HPU, ...)
}


class AttentionKernels(TorchDispatchMode):
    """Records the SDPA kernels dispatched while it is active, in first-seen order; passes every op through."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = func._overloadpacket.__name__
        if name == "scaled_dot_product_attention":
            # Without autograd (inference mode) the composite op reaches the mode whole and would pick its backend
            # out of sight: run its decomposition under the mode, which dispatches the same backend op.
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        kernel = SDPA_KERNELS.get(name)
        if kernel is not None and kernel not in self.seen:
            self.seen.append(kernel)
        return func(*args, **kwargs)

    @property
    def kernel(self) -> str | None:
        """'cudnn', or 'flash, efficient' where layers ran different ones; None where no fused kernel ran."""
        return ", ".join(self.seen) or None


def watching_first_call(run: Any, watch: AttentionKernels) -> Any:
    """`run` (a step: run(mark)) that records its first call's SDPA kernels in `watch`: give it to time_steps as the
    step, with warmup >= 1, so that the call watched is an untimed one."""
    calls = 0

    def step(mark: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            return run(mark)
        with watch:
            return run(mark)

    return step


def attention_kernel_watch(warmup: int, compiled: bool) -> AttentionKernels | None:
    """A watch for a measured step, or None where none can be kept: no untimed step to watch (warmup 0), or a
    compiled model (the mode would be traced into the graph, and Inductor lowers attention itself)."""
    return AttentionKernels() if warmup >= 1 and not compiled else None
