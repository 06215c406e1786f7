"""Buffers and mixed precision across a pair.

Proves: int/bool buffers (``position_ids``, ``token_type_ids``, Pythia's bool ``attention.bias``)
are compared bitwise into their own *buffers* table with the exact changed count, a note, and no
effect on the weight sparsity; an fp16 base against a bf16 finetune is compared at the finetune's
stored dtype (base cast round-to-nearest-even) so exactly the planted entries count as changed, and
``precision=`` still overrides; the buffers table survives write/read.
"""

from __future__ import annotations

import pytest
import torch

from subnetviz.analysis.sparsity import SparsityOptions
from subnetviz.analysis.updates import analyze_updates, read_analysis, write_analysis
from tests.ckpt_fixtures import bf16_step, read_state_dict, write_folder
from tests.models import LAYERS


def test_int_and_bool_buffers_are_their_own_group_and_never_an_error(ckpt_zoo, tmp_path):
    sd = read_state_dict(ckpt_zoo.bert)
    sd["bert.embeddings.position_ids"] = torch.arange(32, dtype=torch.int64).unsqueeze(0)
    sd["bert.embeddings.token_type_ids"] = torch.zeros(1, 32, dtype=torch.int64)
    base = write_folder(tmp_path / "base", sd, ckpt_zoo.bert)
    ft_sd = {k: v.clone() for k, v in sd.items()}
    ft_sd["bert.embeddings.token_type_ids"][0, :3] = 1  # 3 planted buffer changes
    w = "bert.encoder.layer.0.attention.self.query.weight"
    ft_sd[w][0, :5] = bf16_step(ft_sd[w][0, :5], 1)  # 5 planted weight changes
    ft = write_folder(tmp_path / "ft", ft_sd, ckpt_zoo.bert)
    rep = analyze_updates(str(base), [str(ft)], labels=["ft"]).reports[0]
    buf = rep.buffers.set_index("key")
    assert set(buf.index) == {"embeddings.position_ids", "embeddings.token_type_ids"}
    assert (buf["group"] == "buffers").all()
    assert buf.loc["embeddings.token_type_ids", "changed"] == 3 and buf.loc["embeddings.position_ids", "changed"] == 0
    assert rep.changed == 5  # weights only
    n_float = sum(
        v.numel() for k, v in sd.items() if v.dtype.is_floating_point and k != "cls.predictions.decoder.weight"
    )
    assert rep.numel == n_float
    assert any(n.startswith("Buffers: 2 non-parameter tensor(s)") and "3 changed entries" in n for n in rep.notes)
    back = read_analysis(write_analysis(analyze_updates(str(base), [str(ft)], labels=["ft"]), tmp_path / "out"))
    assert back.reports[0].buffers.set_index("key").loc["embeddings.token_type_ids", "changed"] == 3


def test_pythia_bool_attention_bias_is_a_buffer(ckpt_zoo, tmp_path):
    sd = read_state_dict(ckpt_zoo.neox)
    for layer in range(LAYERS):  # as Pythia's released checkpoints store them
        sd[f"gpt_neox.layers.{layer}.attention.bias"] = torch.tril(torch.ones(1, 1, 32, 32, dtype=torch.bool))
        sd[f"gpt_neox.layers.{layer}.attention.masked_bias"] = torch.tensor(-1e9)
    base = write_folder(tmp_path / "base", sd, ckpt_zoo.neox)
    rep = analyze_updates(str(base), [str(base)], labels=["same"]).reports[0]
    groups = rep.buffers.groupby("group")["key"].count().to_dict()
    assert groups == {"buffers": 2 * LAYERS} and rep.buffers["changed"].sum() == 0
    assert rep.changed == 0 and not rep.tensors["key"].str.contains("attention.bias").any()


def test_fp16_base_and_bf16_finetune_are_compared_at_the_finetunes_dtype(tmp_path):
    torch.manual_seed(0)
    base32 = torch.randn(64, 48) * 0.05
    base16 = base32.to(torch.float16)
    ft = base16.to(torch.bfloat16)  # the same weights saved in bf16 (RNE) ...
    ft[3, :7] = bf16_step(ft[3, :7], 2)  # ... with 7 entries really updated
    name = "model.layers.0.mlp.up_proj.weight"
    cfg = {"model_type": "llama", "tie_word_embeddings": False}
    b = write_folder(tmp_path / "b", {name: base16})
    f = write_folder(tmp_path / "f", {name: ft})
    for folder in (b, f):
        (folder / "config.json").write_text(__import__("json").dumps(cfg))
    rep = analyze_updates(str(b), [str(f)], labels=["ft"]).reports[0]
    assert rep.changed == 7
    assert rep.tensors.loc[0, "dtype"] == "bfloat16"
    note = next(n for n in rep.notes if n.startswith("Mixed precision"))
    assert "float16 in the base and bfloat16 in the finetune" in note and name in note
    assert "round-to-nearest-even" in note
    analysis = analyze_updates(str(b), [str(f)], labels=["ft"])  # the page lists the analysis' notes
    assert any(n.startswith("ft: Mixed precision") for n in analysis.notes)
    # The override: at fp32 the two roundings differ almost everywhere, and no cast note is written.
    rep32 = analyze_updates(str(b), [str(f)], labels=["ft"], options=SparsityOptions(precision="fp32")).reports[0]
    assert rep32.changed > 1000 and not any(n.startswith("Mixed precision") for n in rep32.notes)


def test_gpt2_float_causal_mask_is_a_buffer(ckpt_zoo, tmp_path):
    """openai-community/gpt2 and the finetunes saved from it store ``h.N.attn.bias``, the causal mask, as float32
    (1, 1, n_ctx, n_ctx): it was counted as weights (module ``other``), 12.6 M never-changing entries in GPT-2,
    so every density read 9 % too low. Its attention's own bias, ``c_attn.bias``, stays a weight."""
    sd = read_state_dict(ckpt_zoo.gpt2)
    n_weights = sum(v.numel() for v in sd.values() if v.dtype.is_floating_point)
    prefix = next(k for k in sd if k.endswith("attn.c_attn.bias")).rsplit("attn.c_attn.bias", 1)[0]
    layers = sorted({k.split(".h.")[1].split(".")[0] for k in sd if ".h." in k} or {"0"})
    for layer in layers:  # as the release stores them
        sd[f"{prefix.rsplit('.h.', 1)[0]}.h.{layer}.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
    base = write_folder(tmp_path / "base", sd, ckpt_zoo.gpt2)
    ft_sd = {k: v.clone() for k, v in sd.items()}
    c_attn = next(k for k in sd if k.endswith("attn.c_attn.bias"))
    ft_sd[c_attn][:4] = bf16_step(ft_sd[c_attn][:4], 1)
    ft = write_folder(tmp_path / "ft", ft_sd, ckpt_zoo.gpt2)
    rep = analyze_updates(str(base), [str(ft)], labels=["ft"]).reports[0]
    assert rep.numel == n_weights and rep.changed == 4  # the masks not among the weights; c_attn.bias is
    assert set(rep.buffers["key"].str.rsplit(".", n=2).str[-2:].str.join(".")) == {"attn.bias"}
    assert len(rep.buffers) == len(layers) and rep.buffers["changed"].sum() == 0


def test_the_workspace_counts_parameters_as_the_analysis_does(ckpt_zoo, tmp_path):
    """The Workspace's "parameters" summed every stored tensor: a GPT-2 release with its float causal masks
    (h.N.attn.bias, 12.6 M entries in GPT-2) read 137 M parameters beside an analysis of 124 M."""
    from subnetviz.uilogic import checkpoint_info

    sd = read_state_dict(ckpt_zoo.gpt2)
    weights = sum(t.numel() for t in sd.values())
    for i in range(LAYERS):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16))
    folder = write_folder(tmp_path / "gpt2-release", sd, ckpt_zoo.gpt2)
    info = checkpoint_info(str(folder))
    assert info["params"] == weights == analyze_updates(str(folder), [str(folder)]).reports[0].numel
    assert sum(info["dtypes"].values()) == weights


def test_a_weight_stored_as_integers_in_the_finetune_is_refused_by_name(ckpt_zoo, tmp_path):
    """Any non-float tensor is a buffer, and either side being one made the pair one: a finetune whose final
    norm was saved as int32 read 448,704 instead of 448,800 parameters, with no word but a buffers note."""
    from subnetviz.errors import CheckpointError

    sd = read_state_dict(ckpt_zoo.llama)
    name = next(k for k in sd if k.endswith("model.norm.weight"))
    sd[name] = sd[name].to(torch.int32)
    ft = write_folder(tmp_path / "ft", sd, ckpt_zoo.llama)
    with pytest.raises(CheckpointError) as err:
        analyze_updates(str(ckpt_zoo.llama), [str(ft)])
    msg = str(err.value)
    assert "\n" not in msg and repr(name) in msg and "int32 there" in msg and "bfloat16 in the base" in msg


def test_a_causal_mask_cast_to_bf16_by_a_conversion_script_stays_a_buffer(ckpt_zoo, tmp_path):
    """Pythia's bool attention.bias against a finetune whose state dict was cast wholesale to bf16: a buffer on
    both sides (it was refused as a weight stored as integers), and its 16 × 16 entries never count."""
    from tests.models import LAYERS

    sd = read_state_dict(ckpt_zoo.neox)
    for i in range(LAYERS):
        sd[f"gpt_neox.layers.{i}.attention.bias"] = torch.tril(torch.ones(1, 1, 16, 16, dtype=torch.bool))
    base = write_folder(tmp_path / "base", sd, ckpt_zoo.neox)
    ft_sd = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    w = next(k for k in ft_sd if k.endswith("mlp.dense_h_to_4h.weight"))
    ft_sd[w][0, 0] = bf16_step(ft_sd[w][0, :1], 1)[0]
    ft = write_folder(tmp_path / "ft", ft_sd, ckpt_zoo.neox)
    rep = analyze_updates(str(base), [str(ft)]).reports[0]
    assert rep.changed == 1 and set(rep.buffers["group"]) == {"buffers"} and len(rep.buffers) == LAYERS
