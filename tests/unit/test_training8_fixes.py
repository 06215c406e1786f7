"""The Training page's library side against the eighth training review: an overlaid run that failed or was cancelled
part-way read as a finished run in the legend, generated run names that did not tell runs apart, a learning rate
told two clashing rules, and a ``train --run-dir`` in the home's runs that no listing saw. Runs are planted by hand;
every expected label and message is written out here."""

import json
import math
import os
from pathlib import Path

import pytest

from subnetviz.errors import ConfigError
from tests.app_fixtures import add_finished_run

# --- 1: a run that failed or was cancelled part-way says so in the legend and the export ----------------------------


@pytest.fixture
def own_runner(tmp_path):
    from subnetviz.jobs.runner import JobRunner

    return JobRunner(tmp_path / "runs", max_concurrent=1)


def _plant(runner, run_id: str, steps: int, status: str = "succeeded", step=None, total=None) -> None:
    """A train run that logged a loss at steps 1..``steps``, its registry row given ``status``, ``step``, ``total``."""
    run_dir = add_finished_run(runner, run_id, "train", run_id, {"kind": "train"})
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"time": 1.0, "step": s, "loss": 1.0 / s, "grad_norm": 2.0} for s in range(1, steps + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with runner.registry.transaction() as con:
        runner.registry.update(con, run_id, status=status, step=step, total=total)


def _legend(fig) -> list[str]:
    return [t.name for t in fig.data if t.mode == "lines+markers" and t.showlegend]


def test_an_overlaid_run_that_failed_or_was_cancelled_says_where_it_stopped(own_runner):
    """The reviewer's runs: killed (kill -9) at step 12 of 400, cancelled at step 35 of 400, beside a finished one.
    The legend named the two as it names a finished run; only NaN divergence was said."""
    from subnetviz.report.training import curves_figure, export_parts

    _plant(own_runner, "full", 3, "succeeded", 3, 3)
    _plant(own_runner, "killed", 12, "failed", 12, 400)
    _plant(own_runner, "stopped", 35, "cancelled", 35, 400)
    ids = ["full", "killed", "stopped"]
    names = {i: f"{i} · {i}" for i in ids}  # (as the page and its export name them: the planted name is the id)
    want = [
        "full · full",
        "killed · killed (failed at step 12 of 400)",
        "stopped · stopped (cancelled at step 35 of 400)",
    ]
    assert _legend(curves_figure(own_runner, ids, names)) == want
    figs, _ = export_parts(own_runner, ids, 0.0, None)  # the HTML export's chart
    assert _legend(figs["curves"]) == want
    # the chosen run's title says it too, as it says a divergence
    assert curves_figure(own_runner, ["killed"], names).layout.title.text == (
        "Run killed · killed (failed at step 12 of 400)"
    )


def test_a_stopped_run_without_a_recorded_step_or_total_says_what_is_known(own_runner):
    """A row a rebuilt registry gave no step: the last step its metrics logged (7); no total: no "of"."""
    from subnetviz.report.training import curves_figure

    _plant(own_runner, "nostep", 7, "failed", None, 50)
    _plant(own_runner, "nototal", 5, "cancelled", 5, None)
    names = {"nostep": "a", "nototal": "b"}
    assert _legend(curves_figure(own_runner, ["nostep", "nototal"], names)) == [
        "a (failed at step 7 of 50)",
        "b (cancelled at step 5)",
    ]


def test_a_run_that_diverged_and_then_failed_says_both(own_runner):
    from subnetviz.report.training import curves_figure

    run_dir = add_finished_run(own_runner, "both", "train", "both", {"kind": "train"})
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": float("nan")}, {"step": 3, "loss": float("nan")}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with own_runner.registry.transaction() as con:
        own_runner.registry.update(con, "both", status="failed", step=3, total=10)
    fig = curves_figure(own_runner, ["both"], {"both": "x"})
    assert fig.layout.title.text == "Run x (diverged at step 2; failed at step 3 of 10)"


# --- 2: a generated run name tells runs apart by steps and mask source ---------------------------------------------


def _cfg(**kw) -> dict:
    return {"algorithm": "sft", "steps": 3, "learning_rate": 1e-5, "seed": 0, "strategy": "single", **kw}


@pytest.mark.parametrize(
    ("cfg", "choice", "random", "name"),
    [
        (_cfg(), "update mask of grpo-s0", False, "sft sub(grpo-s0) 3 steps lr=1e-05 s=0"),
        (_cfg(steps=400), "update mask of grpo-s0", False, "sft sub(grpo-s0) 400 steps lr=1e-05 s=0"),
        (_cfg(steps=400, seed=2), "update mask of dpo", False, "sft sub(dpo) 400 steps lr=1e-05 s=2"),
        (_cfg(), "update mask of grpo-s0", True, "sft random(grpo-s0) 3 steps lr=1e-05 s=0"),
        (_cfg(steps=1), None, False, "sft 1 step lr=1e-05 s=0"),
        (_cfg(steps=1000, strategy="fsdp2", num_processes=2), None, False, "sft 1,000 steps lr=1e-05 s=0 fsdp2 n=2"),
        (_cfg(), "update mask of run 20261207-203318-train-ae5862", False, "sft sub(run ae5862) 3 steps lr=1e-05 s=0"),
        (_cfg(), "update mask of 20261207-203318-train-ae5862", False, "sft sub(run ae5862) 3 steps lr=1e-05 s=0"),
        (_cfg(), "update mask of grpo-s0@12", False, "sft sub(grpo-s0@12) 3 steps lr=1e-05 s=0"),
        (_cfg(), "masks/grpo-seed0", False, "sft sub(grpo-seed0) 3 steps lr=1e-05 s=0"),
        (  # a kept copy of an update mask, by the finetune it came from
            _cfg(),
            "uploads/update-mask-of-grpo-s0-08745fa348b320327a99f50d2529ea02",
            False,
            "sft sub(grpo-s0) 3 steps lr=1e-05 s=0",
        ),
    ],
)
def test_the_generated_run_name_says_steps_and_the_masks_source(cfg, choice, random, name):
    from subnetviz.report.training import run_name

    assert run_name(cfg, choice, random) == name


def test_a_long_mask_source_is_cut_short():
    from subnetviz.report.training import MASK_NAME, mask_source

    long = "masks/" + "a-very-long-saved-mask-name-of-many-words"
    assert mask_source(long) == "a-very-long-saved-mask-name-of-many-words"[: MASK_NAME - 1] + "…"
    assert len(mask_source(long)) == MASK_NAME


# --- 3: the learning rate: one rule, one message --------------------------------------------------------------------


def _lr_problems(lr) -> list[str]:
    from subnetviz.training.config import TrainConfig

    try:  # (its missing base and data are refused too: the rate's problems are those naming it)
        TrainConfig(algorithm="sft", base="b", data="d", output_dir="o", learning_rate=lr).validate()
    except ConfigError as exc:
        return [p.strip().rstrip(".") for p in str(exc).split(";") if "learning_rate" in p]
    return []


@pytest.mark.parametrize("lr", [-0.001, math.nan, math.inf, 1.0, 0.0, 1e6, True, "1e-5"])
def test_a_learning_rate_outside_its_range_gets_one_message(lr):
    """-0.001 was told "must be a finite number >= 0" and "must be in (0, 1)" in one line; 1.0 passed the first."""
    assert _lr_problems(lr) == [f"learning_rate must be a number above 0 and below 1, got {lr!r}"]


@pytest.mark.parametrize("lr", [1e-8, 1e-5, 0.5, 0.99])
def test_a_learning_rate_in_its_range_is_taken(lr):
    assert _lr_problems(lr) == []


# --- 4: train --run-dir in the home's runs is registered when it ends ---------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _fake_train(state: str = "succeeded", pid: int | None = None):
    """``cmd_train`` as main_train leaves a run folder it made (config, its foreground record, final status, the
    model in outputs/) and the exit status it ends with; a model is trained in tests/app/test_training8_fixes_app.py."""

    def cmd_train(args) -> int:
        rd = Path(args.run_dir)
        rd.mkdir(parents=True)
        (rd / "config.json").write_text(json.dumps({"kind": "train", "algorithm": "sft", "name": "cli run"}))
        (rd / "foreground.json").write_text(json.dumps({"pid": os.getpid() if pid is None else pid, "pid_start": 1}))
        (rd / "status.json").write_text(json.dumps({"state": state, "step": 2, "total": 2, "started": 5.0}))
        if state == "succeeded":
            (rd / "outputs" / "model").mkdir(parents=True)
        return 0 if state == "succeeded" else 1

    return cmd_train


def _listed(home: Path) -> dict[str, tuple]:
    import sqlite3

    path = home / "runs" / "registry.sqlite"
    if not path.is_file():
        return {}
    with sqlite3.connect(path) as con:
        return {r[0]: r[1:] for r in con.execute("SELECT id, name, status, step, total FROM runs")}


@pytest.mark.parametrize(("state", "code"), [("succeeded", 0), ("failed", 1)])
def test_a_train_run_dir_in_the_homes_runs_is_registered_when_it_ends(home, monkeypatch, capsys, state, code):
    import subnetviz.cli as cli

    monkeypatch.setattr(cli, "cmd_train", _fake_train(state))
    (home / "runs").mkdir(parents=True)
    assert cli.main(["train", "--config", "c.json", "--run-dir", str(home / "runs" / "cli-run-1")]) == code
    assert _listed(home) == {"cli-run-1": ("cli run", state, 2, 2)}
    assert "not registered" not in capsys.readouterr().err
    # registered once: a second look (a rescan) leaves it as it is
    from subnetviz.jobs.runner import JobRunner

    assert JobRunner().rescan() == [] and _listed(home) == {"cli-run-1": ("cli run", state, 2, 2)}


def test_a_new_registry_is_rebuilt_with_every_run_folder_as_a_runner_would(home, monkeypatch):
    """No registry yet beside an earlier run's folder: the registry made here holds both, not this run alone (a
    runner rebuilds a registry only when it finds it empty)."""
    import subnetviz.cli as cli

    earlier = home / "runs" / "earlier"
    earlier.mkdir(parents=True)
    (earlier / "config.json").write_text(json.dumps({"kind": "train", "name": "old"}))
    (earlier / "status.json").write_text(json.dumps({"state": "failed", "error": "x"}))
    monkeypatch.setattr(cli, "cmd_train", _fake_train())
    assert cli.main(["train", "--config", "c.json", "--run-dir", str(home / "runs" / "new")]) == 0
    assert {k: v[1] for k, v in _listed(home).items()} == {"earlier": "failed", "new": "succeeded"}


def test_only_this_runs_own_folder_in_the_homes_runs_is_registered(home, tmp_path, monkeypatch):
    """A folder elsewhere stays the user's; one that another process made (a foreground record of another pid: a
    --run-dir that was there, refused) is not this run's to register; a folder the registry names is left as is."""
    import subnetviz.cli as cli
    from subnetviz.jobs.runner import JobRunner

    JobRunner()  # a registry, empty
    monkeypatch.setattr(cli, "cmd_train", _fake_train())
    assert cli.main(["train", "--config", "c.json", "--run-dir", str(tmp_path / "elsewhere")]) == 0
    assert _listed(home) == {}
    monkeypatch.setattr(cli, "cmd_train", _fake_train(pid=os.getpid() + 1))
    assert cli.main(["train", "--config", "c.json", "--run-dir", str(home / "runs" / "other")]) == 0
    assert _listed(home) == {}


def test_the_help_says_when_the_run_is_listed():
    from tests.integration.test_cli4_fixes import _subparser

    (text,) = [a.help for a in _subparser("train")._actions if "--run-dir" in a.option_strings]
    assert "SUBNETVIZ_HOME/runs is registered when the run ends" in text and "no log.txt" in text
