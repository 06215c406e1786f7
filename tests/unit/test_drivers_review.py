"""The drivers grid after review D1-D7: PPO at the constant learning rate of every other run (read back from TRL's
own PPO trainer), a PPO overlay of another TRL refused before the grid starts, one failed run recorded with its
cause (the child's exception first) while the others are kept, DPO's row recording the β it trained with, the
verdict naming a missing data axis, SGD at its own learning rate and momentum, and the notes read from the grid
shown. Every expected value is written out here: the rates and β of the configs, the paper brief's SGD settings."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from subnetviz.experiments.drivers import COLUMNS, PRESETS, grid_notes, run_drivers, verdicts
from subnetviz.experiments.ppo import unavailable_reason


def _overlay(root: Path, version: str, ppo_init: str = "") -> Path:
    """A PPO overlay folder: trl's dist-info at ``version`` and a trl.experimental.ppo package whose __init__ is
    ``ppo_init`` (empty: it has no PPOConfig, so the PPO child fails at its import)."""
    (root / "trl" / "experimental" / "ppo").mkdir(parents=True)
    (root / "trl" / "__init__.py").write_text(f'__version__ = "{version}"\n')
    (root / "trl" / "experimental" / "__init__.py").write_text("")
    (root / "trl" / "experimental" / "ppo" / "__init__.py").write_text(ppo_init)
    (root / "trl" / "experimental" / "ppo" / "ppo_trainer.py").write_text("")
    info = root / f"trl-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: trl\nVersion: {version}\n")
    return root


# --- D1: PPO's learning-rate schedule ------------------------------------------------------------------
@pytest.mark.slow
def test_ppo_trains_at_a_constant_learning_rate_like_every_other_run(micro_zoo, tmp_path):  # noqa: F811
    """TRL's PPOTrainer logged lr 1e-4, 7.5e-5, 5e-5, 2.5e-5 over 4 steps (a literal "linear" schedule) while the
    other runs keep their rate: each of its steps now runs at the spec's 1e-4."""
    if unavailable_reason():
        pytest.skip(f"the PPO overlay is not usable here: {unavailable_reason()}")
    from subnetviz.experiments.drivers_runs import ppo_request
    from subnetviz.experiments.ppo import train_ppo

    p = PRESETS["micro"]
    spec = replace(p.default, factor="algorithm", value="ppo", algorithm="ppo", learning_rate=1e-4, steps=3)
    root = Path(micro_zoo.root)
    request = ppo_request(spec, str(root / "base"), str(root / "data" / "A_train.jsonl"), tmp_path / "ppo", p)
    result = train_ppo(request)
    assert result["lrs"] == pytest.approx([1e-4, 1e-4, 1e-4], rel=1e-9)


# --- D2: a wrong PPO overlay, a failed run --------------------------------------------------------------
def test_a_ppo_overlay_of_another_trl_is_refused_before_the_grid_starts(tmp_path, monkeypatch):
    """An overlay holding ppo_trainer.py of another TRL passed the check; its PPO child failed after every other
    run had trained. Now PPO is left out at planning, recorded with the version found."""
    from subnetviz.experiments.drivers import _plan

    monkeypatch.setenv("SUBNETVIZ_PPO_TRL", str(_overlay(tmp_path / "old", "0.28.0")))
    reason = unavailable_reason()
    assert reason and "0.28.0" in reason and "0.29.1" in reason and "bootstrap.sh" in reason
    specs, skipped = _plan(PRESETS["micro"], 1, ["algorithm"])
    assert [s.algorithm for s in specs] == ["sft", "dpo", "grpo", "rloo"]
    assert [(s.algorithm, why) for s, why in skipped] == [("ppo", reason)]
    monkeypatch.setenv("SUBNETVIZ_PPO_TRL", str(_overlay(tmp_path / "ok", "0.29.1")))
    assert unavailable_reason() is None


@pytest.mark.slow
def test_one_failed_run_is_recorded_and_the_others_kept(micro_zoo, tmp_path, monkeypatch):  # noqa: F811
    """A PPO child that fails (its TRL has no PPOConfig) threw away every trained run of the grid and ended the
    CLI in a traceback. Now: the PPO point is one row, status "failed", its note the child's exception first
    (the job error kept only the traceback's first frames); the four other algorithms keep their measured rows
    and the verdict reads them without PPO. DPO's row records the β DPO trained with (0.1, TRL's DPO default
    that TrainConfig's 0 becomes), not 0; SGD runs at the brief's lr 5e-3 with momentum 0.9."""
    monkeypatch.setenv("SUBNETVIZ_PPO_TRL", str(_overlay(tmp_path / "broken", "0.29.1")))
    seen = []
    sgd_init = torch.optim.SGD.__init__

    def spy(self, params, lr=1e-3, momentum=0, *args, **kwargs):
        seen.append((lr, momentum))
        sgd_init(self, params, lr, momentum, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "__init__", spy)
    res = run_drivers(micro_zoo.root, "micro", factors=["algorithm", "optimizer"], workdir=tmp_path / "work")
    assert list(res.columns) == COLUMNS and (res["grid_version"] == 2).all()
    (ppo,) = res[res["algorithm"] == "ppo"].itertuples()
    assert ppo.status == "failed" and pd.isna(ppo.precision) and np.isnan(ppo.sparsity)
    assert ppo.note.startswith("RuntimeError: PPO run failed (exit 1): ImportError: cannot import name 'PPOConfig'")
    assert "\n" not in ppo.note
    done = res[res["factor"] == "algorithm"].dropna(subset=["precision"])
    assert sorted(zip(done["value"], done["precision"], strict=True)) == [
        (a, p) for a in ("dpo", "grpo", "rloo", "sft") for p in ("bf16", "fp32")
    ]
    assert done["sparsity"].between(0, 1).all() and (done["status"] == "done").all()
    observed = verdicts(res).set_index("conjecture").loc["RL updates are sparser than SFT", "observed"]
    assert "PPO" not in observed and "DPO" in observed
    assert set(res.loc[res["algorithm"] == "dpo", "beta"]) == {0.1}
    assert set(res.loc[res["algorithm"] == "grpo", "beta"]) == {0.0}
    sgd = res[(res["value"] == "sgd")]
    assert set(sgd["learning_rate"]) == {5e-3} and set(sgd["momentum"]) == {0.9}
    assert seen == [(5e-3, 0.9)]  # the one SGD optimizer built, with the brief's settings
    notes = dict((line.split(":")[0], level) for level, line in grid_notes(res))
    assert notes["algorithm=ppo failed"] == "warning"


# --- D6: verdict without the data axis ----------------------------------------------------------------
def _rows(rows):
    base = {"seed": 0, "algorithm": "grpo", "accuracy": 0.5, "kl_forward": 0.0, "learning_rate": 1e-5, "steps": 8}
    base |= {"beta": 0.0, "max_grad_norm": 1.0, "optimizer": "adamw_torch", "data": "task", "train_seconds": 1.0}
    base |= {"status": "done", "note": "", "grid_version": 2}
    return pd.DataFrame([{**base, **r} for r in rows], columns=COLUMNS)


def test_a_grid_without_the_data_axis_says_so():
    """The learning-rate rows alone read "the base answered every training prompt, or none, correctly"."""
    lr = _rows(
        [{"factor": "learning_rate", "value": "1e-05", "precision": p, "sparsity": 0.7} for p in ("bf16", "fp32")]
    )
    v = verdicts(lr).set_index("conjecture").loc["in-distribution data drives sparsity"]
    assert v["observed"] == "not measured: the data axis is not in this grid" and v["reproduced"] is None
    dropped = pd.concat(
        [
            lr,
            _rows(
                [
                    {"factor": "data", "value": d, "algorithm": "sft", "data": d, "status": "not run", "note": "why"}
                    for d in ("on_policy", "gold")
                ]
            ),
        ]
    )
    v = verdicts(dropped).set_index("conjecture").loc["in-distribution data drives sparsity"]
    assert v["observed"] == "not measured: why"


# --- D5/D7: the notes come from the grid ----------------------------------------------------------------
def test_notes_are_read_from_the_grid_not_the_environment(tmp_path, monkeypatch):
    """A grid with a PPO point, shown where PPO cannot run, said "PPO: not run"; an older grid (no grid_version)
    says its PPO point decayed its learning rate and its DPO β reads 0; the optimizer axis names each rate."""
    monkeypatch.setenv("SUBNETVIZ_PPO_TRL", str(tmp_path / "none"))
    rows = [
        {"factor": "algorithm", "value": a, "algorithm": a, "precision": "bf16", "sparsity": 0.5}
        for a in ("sft", "dpo", "ppo")
    ]
    rows += [
        {"factor": "optimizer", "value": "adamw", "precision": "bf16", "sparsity": 0.7},
        {"factor": "optimizer", "value": "sgd", "optimizer": "sgd", "learning_rate": 5e-3, "momentum": 0.9}
        | {"precision": "bf16", "sparsity": 0.9},
    ]
    new = _rows(rows)
    lines = [line for _, line in grid_notes(new)]
    assert lines == [
        "PPO: its max_grad_norm has no effect (TRL's PPO loop does not clip gradients).",
        "Optimizer axis: adamw at learning rate 1e-05; sgd at learning rate 0.005 with momentum 0.9.",
    ]
    old = new.drop(columns=["status", "note", "grid_version", "momentum"]).assign(learning_rate=1e-5)
    levels, lines = zip(*grid_notes(old), strict=True)
    assert levels[0] == "warning" and "PPO point used a learning rate decaying linearly to 0" in lines[0]
    assert "DPO row's β reads 0, but DPO trained with β 0.1" in lines[0]
    assert lines[-1].startswith("Optimizer axis: adamw at learning rate 1e-05; sgd at learning rate 1e-05: ")
    without_ppo = old[old["algorithm"] != "ppo"]
    assert "PPO: not in this grid (the TRL 0.29.1 it needs was not installed where it was trained)." in [
        line for _, line in grid_notes(without_ppo)
    ]


@pytest.mark.slow
def test_a_grid_whose_every_run_failed_is_one_error(micro_zoo, tmp_path, monkeypatch):  # noqa: F811
    """Nothing measured is no grid to publish: one line naming the first failed point and its cause."""
    from subnetviz.errors import SubnetvizError
    from subnetviz.experiments import drivers_runs

    def broken(spec, *args):
        raise OSError(f"disk full while training {spec.value}")

    monkeypatch.setattr(drivers_runs, "train_run", broken)
    with pytest.raises(SubnetvizError) as err:
        run_drivers(micro_zoo.root, "micro", factors=["steps"], workdir=tmp_path / "work")
    assert str(err.value) == (
        "drivers: every run of the grid failed; the first, steps=1 seed 0: OSError: disk full while training 1"
    )


@pytest.mark.slow
def test_the_cli_publishes_a_grid_with_a_failed_run_and_exits_non_zero(micro_zoo, tmp_path, monkeypatch, capsys):  # noqa: F811
    """`experiment drivers` with one failed point: the other runs' results are published (they cost real time and
    are valid), the failure is one error line naming the point and its cause, and the exit status is 1 so a script
    notices (it was 0, with only a note among the table's lines)."""
    from subnetviz.cli import main
    from subnetviz.experiments import drivers

    monkeypatch.setenv("SUBNETVIZ_PPO_TRL", str(_overlay(tmp_path / "broken", "0.29.1")))
    whole = drivers.run_drivers
    # the algorithm axis only: the grid's other axes add nothing to what is checked here
    monkeypatch.setattr(drivers, "run_drivers", lambda *a, **k: whole(*a, **k, factors=["algorithm"]))
    out = tmp_path / "grid"
    code = main(["experiment", "drivers", "--zoo", str(micro_zoo.root), "--out", str(out), "--preset", "micro"])
    err = capsys.readouterr().err
    assert code == 1
    res = pd.read_csv(out / "results.csv")
    assert set(res.loc[res["status"] == "done", "algorithm"]) == {"sft", "dpo", "grpo", "rloo"}
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: drivers: 1 grid point(s) failed (the first, algorithm=ppo: RuntimeError: PPO run failed (exit 1): "
        "ImportError: cannot import name 'PPOConfig'"
    )
    assert "note: algorithm=ppo failed: RuntimeError" in err
