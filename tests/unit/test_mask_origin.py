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
