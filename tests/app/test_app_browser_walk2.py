"""Fixes from the second browser walk (review), on the pages (AppTest).

Behaviour offers only the masks that fit the chosen base. With a GPT-2 base it pre-selected the zoo's Llama mask,
and the page stopped in one red box ("mask 'zoo grpo-s0': 30 tensor name(s) not in the base checkpoint") before any
KL was computed. Now no mask is offered, with one line saying why, and the finetune's KL is drawn; a shared link that
names the zoo's mask gets it left out with one line, and the page still computes. The zoo's own base still has its
mask pre-selected.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.app_fixtures import open_page, plotly_specs
from tests.models import save_model, tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("typed_options")]


@pytest.fixture(scope="module")
def gpt2_pair(app_env):
    """Under the app's home: a GPT-2 base with the zoo's tokenizer (its vocabulary and context, so the zoo's prompt
    sets run on it) and a finetune of it with one MLP row moved; (base, finetune)."""
    zoo_base = app_env / "zoo" / "base"
    cfg = json.loads((zoo_base / "config.json").read_text())
    root = app_env / "walk2-gpt2"
    ids = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg.get(k) is not None}
    model = tiny_model("gpt2", vocab=cfg["vocab_size"], positions=cfg["max_position_embeddings"], **ids)
    base = save_model(model, root / "base", dtype=torch.float32)
    for f in zoo_base.glob("tokenizer*"):
        shutil.copy(f, base / f.name)
    ft = root / "ft"
    shutil.copytree(base, ft)
    sd = load_file(str(ft / "model.safetensors"))
    sd["transformer.h.0.mlp.c_fc.weight"][0] += 0.5
    save_file(sd, str(ft / "model.safetensors"), metadata={"format": "pt"})
    yield base, ft
    shutil.rmtree(root)


def _zoo_masks(app_env) -> list[str]:
    manifest = json.loads((app_env / "zoo" / "manifest.json").read_text())
    return [f"masks/{Path(e['path']).stem}" for e in manifest["masks"].values()]  # (as the sidebar names them)


def _read(text: str) -> str:
    """An element's text as read (the page escapes Markdown and breaks would-be links with zero-width spaces)."""
    return text.replace("\\", "").replace("\u200b", "")


def _texts(at) -> str:
    return " ".join(_read(c.value) for c in [*at.caption, *at.warning])


def _drawn(at) -> list[str]:
    """The titles of the page's charts."""
    return [(s["layout"].get("title") or {}).get("text") or "" for s in plotly_specs(at)]


def test_a_base_no_mask_fits_gets_no_mask_and_its_finetunes_kl(app_env, gpt2_pair):
    base, ft = gpt2_pair
    zoo = _zoo_masks(app_env)
    assert zoo  # the micro zoo has its mask: the one that was pre-selected
    at = open_page("behavior", base=str(base), ft=[str(ft)])
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    masks = at.multiselect(key="bh_masks")
    assert masks.value == [] and not set(zoo) & set(masks.options)
    text = _texts(at)
    assert "No mask to revert: none fits this base" in text, text
    assert f"{zoo[0]} (made for another model: none of its" in text
    summary = next(df.value for df in at.dataframe if {"model", "experiment", "kl_forward"} <= set(df.value.columns))
    assert list(summary["experiment"]) == ["finetuned"]  # the finetune's own row, no revert experiment
    assert summary["kl_forward"].iloc[0] > 0  # its moved row changes the next-token distribution
    assert _drawn(at)


def test_a_link_naming_a_mask_that_does_not_fit_leaves_it_out_and_computes(app_env, gpt2_pair):
    base, ft = gpt2_pair
    zoo = _zoo_masks(app_env)
    at = open_page("behavior", base=str(base), ft=[str(ft)], bh_masks=zoo[0])
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.multiselect(key="bh_masks").value == []
    warnings = [_read(w.value) for w in at.warning]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"Left out of the link's masks, as they do not fit this base: {zoo[0]} (made for another model"
    )
    assert _drawn(at)


def test_the_zoo_base_still_has_its_mask_pre_selected(app_env):
    zoo = _zoo_masks(app_env)
    at = open_page("behavior", base="base", ft=["sft"])
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.multiselect(key="bh_masks").value == [zoo[0]]
    assert "fit this base" not in _texts(at) and "none fits" not in _texts(at)
