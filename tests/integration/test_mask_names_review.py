"""One rule for a mask file's tensor names on every page that takes one (review of masks from other tools):

- a mask keyed without the model prefix, or as PEFT names the wrapped model (``base_model.model.`` and a LoRA-wrapped
  module's ``.base_layer.``), is the same mask on Behaviour (what it offers, and the run), Overlap and Bigram, with a
  note that names were matched across prefixes; only a mask of really other tensors is "another model";
- a tied head ``lm_head.weight`` that neither checkpoint stores is merged (OR) into the embedding's entry on
  Behaviour, as training merges it, with a note (the page offered such a mask, then stopped in an error);
- a bigram mask that lists only some maskable matrices leaves the others outside the subnetwork, in the counts and
  in "the subnetwork alone" (it kept them whole, and counted the density over the listed matrices only).

References are independent: update masks from the stored bits, hand-listed maskable matrices, hand-built masked
weights, and planted equivalent masks written out in full.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from subnetviz.analysis.behavior import Prompt, behavior
from subnetviz.errors import MaskError
from subnetviz.masks import MaskSet, save_mask_set
from tests.ckpt_fixtures import bf16_step, read_state_dict, write_folder
from tests.models import bigram_model, make_tiny_llama

PROMPTS = [Prompt("12+30=", "42"), Prompt("7+8=", "15"), Prompt("40+2=")]
PEFT = "base_model.model."
LORA = re.compile(r"\.(q_proj|v_proj)\.weight$")  # the modules a LoRA wraps: PEFT names their weight .base_layer.


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


def peft_names(masks: dict) -> dict:
    """``masks`` keyed as ``PeftModel.named_parameters()`` names a LoRA model's tensors."""
    return {PEFT + LORA.sub(r".\1.base_layer.weight", n): m for n, m in masks.items()}


def bare_names(masks: dict) -> dict:
    """``masks`` keyed without the model prefix (a mask made on the inner ``LlamaModel``)."""
    return {n.removeprefix("model."): m for n, m in masks.items()}


def _tokenizer(src: Path, dst: Path) -> Path:
    for f in [*src.glob("tokenizer*"), *src.glob("special_tokens_map.json")]:
        shutil.copy(f, dst / f.name)
    return dst


def _summary(rep) -> dict:
    return rep.summary.set_index("experiment").to_dict("index")


# --- the name rule itself ---------------------------------------------------------------------------------------
def test_match_names_lifts_the_model_prefix_and_peft_wrapping_and_never_takes_a_named_tensor_twice():
    from subnetviz.checkpoints.naming import match_names

    stored = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight"]
    got = match_names(
        [
            "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
            "embed_tokens.weight",
            "lm_head.weight",
            "model.embed_tokens.weight",  # the mask names this tensor itself: the bare name above is left unmatched
            "layers.0.self_attn.q_proj.lora_A.default.weight",  # an adapter's own tensor: no tensor of the model
        ],
        stored,
    )
    assert got.to == {
        "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight": "model.layers.0.self_attn.q_proj.weight",
        "lm_head.weight": "lm_head.weight",
        "model.embed_tokens.weight": "model.embed_tokens.weight",
    }
    assert got.unmatched == ("embed_tokens.weight", "layers.0.self_attn.q_proj.lora_A.default.weight")
    assert len(got.across) == 1 and "across prefixes" in got.note()


# --- Behaviour, Overlap: a mask keyed under another prefix ----------------------------------------------------------
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """An untied base and a finetune that moved a random 30 % of every tensor; its update mask from the stored bits."""
    root = tmp_path_factory.mktemp("mask-names")
    base = make_tiny_llama(root / "base", hidden=16, intermediate=32)
    sd = read_state_dict(base)
    g = torch.Generator().manual_seed(3)
    moved = {k: torch.where(torch.rand(v.shape, generator=g) < 0.3, bf16_step(v, 3), v) for k, v in sd.items()}
    ft = _tokenizer(base, write_folder(root / "ft", moved, config_from=base))
    update = {k: bits(moved[k]) != bits(sd[k]) for k in sd}
    return root, base, ft, update


def test_behaviour_offers_and_reverts_a_mask_keyed_without_the_prefix_or_by_peft(pair):
    from subnetviz.uilogic import mask_misfit

    root, base, ft, update = pair
    layer0 = {n: m for n, m in update.items() if ".layers.0." in n}
    masks = {"peft": peft_names(update), "bare": bare_names(update), "peft-layer0": peft_names(layer0)}
    for name, m in masks.items():  # offered on the page
        path = save_mask_set(root / f"{name}.safetensors", MaskSet(m, {}))
        assert mask_misfit(str(path), str(base)) is None, name
    foreign = save_mask_set(
        root / "gpt2.safetensors", MaskSet({"transformer.h.0.mlp.c_fc.weight": torch.ones(2, 2, dtype=torch.bool)})
    )
    assert mask_misfit(str(foreign), str(base)).startswith("made for another model")

    rep = behavior(str(base), [str(ft)], PROMPTS, masks=masks, random_control=False, curve=None, device="cpu")
    s = _summary(rep)
    for name in ("peft", "bare"):  # the whole update reverted: the base itself
        assert s[f"{name}/inside"]["kl_forward"] == 0.0 and s[f"{name}/inside"]["fraction_reverted"] == 1.0
        assert s[f"{name}/outside"]["fraction_reverted"] == 0.0
    want = sum(int(m.sum()) for m in layer0.values()) / sum(int(m.sum()) for m in update.values())
    assert s["peft-layer0/inside"]["fraction_reverted"] == pytest.approx(want, abs=1e-12)
    said = [n for n in rep.notes if "names matched across prefixes" in n]
    assert len(said) == 3 and any("'base_model.model.lm_head.weight' is 'lm_head.weight'" in n for n in said), said


def test_overlap_matches_a_peft_mask_with_the_stored_one(pair):
    from subnetviz.jobs.cluster_pages import sets_overlap

    _, _, _, update = pair
    exact, peft = MaskSet(dict(update)), MaskSet(peft_names(update))
    r = sets_overlap([exact, peft], ["exact", "peft"])
    assert r.common == len(update) and not r.partial
    count, numel = sum(int(m.sum()) for m in update.values()), sum(m.numel() for m in update.values())
    sizes = r.report.sizes.set_index("label")
    assert sizes.loc["exact", "count"] == sizes.loc["peft", "count"] == count
    assert sizes.loc["peft", "numel"] == numel
    assert any("base_model.model." in n for n in r.notes), r.notes


# --- Behaviour: a tied head that neither checkpoint stores ------------------------------------------------------
@pytest.fixture(scope="module")
def tied_pair(tmp_path_factory):
    """A base and a finetune that both tie their head (each stores only the embedding); the finetune moved a random
    40 % of every tensor. Returns the update mask from the stored bits."""
    root = tmp_path_factory.mktemp("mask-names-tied")
    src = make_tiny_llama(root / "src", hidden=16, intermediate=32)
    sd = {k: v for k, v in read_state_dict(src).items() if k != "lm_head.weight"}
    base = _tokenizer(src, write_folder(root / "base", sd, src, tie_word_embeddings=True))
    g = torch.Generator().manual_seed(5)
    moved = {k: torch.where(torch.rand(v.shape, generator=g) < 0.4, bf16_step(v, 2), v) for k, v in sd.items()}
    ft = _tokenizer(src, write_folder(root / "ft", moved, src, tie_word_embeddings=True))
    return root, base, ft, {k: bits(moved[k]) != bits(sd[k]) for k in sd}


def test_a_tied_head_no_checkpoint_stores_is_merged_into_the_embedding_on_behaviour(tied_pair):
    from subnetviz.uilogic import mask_misfit

    root, base, ft, update = tied_pair
    emb = "model.embed_tokens.weight"
    g = torch.Generator().manual_seed(9)
    head_part = update[emb] & (torch.rand(update[emb].shape, generator=g) < 0.5)
    emb_part = update[emb] & (torch.rand(update[emb].shape, generator=g) < 0.5)
    rest = {k: v for k, v in update.items() if k != emb}
    masks = {
        "head": {**rest, "lm_head.weight": update[emb]},  # a tied model's state_dict() lists the head
        "both": {**rest, emb: emb_part, "lm_head.weight": head_part},  # both listed, with other entries: the OR
        "peft-head": peft_names({**rest, "lm_head.weight": update[emb]}),
    }
    path = save_mask_set(root / "head.safetensors", MaskSet(masks["head"], {}))
    assert mask_misfit(str(path), str(base)) is None  # offered, and (below) computed
    wrong = save_mask_set(
        root / "wrong.safetensors", MaskSet({**rest, "lm_head.weight": torch.ones(3, 16, dtype=torch.bool)}, {})
    )
    assert "'lm_head.weight' has shape (3, 16) in the mask" in mask_misfit(str(wrong), str(base))

    rep = behavior(str(base), [str(ft)], PROMPTS, masks=masks, random_control=False, curve=None, device="cpu")
    s = _summary(rep)
    for name in ("head", "peft-head"):  # the head's entries are the embedding's: the whole update reverted
        assert s[f"{name}/inside"]["kl_forward"] == 0.0 and s[f"{name}/inside"]["fraction_reverted"] == 1.0
    total = sum(int(m.sum()) for m in update.values())
    want = (sum(int(m.sum()) for m in rest.values()) + int((head_part | emb_part).sum())) / total
    assert int((head_part | emb_part).sum()) > max(int(head_part.sum()), int(emb_part.sum()))  # (an OR, not either)
    assert s["both/inside"]["fraction_reverted"] == pytest.approx(want, abs=1e-12)
    said = [n for n in rep.notes if "merged (OR) into the embedding" in n]
    assert len(said) == 3 and all(emb in n for n in said), rep.notes
    odd = {"wrong": {**rest, "lm_head.weight": torch.ones(3, 16, dtype=torch.bool)}}  # not the embedding's shape
    with pytest.raises(MaskError, match=r"^mask 'wrong': mask for 'lm_head.weight' has shape \(3, 16\); the base ties"):
        behavior(str(base), [str(ft)], PROMPTS, masks=odd, random_control=False, curve=None, device="cpu")


# --- Bigram: a mask that lists only some maskable matrices ------------------------------------------------------
LLAMA_MASKABLE = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")


@pytest.fixture(scope="module")
def bigram_case():
    from subnetviz.bigram.stats import table_from_transition
    from tests.bigram_fixtures import V, planted_transition

    model = bigram_model("llama")
    table = table_from_transition(planted_transition(), np.arange(V))
    corpus = table.sample(24, 16, seed=2)
    params = dict(model.named_parameters())
    maskable = {n: tuple(p.shape) for n, p in params.items() if LLAMA_MASKABLE.match(n)}
    assert len(maskable) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    g = torch.Generator().manual_seed(0)
    listed = {n: torch.rand(s, generator=g) < 0.3 for n, s in maskable.items() if ".layers.0.mlp." in n}
    explicit = {n: listed.get(n, torch.zeros(s, dtype=torch.bool)) for n, s in maskable.items()}
    return model, table, corpus, params, maskable, listed, explicit


def test_masked_parameters_leave_unlisted_maskable_matrices_outside_the_subnetwork(bigram_case):
    from subnetviz.bigram.maskable import masked_parameters

    model, _, _, params, maskable, listed, _ = bigram_case
    keep = masked_parameters(model, MaskSet(dict(listed)), "keep")
    ablate = masked_parameters(model, MaskSet(dict(listed)), "ablate")
    assert set(keep) == set(ablate) == set(maskable)
    for n in maskable:
        w = params[n].detach()
        want_keep = w * listed[n] if n in listed else torch.zeros_like(w)
        want_ablate = w * ~listed[n] if n in listed else w
        assert torch.equal(keep[n], want_keep), n
        assert torch.equal(ablate[n], want_ablate), n


@pytest.mark.parametrize("keys", ["as is", "peft"])
def test_a_partial_bigram_mask_is_the_same_subnetwork_as_written_out_in_full(bigram_case, keys):
    from subnetviz.bigram.evaluate import analyse_subnetwork
    from subnetviz.bigram.maskable import check_mask_fits

    model, table, corpus, _, maskable, listed, explicit = bigram_case
    partial = MaskSet(peft_names(listed) if keys == "peft" else dict(listed), {"method": "test"})
    check_mask_fits(model, partial)
    got = analyse_subnetwork(model, partial, table, corpus, seeds=(0,), residual_tokens=None, overlap_draws=10)
    ref = analyse_subnetwork(
        model, MaskSet(dict(explicit), {"method": "test"}), table, corpus, seeds=(0,), residual_tokens=None
    )
    kept = sum(int(m.sum()) for m in listed.values())
    numel = sum(int(np.prod(s)) for s in maskable.values())
    assert got.headline["kept"] == kept and got.headline["density"] == pytest.approx(kept / numel, rel=1e-12)
    for k in ("r_subnetwork", "r_random_mean", "delta_bits_ablated", "first_mlp_share", "mlp_share"):
        assert got.headline[k] == pytest.approx(ref.headline[k], rel=1e-9, abs=1e-12), k
    a = got.ablation.summary().set_index("setting")
    b = ref.ablation.summary().set_index("setting")
    assert np.allclose(a["bits_mean"].to_numpy(float), b["bits_mean"].to_numpy(float), rtol=1e-9, atol=1e-12)
    notes = got.headline["notes"]
    assert any("11 it does not list" in n and "outside the subnetwork" in n for n in notes), notes
    assert any("names matched across prefixes" in n for n in notes) == (keys == "peft"), notes
    assert ref.headline["notes"] == []
