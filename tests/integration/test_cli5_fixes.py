"""Fixes of the command line's fifth review (/tmp/review/cli5/REPORT.md, findings 1 to 3).

Proves: a Ctrl-C or SIGTERM that arrives once the result is in place (``analyze``/``behavior``/``experiment``
``--out``, ``mask import``'s DST, ``train``'s ``output_dir`` and ``--run-dir`` outputs, the demo zoo) says the
result is complete and where, and ends with the status the command would have ended with (0; 1 for a grid with failed
points), where it said "interrupted: nothing was written." with 130 / 143; one before that still says nothing was
written. The interrupts are raised by hooks at fixed points, never timed. A blank path argument (``--root ''``,
``--out ''``, an unset shell variable) is refused in one line saying so, where ``demo build`` built a zoo into the
working folder. ``app`` with a misspelt Streamlit option suggests a command that runs (it named a module that does not
exist, ``python -m subnetviz.streamlit``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch

from subnetviz.cli import main
from subnetviz.jobs.worker import Interrupted
from tests.models import make_tiny_llama
from tests.training_fixtures import write_addition_data

REPO = Path(__file__).resolve().parents[2]
COMPLETE = (
    "interrupted after the result was written: {} is complete; only what was to be printed after it was cut short."
)
NOTHING = "interrupted: nothing was written."


def _last(err: str) -> str:
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama (with its tokenizer), a copy of it as the finetune, and addition data."""
    root = tmp_path_factory.mktemp("cli5")
    base = make_tiny_llama(root / "base", hidden=16, intermediate=32, heads=2)
    ft = root / "ft"
    shutil.copytree(base, ft)
    return base, ft, write_addition_data(root / "data", n=8)


def _signal(kind: str) -> KeyboardInterrupt:
    """Ctrl-C as Python raises it, or SIGTERM as the command line raises it (sigterm_interrupts, train's handler)."""
    return KeyboardInterrupt() if kind == "SIGINT" else Interrupted(signal.SIGTERM)


def _raise_when_printed(monkeypatch, module, name: str, kind: str) -> None:
    """``module.name`` (the first thing a command calls after publishing, to print its table) raises the signal."""

    def interrupted(*args, **kwargs):
        raise _signal(kind)

    monkeypatch.setattr(module, name, interrupted)


# --- 1: a signal after the result is in place ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["SIGINT", "SIGTERM"])
def test_a_signal_after_analyze_published_says_the_result_is_complete(tiny, tmp_path, monkeypatch, capsys, kind):
    """Ctrl-C / SIGTERM while analyze printed its table, after --out was in place: "nothing was written.", exit
    130 / 143, and a rerun failed on the folder. Now the line names --out as complete, exit 0."""
    import subnetviz.cli.analysis as analysis

    base, ft, _ = tiny
    _raise_when_printed(monkeypatch, analysis, "shown_cells", kind)
    out = tmp_path / "out"
    code = main(["analyze", str(base), str(ft), "--out", str(out), "--no-cache", "--no-spectra", "--subspaces", "0"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    assert _last(err) == COMPLETE.format(out), err
    assert json.loads((out / "summary.json").read_text())  # the result, whole
    assert (out / ".manifest.json").is_file()


def test_a_signal_between_the_rename_and_its_record_is_told_by_the_folder(tiny, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the instant after the rename put --out in place and before the command recorded it: told by the
    folder that is there (the temporary one, renamed), not by the record."""
    import subnetviz.cache as cache

    real = cache.atomic_folder

    @contextmanager
    def then_ctrl_c(*args, **kwargs):
        with real(*args, **kwargs) as tmp:
            yield tmp
        raise KeyboardInterrupt  # the rename is done; publish has not recorded it yet

    monkeypatch.setattr(cache, "atomic_folder", then_ctrl_c)
    base, ft, _ = tiny
    out = tmp_path / "out"
    code = main(["analyze", str(base), str(ft), "--out", str(out), "--no-cache", "--no-spectra", "--subspaces", "0"])
    err = capsys.readouterr().err
    assert code == 0 and _last(err) == COMPLETE.format(out), err
    assert (out / "summary.json").is_file()


def test_a_signal_before_the_rename_still_says_nothing_was_written(tiny, tmp_path, monkeypatch, capsys):
    """The other side of the rename: Ctrl-C while the result was written, before it was put in place."""
    import subnetviz.cli.analysis as analysis

    monkeypatch.setattr(analysis, "_write_subspaces", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    base, ft, _ = tiny
    out = tmp_path / "out"
    code = main(["analyze", str(base), str(ft), "--out", str(out), "--no-cache", "--no-spectra", "--subspaces", "1"])
    err = capsys.readouterr().err
    assert code == 130 and _last(err) == NOTHING, err
    assert not out.exists()


def test_a_signal_after_behavior_published_says_the_result_is_complete(tiny, tmp_path, monkeypatch, capsys):
    import subnetviz.cli.analysis as analysis

    base, ft, data = tiny
    _raise_when_printed(monkeypatch, analysis, "shown_cells", "SIGTERM")
    out = tmp_path / "bout"
    args = ["behavior", str(base), str(ft), "--prompts", str(data["eval"]), "--limit", "2", "--no-random", "--curve"]
    code = main([*args, "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0 and _last(err) == COMPLETE.format(out), err
    assert (out / "behavior.json").is_file() and (out / "summary.csv").is_file()


def plant_failed_grid(monkeypatch) -> None:
    """``experiment drivers`` computes a grid of two learning rates, the second failed ("diverged"), with no run."""
    from subnetviz.experiments import drivers

    cols = ["factor", "value", "seed", "algorithm", "precision", "sparsity", "accuracy", "kl_forward", "status", "note"]
    rows = [
        ["lr", 1e-5, 0, "grpo", "bf16", 0.9, 0.5, 0.1, "ok", ""],
        ["lr", 1e-3, 0, "grpo", "bf16", None, None, None, "failed", "diverged"],
    ]
    monkeypatch.setattr(drivers, "run_drivers", lambda *a, **k: pd.DataFrame(rows, columns=cols))
    monkeypatch.setattr(drivers, "verdicts", lambda results: pd.DataFrame({"factor": ["lr"], "verdict": ["-"]}))


def test_a_signal_after_a_grid_with_failed_points_published_keeps_its_status_and_error(tmp_path, monkeypatch, capsys):
    """``experiment drivers`` publishes a grid with failed points and exits 1 saying so; a signal while it printed
    the table ends it with that status and line too, after saying the result is complete."""

    plant_failed_grid(monkeypatch)
    import subnetviz.cli.analysis as analysis

    _raise_when_printed(monkeypatch, analysis, "shown_cells", "SIGINT")
    out = tmp_path / "grid"
    code = main(["experiment", "drivers", "--preset", "micro", "--zoo", str(tmp_path), "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1, err
    assert err[-2:] == [
        COMPLETE.format(out),
        f"error: drivers: 1 grid point(s) failed (the first, lr=0.001: diverged); the other runs' results are in {out}",
    ]
    assert (out / "results.csv").is_file()


def test_a_signal_after_mask_import_wrote_its_file_says_it_is_complete(tmp_path, monkeypatch, capsys):
    import subnetviz.cli.jobs as jobs

    torch.save({"w": torch.tensor([[True, False], [False, True]])}, tmp_path / "m.pt")
    _raise_when_printed(monkeypatch, jobs, "share_text", "SIGINT")
    dst = tmp_path / "m.safetensors"
    code = main(["mask", "import", str(tmp_path / "m.pt"), str(dst)])
    err = capsys.readouterr().err
    assert code == 0 and _last(err) == COMPLETE.format(dst), err
    assert dst.is_file()


def _train_config(tiny, tmp_path: Path, **edits) -> Path:
    base, _, data = tiny
    config = {"algorithm": "sft", "base": str(base), "data": str(data["sft"]), "steps": 2, "batch_size": 4}
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**config, **edits}))
    return path


@pytest.mark.parametrize("kind", ["SIGINT", "SIGTERM"])
def test_a_signal_after_train_published_its_model_says_the_model_is_complete(tiny, tmp_path, monkeypatch, capsys, kind):
    """Ctrl-C / SIGTERM right after the run renamed its folder to output_dir (at its 'saved' log line): "nothing
    was written.", 130 / 143, while output_dir held the whole model. Now the line names it, exit 0, and the run's
    TensorBoard events (its curves) stay: they were deleted as an interrupted run's."""
    from subnetviz.training import run

    real = run._log

    def log(ctx, message):
        real(ctx, message)
        if message.startswith("saved "):  # said right after run.work.publish()
            raise _signal(kind)

    monkeypatch.setattr(run, "_log", log)
    out = tmp_path / "model"
    before = signal.getsignal(signal.SIGTERM)
    code = main(["train", "--config", str(_train_config(tiny, tmp_path, output_dir=str(out)))])
    err = capsys.readouterr().err
    assert code == 0 and _last(err) == COMPLETE.format(out), err
    assert (out / "train_summary.json").is_file() and (out / "model.safetensors").is_file()
    assert len(list(out.with_name("model.tensorboard").glob("*/events.out.tfevents.*"))) == 1
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_after_train_run_dir_moved_its_outputs_says_they_are_complete(tiny, tmp_path, monkeypatch, capsys):
    """``train --run-dir``: a Ctrl-C once the run's outputs were moved into place (at its 'succeeded' log line)
    reached the command line's handler: "nothing was written.", 130."""
    import subnetviz.jobs.worker as worker
    from subnetviz.jobs.context import JobContext

    def finished_model(config, ctx):
        (ctx.out_dir / "model").mkdir(parents=True)
        (ctx.out_dir / "model" / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(worker, "job_function", lambda config: finished_model)
    real = JobContext.log

    def log(self, message):
        real(self, message)
        if message.endswith(": succeeded"):  # said right after the outputs were moved into place
            raise KeyboardInterrupt

    monkeypatch.setattr(JobContext, "log", log)
    rd = tmp_path / "rd"
    code = main(["train", "--config", str(_train_config(tiny, tmp_path)), "--run-dir", str(rd)])
    err = capsys.readouterr().err
    assert code == 0 and _last(err) == COMPLETE.format(rd / "outputs"), err
    assert (rd / "outputs" / "model" / "model.safetensors").read_bytes() == b"weights"


def test_a_signal_while_demo_build_prints_its_zoo_says_the_zoo_is_complete(tmp_path, monkeypatch, capsys):
    """The zoo is built (its manifest written last) before its table is printed: a Ctrl-C there reached the
    command line's handler, "nothing was written."."""
    import subnetviz.demo.build as build

    root = tmp_path / "zoo"
    monkeypatch.setattr(build, "build_zoo", lambda *a, **k: type("Zoo", (), {"root": root, "members": []})())

    class Interrupting:
        def write(self, text):
            raise KeyboardInterrupt

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", Interrupting())
    code = main(["demo", "build", "--root", str(root), "--no-extras"])
    err = capsys.readouterr().err
    assert code == 0 and _last(err) == COMPLETE.format(root), err


# --- 2: a blank path argument --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["demo", "build", "--root", "", "--preset", "micro", "--no-extras"], "demo build: --root"),
        (["demo", "build", "--runs", " ", "--preset", "micro"], "demo build: --runs"),
        (["demo", "path", "--root", ""], "demo path: --root"),
        (["analyze", "BASE", "FT", "--out", ""], "analyze: --out"),
        (["behavior", "BASE", "FT", "--out", ""], "behavior: --out"),
        (["experiment", "drivers", "--out", ""], "experiment: --out"),
        (["job", ""], "job: RUN_DIR"),
    ],
)
def test_a_blank_path_argument_is_refused_saying_so(argv, said, tmp_path, monkeypatch, capsys):
    """``--root "$ZOO"`` with ZOO unset built the demo zoo into the working folder (``demo path`` printed it);
    ``--out ''`` was refused as "--out : the folder exists and is not empty", an empty-looking name."""
    import subnetviz.demo.build as build

    def no_build(*args, **kwargs):
        raise AssertionError("a build started")

    monkeypatch.setattr(build, "build_zoo", no_build)
    monkeypatch.chdir(tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured
    assert _last(captured.err).startswith(f"error: {said} is "), captured.err
    assert "(an unset shell variable?); nothing was read." in captured.err
    assert os.listdir(tmp_path) == []  # nothing made in the working folder


# --- 3: app's misspelt Streamlit option ---------------------------------------------------------------------------


def _misspelt(path_env: str) -> str:
    env = dict(os.environ, PATH=path_env, SUBNETVIZ_WARM="0", PYTHONPATH=str(REPO))
    run = subprocess.run(
        [sys.executable, "-m", "subnetviz.serve", "run", str(REPO / "app.py"), "--bogus"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 2 and "No such option '--bogus'" in run.stderr, run.stderr
    return next(line for line in run.stderr.splitlines() if line.startswith("Try '"))


def test_a_misspelt_streamlit_option_suggests_a_command_that_runs():
    """It suggested ``python -m subnetviz.streamlit run --help``: no such module. With no ``streamlit`` of this
    environment on PATH (a venv not activated) it names this interpreter's ``-m streamlit``, and that runs."""
    bare = os.pathsep.join(p for p in ("/usr/bin", "/bin") if Path(p).is_dir())
    hint = _misspelt(bare)
    command = shlex.split(hint.removeprefix("Try '").removesuffix("' for help."))
    assert command == [sys.executable, "-m", "streamlit", "run", "--help"], hint
    shown = subprocess.run(command, capture_output=True, text=True, timeout=120, env=dict(os.environ, PATH=bare))
    assert shown.returncode == 0 and "--server.port" in shown.stdout, shown.stderr


def test_with_this_environments_streamlit_on_path_it_suggests_streamlit():
    here = str(Path(sys.executable).parent)
    if not (Path(here) / "streamlit").is_file():
        pytest.skip("no streamlit script beside this interpreter")
    assert _misspelt(os.pathsep.join([here, "/usr/bin", "/bin"])) == "Try 'streamlit run --help' for help."
