"""Fixes from a researcher's walk through the app in a real browser (walk5).

1. An HTML export's notes repeated the Parameters table as Python reprs (``['a', 'b']``, ``True``, tuples): the
   same setting spelt two ways in one file. The notes now spell each value as the table does.
2. At 1024 px the Overlap Venn's set names ran off its half-width chart ("Δ grpo-s0" read "grpo-s0"), and the two
   names of a two-set Venn sat on top of each other; the three-set subtitle stopped at "area = 5.0%". Behaviour's
   revert chart title stopped at "against the sha". Names now sit above or below their circles, inside the chart,
   apart; the long titles are two short lines.
3. Spectra › Subspaces, side "right": the heatmap's title lost its unit, "(°)", at 1400 px. The first line is now
   short, the subspaces and the model on the second.

Layout is checked on the figures' properties against the chart widths the app gives these charts in Chromium
(half-width columns, sidebar open): 274 px at 1024, 462 px at 1400 and 722 px at 1920. Text widths are upper
bounds measured there: a bold 14 px name at most 8 px a character (7.3-7.7 measured), a bold title 7.5 px
(7.0-7.7) and its subtitle line 5 px (4.75).
"""

from __future__ import annotations

import html
import re

import pandas as pd
import pytest

from subnetviz import figures as F
from subnetviz import uilogic
from subnetviz.figures import behavior as B
from subnetviz.figures import subspaces as S

WIDTHS = {1024: 274, 1400: 462, 1920: 722}  # the chart's width in a half-width column, by window width
NAME_PX, LINE_PX, TITLE_PX, SUB_PX = 8.0, 18.0, 7.5, 5.0


def _plain(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _title_lines(fig) -> tuple[str, list[str]]:
    """The title's first line and its subtitle lines, as text."""
    head, *subs = fig.layout.title.text.split("<br>")
    return _plain(head), [_plain(s) for s in subs]


def _fits(fig, width: int) -> bool:
    """The title's lines fit a chart ``width`` px wide (the title starts 4 px in)."""
    head, subs = _title_lines(fig)
    return 4 + TITLE_PX * len(head) <= width and all(4 + SUB_PX * len(s) <= width for s in subs)


# --- 1. the export's Parameters line ------------------------------------------------------------------------
def test_export_notes_spell_parameters_as_the_table_does():
    """The repro's parameters: a list, a float, a tuple and a bool. Each value in the notes reads as in the table
    (JSON: double quotes, a tuple as a list, ``true``), never as a Python repr."""
    params = {
        "view": "Runs",
        "runs": ["zoo-grpo-s0", "zoo-grpo-sub"],
        "smoothing": 0.5,
        "comparison": ("zoo grpo-s0", "zoo grpo-sub", "zoo/base"),
        "revert curve": True,
    }
    page = uilogic.dashboard_html("Training runs", params, {}, {}, [], [])
    (notes,) = re.findall(r'(?s)<p class="notes">(.*?)</p>', page)
    assert html.unescape(notes) == (
        'Parameters: view=Runs, runs=["zoo-grpo-s0", "zoo-grpo-sub"], smoothing=0.5, '
        'comparison=["zoo grpo-s0", "zoo grpo-sub", "zoo/base"], revert curve=true'
    )
    table = {html.unescape(k): html.unescape(v) for k, v in re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", page)}
    for key in params:
        assert f"{key}={table[key]}" in html.unescape(notes), key  # the same spelling in both places
    assert "Parameters: K=16</p>" in uilogic.dashboard_html("Spectra", {"K": 16}, {}, {}, [], [])  # a scalar as it was


# --- 2. the Venn's names --------------------------------------------------------------------------------------
ZOO3 = {"100": 17_000, "010": 10_900, "110": 16_500, "001": 17_400, "101": 15_200, "011": 10_600, "111": 98_900}
ZOO2 = {"10": 33_453, "01": 25_794, "11": 109_775}  # Δ grpo-s0 and Δ grpo-s1 on the demo zoo
EVEN3 = {"100": 40, "010": 35, "001": 30, "110": 12, "101": 10, "011": 9, "111": 5}
SMALL3 = {"100": 1_000_000, "010": 500, "110": 300, "001": 400, "101": 200, "011": 100, "111": 50}
VENNS = {
    "zoo, three seeds": lambda: F.venn3(ZOO3, ["Δ grpo-s0", "Δ grpo-s1", "Δ grpo-s2"]),
    "zoo, a saved mask": lambda: F.venn3(ZOO3, ["masks/grpo-seed0", "Δ grpo-s1", "Δ sft-long-name"]),
    "comparable sets": lambda: F.venn3(EVEN3, ["Δ grpo-s0", "Δ grpo-s1", "Δ grpo-s2"]),
    "disjoint": lambda: F.venn3({**dict.fromkeys(EVEN3, 0), "100": 40, "010": 35, "001": 30}, ["a", "b", "c"]),
    "two small on leaders": lambda: F.venn3(SMALL3, ["Δ grpo-s0", "bigram mask λ=10 · run-a", "optimal · run-b"]),
    "zoo, two seeds": lambda: F.venn2(ZOO2, ["Δ grpo-s0", "Δ grpo-s1"]),
    "two, unequal": lambda: F.venn2({"10": 250_000, "01": 20_000, "11": 30_000}, ["Δ sft", "masks/grpo-seed0"]),
    "two, one small": lambda: F.venn2({"10": 250_000, "01": 200, "11": 300}, ["Δ sft", "masks/grpo-seed0"]),
    "one drawn": lambda: F.venn2({"10": 5, "01": 0, "11": 0}, ["masks/grpo-seed0", "Δ sft"]),
}


def _name_boxes(fig, width: int) -> list[tuple[str, bool, float, float, float, float]]:
    """Each set name's box on a chart ``width`` px wide, in px from the plot's centre (y up):
    (text, on a leader, left, right, bottom, top). The axes are square over [-ext, ext]: the plot's shorter side
    binds the scale, the other axis shows more."""
    m, height = fig.layout.margin, fig.layout.height
    plot_w, plot_h = width - m.l - m.r, height - m.t - m.b
    lo, hi = fig.layout.xaxis.range
    scale = min(plot_w, plot_h) / (hi - lo)
    boxes = []
    for a in fig.layout.annotations:
        lines = [_plain(t) for t in a.text.split("<br>")]
        w, h = NAME_PX * max(map(len, lines)), LINE_PX * len(lines)
        x, y = a.x * scale + (a.ax or 0 if a.showarrow else 0), a.y * scale + (a.yshift or 0)
        if a.showarrow:
            y -= a.ay  # (ay: px downwards to the name)
        left = {"left": x, "right": x - w}.get(a.xanchor, x - w / 2)
        bottom = {"bottom": y, "top": y - h}.get(a.yanchor, y - h / 2)
        boxes.append((" ".join(lines), bool(a.showarrow), left, left + w, bottom, bottom + h))
    return boxes


@pytest.mark.parametrize("case", list(VENNS))
@pytest.mark.parametrize("window", list(WIDTHS))
def test_venn_names_stay_inside_their_chart_and_apart(case, window):
    """At 1024 px the names beside the circles ran past the chart's edges ("Δ grpo-s0" 10 px past the left one,
    "Δ grpo-s1" past the right one), and a two-set Venn's names, each centred above its circle, covered each other.
    Every name now lies inside the chart (not in the title above the plot), and no two names share a pixel."""
    fig = VENNS[case]()
    width, m = WIDTHS[window], fig.layout.margin
    plot_w, plot_h = width - m.l - m.r, fig.layout.height - m.t - m.b
    boxes = _name_boxes(fig, width)
    assert len(boxes) == len(fig.layout.shapes)  # a name for each circle
    for text, leader, left, right, bottom, top in boxes:
        assert -plot_w / 2 - m.l <= left and right <= plot_w / 2 + m.r, (text, left, right, plot_w)
        if not leader:  # (a leader's name: its own test, test_venn_names_two_small_circles_apart_and_as_text)
            assert top <= plot_h / 2 and bottom >= -plot_h / 2 - m.b, (text, bottom, top, plot_h)
    names = [b for b in boxes if not b[1]]
    for i, (t1, _, l1, r1, b1, u1) in enumerate(names):
        for t2, _, l2, r2, b2, u2 in names[i + 1 :]:
            assert r1 <= l2 or r2 <= l1 or u1 <= b2 or u2 <= b1, (t1, t2)


def test_venn_names_sit_above_or_below_their_circles():
    """Never beside a circle (where a name ran off the chart): above it or below it, and the two-set names centred
    on their circles (as tests/unit/test_figures.py asks)."""
    for case in ("zoo, three seeds", "comparable sets", "zoo, a saved mask"):
        assert {a.yanchor for a in VENNS[case]().layout.annotations} <= {"top", "bottom"}, case
    two = VENNS["zoo, two seeds"]()
    assert [(a.xanchor, a.yanchor) for a in two.layout.annotations] == [("center", "bottom")] * 2
    shifts = sorted(abs(a.yshift) for a in two.layout.annotations)
    assert shifts[0] == 0 < shifts[1]  # one in place, one stacked above it


@pytest.mark.parametrize("window", list(WIDTHS))
def test_venn3_subtitle_fits_the_chart(window):
    """The layout's accuracy and error on two short subtitle lines ("… area = 5.0%" lost "of union" at 1024)."""
    fig = VENNS["zoo, three seeds"]()
    head, subs = _title_lines(fig)
    assert head == "Overlap (area-proportional)" and len(subs) == 2
    assert subs[0].startswith("layout accuracy") and subs[1].endswith("% of union")
    assert _fits(fig, WIDTHS[window]), subs
    assert fig.layout.margin.t >= 56 + 18 * 2  # room for both lines


# --- 2. Behaviour's revert chart ------------------------------------------------------------------------------
CURVES = pd.DataFrame(
    {
        "model": ["m"] * 4,
        "order": ["abs_delta", "abs_delta", "random", "random"],
        "fraction_reverted": [0.0, 1.0, 0.0, 1.0],
        "kl_forward": [1e-3, 0.0, 1e-3, 0.0],
        "kl_reverse": [1e-3, 0.0, 1e-3, 0.0],
        "accuracy": [0.25, 0.5, 0.25, 0.5],
    }
)


@pytest.mark.parametrize("value", list(B.MEASURE))
def test_revert_curve_title_fits_a_half_width_chart_at_1024(value):
    """ "Forward KL(π_base ‖ π) against the share of Δ reverted" on one line was cut at "against the sha"; its
    x-axis title, "share of changed entries reverted to the base (%)", lost its start. Two short lines now, the
    measure first; and an axis title that fits the plot beside the legend."""
    fig = B.revert_curves(CURVES, value=value)
    head, subs = _title_lines(fig)
    assert head.startswith(B.MEASURE[value]) and " ".join([head, *subs]).endswith("the share of Δ reverted to the base")
    assert _fits(fig, WIDTHS[1024]), (head, subs)
    assert len(fig.layout.xaxis.title.text) <= 24, fig.layout.xaxis.title.text


# --- 3. Spectra › Subspaces -----------------------------------------------------------------------------------
ANGLES = pd.DataFrame({"layer": [0, 0], "module": ["q", "k"], "angle_left_max": [1.0, 2.0], "angle_right_max": [3, 4]})


@pytest.mark.parametrize("side", ["left", "right"])
def test_angle_heatmap_title_keeps_its_unit_on_a_short_first_line(side):
    """The default title: "(°)" on a first line that fits a half-width chart even at 1024 px."""
    fig = S.angle_heatmap(ANGLES, side=side)
    head, subs = _title_lines(fig)
    assert head == "Largest principal angle (°)" and subs == [f"top-K {side} singular subspaces"]
    assert _fits(fig, WIDTHS[1024])


@pytest.mark.slow
def test_spectra_subspaces_right_title_fits_at_1400(app_env):
    """The page's own title, side right: it lost "(°)" at 1400 px; now the unit is on a short first line, the
    subspaces, the model and K on the second."""
    from tests.app_fixtures import open_page, plotly_specs

    at = open_page("spectra", spec_tab="Subspaces of W_base vs W_ft", sub_k="4", sub_side="right")
    assert not at.exception, [e.message for e in at.exception]
    (spec,) = [s for s in plotly_specs(at) if "principal angle (°)" in s["layout"]["title"]["text"]]
    head, *subs = spec["layout"]["title"]["text"].split("<br>")
    assert _plain(head) == "Largest principal angle (°)"
    assert len(subs) == 1 and re.fullmatch(r"top-K right singular subspaces · .+, K = 4", _plain(subs[0])), subs
    for window in (1024, 1400):  # (the model's name: the test zoo's)
        assert (
            4 + TITLE_PX * len(_plain(head)) <= WIDTHS[window] and 4 + SUB_PX * len(_plain(subs[0])) <= WIDTHS[window]
        )
