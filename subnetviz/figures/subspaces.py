"""Figures of W_base vs W_ft subspace geometry (:mod:`subnetviz.analysis.subspaces`): pure Plotly builders.

- :func:`angle_heatmap`: layers × module kinds of the largest principal angle (degrees);
- :func:`angle_curves`: the full angle vector of selected matrices against the subspace index;
  :func:`rotated_curves`: those of the most rotated changed matrices;
- :func:`principal_overlap_scatter`: the update mask's share inside the principal mask against chance;
- :func:`zero_sides`, :func:`zero_matrix_note`: the matrices whose base (or finetune) is all zero, which have no
  top-K subspace, so no angles (a LLaMA-Pro-style expanded base's zero-initialised blocks), and the page's note.
"""

from __future__ import annotations

import re

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
    title_margin,
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
    # a short first line: in a half-width column a long one lost its unit, "(°)"
    title = title or f"Largest principal angle (°)<br><sup>top-K {side} singular subspaces</sup>"
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
def rotated_curves(df: pd.DataFrame, vectors: pd.DataFrame, side: str = "left", n: int = 6, title: str | None = None):
    """:func:`angle_curves` of the ``n`` changed matrices (``changed`` > 0) of ``df`` (a subspaces table) with the
    largest ``angle_{side}_max``. An unchanged matrix is never among them (its angles are 0 by definition: six
    unchanged matrices were drawn at 0° as "the most rotated" where the one changed matrix had NaN angles); a
    changed matrix whose angles are undefined (:func:`zero_sides`: its base or finetune all zero) is said under the
    chart, with why, not drawn."""
    col = f"angle_{side}_max"
    title = title or f"Principal angles of the most rotated changed matrices, {side} singular subspaces"
    _require(df, ["name", "changed", col, "angle_left_max", "sv_ratio_mean"], "rotated_curves")
    signs = signs_only(df)
    changed = (pd.to_numeric(df["changed"], errors="coerce").fillna(0) > 0) & ~signs
    angle = pd.to_numeric(df[col], errors="coerce")
    ranked = df.assign(_angle=angle)[changed & angle.notna()].sort_values("_angle", ascending=False, kind="stable")
    names = list(dict.fromkeys(ranked["name"]))[:n]
    zero = zero_sides(df)[changed]
    why = [
        f"{_changed(int((zero == s).sum()))} whose {words} matrix is all zero ({_some(df['name'][changed][zero == s])})"
        for s, words in (("base", "base"), ("finetune", "finetuned"))
        if (zero == s).any()
    ]
    undefined = "; ".join(why) + ",<br>so no top-K subspace and no principal angles" if why else ""
    if signs.any():  # (drawn at 0°, they read as "the most rotated" where few matrices changed)
        undefined = "; ".join(filter(None, [undefined, _signs_said(df, signs)]))
    if not names:
        empty = "no matrix changed: nothing rotated" if not changed.any() else "no principal angles to draw"
        return no_data_figure(title, _wrapped(undefined or empty, FULL_NO_DATA))  # (a chart the page's width)
    fig = angle_curves(vectors, names, side=side, title=title)
    if undefined:
        _footnote(fig, f"Not drawn: {undefined}.", FULL_FOOTNOTE)
    return fig


def zero_sides(df: pd.DataFrame) -> pd.Series:
    """Per row of a subspaces table (:class:`~subnetviz.analysis.subspaces.SubspaceTable`'s frame): "base" where the
    base matrix is all zero (σ₁ = 0: no top-K subspace, so its principal angles, σ ratios and principal-weight
    overlap are NaN), "finetune" where the finetuned matrix is and the base's is not (its angles NaN, its σ ratios
    0), None elsewhere. Read from the columns as the analysis fills them: angles are NaN only where a side's σ₁ is
    0 or the comparison was skipped for lack of memory (``method`` "skipped, …": none of these), and every σ ratio
    is NaN only where the base's σ₁ is."""
    _require(df, ["angle_left_max", "sv_ratio_mean"], "zero_sides")
    undefined = pd.to_numeric(df["angle_left_max"], errors="coerce").isna()
    if "method" in df.columns:
        undefined &= ~df["method"].astype(str).str.startswith("skipped")
    base = pd.to_numeric(df["sv_ratio_mean"], errors="coerce").isna()
    out = pd.Series(None, index=df.index, dtype=object)
    out[undefined & base] = "base"
    out[undefined & ~base] = "finetune"
    return out


def signs_only(df: pd.DataFrame) -> pd.Series:
    """Per row of a subspaces table: True where the changed entries differ only in the sign of zero (+0 against
    −0): changed > 0, the principal-weight overlap undefined though neither side is all zero (:func:`zero_sides`)
    and the comparison not skipped; the analysis compares such a pair as the same matrix (angles 0, σ ratios 1)."""
    if not {"changed", "principal_overlap", "angle_left_max", "sv_ratio_mean"} <= set(df.columns):
        return pd.Series(False, index=df.index)
    out = (pd.to_numeric(df["changed"], errors="coerce").fillna(0) > 0) & df["principal_overlap"].isna()
    out &= zero_sides(df).isna()
    if "method" in df.columns:
        out &= ~df["method"].astype(str).str.startswith("skipped")
    return out


def _signs_said(df: pd.DataFrame, signs: pd.Series) -> str:
    return (
        f"{_changed(int(signs.sum()))} whose entries differ only in the sign of zero ({_some(df['name'][signs])}),"
        "<br>the same matrices as values"
    )


def zero_matrix_note(df: pd.DataFrame) -> str | None:
    """The page's note naming the matrices of the subspaces table ``df`` whose base (or finetune) is all zero
    (:func:`zero_sides`), for which the principal angles (and, for the base, the σ ratios and the principal-weight
    overlap) are undefined; None when there is none. The heatmap left their cell blank and the charts left them out
    without a word. Names as they are (the page shows the note as text)."""
    if df.empty or not {"angle_left_max", "sv_ratio_mean", "name"} <= set(df.columns):
        return None
    zero = zero_sides(df)
    changed = pd.to_numeric(df.get("changed", pd.Series(0, index=df.index)), errors="coerce").fillna(0) > 0
    said = []
    base = list(dict.fromkeys(df["name"][zero == "base"].astype(str)))  # (one base: its matrices, whatever the model)
    if base:
        moved = len(set(df["name"][(zero == "base") & changed].astype(str)))
        one = len(base) == 1
        said.append(
            f"The base matrix is all zero in {_matrices(len(base))} ({_some(base, 6)}"
            + (("; changed by a finetune" if one else f"; {moved:,} of them changed by a finetune") if moved else "")
            + "), as a block-expanded base's zero-initialised projections are (LLaMA-Pro): with no top-K subspace, "
            f"{'its' if one else 'their'} principal angles, σ ratios and principal-weight overlap are undefined "
            "(blank on the heatmap, NaN in the table, not in the principal-weight chart nor among the most rotated)."
        )
    ft = [f"{m} · {n}" for m, n in zip(df["model"][zero == "finetune"], df["name"][zero == "finetune"], strict=True)]
    if ft:
        said.append(
            f"The finetuned matrix is all zero in {_matrices(len(ft))} ({_some(ft, 6)}): with no top-K subspace, its "
            "principal angles are undefined (blank on the heatmap, NaN in the table, not among the most rotated); "
            "its σ ratios are 0."
        )
    return " ".join(said) or None


HALF_NO_DATA, FULL_NO_DATA, HALF_FOOTNOTE, FULL_FOOTNOTE = 36, 76, 36, 90
"""Characters a line holds at 1024 px with the sidebar open: of a no-data message (16 px, about 6.5 px a character,
centred) in a chart half the page wide (274 px) and in one the page's width (564 px), and of a footnote (11 px, about
5 px a character, from the plot's left edge, 70 px in) in each."""


def _wrapped(text: str, width: int) -> str:
    """``text`` in lines ("<br>") of at most ``width`` characters, broken between words (its own breaks read as
    spaces), and inside a word longer than ``width`` (a matrix's name) after its dots. In one line, a zero base
    matrix's explanation in the half-width principal-weight chart ran off both its sides."""
    out = [""]
    for word in re.sub(r"<br\s*/?>", " ", text, flags=re.I).split():
        for i, piece in enumerate(re.split(r"(?<=\.)(?=.)", word) if len(word) > width else [word]):
            glue = " " if i == 0 and out[-1] else ""
            if out[-1] and len(out[-1]) + len(glue) + len(piece) > width:
                out.append(piece)
            else:
                out[-1] += glue + piece
    return "<br>".join(out)


def _changed(n: int) -> str:
    return "1 changed matrix" if n == 1 else f"{n:,} changed matrices"


def _matrices(n: int) -> str:
    return f"{n:,} matrix" if n == 1 else f"{n:,} matrices"


def _some(names, most: int = 2) -> str:
    """At most ``most`` of ``names``, and how many more (each is in the table)."""
    names = [str(x) for x in dict.fromkeys(names)]
    return ", ".join(names[:most]) + (f" and {len(names) - most:,} more" if len(names) > most else "")


def _footnote(fig: go.Figure, text: str, width: int) -> None:
    """``text`` under the plot (what the chart leaves out, and why) in lines of at most ``width`` characters, with
    room made for it: 4 lines fit the bottom margin this makes, each further one 14 px more (the chart as much
    taller). Three matrices' names on one line ran 140 px past the page-wide chart at 1024 px."""
    text = _wrapped(text, width)
    more = max(0, text.count("<br>") - 3)
    fig.add_annotation(
        text=text,
        xref="paper",
        yref="paper",
        x=0,
        y=-0.2,
        xanchor="left",
        yanchor="top",
        align="left",
        showarrow=False,
        font={"size": 11},
    )
    fig.update_layout(margin={**fig.layout.margin.to_plotly_json(), "b": 130 + 14 * more})
    if more:
        fig.update_layout(height=450 + 14 * more)


@takes_data()
def principal_overlap_scatter(df: pd.DataFrame, title: str | None = None) -> go.Figure:
    """principal_overlap against principal_overlap_chance (both fractions, drawn in %) per matrix.

    Points under the diagonal: the update avoids the principal weights more than chance. A changed matrix without a
    principal overlap (its base matrix all zero: no principal weights) is said, apart from the unchanged ones
    (none to draw: the chart read "no changed entries in any matrix" where 4,096 entries of a zero base had changed).
    """
    title = title or "Update mask inside the principal weights vs chance"
    _require(
        df,
        ["name", "principal_overlap", "principal_overlap_chance"],
        "principal_overlap_scatter",
        shares=["principal_overlap", "principal_overlap_chance"],
    )
    d = df.dropna(subset=["principal_overlap"])
    changed = pd.to_numeric(df["changed"], errors="coerce").fillna(0) > 0 if "changed" in df.columns else None
    signs = signs_only(df)
    # (a changed matrix's overlap is NaN where the base matrix is all zero, so it has no principal weights, and
    # where its entries differ only in the sign of zero: no value moved)
    undefined = df["name"][df["principal_overlap"].isna() & changed & ~signs] if changed is not None else df["name"][:0]
    zero_base = "; ".join(
        filter(
            None,
            [
                f"{_changed(len(undefined))} whose base matrix is all zero ({_some(undefined)}),<br>so no principal "
                "weights"
                if len(undefined)
                else "",
                _signs_said(df, signs) if signs.any() else "",
            ],
        )
    )
    if d.empty:
        if zero_base:  # (the chart is half the page wide: 274 px at 1024 px with the sidebar open)
            return no_data_figure(title, _wrapped(zero_base, HALF_NO_DATA))
        skipped = df["method"].astype(str).str.startswith("skipped") if "method" in df.columns else None
        if changed is None:
            return no_data_figure(title, "no principal-weight overlap to draw")
        return no_data_figure(
            title,
            "no changed entries in any matrix"
            + (f" compared ({_matrices(int(skipped.sum()))} skipped)" if skipped is not None and skipped.any() else ""),
        )
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
    # Drawn half the page wide (274 px at 1024 px with the sidebar open): the legend beside the plot left it 82 px
    # wide, and a y-axis title longer than the plot ran up into the title's last line. The legend and the note of
    # what is not drawn lie under the x-axis title, each in the room it takes; the plot keeps its height.
    names = [str(t.name) for t in fig.data]
    per_row = max(1, int((274 - 100) // (40 + 6 * max(map(len, names)))))
    rows = -(-len(names) // per_row)
    note = _wrapped(f"Not drawn: {zero_base}.", HALF_FOOTNOTE) if zero_base else ""
    top, under = title_margin(title), SCATTER_AXIS + 22 * rows
    bottom = under + (14 * (note.count("<br>") + 1) + 14 if note else 8)
    _style(
        fig,
        title,
        "chance: update density (%)",
        "inside principal weights (%)",
        legend={"orientation": "h", "yref": "paper", "y": -SCATTER_AXIS / SCATTER_PLOT, "yanchor": "top", "x": 0},
        height=top + SCATTER_PLOT + bottom,
        margin={"l": 70, "r": 30, "t": top, "b": bottom},
    )
    if note:
        fig.add_annotation(
            text=note,
            **{"xref": "paper", "yref": "paper", "x": 0, "y": -(under + 6) / SCATTER_PLOT},
            **{"xanchor": "left", "yanchor": "top", "align": "left", "showarrow": False, "font": {"size": 11}},
        )
    return fig


SCATTER_PLOT, SCATTER_AXIS = 310, 64  # px: the principal-weight scatter's plot; its x ticks and axis title under it
