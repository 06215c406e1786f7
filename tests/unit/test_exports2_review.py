"""Exports, second review: what leaves the app as a file.

A publication figure shows every legend entry (a file cannot scroll: 16 models showed 12) and keeps its plot when a
model's name is 200 characters long (cut in the legend, written in full under the chart); a figure that cannot be
rendered says why in one line, naming what to install and never Chrome's download script; the Overlap matrices'
cut labels stay distinct (names that differ in the middle read alike) and name the masks in full in the figure."""

from __future__ import annotations

import html
import os
import re
import sys

import pandas as pd
import pytest

from subnetviz import figures
from subnetviz.figures.overlap import distinct_cuts

needs_chromium = pytest.mark.skipif(not os.access("/usr/bin/chromium", os.X_OK), reason="needs Debian chromium")


def _sweep(names: list[str]):
    """Update sparsity's tolerance sweep as the page builds it, one line per name."""
    rows = [
        {"model": m, "tolerance": t, "sparsity": s + 0.002 * i}
        for i, m in enumerate(names)
        for t, s in ((0, 0.3), (1e-8, 0.31), (1e-6, 0.5), (1e-5, 0.7), (1e-4, 0.9))
    ]
    return figures.tolerance_sweep(pd.DataFrame(rows))


def _ulps(names: list[str]):
    rows = [{"model": m, "bin": b, "count": 10 + i + k} for i, m in enumerate(names) for k, b in enumerate("0123")]
    return figures.ulp_histogram(pd.DataFrame(rows))


def _translate(tag: str) -> tuple[float, float]:
    m = re.search(r'transform="translate\(([-0-9.]+),\s*([-0-9.]+)\)', tag)
    return (float(m.group(1)), float(m.group(2))) if m else (0.0, 0.0)


def _legend(svg: str) -> tuple[dict[str, tuple[float, float]], tuple[float, float, float, float], tuple[float, float]]:
    """The SVG's legend read by hand: each entry's text -> its (x, y) in the figure, the legend box (x, y, width,
    height) in the figure, and the figure's (width, height)."""
    size = re.search(r'<svg[^>]*width="([0-9.]+)" height="([0-9.]+)"', svg)
    start = svg.index('<g class="legend"')
    lx, ly = _translate(svg[start : svg.index(">", start)])
    body = svg[start:]
    box = re.search(r'<rect class="bg"[^>]*width="([0-9.]+)" height="([0-9.]+)"', body)
    entries, group = {}, (0.0, 0.0)
    for m in re.finditer(
        r'<g class="groups"( transform="[^"]*")?>|<g class="traces"( transform="[^"]*")?[^>]*>'
        r'<text class="legendtext"[^>]*>(.*?)</text>',
        body,
    ):
        if m.group(0).startswith('<g class="groups"'):  # the entries after it are in this group
            group = _translate(m.group(1) or "")
            continue
        tx, ty = _translate(m.group(2) or "")
        text = html.unescape(re.sub(r"<[^>]+>", "", m.group(3)))
        entries[text] = (lx + group[0] + tx, ly + group[1] + ty)
    return entries, (lx, ly, float(box.group(1)), float(box.group(2))), (float(size.group(1)), float(size.group(2)))


def _plot_area(svg: str) -> tuple[float, float]:
    m = re.search(r'<clipPath id="clip[^"]*xyplot" class="plotclip"><rect width="([0-9.]+)" height="([0-9.]+)"', svg)
    return float(m.group(1)), float(m.group(2))


def _texts(svg: str) -> str:
    """Every text of the SVG, its lines joined by spaces (a wrapped line is one text again)."""
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", t) for t in re.findall(r"<text[^>]*>(.*?)</text>", svg)))


@needs_chromium
@pytest.mark.parametrize(("n", "build"), [(16, _sweep), (32, _sweep), (32, _ulps), (8, _sweep)])
def test_a_publication_figure_shows_every_legend_entry(n, build):
    """16 models: the file's legend showed 12 entries, the other 4 lines named by nothing (the browser's legend
    scrolls, a file cannot). Every entry is drawn inside the legend box, and the box inside the figure."""
    from subnetviz.report.static import figure_bytes

    names = [f"grpo-lr1e-6-seed{i}" for i in range(n)]
    svg = figure_bytes(build(names), "svg").decode()
    entries, (bx, by, bw, bh), (fw, fh) = _legend(svg)
    assert sorted(entries) == sorted(names)
    for name, (x, y) in entries.items():
        assert bx <= x <= bx + bw and by <= y <= by + bh, (name, x, y, (bx, by, bw, bh))
    assert bx >= 0 and by >= 0 and bx + bw <= fw + 1 and by + bh <= fh + 1, ((bx, by, bw, bh), (fw, fh))
    pw, ph = _plot_area(svg)
    assert pw >= 500 and ph >= 300  # the plot keeps its room


@needs_chromium
@pytest.mark.parametrize("n", [8, 32])
def test_a_long_model_name_is_cut_in_the_legend_and_written_in_full_under_the_chart(n):
    """A 200-character folder name took the file's whole width: the plot was a sliver and the x axis title cut off.
    In the legend it is cut (the others stay whole); the full name is in the figure's text."""
    from subnetviz.report.static import figure_bytes

    long = "finetune-" + "x" * 90 + "-middle-" + "y" * 93
    assert len(long) == 200
    names = [f"grpo-lr1e-6-seed{i}" for i in range(n - 1)] + [long]
    svg = figure_bytes(_sweep(names), "svg").decode()
    entries, _, (fw, fh) = _legend(svg)
    assert len(entries) == n and all(e in entries for e in names[:-1])
    (cut,) = set(entries) - set(names)
    assert len(cut) <= 41 and cut.startswith("finetune-") and "…" in cut
    assert long in _texts(svg).replace(" ", "")  # (its wrapped lines joined)
    pw, ph = _plot_area(svg)
    assert pw >= 450 and ph >= 300, (pw, ph)
    assert "absolute tolerance" in _texts(svg)


def test_the_page_s_figure_is_left_as_it_is():
    """The file is laid out on a copy: the chart on the page keeps its legend and names (and its hover)."""
    from subnetviz.report.static import lay_out_for_file

    long = "z" * 120
    fig = _sweep([f"m{i}" for i in range(31)] + [long])
    laid, height = lay_out_for_file(fig, 900, 500)
    assert height > 500 and laid.layout.legend.orientation == "h"
    assert fig.layout.legend.orientation is None and fig.layout.height is None
    assert [t.name for t in fig.data if t.showlegend is not False][-1] == long


def test_figure_files_say_in_one_line_what_is_missing(monkeypatch):
    """Without kaleido, or with BROWSER_PATH naming no browser, the reason is one line naming what to install."""
    from subnetviz.report.static import StaticExportError, figure_bytes, unavailable

    fig = _sweep(["a", "b"])
    monkeypatch.setitem(sys.modules, "kaleido", None)  # import kaleido raises ImportError
    why = unavailable()
    assert why is not None and "kaleido" in why and "\n" not in why
    with pytest.raises(StaticExportError, match="kaleido"):
        figure_bytes(fig, "svg")
    monkeypatch.delitem(sys.modules, "kaleido")
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")
    why = unavailable()
    assert why is not None and "/nonexistent/chromium" in why and "apt-get install chromium" in why
    assert "\n" not in why and "get_chrome" not in why


@pytest.mark.skipif(not os.access("/bin/false", os.X_OK), reason="needs /bin/false")
def test_a_browser_that_does_not_start_is_one_line_without_chrome_s_download_advice(monkeypatch):
    """Kaleido's own message ran over several lines and told one to run `choreo_get_chrome` / `plotly_get_chrome`
    (downloads Chrome): the error names the browser that failed and what to install instead, in one line."""
    from subnetviz.report.static import StaticExportError, figure_bytes

    monkeypatch.setenv("BROWSER_PATH", "/bin/false")  # a program that exits at once: no browser starts
    with pytest.raises(StaticExportError) as info:
        figure_bytes(_sweep(["a", "b"]), "svg")
    text = str(info.value)
    assert "\n" not in text and "get_chrome" not in text and "download" not in text.lower()
    assert "/bin/false" in text and "apt-get install chromium" in text


# ---------------------------------------------------------------- distinct cut labels (Overlap's matrices)

RUNS = ["Δ llama-ft-lr1e-5-seed1-step1000", "Δ llama-ft-lr2e-5-seed1-step1000", "Δ llama-ft-lr3e-5-seed1-step1000"]


def _pieces_in_order(cut: str, full: str) -> bool:
    """Whether ``cut`` is pieces of ``full``, in order, joined by "…" (and nothing else)."""
    at = 0
    for piece in cut.split("…"):
        found = full.find(piece, at)
        if found < 0:
            return False
        at = found + len(piece)
    return True


def test_cut_labels_of_names_that_differ_in_the_middle_stay_distinct():
    """Cut plainly, the three runs all read "Δ llama-ft-lr…ed1-step1000"."""
    cuts = distinct_cuts(RUNS, 24)
    assert len(set(cuts)) == 3
    assert [c[c.index("lr") : c.index("lr") + 3] for c in cuts] == ["lr1", "lr2", "lr3"]  # the part that differs
    assert all(len(c) <= 28 and _pieces_in_order(c, full) for c, full in zip(cuts, RUNS, strict=True))
    grid = [f"llama-ft-lr{a}e-5-seed{s}-step1000" for a in range(1, 4) for s in range(12)]  # 36 runs, 2 factors
    cuts = distinct_cuts(grid, 24)
    assert len(set(cuts)) == len(grid) and all(_pieces_in_order(c, f) for c, f in zip(cuts, grid, strict=True))
    assert distinct_cuts(["short", "x" * 30], 24)[0] == "short"  # a short label is left as it is


def test_equal_names_get_their_place():
    first, other, second = distinct_cuts(["a" * 40, "b", "a" * 40], 24)
    assert other == "b" and first.endswith(" #1") and second.endswith(" #3")
    assert first[:-3] == second[:-3] and _pieces_in_order(first[:-3], "a" * 40) and len(first) <= 28


def test_the_pairwise_matrix_s_rows_read_apart_and_name_the_masks_in_full():
    """A publication figure of the matrix (no hover) showed three rows labelled alike: the tick texts differ, and
    the full names are in the figure, under its x axis."""
    rows = [
        {"a": a, "b": b, "o1": 0.5, "o1_chance": 0.2}
        for i, a in enumerate(RUNS + ["a<b>&c" + "z" * 40])
        for b in (RUNS + ["a<b>&c" + "z" * 40])[i + 1 :]
    ]
    fig = figures.pairwise_matrix(pd.DataFrame(rows), "o1")
    ticks = [html.unescape(t) for t in fig.layout.yaxis.ticktext]
    assert len(set(ticks)) == 4 and list(fig.layout.xaxis.ticktext) == list(fig.layout.yaxis.ticktext)
    assert ticks[3].startswith("a<b>&c") and len(ticks[3]) <= 24  # cut on the text, markup escaped after
    title = html.unescape(re.sub(r"<[^>]+>", " ", fig.layout.xaxis.title.text))
    assert title.startswith("column mask")
    for tick, full in zip(ticks, RUNS + ["a<b>&c" + "z" * 40], strict=True):
        assert f"{tick} = {full}" in title
    assert fig.layout.height > max(380, 160 + 60 * 4)  # the key's lines have their room
    one = figures.pairwise_matrix(pd.DataFrame([{"a": "x", "b": "y", "o1": 0.5, "o1_chance": 0.2}]), "o1")
    assert one.layout.xaxis.title.text == "column mask"  # nothing cut: no key


def test_upset_rows_of_names_that_differ_in_their_middle_read_apart_and_are_named_in_full():
    """UpSet's rows were cut in the middle to 24 characters: three runs differing only in their lr read as one
    label, and a figure file has no hover to tell them apart."""
    import itertools

    import pandas as pd

    from subnetviz.figures.sets import upset

    labels = [f"llama-ft-lr{i}e-5-seed1-step1000" for i in (1, 2, 3)]
    rows = [{"members": c, "count": 10 * r} for r in range(1, 4) for c in itertools.combinations(labels, r)]
    fig = upset(pd.DataFrame(rows), labels)
    ticks = [ax.ticktext for ax in fig.select_yaxes() if ax.ticktext]
    assert len(ticks) == 1 and len(set(ticks[0])) == 3
    title = next(ax.title.text for ax in fig.select_xaxes() if ax.title.text and ax.title.text.startswith("set size"))
    lines = [re.sub(r"<[^>]+>", "", line) for line in title.split("<br>")[1:]]
    key = "".join("".join(lines).split())  # (wrapped at spaces and hyphens)
    assert all(f"={name}" in key for name in labels)
    # the key is the title of the narrow set-size panel, centred under it: lines of up to 90 characters ran past the
    # chart's left edge at 1024 px (a half-width chart); the Venn's 42 fit
    assert lines and max(map(len, lines)) <= 42, lines
