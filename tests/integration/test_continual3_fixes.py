"""Continual learning (third review): forgetting counts only the rows where a task had been trained, with
ExSSNeT's code's variant (which also counts a task's accuracy just before it was trained) kept under its own
name; KKT's KNN accuracies are exact counts.

References are written out here: the max drop over rows t ≥ j (or t ≥ j-1) by plain loops, and a float64 NumPy
1-nearest-neighbour on planted features, counted as a fraction of integers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from subnetviz.supermask.data import Task
from subnetviz.supermask.methods import knn_accuracies
from subnetviz.supermask.metrics import (
    SUMMARY_METRICS,
    ContinualResult,
    RunResult,
    forgetting,
    forgetting_with_untrained,
    rederived,
)

# A method whose accuracies never move once a task is learned (every column constant from the diagonal down),
# on tasks near chance: task 2 (index 1) scores 0.60 untrained, the row before it is trained, and 0.48 after;
# task 3 scores 0.55 untrained and 0.50 after. Nothing was forgotten.
NEVER_FORGETS = np.array(
    [
        [0.90, 0.60, 0.40, 0.30],
        [0.90, 0.48, 0.55, 0.35],
        [0.90, 0.48, 0.50, 0.20],
        [0.90, 0.48, 0.50, 0.70],
    ]
)


def _drops(acc: np.ndarray, from_row) -> float:
    """mean over j < T-1 of (max over rows from_row(j) … T-2 of A[t, j]) − A[T-1, j], by plain loops."""
    t_count = acc.shape[0]
    out = []
    for j in range(t_count - 1):
        best = -np.inf
        for t in range(from_row(j), t_count - 1):
            best = max(best, float(acc[t, j]))
        out.append(best - float(acc[t_count - 1, j]))
    return sum(out) / len(out)


def test_a_method_that_never_drops_reads_no_forgetting():
    assert forgetting(NEVER_FORGETS) == 0.0  # the old definition read (0 + 0.12 + 0.05) / 3 = 0.0567
    # the authors' variant, kept under its own name: it takes in the untrained A[j-1, j]
    assert forgetting_with_untrained(NEVER_FORGETS) == pytest.approx((0.0 + 0.12 + 0.05) / 3, abs=1e-15)
    assert forgetting_with_untrained(NEVER_FORGETS) == pytest.approx(_drops(NEVER_FORGETS, lambda j: max(j - 1, 0)))


def test_forgetting_is_the_max_drop_from_the_row_a_task_was_trained_on():
    """Random matrices: forgetting reads the rows t ≥ j, the variant the rows t ≥ j-1, neither any other cell."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        t_count = int(rng.integers(2, 8))
        acc = rng.random((t_count, t_count))
        assert forgetting(acc) == pytest.approx(_drops(acc, lambda j: j), abs=1e-15)
        assert forgetting_with_untrained(acc) == pytest.approx(_drops(acc, lambda j: max(j - 1, 0)), abs=1e-15)
        spoiled = acc.copy()  # any cell above the first superdiagonal, and the superdiagonal for forgetting
        spoiled[np.triu_indices(t_count, 1)] = 1.0
        assert forgetting(spoiled) == pytest.approx(forgetting(acc), abs=1e-15)
    assert np.isnan(forgetting(NEVER_FORGETS[:1, :1])) and np.isnan(forgetting_with_untrained(NEVER_FORGETS[:1, :1]))


def _result(acc: np.ndarray) -> ContinualResult:
    runs = tuple(
        RunResult("permuted-digits", "supsup", "SupSup", False, 0.05, seed, acc, np.full(4, 0.3)) for seed in (0, 1)
    )
    return ContinualResult("permuted-digits", runs)


def test_the_runs_and_summary_carry_both_with_forgetting_the_headline():
    frames = _result(NEVER_FORGETS).to_frames()
    runs, summary = frames["runs"], frames["summary"]
    assert runs["forgetting"].tolist() == [0.0, 0.0]
    assert runs["forgetting_with_untrained"].tolist() == pytest.approx([0.17 / 3] * 2)
    assert summary["forgetting_mean"].tolist() == [0.0]
    assert summary["forgetting_with_untrained_mean"].tolist() == pytest.approx([0.17 / 3])


def test_a_saved_result_reads_with_both_forgettings_derived_again():
    """A result saved with the old forgetting (the authors' variant under the headline's name) and no second
    column reads with the headline from the trained rows and the variant under its own name."""
    frames = _result(NEVER_FORGETS).to_frames()
    old_runs = frames["runs"].drop(columns="forgetting_with_untrained").assign(forgetting=0.17 / 3)
    metrics = [m for m in SUMMARY_METRICS if m != "forgetting_with_untrained"]
    old = {**frames, "runs": old_runs, "summary": old_runs.groupby("label")[metrics].mean().reset_index()}
    again = rederived(old)
    assert again["runs"]["forgetting"].tolist() == [0.0, 0.0]
    assert again["runs"]["forgetting_with_untrained"].tolist() == pytest.approx([0.17 / 3] * 2)
    assert again["summary"]["forgetting_mean"].tolist() == [0.0]
    assert again["summary"]["forgetting_with_untrained_mean"].tolist() == pytest.approx([0.17 / 3])


class _PlantedFeatures:
    """Stands in for a MaskedMLP: under mask i, the features are planted rows (the KNN reads only these)."""

    def __init__(self, feats: list[torch.Tensor]):
        self.feats, self.task = feats, None

    def set_task(self, i: int) -> None:
        self.task = i

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feats[self.task]


def test_knn_accuracies_are_exact_counts():
    """1-NN on planted features, against a float64 NumPy 1-NN on the same seeded split: the share is the exact
    fraction of integers (a float32 mean is off by about 1e-8 for these held-out sizes)."""
    n = 1256  # 829 KNN-train rows, 427 held out: 300/427 read 0.70257610 as a float32 mean
    rng = np.random.default_rng(1)
    y = torch.from_numpy(rng.integers(0, 3, n))
    feats = []
    for _ in range(2):  # the label in one feature, and noise: about half to three quarters of 1-NN votes right
        f = rng.normal(size=(n, 4))
        f[:, 0] += 1.5 * y.numpy()
        feats.append(torch.from_numpy(f.astype(np.float32)))
    task = Task("planted", torch.zeros(n, 1), y, torch.zeros(1, 1), y[:1], 3)
    accs = knn_accuracies(_PlantedFeatures(feats), task, 2, k=1, gen=torch.Generator().manual_seed(7))

    order = torch.randperm(n, generator=torch.Generator().manual_seed(7)).numpy()
    n_tr = int(round(0.66 * n))
    tr, te = order[:n_tr], order[n_tr:]
    inexact = 0
    for acc, f in zip(accs, feats, strict=True):
        f64 = f.numpy().astype(np.float64)
        d = ((f64[te, None, :] - f64[None, tr, :]) ** 2).sum(-1)
        right = int((y.numpy()[tr][d.argmin(1)] == y.numpy()[te]).sum())
        assert acc == right / len(te)  # exactly: an integer count divided in float64
        inexact += float(np.float32(right) / np.float32(len(te))) != right / len(te)
    assert inexact  # the case can tell an exact count from a float32 mean


def test_a_frame_without_the_second_forgetting_still_summarizes():
    runs = pd.DataFrame(
        {"label": ["SupSup"] * 2, "method": "supsup", "kkt": False, "density": 0.05, "seed": [0, 1]}
    ).assign(**{m: 0.5 for m in SUMMARY_METRICS if m != "forgetting_with_untrained"})
    from subnetviz.supermask.metrics import summarize

    s = summarize(runs)
    assert s["forgetting_mean"].tolist() == [0.5] and "forgetting_with_untrained_mean" not in s
