"""Regressions of the session's own changes (regression read 9), each against what the change meant to keep."""

from __future__ import annotations

import pytest
import torch

from subnetviz.errors import ConfigError, JobError


def test_a_data_set_s_rejected_completions_are_still_refused(tmp_path):
    """The column guard kept only the prompt and answer columns, so TRL's ``label`` beside a ``completion`` was
    dropped and a completion labelled false was scored as the expected answer (it was refused before)."""
    import datasets

    from subnetviz.analysis.behavior_data import read_prompts

    folder = tmp_path / "kto"
    rows = {"prompt": ["2+2=", "3+5=", "7+1="], "completion": ["4", "9", "8"], "label": [True, False, True]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(folder))
    with pytest.raises(ConfigError, match="row 1: a 'completion' labelled false"):
        read_prompts(str(folder))
    ok = tmp_path / "ok"
    datasets.Dataset.from_dict({**rows, "label": [True, True, True]}).save_to_disk(str(ok))
    assert [p.answer for p in read_prompts(str(ok))] == ["4", "9", "8"]


@pytest.mark.parametrize(
    "head", ["output.weight", "transformer.output_layer.weight", "model.transformer.ff_out.weight"]
)
def test_an_unknown_family_s_lm_head_shares_its_rows_again(head):
    """Meta's Llama releases, InternLM2 (output.weight), ChatGLM (output_layer), OLMo-1 (ff_out): with no naming
    table for the names, the head of a resized vocabulary was left out instead of compared over its shared rows.
    Counted here with NumPy over the first 100 rows."""
    import numpy as np

    from subnetviz.jobs.cluster_pages import sets_overlap
    from subnetviz.masks import MaskSet

    gen = torch.Generator().manual_seed(0)

    def masks(vocab):
        return {
            "tok_embeddings.weight": torch.rand(vocab, 16, generator=gen) < 0.3,
            "layers.0.attention.wq.weight": torch.rand(16, 16, generator=gen) < 0.3,
            head: torch.rand(vocab, 16, generator=gen) < 0.3,
        }

    a, b = masks(100), masks(104)
    out = sets_overlap([MaskSet(a, {}), MaskSet(b, {})], ["A", "B"])
    assert head in list(out.report.tensor_names)
    shared = sum(
        int(np.logical_and(a[k].numpy().reshape(-1)[: 100 * 16 if k != "layers.0.attention.wq.weight" else 256],
                           b[k].numpy().reshape(-1)[: 100 * 16 if k != "layers.0.attention.wq.weight" else 256]).sum())
        for k in a
    )  # fmt: skip
    assert int(out.report.pairwise.iloc[0]["intersection"]) == shared
    assert not [n for n in out.notes if "Left out" in n]


def test_a_layer_s_own_output_is_no_vocabulary():
    from subnetviz.checkpoints.naming import looks_like_vocabulary

    assert looks_like_vocabulary("output.weight") and looks_like_vocabulary("transformer.output_layer.weight")
    assert not looks_like_vocabulary("layers.3.attention.output.weight")
    assert not looks_like_vocabulary("model.layers.0.ff_out.weight")


def _raise_in(filename: str, exc: str = "KeyError('x')"):
    try:
        exec(compile(f"raise {exc}", filename, "exec"))  # noqa: S102 - a frame whose file is the given path
    except Exception as caught:  # noqa: BLE001 - the test's own capture
        return caught
    raise AssertionError("nothing raised")


def test_an_installed_subnetviz_s_own_bug_keeps_its_traceback():
    """``pip install .`` puts subnetviz under site-packages: its own bug read as "failed inside subnetviz …, the
    library does not take this model", with no traceback."""
    from subnetviz.training.run import library_failure

    ours = _raise_in("/venv/lib/python3.11/site-packages/subnetviz/training/masking.py")
    assert library_failure(ours, "training") is ours
    theirs = _raise_in("/venv/lib/python3.11/site-packages/trl/trainer/utils.py")
    assert isinstance(library_failure(theirs, "training"), JobError)


def test_a_config_at_a_freed_config_s_address_keeps_its_own_num_experts():
    """The configs whose num_experts the run added were remembered by id(): a later config at a freed one's
    address (another model trained in the same process) had its own num_experts stripped from its saved
    config.json. Simulated by putting another object at that config's id, as a reused address would."""
    import transformers as T

    from subnetviz.training import trainers

    class Holder:  # (a model: what the helpers read is .config)
        def __init__(self, config):
            self.config = config

    granite = Holder(T.GraniteMoeConfig(num_local_experts=4, num_experts_per_tok=2))
    trainers._expert_count_for_trl(granite)
    assert granite.config.num_experts == 4
    with trainers._without_added_expert_count(granite):
        assert "num_experts" not in granite.config.__dict__
    assert granite.config.num_experts == 4
    qwen = Holder(T.Qwen3MoeConfig(num_experts=8))
    trainers._ADDED[id(qwen.config)] = granite.config  # (what a set of ids holding a freed config's address was)
    with trainers._without_added_expert_count(qwen):
        assert qwen.config.num_experts == 8
