"""The ``continual`` job kind: validate a config, run every (method, density, seed), save, cache.

The config is a :class:`~subnetviz.supermask.config.ContinualConfig` (its JSON form is described
there). Outputs under ``ctx.out_dir``: ``result.json`` (summary, hash, data version), ``frames/<name>.parquet``
for every frame of :meth:`ContinualResult.to_frames` plus ``summary.csv``, and each run's task masks
as :class:`~subnetviz.masks.MaskSet` files ``masks/<slug>/d<density>/seed<s>/task<t>.safetensors``.
Inside each file the tensors keep the model's names (``layer1.weight`` ...), identical across tasks,
with the task in the file name and in the metadata: the overlap page can then align any set of task
masks name by name for Venn/UpSet (a ``task<t>/`` prefix would make every pair disjoint by name).
Results are kept in the one versioned cache (:mod:`subnetviz.cache`) under
``cache_dir()/continual/<key>``: the key holds the run plan, the benchmark, the fingerprint of the code that
trains and measures the runs (:data:`CONTINUAL_CODE`) and :data:`CACHE_VERSION`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa

from subnetviz.cache import cache_key, entry, file_stamp
from subnetviz.config import available_memory_bytes
from subnetviz.errors import ConfigError
from subnetviz.jobs.context import JobContext
from subnetviz.masks import MaskSet, load_mask_set, save_mask_set
from subnetviz.supermask.config import ContinualConfig
from subnetviz.supermask.data import DATA_VERSION, make_benchmark
from subnetviz.supermask.methods import Stopped, estimate_run_bytes, run_method
from subnetviz.supermask.metrics import ContinualResult, rederived

CACHE_VERSION = 2  # bump when the files change layout (changed results: the code fingerprint in the key)
# The package's code that trains and measures a continual run (:func:`~subnetviz.version.code_fingerprint` of it is
# in the key): the supermask package, the bit comparison it counts overlaps with, the tokenizer loader that encodes
# arithmetic-text and the mask files. A version number its owner had to remember to bump let results that later
# code computes differently be served stale.
CONTINUAL_CODE = ("supermask", "analysis/bits.py", "checkpoints/models.py", "masks.py")
FRAMES = ("runs", "summary", "accuracy", "capacity", "pairwise", "knn", "inference")


def _n_features(benchmark: str) -> tuple[int, int]:
    return (96, 2) if benchmark == "arithmetic-text" else (64, 2 if benchmark == "split-digits" else 10)


def estimate_job_bytes(config: ContinualConfig) -> int:
    """Peak bytes: the largest single run plus what all runs' kept masks and overlap tables hold."""
    runs, tasks = config.plan(), config.tasks
    nf, no = _n_features(config.benchmark)
    peak = max(estimate_run_bytes(config.benchmark, tasks, r, nf, no) for r in runs)
    p = sum(a * b for a, b in zip((nf, 128, 128), (128, 128, no), strict=False))
    kept = len(runs) * tasks * p  # bool task masks kept for the frames
    pairwise = len(runs) * 4 * tasks * tasks * 120  # ~120 B per row of the pairwise frame, 3 layers + all
    return int(peak + kept + pairwise)


def validate_config(config: dict | ContinualConfig, available_bytes: int | None = None) -> ContinualConfig:
    """The config as a :class:`ContinualConfig`; ConfigError for any bad field, a missing demo zoo
    (arithmetic-text) or a job that would need more memory than is available."""
    cfg = config if isinstance(config, ContinualConfig) else ContinualConfig.from_dict(config)
    need = estimate_job_bytes(cfg)
    if cfg.benchmark == "arithmetic-text":
        from subnetviz.config import zoo_dir

        if not (zoo_dir() / "base" / "config.json").is_file():
            raise ConfigError(
                f"arithmetic-text needs the demo zoo's base model at {zoo_dir() / 'base'}, which is missing; "
                "build the demo zoo first with `python -m subnetviz demo build`."
            )
    have = available_memory_bytes() if available_bytes is None else available_bytes
    if need > 0.8 * have:
        raise ConfigError(
            f"continual config too large for memory: it would need about {need / 2**30:.2f} GiB, "
            f"and {have / 2**30:.2f} GiB is available (80 % usable). Use fewer tasks, seeds or methods."
        )
    return cfg


def config_hash(config: ContinualConfig) -> str:
    """The cache key: the normalised run plan, the benchmark, the task count, the code's fingerprint and
    :data:`CACHE_VERSION` (plus the demo zoo's base model files for arithmetic-text, which encodes the prompts)."""
    from dataclasses import asdict

    from subnetviz.version import code_fingerprint

    parts = {"benchmark": config.benchmark, "tasks": config.tasks, "runs": [asdict(r) for r in config.plan()]}
    parts["code"] = code_fingerprint(CONTINUAL_CODE)
    if config.benchmark == "arithmetic-text":
        from subnetviz.config import zoo_dir

        parts["base"] = file_stamp(zoo_dir() / "base")
    return cache_key("continual", CACHE_VERSION, **parts)


def _slug(label: str) -> str:
    return label.lower().replace("+", "-")


def mask_path(folder: Path, label: str, density: float, seed: int, task: int) -> Path:
    return Path(folder) / "masks" / _slug(label) / f"d{density:g}" / f"seed{seed}" / f"task{task}.safetensors"


def save_result(result: ContinualResult, folder: Path) -> None:
    """Write frames (parquet + summary.csv), result.json and every task mask under ``folder``."""
    folder = Path(folder)
    (folder / "frames").mkdir(parents=True, exist_ok=True)
    frames = result.to_frames()
    for name, frame in frames.items():
        frame.to_parquet(folder / "frames" / f"{name}.parquet", index=False)
    frames["summary"].to_csv(folder / "summary.csv", index=False)
    for r in result.runs:
        for t, masks in enumerate(r.masks):
            ms = MaskSet(
                dict(masks),
                {
                    "method": r.label,
                    "benchmark": r.benchmark,
                    "density": r.density,
                    "seed": r.seed,
                    "task": t,
                    "source": "subnetviz.supermask",
                },
            )
            save_mask_set(mask_path(folder, r.label, r.density, r.seed, t), ms)
    info = {
        "benchmark": result.benchmark,
        "config": result.config,
        "summary": json.loads(frames["summary"].to_json(orient="records")),
    }
    (folder / "result.json").write_text(json.dumps(info, indent=1))


def load_result(folder: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """The frames a finished continual job (or cache entry) saved, by name. ConfigError naming the file for a frame
    file that is missing or unreadable (pyarrow's own error reached the page as a bug notice)."""
    folder = Path(folder)
    if not (folder / "result.json").is_file():
        raise ConfigError(f"{folder}: no result.json; this is not a finished continual job's output folder.")
    frames = {n: _read_frame(folder / "frames" / f"{n}.parquet") for n in FRAMES}
    return rederived(frames, _weight_epochs(folder))


def _read_frame(path: Path) -> pd.DataFrame:
    """One saved frame; ConfigError saying which file is missing or damaged (cut off, not Parquet)."""
    if not path.is_file():
        raise ConfigError(f"{path}: missing; the run's results are incomplete. Launch the run again.")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException):
        raise ConfigError(
            f"{path}: unreadable (cut off or not a Parquet file); the run's results are damaged. Launch the run again."
        ) from None


def _weight_epochs(folder: Path) -> int | None:
    """The weight phase's epochs in a finished job's ``result.json`` config (None: the preset's, or unreadable)."""
    try:
        info = json.loads((folder / "result.json").read_text())
        epochs = info["config"]["epochs"]["weight"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


def data_note(folder: str | os.PathLike) -> str | None:
    """A line for a finished arithmetic-text result built on the old data (before :data:`DATA_VERSION` 2), whose
    test prompts were partly training prompts; None for every other result. A run made again trains on the new
    data: the cache key holds the code's fingerprint, and the data is built by that code."""
    try:
        info = json.loads((Path(folder) / "result.json").read_text())
    except (OSError, ValueError):
        return None  # load_result says what is wrong with the folder
    if not isinstance(info, dict) or info.get("benchmark") != "arithmetic-text":
        return None
    config = info.get("config")
    if not isinstance(config, dict) or config.get("data_version", 1) != 1:
        return None
    return (
        "This arithmetic-text run was made before its prompts were drawn without repeats: 4-9 % of each task's "
        "test prompts were also training prompts, so its accuracies may read slightly high. Launch it again for "
        "clean numbers."
    )


def load_task_masks(folder: str | os.PathLike, label: str, density: float, seed: int) -> list[dict]:
    """One run's task masks as ``[{layer name: bool tensor}]`` in task order."""
    out, t = [], 0
    while (p := mask_path(Path(folder), label, density, seed, t)).is_file():
        ms = load_mask_set(p)
        out.append(dict(ms.masks))
        t += 1
    return out


def run_job(config: dict, ctx: JobContext) -> None:
    """Job entry point for kind ``continual`` (see :mod:`subnetviz.jobs.context`)."""
    cfg = validate_config(config)
    runs, tasks = cfg.plan(), cfg.tasks
    key = config_hash(cfg)
    cached = entry("continual", key)
    total = len(runs) * tasks
    ready, damaged = cached.status()
    if damaged:  # (removed, so trained again: said in the job's log, where it was dropped)
        ctx.log(f"continual: {damaged}")
    if ready:
        shutil.copytree(cached.folder, ctx.out_dir, dirs_exist_ok=True)
        ctx.log(f"continual: cached result {key} reused")
        ctx.progress(total, total, cached=1.0)
        return
    ctx.progress(0, total)
    benches: dict[int, object] = {}
    results = []
    for i, rc in enumerate(runs):
        if rc.seed not in benches:  # data split and permutations follow the seed
            benches[rc.seed] = make_benchmark(cfg.benchmark, tasks, rc.seed)
        bench = benches[rc.seed]
        ctx.log(f"continual: {rc.label} density {rc.density:g} seed {rc.seed}")

        def on_task(t: int, metrics: dict, i=i, rc=rc) -> None:
            ctx.progress(i * tasks + t + 1, total, method=rc.label, density=rc.density, seed=rc.seed, task=t, **metrics)

        try:
            results.append(run_method(bench, rc, on_task=on_task, should_stop=ctx.should_stop))
        except Stopped:
            ctx.log("continual: cancelled; no result written")
            return
    record = {k: v for k, v in cfg.to_dict(kind=False).items() if k != "name"}
    final = ContinualResult(cfg.benchmark, tuple(results), {**record, "hash": key, "data_version": DATA_VERSION})
    save_result(final, ctx.out_dir)
    with cached.publish() as folder:  # a concurrent identical job may publish first: then its copy stays
        shutil.copytree(ctx.out_dir, folder, dirs_exist_ok=True)
