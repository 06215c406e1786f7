"""Pure Plotly builders for the bigram-subnetwork analyses (frames of :mod:`subnetviz.bigram`).

Inputs are the tidy frames the backend returns: ``AblationReport.summary()``, ``ResidualReport``
frames and ``OverlapReport.null_frame()``. Every builder returns a "no data" figure for an empty frame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from subnetviz.figures.style import (
    ACROSS_OR_UPRIGHT,
    PALETTE,
    SEQUENTIAL,
    _style,
    at_separators,
    color_map,
    no_data_figure,
    order_key,
    takes_data,
)

SETTING_LINE = 18  # px a small line under a title takes (:func:`with_setting`)
PLOTLY_HEIGHT = 450  # a figure's height where its layout sets none (Plotly's default)
SETTING_ORDER = ("bigram", "full", "subnetwork", "ablated", "random subnetwork", "random ablated", "empty")


def _spread(s: pd.DataFrame, column: str) -> tuple[np.ndarray | None, list[str]]:
    """Error-bar lengths (0 where a setting has no spread) and each bar's hover text for its spread: "± sd over n
    seeds" for a setting drawn over several seeds, nothing for one without seeds (it read "± 0.0 (sd)")."""
    if column not in s:
        return None, [""] * len(s)
    sd = s[column].to_numpy(dtype=np.float64)
    seeds = s["n_seeds"].to_numpy() if "n_seeds" in s else [None] * len(s)
    said = [
        "" if not np.isfinite(v) else f" ± {v:.2g} (sd)" if n is None else f" ± {v:.2g} (sd over {int(n)} seeds)"
        for v, n in zip(sd, seeds, strict=True)
    ]
    return np.where(np.isfinite(sd), sd, 0.0), said


def _ordered(summary: pd.DataFrame) -> pd.DataFrame:
    return summary.sort_values("setting", key=lambda col: col.map(order_key(SETTING_ORDER)), kind="stable")


@takes_data()
def fidelity_bars(summary: pd.DataFrame, title: str = "Fidelity to the bigram model") -> go.Figure:
    """Bars of r (mean ± sd over random seeds) per setting; columns setting, r_mean, r_sd. The title is short enough
    for a chart half the page wide at 1024 px ("Fidelity: surprisal correlation with the bigram model" ran 99 px past
    its edge); the y axis says what r correlates."""
    if summary.empty:
        return no_data_figure(title)
    s = _ordered(summary)
    sd, said = _spread(s, "r_sd")
    fig = go.Figure(
        go.Bar(
            x=s["setting"].to_numpy(),
            y=s["r_mean"].to_numpy(dtype=np.float64),
            marker_color=PALETTE[0],
            error_y={"type": "data", "array": sd, "visible": sd is not None},
            customdata=said,
            hovertemplate="%{x}<br>r = %{y:.4f}%{customdata}<extra></extra>",
        )
    )
    fig.update_yaxes(range=[min(0.0, float(s["r_mean"].min())), 1.0])
    return _style(fig, title, "setting", "Pearson r of per-token surprisals")


@takes_data()
def delta_bits_bars(summary: pd.DataFrame, title: str = "Loss against the full model") -> go.Figure:
    """Bars of Δ bits per token vs the full model per setting; columns setting, delta_bits (+ bits_sd)."""
    if summary.empty:
        return no_data_figure(title)
    s = _ordered(summary[summary["setting"] != "full"])
    sd, said = _spread(s, "bits_sd")
    fig = go.Figure(
        go.Bar(
            x=s["setting"].to_numpy(),
            y=s["delta_bits"].to_numpy(dtype=np.float64),
            marker_color=PALETTE[1],
            error_y={"type": "data", "array": sd, "visible": sd is not None},
            customdata=said,
            # significant digits, not decimals: a random ablation's +0.0007 would read +0.0000 at .4f
            hovertemplate="%{x}<br>Δ %{y:+.4g} bits/token%{customdata}<extra></extra>",
        )
    )
    # across where the names fit, else upright: Plotly's 30° ran "ablated", "random subnetwork" and "random ablated"
    # into one another in a chart half the page wide at 1024 px (its six bars are wider than the fidelity chart's
    # seven, so Plotly judged 30° enough there)
    fig.update_xaxes(autotickangles=ACROSS_OR_UPRIGHT)
    return _style(fig, title, "setting", "Δ bits per token vs full model")


@takes_data()
def rotation_curves(
    rotation: pd.DataFrame, title: str = "Rotation to input and to output (median |arg λ|)"
) -> go.Figure:
    """Lines per model and target; columns model, layer, target ("input"/"output"), angle_deg."""
    if rotation.empty:
        return no_data_figure(title)
    models = list(dict.fromkeys(rotation["model"]))
    colors = color_map(models)
    fig = go.Figure()
    for m in models:
        for target, dash in (("input", "solid"), ("output", "dash")):
            d = rotation[(rotation["model"] == m) & (rotation["target"] == target)].sort_values("layer")
            if len(d):
                fig.add_trace(
                    go.Scatter(
                        x=d["layer"].to_numpy(),
                        y=d["angle_deg"].to_numpy(dtype=np.float64),
                        mode="lines+markers",
                        name=f"{m} → {target}",
                        line={"color": colors[m], "dash": dash},
                        hovertemplate=f"{m}, to {target}<br>layer %{{x}}: %{{y:.1f}}°<extra></extra>",
                    )
                )
    fig.update_xaxes(dtick=1)
    return _style(
        fig, title, "layer (0 = embeddings)", "median rotation angle (degrees)", legend={"orientation": "h", "y": -0.25}
    )


@takes_data()
def covariance_heatmap(matrix: pd.DataFrame, title: str) -> go.Figure:
    """Layer × layer covariance similarity (0..1); ``matrix`` rows layer_i, columns layer_j."""
    if matrix.empty:
        return no_data_figure(title)
    z = matrix.to_numpy(dtype=np.float64)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(c) for c in matrix.columns],
            y=[str(i) for i in matrix.index],
            zmin=0,
            zmax=1,
            colorscale=SEQUENTIAL,
            text=np.round(z, 2),
            texttemplate="%{text}",
            colorbar={"title": {"text": "similarity"}},
            hovertemplate="layers %{y} and %{x}: %{z:.3f}<extra></extra>",
        )
    )
    # square cells; the axes' domains shrink to the matrix (constrain="domain"), so the x axis stays under it
    # (the default grew the y range instead, and the matrix floated ~80 px above its layer ticks)
    fig.update_xaxes(constrain="domain")
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain")
    return _style(fig, title, "layer", "layer")


@takes_data()
def null_histogram(
    null: pd.DataFrame, observed: float, title: str = "Overlap with the optimal subnetwork against two nulls"
) -> go.Figure:
    """Histograms of null overlaps (columns null, overlap: fractions) with the observed overlap as a line, in %
    of all maskable weights as the overlap table shows them (not fractions that the axis wrote as 100µ)."""
    if null.empty:
        return no_data_figure(title)
    fig = go.Figure()
    for i, (name, d) in enumerate(null.groupby("null", sort=False)):
        fig.add_trace(
            go.Histogram(
                x=100 * d["overlap"].to_numpy(dtype=np.float64),
                name=f"null: {name}",
                opacity=0.6,
                marker_color=PALETTE[i % len(PALETTE)],
                xhoverformat=".3g",  # (the bin's range: 0.0012000000000000001-0.0014 %)
                hovertemplate="overlap %{x} %<br>%{y} null draws<extra>%{fullData.name}</extra>",
            )
        )
    fig.add_vline(
        x=100 * observed, line_dash="dash", line_color="black", annotation_text=f"observed {100 * observed:.3g} %"
    )
    fig = _style(fig, title, "overlap (% of all maskable weights)", "null draws", barmode="overlay")
    fig.update_xaxes(exponentformat="e")  # never an SI prefix (µ, m) on a percent axis
    return fig


@takes_data()
def with_setting(fig: go.Figure, *lines: str, wrap: int | None = None) -> go.Figure:
    """``fig`` with ``lines`` (data, shown as text: a mask's or a model's name) as small lines under its title, the
    top margin and the figure grown to hold them (the plot keeps its height: a half-width chart's y-axis title, taller
    than its plot, reached into the lines): a figure downloaded for a paper carries only its title, and no picker
    beside it says which mask, model and corpus it shows (the corpus changes every number). ``wrap``: a line longer
    than this many characters is broken at its " · " separators (a chart half the page wide cut a mask's run id at
    1024 px). Changes ``fig`` and returns it."""
    shown = [part for line in lines if line for part in _wrapped(line, wrap)]
    sub = "".join(f"<br><sup>{line}</sup>" for line in shown)
    top = fig.layout.margin.t if fig.layout.margin.t is not None else 80
    room = SETTING_LINE * len(shown)
    return fig.update_layout(
        title_text=f"{fig.layout.title.text or ''}{sub}",
        margin_t=top + room,
        height=(fig.layout.height or PLOTLY_HEIGHT) + room,
    )


def _wrapped(line: str, width: int | None) -> list[str]:
    """``line`` in pieces of at most ``width`` characters, broken only where a " · " separator is (the line break
    stands for it: a figure picker that names a chart by its title reads each break as " · " again); one piece when
    ``width`` is None or the line fits."""
    if width is None or len(line) <= width:
        return [line]
    return at_separators(line, width)
