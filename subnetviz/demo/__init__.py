"""The demo model zoo as a reader sees it: :func:`load_zoo`, :func:`zoo_is_built`, :class:`Zoo`.

Building lives in :mod:`subnetviz.demo.build` (``python -m subnetviz demo build``); this module
only reads ``manifest.json`` and checks that the model folders it names exist, so importing it
costs nothing (no torch).

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

import json
import os
from dataclasses import dataclass
from pathlib import Path

from subnetviz.errors import CheckpointError, suggest

ZOO_FORMAT = "subnetviz-zoo/1"
MANIFEST = "manifest.json"
MEMBER_IDS = ("base", "grpo-s0", "grpo-s1", "grpo-s2", "grpo-B", "dpo", "sft", "grpo-sub")


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
