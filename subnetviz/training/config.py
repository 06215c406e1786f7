"""The training job's configuration: :class:`TrainConfig`, its validation and its JSON form.

One config describes one run (full finetune or subnetwork-only) of SFT, DPO or GRPO with TRL.
It is what the app's launch form builds, what ``python -m subnetviz train --config FILE`` reads
and what ``train_config.json`` beside every trained model records.

Decisions documented here:
- ``beta``: for GRPO it is the KL coefficient (0 = no reference model, TRL's default). For DPO a
  ``beta`` of 0 makes the loss flat (TRL's sigmoid loss -logsigmoid(beta * margin) is log 2 whatever the model:
  zero gradient), so ``beta == 0`` means "TRL's default 0.1", and a DPO config holds (and records, in
  ``train_config.json``) 0.1, the value that trains; :meth:`TrainConfig.effective_beta` says which value a run uses.
- ``strategy`` / ``num_processes``: how many processes train together and how they share the model
  (``single``, ``ddp``, ``fsdp2``, ``zero2``, ``zero3``: :mod:`subnetviz.training.sharded`); ``batch_size`` is
  per process.
- ``mask``: ``None`` (full finetune), a mask file, or ``"random:<mask file>"`` (a random mask with
  the same per-tensor density as that file, drawn with ``seed``: the chance baseline).
- The device is not a field: a run trains where ``auto`` points (:func:`train_device`, ``SUBNETVIZ_DEVICE`` as
  for the analyses), and its ``train_summary.json`` records the device it trained on.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from subnetviz.checkpoints.models import TOKENIZER_FILES  # a base folder's tokenizer: any of these
from subnetviz.errors import ConfigError, suggest

ALGORITHMS = ("sft", "dpo", "grpo")
STRATEGIES = ("single", "ddp", "fsdp2", "zero2", "zero3")
JOB_KEYS = ("kind", "num_gpus")  # a job config's keys that are not the run's
DPO_DEFAULT_BETA = 0.1
RANDOM_PREFIX = "random:"
MAX_PROCESSES = 1024  # processes one run launches (accelerate launch would try to start any number asked)
# Upper bounds of the integers a run takes (far above any real run; ``steps`` becomes the registry's progress total,
# and 2**63 there overflowed SQLite's INTEGER after the run had started).
MAX_STEPS = 10_000_000
MAX_BATCH_SIZE = 65_536  # per process; also the most GRPO generations per prompt
MAX_COMPLETION_LENGTH = 131_072  # GRPO's generated tokens per completion
MAX_SEED = 2**32 - 1  # NumPy's seed range
# The longest training sequence (prompt + completion, in tokens of the base's tokenizer) of SFT and DPO: TRL's
# default ``max_length``, passed to SFTConfig / DPOConfig explicitly so that validation and the trainer agree. A row
# whose prompt alone fills it keeps no completion token: TRL drops it (validate refuses data where every row would be).
MAX_LENGTH = 1024
# The transformers schedules that run with the arguments a run passes (no eval set, no lr_scheduler_kwargs, no
# warmup): reduce_lr_on_plateau and greedy need an evaluation strategy, cosine_with_min_lr and
# cosine_warmup_with_min_lr a min_lr, warmup_stable_decay its num_decay_steps; constant_with_warmup, with no warmup
# field in a config, ran exactly as constant (WARMUP_ONLY). polynomial decays to transformers' lr_end of 1e-7, not 0
# (POLYNOMIAL_LR_END), so it needs a learning rate above that.
SCHEDULERS = (
    "constant",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
)
WARMUP_ONLY = {"constant_with_warmup": "constant"}  # schedules that differ from another only by a warmup
POLYNOMIAL_LR_END = 1e-7  # get_polynomial_decay_schedule_with_warmup's lr_end (it raises for a learning rate <= it)


@dataclass
class TrainConfig:
    """One training run. Paths are plain strings so the config round-trips through JSON."""

    algorithm: str  # "sft" | "dpo" | "grpo"
    base: str  # HF model folder with its tokenizer
    data: str  # JSONL; SFT {"prompt","completion"}, DPO {"prompt","chosen","rejected"}, GRPO {"prompt","answer"}
    output_dir: str  # final folder; must not exist yet
    mask: str | None = None  # None | mask .safetensors | "random:<mask .safetensors>"
    steps: int = 100
    learning_rate: float = 1e-5
    seed: int = 0
    batch_size: int = 32
    num_generations: int = 8  # GRPO
    max_completion_length: int = 8  # GRPO
    beta: float = 0.0  # GRPO KL coefficient; DPO beta (0 -> 0.1, see module docstring)
    weight_decay: float = 0.0  # decoupled (AdamW-style), applied only inside the mask
    save_steps: list[int] = field(default_factory=list)  # extra checkpoints -> output_dir/checkpoints/step-<k>/
    eval_data: str | None = None  # JSONL {"prompt","answer"}: greedy exact-match accuracy after training
    max_grad_norm: float = 1.0  # gradient clipping (0 = off); clipping a masked gradient keeps zeros zero
    lr_scheduler_type: str = "constant"  # one of SCHEDULERS ("constant", "linear", "cosine", ...)
    bf16: bool = True  # bf16 autocast (TRL's default) with fp32 master weights; False = all fp32
    name: str | None = None  # a label for the run (shown in the registry)
    strategy: str = "single"  # "single" | "ddp" | "fsdp2" | "zero2" | "zero3" (see subnetviz.training.sharded)
    num_processes: int = 1  # processes that train together (launched by accelerate launch / torchrun)

    def __post_init__(self):
        # DPO's beta 0 is TRL's default 0.1 (module docstring): held as the value that trains, so train_config.json
        # records 0.1, not a 0 that trained at 0.1. (Only a number: anything else is validate()'s to refuse.)
        if self.algorithm == "dpo" and type(self.beta) in (int, float) and self.beta == 0:
            self.beta = DPO_DEFAULT_BETA

    @property
    def effective_beta(self) -> float:
        if self.algorithm == "dpo" and self.beta == 0.0:
            return DPO_DEFAULT_BETA
        return float(self.beta)

    @property
    def mask_path(self) -> str | None:
        """The mask file (for ``random:`` masks, the file whose densities are copied)."""
        if self.mask is None:
            return None
        return self.mask[len(RANDOM_PREFIX) :] if self.mask.startswith(RANDOM_PREFIX) else self.mask

    @property
    def random_mask(self) -> bool:
        return self.mask is not None and self.mask.startswith(RANDOM_PREFIX)

    def validate(self, *, check_output: bool = True, all_rows: bool = False) -> list[str]:
        """Raise :class:`ConfigError` naming every field that is missing, unknown or out of range (whether a mask
        fits the base is :func:`subnetviz.training.mask_fit.check_mask_fits`'s, at submit and before a launch).

        ``check_output=False`` skips the "output_dir must not exist" rule (used when a job writes
        into its own fresh temporary folder). Data that TRL would drop entirely is refused: its rows are
        tokenized until one is kept. With ``all_rows`` (the training process's main rank) every row is, and the
        notes worth a line in the run's log (the rows TRL will drop) are returned; otherwise [].
        """
        problems = [
            *self._path_problems(check_output),
            *self._number_problems(),
            *self._schedule_problems(),
            *strategy_problems(self.strategy, self.num_processes),
        ]
        if problems:
            raise ConfigError("training config: " + "; ".join(problems) + ".")
        train_device()  # SUBNETVIZ_DEVICE naming no device here: refused now (at submit), not once the model loaded
        # The rows themselves: a bad file is refused here (naming file and line), not mid-job.
        from subnetviz.training.data import FIELDS, read_jsonl, rows_over_length

        rows = read_jsonl(self.data, self.algorithm)
        if self.algorithm == "grpo":
            self._enough_prompts(len(rows))
        if self.eval_data is not None:
            read_jsonl(self.eval_data, "eval")
        chat = any(isinstance(r[k], list) for r in rows for k in FIELDS[self.algorithm])
        context = base_context(self.base) if self.algorithm == "grpo" else None
        if not chat and self.algorithm not in ("sft", "dpo") and context is None:
            return []
        tok = _base_tokenizer(self.base)
        if chat:
            _needs_chat_template(tok, self.base, self.data)
        if self.algorithm not in ("sft", "dpo"):
            if context is not None:
                self._prompts_fit(rows, tok, context, all_rows)
            return []
        # TRL keeps the first MAX_LENGTH tokens of prompt + completion and drops rows left without a completion
        # token: with none left the run failed after the model had loaded (num_samples=0).
        dropped, fewest = rows_over_length(
            rows, tok, self.algorithm, MAX_LENGTH, until_kept=not all_rows, where=f"data {self.data!r}"
        )
        limit = f"within the limit of {MAX_LENGTH} tokens of prompt + completion (TRL's max_length)"
        if len(dropped) == len(rows):
            why = (
                f"every prompt alone takes {MAX_LENGTH} or more tokens of the base's tokenizer (the shortest: "
                f"{fewest}); shorten the prompts"
                if fewest is not None and fewest >= MAX_LENGTH
                else "the completions add no token after their prompts in the base's tokenizer"
            )
            raise ConfigError(f"data {self.data!r}: no row keeps a completion token {limit}: {why}.")
        if not dropped or not all_rows:
            return []
        which = ", ".join(str(i + 1) for i in dropped[:5]) + (", ..." if len(dropped) > 5 else "")
        return [
            f"note: data {self.data}: {len(dropped)} of {len(rows)} rows keep no completion token {limit} and are "
            f"left out of training (rows {which})"
        ]

    def _enough_prompts(self, n_rows: int) -> None:
        """Refuse GRPO data with fewer rows than one step takes. A step draws batch_size x num_processes /
        num_generations distinct prompts (each generated for num_generations times) and TRL's sampler drops a
        short last draw, so from fewer rows it yields no step: the run trained 0 steps, saved the base as its
        model and was reported as succeeded. (SFT and DPO cycle a short file.)"""
        per_step = self.batch_size * self.num_processes // self.num_generations
        if n_rows < per_step:
            procs = f" x {self.num_processes} processes" if self.num_processes > 1 else ""
            raise ConfigError(
                f"data {self.data!r} holds {n_rows} prompt(s); one GRPO step of batch_size {self.batch_size}{procs} "
                f"with num_generations {self.num_generations} takes {per_step} distinct prompts, so no step would "
                f"train; give at least {per_step} rows or lower batch_size."
            )

    def _prompts_fit(self, rows: list[dict], tok, context: int, all_rows: bool) -> None:
        """Refuse GRPO data with a prompt that leaves no room in the base's context for max_completion_length
        generated tokens (at submit the longest rows by characters; in the training process every row)."""
        from subnetviz.training.data import prompts_past_context

        room = context - self.max_completion_length
        if room < 1:
            raise ConfigError(
                f"training config: max_completion_length {self.max_completion_length} leaves no room for a prompt in "
                f"the base's context of {context} positions."
            )
        past = prompts_past_context(rows, tok, room, longest=None if all_rows else 64, where=f"data {self.data!r}")
        if past:
            rows_said = ", ".join(f"{i + 1} ({n} tokens)" for i, n in past[:5]) + (", ..." if len(past) > 5 else "")
            raise ConfigError(
                f"data {self.data!r}: {len(past)} prompt(s) take more than {room} tokens of the base's tokenizer, so "
                f"the {self.max_completion_length} generated after them run past its context of {context} positions "
                f"(rows {rows_said}); shorten them or lower max_completion_length."
            )

    def _path_problems(self, check_output: bool) -> list[str]:
        from subnetviz.config import not_a_file

        problems: list[str] = []
        if self.algorithm not in ALGORITHMS:
            problems.append(f"algorithm {self.algorithm!r} is unknown; expected one of {', '.join(ALGORITHMS)}")
        for name in ("base", "data", "output_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                problems.append(f"{name} must be a non-empty path")
        adapter = _base_adapter_problem(self.base) if isinstance(self.base, str) and self.base else None
        if adapter:
            problems.append(adapter)
        elif isinstance(self.base, str) and self.base and not (Path(self.base) / "config.json").is_file():
            problems.append(f"base {self.base!r} is not a Hugging Face model folder (no config.json there)")
        elif isinstance(self.base, str) and self.base:
            problems += _base_folder_problems(Path(self.base))
            if not any((Path(self.base) / f).is_file() for f in TOKENIZER_FILES):
                problems.append(
                    f"base {self.base!r} has no tokenizer (no tokenizer.json or tokenizer_config.json there); "
                    "training needs the base's tokenizer saved beside its weights (tokenizer.save_pretrained)"
                )
        refused = _data_root_problems(self.data, self.eval_data)  # (then not tested for existence either)
        problems += refused.values()
        if isinstance(self.data, str) and self.data and "data" not in refused and not Path(self.data).is_file():
            problems.append(f"data {self.data!r}: no such file")
        for name in ("eval_data", "mask", "name"):  # (a number here ended in an AttributeError or TypeError)
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                problems.append(f"{name} must be a string or null, got {str(getattr(self, name))[:40]!r}")
        if isinstance(self.eval_data, str) and "eval_data" not in refused and not Path(self.eval_data).is_file():
            problems.append(f"eval_data {self.eval_data!r}: no such file")
        if isinstance(self.mask, str):
            mp = self.mask_path
            if mp and (kind := not_a_file(mp)):  # (a named pipe read "no such mask file": it is there)
                problems.append(f"mask {self.mask!r}: {kind}, not a regular file; refused")
            elif not mp or not Path(mp).is_file():
                problems.append(f"mask {self.mask!r}: no such mask file (use a path, 'random:<path>' or null)")
            elif problem := _mask_format_problem(self.mask, mp):
                problems.append(problem)
        if check_output and isinstance(self.output_dir, str) and self.output_dir and Path(self.output_dir).exists():
            problems.append(
                f"output_dir {self.output_dir!r} already exists; choose a new folder (runs never overwrite)"
            )
        return problems

    def _number_problems(self) -> list[str]:
        problems: list[str] = []
        for name, lo, hi in (
            ("steps", 1, MAX_STEPS),
            ("batch_size", 1, MAX_BATCH_SIZE),
            ("num_generations", 2, MAX_BATCH_SIZE),
            ("max_completion_length", 1, MAX_COMPLETION_LENGTH),
        ):
            problems += int_problems(name, getattr(self, name), lo, hi)
        for name in ("beta", "weight_decay", "max_grad_norm"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v < math.inf:  # NaN, ∞ too
                why = " (0: no clipping)" if name == "max_grad_norm" else ""
                problems.append(f"{name} must be a finite number >= 0{why}, got {v!r}")
        # One rule, said once: a negative or NaN rate was told both ">= 0" and "in (0, 1)" (NaN, ∞ fail it too)
        lr = self.learning_rate
        if not isinstance(lr, int | float) or isinstance(lr, bool) or not 0 < lr < 1:
            problems.append(f"learning_rate must be a number above 0 and below 1, got {lr!r}")
        if not isinstance(self.bf16, bool):
            problems.append(f"bf16 must be true or false, got {self.bf16!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            problems.append(f"seed must be an integer in 0 .. 2^32 - 1 (NumPy's range), got {shown(self.seed)}")
        return problems

    def _schedule_problems(self) -> list[str]:
        problems: list[str] = []
        if self.algorithm == "grpo" and isinstance(self.batch_size, int) and isinstance(self.num_generations, int):
            if self.num_generations >= 2 and self.batch_size % self.num_generations:
                problems.append(
                    f"GRPO batch_size ({self.batch_size}) must be a multiple of num_generations "
                    f"({self.num_generations}): each prompt's completions form one group"
                )
        known = _scheduler_names()
        schedulers = [s for s in SCHEDULERS if s in known]
        if self.lr_scheduler_type not in known:  # (before, refused by transformers once the model had loaded)
            problems.append(
                f"lr_scheduler_type {str(self.lr_scheduler_type)[:40]!r} is unknown; expected one of "
                f"{', '.join(schedulers)}"
            )
        elif self.lr_scheduler_type in WARMUP_ONLY:
            problems.append(
                f"lr_scheduler_type {self.lr_scheduler_type!r} is not supported: a training config has no warmup, so "
                f"it would run exactly as {WARMUP_ONLY[self.lr_scheduler_type]!r}; use that"
            )
        elif self.lr_scheduler_type not in schedulers:  # they failed after the model had loaded
            problems.append(
                f"lr_scheduler_type {self.lr_scheduler_type!r} is not supported (it needs an evaluation set or "
                f"scheduler arguments a training config does not pass); expected one of {', '.join(schedulers)}"
            )
        elif (
            self.lr_scheduler_type == "polynomial"
            and isinstance(self.learning_rate, int | float)
            and 0 < self.learning_rate <= POLYNOMIAL_LR_END
        ):  # (transformers raised once the model had loaded)
            problems.append(
                f"lr_scheduler_type 'polynomial' decays to transformers' lr_end {POLYNOMIAL_LR_END:g}, so it needs a "
                f"learning_rate above that, got {self.learning_rate!r}; give a larger one or another schedule"
            )
        if not isinstance(self.save_steps, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in self.save_steps
        ):
            problems.append(f"save_steps must be a list of integers, got {shown(self.save_steps)}")
        elif isinstance(self.steps, int):
            bad = [s for s in self.save_steps if not 1 <= s <= min(self.steps, MAX_STEPS)]
            if bad:
                more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
                problems.append(
                    f"save_steps [{', '.join(shown(b) for b in bad[:3])}]{more} lie outside 1..steps "
                    f"({shown(self.steps)})"
                )
        return problems

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from a dict; unknown keys are refused by name (the job-level keys ``kind`` and
        ``num_gpus``, the GPUs a Ray job asks for, are allowed and ignored). A ``kind`` other than ``"train"`` is
        refused by name before the fields are read: a bigram-mask run's own config.json was told its ``model`` was
        an unknown field, with no word that ``train`` runs TRL training configs only."""
        if not isinstance(d, dict):
            raise ConfigError(f"training config must be a JSON object, got {type(d).__name__}.")
        if d.get("kind", "train") != "train":
            elsewhere = {  # where each other job kind is started (jobs.context.JOB_KINDS)
                "bigram_mask": "a bigram-mask training job: bigram masks are trained on the Bigram subnetworks "
                "page (Train a mask)",
                "continual": "a continual-learning job: it is started on the Continual learning page",
                "behavior": "a behaviour job: run it with `subnetviz behavior` or on the Behaviour page",
                "drivers": "a what-drives-sparsity job: run it with `subnetviz experiment drivers` or on its page",
            }
            kind = d["kind"]
            what = elsewhere.get(kind, "not a training job") if isinstance(kind, str) else "not a training job"
            raise ConfigError(
                f"training config: kind {str(kind)[:40]!r} is {what}; `train` runs TRL training configs "
                "(kind 'train', or no kind)."
            )
        known = {f.name for f in fields(cls)}
        unknown = [k for k in d if k not in known and k not in JOB_KEYS]
        if unknown:
            hints = "".join(suggest(k, known) for k in unknown)
            raise ConfigError(f"training config: unknown field(s) {unknown}.{hints}")
        missing = [k for k in ("algorithm", "base", "data", "output_dir") if k not in d]
        if missing:
            raise ConfigError(f"training config: missing required field(s) {missing}.")
        kwargs = {k: v for k, v in d.items() if k in known}
        for k in ("base", "data", "output_dir", "eval_data"):
            if isinstance(kwargs.get(k), os.PathLike):
                kwargs[k] = os.fspath(kwargs[k])
        if "save_steps" in kwargs and isinstance(kwargs["save_steps"], tuple):
            kwargs["save_steps"] = list(kwargs["save_steps"])
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        return cls.from_dict(read_config_json(path, str(path)))


def read_config_json(path: str | os.PathLike, where: str):
    """The JSON value in the training config file ``path``; ``where`` names it in the one-line :class:`ConfigError`
    for nothing there, a folder (or another thing that is not a regular file), a file too large to be a config,
    bytes that are not UTF-8, text that is not JSON, JSON nested too deeply for the parser, or an integer of more
    digits than Python converts (the last three: a UnicodeDecodeError, RecursionError or plain ValueError, which no
    ``except JSONDecodeError`` catches, were tracebacks)."""
    import sys

    from subnetviz.config import JSON_FILE_LIMIT, not_a_file

    kind = not_a_file(path)  # (asked with stat: a named pipe is never opened)
    if kind is not None:
        raise ConfigError(f"{where}: {kind}, not a training config file.")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(JSON_FILE_LIMIT + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror or exc}.") from None
    if len(raw) > JSON_FILE_LIMIT:
        raise ConfigError(f"{where}: more than {JSON_FILE_LIMIT:,} bytes, far more than a training config holds.")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{where}: not JSON: byte {raw[exc.start]:#04x} at offset {exc.start} is not UTF-8."
        ) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not JSON ({exc}).") from None
    except RecursionError:
        raise ConfigError(f"{where}: JSON nested too deep to be a training config.") from None
    except ValueError:  # int("1" * 5000): CPython's limit on the digits of an integer read from text
        raise ConfigError(
            f"{where}: holds an integer of more than {sys.get_int_max_str_digits():,} digits, which no training "
            "config needs."
        ) from None


def train_device() -> str:
    """The device a run trains on: ``auto`` as :func:`subnetviz.config.resolve_device` resolves it for the analyses
    (``SUBNETVIZ_DEVICE`` when it names one, else ``cuda`` when torch sees a GPU, else ``cpu``), read in the process
    that trains (a job's worker inherits the environment of the process that starts it). A value that names no
    device here is that function's one-line :class:`ConfigError`. A multi-process run (ddp, fsdp2, zero) takes its
    kind only: ``cpu``, or one GPU per process."""
    from subnetviz.config import resolve_device

    return resolve_device("auto")


def shown(value, width: int = 40) -> str:
    """``value`` for a one-line message, at most about ``width`` characters: an integer too long to print (Python
    refuses ``str`` of one over 4300 digits) by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except ValueError:  # (an integer inside a list, too long to print)
        return f"a {type(value).__name__} too long to show"
    return text if len(text) <= width else text[: width - 3] + "..."


def int_problems(name: str, value, lo: int, hi: int) -> list[str]:
    """``[problem]`` when ``value`` is not an integer (bool excluded) in ``lo .. hi``, else ``[]``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        return [f"{name} must be an integer >= {lo}, got {shown(value)}"]
    if value > hi:
        return [f"{name} must be at most {hi}, got {shown(value)}"]
    return []


# The saved weights a run's bitwise check read, recorded with the check (``mask_check["weights"]``): a model
# rewritten, edited or partly copied after the run kept its "bit-identical" verdict on the card.
WEIGHTS_GLOB = "model*.safetensors"  # what save_pretrained writes (one file, or shards): not the run's mask file
DIGEST_CHUNK = 1 << 24


def weights_record(folder: str | os.PathLike) -> dict[str, dict]:
    """File name -> ``{"size", "mtime_ns", "sha256"}`` of each weights file in the model folder ``folder``. Size
    and mtime survive the renames that publish a run; the digest tells a copy (new mtime, same bytes) from an
    edit."""
    out = {}
    for f in sorted(Path(folder).glob(WEIGHTS_GLOB)):
        st = f.stat()
        out[f.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(f)}
    return out


def changed_weights(folder: str | os.PathLike, record: dict, stamp: object = None) -> list[str]:
    """The weights files of ``folder`` that are not the ones :func:`weights_record` recorded: gone, new, or with
    other bytes. A file whose size and mtime are as recorded is taken as unchanged (nothing read); one whose
    mtime differs is hashed. ``stamp`` only keys a caller's memo."""
    now = {f.name: f for f in sorted(Path(folder).glob(WEIGHTS_GLOB))}
    changed = sorted(set(record) ^ set(now))
    for name in sorted(set(record) & set(now)):
        rec, st = record[name], now[name].stat()
        if not isinstance(rec, dict) or rec.get("size") != st.st_size:
            changed.append(name)
        elif rec.get("mtime_ns") != st.st_mtime_ns and rec.get("sha256") != _sha256(now[name]):
            changed.append(name)
    return changed


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(DIGEST_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _scheduler_names() -> tuple[str, ...]:
    """The learning-rate schedules transformers knows (``SchedulerType``), by name."""
    from transformers.trainer_utils import SchedulerType

    return tuple(t.value for t in SchedulerType)


def base_context(base: str) -> int | None:
    """The positions the base takes (config.json's max_position_embeddings, GPT-2's n_positions, ...; a
    multimodal config's text_config first), None where its config says none."""
    from subnetviz.checkpoints.models import CONTEXT_KEYS

    try:
        cfg = json.loads((Path(base) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for c in (cfg.get("text_config"), cfg) if isinstance(cfg, dict) else ():
        if not isinstance(c, dict):
            continue
        for key in CONTEXT_KEYS:
            n = c.get(key)
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                return n
    return None


def _base_tokenizer(base: str):
    """The base's tokenizer (as the trainer loads it); a loader failure is a one-line :class:`ConfigError`."""
    from subnetviz.checkpoints.models import folder_tokenizer
    from subnetviz.errors import CheckpointError

    try:  # (its files were checked by _base_folder_problems)
        return folder_tokenizer(Path(base), f"base {base!r}")
    except CheckpointError as exc:  # any loader failure, as the config's one-line error
        raise ConfigError(str(exc)) from None


def _needs_chat_template(tok, base: str, data: str) -> None:
    """Conversational rows (chat messages) are rendered with the base tokenizer's chat template: refuse, in
    one line naming the data file, a base whose tokenizer has none (TRL raised a ValueError mid-setup)."""
    if not getattr(tok, "chat_template", None):
        raise ConfigError(
            f"data {data!r} holds chat messages, but the tokenizer of base {base!r} has no chat template; "
            "add one (chat_template.jinja beside it) or give plain-text rows."
        )


def strategy_problems(strategy, num_processes) -> list[str]:
    """Config validation for ``strategy`` and ``num_processes`` (used by TrainConfig.validate)."""
    problems = []
    if strategy not in STRATEGIES:
        problems.append(f"strategy {strategy!r} is unknown; expected one of {', '.join(STRATEGIES)}")
    if found := int_problems("num_processes", num_processes, 1, MAX_PROCESSES):
        problems += found
    elif strategy == "single" and num_processes != 1:
        problems.append(f"strategy 'single' runs one process, got num_processes {num_processes}; use ddp or fsdp2")
    return problems


CPU_PROCESSES_FLOOR = 2  # a two-process CPU run is taken on a one-core machine too (time-sliced: slower, it works)


def cpu_cores() -> int:
    """The CPU cores this process may run on: its affinity, else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # (no affinity on this platform)
        return os.cpu_count() or 1


def process_room(device: str) -> tuple[int, str]:
    """How many processes of one multi-process run this machine runs side by side on ``device`` (the run's,
    :func:`train_device`), and what each takes: one GPU each on CUDA (those torch sees), else one CPU core each
    (:func:`cpu_cores`), but at least :data:`CPU_PROCESSES_FLOOR` (the README's two-process demo on a one-core
    machine or a one-core batch slot)."""
    if device.startswith("cuda"):  # (as sharded.process_device: each rank trains on cuda:LOCAL_RANK)
        import torch

        return torch.cuda.device_count(), "GPU"
    return max(CPU_PROCESSES_FLOOR, cpu_cores()), "CPU core"


def check_processes_fit(strategy: str, num_processes: int) -> None:
    """Refuse, in one line (:class:`ConfigError`), a multi-process run of more processes than this machine runs
    side by side (:func:`process_room`). Nothing else bounded what one run started: a visitor who may launch jobs
    queued a 256-process DDP run from the Training form (1024 through a job config), each process ~660 MiB of
    libraries before its model. Checked where the processes start (the train job kind's validation, on the local
    backend; :func:`subnetviz.training.run.launch_and_train` before the launch, on any)."""
    if strategy == "single" or num_processes <= 1:
        return
    device = train_device()
    room, unit = process_room(device)
    if num_processes <= room:
        return
    where = "CUDA" if device.startswith("cuda") else "the CPU"
    other = " (or train on the CPU: SUBNETVIZ_DEVICE=cpu)" if unit == "GPU" else ""
    have = room if unit == "GPU" else cpu_cores()
    raise ConfigError(
        f"training config: num_processes {num_processes} is more than this machine runs at once: a {strategy} run "
        f"on {where} takes one {unit} per process, and it has {have}; ask for at most {room}{other}."
    )


JOB_OUTPUT_PLACEHOLDER = "<job outputs>/model"


def job_train_config(config: dict) -> TrainConfig:
    """The :class:`TrainConfig` of a ``train`` job: its model always goes to ``<outputs>/model``.

    A job writes only under its run folder, so ``output_dir`` may be left out of a job config
    (a given one is not used; :func:`subnetviz.training.run.run_job` says so in the log).
    """
    d = {k: v for k, v in config.items() if k not in JOB_KEYS}
    d["output_dir"] = JOB_OUTPUT_PLACEHOLDER
    return TrainConfig.from_dict(d)


def validate_config(config: dict) -> None:
    """The ``train`` job kind's validator (called by the runner before a job is queued)."""
    job_train_config(config).validate(check_output=False)


def _mask_format_problem(mask: str, path: str) -> str | None:
    """The problem of a training mask file that is not safetensors (a torch.save file, a .npz, a bigram pickle:
    :func:`~subnetviz.masks.other_mask_format`), with the command that converts it; else None. A run read it only
    once the model had loaded, and said "not a readable safetensors mask file (… header too large)". A file the
    roots refuse, or that cannot be read, is left to the mask's own checks, which say why
    (:func:`~subnetviz.training.mask_fit.check_mask_fits`)."""
    from subnetviz.errors import SubnetvizError
    from subnetviz.masks import convert_hint, other_mask_format

    try:
        kind = other_mask_format(path)
    except (OSError, SubnetvizError):
        return None
    return f"mask {mask!r}: {kind}; training reads safetensors masks: {convert_hint(path)}" if kind else None


def _base_adapter_problem(base: str) -> str | None:
    """The line a run gives a PEFT adapter folder with no full model beside it
    (:func:`~subnetviz.checkpoints.models.refuse_adapter`: merge it first), for a base that is one; else None."""
    from subnetviz.checkpoints.models import refuse_adapter
    from subnetviz.errors import CheckpointError

    try:
        refuse_adapter(base)
    except CheckpointError as exc:
        return f"base {str(exc).rstrip('.')}"
    return None


def _base_folder_problems(folder: Path) -> list[str]:
    """What the trainers' ``from_pretrained`` would read wrongly in the base folder: a PEFT adapter's files
    beside the model (applied on top of it when PEFT is installed), a named pipe or a device where a file
    would be (its open waits for good, the job hung) and, on a server that enforces its roots, files
    (tokenizer, templates) or subfolders that link outside them. Subfolders are walked too
    (:func:`~subnetviz.checkpoints.models.folder_entries`): transformers reads additional_chat_templates/."""
    from subnetviz.checkpoints.models import ADAPTER_FILES, check_not_quantized, folder_entries, leads_outside
    from subnetviz.config import not_a_file
    from subnetviz.errors import CheckpointError

    problems = []
    adapter = [f for f in ADAPTER_FILES if (folder / f).exists()]
    if adapter:
        problems.append(
            f"base {str(folder)!r} holds a PEFT adapter ({', '.join(adapter)}) beside the model, which the trainer "
            "would apply on top of it; give a folder with the model alone"
        )
    try:
        for name, entry in folder_entries(folder):
            if leads_outside(entry):  # a file, or a subfolder (then not walked)
                problems.append(f"base {str(folder)!r}: {name} leads outside the folders this server may read")
            elif (kind := not_a_file(entry)) and kind != "a folder":  # (check_readable's two refusals, each said)
                problems.append(f"base {str(folder)!r}: {name} is {kind}, not a regular file")
    except CheckpointError as exc:  # a subfolder that cannot be listed
        problems.append(f"base {str(folder)!r}: {str(exc).rstrip('.')}")
    try:  # a base stored as a quantization library's codes: the trainers train float32 models
        check_not_quantized(f"base {str(folder)!r}", folder)
    except CheckpointError as exc:
        problems.append(str(exc).rstrip("."))
    return problems


def _data_root_problems(data, eval_data) -> dict[str, str]:
    """Field -> problem for data files a server that enforces its roots may not read (every data file opened
    passes :func:`subnetviz.config.check_readable`; this names them with the config's other problems)."""
    from subnetviz.config import check_readable, display_path
    from subnetviz.errors import PathNotAllowedError

    problems = {}
    for name, value in (("data", data), ("eval_data", eval_data)):
        if isinstance(value, str) and value:
            try:
                check_readable(value, what=f"{name} {display_path(value)!r}")
            except PathNotAllowedError as exc:
                problems[name] = str(exc).rstrip(".")
    return problems
