"""The drivers experiment after the third review: ``experiment drivers`` prints only its own lines on stdout
(DeepSpeed, imported by accelerate inside the trainers, printed "Setting accelerator to CPU" there, before the
results table a script parses); the bf16-vs-fp32 chart draws a run that trained nothing as ×, named in its subtitle,
not as an ordinary 100 % / 100 % pair."""

import logging
import sys

import numpy as np
import pandas as pd

from subnetviz.experiments.drivers import COLUMNS
from tests.zoo_fixtures import micro_zoo  # noqa: F401

BASE = {"algorithm": "grpo", "accuracy": 0.5, "kl_forward": 0.01, "learning_rate": 1e-4, "steps": 2, "beta": 0.0}
BASE |= {"max_grad_norm": 1.0, "optimizer": "adamw_torch", "data": "task", "train_seconds": 1.0}
BASE |= {"status": "done", "note": "", "grid_version": 2}


def test_the_cli_prints_only_its_own_lines_on_stdout(micro_zoo, tmp_path, monkeypatch, capsys):  # noqa: F811
    """stdout is the results table, the verdicts table and "wrote OUT", nothing else (the command's own lines,
    counted from the files it wrote); what the libraries print while each run trains (a metrics line, DeepSpeed's
    import line through a handler it opens on the stdout of that moment) is on stderr. Each run is replaced by what
    it prints and two measured rows (training the micro grid in a subprocess took 50-140 s)."""
    from subnetviz import __main__ as cli
    from subnetviz.experiments import drivers

    def run(spec, *args):
        print({"loss": "0.6931", "grad_norm": "0.125", "epoch": 1})  # a trainer's log line, as printed
        handler = logging.StreamHandler(sys.stdout)  # DeepSpeed's, opened at its import inside a run
        log = logging.getLogger("fake-deepspeed")
        log.addHandler(handler)
        log.warning("[WARNING] Setting accelerator to CPU.")
        log.removeHandler(handler)
        measured = {"sparsity": 0.5, "accuracy": 0.25, "kl_forward": 0.01, "train_seconds": 1.0, "beta": 0.0}
        return [{"precision": p, **measured, "status": "done", "note": ""} for p in ("bf16", "fp32")]

    monkeypatch.setattr(drivers, "recipe_rows", run)
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    args = ["experiment", "drivers", "--preset", "micro", "--zoo", str(micro_zoo.root), "--out", str(out)]
    assert cli.main(args) == 0
    said = capsys.readouterr()
    results = pd.read_csv(out / "results.csv", dtype={"value": str})
    verdicts = pd.read_csv(out / "verdicts.csv")
    assert set(results["status"]) <= {"done", "not run"} and (results["status"] == "done").any()
    lines = said.out.splitlines()
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
    assert "Setting accelerator to CPU" in said.err and "{'loss'" in said.err  # kept, on stderr


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
