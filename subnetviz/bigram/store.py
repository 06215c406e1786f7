"""The bigram page's analysis of a mask, cached on disk (no pickle: Parquet, JSON and NumPy files).

:func:`cached_mask_analysis` keys a result by the model's fingerprint, each mask file's name, size
and mtime, and the corpus, so re-opening the page is instant for everyone and a changed file never
returns a stale result. A result is written to a temporary folder and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from subnetviz.bigram.evaluate import AblationReport, SubnetworkAnalysis
from subnetviz.bigram.locate import OverlapReport
from subnetviz.bigram.residual import ResidualReport
from subnetviz.cache import atomic_folder

_OVERLAP_SCALARS = ("n_total", "kept0", "kept1", "shared", "overlap", "expected_uniform", "expected_rows",
                    "p_uniform", "p_rows", "share_of_0_in_1")  # fmt: skip


def save_analysis(folder: str | os.PathLike, result: SubnetworkAnalysis, gens: pd.DataFrame | None) -> Path:
    """Write ``result`` (and the generations) under ``folder``, atomically."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        result.ablation.rows.to_parquet(tmp / "ablation.parquet", index=False)
        result.shares.to_parquet(tmp / "shares.parquet", index=False)
        result.split.to_parquet(tmp / "split.parquet", index=False)
        if result.residual is not None:
            result.residual.rotation.to_parquet(tmp / "rotation.parquet", index=False)
            result.residual.covariance.to_parquet(tmp / "covariance.parquet", index=False)
        if result.overlap is not None:
            ov = result.overlap
            (tmp / "overlap.json").write_text(json.dumps({k: float(getattr(ov, k)) for k in _OVERLAP_SCALARS}))
            np.savez(tmp / "overlap_null.npz", uniform=ov.null_uniform, rows=ov.null_rows)
        if gens is not None:
            gens.to_parquet(tmp / "generations.parquet", index=False)
        (tmp / "headline.json").write_text(json.dumps(result.headline, default=float))
    return folder


def load_analysis(folder: str | os.PathLike) -> tuple[SubnetworkAnalysis, pd.DataFrame | None]:
    """Read what :func:`save_analysis` wrote."""
    f = Path(folder)
    residual = None
    if (f / "rotation.parquet").exists():
        residual = ResidualReport(pd.read_parquet(f / "rotation.parquet"), pd.read_parquet(f / "covariance.parquet"))
    overlap = None
    if (f / "overlap.json").exists():
        scalars = json.loads((f / "overlap.json").read_text())
        for k in ("n_total", "kept0", "kept1", "shared"):
            scalars[k] = int(scalars[k])
        null = np.load(f / "overlap_null.npz")
        overlap = OverlapReport(**scalars, null_uniform=null["uniform"], null_rows=null["rows"])
    result = SubnetworkAnalysis(
        AblationReport(pd.read_parquet(f / "ablation.parquet")), pd.read_parquet(f / "shares.parquet"),
        pd.read_parquet(f / "split.parquet"), residual, overlap, json.loads((f / "headline.json").read_text()),
    )  # fmt: skip
    gens = pd.read_parquet(f / "generations.parquet") if (f / "generations.parquet").exists() else None
    return result, gens


def _file_key(path: str | os.PathLike | None) -> str:
    if not path:
        return "-"
    p = Path(path)
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def cached_mask_analysis(model: str, mask: str, corpus: str = "zoo", optimal: str | None = None,
                         cache_root: str | os.PathLike | None = None):  # fmt: skip
    """:func:`subnetviz.bigram.job.analyse_mask_file` through the on-disk cache: ``(result, generations)``."""
    from subnetviz.bigram.job import analyse_mask_file, zoo_bigram_path
    from subnetviz.bigram.maskable import model_folder
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.config import cache_dir

    folder = model_folder(model)
    corpus_key = _file_key(zoo_bigram_path()) if corpus == "zoo" else _file_key(corpus)
    payload = json.dumps([open_checkpoint(folder).fingerprint, _file_key(mask), _file_key(optimal), corpus_key])
    key = hashlib.sha256(payload.encode()).hexdigest()[:24]
    target = Path(cache_root) if cache_root else cache_dir() / "bigram"
    target = target / key
    if (target / "headline.json").exists():
        return load_analysis(target)
    result, gens = analyse_mask_file(model, mask, corpus=corpus, optimal=optimal)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_analysis(target, result, gens)
    return result, gens
