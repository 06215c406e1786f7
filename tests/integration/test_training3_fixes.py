"""Training review 3 fixes: the device a run trains on, and FSDP2 GRPO with a KL term.

- ``SUBNETVIZ_DEVICE`` (what device ``auto`` stands for, :func:`subnetviz.config.resolve_device`) decides a
  training run's device too: ``cpu`` on a machine with a GPU trains on the CPU (the trainer arguments, the
  FSDP2 / ZeRO process backend and the launch environment all say cpu), a value that names no device is refused
  at submit and by ``train --config`` in one line, and the device trained on is recorded in the run's summary.
  torch is told it sees a GPU (``torch.cuda.is_available`` patched) so these run on a CPU machine.
- GRPO with ``beta > 0`` under FSDP2 (TRL 1.x's GRPOTrainer takes no ``ref_model``): tests/integration/test_sharded.py's
  2-process GRPO run trains with a KL term (the multi-process tests run together, on one worker).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from subnetviz.errors import ConfigError
from subnetviz.jobs.kinds import validate_job_config
from subnetviz.jobs.runner import JobRunner
from subnetviz.training import sharded
from subnetviz.training.config import TrainConfig
from subnetviz.training.trainers import trainer_args
from tests.training_fixtures import training_inputs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return training_inputs(tmp_path_factory.mktemp("training3"), mask_seed=5)


def _config(tiny, out: Path, algorithm: str = "sft", **kw) -> dict:
    return {
        "algorithm": algorithm,
        "base": str(tiny["base"]),
        "data": str(tiny["data"][algorithm]),
        "output_dir": str(out),
        "mask": str(tiny["mask"]),
        "steps": 1,
        "learning_rate": 1e-2,
        "batch_size": 4,
        **kw,
    }


def _env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "SUBNETVIZ_DEVICE"):
        env.pop(k, None)
    env.update(extra)
    return env


@pytest.fixture
def gpu_seen(monkeypatch):
    """torch says a CUDA GPU is there (nothing is run on it: each test checks what would be chosen)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


# --- the device -------------------------------------------------------------------------------------------------


def test_subnetviz_device_cpu_trains_on_the_cpu_though_a_gpu_is_there(tiny, tmp_path, monkeypatch, gpu_seen):
    cfg = TrainConfig.from_dict(_config(tiny, tmp_path / "out"))
    monkeypatch.delenv("SUBNETVIZ_DEVICE", raising=False)
    assert trainer_args(cfg, tmp_path)["use_cpu"] is False  # auto, with a GPU: the GPU
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "cpu")
    assert trainer_args(cfg, tmp_path)["use_cpu"] is True
    # the processes of a multi-process run: gloo and CPU meshes, DeepSpeed's CPU accelerator
    assert sharded.process_device() == "cpu"
    monkeypatch.delenv("SUBNETVIZ_DEVICE")
    assert sharded.process_device() == "cuda"


def test_zero_launch_takes_the_cpu_accelerator_when_subnetviz_device_says_cpu(tmp_path, monkeypatch, gpu_seen):
    seen = {}

    class Launcher:  # the launcher's environment, and nothing started
        def __init__(self, cmd, env, **kw):
            seen.update(env)

        def wait(self):
            return 0

    monkeypatch.setattr(sharded.subprocess, "Popen", Launcher)
    monkeypatch.setattr(sharded, "zero_available", lambda: None)
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "cpu")
    assert sharded.launch("zero2", 2, tmp_path / "c.json", tmp_path / "a") == 0
    assert seen.get("DS_ACCELERATOR") == "cpu"
    seen.clear()
    monkeypatch.delenv("SUBNETVIZ_DEVICE")
    assert sharded.launch("zero2", 2, tmp_path / "c.json", tmp_path / "b") == 0
    assert "DS_ACCELERATOR" not in seen  # auto with a GPU: DeepSpeed's CUDA accelerator


def test_zero_on_the_cpu_accelerator_skips_deepspeeds_shared_memory_op_though_a_gpu_is_there(monkeypatch, gpu_seen):
    """A ZeRO process the launch put on the CPU (SUBNETVIZ_DEVICE=cpu on a GPU machine) does not JIT-compile
    DeepSpeed's shared-memory op (minutes, or a failure without a compiler); one on the GPU leaves it alone."""
    pytest.importorskip("deepspeed")
    import deepspeed.ops

    from subnetviz.training import zero

    table = dict(deepspeed.ops.__compatible_ops__)
    monkeypatch.setattr(deepspeed.ops, "__compatible_ops__", table)
    table.pop(zero._SHM_OP, None)
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    zero.prepare_cpu()
    assert zero._SHM_OP not in table  # on the GPU: untouched
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    zero.prepare_cpu()
    assert table[zero._SHM_OP] is False


@pytest.mark.parametrize("value", ["gpu", "cuda:7", "tpu"])
def test_a_subnetviz_device_that_names_no_device_is_refused_at_submit(tiny, tmp_path, monkeypatch, value):
    monkeypatch.setenv("SUBNETVIZ_DEVICE", value)
    config = {"kind": "train", **_config(tiny, tmp_path / "out")}
    with pytest.raises(ConfigError) as err:
        validate_job_config(config)  # what Runner.submit calls before anything is queued
    msg = str(err.value)
    assert "\n" not in msg and f"SUBNETVIZ_DEVICE={value!r}" in msg
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "cpu")
    validate_job_config(config)  # a device that is there passes


def test_train_cli_refuses_a_bad_subnetviz_device_and_records_the_device_it_trained_on(tiny, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(_config(tiny, tmp_path / "out")))
    cmd = [sys.executable, "-m", "subnetviz", "train", "--config", str(cfg)]
    bad = subprocess.run(cmd, cwd=ROOT, env=_env(SUBNETVIZ_DEVICE="gpu"), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2, bad.stderr[-2000:]
    lines = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "SUBNETVIZ_DEVICE='gpu'" in lines[0] and "Traceback" not in bad.stderr
    assert not (tmp_path / "out").exists()
    ok = subprocess.run(cmd, cwd=ROOT, env=_env(SUBNETVIZ_DEVICE="cpu"), capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "train_summary.json").read_text())["device"] == "cpu"


def test_a_train_job_refused_at_submit_or_run_by_its_worker_on_the_device_subnetviz_device_names(
    tiny, tmp_path, monkeypatch
):
    """The Training page's path: JobRunner.submit validates in the page's process, the worker it starts (with that
    process's environment) trains and records the device."""
    runner = JobRunner(tmp_path / "runs", max_concurrent=1)
    config = {"kind": "train", **_config(tiny, tmp_path / "unused")}
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "gpu")
    with pytest.raises(ConfigError, match="SUBNETVIZ_DEVICE='gpu'"):
        runner.submit(config)
    assert runner.registry.rows() == [] and sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()) == []
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "cpu")
    run_id = runner.submit(config)
    deadline = time.time() + 240
    while runner.get(run_id).status in ("queued", "running"):
        assert time.time() < deadline, "the train job did not end in time"
        time.sleep(0.2)
        runner.poll()
    rec = runner.get(run_id)
    log = (Path(rec.run_dir) / "log.txt").read_text()
    assert rec.status == "succeeded", log[-3000:]
    assert json.loads((Path(rec.run_dir) / "outputs" / "summary.json").read_text())["device"] == "cpu"
    assert "process(es), on cpu)" in log
