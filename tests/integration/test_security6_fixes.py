"""Security review 6, finding 2: one training job started as many processes as it asked for (256 from the Training
form, 1024 through a job config) with no look at the machine's CPUs, GPUs or memory. Now, on the local backend, a
run of more processes than this machine runs at once (one CPU core each on the CPU, one GPU each on CUDA) is refused
at submit, in one line, as by the command line; where a job may go to a Ray cluster the check is made where its
processes start; and before they start, the memory they need (each rank's model in float32 from the base's headers,
its gradients and optimizer states, and ~660 MiB of libraries) is held against the memory available. A run within
those bounds goes on to its launch as before."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from subnetviz.cli import main
from subnetviz.errors import ConfigError, JobError
from subnetviz.training import run, sharded
from subnetviz.training.config import TrainConfig, check_processes_fit, process_room
from tests.models import make_tiny_llama
from tests.training_fixtures import write_addition_data, write_half_mask, write_sft_config

pytestmark = pytest.mark.slow

CORES = len(os.sched_getaffinity(0))
ROOM = max(2, CORES)  # (a two-process CPU run is taken on one core too)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("security6")
    base = make_tiny_llama(root / "base")
    data = write_addition_data(root / "data", n=16)
    return {"base": base, "data": data, "mask": write_half_mask(root / "half.safetensors", base)}


@pytest.fixture(autouse=True)
def local_cpu(monkeypatch):
    """A server with no Ray cluster, training on the CPU; a launch that is reached fails at once, saying so."""
    for var in ("SUBNETVIZ_RAY_ADDRESS", "SUBNETVIZ_RAY_ADDRESSES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "cpu")
    monkeypatch.setattr(sharded, "launch", lambda *a, **k: 99)


def _job(tiny, **kw) -> dict:
    return {
        "kind": "train",
        "algorithm": "sft",
        "base": str(tiny["base"]),
        "data": str(tiny["data"]["sft"]),
        "steps": 2,
        "batch_size": 4,
        **kw,
    }


def _runner(tmp_path):
    """A runner whose worker does nothing: a run it was given by mistake is never trained (nor its processes
    started)."""
    from subnetviz.jobs.runner import JobRunner

    return JobRunner(tmp_path / "runs", max_concurrent=1, command=["true"], gpus=[])


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def _refused_for_cores(msg: str, n: int, strategy: str = "ddp") -> None:
    assert msg == (
        f"training config: num_processes {n} is more than this machine runs at once: a {strategy} run on the CPU "
        f"takes one CPU core per process, and it has {CORES}; ask for at most {ROOM}."
    )


def test_the_machine_s_room_is_its_cores_on_the_cpu():
    assert process_room("cpu") == (ROOM, "CPU core")  # the cores this process may run on (os.sched_getaffinity)


def test_a_one_core_machine_still_takes_a_two_process_cpu_run(monkeypatch):
    """The README's two-process CPU demo (scripts/accelerate_2proc.sh) on a one-core machine or a `taskset -c 0`
    slot: refused once the limit was the core count; two processes share the core (slower, they work)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.delenv("SUBNETVIZ_DEVICE", raising=False)
    assert process_room("cpu") == (2, "CPU core")
    check_processes_fit("ddp", 2)
    with pytest.raises(ConfigError, match="and it has 1; ask for at most 2"):
        check_processes_fit("ddp", 3)


# --- at submit, on the local backend ------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
@pytest.mark.parametrize("extra", [1, 256])
def test_more_processes_than_cores_are_refused_at_submit(tiny, tmp_path, strategy, extra):
    """The review's 256-process DDP job was queued; now submit refuses it, naming the count and the cores, and
    nothing is queued or made."""
    runner = _runner(tmp_path)
    n = ROOM + extra
    with pytest.raises(ConfigError) as exc:
        runner.submit(_job(tiny, strategy=strategy, num_processes=n))
    _refused_for_cores(_one_line(exc), n, strategy)
    assert runner.list_runs().empty and [p.name for p in (tmp_path / "runs").iterdir()] == ["registry.sqlite"]


def test_the_command_line_refuses_them_in_one_line(tiny, tmp_path, capsys):
    """``train --config`` (the processes start here) and ``train --run-dir`` (a job folder): exit 2, one line."""
    n = ROOM + 1
    cfg = write_sft_config(tiny, tmp_path, steps=2, batch_size=4, strategy="ddp", num_processes=n)
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: training config: num_processes {n} is more than"), err
    assert main(["train", "--config", str(cfg), "--run-dir", str(tmp_path / "rd")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"and it has {CORES}; ask for at most {ROOM}." in err[0], err
    assert not (tmp_path / "rd").exists()


def test_a_gpu_run_takes_one_visible_gpu_per_process(tiny, tmp_path, monkeypatch):
    """On CUDA each process trains on its own GPU: 2 processes where torch sees 1 GPU are refused at submit."""
    import torch

    from subnetviz.training import config as training_config

    runner = _runner(tmp_path)
    monkeypatch.setattr(training_config, "train_device", lambda: "cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError) as exc:
        runner.submit(_job(tiny, strategy="ddp", num_processes=2))
    assert _one_line(exc) == (
        "training config: num_processes 2 is more than this machine runs at once: a ddp run on CUDA takes one GPU "
        "per process, and it has 1; ask for at most 1 (or train on the CPU: SUBNETVIZ_DEVICE=cpu)."
    )
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # one GPU each: the config is accepted
    from subnetviz.jobs.kinds import validate_job_config

    validate_job_config(_job(tiny, strategy="ddp", num_processes=2))


def test_processes_within_the_machine_are_accepted_and_launched(tiny, tmp_path):
    """As many processes as cores (the DDP / FSDP2 tests' 2 on a 2-core machine): validation passes, and the run
    reaches its launch (here a stub that fails: the run's own error, not a refusal)."""
    from subnetviz.jobs.kinds import validate_job_config

    validate_job_config(_job(tiny, strategy="ddp", num_processes=ROOM))
    cfg = TrainConfig.from_file(write_sft_config(tiny, tmp_path, strategy="fsdp2", num_processes=ROOM))
    with pytest.raises(JobError, match="training processes failed"):
        run.launch_and_train(cfg, tmp_path / "launch")


# --- where the processes start (a job that may go to Ray) ----------------------------------------------------


def test_with_a_ray_cluster_the_processes_are_checked_where_they_start(tiny, tmp_path, monkeypatch):
    """A server that may send jobs to Ray: Ray declares the CPUs and places the job (not refused at submit for
    this server's cores); the launch, wherever it runs, refuses more processes than its machine has."""
    from subnetviz.jobs.kinds import validate_job_config

    monkeypatch.setenv("SUBNETVIZ_RAY_ADDRESS", "127.0.0.1:1")
    n = ROOM + 1
    validate_job_config(_job(tiny, strategy="ddp", num_processes=n))
    cfg = TrainConfig.from_file(write_sft_config(tiny, tmp_path, strategy="ddp", num_processes=n))
    monkeypatch.setattr(sharded, "launch", lambda *a, **k: pytest.fail("launched more processes than cores"))
    with pytest.raises(ConfigError) as exc:
        run.launch_and_train(cfg, tmp_path / "launch")
    _refused_for_cores(_one_line(exc), n)
    assert not (tmp_path / "launch").exists()


def test_a_local_run_on_a_server_that_also_offers_ray_is_checked_at_submit(tiny, tmp_path, monkeypatch):
    """A server offering both a Ray cluster and "this server": its local runner queued a run of more processes than
    this machine's cores (the validator cannot tell where a job goes), which then failed at its launch. The local
    runner now refuses it at submit; the Ray runner still leaves it to where its processes start."""
    from subnetviz.jobs.runner import JobRunner

    monkeypatch.setenv("SUBNETVIZ_RAY_ADDRESS", "127.0.0.1:1")
    n = ROOM + 1
    local = JobRunner(tmp_path / "runs", max_concurrent=1, command=["true"], gpus=[], ray_address="")
    with pytest.raises(ConfigError) as exc:
        local.submit(_job(tiny, strategy="ddp", num_processes=n))
    _refused_for_cores(_one_line(exc), n)
    assert local.list_runs().empty
    on_ray = JobRunner(tmp_path / "ray", max_concurrent=1, command=["true"], gpus=[], ray_address="127.0.0.1:1")
    on_ray.submit(_job(tiny, strategy="ddp", num_processes=n))
    assert len(on_ray.list_runs()) == 1


# --- the memory of the ranks, before the launch --------------------------------------------------------------


def test_the_ranks_memory_is_held_against_the_memory_available(tiny, tmp_path, monkeypatch):
    """Two DDP ranks of the tiny model need 2 x (660 MiB + 16 bytes a parameter); with 1 GiB available the launch is
    refused before it starts, in one line with both figures."""
    from subnetviz import config
    from subnetviz.checkpoints.sources import open_checkpoint

    ck = open_checkpoint(str(tiny["base"]))
    params = ck.num_params
    ck.close()
    per = (660 << 20) + 16 * params  # float32 weights + gradients + AdamW's two moments, and the libraries
    assert sharded.rank_host_bytes("ddp", 2, params, device="cpu", reference=False) == per
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 1 << 30)
    monkeypatch.setattr(config, "cgroup_headroom", lambda *a, **k: None)
    monkeypatch.setattr(sharded, "launch", lambda *a, **k: pytest.fail("launched past the memory available"))
    cfg = TrainConfig.from_file(write_sft_config(tiny, tmp_path, strategy="ddp", num_processes=2))
    with pytest.raises(ConfigError) as exc:
        run.launch_and_train(cfg, tmp_path / "launch")
    assert _one_line(exc) == (
        f"2 ddp training processes, about {config.gib(per)} each (the model, its gradients and optimizer states in "
        f"float32 and 660.0 MiB of libraries): the run needs about {config.gib(2 * per)} of memory; this machine "
        "has 1.00 GiB available (80% of it usable); refused before they start: ask for fewer processes, or use a "
        "machine with more memory."
    )
    assert not (tmp_path / "launch").exists()
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 64 << 30)  # enough: on to the launch
    monkeypatch.setattr(sharded, "launch", lambda *a, **k: 99)
    with pytest.raises(JobError, match="training processes failed"):
        run.launch_and_train(cfg, tmp_path / "launch")


def test_sharded_strategies_split_the_states_and_a_reference_copy_counts():
    p = 1_000_000
    floor = 660 << 20
    assert sharded.rank_host_bytes("fsdp2", 4, p, device="cpu", reference=False) == floor + 4 * p + 12 * p // 4
    assert sharded.rank_host_bytes("zero3", 3, p, device="cpu", reference=True) == floor + 8 * p + 4 * p
    assert sharded.rank_host_bytes("ddp", 8, p, device="cuda", reference=False) == floor + 4 * p  # states on GPU


def test_the_review_s_256_process_job_config_is_refused(tiny, tmp_path):
    """The registry's row of the review, ``"strategy": "ddp", "num_processes": 256``, as a job config file."""
    path = tmp_path / "job.json"
    path.write_text(json.dumps(_job(tiny, strategy="ddp", num_processes=256)))
    from subnetviz.jobs.kinds import validate_job_config

    with pytest.raises(ConfigError) as exc:
        validate_job_config(json.loads(Path(path).read_text()))
    _refused_for_cores(_one_line(exc), 256)
