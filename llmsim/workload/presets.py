"""Published model dimensions. Each preset cites where its numbers come from.

A preset is a dict of ModelSpec fields; explicit fields in a scenario override it. `tie_embeddings` is
the published model's own convention and becomes the default of `sharing.tie_embeddings`.
"""

from __future__ import annotations

from typing import Any

_GPT2 = dict(vocab=50257, seq_len=1024, max_positions=1024, activation="gelu", norm="layernorm",
             positions="learned", bias=True, causal=True, tie_embeddings=True)
_GPT3 = dict(vocab=50257, seq_len=2048, max_positions=2048, activation="gelu", norm="layernorm",
             positions="learned", bias=True, causal=True, tie_embeddings=True)
_BERT = dict(vocab=30522, seq_len=512, max_positions=512, type_vocab=2, activation="gelu", norm="layernorm",
             positions="learned", bias=True, causal=False, tie_embeddings=True, norm_eps=1e-12)
_LLAMA = dict(activation="swiglu", norm="rmsnorm", positions="rotary", bias=False, causal=True,
              tie_embeddings=False, norm_eps=1e-5)

PRESETS: dict[str, dict[str, Any]] = {
    # A toy for tests and the quickstart: every feature, seconds on a laptop.
    "tiny": dict(layers=2, hidden=64, heads=4, ffn_hidden=256, vocab=512, seq_len=64, max_positions=128,
                 activation="gelu", norm="layernorm", positions="learned", bias=True, causal=True,
                 tie_embeddings=True),
    # Devlin et al. 2019, "BERT", Table/Sec. 3: L=12, H=768, A=12 (110M); L=24, H=1024, A=16 (340M).
    "bert-base": dict(_BERT, layers=12, hidden=768, heads=12, ffn_hidden=3072),
    "bert-large": dict(_BERT, layers=24, hidden=1024, heads=16, ffn_hidden=4096),
    # Radford et al. 2019, "Language Models are Unsupervised Multitask Learners", Table 2 (117M/345M
    # as published; 124M/355M counted exactly from the released checkpoints).
    "gpt2-small": dict(_GPT2, layers=12, hidden=768, heads=12, ffn_hidden=3072),
    "gpt2-medium": dict(_GPT2, layers=24, hidden=1024, heads=16, ffn_hidden=4096),
    # Brown et al. 2020, "Language Models are Few-Shot Learners", Table 2.1. GPT-3 XL lists 24 heads of
    # 128 with d_model=2048, which do not multiply out; we keep d_head=128, i.e. 16 heads.
    "gpt3-1.3b": dict(_GPT3, layers=24, hidden=2048, heads=16, ffn_hidden=8192),
    "gpt3-175b": dict(_GPT3, layers=96, hidden=12288, heads=96, ffn_hidden=49152),
    # Touvron et al. 2023, "Llama 2", Table 1 and the released params.json (ffn from multiple_of=256).
    "llama2-7b": dict(_LLAMA, layers=32, hidden=4096, heads=32, kv_heads=32, ffn_hidden=11008, vocab=32000,
                      seq_len=4096, max_positions=4096),
    "llama2-70b": dict(_LLAMA, layers=80, hidden=8192, heads=64, kv_heads=8, ffn_hidden=28672, vocab=32000,
                       seq_len=4096, max_positions=4096),
    # Meta 2024, "The Llama 3 Herd of Models", Table 3 (8B: 32 layers, 4096, 32/8 heads, FFN 14336;
    # 70B: 80 layers, 8192, 64/8 heads, FFN 28672; vocabulary 128,256; context 8192).
    "llama3-8b": dict(_LLAMA, layers=32, hidden=4096, heads=32, kv_heads=8, ffn_hidden=14336, vocab=128256,
                      seq_len=8192, max_positions=8192, norm_eps=1e-5),
    "llama3-70b": dict(_LLAMA, layers=80, hidden=8192, heads=64, kv_heads=8, ffn_hidden=28672, vocab=128256,
                       seq_len=8192, max_positions=8192),
    # Qwen team 2025, "Qwen3 Technical Report", and the released config.json on Hugging Face (Qwen/Qwen3-4B,
    # Qwen/Qwen3-8B): head_dim 128 stated apart from hidden/heads, per-head q/k RMSNorm ("qk_norm"),
    # rms_norm_eps 1e-6, no attention bias, 4B ties its embeddings and 8B does not. seq_len: the native
    # context of the model cards (32,768); max_position_embeddings 40,960.
    "qwen3-4b": dict(_LLAMA, layers=36, hidden=2560, heads=32, kv_heads=8, head_dim=128, qk_norm=True,
                     ffn_hidden=9728, vocab=151936, seq_len=32768, max_positions=40960, norm_eps=1e-6,
                     tie_embeddings=True),
    "qwen3-8b": dict(_LLAMA, layers=36, hidden=4096, heads=32, kv_heads=8, head_dim=128, qk_norm=True,
                     ffn_hidden=12288, vocab=151936, seq_len=32768, max_positions=40960, norm_eps=1e-6,
                     tie_embeddings=False),
    # Gemma Team 2024, "Gemma: Open Models Based on Gemini Research and Technology", Table 1, and the released
    # config.json (google/gemma-7b): 28 layers, d_model 3072, 16 heads of 256 (16 x 256 = 4096 != 3072),
    # multi-head (16 KV heads), GeGLU FFN 24576 (the paper's "feedforward hidden dims" 49152 count gate and
    # up together), vocabulary 256,000, tied, RMSNorm (eps 1e-6), rotary, no bias, context 8192.
    # Gemma's embedding scaling by sqrt(d_model) and its (1 + w) RMSNorm are neither parameters nor GEMMs.
    "gemma-7b": dict(_LLAMA, activation="geglu", layers=28, hidden=3072, heads=16, kv_heads=16, head_dim=256,
                     ffn_hidden=24576, vocab=256000, seq_len=8192, max_positions=8192, norm_eps=1e-6,
                     tie_embeddings=True),
    # -- mixtures of experts (docs/moe.md) ------------------------------------------------------------------
    # Jiang et al. 2024, "Mixtral of Experts", Table 1, and the released config.json (mistralai/Mixtral-8x7B-v0.1):
    # 32 layers, 4096, 32/8 heads, 8 experts of SwiGLU width 14336, top-2 with renormalised gates, vocabulary
    # 32,000, untied, context 32,768, rms_norm_eps 1e-5, router_aux_loss_coef 0.02; every layer is MoE.
    "mixtral-8x7b": dict(_LLAMA, layers=32, hidden=4096, heads=32, kv_heads=8, ffn_hidden=14336, vocab=32000,
                         seq_len=32768, max_positions=32768, norm_eps=1e-5,
                         moe=dict(experts=8, top_k=2, expert_ffn_hidden=14336, norm_topk_prob=True,
                                  aux_loss_coeff=0.02)),
    # Qwen team 2025, "Qwen3 Technical Report" (Table 2: 48 layers, 32/4 heads, 128 experts, 8 activated, no
    # shared experts) and the released config.json (Qwen/Qwen3-30B-A3B): hidden 2048, head_dim 128, per-head
    # q/k RMSNorm, moe_intermediate_size 768, norm_topk_prob true, decoder_sparse_step 1 (every layer MoE),
    # router_aux_loss_coef 0.001, rms_norm_eps 1e-6, untied, context 32,768 (max_position_embeddings 40,960).
    "qwen3-30b-a3b": dict(_LLAMA, layers=48, hidden=2048, heads=32, kv_heads=4, head_dim=128, qk_norm=True,
                          ffn_hidden=6144, vocab=151936, seq_len=32768, max_positions=40960, norm_eps=1e-6,
                          tie_embeddings=False,
                          moe=dict(experts=128, top_k=8, expert_ffn_hidden=768, norm_topk_prob=True,
                                   aux_loss_coeff=0.001)),
    # Muennighoff et al. 2024, "OLMoE: Open Mixture-of-Experts Language Models", Table 1, and the released
    # config.json (allenai/OLMoE-1B-7B-0924): 16 layers, 2048, 16 heads (multi-head), 64 experts of SwiGLU width
    # 1024, top-8 without renormalisation (norm_topk_prob false), aux loss 0.01, q/k RMSNorm over the whole
    # q and k projections (transformers' OlmoeAttention: q_norm of hidden_size, k_norm of kv_heads*head_dim),
    # vocabulary 50,304, untied, context 4096, rms_norm_eps 1e-5. (Its router z-loss adds no parameters.)
    "olmoe-1b-7b": dict(_LLAMA, layers=16, hidden=2048, heads=16, kv_heads=16, qk_norm="projection",
                        ffn_hidden=1024, vocab=50304, seq_len=4096, max_positions=4096, norm_eps=1e-5,
                        moe=dict(experts=64, top_k=8, expert_ffn_hidden=1024, norm_topk_prob=False,
                                 aux_loss_coeff=0.01)),
    # -- multi-head latent attention (docs/scenario.md `mla`) --------------------------------------------------
    # DeepSeek-AI 2024, "DeepSeek-V3 Technical Report" (arXiv 2412.19437) Sec. 4.2 and the released config.json
    # (deepseek-ai/DeepSeek-V3): 61 layers, hidden 7168, 128 heads, q_lora_rank 1536, kv_lora_rank 512,
    # qk_nope_head_dim 128, qk_rope_head_dim 64, v_head_dim 128, intermediate_size 18432 (the first 3 dense
    # layers: first_k_dense_replace 3), 256 routed experts of moe_intermediate_size 2048 + 1 shared, top 8
    # (norm_topk_prob true), moe_layer_freq 1, vocabulary 129,280, untied, rms_norm_eps 1e-6, no attention
    # bias, max_position_embeddings 163,840 (seq_len: the 4K pre-training length, Sec. 4.2). The multi-token
    # prediction module (14B of the checkpoint's 685B) is not built. Its sigmoid gate with a bias
    # (topk_method noaux_tc, no auxiliary loss) is priced as llmsim's softmax router: the same hidden x experts
    # GEMM; aux_loss_coeff 0.0001 is the report's sequence-wise balance factor alpha (Sec. 4.2).
    "deepseek-v3": dict(_LLAMA, layers=61, hidden=7168, heads=128, ffn_hidden=18432, vocab=129280, seq_len=4096,
                        max_positions=163840, norm_eps=1e-6,
                        mla=dict(kv_lora_rank=512, q_lora_rank=1536, qk_nope_head_dim=128, qk_rope_head_dim=64,
                                 v_head_dim=128),
                        moe=dict(experts=256, top_k=8, expert_ffn_hidden=2048, shared_experts=1,
                                 first_dense_layers=3, norm_topk_prob=True, aux_loss_coeff=0.0001)),
    # DeepSeek-AI 2024, "DeepSeek-V2" (arXiv 2405.04434) Sec. 3.1.2 and the released config.json
    # (deepseek-ai/DeepSeek-V2): 60 layers, hidden 5120, 128 heads, q_lora_rank 1536, kv_lora_rank 512, nope 128,
    # rope 64, v 128, intermediate_size 12288 (first_k_dense_replace 1), 160 routed experts of 1536 + 2 shared,
    # top 6 (norm_topk_prob false), vocabulary 102,400, untied, rms_norm_eps 1e-6, seq_len 4096 (pre-training).
    "deepseek-v2": dict(_LLAMA, layers=60, hidden=5120, heads=128, ffn_hidden=12288, vocab=102400, seq_len=4096,
                        max_positions=163840, norm_eps=1e-6,
                        mla=dict(kv_lora_rank=512, q_lora_rank=1536),
                        moe=dict(experts=160, top_k=6, expert_ffn_hidden=1536, shared_experts=2,
                                 first_dense_layers=1, norm_topk_prob=False, aux_loss_coeff=0.003)),
    # DeepSeek-V2 paper Appendix B (DeepSeek-V2-Lite) and the released config.json (deepseek-ai/DeepSeek-V2-Lite):
    # 27 layers, hidden 2048, 16 heads, no query compression (q_lora_rank null), kv_lora_rank 512, intermediate
    # 10944 (first layer dense), 64 routed experts of 1408 + 2 shared, top 6, vocabulary 102,400, untied.
    "deepseek-v2-lite": dict(_LLAMA, layers=27, hidden=2048, heads=16, ffn_hidden=10944, vocab=102400,
                             seq_len=4096, max_positions=163840, norm_eps=1e-6,
                             mla=dict(kv_lora_rank=512, q_lora_rank=None),
                             moe=dict(experts=64, top_k=6, expert_ffn_hidden=1408, shared_experts=2,
                                      first_dense_layers=1, norm_topk_prob=False, aux_loss_coeff=0.001)),
    # A toy of DeepSeek's shape for tests and the cpu scenario: MLA (both latents) and MoE with a shared expert
    # and a dense first layer, seconds on a laptop.
    "tiny-mla": dict(layers=2, hidden=64, heads=4, ffn_hidden=128, vocab=512, seq_len=64, max_positions=128,
                     activation="swiglu", norm="rmsnorm", positions="rotary", bias=False, causal=True,
                     tie_embeddings=False,
                     mla=dict(kv_lora_rank=32, q_lora_rank=48, qk_nope_head_dim=16, qk_rope_head_dim=8,
                              v_head_dim=16),
                     moe=dict(experts=4, top_k=2, expert_ffn_hidden=64, shared_experts=1, first_dense_layers=1)),
    # OpenAI 2025, gpt-oss-120b & gpt-oss-20b model card (arXiv:2508.10925, Table 1: 116.8B / 20.9B total, 5.1B /
    # 3.6B active), and the released config.json (huggingface.co/openai/gpt-oss-20b and gpt-oss-120b): 24 / 36
    # layers, hidden 2880, 64 query heads and 8 KV heads of head_dim 64 (64 x 64 = 4096 != 2880), attention
    # bias, 32 / 128 routed experts of width 2880 (intermediate_size), top 4 (experts_per_token) with the
    # softmax over the chosen 4 (= renormalised top-k), expert biases, vocabulary 201,088, untied, RMSNorm (eps
    # 1e-5), rotary (YaRN to max_position_embeddings 131,072), layer_types alternating sliding_attention /
    # full_attention from layer 0 with sliding_window 128 (full_attention_every 2), attention sinks, and the
    # experts' weights stored in MXFP4 (quantization_config quant_method mxfp4, modules_to_not_convert: the
    # attention, router, embeddings and head). Its SwiGLU clamps (swiglu_limit 7.0, alpha 1.702): priced as
    # llmsim's swiglu (elementwise ops in the fused expert kernel, no GEMM); its router's bias (experts per
    # layer, 768 / 4,608 parameters in all) is not built. `moe.expert_weight_dtype: mxfp4` is the checkpoint's.
    "gpt-oss-20b": dict(_LLAMA, layers=24, hidden=2880, heads=64, kv_heads=8, head_dim=64, ffn_hidden=2880,
                        vocab=201088, seq_len=131072, max_positions=131072, norm_eps=1e-5, bias=True,
                        sliding_window=128, full_attention_every=2, attention_sinks=True,
                        moe=dict(experts=32, top_k=4, expert_ffn_hidden=2880, norm_topk_prob=True,
                                 expert_weight_dtype="mxfp4")),
    "gpt-oss-120b": dict(_LLAMA, layers=36, hidden=2880, heads=64, kv_heads=8, head_dim=64, ffn_hidden=2880,
                         vocab=201088, seq_len=131072, max_positions=131072, norm_eps=1e-5, bias=True,
                         sliding_window=128, full_attention_every=2, attention_sinks=True,
                         moe=dict(experts=128, top_k=4, expert_ffn_hidden=2880, norm_topk_prob=True,
                                  expert_weight_dtype="mxfp4")),
    # A toy mixture of experts for tests and the cpu scenario: every MoE feature, seconds on a laptop.
    "tiny-moe": dict(layers=2, hidden=64, heads=4, ffn_hidden=128, vocab=512, seq_len=64, max_positions=128,
                     activation="swiglu", norm="rmsnorm", positions="rotary", bias=False, causal=True,
                     tie_embeddings=False, moe=dict(experts=4, top_k=2, expert_ffn_hidden=128)),
}

# Exact parameter counts of the published checkpoints (with the preset's own tie convention).
# Used by the tests; GPT-2 from the released weights, Llama from the model cards.
PUBLISHED_PARAMS: dict[str, int] = {
    "gpt2-small": 124_439_808,
    "gpt2-medium": 354_823_168,
    # HF BertModel has 109,482,240 including the 590,592-parameter pooler, which llmsim does not build.
    "bert-base": 108_891_648,
    "llama2-7b": 6_738_415_616,
    "llama2-70b": 68_976_648_192,
    "llama3-8b": 8_030_261_248,
    "llama3-70b": 70_553_706_496,
    # The safetensors totals of the Hugging Face checkpoints (tied 4B counts its embedding once); both
    # include the 2 x head_dim q/k norm weights of every layer (without them: 9,216 fewer for 4B).
    "qwen3-4b": 4_022_468_096,
    "qwen3-8b": 8_190_735_360,
    # Gemma 7B: 7,751,248,896 non-embedding parameters (Gemma Team 2024, Table 2) plus the released
    # checkpoint's 256,000 x 3072 = 786,432,000 embedding (the paper's table counts 256,128 rows): the
    # 8,537,680,896 of google/gemma-7b (8.54 B).
    "gemma-7b": 8_537_680_896,
    # Mixtral 8x7B: the 46,702,792,704 of the released checkpoint (Jiang et al. 2024: "47B", "46.7B" in the
    # model card).
    "mixtral-8x7b": 46_702_792_704,
}

# Published (total, active) parameter counts of the MoE presets, as their sources round them; the tests check
# the exact counts llmsim builds against these at the stated precision (PUBLISHED_MOE_PRECISION).
# Mixtral: 46.7B total, 12.9B active (mistral.ai "Mixtral of experts" announcement, model card).
# Qwen3-30B-A3B: 30.5B total, 3.3B activated (the Qwen/Qwen3-30B-A3B model card; Qwen3 Technical Report Table 2:
# 30B / 3B). OLMoE-1B-7B: 6.9B total, 1.3B active (Muennighoff et al. 2024, Sec. 2 / Table 1).
PUBLISHED_MOE_PARAMS: dict[str, tuple[float, float]] = {
    "mixtral-8x7b": (46.7e9, 12.9e9),
    "qwen3-30b-a3b": (30.5e9, 3.3e9),
    "olmoe-1b-7b": (6.9e9, 1.3e9),
    # gpt-oss model card (arXiv:2508.10925), Table 1: 20.9B / 3.6B and 116.8B / 5.1B (total / active).
    "gpt-oss-20b": (20.9e9, 3.6e9),
    "gpt-oss-120b": (116.8e9, 5.1e9),
}
# Published (total, activated, precision) parameter counts of the DeepSeek (MLA) presets. DeepSeek-V3: 671B total,
# 37B activated (DeepSeek-V3 report, abstract and Sec. 4.2; the checkpoint's 685B include the 14B multi-token
# prediction module, not built). DeepSeek-V2: 236B total, 21B activated; DeepSeek-V2-Lite: 15.7B total, 2.4B
# activated (DeepSeek-V2 paper, abstract and Appendix B). DeepSeek's activated counts leave out the input
# embedding table (a row lookup, no compute): llmsim's count_active_parameters minus vocab x hidden agrees
# (V3 36.6B -> "37B", V2 20.9B -> "21B", Lite 2.45B -> "2.4B"); the V2/V3 figures are whole billions (within
# 0.5B), Lite's one decimal (within 0.1B).
PUBLISHED_MLA_PARAMS: dict[str, tuple[float, float, float]] = {
    "deepseek-v3": (671e9, 37e9, 0.5e9),
    "deepseek-v2": (236e9, 21e9, 0.5e9),
    "deepseek-v2-lite": (15.7e9, 2.4e9, 0.1e9),
}
# The sources give one decimal of a billion, rounded (Mixtral's 12.88B is "12.9B") or cut (Qwen's 3.353B active
# is "3.3B"), so a count agrees when it lies within 0.1B; the exact counts are checked by hand in the tests.
PUBLISHED_MOE_PRECISION = 0.1e9
# Presets whose source counts the active parameters without the token-embedding table (a lookup, no GEMM): the
# gpt-oss card's 3.6B / 5.1B are llmsim's 4.19B / 5.71B active less the 201,088 x 2880 = 579M embedding.
ACTIVE_WITHOUT_EMBEDDING = frozenset({"gpt-oss-20b", "gpt-oss-120b"})
