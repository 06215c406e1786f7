"""Settings read from ``SUBNETVIZ_*`` environment variables, in this one place.

- ``SUBNETVIZ_HOME``: where the demo zoo, the run registry and the analysis cache live
  (default: the user's cache dir, e.g. ``~/.cache/subnetviz``).
- ``SUBNETVIZ_ROOTS``: ``os.pathsep``-separated folders the app may read checkpoints and masks
  from (default: ``SUBNETVIZ_HOME``, the Hugging Face cache and the current directory). The CLI
  and the library are not restricted; the app is, because shared dashboards are reachable by others.
- ``SUBNETVIZ_DEVICE``: default device for analyses (``auto`` = CUDA when present).
"""

from __future__ import annotations

import os
from pathlib import Path

from subnetviz.errors import PathNotAllowedError


def home() -> Path:
    """The subnetviz home folder (created on first use)."""
    env = os.environ.get("SUBNETVIZ_HOME")
    if env:
        path = Path(env).expanduser()
    else:
        from platformdirs import user_cache_dir

        path = Path(user_cache_dir("subnetviz"))
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def zoo_dir() -> Path:
    return home() / "zoo"


def runs_dir() -> Path:
    path = home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    path = home() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def hf_cache_dir() -> Path:
    """The local Hugging Face hub cache (``HF_HUB_CACHE`` / ``HF_HOME`` honoured)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(hf_home) / "hub"


def allowed_roots() -> list[Path]:
    env = os.environ.get("SUBNETVIZ_ROOTS")
    if env:
        roots = [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    else:
        roots = [home(), hf_cache_dir(), Path.cwd()]
    return [r.resolve() for r in roots]


def check_allowed(path: str | os.PathLike) -> Path:
    """Resolve ``path`` (symlinks included) and refuse it unless it lies under an allowed root."""
    resolved = Path(path).expanduser().resolve()
    roots = allowed_roots()
    for root in roots:
        if resolved == root or root in resolved.parents:
            return resolved
    raise PathNotAllowedError(
        f"{path}: outside the folders this server may read ({', '.join(str(r) for r in roots)}). "
        "Set SUBNETVIZ_ROOTS to add a folder."
    )


def default_device() -> str:
    return os.environ.get("SUBNETVIZ_DEVICE", "auto")


def resolve_device(device: str | None = None) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else is passed through."""
    import torch

    from subnetviz.errors import ConfigError

    device = device or default_device()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise ConfigError(f"device {device!r} is not one subnetviz can use; expected auto, cpu, cuda or cuda:N.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU; use 'cpu' or 'auto'.")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: torch sees {torch.cuda.device_count()} GPU(s) (cuda:0 …).")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' asked for, but torch sees no Apple GPU; use 'cpu' or 'auto'.")
    return device
