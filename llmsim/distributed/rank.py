"""One rank's share of a workload step under a strategy: the single-process step, parallelized.

A RankStep is a WorkloadStep (llmsim.workload.step) built from the scenario seed, so every rank starts
from the single process's weights, with this data-parallel replica's contiguous slice of the global
batch and, under tensor parallelism, KV caches of this rank's KV heads. The strategy is then applied
on the (pp, dp, tp) mesh (llmsim.distributed.parallelize): DDP, FSDP2, DTensor tensor/sequence
parallel, the pipeline schedules. Prefill and decode are the WorkloadStep's own; training replaces its
forward/backward by the parallel one (micro-batch accumulation with the data-parallel gradient
reduction on the last micro-batch, or the pipeline schedule) before the same optimizer update.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from llmsim.distributed.expert import ExpertParallelState, apply_expert_parallel, routing_loads
from llmsim.distributed.parallelize import (PipelineRunner, TensorParallelState, allreduce_gradients,
                                            apply_fully_shard, apply_tensor_parallel, build_mesh,
                                            vocab_parallel_loss, vocab_parallel_possible)
from llmsim.distributed.spec import WorkerSpec
from llmsim.stages import describe_split
from llmsim.workload.step import ADAMW_LR, Mark, WorkloadStep, no_mark
from llmsim.wording import count


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A replicated DTensor (the loss under loss_parallel) as a plain tensor; others unchanged."""
    full = getattr(t, "full_tensor", None)
    return full() if full is not None else t


class RankStep(WorkloadStep):
    """This rank's share of one workload step under the strategy, built on the (pp, dp, tp) mesh."""

    def __init__(self, spec: WorkerSpec, device: torch.device) -> None:
        self.mesh = build_mesh(device.type, spec.pp, spec.dp, spec.tp)
        model_spec = spec.workload.model
        local_kv = max((model_spec.kv_heads or model_spec.heads) // spec.tp, 1) if spec.tp > 1 else None
        super().__init__(spec.workload, spec.sharing, seed=spec.seed, device=device, micro_batch=spec.micro_batch,
                         replica=(self.mesh["dp"].get_local_rank(), spec.dp), kv_heads=local_kv)
        # They hold the unsharded parameters: dropped before sharding (rebuilt over the sharded ones below).
        self.trainable, self.optimizer = [], None
        self.worker_spec = spec
        self.mode = spec.workload.mode
        self.notes: dict[str, str] = {}
        self.tp_state = TensorParallelState()
        self.pipeline: PipelineRunner | None = None
        self.grad_sync_group: dist.ProcessGroup | None = None

        strategy = spec.strategy
        runner: Any = self.model
        # Expert parallelism first: each MoE layer keeps this rank's experts and dispatches by all-to-all.
        self.ep_state = ExpertParallelState(dp=spec.dp)
        if strategy.ep > 1:
            self.ep_state = apply_expert_parallel(self.model, self.mesh, strategy.ep)
            self.notes["ep"] = (f"experts split over {strategy.ep} data-parallel ranks, token dispatch and combine "
                                f"by all_to_all_single (gloo); expert gradients summed over the expert-data-"
                                f"parallel group ({self.ep_state.edp} ranks) and divided by dp")
        expert_tp = strategy.expert_tp == spec.tp
        if self.model.moe_modules() and spec.tp > 1:
            self.notes["etp"] = ("routed experts column/row-parallel over the TP ranks (etp = tp)" if expert_tp
                                 else "routed experts whole on every TP rank (etp = 1)")
        if spec.pp > 1:
            if spec.tp > 1:  # each stage's blocks tensor-parallel, embedding and head replicated (PP x TP)
                self.tp_state = apply_tensor_parallel(self.model, self.mesh, sequence_parallel=False,
                                                      expert_tp=expert_tp)
                self.notes["tp"] = ("DTensor parallelize_module inside each stage: qkv/fc colwise, out/proj "
                                    "rowwise; embedding and LM head replicated")
            self.pipeline = PipelineRunner(self.model, self.mesh, schedule=strategy.schedule,
                                           virtual_stages=strategy.virtual_stages,
                                           microbatches=spec.microbatches, device=device, zero=strategy.zero,
                                           stage_layers=spec.stage_layers or None,
                                           experts=self.ep_state.expert_params)
            if strategy.zero > 0 and spec.dp > 1:
                self.notes["zero"] = (f"fully_shard per block and per stage over dp "
                                      f"(reshard_after_forward={strategy.zero == 3})")
            params = [p for p in self.pipeline.parameters() if p.requires_grad]
            self.notes["pipeline"] = (f"{type(self.pipeline.schedule).__name__}, "
                                      f"{count(spec.microbatches, 'micro-batch')}, "
                                      f"layers per stage {describe_split(self.pipeline.stage_layers)}")
        else:
            if spec.tp > 1:
                vocab = self.mode == "train" and vocab_parallel_possible(self.model.spec, spec.tp)
                self.tp_state = apply_tensor_parallel(self.model, self.mesh, sequence_parallel=strategy.sp,
                                                      vocab_parallel=vocab, expert_tp=expert_tp)
                self.notes["tp"] = "DTensor parallelize_module: qkv/fc colwise, out/proj rowwise" + \
                    (", SequenceParallel norms" if strategy.sp else "") + \
                    ("; embedding rowwise and LM head colwise over the vocabulary, loss_parallel" if vocab
                     else "; embedding and LM head replicated")
            if strategy.zero > 0:
                self.notes["zero"] = apply_fully_shard(self.model, self.mesh["dp"], strategy.zero)
            elif spec.dp > 1 and self.mode == "train":
                if strategy.ep > 1:  # DDP would average different experts: reduce the rest by hand
                    self.grad_sync_group = self.mesh["dp"].get_group()
                    self.notes["dp"] = "flat gradient all-reduce of the non-expert parameters after backward"
                elif spec.tp == 1:
                    from torch.nn.parallel import DistributedDataParallel

                    runner = DistributedDataParallel(self.model, process_group=self.mesh["dp"].get_group())
                    self.notes["dp"] = "DistributedDataParallel"
                else:
                    self.grad_sync_group = self.mesh["dp"].get_group()
                    self.notes["dp"] = "flat gradient all-reduce after backward (DDP takes no DTensor parameters)"
            params = [p for p in self.model.parameters() if p.requires_grad]
        self.runner = runner
        self.trainable = params
        self.optimizer = torch.optim.AdamW(params, lr=ADAMW_LR) if self.mode == "train" else None
        self.losses: list[torch.Tensor] = []

    # -- ownership of the loss for reporting ---------------------------------------------------
    @property
    def owns_loss(self) -> bool:
        """One rank per data-parallel replica reports its replica's loss (the last stage, TP rank 0)."""
        last_stage = self.mesh["pp"].get_local_rank() == self.worker_spec.pp - 1
        return last_stage and self.mesh["tp"].get_local_rank() == 0

    # -- the step ------------------------------------------------------------------------------
    def step(self, mark: Mark = no_mark) -> torch.Tensor | None:
        if self.mode == "train":
            return self.train_step(mark)
        with torch.no_grad():  # not inference_mode: DTensor ops reject inference tensors
            return self.serve(mark)

    def train_step(self, mark: Mark = no_mark) -> torch.Tensor | None:  # type: ignore[override]
        """Forward and backward of this rank's share (pipeline schedule or micro-batch accumulation), the
        gradient synchronisation the strategy needs beyond DDP/FSDP, then the optimizer update."""
        assert self.optimizer is not None
        if self.pipeline is not None:
            loss = self.pipeline.train_step(self.tokens, self.targets)
            loss = self._with_pipeline_aux_loss(loss)
            self.tp_state.sync_replicated_kv()
        else:
            loss = self._accumulate()
            self.tp_state.sync_replicated_kv()
            if self.grad_sync_group is not None:
                allreduce_gradients([p for p in self.trainable if not self.ep_state.is_expert(p)],
                                    self.grad_sync_group, self.worker_spec.dp)
        if self.worker_spec.strategy.ep > 1:
            self.ep_state.sync_expert_gradients()
        mark("backward_done")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if loss is not None:
            self.losses.append(loss.detach())
        return loss

    def _accumulate(self) -> torch.Tensor:
        """Forward/backward per micro-batch of this replica's share (the scenario's micro_batch), as the
        single-process step and the cost model do; the data-parallel gradient reduction runs once, with
        the last micro-batch (DDP no_sync / FSDP set_requires_gradient_sync before it)."""
        size = self.micro_batch
        starts = range(0, self.batch, size)
        loss = torch.zeros((), device=self.device)
        self.model.set_aux_grad_scale(1.0 / len(starts))
        for i, start in enumerate(starts):
            last = i == len(starts) - 1
            with self._gradient_sync(last), vocab_parallel_loss(self.tp_state.vocab_parallel):
                logits = self.runner(self.tokens[start:start + size])
                part = F.cross_entropy(logits.flatten(0, 1).float(),
                                       self.targets[start:start + size].flatten()) / len(starts)
                part.backward()
            # MoE: the values of this micro-batch's aux losses (their gradient came through the layers)
            loss = loss + _plain(part.detach()) + self.model.pop_aux_loss() / len(starts)
        return loss

    def _with_pipeline_aux_loss(self, loss: torch.Tensor | None) -> torch.Tensor | None:
        """The pipeline's loss (last stage) plus the mean over micro-batches of every stage's MoE aux losses,
        summed over the pipeline group (collective over it; their gradients came through the layers, and the
        schedule divides every gradient by the micro-batches)."""
        if not self.model.moe_modules():
            return loss
        # One forward per micro-batch of each layer this rank holds: earlier ones are the stage's metadata
        # inference (torch.distributed.pipelining runs it on placeholder tensors before the first step).
        n = self.worker_spec.microbatches
        aux = torch.tensor([self.model.pop_aux_loss(keep_last=n) / n], dtype=torch.float64, device=self.device)
        dist.all_reduce(aux, group=self.mesh["pp"].get_group())
        return None if loss is None else loss + float(aux)

    def expert_loads(self) -> list[list[int]]:
        """Tokens routed to each expert per distinct MoE layer over every step run, summed over all ranks and
        divided by tp (the TP ranks of a replica route the same tokens). Collective."""
        loads = routing_loads(self.model, dist.group.WORLD)
        return [[c // self.worker_spec.tp for c in layer] for layer in loads]

    def _gradient_sync(self, enabled: bool) -> Any:
        """A context in which DDP / FSDP reduce gradients only when `enabled` (the last micro-batch)."""
        if hasattr(self.runner, "no_sync") and not enabled:
            return self.runner.no_sync()
        setter = getattr(self.model, "set_requires_gradient_sync", None)
        if setter is not None:
            setter(enabled)
        return contextlib.nullcontext()

    def global_losses(self) -> list[float]:
        """The global-batch loss of each training step: the mean over data-parallel replicas (collective)."""
        n = len(self.losses) if self.owns_loss else 0
        counts = torch.tensor([n], dtype=torch.int64, device=self.device)
        dist.all_reduce(counts, op=dist.ReduceOp.MAX)
        total = int(counts.item())
        if total == 0:
            return []
        vec = torch.zeros(total, dtype=torch.float64, device=self.device)
        if self.owns_loss:
            vec += torch.stack(self.losses).to(torch.float64)
        dist.all_reduce(vec)
        return (vec / self.worker_spec.dp).tolist()
