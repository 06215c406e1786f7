"""The Behaviour page shows its report's notes (AppTest): how each mask was placed (names matched across prefixes,
a tied head merged into the embedding), once each, as text, and in the export. The page showed none of them: a
PEFT-named mask or a folded head gave numbers with no word of how the mask was read."""

import re
import shutil

import pytest
import torch

from subnetviz.masks import MaskSet, save_mask_set
from tests.app_fixtures import open_page
from tests.ckpt_fixtures import tied_llama_pair

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("typed_options")]

LORA = re.compile(r"\.(q_proj|v_proj)\.weight$")
MATCHED = "names matched across prefixes"
FOLDED = "is the output head the base ties to its input embedding"


@pytest.fixture(scope="module")
def pair(app_env, tmp_path_factory):
    """(tied base, tied finetune, {mask name: its label on the page}): a mask keyed as PEFT names the model and one
    naming the tied head ``lm_head.weight``, both the finetune's whole update; the uploads removed afterwards."""
    from subnetviz.selection import save_upload

    root = app_env / "followups-review"
    base, ft, sd, moved = tied_llama_pair(root, seed=5)
    update = {k: moved[k].view(torch.int16) != sd[k].view(torch.int16) for k in sd}
    emb = "model.embed_tokens.weight"
    masks = {
        "peft": {"base_model.model." + LORA.sub(r".\1.base_layer.weight", k): v for k, v in update.items()},
        "head": {**{k: v for k, v in update.items() if k != emb}, "lm_head.weight": update[emb]},
    }
    tmp = tmp_path_factory.mktemp("followups-upload")
    stored = {
        n: save_upload(f"{n}.safetensors", save_mask_set(tmp / f"{n}.safetensors", MaskSet(m, {})).read_bytes())
        for n, m in masks.items()
    }
    yield base, ft, {n: f"uploads/{p.stem}" for n, p in stored.items()}
    for p in stored.values():
        p.unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)


def _captions(at) -> list[str]:
    # (punctuation shown escaped, and a zero-width space where Markdown would see a link's scheme)
    return [re.sub(r"\\(.)", r"\1", c.value).replace("\u200b", "") for c in at.caption]


def test_behaviour_shows_how_each_mask_was_placed_once(pair, exports):
    base, ft, labels = pair
    chosen = [labels["peft"], labels["head"]]
    at = open_page("behavior", base=str(base), ft=[str(ft)], masks=chosen, bh_masks=chosen, bh_limit="16")
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.multiselect(key="bh_masks").value == chosen
    texts = _captions(at)
    matched = [t for t in texts if MATCHED in t]
    folded = [t for t in texts if FOLDED in t]
    assert len(matched) == 1 and labels["peft"] in matched[0] and "PEFT's base_model.model." in matched[0], texts
    assert len(folded) == 1 and labels["head"] in folded[0] and "'lm_head.weight'" in folded[0], texts
    # both masks are the finetune's whole update, placed right: reverting inside either gives the base
    frames = [d.value for d in at.dataframe if {"experiment", "kl_forward"} <= set(d.value.columns)]
    s = frames[0].set_index("experiment")
    assert all(s.loc[f"{label}/inside", "kl_forward"] == 0.0 for label in chosen)
    html = exports["Behaviour"]()
    assert MATCHED in html and "output head the base ties" in html


def test_a_finished_runs_notes_are_shown_once_as_text(pair, tmp_path):
    """A finished job's notes, read back from its files: a note given twice is shown once, and one holding
    Markdown (a mask named by a visitor's upload) is shown as text."""
    from subnetviz.analysis.behavior import Prompt, behavior, write_behavior
    from subnetviz.jobs.runner import JobRunner
    from tests.app_fixtures import add_finished_run

    base, ft, _ = pair
    rep = behavior(str(base), [str(ft)], [Prompt("12+30=", "42")], labels=["ft"], curve=None, device="cpu")
    marked = "ft: mask '**bold** [x](http://e.x)': names matched across prefixes: 1 of the mask's 1 tensors."
    rep.notes = [marked, "prompts cut to 32 positions.", marked]
    runner = JobRunner()
    run_id, name = "behaviour-notes-run", "behaviour notes"
    run_dir = add_finished_run(runner, run_id, "behavior", name, {"kind": "behavior"})
    (run_dir / "outputs").mkdir(parents=True, exist_ok=True)
    write_behavior(rep, run_dir / "outputs")
    try:
        at = open_page("behavior", bh_source=f"run {name} · {run_id}")
    finally:  # the app home is shared by the module's other tests
        with runner.registry.transaction() as con:
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        shutil.rmtree(run_dir, ignore_errors=True)
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    raw = [c.value for c in at.caption]
    assert sum(marked in t for t in _captions(at)) == 1
    assert sum("prompts cut to 32 positions" in t for t in _captions(at)) == 1
    shown = next(v for v in raw if "bold" in v)
    assert r"\*\*bold\*\*" in shown and r"\[x\]" in shown  # (escaped: no bold, no link)
