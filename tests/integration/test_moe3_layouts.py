"""MoE, third review: Qwen3-VL-MoE's two packed layouts, and masks in two expert layouts.

Proves:

- Qwen's own Qwen3-VL-MoE release stores its packed experts (E, H, 2I) / (E, I, H), a transformers 5 save of the same
  model (E, 2I, H) / (E, H, I), and transformers loads both to the same weights (checked here). The update analysis,
  the series and the masked-training check line them up through the one alignment: a release against a save of
  the same weights is 0 changed with nothing "only in" either; planted changes count exactly, per (layer, expert),
  in either direction, and the update mask equals that of two saves entry by entry.
- A mask of packed experts (an update mask of two state-dict saves) and a mask of per-expert tensors (one of two
  releases) of one update: Behaviour places either on either pair, its numbers those of the mask in the pair's own
  layout, each entry placed where it was counted here; the Overlap page overlaps them over every expert (sizes,
  intersection and the layer x expert grid equal counts made here), each saying the masks were matched across
  layouts, and names the tensors it leaves out.
- The mask layouts in Llama 4's transposed packing: split and packed back, equal to the slices taken here.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from subnetviz.analysis.updates import SpectraOptions, analyze_updates
from subnetviz.masks import MaskSet, load_mask_set, save_mask_set
from tests.models import char_tokenizer

NO_SPECTRA = SpectraOptions(enabled=False)
PACKED = ("experts.gate_up_proj", "experts.down_proj")


def _changed_by_expert(base: dict, ft: dict) -> dict[tuple[int, str], int]:
    """(layer, expert) -> changed entries of the packed experts, counted on the in-memory state dicts."""
    out: dict[tuple[int, str], int] = {}
    for k, v in ft.items():
        if k.endswith(PACKED):
            layer = int(k.split("layers.")[1].split(".")[0])
            for e in range(v.shape[0]):
                n = int((v[e] != base[k][e]).sum())
                if n:
                    out[(layer, str(e))] = out.get((layer, str(e)), 0) + n
    return out


def _update_mask(base, ft, path):
    rep = analyze_updates(str(base), [str(ft)], spectra=NO_SPECTRA).reports[0]
    save_mask_set(path, MaskSet(dict(rep.masks.items()), {"method": "update mask"}))
    return rep, path


# --- Qwen3-VL-MoE: Qwen's release layout against a transformers 5 save -----------------------------------------
def _qwen_release(sd: dict) -> dict:
    """The layout of Qwen's own Qwen3-VL-MoE releases: packed experts transposed, (E, H, 2I) / (E, I, H)."""
    return {k: (v.transpose(1, 2) if k.endswith(PACKED) else v).contiguous() for k, v in sd.items()}


@pytest.fixture(scope="module")
def vl(tmp_path_factory):
    """Qwen3-VL-MoE (H 32, I 8, 4 experts, 2 layers): base and finetune saved in either layout; the planted changes
    (layer 1 expert 2: 5 gate and 4 up entries; layer 0 expert 3: 8 down entries) counted on the state dicts."""
    import transformers as T

    root = tmp_path_factory.mktemp("vl")
    text = dict(
        vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=8, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
        decoder_sparse_step=1, mlp_only_layers=[], rope_scaling={"rope_type": "default", "mrope_section": [1, 1, 2]},
    )  # fmt: skip
    vision = dict(
        depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32, deepstack_visual_indexes=[0],
        patch_size=4, temporal_patch_size=1, spatial_merge_size=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = T.Qwen3VLMoeForConditionalGeneration(
        T.AutoConfig.for_model("qwen3_vl_moe", text_config=text, vision_config=vision)
    ).float()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ft = {k: v.clone() for k, v in base.items()}
    gate_up = next(k for k in ft if k.endswith("layers.1.mlp.experts.gate_up_proj"))
    down = next(k for k in ft if k.endswith("layers.0.mlp.experts.down_proj"))
    assert tuple(ft[gate_up].shape) == (4, 16, 32) and tuple(ft[down].shape) == (4, 32, 8)  # (E, 2I, H) / (E, H, I)
    ft[gate_up][2, :5, 3] += 1.0  # expert 2's gate (rows < I)
    ft[gate_up][2, 9, :4] += 1.0  # expert 2's up
    ft[down][3, 0, :] += 1.0  # expert 3's down
    model.save_pretrained(root / "config")
    for name, sd in (("base_qwen", _qwen_release(base)), ("ft_qwen", _qwen_release(ft)), ("base_sd", base),
                     ("ft_sd", ft)):  # fmt: skip
        (root / name).mkdir()
        shutil.copy(root / "config/config.json", root / name / "config.json")
        save_file(sd, str(root / name / "model.safetensors"), metadata={"format": "pt"})
    return root, _changed_by_expert(base, ft)


def test_transformers_loads_both_qwen3_vl_moe_layouts_alike(vl):
    """The fixture's premise: what the comparison must treat as equal, transformers itself loads equal."""
    import transformers as T

    root, _ = vl
    a, b = (T.AutoModelForImageTextToText.from_pretrained(str(root / n)).state_dict() for n in ("ft_qwen", "ft_sd"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("base", "ft"), [("base_qwen", "ft_sd"), ("base_sd", "ft_qwen")])
def test_qwen3_vl_moe_release_against_a_save_counts_the_planted_changes(vl, tmp_path, base, ft):
    from subnetviz.analysis.experts import by_expert

    root, planted = vl
    rep, path = _update_mask(root / base, root / ft, tmp_path / "mixed.safetensors")
    assert rep.changed == sum(planted.values()) == 17
    grid = by_expert(rep)
    got = {(int(r.layer), str(r.expert)): int(r.changed) for r in grid.itertuples() if r.changed}
    assert got == planted
    assert not [n for n in rep.notes if "only in" in n], rep.notes
    assert any("read transposed" in n and "Qwen3-VL-MoE" in n for n in rep.notes), rep.notes
    # the update mask is the one of two saves, entry by entry, in the model's layout
    _, saves = _update_mask(root / "base_sd", root / "ft_sd", tmp_path / "saves.safetensors")
    mixed, same = load_mask_set(path).masks, load_mask_set(saves).masks
    assert mixed.keys() == same.keys() and all(torch.equal(mixed[k], same[k]) for k in same)


def test_qwen3_vl_moe_release_and_save_of_the_same_weights_are_equal(vl):
    from subnetviz.analysis.series import checkpoint_series

    root, planted = vl
    rep = analyze_updates(str(root / "ft_qwen"), [str(root / "ft_sd")], spectra=NO_SPECTRA).reports[0]
    assert rep.changed == 0 and not [n for n in rep.notes if "only in" in n], rep.notes
    series = checkpoint_series([str(root / n) for n in ("base_qwen", "ft_sd", "ft_qwen")]).to_frame()
    assert series["changed_vs_first"].tolist()[:2] == [sum(planted.values())] * 2
    assert series["changed_vs_previous"].tolist()[:2] == [sum(planted.values()), 0]


def test_qwen3_vl_moe_masked_training_check_lines_up_the_layouts(vl, tmp_path):
    from subnetviz.training.masking import check_outside_mask

    root, planted = vl
    _, path = _update_mask(root / "base_sd", root / "ft_sd", tmp_path / "saves.safetensors")
    check = check_outside_mask(root / "base_qwen", root / "ft_sd", load_mask_set(path).masks)
    assert check.outside_mask_identical and check.changed_outside == 0
    assert check.changed_inside == sum(planted.values())


# --- masks in two expert layouts: Behaviour and Overlap ----------------------------------------------------------
@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """A Qwen3-MoE (4 experts) whose finetune moved 5 % of every matrix, saved as released (experts one by one) and
    from the in-memory state dict (packed), base and finetune alike; the update mask of either pair; the changed
    entries per (layer, expert) and per packed tensor, counted on the state dicts."""
    import transformers as T

    root = tmp_path_factory.mktemp("moe")
    tok = char_tokenizer()
    config = T.Qwen3MoeConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
        max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = T.Qwen3MoeForCausalLM(config).float()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ft = {k: v.clone() for k, v in base.items()}
    g = torch.Generator().manual_seed(0)
    for v in ft.values():
        if v.is_floating_point() and v.dim() >= 2:
            sel = torch.rand(v.shape, generator=g) < 0.05
            v[sel] += 0.3 * torch.randn(int(sel.sum()), generator=g)
    for name, sd in (("base", base), ("ft", ft)):
        model.load_state_dict(sd)
        model.save_pretrained(root / f"{name}_rel")
        (root / f"{name}_sd").mkdir()
        save_file({k: v.contiguous() for k, v in sd.items()}, str(root / f"{name}_sd/model.safetensors"))
        shutil.copy(root / f"{name}_rel/config.json", root / f"{name}_sd/config.json")
        for side in ("rel", "sd"):
            tok.save_pretrained(root / f"{name}_{side}")
    masks = {s: _update_mask(root / f"base_{s}", root / f"ft_{s}", root / f"mask_{s}.safetensors")[1] for s in
             ("rel", "sd")}  # fmt: skip
    changed = {k: (ft[k] != base[k]) for k in ft if k.endswith(PACKED)}
    return root, masks, changed, _changed_by_expert(base, ft), sum(int((ft[k] != base[k]).sum()) for k in ft)


def test_mask_files_hold_the_two_layouts(moe):
    _, masks, changed, _, _ = moe
    rel, sd = (load_mask_set(masks[s]).masks for s in ("rel", "sd"))
    assert "model.layers.0.mlp.experts.gate_up_proj" in sd and "model.layers.0.mlp.experts.gate_up_proj" not in rel
    assert "model.layers.0.mlp.experts.0.gate_proj.weight" in rel and torch.equal(
        sd["model.layers.0.mlp.experts.gate_up_proj"], changed["model.layers.0.mlp.experts.gate_up_proj"]
    )


@pytest.mark.parametrize(("pair", "mask"), [("rel", "sd"), ("sd", "rel")])
def test_behaviour_places_a_mask_of_the_other_expert_layout(moe, pair, mask):
    from subnetviz.analysis.revert import ModelBuilder, check_mask_names, mask_placement_note, place_masks

    root, masks, changed, _, _ = moe
    builder = ModelBuilder(str(root / f"base_{pair}"), str(root / f"ft_{pair}"), "cpu")
    given = load_mask_set(masks[mask]).masks
    check_mask_names(given, builder, "m")  # (refused before: tensor names not in the base checkpoint)
    placed = place_masks(given, builder).masks
    layer = "model.layers.1.mlp.experts."
    gate_up, down = changed[f"{layer}gate_up_proj"], changed[f"{layer}down_proj"]
    if pair == "rel":  # the packed mask's entries, each in its expert's own tensor
        for e in range(4):
            assert torch.equal(placed[f"{layer}{e}.gate_proj.weight"], gate_up[e, :16])
            assert torch.equal(placed[f"{layer}{e}.up_proj.weight"], gate_up[e, 16:])
            assert torch.equal(placed[f"{layer}{e}.down_proj.weight"], down[e])
    else:  # the per-expert mask's entries, packed as the model packs them
        assert torch.equal(placed[f"{layer}gate_up_proj"], gate_up) and torch.equal(placed[f"{layer}down_proj"], down)
    assert set(placed) == set(builder.mask_names.values())
    note = mask_placement_note(given, builder, "m")
    assert note and "matched across expert layouts" in note


def test_behaviour_numbers_with_a_mask_of_the_other_layout_are_those_of_the_own_layout(moe):
    from subnetviz.analysis.behavior import Prompt, behavior
    from subnetviz.analysis.revert import mask_source

    root, masks, _, _, _ = moe
    prompts = [Prompt("12+30=", "42"), Prompt("7+8=", "15")]

    def run(mask):
        got = behavior(str(root / "base_rel"), [str(root / "ft_rel")], prompts, labels=["ft"],
                       masks={"m": mask_source(str(masks[mask]))}, curve=None, device="cpu")  # fmt: skip
        return got

    own, other = run("rel"), run("sd")
    assert own.summary.drop(columns=["model"]).equals(other.summary.drop(columns=["model"]))
    assert float(own.summary.set_index("experiment").loc["m/inside", "kl_forward"]) == 0.0
    assert any("matched across expert layouts" in n for n in other.notes), other.notes


@pytest.mark.parametrize("order", [("sd", "rel"), ("rel", "sd"), ("sd", "rel", "sd")])
def test_overlap_of_masks_in_two_expert_layouts_counts_every_expert(moe, order):
    from subnetviz.jobs.cluster_pages import files_overlap_task

    _, masks, _, per_expert, total = moe
    labels = [f"{s}{i}" for i, s in enumerate(order)]
    got = files_overlap_task([str(masks[s]) for s in order], labels)
    assert not got.partial and got.common == len(load_mask_set(masks["rel"]).masks)
    assert got.report.sizes.set_index("label")["count"].to_dict() == dict.fromkeys(labels, total)
    assert set(got.report.pairwise["intersection"]) == {total} and set(got.report.pairwise["jaccard"]) == {1.0}
    grid = got.experts.by_group
    pair = grid[(grid["a"] == labels[0]) & (grid["b"] == labels[1])]
    for column in ("count_a", "count_b", "intersection"):  # the layer x expert grid: every routed expert
        counts = {(int(g[0]), g[1][1:]): int(c) for g, c in zip(pair["group"], pair[column], strict=True)}
        assert {k: c for k, c in counts.items() if c and k[1] != "hared"} == per_expert
    assert any("matched across expert layouts" in n for n in got.notes), got.notes


def test_overlap_names_the_tensors_it_leaves_out(moe):
    from subnetviz.jobs.cluster_pages import sets_overlap

    _, masks, _, _, _ = moe
    full = load_mask_set(masks["rel"])
    less = MaskSet({k: v for k, v in full.masks.items() if "layers.1.self_attn.o_proj" not in k}, {})
    got = sets_overlap([full, less], ["full", "less"])
    assert got.partial
    assert any("left out" in n and "layers.1.self_attn.o_proj.weight (in full)" in n for n in got.notes), got.notes


# --- Llama 4's transposed packing ---------------------------------------------------------------------------------
def test_mask_layout_in_llama4_packing_splits_and_packs_back():
    from subnetviz.checkpoints.experts_layout import mask_layout, relaid_masks
    from subnetviz.masks import PackedMasks

    e_n, h, i = 3, 6, 2
    g = torch.Generator().manual_seed(1)
    stem = "model.layers.0.feed_forward.experts."
    packed = {
        f"{stem}gate_up_proj": torch.rand((e_n, h, 2 * i), generator=g) < 0.5,  # (E, H, 2I)
        f"{stem}down_proj": torch.rand((e_n, i, h), generator=g) < 0.5,  # (E, I, H)
    }
    per = {}
    for e in range(e_n):  # llm-compressor's per-expert Llama 4: the packed slices transposed
        per[f"{stem}{e}.gate_proj.weight"] = packed[f"{stem}gate_up_proj"][e][:, :i].T.contiguous()
        per[f"{stem}{e}.up_proj.weight"] = packed[f"{stem}gate_up_proj"][e][:, i:].T.contiguous()
        per[f"{stem}{e}.down_proj.weight"] = packed[f"{stem}down_proj"][e].T.contiguous()
    shapes = {k: tuple(v.shape) for k, v in per.items()}
    split = mask_layout({k: tuple(v.shape) for k, v in packed.items()}, shapes)
    assert split.split == 2 and split.columns
    for held in (packed, _bits(packed, PackedMasks)):
        got = relaid_masks(held, split)
        assert set(got) == set(per) and all(torch.equal(got[k], per[k]) for k in per)
    back = mask_layout(shapes, {k: tuple(v.shape) for k, v in packed.items()})
    got = relaid_masks(per, back)
    assert back.packed == 2 and set(got) == set(packed) and all(torch.equal(got[k], packed[k]) for k in packed)
    assert "Llama 4" in split.note("the base") and "matched across expert layouts" in back.note("the base")


def _bits(masks, cls):
    out = cls()
    for k, v in masks.items():
        out.add(k, v)
    return out


@pytest.mark.parametrize(("pair", "mask"), [("rel", "sd"), ("sd", "rel"), ("rel", "rel")])
def test_the_behaviour_page_offers_a_mask_of_the_other_expert_layout(moe, pair, mask):
    """The page's check (uilogic.mask_misfit, by the base's header) left out a mask the run places across layouts:
    "…experts.gate_up_proj … not in the base"."""
    from subnetviz.uilogic import mask_misfit

    root, masks, _, _, _ = moe
    assert mask_misfit(str(masks[mask]), str(root / f"base_{pair}")) is None
