"""The demo zoo's ``manifest.json`` as typed records (a built zoo is read back in :mod:`subnetviz.demo.zoo`).

:class:`ZooManifest` is the one definition of what a built zoo holds; the build writes it
(:meth:`ZooManifest.to_dict`), :func:`load_zoo` reads it (:meth:`ZooManifest.from_dict`, which
names the missing key of a damaged manifest) and every page reads its attributes. Paths in the
manifest are relative to the zoo folder; :class:`~subnetviz.demo.zoo.Zoo` resolves them. Importing this module does
not import torch.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from subnetviz.demo.pretrain import ModelShape
from subnetviz.errors import CheckpointError, suggest

ZOO_FORMAT = "subnetviz-zoo/1"
MANIFEST = "manifest.json"


def _record(cls, d, where: str, **convert):
    """``cls(**d)`` for a manifest entry, each ``convert[key]`` applied to its value: a missing key is
    named; keys written by other versions are ignored."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{MANIFEST}: {where} must be an object, got {type(d).__name__}.")
    names = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in names}
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [k for k in required if k not in kwargs]
    if missing:
        raise CheckpointError(
            f"{MANIFEST}: {where} lacks {missing[0]!r}; the zoo was written by another version. "
            "Rebuild it with `python -m subnetviz demo build --force`."
        )
    for key, fn in convert.items():
        if key in kwargs:
            kwargs[key] = fn(kwargs[key])
    return cls(**kwargs)


def _plain(obj) -> dict:
    """A record as JSON-ready dict: paths as strings, optional fields left out while unset."""
    out = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if v is None and f.default is None:
            continue
        out[f.name] = str(v) if isinstance(v, Path) else v
    return out


@dataclass(frozen=True)
class ZooMember:
    """One model of the zoo (the base included). ``accuracy``: greedy exact match on the held-out
    eval split of its problem set (``data``; the base is scored on set A); ``sparsity``: share of
    parameters whose bf16 bit patterns equal the base's (every tensor, parameter-weighted), with
    ``changed`` of ``numel`` parameters differing. ``path`` is relative to the zoo folder in the
    manifest and absolute in :attr:`Zoo.members`."""

    id: str
    path: Path
    algorithm: str
    seed: int
    data: str  # "A" | "B" | "mix" (the base)
    steps: int
    learning_rate: float
    accuracy: float
    accuracy_A: float
    accuracy_B: float
    sparsity: float
    changed: int
    numel: int
    batch_size: int | None = None
    description: str | None = None
    train_seconds: float | None = None
    data_notes: dict | None = None  # how its training data was made (DPO pairs, SFT rows)
    mask: str | None = None  # grpo-sub: the mask it was trained inside
    mask_check: dict | None = None  # grpo-sub: the bitwise outside-the-mask check after training
    identical_to_grpo_s0: float | None = None  # grpo-sub: share of parameters bitwise equal to grpo-s0's

    @classmethod
    def from_dict(cls, d: dict) -> ZooMember:
        where = f"member {d.get('id', '?')!r}" if isinstance(d, dict) else "a member"
        return _record(cls, d, where, path=Path)

    def to_dict(self) -> dict:
        return _plain(self)


@dataclass(frozen=True)
class SeriesPoint:
    """One checkpoint of grpo-s0's series (the final model is the last point)."""

    step: int
    path: Path
    sparsity: float
    accuracy: float

    @classmethod
    def from_dict(cls, d: dict) -> SeriesPoint:
        return _record(cls, d, "a series point", path=Path)

    def to_dict(self) -> dict:
        return _plain(self)


@dataclass(frozen=True)
class OverlapPair:
    """One-sided overlaps ``o1 = |A∩B|/|A|``, ``o2 = |A∩B|/|B|`` of two members' update masks and
    their chance values (each mask's chance overlap is the *other* mask's density)."""

    a: str
    b: str
    o1: float
    o2: float
    chance_o1: float
    chance_o2: float
    intersection: int

    @classmethod
    def from_dict(cls, d: dict) -> OverlapPair:
        return _record(cls, d, "an overlap row")

    def to_dict(self) -> dict:
        return _plain(self)


@dataclass(frozen=True)
class BaseInfo:
    """The pretrained base: size, how pretraining went, accuracies, and its Llama shape."""

    path: Path
    params: int | None
    pretraining_steps: int | None
    pretraining_seconds: float | None
    accuracy: float
    accuracy_A: float
    accuracy_B: float
    architecture: str
    shape: ModelShape
    stop_reason: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> BaseInfo:
        if not isinstance(d, dict):
            raise CheckpointError(f"{MANIFEST}: base must be an object.")
        shape = ModelShape(**{f.name: d[f.name] for f in fields(ModelShape) if f.name in d})  # flattened in the JSON
        return _record(cls, {**d, "shape": shape}, "base", path=Path)

    def to_dict(self) -> dict:
        d = _plain(self)
        shape = d.pop("shape")
        stop = d.pop("stop_reason", None)
        return {**d, **asdict(shape), "stop_reason": stop}


@dataclass(frozen=True)
class ProblemSet:
    description: str
    train: str
    eval: str
    n_train: int
    n_eval: int

    @classmethod
    def from_dict(cls, d: dict) -> ProblemSet:
        return _record(cls, d, "a problem set")

    def to_dict(self) -> dict:
        return _plain(self)


@dataclass(frozen=True)
class BigramInfo:
    """``bigram.npz``: the Markov chain's exact bigram law (its letters and their token ids).
    ``entropy_rate_nats``: the source's entropy rate; ``order`` 2: the next letter depends on the
    previous two, and ``bigram_entropy_rate_nats`` (H(next | current)) is what a bigram model
    achieves at best, above the source's rate."""

    path: str
    letters: tuple[str, ...]
    token_ids: tuple[int, ...]
    entropy_rate_nats: float
    order: int = 1
    bigram_entropy_rate_nats: float | None = None

    @classmethod
    def from_dict(cls, d: dict) -> BigramInfo:
        return _record(cls, d, "bigram", letters=tuple, token_ids=tuple)

    def to_dict(self) -> dict:
        return {**_plain(self), "letters": list(self.letters), "token_ids": list(self.token_ids)}


@dataclass(frozen=True)
class ZooMask:
    """A mask file of the zoo (grpo-s0's exact update mask) and its size."""

    path: str
    density: float | None = None
    count: int | None = None
    numel: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> ZooMask:
        return _record(cls, d, "a mask")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ZooExtras:
    """What the build added to the job registry and the analysis cache (:mod:`subnetviz.demo.extras`).

    ``runs_root``: the runs folder (registry) they live in. ``member_runs``: member id -> run id of
    its training log, a succeeded ``train`` run (the Training page's curves). ``jobs``: ``"bigram"``,
    ``"optimal"`` (bigram_mask jobs on the base, fast preset, λ = 10; the mask is
    ``<run>/outputs/mask.safetensors``), ``"continual"`` (the continual demo) and ``"drivers"`` (the
    What-drives-sparsity grid, ``<run>/outputs/results.csv``) -> run id; they may
    still be queued or running (:func:`subnetviz.demo.extras.pending_jobs`). ``comparison``: the
    Training page's precomputed pair (``full``, ``sub`` member ids) and its cache ``key``."""

    runs_root: str
    member_runs: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, str] = field(default_factory=dict)
    comparison: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> ZooExtras:
        return _record(cls, d, "extras", member_runs=dict, jobs=dict, comparison=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def run_id(self, key: str) -> str | None:
        """The run id of a background job (``bigram``, ``optimal``, ``continual``, ``drivers``) or of a member's log."""
        return self.jobs.get(key) or self.member_runs.get(key)


@dataclass(frozen=True)
class ZooManifest:
    """Everything ``manifest.json`` records about a built zoo (paths relative to the zoo folder)."""

    format: str
    preset: str
    fingerprint: str
    settings: dict  # the ZooSettings the zoo was built with, as recorded
    created: str
    base: BaseInfo
    tokenizer: dict
    corpus: dict
    bigram: BigramInfo
    problem_sets: dict[str, ProblemSet]
    members: tuple[ZooMember, ...]
    series: tuple[SeriesPoint, ...]
    masks: dict[str, ZooMask]
    overlap: tuple[OverlapPair, ...]
    stage_seconds: dict[str, float | None] = field(default_factory=dict)
    build_seconds: float | None = None
    this_run_seconds: float | None = None
    extras: ZooExtras | None = None  # set once the registry runs, background jobs and cache are made

    def member(self, member_id: str) -> ZooMember:
        for m in self.members:
            if m.id == member_id:
                return m
        ids = [m.id for m in self.members]
        raise CheckpointError(f"the demo zoo has no member {member_id!r}.{suggest(member_id, ids)}")

    def pair(self, a: str, b: str) -> OverlapPair:
        for o in self.overlap:
            if {o.a, o.b} == {a, b}:
                return o
        raise CheckpointError(f"the demo zoo's manifest has no overlap of {a!r} and {b!r}.")

    @classmethod
    def from_dict(cls, d: dict) -> ZooManifest:
        """Typed records from the JSON; :class:`CheckpointError` naming the first missing key."""
        if not isinstance(d, dict):
            raise CheckpointError(f"{MANIFEST}: expected a JSON object, got {type(d).__name__}.")

        def each(kind, record):
            def convert(v):
                if not isinstance(v, kind):
                    raise CheckpointError(f"{MANIFEST}: expected a {kind.__name__} of {record.__name__} entries.")
                if kind is dict:
                    return {k: record.from_dict(x) for k, x in v.items()}
                return tuple(record.from_dict(x) for x in v)

            return convert

        return _record(
            cls,
            d,
            "the manifest",
            base=BaseInfo.from_dict,
            bigram=BigramInfo.from_dict,
            problem_sets=each(dict, ProblemSet),
            members=each(list, ZooMember),
            series=each(list, SeriesPoint),
            masks=each(dict, ZooMask),
            overlap=each(list, OverlapPair),
            extras=ZooExtras.from_dict,
        )

    def to_dict(self) -> dict:
        """The JSON form (the layout ``manifest.json`` has always had)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if hasattr(v, "to_dict"):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = [x.to_dict() for x in v]
            elif isinstance(v, dict):
                v = {k: x.to_dict() if hasattr(x, "to_dict") else x for k, x in v.items()}
            if v is None and f.default is None:
                continue
            out[f.name] = v
        return out
