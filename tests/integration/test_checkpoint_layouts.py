"""Checkpoint layouts that other libraries write, read as they are meant.

Proves: a PEFT LoRA of a vision-language model (saved under the names the model has in memory) merges onto
the base transformers saved under its release names, equal to PEFT's own merge bit for bit; FP8 weights with
E8M0 block scales (FineGrainedFP8Config(scale_fmt="ue8m0")) are read and dequantised as transformers loads
them; a bitsandbytes 4-bit finetune against a float base is refused in one line saying so; Falcon's fused
query_key_value is split into q, k and v as the config's layout says (and not split where none says it), and so is
GPT-BigCode's c_attn (not read as GPT-2's Conv1D, also where no config.json says which it is);
GLM-4.5's multi-token-prediction layer takes DeepSeek-V3's module names.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors.torch import save_file

from subnetviz.analysis.updates import SpectraOptions, analyze_updates
from subnetviz.checkpoints import open_checkpoint
from subnetviz.errors import AlignmentError, CheckpointError
from tests.ckpt_fixtures import read_state_dict, write_folder

_TEXT = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
)
_SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=28)


def _vlm(kind: str):
    if kind == "gemma3":  # saved as language_model.model.layers.…, in memory model.language_model.layers.…
        cfg = T.Gemma3Config(
            text_config=dict(_TEXT, sliding_window=16),
            vision_config=dict(_SIGLIP, patch_size=14),
            mm_tokens_per_image=4,
        )
        return T.Gemma3ForConditionalGeneration(cfg)
    if kind == "qwen2_5_vl":  # saved as model.layers.… and visual.…
        cfg = T.Qwen2_5_VLConfig(
            text_config=dict(_TEXT, rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2]}),
            vision_config=dict(
                depth=1,
                hidden_size=32,
                intermediate_size=64,
                num_heads=4,
                out_hidden_size=32,
                fullatt_block_indexes=[0],
            ),
        )
        return T.Qwen2_5_VLForConditionalGeneration(cfg)
    vision = dict(_SIGLIP, model_type="clip_vision_model", patch_size=14, projection_dim=32)
    return T.LlavaForConditionalGeneration(
        T.LlavaConfig(text_config=dict(_TEXT, model_type="llama"), vision_config=vision)
    )


@pytest.mark.parametrize("kind", ["gemma3", "qwen2_5_vl", "llava"])
def test_peft_lora_of_a_vision_language_model_merges_as_peft_merges_it(tmp_path, kind):
    """PEFT saves a VLM adapter under the names in memory (``model.language_model.layers.…``, the tower's
    ``model.vision_tower.…`` / ``model.visual.…``), transformers 5 saves the base under release names: each
    target is the base's tensor of the same name past its model prefix, and the merged finetune equals PEFT's
    own merge_and_unload saved by transformers, bit for bit. The alpha_pattern names a module as PEFT matches
    it, in memory, and target_modules too. Before: "targets 'model.language_model.layers.0…', which the base does not hold"."""
    from peft import LoraConfig, get_peft_model

    from subnetviz.checkpoints.adapters import open_finetune

    torch.manual_seed(0)
    model = _vlm(kind)
    model.save_pretrained(tmp_path / "base")
    # matched by PEFT against the names in memory, which no stored name matches
    targets = (
        r"model\.language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)|model\.(vision_tower|visual)\..*\.(q_proj|qkv)"
    )
    lora = LoraConfig(
        r=4,
        lora_alpha=16,
        init_lora_weights=False,
        target_modules=targets,
        alpha_pattern={"language_model.layers.1.self_attn.v_proj": 3},
    )
    torch.manual_seed(1)
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(tmp_path / "adapter")
    peft_model.merge_and_unload().save_pretrained(tmp_path / "merged")
    merged = read_state_dict(tmp_path / "merged")
    base = open_checkpoint(tmp_path / "base")
    assert not any(n.startswith("model.language_model.") for n in base.names)  # release names, not in-memory ones
    ck = open_finetune(str(tmp_path / "adapter"), base)
    assert len(ck.pairs) >= 5 and any("vision" in n or "visual" in n for n in ck.pairs)
    assert sorted(ck.names) == sorted(merged)
    for name in ck.names:
        assert torch.equal(ck.get(name), merged[name]), name
    rep = analyze_updates(str(tmp_path / "base"), [str(tmp_path / "adapter")], spectra=SpectraOptions(enabled=False))
    t = rep.reports[0].tensors.set_index("name")
    assert (t.loc[sorted(ck.pairs), "changed"] > 0).all() and t["changed"].sum() == t.loc[
        sorted(ck.pairs)
    ].changed.sum()


# --- FP8 with E8M0 block scales ----------------------------------------------------------------------------
def _ue8m0_folder(folder: Path, model, block: int = 16, nan_at: str | None = None) -> Path:
    """``model`` block-quantised to FP8 with power-of-two scales stored as F8_E8M0 (``weight_scale_inv``), the
    form transformers' FineGrainedFP8Config(scale_fmt="ue8m0") saves, with its quantization_config."""
    sd = {}
    for k, v in model.state_dict().items():
        if not k.endswith("proj.weight"):
            sd[k] = v.clone()
            continue
        rows, cols = v.shape
        s = torch.empty(math.ceil(rows / block), math.ceil(cols / block))
        code = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
        for i in range(s.shape[0]):
            for j in range(s.shape[1]):
                blk = v[i * block : (i + 1) * block, j * block : (j + 1) * block]
                s[i, j] = sc = 2.0 ** math.ceil(math.log2(float(blk.abs().max()) / 448.0))
                code[i * block : (i + 1) * block, j * block : (j + 1) * block] = (blk / sc).to(torch.float8_e4m3fn)
        sd[k], sd[f"{k}_scale_inv"] = code, s.to(torch.float8_e8m0fnu)
        if k == nan_at:
            sd[f"{k}_scale_inv"].view(torch.uint8)[0, 1] = 0xFF
    folder.mkdir(parents=True)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg["quantization_config"] = {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "weight_block_size": [block, block],
        "scale_fmt": "ue8m0",
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _tiny_llama(seed: int):
    torch.manual_seed(seed)
    return T.LlamaForCausalLM(T.LlamaConfig(**dict(_TEXT, num_hidden_layers=1)))


def test_fp8_with_e8m0_block_scales_is_read_as_transformers_loads_it(tmp_path):
    """E8M0 scales (an exponent byte: 2^(byte − 127)) dequantise each weight to exactly the float32 tensor
    transformers makes of the same folder (it dequantises FP8 on a machine without a GPU), and a finetune
    stored alike is compared; a NaN scale byte (0xFF) is a one-line error naming the scale. Before: the folder
    was refused, "unsupported dtype F8_E8M0"."""
    from subnetviz.analysis.quant import block_size, effective, scale_values, tensor_forms

    base_model = _tiny_llama(0)
    base = _ue8m0_folder(tmp_path / "base", base_model)
    ck = open_checkpoint(base)
    assert ck.dtypes["float8_e8m0fnu"] == sum(ck.meta(n).numel for n in ck.names if n.endswith("_scale_inv")) > 0
    hf = T.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, device_map="cpu").state_dict()
    forms = tensor_forms({n: ck.meta(n) for n in ck.names}, ck.config)
    weights = [n for n in ck.names if n.endswith("proj.weight")]
    assert len(weights) == 7
    for n in weights:
        got = effective(ck.get(n), scale_values(ck, forms[n].scale, "cpu"), forms[n], block_size(ck.config))
        assert torch.equal(got, hf[n]), n

    ft_model = _tiny_llama(0)
    with torch.no_grad():
        ft_model.model.layers[0].mlp.up_proj.weight[:3] *= 1.5
    ft = _ue8m0_folder(tmp_path / "ft", ft_model)
    rep = analyze_updates(str(base), [str(ft)], spectra=SpectraOptions(enabled=False)).reports[0]
    t = rep.tensors.set_index("name")
    assert t.loc["model.layers.0.mlp.up_proj.weight", "changed"] > 0
    assert t.drop("model.layers.0.mlp.up_proj.weight")["changed"].sum() == 0

    bad = _ue8m0_folder(tmp_path / "nan", base_model, nan_at="model.layers.0.self_attn.k_proj.weight")
    with pytest.raises(CheckpointError, match=r"k_proj\.weight_scale_inv.*byte 255 \(NaN in E8M0\)") as err:
        analyze_updates(str(base), [str(bad)], spectra=SpectraOptions(enabled=False))
    assert "\n" not in str(err.value)


# --- bitsandbytes 4-bit against a float base ------------------------------------------------------------
@pytest.mark.parametrize("companions", [True, False])
def test_a_bnb_4bit_finetune_against_a_float_base_is_said_to_be_one(tmp_path, companions):
    """A finetune saved by bitsandbytes in 4 bits (each weight packed two codes a byte as (numel/2, 1) uint8,
    with absmax, quant_map and quant_state beside it) whose codes the reader cannot lay out in the weight's shape
    (blocks of 4096 codes straddle its 64-wide rows; or no quant_state at all) against a bf16 base: one line
    naming the tensor, the quantisation (nf4, from the quant_state's name or the config) and why no
    entry-by-entry comparison is made. Before: "has different shapes … Are these checkpoints of the same
    architecture?". (Codes in whole blocks per row are read and compared: test_bnb4.py.)"""
    model = _tiny_llama(0).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "base")
    sd = read_state_dict(tmp_path / "base")
    out = {}
    g = torch.Generator().manual_seed(0)
    for k, v in sd.items():
        if not k.endswith("proj.weight"):
            out[k] = v
            continue
        out[k] = torch.randint(0, 256, (v.numel() // 2, 1), dtype=torch.uint8, generator=g)
        if companions:
            out[f"{k}.absmax"] = torch.rand(-(-v.numel() // 4096), generator=g)
            out[f"{k}.quant_map"] = torch.linspace(-1, 1, 16)
            state = {"quant_type": "nf4", "blocksize": 4096, "dtype": "bfloat16", "shape": list(v.shape)}
            raw = bytearray(json.dumps(state).encode())
            out[f"{k}.quant_state.bitsandbytes__nf4"] = torch.frombuffer(raw, dtype=torch.uint8)
    qc = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    ft = write_folder(tmp_path / "ft", out, tmp_path / "base", quantization_config=qc)
    with pytest.raises(AlignmentError) as err:
        analyze_updates(str(tmp_path / "base"), [str(ft)], spectra=SpectraOptions(enabled=False))
    msg = str(err.value)
    assert "\n" not in msg and "proj.weight'" in msg and "bitsandbytes 4-bit packed (nf4" in msg
    assert "cannot be compared entry by entry with float weights" in msg and "same architecture" not in msg
    assert ("absmax / quant_map / quant_state beside it" in msg) == companions


# --- Falcon's fused query_key_value ----------------------------------------------------------------------
_FALCON = dict(vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=8, bias=True)


def _qkv_rows(attn, rows: int) -> dict[str, torch.Tensor]:
    """The fused rows transformers reads as q, k and v: its own split of the row indices."""
    q, k, v = attn._split_heads(torch.arange(rows, dtype=torch.float64).view(1, 1, rows))
    return {p: t.flatten().long().unique() for p, t in zip("qkv", (q, k, v), strict=True)}


@pytest.mark.parametrize(
    "flags",
    [
        {"new_decoder_architecture": True, "num_kv_heads": 2},  # Falcon-40B / 180B: per KV group [q…, k, v]
        {"multi_query": True},  # Falcon-7B: [every q head, one k, one v]
        {"multi_query": False},  # every head [q, k, v], as GPT-NeoX
        "bloom",
    ],
)
@pytest.mark.parametrize("part", ["k", "v"])
def test_falcon_fused_qkv_splits_as_its_config_says(tmp_path, flags, part):
    """A finetune that changes only the K (or V) rows of Falcon's query_key_value (weight and bias) counts
    every changed entry as k (v), none as q or the other, in each of Falcon's layouts, the rows located by
    transformers' own FalconAttention._split_heads (BLOOM's, interleaved per head, by its _reshape). Before:
    Falcon was read as GPT-NeoX (its interleaved split), and a K-only change showed q=2048, k=0, v=2048."""
    torch.manual_seed(0)
    if flags == "bloom":
        model = T.BloomForCausalLM(T.BloomConfig(vocab_size=64, hidden_size=64, n_layer=1, n_head=8))
        attn, name = model.transformer.h[0].self_attention, "transformer.h.0.self_attention.query_key_value"
        q, k, v = attn._reshape(torch.arange(3 * 64, dtype=torch.float64).view(1, 1, -1))
        rows = {p: t.flatten().long().unique() for p, t in zip("qkv", (q, k, v), strict=True)}
    else:
        model = T.FalconForCausalLM(T.FalconConfig(**_FALCON, **flags))
        attn, name = model.transformer.h[0].self_attention, "transformer.h.0.self_attention.query_key_value"
        rows = _qkv_rows(attn, attn.query_key_value.weight.shape[0])
    assert sum(len(r) for r in rows.values()) == attn.query_key_value.weight.shape[0]
    model.to(torch.bfloat16).save_pretrained(tmp_path / "base")
    rep = _planted_rows(tmp_path, name, rows, part)
    assert not any("no naming table" in n or "not split" in n for n in rep.notes)


def _planted_rows(tmp_path, name: str, rows: dict, part: str):
    """The pair of the base saved in ``tmp_path / "base"`` and a finetune that moved the rows ``rows[part]`` of
    the fused ``name`` (weight and bias); each part's changed and numel counted, as the model's own rows say; the
    report."""
    sd = read_state_dict(tmp_path / "base")
    for p in ("weight", "bias"):
        t = sd[f"{name}.{p}"]
        t[rows[part]] = (t[rows[part]].float() + 0.25).to(torch.bfloat16)
    ft = write_folder(tmp_path / "ft", sd, tmp_path / "base")
    rep = analyze_updates(str(tmp_path / "base"), [str(ft)], spectra=SpectraOptions(enabled=False)).reports[0]
    parts = rep.parts.set_index(["key", "module"])
    width = 1 + sd[f"{name}.weight"].shape[1]  # the weight's columns and the bias
    key = name.removeprefix("transformer.")
    for p in "qkv":
        got = sum(int(parts.loc[(f"{key}.{s}", p), "changed"]) for s in ("weight", "bias"))
        assert got == (len(rows[p]) * width if p == part else 0), (p, got)
        assert sum(int(parts.loc[(f"{key}.{s}", p), "numel"]) for s in ("weight", "bias")) == len(rows[p]) * width
    return rep


def test_falcon_qkv_of_a_layout_no_config_tells_is_not_split(tmp_path):
    """Falcon's tensor names under a model_type whose layout nothing here knows (the original remote-code
    RefinedWeb configs): the fused tensor is counted whole, and a notice says why."""
    torch.manual_seed(0)
    model = T.FalconForCausalLM(T.FalconConfig(**_FALCON, new_decoder_architecture=True, num_kv_heads=2))
    model.to(torch.bfloat16).save_pretrained(tmp_path / "base")
    cfg = json.loads((tmp_path / "base" / "config.json").read_text())
    cfg["model_type"] = "RefinedWeb"
    (tmp_path / "base" / "config.json").write_text(json.dumps(cfg))
    ck = open_checkpoint(tmp_path / "base")
    table = ck.names_table
    assert table.family == "falcon" and table.unmatched(ck.names) == []
    w = "transformer.h.0.self_attention.query_key_value.weight"
    assert table.describe(w).module == "qkv" and table.fused_parts(w, ck.get(w)) is None
    assert "not split into q, k and v" in table.notice and "\n" not in table.notice


# --- GPT-BigCode's fused c_attn --------------------------------------------------------------------------
_BIGCODE = dict(vocab_size=64, n_embd=48, n_layer=1, n_head=4, n_positions=64)  # head_dim 12


def _bigcode_rows(model) -> dict[str, torch.Tensor]:
    """The c_attn rows transformers reads as q, k and v: c_attn's output set to its row indices (weight zero,
    bias 0, 1, 2, …) and the query, key and value GPTBigCodeAttention hands to attention captured."""
    from transformers.models.gpt_bigcode import modeling_gpt_bigcode as m

    attn, seen = model.transformer.h[0].attn, {}

    def capture(module, query, key, value, *args, **kwargs):
        seen.update(q=query, k=key, v=value)
        return torch.zeros_like(query).transpose(1, 2), None

    model.config._attn_implementation = "eager"
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(m, "eager_attention_forward", capture)
        rows = attn.c_attn.weight.shape[0]
        attn.c_attn.weight.zero_()
        attn.c_attn.bias.copy_(torch.arange(rows))
        attn(torch.zeros(1, 1, attn.embed_dim))
    return {p: seen[p].flatten().long().unique() for p in "qkv"}


@pytest.mark.parametrize("multi_query", [True, False])  # StarCoder-1 / SantaCoder: True
@pytest.mark.parametrize("part", ["k", "v"])
def test_gpt_bigcode_c_attn_splits_its_rows_as_its_config_says(tmp_path, multi_query, part):
    """GPT-BigCode's c_attn is an nn.Linear stored (out, in): multi-query rows [q (H); k (hd); v (hd)], else
    [q, k, v] of each head in turn. A finetune that changes only the K (or V) rows, weight and bias, located by
    transformers' own attention, counts every changed entry as k (v). Before: GPT-2's table split the input
    columns in thirds, and a K-only change read q=192, k=192, v=192 on the weight, v=12 on the bias."""
    torch.manual_seed(0)
    model = T.GPTBigCodeForCausalLM(T.GPTBigCodeConfig(**_BIGCODE, multi_query=multi_query))
    name = "transformer.h.0.attn.c_attn"
    model.to(torch.bfloat16).save_pretrained(tmp_path / "base")
    rows = _bigcode_rows(model.float())
    assert sum(len(r) for r in rows.values()) == model.transformer.h[0].attn.c_attn.weight.shape[0]
    rep = _planted_rows(tmp_path, name, rows, part)
    assert not any("naming table" in n or "not split" in n or "only where" in n for n in rep.notes)


def test_c_attn_without_a_config_is_split_only_where_its_shape_is_gpt2s(tmp_path):
    """Without config.json the names alone cannot tell GPT-2 from GPT-BigCode: a c_attn weight is split in thirds
    of its columns only where it is shaped (H, 3H), as GPT-2's Conv1D is; GPT-BigCode's (H + 2·hd, H) and every
    c_attn bias are counted whole as qkv, and a notice says why. Before: GPT-BigCode's weight was split in thirds
    of its input columns (48 of them here)."""
    torch.manual_seed(0)
    models = {
        "bigcode": T.GPTBigCodeForCausalLM(T.GPTBigCodeConfig(**_BIGCODE)),
        "gpt2": T.GPT2LMHeadModel(T.GPT2Config(**_BIGCODE)),
    }
    for kind, model in models.items():
        sd = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items() if "c_attn" in k or "wte" in k}
        w, b = sd["transformer.h.0.attn.c_attn.weight"], sd["transformer.h.0.attn.c_attn.bias"]
        base = write_folder(tmp_path / kind / "base", sd)  # no config.json
        sd["transformer.h.0.attn.c_attn.weight"] = (w.float() + 0.25).to(torch.bfloat16)
        sd["transformer.h.0.attn.c_attn.bias"] = (b.float() + 0.25).to(torch.bfloat16)
        ft = write_folder(tmp_path / kind / "ft", sd)
        rep = analyze_updates(str(base), [str(ft)], spectra=SpectraOptions(enabled=False)).reports[0]
        blm = rep.by_layer_module().set_index(["layer", "module"])
        assert any("split into q, k and v only where the weight is shaped (H, 3H)" in n for n in rep.notes)
        if kind == "gpt2":  # (48, 144): its columns' thirds, each 48 x 48; its bias whole
            assert w.shape == (48, 144)
            assert [int(blm.loc[(0, p), "changed"]) for p in "qkv"] == [48 * 48] * 3
            assert int(blm.loc[(0, "qkv"), "changed"]) == 144
        else:  # (72, 48): whole
            assert w.shape == (72, 48)
            assert int(blm.loc[(0, "qkv"), "changed"]) == 72 * 48 + 72
            assert not {"q", "k", "v"} & set(blm.loc[0].index)


# --- GLM-4.5's multi-token-prediction layer --------------------------------------------------------------
def test_glm4_moe_mtp_layer_has_deepseeks_module_names(tmp_path):
    """GLM-4.5 stores its MTP layer as layer num_hidden_layers, with DeepSeek-V3's eh_proj, enorm, hnorm and
    shared_head (transformers drops it on load, releases keep it): the same modules as DeepSeek's, in block
    mtp, and no name left unknown. Before: module 'other' and the "match no naming table" notice."""
    cfg = T.Glm4MoeConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        n_routed_experts=4,
        num_experts_per_tok=2,
        first_k_dense_replace=1,
        num_nextn_predict_layers=1,
    )
    torch.manual_seed(0)
    T.Glm4MoeForCausalLM(cfg).save_pretrained(tmp_path / "base")
    sd = read_state_dict(tmp_path / "base")
    mtp = {
        "model.layers.2.eh_proj.weight": ("mtp_proj", (32, 64)),
        "model.layers.2.enorm.weight": ("norm", (32,)),
        "model.layers.2.hnorm.weight": ("norm", (32,)),
        "model.layers.2.shared_head.head.weight": ("lm_head", (64, 32)),
        "model.layers.2.shared_head.norm.weight": ("final_norm", (32,)),
    }
    for n, (_, shape) in mtp.items():
        sd[n] = torch.randn(shape)
    for n in [n for n in sd if n.startswith("model.layers.1.")]:  # the MTP layer's own decoder layer
        sd[n.replace("layers.1.", "layers.2.")] = sd[n].clone()
    ck = open_checkpoint(write_folder(tmp_path / "release", sd, tmp_path / "base"))
    table = ck.names_table
    assert table.unmatched(ck.names) == []
    for n, (module, _) in mtp.items():
        info = table.describe(n)
        assert (info.module, info.block, info.layer) == (module, "mtp", 2), n
    assert table.describe("model.layers.2.mlp.experts.0.gate_proj.weight").block == "mtp"
