"""Figures of update analyses: sparsity by layer × module, tolerance sweeps, ULP histograms, spectra,
series and training curves. Tidy DataFrame (or array) in, ``plotly.graph_objects.Figure`` out.

No Streamlit and no ``config`` here: the page (or :mod:`subnetviz.report`) passes
:data:`PLOTLY_CONFIG` when it shows a figure. Arrays go to Plotly as NumPy so plotly 7 ships them as
base64 typed arrays. Shares (sparsity, density, overlaps, ranks) come in as fractions in [0, 1] and
are drawn in percent. One qualitative palette (Okabe–Ito, colour-blind safe) names models and
masks; densities use Viridis; ratios against chance use a diverging scale centred on ×1. Every
builder returns a figure with a centred "no data" note for an empty frame instead of failing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from subnetviz.figures.style import (
    DIVERGING,
    PALETTE,
    SEQUENTIAL,
    FigureDataError,
    _check_share,
    _grid,
    _layer_heatmap,
    _require,
    _style,
    _unique,
    color_map,
    no_data_figure,
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


def sparsity_heatmap(
    df: pd.DataFrame,
    value: str = "sparsity",
    title: str | None = None,
    zrange: tuple[float, float] | None = None,
    cell_text: bool = True,
) -> go.Figure:
    """Layers (0 at top) × module kinds of ``value`` in %.

    df: one row per (layer, module) with columns layer (int or label), module (str), changed,
    numel, sparsity, density (fractions) and any extra share column to show, e.g.
    ``sparsity_unweighted``. Missing cells stay NaN (blank), never 0. ``zrange`` (zmin, zmax in %)
    shares one colour range between heatmaps drawn side by side (see :func:`shared_range`);
    ``cell_text=False`` leaves the values to the hover (narrow columns).
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
    layers, modules, g = _grid(df, [value, "changed", "numel", "sparsity", "density"], "sparsity_heatmap")
    custom = np.stack([g["changed"], g["numel"], 100 * g["sparsity"], 100 * g["density"]], axis=-1)
    hover = (
        "layer %{y} · %{x}<br>changed %{customdata[0]:,.0f} of %{customdata[1]:,.0f}"
        "<br>sparsity %{customdata[2]:.3f}%<br>density %{customdata[3]:.3f}%"
    )
    label = f"{value.replace('_', ' ')} (%)"
    rng = {} if zrange is None else {"zmin": float(zrange[0]), "zmax": float(zrange[1])}
    fig = _layer_heatmap(layers, modules, 100 * g[value], custom, hover, title, label, colorscale=SEQUENTIAL, **rng)
    if not cell_text:
        fig.update_traces(text=None, texttemplate=None)
    return fig


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
    hover = "%{x}: %{y:.2f}%"
    custom = None
    if {"changed", "numel"} <= set(df.columns):
        custom = np.stack([df["changed"].to_numpy(np.float64), df["numel"].to_numpy(np.float64)], axis=-1)
        hover += "<br>changed %{customdata[0]:,.0f} of %{customdata[1]:,.0f}"
    fig = go.Figure(
        go.Bar(
            x=models,
            y=v,
            marker_color=[colors[m] for m in models],
            text=[f"{x:.1f} %" for x in v],
            textposition="outside",
            customdata=custom,
            hovertemplate=hover + "<extra></extra>",
        )
    )
    _style(fig, title, None, f"{value} (%)", height=320, showlegend=False)
    fig.update_yaxes(range=[0, 105])
    fig.update_xaxes(type="category")
    return fig


def delta_image(
    delta_2d, max_side: int = 256, title: str = "Signed update Δ = W_ft − W_base (block mean)"
) -> go.Figure:
    """Downsampled signed Δ image on a diverging scale centred on 0 (symmetric range, blocks as in :func:`matrix_image`)."""
    a = np.asarray(delta_2d, dtype=np.float64)
    if a.size == 0:
        return no_data_figure(title)
    if a.ndim != 2:
        raise FigureDataError(f"delta_image: expected a 2-D array (rows, cols); got shape {a.shape}.")
    m, n = a.shape
    f = max(1, int(np.ceil(max(m, n) / max_side)))
    r0, c0 = np.arange(0, m, f), np.arange(0, n, f)
    counts = np.outer(np.minimum(r0 + f, m) - r0, np.minimum(c0 + f, n) - c0)
    mean = _block_sum(a, f) / counts
    span = float(np.nanmax(np.abs(mean))) or 1.0
    fig = go.Figure(
        go.Heatmap(
            z=mean.astype(np.float32),
            x=c0 + (f - 1) / 2,
            y=r0 + (f - 1) / 2,
            colorscale=DIVERGING,
            zmid=0,
            zmin=-span,
            zmax=span,
            colorbar={"title": {"text": "Δ", "side": "right"}, "exponentformat": "e"},
            hovertemplate="row %{y:.0f}, col %{x:.0f}: Δ %{z:.3e}<extra></extra>",
        )
    )
    sub = f"{m}×{n}, blocks of {f}×{f}" if f > 1 else f"{m}×{n}, full resolution"
    _style(fig, f"{title}<br><sup>{sub}</sup>", "column (input dim)", "row (output dim)")
    fig.update_yaxes(autorange="reversed", scaleanchor="x", scaleratio=1, constrain="domain")
    fig.update_xaxes(constrain="domain")
    return fig


def rank_heatmap(df: pd.DataFrame, title: str = "Update rank / min(m, n) by layer and module") -> go.Figure:
    """Layers × module kinds of rank_frac (fraction) in %.

    Optional: rank and min_dim (or rows and cols) for the hover, and the random-sparse baseline as
    rank_frac_random or baseline_rank_frac — so ``SpectrumTable.to_frame()`` plus layer and module
    columns fits as it is. Skipped matrices (NaN rank_frac) stay blank.
    """
    if df.empty:
        return no_data_figure(title)
    df = df.copy()
    if "min_dim" not in df.columns and {"rows", "cols"} <= set(df.columns):
        df["min_dim"] = np.minimum(pd.to_numeric(df["rows"]), pd.to_numeric(df["cols"]))
    if "rank_frac_random" not in df.columns and "baseline_rank_frac" in df.columns:
        df["rank_frac_random"] = df["baseline_rank_frac"]
    _require(df, ["layer", "module", "rank_frac"], "rank_heatmap", shares=["rank_frac", "rank_frac_random"])
    layers, modules, g = _grid(df, ["rank_frac", "rank", "min_dim", "rank_frac_random"], "rank_heatmap")
    custom = np.stack([g["rank"], g["min_dim"], 100 * g["rank_frac_random"]], axis=-1)
    hover = "layer %{y} · %{x}<br>rank %{z:.1f}% of full"
    if "rank" in df.columns and "min_dim" in df.columns:
        hover += "<br>rank %{customdata[0]:,.0f} of %{customdata[1]:,.0f}"
    if "rank_frac_random" in df.columns:
        hover += "<br>random baseline %{customdata[2]:.1f}%"
    return _layer_heatmap(
        layers,
        modules,
        100 * g["rank_frac"],
        custom,
        hover,
        title,
        "rank (% of full)",
        colorscale=SEQUENTIAL,
        zmin=0,
        zmax=100,
    )


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
        hov = "%{fullData.name}<br>tolerance %{x:.0e}<br>sparsity %{y:.3f}%" + counts + "<extra></extra>"
        fig.add_trace(
            go.Scatter(
                x=t[t > 0],
                y=s[t > 0],
                mode="lines+markers",
                name=m,
                legendgroup=m,
                customdata=cd[t > 0],
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
                    legendgroup=m,
                    showlegend=False,
                    marker={"symbol": "diamond-open", "size": 13, "color": colors[m], "line": {"width": 2}},
                    hovertemplate="%{fullData.name}<br>exact (bitwise)<br>sparsity %{y:.3f}%"
                    + counts
                    + "<extra></extra>",
                )
            )
    ticks = np.concatenate([[exact_x], positive])
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=["exact"] + [f"{v:.0e}" for v in positive])
    fig.add_vline(x=exact_x * np.sqrt(10), line={"dash": "dot", "color": "#999", "width": 1})
    return _style(fig, title, "absolute tolerance |Δ| ≤ τ (log)", "sparsity (%)", hovermode="closest")


def ulp_histogram(
    df: pd.DataFrame,
    log_y: bool = True,
    title: str = "Distance between base and finetuned weights in ULPs",
    colors: Mapping | None = None,
) -> go.Figure:
    """Grouped bars per model: columns model, bin (ordered labels, first appearance order), count."""
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
                hovertemplate="%{fullData.name}<br>%{x} ULP<br>%{y:,.0f} entries (%{customdata:.3f}%)<extra></extra>",
            )
        )
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=bins)
    if log_y:
        fig.update_yaxes(type="log", dtick=1)
    return _style(
        fig,
        title,
        "distance (units in the last place of the stored dtype)",
        "entries (count, log)" if log_y else "entries (count)",
        barmode="group",
    )


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
        fig.add_trace(
            go.Bar(
                y=sub[key].astype(str).to_numpy(),
                x=100 * sub["sparsity"].to_numpy(dtype=np.float64, na_value=np.nan),
                orientation="h",
                name=m,
                marker_color=colors[m],
                customdata=extra,
                hovertemplate="%{fullData.name}<br>%{y}<br>sparsity %{x:.3f}%<br>changed %{customdata[0]:,.0f} of %{customdata[1]:,.0f}<extra></extra>",
            )
        )
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=names, autorange="reversed")
    fig.update_xaxes(range=[0, 100])
    return _style(
        fig, title, "sparsity (%)", None, barmode="group", height=max(320, 140 + 22 * len(names) * max(1, len(models)))
    )


EPS32 = float(np.finfo(np.float32).eps)


def rank_thresholds(sigmas: pd.DataFrame, shapes: pd.DataFrame) -> dict[str, float]:
    """Series name -> the rank threshold σ₁·max(m, n)·ε_fp32 (torch's default, the paper's script).

    sigmas: name, sigma, kind (the update's rows are used); shapes: name, rows, cols.
    """
    upd = sigmas[sigmas["kind"] == "update"]
    if upd.empty:
        return {}
    s1 = upd.groupby(upd["name"].astype(str))["sigma"].max()
    dims = shapes.assign(name=shapes["name"].astype(str)).set_index("name")
    big = np.maximum(pd.to_numeric(dims["rows"]), pd.to_numeric(dims["cols"])).astype(float)
    return {n: float(v * big[n] * EPS32) for n, v in s1.items() if n in big.index}


def spectrum_curves(
    df: pd.DataFrame,
    title: str = "Singular values of updates (dashed: random sparse baseline)",
    colors: Mapping | None = None,
    thresholds: Mapping[str, float] | None = None,
) -> go.Figure:
    """Log-y singular value curves: long columns name, index, sigma, kind ("update" | "random").

    ``thresholds`` (name -> σ) draws each matrix's rank threshold as a dotted line in its colour: σ
    below it do not count towards the rank. One legend entry per matrix (its baseline toggles with
    it), laid out under the plot so long names never cover the curves.
    """
    if df.empty:
        return no_data_figure(title)
    _require(df, ["name", "index", "sigma", "kind"], "spectrum_curves")
    names = _unique(df["name"].astype(str))
    colors = colors or color_map(names)
    thresholds = thresholds or {}
    fig = go.Figure()
    for n in names:
        for kind in ("update", "random"):
            sub = df[(df["name"].astype(str) == n) & (df["kind"] == kind)].sort_values("index")
            if sub.empty:
                continue
            sig = sub["sigma"].to_numpy(dtype=np.float64, na_value=np.nan)
            fig.add_trace(
                go.Scatter(
                    x=sub["index"].to_numpy(),
                    y=np.where(sig > 0, sig, np.nan),
                    mode="lines",
                    name=n,
                    legendgroup=n,
                    showlegend=kind == "update",
                    line={
                        "color": colors[n],
                        "dash": "solid" if kind == "update" else "dash",
                        "width": 2 if kind == "update" else 1.5,
                    },
                    hovertemplate=f"{n} ({kind})<br>σ#%{{x}} = %{{y:.4g}}<extra></extra>",
                )
            )
        if n in thresholds:
            k = int(df.loc[df["name"].astype(str) == n, "index"].max())
            fig.add_trace(
                go.Scatter(
                    x=[1, k],
                    y=[thresholds[n]] * 2,
                    mode="lines",
                    legendgroup=n,
                    showlegend=False,
                    line={"color": colors[n], "dash": "dot", "width": 1},
                    hovertemplate=f"{n}: rank threshold σ₁·max(m,n)·ε = %{{y:.3g}}<extra></extra>",
                )
            )
    fig.update_yaxes(type="log", exponentformat="power", dtick=1)
    sub = "dashed: random sparse baseline" + (" · dotted: rank threshold (σ₁·max(m,n)·ε_fp32)" if thresholds else "")
    title = title.replace(" (dashed: random sparse baseline)", "")
    _style(
        fig,
        f"{title}<br><sup>{sub}</sup>",
        "singular value index (descending)",
        "singular value σ (log)",
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "xanchor": "left", "x": 0},
        height=460 + 22 * ((len(names) + 2) // 3),
    )
    return fig


def measure_range(df: pd.DataFrame, measure: str) -> tuple[float, float]:
    """(0, largest ``measure`` / min(m, n) in %) over every row: one colour range for several models' heatmaps."""
    frac = pd.to_numeric(df[measure]).astype(float) / np.minimum(
        pd.to_numeric(df["rows"]), pd.to_numeric(df["cols"])
    ).clip(lower=1)
    top = float(np.nanmax(100 * frac)) if len(frac) and np.isfinite(frac).any() else 100.0
    return 0.0, max(top, 1e-9)


def rank_measure_heatmap(
    df: pd.DataFrame,
    measure: str = "effective_rank_99",
    title: str | None = None,
    zrange: tuple[float, float] | None = None,
) -> go.Figure:
    """Layers × module kinds of a rank measure as % of min(m, n): ``effective_rank_99`` or ``stable_rank``.

    df: layer, module, rows, cols, ``measure`` (and ``rank`` for the hover). Unlike the numerical
    rank (full for any sparse random update), these separate energy spread over many directions from
    energy in a few.
    """
    names = {"effective_rank_99": "effective rank (99 % energy)", "stable_rank": "stable rank ‖Δ‖F²/‖Δ‖₂²"}
    title = title or f"{names.get(measure, measure)} / min(m, n)"
    if df.empty:
        return no_data_figure(title)
    _require(df, ["layer", "module", "rows", "cols", measure], "rank_measure_heatmap")
    df = df.assign(min_dim=np.minimum(pd.to_numeric(df["rows"]), pd.to_numeric(df["cols"])).astype(float))
    df = df.assign(frac=pd.to_numeric(df[measure]).astype(float) / df["min_dim"].clip(lower=1))
    layers, modules, g = _grid(df, ["frac", measure, "min_dim"], "rank_measure_heatmap")
    custom = np.stack([g[measure], g["min_dim"]], axis=-1)
    hover = f"layer %{{y}} · %{{x}}<br>{names.get(measure, measure)} %{{customdata[0]:,.1f}} of %{{customdata[1]:,.0f}} (%{{z:.1f}}%)"
    rng = {"zmin": 0, "zmax": 100} if zrange is None else {"zmin": float(zrange[0]), "zmax": float(zrange[1])}
    return _layer_heatmap(
        layers, modules, 100 * g["frac"], custom, hover, title, "% of min(m, n)", colorscale=SEQUENTIAL, **rng
    )


def _block_sum(a: np.ndarray, f: int) -> np.ndarray:
    """Sum of f×f blocks of a 2-D array (edge blocks are smaller), without a padded copy.

    Full blocks go through one reshape-sum (about 10× faster than ``np.add.reduceat`` on a bool
    matrix); the ragged last block row/column are summed on their own.
    """
    m, n = a.shape
    mb, nb = m // f, n // f
    dt = np.int64 if a.dtype == bool or np.issubdtype(a.dtype, np.integer) else np.float64
    out = np.zeros((-(-m // f), -(-n // f)), dtype=np.float64)
    out[:mb, :nb] = a[: mb * f, : nb * f].reshape(mb, f, nb, f).sum(axis=(1, 3), dtype=dt)
    if n % f:
        out[:mb, nb] = a[: mb * f, nb * f :].reshape(mb, f, -1).sum(axis=(1, 2), dtype=dt)
    if m % f:
        out[mb, :nb] = a[mb * f :, : nb * f].reshape(-1, nb, f).sum(axis=(0, 2), dtype=dt)
    if m % f and n % f:
        out[mb, nb] = a[mb * f :, nb * f :].sum(dtype=dt)
    return out


def matrix_image(mask_2d, max_side: int = 256, title: str = "Which entries changed (block mean)") -> go.Figure:
    """Downsampled image of a 2-D mask (bool, or float in [0, 1]): share changed per block, in %.

    The same block size f = ceil(max(m, n) / max_side) is used on both axes so the aspect ratio
    is kept; hover gives the original row/column ranges and the changed count of each block.
    """
    if hasattr(mask_2d, "detach"):  # a torch tensor, possibly on the GPU
        mask_2d = mask_2d.detach().cpu().numpy()
    a = np.asarray(mask_2d)
    if a.size == 0:
        return no_data_figure(title)
    if a.ndim != 2:
        raise FigureDataError(f"matrix_image: expected a 2-D mask (rows, cols); got shape {a.shape}.")
    m, n = a.shape
    f = max(1, int(np.ceil(max(m, n) / max_side)))
    sums = _block_sum(a, f)
    r0, c0 = np.arange(0, m, f), np.arange(0, n, f)
    rows_in, cols_in = np.minimum(r0 + f, m) - r0, np.minimum(c0 + f, n) - c0
    counts = np.outer(rows_in, cols_in).astype(np.float64)
    share = 100 * sums / counts
    if f == 1:  # one cell per entry: row and column are the axes, nothing else to say (keeps the payload small)
        trace = {"customdata": None, "hovertemplate": "row %{y:.0f}, col %{x:.0f}: %{z:.0f}% changed<extra></extra>"}
    else:  # float32 customdata: a quarter of the bytes plotly would send for float64 stacks
        custom = np.stack(
            np.broadcast_arrays(
                r0[:, None], (r0 + rows_in - 1)[:, None], c0[None, :], (c0 + cols_in - 1)[None, :], sums, counts
            ),
            axis=-1,
        ).astype(np.float32)
        trace = {
            "customdata": custom,
            "hovertemplate": "rows %{customdata[0]:.0f}–%{customdata[1]:.0f}, cols %{customdata[2]:.0f}–"
            "%{customdata[3]:.0f}<br>changed %{customdata[4]:,.0f} of %{customdata[5]:,.0f} (%{z:.2f}%)<extra></extra>",
        }
    fig = go.Figure(
        go.Heatmap(
            z=share.astype(np.float32),
            x=c0 + (cols_in - 1) / 2,
            y=r0 + (rows_in - 1) / 2,
            colorscale=SEQUENTIAL,
            zmin=0,
            zmax=100,
            colorbar={"title": {"text": "changed (%)"}},
            **trace,
        )
    )
    sub = f"{m}×{n}, blocks of {f}×{f}" if f > 1 else f"{m}×{n}, full resolution"
    _style(fig, f"{title}<br><sup>{sub}</sup>", "column (input dim)", "row (output dim)")
    fig.update_yaxes(autorange="reversed", scaleanchor="x", scaleratio=1, constrain="domain")
    fig.update_xaxes(constrain="domain")
    return fig


def _downsample_1d(v: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray, int]:
    f = max(1, int(np.ceil(v.size / max_points)))
    starts = np.arange(0, v.size, f)
    means = np.add.reduceat(v, starts) / (np.minimum(starts + f, v.size) - starts)
    return starts + (np.minimum(starts + f, v.size) - starts - 1) / 2, means, f


def row_col_ratios(
    row_ratio, col_ratio, max_points: int = 2048, title: str = "Share of entries changed per row and per column"
) -> go.Figure:
    """Two panels: fraction changed per row (output dim) and per column (input dim), in %."""
    r, c = np.asarray(row_ratio, dtype=np.float64).ravel(), np.asarray(col_ratio, dtype=np.float64).ravel()
    if r.size == 0 and c.size == 0:
        return no_data_figure(title)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1)
    for k, (v, what) in enumerate(((r, "row"), (c, "column")), start=1):
        if v.size == 0:
            continue
        x, y, f = _downsample_1d(v, max_points)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=100 * y,
                mode="lines",
                name=what,
                line={"color": PALETTE[k - 1], "width": 1},
                hovertemplate=f"{what} %{{x:.0f}}<br>changed %{{y:.2f}}%<extra></extra>",
            ),
            row=1,
            col=k,
        )
        fig.update_xaxes(title_text=f"{what} index" + (f" (mean of {f})" if f > 1 else ""), row=1, col=k)
        fig.update_yaxes(title_text="changed (%)", range=[0, 100], row=1, col=k)
    return _style(fig, title, showlegend=False)


SPLIT_COLORS = {"never updated": "#BBBBBB", "updated, unchanged at the end": PALETTE[5], "final subnetwork": PALETTE[0]}


def series_lines(
    df: pd.DataFrame,
    title: str = "Checkpoint series: update sparsity over training",
    first: str = "first checkpoint",
    ticks: Sequence[str] | None = None,
) -> go.Figure:
    """Columns step, vs_first, vs_previous (sparsity fractions); optional ever_updated (share).

    ``first`` names what step 0 is (``"base"`` when the series starts at the base model); the
    figure adds that step-0 point (100 % sparse against itself) when the frame starts later.
    ``ticks`` (one label per step, step 0 first) puts checkpoint names on the axis instead of
    training steps, for checkpoints that are not one run.
    """
    if df.empty:
        return no_data_figure(title)
    _require(
        df, ["step", "vs_first", "vs_previous"], "series_lines", shares=["vs_first", "vs_previous", "ever_updated"]
    )
    d = df.sort_values("step")
    if 0 not in set(d["step"].tolist()):
        d = pd.concat(
            [pd.DataFrame([{"step": 0, "vs_first": 1.0, "vs_previous": np.nan, "ever_updated": 0.0}]), d],
            ignore_index=True,
        )
    fig = go.Figure()
    series = [
        ("vs_first", f"sparsity vs {first}", "solid"),
        ("vs_previous", "sparsity vs previous checkpoint", "solid"),
        ("ever_updated", "updated at some step, back to the start at the end (share)", "dash"),
    ]
    for i, (col, name, dash) in enumerate(series):
        if col in d.columns:
            fig.add_trace(
                go.Scatter(
                    x=d["step"].to_numpy(),
                    y=100 * d[col].to_numpy(dtype=np.float64, na_value=np.nan),
                    mode="lines+markers",
                    name=name,
                    line={"color": PALETTE[i], "dash": dash},
                    hovertemplate=f"step %{{x}}<br>{name}: %{{y:.2f}}%<extra></extra>",
                )
            )
    _style(
        fig,
        title,
        "checkpoint" if ticks is not None else "training step",
        "share of parameters (%)",
        legend={"orientation": "h", "y": -0.2},
    )
    if ticks is not None:
        fig.update_xaxes(tickvals=d["step"].to_numpy(), ticktext=list(ticks)[: len(d)])
    return fig


def split_bar(df: pd.DataFrame, title: str = "Where the parameters ended up") -> go.Figure:
    """One stacked horizontal bar: columns part, count (share computed), in fixed category colours."""
    if df.empty:
        return no_data_figure(title)
    _require(df, ["part", "count"], "split_bar")
    total = float(df["count"].sum()) or 1.0
    fig = go.Figure()
    for i, row in enumerate(df.itertuples()):
        share = 100 * row.count / total
        fig.add_trace(
            go.Bar(
                y=[""],
                x=[share],
                name=str(row.part),
                orientation="h",
                marker_color=SPLIT_COLORS.get(str(row.part), PALETTE[i % len(PALETTE)]),
                text=[f"{share:.1f} %"],
                textposition="inside",
                customdata=[row.count],
                hovertemplate=f"{row.part}<br>%{{customdata:,}} parameters (%{{x:.2f}}%)<extra></extra>",
            )
        )
    _style(
        fig,
        title,
        None,
        None,
        barmode="stack",
        height=260,
        legend={"orientation": "h", "y": -0.45},
        margin={"l": 20, "r": 20, "t": 60, "b": 40},
    )
    fig.update_xaxes(range=[0, 100], ticksuffix=" %")
    return fig


def module_series(
    df: pd.DataFrame, title: str = "Sparsity per module kind over training", first: str = "base"
) -> go.Figure:
    """Columns step, module, changed, numel: one line per module kind (weighted sparsity vs ``first``, in %)."""
    if df.empty:
        return no_data_figure(title)
    _require(df, ["step", "module", "changed", "numel"], "module_series")
    g = df.groupby(["module", "step"], as_index=False)[["changed", "numel"]].sum()
    g["sparsity"] = 100 * (1 - g["changed"] / g["numel"].clip(lower=1))
    from subnetviz.figures.style import _module_order

    mods = _module_order(g["module"])
    colors = color_map(mods)
    fig = go.Figure()
    for m in mods:
        sub = g[g["module"] == m].sort_values("step")
        fig.add_trace(
            go.Scatter(
                x=sub["step"].to_numpy(),
                y=sub["sparsity"].to_numpy(),
                mode="lines+markers",
                name=m,
                line={"color": colors[m]},
                hovertemplate=f"{m}<br>step %{{x}}: %{{y:.2f}}%<extra></extra>",
            )
        )
    return _style(fig, title, "training step", f"sparsity vs {first} (%)", legend={"orientation": "h", "y": -0.2})


def smooth_ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average (weight 0 = raw); NaNs are skipped."""
    v = np.asarray(values, dtype=np.float64)
    if weight <= 0 or v.size == 0:
        return v
    out, acc, norm = np.full_like(v, np.nan), 0.0, 0.0
    for i, x in enumerate(v):
        if np.isfinite(x):
            acc, norm = weight * acc + (1 - weight) * x, weight * norm + (1 - weight)
        out[i] = acc / norm if norm else np.nan
    return out


def training_curves(
    df: pd.DataFrame, title: str = "Training curves", colors: Mapping | None = None, smoothing: float = 0.0
) -> go.Figure:
    """One small multiple per metric: columns step, metric, value; optional run (one line per run).

    Lines carry markers, so a one-point curve is visible. ``smoothing`` (0–0.99) draws the
    exponential moving average over a faint raw curve.
    """
    if df.empty:
        return no_data_figure(title)
    _require(df, ["step", "metric", "value"], "training_curves")
    metrics = _unique(df["metric"].astype(str))
    runs = _unique(df["run"].astype(str)) if "run" in df.columns else ["run"]
    colors = colors or color_map(runs)
    ncol = min(3, len(metrics))
    nrow = int(np.ceil(len(metrics) / ncol))
    fig = make_subplots(rows=nrow, cols=ncol, subplot_titles=metrics, horizontal_spacing=0.08, vertical_spacing=0.15)
    for i, met in enumerate(metrics):
        for run in runs:
            sub = df[
                (df["metric"].astype(str) == met) & ((df["run"].astype(str) == run) if "run" in df.columns else True)
            ].sort_values("step")
            if sub.empty:
                continue
            y = sub["value"].to_numpy(dtype=np.float64, na_value=np.nan)
            pos = {"row": i // ncol + 1, "col": i % ncol + 1}
            if smoothing > 0:
                fig.add_trace(
                    go.Scatter(
                        x=sub["step"].to_numpy(),
                        y=y,
                        mode="lines",
                        legendgroup=run,
                        showlegend=False,
                        line={"color": colors[run], "width": 1},
                        opacity=0.3,
                        hoverinfo="skip",
                    ),
                    **pos,
                )
                y = smooth_ema(y, smoothing)
            fig.add_trace(
                go.Scatter(
                    x=sub["step"].to_numpy(),
                    y=y,
                    mode="lines+markers",
                    name=run,
                    marker={"size": 5},
                    legendgroup=run,
                    showlegend=i == 0 and len(runs) > 1,
                    line={"color": colors[run]},
                    hovertemplate=f"{run}<br>step %{{x}}<br>{met} %{{y:.4g}}<extra></extra>",
                ),
                **pos,
            )
        fig.update_xaxes(title_text="step", row=i // ncol + 1, col=i % ncol + 1)
        fig.update_yaxes(title_text=met, row=i // ncol + 1, col=i % ncol + 1)
    # The legend at the figure's very bottom, under the last row's axis titles (a bottom margin for both).
    return _style(
        fig,
        title,
        height=320 * nrow + 110,
        legend={"orientation": "h", "y": 0.0, "yanchor": "bottom", "yref": "container", "x": 0},
        margin={"l": 70, "r": 30, "t": 80, "b": 120},
    )


def accuracy_matrix(A, labels: Sequence[str], title: str = "Continual learning: accuracy after each task") -> go.Figure:
    """A[t, j] (fraction) = accuracy on task j after training task t, as an annotated heatmap in %."""
    a = np.asarray(A, dtype=np.float64)
    if a.size == 0:
        return no_data_figure(title)
    if a.ndim != 2 or a.shape[1] != len(labels):
        raise FigureDataError(f"accuracy_matrix: A must be (tasks trained, {len(labels)} tasks); got shape {a.shape}.")
    _check_share(a, "accuracy_matrix: A")
    rows = (
        list(map(str, labels))[: a.shape[0]] if a.shape[0] <= len(labels) else [f"step {t}" for t in range(a.shape[0])]
    )
    if a.shape[0] == a.shape[1]:  # task j not trained yet after task t < j: grey, not a number to read
        a = np.where(np.triu(np.ones_like(a, dtype=bool), k=1), np.nan, a)
    text = np.where(np.isnan(a), "", np.char.mod("%.1f", 100 * a))
    fig = go.Figure(
        go.Heatmap(
            z=100 * a,
            x=list(map(str, labels)),
            y=rows,
            text=text,
            texttemplate="%{text}",
            colorscale=SEQUENTIAL,
            zmin=0,
            zmax=100,
            hoverongaps=False,
            xgap=2,
            ygap=2,
            colorbar={"title": {"text": "accuracy (%)"}},
            hovertemplate="after training %{y}<br>on %{x}: %{z:.2f}%<extra></extra>",
        )
    )
    fig.update_xaxes(type="category", side="bottom", showgrid=False)
    fig.update_yaxes(type="category", autorange="reversed", showgrid=False)
    return _style(
        fig,
        title + "<br><sup>grey: task not trained yet</sup>",
        "evaluated on task",
        "after training task",
        height=max(360, 140 + 50 * a.shape[0]),
        plot_bgcolor="#E6E6E6",
    )
