"""Request-level serving: the `serving:` block of a scenario simulated on a cluster of model replicas.

* spec        the `serving:` block (contract names: docs/scenario.md), pydantic
* requests    the request list: arrivals (poisson, gamma, constant, trace; or a closed loop of clients) and
              lengths, seeded, the same
              list for every backend
* kvcache     the paged KV cache of one replica (blocks of kv_block_tokens tokens)
* scheduling  the base class every policy subclasses (Iteration, mix_of, Scheduler)
* schedulers  static, continuous, chunked-prefill, and the hook through which plugins add policies
* policies/   the engines' own: prefill-first (vLLM V0's scheduler), tgi (TGI 2.1's router), sglang (SGLang 0.3's)
* replica     one replica as a SimPy process: its scheduler forms each iteration, the cost model prices it
* router      round-robin or least-outstanding across the replicas
* simulate    the whole run on the SimPy engine of llmsim.sim
* early_stop  stopping a run once its SLO is certainly missed (a rate search's probes at overload)
* bounds      a bound on a run's SLO attainment from the request list alone (probes a rate search skips)
* metrics     TTFT, TPOT, ITL, end-to-end and queueing latency, throughput, goodput, the per-request table

Torch-free, like llmsim.sim and llmsim.costmodel. Nothing is imported here: llmsim.config imports
`spec`, and the simulation modules import the cost model, which imports llmsim.config.
"""
