"""Exports, third review: the figure for a paper and the tables of the HTML export.

A figure whose builder put a horizontal legend under the plot (the Series chart, overlaid training runs) got the key
of its cut legend names printed over the legend's rows, and a run's long title (name · run id) ran past the file's
right edge; both are measured on the file itself (kaleido and Debian's Chromium). The export wrote a share under 1 %
with two decimals of a percent (0.09 % for 0.0854 %, beside a × chance that said otherwise): three significant
digits now, the same text as the app's table, from one rule (:mod:`subnetviz.report.formats`).
"""

from __future__ import annotations

import html
import io
import os
import re

import numpy as np
import pandas as pd
import pytest

from subnetviz.figures.series import series_lines, training_curves

needs_chromium = pytest.mark.skipif(not os.access("/usr/bin/chromium", os.X_OK), reason="needs Debian chromium")

# the demo zoo's runs as the Training page names them: longer than a legend name may be in a file (40 characters)
RUNS = [
    "demo zoo 0f834756: grpo-s0 (GRPO seed 0 on A (with checkpoint series)) · zoo-0f834756-grpo-s0-1796581427",
    "demo zoo 0f834756: grpo-s1 (GRPO seed 1 on A) · zoo-0f834756-grpo-s1-1796581427",
    "demo zoo 0f834756: dpo (DPO on on-policy pairs from A) · zoo-0f834756-dpo-1796581427",
]
TITLE = "Run demo zoo 0f834756: grpo-s0 (GRPO seed 0 on A (with checkpoint series)) · zoo-0f834756-grpo-s0-1796581427"


def _series():
    """The Series page's "Checkpoint series" chart: its own third line's name (65 characters) is cut in a file."""
    steps = np.arange(12, 101, 12)
    return series_lines(
        pd.DataFrame(
            {
                "step": steps,
                "vs_first": np.linspace(0.92, 0.68, len(steps)),
                "vs_previous": np.linspace(0.92, 0.89, len(steps)),
                "back_to_start": np.linspace(0.0, 0.02, len(steps)),
            }
        ),
        first="base",
    )


def _training(runs: list[str]):
    """Training curves of ``runs`` overlaid (four metrics: two rows of small multiples), titled as the page does."""
    rng = np.random.default_rng(0)
    rows = [
        {"step": s, "metric": m, "value": float(rng.random()), "run": r}
        for r in runs
        for m in ("loss", "reward", "grad_norm", "entropy")
        for s in range(0, 101, 5)
    ]
    return training_curves(pd.DataFrame(rows), title=TITLE)


def _translate(tag: str) -> tuple[float, float]:
    m = re.search(r"translate\(([-0-9.]+),\s*([-0-9.]+)\)", tag)
    return (float(m.group(1)), float(m.group(2))) if m else (0.0, 0.0)


def _boxes(svg: str) -> tuple[tuple[float, float], tuple[float, float] | None, float]:
    """The legend's box and the key of full names' box (top, bottom) in the figure, read from the SVG as the review
    read them, and the figure's height. The key: the annotation that names cut names ("cut = full name")."""
    height = float(re.search(r'<svg[^>]*height="([0-9.]+)"', svg).group(1))
    start = svg.index('<g class="legend"')
    _, ly = _translate(svg[start : svg.index(">", start)])
    lh = float(re.search(r'<rect class="bg"[^>]*height="([0-9.]+)"', svg[start:]).group(1))
    keys = [a for a in re.findall(r'<g class="annotation".*?</g></g></g>', svg, re.S) if " = " in a]
    if not keys:
        return (ly, ly + lh), None, height
    _, ky = _translate(re.search(r'<g class="cursor-pointer"[^>]*>', keys[0]).group(0))
    kh = float(re.search(r'<rect class="bg"[^>]*height="([0-9.]+)"', keys[0]).group(1))
    return (ly, ly + lh), (ky, ky + kh), height


def _title(svg: str) -> tuple[str, float, float]:
    """The title's text (its lines joined by spaces), its first line's baseline and its last line's, from the SVG."""
    m = re.search(
        r'<text class="gtitle"[^>]*y="([-0-9.]+)"[^>]*style="[^"]*font-size: ([0-9.]+)px[^"]*"[^>]*>(.*?)</text>',
        svg,
        re.S,
    )
    y, size, body = float(m.group(1)), float(m.group(2)), m.group(3)
    lines = re.findall(r"<tspan class=\"line\"[^>]*>(.*?)</tspan>", body, re.S) or [body]
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", line)) for line in lines)
    return text, y, y + 1.3 * size * (len(lines) - 1)


def _annotation_tops(svg: str, texts: set[str]) -> list[float]:
    """The top (px) of each annotation whose text is one of ``texts`` (the small multiples' titles)."""
    tops = []
    for a in re.findall(r'<g class="annotation".*?</g></g></g>', svg, re.S):
        text = re.search(r'<text class="annotation-text"[^>]*>(.*?)</text>', a, re.S)
        if text and re.sub(r"<[^>]+>", "", text.group(1)) in texts:
            tops.append(_translate(re.search(r'<g class="cursor-pointer"[^>]*>', a).group(0))[1])
    return tops


def _ink_at_right_edge(png: bytes, columns: int = 4) -> int:
    """How many pixels of the image's last ``columns`` columns are not the white paper (text cut at the edge)."""
    from PIL import Image

    im = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    return int((im[:, -columns:] < 230).sum())


@needs_chromium
@pytest.mark.parametrize("build", [_series, lambda: _training(RUNS)], ids=["series_lines", "training_curves"])
def test_the_key_of_cut_names_goes_under_a_horizontal_legend_not_over_it(build):
    """The Series chart's legend (y = -0.2 of the plot) and the training runs' (at the figure's bottom) are
    horizontal from their builders: the key was placed at the bottom margin, inside the legend's rows (17 px and
    45 px of overprinted text). The key starts under the legend's last row, and both are inside the figure."""
    from subnetviz.report.static import figure_bytes

    fig = build()
    svg = figure_bytes(fig, "svg").decode()
    (ltop, lbottom), key, height = _boxes(svg)
    assert key is not None, "a name is cut: the key names it in full"
    ktop, kbottom = key
    assert ktop >= lbottom - 0.5, f"key {ktop:.1f}..{kbottom:.1f} over the legend {ltop:.1f}..{lbottom:.1f}"
    assert kbottom <= height + 0.5 and lbottom <= height + 0.5, (lbottom, kbottom, height)
    # the legend keeps every entry (cut names included), the key names each cut one in full
    legend = svg[svg.index('<g class="legend"') :]
    shown = [html.unescape(t) for t in re.findall(r'<text class="legendtext"[^>]*>(.*?)</text>', legend)]
    assert len(shown) == len([t for t in fig.data if t.showlegend is not False and t.name])
    texts = html.unescape(" ".join(re.sub(r"<[^>]+>", " ", t) for t in re.findall(r"<text[^>]*>(.*?)</text>", svg)))
    long = [t.name for t in fig.data if t.name and len(t.name) > 40 and t.showlegend is not False]
    assert long and all(n.replace(" ", "") in texts.replace(" ", "") for n in long)


@needs_chromium
@pytest.mark.parametrize("runs", [RUNS, RUNS[:1]], ids=["overlaid", "one run"])
def test_a_long_title_is_wrapped_to_the_file_s_width(runs):
    """The run's title (name · run id, 110 characters) ran past the file's right edge (900 px): the page has the
    room, the file has not. It is wrapped: nothing drawn at the right edge, every word there, its lines above the
    small multiples' titles."""
    from subnetviz.report.static import figure_bytes

    fig = _training(runs)
    png = figure_bytes(fig, "png")
    assert _ink_at_right_edge(png) == 0
    svg = figure_bytes(fig, "svg").decode()
    text, first, last = _title(svg)
    assert text == html.unescape(TITLE)
    assert first > 0 and last + 6 < min(_annotation_tops(svg, {"loss", "reward", "grad_norm"})), (first, last)
    assert fig.layout.title.text == TITLE  # the page's figure is left as it was


def test_a_short_title_and_a_legend_above_the_plot_are_left_where_the_builder_put_them():
    """Only what needs it changes: a title that fits keeps its place and size, a horizontal legend above the
    plot (the Drivers panels') is not moved under it."""
    import plotly.graph_objects as go

    from subnetviz.report.static import lay_out_for_file

    laid, height = lay_out_for_file(_series(), 900, 500)
    assert laid.layout.title.text == _series().layout.title.text and laid.layout.title.y is None
    fig = go.Figure([go.Scatter(x=[1, 2], y=[1, 2], name=n) for n in ("a", "b")])
    fig.update_layout(title="t", legend={"orientation": "h", "yanchor": "bottom", "y": 1.12}, margin={"b": 60})
    laid, height = lay_out_for_file(fig, 900, 500)
    assert laid.layout.legend.y == 1.12 and height == 500


# ---------------------------------------------------------------- shares under 1 % in the export


def _overlap_frame() -> pd.DataFrame:
    """The Bigram page's Overlap table on the zoo's numbers (378 of 442,368 weights in both masks)."""
    from subnetviz.bigram.locate import OverlapReport

    return OverlapReport(
        n_total=442_368,
        kept0=3_900,
        kept1=5_300,
        shared=378,
        overlap=378 / 442_368,
        expected_uniform=2.346e-5,
        expected_rows=1.345e-4,
        p_uniform=0.0,
        p_rows=0.0,
        share_of_0_in_1=378 / 3_900,
        null_uniform=np.zeros(3),
        null_rows=np.zeros(3),
    ).to_frame()


def _exported_rows(frame: pd.DataFrame) -> list[dict[str, str]]:
    """The table's rows as the HTML export writes them (the export button's build_report), header -> cell text."""
    from subnetviz.report.html import ReportSection, build_report

    page = build_report("t", [ReportSection("Bigram", tables=[("Overlap", frame)])])
    body = page[page.index('<table class="data">') :]
    heads = [html.unescape(c) for c in re.findall(r'<th class="(?:num|txt)">(.*?)</th>', body)]
    cells = [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", body)]
    return [dict(zip(heads, cells[i : i + len(heads)], strict=True)) for i in range(0, len(cells), len(heads))]


def _percent(text: str) -> float:
    assert text.endswith(" %"), text
    return float(text[:-2].replace(",", ""))


def test_the_exported_overlap_table_keeps_three_significant_digits_of_small_shares():
    """The export wrote 0.09 % (overlap, 0.0854 %) against 0.01 % expected (0.01345 %): about 9×, beside the
    table's own 6.35× chance. Each share under 1 % keeps three significant digits (checked against Python's own
    3-significant-digit rounding), and the exported overlap over the exported expectation is the × chance shown."""
    frame = _overlap_frame()
    uniform, rows = _exported_rows(frame)
    for row, x in zip((uniform, rows), frame.itertuples(), strict=True):
        assert row["overlap"] == f"{100 * x.overlap:.3g} %" == "0.0854 %"
        assert row["share_of_0_in_1"] == "9.69 %"  # from 1 %: two decimals, as before
        ratio = _percent(row["overlap"]) / _percent(row["expected_overlap"])
        chance = float(row["x_chance"].rstrip("×"))
        assert ratio == pytest.approx(chance, rel=0.01), (row, ratio)
    assert rows["expected_overlap"] == f"{100 * 1.345e-4:.3g} %"
    assert uniform["expected_overlap"] == "2.346e-3 %"  # under 0.01 %: e-notation, as before


def test_the_app_s_table_shows_the_export_s_text():
    """One rule for both: the app's table (display_frame, then the Styler's text for small-share columns) writes
    the cells the export writes; the page no longer needs a column config of its own for them."""
    from subnetviz.report.formats import display_frame, formatted_frame
    from subnetviz.ui import styled

    frame = _overlap_frame()
    shown, fmts = display_frame(frame)
    data, texts = styled(shown, fmts)
    assert {"overlap", "expected_overlap"} <= texts
    cells = data._translate(False, False)["body"]
    exported = formatted_frame(frame)
    for j, c in enumerate(frame.columns):
        if c in texts:
            assert [cells[i][j + 1]["display_value"] for i in range(len(frame))] == list(exported[c]), c


@pytest.mark.parametrize("x", [8.5449e-4, 1.345e-4, 0.0099949, 0.0012345, -0.0031416, 1.0e-4, 2.0e-4, 0.001])
def test_a_share_under_1_percent_never_loses_a_digit(x):
    """Every share under 1 % reads back within half a unit of its third significant digit (two decimals read 0.09
    for 0.0854, 0.00 % below 0.005 %); trailing zeros go down to two decimals (0.10 %, not 0.100 %)."""
    from subnetviz.report.formats import formatted_frame

    col = formatted_frame(pd.DataFrame({"overlap": [x, 0.5, 0.0]}))["overlap"]
    text, half, zero = col
    p = 100 * x
    assert abs(_percent(text) - p) <= 0.5 * 10.0 ** (np.floor(np.log10(abs(p))) - 2) * (1 + 1e-9), (x, text)
    assert len(text[:-2].split(".")[1]) >= 2 and (text[-3] != "0" or len(text[:-2].split(".")[1]) == 2), text
    assert half == "50.00 %" and zero == "0 %"


def test_a_mean_and_sd_fit_a_metric_without_hiding_a_number():
    """Bigram's "r random": "0.630 ± 3.82e-03" was cut by the metric's width to "0.630 ± 3.82…"."""
    from subnetviz.figures import format_mean_sd

    assert format_mean_sd(0.6302, 0.00382) == "0.630 ± 0.004"
    assert format_mean_sd(0.6302, 0.0004) == "0.630 ± < 0.001"  # (not "± 0.000", as if there were no spread)
    assert format_mean_sd(0.6302, 0.0) == "0.630 ± 0.000"
    assert format_mean_sd(0.98812, 0.0125) == "0.988 ± 0.013"
    assert format_mean_sd(2.5e-4, 1e-5) == "2.50e-04 ± 1.00e-05"
    assert format_mean_sd(0.5, float("nan")) == "0.500 ± —"
    assert len(format_mean_sd(0.6302, 0.00382)) <= 13
