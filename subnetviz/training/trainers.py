"""TRL trainers (SFT, DPO, GRPO) built from a :class:`TrainConfig`, plus the callbacks a run needs.

One recipe for full and subnetwork-only runs: the same TRL trainer and arguments; a masked run
only adds the gradient hooks of :class:`~subnetviz.training.masking.MaskedUpdateCallback`.

Fixed choices (why):
- The model is passed as the *folder path*: TRL then loads it itself as float32 master weights
  from the bf16 files, and builds a DPO (or GRPO with ``beta > 0``) reference model from the same
  path (given an instance, TRL tried to build the reference from an empty hub id). A vision-language
  base (:func:`image_text_to_text`) is the exception: TRL would load it with its image processor, so
  its model is loaded here as Behaviour loads it, with the base's tokenizer (and DPO's reference).
- ``weight_decay=0`` in the optimizer; the decay is applied by the mask callback (see masking.py).
- ``save_strategy="no"`` (no TRL checkpoints with optimizer state); the extra checkpoints of
  ``save_steps`` are written by :class:`CheckpointCallback`. Logging each step (its line on stderr:
  :class:`LogLinesToStderr`), reported to TensorBoard (``report_to=["tensorboard"]``) into
  :func:`tensorboard_dir`, outside the model folder (which appears only when complete) so that a failed
  run keeps its curves.
- ``bf16``: TRL's default, bf16 autocast for forward/backward with fp32 master weights (what real
  RL runs do); ``bf16=False`` in the config runs everything in fp32.
- ``activation_checkpointing=False`` (TRL turns it on by default; pointless for small models and it
  slows them down), ``use_cpu=True`` when the run's device is the CPU (:func:`~subnetviz.training.config.
  train_device`: ``SUBNETVIZ_DEVICE``, else CUDA when torch sees a GPU). Models TRL loads from a path are loaded
  with ``device_map=None`` and placed by accelerate on that device (TRL's ``"auto"`` put them on the first GPUs).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import weakref
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from subnetviz.cache import _UMASK  # the process' umask, read once at import (reading it means setting it)
from subnetviz.errors import ConfigError
from subnetviz.training.config import MAX_LENGTH, TrainConfig, train_device
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


class LogLinesToStderr(PrinterCallback):
    """transformers' :class:`PrinterCallback` (added in place of the progress bar by ``disable_tqdm``), printing each
    step's logged metrics on stderr: on stdout they came before a command's own output (``experiment drivers``
    printed 32 metric dicts before its results table, the quick preset about 150), and a script reading stdout had
    to skip them. A job's stdout and stderr are both its log; its metrics go to ``metrics.jsonl``
    (:class:`ProgressCallback`), which this does not touch."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        logs.pop("total_flos", None)  # (as PrinterCallback does: the callbacks after it never saw it)
        if state.is_local_process_zero:
            print({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items()}, file=sys.stderr)


def log_lines_to_stderr(trainer):
    """``trainer`` with its :class:`PrinterCallback` (if any) replaced, in its place, by :class:`LogLinesToStderr`."""
    cbs = trainer.callback_handler.callbacks
    for i, cb in enumerate(cbs):
        if type(cb) is PrinterCallback:
            cbs[i] = LogLinesToStderr()
    return trainer


def _events_into(trainer, folder: Path):
    """Point the trainer's TensorBoard callback at ``folder`` (transformers 5 dropped ``logging_dir``;
    its callback writes to ``TENSORBOARD_LOGGING_DIR`` if set, else under the scratch ``output_dir``)."""
    from transformers.integrations import TensorBoardCallback

    if not os.environ.get("TENSORBOARD_LOGGING_DIR"):  # the user's explicit choice wins
        for cb in trainer.callback_handler.callbacks:
            if isinstance(cb, TensorBoardCallback):
                cb.logging_dir = str(folder)
    return log_lines_to_stderr(trainer)  # (every trainer build_trainer returns passes here)


# How TRL loads a model from a folder (the policy given as a path, the references it builds): float32 master
# weights; ``device_map=None`` so that the model lands whole on the run's device (accelerate's placement: the CPU
# with ``use_cpu``, else this process's GPU). TRL's default ``"auto"`` spread it over the GPUs the process sees
# (each process of a launched FSDP2 run sees all of them) and ignored SUBNETVIZ_DEVICE's ``cuda:N``.
MODEL_INIT = {"dtype": "float32", "device_map": None}


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
        logging_nan_inf_filter=False,  # a NaN/Inf loss is logged as is (the filter logged a diverged run as 0.0)
        save_strategy="no",
        report_to=["tensorboard"],  # into tensorboard_dir(cfg.output_dir): see build_trainer
        use_cpu=train_device() == "cpu",
        activation_checkpointing=False,
        bf16=cfg.bf16,
        disable_tqdm=True,
        dataloader_num_workers=0,
        model_init_kwargs=dict(MODEL_INIT),
    )


def build_trainer(
    cfg: TrainConfig,
    scratch_dir: str | os.PathLike,
    callbacks: list[TrainerCallback],
    world=None,
    events_dir: str | os.PathLike | None = None,
):
    """A TRL trainer for ``cfg.algorithm`` on ``cfg.data``; ``scratch_dir`` receives TRL's own files,
    ``events_dir`` (default :func:`tensorboard_dir` of ``cfg.output_dir``) the TensorBoard events.

    ``world`` (a :class:`~subnetviz.training.sharded.World`, strategy ``fsdp2``): the model is loaded
    here, wrapped with ``fully_shard`` and handed to TRL as an instance, each process trains on its
    own shard of the data, and the trainer is built in a one-process view (see sharded.py).
    """
    events = Path(events_dir) if events_dir is not None else tensorboard_dir(cfg.output_dir)
    if world is not None:
        return _events_into(_progress_first(_build_fsdp2_trainer(cfg, scratch_dir, callbacks, world)), events)
    dataset = load_dataset(cfg.data, cfg.algorithm)
    if not image_text_to_text(cfg.base):
        trainer = _build(cfg, trainer_args(cfg, scratch_dir), dataset, callbacks, cfg.base)
        return _events_into(trainer, events)
    # A vision-language base: TRL, given its path, builds it with its image processor (torchvision, an
    # ImportError traceback without it) and trains it as a vision model. Its text model is trained here, given
    # as an instance with the base's tokenizer; DPO's frozen reference is loaded likewise (GRPO builds its own
    # from the model's folder).
    from subnetviz.checkpoints.models import load_causal_lm, load_tokenizer

    ref = _frozen(load_causal_lm(cfg.base)) if cfg.algorithm == "dpo" else None
    trainer = _build(
        cfg,
        trainer_args(cfg, scratch_dir),
        dataset,
        callbacks,
        load_causal_lm(cfg.base),
        processing_class=load_tokenizer(cfg.base),
        ref_model=ref,
    )
    return _events_into(trainer, events)


def image_text_to_text(base: str | os.PathLike) -> bool:
    """Whether transformers builds ``base``'s text model as an image-text-to-text model only (Mistral-3, Qwen2-VL,
    LLaVA: :func:`~subnetviz.checkpoints.models.text_model_class`), which a run then loads itself; False for a
    causal LM. The config is read by :func:`~subnetviz.checkpoints.models.model_config`: one CheckpointError naming
    ``base`` where transformers refuses it (its strict validation's errors were a traceback in the run). ConfigError,
    one line, for a model with no class returning next-token logits (the Qwen omni models)."""
    from transformers import AutoModelForCausalLM

    from subnetviz.checkpoints.models import model_config, text_model_class

    return text_model_class(model_config(base), base) is not AutoModelForCausalLM


def _frozen(model):
    """``model`` in eval mode with no parameter requiring a gradient (a reference model)."""
    model.eval()
    model.requires_grad_(False)
    return model


def _load_model(base: str):
    """The model a sharded run trains, in float32: the causal LM as TRL loads one from a path, or a vision-language
    base's model through :func:`~subnetviz.checkpoints.models.load_causal_lm` (:func:`image_text_to_text`)."""
    from transformers import AutoModelForCausalLM

    if image_text_to_text(base):
        from subnetviz.checkpoints.models import load_causal_lm

        return load_causal_lm(base)
    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)


def _progress_first(trainer):
    """Move the :class:`ProgressCallback` to the front of the trainer's callbacks: under FSDP2 it combines the
    logged metrics over the processes in place, before TensorBoard and the printer read them."""
    cbs = trainer.callback_handler.callbacks
    cbs.sort(key=lambda cb: not isinstance(cb, ProgressCallback))  # (stable: the others keep their order)
    return trainer


def _build_fsdp2_trainer(cfg: TrainConfig, scratch_dir, callbacks, world):
    from transformers import AutoTokenizer

    from subnetviz.training.sharded import shard_model, single_process_view

    model = shard_model(_load_model(cfg.base), world)
    ref = None
    if cfg.algorithm == "dpo":
        # DPO's frozen reference: sharded like the policy (its forwards all-gather in step on every rank). GRPO's
        # (beta > 0) is built by TRL itself, which takes none (see _build).
        ref = _frozen(shard_model(_load_model(cfg.base), world))
    tok = AutoTokenizer.from_pretrained(cfg.base)
    dataset = load_dataset(cfg.data, cfg.algorithm)
    if world.size > 1:
        if len(dataset) < world.size:
            raise ConfigError(f"data {cfg.data}: {len(dataset)} rows cannot feed {world.size} processes.")
        dataset = dataset.shard(num_shards=world.size, index=world.rank)  # each process its own rows
    common = trainer_args(cfg, scratch_dir)
    if not world.is_main:
        common["report_to"] = []  # one TensorBoard writer: rank 0
    with single_process_view():
        trainer = _build(cfg, common, dataset, callbacks, model, processing_class=tok, ref_model=ref)
    if not world.is_main:  # each step's line printed once (the metrics are combined over processes: the same)
        trainer.remove_callback(PrinterCallback)
    return trainer


# GRPO's reference model (``beta > 0``) when the policy is given as an instance (FSDP2, a vision-language base):
# TRL 1.x's GRPOTrainer takes no ``ref_model``; it loads the reference from the policy's folder (config
# ``_name_or_path``) with ``args.model_init_kwargs`` (:data:`MODEL_INIT`, so that it lands whole on this process's
# device). Under FSDP2 it is therefore a full, unsharded copy in each process (its forwards need no collective).
GRPO_LOGGER = "trl.trainer.grpo_trainer"
# TRL warns that model_init_kwargs are ignored for a model instance, and then loads the reference with them.
IGNORED_INIT_WARNING = "You passed `model_init_kwargs`"


@contextlib.contextmanager
def _without_warning(logger: str, text: str):
    """Drop the log records of ``logger`` whose message holds ``text`` (a warning that is wrong here; accelerate's
    logger puts ``[RANK n]`` before it)."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return text not in str(record.getMessage())

    log = logging.getLogger(logger)
    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


def _build(cfg: TrainConfig, common: dict, dataset, callbacks, model, processing_class=None, ref_model=None):
    """The TRL trainer of ``cfg.algorithm``; ``model`` a folder path or an instance, ``ref_model`` DPO's frozen
    reference for an instance (None: TRL loads it from the model's folder, as it always does for GRPO)."""
    extra = {"processing_class": processing_class} if processing_class is not None else {}
    if not isinstance(model, str):
        common = {k: v for k, v in common.items() if k != "model_init_kwargs"}  # only for a model path
    if cfg.algorithm == "sft":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**common, max_length=MAX_LENGTH)  # (what TrainConfig.validate measured the rows against)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, callbacks=callbacks, **extra)
    elif cfg.algorithm == "dpo":
        from trl import DPOConfig, DPOTrainer

        if ref_model is not None:
            extra["ref_model"] = ref_model
        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(**common, beta=cfg.effective_beta, max_length=MAX_LENGTH),
            train_dataset=dataset,
            callbacks=callbacks,
            **extra,
        )
    elif cfg.algorithm == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        if not isinstance(model, str) and cfg.effective_beta > 0:
            common = {**common, "model_init_kwargs": dict(MODEL_INIT)}
        args = GRPOConfig(
            **common,
            num_generations=cfg.num_generations,
            max_completion_length=cfg.max_completion_length,
            beta=cfg.effective_beta,
        )
        # (TRL's GRPOTrainer takes no ref_model: with beta > 0 it loads the reference from the model's folder)
        with _without_warning(GRPO_LOGGER, IGNORED_INIT_WARNING):
            trainer = GRPOTrainer(
                model=model,
                reward_funcs=exact_match_reward,
                args=args,
                train_dataset=dataset,
                callbacks=callbacks,
                **extra,
            )
    else:
        raise ConfigError(f"algorithm {cfg.algorithm!r} is unknown; expected sft, dpo or grpo.")
    for m in (trainer.model, getattr(trainer, "ref_model", None)):
        _expert_count_for_trl(m)
    return trainer


# The names MoE configs give their count of routed experts where they have no ``num_experts``, in the order tried.
_EXPERT_COUNTS = ("num_local_experts", "n_routed_experts", "moe_num_experts")
# the configs whose num_experts this module added, left out on save: by id, each held weakly (a freed config's id
# may be another's later, which held its own num_experts and kept it)
_ADDED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _text_config(model):
    """The transformers text config of ``model``, or None: no model, a wrapper whose ``config`` is no transformers
    config (DeepSpeed's engine, a ZeRO-3 DPO reference: its ``config`` is a dict), several text configs."""
    get = getattr(getattr(model, "config", None), "get_text_config", None)
    if not callable(get):
        return None
    try:
        return get()
    except ValueError:  # (several text configs: no causal LM a run trains)
        return None


def _expert_count_for_trl(model) -> None:
    """TRL's fused LM head (every trainer's, TRL 1.x) adds an MoE model's load-balancing loss with
    ``config.num_experts``, which Granite-MoE, PhiMoE, Llama-4 and GLM-4.5V's configs name ``num_local_experts`` or
    ``n_routed_experts``: training them failed before its first step with "'GraniteMoeConfig' object has no
    attribute 'num_experts'". The count is given under that name too, for the run only: :func:`_save_weights`
    leaves it out of every saved config.json, so a finetune's config stays its base's."""
    text = _text_config(model)
    if text is None or not hasattr(text, "output_router_logits") or hasattr(text, "num_experts"):
        return
    count = next((getattr(text, k) for k in _EXPERT_COUNTS if isinstance(getattr(text, k, None), int)), None)
    if count is not None:
        text.num_experts = count
        _ADDED[id(text)] = text


@contextlib.contextmanager
def _without_added_expert_count(model):
    """``model``'s config as loaded while it is saved: the ``num_experts`` :func:`_expert_count_for_trl` added is
    taken out, then put back for the rest of the run."""
    text = _text_config(model)
    if text is None or _ADDED.get(id(text)) is not text or "num_experts" not in text.__dict__:
        yield
        return
    count = text.__dict__.pop("num_experts")
    try:
        yield
    finally:
        text.num_experts = count


def save_bf16(
    model: torch.nn.Module, tokenizer, folder: str | os.PathLike, extra: dict | None = None, state: dict | None = None
) -> Path:
    """Save ``model`` in bf16 (like real RL checkpoints) with its tokenizer, without touching the live model.

    ``extra``: file name -> JSON-able object written beside the weights (e.g. ``train_config.json``).
    ``state``: the full state dict to save (an FSDP2 model's gathered one); default ``model.state_dict()``.
    Tied weights stay tied (one tensor in the file, as ``save_pretrained`` writes them).
    """
    return _save_weights(model, tokenizer, folder, extra, state, dtypes={}, default=torch.bfloat16)


def base_layout(base: str | os.PathLike) -> tuple[dict[str, torch.dtype], str | None]:
    """``(name -> stored dtype, config dtype)`` of the base checkpoint, from its headers and config.json."""
    from subnetviz.checkpoints import open_checkpoint

    ck = open_checkpoint(base)
    try:
        dtypes = {n: ck.meta(n).dtype for n in ck.names}
        conf = ck.config.get("dtype", ck.config.get("torch_dtype"))
    finally:
        ck.close()
    return dtypes, conf if isinstance(conf, str) else None


def save_like_base(
    model: torch.nn.Module,
    tokenizer,
    folder: str | os.PathLike,
    base: str | os.PathLike,
    extra: dict | None = None,
    state: dict | None = None,
) -> Path:
    """Save ``model`` as the ``base`` checkpoint stores it: every tensor the base holds, under the base's own name,
    and only those (a tied head the base does not store is not written; one it does store is written, a copy of
    the embedding), each in the base's own stored dtype (per tensor: a base may mix dtypes), so every entry
    training did not change is bit-identical to the base. The model's names are lined up with the base's as
    :func:`subnetviz.checkpoints.align` does (``model.``-style prefixes ignored: a GPT-2 stored without its
    ``transformer.`` prefix is saved without it). Arguments as :func:`save_bf16`."""
    dtypes, conf = base_layout(base)
    state = state or model.state_dict()
    kept = stored_buffers(base, state)
    return _save_weights(model, tokenizer, folder, extra, state, dtypes=dtypes, config_dtype=conf, kept=kept)


def stored_buffers(base: str | os.PathLike, state_names) -> dict[str, torch.Tensor]:
    """``{base name: tensor}``, read verbatim, of the buffers the ``base`` checkpoint stores and the live model's
    state does not hold (lined up as :func:`base_names_in_state` lines names up): the causal masks and rotary
    frequencies older saves kept (GPT-2's ``h.N.attn.bias``, Pythia's ``attention.bias`` / ``masked_bias``,
    Llama-2-era ``rotary_emb.inv_freq``), which transformers 5 no longer registers. Training never touches them,
    so the saved model carries them as the base stores them (the tensors analysis lists as buffers: the same
    rule, :func:`subnetviz.analysis.quant.checkpoint_forms`); without them it held other tensors than its base."""
    from subnetviz.analysis.quant import checkpoint_forms  # late: it imports the quantized forms' kernels
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.naming import by_short_name, strip_prefix

    state_names = list(state_names)
    have, keyed = set(state_names), by_short_name(state_names)
    ck = open_checkpoint(base)
    try:
        forms = checkpoint_forms(ck)
        return {
            n: ck.get(n).clone()  # (a view of the mapped file, which closes here)
            for n in ck.names
            if forms[n].kind == "buffer" and n not in have and keyed.get(strip_prefix(n)) is None
        }
    finally:
        ck.close()


def base_names_in_state(base_names, state_names) -> dict[str, str] | None:
    """``{base name: state name}`` for every name the base stores, lined up as
    :func:`subnetviz.checkpoints.align` lines tensors up (the same name, else the same name without a
    ``model.``-style prefix); None when some base name has no state tensor or two share one (another naming,
    e.g. experts transformers fuses on load, which its ``save_pretrained`` turns back)."""
    from subnetviz.checkpoints.naming import by_short_name, strip_prefix

    state_names = list(state_names)
    have, keyed = set(state_names), by_short_name(state_names)
    out = {}
    for b in base_names:
        s = b if b in have else keyed.get(strip_prefix(b))
        if s is None:
            return None
        out[b] = s
    return out if len(set(out.values())) == len(out) else None


def _save_weights(
    model, tokenizer, folder, extra, state, *, dtypes: dict, default=None, config_dtype=None, kept=None
) -> Path:
    """``dtypes``: name -> dtype of the tensors to write (all of the state's when empty, in ``default``), lined up
    with the state's names by :func:`base_names_in_state`; when they cannot be, all of the state is written.
    ``kept``: base name -> tensor written as it is, the state holding none (:func:`stored_buffers`)."""
    folder = Path(folder)
    state = state or model.state_dict()
    kept = kept or {}
    pairs = base_names_in_state([n for n in dtypes if n not in kept], state) if dtypes else None
    if default is None:  # names the base does not hold: its most common dtype
        counts: dict[torch.dtype, int] = {}
        for d in dtypes.values():
            if d.is_floating_point:  # (a quantized base's integer codes are no dtype to cast weights to)
                counts[d] = counts.get(d, 0) + 1
        default = max(counts, key=counts.get) if counts else torch.bfloat16

    def want(k: str, v: torch.Tensor) -> torch.dtype:
        d = dtypes.get(k, default)
        if not d.is_floating_point or not v.is_floating_point():
            d = v.dtype if not v.is_floating_point() else default
        return d

    out = {}
    if pairs is not None:
        # The base's names, each its own tensor: save_pretrained keeps one name of tensors sharing storage, which
        # dropped a tied head that the base stores beside its embedding.
        storages: set[int] = set()
        for b, k in pairs.items():
            v = state[k].detach()
            t = v.to(want(b, v)).cpu()
            if t.untyped_storage().data_ptr() in storages:
                t = t.clone()
            storages.add(t.untyped_storage().data_ptr())
            out[b] = t
    else:
        shared: dict[tuple, torch.Tensor] = {}
        for k in state:
            v = state[k].detach()
            # Tied tensors (one storage under two names) get one copy, so save_pretrained still sees the tie.
            key = (v.data_ptr(), tuple(v.shape), tuple(v.stride()), want(k, v))
            if key not in shared:
                shared[key] = v.to(key[-1]).cpu()
            out[k] = shared[key]
    # the base's buffers the state lacks, under the base's names (transformers' renaming on save leaves them be)
    out.update(kept)
    # Keyed by the base's stored names, the state is written as it is: transformers 5 renames a state dict from
    # the model's names to the stored ones on save, and renamed the stored ones again (a vision-language model's
    # language_model.model.* written as language_model.model.model.*, a run then refused as other tensors).
    with _without_added_expert_count(model):  # (the config as loaded: TRL's needs are the run's, not the model's)
        model.save_pretrained(folder, state_dict=out, save_original_format=pairs is None)
    for weights in folder.glob("*.safetensors"):
        # as any new file of this process (cache.atomic_path does the same for masks): safetensors writes 0600,
        # so a shared runs folder's or zoo's weights were unreadable to those who could read every other file
        os.chmod(weights, 0o666 & ~_UMASK)
    cfg_file = folder / "config.json"
    conf = json.loads(cfg_file.read_text())
    conf["dtype"] = config_dtype or str(default).removeprefix("torch.")  # the stored weights', not the live model's
    cfg_file.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    for name, obj in (extra or {}).items():
        (folder / name).write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return folder


class CheckpointCallback(TrainerCallback):
    """Writes checkpoints at ``steps`` to ``folder/step-<k>/`` (main process only): stored like ``base``
    (:func:`save_like_base`), or bf16 without one."""

    def __init__(self, steps: list[int], folder: Path, tokenizer, is_main: bool = True, gather=None, base=None):
        self.base = base
        self.steps = set(steps)
        self.folder = Path(folder)
        self.tokenizer = tokenizer
        self.is_main = is_main
        self.gather = gather  # FSDP2: model -> full state dict, a collective every process must call

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step not in self.steps or model is None:
            return
        full = self.gather(model) if self.gather is not None else None
        if self.is_main:
            folder, extra = self.folder / f"step-{state.global_step}", {"step.json": {"step": state.global_step}}
            if self.base is not None:
                save_like_base(model, self.tokenizer, folder, self.base, extra, state=full)
            else:
                save_bf16(model, self.tokenizer, folder, extra, state=full)


class ProgressCallback(TrainerCallback):
    """Forwards each step's logged metrics to a :class:`JobContext` and honours its stop flag.

    Also keeps the last logged metrics (``.last``) for the run's summary, and counts the steps whose
    logged loss or gradient norm was NaN or Inf (``.nonfinite_steps``, the first at ``.first_nonfinite_step``).

    ``reduce`` (FSDP2): each process's trainer logs its own shard of the batch; the metrics are combined over
    the processes (:func:`~subnetviz.training.sharded.reduce_metrics`) and written back into the logs, so the
    callbacks after this one (TensorBoard) see what a DDP run logs. It must therefore be the trainer's first
    callback (:func:`build_trainer` puts it there).
    """

    def __init__(self, ctx=None, total: int = 0, is_main: bool = True, any_rank=None, reduce=None):
        self.ctx = ctx
        self.total = total
        self.is_main = is_main  # a one-process view (FSDP2) makes every rank "world process zero"
        self.any_rank = any_rank  # FSDP2: bool -> bool, True if any process says so (they stop together)
        self.reduce = reduce  # FSDP2: this process's metrics -> every process's combined (a collective)
        self.last: dict[str, float] = {}
        self.train_seconds: float | None = None
        self.nonfinite_steps = 0
        self.first_nonfinite_step: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        numeric = {
            k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if "train_runtime" in numeric:  # the end-of-training summary line, not a step
            self.train_seconds = numeric["train_runtime"]
            return
        if self.reduce is not None:  # (every process logs every step: the collective lines up)
            numeric = self.reduce(numeric)
            if logs is not None:
                logs.update(numeric)
        self.last = numeric
        if any(not math.isfinite(numeric[k]) for k in ("loss", "grad_norm") if k in numeric):
            self.nonfinite_steps += 1
            if self.first_nonfinite_step is None:
                self.first_nonfinite_step = int(state.global_step)
        if self.ctx is not None and state.is_world_process_zero and self.is_main:
            self.ctx.progress(state.global_step, self.total or state.max_steps, **numeric)

    def on_step_end(self, args, state, control, **kwargs):
        stop = self.ctx is not None and self.ctx.should_stop()
        if self.any_rank is not None:
            stop = self.any_rank(stop)
        if stop:
            control.should_training_stop = True
