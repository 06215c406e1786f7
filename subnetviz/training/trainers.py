"""TRL trainers (SFT, DPO, GRPO) built from a :class:`TrainConfig`, plus the callbacks a run needs.

One recipe for full and subnetwork-only runs: the same TRL trainer and arguments; a masked run
only adds the gradient hooks of :class:`~subnetviz.training.masking.MaskedUpdateCallback`.

Fixed choices (why):
- The model is passed as the *folder path*: TRL then loads it itself as float32 master weights
  from the bf16 files, and builds a DPO (or GRPO with ``beta > 0``) reference model from the same
  path (given an instance, TRL tried to build the reference from an empty hub id).
- ``weight_decay=0`` in the optimizer; the decay is applied by the mask callback (see masking.py).
- ``save_strategy="no"`` (no TRL checkpoints with optimizer state); the extra bf16 checkpoints of
  ``save_steps`` are written by :class:`CheckpointCallback`. Logging each step, reported to
  TensorBoard (``report_to=["tensorboard"]``) into :func:`tensorboard_dir`, outside the model folder
  (which appears only when complete) so that a failed run keeps its curves.
- ``bf16``: TRL's default, bf16 autocast for forward/backward with fp32 master weights (what real
  RL runs do); ``bf16=False`` in the config runs everything in fp32.
- ``activation_checkpointing=False`` (TRL turns it on by default; pointless for small models and it
  slows them down), ``use_cpu=True`` when torch sees no CUDA GPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import TrainerCallback

from subnetviz.errors import ConfigError
from subnetviz.training.config import TrainConfig
from subnetviz.training.data import exact_match_reward, load_dataset

TENSORBOARD_DIR = "tensorboard"


def tensorboard_dir(output_dir: str | os.PathLike) -> Path:
    """Where a run writes its TensorBoard event files (``tensorboard --logdir`` opens them).

    A job trains into ``RUN_DIR/outputs.tmp/model`` (:meth:`JobContext.for_dir`, renamed to
    ``outputs`` at the end): its events go to ``RUN_DIR/tensorboard``. A run outside a job folder
    writes beside its model folder, to ``<output_dir>.tensorboard``.
    """
    out = Path(output_dir)
    if out.parent.name == "outputs.tmp":
        return out.parent.parent / TENSORBOARD_DIR
    return out.with_name(f"{out.name}.{TENSORBOARD_DIR}")


def _events_into(trainer, folder: Path):
    """Point the trainer's TensorBoard callback at ``folder`` (transformers 5 dropped ``logging_dir``;
    its callback writes to ``TENSORBOARD_LOGGING_DIR`` if set, else under the scratch ``output_dir``)."""
    from transformers.integrations import TensorBoardCallback

    if not os.environ.get("TENSORBOARD_LOGGING_DIR"):  # the user's explicit choice wins
        for cb in trainer.callback_handler.callbacks:
            if isinstance(cb, TensorBoardCallback):
                cb.logging_dir = str(folder)
    return trainer


def trainer_args(cfg: TrainConfig, scratch_dir: str | os.PathLike) -> dict:
    """The TRL config keyword arguments shared by all three algorithms."""
    return dict(
        output_dir=str(scratch_dir),
        max_steps=cfg.steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        seed=cfg.seed,
        data_seed=cfg.seed,
        weight_decay=0.0,
        max_grad_norm=cfg.max_grad_norm,
        lr_scheduler_type=cfg.lr_scheduler_type,
        logging_steps=1,
        save_strategy="no",
        report_to=["tensorboard"],  # into tensorboard_dir(cfg.output_dir): see build_trainer
        use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=False,
        bf16=cfg.bf16,
        disable_tqdm=True,
        dataloader_num_workers=0,
        model_init_kwargs={"dtype": "float32"},
    )


def build_trainer(cfg: TrainConfig, scratch_dir: str | os.PathLike, callbacks: list[TrainerCallback]):
    """A TRL trainer for ``cfg.algorithm`` on ``cfg.data``; ``scratch_dir`` receives TRL's own files,
    :func:`tensorboard_dir` the TensorBoard events."""
    common = trainer_args(cfg, scratch_dir)
    dataset = load_dataset(cfg.data, cfg.algorithm)
    if cfg.algorithm == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=cfg.base, args=SFTConfig(**common), train_dataset=dataset, callbacks=callbacks)
    elif cfg.algorithm == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(
            model=cfg.base,
            args=DPOConfig(**common, beta=cfg.effective_beta),
            train_dataset=dataset,
            callbacks=callbacks,
        )
    elif cfg.algorithm == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(
            **common,
            num_generations=cfg.num_generations,
            max_completion_length=cfg.max_completion_length,
            beta=cfg.effective_beta,
        )
        trainer = GRPOTrainer(
            model=cfg.base, reward_funcs=exact_match_reward, args=args, train_dataset=dataset, callbacks=callbacks
        )
    else:
        raise ConfigError(f"algorithm {cfg.algorithm!r} is unknown; expected sft, dpo or grpo.")
    return _events_into(trainer, tensorboard_dir(cfg.output_dir))


def save_bf16(model: torch.nn.Module, tokenizer, folder: str | os.PathLike, extra: dict | None = None) -> Path:
    """Save ``model`` in bf16 (like real RL checkpoints) with its tokenizer, without touching the live model.

    ``extra``: file name -> JSON-able object written beside the weights (e.g. ``train_config.json``).
    """
    folder = Path(folder)
    state = {k: v.detach().to(torch.bfloat16).cpu() for k, v in model.state_dict().items()}
    model.save_pretrained(folder, state_dict=state)
    cfg_file = folder / "config.json"
    conf = json.loads(cfg_file.read_text())
    conf["dtype"] = "bfloat16"  # the weights are bf16 whatever the live (fp32) model says
    cfg_file.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    for name, obj in (extra or {}).items():
        (folder / name).write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return folder


class CheckpointCallback(TrainerCallback):
    """Writes bf16 checkpoints at ``steps`` to ``folder/step-<k>/`` (main process only)."""

    def __init__(self, steps: list[int], folder: Path, tokenizer, is_main: bool = True):
        self.steps = set(steps)
        self.folder = Path(folder)
        self.tokenizer = tokenizer
        self.is_main = is_main

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps and self.is_main and model is not None:
            save_bf16(
                model,
                self.tokenizer,
                self.folder / f"step-{state.global_step}",
                {"step.json": {"step": state.global_step}},
            )


class ProgressCallback(TrainerCallback):
    """Forwards each step's logged metrics to a :class:`JobContext` and honours its stop flag.

    Also keeps the last logged metrics (``.last``) for the run's summary.
    """

    def __init__(self, ctx=None, total: int = 0):
        self.ctx = ctx
        self.total = total
        self.last: dict[str, float] = {}
        self.train_seconds: float | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        numeric = {
            k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if "train_runtime" in numeric:  # the end-of-training summary line, not a step
            self.train_seconds = numeric["train_runtime"]
            return
        self.last = numeric
        if self.ctx is not None and state.is_world_process_zero:
            self.ctx.progress(state.global_step, self.total or state.max_steps, **numeric)

    def on_step_end(self, args, state, control, **kwargs):
        if self.ctx is not None and self.ctx.should_stop():
            control.should_training_stop = True
