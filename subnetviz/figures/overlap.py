"""Overlap figures: pairwise matrices against chance, the per-layer overlap heatmap and the
consensus bars; mask names cut short for an axis, told apart (:func:`cut_labels`). Pure Plotly; inputs are the
frames of :class:`subnetviz.analysis.overlap.OverlapReport`.
Venn and UpSet are in :mod:`~subnetviz.figures.sets`. Also available as ``subnetviz.figures.*``.
"""

from __future__ import annotations

import html
import os
import re
import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from subnetviz.figures.style import (
    ACROSS_OR_UPRIGHT,
    GREY_CELL,
    PALETTE,
    SEQUENTIAL,
    FigureDataError,
    _grid,
    _layer_heatmap,
    _layer_label,
    _layer_order,
    _ratio_axis,
    _require,
    _style,
    _times,
    _unique,
    mtp_layer_ticks,
    no_data_figure,
    percent_cells,
    plain_label,
    takes_data,
    title_margin,
)

PER_TENSOR = "per-tensor chance"  # masks drawn independently within each tensor, at its own densities
GLOBAL = "global chance"  # one density per mask over everything compared (the paper's, App. E)
KEY_LINE = 90  # characters in a line of the key naming cut labels in full
_SEPARATORS = " -_./·:=,"  # where a label's parts end ("lr1e-5", "seed1")


def _bar_lines(title: str, width: int = 12) -> str:
    """A colour bar's ``title`` in lines of at most ``width`` characters ("× per-tensor<br>chance"): on one line,
    "× per-tensor chance" ran past its chart at 1024 px."""
    return "<br>".join(textwrap.wrap(title, width, break_on_hyphens=False) or [title])


def chance_name(column: str) -> str:
    """What a chance column of :class:`~subnetviz.analysis.overlap.OverlapReport` is, as charts name it:
    ``*_per_tensor`` the per-tensor (stratified) chance, the others the global one (the paper's, App. E)."""
    return PER_TENSOR if column.endswith("_per_tensor") else GLOBAL


def _default_chance(df: pd.DataFrame, value: str) -> str:
    """The per-tensor chance column of ``value`` where the frame has it, else its global one."""
    return f"{value}_chance_per_tensor" if f"{value}_chance_per_tensor" in df.columns else f"{value}_chance"


@takes_data()
def overlap_layer_heatmap(
    df: pd.DataFrame,
    view: str = "value",
    title: str | None = None,
    chance_col: str | None = None,
    x_title: str = "module kind",
) -> go.Figure:
    """Layers × module kinds of mask overlap: columns layer, module, jaccard and its chance (fractions):
    ``chance_col``, by default ``jaccard_chance_per_tensor`` (masks independent within each tensor) where
    the frame has it, else ``jaccard_chance`` (global over the cell's parameters). Hover and colour bar name
    which. ``x_title`` names the columns ("expert" for a layer × expert grid, whose modules are E0, E1, …).

    view "value" draws Jaccard in %; "ratio" draws Jaccard / chance on a diverging ×-scale.
    """
    if view not in ("value", "ratio"):
        raise FigureDataError(f"overlap_layer_heatmap: view must be 'value' or 'ratio'; got {view!r}.")
    chance_col = chance_col or _default_chance(df, "jaccard")
    which = chance_name(chance_col)
    title = title or (
        f"Jaccard overlap × {which} by layer and module" if view == "ratio" else "Jaccard overlap by layer and module"
    )
    if df.empty:
        return no_data_figure(title)
    _require(
        df,
        ["layer", "module", "jaccard", chance_col],
        "overlap_layer_heatmap",
        shares=["jaccard", chance_col],
    )
    # Module kinds with no changed entry in either mask (norms that never move) have no overlap: no column.
    filled = df.groupby(df["module"].astype(str))["jaccard"].apply(lambda v: pd.to_numeric(v).notna().any())
    df = df[df["module"].astype(str).map(filled)]
    if df.empty:
        return no_data_figure(title)
    layers, modules, g = _grid(df, ["jaccard", chance_col], "overlap_layer_heatmap")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = g["jaccard"] / g[chance_col]
    custom = np.stack([100 * g["jaccard"], 100 * g[chance_col], ratio], axis=-1)
    hover = (
        "layer %{y} · %{x}<br>Jaccard %{customdata[0]:.2f}%<br>"
        + f"{which} %{{customdata[1]:.2f}}%<br>× {which} %{{customdata[2]:.2f}}"
    )
    if view == "ratio":
        z, trace = _ratio_axis(ratio)
        bar = _bar_lines(f"Jaccard × {which}")
        fig = _layer_heatmap(layers, modules, z, custom, hover, title, bar, _times(ratio), x_title, **trace)
    else:
        text = percent_cells(100 * g["jaccard"])
        text = np.char.add(text, np.where(np.isfinite(ratio), np.char.add("<br>", _times(ratio)), ""))
        fig = _layer_heatmap(
            layers,
            modules,
            100 * g["jaccard"],
            custom,
            hover,
            title,
            "Jaccard (%)",
            text,
            x_title,
            colorscale=SEQUENTIAL,
        )
    fig = _undefined_cells(fig, layers, modules, g["jaccard"], ratio if view == "ratio" else None)
    mtp_layer_ticks(fig, df, layers)  # (df["mtp"], where given: a multi-token-prediction module's layers)
    return fig


NEITHER = "neither mask has a weight here"
ONE_SIDED = "one mask has no weight here: Jaccard 0, and no chance baseline to divide by"


def _undefined_cells(
    fig: go.Figure,
    layers,
    modules,
    jaccard: np.ndarray,
    ratio: np.ndarray | None,
    notes: tuple[str, str] = (NEITHER, ONE_SIDED),
    place: str = "layer %{y} · %{x}",
    gap: int = 1,
) -> go.Figure:
    """The cells with nothing to colour, drawn grey with a dash and what is missing in the hover (left blank
    they read as missing data): no weight in either mask (the value, ``jaccard``, 0/0: NaN), or, on the ×chance
    scale, a mask with no weight in the cell (chance 0: ``ratio`` NaN beside a value). ``notes``: the hover's
    reason for each of the two; ``place``: how the hover names the cell (rows ``layers``, columns ``modules``);
    ``gap``: the cells' gap (px), the heatmap's own."""
    neither = ~np.isfinite(jaccard)
    one = ~neither & ~np.isfinite(ratio) if ratio is not None else np.zeros_like(neither)
    if not (neither | one).any():
        return fig
    note = np.where(neither, notes[0], np.where(one, notes[1], ""))
    fig.add_trace(
        go.Heatmap(
            z=np.where(neither | one, 0.0, np.nan),
            x=modules,
            y=layers,
            colorscale=[[0, GREY_CELL], [1, GREY_CELL]],
            showscale=False,
            text=np.where(neither | one, "—", ""),
            texttemplate="%{text}",
            customdata=note,
            hovertemplate=f"{place}<br>%{{customdata}}<extra></extra>",
            hoverongaps=False,
            xgap=gap,
            ygap=gap,
        )
    )
    return fig


@takes_data()
def pairwise_matrix(
    df: pd.DataFrame,
    value: str = "jaccard",
    chance_col: str | None = None,
    view: str = "value",
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """labels × labels heatmap of o1, o2 or jaccard (fractions), annotated, with ×chance in hover.

    df: one row per pair with columns a, b, the value column and its chance baseline ``chance_col``: by
    default ``f"{value}_chance_per_tensor"`` (masks independent within each tensor) where the frame has it,
    else ``f"{value}_chance"`` (global, the paper's); the hover adds the paper's global chance beside a
    per-tensor one, and every label says which chance. Cell (row a, column b) is the row's own value; for the one-sided
    overlaps the mirror cell (b, a) is filled from the other side (o1(a, b) = o2(b, a)), so
    o1 reads "share of the row mask also in the column mask". view "ratio" draws value / chance
    on a diverging ×-scale centred on 1. The diagonal is left blank.
    """
    if value not in ("o1", "o2", "jaccard"):
        raise FigureDataError(f"pairwise_matrix: value must be 'o1', 'o2' or 'jaccard'; got {value!r}.")
    what = {
        "o1": "share of row mask also in column mask",
        "o2": "share of column mask also in row mask",
        "jaccard": "Jaccard",
    }[value]
    if view not in ("value", "ratio"):
        raise FigureDataError(f"pairwise_matrix: view must be 'value' or 'ratio'; got {view!r}.")
    chance_col = chance_col or _default_chance(df, value)
    which = chance_name(chance_col)
    title = title or (f"{what} × {which}" if view == "ratio" else f"Pairwise overlap: {what}")
    if df.empty:
        return no_data_figure(title)
    mirror = {"o1": "o2", "o2": "o1", "jaccard": "jaccard"}[value]
    _require(df, ["a", "b", value, chance_col], "pairwise_matrix", shares=["o1", "o2", "jaccard", chance_col])
    # the paper's global chance beside a per-tensor one, in the hover
    paper_col = f"{value}_chance" if chance_col != f"{value}_chance" and f"{value}_chance" in df.columns else None
    labels = (
        list(map(str, labels)) if labels is not None else _unique(list(df["a"].astype(str)) + list(df["b"].astype(str)))
    )
    idx = {lab: i for i, lab in enumerate(labels)}
    val, chance, paper = (np.full((len(labels),) * 2, np.nan) for _ in range(3))

    def mirrored(col: str | None) -> str | None:
        """The mirror cell's baseline: Jaccard is symmetric; o1's mirror is o2 with its own chance column."""
        if col is None or value == "jaccard":
            return col
        return mirror + col[len(value) :] if col.startswith(f"{value}_chance") else None

    mirror_chance, mirror_paper = mirrored(chance_col), mirrored(paper_col)
    for row in df.itertuples(index=False):
        a, b = idx.get(str(row.a)), idx.get(str(row.b))
        if a is None or b is None or a == b:
            continue
        rec = row._asdict()
        val[a, b], chance[a, b] = rec[value], rec[chance_col]
        paper[a, b] = rec[paper_col] if paper_col else np.nan
        if np.isnan(val[b, a]) and mirror in rec:
            val[b, a], chance[b, a] = rec[mirror], rec.get(mirror_chance, np.nan) if mirror_chance else np.nan
            paper[b, a] = rec.get(mirror_paper, np.nan) if mirror_paper else np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio, paper_ratio = val / chance, val / paper
    text = percent_cells(100 * val)
    custom = np.stack([100 * val, 100 * chance, ratio, 100 * paper, paper_ratio], axis=-1)
    hover = (
        "row %{y} · column %{x}<br>"
        + what
        + f" %{{customdata[0]:.2f}}%<br>{which} %{{customdata[1]:.2f}}%<br>× {which} %{{customdata[2]:.2f}}"
        + (
            f"<br>{GLOBAL} (paper, App. E) %{{customdata[3]:.2f}}%<br>× {GLOBAL} %{{customdata[4]:.2f}}"
            if paper_col
            else ""
        )
        + "<extra></extra>"
    )
    if view == "ratio":
        z, trace = _ratio_axis(ratio)
        text = _times(ratio)
        trace["colorbar"]["title"] = {"text": _bar_lines(f"× {which}")}
    else:
        z, trace = (
            100 * val,
            # its unit on a line of its own: "jaccard (%)" ran 6 px past a half-page chart at 1024 px
            {"colorscale": SEQUENTIAL, "zmin": 0, "zmax": 100, "colorbar": {"title": {"text": f"{value}<br>(%)"}}},
        )
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=labels,
            y=labels,
            text=text,
            texttemplate="%{text}",
            customdata=custom,
            hovertemplate=hover,
            hoverongaps=False,
            xgap=2,
            ygap=2,
            **trace,
        )
    )
    # long mask names (an upload's name and hash) cut in the middle on the axes, whole in the hover: a 49-character
    # name took the plot area and left the matrix a few pixels wide. The cuts stay distinct (names that differ in
    # the middle read alike cut plainly), and the full names go under the x axis: a file or a print has no hover.
    # (a key, names cut, only in a matrix drawn full width, :func:`matrices_per_row`: its 90-character lines, 420 px,
    # ran 72 px past a half-page chart at 1024 px, and fit the 564 px of a full-width one)
    cuts, key = cut_labels(labels)
    longest = _longest(cuts)
    ticks = {"tickmode": "array", "tickvals": labels, "ticktext": cuts}
    # across, or upright where they do not fit: at Plotly's 30° the last mask's name ran right, under the colour bar
    # ("Δ grpo-s2" read "Δ grpo" at 1024 px), and o1 and Jaccard beside it turned theirs differently
    fig.update_xaxes(
        type="category", side="bottom", showgrid=False, constrain="domain", autotickangles=ACROSS_OR_UPRIGHT, **ticks
    )
    fig.update_yaxes(
        type="category",
        autorange="reversed",
        scaleanchor="x",
        scaleratio=1,
        showgrid=False,
        constrain="domain",
        **ticks,
    )
    # cells with no value or no chance to divide by: a grey "—" and why in the hover (blank, they read as missing
    # data; a mask beside an empty one had a blank column in the × chance view). The diagonal stays blank.
    diagonal = np.eye(len(labels), dtype=bool)
    _undefined_cells(
        fig,
        labels,
        labels,
        np.where(diagonal, 0.0, val),
        np.where(diagonal, 1.0, ratio) if view == "ratio" else None,
        (
            _UNDEFINED[value],
            f"one mask has no weight in the tensors compared: {_NAMES[value]} 0, and no chance baseline to divide by",
        ),
        "row %{y} · column %{x}",
        gap=2,
    )
    names = "".join(f"<br><span style='font-size:11px'>{line}</span>" for line in key)
    return _style(
        fig,
        title,
        f"column mask{names}",
        "row mask",
        # the column names upright under the matrix: 24-character ones left four masks a plot 96 px high
        height=max(380, 160 + 60 * len(labels)) + 15 * len(key) + title_margin(title) - 80 + 7 * max(0, longest - 10),
        margin={"l": 70, "r": 30, "t": title_margin(title), "b": 60},
    )


_NAMES = {"o1": "o1", "o2": "o2", "jaccard": "Jaccard"}
_UNDEFINED = {  # a cell whose value is 0 / 0
    "o1": "the row mask has no weight in the tensors compared: its share in the column mask (o1) is 0 / 0",
    "o2": "the column mask has no weight in the tensors compared: its share in the row mask (o2) is 0 / 0",
    "jaccard": "neither mask has a weight in the tensors compared: Jaccard is 0 / 0",
}
HALF_CHART = 274
"""A chart's width (px) half the page wide at 1024 px with the sidebar open."""
MATRIX_FRAME = {"value": 125, "ratio": 147}
"""What of a half-width pairwise matrix chart is not its plotting area or its row names (px), by view: the row title
and margins (43) and the colour bar (82; the × chance one's 104), measured in Chromium at 1024 px."""
NAME_PX = 7  # a row name's width a character (px, 12 px font), at most
MIN_CELL = 24  # a matrix cell's side (px) that still holds its value readably


def matrices_per_row(labels: Sequence[str], view: str = "value") -> int:
    """How many pairwise matrices of ``labels`` (as :func:`pairwise_matrix` gets them, in ``view``) to set side by
    side: two where a chart half the page wide at 1024 px leaves each cell :data:`MIN_CELL` px, else one, full width.
    Side by side, eight masks left the cells 8 px and the names drawn over one another; 24-character names left
    none, and the full-name key under a matrix of cut names ran past its chart (always full width, then)."""
    cuts = cut_labels(labels)[0]
    return 2 if HALF_CHART - MATRIX_FRAME[view] - NAME_PX * _longest(cuts) >= MIN_CELL * len(cuts) else 1


def _longest(cuts: Sequence[str]) -> int:
    """The characters in the longest line of the chart labels ``cuts`` (markup escaped, a label's lines split by
    "<br>")."""
    return max((len(p) for c in cuts for p in re.split(r"<br\s*/?>", html.unescape(c))), default=0)


def _middle_cut(label: str, width: int = 24) -> str:
    """``label`` at most ``width`` characters: its start and end kept, the middle cut to an ellipsis."""
    if len(label) <= width:
        return label
    head = (width - 1) // 2
    return f"{label[:head]}…{label[len(label) - (width - 1 - head) :]}"


def distinct_cuts(labels: Sequence[str], width: int = 24) -> list[str]:
    """``labels`` cut in the middle to about ``width`` characters (:func:`_middle_cut`), still told apart.

    Runs named by their hyperparameters differ in the middle ("llama-ft-lr1e-5-seed1-step1000", "…-lr2e-5-…"):
    their plain cuts read alike, and a chart with no hover (a file, a print) showed rows no one could tell
    apart. A label whose cut reads as another's keeps, between its start and its end, each part (between
    separators such as "-" or "_") where it first differs from another label ("Δ llama-ft-lr1e…step1000");
    labels that still read alike (equal names) get "#i", their place in the list from 1. Plain text in and
    out, not markup."""
    labels = [str(x) for x in labels]
    cuts = [_middle_cut(x, width) for x in labels]
    widened: set[int] = set()
    for _ in range(len(labels)):  # a widened cut may read as one not widened yet: that one is widened next
        alike = {i for group in _alike(cuts) for i in group} - widened
        if not alike:
            break
        for i in alike:
            cuts[i] = _keep_differences(labels[i], labels[:i] + labels[i + 1 :], width)
        widened |= alike
    for group in _alike(cuts):
        for i in group:
            cuts[i] = f"{cuts[i]} #{i + 1}"
    return cuts


def _alike(cuts: list[str]) -> list[list[int]]:
    """The places of the cuts that read the same, in groups of two or more."""
    where: dict[str, list[int]] = {}
    for i, c in enumerate(cuts):
        where.setdefault(c, []).append(i)
    return [g for g in where.values() if len(g) > 1]


def _keep_differences(label: str, others: list[str], width: int) -> str:
    """``label``'s start and end, and around each place where it first differs from one of ``others`` the part
    holding that place (at most ``width // 2`` characters); the rest cut to "…"."""
    n, spans = len(label), set()
    for at in {len(os.path.commonprefix([label, other])) for other in others}:
        if at >= n:  # ``label`` starts ``other``: its end, kept anyway, tells them apart
            continue
        start = max(label.rfind(c, 0, at) for c in _SEPARATORS) + 1
        end = min([k for k in (label.find(c, at + 1) for c in _SEPARATORS) if k >= 0] + [n])
        start = max(start, at - width // 4)  # of a long part (a hash), the characters near the place
        spans.add((start, min(end, start + max(width // 2, at - start + 1))))
    edge = max(4, (width - sum(b - a for a, b in spans)) // 2 - 1)
    head = next((k for k in range(edge, min(edge + 4, n)) if label[k] in _SEPARATORS), edge)
    tail = next((k + 1 for k in range(n - edge - 1, max(n - edge - 5, 0), -1) if label[k] in _SEPARATORS), n - edge)
    merged: list[list[int]] = []
    for a, b in sorted([*spans, (0, head), (max(0, tail), n)]):
        if merged and a <= merged[-1][1] + 2:  # a gap of a character or two is kept, not cut to "…"
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return "…".join(label[a:b] for a, b in merged)


def cut_labels(labels: Sequence[str], width: int = 24, line: int = KEY_LINE) -> tuple[list[str], list[str]]:
    """Chart labels (text as builders get it, markup escaped) cut to about ``width`` characters and told apart
    (:func:`distinct_cuts`), and the lines of a key naming each cut label in full ("cut = full name", a long
    name wrapped at ``line`` characters), for a figure read with no hover (a file, a print): no lines when nothing
    was cut."""
    plain = [html.unescape(str(x)) for x in labels]
    cuts = distinct_cuts(plain, width)
    lines = []
    for cut, full in zip(cuts, plain, strict=True):
        if cut != full:
            lines += textwrap.wrap(f"{cut} = {full}", line, subsequent_indent="    ")
    return [plain_label(c) for c in cuts], [plain_label(x) for x in lines]


def chance_consensus(densities: Sequence[float], numel: int) -> pd.DataFrame:
    """Expected count of parameters in exactly k of N independent masks of the given densities (k = 0..N):
    the *global* chance, one density per mask over all ``numel`` parameters. The per-tensor one (each
    tensor at its own densities, summed) is :meth:`OverlapReport.consensus_chance`'s ``expected_per_tensor``.

    The Poisson-binomial distribution, by dynamic programming: P_k after mask i is
    P_k·(1 − p_i) + P_{k−1}·p_i. Columns k, chance (expected count).
    """
    prob = np.zeros(len(densities) + 1)
    prob[0] = 1.0
    for p in densities:
        prob[1:] = prob[1:] * (1 - p) + prob[:-1] * p
        prob[0] *= 1 - p
    return pd.DataFrame({"k": np.arange(len(prob)), "chance": numel * prob})


@takes_data()
def consensus_bars(
    df: pd.DataFrame,
    title: str = "Consensus: in how many masks is a changed parameter?",
    chance: pd.DataFrame | None = None,
) -> go.Figure:
    """Columns k (number of masks holding a parameter), count; optional layer (or group) -> stacked shares per layer.

    Rows with k = 0 (in no mask) are left out of the bars, and their total is stated in the subtitle.
    ``OverlapReport.consensus`` (group, k, count) fits as it is, its groups on the x axis. ``chance`` adds
    the counts independent masks would give, as markers: ``OverlapReport.consensus_chance()`` (k,
    expected_per_tensor: masks independent within each tensor, drawn) or :func:`chance_consensus` (k, chance:
    the global chance); the legend and hover say which.
    """
    if df.empty:
        return no_data_figure(title)
    _require(df, ["k", "count"], "consensus_bars")
    zero = float(df.loc[df["k"] == 0, "count"].sum())
    d = df[df["k"] > 0]
    ks = sorted(d["k"].unique())
    sub = f"<br><sup>not shown: {zero:,.0f} parameters in no mask</sup>" if zero else ""
    fig = go.Figure()
    by = next((c for c in ("layer", "group") if c in d.columns), None)
    if by is None:
        g = d.groupby("k")["count"].sum().reindex(ks).to_numpy(dtype=np.float64, na_value=np.nan)
        fig.add_trace(
            go.Bar(
                x=np.array(ks),
                y=g,
                marker_color=PALETTE[0],
                customdata=100 * g / g.sum() if g.sum() > 0 else np.full_like(g, np.nan),  # empty masks: no union
                hovertemplate="in %{x} masks<br>%{y:,.0f} parameters (%{customdata:.2f}% of union)<extra></extra>",
            )
        )
        if chance is not None:
            col = "expected_per_tensor" if "expected_per_tensor" in chance.columns else "chance"
            which = PER_TENSOR if col == "expected_per_tensor" else GLOBAL
            ch = chance.set_index("k")[col].reindex(ks).to_numpy(dtype=np.float64, na_value=np.nan)
            fig.data[0].name = "observed"
            fig.add_trace(
                go.Scatter(
                    x=np.array(ks),
                    y=ch,
                    mode="markers+lines",
                    name=f"{which} (independent masks)",
                    marker={"symbol": "diamond", "size": 10, "color": PALETTE[1]},
                    line={"dash": "dot", "color": PALETTE[1]},
                    hovertemplate=f"in %{{x}} masks by {which}: %{{y:,.0f}}<extra></extra>",
                )
            )
        fig.update_xaxes(tickvals=np.array(ks), type="linear")
        return _style(
            fig,
            title + sub,
            "number of masks containing the parameter (k)",
            "parameters (count)",
            showlegend=chance is not None,
            legend={"orientation": "h", "y": -0.25},
            margin={"l": 70, "r": 30, "t": title_margin(title + sub), "b": 60},
        )
    layers = _layer_order(d[by])
    piv = d.assign(_x=d[by].map(_layer_label)).pivot_table(index="_x", columns="k", values="count", aggfunc="sum")
    piv = piv.reindex(index=layers, columns=ks).fillna(0)
    share = (
        100 * piv.to_numpy(dtype=np.float64, na_value=np.nan) / np.maximum(piv.to_numpy().sum(axis=1, keepdims=True), 1)
    )
    steps = np.linspace(0, 1, len(ks)) if len(ks) > 1 else np.array([0.5])
    from plotly.colors import sample_colorscale

    for j, (kk, col) in enumerate(zip(ks, sample_colorscale(SEQUENTIAL, list(steps * 0.9)), strict=True)):
        fig.add_trace(
            go.Bar(
                x=layers,
                y=share[:, j],
                name=f"k = {kk}",
                marker_color=col,
                customdata=piv.to_numpy()[:, j],
                hovertemplate=f"{by} %{{x}}<br>in {kk} masks<br>%{{customdata:,.0f}} parameters (%{{y:.2f}}%)<extra></extra>",
            )
        )
    fig.update_xaxes(type="category")
    return _style(
        fig,
        title + sub,
        by,
        "share of changed parameters (%)",
        barmode="stack",
        margin={"l": 70, "r": 30, "t": title_margin(title + sub), "b": 60},
    )
