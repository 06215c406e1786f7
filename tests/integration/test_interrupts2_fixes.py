"""What a killed run leaves, and what a long one reads, after the second interruptions review.

- A writer's leftovers (``.NAME.tmp-PID-…``) are judged by the pid alone: a rule that also took a pid held by a
  process created after the leftover for a reused one (so that a killed PID 1's leftovers went) swept a live
  writer's folder when a second container, PID 1 of its own namespace, shared the cache; it was taken back. Shown
  with real PID namespaces (``unshare``, as a container makes them); a live writer whose leftover carries an old
  modification time (``copytree`` copies its source's) is left alone by the age rule too.
- ``analyze … --subspaces K`` through a cache over its limit: its own subspaces publish evicted the update
  analysis it was about to copy into ``--out``, and the run ended in an error with nothing written.
- A ``train --config`` run killed by SIGKILL left its TensorBoard events for good, beside the finished rerun's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from subnetviz import cache
from subnetviz.cache import sweep, sweep_beside, verify_manifest

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# --- 1. leftovers of a killed PID 1 --------------------------------------------------------------------------
def _new_pid_namespace() -> list[str] | None:
    """The ``unshare`` command line that runs a program as PID 1 of a new PID namespace (with a /proc of its own,
    as in a container), as root or through a user namespace; None where neither is allowed."""
    if shutil.which("unshare") is None:
        return None
    own = ["--pid", "--fork", "--mount-proc"]
    for cmd in (["unshare", *own], ["unshare", "--user", "--map-root-user", *own]):
        probe = [*cmd, sys.executable, "-c", "import os; print(os.getpid())"]
        try:
            done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0 and done.stdout.strip() == "1":
            return cmd
    return None


def test_a_live_pid_1s_folder_is_kept_by_a_later_pid_1_sharing_the_cache(tmp_path):
    """Two "containers" share a cache: the first, PID 1 of its namespace, is writing a cache entry (``…tmp-1-…``);
    the second, started later, PID 1 of its own, sweeps at its start as the server does. The first's folder stays:
    a rule that took a pid held by a process started after the folder for a reused pid swept it mid-write."""
    ns = _new_pid_namespace()
    if ns is None:
        pytest.skip("no PID namespace can be made here (unshare needs root or user namespaces)")
    root = tmp_path / "cache"
    writer_code = rf"""
        import os, time
        from pathlib import Path
        from subnetviz.cache import atomic_folder

        assert os.getpid() == 1
        with atomic_folder(Path({str(root)!r}) / "updates" / "k") as e:
            (e / "half.csv").write_text("x")
            print("writing", flush=True)
            time.sleep(120)
        """
    writer = subprocess.Popen(
        [*ns, sys.executable, "-c", textwrap.dedent(writer_code)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "writing"
        (folder,) = (root / "updates").iterdir()
        assert folder.name.startswith(".k.tmp-1-")
        time.sleep(1.5)  # (the second container starts well after the first's folder)
        sweeper = f"""
            import os
            from subnetviz.cache import sweep
            assert os.getpid() == 1
            print(len(sweep({str(root)!r})))
        """
        done = subprocess.run(
            [*ns, sys.executable, "-c", textwrap.dedent(sweeper)], env=ENV, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["0"] and (folder / "half.csv").is_file()
    finally:
        for p in psutil.Process(writer.pid).children(recursive=True):
            p.kill()
        writer.kill()
        writer.wait(timeout=60)


def _leftovers(out: Path, root: Path, pid: int) -> list[Path]:
    """A writer's temporary folder beside ``out`` and one in the cache ``root``, named for ``pid``, whose
    modification time is an hour before now: what ``copytree(source, tmp, dirs_exist_ok=True)`` does to a
    folder (it copies the source's times), e.g. ``analyze --out`` copying an analysis cached an hour ago."""
    made = [out.with_name(f".{out.name}.tmp-{pid}-1"), root / "updates" / f".k.tmp-{pid}-2"]
    for folder in made:
        folder.mkdir(parents=True)
        (folder / "part.csv").write_text("x")
        past = time.time() - 3700
        os.utime(folder, (past, past))
    return made


def test_a_live_writers_leftover_with_an_old_time_is_kept_until_the_writer_is_killed(tmp_path):
    """A live process's folders are kept by both sweeps, though their modification time (an hour ago, over
    ``sweep``'s age rule) is before the process started; once it is SIGKILLed they are removed."""
    out, root = tmp_path / "o", tmp_path / "cache"
    writer = subprocess.Popen(
        [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(120)"],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        made = _leftovers(out, root, writer.pid)
        assert sweep_beside(out) == [] and sweep(root) == []
        assert all(folder.is_dir() for folder in made)
    finally:
        writer.kill()
        writer.wait()
    assert sweep_beside(out) == [made[0]] and sweep(root) == [made[1]]
    assert not any(folder.exists() for folder in made)


# --- 2. analyze --subspaces: its own update analysis evicted ------------------------------------------------
def test_analyze_with_subspaces_writes_out_though_its_analysis_is_evicted_meanwhile(tmp_path, monkeypatch, capsys):
    """A cache over its limit (1 KB) and no grace: the subspaces' publish evicts the update analysis (as it does
    once the subspaces took longer than ``EVICT_GRACE_S``). ``--out`` still holds the whole analysis, verified
    by its manifest, and the subspaces; the eviction did happen (the cache holds no update analysis)."""
    from subnetviz.__main__ import main
    from tests.ckpt_fixtures import read_state_dict
    from tests.models import make_llama

    base, ft = make_llama(tmp_path / "base", seed=0), make_llama(tmp_path / "ft", seed=1)
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SUBNETVIZ_CACHE_GB", "1e-6")
    monkeypatch.setattr(cache, "EVICT_GRACE_S", 0.0)
    out = tmp_path / "o"
    assert main(["analyze", str(base), str(ft), "--subspaces", "2", "--out", str(out)]) == 0, capsys.readouterr().err
    updates = tmp_path / "home" / "cache" / "updates"
    assert [p for p in updates.iterdir() if not p.name.startswith(".")] == [], "nothing was evicted: no test"
    assert verify_manifest(out) is None  # every file of the analysis and the subspaces, whole
    a, b = read_state_dict(base), read_state_dict(ft)
    changed = sum(int((a[k] != b[k]).sum()) for k in a)  # (finite weights: unequal values are unequal bits)
    n = sum(t.numel() for t in a.values())
    assert json.loads((out / "summary.json").read_text())["sparsity"]["ft"] == pytest.approx(1 - changed / n)
    rows = pd.read_csv(out / "subspaces.csv")
    two_d = {k for k, t in a.items() if t.dim() == 2}
    assert len(rows) > 0 and set(rows["name"]) <= two_d
    assert isinstance(json.loads((out / "subspaces_notes.json").read_text()), list)


def test_analyze_a_read_failure_of_the_subspaces_is_not_said_as_a_write_failure(tmp_path, monkeypatch, capsys):
    """The subspaces now run while ``--out``'s temporary folder is open: a checkpoint that cannot be read then is
    still said as the read it is ("cannot complete FILE"), not as "--out: cannot write the result"."""
    from subnetviz.__main__ import main
    from subnetviz.analysis import subspaces
    from tests.models import make_llama

    base, ft = make_llama(tmp_path / "base", seed=0), make_llama(tmp_path / "ft", seed=1)
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(ft / "model.safetensors"))

    monkeypatch.setattr(subspaces, "cached_subspaces", unreadable)
    out = tmp_path / "o"
    assert main(["analyze", str(base), str(ft), "--subspaces", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot complete {ft / 'model.safetensors'}: Permission denied" in err, err
    assert "--out" not in err and not out.exists() and not [p for p in tmp_path.iterdir() if ".o." in p.name]


# --- 3. train --config killed: its TensorBoard events --------------------------------------------------------
def _run_at(out: Path, events: bool) -> tuple[int, str]:
    """A forked process that starts a run at ``out`` as ``train`` does (its lock and work folder, through
    ``_Partial``) and, with ``events``, writes an event file in its own events folder; it then waits to be
    killed. Returns its pid and the run's tag."""
    from subnetviz.training.run import _events_dir, _Partial

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        try:
            os.close(r)
            work = _Partial(out)
            work.acquire()
            if events:
                folder = _events_dir(out, work.tag)
                folder.mkdir(parents=True)
                (folder / "events.out.tfevents.1.host").write_bytes(b"curve")
            os.write(w, work.tag.encode() + b"\n")
            time.sleep(120)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as pipe:
        tag = pipe.readline().strip()
    assert tag, "the run did not start"
    return pid, tag


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_the_next_run_removes_a_killed_runs_events_only(tmp_path):
    """At one output_dir: run A is SIGKILLed after its events were written; run B lives; an earlier finished run's
    events and a user's file sit in ``<output_dir>.tensorboard``. The next run is refused beside B, and has
    removed A's events only; once B is killed too, the run after it removes B's and starts."""
    from subnetviz.errors import JobError
    from subnetviz.training.run import _Partial
    from subnetviz.training.trainers import tensorboard_dir

    out = tmp_path / "w" / "out"
    board = tensorboard_dir(out)
    finished = board / "111-0123abcd"  # a run that published its model: no work folder, no lock
    finished.mkdir(parents=True)
    (finished / "events.out.tfevents.0.host").write_bytes(b"kept")
    (board / "notes.txt").write_text("a user's")
    dead, dead_tag = _run_at(out, events=True)
    _kill(dead)
    assert (board / dead_tag).is_dir(), "the killed run left no events: no test"
    live, live_tag = _run_at(out, events=True)
    try:
        refused = _Partial(out)
        with pytest.raises(JobError, match="another training run"):
            refused.acquire()
        refused.release()  # (as train does when its run fails)
        assert sorted(p.name for p in board.iterdir()) == sorted(["111-0123abcd", "notes.txt", live_tag])
        assert (board / live_tag / "events.out.tfevents.1.host").read_bytes() == b"curve"
    finally:
        _kill(live)
    run = _Partial(out)
    run.acquire()
    try:
        assert sorted(p.name for p in board.iterdir()) == ["111-0123abcd", "notes.txt"]
        assert (finished / "events.out.tfevents.0.host").read_bytes() == b"kept"
        assert sorted(p.name for p in out.parent.iterdir()) == sorted(
            [board.name, run.path.name, run.lock_path.name]
        )  # the killed runs' work folders and locks went with their events
    finally:
        run.remove()
