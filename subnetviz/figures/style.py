"""Shared plotting vocabulary of subnetviz's figure builders: palette, scales, checks, layer grids.

Used by :mod:`subnetviz.figures` (sparsity, spectra, series, training), :mod:`subnetviz.figures.overlap`
(Venn, UpSet, pairwise matrices) and the bigram / supermask builders. No Streamlit here.
"""

from __future__ import annotations

import functools
import html
import inspect
import os
import re
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from subnetviz.checkpoints.naming import MODULE_ORDER as NAMING_ORDER
from subnetviz.errors import SubnetvizError
from subnetviz.text import has_controls, visible_controls

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442")
# Past PALETTE's eight: Paul Tol's muted scheme and more of his colours, none of them one of the eight (cycling drew
# the 9th series as the 1st: 13 overlaid runs were pairs of one colour), then hues spread by the golden angle.
MORE_COLORS = (
    "#332288",
    "#88CCEE",
    "#44AA99",
    "#117733",
    "#999933",
    "#DDCC77",
    "#CC6677",
    "#882255",
    "#AA4499",
    "#77AADD",
    "#EE8866",
    "#FFAABB",
    "#BBCC33",
    "#5D3A9B",
    "#A0522D",
    "#708090",
)
SEQUENTIAL = "Viridis"
DIVERGING = "RdBu_r"
GREY_CELL = "#E6E6E6"  # a heatmap cell with nothing to colour (not trained yet, no weight in either mask)
# The checkpoints' module kinds in naming's order (q, k, v, fused qkv, then o: every page's layer × module columns
# alike; a second list here put qkv after o, so GPT-2's Overlap read "o, qkv" beside Sparsity's "q, k, v, o"), then
# the kinds only figures name: coarse attention / MLP parts and the bigram paper's blocks (subnetviz.bigram.maskable).
MODULE_ORDER = (
    *(m for m in NAMING_ORDER if m != "other"),  # "other" goes last, after every kind no list names
    "attn",
    "mlp",
    "Q",
    "K",
    "V",
    "O",
    "MLP-in",
    "MLP-out",
)
PLOTLY_CONFIG = {"displaylogo": False, "showSendToCloud": False, "responsive": True}
"""What pages pass as ``st.plotly_chart(config=...)``: no logo, no plotly.js 4 "Share chart" (cloud upload)."""
_TEMPLATE = "plotly_white"


class FigureDataError(SubnetvizError):
    """A frame handed to a figure builder lacks a documented column or has a bad value."""


def color_map(labels: Sequence[str]) -> dict[str, str]:
    """Stable colours: the i-th label gets the i-th palette colour; past its 8, :func:`series_color`'s others,
    each label a colour of its own."""
    return {str(lab): series_color(i) for i, lab in enumerate(labels)}


def series_color(i: int) -> str:
    """The ``i``-th series' colour: :data:`PALETTE`, then :data:`MORE_COLORS`, then hues 137.5° apart (the golden
    angle: each new one far from the last ones) at alternating lightness, as hex."""
    import colorsys

    if i < len(PALETTE):
        return PALETTE[i]
    if i < len(PALETTE) + len(MORE_COLORS):
        return MORE_COLORS[i - len(PALETTE)]
    k = i - len(PALETTE) - len(MORE_COLORS)
    r, g, b = colorsys.hls_to_rgb((k * 137.508 / 360) % 1.0, (0.35, 0.5, 0.65)[k % 3], 0.65)
    return f"#{round(255 * r):02X}{round(255 * g):02X}{round(255 * b):02X}"


def compact_labels(labels: Sequence[str], limit: int = 24) -> tuple[list[str], str]:
    """Labels short enough for a chart's axis, and a line saying what was taken out ("" when nothing).

    Only when some label is longer than ``limit`` characters: a run's masks are labelled "what · run id";
    where the "what" parts alone tell the labels apart (beside labels with no run, such as "Δ grpo-s0"),
    the run ids move to the returned line. Then the text every label shares at its start and at its end
    (cut at a space or a bracket) moves there too, with "…" where each label's own part goes; a bare
    number keeps the word before it ("task 3", not "3"). A label still longer than ``limit`` breaks onto
    a second line at " · ". Labels stay distinct and in order.
    """
    labels = [str(x) for x in labels]
    if len(labels) < 2 or max(map(len, labels)) <= limit:
        return labels, ""
    work, runs = labels, []
    heads = [x.rsplit(" · ", 1)[0] for x in labels]  # a label with no run ("Δ grpo-s0") is its own head
    if any(" · " in x for x in labels) and len(set(heads)) == len(heads):
        work, runs = heads, list(dict.fromkeys(x.rsplit(" · ", 1)[1] for x in labels if " · " in x))
    short, shared = _strip_shared(work) if max(map(len, work)) > limit else (work, "")
    if runs:
        where = runs[0] if len(runs) == 1 else f"runs {', '.join(runs)}" if len(runs) <= 3 else f"{len(runs)} runs"
        shared = f"{shared or '…'} · {where}"
    return [x.replace(" · ", "<br>· ", 1) if len(x) > limit else x for x in short], shared


def _strip_shared(labels: list[str]) -> tuple[list[str], str]:
    """The labels without the text they all share at both ends, and that text with "…" for the rest."""
    first, n = labels[0], min(map(len, labels))
    p = min(len(os.path.commonprefix(labels)), n - 1)
    while p > 0 and first[p - 1] not in " ([":  # the shared start ends after a separator
        p -= 1
    q = min(len(os.path.commonprefix([x[::-1] for x in labels])), n - 1 - p)
    while q > 0 and first[len(first) - q] not in " )],":  # the shared end starts at a separator
        q -= 1
    short = [x[p : len(x) - q].strip() for x in labels]
    if p and all(x.isascii() and x.isdigit() for x in short):
        p = max(first.rfind(c, 0, p - 1) for c in " ([") + 1  # back to the start of the word before
        short = [x[p : len(x) - q].strip() for x in labels]
    if p + q == 0 or not all(short) or len(set(short)) < len(short):
        return labels, ""
    return short, f"{first[:p]}…{first[len(first) - q :]}"


def format_number(x, digits: int = 3, sign: bool = False) -> str:
    """A number for people: thousands separators, ``digits`` significant digits, scientific notation
    below 1e-3 (so a small non-zero value never reads "0.000"), "—" for NaN/None."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    x = float(x)
    plus = "+" if sign and x > 0 else ""
    if x != 0 and abs(x) < 1e-3:
        return f"{plus}{x:.{digits - 1}e}"
    if abs(x) >= 10**digits:
        return f"{plus}{x:,.0f}"
    return f"{plus}{x:,.{max(0, digits - 1 - int(np.floor(np.log10(abs(x)))) if x else digits - 1)}f}"


def format_mean_sd(mean: float, sd: float) -> str:
    """A mean ± sd that fits a metric's width: the mean as :func:`format_number` writes it, the sd at its decimals
    ("0.630 ± 0.004": "0.630 ± 3.82e-03" was cut to "0.630 ± 3.82…", its exponent hidden), "< 0.001" where the sd
    rounds to 0 there; an sd beside a mean in scientific notation in it too."""
    shown = format_number(mean)
    if not np.isfinite(sd):
        return f"{shown} ± —"
    if "e" in shown or "." not in shown:
        return f"{shown} ± {format_number(sd)}"
    decimals = len(shown.partition(".")[2])
    sd_text = f"{sd:,.{decimals}f}"
    return (
        f"{shown} ± {sd_text}" if sd == 0 or float(sd_text.replace(",", "")) > 0 else f"{shown} ± < {10**-decimals:g}"
    )


def number_labels(values: Sequence) -> list[str]:
    """Numbers written as text (a grid's values, as Python's ``:g`` wrote them) in one notation, for an axis or a
    name: where any is in e-notation, every one is, its exponent with no "+" or leading zero ("1e-6", "1e-5",
    "1e-4": ``:g`` wrote "1e-06", "1e-05", "0.0001" on one axis); else they come back as they are, and so do labels
    that are not all finite numbers (on, off; adamw, sgd) or that would read alike. Text for the eye only: the
    values themselves (keys, tables, files) keep their spelling."""
    texts = [str(v) for v in values]
    try:
        numbers = [float(t) for t in texts]
    except ValueError:
        return texts
    if not any("e" in t.lower() for t in texts) or not np.isfinite(numbers).all():
        return texts
    out = [_e_notation(x) for x in numbers]
    return out if len(set(out)) == len(set(texts)) else texts


def _e_notation(x: float) -> str:
    """``x`` in e-notation with the fewest digits that read back as ``x``: 1e-05 -> "1e-5", 0.005 -> "5e-3",
    2.5e-05 -> "2.5e-5", 0 -> "0"."""
    if x == 0:
        return "0"
    text = next((t for p in range(17) if float(t := f"{x:.{p}e}") == x), f"{x:.16e}")
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"


def percent_cells(values: np.ndarray, unit: str = "%") -> np.ndarray:
    """Cell labels for percentages: one decimal, but no rounding that hides a number: a small non-zero share
    keeps two significant digits ("0.0065%", not "0.0%" hiding that there is overlap), a share just below
    100 the decimals that tell it from 100 ("99.96", not "100.0" as if nothing had changed); blank where
    undefined. ``unit``: written after each value ("" where the colour bar already says %)."""
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, "", dtype=object)
    for idx, x in np.ndenumerate(v):
        if not np.isfinite(x):
            continue
        if x != 0 and abs(x) < 0.05:
            out[idx] = f"{format_number(x, digits=2)}{unit}"
        elif 99.95 <= x < 100:
            digits = next((d for d in range(2, 7) if float(f"{x:.{d}f}") < 100), None)
            out[idx] = f"{x:.{digits}f}{unit}" if digits else f">99.9999{unit}"
        else:
            out[idx] = f"{x:.1f}{unit}"
    return out.astype(str)


def plain_label(text: object) -> str:
    """``text`` that is data, not markup (a token, a run's name), as a chart shows it literally.

    Plotly reads a subset of HTML in every title, tick, legend and hover label: a Llama token "<s>" struck
    the rest of the label through and vanished, "<br>" broke the line, "&amp;" read "&". Its <, > and & are
    escaped (Plotly decodes the entities back to the characters), and "%{" so a hover template does not
    take it for a field."""
    return visible_controls(html.escape(str(text), quote=False).replace("%{", "%&#123;"))


_MARKUP = ("<", "&", "%{")  # what Plotly reads as markup (a lone ">" reads as typed)
_building = threading.local()  # inside a builder: what it passes to another builder is text already


def _same(texts: Sequence, values: Sequence) -> bool:
    """Whether escaping changed none of ``values`` (equal, not identical: pandas' string index hands out new
    objects on each iteration)."""
    return all(a is b or (isinstance(a, str | tuple) and a == b) for a, b in zip(texts, values, strict=True))


def _as_text(v):
    """A value of the data as :func:`plain_label` makes it (strings, also inside tuples); anything else as is."""
    if isinstance(v, str):
        return plain_label(v) if any(m in v for m in _MARKUP) or has_controls(v) else v
    if isinstance(v, tuple):
        texts = tuple(_as_text(x) for x in v)
        return v if _same(texts, v) else texts
    return v


def _objects(values: list) -> np.ndarray:
    """A 1-D object array of ``values``, filled one by one (``np.array`` would make tuples a second axis)."""
    out = np.empty(len(values), dtype=object)
    for k, v in enumerate(values):
        out[k] = v
    return out


def _text_index(index: pd.Index) -> pd.Index:
    if isinstance(index, pd.MultiIndex) or index.dtype.kind != "O":
        return index
    texts = [_as_text(v) for v in index]
    return index if _same(texts, index) else pd.Index(texts, name=index.name)


def _text_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every string cell (and string row / column names) as text; a copy only where one changes.
    The distinct values are escaped, not the cells: a curve frame of 100 000 rows names a few runs."""
    out = None
    for i, col in enumerate(df.columns):
        s = df.iloc[:, i]
        if isinstance(s.dtype, pd.CategoricalDtype):  # categories renamed: their order is the chart's order
            texts = [_as_text(c) for c in s.cat.categories]
            if not _same(texts, s.cat.categories):
                out = df.copy() if out is None else out
                out.isetitem(i, s.cat.rename_categories(texts))
            continue
        if s.dtype.kind != "O" and not isinstance(s.dtype, pd.StringDtype):
            continue
        codes, uniques = pd.factorize(s, use_na_sentinel=True)
        texts = [_as_text(u) for u in uniques]
        if _same(texts, uniques):
            continue
        out = df.copy() if out is None else out
        values = s.to_numpy(dtype=object).copy()  # a missing value (code -1) stays what it was (NaN, None)
        values[codes >= 0] = _objects(texts)[codes[codes >= 0]]
        out.isetitem(i, pd.Series(values, index=df.index, name=col))
    index, columns = _text_index(df.index), _text_index(df.columns)
    if index is not df.index or columns is not df.columns:
        out = (df if out is None else out).copy()
        out.index, out.columns = index, columns
    return df if out is None else out


def _text_data(v):
    """What a builder takes as data, as text: a frame's strings, a mapping's keys (colours keyed by model),
    the strings of a list or tuple (labels, ticks)."""
    if isinstance(v, pd.DataFrame):
        return _text_frame(v)
    if isinstance(v, Mapping):
        return {_as_text(k): x for k, x in v.items()}
    if isinstance(v, list | tuple):
        texts = [_as_text(x) for x in v]
        return v if _same(texts, v) else type(v)(texts)
    if isinstance(v, np.ndarray) and v.dtype.kind in "OU":
        flat = v.ravel().tolist()
        texts = [_as_text(x) for x in flat]
        if _same(texts, flat):
            return v
        return _objects(texts).reshape(v.shape)
    return v


def takes_data(*text_args: str):
    """A figure builder whose data reaches the chart as text, never as markup (:func:`plain_label`).

    Model labels (folder names), tensor and module names (any string in a checkpoint someone else trained),
    run names and tokens arrive in the builder's frames, mappings (colours keyed by model), lists (labels,
    ticks) and in the string arguments named in ``text_args`` (a tensor's name as ``subject``); they are escaped
    once, on the way in, so the builder may wrap them in its own markup. Other string arguments (titles,
    column names, modes) are the caller's: a caller puts data into a title through :func:`plain_label`.
    A builder called by another builder gets its arguments as they are (already text)."""

    def wrap(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def builder(*args, **kwargs):
            if getattr(_building, "depth", 0):
                return fn(*args, **kwargs)
            bound = sig.bind(*args, **kwargs)
            for name, v in bound.arguments.items():
                if name in text_args and isinstance(v, str):
                    bound.arguments[name] = _as_text(v)
                else:
                    bound.arguments[name] = _text_data(v)
            _building.depth = 1
            try:
                return fn(*bound.args, **bound.kwargs)
            finally:
                _building.depth = 0

        builder.takes_data = True
        return builder

    return wrap


def no_data_figure(title: str, message: str = "no data") -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 16})
    fig.update_layout(template=_TEMPLATE, title=title, xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def _require(df: pd.DataFrame, columns: Sequence[str], builder: str, shares: Sequence[str] = ()) -> None:
    """Raise unless df has ``columns``; ``shares`` (those present) must be fractions in [0, 1] or NaN."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise FigureDataError(
            f"{builder}: the frame lacks column(s) {missing}; it has {list(df.columns)}. "
            f"Expected at least {list(columns)}."
        )
    for c in shares:
        if c in df.columns:
            _check_share(
                pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan),
                f"{builder}: column {c!r}",
            )


def _check_share(v: np.ndarray, what: str) -> None:
    bad = v[np.isfinite(v) & ((v < -1e-9) | (v > 1 + 1e-9))]
    if bad.size:
        raise FigureDataError(
            f"{what} holds shares outside [0, 1] (e.g. {bad[0]:g}); figures take fractions and draw them in %. "
            "If the values are already percentages, divide them by 100."
        )


def _style(fig: go.Figure, title: str, x: str | None = None, y: str | None = None, **layout) -> go.Figure:
    layout.setdefault("margin", {"l": 70, "r": 30, "t": 80, "b": 60})
    fig.update_layout(template=_TEMPLATE, title=title, **layout)
    if x is not None:
        fig.update_xaxes(title_text=x)
    if y is not None:
        fig.update_yaxes(title_text=y)
    return fig


SUB_LINE = 50
"""Characters a ``<sup>`` line under a title holds in a chart half the page wide at 1024 px with the sidebar open
(274 px; about 5 px a character at the subtitle's size)."""


def at_separators(line: str, width: int) -> list[str]:
    """``line`` in pieces of at most ``width`` characters where its " · " separators allow, broken only there (each
    break stands for one: a figure picker that names a chart by its title reads each break as " · " again); a part
    longer than ``width`` stays whole."""
    out: list[str] = []
    for part in line.split(" · "):
        if out and len(out[-1]) + 3 + len(part) <= width:
            out[-1] += f" · {part}"
        else:
            out.append(part)
    return out


def subtitle(*lines: str, width: int = SUB_LINE) -> str:
    """``lines`` as small lines under a title ("<br><sup>…</sup>" each; "" for none), a line longer than ``width``
    characters broken where its " · " separators are (the break stands for one: the figure picker reads each break
    as " · "), never inside a name. One line of "grpo-s0 · layers.0.self_attn.q_proj.weight · 96×96, full
    resolution (a cell per entry)" ran 130 px past a 274 px chart."""
    out = [part for line in filter(None, lines) for part in at_separators(line, width)]
    return "".join(f"<br><sup>{part}</sup>" for part in out)


def title_margin(title: str, top: int = 80) -> int:
    """The top margin (px) a ``title`` of title and subtitle lines needs: ``top`` holds a title and one
    ``<sup>`` line (every builder's default), each further line 36 px more. Twice a line's height: Plotly sets the
    title's first line in the middle of the top margin, so the block moves down by half of what the margin grows
    (at 18 px a line, a four-line matrix title ended 4 px into its heatmap at 1440 px)."""
    return top + 36 * max(0, len(re.findall(r"<br\s*/?>", title, flags=re.I)) - 1)


def with_subtitles(fig, lines: Sequence[str]):
    """``fig`` (new, not shared yet) with ``lines`` (text, each its own ``<sup>`` line) under its title, its top margin
    grown to :func:`title_margin`'s where the lines need more, and its height with it (the plot keeps its own)."""
    title = (fig.layout.title.text or "") + "".join(f"<br><sup>{line}</sup>" for line in lines)
    fig.layout.title.text = title
    meta = fig.layout.meta
    if isinstance(meta, dict) and isinstance(meta.get("name"), str):  # (the figure picker's name: the lines too)
        fig.update_layout(meta={**meta, "name": " · ".join([meta["name"], *lines])})
    top, need = fig.layout.margin.t or 80, title_margin(title)
    if need > top:
        fig.update_layout(margin_t=need, height=(fig.layout.height or 450) + need - top)
    return fig


def _unique(values) -> list:
    return list(dict.fromkeys(values))


def order_key(order: Sequence[str]):
    """A sort key putting values in ``order`` first, in that order, and every other value after them."""
    rank = {v: i for i, v in enumerate(order)}
    return lambda v: rank.get(v, len(rank))


def _module_order(modules) -> list[str]:
    """Known module kinds in their order, then the rest in natural order (E2 before E10: experts), ``other`` last."""
    present = _unique(str(m) for m in modules)
    known = [m for m in MODULE_ORDER if m in present]
    rest = sorted((m for m in present if m not in known and m != "other"), key=_natural)
    return known + rest + (["other"] * ("other" in present))


def _natural(text: str) -> list:
    """Sort key reading runs of digits as numbers (digit runs at odd places of the split: like types compare)."""
    return [int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", text))]


def _is_number(v) -> bool:
    return isinstance(v, int | np.integer | float | np.floating) and not pd.isna(v)


def _layer_order(layers) -> list[str]:
    """Numeric layers ascending, then labels (e.g. "final", or "—" for none) in order of first appearance."""
    vals = list(layers)
    nums = sorted({v for v in vals if _is_number(v)}, key=float)  # labelled as given: float(10**23) is inexact
    return _unique([_layer_label(v) for v in nums] + [_layer_label(v) for v in vals if not _is_number(v)])


def _layer_label(v) -> str:
    """The y label of a layer: 3 and 3.0 read "3"; a missing layer (embeddings, head) reads "—"."""
    if _is_number(v):
        return str(int(v)) if float(v).is_integer() else str(v)
    return "—" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)


def _grid(df: pd.DataFrame, columns: Sequence[str], builder: str):
    """Pivot layer × module; returns (layer labels, module labels, {column: (L, M) float array})."""
    layers = _layer_order(df["layer"])
    modules = _module_order(df["module"])
    keys = list(zip(df["layer"].map(_layer_label), df["module"].astype(str), strict=True))
    if len(set(keys)) != len(keys):
        dup = pd.Series(keys).value_counts()
        raise FigureDataError(
            f"{builder}: one row per (layer, module) is expected; {dup.iloc[0]} rows for {dup.index[0]}. "
            "Aggregate the per-tensor table by layer and module first."
        )
    li = {v: i for i, v in enumerate(layers)}
    mi = {v: i for i, v in enumerate(modules)}
    rows = np.array([li[k[0]] for k in keys], dtype=np.intp)
    cols = np.array([mi[k[1]] for k in keys], dtype=np.intp)
    out = {}
    for c in columns:
        grid = np.full((len(layers), len(modules)), np.nan)
        if c in df.columns:
            grid[rows, cols] = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        out[c] = grid
    return layers, modules, out


def _layer_heatmap(
    layers, modules, z, customdata, hover, title, bar_title, text=None, x_title: str = "module kind", **trace
) -> go.Figure:
    """The shared layer × module heatmap; ``text`` (strings per cell) replaces the default "%{z:.1f}"; ``x_title``
    names the columns (a layer × expert grid's are experts)."""
    show_text = z.size <= 400  # cell values printed in the cells while they stay readable
    # its unit on a line of its own: three heatmaps side by side at 1024 px cut "sparsity (%)" to "sparsity (9"
    bar = {"title": {"text": bar_title.replace(" (", "<br>(", 1)}, **trace.pop("colorbar", {})}
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=modules,
            y=layers,
            customdata=customdata,
            hovertemplate=hover + "<extra></extra>",
            colorbar=bar,
            text=text if show_text else None,
            texttemplate=("%{text}" if text is not None else "%{z:.1f}") if show_text else None,
            hoverongaps=False,
            xgap=1,
            ygap=1,
            **trace,
        )
    )
    _style(fig, title, x_title, "layer", height=max(360, 120 + 26 * len(layers)))
    fig.update_xaxes(type="category", side="bottom", showgrid=False, **every_category(modules))
    fig.update_yaxes(type="category", autorange="reversed", showgrid=False)
    return fig


ACROSS_OR_UPRIGHT = [0, 90]
"""A category axis' tick angles (``autotickangles``): across where the labels fit, else upright. Plotly's default
tries 30° first, which moves each label right of its column: a heatmap's last one ran under its colour bar."""
EVERY_LABEL = 32
"""Up to this many columns a heatmap names every one (:func:`every_category`); past it (a layer × expert grid of
64 experts) Plotly's own spacing skips some, rather than draw the names over one another."""


HEATMAP_PLOT_AT_1024 = {3: 63, 2: 122, 1: 408}
"""The plotting area's width (px) of a layer × module heatmap at 1024 px with the sidebar open, by how many
heatmaps share the row (charts 177, 274 and 564 px wide; the rest is the axes and the colour bar), measured in
Chromium on Update sparsity."""


def heatmaps_per_row(columns: int, most: int = 3) -> int:
    """How many layer × module heatmaps of ``columns`` columns to put side by side (at most ``most``): as many as
    leave each column the 12 px its upright name needs (:func:`every_category`) at 1024 px with the sidebar open
    (:data:`HEATMAP_PLOT_AT_1024`). Three to a row there left nine module kinds 7 px each: named, they overlapped."""
    for k in sorted(HEATMAP_PLOT_AT_1024, reverse=True):
        if k <= most and HEATMAP_PLOT_AT_1024[k] / max(1, columns) >= 12:
            return k
    return 1


def every_category(categories: Sequence[str], font: int = 11) -> dict:
    """An axis' settings that name every one of ``categories`` (a heatmap's module kinds, masks), across where they
    fit and upright where they do not, never at 30°. Plotly spaces a category axis' ticks by its length: three
    layer × module heatmaps side by side at 1024 px named q, v, gate, down and mlp_norm of nine kinds, and left
    k, o, up and attn_norm unnamed; at 30° a last label ran right, under the colour bar. Past :data:`EVERY_LABEL`
    categories, only the angles."""
    angles = {"autotickangles": ACROSS_OR_UPRIGHT, "tickfont": {"size": font}}
    cats = [str(c) for c in categories]
    if not 0 < len(cats) <= EVERY_LABEL:
        return angles
    return {"tickmode": "array", "tickvals": cats, "ticktext": cats, **angles}


def mtp_layer_ticks(fig: go.Figure, df: pd.DataFrame, layers, axis: str = "y") -> None:
    """Label the layers that are a multi-token-prediction module's (``df["mtp"]`` true on all their rows)
    "48 · MTP" on the ``axis`` (y: a heatmap's rows, x: bars per layer): past the last layer, they are not
    one more transformer layer."""
    flags = df["mtp"].fillna(False).astype(bool) if "mtp" in df.columns else None
    if flags is None or not flags.any():
        return
    whole = flags.groupby(df["layer"], dropna=True).all()  # (an unknown flag is no MTP)
    mtp = {_layer_label(v) for v in whole.index[whole.astype(bool)]}
    ticks = [f"{v} · MTP" if v in mtp else v for v in layers]
    (fig.update_xaxes if axis == "x" else fig.update_yaxes)(tickmode="array", tickvals=list(layers), ticktext=ticks)


_NICE_RATIOS = np.array([1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 8, 10, 20, 50, 100, 200, 500, 1000, 1e4, 1e5, 1e6])


def _ratio_axis(ratio: np.ndarray) -> tuple[np.ndarray, dict]:
    """log2(ratio) with a diverging scale centred on ×1, its range fitted to the data (at least ×0.84–×1.19)
    and ×-labelled colourbar ticks at round ratios inside it."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log2(np.where(ratio > 0, ratio, np.nan))
    span = max(0.25, float(np.nanmax(np.abs(z)))) if np.isfinite(z).any() else 1.0
    z = np.where(ratio == 0, -span, z)  # ×0 (no overlap where chance expects some): the scale's low end, not blank
    nice = np.log2(_NICE_RATIOS)
    ticks = np.unique(np.concatenate([-nice, nice]))
    ticks = ticks[np.abs(ticks) <= span + 1e-9]
    while len(ticks) > 9:  # keep every other tick (×1 stays: the middle one)
        mid = int(np.argmin(np.abs(ticks)))
        ticks = np.concatenate([ticks[mid::-2][::-1], ticks[mid + 2 :: 2]])
    bar = {"tickvals": ticks, "ticktext": [f"×{2.0**t:.3g}" for t in ticks]}
    return z, {"colorscale": DIVERGING, "zmid": 0, "zmin": -span, "zmax": span, "colorbar": bar}


def _times(ratio: np.ndarray) -> np.ndarray:
    """Cell labels "×1.52" (blank where undefined)."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(ratio), np.char.mod("×%.2f", np.nan_to_num(ratio)), "")
