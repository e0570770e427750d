"""The meta-device trace behind the workload profile (llmsim.workload.profile): one step run on shapes only.

The step is traced on the meta device (shapes only, no memory, no arithmetic) under a
TorchDispatchMode that sees every aten op. For each op we record
* FLOPs, from torch's own formulas (`torch.utils.flop_counter.flop_registry`; matmuls and attention),
* bytes moved, as the sizes of its tensor inputs plus outputs (views and allocations move nothing),
* its kind: `matmul`, `attention` or `other` (memory-bound: norms, activations, adds, softmax, ...),
* its phase (forward, backward, optimizer, prefill, decode) and region (embed, layers, experts, head), from
  torch's ModuleTracker, so a cost model can split layers over pipeline stages. `experts` holds the ops of
  the routed experts of MoE layers (their MLPs), traced with balanced routing (llmsim.workload.moe: each
  expert gets tokens*top_k/experts tokens, so the FLOPs are exactly those of top-k routing); the router,
  the token permutation and the shared experts stay in `layers`.
Activation bytes are the tensors autograd saves for backward in the forward pass, deduplicated by
storage, parameters excluded.

The only module of the profile that imports torch: llmsim.workload.profile imports it when a trace is
asked for (and llmsim.workload.warm ahead of a trace, in `llmsim plan`'s spare worker), so a process that reads a
profile back (llmsim.workload.profile_store) never loads torch. A trace
also imports torch._dynamo (~1.4 s here), which torch asks for itself: every elementwise reference its meta
kernels run (torch/_prims_common/wrappers.py, `@torch._disable_dynamo`), the first call of a
TorchDispatchMode's `__torch_dispatch__` (torch/utils/_python_dispatch.py, `_should_skip_dynamo`), and the
optimizer's step (torch/optim/optimizer.py, `_use_grad_for_differentiable`) each import it; no public API
avoids it.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry
from torch.utils.module_tracker import ModuleTracker

from llmsim.config import SharingChoice, Workload
from llmsim.costmodel.window import causal_window_share
from llmsim.workload.model import LORA_MERGE_MARK, count_active_parameters
from llmsim.workload.profile_data import OpTotals, WorkloadProfile
from llmsim.workload.step import WorkloadStep

_EXPERTS_MARK = ".mlp.experts."  # module path of a routed expert (llmsim.workload.moe.MoELayer.experts)
_ATTENTION_MARK = "attention"
_BLOCK = re.compile(r"\.blocks\.(\d+)")   # module path of the Transformer block an op runs in
_MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_scaled_mm", "convolution"}


def _tensor_bytes(tensors: list) -> int:
    """Bytes the tensors occupy in memory: a broadcast (stride-0, `expand`ed) dimension repeats the same
    elements, so it is not counted (a weight expanded over the batch for a bmm is read once, not b times)."""
    total = 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            elements = 1
            for size, stride in zip(t.shape, t.stride()):
                if stride != 0:
                    elements *= size
            total += elements * t.element_size()
    return total


def _storage_view(t: torch.Tensor) -> tuple:
    """What a tensor reads of its storage: the storage, offset, shape and strides (two slices of one
    storage, e.g. q and k of a fused QKV output, are two different reads)."""
    return _storage_key(t), t.storage_offset(), tuple(t.shape), tuple(t.stride())


# `other` ops a fusing compiler still runs as kernels of their own, so a chain breaks at them: the embedding's
# backward (a scatter-add into the table) and the data-dependent ops of MoE routing (aten fallbacks in
# Inductor, torch/_inductor/lowering.py make_fallback: sort, topk, nonzero; cumsum of the routing counts).
# The embedding lookup itself fuses with what reads it (Inductor lowers aten.embedding to a pointwise load
# with an indirect index; XLA fuses a gather into its consumers): it reads the rows it returns.
_UNFUSED_OPS = {"embedding_dense_backward", "sort", "topk", "nonzero", "cumsum", "argsort", "histc", "bincount"}

# Ops that only allocate: their output is uninitialised memory, so no kernel runs and no byte moves (a caching
# allocator hands out a block it holds: c10/cuda/CUDACachingAllocator.cpp; `torch.empty` documents "uninitialized
# data"). What fills the memory is an op of its own and is counted there (the KV cache's copy_ in each layer,
# autograd's copy_ into the new_empty_strided of an in-place view's backward). A serving engine allocates its KV
# cache once, not per step (vLLM's gpu_memory_utilization pool), and the prefill's `new_cache` (two aten.empty
# per layer, outside every module) once counted here as bytes moved in the `head` region, which a short trace
# scaled to the full depth kept at its own depth. The fusion tracker still sees them: a fresh buffer is written
# to HBM only once something outside its region needs it.
_ALLOCATION_OPS = {"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided", "empty_permuted"}


@functools.lru_cache(maxsize=None)
def _own_kernel(name: str) -> bool:
    """Whether the aten op `name` (e.g. 'aten::silu_backward') has a kernel of its own for the CPU, the backend every
    torch build has. torch's dispatcher runs an op's CompositeImplicitAutograd decomposition only on a backend with
    no kernel for it (c10 OperatorEntry::computeDispatchTableEntryWithDebug: a backend kernel comes before the
    composite one), so an op with one runs as that one kernel on the CPU and on CUDA. silu_backward has both (its
    composite math_silu_backward serves the other backends): decomposed, it was traced as about seven passes over
    the activation (sigmoid, ones, sub, mul x 3, add), where one kernel reads the gradient and the input and writes
    one result. Measured on an H200 (docs/accelerators.md, "Where a training step's time goes"): 8 silu_backward
    kernels, 1.63 ms a step, against 4.0 ms priced for the decomposition."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU")


@dataclass
class _Made:
    """An output of an elementwise kernel of `group`: written to HBM only once something outside that kernel
    needs it (`written`), then charged to the producer's `totals`."""

    group: tuple[str, int, str | None]
    nbytes: int
    totals: OpTotals
    written: bool = False


class _FusionTracker:
    """The HBM traffic of the traced step's elementwise ops when a compiler fuses them (OpTotals.fused_bytes).

    Mechanism: a compiler (torch.compile's Inductor, XLA) fuses the pointwise and reduction ops between two
    GEMMs into one kernel that keeps its intermediates in registers or on-chip memory and reads from and
    writes to HBM only what crosses the kernel's boundary. Inductor's scheduler fuses nodes that share
    reads or feed one another (Ansel et al. 2024, "PyTorch 2", ASPLOS, Sec. 4.4 "Scheduling and fusion";
    torch/_inductor/scheduler.py `can_fuse`); XLA's loop and input fusion do the same for elementwise ops and
    the reductions they feed (openxla.org/xla/operation_semantics; XLA GPU fusion pass, "Fusion" in the XLA
    architecture docs). A kernel cannot contain a GEMM, attention or other unfused op and what depends on
    it at once (that would be a cycle through the GEMM), so the elementwise ops of one phase are grouped by
    their GEMM depth: the longest chain of unfused ops from the phase's inputs to the op. Ops of one depth
    need no GEMM between them: one group = one fused region (any number of kernels that exchange nothing
    through HBM). Each Transformer block is a compiled region of its own, whose inputs and outputs go
    through HBM: torchtitan compiles each block separately (apply_compile), and MaxText runs its layers as
    the body of one jax.lax.scan (base.yml `scan_layers: True`), a loop body XLA does not fuse across; so a
    group is (phase, GEMM depth, block), and every block of a model costs the same (costmodel.scaling stays
    exact). Per group:
      reads  = each distinct input view not produced inside the group, once (what eager PyTorch reads per op)
      writes = each output that something outside the group needs: an unfused op (GEMM, attention), an
               elementwise op of another depth or phase, autograd's saved tensors (`saved`), or memory that
               outlives the step (an in-place update of a parameter, optimizer state or the KV cache).
    An output nothing reads is dead code to the compiler (not written). Assumptions: the saved tensors are
    eager autograd's (Inductor's min-cut partitioner may recompute cheap ops instead of saving them: fewer
    bytes still); a reduction is one pass over its input (Inductor's persistent reductions and XLA's input
    fusion; a vocab-wide softmax may take two); no elementwise op fuses into a GEMM's epilogue or prologue.
    """

    def __init__(self, attr: str = "fused_bytes") -> None:
        self.attr = attr                                 # the OpTotals field charged: fused_bytes, engine_bytes
        self.depth: dict[int, tuple[str, int]] = {}     # storage -> (phase, GEMM depth) of its last writer
        self.made: dict[int, _Made] = {}
        self.read: set[tuple] = set()                    # (group, storage view) read from HBM already
        self.alive: dict[int, object] = {}              # the storages keyed, kept alive (no address reuse)

    def _keep(self, t: torch.Tensor) -> int:
        key = _storage_key(t)
        self.alive.setdefault(key, t.untyped_storage())
        return key

    def _charge(self, totals: OpTotals, nbytes: float) -> None:
        setattr(totals, self.attr, (getattr(totals, self.attr) or 0.0) + nbytes)

    def need(self, key: int) -> None:
        """Something outside its kernel reads this storage: an elementwise kernel that made it writes it."""
        made = self.made.get(key)
        if made is not None and not made.written:
            made.written = True
            self._charge(made.totals, made.nbytes)

    def alias(self, ins: list, outs: list) -> None:
        """An op this tracker's engine does not run as a pass of its own (LoRA's scale and add, which a serving
        engine folds into the adapter's expand GEMM: `_OpRecorder`): no traffic; its outputs stand for its first
        tensor input (the base projection's output for the add, the expand's for the scale), at that input's
        GEMM depth and with its producer, so what reads them later fuses and is charged as without the op."""
        src = next((t for t in ins if isinstance(t, torch.Tensor)), None)
        if src is None:
            return
        key = _storage_key(src)
        for t in outs:
            if isinstance(t, torch.Tensor) and (out := self._keep(t)) != key:
                if key in self.depth:
                    self.depth[out] = self.depth[key]
                if key in self.made:
                    self.made[out] = self.made[key]

    def saved(self, t: torch.Tensor) -> None:
        """Autograd saves `t` for the backward: it goes to HBM."""
        self.need(_storage_key(t))

    def record(self, phase: str, block: str | None, kind: str, func: Any, args: tuple, ins: list, outs: list,
               totals: OpTotals, eager_bytes: float) -> None:
        """One op of `phase` whose eager traffic was `eager_bytes`: an elementwise one charges its fused
        traffic to `totals` (an `other` op that does not fuse, its eager bytes)."""
        name = func._overloadpacket.__name__
        fused = kind == "other" and name not in _UNFUSED_OPS
        schema_args = func._schema.arguments
        mutates = any(a.alias_info is not None and a.alias_info.is_write for a in schema_args)
        tensors = [t for t in ins if isinstance(t, torch.Tensor)]
        results = [t for t in outs if isinstance(t, torch.Tensor)]
        if fused and not mutates and results and {_storage_key(t) for t in results} <= {_storage_key(t) for t in tensors}:
            return                              # an alias (aten._unsafe_view, ...): no kernel, no traffic
        if fused and mutates and not results:   # in-place without a result (aten._foreach_add_, ...)
            results = [a for a, arg in zip(args, schema_args) if isinstance(a, torch.Tensor) and arg.alias_info
                       and arg.alias_info.is_write]
        depth = max((d for t in tensors for p, d in [self.depth.get(_storage_key(t), (phase, 0))] if p == phase),
                    default=0)
        if not fused:  # a GEMM, attention or unfused op: reads its inputs from HBM, its outputs one level deeper
            if kind == "other":
                self._charge(totals, eager_bytes)
            for t in tensors:
                self.need(_storage_key(t))
            for t in results:
                key = self._keep(t)
                self.depth[key] = (phase, depth + 1)
                self.made.pop(key, None)
            return
        group = (phase, depth, block)
        if getattr(totals, self.attr) is None:
            setattr(totals, self.attr, 0.0)
        in_keys = set()
        for i, t in enumerate(tensors):
            key = _storage_key(t)
            in_keys.add(key)
            if name == "copy_" and i == 0:      # the destination of a copy is written, not read
                continue
            if name == "embedding" and i == 0:  # a lookup reads the rows it returns, not the whole table
                self._charge(totals, _tensor_bytes(results))
                continue
            made = self.made.get(key)
            if made is not None and made.group == group:
                continue                        # made inside this fused region: never leaves the chip
            self.need(key)
            view = (group, _storage_view(t))
            if view not in self.read:
                self.read.add(view)
                self._charge(totals, _tensor_bytes([t]))
        for t in results:
            key = self._keep(t)
            self.depth[key] = (phase, depth)
            made = self.made.get(key)
            if made is not None and made.group == group:
                continue                        # updated in place inside the region
            nbytes = _tensor_bytes([t])
            if key in in_keys:                  # in place into memory that outlives this region: written
                self._charge(totals, nbytes)
                self.made[key] = _Made(group, nbytes, totals, written=True)
            else:
                self.made[key] = _Made(group, nbytes, totals)


class _OpRecorder(TorchDispatchMode):
    """Records FLOPs and bytes of every aten op, keyed by (phase, region, kind), and the fused traffic of the
    elementwise ones (_FusionTracker)."""

    def __init__(self, tracker: ModuleTracker, engine_lora: bool = False,
                 windowed_blocks: frozenset[str] = frozenset(), window_share: float = 1.0) -> None:
        super().__init__()
        self.tracker = tracker
        # Sliding-window layers (ModelSpec.sliding_window): the blocks (by index) whose attention is windowed and
        # the share of the causal prompt's pairs they compute (costmodel.window.causal_window_share): their
        # attention FLOPs outside decode are the causal kernel's counted ones times it. A decode step needs no
        # share: its keys are already the window's (the cache is cut to it: workload.model.Attention).
        self.windowed_blocks = windowed_blocks
        self.window_share = window_share
        self.phase = "forward"
        self.ops: dict[tuple[str, str, str], OpTotals] = defaultdict(OpTotals)
        self.fusion = _FusionTracker()
        # A model with LoRA traced for inference: also the traffic of a serving engine that runs LoRA's scale
        # and add inside the adapter's GEMMs (OpTotals.engine_bytes; `_record_engine`). None: not traced.
        self.engine = _FusionTracker("engine_bytes") if engine_lora else None

    def _where(self) -> tuple[str, bool]:
        """(region, inside core attention) from the modules the op runs in."""
        parents = self.tracker.parents
        in_attention = any(p.endswith(".core") for p in parents)
        if any(_EXPERTS_MARK in p for p in parents):
            return "experts", False
        if any(".blocks." in p for p in parents):
            return "layers", in_attention
        if any(p.endswith(("tok_emb", "pos_emb", "type_emb")) for p in parents):
            return "embed", False
        return "head", False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in flop_registry and not _own_kernel(func.name()):
            # Composite ops (aten.linear under inference_mode, ...) reach us undecomposed; decompose them
            # so that their matmuls are seen and counted like in training. Not an op with a kernel of its own
            # (_own_kernel): the device runs it as that one kernel.
            with self:  # re-enter this mode so that the decomposition's ops are recorded too
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        if func.is_view:
            return out
        name = packet.__name__
        flops = flop_registry[packet](*args, **kwargs, out_val=out) if packet in flop_registry else 0
        region, in_attention = self._where()
        kind = ("attention" if in_attention or _ATTENTION_MARK in name else
                "matmul" if name in _MATMUL_OPS else "other")
        ins, _ = tree_flatten((args, kwargs))
        outs, _ = tree_flatten(out)
        totals = self.ops[(self.phase, region, kind)]
        block = next((m.group(1) for p in self.tracker.parents if (m := _BLOCK.search(p))), None)
        if kind == "attention" and self.phase != "decode" and block in self.windowed_blocks:
            flops *= self.window_share
        totals.flops += flops
        if name == "embedding":  # a lookup reads the rows it returns, not the whole table
            nbytes = 2 * _tensor_bytes(outs) + _tensor_bytes(ins[1:2])
        else:
            nbytes = _tensor_bytes(ins) + _tensor_bytes(outs)
        if name in _ALLOCATION_OPS:  # no kernel, no traffic
            nbytes = 0
        else:
            totals.bytes += nbytes
            totals.count += 1
        self.fusion.record(self.phase, block, kind, func, args, ins, outs, totals, nbytes)
        if self.engine is not None:
            self._record_engine(region, block, kind, func, args, ins, outs, totals, nbytes)
        return out

    def _record_engine(self, region: str, block: str | None, kind: str, func: Any, args: tuple, ins: list,
                       outs: list, totals: OpTotals, nbytes: float) -> None:
        """The op as a serving engine with LoRA runs it (OpTotals.engine_bytes; docs/serving.md, "LoRA").

        vLLM folds the scaling alpha/r into B when it loads an adapter (vllm/lora/lora_weights.py,
        `LoRALayerWeights.optimize`: `self.lora_b *= self.scaling`) and its expand kernel adds x A^T B^T into the
        base projection's output in place (vllm/lora/punica_wrapper/punica_gpu.py `add_lora_linear`: shrink, then
        expand with add_inputs=True; vllm/lora/ops/triton_ops/kernel_utils.py `do_expand_kernel`: with ADD_INPUTS
        it loads the output tile, adds its accumulator and stores it). So LoRA's scale and add (the ops under a
        `LoRAMerge`) are no passes of their own: their traffic is the expand's one extra read of the output slice
        it adds to (its write is the expand's own output, traced already), charged to the layer GEMMs; every other
        op moves what it moves in `fusion`."""
        if any(p.endswith(LORA_MERGE_MARK) for p in self.tracker.parents):
            assert self.engine is not None
            self.engine.alias(ins, outs)
            if func._overloadpacket.__name__ in ("add", "add_"):   # the add: the expand reads the output it adds to
                base = next(t for t in ins if isinstance(t, torch.Tensor))
                gemms = self.ops[(self.phase, region, "matmul")]
                before = gemms.bytes if gemms.engine_bytes is None else gemms.engine_bytes
                gemms.engine_bytes = before + _tensor_bytes([base])
            return
        if kind != "other" and totals.engine_bytes is not None:
            totals.engine_bytes += nbytes          # a GEMM after the first add: its own traffic, as in `bytes`
        self.engine.record(self.phase, block, kind, func, args, ins, outs, totals, nbytes)


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class _SavedActivations:
    """Sums the bytes autograd saves for backward, once per storage, parameters and buffers excluded.

    Buffers are module state like parameters, resident whatever autograd saves: RoPE's cos and sin tables
    (RotaryEmbedding, cast to the model dtype with the model, so `.to(x.dtype)` is a no-op) are saved as views
    by every layer's rotation, one storage for the whole model. Counted, they went once into the layers' bytes
    of a trace, so a short trace scaled to L layers (costmodel.scaling.with_layers) counted them L/2 times
    (6,144 bytes too many for tiny-moe at 8 layers: 2 x 64 x 8 x 2 bytes, three times)."""

    def __init__(self, model: torch.nn.Module, tracker: ModuleTracker) -> None:
        self.param_storages = {_storage_key(t) for t in (*model.parameters(), *model.buffers())}
        self.tracker = tracker
        self.seen: dict[int, tuple[int, bool]] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in self.param_storages and key not in self.seen:
            in_layers = any(".blocks." in p for p in self.tracker.parents)
            self.seen[key] = (t.untyped_storage().nbytes(), in_layers)
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def total(self) -> int:
        return sum(n for n, _ in self.seen.values())

    @property
    def in_layers(self) -> int:
        return sum(n for n, inside in self.seen.values() if inside)


def _expert_counts(step: WorkloadStep) -> tuple[int, int]:
    """(routed-expert parameters, active parameters) of the built model (workload.model.count_active_parameters)."""
    experts = sum(m.expert_params() for m in step.model.moe_modules())
    return experts, count_active_parameters(step.model)


def _param_counts(step: WorkloadStep) -> tuple[int, int, int, int, int, int]:
    unique = {id(p): p for p in step.model.parameters()}
    size = {i: p.numel() for i, p in unique.items()}
    elem = torch.tensor([], dtype=step.dtype).element_size()
    params = sum(size.values())
    trainable = sum(size[i] for i, p in unique.items() if p.requires_grad)
    layer_ids = {id(p) for p in step.model.blocks.parameters()}
    layer_params = sum(size[i] for i in unique if i in layer_ids)
    return params, trainable, params * elem, trainable * elem, layer_params, params - layer_params


def trace_workload(workload: Workload, sharing: SharingChoice) -> WorkloadProfile:
    """The traced profile of `workload` as written (every layer built and run on the meta device)."""
    step = WorkloadStep(workload, sharing, device="meta")
    params, trainable, param_bytes, trainable_bytes, layer_params, embed_params = _param_counts(step)
    expert_params, active_params = _expert_counts(step)
    spec = workload.model
    tracker = ModuleTracker()
    windowed = frozenset(str(i) for i in range(len(step.model.blocks)) if spec.is_windowed_layer(i))
    recorder = _OpRecorder(tracker, engine_lora=sharing.lora is not None and workload.mode != "train",
                           windowed_blocks=windowed, window_share=causal_window_share(spec.seq_len,
                                                                                      spec.sliding_window))
    activation_bytes = activation_layers = kv_bytes = 0
    with tracker, recorder:
        if workload.mode == "train":
            saved = _SavedActivations(step.model, tracker)

            def pack(t: torch.Tensor) -> torch.Tensor:
                recorder.fusion.saved(t)
                return saved.pack(t)

            with torch.autograd.graph.saved_tensors_hooks(pack, saved.unpack):
                loss = step.forward_loss()
            activation_bytes, activation_layers = saved.total, saved.in_layers
            recorder.phase = "backward"
            loss.backward()
            recorder.phase = "optimizer"
            assert step.optimizer is not None
            step.optimizer.step()
            step.optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                recorder.phase = "prefill"
                token, cache = step.prefill(step.cache_len)
                if cache is not None:
                    kv_bytes = sum(_tensor_bytes([c.k, c.v]) for c in cache)
                if workload.mode == "decode" and workload.decode_tokens > 1:
                    n = workload.decode_tokens - 1
                    first, last = spec.seq_len, spec.seq_len + n - 1
                    recorder.phase = "decode"
                    step.decode_one(token, cache, first)
                    if n > 1:
                        step.decode_one(token, cache, last)
                    traced = 2 if n > 1 else 1
                    # Scale the traced decode steps to all n steps (affine in the position: exact). Only
                    # this phase records under "decode" keys, so they hold the traced steps alone.
                    for key, totals in list(recorder.ops.items()):
                        if key[0] == "decode":
                            recorder.ops[key] = OpTotals()
                            recorder.ops[key].add(totals, n / traced)
    return WorkloadProfile(
        mode=workload.mode, dtype=workload.dtype, batch=workload.batch, seq_len=spec.seq_len,
        layers=spec.layers, tokens_per_step=workload.tokens_per_step, params=params,
        trainable_params=trainable, param_bytes=param_bytes, trainable_param_bytes=trainable_bytes,
        layer_params=layer_params, embed_params=embed_params, activation_bytes=activation_bytes,
        activation_bytes_per_layer=activation_layers // spec.layers, kv_cache_bytes=kv_bytes,
        ops=dict(recorder.ops), moe_layers=spec.moe_layers, expert_params=expert_params,
        active_params=active_params, activation_bytes_in_layers=activation_layers)
