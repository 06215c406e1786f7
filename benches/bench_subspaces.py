"""Subspace metrics (principal angles, σ ratios, principal overlap) vs per-matrix full float64 ``svd``,
on Qwen2.5-0.5B-shaped weight pairs (CPU, one thread).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benches.bench_subspaces [--layers 2] [--embed-svd]``

Each matrix (q/o 896×896, k/v 128×896, gate/up 4864×896, down 896×4864 per layer; the tied
embedding 151936×896) is a base with a decaying spectrum (Gaussian noise plus 64 rank-one
directions of geometric strength) stored in bf16, and a finetune = base + a sparse bf16 update
(30 % of entries, N(0, (1e-2·|w|)²)). For every matrix it times:

- ``fast``: :func:`subnetviz.analysis.subspaces.compare_subspaces` with ``method="auto"`` (float64
  Gram for every matrix here: the embedding's short side, 896, is under ``GRAM_SIDE``) — the base
  decomposed once, the finetune once, plus the principal mask;
- ``svd``: ``torch.linalg.svd`` in float64 of base and finetune (what a per-matrix script pays),
  then the same angles: the reference.

Accuracy: the largest |Δangle| (degrees) and |Δ σ ratio| against the reference. On the embedding the
randomized path (float32 ``svd_lowrank`` refined in float64, what ``auto`` takes for a 7B model's
embedding) is timed and compared against the exact Gram path (and full svd with ``--embed-svd``, ~2 min
more): that is the randomized path's error.

The default is the whole model in one run: every 2-D weight of the pair (24 layers × 7 matrices
plus the tied embedding, 169 pairs), streamed: each pair is made, measured and dropped before the
next (peak RSS printed at the end: bounded by the embedding pair, not by the model). Totals per
shape and for the whole pair are measured, not extrapolated; ``--layers N`` times fewer layers
for a quick look (and then says so).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benches.bench_spectra import SHAPES as LAYER  # noqa: E402  (one Qwen2.5-0.5B layer)
from subnetviz.analysis.subspaces import SubspaceOptions, compare_subspaces, principal_angles, top_k  # noqa: E402

EMBED = (151936, 896)
N_LAYERS = 24


def weight_pair(shape, seed: int, density: float = 0.3, rel: float = 1e-2):
    """(base, finetune) bf16: noise + 64 geometric rank-one directions; a sparse relative update."""
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    r = 64
    u = torch.randn(m, r, generator=g)
    v = torch.randn(n, r, generator=g)
    s = torch.logspace(0, -1.5, r) * 4 / (m * n) ** 0.25
    w = torch.randn(m, n, generator=g) * 0.02 + (u * s) @ v.T
    upd = torch.randn(m, n, generator=g) * rel * w.abs()
    upd[torch.rand(m, n, generator=g) >= density] = 0
    return w.bfloat16(), (w + upd).bfloat16()


def reference(a: torch.Tensor, b: torch.Tensor, k: int):
    """Full float64 svd of both, angles and ratios from them (seconds, left, right, ratio)."""
    t0 = time.perf_counter()
    ta, tb = top_k(a, k, method="svd"), top_k(b, k, method="svd")
    left, right = principal_angles(ta.left, tb.left), principal_angles(ta.right, tb.right)
    return time.perf_counter() - t0, left, right, tb.sigma / ta.sigma


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=N_LAYERS, help="layers timed (default: all 24, the whole model)")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--embed-svd", action="store_true", help="also the full svd of the embedding pair (slow)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    opts = SubspaceOptions(k=args.k)
    print(f"Qwen2.5-0.5B shapes, K = {args.k}, 1 thread, {args.layers} layer(s) + tied embedding")
    hdr = (
        f"{'matrix':<10} {'shape':>12} {'fast s':>8} {'svd s':>8} {'x':>6} {'dθ max °':>9} {'dratio':>9} {'method':>10}"
    )
    print(hdr + "\n" + "-" * len(hdr))
    t_fast = t_svd = 0.0
    worst = np.zeros(2)
    per_shape: dict[tuple[str, tuple], list[float]] = {}  # (name, shape) -> [count, fast s, svd s]
    t_start = time.perf_counter()
    for layer in range(args.layers):
        for i, (name, shape) in enumerate(LAYER.items()):
            a, b = weight_pair(shape, seed=100 * layer + i)
            t0 = time.perf_counter()
            res = compare_subspaces(name, a, b, opts)
            tf = time.perf_counter() - t0
            ts, left, right, ratio = reference(a, b, res.k)
            dth = max(np.abs(res.angles_left - left).max(), np.abs(res.angles_right - right).max())
            drat = np.abs(res.sv_ratio - ratio).max()
            worst = np.maximum(worst, [dth, drat])
            t_fast, t_svd = t_fast + tf, t_svd + ts
            acc = per_shape.setdefault((name, shape), [0, 0.0, 0.0])
            acc[0], acc[1], acc[2] = acc[0] + 1, acc[1] + tf, acc[2] + ts
            print(
                f"{name:<10} {str(shape):>12} {tf:8.3f} {ts:8.3f} {ts / tf:6.1f} {dth:9.2e} {drat:9.2e} {res.method:>10}",
                flush=True,
            )
            del a, b, res
    print(f"\nper shape, summed over {args.layers} layer(s):")
    print(f"  {'matrix':<10} {'shape':>12} {'count':>5} {'fast s':>8} {'svd s':>8} {'x':>6}")
    for (name, shape), (count, tf, ts) in per_shape.items():
        print(f"  {name:<10} {str(shape):>12} {count:5d} {tf:8.1f} {ts:8.1f} {ts / tf:6.1f}")
    print(
        f"layer matrices: fast {t_fast:.1f} s, svd {t_svd:.1f} s, x{t_svd / t_fast:.1f}; worst dθ {worst[0]:.2e}°, "
        f"dratio {worst[1]:.2e}"
    )

    a, b = weight_pair(EMBED, seed=999)
    t0 = time.perf_counter()
    res = compare_subspaces("embed_tokens", a, b, opts)  # what the analysis takes (auto)
    tr = time.perf_counter() - t0
    t0 = time.perf_counter()
    rnd = compare_subspaces("embed_tokens", a, b, SubspaceOptions(k=args.k, method="randomized"))
    tz = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = compare_subspaces("embed_tokens", a, b, SubspaceOptions(k=args.k, method="gram"))
    tg = time.perf_counter() - t0
    dth = max(np.abs(rnd.angles_left - exact.angles_left).max(), np.abs(rnd.angles_right - exact.angles_right).max())
    drat = np.abs(rnd.sv_ratio - exact.sv_ratio).max()
    print(
        f"embedding {EMBED}: auto ({res.method}) {tr:.1f} s; randomized {tz:.1f} s, exact float64 Gram {tg:.1f} s "
        f"(x{tg / tz:.1f}); randomized vs exact: dθ max {dth:.2e}°, dratio {drat:.2e}, principal overlap "
        f"{rnd.principal_overlap:.4f} vs {exact.principal_overlap:.4f}; largest angle exact "
        f"{exact.angles_left.max():.3f}° / {exact.angles_right.max():.3f}°"
    )
    if args.embed_svd:
        ts, left, right, ratio = reference(a, b, res.k)
        dg = max(np.abs(exact.angles_left - left).max(), np.abs(exact.angles_right - right).max())
        print(
            f"embedding full float64 svd: {ts:.1f} s (x{ts / tr:.1f} randomized, x{ts / tg:.1f} Gram); Gram vs svd "
            f"dθ max {dg:.2e}°, dratio {np.abs(exact.sv_ratio - ratio).max():.2e}"
        )
    n_pairs = sum(c for c, _, _ in per_shape.values()) + 1
    what = "whole 0.5B pair" if args.layers == N_LAYERS else f"{args.layers} of {N_LAYERS} layers + embedding"
    print(
        f"{what} ({n_pairs} 2-D weights), measured in this run on one thread: subspace metrics {t_fast + tr:.0f} s "
        f"(layers {t_fast:.0f} s + embedding {tr:.0f} s); per-matrix full float64 svd of the layer matrices "
        f"{t_svd:.0f} s; wall clock of the whole run {time.perf_counter() - t_start:.0f} s; peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    )


if __name__ == "__main__":
    main()
