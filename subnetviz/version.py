"""The package version and, when run from a git clone, the commit: what every output records.

:func:`version_info` is the one place that says which code produced a result. Analysis folders,
run folders, cache entries and exported dashboards record it, so a number can be traced back to
the code that computed it. From an installed wheel there is no clone, and ``git_revision`` is None.
"""

from __future__ import annotations

import functools
import os

__version__ = "0.1.0"  # the single source: pyproject.toml reads it (tool.setuptools.dynamic)


@functools.cache
def git_revision() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the clone this package is imported from, or ``(None, None)``.

    Only the folder directly above the package counts as a clone (a wheel installed in a virtual
    environment that happens to live inside some git repository must not report that repository's
    commit). ``dirty`` is True when tracked files differ from the commit. Computed once per process.
    """
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # os.path: pathlib costs 20 ms to import
    if not os.path.exists(os.path.join(root, ".git")):
        return None, None
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}  # GIT_DIR would point elsewhere
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, env=env
        )
        if head.returncode != 0:
            return None, None
        diff = subprocess.run(
            ["git", "-C", root, "diff", "--quiet", "HEAD", "--"], capture_output=True, timeout=30, env=env
        )
    except (OSError, subprocess.SubprocessError):  # no git executable, or it hung
        return None, None
    return head.stdout.strip(), diff.returncode == 1 if diff.returncode in (0, 1) else None


# The package's code that computes an update analysis (and the subspaces): reading checkpoints, naming their
# tensors, comparing them. Its cache keys hold a fingerprint of these files.
ANALYSIS_CODE = ("analysis", "checkpoints", "masks.py")


@functools.cache
def code_fingerprint(parts: tuple[str, ...] = ANALYSIS_CODE, root: str | None = None) -> str:
    """sha256 (16 hex digits) of the ``.py`` files under ``parts`` of the package (their paths and bytes):
    the code that computes a result. The update analysis's cache key holds it, so a result that other
    code computed (an earlier or later commit, an edited clone) is never served as this code's; before,
    a version number its owner had to remember to bump let analyses whose numbers later commits changed
    (a naming table, a stored form) be served stale. Read once per process (a few ms)."""
    import hashlib

    root = root or os.path.dirname(os.path.realpath(__file__))
    files = []
    for part in parts:
        top = os.path.join(root, part)
        if os.path.isfile(top):
            files.append(top)
        for folder, dirs, names in os.walk(top):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            files += [os.path.join(folder, n) for n in names if n.endswith(".py")]
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(os.path.relpath(path, root).replace(os.sep, "/").encode() + b"\0")
        with open(path, "rb") as fh:
            h.update(fh.read() + b"\0")
    return h.hexdigest()[:16]


def version_info() -> dict:
    """``{"subnetviz_version", "git_revision", "git_dirty"}``: record it beside every result.

    >>> sorted(version_info())
    ['git_dirty', 'git_revision', 'subnetviz_version']
    """
    revision, dirty = git_revision()
    return {"subnetviz_version": __version__, "git_revision": revision, "git_dirty": dirty}


def version_string() -> str:
    """One line for ``subnetviz --version``: ``subnetviz 0.1.0 (git 1a2b3c4d5e6f, modified)``."""
    revision, dirty = git_revision()
    if revision is None:
        return f"subnetviz {__version__}"
    return f"subnetviz {__version__} (git {revision[:12]}{', modified' if dirty else ''})"
