"""The demo model zoo's catalogue: what it holds (presets, member recipes) and reading it back
(:func:`load_zoo`, :func:`zoo_is_built`, :class:`Zoo`).

Building lives in :mod:`subnetviz.demo.build` (``python -m subnetviz demo build``). This module
only reads ``manifest.json`` and checks that the files it names exist; importing it does not
import torch.

Member ids: ``base``, ``grpo-s0``, ``grpo-s1``, ``grpo-s2``, ``grpo-B``, ``dpo``, ``sft``,
``grpo-sub``; grpo-s0's checkpoint series as ``grpo-s0@<step>``.

``manifest.json`` (paths relative to the zoo folder):

- ``members``: one entry per id: ``path, algorithm, seed, data ("A"|"B"|"mix"), steps,
  learning_rate, accuracy, accuracy_A, accuracy_B, sparsity, changed, numel`` (+ ``mask``,
  ``mask_check``, ``identical_to_grpo_s0`` for ``grpo-sub``; ``data_notes`` for DPO/SFT data);
- ``series``: ``[{step, path, sparsity, accuracy}]`` of grpo-s0, the final model last;
- ``base`` (params, pretraining steps and why it stopped, accuracies, shape), ``tokenizer``,
  ``corpus``, ``bigram`` (``bigram.npz``: token_ids, letters, transition, stationary),
  ``problem_sets`` (train/eval JSONL per set), ``masks`` (``grpo-s0``: its exact update mask),
  ``overlap`` (o1/o2 and chance values for pairs of members), ``stage_seconds``,
  ``build_seconds``, ``settings``, ``fingerprint``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from subnetviz.demo.pretrain import ModelShape
from subnetviz.errors import CheckpointError, suggest

ZOO_FORMAT = "subnetviz-zoo/1"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ZooSettings:
    """Everything that decides the zoo's contents; its hash keys the cache."""

    n_letters: int = 14
    concentration: float = 0.3
    chain_len: int = 24
    chain_seed: int = 0
    pool: tuple[int, int] = (10, 99)
    range_a: tuple[int, int] = (10, 49)
    range_b: tuple[int, int] = (50, 99)
    n_eval: int = 200
    data_seed: int = 0
    shape: ModelShape = field(default_factory=ModelShape)
    pretrain_steps: int = 1500  # at most: it stops at pretrain_target
    batch_arith: int = 64
    batch_chain: int = 16
    pretrain_lr: float = 2e-3
    pretrain_seed: int = 0
    pretrain_target: float | None = 0.4  # stop at this held-out (dev) accuracy: RL needs room to learn
    pretrain_check_every: int = 25
    # Measured (bench_zoo): at 2e-6 x 100 steps GRPO leaves 66-68 % of weights bit-identical, its
    # seeds overlap at 2.4-2.5x chance, and SFT/DPO at the same lr and steps are denser (28 %/38 %).
    # The feasibility notes (another base) saw 1e-6: ~93 % sparse, accuracy unchanged; 1e-5: ~53 %
    # sparse, seed overlap only 1.45x chance.
    ft_steps: int = 100
    ft_lr: float = 2e-6
    batch_size: int = 32
    num_generations: int = 8
    max_completion_length: int = 4
    series_points: int = 8
    dpo_prompts: int = 256
    dpo_samples: int = 8

    def fingerprint(self) -> str:
        blob = json.dumps({"format": ZOO_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def series_steps(self) -> list[int]:
        """Evenly spaced intermediate checkpoints of grpo-s0 (the final model is the last point)."""
        k = self.series_points
        return sorted({max(1, round(self.ft_steps * i / k)) for i in range(1, k)} - {self.ft_steps})


PRESETS: dict[str, ZooSettings] = {
    "demo": ZooSettings(),
    # Same code, toy sizes: single-digit operands so a 2-layer model learns some of it in seconds.
    "micro": ZooSettings(
        n_letters=6,
        chain_len=12,
        pool=(0, 19),
        range_a=(0, 9),
        range_b=(10, 19),
        n_eval=20,
        shape=ModelShape(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        pretrain_steps=100,
        pretrain_target=None,
        batch_arith=32,
        batch_chain=8,
        pretrain_lr=1e-2,
        ft_steps=6,
        ft_lr=1e-4,
        batch_size=16,
        num_generations=4,
        series_points=6,
        dpo_prompts=48,
        dpo_samples=4,
    ),
}


@dataclass(frozen=True)
class Member:
    """One finetune of the base (the recipe; numbers live in the manifest)."""

    id: str
    algorithm: str
    data: str  # "A" | "B"
    seed: int
    label: str
    series: bool = False
    masked: bool = False


MEMBERS: tuple[Member, ...] = (
    Member("grpo-s0", "grpo", "A", 0, "GRPO seed 0 on A (with checkpoint series)", series=True),
    Member("grpo-s1", "grpo", "A", 1, "GRPO seed 1 on A"),
    Member("grpo-s2", "grpo", "A", 2, "GRPO seed 2 on A"),
    Member("grpo-B", "grpo", "B", 0, "GRPO seed 0 on B"),
    Member("dpo", "dpo", "A", 0, "DPO on on-policy pairs from A"),
    Member("sft", "sft", "A", 0, "SFT on gold answers the base gets wrong (A)"),
    Member("grpo-sub", "grpo", "A", 0, "GRPO seed 0 on A inside grpo-s0's update mask", masked=True),
)
MEMBER_IDS = ("base", *(m.id for m in MEMBERS))
MASK_FILE = "masks/grpo-seed0.safetensors"


@dataclass(frozen=True)
class ZooMember:
    """One model of the zoo (the base included). ``accuracy``: greedy exact match on the held-out
    eval split of its problem set (``data``; the base is scored on set A); ``sparsity``: share of
    parameters whose bf16 bit patterns equal the base's (every tensor, parameter-weighted)."""

    id: str
    path: Path
    algorithm: str
    seed: int
    data: str
    steps: int
    learning_rate: float
    accuracy: float
    sparsity: float


@dataclass(frozen=True)
class Zoo:
    """A built zoo: ``manifest`` is ``manifest.json`` as written; paths are absolute."""

    root: Path
    manifest: dict
    base: Path
    members: tuple[ZooMember, ...]

    @property
    def member_ids(self) -> list[str]:
        return [m.id for m in self.members]

    @property
    def series(self) -> list[tuple[int, Path]]:
        """grpo-s0's checkpoint series as ``(step, folder)``, the final model last."""
        return [(int(p["step"]), self.root / p["path"]) for p in self.manifest["series"]]

    @property
    def bigram_path(self) -> Path:
        return self.root / self.manifest["bigram"]["path"]

    def mask_path(self, name: str = "grpo-s0") -> Path:
        masks = self.manifest["masks"]
        if name not in masks:
            raise CheckpointError(f"the demo zoo has no mask {name!r}; it has {sorted(masks)}.{suggest(name, masks)}")
        return self.root / masks[name]["path"]

    def member_path(self, member_id: str) -> Path:
        """The model folder of ``member_id`` (``"base"``, ``"grpo-s0"``, ..., or ``"grpo-s0@<step>"``)."""
        for m in self.members:
            if m.id == member_id:
                return m.path
        points = {f"grpo-s0@{s}": p for s, p in self.series}
        if member_id in points:
            return points[member_id]
        known = [*self.member_ids, *points]
        raise CheckpointError(f"the demo zoo has no member {member_id!r}.{suggest(member_id, known)}")

    def to_frame(self):
        """One row per member: id, path, algorithm, seed, data, steps, learning_rate, accuracy, sparsity."""
        import pandas as pd

        return pd.DataFrame([{**m.__dict__, "path": str(m.path)} for m in self.members])


def _root(root: str | os.PathLike | None) -> Path:
    from subnetviz.config import zoo_dir

    return Path(root).expanduser().resolve() if root is not None else zoo_dir()


def _read_manifest(root: Path) -> dict | None:
    try:
        man = json.loads((root / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return man if isinstance(man, dict) and man.get("format") == ZOO_FORMAT else None


def _complete(root: Path, man: dict) -> bool:
    """Every model folder, the bigram file and the masks the manifest names exist."""
    try:
        models = [m["path"] for m in man["members"]] + [p["path"] for p in man["series"]]
        files = [man["bigram"]["path"], *(m["path"] for m in man["masks"].values())]
    except (KeyError, TypeError):
        return False
    return (
        bool(models)
        and all((root / p / "model.safetensors").is_file() for p in models)
        and all((root / f).is_file() for f in files)
    )


def zoo_is_built(root: str | os.PathLike | None = None) -> bool:
    """True when ``root`` holds a complete zoo (manifest written and every model folder present)."""
    root = _root(root)
    man = _read_manifest(root)
    return man is not None and _complete(root, man)


def load_zoo(root: str | os.PathLike | None = None) -> Zoo:
    """The zoo built under ``root`` (default :func:`~subnetviz.config.zoo_dir`); never builds."""
    root = _root(root)
    man = _read_manifest(root)
    if man is None or not _complete(root, man):
        raise CheckpointError(
            f"{root}: no complete demo zoo there (manifest.json missing or a model folder gone). "
            "Build it with `python -m subnetviz demo build`."
        )
    members = tuple(
        ZooMember(
            m["id"],
            root / m["path"],
            m["algorithm"],
            int(m["seed"]),
            m["data"],
            int(m["steps"]),
            float(m["learning_rate"]),
            float(m["accuracy"]),
            float(m["sparsity"]),
        )
        for m in man["members"]
    )
    return Zoo(root, man, root / man["base"]["path"], members)
