"""What every subcommand shares: torch's thread count, a progress bar on stderr, the ``--out`` check."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from subnetviz.errors import SubnetvizError


def threads() -> None:
    # A 2-core laptop or CI box: torch's default thread count thrashes under load.
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))


def progress_bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="tensor", file=sys.stderr, dynamic_ncols=True)

    def update(step: int, total: int, what: str) -> None:
        bar.total = total
        bar.n = step
        bar.set_postfix_str(what[-40:], refresh=False)
        bar.refresh()
        if step >= total:
            bar.close()

    return update


def check_out(out: str, overwrite: bool) -> Path:
    """An output folder the command may write: new, empty, or (with ``--overwrite``) replaced atomically
    once the new result is complete — never a user's folder deleted, never a file taken for a folder."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise SubnetvizError(f"--out {out}: a file is there, not a folder; choose a folder name.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise SubnetvizError(
            f"--out {out}: the folder exists and is not empty; choose a new folder, or pass --overwrite to replace it."
        )
    return path
