"""The bigram page's analysis of a mask, cached on disk (no pickle: Parquet, JSON and NumPy files).

:func:`cached_mask_analysis` keeps a result in the one versioned cache (:mod:`subnetviz.cache`),
keyed by :func:`analysis_key`: the model's fingerprint and the stamps of its folder's files (config,
tokenizer), each mask file's stamp (path, size, mtime_ns), the corpus and its files, the analysis options,
the code that computes it and :data:`BIGRAM_VERSION`. Re-opening the page is instant for everyone and a
changed file or upgraded code never returns a stale result. A result appears only when complete (written
to a temporary folder, then renamed).
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
from subnetviz.cache import atomic_folder, cache_key, entry, file_stamp, touch, verify_manifest

_OVERLAP_SCALARS = (
    "n_total",
    "kept0",
    "kept1",
    "shared",
    "overlap",
    "expected_uniform",
    "expected_rows",
    "p_uniform",
    "p_rows",
    "share_of_0_in_1",
)


def save_analysis(folder: str | os.PathLike, result: SubnetworkAnalysis, gens: pd.DataFrame | None) -> Path:
    """Write ``result`` (and the generations) under ``folder``, atomically."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        _write_files(tmp, result, gens)
    return folder


def _write_files(folder: Path, result: SubnetworkAnalysis, gens: pd.DataFrame | None) -> None:
    result.ablation.rows.to_parquet(folder / "ablation.parquet", index=False)
    result.shares.to_parquet(folder / "shares.parquet", index=False)
    result.split.to_parquet(folder / "split.parquet", index=False)
    if result.residual is not None:
        result.residual.rotation.to_parquet(folder / "rotation.parquet", index=False)
        result.residual.covariance.to_parquet(folder / "covariance.parquet", index=False)
    if result.overlap is not None:
        ov = result.overlap
        (folder / "overlap.json").write_text(json.dumps({k: float(getattr(ov, k)) for k in _OVERLAP_SCALARS}))
        np.savez(folder / "overlap_null.npz", uniform=ov.null_uniform, rows=ov.null_rows)
    if gens is not None:
        gens.to_parquet(folder / "generations.parquet", index=False)
    (folder / "headline.json").write_text(json.dumps(result.headline, default=float))


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
        AblationReport(pd.read_parquet(f / "ablation.parquet")),
        pd.read_parquet(f / "shares.parquet"),
        pd.read_parquet(f / "split.parquet"),
        residual,
        overlap,
        json.loads((f / "headline.json").read_text()),
    )
    gens = pd.read_parquet(f / "generations.parquet") if (f / "generations.parquet").exists() else None
    return result, gens


# Bump when the files change layout (2: the generations as prompt + continuation, where one text column held
# both). Changed numbers need no bump: the key holds the fingerprint of the code in :data:`BIGRAM_CODE`.
BIGRAM_VERSION = 2
# The package's code that computes the analysis (:func:`~subnetviz.version.code_fingerprint` of it is in the key):
# the bigram package, and the model and mask readers and the finiteness check it goes through. A version number
# its owner had to remember to bump let results that later code computes differently be served stale.
BIGRAM_CODE = ("bigram", "analysis", "checkpoints", "masks.py")
# What the page asks of :func:`~subnetviz.bigram.job.analyse_mask_file` beyond the files: part of the key.
PAGE_OPTIONS = {"eval_sequences": 200, "seeds": (0, 1, 2), "residual_tokens": 20_000, "seed": 0}


def planned_passes(model: str, corpus: str = "zoo") -> tuple[int, int, float, int]:
    """What the page's analysis of a mask (:func:`~subnetviz.bigram.job.analyse_mask_file`
    with :data:`PAGE_OPTIONS`) will run, without loading the model: (forward passes, masked
    models built, tokens per pass, parameters), from the config and the headers.

    - The ablations run the held-out sequences through the full model, the empty subnetwork, the subnetwork
      and its ablation, and each seed's random subnetwork and its ablation.
    - The residual stream runs whole held-out sequences, up to ``residual_tokens`` (at least one), through the
      full model, the subnetwork and a random subnetwork.
    - The generations (only when the model folder has a tokenizer) sample up to 20 tokens from a 4-token prompt,
      once per seed, with the full model and the ablated one, the whole prefix each step (no cache).

    The zoo corpus holds out exactly ``eval_sequences`` sequences; a text corpus at most that many (at most a
    fifth of its sequences, which only tokenising it would tell), so its price is an upper bound."""
    from subnetviz.bigram.job import zoo_bigram_path, zoo_doc_length
    from subnetviz.bigram.maskable import model_folder
    from subnetviz.checkpoints import open_checkpoint

    folder = model_folder(model)
    ck = open_checkpoint(folder)
    cfg = ck.config or {}
    max_pos = cfg.get("max_position_embeddings") or cfg.get("n_positions") or 128
    seq_len = 128
    table = zoo_bigram_path() if corpus == "zoo" else None
    if table is not None and Path(table).is_file():
        seq_len = zoo_doc_length(table) or seq_len
    seq_len = min(seq_len, int(max_pos))
    seeds = len(PAGE_OPTIONS["seeds"])
    n_eval = PAGE_OPTIONS["eval_sequences"]
    ablation_passes = 4 + 2 * seeds
    residual_passes = 3 if PAGE_OPTIONS["residual_tokens"] else 0
    residual_seqs = max(1, min(n_eval, (PAGE_OPTIONS["residual_tokens"] or 0) // seq_len))  # as collect_stats
    has_tokenizer = (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()
    steps = min(20, seq_len) if has_tokenizer else 0
    tokens = (
        ablation_passes * n_eval * seq_len
        + residual_passes * residual_seqs * seq_len
        + 2 * seeds * sum(4 + t for t in range(steps))
    )
    passes = ablation_passes + residual_passes + 2 * seeds * steps
    builds = (ablation_passes - 1) + (2 if residual_passes else 0) + (1 if has_tokenizer else 0)  # the full model: none
    return passes, builds, tokens / passes, ck.num_params


def analysis_key(model: str, mask: str, corpus: str = "zoo", optimal: str | None = None) -> str:
    """The cache key of a mask analysis: the model's fingerprint and its folder's files (config.json decides the
    forward pass, the tokenizer the text corpora and the generations), each file's stamp (path, size, mtime_ns),
    the corpus and its files, the options, the analysis code's fingerprint and :data:`BIGRAM_VERSION`. The page
    keys its memory cache with it too, so a changed file is never answered from either cache."""
    from subnetviz.bigram.job import zoo_bigram_path
    from subnetviz.bigram.maskable import model_folder
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.version import code_fingerprint

    folder = model_folder(model)
    if corpus == "zoo":
        corpus_stamp = file_stamp(zoo_bigram_path())
    elif str(corpus).startswith("hf:"):
        corpus_stamp = _hf_dataset_stamp(str(corpus))
    else:
        corpus_stamp = _saved_corpus_stamp(Path(corpus).expanduser())
    return cache_key(
        "bigram",
        BIGRAM_VERSION,
        code=code_fingerprint(BIGRAM_CODE),
        model=open_checkpoint(folder).fingerprint,
        model_files=file_stamp(folder),
        mask=file_stamp(mask),
        optimal=file_stamp(optimal),
        corpus=corpus,
        corpus_file=corpus_stamp,
        options=PAGE_OPTIONS,
    )


def _saved_corpus_stamp(path: Path) -> str:
    """A text file's stamp, or a saved dataset folder's: its files and, for a ``DatasetDict`` (``dataset_dict.json``),
    each split's folder of Arrow files too (a folder's :func:`~subnetviz.cache.file_stamp` covers the files directly
    inside it only)."""
    stamps = [file_stamp(path)]
    if (path / "dataset_dict.json").is_file():
        stamps += [file_stamp(p) for p in sorted(path.iterdir()) if p.is_dir()]
    return "|".join(stamps)


def _tree_stamp(path: Path) -> str:
    """:func:`~subnetviz.cache.file_stamp` of every file under ``path`` at any depth (of ``path`` itself when it
    is a file or missing). Lock files are left out: datasets takes them beside what it reads."""
    if not path.is_dir():
        return file_stamp(path)
    stamps = []
    for folder, dirs, names in os.walk(path):
        dirs.sort()
        stamps += [file_stamp(Path(folder) / n) for n in sorted(names) if not n.endswith(".lock")]
    return hashlib.sha256("\n".join(stamps).encode("utf-8", "surrogateescape")).hexdigest()[:24]


def _hf_dataset_stamp(corpus: str) -> str:
    """The files an ``hf:<name>[:<split>]`` corpus is read from (:func:`~subnetviz.bigram.stats.corpus_from_dataset`,
    offline): the datasets cache's folder of that name, whose newest config/version/hash folder ``load_dataset``
    reads, and the hub cache's snapshots of the dataset. By its name alone, a newer revision cached since kept
    the older one's result. A name the corpus reader refuses is keyed by its text (the analysis refuses it)."""
    import datasets
    from datasets.naming import camelcase_to_snakecase
    from huggingface_hub import constants as hub

    from subnetviz.bigram.stats import hub_dataset
    from subnetviz.errors import ConfigError

    try:
        name, _ = hub_dataset(corpus)
    except ConfigError:
        return corpus
    *namespace, last = name.split("/")
    cached = Path(datasets.config.HF_DATASETS_CACHE).expanduser() / "___".join(
        [*namespace, camelcase_to_snakecase(last)]
    )
    snapshots = Path(hub.HF_HUB_CACHE).expanduser() / f"datasets--{name.replace('/', '--')}"
    return f"{_tree_stamp(cached)}|{_tree_stamp(snapshots)}"


def is_cached(key: str, cache_root: str | os.PathLike | None = None) -> bool:
    """Whether the analysis under ``key`` (:func:`analysis_key`) is in the disk cache. Looked at only: a damaged
    entry is left for the call that computes it again to remove and say (removed here, it said nothing)."""
    ent = entry("bigram", key, root=cache_root)
    if not ent.folder.is_dir():
        return False
    touch(ent.folder)  # (as CacheEntry.status: kept by another process's eviction while it is read)
    return verify_manifest(ent.folder) is None


def cached_mask_analysis(
    model: str, mask: str, corpus: str = "zoo", optimal: str | None = None, cache_root: str | os.PathLike | None = None
):
    """:func:`subnetviz.bigram.job.analyse_mask_file` through the on-disk cache: ``(result, generations)``.

    Entries live in ``cache_dir()/bigram/<key>`` (or ``cache_root/<key>``), key :func:`analysis_key`.

    A damaged entry this call finds is removed and computed again, said first in the headline's ``notes`` (not
    stored: the new copy is sound). One an earlier check removed is not said again here: the page that removed it
    says it (``ui.damage_note``) before it computes.
    """
    from subnetviz.bigram.job import analyse_mask_file

    ent = entry("bigram", analysis_key(model, mask, corpus, optimal), root=cache_root)
    there = ent.folder.is_dir()
    ready, notice = ent.status()
    if ready:
        return load_analysis(ent.folder)
    result, gens = analyse_mask_file(model, mask, corpus=corpus, optimal=optimal, **PAGE_OPTIONS)
    with ent.publish() as folder:
        _write_files(folder, result, gens)
    if there and notice:  # (found damaged by this call)
        result.headline["notes"] = [notice, *(result.headline.get("notes") or [])]
    return result, gens
