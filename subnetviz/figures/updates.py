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
    SEQUENTIAL,
    FigureDataError,
    _grid,
    _layer_heatmap,
    _require,
    _style,
    _unique,
    color_map,
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
    ``cell_text=False`` leaves the values to the hover (narrow columns). ``count_label``: what the counted
    weights are when they are no update's changes (a mask's kept weights: "in the subnetwork"); the hover then
    reads "<count_label> k of n (density %)", with no word of changes or sparsity.
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

    df columns model, tolerance (exact comparison = 0), sparsity; optional changed, numel (for the
    hover). The exact point cannot sit on a log axis, so it is drawn a decade left of the smallest
    tolerance, as a distinct open diamond labelled "exact", behind a dotted divider.
    """
    if df.empty:
        return no_data_figure(title)
    _require(df, ["model", "tolerance", "sparsity"], "tolerance_sweep", shares=["sparsity"])
    tol = pd.to_numeric(df["tolerance"]).to_numpy(dtype=np.float64, na_value=np.nan)
    if np.any(tol < 0):
        raise FigureDataError(f"tolerance_sweep: tolerances must be ≥ 0; got {sorted(set(tol[tol < 0]))}.")
    positive = np.unique(tol[tol > 0])
    lo = positive.min() if positive.size else 1e-5
    exact_x = lo / 10
    models = _unique(df["model"].astype(str))
    colors = colors or color_map(models)
    fig = go.Figure()
    for m in models:
        sub = df[df["model"].astype(str) == m].sort_values("tolerance")
        t = sub["tolerance"].to_numpy(dtype=np.float64, na_value=np.nan)
        s = 100 * sub["sparsity"].to_numpy(dtype=np.float64, na_value=np.nan)
        # Optional counts: changed entries of numel at each tolerance.
        cd = np.stack(
            [
                sub[c].to_numpy(dtype=np.float64, na_value=np.nan) if c in sub else np.full(len(sub), np.nan)
                for c in ("changed", "numel")
            ],
            axis=-1,
        )
        counts = (
            "<br>changed %{customdata[0]:,.0f} of %{customdata[1]:,.0f}"
            if {"changed", "numel"} <= set(df.columns)
            else ""
        )
        hov = "%{fullData.name}<br>tolerance %{x:.0e}<br>sparsity %{text}%" + counts + "<extra></extra>"
        shown = percent_text(s)  # the hover's share as text: 1 change in 10^6 reads 99.9999, not 100.000
        fig.add_trace(
            go.Scatter(
                x=t[t > 0],
                y=s[t > 0],
                mode="lines+markers",
                name=m,
                legendgroup=m,
                customdata=cd[t > 0],
                text=shown[t > 0],
                line={"color": colors[m]},
                hovertemplate=hov,
            )
        )
        if (t == 0).any():
            fig.add_trace(
                go.Scatter(
                    x=np.full((t == 0).sum(), exact_x),
                    y=s[t == 0],
                    mode="markers",
                    name=f"{m} (exact)",
                    customdata=cd[t == 0],
                    text=shown[t == 0],
                    legendgroup=m,
                    showlegend=False,
                    marker={"symbol": "diamond-open", "size": 13, "color": colors[m], "line": {"width": 2}},
                    hovertemplate="%{fullData.name}<br>exact (bitwise)<br>sparsity %{text}%"
                    + counts
                    + "<extra></extra>",
                )
            )
    ticks = np.concatenate([[exact_x], positive])
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=["exact"] + [f"{v:.0e}" for v in positive])
    fig.add_vline(x=exact_x * np.sqrt(10), line={"dash": "dot", "color": "#999", "width": 1})
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
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=bins)
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
