"""Fixes from a real-browser walk of every page (review).

- Update sparsity and Spectra show the update analysis' notes (only Workspace did) and put them in their exports: a
  bf16 model against its 3-bit compressed-tensors copy read "100.0 %" sparse with no word that its linear layers
  were never compared, against a 4-bit copy 12.1 % with no word that every change is rounding.
- Overlap says a mask holds no entry *in the tensors compared here* when the masks share only some tensors; it said
  "nothing changed" and "every chosen mask is empty" of a finetune that changed 72,248 entries.
- A shared Continual / Drivers / Bigram link names its run or masks, the newest too (it drifted to a newer run).
- The UpSet chart cuts a long mask name in the middle (one upload's name squeezed the bars to a few pixels).
- Continual's Capacity charts tick whole task numbers; the Summary title says "(finetune: dense)" only for a run
  with finetuning; the task-inference checkbox has a short label and its long text as help.
- Overlap's figures name a tolerance criterion in their titles (a figure at 1e-05 read as the exact one).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from subnetviz.figures import continual as cf
from subnetviz.figures import upset
from tests.app_fixtures import add_finished_run, open_page, plotly_specs

pytestmark = pytest.mark.slow


def _notes(page: str) -> str:
    return html.unescape(re.search(r'<p class="notes">(.*?)</p>', page, re.S).group(1))


def _figure_titles(page: str) -> list[str]:
    """The title of every figure of the export, read from its Plotly calls."""
    dec, out = json.JSONDecoder(), []
    for m in re.finditer(r'Plotly\.newPlot\(\s*"sv-figure-\d+",\s*', page):
        _, end = dec.raw_decode(page, m.end())
        layout, _ = dec.raw_decode(page, re.compile(r"\s*,\s*").match(page, end).end())
        out.append((layout.get("title") or {}).get("text") or "")
    return out


def _text(at) -> str:
    """Every caption of the page as read (the page escapes Markdown: the backslashes dropped)."""
    return " ".join(c.value.replace("\\", "").replace("\u200b", "") for c in at.caption)


# ---------------------------------------------------------------- quantized copies of a bf16 model


@pytest.fixture(scope="module")
def quant(app_env):
    """Under the app's home: a bf16 tiny Llama (``bf16``), its compressed-tensors W4A16-asym copy (``w4asym``: every
    linear layer dequantised and compared, each change rounding) and its W3 copy (``w3``: 3-bit words are not
    unpacked, so its 14 linear layers are not compared), written by compressed-tensors itself."""
    pytest.importorskip("compressed_tensors")
    from tests.integration.test_compressed_tensors_packed import _quantize

    root = app_env / "walk-quant"
    root.mkdir()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _quantize(root, "w4asym", 4, False)
        _quantize(root, "w3", 3, True)
    yield root
    shutil.rmtree(root)


def _quant_query(quant, *models: str) -> dict:
    return {"base": str(quant / "bf16"), "ft": [str(quant / m) for m in models]}


def test_update_sparsity_shows_what_was_not_compared_and_rounding(quant, exports, typed_options):
    at = open_page("sparsity", **_quant_query(quant, "w4asym", "w3"))
    assert not at.exception and not at.error, [e.value for e in at.error]
    bars = next(s for s in plotly_specs(at) if s["data"][0]["type"] == "bar")["data"][0]
    assert [str(x) for x in bars["x"]] == ["w4asym", "w3"]  # the bars the notes qualify
    shown = _text(at)
    # w3: the base's 14 linear layers (73,728 of its 82,240 entries) were not compared: "100 %" is over the rest
    assert "w3: Not compared (in only one of the pair): 14 tensor(s)" in shown and "73,728 of its 82,240" in shown
    assert "rounding, not training" in shown  # w4asym: every changed entry is the quantisation's rounding
    # the key notes stand above the page's sections; the others (tensor lists) wait under a closed expander
    (more,) = [e for e in at.expander if "notes" in e.label.lower()]
    assert re.fullmatch(r"More notes \(\d+\)", more.label) and "only in" in " ".join(c.value for c in more.caption)
    notes = _notes(exports["Update sparsity"]())
    assert "w3: Not compared (in only one of the pair)" in notes and "rounding, not training" in notes


def test_spectra_shows_the_analysis_notes_and_exports_them(quant, exports, typed_options):
    at = open_page("spectra", **_quant_query(quant, "w4asym"), spec_models=["w4asym"])
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "rounding, not training" in _text(at)  # the Δ it decomposes is the quantisation's rounding
    notes = _notes(exports["Spectra"]())
    assert "rounding, not training" in notes and "w4asym: Not compared" not in notes  # (its scales were applied)


def test_overlap_says_empty_in_the_tensors_compared_not_nothing_changed(quant, typed_options):
    """The W3 copy's mask (its linear layers not compared: it covers the norms, embedding and head alone, all
    unchanged) shares 7 tensors with the W4 copy's: both are empty there, while the W4 copy changed 72,248 entries
    in its linear layers. Only the W3 mask is empty in its file."""
    at = open_page("overlap", **_quant_query(quant, "w4asym", "w3"), ov_tab="Sets")
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = _text(at)
    common = int(re.search(r"Compared over the (\d+) tensors", shown).group(1))
    assert common == 7
    assert f"Δ w4asym: no entry in the {common} tensors compared here (its entries lie in tensors not" in shown
    assert "Δ w3: no entry in the mask (nothing changed in the tensors it covers)" in shown
    assert "Δ w4asym, Δ w3" not in shown and "every chosen mask is empty" not in shown
    assert f"No chosen mask has any entry in the {common} tensors compared here" in shown


def test_overlap_keeps_nothing_changed_for_a_mask_empty_in_its_file(quant, typed_options):
    """A copy of the base beside the W4 copy: every tensor is shared, and the copy's mask is truly empty."""
    same = quant / "same"
    if not same.exists():
        shutil.copytree(quant / "bf16", same)
    at = open_page("overlap", **_quant_query(quant, "same", "w4asym"))
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = _text(at)
    assert "Δ same: no entry in the mask (nothing changed" in shown and "tensors compared here" not in shown


# ---------------------------------------------------------------- Overlap: the criterion in the figures


def test_overlap_figure_titles_name_a_tolerance_criterion(app_env, exports):
    query = {"ft": ["grpo-s0", "grpo-s1", "dpo"]}
    exact = open_page("overlap", **query, ov_tab="Pairwise")
    tol = open_page("overlap", **query, ov_tab="Pairwise", ov_crit="1e-05")
    for at in (exact, tol):
        assert not at.exception and not at.error, [e.value for e in at.error]
    titles = [s["layout"]["title"]["text"] for s in plotly_specs(tol)]
    assert len(titles) == 2 and all("update masks at tolerance 1e-05" in t for t in titles), titles
    assert not any("tolerance" in s["layout"]["title"]["text"] for s in plotly_specs(exact))
    # the closed tabs' figures in the export (Sets, Per layer, Consensus) name it too
    exported = _figure_titles(exports["Overlap"]())
    assert len(exported) >= 5 and all("update masks at tolerance 1e-05" in t for t in exported), exported


# ---------------------------------------------------------------- UpSet: long mask names


def test_upset_cuts_a_long_mask_name_in_the_middle_and_keeps_it_in_the_hover():
    long = "uploads/my-very-long-mask-file-name-from-a-colleague-" + "0123456789abcdef" * 2
    labels = ["Δ grpo-s0", "Δ grpo-s1", long]
    regions = pd.DataFrame({"members": [1, 2, 4, 3, 7], "count": [50, 40, 30, 20, 10]})
    fig = upset(regions, labels)
    (sizes,) = [t for t in fig.data if t.type == "bar" and t.orientation == "h"]
    ticks = list(fig.layout.yaxis2.ticktext)
    assert ticks[:2] == labels[:2]  # short names stay whole
    cut = ticks[2]
    assert len(cut) <= 24 and "…" in cut and cut.startswith(long[:11]) and cut.endswith(long[-12:])
    assert list(sizes.hovertext) == labels  # the whole name where the pointer reads it
    assert np.allclose(sizes.x, [50 + 20 + 10, 40 + 20 + 10, 30 + 10])  # each set's size: its regions summed


# ---------------------------------------------------------------- Continual figures and texts


def _capacity(tasks: int) -> pd.DataFrame:
    rows = [
        {"label": "SupSup", "layer": "all", "density": 0.05, "task": t, "used": 0.05 * (t + 1), "exclusive": 1.0}
        for t in range(tasks)
    ]
    return pd.DataFrame(rows).assign(reference=lambda d: 1 - 0.95 ** (d["task"] + 1))


@pytest.mark.parametrize("tasks", [2, 3])
def test_capacity_charts_tick_whole_task_numbers(tasks):
    for fig in (cf.capacity_curves(_capacity(tasks), 0.05), cf.exclusive_fraction(_capacity(tasks), 0.05)):
        x = fig.layout.xaxis
        assert x.tick0 == 1 and x.dtick == 1, (x.tick0, x.dtick)
        assert list(fig.data[0].x) == list(range(1, tasks + 1))
    many = cf.capacity_curves(_capacity(30), 0.05).layout.xaxis  # 30 tasks: every third, still whole numbers
    assert many.tick0 == 1 and many.dtick == 3


def test_summary_title_says_finetune_only_for_a_run_with_finetuning():
    one = pd.DataFrame(
        {
            "label": ["finetune", "SupSup"],
            "density": [1.0, 0.05],
            "final_acc_mean": [0.9, 0.8],
            "final_acc_sd": [0.0, 0.0],
        }
    )
    with_ft = cf.accuracy_vs_density(one).layout.title.text
    without = cf.accuracy_vs_density(one[one["label"] != "finetune"]).layout.title.text
    assert with_ft.startswith("Final average accuracy<br><sup>at density 5 % (finetune: dense)")
    assert without.startswith("Final average accuracy<br><sup>at density 5 %") and "finetune" not in without


def test_task_inference_checkbox_has_a_short_label_and_its_text_as_help(app_env):
    at = open_page("continual", cl_view="Launch")
    assert not at.exception, [e.message for e in at.exception]
    (box,) = [c for c in at.checkbox if "inference" in c.label]
    assert len(box.label) <= 30 and "one-shot" in box.help and "experimental" in box.help


# ---------------------------------------------------------------- shared links name their run


def _continual_result(inference: bool):
    from subnetviz.supermask.metrics import ContinualResult, RunResult

    tasks = 2
    masks = tuple(
        {"layer1.weight": torch.rand(4, 4, generator=torch.Generator().manual_seed(t)) < 0.3} for t in range(2)
    )
    rows = tuple(
        {"samples": 1, "task": t, "trials": 10, "correct": 9, "accuracy": 0.9, "min_entropy_accuracy": 0.9}
        for t in range(tasks)
    )
    acc = np.array([[0.8, 0.1], [0.8, 0.8]])
    run = RunResult(
        "permuted-digits", "supsup", "SupSup", False, 0.05, 0, acc, np.full(2, 0.1), masks, (), rows * inference
    )
    return ContinualResult("permuted-digits", (run,))


@pytest.fixture
def runs_cleanup(app_env):
    """Run ids a test adds to the app home's registry, removed afterwards (the home is shared by the session)."""
    from subnetviz.jobs.runner import JobRunner

    runner, ids = JobRunner(), []
    yield runner, ids
    with runner.registry.transaction() as con:
        con.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in ids])
    for i in ids:
        shutil.rmtree(Path(runner.root) / i, ignore_errors=True)


def test_a_shared_continual_link_keeps_its_run_after_a_newer_one(runs_cleanup):
    from subnetviz.supermask.job import save_result

    runner, ids = runs_cleanup
    now = time.time() + 3600  # newer than any run of the session's other tests
    first = add_finished_run(runner, "walk-cl-first", "continual", "with inference", {"kind": "continual"}, now)
    ids.append("walk-cl-first")
    save_result(_continual_result(True), first / "outputs")
    at = open_page("continual", cl_tab="Task inference")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.query_params["cl_run"] in ("with inference · walk-cl-first", ["with inference · walk-cl-first"])
    shared = {k: at.query_params[k] for k in ("cl_run", "cl_tab")}
    later = add_finished_run(runner, "walk-cl-later", "continual", "without inference", {"kind": "continual"}, now + 1)
    ids.append("walk-cl-later")
    save_result(_continual_result(False), later / "outputs")
    again = open_page("continual", **shared)
    assert not again.exception and not again.error, [e.value for e in again.error]
    assert again.selectbox(key="cl_run").value == "walk-cl-first"
    assert "Task inference" in [t.label for t in again.tabs]
    assert open_page("continual").selectbox(key="cl_run").value == "walk-cl-later"  # no run named: the newest


def test_a_shared_drivers_link_names_its_run(runs_cleanup):
    from subnetviz.experiments.drivers import COLUMNS

    runner, ids = runs_cleanup
    now = time.time() + 7200
    base = {"seed": 0, "algorithm": "grpo", "accuracy": 0.5, "kl_forward": 0.0, "learning_rate": 1e-5, "steps": 8}
    base |= {"beta": 0.0, "max_grad_norm": 1.0, "optimizer": "adamw_torch", "data": "task", "train_seconds": 1.0}
    for i, (run_id, sparsity) in enumerate({"walk-dr-old": 0.9, "walk-dr-new": 0.6}.items()):
        rows = [
            {**base, "factor": "steps", "value": v, "precision": p, "sparsity": sparsity}
            for v in "48"
            for p in ("bf16", "fp32")
        ]
        run_dir = add_finished_run(runner, run_id, "drivers", f"grid {i}", created=now + i)
        ids.append(run_id)
        (run_dir / "outputs").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows, columns=COLUMNS).to_csv(run_dir / "outputs" / "results.csv", index=False)
    at = open_page("drivers")
    assert not at.exception and not at.error, [e.value for e in at.error]
    url = at.query_params["dr_run"]
    assert url in ("grid 1 · walk-dr-new", ["grid 1 · walk-dr-new"])  # the newest, named in the URL
    shared = open_page("drivers", dr_run="grid 0 · walk-dr-old")
    assert shared.selectbox(key="dr_run").value == "walk-dr-old"


def test_a_shared_bigram_link_names_its_masks(app_env, monkeypatch):
    import streamlit as st

    from subnetviz import config, ui
    from subnetviz.bigram.maskable import maskable_shapes, model_skeleton
    from subnetviz.masks import MaskSet, save_mask_set

    path = config.home() / "uploads" / "walk-url.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    # a bigram mask that fits the zoo's base (one that did not was offered only where another test had trained one)
    shapes = maskable_shapes(model_skeleton(str(config.zoo_dir() / "base")))
    save_mask_set(path, MaskSet({n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}, {"target": "bigram"}))
    monkeypatch.setattr(ui, "heavy", lambda *a, **k: st.stop())  # the pickers only: no forward passes
    try:
        at = open_page("bigram")
        assert not at.exception, [e.message for e in at.exception]
        mask, opt = at.selectbox(key="bg_mask").value, at.selectbox(key="bg_opt").value
        assert at.query_params["bg_mask"] in (mask, [mask]) and at.query_params["bg_opt"] in (opt, [opt])
    finally:
        path.unlink()
