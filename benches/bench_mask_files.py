"""Benchmark: what the Workspace table and the Overlap page spend on mask files (one thread, ratios in one run).

A shared server's visitor names finetunes in a URL; the Workspace lists each update mask's counts and the
Overlap page overlaps up to 8 of them. Both read the mask files. Before, each mask was read whole (a bool
tensor, a byte per parameter) and kept in the server's memory; now it is read bit-packed
(``load_mask_set(packed=True)``: a bit per parameter, counted with a popcount table, overlapped on the packed
bits) and nothing is kept. Over the Qwen2.5-0.5B shapes (494 M parameters, 5 % in each mask), each way in a
process of its own, alternated over ``--repeat`` rounds:

- **count**: one mask's entries, parameters and density (the Workspace table's row);
- **overlap**: ``sets_overlap`` of 4 mask files (the Overlap page's sets, pairs and layers).

Printed: seconds (best of the rounds) and peak resident memory above the process's imports (VmHWM less that
of a process that only imports), whole / packed. The counts of both ways are checked equal.

    OMP_NUM_THREADS=1 .venv/bin/python -m benches.bench_mask_files [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from benches.bench_streaming import QWEN_05B, qwen_shapes  # noqa: E402

N_OVERLAP = 4
DENSITY = 0.05

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from subnetviz.masks import load_mask_set
from subnetviz.jobs.cluster_pages import sets_overlap
how, task, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
t = time.perf_counter()
packed = how == "packed"
if task == "count":
    ms = load_mask_set(paths[0], packed=packed)
    out = [ms.count, ms.numel]
elif task == "overlap":
    rep = sets_overlap([load_mask_set(p, packed=packed) for p in paths], [f"m{i}" for i in range(len(paths))])
    out = [int(x) for x in rep.report.sizes["count"]] + [int(rep.report.regions["count"].sum())]
else:
    out = []
seconds = time.perf_counter() - t
# VmHWM: this process's own peak (ru_maxrss keeps the parent's high-water mark across exec)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "rss_kb": hwm, "out": out}))
"""


def _run(how: str, task: str, paths: list[str]) -> dict:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", CHILD, how, task, *paths], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def _write_masks(folder: Path, n: int) -> list[str]:
    import torch

    from subnetviz.masks import MaskSet, save_mask_set

    shapes = qwen_shapes(24, QWEN_05B)
    paths = []
    for i in range(n):
        gen = torch.Generator().manual_seed(i)
        masks = {k: torch.rand(s, generator=gen) < DENSITY for k, s in shapes.items()}
        paths.append(str(save_mask_set(folder / f"m{i}.safetensors", MaskSet(masks, {"method": "bench"}))))
        del masks
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="rounds, each way alternated (best is printed)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-mask-files-") as tmp:
        paths = _write_masks(Path(tmp), N_OVERLAP)
        imports = min(_run("packed", "none", paths[:1])["rss_kb"] for _ in range(2))
        print(f"== mask files over the Qwen2.5-0.5B shapes, {DENSITY:.0%} in each mask, 1 thread")
        print(
            f"{'task':10s}{'whole (s)':>11s}{'packed (s)':>12s}{'ratio':>8s}{'whole (MB)':>12s}{'packed (MB)':>13s}{'ratio':>8s}"
        )
        for task, files in (("count", paths[:1]), ("overlap", paths)):
            runs: dict[str, list[dict]] = {"whole": [], "packed": []}
            for _ in range(args.repeat):
                for how in runs:
                    runs[how].append(_run(how, task, files))
            outs = {how: {json.dumps(r["out"]) for r in rs} for how, rs in runs.items()}
            if len(outs["whole"] | outs["packed"]) != 1:
                print(f"error: {task}: the two ways disagree: {outs}", file=sys.stderr)
                return 1
            sec = {how: min(r["seconds"] for r in rs) for how, rs in runs.items()}
            mb = {how: (max(r["rss_kb"] for r in rs) - imports) / 1024 for how, rs in runs.items()}
            print(
                f"{task:10s}{sec['whole']:11.2f}{sec['packed']:12.2f}{sec['whole'] / sec['packed']:8.2f}"
                f"{mb['whole']:12.0f}{mb['packed']:13.0f}{mb['whole'] / max(mb['packed'], 1):8.2f}"
            )
        print("ratio: whole / packed (above 1: the packed read is that much faster / smaller)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
