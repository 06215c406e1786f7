"""Figures of update sparsity: layer × module heatmaps on one shared colour range, overall bars per
model, tolerance sweeps, ULP histograms and the norms / embeddings / head bars. Tidy DataFrame in,
``plotly.graph_objects.Figure`` out.

No Streamlit and no ``config`` here: the page (or :mod:`subnetviz.report`) passes
:data:`PLOTLY_CONFIG` when it shows a figure. Arrays go to Plotly as NumPy so plotly 7 ships them as
base64 typed arrays. Shares (sparsity, density, overlaps, ranks) come in as fractions in [0, 1] and
are drawn in percent. One qualitative palette (Okabe–Ito, colour-blind safe) names models and
masks; densities use Viridis; ratios against chance use a diverging scale centred on ×1. Every
builder returns a figure with a centred "no data" note for an empty frame instead of failing.
Spectra are in :mod:`~subnetviz.figures.spectra`, one matrix in :mod:`~subnetviz.figures.matrix`,
series and training curves in :mod:`~subnetviz.figures.series`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from subnetviz.figures.overlap import cut_labels
from subnetviz.figures.style import (
    HEATMAP_PLOT_AT_1024,
    SEQUENTIAL,
    FigureDataError,
    _grid,
    _layer_heatmap,
    _require,
    _style,
    _unique,
    color_map,
    every_category,
    heatmaps_per_row,
    mtp_layer_ticks,
    no_data_figure,
    percent_cells,
    takes_data,
)


def shared_range(frames: Sequence[pd.DataFrame], value: str = "sparsity") -> tuple[float, float]:
    """One colour range (in %) for heatmaps shown side by side: the min and max of ``value`` over all frames.

    Without it each heatmap stretches Viridis over its own range and a 95 % sparse GRPO grid looks
    like a 30 % sparse SFT grid. An empty or constant range is widened so the colourbar stays drawable.
    """
    vals = np.concatenate(
        [
            pd.to_numeric(f[value], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            for f in frames
            if len(f) and value in f.columns
        ]
        or [np.zeros(0)]
    )
    vals = 100 * vals[np.isfinite(vals)]
    if not vals.size:
        return 0.0, 100.0
    lo, hi = float(vals.min()), float(vals.max())
    return (lo, hi) if hi > lo else (max(0.0, lo - 0.5), min(100.0, hi + 0.5))


@takes_data()
def sparsity_heatmap(
    df: pd.DataFrame,
    value: str = "sparsity",
    title: str | None = None,
    zrange: tuple[float, float] | None = None,
    cell_text: bool = True,
    count_label: str | None = None,
) -> go.Figure:
    """Layers (0 at top) × module kinds of ``value`` in %.

    df: one row per (layer, module) with columns layer (int or label), module (str), changed,
    numel, sparsity, density (fractions) and any extra share column to show, e.g.
    ``sparsity_unweighted``. Missing cells stay NaN (blank), never 0. ``zrange`` (zmin, zmax in %)
    shares one colour range between heatmaps drawn side by side (see :func:`shared_range`);
    ``cell_text=False`` leaves the values to the hover (narrow columns: :func:`heatmap_cell_text` decides).
    ``count_label``: what the counted weights are when they are no update's changes (a mask's kept weights: "in
    the subnetwork"); the hover then reads "<count_label> k of n (density %)", with no word of changes or sparsity.
    """
    title = title or f"Update {value.replace('_', ' ')} by layer and module"
    if df.empty:
        return no_data_figure(title)
    _require(
        df,
        ["layer", "module", "changed", "numel", "sparsity", "density", value],
        "sparsity_heatmap",
        shares=["sparsity", "density", value],
    )
    extra = ["tensors"] if "tensors" in df.columns else []
    layers, modules, g = _grid(df, [value, "changed", "numel", "sparsity", "density", *extra], "sparsity_heatmap")
    # the shares as text (percent_text): a cell with 1 change in 10^6 reads 99.9999 %, not 100.000 %
    custom = np.stack(
        [g["changed"], g["numel"], 100 * g["sparsity"], 100 * g["density"]]
        + [percent_text(100 * g[c]) for c in ("sparsity", "density", value)]
        + ([g["tensors"]] if extra else []),
        axis=-1,
    ).astype(object)
    counts = "layer %{y} · %{x}<br>changed %{customdata[0]:,.0f} of %{customdata[1]:,.0f}"
    if count_label is not None:  # counted weights that nothing changed: their share and count, no sparsity
        hover = (
            f"layer %{{y}} · %{{x}}<br>{value.replace('_', ' ')} %{{customdata[6]}}%<br>{count_label} "
            "%{customdata[0]:,.0f} of %{customdata[1]:,.0f} (%{customdata[5]}%)"
        )
    elif value == "sparsity":
        hover = counts + "<br>sparsity %{customdata[4]}%<br>density %{customdata[5]}%"
    else:  # the cell's own value first (its colour and label), then the weighted shares under their names
        of = " (%{customdata[7]:,.0f} tensors)" if extra else ""
        hover = (
            f"layer %{{y}} · %{{x}}<br>{value.replace('_', ' ').replace('mean ', 'per-tensor mean ')} "
            f"%{{customdata[6]}}%{of}<br>changed %{{customdata[0]:,.0f}} of %{{customdata[1]:,.0f}}"
            "<br>parameter-weighted sparsity %{customdata[4]}%<br>parameter-weighted density %{customdata[5]}%"
        )
    label = f"{value.replace('_', ' ')} (%)"
    rng = {} if zrange is None else {"zmin": float(zrange[0]), "zmax": float(zrange[1])}
    z = 100 * g[value]
    fig = _layer_heatmap(
        layers, modules, z, custom, hover, title, label, text=percent_cells(z, unit=""), colorscale=SEQUENTIAL, **rng
    )
    if not cell_text:
        fig.update_traces(text=None, texttemplate=None)
    mtp_layer_ticks(fig, df, layers)
    return fig


CELL_FONT = 9
"""The smallest font (px) a heatmap's cell values are printed in (:func:`heatmap_cell_text`); below it, hover only."""
PLOTLY_CHAR_EM = 0.65
"""The width Plotly reserves for each character of a heatmap's cell text, in em (half its 1.3 line spacing): it
draws the cell values in the largest font, up to the layout's 12 px, in which the longest label fits the narrowest
cell less its gap, ``floor((cell - xgap) / (characters * 0.65))``, measured in Chromium."""


def heatmap_cell_text(frames: Sequence[pd.DataFrame], value: str = "sparsity") -> bool:
    """Whether the layer × module heatmaps of ``frames`` (one per model shown) can print their cell values in
    :data:`CELL_FONT` px or more, laid out as the page lays them out: :func:`~subnetviz.figures.style.heatmaps_per_row`
    to a row, no more than there are frames, at 1024 px with the sidebar open (:data:`HEATMAP_PLOT_AT_1024`). Pass
    the answer as :func:`sparsity_heatmap`'s ``cell_text``, and say "cell values on hover" where it is False.

    Plotly shrinks the text to fit the cell (:data:`PLOTLY_CHAR_EM`): two models of nine module kinds side by side
    left 13 px columns and printed "68.3" in 3 px, specks rather than numbers. The model count did not tell it; the
    columns' width and the longest label do ("99.9996" needs 42 px a column, "68.3" 25 px).
    """
    frames = [f for f in frames if len(f) and {"module", value} <= set(f.columns)]
    if not frames:
        return True
    columns = max(f["module"].nunique() for f in frames)
    per_row = min(heatmaps_per_row(columns), len(frames))
    cell = HEATMAP_PLOT_AT_1024[per_row] / max(1, columns) - 1  # less the heatmap's xgap
    labels = [
        percent_cells(100 * pd.to_numeric(f[value], errors="coerce").to_numpy(np.float64), unit="") for f in frames
    ]
    longest = max((len(s) for lab in labels for s in lab), default=0)
    return longest == 0 or cell / (longest * PLOTLY_CHAR_EM) >= CELL_FONT


@takes_data()
def overall_bars(
    df: pd.DataFrame,
    value: str = "sparsity",
    title: str = "Overall update sparsity per model",
    colors: Mapping | None = None,
) -> go.Figure:
    """One bar per model: columns model, ``value`` (fraction), optional changed and numel for the hover."""
    if df.empty:
        return no_data_figure(title)
    _require(df, ["model", value], "overall_bars", shares=[value])
    models = df["model"].astype(str).tolist()
    colors = colors or color_map(models)
    v = 100 * pd.to_numeric(df[value]).to_numpy(dtype=np.float64)
    # the share as text (percent_text, two decimals): 1 change in 10^5 read "100.00%" under a "99.999 %" label
    hover = "%{x}: %{customdata[0]}%"
    columns = [percent_text(v, decimals=2)]
    if {"changed", "numel"} <= set(df.columns):
        columns += [df["changed"].to_numpy(np.float64), df["numel"].to_numpy(np.float64)]
        hover += "<br>changed %{customdata[1]:,.0f} of %{customdata[2]:,.0f}"
    custom = np.stack(columns, axis=-1).astype(object)
    fig = go.Figure(
        go.Bar(
            x=models,
            y=v,
            marker_color=[colors[m] for m in models],
            text=list(percent_cells(v, unit=" %")),
            textposition="outside",
            cliponaxis=False,
            customdata=custom,
            hovertemplate=hover + "<extra></extra>",
        )
    )
    # Long names (a folder of 100 characters) cut in the middle where they differ, whole in the hover and in a key
    # under the chart: in full, the ticks ran past the figure's bottom and two names that differ only at their end
    # ("…-variant-A", "…-variant-B") both read "…-steps100-", with no way to tell which bar was which model.
    cuts, key = cut_labels(models, 24)
    names = "".join(f"<br><span style='font-size:11px'>{line}</span>" for line in key)
    _style(fig, title, names[4:] if key else None, f"{value} (%)", height=320 + 15 * len(key), showlegend=False)
    # Room above 100 % for a bar's value: at [0, 105] the label of a 98 % bar was cut off at the top.
    fig.update_yaxes(range=[0, 114], tickvals=[0, 20, 40, 60, 80, 100])
    fig.update_xaxes(type="category", tickmode="array", tickvals=models, ticktext=cuts)
    return fig


@takes_data()
def tolerance_sweep(
    df: pd.DataFrame, title: str = "Update sparsity against tolerance", colors: Mapping | None = None
) -> go.Figure:
    """Lines per model of sparsity (fraction) against |Δ| tolerance on a log axis.

    df columns model, tolerance, sparsity; optional criterion (``SparsityReport.sweep``: "exact", "|Δ|>1e-05"),
    changed, numel (for the hover). The exact point is the row whose criterion is "exact" (without a criterion
    column, tolerance 0). It cannot sit on a log axis, so it is drawn a decade left of the smallest tolerance, as a
    distinct open diamond labelled "exact", behind a dotted divider. A tolerance of 0 beside it (``--tolerances 0``:
    "|Δ|>0") is another criterion: the values differ, where exact asks whether the bits do, so a -0 -> +0 flip is
    changed under exact and not under it (weights are finite: NaN / Inf are refused before comparing). It is drawn
    as its own open square, labelled "0", between the exact point and the divider. Ticks and hovers name each
    tolerance with ``:g``, as the criteria ("|Δ|>1.5e-05") and summary.json do.
    """
    if df.empty:
        return no_data_figure(title)
    _require(df, ["model", "tolerance", "sparsity"], "tolerance_sweep", shares=["sparsity"])
    tol = pd.to_numeric(df["tolerance"]).to_numpy(dtype=np.float64, na_value=np.nan)
    if np.any(tol < 0):
        raise FigureDataError(f"tolerance_sweep: tolerances must be ≥ 0; got {sorted(set(tol[tol < 0]))}.")
    # the exact criterion by its name: a "|Δ|>0" row has tolerance 0 too (drawn with it, it read "exact (bitwise)")
    exact_rows = (
        df["criterion"].astype(str).eq("exact").to_numpy() if "criterion" in df.columns else np.asarray(tol == 0)
    )
    positive = np.unique(tol[tol > 0])
    has_zero = bool(np.any((tol == 0) & ~exact_rows))
    lo = positive.min() if positive.size else 1e-5
    exact_x = lo / 100 if has_zero else lo / 10
    zero_x = lo / 10
    models = _unique(df["model"].astype(str))
    colors = colors or color_map(models)
    fig = go.Figure()
    counts = (
        "<br>changed %{customdata[0]:,.0f} of %{customdata[1]:,.0f}" if {"changed", "numel"} <= set(df.columns) else ""
    )
    for m in models:
        mine = (df["model"].astype(str) == m).to_numpy()
        sub = df[mine].assign(_exact=exact_rows[mine]).sort_values("tolerance", kind="stable")
        t = sub["tolerance"].to_numpy(dtype=np.float64, na_value=np.nan)
        ex = sub["_exact"].to_numpy(dtype=bool)
        s = 100 * sub["sparsity"].to_numpy(dtype=np.float64, na_value=np.nan)
        # Optional counts: changed entries of numel at each tolerance.
        cd = np.stack(
            [
                sub[c].to_numpy(dtype=np.float64, na_value=np.nan) if c in sub else np.full(len(sub), np.nan)
                for c in ("changed", "numel")
            ],
            axis=-1,
        )
        shown = percent_text(s)  # the hover's share as text: 1 change in 10^6 reads 99.9999, not 100.000
        named = np.array([f"{v:g}" for v in t], dtype=object)  # as the criteria name it: 1.5e-05, never 2e-05
        on_axis = ~ex & (t > 0)
        fig.add_trace(
            go.Scatter(
                x=t[on_axis],
                y=s[on_axis],
                mode="lines+markers",
                name=m,
                legendgroup=m,
                customdata=cd[on_axis],
                text=shown[on_axis],
                hovertext=named[on_axis],
                line={"color": colors[m]},
                hovertemplate="%{fullData.name}<br>tolerance %{hovertext}<br>sparsity %{text}%"
                + counts
                + "<extra></extra>",
            )
        )
        apart = [
            (ex, exact_x, f"{m} (exact)", "diamond-open", "exact (bitwise)"),
            (~ex & (t == 0), zero_x, f"{m} (tolerance 0)", "square-open", "tolerance 0: |Δ| > 0 (-0 and +0 equal)"),
        ]
        for rows, x, name, symbol, what in apart:
            if rows.any():
                fig.add_trace(
                    go.Scatter(
                        x=np.full(int(rows.sum()), x),
                        y=s[rows],
                        mode="markers",
                        name=name,
                        customdata=cd[rows],
                        text=shown[rows],
                        legendgroup=m,
                        showlegend=False,
                        marker={"symbol": symbol, "size": 13, "color": colors[m], "line": {"width": 2}},
                        hovertemplate=f"%{{fullData.name}}<br>{what}<br>sparsity %{{text}}%"
                        + counts
                        + "<extra></extra>",
                    )
                )
    ticks = [exact_x, *([zero_x] if has_zero else []), *positive]
    labels = ["exact", *(["0"] if has_zero else []), *(f"{v:g}" for v in positive)]
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=labels)
    fig.add_vline(x=lo / np.sqrt(10), line={"dash": "dot", "color": "#999", "width": 1})
    return _style(fig, title, "absolute tolerance |Δ| ≤ τ (log)", "sparsity (%)", hovermode="closest")


@takes_data()
def ulp_histogram(
    df: pd.DataFrame,
    log_y: bool = True,
    title: str = "Distance between base and finetuned weights in ULPs",
    colors: Mapping | None = None,
    dtype: str = "",
) -> go.Figure:
    """Grouped bars per model: columns model, bin (ordered labels, first appearance order), count. ``dtype``: the
    dtype(s) the ULPs are of, as the axis names them ("bf16" where that precision was chosen; "fp32, as stored")."""
    if df.empty:
        return no_data_figure(title)
    _require(df, ["model", "bin", "count"], "ulp_histogram")
    bins = (
        list(df["bin"].cat.categories)
        if isinstance(df["bin"].dtype, pd.CategoricalDtype)
        else _unique(df["bin"].astype(str))
    )
    bins = [str(b) for b in bins]
    models = _unique(df["model"].astype(str))
    colors = colors or color_map(models)
    fig = go.Figure()
    for m in models:
        rows = df[df["model"].astype(str) == m]
        sub = rows.groupby(rows["bin"].astype(str), observed=True)["count"].sum()
        counts = sub.reindex(bins).fillna(0).to_numpy(dtype=np.float64, na_value=np.nan)
        share = 100 * counts / counts.sum() if counts.sum() else counts
        fig.add_trace(
            go.Bar(
                x=bins,
                y=counts,
                name=m,
                marker_color=colors[m],
                customdata=share,
                text=percent_text(share),  # in the hover only: a share of 1 in 10^6 reads 1.0e-04, not 0.000
                textposition="none",
                hovertemplate="%{fullData.name}<br>%{x} ULP<br>%{y:,.0f} entries (%{text}%)<extra></extra>",
            )
        )
    # every bin named (across, or upright where they do not fit): with a legend beside it in half the page at
    # 1024 px, Plotly's own spacing named 1, 3-4, 9-16 and >256 only, under seven unevenly wide bins
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=bins, **every_category(bins))
    if log_y:
        fig.update_yaxes(type="log", dtick=1)
    return _style(
        fig,
        title,
        # two lines: on one, a half-width chart at 1024 px (the Training comparison's) cut it at "of the compare"
        f"distance (units in the last place<br>of the compared dtype{f' ({dtype})' if dtype else ''})",
        "entries (count, log)" if log_y else "entries (count)",
        barmode="group",
    )


def percent_text(values, decimals: int = 3) -> np.ndarray:
    """Percentages as hovers and captions write them: ``decimals`` decimals, except where those would round a value
    onto 100 or 0 that is neither; such a value reads as :func:`percent_cells` writes it ("99.9985", "6.5e-04"), so
    a share of one change in a million never reads "100.000" beside a cell label that tells it from 100. Blank where
    undefined."""
    v = np.asarray(values, dtype=np.float64)
    cells = percent_cells(v, unit="")
    out = np.full(v.shape, "", dtype=object)
    for idx, x in np.ndenumerate(v):
        if not np.isfinite(x):
            continue
        text = f"{x:.{decimals}f}"
        hides = (x != 0 and float(text) == 0) or (abs(x) != 100 and abs(float(text)) == 100)
        out[idx] = cells[idx] if hides else text
    return out


@takes_data()
def module_bars(
    df: pd.DataFrame, title: str = "Norms, embeddings and head: update sparsity", colors: Mapping | None = None
) -> go.Figure:
    """Horizontal grouped bars: columns model, name (or key, or group), sparsity (fraction); optional changed, numel.

    Takes ``SparsityReport.special()`` as it is (model, key, ..., numel, changed, sparsity).
    """
    if df.empty:
        return no_data_figure(title)
    key = next((c for c in ("name", "key", "group") if c in df.columns), "name")
    _require(df, ["model", key, "sparsity"], "module_bars", shares=["sparsity"])
    models = _unique(df["model"].astype(str))
    names = _unique(df[key].astype(str))
    colors = colors or color_map(models)
    fig = go.Figure()
    for m in models:
        sub = df[df["model"].astype(str) == m]
        extra = np.stack(
            [
                sub.get("changed", pd.Series(np.nan, index=sub.index)).to_numpy(dtype=np.float64, na_value=np.nan),
                sub.get("numel", pd.Series(np.nan, index=sub.index)).to_numpy(dtype=np.float64, na_value=np.nan),
            ],
            axis=-1,
        )
        x = 100 * sub["sparsity"].to_numpy(dtype=np.float64, na_value=np.nan)
        fig.add_trace(
            go.Bar(
                y=sub[key].astype(str).to_numpy(),
                x=x,
                orientation="h",
                name=m,
                marker_color=colors[m],
                customdata=extra,
                text=percent_text(x),  # in the hover only: an embedding with 1 change in 10^6 is not 100.000 %
                textposition="none",
                hovertemplate="%{fullData.name}<br>%{y}<br>sparsity %{text}%<br>changed %{customdata[0]:,.0f} of %{customdata[1]:,.0f}<extra></extra>",
            )
        )
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=names, autorange="reversed")
    fig.update_xaxes(range=[0, 100])
    return _style(
        fig, title, "sparsity (%)", None, barmode="group", height=max(320, 140 + 22 * len(names) * max(1, len(models)))
    )


def criterion_label(criterion: str, eta: float) -> str:
    """The update criterion as titles and captions name it, with its parameter: ``exact``, ``tol = 1e-05`` (an
    absolute tolerance, given as its text), ``relative η = 0.001``. A saved chart keeps only its title, and the
    numbers under "relative" at η = 0.001 and at η = 0.1 differ tenfold."""
    if criterion == "exact":
        return "exact"
    if criterion == "relative":
        return f"relative η = {eta:g}"
    return f"tol = {float(criterion):g}"
