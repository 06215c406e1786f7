"""The Behaviour page with a PEFT adapter in the workspace (review "adapters", D2): one error line saying a model is
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
        at = open_page("behavior", ft=["grpo-s0", str(folder)])
        assert not at.exception, [e.message for e in at.exception]
        said = [e.value.replace("\\", "").replace("\u200b", "") for e in at.error]  # shown as text: escaped
        assert len(said) == 1 and "\n" not in said[0], said
        assert "tmp-behaviour-lora: a LoRA/PEFT adapter" in said[0] and "a model is run here" in said[0]
        assert "merge_and_unload" in said[0] and "beside the base" not in said[0]
    finally:
        shutil.rmtree(folder)
