"""The fourth browser review's findings: the Continual page's accuracy matrices (the italic "just before it was
trained" cells drawn at 2 px beside 7 px ones, a subtitle cut at the chart's edge) and its Seed picker (it changed
nothing on the Summary tab); the Training page's status metric ("succee…") and its run colours (a run's colour
followed its place in the overlay, not its model's colour on every other page); the Overlap page's "× per-tensor
chance" title (cut); the HTML export's percent cells ("100.00" and "%" on two lines)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from tests.app_fixtures import open_page, plotly_specs

SEEDS = (0, 1)


def _acc(seed: int, tasks: int = 4) -> np.ndarray:
    """Seed 0 and seed 1 read differently everywhere (a seed picker that changes nothing cannot hide)."""
    low, high = (0.1, 0.8) if seed == 0 else (0.2, 0.6)
    return np.tril(np.full((tasks, tasks), high)) + np.triu(np.full((tasks, tasks), low), 1)


def _result():
    from subnetviz.supermask.metrics import ContinualResult, RunResult

    runs = []
    for seed in SEEDS:
        for method, label in (("supsup", "SupSup"), ("finetune", "finetune")):
            gen = torch.Generator().manual_seed(seed)
            masks = (
                ()
                if label == "finetune"
                else tuple({"l.weight": torch.rand(4, 4, generator=gen) < 0.3} for _ in range(4))
            )
            density = 1.0 if label == "finetune" else 0.05
            runs.append(
                RunResult("permuted-digits", method, label, False, density, seed, _acc(seed), np.full(4, 0.1), masks)
            )
    return ContinualResult("permuted-digits", tuple(runs))


@pytest.fixture
def planted_cl(app_env):
    """A finished continual run of two methods at two seeds (saved as the job saves it)."""
    from tests.app_fixtures import finished_continual_run

    with finished_continual_run("continual-browser4", "browser4 seeds", _result()):
        yield "continual-browser4"


def _title_lines(title: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", line) for line in title.split("<br>")]


def _matrices(at) -> list[dict]:
    return [s for s in plotly_specs(at) if s["layout"]["title"]["text"].startswith(("SupSup", "finetune"))]


@pytest.mark.slow
def test_every_cell_of_the_accuracy_matrix_has_one_size_and_the_subtitle_wraps(planted_cl):
    at = open_page("continual", cl_run=planted_cl, cl_tab="After each task")
    assert not at.exception, [e.value for e in at.exception]
    specs = _matrices(at)
    assert len(specs) == 2
    for spec in specs:
        heatmaps = [t for t in spec["data"] if t["type"] == "heatmap"]
        assert len(heatmaps) == 2  # the matrix and its "just before it was trained" cells
        sizes = {t.get("textfont", {}).get("size") for t in heatmaps}
        assert sizes == {11}, sizes  # the same set size: left to Plotly, the italic ones were 2 px beside 7 px
        lines = _title_lines(spec["layout"]["title"]["text"])
        # each line fits a chart half the page wide (the one-line subtitle was 72 characters, cut at ~60)
        assert max(map(len, lines)) <= 50, lines
        assert any("just before it was trained" in line for line in lines)


@pytest.mark.slow
def test_the_seed_picker_is_disabled_on_summary_and_changes_the_other_tabs(planted_cl):
    at = open_page("continual", cl_run=planted_cl)
    assert not at.exception, [e.value for e in at.exception]
    picker = at.selectbox(key="cl_seed")
    assert picker.disabled and "not used on Summary" in picker.label  # Summary: means over the seeds
    at = open_page("continual", cl_run=planted_cl, cl_tab="After each task", cl_seed="0")
    assert not at.selectbox(key="cl_seed").disabled
    before = [json.dumps(s["data"][0]["text"]) for s in _matrices(at)]
    at.selectbox(key="cl_seed").select(1).run()
    after = [json.dumps(s["data"][0]["text"]) for s in _matrices(at)]
    assert before != after  # the picked seed is what is drawn


@pytest.mark.slow
def test_the_status_metric_has_room_for_succeeded(planted_cl):
    at = open_page("training", tr_view="Runs", tr_run=planted_cl)
    assert not at.exception, [e.value for e in at.exception]
    cols = list(at.main.columns)
    i = next(i for i, c in enumerate(cols) if any(m.label == "status" for m in c.metric))
    share = cols[i].weight / sum(c.weight for c in cols[i : i + 3])  # the row of status, Cancel and the rest
    assert share >= 1 / 3, share  # a sixth of the column (146 px at 1400) cut "succeeded" to "succee…"


def test_a_run_takes_its_models_colour_whatever_its_place_in_the_overlay(tmp_path):
    """grpo-s1 was green on the Training curves (third in [s0, sub, s1]) and orange on every other page."""
    from subnetviz import figures
    from subnetviz.jobs.runner import JobRunner
    from subnetviz.report.training import curves_figure
    from tests.app_fixtures import add_finished_run

    runner = JobRunner(tmp_path / "runs", max_concurrent=1)
    models = []
    for name in ("s0", "s1", "s2"):
        folder = tmp_path / "zoo" / name
        folder.mkdir(parents=True)
        models.append((f"grpo-{name}", str(folder)))
    for run, model in (("r-s0", "s0"), ("r-sub", None), ("r-s1", "s1")):
        run_dir = add_finished_run(runner, run, "train", run, {"kind": "train"})
        (run_dir / "outputs").mkdir(parents=True)
        if model:
            (run_dir / "outputs" / "model").symlink_to(tmp_path / "zoo" / model)
        rows = [json.dumps({"time": 1.0, "step": s, "total": 3, "loss": 1.0 / s}) for s in (1, 2, 3)]
        (run_dir / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    ids = ["r-s0", "r-sub", "r-s1"]
    fig = curves_figure(runner, ids, {i: i for i in ids}, models=models)
    colors = {t.name: t.line.color for t in fig.data if t.mode == "lines+markers"}
    page = figures.color_map([lab for lab, _ in models])  # as Update sparsity, Overlap, Behaviour colour them
    assert colors["r-s0"] == page["grpo-s0"] and colors["r-s1"] == page["grpo-s1"]
    assert colors["r-sub"] not in page.values()  # no model's run: a colour after the models'


@pytest.mark.slow
def test_the_per_tensor_chance_titles_put_the_suffix_under_the_title():
    at = open_page("overlap", ov_tab="Pairwise", ov_view="× per-tensor chance")
    assert not at.exception, [e.value for e in at.exception]
    titles = [s["layout"]["title"]["text"] for s in plotly_specs(at)]
    o1 = next(t for t in titles if t.startswith("o1"))
    lines = _title_lines(o1)
    assert lines[0] == "o1: share of the row mask" and lines[1].startswith("in the column mask"), lines
    assert "× per-tensor chance" in lines[1]


def test_export_percent_cells_do_not_wrap():
    import pandas as pd

    from subnetviz.report.html import _CSS, _table_html

    assert re.search(r"td\.num\{[^}]*white-space:nowrap", _CSS), _CSS
    html = _table_html("t", pd.DataFrame({"label": ["finetune"], "density": [1.0]}), 10)
    assert '<td class="num">' in html  # the cells the rule applies to
