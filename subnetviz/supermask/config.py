"""The ``continual`` job's configuration: :class:`ContinualConfig`, validated in one place.

One config describes one continual-learning job: a benchmark, a list of methods, one or more
mask densities and seeds. It is what the Continual page's launch form builds, what a job's
``config.json`` holds and what :mod:`subnetviz.supermask.job` runs. JSON form::

    {"benchmark": "permuted-digits", "methods": ["finetune", "supsup", "ssnet", "exssnet"],
     "density": 0.05 | [0.02, 0.05], "tasks": 5, "seeds": [0, 1, 2],
     "epochs": {"mask": 10, "weight": 10, "finetune": 20}, "kkt": false, "task_inference": false,
     "lr": {"mask": 0.01, "weight": 0.01, "finetune": 0.001}, "batch_size": 32, "kkt_k": 10}

A method may be written ``"exssnet+kkt"``; ``kkt: true`` adds the ``+kkt`` variant of every masked
method in the list (the plain ones are kept, so the two can be compared). ``finetune`` ignores the
density (it is dense; recorded as density 1.0) and runs once per seed. A scalar ``density`` or
``seeds`` is read as a one-element list; ``epochs`` left out take the benchmark's defaults.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from subnetviz.errors import ConfigError, suggest
from subnetviz.supermask.data import BENCHMARKS, N_SPLIT_TASKS, TEXT_PROPERTIES
from subnetviz.supermask.layers import kept_count
from subnetviz.supermask.methods import METHODS, MethodConfig
from subnetviz.training.config import shown

PHASES = ("mask", "weight", "finetune")
# Upper bounds (far above any real job): the job's progress total (runs x tasks) goes to the registry, where 2**63
# overflowed SQLite's INTEGER; seeds go to NumPy and scikit-learn (0 .. 2^32 - 1). Memory bounds tasks and runs
# further (subnetviz.supermask.job.validate_config).
MAX_TASKS = 10_000_000
MAX_VALUES = 1000  # seeds, densities
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_KKT_K = 10_000
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class PhaseEpochs:
    """Epochs per training phase; ``None`` = the benchmark's default (split 30+30, perm/text 10+10)."""

    mask: int | None = None
    weight: int | None = None
    finetune: int | None = None


@dataclass(frozen=True)
class PhaseRates:
    """Learning rate per training phase."""

    mask: float = 0.01
    weight: float = 0.01
    finetune: float = 1e-3


def _phases(cls, name: str, value):
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if not isinstance(value, dict) or any(k not in PHASES for k in value):
        raise ConfigError(f"continual config: {name} must be an object with keys from {PHASES}; got {value!r}.")
    return cls(**value)


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, list | tuple) else (value,)


def colliding_densities(values) -> tuple[float, float] | None:
    """Two different densities of ``values`` that cannot be told apart, or None. Two collide when their mask
    folders (``d{density:g}``, 6 significant digits) are the same, or when they are within the tolerance the page
    and the metrics pick a density with (``np.isclose``: 1e-8 + 1e-5 relative; here relative to the larger, which
    covers both orders). Sorted, so only neighbours need comparing: a colliding pair always has a colliding
    neighbour pair between it."""
    ds = sorted({float(v) for v in values})
    for a, b in zip(ds, ds[1:], strict=False):
        if f"{a:g}" == f"{b:g}" or b - a <= 1e-8 + 1e-5 * max(abs(a), abs(b)):
            return a, b
    return None


def density_clash(a: float, b: float, fix: str) -> str:
    """One line saying densities ``a`` and ``b`` collide (see :func:`colliding_densities`), and ``fix``."""
    why = f"their masks share one folder, d{a:g}" if f"{a:g}" == f"{b:g}" else "the page reads them as one density"
    return f"densities {a!r} and {b!r} are too close to tell apart ({why}); {fix}"


# Each benchmark's network inputs and shared head (its classes), as data.py builds them: 8×8 digits, the 10 digits
# (permuted) or two classes; arithmetic-text's inputs are the demo zoo's encoder width, read only when it is built.
_NET_ENDS = {"split-digits": (64, 2), "permuted-digits": (64, 10), "arithmetic-text": (None, 2)}


def masked_layer_sizes(benchmark: str) -> dict[str, int]:
    """Mask name -> weights of each layer of ``benchmark``'s masked network whose size is known before its data is
    built (all but arithmetic-text's first: its encoder width × the first hidden width, larger than its head for any
    encoder wider than one unit)."""
    inputs, head = _NET_ENDS[benchmark]
    sizes = (inputs, *MethodConfig("supsup").hidden, head)
    return {f"layer{i + 1}.weight": a * b for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)) if a}


def thin_density(benchmark: str, density: float) -> str | None:
    """One line refusing ``density`` for ``benchmark`` where a layer holds less than one weight's worth of it
    (density × its weights < 1), or None. There a mask still keeps one weight (a layer is never empty:
    :func:`~subnetviz.supermask.layers.kept_count`), up to any multiple of the density, while every title, note,
    reference curve and mask file gives the density asked for: 1e-6 kept 1 of the 1,280 weights (0.078 %) of
    permuted-digits' head, 781 times the density. From one weight's worth on, each layer keeps density × its
    weights to the nearest whole weight, within a third of it."""
    sizes = masked_layer_sizes(benchmark)
    name = min(sizes, key=sizes.__getitem__)
    numel = sizes[name]
    if density * numel >= 1 - 1e-9:
        return None
    kept, least = kept_count(numel, density), _rounded_up(1 / numel)
    return (
        f"density {density!r} is too small for {benchmark}: {name} has {numel:,} weights, and a mask keeps "
        f"{kept} of them ({100 * kept / numel:.3g} %, not {100 * density:g} %); use a density of at least {least:g} "
        f"(one weight's worth of {name})."
    )


def _rounded_up(x: float, digits: int = 3) -> float:
    """``x`` > 0 rounded up to ``digits`` significant digits (so that the number a message gives passes its check)."""
    step = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return float(f"{math.ceil(x / step - 1e-9) * step:.{digits}g}")


@dataclass(frozen=True)
class ContinualConfig:
    """One continual-learning job. Every instance is valid: ``__post_init__`` raises :class:`ConfigError`."""

    benchmark: str = "permuted-digits"
    methods: tuple[str, ...] = ("finetune", "supsup", "ssnet", "exssnet")
    density: tuple[float, ...] = (0.05,)  # the share of weights each mask KEEPS
    tasks: int = 5
    seeds: tuple[int, ...] = (0,)
    epochs: PhaseEpochs = field(default_factory=PhaseEpochs)
    kkt: bool = False
    task_inference: bool = False
    lr: PhaseRates = field(default_factory=PhaseRates)
    batch_size: int = 32
    kkt_k: int = 10
    name: str | None = None  # a label for the run (shown in the registry)

    def __post_init__(self) -> None:
        if not isinstance(self.methods, list | tuple):
            raise ConfigError(f"methods must be a list such as ['supsup', 'exssnet']; got {self.methods!r}.")
        set_ = object.__setattr__  # normalise the JSON shapes once, here
        set_(self, "methods", tuple(self.methods))
        set_(self, "density", _as_tuple(self.density))
        set_(self, "seeds", _as_tuple(self.seeds))
        set_(self, "epochs", _phases(PhaseEpochs, "epochs", self.epochs))
        set_(self, "lr", _phases(PhaseRates, "lr", self.lr))
        self._check()

    def _check(self) -> None:
        bench = self.benchmark
        if bench not in BENCHMARKS:
            raise ConfigError(
                f"unknown benchmark {bench!r}; choose one of {', '.join(BENCHMARKS)}.{suggest(str(bench), BENCHMARKS)}"
            )
        tasks = self.tasks
        if not isinstance(tasks, int) or isinstance(tasks, bool) or tasks < 1:
            raise ConfigError(f"tasks must be a positive integer; got {tasks!r} (zero tasks cannot be trained).")
        limit = {"split-digits": N_SPLIT_TASKS, "arithmetic-text": len(TEXT_PROPERTIES)}.get(bench)
        if limit is not None and tasks > limit:
            raise ConfigError(f"{bench} has 1 to {limit} tasks; got {tasks}.")
        if not self.density or not self.seeds or not self.methods:
            raise ConfigError("continual config: density, seeds and methods each need at least one value.")
        for d in self.density:
            if isinstance(d, bool) or not isinstance(d, int | float) or not 0.0 < d <= 1.0:
                raise ConfigError(f"density {d!r} is outside (0, 1]; it is the fraction of weights each mask KEEPS.")
        if any(isinstance(s, bool) or not isinstance(s, int) for s in self.seeds):
            raise ConfigError(f"seeds must be integers; got {shown(list(self.seeds))}.")
        self._check_limits()
        for key, values in (("seeds", self.seeds), ("density", self.density), ("methods", self.methods)):
            if len(set(values)) < len(values):  # (the same run trained twice and counted as two seeds)
                twice = sorted({str(v) for v in values if list(values).count(v) > 1})
                raise ConfigError(f"{key} names {', '.join(twice)} more than once; give each value once.")
        if pair := colliding_densities(self.density):
            raise ConfigError(density_clash(*pair, "give densities that differ by more than 1e-5 of their size."))
        for flag in ("kkt", "task_inference"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be true or false; got {getattr(self, flag)!r}.")
        self.plan()  # every run's own settings (epochs, rates, batch size, kkt) are checked by MethodConfig
        if any(base != "finetune" for base, _ in self.variants()):  # (finetune is dense: it has no density)
            for d in self.density:
                if thin := thin_density(self.benchmark, d):
                    raise ConfigError(thin)

    def _check_limits(self) -> None:
        """Upper bounds of the integers (their types and lower bounds are MethodConfig's to check)."""
        if self.tasks > MAX_TASKS:
            raise ConfigError(f"tasks must be at most {MAX_TASKS}; got {shown(self.tasks)}.")
        for key in ("seeds", "density"):
            if len(getattr(self, key)) > MAX_VALUES:
                raise ConfigError(f"{key} holds {len(getattr(self, key))} values; at most {MAX_VALUES}.")
        if bad := [s for s in self.seeds if not 0 <= s <= MAX_SEED]:
            raise ConfigError(f"seeds must be integers in 0 .. 2^32 - 1 (NumPy's range); got {shown(bad[0])}.")
        limits = [(f"{p}_epochs", getattr(self.epochs, p), MAX_EPOCHS) for p in PHASES]
        limits += [("batch_size", self.batch_size, MAX_BATCH_SIZE), ("kkt_k", self.kkt_k, MAX_KKT_K)]
        for key, v, hi in limits:
            if isinstance(v, bool):
                raise ConfigError(f"{key} must be an integer, not {v!r}.")
            if isinstance(v, int) and v > hi:
                raise ConfigError(f"{key} must be at most {hi}; got {shown(v)}.")
        for p in PHASES:
            v = getattr(self.lr, p)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{p}_lr must be a finite number > 0; got {v!r}.")

    def variants(self) -> list[tuple[str, bool]]:
        """``(method, kkt)`` pairs in order, without repeats."""
        out: list[tuple[str, bool]] = []
        for m in self.methods:
            base, _, suffix = str(m).lower().partition("+")
            if base not in METHODS or suffix not in ("", "kkt"):
                names = [*METHODS, *(f"{x}+kkt" for x in METHODS[1:])]
                raise ConfigError(f"unknown method {m!r}; choose from {', '.join(names)}.{suggest(str(m), names)}")
            out.append((base, suffix == "kkt"))
            if self.kkt and base != "finetune" and not suffix:
                out.append((base, True))
        return list(dict.fromkeys(out))

    def plan(self) -> list[MethodConfig]:
        """One :class:`MethodConfig` per run: every (method variant, density, seed); finetune once per seed."""
        common = {
            "mask_epochs": self.epochs.mask,
            "weight_epochs": self.epochs.weight,
            "finetune_epochs": self.epochs.finetune,
            "mask_lr": self.lr.mask,
            "weight_lr": self.lr.weight,
            "finetune_lr": self.lr.finetune,
            "batch_size": self.batch_size,
            "kkt_k": self.kkt_k,
        }
        runs = []
        for base, kkt in self.variants():
            for d in [1.0] if base == "finetune" else self.density:
                for s in self.seeds:
                    mc = MethodConfig(
                        base,
                        density=float(d),
                        seed=s,
                        kkt=kkt,
                        task_inference=self.task_inference and base == "supsup",
                        **common,
                    )
                    mc.validate()
                    runs.append(mc)
        return runs

    # --- JSON ------------------------------------------------------------------------------------
    def to_dict(self, *, kind: bool = True) -> dict:
        """The JSON form (lists, not tuples); with ``"kind": "continual"`` unless ``kind=False``."""
        d = json.loads(json.dumps(asdict(self)))
        return {"kind": "continual", **d} if kind else d

    @classmethod
    def from_dict(cls, d: dict) -> ContinualConfig:
        """Build from a JSON object; an unknown key is refused by name (``kind`` is allowed and ignored)."""
        if not isinstance(d, dict):
            raise ConfigError(f"continual config must be a JSON object; got {type(d).__name__}.")
        known = [f.name for f in fields(cls)]
        for key in d:
            if key not in known and key != "kind":
                raise ConfigError(
                    f"continual config: unknown key {key!r}; known keys: {', '.join(known)}.{suggest(key, known)}"
                )
        return cls(**{k: v for k, v in d.items() if k != "kind"})

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ContinualConfig:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file.") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc}).") from None
