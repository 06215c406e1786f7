"""Pure Plotly figure builders: tidy DataFrame (or array) in, ``plotly.graph_objects.Figure`` out.

No Streamlit and no ``config`` here: the page (or :mod:`subnetviz.report`) passes
:data:`PLOTLY_CONFIG` when it shows a figure. Arrays go to Plotly as NumPy so plotly 7 ships them as
base64 typed arrays. Shares (sparsity, density, overlaps, ranks) come in as fractions in [0, 1] and
are drawn in percent. One qualitative palette (Okabe–Ito, colour-blind safe) names models and
masks; densities use Viridis; ratios against chance use a diverging scale centred on ×1. Every
builder returns a figure with a centred "no data" note for an empty frame instead of failing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from subnetviz.errors import SubnetvizError
from subnetviz.venn import REGIONS2, REGIONS3, VennLayout, venn2_layout, venn3_layout

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442")
SEQUENTIAL = "Viridis"
DIVERGING = "RdBu_r"
MODULE_ORDER = (
    "embed", "pos_embed", "q", "k", "v", "o", "qkv", "attn", "gate", "up", "down", "mlp_in", "mlp_out", "mlp",
    "attn_norm", "mlp_norm", "norm", "final_norm", "lm_head",
    "Q", "K", "V", "O", "MLP-in", "MLP-out",  # the bigram paper's blocks (subnetviz.bigram.maskable)
)  # fmt: skip
PLOTLY_CONFIG = {"displaylogo": False, "showSendToCloud": False, "responsive": True}
"""What pages pass as ``st.plotly_chart(config=...)``: no logo, no plotly.js 4 "Share chart" (cloud upload)."""
_TEMPLATE = "plotly_white"


class FigureDataError(SubnetvizError):
    """A frame handed to a figure builder lacks a documented column or has a bad value."""


def color_map(labels: Sequence[str]) -> dict[str, str]:
    """Stable colours: the i-th label gets the i-th palette colour (cycled past 8)."""
    return {str(lab): PALETTE[i % len(PALETTE)] for i, lab in enumerate(labels)}


def no_data_figure(title: str, message: str = "no data") -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 16})
    fig.update_layout(template=_TEMPLATE, title=title, xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def _require(df: pd.DataFrame, columns: Sequence[str], builder: str, shares: Sequence[str] = ()) -> None:
    """Raise unless df has ``columns``; ``shares`` (those present) must be fractions in [0, 1] or NaN."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise FigureDataError(
            f"{builder}: the frame lacks column(s) {missing}; it has {list(df.columns)}. "
            f"Expected at least {list(columns)}."
        )
    for c in shares:
        if c in df.columns:
            _check_share(
                pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan),
                f"{builder}: column {c!r}",
            )


def _check_share(v: np.ndarray, what: str) -> None:
    bad = v[np.isfinite(v) & ((v < -1e-9) | (v > 1 + 1e-9))]
    if bad.size:
        raise FigureDataError(
            f"{what} holds shares outside [0, 1] (e.g. {bad[0]:g}); figures take fractions and draw them in %. "
            "If the values are already percentages, divide them by 100."
        )


def _style(fig: go.Figure, title: str, x: str | None = None, y: str | None = None, **layout) -> go.Figure:
    layout.setdefault("margin", {"l": 70, "r": 30, "t": 80, "b": 60})
    fig.update_layout(template=_TEMPLATE, title=title, **layout)
    if x is not None:
        fig.update_xaxes(title_text=x)
    if y is not None:
        fig.update_yaxes(title_text=y)
    return fig


def _unique(values) -> list:
    return list(dict.fromkeys(values))


def _module_order(modules) -> list[str]:
    present = _unique(str(m) for m in modules)
    known = [m for m in MODULE_ORDER if m in present]
    return known + sorted(m for m in present if m not in known and m != "other") + (["other"] * ("other" in present))


def _is_number(v) -> bool:
    return isinstance(v, int | np.integer | float | np.floating) and not pd.isna(v)


def _layer_order(layers) -> list[str]:
    """Numeric layers ascending, then labels (e.g. "final", or "—" for none) in order of first appearance."""
    vals = list(layers)
    nums = sorted({float(v) for v in vals if _is_number(v)})
    return _unique([_layer_label(v) for v in nums] + [_layer_label(v) for v in vals if not _is_number(v)])


def _layer_label(v) -> str:
    """The y label of a layer: 3 and 3.0 read "3"; a missing layer (embeddings, head) reads "—"."""
    if _is_number(v):
        return str(int(v)) if float(v).is_integer() else str(v)
    return "—" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)


def _grid(df: pd.DataFrame, columns: Sequence[str], builder: str):
    """Pivot layer × module; returns (layer labels, module labels, {column: (L, M) float array})."""
    layers = _layer_order(df["layer"])
    modules = _module_order(df["module"])
    keys = list(zip(df["layer"].map(_layer_label), df["module"].astype(str), strict=True))
    if len(set(keys)) != len(keys):
        dup = pd.Series(keys).value_counts()
        raise FigureDataError(
            f"{builder}: one row per (layer, module) is expected; {dup.iloc[0]} rows for {dup.index[0]}. "
            "Aggregate the per-tensor table by layer and module first."
        )
    li = {v: i for i, v in enumerate(layers)}
    mi = {v: i for i, v in enumerate(modules)}
    rows = np.array([li[k[0]] for k in keys], dtype=np.intp)
    cols = np.array([mi[k[1]] for k in keys], dtype=np.intp)
    out = {}
    for c in columns:
        grid = np.full((len(layers), len(modules)), np.nan)
        if c in df.columns:
            grid[rows, cols] = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        out[c] = grid
    return layers, modules, out


def _layer_heatmap(layers, modules, z, customdata, hover, title, bar_title, text=None, **trace) -> go.Figure:
    """The shared layer × module heatmap; ``text`` (strings per cell) replaces the default "%{z:.1f}"."""
    show_text = z.size <= 400  # cell values printed in the cells while they stay readable
    bar = {"title": {"text": bar_title}, **trace.pop("colorbar", {})}
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=modules,
            y=layers,
            customdata=customdata,
            hovertemplate=hover + "<extra></extra>",
            colorbar=bar,
            text=text if show_text else None,
            texttemplate=("%{text}" if text is not None else "%{z:.1f}") if show_text else None,
            hoverongaps=False,
            xgap=1,
            ygap=1,
            **trace,
        )
    )
    _style(fig, title, "module kind", "layer", height=max(360, 120 + 26 * len(layers)))
    fig.update_xaxes(type="category", side="bottom", showgrid=False)
    fig.update_yaxes(type="category", autorange="reversed", showgrid=False)
    return fig


def sparsity_heatmap(df: pd.DataFrame, value: str = "sparsity", title: str | None = None) -> go.Figure:
    """Layers (0 at top) × module kinds of ``value`` in %.

    df: one row per (layer, module) with columns layer (int or label), module (str), changed,
    numel, sparsity, density (fractions) and any extra share column to show, e.g.
    ``sparsity_unweighted``. Missing cells stay NaN (blank), never 0.
    """
    title = title or f"Update {value.replace('_', ' ')} by layer and module"
    if df.empty:
        return no_data_figure(title)
    _require(
        df,
        ["layer", "module", "changed", "numel", "sparsity", "density", value],
        "sparsity_heatmap",
        shares=["sparsity", "density", value],
    )
    layers, modules, g = _grid(df, [value, "changed", "numel", "sparsity", "density"], "sparsity_heatmap")
    custom = np.stack([g["changed"], g["numel"], 100 * g["sparsity"], 100 * g["density"]], axis=-1)
    hover = (
        "layer %{y} · %{x}<br>changed %{customdata[0]:,.0f} of %{customdata[1]:,.0f}"
        "<br>sparsity %{customdata[2]:.3f}%<br>density %{customdata[3]:.3f}%"
    )
    label = f"{value.replace('_', ' ')} (%)"
    return _layer_heatmap(layers, modules, 100 * g[value], custom, hover, title, label, colorscale=SEQUENTIAL)


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
    layers, modules, g = _grid(df, ["rank_frac", "rank", "min_dim", "rank_frac_random"], "rank_heatmap")
    custom = np.stack([g["rank"], g["min_dim"], 100 * g["rank_frac_random"]], axis=-1)
    hover = "layer %{y} · %{x}<br>rank %{z:.1f}% of full"
    if "rank" in df.columns and "min_dim" in df.columns:
        hover += "<br>rank %{customdata[0]:,.0f} of %{customdata[1]:,.0f}"
    if "rank_frac_random" in df.columns:
        hover += "<br>random baseline %{customdata[2]:.1f}%"
    return _layer_heatmap(layers, modules, 100 * g["rank_frac"], custom, hover, title, "rank (% of full)",
                          colorscale=SEQUENTIAL, zmin=0, zmax=100)  # fmt: skip


def _ratio_axis(ratio: np.ndarray) -> tuple[np.ndarray, dict]:
    """log2(ratio) with a diverging scale centred on ×1 and ×-labelled colourbar ticks."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log2(np.where(ratio > 0, ratio, np.nan))
    span = max(1.0, float(np.nanmax(np.abs(z)))) if np.isfinite(z).any() else 1.0
    ticks = np.arange(-np.ceil(span), np.ceil(span) + 1)
    bar = {"tickvals": ticks, "ticktext": [f"×{2.0**t:g}" for t in ticks]}
    return z, {"colorscale": DIVERGING, "zmid": 0, "zmin": -span, "zmax": span, "colorbar": bar}


def overlap_layer_heatmap(df: pd.DataFrame, view: str = "value", title: str | None = None) -> go.Figure:
    """Layers × module kinds of mask overlap: columns layer, module, jaccard, jaccard_chance (fractions).

    view "value" draws Jaccard in %; "ratio" draws Jaccard / chance on a diverging ×-scale.
    """
    if view not in ("value", "ratio"):
        raise FigureDataError(f"overlap_layer_heatmap: view must be 'value' or 'ratio'; got {view!r}.")
    title = title or (
        "Jaccard overlap ×chance by layer and module" if view == "ratio" else "Jaccard overlap by layer and module"
    )
    if df.empty:
        return no_data_figure(title)
    _require(
        df,
        ["layer", "module", "jaccard", "jaccard_chance"],
        "overlap_layer_heatmap",
        shares=["jaccard", "jaccard_chance"],
    )
    layers, modules, g = _grid(df, ["jaccard", "jaccard_chance"], "overlap_layer_heatmap")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = g["jaccard"] / g["jaccard_chance"]
    custom = np.stack([100 * g["jaccard"], 100 * g["jaccard_chance"], ratio], axis=-1)
    hover = "layer %{y} · %{x}<br>Jaccard %{customdata[0]:.2f}%<br>chance %{customdata[1]:.2f}%<br>×chance %{customdata[2]:.2f}"
    if view == "ratio":
        z, trace = _ratio_axis(ratio)
        return _layer_heatmap(layers, modules, z, custom, hover, title, "Jaccard ×chance", text=_times(ratio), **trace)
    return _layer_heatmap(
        layers, modules, 100 * g["jaccard"], custom, hover, title, "Jaccard (%)", colorscale=SEQUENTIAL
    )


def _times(ratio: np.ndarray) -> np.ndarray:
    """Cell labels "×1.52" (blank where undefined)."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(ratio), np.char.mod("×%.2f", np.nan_to_num(ratio)), "")


def tolerance_sweep(
    df: pd.DataFrame, title: str = "Update sparsity against tolerance", colors: Mapping | None = None
) -> go.Figure:
    """Lines per model of sparsity (fraction) against |Δ| tolerance on a log axis.

    df columns model, tolerance (exact comparison = 0), sparsity; optional changed, numel (for the
    hover). The exact point cannot sit on a log axis, so it is drawn a decade left of the smallest
    tolerance, as a distinct open diamond labelled "exact", behind a dotted divider.
    """
    if df.empty:
        return no_data_figure(title)
    _require(df, ["model", "tolerance", "sparsity"], "tolerance_sweep", shares=["sparsity"])
    tol = pd.to_numeric(df["tolerance"]).to_numpy(dtype=np.float64, na_value=np.nan)
    if np.any(tol < 0):
        raise FigureDataError(f"tolerance_sweep: tolerances must be ≥ 0; got {sorted(set(tol[tol < 0]))}.")
    positive = np.unique(tol[tol > 0])
    lo = positive.min() if positive.size else 1e-5
    exact_x = lo / 10
    models = _unique(df["model"].astype(str))
    colors = colors or color_map(models)
    fig = go.Figure()
    for m in models:
        sub = df[df["model"].astype(str) == m].sort_values("tolerance")
        t = sub["tolerance"].to_numpy(dtype=np.float64, na_value=np.nan)
        s = 100 * sub["sparsity"].to_numpy(dtype=np.float64, na_value=np.nan)
        # Optional counts: changed entries of numel at each tolerance.
        cd = np.stack(
            [
                sub[c].to_numpy(dtype=np.float64, na_value=np.nan) if c in sub else np.full(len(sub), np.nan)
                for c in ("changed", "numel")
            ],
            axis=-1,
        )
        counts = (
            "<br>changed %{customdata[0]:,.0f} of %{customdata[1]:,.0f}"
            if {"changed", "numel"} <= set(df.columns)
            else ""
        )
        hov = "%{fullData.name}<br>tolerance %{x:.0e}<br>sparsity %{y:.3f}%" + counts + "<extra></extra>"
        fig.add_trace(go.Scatter(x=t[t > 0], y=s[t > 0], mode="lines+markers", name=m, legendgroup=m, customdata=cd[t > 0],
                                 line={"color": colors[m]}, hovertemplate=hov))  # fmt: skip
        if (t == 0).any():
            fig.add_trace(go.Scatter(
                x=np.full((t == 0).sum(), exact_x), y=s[t == 0], mode="markers", name=f"{m} (exact)", customdata=cd[t == 0],
                legendgroup=m, showlegend=False, marker={"symbol": "diamond-open", "size": 13, "color": colors[m], "line": {"width": 2}},
                hovertemplate="%{fullData.name}<br>exact (bitwise)<br>sparsity %{y:.3f}%" + counts + "<extra></extra>",
            ))  # fmt: skip
    ticks = np.concatenate([[exact_x], positive])
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=["exact"] + [f"{v:.0e}" for v in positive])
    fig.add_vline(x=exact_x * np.sqrt(10), line={"dash": "dot", "color": "#999", "width": 1})
    return _style(fig, title, "absolute tolerance |Δ| ≤ τ (log)", "sparsity (%)", hovermode="closest")


def ulp_histogram(df: pd.DataFrame, log_y: bool = True, title: str = "Distance between base and finetuned weights in ULPs",
                  colors: Mapping | None = None) -> go.Figure:  # fmt: skip
    """Grouped bars per model: columns model, bin (ordered labels, first appearance order), count."""
    if df.empty:
        return no_data_figure(title)
    _require(df, ["model", "bin", "count"], "ulp_histogram")
    bins = (
        list(df["bin"].cat.categories)
        if isinstance(df["bin"].dtype, pd.CategoricalDtype)
        else _unique(df["bin"].astype(str))
    )
    bins = [str(b) for b in bins]
    models = _unique(df["model"].astype(str))
    colors = colors or color_map(models)
    fig = go.Figure()
    for m in models:
        rows = df[df["model"].astype(str) == m]
        sub = rows.groupby(rows["bin"].astype(str), observed=True)["count"].sum()
        counts = sub.reindex(bins).fillna(0).to_numpy(dtype=np.float64, na_value=np.nan)
        share = 100 * counts / counts.sum() if counts.sum() else counts
        fig.add_trace(go.Bar(
            x=bins, y=counts, name=m, marker_color=colors[m], customdata=share,
            hovertemplate="%{fullData.name}<br>%{x} ULP<br>%{y:,.0f} entries (%{customdata:.3f}%)<extra></extra>",
        ))  # fmt: skip
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=bins)
    if log_y:
        fig.update_yaxes(type="log", dtick=1)
    return _style(fig, title, "distance (units in the last place of the stored dtype)",
                  "entries (count, log)" if log_y else "entries (count)", barmode="group")  # fmt: skip


def module_bars(
    df: pd.DataFrame, title: str = "Norms, embeddings and head: update sparsity", colors: Mapping | None = None
) -> go.Figure:
    """Horizontal grouped bars: columns model, name (or key, or group), sparsity (fraction); optional changed, numel.

    Takes ``SparsityReport.special()`` as it is (model, key, ..., numel, changed, sparsity).
    """
    if df.empty:
        return no_data_figure(title)
    key = next((c for c in ("name", "key", "group") if c in df.columns), "name")
    _require(df, ["model", key, "sparsity"], "module_bars", shares=["sparsity"])
    models = _unique(df["model"].astype(str))
    names = _unique(df[key].astype(str))
    colors = colors or color_map(models)
    fig = go.Figure()
    for m in models:
        sub = df[df["model"].astype(str) == m]
        extra = np.stack([sub.get("changed", pd.Series(np.nan, index=sub.index)).to_numpy(dtype=np.float64, na_value=np.nan),
                          sub.get("numel", pd.Series(np.nan, index=sub.index)).to_numpy(dtype=np.float64, na_value=np.nan)], axis=-1)  # fmt: skip
        fig.add_trace(go.Bar(
            y=sub[key].astype(str).to_numpy(), x=100 * sub["sparsity"].to_numpy(dtype=np.float64, na_value=np.nan), orientation="h",
            name=m, marker_color=colors[m], customdata=extra,
            hovertemplate="%{fullData.name}<br>%{y}<br>sparsity %{x:.3f}%<br>changed %{customdata[0]:,.0f} of %{customdata[1]:,.0f}<extra></extra>",
        ))  # fmt: skip
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=names, autorange="reversed")
    fig.update_xaxes(range=[0, 100])
    return _style(
        fig, title, "sparsity (%)", None, barmode="group", height=max(320, 140 + 22 * len(names) * max(1, len(models)))
    )


def spectrum_curves(df: pd.DataFrame, title: str = "Singular values of updates (dashed: random sparse baseline)",
                    colors: Mapping | None = None) -> go.Figure:  # fmt: skip
    """Log-y singular value curves: long columns name, index, sigma, kind ("update" | "random")."""
    if df.empty:
        return no_data_figure(title)
    _require(df, ["name", "index", "sigma", "kind"], "spectrum_curves")
    names = _unique(df["name"].astype(str))
    colors = colors or color_map(names)
    fig = go.Figure()
    for n in names:
        for kind in ("update", "random"):
            sub = df[(df["name"].astype(str) == n) & (df["kind"] == kind)].sort_values("index")
            if sub.empty:
                continue
            sig = sub["sigma"].to_numpy(dtype=np.float64, na_value=np.nan)
            fig.add_trace(go.Scatter(
                x=sub["index"].to_numpy(), y=np.where(sig > 0, sig, np.nan), mode="lines", name=n if kind == "update" else f"{n} (random)",
                legendgroup=n, line={"color": colors[n], "dash": "solid" if kind == "update" else "dash", "width": 2 if kind == "update" else 1.5},
                hovertemplate=f"{n} ({kind})<br>σ#%{{x}} = %{{y:.4g}}<extra></extra>",
            ))  # fmt: skip
    fig.update_yaxes(type="log", exponentformat="power", dtick=1)
    return _style(fig, title, "singular value index (descending)", "singular value σ (log)")


def _block_sum(a: np.ndarray, f: int) -> np.ndarray:
    """Sum of f×f blocks of a 2-D array (edge blocks are smaller), without a padded copy.

    Full blocks go through one reshape-sum (about 10× faster than ``np.add.reduceat`` on a bool
    matrix); the ragged last block row/column are summed on their own.
    """
    m, n = a.shape
    mb, nb = m // f, n // f
    dt = np.int64 if a.dtype == bool or np.issubdtype(a.dtype, np.integer) else np.float64
    out = np.zeros((-(-m // f), -(-n // f)), dtype=np.float64)
    out[:mb, :nb] = a[: mb * f, : nb * f].reshape(mb, f, nb, f).sum(axis=(1, 3), dtype=dt)
    if n % f:
        out[:mb, nb] = a[: mb * f, nb * f :].reshape(mb, f, -1).sum(axis=(1, 2), dtype=dt)
    if m % f:
        out[mb, :nb] = a[mb * f :, : nb * f].reshape(-1, nb, f).sum(axis=(0, 2), dtype=dt)
    if m % f and n % f:
        out[mb, nb] = a[mb * f :, nb * f :].sum(dtype=dt)
    return out


def matrix_image(mask_2d, max_side: int = 256, title: str = "Which entries changed (block mean)") -> go.Figure:
    """Downsampled image of a 2-D mask (bool, or float in [0, 1]): share changed per block, in %.

    The same block size f = ceil(max(m, n) / max_side) is used on both axes so the aspect ratio
    is kept; hover gives the original row/column ranges and the changed count of each block.
    """
    if hasattr(mask_2d, "detach"):  # a torch tensor, possibly on the GPU
        mask_2d = mask_2d.detach().cpu().numpy()
    a = np.asarray(mask_2d)
    if a.size == 0:
        return no_data_figure(title)
    if a.ndim != 2:
        raise FigureDataError(f"matrix_image: expected a 2-D mask (rows, cols); got shape {a.shape}.")
    m, n = a.shape
    f = max(1, int(np.ceil(max(m, n) / max_side)))
    sums = _block_sum(a, f)
    r0, c0 = np.arange(0, m, f), np.arange(0, n, f)
    rows_in, cols_in = np.minimum(r0 + f, m) - r0, np.minimum(c0 + f, n) - c0
    counts = np.outer(rows_in, cols_in).astype(np.float64)
    share = 100 * sums / counts
    if f == 1:  # one cell per entry: row and column are the axes, nothing else to say (keeps the payload small)
        trace = {"customdata": None,
                 "hovertemplate": "row %{y:.0f}, col %{x:.0f}: %{z:.0f}% changed<extra></extra>"}  # fmt: skip
    else:  # float32 customdata: a quarter of the bytes plotly would send for float64 stacks
        custom = np.stack(np.broadcast_arrays(r0[:, None], (r0 + rows_in - 1)[:, None], c0[None, :],
                                              (c0 + cols_in - 1)[None, :], sums, counts), axis=-1).astype(np.float32)  # fmt: skip
        trace = {"customdata": custom,
                 "hovertemplate": "rows %{customdata[0]:.0f}–%{customdata[1]:.0f}, cols %{customdata[2]:.0f}–"
                 "%{customdata[3]:.0f}<br>changed %{customdata[4]:,.0f} of %{customdata[5]:,.0f} (%{z:.2f}%)<extra></extra>"}  # fmt: skip
    fig = go.Figure(go.Heatmap(
        z=share.astype(np.float32), x=c0 + (cols_in - 1) / 2, y=r0 + (rows_in - 1) / 2, colorscale=SEQUENTIAL, zmin=0,
        zmax=100, colorbar={"title": {"text": "changed (%)"}}, **trace,
    ))  # fmt: skip
    sub = f"{m}×{n}, blocks of {f}×{f}" if f > 1 else f"{m}×{n}, full resolution"
    _style(fig, f"{title}<br><sup>{sub}</sup>", "column (input dim)", "row (output dim)")
    fig.update_yaxes(autorange="reversed", scaleanchor="x", scaleratio=1, constrain="domain")
    fig.update_xaxes(constrain="domain")
    return fig


def _downsample_1d(v: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray, int]:
    f = max(1, int(np.ceil(v.size / max_points)))
    starts = np.arange(0, v.size, f)
    means = np.add.reduceat(v, starts) / (np.minimum(starts + f, v.size) - starts)
    return starts + (np.minimum(starts + f, v.size) - starts - 1) / 2, means, f


def row_col_ratios(
    row_ratio, col_ratio, max_points: int = 2048, title: str = "Share of entries changed per row and per column"
) -> go.Figure:
    """Two panels: fraction changed per row (output dim) and per column (input dim), in %."""
    r, c = np.asarray(row_ratio, dtype=np.float64).ravel(), np.asarray(col_ratio, dtype=np.float64).ravel()
    if r.size == 0 and c.size == 0:
        return no_data_figure(title)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1)
    for k, (v, what) in enumerate(((r, "row"), (c, "column")), start=1):
        if v.size == 0:
            continue
        x, y, f = _downsample_1d(v, max_points)
        fig.add_trace(go.Scatter(
            x=x, y=100 * y, mode="lines", name=what, line={"color": PALETTE[k - 1], "width": 1},
            hovertemplate=f"{what} %{{x:.0f}}<br>changed %{{y:.2f}}%<extra></extra>",
        ), row=1, col=k)  # fmt: skip
        fig.update_xaxes(title_text=f"{what} index" + (f" (mean of {f})" if f > 1 else ""), row=1, col=k)
        fig.update_yaxes(title_text="changed (%)", range=[0, 100], row=1, col=k)
    return _style(fig, title, showlegend=False)


def _venn_figure(layout: VennLayout, labels: Sequence[str], title: str, colors: Mapping | None) -> go.Figure:
    n = len(layout.radii)
    if len(labels) != n:
        raise FigureDataError(f"venn: {n} set labels expected; got {len(labels)}: {list(labels)}.")
    colors = colors or color_map(labels)
    fig = go.Figure()
    drawn = layout.radii > 0  # an empty set has no circle; the subtitle names it instead
    for (cx, cy), r, lab in zip(
        layout.centers[drawn], layout.radii[drawn], np.array(labels, dtype=object)[drawn], strict=True
    ):
        col = colors[str(lab)]
        fig.add_shape(type="circle", x0=cx - r, x1=cx + r, y0=cy - r, y1=cy + r,
                      line={"color": col, "width": 2}, fillcolor=col, opacity=0.25, layer="below")  # fmt: skip
    centroid = layout.centers[drawn].mean(axis=0)
    for (cx, cy), r, lab in zip(
        layout.centers[drawn], layout.radii[drawn], np.array(labels, dtype=object)[drawn], strict=True
    ):
        d = np.array([cx, cy]) - centroid
        d = d / np.hypot(*d) if np.hypot(*d) > 1e-9 else np.array([0.0, 1.0])
        d = np.array([d[0], 1.0]) / np.hypot(d[0], 1.0) if abs(d[1]) < 0.3 else d  # side-by-side: label above
        xa = "left" if d[0] > 0.3 else "right" if d[0] < -0.3 else "center"
        ya = "bottom" if d[1] > 0.3 else "top" if d[1] < -0.3 else "middle"
        fig.add_annotation(x=cx + r * d[0], y=cy + r * d[1], text=f"<b>{lab}</b>", showarrow=False,
                           xanchor=xa, yanchor=ya, font={"color": colors[str(lab)], "size": 14})  # fmt: skip
    empty = [str(lab) for lab, ok in zip(labels, drawn, strict=True) if not ok]
    if empty:
        title += f"<br><sup>empty, not drawn: {', '.join(empty)}</sup>"
    total = layout.counts.sum()
    ok = ~np.isnan(layout.label_points[:, 0]) & (layout.counts > 0)
    names = ["only " + " ∩ ".join(str(labels[i]) for i, ch in enumerate(code) if ch == "1") if code.count("1") == 1
             else " ∩ ".join(str(labels[i]) for i, ch in enumerate(code) if ch == "1") + (" only" if code.count("0") else "")
             for code in layout.regions]  # fmt: skip
    share = 100 * layout.counts / total
    custom = np.stack([layout.counts, share, 100 * layout.actual / layout.target.sum()], axis=-1)[ok]
    fig.add_trace(go.Scatter(
        x=layout.label_points[ok, 0], y=layout.label_points[ok, 1], mode="markers+text",
        text=[f"{_compact(c)}<br>{s:.1f}%" for c, s in zip(layout.counts[ok], share[ok], strict=True)],
        customdata=custom, hovertext=np.array(names, dtype=object)[ok], marker={"size": 28, "opacity": 0},
        hovertemplate="%{hovertext}<br>%{customdata[0]:,.0f} parameters<br>%{customdata[1]:.2f}% of union"
        "<br>drawn area %{customdata[2]:.2f}% of union<extra></extra>", showlegend=False, textfont={"size": 12},
    ))  # fmt: skip
    ext = float(np.max(np.abs(layout.centers) + layout.radii[:, None])) * 1.25
    fig.update_xaxes(visible=False, range=[-ext, ext])
    fig.update_yaxes(visible=False, range=[-ext, ext], scaleanchor="x", scaleratio=1)
    return _style(fig, title, height=520, margin={"l": 20, "r": 20, "t": 80, "b": 20})


def _compact(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:,.0f}"


def _region_counts(sizes_or_regions, n: int) -> np.ndarray:
    codes = REGIONS2 if n == 2 else REGIONS3
    if isinstance(sizes_or_regions, Mapping):
        return np.array([float(sizes_or_regions.get(c, 0)) for c in codes])
    return np.asarray(sizes_or_regions, dtype=np.float64)


def venn2(
    sizes_or_regions, labels: Sequence[str], title: str = "Overlap (area-proportional)", colors: Mapping | None = None
) -> go.Figure:
    """Exact area-proportional 2-set Venn; regions (10, 01, 11) as a sequence or {code: count}."""
    return _venn_figure(venn2_layout(_region_counts(sizes_or_regions, 2)), labels, title, colors)


def venn3(sizes_or_regions, labels: Sequence[str], title: str = "Overlap (area-proportional)",
          colors: Mapping | None = None, method: str = "auto") -> go.Figure:  # fmt: skip
    """Best-effort 3-set Venn; regions (100, 010, 110, 001, 101, 011, 111). The subtitle states the layout error."""
    layout = venn3_layout(_region_counts(sizes_or_regions, 3), method=method)
    sub = f"layout accuracy {100 * (1 - layout.region_error):.1f}% ({layout.method}; Σ|drawn − true| area = {100 * layout.region_error:.1f}% of union)"
    return _venn_figure(layout, labels, f"{title}<br><sup>{sub}</sup>", colors)


def _members(v, labels: Sequence[str]) -> tuple[int, ...]:
    """Member indices from a tuple of labels, an int bit code (bit i = labels[i]) or a '101' string."""
    if isinstance(v, str) and set(v) <= {"0", "1"} and len(v) == len(labels):
        return tuple(i for i, ch in enumerate(v) if ch == "1")
    if isinstance(v, int | np.integer):
        return tuple(i for i in range(len(labels)) if int(v) >> i & 1)
    names = list(map(str, labels))
    items = [v] if isinstance(v, str) else list(v)
    bad = [x for x in items if str(x) not in names]
    if bad:
        raise FigureDataError(f"upset: members {bad} are not among the labels {names}.")
    return tuple(sorted(names.index(str(x)) for x in items))


def upset(regions_df: pd.DataFrame, labels: Sequence[str], max_bars: int = 40, sort: str = "cardinality",
          title: str = "Intersections of masks (UpSet)", colors: Mapping | None = None) -> go.Figure:  # fmt: skip
    """UpSet view of exclusive intersections: columns members, count; N = len(labels) ≤ 8 or more.

    members is a tuple of labels, an int bit code (bit i = labels[i]) or a '0/1' string. Bars on
    top, the membership dot matrix below, set sizes (summed over every region) on the left.
    sort: "cardinality" (largest first), "degree" (fewest members first) or "input".
    """
    if regions_df.empty or not len(labels):
        return no_data_figure(title)
    _require(regions_df, ["members", "count"], "upset")
    if sort not in ("cardinality", "degree", "input"):
        raise FigureDataError(f"upset: sort must be 'cardinality', 'degree' or 'input'; got {sort!r}.")
    n = len(labels)
    rows = pd.DataFrame({"members": [_members(v, labels) for v in regions_df["members"]],
                         "count": pd.to_numeric(regions_df["count"]).to_numpy(dtype=np.float64, na_value=np.nan)})  # fmt: skip
    rows = (
        rows[(rows["count"] > 0) & (rows["members"].map(len) > 0)]
        .groupby("members", sort=False, as_index=False)["count"]
        .sum()
    )
    if rows.empty:
        return no_data_figure(title, "every intersection is empty")
    union = rows["count"].sum()
    sizes = np.array([rows.loc[rows["members"].map(lambda m, i=i: i in m), "count"].sum() for i in range(n)])
    rows["degree"] = rows["members"].map(len)
    if sort == "cardinality":
        rows = rows.sort_values(["count", "degree"], ascending=[False, True], kind="stable")
    elif sort == "degree":
        rows = rows.sort_values(["degree", "count"], ascending=[True, False], kind="stable")
    shown = rows.head(max_bars)
    k = len(shown)
    x = np.arange(k)
    names = [" ∩ ".join(str(labels[i]) for i in m) for m in shown["members"]]
    colors = colors or color_map(labels)
    fig = make_subplots(rows=2, cols=2, column_widths=[0.22, 0.78], row_heights=[0.62, 0.38],
                        specs=[[None, {}], [{}, {}]], horizontal_spacing=0.01, vertical_spacing=0.02)  # fmt: skip
    cnt = shown["count"].to_numpy(dtype=np.float64, na_value=np.nan)
    fig.add_trace(go.Bar(x=x, y=cnt, marker_color="#333", customdata=np.stack([cnt, 100 * cnt / union], axis=-1),
                         hovertext=names, text=[_compact(c) for c in cnt], textposition="outside", cliponaxis=False, textangle=-90 if k > 20 else 0, constraintext="none",
                         hovertemplate="%{hovertext} (exclusive)<br>%{customdata[0]:,.0f} parameters"
                         "<br>%{customdata[1]:.2f}% of union<extra></extra>"), row=1, col=2)  # fmt: skip
    gx, gy = np.meshgrid(x, np.arange(n))
    fig.add_trace(go.Scatter(x=gx.ravel(), y=gy.ravel(), mode="markers", marker={"color": "#ddd", "size": 11},
                             hoverinfo="skip"), row=2, col=2)  # fmt: skip
    lx, ly = [], []
    for j, m in enumerate(shown["members"]):
        lx += [j] * len(m) + [None]
        ly += list(m) + [None]
    fig.add_trace(go.Scatter(x=lx, y=ly, mode="lines+markers", marker={"color": "#333", "size": 11},
                             line={"color": "#333", "width": 2}, hoverinfo="skip"), row=2, col=2)  # fmt: skip
    fig.add_trace(go.Bar(y=np.arange(n), x=sizes, orientation="h", marker_color=[colors[str(lab)] for lab in labels],
                         customdata=np.stack([sizes, 100 * sizes / union], axis=-1), hovertext=list(map(str, labels)),
                         hovertemplate="%{hovertext}<br>%{customdata[0]:,.0f} parameters<br>%{customdata[1]:.2f}% of union<extra></extra>"),
                  row=2, col=1)  # fmt: skip
    # Axes: bars x/y, set sizes x2/y2, dots x3/y3. Bars and dots share x; dots and set sizes share y.
    fig.update_xaxes(matches="x3", visible=False, row=1, col=2)
    fig.update_yaxes(matches="y2", row=2, col=2)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, range=[-0.6, k - 0.4], row=2, col=2)
    fig.update_yaxes(title_text="intersection size", row=1, col=2)
    fig.update_yaxes(
        tickvals=np.arange(n), ticktext=list(map(str, labels)), range=[n - 0.5, -0.5], showgrid=False, row=2, col=1
    )
    fig.update_yaxes(showgrid=False, zeroline=False, showticklabels=False, row=2, col=2)
    fig.update_xaxes(autorange="reversed", title_text="set size", row=2, col=1)
    sub = (
        f"{k} of {len(rows)} non-empty intersections, by {sort}"
        if len(rows) > k
        else f"{k} non-empty intersections, by {sort}"
    )
    return _style(fig, f"{title}<br><sup>{sub}</sup>", showlegend=False, bargap=0.25, height=420 + 24 * n)


def pairwise_matrix(df: pd.DataFrame, value: str = "jaccard", chance_col: str | None = None, view: str = "value",
                    labels: Sequence[str] | None = None, title: str | None = None) -> go.Figure:  # fmt: skip
    """labels × labels heatmap of o1, o2 or jaccard (fractions), annotated, with ×chance in hover.

    df: one row per pair with columns a, b, the value column and its chance baseline (default
    ``f"{value}_chance"``). Cell (row a, column b) is the row's own value; for the one-sided
    overlaps the mirror cell (b, a) is filled from the other side (o1(a, b) = o2(b, a)), so
    o1 reads "share of the row mask also in the column mask". view "ratio" draws value / chance
    on a diverging ×-scale centred on 1. The diagonal is left blank.
    """
    if value not in ("o1", "o2", "jaccard"):
        raise FigureDataError(f"pairwise_matrix: value must be 'o1', 'o2' or 'jaccard'; got {value!r}.")
    what = {
        "o1": "share of row mask also in column mask",
        "o2": "share of column mask also in row mask",
        "jaccard": "Jaccard",
    }[value]
    if view not in ("value", "ratio"):
        raise FigureDataError(f"pairwise_matrix: view must be 'value' or 'ratio'; got {view!r}.")
    title = title or (f"{what} ×chance" if view == "ratio" else f"Pairwise overlap: {what}")
    if df.empty:
        return no_data_figure(title)
    chance_col = chance_col or f"{value}_chance"
    mirror = {"o1": "o2", "o2": "o1", "jaccard": "jaccard"}[value]
    _require(df, ["a", "b", value, chance_col], "pairwise_matrix", shares=["o1", "o2", "jaccard", chance_col])
    labels = (
        list(map(str, labels)) if labels is not None else _unique(list(df["a"].astype(str)) + list(df["b"].astype(str)))
    )
    idx = {lab: i for i, lab in enumerate(labels)}
    val, chance = np.full((len(labels),) * 2, np.nan), np.full((len(labels),) * 2, np.nan)
    # The mirror cell's baseline: Jaccard is symmetric; o1's mirror is o2 with its own chance column.
    mirror_chance = (
        chance_col if value == "jaccard" else f"{mirror}_chance" if chance_col == f"{value}_chance" else None
    )
    for row in df.itertuples(index=False):
        a, b = idx.get(str(row.a)), idx.get(str(row.b))
        if a is None or b is None or a == b:
            continue
        rec = row._asdict()
        val[a, b], chance[a, b] = rec[value], rec[chance_col]
        if np.isnan(val[b, a]) and mirror in rec:
            val[b, a], chance[b, a] = rec[mirror], rec.get(mirror_chance, np.nan) if mirror_chance else np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = val / chance
    text = np.where(np.isnan(val), "", np.char.mod("%.1f%%", np.nan_to_num(100 * val)))
    custom = np.stack([100 * val, 100 * chance, ratio], axis=-1)
    hover = (
        "row %{y} · column %{x}<br>"
        + what
        + " %{customdata[0]:.2f}%<br>chance %{customdata[1]:.2f}%<br>×chance %{customdata[2]:.2f}<extra></extra>"
    )
    if view == "ratio":
        z, trace = _ratio_axis(ratio)
        text = _times(ratio)
        trace["colorbar"]["title"] = {"text": "×chance"}
    else:
        z, trace = (
            100 * val,
            {"colorscale": SEQUENTIAL, "zmin": 0, "zmax": 100, "colorbar": {"title": {"text": f"{value} (%)"}}},
        )
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, text=text, texttemplate="%{text}", customdata=custom,
                               hovertemplate=hover, hoverongaps=False, xgap=2, ygap=2, **trace))  # fmt: skip
    fig.update_xaxes(type="category", side="bottom", showgrid=False, constrain="domain")
    fig.update_yaxes(
        type="category", autorange="reversed", scaleanchor="x", scaleratio=1, showgrid=False, constrain="domain"
    )
    return _style(fig, title, "column mask", "row mask", height=max(380, 160 + 60 * len(labels)))


def consensus_bars(df: pd.DataFrame, title: str = "Consensus: in how many masks is a changed parameter?") -> go.Figure:
    """Columns k (number of masks holding a parameter), count; optional layer (or group) -> stacked shares per layer.

    Rows with k = 0 (in no mask) are left out of the bars, and their total is stated in the subtitle.
    ``OverlapReport.consensus`` (group, k, count) fits as it is, its groups on the x axis.
    """
    if df.empty:
        return no_data_figure(title)
    _require(df, ["k", "count"], "consensus_bars")
    zero = float(df.loc[df["k"] == 0, "count"].sum())
    d = df[df["k"] > 0]
    ks = sorted(d["k"].unique())
    sub = f"<br><sup>not shown: {zero:,.0f} parameters in no mask</sup>" if zero else ""
    fig = go.Figure()
    by = next((c for c in ("layer", "group") if c in d.columns), None)
    if by is None:
        g = d.groupby("k")["count"].sum().reindex(ks).to_numpy(dtype=np.float64, na_value=np.nan)
        fig.add_trace(go.Bar(x=np.array(ks), y=g, marker_color=PALETTE[0], customdata=100 * g / g.sum(),
                             hovertemplate="in %{x} masks<br>%{y:,.0f} parameters (%{customdata:.2f}% of union)<extra></extra>"))  # fmt: skip
        fig.update_xaxes(tickvals=np.array(ks), type="linear")
        return _style(fig, title + sub, "number of masks containing the parameter (k)", "parameters (count)")
    layers = _layer_order(d[by])
    piv = d.assign(_x=d[by].map(_layer_label)).pivot_table(index="_x", columns="k", values="count", aggfunc="sum")
    piv = piv.reindex(index=layers, columns=ks).fillna(0)
    share = (
        100 * piv.to_numpy(dtype=np.float64, na_value=np.nan) / np.maximum(piv.to_numpy().sum(axis=1, keepdims=True), 1)
    )
    steps = np.linspace(0, 1, len(ks)) if len(ks) > 1 else np.array([0.5])
    from plotly.colors import sample_colorscale

    for j, (kk, col) in enumerate(zip(ks, sample_colorscale(SEQUENTIAL, list(steps * 0.9)), strict=True)):
        fig.add_trace(go.Bar(x=layers, y=share[:, j], name=f"k = {kk}", marker_color=col, customdata=piv.to_numpy()[:, j],
                             hovertemplate=f"{by} %{{x}}<br>in {kk} masks<br>%{{customdata:,.0f}} parameters (%{{y:.2f}}%)<extra></extra>"))  # fmt: skip
    fig.update_xaxes(type="category")
    return _style(fig, title + sub, by, "share of changed parameters (%)", barmode="stack")


def series_lines(df: pd.DataFrame, title: str = "Checkpoint series: update sparsity over training") -> go.Figure:
    """Columns step, vs_first, vs_previous (sparsity fractions); optional ever_updated (share)."""
    if df.empty:
        return no_data_figure(title)
    _require(
        df, ["step", "vs_first", "vs_previous"], "series_lines", shares=["vs_first", "vs_previous", "ever_updated"]
    )
    d = df.sort_values("step")
    fig = go.Figure()
    series = [("vs_first", "sparsity vs first checkpoint", "solid"), ("vs_previous", "sparsity vs previous checkpoint", "solid"),
              ("ever_updated", "ever updated, unchanged at end (share)", "dash")]  # fmt: skip
    for i, (col, name, dash) in enumerate(series):
        if col in d.columns:
            fig.add_trace(go.Scatter(x=d["step"].to_numpy(), y=100 * d[col].to_numpy(dtype=np.float64, na_value=np.nan), mode="lines+markers", name=name,
                                     line={"color": PALETTE[i], "dash": dash}, hovertemplate=f"step %{{x}}<br>{name}: %{{y:.2f}}%<extra></extra>"))  # fmt: skip
    return _style(fig, title, "training step", "share of parameters (%)", legend={"orientation": "h", "y": -0.2})


def training_curves(df: pd.DataFrame, title: str = "Training curves", colors: Mapping | None = None) -> go.Figure:
    """One small multiple per metric: columns step, metric, value; optional run (one line per run)."""
    if df.empty:
        return no_data_figure(title)
    _require(df, ["step", "metric", "value"], "training_curves")
    metrics = _unique(df["metric"].astype(str))
    runs = _unique(df["run"].astype(str)) if "run" in df.columns else ["run"]
    colors = colors or color_map(runs)
    ncol = min(3, len(metrics))
    nrow = int(np.ceil(len(metrics) / ncol))
    fig = make_subplots(rows=nrow, cols=ncol, subplot_titles=metrics, horizontal_spacing=0.08, vertical_spacing=0.15)
    for i, met in enumerate(metrics):
        for run in runs:
            sub = df[
                (df["metric"].astype(str) == met) & ((df["run"].astype(str) == run) if "run" in df.columns else True)
            ].sort_values("step")
            if sub.empty:
                continue
            fig.add_trace(go.Scatter(x=sub["step"].to_numpy(), y=sub["value"].to_numpy(dtype=np.float64, na_value=np.nan), mode="lines", name=run,
                                     legendgroup=run, showlegend=i == 0 and "run" in df.columns, line={"color": colors[run]},
                                     hovertemplate=f"{run}<br>step %{{x}}<br>{met} %{{y:.4g}}<extra></extra>"),
                          row=i // ncol + 1, col=i % ncol + 1)  # fmt: skip
        fig.update_xaxes(title_text="step", row=i // ncol + 1, col=i % ncol + 1)
        fig.update_yaxes(title_text=met, row=i // ncol + 1, col=i % ncol + 1)
    return _style(fig, title, height=320 * nrow + 60)


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
    text = np.where(np.isnan(a), "", np.char.mod("%.1f", 100 * a))
    fig = go.Figure(go.Heatmap(z=100 * a, x=list(map(str, labels)), y=rows, text=text, texttemplate="%{text}", colorscale=SEQUENTIAL,
                               zmin=0, zmax=100, hoverongaps=False, xgap=2, ygap=2, colorbar={"title": {"text": "accuracy (%)"}},
                               hovertemplate="after training %{y}<br>on %{x}: %{z:.2f}%<extra></extra>"))  # fmt: skip
    fig.update_xaxes(type="category", side="bottom", showgrid=False)
    fig.update_yaxes(type="category", autorange="reversed", showgrid=False)
    return _style(fig, title, "evaluated on task", "after training task", height=max(360, 140 + 50 * a.shape[0]))
