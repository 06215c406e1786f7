"""Fixes from the fifth exports review (and two layout and wording items found beside it).

1. Checkpoint names of 80 characters and more ran off the figure in the Venn (its set names) and in the Sparsity
   "Overall" bars (their ticks): in the file, two names that differ only at their end both read "…-steps100-". They
   are cut in the middle where they differ, whole in the hover and in a key under the chart.
2. A shared link naming a run this server lacks (Training's run and overlay runs, What drives sparsity's grid,
   Series' source) opened another with no word. The page now says which entry the link named and what is shown.
3. At 1024 px the Sparsity ULP chart's title ran past its half-width chart (274 px), and a run's curves title
   ("Run <name> · <id>", 100 characters) past its chart (564 px). Both fit.
4. The hyperparameter warning said "1 steps".

Text widths on a chart are upper bounds measured in Chromium (tests/app/test_walk5_fixes.py): a bold 14 px name
8 px a character, a title 7.5 px and a <sup> subtitle line 5 px, the title starting 4 px in.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from subnetviz import figures as F
from subnetviz import uilogic
from tests.app_fixtures import add_finished_run, open_page, plotly_specs

LONG = "finetune-with-a-really-long-descriptive-name-lr1e-5-beta0.04-steps100-seed0-Ωμέγα-ünïcødé-ablation-variant-"
MODELS = [f"{LONG}A", f"{LONG}B", "Модель-β"]  # the review's three finetunes: two of 110 characters, told apart last
ZOO3 = {"100": 3440, "010": 103000, "110": 18100, "001": 6030, "101": 6280, "011": 27900, "111": 108000}
NAME_PX, TITLE_PX, SUB_PX = 8.0, 7.5, 5.0


def _plain(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _unwrapped(lines: list[str]) -> str:
    """A key's lines as one text (its wrapped lines' indents taken out)."""
    return "".join(line.strip() for line in lines)


# --- 1. long names in the Venn and the Overall bars ---------------------------------------------------------------
def test_venn_names_over_80_characters_are_cut_told_apart_and_named_in_full():
    """Each circle's name is at most 24 characters, the ends that tell the two apart kept ("…variant-A"), the
    name in full in its hover and in the key under the plot (a file has no hover)."""
    fig = F.venn3(ZOO3, MODELS)
    notes = [a for a in fig.layout.annotations if a.font.size == 14]  # the circles' names
    shown = [_plain(a.text) for a in notes]
    assert len(notes) == 3 and len(set(shown)) == 3, shown
    assert all(len(s) <= 24 for s in shown), shown
    assert shown[0].endswith("variant-A") and shown[1].endswith("variant-B") and shown[2] == "Модель-β"
    assert [a.hovertext for a in notes] == [html.escape(MODELS[0]), html.escape(MODELS[1]), None]
    (key,) = [a for a in fig.layout.annotations if " = " in a.text]
    lines = [_plain(line) for line in key.text.split("<br>")]
    assert max(map(len, lines)) <= 42  # 11 px, at most 6 px a character: inside a half-width chart at 1024 px
    text = _unwrapped(lines)
    assert f"{shown[0]} = {MODELS[0]}".replace(" ", "") in text.replace(" ", "")
    assert f"{shown[1]} = {MODELS[1]}".replace(" ", "") in text.replace(" ", "")
    assert fig.layout.margin.b >= 15 * len(lines)  # room for the key under the plot
    assert fig.layout.height - fig.layout.margin.t - fig.layout.margin.b >= 500 - 80 - 20  # the plot kept its size
    # on a leader (a small circle), a run's "name · id" on two lines: cut only where a line is too long
    small = {"100": 1_000_000, "010": 500, "110": 300, "001": 400, "101": 200, "011": 100, "111": 50}
    fig = F.venn3(small, ["Δ grpo-s0", "optimal mask λ=10 · run-b", f"bigram mask · {MODELS[1]}"])
    leaders = [_plain(a.text.replace("<br>", "\n")) for a in fig.layout.annotations if a.showarrow]
    assert leaders[0] == "optimal mask λ=10\n· run-b" and leaders[1].endswith("variant-B"), leaders
    assert all(len(line) <= 24 for name in leaders for line in name.split("\n")), leaders
    # the circles' colours still keyed by the full names
    colors = dict(zip(MODELS, ["#111111", "#222222", "#333333"], strict=True))
    coloured = F.venn3(ZOO3, MODELS, colors=colors)
    assert [a.font.color for a in coloured.layout.annotations if a.font.size == 14] == list(colors.values())


@pytest.mark.parametrize("window", [274, 462, 722, 900])
def test_venn_names_over_80_characters_stay_inside_the_chart(window):
    """Each name's box (8 px a character) inside the chart at the widths the page gives it (half-width columns at
    1024, 1400 and 1920 px) and in the 900 px file: variant-B's name started 125 px left of the file."""
    fig = F.venn3(ZOO3, MODELS)
    m = fig.layout.margin
    plot_w, plot_h = window - m.l - m.r, fig.layout.height - m.t - m.b
    lo, hi = fig.layout.xaxis.range
    scale = min(plot_w, plot_h) / (hi - lo)
    for a in fig.layout.annotations:
        if a.font.size != 14:
            continue
        width = NAME_PX * max(len(_plain(t)) for t in a.text.split("<br>"))
        x = a.x * scale
        left = {"left": x, "right": x - width}.get(a.xanchor, x - width / 2)
        assert -plot_w / 2 - m.l <= left and left + width <= plot_w / 2 + m.r, (a.text, left, width, window)


def test_overall_bars_ticks_of_long_names_are_cut_told_apart_and_named_in_full():
    """The ticks were the names in full (rotated, past the figure's bottom: both read "…-steps100-"). They are cut,
    each bar still its model's (the hover's %{x} the full name), and the key under the chart names them."""
    df = pd.DataFrame({"model": MODELS, "sparsity": [0.698, 0.428, 0.670]})
    fig = F.overall_bars(df, title="Overall update sparsity per model (exact)")
    axis = fig.layout.xaxis
    ticks = [_plain(t) for t in axis.ticktext]
    assert list(axis.tickvals) == [html.escape(m) for m in MODELS] == list(fig.data[0].x)
    assert len(set(ticks)) == 3 and all(len(t) <= 24 for t in ticks), ticks
    assert ticks[0].endswith("variant-A") and ticks[1].endswith("variant-B") and ticks[2] == "Модель-β"
    assert "%{x}" in fig.data[0].hovertemplate  # the hover: the full name
    key = [_plain(line) for line in axis.title.text.split("<br>")]
    text = _unwrapped(key).replace(" ", "")
    assert all(f"{t}={m}".replace(" ", "") in text for t, m in zip(ticks[:2], MODELS, strict=False))
    assert fig.layout.height == 320 + 15 * len(key)
    short = F.overall_bars(pd.DataFrame({"model": ["grpo-s0", "dpo"], "sparsity": [0.7, 0.6]}))
    assert short.layout.xaxis.title.text is None and short.layout.height == 320  # everyday names: as they were
    assert [_plain(t) for t in short.layout.xaxis.ticktext] == ["grpo-s0", "dpo"]


_BOXES = """() => { const s = document.querySelector('svg');
  return [+s.getAttribute('width'), +s.getAttribute('height'), [...s.querySelectorAll('text')].map(t => {
    const r = t.getBoundingClientRect(); return [t.textContent, r.left, r.right, r.top, r.bottom]; })]; }"""


@pytest.mark.skipif(not os.access("/usr/bin/chromium", os.X_OK), reason="needs Debian chromium")
def test_the_figure_files_keep_every_long_name_inside_and_tell_them_apart(tmp_path):
    """As the review measured it: each figure written as SVG (the page's 'Figure for a paper'), every text box
    measured in Chromium. No text past the file's edges, and the two names read differently."""
    from playwright.sync_api import sync_playwright

    from subnetviz.report.static import figure_bytes
    from tests.browser import CHROMIUM, FLAGS

    figs = {
        "venn3": F.venn3(ZOO3, MODELS),
        "overall": F.overall_bars(pd.DataFrame({"model": MODELS, "sparsity": [0.698, 0.428, 0.670]})),
    }
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            for name, fig in figs.items():
                path = tmp_path / f"{name}.svg"
                path.write_bytes(figure_bytes(fig, "svg"))
                page = browser.new_page()
                page.goto(path.as_uri())
                width, height, texts = page.evaluate(_BOXES)
                page.close()
                out = [(t, round(a), round(b), round(c), round(d)) for t, a, b, c, d in texts]
                assert not [x for x in out if x[1] < -1 or x[2] > width + 1 or x[4] > height + 1], (name, out)
                names = [t for t, *_ in out if t.startswith("finetune") and " = " not in t]
                assert len(names) == 2 and names[0] != names[1], (name, names)
        finally:
            browser.close()


# --- 2. a link to a run this server lacks ---------------------------------------------------------------------------
def _read(text: str) -> str:
    """An element's text as a visitor reads it (Markdown escapes and zero-width breaks removed)."""
    return text.replace("\\", "").replace("\u200b", "")


def _links(at) -> list[str]:
    return [_read(w.value) for w in at.warning if "The link" in w.value]


def test_a_fallback_line_is_kept_while_the_picker_shows_what_replaced_the_link_s_entry():
    """Said as the picker is first drawn, and kept on the reruns of a polling fragment (every 2 s while a job runs:
    a line said once was gone before it was read) until another value is picked; then never again."""
    state: dict = {}
    assert uilogic.link_fallback(state, "k", "The link's run x …", "newest") == "The link's run x …"
    state["k"] = "newest"  # the picker drawn, showing what replaced the link's entry
    assert uilogic.link_fallback(state, "k", None, "newest") == "The link's run x …"  # a rerun
    state["k"] = "other"  # another run picked
    assert uilogic.link_fallback(state, "k", None, "other") is None
    state["k"] = "newest"
    assert uilogic.link_fallback(state, "k", None, "newest") is None
    assert uilogic.link_fallback({}, "k", None, "newest") is None  # a link's entry that is here: nothing said
    line = uilogic.stale_link_line("run", "x" * 300, "this server's runs", "y")
    assert len(line) < 200 and "(300 characters)" in line  # a link's long value shortened


def _metrics(run_dir: Path) -> None:
    rows = [{"time": 1.0, "total": 4, "step": s, "loss": 1.0 / s} for s in range(1, 5)]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
def test_a_link_to_a_training_run_or_overlay_not_here_says_so(finished_run):
    for run_id in ("x5-a", "x5-b"):
        _metrics(finished_run(run_id, {"algorithm": "sft"}).parent.parent)
    at = open_page("training", tr_view="Runs", tr_run="20250101-000000-grpo-deleted")
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    picker = at.selectbox(key="tr_run")
    label = picker.options[picker.index]
    assert _links(at) == [
        f"The link's run 20250101-000000-grpo-deleted is not among this server's runs; the newest training run, "
        f"{label}, is shown instead."
    ]
    assert at.query_params["tr_run"] == picker.value
    at.slider(key="tr_smooth").set_value(0.5).run()  # a rerun, the run the link fell back to still shown
    assert len(_links(at)) == 1
    # the overlay: a run of the link's that is here kept, the one that is not named
    at = open_page("training", tr_view="Runs", tr_run="x5-a", tr_overlay=["x5-b", "20250101-000000-grpo-gone"])
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert _links(at) == [
        "The link's overlay run 20250101-000000-grpo-gone is not among this server's runs of this kind with curves; "
        "it is left out."
    ]
    assert at.multiselect(key="tr_overlay").value == ["x5-b"]
    here = open_page("training", tr_view="Runs", tr_run="x5-a", tr_overlay=["x5-b"])
    assert not here.exception and _links(here) == [] and here.selectbox(key="tr_run").value == "x5-a"


def _grid() -> pd.DataFrame:
    from subnetviz.experiments.drivers import COLUMNS

    base = {"algorithm": "grpo", "accuracy": 0.5, "learning_rate": 1e-4, "steps": 2, "beta": 0.0, "max_grad_norm": 1.0}
    base |= {"optimizer": "adamw_torch", "data": "task", "train_seconds": 1.0, "status": "done", "note": ""}
    base |= {"grid_version": 2, "kl_forward": 0.01}
    rows = [
        {**base, "factor": "algorithm", "value": v, "seed": 0, "precision": p, "sparsity": s if p == "bf16" else 0.004}
        for v, s in (("sft", 0.2), ("grpo", 0.3))
        for p in ("bf16", "fp32")
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


@pytest.mark.slow
def test_a_link_to_a_drivers_grid_not_here_says_so(planted_grid):
    label = planted_grid(_grid())
    at = open_page("drivers", dr_run="demo zoo 0f834756: what drives sparsity · 20250101-000000-drivers-gone")
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert _links(at) == [
        "The link's run demo zoo 0f834756: what drives sparsity · 20250101-000000-drivers-gone is not among this "
        f"server's finished drivers runs; the newest, {label}, is shown instead."
    ]
    assert at.query_params["dr_run"] == label
    here = open_page("drivers", dr_run=label)
    assert not here.exception and _links(here) == []


@pytest.mark.slow
def test_a_link_to_a_series_not_here_says_so(app_env):
    at = open_page("series", series_src="gone series")
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    shown = at.selectbox(key="series_src").value
    assert _links(at) == [
        f"The link's series gone series is not among the series on offer here; {shown} is shown instead."
    ]
    here = open_page("series", series_src=shown)
    assert not here.exception and _links(here) == []


# --- 3. titles at 1024 px -------------------------------------------------------------------------------------------
def _fits(title: str, width: int) -> bool:
    """Each line of ``title`` fits a chart ``width`` px wide (a <sup> line at its smaller size)."""
    return all(
        4 + (SUB_PX if line.startswith("<sup>") else TITLE_PX) * len(_plain(line)) <= width
        for line in title.split("<br>")
    )


@pytest.mark.slow
@pytest.mark.parametrize("precision", [None, "bf16"])
def test_the_sweep_and_ulp_titles_fit_their_half_width_charts_at_1024(app_env, precision):
    """Side by side, 274 px each at 1024 px: "Distance between base and finetuned weights in ULPs" (and, at bf16,
    "Update sparsity against tolerance at bf16") ran past the chart's edge. The precision is still named."""
    query = {"precision": precision} if precision else {}
    at = open_page("sparsity", ft=["grpo-s0", "dpo"], sp_tab="Tolerance sweep and ULPs", **query)
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    titles = [s["layout"]["title"]["text"] for s in plotly_specs(at)]
    assert len(titles) == 2 and any("ULP" in t for t in titles), titles
    assert all(_fits(t, 274) for t in titles), titles
    assert all(("at bf16" in _plain(t)) == bool(precision) for t in titles), titles


def test_a_run_s_curves_title_fits_its_chart_at_1024(tmp_path):
    """ "Run demo zoo 0f834756: grpo-s0 (GRPO seed 0 on A (with its data)) · zoo-0f834756-grpo-s0-1796585347": 100
    characters on a chart of 564 px. Its lines fit, they read the whole name, and the panels keep their height."""
    from subnetviz.jobs.runner import JobRunner
    from subnetviz.report.training import curves_figure

    runner = JobRunner(tmp_path / "runs", max_concurrent=1)
    name = "demo zoo 0f834756: grpo-s0 (GRPO seed 0 on A (with its own data)) · zoo-0f834756-grpo-s0-1796585347"
    for run_id in ("long", "short"):
        _metrics(add_finished_run(runner, run_id, "train", run_id, {"kind": "train"}))
    fig = curves_figure(runner, ["long"], {"long": name})
    title = fig.layout.title.text
    assert _fits(title, 564), title
    assert " ".join(_plain(line) for line in title.split("<br>")) == f"Run {name}"
    plain = curves_figure(runner, ["short"], {"short": "sft · short"})
    assert plain.layout.title.text == "Run sft · short"  # a short one: one line, as it was
    lines = title.count("<br>")
    assert fig.layout.margin.t - plain.layout.margin.t == fig.layout.height - plain.layout.height == 22 * lines > 0


# --- 4. "1 step" -------------------------------------------------------------------------------------------------
def test_the_hyperparameter_warning_says_1_step():
    from subnetviz.training.mask_origin import mismatch_note

    note = mismatch_note("run x", {"steps": 1, "learning_rate": 1e-5}, {"steps": 100, "learning_rate": 1e-5})
    assert "trained with 1 step;" in note and "this run uses 100 steps." in note and "1 steps" not in note
    assert "2 steps" in mismatch_note("run x", {"steps": 2}, {"steps": 1})
