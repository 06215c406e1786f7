"""Benchmark: supermask continual learning on permuted-digits (reference/exssnet_supsup.md §7).

For each task count, density and seed it runs finetune, SupSup, SSNeT, ExSSNeT and ExSSNeT+KKT on
one CPU thread and prints final accuracy and forgetting (mean ± sd over seeds), capacity used,
the trained share of each mask, wall seconds per run, and two ratios measured in the same run:
the accuracy gain over SupSup at the same density (points) and the time per run against finetune.

    .venv/bin/python -m benches.bench_supermask                      # 5 tasks, d = 2/5/10/30 %, 3 seeds
    .venv/bin/python -m benches.bench_supermask --tasks 10 --densities 0.05
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from subnetviz.supermask.data import make_benchmark  # noqa: E402
from subnetviz.supermask.methods import MethodConfig, run_method  # noqa: E402
from subnetviz.supermask.metrics import ContinualResult  # noqa: E402

VARIANTS = (("finetune", False), ("supsup", False), ("ssnet", False), ("exssnet", False), ("exssnet", True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", default="permuted-digits")
    ap.add_argument("--tasks", type=int, nargs="+", default=[5])
    ap.add_argument("--densities", type=lambda s: [float(x) for x in s.split(",")], default=[0.02, 0.05, 0.1, 0.3])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for n_tasks in args.tasks:
        runs = []
        t0 = time.perf_counter()
        for seed in range(args.seeds):
            bench = make_benchmark(args.benchmark, n_tasks, seed)
            for method, kkt in VARIANTS:
                for d in [1.0] if method == "finetune" else args.densities:
                    runs.append(run_method(bench, MethodConfig(method, density=d, seed=seed, kkt=kkt)))
        s = ContinualResult(args.benchmark, tuple(runs)).to_frames()["summary"]
        ft_time = float(s.loc[s["method"] == "finetune", "wall_s_mean"].iloc[0])
        print(
            f"\n{args.benchmark}, {n_tasks} tasks, {args.seeds} seeds, one thread "
            f"(sweep {time.perf_counter() - t0:.0f} s)"
        )
        print(
            f"{'method':<12} {'d':>5} {'acc %':>12} {'forget':>7} {'used %':>7} {'trained %':>9} "
            f"{'s/run':>6} {'vs SupSup':>9} {'t/finetune':>10}"
        )
        for _, r in s.iterrows():
            sup = s[(s["method"] == "supsup") & (s["density"] == r["density"]) & ~s["kkt"]]
            gain = f"{100 * (r['final_acc_mean'] - sup['final_acc_mean'].iloc[0]):+.1f}" if len(sup) else "–"
            dens = "dense" if r["method"] == "finetune" else f"{r['density']:g}"
            print(
                f"{r['label']:<12} {dens:>5} {100 * r['final_acc_mean']:6.1f} ± {100 * r['final_acc_sd']:3.1f} "
                f"{100 * r['forgetting_mean']:7.1f} {_pct(r['used_mean']):>7} {_pct(r['trained_mean']):>9} "
                f"{r['wall_s_mean']:6.1f} {gain:>9} {r['wall_s_mean'] / ft_time:10.2f}"
            )


def _pct(v: float) -> str:
    return "–" if v != v else f"{100 * v:.1f}"


if __name__ == "__main__":
    main()
