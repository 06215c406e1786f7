"""Cost of the gradient mask under FSDP2 (or DeepSpeed ZeRO-2 / ZeRO-3): a 2-process masked vs
unmasked training run on CPU.

Each run is ``python -m subnetviz train --config`` with ``strategy: fsdp2, num_processes: 2``
(``--strategy zero2|zero3``: DeepSpeed's CPU accelerator, requirements-deepspeed.txt)
(2 processes over gloo, one torch thread each), on the zoo-sized tiny Llama (hidden 96, 3 layers),
a random 50 % mask, masked weight decay on. Runs alternate (full, masked, masked, full, ...) so
machine load hits both alike; the figure is the median of TRL's train_runtime (the training loop
alone) per step. Goal: ratio masked/full <= 1.10. Each run's summary must show FSDP2 active
(DTensor parameters on a 2-process mesh) or ZeRO active (the engine's stage on 2 processes), and
each masked run no entry outside the mask changed.

    OMP_NUM_THREADS=1 .venv/bin/python -m benches.bench_sharded [--algorithm grpo|sft|dpo] [--steps 30] [--reps 2]
        [--strategy fsdp2|zero2|zero3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def _data(root: Path, algorithm: str) -> Path:
    from tests.training_fixtures import write_addition_data

    if algorithm != "grpo":
        return write_addition_data(root / "data", n=128)[algorithm]
    rows = [{"prompt": f"{a}+{b}=", "answer": str((a + b) % 10)} for a in range(10) for b in range(10)]
    path = root / "grpo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(cfg: dict, folder: Path) -> dict:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "subnetviz", "train", "--config", str(folder / "config.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"run failed:\n{proc.stderr[-3000:]}")
    return json.loads((Path(cfg["output_dir"]) / "train_summary.json").read_text())


def _evidence(summary: dict, strategy: str, world: int = 2) -> dict:
    """The run's FSDP2 or ZeRO evidence; exits when the strategy was not active on ``world`` processes."""
    if strategy == "fsdp2":
        ev = summary["fsdp2"]
        if not (ev and ev["mesh_size"] == world and ev["dtensor_parameters"] == ev["parameters"]):
            raise SystemExit(f"FSDP2 was not active: {ev}")
        return ev
    ev = summary["zero"]
    if not (ev and ev["stage"] == int(strategy[-1]) and ev["world_size"] == world):
        raise SystemExit(f"ZeRO ({strategy}) was not active: {ev}")
    return ev


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algorithm", default="grpo", choices=["grpo", "sft", "dpo"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--strategy", default="fsdp2", choices=["fsdp2", "zero2", "zero3"])
    args = ap.parse_args()
    from tests.models import make_tiny_llama
    from tests.training_fixtures import write_half_mask

    root = Path(tempfile.mkdtemp(prefix="bench-sharded-"))
    base = make_tiny_llama(root / "base", hidden=96, intermediate=384, layers=3, heads=4)
    mask = write_half_mask(root / "half.safetensors", base, p=0.5, seed=0)
    data = _data(root, args.algorithm)
    per_step: dict[str, list[float]] = {"full": [], "masked": []}
    totals: dict[str, list[float]] = {"full": [], "masked": []}
    evidence = None
    mask_step: dict[str, list[float]] = {}
    for rep in range(args.reps):
        for variant in ("full", "masked") if rep % 2 == 0 else ("masked", "full"):  # no order bias
            out = root / f"{variant}-{rep}"
            cfg = {
                "algorithm": args.algorithm,
                "base": str(base),
                "data": str(data),
                "output_dir": str(out / "model"),
                "mask": str(mask) if variant == "masked" else None,
                "steps": args.steps,
                "learning_rate": 1e-4,
                "batch_size": 16,
                "num_generations": 8,
                "max_completion_length": 2,
                "weight_decay": 0.01,
                "seed": rep,
                "strategy": args.strategy,
                "num_processes": 2,
            }
            s = run(cfg, out)
            per_step[variant].append(s["train_seconds"] / s["steps_done"])
            if s.get("zero"):  # ZeRO: the time ZeroGradientMask.apply took (masking + masked decay)
                mask_step.setdefault(variant, []).append(s["zero"]["mask_seconds"] / s["steps_done"])
            totals[variant].append(s["seconds"])
            ev = _evidence(s, args.strategy)
            if variant == "masked":
                evidence = ev
                if not (s["mask_check"]["outside_mask_identical"] and s["gathered_check"]["outside_mask_identical"]):
                    raise SystemExit(f"masked run moved entries outside the mask: {s['gathered_check']}")
    print(
        f"{args.strategy.upper()}, 2 CPU processes (gloo), masked vs full {args.algorithm.upper()}, "
        f"{evidence['full_numel']:,} params ({evidence['local_numel']:,} on rank 0), "
        f"{args.steps} steps x {args.reps} reps, load avg {os.getloadavg()[0]:.1f}"
    )
    print(f"{'variant':<8} {'ms/step (median)':>17} {'steps/s':>9} {'total s (launch+load+save+checks)':>35}")
    med = {v: statistics.median(t) for v, t in per_step.items()}
    for v in ("full", "masked"):
        print(f"{v:<8} {1000 * med[v]:>17.1f} {1 / med[v]:>9.2f} {statistics.median(totals[v]):>35.1f}")
    ratio = med["masked"] / med["full"]
    for v, t in mask_step.items():
        print(f"{v:<8} ZeroGradientMask.apply: {1000 * statistics.median(t):.1f} ms/step (median)")
    print(f"ratio masked/full step time: {ratio:.3f}  (goal <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'})")


if __name__ == "__main__":
    main()
