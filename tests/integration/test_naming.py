"""Tensor name -> (layer, block, module) per architecture family, and the generic fallback.

Proves: representative names of each family land on the right layer and module kind; every
tensor of the real (tiny) HF checkpoints gets a known kind and the layer HF numbers it with; an
unknown architecture is parsed generically with a notice and analysed without a crash.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from subnetviz.analysis.updates import analyze_updates
from subnetviz.checkpoints import open_checkpoint
from subnetviz.checkpoints.naming import NameTable, detect_family, strip_prefix

CASES = {
    "llama": [
        ("model.layers.3.self_attn.q_proj.weight", 3, "attention", "q"),
        ("model.layers.2.self_attn.k_proj.bias", 2, "attention", "k"),  # Qwen2's QKV biases
        ("model.layers.0.self_attn.v_proj.weight", 0, "attention", "v"),
        ("model.layers.0.self_attn.o_proj.weight", 0, "attention", "o"),
        ("model.layers.11.mlp.gate_proj.weight", 11, "mlp", "gate"),
        ("model.layers.11.mlp.up_proj.weight", 11, "mlp", "up"),
        ("model.layers.0.mlp.down_proj.weight", 0, "mlp", "down"),
        ("model.layers.1.input_layernorm.weight", 1, "norm", "attn_norm"),
        ("model.layers.1.post_attention_layernorm.weight", 1, "norm", "mlp_norm"),
        ("model.layers.4.self_attn.q_norm.weight", 4, "norm", "attn_norm"),  # Qwen3
        ("model.norm.weight", None, "norm", "final_norm"),
        ("model.embed_tokens.weight", None, "embedding", "embed"),
        ("lm_head.weight", None, "head", "lm_head"),
        ("layers.7.mlp.up_proj.weight", 7, "mlp", "up"),  # no prefix
    ],
    "gpt2": [
        ("transformer.h.11.attn.c_attn.weight", 11, "attention", "qkv"),
        ("transformer.h.0.attn.c_proj.bias", 0, "attention", "o"),
        ("transformer.h.3.mlp.c_fc.weight", 3, "mlp", "mlp_in"),
        ("transformer.h.3.mlp.c_proj.weight", 3, "mlp", "mlp_out"),
        ("transformer.h.2.ln_1.weight", 2, "norm", "attn_norm"),
        ("h.2.ln_2.bias", 2, "norm", "mlp_norm"),
        ("transformer.ln_f.weight", None, "norm", "final_norm"),
        ("transformer.wte.weight", None, "embedding", "embed"),
        ("transformer.wpe.weight", None, "embedding", "pos_embed"),
    ],
    "gpt_neox": [
        ("gpt_neox.layers.5.attention.query_key_value.weight", 5, "attention", "qkv"),
        ("gpt_neox.layers.5.attention.dense.weight", 5, "attention", "o"),
        ("gpt_neox.layers.5.mlp.dense_h_to_4h.bias", 5, "mlp", "mlp_in"),
        ("gpt_neox.layers.5.mlp.dense_4h_to_h.weight", 5, "mlp", "mlp_out"),
        ("gpt_neox.layers.0.input_layernorm.weight", 0, "norm", "attn_norm"),
        ("gpt_neox.layers.0.post_attention_layernorm.bias", 0, "norm", "mlp_norm"),
        ("gpt_neox.final_layer_norm.weight", None, "norm", "final_norm"),
        ("gpt_neox.embed_in.weight", None, "embedding", "embed"),
        ("embed_out.weight", None, "head", "lm_head"),
    ],
    "bert": [
        ("bert.encoder.layer.7.attention.self.query.weight", 7, "attention", "q"),
        ("bert.encoder.layer.7.attention.self.key.bias", 7, "attention", "k"),
        ("bert.encoder.layer.7.attention.self.value.weight", 7, "attention", "v"),
        ("bert.encoder.layer.7.attention.output.dense.weight", 7, "attention", "o"),
        ("bert.encoder.layer.7.attention.output.LayerNorm.weight", 7, "norm", "attn_norm"),
        ("bert.encoder.layer.7.intermediate.dense.weight", 7, "mlp", "mlp_in"),
        ("bert.encoder.layer.7.output.dense.weight", 7, "mlp", "mlp_out"),
        ("bert.encoder.layer.7.output.LayerNorm.bias", 7, "norm", "mlp_norm"),
        ("bert.embeddings.word_embeddings.weight", None, "embedding", "embed"),
        ("bert.embeddings.position_embeddings.weight", None, "embedding", "pos_embed"),
        ("bert.embeddings.LayerNorm.weight", None, "norm", "norm"),
        ("cls.predictions.decoder.weight", None, "head", "lm_head"),
        ("cls.predictions.bias", None, "head", "lm_head"),
        ("cls.predictions.transform.dense.weight", None, "other", "other"),
    ],
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_representative_names(family):
    table = NameTable(family, 4)
    assert table.notice is None
    for name, layer, block, module in CASES[family]:
        info = table.describe(name)
        assert (info.layer, info.block, info.module) == (layer, block, module), name
        assert info.param == name.rsplit(".", 1)[1]


@pytest.mark.parametrize("which, family", [("llama", "llama"), ("gpt2", "gpt2"), ("neox", "gpt_neox")])
def test_every_tensor_of_a_real_checkpoint_is_known(ckpt_zoo, which, family):
    ck = open_checkpoint(getattr(ckpt_zoo, which))
    table = ck.names_table
    assert table.family == family
    for name in ck.names:
        info = table.describe(name)
        assert info.module != "other", name
        m = re.search(r"\.(?:layers|h)\.(\d+)\.", name)
        assert info.layer == (int(m.group(1)) if m else None), name


def test_bert_checkpoint_only_heads_are_other(ckpt_zoo):
    ck = open_checkpoint(ckpt_zoo.bert)
    others = [n for n in ck.names if ck.names_table.describe(n).module == "other"]
    assert others and all(n.startswith("cls.") for n in others)


def test_family_detection():
    assert detect_family("qwen2", []) == "llama" and detect_family("mistral", []) == "llama"
    assert detect_family(None, ["transformer.h.0.attn.c_attn.weight"]) == "gpt2"
    assert detect_family("unknown-thing", ["gpt_neox.layers.0.attention.query_key_value.weight"]) == "gpt_neox"
    assert detect_family(None, ["bert.encoder.layer.0.attention.self.query.weight"]) == "bert"
    assert detect_family("rwkv", ["rwkv.blocks.0.attention.key.weight"]) is None
    assert detect_family(None, ["backbone.layers.0.mixer.in_proj.weight"]) == "mamba"


def test_strip_prefix():
    assert strip_prefix("model.layers.0.x") == "layers.0.x"
    assert strip_prefix("gpt_neox.layers.0.x") == "layers.0.x"
    assert strip_prefix("lm_head.weight") == "lm_head.weight"


def test_unknown_architecture_falls_back_with_a_notice():
    table = NameTable(None, None, "mamba")
    assert "mamba" in table.notice and "Unknown architecture" in table.notice
    assert table.describe("backbone.layers.4.mixer.in_proj.weight").layer == 4
    for odd in ("", ".", "weight", "a..b", "x.99999999999999999999.y", "layers.-1.w"):
        info = table.describe(odd)  # never raises
        assert info.module == "other" and info.block == "other"
    assert table.fused_parts("backbone.layers.0.mixer.in_proj.weight", torch.zeros(6, 2)) is None


def test_digit_runs_in_a_strangers_tensor_names_are_no_index(tmp_path):
    """A run of 25 or 5,000 digits in a tensor name is no layer or expert index: the analysis and the heatmap
    go through (before: int() of 5,000 digits raised ValueError while naming the tensor, and a 25-digit
    layer, labelled through a float, broke the heatmap with a KeyError: 'Something went wrong', on any
    page that showed the checkpoint)."""
    from subnetviz.figures.updates import sparsity_heatmap

    long, huge = "9" * 25, "9" * 5000
    names = [
        "model.layers.0.self_attn.q_proj.weight",
        f"model.layers.{long}.self_attn.q_proj.weight",
        f"model.layers.{huge}.mlp.experts.{huge}.up_proj.weight",
        f"mtp.layers.{huge}.self_attn.q_proj.weight",
    ]
    gen = torch.Generator().manual_seed(0)
    sd = {n: torch.randn(4, 4, generator=gen).to(torch.bfloat16) for n in names}
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        save_file(sd if d == "a" else {n: t + 1 for n, t in sd.items()}, str(tmp_path / d / "model.safetensors"))
        (tmp_path / d / "config.json").write_text('{"model_type": "qwen3_moe", "num_hidden_layers": 1}')
    rep = analyze_updates(tmp_path / "a", [tmp_path / "b"], spectra=None, device="cpu").reports[0]
    layers = dict(zip(rep.tensors["key"].str[:40], rep.tensors["layer"], strict=True))
    assert layers["layers.0.self_attn.q_proj.weight"] == 0 and pd.isna(layers[f"layers.{long}.self_attn"[:40]])
    assert rep.changed == 4 * 16
    fig = sparsity_heatmap(rep.by_layer_module())
    assert "0" in list(fig.data[0].y)


def test_unknown_architecture_is_analysed(tmp_path):
    gen = torch.Generator().manual_seed(0)
    sd = {f"backbone.blocks.{i}.mixer.w": torch.randn(4, 6, generator=gen).to(torch.bfloat16) for i in range(3)}
    sd["backbone.head"] = torch.randn(5, generator=gen).to(torch.bfloat16)
    save_file(sd, str(tmp_path / "a.safetensors"))
    sd["backbone.blocks.1.mixer.w"][0, :2] += 1.0
    save_file(sd, str(tmp_path / "b.safetensors"))
    an = analyze_updates(tmp_path / "a.safetensors", [tmp_path / "b.safetensors"], spectra=None, device="cpu")
    assert any("Unknown architecture" in n for n in an.notes)
    rep = an.reports[0]
    assert rep.changed == 2
    blm = rep.by_layer_module()
    assert int(blm.loc[blm["layer"] == 1, "changed"].sum()) == 2 and set(blm["module"]) == {"other"}


def test_fused_parts_gpt2_and_neox_shapes():
    d, heads = 8, 2
    g = NameTable("gpt2", heads).fused_parts("h.0.attn.c_attn.weight", torch.arange(d * 3 * d).reshape(d, 3 * d))
    assert [tuple(v.shape) for v in g.values()] == [(d, d)] * 3 and int(g["k"][0, 0]) == d
    n = NameTable("gpt_neox", heads).fused_parts("layers.0.attention.query_key_value.bias", torch.arange(3 * d))
    hs = d // heads  # rows: head0 (q k v), head1 (q k v)
    assert n["v"].tolist() == [list(range(2 * hs, 3 * hs)), list(range(5 * hs, 6 * hs))]
    assert NameTable("gpt_neox", None).fused_parts("layers.0.attention.query_key_value.bias", torch.zeros(24)) is None
    assert NameTable("llama", 2).fused_parts("layers.0.self_attn.q_proj.weight", torch.zeros(4, 4)) is None
