"""Figures along training: checkpoint-series lines, where the parameters ended up (stacked bar),
sparsity per module kind over steps, training curves with EMA smoothing, and the continual-learning
accuracy matrix (conventions as in :mod:`subnetviz.figures.updates`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from subnetviz.figures.colors import module_colors
from subnetviz.figures.overlap import cut_labels
from subnetviz.figures.style import (
    GREY_CELL,
    PALETTE,
    SEQUENTIAL,
    FigureDataError,
    _check_share,
    _require,
    _style,
    _unique,
    color_map,
    every_category,
    no_data_figure,
    takes_data,
)

# The split's parts as they read for checkpoints that are not one run (independent finetunes of one base in the
# sidebar's order): "updated at some step" is then only "differs from the base in some checkpoint", and an earlier
# finetune's update a later one did not make was not undone (nothing cancelled out).
SPLIT_NOT_RUN = {
    "never updated": "equal to the base in every checkpoint",
    "updated, unchanged at the end": "changed in an earlier checkpoint, equal to the base in the last",
    "final subnetwork": "changed in the last checkpoint",
}
SPLIT_COLORS = {"never updated": "#BBBBBB", "updated, unchanged at the end": PALETTE[5], "final subnetwork": PALETTE[0]}
SPLIT_COLORS |= {SPLIT_NOT_RUN[part]: color for part, color in list(SPLIT_COLORS.items())}


@takes_data()
def series_lines(
    df: pd.DataFrame,
    title: str | None = None,
    first: str = "first checkpoint",
    ticks: Sequence[str] | None = None,
    start: int = 0,
) -> go.Figure:
    """Columns step, vs_first, vs_previous (sparsity fractions); optional back_to_start (share).

    ``first`` names what the first checkpoint is (``"base"`` when the series starts at the base model) and
    ``start`` its step (:attr:`~subnetviz.analysis.series.SeriesResult.first_step`); the figure adds that start
    point (100 % sparse against itself) when the frame has no row for it. The steps must be distinct and not
    before ``start``: each row's "vs previous" is against the row drawn before it.
    ``ticks`` (one label per step, the start first) puts checkpoint names on the axis instead of
    training steps, for checkpoints that are not one run (title and hover then say checkpoint, not training,
    and back_to_start is named for what it is there: changed in an earlier checkpoint, equal to the start in
    this one; nothing cancelled out between independent finetunes).
    """
    if title is None:
        # (the longer one on two lines: in two thirds of a 1024 px page it was cut at "along the checkp")
        title = (
            f"Checkpoint series: update sparsity {'over training' if ticks is None else '<br>along the checkpoints'}"
        )
    if df.empty:
        return no_data_figure(title)
    _require(
        df, ["step", "vs_first", "vs_previous"], "series_lines", shares=["vs_first", "vs_previous", "back_to_start"]
    )
    d = df.sort_values("step")
    steps = d["step"].tolist()
    if len(set(steps)) < len(steps) or (steps and steps[0] < start):
        raise FigureDataError(
            f"series_lines: the steps must be distinct and not before the first checkpoint's step {start}; "
            f"got {steps[:8]}{' ...' if len(steps) > 8 else ''}."
        )
    if start not in set(steps):
        point = {"step": start, "vs_first": 1.0, "vs_previous": np.nan, "back_to_start": 0.0}
        d = pd.concat([pd.DataFrame([{c: v for c, v in point.items() if c in d.columns}]), d], ignore_index=True)
    fig = go.Figure()
    names = list(ticks)[: len(d)] if ticks is not None else None
    where = "%{text}" if names is not None else "step %{x}"
    series = [
        ("vs_first", f"sparsity vs {first}", "solid"),
        ("vs_previous", "sparsity vs previous checkpoint", "solid"),
        (
            "back_to_start",
            "updated at some step, back to the start at this checkpoint (share)"
            if ticks is None
            else f"changed in an earlier checkpoint, equal to the {first} in this one (share)",
            "dash",
        ),
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
                    text=names,
                    hovertemplate=f"{where}<br>{name}: %{{y:.2f}}%<extra></extra>",
                )
            )
    if ticks is None:
        _style(fig, title, "training step", "share of parameters (%)", legend={"orientation": "h", "y": -0.2})
        if d["step"].max() - d["step"].min() <= 10:  # whole steps only: a short run reads 1, 2, 3, not 1, 1.5, 2
            fig.update_xaxes(dtick=1)
        return fig
    return _named_checkpoints(fig, title, d["step"].to_numpy(), names)


# The axis of checkpoints that are not one run names each (its folder name, "llama-3.2-1b-grpo-math-seed0-lr1e-6"):
# at Plotly's 30° those ran right, under the legend (0.2 of the plot under it) and past the figure's edge, where the
# last one was not drawn at all. They are drawn across where they fit, else upright (every_category), a name past
# TICK_NAME characters cut in its middle (told apart; the whole name in the hover), and the legend goes at the
# figure's bottom, under room reserved for the upright names and the axis title.
TICK_NAME = 40
LEGEND_ROW = 22  # px a legend row takes: room for an entry a row (two took two in two thirds of a 1024 px page)
PLOT = 310  # px of the plot area (Plotly's 450 px figure less the default margins)


def _upright_px(text: str) -> int:
    """The px an upright tick label ``text`` (11 px) takes, on the wide side: in Chromium a lowercase letter or digit
    takes 4.9 px on the page (Source Sans), 5.1 in a file; capitals, m and w up to 7."""
    return math.ceil(sum(7.0 if c.isupper() or c in "mw@%" else 5.4 for c in text))


def _named_checkpoints(fig: go.Figure, title: str, steps: np.ndarray, names: list[str]) -> go.Figure:
    """``fig`` with checkpoint ``names`` (escaped text) on its x axis at ``steps``, laid out as :data:`TICK_NAME`
    says; the figure grows by the room under the plot, the plot keeping its height."""
    shown = cut_labels(names, TICK_NAME)[0]
    upright = max((_upright_px(html.unescape(n)) for n in shown), default=0)
    bottom = 16 + upright + 30 + LEGEND_ROW * len(fig.data)  # ticks, names, axis title, legend rows
    _style(
        fig,
        title,
        "checkpoint",
        "share of parameters (%)",
        height=80 + PLOT + bottom,
        legend={"orientation": "h", "x": 0, "y": 0, "yanchor": "bottom", "yref": "container"},
        margin={"l": 70, "r": 30, "t": 80, "b": bottom},
    )
    axis = every_category(shown)  # (its angles and font; the ticks are at the steps here, the axis is not categories)
    axis |= {"tickmode": "array", "tickvals": steps, "ticktext": shown, "automargin": True}
    fig.update_xaxes(**axis)
    return fig


# Characters per line of the split bar's title and legend names: the Series page draws it in a third of the page
# (beside the series chart), about 180 px wide at a 1024 px window with the sidebar open, where a title line holds
# about 22 characters (~7.8 px each at the title's size) and a legend name about 25 (~5.4 px, after its symbol).
NARROW = 20


def _wrapped(text: str, width: int = NARROW) -> str:
    """``text`` broken into lines of at most about ``width`` characters at spaces (Plotly's ``<br>``)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)


@takes_data()
def split_bar(df: pd.DataFrame, title: str = "Where the parameters ended up") -> go.Figure:
    """One stacked horizontal bar: columns part, count (share computed), in fixed category colours.

    Drawn for a narrow column (a third of the page): the title and the parts' names are wrapped to
    :data:`NARROW` characters a line (Plotly clips them at the figure's edge otherwise), the legend listed
    below the bar one part under another, and the figure as tall as those lines need."""
    named, title = title, _wrapped(title)
    if df.empty:
        return no_data_figure(title)
    _require(df, ["part", "count"], "split_bar")
    total = float(df["count"].sum()) or 1.0
    fig = go.Figure()
    names = [_wrapped(str(part)) for part in df["part"]]
    for i, (row, name) in enumerate(zip(df.itertuples(), names, strict=True)):
        share = 100 * row.count / total
        fig.add_trace(
            go.Bar(
                y=[""],
                x=[share],
                name=name,
                orientation="h",
                marker_color=SPLIT_COLORS.get(str(row.part), PALETTE[i % len(PALETTE)]),
                text=[f"{share:.1f} %"],
                textposition="inside",
                customdata=[row.count],
                hovertemplate=f"{row.part}<br>%{{customdata:,}} parameters (%{{x:.2f}}%)<extra></extra>",
            )
        )
    # heights in px: the title's lines over the bar, the axis' ticks and the legend's lines under it
    top = 36 + 22 * (title.count("<br>") + 1)
    bottom = 34 + sum(16 * (name.count("<br>") + 1) + 6 for name in names)
    _style(
        fig,
        title,
        None,
        None,
        barmode="stack",
        height=top + 90 + bottom,
        legend={"orientation": "v", "x": 0, "y": 0, "yanchor": "bottom", "yref": "container", "traceorder": "normal"},
        margin={"l": 20, "r": 20, "t": top, "b": bottom},
    )
    fig.update_xaxes(range=[0, 100], ticksuffix=" %")
    # the figure picker's name: the title as one line (its breaks, for width only, read as " · " there)
    fig.update_layout(meta={"name": named})
    return fig


@takes_data()
def module_series(
    df: pd.DataFrame, title: str = "Sparsity per module kind over training", first: str = "base", start: int = 0
) -> go.Figure:
    """Columns step, module, changed, numel: one line per module kind (weighted sparsity vs ``first``, in %),
    from the start point at step ``start`` (100 %: ``first`` against itself) as the series chart.
    Each kind in its colour of :func:`~subnetviz.figures.colors.module_colors`, the same on every chart."""
    if df.empty:
        return no_data_figure(title)
    _require(df, ["step", "module", "changed", "numel"], "module_series")
    g = df.groupby(["module", "step"], as_index=False)[["changed", "numel"]].sum()
    g["sparsity"] = 100 * (1 - g["changed"] / g["numel"].clip(lower=1))
    from subnetviz.figures.style import _module_order

    mods = _module_order(g["module"])
    colors = module_colors(mods)  # a kind's colour on every chart (Spectra's singular values, subspaces)
    fig = go.Figure()
    for m in mods:
        sub = g[g["module"] == m].sort_values("step")
        x, y = sub["step"].to_numpy(), sub["sparsity"].to_numpy()
        if x.size and x[0] > start:
            x, y = np.r_[start, x], np.r_[100.0, y]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines+markers",
                name=m,
                line={"color": colors[m]},
                hovertemplate=f"{m}<br>step %{{x}}: %{{y:.2f}}%<extra></extra>",
            )
        )
    _style(fig, title, "training step", f"sparsity vs {first} (%)", legend={"orientation": "h", "y": -0.2})
    if g["step"].max() - min(start, g["step"].min()) <= 10:  # whole steps only, as on the series chart beside it
        fig.update_xaxes(dtick=1)
    return fig


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


SHARE_METRICS = ("accuracy", "kept", "undecided")  # fractions in the logs, drawn in percent


@takes_data()
def training_curves(
    df: pd.DataFrame, title: str = "Training curves", colors: Mapping | None = None, smoothing: float = 0.0
) -> go.Figure:
    """One small multiple per metric, titled with the metric (and "(%)" for a share): columns step, metric, value;
    optional run (one line per run).

    Lines carry markers, so a one-point curve is visible. ``smoothing`` (0–0.99) draws the
    exponential moving average over a faint raw curve. With several runs the first is drawn wide, under
    the others, so a run that coincides with it stays visible.
    """
    if df.empty:
        return no_data_figure(title)
    _require(df, ["step", "metric", "value"], "training_curves")
    metrics = _unique(df["metric"].astype(str))
    runs = _unique(df["run"].astype(str)) if "run" in df.columns else ["run"]
    colors = colors or color_map(runs)
    # With overlays, the first run is drawn wide and first (under the others): where an overlaid run's
    # curve equals it (a subnetwork run of the same seed often does), it shows as a rim, not a lost line.
    wide = set(runs[:1]) if len(runs) > 1 else set()
    ncol = min(3, len(metrics))
    nrow = int(np.ceil(len(metrics) / ncol))
    # Each panel is named, with its unit, by its title only: a y-axis title too sat in the gap between two panels,
    # which at 1024 px (about 36 px) holds the tick labels only, and was drawn inside the panel on its left.
    names = [f"{met} (%)" if met in SHARE_METRICS else met for met in metrics]
    fig = make_subplots(rows=nrow, cols=ncol, subplot_titles=names, horizontal_spacing=0.08, vertical_spacing=0.15)
    for i, met in enumerate(metrics):
        for run in runs:
            sub = df[
                (df["metric"].astype(str) == met) & ((df["run"].astype(str) == run) if "run" in df.columns else True)
            ].sort_values("step")
            if sub.empty:
                continue
            y = sub["value"].to_numpy(dtype=np.float64, na_value=np.nan)
            if met in SHARE_METRICS:  # shares in percent, as on every other chart
                y = 100 * y
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
                    marker={"size": 9 if run in wide else 5},
                    legendgroup=run,
                    showlegend=i == 0 and len(runs) > 1,
                    line={"color": colors[run], "width": 5 if run in wide else 2},
                    hovertemplate=f"{run}<br>step %{{x}}<br>{met} %{{y:.4g}}<extra></extra>",
                ),
                **pos,
            )
        # whole steps only: a short run's axis reads 1, 2, 3, not 1, 1.5, 2
        steps = df.loc[df["metric"].astype(str) == met, "step"]
        span = float(steps.max() - steps.min())  # per metric: a one-point curve has span 0
        fig.update_xaxes(title_text="step", dtick=1 if span <= 10 else None, row=i // ncol + 1, col=i % ncol + 1)
    # The legend at the figure's very bottom, under the last row's axis titles (a bottom margin for both).
    return _style(
        fig,
        title,
        height=320 * nrow + 110,
        legend={"orientation": "h", "y": 0.0, "yanchor": "bottom", "yref": "container", "x": 0},
        margin={"l": 50, "r": 30, "t": 80, "b": 120},  # (no y-axis title left of the first panel: its ticks only)
    )


# The accuracy matrix's colour bar lies under the matrix, across it: beside it, with its title, it took some 190 px
# of a chart half the page wide (274 px at 1024 px), leaving cells 16 px wide for labels of 20 px ("97.6"), which ran
# into each other ("42.497.06.5"). COLORBAR_ROOM: px for the bar, its ticks and its title under the x axis's title
# (and its tick labels, turned where the cells are narrow).
COLORBAR_ROOM = 70
ACCURACY_COLORBAR = {
    "title": {"text": "accuracy (%)", "side": "bottom"},
    "orientation": "h",
    "thickness": 10,
    "len": 1.0,  # (as wide as the matrix)
    "y": 0,
    "yref": "container",
    "yanchor": "bottom",
    "ypad": 8,
}


# the number written in each accuracy cell by the tasks' count: at 1024 px the matrix is half the page (174 px of
# cells), and "42.4" in each of eight 20 px cells ran into its neighbours ("42.497.06.5"); from nine tasks on, even
# "100" does not fit a cell, and the numbers are on hover only
_ACCURACY_CELL = {n: "%.1f" for n in range(1, 7)} | {7: "%.0f", 8: "%.0f"}


@takes_data()
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
    cells = _ACCURACY_CELL.get(a.shape[1])  # (None: too many tasks for a number in each cell; on hover)
    text = np.where(np.isnan(a) | (cells is None), "", np.char.mod(cells or "%.0f", 100 * a))
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
            colorbar=ACCURACY_COLORBAR,
            hovertemplate="after training %{y}<br>on %{x}: %{z:.2f}%<extra></extra>",
        )
    )
    fig.update_xaxes(type="category", side="bottom", showgrid=False)
    fig.update_yaxes(type="category", autorange="reversed", showgrid=False)
    return _style(
        fig,
        title + "<br><sup>grey: task not trained yet" + ("" if cells else " · accuracies on hover") + "</sup>",
        "evaluated on task",
        "after training task",
        height=max(360, 140 + 50 * a.shape[0]) + COLORBAR_ROOM,
        plot_bgcolor=GREY_CELL,
        margin={"l": 70, "r": 30, "t": 80, "b": 60 + COLORBAR_ROOM},
    )
