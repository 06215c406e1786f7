"""Fixes of the command line / jobs review (/tmp/review/cli_jobs/REPORT.md) that need a real 2-process launch
(FSDP2 / DDP over gloo on CPU, a tiny Llama; each run takes ~15 s, so every test here is slow):

- SIGTERM on ``train --config`` (and ``--run-dir``) of a launched run stops every rank: the command ended with
  status 143 while its ranks, left in sessions of their own, trained on and published ``output_dir`` (or wrote
  progress over the run's final status and a whole model into ``outputs.tmp``) after it had exited;
- an FSDP2 run logs its metrics over both processes, as the DDP run of the same config does (it logged rank 0's
  shard: half the token count), in metrics.jsonl, TensorBoard and train_summary.json alike.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.models import make_tiny_llama
from tests.training_fixtures import write_addition_data, write_half_mask, write_sft_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_review_launch")
    base = make_tiny_llama(root / "base")
    data = write_addition_data(root / "data", n=32)
    return {"base": base, "data": data, "mask": write_half_mask(root / "half.safetensors", base, seed=1)}


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path):
    """Whatever a failing test leaves running (orphaned ranks) is killed, not left training for minutes."""
    yield
    for p in _ranks_of(str(tmp_path)):
        try:
            p.kill()
        except psutil.Error:
            pass


def _config(tiny, tmp_path: Path, **kw) -> Path:
    fsdp2 = {"steps": 3, "learning_rate": 1e-2, "batch_size": 8, "weight_decay": 0.1, "strategy": "fsdp2"}
    return write_sft_config(tiny, tmp_path, **{**fsdp2, "num_processes": 2, **kw})


class Run:
    """``python -m subnetviz train ARGS`` started in ``folder`` (its launch folder too: TMPDIR), its output in files
    (a pipe would stay open as long as an orphaned rank holds it)."""

    def __init__(self, folder: Path, *args: str):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
            env.pop(k, None)
        env["TMPDIR"] = str(folder)
        self.out, self.err = folder / "stdout.txt", folder / "stderr.txt"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "subnetviz", "train", *args], cwd=ROOT, env=env, stdout=out, stderr=err
            )

    def wait(self, timeout: float) -> tuple[int, str, str]:
        code = self.proc.wait(timeout=timeout)
        return code, self.out.read_text(), self.err.read_text()

    def wait_for(self, pred, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while not pred():
            assert self.proc.poll() is None, self.err.read_text()[-3000:]
            assert time.time() < deadline, "the run never started training"
            time.sleep(0.2)


def _ranks_of(text: str) -> list[psutil.Process]:
    """The processes whose command line names ``text`` (the launch's config file)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(text in part for part in (p.info["cmdline"] or [])):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_sigterm_on_a_launched_run_stops_every_rank_and_publishes_nothing(tiny, tmp_path):
    cfg = _config(tiny, tmp_path, steps=5000)
    out = tmp_path / "out"
    run = Run(tmp_path, "--config", str(cfg))
    run.wait_for(lambda: any(p.name.endswith(".partial") for p in tmp_path.iterdir()))  # rank 0 is training
    time.sleep(1.0)
    run.proc.send_signal(signal.SIGTERM)
    code, stdout, stderr = run.wait(timeout=120)
    assert code == 143, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "interrupted: nothing was written." and "Traceback" not in stderr
    launch_dir = re.search(r"--config_file (\S+)/accelerate_config.yaml", stdout).group(1)
    assert not _ranks_of(launch_dir), "ranks outlived the command"
    time.sleep(5)  # (the orphaned ranks published output_dir a few seconds after the command had ended)
    assert not out.exists() and not Path(launch_dir).exists()
    assert not (tmp_path / "out.tensorboard").exists()  # the ranks stopped as on Ctrl-C: their events removed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.")]  # no work folder, no lock


def test_sigterm_on_a_launched_run_dir_leaves_a_final_cancelled_status(tiny, tmp_path):
    rd = tmp_path / "run"
    run = Run(tmp_path, "--config", str(_config(tiny, tmp_path, steps=5000)), "--run-dir", str(rd))
    run.wait_for(lambda: (rd / "metrics.jsonl").is_file())  # rank 0 logged a step
    run.proc.send_signal(signal.SIGTERM)
    code, _, stderr = run.wait(timeout=120)
    assert code == 143 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("interrupted (SIGTERM)")
    assert not _ranks_of(str(rd)), "ranks outlived the command"
    time.sleep(5)  # (rank 0 went on writing its progress over the final status, then saved a model)
    status = json.loads((rd / "status.json").read_text())
    assert status["state"] == "cancelled" and "SIGTERM" in status["error"]
    assert not (rd / "outputs.tmp").exists() and not (rd / "outputs").exists()


def _tensorboard(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(files[0].parent), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_fsdp2_logs_the_metrics_of_both_processes_as_ddp_does(tiny, tmp_path):
    """The same config under DDP (whose trainer gathers over the processes) and FSDP2: the same token count per
    step (the whole batch of both processes: it was rank 0's half), and under FSDP2 the run's three records
    (metrics.jsonl, TensorBoard, the summary) hold those numbers."""
    rows = {}
    for strategy in ("ddp", "fsdp2"):
        folder = tmp_path / strategy
        folder.mkdir()
        rd = folder / "run"
        code, _, stderr = Run(
            folder, "--config", str(_config(tiny, folder, strategy=strategy)), "--run-dir", str(rd)
        ).wait(300)
        assert code == 0, stderr[-3000:]
        rows[strategy] = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows[strategy]] == [1, 2, 3]
    ddp, fsdp2 = rows["ddp"], rows["fsdp2"]
    assert [r["num_tokens"] for r in fsdp2] == [r["num_tokens"] for r in ddp]
    assert [r["epoch"] for r in fsdp2] == [r["epoch"] for r in ddp]
    rd = tmp_path / "fsdp2" / "run"
    summary = json.loads((rd / "outputs" / "model" / "train_summary.json").read_text())
    last = fsdp2[-1]
    assert summary["metrics"]["num_tokens"] == last["num_tokens"]
    assert summary["metrics"]["loss"] == pytest.approx(last["loss"])
    board = _tensorboard(rd / "tensorboard")
    assert board["train/num_tokens"][3] == last["num_tokens"]
    assert board["train/loss"][3] == pytest.approx(last["loss"], rel=1e-6)
