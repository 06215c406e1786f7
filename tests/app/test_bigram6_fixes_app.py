"""Fixes from review bigram6, on the Bigram page (the backend's part: tests/integration/test_bigram6_fixes.py).

1. "No optimal-target mask yet: train one …" was said under the pickers while an uploaded optimal mask was chosen and
   its overlap drawn: only runs' labels were read for a mask's target. An upload's own ``target`` metadata is read
   too (its header only), for the caption and for the pickers' defaults.
3. An architecture without a bigram-mask table (OPT): every saved mask was listed with the same reason, then "Train
   one for it under *Train a mask*" (asterisks shown), which training refuses. Now one error line from config.json.
Cosmetic: the Corpus field's help names saved data-set folders and hf:NAME[:SPLIT].

Planted in the app's home (removed afterwards: the home is shared): a GPT-2 of the zoo's vocabulary saved with the
zoo's tokenizer and an upload of each target for it, a GPT-2 of another width (no mask fits it) and a tiny OPT."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.app_fixtures import open_page
from tests.models import save_model, tiny_model

pytestmark = pytest.mark.slow

BIGRAM, OPTIMAL = "uploads/bigram6-bigram", "uploads/bigram6-optimal"
NO_OPTIMAL = "No optimal-target mask yet"


@pytest.fixture(scope="module")
def planted(app_env):
    """name -> the saved model's folder: "gpt2" (with an upload of each target), "narrow" (a GPT-2 no saved mask
    fits), "opt" (an OPTForCausalLM)."""
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    from subnetviz.bigram.maskable import full_mask
    from subnetviz.masks import MaskSet, save_mask_set

    zoo = app_env / "zoo"
    cfg = json.loads((zoo / "base" / "config.json").read_text())
    size = {"vocab": cfg["vocab_size"], "positions": cfg["max_position_embeddings"]}
    tok = AutoTokenizer.from_pretrained(str(zoo / "base"), local_files_only=True)
    root = app_env / "bigram6"
    model = tiny_model("gpt2", seed=1, **size)
    folders = {
        "gpt2": save_model(model, root / "gpt2", dtype=torch.float32, tokenizer=tok),
        "narrow": save_model(
            tiny_model("gpt2", seed=1, hidden=8, **size), root / "narrow", dtype=torch.float32, tokenizer=tok
        ),
    }
    torch.manual_seed(0)
    opt = OPTForCausalLM(
        OPTConfig(
            vocab_size=cfg["vocab_size"],
            hidden_size=16,
            num_hidden_layers=2,
            ffn_dim=32,
            num_attention_heads=2,
            max_position_embeddings=cfg["max_position_embeddings"],
            word_embed_proj_dim=16,
        )
    )
    folders["opt"] = save_model(opt, root / "opt", dtype=torch.float32, tokenizer=tok)
    for label, target, share in ((BIGRAM, "bigram", 0.1), (OPTIMAL, "optimal", 0.2)):
        g = torch.Generator().manual_seed(2)
        masks = {n: torch.rand(m.shape, generator=g) < share for n, m in full_mask(model).masks.items()}
        save_mask_set(app_env / f"{label}.safetensors", MaskSet(masks, {"target": target, "lambda": 10.0}))
    yield folders
    shutil.rmtree(root)
    for label in (BIGRAM, OPTIMAL):
        (app_env / f"{label}.safetensors").unlink()


def _read(text: str) -> str:
    return text.replace("\\", "").replace("\u200b", "")


def _picker(at, label: str):
    return next(s for s in at.main.selectbox if s.label == label)


# --- 1. an uploaded optimal mask ---------------------------------------------------------------------------------
def test_an_uploaded_optimal_mask_chosen_by_the_link_is_not_said_to_be_missing(app_env, planted):
    at = open_page("bigram", bg_model=str(planted["gpt2"]), bg_mask=BIGRAM, bg_opt=OPTIMAL)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert _picker(at, "Optimal subnetwork mask (overlap)").value == OPTIMAL
    assert any(m.label.startswith("overlap × chance") for m in at.metric)  # (the premise: its overlap is drawn)
    assert not [c.value for c in at.caption if NO_OPTIMAL in _read(c.value)]


def test_an_uploaded_mask_of_each_target_is_its_pickers_default(app_env, planted):
    """The link names no mask: the bigram picker starts at the upload whose metadata says target bigram, the
    optimal picker at the one that says optimal (it started at "none", with the caption saying there was none)."""
    at = open_page("bigram", bg_model=str(planted["gpt2"]))
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert _picker(at, "Bigram subnetwork mask").value == BIGRAM
    assert _picker(at, "Optimal subnetwork mask (overlap)").value == OPTIMAL
    assert not [c.value for c in at.caption if NO_OPTIMAL in _read(c.value)]


def test_none_chosen_says_to_choose_one_not_that_there_is_none(app_env, planted):
    at = open_page("bigram", bg_model=str(planted["gpt2"]), bg_mask=BIGRAM, bg_opt="none")
    assert not at.exception and not at.error, [e.value for e in at.error]
    captions = [_read(c.value) for c in at.caption]
    assert "Choose an optimal mask above to see the overlap." in captions
    assert not [c for c in captions if NO_OPTIMAL in c]


# --- 3. an unsupported architecture ------------------------------------------------------------------------------
def test_an_unsupported_architecture_is_one_error_line_not_one_per_mask(app_env, planted):
    from subnetviz.config import display_path

    at = open_page("bigram", bg_model=str(planted["opt"]))
    assert not at.exception, [e.message for e in at.exception]
    errors = [_read(e.value) for e in at.main.error]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith(f"{display_path(planted['opt'])}: model_type 'opt' has no maskable-weight table")
    shown = [_read(e.value) for k in ("info", "warning", "caption") for e in getattr(at.main, k)]
    assert not [t for t in shown if "cannot be checked" in t or "Train one for it" in t], shown
    assert not at.metric


def test_the_advice_to_train_a_mask_is_markdown_not_asterisks(app_env, planted):
    """A supported model no saved mask fits: the advice's *Train a mask* was escaped with the masks' names."""
    at = open_page("bigram", bg_model=str(planted["narrow"]))
    assert not at.exception and not at.error, [e.value for e in at.error]
    (info,) = [i.value for i in at.main.info if "No saved mask fits this model" in _read(i.value)]
    assert info.endswith(" Train one for it under *Train a mask*."), info
    assert _read(BIGRAM) in _read(info)  # (the masks' names still as text)


# --- cosmetic: the Corpus field's help ---------------------------------------------------------------------------
def test_the_corpus_help_names_every_kind_of_corpus(app_env):
    at = open_page("bigram")
    (corpus,) = [t for t in at.main.text_input if t.label == "Corpus"]
    assert "save_to_disk" in corpus.help and "hf:NAME[:SPLIT]" in corpus.help and "text file" in corpus.help
