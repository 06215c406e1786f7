"""Figures of W_base vs W_ft subspace geometry (:mod:`subnetviz.analysis.subspaces`): pure Plotly builders.

- :func:`angle_heatmap`: layers × module kinds of the largest principal angle (degrees);
- :func:`angle_curves`: the full angle vector of selected matrices against the subspace index;
- :func:`principal_overlap_scatter`: the update mask's share inside the principal mask against chance.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from subnetviz.figures.colors import module_colors
from subnetviz.figures.style import (
    SEQUENTIAL,
    _grid,
    _layer_heatmap,
    _require,
    _style,
    mtp_layer_ticks,
    no_data_figure,
    series_color,
    takes_data,
)


@takes_data()
def angle_heatmap(df: pd.DataFrame, side: str = "left", title: str | None = None) -> go.Figure:
    """Layers × modules of ``angle_{side}_max`` in degrees (others blank). Several matrices of one layer and
    module (an MoE's experts, stored one by one or packed) make one cell: the largest angle of any of them, the
    mean of their mean σ ratios, and how many they are in the hover.

    Needs columns layer, module, angle_left_max / angle_right_max; sv_ratio_mean and k in the hover
    when present; a layer whose matrices are all in ``block`` "mtp" (or flagged ``mtp``) is ticked "48 · MTP".
    """
    col = f"angle_{side}_max"
    title = title or f"Largest principal angle between top-K {side} singular subspaces (°)"
    if df.empty:
        return no_data_figure(title)
    _require(df, ["layer", "module", col], "angle_heatmap")
    cells = _per_cell(df, col)
    layers, modules, g = _grid(cells, [col, "sv_ratio_mean", "k", "matrices"], "angle_heatmap")
    custom = np.stack([g["sv_ratio_mean"], g["k"], g["matrices"]], axis=-1)
    hover = (
        "layer %{y} · %{x}<br>largest angle %{z:.2f}°<br>mean σ ratio %{customdata[0]:.4f}<br>K %{customdata[1]:.0f}"
        "<br>over %{customdata[2]:.0f} matrices"
    )
    fig = _layer_heatmap(
        layers,
        modules,
        g[col],
        custom,
        hover,
        title,
        "degrees",
        colorscale=SEQUENTIAL,
        zmin=0,
        zmax=max(1.0, float(np.nanmax(g[col])) if np.isfinite(g[col]).any() else 1.0),
    )
    mtp_layer_ticks(fig, cells, layers)  # a multi-token-prediction module's layer, ticked "48 · MTP"
    return fig


def _per_cell(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """One row per (layer, module): the largest ``col`` (NaN only where every matrix's is), the mean
    ``sv_ratio_mean``, the largest K and the number of matrices."""
    d = df.assign(
        _layer=df["layer"].astype(str), _module=df["module"].astype(str), matrices=1
    )  # (keys that group whatever the dtype)
    agg = {col: "max", "matrices": "sum", "layer": "first", "module": "first"}
    if "sv_ratio_mean" in d:
        agg["sv_ratio_mean"] = "mean"
    if "k" in d:
        agg["k"] = "max"
    if "block" in d and "mtp" not in d:  # (the table names each matrix's block; "mtp": past the last layer)
        d["mtp"] = d["block"].astype(str).eq("mtp")
    extra = [c for c in ("mtp",) if c in d]
    agg.update({c: "all" for c in extra})
    for c in (col, "sv_ratio_mean", "k"):
        if c in d:
            d[c] = pd.to_numeric(d[c], errors="coerce")
    return d.groupby(["_layer", "_module"], sort=False, dropna=False).agg(agg).reset_index(drop=True)


@takes_data()
def angle_curves(vectors: pd.DataFrame, names: list[str], side: str = "left", title: str | None = None) -> go.Figure:
    """Principal angles (degrees, ascending) against their index, one line per matrix in ``names``.

    ``vectors``: the long frame of ``SubspaceTable.vectors()`` (name, index, angle_left, angle_right).
    """
    col = f"angle_{side}"
    title = title or f"Principal angles, {side} singular subspaces"
    _require(vectors, ["name", "index", col], "angle_curves")
    sel = vectors[vectors["name"].isin(names)]
    if sel.empty:
        return no_data_figure(title)
    fig = go.Figure()
    for i, (name, g) in enumerate(sel.groupby("name", sort=False)):
        fig.add_trace(
            go.Scatter(
                x=g["index"] + 1,
                y=g[col],
                mode="lines+markers",
                name=str(name),
                line={"color": series_color(i)},  # each line a colour of its own (no cycling past eight)
                hovertemplate=f"{name}<br>i %{{x}}: %{{y:.3f}}°<extra></extra>",
            )
        )
    return _style(fig, title, "i (principal angle index)", "angle (degrees)")


@takes_data()
def principal_overlap_scatter(df: pd.DataFrame, title: str | None = None) -> go.Figure:
    """principal_overlap against principal_overlap_chance (both fractions, drawn in %) per matrix.

    Points under the diagonal: the update avoids the principal weights more than chance.
    """
    title = title or "Update mask inside the principal-weight mask vs chance"
    _require(
        df,
        ["name", "principal_overlap", "principal_overlap_chance"],
        "principal_overlap_scatter",
        shares=["principal_overlap", "principal_overlap_chance"],
    )
    d = df.dropna(subset=["principal_overlap"])
    if d.empty:
        return no_data_figure(title, "no changed entries in any matrix")
    color = d["module"].astype(str) if "module" in d.columns else None
    fig = go.Figure()
    groups = d.groupby(color, sort=False) if color is not None else [("matrices", d)]
    # each module kind in its colour on every chart (Spectra's singular values, Series), each a colour of its own
    colors = module_colors(color) if color is not None else {"matrices": series_color(0)}
    for mod, g in groups:
        fig.add_trace(
            go.Scatter(
                x=100 * g["principal_overlap_chance"],
                y=100 * g["principal_overlap"],
                mode="markers",
                name=str(mod),
                text=g["name"],
                marker={"color": colors[str(mod)], "size": 8},
                hovertemplate="%{text}<br>chance %{x:.2f}%<br>inside principal %{y:.2f}%<extra></extra>",
            )
        )
    hi = 100 * float(max(d["principal_overlap"].max(), d["principal_overlap_chance"].max(), 0.01))
    fig.add_trace(
        go.Scatter(
            x=[0, hi], y=[0, hi], mode="lines", name="chance", line={"color": "#888", "dash": "dash"}, hoverinfo="skip"
        )
    )
    return _style(fig, title, "chance: update density (%)", "share of the update inside principal weights (%)")
