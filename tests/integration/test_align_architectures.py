"""A finetune of another architecture is refused, not compared on its head alone.

A GPT-2 as wide as a Llama base with the same vocabulary paired one tensor, the Llama's lm_head with the GPT-2's
tied embedding: the analysis reported 2,048 of 2,048 entries changed and listed everything else as not compared."""

from __future__ import annotations

import pytest
import torch

from subnetviz.errors import AlignmentError
from tests.models import save_model, tiny_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("archs")
    llama = save_model(tiny_model("llama", vocab=64, hidden=32, layers=1), root / "llama", dtype=torch.float32)
    gpt2 = save_model(tiny_model("gpt2", vocab=64, hidden=32), root / "gpt2", dtype=torch.float32)
    return llama, gpt2


def test_a_gpt2_as_wide_as_a_llama_base_is_refused_naming_both_types(models):
    from subnetviz.analysis.updates import analyze_updates
    from subnetviz.selection import finetune_misfit

    llama, gpt2 = models
    with pytest.raises(AlignmentError, match=r"\(llama\) and .*gpt2 \(gpt2\): models of different architectures"):
        analyze_updates(str(llama), [str(gpt2)])
    assert "models of different architectures" in finetune_misfit(str(llama), str(gpt2))  # left out on the pages


def test_a_model_saved_under_another_type_with_the_same_names_is_still_compared(models, tmp_path):
    """A Llama whose config says mistral (same tensor names) pairs by name: it is compared, not refused."""
    import json
    import shutil

    from subnetviz.analysis.updates import analyze_updates

    llama, _ = models
    other = tmp_path / "as-mistral"
    shutil.copytree(llama, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "mistral"
    (other / "config.json").write_text(json.dumps(cfg))
    report = analyze_updates(str(llama), [str(other)]).reports[0]
    assert int(report.tensors["changed"].sum()) == 0 and len(report.tensors) > 5
