"""The Continual page (review): the KKT chart shows one method's run (it averaged the methods into bars no run
had) with the chosen earlier mask marked; SupSup's task-inference results are shown and exported (they were
saved, never read); a one-task run says forgetting needs two tasks (an empty chart with "nan" labels)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from subnetviz.figures import continual as cf
from subnetviz.supermask.metrics import ContinualResult, RunResult
from tests.app_fixtures import APP, decode, open_page, plotly_specs

# (label, new task, earlier task) -> (KNN accuracy, chosen); the two methods chose differently for task 3
KNN = {
    ("SupSup+KKT", 1, 0): (0.77, True),
    ("SupSup+KKT", 2, 0): (0.68, False),
    ("SupSup+KKT", 2, 1): (0.69, True),
    ("ExSSNeT+KKT", 1, 0): (0.70, True),
    ("ExSSNeT+KKT", 2, 0): (0.80, True),
    ("ExSSNeT+KKT", 2, 1): (0.60, False),
}
# (samples, task) -> (one-shot share right, lowest-entropy share right), SupSup's run
INFERENCE = {(1, 0): (0.95, 0.85), (1, 1): (0.40, 0.45), (1, 2): (0.25, 0.85), (8, 0): (1.0, 1.0), (8, 1): (0.6, 1.0)}
INFERENCE[(8, 2)] = (0.0, 0.9)


def _run(method: str, label: str, kkt: bool, tasks: int = 3) -> RunResult:
    gen = torch.Generator().manual_seed(len(label))
    masks = tuple({"layer1.weight": torch.rand(4, 4, generator=gen) < 0.3} for _ in range(tasks))
    knn = tuple(
        {"task": t, "source_task": s, "knn_acc": a, "chance": 0.1, "chosen": c}
        for (lab, t, s), (a, c) in KNN.items()
        if lab == label and t < tasks
    )
    inference = ()
    if label == "SupSup" and tasks == 3:
        inference = tuple(
            {"samples": n, "task": t, "trials": 20, "correct": round(20 * a), "accuracy": a, "min_entropy_accuracy": b}
            for (n, t), (a, b) in INFERENCE.items()
        )
    acc = np.tril(np.full((tasks, tasks), 0.8)) + np.triu(np.full((tasks, tasks), 0.1), 1)
    return RunResult("permuted-digits", method, label, kkt, 0.05, 0, acc, np.full(tasks, 0.1), masks, knn, inference)


def _result(tasks: int = 3) -> ContinualResult:
    runs = [("supsup", "SupSup", False), ("supsup", "SupSup+KKT", True), ("exssnet", "ExSSNeT+KKT", True)]
    return ContinualResult("permuted-digits", tuple(_run(m, lab, k, tasks) for m, lab, k in runs))


# ---------------------------------------------------------------- figures


def test_knn_bars_draw_one_run_and_mark_the_chosen_mask():
    knn = _result().to_frames()["knn"]
    with pytest.raises(cf.FigureDataError, match="one run"):  # two methods: never a mean of both
        cf.knn_bars(knn)
    fig = cf.knn_bars(knn[knn["label"] == "ExSSNeT+KKT"])
    bars = {t.name: t for t in fig.data if t.type == "bar"}
    assert list(bars["mask of task 1"].x) == [2, 3] and np.allclose(bars["mask of task 1"].y, [70.0, 80.0])
    assert list(bars["mask of task 2"].x) == [3] and np.allclose(bars["mask of task 2"].y, [60.0])
    # ExSSNeT+KKT started task 3 from task 1's mask (SupSup+KKT from task 2's)
    assert list(bars["mask of task 1"].text) == ["chosen", "chosen"] and list(bars["mask of task 2"].text) == [""]
    assert list(bars["mask of task 1"].marker.line.width) == [3, 3] and list(
        bars["mask of task 2"].marker.line.width
    ) == [0]


def test_inference_bars_show_both_tests_per_task_and_batch_size():
    inf = _result().to_frames()["inference"]
    fig = cf.inference_bars(inf[inf["label"] == "SupSup"])
    one_shot, entropy = fig.data
    order = sorted(INFERENCE, key=lambda k: (k[1], k[0]))  # task, then samples
    assert [list(v) for v in one_shot.x] == [
        [f"task {t + 1}" for _, t in order],
        [f"{n} sample{'s' * (n > 1)}" for n, _ in order],
    ]
    assert np.allclose(one_shot.y, [100 * INFERENCE[k][0] for k in order])
    assert np.allclose(entropy.y, [100 * INFERENCE[k][1] for k in order])
    assert fig.layout.shapes[0].y0 == pytest.approx(100 / 3)  # chance 1/T
    with pytest.raises(cf.FigureDataError, match="one run"):
        cf.inference_bars(pd.concat([inf, inf]))


def test_one_task_forgetting_says_it_needs_two_tasks():
    from subnetviz.supermask.metrics import supsup_note

    frames = _result(tasks=1).to_frames()
    fig = cf.forgetting_bars(frames["summary"], 0.05)
    assert not fig.data and fig.layout.annotations[0].text == "Forgetting needs at least two tasks"
    summary = pd.DataFrame(
        {"label": ["finetune", "SupSup"], "final_acc_mean": [0.9, 0.8], "forgetting_mean": [np.nan, np.nan]}
    )
    acc = pd.DataFrame(
        [("finetune", 1.0, 0, 0, 0.9), ("SupSup", 0.05, 0, 0, 0.8)],
        columns=["label", "density", "after_task", "task", "acc"],
    )
    note = supsup_note(summary, acc, 0.05)
    assert "nan" not in note and "reaches 80.0 % on it and finetuning 90.0 %. SSNeT" in note


# ---------------------------------------------------------------- the page


@pytest.fixture
def planted_run(app_env):
    """A finished continual run whose outputs are the planted result (saved as the job saves them)."""
    from tests.app_fixtures import finished_continual_run

    with finished_continual_run("continual-planted-kkt", "planted KKT + inference", _result()) as run_dir:
        yield "continual-planted-kkt", run_dir / "outputs"


def _bars(spec) -> dict:
    return {t["name"]: t for t in spec["data"] if t["type"] == "bar"}


@pytest.mark.slow
def test_the_kkt_tab_shows_the_picked_method_s_own_values(planted_run):
    run_id, _ = planted_run
    at = open_page("continual", cl_run=run_id, cl_tab="KKT", cl_kkt="ExSSNeT+KKT")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [t.label for t in at.tabs] == ["Summary", "After each task", "Capacity", "KKT", "Task inference"]
    assert at.selectbox(key="cl_kkt").options == ["SupSup+KKT", "ExSSNeT+KKT"]
    (spec,) = plotly_specs(at)
    assert spec["layout"]["title"]["text"].startswith("ExSSNeT+KKT: KNN accuracy")
    bars = _bars(spec)
    # 80.0: ExSSNeT+KKT's own value (the averaged chart showed (80 + 68) / 2 = 74.0, which no run had)
    assert np.allclose(decode(bars["mask of task 1"]["y"]), [70.0, 80.0])
    assert bars["mask of task 1"]["text"] == ["chosen", "chosen"] and bars["mask of task 2"]["text"] == [""]
    at = open_page("continual", cl_run=run_id, cl_tab="KKT", cl_kkt="SupSup+KKT")
    bars = _bars(plotly_specs(at)[0])
    assert np.allclose(decode(bars["mask of task 1"]["y"]), [77.0, 68.0]) and bars["mask of task 2"]["text"] == [
        "chosen"
    ]


@pytest.mark.slow
def test_the_task_inference_tab_shows_the_saved_results(planted_run):
    run_id, _ = planted_run
    at = open_page("continual", cl_run=run_id, cl_tab="Task inference")
    assert not at.exception and not at.error, [e.value for e in at.error]
    (spec,) = plotly_specs(at)
    one_shot = next(t for t in spec["data"] if t["name"].startswith("one-shot"))
    order = sorted(INFERENCE, key=lambda k: (k[1], k[0]))
    assert np.allclose(decode(one_shot["y"]), [100 * INFERENCE[k][0] for k in order])
    assert any("how often" in c.value or "share of trials" in c.value for c in at.caption)
    shown = next(d.value for d in at.dataframe if "one_shot_accuracy" in d.value.columns)
    assert shown["task"].tolist() == [t + 1 for _, t in INFERENCE]  # tasks counted from 1
    assert np.allclose(shown["one_shot_accuracy"], [100 * a for a, _ in INFERENCE.values()])  # shares in %
    assert np.allclose(shown["min_entropy_accuracy"], [100 * b for _, b in INFERENCE.values()])


def test_the_export_holds_every_kkt_method_and_the_inference(planted_run, monkeypatch):
    """The closed tabs' parts of the page's HTML export: one KKT chart per method and the inference chart and
    table (the inference was never exported)."""
    from subnetviz import ui
    from subnetviz.supermask.job import load_result

    _, outputs = planted_run
    monkeypatch.setattr(ui, "run_page", lambda body, **kw: None)  # the page's module, not its run
    spec = importlib.util.spec_from_file_location("continual_view", Path(APP).parent / "views" / "continual.py")
    view = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(view)
    frames = load_result(outputs)
    figs, tables = view.closed_parts(frames, str(outputs), ["SupSup", "SupSup+KKT", "ExSSNeT+KKT"], 0.05, 0)
    assert {"cl-knn-SupSup+KKT", "cl-knn-ExSSNeT+KKT", "cl-inference-SupSup"} <= set(figs)
    ex = _bars(figs["cl-knn-ExSSNeT+KKT"].to_dict())
    assert np.allclose(decode(ex["mask of task 1"]["y"]), [70.0, 80.0])
    caption, table = tables["cl-inference"]
    assert "right mask" in caption and np.allclose(table["one_shot_accuracy"], [a for a, _ in INFERENCE.values()])
