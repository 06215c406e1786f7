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

This module plans, trains and measures the grid (one run: :mod:`subnetviz.experiments.drivers_runs`); reading a
finished grid's table (verdicts, notes, runs that trained nothing) is :mod:`subnetviz.experiments.drivers_verdicts`,
its names importable from here too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from subnetviz.errors import ConfigError, SubnetvizError
from subnetviz.experiments.drivers_runs import _write_jsonl, measure, recipe_rows, sft_sets, train_run
from subnetviz.experiments.drivers_verdicts import (
    NO_SFT_SETS,
    RECIPE_COLUMNS,
    SEED_RULE,
    grid_notes,
    read_results,
    trained_nothing,
    verdicts,
)

__all__ = [
    "NO_SFT_SETS",
    "RECIPE_COLUMNS",
    "SEED_RULE",
    "grid_notes",
    "measure",
    "read_results",
    "recipe_rows",
    "run_drivers",
    "sft_sets",
    "train_run",
    "trained_nothing",
    "verdicts",
]

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


# Seeds of one grid: each is a whole grid of its own (19 points, the quick preset's ~3 min on 2 cores), so 100 is a
# long night on a cluster; the Drivers page offers 1 to 5. Unbounded, '--seeds 99999999999' planned 19 runs a seed
# before its first line (18.8 GB in 20 s, until the machine ran out).
MAX_SEEDS = 100


def check_seeds(seeds: object, what: str = "") -> None:
    """``seeds`` (``--seeds``, a job config's ``seeds``) a whole number from 1 to :data:`MAX_SEEDS`, else a
    :class:`ConfigError` in one line whose text begins with ``what``, before anything is planned (0 or -1 ran nothing
    and exited 0; "x" failed inside the job, 1.7 became 1)."""
    whole = isinstance(seeds, int) and not isinstance(seeds, bool)
    if whole and 1 <= seeds <= MAX_SEEDS:
        return
    try:
        got = repr(seeds)
    except ValueError:  # (an int past Python's 4300 digits has no repr)
        got = "a number of thousands of digits"
    got = got if len(got) <= 40 else f"{got[:40]}…"
    if whole and seeds > MAX_SEEDS:
        raise ConfigError(f"{what}seeds must be at most {MAX_SEEDS} (each seed trains a whole grid), got {got}.")
    raise ConfigError(f"{what}seeds must be a whole number >= 1, got {got}.")


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
    train_rows = _train_rows(data / "A_train.jsonl")
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


def _train_rows(path: Path) -> list[dict]:
    """The zoo's set-A training rows (prompt, answer), read by the project's JSONL reader: a file that is not JSONL,
    a row without its fields, or no row at all is a one-line :class:`ConfigError` naming the file and the line, before
    any model loads (a malformed line was a JSONDecodeError traceback naming "line 1" of the record, an empty file an
    IndexError deep in the tokenizer). The on-policy / gold draw tokenizes the prompts as text: chat messages are
    refused here too."""
    from subnetviz.training.data import read_jsonl

    rows = read_jsonl(path, "grpo")  # (missing file, bad line, missing field, no rows: each one line)
    for i, row in enumerate(rows):
        if not isinstance(row["prompt"], str):
            raise ConfigError(
                f"{path}: row {i + 1} (blank lines not counted) has a prompt of chat messages; the drivers grid "
                "draws its on-policy and gold SFT sets from plain-text prompts."
            )
    return rows


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
    check_seeds(seeds)
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
        with _library_output():
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
            with _library_output():
                done[spec.recipe()] = recipe_rows(*jobs[spec.recipe()])
    return done


def _library_output() -> contextlib.AbstractContextManager:
    """While the grid's libraries draw data and train: what they print goes to stderr (a job's log), not stdout,
    which is a command's own output (its results table, read by scripts). DeepSpeed, which accelerate imports inside
    the trainers, logs "Setting accelerator to CPU" at import through a handler it opens on the ``sys.stdout`` of
    that moment; opened here, it writes to stderr for the rest of the process, at its own level (its warnings and
    errors still shown, on stderr). Exceptions pass through unchanged."""
    return contextlib.redirect_stdout(sys.stderr)


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
    check_seeds(config.get("seeds", 1), "drivers ")  # ("x" failed inside the job with a traceback, 1.7 became 1)
