"""Figures of update spectra: singular-value curves with the rank threshold, rank / effective rank /
stable rank heatmaps by layer × module (conventions as in :mod:`subnetviz.figures.updates`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
    _unique,
    color_map,
    mtp_layer_ticks,
    no_data_figure,
    percent_cells,
    subtitle,
    takes_data,
    title_margin,
)

EPS32 = float(np.finfo(np.float32).eps)
CURVES_LINE = 100
"""Characters a subtitle line of :func:`spectrum_curves` holds: the chart is the page's width, 564 px at 1024 px
with the sidebar open (about 5 px a character at the subtitle's size)."""


@takes_data()
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
    df = _pooled(df, ["rank_frac", "rank_frac_random"])
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
        text=percent_cells(100 * g["rank_frac"], unit=""),
        colorscale=SEQUENTIAL,
        zmin=0,
        zmax=100,
    )


def _pooled(df: pd.DataFrame, fracs: Sequence[str]) -> pd.DataFrame:
    """One row per (layer, module) where a cell holds several matrices (the experts of an MoE layer, each its
    own matrix): each fraction in ``fracs`` pooled over them, Σ(frac · min(m, n)) / Σ min(m, n) (the mean
    where min_dim is unknown), ``rank`` and ``min_dim`` summed over the matrices that have a value (skipped
    ones left out), ``matrices`` their count. A frame with one matrix per cell comes back as it is."""
    if not df.duplicated(["layer", "module"]).any():
        return df
    fracs = [f for f in fracs if f in df.columns]
    weight = pd.to_numeric(df["min_dim"]).astype(float) if "min_dim" in df.columns else pd.Series(1.0, df.index)
    ok = pd.to_numeric(df[fracs[0]]).notna()
    cols = {"matrices": ok.astype(int)}
    for f in fracs:
        v = pd.to_numeric(df[f]).astype(float)
        cols[f"{f}:num"], cols[f"{f}:den"] = v * weight, weight.where(v.notna())
    if "rank" in df.columns:
        cols["rank"] = pd.to_numeric(df["rank"]).astype(float).where(ok)
    if "min_dim" in df.columns:
        cols["min_dim"] = weight.where(ok)
    sums = pd.DataFrame(cols).assign(layer=df["layer"], module=df["module"])
    sums = sums.groupby(["layer", "module"], sort=False).sum(min_count=1)
    out = sums[[c for c in ("matrices", "rank", "min_dim") if c in sums.columns]].copy()
    for f in fracs:
        out[f] = sums[f"{f}:num"] / sums[f"{f}:den"]
    return out.reset_index()


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


@takes_data()
def spectrum_curves(
    df: pd.DataFrame,
    title: str = "Singular values of updates (dashed: random sparse baseline)",
    colors: Mapping | None = None,
    thresholds: Mapping[str, float] | None = None,
    colour_note: str = "",
) -> go.Figure:
    """Log-y singular value curves: long columns name, index, sigma, kind ("update" | "random").
    ``colour_note``: what the colours mean when ``colors`` is given (leads the subtitle).

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
    hidden, drawn, dots = 0, [], 0  # σ left out as numerical zeros; the σ drawn (for the axis' ticks); lone σ
    for n in names:
        for kind in ("update", "random"):
            sub = df[(df["name"].astype(str) == n) & (df["kind"] == kind)].sort_values("index")
            if sub.empty:
                continue
            sig = sub["sigma"].to_numpy(dtype=np.float64, na_value=np.nan)
            floor = _zero_floor(sig, df, n, thresholds)
            keep = sig > floor
            hidden += int((np.isfinite(sig) & ~keep).sum())
            drawn.extend(sig[keep])
            lone = int(keep.sum()) == 1  # a rank-1 Δ (or baseline): one σ, no segment for mode="lines" to draw
            dots += lone
            fig.add_trace(
                go.Scatter(
                    x=sub["index"].to_numpy(),
                    y=np.where(keep, sig, np.nan),
                    mode="lines+markers" if lone else "lines",
                    name=n,
                    legendgroup=n,
                    showlegend=kind == "update",
                    line={
                        "color": colors[n],
                        "dash": "solid" if kind == "update" else "dash",
                        "width": 2 if kind == "update" else 1.5,
                    },
                    marker={**_LONE[kind], "color": colors[n]} if lone else None,
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
    drawn.extend(v for v in thresholds.values() if v > 0)
    fig.update_yaxes(type="log", exponentformat="power", dtick=_decade_step(drawn))
    sub = "dashed: random sparse baseline" + (" · dotted: rank threshold (σ₁·max(m,n)·ε_fp32)" if thresholds else "")
    if dots:
        sub += " · a lone σ: a dot (baseline: a ring)"
    if hidden:
        sub += f" · {hidden:,} σ under the rank threshold (numerical zeros) not drawn"
    if colour_note:
        sub = f"{colour_note} · {sub}"
    # in lines broken at " · " (one line of a below-full-rank Δ's notes ran 300 px past the chart at 1024 px: the
    # hidden-σ count and the lone σ's key were cut off), the chart as much taller as its title is
    title = title.replace(" (dashed: random sparse baseline)", "") + subtitle(sub, width=CURVES_LINE)
    top, bottom = title_margin(title), _legend_room(names)
    _style(
        fig,
        title,
        "singular value index (descending)",
        "singular value σ (log)",
        # the legend in the bottom margin, under the axis title: at y = -0.2 of the plot it lay on the axis title,
        # and two models' longer names (two to a row at 1024 px, not three) shrank the plot to 150 px
        legend={"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0, "xanchor": "left", "x": 0},
        height=PLOT_HEIGHT + top + bottom,
        margin={"l": 70, "r": 30, "t": top, "b": bottom},
    )
    return fig


PLOT_HEIGHT = 320  # px of the singular-value plot itself, whatever its title and legend take
LEGEND_WIDTH = 494  # px a legend row has in a chart as wide as the page at 1024 px (564 px, less the left margin)


def _legend_room(names: Sequence[str]) -> int:
    """The bottom margin (px) for the tick labels, the x-axis title and a legend of ``names`` under them, in as many
    rows as they take at 1024 px (an entry: its line's key, 40 px, and its name at about 6 px a character)."""
    per_row = max(1, int(LEGEND_WIDTH // (40 + 6 * max((len(str(n)) for n in names), default=1))))
    return 70 + 22 * -(-len(names) // per_row)


# A curve with one σ above its floor (a rank-1 Δ: one changed entry, row or column; a new token's embedding row) is
# one point, which mode="lines" does not draw: the update's σ₁, the largest value of the chart, was left out. Such a
# curve gets a mark: the update a dot, its baseline a ring around it (the two coincide for a single changed entry).
# Every curve with markers hid the dashes of the baselines under beads at hundreds of σ, so only these get them.
_LONE = {
    "update": {"size": 7, "symbol": "circle"},
    "random": {"size": 11, "symbol": "circle-open", "line": {"width": 1.5}},
}


def _zero_floor(sig: np.ndarray, df: pd.DataFrame, name: str, thresholds: Mapping[str, float]) -> float:
    """The σ at or under which a curve's values are numerical zeros, not drawn: its rank threshold. That is
    σ₁·max(m, n)·ε for the update (``thresholds[name]``); the random baseline's is its own σ₁ times the same
    max(m, n)·ε. Without a threshold, σ₁·k·ε with k the number of σ (min(m, n): a lower bound). Rounding noise of
    singular values that are exactly zero (an embedding's rows that never changed: 1e-20 … 1e-29 under a
    threshold of 1e-8) otherwise stretched the log axis over 28 decades."""
    top = float(np.nanmax(sig)) if np.isfinite(sig).any() else 0.0
    if top <= 0:
        return 0.0
    upd = pd.to_numeric(df.loc[(df["name"].astype(str) == name) & (df["kind"] == "update"), "sigma"]).max()
    if name in thresholds and np.isfinite(upd) and upd > 0:
        return top * thresholds[name] / float(upd)
    return top * len(sig) * EPS32


def _decade_step(values) -> int:
    """Decades between the log axis' ticks: one a decade while the drawn values span at most 8 decades, then
    wider steps, so the axis never holds more than about 8–10 labels."""
    v = np.asarray([x for x in values if np.isfinite(x) and x > 0], dtype=np.float64)
    if not v.size:
        return 1
    span = np.ceil(np.log10(v.max())) - np.floor(np.log10(v.min()))
    return max(1, int(np.ceil(span / 8)))


@takes_data()
def model_spectra(
    sigmas: pd.DataFrame,
    shapes: pd.DataFrame,
    models: Sequence[str],
    colors: Mapping | None = None,
    title: str | None = None,
) -> go.Figure:
    """:func:`spectrum_curves` of the matrices of ``models`` (sigmas: model, name, index, sigma, kind; shapes:
    model, name, rows, cols), with each matrix's rank threshold. With several models each curve is named
    "model · matrix" and drawn in its model's colour, so the models compare at a glance (by matrix, seven
    modules' colours repeat across models and a model's curves cannot be told from another's); the
    Module picker narrows it to one matrix per model. ``colors``: model → colour (default: by order of
    ``models``), e.g. the workspace's, so a model has the colour it has on the other pages.
    ``title``: its first line (the caller's text); by default "Singular values of updates", with one model
    ": model" after it: its curves are named by matrix only, and a figure file had no word of whose update."""
    models = list(models)
    if title is None:
        title = "Singular values of updates" + (f": {models[0]}" if len(models) == 1 else "")
    if len(models) > 1:
        sigmas = sigmas.assign(name=sigmas["model"] + " · " + sigmas["name"].astype(str).str.removeprefix("model."))
        shapes = shapes.assign(name=shapes["model"] + " · " + shapes["name"].astype(str).str.removeprefix("model."))
        by_model = colors or color_map(models)
        pairs = sigmas[["name", "model"]].drop_duplicates()
        curves = {str(n): by_model[m] for n, m in zip(pairs["name"], pairs["model"], strict=True)}
        note = "colour: model"
    else:  # one model: each matrix in its module kind's colour, as on the subspaces and Series charts
        curves = _kind_colors(shapes)
        several = curves is not None and shapes["module"].astype(str).duplicated().any()
        note = "colour: module kind" if several else ""  # (Layer = all: a kind's layers share its colour)
    thresholds = rank_thresholds(sigmas, shapes)
    return spectrum_curves(sigmas, title, colors=curves, thresholds=thresholds, colour_note=note)


def _kind_colors(shapes: pd.DataFrame) -> dict[str, str] | None:
    """Matrix name -> its module kind's colour (:func:`~subnetviz.figures.colors.module_colors`): the colour the
    kind has on every chart, at one layer and at every layer (where a kind's layers share it and the hover tells
    them apart; 23 colours of their own could not be told apart either). None without a module column."""
    if "module" not in shapes.columns or shapes.empty:
        return None
    pairs = shapes[["name", "module"]].astype(str).drop_duplicates("name")
    by_kind = module_colors(pairs["module"])
    return {n: by_kind[m] for n, m in zip(pairs["name"], pairs["module"], strict=True)}


def _measure_cells(df: pd.DataFrame, measure: str) -> pd.DataFrame:
    """Per (layer, module [, model]) cell: ``measure`` and min(m, n) summed over the cell's matrices (one for a
    dense layer, one per expert in an MoE layer), ``frac`` their ratio and ``matrices`` the count; matrices
    without a value (skipped) left out (a cell with none stays blank)."""
    value = pd.to_numeric(df[measure]).astype(float)
    min_dim = np.minimum(pd.to_numeric(df["rows"]), pd.to_numeric(df["cols"])).astype(float)
    df = df.assign(value=value, min_dim=min_dim.where(value.notna()), matrices=value.notna().astype(int))
    by = [c for c in ("model", "layer", "module") if c in df.columns]
    groups = df.groupby(by, sort=False, dropna=False)
    cells = groups[["value", "min_dim", "matrices"]].sum(min_count=1)
    if "mtp" in df.columns:  # a multi-token-prediction module's layer (labelled so)
        cells["mtp"] = groups["mtp"].agg(lambda m: bool(m.fillna(False).astype(bool).all()))
    cells = cells.reset_index().rename(columns={"value": measure})
    return cells.assign(frac=cells[measure] / cells["min_dim"].clip(lower=1))


def measure_range(df: pd.DataFrame, measure: str) -> tuple[float, float]:
    """(0, largest ``measure`` / min(m, n) in %) over every cell (summed over an MoE layer's experts, as
    :func:`rank_measure_heatmap` draws them): one colour range for several models' heatmaps."""
    frac = _measure_cells(df, measure)["frac"] if len(df) else pd.Series(dtype=float)
    top = float(np.nanmax(100 * frac)) if len(frac) and np.isfinite(frac).any() else 100.0
    return 0.0, max(top, 1e-9)


@takes_data()
def rank_measure_heatmap(
    df: pd.DataFrame,
    measure: str = "effective_rank_99",
    title: str | None = None,
    zrange: tuple[float, float] | None = None,
) -> go.Figure:
    """Layers × module kinds of a rank measure as % of min(m, n): ``effective_rank_99`` or ``stable_rank``.

    df: layer, module, rows, cols, ``measure`` (and ``rank`` for the hover). Unlike the numerical
    rank (full for any sparse random update), these separate energy spread over many directions from
    energy in a few. A cell with several matrices (an MoE layer's experts) shows their sum over the sum
    of their min(m, n) (before: such a frame was refused, so the rank view failed for every MoE model).
    """
    names = {"effective_rank_99": "effective rank (99 % energy)", "stable_rank": "stable rank ‖Δ‖F²/‖Δ‖₂²"}
    title = title or f"{names.get(measure, measure)} / min(m, n)"
    if df.empty:
        return no_data_figure(title)
    _require(df, ["layer", "module", "rows", "cols", measure], "rank_measure_heatmap")
    df = _measure_cells(df, measure)
    layers, modules, g = _grid(df, ["frac", measure, "min_dim", "matrices"], "rank_measure_heatmap")
    custom = np.stack([g[measure], g["min_dim"], g["matrices"]], axis=-1)
    what = names.get(measure, measure)
    hover = f"layer %{{y}} · %{{x}}<br>{what} %{{customdata[0]:,.1f}} of %{{customdata[1]:,.0f}} (%{{z:.1f}}%)"
    if int(np.nanmax(g["matrices"], initial=1)) > 1:
        hover += "<br>%{customdata[2]:,.0f} matrices, summed (an MoE layer's experts)"
    rng = {"zmin": 0, "zmax": 100} if zrange is None else {"zmin": float(zrange[0]), "zmax": float(zrange[1])}
    z = 100 * g["frac"]
    fig = _layer_heatmap(
        layers,
        modules,
        z,
        custom,
        hover,
        title,
        "% of min(m, n)",
        text=percent_cells(z, unit=""),
        colorscale=SEQUENTIAL,
        **rng,
    )
    mtp_layer_ticks(fig, df, layers)
    return fig
