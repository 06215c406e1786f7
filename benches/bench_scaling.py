"""Benchmark: do the analysis costs grow linearly? (issue 15; one thread, ratios in one run)

1. **Model size.** The full default analysis (``analyze_updates``, spectra off) and its floor
   (read both files, ``count_nonzero`` of the integer views) on Qwen2.5-shaped bf16 pairs at
   30 % changed: 0.1B (SmolLM-135M dims: hidden 576, 30 layers, vocab 49152), 0.5B (Qwen2.5-0.5B)
   and 1.5B (Qwen2.5-1.5B: hidden 1536, 28 layers). Time per parameter should be constant within
   20 % (each size in its own process; every size is written first, then each round runs every
   size's (floor) and (analysis) in turn, so a drift of the shared machine's speed reaches each size
   alike; the process's one-time loads, ``update_pass.warm``: numba's compiled kernels and pandas'
   string arrays, before the clock and reported apart, as is a first analysis that pays them). Also
   printed: later analyses in the same process (the rate of a server or notebook; the best of
   ``AGAIN`` after the first), whose time leaves out the process's one-time costs that the first
   analysis pays (lazily imported modules, compiled patterns, fresh heap pages), and the floor's own
   spread.
2. **N masks.** ``mask_overlap`` of N = 2, 4, 8, 16 random update masks over the 0.5B shapes,
   held bit-packed as ``analyze_updates`` holds them (counted on the packed bits): time per mask
   per parameter should be constant within 30 % (the N alternated, in this process; best of at least
   5 rounds, since N = 2 takes ~60 ms and one stall would set the spread).
3. **Series.** ``checkpoint_series`` over 16 checkpoints of the ``--series-size`` shape (default
   0.1B, so the 16 files stay in the page cache of this 23 GB machine: say so when quoting it)
   against reading the same 16 checkpoints once each (``safe_open``, every tensor, its bytes touched
   once by NumPy's ``count_nonzero``: ``get_tensor`` only maps the file): goal ≤ 1.2×. The
   floor's reads are single-threaded and so is the series by default (its compiled loop maps the
   pages itself); it is also run with its read-ahead thread (``read_ahead=True``: the next versions
   mapped in a second thread, which hides that on an idle second core). The other reading of the
   goal is printed beside it: the series against 15 single-pair analyses (``analyze_updates`` of the
   first checkpoint against each later one, spectra off), whose last count must equal the series'.

Every part prints wall and CPU seconds (CPU: all threads of the process; on a shared machine the
CPU ratios are the stabler ones) and the load average.

    OMP_NUM_THREADS=1 .venv/bin/python -m benches.bench_scaling            # ~10 GB of temp files, ~8 min
    OMP_NUM_THREADS=1 .venv/bin/python -m benches.bench_scaling --skip-sizes 1.5B --series-size 0.1B
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benches.bench_streaming import QWEN_05B, open_checkpoints, qwen_shapes, write_pair  # noqa: E402

SIZES = {
    "0.1B": (30, {"hidden": 576, "inter": 1536, "heads": 9, "kv_heads": 3, "vocab": 49152}),
    "0.5B": (24, QWEN_05B),
    "1.5B": (28, {"hidden": 1536, "inter": 8960, "heads": 12, "kv_heads": 2, "vocab": 151936}),
}
N_MASKS = (2, 4, 8, 16)
SERIES = 16
# Analyses timed per process after its first, for the steady-state reading of part 1: a 0.1B analysis takes
# ~0.3 s, so one stall of the shared machine moved its best of 5 processes by 30-50 % between runs
# (two runs of 5 rounds gave that reading's spread as 1.02, then 1.58); more samples per process cost
# little there, and every size gets the same count.
AGAIN = 3


# --- children: each measured phase in a fresh interpreter ------------------------------------------
def phase_floor(paths: list[str]) -> dict:
    import torch
    from safetensors import safe_open

    count = 0
    with safe_open(f"{paths[0]}/model.safetensors", "pt") as fa, safe_open(f"{paths[1]}/model.safetensors", "pt") as fb:
        for name in fa.keys():
            x, y = fa.get_tensor(name), fb.get_tensor(name)
            count += int(torch.count_nonzero(x.view(torch.int16) != y.view(torch.int16)))
    return {"changed": count}


def phase_analysis(paths: list[str]) -> dict:
    from subnetviz.analysis.updates import SpectraOptions, analyze_updates

    an = analyze_updates(paths[0], paths[1:], spectra=SpectraOptions(enabled=False))
    return {"changed": an.reports[0].changed}


def phase_analysis_again(paths: list[str]) -> dict:
    """The analysis run 1 + :data:`AGAIN` times in one process, the best of the last :data:`AGAIN` timed
    (wall and CPU each their own best; the rate of a server or notebook analysing several pairs): the
    process's one-time costs (first use of lazily imported modules, of compiled patterns and caches, of
    fresh heap pages) fall in the first, as its compiled kernels' load falls before the clock. Each
    analysis opens and maps the files anew, as the first does."""
    phase_analysis(paths)
    out: dict = {"seconds": math.inf, "cpu": math.inf}
    for _ in range(AGAIN):
        t0, c0 = time.perf_counter(), time.process_time()
        got = phase_analysis(paths)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out = {**got, "seconds": min(out["seconds"], wall), "cpu": min(out["cpu"], cpu)}
    return out


def phase_read_all(paths: list[str]) -> dict:
    """Read every tensor of every checkpoint once (the floor of any series analysis): ``get_tensor``
    returns a tensor over the memory-mapped file, so each one's bytes are touched once (NumPy's
    ``count_nonzero`` of its integer view, the cheapest full pass) or nothing would be read at all."""
    import numpy as np
    import torch
    from safetensors import safe_open

    n = nonzero = 0
    for p in paths:
        with safe_open(f"{p}/model.safetensors", "pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                nonzero += int(np.count_nonzero(t.view(torch.int16).numpy()))
                n += t.numel()
    return {"numel": n, "nonzero": nonzero}


def phase_series(paths: list[str], read_ahead: bool | None = None) -> dict:
    from subnetviz.analysis.series import checkpoint_series

    res = checkpoint_series(paths, read_ahead=read_ahead)
    return {"numel": res.numel, "final": int(res.split["count"].iloc[-1])}


def phase_series_ahead(paths: list[str]) -> dict:
    """The series with its read-ahead thread (the next versions mapped in a second thread)."""
    return phase_series(paths, read_ahead=True)


def phase_pairs(paths: list[str]) -> dict:
    """The other reading of the goal: one single-pair analysis (``analyze_updates``, spectra off)
    per later checkpoint against the first, each reading the first and that checkpoint."""
    from subnetviz.analysis.updates import SpectraOptions, analyze_updates

    final = 0
    for p in paths[1:]:
        final = analyze_updates(paths[0], [p], spectra=SpectraOptions(enabled=False)).reports[0].changed
    return {"pairs": len(paths) - 1, "final": final}


PHASES = {
    "floor": phase_floor,
    "analysis": phase_analysis,
    "analysis_again": phase_analysis_again,
    "read_all": phase_read_all,
    "series": phase_series,
    "series_ahead": phase_series_ahead,
    "pairs": phase_pairs,
}


def run_child(phase: str, paths: list, env: dict | None = None) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benches.bench_scaling",
        "--phase",
        phase,
        "--paths",
        json.dumps([str(p) for p in paths]),
    ]
    out = subprocess.run(
        cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1], env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(phase: str, paths: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    import subnetviz.analysis.series  # noqa: F401  (imports before the clock, as the floors import theirs)
    import subnetviz.analysis.updates  # noqa: F401
    from subnetviz.analysis import series_jit

    series_jit.available()  # imports numba where installed (~0.5 s), before the clock as every import
    c0 = time.process_time()
    if os.environ.get("BENCH_WARM") == "1":  # the one-time loads (compiled loops, pandas strings), reported apart
        if phase.startswith("series"):
            series_jit.warm()
        elif phase in ("analysis", "analysis_again", "pairs"):
            from subnetviz.analysis.update_pass import warm

            warm()  # the compiled kernels and pandas' string arrays
    warm_cpu = time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    result = PHASES[phase](paths)
    result.setdefault("seconds", time.perf_counter() - t0)  # (unless the phase timed a part of itself)
    result.setdefault("cpu", time.process_time() - c0)  # every thread of the child (the read-ahead one too)
    result["warm_cpu"] = warm_cpu
    print(json.dumps(result))


def alternate(phases: tuple[str, ...], paths: list | dict, repeat: int, before: Callable | None = None) -> dict:
    """Best of ``repeat`` per phase (wall and CPU seconds each their own best), the phases alternated
    so a noisy neighbour slows each alike. A phase ``name+warm`` runs ``name`` with its compiled
    loops loaded before the clock. ``paths`` may map labels to path lists: then every round runs every
    phase on each in turn (a drift of the machine's speed over the run reaches each alike) and the
    result maps each label to its phases' bests. ``before(paths)``, when given, runs untimed before
    each path list's phases in every round."""
    jobs = paths if isinstance(paths, dict) else {None: paths}
    best: dict = {label: {} for label in jobs}
    for _ in range(repeat):
        for label, job in jobs.items():
            if before is not None:
                before(job)
            for ph in phases:
                name, _, warm = ph.partition("+")
                r = run_child(name, job, {**os.environ, "BENCH_WARM": "1"} if warm else None)
                got = best[label]
                if ph not in got:
                    got[ph] = r
                got[ph]["seconds"] = min(got[ph]["seconds"], r["seconds"])
                got[ph]["cpu"] = min(got[ph]["cpu"], r["cpu"])
    return best if isinstance(paths, dict) else best[None]


def _touch(paths: list) -> None:
    """Read every file of ``paths`` once, untimed, before a size's phases in a round, so that each size's
    phases start from files read just before, whatever the other sizes' rounds did to the page cache in
    between (without it the first phase of each size, the floor, would alone pay for that)."""
    buf = bytearray(1 << 24)
    for p in paths:
        for f in sorted(Path(p).glob("*.safetensors")):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# --- 1. model size -----------------------------------------------------------------------------------
def sizes_part(names: list[str], parent: Path, repeat: int) -> None:
    print("\n== 1. analysis time per parameter by model size (bf16 pair, 30 % changed, 1 thread)")
    work = Path(tempfile.mkdtemp(prefix="bench-scaling-sizes-", dir=parent))
    try:
        pairs = {}  # every size written first, then measured round by round (sizes alternated too)
        for name in names:
            layers, dims = SIZES[name]
            (work / name).mkdir()
            pairs[name] = write_pair(work / name, layers, dims=dims)
        os.sync()  # written back before the clocks start, not while the first size is timed
        phases = ("floor", "analysis", "analysis+warm", "analysis_again+warm")
        best = alternate(phases, {name: list(pair[:2]) for name, pair in pairs.items()}, repeat, before=_touch)
        rows = []
        for name, (_, _, planted, params) in pairs.items():
            r = best[name]
            assert all(r[ph]["changed"] == planted for ph in phases)
            rows.append((name, params, r["floor"], r["analysis+warm"], r["analysis_again+warm"]))
            print(
                f"  {name}: {params:,} params, floor {r['floor']['seconds']:.2f} s ({r['floor']['cpu']:.2f} s CPU), "
                f"analysis {r['analysis']['seconds']:.2f} s ({r['analysis']['cpu']:.2f} s CPU) with the compiled "
                f"kernels' one-time load, {r['analysis+warm']['seconds']:.2f} s "
                f"({r['analysis+warm']['cpu']:.2f} s CPU) with them and pandas' string arrays loaded before the clock "
                f"(load {r['analysis+warm']['warm_cpu']:.2f} s CPU), later analyses in the same process (best of {AGAIN}) "
                f"{r['analysis_again+warm']['seconds']:.2f} s ({r['analysis_again+warm']['cpu']:.2f} s CPU)"
            )
        print(f"  (load average {_load()})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for kind, label in (("seconds", "wall"), ("cpu", "CPU")):
        _sizes_table(rows, kind, label)


def _sizes_table(rows: list, kind: str, label: str) -> None:
    """Part 1's table for ``kind`` (wall or CPU seconds): per size the floor and the analysis (the
    first in a fresh process and the best of later ones in the same process, kernels loaded before the clock)
    per parameter, analysis / floor, and each one's spread over the sizes."""
    print(
        f"\n{label:>6} {'params':>14} {'floor s':>8} {'analysis s':>10} {'ns/param':>9} {'floor ns/p':>10} "
        f"{'ratio':>6} {'vs min':>7} {'again ns/p':>10} {'ratio':>6} {'vs min':>7}"
    )
    best = min(an[kind] / p for _, p, _, an, _ in rows)
    best_again = min(ag[kind] / p for _, p, _, _, ag in rows)
    for name, params, fl, an, ag in rows:
        print(
            f"{name:>6} {params:14,d} {fl[kind]:8.2f} {an[kind]:10.2f} {an[kind] / params * 1e9:9.2f} "
            f"{fl[kind] / params * 1e9:10.2f} {an[kind] / fl[kind]:6.2f} {an[kind] / params / best:7.2f} "
            f"{ag[kind] / params * 1e9:10.2f} {ag[kind] / fl[kind]:6.2f} {ag[kind] / params / best_again:7.2f}"
        )
    for what, col, low in (("analysis", 3, best), ("later analyses", 4, best_again), ("floor", 2, None)):
        low = low or min(r[2][kind] / r[1] for r in rows)
        spread = max(r[col][kind] / r[1] for r in rows) / low
        if what == "floor":
            print(f"{label} time per parameter, floor: max/min = {spread:.2f}")
            continue
        verdict = "OK" if spread <= 1.2 else "MISSED"
        print(
            f"{label} time per parameter, {what} (one-time loads before the clock): max/min = {spread:.2f}   "
            f"goal <= 1.20   {verdict}"
        )


# --- 2. N masks ----------------------------------------------------------------------------------------
class RandomPackedMasks(Mapping):
    """name -> bool mask of the 0.5B shapes, random (density 1/2), held bit-packed like
    :class:`subnetviz.masks.PackedMasks` and unpacked on access."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], seed: int):
        import numpy as np

        rng = np.random.default_rng(seed)
        self.shapes = shapes
        self.bits = {n: rng.integers(0, 256, (int(np.prod(s)) + 7) // 8, dtype=np.uint8) for n, s in shapes.items()}

    def __getitem__(self, name: str):
        import numpy as np
        import torch

        n = int(np.prod(self.shapes[name]))
        return torch.from_numpy(np.unpackbits(self.bits[name], count=n).astype(bool).reshape(self.shapes[name]))

    def packed(self, name: str):
        return self.bits[name], self.shapes[name]

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def overlap_part(repeat: int) -> None:
    from subnetviz.analysis.overlap import mask_overlap

    layers, dims = SIZES["0.5B"]
    shapes = qwen_shapes(layers, dims)
    numel = sum(math.prod(s) for s in shapes.values())
    print(f"\n== 2. overlap of N masks over the 0.5B shapes ({numel:,} params, bit-packed masks, 1 thread)")
    sets = [RandomPackedMasks(shapes, seed=k) for k in range(max(N_MASKS))]
    wall = dict.fromkeys(N_MASKS, float("inf"))
    cpu = dict.fromkeys(N_MASKS, float("inf"))
    for _ in range(repeat):  # the N alternate, so a change of load reaches each alike
        for n in N_MASKS:
            t0, c0 = time.perf_counter(), time.process_time()
            rep = mask_overlap(sets[:n], [f"m{k}" for k in range(n)])
            wall[n] = min(wall[n], time.perf_counter() - t0)
            cpu[n] = min(cpu[n], time.process_time() - c0)
            assert rep.numel == numel
    print(f"{'N':>4} {'wall s':>7} {'CPU s':>7} {'ns/mask/param (wall)':>21} {'(CPU)':>7}   load {_load()}")
    for n in N_MASKS:
        print(f"{n:4d} {wall[n]:7.2f} {cpu[n]:7.2f} {wall[n] / n / numel * 1e9:21.3f} {cpu[n] / n / numel * 1e9:7.3f}")
    for label, t in (("wall", wall), ("CPU", cpu)):
        spread = max(t[n] / n for n in N_MASKS) / min(t[n] / n for n in N_MASKS)
        verdict = "OK" if spread <= 1.3 else "MISSED"
        print(f"{label} time per mask per parameter: max/min = {spread:.2f}   goal <= 1.30   {verdict}")


# --- 3. series -----------------------------------------------------------------------------------------
def write_series(folder: Path, size: str, count: int, seed: int = 0) -> list[Path]:
    """``count`` checkpoints: a base, then each step moves ~10 % of the entries by 1 ULP and puts
    ~2 % back to the base's bits (cancelling out)."""
    import torch

    layers, dims = SIZES[size]
    paths = [folder / f"step{i:02d}" for i in range(count)]
    shapes, handles = open_checkpoints(paths, layers, dims)
    gen = torch.Generator().manual_seed(seed)
    try:
        for shape in shapes.values():
            first = (0.02 * torch.randn(shape, generator=gen)).to(torch.bfloat16).view(torch.int16)
            cur = first
            for fh in handles:
                fh.write(cur.numpy().tobytes())
                move = torch.rand(shape, generator=gen)
                cur = torch.where(move < 0.1, cur + 1, torch.where(move > 0.98, first, cur))
    finally:
        for fh in handles:
            fh.close()
    return paths


def series_part(size: str, parent: Path, repeat: int) -> None:
    print(f"\n== 3. checkpoint series of {SERIES} {size}-shaped checkpoints vs reading them once each (1 thread)")
    work = Path(tempfile.mkdtemp(prefix="bench-scaling-series-", dir=parent))
    try:
        paths = write_series(work, size, SERIES)
        phases = ("read_all", "series", "series+warm", "series_ahead+warm", "pairs+warm")
        r = alternate(phases, paths, repeat)
        assert r["read_all"]["numel"] == r["series"]["numel"] * SERIES == r["series+warm"]["numel"] * SERIES
        assert r["series"]["final"] == r["series_ahead+warm"]["final"] == r["pairs+warm"]["final"]  # same last step
        print(f"{'':>5} {'16 single reads s':>18} {'series s':>9} {'ratio':>6}   (load average {_load()})")
        notes = {
            "series": "",
            "series+warm": "   (compiled loops loaded before the clock)",
            "series_ahead+warm": "   (loaded before the clock, read-ahead thread on)",
        }
        for kind in ("seconds", "cpu"):
            rd = r["read_all"][kind]
            for ph, note in notes.items():
                se = r[ph][kind]
                verdict = "OK" if se <= 1.2 * rd else "MISSED"
                label = "wall" if kind == "seconds" else "CPU"
                print(f"{label:>5} {rd:18.2f} {se:9.2f} {se / rd:6.2f}   goal <= 1.20   {verdict}{note}")
        print(f"  one-time load of the compiled loops: {r['series+warm']['warm_cpu']:.2f} s CPU")
        pr, se = r["pairs+warm"], r["series+warm"]
        print(
            f"  the other reading of the goal: {pr['pairs']} single-pair analyses (analyze_updates, spectra off, "
            f"each reading the first + one checkpoint; kernels loaded before the clock) {pr['seconds']:.2f} s wall "
            f"({pr['cpu']:.2f} s CPU): series / pairs = {se['seconds'] / pr['seconds']:.2f} wall, "
            f"{se['cpu'] / pr['cpu']:.2f} CPU   (load average {_load()})"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip-sizes", default="", help="comma-separated sizes to leave out of part 1 (e.g. 1.5B)")
    ap.add_argument("--series-size", default="0.1B", choices=sorted(SIZES))
    ap.add_argument("--parts", default="1,2,3")
    ap.add_argument("--dir", help="where to write the checkpoints (default: the temp dir; deleted at the end)")
    ap.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--paths", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        return child_main(args.phase, json.loads(args.paths))

    import torch

    torch.set_num_threads(1)
    parent = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    t0 = time.perf_counter()
    if "1" in parts:
        skip = {s for s in args.skip_sizes.split(",") if s}
        sizes_part([s for s in SIZES if s not in skip], parent, args.repeat)
    if "2" in parts:
        overlap_part(max(args.repeat, 5))  # N = 2 takes ~60 ms: best of 5, or one stall sets the spread
    if "3" in parts:
        series_part(args.series_size, parent, args.repeat)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
