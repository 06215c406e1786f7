"""Masks from other tools on the pages (AppTest): Behaviour offers a mask that names a tied head ``lm_head.weight``
(a tied model's ``state_dict()`` lists it) beside a base and a finetune that both tie it, and computes it with the
head merged into the embedding (it stopped in "1 tensor name(s) not in the base checkpoint"); Overlap compares a
mask keyed as PEFT names the model (``base_model.model.``, ``.base_layer.``) with the same mask under the stored
names, saying the names were matched across prefixes (it said "These masks share no tensor names; they are over
different models")."""

import re
import shutil

import pytest
import torch

from subnetviz.masks import MaskSet, save_mask_set
from tests.app_fixtures import open_page, plotly_specs
from tests.ckpt_fixtures import tied_llama_pair

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("typed_options")]


@pytest.fixture(scope="module")
def uploaded(app_env, tmp_path_factory):
    """(tied base, tied finetune, the saved masks' labels by name); the uploads removed afterwards (the app home is
    shared by the session's other page tests)."""
    from subnetviz.selection import save_upload

    root = app_env / "mask-names-review"
    base, ft, sd, moved = tied_llama_pair(root, seed=4)
    update = {k: moved[k].view(torch.int16) != sd[k].view(torch.int16) for k in sd}
    emb = "model.embed_tokens.weight"
    lora = re.compile(r"\.(q_proj|v_proj)\.weight$")
    masks = {
        "head_only": {**{k: v for k, v in update.items() if k != emb}, "lm_head.weight": update[emb]},
        "stored": update,
        "peft": {"base_model.model." + lora.sub(r".\1.base_layer.weight", k): v for k, v in update.items()},
    }
    tmp = tmp_path_factory.mktemp("mask-names-upload")
    stored = {}
    for name, m in masks.items():
        path = save_mask_set(tmp / f"{name}.safetensors", MaskSet(m, {}))
        stored[name] = save_upload(f"{name}.safetensors", path.read_bytes())
    yield base, ft, {name: f"uploads/{p.stem}" for name, p in stored.items()}
    for p in stored.values():
        p.unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)


def test_behaviour_offers_a_tied_head_mask_and_computes_it(uploaded):
    base, ft, labels = uploaded
    label = labels["head_only"]
    at = open_page("behavior", base=str(base), ft=[str(ft)], masks=[label], bh_masks=[label], bh_limit="16")
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    offered = at.multiselect(key="bh_masks")
    assert label in offered.options and offered.value == [label]
    assert not any(label in c.value for c in at.caption if "Not offered" in c.value)
    # the page's summary table: the mask is the finetune's whole update (the head's entries are the embedding's), so
    # reverting inside it gives the base itself
    frames = [d.value for d in at.dataframe if {"experiment", "kl_forward"} <= set(d.value.columns)]
    assert len(frames) == 1
    s = frames[0].set_index("experiment")
    assert s.loc[f"{label}/inside", "kl_forward"] == 0.0 and s.loc[f"{label}/inside", "fraction_reverted"] == 100.0
    assert s.loc["finetuned", "kl_forward"] > 0


def test_overlap_compares_a_peft_keyed_mask_with_the_stored_one(uploaded):
    _, _, labels = uploaded
    chosen = [labels["stored"], labels["peft"]]
    at = open_page("overlap", masks=chosen, ov_masks=chosen)
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    texts = [re.sub(r"\\(.)", r"\1", e.value) for e in [*at.caption, *at.info]]  # (punctuation shown escaped)
    assert not any("share no tensor names" in t for t in texts), texts
    assert any("names matched across prefixes" in t and "PEFT's base_model.model." in t for t in texts), texts
    # the same entries in both: one intersection, all of the union (it drew nothing: no tensor in common)
    titles = {str(sp["layout"]["title"]["text"]): sp for sp in plotly_specs(at)}
    upset = next(t for t in titles if t.startswith("Intersections of masks (UpSet)"))
    assert "1 non-empty intersections" in upset
    venn = titles["Overlap (area-proportional)"]
    texts = [x for t in venn["data"] for x in t.get("text") or []]
    assert len(texts) == 1 and texts[0].endswith("<br>100.0%"), texts
