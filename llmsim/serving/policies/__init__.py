"""Serving engines' own scheduling policies, beside the generic ones of llmsim.serving.schedulers.

* `prefill-first` (vllm_v0.py): vLLM V0's default scheduler (chunked prefill off), as the mid-2024 engines of
  vLLM's performance benchmarks ran it: waiting prompts get an iteration of their own and pause every decode.
* `tgi` (tgi.py): Hugging Face TGI 2.1's router: new requests are prefilled in a pass of their own, then join
  the running batch, under its waiting_served_ratio / max_waiting_tokens admission rule and with their whole
  length reserved in the KV cache up front.
* `sglang` (sglang.py): SGLang 0.3's scheduler: prompt batches of their own (chunked at max_batched_tokens),
  admitted only while the cache can reserve each new request's whole output and a decaying share of the running
  ones' (new_token_ratio), and decodes retracted (recompute, to the back of the queue) when the cache runs out.

All subclass llmsim.serving.scheduling.Scheduler and are registered in llmsim.serving.schedulers.BUILTIN, so
`serving.scheduler.kind` names them and every path that builds a scheduler from the registry (the modeled
backends, the planner, calibration) runs them.
"""

from llmsim.serving.policies.sglang import SglangScheduler
from llmsim.serving.policies.tgi import TgiScheduler
from llmsim.serving.policies.vllm_v0 import PrefillFirstScheduler

__all__ = ["PrefillFirstScheduler", "SglangScheduler", "TgiScheduler"]
