"""Fixes from a researcher's walk through the app in Chromium at 1024 px and 1600 px (walk6, findings 2, 3, 4, 6, 8).

2. Sparsity › One matrix: the row / column chart's second panel had its own y title, which sat inside the first
   panel's plotting area at 1024 px. The panels share one y axis and one title now.
3. Titles ran past their chart at 1024 px: One matrix's "model · matrix · 96×96, full resolution (a cell per entry)"
   (130 px), Spectra's rank heatmaps (62 and 36 px), Overlap's o1 (51 px) and Consensus (43 px). Their second parts
   are on lines of their own under the title, broken where a " · " is.
4. Overlap › Pairwise: Plotly turned o1's column names by 30°, which moved the last one under the colour bar
   ("Δ grpo-s2" read "Δ grpo"). The names are across, or upright where they do not fit.
6. Layer × module heatmaps named 5 of 9 module kinds at 1024 px (Plotly spaces a category axis' ticks by its
   length). Every kind is named now, and Sparsity puts two heatmaps to a row where three leave the names no room.
8. What drives sparsity: one axis read "1e-06, 1e-05, 0.0001" (Python's ``:g``). The charts name the values in one
   notation, "1e-6, 1e-5, 1e-4"; the grid's values themselves (keys, tables, files) keep their spelling.

Widths are checked as tests/app/test_walk5_fixes.py checks them: against the chart widths the app gives in
Chromium with the sidebar open (274 px half the page wide at 1024 px, 564 px the page's width), a bold title at
most 7.5 px a character and a subtitle line 5 px, both starting 4 px in.
"""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd
import pytest

from subnetviz import figures as F
from subnetviz.figures import drivers as D
from subnetviz.figures.overlap import consensus_bars, pairwise_matrix
from subnetviz.figures.style import (
    ACROSS_OR_UPRIGHT,
    EVERY_LABEL,
    HEATMAP_PLOT_AT_1024,
    SUB_LINE,
    heatmaps_per_row,
    number_labels,
    subtitle,
    title_margin,
)

HALF, FULL = 274, 564  # a chart's width (px) at 1024 px: half the page, the page
TITLE_PX, SUB_PX = 7.5, 5.0


def _plain(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _lines(title: str) -> tuple[str, list[str]]:
    head, *subs = title.split("<br>")
    return _plain(head), [_plain(s) for s in subs]


def _fits(title: str, width: int) -> bool:
    head, subs = _lines(title)
    return 4 + TITLE_PX * len(head) <= width and all(4 + SUB_PX * len(s) <= width for s in subs)


# --- 2. One matrix's row / column chart: one y axis ----------------------------------------------------------
def test_the_row_and_column_panels_share_one_y_axis_and_its_title():
    fig = F.row_col_ratios(np.linspace(0, 0.6, 96), np.linspace(0.1, 0.5, 96), subject="grpo-s0 · layers.0.q.weight")
    layout = fig.layout
    assert layout.yaxis.title.text == "changed (%)"
    assert layout.yaxis2.title.text is None  # (it was drawn inside the row panel at 1024 px)
    assert layout.yaxis2.matches == "y"  # one range, the column panel's ticks left to the row panel's axis
    assert layout.yaxis.range == layout.yaxis2.range


# --- 3. titles that fit their chart --------------------------------------------------------------------------
SUBJECT = "grpo-s0 · layers.0.self_attn.q_proj.weight"  # the demo's default model and matrix


@pytest.mark.parametrize("build", [F.matrix_image, F.delta_image])
def test_one_matrix_images_say_the_matrix_and_its_size_on_lines_that_fit(build):
    mask = np.random.default_rng(0).random((96, 96)) > 0.5
    fig = build(mask if build is F.matrix_image else mask.astype(np.float32) - 0.5, subject=SUBJECT)
    title = fig.layout.title.text
    assert _fits(title, HALF), _lines(title)
    head, subs = _lines(title)
    assert subs == ["grpo-s0 · layers.0.self_attn.q_proj.weight · 96×96", "full resolution (a cell per entry)"]
    assert fig.layout.margin.t == 116  # a line more under the title: 36 px more room above the plot
    # the figure picker reads each break as " · ": it names the chart by the whole line
    assert " · ".join([head, *subs]).endswith(f"{SUBJECT} · 96×96 · full resolution (a cell per entry)")


def test_a_block_image_of_a_long_matrix_name_fits_too():
    fig = F.matrix_image(np.ones((4096, 1024), bool), subject="Qwen2.5-7B-GRPO · model.layers.27.mlp.gate_proj.weight")
    title = fig.layout.title.text
    assert _fits(title, HALF), _lines(title)
    assert "each cell the mean of a 16×16 block" in title and fig.layout.margin.t == title_margin(title)
    # blocks that do not divide the matrix: the longest line, 56 characters (about 270 px at 4.6-4.9 px measured)
    ragged = F.matrix_image(np.ones((11008, 4096), bool)).layout.title.text
    assert max(map(len, _lines(ragged)[1])) <= 56 and "43×43 block (fewer at the edges)" in ragged


def test_subtitle_breaks_only_at_separators_and_keeps_short_lines_whole():
    assert subtitle("") == "" and subtitle("a · b") == "<br><sup>a · b</sup>"
    parts = ["model-" + "x" * 20, "layers.0.self_attn.q_proj.weight", "96×96", "full resolution (a cell per entry)"]
    text = subtitle(" · ".join(parts))
    lines = re.findall(r"<sup>(.*?)</sup>", text)
    assert all(len(line) <= SUB_LINE for line in lines)
    assert " · ".join(lines) == " · ".join(parts)  # nothing cut inside a name, nothing lost
    assert re.findall(r"<sup>(.*?)</sup>", subtitle("x" * 80)) == ["x" * 80]  # no separator: whole
    assert title_margin("t") == 80 and title_margin("t<br><sup>a</sup>") == 80
    assert title_margin("t<br><sup>a</sup><br><sup>b</sup>") == 116


def _pairs() -> pd.DataFrame:
    rows = []
    for a, b in (("Δ grpo-s0", "Δ grpo-s1"), ("Δ grpo-s0", "Δ grpo-s2"), ("Δ grpo-s1", "Δ grpo-s2")):
        rows.append({"a": a, "b": b, "o1": 0.77, "o2": 0.81, "jaccard": 0.65} | {"o1_chance": 0.3, "o2_chance": 0.3})
        rows[-1] |= {"jaccard_chance": 0.2, "o1_chance_per_tensor": 0.3, "o2_chance_per_tensor": 0.3}
        rows[-1] |= {"jaccard_chance_per_tensor": 0.2}
    return pd.DataFrame(rows)


def test_the_pairwise_matrix_makes_room_for_a_longer_title():
    one = pairwise_matrix(_pairs(), value="o1", title="o1: share of the row mask" + subtitle("in the column mask"))
    two = pairwise_matrix(_pairs(), value="o1", title="o1" + subtitle("a" * 40 + " · " + "b" * 40))
    assert one.layout.margin.t == 80 and two.layout.margin.t == 116
    assert two.layout.height - one.layout.height == 36  # the matrix keeps its size


def test_the_consensus_chart_makes_room_for_the_views_line_and_its_own():
    df = pd.DataFrame({"k": [0, 1, 2, 3], "count": [262_393, 45_000, 42_000, 98_900]})
    chance = pd.DataFrame({"k": [1, 2, 3], "expected_per_tensor": [190_000.0, 92_000.0, 16_000.0]})
    title = "Consensus: in how many masks is a changed parameter?" + subtitle("markers: per-tensor chance")
    fig = consensus_bars(df, title=title, chance=chance)
    assert _fits(fig.layout.title.text, FULL), _lines(fig.layout.title.text)
    assert _lines(fig.layout.title.text)[1] == [
        "markers: per-tensor chance",
        "not shown: 262,393 parameters in no mask",
    ]
    assert fig.layout.margin.t == 116


# --- 4. o1's column names clear of its colour bar ------------------------------------------------------------
def test_pairwise_column_names_are_across_or_upright_never_at_30_degrees():
    for value in ("o1", "jaccard"):
        fig = pairwise_matrix(_pairs(), value=value)
        assert list(fig.layout.xaxis.autotickangles) == ACROSS_OR_UPRIGHT == [0, 90]
        assert list(fig.layout.xaxis.ticktext) == ["Δ grpo-s0", "Δ grpo-s1", "Δ grpo-s2"]


# --- 6. every module kind named ------------------------------------------------------------------------------
MODULES = ["q", "k", "v", "o", "gate", "up", "down", "attn_norm", "mlp_norm"]


def _grid_frame(modules) -> pd.DataFrame:
    rows = [
        {"layer": layer, "module": m, "changed": 10, "numel": 100, "density": 0.1, "sparsity": 0.9}
        for layer in range(3)
        for m in modules
    ]
    return pd.DataFrame(rows)


def test_a_layer_module_heatmap_names_every_module_kind():
    for fig in (
        F.sparsity_heatmap(_grid_frame(MODULES)),
        F.sparsity_heatmap(_grid_frame(MODULES), cell_text=False),
    ):
        x = fig.layout.xaxis
        assert x.tickmode == "array" and list(x.tickvals) == MODULES and list(x.ticktext) == MODULES
        assert list(x.autotickangles) == [0, 90] and x.tickfont.size == 11


def test_a_heatmap_of_many_experts_leaves_the_spacing_to_plotly():
    experts = [f"E{i}" for i in range(EVERY_LABEL + 1)]
    x = F.sparsity_heatmap(_grid_frame(experts)).layout.xaxis
    assert x.tickmode is None and x.tickvals is None  # named over one another otherwise
    assert list(x.autotickangles) == [0, 90]


def test_heatmaps_go_two_to_a_row_where_three_leave_nine_names_no_room():
    # at 1024 px: three to a row gave 177 px charts whose plots were 63 px, 7 px a module kind
    assert heatmaps_per_row(9) == 2 and heatmaps_per_row(7) == 2
    assert heatmaps_per_row(4) == 3 and heatmaps_per_row(5) == 3
    assert heatmaps_per_row(30) == 1 and heatmaps_per_row(9, most=1) == 1
    for columns in range(1, 40):  # the most to a row that leave each column 12 px, measured at 1024 px
        k = heatmaps_per_row(columns)
        assert k == 1 or HEATMAP_PLOT_AT_1024[k] / columns >= 12
        assert k == 3 or HEATMAP_PLOT_AT_1024[k + 1] / columns < 12


# --- 8. one notation on an axis ------------------------------------------------------------------------------
def test_number_labels_write_an_axis_in_one_notation():
    assert number_labels(["1e-06", "1e-05", "0.0001"]) == ["1e-6", "1e-5", "1e-4"]
    assert number_labels(["1e-05", "0.005"]) == ["1e-5", "5e-3"]
    assert number_labels(["2.5e-05", "0.0001", "0"]) == ["2.5e-5", "1e-4", "0"]
    for same in (["0", "0.1"], ["4", "8", "16"], ["on", "off"], ["adamw", "sgd"], ["nan", "1e-05"], []):
        assert number_labels(same) == same
    assert [float(x) for x in number_labels(["1e-06", "3.3e-05", "0.0001"])] == [1e-6, 3.3e-5, 1e-4]  # same values


def _drivers_grid() -> pd.DataFrame:
    rows = [
        {"factor": f, "value": v, "seed": 0, "precision": p, "sparsity": s if p == "bf16" else s / 100}
        for f, values in (("learning_rate", ("1e-06", "1e-05", "0.0001")), ("steps", ("4", "8")))
        for v, s in zip(values, (0.9, 0.7, 0.2), strict=False)
        for p in ("bf16", "fp32")
    ]
    return pd.DataFrame(rows)


def test_the_factor_chart_names_learning_rates_in_one_notation():
    fig = D.factor_panels(_drivers_grid())
    lr, steps = fig.layout.xaxis, fig.layout.xaxis2
    assert list(lr.ticktext) == ["1e-6", "1e-5", "1e-4"] and list(steps.ticktext) == ["4", "8"]
    assert list(lr.tickvals) == ["1e-06", "1e-05", "0.0001"]  # the positions: the grid's own values
    (bar,) = [t for t in fig.data if t.type == "bar" and t.xaxis == "x"]
    assert list(bar.hovertext) == ["1e-6", "1e-5", "1e-4"] and "%{hovertext}" in bar.hovertemplate


def test_the_precision_chart_names_runs_in_one_notation():
    fig = D.precision_pairs(_drivers_grid())
    runs = list(fig.layout.xaxis.categoryarray)
    assert runs == [
        "learning_rate=1e-6 s0",
        "learning_rate=1e-5 s0",
        "learning_rate=1e-4 s0",
        "steps=4 s0",
        "steps=8 s0",
    ]


def test_a_four_line_matrix_title_ends_above_its_heatmap_in_chromium():
    """walk7: One matrix's title of four lines (the criterion under it) ended 4 px into the heatmap at 1440 px (a
    500 px chart): the margin grew 18 px a line while Plotly's title, set in the middle of the margin, moved 31."""
    import torch

    from tests.unit.test_walk6a_fixes import _drawn

    m = torch.rand(96, 96, generator=torch.Generator().manual_seed(0)) > 0.5
    subject = "grpo-s0 · layers.0.self_attn.q_proj.weight · relative η = 0.004 at bf16"
    fig = F.matrix_image(m, title="Which entries changed", subject=subject)
    assert len(_lines(fig.layout.title.text)[1]) >= 3  # (the four-line case)
    for width in (274, 500):
        (drawn,) = _drawn([fig], width)
        assert max(t["bottom"] for t in drawn["titles"]) + 8 <= min(p["top"] for p in drawn["plots"]), width
