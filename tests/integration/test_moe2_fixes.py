"""MoE, second review: renamed routers beside packed experts, and Llama 4 experts stored one by one in Behaviour.

Proves:

- A finetune saved from transformers 5's in-memory state dict (experts packed, routers by the model's names) against
  its release (experts one by one, routers by the names transformers renames on load) compares the routers and the
  expert-choosing biases too, in the families of transformers' conversion mapping that rename one and build as a
  causal LM from a small config: PhiMoE's ``block_sparse_moe.gate`` (``mlp.router`` in memory), HunYuan-V3's
  ``mlp.router.gate`` (``mlp.gate``), the biases of EXAONE-MoE, Laguna, Kolibri and Ernie-4.5-MoE, and, as
  controls read before too, Mixtral's and MiniMax-M2's ``block_sparse_moe.`` (``mlp.``). Counts equal what
  transformers itself loads from the two folders (compared entry by entry); nothing is listed as only in one
  checkpoint. PhiMoE's Behaviour runs on such a pair, its numbers those of the finetune saved as
  released.
- Behaviour on a Llama 4 pair where one side stores its experts one by one (llm-compressor's, GPTQModel's and
  auto-round's layout, each expert's matrices the transposes of the packed (E, H, 2I) / (E, I, H) slices) gives
  the numbers of the same finetune saved as released (packed): KL, accuracy, every revert experiment, the curve and
  the routing, equal to the last bit (the same weights in the model, in either layout), either side per expert.
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from subnetviz.analysis.behavior import Prompt, behavior
from subnetviz.analysis.revert import mask_source
from subnetviz.analysis.updates import SpectraOptions, analyze_updates
from tests.models import char_tokenizer

SMALL = dict(
    hidden_size=16, intermediate_size=12, moe_intermediate_size=12, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=2, head_dim=8, num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2,
    pad_token_id=0, bos_token_id=1, eos_token_id=2, first_k_dense_replace=0, n_group=1, topk_group=1,
    mlp_only_layers=[], decoder_sparse_step=1, moe_layer_freq=1,
)  # fmt: skip
PROMPTS = [Prompt("12+30=", "42"), Prompt("7+8=", "15"), Prompt("3+4=", "7")]
ROUTER_ENTRIES, BIAS_ENTRIES, EXPERT_ENTRIES = 6, 1, 4


def _model(kind: str, **extra):
    import transformers as T

    torch.manual_seed(3)
    config = T.AutoConfig.for_model(kind, **{**SMALL, "vocab_size": len(char_tokenizer()), **extra})
    return T.AutoModelForCausalLM.from_config(config).float()


def _save_state_dict(folder, sd, config_from):
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(config_from / "config.json", folder / "config.json")
    char_tokenizer().save_pretrained(folder)


def _planted(model) -> tuple[dict, int]:
    """The model's in-memory state dict with planted changes in layer 1 (its router's row 0, the expert-choosing
    bias where it has one, expert 1's down), and how many entries they are."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    router = next(k for k in sd if k.endswith(("layers.1.mlp.gate.weight", "layers.1.mlp.router.weight")))
    sd[router][0, :ROUTER_ENTRIES] += 1.0
    planted = ROUTER_ENTRIES
    bias = next((k for k in sd if k.startswith("model.layers.1.") and k.endswith("e_score_correction_bias")), None)
    if bias is not None:
        sd[bias].view(-1)[:BIAS_ENTRIES] += 1.0
        planted += BIAS_ENTRIES
    sd["model.layers.1.mlp.experts.down_proj"][1, :EXPERT_ENTRIES, 0] += 1.0
    return sd, planted + EXPERT_ENTRIES


def _release_and_state_dict(tmp_path, kind: str, packed: str):
    """(base, finetune, planted entries): the base saved as released (save_pretrained: experts one by one, the
    routers by their stored names), the finetune with planted changes; the side named ``packed`` saved from the
    in-memory state dict, the other by save_pretrained."""
    model = _model(kind)
    sd, planted = _planted(model)
    base_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, state in (("base", base_sd), ("ft", sd)):
        folder = tmp_path / name
        if name == packed:
            model.save_pretrained(tmp_path / "config_only")
            _save_state_dict(folder, state, tmp_path / "config_only")
        else:
            model.load_state_dict(state)
            model.save_pretrained(folder)
            char_tokenizer().save_pretrained(folder)
    return tmp_path / "base", tmp_path / "ft", planted


def _reference_changed(base, ft) -> int:
    """Changed entries as transformers loads the two folders (its own renamings), compared bit by bit."""
    import transformers as T

    a, b = (T.AutoModelForCausalLM.from_pretrained(str(f), dtype=torch.float32).state_dict() for f in (base, ft))
    assert a.keys() == b.keys()
    return sum(int((a[k].view(torch.int32) != b[k].view(torch.int32)).sum()) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize(
    ("kind", "router", "bias"),
    [
        ("phimoe", "block_sparse_moe.gate.weight", None),
        ("mixtral", "block_sparse_moe.gate.weight", None),
        ("minimax_m2", "block_sparse_moe.gate.weight", "block_sparse_moe.e_score_correction_bias"),
        ("hy_v3", "mlp.router.gate.weight", "mlp.expert_bias"),
        ("exaone_moe", "mlp.gate.weight", "mlp.e_score_correction_bias"),
        ("laguna", "mlp.gate.weight", "mlp.experts.e_score_correction_bias"),
        ("kolibri1", "mlp.gate.weight", "moe.router.expert_bias"),
        ("ernie4_5_moe", "mlp.gate.weight", "mlp.moe_statics.e_score_correction_bias"),
    ],
)
def test_renamed_routers_are_compared_beside_packed_experts(tmp_path, kind, router, bias):
    base, ft, planted = _release_and_state_dict(tmp_path, kind, packed="ft")
    stored = load_file(str(base / "model.safetensors"))
    assert f"model.layers.1.{router}" in stored and (bias is None or f"model.layers.1.{bias}" in stored)
    held = load_file(str(ft / "model.safetensors"))  # (the router or the bias renamed in memory: the defect's case)
    assert any(f"model.layers.1.{n}" not in held for n in (router, bias) if n is not None)
    rep = analyze_updates(str(base), [str(ft)], spectra=SpectraOptions(enabled=False)).reports[0]
    t = rep.tensors.set_index("key")
    assert int(t["changed"].sum()) == _reference_changed(base, ft) == planted
    assert int(t.loc[f"layers.1.{router}", "changed"]) == ROUTER_ENTRIES
    if bias is not None:
        assert int(t.loc[f"layers.1.{bias}", "changed"]) == BIAS_ENTRIES
    assert not [n for n in rep.notes if "only in" in n], rep.notes


@pytest.mark.parametrize("packed", ["ft", "base"])
def test_phimoe_router_beside_packed_experts_in_either_direction_and_behaviour(tmp_path, packed):
    """PhiMoE, either side packed: the router counted and listed as a router; Behaviour (routers swapped back, the
    routing) gives the numbers of the same pair saved as released."""
    from subnetviz.analysis.experts import routers

    base, ft, planted = _release_and_state_dict(tmp_path / "mixed", "phimoe", packed=packed)
    rep = analyze_updates(str(base), [str(ft)], spectra=SpectraOptions(enabled=False)).reports[0]
    assert int(rep.tensors["changed"].sum()) == planted
    r = routers(rep)
    assert r.set_index("key")["changed"].to_dict() == {
        "layers.0.block_sparse_moe.gate.weight": 0,
        "layers.1.block_sparse_moe.gate.weight": ROUTER_ENTRIES,
    }
    released = _release_and_state_dict(tmp_path / "released", "phimoe", packed="neither")
    got, want = (
        behavior(str(b), [str(f)], PROMPTS, labels=["ft"], masks={"swap": mask_source("routers")}, curve=None,
                 device="cpu")
        for b, f, _ in ((base, ft, None), released)
    )  # fmt: skip
    assert {"finetuned", "swap/inside", "swap/outside"} <= set(got.summary["experiment"])
    assert got.summary.drop(columns=["model"]).equals(want.summary.drop(columns=["model"]))
    assert len(got.routing) and got.routing.drop(columns=["model"]).equals(want.routing.drop(columns=["model"]))


def _llama4_per_expert(sd: dict) -> dict:
    """A Llama 4 state dict with its experts one by one, as llm-compressor's SequentialLlama4TextExperts (and
    GPTQModel, auto-round) store them: expert e's gate = gate_up[e][:, :I]ᵀ, up = gate_up[e][:, I:]ᵀ, down =
    down[e]ᵀ."""
    out = {}
    for k, v in sd.items():
        if k.endswith("experts.gate_up_proj"):
            i, stem = v.shape[2] // 2, k.removesuffix("gate_up_proj")
            for e in range(v.shape[0]):
                out[f"{stem}{e}.gate_proj.weight"] = v[e][:, :i].T.contiguous()
                out[f"{stem}{e}.up_proj.weight"] = v[e][:, i:].T.contiguous()
        elif k.endswith("experts.down_proj"):
            for e in range(v.shape[0]):
                out[f"{k.removesuffix('down_proj')}{e}.down_proj.weight"] = v[e].T.contiguous()
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("per_expert", ["ft", "base"])
def test_llama4_behaviour_with_one_side_stored_per_expert_equals_the_release_layout(tmp_path, per_expert):
    model = _model(
        "llama4_text", intermediate_size=12, intermediate_size_mlp=24, num_experts_per_tok=1,
        interleave_moe_layer_step=1, no_rope_layers=[1, 1], attention_chunk_size=16,
    )  # fmt: skip
    release = tmp_path / "release"
    model.save_pretrained(release / "base")
    char_tokenizer().save_pretrained(release / "base")
    sd = {k: v.clone() for k, v in load_file(str(release / "base/model.safetensors")).items()}
    ffn = "model.layers.1.feed_forward."
    steps = iter(0.25 * torch.arange(1, 19))  # (no two |Δ| alike: the |Δ|-order curve has no ties to draw)
    sd[f"{ffn}experts.down_proj"][1, :4, 0] += torch.stack([next(steps) for _ in range(4)])  # expert 1's down
    sd[f"{ffn}experts.gate_up_proj"][2, :3, 0] += torch.stack([next(steps) for _ in range(3)])  # expert 2's gate
    sd[f"{ffn}experts.gate_up_proj"][2, :5, -1] += torch.stack([next(steps) for _ in range(5)])  # expert 2's up
    sd[f"{ffn}router.weight"][3, :6] += torch.stack([next(steps) for _ in range(6)])
    _save_state_dict(release / "ft", sd, release / "base")
    mixed = tmp_path / "mixed"
    shutil.copytree(release, mixed)
    side = mixed / per_expert
    stored = load_file(str(side / "model.safetensors"))
    (side / "model.safetensors").unlink()
    save_file(_llama4_per_expert(stored), str(side / "model.safetensors"), metadata={"format": "pt"})

    masks = {"update": mask_source("update"), "swap": mask_source("routers")}
    got, want = (
        behavior(str(pair / "base"), [str(pair / "ft")], PROMPTS, labels=["ft"], masks=masks, curve=[0.5, 1.0],
                 device="cpu")
        for pair in (mixed, release)
    )  # fmt: skip
    assert {"finetuned", "update/inside", "update/outside", "swap/inside"} <= set(got.summary["experiment"])
    assert want.summary["kl_forward"].max() > 0
    for frame in ("summary", "curves", "routing", "tokens"):
        a, b = (_drawn_apart(getattr(r, frame)) for r in (got, want))
        assert len(b) and a.equals(b), (frame, a.compare(b) if a.shape == b.shape else (a, b))


def _drawn_apart(frame):
    """``frame`` without its model column and the rows of random draws (the random control, the random-order curve):
    those are drawn tensor by stored tensor, so a layout that stores a packed tensor as its experts' draws others."""
    keep = pd.Series(True, index=frame.index)
    if "experiment" in frame:
        keep &= ~frame["experiment"].astype(str).str.startswith("random")
    if "order" in frame:
        keep &= frame["order"].ne("random")
    return frame[keep].drop(columns=["model"]).reset_index(drop=True)
