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
samples vs SFT on gold answers of prompts the policy gets wrong), algorithm (SFT, DPO, GRPO, RLOO),
and storage precision (every run's bf16 and fp32 saves). PPO: TRL 1.16 ships no ``PPOTrainer``
(neither in ``trl`` nor in ``trl.experimental``), so it is reported as not run.

The paper's conjectures (arXiv 2505.11711 and follow-ups) and how :func:`verdicts` reads the grid:
in-distribution data drives sparsity (on-policy SFT sparser than gold SFT); KL regularisation and
gradient clipping have little effect; bf16 storage hides small updates (bf16 sparser than fp32);
smaller / fewer updates are sparser (sparsity falls as learning rate and steps grow).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from subnetviz.errors import ConfigError

ProgressFn = Callable[[int, int, str], None]
ALGORITHMS = ("sft", "dpo", "grpo", "rloo")
NOT_AVAILABLE = {"ppo": "TRL 1.16 has no PPOTrainer (not in trl nor trl.experimental); not run."}
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
    "data",
    "train_seconds",
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

    def plan(self, seeds: int = 1) -> list[RunSpec]:
        d = self.default
        specs = [replace(d, factor="learning_rate", value=f"{v:g}", learning_rate=v) for v in self.learning_rates]
        specs += [replace(d, factor="steps", value=str(v), steps=v) for v in self.steps]
        specs += [replace(d, factor="beta", value=f"{v:g}", beta=v) for v in self.betas]
        specs += [replace(d, factor="clipping", value=v, max_grad_norm=c) for v, c in (("on", 1.0), ("off", 0.0))]
        specs += [
            replace(d, factor="optimizer", value=v, optimizer=o) for v, o in (("adamw", "adamw_torch"), ("sgd", "sgd"))
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


# --- data ---------------------------------------------------------------------------------------------
def sft_sets(base: str, train_rows: list[dict], n: int, seed: int, max_new_tokens: int = 4, samples: int = 4):
    """(on_policy, gold) SFT rows: the base's own correct samples, and gold answers of prompts it gets
    wrong in every sample (off its distribution), as many of each (at most ``n``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rng = np.random.default_rng(seed)
    rows = [train_rows[i] for i in rng.permutation(len(train_rows))[: 4 * n]]
    tok = AutoTokenizer.from_pretrained(base)
    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    torch.manual_seed(seed)
    enc = tok([r["prompt"] for r in rows], return_tensors="pt", padding=True)
    with torch.no_grad():
        gen = model.generate(
            **enc,
            do_sample=True,
            num_return_sequences=samples,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=tok.eos_token_id,
            top_k=None,
            top_p=None,
            temperature=1.0,
        )
    texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    on, wrong = [], []
    for i, r in enumerate(rows):
        outs = [t.strip() for t in texts[i * samples : (i + 1) * samples]]
        (on if r["answer"] in outs else wrong).append(r)
    k = min(n, len(on), len(wrong)) or min(n, len(rows))
    on_rows = [{"prompt": r["prompt"], "completion": r["answer"]} for r in (on or rows)[:k]]
    gold_rows = [{"prompt": r["prompt"], "completion": r["answer"]} for r in (wrong or rows)[:k]]
    return on_rows, gold_rows


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# --- one run ------------------------------------------------------------------------------------------
def train_run(spec: RunSpec, base: str, data: str, out: Path, preset: DriversPreset) -> tuple[Path, Path, float]:
    """Train ``spec`` on ``data``; save the same live weights as ``out/bf16`` and ``out/fp32``.

    Returns the two folders and the training loop's seconds.
    """
    from transformers.training_args import OptimizerNames

    from subnetviz.training.config import TrainConfig
    from subnetviz.training.trainers import build_trainer, save_bf16

    algo = "grpo" if spec.algorithm == "rloo" else spec.algorithm
    cfg = TrainConfig(
        algorithm=algo,
        base=base,
        data=data,
        output_dir=str(out / "bf16"),
        steps=spec.steps,
        learning_rate=spec.learning_rate,
        seed=spec.seed,
        batch_size=preset.batch_size,
        num_generations=preset.num_generations,
        max_completion_length=preset.max_completion_length,
        beta=spec.beta,
        max_grad_norm=spec.max_grad_norm,
    )
    cfg.validate(check_output=False)
    scratch = Path(tempfile.mkdtemp(prefix="subnetviz-drivers-"))
    try:
        if spec.algorithm == "rloo":
            trainer = _rloo_trainer(cfg, scratch)
        else:
            trainer = build_trainer(cfg, scratch, [])
        trainer.args.optim = OptimizerNames(spec.optimizer)  # read when train() creates the optimizer
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        model, tok = trainer.model, trainer.processing_class
        save_bf16(model, tok, out / "bf16")
        state = {k: v.detach().to(torch.float32).cpu() for k, v in model.state_dict().items()}
        model.save_pretrained(out / "fp32", state_dict=state)
        tok.save_pretrained(out / "fp32")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out / "bf16", out / "fp32", seconds


def _rloo_trainer(cfg, scratch: Path):
    """TRL's RLOOTrainer with the project's shared arguments and exact-match reward (GRPO's data format)."""
    from trl import RLOOConfig, RLOOTrainer

    from subnetviz.training.data import exact_match_reward, load_dataset
    from subnetviz.training.trainers import trainer_args

    args = RLOOConfig(
        **trainer_args(cfg, scratch),
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        beta=cfg.beta,
    )
    return RLOOTrainer(
        model=cfg.base, reward_funcs=exact_match_reward, args=args, train_dataset=load_dataset(cfg.data, "grpo")
    )


def measure(base: str, model: Path, eval_file: str, prompts, precision: str | None) -> dict:
    """Sparsity (bitwise, in ``precision`` when set), accuracy and forward KL of one saved model."""
    from subnetviz.analysis.behavior import behavior
    from subnetviz.analysis.sparsity import SparsityOptions
    from subnetviz.analysis.updates import analyze_updates
    from subnetviz.training.evaluate import evaluate_accuracy

    opts = SparsityOptions(tolerances=(), precision=precision, keep_masks=False, row_col=False)
    rep = analyze_updates(base, [str(model)], labels=["m"], options=opts, spectra=None, device="cpu").reports[0]
    kl = behavior(base, [str(model)], prompts, labels=["m"], curve=None, device="cpu").summary["kl_forward"].iloc[0]
    return {"sparsity": rep.sparsity, "accuracy": evaluate_accuracy(model, eval_file), "kl_forward": float(kl)}


# --- the grid -----------------------------------------------------------------------------------------
def run_drivers(
    zoo_root: str | os.PathLike | None = None,
    preset: str = "quick",
    seeds: int = 1,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    workdir: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Train and measure the grid of ``preset`` on the zoo's base; one row per (run, storage precision).

    ``workdir``: where the runs' models live until measured (default: the system's temp folder). A
    job passes its run folder: under the app's read roots, which the analysis enforces there.
    """
    from subnetviz.analysis.behavior import read_prompts
    from subnetviz.config import zoo_dir

    if preset not in PRESETS:
        raise ConfigError(f"drivers preset {preset!r} is unknown; expected one of {sorted(PRESETS)}.")
    p = PRESETS[preset]
    root = Path(zoo_root) if zoo_root else zoo_dir()
    base, data = str(root / "base"), root / "data"
    if not (root / "base" / "config.json").is_file():
        raise ConfigError(f"no demo zoo base in {root}: run `python -m subnetviz demo build` first.")
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="subnetviz-drivers-", dir=workdir))
    try:
        eval_rows = read_prompts(data / "A_eval.jsonl", p.eval_prompts)
        eval_file = _write_jsonl(work / "eval.jsonl", [{"prompt": r.text, "answer": r.answer} for r in eval_rows])
        train_rows = [json.loads(x) for x in (data / "A_train.jsonl").read_text().splitlines() if x.strip()]
        on, gold = sft_sets(base, train_rows, p.data_prompts, seed=0, max_new_tokens=p.max_completion_length)
        files = {
            ("sft", "on_policy"): _write_jsonl(work / "on_policy.jsonl", on),
            ("sft", "gold"): _write_jsonl(work / "gold.jsonl", gold),
            ("sft", "task"): str(data / "sft_A.jsonl"),
            ("dpo", "task"): str(data / "dpo_A.jsonl"),
            ("grpo", "task"): str(data / "A_train.jsonl"),
            ("rloo", "task"): str(data / "A_train.jsonl"),
        }
        specs = p.plan(seeds)
        done: dict[tuple, list[dict]] = {}
        rows = []
        for i, spec in enumerate(specs):
            if should_stop is not None and should_stop():
                break
            if progress:
                progress(i, len(specs), f"{spec.factor}={spec.value} seed {spec.seed}")
            if spec.recipe() not in done:
                folder = work / f"run{i}"
                b16, f32, secs = train_run(spec, base, files[(spec.algorithm, spec.data)], folder, p)
                done[spec.recipe()] = [
                    {
                        "precision": prec,
                        "train_seconds": secs,
                        **measure(base, path, eval_file, eval_rows, "fp32" if prec == "fp32" else None),
                    }
                    for prec, path in (("bf16", b16), ("fp32", f32))
                ]
                shutil.rmtree(folder, ignore_errors=True)
            for m in done[spec.recipe()]:
                rows.append({**asdict(spec), **m, "optimizer": spec.optimizer})
        if progress:
            progress(len(specs), len(specs), "done")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return pd.DataFrame(rows, columns=COLUMNS)


def verdicts(results: pd.DataFrame) -> pd.DataFrame:
    """Which conjectures the grid reproduces: conjecture, expected, observed (bf16 sparsity), reproduced."""
    r = results[results["precision"] == "bf16"]

    def mean(factor: str, value: str) -> float:
        sel = r[(r["factor"] == factor) & (r["value"] == value)]["sparsity"]
        return float(sel.mean()) if len(sel) else float("nan")

    out = []

    def add(name, expected, observed, ok):
        out.append(
            {
                "conjecture": name,
                "expected": expected,
                "observed": observed,
                "reproduced": None if ok is None or (isinstance(ok, float) and np.isnan(ok)) else bool(ok),
            }
        )

    on, gold = mean("data", "on_policy"), mean("data", "gold")
    add(
        "in-distribution data drives sparsity",
        "on-policy SFT sparser than gold SFT",
        f"on-policy {on:.1%} vs gold {gold:.1%}",
        None if np.isnan(on + gold) else on > gold,
    )
    for factor in ("beta", "clipping"):
        vals = r[r["factor"] == factor].groupby("value")["sparsity"].mean()
        if len(vals) >= 2:
            spread = float(vals.max() - vals.min())
            add(
                f"{'KL coefficient' if factor == 'beta' else 'gradient clipping'} has little effect",
                "sparsity within 2 points across its values",
                ", ".join(f"{k}: {v:.1%}" for k, v in vals.items()),
                spread <= 0.02,
            )
    both = results.pivot_table(index=["factor", "value", "seed"], columns="precision", values="sparsity")
    if {"bf16", "fp32"} <= set(both.columns):
        gap = float((both["bf16"] - both["fp32"]).mean())
        add(
            "bf16 storage hides small updates",
            "bf16 saves sparser than fp32 saves of the same run",
            f"bf16 − fp32 sparsity {gap:+.1%} on average",
            gap > 0,
        )
    for factor in ("learning_rate", "steps"):
        sel = r[r["factor"] == factor].assign(x=lambda d: d["value"].astype(float)).groupby("x")["sparsity"].mean()
        if len(sel) >= 2:
            add(
                f"larger {factor.replace('_', ' ')} → denser updates",
                "sparsity falls as it grows",
                ", ".join(f"{k:g}: {v:.1%}" for k, v in sel.items()),
                bool(np.all(np.diff(sel.to_numpy()) <= 0)),
            )
    return pd.DataFrame(out, columns=["conjecture", "expected", "observed", "reproduced"])


def run_job(config: dict, ctx) -> None:
    """Job kind ``drivers``: ``results.csv`` and ``verdicts.csv`` in the run's outputs."""
    res = run_drivers(
        config.get("zoo"),
        config.get("preset", "quick"),
        int(config.get("seeds", 1)),
        progress=lambda s, t, w: ctx.progress(s, t),
        should_stop=ctx.should_stop,
        workdir=ctx.run_dir / "work",
    )
    res.to_csv(ctx.out_dir / "results.csv", index=False)
    verdicts(res).to_csv(ctx.out_dir / "verdicts.csv", index=False)


def validate_config(config: dict) -> None:
    if config.get("preset", "quick") not in PRESETS:
        raise ConfigError(f"drivers preset {config.get('preset')!r} is unknown; expected one of {sorted(PRESETS)}.")
