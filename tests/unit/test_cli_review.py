"""Fixes of the command line / jobs review (/tmp/review/cli_jobs/REPORT.md), in one process, in seconds:

- SIGTERM or Ctrl-C on ``train --run-dir``: one line, exit 143 / 130, the run recorded as cancelled, no
  traceback; SIGTERM on ``train --config``: one line and 143, as Ctrl-C gives 130 (defects 1 and 2);
- a mask that does not fit, in a 2-process config: refused before any process is launched, in one line, exit 2
  (defect 3);
- ``report`` and ``mask import`` never replace a file that appears at their output while they work (defect 4);
- FSDP2 metrics combined over the processes as a DDP run's trainer combines them (defect 5, with planted values
  in a real 2-process gloo group);
- a queued job runs under the read policy it was submitted under, whoever starts it (defect 6);
- a trained model's weights get the permissions of the other files of its folder (defect 7).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest
import torch

from subnetviz.cli import build_parser, main
from tests.models import make_tiny_llama
from tests.training_fixtures import write_addition_data, write_half_mask, write_sft_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_review")
    base = make_tiny_llama(root / "base")
    data = write_addition_data(root / "data", n=16)
    return {"root": root, "base": base, "data": data, "mask": write_half_mask(root / "half.safetensors", base)}


def _config(tiny, tmp_path: Path, **kw) -> Path:
    return write_sft_config(tiny, tmp_path, **{"steps": 2, "batch_size": 4, **kw})


def _sigterm_self(*args, **kwargs):
    """A run that receives SIGTERM while it trains (as ``kill PID`` or a batch system sends it)."""
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)
    raise AssertionError("SIGTERM did not stop the run")


# --- defects 1 and 2: SIGTERM / Ctrl-C on `train` --------------------------------------------------------------


@pytest.mark.usefixtures("terminal_sigint")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_run_dir_is_one_line_and_recorded_as_cancelled(tiny, tmp_path, monkeypatch, capsys, sig):
    """Ctrl-C or SIGTERM on ``train --run-dir`` printed a 30-line traceback, exited 1 and recorded the run as
    ``failed: KeyboardInterrupt: ``."""
    import subnetviz.training.run as run

    def interrupted(config, ctx):
        ctx.progress(1, 2, loss=1.0)
        (ctx.out_dir / "model").mkdir()  # a half-written model: it must go
        os.kill(os.getpid(), sig)
        time.sleep(10)

    monkeypatch.setattr(run, "run_job", interrupted)
    rd = tmp_path / "run"
    code = main(["train", "--config", str(_config(tiny, tmp_path)), "--run-dir", str(rd)])
    out, err = capsys.readouterr()
    assert code == 128 + sig
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"interrupted ({sig.name})") and str(rd) in lines[0]
    status = json.loads((rd / "status.json").read_text())
    assert status["state"] == "cancelled" and status["error"] == f"interrupted ({sig.name}) before it finished"
    assert not (rd / "outputs.tmp").exists() and not (rd / "outputs").exists()


def test_sigterm_on_a_foreground_run_is_one_line_and_143(tiny, tmp_path, monkeypatch, capsys):
    """Without ``--run-dir`` SIGTERM killed the CLI at once (Python's default): no cleanup, no line. It now ends the
    run as Ctrl-C does, with the shell's status for SIGTERM."""
    import subnetviz.training.run as run

    monkeypatch.setattr(run, "train", _sigterm_self)

    def unhandled(signum, frame):  # (Python's default would end this test process itself)
        raise RuntimeError("the run left SIGTERM to the handler it found")

    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        code = main(["train", "--config", str(_config(tiny, tmp_path))])
        assert signal.getsignal(signal.SIGTERM) is unhandled  # the run's handler is the run's only
    finally:
        signal.signal(signal.SIGTERM, before)
    out, err = capsys.readouterr()
    assert code == 143 and err.strip() == "interrupted: nothing was written." and "Traceback" not in out + err


def test_an_interrupted_launch_stops_its_processes(tmp_path, monkeypatch):
    """``sharded.launch`` interrupted (Ctrl-C, or SIGTERM raised as KeyboardInterrupt) stops the launcher and every
    process carrying its mark, also one that left the launcher's session (as torch elastic's ranks do), before
    it re-raises. Here the 'launcher' is a shell that starts such a child and waits."""
    import psutil

    from subnetviz.training import sharded

    pids = tmp_path / "pids"
    script = f"setsid sleep 300 & echo $! > {pids}; wait"
    real_popen = sharded.subprocess.Popen

    class Launcher(real_popen):
        interrupted = False

        def wait(self, timeout=None):
            if not Launcher.interrupted:  # the first wait: Ctrl-C once the child runs
                Launcher.interrupted = True
                deadline = time.time() + 10
                while not pids.exists() or not pids.read_text().strip():
                    assert time.time() < deadline
                    time.sleep(0.05)
                raise KeyboardInterrupt
            return super().wait(timeout)

    monkeypatch.setattr(sharded.subprocess, "Popen", lambda cmd, **kw: Launcher(["sh", "-c", script], **kw))
    monkeypatch.setattr(sharded, "STOP_GRACE_S", 1.0)
    t0 = time.time()
    with pytest.raises(KeyboardInterrupt):
        sharded.launch("ddp", 2, tmp_path / "c.json", tmp_path / "launch")
    assert time.time() - t0 < 15
    monkeypatch.undo()
    child = int(pids.read_text())
    deadline = time.time() + 10
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.time() < deadline, "the launch's child still runs"
        time.sleep(0.1)


# --- defect 3: a mask that does not fit, in a multi-process config -----------------------------------------------


def test_a_mask_that_does_not_fit_a_launched_run_is_one_line(tiny, tmp_path, monkeypatch, capsys):
    """Each rank found it after loading the model; the launch then ended in torch elastic's traceback and 'see the
    log' (45 lines). Now nothing is launched."""
    from subnetviz.masks import MaskSet, save_mask_set
    from subnetviz.training import sharded

    with open(tiny["base"] / "config.json") as fh:
        hidden = json.load(fh)["hidden_size"]
    wrong = tmp_path / "wrong.safetensors"  # the embedding's mask one row too long
    save_mask_set(wrong, MaskSet({"model.embed_tokens.weight": torch.ones(99, hidden, dtype=torch.bool)}, {}))
    monkeypatch.setattr(sharded, "launch", lambda *a, **k: pytest.fail("launched with a mask that does not fit"))
    cfg = _config(tiny, tmp_path, mask=str(wrong), strategy="fsdp2", num_processes=2)
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: mask {wrong}") and "model.embed_tokens.weight" in err[0]
    assert f"(99, {hidden})" in err[0] and "Traceback" not in err[0]


def test_a_failed_launch_without_a_run_folder_names_no_log(tiny, tmp_path, monkeypatch):
    from subnetviz.errors import JobError
    from subnetviz.training import run, sharded
    from subnetviz.training.config import TrainConfig

    monkeypatch.setattr(sharded, "launch", lambda *a, **k: 1)
    cfg = TrainConfig.from_file(_config(tiny, tmp_path, strategy="ddp", num_processes=2))
    with pytest.raises(JobError) as exc:
        run.launch_and_train(cfg, tmp_path / "launch")
    assert "see their output above" in str(exc.value) and "log" not in str(exc.value)


# --- defect 4: report / mask import never replace a file that appeared meanwhile ----------------------------------


def _report_that_meanwhile(monkeypatch, out: Path, appears: str | None):
    """``report`` whose page build takes a moment during which ``appears`` is written at ``out``."""
    import subnetviz.report.dashboard as dash

    def build(analysis_dir, path):
        if appears is not None:
            out.write_text(appears)
        Path(path).write_text("<!doctype html>the page")
        return Path(path)

    monkeypatch.setattr(dash, "analysis_report", build)


def test_report_never_replaces_a_file_written_meanwhile(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.html"
    _report_that_meanwhile(monkeypatch, out, "the user's own file")
    (tmp_path / "an").mkdir()
    assert main(["report", str(tmp_path / "an"), "--out", str(out)]) == 2
    io = capsys.readouterr()
    assert "wrote" not in io.out and io.err.count("\n") == 1 and "another file was written there" in io.err
    assert out.read_text() == "the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["an", "r.html"]  # no temporary file left


def test_report_writes_a_new_file_and_overwrite_still_replaces(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.html"
    (tmp_path / "an").mkdir()
    _report_that_meanwhile(monkeypatch, out, None)
    assert main(["report", str(tmp_path / "an"), "--out", str(out)]) == 0
    assert out.read_text() == "<!doctype html>the page" and "wrote" in capsys.readouterr().out
    out.write_text("older")
    assert main(["report", str(tmp_path / "an"), "--out", str(out), "--overwrite"]) == 0
    assert out.read_text() == "<!doctype html>the page"
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()


def test_two_reports_to_one_name_do_not_both_say_wrote(tmp_path, monkeypatch, capsys):
    """Two runs started together without --overwrite: the second finishes while the first builds."""
    import subnetviz.report.dashboard as dash

    out = tmp_path / "two.html"
    (tmp_path / "an").mkdir()
    depth = []

    def build(analysis_dir, path):
        depth.append(1)
        if len(depth) == 1:  # the first run's build: meanwhile, the second run starts and ends
            assert main(["report", str(tmp_path / "an"), "--out", str(out)]) == 0
        Path(path).write_text(f"page of run {len(depth)}")
        return Path(path)

    monkeypatch.setattr(dash, "analysis_report", build)
    assert main(["report", str(tmp_path / "an"), "--out", str(out)]) == 2
    assert capsys.readouterr().out.count("wrote") == 1 and out.read_text() == "page of run 2"


def test_report_without_hard_links_still_refuses_an_existing_file(tmp_path, monkeypatch, capsys):
    """A file system without hard links (EPERM): the file is created exclusively (O_EXCL) and copied."""
    import errno

    def no_links(*a, **k):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "r.html"
    (tmp_path / "an").mkdir()
    _report_that_meanwhile(monkeypatch, out, None)
    assert main(["report", str(tmp_path / "an"), "--out", str(out)]) == 0
    assert out.read_text() == "<!doctype html>the page"
    out.unlink()
    _report_that_meanwhile(monkeypatch, out, "mine")
    assert main(["report", str(tmp_path / "an"), "--out", str(out)]) == 2
    assert out.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["an", "r.html"]
    capsys.readouterr()


def test_mask_import_never_replaces_a_file_written_meanwhile(tiny, tmp_path, monkeypatch, capsys):
    import subnetviz.masks as masks

    dst = tmp_path / "m.safetensors"
    real = masks.import_mask

    def slow_import(src):
        ms = real(src)
        dst.write_bytes(b"someone else's mask")
        return ms

    monkeypatch.setattr(masks, "import_mask", slow_import)
    assert main(["mask", "import", str(tiny["mask"]), str(dst)]) == 2
    io = capsys.readouterr()
    assert "wrote" not in io.out and io.err.count("\n") == 1 and "another file was written there" in io.err
    assert dst.read_bytes() == b"someone else's mask"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    monkeypatch.setattr(masks, "import_mask", real)
    assert main(["mask", "import", str(tiny["mask"]), str(dst), "--overwrite"]) == 0
    assert masks.load_mask_set(dst).count == masks.load_mask_set(tiny["mask"]).count


# --- defect 5: FSDP2 metrics combined over the processes --------------------------------------------------------


def _reduce_in_rank(rank: int, port: int, planted: list[dict], results) -> None:
    import torch.distributed as dist

    from subnetviz.training import sharded

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=len(planted))
    try:
        results.put((rank, sharded.reduce_metrics(planted[rank])))
    finally:
        dist.destroy_process_group()


def test_fsdp2_metrics_are_combined_over_the_processes_as_ddp_logs_them():
    """Each FSDP2 process's trainer logs only its own shard (rank 0's went to metrics.jsonl, TensorBoard and the
    summary). Planted per-process values in a 2-process gloo group; the expected numbers by hand: DDP's trainer
    logs the mean loss over processes, TRL the token count of the whole batch, and the extremes of all."""
    import torch.multiprocessing as mp

    from subnetviz.training.sharded import _free_port

    planted = [
        {"loss": 2.0, "num_tokens": 216.0, "mean_token_accuracy": 0.25, "grad_norm": 1.5, "learning_rate": 0.01},
        {"loss": 3.0, "num_tokens": 200.0, "mean_token_accuracy": 0.75, "grad_norm": 1.5, "learning_rate": 0.01},
    ]
    planted[0]["completions/max_length"], planted[1]["completions/max_length"] = 3.0, 5.0
    planted[0]["clip_ratio/low_min"], planted[1]["clip_ratio/low_min"] = 0.5, 0.25
    expected = {
        "loss": 2.5,
        "num_tokens": 416.0,
        "mean_token_accuracy": 0.5,
        "grad_norm": 1.5,
        "learning_rate": 0.01,
        "completions/max_length": 5.0,
        "clip_ratio/low_min": 0.25,
    }
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_reduce_in_rank, args=(r, port, planted, results)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert got[0] == pytest.approx(expected) and got[1] == pytest.approx(expected)


def test_the_progress_callback_writes_the_combined_metrics_back_first():
    """The combined values go into the logs every later callback reads (TensorBoard, the printer), and the
    summary's last metrics and the NaN count use them."""
    from transformers import TrainerControl, TrainerState

    from subnetviz.training.trainers import ProgressCallback

    cb = ProgressCallback(reduce=lambda m: {**m, "loss": float("nan"), "num_tokens": m["num_tokens"] * 2})
    logs = {"loss": 1.0, "num_tokens": 10, "grad_norm": 0.5}
    cb.on_log(None, TrainerState(global_step=3), TrainerControl(), logs=logs)
    assert logs["num_tokens"] == 20.0 and cb.last["num_tokens"] == 20.0
    assert cb.nonfinite_steps == 1 and cb.first_nonfinite_step == 3


# --- defect 6: the read policy of a queued job -----------------------------------------------------------------

ENV_DUMP = (
    "import json, os, sys; keys = ('SUBNETVIZ_ENFORCE_ROOTS', 'SUBNETVIZ_ROOTS', 'SUBNETVIZ_DEVICE'); "
    "open(os.path.join(sys.argv[1], 'env.json'), 'w').write(json.dumps({k: os.environ.get(k) for k in keys}))"
)


def test_a_queued_job_runs_under_its_submitters_read_policy(tmp_path, monkeypatch, capsys):
    """Queued by the app (roots enforced, its roots), started by ``subnetviz runs`` in a shell without them: it ran
    with the shell's environment (no enforcement, the shell's roots). The device ``auto`` stands for travels too."""
    from subnetviz.jobs.registry import creation_time
    from subnetviz.jobs.runner import JobRunner

    home = tmp_path / "home"
    app_roots = tmp_path / "app_data"
    app_roots.mkdir()
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    monkeypatch.setenv("SUBNETVIZ_ALLOW_TEST_JOBS", "1")
    # "the app": one slot, taken by a running job (this very process, alive), and a job queued behind it
    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(app_roots))
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "cpu")
    app = JobRunner(home / "runs", max_concurrent=1, command=[sys.executable, "-c", ENV_DUMP])
    busy = app.submit({"kind": "python", "target": "tests.training_fixtures:sleep_job"})
    with app.registry.transaction() as con:
        app.registry.update(con, busy, status="running", pid=os.getpid(), pid_start=creation_time(os.getpid()))
    queued = app.submit({"kind": "python", "target": "tests.training_fixtures:sleep_job"})
    assert app.get(queued).status == "queued"
    # the app stops; its running job ends; the owner lists the runs from a shell with other settings
    with app.registry.transaction() as con:
        app.registry.update(con, busy, status="failed", ended=time.time())
    monkeypatch.delenv("SUBNETVIZ_ENFORCE_ROOTS")
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "cuda:3")
    assert main(["runs"]) == 0
    capsys.readouterr()
    env_file = Path(app.get(queued).run_dir) / "env.json"
    deadline = time.time() + 30
    while not env_file.is_file() or not env_file.read_text():
        assert time.time() < deadline, "the queued job did not start"
        time.sleep(0.1)
    env = json.loads(env_file.read_text())
    assert env["SUBNETVIZ_ENFORCE_ROOTS"] == "1"
    roots = env["SUBNETVIZ_ROOTS"].split(os.pathsep)
    assert str(app_roots.resolve()) in roots and str(tmp_path.resolve()) not in roots
    assert env["SUBNETVIZ_DEVICE"] == "cpu"


def test_runs_help_says_listing_starts_queued_runs():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    runs = sub.choices["runs"]
    assert "starts queued runs" in runs.format_help().replace("\n", " ").replace("  ", " ")


# --- defect 7: the weights' permissions ------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_saved_weights_get_the_permissions_of_their_siblings(tiny, tmp_path):
    """safetensors writes 0600 and save_pretrained kept it: a shared runs folder's or zoo's weights were unreadable
    to those who could read every other file of the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from subnetviz.training.trainers import save_bf16, save_like_base

    model = AutoModelForCausalLM.from_pretrained(tiny["base"])
    tok = AutoTokenizer.from_pretrained(tiny["base"])
    want = 0o666 & ~_umask()
    for folder, save in ((tmp_path / "bf16", save_bf16), (tmp_path / "like_base", save_like_base)):
        args = (tiny["base"],) if save is save_like_base else ()
        save(model, tok, folder, *args, extra={"train_config.json": {}})
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
        assert modes["model.safetensors"] == want == modes["config.json"] == modes["train_config.json"], modes


def test_the_zoo_base_gets_the_permissions_of_its_siblings(tiny, tmp_path):
    """The demo zoo's base is saved by the pretraining's own save_model, not the trainers': it stayed 0600."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from subnetviz.demo.pretrain import save_model

    model = AutoModelForCausalLM.from_pretrained(tiny["base"])
    save_model(model, AutoTokenizer.from_pretrained(tiny["base"]), tmp_path / "base")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "base").iterdir()}
    assert modes["model.safetensors"] == 0o666 & ~_umask() == modes["config.json"], modes
