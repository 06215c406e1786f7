"""Figures of the sparsity-drivers experiment (:mod:`subnetviz.experiments.drivers`): pure Plotly builders.

- :func:`factor_panels`: one panel per factor, update sparsity (bf16 saves) per value, seeds as points;
- :func:`precision_pairs`: every run's bf16 and fp32 save side by side.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from subnetviz.figures.behavior import MEASURE as BEHAVIOUR
from subnetviz.figures.style import PALETTE, _require, _style, no_data_figure, takes_data

FACTOR_ORDER = ("learning_rate", "steps", "beta", "clipping", "optimizer", "data", "algorithm")
# how a measure is named and drawn: shares in % (as the tables and the other pages show them), KL in nats
MEASURE = {
    "sparsity": ("Update sparsity", "update sparsity (%)", 100.0),
    "accuracy": ("Held-out accuracy", "accuracy (%)", 100.0),
    "kl_forward": (BEHAVIOUR["kl_forward"], "nats per token", 1.0),
}


@takes_data()
def factor_panels(results: pd.DataFrame, value: str = "sparsity", title: str | None = None) -> go.Figure:
    """Small multiples: x = the factor's values, y = ``value`` of the bf16 saves (mean bar, seeds as dots);
    sparsity and accuracy in %, a KL that is positive everywhere on a log axis."""
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
    log = value == "kl_forward" and bool((r[value] > 0).all())  # KL spans decades: 1e-8 beside 0.05
    _style(fig, title, None, f"{axis} (log)" if log else axis, height=380)
    if log:
        fig.update_yaxes(type="log", exponentformat="power")
    for j in range(2, len(factors) + 1):  # one y title, on the first panel (the axes are shared)
        fig.update_yaxes(title_text=None, row=1, col=j)
    return fig


@takes_data()
def precision_pairs(results: pd.DataFrame, title: str = "Same run saved in bf16 vs fp32: update sparsity") -> go.Figure:
    """Per run (factor=value, seed): its bf16 and its fp32 save as two dots joined by a line (a dot stays
    visible at 0 %, where a bar would not: fp32 saves change nearly every weight)."""
    _require(results, ["factor", "value", "seed", "precision", "sparsity"], "precision_pairs")
    results = results[results["precision"].notna()]  # a grid point not run or failed has no save
    if results.empty:
        return no_data_figure(title)
    r = results.assign(run=results["factor"] + "=" + results["value"].astype(str) + " s" + results["seed"].astype(str))
    wide = r.pivot_table(index="run", columns="precision", values="sparsity", sort=False)
    precisions = sorted(wide.columns)
    fig = go.Figure()
    if len(precisions) > 1:  # one grey segment per run, from its lowest to its highest save
        xs, ys = [], []
        for run, row in wide.iterrows():
            xs += [run, run, None]
            ys += [100 * row.min(), 100 * row.max(), None]
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, mode="lines", line={"color": "#b8b8b8", "width": 2}, hoverinfo="skip", showlegend=False
            )
        )
    for i, prec in enumerate(precisions):
        fig.add_trace(
            go.Scatter(
                x=wide.index,
                y=100 * wide[prec],
                mode="markers",
                name=f"{prec} save",
                marker={"color": PALETTE[i], "size": 9, "symbol": ("circle", "diamond")[i % 2]},
                hovertemplate="%{x}<br>sparsity %{y:.3g} %<extra>" + prec + "</extra>",
            )
        )
    fig.update_xaxes(type="category")
    return _style(fig, title, "run", "update sparsity (%)")
