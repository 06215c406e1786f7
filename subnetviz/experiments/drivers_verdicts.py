"""Reading a sparsity-drivers grid (:mod:`subnetviz.experiments.drivers`): which of the paper's conjectures its
results table reproduces (:func:`verdicts`, by :data:`SEED_RULE` where there are several seeds), what a reader
should know besides its numbers (:func:`grid_notes`), which runs trained nothing (:func:`trained_nothing`), and a
finished grid's table read back from its outputs folder (:func:`read_results`).

Only the results table is read here (pandas and NumPy, no torch, no trainers): the page, its figures and the
command read a grid without importing what trained it. The grid imports this module, never the other way.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from subnetviz.errors import ConfigError

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


NO_SFT_SETS = "the base answered every training prompt, or none, correctly (no on-policy and gold sets to tell apart)"


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
    """Which conjectures the grid reproduces: conjecture, expected, observed (bf16 sparsity, the mean over the seeds
    that decide the verdict, the seeds left out and why, and the values no seed measured and why), reproduced (True,
    False, or None: not measured, or undecided by the seeds: :data:`SEED_RULE`), and verdict, the same in words
    (:data:`VERDICT_WORDS`: "not measured" and "undecided" told apart). Runs that trained nothing
    (:func:`trained_nothing`) are left out of every verdict; a conjecture whose axis kept fewer than two measured
    values (no SFT or no RL point for the algorithms) is listed as not measured, with why. An axis not in the grid
    at all (a grid of chosen factors) has no row, except the data axis' ("not in this grid")."""
    still = trained_nothing(results)
    r = results[(results["precision"] == "bf16") & ~still]
    measured = r[r["sparsity"].notna()]
    per_seed = r.groupby(["factor", "value", "seed"])["sparsity"].mean()  # (factor, value, seed) -> sparsity

    def values_of(factor: str) -> tuple[list, list]:
        """The factor's values in the grid (every point recorded: run, failed or not run) and those some seed
        measured: the verdict compares these, and names the others (before, a value no seed measured was neither
        compared nor said, and an axis left with one value vanished from the verdicts)."""
        every = list(dict.fromkeys(results.loc[results["factor"] == factor, "value"].dropna()))
        have = set(measured.loc[measured["factor"] == factor, "value"])
        return every, [v for v in every if v in have]

    def seeds_of(factor: str, values) -> tuple[dict[int, pd.Series], pd.Series, str]:
        """For the seeds that measured every one of ``values``: seed -> its values' sparsities, and the mean over
        those seeds per value (the observed text's numbers: the seeds the verdict reads, no other: a seed that
        lacked one value entered the others' means, and a falling sequence read as rising beside "reproduced");
        then what to add to the observed text of the factor's other seeds (the point each lacks and why). Where no
        seed measured every value, the means are over the seeds that measured each one (the verdict: undecided)."""
        values = list(values)
        if factor in per_seed.index.get_level_values(0):
            table = per_seed.loc[factor].unstack("value").reindex(columns=values)
        else:
            table = pd.DataFrame(columns=values, dtype=float)
        full = table.dropna()
        seeds = sorted({int(k) for k in results.loc[results["factor"] == factor, "seed"].dropna()})
        left = []
        for k in (k for k in seeds if k not in full.index):
            row = table.loc[k] if k in table.index else pd.Series(np.nan, index=values)
            lacks = ", ".join(
                f"{factor}={v} {_why_missing(results, still, factor, v, k)}" for v in values if np.isnan(row[v])
            )
            left.append(f"seed {k} left out: {lacks}" if len(full) else f"seed {k}: {lacks}")
        said = "".join(f"; {x}" for x in left) if len(full) else f"; no seed measured every value ({'; '.join(left)})"
        means = (full if len(full) else table).mean()
        return {int(k): x for k, x in full.iterrows()}, means, said if left else ""

    out = []

    def add(name, expected, observed, verdict, *, seen: bool = True):
        ok, extra = verdict
        ok = None if ok is None or (isinstance(ok, float) and np.isnan(ok)) else bool(ok)
        word = VERDICT_WORDS[ok] if seen else NOT_MEASURED
        out.append(
            {"conjecture": name, "expected": expected, "observed": observed + extra, "reproduced": ok, "verdict": word}
        )

    def not_measured(name: str, expected: str, factor: str, gone: list, why: str) -> None:
        lost = _missing(results, still, factor, gone)
        add(name, expected, f"not measured: {lost}{why}", (None, ""), seen=False)

    data, means, left = seeds_of("data", ["on_policy", "gold"])
    on, gold = means["on_policy"], means["gold"]
    add(
        "in-distribution data drives sparsity",
        "on-policy SFT sparser than gold SFT",
        f"on-policy {on:.1%} vs gold {gold:.1%}{left}"
        if not np.isnan(on + gold)
        else f"not measured: {_why_no_data(results)}",
        (None, "") if np.isnan(on + gold) else _agreed({k: x["on_policy"] > x["gold"] for k, x in data.items()}, bool),
        seen=not np.isnan(on + gold),
    )
    every, algorithms = values_of("algorithm")
    algorithms = sorted(algorithms)  # measured in some seed: a seed lacking one is left out
    rl = [a for a in algorithms if a != "sft"]
    name, expected = "RL updates are sparser than SFT", "every RL algorithm (and DPO) sparser than SFT on the same task"
    gone = [v for v in every if v not in algorithms]
    if every and not ("sft" in algorithms and rl):
        lacking = "SFT" if "sft" not in algorithms else "RL"
        not_measured(name, expected, "algorithm", gone, f", so no {lacking} point to compare")
    elif every:
        seeds, algos, left = seeds_of("algorithm", algorithms)
        add(
            name,
            expected,
            ", ".join(f"{k.upper()}: {v:.1%}" for k, v in algos.items())
            + left
            + _left_out(results, still, "algorithm", gone),
            _agreed({k: bool((x[rl] > x["sft"]).all()) for k, x in seeds.items()}, bool),
        )
    for factor in ("beta", "clipping"):
        every, values = values_of(factor)
        values, gone = sorted(values), [v for v in every if v not in values]
        name = f"{'KL coefficient' if factor == 'beta' else 'gradient clipping'} has little effect"
        expected = "sparsity within 2 points across its values"
        if every and len(values) < 2:
            not_measured(name, expected, factor, gone, ", so fewer than two of its values to compare")
        elif every:
            seeds, vals, left = seeds_of(factor, values)
            # a seed's reading: "small" (within 2 points), else the values from sparsest to densest (the direction)
            readings = {
                k: "small" if within_points(x.max() - x.min(), 2) else tuple(x.sort_values(ascending=False).index)
                for k, x in seeds.items()
            }
            add(
                name,
                expected,
                ", ".join(f"{k}: {v:.1%}" for k, v in vals.items()) + left + _left_out(results, still, factor, gone),
                _agreed(readings, lambda x: x == "small"),
            )
    # one row per distinct run: the default recipe stands on up to six factor axes, and was weighted that often
    keys = [c for c in RECIPE_COLUMNS if c in results.columns]
    saved = results[results["precision"].notna() & ~still]
    runs = saved.drop_duplicates([*keys, "precision"])
    # grouped keeping NaN keys (AdamW's momentum): a pivot dropped those rows
    both = runs.groupby([*keys, "precision"], dropna=False)["sparsity"].mean().unstack("precision")
    if {"bf16", "fp32"} <= set(results["precision"].dropna()):  # (a grid of one precision has no such row)
        gaps = (
            (both["bf16"] - both["fp32"]).dropna() if {"bf16", "fp32"} <= set(both.columns) else pd.Series(dtype=float)
        )
        name, expected = "bf16 storage hides small updates", "bf16 saves sparser than fp32 saves of the same run"
        if gaps.empty:  # (every run trained nothing, or lacks one of its two saves' sparsity)
            add(name, expected, "not measured: no run that trained has both saves' sparsity", (None, ""), seen=False)
        else:
            gap = float(gaps.mean())
            by_seed = gaps.groupby(level="seed").mean() if "seed" in keys else pd.Series({0: gap})
            add(
                name,
                expected,
                f"bf16 − fp32 sparsity {100 * gap:+.1f} percentage points on average",
                _agreed({int(k): x > 0 for k, x in by_seed.items()}, bool),
            )
    for factor in ("learning_rate", "steps"):
        every, values = values_of(factor)
        values, gone = sorted(values, key=float), sorted((v for v in every if v not in values), key=float)
        name, expected = f"larger {factor.replace('_', ' ')} → denser updates", "sparsity falls as it grows"
        if every and len(values) < 2:
            not_measured(name, expected, factor, gone, ", so fewer than two of its values to compare")
        elif every:
            seeds, sel, left = seeds_of(factor, values)

            def falls(x: pd.Series) -> bool:  # never rising and falling at least once (a flat response is none)
                d = np.diff(x.to_numpy())
                return bool(np.all(d <= 0) and np.any(d < 0))

            add(
                name,
                expected,
                ", ".join(f"{float(k):g}: {v:.1%}" for k, v in sel.items())
                + left
                + _left_out(results, still, factor, gone),
                _agreed({k: falls(x) for k, x in seeds.items()}, bool),
            )
    return pd.DataFrame(out, columns=["conjecture", "expected", "observed", "reproduced", "verdict"])


def within_points(difference: float, points: float) -> bool:
    """Whether a difference of two shares (fractions: 0.02 is 2 points) is at most ``points`` percentage points,
    compared in points rounded to 1e-9, so that float error does not decide a tie: 0.97 − 0.95 is
    0.020000000000000018 in binary floating point, and an exact 2-point difference read as beyond 2 points."""
    return round(100 * float(difference), 9) <= points


NOT_MEASURED = "not measured"
# the verdict in words, as the page says it beside each conjecture and its table and export show it (None alone
# is undecided: a conjecture not measured says so, "—" was both)
VERDICT_WORDS = {True: "reproduced", False: "not reproduced", None: "undecided"}


def _missing(results: pd.DataFrame, still: pd.Series, factor: str, values) -> str:
    """``values`` of ``factor`` (none of them measured in any seed), each with why: "beta=0.1 failed", "… failed in
    every seed", or each seed's reason where they differ ("failed in seed 0, trained nothing in seed 1")."""
    seeds = sorted({int(k) for k in results.loc[results["factor"] == factor, "seed"].dropna()})
    parts = []
    for v in values:
        why = {k: _why_missing(results, still, factor, v, k) for k in seeds}
        reasons = list(dict.fromkeys(why.values()))
        if len(reasons) == 1:
            parts.append(f"{factor}={v} {reasons[0]}" + (" in every seed" if len(seeds) > 1 else ""))
        else:
            each = ", ".join(f"{x} in seed {', '.join(str(k) for k in why if why[k] == x)}" for x in reasons)
            parts.append(f"{factor}={v} {each}")
    return "; ".join(parts)


def _left_out(results: pd.DataFrame, still: pd.Series, factor: str, values) -> str:
    """What to add to an observed text for ``factor``'s ``values`` that no seed measured: "; left out: …" and why
    ("" for none)."""
    return f"; left out: {_missing(results, still, factor, values)}" if len(values) else ""


def _why_missing(results: pd.DataFrame, still: pd.Series, factor: str, value: str, seed: int) -> str:
    """Why one seed has no bf16 sparsity at one grid point: its recorded status (failed, not run), trained nothing
    (:func:`trained_nothing`, ``still``), or not measured (no row)."""
    at = (results["factor"] == factor) & (results["value"].astype(str) == str(value)) & (results["seed"] == seed)
    status = set(_status(results[at]))
    for st in ("failed", "not run"):
        if st in status:
            return st
    return "trained nothing" if still[at].any() else "not measured"


def _why_no_data(results: pd.DataFrame) -> str:
    """Why the data axis has no on-policy vs gold measure: not in the grid, its points' recorded reason, or its runs
    trained nothing (left out of the verdicts)."""
    rows = results[results["factor"] == "data"]
    if rows.empty:
        return "the data axis is not in this grid"
    if "status" in rows.columns:
        recorded = rows[rows["status"].isin(["not run", "failed"])]
        for r in recorded.itertuples():
            return f"{r.value} {r.status}: {r.note}" if r.status == "failed" else str(r.note)
    still = results[trained_nothing(results) & (results["factor"] == "data") & (results["precision"] == "fp32")]
    if len(still):
        points = ", ".join(dict.fromkeys(f"data={r.value} seed {r.seed}" for r in still.itertuples()))
        return f"{points} trained nothing (its fp32 save equals the base): left out"
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
                "no training; left out of the verdicts and of the bars' means (drawn as × in the charts).",
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
