"""Figures of the sparsity-drivers experiment (:mod:`subnetviz.experiments.drivers`): pure Plotly builders.

- :func:`factor_panels`: one panel per factor, update sparsity (bf16 saves) per value, seeds as points;
- :func:`precision_pairs`: every run's bf16 and fp32 save side by side.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from subnetviz.figures.behavior import MEASURE as BEHAVIOUR
from subnetviz.figures.style import (
    PALETTE,
    _require,
    _style,
    no_data_figure,
    number_labels,
    takes_data,
    with_subtitles,
)

FACTOR_ORDER = ("learning_rate", "steps", "beta", "clipping", "optimizer", "data", "algorithm")
# how a measure is named and drawn: shares in % (as the tables and the other pages show them), KL in nats
MEASURE = {
    "sparsity": ("Update sparsity", "update sparsity (%)", 100.0),
    "accuracy": ("Held-out accuracy", "accuracy (%)", 100.0),
    "kl_forward": (BEHAVIOUR["kl_forward"], "nats per token", 1.0),
}

# The factor chart's height and top margin (px): the title from 12 px down, the markers' legend across from 40 px,
# in one or two lines (at the right it took the panels' width and the ticks overlapped; on the title's line a long
# title ran under it), then the panels' titles just over the panels
HEIGHT, TOP = 420, 130


def measure_key(raw: str | None) -> str | None:
    """The measure of :data:`MEASURE` that ``raw`` names (its key, "kl_forward", or its label, as a link holds
    it), else None."""
    return next((key for key, (label, *_) in MEASURE.items() if raw in (key, label)), None)


def value_order(results: pd.DataFrame, factor: str) -> list[str]:
    """The x order of one factor's values: by value where every value is a number (learning rate, steps, β), else
    in the grid's order, read from all of its rows (a failed or skipped point has no bf16 row: its first seed's
    failure put its value last, and a learning-rate panel read 1e-4 before 1e-5)."""
    values = list(dict.fromkeys(results.loc[results["factor"] == factor, "value"].astype(str)))
    try:
        return sorted(values, key=float)
    except ValueError:
        return values


@takes_data()
def factor_panels(results: pd.DataFrame, value: str = "sparsity", title: str | None = None) -> go.Figure:
    """Small multiples: x = the factor's values (:func:`value_order`), y = ``value`` of the bf16 saves (mean bar,
    seeds as dots); sparsity and accuracy in %, KL on a log axis over its positive values, a KL of 0 drawn as an
    open triangle on the axis' floor. A run that trained nothing (its fp32 save equal to the base:
    :func:`subnetviz.experiments.drivers_verdicts.trained_nothing`) is drawn as × and left out of the mean, as the
    verdicts leave it out."""
    from subnetviz.experiments.drivers_verdicts import trained_nothing

    name, axis, scale = MEASURE.get(value, (value, value, 1.0))
    title = title or f"{name} against each factor (bf16 saves)"
    _require(results, ["factor", "value", "seed", "precision", value], "factor_panels")
    still = trained_nothing(results)
    r = results[results["precision"] == "bf16"].assign(still=still)
    factors = [f for f in FACTOR_ORDER if f in set(r["factor"])] + sorted(set(r["factor"]) - set(FACTOR_ORDER))
    if not factors:
        return no_data_figure(title)
    # KL spans decades (1e-8 beside 0.05): a log axis over the positive values; a 0 (a bf16 save equal to the base)
    # is drawn on the axis' floor, a decade under the smallest positive value, and named so
    positive = r.loc[r[value] > 0, value] if value == "kl_forward" else pd.Series(dtype=float)
    log = value == "kl_forward" and len(positive) > 0 and bool((r[value].dropna() >= 0).all())
    floor = float(positive.min()) / 10 if log else None
    # each panel as wide as its values ask (a bar as wide in every panel): five algorithms in a seventh of a 1024 px
    # page left their names no room, beside two optimizers with room to spare
    counts = [r.loc[r["factor"] == f, "value"].nunique() for f in factors]
    fig = make_subplots(
        rows=1,
        cols=len(factors),
        subplot_titles=[f.replace("_", " ") for f in factors],
        shared_yaxes=True,
        column_widths=[n + 1 for n in counts],
        horizontal_spacing=0.1 / len(factors),
    )
    fig.update_annotations(font_size=13)  # the panels' titles: "learning rate" and "optimizer" over narrow panels
    unit = " %" if scale == 100 else ""
    legend = set()  # the marker kinds named once in the legend
    for j, f in enumerate(factors, start=1):
        g = r[r["factor"] == f].assign(value=lambda d: d["value"].astype(str))
        order = [v for v in value_order(results, f) if v in set(g["value"])]
        mean = g[~g["still"]].groupby("value")[value].mean().reindex(order)
        # the values as the axis names them: one notation on an axis ("1e-6, 1e-5, 1e-4", not "1e-06, 1e-05,
        # 0.0001"); the x positions keep the grid's spelling, which the tables and verdicts use
        named = dict(zip(order, number_labels(order), strict=True))
        bars = scale * mean.to_numpy()
        if log:
            bars = [None if not (y > 0) else y for y in bars]  # a mean of 0 has no height on a log axis
        fig.add_trace(
            go.Bar(
                x=order,
                y=bars,
                marker_color=PALETTE[0],
                showlegend=False,
                hovertext=[named[v] for v in order],
                hovertemplate=f"{f} %{{hovertext}}<br>mean {name.lower()}: %{{y:.4g}}{unit}<extra></extra>",
            ),
            row=1,
            col=j,
        )
        # a run whose measure is NaN (not measured) is no dot: on the log axis "not > 0" put it on the floor, as a
        # seed that measured 1e-4 ("seed 0: 0.0001"); it is named under the chart instead (:func:`_unmeasured`)
        seen, zero = g[value].notna(), log & (g[value] == 0)
        kinds = [  # (legend name, which rows, marker, hover text)
            (SEED_NAME, ~g["still"] & seen & ~zero, _SEED, "%{y:.4g}" + unit),
            ("KL 0 (at the axis floor)", ~g["still"] & zero, _ZERO, "KL 0 (drawn at the floor)"),
            (
                "trained nothing (not in the mean)",
                g["still"] & seen,
                _STILL,
                "%{customdata:.4g}" + unit + ", trained nothing",
            ),
        ]
        for label, sel, marker, shown in kinds:
            d = g[sel]
            if d.empty:
                continue
            y = scale * d[value]
            if log:
                y = y.mask(y == 0, floor)  # a 0 only: the others are positive (a NaN is drawn nowhere)
            fig.add_trace(
                go.Scatter(
                    x=d["value"],
                    y=y,
                    customdata=scale * d[value],
                    mode="markers",
                    name=label,
                    showlegend=label not in legend,
                    legendgroup=label,
                    marker=marker,
                    text=d["seed"],
                    hovertemplate=f"seed %{{text}}: {shown}<extra></extra>",
                ),
                row=1,
                col=j,
            )
            legend.add(label)
        # every value named (Plotly's automatic spacing skipped labels in a narrow panel: at 1024 px the algorithm
        # panel named sft, grpo and ppo under five bars); turned upright where they do not fit across
        fig.update_xaxes(
            type="category",
            categoryorder="array",
            categoryarray=order,
            tickmode="array",
            tickvals=order,
            ticktext=[named[v] for v in order],
            tickfont={"size": 11},
            row=1,
            col=j,
        )
    zero = log and bool((r[value] == 0).any())
    missing = _unmeasured(r, value)
    _style(
        fig,
        # the title pinned to the top and the legend on a line of its own under it, above the panels' titles (on
        # the title's line a long measure's name ran under the legend at 1024 px)
        {"text": title, "y": 1, "yref": "container", "yanchor": "top", "pad": {"t": 12}},
        None,
        f"{axis} (log{'; 0 at the floor' if zero else ''})" if log else axis,
        height=HEIGHT,
        margin={"l": 70, "r": 30, "t": TOP, "b": 60},
        legend={
            "orientation": "h",
            "yref": "container",
            "yanchor": "top",
            "y": 1 - 40 / HEIGHT,
            "xanchor": "left",
            "xref": "container",
            "x": 0,
            "font": {"size": 11},
        },
    )
    if missing:  # under the x axis' labels, in lines of their own that grow the chart (the panels keep their height)
        grow = NOTE_LINE * len(missing) + 8
        fig.update_layout(height=HEIGHT + grow, margin_b=60 + grow)
        fig.add_annotation(
            text="<br>".join(missing),
            xref="paper",
            x=0,
            xanchor="left",
            xshift=-60,  # from under the y axis' title: the line's room is the chart's width, not the panels'
            yref="paper",
            y=0,
            yanchor="bottom",
            yshift=-(60 + grow) + 4,
            showarrow=False,
            align="left",
            font={"size": 11, "color": "#555555"},
        )
    if log:
        top = float(positive.max())
        fig.update_yaxes(type="log", exponentformat="power", range=[math.log10(floor) - 0.3, math.log10(top) + 0.3])
    for j in range(2, len(factors) + 1):  # one y title, on the first panel (the axes are shared)
        fig.update_yaxes(title_text=None, row=1, col=j)
    return fig


NOTE_LINE = 16  # px: a line under the factor chart that names the runs not measured (:func:`_unmeasured`)
NOTE_CHARS = 80  # characters such a line holds in a chart the page's width at 1024 px (564 px; 11 px text)
SHOWN_RUNS = 4  # the runs it names, then "and N more"
SHORT = {"sparsity": "sparsity", "accuracy": "accuracy", "kl_forward": "KL"}


def _unmeasured(bf16: pd.DataFrame, value: str) -> list[str]:
    """The lines under the factor chart naming the runs whose ``value`` is NaN (not measured: no dot, and out of
    its bar's mean), as "steps=4 s0", broken between runs; none where every run measured it."""
    gone = bf16[bf16[value].isna()]
    if gone.empty:
        return []
    runs = list(
        dict.fromkeys(f"{f}={v} s{k}" for f, v, k in zip(gone["factor"], gone["value"], gone["seed"], strict=True))
    )
    more = [f"and {len(runs) - SHOWN_RUNS} more"] if len(runs) > SHOWN_RUNS else []
    lines = [f"{SHORT.get(value, value)} not measured (NaN), not drawn:"]
    for part in runs[:SHOWN_RUNS] + more:
        if len(lines[-1]) + 3 + len(part) <= NOTE_CHARS:  # (a space, and a comma at each end but the last)
            lines[-1] += (" " if lines[-1].endswith(":") else ", ") + part
        else:
            lines[-1] += ","
            lines.append(part)
    return lines


SEED_NAME = "one seed (bar: mean over seeds)"  # the dots' legend entry, which also says what the bar is
_SEED = {"color": PALETTE[1], "size": 7}
_ZERO = {"color": PALETTE[1], "size": 9, "symbol": "triangle-down-open", "line": {"width": 2}}
_STILL = {"color": "#555555", "size": 9, "symbol": "x-thin-open", "line": {"width": 2}}


@takes_data()
def precision_pairs(results: pd.DataFrame, title: str = "Same run saved in bf16 vs fp32: update sparsity") -> go.Figure:
    """Per run (factor=value, seed): its bf16 and its fp32 save as two dots joined by a line (a dot stays
    visible at 0 %, where a bar would not: fp32 saves change nearly every weight). A run that trained nothing (its
    fp32 save equal to the base: :func:`subnetviz.experiments.drivers_verdicts.trained_nothing`) is drawn as ×, both saves at
    100 %, and named in the subtitle: its pair measures no training, as :func:`factor_panels` marks it."""
    from subnetviz.experiments.drivers_verdicts import trained_nothing

    _require(results, ["factor", "value", "seed", "precision", "sparsity"], "precision_pairs")
    results = results[results["precision"].notna()]  # a grid point not run or failed has no save
    if results.empty:
        return no_data_figure(title)
    # each factor's values named in one notation ("learning_rate=1e-6 s0" … "learning_rate=1e-4 s0", not "1e-06" …
    # "0.0001"): the run names are this chart's own
    values = results["value"].astype(str)
    named = {}  # (factor, value) -> the value as named
    for factor, these in values.groupby(results["factor"], sort=False):
        distinct = list(dict.fromkeys(these))
        named |= {(factor, v): text for v, text in zip(distinct, number_labels(distinct), strict=True)}
    values = pd.Series(
        [named.get(key, key[1]) for key in zip(results["factor"], values, strict=True)], index=results.index
    )
    r = results.assign(run=results["factor"] + "=" + values + " s" + results["seed"].astype(str))
    wide = r.pivot_table(index="run", columns="precision", values="sparsity", sort=False)
    still = list(dict.fromkeys(r.loc[trained_nothing(results), "run"]))  # in the grid's order
    trained = wide.drop(index=still)
    precisions = sorted(wide.columns)
    fig = go.Figure()
    if len(precisions) > 1:  # one grey segment per run, from its lowest to its highest save
        xs, ys = [], []
        for run, row in trained.iterrows():
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
                x=trained.index,
                y=100 * trained[prec],
                mode="markers",
                name=f"{prec} save",
                marker={"color": PALETTE[i], "size": 9, "symbol": ("circle", "diamond")[i % 2]},
                hovertemplate="%{x}<br>sparsity %{y:.3g} %<extra>" + prec + "</extra>",
            )
        )
    if still:
        saves = wide.loc[still].stack().rename("sparsity").reset_index()  # run, precision, sparsity
        fig.add_trace(
            go.Scatter(
                x=saves["run"],
                y=100 * saves["sparsity"],
                text=saves["precision"],
                mode="markers",
                name="trained nothing",
                marker=_STILL,
                hovertemplate="%{x}<br>%{text} save: sparsity %{y:.3g} %, trained nothing<extra></extra>",
            )
        )
    # the grid's order for every run, those drawn as × too (a trace's own order put them last)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=list(wide.index))
    _style(fig, title, "run", "update sparsity (%)", margin={"l": 70, "r": 30, "t": 80, "b": 60})
    if still:  # in lines the chart holds (one line ran off it at 1024 and 1440 px, its "why" unread), under the title
        shown = [f"{run}," for run in still[:6]] + ([f"and {len(still) - 6} more"] if len(still) > 6 else [])
        shown[-1] = shown[-1].rstrip(",")
        why = "(its fp32 save equals the base bit for bit: no step changed a weight), so its 100 % measures no training"
        with_subtitles(fig, _lines(["× trained nothing:", *shown, *why.split(" ")], SUBTITLE_CHARS))
    return fig


# Characters a subtitle line holds in a chart the page's width at 1024 px with the sidebar open (564 px; about
# 5.4 px a character at the subtitle's size, measured in Chromium)
SUBTITLE_CHARS = 90


def _lines(pieces: list[str], width: int) -> list[str]:
    """``pieces`` joined by spaces into lines of at most ``width`` characters, broken only between pieces (a run's
    name, "learning_rate=1e-5 s0", is one piece: never split at its space); a piece longer than ``width`` stays
    whole."""
    lines: list[str] = []
    for piece in pieces:
        if lines and len(lines[-1]) + 1 + len(piece) <= width:
            lines[-1] += f" {piece}"
        else:
            lines.append(piece)
    return lines
