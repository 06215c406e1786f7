"""The Behaviour page with a PEFT adapter in the workspace (review "adapters", D2): one line saying a model is
run from a full model's folder and how to make one (before, the checkpoint reader's line, which told the user to give
the adapter as a finetuned model beside the base: what they had done)."""

import shutil

import pytest

from tests.app_fixtures import open_page

pytestmark = pytest.mark.slow


def test_behaviour_with_an_adapter_says_how_to_run_it(app_env):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = app_env / "tmp-behaviour-lora"
    model = AutoModelForCausalLM.from_pretrained(str(app_env / "zoo" / "base"), dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)).save_pretrained(folder)
    try:
        # beside a full finetune: the adapter is left out with a line saying why, the finetune still runs
        at = open_page("behavior", ft=["grpo-s0", str(folder)])
        assert not at.exception, [e.message for e in at.exception]
        assert not at.error, [e.value for e in at.error]
        said = [e.value.replace("\\", "").replace("\u200b", "") for e in at.info]  # shown as text: escaped
        said = [s for s in said if "tmp-behaviour-lora" in s]
        assert len(said) == 1 and "\n" not in said[0], said
        assert "Not run here: tmp-behaviour-lora (LoRA/PEFT adapters)" in said[0], said
        assert "merge_and_unload" in said[0] and "beside the base" not in said[0]
        assert at.get("plotly_chart"), "the full finetune beside the adapter was not run"
        # the adapter alone: the page stops with that line
        at = open_page("behavior", ft=[str(folder)])
        assert not at.exception and not at.error, [e.value for e in at.error]
        said = [e.value.replace("\\", "") for e in at.info if "tmp-behaviour-lora" in e.value.replace("\\", "")]
        assert len(said) == 1 and "merge_and_unload" in said[0], [e.value for e in at.info]
        assert not at.get("plotly_chart")
    finally:
        shutil.rmtree(folder)
