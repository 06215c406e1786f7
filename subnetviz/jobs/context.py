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
import math
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


MAX_JSON_BYTES = 16 << 20  # a status or config file larger than this is no job's: read as unreadable


def read_json(path: Path) -> dict:
    """A run folder's JSON object: {} when it is missing, unreadable, not JSON, nested too deep, larger than
    :data:`MAX_JSON_BYTES` or not an object (a job writes its own ``status.json``: every poll reads it)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_JSON_BYTES + 1)
    except OSError:
        return {}
    if len(data) > MAX_JSON_BYTES:
        return {}
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or [[[[... 100,000 deep
        return {}
    return obj if isinstance(obj, dict) else {}


METRICS_TAIL_BYTES = 4 << 20  # the metrics a page reads: the last 4 MiB of metrics.jsonl ...
METRICS_MAX_ROWS = 50_000  # ... and at most this many rows of them
METRICS_MAX_COLUMNS = 200  # metric names beyond the first 200 seen are left out
METRICS_TEXT_CHARS = 200  # a text value (a method's label) is cut to this length
PROGRESS_KEYS = ("time", "step", "total")


def _number(value) -> float | int | None:
    """A finite JSON number as an int (within int64) or a float; None for anything else (bools included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return value
    try:
        value = float(value)
    except OverflowError:  # an int of 400 digits
        return None
    return value if math.isfinite(value) else None


def metrics_row(obj) -> dict | None:
    """One parsed line of ``metrics.jsonl`` as a table row, or None when it is none: not an object, or a
    ``time``/``step``/``total`` that is no finite number. A metric's value is a float (NaN for a non-finite,
    missing or unreadable one) or a short text (a job logs a method's label)."""
    if not isinstance(obj, dict):
        return None
    row = {}
    for key, value in obj.items():
        if key in PROGRESS_KEYS:
            num = _number(value)
            if num is None:
                return None
            row[key] = num
        elif isinstance(value, str):
            row[key] = value[:METRICS_TEXT_CHARS]
        else:
            num = _number(value) if not isinstance(value, bool) else float(value)
            row[key] = float("nan") if num is None else float(num)
    return row


def read_metrics(path: str | os.PathLike) -> tuple[list[dict], bool]:
    """The rows of a run's ``metrics.jsonl``, read from its end: at most the last :data:`METRICS_TAIL_BYTES`
    and :data:`METRICS_MAX_ROWS` (a page reads them every 2 s; a file of 300 MB was read whole each time).

    Returns ``(rows, left_out)``: ``left_out`` says that earlier rows were not read. A line that is no JSON
    object (one being written right now, garbage, bytes that are no UTF-8) is skipped (:func:`metrics_row`).
    """
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - METRICS_TAIL_BYTES)
            fh.seek(max(0, start - 1))  # one byte before: is the first line read whole?
            data = fh.read(size - max(0, start - 1))
    except OSError:
        return [], False
    left_out = start > 0
    if left_out:  # begin after the first line break: the line before it was cut
        cut = data.find(b"\n")
        data = data[cut + 1 :] if cut >= 0 else b""
    lines = data.split(b"\n")
    if len(lines) > METRICS_MAX_ROWS + 1:  # (+1: the empty piece after the last line break)
        lines, left_out = lines[-(METRICS_MAX_ROWS + 1) :], True
    rows, names = [], set()  # names: the metric names kept
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8", errors="replace"))
        except (ValueError, RecursionError):
            continue
        row = metrics_row(obj)
        if row is None:
            continue
        for key in [k for k in row if k not in names and k not in PROGRESS_KEYS]:
            if len(names) < METRICS_MAX_COLUMNS:
                names.add(key)
            else:
                del row[key]
        rows.append(row)
    return rows, left_out


def write_json(path: Path, obj: dict) -> None:
    cache.write_json(path, obj)
