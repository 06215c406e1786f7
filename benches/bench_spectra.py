"""Spectra fast path vs per-matrix float32 ``svdvals`` on one Qwen2.5-0.5B-shaped layer (CPU, 1 thread).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benches.bench_spectra``

For each matrix of one layer (q/o 896×896, k/v 128×896, gate/up 4864×896, down 896×4864) with a
random sparse bf16 update (30 % density, N(0, 1e-3)) it times, best of ``--repeat``:

- ``fast``: :func:`subnetviz.analysis.spectra.singular_values` with the default ``method="auto"``;
- ``svd32``: ``torch.linalg.svdvals(delta.float())``, what the paper's script pays per matrix;
- ``svd64``: ``torch.linalg.svdvals(delta.double())``, the reference of the same accuracy class.

Accuracy is measured against the float64 ``svdvals``: ``rel_all`` is the largest per-value
relative error, ``rel_top`` the same over σ >= 1e-3·σ1, ``norm`` = max|Δσ| / σ1. The rank of
the fast path is checked against ``torch.linalg.matrix_rank(delta.float())``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from subnetviz.analysis.spectra import singular_values  # noqa: E402

SHAPES = {
    "q_proj": (896, 896),
    "k_proj": (128, 896),
    "v_proj": (128, 896),
    "o_proj": (896, 896),
    "gate_proj": (4864, 896),
    "up_proj": (4864, 896),
    "down_proj": (896, 4864),
}


def sparse_update(shape: tuple[int, int], density: float, std: float, seed: int) -> torch.Tensor:
    """A bf16 update with ``density`` nonzeros drawn from N(0, std²)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * std
    x[torch.rand(shape, generator=g) >= density] = 0
    return x.bfloat16()


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--density", type=float, default=0.3)
    parser.add_argument("--std", type=float, default=1e-3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    header = (
        f"{'matrix':<10} {'shape':>10} {'svd32 s':>8} {'svd64 s':>8} {'fast s':>8} {'x svd32':>8} {'x svd64':>8} "
        f"{'rel_all':>8} {'rel_top':>8} {'norm':>8} {'rank':>5} {'torch':>5} {'method':>8}"
    )
    print(
        f"one Qwen2.5-0.5B layer, bf16 updates, density {args.density}, N(0, {args.std:g}), 1 thread, best of {args.repeat}"
    )
    print(header)
    print("-" * len(header))
    totals = np.zeros(3)
    worst = np.zeros(3)
    agree = True
    for i, (name, shape) in enumerate(SHAPES.items()):
        delta = sparse_update(shape, args.density, args.std, seed=i)
        t32, _ = best_of(lambda d=delta: torch.linalg.svdvals(d.float()), args.repeat)
        t64, ref = best_of(lambda d=delta: torch.linalg.svdvals(d.double()), args.repeat)
        tfast, sv = best_of(lambda d=delta: singular_values(d, method="auto", device="cpu"), args.repeat)
        ref = ref.numpy()
        err = np.abs(sv.values - ref)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(ref > 0, err / ref, 0.0)
        top = ref >= 1e-3 * ref[0]
        errs = np.array([rel.max(), rel[top].max(), err.max() / ref[0]])
        worst = np.maximum(worst, errs)
        torch_rank = int(torch.linalg.matrix_rank(delta.float()))
        agree &= sv.rank == torch_rank
        totals += (t32, t64, tfast)
        print(
            f"{name:<10} {f'{shape[0]}x{shape[1]}':>10} {t32:8.3f} {t64:8.3f} {tfast:8.3f} {t32 / tfast:8.2f} "
            f"{t64 / tfast:8.2f} {errs[0]:8.1e} {errs[1]:8.1e} {errs[2]:8.1e} {sv.rank:5d} {torch_rank:5d} {sv.method:>8}"
        )
    print("-" * len(header))
    t32, t64, tfast = totals
    print(
        f"{'layer':<10} {'':>10} {t32:8.3f} {t64:8.3f} {tfast:8.3f} {t32 / tfast:8.2f} {t64 / tfast:8.2f} "
        f"{worst[0]:8.1e} {worst[1]:8.1e} {worst[2]:8.1e} {'ranks agree' if agree else 'RANKS DIFFER':>20}"
    )


if __name__ == "__main__":
    main()
