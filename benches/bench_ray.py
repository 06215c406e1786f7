"""The Ray backend against the local one: a checkpoint series fanned out, and job submission latency.

1. The demo zoo's checkpoint series (grpo-s0's 8 checkpoints): :func:`checkpoint_series` in this
   process vs :func:`series_fanout` over 2 Ray workers of a local head; the merged result must be
   identical bit for bit (every float column compared on its int64 view).
2. N-model overlap: the zoo's base against its 7 finetunes, :func:`analyze_updates` in this process
   (its ``.overlap`` and per-model reports) vs :func:`updates_fanout`, one Ray task per (base,
   finetune) pair, merged by ``mask_overlap``; identical bit for bit (region counts, every frame).
   The zoo's models are tiny (0.45 M parameters), so Ray's per-task overhead dominates; the same
   comparison then runs on a planted set where the per-pair work does: ``--planted-mparams`` million
   bf16 parameters per checkpoint (default 16; 0 skips it), a base and 4 finetunes each changing a
   random 10 % of entries.
3. The pages' own analyses (what the app computes on a cache miss), page-level compute functions of
   :mod:`subnetviz.jobs.cluster` without and with the cluster's address: the update analysis of the
   zoo's base against its 7 finetunes (Sparsity, Overlap, Workspace pages), the same with spectra
   (Spectra page), and the Series page's series. With the address, a driver process connects to
   the cluster, fans out per (base, finetune) pair or tensor group, and publishes the cache entry;
   the local run publishes its own (each repeat into an empty cache). Identical: every table read
   back (floats on their int64 view) and the mask data.
4. Job submission latency, local OS-process backend vs Ray: a trivial job (one progress step),
   from ``submit()`` to the registry saying running, and to the job's own first progress record
   (the job function really executing), median of ``--jobs`` jobs each.

The head is started here (127.0.0.1, 2 CPUs) and killed at the end. The zoo is the built one in
SUBNETVIZ_HOME (``python -m subnetviz demo build``) or ``--zoo DIR``.

    OMP_NUM_THREADS=1 .venv/bin/python -m benches.bench_ray [--zoo DIR] [--jobs 5] [--reps 3]
        [--only series,overlap,pages,latency]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _identical(a, b) -> bool:
    if list(a.columns) != list(b.columns) or not a.dtypes.equals(b.dtypes):
        return False
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if x.dtype.kind == "f" and not (x.view("int64") == y.view("int64")).all():
            return False
        if x.dtype.kind != "f" and list(x) != list(y):
            return False
    return True


def bench_series(paths: list[str], steps: list[int], address: str, reps: int) -> None:
    from subnetviz.analysis.series import checkpoint_series
    from subnetviz.jobs.fanout import series_fanout

    series_fanout(paths, steps, workers=2, address=address)  # warm: driver connect, worker start, imports
    local_t, ray_t = [], []
    for _ in range(reps):
        t = time.perf_counter()
        local = checkpoint_series(paths, steps)
        local_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        fanned = series_fanout(paths, steps, workers=2, address=address)
        ray_t.append(time.perf_counter() - t)
    same = _identical(local.steps, fanned.steps) and _identical(local.split, fanned.split)
    lm, rm = statistics.median(local_t), statistics.median(ray_t)
    print(f"series of {len(paths)} checkpoints ({local.numel:,} parameters each), median of {reps}:")
    print(f"  local, one process      {lm:8.3f} s")
    print(f"  Ray, 2 workers          {rm:8.3f} s   (ratio Ray/local {rm / lm:.2f})")
    print(f"  merged result identical to local, bit for bit: {'yes' if same else 'NO'}")
    if not same:
        raise SystemExit("the fanned-out series differs from the local one")


def _same_overlap(a, b) -> bool:
    if list(a.region_counts) != list(b.region_counts):
        return False
    if any(not (a.region_counts[g] == b.region_counts[g]).all() for g in a.region_counts):
        return False
    return all(
        _identical(getattr(a, f), getattr(b, f)) for f in ("sizes", "pairwise", "regions", "consensus", "by_group")
    )


def bench_overlap(base: str, finetuned: list[str], labels: list[str], address: str, reps: int) -> None:
    from subnetviz.analysis.updates import analyze_updates
    from subnetviz.jobs.fanout import updates_fanout

    updates_fanout(base, finetuned, labels, address=address)  # warm: workers import the analysis
    local_t, ray_t = [], []
    for _ in range(reps):
        t = time.perf_counter()
        local = analyze_updates(base, finetuned, labels=labels, device="cpu")
        local_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        reports, overlap = updates_fanout(base, finetuned, labels, address=address)
        ray_t.append(time.perf_counter() - t)
    same = _same_overlap(local.overlap, overlap) and all(
        _identical(r.tensors.drop(columns="ulp_hist"), q.tensors.drop(columns="ulp_hist"))
        for r, q in zip(reports, local.reports, strict=True)
    )
    lm, rm = statistics.median(local_t), statistics.median(ray_t)
    print(f"N-model overlap: base vs {len(finetuned)} finetunes ({overlap.numel:,} parameters), median of {reps}:")
    print(f"  local, one process      {lm:8.3f} s")
    print(f"  Ray, 2 workers          {rm:8.3f} s   (ratio Ray/local {rm / lm:.2f})")
    print(f"  merged overlap and reports identical to local, bit for bit: {'yes' if same else 'NO'}")
    if not same:
        raise SystemExit("the fanned-out overlap differs from the local one")


def planted_checkpoints(root: Path, mparams: float, n_ft: int = 4) -> tuple[str, list[str]]:
    """A base and ``n_ft`` finetunes of ``mparams`` million bf16 parameters (8 matrices of 1024 columns),
    each finetune changing a random 10 % of the base's entries."""
    import torch
    from safetensors.torch import save_file

    rows = max(1, int(mparams * 1e6 / (8 * 1024)))
    gen = torch.Generator().manual_seed(0)
    base = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(rows, 1024, generator=gen).bfloat16() for i in range(8)}
    paths = []
    for k in range(n_ft + 1):
        state = (
            base
            if k == 0
            else {n: torch.where(torch.rand(w.shape, generator=gen) < 0.1, w + 1, w) for n, w in base.items()}
        )
        folder = root / ("base" if k == 0 else f"ft{k}")
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
        save_file(state, str(folder / "model.safetensors"))
        paths.append(str(folder))
    return paths[0], paths[1:]


def _same_analysis(a, b) -> bool:
    same = a.labels == b.labels and a.notes == b.notes and _identical(a.summary(), b.summary())
    for r, q in zip(a.reports, b.reports, strict=True):
        same = same and _identical(r.tensors.drop(columns="ulp_hist"), q.tensors.drop(columns="ulp_hist"))
        same = same and list(r.tensors["ulp_hist"]) == list(q.tensors["ulp_hist"])
        same = same and (r.parts is None and q.parts is None or _identical(r.parts, q.parts))
    for name in ("spectra_frame", "sigma_frame"):
        x, y = getattr(a, name), getattr(b, name)
        same = same and ((x is None and y is None) or (x is not None and y is not None and _identical(x, y)))
    from subnetviz.analysis.updates import mask_path
    from subnetviz.masks import load_mask_set

    for lab in a.labels:
        ma, mb = load_mask_set(mask_path(a.source_dir, lab)), load_mask_set(mask_path(b.source_dir, lab))
        same = same and ma.metadata == mb.metadata and list(ma.masks) == list(mb.masks)
        same = same and all(bool((ma.masks[n] == mb.masks[n]).all()) for n in ma.masks)
    return same


def _timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def bench_pages(base: str, paths: list[str], labels: list[str], series: list[str], address: str, reps: int) -> None:
    from subnetviz.jobs import cluster

    root = Path(tempfile.mkdtemp(prefix="bench-ray-pages-"))
    steps = list(range(len(series)))
    print(f"page analyses: base vs {len(paths)} finetunes, series of {len(series)} checkpoints; median of {reps}")
    print(f"  {'analysis':<28} {'local s':>8} {'Ray s':>8} {'Ray/local':>9}  identical")
    rows = [("update analysis (Sparsity)", False), ("with spectra (Spectra)", True), ("series (Series)", None)]
    for what, spectra in rows:
        times: dict[str, list[float]] = {"local": [], "ray": []}
        for i in range(reps):
            got = {}
            for side, addr in (("local", None), ("ray", address)):
                if spectra is None:
                    out, t = _timed(cluster.checkpoint_series, series, steps, address=addr)
                else:
                    kw = dict(labels=labels, spectra=cluster.SpectraOptions(enabled=spectra), device="cpu")
                    out, t = _timed(
                        cluster.cached_analysis,
                        base,
                        paths,
                        cache_root=root / f"{side}{spectra}{i}",
                        address=addr,
                        **kw,
                    )
                times[side].append(t)
                got[side] = out
            loc, out = got["local"], got["ray"]
            if spectra is None:
                same = _identical(loc.steps, out.steps) and _identical(loc.split, out.split)
            else:
                same = _same_analysis(loc, out)
        lm, rm = statistics.median(times["local"]), statistics.median(times["ray"])
        print(f"  {what:<28} {lm:8.2f} {rm:8.2f} {rm / lm:9.1f}  {'yes' if same else 'NO'}", flush=True)
        if not same:
            raise SystemExit(f"{what}: the cluster's result differs from the local one")


def _latency(runner, n: int) -> tuple[list[float], list[float]]:
    to_running, to_first = [], []
    for _ in range(n):
        t0 = time.time()
        rid = runner.submit(
            {"kind": "python", "target": "tests.training_fixtures:sleep_job", "seconds": 0.01, "steps": 1}
        )
        running = None
        while True:
            rec = runner.get(rid)
            if running is None and rec.status in ("running", "succeeded"):
                running = (rec.started or time.time()) - t0
            if rec.finished:
                break
            time.sleep(0.02)
            runner.poll()
        assert rec.status == "succeeded", (Path(rec.run_dir) / "log.txt").read_text()
        first = json.loads((Path(rec.run_dir) / "metrics.jsonl").read_text().splitlines()[0])["time"]
        to_running.append(running)
        to_first.append(first - t0)
    return to_running, to_first


def bench_latency(address: str, n: int) -> None:
    from subnetviz.jobs.runner import JobRunner

    os.environ["SUBNETVIZ_ALLOW_TEST_JOBS"] = "1"
    root = Path(tempfile.mkdtemp(prefix="bench-ray-runs-"))
    rows = {}
    for label, addr in (("local", ""), ("Ray", address)):
        runner = JobRunner(root / label, ray_address=addr)
        _latency(runner, 1)  # warm the file cache / the Ray workers
        rows[label] = _latency(runner, n)
    print(f"job submission latency, median of {n} trivial jobs (s):")
    print(f"  {'backend':<8} {'queued -> running':>18} {'-> job executing':>17}")
    for label, (run, first) in rows.items():
        print(f"  {label:<8} {statistics.median(run):>18.3f} {statistics.median(first):>17.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=None, help="a built demo zoo (default: SUBNETVIZ_HOME's)")
    ap.add_argument("--jobs", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--planted-mparams", type=float, default=16, help="planted N-model overlap size (0: skip)")
    ap.add_argument("--only", default="series,overlap,pages,latency", help="comma-separated sections to run")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from subnetviz import config
    from subnetviz.demo.build import load_zoo
    from subnetviz.jobs.ray_backend import local_head

    zoo = load_zoo(Path(args.zoo) if args.zoo else config.zoo_dir())
    series = zoo.series
    steps, paths = [s for s, _ in series], [str(p) for _, p in series]
    print(f"load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    only = set(args.only.split(","))
    with local_head(num_cpus=2) as address:
        print(f"Ray head at {address} (2 CPUs)")
        if "series" in only:
            bench_series(paths, steps, address, args.reps)
        if "overlap" in only:
            fts = [m for m in zoo.members if m.id != "base"]
            bench_overlap(str(zoo.base), [str(m.path) for m in fts], [m.id for m in fts], address, args.reps)
        if "overlap" in only and args.planted_mparams > 0:
            with tempfile.TemporaryDirectory(prefix="bench-ray-planted-") as tmp:
                base, fts_p = planted_checkpoints(Path(tmp), args.planted_mparams)
                print(f"planted set: {args.planted_mparams:g} M parameters per checkpoint")
                bench_overlap(base, fts_p, [f"ft{i + 1}" for i in range(len(fts_p))], address, args.reps)
        if "pages" in only:
            fts = [m for m in zoo.members if m.id != "base"]
            series = [str(zoo.base)] + [str(p) for _, p in zoo.series]  # the Series page's zoo series
            bench_pages(str(zoo.base), [str(m.path) for m in fts], [m.id for m in fts], series, address, args.reps)
        if "pages" in only and args.planted_mparams > 0:
            with tempfile.TemporaryDirectory(prefix="bench-ray-planted-") as tmp:
                base, fts_p = planted_checkpoints(Path(tmp), args.planted_mparams)
                print(f"planted set: {args.planted_mparams:g} M parameters per checkpoint")
                labels = [f"ft{i + 1}" for i in range(len(fts_p))]
                bench_pages(base, fts_p, labels, [base, *fts_p], address, args.reps)
        if "latency" in only:
            bench_latency(address, args.jobs)
    print(f"load avg {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
