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

``--model``: every update matrix of the Qwen2.5-0.5B pair (24 layers × 7 matrices; the 151936×896
embedding is left out, as the analysis's ``max_dim=65536`` leaves it out), each timed once with
the fast path and with per-matrix float32 ``svdvals``, summed per shape (``--layers`` fewer layers
for a quicker run: every layer has the same shapes, so the per-shape ratios do not depend on it).
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


def model_part(layers: int, density: float, std: float) -> None:
    """Every update matrix of ``layers`` Qwen2.5-0.5B layers: fast path vs per-matrix svdvals, per shape."""
    per_shape: dict[tuple[int, int], list[float]] = {}
    t0 = time.perf_counter()
    for layer in range(layers):
        for i, shape in enumerate(SHAPES.values()):
            delta = sparse_update(shape, density, std, seed=layer * 10 + i)
            t32, ref = best_of(lambda d=delta: torch.linalg.svdvals(d.float()), 1)
            tfast, sv = best_of(lambda d=delta: singular_values(d, method="auto", device="cpu"), 1)
            err = float(np.abs(sv.values - ref.double().numpy()).max() / ref[0])
            row = per_shape.setdefault(shape, [0, 0.0, 0.0, 0.0])
            row[0], row[1], row[2], row[3] = row[0] + 1, row[1] + t32, row[2] + tfast, max(row[3], err)
    print(
        f"every update matrix of {layers} Qwen2.5-0.5B layers (embedding left out: side > 65536), bf16, "
        f"density {density}, N(0, {std:g}), 1 thread, each timed once"
    )
    header = f"{'shape':>10} {'matrices':>8} {'svd32 s':>9} {'fast s':>9} {'x svd32':>8} {'max|Δσ|/σ1 vs svd32':>20}"
    print(header)
    print("-" * len(header))
    tot32 = totfast = 0.0
    for shape, (n, t32, tfast, err) in per_shape.items():
        tot32, totfast = tot32 + t32, totfast + tfast
        print(f"{f'{shape[0]}x{shape[1]}':>10} {n:8d} {t32:9.2f} {tfast:9.2f} {t32 / tfast:8.2f} {err:20.1e}")
    print("-" * len(header))
    n_all = sum(r[0] for r in per_shape.values())
    print(
        f"{'all':>10} {n_all:8d} {tot32:9.2f} {totfast:9.2f} {tot32 / totfast:8.2f}   "
        f"(run {time.perf_counter() - t0:.0f} s)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--density", type=float, default=0.3)
    parser.add_argument("--std", type=float, default=1e-3)
    parser.add_argument("--model", action="store_true", help="every update matrix of the 0.5B pair, per shape")
    parser.add_argument("--layers", type=int, default=24, help="with --model: layers of the 0.5B pair")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.model:
        return model_part(args.layers, args.density, args.std)

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
