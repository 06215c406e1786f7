"""Publication figures: a Plotly figure as SVG, PDF or PNG, rendered server-side by kaleido.

Kaleido (v1) drives a Chrome/Chromium it finds; on these machines that is Debian's
``/usr/bin/chromium`` (``BROWSER_PATH`` overrides it). The figure keeps the page's look (template,
colours, fonts); only its size is fixed, so the file is the same whatever the browser window was. A file
cannot scroll or hover, so its legend is laid out to show every entry (:func:`lay_out_for_file`), and legend names cut
short are named in full under the chart.
"""

from __future__ import annotations

import html
import math
import os
import re
import shutil
import threading

from subnetviz.errors import SubnetvizError

FORMATS = {"svg": "image/svg+xml", "pdf": "application/pdf", "png": "image/png"}
SYSTEM_CHROMIUM = "/usr/bin/chromium"
# Each render starts a browser of its own (about 5 processes): at most this many at once in the server, the
# other visitors' downloads wait their turn
_RENDERS = threading.BoundedSemaphore(2)
LEGEND_NAME = 40  # legend names longer than this are cut in a file; the full names are written under the chart
# Plotly's legend at its default 12 px font: an entry's height, the gap between legend groups, the box's padding;
# and a text width per character that is on the wide side for its sans-serif font
_ROW, _GROUP_GAP, _PAD, _CHAR = 19, 10, 10, 7.0
_SYMBOL = 45  # a horizontal legend entry's line sample and spacing, beside its text (Plotly's entrywidth)
_KEY_ROW = 15  # a line of the key of full names, at 11 px
# traces that Plotly puts in the legend unless told not to (heatmaps, tables and the like it leaves out)
_LEGEND_TYPES = {"scatter", "scattergl", "bar", "box", "violin", "histogram", "scatterpolar", "funnel", "waterfall"}


class StaticExportError(SubnetvizError):
    """The figure could not be rendered to a file (kaleido or a browser missing)."""


def _browser() -> str | None:
    """The Chrome/Chromium kaleido will start: ``BROWSER_PATH`` where set (None when it names no program: kaleido
    then failed with its advice to download Chrome), else Debian's, else one on ``PATH``; None when there is none."""
    if os.environ.get("BROWSER_PATH"):
        given = os.environ["BROWSER_PATH"]
        return given if os.path.isfile(given) and os.access(given, os.X_OK) else None
    found = SYSTEM_CHROMIUM if os.access(SYSTEM_CHROMIUM, os.X_OK) else None
    return found or shutil.which("chromium") or shutil.which("google-chrome")


def unavailable() -> str | None:
    """Why figure files cannot be made on this server, in one line (kaleido or a browser missing); None when
    they can. Cheap: what a page checks before it offers the download."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "Figure files need kaleido, which is not installed: pip install -r requirements.txt."
    if _browser() is None:
        given = os.environ.get("BROWSER_PATH")
        where = f"BROWSER_PATH={given} is not a browser that can run; " if given else ""
        return (
            f"Figure files need Chromium for kaleido: {where}install Debian's chromium (apt-get install chromium) "
            "or set BROWSER_PATH to a Chrome/Chromium."
        )
    return None


def figure_bytes(fig, fmt: str = "svg", scale: float = 1.0, width: int = 900, height: int | None = None) -> bytes:
    """``fig`` (a ``go.Figure``) as ``fmt`` bytes; ``scale`` multiplies the pixel size (PNG resolution).

    The figure is laid out for a file first (:func:`lay_out_for_file`): ``height`` (else the figure's own, else 500)
    grows where its legend needs the room. Raises :class:`StaticExportError` with one line saying why."""
    if fmt not in FORMATS:
        raise StaticExportError(f"unknown figure format {fmt!r}; choose one of {sorted(FORMATS)}.")
    why = unavailable()
    if why is not None:
        raise StaticExportError(why)
    browser = _browser()
    os.environ.setdefault("BROWSER_PATH", browser)
    laid, h = lay_out_for_file(fig, width, height or int(fig.layout.height or 500))
    for attempt in range(3):  # kaleido's fresh browser tab sometimes runs before its script loaded (under load)
        try:
            with _RENDERS:
                return laid.to_image(format=fmt, width=width, height=h, scale=scale)
        except Exception as exc:  # kaleido raises its own JavascriptError/ChromeNotFound types
            if attempt == 2 or _browser_failed(exc):
                raise StaticExportError(f"could not render the figure as {fmt}: {_reason(exc, browser)}") from exc
    raise AssertionError("unreachable")


def _browser_failed(exc: Exception) -> bool:
    """Whether kaleido's error is about the browser (not starting, not found): trying again would not help."""
    return any(w in type(exc).__name__ for w in ("Browser", "Chrome")) or "Chrome" in str(exc)


def _reason(exc: Exception, browser: str | None) -> str:
    """Kaleido's error in one line. Its own text runs over several lines and tells one to download Chrome
    (``plotly_get_chrome``, ``choreo_get_chrome``), which this offline tool does not do: a browser that failed
    is named with what to install instead."""
    if _browser_failed(exc):
        return (
            f"the browser {browser} did not start for kaleido; install Debian's chromium (apt-get install "
            "chromium) or set BROWSER_PATH to a working Chrome/Chromium."
        )
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip() and "get_chrome" not in line]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _in_legend(trace) -> bool:
    """Whether Plotly draws ``trace`` in the legend (a table or a heatmap has no entry unless told)."""
    said = getattr(trace, "showlegend", None)
    return bool(said) or (said is None and trace.type in _LEGEND_TYPES and getattr(trace, "visible", True) is not False)


def lay_out_for_file(fig, width: int = 900, height: int = 500):
    """A copy of ``fig`` laid out for a file ``width`` px wide, and its height (``height`` or more).

    In the browser a long legend scrolls; a file cut it at the figure's bottom edge, so 16 models showed 12
    legend entries and nothing said which lines the others were. A vertical legend that does not fit beside the
    plot moves under it, in as many columns as its names allow, and the figure grows by its rows (the plot keeps
    its size). A horizontal legend the builder put under the plot stays where it put it, its first row there, and
    the figure grows by the rows it takes at the file's width. A legend name longer than :data:`LEGEND_NAME`
    characters (a 200-character folder name took the whole width and left the plot a sliver) is cut in the middle,
    the cuts kept distinct, and the full names are written under the legend (they were printed over a horizontal
    legend's rows). A title longer than the file is wide is wrapped (:func:`_fit_title`): it was cut at the edge."""
    import plotly.graph_objects as go

    from subnetviz.figures.overlap import cut_labels

    out = go.Figure(fig)
    margin = out.layout.margin
    top, bottom = margin.t if margin.t is not None else 100, margin.b if margin.b is not None else 80
    left, right = margin.l if margin.l is not None else 80, margin.r if margin.r is not None else 80
    plot = max(50, height - top - bottom)  # the plot area's height, kept as it is
    title_top, head = _fit_title(out, width, top)
    entries = [t for t in out.data if _in_legend(t)]
    shown = out.layout.showlegend if out.layout.showlegend is not None else len(entries) > 1
    if not shown or not entries:
        entries = []
        if title_top is None:
            return out, height
    # a name the page's builder wrapped (<br>) for the page's width: one line, laid out for the file's
    names, key = cut_labels([_BREAK.sub(" ", t.name or "") for t in entries], LEGEND_NAME)
    for t, name in zip(entries, names, strict=True):
        if html.unescape(t.name or "") != html.unescape(name):
            t.name = name
    groups = [t.legendgroup or f"\x00{i}" for i, t in enumerate(entries)]  # no group: a group of its own
    grouped = any(t.legendgroup for t in entries)
    gap = out.layout.legend.tracegroupgap
    gap = (_GROUP_GAP if gap is None else gap) if grouped else 0
    below = bottom  # where under the plot the next thing goes, px
    legend = out.layout.legend
    if entries and legend.orientation != "h":
        column = len(entries) * _ROW + (len(set(groups)) - 1) * gap + _PAD
        if column > plot:  # it does not fit beside the plot: under it, in columns
            if len(set(groups)) == len(groups):
                gap = 0  # one entry per group: no gap between the rows
            entry = int(_CHAR * max(len(html.unescape(n)) for n in names)) + _PAD
            columns = max(1, (width - left - right) // (entry + _SYMBOL))
            rows = math.ceil(len(entries) / columns)
            tall = rows * (_ROW + gap) + _PAD
            out.update_layout(
                legend={
                    "orientation": "h",
                    "x": 0,
                    "xanchor": "left",
                    "y": -bottom / plot,
                    "yanchor": "top",
                    "entrywidth": entry,
                    "entrywidthmode": "pixels",
                    "tracegroupgap": gap,
                    "maxheight": tall + _ROW,
                }
            )
            below += tall
    elif entries and (offset := _under_plot(legend, top, plot, bottom)) is not None:
        # where the builder put it, in px under the plot (a fraction of the page's plot, or the figure's bottom
        # edge), its rows counted at the file's width: the key goes under its last row, not over them
        tall = _horizontal_rows(names, groups, gap, width - left - right)
        out.update_layout(
            legend={"y": -offset / plot, "yref": "paper", "yanchor": "top", "maxheight": tall + _ROW},
        )
        below = max(below, math.ceil(offset + tall))
    if key:
        out.add_annotation(
            text="<br>".join(key),
            xref="paper",
            yref="paper",
            x=0,
            y=-below / plot,
            xanchor="left",
            yanchor="top",
            align="left",
            showarrow=False,
            font={"size": 11},
        )
        below += len(key) * _KEY_ROW + _PAD
    top = top if title_top is None else title_top
    total = plot + top + below
    if title_top is not None:  # its first line where the page's was, the lines it wrapped into under it
        out.update_layout(title={"y": 1 - head / total, "yanchor": "top", "yref": "container"})
    out.update_layout(margin={"t": top, "b": below, "l": left, "r": right}, height=total)
    return out, total


_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_GLYPH = re.compile(r"&(?:#\d+|#x[0-9a-fA-F]+|[A-Za-z]\w*);|.", re.DOTALL)  # one character as Plotly draws it
_TITLE_LINE, _SUP = 1.3, 0.7  # a title line's height in font sizes; a <sup> line's font against the title's


def _visible(text: str) -> int:
    """How many characters ``text`` (Plotly markup) draws: tags left out, an entity one character."""
    return len(_GLYPH.findall(_TAG.sub("", text)))


def _under_plot(legend, top: int, plot: int, bottom: int) -> float | None:
    """How far under the plot area (px, at the file's size) the builder put the top of a horizontal ``legend``;
    None when it is not under the plot (above it, or on it). Its anchor is read for a one-row legend (what
    the builder placed): a legend anchored at its bottom on the figure's bottom edge starts one row above it."""
    one = _ROW + _PAD
    container = legend.yref == "container"
    y = legend.y if legend.y is not None else (0.0 if container else None)
    if y is None:  # Plotly's default (-0.1 of the plot) is over the x axis' title: under the margin
        return float(bottom)
    if container:
        anchor_below = bottom - y * (top + plot + bottom)  # px under the plot
    else:
        anchor_below = -y * plot
    anchor = legend.yanchor or ("bottom" if container else "top")
    if anchor == "auto":
        anchor = "bottom" if y <= 1 / 3 else "middle" if y < 2 / 3 else "top"
    start = anchor_below - {"top": 0.0, "middle": one / 2, "bottom": one}[anchor]
    return max(0.0, start) if start + one > 0 and (container or y <= 0) else None


def _horizontal_rows(names: list[str], groups: list[str], gap: int, room: int) -> int:
    """The height (px) Plotly gives a horizontal legend of ``names`` (in ``groups``) ``room`` px wide: entries
    flow in one row where they fit, else in columns as wide as the widest (Plotly's own rule); legend groups flow
    as blocks, their rows ``gap`` apart. Text widths on the wide side (:data:`_CHAR`): a row too many, never one
    too few."""
    widths = [int(_CHAR * _visible(n)) + _PAD + _SYMBOL for n in names]
    if len(set(groups)) == len(groups) and gap == 0:
        if sum(widths) <= room:
            return _ROW + _PAD
        columns = max(1, room // max(widths))
        return math.ceil(len(names) / columns) * _ROW + _PAD
    blocks: dict[str, list[int]] = {}
    for g, w in zip(groups, widths, strict=True):
        blocks.setdefault(g, []).append(w)
    rows: list[int] = []  # each row's height
    used = room + 1
    for ws in blocks.values():
        if used + max(ws) > room:
            rows.append(0)
            used = 0
        used += max(ws)
        rows[-1] = max(rows[-1], len(ws) * _ROW)
    return sum(rows) + gap * (len(rows) - 1) + _PAD


def _fit_title(out, width: int, top: int) -> tuple[int | None, float]:
    """Wrap the title of ``out`` (in place) to a file ``width`` px wide, at spaces (a word longer than a line at
    any character), and shrink a line that cannot be wrapped; a run's title (name · run id) ran past the file's
    right edge. Returns the top margin the wrapped lines need (None: the title is left as it was) and where its
    first line's baseline goes, px from the top (where the page's first line was)."""
    text = out.layout.title.text
    if not text:
        return None, 0.0
    size = out.layout.title.font.size or out.layout.template.layout.title.font.size
    size = size or 1.4 * (out.layout.font.size or out.layout.template.layout.font.size or 12)
    x = out.layout.title.x if out.layout.title.x is not None else out.layout.template.layout.title.x
    x = 0.5 if x is None else x
    anchor = out.layout.title.xanchor or "auto"
    if anchor == "auto":
        anchor = "left" if x < 1 / 3 else "right" if x > 2 / 3 else "center"
    room = {"left": width * (1 - x), "right": width * x, "center": 2 * width * min(x, 1 - x)}[anchor] - 20
    char = _CHAR * size / 12
    before = _BREAK.split(text)
    lines = [line for segment in before for line in _wrap(segment, room, char)]
    longest = max(_visible(line) * char * (_SUP if line.startswith("<sup>") else 1) for line in lines)
    if len(lines) == len(before) and longest <= room:
        return None, 0.0
    title: dict = {"text": "<br>".join(lines)}
    if longest > room:  # a line with markup inside, not wrapped: smaller
        title["font"] = {"size": max(8, math.floor(size * room / longest))}
    out.update_layout(title=title)
    line = _TITLE_LINE * size
    # Plotly writes each line at the title's y (its baseline, whatever the anchor) and the lines after it under
    # it; on the page the lines are centred in the top margin: the first line's baseline where it was there
    head = max(float(size), top / 2 - (len(before) - 1) * line / 2)
    return math.ceil(top + (len(lines) - len(before)) * line), head


def _wrap(segment: str, room: float, char: float) -> list[str]:
    """One line of a title (Plotly markup) as lines at most ``room`` px wide, a character ``char`` px. A line
    all inside one tag (``<sup>…</sup>``) is wrapped inside it; one with other markup is left whole."""
    tagged = re.fullmatch(r"<(\w+)>([^<]*)</\1>", segment)
    opening, inner, closing = (f"<{tagged[1]}>", tagged[2], f"</{tagged[1]}>") if tagged else ("", segment, "")
    if "<" in inner:
        return [segment]
    fit = max(8, int(room / (char * (_SUP if opening == "<sup>" else 1))))  # characters on a line
    lines: list[list[str]] = [[]]  # each line's characters
    for word in inner.split(" "):
        glyphs = _GLYPH.findall(word)
        while glyphs:
            line = lines[-1]
            space = 1 if line else 0
            if len(line) + space + len(glyphs) <= fit:
                line += [" "] * space + glyphs
                glyphs = []
            elif line:
                lines.append([])
            else:  # a word longer than a line: cut
                line += glyphs[:fit]
                glyphs = glyphs[fit:]
    return [opening + "".join(line) + closing for line in lines]
