"""Fixes from walk6 (every page at 1024 px with the sidebar open, and at 1600 px), the figure builders' part.

2. Training › Runs and Bigram › Train a mask: each panel's y-axis title sat in the 36 px gap between two panels and
   was drawn inside the panel on its left ("grad_norm" over the loss curve). The panels are named, with the unit of
   a share, by their titles only.
3. Bigram › Ablation: "Fidelity: surprisal correlation with the bigram model" ran 99 px past a chart half the page
   wide. The title is short; and the lines a figure gets under its title grow the figure, so that a half-width
   chart's y-axis title, taller than its shrunk plot, no longer reaches into them.
5. Continual › After each task: the accuracy matrix's colour bar, beside it, took some 190 px of a 274 px chart and
   left cells of 16 px for labels of 20 px ("42.497.06.5"). The bar lies under the matrix.

Geometry is measured on the figures drawn by plotly.js in Chromium, in a div as wide as the app gives the chart at
1024 px with the sidebar open: 274 px for half the page, 564 px for all of it (the app's font and theme aside).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from subnetviz import figures as F
from subnetviz.figures import bigram as BG
from tests.browser import CHROMIUM, FLAGS, NEEDS_CHROMIUM

HALF, FULL = 274, 564  # a chart's width at 1024 px, sidebar open: half the main column, all of it
RUN_LABEL = "bigram mask λ=10 · 20261206-192908-bigram_mask-af5699"  # the demo zoo's mask, as the pickers name it

GEOMETRY = r"""() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => {
  const r = gd.getBoundingClientRect(), L = gd._fullLayout;
  const box = (b) => ({left: b.left, right: b.right, top: b.top, bottom: b.bottom});
  const plots = Object.values(L._plots).map(p => ({x: p.xaxis._name, y: p.yaxis._name,
      left: r.left + p.xaxis._offset, right: r.left + p.xaxis._offset + p.xaxis._length,
      top: r.top + p.yaxis._offset, bottom: r.top + p.yaxis._offset + p.yaxis._length}));
  const titles = Array.from(gd.querySelectorAll('.g-gtitle text')).map(t => box(t.getBoundingClientRect()));
  const axisTitles = Array.from(gd.querySelectorAll("g[class*='title'] text")).map(t => {
      const m = (t.closest('g[class]').getAttribute('class') || '').match(/g-(x|y)(\d*)title/);
      return m && {axis: m[1] + 'axis' + m[2], text: t.textContent, ...box(t.getBoundingClientRect())}; }).filter(Boolean);
  const heat = (gd._fullData || []).findIndex(d => d.type === 'heatmap');
  const cell = heat < 0 ? null : L.xaxis._length / gd.calcdata[heat][0].z[0].length;
  const labels = Array.from(gd.querySelectorAll('.heatmaplayer text')).filter(t => /\d/.test(t.textContent))
      .map(t => t.getBoundingClientRect().width);
  const fills = gd.querySelector('.colorbar .cbfills');
  const xbits = Array.from(gd.querySelectorAll('.xtick text, .g-xtitle text')).map(t => box(t.getBoundingClientRect()));
  return {width: r.width, right: r.right, top: r.top, bottom: r.bottom, plots, titles, axisTitles, cell, labels,
          colorbar: fills && box(fills.getBoundingClientRect()), xbits};
})"""


def _drawn(figs: list[go.Figure], width: int, probe: str = GEOMETRY):
    """Each figure drawn by plotly.js (the plotly package's) in Chromium in a div ``width`` px wide: its box, its
    subplots' plotting areas, its title lines, axis titles, heatmap cell width and labels, colour bar and x-axis text
    (page coordinates, px). ``probe``: another script to evaluate there instead."""
    import plotly.offline
    from playwright.sync_api import sync_playwright

    divs = "".join(f'<div id="g{i}" style="width:{width}px"></div>' for i in range(len(figs)))
    calls = "".join(f"Plotly.newPlot('g{i}', {fig.to_json()});" for i, fig in enumerate(figs))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": width + 40, "height": 900})
            page.set_content(f"<html><body style='margin:0'>{divs}</body></html>")
            page.add_script_tag(content=plotly.offline.get_plotlyjs())
            page.add_script_tag(content=f"Promise.all([{calls.replace(';', ',')}]).then(() => window.drawn = true);")
            page.wait_for_function("() => window.drawn === true", timeout=60_000)
            return page.evaluate(probe)
        finally:
            browser.close()


def _overlap(a: dict, b: dict) -> float:
    """The area two boxes share (px²)."""
    w = min(a["right"], b["right"]) - max(a["left"], b["left"])
    h = min(a["bottom"], b["bottom"]) - max(a["top"], b["top"])
    return max(w, 0) * max(h, 0)


def _curves(metrics=("loss", "kept", "undecided")) -> pd.DataFrame:
    """A bigram mask run's log, as the Bigram page melts it: 60 steps of each metric."""
    steps = np.arange(60)
    values = {"loss": 7 * np.exp(-steps / 10) + 1.7, "kept": np.exp(-steps / 10) * 0.07 + 0.009}
    values["undecided"] = np.clip(1.5 - steps / 20, 0, 1)
    values["grad_norm"], values["entropy"] = 5 + 20 * (steps == 50), 0.7 + 0.01 * np.sin(steps)
    return pd.concat([pd.DataFrame({"step": steps, "metric": m, "value": values[m]}) for m in metrics])


def _continual_matrix(n: int = 5) -> go.Figure:
    """An accuracy matrix as the Continual page draws it (views/continual.py: cells' numbers at 11 px, three title
    lines), of the demo zoo's finetuning row values."""
    rng = np.random.default_rng(0)
    A = np.tril(rng.uniform(0.1, 0.98, (n, n))) + np.triu(np.full((n, n), 0.117), 1)
    A[0, 0] = 0.976
    fig = F.accuracy_matrix(A, [f"task {j + 1}" for j in range(n)], title="finetune, dense, seed 0")
    fig.data[0].textfont.size = 11
    return fig.update_layout(margin_t=100)


def _ablation_summary() -> pd.DataFrame:
    settings = ["bigram", "full", "subnetwork", "ablated", "random subnetwork", "random ablated", "empty"]
    return pd.DataFrame(
        {
            "setting": settings,
            "r_mean": [1, 0.749, 0.988, 0.695, 0.630, 0.748, 0.630],
            "r_sd": [np.nan, np.nan, np.nan, np.nan, 0.0004, 0.0003, np.nan],
            "delta_bits": [0.50, 0.0, 0.53, 0.0166, 1.79, -0.0004, 1.79],
        }
    )


# --- 2. the panels' names ---------------------------------------------------------------------------------------
def test_each_training_panel_is_named_with_its_unit_by_its_title_and_has_no_y_axis_title():
    fig = F.training_curves(_curves())
    assert [a.text for a in fig.layout.annotations] == ["loss", "kept (%)", "undecided (%)"]
    assert [fig.layout[f"yaxis{i or ''}"].title.text for i in (0, 2, 3)] == [None, None, None]
    assert [fig.layout[f"xaxis{i or ''}"].title.text for i in (0, 2, 3)] == ["step"] * 3  # (the x axes keep theirs)
    six = F.training_curves(_curves(("loss", "grad_norm", "entropy", "kept", "undecided")))
    assert [a.text for a in six.layout.annotations] == ["loss", "grad_norm", "entropy", "kept (%)", "undecided (%)"]


@NEEDS_CHROMIUM
def test_no_axis_title_of_a_training_panel_lies_in_another_panel_at_1024_px():
    """The Bigram mask run's panels (loss, kept, undecided) and the Training run's (loss, grad_norm, entropy), in a
    chart all the main column wide: "kept (%)" lay 12×49 px inside the loss panel, "grad_norm" 18×65 px."""
    figs = [F.training_curves(_curves(m)) for m in (("loss", "kept", "undecided"), ("loss", "grad_norm", "entropy"))]
    for drawn in _drawn(figs, FULL):
        assert len(drawn["plots"]) == 3
        for title in drawn["axisTitles"]:
            others = [p for p in drawn["plots"] if title["axis"] not in (f"{p['x']}", f"{p['y']}")]
            assert not any(_overlap(title, p) > 0 for p in others), title
        for name in drawn["titles"]:  # the chart's title: inside it
            assert name["right"] <= drawn["right"] + 1, name


# --- 3. Bigram's half-width titles ------------------------------------------------------------------------------
def test_the_fidelity_title_is_short_and_the_y_axis_says_what_r_correlates():
    fig = BG.fidelity_bars(_ablation_summary())
    assert fig.layout.title.text == "Fidelity to the bigram model"
    assert fig.layout.yaxis.title.text == "Pearson r of per-token surprisals"


def test_lines_under_a_title_grow_the_figure_not_shrink_its_plot():
    # one of Plotly's default height, one of its own (the Location tab's heatmap sets one)
    for fig in (BG.fidelity_bars(_ablation_summary()), go.Figure(layout={"height": 396, "margin_t": 80})):
        height = fig.layout.height or BG.PLOTLY_HEIGHT
        room = height - fig.layout.margin.t  # the plot's and the bottom's
        out = BG.with_setting(fig, RUN_LABEL, "", "model base · corpus zoo", wrap=40)
        assert len(out.layout.title.text.split("<br>")) == 4  # the title, the mask in two lines, the model
        assert out.layout.height == height + 3 * BG.SETTING_LINE
        assert out.layout.height - out.layout.margin.t == room


@NEEDS_CHROMIUM
def test_bigram_half_width_charts_keep_their_titles_inside_and_apart_at_1024_px():
    """The Ablation tab's two charts and a covariance map, as the page titles them (the mask's line broken at its
    " · "), half the main column wide: every title line ends inside the chart, and the y-axis title starts under
    the last of them (with three lines under its title, the Fidelity chart's y title reached 8 px into them)."""
    figs = [
        BG.fidelity_bars(_ablation_summary()),
        BG.delta_bits_bars(_ablation_summary()),
        BG.covariance_heatmap(pd.DataFrame(np.eye(4) * 0.7 + 0.3), "Covariance: random subnetwork"),
    ]
    for fig in figs:
        BG.with_setting(fig, RUN_LABEL, "", "model base · corpus zoo", wrap=40)
    for drawn in _drawn(figs, HALF):
        assert len(drawn["titles"]) >= 1
        for line in drawn["titles"]:
            assert line["right"] <= drawn["right"] - 2, (line, drawn["right"])
        last = max(t["bottom"] for t in drawn["titles"])
        (ytitle,) = [t for t in drawn["axisTitles"] if t["axis"] == "yaxis"]
        assert ytitle["top"] >= last, (ytitle, last)


# --- 5. Continual's cells ---------------------------------------------------------------------------------------
def test_the_accuracy_matrix_s_colour_bar_lies_under_it():
    fig = F.accuracy_matrix(np.tril(np.full((3, 3), 0.5)), ["task 1", "task 2", "task 3"])
    bar = fig.data[0].colorbar
    assert bar.orientation == "h" and bar.yref == "container" and bar.y == 0 and bar.yanchor == "bottom"
    assert bar.title.text == "accuracy (%)"
    assert fig.layout.margin.b >= 60 + F.series.COLORBAR_ROOM  # the x axis's room, and the bar's under it


@NEEDS_CHROMIUM
@pytest.mark.parametrize("width", [HALF, 562], ids=["1024px", "1600px"])
def test_each_accuracy_cell_holds_its_number_and_the_bar_clears_the_x_axis(width):
    """Five tasks, numbers of one decimal at 11 px, in a chart half the main column wide: each label is narrower
    than its cell (16.4 px cells for labels of 19.7 px read "42.497.06.5"), and the colour bar lies clear of the
    x axis's tick labels and title."""
    (drawn,) = _drawn([_continual_matrix()], width)
    assert len(drawn["labels"]) == 15  # the diagonal and below
    assert max(drawn["labels"]) + 4 <= drawn["cell"], (drawn["labels"], drawn["cell"])
    assert drawn["colorbar"] is not None and drawn["colorbar"]["bottom"] <= drawn["bottom"]
    assert not [b for b in drawn["xbits"] if _overlap(b, drawn["colorbar"]) > 0]
    assert all(b["bottom"] <= drawn["colorbar"]["top"] for b in drawn["xbits"])


@pytest.mark.parametrize(("n", "cell"), [(5, "97.6"), (6, "97.6"), (7, "98"), (8, "98"), (9, ""), (12, "")])
def test_the_accuracy_cells_hold_what_fits_them_at_1024_px(n, cell):
    """Eight tasks or more: "42.4" in 20 px cells ran into its neighbours; whole numbers up to eight tasks, then the
    numbers on hover only, said under the title."""
    fig = _continual_matrix(n)
    assert fig.data[0].text[0][0] == cell
    assert fig.data[0].hovertemplate.endswith("%{z:.2f}%<extra></extra>")
    assert ("accuracies on hover" in fig.layout.title.text) == (cell == "")
