"""Training runs leave TensorBoard event files that TensorBoard itself reads, without subnetviz.

Proves: a TRL training job (the ``train`` job kind, on a tiny Llama) writes event files into its
run folder's ``tensorboard/`` whose ``train/loss`` scalars are the losses the job reported step by
step in ``metrics.jsonl``; a run outside a job folder writes beside its model folder; bigram mask
training writes its whole curve (every step, every column) as scalars. Everything is read back with
TensorBoard's own ``EventAccumulator``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from subnetviz.training.trainers import tensorboard_dir


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in the event files under ``folder``: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {folder}"
    acc = EventAccumulator(str(files[0].parent), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_dir_is_outside_the_model_folder(tmp_path):
    # A job's model is trained into RUN_DIR/outputs.tmp/model, renamed to outputs/ at the end.
    assert tensorboard_dir(tmp_path / "run" / "outputs.tmp" / "model") == tmp_path / "run" / "tensorboard"
    assert tensorboard_dir(tmp_path / "out" / "sft-1") == tmp_path / "out" / "sft-1.tensorboard"


@pytest.mark.slow
def test_training_job_writes_readable_events_into_its_run_folder(tmp_path):
    from subnetviz.jobs.context import JobContext
    from subnetviz.training.run import run_job
    from tests.models import make_tiny_llama
    from tests.training_fixtures import write_addition_data

    base = make_tiny_llama(tmp_path / "base")
    data = write_addition_data(tmp_path / "data")
    ctx = JobContext.for_dir(tmp_path / "run")
    job = {
        "kind": "train",
        "algorithm": "sft",
        "base": str(base),
        "data": str(data["sft"]),
        "steps": 3,
        "learning_rate": 1e-2,
        "batch_size": 8,
        "seed": 0,
    }
    run_job(job, ctx)
    scalars = _scalars(ctx.run_dir / "tensorboard")
    reported = [json.loads(line) for line in (ctx.run_dir / "metrics.jsonl").read_text().splitlines()]
    loss = {r["step"]: r["loss"] for r in reported if "loss" in r and r["step"] <= 3}
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [loss[s] for s in (1, 2, 3)], rtol=1e-6)
    assert not list((ctx.out_dir / "model").rglob("events.out.tfevents.*"))  # the model folder stays clean


@pytest.mark.slow
def test_bigram_mask_training_writes_its_curve(tmp_path):
    from bigram_fixtures import planted_transition

    from subnetviz.bigram.stats import table_from_transition
    from subnetviz.bigram.train import preset_config, train_bigram_mask
    from tests.models import bigram_model

    p = planted_transition()
    table = table_from_transition(p, np.arange(p.shape[0]))
    torch.manual_seed(0)
    cfg = preset_config("fast", max_steps=5, batch_size=8)
    res = train_bigram_mask(
        bigram_model("gpt2"), table.sample(16, 16, seed=1), table, cfg, device="cpu", tensorboard_dir=tmp_path / "tb"
    )
    scalars = _scalars(tmp_path / "tb")
    curve = res.curve
    assert set(scalars) == {f"train/{c}" for c in curve.columns if c != "step"}
    for col in ("loss", "ce", "kept", "beta"):
        steps, values = zip(*scalars[f"train/{col}"], strict=True)
        assert list(steps) == curve["step"].tolist()
        np.testing.assert_allclose(values, curve[col].to_numpy(), rtol=1e-6)  # stored as float32
