"""Continual-learning metrics: accuracy matrix, forgetting, transfer, mask overlap and capacity.

Definitions (``reference/exssnet_supsup.md`` §6), with T tasks and accuracies as fractions:

- ``A[t, j]``: accuracy on task j with mask j after training task t (entries j > t are untrained
  masks, ≈ chance). ``A_rand[j]``: task j's accuracy before any training.
- final average accuracy: mean_j A[T-1, j].
- forgetting (larger = more forgotten): mean over j < T-1 of max_{j ≤ t < T-1} A[t, j] − A[T-1, j], the
  largest drop from any accuracy task j had once it was learned; not floored (a task whose accuracy grew after
  it was learned counts negative, as in ExSSNeT's code). NaN for a single task.
- forgetting_with_untrained: ExSSNeT's ``get_forgetting_metric`` with the sign flipped, whose max also runs
  over A[j-1, j], task j's untrained mask just before it is learned (max_{max(j-1, 0) ≤ t < T-1}). A task
  that stays near chance can score more untrained than trained, so a method whose accuracies never drop
  (SupSup, ExSSNeT) reads a positive value there.
- forward transfer: mean over t ≥ 1 of A[t-1, t] − A_rand[t].
- overlap of task t (t ≥ 1): common_t = |M_t ∧ U_{t-1}| with U_{t-1} = ∨_{i<t} M_i; sparse
  overlap = common_t / |M_t|, total overlap = common_t / #weights; exclusive fraction e_t = 1 − sparse
  overlap (e_0 = 1); capacity used u_t = |U_t| / #weights against 1 − (1 − d)^(t+1) for
  independent masks (t counted from 0).
- pairwise: |M_a ∧ M_b| / mean(|M_a|, |M_b|) and Jaccard |M_a ∧ M_b| / |M_a ∨ M_b|.
- owner image: for each weight of a layer, the first task whose mask holds it (−1: unused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

ALL = "all"  # the layer label of whole-model rows


@dataclass(frozen=True)
class RunResult:
    """One (method, density, seed) run over a task sequence.

    ``acc``: (T, T) accuracy matrix; ``acc_rand``: (T,); ``masks``: per task, mask name ->
    bool tensor (empty for finetune); ``knn``/``inference``: KKT and task-inference rows;
    ``weight_epochs``: the epochs of the weight phase it ran (0: SSNeT and ExSSNeT trained no weight; None: not
    recorded, as in a result built by hand).
    """

    benchmark: str
    method: str
    label: str
    kkt: bool
    density: float
    seed: int
    acc: np.ndarray
    acc_rand: np.ndarray
    masks: tuple[dict[str, torch.Tensor], ...] = ()
    knn: tuple[dict, ...] = ()
    inference: tuple[dict, ...] = ()
    wall_s: float = 0.0
    weight_epochs: int | None = None

    @property
    def num_tasks(self) -> int:
        return int(self.acc.shape[0])

    def key(self) -> dict:
        return {"label": self.label, "method": self.method, "kkt": self.kkt, "density": self.density, "seed": self.seed}


def final_accuracy(acc: np.ndarray) -> float:
    """mean_j A[T-1, j] for a (T, T) matrix."""
    return float(np.mean(acc[-1]))


def forgetting(acc: np.ndarray) -> float:
    """Forgetting: for each task j < T-1, its best accuracy from the row it was trained on to the one before the
    last, max_{j ≤ t < T-1} A[t, j], less its accuracy at the end, A[T-1, j]; the mean over j. Only rows where
    task j had been trained count, so a method whose accuracy on a task never drops once it is learned reads 0.
    Not floored: an accuracy that grew after its task (backward transfer) makes it negative, as in ExSSNeT's
    code. NaN for a single task."""
    return _mean_drop(acc, first_row=lambda j: j)


def forgetting_with_untrained(acc: np.ndarray) -> float:
    """ExSSNeT's own forgetting (``utils/metrics.py::get_forgetting_metric`` with its sign flipped), kept beside
    :func:`forgetting` to compare with the paper's numbers: its matrix also holds A[j-1, j] (the next task's
    accuracy before it is trained, for forward transfer) and zeros further above, so its max runs over
    max(j-1, 0) ≤ t < T-1 and takes in task j's untrained mask. A task that stays near chance (some
    arithmetic-text properties) can score more untrained than trained: then this reads a drop that never
    happened after the task was learned. NaN for a single task."""
    return _mean_drop(acc, first_row=lambda j: max(j - 1, 0))


def _mean_drop(acc: np.ndarray, first_row) -> float:
    """mean over j < T-1 of max_{first_row(j) ≤ t < T-1} A[t, j] − A[T-1, j] (NaN for a single task)."""
    t_count = acc.shape[0]
    if t_count < 2:
        return float("nan")
    drops = [float(np.max(acc[first_row(j) : t_count - 1, j]) - acc[-1, j]) for j in range(t_count - 1)]
    return float(np.mean(drops))


def forward_transfer(acc: np.ndarray, acc_rand: np.ndarray) -> float:
    """mean_{t≥1} A[t-1, t] − A_rand[t]; NaN for a single task."""
    t_count = acc.shape[0]
    if t_count < 2:
        return float("nan")
    return float(np.mean([acc[t - 1, t] - acc_rand[t] for t in range(1, t_count)]))


def independent_capacity(density: float, n_masks: int | np.ndarray) -> float | np.ndarray:
    """Expected share of weights used by ``n_masks`` independent random masks of ``density``."""
    return 1.0 - (1.0 - density) ** np.asarray(n_masks, dtype=float)


def capacity_frame(masks: tuple[dict[str, torch.Tensor], ...] | list, density: float) -> pd.DataFrame:
    """Per task and layer (plus ``layer == 'all'``): used, reference, exclusive, overlaps, counts."""
    if not masks:
        return pd.DataFrame(
            columns=[
                "task",
                "layer",
                "used",
                "reference",
                "exclusive",
                "sparse_overlap",
                "total_overlap",
                "mask_count",
                "numel",
            ]
        )
    names = list(masks[0])
    used = {n: torch.zeros_like(masks[0][n]) for n in names}
    rows = []
    for t, m in enumerate(masks):
        tot = {"common": 0, "count": 0, "used": 0, "numel": 0}
        for n in names:
            common = int((m[n] & used[n]).sum())
            count = int(m[n].sum())
            used[n] |= m[n]
            numel = m[n].numel()
            u = int(used[n].sum())
            rows.append(_cap_row(t, n, common, count, u, numel, density))
            for k, v in (("common", common), ("count", count), ("used", u), ("numel", numel)):
                tot[k] += v
        rows.append(_cap_row(t, ALL, tot["common"], tot["count"], tot["used"], tot["numel"], density))
    return pd.DataFrame(rows)


def _cap_row(t: int, layer: str, common: int, count: int, used: int, numel: int, density: float) -> dict:
    sparse = common / count if (t > 0 and count) else float("nan")
    return {
        "task": t,
        "layer": layer,
        "used": used / numel,
        "reference": float(independent_capacity(density, t + 1)),
        "exclusive": 1.0 if t == 0 else (1.0 - sparse if count else float("nan")),
        "sparse_overlap": sparse,
        "total_overlap": common / numel if t > 0 else float("nan"),
        "mask_count": count,
        "numel": numel,
    }


def pairwise_overlap_frame(masks: tuple[dict[str, torch.Tensor], ...] | list) -> pd.DataFrame:
    """Every ordered task pair (a, b), per layer and ``'all'``: overlap (mean-size) and Jaccard."""
    rows = []
    if not masks:
        return pd.DataFrame(columns=["layer", "task_a", "task_b", "overlap", "jaccard"])
    names = list(masks[0])
    for layer in [*names, ALL]:
        keys = names if layer == ALL else [layer]
        flat = torch.stack([torch.cat([m[k].flatten() for k in keys]) for m in masks]).to(torch.float64)  # (T, P)
        inter = (
            flat @ flat.T
        ).numpy()  # |M_a ∧ M_b|: 0/1 counts, exact in float64 (float32: below 2^24), as the ratios
        sizes = np.diag(inter)
        union = sizes[:, None] + sizes[None, :] - inter
        mean_size = (sizes[:, None] + sizes[None, :]) / 2
        for a in range(len(masks)):
            for b in range(len(masks)):
                rows.append(
                    {
                        "layer": layer,
                        "task_a": a,
                        "task_b": b,
                        "overlap": inter[a, b] / mean_size[a, b] if mean_size[a, b] else float("nan"),
                        "jaccard": inter[a, b] / union[a, b] if union[a, b] else float("nan"),
                    }
                )
    return pd.DataFrame(rows)


def owner_image(masks: tuple[dict[str, torch.Tensor], ...] | list, layer: str) -> np.ndarray:
    """Int array shaped like ``layer``'s weight: first task whose mask holds each weight, −1 if none."""
    owner = np.full(tuple(masks[0][layer].shape), -1, dtype=np.int64)
    for t in range(len(masks) - 1, -1, -1):  # later tasks first, so earlier ones overwrite
        owner[masks[t][layer].numpy()] = t
    return owner


def mean_accuracy_matrix(accuracy: pd.DataFrame, label: str, density: float) -> pd.DataFrame:
    """Seed-mean A[after_task, task] (rows after_task, columns task) from the ``accuracy`` frame."""
    sel = accuracy[(accuracy["label"] == label) & np.isclose(accuracy["density"], density)]
    return sel.pivot_table(index="after_task", columns="task", values="acc", aggfunc="mean")


@dataclass(frozen=True)
class ContinualResult:
    """All runs of one continual job; :meth:`to_frames` gives the tidy tables the app reads."""

    benchmark: str
    runs: tuple[RunResult, ...]
    config: dict = field(default_factory=dict)

    def to_frames(self) -> dict[str, pd.DataFrame]:
        """``runs``, ``summary`` (mean ± sd over seeds), ``accuracy``, ``capacity``, ``pairwise``, ``knn``, ``inference``."""
        run_rows, acc_rows, cap, pair, knn, inf = [], [], [], [], [], []
        for r in self.runs:
            key = r.key()
            cf = capacity_frame(r.masks, r.density)
            tot = cf[(cf["layer"] == ALL) & (cf["task"] > 0)] if len(cf) else cf
            run_rows.append(
                {
                    **key,
                    "tasks": r.num_tasks,
                    "final_acc": final_accuracy(r.acc),
                    "forgetting": forgetting(r.acc),
                    "forgetting_with_untrained": forgetting_with_untrained(r.acc),
                    "forward_transfer": forward_transfer(r.acc, r.acc_rand),
                    "used": float(cf[cf["layer"] == ALL]["used"].iloc[-1]) if len(cf) else float("nan"),
                    "overlap": float(tot["sparse_overlap"].mean()) if len(tot) else float("nan"),
                    "exclusive": float(tot["exclusive"].mean()) if len(tot) else float("nan"),
                    "trained": _trained_share(r.method, tot, r.weight_epochs),
                    "wall_s": r.wall_s,
                }
            )
            for t in range(r.num_tasks):
                for j in range(r.num_tasks):
                    acc_rows.append(
                        {**key, "after_task": t, "task": j, "acc": float(r.acc[t, j]), "rand_acc": float(r.acc_rand[j])}
                    )
            if len(cf):
                cap.append(cf.assign(**key))
                pair.append(pairwise_overlap_frame(r.masks).assign(**key))
            knn += [{**key, **row} for row in r.knn]
            inf += [{**key, **row} for row in r.inference]
        runs = pd.DataFrame(run_rows)
        return {
            "runs": runs,
            "summary": summarize(runs),
            "accuracy": pd.DataFrame(acc_rows),
            "capacity": pd.concat(cap, ignore_index=True) if cap else capacity_frame([], 0.0),
            "pairwise": pd.concat(pair, ignore_index=True) if pair else pairwise_overlap_frame([]),
            "knn": pd.DataFrame(
                knn,
                columns=[*self.runs[0].key(), "task", "source_task", "knn_acc", "chance", "chosen"]
                if self.runs
                else None,
            ),
            "inference": pd.DataFrame(inf),
        }


SUMMARY_METRICS = (
    "final_acc",
    "forgetting",
    "forgetting_with_untrained",
    "forward_transfer",
    "used",
    "overlap",
    "exclusive",
    "trained",
    "wall_s",
)


def _trained_share(method: str, later_tasks: pd.DataFrame, weight_epochs: int | None = None) -> float:
    """Mean share of M_t whose weights task t trains (tasks ≥ 1): ExSSNeT e_t, SSNeT 1, SupSup 0; and 0 for every
    method when the weight phase ran 0 epochs (then no weight changes: SSNeT and ExSSNeT are SupSup)."""
    if method in ("ssnet", "exssnet") and weight_epochs == 0:
        return 0.0
    if method == "exssnet":
        return float(later_tasks["exclusive"].mean()) if len(later_tasks) else float("nan")
    return {"ssnet": 1.0, "supsup": 0.0}.get(method, float("nan"))


def rederived(frames: dict[str, pd.DataFrame], weight_epochs: int | None = None) -> dict[str, pd.DataFrame]:
    """``frames`` (of :meth:`ContinualResult.to_frames`, as a job saved them) with each run's forgetting (both
    :func:`forgetting` and :func:`forgetting_with_untrained`) computed again from its accuracy matrix, and the
    summary with it: a result saved before a definition was corrected, or before the second one was kept, reads
    as a new one would (the accuracies are what was measured; the forgetting is derived). With
    ``weight_epochs`` 0 (the job's config), SSNeT's and ExSSNeT's trained share is 0: a result saved before that
    was said read 100 % for a weight phase that trained nothing."""
    runs, acc = frames.get("runs"), frames.get("accuracy")
    keys = ["label", "method", "kkt", "density", "seed"]
    if runs is None or acc is None or runs.empty or acc.empty or not set(keys) <= set(acc) | set(runs):
        return frames
    if weight_epochs == 0 and {"method", "trained"} <= set(runs):
        runs = runs.assign(trained=runs["trained"].where(~runs["method"].isin(["ssnet", "exssnet"]), 0.0))
    found = {}
    for key, g in acc.groupby(keys, sort=False):
        n = int(max(g["after_task"].max(), g["task"].max())) + 1
        matrix = np.full((n, n), np.nan)
        matrix[g["after_task"].to_numpy(int), g["task"].to_numpy(int)] = g["acc"].to_numpy(float)
        found[key] = (forgetting(matrix), forgetting_with_untrained(matrix))
    saved = zip(
        runs["forgetting"],
        runs["forgetting_with_untrained"] if "forgetting_with_untrained" in runs else np.full(len(runs), np.nan),
        strict=True,
    )
    again = [found.get(tuple(r), f) for r, f in zip(runs[keys].itertuples(index=False), saved, strict=True)]
    runs = runs.assign(
        forgetting=[a for a, _ in again],
        forgetting_with_untrained=[b for _, b in again],
    )
    return {**frames, "runs": runs, "summary": summarize(runs)}


SUMMARY_DECIMALS = 12
"""The decimals a summary's means and sds keep. The metrics are differences and means of accuracies (counts over
at most thousands of test samples) and of weight shares (counts over at most millions of weights): a true value
is 0 or above 1e-9. What lies below 1e-12 is floating-point leftover, as in the mean of two seeds whose forward
transfer was +0.0023148 and -0.0023148 (sums of k/540, each rounded its own way), which is 3.5e-18, not 0, and
read "3.469e-16 %" in the Summary table and its exports."""


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample sd over seeds of each metric, per (label, method, kkt, density), to
    :data:`SUMMARY_DECIMALS` decimals (a mean of values that cancel is 0, not a floating-point leftover)."""
    if runs.empty:
        return pd.DataFrame()
    g = runs.groupby(["label", "method", "kkt", "density"], sort=False)
    metrics = [m for m in SUMMARY_METRICS if m in runs]  # runs saved before a metric was added lack it
    out = g.agg(
        seeds=("seed", "count"),
        **{f"{m}_mean": (m, _mean) for m in metrics},
        **{f"{m}_sd": (m, lambda v: _settled(v.std())) for m in metrics},
    )
    return out.reset_index()


def _mean(values: pd.Series) -> float:
    """The mean of the values that are numbers (NaN if none), summed exactly (``math.fsum``), then settled."""
    v = values.dropna().to_numpy(dtype=np.float64)
    return _settled(math.fsum(v) / len(v)) if len(v) else float("nan")


def _settled(x: float) -> float:
    """``x`` to :data:`SUMMARY_DECIMALS` decimals, with no negative zero; NaN (no seed has the metric) stays."""
    return round(float(x), SUMMARY_DECIMALS) + 0.0 if np.isfinite(x) else float(x)


def supsup_note(table: pd.DataFrame, acc: pd.DataFrame, density: float) -> str | None:
    """Why SupSup ends below finetuning, when it does, in the run's own numbers (``table``: :func:`summarize` rows
    at ``density`` and finetuning's; ``acc``: the accuracy frame): the accuracy on each task right after learning
    it (mean over tasks and seeds), then what each forgets. None when SupSup ends level or above, or when either
    final accuracy is not a number (a damaged or edited result's NaN: the note claimed "55.0 % vs nan %")."""
    by = table.set_index("label")
    if not {"SupSup", "finetune"} <= set(by.index):
        return None
    sup, ft = by.loc["SupSup"], by.loc["finetune"]
    if not (np.isfinite(sup["final_acc_mean"]) and np.isfinite(ft["final_acc_mean"])):
        return None
    if sup["final_acc_mean"] >= ft["final_acc_mean"]:
        return None
    just = acc[
        (acc["after_task"] == acc["task"]) & (np.isclose(acc["density"], density) | (acc["label"] == "finetune"))
    ]
    learned = just.groupby("label")["acc"].mean()
    return (
        f"Note: SupSup ends below finetuning here ({100 * sup['final_acc_mean']:.1f} % vs "
        f"{100 * ft['final_acc_mean']:.1f} % final accuracy). Right after learning a task, a SupSup mask over "
        f"{100 * density:g} % of the fixed random network reaches {100 * learned['SupSup']:.1f} % on it and "
        f"finetuning {100 * learned['finetune']:.1f} %"
        + (
            f"; SupSup then forgets {100 * sup['forgetting_mean']:.1f} points, finetuning "
            f"{100 * ft['forgetting_mean']:.1f}"
            if np.isfinite(sup["forgetting_mean"]) and np.isfinite(ft["forgetting_mean"])
            else ""  # one task: nothing is learned after it, so there is no forgetting to name ("nan points")
        )
        + ". SSNeT and ExSSNeT also train the weights inside the mask."
    )
