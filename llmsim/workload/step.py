"""One step of the workload: the exact code every real backend times and the profiler traces.

train   = forward, cross-entropy loss, backward, AdamW step over the trainable parameters
prefill = forward of the prompt with no grad, filling a KV cache (decoder) and producing the first
          token's logits; an encoder returns its hidden states (embedding/classification inference)
decode  = the prefill, then decode_tokens - 1 single-token forwards with the KV cache (greedy), so
          that decode_tokens new tokens exist per sequence

Inputs are random token ids from the scenario seed: nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from llmsim.config import Workload
from llmsim.config import SharingChoice
from llmsim.workload.model import Transformer, build_model

TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                        "float16": torch.float16,
                                        # float8 and float4 are traced (meta device) in their storage dtype, bf16; the FP8 and FP4
                                        # GEMMs are priced by llmsim.costmodel.precision, never executed
                                        "float8": torch.bfloat16, "float4": torch.bfloat16}
ADAMW_LR = 1e-4  # any small value: the step's cost does not depend on it

Mark = Callable[[str], None]


def no_mark(_: str) -> None:
    return None


class WorkloadStep:
    """Builds model, inputs and optimizer for one workload on one device, and runs steps of it.

    `batch` overrides the workload's global batch (inputs are then drawn for that batch). `replica`
    = (index, count) keeps one data-parallel replica's contiguous share of the global batch's inputs
    (drawn for the whole batch first, so the replicas together hold the single process's inputs), and
    `kv_heads` sizes the serving KV cache for the KV heads one device computes (a tensor-parallel rank's
    share); both are for a rank of a distributed run (llmsim.distributed.rank).
    Call `step(mark)`: `mark('first_token')` is called after the prefill of a decode step, and
    `mark('backward_done')` before the optimizer step of a training step, so the caller's clock can
    split time to first token from time per output token, and compute from the optimizer update.
    """

    def __init__(self, workload: Workload, sharing: SharingChoice, *, seed: int = 0,
                 device: torch.device | str = "cpu", batch: int | None = None,
                 micro_batch: int | None = None, replica: tuple[int, int] | None = None,
                 kv_heads: int | None = None) -> None:
        self.workload = workload
        self.spec = workload.model
        self.device = torch.device(device)
        self.dtype = TORCH_DTYPES[workload.dtype]
        self.kv_heads = kv_heads
        drawn = batch or workload.batch  # the inputs are drawn for this many sequences
        index, count = replica or (0, 1)
        self.batch = drawn // count  # ... and this step runs these
        # A training step accumulates gradients over batch / micro_batch micro-batches (the scenario's
        # `micro_batch`), as the cost model assumes; None = the whole batch in one forward/backward.
        self.micro_batch = min(micro_batch or self.batch, self.batch)
        if self.batch % self.micro_batch:
            raise ValueError(f"batch={self.batch} is not divisible by micro_batch={self.micro_batch}")
        decode_len = self.spec.seq_len + workload.decode_tokens if workload.mode == "decode" else self.spec.seq_len
        self.cache_len = decode_len
        if self.device.type != "meta":
            torch.manual_seed(seed)
        with self.device:
            self.model: Transformer = build_model(self.spec, tie_embeddings=sharing.tie_embeddings,
                                                  layer_groups=sharing.layer_groups, lora=sharing.lora,
                                                  max_positions=decode_len)
        self.model.to(dtype=self.dtype)
        generator = None if self.device.type == "meta" else torch.Generator(device=self.device).manual_seed(seed)
        shape = (drawn, self.spec.seq_len)
        self.tokens = torch.randint(0, self.spec.vocab, shape, device=self.device, generator=generator)
        self.targets = torch.randint(0, self.spec.vocab, shape, device=self.device, generator=generator)
        if count > 1:
            rows = slice(index * self.batch, (index + 1) * self.batch)
            self.tokens, self.targets = self.tokens[rows], self.targets[rows]
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = None
        if workload.mode == "train":
            self.model.train()
            # foreach=False on meta: the fused/foreach kernels need real storage for their scalars.
            self.optimizer = torch.optim.AdamW(self.trainable, lr=ADAMW_LR,
                                               foreach=None if self.device.type != "meta" else False)
        else:
            self.model.eval()

    # -- the three modes ------------------------------------------------------------------------
    def forward_loss(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Mean cross-entropy of sequences [start, stop) (default: the whole batch); for an MoE model plus the
        values of its layers' auxiliary load-balancing losses of this forward, a constant here: their gradient
        enters through the layers (llmsim.workload.moe.AuxLossAutoScaler), scaled by `aux_grad_scale`."""
        logits = self.model(self.tokens[start:stop])  # (B, T, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), self.targets[start:stop].flatten())
        aux = self.model.pop_aux_loss()
        return loss + aux if aux else loss

    def train_step(self, mark: Mark = no_mark) -> torch.Tensor:
        """Forward and backward per micro-batch (gradients accumulate), then one optimizer step.

        Each micro-batch's mean loss is scaled by 1/micro-batches, so the gradients and the returned
        loss equal those of the whole batch in one pass (all micro-batches have the same size)."""
        assert self.optimizer is not None
        count = self.batch // self.micro_batch
        loss = torch.zeros((), device=self.device)
        self.model.set_aux_grad_scale(1.0 / count)
        for start in range(0, self.batch, self.micro_batch):
            part = self.forward_loss(start, start + self.micro_batch) / count
            part.backward()
            loss = loss + part.detach()
        mark("backward_done")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def prefill(self, cache_len: int | None = None) -> tuple[torch.Tensor, list | None]:
        """Prompt forward. Returns (next tokens or hidden states, KV cache)."""
        if not self.spec.causal:
            return self.model(self.tokens, head="none"), None
        cache = self.model.new_cache(self.batch, cache_len or self.spec.seq_len, self.dtype, self.device,
                                     kv_heads=self.kv_heads)
        next_token = self.model(self.tokens, cache, head="last").argmax(dim=-1)  # (B, 1)
        return next_token, cache

    def decode_one(self, token: torch.Tensor, cache: list, position: int) -> torch.Tensor:
        """One generated token per sequence at `position` (the KV cache holds positions < position)."""
        return self.model(token, cache, start=position, head="last").argmax(dim=-1)

    def serve(self, mark: Mark = no_mark) -> torch.Tensor:
        """A prefill or decode step under the caller's grad mode (`step` uses inference_mode; torch_xla and
        DTensor want no_grad): the next tokens (or an encoder's hidden states), or the last generated ones."""
        if self.workload.mode == "prefill":
            return self.prefill()[0]
        token, cache = self.prefill(self.cache_len)
        mark("first_token")
        for i in range(self.workload.decode_tokens - 1):
            token = self.decode_one(token, cache, self.spec.seq_len + i)
        return token

    def step(self, mark: Mark = no_mark) -> torch.Tensor:
        if self.workload.mode == "train":
            return self.train_step(mark)
        with torch.inference_mode():
            return self.serve(mark)
