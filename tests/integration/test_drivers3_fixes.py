"""The drivers experiment after the third review: ``experiment drivers`` prints only its own lines on stdout
(DeepSpeed, imported by accelerate inside the trainers, printed "Setting accelerator to CPU" there, before the
results table a script parses); the bf16-vs-fp32 chart draws a run that trained nothing as ×, named in its subtitle,
not as an ordinary 100 % / 100 % pair."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from subnetviz.experiments.drivers import COLUMNS
from tests.zoo_fixtures import micro_zoo  # noqa: F401

REPO = Path(__file__).resolve().parents[2]

BASE = {"algorithm": "grpo", "accuracy": 0.5, "kl_forward": 0.01, "learning_rate": 1e-4, "steps": 2, "beta": 0.0}
BASE |= {"max_grad_norm": 1.0, "optimizer": "adamw_torch", "data": "task", "train_seconds": 1.0}
BASE |= {"status": "done", "note": "", "grid_version": 2}


@pytest.mark.slow
def test_the_cli_prints_only_its_own_lines_on_stdout(micro_zoo, tmp_path):  # noqa: F811
    """stdout is the results table, the verdicts table and "wrote OUT", nothing else (the command's own lines,
    counted from the files it wrote); the libraries' lines are on stderr."""
    out = tmp_path / "out"
    env = {**os.environ, "SUBNETVIZ_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "subnetviz", "experiment", "drivers", "--preset", "micro"]
        + ["--zoo", str(micro_zoo.root), "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = pd.read_csv(out / "results.csv", dtype={"value": str})
    verdicts = pd.read_csv(out / "verdicts.csv")
    lines = proc.stdout.splitlines()
    # a header and one line per row for each table, then "wrote OUT"
    assert len(lines) == (1 + len(results)) + (1 + len(verdicts)) + 1, lines[:5]
    assert lines[0].split() == [
        "factor",
        "value",
        "seed",
        "algorithm",
        "precision",
        "sparsity",
        "accuracy",
        "kl_forward",
    ]
    for line, row in zip(lines[1 : 1 + len(results)], results.itertuples(), strict=True):
        assert line.split()[:3] == [row.factor, row.value, str(row.seed)], line
    assert lines[1 + len(results)].split()[:3] == ["conjecture", "expected", "observed"]
    assert lines[-1] == f"wrote {out}"
    assert not [x for x in lines if "[WARNING]" in x or "accelerator" in x or x.startswith("{'")]
    if importlib.util.find_spec("deepspeed") is not None:  # its import line still reaches the user, on stderr
        assert "Setting accelerator to CPU" in proc.stderr or "Setting ds_accelerator" in proc.stderr


def _pairs_grid() -> pd.DataFrame:
    """steps=1 seed 1 trained nothing (both saves equal to the base: 100 %); the other runs trained."""
    bf16 = {("1", 0): 0.368, ("1", 1): 1.0, ("2", 0): 0.23, ("2", 1): 0.19}
    fp32 = {("1", 0): 0.0043, ("1", 1): 1.0, ("2", 0): 0.0038, ("2", 1): 0.0039}
    rows = [
        {**BASE, "factor": "steps", "value": v, "seed": k, "precision": p, "sparsity": x[(v, k)]}
        for k in (0, 1)
        for v in ("1", "2")
        for p, x in (("bf16", bf16), ("fp32", fp32))
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def test_the_precision_chart_marks_a_run_that_trained_nothing():
    """steps=1 s1 (fp32 save equal to the base) was drawn as an ordinary 100 % / 100 % pair, no word said."""
    from subnetviz.figures.drivers import precision_pairs

    fig = precision_pairs(_pairs_grid())
    by_name = {t.name: t for t in fig.data if t.name}
    # the trained runs' saves as before, the untrained one not among them
    assert list(by_name["bf16 save"].x) == ["steps=1 s0", "steps=2 s0", "steps=2 s1"]
    assert np.allclose(by_name["bf16 save"].y, [36.8, 23.0, 19.0])
    assert np.allclose(by_name["fp32 save"].y, [0.43, 0.38, 0.39])
    (line,) = [t for t in fig.data if t.mode == "lines"]
    assert "steps=1 s1" not in list(line.x)
    # the untrained run: both saves at 100 %, drawn as × (the By-factor chart's marker), named and explained
    still = by_name["trained nothing"]
    assert list(still.x) == ["steps=1 s1", "steps=1 s1"] and np.allclose(still.y, [100, 100])
    assert sorted(still.text) == ["bf16", "fp32"] and still.marker.symbol == "x-thin-open"
    title = fig.layout.title.text
    assert "× trained nothing: steps=1 s1 (its fp32 save equals the base bit for bit" in title
    assert "measures no training" in title
    # every run in the grid's order on the x axis, the × one in its place (a trace's order put it last)
    assert list(fig.layout.xaxis.categoryarray) == ["steps=1 s0", "steps=2 s0", "steps=1 s1", "steps=2 s1"]


def test_the_precision_chart_of_a_grid_that_all_trained_says_nothing_more():
    from subnetviz.figures.drivers import precision_pairs

    g = _pairs_grid()
    g = g[~((g["value"] == "1") & (g["seed"] == 1))]
    fig = precision_pairs(g)
    assert "trained nothing" not in fig.layout.title.text
    assert not [t for t in fig.data if t.name == "trained nothing"]
    assert np.allclose([t for t in fig.data if t.name == "fp32 save"][0].y, [0.43, 0.38, 0.39])
