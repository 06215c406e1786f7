"""A built demo zoo on disk: :class:`Zoo` (its folder and typed manifest) and the functions that
find, check and load one; the manifest's records are in :mod:`subnetviz.demo.manifest`."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from subnetviz.demo.manifest import MANIFEST, ZOO_FORMAT, ZooManifest, ZooMember
from subnetviz.errors import CheckpointError, suggest


@dataclass(frozen=True)
class Zoo:
    """A built zoo: its folder and manifest; :attr:`members` carry absolute paths."""

    root: Path
    manifest: ZooManifest

    @property
    def base(self) -> Path:
        return self.root / self.manifest.base.path

    @property
    def members(self) -> tuple[ZooMember, ...]:
        return tuple(replace(m, path=self.root / m.path) for m in self.manifest.members)

    @property
    def member_ids(self) -> list[str]:
        return [m.id for m in self.manifest.members]

    @property
    def series(self) -> list[tuple[int, Path]]:
        """grpo-s0's checkpoint series as ``(step, folder)``, the final model last."""
        return [(p.step, self.root / p.path) for p in self.manifest.series]

    @property
    def bigram_path(self) -> Path:
        return self.root / self.manifest.bigram.path

    def mask_path(self, name: str = "grpo-s0") -> Path:
        masks = self.manifest.masks
        if name not in masks:
            raise CheckpointError(f"the demo zoo has no mask {name!r}; it has {sorted(masks)}.{suggest(name, masks)}")
        return self.root / masks[name].path

    def member_path(self, member_id: str) -> Path:
        """The model folder of ``member_id`` (``"base"``, ``"grpo-s0"``, ..., or ``"grpo-s0@<step>"``)."""
        for m in self.manifest.members:
            if m.id == member_id:
                return self.root / m.path
        points = {f"grpo-s0@{s}": p for s, p in self.series}
        if member_id in points:
            return points[member_id]
        known = [*self.member_ids, *points]
        raise CheckpointError(f"the demo zoo has no member {member_id!r}.{suggest(member_id, known)}")

    def to_frame(self):
        """One row per member: every :class:`ZooMember` field, ``path`` absolute."""
        import pandas as pd

        return pd.DataFrame([{**m.to_dict(), "path": str(m.path)} for m in self.members])


def zoo_root(root: str | os.PathLike | None) -> Path:
    from subnetviz.config import zoo_dir

    return Path(root).expanduser().resolve() if root is not None else zoo_dir()


def read_manifest(root: Path) -> ZooManifest | None:
    """The manifest under ``root``, or None when it is missing, not this format, or damaged: so the pages say the
    zoo is not built and ``demo build`` writes it again. Damaged is a folder or other non-file in its place, a
    file that cannot be read or is larger than any manifest, and anything :func:`~subnetviz.config.parse_json`
    refuses (bytes that are not UTF-8 text, a lone surrogate escape, nesting or a number too large to parse), and
    any entry of the wrong JSON type (a list where a path or an object is expected): each was a bug notice on every
    page, the manifest being read for the sidebar. (The app's own file: read wherever the zoo folder leads, as
    before, not gated by the read roots.)"""
    from subnetviz.config import JSON_FILE_LIMIT, not_a_file, parse_json

    path = root / MANIFEST
    try:
        if not_a_file(path):  # (a named pipe would block the open for good)
            return None
        with open(path, "rb") as fh:
            data = fh.read(JSON_FILE_LIMIT + 1)
        if len(data) > JSON_FILE_LIMIT:
            return None
        raw = parse_json(data, MANIFEST, CheckpointError, text=True)
    except (OSError, CheckpointError):
        return None
    if raw.get("format") != ZOO_FORMAT:
        return None
    try:
        return ZooManifest.from_dict(raw)
    except (CheckpointError, TypeError, ValueError, AttributeError, KeyError):  # dict("ab"), tuple(5), Path([])
        return None


def is_complete(root: Path, man: ZooManifest) -> bool:
    """Every model folder, the bigram file and the masks the manifest names exist; False where the manifest
    names them with values that are no paths (a number, a list: ``root / 5`` raises TypeError)."""
    models = [m.path for m in man.members] + [p.path for p in man.series]
    try:
        files = [man.bigram.path, *(m.path for m in man.masks.values())]
        return (
            bool(models)
            and all((root / p / "model.safetensors").is_file() for p in models)
            and all((root / f).is_file() for f in files)
        )
    except (TypeError, ValueError, AttributeError):
        return False


def zoo_is_built(root: str | os.PathLike | None = None) -> bool:
    """True when ``root`` holds a complete zoo (manifest written and every model folder present)."""
    root = zoo_root(root)
    man = read_manifest(root)
    return man is not None and is_complete(root, man)


def load_zoo(root: str | os.PathLike | None = None) -> Zoo:
    """The zoo built under ``root`` (default :func:`~subnetviz.config.zoo_dir`); never builds."""
    root = zoo_root(root)
    man = read_manifest(root)
    if man is None or not is_complete(root, man):
        raise CheckpointError(
            f"{root}: no complete demo zoo there (manifest.json missing or a model folder gone). "
            "Build it with `python -m subnetviz demo build`."
        )
    return Zoo(root, man)
