"""The contract between the job runner and the work a job does.

A job is a JSON config with a ``kind`` (``train``, ``bigram_mask``, ``continual``, ...). The runner
(:mod:`subnetviz.jobs.runner`) starts ``python -m subnetviz job RUN_DIR`` as its own OS
process; that process looks up the kind in :data:`JOB_KINDS`, imports ``module:function`` and calls
``function(config: dict, ctx: JobContext)``.

The function writes its results only under ``ctx.out_dir`` (a temporary folder that the runner
renames to ``RUN_DIR/outputs`` when the function returns normally, so a crash never leaves
outputs that look complete), reports progress with :meth:`JobContext.progress`, and returns
early when :meth:`JobContext.should_stop` says so (the runner also kills the process group on
cancel; the flag is the polite way). A job function is a plain function: tests call it with a
``JobContext`` made directly on a temporary folder.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from subnetviz import cache
from subnetviz.cache import atomic_write

JOB_KINDS: dict[str, str] = {
    "train": "subnetviz.training.run:run_job",
    "bigram_mask": "subnetviz.bigram.job:run_job",
    "continual": "subnetviz.supermask.job:run_job",
    "behavior": "subnetviz.analysis.behavior:run_job",
    "drivers": "subnetviz.experiments.drivers:run_job",
}

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
CANCEL_FILE = "cancel"


@dataclass
class JobContext:
    """What a running job sees: its run folder, a temporary output folder, and progress hooks."""

    run_dir: Path
    out_dir: Path

    @classmethod
    def for_dir(cls, run_dir: str | os.PathLike) -> JobContext:
        run_dir = Path(run_dir)
        out = run_dir / "outputs.tmp"
        out.mkdir(parents=True, exist_ok=True)
        return cls(run_dir, out)

    def progress(self, step: int, total: int, **metrics: float) -> None:
        """Record progress (``step`` of ``total``) and, optionally, the latest metrics."""
        rec = {"time": time.time(), "step": int(step), "total": int(total), **_jsonable(metrics)}
        if metrics:
            with open(self.run_dir / METRICS_FILE, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        status = {"step": int(step), "total": int(total), "metrics": _jsonable(metrics), "time": rec["time"]}
        atomic_write(self.run_dir / STATUS_FILE, json.dumps(status))

    def log(self, message: str) -> None:
        """A human-readable line in the run's log (stdout goes to ``log.txt``)."""
        print(message, flush=True)

    def should_stop(self) -> bool:
        return (self.run_dir / CANCEL_FILE).exists()


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            out[k] = str(v)
    return out


def read_json(path: Path) -> dict:
    """A run folder's JSON file ({} when missing or unreadable)."""
    return cache.read_json(path, {})


def write_json(path: Path, obj: dict) -> None:
    cache.write_json(path, obj)
