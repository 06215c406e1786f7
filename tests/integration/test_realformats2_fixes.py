"""Real checkpoint layouts, second pass (review realformats2): MoE layouts, quantized formats, adapters.

Proves, each against an independent reference (float64 NumPy dequantisations written from each format's
definition, raw recounts of planted changes, PEFT's own ``merge_and_unload``):

1. a Llama 4 release (experts packed transposed: ``gate_up_proj`` (E, H, 2I), ``down_proj`` (E, I, H)) is compared
   expert by expert with a copy stored one by one as llm-compressor / GPTQModel / auto-round write it
   (``gate_proj`` = ``gate_up[e][:, :I]ᵀ``, ``up_proj`` = ``gate_up[e][:, I:]ᵀ``, ``down_proj`` = ``down[e]ᵀ``), bf16 or
   compressed-tensors FP8, its layout taken from the family (H = 2I here: gate_up's shape alone fits both);
2. two quantizations of one model whose scales are laid out differently (FP8 per row against MXFP8's per 32
   columns or 16 × 16 blocks, blocks of 44 against 48 whose scale grids have one shape, int8 groups against rows)
   are aligned and both dequantised, each with its own scales and block;
3. PEFT adapters that save a Mixtral / PhiMoE router or packed experts whole under transformers 5's in-memory
   names are merged onto the base tensors those load into, equal to PEFT's merge; LoRA on the router through
   target_parameters is refused as a 2-D parameter, not as a name that matches nothing;
4. fbgemm's FP8 Llama 4 experts (packed codes, one scale per expert and output feature) are dequantised along the
   right axis (square experts, so the wrong axis would count otherwise), and read per expert against a copy stored
   one by one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from subnetviz.analysis.sparsity import SparsityOptions
from subnetviz.analysis.updates import analyze_updates
from tests.ckpt_fixtures import fp8_quantize, read_state_dict, write_folder

EXPERTS = "model.layers.0.feed_forward.experts."


def _changed(a, b) -> int:
    return int((np.asarray(a) != np.asarray(b)).sum())


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.float32).double().numpy()


def _run(base, ft):
    r = analyze_updates(str(base), [str(ft)], options=SparsityOptions(), spectra=None)
    return r.reports[0]


def _llama4(tmp_path, name: str, *, inter: int, seed: int = 0):
    import transformers as T

    cfg = T.Llama4TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=inter, intermediate_size_mlp=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4, interleave_moe_layer_step=1,
        max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(seed)
    folder = tmp_path / name
    T.Llama4ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(folder)
    return folder


def _per_expert(sd: dict, inter: int) -> dict:
    """Llama 4's packed experts stored one by one, as llm-compressor's SequentialLlama4TextExperts writes them."""
    out = {}
    for k, v in sd.items():
        if k.endswith("experts.gate_up_proj"):
            for e in range(v.shape[0]):
                out[f"{k[: -len('gate_up_proj')]}{e}.gate_proj.weight"] = v[e][:, :inter].t().contiguous()
                out[f"{k[: -len('gate_up_proj')]}{e}.up_proj.weight"] = v[e][:, inter:].t().contiguous()
        elif k.endswith("experts.down_proj"):
            for e in range(v.shape[0]):
                out[f"{k[: -len('down_proj')]}{e}.down_proj.weight"] = v[e].t().contiguous()
        else:
            out[k] = v
    return out


# --- 1. Llama 4 packed (transposed) against per-expert ---------------------------------------------------------
def test_a_llama4_release_is_compared_expert_by_expert_with_a_per_expert_copy(tmp_path):
    inter = 16  # H = 32 = 2I: gate_up (E, 32, 32) fits the (E, 2I, H) reading by its shape too
    base = _llama4(tmp_path, "l4", inter=inter)
    sd = read_state_dict(base)
    copy = _per_expert(sd, inter)
    u = copy[EXPERTS + "2.up_proj.weight"]
    u[0, :3] = u[0, :3] * 2 + 1
    d = copy[EXPERTS + "1.down_proj.weight"]
    d[5, 7:9] = d[5, 7:9] * 2 + 1
    g = copy[EXPERTS + "3.gate_proj.weight"]
    g[4, 1] = g[4, 1] * 2 + 1
    ft = write_folder(tmp_path / "l4_per_expert", copy, base)
    # reference: each per-expert tensor against the base's packed tensor sliced and transposed in NumPy
    gu, dn = _f64(sd[EXPERTS + "gate_up_proj"]), _f64(sd[EXPERTS + "down_proj"])
    want = {}
    for e in range(4):
        want[f"{EXPERTS}{e}.gate_proj.weight"] = _changed(
            gu[e][:, :inter].T, _f64(copy[f"{EXPERTS}{e}.gate_proj.weight"])
        )
        want[f"{EXPERTS}{e}.up_proj.weight"] = _changed(gu[e][:, inter:].T, _f64(copy[f"{EXPERTS}{e}.up_proj.weight"]))
        want[f"{EXPERTS}{e}.down_proj.weight"] = _changed(dn[e].T, _f64(copy[f"{EXPERTS}{e}.down_proj.weight"]))
    assert sum(want.values()) == 6
    for a, b in ((base, ft), (ft, base)):
        rep = _run(a, b)
        got = rep.tensors.set_index("name").changed
        assert {n: int(got[n]) for n in want} == want
        assert int(rep.tensors.changed.sum()) == 6
        assert not any("not compared" in n and "packed" in n for n in rep.notes)
        assert any("gate_up_proj[e, :, :I]ᵀ" in n and "Llama 4" in n for n in rep.notes)


def test_a_llama4_release_against_a_compressed_tensors_fp8_per_expert_copy(tmp_path):
    inter = 16
    base = _llama4(tmp_path, "l4", inter=inter)
    sd = read_state_dict(base)
    copy = _per_expert(sd, inter)
    q = {}
    for k, v in copy.items():  # llm-compressor's FP8 (per channel): every Linear weight of the layers
        if k.endswith(".weight") and v.dim() == 2 and ".layers." in k and "router" not in k:
            s = (v.float().abs().amax(1, keepdim=True).clamp_min(1e-12) / 448.0).to(torch.bfloat16)
            q[k], q[f"{k}_scale"] = (v.float() / s.float()).to(torch.float8_e4m3fn), s
        else:
            q[k] = v
    qc = {"quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
          "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float",
          "strategy": "channel", "symmetric": True, "dynamic": False}}}, "ignore": ["lm_head"]}  # fmt: skip
    ft = write_folder(tmp_path / "l4_fp8", q, base, quantization_config=qc)
    rep = _run(base, ft)
    got = rep.tensors.set_index("name").changed
    gu, dn = _f64(sd[EXPERTS + "gate_up_proj"]), _f64(sd[EXPERTS + "down_proj"])
    for e in range(4):  # compared at the float side's bf16: the dequantised FP8 (exact in float32) rounded to it
        for part, ref in (("gate", gu[e][:, :inter].T), ("up", gu[e][:, inter:].T), ("down", dn[e].T)):
            n = f"{EXPERTS}{e}.{part}_proj.weight"
            w = torch.from_numpy((_f64(q[n]) * _f64(q[f"{n}_scale"])).astype(np.float32)).to(torch.bfloat16)
            assert int(got[n]) == _changed(ref, _f64(w)), n


# --- 2. two quantizations with differently laid-out scales ------------------------------------------------------
def _llama_src(tmp_path):
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    T.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "src")
    return tmp_path / "src", read_state_dict(tmp_path / "src")


def _ct(weights: dict) -> dict:
    return {"quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}}, "ignore": ["lm_head"]}  # fmt: skip


def _linear(k, v) -> bool:
    return v.dim() == 2 and ".layers." in k


@pytest.fixture(scope="module")
def fp8_copies(tmp_path_factory):
    """(folder -> name -> float64 dequantised weight, by each format's definition) of five FP8 copies of one Llama."""
    tmp = tmp_path_factory.mktemp("fp8_copies")
    src, sd = _llama_src(tmp)
    deq, folders = {}, {}
    ch, mx = {}, {}
    for k, v in sd.items():
        if not _linear(k, v):
            ch[k] = mx[k] = v
            continue
        s = v.float().abs().amax(1, keepdim=True) / 448.0
        ch[k], ch[f"{k}_scale"] = (v.float() / s).to(torch.float8_e4m3fn), s.to(torch.bfloat16)
        g = v.float().reshape(v.shape[0], -1, 32)
        e = torch.ceil(torch.log2(g.abs().amax(-1).clamp_min(1e-30) / 448.0)).clamp(-127, 127)
        mx[k] = (g / torch.exp2(e)[..., None]).reshape(v.shape).to(torch.float8_e4m3fn)
        mx[f"{k}_scale"] = (e + 127).to(torch.uint8)
    channel = {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False}
    folders["channel"] = write_folder(tmp / "channel", ch, src, quantization_config=_ct(channel))
    group = {"num_bits": 8, "type": "float", "strategy": "group", "group_size": 32, "symmetric": True}
    folders["mx"] = write_folder(tmp / "mx", mx, src, quantization_config=_ct(group))
    deq["channel"] = lambda k: _f64(ch[k]) * _f64(ch[f"{k}_scale"])
    deq["mx"] = lambda k: _f64(mx[k]) * np.repeat(np.exp2(mx[f"{k}_scale"].double().numpy() - 127), 32, 1)
    for b in (16, 44, 48):
        q = {}
        for k, v in sd.items():
            q[k] = v
            if _linear(k, v):
                q[k], q[f"{k}_scale_inv"] = fp8_quantize(v, (b, b))
        qc = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [b, b]}
        folders[f"block{b}"] = write_folder(tmp / f"block{b}", q, src, quantization_config=qc)

        def block(k, q=q, b=b):
            c, s = _f64(q[k]), _f64(q[f"{k}_scale_inv"])
            return c * np.repeat(np.repeat(s, b, 0), b, 1)[: c.shape[0], : c.shape[1]]

        deq[f"block{b}"] = block
    return folders, deq


@pytest.mark.parametrize(
    "pair",
    [("channel", "mx"), ("mx", "channel"), ("channel", "block16"), ("block44", "block48"), ("block48", "block44")],
)
def test_two_fp8_quantizations_are_each_dequantised_with_their_own_scales_and_block(fp8_copies, pair):
    folders, deq = fp8_copies
    rep = _run(folders[pair[0]], folders[pair[1]])
    got = rep.tensors.set_index("name").changed
    names = [n for n in got.index if n.endswith("proj.weight")]
    assert len(names) == 7
    for n in names:  # compared as float32 weights, each side dequantised by its own format's definition
        want = _changed(deq[pair[0]](n).astype(np.float32), deq[pair[1]](n).astype(np.float32))
        assert int(got[n]) == want, n
    assert any(n.startswith("Stored forms differ") and "both sides were dequantised" in n for n in rep.notes)
    if set(pair) == {"channel", "mx"}:  # weight_scale of two shapes: said apart, not an architecture mismatch
        assert any("laid out differently" in n for n in rep.notes)


def test_int8_groups_against_int8_rows_are_both_dequantised(tmp_path):
    src, sd = _llama_src(tmp_path)
    grouped, rows = {}, {}
    for k, v in sd.items():
        if not _linear(k, v):
            grouped[k] = rows[k] = v
            continue
        g = v.float().reshape(v.shape[0], -1, 16)
        s = (g.abs().amax(-1) / 127).to(torch.bfloat16)
        grouped[k] = torch.round(g / s.float()[..., None]).clamp(-128, 127).reshape(v.shape).to(torch.int8)
        grouped[k[: -len("weight")] + "weight_scale"] = s
        s = (v.float().abs().amax(1, keepdim=True) / 127).to(torch.bfloat16)
        rows[k] = torch.round(v.float() / s.float()).clamp(-128, 127).to(torch.int8)
        rows[k[: -len("weight")] + "weight_scale"] = s
    int8 = {"num_bits": 8, "type": "int", "symmetric": True, "dynamic": False}
    qg = {**_ct({**int8, "strategy": "group", "group_size": 16}), "format": "int-quantized"}
    qr = {**_ct({**int8, "strategy": "channel"}), "format": "int-quantized"}
    a = write_folder(tmp_path / "grouped", grouped, src, quantization_config=qg)
    b = write_folder(tmp_path / "rows", rows, src, quantization_config=qr)
    rep = _run(a, b)
    got = rep.tensors.set_index("name").changed
    names = [n for n in got.index if n.endswith("proj.weight")]
    assert len(names) == 7
    for n in names:
        sg = np.repeat(_f64(grouped[n[: -len("weight")] + "weight_scale"]), 16, 1)
        ea = (grouped[n].double().numpy() * sg).astype(np.float32)
        eb = (rows[n].double().numpy() * _f64(rows[n[: -len("weight")] + "weight_scale"])).astype(np.float32)
        assert int(got[n]) == _changed(ea, eb), n
    assert any("laid out differently" in n for n in rep.notes)


# --- 3. PEFT adapters saving a router or packed experts whole under in-memory names ---------------------------
MIXTRAL = dict(vocab_size=64, hidden_size=16, intermediate_size=8, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2)  # fmt: skip
QWEN3_MOE = dict(vocab_size=64, hidden_size=16, intermediate_size=32, moe_intermediate_size=8, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_experts=4, num_experts_per_tok=2)  # fmt: skip


def _adapter(tmp_path, kind: str, cfg: dict, lora: dict):
    """(base folder, adapter folder, PEFT's merge_and_unload of it saved): a float32 base, its adapter's trainable
    tensors moved off their initial values."""
    import transformers as T
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    base = tmp_path / "base"
    T.AutoModelForCausalLM.from_config(T.AutoConfig.for_model(kind, **cfg)).save_pretrained(base)
    pm = get_peft_model(T.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32), LoraConfig(**lora))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    adapter = tmp_path / "adapter"
    pm.save_pretrained(adapter)
    merged = PeftModel.from_pretrained(
        T.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32), str(adapter)
    )
    merged.merge_and_unload().save_pretrained(tmp_path / "merged")
    return base, adapter, tmp_path / "merged"


@pytest.mark.parametrize(
    ("kind", "cfg", "saved", "whole"),
    [
        ("mixtral", MIXTRAL, ["gate"], "block_sparse_moe.gate.weight"),
        ("phimoe", MIXTRAL, ["router"], "block_sparse_moe.gate.weight"),
        ("qwen3_moe", QWEN3_MOE, ["experts"], "mlp.experts.2.up_proj.weight"),
        ("mixtral", MIXTRAL, ["experts"], "block_sparse_moe.experts.2.w3.weight"),
    ],
)
def test_a_router_or_experts_saved_whole_under_in_memory_names_is_merged_as_peft_merges_it(
    tmp_path, kind, cfg, saved, whole
):
    base, adapter, merged = _adapter(tmp_path, kind, cfg, dict(r=2, lora_alpha=4, target_modules=["q_proj"],
                                                                 modules_to_save=saved))  # fmt: skip
    keys = load_file(str(adapter / "adapter_model.safetensors"))
    assert not any(whole in k for k in keys)  # (saved under the name in memory, not the base's)
    ref, b = read_state_dict(merged), read_state_dict(base)
    want = {k: _changed(_f64(ref[k]), _f64(b[k])) for k in b}
    assert want[f"model.layers.0.{whole}"] > 0
    rep = _run(base, adapter)
    got = rep.tensors.set_index("name").changed
    assert {k: int(got[k]) for k in want if k in got.index} == want
    assert set(want) <= set(got.index)
    assert not any("new head" in n for n in rep.notes)


def test_lora_on_the_router_through_target_parameters_is_merged_as_peft_merges_it(tmp_path):
    """A 2-D parameter through ``target_parameters`` (Mixtral's router, stored as block_sparse_moe.gate): read as
    PEFT reads it (it was refused as "only 3-D"), its changed counts those of PEFT's own merge."""
    base, adapter, merged = _adapter(tmp_path, "mixtral", MIXTRAL, dict(r=2, lora_alpha=4, target_modules=["q_proj"],
                                                                        target_parameters=["mlp.gate.weight"]))  # fmt: skip
    ref, b = read_state_dict(merged), read_state_dict(base)
    want = {k: _changed(_f64(ref[k]), _f64(b[k])) for k in b}
    assert want["model.layers.0.block_sparse_moe.gate.weight"] > 0
    got = _run(base, adapter).tensors.set_index("name").changed
    assert {k: int(got[k]) for k in want if k in got.index} == want


# --- 4. fbgemm's FP8 Llama 4 experts ------------------------------------------------------------------------------
def _fbgemm(sd: dict) -> dict:
    """transformers' FbgemmFp8Quantize of Llama 4's experts: each (E, ·, N) packed tensor quantised per output feature
    (its last axis), scale = amax / 448: gate_up_proj_scale (E, 1, 2I), down_proj_scale (E, H, 1)."""
    q = dict(sd)
    for k, v in sd.items():
        if k.endswith(("experts.gate_up_proj", "experts.down_proj")):
            t = v.float().transpose(1, 2)  # (E, N, ·): a row per output feature
            s = t.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 448.0  # (E, N, 1)
            q[k] = (t / s).to(torch.float8_e4m3fn).transpose(1, 2).contiguous()
            q[f"{k}_scale"] = s.transpose(1, 2).contiguous() if k.endswith("gate_up_proj") else s
    return q


FBGEMM = {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0, "modules_to_not_convert": ["lm_head"]}


def _fbgemm_deq(q: dict, k: str) -> np.ndarray:
    """float64 code[e, i, j] · scale[e, j] (fbgemm's per-row rule on the transposed weight)."""
    s = _f64(q[f"{k}_scale"])
    return _f64(q[k]) * s.reshape(s.shape[0], 1, -1)


def _flip(codes: torch.Tensor, at) -> None:
    """Change one stored FP8 byte to another finite one."""
    u = codes.view(torch.uint8)
    new = int(u[at]) ^ 0x08
    u[at] = new if new & 0x7F != 0x7F else int(u[at]) ^ 0x10


def test_fbgemm_fp8_llama4_experts_are_dequantised_per_expert_and_output_feature(tmp_path):
    base = _llama4(tmp_path, "l4", inter=32)  # square experts (E, 32, 32): the scale's axis is not told by shape
    sd = read_state_dict(base)
    q = _fbgemm(sd)
    fp8 = write_folder(tmp_path / "fp8", q, base, quantization_config=FBGEMM)
    q2 = {k: v.clone() for k, v in q.items()}
    _flip(q2[EXPERTS + "down_proj"], (2, 3, 5))
    _flip(q2[EXPERTS + "gate_up_proj"], (1, 0, 40))
    q2[EXPERTS + "gate_up_proj_scale"][3, 0, 7] *= 1.5  # every weight of expert 3's output feature 7
    q2[EXPERTS + "down_proj_scale"][0, 9, 0] *= 1.5  # every weight of expert 0's output feature 9
    ft = write_folder(tmp_path / "fp8_ft", q2, fp8)
    got = _run(fp8, ft).tensors.set_index("name").changed
    for part in ("gate_up_proj", "down_proj"):
        k = EXPERTS + part
        want = _changed(_fbgemm_deq(q, k).astype(np.float32), _fbgemm_deq(q2, k).astype(np.float32))
        assert int(got[k]) == want > 30, part
    got = _run(base, fp8).tensors.set_index("name").changed  # the bf16 release against its FP8 copy, at bf16
    for part in ("gate_up_proj", "down_proj"):
        k = EXPERTS + part
        w = torch.from_numpy(_fbgemm_deq(q, k).astype(np.float32)).to(torch.bfloat16)
        assert int(got[k]) == _changed(_f64(sd[k]), _f64(w)), part


def test_fbgemm_fp8_llama4_against_a_per_expert_fp8_copy(tmp_path):
    inter = 16
    base = _llama4(tmp_path, "l4", inter=inter)
    q = _fbgemm(read_state_dict(base))
    fp8 = write_folder(tmp_path / "fp8", q, base, quantization_config=FBGEMM)
    copy = {}  # the same codes and scales stored one by one, a scale per row (compressed-tensors' FP8 channel)
    for k, v in q.items():
        if k.endswith("experts.gate_up_proj"):
            s = q[f"{k}_scale"]
            for e in range(v.shape[0]):
                n = f"{k[: -len('gate_up_proj')]}{e}."
                copy[f"{n}gate_proj.weight"] = v[e][:, :inter].t().contiguous()
                copy[f"{n}gate_proj.weight_scale"] = s[e, 0, :inter].reshape(-1, 1).clone()
                copy[f"{n}up_proj.weight"] = v[e][:, inter:].t().contiguous()
                copy[f"{n}up_proj.weight_scale"] = s[e, 0, inter:].reshape(-1, 1).clone()
        elif k.endswith("experts.down_proj"):
            for e in range(v.shape[0]):
                copy[f"{k[: -len('down_proj')]}{e}.down_proj.weight"] = v[e].t().contiguous()
                copy[f"{k[: -len('down_proj')]}{e}.down_proj.weight_scale"] = q[f"{k}_scale"][e].clone()
        elif not k.endswith("_scale"):
            copy[k] = v
    _flip(copy[EXPERTS + "2.up_proj.weight"], (3, 4))
    copy[EXPERTS + "1.down_proj.weight_scale"][6, 0] *= 1.5  # expert 1's down row 6: up to I weights
    cfg = json.loads((base / "config.json").read_text())
    cfg["quantization_config"] = _ct({"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True})
    ft = tmp_path / "per_expert"
    write_folder(ft, copy)
    (ft / "config.json").write_text(json.dumps(cfg))
    rep = _run(fp8, ft)
    got = rep.tensors.set_index("name").changed
    gu, dn = _fbgemm_deq(q, EXPERTS + "gate_up_proj"), _fbgemm_deq(q, EXPERTS + "down_proj")
    total = 0
    for e in range(4):
        for part, ref in (("gate", gu[e][:, :inter].T), ("up", gu[e][:, inter:].T), ("down", dn[e].T)):
            n = f"{EXPERTS}{e}.{part}_proj.weight"
            w = _f64(copy[n]) * _f64(copy[f"{n}_scale"])
            want = _changed(ref.astype(np.float32), w.astype(np.float32))
            assert int(got[n]) == want, n
            total += want
    assert total > 1
