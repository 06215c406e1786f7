"""Figures of behaviour against the base (:mod:`subnetviz.analysis.behavior`): pure Plotly builders.

- :func:`kl_bars`: mean KL (nats/token) per model and experiment (finetuned, reverts, random control);
- :func:`revert_curves`: KL or accuracy against the fraction of Δ reverted, |Δ| order vs random order;
- :func:`prompt_spread`: the per-prompt distribution of mean KL, per model;
- :func:`token_bars`: per-token KL along one prompt (which tokens moved), :func:`prompt_places` placing it in its set;
- :func:`routing_overlap`, :func:`routing_entropy`: an MoE model's routing against the base's, per layer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from subnetviz.figures.style import PALETTE, _require, _style, color_map, no_data_figure, takes_data

ORDER_DASH = {"abs_delta": "solid", "random": "dash"}
ORDER_NAME = {"abs_delta": "largest |Δ| first", "random": "random order"}
MEASURE = {  # what a measure is called on every chart (its column name is for tables)
    "kl_forward": "Forward KL(π_base ‖ π)",
    "kl_reverse": "Reverse KL(π ‖ π_base)",
    "accuracy": "Teacher-forced answer accuracy",
}


def prompt_places(frame: pd.DataFrame) -> dict[int, tuple[str | None, int]]:
    """Each prompt of ``frame`` (its ``prompt`` column: numbered across every prompt set, in the results' order)
    -> its set (``set``) and its number there, from 0: with two sets of 16, prompt 16 is the second set's first
    (it was named "prompt 16", as if the first set's). Results that name no set (no ``set`` column): (None, the
    prompt's number)."""
    if "prompt" not in frame.columns or frame.empty:
        return {}
    cols = ["prompt", "set"] if "set" in frame.columns else ["prompt"]
    first = frame[cols].drop_duplicates("prompt").sort_values("prompt", kind="stable")
    if "set" not in first.columns:
        return {int(p): (None, int(p)) for p in first["prompt"]}
    counted: dict[str, int] = {}
    places = {}
    for p, s in zip(first["prompt"], first["set"].astype(str), strict=True):
        places[int(p)] = (s, counted.setdefault(s, 0))
        counted[s] += 1
    return places


def prompt_name(place: tuple[str | None, int]) -> str:
    """A prompt as the charts and pickers name it (:func:`prompt_places`): "set B, prompt 0", or "prompt 16"."""
    of_set, number = place
    return f"prompt {number}" if of_set is None else f"set {of_set}, prompt {number}"


def _scaled(value: str, y):
    """A measure as drawn, and its axis title: accuracy in % (as the tables show it), KL in nats per token."""
    return (100 * y, "accuracy (%)") if value == "accuracy" else (y, "nats per token")


@takes_data()
def kl_bars(summary: pd.DataFrame, value: str = "kl_forward", title: str | None = None) -> go.Figure:
    """Grouped bars: x = experiment, one bar per model, y = ``value`` (kl_forward, kl_reverse or accuracy)."""
    name = MEASURE.get(value, value)
    title = title or (name if value == "accuracy" else f"{name} per token")
    if summary.empty:
        return no_data_figure(title)
    _require(summary, ["model", "experiment", value], "kl_bars")
    colors = color_map(list(dict.fromkeys(summary["model"])))
    fig = go.Figure()
    for model, g in summary.groupby("model", sort=False):
        custom = g["fraction_reverted"] if "fraction_reverted" in g.columns else None
        fig.add_trace(
            go.Bar(
                x=g["experiment"],
                y=_scaled(value, g[value])[0],
                name=str(model),
                marker_color=colors[str(model)],
                customdata=custom,
                hovertemplate="%{x}<br>"
                + f"{name}: %{{y:.4g}} {'%' if value == 'accuracy' else 'nats per token'}"
                + ("<br>share of Δ reverted %{customdata:.1%}" if custom is not None else "")
                + "<extra>"
                + str(model)
                + "</extra>",
            )
        )
    return _style(fig, title, "experiment", _scaled(value, 0)[1], barmode="group")


@takes_data()
def revert_curves(curves: pd.DataFrame, value: str = "kl_forward", title: str | None = None) -> go.Figure:
    """Lines of ``value`` against the share of Δ actually reverted; solid = |Δ| order, dashed = random."""
    # two lines: on one, a half-width chart at 1024 px cut it at "against the sha"; "against" ends the first line
    # where that line stays short (about 36 characters fit), else it opens the second
    name = MEASURE.get(value, value)
    head, sub = (f"{name} against", "the") if len(name) <= 28 else (name, "against the")
    title = title or f"{head}<br><sup>{sub} share of Δ reverted to the base</sup>"
    if curves.empty:
        return no_data_figure(title, "no revert curve computed")
    _require(curves, ["model", "order", "fraction_reverted", value], "revert_curves")
    colors = color_map(list(dict.fromkeys(curves["model"])))
    fig = go.Figure()
    for (model, order), g in curves.groupby(["model", "order"], sort=False):
        g = g.sort_values("fraction_reverted")
        fig.add_trace(
            go.Scatter(
                x=100 * g["fraction_reverted"],
                y=_scaled(value, g[value])[0],
                mode="lines+markers",
                name=f"{model} · {ORDER_NAME.get(order, order)}",
                line={"color": colors[str(model)], "dash": ORDER_DASH.get(order, "dot")},
                hovertemplate="%{x:.1f}% reverted<br>"
                + f"{MEASURE.get(value, value)}: %{{y:.4g}}{' %' if value == 'accuracy' else ''}<extra></extra>",
            )
        )
    return _style(
        fig,
        title,
        "share of Δ reverted (%)",  # (the subtitle says to what; the long one lost its start at 1024 px)
        _scaled(value, 0)[1],
    )


@takes_data()
def prompt_spread(prompts: pd.DataFrame, value: str = "kl_forward", title: str | None = None) -> go.Figure:
    """Per-prompt mean ``value`` (kl_forward or kl_reverse) per model: a box and every prompt as a point, the
    models side by side on one axis in their colours on the other charts. (Overlaid histograms bin each model
    on its own, so their bars neither line up nor compare; with a few dozen prompts the points are the data.)"""
    title = title or f"Per-prompt mean {MEASURE[value][0].lower() + MEASURE[value][1:] if value in MEASURE else value}"
    if prompts.empty:
        return no_data_figure(title)
    _require(prompts, ["model", value], "prompt_spread")
    colors = color_map(list(dict.fromkeys(prompts["model"])))
    # the hover names a prompt by its set and its number there ("prompt 16" was the second set's first prompt)
    named = {p: prompt_name(at) for p, at in prompt_places(prompts).items()} if "set" in prompts.columns else None
    fig = go.Figure()
    for model, g in prompts.groupby("model", sort=False):
        which = None if "prompt" not in g.columns else g["prompt"] if named is None else g["prompt"].map(named)
        fig.add_trace(
            go.Box(
                y=g[value],
                name=str(model),
                boxpoints="all",
                jitter=0.4,
                pointpos=0,
                marker={"color": colors[str(model)], "size": 6, "opacity": 0.8},
                line={"color": colors[str(model)]},
                fillcolor="rgba(0,0,0,0)",
                customdata=which,
                hovertemplate=(
                    "" if which is None else "prompt %{customdata}: " if named is None else "%{customdata}: "
                )
                + "%{y:.4g} nats per token<extra>"
                + str(model)
                + "</extra>",
            )
        )
    return _style(fig, title, "model", "nats per token (mean over the prompt's tokens)", showlegend=False)


@takes_data()
def token_bars(tokens: pd.DataFrame, title: str = "Per-token KL along the prompt") -> go.Figure:
    """Bars per position of one prompt: forward and reverse KL; the positions that predict the answer
    shaded and marked in the hover."""
    if tokens.empty:
        return no_data_figure(title)
    _require(tokens, ["position", "token", "kl_forward", "kl_reverse"], "token_bars")
    t = tokens.sort_values("position")
    labels = [f"{p}:{tok}" for p, tok in zip(t["position"], t["token"], strict=True)]  # tokens are text: "<s>"
    answer = t["predicts_answer"].astype(bool).to_numpy() if "predicts_answer" in t else np.zeros(len(t), bool)
    role = np.where(answer, " (predicts the answer)", "")
    fig = go.Figure()
    for i, col in enumerate(["kl_forward", "kl_reverse"]):
        fig.add_trace(
            go.Bar(
                x=labels,
                y=t[col],
                name=MEASURE[col],
                marker_color=PALETTE[i],
                customdata=role,
                hovertemplate="%{x}%{customdata}<br>%{y:.4g} nats<extra>" + MEASURE[col] + "</extra>",
            )
        )
    fig = _style(fig, title, "position:token (the distribution of the next token after it)", "nats", barmode="group")
    fig.update_yaxes(exponentformat="e")  # 5e-4, not the SI prefix "500µ"
    edges = np.flatnonzero(np.diff(np.r_[0, answer.astype(np.int8), 0]))  # starts and ends of answer runs
    for k, (start, end) in enumerate(zip(edges[::2], edges[1::2], strict=True)):  # a band over each run
        fig.add_vrect(
            x0=start - 0.5,  # category axis: position i spans i ± 0.5
            x1=end - 0.5,
            fillcolor="#999999",
            opacity=0.12,
            line_width=0,
            annotation_text="predicts the answer" if k == 0 else None,
            annotation_position="top left",
        )
    fig.update_xaxes(type="category")
    return fig


_EXPERIMENT_DASH = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
_LAYER_PART = r"^(?:.*\.)?(?:layers|blocks|h)\.\d+\."  # a router's name up to its layer's number


def _router_kinds(routing: pd.DataFrame) -> pd.Series:
    """Each row's router without its layer ("mlp.gate"); "" where every layer has one router (a line per model
    and experiment), else a line per kind too (JetMoE routes its MLP's experts and its attention heads)."""
    if "router" not in routing:
        return pd.Series("", index=routing.index)
    kinds = routing["router"].astype(str).str.replace(_LAYER_PART, "", regex=True)
    return kinds if kinds.nunique() > 1 else pd.Series("", index=routing.index)


@takes_data()
def routing_overlap(routing: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Per layer, the mean Jaccard of each token's k experts against the base's (1 = routed as the base), one
    line per model and experiment (colour: model; dash: experiment). ``routing``: the rows of one prompt set
    (:mod:`subnetviz.analysis.routing`)."""
    title = title or "Routing shared with the base, per layer<br><sup>mean Jaccard of each token's top-k experts</sup>"
    if routing.empty:
        return no_data_figure(title, "no mixture-of-experts router in these models")
    _require(routing, ["model", "experiment", "layer", "jaccard", "rerouted_share", "tokens"], "routing_overlap")
    colors = color_map(list(dict.fromkeys(routing["model"])))
    dashes = {
        e: _EXPERIMENT_DASH[i % len(_EXPERIMENT_DASH)] for i, e in enumerate(dict.fromkeys(routing["experiment"]))
    }
    fig = go.Figure()
    kinds = _router_kinds(routing)
    for (model, experiment, kind), g in routing.assign(_kind=kinds).groupby(
        ["model", "experiment", "_kind"], sort=False
    ):
        g = g.sort_values("layer")
        label = f"{model} · {experiment}" + (f" · {kind}" if kind else "")
        fig.add_trace(
            go.Scatter(
                x=g["layer"],
                y=g["jaccard"],
                mode="lines+markers",
                name=label,
                line={"color": colors[str(model)], "dash": dashes[experiment]},
                customdata=np.stack([100 * g["rerouted_share"], g["tokens"]], axis=-1),
                hovertemplate="layer %{x}<br>Jaccard %{y:.4f}<br>%{customdata[0]:.1f} % of %{customdata[1]:,} tokens "
                "routed to other experts<extra>" + label + "</extra>",
            )
        )
    fig = _style(fig, title, "layer", "Jaccard with the base's experts")
    fig.update_yaxes(range=[-0.02, 1.02])
    fig.update_xaxes(dtick=1)
    return fig


@takes_data()
def routing_entropy(routing: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Per layer, the entropy of the expert load (nats) of the base (grey, dashed) and of each finetune as
    trained (its ``finetuned`` rows), against ln E, where every expert takes as many assignments (dotted)."""
    title = title or "Entropy of the expert load per layer (ln E: every expert used alike)"
    if routing.empty:
        return no_data_figure(title, "no mixture-of-experts router in these models")
    _require(
        routing, ["model", "experiment", "layer", "load_entropy", "load_entropy_base", "experts"], "routing_entropy"
    )
    ft = routing[routing["experiment"] == "finetuned"].sort_values("layer")
    if ft.empty:
        return no_data_figure(title, "no finetuned model's routing")
    colors = color_map(list(dict.fromkeys(routing["model"])))
    ft = ft.assign(_kind=_router_kinds(ft))
    fig = go.Figure()
    for kind, k in ft.groupby("_kind", sort=False):
        base = k.drop_duplicates("layer")
        suffix = f" · {kind}" if kind else ""
        fig.add_trace(
            go.Scatter(
                x=base["layer"],
                y=np.log(base["experts"].astype(float)),
                mode="lines",
                name=f"ln E (balanced){suffix}",
                line={"color": "#bbbbbb", "dash": "dot"},
                hovertemplate="layer %{x}<br>ln E = %{y:.4f}<extra></extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=base["layer"],
                y=base["load_entropy_base"],
                mode="lines+markers",
                name=f"base{suffix}",
                line={"color": "#666666", "dash": "dash"},
                hovertemplate="layer %{x}<br>%{y:.4f} nats<extra>base" + suffix + "</extra>",
            )
        )
        for model, g in k.groupby("model", sort=False):
            fig.add_trace(
                go.Scatter(
                    x=g["layer"],
                    y=g["load_entropy"],
                    mode="lines+markers",
                    name=f"{model}{suffix}",
                    line={"color": colors[str(model)]},
                    hovertemplate="layer %{x}<br>%{y:.4f} nats<extra>" + f"{model}{suffix}" + "</extra>",
                )
            )
    fig = _style(fig, title, "layer", "entropy of the expert load (nats)")
    fig.update_yaxes(rangemode="tozero")
    fig.update_xaxes(dtick=1)
    return fig
