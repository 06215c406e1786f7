"""The ``continual`` job kind: validate a config, run every (method, density, seed), save, cache.

Config (JSON)::

    {"benchmark": "permuted-digits", "methods": ["finetune", "supsup", "ssnet", "exssnet"],
     "density": 0.05 | [0.02, 0.05], "tasks": 5, "seeds": [0, 1, 2],
     "epochs": {"mask": 10, "weight": 10, "finetune": 20}, "kkt": false, "task_inference": false,
     "lr": {"mask": 0.01, "weight": 0.01, "finetune": 0.001}, "batch_size": 32, "kkt_k": 10}

A method may be written ``"exssnet+kkt"``; ``kkt: true`` adds the ``+kkt`` variant of every masked
method in the list (the plain ones are kept, so the two can be compared). ``finetune`` ignores the
density (it is dense; recorded as density 1.0) and runs once per seed.

Outputs under ``ctx.out_dir``: ``config.json``, ``result.json`` (summary, hash), ``frames/<name>.parquet``
for every frame of :meth:`ContinualResult.to_frames` plus ``summary.csv``, and each run's task masks
as :class:`~subnetviz.masks.MaskSet` files ``masks/<slug>/d<density>/seed<s>/task<t>.safetensors``.
Inside each file the tensors keep the model's names (``layer1.weight`` ...), identical across tasks,
with the task in the file name and in the metadata: the overlap page can then align any set of task
masks name by name for Venn/UpSet (a ``task<t>/`` prefix would make every pair disjoint by name).
Results are cached under ``cache_dir()/continual/<hash>/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd

from subnetviz.errors import ConfigError, suggest
from subnetviz.jobs.context import JobContext
from subnetviz.masks import MaskSet, load_mask_set, save_mask_set
from subnetviz.supermask.data import BENCHMARKS, N_SPLIT_TASKS, TEXT_PROPERTIES, make_benchmark
from subnetviz.supermask.methods import METHODS, MethodConfig, Stopped, estimate_run_bytes, run_method
from subnetviz.supermask.metrics import ContinualResult

CACHE_VERSION = 2  # bump when the training code changes results
KEYS = (
    "kind",
    "name",
    "benchmark",
    "methods",
    "density",
    "tasks",
    "seeds",
    "epochs",
    "kkt",
    "task_inference",
    "lr",
    "batch_size",
    "kkt_k",
)
DEFAULTS = {
    "benchmark": "permuted-digits",
    "methods": ["finetune", "supsup", "ssnet", "exssnet"],
    "density": 0.05,
    "tasks": 5,
    "seeds": [0],
    "kkt": False,
    "task_inference": False,
}
FRAMES = ("runs", "summary", "accuracy", "capacity", "pairwise", "knn", "inference")


def _n_features(benchmark: str) -> tuple[int, int]:
    return (96, 2) if benchmark == "arithmetic-text" else (64, 2 if benchmark == "split-digits" else 10)


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages from ``os.sysconf``."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def plan_runs(config: dict) -> tuple[str, int, list[MethodConfig]]:
    """(benchmark, tasks, one :class:`MethodConfig` per run) from a job config; raises ConfigError."""
    if not isinstance(config, dict):
        raise ConfigError(f"continual config must be a JSON object; got {type(config).__name__}.")
    for key in config:
        if key not in KEYS:
            raise ConfigError(
                f"continual config: unknown key {key!r}; known keys: {', '.join(KEYS)}.{suggest(key, KEYS)}"
            )
    cfg = {**DEFAULTS, **config}
    bench = cfg["benchmark"]
    if bench not in BENCHMARKS:
        raise ConfigError(
            f"unknown benchmark {bench!r}; choose one of {', '.join(BENCHMARKS)}.{suggest(bench, BENCHMARKS)}"
        )
    tasks = cfg["tasks"]
    if not isinstance(tasks, int) or isinstance(tasks, bool) or tasks < 1:
        raise ConfigError(f"tasks must be a positive integer; got {tasks!r} (zero tasks cannot be trained).")
    limit = {"split-digits": N_SPLIT_TASKS, "arithmetic-text": len(TEXT_PROPERTIES)}.get(bench)
    if limit is not None and tasks > limit:
        raise ConfigError(f"{bench} has 1 to {limit} tasks; got {tasks}.")
    densities = cfg["density"] if isinstance(cfg["density"], list) else [cfg["density"]]
    seeds = cfg["seeds"] if isinstance(cfg["seeds"], list) else [cfg["seeds"]]
    if not isinstance(cfg["methods"], list):
        raise ConfigError(f"methods must be a list such as ['supsup', 'exssnet']; got {cfg['methods']!r}.")
    if not densities or not seeds or not cfg["methods"]:
        raise ConfigError("continual config: density, seeds and methods each need at least one value.")
    for d in densities:
        if isinstance(d, bool) or not isinstance(d, int | float) or not 0.0 < d <= 1.0:
            raise ConfigError(f"density {d!r} is outside (0, 1]; it is the fraction of weights each mask KEEPS.")
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ConfigError(f"seeds must be integers; got {seeds!r}.")
    epochs, lr = cfg.get("epochs") or {}, cfg.get("lr") or {}
    for name, d, allowed in (
        ("epochs", epochs, ("mask", "weight", "finetune")),
        ("lr", lr, ("mask", "weight", "finetune")),
    ):
        if not isinstance(d, dict) or any(k not in allowed for k in d):
            raise ConfigError(f"continual config: {name} must be an object with keys from {allowed}; got {d!r}.")
    variants: list[tuple[str, bool]] = []
    for m in cfg["methods"]:
        base, _, suffix = str(m).lower().partition("+")
        if base not in METHODS or suffix not in ("", "kkt"):
            names = [*METHODS, *(f"{x}+kkt" for x in METHODS[1:])]
            raise ConfigError(f"unknown method {m!r}; choose from {', '.join(names)}.{suggest(str(m), names)}")
        variants.append((base, suffix == "kkt"))
        if cfg["kkt"] and base != "finetune" and not suffix:
            variants.append((base, True))
    variants = list(dict.fromkeys(variants))
    common = {
        "mask_epochs": epochs.get("mask"),
        "weight_epochs": epochs.get("weight"),
        "finetune_epochs": epochs.get("finetune"),
        "mask_lr": lr.get("mask", 0.01),
        "weight_lr": lr.get("weight", 0.01),
        "finetune_lr": lr.get("finetune", 1e-3),
        "batch_size": cfg.get("batch_size", 32),
        "kkt_k": cfg.get("kkt_k", 10),
    }
    runs = []
    for base, kkt in variants:
        for d in [1.0] if base == "finetune" else densities:
            for s in seeds:
                mc = MethodConfig(
                    base,
                    density=float(d),
                    seed=s,
                    kkt=kkt,
                    task_inference=bool(cfg["task_inference"]) and base == "supsup",
                    **common,
                )
                mc.validate()
                runs.append(mc)
    return bench, tasks, runs


def estimate_job_bytes(config: dict) -> int:
    """Peak bytes: the largest single run plus what all runs' kept masks and overlap tables hold."""
    bench, tasks, runs = plan_runs(config)
    nf, no = _n_features(bench)
    peak = max(estimate_run_bytes(bench, tasks, r, nf, no) for r in runs)
    p = sum(a * b for a, b in zip((nf, 128, 128), (128, 128, no), strict=False))
    kept = len(runs) * tasks * p  # bool task masks kept for the frames
    pairwise = len(runs) * 4 * tasks * tasks * 120  # ~120 B per row of the pairwise frame, 3 layers + all
    return int(peak + kept + pairwise)


def validate_config(config: dict, available_bytes: int | None = None) -> None:
    """Raise ConfigError for any bad field, or when the job would need more memory than is available."""
    need = estimate_job_bytes(config)
    if config.get("benchmark") == "arithmetic-text":
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


def config_hash(config: dict) -> str:
    """sha256 (16 hex) of the normalised run plan, the benchmark and the cache version."""
    bench, tasks, runs = plan_runs(config)
    payload = {"v": CACHE_VERSION, "benchmark": bench, "tasks": tasks, "runs": [r.__dict__ for r in runs]}
    if bench == "arithmetic-text":
        from subnetviz.config import zoo_dir

        base = zoo_dir() / "base"
        payload["base"] = sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in base.glob("*") if p.is_file()
        )
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()[:16]


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
    """The frames a finished continual job (or cache entry) saved, by name."""
    folder = Path(folder)
    if not (folder / "result.json").is_file():
        raise ConfigError(f"{folder}: no result.json; this is not a finished continual job's output folder.")
    return {n: pd.read_parquet(folder / "frames" / f"{n}.parquet") for n in FRAMES}


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
    validate_config(config)
    bench_name, tasks, runs = plan_runs(config)
    key = config_hash(config)
    from subnetviz.config import cache_dir

    cached = cache_dir() / "continual" / key
    total = len(runs) * tasks
    if (cached / "result.json").is_file():
        shutil.copytree(cached, ctx.out_dir, dirs_exist_ok=True)
        ctx.log(f"continual: cached result {key} reused")
        ctx.progress(total, total, cached=1.0)
        return
    ctx.progress(0, total)
    benches: dict[int, object] = {}
    results = []
    for i, rc in enumerate(runs):
        if rc.seed not in benches:  # data split and permutations follow the seed
            benches[rc.seed] = make_benchmark(bench_name, tasks, rc.seed)
        bench = benches[rc.seed]
        ctx.log(f"continual: {rc.label} density {rc.density:g} seed {rc.seed}")

        def on_task(t: int, metrics: dict, i=i, rc=rc) -> None:
            ctx.progress(i * tasks + t + 1, total, method=rc.label, density=rc.density, seed=rc.seed, task=t, **metrics)

        try:
            results.append(run_method(bench, rc, on_task=on_task, should_stop=ctx.should_stop))
        except Stopped:
            ctx.log("continual: cancelled; no result written")
            return
    full = {k: v for k, v in {**DEFAULTS, **config}.items() if k != "name"}
    final = ContinualResult(bench_name, tuple(results), {**full, "hash": key})
    save_result(final, ctx.out_dir)
    tmp = cached.with_name(f".{key}.tmp-{os.getpid()}")
    shutil.copytree(ctx.out_dir, tmp, dirs_exist_ok=True)
    try:
        os.replace(tmp, cached)  # atomic publish; a concurrent identical job may have won the race
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
