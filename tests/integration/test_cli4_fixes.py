"""Fixes of the command line's fourth review (/tmp/review/cli4/REPORT.md, findings 1 to 5).

Proves: a plain ``demo build`` (what ``make app`` runs) keeps a complete zoo built with another preset, and one that
names another preset is refused in one line giving the two ways on, where it deleted the zoo and started building
(``--force`` still replaces it); a bad ``SUBNETVIZ_CACHE_GB`` is refused before any work by ``analyze``, ``demo
build`` and a cache-publishing job, and a cache entry is never left published by one; SIGTERM on ``experiment
drivers`` ends it as Ctrl-C does (the child process it waits on stopped, its work folder removed, exit 143, one
line); ``train --run-dir`` names the model's final folder, and its help promises no log file; ``report --out`` and
``mask import`` DST that is a link write the file it points to and keep the link, and a link to nothing is said as
that.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from subnetviz.cli import build_parser, main
from subnetviz.errors import ConfigError


def _errors(err: str) -> list[str]:
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]


# --- 1: demo build never deletes a complete zoo of another preset without --force ---------------------------------


@pytest.fixture
def micro_copy(micro_zoo, tmp_path, monkeypatch):
    """A copy of the session's micro zoo (this test's to delete), and no stage ever built: a build that would start
    (the demo preset: minutes) raises instead."""
    import subnetviz.demo.build as build

    root = tmp_path / "zoo"
    shutil.copytree(micro_zoo.root, root, symlinks=True)

    def no_build(*args, **kwargs):
        raise AssertionError("a build started")

    monkeypatch.setattr(build, "_build", no_build)
    return root


def test_a_plain_demo_build_keeps_a_complete_zoo_of_another_preset(micro_copy, capsys):
    """``make app`` runs ``demo build`` with no --preset: it deleted a finished micro zoo and started the demo preset's
    build of minutes in its place. It now keeps the zoo there, and says which preset it is and how to replace it."""
    from subnetviz.demo.build import main as demo_main

    before = sorted(p.name for p in micro_copy.iterdir())
    assert demo_main(["build", "--root", str(micro_copy), "--no-extras"]) == 0
    out, err = capsys.readouterr()
    assert f"demo zoo (micro) already built at {micro_copy}; kept as it is" in err
    assert "`--preset demo --force` replaces it" in err
    assert out.startswith(f"demo zoo at {micro_copy}") and "grpo-s0" in out
    assert sorted(p.name for p in micro_copy.iterdir()) == before


def test_another_preset_is_refused_in_one_line(micro_copy, capsys):
    """``--preset demo`` on a complete micro zoo: one line naming the preset found and the two ways on; nothing gone."""
    from subnetviz.demo.build import build_zoo
    from subnetviz.demo.build import main as demo_main

    before = sorted(p.name for p in micro_copy.iterdir())
    said = (
        f"the zoo in {micro_copy} was built with --preset micro; run `python -m subnetviz demo build --preset micro` "
        "to reuse it, or pass --force to replace it with the demo preset."
    )
    with pytest.raises(ConfigError) as exc:
        build_zoo(micro_copy, preset="demo")
    assert str(exc.value) == said
    assert demo_main(["build", "--root", str(micro_copy), "--preset", "demo", "--no-extras"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {said}"]
    assert sorted(p.name for p in micro_copy.iterdir()) == before
    assert json.loads((micro_copy / "build.json").read_text())["preset"] == "micro"


def test_force_still_replaces_it_and_says_so(micro_copy, capsys):
    from subnetviz.demo.build import build_zoo

    with pytest.raises(AssertionError, match="a build started"):
        build_zoo(micro_copy, preset="demo", force=True)
    err = capsys.readouterr().err
    assert f"note: the zoo built with --preset micro in {micro_copy} removed (--force); building --preset demo" in err
    assert not (micro_copy / "grpo-s0").exists() and not (micro_copy / "manifest.json").exists()
    assert json.loads((micro_copy / "build.json").read_text())["preset"] == "demo"


# --- 2: a bad SUBNETVIZ_CACHE_GB before any work --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "-1"])
def test_analyze_refuses_a_bad_cache_limit_before_the_analysis(ckpt_zoo, tmp_path, monkeypatch, capsys, value):
    """It was read when the result was published to the cache: after the whole analysis, which stayed cached."""
    import subnetviz.analysis.updates as updates

    monkeypatch.setenv("SUBNETVIZ_CACHE_GB", value)
    monkeypatch.setattr(updates, "cached_analysis", lambda *a, **k: pytest.fail("the analysis ran"))
    out = tmp_path / "out"
    assert main(["analyze", str(ckpt_zoo.llama), str(ckpt_zoo.llama), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert _errors(err) == [
        f"error: SUBNETVIZ_CACHE_GB={value!r}: expected a number of gigabytes > 0 (or 'inf'), e.g. 20."
    ]
    assert not out.exists()


def test_a_cache_entry_is_never_published_under_a_bad_limit(tmp_path, monkeypatch):
    """The limit was read after the entry had been renamed into place: the command failed, the entry stayed."""
    from subnetviz import cache

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SUBNETVIZ_CACHE_GB", "abc")
    ent = cache.entry("updates", "cli4-bad-limit")
    with pytest.raises(ConfigError, match="SUBNETVIZ_CACHE_GB='abc'"), ent.publish() as folder:
        (folder / "result.csv").write_text("a\n1\n")
    assert not ent.folder.exists() and not ent.ready
    monkeypatch.setenv("SUBNETVIZ_CACHE_GB", "inf")  # (a good value publishes it as before)
    with ent.publish() as folder:
        (folder / "result.csv").write_text("a\n1\n")
    assert ent.ready


def test_demo_build_refuses_a_bad_cache_limit_before_the_build(tmp_path, monkeypatch, capsys):
    """Its extras publish the Training page's comparison to the cache (and queue jobs that publish there)."""
    import subnetviz.demo.build as build

    monkeypatch.setenv("SUBNETVIZ_CACHE_GB", "abc")
    monkeypatch.setattr(build, "build_zoo", lambda *a, **k: pytest.fail("the build started"))
    assert build.main(["build", "--root", str(tmp_path / "zoo"), "--preset", "micro"]) == 2
    assert _errors(capsys.readouterr().err) == [
        "error: SUBNETVIZ_CACHE_GB='abc': expected a number of gigabytes > 0 (or 'inf'), e.g. 20."
    ]


def test_a_job_that_publishes_to_the_cache_refuses_a_bad_limit_before_its_work(tmp_path, monkeypatch, capsys):
    import subnetviz.jobs.worker as worker

    monkeypatch.setenv("SUBNETVIZ_CACHE_GB", "abc")
    monkeypatch.setattr(worker, "job_function", lambda config: lambda c, ctx: pytest.fail("the job's work started"))
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "config.json").write_text(json.dumps({"kind": "continual"}))
    (rd / "status.json").write_text(json.dumps({"state": "running"}))
    assert worker.main_job(str(rd)) == 1
    status = json.loads((rd / "status.json").read_text())
    assert status["state"] == "failed" and status["error"].startswith("SUBNETVIZ_CACHE_GB='abc'")
    assert "error: SUBNETVIZ_CACHE_GB='abc'" in capsys.readouterr().out  # (the job's log)


# --- 3: SIGTERM on experiment drivers -------------------------------------------------------------------------------


def _main_under_sigterm(argv: list[str]) -> int:
    """``main(argv)`` with SIGTERM's handler one that raises (Python's default would end this test process itself):
    the command must take SIGTERM itself, and put that handler back once it ends."""

    def unhandled(signum, frame):
        raise RuntimeError(f"{argv[0]} left SIGTERM to the handler it found")

    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        code = main(argv)
        assert signal.getsignal(signal.SIGTERM) is unhandled  # put back once the command ends
    finally:
        signal.signal(signal.SIGTERM, before)
    return code


@pytest.mark.usefixtures("terminal_sigint")
def test_sigterm_on_drivers_stops_its_child_and_removes_its_work_folder(micro_zoo, tmp_path, monkeypatch, capsys):
    """SIGTERM (``kill PID``, ``timeout``) while a grid run waits on its child process, as it waits on the PPO child:
    Python's default ended the command at once, the child ran on (orphaned) and the grid's work folder stayed in
    the temp folder. Now: the child killed, the folder removed, exit 143 and one line; --out not written."""
    from subnetviz.experiments import drivers

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    pid_file = tmp_path / "child.pid"
    children = []

    def run_with_a_child(spec, *args):
        def stop_when_the_child_runs():
            for _ in range(600):
                if pid_file.is_file() and pid_file.read_text().strip():
                    children.append(int(pid_file.read_text()))
                    break
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=stop_when_the_child_runs, daemon=True).start()
        code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
        subprocess.run([sys.executable, "-c", code], check=False)  # (as ppo.train_ppo waits on its child)
        raise AssertionError("the child ran to its end")

    monkeypatch.setattr(drivers, "recipe_rows", run_with_a_child)

    out = tmp_path / "out"
    code = _main_under_sigterm(
        ["experiment", "drivers", "--preset", "micro", "--zoo", str(micro_zoo.root), "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 143
    assert err.replace("\r", "\n").strip().splitlines()[-1] == "interrupted: nothing was written."
    assert "Traceback" not in err
    assert children, "the child never started"
    with pytest.raises(ProcessLookupError):  # killed and reaped: no orphan, no zombie
        os.kill(children[0], 0)
    assert not list(scratch.glob("subnetviz-drivers-*"))
    assert not out.exists()


@pytest.mark.usefixtures("terminal_sigint")
def test_sigterm_on_analyze_removes_its_half_written_result(ckpt_zoo, tmp_path, monkeypatch, capsys):
    """SIGTERM while `analyze` wrote its result: Python's default ended the command at once, exit -15, and the
    half-written temporary folder stayed beside --out (swept only by a later run to the same --out). Now it ends
    as Ctrl-C does: the folder removed, one line, exit 143."""
    import subnetviz.analysis.updates as updates

    def write_then_stopped(analysis, folder, **kw):
        folder.mkdir(parents=True)
        (folder / "half.parquet").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        raise AssertionError("SIGTERM did not stop it")

    monkeypatch.setattr(updates, "write_analysis", write_then_stopped)

    out = tmp_path / "out"
    code = _main_under_sigterm(["analyze", str(ckpt_zoo.llama), str(ckpt_zoo.llama), "--no-cache", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 143 and "Traceback" not in err, err
    assert err.replace("\r", "\n").strip().splitlines()[-1] == "interrupted: nothing was written."
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)  # no --out, nothing half-written beside it


# --- 4: train --run-dir names the model's final folder ------------------------------------------------------------


def test_train_run_dir_names_the_final_model_folder_and_promises_no_log(tmp_path, capsys):
    from tests.models import make_tiny_llama
    from tests.training_fixtures import write_addition_data

    base = make_tiny_llama(tmp_path / "base")
    data = write_addition_data(tmp_path / "data", n=8)
    cfg = {"algorithm": "sft", "base": str(base), "data": str(data["sft"]), "steps": 1, "batch_size": 4}
    (tmp_path / "c.json").write_text(json.dumps({**cfg, "output_dir": str(tmp_path / "unused")}))
    rd = tmp_path / "rd"
    assert main(["train", "--config", str(tmp_path / "c.json"), "--run-dir", str(rd)]) == 0
    said = capsys.readouterr().out
    (line,) = [x for x in said.splitlines() if x.startswith("saved ")]
    assert line.startswith(f"saved {rd / 'outputs' / 'model'} after 1 steps"), line
    assert "outputs.tmp" not in said
    assert (rd / "outputs" / "model" / "model.safetensors").is_file() and not (rd / "outputs.tmp").exists()
    # the help promised "config, status, metrics, log": no log file is written (the log is the terminal)
    assert not (rd / "log.txt").exists()
    (help_text,) = [a.help for a in _subparser("train")._actions if "--run-dir" in a.option_strings]
    assert "no log.txt" in help_text and "metrics, log;" not in help_text
    for name in ("config.json", "status.json", "metrics.jsonl", "tensorboard"):
        assert name in help_text and (rd / name).exists(), name


def _subparser(verb: str):
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices[verb]


# --- 5: a file output that is a link ------------------------------------------------------------------------------


def _fake_report(monkeypatch):
    import subnetviz.report.dashboard as dash

    def build(analysis_dir, path):
        Path(path).write_text("<!doctype html>the new page")
        return Path(path)

    monkeypatch.setattr(dash, "analysis_report", build)


def test_report_over_a_link_writes_its_target_and_keeps_the_link(tmp_path, monkeypatch, capsys):
    """``latest.html -> store/r.html`` with --overwrite: the link became a regular file, its target stayed stale."""
    _fake_report(monkeypatch)
    (tmp_path / "an").mkdir()
    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "r.html"
    target.write_text("old")
    link = tmp_path / "latest.html"
    link.symlink_to("store/r.html")
    assert main(["report", str(tmp_path / "an"), "--out", str(link)]) == 2  # (a file is there: no --overwrite)
    assert "a file is already there" in capsys.readouterr().err and target.read_text() == "old"
    assert main(["report", str(tmp_path / "an"), "--out", str(link), "--overwrite"]) == 0
    assert link.is_symlink() and os.readlink(link) == "store/r.html"
    assert target.read_text() == "<!doctype html>the new page"
    assert capsys.readouterr().out.strip() == f"wrote {link} (the file it links to, {target})"
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["r.html"]  # no temporary file left


@pytest.mark.parametrize("overwrite", [False, True])
def test_report_to_a_link_to_nothing_says_so(tmp_path, monkeypatch, capsys, overwrite):
    _fake_report(monkeypatch)
    (tmp_path / "an").mkdir()
    link = tmp_path / "dangling.html"
    link.symlink_to("store/none.html")
    argv = ["report", str(tmp_path / "an"), "--out", str(link)] + ["--overwrite"] * overwrite
    assert main(argv) == 2
    assert _errors(capsys.readouterr().err) == [
        f"error: --out {link}: a link to nothing (its target is gone); choose a file name."
    ]
    assert link.is_symlink() and not link.exists()


def _a_mask(path: Path, fill: bool) -> Path:
    from subnetviz.masks import MaskSet, save_mask_set

    return save_mask_set(path, MaskSet({"w": torch.full((4, 4), fill, dtype=torch.bool)}, {}))


def test_mask_import_over_a_link_writes_its_target_and_keeps_the_link(tmp_path, capsys):
    from subnetviz.masks import load_mask_set

    src = _a_mask(tmp_path / "src.safetensors", True)
    (tmp_path / "store").mkdir()
    target = _a_mask(tmp_path / "store" / "m.safetensors", False)
    link = tmp_path / "m.safetensors"
    link.symlink_to("store/m.safetensors")
    assert main(["mask", "import", str(src), str(link), "--overwrite"]) == 0
    assert link.is_symlink() and os.readlink(link) == "store/m.safetensors"
    assert load_mask_set(target).count == 16
    assert capsys.readouterr().out.startswith(f"wrote {link} (the file it links to, {target}): 1 tensors")
    dangling = tmp_path / "d.safetensors"
    dangling.symlink_to("store/none.safetensors")
    for extra in ([], ["--overwrite"]):
        assert main(["mask", "import", str(src), str(dangling), *extra]) == 2
        assert _errors(capsys.readouterr().err) == [
            f"error: {dangling}: a link to nothing (its target is gone); choose a file name."
        ]
    assert dangling.is_symlink() and not dangling.exists()
