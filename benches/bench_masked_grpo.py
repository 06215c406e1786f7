"""Cost of subnetwork-only training: steps/s of a masked vs an unmasked GRPO run, same config.

Model: the demo-zoo-sized tiny Llama (hidden 96, 3 layers, ~446K parameters, char tokenizer),
GRPO batch 32 (4 prompts x 8 generations), 4-token completions, a random 50 % mask, one torch
thread. Runs alternate (full, masked, full, masked, ...) so machine load hits both alike; the
figure is the median of each. Goal: the mask costs <= 10 % (ratio masked/full time <= 1.10).

    OMP_NUM_THREADS=1 .venv/bin/python -m benches.bench_masked_grpo [--steps 30] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from subnetviz.training.config import TrainConfig  # noqa: E402
from subnetviz.training.run import train  # noqa: E402
from tests.models import make_tiny_llama  # noqa: E402
from tests.training_fixtures import write_half_mask  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench-masked-grpo-"))
    base = make_tiny_llama(root / "base", hidden=96, intermediate=384, layers=3, heads=4)
    n_params = sum(int(torch.tensor(s).prod()) for s in _shapes(base).values())
    mask = write_half_mask(root / "half.safetensors", base, p=0.5, seed=0)
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10, 50, 3) for b in range(10, 50, 5)]
    data = root / "grpo.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    times: dict[str, list[float]] = {"full": [], "masked": []}
    totals: dict[str, list[float]] = {"full": [], "masked": []}
    for rep in range(args.reps):
        for variant in ("full", "masked"):
            cfg = TrainConfig(
                algorithm="grpo",
                base=str(base),
                data=str(data),
                output_dir=str(root / f"{variant}-{rep}"),
                mask=str(mask) if variant == "masked" else None,
                steps=args.steps,
                learning_rate=1e-5,
                batch_size=32,
                num_generations=8,
                max_completion_length=4,
                seed=rep,
            )
            res = train(cfg)
            times[variant].append(res.train_seconds)
            totals[variant].append(res.seconds)
            if variant == "masked" and not res.mask_check["outside_mask_identical"]:
                raise SystemExit(f"masked run moved entries outside the mask: {res.mask_check}")
    print(f"masked vs full GRPO, {n_params:,} params, {args.steps} steps x {args.reps} reps, 1 thread")
    print(f"{'variant':<8} {'train s (median)':>17} {'steps/s':>9} {'total s (load+save+check)':>27}")
    med = {v: statistics.median(t) for v, t in times.items()}
    for v in ("full", "masked"):
        print(f"{v:<8} {med[v]:>17.2f} {args.steps / med[v]:>9.2f} {statistics.median(totals[v]):>27.2f}")
    ratio = med["masked"] / med["full"]
    print(f"ratio masked/full train time: {ratio:.3f}  (goal <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'})")
    print(
        f"ratio masked/full total time: {statistics.median(totals['masked']) / statistics.median(totals['full']):.3f}"
    )


def _shapes(folder: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: f.get_slice(k).get_shape() for k in f.keys()}


if __name__ == "__main__":
    main()
