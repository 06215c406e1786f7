"""Exports, second review, in the pages (AppTest).

"Figure for a paper": where kaleido or a browser is missing the expander says so in one line (what to install);
a render that fails says why in one line on the page and one line in the server log (Streamlit's deferred download
showed only "Failed to generate file for download" and logged a traceback per click). The HTML exports of What
drives sparsity, Continual learning and Bigram subnetworks carry the notes and warnings the page shows about its
numbers (the drivers export read "beta 0" for DPO with no word that DPO trained at 0.1)."""

from __future__ import annotations

import html
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.app_fixtures import add_finished_run, open_page

pytestmark = pytest.mark.slow


def _read(text: str) -> str:
    return text.replace("\\", "").replace("\u200b", "")


def _notes(page: str) -> str:
    """The export's notes, as text."""
    m = re.search(r'<p class="notes">(.*?)</p>', page, re.S)
    return html.unescape(m.group(1)) if m else ""


# ---------------------------------------------------------------- Figure for a paper


@pytest.fixture
def figure_buttons(monkeypatch):
    """key -> data of each "Download figure" button drawn (the last run's): a column's button, so the
    DeltaGenerator's method is watched, not only ``st.download_button``."""
    from streamlit.delta_generator import DeltaGenerator

    seen: dict = {}
    original = DeltaGenerator.download_button

    def capture(self, label, data=None, *args, **kwargs):
        if str(kwargs.get("key", "")).startswith("pub-dl-"):
            seen[kwargs["key"]] = data
        return original(self, label, data, *args, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "download_button", capture)
    return seen


def _make_button(at):
    return [b for b in at.button if str(b.key).startswith("pub-make-Update sparsity")]


def test_without_kaleido_the_expander_says_what_to_install(app_env, monkeypatch, figure_buttons):
    monkeypatch.setitem(sys.modules, "kaleido", None)  # import kaleido raises ImportError
    at = open_page("sparsity")
    assert not at.exception and not at.error, [e.value for e in at.error]
    said = [_read(c.value) for c in at.caption if "Figure files need" in _read(c.value)]
    assert said == ["Figure files need kaleido, which is not installed: pip install -r requirements.txt."]
    assert not _make_button(at) and not figure_buttons  # no button that cannot work


def test_without_a_browser_the_expander_says_what_to_install(app_env, monkeypatch, figure_buttons):
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")
    at = open_page("sparsity")
    assert not at.exception and not at.error, [e.value for e in at.error]
    (said,) = [_read(c.value) for c in at.caption if "Figure files need" in _read(c.value)]
    assert said.startswith("Figure files need Chromium for kaleido: BROWSER_PATH=")  # (its path as visitors see it)
    assert "is not a browser that can run" in said and "apt-get install chromium" in said and "get_chrome" not in said
    assert not _make_button(at) and not figure_buttons


@pytest.mark.skipif(not os.access("/bin/false", os.X_OK), reason="needs /bin/false")
def test_a_render_that_fails_says_why_in_one_line_and_logs_one_line(app_env, monkeypatch, capfd, figure_buttons):
    """A browser that does not start (here a program that exits at once): one error line under the buttons,
    naming the browser and what to install; the server's log gets one line, no traceback."""
    monkeypatch.setenv("BROWSER_PATH", "/bin/false")
    at = open_page("sparsity")
    (button,) = _make_button(at)
    capfd.readouterr()
    button.click().run()
    assert not at.exception, [e.message for e in at.exception]
    (error,) = [_read(e.value) for e in at.error]
    assert error.startswith("Could not render the figure as svg: the browser ")
    assert "did not start for kaleido" in error and "apt-get install chromium" in error
    assert "\n" not in error and "get_chrome" not in error and "Failed to generate" not in error
    assert not figure_buttons  # nothing to download
    logged = [line for line in capfd.readouterr().out.splitlines() if "could not" in line or "Traceback" in line]
    assert len(logged) == 1 and "Traceback" not in logged[0], logged


@pytest.mark.skipif(not os.access("/usr/bin/chromium", os.X_OK), reason="needs Debian chromium for kaleido")
def test_a_click_makes_the_file_and_offers_it(app_env, figure_buttons):
    at = open_page("sparsity")
    (button,) = _make_button(at)
    assert not figure_buttons  # rendered on a click only, not on every run
    button.click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (data,) = figure_buttons.values()
    assert isinstance(data, bytes) and data.lstrip().startswith(b"<svg")


# ---------------------------------------------------------------- the pages' notes in their exports


def _drivers_grid() -> pd.DataFrame:
    """A grid of the older format (no grid_version): DPO's β recorded as 0, a PPO point; bf16 and fp32 rows."""
    base = {"seed": 0, "accuracy": 0.5, "kl_forward": 0.01, "learning_rate": 1e-5, "steps": 8, "beta": 0.0}
    base |= {"max_grad_norm": 1.0, "optimizer": "adamw_torch", "data": "task", "train_seconds": 1.0}
    rows = [
        {**base, "factor": "algorithm", "value": a, "algorithm": a, "precision": p, "sparsity": s}
        for a, s in (("sft", 0.6), ("dpo", 0.7), ("ppo", 0.8))
        for p in ("bf16", "fp32")
    ]
    return pd.DataFrame(rows)


def test_the_drivers_export_carries_the_page_s_warnings(app_env, exports):
    from subnetviz.jobs.runner import JobRunner

    runner, run_id = JobRunner(), f"exports2-drivers-{uuid.uuid4().hex[:8]}"
    run_dir = add_finished_run(runner, run_id, "drivers", run_id, created=time.time() + 9999)
    (run_dir / "outputs").mkdir(parents=True)
    _drivers_grid().to_csv(run_dir / "outputs" / "results.csv", index=False)
    try:
        at = open_page("drivers", dr_run=run_id)
    finally:
        with runner.registry.transaction() as con:
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
    try:
        assert not at.exception and not at.error, [e.value for e in at.error]
        notes = _notes(exports["What drives sparsity"]())
    finally:
        shutil.rmtree(run_dir)
    (warning,) = [_read(w.value) for w in at.warning]
    assert "its DPO row's β reads 0, but DPO trained with β 0.1" in warning  # the page's warning ...
    assert warning in notes  # ... and the export's
    assert "1 seed(s) per point on " in notes and "not evidence either way." in notes


def test_the_continual_export_carries_the_page_s_notes(app_env, exports):
    """An arithmetic-text run on the old data (test prompts partly training prompts) where SupSup ends below
    finetuning: the page's warning and its note are in the export."""
    from subnetviz.jobs.runner import JobRunner
    from subnetviz.supermask.job import save_result
    from subnetviz.supermask.metrics import ContinualResult, RunResult

    def run(label: str, method: str, density: float, a: float) -> RunResult:
        gen = torch.Generator().manual_seed(int(1e7 * density))
        masks = () if method == "finetune" else tuple({"l.weight": torch.rand(4, 4, generator=gen) < 0.3} for _ in "ab")
        acc = np.array([[a, 0.1], [a, a]])
        return RunResult("arithmetic-text", method, label, False, density, 0, acc, np.full(2, 0.1), masks)

    runner, run_id = JobRunner(), f"exports2-continual-{uuid.uuid4().hex[:8]}"
    folder = add_finished_run(runner, run_id, "continual", run_id, {"kind": "continual"}, created=time.time() + 9999)
    result = ContinualResult(
        "arithmetic-text",
        (run("finetune", "finetune", 1.0, 0.9), run("SupSup", "supsup", 0.05, 0.55)),
        {"benchmark": "arithmetic-text", "hash": "old"},
    )
    save_result(result, folder / "outputs")
    try:
        at = open_page("continual", cl_run=run_id)
        assert not at.exception and not at.error, [e.value for e in at.error]
        notes = _notes(exports["Continual learning"]())
    finally:
        with runner.registry.transaction() as con:
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        shutil.rmtree(folder)
    assert any("test prompts were also training prompts" in w.value for w in at.warning)  # on the page
    assert any("SupSup ends below finetuning" in _read(c.value) for c in at.caption)
    assert "4-9 % of each task's test prompts were also training prompts" in notes
    assert "SupSup ends below finetuning here (55.0 % vs 90.0 % final accuracy)" in notes


def test_the_bigram_export_carries_the_left_out_masks_and_how_the_mask_was_read(app_env, exports, typed_options):
    """A link naming a mask of another model (left out, with a warning) and a mask of two matrices (the analysis
    notes that the others are outside the subnetwork): both lines are in the export."""
    import json

    from subnetviz.bigram.maskable import full_mask, load_local_model
    from subnetviz.masks import MaskSet, save_mask_set
    from tests.models import tiny_model

    masks = full_mask(load_local_model(app_env / "zoo" / "base")).masks
    own = app_env / "runs" / "99991231-235958-exports2-bigram-base"  # (newer than any mask a job trained)
    save_mask_set(own / "outputs" / "mask.safetensors", MaskSet(dict(list(masks.items())[:2]), {"target": "bigram"}))
    cfg = json.loads((app_env / "zoo" / "base" / "config.json").read_text())
    gpt2 = tiny_model("gpt2", vocab=cfg["vocab_size"], positions=cfg["max_position_embeddings"])
    other = app_env / "runs" / "99991231-235959-exports2-bigram-gpt2"
    foreign = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in gpt2.named_parameters() if ".mlp." in n}
    save_mask_set(other / "outputs" / "mask.safetensors", MaskSet(foreign, {"target": "bigram", "lambda": 10}))
    try:
        from subnetviz.selection import saved_masks

        linked = next(k for k, v in saved_masks().items() if str(other) in str(Path(v).resolve()))
        at = open_page("bigram", bg_model="base", bg_mask=linked)
        assert not at.exception and not at.error, [e.value for e in at.error]
        notes = _notes(exports["Bigram subnetworks"]())
    finally:
        shutil.rmtree(own)
        shutil.rmtree(other)
    warnings = [_read(w.value) for w in at.warning]
    assert any(w.startswith("Left out of the link's masks, as they do not fit this model:") for w in warnings)
    assert f"Left out of the link's masks, as they do not fit this model: {linked} (" in notes
    assert f"the mask lists 2 of the model's {len(masks):,} maskable matrices" in notes
    assert "are outside the subnetwork" in notes
