"""Fixes from the seventh review of Update sparsity (figure builders).

1. The tolerance sweep named its ticks and hovers with one significant digit ("2.5e-06" read "3e-06"; 1.5e-05 and
   2e-05 both read "2e-05", on two ticks), and drew a tolerance of 0 ("|Δ|>0") as a second diamond hovered
   "exact (bitwise)" beside the exact one. It names each tolerance as the criteria and summary.json do (``:g``) and
   draws tolerance 0 as its own point, "0": values that differ, where exact asks about bits (a -0 -> +0 flip).
2. Two models' layer × module heatmaps side by side at 1024 px printed their cell values in 3 px (nine module kinds
   in 122 px). :func:`heatmap_cell_text` decides from the columns' width and the longest label, not the model count.
3. The ULP histogram, half the page wide at 1024 px beside a legend, named 1, 3-4, 9-16 and >256 only of its seven
   unevenly wide bins. Every bin is named.

Geometry is measured on the figures drawn by plotly.js in Chromium (tests/unit/test_walk6a_fixes.py ``_drawn``).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from subnetviz import figures as F
from subnetviz.analysis.bits import ULP_LABELS
from subnetviz.analysis.sparsity import SparsityOptions
from subnetviz.analysis.updates import analyze_updates
from subnetviz.figures.style import heatmaps_per_row
from subnetviz.figures.updates import CELL_FONT, heatmap_cell_text
from tests.browser import NEEDS_CHROMIUM
from tests.ckpt_fixtures import write_folder
from tests.unit.test_walk6a_fixes import HALF, _drawn

CHART_AT_1024 = {1: 564, 2: 274, 3: 177}  # a chart's width at 1024 px, sidebar open, by how many share the row
MODULES = ["q", "k", "v", "o", "gate", "up", "down", "attn_norm", "mlp_norm"]  # the zoo's (and real models') kinds

DOM = r"""() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => {
  const box = (e) => { const b = e.getBoundingClientRect(); return {left: b.left, right: b.right, top: b.top,
      bottom: b.bottom}; };
  const r = gd.getBoundingClientRect();
  return {fig: {left: r.left, right: r.right, top: r.top, bottom: r.bottom},
          ticks: Array.from(gd.querySelectorAll('.xtick text')).map(t => ({text: t.textContent, ...box(t)})),
          cells: Array.from(gd.querySelectorAll('.heatmaplayer text')).filter(t => /\d/.test(t.textContent))
              .map(t => parseFloat(t.style.fontSize || getComputedStyle(t).fontSize))};
})"""


# --- 1. every tolerance named as the tables name it; tolerance 0 is not a second "exact" ----------------------------
TOLS = (0.0, 1.5e-5, 2e-5, 2.5e-6)  # as the review's `analyze --tolerances 0 1.5e-5 2e-5 2.5e-6`


def _planted_sweep(tmp_path) -> pd.DataFrame:
    """``SparsityReport.sweep`` of an fp32 pair with four planted changes, one under each criterion less: a -0 -> +0
    flip (bits only), |Δ| = 1e-6 (≤ 2.5e-6), 1.8e-5 (in (1.5e-5, 2e-5]) and 1e-4 (above every tolerance)."""
    base = torch.zeros(32, 16)
    base[0, 0] = -0.0
    ft = base.clone()
    ft[0, 0], ft[1, 1], ft[2, 2], ft[3, 3] = 0.0, 1e-6, 1.8e-5, 1e-4
    name = "model.layers.0.mlp.up_proj.weight"
    folders = [write_folder(tmp_path / k, {name: t}) for k, t in (("b", base), ("f", ft))]
    for folder in folders:
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": False}))
    opts = SparsityOptions(tolerances=TOLS)
    rep = analyze_updates(str(folders[0]), [str(folders[1])], labels=["ft"], options=opts).reports[0]
    sweep = rep.sweep()
    return sweep[sweep["tolerance"].notna()]


def test_the_sweep_names_each_tolerance_as_the_criteria_do(tmp_path):
    sweep = _planted_sweep(tmp_path)
    changed = dict(zip(sweep["criterion"], sweep["changed"], strict=True))
    assert changed == {"exact": 4, "|Δ|>0": 3, "|Δ|>1.5e-05": 2, "|Δ|>2e-05": 1, "|Δ|>2.5e-06": 2}  # planted
    fig = F.tolerance_sweep(sweep)
    ticks = list(fig.layout.xaxis.ticktext)
    # the criteria's own names ("|Δ|>1.5e-05": summary.json, the tables), the exact one first
    assert ticks == ["exact", "0", "2.5e-06", "1.5e-05", "2e-05"]
    assert set(ticks[1:]) == {c.removeprefix("|Δ|>") for c in changed if c != "exact"}
    line = next(t for t in fig.data if t.mode == "lines+markers")
    assert list(line.hovertext) == ["2.5e-06", "1.5e-05", "2e-05"] and "tolerance %{hovertext}" in line.hovertemplate
    assert not any(":.0e" in t.hovertemplate for t in fig.data)  # one digit made 1.5e-05 and 2e-05 alike
    np.testing.assert_array_equal(np.asarray(line.customdata)[:, 0], [2, 2, 1])
    # One exact point: the bitwise criterion's 4 changes. The |Δ|>0 row's 3 (the -0 -> +0 flip unchanged) are a
    # point of their own at the tick "0", never hovered "exact".
    exact = [t for t in fig.data if "exact (bitwise)" in t.hovertemplate]
    zero = [t for t in fig.data if "tolerance 0" in t.hovertemplate]
    assert len(exact) == len(zero) == 1 and len(exact[0].x) == len(zero[0].x) == 1
    assert np.asarray(exact[0].customdata)[0, 0] == 4 and np.asarray(zero[0].customdata)[0, 0] == 3
    assert exact[0].y[0] == pytest.approx(100 * (1 - 4 / 512)) and zero[0].y[0] == pytest.approx(100 * (1 - 3 / 512))
    vals = list(fig.layout.xaxis.tickvals)
    assert exact[0].x[0] == pytest.approx(vals[0]) and zero[0].x[0] == pytest.approx(vals[1])
    assert zero[0].marker.symbol != exact[0].marker.symbol
    assert vals[1] < fig.layout.shapes[0].x0 < 2.5e-6  # the divider: both off-scale points left of it


@NEEDS_CHROMIUM
def test_the_sweep_ticks_drawn_are_the_criteria(tmp_path):
    fig = F.tolerance_sweep(_planted_sweep(tmp_path))
    for drawn in _drawn([fig, fig], HALF, DOM)[:1] + _drawn([fig], 564, DOM):
        assert [t["text"] for t in drawn["ticks"]] == ["exact", "0", "2.5e-06", "1.5e-05", "2e-05"]


def test_without_a_criterion_column_tolerance_0_is_the_exact_point():
    df = pd.DataFrame({"model": "m", "tolerance": [0.0, 1e-5], "sparsity": [0.9, 0.95]})
    fig = F.tolerance_sweep(df)
    assert list(fig.layout.xaxis.ticktext) == ["exact", "1e-05"]
    assert ["exact (bitwise)" in t.hovertemplate for t in fig.data] == [False, True]


# --- 2. cell values in 9 px or more, or on hover only ---------------------------------------------------------------
def _grid(modules, value: float, layers: int = 4) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"layer": i, "module": m, "changed": 1, "numel": 10, "density": 1 - value, "sparsity": value}
            for i in range(layers)
            for m in modules
        ]
    )


def test_two_models_of_nine_module_kinds_leave_their_values_to_the_hover():
    nine = _grid(MODULES, 0.683)
    assert not heatmap_cell_text([nine, nine])  # 122 px for nine columns at 1024 px: 3 px text
    assert heatmap_cell_text([nine])  # alone, full width: 45 px columns
    assert not heatmap_cell_text([nine] * 3)
    assert heatmap_cell_text([_grid(MODULES[:4], 0.683)] * 2)  # four kinds in 122 px: 30 px columns
    assert heatmap_cell_text([])


@NEEDS_CHROMIUM
@pytest.mark.parametrize("value", [0.683, 0.999996])  # labels "68.3" and "99.9996"
def test_cell_values_drawn_are_legible_or_absent(value):
    """Every layout the page gives heatmaps at 1024 px (one to three a row), in Chromium: where the rule prints the
    values, Plotly draws them in :data:`CELL_FONT` px or more; where it does not, no value is drawn."""
    cases, figs, widths = [], [], []
    for columns in (4, 6, 9, 12):
        for shown in (1, 2, 3):
            frames = [_grid(MODULES[:columns] + [f"x{i}" for i in range(columns - 9)], value)] * shown
            per_row = min(heatmaps_per_row(columns), shown)
            cells = heatmap_cell_text(frames)
            cases.append((columns, shown, cells))
            figs.append(F.sparsity_heatmap(frames[0], cell_text=cells))
            widths.append(CHART_AT_1024[per_row])
    drawn = {}
    for w in sorted(set(widths)):
        at = [i for i, x in enumerate(widths) if x == w]
        drawn.update(zip(at, _drawn([figs[i] for i in at], w, DOM), strict=True))
    for i, (columns, shown, cells) in enumerate(cases):
        sizes = drawn[i]["cells"]
        assert bool(sizes) == cells, (columns, shown)
        assert not sizes or min(sizes) >= CELL_FONT, (columns, shown, min(sizes))
    assert (9, 2, False) in cases and (9, 1, True) in cases


# --- 3. every ULP bin named -----------------------------------------------------------------------------------------
def _ulp(models) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.concat(
        [pd.DataFrame({"model": m, "bin": list(ULP_LABELS), "count": rng.integers(1, 10**6, 7)}) for m in models]
    )


@NEEDS_CHROMIUM
def test_every_ulp_bin_is_named_beside_a_legend_at_1024_px():
    """As the page builds it (title, subtitle, the dtype), 274 px wide at 1024 px. The app's theme leaves its plot a
    few px narrower than plain plotly.js does (95 px against some 105), so 260 to 290 px are drawn (89 to 120 px)."""
    figs = [
        F.ulp_histogram(
            _ulp(models),
            title="Base-to-finetuned distance in ULPs<br><sup>compared at bf16, as stored</sup>",
            dtype="bf16, as stored",
        )
        for models in (["grpo-s0", "grpo-s1"], ["grpo-s0", "grpo-s1", "grpo-s2"], ["grpo-s0", "dpo", "sft", "a", "b"])
    ]
    for width in (260, 274, 290):
        for drawn in _drawn(figs, width, DOM):
            ticks = drawn["ticks"]
            assert [t["text"] for t in ticks] == list(ULP_LABELS), width
            for a, b in zip(ticks, ticks[1:], strict=False):  # side by side, never over one another
                assert a["right"] <= b["left"] + 0.5, (width, a, b)
            assert all(drawn["fig"]["left"] <= t["left"] and t["bottom"] <= drawn["fig"]["bottom"] for t in ticks)
