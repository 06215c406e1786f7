"""The job system's readers of what a job writes (``status.json``, ``metrics.jsonl``) and the registry's writer:
whatever a job leaves in its run folder is read as data or skipped, never raised, and never reaches SQLite as a
value it cannot hold."""

from __future__ import annotations

import json
import math
import sqlite3
import time

import pytest

from subnetviz.jobs import context
from subnetviz.jobs.context import metrics_row, read_json, read_metrics
from subnetviz.jobs.registry import INT64_MAX, INT64_MIN, Registry, RunRecord, storable
from subnetviz.jobs.scheduler import progress_of


@pytest.mark.parametrize("content", [b"[1, 2]", b"5", b"null", b"\xff\xfe", b"[" * 100_000, b'{"a": 1', b""], ids=repr)
def test_read_json_is_an_object_or_nothing(tmp_path, content):
    (tmp_path / "status.json").write_bytes(content)
    assert read_json(tmp_path / "status.json") == {}


def test_read_json_refuses_a_file_beyond_its_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(context, "MAX_JSON_BYTES", 100, raising=False)
    (tmp_path / "status.json").write_text(json.dumps({"state": "x" * 200}))
    assert read_json(tmp_path / "status.json") == {}
    (tmp_path / "status.json").write_text(json.dumps({"state": "failed"}))
    assert read_json(tmp_path / "status.json") == {"state": "failed"} and read_json(tmp_path / "none") == {}


def test_metrics_rows_keep_numbers_finite_where_numbers_are_expected():
    assert metrics_row(5) is None and metrics_row([1, 2]) is None and metrics_row(None) is None
    assert metrics_row({"step": "1"}) is None and metrics_row({"step": math.nan}) is None
    assert metrics_row({"time": True}) is None and metrics_row({"total": math.inf}) is None
    row = metrics_row(
        {"step": 2**70, "total": 3, "loss": math.inf, "kept": {"a": 1}, "method": "m" * 500, "k": 10**400}
    )
    assert row["step"] == float(2**70) and row["total"] == 3 and math.isnan(row["loss"]) and math.isnan(row["kept"])
    assert len(row["method"]) == context.METRICS_TEXT_CHARS and math.isnan(row["k"])


def test_read_metrics_reads_the_end_of_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(context, "METRICS_TAIL_BYTES", 1000, raising=False)
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": 1.0}) for s in range(200)]
    path.write_text("\n".join(rows) + "\n")
    got, left_out = read_metrics(path)
    assert left_out and got[-1]["step"] == 199 and 0 < len(got) < 200
    assert [r["step"] for r in got] == list(range(200 - len(got), 200))  # no row cut in two is read as one
    assert read_metrics(tmp_path / "none") == ([], False)


def test_read_metrics_bounds_rows_and_columns(tmp_path, monkeypatch):
    monkeypatch.setattr(context, "METRICS_MAX_ROWS", 5, raising=False)
    monkeypatch.setattr(context, "METRICS_MAX_COLUMNS", 2, raising=False)
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, f"m{s}": 1.0, "loss": 0.5}) + "\n" for s in range(8)))
    got, left_out = read_metrics(path)
    assert left_out and [r["step"] for r in got] == [3, 4, 5, 6, 7]
    assert set().union(*got) == {"step", "m3", "loss"}  # the first metric names seen, then no more
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(5)))
    assert read_metrics(path) == ([{"step": s} for s in range(5)], False)


def test_progress_of_a_status_holds_only_what_sqlite_can():
    status = {"step": 2**63, "total": -math.inf, "metrics": {"loss": 10**400, "m": "x", "bad": [1], "nan": math.nan}}
    got = progress_of(status)
    assert got["step"] == INT64_MAX and "total" not in got
    assert (
        got["last_metrics"]["loss"] == math.inf and got["last_metrics"]["m"] == "x" and "bad" not in got["last_metrics"]
    )
    assert progress_of({"step": True, "metrics": [1]}) == {} and progress_of({"step": -(2**80)}) == {"step": INT64_MIN}


def test_the_registry_clamps_what_it_stores_and_reads_a_broken_row(tmp_path):
    assert storable(2**63) == INT64_MAX and storable(-(2**64)) == INT64_MIN and storable(math.nan) is None
    assert storable(True) == 1 and storable("x") == "x"
    reg = Registry(tmp_path / "registry.sqlite")
    rec = RunRecord("r1", "python", None, "running", 1, None, time.time(), None, None, None, None, {}, None, "d", {})
    with reg.transaction() as con:
        reg.insert(con, rec)
        reg.update(con, "r1", step=2**64, total=2**63, ended=math.inf, last_metrics={"loss": math.nan})
    got = reg.get("r1")
    assert (got.step, got.total, got.ended) == (INT64_MAX, INT64_MAX, None) and math.isnan(got.last_metrics["loss"])
    con = sqlite3.connect(tmp_path / "registry.sqlite")
    con.execute("UPDATE runs SET last_metrics = '{not json', config = '[1]' WHERE id = 'r1'")
    con.commit()
    con.close()
    assert (reg.get("r1").last_metrics, reg.get("r1").config) == ({}, {}) and len(reg.rows()) == 1
