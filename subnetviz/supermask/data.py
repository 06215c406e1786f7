"""Offline task sequences for continual learning: split-digits, permuted-digits and arithmetic-text.

Every benchmark is built from data that is on this machine, seeded, and returned as a
:class:`Benchmark` of :class:`Task` tensors (x: (N, F) float32, y: (N,) int64, labels 0..C-1).

- ``split-digits``: scikit-learn's bundled ``load_digits`` (1797 8×8 images, X/16), 5 tasks of
  class pairs {0,1} … {8,9}, labels remapped to 0/1, each task split 70/30 stratified.
- ``permuted-digits``: one global 70/30 stratified split; task 0 is the identity, task t ≥ 1 a
  fixed pixel permutation drawn from ``(seed, t)``; 10-way head, any number of tasks.
- ``arithmetic-text``: see :func:`arithmetic_text`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from subnetviz.errors import ConfigError, suggest

BENCHMARKS = ("split-digits", "permuted-digits", "arithmetic-text")
# The version of the data the benchmarks build, recorded in each continual result (its config's "data_version"):
# 2 = arithmetic-text's prompts are drawn without replacement. A result without it (version 1) drew some prompts
# twice per task, and 4-9 % of each task's test prompts were also training prompts.
DATA_VERSION = 2
N_SPLIT_TASKS = 5


@dataclass(frozen=True)
class Task:
    """One task: train/test tensors, x (N, F) float32 and y (N,) int64 in 0..n_classes-1."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int


@dataclass(frozen=True)
class Benchmark:
    """A task sequence with its shared head size and default epochs (mask, weight, finetune)."""

    name: str
    tasks: tuple[Task, ...]
    n_features: int
    n_outputs: int
    default_epochs: tuple[int, int, int]

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)


def validate_tasks(tasks: tuple[Task, ...] | list[Task], where: str = "benchmark") -> None:
    """Refuse an empty sequence, or a task whose train or test split holds fewer than two classes."""
    if len(tasks) == 0:
        raise ConfigError(f"{where}: zero tasks; a task sequence needs at least one task.")
    for t in tasks:
        for split, y in (("train", t.y_train), ("test", t.y_test)):
            classes = torch.unique(y).tolist()
            if len(classes) < 2:
                raise ConfigError(
                    f"{where}: task {t.name!r} has only class {classes} in its {split} split; "
                    "every task needs at least two classes."
                )


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def _split(x: np.ndarray, y: np.ndarray, seed: int):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)


def _task(name: str, xtr, ytr, xte, yte, n_classes: int) -> Task:
    t = torch.from_numpy
    return Task(name, t(np.ascontiguousarray(xtr)), t(ytr), t(np.ascontiguousarray(xte)), t(yte), n_classes)


def split_digits(tasks: int = N_SPLIT_TASKS, seed: int = 0) -> Benchmark:
    """Tasks {0,1}, {2,3}, … (first ``tasks`` of the 5 pairs), binary labels, per-task 70/30 split."""
    if not 1 <= tasks <= N_SPLIT_TASKS:
        raise ConfigError(f"split-digits has 1 to {N_SPLIT_TASKS} tasks (class pairs of 10 digits); got {tasks}.")
    x, y = _digits()
    out = []
    for t in range(tasks):
        a, b = 2 * t, 2 * t + 1
        keep = (y == a) | (y == b)
        xtr, xte, ytr, yte = _split(x[keep], (y[keep] == b).astype(np.int64), seed)
        out.append(_task(f"digits {a}/{b}", xtr, ytr, xte, yte, 2))
    return Benchmark("split-digits", tuple(out), 64, 2, (30, 30, 60))


def permutation(task: int, seed: int, n: int = 64) -> np.ndarray:
    """Pixel permutation of ``task``: identity for task 0, else drawn from ``(seed, task)``."""
    if task == 0:
        return np.arange(n)
    return np.random.default_rng([seed, task]).permutation(n)


def permuted_digits(tasks: int = 5, seed: int = 0) -> Benchmark:
    """``tasks`` pixel permutations of one global stratified 70/30 split (1257 / 540), 10-way."""
    if tasks < 1:
        raise ConfigError(f"permuted-digits needs at least one task; got {tasks}.")
    x, y = _digits()
    xtr, xte, ytr, yte = _split(x, y, seed)
    out = []
    for t in range(tasks):
        p = permutation(t, seed)
        out.append(_task(f"perm {t}", xtr[:, p], ytr, xte[:, p], yte, 10))
    return Benchmark("permuted-digits", tuple(out), 64, 10, (10, 10, 20))


# Binary properties of an addition prompt "a+b=" (a, b two-digit). Each is a deterministic
# function of the prompt, so labels are exact; they need different pieces of the operands.
# Ordered from what mean-pooled features of the demo base separate well (carry, comparisons:
# 88-99 % in a probe) to digit-level parities that stay near chance (50-65 %), so the default
# 5-task sequence is learnable and the last tasks show the hard end.
TEXT_PROPERTIES: dict[str, object] = {
    "units carry": lambda a, b: int(a % 10 + b % 10 >= 10),
    "a > b": lambda a, b: int(a > b),
    "sum >= 100": lambda a, b: int(a + b >= 100),
    "b >= 50": lambda a, b: int(b >= 50),
    "sum ends in 5-9": lambda a, b: int((a + b) % 10 >= 5),
    "a is even": lambda a, b: int(a % 2 == 0),
    "sum is odd": lambda a, b: (a + b) % 2,
    "sum divisible by 3": lambda a, b: int((a + b) % 3 == 0),
}
PER_CLASS = 300


# Every prompt "a+b=" with two-digit operands: 90 × 90 = 8100 distinct pairs.
_PAIRS = tuple((a, b) for a in range(10, 100) for b in range(10, 100))


def _sample_prompts(prop, rng: np.random.Generator) -> tuple[list[tuple[int, int]], np.ndarray]:
    """``PER_CLASS`` distinct operand pairs of each label, drawn without replacement, shuffled.

    Without replacement because a prompt drawn twice has identical features and label, and the 70/30 split
    then sent one copy to train and one to test (4-9 % of each task's test prompts were training prompts)."""
    labels = np.array([int(prop(a, b)) for a, b in _PAIRS])
    ab: list[tuple[int, int]] = []
    for lab in (0, 1):
        pool = np.flatnonzero(labels == lab)  # every property has at least 2700 pairs of each label
        ab += [_PAIRS[i] for i in rng.choice(pool, PER_CLASS, replace=False)]
    y = np.array([0] * PER_CLASS + [1] * PER_CLASS, dtype=np.int64)
    order = rng.permutation(len(ab))
    return [ab[i] for i in order], y[order]


def encode_prompts(base: str | Path, prompts: list[str]) -> np.ndarray:
    """Mean-pooled last hidden state of the causal LM in ``base`` for each prompt: (N, d_model) float32.

    Prompts are grouped by token length so no padding (and no pad token) is needed.
    """
    base = Path(base)
    if not (base / "config.json").is_file():
        raise ConfigError(
            f"{base}: the demo zoo's base model is missing (no config.json). The arithmetic-text benchmark "
            "encodes prompts with it; build the demo zoo first with `python -m subnetviz demo build`."
        )
    from subnetviz.checkpoints.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(base)
    model = load_causal_lm(base, attn_implementation="eager").eval()
    # The zoo's base was pretrained without special tokens (TRL's add_special_tokens=False).
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    unk = tok.unk_token_id
    if unk is not None and any(unk in s for s in ids):
        raise ConfigError(f"{base}: its tokenizer cannot encode arithmetic prompts such as {prompts[0]!r}.")
    out = np.zeros((len(prompts), model.config.hidden_size), dtype=np.float32)
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(ids):
        by_len.setdefault(len(s), []).append(i)
    with torch.no_grad():
        for idx in by_len.values():
            for start in range(0, len(idx), 512):
                chunk = idx[start : start + 512]
                batch = torch.tensor([ids[i] for i in chunk])
                hidden = model(input_ids=batch, output_hidden_states=True).hidden_states[-1]
                out[chunk] = hidden.mean(dim=1).float().numpy()
    return out


def arithmetic_text(tasks: int = 5, seed: int = 0, base: str | Path | None = None) -> Benchmark:
    """Binary classification of addition prompts ``"a+b="`` by properties, over frozen encoder features.

    Why this sequence: the demo zoo's base model was pretrained on exactly these prompts
    (two-digit addition from the synthetic corpus), so its hidden states carry the operands,
    and every property in :data:`TEXT_PROPERTIES` (units carry, which operand is larger,
    sum ≥ 100, sum parity, ...) is a deterministic function of the prompt: exact labels, built offline,
    no hub. Tasks differ in how much of the operands they need, which is what makes transfer
    between masks (KKT) meaningful. Each task has ``PER_CLASS`` distinct prompts per class (balanced;
    no prompt twice in a task, so none is in both train and test), split 70/30 stratified; features
    are the mean-pooled last hidden state, z-scored with the train statistics of all tasks together.
    ``base`` defaults to ``zoo_dir()/base``.
    """
    names = list(TEXT_PROPERTIES)
    if not 1 <= tasks <= len(names):
        raise ConfigError(f"arithmetic-text has 1 to {len(names)} tasks ({', '.join(names)}); got {tasks}.")
    if base is None:
        from subnetviz.config import zoo_dir

        base = zoo_dir() / "base"
    rng = np.random.default_rng(seed)
    sampled = [_sample_prompts(TEXT_PROPERTIES[n], rng) for n in names[:tasks]]
    prompts = sorted({f"{a}+{b}=" for ab, _ in sampled for a, b in ab})
    feats = encode_prompts(base, prompts)
    row = {p: i for i, p in enumerate(prompts)}
    splits = []
    for ab, y in sampled:
        x = feats[[row[f"{a}+{b}="] for a, b in ab]]
        splits.append(_split(x, y, seed))
    train_all = np.concatenate([s[0] for s in splits])
    mu, sd = train_all.mean(0), train_all.std(0) + 1e-6
    out = [
        _task(n, (xtr - mu) / sd, ytr, (xte - mu) / sd, yte, 2)
        for n, (xtr, xte, ytr, yte) in zip(names, splits, strict=False)
    ]
    return Benchmark("arithmetic-text", tuple(out), feats.shape[1], 2, (10, 10, 20))


def make_benchmark(name: str, tasks: int, seed: int = 0) -> Benchmark:
    """Build benchmark ``name`` (one of :data:`BENCHMARKS`) with ``tasks`` tasks, validated."""
    if not isinstance(tasks, int) or isinstance(tasks, bool) or tasks < 1:
        raise ConfigError(f"tasks must be a positive integer; got {tasks!r} (zero tasks cannot be trained).")
    if name == "split-digits":
        b = split_digits(tasks, seed)
    elif name == "permuted-digits":
        b = permuted_digits(tasks, seed)
    elif name == "arithmetic-text":
        b = arithmetic_text(tasks, seed)
    else:
        raise ConfigError(
            f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}.{suggest(name, BENCHMARKS)}"
        )
    validate_tasks(b.tasks, name)
    return b
