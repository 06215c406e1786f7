"""A multi-process training job is given one GPU per process by the local runner.

Before: every job got one free GPU as its ``CUDA_VISIBLE_DEVICES``, so a two-process DDP run on a two-GPU server saw
one GPU and its launch refused it ("it has 1"), after it had been queued. Now such a run is given as many free GPUs
as it has processes (``"0,1"``, recorded in its row), waits first in, first out until they are free, never shares one
with another job, and is refused at submit when it asks for more than the runner hands out. No GPU here: the runner
is handed the ids a GPU server's would be, and each job's worker is a small script that writes down what it sees.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from subnetviz.errors import JobError
from subnetviz.jobs.registry import process_start
from subnetviz.jobs.runner import JobRunner
from subnetviz.jobs.scheduler import Launch, gpus_wanted, held_gpus
from subnetviz.training import config as training_config
from tests.models import make_tiny_llama
from tests.training_fixtures import write_addition_data

# writes the CUDA_VISIBLE_DEVICES it was started with, then holds its GPUs while RUN_DIR/../hold exists
SEES = (
    "import os, sys, time, pathlib; d = pathlib.Path(sys.argv[1]);"
    " (d / 'cvd').write_text(os.environ.get('CUDA_VISIBLE_DEVICES', '-'));"
    " [time.sleep(0.05) for _ in iter(lambda: (d.parent / 'hold').exists(), False)]"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpus")
    return {"base": make_tiny_llama(root / "base"), "data": write_addition_data(root / "data", n=16)}


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A four-GPU server as its runner sees it (torch counts 8 GPUs, the runner hands out 4); the jobs' workers
    killed at the end."""
    for var in ("SUBNETVIZ_RAY_ADDRESS", "SUBNETVIZ_RAY_ADDRESSES", "SUBNETVIZ_DEVICE", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(training_config, "train_device", lambda: "cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "hold").touch()
    runner = JobRunner(tmp_path / "runs", gpus=["0", "1", "2", "3"], command=[sys.executable, "-c", SEES])
    yield runner
    for rec in runner.registry.rows():
        if rec.pid and process_start(rec.pid) is not None:
            try:
                os.killpg(rec.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _job(tiny, **kw) -> dict:
    return {"kind": "train", "algorithm": "sft", "base": str(tiny["base"]), "data": str(tiny["data"]["sft"]), **kw}


def _seen(runner: JobRunner, run_id: str) -> str:
    cvd = Path(runner.registry.get(run_id).run_dir) / "cvd"
    deadline = time.time() + 30
    while not cvd.is_file() or not cvd.read_text():
        assert time.time() < deadline, "the job's worker never started"
        time.sleep(0.05)
    return cvd.read_text()


def _status(runner: JobRunner, run_id: str) -> str:
    return runner.registry.get(run_id).status


def test_how_many_gpus_a_job_takes():
    launch = Launch(["true"], 4, ["0", "1", "2", "3"], None, {})
    assert gpus_wanted(_job({"base": "b", "data": {"sft": "d"}}, strategy="ddp", num_processes=3), launch) == 3
    for single in ({"strategy": "single"}, {"strategy": "ddp", "num_processes": 1}):
        assert gpus_wanted(_job({"base": "b", "data": {"sft": "d"}}, **single), launch) == 1, single
    # The device a train run asks for is SUBNETVIZ_DEVICE, as submitted (a train config has no device key). On the
    # CPU a multi-process run takes no GPU of its own; a device naming one GPU is CUDA to its ranks, each on
    # cuda:LOCAL_RANK (sharded.process_device): one GPU per process, not the one named.
    two = _job({"base": "b", "data": {"sft": "d"}}, strategy="ddp", num_processes=2)
    for device, wanted in (("cpu", 1), ("cuda:1", 2), ("cuda", 2)):
        assert gpus_wanted(two, replace(launch, read_env={"SUBNETVIZ_DEVICE": device})) == wanted, device
    assert gpus_wanted({"kind": "behavior", "strategy": "ddp", "num_processes": 2}, launch) == 1
    assert held_gpus("2,3") == ["2", "3"] and held_gpus("1") == ["1"] and held_gpus(None) == []


def test_a_ddp_run_gets_one_gpu_per_process_and_waits_for_them_first_in_first_out(tiny, server):
    two = server.submit(_job(tiny, strategy="ddp", num_processes=2))
    assert _seen(server, two) == "0,1" and server.registry.get(two).gpu == "0,1"
    three = server.submit(_job(tiny, strategy="fsdp2", num_processes=3))  # two are free: it waits
    one = server.submit(_job(tiny))  # a one-GPU run behind it waits too (it never overtakes the head)
    server.poll()
    assert (_status(server, three), _status(server, one)) == ("queued", "queued")
    (Path(server.root) / "hold").unlink()  # the first ends: its GPUs are free
    deadline = time.time() + 30
    while _status(server, two) == "running":
        assert time.time() < deadline
        time.sleep(0.05)
        server.poll()
    (Path(server.root) / "hold").touch()
    server.poll()
    assert _seen(server, three) == "0,1,2" and _seen(server, one) == "3"
    held = [g for r in (three, one) for g in held_gpus(server.registry.get(r).gpu)]
    assert sorted(held) == ["0", "1", "2", "3"]  # no GPU given twice


def test_a_single_gpu_job_waits_while_multi_process_runs_hold_every_gpu(tiny, server):
    """Four jobs may run at once (one per GPU), but a 4-process run holds all four: the next waits, where it was
    started with no GPU of its own and saw them all."""
    four = server.submit(_job(tiny, strategy="ddp", num_processes=4))
    assert _seen(server, four) == "0,1,2,3"
    one = server.submit(_job(tiny))
    server.poll()
    assert _status(server, one) == "queued"


def test_more_processes_than_the_runner_hands_out_gpus_are_refused_at_submit(tiny, server):
    with pytest.raises(JobError) as exc:
        server.submit(_job(tiny, strategy="ddp", num_processes=5))
    assert str(exc.value) == (
        "a ddp run of 5 processes takes one GPU per process, and this server gives jobs 4 (GPUs 0, 1, 2, 3); ask for "
        "at most 4."
    )
    assert server.registry.rows() == []
