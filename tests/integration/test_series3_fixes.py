"""Series review, third pass: a run's own final model as the base, and this app's runs
(``<out>/checkpoints/step-N`` under the final model, ``train_summary.json`` its step).

1. The run's top folder (its final model) as the base was "the run's start, step 0": the page called entries where
   an early checkpoint equals the *final* model "gradients that cancelled out" and drew sparsity rising over
   training. It is now at its own step (so earlier checkpoints are refused as "not after the base"), or, where it
   says none, refused as the run's start.
3. This app's runs (the demo zoo's grpo-s0 too) keep their checkpoints one level down, in ``checkpoints/``: the final
   model and its checkpoints were "in 2 different folders" (and the final model "carried no training step").
"""

from __future__ import annotations

import json
from pathlib import Path

from subnetviz.analysis.series import training_run


def _folder(path: Path, **files) -> str:
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / f"{name}.json").write_text(json.dumps(data))
    return str(path)


def test_the_runs_final_model_as_the_base_is_at_its_step_not_the_start(tmp_path):
    out = tmp_path / "out"
    cks = [_folder(out / f"checkpoint-{s}") for s in (5, 20)]
    (out / "trainer_state.json").write_text(json.dumps({"global_step": 100}))
    assert training_run(cks, base=str(out)).why_not.endswith(
        "checkpoint-5 is at step 5, not after the base (step 100)."
    )
    later = [_folder(out / f"checkpoint-{s}") for s in (120, 105)]  # (a run resumed from its final model)
    assert training_run(later, base=str(out)).start == 100
    (out / "trainer_state.json").unlink()  # a final model that says no step: not taken as the start either
    why = training_run(cks, base=str(out)).why_not
    assert why == (
        f"the base {out} is the run's own folder, its final model, not its start: choose the model the run "
        "started from as the base."
    )
    assert training_run(cks, base=str(tmp_path / "elsewhere")).why_not == ""  # (a base elsewhere: the start, 0)


def test_this_apps_run_its_final_model_above_checkpoints_is_one_run(tmp_path):
    out = tmp_path / "grpo"
    cks = [_folder(out / "checkpoints" / f"step-{s}", step={"step": s}) for s in (50, 12)]
    (out / "train_summary.json").write_text(json.dumps({"steps_done": 100, "metrics": {}}))
    tr = training_run([*cks, str(out)], ["@50", "@12", "final"], base=str(tmp_path / "base"))
    assert tr.why_not == "" and tr.steps == (50, 12, 100) and tr.order == [1, 0, 2]
    assert tr.folder == str((out / "checkpoints").resolve())
    assert tr.read_from == ("step.json", "step.json", "train_summary.json")
    # its final model as the base: at step 100, after every checkpoint
    assert "@50 is at step 50, not after the base (step 100)" in training_run(cks, ["@50", "@12"], str(out)).why_not
    # a train_summary.json is read only above a run's checkpoints: independent finetunes side by side stay so
    a, b = (_folder(tmp_path / "zoo" / n, train_summary={"steps_done": 40}) for n in ("sft", "dpo"))
    tr = training_run([a, b], ["sft", "dpo"], base=str(tmp_path / "base"))
    assert tr.steps == (None, None) and "carries no training step" in tr.why_not


def test_a_base_above_a_trainer_output_dir_named_checkpoints_is_no_run_folder(tmp_path):
    """An HF Trainer run with output_dir=checkpoints and the base saved in the project folder above it: only this
    app's runs (a train_summary.json above checkpoints/) make that folder the run's own (its final model)."""
    proj = tmp_path / "proj"
    cks = [_folder(proj / "checkpoints" / f"checkpoint-{s}") for s in (100, 200)]
    (proj / "config.json").write_text("{}")
    tr = training_run(cks, ["c100", "c200"], base=str(proj))
    assert tr.why_not == "" and tr.start == 0 and tr.steps == (100, 200)
