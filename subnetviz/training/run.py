"""Run one training job: :func:`train` (library) and :func:`run_job` (the ``train`` job kind).

:func:`train` builds the TRL trainer, refuses a mask that does not fit the model before the first
step, trains, and writes into a hidden ``.<name>.<pid>-<random>.partial`` folder (one per run, beside
``output_dir``) that is renamed to ``output_dir`` only when everything (model, checkpoints, summary) is
written, so a crash never leaves a folder that looks complete. While it lives, the run holds an
``fcntl.flock`` on ``<partial>.lock``: a later run with the same ``output_dir`` removes only partial
folders whose lock nobody holds (crash leftovers) and refuses to start while another run holds one.
Publishing never replaces anything: when ``output_dir`` appeared during the run (another run, a user),
the finished model is kept as ``<name>.unpublished-<pid>-<random>`` and the run fails saying so; so is a model
whose bitwise check against the base fails (an entry outside the mask changed: its ``train_summary.json``, with the
counts, is kept beside it) or that anything else failed after it was saved: a trained model is never deleted before
its check has passed (a job's is kept in its run folder, as ``outputs.tmp`` goes when it fails).
TensorBoard events of a run outside a job folder go to ``<name>.tensorboard/<pid>-<random>/`` (one
TensorBoard run per training run, never mixed). The folder then holds:

- the model (stored as the base stores it: its tensors, each in the base's stored dtype; tied weights
  tied) + tokenizer, ``train_config.json`` (the config as run),
- ``subnetwork_mask.safetensors`` (masked runs: the mask actually used, e.g. the random one; a tied head's own
  entry merged into the embedding's, as the model stores them),
- ``checkpoints/step-<k>/`` for each of ``save_steps``,
- ``train_summary.json``: steps done, final metrics, accuracy, seconds, and the bitwise checks
  against the base (``outside_mask_identical``, changed entries inside/outside) of the saved
  model (``mask_check``, with the weights files it read: size, mtime, sha256) and of the gathered full fp32 state
  dict (``gathered_check``), the device it trained on (``device``); for FSDP2 the evidence that it was active
  (``fsdp2``: DTensor parameters, mesh size, local vs full sizes),
  for ZeRO likewise (``zero``: stage, partitioned parameters, local vs full sizes, masked steps),
- ``accelerate_config.yaml`` for a launched multi-process run.

Under ``accelerate launch`` every process runs :func:`train`; only the main process saves. A
config with a multi-process ``strategy`` is launched by :func:`launch_and_train`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from transformers import TrainerCallback

from subnetviz.cache import atomic_write
from subnetviz.checkpoints.models import meta_model
from subnetviz.errors import ConfigError, JobError, MaskError, SubnetvizError
from subnetviz.jobs.context import STATUS_FILE, JobContext
from subnetviz.training import sharded, zero
from subnetviz.training.config import TrainConfig, check_processes_fit, job_train_config, train_device, weights_record
from subnetviz.training.evaluate import evaluate_accuracy
from subnetviz.training.mask_fit import check_mask_fits
from subnetviz.training.mask_origin import dense_mask_note, densities
from subnetviz.training.masking import (
    MaskedUpdateCallback,
    check_outside_mask,
    check_state_outside_mask,
    load_training_mask,
    tied_heads,
)
from subnetviz.training.trainers import (
    CheckpointCallback,
    ProgressCallback,
    build_trainer,
    save_like_base,
    tensorboard_dir,
)
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
    num_processes: int = 1  # processes that trained together (accelerate launch / DDP / FSDP2)
    strategy: str = "single"  # the config's strategy (single, ddp, fsdp2, zero2, zero3)
    gathered_check: dict | None = None  # MaskCheck of the gathered full (fp32) state dict, before the save
    fsdp2: dict | None = None  # sharded.fsdp2_evidence(): DTensor parameters, mesh size, local vs full numel
    zero: dict | None = None  # zero.zero_evidence() of the DeepSpeed engine, with the steps the mask was applied
    nonfinite_steps: int = 0  # steps whose logged loss or grad_norm was NaN or Inf (the run diverged if > 0)
    first_nonfinite_step: int | None = None  # the first of them
    device: str | None = None  # the device the trainer trained on (the main process's: "cpu", "cuda:0", ...)

    def to_dict(self) -> dict:
        return asdict(self)


class _Partial:
    """This run's hidden work folder beside ``out``: ``.<name>.<tag>.partial``, unique per run (``tag`` =
    pid and random hex), and ``<partial>.lock``, which the run holds (``fcntl.flock``) while it lives.

    Only the main process of a multi-process run writes it (the other ranks never touch the folder).
    """

    def __init__(self, out: Path):
        self.out = out
        self.tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.path = out.with_name(f".{out.name}.{self.tag}{PARTIAL_SUFFIX}")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._fd: int | None = None
        self.published = False  # renamed to ``out``: from then on the run is complete, its events with it

    def acquire(self) -> None:
        """Take the lock, clear the partial folders of dead runs at the same ``output_dir``, refuse to start
        beside a live one, and create the (empty) folder."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        while True:  # a cleaner may take a lock file between its creation and its lock, judge it dead, unlink it
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a cleaner holds it for a moment: again, with the file it leaves
                os.close(fd)
                time.sleep(0.05)
                continue
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:  # unlinked by a cleaner: this lock guards nothing
                same = False
            if same:
                break
            os.close(fd)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        live = _clear_dead_partials(self.out, keep=self.tag)
        if live:
            raise JobError(
                f"output_dir {self.out}: another training run (pid {live[0][0]}) is writing it now "
                f"(its work folder {live[0][1]}); choose another output_dir."
            )
        self.path.mkdir()

    def remove(self) -> None:
        """Delete the folder (if still there) and give up the lock."""
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            self.lock_path.unlink(missing_ok=True)  # before closing: a waiting cleaner finds no folder to take
            os.close(self._fd)
            self._fd = None

    def unpublished(self) -> Path:
        """Where a finished model that is not published is kept: ``<name>.unpublished-<tag>`` beside ``out``; for
        a job (``RUN_DIR/outputs.tmp/<name>``, removed when the job fails) in the run folder itself."""
        folder = self.out.parent.parent if self.out.parent.name == "outputs.tmp" else self.out.parent
        return folder / f"{self.out.name}.unpublished-{self.tag}"

    def keep(self) -> Path:
        """Keep the work folder (a trained, saved model) as :meth:`unpublished` and give up the lock."""
        kept = self.unpublished()
        os.rename(self.path, kept)
        self.release()
        return kept

    def publish(self) -> None:
        """Rename the finished folder to ``out``; never over an existing ``out`` (``rename(2)`` refuses a
        non-empty target and an existing one is refused before): the model is then kept in a visible
        ``<name>.unpublished-<tag>`` folder and a one-line :class:`JobError` says where."""
        try:
            if os.path.lexists(self.out):
                raise FileExistsError(self.out)
            os.rename(self.path, self.out)
        except OSError as exc:
            if not isinstance(exc, FileExistsError) and exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            kept = self.unpublished()
            os.rename(self.path, kept)
            self.release()
            raise JobError(
                f"output_dir {self.out} appeared while this run trained (another run wrote it) and was not "
                f"replaced; this run's finished model is kept in {kept}."
            ) from None
        self.published = True
        self.release()


PARTIAL_SUFFIX = ".partial"


def _partial_entries(out: Path) -> dict[str, dict[str, Path]]:
    """The partial folders and lock files of runs at ``out``, by tag: ``{tag: {"dir": ..., "lock": ...}}``."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(\d+-[0-9a-f]{{8}}){re.escape(PARTIAL_SUFFIX)}(\.lock)?")
    found: dict[str, dict[str, Path]] = {}
    try:
        entries = list(out.parent.iterdir())
    except FileNotFoundError:
        return found
    for p in entries:
        if m := pattern.fullmatch(p.name):
            found.setdefault(m.group(1), {})["lock" if m.group(2) else "dir"] = p
    return found


def _clear_dead_partials(out: Path, keep: str) -> list[tuple[str, Path]]:
    """Remove the partial folders (and lock files) at ``out`` whose owner is gone (nobody holds the lock, or
    no lock at all: a run creates its lock before its folder and deletes it after); returns ``(pid, folder)``
    of the live runs. A dead run whose work folder is still there never published a model (killed: SIGKILL, the
    OOM killer), so its TensorBoard events go with it, as an interrupted run's do (:func:`_drop_events`): its
    truncated curve read as a second run of the model. A run killed after it published or kept its model (its
    folder renamed, its lock not yet removed) keeps them."""
    live = []
    for tag, e in sorted(_partial_entries(out).items()):
        if tag == keep:
            continue
        lock, folder = e.get("lock"), e.get("dir", out.with_name(f".{out.name}.{tag}{PARTIAL_SUFFIX}"))
        fd = None
        if lock is not None:
            try:
                fd = os.open(lock, os.O_RDWR)
            except FileNotFoundError:
                fd = None  # its owner just finished
            else:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    live.append((tag.split("-")[0], folder))
                    continue
        try:
            if "dir" in e:
                _remove_events(out, tag)
            shutil.rmtree(folder, ignore_errors=True)
            if lock is not None:
                lock.unlink(missing_ok=True)
        finally:
            if fd is not None:
                os.close(fd)
    return live


def _events_dir(out: Path, tag: str) -> Path:
    """Where this run's TensorBoard events go: a job's own ``RUN_DIR/tensorboard``, else a folder of its own
    under ``<output_dir>.tensorboard`` (runs that share an ``output_dir`` never mix their events)."""
    folder = tensorboard_dir(out)
    return folder if out.parent.name == "outputs.tmp" else folder / tag


def _drop_events(run: _Run) -> None:
    """An interrupted run's TensorBoard events (Ctrl-C says 'nothing was written'; they were left under
    ``<output_dir>.tensorboard``): this run's own folder, and ``<output_dir>.tensorboard`` only when that leaves it
    empty; other runs' events stay. A job's events stay in its run folder, beside its log."""
    _remove_events(run.out, run.work.tag)


def _remove_events(out: Path, tag: str) -> None:
    """Remove the TensorBoard events of run ``tag`` at ``out``: its own folder, and ``<output_dir>.tensorboard`` only
    when that leaves it empty. A job's (``RUN_DIR/tensorboard``, not the run's own) are never removed here."""
    events = _events_dir(out, tag)
    if events == tensorboard_dir(out):
        return
    shutil.rmtree(events, ignore_errors=True)
    try:
        events.parent.rmdir()  # (refused while another run's folder is in it)
    except OSError:
        pass


def train(cfg: TrainConfig, ctx: JobContext | None = None) -> TrainResult:
    """Train ``cfg`` (full or subnetwork-only) and save the result to ``cfg.output_dir``.

    Runs in this process (or as one rank of an ``accelerate launch``); starting the processes of a
    multi-process ``strategy`` is :func:`launch_and_train`'s job.
    """
    # every row's length on the main rank only (the notes go to its log; each rank would tokenize the whole data)
    notes = cfg.validate(all_rows=os.environ.get("RANK", "0") == "0")
    # the base's config.json bounded by its weights before the trainer builds what it describes (10^30 layers were
    # built for good, 10^9 key/value heads allocated): one line naming the key and both numbers
    meta_model(cfg.base)
    _use_device(cfg, notes)
    if cfg.strategy in zero.ZERO_STRATEGIES:
        if why := zero.zero_available():
            raise ConfigError(why + ".")
        zero.prepare_cpu()
    start = time.time()
    scratch = Path(tempfile.mkdtemp(prefix="subnetviz-trl-"))
    run = None
    try:
        run = _Run(cfg, ctx, start, sharded.init_world() if cfg.strategy == "fsdp2" else None)
        run.notes = notes
        return _train(run, scratch)
    except BaseException as exc:
        if run is not None:
            if run.saved and isinstance(exc, Exception) and run.work.path.is_dir():
                # A trained model is never thrown away: a failed check (or anything after the save) keeps it.
                _kept_failure(exc, run.work.keep(), ctx)
            run.work.remove()  # (a no-op on the ranks that never took it)
            if isinstance(exc, KeyboardInterrupt) and not run.work.published:
                # (an interrupt once the model is published stopped only what is said after it: the command line
                # says the model is complete, and its TensorBoard events are its curves)
                _drop_events(run)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


_LIBRARY_ROOTS = ("site-packages", "dist-packages")


def library_failure(exc: Exception, during: str) -> Exception:
    """A :class:`JobError`, one line, for ``exc`` raised inside an installed library (the innermost frame of its
    traceback under site-packages: TRL, transformers, accelerate, torch, ...): the library and its version, the
    exception and where it was raised. A run of Llama-4's text model ended in a 40-line traceback from TRL's fused
    LM head ("'MoeCausalLMOutputWithPast' object has no attribute 'last_hidden_state'"). ``exc`` itself where it is
    subnetviz's own: a :class:`SubnetvizError`, or raised in subnetviz's code (a bug shows its traceback)."""
    import importlib.metadata
    import traceback

    if isinstance(exc, SubnetvizError):
        return exc
    frames = traceback.extract_tb(exc.__traceback__)
    parts = Path(frames[-1].filename).parts if frames else ()
    root = next((i for i, p in enumerate(parts) if p in _LIBRARY_ROOTS), None)
    if root is None or root + 1 >= len(parts):
        return exc
    package = parts[root + 1].removesuffix(".py")
    if package == "subnetviz":  # (an installed copy, pip install .: its own bug keeps its traceback)
        return exc
    try:
        version = " " + importlib.metadata.version(package)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        version = ""
    where = "/".join(parts[root + 1 :])
    said = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    return JobError(
        f"{during} failed inside {package}{version} ({said}; at {where}:{frames[-1].lineno} in "
        f"{frames[-1].name}): the library does not take this model or setting; nothing was saved."
    )


def _use_device(cfg: TrainConfig, notes: list[str]) -> None:
    """Make the run's device (:func:`~subnetviz.training.config.train_device`) the one its trainer takes. A
    single process given ``cuda:N`` makes that GPU the current one (accelerate trains on the current CUDA device);
    a multi-process run puts one process on each GPU, so an index is noted as not used. ``cpu`` is the trainer's
    ``use_cpu`` (:func:`~subnetviz.training.trainers.trainer_args`)."""
    device = train_device()
    if not device.startswith("cuda:"):
        return
    if cfg.strategy == "single":
        torch.cuda.set_device(device)
    elif os.environ.get("RANK", "0") == "0":
        notes.append(
            f"note: SUBNETVIZ_DEVICE names {device}; a {cfg.strategy} run puts each of its processes on a GPU of its "
            "own (cuda:0 ...), so the index is not used"
        )


class _Run:
    """One :func:`train` call: its config and job context, where it writes, and this process's place
    in the run (main or not, how many processes, the FSDP2 evidence) once the trainer is built."""

    def __init__(self, cfg: TrainConfig, ctx: JobContext | None, start: float, world):
        self.cfg, self.ctx, self.start, self.world = cfg, ctx, start, world
        self.out = Path(cfg.output_dir)
        self.work = _Partial(self.out)
        self.partial = self.work.path
        self.progress = ProgressCallback(
            ctx,
            total=cfg.steps,
            is_main=world is None or world.is_main,
            any_rank=sharded.any_rank if world else None,
            reduce=sharded.reduce_metrics if world else None,  # FSDP2: each process logs its own shard
        )
        self.is_main, self.n_proc, self.evidence, self.device = True, 1, None, None
        self.zero_installer: _ZeroMaskInstaller | None = None
        self.notes: list[str] = []  # TrainConfig.validate's (rows TRL leaves out), logged by the main process
        self.saved = False  # the trained model is in the work folder: from then on a failure keeps it

    def attach(self, trainer) -> None:
        self.device = str(trainer.args.device)  # (accelerate's placement: what train_device chose, as trained on)
        if self.world is not None:
            self.is_main, self.n_proc = self.world.is_main, self.world.size
            self.evidence = sharded.fsdp2_evidence(trainer.model)
        else:
            self.is_main = trainer.accelerator.is_main_process
            self.n_proc = int(trainer.accelerator.num_processes)

    def gather(self):
        """The collective that assembles the full state dict on every rank (None: the model's own)."""
        if self.cfg.strategy in zero.ZERO_STRATEGIES:
            return zero.zero_full_state  # fp32 master weights gathered from the ZeRO partitions
        return sharded.full_state_dict if self.world is not None else None

    def result(self, steps_done: int, **fields) -> TrainResult:
        return TrainResult(
            str(self.out),
            steps_done,
            self.progress.last,
            fields.pop("accuracy", None),
            time.time() - self.start,
            train_seconds=self.progress.train_seconds,
            num_processes=self.n_proc,
            strategy=self.cfg.strategy,
            zero=self.zero_installer.evidence if self.zero_installer is not None else None,
            nonfinite_steps=self.progress.nonfinite_steps,
            first_nonfinite_step=self.progress.first_nonfinite_step,
            device=self.device,
            **fields,
        )


def _train(run: _Run, scratch: Path) -> TrainResult:
    cfg, ctx = run.cfg, run.ctx
    events = _events_dir(run.out, run.work.tag)
    trainer = build_trainer(cfg, scratch, [run.progress], world=run.world, events_dir=events)
    model = trainer.model
    run.attach(trainer)
    masks, mask_set, run.zero_installer = _add_mask_callbacks(cfg, trainer, run.notes)
    if mask_set is not None and (note := dense_mask_note(densities(mask_set.masks))):
        run.notes.append(note)  # (the page said it on submit only; a run from the CLI or a config said nothing)
    gather = run.gather()
    if cfg.save_steps:
        trainer.add_callback(
            CheckpointCallback(
                cfg.save_steps,
                run.partial / "checkpoints",
                trainer.processing_class,
                run.is_main,
                gather=gather,
                base=cfg.base,
            )
        )
    if run.is_main:
        run.work.acquire()  # clears what crashed earlier runs at the same output_dir left
    _announce(run)
    if run.is_main:
        _log(ctx, f"TensorBoard events: {events}")
    try:
        trainer.train()
    except Exception as exc:  # (one line where a library failed: TRL's fused head on a model it cannot read)
        raise library_failure(exc, "training") from exc
    steps_done = int(trainer.state.global_step)
    stopped = _stop_requested(ctx)
    if steps_done == 0 and not stopped:  # (every rank alike: each saw the same empty epoch)
        # The model would be the base under a new name, filed as a result: a run that trained nothing fails.
        raise JobError(
            f"the run trained 0 of {cfg.steps} steps: the trainer drew no batch from data {cfg.data} (too few "
            "rows for one step?); nothing was saved."
        )
    state = gather(model) if gather is not None and not stopped else None  # every rank takes part
    if stopped or not run.is_main:
        if run.is_main:
            run.work.remove()
        return run.result(steps_done, stopped=stopped, is_main_process=run.is_main)
    gathered = _save(run, trainer, state, masks, mask_set)
    del trainer, model, state  # free the training copy before the saved model is read back
    return _finish(run, steps_done, masks, gathered)


def _add_mask_callbacks(cfg: TrainConfig, trainer, notes: list[str] | None = None):
    """The run's mask (refused before any step when it does not fit the model) and the callbacks that
    keep every entry outside it unchanged; returns ``(masks, mask_set, ZeRO installer)`` (masks and
    mask set None for a full run; the installer None but for ZeRO)."""
    model = trainer.model
    masks = mask_set = None
    if cfg.mask is not None:
        # DTensors report their full shape; ZeRO-3 partitioned parameters keep it as ds_shape.
        shapes = {n: tuple(getattr(p, "ds_shape", p.shape)) for n, p in model.named_parameters()}
        # (how its names were matched, entries of towers the model does not build: into the run's log)
        masks, mask_set = load_training_mask(cfg.mask, shapes, seed=cfg.seed, tied=tied_heads(model), notes=notes)
    decay_names = set(trainer.get_decay_parameter_names(model))
    is_zero = cfg.strategy in zero.ZERO_STRATEGIES
    trainer.add_callback(MaskedUpdateCallback(masks, cfg.weight_decay, decay_names, zero=is_zero))
    installer = _ZeroMaskInstaller(trainer, masks, cfg.weight_decay, decay_names) if is_zero else None
    if installer is not None:
        trainer.add_callback(installer)
    return masks, mask_set, installer


def _announce(run: _Run) -> None:
    cfg = run.cfg
    if not run.is_main:
        return
    _log(
        run.ctx,
        f"training {cfg.algorithm} on {cfg.data} from {cfg.base} ({'mask ' + cfg.mask if cfg.mask else 'full'}; "
        f"strategy {cfg.strategy}, {run.n_proc} process(es), on {run.device})",
    )
    if run.evidence is not None:
        _log(run.ctx, f"FSDP2 active: {json.dumps(run.evidence)}")
    for note in run.notes:
        _warn(run.ctx, note)


def _stop_requested(ctx: JobContext | None) -> bool:
    stopped = ctx is not None and ctx.should_stop()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        stopped = sharded.any_rank(stopped)  # every rank takes the same branch (the gather is collective)
    return stopped


def _save(run: _Run, trainer, state, masks, mask_set) -> dict:
    """Write the model (as the base stores it), config, mask and launch config into the work folder; returns the
    bitwise check of the full state dict (gathered, or the model's own) outside the mask."""
    cfg, partial = run.cfg, run.partial
    if state is None:
        state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    save_like_base(
        trainer.model, trainer.processing_class, partial, cfg.base, {"train_config.json": cfg.to_dict()}, state=state
    )
    run.saved = True
    if mask_set is not None:
        from subnetviz.masks import save_mask_set

        save_mask_set(partial / MASK_FILE, mask_set)
    if os.environ.get(sharded.ACCELERATE_CONFIG_ENV):
        shutil.copyfile(os.environ[sharded.ACCELERATE_CONFIG_ENV], partial / sharded.ACCELERATE_CONFIG)
    return check_state_outside_mask(cfg.base, state, masks).to_dict()


def _finish(run: _Run, steps_done: int, masks, gathered: dict) -> TrainResult:
    """Check the saved model against the base, evaluate it, write the summary and publish the folder."""
    cfg, ctx, partial = run.cfg, run.ctx, run.partial
    # with the weights it read, so a page can tell when the model on disk is no longer the one checked
    check = {**check_outside_mask(cfg.base, partial, masks).to_dict(), "weights": weights_record(partial)}
    for name, c in (("saved model", check), ("gathered full state dict", gathered)):
        if not c["tensors_compared"]:
            raise MaskError(
                f"the {name} has no tensor in common with base {cfg.base}, so nothing shows that the entries outside "
                "the mask are unchanged."
            )
    changed = [
        (name, c)
        for name, c in (("saved model", check), ("gathered full state dict", gathered))
        if not c["outside_mask_identical"]
    ]
    if changed:
        # A subnetwork-only run whose weights moved outside its mask is no subnetwork-only result: it fails, and
        # train() keeps the model unpublished with this summary beside it (the evidence), as the module says.
        result = run.result(steps_done, mask_check=check, gathered_check=gathered, fsdp2=run.evidence)
        (partial / SUMMARY_FILE).write_text(json.dumps({**result.to_dict(), **version_info()}, indent=2) + "\n")
        raise MaskError(
            "; ".join(f"{c['changed_outside']:,} entries outside the mask changed in the {name}" for name, c in changed)
            + f" (compared bitwise with base {cfg.base}); a subnetwork-only run must leave them bit-identical."
        )
    accuracy = evaluate_accuracy(partial, cfg.eval_data) if cfg.eval_data else None
    result = run.result(steps_done, accuracy=accuracy, mask_check=check, gathered_check=gathered, fsdp2=run.evidence)
    if result.zero is not None:
        _log(ctx, f"DeepSpeed ZeRO active: {json.dumps(result.zero)}")
    if result.nonfinite_steps:
        _warn(
            ctx,
            f"WARNING: the run diverged: loss or gradient norm NaN/Inf at {result.nonfinite_steps} step(s), "
            f"first at step {result.first_nonfinite_step}",
        )
    (partial / SUMMARY_FILE).write_text(json.dumps({**result.to_dict(), **version_info()}, indent=2) + "\n")
    run.work.publish()
    # a job's model is in RUN_DIR/outputs.tmp, renamed to RUN_DIR/outputs once the job ends well: its final place said
    final = run.out.parent.parent / "outputs" / run.out.name if run.out.parent.name == "outputs.tmp" else run.out
    _log(ctx, f"saved {final} after {steps_done} steps ({result.seconds:.1f} s); accuracy {accuracy}")
    return result


class _ZeroMaskInstaller(TrainerCallback):
    """Puts :class:`~subnetviz.training.zero.ZeroGradientMask` on the DeepSpeed engine once the
    trainer has prepared it (``on_train_begin``); :attr:`evidence` is then the engine's
    :func:`~subnetviz.training.zero.zero_evidence` plus how many steps the mask was applied."""

    def __init__(self, trainer, masks, weight_decay, decay_names):
        self.trainer, self.masks = trainer, masks
        self.weight_decay, self.decay_names = weight_decay, decay_names
        self._mask: zero.ZeroGradientMask | None = None
        self._evidence: dict | None = None

    @property
    def evidence(self) -> dict | None:
        if self._evidence is None:
            return None
        return {**self._evidence, "mask_applied_steps": self._mask.steps, "mask_seconds": round(self._mask.seconds, 4)}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        tr = self.trainer
        masks = self.masks
        if masks is None:  # a full run: decay everywhere the trainer would
            masks = {
                n: torch.ones(p.ds_shape if hasattr(p, "ds_shape") else p.shape, dtype=torch.bool)
                for n, p in tr.model.named_parameters()
            }
        self._mask = zero.ZeroGradientMask(tr.model, masks, self.weight_decay, self.decay_names)
        self._mask.install(tr.accelerator, tr.optimizer)
        self._evidence = zero.zero_evidence(tr.accelerator.deepspeed_engine_wrapped.engine)


def launch_and_train(cfg: TrainConfig, folder: Path, ctx: JobContext | None = None) -> TrainResult:
    """Start ``cfg.num_processes`` processes for ``cfg.strategy`` (``accelerate launch``, the config
    and ``accelerate_config.yaml`` written to ``folder``), wait, and read the run's summary.

    ``ctx``: a job's context; the launched rank 0 reports progress into its run folder.
    """
    cfg.validate()
    check_processes_fit(cfg.strategy, cfg.num_processes)  # where they start (a job of Ray's is checked here only)
    if cfg.mask is not None:  # refused here, from headers, before any process is launched
        check_mask_fits(cfg.base, cfg.mask_path)
    _check_rank_memory(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "train_config.launch.json"
    config_file.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    code = sharded.launch(
        cfg.strategy, cfg.num_processes, config_file, folder, run_dir=ctx.run_dir if ctx is not None else None
    )
    summary = Path(cfg.output_dir) / SUMMARY_FILE
    if ctx is not None and ctx.should_stop():
        return TrainResult(cfg.output_dir, 0, {}, None, 0.0, stopped=True, strategy=cfg.strategy)
    if code != 0 or not summary.is_file():
        where = "see the log" if ctx is not None else "see their output above"  # (a foreground run has no log)
        raise JobError(f"the {cfg.num_processes} {cfg.strategy} training processes failed (exit code {code}); {where}.")
    d = json.loads(summary.read_text())
    return TrainResult(**{k: d[k] for k in TrainResult.__dataclass_fields__ if k in d})


def _check_rank_memory(cfg: TrainConfig) -> None:
    """Refuse, in one line naming what the processes need and what is available (ConfigError), a launch whose
    processes would hold more than the memory available (:func:`~subnetviz.config.memory_shortfall`): each loads
    the whole model (its size from the base's headers) besides its libraries (:func:`sharded.rank_host_bytes`).
    256 processes of the demo model took ~165 GiB, and an out-of-memory kill takes the server's other work with it."""
    from subnetviz.checkpoints.sources import float32_bytes
    from subnetviz.config import gib, memory_shortfall

    device = train_device()
    reference = cfg.algorithm == "dpo" or (cfg.algorithm == "grpo" and cfg.beta > 0)
    per = sharded.rank_host_bytes(
        cfg.strategy, cfg.num_processes, float32_bytes(cfg.base) // 4, device=device, reference=reference
    )
    if short := memory_shortfall(cfg.num_processes * per):
        held = "the model" if device.startswith("cuda") else "the model, its gradients and optimizer states"
        raise ConfigError(
            f"{cfg.num_processes} {cfg.strategy} training processes, about {gib(per)} each ({held} in float32 and "
            f"{gib(sharded.RANK_FLOOR_BYTES)} of libraries): the run {short}; refused before they start: ask for "
            "fewer processes, or use a machine with more memory."
        )


def _kept_failure(exc: Exception, kept: Path, ctx: JobContext | None) -> None:
    """Raise ``exc`` saying where the trained model is kept: a one-line error of the same kind for a
    :class:`SubnetvizError` (a failed check), else ``exc`` itself with a note (a bug keeps its traceback)."""
    where = f"the trained model is kept, unpublished, in {kept}"
    _warn(ctx, f"training failed after the model was saved; {where}")
    if isinstance(exc, SubnetvizError):
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        try:
            new = type(exc)(f"{first}; {where}.")
        except Exception:  # noqa: BLE001 - an error class that takes other arguments
            new = JobError(f"{first}; {where}.")
        raise new from None
    exc.add_note(where)
    raise exc


def _log(ctx: JobContext | None, message: str) -> None:
    if ctx is not None:
        ctx.log(message)


def _warn(ctx: JobContext | None, message: str) -> None:
    """A warning: into the job's log, or on stderr for a run without a job context."""
    if ctx is not None:
        ctx.log(message)
    else:
        print(message, file=sys.stderr, flush=True)


def run_job(config: dict, ctx: JobContext) -> None:
    """The ``train`` job kind: the model goes to ``RUN_DIR/outputs/model`` (``output_dir`` is not used)."""
    if config.get("output_dir"):
        ctx.log(f"note: output_dir {config['output_dir']!r} is not used by jobs; the model goes to outputs/model")
    cfg = replace(job_train_config(config), output_dir=str(ctx.out_dir / "model"))
    if sharded.needs_launch(cfg.strategy):
        result = launch_and_train(cfg, ctx.run_dir, ctx)
    else:
        result = train(cfg, ctx)
    if result.stopped or not result.is_main_process:
        return
    final = ctx.run_dir / "outputs" / "model"  # where the runner's rename puts it
    summary = replace(result, output_dir=str(final))
    for name in ("train_config.json", SUMMARY_FILE):  # record the final path, not outputs.tmp
        path = ctx.out_dir / "model" / name
        path.write_text(json.dumps({**json.loads(path.read_text()), "output_dir": str(final)}, indent=2) + "\n")
    (ctx.out_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    _final_status(ctx, result, cfg.steps)


def _final_status(ctx: JobContext, result: TrainResult, total: int) -> None:
    """The run's ``status.json`` after training: the last step with its metrics and the held-out accuracy (the
    registry's last metrics). ``metrics.jsonl`` is not appended to: :class:`ProgressCallback` logged that step
    already, and ``ctx.progress`` logged it a second time (the curves drew the last point twice, and their
    moving average weighed it twice)."""
    extra = {"accuracy": result.accuracy} if result.accuracy is not None else {}
    metrics = {k: v for k, v in {**result.metrics, **extra}.items() if isinstance(v, int | float)}
    status = {"step": int(result.steps_done), "total": int(total), "metrics": metrics, "time": time.time()}
    atomic_write(ctx.run_dir / STATUS_FILE, json.dumps(status))
