"""MoE, fifth review: Nemotron-H's experts stored one by one and packed line up.

NVIDIA's Nemotron-3 Nano / Super releases (``nemotron_h``) store each routed expert one by one, under ``backbone.``:
``backbone.layers.N.mixer.experts.<e>.up_proj.weight`` (I, H) and ``down_proj.weight`` (H, I), squared-ReLU experts
with no gate. transformers 5 holds them packed, ``model.layers.N.mixer.experts.up_proj`` (E, I, H) and ``down_proj``
(E, H, I) (its conversion mapping's ``MergeModulelist``), so a state-dict save (FSDP / DeepSpeed consolidated,
``subnetviz train``'s own mask) stores them packed. Before, the two were never lined up: a release against a state-dict
save counted 8 of the 16 planted changes with an empty expert grid, a Series and Overlap left every routed expert out,
Behaviour said the mask did not fit, the packed experts were labelled ``other``, a release's update mask was refused by
masked training, and a masked run on a release failed its own post-check ("4,049 entries outside the mask changed").

Proves, on tiny models built by transformers 5.24's own ``NemotronHForCausalLM`` (layers Mamba, MoE, attention, MoE;
4 routed experts and a shared one), with changes planted in layer 3 (expert 3's up 5 entries, expert 1's down 3, the
router 6, the shared expert's up 2) and counted independently in float64 NumPy on the in-memory tensors:

- the update analysis of every pairing of the two layouts gives the total, the layer × expert grid, the routers and
  layer 3's split into up / down / router, nothing left out, nothing ``other``;
- Overlap of the update masks of the two layouts: every entry, per expert too; Behaviour's mask fit both ways;
- a Series over a release base, a state-dict finetune and the same finetune released;
- ``check_outside_mask`` with a random mask in the model's names, on either layout's pair: NumPy's inside / outside;
  a release's update mask packed into the model's parameters by masked training;
- a masked run on a Nemotron-H release: its post-check passes and agrees with a count on the weights transformers
  loads;
- the gated families' packed layout is not read as the ungated one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T
from safetensors import safe_open
from safetensors.torch import save_file

from subnetviz.analysis.experts import by_expert, routers
from subnetviz.analysis.updates import SpectraOptions, analyze_updates
from subnetviz.masks import MaskSet, save_mask_set
from tests.models import char_tokenizer

LAYER = 3
MIX = f"model.layers.{LAYER}.mixer."
# (in-memory name, index, role, expert) of the planted entries
SLICES = [
    (f"{MIX}experts.up_proj", (3, slice(0, 5), 0), "up", "3"),
    (f"{MIX}experts.down_proj", (1, 2, slice(0, 3)), "down", "1"),
    (f"{MIX}gate.weight", (2, slice(0, 6)), "router", None),
    (f"{MIX}shared_experts.up_proj.weight", (0, slice(0, 2)), "up", "shared"),
]


def _model(**extra):
    tok = char_tokenizer()
    torch.manual_seed(0)
    config = T.NemotronHConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
        moe_shared_expert_intermediate_size=16, layers_block_type=["linear_attention", "moe", "full_attention", "moe"],
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, mamba_num_heads=4, mamba_head_dim=8,
        ssm_state_size=8, n_groups=1, n_routed_experts=4, num_experts_per_tok=2, use_mamba_kernels=False,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **extra,
    )  # fmt: skip
    return T.AutoModelForCausalLM.from_config(config).float(), tok


def _save_state_dict(model, tok, folder: Path, sd: dict) -> None:
    """The in-memory state dict through safetensors (an FSDP-consolidated / ``accelerator.save_model`` save)."""
    folder.mkdir(parents=True)
    model.config.save_pretrained(folder)
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(folder / "model.safetensors"))
    tok.save_pretrained(folder)


def _changed(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return a.double().numpy() != b.double().numpy()


@pytest.fixture(scope="module")
def nemotron(tmp_path_factory):
    """base / finetune saved as released (``rel``: ``save_pretrained``) and from the state dict (``sd``), the
    state dicts and NumPy's counts: per expert (layer 3's), per role, in all."""
    root = tmp_path_factory.mktemp("nemotron_h")
    model, tok = _model()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ft = {k: v.clone() for k, v in base.items()}
    experts: dict[str, int] = {}
    roles: dict[str, int] = {}
    for name, index, role, expert in SLICES:
        ft[name][index] += 1.0
        n = int(np.count_nonzero(base[name].double().numpy()[index] != ft[name].double().numpy()[index]))
        roles[role] = roles.get(role, 0) + n
        if expert is not None:
            experts[expert] = experts.get(expert, 0) + n
    total = sum(int(_changed(base[k], ft[k]).sum()) for k in base)
    for label, sd in (("base", base), ("ft", ft)):
        _save_state_dict(model, tok, root / f"{label}_sd", sd)
        model.load_state_dict(sd)
        model.save_pretrained(root / f"{label}_rel")
        tok.save_pretrained(root / f"{label}_rel")
    with safe_open(str(root / "base_rel" / "model.safetensors"), framework="pt") as f:
        stored = set(f.keys())
    # the defect's premise: the release stores each expert under backbone., the state-dict save them packed
    assert f"backbone.layers.{LAYER}.mixer.experts.3.up_proj.weight" in stored
    assert f"backbone.layers.{LAYER}.mixer.experts.1.down_proj.weight" in stored
    assert not [n for n in stored if n.endswith("experts.up_proj")]
    assert experts == {"3": 5, "1": 3, "shared": 2} and roles == {"up": 7, "down": 3, "router": 6} and total == 16
    numel = sum(v.numel() for v in base.values())
    return {"root": root, "base": base, "ft": ft, "experts": experts, "roles": roles, "total": total, "numel": numel}


def _report(base: Path, ft: Path):
    return analyze_updates(str(base), [str(ft)], spectra=SpectraOptions(enabled=False)).reports[0]


@pytest.mark.parametrize("pair", [("rel", "rel"), ("sd", "sd"), ("rel", "sd"), ("sd", "rel")])
def test_update_analysis_of_every_layout_pair_counts_the_planted_changes(nemotron, pair):
    root = nemotron["root"]
    rep = _report(root / f"base_{pair[0]}", root / f"ft_{pair[1]}")
    assert (rep.changed, rep.numel) == (nemotron["total"], nemotron["numel"])  # before (mixed): 8 of 13,636
    grid = {r.expert: int(r.changed) for r in by_expert(rep).itertuples() if r.changed and int(r.layer) == LAYER}
    assert grid == nemotron["experts"]  # before (mixed): the shared expert's 2 only
    r = routers(rep)
    assert int(r["changed"].sum()) == nemotron["roles"]["router"]
    split = {m.module: int(m.changed) for m in rep.by_layer_module().itertuples() if m.layer == LAYER and m.changed}
    assert split == nemotron["roles"]  # before (state dict): the packed experts' 8 'other'
    assert not [n for n in rep.notes if "only in" in n or "Not compared" in n or "labelled 'other'" in n], rep.notes
    matched = [n for n in rep.notes if "up = up_proj[e], down = down_proj[e]" in n]
    assert len(matched) == (pair[0] != pair[1]), rep.notes  # said where the layouts were matched, only there


@pytest.fixture(scope="module")
def update_masks(nemotron, tmp_path_factory):
    """The update masks of the release pair (per-expert names) and the state-dict pair (packed names)."""
    root, folder = nemotron["root"], tmp_path_factory.mktemp("masks")
    out = {}
    for lay in ("rel", "sd"):
        rep = _report(root / f"base_{lay}", root / f"ft_{lay}")
        out[lay] = str(save_mask_set(folder / f"{lay}.safetensors", MaskSet(dict(rep.masks.items()), {})))
    return out


def test_overlap_and_mask_fit_across_the_two_layouts(nemotron, update_masks):
    from subnetviz.jobs.cluster_pages import files_overlap_task
    from subnetviz.uilogic import mask_misfit

    o = files_overlap_task([update_masks["rel"], update_masks["sd"]], ["rel", "sd"])
    total, numel = nemotron["total"], nemotron["numel"]
    assert o.report.sizes["count"].tolist() == [total, total]  # before: 8 / 8
    assert o.report.sizes["numel"].tolist() == [numel, numel]  # before: 13,636
    pw = o.report.pairwise.iloc[0]
    assert int(pw["intersection"]) == total and float(pw["jaccard"]) == 1.0
    assert not o.partial and not [n for n in o.notes if "left out" in n], o.notes
    grid = o.experts.by_group
    cells = {tuple(g): int(i) for g, i in zip(grid["group"], grid["intersection"], strict=True) if i}
    assert cells == {(LAYER, "E3"): 5, (LAYER, "E1"): 3, (LAYER, "shared"): 2}, cells  # before: the shared 2 only
    assert [n for n in o.notes if "packed experts.up_proj / down_proj" in n], o.notes
    root = nemotron["root"]  # Behaviour: each mask fits the other layout's base (before: 4 / 16 tensors not in it)
    assert mask_misfit(update_masks["sd"], str(root / "base_rel")) is None
    assert mask_misfit(update_masks["rel"], str(root / "base_sd")) is None


def test_a_series_across_the_two_layouts(nemotron):
    from subnetviz.analysis.series import checkpoint_series

    root, total = nemotron["root"], nemotron["total"]
    r = checkpoint_series([str(root / "base_rel"), str(root / "ft_sd"), str(root / "ft_rel")])
    assert r.numel == nemotron["numel"]  # before: 13,636, every routed expert left out
    assert r.steps[["changed_vs_first", "changed_vs_previous"]].to_dict("list") == {
        "changed_vs_first": [total, total],
        "changed_vs_previous": [total, 0],
    }
    assert not [n for n in r.notes if "left out" in n], r.notes


@pytest.mark.parametrize("lay", ["rel", "sd"])
def test_check_outside_mask_with_a_mask_in_the_models_names(nemotron, lay):
    """A random mask over the model's tensors (packed experts), as masked training holds it: the check of either
    layout's pair counts NumPy's changed entries inside and outside it (before, on the release pair, every changed
    routed-expert entry was outside)."""
    from subnetviz.training.masking import check_outside_mask

    base, ft = nemotron["base"], nemotron["ft"]
    gen = torch.Generator().manual_seed(3)
    masks = {k: torch.rand(v.shape, generator=gen) < 0.5 for k, v in base.items()}
    masks[f"{MIX}experts.up_proj"][3, 0:5, 0] = torch.tensor([True, True, False, True, False])  # 2 of 5 outside
    masks[f"{MIX}experts.down_proj"][1, 2, 0:3] = True
    inside = sum(int((_changed(base[k], ft[k]) & masks[k].numpy()).sum()) for k in base)
    outside = sum(int((_changed(base[k], ft[k]) & ~masks[k].numpy()).sum()) for k in base)
    in_mask = sum(int(m.sum()) for m in masks.values())
    assert outside >= 2 and inside >= 6 and inside + outside == nemotron["total"]
    root = nemotron["root"]
    got = check_outside_mask(root / f"base_{lay}", root / f"ft_{lay}", masks)
    assert (got.changed_inside, got.changed_outside) == (inside, outside)  # before (rel): 8 outside of 16 at best
    assert (got.numel_inside, got.numel_outside) == (in_mask, nemotron["numel"] - in_mask)
    assert not got.outside_mask_identical


def test_a_release_update_mask_is_packed_into_the_models_parameters(nemotron, update_masks):
    from subnetviz.training.masking import load_training_mask, tied_heads

    model = T.AutoModelForCausalLM.from_pretrained(str(nemotron["root"] / "base_rel"))
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    masks, _ = load_training_mask(update_masks["rel"], shapes, tied=tied_heads(model), notes=[])  # before: refused
    up, down = masks[f"{MIX}experts.up_proj"], masks[f"{MIX}experts.down_proj"]
    assert int(up.sum()) == 5 and bool(up[3, 0:5, 0].all())
    assert int(down.sum()) == 3 and bool(down[1, 2, 0:3].all())
    assert sum(int(m.sum()) for m in masks.values()) == nemotron["total"]


@pytest.mark.slow
def test_a_masked_run_on_a_nemotron_release_passes_its_own_check(tmp_path):
    """A random mask in the model's names on a Nemotron-H release: the run's post-check (on the release layout it
    saves) agrees with a count on the weights transformers loads, 0 outside (before: it failed, 4,049 "outside")."""
    from subnetviz.training.run import SUMMARY_FILE
    from tests.integration.test_moe4_fixes import masked_sft_run

    model, tok = _model(tie_word_embeddings=False)
    out, masks = masked_sft_run(tmp_path, model, tok)
    check = json.loads((out / SUMMARY_FILE).read_text())["mask_check"]
    a = T.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base")).state_dict()
    b = T.AutoModelForCausalLM.from_pretrained(str(out)).state_dict()
    inside = outside = 0
    for k in a:
        diff = a[k].numpy() != b[k].numpy()
        m = masks[k].numpy() if k in masks else np.zeros(diff.shape, bool)
        inside, outside = inside + int((diff & m).sum()), outside + int((diff & ~m).sum())
    assert outside == 0 and int((a[f"{MIX}experts.up_proj"] != b[f"{MIX}experts.up_proj"]).sum()) > 0
    assert check["outside_mask_identical"] and (check["changed_inside"], check["changed_outside"]) == (inside, 0)


def test_gated_packed_experts_are_not_read_as_ungated():
    """The ungated form is Nemotron-H's only: a packed up_proj never takes a gated layer's experts, and a gated
    layer's gate_up_proj still splits [gate; up] (Qwen-MoE's layout, as before)."""
    from subnetviz.checkpoints.experts_layout import param_pieces

    gated = {f"layers.0.mlp.experts.{e}.{p}.weight": (4, 6) for e in range(2) for p in ("gate_proj", "up_proj")}
    assert param_pieces("layers.0.mlp.experts.up_proj", (2, 4, 6), gated) is None
    pieces = param_pieces("layers.0.mlp.experts.gate_up_proj", (2, 8, 6), gated)
    assert [(n.split(".")[5], i) for n, i in pieces] == [
        ("gate_proj", (0, slice(0, 4))),
        ("up_proj", (0, slice(4, 8))),
        ("gate_proj", (1, slice(0, 4))),
        ("up_proj", (1, slice(4, 8))),
    ]
    ungated = {f"layers.0.mixer.experts.{e}.up_proj.weight": (4, 6) for e in range(2)}
    assert param_pieces("layers.0.mixer.experts.up_proj", (2, 4, 6), ungated) == [
        ("layers.0.mixer.experts.0.up_proj.weight", (0,)),
        ("layers.0.mixer.experts.1.up_proj.weight", (1,)),
    ]
    assert param_pieces("layers.0.mixer.experts.up_proj", (2, 4, 6), ungated, transposed=True) is None
