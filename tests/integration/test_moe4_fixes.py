"""MoE, fourth review: a Granite-MoE release and a state-dict save of the same model line up.

Granite-MoE (``granitemoe``, ``granitemoeshared``, ``granitemoehybrid``: Granite-3.x MoE, Granite-4.0-H) releases
store each layer's experts packed under names of their own, ``block_sparse_moe.input_linear.weight`` (E, 2I, H) and
``output_linear.weight`` (E, H, I), and the router as ``router.layer.weight``; transformers 5 only renames them on
load (its conversion mapping's ``WeightRenaming``\\ s), into ``block_sparse_moe.experts.gate_up_proj`` /
``experts.down_proj`` / ``router.weight``, the names a state-dict save stores, same shapes. Before, a release against
such a save compared none of them: 0 changed, an empty expert grid, Overlap's Jaccard NaN, a Series of zeros, and a
masked run's saved mask (the model's names) against its own update (the release's names) compared 7,264 of 44,384
entries.

Proves, on tiny models built by transformers 5.24's own Granite-MoE classes, with changes planted in layer 1 (the
router 6 entries; expert 3's gate 5, up 7, down 3) and counted independently in float64 NumPy on the in-memory
tensors' semantic slices:

- the update analysis of every pairing of the two layouts (release / state dict, base / finetune) gives the total,
  the layer × expert grid, the router table and layer 1's split into gate / up / down / router of that count, with
  nothing listed as only in one checkpoint, nothing labelled ``other``, and a note where names were matched;
- Overlap of the update masks of the two layouts: the full counts and Jaccard 1, every tensor in both;
- a Series over a release base, a state-dict finetune and the same finetune released;
- a masked run on a Granite release with a mask in the model's names: its saved mask and its own update mask
  overlap over every tensor, the update inside the mask;
- the families this pulls in (transformers' rename-only conversion mappings onto expert or router names): Aria's
  ``mlp.experts.fc1`` / ``fc2`` line up too; Step-3.7 (a mapping that converts besides renaming) is not taken in.
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
from tests.models import char_tokenizer

LAYER, EXPERT = 1, 3
PLANTED = {"router": 6, "gate": 5, "up": 7, "down": 3}
SMALL = dict(
    hidden_size=16, intermediate_size=12, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
    num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False,
)  # fmt: skip
KINDS = {
    "granitemoe": {},
    "granitemoeshared": dict(shared_intermediate_size=16),
    "granitemoehybrid": dict(
        layer_types=["mamba", "attention"], mamba_n_heads=4, mamba_d_head=8, mamba_d_state=8, mamba_n_groups=1,
        shared_intermediate_size=16,
    ),
}  # fmt: skip
MOE = f"model.layers.{LAYER}.block_sparse_moe."


def _model(kind: str, **extra):
    tok = char_tokenizer()
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    config = T.AutoConfig.for_model(kind, vocab_size=len(tok), **ids, **{**SMALL, **extra})
    return T.AutoModelForCausalLM.from_config(config).float(), tok


def _slices(sd: dict) -> list[tuple[str, tuple, str]]:
    """(in-memory name, index, role) of the planted entries: expert 3's gate (its row 0 of gate_up's first I rows),
    up (row I, the first of the last I), down (row 1), the router's row 0."""
    inter = sd[f"{MOE}experts.gate_up_proj"].shape[1] // 2
    return [
        (f"{MOE}router.weight", (0, slice(0, PLANTED["router"])), "router"),
        (f"{MOE}experts.gate_up_proj", (EXPERT, 0, slice(0, PLANTED["gate"])), "gate"),
        (f"{MOE}experts.gate_up_proj", (EXPERT, inter, slice(0, PLANTED["up"])), "up"),
        (f"{MOE}experts.down_proj", (EXPERT, 1, slice(0, PLANTED["down"])), "down"),
    ]


def _save_state_dict(model, tok, folder: Path, sd: dict) -> None:
    """The in-memory state dict through safetensors (an FSDP-consolidated / ``accelerator.save_model`` save)."""
    folder.mkdir(parents=True)
    model.config.save_pretrained(folder)
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(folder / "model.safetensors"))
    tok.save_pretrained(folder)


def _build(root: Path, kind: str) -> dict:
    """base / finetune saved as released (``rel``) and from the state dict (``sd``), and the float64 counts."""
    model, tok = _model(kind, **KINDS.get(kind, {}))
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ft = {k: v.clone() for k, v in base.items()}
    want: dict[str, int] = {}
    for name, index, role in _slices(ft):
        ft[name][index] += 1.0
        a, b = base[name].double().numpy()[index], ft[name].double().numpy()[index]
        want[role] = want.get(role, 0) + int(np.count_nonzero(a != b))
    total = sum(int(np.count_nonzero(base[k].double().numpy() != ft[k].double().numpy())) for k in base)
    numel = sum(v.numel() for v in base.values())
    for label, sd in (("base", base), ("ft", ft)):
        _save_state_dict(model, tok, root / f"{label}_sd", sd)
        model.load_state_dict(sd)
        model.save_pretrained(root / f"{label}_rel")
        tok.save_pretrained(root / f"{label}_rel")
    return {"root": root, "want": want, "total": total, "numel": numel}


@pytest.fixture(scope="module", params=list(KINDS))
def granite(request, tmp_path_factory):
    built = _build(tmp_path_factory.mktemp(request.param), request.param)
    with safe_open(str(built["root"] / "base_rel" / "model.safetensors"), framework="pt") as f:
        stored = set(f.keys())
    # the defect's premise: the release stores the release's names, the state-dict save the model's
    assert {f"{MOE}input_linear.weight", f"{MOE}output_linear.weight", f"{MOE}router.layer.weight"} <= stored
    assert f"{MOE}experts.gate_up_proj" not in stored
    assert built["want"] == PLANTED and built["total"] == sum(PLANTED.values())
    return built


def _report(base: Path, ft: Path):
    return analyze_updates(str(base), [str(ft)], spectra=SpectraOptions(enabled=False)).reports[0]


@pytest.mark.parametrize("pair", [("rel", "rel"), ("sd", "sd"), ("rel", "sd"), ("sd", "rel")])
def test_update_analysis_of_every_layout_pair_counts_the_planted_changes(granite, pair):
    root, want = granite["root"], granite["want"]
    rep = _report(root / f"base_{pair[0]}", root / f"ft_{pair[1]}")
    assert (rep.changed, rep.numel) == (granite["total"], granite["numel"])  # before (mixed): 0 of 10,400
    grid = {(int(r.layer), r.expert): int(r.changed) for r in by_expert(rep).itertuples() if r.changed}
    assert grid == {(LAYER, str(EXPERT)): want["gate"] + want["up"] + want["down"]}
    r = routers(rep)
    assert int(r["changed"].sum()) == want["router"] and len(r) == 2  # one router a layer
    split = {m.module: int(m.changed) for m in rep.by_layer_module().itertuples() if m.layer == LAYER and m.changed}
    assert split == want  # before (state dict): the experts 'other'
    assert not [n for n in rep.notes if "only in" in n or "Not compared" in n or "labelled 'other'" in n], rep.notes
    matched = [n for n in rep.notes if "compared under the release's names" in n]
    assert len(matched) == (pair[0] != pair[1]), rep.notes  # said where names were matched, only there
    if matched:
        assert "block_sparse_moe.experts.down_proj" in matched[0] and "output_linear.weight" in matched[0]


def test_overlap_of_the_update_masks_of_the_two_layouts(granite, tmp_path):
    from subnetviz.jobs.cluster_pages import files_overlap_task
    from subnetviz.masks import MaskSet, save_mask_set

    root = granite["root"]
    files = []
    for b, f in (("rel", "rel"), ("sd", "sd"), ("rel", "sd")):
        rep = _report(root / f"base_{b}", root / f"ft_{f}")
        files.append(str(save_mask_set(tmp_path / f"{b}_{f}.safetensors", MaskSet(dict(rep.masks.items()), {}))))
    for i, j in ((0, 1), (1, 2)):  # release names x the model's names, the model's x a mixed pair's (release's)
        o = files_overlap_task([files[i], files[j]], ["a", "b"])
        assert o.report.sizes["count"].tolist() == [granite["total"]] * 2
        assert o.report.sizes["numel"].tolist() == [granite["numel"]] * 2  # before: 10,400, the experts left out
        pw = o.report.pairwise.iloc[0]
        assert int(pw["intersection"]) == granite["total"] and float(pw["jaccard"]) == 1.0
        assert not o.partial and not [n for n in o.notes if "left out" in n], o.notes
        said = [n for n in o.notes if "masks matched across names" in n]
        assert len(said) == 1 and "6 tensor(s)" in said[0] and "expert layouts" not in said[0], o.notes


def test_a_series_across_the_two_layouts(granite):
    from subnetviz.analysis.series import checkpoint_series

    root = granite["root"]
    r = checkpoint_series([str(root / "base_rel"), str(root / "ft_sd"), str(root / "ft_rel")])
    assert r.numel == granite["numel"]  # before: 10,400
    total = granite["total"]
    assert r.steps[["changed_vs_first", "changed_vs_previous"]].to_dict("list") == {
        "changed_vs_first": [total, total],
        "changed_vs_previous": [total, 0],
    }
    assert [n for n in r.notes if "ft_sd" in n and "compared under the release's names" in n], r.notes


def masked_sft_run(tmp_path: Path, model, tok) -> tuple[Path, dict]:
    """``model`` saved as ``tmp_path/base`` and trained 2 SFT steps under a random half mask in the model's names
    (``tmp_path/mask.safetensors``); returns the run's output folder and the mask."""
    from subnetviz.masks import MaskSet, save_mask_set
    from subnetviz.training.config import TrainConfig
    from subnetviz.training.run import train
    from tests.training_fixtures import write_addition_data

    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    gen = torch.Generator().manual_seed(1)
    masks = {k: torch.rand(p.shape, generator=gen) < 0.5 for k, p in model.named_parameters()}
    save_mask_set(tmp_path / "mask.safetensors", MaskSet(masks, {"method": "test: random"}))
    data = write_addition_data(tmp_path / "data", n=16)
    cfg = TrainConfig(
        algorithm="sft", base=str(tmp_path / "base"), data=str(data["sft"]), output_dir=str(tmp_path / "out"),
        mask=str(tmp_path / "mask.safetensors"), steps=2, learning_rate=1e-2, batch_size=16, bf16=False, seed=0,
    )  # fmt: skip
    return Path(train(cfg).output_dir), masks


@pytest.mark.slow
def test_a_masked_run_on_a_release_its_saved_mask_overlaps_its_own_update(tmp_path):
    """A mask in the model's names (packed experts, ``router.weight``) on a Granite release: the run saves that mask
    under those names and its checkpoint under the release's; the two overlap over every tensor."""
    from subnetviz.jobs.cluster_pages import files_overlap_task
    from subnetviz.masks import MaskSet, load_mask_set, save_mask_set
    from subnetviz.training.run import MASK_FILE, SUMMARY_FILE

    # Granite's config as transformers writes it: num_local_experts, no num_experts (TRL's load-balancing loss read
    # config.num_experts and the run failed before its first step), router_aux_loss_coef 0.001 (the loss is on)
    model, tok = _model("granitemoe")
    assert not hasattr(model.config, "num_experts") and model.config.router_aux_loss_coef > 0
    out, masks = masked_sft_run(tmp_path, model, tok)
    base_config = json.loads((tmp_path / "base" / "config.json").read_text())
    out_config = json.loads((out / "config.json").read_text())
    assert "num_experts" not in out_config and set(out_config) == set(base_config)  # (the count was the run's only)
    saved = load_mask_set(str(out / MASK_FILE)).masks
    assert f"{MOE}experts.gate_up_proj" in saved  # the model's names, as the mask named them
    check = json.loads((out / SUMMARY_FILE).read_text())["mask_check"]
    assert check["outside_mask_identical"] and check["changed_inside"] > 0
    rep = _report(tmp_path / "base", out)
    assert rep.changed == check["changed_inside"]
    update = save_mask_set(tmp_path / "update.safetensors", MaskSet(dict(rep.masks.items()), {}))
    o = files_overlap_task([str(out / MASK_FILE), str(update)], ["saved", "update"])
    numel = sum(p.numel() for p in model.parameters())
    assert o.report.sizes["numel"].tolist() == [numel, numel]  # before: 7,264 of 44,384
    assert not o.partial and not [n for n in o.notes if "left out" in n], o.notes
    sizes = o.report.sizes.set_index("label")["count"]
    assert int(sizes["saved"]) == sum(int(m.sum()) for m in masks.values())
    pw = o.report.pairwise.iloc[0]
    assert int(pw["intersection"]) == int(sizes["update"]) == rep.changed  # the update inside the saved mask


def test_aria_experts_renamed_on_load_line_up_too(tmp_path):
    """Aria's releases store ``mlp.experts.fc1.weight`` / ``fc2.weight``, which transformers renames (only) into
    ``mlp.experts.gate_up_proj`` / ``down_proj``: the same rule lines them up; the counts are NumPy's."""
    tok = char_tokenizer()
    torch.manual_seed(0)
    config = T.AutoConfig.for_model(
        "aria_text", vocab_size=len(tok), hidden_size=16, intermediate_size=12, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, moe_num_experts=4, moe_topk=2, moe_num_shared_experts=1,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    model = T.AutoModelForCausalLM.from_config(config).float()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ft = {k: v.clone() for k, v in base.items()}
    ft["model.layers.1.mlp.experts.gate_up_proj"][2, :3, 1] += 1.0
    ft["model.layers.1.mlp.experts.down_proj"][1, 0, :4] += 1.0
    total = sum(int(np.count_nonzero(base[k].double().numpy() != ft[k].double().numpy())) for k in base)
    assert total == 7
    for label, sd in (("base", base), ("ft", ft)):
        _save_state_dict(model, tok, tmp_path / f"{label}_sd", sd)
        model.load_state_dict(sd)
        model.save_pretrained(tmp_path / f"{label}_rel")
    with safe_open(str(tmp_path / "base_rel" / "model.safetensors"), framework="pt") as f:
        assert "model.layers.1.mlp.experts.fc1.weight" in set(f.keys())
    numel = sum(v.numel() for v in base.values())
    for b, f in (("rel", "sd"), ("sd", "rel"), ("rel", "rel")):
        rep = _report(tmp_path / f"base_{b}", tmp_path / f"ft_{f}")
        assert (rep.changed, rep.numel) == (total, numel), (b, f, rep.notes)
        assert not [n for n in rep.notes if "only in" in n], rep.notes


def test_only_rename_only_mappings_onto_experts_or_routers_are_taken():
    from subnetviz.checkpoints.experts_layout import stored_forms

    assert "layers.1.block_sparse_moe.input_linear.weight" in stored_forms(
        "layers.1.block_sparse_moe.experts.gate_up_proj"
    )
    assert "layers.1.block_sparse_moe.output_linear.weight" in stored_forms(
        "layers.1.block_sparse_moe.experts.down_proj"
    )
    assert "layers.1.block_sparse_moe.router.layer.weight" in stored_forms("layers.1.block_sparse_moe.router.weight")
    assert "layers.1.mlp.experts.fc1.weight" in stored_forms("layers.1.mlp.experts.gate_up_proj")
    # Step-3.7's mapping converts its stacked experts besides renaming them: not read as renamed (README: not yet
    # lined up), nor its router
    assert "layers.1.moe.down_proj.weight" not in stored_forms("layers.1.mlp.experts.down_proj")
    assert "layers.1.moe.gate.weight" not in stored_forms("layers.1.mlp.gate.weight")
