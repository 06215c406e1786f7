"""Adapters on a mixture of experts, second review (/tmp/review/adapters2).

Proves:
- D1: a LoRA with ``target_modules="all-linear"`` on a transformers-5 Qwen3-MoE or Mixtral, and a Mixtral LoRA whose
  list names the router (``["q_proj", "gate"]``, also with ``exclude_modules``), which PEFT 0.21 rewrites so that the
  router's 2-D weight is a target parameter (``gate.weight``), is read (it was refused whole) and equals PEFT's own
  ``merge_and_unload`` of the saved folder bit for bit, on float32 and bf16 bases: every tensor the base stores,
  compared with the tensor transformers itself saves for the merged model (Mixtral's router stored as
  ``block_sparse_moe.gate``, its experts one by one). rank / alpha patterns are matched, as PEFT matches them, on the
  parameter's name in memory (``model.layers.1.mlp.gate.weight``, which Mixtral stores under another name).
- The merge note of a LoRA in transformers 4's layout (each expert's Linear and the router adapted as linear layers)
  on a bf16 base says what happens: those weights are W + Δ rounded once (equal to the float64 merge rounded once),
  while PEFT 0.21 under transformers 5 rounds Δ to bf16 first (its merge checked to be that, and to differ).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from subnetviz.checkpoints import open_checkpoint
from subnetviz.checkpoints.adapters import open_finetune
from subnetviz.errors import CheckpointError

pytestmark = pytest.mark.timeout(300)


def _base(kind: str, folder, dtype):
    """A tiny Qwen3-MoE, Mixtral or PhiMoE (3 experts, 2 layers) saved by transformers in ``dtype``: its experts one
    by one."""
    import transformers as T

    T.logging.set_verbosity_error()
    common = dict(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        num_experts_per_tok=2,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    if kind == "mixtral":
        cfg = T.MixtralConfig(**common, intermediate_size=8, num_local_experts=3)
        cls = T.MixtralForCausalLM
    elif kind == "phimoe":  # its router is block_sparse_moe.gate stored, mlp.router in memory
        cfg = T.PhimoeConfig(**common, intermediate_size=8, num_local_experts=3)
        cls = T.PhimoeForCausalLM
    else:
        cfg = T.Qwen3MoeConfig(**common, intermediate_size=32, moe_intermediate_size=8, num_experts=3)
        cls = T.Qwen3MoeForCausalLM
    torch.manual_seed(0)
    cls(cfg).to(dtype).save_pretrained(folder)
    return folder


def _raw(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


def _peft_adapter(tmp_path, kind: str, dtype, lora: dict):
    """(base folder, adapter folder): PEFT's LoRA built on the base (loaded in float32), every trainable tensor
    moved off its initial value, saved with save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = _base(kind, tmp_path / "base", dtype)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=8, **lora))
    torch.manual_seed(1)
    with torch.no_grad():
        for _, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    return base, tmp_path / "adapter"


def _peft_merged(base, adapter, dtype, out) -> dict[str, torch.Tensor]:
    """PEFT's merge as a user gets it: the base in its stored dtype, PeftModel.from_pretrained, merge_and_unload,
    then saved by transformers (which writes the names the base stores) and read back."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype)
    PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().save_pretrained(out)
    return _raw(out)


CASES = {
    "qwen3-all-linear": ("qwen3_moe", {"target_modules": "all-linear"}),
    "mixtral-all-linear": ("mixtral", {"target_modules": "all-linear"}),
    "mixtral-router-list": ("mixtral", {"target_modules": ["q_proj", "gate"]}),
    "mixtral-router-list-excluded": ("mixtral", {"target_modules": ["q_proj", "gate"], "exclude_modules": ["gate"]}),
    # the router named as it is in memory (Mixtral's mlp.gate, PhiMoE's mlp.router), stored under another name
    "mixtral-router-by-memory-name": (
        "mixtral",
        {"target_modules": ["q_proj"], "target_parameters": ["mlp.gate.weight"]},
    ),
    "phimoe-router": ("phimoe", {"target_modules": ["q_proj"], "target_parameters": ["router.weight"]}),
    "qwen3-all-linear-excluded": ("qwen3_moe", {"target_modules": "all-linear", "exclude_modules": ["gate"]}),
    # patterns that name the router as it is in memory; Mixtral stores it as block_sparse_moe.gate
    "mixtral-patterns": (
        "mixtral",
        {
            "target_modules": "all-linear",
            "rank_pattern": {r"layers\.1\.mlp\.gate\.weight": 3},
            "alpha_pattern": {r"mlp\.gate\.weight": 5},
        },
    ),
    "qwen3-patterns": (
        "qwen3_moe",
        {
            "target_modules": "all-linear",
            "rank_pattern": {"layers.0.mlp.gate.weight": 4},
            "alpha_pattern": {"v_proj": 3},
        },
    ),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_lora_on_the_router_weight_merges_as_peft_merges_it(tmp_path, case, dtype):
    """Every tensor the base stores equals PEFT's merged model's, bit for bit; the routers did change, and the
    adapter's config is the rewrite that makes the router a target parameter (so the case is the one reported)."""
    kind, lora = CASES[case]
    base, adapter = _peft_adapter(tmp_path, kind, dtype, lora)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert any(t.endswith(("gate.weight", "router.weight")) for t in cfg["target_parameters"])
    merged = _peft_merged(base, adapter, dtype, tmp_path / "merged")
    stored = _raw(base)
    ck = open_finetune(str(adapter), open_checkpoint(str(base)))
    assert set(ck.names) == set(merged) == set(stored)
    for name in ck.names:
        got, want = ck.get(name), merged[name]
        assert got.dtype == want.dtype == dtype and got.shape == want.shape, name
        assert torch.equal(_bits(got), _bits(want)), name
    routers = [n for n in stored if n.endswith(".gate.weight")]
    assert len(routers) == 2 and all(not torch.equal(merged[n], stored[n]) for n in routers)
    if "block_sparse_moe" in routers[0]:  # Mixtral: read under its stored name
        assert all(n in ck.pairs for n in routers)


def test_a_router_pattern_is_matched_on_the_name_in_memory(tmp_path):
    """Planted: the float64 merge of the saved factors with the scale the in-memory name's patterns give (α 5 over
    r 3 for layer 1's router, α 5 over r 2 for layer 0's); Mixtral's stored name would match neither pattern (α 8
    over r 2). The merged routers are that reference rounded once (float32 base), and the page's counts are
    PEFT's."""
    from subnetviz.analysis.updates import analyze_updates

    kind, lora = CASES["mixtral-patterns"]
    base, adapter = _peft_adapter(tmp_path, kind, torch.float32, lora)
    sd = load_file(str(adapter / "adapter_model.safetensors"))
    stored = _raw(base)
    ck = open_finetune(str(adapter), open_checkpoint(str(base)))
    for layer, scale in ((0, 5 / 2), (1, 5 / 3)):
        key = f"base_model.model.model.layers.{layer}.mlp.gate"
        a, b = sd[f"{key}.lora_A.weight"].double().numpy(), sd[f"{key}.lora_B.weight"].double().numpy()
        name = f"model.layers.{layer}.block_sparse_moe.gate.weight"
        ref = stored[name].double().numpy() + scale * b @ a
        got = ck.get(name).double().numpy()
        assert np.abs(got - ref).max() <= 2**-23 * np.abs(ref).max(), (layer, np.abs(got - ref).max())
    merged = _peft_merged(base, adapter, torch.float32, tmp_path / "merged")
    report = analyze_updates(str(base), [str(adapter)], labels=["lora"]).reports[0]
    t = report.tensors.set_index("name")
    for name in ("model.layers.0.block_sparse_moe.gate.weight", "model.layers.1.block_sparse_moe.gate.weight"):
        assert t.loc[name, "changed"] == int((_bits(merged[name]) != _bits(stored[name])).sum()) > 0


def test_a_target_parameter_of_another_shape_is_one_line(tmp_path):
    """A target parameter that is neither 2-D nor 3-D (a norm's weight) names it and the shapes read, in one line."""
    base, adapter = _peft_adapter(tmp_path, "qwen3_moe", torch.float32, {"target_modules": ["q_proj"]})
    cfg_path = adapter / "adapter_config.json"
    cfg_path.write_text(
        json.dumps({**json.loads(cfg_path.read_text()), "target_parameters": ["input_layernorm.weight"]})
    )
    with pytest.raises(CheckpointError, match=r"input_layernorm.weight' has shape \(16,\); only 2-D") as err:
        open_finetune(str(adapter), open_checkpoint(str(base)))
    assert "\n" not in str(err.value)


def test_router_factors_of_the_wrong_shape_are_one_line(tmp_path):
    """A router's LoRA B with a row too many (4 for 3 experts) is refused before anything is multiplied, in one line
    naming the router and the shapes it must have."""
    base, adapter = _peft_adapter(tmp_path, "qwen3_moe", torch.float32, {"target_modules": ["q_proj", "gate"]})
    sd = load_file(str(adapter / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.mlp.gate.lora_B.weight"
    assert sd[key].shape == (3, 2)
    save_file({**sd, key: torch.zeros(4, 2)}, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"layers.1.mlp.gate.weight'.*must be A \(r, 16\) and B \(3, r\)") as err:
        open_finetune(str(adapter), open_checkpoint(str(base)))
    assert "\n" not in str(err.value)


# --- transformers 4's layout: each expert's Linear and the router adapted as linear layers -----------------------


def _v4_adapter(tmp_path, kind: str, dtype, targets: set[str]):
    """A LoRA as PEFT saved it under transformers 4 (written by hand: PEFT 0.21 on transformers 5 cannot build one):
    per-expert Linear targets and the router ``gate`` as a Linear, r 2, α 8."""
    base = _base(kind, tmp_path / "base", dtype)
    stored = _raw(base)
    g = torch.Generator().manual_seed(5)
    sd = {}
    for n, w in stored.items():
        module = n[: -len(".weight")]
        if w.dim() == 2 and module.rsplit(".", 1)[-1] in targets:
            sd[f"base_model.model.{module}.lora_A.weight"] = torch.randn(2, w.shape[1], generator=g) * 0.3
            sd[f"base_model.model.{module}.lora_B.weight"] = torch.randn(w.shape[0], 2, generator=g) * 0.3
    (tmp_path / "adapter").mkdir()
    save_file(sd, str(tmp_path / "adapter" / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 8, "target_modules": sorted(targets)}
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(base)}))
    return base, tmp_path / "adapter", stored, sd


@pytest.mark.parametrize(
    "kind, targets",
    [("qwen3_moe", {"q_proj", "gate", "gate_proj", "up_proj", "down_proj"}), ("mixtral", {"w1", "w2", "w3", "gate"})],
)
def test_a_transformers_4_expert_lora_on_a_bf16_base_says_how_it_is_rounded(tmp_path, kind, targets):
    """Each per-expert and router weight is W + 4·B·A rounded once to bf16 (within half a bf16 step of the float64
    merge: the value nearest the model the adapter computes), and the note says so, and that PEFT 0.21 on
    transformers 5 rounds Δ first: its merge_and_unload is W + bf16(Δ) there, 1 ULP off in some entries. On a float32
    base the note does not say it (no difference)."""
    base, adapter, stored, sd = _v4_adapter(tmp_path / "bf16", kind, torch.bfloat16, targets)
    ck = open_finetune(str(adapter), open_checkpoint(str(base)))
    merged = _peft_merged(base, adapter, torch.bfloat16, tmp_path / "bf16" / "merged")
    expert_like = 0
    off = 0
    for key in sd:
        if ".lora_A." not in key:
            continue
        name = key[len("base_model.model.") : -len(".lora_A.weight")] + ".weight"
        a, b = sd[key], sd[key.replace("lora_A", "lora_B")]
        got = ck.get(name)
        # the float64 merge: within half a bf16 step of it, up to float32's error in forming W + Δ
        w64, d64 = stored[name].double(), 4 * (b.double() @ a.double())
        exact = w64 + d64
        step = torch.exp2(torch.floor(torch.log2(exact.abs())) - 7)
        assert ((got.double() - exact).abs() <= step / 2 + 2**-22 * (w64.abs() + d64.abs())).all(), name
        delta = (b @ a) * 4.0  # float32, as PEFT's Linear.get_delta_weight forms it
        once = (stored[name].float() + delta).to(torch.bfloat16)  # a Linear's merge: W + Δ rounded once
        assert torch.equal(_bits(got), _bits(once)), name
        if ".experts." in name or name.endswith(".gate.weight"):
            expert_like += 1
            twice = stored[name] + delta.to(torch.bfloat16)  # PEFT's ParamWrapper: Δ rounded to bf16, then added
            assert torch.equal(_bits(merged[name]), _bits(twice)), name
            off += int((_bits(merged[name]) != _bits(once)).sum())
    assert expert_like > 0 and off > 0  # the difference the note speaks of is there
    note = ck.notes[0]
    assert f"{expert_like} expert or router weight(s)" in note and "transformers 4's layout" in note
    assert "rounded once" in note and "rounds Δ to bfloat16 first" in note and "1 ULP" in note

    shutil.rmtree(tmp_path / "bf16")
    base, adapter, _, _ = _v4_adapter(tmp_path / "fp32", kind, torch.float32, targets)
    ck = open_finetune(str(adapter), open_checkpoint(str(base)))
    assert "transformers 4's layout" not in ck.notes[0]
