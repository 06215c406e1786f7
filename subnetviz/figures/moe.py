"""Figures of mixture-of-experts updates: a layer × expert sparsity heatmap (shared experts in their
own column after the routed ones) and the routers' updates per layer. Tidy frames from
:mod:`subnetviz.analysis.experts` in, ``go.Figure`` out; no Streamlit.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from subnetviz.figures.style import (
    SEQUENTIAL,
    _require,
    _style,
    color_map,
    mtp_layer_ticks,
    no_data_figure,
    takes_data,
)
from subnetviz.figures.updates import percent_text


def _index(expert: str) -> bool:
    """Whether an expert's name is its index (ASCII digits: "²" is a digit to ``str.isdigit``, not to ``int``)."""
    return expert.isascii() and expert.isdigit()


def _expert_order(experts) -> list[str]:
    names = [str(e) for e in dict.fromkeys(experts)]
    routed = sorted((e for e in names if _index(e)), key=int)
    return routed + [e for e in names if not _index(e)]


@takes_data()
def expert_heatmap(df: pd.DataFrame, value: str = "sparsity", title: str | None = None) -> go.Figure:
    """Layers (0 at top) × experts of ``value`` (sparsity or density) in %.

    df: one row per (layer, expert) as :func:`subnetviz.analysis.experts.by_expert` gives it:
    layer, expert ("0", "1", ..., "shared"), numel, changed, sparsity, density; ``mtp`` where given (a
    multi-token-prediction module's layer, ticked "48 · MTP").
    """
    title = title or f"Experts: {value} per layer"
    if df is None or df.empty:
        return no_data_figure(title, "no experts (a dense model)")
    _require(df, ["layer", "expert", "numel", "changed", value], "expert_heatmap", shares=[value])
    layers = sorted(int(v) for v in df["layer"].dropna().unique())
    experts = _expert_order(df["expert"])
    z = np.full((len(layers), len(experts)), np.nan)
    changed = np.zeros_like(z)
    numel = np.zeros_like(z)
    li, ei = {v: i for i, v in enumerate(layers)}, {v: i for i, v in enumerate(experts)}
    for r in df.dropna(subset=["layer"]).itertuples():
        i, j = li[int(r.layer)], ei[str(r.expert)]
        z[i, j] = 100 * getattr(r, value)
        changed[i, j], numel[i, j] = r.changed, r.numel
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"E{e}" if _index(e) else e for e in experts],
            y=[str(v) for v in layers],
            customdata=np.dstack([changed, numel]),
            text=percent_text(z, decimals=2),  # in the hover only: 1 change in 4.7M entries is not 100.00 %
            colorscale=SEQUENTIAL,
            colorbar={"title": {"text": f"{value} %"}},
            hovertemplate="layer %{y} · expert %{x}<br>" + value + " %{text} %<br>changed %{customdata[0]:,.0f} of "
            "%{customdata[1]:,.0f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    mtp_layer_ticks(fig, df.dropna(subset=["layer"]), [str(v) for v in layers])  # (where df["mtp"] is given)
    return _style(fig, title, x="expert", y="layer")


@takes_data()
def router_bars(
    df: pd.DataFrame, title: str = "Routers: share of entries changed per layer", colors: Mapping | None = None
) -> go.Figure:
    """Grouped bars, one group per layer, one bar per model: density (%) of the router tensors.

    df: rows of :func:`subnetviz.analysis.experts.routers` for one or more models
    (model, layer, numel, changed; ``mtp`` where given: a multi-token-prediction module's layer, ticked "48 · MTP")."""
    if df is None or df.empty:
        return no_data_figure(title, "no routers")
    _require(df, ["model", "layer", "numel", "changed"], "router_bars")
    g = df.groupby(["model", "layer"], sort=False)[["numel", "changed"]].sum().reset_index()
    colors = colors or color_map(list(dict.fromkeys(g["model"])))
    fig = go.Figure(
        [
            go.Bar(
                x=part["layer"].astype(int).astype(str),
                y=100 * part["changed"] / part["numel"].clip(lower=1),
                name=str(model),
                marker_color=colors[str(model)],
                customdata=np.stack([part["changed"], part["numel"]], axis=1),
                hovertemplate="layer %{x}<br>%{y:.2f} % changed (%{customdata[0]:,} of %{customdata[1]:,})"
                "<extra>" + str(model) + "</extra>",
            )
            for model, part in g.groupby("model", sort=False)
        ]
    )
    fig.update_layout(barmode="group")
    layers = list(dict.fromkeys(g["layer"].astype(int).astype(str)))
    if "mtp" in df.columns:  # a multi-token-prediction module's router: its layer ticked "48 · MTP"
        flags = df.groupby(["model", "layer"], sort=False)["mtp"].all().reset_index()
        mtp_layer_ticks(fig, flags.assign(layer=flags["layer"].astype(int)), layers, axis="x")
    fig.update_yaxes(rangemode="tozero")  # a density is never negative
    if not (g["changed"] > 0).any():  # every bar 0: an empty-looking chart would read as "not drawn"
        fig.update_yaxes(range=[0, 1])
        fig.add_annotation(text="no router entry changed", xref="paper", yref="paper", x=0.5, y=0.6, showarrow=False)
    return _style(fig, title, x="layer", y="density %")
