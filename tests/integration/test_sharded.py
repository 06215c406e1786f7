"""Sharded masked training with 2 CPU processes (gloo) for SFT, DPO and GRPO: FSDP2, and DeepSpeed
ZeRO-2 / ZeRO-3 (DeepSpeed's CPU accelerator; the ZeRO tests need requirements-deepspeed.txt).

Each run goes through ``python -m subnetviz train --config`` (or a ``train`` job), which launches
the processes itself. The tests prove three things independently of the run's own summary:
FSDP2 was really active (DTensor parameters sharded over a 2-process mesh, local shards half the
model, and torch's own ``FSDP::pre_forward`` log lines), or ZeRO was (the DeepSpeed engine's stage,
its partitioned parameters and this rank's share of them, counted here from the base's shapes),
the processes trained together, and every entry outside the mask is bit-identical in the saved
bf16 model (read back here from the file) while entries inside moved (masked weight decay on).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from subnetviz.errors import ConfigError
from subnetviz.masks import load_mask_set
from subnetviz.training import sharded
from subnetviz.training.config import TrainConfig
from subnetviz.training.sharded import accelerate_config, zero_available, zero_partition
from tests.training_fixtures import training_inputs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return training_inputs(tmp_path_factory.mktemp("sharded"), mask_seed=3)


def _config(tiny, out: Path, algorithm: str, **kw) -> dict:
    cfg = {
        "algorithm": algorithm,
        "base": str(tiny["base"]),
        "data": str(tiny["data"][algorithm]),
        "output_dir": str(out),
        "mask": str(tiny["mask"]),
        "steps": 3,
        "learning_rate": 1e-2,
        "batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 1,
        "weight_decay": 0.1,
        "strategy": "fsdp2",
        "num_processes": 2,
    }
    return {**cfg, **kw}


def _env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        env.pop(k, None)
    return env


def _bit_changes(base: Path, out: Path, mask_file: Path) -> tuple[int, int]:
    masks = load_mask_set(mask_file).masks
    changed_in = changed_out = 0
    with safe_open(str(base / "model.safetensors"), "pt") as a, safe_open(str(out / "model.safetensors"), "pt") as b:
        for k in a.keys():
            d = a.get_tensor(k).view(torch.int16) != b.get_tensor(k).view(torch.int16)
            changed_in += int((d & masks[k]).sum())
            changed_out += int((d & ~masks[k]).sum())
    return changed_in, changed_out


def _check_fsdp2_run(tiny, out: Path) -> dict:
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["strategy"] == "fsdp2" and summary["num_processes"] == 2
    ev = summary["fsdp2"]
    assert ev["mesh_size"] == 2 and ev["dtensor_parameters"] == ev["sharded_parameters"] == ev["parameters"] > 0
    # rank 0 holds the first ceil(rows / 2) rows of every weight (FSDP2 shards dim 0), counted from the base
    with safe_open(str(tiny["base"] / "model.safetensors"), "pt") as f:
        shapes = [f.get_slice(k).get_shape() for k in f.keys()]
    assert ev["full_numel"] == sum(math.prod(s) for s in shapes)
    assert ev["local_numel"] == sum(math.ceil(s[0] / 2) * math.prod(s[1:]) for s in shapes)
    for check in (summary["mask_check"], summary["gathered_check"]):
        assert check["outside_mask_identical"] and check["changed_outside"] == 0 and check["changed_inside"] > 0
    changed_in, changed_out = _bit_changes(tiny["base"], out, tiny["mask"])  # independent of the summary
    assert changed_out == 0 and changed_in == summary["mask_check"]["changed_inside"]
    assert "distributed_type: MULTI_GPU" in (out / "accelerate_config.yaml").read_text()
    return summary


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["sft", "grpo"])
def test_fsdp2_two_processes_cli(tiny, tmp_path, algorithm):
    """GRPO with a KL term (``beta`` > 0): TRL 1.x's GRPOTrainer builds its reference itself and takes no
    ``ref_model``; the run passed one and failed with a TypeError before its first step (training review 3)."""
    out = tmp_path / "out"
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps(_config(tiny, out, algorithm, save_steps=[2], **({"beta": 0.5} if algorithm == "grpo" else {})))
    )
    proc = subprocess.run(
        [sys.executable, "-m", "subnetviz", "train", "--config", str(cfg)],
        cwd=ROOT,
        env=_env(TORCH_LOGS="+fsdp"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _check_fsdp2_run(tiny, out)
    assert "FSDP::pre_forward" in proc.stderr  # torch's own log: FSDP2 hooks ran the forward passes
    assert (out / "checkpoints" / "step-2" / "model.safetensors").is_file()  # gathered mid-run, all ranks
    if algorithm == "grpo":
        # The KL term was computed against a reference that stayed the base: after the first step moved the policy,
        # the last step's KL is above 0 (TRL logs "kl" only when beta > 0).
        assert summary["metrics"]["kl"] > 0
        assert "model_init_kwargs" not in proc.stderr  # (TRL's "ignored" warning: they load the reference)


@pytest.mark.slow
@pytest.mark.ray
def test_fsdp2_two_processes_job_on_ray(tiny, tmp_path, monkeypatch):
    """A training job sent to a Ray cluster (a local head, 2 CPUs) declares the CPUs its processes need
    and launches them there: FSDP2 over 2 processes, bit-identical outside the mask, as a local job."""
    pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements-ray.txt)")
    from subnetviz.jobs.ray_backend import local_head
    from subnetviz.jobs.runner import JobRunner

    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    cfg = {"kind": "train", **_config(tiny, tmp_path / "unused", "sft")}
    cfg.pop("output_dir")
    with local_head(num_cpus=2) as address:
        runner = JobRunner(tmp_path / "runs", ray_address=address)
        rec = runner.wait(runner.submit(cfg), timeout=500)
    log = (Path(rec.run_dir) / "log.txt").read_text()
    assert rec.status == "succeeded", log[-3000:]
    assert f"submitted to Ray at {address} with " + json.dumps({"num_cpus": 2, "num_gpus": 0}) in log
    assert "launching 2 processes (fsdp2)" in log
    _check_fsdp2_run(tiny, rec.outputs / "model")


@pytest.mark.slow
def test_fsdp2_two_processes_dpo_job(tiny, tmp_path, monkeypatch):
    from subnetviz.jobs.runner import JobRunner

    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    runner = JobRunner(tmp_path / "runs")
    cfg = {"kind": "train", **_config(tiny, tmp_path / "unused", "dpo")}
    cfg.pop("output_dir")
    run_id = runner.submit(cfg)
    rec = runner.wait(run_id, timeout=300)
    log = (Path(rec.run_dir) / "log.txt").read_text()
    assert rec.status == "succeeded", log[-3000:]
    assert (Path(rec.run_dir) / "accelerate_config.yaml").is_file()
    _check_fsdp2_run(tiny, rec.outputs / "model")
    assert rec.step == 3 and len(runner.metrics(run_id)) >= 3  # rank 0 reported each step into the run folder


def test_strategy_validation(tiny, tmp_path):
    good = _config(tiny, tmp_path / "o", "sft")
    TrainConfig.from_dict(good).validate()
    TrainConfig.from_dict({**good, "strategy": "single", "num_processes": 1}).validate()
    for bad, words in (
        ({"strategy": "fsdp"}, "strategy 'fsdp' is unknown"),
        ({"num_processes": 0}, "num_processes must be an integer >= 1"),
        ({"num_processes": 2.0}, "num_processes must be an integer >= 1"),
        ({"strategy": "single", "num_processes": 2}, "strategy 'single' runs one process"),
    ):
        with pytest.raises(ConfigError, match=words):
            TrainConfig.from_dict({**good, **bad}).validate()


def test_accelerate_config_per_strategy():
    ddp = accelerate_config("ddp", 2, port=12345)
    assert "distributed_type: MULTI_GPU" in ddp and "num_processes: 2" in ddp and "main_process_port: 12345" in ddp
    z3 = accelerate_config("zero3", 4, port=1)
    assert "distributed_type: DEEPSPEED" in z3 and "zero_stage: 3" in z3
    z2 = accelerate_config("zero2", 2, port=1)
    assert "distributed_type: DEEPSPEED" in z2 and "zero_stage: 2" in z2 and "zero3_init_flag" not in z2
    assert "fully_shard is applied by subnetviz" in accelerate_config("fsdp2", 2, port=1)


@pytest.mark.parametrize("numel,world", [(10, 2), (7, 3), (5, 8)])
def test_zero_partition_covers_the_flat_mask(numel, world):
    mask = torch.rand(numel) < 0.5
    parts = [zero_partition(mask, r, world) for r in range(world)]
    assert len({p.numel() for p in parts}) == 1  # ZeRO-3 partitions are equal (padded) slices
    joined = torch.cat(parts)
    assert torch.equal(joined[:numel], mask) and not joined[numel:].any()


@pytest.mark.slow
def test_training_page_offers_strategy_and_processes(app_env):
    from streamlit.testing.v1 import AppTest

    from subnetviz.jobs.runner import JobRunner

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    at.switch_page("views/training.py").run()
    assert not at.exception
    assert list(at.selectbox(key="tr_strategy").options) == ["single", "ddp", "fsdp2", "zero2", "zero3"]
    at.number_input(key="tr_nproc").set_value(2)
    next(b for b in at.button if "Launch" in b.label).click().run()  # single with 2 processes: refused
    assert any("runs one process" in e.value for e in at.error), [e.value for e in at.error]  # markdown-escaped
    at.selectbox(key="tr_strategy").select("fsdp2")
    at.number_input(key="tr_nproc").set_value(2)
    next(b for b in at.button if "Launch" in b.label).click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    runner = JobRunner()
    rec = runner.registry.rows()[-1]
    try:
        assert rec.config["strategy"] == "fsdp2" and rec.config["num_processes"] == 2
    finally:
        if not runner.get(rec.id).finished:
            runner.cancel(rec.id)


@pytest.mark.slow
def test_cancel_of_a_launched_fsdp2_job_leaves_no_process(tiny, tmp_path, monkeypatch):
    import time

    import psutil

    from subnetviz.jobs.runner import JobRunner

    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    runner = JobRunner(tmp_path / "runs", cancel_grace_s=10.0)
    cfg = {"kind": "train", **_config(tiny, tmp_path / "unused", "sft", steps=5000)}
    cfg.pop("output_dir")
    run_id = runner.submit(cfg)
    deadline = time.time() + 180
    while (runner.get(run_id).step or 0) < 2:  # both ranks are training
        assert time.time() < deadline and not runner.get(run_id).finished, (
            Path(runner.get(run_id).run_dir) / "log.txt"
        ).read_text()[-3000:]
        time.sleep(0.3)
        runner.poll()
    rec = runner.cancel(run_id)
    assert rec.status == "cancelled" and not rec.outputs.exists()

    def ours():
        found = []
        for p in psutil.process_iter(["cmdline"]):
            if any(rec.run_dir in part for part in (p.info["cmdline"] or [])):
                found.append(p)
        return found

    deadline = time.time() + 30
    while ours() and time.time() < deadline:  # the ranks stop at their next step (cancel flag, all ranks)
        time.sleep(0.5)
    assert not ours(), [p.info["cmdline"] for p in ours()]


# --- DeepSpeed ZeRO-2 / ZeRO-3 on CPU ---------------------------------------------------------------

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed (requirements-deepspeed.txt)"
)
ZERO_STAGES = {"zero2": 2, "zero3": 3}


def test_zero_available_on_cpu_when_deepspeed_imports():
    assert (zero_available() is None) == (importlib.util.find_spec("deepspeed") is not None)


def test_zero_launch_sets_the_cpu_accelerator(tmp_path, monkeypatch):
    seen = {}

    class Launcher:  # the launcher's environment, and nothing started
        def __init__(self, cmd, env, **kw):
            seen.update(env)

        def wait(self):
            return 0

    monkeypatch.setattr(sharded.subprocess, "Popen", Launcher)
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    monkeypatch.setattr(sharded, "zero_available", lambda: None)
    for strategy in ("zero2", "zero3", "fsdp2"):
        seen.clear()
        assert sharded.launch(strategy, 2, tmp_path / "c.json", tmp_path / strategy) == 0
        expected = "cpu" if strategy != "fsdp2" and not torch.cuda.is_available() else None
        assert seen.get("DS_ACCELERATOR") == expected, strategy


@pytest.fixture(scope="module")
def zero_run(tiny, tmp_path_factory):
    """``zero_run(strategy, algorithm, weight_decay)``: the output folder of a 2-process
    ``python -m subnetviz train --config`` run, run once per module."""
    done: dict[tuple, Path] = {}

    def run(strategy: str, algorithm: str, weight_decay: float = 0.1) -> Path:
        key = (strategy, algorithm, weight_decay)
        if key not in done:
            folder = tmp_path_factory.mktemp(f"{strategy}-{algorithm}")
            cfg = folder / "config.json"
            cfg.write_text(
                json.dumps(_config(tiny, folder / "out", algorithm, strategy=strategy, weight_decay=weight_decay))
            )
            env = _env()
            env.pop("DS_ACCELERATOR", None)  # the launch sets it
            cmd = [sys.executable, "-m", "subnetviz", "train", "--config", str(cfg)]
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr[-3000:]
            done[key] = folder / "out"
        return done[key]

    return run


def _check_zero_run(tiny, out: Path, strategy: str) -> dict:
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["strategy"] == strategy and summary["num_processes"] == 2
    ev, stage = summary["zero"], ZERO_STAGES[strategy]
    assert ev["stage"] == stage and ev["world_size"] == 2 and ev["device"] == "cpu"
    assert ev["mask_applied_steps"] == summary["steps_done"] == 3  # the mask ran between backward and step
    with safe_open(str(tiny["base"] / "model.safetensors"), "pt") as f:
        numels = [math.prod(f.get_slice(k).get_shape()) for k in f.keys()]
    assert ev["parameters"] == len(numels) and ev["full_numel"] == sum(numels)
    if stage == 3:  # every parameter partitioned; this rank holds ceil(numel / 2) of each (counted from the base)
        assert ev["optimizer"] == "DeepSpeedZeroOptimizer_Stage3" and ev["partitioned_parameters"] == len(numels)
        assert ev["local_numel"] == sum(math.ceil(n / 2) for n in numels)
    else:  # parameters replicated; this rank's fp32 master partition is half of them (plus alignment padding)
        assert ev["optimizer"] == "DeepSpeedZeroOptimizer" and ev["partitioned_parameters"] == 0
        assert sum(numels) / 2 <= ev["local_numel"] < sum(numels)
    for check in (summary["mask_check"], summary["gathered_check"]):
        assert check["outside_mask_identical"] and check["changed_outside"] == 0
        assert check["changed_inside"] > check["numel_inside"] / 2  # lr 1e-2: most entries inside moved
    changed_in, changed_out = _bit_changes(tiny["base"], out, tiny["mask"])  # independent of the summary
    assert changed_out == 0 and changed_in == summary["mask_check"]["changed_inside"]
    yaml = (out / "accelerate_config.yaml").read_text()
    assert "distributed_type: DEEPSPEED" in yaml and f"zero_stage: {stage}" in yaml
    return summary


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "algorithm"),
    # every stage once with SFT; GRPO (generation under partitioned weights) on ZeRO-3, the stage that
    # partitions the parameters themselves; DPO (a reference model) below as a job. Each is a 2-process
    # run of 25-80 s on 2 cores, so not the whole product.
    [("zero2", "sft"), ("zero3", "sft"), ("zero3", "grpo")],
)
def test_zero_two_processes_cli(tiny, zero_run, strategy, algorithm):
    _check_zero_run(tiny, zero_run(strategy, algorithm), strategy)


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_zero_weight_decay_moves_only_entries_inside_the_mask(tiny, zero_run, strategy):
    """The same run with and without weight decay: the decay changes entries inside the mask and no other."""
    decayed, plain = zero_run(strategy, "sft", 0.1), zero_run(strategy, "sft", 0.0)
    _check_zero_run(tiny, plain, strategy)
    changed_in, changed_out = _bit_changes(plain, decayed, tiny["mask"])
    assert changed_out == 0 and changed_in > 0


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["zero3"])
def test_zero_two_processes_dpo_job(tiny, tmp_path, monkeypatch, strategy):
    from subnetviz.jobs.runner import JobRunner

    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    runner = JobRunner(tmp_path / "runs")
    cfg = {"kind": "train", **_config(tiny, tmp_path / "unused", "dpo", strategy=strategy)}
    cfg.pop("output_dir")
    run_id = runner.submit(cfg)
    rec = runner.wait(run_id, timeout=600)
    log = (Path(rec.run_dir) / "log.txt").read_text()
    assert rec.status == "succeeded", log[-3000:]
    assert f'DeepSpeed ZeRO active: {{"stage": {ZERO_STAGES[strategy]}' in log
    _check_zero_run(tiny, rec.outputs / "model", strategy)
    assert rec.step == 3 and len(runner.metrics(run_id)) >= 3  # rank 0 reported each step into the run folder


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_zero_weight_decay_leaves_a_vision_tower_no_gradient_reaches_untouched(tmp_path, strategy):
    """Two gloo processes, a full SFT run with weight_decay 0.1 of a vision-language model on text: before, 11 of the
    15 vision-tower and projector tensors changed under ZeRO (decay alone), none under single or fsdp2 (masked
    training review 2)."""
    from tests.integration.test_followups_review import _mistral3  # (a tiny Mistral-3, bf16, char tokenizer)
    from tests.integration.test_masked_training2_fixes import _same_bits, _tensors
    from tests.training_fixtures import write_addition_data

    base = _mistral3(tmp_path / "base")
    data = write_addition_data(tmp_path / "data", n=8)
    cfg = {
        "algorithm": "sft", "base": str(base), "data": str(data["sft"]), "output_dir": str(tmp_path / "out"),
        "steps": 2, "learning_rate": 1e-2, "batch_size": 4, "weight_decay": 0.1, "bf16": False,
        "strategy": strategy, "num_processes": 2,
    }  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    env = _env()
    env.pop("DS_ACCELERATOR", None)  # the launch sets it
    cmd = [sys.executable, "-m", "subnetviz", "train", "--config", str(tmp_path / "c.json")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _tensors(base), _tensors(tmp_path / "out")
    text = {n for n in a if n.startswith(("language_model.", "lm_head."))}
    changed = {n for n in a if not bool(_same_bits(a[n], b[n]).all())}
    assert len(a) - len(text) == 15 and not changed - text, sorted(changed - text)
    assert len(changed & text) > 10  # the text model trained (and decayed)
