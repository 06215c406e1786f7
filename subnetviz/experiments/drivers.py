"""What drives update sparsity: small training grids on the demo base, one factor at a time.

Each run is a finetune of the demo base made with the project's training code (the TRL trainers of
:func:`subnetviz.training.trainers.build_trainer`; RLOO through TRL's ``RLOOTrainer`` with the same
shared arguments and exact-match reward), saved from the same live weights twice, in bf16 and in
fp32, then measured with the project's analysis: update sparsity (bitwise, every tensor,
parameter-weighted: :func:`subnetviz.analysis.updates.analyze_updates`), held-out accuracy
(:func:`subnetviz.training.evaluate.evaluate_accuracy`) and forward KL(π_base ‖ π) on the held-out
prompts (:func:`subnetviz.analysis.behavior.behavior`).

Factors (one varied at a time around a default GRPO run): learning rate, steps, KL coefficient β,
gradient clipping on/off, optimizer (AdamW vs SGD), data origin (SFT on the policy's own correct
samples vs SFT on gold answers of prompts the policy gets wrong), algorithm (SFT, DPO, GRPO, RLOO, PPO),
and storage precision (every run's bf16 and fp32 saves). PPO is the ``PPOTrainer`` of TRL 0.29.1 (the
pinned 1.16 has none), run in a child process with that TRL first on its path (:mod:`subnetviz.experiments.ppo`),
on GRPO's data with the same exact-match reward; where that TRL is not installed (or another version is) the PPO
runs are left out and :func:`not_available` says why. Every run uses the same constant learning-rate schedule;
the SGD point runs at SGD's own learning rate and momentum (``DriversPreset.sgd_learning_rate``/``sgd_momentum``),
AdamW's rate being far too small a step for plain SGD.

The results table has one row per (run, storage precision), and one row (no precision, no measures) per grid
point that was not run (its algorithm unavailable, or no on-policy / gold sets to compare) or failed, its
``status`` and one-line ``note`` saying which and why: a failed run leaves the others' results, and the
verdicts skip it. ``grid_version`` (:data:`GRID_VERSION`) tells a grid of this format from an older one
(:func:`grid_notes` says what an older one measured differently).

The grid's runs fan out over a Ray cluster (``run_drivers(address=...)``; a job does it when
``SUBNETVIZ_RAY_ADDRESS`` is set): one task per run, the merged table equal to the local one.

Each seed is a whole grid of its own: training seed, and its own draw of the on-policy / gold SFT sets (which
prompts land in each set), so that the data axis' seeds differ as the others' do.

The paper's conjectures (arXiv 2505.11711 and follow-ups) and how :func:`verdicts` reads the grid:
in-distribution data drives sparsity (on-policy SFT sparser than gold SFT); KL regularisation and
gradient clipping have little effect; bf16 storage hides small updates (bf16 sparser than fp32);
smaller / fewer updates are sparser (sparsity falls as learning rate and steps grow). With several seeds each
seed is read on its own and a verdict is reproduced or not only where every seed reads the same, else undecided
(:data:`SEED_RULE`); a run that trained nothing (:func:`trained_nothing`) is left out.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from subnetviz.errors import ConfigError, SubnetvizError
from subnetviz.experiments.drivers_runs import _write_jsonl, measure, recipe_rows, sft_sets, train_run

__all__ = ["measure", "recipe_rows", "run_drivers", "sft_sets", "train_run", "trained_nothing", "verdicts"]

ProgressFn = Callable[[int, int, str], None]
ALGORITHMS = ("sft", "dpo", "grpo", "rloo", "ppo")


# 2: PPO at the constant schedule of the other runs (it decayed linearly to 0 before), DPO's row records the β that
# trained (0.1, it read 0), SGD at its own learning rate and momentum, rows for the points not run or failed.
GRID_VERSION = 2


def unavailable() -> dict[str, str]:
    """Algorithms of the grid that cannot run here -> why (PPO needs its TRL 0.29.1 folder)."""
    from subnetviz.experiments.ppo import unavailable_reason

    reason = unavailable_reason()
    return {"ppo": reason} if reason else {}


def not_available() -> dict[str, str]:
    """:func:`unavailable`, each reason as a line to print: "not run: why"."""
    return {k: f"not run: {v}" for k, v in unavailable().items()}


COLUMNS = [
    "factor",
    "value",
    "seed",
    "algorithm",
    "precision",
    "sparsity",
    "accuracy",
    "kl_forward",
    "learning_rate",
    "steps",
    "beta",
    "max_grad_norm",
    "optimizer",
    "momentum",
    "data",
    "train_seconds",
    "status",
    "note",
    "grid_version",
]


# the columns that decide a run's trained weights (RunSpec.recipe): one run, whichever factor axes it stands on
RECIPE_COLUMNS = [
    "seed",
    "algorithm",
    "learning_rate",
    "steps",
    "beta",
    "max_grad_norm",
    "optimizer",
    "momentum",
    "data",
]


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid; ``factor``/``value`` say which axis it sits on."""

    factor: str
    value: str
    seed: int = 0
    algorithm: str = "grpo"
    learning_rate: float = 1e-5
    steps: int = 16
    beta: float = 0.0
    max_grad_norm: float = 1.0
    optimizer: str = "adamw_torch"
    momentum: float | None = None  # SGD's (None: the optimizer has none of its own to set, AdamW)
    data: str = "task"  # "task" (the algorithm's zoo set A), "on_policy" or "gold" (SFT)

    def recipe(self) -> tuple:
        """Everything that decides the trained weights (runs with the same recipe are trained once)."""
        d = asdict(self)
        d.pop("factor"), d.pop("value")
        return tuple(sorted(d.items()))


@dataclass(frozen=True)
class DriversPreset:
    """The grid around a default run. ``batch_size``/``num_generations`` are GRPO/RLOO's."""

    default: RunSpec
    learning_rates: tuple[float, ...]
    steps: tuple[int, ...]
    betas: tuple[float, ...]
    algorithms: tuple[str, ...] = ALGORITHMS
    batch_size: int = 16
    num_generations: int = 4
    max_completion_length: int = 4
    data_prompts: int = 64  # prompts sampled for the on-policy / gold SFT sets
    eval_prompts: int = 100
    # The SGD point's own learning rate and momentum: those of "Do We Need Adam?" (arXiv 2602.07729; its code's
    # torch.optim.SGD(lr=5e-3, momentum=0.9)). At AdamW's 1e-5 an SGD step was ~5000x smaller than AdamW's and
    # its sparsity measured that step size, not the optimizer.
    sgd_learning_rate: float = 5e-3
    sgd_momentum: float = 0.9

    def plan(self, seeds: int = 1) -> list[RunSpec]:
        d = self.default
        specs = [replace(d, factor="learning_rate", value=f"{v:g}", learning_rate=v) for v in self.learning_rates]
        specs += [replace(d, factor="steps", value=str(v), steps=v) for v in self.steps]
        specs += [replace(d, factor="beta", value=f"{v:g}", beta=v) for v in self.betas]
        specs += [replace(d, factor="clipping", value=v, max_grad_norm=c) for v, c in (("on", 1.0), ("off", 0.0))]
        specs += [
            replace(d, factor="optimizer", value="adamw", optimizer="adamw_torch"),
            replace(
                d,
                factor="optimizer",
                value="sgd",
                optimizer="sgd",
                learning_rate=self.sgd_learning_rate,
                momentum=self.sgd_momentum,
            ),
        ]
        specs += [replace(d, factor="data", value=v, algorithm="sft", data=v) for v in ("on_policy", "gold")]
        specs += [replace(d, factor="algorithm", value=a, algorithm=a) for a in self.algorithms]
        return [replace(s, seed=k) for k in range(seeds) for s in specs]


PRESETS = {
    # ≤ 5 min on a 2-core machine with the demo base (measured: see the README's drivers section).
    "quick": DriversPreset(
        RunSpec("default", "default", learning_rate=1e-5, steps=8),
        learning_rates=(1e-6, 1e-5, 1e-4),
        steps=(4, 8, 16),
        betas=(0.0, 0.1),
    ),
    "micro": DriversPreset(
        RunSpec("default", "default", learning_rate=1e-4, steps=2),
        learning_rates=(1e-5, 1e-4),
        steps=(1, 2),
        betas=(0.0, 0.1),
        batch_size=8,
        num_generations=2,
        data_prompts=8,
        eval_prompts=8,
    ),
}


def _data_files(base: str, data: Path, work: Path, p: DriversPreset, seeds: Sequence[int]) -> dict:
    """The training file of each (algorithm, data origin); the on-policy / gold SFT sets are drawn here, once per
    seed in ``seeds`` (keyed ``("sft", origin, seed)``): each seed its own prompts, so that the data axis' seeds
    sample which prompts land in each set (one draw for every seed made its seeds one model: the micro preset's 8
    rows form one batch, the seed changing only their order). Seed 0 draws what a one-seed grid always drew."""
    train_rows = [json.loads(x) for x in (data / "A_train.jsonl").read_text().splitlines() if x.strip()]
    files = {
        ("sft", "task"): str(data / "sft_A.jsonl"),
        ("dpo", "task"): str(data / "dpo_A.jsonl"),
        ("grpo", "task"): str(data / "A_train.jsonl"),
        ("rloo", "task"): str(data / "A_train.jsonl"),
        ("ppo", "task"): str(data / "A_train.jsonl"),
    }
    for seed in seeds:
        on, gold = sft_sets(base, train_rows, p.data_prompts, seed=seed, max_new_tokens=p.max_completion_length)
        # None: the base answered every drawn prompt or none correctly, so there are no two sets (sft_sets)
        files[("sft", "on_policy", seed)] = _write_jsonl(work / f"on_policy-s{seed}.jsonl", on) if on else None
        files[("sft", "gold", seed)] = _write_jsonl(work / f"gold-s{seed}.jsonl", gold) if gold else None
    return files


def _train_file(files: dict, spec: RunSpec) -> str | None:
    """The training file of ``spec``: its seed's own on-policy / gold set, or its algorithm's task set."""
    if spec.data in ("on_policy", "gold"):
        return files[(spec.algorithm, spec.data, spec.seed)]
    return files[(spec.algorithm, spec.data)]


def _plan(p: DriversPreset, seeds: int, factors) -> tuple[list[RunSpec], list[tuple[RunSpec, str]]]:
    """The runs to train, and the grid points left out here with why (an algorithm this environment lacks)."""
    specs = p.plan(seeds)
    if factors is not None:
        unknown = set(factors) - {s.factor for s in specs}
        if unknown:
            raise ConfigError(
                f"unknown drivers factor(s) {sorted(unknown)}; expected {sorted({s.factor for s in specs})}."
            )
        specs = [s for s in specs if s.factor in set(factors)]
    missing = unavailable()
    return [s for s in specs if s.algorithm not in missing], [
        (s, missing[s.algorithm]) for s in specs if s.algorithm in missing
    ]


NO_SFT_SETS = "the base answered every training prompt, or none, correctly (no on-policy and gold sets to tell apart)"


def _on_ray(jobs: list[tuple], address: str) -> list[list[dict]]:
    """Each run's :func:`recipe_rows` as one Ray task (same torch thread count as this process)."""
    from subnetviz.jobs.fanout import ray_map

    return ray_map(recipe_rows, jobs, address=address, threads=torch.get_num_threads())


def run_drivers(
    zoo_root: str | os.PathLike | None = None,
    preset: str = "quick",
    seeds: int = 1,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    workdir: str | os.PathLike | None = None,
    *,
    factors: Sequence[str] | None = None,
    address: str | None = None,
) -> pd.DataFrame:
    """Train and measure the grid of ``preset`` on the zoo's base; one row per (run, storage precision), and one
    (status "not run" or "failed", its reason as note) per grid point left out or failed. Every run failed is a
    :class:`SubnetvizError` (nothing to publish).

    ``workdir``: where the runs' models live until measured (default: the system's temp folder). A
    job passes its run folder: under the app's read roots, which the analysis enforces there.
    ``factors``: only the runs on these axes (default: all). ``address``: a Ray cluster; each
    distinct run (train + measure against the base) is then one Ray task, the rows merged in the
    plan's order: the same table as the local grid except the ``train_seconds`` wall clocks. The
    work folder must be on a file system the workers share.
    """
    from subnetviz.analysis.behavior import read_prompts
    from subnetviz.config import zoo_dir

    if preset not in PRESETS:
        raise ConfigError(f"drivers preset {preset!r} is unknown; expected one of {sorted(PRESETS)}.")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:  # 0 or -1 ran nothing, exit 0
        raise ConfigError(f"seeds must be a whole number >= 1, got {seeds!r}.")
    p = PRESETS[preset]
    root = Path(zoo_root) if zoo_root else zoo_dir()
    base, data = str(root / "base"), root / "data"
    if not (root / "base" / "config.json").is_file():
        raise ConfigError(f"no demo zoo base in {root}: run `python -m subnetviz demo build` first.")
    specs, skipped = _plan(p, seeds, factors)
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="subnetviz-drivers-", dir=workdir))
    try:
        eval_rows = read_prompts(data / "A_eval.jsonl", p.eval_prompts)
        eval_file = _write_jsonl(work / "eval.jsonl", [{"prompt": r.text, "answer": r.answer} for r in eval_rows])
        on_data = [s for s in specs if s.data in ("on_policy", "gold")]
        files = _data_files(base, data, work, p, sorted({s.seed for s in on_data}))
        # a seed whose base answered every drawn prompt, or none: no two sets to compare for that seed
        no_sets = [s for s in on_data if _train_file(files, s) is None]
        skipped += [(s, NO_SFT_SETS) for s in no_sets]
        specs = [s for s in specs if s not in no_sets]
        firsts = {}  # recipe -> the first spec index that trains it
        for i, spec in enumerate(specs):
            firsts.setdefault(spec.recipe(), i)
        jobs = {
            r: (
                specs[i],
                base,
                _train_file(files, specs[i]),
                eval_file,
                eval_rows,
                p,
                str(work / f"run{i}"),
            )
            for r, i in firsts.items()
        }
        if address:
            if progress:
                progress(0, len(specs), f"{len(jobs)} runs on Ray at {address}")
            done = dict(zip(jobs, _on_ray(list(jobs.values()), address), strict=True))
        else:
            done = _run_locally(specs, jobs, progress, should_stop)
        rows = [{**asdict(s), **m} for s in specs if s.recipe() in done for m in done[s.recipe()]]
        rows += [{**asdict(s), "status": "not run", "note": why} for s, why in skipped]
        failed = [r for r in rows if r.get("status") == "failed"]
        if failed and not any(r.get("status") == "done" for r in rows):  # nothing measured: no grid to publish
            raise SubnetvizError(
                f"drivers: every run of the grid failed; the first, {_point(failed[0])}: {failed[0]['note']}"
            )
        if progress:
            progress(len(specs), len(specs), "done")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return pd.DataFrame(rows, columns=COLUMNS).assign(grid_version=GRID_VERSION)


def _point(row: dict) -> str:
    return f"{row['factor']}={row['value']} seed {row['seed']}"


def _run_locally(specs: list[RunSpec], jobs: dict, progress, should_stop) -> dict:
    done: dict[tuple, list[dict]] = {}
    for i, spec in enumerate(specs):
        if should_stop is not None and should_stop():
            break
        if progress:
            progress(i, len(specs), f"{spec.factor}={spec.value} seed {spec.seed}")
        if spec.recipe() not in done:
            done[spec.recipe()] = recipe_rows(*jobs[spec.recipe()])
    return done


def trained_nothing(results: pd.DataFrame) -> pd.Series:
    """Per row of ``results``: whether its run moved no weight, its fp32 save bitwise equal to the base (fp32
    sparsity exactly 1: every step's gradient was zero, as when every GRPO reward group ties and every advantage is
    0). Such a run is the base itself: its "100 %" and KL of 0 measure no training. Both rows of the run (bf16 and
    fp32) are marked; a grid with no fp32 rows marks none."""
    need = {"factor", "value", "seed", "precision", "sparsity"}
    if not need <= set(results.columns) or results.empty:
        return pd.Series(False, index=results.index)
    point = ["factor", "value", "seed"]
    still = results[(results["precision"] == "fp32") & (results["sparsity"] >= 1.0)][point].drop_duplicates()
    if still.empty:
        return pd.Series(False, index=results.index)
    keys = pd.MultiIndex.from_frame(results[point].astype(str))
    return pd.Series(keys.isin(pd.MultiIndex.from_frame(still.astype(str))), index=results.index)


# How the verdicts read a grid of several seeds (the page shows it beside each verdict).
SEED_RULE = (
    "Each seed is read on its own (its runs compared with each other, by the expected rule), and the verdict is "
    "reproduced or not only where every seed that measured all the points compared reads the same (for a "
    "'little effect' rule: within 2 points in every seed, or a larger effect in the same direction in every "
    "seed); where the seeds disagree, the difference is within the spread between seeds and the verdict is "
    "undecided. With one seed, the means are that seed's runs and a difference smaller than the spread between "
    "seeds cannot be told from one. Runs that trained nothing (fp32 save equal to the base) are left out."
)


def _agreed(readings: dict[int, object], ok) -> tuple[bool | None, str]:
    """The verdict of per-seed ``readings`` (seed -> that seed's reading): ``ok(reading)`` where every seed reads the
    same, else None; and, when the seeds disagree, what to add to the observed text."""
    if not readings:
        return None, ""
    values = list(readings.values())
    if all(v == values[0] for v in values):
        return bool(ok(values[0])), ""
    yes = sum(bool(ok(v)) for v in values)
    return None, f"; the seeds disagree (reproduced in {yes} of {len(values)})"


def verdicts(results: pd.DataFrame) -> pd.DataFrame:
    """Which conjectures the grid reproduces: conjecture, expected, observed (bf16 sparsity, the mean over seeds),
    reproduced (True, False, or None: not measured, or undecided by the seeds: :data:`SEED_RULE`). Runs that
    trained nothing (:func:`trained_nothing`) are left out of every verdict."""
    r = results[(results["precision"] == "bf16") & ~trained_nothing(results)]
    per_seed = r.groupby(["factor", "value", "seed"])["sparsity"].mean()  # (factor, value, seed) -> sparsity

    def mean(factor: str, value: str) -> float:
        sel = r[(r["factor"] == factor) & (r["value"] == value)]["sparsity"]
        return float(sel.mean()) if len(sel) else float("nan")

    def seeds_of(factor: str, values) -> dict[int, pd.Series]:
        """seed -> the values' sparsities in that seed, for the seeds that measured every one of ``values``."""
        if factor not in per_seed.index.get_level_values(0):
            return {}
        table = per_seed.loc[factor].unstack("value").reindex(columns=list(values)).dropna()
        return {int(seed): row for seed, row in table.iterrows()}

    out = []

    def add(name, expected, observed, verdict):
        ok, extra = verdict
        out.append(
            {
                "conjecture": name,
                "expected": expected,
                "observed": observed + extra,
                "reproduced": None if ok is None or (isinstance(ok, float) and np.isnan(ok)) else bool(ok),
            }
        )

    on, gold = mean("data", "on_policy"), mean("data", "gold")
    add(
        "in-distribution data drives sparsity",
        "on-policy SFT sparser than gold SFT",
        f"on-policy {on:.1%} vs gold {gold:.1%}"
        if not np.isnan(on + gold)
        else f"not measured: {_why_no_data(results)}",
        (None, "")
        if np.isnan(on + gold)
        else _agreed({k: x["on_policy"] > x["gold"] for k, x in seeds_of("data", ["on_policy", "gold"]).items()}, bool),
    )
    algos = r[r["factor"] == "algorithm"].groupby("value")["sparsity"].mean()
    rl = algos.drop("sft", errors="ignore")
    if "sft" in algos and len(rl):
        add(
            "RL updates are sparser than SFT",
            "every RL algorithm (and DPO) sparser than SFT on the same task",
            ", ".join(f"{k.upper()}: {v:.1%}" for k, v in algos.items()),
            _agreed(
                {k: bool((x[rl.index] > x["sft"]).all()) for k, x in seeds_of("algorithm", ["sft", *rl.index]).items()},
                bool,
            ),
        )
    for factor in ("beta", "clipping"):
        vals = r[r["factor"] == factor].groupby("value")["sparsity"].mean()
        if len(vals) >= 2:
            # a seed's reading: "small" (within 2 points), else the values from sparsest to densest (the direction)
            readings = {
                k: "small" if float(x.max() - x.min()) <= 0.02 else tuple(x.sort_values(ascending=False).index)
                for k, x in seeds_of(factor, vals.index).items()
            }
            add(
                f"{'KL coefficient' if factor == 'beta' else 'gradient clipping'} has little effect",
                "sparsity within 2 points across its values",
                ", ".join(f"{k}: {v:.1%}" for k, v in vals.items()),
                _agreed(readings, lambda x: x == "small"),
            )
    # one row per distinct run: the default recipe stands on up to six factor axes, and was weighted that often
    keys = [c for c in RECIPE_COLUMNS if c in results.columns]
    measured = results[results["precision"].notna() & ~trained_nothing(results)]
    runs = measured.drop_duplicates([*keys, "precision"])
    # grouped keeping NaN keys (AdamW's momentum): a pivot dropped those rows
    both = runs.groupby([*keys, "precision"], dropna=False)["sparsity"].mean().unstack("precision")
    if {"bf16", "fp32"} <= set(both.columns):
        gaps = (both["bf16"] - both["fp32"]).dropna()
        gap = float(gaps.mean())
        by_seed = gaps.groupby(level="seed").mean() if "seed" in keys else pd.Series({0: gap})
        add(
            "bf16 storage hides small updates",
            "bf16 saves sparser than fp32 saves of the same run",
            f"bf16 − fp32 sparsity {100 * gap:+.1f} percentage points on average",
            _agreed({int(k): x > 0 for k, x in by_seed.items()}, bool),
        )
    for factor in ("learning_rate", "steps"):
        sel = r[r["factor"] == factor].assign(x=lambda d: d["value"].astype(float)).groupby("x")["sparsity"].mean()
        if len(sel) >= 2:
            values = sorted(set(r.loc[r["factor"] == factor, "value"]), key=float)

            def falls(x: pd.Series) -> bool:  # never rising and falling at least once (a flat response is none)
                d = np.diff(x.to_numpy())
                return bool(np.all(d <= 0) and np.any(d < 0))

            add(
                f"larger {factor.replace('_', ' ')} → denser updates",
                "sparsity falls as it grows",
                ", ".join(f"{k:g}: {v:.1%}" for k, v in sel.items()),
                _agreed({k: falls(x) for k, x in seeds_of(factor, values).items()}, bool),
            )
    return pd.DataFrame(out, columns=["conjecture", "expected", "observed", "reproduced"])


def _why_no_data(results: pd.DataFrame) -> str:
    """Why the data axis has no on-policy vs gold measure: not in the grid, or its points' recorded reason."""
    rows = results[results["factor"] == "data"]
    if rows.empty:
        return "the data axis is not in this grid"
    if "status" in rows.columns:
        recorded = rows[rows["status"].isin(["not run", "failed"])]
        for r in recorded.itertuples():
            return f"{r.value} {r.status}: {r.note}" if r.status == "failed" else str(r.note)
    return NO_SFT_SETS


def _status(results: pd.DataFrame) -> pd.Series:
    """Each row's status; an older grid (no column) recorded only the runs that were done."""
    if "status" not in results.columns:
        return pd.Series("done", index=results.index)
    return results["status"].fillna("done")


def grid_notes(results: pd.DataFrame) -> list[tuple[str, str]]:
    """What a reader of this grid should know besides its numbers, as (level, one line), level "warning" or "info":
    its points not run or failed (and why), PPO's clipping value that has no effect (or PPO's absence), the
    learning rate each optimizer ran at, and what a grid of an older format measured differently. Read from the
    grid itself, never from the environment that shows it."""
    notes: list[tuple[str, str]] = []
    status = _status(results)
    left: dict[tuple[str, str], list[str]] = {}  # (status, reason) -> its grid points, in the grid's order
    for i in results.index[status != "done"]:
        point = f"{results.at[i, 'factor']}={results.at[i, 'value']}"
        points = left.setdefault((status[i], str(results.at[i, "note"])), [])
        if point not in points:
            points.append(point)
    for (st, why), points in left.items():
        notes.append(("warning" if st == "failed" else "info", f"{', '.join(points)} {st}: {why}"))
    still = results[trained_nothing(results) & (results["precision"] == "fp32")]
    if len(still):
        points = list(dict.fromkeys(f"{r.factor}={r.value} seed {r.seed}" for r in still.itertuples()))
        notes.append(
            (
                "warning",
                f"{', '.join(points)} trained nothing: the fp32 save equals the base bit for bit (every step's "
                "gradient was zero, as when every reward group ties), so a 100 % sparsity and a KL of 0 there measure "
                "no training; left out of the verdicts and of the bars' means (drawn as ×).",
            )
        )
    same = _same_across_seeds(results[status == "done"])
    if same:
        notes.append(
            (
                "info",
                f"{', '.join(same)}: every seed's bf16 save measured the same (sparsity, accuracy and KL equal), so "
                "its seeds are one sample, not independent ones (as in a grid trained before each seed drew its own "
                "on-policy and gold sets).",
            )
        )
    done = results[status == "done"]
    old = "grid_version" not in results.columns or results["grid_version"].isna().all()
    algos = set(done.loc[done["factor"] == "algorithm", "algorithm"])
    if old and len(results):
        parts = []
        if "ppo" in set(done["algorithm"]):
            parts.append("its PPO point used a learning rate decaying linearly to 0 (the other runs a constant one)")
        if (done.loc[done["algorithm"] == "dpo", "beta"] == 0).any():
            parts.append("its DPO row's β reads 0, but DPO trained with β 0.1")
        if parts:
            notes.append(
                ("warning", "Trained before grid format 2 (this page reads it as is): " + "; ".join(parts) + ".")
            )
    if "ppo" in set(done["algorithm"]):
        notes.append(("info", "PPO: its max_grad_norm has no effect (TRL's PPO loop does not clip gradients)."))
    elif algos and "ppo" not in set(results["algorithm"]):
        why = " (the TRL 0.29.1 it needs was not installed where it was trained)" if old else ""
        notes.append(("info", f"PPO: not in this grid{why}."))
    opt = done[(done["factor"] == "optimizer") & (done["precision"] == "bf16")]
    if len(opt):
        ran = []
        for value, g in opt.groupby("value", sort=False):
            lr = ", ".join(f"{x:g}" for x in sorted(set(g["learning_rate"])))
            mom = sorted(set(g["momentum"].dropna())) if "momentum" in g.columns else []
            ran.append(f"{value} at learning rate {lr}" + (f" with momentum {mom[0]:g}" if len(mom) == 1 else ""))
        lrs = set(opt["learning_rate"])
        caveat = (
            ": at one learning rate an SGD step is far smaller than an AdamW step, so the SGD point's sparsity "
            "measures its step size more than the optimizer"
            if len(lrs) == 1 and len(ran) > 1
            else ""
        )
        notes.append(("info", "Optimizer axis: " + "; ".join(ran) + caveat + "."))
    return notes


def _same_across_seeds(done: pd.DataFrame) -> list[str]:
    """The grid points whose two or more seeds' bf16 saves measured the same: sparsity, accuracy and KL equal in
    every seed (one on-policy / gold set pair drawn for every seed: the micro preset's bf16 saves were bit-identical
    across seeds, the seed changing only the order within one batch). Runs that trained nothing (the base, in every
    seed alike) are :func:`trained_nothing`'s to name."""
    cols = [c for c in ("sparsity", "accuracy", "kl_forward") if c in done.columns]
    done = done[(done["precision"] == "bf16") & ~trained_nothing(done)]
    if not cols or done.empty:
        return []
    points = []
    for (factor, value), g in done.groupby(["factor", "value"], sort=False):
        per_seed = g.groupby("seed")[cols].mean()
        if len(per_seed) >= 2 and per_seed.notna().all().all() and (per_seed.nunique() == 1).all():
            points.append(f"{factor}={value}")
    return points


def run_job(config: dict, ctx) -> None:
    """Job kind ``drivers``: ``results.csv`` and ``verdicts.csv`` in the run's outputs. A job that runs
    on a Ray cluster (the one its submitter chose: the worker sees it as ``SUBNETVIZ_RAY_ADDRESS``)
    fans its runs out over that cluster unless ``fanout`` is false; a local job runs them here."""
    from subnetviz.jobs.ray_backend import ray_address

    res = run_drivers(
        config.get("zoo"),
        config.get("preset", "quick"),
        int(config.get("seeds", 1)),
        progress=lambda s, t, w: ctx.progress(s, t),
        should_stop=ctx.should_stop,
        workdir=ctx.run_dir / "work",
        factors=config.get("factors"),
        address=ray_address() if config.get("fanout", True) else None,
    )
    res.to_csv(ctx.out_dir / "results.csv", index=False)
    verdicts(res).to_csv(ctx.out_dir / "verdicts.csv", index=False)
    for level, line in grid_notes(res):
        if level == "warning":
            ctx.log(f"warning: {line}")


def validate_config(config: dict) -> None:
    if config.get("preset", "quick") not in PRESETS:
        raise ConfigError(f"drivers preset {config.get('preset')!r} is unknown; expected one of {sorted(PRESETS)}.")
    seeds = config.get("seeds", 1)  # ("x" failed inside the job with a traceback, 1.7 became 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"drivers seeds must be a whole number >= 1, got {seeds!r}.")


def read_results(outputs: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A finished grid's results table (``results.csv`` in its outputs folder) and the verdicts read from it. A
    folder without it (a run's outputs deleted) is a one-line :class:`ConfigError`, not a FileNotFoundError."""
    from subnetviz.cache import read_frame
    from subnetviz.config import display_path

    path = Path(outputs) / "results.csv"
    if not path.is_file():
        raise ConfigError(
            f"{display_path(outputs)}: no results.csv; this is not a finished drivers grid's output folder."
        )
    results = read_frame(path, dtype={"value": str})  # a value "None" stays text
    return results, verdicts(results)
