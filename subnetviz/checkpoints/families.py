"""Naming tables: one regex table per architecture family, and how a family is recognised.

Each table is a list of (regex on the name without its model prefix, module kind); the first
match wins. Tables are composed from shared pieces (dense attention/MLP, MoE experts and routers,
DeepSeek's MLA, Phi-3's fused projections, post-norm layouts) so that a family is one line here,
never a name substring test elsewhere. :mod:`~subnetviz.checkpoints.naming` applies them.

Verified against the tensor names ``transformers`` 5.24 writes with ``save_pretrained`` (Mixtral,
Qwen2-MoE, Qwen3-MoE, DeepSeek-V3, Llama-4 text, gpt-oss, Phi-3, Gemma-2/3, OLMo-2, Qwen3, GLM-4,
Hunyuan-MoE, ERNIE-4.5-MoE, Qwen3-Next, Apertus, LFM2, DeepSeek-V3.2, AFMoE, FlexOlmo, MiniMax-M2,
EXAONE-MoE, Qwen3.5 and Qwen3.5-MoE, Nemotron-H, Granite-4.0-H, Granite MoE, Granite MoE SWA, Falcon-H1, Jamba,
Mamba, Phi, StarCoder2, OPT, GLM, Gemma-4, GPT-BigCode, Step-3.7) and, where no class saves them (transformers-v5 packed
experts, DeepSeek's multi-token-prediction layer, vision towers of multimodal releases), the names of the released
checkpoints.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from subnetviz.errors import CheckpointError

Table = list[tuple[str, str]]

_DENSE: Table = [
    (r"embed_tokens\.", "embed"),
    # self_attn.N. / mlps.N.: a layer's attention sublayers and dense MLPs when it has several (LongCat-Flash)
    (r"self_attn\.(\d+\.)?q_proj\.", "q"),
    (r"self_attn\.(\d+\.)?k_proj\.", "k"),
    (r"self_attn\.(\d+\.)?v_proj\.", "v"),
    (r"self_attn\.(\d+\.)?o_proj\.", "o"),
    (r"(mlp|mlps\.\d+|feed_forward)\.gate_proj\.", "gate"),
    (r"(mlp|mlps\.\d+|feed_forward)\.up_proj\.", "up"),
    (r"(mlp|mlps\.\d+|feed_forward)\.down_proj\.", "down"),
    (r"input_layernorm\.", "attn_norm"),
    (r"post_attention_layernorm\.", "mlp_norm"),
    (r"(q_norm|k_norm|query_layernorm|key_layernorm|q_layernorm|k_layernorm)\.", "attn_norm"),  # (Hunyuan, LFM2)
    (r"(^|\.)attention_layernorm\.", "attn_norm"),  # Apertus
    (r"(^|\.)feedforward_layernorm\.", "mlp_norm"),
    (r"mlp\.act_fn\.", "act"),  # a learned activation's parameters (Apertus' xIELU)
    (r"linear_attn\.", "linear_attn"),  # linear-attention (Gated DeltaNet) layers of hybrids (Qwen3-Next)
    (r"self_attn\.(sinks|attention_sink_bias)$", "sinks"),  # (MiMo-V2)
    (r"self_attn\.(gate_proj|g_proj)\.|self_attn\.gate_bias$", "attn_gate"),  # a gate on attention's output
    (r"self_attn\.attn_sub_norm\.", "attn_norm"),  # BitNet: a norm inside attention and inside the MLP
    (r"mlp\.ffn_sub_norm\.", "mlp_norm"),
    (r"pre_feedforward_layernorm\.", "mlp_norm"),  # sandwich norms (see NameTable.sandwich)
    (r"post_feedforward_layernorm\.", "post_mlp_norm"),
    (r"(^|\.)post_norm1\.", "post_attn_norm"),  # (HyperCLOVA X: after attention, and after the MLP)
    (r"(^|\.)post_norm2\.", "post_mlp_norm"),
    # Kimi-Linear's delta attention (KDA) beside its q/k/v/o projections
    (r"self_attn\.(A_log|dt_bias)$|self_attn\.(b_proj|[fg]_[ab]_proj|[qkv]_conv1d|o_norm)\.", "linear_attn"),
    (r"self_attn\.dense\.", "o"),  # Phi-1/2
    (r"mlp\.(fc1|c_fc)\.", "mlp_in"),  # Phi-1/2, StarCoder2: an MLP without a gate
    (r"mlp\.(fc2|c_proj)\.", "mlp_out"),
    (r"^norm\.", "final_norm"),
    (r"^final_layernorm\.", "final_norm"),  # (Phi-1/2, Jamba, Falcon-H1)
    (r"lm_head\.", "lm_head"),
]
# Experts (per-expert tensors, shared experts, transformers-v5 / Llama-4 packed 3-D tensors) and routers.
_MOE: Table = [
    (r"experts\.\d+\.(w1|gate_proj)\.", "gate"),
    (r"experts\.\d+\.(w3|up_proj)\.", "up"),
    (r"experts\.\d+\.(w2|down_proj)\.", "down"),
    (r"shared_experts?\.gate_proj\.", "gate"),
    (r"shared_experts?\.up_proj\.", "up"),
    (r"shared_experts?\.down_proj\.", "down"),
    (r"experts\.gate_up_proj", "gate_up"),
    (r"experts\.down_proj", "down"),
    (r"shared_expert_gate\.", "router"),
    (r"moe_statics\.", "router"),  # ERNIE-4.5's expert bias, added to the router's scores
    (r"e_score_correction_bias$", "router"),  # (MiniMax-M2, EXAONE-MoE: beside the router, not in it)
    (r"mlp\.expert_bias$", "router"),  # (AFMoE)
    (r"mlp\.router\.", "router"),
    (r"block_sparse_moe\.gate\.", "router"),
    (r"block_sparse_moe\.gate_proj\.", "gate"),  # (Kimi-Linear's dense first layer keeps the MoE's name)
    (r"block_sparse_moe\.up_proj\.", "up"),
    (r"block_sparse_moe\.down_proj\.", "down"),
    (r"mlp\.gate\.", "router"),
    (r"feed_forward\.router\.", "router"),
]
# DeepSeek-V3's multi-token-prediction layer (layer num_hidden_layers; transformers ignores it on load), which
# GLM-4.5 (glm4_moe) stores alike
_MTP_LAYER: Table = [
    (r"\.eh_proj\.", "mtp_proj"),
    (r"\.(enorm|hnorm)\.", "norm"),
    (r"shared_head\.head\.", "lm_head"),
    (r"shared_head\.norm\.", "final_norm"),
]
_MLA: Table = [
    (r"self_attn\.indexer\.(wq_b|wk|weights_proj)\.", "indexer"),  # DeepSeek-V3.2's sparse-attention indexer
    (r"self_attn\.(\d+\.)?q_a_proj\.", "q_a"),  # (self_attn.N.: LongCat-Flash's two sublayers)
    (r"self_attn\.(\d+\.)?q_b_proj\.", "q_b"),
    (r"self_attn\.(\d+\.)?kv_a_proj_with_mqa\.", "kv_a"),
    (r"self_attn\.(\d+\.)?kv_b_proj\.", "kv_b"),
    (r"self_attn\.(\d+\.)?(q_a_layernorm|kv_a_layernorm)\.", "attn_norm"),
    *_MTP_LAYER,
]
# Mamba / Mamba-2 mixers (selective state-space layers): every tensor of one is module "ssm". Hybrids keep
# them under mamba. beside attention (Jamba, Falcon-H1, Bamba, Granite-4.0-H); Mamba, Falcon-Mamba and
# Nemotron-H name each layer's one mixer (Mamba, attention, MLP or MoE) mixer.
_SSM_PARTS = r"(in_proj|conv1d|x_proj|dt_proj|out_proj|norm|dt_layernorm|b_layernorm|c_layernorm)\.|(A_log|D|dt_bias)$"
_HYBRID: Table = [
    (rf"mamba\.({_SSM_PARTS})", "ssm"),
    (r"pre_ff_layernorm\.", "mlp_norm"),  # (Jamba, Falcon-H1, Bamba)
]
_MIXER: Table = [
    (r"^embeddings\.", "embed"),
    (r"^norm_f\.", "final_norm"),
    (r"mixer\.q_proj\.", "q"),
    (r"mixer\.k_proj\.", "k"),
    (r"mixer\.v_proj\.", "v"),
    (r"mixer\.o_proj\.", "o"),
    (rf"mixer\.({_SSM_PARTS})", "ssm"),
    (r"mixer\.(shared_experts\.|experts\.\d+\.)?up_proj\.", "up"),  # Nemotron-H: squared-ReLU MLPs, no gate
    (r"mixer\.(shared_experts\.|experts\.\d+\.)?down_proj\.", "down"),
    # the same experts packed, as transformers 5 holds them and a state-dict save stores them: up_proj (E, I, H),
    # down_proj (E, H, I)
    (r"mixer\.experts\.up_proj$", "up"),
    (r"mixer\.experts\.down_proj$", "down"),
    (r"mixer\.gate\.", "router"),
    (r"layers\.\d+\.norm\.", "norm"),  # the norm before each layer's one mixer, whatever it is
    (r"lm_head\.", "lm_head"),
]
# Granite MoE (3.0 MoE, Granite-4.0-H): every expert's [gate; up] packed in input_linear (E, 2I, H), down in
# output_linear (E, H, I), a shared MLP with a fused [gate; up] input_linear. transformers 5 holds (and a state-dict
# save stores) the same tensors as block_sparse_moe.experts.gate_up_proj / down_proj and router.weight.
_GRANITE_MOE: Table = [
    (r"block_sparse_moe\.input_linear\.", "gate_up"),
    (r"block_sparse_moe\.output_linear\.", "down"),
    (r"block_sparse_moe\.experts\.gate_up_proj", "gate_up"),
    (r"block_sparse_moe\.experts\.down_proj", "down"),
    (r"block_sparse_moe\.router\.", "router"),
    (r"shared_mlp\.input_linear\.", "gate_up"),
    (r"shared_mlp\.output_linear\.", "down"),
]
# Granite MoE SWA (granitemoe_swa): Granite MoE's router and shared MLP beside transformers-v5 packed experts,
# block_sparse_moe.experts.gate_up_proj (E, 2I, H) chunked in two along its rows, gate first
# (GraniteMoeSWAExperts), not interleaved as gpt-oss's are; attention sinks as gpt-oss has them (in _DENSE).
_GRANITE_MOE_SWA: Table = _GRANITE_MOE + _MOE + _DENSE
# OPT: under model.decoder., its own names for the output projection, the MLP and the norms.
_OPT: Table = [
    (r"self_attn\.out_proj\.", "o"),
    (r"layers\.\d+\.fc1\.", "mlp_in"),
    (r"layers\.\d+\.fc2\.", "mlp_out"),
    (r"self_attn_layer_norm\.", "attn_norm"),
    (r"layers\.\d+\.final_layer_norm\.", "mlp_norm"),
    (r"^final_layer_norm\.", "final_norm"),
    (r"^embed_positions\.", "pos_embed"),
    (r"^project_(in|out)\.", "embed"),  # (OPT-350m: embeddings projected to and from the hidden size)
]
# Gemma-3n / Gemma-4: per-layer embeddings (a second embedding table, projected into every layer's input);
# Gemma-3n's AltUp (extra residual streams: their mixing is "hc", as DeepSeek-V4's hyper-connections; the
# embedding's projections into and out of them go with the embedding) and LAuReL (a low-rank residual branch
# beside attention).
_PER_LAYER: Table = [
    (r"^embed_tokens_per_layer\.", "embed"),
    (r"^altup_(unembed_)?projections\.", "embed"),
    (r"(^|\.)altup\.", "hc"),
    (r"(^|\.)laurel\.", "laurel"),
    (r"^(per_layer_model_projection|per_layer_projection_norm)\.", "per_layer"),
    (r"(per_layer_input_gate|per_layer_projection|post_per_layer_input_norm)\.", "per_layer"),
]
# DeepSeek-V4, in its release's names (attn.wq_a, ffn.experts.E.w1, hc_attn_fn, ...) and in the ones
# transformers loads them as (self_attn.q_a_proj, mlp.experts.gate_up_proj, attn_hc.fn, ...): low-rank
# query and grouped low-rank output, one KV projection, a KV compressor (its indexer in sparse layers),
# attention sinks, and hyper-connections (hc: the learned mixing of the residual streams around each block).
_DEEPSEEK_V4: Table = [
    (r"^embed\.", "embed"),
    (r"^head\.", "lm_head"),
    (r"(^hc_head|hc_(attn|ffn)_|(attn|ffn)_hc\.)", "hc"),
    (r"(indexer)\.", "indexer"),
    (r"(attn|self_attn)\.compressor\.", "compressor"),
    (r"attn\.wq_a\.", "q_a"),
    (r"attn\.wq_b\.", "q_b"),
    (r"(attn\.wkv|self_attn\.kv_proj)\.", "kv_a"),
    (r"(attn\.wo_[ab]|self_attn\.o_[ab]_proj)\.", "o"),
    (r"(attn\.(q_norm|norm)|self_attn\.(q_a_norm|kv_norm))\.", "attn_norm"),
    (r"(attn\.attn_sink|self_attn\.sinks)$", "sinks"),
    (r"(^|\.)attn_norm\.", "attn_norm"),
    (r"(^|\.)ffn_norm\.", "mlp_norm"),
    (r"shared_experts\.w1\.", "gate"),
    (r"shared_experts\.w3\.", "up"),
    (r"shared_experts\.w2\.", "down"),
    (r"(ffn|mlp)\.gate\.", "router"),
]
# AFMoE (Arcee): sandwich norms (after attention; before and after the MLP) and a gate on attention's output.
_AFMOE: Table = [
    (r"post_attention_layernorm\.", "post_attn_norm"),
    (r"pre_mlp_layernorm\.", "mlp_norm"),
    (r"post_mlp_layernorm\.", "post_mlp_norm"),
]
# GLM-4 (dense): fused gate_up (halves, gate first) and norms after attention and after the MLP.
_GLM4: Table = [
    (r"mlp\.gate_up_proj\.", "gate_up"),
    (r"post_self_attn_layernorm\.", "post_attn_norm"),
    (r"post_mlp_layernorm\.", "post_mlp_norm"),
]
# LFM2: short-convolution operator layers beside attention ones, and its own MLP / norm names.
_LFM2: Table = [
    (r"(^|\.)conv\.", "conv"),
    (r"self_attn\.out_proj\.", "o"),
    (r"feed_forward\.w1\.", "gate"),
    (r"feed_forward\.w3\.", "up"),
    (r"feed_forward\.w2\.", "down"),
    (r"operator_norm\.", "attn_norm"),
    (r"ffn_norm\.", "mlp_norm"),
    (r"^embedding_norm\.", "final_norm"),  # applied after the last layer
]
# Step-3.5 / Step-3.7 (step3p5, its multimodal step3p7), in the names its releases store (and transformers 5's
# save_pretrained writes back): each MoE layer's routed experts stacked per part, moe.gate_proj / moe.up_proj
# (E, I, H) and moe.down_proj (E, H, I), its router moe.gate with the expert-choosing bias moe.router_bias beside
# it, and its shared expert share_expert; the MTP layers past num_hidden_layers as DeepSeek-V3's, whose head some
# releases name shared_head.output. (transformers loads them as mlp.experts.gate_up_proj / down_proj, mlp.gate and
# its e_score_correction_bias, and mlp.shared_experts: _MOE's names; g_proj, its gate on attention's output, is
# _DENSE's.)
_STEP3P5: Table = [
    (r"moe\.gate_proj\.", "gate"),
    (r"moe\.up_proj\.", "up"),
    (r"moe\.down_proj\.", "down"),
    (r"moe\.gate\.", "router"),
    (r"moe\.router_bias$", "router"),
    (r"share_expert\.gate_proj\.", "gate"),
    (r"share_expert\.up_proj\.", "up"),
    (r"share_expert\.down_proj\.", "down"),
    (r"shared_head\.output\.", "lm_head"),
]
_PHI3: Table = [(r"self_attn\.qkv_proj\.", "qkv"), (r"mlp\.gate_up_proj\.", "gate_up")]
# A multi-token-prediction module stored beside the layers (not as a layer past num_hidden_layers, as
# DeepSeek-V3's is): its own tensors, matched with the mtp component removed (see naming.mtp_split).
# Qwen3-Next / Qwen3.5: mtp.fc (the projection of [embedding; hidden]), mtp.pre_fc_norm_embedding / _hidden,
# mtp.norm; ERNIE-4.5: mtp_linear_proj.J, mtp_emb_norm.J, mtp_hidden_norm.J.
MTP_RULES: Table = [
    (r"^(fc|linear_proj|eh_proj)\.", "mtp_proj"),
    (r"^(pre_fc_norm_embedding|pre_fc_norm_hidden|emb_norm|hidden_norm|enorm|hnorm)\.", "norm"),
    (r"^(norm|final_layernorm|shared_head\.norm)\.", "final_norm"),
    (r"^(shared_head\.head|head)\.", "lm_head"),
]
# Gemma-2/3 and OLMo-2 normalise *after* attention and the MLP; Gemma adds a pre-feed-forward norm.
_POSTNORM: Table = [
    (r"(^|\.)layer_scalar$", "norm"),  # Gemma-4: a learned scale of each layer's output (a saved buffer)
    (r"post_attention_layernorm\.", "post_attn_norm"),  # (their pre/post feed-forward norms: in _DENSE)
]
_GPT2: Table = [
    (r"wte\.", "embed"),
    (r"wpe\.", "pos_embed"),
    (r"attn\.c_attn\.", "qkv"),
    (r"attn\.c_proj\.", "o"),
    (r"mlp\.c_fc\.", "mlp_in"),
    (r"mlp\.c_proj\.", "mlp_out"),
    (r"ln_1\.", "attn_norm"),
    (r"ln_2\.", "mlp_norm"),
    (r"ln_f\.", "final_norm"),
    (r"lm_head\.", "lm_head"),
]
# EXAONE-3.x (its releases' own names; transformers 5 reads them as Llama's and saves them back so)
_EXAONE: Table = [
    (r"^wte\.", "embed"),
    (r"attn\.attention\.q_proj\.", "q"),
    (r"attn\.attention\.k_proj\.", "k"),
    (r"attn\.attention\.v_proj\.", "v"),
    (r"attn\.attention\.out_proj\.", "o"),
    (r"mlp\.c_fc_0\.", "gate"),
    (r"mlp\.c_fc_1\.", "up"),
    (r"mlp\.c_proj\.", "down"),
    (r"ln_1\.", "attn_norm"),
    (r"ln_2\.", "mlp_norm"),
    (r"^ln_f\.", "final_norm"),
]
_NEOX: Table = [
    (r"embed_in\.", "embed"),
    (r"attention\.query_key_value\.", "qkv"),
    (r"attention\.dense\.", "o"),
    (r"mlp\.dense_h_to_4h\.", "mlp_in"),
    (r"mlp\.dense_4h_to_h\.", "mlp_out"),
    (r"input_layernorm\.", "attn_norm"),
    (r"post_attention_layernorm\.", "mlp_norm"),
    (r"final_layer_norm\.", "final_norm"),
    (r"embed_out\.", "lm_head"),
]
# Falcon (and BLOOM): GPT-NeoX's fused query_key_value and MLP names, its own norms (ln_attn / ln_mlp with the new decoder
# architecture, input_layernorm alone with parallel attention, post_attention_layernorm without it). Its fused
# rows follow the config's layout (naming.NameTable.fused_parts), not GPT-NeoX's.
_FALCON: Table = [
    (r"word_embeddings\.", "embed"),
    (r"word_embeddings_layernorm\.", "norm"),  # (BLOOM)
    (r"self_attention\.query_key_value\.", "qkv"),
    (r"self_attention\.dense\.", "o"),
    (r"mlp\.dense_h_to_4h\.", "mlp_in"),
    (r"mlp\.dense_4h_to_h\.", "mlp_out"),
    (r"(input_layernorm|ln_attn)\.", "attn_norm"),
    (r"(post_attention_layernorm|ln_mlp)\.", "mlp_norm"),
    (r"^ln_f\.", "final_norm"),
    (r"lm_head\.", "lm_head"),
]
_BERT: Table = [
    (r"word_embeddings\.", "embed"),
    (r"position_embeddings\.", "pos_embed"),
    (r"token_type_embeddings\.", "embed"),
    (r"embeddings\.LayerNorm\.", "norm"),
    (r"attention\.self\.query\.", "q"),
    (r"attention\.self\.key\.", "k"),
    (r"attention\.self\.value\.", "v"),
    (r"attention\.output\.dense\.", "o"),
    (r"attention\.output\.LayerNorm\.", "attn_norm"),
    (r"intermediate\.dense\.", "mlp_in"),
    (r"output\.dense\.", "mlp_out"),
    (r"output\.LayerNorm\.", "mlp_norm"),
    (r"pooler\.", "other"),
    (r"cls\.predictions\.decoder\.", "lm_head"),
    (r"cls\.predictions\.bias$", "lm_head"),  # the decoder's (vocab,) bias: resized with the vocabulary
    (r"cls\.", "other"),
]

FAMILIES: dict[str, Table] = {
    "llama": _DENSE,
    "mixtral": _MOE + _DENSE,
    "qwen_moe": _MOE + _DENSE + _MTP_LAYER,  # (GLM-4.5's MTP layer: DeepSeek-V3's names)
    "deepseek": _MLA + _MOE + _DENSE,
    "deepseek_v4": _DEEPSEEK_V4 + _MLA + _MOE + _DENSE,
    "llama4": _MOE + _DENSE,
    # gpt-oss: attention sinks, a router with a bias, and packed experts whose gate_up_proj (E, H, 2I)
    # interleaves gate and up along its last dim (gate = [..., ::2], up = [..., 1::2]; see naming.part_counts)
    "gpt_oss": _MOE + _DENSE,
    "phi3": _PHI3 + _DENSE,
    "glm4": _GLM4 + _DENSE,
    "afmoe": _AFMOE + _MOE + _DENSE,
    "step3p5": _STEP3P5 + _MOE + _DENSE + _MTP_LAYER,
    "olmo2_moe": _POSTNORM + _MOE + _DENSE,  # FlexOlmo: OLMo-2's norms after attention and the MLP
    "lfm2": _LFM2 + _DENSE,
    "gemma2": _PER_LAYER + _POSTNORM + _DENSE,  # Gemma-2/3/4 (text and the multimodal one's language model)
    "olmo2": _POSTNORM + _DENSE,
    "mamba_hybrid": _HYBRID + _MOE + _DENSE,  # Jamba, Falcon-H1, Bamba
    "mamba": _MIXER,  # Mamba, Mamba-2, Falcon-Mamba, Nemotron-H
    "granite_moe": _GRANITE_MOE + _HYBRID + _DENSE,
    "granite_moe_swa": _GRANITE_MOE_SWA,
    "opt": _OPT + _DENSE,
    "gpt2": _GPT2,
    "exaone": _EXAONE + _DENSE,
    # GPT-BigCode (StarCoder-1, SantaCoder): GPT-2's names, but its c_attn is an nn.Linear (out, in) whose rows
    # are [q; k; v] as the config says (multi_query or per head; naming.NameTable.fused_parts), not a Conv1D
    "gpt_bigcode": _GPT2,
    "gpt_neox": _NEOX,
    "falcon": _FALCON,
    "bert": _BERT,
}
# Components that hold an MTP module's layers (mtp.layers.J., mtp_block.J., mtp_layers.J.); any other
# mtp_<part> component is that part of the module (ERNIE-4.5's mtp_emb_norm.J -> emb_norm).
MTP_LAYER_PARTS = ("", "layers", "block", "dspark")
# config.json keys counting MTP layers stored as layers num_hidden_layers, num_hidden_layers + 1, ...
MTP_COUNT_KEYS = ("num_nextn_predict_layers", "num_mtp_layers")
# config.json model_type -> family
MODEL_TYPES = {
    "llama": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "mistral": "llama",
    "gemma": "llama",
    "olmo": "llama",
    "mixtral": "mixtral",
    "qwen2_moe": "qwen_moe",
    "qwen3_moe": "qwen_moe",
    "olmoe": "qwen_moe",
    "deepseek_v2": "deepseek",
    "deepseek_v3": "deepseek",
    "kimi_k2": "deepseek",
    "llama4": "llama4",
    "llama4_text": "llama4",
    "gpt_oss": "gpt_oss",
    "phi3": "phi3",
    "glm4": "glm4",
    "lfm2": "lfm2",
    "qwen3_next": "qwen_moe",
    "deepseek_v32": "deepseek",
    "deepseek_v4": "deepseek_v4",
    "longcat_flash": "deepseek",  # MLA, with two attention sublayers and two dense MLPs per layer
    "glm_moe_dsa": "deepseek",
    "minimax_m2": "mixtral",
    "kimi_linear": "mixtral",
    "exaone": "exaone",  # EXAONE-3.0 / 3.5
    "exaone_moe": "qwen_moe",
    "afmoe": "afmoe",
    "step3p5": "step3p5",  # Step-3.5-Flash (text)
    "step3p7": "step3p5",  # Step-3.7-Flash: Step-3.5's language model beside a vision tower
    "flex_olmo": "olmo2_moe",
    "glm4_moe": "qwen_moe",
    "ernie4_5_moe": "qwen_moe",
    "hunyuan_v1_moe": "qwen_moe",
    "gemma2": "gemma2",
    "gemma3": "gemma2",
    "gemma3_text": "gemma2",
    "gemma4": "gemma2",
    "gemma4_text": "gemma2",
    "gemma3n": "gemma2",
    "gemma3n_text": "gemma2",
    "jamba": "mamba_hybrid",
    "falcon_h1": "mamba_hybrid",
    "bamba": "mamba_hybrid",
    "mamba": "mamba",
    "mamba2": "mamba",
    "falcon_mamba": "mamba",
    "nemotron_h": "mamba",
    "granitemoe": "granite_moe",
    "granitemoeshared": "granite_moe",
    "granitemoehybrid": "granite_moe",
    "granitemoe_swa": "granite_moe_swa",
    "granite": "llama",
    "glm": "phi3",  # GLM-4 (v1): a fused [gate; up] like Phi-3's
    "phi": "llama",
    "starcoder2": "llama",
    "opt": "opt",
    "olmo2": "olmo2",
    # read with another family's table, verified on the model transformers 5.24 saves (no tensor unknown)
    "apertus": "llama",
    "apertus1p5_text": "llama",
    "arcee": "llama",
    "cohere": "llama",
    "cohere2": "llama",
    "cwm": "llama",
    "ernie4_5": "llama",
    "helium": "llama",
    "hunyuan_v1_dense": "llama",
    "internlm3": "llama",
    "jais2": "llama",
    "ministral": "llama",
    "ministral3": "llama",
    "nemotron": "llama",
    "seed_oss": "llama",
    "smollm3": "llama",
    "stablelm": "llama",
    "olmo3": "olmo2",
    "exaone4": "olmo2",  # norms after attention and the MLP only
    "vaultgemma": "gemma2",
    "phimoe": "mixtral",
    "cohere2_moe": "qwen_moe",
    "hy_v3": "qwen_moe",
    "lara_mini": "qwen_moe",
    "mellum": "qwen_moe",
    "solar_open": "qwen_moe",
    "axk2": "deepseek",
    "glm4_moe_lite": "deepseek",
    "minicpm3": "deepseek",
    "sarvam_mla": "deepseek",
    "youtu": "deepseek",
    "bitnet": "llama",
    "hyperclovax": "llama",
    "beam": "qwen_moe",
    "laguna": "qwen_moe",
    "mimo_v2_flash": "qwen_moe",
    # vision-language models whose language model is a Llama-like one (Mistral-Small-3.1/3.2's mistral; LLaVA's
    # llama, mistral, qwen2 or granite; Aya Vision's cohere2): checked on the models transformers 5.24 saves
    "mistral3": "llama",
    "llava": "llama",
    "llava_next": "llama",
    "aya_vision": "llama",
    "qwen2_vl": "llama",
    "qwen2_5_vl": "llama",
    "qwen3_vl": "llama",
    "qwen3_vl_moe": "qwen_moe",
    "qwen2_5_omni": "llama",  # the thinker (thinker.*) is read; audio, vision and speech sides are blocks of their own
    "qwen3_omni_moe": "qwen_moe",
    "qwen3_5": "llama",  # Qwen3.5: Gated DeltaNet layers (linear_attn) beside full attention
    "qwen3_5_text": "llama",
    "qwen3_5_moe": "qwen_moe",
    "qwen3_5_moe_text": "qwen_moe",
    "gpt2": "gpt2",
    "gpt_bigcode": "gpt_bigcode",
    "gpt_neox": "gpt_neox",
    "falcon": "falcon",
    "bloom": "falcon",  # Falcon's names; its fused query_key_value interleaved per head
    "bert": "bert",
    "roberta": "bert",
}
# config.json model_types whose full attention's q_proj holds, head by head, the query and a gate on attention's
# output: q_proj(x).view(..., heads, 2 * head_dim) chunked in two, query first (Qwen3NextAttention, and Qwen3.5's
# and Qwen3.5-MoE's copies of it); naming.NameTable.fused_parts splits its rows into q and attn_gate.
GATED_QUERY = ("qwen3_next", "qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text")
# Tell-tale names, most specific first: the family when config.json is missing or unknown.
TELLTALES = [
    ("hc_attn_fn", "deepseek_v4"),
    ("attn_hc.fn", "deepseek_v4"),
    ("block_sparse_moe.input_linear", "granite_moe"),
    ("block_sparse_moe.router.weight", "granite_moe_swa"),  # (before gpt-oss's sinks, which it has too)
    ("mixer.in_proj", "mamba"),
    ("mamba.in_proj", "mamba_hybrid"),
    ("self_attn_layer_norm", "opt"),
    ("kv_a_proj_with_mqa", "deepseek"),
    ("self_attn.sinks", "gpt_oss"),
    ("pre_mlp_layernorm", "afmoe"),
    ("block_sparse_moe.experts", "mixtral"),
    ("feed_forward.experts", "llama4"),
    ("mlp.experts.", "qwen_moe"),
    ("self_attn.qkv_proj", "phi3"),
    ("post_self_attn_layernorm", "glm4"),
    ("operator_norm", "lfm2"),
    ("pre_feedforward_layernorm", "gemma2"),
    ("post_feedforward_layernorm", "olmo2"),
    ("self_attn.q_proj", "llama"),
    ("attn.c_attn", "gpt2"),
    ("self_attention.query_key_value", "falcon"),
    ("attention.query_key_value", "gpt_neox"),
    ("attention.self.query", "bert"),
    # A mask of the MLP alone (masked training or LoRA on the MLP) holds none of the names above. Each of these
    # reads alike under every table that knows it (gate/up/down; gate_up split in halves, gate first, as Phi-3's,
    # GLM-4's and GLM's tables split it; GPT-2's, GPT-BigCode's and StarCoder2's c_fc / c_proj): last, so they
    # tell only where nothing above does. (mlp.c_fc. with its dot: EXAONE's c_fc_0 / c_fc_1 are gate and up.)
    ("mlp.gate_up_proj.", "phi3"),
    ("mlp.gate_proj.", "llama"),
    ("mlp.up_proj.", "llama"),
    ("mlp.down_proj.", "llama"),
    ("mlp.c_fc.", "gpt2"),
]

# Prefixes stripped before matching (the first that fits): multimodal language models sit under these.
PREFIXES = (
    "thinker.model.language_model.",  # omni models (Qwen2.5-Omni, Qwen3-Omni): the thinker is the language model
    "thinker.model.",
    "thinker.",
    "model.language_model.",
    "language_model.model.",
    "language_model.",
    "model.decoder.",
    "model.",
    "transformer.",
    "gpt_neox.",
    "backbone.",
    "bert.",
    "roberta.",
    "base_model.",
)
# A vision tower (its own block, whatever its inner layout) and the projector into the language model: Gemma-3n's
# embed_vision (Gemma3nMultimodalEmbedder, the tower's output projected into the text embedding) and LLaVA-NeXT's
# image_newline (the learned vector set after each row of image features) are the projector's.
VISION = re.compile(r"^(vision_tower|vision_model|visual|vision_encoder)\.")
PROJECTOR = re.compile(
    r"^(multi_modal_projector|mm_projector|visual\.merger|visual\.deepstack_merger_list|embed_vision)\.|^image_newline$"
    r"|^vit_large_projector\."  # (Step-3.7's release: transformers loads it as model.multi_modal_projector)
)  # (Qwen3-VL's deepstack mergers: projectors of vision blocks 8, 16, 24 into the language model, not blocks 0-2)
# An audio encoder (its own block, as a vision tower is; Gemma-3n's embed_audio, the audio tower's projection into
# the text embedding, with it), and an omni model's speech side: the talker (a second language model, of speech
# codes) and the code-to-waveform model, which are not the thinker's layers.
AUDIO = re.compile(r"^(audio_tower|audio_model|audio_encoder|embed_audio)\.")
SPEECH = re.compile(r"^(talker|token2wav|code2wav)\.")
EXPERT_INDEX = re.compile(r"experts\.(\d{1,9})\.")
SHARED_EXPERT = re.compile(r"shared_(experts?|mlp)(\.|_gate\.)|(^|\.)share_expert\.")  # (shared_mlp: Hunyuan; Step-3.5)
PACKED_EXPERTS = re.compile(
    r"experts\.(gate_up_proj|gate_proj|up_proj|down_proj)(_bias|\.weight|\.bias)?$"
    r"|block_sparse_moe\.(input|output)_linear\.weight$"  # (Granite MoE)
    r"|(^|\.)moe\.(gate_proj|up_proj|down_proj)\.weight$"  # (Step-3.5: every expert's gate, up, down stacked)
)
# config.json keys holding the routed-expert count, by family (moe_num_experts: Step-3.5's releases)
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def tie_word_embeddings(config: dict, where: str = "config.json") -> bool:
    """Whether a model of ``config`` (its config.json) ties its output head to its input embedding, as
    transformers loads it: the config's ``tie_word_embeddings`` where it says so; where it leaves the key out
    (the released Gemma-2 configs do), or says False beside a ``text_config`` that says True (pre-v5 multimodal
    saves, which some config classes forward to the top), what transformers' config class of the model type
    makes of the config (:func:`_tied_as_loaded`). A value that is not JSON true, false or null (a hand-edited
    ``"false"``, read as True, compared an untouched head with the embedding) is a CheckpointError naming
    ``where`` and the key, as transformers refuses such a config."""
    check_tie_keys(config, where)
    value, text = config.get("tie_word_embeddings"), config.get("text_config")
    text_tied = isinstance(text, dict) and bool(text.get("tie_word_embeddings"))
    if value is not None and (value or not text_tied):
        return value
    return _tied_as_loaded(json.dumps(config, sort_keys=True, default=str))


def check_tie_keys(config: dict, where: str = "config.json") -> None:
    """``tie_word_embeddings`` of the config and of its ``text_config``: JSON true, false or null, else a
    CheckpointError naming ``where`` and the key (:func:`said_bool`)."""
    said_bool(config, "tie_word_embeddings", where)
    if isinstance(config.get("text_config"), dict):
        said_bool(config["text_config"], "tie_word_embeddings", where, "text_config.")


def said_bool(config: dict, key: str, where: str, path: str = "") -> bool | None:
    """``config[key]`` where it is JSON true or false, None where missing or null; any other value (a string
    "false", 0, a list) a one-line CheckpointError naming ``where`` and the key (``path``: the key's parents,
    e.g. ``text_config.``). Python's truth of such a value is no reading of it: "false" is True."""
    value = config.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise CheckpointError(
        f"{where}: {path}{key} is {json.dumps(value, default=str)[:40]} ({json_type(value)}); expected true or false."
    )


def json_type(value) -> str:
    """A parsed JSON value's type as its author wrote it, with its article: "a string", "an object"."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), f"a {type(value).__name__}")


@lru_cache(maxsize=64)
def _tied_as_loaded(config_json: str) -> bool:
    """``tie_word_embeddings`` of the config (JSON) as the installed transformers' config class of its model type
    reads it (a missing key is the class's default: True for Gemma, Gemma-2/3, BLOOM, Falcon, OPT, StarCoder2,
    Cohere, GPT-2 and more, False for Llama, Qwen, Mistral); a config the class refuses takes the class's default
    or the config's own value. A model type transformers does not know: the config's value, else its
    ``text_config``'s, else tied for GPT-2 only."""
    config = json.loads(config_json)
    value, text = config.get("tie_word_embeddings"), config.get("text_config")
    if value is None and isinstance(text, dict):
        value = text.get("tie_word_embeddings")
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        cls = CONFIG_MAPPING[config.get("model_type")]
    except Exception:  # noqa: BLE001 - no such model type in this transformers (or another transformers' API)
        return bool(value) if value is not None else config.get("model_type") == "gpt2"
    try:
        return bool(getattr(cls.from_dict(dict(config)), "tie_word_embeddings", False))
    except Exception:  # noqa: BLE001 - a config the class's own checks refuse: its default where the key is missing
        said = config.get("tie_word_embeddings")
        return bool(said) if said is not None else bool(getattr(cls, "tie_word_embeddings", False))
