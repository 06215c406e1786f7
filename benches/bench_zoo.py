"""Benchmark: the full demo zoo build, end to end, on one CPU thread, into a temporary folder.

Run: ``.venv/bin/python -m benches.bench_zoo [--preset demo|micro] [--keep DIR] [--wait]``

Builds what ``make app`` builds (``python -m subnetviz demo build``): the models, the members'
runs in a job registry (a temporary runs folder beside the zoo), the cached comparison, and the
queued background jobs (bigram and optimal masks, continual demo). Prints the wall time against
the 300 s goal, the CPU time of this process (on a shared box the wall/CPU ratio shows how much
other load slowed it), each stage's time and share, and the manifest's numbers: accuracies, exact
sparsities, seed overlap o1 against chance, the source's entropy rates. ``--wait``: also wait for
the background jobs and print each one's queued-to-done time (the pages' "ready in ~N min"
estimates, :data:`subnetviz.demo.extras.EXPECTED_SECONDS`) and the bigram masks' numbers.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

GOAL_S = 300.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--keep", default=None, help="build here (kept) instead of a temporary folder")
    ap.add_argument("--wait", action="store_true", help="wait for the background jobs and time them")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from subnetviz.demo.build import build_zoo

    top = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-zoo-"))
    root, runs = top / "zoo", top / "runs"
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    zoo = build_zoo(root, preset=args.preset, force=True, extras=True, runs_root=runs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    t1 = time.perf_counter()
    build_zoo(root, preset=args.preset, extras=True, runs_root=runs)  # the idempotent path: does nothing
    reuse = time.perf_counter() - t1
    man = zoo.manifest.to_dict()  # the JSON form: this report prints its raw fields

    print(f"\ndemo zoo build, preset {args.preset!r}, 1 torch thread, into {root}")
    print(f"load average at start {load0:.1f}, at end {os.getloadavg()[0]:.1f} (2 cores)")
    print(f"{'':28s} {'seconds':>9s} {'vs goal':>8s}")
    print(f"{'wall, end to end':28s} {wall:9.1f} {wall / GOAL_S:8.2f}x")
    print(f"{'CPU of this process':28s} {cpu:9.1f} {cpu / GOAL_S:8.2f}x")
    print(f"{'goal':28s} {GOAL_S:9.1f} {1.0:8.2f}x")
    print(f"{'second build (reuse)':28s} {reuse:9.3f} {reuse / GOAL_S:8.4f}x")
    print(f"\n{'stage':28s} {'seconds':>9s} {'share':>7s}")
    total = sum(v for v in man["stage_seconds"].values() if v)
    for k, v in man["stage_seconds"].items():
        print(f"{k:28s} {v:9.1f} {v / total:7.1%}")

    base = man["base"]
    print(
        f"\nbase: {base['params']:,} params, {base['pretraining_steps']} pretraining steps "
        f"({base.get('stop_reason')}); accuracy A {base['accuracy_A']:.1%}, B {base['accuracy_B']:.1%}"
    )
    print(
        f"\n{'member':10s} {'algo':5s} {'data':4s} {'seed':>4s} {'acc':>7s} {'acc A':>7s} {'acc B':>7s} {'sparsity':>9s}"
    )
    for m in man["members"]:
        print(
            f"{m['id']:10s} {m['algorithm'][:5]:5s} {m['data']:4s} {m['seed']:4d} {m['accuracy']:7.1%} "
            f"{m['accuracy_A']:7.1%} {m['accuracy_B']:7.1%} {m['sparsity']:9.1%}"
        )
    print(f"\n{'overlap':22s} {'o1':>7s} {'chance':>7s} {'ratio':>6s} {'o2':>7s} {'chance':>7s}")
    for o in man["overlap"]:
        ratio = o["o1"] / o["chance_o1"] if o["chance_o1"] else float("nan")
        print(
            f"{o['a'] + ' / ' + o['b']:22s} {o['o1']:7.3f} {o['chance_o1']:7.3f} {ratio:6.2f} "
            f"{o['o2']:7.3f} {o['chance_o2']:7.3f}"
        )
    print("\nseries (grpo-s0):", ", ".join(f"{p['step']}: {p['sparsity']:.1%}" for p in man["series"]))
    b = man["bigram"]
    print(
        f"text source: order {b.get('order', 1)}, entropy rate {b['entropy_rate_nats']:.3f} nats, "
        f"best bigram model {b.get('bigram_entropy_rate_nats') or b['entropy_rate_nats']:.3f} nats; "
        f"base's final chain loss {_pretrain(root).get('final_loss_chain'):.3f} nats"
    )
    if args.wait:
        _wait(zoo, runs)


def _pretrain(root: Path) -> dict:
    import json

    return json.loads((root / "base" / "pretrain.json").read_text())


def _wait(zoo, runs: Path) -> None:
    """Wait for the background jobs; print each one's time from queued to done, and the masks' numbers."""
    import json

    from subnetviz.jobs.runner import JobRunner

    r = JobRunner(runs, max_concurrent=1, gpus=[])
    ids = zoo.manifest.extras.jobs
    print(f"\n{'background job':16s} {'status':10s} {'queued->done s':>15s} {'running s':>10s}")
    for key, run_id in ids.items():
        rec = r.wait(run_id, timeout=3 * 3600, interval=2.0)
        print(
            f"{key:16s} {rec.status:10s} {(rec.ended or 0) - rec.created:15.1f} "
            f"{(rec.ended or 0) - (rec.started or 0):10.1f}"
        )
        metrics = rec.outputs / "metrics.json"
        if metrics.is_file():
            print("   ", json.loads(metrics.read_text()))


if __name__ == "__main__":
    main()
