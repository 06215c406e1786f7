"""Naming tables for 2026's families, from the real configs through transformers.

Proves: for every family whose class exists in the installed transformers, a tiny model built with
``from_config`` and written by ``save_pretrained`` has no tensor that the family's table does not
know, and its experts, routers, attention sinks, MLA projections, fused projections and post-norms land on the
right layer, block, module and expert; names that no installed class writes (transformers-v5 packed
experts, DeepSeek-V3's multi-token-prediction layer, multimodal prefixes and vision towers) are
taken from the released checkpoints' names; an analysis of a planted Mixtral / Phi-3 pair counts
exactly per expert and per fused part; unknown tensors are counted in a notice; a packed-expert
tensor whose expert count disagrees with the config is a one-line error naming it.
"""

from __future__ import annotations

import json

import pytest
import torch

from subnetviz.analysis.update_pass import SpectraOptions
from subnetviz.analysis.updates import analyze_updates
from subnetviz.checkpoints import open_checkpoint
from subnetviz.checkpoints.naming import NameTable
from subnetviz.errors import CheckpointError
from subnetviz.figures.spectra import rank_measure_heatmap
from subnetviz.figures.updates import sparsity_heatmap
from tests.ckpt_fixtures import bf16_step, read_state_dict, write_folder

BASE = dict(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=0,
    eos_token_id=0,
)


# DeepSeek-V3's MoE and MLA (and V3.2's, with its indexer): 4 routed experts, 1 shared, a dense first layer
DEEPSEEK = dict(
    n_routed_experts=4,
    n_shared_experts=1,
    moe_intermediate_size=8,
    num_experts_per_tok=2,
    first_k_dense_replace=1,
    q_lora_rank=8,
    kv_lora_rank=8,
    qk_rope_head_dim=4,
    qk_nope_head_dim=4,
    v_head_dim=4,
    n_group=1,
    topk_group=1,
)

# Qwen3.5's hybrid layers (Gated DeltaNet, then full attention with a gated query), small
QWEN3_5 = dict(
    head_dim=4,
    layer_types=["linear_attention", "full_attention"],
    linear_num_value_heads=2,
    linear_num_key_heads=2,
    linear_key_head_dim=4,
    linear_value_head_dim=4,
)


def _build(kind: str):
    import transformers as T

    specs = {
        "mixtral": (T.MixtralConfig, T.MixtralForCausalLM, dict(num_local_experts=4, num_experts_per_tok=2)),
        "qwen2_moe": (
            T.Qwen2MoeConfig,
            T.Qwen2MoeForCausalLM,
            dict(num_experts=4, moe_intermediate_size=8, shared_expert_intermediate_size=16, num_experts_per_tok=2),
        ),
        "qwen3_moe": (
            T.Qwen3MoeConfig,
            T.Qwen3MoeForCausalLM,
            dict(num_experts=4, moe_intermediate_size=8, num_experts_per_tok=2, head_dim=4),
        ),
        "deepseek_v3": (
            T.DeepseekV3Config,
            T.DeepseekV3ForCausalLM,
            DEEPSEEK,
        ),
        "llama4_text": (
            T.Llama4TextConfig,
            T.Llama4ForCausalLM,
            dict(
                intermediate_size_mlp=32,
                num_local_experts=4,
                num_experts_per_tok=1,
                head_dim=4,
                interleave_moe_layer_step=1,
            ),
        ),
        "gpt_oss": (
            T.GptOssConfig,
            T.GptOssForCausalLM,
            dict(
                num_local_experts=4,
                num_experts_per_tok=2,
                head_dim=4,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
            ),
        ),
        "phi3": (T.Phi3Config, T.Phi3ForCausalLM, {}),
        "glm4": (T.Glm4Config, T.Glm4ForCausalLM, dict(head_dim=4)),
        "hunyuan_v1_moe": (
            T.HunYuanMoEV1Config,
            T.HunYuanMoEV1ForCausalLM,
            dict(head_dim=4, num_experts=4, moe_topk=2, moe_intermediate_size=8),
        ),
        "ernie4_5_moe": (
            T.Ernie4_5_MoeConfig,
            T.Ernie4_5_MoeForCausalLM,
            dict(moe_num_experts=4, moe_k=2, moe_intermediate_size=8, moe_layer_start_index=1),
        ),
        "qwen3_next": (
            T.Qwen3NextConfig,
            T.Qwen3NextForCausalLM,
            dict(
                head_dim=4,
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=8,
                shared_expert_intermediate_size=8,
                layer_types=["linear_attention", "full_attention"],
                linear_num_value_heads=2,
                linear_num_key_heads=2,
                linear_key_head_dim=4,
                linear_value_head_dim=4,
            ),
        ),
        "qwen3_5_text": (T.Qwen3_5TextConfig, T.Qwen3_5ForCausalLM, dict(QWEN3_5)),
        "qwen3_5_moe_text": (
            T.Qwen3_5MoeTextConfig,
            T.Qwen3_5MoeForCausalLM,
            dict(
                QWEN3_5,
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=8,
                shared_expert_intermediate_size=8,
            ),
        ),
        "apertus": (T.ApertusConfig, T.ApertusForCausalLM, dict(head_dim=4)),
        "deepseek_v32": (
            T.DeepseekV32Config,
            T.DeepseekV32ForCausalLM,
            dict(DEEPSEEK, index_n_heads=2, index_head_dim=8, index_topk=4),
        ),
        "afmoe": (
            T.AfmoeConfig,
            T.AfmoeForCausalLM,
            dict(head_dim=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8, num_dense_layers=1),
        ),
        "flex_olmo": (T.FlexOlmoConfig, T.FlexOlmoForCausalLM, dict(num_experts=4, num_experts_per_tok=2)),
        "minimax_m2": (
            T.MiniMaxM2Config,
            T.MiniMaxM2ForCausalLM,
            dict(head_dim=4, num_local_experts=4, num_experts_per_tok=2),
        ),
        "exaone_moe": (
            T.ExaoneMoeConfig,
            T.ExaoneMoeForCausalLM,
            dict(head_dim=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8),
        ),
        "lfm2": (
            T.Lfm2Config,
            T.Lfm2ForCausalLM,
            dict(layer_types=["conv", "full_attention"], block_ff_dim=32, block_auto_adjust_ff_dim=False),
        ),
        "gemma2": (T.Gemma2Config, T.Gemma2ForCausalLM, dict(head_dim=4)),
        "gemma3_text": (T.Gemma3TextConfig, T.Gemma3ForCausalLM, dict(head_dim=4)),
        "olmo2": (T.Olmo2Config, T.Olmo2ForCausalLM, {}),
        "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM, dict(head_dim=4)),
        "deepseek_v4": (
            T.DeepseekV4Config,
            T.DeepseekV4ForCausalLM,
            dict(
                head_dim=8,
                num_key_value_heads=1,
                q_lora_rank=16,
                o_groups=2,
                o_lora_rank=8,
                index_n_heads=2,
                index_head_dim=8,
                index_topk=4,
                n_routed_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=8,
                qk_rope_head_dim=4,
                layer_types=["heavily_compressed_attention", "compressed_sparse_attention"],
            ),
        ),
        "longcat_flash": (
            T.LongcatFlashConfig,
            T.LongcatFlashForCausalLM,
            dict(
                num_hidden_layers=4,  # two sublayers each: 2 layers (config.json keeps num_layers only)
                ffn_hidden_size=32,
                q_lora_rank=8,
                kv_lora_rank=8,
                qk_nope_head_dim=4,
                qk_rope_head_dim=4,
                head_dim=4,
                v_head_dim=4,
                n_routed_experts=4,
                zero_expert_num=2,
                moe_topk=2,
                expert_ffn_hidden_size=8,
            ),
        ),
        # a gate on attention's output, attention sinks, norms inside and around the blocks
        "beam": (
            T.BeamConfig,
            T.BeamForCausalLM,
            dict(head_dim=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8),
        ),
        "hyperclovax": (T.HyperCLOVAXConfig, T.HyperCLOVAXForCausalLM, dict(head_dim=4)),
        "bitnet": (T.BitNetConfig, T.BitNetForCausalLM, {}),
        "mimo_v2_flash": (
            T.MiMoV2FlashConfig,
            T.MiMoV2FlashForCausalLM,
            dict(head_dim=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=8),
        ),
        "laguna": (
            T.LagunaConfig,
            T.LagunaForCausalLM,
            dict(head_dim=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8),
        ),
        # hybrids of Mamba mixers and attention, and pure Mamba
        "nemotron_h": (
            T.NemotronHConfig,
            T.NemotronHForCausalLM,
            dict(
                num_hidden_layers=4,
                hybrid_override_pattern="M*-E",  # Mamba, attention, MLP, MoE
                head_dim=4,
                mamba_num_heads=4,
                mamba_head_dim=8,
                ssm_state_size=8,
                n_groups=1,
                n_routed_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=8,
                moe_shared_expert_intermediate_size=8,
            ),
        ),
        "granitemoehybrid": (
            T.GraniteMoeHybridConfig,
            T.GraniteMoeHybridForCausalLM,
            dict(
                layer_types=["mamba", "attention"],
                mamba_n_heads=4,
                mamba_d_head=8,
                mamba_d_state=8,
                mamba_n_groups=1,
                num_local_experts=4,
                num_experts_per_tok=2,
                shared_intermediate_size=16,
            ),
        ),
        "falcon_h1": (
            T.FalconH1Config,
            T.FalconH1ForCausalLM,
            dict(head_dim=4, mamba_n_heads=4, mamba_d_head=8, mamba_d_ssm=32, mamba_d_state=8, mamba_n_groups=1),
        ),
        "jamba": (
            T.JambaConfig,
            T.JambaForCausalLM,
            dict(
                num_experts=4,
                num_experts_per_tok=2,
                expert_layer_period=2,
                expert_layer_offset=1,
                attn_layer_period=2,
                attn_layer_offset=1,
                mamba_d_state=8,
                mamba_dt_rank=4,
                use_mamba_kernels=False,
            ),
        ),
        "mamba": (T.MambaConfig, T.MambaForCausalLM, dict(state_size=8)),
        "granitemoe": (T.GraniteMoeConfig, T.GraniteMoeForCausalLM, dict(num_local_experts=4, num_experts_per_tok=2)),
        # Granite MoE's router and shared MLP, transformers-v5 packed experts and gpt-oss's attention sinks
        "granitemoe_swa": (
            T.GraniteMoeSWAConfig,
            T.GraniteMoeSWAForCausalLM,
            dict(num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=16, sliding_window=8),
        ),
        # older and other dense layouts
        "phi": (T.PhiConfig, T.PhiForCausalLM, {}),
        "starcoder2": (T.Starcoder2Config, T.Starcoder2ForCausalLM, {}),
        "opt": (T.OPTConfig, T.OPTForCausalLM, dict(ffn_dim=32, word_embed_proj_dim=16)),
        "glm": (T.GlmConfig, T.GlmForCausalLM, dict(head_dim=4)),
        "gemma3n_text": (
            T.Gemma3nTextConfig,
            T.Gemma3nForCausalLM,
            dict(
                head_dim=4,
                num_kv_shared_layers=0,
                vocab_size_per_layer_input=64,
                hidden_size_per_layer_input=8,
                laurel_rank=4,
                altup_num_inputs=4,
                layer_types=["sliding_attention", "full_attention"],
                activation_sparsity_pattern=[0.0, 0.0],
                intermediate_size=[32, 32],
            ),
        ),
        "gemma4_text": (
            T.Gemma4TextConfig,
            T.Gemma4ForCausalLM,
            dict(head_dim=4, vocab_size_per_layer_input=64, hidden_size_per_layer_input=8),
        ),
        # per-head norms: q_norm (heads, head_dim), k_norm (kv heads, head_dim)
        "cohere": (T.CohereConfig, T.CohereForCausalLM, dict(use_qk_norm=True)),
    }
    cfg_cls, model_cls, kw = specs[kind]
    torch.manual_seed(0)
    return model_cls(cfg_cls(**{**BASE, **kw})).to(torch.bfloat16)


KINDS = [
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "deepseek_v3",
    "llama4_text",
    "gpt_oss",
    "phi3",
    "glm4",
    "hunyuan_v1_moe",
    "ernie4_5_moe",
    "qwen3_next",
    "qwen3_5_text",
    "qwen3_5_moe_text",
    "apertus",
    "lfm2",
    "deepseek_v32",
    "afmoe",
    "flex_olmo",
    "minimax_m2",
    "exaone_moe",
    "gemma2",
    "gemma3_text",
    "olmo2",
    "qwen3",
    "deepseek_v4",
    "longcat_flash",
    "beam",
    "hyperclovax",
    "bitnet",
    "mimo_v2_flash",
    "laguna",
    "nemotron_h",
    "granitemoehybrid",
    "falcon_h1",
    "jamba",
    "mamba",
    "granitemoe",
    "granitemoe_swa",
    "phi",
    "starcoder2",
    "opt",
    "glm",
    "gemma3n_text",
    "gemma4_text",
]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    out = {}
    for kind in KINDS:
        _build(kind).save_pretrained(root / kind)
        out[kind] = root / kind
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_every_saved_tensor_is_known(family_dirs, kind):
    ck = open_checkpoint(family_dirs[kind])
    table = ck.names_table
    assert table.family is not None and table.unmatched(ck.names) == [] and table.notice is None
    assert all(table.describe(n).module != "other" for n in ck.names)


def test_a_family_chosen_by_the_names_says_so():
    """A model_type no table names, whose tensors look like a known family's: read with that table, and the
    notice says it was a guess (before: nothing said so, as when Jamba was read with Llama-4's table)."""
    table = NameTable.from_config({"model_type": "brand_new_lm"}, ["model.layers.0.self_attn.q_proj.weight"])
    assert table.family == "llama"
    assert "'brand_new_lm' has no naming table of its own" in table.notice and "llama table" in table.notice


EXPECT = {
    "mixtral": [
        ("model.layers.1.block_sparse_moe.experts.3.w1.weight", 1, "moe", "gate", 3),
        ("model.layers.1.block_sparse_moe.experts.3.w3.weight", 1, "moe", "up", 3),
        ("model.layers.0.block_sparse_moe.experts.0.w2.weight", 0, "moe", "down", 0),
        ("model.layers.0.block_sparse_moe.gate.weight", 0, "moe", "router", None),
    ],
    "qwen2_moe": [
        ("model.layers.0.mlp.experts.2.up_proj.weight", 0, "moe", "up", 2),
        ("model.layers.0.mlp.shared_expert.down_proj.weight", 0, "moe", "down", "shared"),
        ("model.layers.0.mlp.shared_expert_gate.weight", 0, "moe", "router", "shared"),
        ("model.layers.1.mlp.gate.weight", 1, "moe", "router", None),
    ],
    "deepseek_v3": [
        ("model.layers.0.self_attn.q_a_proj.weight", 0, "attention", "q_a", None),
        ("model.layers.0.self_attn.q_b_proj.weight", 0, "attention", "q_b", None),
        ("model.layers.0.self_attn.kv_a_proj_with_mqa.weight", 0, "attention", "kv_a", None),
        ("model.layers.0.self_attn.kv_b_proj.weight", 0, "attention", "kv_b", None),
        ("model.layers.0.self_attn.kv_a_layernorm.weight", 0, "norm", "attn_norm", None),
        ("model.layers.0.mlp.gate_proj.weight", 0, "mlp", "gate", None),  # first_k_dense_replace
        ("model.layers.1.mlp.experts.3.gate_proj.weight", 1, "moe", "gate", 3),
        ("model.layers.1.mlp.shared_experts.up_proj.weight", 1, "moe", "up", "shared"),
        ("model.layers.1.mlp.gate.e_score_correction_bias", 1, "moe", "router", None),
    ],
    "llama4_text": [
        ("model.layers.0.feed_forward.experts.gate_up_proj", 0, "moe", "gate_up", "all"),
        ("model.layers.0.feed_forward.experts.down_proj", 0, "moe", "down", "all"),
        ("model.layers.0.feed_forward.router.weight", 0, "moe", "router", None),
        ("model.layers.0.feed_forward.shared_expert.gate_proj.weight", 0, "moe", "gate", "shared"),
    ],
    "gpt_oss": [
        ("model.layers.1.self_attn.sinks", 1, "attention", "sinks", None),
        ("model.layers.1.self_attn.q_proj.bias", 1, "attention", "q", None),
        ("model.layers.0.mlp.router.weight", 0, "moe", "router", None),
        ("model.layers.0.mlp.router.bias", 0, "moe", "router", None),
        ("model.layers.0.mlp.experts.gate_up_proj", 0, "moe", "gate_up", "all"),
        ("model.layers.0.mlp.experts.gate_up_proj_bias", 0, "moe", "gate_up", "all"),
        ("model.layers.1.mlp.experts.down_proj_bias", 1, "moe", "down", "all"),
    ],
    "phi3": [
        ("model.layers.0.self_attn.qkv_proj.weight", 0, "attention", "qkv", None),
        ("model.layers.0.mlp.gate_up_proj.weight", 0, "mlp", "gate_up", None),
    ],
    "glm4": [
        ("model.layers.1.mlp.gate_up_proj.weight", 1, "mlp", "gate_up", None),
        ("model.layers.1.post_self_attn_layernorm.weight", 1, "norm", "post_attn_norm", None),
        ("model.layers.1.post_attention_layernorm.weight", 1, "norm", "mlp_norm", None),  # before the MLP
        ("model.layers.1.post_mlp_layernorm.weight", 1, "norm", "post_mlp_norm", None),
    ],
    "hunyuan_v1_moe": [
        ("model.layers.0.self_attn.query_layernorm.weight", 0, "norm", "attn_norm", None),
        ("model.layers.0.mlp.gate.wg.weight", 0, "moe", "router", None),
        ("model.layers.0.mlp.shared_mlp.up_proj.weight", 0, "moe", "up", "shared"),
    ],
    "ernie4_5_moe": [
        ("model.layers.0.mlp.gate_proj.weight", 0, "mlp", "gate", None),  # moe_layer_start_index
        ("model.layers.1.mlp.moe_statics.e_score_correction_bias", 1, "moe", "router", None),
        ("model.layers.1.mlp.experts.2.down_proj.weight", 1, "moe", "down", 2),
    ],
    "qwen3_next": [
        ("model.layers.0.linear_attn.in_proj_qkvz.weight", 0, "attention", "linear_attn", None),
        ("model.layers.0.linear_attn.A_log", 0, "attention", "linear_attn", None),
        ("model.layers.1.self_attn.q_proj.weight", 1, "attention", "q", None),
        ("model.layers.1.mlp.shared_expert_gate.weight", 1, "moe", "router", "shared"),
    ],
    "qwen3_5_text": [
        ("model.layers.0.linear_attn.in_proj_qkv.weight", 0, "attention", "linear_attn", None),
        ("model.layers.0.linear_attn.in_proj_z.weight", 0, "attention", "linear_attn", None),
        ("model.layers.1.self_attn.q_proj.weight", 1, "attention", "q", None),
        ("model.layers.1.post_attention_layernorm.weight", 1, "norm", "mlp_norm", None),
    ],
    "qwen3_5_moe_text": [
        ("model.layers.0.linear_attn.out_proj.weight", 0, "attention", "linear_attn", None),
        ("model.layers.1.mlp.experts.3.gate_proj.weight", 1, "moe", "gate", 3),
        ("model.layers.1.mlp.shared_expert.up_proj.weight", 1, "moe", "up", "shared"),
        ("model.layers.1.mlp.gate.weight", 1, "moe", "router", None),
    ],
    "apertus": [
        ("model.layers.0.attention_layernorm.weight", 0, "norm", "attn_norm", None),
        ("model.layers.0.feedforward_layernorm.weight", 0, "norm", "mlp_norm", None),
        ("model.layers.0.mlp.act_fn.alpha_p", 0, "mlp", "act", None),
    ],
    "deepseek_v32": [
        ("model.layers.1.self_attn.indexer.wq_b.weight", 1, "attention", "indexer", None),
        ("model.layers.1.self_attn.indexer.weights_proj.weight", 1, "attention", "indexer", None),
        ("model.layers.1.self_attn.kv_b_proj.weight", 1, "attention", "kv_b", None),
    ],
    "afmoe": [  # sandwich norms: the norm after attention is not the MLP's
        ("model.layers.1.post_attention_layernorm.weight", 1, "norm", "post_attn_norm", None),
        ("model.layers.1.pre_mlp_layernorm.weight", 1, "norm", "mlp_norm", None),
        ("model.layers.1.post_mlp_layernorm.weight", 1, "norm", "post_mlp_norm", None),
        ("model.layers.1.self_attn.gate_proj.weight", 1, "attention", "attn_gate", None),
        ("model.layers.1.mlp.router.gate.weight", 1, "moe", "router", None),
        ("model.layers.1.mlp.expert_bias", 1, "moe", "router", None),
    ],
    "flex_olmo": [  # OLMo-2's post-norms (before: post_attention_layernorm read as the MLP's norm)
        ("model.layers.0.post_attention_layernorm.weight", 0, "norm", "post_attn_norm", None),
        ("model.layers.0.post_feedforward_layernorm.weight", 0, "norm", "post_mlp_norm", None),
        ("model.layers.0.mlp.experts.1.up_proj.weight", 0, "moe", "up", 1),
    ],
    "minimax_m2": [("model.layers.0.block_sparse_moe.e_score_correction_bias", 0, "moe", "router", None)],
    "exaone_moe": [("model.layers.1.mlp.e_score_correction_bias", 1, "moe", "router", None)],
    "lfm2": [
        ("model.layers.0.conv.in_proj.weight", 0, "attention", "conv", None),
        ("model.layers.1.self_attn.out_proj.weight", 1, "attention", "o", None),
        ("model.layers.1.self_attn.q_layernorm.weight", 1, "norm", "attn_norm", None),
        ("model.layers.0.feed_forward.w1.weight", 0, "mlp", "gate", None),
        ("model.layers.0.feed_forward.w3.weight", 0, "mlp", "up", None),
        ("model.layers.0.feed_forward.w2.weight", 0, "mlp", "down", None),
        ("model.layers.0.operator_norm.weight", 0, "norm", "attn_norm", None),
        ("model.embedding_norm.weight", None, "norm", "final_norm", None),
    ],
    "gemma2": [
        ("model.layers.1.post_attention_layernorm.weight", 1, "norm", "post_attn_norm", None),
        ("model.layers.1.pre_feedforward_layernorm.weight", 1, "norm", "mlp_norm", None),
        ("model.layers.1.post_feedforward_layernorm.weight", 1, "norm", "post_mlp_norm", None),
    ],
    "olmo2": [
        ("model.layers.0.post_attention_layernorm.weight", 0, "norm", "post_attn_norm", None),
        ("model.layers.0.self_attn.q_norm.weight", 0, "norm", "attn_norm", None),
    ],
    "qwen3": [("model.layers.1.self_attn.k_norm.weight", 1, "norm", "attn_norm", None)],
    "deepseek_v4": [  # the release's names, as transformers writes them back
        ("head.weight", None, "head", "lm_head", None),
        ("model.hc_head.hc_fn", None, "norm", "hc", None),
        ("model.layers.0.hc_attn_fn", 0, "norm", "hc", None),
        ("model.layers.0.attn.wq_a.weight", 0, "attention", "q_a", None),
        ("model.layers.0.attn.wkv.weight", 0, "attention", "kv_a", None),
        ("model.layers.0.attn.wo_b.weight", 0, "attention", "o", None),
        ("model.layers.0.attn.attn_sink", 0, "attention", "sinks", None),
        ("model.layers.0.attn.compressor.wkv.weight", 0, "attention", "compressor", None),
        ("model.layers.1.attn.indexer.compressor.wkv.weight", 1, "attention", "indexer", None),
        ("model.layers.1.attn.indexer.wq_b.weight", 1, "attention", "indexer", None),
        ("model.layers.0.attn.norm.weight", 0, "norm", "attn_norm", None),
        ("model.layers.0.ffn_norm.weight", 0, "norm", "mlp_norm", None),
        ("model.layers.1.ffn.experts.3.w3.weight", 1, "moe", "up", 3),
        ("model.layers.1.ffn.shared_experts.w2.weight", 1, "moe", "down", "shared"),
        ("model.layers.1.ffn.gate.weight", 1, "moe", "router", None),
    ],
    "longcat_flash": [  # two attention sublayers and two dense MLPs per layer, beside its MoE
        ("model.layers.1.self_attn.0.q_a_proj.weight", 1, "attention", "q_a", None),
        ("model.layers.1.self_attn.1.kv_b_proj.weight", 1, "attention", "kv_b", None),
        ("model.layers.1.self_attn.1.kv_a_layernorm.weight", 1, "norm", "attn_norm", None),
        ("model.layers.0.mlps.1.up_proj.weight", 0, "mlp", "up", None),
        ("model.layers.0.post_attention_layernorm.1.weight", 0, "norm", "mlp_norm", None),
        ("model.layers.0.mlp.experts.3.down_proj.weight", 0, "moe", "down", 3),
        ("model.layers.0.mlp.router.classifier.weight", 0, "moe", "router", None),
    ],
    "beam": [  # sandwich norms in a family whose table has none: told by pre_feedforward_layernorm
        ("model.layers.1.post_attention_layernorm.weight", 1, "norm", "post_attn_norm", None),
        ("model.layers.1.pre_feedforward_layernorm.weight", 1, "norm", "mlp_norm", None),
        ("model.layers.1.post_feedforward_layernorm.weight", 1, "norm", "post_mlp_norm", None),
        ("model.layers.1.self_attn.gate_proj.weight", 1, "attention", "attn_gate", None),
        ("model.layers.1.self_attn.gate_bias", 1, "attention", "attn_gate", None),
    ],
    "hyperclovax": [  # its post_attention_layernorm is before the MLP; post_norm1/2 after attention and MLP
        ("model.layers.0.post_attention_layernorm.weight", 0, "norm", "mlp_norm", None),
        ("model.layers.0.post_norm1.weight", 0, "norm", "post_attn_norm", None),
        ("model.layers.0.post_norm2.weight", 0, "norm", "post_mlp_norm", None),
    ],
    "bitnet": [
        ("model.layers.0.self_attn.attn_sub_norm.weight", 0, "norm", "attn_norm", None),
        ("model.layers.0.mlp.ffn_sub_norm.weight", 0, "norm", "mlp_norm", None),
    ],
    "mimo_v2_flash": [("model.layers.1.self_attn.attention_sink_bias", 1, "attention", "sinks", None)],
    "laguna": [("model.layers.1.self_attn.g_proj.weight", 1, "attention", "attn_gate", None)],
    "nemotron_h": [  # one mixer per layer: Mamba, attention, MLP, MoE
        ("backbone.embeddings.weight", None, "embedding", "embed", None),
        ("backbone.layers.0.mixer.in_proj.weight", 0, "attention", "ssm", None),
        ("backbone.layers.0.mixer.A_log", 0, "attention", "ssm", None),
        ("backbone.layers.0.mixer.norm.weight", 0, "attention", "ssm", None),
        ("backbone.layers.1.mixer.q_proj.weight", 1, "attention", "q", None),
        ("backbone.layers.2.mixer.up_proj.weight", 2, "mlp", "up", None),
        ("backbone.layers.3.mixer.experts.1.down_proj.weight", 3, "moe", "down", 1),
        ("backbone.layers.3.mixer.shared_experts.up_proj.weight", 3, "moe", "up", "shared"),
        ("backbone.layers.3.mixer.gate.weight", 3, "moe", "router", None),
        ("backbone.layers.3.norm.weight", 3, "norm", "norm", None),
        ("backbone.norm_f.weight", None, "norm", "final_norm", None),
    ],
    "granitemoehybrid": [
        ("model.layers.0.mamba.in_proj.weight", 0, "attention", "ssm", None),
        ("model.layers.0.mamba.dt_bias", 0, "attention", "ssm", None),
        ("model.layers.1.self_attn.q_proj.weight", 1, "attention", "q", None),
        ("model.layers.0.block_sparse_moe.input_linear.weight", 0, "moe", "gate_up", "all"),
        ("model.layers.0.block_sparse_moe.output_linear.weight", 0, "moe", "down", "all"),
        ("model.layers.0.block_sparse_moe.router.layer.weight", 0, "moe", "router", None),
        ("model.layers.1.shared_mlp.input_linear.weight", 1, "moe", "gate_up", "shared"),
        ("model.layers.1.shared_mlp.output_linear.weight", 1, "moe", "down", "shared"),
    ],
    "falcon_h1": [
        ("model.layers.0.mamba.conv1d.weight", 0, "attention", "ssm", None),
        ("model.layers.0.self_attn.k_proj.weight", 0, "attention", "k", None),
        ("model.layers.1.pre_ff_layernorm.weight", 1, "norm", "mlp_norm", None),
        ("model.final_layernorm.weight", None, "norm", "final_norm", None),
    ],
    "jamba": [
        ("model.layers.0.mamba.x_proj.weight", 0, "attention", "ssm", None),
        ("model.layers.0.mamba.dt_layernorm.weight", 0, "attention", "ssm", None),
        ("model.layers.1.self_attn.q_proj.weight", 1, "attention", "q", None),
        ("model.layers.1.feed_forward.experts.2.up_proj.weight", 1, "moe", "up", 2),
        ("model.layers.1.feed_forward.router.weight", 1, "moe", "router", None),
        ("model.layers.0.pre_ff_layernorm.weight", 0, "norm", "mlp_norm", None),
        ("model.final_layernorm.weight", None, "norm", "final_norm", None),
    ],
    "mamba": [
        ("backbone.layers.1.mixer.x_proj.weight", 1, "attention", "ssm", None),
        ("backbone.layers.1.mixer.D", 1, "attention", "ssm", None),
        ("backbone.layers.1.norm.weight", 1, "norm", "norm", None),
        ("backbone.norm_f.weight", None, "norm", "final_norm", None),
    ],
    "granitemoe": [("model.layers.1.block_sparse_moe.input_linear.weight", 1, "moe", "gate_up", "all")],
    "granitemoe_swa": [  # (before: read with gpt-oss's table, the router and the shared MLP 'other')
        ("model.layers.1.block_sparse_moe.experts.gate_up_proj", 1, "moe", "gate_up", "all"),
        ("model.layers.1.block_sparse_moe.experts.down_proj", 1, "moe", "down", "all"),
        ("model.layers.1.block_sparse_moe.router.weight", 1, "moe", "router", None),
        ("model.layers.0.shared_mlp.input_linear.weight", 0, "moe", "gate_up", "shared"),
        ("model.layers.0.shared_mlp.output_linear.weight", 0, "moe", "down", "shared"),
        ("model.layers.0.self_attn.sinks", 0, "attention", "sinks", None),
    ],
    "phi": [
        ("model.layers.0.self_attn.dense.weight", 0, "attention", "o", None),
        ("model.layers.0.mlp.fc1.weight", 0, "mlp", "mlp_in", None),
        ("model.layers.0.mlp.fc2.bias", 0, "mlp", "mlp_out", None),
        ("model.final_layernorm.weight", None, "norm", "final_norm", None),
    ],
    "starcoder2": [
        ("model.layers.1.mlp.c_fc.weight", 1, "mlp", "mlp_in", None),
        ("model.layers.1.mlp.c_proj.weight", 1, "mlp", "mlp_out", None),
    ],
    "opt": [
        ("model.decoder.embed_positions.weight", None, "embedding", "pos_embed", None),
        ("model.decoder.layers.1.self_attn.out_proj.weight", 1, "attention", "o", None),
        ("model.decoder.layers.1.self_attn_layer_norm.weight", 1, "norm", "attn_norm", None),
        ("model.decoder.layers.1.fc1.weight", 1, "mlp", "mlp_in", None),
        ("model.decoder.layers.1.final_layer_norm.weight", 1, "norm", "mlp_norm", None),
        ("model.decoder.final_layer_norm.weight", None, "norm", "final_norm", None),
    ],
    "glm": [("model.layers.0.mlp.gate_up_proj.weight", 0, "mlp", "gate_up", None)],
    "gemma3n_text": [  # AltUp's streams and LAuReL's branch
        ("model.altup_projections.1.weight", None, "embedding", "embed", None),
        ("model.altup_unembed_projections.2.weight", None, "embedding", "embed", None),
        ("model.layers.1.altup.prediction_coefs.weight", 1, "norm", "hc", None),
        ("model.layers.1.altup.modality_router.weight", 1, "norm", "hc", None),
        ("model.layers.0.laurel.linear_left.weight", 0, "attention", "laurel", None),
        ("model.layers.0.per_layer_projection.weight", 0, "embedding", "per_layer", None),
        ("model.layers.0.post_attention_layernorm.weight", 0, "norm", "post_attn_norm", None),
    ],
    "gemma4_text": [
        ("model.embed_tokens_per_layer.weight", None, "embedding", "embed", None),
        ("model.per_layer_model_projection.weight", None, "embedding", "per_layer", None),
        ("model.layers.1.per_layer_input_gate.weight", 1, "embedding", "per_layer", None),
        ("model.layers.1.post_per_layer_input_norm.weight", 1, "embedding", "per_layer", None),
        ("model.layers.1.layer_scalar", 1, "norm", "norm", None),
        ("model.layers.1.post_attention_layernorm.weight", 1, "norm", "post_attn_norm", None),
    ],
}


@pytest.mark.parametrize("kind", sorted(EXPECT))
def test_family_names_land_where_the_model_uses_them(family_dirs, kind):
    ck = open_checkpoint(family_dirs[kind])
    for name, layer, block, module, expert in EXPECT[kind]:
        assert name in ck.names, name
        info = ck.names_table.describe(name)
        assert (info.layer, info.block, info.module, info.expert) == (layer, block, module, expert), name


def test_names_no_installed_class_writes():
    """Released names: v5 packed experts, DeepSeek-V3's MTP layer 61, multimodal prefixes, vision towers."""
    v5 = NameTable("qwen_moe", num_experts=128)
    info = v5.describe("model.layers.5.mlp.experts.gate_up_proj")
    assert (info.layer, info.block, info.module, info.expert, info.param) == (5, "moe", "gate_up", "all", "weight")
    assert v5.describe("model.layers.5.mlp.experts.down_proj").module == "down"
    ds = NameTable.from_config(
        {
            "model_type": "deepseek_v3",
            "num_hidden_layers": 61,
            "num_nextn_predict_layers": 1,
            "n_routed_experts": 256,
            "num_attention_heads": 128,
        },
        [],
    )
    mtp = ds.describe("model.layers.61.eh_proj.weight")
    assert (mtp.layer, mtp.block, mtp.module) == (61, "mtp", "mtp_proj")
    assert ds.describe("model.layers.61.shared_head.head.weight").block == "mtp"
    assert ds.describe("model.layers.61.mlp.experts.7.up_proj.weight").block == "mtp"
    assert ds.describe("model.layers.60.mlp.experts.7.up_proj.weight").block == "moe"
    g3 = NameTable.from_config({"model_type": "gemma3", "text_config": {"num_attention_heads": 8}}, [])
    lm = g3.describe("model.language_model.layers.4.self_attn.q_proj.weight")
    assert (lm.layer, lm.block, lm.module) == (4, "attention", "q")
    vt = g3.describe("model.vision_tower.vision_model.encoder.layers.3.self_attn.q_proj.weight")
    assert (vt.layer, vt.block, vt.module) == (3, "vision", "vision")
    assert g3.describe("model.multi_modal_projector.mm_input_projection_weight").module == "projector"
    v4 = NameTable.from_config({"model_type": "deepseek_v4"}, [])  # as transformers holds them in memory
    for name, module in [
        ("model.layers.2.self_attn.q_a_proj.weight", "q_a"),
        ("model.layers.2.self_attn.kv_proj.weight", "kv_a"),
        ("model.layers.2.self_attn.o_a_proj.weight", "o"),
        ("model.layers.2.self_attn.sinks", "sinks"),
        ("model.layers.2.self_attn.kv_norm.weight", "attn_norm"),
        ("model.layers.2.self_attn.compressor.indexer.q_b_proj.weight", "indexer"),
        ("model.layers.2.self_attn.compressor.kv_proj.weight", "compressor"),
        ("model.layers.2.attn_hc.fn", "hc"),
        ("model.layers.2.mlp.experts.gate_up_proj", "gate_up"),
        ("model.layers.2.mlp.gate.e_score_correction_bias", "router"),
    ]:
        assert (v4.describe(name).layer, v4.describe(name).module) == (2, module), name
    kda = NameTable.from_config({"model_type": "kimi_linear"}, [])  # Kimi-Linear: delta attention, a dense layer 0
    for name, module in [
        ("model.layers.0.self_attn.f_a_proj.weight", "linear_attn"),
        ("model.layers.0.self_attn.k_conv1d.weight", "linear_attn"),
        ("model.layers.0.self_attn.A_log", "linear_attn"),
        ("model.layers.0.self_attn.q_proj.weight", "q"),
        ("model.layers.0.block_sparse_moe.up_proj.weight", "up"),
        ("model.layers.0.block_sparse_moe.gate.weight", "router"),
    ]:
        assert kda.describe(name).module == module, name
    qvl = NameTable.from_config({"model_type": "qwen2_5_vl"}, [])
    assert qvl.describe("model.visual.blocks.0.attn.qkv.weight").block == "vision"
    assert qvl.describe("model.language_model.layers.0.mlp.up_proj.weight").module == "up"


@pytest.mark.parametrize(
    ("model_type", "family"),
    [("qwen3_5", "llama"), ("qwen3_5_text", "llama"), ("qwen3_5_moe", "qwen_moe"), ("qwen3_5_moe_text", "qwen_moe")],
)
def test_qwen3_5_is_known_by_its_model_type(model_type, family):
    """Qwen3.5 by its config, also where no name gives it away: a checkpoint whose layers are all linear
    attention (the first three of every four are) was 'Unknown architecture', every tensor 'other'."""
    names = ["model.language_model.layers.0.linear_attn.in_proj_qkv.weight", "model.language_model.norm.weight"]
    table = NameTable.from_config({"model_type": model_type, "text_config": {"num_hidden_layers": 1}}, names)
    assert table.family == family and table.notice is None
    assert table.describe(names[0]).module == "linear_attn"


# Multi-token-prediction modules as the releases store them beside the layers
MTP_NAMES = [  # (name, its layer with 2 hidden layers, module, expert)
    ("mtp.fc.weight", 2, "mtp_proj", None),  # Qwen3-Next, Qwen3.5
    ("mtp.pre_fc_norm_embedding.weight", 2, "norm", None),
    ("mtp.pre_fc_norm_hidden.weight", 2, "norm", None),
    ("mtp.norm.weight", 2, "final_norm", None),
    ("mtp.layers.0.self_attn.q_proj.weight", 2, "q", None),
    ("mtp.layers.0.mlp.experts.3.down_proj.weight", 2, "down", 3),
    ("mtp.layers.0.mlp.shared_expert.up_proj.weight", 2, "up", "shared"),
    ("mtp.layers.1.input_layernorm.weight", 3, "attn_norm", None),
    ("model.mtp_block.0.self_attn.q_proj.weight", 2, "q", None),  # ERNIE-4.5
    ("model.mtp_emb_norm.0.weight", 2, "norm", None),
    ("model.mtp_hidden_norm.0.weight", 2, "norm", None),
    ("model.mtp_linear_proj.0.weight", 2, "mtp_proj", None),
    ("model.mtp_layers.0.mlp.gate_proj.weight", 2, "gate", None),  # Hunyuan
    ("model.language_model.mtp.layers.0.self_attn.o_proj.weight", 2, "o", None),  # under a multimodal prefix
]


@pytest.mark.parametrize("model_type", ["qwen3_5_moe", "ernie4_5_moe"])
def test_mtp_modules_beside_the_layers_are_the_layer_after_the_last(model_type):
    """An MTP module stored as mtp.* / mtp_block.* (not as layer num_hidden_layers, like DeepSeek-V3's) is
    block 'mtp' at the layer after the last: before, 'mtp.layers.0.self_attn.q_proj' was layer 0's q, so
    the MTP module's changes were counted in the first layer's, silently, and mtp.fc / the MTP norms were
    'other'. Without config.json, the layer after the last is the one after the highest any name counts."""
    table = NameTable.from_config({"model_type": model_type, "num_hidden_layers": 2}, [n for n, *_ in MTP_NAMES])
    for name, layer, module, expert in MTP_NAMES:
        info = table.describe(name)
        assert (info.layer, info.block, info.module, info.expert) == (layer, "mtp", module, expert), name
    assert table.unmatched([n for n, *_ in MTP_NAMES]) == []
    assert table.describe("model.layers.0.self_attn.q_proj.weight").block == "attention"
    names = [
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.4.mlp.up_proj.weight",
        "mtp.layers.0.mlp.up_proj.weight",
    ]
    bare = NameTable.from_config({"model_type": model_type}, [*names, "model.visual.blocks.26.mlp.fc1.weight"])
    assert (bare.describe(names[2]).layer, bare.describe(names[1]).layer) == (5, 4)  # not the vision tower's 27


def test_a_qwen3_5_release_with_its_mtp_module_counts_it_apart(family_dirs, tmp_path):
    """A Qwen3.5-MoE pair with the release's MTP module: a change in it is in layer 2 (block mtp), not in layer 0,
    and every tensor is known."""
    folder = family_dirs["qwen3_5_moe_text"]
    sd = read_state_dict(folder)
    for name in [n for n in sd if n.startswith("model.layers.1.")]:  # the full-attention layer, as MTP module 0
        sd[name.replace("model.layers.1.", "mtp.layers.0.")] = sd[name].clone()
    h = sd["model.norm.weight"].shape[0]
    sd["mtp.fc.weight"] = torch.randn(h, 2 * h, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    for norm in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
        sd[f"mtp.{norm}.weight"] = torch.ones(h, dtype=torch.bfloat16)
    base = write_folder(tmp_path / "base", sd, folder)
    ft = _plant(base, tmp_path / "ft", {"mtp.layers.0.self_attn.q_proj.weight": (1, 3), "mtp.fc.weight": (0, 2)})
    a = analyze_updates(str(base), [str(ft)], labels=["ft"], spectra=SpectraOptions(baseline=False))
    rep = a.reports[0]
    t = rep.tensors.set_index("key")
    assert (t.loc["mtp.layers.0.self_attn.q_proj.weight", ["layer", "block", "module"]] == [2, "mtp", "q"]).all()
    blm = rep.by_layer_module().set_index(["layer", "module"])
    assert blm.loc[(2, "q"), "changed"] == 3 and blm.loc[(2, "mtp_proj"), "changed"] == 2
    assert blm["changed"].sum() == 5 and blm.loc[(1, "q"), "numel"] == blm.loc[(2, "q"), "numel"]
    assert not any("naming table" in n for n in rep.notes)
    fig = sparsity_heatmap(rep.by_layer_module())  # the heatmaps say which row is the MTP module
    assert list(fig.layout.yaxis.ticktext)[:3] == ["0", "1", "2 · MTP"]
    spec = a.spectra_located()
    spec = spec[spec["layer"].notna() & ~spec["skipped"].astype(bool)]
    fig = rank_measure_heatmap(spec.assign(layer=spec["layer"].astype(int)))
    assert list(fig.layout.yaxis.ticktext) == ["0", "1", "2 · MTP"]
    from subnetviz.analysis.experts import by_expert, routers
    from subnetviz.figures.moe import expert_heatmap, router_bars

    bars = router_bars(routers(rep))  # no router changed: a 0–1 % axis that says so, not a −1…1 axis of nothing
    assert tuple(bars.layout.yaxis.range) == (0, 1) and bars.layout.annotations[-1].text == "no router entry changed"
    assert list(bars.layout.xaxis.ticktext) == ["0", "1", "2 · MTP"]  # the MTP module's router, labelled so

    from subnetviz.analysis.subspaces import SubspaceOptions, analyze_subspaces
    from subnetviz.figures.subspaces import angle_heatmap

    sub = analyze_subspaces(str(base), [str(ft)], labels=["ft"], options=SubspaceOptions(k=2)).to_frame()
    assert set(sub.loc[sub["name"].str.startswith("mtp."), "block"]) == {"mtp"}
    fig = angle_heatmap(sub[sub["layer"].notna()])  # the subspaces' heatmap ticks it too
    assert list(fig.layout.yaxis.ticktext) == ["0", "1", "2 · MTP"]

    experts = by_expert(rep)  # the MTP module's experts: a row of their own, labelled so
    assert set(experts["layer"]) == {0, 1, 2} and experts.groupby("layer")["mtp"].all().to_dict() == {
        0: False,
        1: False,
        2: True,
    }
    assert list(expert_heatmap(experts).layout.yaxis.ticktext) == ["0", "1", "2 · MTP"]


def _plant(folder, out, names_steps):
    sd = read_state_dict(folder)
    for name, (row, n) in names_steps.items():
        sd[name][row, :n] = bf16_step(sd[name][row, :n], 1)
    return write_folder(out, sd, folder)


def test_mixtral_pair_counts_per_expert(family_dirs, tmp_path):
    base = family_dirs["mixtral"]
    ft = _plant(
        base,
        tmp_path / "ft",
        {
            "model.layers.1.block_sparse_moe.experts.2.w3.weight": (0, 5),
            "model.layers.0.block_sparse_moe.gate.weight": (1, 3),
        },
    )
    rep = analyze_updates(str(base), [str(ft)], labels=["ft"]).reports[0]
    t = rep.tensors.set_index("key")
    assert t.loc["layers.1.block_sparse_moe.experts.2.w3.weight", "changed"] == 5
    assert t.loc["layers.1.block_sparse_moe.experts.2.w3.weight", "expert"] == "2"
    assert t.loc["layers.0.block_sparse_moe.gate.weight", "module"] == "router"
    moe = rep.tensors[rep.tensors["block"] == "moe"]
    assert moe.groupby("expert")["changed"].sum().to_dict() == {"0": 0, "1": 0, "2": 5, "3": 0}
    assert not any("naming table" in n for n in rep.notes)


def test_phi3_fused_projections_split_into_parts(family_dirs, tmp_path):
    base = family_dirs["phi3"]
    # qkv_proj rows: q 0..15, k 16..23, v 24..31 (4 heads of 4, 2 kv heads); gate_up rows: gate 0..31, up 32..63
    sd = read_state_dict(base)
    q = "model.layers.0.self_attn.qkv_proj.weight"
    sd[q][2, :3] = bf16_step(sd[q][2, :3], 1)  # q: 3
    sd[q][20, :2] = bf16_step(sd[q][20, :2], 1)  # k: 2
    sd[q][30, :1] = bf16_step(sd[q][30, :1], 1)  # v: 1
    g = "model.layers.1.mlp.gate_up_proj.weight"
    sd[g][40, :4] = bf16_step(sd[g][40, :4], 1)  # up: 4
    ft = write_folder(tmp_path / "ft", sd, base)
    rep = analyze_updates(str(base), [str(ft)], labels=["ft"]).reports[0]
    blm = rep.by_layer_module().set_index(["layer", "module"])
    assert blm.loc[(0, "q"), "changed"] == 3 and blm.loc[(0, "k"), "changed"] == 2 and blm.loc[(0, "v"), "changed"] == 1
    assert blm.loc[(0, "q"), "numel"] == 16 * 16 and blm.loc[(0, "k"), "numel"] == 8 * 16
    assert blm.loc[(1, "up"), "changed"] == 4 and blm.loc[(1, "gate"), "changed"] == 0


def test_glm4_gate_up_splits_into_halves(family_dirs, tmp_path):
    """GLM-4's gate_up_proj (2I, H): its output is chunked in two, gate first (Glm4MLP)."""
    base = family_dirs["glm4"]
    sd = read_state_dict(base)
    g = "model.layers.0.mlp.gate_up_proj.weight"
    assert sd[g].shape == (64, 16)
    sd[g][5, :2] = bf16_step(sd[g][5, :2], 1)  # gate: 2
    sd[g][40, :3] = bf16_step(sd[g][40, :3], 1)  # up: 3
    ft = write_folder(tmp_path / "ft", sd, base)
    blm = (
        analyze_updates(str(base), [str(ft)], labels=["ft"]).reports[0].by_layer_module().set_index(["layer", "module"])
    )
    assert blm.loc[(0, "gate"), "changed"] == 2 and blm.loc[(0, "up"), "changed"] == 3
    assert blm.loc[(0, "gate"), "numel"] == blm.loc[(0, "up"), "numel"] == 32 * 16


def test_packed_experts_count_per_expert_and_split_gate_up(tmp_path):
    e, inter, hid = 4, 8, 6
    torch.manual_seed(1)
    gu = (torch.randn(e, 2 * inter, hid) * 0.1).to(torch.bfloat16)
    dn = (torch.randn(e, hid, inter) * 0.1).to(torch.bfloat16)
    cfg = {"model_type": "qwen3_moe", "num_experts": e, "num_attention_heads": 2, "tie_word_embeddings": False}
    base = write_folder(
        tmp_path / "b", {"model.layers.0.mlp.experts.gate_up_proj": gu, "model.layers.0.mlp.experts.down_proj": dn}
    )
    gu2 = gu.clone()
    gu2[2, 1, :3] = bf16_step(gu2[2, 1, :3], 1)  # expert 2, gate half: 3
    gu2[3, inter + 1, :2] = bf16_step(gu2[3, inter + 1, :2], 1)  # expert 3, up half: 2
    ft = write_folder(
        tmp_path / "f", {"model.layers.0.mlp.experts.gate_up_proj": gu2, "model.layers.0.mlp.experts.down_proj": dn}
    )
    for f in (base, ft):
        (f / "config.json").write_text(json.dumps(cfg))
    rep = analyze_updates(str(base), [str(ft)], labels=["ft"]).reports[0]
    rows, _ = rep.row_col["layers.0.mlp.experts.gate_up_proj"]
    assert list(rows) == [0, 0, 3, 2]  # per expert
    blm = rep.by_layer_module().set_index(["layer", "module"])
    assert blm.loc[(0, "gate"), "changed"] == 3 and blm.loc[(0, "up"), "changed"] == 2
    # Bad input: the config says 8 experts, the packed tensor holds 4.
    (ft / "config.json").write_text(json.dumps({**cfg, "num_experts": 8}))
    with pytest.raises(CheckpointError) as err:
        analyze_updates(str(base), [str(ft)])
    msg = str(err.value)
    assert "\n" not in msg and "model.layers.0.mlp.experts." in msg and "expected 8 experts" in msg and "found 4" in msg


@pytest.mark.parametrize("layout", ["(E, 2I, H)", "(E, H, 2I)"])
def test_qwen3_vl_moe_packed_experts_split_gate_up_in_either_layout(tmp_path, layout):
    """Qwen's own Qwen3-VL-MoE releases store gate_up_proj (E, H, 2I), gate and up halves of the last dim;
    transformers 5 saves the same model (E, 2I, H). Both count gate and up apart (before: the (E, H, 2I)
    release was split along H, half of each expert's gate counted as up, silently)."""
    e, inter, hid = 4, 6, 8
    gen = torch.Generator().manual_seed(2)
    gu = (torch.randn(e, 2 * inter, hid, generator=gen) * 0.1).to(torch.bfloat16)
    gu2 = gu.clone()
    gu2[2, 1, :3] = bf16_step(gu2[2, 1, :3], 1)  # expert 2, gate: 3
    gu2[3, inter + 4, :2] = bf16_step(gu2[3, inter + 4, :2], 1)  # expert 3, up: 2
    if layout == "(E, H, 2I)":
        gu, gu2 = gu.transpose(1, 2), gu2.transpose(1, 2)
    cfg = {"model_type": "qwen3_vl_moe", "text_config": {"hidden_size": hid, "num_experts": e}}
    name = "model.language_model.layers.0.mlp.experts.gate_up_proj"
    folders = [write_folder(tmp_path / k, {name: t}) for k, t in (("b", gu), ("f", gu2))]
    for f in folders:
        (f / "config.json").write_text(json.dumps(cfg))
    rep = analyze_updates(str(folders[0]), [str(folders[1])], labels=["ft"]).reports[0]
    blm = rep.by_layer_module().set_index(["layer", "module"])
    assert blm.loc[(0, "gate"), "changed"] == 3 and blm.loc[(0, "up"), "changed"] == 2
    assert blm.loc[(0, "gate"), "numel"] == blm.loc[(0, "up"), "numel"] == e * inter * hid


def test_granite_4_experts_and_shared_mlp_split_into_gate_and_up(family_dirs, tmp_path):
    """Granite-4.0-H: block_sparse_moe.input_linear packs every expert's [gate; up] (E, 2I, H), shared_mlp's
    input_linear is one fused [gate; up] (GraniteMoeSharedMLP: chunk(2), the first half through the
    activation); its Mamba layers are 'ssm' (before: all of these 'other')."""
    base = family_dirs["granitemoehybrid"]
    sd = read_state_dict(base)
    packed, shared = (
        "model.layers.0.block_sparse_moe.input_linear.weight",
        "model.layers.1.shared_mlp.input_linear.weight",
    )
    assert sd[packed].shape == (4, 64, 16) and sd[shared].shape == (32, 16)
    sd[packed][1, 3, :2] = bf16_step(sd[packed][1, 3, :2], 1)  # expert 1, gate: 2
    sd[packed][2, 40, :3] = bf16_step(sd[packed][2, 40, :3], 1)  # expert 2, up: 3
    sd[shared][20, :4] = bf16_step(sd[shared][20, :4], 1)  # shared, up: 4
    m = "model.layers.0.mamba.in_proj.weight"
    sd[m][0, :5] = bf16_step(sd[m][0, :5], 1)  # Mamba mixer: 5
    ft = write_folder(tmp_path / "ft", sd, base)
    rep = analyze_updates(str(base), [str(ft)], labels=["ft"]).reports[0]
    blm = rep.by_layer_module().set_index(["layer", "module"])
    assert blm.loc[(0, "gate"), "changed"] == 2 and blm.loc[(0, "up"), "changed"] == 3
    assert blm.loc[(0, "gate"), "numel"] == blm.loc[(0, "up"), "numel"] == 4 * 32 * 16 + 16 * 16  # experts, shared
    assert blm.loc[(1, "up"), "changed"] == 4 and blm.loc[(1, "gate"), "changed"] == 0
    assert blm.loc[(0, "ssm"), "changed"] == 5 and blm["changed"].sum() == 14
    assert not any("naming table" in n for n in rep.notes)


def test_granite_moe_swa_experts_split_gate_first_not_interleaved(family_dirs, tmp_path):
    """Granite MoE SWA: block_sparse_moe.experts.gate_up_proj (E, 2I, H) is chunked in two along its rows, gate
    first (GraniteMoeSWAExperts: linear(x, gate_up_proj[e]).chunk(2, -1)); shared_mlp.input_linear likewise.
    Before: its attention sinks chose gpt-oss's table, whose split interleaves the last dim (H), and a change in
    expert 1's up rows was counted half gate, half up."""
    base = family_dirs["granitemoe_swa"]
    sd = read_state_dict(base)
    packed, shared = (
        "model.layers.1.block_sparse_moe.experts.gate_up_proj",
        "model.layers.0.shared_mlp.input_linear.weight",
    )
    assert sd[packed].shape == (4, 64, 16) and sd[shared].shape == (32, 16)
    sd[packed][1, 32:, :] = bf16_step(sd[packed][1, 32:, :], 1)  # expert 1, every up row: 32 x 16
    sd[packed][2, 5, :3] = bf16_step(sd[packed][2, 5, :3], 1)  # expert 2, gate: 3
    sd[shared][20, :4] = bf16_step(sd[shared][20, :4], 1)  # shared, up: 4
    r = "model.layers.1.block_sparse_moe.router.weight"
    sd[r][0, :2] = bf16_step(sd[r][0, :2], 1)  # router: 2
    ft = write_folder(tmp_path / "ft", sd, base)
    rep = analyze_updates(str(base), [str(ft)], labels=["ft"], spectra=None).reports[0]
    blm = rep.by_layer_module().set_index(["layer", "module"])
    assert blm.loc[(1, "up"), "changed"] == 32 * 16 and blm.loc[(1, "gate"), "changed"] == 3
    assert blm.loc[(1, "gate"), "numel"] == blm.loc[(1, "up"), "numel"] == 4 * 32 * 16 + 16 * 16  # experts, shared
    assert blm.loc[(0, "up"), "changed"] == 4 and blm.loc[(0, "gate"), "changed"] == 0
    assert blm.loc[(1, "router"), "changed"] == 2 and blm["changed"].sum() == 32 * 16 + 3 + 4 + 2
    assert not any("naming table" in n for n in rep.notes)


def _gated_query_rows(kind: str) -> dict[str, torch.Tensor]:
    """The rows of layer 1's q_proj that the model reads as the query, and the rest (the gate): q_proj's output
    set to its row indices (weight zero but column 0 = 0, 1, 2, …, input the first unit vector) and the query
    captured where the attention hands it to q_norm."""
    attn = _build(kind).model.layers[1].self_attn
    rows, seen = attn.q_proj.out_features, {}
    hook = attn.q_norm.register_forward_hook(lambda mod, args, out: seen.setdefault("q", args[0]))
    x = torch.zeros(1, 1, attn.q_proj.in_features, dtype=torch.bfloat16)
    x[..., 0] = 1
    rope = (
        torch.ones(1, 1, attn.head_dim, dtype=torch.bfloat16),
        torch.zeros(1, 1, attn.head_dim, dtype=torch.bfloat16),
    )
    with torch.no_grad():
        attn.q_proj.weight.zero_()
        attn.q_proj.weight[:, 0] = torch.arange(rows)
        attn(x, position_embeddings=rope, attention_mask=None)
    hook.remove()
    query = seen["q"].flatten().long().unique()
    gate = torch.tensor(sorted(set(range(rows)) - set(query.tolist())))
    assert len(query) == len(gate) == rows // 2
    return {"q": query, "attn_gate": gate}


@pytest.mark.parametrize("kind", ["qwen3_next", "qwen3_5_text", "qwen3_5_moe_text"])
def test_gated_query_proj_splits_into_query_and_gate(family_dirs, tmp_path, kind):
    """Qwen3-Next's and Qwen3.5's full-attention q_proj holds per head the query and the gate on attention's
    output (q_proj(x).view(..., heads, 2·head_dim) chunked in two). A finetune that changes only the gate rows
    (located by running the model's own attention) counts them as attn_gate, none as q; one query row's change
    counts as q. Before: all of it was q."""
    rows = _gated_query_rows(kind)
    base = family_dirs[kind]
    sd = read_state_dict(base)
    q = "model.layers.1.self_attn.q_proj.weight"
    sd[q][rows["attn_gate"], :3] = bf16_step(sd[q][rows["attn_gate"], :3], 1)  # every gate row: 3 each
    r = int(rows["q"][5])
    sd[q][r, :2] = bf16_step(sd[q][r, :2], 1)  # one query row: 2
    ft = write_folder(tmp_path / "ft", sd, base)
    rep = analyze_updates(str(base), [str(ft)], labels=["ft"], spectra=None).reports[0]
    parts = rep.parts[rep.parts["key"] == "layers.1.self_attn.q_proj.weight"].set_index("module")
    assert parts.loc["attn_gate", "changed"] == 3 * len(rows["attn_gate"]) and parts.loc["q", "changed"] == 2
    assert parts.loc["attn_gate", "numel"] == parts.loc["q", "numel"] == len(rows["q"]) * sd[q].shape[1]
    blm = rep.by_layer_module().set_index(["layer", "module"])
    assert blm.loc[(1, "attn_gate"), "changed"] == 3 * len(rows["attn_gate"]) and blm.loc[(1, "q"), "changed"] == 2


def test_per_head_norms_are_left_out_of_spectra_and_subspaces(tmp_path):
    """Cohere with use_qk_norm: q_norm and k_norm weights are (heads, head_dim), 2-D but a norm's scales. The
    spectra (and the plan the cost estimate prices) and the subspaces leave them out, as every other norm;
    every other 2-D weight is decomposed as before, and the norms' changes are still counted. Before: both
    decomposed them, though analyze_subspaces says norms are left out."""
    from subnetviz.analysis.subspaces import SubspaceOptions, analyze_subspaces
    from subnetviz.analysis.update_pass import planned_spectra

    base = tmp_path / "base"
    _build("cohere").save_pretrained(base)
    ft = _plant(
        base,
        tmp_path / "ft",
        {"model.layers.0.self_attn.q_norm.weight": (1, 3), "model.layers.1.self_attn.k_proj.weight": (0, 4)},
    )
    spectra = SpectraOptions(baseline=False)
    a = analyze_updates(str(base), [str(ft)], labels=["ft"], spectra=spectra)
    t = a.reports[0].tensors.set_index("key")
    norms = t[(t["ndim"] == 2) & (t["block"] == "norm")]
    assert set(norms["module"]) == {"attn_norm"} and len(norms) == 4  # q_norm and k_norm of 2 layers
    assert t.loc["layers.0.self_attn.q_norm.weight", "changed"] == 3
    matrices = t[(t["ndim"] == 2) & (t["block"] != "norm")]
    assert set(a.spectra_table()["name"]) == set(matrices.index)
    assert len(planned_spectra(str(base), [str(ft)], spectra)) == len(matrices)
    sub = analyze_subspaces(str(base), [str(ft)], labels=["ft"], options=SubspaceOptions(k=2)).to_frame()
    assert set(sub["name"]) == set(matrices["name"])


def test_unknown_tensors_are_other_and_counted_in_a_notice(tmp_path):
    w = torch.ones(4, 4, dtype=torch.bfloat16)
    sd = {
        "model.layers.0.self_attn.q_proj.weight": w,
        "model.layers.0.mystery_gate.weight": w.clone(),
        "model.layers.1.mystery_gate.weight": w.clone(),
    }
    base = write_folder(tmp_path / "b", sd)
    (base / "config.json").write_text(json.dumps({"model_type": "llama"}))
    rep = analyze_updates(str(base), [str(base)]).reports[0]
    assert set(rep.tensors.loc[rep.tensors["key"].str.contains("mystery"), "module"]) == {"other"}
    note = next(n for n in rep.notes if "naming table" in n)
    assert note.startswith("2 tensor(s) match no llama naming table") and "model.layers.1.mystery_gate.weight" in note


def test_moe_tables_and_figures(family_dirs, tmp_path):
    """by_expert / routers from a planted Qwen2-MoE pair (routed, shared, router) and a packed layout;
    the figures draw one cell per (layer, expert) with the planted density."""
    from subnetviz.analysis.experts import by_expert, routers
    from subnetviz.analysis.updates import read_analysis, write_analysis
    from subnetviz.figures.moe import expert_heatmap, router_bars

    base = family_dirs["qwen2_moe"]
    ft = _plant(
        base,
        tmp_path / "ft",
        {
            "model.layers.1.mlp.experts.3.up_proj.weight": (0, 6),
            "model.layers.0.mlp.shared_expert.down_proj.weight": (2, 4),
            "model.layers.1.mlp.gate.weight": (0, 2),
        },
    )
    a = analyze_updates(str(base), [str(ft)], labels=["ft"])
    back = read_analysis(write_analysis(a, tmp_path / "out"))  # the CSVs keep "3" and "shared" as strings
    for rep in (a.reports[0], back.reports[0]):
        e = by_expert(rep).set_index(["layer", "expert"])
        assert e.loc[(1, "3"), "changed"] == 6 and e.loc[(1, "3"), "numel"] == 3 * 8 * 16
        assert e.loc[(0, "shared"), "changed"] == 4 and e.loc[(0, "shared"), "kind"] == "shared"
        assert e["changed"].sum() == 10 and len(e) == 2 * 5
        r = routers(rep).set_index("key")
        assert r.loc["layers.1.mlp.gate.weight", "changed"] == 2
        assert "layers.0.mlp.shared_expert_gate.weight" not in r.index  # (a shared expert's gate is no router)
    fig = expert_heatmap(by_expert(a.reports[0]), value="density")
    heat = fig.data[0]
    assert list(heat.x) == ["E0", "E1", "E2", "E3", "shared"] and list(heat.y) == ["0", "1"]
    assert heat.z[1][3] == pytest.approx(100 * 6 / (3 * 8 * 16))
    bars = router_bars(routers(a.reports[0]))
    assert len(bars.data) == 1 and list(bars.data[0].y) == pytest.approx([0.0, 100 * 2 / (4 * 16)])  # the gate alone
    assert (
        expert_heatmap(by_expert(analyze_updates(str(family_dirs["qwen3"]), [str(family_dirs["qwen3"])]).reports[0]))
        .layout.annotations[0]
        .text.startswith("no experts")
    )


def _tiny_qwen2_5_omni(folder):
    """Qwen2.5-Omni built by transformers from its own config, every nested part shrunk, saved as it saves
    releases: thinker.model.layers.* (the language model), thinker.audio_tower.*, thinker.visual.*,
    talker.model.layers.* (the speech-code language model), token2wav.*."""
    import transformers as T

    small = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, vocab_size=128, d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
        depth=2, embed_dim=32, num_heads=4, out_hidden_size=32, num_layers=2, dim=32, ff_mult=2, emb_dim=32,
        enc_dim=32, output_dim=32, num_mel_bins=16, mel_dim=16, repeats=1, fullatt_block_indexes=[1],
        window_size=16, spatial_merge_size=2, patch_size=2, temporal_patch_size=2, in_channels=3, in_chans=3,
        upsample_initial_channel=32, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]],
        upsample_rates=[2], upsample_kernel_sizes=[4],
    )  # fmt: skip

    def shrink(c):
        for v in vars(c).values():
            if isinstance(v, T.PretrainedConfig):
                shrink(v)
        for k, v in small.items():
            if hasattr(c, k) and not isinstance(getattr(c, k), T.PretrainedConfig):
                setattr(c, k, v)

    cfg = T.Qwen2_5OmniConfig()
    shrink(cfg)
    torch.manual_seed(0)
    T.Qwen2_5OmniForConditionalGeneration(cfg).to(torch.bfloat16).save_pretrained(folder)
    return folder


def test_an_omni_models_thinker_is_the_language_model_and_its_other_parts_are_blocks_of_their_own(tmp_path):
    """Qwen2.5-Omni keeps three stacks of numbered layers: the thinker's, the audio tower's and the talker's.
    Read with the first integer in each name (and with OPT's table, guessed from the audio tower's fc1/fc2), a
    change in the talker's layer 0 or the audio tower's was counted in the language model's layer 0, silently.
    The thinker is the language model; audio, vision and speech are blocks of their own."""
    base = _tiny_qwen2_5_omni(tmp_path / "base")
    ck = open_checkpoint(str(base))
    t = ck.names_table
    assert t.family == "llama" and t.notice is None and t.num_layers is None and t.mtp_start == 2
    assert t.unmatched(ck.names) == []
    seen = {}
    for n in ck.names:
        info = t.describe(n)
        part = n.split(".")[1] if n.startswith("thinker.") else n.split(".")[0]
        seen.setdefault(part, set()).add(info.block)
    assert seen["model"] <= {"attention", "mlp", "norm", "embedding"} and seen["lm_head"] == {"head"}
    assert seen["audio_tower"] == {"audio"} and seen["visual"] == {"vision"}
    assert seen["talker"] == {"speech"} and seen["token2wav"] == {"speech"}
    q = t.describe("thinker.model.layers.1.self_attn.q_proj.weight")
    assert (q.layer, q.block, q.module) == (1, "attention", "q")
    ft = _plant(
        base,
        tmp_path / "ft",
        {
            "talker.model.layers.0.self_attn.q_proj.weight": (0, 4),
            "thinker.audio_tower.layers.0.self_attn.q_proj.weight": (0, 3),
            "thinker.model.layers.0.self_attn.q_proj.weight": (1, 2),
        },
    )
    for f in (base, ft):  # as a release's index lists them
        (f / "config.json").write_text((base / "config.json").read_text())
    rep = analyze_updates(str(base), [str(ft)], labels=["ft"], spectra=None).reports[0]
    blm = rep.by_layer_module().set_index(["layer", "module"])
    assert blm.loc[(0, "q"), "changed"] == 2  # the thinker's own change only
    assert blm.loc[(0, "speech"), "changed"] == 4 and blm.loc[(0, "audio"), "changed"] == 3
    assert not any("naming table" in n for n in rep.notes)
