"""The Ray job backend on a local head (127.0.0.1, 2 CPUs; the session's ``ray_head``, tests/conftest.py).

Jobs submitted with ``SUBNETVIZ_RAY_ADDRESS`` set get the local backend's registry rows, run
folders, logs, progress, cancel and recovery; a series fanned out over 2 Ray workers equals the
one-pass local series bit for bit. Skipped (with the reason) only where ray is not importable;
the test command installs it (requirements-ray.txt).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements-ray.txt)")

from subnetviz.jobs.fanout import merge_series, series_fanout  # noqa: E402
from subnetviz.jobs.ray_backend import RAY_ADDRESS_ENV, job_resources  # noqa: E402
from subnetviz.jobs.runner import JobRunner  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture
def ray_env(ray_head, monkeypatch):
    monkeypatch.setenv(RAY_ADDRESS_ENV, ray_head)
    monkeypatch.setenv("SUBNETVIZ_ALLOW_TEST_JOBS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return ray_head


def test_job_runs_on_ray_like_a_local_job(ray_env, tmp_path):
    runner = JobRunner(tmp_path / "runs")
    assert runner.ray_address == ray_env and "subnetviz.jobs.ray_backend" in runner.command
    run_id = runner.submit(
        {"kind": "python", "target": "tests.training_fixtures:sleep_job", "seconds": 0.5, "steps": 5}
    )
    rec = runner.wait(run_id, timeout=120)
    log = (Path(rec.run_dir) / "log.txt").read_text()
    assert rec.status == "succeeded", log
    assert (rec.outputs / "done.txt").read_text() == "ok"
    assert rec.step == 5 and rec.total == 5 and len(runner.metrics(run_id)) == 5
    assert "submitted to Ray" in log and "succeeded" in log
    status = json.loads((Path(rec.run_dir) / "status.json").read_text())
    assert status["state"] == "succeeded"


def test_a_jobs_fanout_follows_the_cluster_it_was_sent_to(ray_head, monkeypatch, tmp_path):
    """A job sees as SUBNETVIZ_RAY_ADDRESS the cluster its runner sends it to (the drivers grid fans
    out there), whatever the server's default: a visitor who chose "this server" gets a local job that
    fans out nowhere, one who chose a named cluster gets that cluster with no default set."""
    monkeypatch.setenv("SUBNETVIZ_ALLOW_TEST_JOBS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    job = {"kind": "python", "target": "tests.training_fixtures:sleep_job", "seconds": 0.1, "steps": 1}
    seen = {}
    for label, default, chosen in (("here", ray_head, ""), ("named", None, ray_head)):
        if default:
            monkeypatch.setenv(RAY_ADDRESS_ENV, default)
        else:
            monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
        runner = JobRunner(tmp_path / label, ray_address=chosen)
        rec = runner.wait(runner.submit(job), timeout=120)
        assert rec.status == "succeeded", (Path(rec.run_dir) / "log.txt").read_text()
        seen[label] = (rec.outputs / "cluster.txt").read_text()
    assert seen == {"here": "", "named": ray_head}


def test_failed_and_cancelled_jobs_on_ray(ray_env, tmp_path):
    runner = JobRunner(tmp_path / "runs")
    bad = runner.submit({"kind": "python", "target": "tests.training_fixtures:fail_job"})
    rec = runner.wait(bad, timeout=120)
    assert rec.status == "failed" and "planned failure" in rec.error
    assert not (Path(rec.run_dir) / "outputs.tmp").exists() and not rec.outputs.exists()

    long = runner.submit({"kind": "python", "target": "tests.training_fixtures:sleep_job", "seconds": 60, "steps": 600})
    deadline = time.time() + 60
    while (runner.get(long).step or 0) < 1:  # running on a Ray worker, reporting progress
        assert time.time() < deadline, (Path(runner.get(long).run_dir) / "log.txt").read_text()
        time.sleep(0.2)
        runner.poll()
    rec = runner.cancel(long)
    assert rec.status == "cancelled"
    _wait_gone(rec.pid)  # on a condition, not a fixed sleep: the proxy and its Ray task are gone
    assert not rec.outputs.exists()


def _wait_gone(pid: int, timeout: float = 30.0) -> None:
    import psutil

    deadline = time.time() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        assert time.time() < deadline, f"process {pid} still alive"
        time.sleep(0.05)


def test_killed_proxy_is_recovered_as_failed(ray_env, tmp_path):
    runner = JobRunner(tmp_path / "runs")
    run_id = runner.submit(
        {"kind": "python", "target": "tests.training_fixtures:sleep_job", "seconds": 60, "steps": 600}
    )
    deadline = time.time() + 60
    while (runner.get(run_id).step or 0) < 1:
        assert time.time() < deadline
        time.sleep(0.2)
        runner.poll()
    os.killpg(runner.get(run_id).pid, signal.SIGKILL)  # the server's machine "restarts"
    _wait_gone(runner.get(run_id).pid)
    rec = JobRunner(tmp_path / "runs").wait(run_id, timeout=30)  # a fresh runner recovers the folder
    assert rec.status == "failed" and "without a final status" in rec.error
    assert not (Path(rec.run_dir) / "outputs.tmp").exists()


def _planted_series(root: Path, n: int = 5) -> list[str]:
    """n bf16 checkpoints of a tiny model: each step changes a random 10 % of entries, some back."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    state = {f"layers.{i}.weight": torch.randn(24, 16, generator=gen).to(torch.bfloat16) for i in range(5)}
    state["embed.weight"] = torch.randn(40, 16, generator=gen).to(torch.bfloat16)
    first = {k: v.clone() for k, v in state.items()}
    paths = []
    for step in range(n):
        folder = root / f"step-{step}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
        paths.append(str(folder))
        for k, v in state.items():
            moved = torch.rand(v.shape, generator=gen) < 0.1
            back = torch.rand(v.shape, generator=gen) < 0.05  # gradients cancelling out: back to the first value
            state[k] = torch.where(moved, v + 0.5, torch.where(back, first[k], v))
    return paths


def test_series_fanout_equals_local_bit_for_bit(ray_head, tmp_path):
    from subnetviz.analysis.series import checkpoint_series

    paths = _planted_series(tmp_path)
    steps = [0, 10, 20, 30, 40]
    local = checkpoint_series(paths, steps)
    fanned = series_fanout(paths, steps, workers=2, address=ray_head)
    assert fanned.numel == local.numel
    for a, b in ((local.steps, fanned.steps), (local.split, fanned.split)):
        assert list(a.columns) == list(b.columns) and a.dtypes.equals(b.dtypes)
        for col in a.columns:
            if a[col].dtype.kind == "f":  # bit for bit, not approximately
                assert (a[col].to_numpy().view("int64") == b[col].to_numpy().view("int64")).all(), col
            else:
                assert list(a[col]) == list(b[col]), col
    assert local.steps["back_to_start"].iloc[-1] > 0  # the planted cancellations are counted


def test_merge_of_one_part_is_identity(tmp_path):
    from subnetviz.analysis.series import checkpoint_series

    paths = _planted_series(tmp_path, n=3)
    whole = checkpoint_series(paths)
    merged = merge_series([whole], [0, 1, 2])
    assert merged.steps.equals(whole.steps) and merged.split.equals(whole.split)


def test_job_resources():
    assert job_resources({"kind": "bigram_mask"}) == {"num_cpus": 1, "num_gpus": 0}
    assert job_resources({"kind": "train", "strategy": "fsdp2", "num_processes": 2}) == {"num_cpus": 2, "num_gpus": 0}
    assert job_resources({"kind": "train", "strategy": "ddp", "num_processes": 4, "num_gpus": 4})["num_cpus"] == 1


def test_local_backend_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    runner = JobRunner(tmp_path / "runs")
    assert runner.ray_address is None and runner.command[-1] == "job"


def _same_frame(a, b) -> None:
    """Bit for bit: float columns on their int64 view, everything else by value (in order)."""
    assert list(a.columns) == list(b.columns) and a.dtypes.equals(b.dtypes) and len(a) == len(b)
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if x.dtype.kind == "f":
            assert (x.view("int64") == y.view("int64")).all(), col
        else:
            assert [repr(v) for v in x] == [repr(v) for v in y], col


def test_overlap_fanout_equals_local_bit_for_bit(ray_head, tmp_path):
    """N-model overlap (base = step 0, 4 finetunes), one Ray task per (base, finetune) pair, merged."""
    from subnetviz.analysis.updates import analyze_updates
    from subnetviz.jobs.fanout import updates_fanout

    paths = _planted_series(tmp_path)
    labels = ["s1", "s2", "s3", "s4"]
    local = analyze_updates(paths[0], paths[1:], labels=labels, device="cpu")
    reports, overlap = updates_fanout(paths[0], paths[1:], labels, address=ray_head)
    assert overlap.labels == local.overlap.labels == tuple(labels)
    assert list(overlap.region_counts) == list(local.overlap.region_counts)  # same groups, same order
    for g, counts in local.overlap.region_counts.items():
        assert counts.dtype == overlap.region_counts[g].dtype and (counts == overlap.region_counts[g]).all(), g
    for name in ("sizes", "pairwise", "regions", "consensus", "by_group"):
        _same_frame(getattr(local.overlap, name), getattr(overlap, name))
    for mine, theirs in zip(reports, local.reports, strict=True):
        _same_frame(mine.tensors, theirs.tensors)
        assert list(mine.masks) == list(theirs.masks)
        assert all((mine.masks[n] == theirs.masks[n]).all() for n in mine.masks)
    # the planted truth, independently: the last step's changes against step 0, counted with NumPy
    from safetensors.torch import load_file

    def raw(p):
        return {k: v.view(torch.int16).numpy() for k, v in load_file(f"{p}/model.safetensors").items()}

    first, last = raw(paths[0]), raw(paths[-1])
    changed = sum(int((first[k] != last[k]).sum()) for k in first)
    assert overlap.sizes.set_index("label").loc["s4", "count"] == changed > 0
    # the 2**4 region counts add up to every parameter, each in exactly one region
    assert overlap.numel == sum(v.size for v in first.values())


@pytest.mark.slow
def test_drivers_grid_fanout_equals_local(ray_head, micro_zoo, tmp_path):
    """The micro grid's data axis (SFT on the policy's own samples vs on gold answers): each run trained
    and measured in a Ray task equals the local run (every column but the train_seconds wall clock,
    floats bit for bit)."""
    from subnetviz.experiments.drivers import COLUMNS, run_drivers

    torch.set_num_threads(1)  # the tasks train with the driver's thread count
    local = run_drivers(micro_zoo.root, "micro", factors=["data"], workdir=tmp_path / "local")
    fanned = run_drivers(micro_zoo.root, "micro", factors=["data"], workdir=tmp_path / "ray", address=ray_head)
    assert list(local.columns) == COLUMNS and len(local) == 4  # (on-policy, gold) × (bf16, fp32)
    cols = [c for c in COLUMNS if c != "train_seconds"]
    _same_frame(local[cols], fanned[cols])
    pairs = local.pivot_table(index="value", columns="precision", values="sparsity")
    assert (pairs["fp32"] <= pairs["bf16"]).all() and (pairs["fp32"] < 1).all()  # the runs did train


def test_head_and_driver_on_loopback_only(ray_head):
    """The test head advertises 127.0.0.1, never the machine's IP (Ray swaps a loopback
    --node-ip-address for it unless told not to), and this driver joins it there."""
    from subnetviz.jobs.ray_backend import connect

    ray = connect(ray_head)
    assert [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]] == ["127.0.0.1"]
    assert ray._private.worker.global_worker.node_ip_address == "127.0.0.1"


def test_ray_map_carries_the_read_roots_for_the_call_only(ray_head, monkeypatch):
    """A fanned-out task reads under the driver's roots (SUBNETVIZ_ENFORCE_ROOTS as the driver has
    it), and the worker process, reused by later tasks, does not keep the setting."""
    from subnetviz import config
    from subnetviz.jobs.fanout import ray_map

    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    assert ray_map(config.enforce_roots, [(), ()], address=ray_head) == [True, True]
    monkeypatch.delenv("SUBNETVIZ_ENFORCE_ROOTS")
    assert ray_map(config.enforce_roots, [(), (), ()], address=ray_head) == [False, False, False]
