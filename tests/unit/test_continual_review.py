"""Continual learning (review): arithmetic-text never tests on a training prompt; near-equal densities are refused;
more than 8 tasks get distinct colours; a negative forgetting is drawn inside its axis; a weight phase of 0 epochs
trains no weight, and the summary says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from subnetviz.errors import ConfigError
from subnetviz.figures import continual as cf
from subnetviz.supermask import data, job
from subnetviz.supermask.config import ContinualConfig
from subnetviz.supermask.methods import MethodConfig, run_method
from subnetviz.supermask.metrics import ContinualResult

REPO = Path(__file__).resolve().parents[2]

# The properties written again by hand (an independent reference for the labels).
BY_HAND = {
    "units carry": lambda a, b: (a % 10) + (b % 10) > 9,
    "a > b": lambda a, b: a > b,
    "sum >= 100": lambda a, b: a + b > 99,
    "b >= 50": lambda a, b: b > 49,
    "sum ends in 5-9": lambda a, b: int(str(a + b)[-1]) in (5, 6, 7, 8, 9),
    "a is even": lambda a, b: a % 2 == 0,
    "sum is odd": lambda a, b: (a + b) % 2 == 1,
    "sum divisible by 3": lambda a, b: (a + b) % 3 == 0,
}


# ---------------------------------------------------------------- 1. arithmetic-text: no train/test leak


@pytest.mark.parametrize("name", list(BY_HAND))
def test_each_task_draws_distinct_prompts_balanced_and_labelled_by_the_property(name):
    """300 distinct prompts of each label (they were drawn with replacement: 16-27 repeats out of 600), the same
    for the same seed."""
    for seed in (0, 1, 2):
        ab, y = data._sample_prompts(data.TEXT_PROPERTIES[name], np.random.default_rng(seed))
        assert len(ab) == 600 and len(set(ab)) == 600
        assert all(10 <= a <= 99 and 10 <= b <= 99 for a, b in ab)
        assert np.array_equal(y, [int(BY_HAND[name](a, b)) for a, b in ab])
        assert int(y.sum()) == 300
        again = data._sample_prompts(data.TEXT_PROPERTIES[name], np.random.default_rng(seed))
        assert again[0] == ab and np.array_equal(again[1], y)
    other = data._sample_prompts(data.TEXT_PROPERTIES[name], np.random.default_rng(7))[0]
    assert other != ab


def test_no_test_prompt_of_a_task_is_one_of_its_training_prompts(monkeypatch):
    """The benchmark as the job builds it, with an encoder whose features are the operands: a test row equal to a
    train row of its task is the same prompt (7-16 of each task's 180 were)."""

    def operands(base, prompts):
        return np.array([[float(x) for x in p.rstrip("=").split("+")] for p in prompts], dtype=np.float32)

    monkeypatch.setattr(data, "encode_prompts", operands)
    for seed in (0, 1, 2):
        bench = data.arithmetic_text(5, seed=seed, base="unused")
        for task in bench.tasks:
            train = {tuple(r) for r in task.x_train.numpy().tolist()}
            test = [tuple(r) for r in task.x_test.numpy().tolist()]
            assert len(train) == 420 and len(set(test)) == 180  # no prompt twice
            assert not train & set(test), task.name
            assert int(task.y_train.sum()) == 210 and int(task.y_test.sum()) == 90  # balanced, stratified
    first, again = (data.arithmetic_text(3, seed=4, base="unused") for _ in range(2))
    assert all(
        torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
        for a, b in zip(first.tasks, again.tasks, strict=True)
    )


def test_continual_results_are_keyed_by_the_code_that_builds_the_data(tmp_path):
    """A new data draw needs a new run: the cache key's code fingerprint covers the benchmark's module."""
    from subnetviz.version import code_fingerprint

    trees = [tmp_path / name / "subnetviz" for name in ("before", "after")]  # (the fingerprint is cached per root)
    for tree in trees:
        shutil.copytree(REPO / "subnetviz", tree, ignore=shutil.ignore_patterns("__pycache__"))
    with open(trees[1] / "supermask" / "data.py", "a") as fh:
        fh.write("\n# another draw of the prompts\n")
    before, after = (code_fingerprint(job.CONTINUAL_CODE, root=str(tree)) for tree in trees)
    assert before != after


def _result_json(folder: Path, benchmark: str, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps({"benchmark": benchmark, "config": config, "summary": []}))
    return folder


def test_an_arithmetic_text_result_on_the_old_data_is_said_so(tmp_path):
    old = _result_json(tmp_path / "old", "arithmetic-text", {"benchmark": "arithmetic-text", "hash": "x"})
    assert "test prompts were also training prompts" in job.data_note(old)
    new = _result_json(tmp_path / "new", "arithmetic-text", {"hash": "x", "data_version": 2})
    assert job.data_note(new) is None
    assert job.data_note(_result_json(tmp_path / "perm", "permuted-digits", {"hash": "x"})) is None
    assert job.data_note(tmp_path / "missing") is None


def test_a_job_records_the_data_version_it_ran_on(tmp_path):
    from subnetviz.jobs.context import JobContext

    ctx = JobContext.for_dir(tmp_path / "run")
    job.run_job({"methods": ["supsup"], "tasks": 1, "density": 0.5, "epochs": {"mask": 1}, "seeds": [11]}, ctx)
    assert json.loads((ctx.out_dir / "result.json").read_text())["config"]["data_version"] == 2


# ---------------------------------------------------------------- 2. near-equal densities


@pytest.mark.parametrize(
    ("densities", "named", "why"),
    [
        ([0.05, 0.0500001], "0.05 and 0.0500001", "the page reads them as one density"),  # np.isclose: 2 SupSup rows
        ([0.1234568, 0.1234567], "0.1234567 and 0.1234568", "their masks share one folder, d0.123457"),  # d{:g}
        ([0.3, 0.1, 0.1000009], "0.1 and 0.1000009", "the page reads them as one density"),
    ],
)
def test_densities_that_cannot_be_told_apart_are_refused_in_one_line(densities, named, why):
    with pytest.raises(ConfigError) as e:
        ContinualConfig.from_dict({"density": densities})
    msg = str(e.value)
    assert "\n" not in msg and f"densities {named} are too close to tell apart ({why})" in msg
    with pytest.raises(ConfigError, match="too close"):
        job.validate_config({"density": densities})


def test_densities_far_enough_apart_are_kept():
    assert ContinualConfig(density=[0.02, 0.05, 0.1, 0.3, 1.0]).density == (0.02, 0.05, 0.1, 0.3, 1.0)
    assert ContinualConfig(density=[0.1, 0.1001]).density == (0.1, 0.1001)


# ---------------------------------------------------------------- 3. colours of many tasks


def _band_color(fig, value: float) -> str:
    """The colour the heatmap gives ``value``: its place between zmin and zmax in the (stepwise) colour scale."""
    h = fig.data[0]
    frac = (value - h.zmin) / (h.zmax - h.zmin)
    stops = [(float(v), c) for v, c in h.colorscale]
    return [c for v, c in stops if v <= frac][-1]


@pytest.mark.parametrize("tasks", [3, 8, 10, 20, 100])
def test_every_task_of_the_owner_image_has_its_own_colour(tasks):
    """Task 9 was drawn in task 1's colour and task 10 in task 2's (8 colours cycled)."""
    owner = np.arange(-1, tasks).reshape(1, -1)  # one weight unused, then one weight of each task
    fig = cf.owner_image(owner)
    colors = [_band_color(fig, z) for z in np.asarray(fig.data[0].z, float).ravel()]
    assert colors[0] == "#DDDDDD"  # unused: grey
    assert len(set(colors[1:])) == tasks and "#DDDDDD" not in colors[1:]
    if tasks <= 8:  # up to 8 tasks: the Okabe-Ito colours, as before
        okabe_ito = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442"]
        assert colors[1:] == okabe_ito[:tasks]
    bar = fig.data[0].colorbar
    ticks, text = list(bar.tickvals), list(bar.ticktext)
    # each label names the task whose colour sits at its tick: "unused" at 0, then task numbers from 1
    assert text[0] == "unused" and ticks[0] == 0 and text[1:] == [str(v) for v in ticks[1:]]
    if tasks <= 15:
        assert ticks == list(range(tasks + 1))
    else:  # 101 labels overlapped: a round step, the last task labelled
        assert ticks == {20: [0, *range(2, 21, 2)], 100: [0, *range(10, 101, 10)]}[tasks]


def test_kkt_bars_of_more_than_eight_earlier_masks_have_distinct_colours():
    rows = [(t, s, 0.5 + 0.01 * s) for t in range(1, 11) for s in range(t)]
    knn = pd.DataFrame(rows, columns=["task", "source_task", "knn_acc"]).assign(chance=0.5)
    bars = [t for t in cf.knn_bars(knn).data if t.type == "bar"]
    assert [b.name for b in bars] == [f"mask of task {s + 1}" for s in range(10)]
    assert len({b.marker.color for b in bars}) == 10


# ---------------------------------------------------------------- 4. negative forgetting


def _summary(forgetting: dict[str, tuple[float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [(lab, 1.0 if lab == "finetune" else 0.05, m, s) for lab, (m, s) in forgetting.items()],
        columns=["label", "density", "forgetting_mean", "forgetting_sd"],
    )


def test_a_negative_forgetting_is_drawn_inside_the_axis_with_a_zero_line():
    """SSNeT at -3 ± 1 points (its tasks' accuracy grew later): its bar lay wholly below the axis [0, 23.5]."""
    s = _summary({"finetune": (0.20, 0.01), "SupSup": (0.0, 0.0), "SSNeT": (-0.03, 0.01), "ExSSNeT": (0.0, 0.0)})
    fig = cf.forgetting_bars(s, 0.05)
    bars, values = fig.data
    assert list(bars.x) == ["finetune", "SupSup", "SSNeT", "ExSSNeT"] and np.allclose(bars.y, [20, 0, -3, 0])
    low, high = fig.layout.yaxis.range
    assert low < -4.0 and high > 21.0  # the bar and its error bar (-3 - 1), finetune's (20 + 1)
    assert fig.layout.yaxis.zeroline is True
    label = dict(zip(values.x, zip(values.y, values.text, values.textposition, strict=True), strict=True))
    assert label["SSNeT"][1] == "-3.0" and label["SSNeT"][2] == "bottom center" and low < label["SSNeT"][0] < -4.0
    assert label["finetune"][0] > 21.0 and label["finetune"][2] == "top center"


def test_forgetting_of_zero_or_more_keeps_its_axis_from_zero():
    fig = cf.forgetting_bars(_summary({"finetune": (0.5, 0.1), "SupSup": (0.0, 0.0)}), 0.05)
    assert fig.layout.yaxis.range[0] == 0


# ---------------------------------------------------------------- 5. trained share with no weight phase


def _snapshot(model) -> list[torch.Tensor]:
    return [p.detach().clone() for n, p in model.named_parameters() if n.endswith("weight")]


@pytest.fixture(scope="module")
def perm2():
    return data.make_benchmark("permuted-digits", 2, seed=0)


def _runs(bench, weight_epochs: int) -> tuple[dict, dict]:
    from subnetviz.supermask.layers import MaskedMLP

    runs, changed = [], {}
    for method in ("supsup", "ssnet", "exssnet"):
        mc = MethodConfig(method, density=0.1, mask_epochs=1, weight_epochs=weight_epochs)
        model = MaskedMLP((64, 128, 128, 10), 2, 0.1, seed=0)
        w0 = _snapshot(model)
        runs.append(run_method(bench, mc, model=model))
        changed[runs[-1].label] = sum(int((a != b).sum()) for a, b in zip(w0, _snapshot(model), strict=True))
    summary = ContinualResult(bench.name, tuple(runs)).to_frames()["summary"].set_index("label")
    return summary["trained_mean"].to_dict(), changed, runs


def test_no_weight_phase_reads_as_no_weight_trained(perm2):
    """weight epochs 0: no weight changes, yet SSNeT read 100 % trained and ExSSNeT e_t."""
    trained, changed, _ = _runs(perm2, 0)
    assert changed == {"SupSup": 0, "SSNeT": 0, "ExSSNeT": 0}
    assert trained == {"SupSup": 0.0, "SSNeT": 0.0, "ExSSNeT": 0.0}


def test_a_weight_phase_reads_as_its_editable_share(perm2):
    trained, changed, runs = _runs(perm2, 1)
    assert changed["SupSup"] == 0 and changed["SSNeT"] > 0 and changed["ExSSNeT"] > 0
    ex = runs[2].masks
    # task 2's mask less what task 1's already holds, as a share of task 2's mask (by hand, over all layers)
    fresh = sum(int((ex[1][n] & ~ex[0][n]).sum()) for n in ex[1]) / sum(int(ex[1][n].sum()) for n in ex[1])
    assert (
        trained["SupSup"] == 0.0 and trained["SSNeT"] == 1.0 and trained["ExSSNeT"] == pytest.approx(fresh, abs=1e-12)
    )


def test_a_result_saved_before_the_fix_reads_no_weight_trained_with_no_weight_phase(perm2, tmp_path):
    """A finished job saved before the trained share knew the weight phase's epochs kept SSNeT at 100 %; read back,
    its config's 0 weight epochs make SSNeT's and ExSSNeT's share 0 (SupSup's stays 0)."""
    from dataclasses import replace

    from subnetviz.supermask.job import load_result, save_result

    _, _, runs = _runs(perm2, 0)
    old = tuple(replace(r, weight_epochs=None) for r in runs)  # as the old code recorded them
    for weight, want in ((0, {"SupSup": 0.0, "SSNeT": 0.0}), (None, {"SupSup": 0.0, "SSNeT": 1.0})):
        folder = tmp_path / f"w{weight}"
        cfg = {"epochs": {"mask": 1, "weight": weight, "finetune": None}}
        save_result(ContinualResult(perm2.name, old, cfg), folder)
        summary = load_result(folder)["summary"].set_index("label")["trained_mean"].to_dict()
        assert {k: summary[k] for k in want} == want
        assert (summary["ExSSNeT"] == 0.0) is (weight == 0)
