"""``python -m benches`` (``make bench``): every CPU benchmark, one after another, each printing its ratios
against a baseline measured in the same run. ``python -m benches NAME ...`` runs only those.

The browser benchmarks (pages, load), the Ray one and the GPU check are run on their own:
``python -m benches.bench_pages``, ``python -m benches.bench_load``, ``python -m benches.bench_ray``,
``python benches/gpu_check.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

CPU_BENCHES = (
    "bench_streaming",
    "bench_spectra",
    "bench_forms",
    "bench_scaling",
    "bench_subspaces",
    "bench_cost",
    "bench_behavior",
    "bench_masked_grpo",
    "bench_sharded",
    "bench_supermask",
    "bench_bigram",
    "bench_zoo",
    "bench_mask_files",
)


def main(argv: list[str]) -> int:
    names = argv or list(CPU_BENCHES)
    unknown = [n for n in names if not os.path.isfile(os.path.join(os.path.dirname(__file__), f"{n}.py"))]
    if unknown:
        print(f"error: no benchmark {unknown}; available: {', '.join(CPU_BENCHES)}", file=sys.stderr)
        return 2
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", f"benches.{name}"], env=env)
        print(f"=== {name}: exit {rc}, {time.perf_counter() - t0:.0f} s ===", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
