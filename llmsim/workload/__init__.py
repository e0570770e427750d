"""The Transformer workload, the one every backend runs or prices.

* presets  published model shapes (GPT-2/3, Llama 2/3, BERT, ...) as scenario defaults
* model    the one readable Transformer (`build_model`), with parameter sharing and LoRA, and the pieces a
           pipeline stage runs (`embed`, `run_layers`, `final`, `new_cache`)
* step     one step of it on one device (`WorkloadStep`): train with micro-batch accumulation, prefill,
           decode; the code real backends time and the profiler traces
* profile  that step traced on the meta device: FLOPs, bytes and op counts per (phase, region, kind),
           parameters, activations and KV cache, what the cost model prices (`profile_workload`)
"""
