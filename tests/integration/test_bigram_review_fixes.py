"""NaN weights in the bigram analysis (review of the Bigram page): refused by name before anything is scored or
trained, never turned into finite numbers, and a mask-training job whose loss is not finite fails (no mask)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bigram_fixtures import V, planted_transition

from subnetviz.bigram.maskable import full_mask
from subnetviz.errors import NonFiniteError
from subnetviz.masks import save_mask_set
from tests.models import bigram_model

NAN_TENSOR = "transformer.h.0.mlp.c_fc.weight"  # a maskable weight of the tiny GPT-2 (W * 0 keeps its NaN)


def _nan_model():
    model = bigram_model("gpt2")
    with torch.no_grad():
        dict(model.named_parameters())[NAN_TENSOR][0, 0] = float("nan")
    return model


@pytest.fixture
def nan_zoo(tmp_path, monkeypatch):
    """A home whose zoo holds the planted chain's bigram.npz, and a saved tiny model with one NaN weight."""
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    from subnetviz.config import zoo_dir

    zoo_dir().mkdir(parents=True, exist_ok=True)
    np.savez(zoo_dir() / "bigram.npz", transition=planted_transition(), token_ids=np.arange(V))
    model = _nan_model()
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model", model


def test_prepare_and_the_page_s_analysis_refuse_a_nan_weight_by_name(nan_zoo, tmp_path):
    """Before: the analysis reported bits/token 0.000 (every NaN surprisal replaced), then crashed in
    np.linalg.eigvals or torch.multinomial with a raw traceback."""
    from subnetviz.bigram.job import BigramJobConfig, analyse_mask_file, prepare

    folder, model = nan_zoo
    with pytest.raises(NonFiniteError, match=rf"{NAN_TENSOR}: 1 NaN/Inf value"):
        prepare(BigramJobConfig(model=str(folder), eval_sequences=20, seq_len=16))
    save_mask_set(tmp_path / "mask.safetensors", full_mask(model, True))
    for residual in (64, None):  # the residual stream (eigvals) and the generations path
        with pytest.raises(NonFiniteError, match=NAN_TENSOR) as err:
            analyse_mask_file(
                str(folder), str(tmp_path / "mask.safetensors"), eval_sequences=20, seeds=(0,), residual_tokens=residual
            )
        assert "\n" not in str(err.value)


def test_the_mask_job_fails_with_one_line_and_writes_no_mask(nan_zoo, tmp_path, capsys):
    """Before: the job "succeeded" with 0 weights kept, final_loss NaN (not JSON) and stable: true."""
    folder, _ = nan_zoo
    run_dir, error = failed_mask_job(folder, tmp_path, steps=5)
    assert NAN_TENSOR in error
    assert not list(run_dir.rglob("mask.safetensors")) and not list(run_dir.rglob("metrics.json"))
    assert "Traceback" not in capsys.readouterr().out


def failed_mask_job(folder, tmp_path, steps: int):
    """(the run folder, its one-line error) of a bigram_mask job on the model ``folder`` that must fail (status
    failed, exit 1 of the command line's worker)."""
    from subnetviz.jobs.worker import main_job

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {"kind": "bigram_mask", "model": str(folder), "steps": steps, "seq_len": 16, "eval_sequences": 20}
    (run_dir / "config.json").write_text(json.dumps({**config, "device": "cpu"}))
    assert main_job(str(run_dir)) == 1
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "\n" not in status["error"]
    return run_dir, status["error"]


def test_training_stops_at_the_first_loss_that_is_not_finite():
    """Training called on a broken model directly (no prepare): NonFiniteError at step 1, no step reported."""
    from subnetviz.bigram.stats import table_from_transition
    from subnetviz.bigram.train import preset_config, train_bigram_mask

    table = table_from_transition(planted_transition(), np.arange(V))
    steps = []
    with pytest.raises(NonFiniteError, match="the loss is nan at step 1") as err:
        train_bigram_mask(
            _nan_model(),
            table.sample(64, 16, seed=0),
            table,
            preset_config("fast", max_steps=5),
            device="cpu",
            on_step=lambda step, total, rec: steps.append(step),
        )
    assert steps == [] and "\n" not in str(err.value)


def test_a_nan_ce_curve_is_never_stable():
    from subnetviz.bigram.train import loss_is_stable

    ce = np.full(50, 2.0)
    ce[-1] = np.nan  # NaN compares False with every spike threshold: it passed as no spike
    assert loss_is_stable(np.full(50, 2.0)) and not loss_is_stable(ce)


def test_fidelity_replaces_only_inf_and_keeps_nan():
    """r replaces an infinite surprisal by the largest finite one; a NaN (a broken model) is no surprisal and
    must not become one (before: NaN -> the largest finite value, or 0.0 when none was finite)."""
    from subnetviz.bigram.evaluate import fidelity

    bigram = np.array([1.0, 2.0, np.inf, 4.5, 3.0])
    r, r_drop = fidelity(np.array([1.0, 2.0, 3.0, 4.0, 2.5]), bigram)
    a, b = np.array([1.0, 2.0, 3.0, 4.0, 2.5]), np.array([1.0, 2.0, 4.5, 4.5, 3.0])
    assert r == pytest.approx(
        ((a - a.mean()) * (b - b.mean())).sum() / np.sqrt(((a - a.mean()) ** 2).sum() * ((b - b.mean()) ** 2).sum())
    )
    r, r_drop = fidelity(np.array([1.0, np.nan, 3.0, 4.0, 2.5]), bigram)
    assert np.isnan(r)  # the NaN is kept: no finite r over a broken model
    assert r_drop == pytest.approx(np.corrcoef([1.0, 4.0, 2.5], [1.0, 4.5, 3.0])[0, 1])  # the finite pairs


def test_evaluation_of_a_nan_model_is_not_finite():
    """evaluate_subnetwork called directly on a model with a NaN embedding row (token 3): the full model's bits and
    r are NaN (before: bits 8.26 and r 0.112, the NaN surprisals replaced by the largest finite one)."""
    from subnetviz.bigram.evaluate import evaluate_subnetwork
    from subnetviz.bigram.stats import table_from_transition

    model = bigram_model("gpt2")
    with torch.no_grad():
        model.get_input_embeddings().weight[3] = float("nan")
    table = table_from_transition(planted_transition(), np.arange(V))
    corpus = table.sample(20, 16, seed=0)
    assert (corpus.ids[:, :-1] == 3).any()
    s = evaluate_subnetwork(model, full_mask(model, True), table, corpus, seeds=()).summary().set_index("setting")
    assert np.isnan(s.loc["full", "bits_mean"]) and np.isnan(s.loc["full", "r_mean"])
    assert np.isfinite(s.loc["bigram", "bits_mean"])  # the bigram row itself stays a number
