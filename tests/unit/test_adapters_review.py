"""Adapters as users bring them (review "adapters", defects D2-D6 and cosmetic C1-C4).

Every adapter here is written by PEFT itself (``get_peft_model``, each trainable tensor moved off its initial value,
``save_pretrained``) on a tiny float32 model, and every number is checked against PEFT's own merge of the saved
folder (``PeftModel.from_pretrained(base).merge_and_unload()``) or counted from the saved tensors, never against
subnetviz's helpers:

- D2: Behaviour given an adapter as a finetune says a model is run from a full model's folder (it said to give the
  adapter beside the base, which was done); the checkpoint reader's own line names both uses.
- D3: a target_modules list with an entry this architecture lacks (a list written for several families) is merged
  as PEFT merges it, the entry noted; a list none of whose entries names a module is still refused.
- D4: a SEQ_CLS adapter (its new head ``score`` saved whole) is PEFT's merged classifier: ``score`` only in it, the
  base's ``lm_head`` only in the base, the other tensors PEFT's bit for bit.
- D5: a merged model whose folder kept ``adapter_config.json`` is read as that model (noted), as a finetune too.
- D6: biases trained by ``bias: all`` / ``lora_only`` are counted as such, not as modules_to_save.
- C1-C4: an ``adapter_model.bin`` adapter, an IA3 adapter's rank, a folder of named adapters and an adapter's weight
  file given as a model: one line each that says what is there.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from subnetviz.errors import CheckpointError, SubnetvizError
from tests.models import INTER, save_model, tiny_model


def _base(tmp_path, family: str = "llama"):
    size = {"intermediate": INTER, "kv_heads": 2, "tie": False} if family == "llama" else {}
    return save_model(tiny_model(family, seed=0, **size), tmp_path / "base", dtype=False)


def _peft(tmp_path, base, config, *, model_cls=None, name: str = "adapter", adapter_name: str = "default", **save):
    """The folder PEFT saves for ``config`` on the model of ``base`` (read by ``model_cls``), every trainable tensor
    moved off its initial value as training moves it."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = (model_cls or AutoModelForCausalLM).from_pretrained(str(base), dtype=torch.float32)
    peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    torch.manual_seed(1)
    with torch.no_grad():
        for _, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    peft_model.save_pretrained(tmp_path / name, **save)
    return tmp_path / name


def _peft_merge(base, folder, model_cls=None) -> dict:
    """PEFT's own merge of the saved ``folder`` onto ``base`` (float32, as stored), as anyone who loads it gets it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = (model_cls or AutoModelForCausalLM).from_pretrained(str(base), dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(folder)).merge_and_unload().state_dict()


def _changed(base_sd: dict, merged: dict) -> int:
    """Entries that differ between the tensors both hold (counted from the tensors themselves)."""
    return sum(int((base_sd[n] != merged[n]).sum()) for n in base_sd if n in merged)


def _lora(**kw):
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=16, **kw)


# --- D2 -----------------------------------------------------------------------------------------------------------


def test_behaviour_given_an_adapter_says_a_model_is_run_from_a_full_models_folder(tmp_path):
    """Behaviour (the CLI's run_config and planned_passes, the page's behavior_entry) with a PEFT adapter as the
    finetune: one line saying a model is run from a full model's folder and how to make one (before: "give it as a
    finetuned model beside the base it was trained on", which is what was done). The checkpoint reader's line (an
    adapter opened as a model anywhere else) now names both uses."""
    from subnetviz.analysis.behavior import behavior_entry, planned_passes, run_config
    from subnetviz.checkpoints import open_checkpoint

    base = _base(tmp_path)
    lora = _peft(tmp_path, base, _lora(target_modules=["q_proj", "v_proj"]))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    config = {"base": str(base), "finetuned": [str(lora)], "prompts": str(prompts)}
    for call in (run_config, planned_passes, behavior_entry):
        with pytest.raises(CheckpointError) as err:
            call(config)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"{lora}: a LoRA/PEFT adapter")
        assert "a model is run here" in msg and "merge_and_unload" in msg and "beside the base" not in msg
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(lora)
    msg = str(err.value)
    assert "\n" not in msg and "beside the base it was trained on" in msg and "a model is run" in msg


# --- D3 -----------------------------------------------------------------------------------------------------------


def test_a_target_modules_entry_the_base_lacks_is_skipped_as_peft_skips_it(tmp_path):
    """["q_proj", "v_proj", "query_key_value"] on a Llama: PEFT saves and merges it (the fused QKV entry names no
    Llama module); read here as PEFT's merge bit for bit, the entry named in a note (before: refused whole)."""
    from subnetviz.analysis.updates import SpectraOptions, analyze_updates
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    base = _base(tmp_path)
    lora = _peft(tmp_path, base, _lora(target_modules=["q_proj", "v_proj", "query_key_value"]))
    merged, base_sd = _peft_merge(base, lora), load_file(str(base / "model.safetensors"))
    ck = open_finetune(str(lora), open_checkpoint(base))
    for name in ck.names:
        assert torch.equal(ck.get(name), merged[name]), name
    assert sum(not torch.equal(base_sd[n], merged[n]) for n in base_sd) == 4  # q and v of two layers
    assert any("'query_key_value'" in n and "skipped" in n for n in ck.notes)
    rep = analyze_updates(str(base), [str(lora)], spectra=SpectraOptions(enabled=False)).reports[0]
    assert rep.changed == _changed(base_sd, merged)
    # a list none of whose entries names a module of the base is still refused, in one line naming the first
    cfg = json.loads((lora / "adapter_config.json").read_text())
    (lora / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": ["query_key_value", "c_attn"]}))
    with pytest.raises(CheckpointError) as err:
        open_finetune(str(lora), open_checkpoint(base))
    msg = str(err.value)
    assert "\n" not in msg and "target module 'query_key_value'" in msg and "nor do the other 1" in msg


# --- D4 -----------------------------------------------------------------------------------------------------------


def test_a_seq_cls_adapter_is_the_classifier_peft_merges(tmp_path):
    """LoraConfig(task_type="SEQ_CLS") on AutoModelForSequenceClassification saves its new head score.weight whole.
    Beside the causal-LM base it is the model PEFT's merge makes: every tensor PEFT's bit for bit, score.weight
    only in it, the base's lm_head.weight no part of it; the changed count is the one PEFT's merged tensors give
    (before: "targets 'score.weight', which the base does not hold. Did you mean 'lm_head.weight'?")."""
    from transformers import AutoModelForSequenceClassification

    from subnetviz.analysis.updates import SpectraOptions, analyze_updates
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    class ThreeLabels:  # the classifier's model class, with its number of labels
        @staticmethod
        def from_pretrained(path, **kw):
            return AutoModelForSequenceClassification.from_pretrained(path, num_labels=3, **kw)

    base = _base(tmp_path)
    lora = _peft(tmp_path, base, _lora(target_modules=["q_proj"], task_type="SEQ_CLS"), model_cls=ThreeLabels)
    assert "base_model.model.score.weight" in load_file(str(lora / "adapter_model.safetensors"))
    merged, base_sd = _peft_merge(base, lora, ThreeLabels), load_file(str(base / "model.safetensors"))
    ck = open_finetune(str(lora), open_checkpoint(base))
    assert sorted(ck.names) == sorted(merged)  # score.weight in, lm_head.weight out, as in PEFT's merged model
    for name in ck.names:
        got = ck.get(name)
        assert got.dtype == merged[name].dtype and torch.equal(got, merged[name]), name
    assert any("score.weight" in n and "new head" in n and "lm_head.weight" in n for n in ck.notes)
    an = analyze_updates(str(base), [str(lora)], spectra=SpectraOptions(enabled=False))
    assert an.reports[0].changed == _changed(base_sd, merged) > 0
    notes = " ".join(an.notes)
    assert "only in" in notes and "score.weight" in notes and "lm_head.weight" in notes


def test_a_whole_tensor_of_a_module_neither_listed_nor_in_the_base_is_still_refused(tmp_path):
    """Only a module modules_to_save lists is a new head: a whole tensor for anything else the base does not hold
    (an adapter of another model) stays a one-line error naming it."""
    from safetensors.torch import save_file

    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    base = _base(tmp_path)
    lora = _peft(tmp_path, base, _lora(target_modules=["q_proj"]))
    tensors = load_file(str(lora / "adapter_model.safetensors"))
    save_file({**tensors, "base_model.model.pooler.weight": torch.ones(3, 16)}, str(lora / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        open_finetune(str(lora), open_checkpoint(base))
    assert "\n" not in str(err.value) and "'pooler.weight', which the base" in str(err.value)


def test_a_trained_copy_of_a_tied_head_is_still_the_merged_models_own_head(tmp_path):
    """modules_to_save=["lm_head"] on a Llama that ties its head and stores no lm_head.weight: the head the base
    does not store is no new module (it is the embedding's, untied by the copy), read as PEFT's merge: its copy of
    the head, and the embedding as it was."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    base = save_model(
        tiny_model("llama", seed=0, intermediate=INTER, kv_heads=2, tie=True), tmp_path / "b", dtype=False
    )
    assert "lm_head.weight" not in load_file(str(base / "model.safetensors"))
    lora = _peft(tmp_path, base, _lora(target_modules=["q_proj"], modules_to_save=["lm_head"]))
    ck, merged = open_finetune(str(lora), open_checkpoint(base)), _peft_merge(base, lora)
    assert "lm_head.weight" in ck.names and not any("new head" in n for n in ck.notes)
    for name in ck.names:
        assert torch.equal(ck.get(name), merged[name]), name
    assert not torch.equal(ck.get("lm_head.weight"), ck.get("model.embed_tokens.weight"))


# --- D5 -----------------------------------------------------------------------------------------------------------


def test_a_merged_model_that_kept_its_adapter_config_is_read_as_that_model(tmp_path):
    """merge_and_unload().save_pretrained(folder) with the adapter's adapter_config.json beside it: as a finetune it
    is the model saved there (changed = the entries PEFT's merge moved; before: "adapter_config.json without
    adapter_model.safetensors"), noted; where the folder also holds the adapter's weights, a finetune reads the
    adapter merged onto the base, and says so."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from subnetviz.analysis.updates import SpectraOptions, analyze_updates
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import MergedAdapter, adapter_folder, open_finetune
    from subnetviz.checkpoints.models import model_folder

    base = _base(tmp_path)
    lora = _peft(tmp_path, base, _lora(target_modules=["q_proj", "v_proj"]))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    PeftModel.from_pretrained(model, str(lora)).merge_and_unload().save_pretrained(tmp_path / "merged")
    merged = tmp_path / "merged"
    shutil.copy(lora / "adapter_config.json", merged / "adapter_config.json")
    base_sd, merged_sd = load_file(str(base / "model.safetensors")), load_file(str(merged / "model.safetensors"))
    assert adapter_folder(merged) is None and model_folder(merged) == merged
    ck = open_finetune(str(merged), open_checkpoint(base))
    assert not isinstance(ck, MergedAdapter) and any("adapter_config.json beside a full model" in n for n in ck.notes)
    rep = analyze_updates(str(base), [str(merged)], spectra=SpectraOptions(enabled=False)).reports[0]
    assert rep.changed == _changed(base_sd, merged_sd) > 0
    # the adapter's weights beside the model too: a finetune is the adapter merged onto the base given, noted
    shutil.copy(lora / "adapter_model.safetensors", merged / "adapter_model.safetensors")
    ck = open_finetune(str(merged), open_checkpoint(base))
    assert isinstance(ck, MergedAdapter) and any("also holds a full model's weights" in n for n in ck.notes)
    assert any("without the adapter" in n for n in open_checkpoint(merged).notes)  # as a base: the model saved


# --- D6 -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bias, modules_to_save, biases, replaced",
    [("all", None, 13, 0), ("all", ["ln_f"], 12, 2), ("lora_only", None, 2, 0)],
)
def test_biases_trained_by_the_bias_setting_are_labelled_as_such(tmp_path, bias, modules_to_save, biases, replaced):
    """GPT-2 LoRA on c_attn with bias="all" (every bias trained and saved whole: 2 layers × 6 + ln_f) or "lora_only"
    (the two c_attn biases): the note counts them as biases trained whole, and modules_to_save (ln_f: its weight
    and bias) apart (before: every one "replaced by modules_to_save"); the merge is PEFT's bit for bit."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    base = _base(tmp_path, "gpt2")
    config = _lora(target_modules=["c_attn"], fan_in_fan_out=True, bias=bias, modules_to_save=modules_to_save)
    lora = _peft(tmp_path, base, config)
    saved = [k for k in load_file(str(lora / "adapter_model.safetensors")) if "lora_" not in k]
    assert sum(k.endswith(".bias") and ".ln_f." not in k for k in saved) == (12 if bias == "all" else 2)
    ck = open_finetune(str(lora), open_checkpoint(base))
    merged = _peft_merge(base, lora)
    for name in ck.names:
        assert torch.equal(ck.get(name), merged[name]), name
    note = ck.notes[0]
    assert f"; {biases} bias(es) trained whole (bias = '{bias}')" in note
    assert (f"; {replaced} tensor(s) replaced by modules_to_save" in note) == bool(replaced)
    assert "modules_to_save" not in note or replaced


# --- cosmetic ------------------------------------------------------------------------------------------------------


def test_an_adapter_saved_as_a_pickle_is_named_so(tmp_path):
    """C1: a PEFT adapter saved as adapter_model.bin: the Workspace's line and the analysis's say so (before, the
    Workspace said "adapter_model.safetensors: cannot read (No such file or directory)")."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import adapter_info, open_finetune

    base = _base(tmp_path)
    lora = _peft(tmp_path, base, _lora(target_modules=["q_proj"]), safe_serialization=False)
    assert (lora / "adapter_model.bin").is_file() and not (lora / "adapter_model.safetensors").exists()
    for call in (lambda: adapter_info(lora), lambda: open_finetune(str(lora), open_checkpoint(base))):
        with pytest.raises(CheckpointError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(str(lora)) and "adapter_model.bin" in msg
        assert "only safetensors adapters are" in msg and "No such file" not in msg


def test_an_adapter_without_a_rank_is_listed_without_one(tmp_path):
    """C2: IA3 has no r: listed as "IA3 adapter" (before: "IA3 adapter (r=8)", the fallback); a LoRA keeps its r."""
    from peft import IA3Config

    from subnetviz.checkpoints.adapters import adapter_info

    base = _base(tmp_path)
    ia3 = _peft(tmp_path, base, IA3Config(target_modules=["q_proj", "down_proj"], feedforward_modules=["down_proj"]))
    assert "r" not in json.loads((ia3 / "adapter_config.json").read_text())
    assert adapter_info(ia3)["architecture"] == "IA3 adapter"
    lora = _peft(tmp_path, base, _lora(target_modules=["q_proj"]), name="lora")
    assert adapter_info(lora)["architecture"] == "LORA adapter (r=4)"


def test_a_folder_of_named_adapters_names_them(tmp_path):
    """C3: a model whose only adapter is named ("math") saves it in out/math: giving out says which folder to give
    (before: only "no weights found")."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    base = _base(tmp_path)
    _peft(tmp_path, base, _lora(target_modules=["q_proj"]), name="out", adapter_name="math")
    assert (tmp_path / "out" / "math" / "adapter_config.json").is_file()
    with pytest.raises(CheckpointError) as err:
        open_finetune(str(tmp_path / "out"), open_checkpoint(base))
    msg = str(err.value)
    assert "\n" not in msg and "no weights found" in msg and f"({tmp_path / 'out' / 'math'})" in msg
    assert open_finetune(str(tmp_path / "out" / "math"), open_checkpoint(base)).pairs  # that folder reads


def test_an_adapters_weight_file_given_as_a_model_says_to_give_its_folder(tmp_path):
    """C4: .../adapter/adapter_model.safetensors as the finetune: one line saying it is an adapter's weight file and
    to give its folder (before: "no tensor names in common" with the base, listing lora_A names)."""
    from subnetviz.analysis.updates import SpectraOptions, analyze_updates

    base = _base(tmp_path)
    lora = _peft(tmp_path, base, _lora(target_modules=["q_proj"]))
    with pytest.raises(SubnetvizError) as err:
        analyze_updates(str(base), [str(lora / "adapter_model.safetensors")], spectra=SpectraOptions(enabled=False))
    msg = str(err.value)
    assert "\n" not in msg and "a PEFT adapter's weight file" in msg and f"give its folder {lora} " in msg


# --- D1: One matrix of an adapter ------------------------------------------------------------------------------------


def test_one_matrix_of_an_adapter_counts_peft_s_merged_matrix(tmp_path):
    """The Sparsity page's One matrix opened the finetune alone, so an adapter was refused as "not a model" (what the
    analysis of the same pair had merged): its counts, total, per row and per column, are those of PEFT's merge."""
    import numpy as np
    from safetensors.torch import load_file as load

    from subnetviz.analysis.drill import matrix_update

    base = _base(tmp_path)
    folder = _peft(tmp_path, base, _lora(target_modules=["q_proj", "v_proj"]))
    name = "model.layers.0.self_attn.q_proj.weight"
    before = load(str(base / "model.safetensors"))[name]
    after = _peft_merge(base, folder)[name]
    diff = (before != after).numpy()
    upd = matrix_update(str(base), str(folder), name)
    assert upd.n_changed == int(diff.sum()) > 0
    np.testing.assert_array_equal(upd.rows_changed, diff.sum(axis=1))
    np.testing.assert_array_equal(upd.cols_changed, diff.sum(axis=0))
