"""Training runs on a tiny Llama, checked against what was planted: a random control mask's provenance, the metrics
log of a train job (each step once), and a saved model changed outside its mask (the run fails, the model and its
summary are kept unpublished). Files are read with safetensors and json directly, not through the code's readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from subnetviz.errors import MaskError
from subnetviz.masks import MaskSet, save_mask_set
from subnetviz.training.config import TrainConfig
from tests.models import make_tiny_llama
from tests.training_fixtures import write_addition_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_addition_data(tmp_path_factory.mktemp("review-data") / "data", n=8)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("review-base") / "base", hidden=16, intermediate=32)


def _half_mask(base: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    with safe_open(str(base / "model.safetensors"), framework="pt") as f:
        return {name: torch.rand(f.get_slice(name).get_shape(), generator=gen) < 0.5 for name in f.keys()}


def test_a_random_control_mask_carries_its_own_provenance(base, tmp_path):
    """The random twin of grpo-s0's update mask kept "finetuned": "grpo-s0" (and its path, tolerance) at the top of
    its provenance: the Training page then took it for grpo-s0's subnetwork."""
    from subnetviz.training.mask_origin import mask_source
    from subnetviz.training.masking import load_training_mask

    masks = _half_mask(base)
    source_meta = {"method": "exact update mask", "finetuned": "grpo-s0", "finetuned_path": "/z/grpo-s0"}
    source_meta.update(model="grpo-s0", tolerance=0.0)
    src = save_mask_set(tmp_path / "grpo-seed0.safetensors", MaskSet(masks, source_meta))
    shapes = {n: tuple(m.shape) for n, m in masks.items()}
    drawn, used = load_training_mask(f"random:{src}", shapes, seed=3)
    assert {n: int(m.sum()) for n, m in drawn.items()} == {n: int(m.sum()) for n, m in masks.items()}
    assert any(not torch.equal(drawn[n], masks[n]) for n in masks)  # drawn, not the source itself
    saved = save_mask_set(tmp_path / "subnetwork_mask.safetensors", used)
    with safe_open(str(saved), framework="np") as f:
        meta = json.loads(f.metadata()["subnetviz"])
    assert not {"finetuned", "finetuned_path", "model", "tolerance"} & set(meta), meta
    assert meta["method"].startswith("random") and meta["density_source"] == str(src) and meta["seed"] == 3
    assert meta["density_source_meta"]["finetuned"] == "grpo-s0"
    assert f"densities of {src}" in meta["description"]
    assert mask_source(meta) is None


def test_a_train_job_logs_its_last_step_once(base, data, tmp_path):
    """run_job appended the last step's metrics a second time after training (steps 1, 2, 3, 3): the curves drew
    it twice and their moving average weighed it twice. The held-out accuracy still reaches status.json."""
    from subnetviz.jobs.context import JobContext
    from subnetviz.training.run import run_job

    ctx = JobContext.for_dir(tmp_path / "run")
    config = {"algorithm": "sft", "base": str(base), "data": str(data["sft"]), "eval_data": str(data["eval"])}
    run_job({**config, "steps": 3, "batch_size": 4, "learning_rate": 1e-2}, ctx)
    lines = [json.loads(x) for x in (ctx.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    status = json.loads((ctx.run_dir / "status.json").read_text())
    summary = json.loads((ctx.out_dir / "model" / "train_summary.json").read_text())
    assert (status["step"], status["total"]) == (3, 3)
    assert status["metrics"]["loss"] == lines[-1]["loss"]
    assert status["metrics"]["accuracy"] == summary["accuracy"]


def test_a_model_changed_outside_its_mask_fails_and_is_kept(base, data, tmp_path, monkeypatch, capsys):
    """One entry outside the mask, planted in the saved model: the run logged a warning and published the model
    as a success, while the module said such a model stays unpublished and the run fails."""
    import subnetviz.training.run as run_mod

    masks = _half_mask(base)
    mask = save_mask_set(tmp_path / "m.safetensors", MaskSet(masks, {"method": "test: random"}))
    name = next(n for n, m in masks.items() if not bool(m.all()))
    flat = int((~masks[name]).reshape(-1).nonzero()[0])  # an entry outside the mask
    original = run_mod.save_like_base

    def save_and_plant(model, tokenizer, folder, base_dir, extra=None, state=None):
        out = original(model, tokenizer, folder, base_dir, extra, state=state)
        file = Path(folder) / "model.safetensors"
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata()
        tensors = load_file(str(file))
        t = tensors[name].reshape(-1)
        t[flat] = t[flat] + 1.0  # (a tiny Llama's weights are small: +1 changes the stored bits)
        save_file(tensors, str(file), metadata=meta)
        return out

    monkeypatch.setattr(run_mod, "save_like_base", save_and_plant)
    out = tmp_path / "out"
    cfg = TrainConfig(
        algorithm="sft", base=str(base), data=str(data["sft"]), output_dir=str(out), steps=2, batch_size=4
    )
    cfg = TrainConfig(**{**cfg.to_dict(), "mask": str(mask), "learning_rate": 1e-2})
    with pytest.raises(MaskError, match=r"^1 entries outside the mask changed in the saved model") as e:
        run_mod.train(cfg)
    assert "the trained model is kept, unpublished" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()
    (kept,) = tmp_path.glob("out.unpublished-*")
    assert str(kept) in str(e.value)
    summary = json.loads((kept / "train_summary.json").read_text())
    check = summary["mask_check"]
    assert (check["changed_outside"], check["outside_mask_identical"]) == (1, False)
    assert summary["gathered_check"]["outside_mask_identical"] is True  # the trained state itself was clean
