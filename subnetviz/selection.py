"""What the shared sidebar selects, without Streamlit: zoo members and finished runs as choices,
choice resolution under the allowed roots, uploaded masks, and the saved masks the app can see.

:mod:`subnetviz.ui` draws the widgets; everything here is plain Python, usable from tests and the CLI.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from subnetviz import config
from subnetviz.cache import file_stamp

PRECISIONS = ["stored", "bf16", "fp32", "fp16"]


@dataclass(frozen=True)
class Workspace:
    """What the sidebar selected: paths are resolved and checked against the allowed roots."""

    base: str | None
    base_label: str
    finetuned: tuple[tuple[str, str], ...]  # (label, path)
    masks: tuple[tuple[str, str], ...]  # (label, path) of saved mask files
    precision: str | None  # None = stored dtype
    device: str
    zoo_root: str | None

    @property
    def labels(self) -> list[str]:
        return [lab for lab, _ in self.finetuned]

    @property
    def paths(self) -> list[str]:
        return [p for _, p in self.finetuned]


def zoo_members(z) -> dict[str, str]:
    """Choice id -> absolute path: zoo members (base first), the zoo's series, then finished training runs."""
    out: dict[str, str] = {}
    if z is not None:
        out.update({m.id: str(m.path) for m in z.members})
        out.update({f"grpo-s0@{step}": str(path) for step, path in z.series})
    for model in sorted(config.runs_dir().glob("*/outputs/model/config.json")):
        out[f"run {model.parts[-4]}"] = str(model.parent)  # only complete runs have outputs/ (renamed at the end)
    return out


def label_of(choice: str, members: dict[str, str]) -> str:
    return choice if choice in members else Path(choice.rstrip("/")).name or choice


def resolve_choice(choice: str, members: dict[str, str]) -> str:
    """A zoo member id, a path under the allowed roots, or a cached hub id -> a path/id to open."""
    if choice in members:
        return members[choice]
    p = Path(choice).expanduser()
    if p.is_absolute() or choice.startswith((".", "~")) or p.exists():
        return str(config.check_allowed(p))
    return choice  # a hub id: resolved only through the local HF cache when opened


def uploads_dir() -> Path:
    path = config.home() / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_upload(name: str, data: bytes) -> Path:
    """Store an uploaded mask: safetensors as is (validated by reading it), a released bigram pickle
    converted through the restricted unpickler. Returns the stored safetensors path."""
    import tempfile

    from subnetviz.errors import MaskError
    from subnetviz.masks import import_bigram_pickle, load_mask_set, save_mask_set

    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).stem)[:80] or "mask"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / Path(name).name
        src.write_bytes(data)
        if name.endswith((".pickle", ".pkl")):
            ms = import_bigram_pickle(src)
        elif name.endswith(".safetensors"):
            ms = load_mask_set(src)
        else:
            raise MaskError(f"{name}: upload a mask as .safetensors or a released bigram .pickle.")
        ms.metadata.setdefault("source", f"upload {name}")
        return save_mask_set(uploads_dir() / f"{stem}.safetensors", ms)


def saved_masks() -> dict[str, str]:
    """Mask files the app can see: the zoo's, finished runs' outputs, and uploads."""
    found: dict[str, str] = {}
    roots = [config.zoo_dir() / "masks", uploads_dir()]
    for root in roots:
        if root.is_dir():
            for f in sorted(root.glob("*.safetensors")):
                found[f"{root.name}/{f.stem}"] = str(f)
    runs = config.runs_dir()
    for f in sorted(runs.glob("*/outputs/**/*.safetensors")):
        if f.name.startswith("model") or "checkpoint" in f.parts[-2]:
            continue
        rel = f.relative_to(runs)
        label = f"run {rel.parts[0]}/{'/'.join(rel.parts[2:])[:-12]}"
        if f.name == "mask.safetensors":  # a bigram-mask job: say what it is
            info = mask_info(str(f), file_stamp(f))
            if info.get("target"):
                lam = info.get("lambda")
                label = f"{info['target']} mask λ={lam if lam is None else format(lam, 'g')} · {rel.parts[0]}"
        found[label] = str(f)
    return found


@functools.lru_cache(maxsize=256)
def mask_info(path: str, stamp: str) -> dict:
    """A mask file's provenance (its safetensors header only; no tensor is read); ``stamp``:
    :func:`~subnetviz.cache.file_stamp` of ``path``, so a rewritten file is read again."""
    import json

    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="np") as f:
            return json.loads((f.metadata() or {}).get("subnetviz", "{}"))
    except (OSError, ValueError, SafetensorError):  # unreadable: keeps its plain label; opening it reports why
        return {}
