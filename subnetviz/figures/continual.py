"""Pure Plotly builders for continual-learning results (frames of :meth:`ContinualResult.to_frames`).

Fractions come in, percent goes out. Method colours are stable (the shared Okabe–Ito palette in
the order of :data:`METHOD_ORDER`); the accuracy-matrix heatmap itself is
:func:`subnetviz.figures.accuracy_matrix`. Every builder returns a "no data" figure for an empty frame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from subnetviz.figures.style import (
    PALETTE,
    SEQUENTIAL,
    FigureDataError,
    _require,
    _style,
    _unique,
    no_data_figure,
    order_key,
    takes_data,
)

METHOD_ORDER = ("finetune", "SupSup", "SSNeT", "ExSSNeT", "SupSup+KKT", "SSNeT+KKT", "ExSSNeT+KKT")


def method_colors(labels) -> dict[str, str]:
    """Label -> colour, fixed by the label's place in :data:`METHOD_ORDER` (unknown labels after)."""
    order = [*METHOD_ORDER, *sorted(set(labels) - set(METHOD_ORDER))]
    return {lab: PALETTE[order.index(lab) % len(PALETTE)] for lab in labels}


def task_colors(n: int) -> list[str]:
    """One colour per task, all different: the shared Okabe–Ito palette up to its 8 colours, else ``n`` points of
    Viridis (colour-blind safe, and ordered as the tasks are; its last tenth, a pale yellow hard to see on white, is
    left out). Cycling the 8 colours drew task 9 as task 1 and task 10 as task 2."""
    if n <= len(PALETTE):
        return list(PALETTE[:n])
    return sample_colorscale(SEQUENTIAL, list(np.linspace(0.0, 0.9, n)))


def _ordered(labels) -> list[str]:
    return sorted(_unique(labels), key=order_key(METHOD_ORDER))


def _whole_tasks(fig: go.Figure, tasks: int) -> None:
    """Ticks on whole task numbers from 1 (Plotly's own read 1, 1.2, … 1.8, 2 for two tasks), at most about a
    dozen of them."""
    fig.update_xaxes(tick0=1, dtick=max(1, -(-tasks // 12)))


@takes_data()
def accuracy_vs_density(summary: pd.DataFrame, title: str = "Final average accuracy vs density") -> go.Figure:
    """One line per masked method (mean ± sd over seeds); finetune as a dashed horizontal line."""
    if summary.empty:
        return no_data_figure(title)
    colors = method_colors(summary["label"].unique())
    fig = go.Figure()
    masked = summary[summary["label"] != "finetune"]
    if masked["density"].nunique() <= 1:  # one density: a line over a one-point log axis says nothing; bars per method
        d = float(masked["density"].iloc[0]) if len(masked) else 1.0
        labels = _ordered(summary["label"])
        rows = [summary[summary["label"] == lab].iloc[0] for lab in labels]
        y = np.array([100 * r["final_acc_mean"] for r in rows])
        sd = np.array([100 * (0 if pd.isna(r["final_acc_sd"]) else r["final_acc_sd"]) for r in rows])
        fig.add_trace(
            go.Bar(
                x=labels,
                y=y,
                error_y={"type": "data", "array": sd},
                marker_color=[colors[lab] for lab in labels],
                customdata=sd,
                hovertemplate="%{x}<br>final average accuracy %{y:.1f}% ± %{customdata:.1f} (sd over seeds)<extra></extra>",
            )
        )
        _values_above(fig, labels, y, sd, " %")
        said = _summary_setting(summary, d, "finetune" in labels)
        return _style(
            fig,
            "Final average accuracy" + said,
            "method",
            "final average accuracy (%)",
            showlegend=False,
            margin=_summary_margin(said),
        )
    for label in _ordered(summary["label"]):
        s = summary[summary["label"] == label].sort_values("density")
        y, sd = 100 * s["final_acc_mean"].to_numpy(), 100 * s["final_acc_sd"].fillna(0).to_numpy()
        if label == "finetune":
            fig.add_hline(
                y=float(y[0]),
                line_dash="dash",
                line_color=colors[label],
                annotation_text=f"finetune (dense) {y[0]:.1f}%",
            )
            continue
        fig.add_trace(
            go.Scatter(
                x=100 * s["density"].to_numpy(),
                y=y,
                error_y={"type": "data", "array": sd},
                mode="lines+markers",
                name=label,
                line={"color": colors[label]},
                hovertemplate=f"{label}<br>density %{{x:g}}%<br>accuracy %{{y:.1f}}%<extra></extra>",
            )
        )
    fig.update_xaxes(type="log")
    said = _summary_setting(summary)
    return _style(
        fig,
        title + said,
        "mask density (% of weights kept, log)",
        "final average accuracy (%)",
        margin=_summary_margin(said),
    )


def _summary_setting(summary: pd.DataFrame, density: float | None = None, finetune: bool = False) -> str:
    """The Summary charts' setting as lines under the title: the density (finetuning, which trains every weight,
    said where the chart has it: most SupSup / ExSSNeT runs do not) and how many seeds the means are over (an
    export also holds one seed's charts, and names that seed). Under the title, not after it: on one line, a
    chart half the page wide cut it after "at density 5 % ("; each on a line of its own, as one line under the
    title ran 3 px past that chart at 1024 px, cutting the "s" of "seeds". Empty when there is nothing to say."""
    said = []
    if density is not None:
        said.append(f"at density {100 * density:g} %" + (" (finetune: dense)" if finetune else ""))
    counts = sorted({int(n) for n in summary["seeds"].dropna()}) if "seeds" in summary else []
    if counts:
        n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        said.append("one seed" if counts == [1] else f"mean ± sd over {n} seeds")
    return "".join(f"<br><sup>{line}</sup>" for line in said)


def _summary_margin(said: str) -> dict:
    """The Summary charts' margins: above the plot, room for the title and the ``said`` lines under it."""
    return {"l": 70, "r": 30, "t": 80 + 18 * max(0, said.count("<sup>") - 1), "b": 60}


HALF_PLOT = 174
"""Px across the plot of a Summary chart at 1024 px with the sidebar open: 274 px, half the main column, less the
70 + 30 px of its side margins. Seven methods give each bar 24.9 px there."""
SLANT_PX = 34
"""Px of the plot that Plotly gives the right margin when it slants the method names under the bars by 30° (4 or 5
methods at :data:`HALF_PLOT`; with 6 or 7, names with "+KKT" among them, it turns them upright, which costs none)."""
_CHAR_PX = {".": 3.4, " ": 3.4, "%": 10.6, "-": 4.0}  # at 12 px, as Chromium draws them; a digit 6.7
LABEL_GAP = 3  # px kept free between two neighbouring value labels


def _label_px(text: str, size: int, other: float = 6.7) -> float:
    """About how wide ``text`` is drawn at ``size`` px: :data:`_CHAR_PX` per character (``other`` for the rest, a
    digit's by default), measured in Chromium at 12 px."""
    return size / 12 * sum(_CHAR_PX.get(c, other) for c in text)


def value_labels(y: np.ndarray, unit: str) -> tuple[list[str], int]:
    """The value labels of bars ``y`` and their font size, the first that fits side by side in a chart half the page
    wide at 1024 px (:data:`HALF_PLOT`): "84.8 %" at 12 px; without the unit (the axis title says it); at 10 px;
    whole numbers at 10 px. With seven methods "84.8 %" took 38 px of a bar's 25 px and ran into its neighbours
    ("84.8 %90.3 %"). A value that rounds to 0 is written without a sign ("0.0", not "-0.0")."""
    pitch = (HALF_PLOT - SLANT_PX * (len(y) <= 5)) / max(len(y), 1)
    text, size = [], 12
    for suffix, size, digits in ((unit, 12, 1), ("", 12, 1), ("", 10, 1), ("", 10, 0)):
        text = [_unsigned_zero(f"{v:.{digits}f}") + suffix for v in y]
        widths = [_label_px(t, size) if np.isfinite(v) else 0.0 for t, v in zip(text, y, strict=True)]
        if all((a + b) / 2 + LABEL_GAP <= pitch for a, b in zip(widths, widths[1:], strict=False)):
            break
    return text, size


def _unsigned_zero(text: str) -> str:
    return text.lstrip("-") if text.startswith("-") and not text.strip("-0.") else text


def _values_above(fig: go.Figure, x: list, y: np.ndarray, sd: np.ndarray, unit: str, signed: bool = False) -> None:
    """Each bar's value beyond its error bar's cap (a bar's own outside text sits on the bar's end, where the error
    bar crosses it and hides the digits; a zero bar would show nothing), clear of the cap, and the axis tall enough
    to hold every label. ``signed``: the values can be negative (a forgetting below 0: the accuracy grew later);
    a negative bar's value goes below it, and the axis reaches below 0 as far as any bar or error bar does, with a
    zero line."""
    finite = np.isfinite(y + sd)  # a method without a result (NaN) has no bar to label
    neg = finite & (y < 0) if signed else np.zeros(len(y), bool)
    top = max(float((y + sd)[finite].max()) if finite.any() else 0.0, 1.0)
    bottom = min(float((y - sd)[finite].min()) if signed and finite.any() else 0.0, 0.0)
    span = top - bottom
    pad = 0.015 * span
    text, size = value_labels(y, unit)
    fig.add_trace(
        go.Scatter(
            x=x,
            y=np.where(neg, y - sd - pad, y + sd + pad),
            mode="text",
            text=text,
            textfont={"size": size},
            textposition=["bottom center" if n else "top center" for n in neg],
            hoverinfo="skip",
            cliponaxis=False,
        )
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(range=[bottom - 0.12 * span if bottom < 0 else 0.0, top + 0.12 * span])
    if bottom < 0:
        fig.update_yaxes(zeroline=True, zerolinecolor="black", zerolinewidth=1)


@takes_data()
def forgetting_bars(
    summary: pd.DataFrame,
    density: float | None = None,
    title: str = "Forgetting (max drop once learned)",  # (a longer one ran 81 px past a half-width chart)
) -> go.Figure:
    """Bars of forgetting (mean ± sd over seeds) per method at ``density`` (finetune always shown)."""
    s = (
        summary
        if density is None
        else summary[np.isclose(summary["density"], density) | (summary["label"] == "finetune")]
    )
    if s.empty:
        return no_data_figure(title)
    if s["forgetting_mean"].isna().all():  # NaN by definition with one task: nothing was learned after another
        return no_data_figure(title, "Forgetting needs at least two tasks")
    colors = method_colors(s["label"].unique())
    labels = _ordered(s["label"])
    s = s.set_index("label").loc[labels]
    y = 100 * s["forgetting_mean"].to_numpy(dtype=np.float64)
    sd = 100 * s["forgetting_sd"].fillna(0).to_numpy(dtype=np.float64)
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=y,
            error_y={"type": "data", "array": sd},
            marker_color=[colors[lab] for lab in labels],
            customdata=sd,
            hovertemplate="%{x}: %{y:.2f} pts ± %{customdata:.2f} (sd over seeds)<extra></extra>",
        )
    )
    _values_above(fig, labels, y, sd, "", signed=True)  # a method that never forgets shows 0.0, not an empty slot
    # below 0: the tasks' accuracy grew after they were learned (backward transfer); not floored (metrics.forgetting)
    # the density named, as every figure of a setting names it: a downloaded file has no picker beside it; under
    # the title (on one line, a chart half the page wide cut it after "at density 5 % (")
    said = _summary_setting(s, density, "finetune" in labels)
    return _style(
        fig,
        title + said,
        "method",
        "forgetting (accuracy points; < 0: grew later)",
        showlegend=False,
        margin=_summary_margin(said),
    )


def _one_setting(capacity: pd.DataFrame, density: float, layer: str, seed) -> tuple[pd.DataFrame, str]:
    """The capacity rows of ``layer`` at ``density`` and ``seed`` (every seed's: None, to be averaged) and what the
    subtitle says of them: the density, the layer, and the seed or the number of seeds a mean is over (the charts
    drew the mean over seeds under a Seed picker that said it applied to them)."""
    c = capacity[(capacity["layer"] == layer) & np.isclose(capacity["density"], density)] if len(capacity) else capacity
    if seed is not None and "seed" in c:
        c = c[c["seed"] == seed]
    seeds = sorted(c["seed"].unique()) if "seed" in c else []
    if seed is None and len(seeds) == 1:  # one seed's values: named as such
        seed = seeds[0]
    which = [f"density {100 * density:g} %", "whole model" if layer == "all" else f"layer {layer}"]
    which += [f"seed {seed}"] if seed is not None else [f"mean over {len(seeds)} seeds"] if seeds else []
    return c, ", ".join(which)


@takes_data("layer")
def capacity_curves(
    capacity: pd.DataFrame,
    density: float,
    layer: str = "all",
    title: str = "Share of weights used after each task",
    seed=None,
) -> go.Figure:
    """u_t per masked method at ``seed`` (the mean over seeds: None) against the independent-mask curve
    1 − (1 − d)^t (dashed); the setting under the title."""
    c, which = _one_setting(capacity, density, layer, seed)
    title = f"{title}<br><sup>{which}</sup>"
    if c.empty:
        return no_data_figure(title)
    colors = method_colors(c["label"].unique())
    fig = go.Figure()
    for label in _ordered(c["label"]):
        m = c[c["label"] == label].groupby("task")["used"].mean()
        fig.add_trace(
            go.Scatter(
                x=m.index.to_numpy() + 1,
                y=100 * m.to_numpy(),
                mode="lines+markers",
                name=label,
                line={"color": colors[label]},
            )
        )
    ref = c.groupby("task")["reference"].first()
    fig.add_trace(
        go.Scatter(
            x=ref.index.to_numpy() + 1,
            y=100 * ref.to_numpy(),
            mode="lines",
            name="independent masks",
            line={"color": "grey", "dash": "dash"},
        )
    )
    _whole_tasks(fig, int(c["task"].max()) + 1)
    return _style(fig, title, "tasks trained", "weights used (%)")


@takes_data()
def exclusive_fraction(
    capacity: pd.DataFrame, density: float, title: str = "Exclusive share of each task's mask", seed=None
) -> go.Figure:
    """e_t = |M_t ∧ ¬U_{t-1}| / |M_t| per task at ``seed`` (the mean over seeds: None), whole model; tasks numbered
    from 1, as on every chart; the setting under the title."""
    c, which = _one_setting(capacity, density, "all", seed)
    title = f"{title}<br><sup>{which}</sup>"
    if c.empty:
        return no_data_figure(title)
    colors = method_colors(c["label"].unique())
    fig = go.Figure()
    for label in _ordered(c["label"]):
        m = c[c["label"] == label].groupby("task")["exclusive"].mean()
        fig.add_trace(
            go.Scatter(
                x=m.index.to_numpy() + 1,
                y=100 * m.to_numpy(),
                mode="lines+markers",
                name=label,
                line={"color": colors[label]},
            )
        )
    _whole_tasks(fig, int(c["task"].max()) + 1)
    return _style(fig, title, "task", "exclusive share of the mask (%)")


def _task_ticks(n: int, most: int = 15) -> list[int]:
    """Task numbers to label on a colour bar of ``n`` tasks: all up to ``most``, else every 2nd, 5th, 10th, 20th,
    25th, 50th ... (at most ``most`` labels; 101 labels overlapped, and the hover names each task), plus ``n``
    when it is not next to the last one."""
    if n <= most:
        return list(range(1, n + 1))
    steps = sorted(v for e in range(19) for v in (10**e, 2 * 10**e, 25 * 10**e, 5 * 10**e) if v >= 2)
    step = next(v for v in steps if v * most >= n)
    ticks = list(range(step, n + 1, step))
    return ticks + [n] * (n - ticks[-1] > step / 2)


@takes_data()
def owner_image(owner: np.ndarray, title: str = "Owner task of each weight") -> go.Figure:
    """Heatmap of a layer's owner image (first task that claimed each weight, counted from 0; −1 = unused). Shown
    as the task's number from 1, as on every chart (0 = unused, grey)."""
    a = np.asarray(owner)
    if a.size == 0:
        return no_data_figure(title)
    n = int(a.max()) + 1
    colors = ["#DDDDDD", *task_colors(max(n, 1))]
    k = len(colors)
    scale = [[v, colors[i]] for i in range(k) for v in (i / k, (i + 1) / k)]  # one flat band per value
    ticks = [0, *_task_ticks(k - 1)]
    fig = go.Figure(
        go.Heatmap(
            z=a.astype(float) + 1,
            zmin=-0.5,
            zmax=k - 0.5,
            colorscale=scale,
            colorbar={
                "title": {"text": "task"},
                "tickvals": ticks,
                "ticktext": ["unused", *map(str, ticks[1:])],
            },
            hovertemplate="row %{y}, col %{x}: task %{z} (0: unused)<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    return _style(fig, title, "input unit", "output unit")


MISSING_CELL = "#F4CCCC"  # pale red: a cell that should hold an accuracy but holds none (not the grey of "not trained")


@takes_data()
def mark_missing_accuracies(fig: go.Figure, A) -> go.Figure:
    """``fig``, an accuracy matrix of ``A`` (:func:`subnetviz.figures.accuracy_matrix`, A[t, j] a fraction), with
    each cell that should hold a number but holds NaN drawn pale red and marked "n/a", with a hover that says so:
    in a square matrix the diagonal, the cells below it and those just right of it (task t+1 before it is trained),
    else every cell. Left to the heatmap, such a cell (a damaged or hand-edited result's: a job measures every one)
    was a gap in the grey the matrix means as "task not trained yet", though it lies below the diagonal. ``fig`` is
    changed in place and returned."""
    a = np.asarray(A, dtype=np.float64)
    if a.ndim != 2 or a.size == 0 or not fig.data:
        return fig
    n, m = a.shape
    expected = np.tril(np.ones((n, m), dtype=bool), k=1) if n == m else np.ones((n, m), dtype=bool)
    missing = np.isnan(a) & expected
    if not missing.any():
        return fig
    base = fig.data[0]  # the matrix itself: its cells' x and y names
    fig.add_trace(
        go.Heatmap(
            z=np.where(missing, 0.0, np.nan),
            x=list(base.x),
            y=list(base.y),
            text=np.where(missing, "n/a", ""),
            texttemplate="%{text}",
            textfont={"color": "#8B0000", "size": 11},
            colorscale=[[0, MISSING_CELL], [1, MISSING_CELL]],
            showscale=False,
            hoverongaps=False,
            xgap=2,
            ygap=2,
            hovertemplate="after training %{y}<br>on %{x}: no accuracy saved (n/a)<extra></extra>",
        )
    )
    return fig


@takes_data()
def knn_bars(knn: pd.DataFrame, title: str = "KKT: KNN accuracy of each earlier mask on the new task") -> go.Figure:
    """Grouped bars of one run (one method, density and seed): for each new task, the KNN accuracy under each
    earlier task's mask; the mask the run started the new task from (``chosen``) outlined and marked "chosen";
    chance as markers. Tasks numbered from 1, as on every chart. Rows of several runs are refused: a bar is one
    run's value, never a mean over methods that chose differently."""
    if knn.empty:
        return no_data_figure(title)
    _require(knn, ("task", "source_task", "knn_acc", "chance"), "knn_bars", shares=("knn_acc", "chance"))
    runs = [c for c in ("label", "density", "seed") if c in knn.columns]
    if knn.duplicated(["task", "source_task"]).any():
        found = knn[runs].drop_duplicates().to_dict("records") if runs else "several rows per (task, source_task)"
        raise FigureDataError(f"knn_bars draws one run; the frame holds several: {found}. Filter it to one first.")
    fig = go.Figure()
    colors = task_colors(knn["source_task"].nunique())  # one per earlier mask, none repeated
    upright = knn["task"].nunique() > CHOSEN_ACROSS
    mark = {  # "chosen" at its own size, never shrunk to the bar's width (then 8 px tall at 1024 px, or 1 px)
        "textfont": {"size": CHOSEN_PX},
        "constraintext": "inside",
        "cliponaxis": False,
        "textangle": -90 if upright else 0,
    }
    for i, (src, s) in enumerate(knn.sort_values(["source_task", "task"]).groupby("source_task")):
        chosen = s["chosen"].to_numpy(bool) if "chosen" in s else np.zeros(len(s), bool)
        fig.add_trace(
            go.Bar(
                x=s["task"].to_numpy() + 1,
                y=100 * s["knn_acc"].to_numpy(),
                name=f"mask of task {src + 1}",
                marker={
                    "color": colors[i],
                    "line": {"color": "black", "width": [3 if c else 0 for c in chosen]},
                },
                text=["chosen" if c else "" for c in chosen],
                textposition="outside",
                **mark,
                customdata=np.where(chosen, "chosen: the new task started from this mask", "not chosen"),
                hovertemplate=f"new task %{{x}}, mask of task {src + 1}: %{{y:.1f}}%<br>%{{customdata}}<extra></extra>",
            )
        )
    ch = knn.groupby("task")["chance"].first()
    fig.add_trace(
        go.Scatter(
            x=ch.index.to_numpy() + 1,
            y=100 * ch.to_numpy(),
            mode="markers",
            name="chance 1/C",
            marker={"symbol": "line-ew-open", "size": 30, "color": "black"},
        )
    )
    fig.update_layout(barmode="group")
    fig.update_xaxes(dtick=1)
    top = float(np.nanmax([100 * knn["knn_acc"].max(), 100 * knn["chance"].max(), 1.0]))
    if "chosen" in knn and knn["chosen"].astype(bool).any():  # room above the highest bar for its word
        word = _label_px("chosen", CHOSEN_PX, CHOSEN_CHAR_PX) if upright else CHOSEN_PX + 1
        top /= 1 - (word + 4) / KNN_PLOT_HEIGHT
    fig.update_yaxes(range=[0, 1.05 * top])
    return _style(fig, title, "new task", "KNN accuracy (%)")


CHOSEN_PX = 11  # the size of the word "chosen" over a KKT bar
CHOSEN_CHAR_PX = 6.5  # px a letter of it takes at 12 px ("chosen" is 35.5 px long at 11 px in Chromium)
CHOSEN_ACROSS = 7
"""Groups of bars (new tasks) up to which "chosen" lies across its bar; with more, it stands upright (12 px wide):
across, at 1024 px (a chart 564 px wide), neighbouring words ran into each other from 9 new tasks on."""
KNN_PLOT_HEIGHT = 310  # px: the plot of a 450 px figure, less its 80 + 60 px top and bottom margins


@takes_data()
def inference_bars(
    inference: pd.DataFrame, title: str = "Task inference: how often the right mask was inferred"
) -> go.Figure:
    """One run's task inference (one method, density and seed): for each task and number of test samples per
    trial, the share of trials whose inferred task was the true one, by SupSup's one-shot gradient test
    (``accuracy``) and by the brute-force lowest-entropy mask (``min_entropy_accuracy``); chance 1/T dashed."""
    if inference.empty:
        return no_data_figure(title)
    cols = ("samples", "task", "accuracy", "min_entropy_accuracy")
    _require(inference, cols, "inference_bars", shares=("accuracy", "min_entropy_accuracy"))
    if inference.duplicated(["samples", "task"]).any():
        raise FigureDataError("inference_bars draws one run; the frame holds several rows per (samples, task).")
    d = inference.sort_values(["task", "samples"])
    x = [
        [f"task {t + 1}" for t in d["task"]],
        [f"{n} sample{'s' * (n != 1)}" for n in d["samples"].astype(int)],
    ]
    fig = go.Figure()
    for i, (col, name) in enumerate(
        (("accuracy", "one-shot (SupSup's gradient test)"), ("min_entropy_accuracy", "lowest entropy (every mask)"))
    ):
        fig.add_trace(
            go.Bar(
                x=x,
                y=100 * d[col].to_numpy(dtype=np.float64),
                name=name,
                marker_color=PALETTE[i],
                hovertemplate=f"{name}<br>%{{x}}: right mask in %{{y:.0f}}% of trials<extra></extra>",
            )
        )
    n_tasks = int(d["task"].max()) + 1
    fig.add_hline(y=100 / n_tasks, line_dash="dash", line_color="grey", annotation_text=f"chance 1/{n_tasks}")
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 105])
    return _style(fig, title, "true task, test samples per trial", "right mask inferred (% of trials)")
