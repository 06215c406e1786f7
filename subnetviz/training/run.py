"""Run one training job: :func:`train` (library) and :func:`run_job` (the ``train`` job kind).

:func:`train` builds the TRL trainer, refuses a mask that does not fit the model before the first
step, trains, and writes into a hidden ``.<name>.partial`` folder that is renamed to
``output_dir`` only when everything (model, checkpoints, summary) is written, so a crash never
leaves a folder that looks complete. The folder then holds:

- the bf16 model + tokenizer, ``train_config.json`` (the config as run),
- ``subnetwork_mask.safetensors`` (masked runs: the mask actually used, e.g. the random one),
- ``checkpoints/step-<k>/`` for each of ``save_steps``,
- ``train_summary.json``: steps done, final metrics, accuracy, seconds, and the bitwise check of
  the saved model against the base (``outside_mask_identical``, changed entries inside/outside).

Under ``accelerate launch`` every process runs :func:`train`; only the main process saves.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from subnetviz.jobs.context import JobContext
from subnetviz.training.config import TrainConfig, job_train_config
from subnetviz.training.evaluate import evaluate_accuracy
from subnetviz.training.masking import MaskedUpdateCallback, check_outside_mask, load_training_mask
from subnetviz.training.trainers import CheckpointCallback, ProgressCallback, build_trainer, save_bf16
from subnetviz.version import version_info

SUMMARY_FILE = "train_summary.json"
MASK_FILE = "subnetwork_mask.safetensors"


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports (also written as ``train_summary.json``)."""

    output_dir: str
    steps_done: int
    metrics: dict  # last logged step's metrics (loss, reward, grad_norm, learning_rate, ...)
    accuracy: float | None  # greedy exact match on eval_data, if given
    seconds: float
    mask_check: dict | None = None  # MaskCheck.to_dict(): outside_mask_identical, changed_inside, ...
    stopped: bool = False  # True when ctx.should_stop() ended the run early (then nothing is saved)
    is_main_process: bool = True  # False on the other ranks of a multi-process run (they save nothing)
    train_seconds: float | None = None  # the training loop alone (TRL's train_runtime), without load/save/eval
    num_processes: int = 1  # processes that trained together (accelerate launch / DDP)

    def to_dict(self) -> dict:
        return asdict(self)


def _partial_dir(out: Path) -> Path:
    # Deterministic (not per-pid) so every rank of a multi-process run agrees on it.
    return out.with_name(f".{out.name}.partial")


def train(cfg: TrainConfig, ctx: JobContext | None = None) -> TrainResult:
    """Train ``cfg`` (full or subnetwork-only) and save the result to ``cfg.output_dir``."""
    cfg.validate()
    start = time.time()
    out = Path(cfg.output_dir)
    partial = _partial_dir(out)
    scratch = Path(tempfile.mkdtemp(prefix="subnetviz-trl-"))
    progress = ProgressCallback(ctx, total=cfg.steps)
    try:
        trainer = build_trainer(cfg, scratch, [progress])
        model = trainer.model
        is_main = trainer.accelerator.is_main_process
        n_proc = int(trainer.accelerator.num_processes)
        masks = mask_set = None
        if cfg.mask is not None:
            shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
            masks, mask_set = load_training_mask(cfg.mask, shapes, seed=cfg.seed)  # refuses before any step
        decay_names = set(trainer.get_decay_parameter_names(model))
        trainer.add_callback(MaskedUpdateCallback(masks, cfg.weight_decay, decay_names))
        if cfg.save_steps:
            trainer.add_callback(
                CheckpointCallback(cfg.save_steps, partial / "checkpoints", trainer.processing_class, is_main)
            )
        if is_main and partial.exists():
            shutil.rmtree(partial)  # left by a crashed earlier attempt at the same output_dir
        _log(
            ctx,
            f"training {cfg.algorithm} on {cfg.data} from {cfg.base} ({'mask ' + cfg.mask if cfg.mask else 'full'})",
        )
        trainer.train()
        steps_done = int(trainer.state.global_step)
        stopped = ctx is not None and ctx.should_stop()
        if stopped or not is_main:
            if stopped and is_main and partial.exists():
                shutil.rmtree(partial)
            return TrainResult(
                str(out),
                steps_done,
                progress.last,
                None,
                time.time() - start,
                None,
                stopped,
                is_main,
                progress.train_seconds,
                n_proc,
            )
        save_bf16(model, trainer.processing_class, partial, {"train_config.json": cfg.to_dict()})
        if mask_set is not None:
            from subnetviz.masks import save_mask_set

            save_mask_set(partial / MASK_FILE, mask_set)
        del trainer, model
        check = check_outside_mask(cfg.base, partial, masks).to_dict()
        if not check["outside_mask_identical"]:
            _log(ctx, f"WARNING: {check['changed_outside']} entries outside the mask changed; see {SUMMARY_FILE}")
        accuracy = evaluate_accuracy(partial, cfg.eval_data) if cfg.eval_data else None
        result = TrainResult(
            str(out),
            steps_done,
            progress.last,
            accuracy,
            time.time() - start,
            check,
            train_seconds=progress.train_seconds,
            num_processes=n_proc,
        )
        (partial / SUMMARY_FILE).write_text(json.dumps({**result.to_dict(), **version_info()}, indent=2) + "\n")
        os.replace(partial, out)
        _log(ctx, f"saved {out} after {steps_done} steps ({result.seconds:.1f} s); accuracy {accuracy}")
        return result
    except BaseException:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _log(ctx: JobContext | None, message: str) -> None:
    if ctx is not None:
        ctx.log(message)


def run_job(config: dict, ctx: JobContext) -> None:
    """The ``train`` job kind: the model goes to ``RUN_DIR/outputs/model`` (``output_dir`` is not used)."""
    if config.get("output_dir"):
        ctx.log(f"note: output_dir {config['output_dir']!r} is not used by jobs; the model goes to outputs/model")
    cfg = replace(job_train_config(config), output_dir=str(ctx.out_dir / "model"))
    result = train(cfg, ctx)
    if result.stopped or not result.is_main_process:
        return
    final = ctx.run_dir / "outputs" / "model"  # where the runner's rename puts it
    summary = replace(result, output_dir=str(final))
    for name in ("train_config.json", SUMMARY_FILE):  # record the final path, not outputs.tmp
        path = ctx.out_dir / "model" / name
        path.write_text(json.dumps({**json.loads(path.read_text()), "output_dir": str(final)}, indent=2) + "\n")
    (ctx.out_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    extra = {"accuracy": result.accuracy} if result.accuracy is not None else {}
    ctx.progress(result.steps_done, cfg.steps, **{**result.metrics, **extra})
