"""Real families' checkpoints read as transformers reads them (the families review's four defects).

Proves, on tiny models that transformers and PEFT build and save themselves, with every number checked
against a bitwise recount of the raw safetensors (or transformers' own loader and dequantisation):

- a tied base against a finetune that stores its own head (or a LoRA with ``modules_to_save=["lm_head"]``):
  the embedding and the head are two rows, two modules and two mask entries (the head under its own name), each
  with its own changes, and the masks ``analyze`` writes count what the analysis counts;
- a config that leaves ``tie_word_embeddings`` out is tied as its transformers config class makes it (Gemma-2:
  tied, Llama: not), so an untied head and a LoRA on the head are compared, not refused;
- buffers stored on one side only (GPT-2's causal masks, Pythia's rotary frequencies) are listed apart as
  buffers, never as weights "not compared", and are out of the share of what was not compared;
- transformers 5's FP8 save of a mixture of experts (codes one by one, block scales packed) is read with each
  expert's rows of the packed scales, also where a scale block straddles gate and up, and a consolidated dump
  (codes and scales packed) against that save reads its scales with its codes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from subnetviz.__main__ import main
from subnetviz.analysis.updates import analyze_updates, write_analysis
from subnetviz.checkpoints import open_checkpoint
from subnetviz.masks import load_mask_set

T = pytest.importorskip("transformers")

TINY = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)


def _raw(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's safetensors files, as stored (read with safetensors, not subnetviz)."""
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def _differ(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Where two tensors of one dtype differ bitwise (a bool array)."""
    view = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}[a.element_size()]
    return a.contiguous().view(torch.uint8).numpy().view(view) != b.contiguous().view(torch.uint8).numpy().view(view)


def _write(folder: Path, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"), {"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _analyze(base, *fts):
    return analyze_updates(str(base), [str(f) for f in fts], device="cpu", spectra=None)


def _changed(report) -> dict[str, int]:
    t = report.tensors
    return {str(n): int(c) for n, c in zip(t["name"], t["changed"], strict=True)}


# --- 1. a head untied against a tied base ------------------------------------------------------------------
@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    """A tied Qwen2 base (no lm_head stored) and a finetune that unties its head: head rows 0-4 and embedding
    rows 10-12 changed, each differently."""
    root = tmp_path_factory.mktemp("untied")
    torch.manual_seed(0)
    cfg = T.Qwen2Config(**TINY, num_key_value_heads=1, tie_word_embeddings=True)
    base = root / "base"
    T.Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(base)
    sd = _raw(base)
    assert "lm_head.weight" not in sd
    head = sd["model.embed_tokens.weight"].clone()
    head[:5] += 1.0
    emb = sd["model.embed_tokens.weight"].clone()
    emb[10:13] += 1.0
    config = {**json.loads((base / "config.json").read_text()), "tie_word_embeddings": False}
    ft = _write(root / "ft", {**sd, "model.embed_tokens.weight": emb, "lm_head.weight": head}, config)
    return root, base, ft


def _untied_truth(base: Path, ft: Path) -> dict[str, np.ndarray]:
    """The embedding against the base's embedding, the untied head against the base's (tied) embedding."""
    a, b = _raw(base), _raw(ft)
    emb = a["model.embed_tokens.weight"]
    return {
        "model.embed_tokens.weight": _differ(emb, b["model.embed_tokens.weight"]),
        "lm_head.weight": _differ(emb, b["lm_head.weight"]),
    }


def test_an_untied_head_and_the_embedding_are_two_rows_modules_and_masks(untied):
    root, base, ft = untied
    truth = _untied_truth(base, ft)
    assert int(truth["model.embed_tokens.weight"].sum()) == 48 and int(truth["lm_head.weight"].sum()) == 80
    res = _analyze(base, ft)
    r = res.reports[0]
    t = r.tensors.set_index("key")
    assert t.loc["embed_tokens.weight", ["name", "module"]].tolist() == ["model.embed_tokens.weight", "embed"]
    assert t.loc["lm_head.weight", ["name", "module"]].tolist() == ["lm_head.weight", "lm_head"]
    assert _changed(r)["model.embed_tokens.weight"] == 48 and _changed(r)["lm_head.weight"] == 80
    g = r.by_layer_module().set_index("module")
    assert g.loc["embed", ["changed", "numel"]].tolist() == [48, 1024]
    assert g.loc["lm_head", ["changed", "numel"]].tolist() == [80, 1024]
    masks = {k: np.asarray(v) for k, v in dict(r.masks).items()}
    for name, want in truth.items():  # each mask is exactly its tensor's changed entries
        assert np.array_equal(masks[name].reshape(want.shape), want), name
    assert sum(int(m.sum()) for m in masks.values()) == int(r.tensors["changed"].sum())
    # the mask file the analysis writes, and the CLI's analyze, hold both entries
    write_analysis(res, str(root / "out"))
    assert main(["analyze", str(base), str(ft), "--out", str(root / "cli"), "--no-spectra", "--no-cache"]) == 0
    for out in (root / "out", root / "cli"):
        (path,) = (out / "masks").glob("*.safetensors")
        saved = {k: np.asarray(v) for k, v in load_mask_set(str(path)).masks.items()}
        assert {k: int(saved[k].sum()) for k in truth} == {"model.embed_tokens.weight": 48, "lm_head.weight": 80}
        assert sum(int(m.sum()) for m in saved.values()) == int(r.tensors["changed"].sum())


def test_a_lora_that_saves_the_head_of_a_tied_base_is_filed_as_the_head(tmp_path):
    """PEFT's modules_to_save=["lm_head"] on a tied Gemma: the head's changes under lm_head, the embedding's (none
    here) under the embedding, as merge_and_unload + save_pretrained saves them."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    cfg = T.GemmaConfig(**TINY, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True)
    base = tmp_path / "base"
    model = T.GemmaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(base)
    lora = peft.LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"], init_lora_weights=False)
    pm = peft.get_peft_model(model, lora)
    with torch.no_grad():
        pm.base_model.model.lm_head.modules_to_save["default"].weight[:7] += 1.0  # the trained copy of the head
    pm.save_pretrained(tmp_path / "adapter")
    merged = pm.merge_and_unload()
    merged.config.tie_word_embeddings = False
    merged.save_pretrained(tmp_path / "merged")
    a, m = _raw(base), _raw(tmp_path / "merged")
    emb = a["model.embed_tokens.weight"]
    want_head = int(_differ(emb, m["lm_head.weight"]).sum())
    want_emb = int(_differ(emb, m["model.embed_tokens.weight"]).sum())
    assert want_head == 7 * 16 and want_emb == 0
    r = _analyze(base, tmp_path / "adapter").reports[0]
    t = r.tensors.set_index("key")
    assert t.loc["lm_head.weight", ["name", "module", "changed"]].tolist() == ["lm_head.weight", "lm_head", want_head]
    assert t.loc["embed_tokens.weight", ["module", "changed"]].tolist() == ["embed", want_emb]
    masks = dict(r.masks)
    assert int(np.asarray(masks["lm_head.weight"]).sum()) == want_head
    assert int(np.asarray(masks["model.embed_tokens.weight"]).sum()) == want_emb


# --- 2. tie_word_embeddings left out of the config -------------------------------------------------------------
def _loaded_tied(folder: Path) -> bool:
    """Whether transformers itself loads the folder with its head tied to its embedding."""
    model = T.AutoModelForCausalLM.from_pretrained(str(folder))
    return model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


@pytest.mark.parametrize(
    ("family", "cls", "extra"),
    [("gemma2", "Gemma2", {"head_dim": 8}), ("llama", "Llama", {}), ("opt", "OPT", {"ffn_dim": 32})],
)
def test_a_config_without_the_tie_key_ties_as_transformers_loads_it(tmp_path, family, cls, extra):
    torch.manual_seed(0)
    kw = dict(TINY)
    if family == "opt":
        kw = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, word_embed_proj_dim=16)
    cfg = getattr(T, f"{cls}Config")(**kw, **extra)
    getattr(T, f"{cls}ForCausalLM")(cfg).save_pretrained(tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    conf.pop("tie_word_embeddings", None)  # as the released Gemma-2 configs leave it out
    (tmp_path / "config.json").write_text(json.dumps(conf))
    assert open_checkpoint(tmp_path).tied_embeddings == _loaded_tied(tmp_path)
    assert open_checkpoint(tmp_path).tied_embeddings is (family != "llama")  # (the class defaults, said)


def test_a_multimodal_config_forwards_its_text_configs_tie_as_transformers_does(tmp_path):
    """Pre-v5 saves put the key in text_config; LLaVA's config forwards it, Gemma-3's class default ties."""
    from subnetviz.checkpoints.families import tie_word_embeddings

    cases = [
        {"model_type": "llava", "text_config": {"model_type": "llama", "tie_word_embeddings": True}},
        {"model_type": "llava", "text_config": {"model_type": "llama"}},
        {"model_type": "gemma3", "text_config": {}},
        {"model_type": "no_such_type", "text_config": {"tie_word_embeddings": True}},
    ]
    for conf in cases[:3]:
        assert tie_word_embeddings(conf) == T.AutoConfig.for_model(**conf).tie_word_embeddings, conf
    assert [tie_word_embeddings(c) for c in cases] == [True, False, True, True]
    assert tie_word_embeddings({"model_type": "no_such_type"}) is False


@pytest.fixture(scope="module")
def gemma2_base(tmp_path_factory):
    """A tiny Gemma-2 saved by transformers, its config's tie_word_embeddings dropped as in the release."""
    root = tmp_path_factory.mktemp("tiedefault")
    torch.manual_seed(0)
    cfg = T.Gemma2Config(**TINY, num_key_value_heads=1, head_dim=8)
    base = root / "base"
    T.Gemma2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(base)
    conf = json.loads((base / "config.json").read_text())
    conf.pop("tie_word_embeddings")
    (base / "config.json").write_text(json.dumps(conf))
    return root, base, conf


def test_an_untied_head_against_a_base_tied_by_default_is_compared(gemma2_base):
    root, base, conf = gemma2_base
    sd = _raw(base)
    head = sd["model.embed_tokens.weight"].clone()
    head[:5] += 1.0
    ft = _write(root / "ft", {**sd, "lm_head.weight": head}, {**conf, "tie_word_embeddings": False})
    want = int(_differ(sd["model.embed_tokens.weight"], head).sum())
    r = _analyze(base, ft).reports[0]
    assert want == 80 and _changed(r)["lm_head.weight"] == want
    assert int(r.tensors["changed"].sum()) == want
    assert not [n for n in r.notes if "Not compared" in n or "only in" in n]


def test_a_lora_on_the_head_of_a_base_tied_by_default_merges_as_peft_does(gemma2_base):
    peft = pytest.importorskip("peft")
    root, base, _ = gemma2_base
    model = T.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.bfloat16)
    torch.manual_seed(1)
    lora = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "lm_head"], init_lora_weights=False)
    pm = peft.get_peft_model(model, lora)
    pm.save_pretrained(root / "adapter")
    pm.merge_and_unload().save_pretrained(root / "merged")
    a, m = _raw(base), _raw(root / "merged")
    want = {k: int(_differ(a[k], m[k]).sum()) for k in a if k in m}
    want = {k: v for k, v in want.items() if v}
    assert set(want) == {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"}
    got = {k: v for k, v in _changed(_analyze(base, root / "adapter").reports[0]).items() if v}
    assert got == want


# --- 3. buffers on one side only -------------------------------------------------------------------------------
def test_buffers_on_one_side_are_listed_apart_not_as_weights_not_compared(tmp_path):
    """GPT-2's release stores float causal masks (h.N.attn.bias) and masked_bias, Pythia's bool attention.bias,
    masked_bias and rotary inv_freq; a transformers 5 save stores none. Every weight is compared: no share of
    the model is said not compared, and the buffers are named on their own line."""
    torch.manual_seed(0)
    cfg = T.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=4, n_positions=32)
    T.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "g2_ft")
    conf = json.loads((tmp_path / "g2_ft" / "config.json").read_text())
    sd = {k.removeprefix("transformer."): v for k, v in _raw(tmp_path / "g2_ft").items()}
    for i in range(2):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    hub = _write(tmp_path / "g2_hub", sd, conf)
    cfg = T.GPTNeoXConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4
    )
    T.GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path / "nx_ft")
    sd = _raw(tmp_path / "nx_ft")
    for i in range(2):
        sd[f"gpt_neox.layers.{i}.attention.bias"] = torch.ones(1, 1, 64, 64, dtype=torch.bool).tril()
        sd[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
        sd[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = torch.rand(2)
        sd[f"gpt_neox.layers.{i}.attention.rotary_emb.original_inv_freq"] = torch.rand(2)  # (transformers 5's name)
    old = _write(tmp_path / "nx_old", sd, json.loads((tmp_path / "nx_ft" / "config.json").read_text()))
    for release, ft, n_buffers in ((hub, tmp_path / "g2_ft", 4), (old, tmp_path / "nx_ft", 8)):
        weights = {k: v for k, v in _raw(ft).items()}
        r = _analyze(release, ft).reports[0]
        assert int(r.tensors["numel"].sum()) == sum(v.numel() for v in weights.values())  # every weight compared
        assert not [n for n in r.notes if "Not compared" in n]
        (line,) = [n for n in r.notes if "buffer tensor(s) only in" in n]
        assert line.startswith(f"{n_buffers} buffer tensor(s) only in {release}") and "not parameters" in line
        assert not [n for n in r.notes if n.startswith(f"{n_buffers} tensor(s) only in")]


def test_the_share_not_compared_leaves_buffers_out_of_both_counts(tmp_path):
    """A weight on one side only beside one-sided buffers: the share is that weight's entries over the stored
    entries that are not buffers."""
    torch.manual_seed(0)
    cfg = T.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=4, n_positions=32)
    T.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "ft")
    ft = _raw(tmp_path / "ft")
    sd = dict(ft)
    sd["transformer.h.0.attn.bias"] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
    sd["transformer.extra.weight"] = torch.zeros(4, 16)  # a weight the finetune lacks
    base = _write(tmp_path / "base", sd, json.loads((tmp_path / "ft" / "config.json").read_text()))
    weights = sum(v.numel() for v in ft.values()) + 64
    r = _analyze(base, tmp_path / "ft").reports[0]
    (line,) = [n for n in r.notes if n.startswith("Not compared")]
    assert f"1 tensor(s) of {base}, 64 of its {weights:,} stored entries (buffers aside) ({64 / weights:.1%})" in line
    assert any(n.startswith(f"1 buffer tensor(s) only in {base}: transformer.h.0.attn.bias") for n in r.notes)
    assert any(n == f"1 tensor(s) only in {base}: transformer.extra.weight" for n in r.notes)


# --- 4. transformers 5's FP8 experts: codes one by one, scales packed -------------------------------------------
@pytest.fixture(scope="module")
def fp8_moe(tmp_path_factory):
    """Qwen3-MoE in bf16 and quantized on load by transformers (FineGrainedFP8Config; its GPU check skipped, the
    layout is FP8Experts' own), saved: block 8×8 with I = 8 (scale blocks aligned with gate and up) and 8×4 with
    I = 12 (a block straddles gate and up). Also each one's consolidated dump (its in-memory state dict: codes and
    scales packed) and transformers' reload, dequantised by transformers."""
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight
    from transformers.quantizers import quantizer_finegrained_fp8 as qf

    root = tmp_path_factory.mktemp("fp8moe")
    check = qf.FineGrainedFP8HfQuantizer.validate_environment
    qf.FineGrainedFP8HfQuantizer.validate_environment = lambda self, *a, **k: None
    out = {}
    try:
        for inter, block in ((8, [8, 8]), (12, [8, 4])):
            cfg = T.Qwen3MoeConfig(
                **{**TINY, "hidden_size": 16},
                moe_intermediate_size=inter,
                num_key_value_heads=1,
                head_dim=8,
                num_experts=4,
                num_experts_per_tok=2,
            )
            torch.manual_seed(0)
            bf = root / f"bf16_{inter}"
            T.Qwen3MoeForCausalLM(cfg).to(torch.bfloat16).save_pretrained(bf)
            q = T.AutoModelForCausalLM.from_pretrained(
                str(bf), quantization_config=T.FineGrainedFP8Config(weight_block_size=block), device_map="cpu"
            )
            fp8 = root / f"fp8_{inter}"
            q.save_pretrained(fp8)
            dump = _write(root / f"dump_{inter}", dict(q.state_dict()), json.loads((fp8 / "config.json").read_text()))
            ex = T.AutoModelForCausalLM.from_pretrained(str(fp8), device_map="cpu").model.layers[0].mlp.experts
            assert torch.equal(
                ex.gate_up_proj.view(torch.uint8), q.model.layers[0].mlp.experts.gate_up_proj.view(torch.uint8)
            )
            gu = _dequantize_fp8_weight(ex.gate_up_proj.data, ex.gate_up_proj_scale_inv.data, block, torch.float32)
            dn = _dequantize_fp8_weight(ex.down_proj.data, ex.down_proj_scale_inv.data, block, torch.float32)
            out[inter] = dict(bf=bf, fp8=fp8, dump=dump, block=block, gate_up=gu, down=dn)
    finally:
        qf.FineGrainedFP8HfQuantizer.validate_environment = check
    return out


def _expert(e: int, p: str) -> str:
    return f"model.layers.0.mlp.experts.{e}.{p}.weight"


@pytest.mark.parametrize("inter", [8, 12])
def test_fp8_experts_with_packed_scales_against_their_bf16_base(fp8_moe, inter):
    """Each expert's weights as transformers reloads and dequantises them (rounded to the base's bf16, as a float
    side against a quantized one is compared) against the bf16 base."""
    m = fp8_moe[inter]
    stored = _raw(m["fp8"])
    assert "model.layers.0.mlp.experts.gate_up_proj_scale_inv" in stored and _expert(0, "gate_proj") in stored
    base = _raw(m["bf"])
    want = {}
    for e in range(4):
        parts = {"gate_proj": m["gate_up"][e, :inter], "up_proj": m["gate_up"][e, inter:], "down_proj": m["down"][e]}
        for p, w in parts.items():
            want[_expert(e, p)] = int(_differ(w.to(torch.bfloat16), base[_expert(e, p)]).sum())
    r = _analyze(m["bf"], m["fp8"]).reports[0]
    got = {k: v for k, v in _changed(r).items() if ".experts." in k}
    assert got == want and sum(want.values()) > 0
    assert any("block scales packed" in n for n in r.notes)


def _dequantized(codes: torch.Tensor, scale: torch.Tensor, block) -> torch.Tensor:
    """float32 w[i, j] = code[i, j] × scale[i // bm, j // bn] of a packed (E, rows, cols) tensor, by definition."""
    bm, bn = block
    rows, cols = codes.shape[-2:]
    s = scale.repeat_interleave(bm, dim=-2)[..., :rows, :].repeat_interleave(bn, dim=-1)[..., :cols]
    return codes.to(torch.float32) * s


@pytest.mark.parametrize("inter", [8, 12])
def test_fp8_experts_planted_codes_and_a_straddling_scale(fp8_moe, tmp_path, inter):
    """The FP8 save against a copy with one code of expert 1's up and one packed gate_up scale of expert 2 changed
    (row block (inter − 1) // bm: with I = 12 and bm = 8 it holds the gate's last rows and the up's first):
    per expert, exactly the entries whose dequantised weight differs (float32, by definition on the packed rows)."""
    m = fp8_moe[inter]
    src = _raw(m["fp8"])
    sd = {k: v.clone() for k, v in src.items()}
    up = sd[_expert(1, "up_proj")].view(torch.uint8)
    up[0, 3] ^= 1
    sc = "model.layers.0.mlp.experts.gate_up_proj_scale_inv"
    sd[sc][2, (inter - 1) // m["block"][0], 0] *= 2.0
    ft = _write(tmp_path / "ft", sd, json.loads((m["fp8"] / "config.json").read_text()))

    def packed(d):
        gu = torch.stack([torch.cat([d[_expert(e, "gate_proj")], d[_expert(e, "up_proj")]]) for e in range(4)])
        return _dequantized(gu, d[sc], m["block"])

    a, b = packed(src), packed(sd)
    want = {}
    for e in range(4):
        want[_expert(e, "gate_proj")] = int((a[e, :inter] != b[e, :inter]).sum())
        want[_expert(e, "up_proj")] = int((a[e, inter:] != b[e, inter:]).sum())
        want[_expert(e, "down_proj")] = 0
    assert want[_expert(1, "up_proj")] == 1 and want[_expert(2, "gate_proj")] > 0
    assert (want[_expert(2, "up_proj")] > 0) is (inter % m["block"][0] != 0)  # the straddling block
    r = _analyze(m["fp8"], ft).reports[0]
    assert {k: v for k, v in _changed(r).items() if ".experts." in k} == want
    masks = dict(r.masks)
    for k, n in want.items():
        assert int(np.asarray(masks[k]).sum()) == n, k


@pytest.mark.parametrize("inter", [8, 12])
def test_a_packed_fp8_dump_reads_its_scales_with_its_codes(fp8_moe, tmp_path, inter):
    """A consolidated dump (codes and scales packed) against the per-expert save: the same weights, nothing left
    out; a code changed in the dump is the one change."""
    m = fp8_moe[inter]
    r = _analyze(m["fp8"], m["dump"]).reports[0]
    assert int(r.tensors["changed"].sum()) == 0 and not [n for n in r.notes if "Not compared" in n]
    assert {_expert(e, p) for e in range(4) for p in ("gate_proj", "up_proj", "down_proj")} <= set(r.tensors["name"])
    sd = _raw(m["dump"])
    sd["model.layers.0.mlp.experts.down_proj"].view(torch.uint8)[3, 5, 2] ^= 1
    shutil.copytree(m["dump"], tmp_path / "dump2")
    save_file(sd, str(tmp_path / "dump2" / "model.safetensors"), {"format": "pt"})
    got = {k: v for k, v in _changed(_analyze(m["fp8"], tmp_path / "dump2").reports[0]).items() if v}
    assert got == {_expert(3, "down_proj"): 1}


def test_packed_fp8_scales_that_fit_no_expert_are_named_in_the_refusal(fp8_moe, tmp_path):
    from subnetviz.errors import CheckpointError

    m = fp8_moe[8]
    sd = _raw(m["fp8"])
    sc = "model.layers.0.mlp.experts.gate_up_proj_scale_inv"
    sd[sc] = sd[sc][:, :1].contiguous()  # one row block where two are due
    bad = _write(tmp_path / "bad", sd, json.loads((m["fp8"] / "config.json").read_text()))
    with pytest.raises(CheckpointError, match=r"packed for every expert in '.*gate_up_proj_scale_inv' \(4, 1, 2\)"):
        _analyze(bad, bad)
