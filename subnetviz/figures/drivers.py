"""Figures of the sparsity-drivers experiment (:mod:`subnetviz.experiments.drivers`): pure Plotly builders.

- :func:`factor_panels`: one panel per factor, update sparsity (bf16 saves) per value, seeds as points;
- :func:`precision_pairs`: every run's bf16 and fp32 save side by side.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from subnetviz.figures.behavior import MEASURE as BEHAVIOUR
from subnetviz.figures.style import PALETTE, _require, _style, no_data_figure

FACTOR_ORDER = ("learning_rate", "steps", "beta", "clipping", "optimizer", "data", "algorithm")
# how a measure is named and drawn: shares in % (as the tables and the other pages show them), KL in nats
MEASURE = {
    "sparsity": ("Update sparsity", "update sparsity (%)", 100.0),
    "accuracy": ("Held-out accuracy", "accuracy (%)", 100.0),
    "kl_forward": (BEHAVIOUR["kl_forward"], "nats per token", 1.0),
}


def factor_panels(results: pd.DataFrame, value: str = "sparsity", title: str | None = None) -> go.Figure:
    """Small multiples: x = the factor's values, y = ``value`` of the bf16 saves (mean bar, seeds as dots);
    sparsity and accuracy in %."""
    name, axis, scale = MEASURE.get(value, (value, value, 1.0))
    title = title or f"{name} against each factor (bf16 saves)"
    _require(results, ["factor", "value", "seed", "precision", value], "factor_panels")
    r = results[results["precision"] == "bf16"]
    factors = [f for f in FACTOR_ORDER if f in set(r["factor"])] + sorted(set(r["factor"]) - set(FACTOR_ORDER))
    if not factors:
        return no_data_figure(title)
    fig = make_subplots(
        rows=1, cols=len(factors), subplot_titles=[f.replace("_", " ") for f in factors], shared_yaxes=True
    )
    for j, f in enumerate(factors, start=1):
        g = r[r["factor"] == f]
        order = list(dict.fromkeys(g["value"].astype(str)))
        mean = g.groupby(g["value"].astype(str))[value].mean().reindex(order)
        fig.add_trace(
            go.Bar(
                x=order,
                y=scale * mean.to_numpy(),
                marker_color=PALETTE[0],
                showlegend=False,
                hovertemplate=f"{f} %{{x}}<br>mean {name.lower()}: %{{y:.4g}}{' %' if scale == 100 else ''}"
                "<extra></extra>",
            ),
            row=1,
            col=j,
        )
        fig.add_trace(
            go.Scatter(
                x=g["value"].astype(str),
                y=scale * g[value],
                mode="markers",
                showlegend=False,
                marker={"color": PALETTE[1], "size": 7},
                text=g["seed"],
                hovertemplate="seed %{text}: %{y:.4g}<extra></extra>",
            ),
            row=1,
            col=j,
        )
        fig.update_xaxes(type="category", row=1, col=j)
    _style(fig, title, None, axis, height=380)
    for j in range(2, len(factors) + 1):  # one y title, on the first panel (the axes are shared)
        fig.update_yaxes(title_text=None, row=1, col=j)
    return fig


def precision_pairs(results: pd.DataFrame, title: str = "Same run saved in bf16 vs fp32: update sparsity") -> go.Figure:
    """Grouped bars per run (factor=value): bf16 save and fp32 save sparsity."""
    _require(results, ["factor", "value", "seed", "precision", "sparsity"], "precision_pairs")
    if results.empty:
        return no_data_figure(title)
    fig = go.Figure()
    for i, (prec, g) in enumerate(results.groupby("precision", sort=True)):
        labels = g["factor"] + "=" + g["value"].astype(str) + " s" + g["seed"].astype(str)
        fig.add_trace(
            go.Bar(
                x=labels,
                y=100 * g["sparsity"],
                name=f"{prec} save",
                marker_color=PALETTE[i],
                hovertemplate="%{x}<br>sparsity %{y:.2f} %<extra>" + prec + "</extra>",
            )
        )
    return _style(fig, title, "run", "update sparsity (%)", barmode="group")
