"""One run of the sparsity-drivers grid (:mod:`subnetviz.experiments.drivers`): its SFT data sets,
training with the project's TRL code, bf16 and fp32 saves, and the measures of each save.

``spec`` is a :class:`~subnetviz.experiments.drivers.RunSpec` and ``preset`` a
:class:`~subnetviz.experiments.drivers.DriversPreset` (not imported here: the grid imports this).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch


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
    if not on or not wrong:  # (both fell back to the same rows: one set trained twice under two names)
        return [], []
    k = min(n, len(on), len(wrong))
    on_rows = [{"prompt": r["prompt"], "completion": r["answer"]} for r in on[:k]]
    gold_rows = [{"prompt": r["prompt"], "completion": r["answer"]} for r in wrong[:k]]
    return on_rows, gold_rows


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# --- one run ------------------------------------------------------------------------------------------
def run_config(spec, base: str, data: str, out: Path, preset):
    """The :class:`~subnetviz.training.config.TrainConfig` of ``spec``: the one its trainer is built from (RLOO and
    PPO as GRPO: the same data format). Its ``effective_beta`` is the β that trains (DPO's 0 is 0.1), the one the
    run's row records; its ``lr_scheduler_type`` the schedule every run uses, PPO's included."""
    from subnetviz.training.config import TrainConfig

    return TrainConfig(
        algorithm="grpo" if spec.algorithm in ("rloo", "ppo") else spec.algorithm,
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


def train_run(spec, base: str, data: str, out: Path, preset) -> tuple[Path, Path, float]:
    """Train ``spec`` on ``data``; save the same live weights as ``out/bf16`` and ``out/fp32``.

    Returns the two folders and the training loop's seconds.
    """
    from transformers.training_args import OptimizerNames

    from subnetviz.training.trainers import build_trainer, save_bf16

    if spec.algorithm == "ppo":
        return _ppo_run(spec, base, data, out, preset)
    cfg = run_config(spec, base, data, out, preset)
    cfg.validate(check_output=False)
    scratch = Path(tempfile.mkdtemp(prefix="subnetviz-drivers-"))
    try:
        if spec.algorithm == "rloo":
            trainer = _rloo_trainer(cfg, scratch)
        else:
            trainer = build_trainer(cfg, scratch, [])
        # read when train() creates the optimizer; SGD's momentum reaches torch.optim.SGD through optim_args
        trainer.args.optim = OptimizerNames(spec.optimizer)
        trainer.args.optim_args = f"momentum={spec.momentum}" if spec.momentum is not None else None
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


def ppo_request(spec, base: str, data: str, out: Path, preset) -> dict:
    """What :func:`subnetviz.experiments.ppo.train_ppo` is asked for ``spec``: learning rate, schedule and β from the
    same :func:`run_config` as every other run (the schedule was a literal "linear" in the PPO child before)."""
    cfg = run_config(spec, base, data, out, preset)
    return {
        "base": base,
        "data": data,
        "out": str(out),
        "seed": cfg.seed,
        "steps": cfg.steps,
        "learning_rate": cfg.learning_rate,
        "lr_scheduler_type": cfg.lr_scheduler_type,
        "batch_size": cfg.batch_size,
        "max_completion_length": cfg.max_completion_length,
        "beta": cfg.effective_beta,
        "optimizer": spec.optimizer,
        "momentum": spec.momentum,
    }


def _ppo_run(spec, base: str, data: str, out: Path, preset) -> tuple[Path, Path, float]:
    """TRL's PPOTrainer (0.29.1, in a child process: :mod:`subnetviz.experiments.ppo`) on GRPO's data and reward."""
    from subnetviz.experiments.ppo import train_ppo

    result = train_ppo(ppo_request(spec, base, data, out, preset))
    return out / "bf16", out / "fp32", float(result["train_seconds"])


def _rloo_trainer(cfg, scratch: Path):
    """TRL's RLOOTrainer with the project's shared arguments and exact-match reward (GRPO's data format)."""
    from trl import RLOOConfig, RLOOTrainer

    from subnetviz.training.data import exact_match_reward, load_dataset
    from subnetviz.training.trainers import log_lines_to_stderr, trainer_args

    args = RLOOConfig(
        **trainer_args(cfg, scratch),
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        beta=cfg.beta,
    )
    trainer = RLOOTrainer(
        model=cfg.base, reward_funcs=exact_match_reward, args=args, train_dataset=load_dataset(cfg.data, "grpo")
    )
    return log_lines_to_stderr(trainer)  # each step's metrics in the log, not before the CLI's table on stdout


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


# --- one run, measured ------------------------------------------------------------------------------
PPO_NOTE = "max_grad_norm has no effect: TRL's PPO loop does not clip gradients"


def recipe_rows(spec, base: str, data: str, eval_file: str, eval_rows, preset, folder: str) -> list[dict]:
    """Train one run and measure its bf16 and fp32 saves: two rows (precision, train_seconds, the measures, the β
    that trained, status "done" and a note).

    A run that fails is one row with status "failed", no precision or measures and its one-line reason as note:
    the grid's other runs are kept (one failure threw every trained run away). Module-level so that a Ray task
    can run it (:func:`run_drivers` with ``address``); the models live in ``folder`` (deleted after).
    """
    from subnetviz.errors import SubnetvizError

    folder = Path(folder)
    beta = run_config(spec, base, data, folder, preset).effective_beta
    try:
        b16, f32, secs = train_run(spec, base, data, folder, preset)
        return [
            {
                "precision": prec,
                "train_seconds": secs,
                **measure(base, path, eval_file, eval_rows, "fp32" if prec == "fp32" else None),
                "beta": beta,
                "status": "done",
                "note": PPO_NOTE if spec.algorithm == "ppo" else "",
            }
            for prec, path in (("bf16", b16), ("fp32", f32))
        ]
    except Exception as exc:  # recorded in the grid's table with its reason, and its traceback in the log
        traceback.print_exc(file=sys.stderr)
        reason = str(exc) if isinstance(exc, SubnetvizError) else f"{type(exc).__name__}: {exc}"
        reason = " ".join(reason.split())[:400]
        print(
            f"drivers: {spec.factor}={spec.value} seed {spec.seed} failed, recorded, the grid goes on: {reason}",
            file=sys.stderr,
        )
        return [{"precision": None, "train_seconds": float("nan"), "beta": beta, "status": "failed", "note": reason}]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
