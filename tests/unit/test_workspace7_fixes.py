"""workspace7's findings 2 and 3, and the URL reading of finding 1 (tests/app/test_workspace7_fixes_app.py has the
Sparsity page's links and the chips in the app).

1. A multiple choice read from a URL: the options it names, stale entries dropped, ``?k=`` as none.
2. A ``pytorch_model.bin`` (or its shards and index) beside ``model.safetensors`` was left aside unsaid: a folder
   copied from the base and trained into with ``torch.save`` read as 100 % sparse, nothing changed, while a stray
   ``.safetensors`` in its place was named in a note.
3. The finetuned chips of folders named in Hebrew or Arabic all read "…/ckpts/names": in the chip's right-to-left
   paragraph (which cuts a long path's start), a right-to-left last folder was laid out left of the path before it,
   where it was cut. The path is now one left-to-right isolate, its end at the chip's right edge whatever its script.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import torch

from subnetviz import uilogic
from tests.browser import CHROMIUM, FLAGS, NEEDS_CHROMIUM
from tests.ckpt_fixtures import one_layer_llama_config, write_config_folder


# --- 1. a multiple choice from a URL ------------------------------------------------------------------------------
def test_url_choices_keep_the_links_offered_options_in_its_order():
    options = ["a", "b", "c", "d"]
    assert uilogic.url_choices(["c", "gone", "a", "c"], options, ["a"]) == ["c", "a"]
    assert uilogic.url_choices([], options, ["a", "b"]) == ["a", "b"]  # no entry: the default
    assert uilogic.url_choices(["gone"], options, ["a", "b"]) == ["a", "b"]  # none offered here: the default
    assert uilogic.url_choices([""], options, ["a", "b"]) == []  # ?k= : nothing chosen
    assert uilogic.url_choices(["16"], [4, 16], [4]) == [16]  # compared as text, given back as the option


# --- 2. torch.save weights beside model.safetensors ---------------------------------------------------------------
def _folder(root: Path, *extra: str) -> Path:
    """A one-layer Llama's model.safetensors and config, and ``extra`` files (their contents do not matter: they are
    not read) beside it."""
    sd = {"model.layers.0.self_attn.q_proj.weight": torch.ones(64, 64, dtype=torch.bfloat16)}
    folder = write_config_folder(root, sd, one_layer_llama_config())
    for name in extra:
        (folder / name).write_bytes(b"not read")
    return folder


def _notes(folder: Path) -> list[str]:
    from subnetviz.checkpoints import open_checkpoint

    ck = open_checkpoint(folder)
    assert [f.name for f in ck.files] == ["model.safetensors"]  # read as transformers reads the folder
    return [n for n in ck.notes if "not read" in n or "ignored" in n]


def test_a_pytorch_model_bin_beside_model_safetensors_is_named_as_a_stray_safetensors_is(tmp_path):
    said = "model.safetensors was read, as transformers loads the folder; {} beside it {} not read (not compared)."
    assert _notes(_folder(tmp_path / "stray", "finetuned.safetensors")) == [said.format("finetuned.safetensors", "was")]
    assert _notes(_folder(tmp_path / "bin", "pytorch_model.bin")) == [said.format("pytorch_model.bin", "was")]
    sharded = ("pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json")
    assert _notes(_folder(tmp_path / "shards", *sharded)) == [said.format(", ".join(sharded), "were")]
    # a .pt of weights is named; a trainer's own state (optimizer, scheduler, its arguments) is not a model's
    # (scaler.pt: the HF Trainer's fp16 grad scaler, in every mixed-precision checkpoint; regressions14)
    trainer = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt", "user_content.pt", "training_args.bin")
    assert _notes(_folder(tmp_path / "pt", "weights.pt", *trainer)) == [said.format("weights.pt", "was")]
    assert _notes(_folder(tmp_path / "trainer", *trainer)) == []
    assert _notes(_folder(tmp_path / "alone")) == []


def test_a_bin_beside_model_safetensors_and_a_stale_index_is_named_too(tmp_path):
    """The folder's other note (an index left beside model.safetensors) no longer hides the .bin's."""
    folder = _folder(tmp_path / "both", "model.safetensors.index.json", "pytorch_model.bin")
    first, second = _notes(folder)
    assert first.startswith("the folder holds both model.safetensors and model.safetensors.index.json")
    assert second == (
        "model.safetensors was read, as transformers loads the folder; pytorch_model.bin beside it was not read (not "
        "compared)."
    )


# --- 3. the chips of right-to-left folder names -------------------------------------------------------------------
# A finetuned chip as Streamlit 1.67 draws it in the sidebar at 1024 px (its text span 130 px wide, one line, cut
# with an ellipsis), with the app's CHIP_TAILS style
CHIP = """<div class="st-key-ft"><span data-tag="" style="display:flex; width:161px; padding:0 8px; overflow:hidden">
<span title="{path}" style="display:block; overflow:hidden; text-overflow:ellipsis; white-space:nowrap;
font: 14px sans-serif; width:130px">{path}</span><button style="width:23px">×</button></span></div>"""
# the characters of a chip's text drawn whole inside its box, in their order in the text (test_workspace3_fixes_app)
CHIP_VISIBLE = """(e) => {
    const text = e.firstChild, range = document.createRange(), box = e.getBoundingClientRect();
    let shown = "";
    for (let i = 0; i < text.length; i++) {
        range.setStart(text, i); range.setEnd(text, i + 1);
        const r = range.getBoundingClientRect();
        if (r.width > 0 && r.left >= box.left - 0.5 && r.right <= box.right + 0.5) shown += text.data[i];
    }
    return shown;
}"""  # (one chip's; the app test runs it on the live page's chips)
VISIBLE = f"""() => Array.from(document.querySelectorAll("[data-tag] > span[title]")).map({CHIP_VISIBLE})"""
NAMES = ["מודל \u200fעברית", "نموذج", "my model v2", "emoji 🤖 model", "ckpt_٣"]


@NEEDS_CHROMIUM
def test_a_chip_shows_its_folders_name_whatever_its_script(tmp_path):
    """Each chip of ckpts/names/<name>, under a long parent, shows <name> whole at its right end: the Hebrew and
    Arabic ones showed "…kspace7/ckpts/names", the same for both. A short path is shown whole."""
    import html

    from playwright.sync_api import sync_playwright

    parent = "/tmp/review/workspace7/ckpts/names/"
    paths = [parent + name for name in NAMES] + ["ckpts/נתון", "/m/x"]
    chips = "".join(CHIP.format(path=html.escape(p, quote=True)) for p in paths)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1024, "height": 900})
            page.set_content(f"<html><body>{uilogic.CHIP_TAILS}{chips}</body></html>")
            shown = page.evaluate(VISIBLE)
        finally:
            browser.close()
    for path, seen in zip(paths[: len(NAMES)], shown, strict=False):
        name = "".join(c for c in path.rsplit("/", 1)[1] if unicodedata.category(c) != "Cf")  # (U+200F: no width)
        assert seen.endswith("/" + name) and len(seen) < len(path), (path, seen)  # the end shown, the start cut
    assert shown[len(NAMES) :] == paths[len(NAMES) :]
