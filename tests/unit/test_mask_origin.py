"""A training mask's source run and the hyperparameters that differ from the run that uses it."""

from types import SimpleNamespace

from subnetviz.training.mask_origin import differences, mask_source, mismatch_note, source_hparams

MEMBERS = {"grpo-s0": SimpleNamespace(id="grpo-s0", algorithm="grpo", learning_rate=1e-5, steps=30)}
RUNS = {"abc123": {"algorithm": "sft", "learning_rate": 2e-5, "steps": 4, "data": "x.jsonl"}}


def test_mask_source_from_either_provenance():
    assert mask_source({"method": "update mask", "model": "grpo-s0"}) == "grpo-s0"  # an analysis' update mask
    assert mask_source({"finetuned": "grpo-s0", "base": "base"}) == "grpo-s0"  # the demo zoo's mask
    assert mask_source({"target": "bigram", "lambda": 10}) is None  # a trained mask has no source finetune


def test_source_hparams_from_a_member_or_a_run():
    assert source_hparams("grpo-s0", MEMBERS, RUNS) == {"algorithm": "grpo", "learning_rate": 1e-5, "steps": 30}
    assert source_hparams("run abc123", MEMBERS, RUNS) == {"algorithm": "sft", "learning_rate": 2e-5, "steps": 4}
    assert source_hparams("run gone", MEMBERS, RUNS) is None and source_hparams("other", MEMBERS, RUNS) is None


def test_only_differing_hyperparameters_are_named():
    hp = source_hparams("grpo-s0", MEMBERS, RUNS)
    same = {"algorithm": "grpo", "learning_rate": 1.0e-5 * (1 + 1e-12), "steps": 30, "seed": 3}
    assert differences(hp, same) == [] and mismatch_note("grpo-s0", hp, same) is None
    other = {"algorithm": "grpo", "learning_rate": 3e-5, "steps": 1000}
    assert differences(hp, other) == ["learning_rate", "steps"]
    note = mismatch_note("grpo-s0", hp, other)
    assert "lr 1.0e-05, 30 steps" in note and "lr 3.0e-05, 1,000 steps" in note and "grpo-s0" in note
    assert differences(hp, {"algorithm": "dpo"}) == ["algorithm"]  # missing values are no difference


def test_a_random_control_mask_names_no_source_run():
    """A random control mask (drawn at another mask's densities) is no finetune's subnetwork. Files written before
    its provenance moved the source's identity under density_source_meta still hold "finetuned" at the top."""
    legacy = {"method": "random (same per-tensor density)", "finetuned": "grpo-s0", "density_source": "/z/m.st"}
    assert mask_source(legacy) is None
    from subnetviz.training.mask_origin import random_origin, random_provenance

    assert random_origin(legacy) == "random control at the densities of m.st"
    source = {"method": "update mask", "model": "grpo-s0", "finetuned_path": "/z/grpo-s0", "density": 0.3}
    meta = random_provenance("/z/masks/grpo-seed0.safetensors", source, 7)
    assert mask_source(meta) is None and "model" not in meta and "finetuned_path" not in meta
    assert meta["density_source_meta"] == {"method": "update mask", "model": "grpo-s0", "finetuned_path": "/z/grpo-s0"}
    assert "drawn at the per-tensor densities of /z/masks/grpo-seed0.safetensors (seed 7)" in meta["description"]
    assert random_origin({"method": "update mask", "model": "grpo-s0"}) is None


def test_run_hparams_are_the_values_a_run_trained_with():
    """TrainConfig's documented defaults (lr 1e-5, 100 steps, seed 0) for what a job config left out; the recorded
    train_config.json wins where it holds a value of the right type."""
    from subnetviz.training.mask_origin import run_hparams

    assert run_hparams({"algorithm": "sft"}) == {"algorithm": "sft", "learning_rate": 1e-5, "steps": 100, "seed": 0}
    recorded = {"learning_rate": 3e-4, "steps": "many", "seed": True}
    assert run_hparams({"algorithm": "sft", "steps": 2, "seed": 5}, recorded) == {
        "algorithm": "sft",
        "learning_rate": 3e-4,
        "steps": 2,
        "seed": 5,
    }
    assert run_hparams({"learning_rate": float("nan")})["learning_rate"] == 1e-5


def test_a_source_run_without_an_lr_is_compared_at_the_default():
    """A source run submitted without a learning rate trained at 1e-5: a run at 3e-5 inside its mask differs."""
    hp = source_hparams("run r0", {}, {"r0": {"algorithm": "sft", "steps": 4}})
    assert hp == {"algorithm": "sft", "learning_rate": 1e-5, "steps": 4}
    assert differences(hp, {"algorithm": "sft", "learning_rate": 3e-5, "steps": 4}) == ["learning_rate"]
