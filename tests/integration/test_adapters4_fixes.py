"""Adapters, fourth review (/tmp/review/adapters4).

Proves:
- F1: LoRA tensors of modules adapter_config.json does not select (``target_modules`` as a list or a regular
  expression, ``all-linear``, ``exclude_modules``, ``modules_to_save``, ``layers_to_transform`` under
  ``layers_pattern``) are left out of the merge, as PEFT's loader drops them, with a note naming the first such
  module and the key that rules it out: every merged tensor equals PEFT's own ``merge_and_unload`` of the saved
  folder bit for bit, and the changed-entry counts of the analysis are PEFT's (before, every pair in the file was
  merged: twice the changed entries for a narrowed ``target_modules``). A module's DoRA magnitude, its bias
  (``bias: all``) and the embedding weight saved beside its LoRA (``save_embedding_layers``) go with it. A config
  that selects none of the file's modules is refused in one line naming the tensor and the key. Adapters whose
  config agrees with the file (embedding LoRA, ``modules_to_save``, trainable tokens, ``layers_to_transform``)
  merge as before, with no such note.
- F2: the "trained on another model" note fires for a base release against its -Instruct / -Chat / -it / -Base /
  -Coder / -Math model (either way round), and stays silent for local re-saves (-bf16, -fp16, -hf, -local, -copy, a
  folder named like the hub id, a quantized copy QLoRA trained on).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from subnetviz.analysis.updates import SpectraOptions, analyze_updates
from subnetviz.checkpoints import open_checkpoint
from subnetviz.checkpoints.adapters import _other_base_note, open_finetune
from subnetviz.errors import CheckpointError

pytestmark = pytest.mark.timeout(300)

_NOTE = "adapter_config.json does not select"


def _peft_saved(tmp_path, family: str, lora: dict, *, save=None):
    """(base folder, adapter folder): a tiny ``family`` model saved in bf16 and PEFT's LoRA on it, every trainable
    tensor moved off its initial value (tests/integration/test_lora.py's helper)."""
    from tests.integration.test_lora import _peft_saved as peft_saved

    base, folder, _ = peft_saved(tmp_path, family, lora, dtype=None, save=save)
    return base, folder


def _edit_config(folder, edit: dict) -> None:
    path = folder / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(edit)
    path.write_text(json.dumps(cfg))


def _peft_merged(base, folder) -> dict[str, torch.Tensor]:
    """PEFT's own merge of the saved folder as anyone who loads it gets it: the bf16 base,
    ``PeftModel.from_pretrained`` reading the (edited) adapter_config.json, then ``merge_and_unload``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.bfloat16)
    return PeftModel.from_pretrained(model, str(folder)).merge_and_unload().state_dict()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


def _assert_as_peft(ck, merged: dict) -> None:
    for name in ck.names:
        got, want = ck.get(name), merged[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(_bits(got), _bits(want)), name


# (lora it was trained with, the config edit, a module left out, the config key named, modules left out)
CASES = {
    "target_modules-narrowed": (
        {"target_modules": ["q_proj", "v_proj"]},
        {"target_modules": ["q_proj", "k_proj"]},
        "model.layers.0.self_attn.v_proj",
        "target_modules ['q_proj', 'k_proj'] does not list it",
        2,
    ),
    "target_modules-regex": (
        {"target_modules": ["q_proj", "v_proj"]},
        {"target_modules": r".*\.q_proj"},
        "model.layers.0.self_attn.v_proj",
        r"target_modules '.*\\.q_proj' does not match it",
        2,
    ),
    "layers_to_transform-with-pattern": (
        {"target_modules": ["q_proj", "v_proj"]},
        {"layers_to_transform": [1], "layers_pattern": "layers"},
        "model.layers.0.self_attn.q_proj",
        "its layer 0 is not in layers_to_transform [1]",
        2,
    ),
    "layers_to_transform-one-index": (
        {"target_modules": ["q_proj", "v_proj"]},
        {"layers_to_transform": 0},
        "model.layers.1.self_attn.q_proj",
        "its layer 1 is not in layers_to_transform 0",
        2,
    ),
    # a list entry that is a whole module name is taken whatever layers_to_transform says (PEFT's rule)
    "layers_to_transform-and-a-whole-name": (
        {"target_modules": ["q_proj", "v_proj"]},
        {"target_modules": ["model.layers.0.self_attn.q_proj", "v_proj"], "layers_to_transform": [1]},
        "model.layers.0.self_attn.v_proj",
        "its layer 0 is not in layers_to_transform [1]",
        2,
    ),
    "exclude_modules-list": (
        {"target_modules": ["q_proj", "v_proj"]},
        {"exclude_modules": ["v_proj"]},
        "model.layers.0.self_attn.v_proj",
        "exclude_modules lists it",
        2,
    ),
    "exclude_modules-regex": (
        {"target_modules": ["q_proj", "v_proj"]},
        {"exclude_modules": r".*\.1\.self_attn\..*"},
        "model.layers.1.self_attn.q_proj",
        "exclude_modules '.*",
        2,
    ),
    # the output head is left out and an embedding is no linear layer: all-linear adapts q/k/v/o and the MLP
    "all-linear": (
        {"target_modules": ["q_proj", "embed_tokens", "lm_head"]},
        {"target_modules": "all-linear"},
        "lm_head",
        "target_modules is 'all-linear', which leaves out the output head",
        2,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lora_tensors_the_config_does_not_select_are_left_out_as_peft_leaves_them(tmp_path, case):
    """The file holds LoRA factors of modules its (edited) adapter_config.json does not select. PEFT builds LoRA
    layers only where the config selects them and drops the other tensors when it loads the file (no warning):
    the merge here equals PEFT's merge_and_unload bit for bit, the note names a module left out and the key that
    rules it out, and the analysis counts PEFT's changed entries. Before, every pair in the file was merged."""
    lora, edit, module, why, left_out = CASES[case]
    base, folder = _peft_saved(tmp_path, "llama", lora)
    _edit_config(folder, edit)
    merged = _peft_merged(base, folder)
    plain = open_checkpoint(base)
    ck = open_finetune(str(folder), plain)
    _assert_as_peft(ck, merged)
    notes = [n for n in ck.notes if n.startswith(_NOTE)]
    assert len(notes) == 1, ck.notes
    assert f"{_NOTE} {left_out} module(s)" in notes[0] and f"{module} (" in notes[0] and why in notes[0], notes[0]
    assert "as PEFT's merge_and_unload leaves them" in notes[0]
    rep = analyze_updates(str(base), [str(folder)], spectra=SpectraOptions(enabled=False)).reports[0]
    t = rep.tensors.set_index("name")
    for name in plain.names:
        want = int((_bits(merged[name]) != _bits(plain.get(name))).sum())
        assert t.loc[name, "changed"] == want, name
    assert t["changed"].sum() > 0


def test_a_lora_on_a_module_saved_whole_is_left_out(tmp_path):
    """A file with a trained copy of lm_head (modules_to_save) and LoRA factors of lm_head too (an older PEFT's, or
    a config edited to target it): PEFT adapts no module it saves whole, so its merge is the trained copy, without
    the LoRA. Before, the copy + s·B·A was merged."""
    from safetensors.torch import load_file, save_file

    base, folder = _peft_saved(tmp_path, "llama", {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]})
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    torch.manual_seed(2)
    tensors["base_model.model.lm_head.lora_A.weight"] = torch.randn(4, 16)
    tensors["base_model.model.lm_head.lora_B.weight"] = torch.randn(64, 4)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    _edit_config(folder, {"target_modules": ["q_proj", "lm_head"]})
    ck = open_finetune(str(folder), open_checkpoint(base))
    _assert_as_peft(ck, _peft_merged(base, folder))
    assert "lm_head.weight" not in ck.pairs and "lm_head.weight" in ck.replaced
    note = next(n for n in ck.notes if n.startswith(_NOTE))
    assert "lm_head (modules_to_save lists 'lm_head', and PEFT adapts no module it saves whole)" in note


@pytest.mark.parametrize(
    "lora, edit, gone",
    [
        # DoRA: the magnitude of the module left out goes with it
        (
            {"target_modules": ["c_attn", "c_fc"], "use_dora": True, "fan_in_fan_out": True},
            {"target_modules": ["c_attn"]},
            "h.0.mlp.c_fc.lora_magnitude_vector",
        ),
        # bias: all saves a LoRA module's bias as <module>.base_layer.bias: PEFT's loader drops it with the layer
        (
            {"target_modules": ["c_attn", "c_fc"], "bias": "all", "fan_in_fan_out": True},
            {"target_modules": ["c_attn"]},
            "h.0.mlp.c_fc.base_layer.bias",
        ),
    ],
    ids=["dora-magnitude", "bias-all"],
)
def test_what_a_left_out_module_saves_beside_its_factors_goes_with_it(tmp_path, lora, edit, gone):
    """GPT-2 (Conv1D): a module the config does not select takes its DoRA magnitude and its bias (``bias: all``)
    with it, as PEFT's loader drops them; equal to PEFT's merge bit for bit (before: the c_fc pair merged)."""
    base, folder = _peft_saved(tmp_path, "gpt2", lora)
    _edit_config(folder, edit)
    ck = open_finetune(str(folder), open_checkpoint(base))
    _assert_as_peft(ck, _peft_merged(base, folder))
    assert not any(".c_fc." in t for t in (*ck.pairs, *ck.magnitudes, *ck.replaced))
    assert any(n.startswith(_NOTE) and "transformer.h.0.mlp.c_fc (target_modules ['c_attn']" in n for n in ck.notes)
    assert any(k.endswith(gone) for _, keys in ck._unselected.values() for k in keys)  # (the tensor PEFT drops)


def test_an_embedding_lora_left_out_takes_its_saved_embedding_with_it(tmp_path):
    """An embedding LoRA saved with its embedding weight (save_embedding_layers: <module>.base_layer.weight) whose
    module the config no longer selects: both left out, the base's embedding kept, as PEFT loads it."""
    lora = {"target_modules": ["q_proj", "embed_tokens"]}
    base, folder = _peft_saved(tmp_path, "llama", lora, save={"save_embedding_layers": True})
    _edit_config(folder, {"target_modules": ["q_proj"]})
    plain = open_checkpoint(base)
    ck = open_finetune(str(folder), plain)
    _assert_as_peft(ck, _peft_merged(base, folder))
    emb = "model.embed_tokens.weight"
    assert emb not in ck.pairs and emb not in ck.replaced and torch.equal(ck.get(emb), plain.get(emb))
    note = next(n for n in ck.notes if n.startswith(_NOTE))
    assert "model.embed_tokens (target_modules ['q_proj'] does not list it)" in note and "3 tensor(s)" in note


def test_a_config_that_selects_none_of_the_files_modules_is_refused(tmp_path):
    """Every LoRA pair of the file outside what the config selects (the config names modules the base has, but
    not these): merged, the adapter would be no update at all, so one line names the first tensor and the key."""
    base, folder = _peft_saved(tmp_path, "llama", {"target_modules": ["q_proj", "v_proj"]})
    _edit_config(folder, {"target_modules": ["k_proj"]})
    with pytest.raises(CheckpointError, match=r"selects none of the 4 module\(s\)") as err:
        open_finetune(str(folder), open_checkpoint(base))
    text = str(err.value)
    assert "\n" not in text and "base_model.model.model.layers.0.self_attn." in text
    assert "target_modules ['k_proj'] does not list it" in text and "Give the adapter_config.json" in text


@pytest.mark.parametrize(
    "lora, save",
    [
        (
            {"target_modules": ["q_proj", "embed_tokens"], "modules_to_save": ["lm_head"]},
            {"save_embedding_layers": True},
        ),
        ({"target_modules": ["v_proj"], "trainable_token_indices": [3, 4], "layers_to_transform": [1]}, None),
        ({"target_modules": ["q_proj", "v_proj"], "exclude_modules": ["v_proj"]}, None),
        ({"target_modules": r".*\.(q|v)_proj", "modules_to_save": ["lm_head"]}, None),
    ],
    ids=["embedding-lora-and-saved-head", "tokens-and-layers", "excluded-at-training", "regex-and-saved-head"],
)
def test_adapters_whose_config_agrees_with_the_file_merge_as_before(tmp_path, lora, save):
    """Adapters PEFT saved as they are (embedding LoRA with its saved embedding, modules_to_save, trainable tokens,
    layers_to_transform, exclude_modules, a regex): nothing left out, no note, equal to PEFT's merge."""
    base, folder = _peft_saved(tmp_path, "llama", lora, save=save)
    ck = open_finetune(str(folder), open_checkpoint(base))
    _assert_as_peft(ck, _peft_merged(base, folder))
    assert not any(n.startswith(_NOTE) for n in ck.notes) and ck.pairs


@pytest.mark.parametrize(
    "edit, says",
    [
        ({"layers_to_transform": "1"}, "layers_to_transform is '1'; expected a layer index or a list of them"),
        ({"layers_to_transform": [1], "layers_pattern": 5}, "layers_pattern is '5'; expected a name or a list"),
        ({"exclude_modules": "(v_proj"}, r"exclude_modules '\(v_proj' is not a valid regular expression"),
    ],
)
def test_selection_keys_someone_else_wrote_are_checked(tmp_path, edit, says):
    """The keys that now decide what is merged are checked: one line naming the key, not a TypeError."""
    base, folder = _peft_saved(tmp_path, "llama", {"target_modules": ["q_proj"]})
    _edit_config(folder, edit)
    with pytest.raises(CheckpointError, match=says) as err:
        open_finetune(str(folder), open_checkpoint(base))
    assert "\n" not in str(err.value)


# --- F2: the "trained on another model" note --------------------------------------------------------------


def _noted(said: str, spec: str, root: str | None = None) -> bool:
    notes = _other_base_note(said, SimpleNamespace(spec=spec, root=root))
    assert len(notes) <= 1
    return bool(notes)


@pytest.mark.parametrize(
    "said, spec",
    [
        ("Qwen/Qwen2.5-0.5B-Instruct", "/models/Qwen2.5-0.5B"),
        ("Qwen/Qwen2.5-0.5B", "/models/Qwen2.5-0.5B-Instruct"),
        ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B"),
        ("meta-llama/Llama-2-7b-chat-hf", "/models/Llama-2-7b-hf"),
        ("google/gemma-2-2b-it", "/models/gemma-2-2b"),
        ("google/gemma-2-2b", "/models/gemma-2-2b-it-bf16"),
        ("Qwen/Qwen3-0.6B-Base", "/models/Qwen3-0.6B"),
        ("Qwen/Qwen2.5-1.5B-Math", "/models/Qwen2.5-1.5B"),
        ("Qwen/Qwen2.5-7B", "/models/Qwen2.5-7B-Coder"),
        ("/home/me/hf/Qwen2.5-0.5B-Instruct", "/models/Qwen2.5-0.5B"),
        ("Qwen/Qwen2.5-0.5B-Instruct", "/hub/models--Qwen--Qwen2.5-0.5B/snapshots/" + "0" * 40),
        ("meta-llama/Llama-3.1-8B", "/models/Qwen2.5-0.5B"),
        ("meta-llama/Meta-Llama-3-8B-Instruct", "/models/llama-3-8b"),  # a prefix dropped, a variant word added
        ("mistralai/Mistral-7B-Instruct-v0.2", "/models/mistral-7b-v0.1"),
    ],
)
def test_a_base_and_its_instruct_model_are_told_apart(said, spec):
    """A base release and its -Instruct / -Chat / -it / -Base / -Coder / -Math model have the same shapes and are
    other models: the note fires, either way round (before, a name holding the other's was taken as the same)."""
    assert _noted(said, spec)


@pytest.mark.parametrize(
    "said, spec, root",
    [
        ("Qwen/Qwen2.5-0.5B", "/models/Qwen2.5-0.5B-bf16", None),
        ("Qwen/Qwen2.5-0.5B", "/models/Qwen2.5-0.5B-fp16", None),
        ("Qwen/Qwen2.5-0.5B", "/models/qwen2.5-0.5b-hf", None),
        ("Qwen/Qwen2.5-0.5B", "/models/Qwen2.5-0.5B-local", None),
        ("Qwen/Qwen2.5-0.5B", "/models/Qwen2.5-0.5B-copy", None),
        ("Qwen/Qwen2.5-0.5B", "/models/Qwen2.5-0.5B/bf16", None),
        ("Qwen/Qwen2.5-0.5B-Instruct", "/models/Qwen/Qwen2.5-0.5B-Instruct", None),
        ("Qwen/Qwen2.5-0.5B-Instruct", "/models/Qwen--Qwen2.5-0.5B-Instruct", None),
        ("Qwen/Qwen2.5-0.5B-Instruct", "/models/Qwen_Qwen2.5-0.5B-Instruct-bf16/", None),
        ("unsloth/Qwen2.5-0.5B-Instruct-bnb-4bit", "/models/Qwen2.5-0.5B-Instruct", None),
        ("Qwen/Qwen2.5-7B-Instruct-AWQ", "Qwen/Qwen2.5-7B-Instruct", "/hub/models--Qwen--Qwen2.5-7B-Instruct/s"),
        ("/data/runs/Qwen2.5-0.5B/checkpoint-500", "/models/Qwen2.5-0.5B", None),
        ("meta-llama/Meta-Llama-3-8B", "/models/llama-3-8b", None),  # the publisher's prefix dropped
        ("mistralai/Mistral-7B-v0.1", "/models/mistral-7b", None),  # the version dropped
        ("/models/llama-3-8b", "meta-llama/Meta-Llama-3-8B", None),
        ("", "/models/Qwen2.5-0.5B", None),
    ],
)
def test_a_local_resave_of_the_same_model_is_not_noted(said, spec, root):
    """A re-save in another dtype or format, a local copy, a folder named like the hub id, a quantized copy a
    QLoRA trained on: the same model, no note."""
    assert not _noted(said, spec, root)


def test_an_instruct_adapter_on_the_base_release_is_noted_end_to_end(tmp_path):
    """The report's case through the reader: an adapter saying Qwen/Qwen2.5-0.5B-Instruct merged onto a folder
    named Qwen2.5-0.5B gets the note; onto a folder named Qwen2.5-0.5B-Instruct-bf16 it does not."""
    import shutil

    base, folder = _peft_saved(tmp_path, "llama", {"target_modules": ["q_proj"]})
    _edit_config(folder, {"base_model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"})
    for name, noted in (("Qwen2.5-0.5B", True), ("Qwen2.5-0.5B-Instruct-bf16", False)):
        copy = shutil.copytree(base, tmp_path / name)
        ck = open_finetune(str(folder), open_checkpoint(copy))
        found = [n for n in ck.notes if "adapter_config.json says it was trained on" in n]
        assert len(found) == noted, (name, ck.notes)
