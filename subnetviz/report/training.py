"""The Training page's figures and tables, built without Streamlit: the page draws them, and its HTML
export builds the views that are not open (run curves, the subnetwork-vs-full comparison) on click."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from subnetviz import figures

CURVES = ("loss", "reward", "accuracy", "grad_norm", "kept", "entropy")


def run_names(runs: pd.DataFrame) -> dict[str, str]:
    """Run id -> "name · id" (the kind when a run has no name), as every picker shows it. A registry read
    whose runs are all nameless gives the name column as NaN, not None: that is no name either."""
    return {
        i: f"{n if isinstance(n, str) and n else k} · {i}"
        for i, n, k in zip(runs["id"], runs["name"], runs["kind"], strict=True)
    }


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
    """The registry's runs as the page lists them (progress as a share, times as HH:MM:SS)."""
    show = runs[["id", "name", "kind", "status", "step", "total", "created", "ended", "error"]].copy()
    show.insert(
        4,
        "progress",
        pd.to_numeric(show["step"], errors="coerce").fillna(0)
        / pd.to_numeric(show["total"], errors="coerce").replace(0, float("nan")),
    )
    for col in ("created", "ended"):
        show[col] = pd.to_datetime(show[col], unit="s").dt.strftime("%H:%M:%S")
    return show


def has_curves(runner, run_id: str) -> bool:
    """Whether the run logged any metric the curves draw (a drivers or continual job logs none)."""
    m = runner.metrics(run_id)
    return bool(len(m)) and any(c in m.columns and m[c].notna().any() for c in CURVES)


def curves_figure(runner, run_ids: Sequence[str], names: Mapping[str, str], smoothing: float = 0.0):
    """The metric curves of ``run_ids`` (the first is the chosen run, the others overlaid); None without metrics."""
    frames, cut = [], False
    for rid in run_ids:
        m = runner.metrics(rid)
        cut = cut or bool(m.attrs.get("left_out"))
        shown = [c for c in CURVES if c in m.columns]
        if len(m) and shown:
            frames.append(m.melt(id_vars=["step"], value_vars=shown, var_name="metric").dropna().assign(run=names[rid]))
    if not frames:
        return None
    title = f"Run {figures.plain_label(names[run_ids[0]])}"
    if cut:  # (a page reads the log every 2 s: a long one is read from its end)
        title += "<br><sup>a long metrics log: only its last rows are drawn</sup>"
    return figures.training_curves(pd.concat(frames, ignore_index=True), title=title, smoothing=smoothing)


def comparison_parts(result, full: str, sub: str) -> tuple[dict, dict]:
    """A :func:`~subnetviz.analysis.runs.compare_runs` result's figure and tables."""
    figs = {
        "cmp-ulp": figures.ulp_histogram(
            result.ulp_histogram.assign(model=f"{full} vs {sub}"), title="ULP distance between the two finetunes"
        )
    }
    tables = {"comparison": ("Share of parameters identical, exact and along the tolerance sweep", result.to_frame())}
    if result.accuracy is not None:
        tables["accuracy"] = ("Held-out accuracy (greedy exact match)", result.accuracy)
    return figs, tables


def export_parts(
    runner,
    run_ids: Sequence[str],
    smoothing: float,
    compare: tuple[str, str, str, str, str | None] | None,
) -> tuple[dict, dict]:
    """Every view's figures and tables for the export: the runs table and the chosen run's curves
    (``run_ids``: chosen first, then the overlaid ones), and the comparison ``(full label, full path,
    sub label, sub path, base)`` when two models exist (computed here: on click only)."""
    runs = runner.list_runs()
    figs: dict = {}
    tables: dict = {"runs-table": ("Runs", runs_table(runs))} if len(runs) else {}
    names = run_names(runs)
    ids = [i for i in run_ids if i in names]
    if ids and (fig := curves_figure(runner, ids, names, smoothing)) is not None:
        figs["curves"] = fig
    if compare is not None:
        from subnetviz.demo.comparison import cached_compare_runs  # the page's own cache entry

        full, full_path, sub, sub_path, base = compare
        f, t = comparison_parts(cached_compare_runs(full_path, sub_path, base), full, sub)
        figs.update(f)
        tables.update(t)
    return figs, tables
