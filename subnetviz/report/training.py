"""The Training page's figures and tables, built without Streamlit: the page draws them, and its HTML
export builds the views that are not open (run curves, the subnetwork-vs-full comparison) on click."""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from subnetviz import config, figures
from subnetviz.figures.style import series_color
from subnetviz.jobs.context import METRICS_FILE, read_metrics
from subnetviz.jobs.kinds import TEST_KIND

CURVES = ("loss", "reward", "accuracy", "grad_norm", "kept", "entropy")
# Job kinds whose metrics rows are training steps, drawn as curves. A continual job logs one row per (method, seed,
# task) with a "loss": drawn as one training curve over "step" 1..60, it was smoothed across methods and overlaid on
# train runs. Drivers and behaviour jobs log progress only. (The test kind's jobs log steps.)
STEP_KINDS = ("train", "bigram_mask", TEST_KIND)
DIVERGED = ("loss", "grad_norm")  # a non-finite value of these is a diverged step (the runner's count)
# Characters in a line of a run's curves title (:func:`title_lines`): at 1024 px the chart is about 564 px wide (some
# 72 bold title characters), and "Run <name> · <id>" of a zoo run (100 characters) ran past its right edge.
TITLE_LINE = 60
_TITLE_ROW = 22  # px a title line takes (17 px font)


def run_names(runs: pd.DataFrame) -> dict[str, str]:
    """Run id -> "name · id" (the kind when a run has no name), as every picker shows it. A registry read
    whose runs are all nameless gives the name column as NaN, not None: that is no name either."""
    return {
        i: f"{n if isinstance(n, str) and n else k} · {i}"
        for i, n, k in zip(runs["id"], runs["name"], runs["kind"], strict=True)
    }


# A runner's run id (runner.submit: "20261207-203318-train-ae5862"), whose random tail tells it from the others
_RUN_ID = re.compile(r"\b(?:run )?\d{8}-\d{6}-[a-z_]+-([0-9a-f]{6})\b")  # (the sidebar's "run <id>" or the id)
_KEPT_COPY = re.compile(r"^update-mask-of-|-[0-9a-f]{16,}$")  # a kept update mask's file: selection.stored_mask_path
MASK_NAME = 28  # characters of a mask's source in a run's generated name


def mask_source(choice: str, width: int = MASK_NAME) -> str:
    """A *Train only* choice as a run's generated name says where its mask came from: "update mask of grpo-s0" as
    "grpo-s0", a saved "masks/grpo-seed0" as "grpo-seed0", a kept copy "uploads/update-mask-of-dpo-<hash>" as "dpo",
    a run's id by its random tail ("run ae5862"); past ``width`` characters cut with "…"."""
    name = _RUN_ID.sub(r"run \1", choice.removeprefix("update mask of "))
    folder, _, stem = name.partition("/")
    if folder in ("masks", "uploads") and stem:  # a saved mask, by its file's name
        name = _KEPT_COPY.sub("", stem) or stem
    return name if len(name) <= width else name[: width - 1] + "…"


def run_name(cfg: Mapping, mask_choice: str | None, random: bool = False) -> str:
    """The name the Launch form gives the ``train`` run of ``cfg`` (the job config it queues): algorithm, what it
    trains (``sub(<mask's source>)``, ``random(<source>)`` for the random control, nothing for a full finetune:
    :func:`mask_source` of ``mask_choice``), steps, learning rate, seed, and a multi-process strategy. A 3-step run
    and a 400-step one on other masks were both "sft sub lr=1e-05 s=0", told apart by their ids alone."""
    what = f"{'random' if random else 'sub'}({mask_source(mask_choice)}) " if mask_choice else ""
    strategy, n = cfg.get("strategy", "single"), cfg.get("num_processes", 1)
    procs = f" {strategy} n={n}" if strategy != "single" else ""  # (runs alike but for it were told apart by id)
    steps = cfg["steps"]
    return (
        f"{cfg['algorithm']} {what}{steps:,} step{'s' if steps != 1 else ''} lr={cfg['learning_rate']:g} "
        f"s={cfg['seed']}{procs}"
    )


def run_processes(cfg: Mapping, recorded: Mapping | None = None) -> str:
    """How a ``train`` job's processes trained, as its card says it: "single process", "fsdp2 × 2 processes",
    "ddp × 1 process". From the recorded config (``train_config.json``, the config as run) where it holds a value of
    the right type, else the submitted config's, else the trainer's default (single, 1). Two runs alike but for
    their strategy had the same card and name, told apart by their id only."""
    given = [c for c in (recorded or {}, cfg) if isinstance(c, Mapping)]
    strategy = next((c["strategy"] for c in given if isinstance(c.get("strategy"), str) and c["strategy"]), "single")
    n = next((c["num_processes"] for c in given if type(c.get("num_processes")) is int), 1)
    if strategy == "single" and n == 1:
        return "single process"
    return f"{strategy} × {n:,} process{'es' if n != 1 else ''}"


def shown_run(df: pd.DataFrame, asked: str | None) -> str:
    """The run the Runs view shows (``df``: the registry's runs, newest first, not empty): the URL's, else the
    newest training run not cancelled (bigram and continual jobs have their own pages), else the newest."""
    ids = list(df["id"])
    if asked in ids:
        return asked
    live = [i for i, stt in zip(ids, df["status"], strict=True) if stt != "cancelled"]
    live = [i for i, k in zip(ids, df["kind"], strict=True) if k == "train" and i in live] or live
    return live[0] if live else ids[0]


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The registry's runs as the page lists them (progress as a share, times as HH:MM:SS), its names and errors
    with every absolute server path shown as the pages show paths (:func:`~subnetviz.config.redact`): a failed
    run's error quotes the files it read ("data '/srv/…/train.jsonl': no such file"), and the table reaches
    viewers, its downloads and the HTML export. The registry keeps the whole text (``subnetviz runs``)."""
    show = runs[["id", "name", "kind", "status", "step", "total", "created", "ended", "error"]].copy()
    for col in ("name", "error"):
        show[col] = show[col].map(lambda v: config.redact(v) if isinstance(v, str) else v)
    show.insert(
        4,
        "progress",
        pd.to_numeric(show["step"], errors="coerce").fillna(0)
        / pd.to_numeric(show["total"], errors="coerce").replace(0, float("nan")),
    )
    for col in ("created", "ended"):  # date, minute and zone: the time alone read a run of the evening before as later
        show[col] = pd.to_datetime(show[col], unit="s").dt.strftime("%Y-%m-%d %H:%M UTC")
    return show


def has_curves(runner, run_id: str) -> bool:
    """Whether the run is of a kind whose rows are training steps and logged any metric the curves draw, finite or
    not: a run whose every value is NaN from step 1 had no chart, so no marks, no "diverged" and no overlay."""
    rec = runner.get(run_id)
    if rec.kind not in STEP_KINDS:
        return False
    points, bad = curve_points(read_metrics(Path(rec.run_dir) / METRICS_FILE)[0])
    return bool(len(points) or len(bad))


def overlay_options(runner, runs: pd.DataFrame, run_id: str) -> list[str]:
    """The runs that may be overlaid on ``run_id``'s curves (``runs``: the registry's): those of its kind that have
    logged metrics, when its kind draws curves at all; a train run's loss and a continual job's share no axis."""
    kinds = dict(zip(runs["id"], runs["kind"], strict=True))
    if kinds.get(run_id) not in STEP_KINDS:
        return []
    return [
        i
        for i, k, d in zip(runs["id"], runs["kind"], runs["run_dir"], strict=True)
        if i != run_id and k == kinds[run_id] and _logged(d)
    ]


def _logged(run_dir) -> bool:
    try:
        return (Path(run_dir) / METRICS_FILE).stat().st_size > 0
    except (OSError, TypeError):
        return False


def curve_points(rows: Sequence[Mapping]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run's metrics rows (:func:`~subnetviz.jobs.context.read_metrics`) as ``(points, nonfinite)``: the finite
    values of the curves' metrics (columns step, metric, value), and the steps where a row logged one of them as
    NaN or Inf (read as NaN; columns step, metric). A metric a row does not log is neither: a bigram job's last row
    logs no loss. The non-finite steps were dropped with the rest, and a diverged run's curve just ended."""
    points, bad = [], []
    for r in rows:
        for c in CURVES:
            v = r.get(c)
            if isinstance(v, float):
                if np.isfinite(v):
                    points.append((r["step"], c, v))
                else:
                    bad.append((r["step"], c))
    return (
        pd.DataFrame(points, columns=["step", "metric", "value"]),
        pd.DataFrame(bad, columns=["step", "metric"]),
    )


def curves_figure(
    runner,
    run_ids: Sequence[str],
    names: Mapping[str, str],
    smoothing: float = 0.0,
    models: Sequence[tuple[str, str]] = (),
):
    """The metric curves of ``run_ids`` (the first is the chosen run, the others overlaid); None without metrics.
    ``models``: the workspace's finetunes (label, path); a run whose model is one of them is drawn in that model's
    colour on every other page (:func:`run_colors`).
    Runs of a kind whose rows are no training steps are left out. A step whose value is NaN or Inf is marked with
    an x at the top of its panel (hover: which metric, which step), and a run whose loss or gradient norm went
    non-finite says "(diverged at step k)" in the legend (and the title, for the chosen run), and one that failed or
    was cancelled where it stopped, "(failed at step k of n)" (:func:`stopped_at`). A run with no finite
    value at all (NaN from step 1) still gets its colour, legend entry and marks: overlaid on a run that drew those
    metrics, it had none, and the chart failed (KeyError)."""
    frames, marks, cut = [], [], False
    label_of: dict[str, str] = {}  # run id -> its legend label
    model_of: dict[str, str | None] = {}  # legend label -> the run's model folder (resolved)
    for rid in run_ids:
        rec = runner.get(rid)
        if rec.kind not in STEP_KINDS:
            continue
        rows, left_out = read_metrics(Path(rec.run_dir) / METRICS_FILE)
        cut = cut or left_out
        points, bad = curve_points(rows)
        diverged = bad.loc[bad["metric"].isin(DIVERGED), "step"]
        said = [f"diverged at step {int(diverged.min()):,}"] if len(diverged) else []
        said += [stop] if (stop := stopped_at(rec, rows)) else []
        label = names[rid] + (f" ({'; '.join(said)})" if said else "")
        model_of[label] = _model_dir(rec.run_dir)
        label_of[rid] = label
        # A metric this run logged only as NaN/Inf gets an empty line (no point drawn) in its panel: the panel is
        # there though no run draws it, and the run has its line, colour and legend entry though it drew nothing.
        lost = bad.loc[~bad["metric"].isin(set(points["metric"]))].drop_duplicates("metric")
        frames += [points.assign(run=label)] if len(points) else []
        frames += [lost.assign(value=np.nan, run=label)[["step", "metric", "value", "run"]]] if len(lost) else []
        marks += [bad.assign(run=label)] if len(bad) else []
    if not frames:
        return None
    bad = pd.concat(marks, ignore_index=True) if marks else pd.DataFrame(columns=["step", "metric", "run"])
    df = pd.concat(frames, ignore_index=True)
    head = f"Run {label_of.get(run_ids[0], names[run_ids[0]])}"
    lines = title_lines(head)
    title = "<br>".join(figures.plain_label(line) for line in lines)
    if cut:  # (a page reads the log every 2 s: a long one is read from its end)
        title += "<br><sup>a long metrics log: only its last rows are drawn</sup>"
    runs = list(dict.fromkeys(df["run"]))
    colors = run_colors(runs, model_of, models)
    fig = figures.training_curves(df, title=title, smoothing=smoothing, colors=colors)
    if len(lines) > 1 and fig.layout.height:  # room above the panels for the title's extra lines (same panels)
        more = _TITLE_ROW * (len(lines) - 1)
        fig.update_layout(margin_t=(fig.layout.margin.t or 80) + more, height=fig.layout.height + more)
    # The figure picker's name for it (ui._chart_name): the title on one line. A break inside a part too long for a
    # line (a run's long name) is no " · " separator, which the picker reads every break of a title as.
    fig.update_layout(meta={"name": figures.plain_label(head)})
    _mark_nonfinite(fig, df, bad, colors)
    if len(runs) > 1:  # the legend is drawn from the first panel: a run with no line there had no entry
        shown = {t.legendgroup for t in fig.data if t.showlegend}
        for run in runs:
            line = next((t for t in fig.data if t.legendgroup == run and t.mode == "lines+markers"), None)
            if run not in shown and line is not None:
                line.showlegend = True
    # Past the palette's eight colours the runs are dashed too (a seed sweep of 20 runs was colour pairs)
    for i, run in enumerate(runs[len(figures.PALETTE) :]):
        fig.update_traces(
            line_dash=("dash", "dot", "dashdot")[i % 3], selector={"legendgroup": run, "mode": "lines+markers"}
        )
    return fig


def stopped_at(rec, rows: Sequence[Mapping] = ()) -> str | None:
    """Where a run that failed or was cancelled stopped, as its curves' legend says it: "failed at step 12 of 400",
    "cancelled at step 35 of 400" (the registry's step, else the last step its metrics ``rows`` logged; "of N" where
    its total is known); None for a run that did not stop so. Unmarked, a run killed at step 12 of 400 read as a
    finished run of 12 steps beside the full-length runs it was overlaid on."""
    if rec.status not in ("failed", "cancelled"):
        return None
    logged = [r["step"] for r in rows if type(r.get("step")) is int]
    step = rec.step if type(rec.step) is int else max(logged, default=None)
    if step is None:
        return rec.status
    total = f" of {rec.total:,}" if type(rec.total) is int and rec.total > 0 else ""
    return f"{rec.status} at step {step:,}{total}"


def title_lines(head: str, width: int = TITLE_LINE) -> list[str]:
    """``head`` (a run's curves title, as text) in lines of at most ``width`` characters, broken where its " · "
    separators are, as the Bigram titles are (figures.bigram); a part longer than a line on its own is wrapped at its
    spaces, its last line followed by the next part where that fits. Wrapped at any space, the title broke beside a
    separator ("… (fast)" / "· 2026…") and inside a phrase where a separator would do, and the figure picker, which
    reads each break as " · ", named the chart "… the base · gets wrong (A)) · …" and "… (fast) · · 2026…"."""
    lines: list[str] = []
    for part in head.split(" · "):
        pieces = (
            [part]
            if len(part) <= width
            else textwrap.wrap(part, width, break_on_hyphens=False, replace_whitespace=False) or [part]
        )
        if lines and len(lines[-1]) + 3 + len(pieces[0]) <= width:
            lines[-1] += f" · {pieces.pop(0)}"
        lines += pieces
    return lines


def _model_dir(run_dir) -> str | None:
    """A run's model folder, resolved (a zoo member's run links to the member's folder); None when it has none."""
    try:
        model = Path(run_dir) / "outputs" / "model"
        return os.path.realpath(model) if model.exists() else None
    except (OSError, TypeError, ValueError):
        return None


def run_colors(runs: Sequence[str], model_of: Mapping[str, str | None], models: Sequence[tuple[str, str]]):
    """Legend label -> colour. A run whose model is a workspace finetune gets that model's colour on the other
    pages (:func:`~subnetviz.figures.style.color_map` of the workspace's labels: grpo-s1 was green here, orange
    there, when its colour followed its place in the overlay); the other runs take, in order, colours after the
    models'."""
    labels = [lab for lab, _ in models]
    model_colors = figures.color_map(labels)
    where = {}
    for lab, path in models:
        try:
            where.setdefault(os.path.realpath(path), lab)
        except (OSError, TypeError, ValueError):
            continue
    out, spare = {}, len(labels)
    for run in runs:
        lab = where.get(model_of.get(run) or "")
        if lab is not None:
            out[run] = model_colors[lab]
        else:
            out[run] = series_color(spare)
            spare += 1
    return out


def _mark_nonfinite(fig, df: pd.DataFrame, bad: pd.DataFrame, colors: Mapping[str, str]) -> None:
    """An x per non-finite step at the top of its metric's panel, in its run's colour (panels laid out as
    :func:`~subnetviz.figures.training_curves` lays them out: in the frame's order of metrics, 3 a row)."""
    import plotly.graph_objects as go

    from subnetviz.figures.series import SHARE_METRICS

    metrics = list(dict.fromkeys(df["metric"].astype(str)))
    ncol = min(3, len(metrics))
    for (met, run), steps in bad.groupby(["metric", "run"], sort=False)["step"]:
        values = df.loc[df["metric"] == met, "value"].dropna()
        top = float(values.max()) * (100 if met in SHARE_METRICS else 1) if len(values) else 0.0
        i = metrics.index(met)
        fig.add_trace(
            go.Scatter(
                x=steps.to_numpy(),
                y=np.full(len(steps), top),
                mode="markers",
                marker={"symbol": "x", "size": 10, "color": colors[run]},
                name=f"{run}: {met} NaN/Inf",
                legendgroup=run,
                showlegend=False,
                hovertemplate=f"{run}<br>{met} NaN/Inf at step %{{x}}<extra></extra>",
            ),
            row=i // ncol + 1,
            col=i % ncol + 1,
        )


def comparison_base(full_base: str | None, sub_base: str | None, sidebar: str | None) -> tuple[str | None, str]:
    """The base a comparison's base row and its changes vs base are of, with a note ("" when none): the base both
    models were trained from (their run configs; a zoo member's is the zoo's base) when both name the same folder;
    else the sidebar's, saying so. The sidebar's was used whatever the runs' base, so two runs of another base
    were scored beside the demo zoo's base under the label "base"."""
    if full_base and sub_base and os.path.realpath(full_base) == os.path.realpath(sub_base):
        return full_base, ""
    if not sidebar:
        return None, ""
    why = "the two models name different bases" if full_base and sub_base else "one model's base is not known here"
    return sidebar, f"the sidebar's base, as {why}"


def comparison_parts(result, full: str, sub: str, base_label: str = "", base_note: str = "") -> tuple[dict, dict]:
    """A :func:`~subnetviz.analysis.runs.compare_runs` result's figure and tables; the accuracy table's base row
    named after ``base_label`` ("base (zoo base)"), its caption with ``base_note`` (why that base)."""
    figs = {
        "cmp-ulp": figures.ulp_histogram(
            result.ulp_histogram.assign(model=f"{full} vs {sub}"),
            # a short head over the measure: on one line, a half-width chart at 1024 px cut it at "two finetun"
            title="How far apart the weights are<br><sup>ULP distance between the two finetunes</sup>",
        )
    }
    tables = {"comparison": ("Share of parameters identical, exact and along the tolerance sweep", result.to_frame())}
    if result.accuracy is not None:
        acc = result.accuracy
        if base_label:
            acc = acc.assign(model=acc["model"].replace({"base": f"base ({base_label})"}))
        caption = "Held-out accuracy (greedy exact match)" + (f"; base: {base_note}" if base_note else "")
        tables["accuracy"] = (caption, acc)
    return figs, tables


def export_parts(
    runner,
    run_ids: Sequence[str],
    smoothing: float,
    compare: tuple[str, str, str, str, str | None] | None,
    models: Sequence[tuple[str, str]] = (),
) -> tuple[dict, dict]:
    """Every view's figures and tables for the export: the runs table and the chosen run's curves
    (``run_ids``: chosen first, then the overlaid ones), and the comparison ``(full label, full path,
    sub label, sub path, base)`` when two models exist (computed here: on click only), with its notes
    (:func:`comparison_notes`) as a third element."""
    runs = runner.list_runs()
    figs: dict = {}
    tables: dict = {"runs-table": ("Runs", runs_table(runs))} if len(runs) else {}
    names = run_names(runs)
    ids = [i for i in run_ids if i in names]
    if ids and (fig := curves_figure(runner, ids, names, smoothing, models)) is not None:
        figs["curves"] = fig
    if compare is not None:
        from subnetviz.demo.comparison import cached_compare_runs  # the page's own cache entry

        full, full_path, sub, sub_path, base = compare
        result = cached_compare_runs(full_path, sub_path, base)
        f, t = comparison_parts(result, full, sub)
        figs.update(f)
        tables.update(t)
        return figs, tables, comparison_notes(result)
    return figs, tables


def comparison_notes(result) -> list[str]:
    """What the comparison of two finetunes left out, as the view says it and its export writes it: tensors in
    one run only, and buffers and quantization scales (not parameters)."""
    out = []
    if result.unmatched:
        out.append(f"Not compared (present in one run only): {', '.join(result.unmatched[:10])}")
    if result.buffers:  # as on the Update sparsity page: not parameters
        shown = ", ".join(result.buffers[:6]) + (" ..." if len(result.buffers) > 6 else "")
        out.append(f"Not counted (buffers and quantization scales, not parameters): {shown}")
    return out
