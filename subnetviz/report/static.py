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
    its size). A legend name longer than :data:`LEGEND_NAME` characters (a 200-character folder name took the
    whole width and left the plot a sliver) is cut in the middle, the cuts kept distinct, and the full names are
    written under the chart."""
    import plotly.graph_objects as go

    from subnetviz.figures.overlap import cut_labels

    out = go.Figure(fig)
    entries = [t for t in out.data if _in_legend(t)]
    shown = out.layout.showlegend if out.layout.showlegend is not None else len(entries) > 1
    if not shown or not entries:
        return out, height
    names, key = cut_labels([t.name or "" for t in entries], LEGEND_NAME)
    for t, name in zip(entries, names, strict=True):
        if html.unescape(t.name or "") != html.unescape(name):
            t.name = name
    margin = out.layout.margin
    top, bottom = margin.t if margin.t is not None else 100, margin.b if margin.b is not None else 80
    left, right = margin.l if margin.l is not None else 80, margin.r if margin.r is not None else 80
    plot = max(50, height - top - bottom)  # the plot area's height, kept as it is
    groups = [t.legendgroup or f"\x00{i}" for i, t in enumerate(entries)]  # no group: a group of its own
    grouped = any(t.legendgroup for t in entries)
    gap = out.layout.legend.tracegroupgap
    gap = (_GROUP_GAP if gap is None else gap) if grouped else 0
    below = bottom  # where under the plot the next thing goes, px
    if out.layout.legend.orientation != "h":
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
                }
            )
            below += tall
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
    out.update_layout(margin={"t": top, "b": below, "l": left, "r": right}, height=plot + top + below)
    return out, plot + top + below
