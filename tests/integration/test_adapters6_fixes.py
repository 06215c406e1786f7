"""Adapters, sixth review (/tmp/review/adapters6).

Proves, each adapter built by PEFT's own get_peft_model + save_pretrained on a tiny transformers model:
- F1: an adapter that trains the input embedding whole (``modules_to_save=["embed_tokens"]``) on a base that ties its
  head to it and stores one tensor unties the two, as PEFT's merge_and_unload does: the merged model has
  ``tie_word_embeddings`` false and its own ``lm_head.weight``, the base's embedding unchanged (or with the head's
  LoRA merged into it), said in a note; every tensor equals PEFT's merge bit for bit, and the analysis of the adapter
  gives the numbers (numel, changed, density, per tensor) of the analysis of PEFT's own merged save. Before, the head
  stayed tied to the trained embedding, no ``lm_head.weight`` row, 2,048 parameters fewer in the denominator.
- F2: a file holding two adapters' factors (``.default.`` and ``.other.``, a dump of a PeftModel's state_dict) is
  merged as PEFT's loader reads it, the ``default`` adapter (DoRA magnitudes too), with a note naming the adapter left
  out; without a ``default`` it is refused in one line naming the adapters found; two factors of one kind for one
  module are refused, never one merged with the other's partner. Before, the factors sorted last were merged.
- F3: the modules adapter_config.json selects in the base that the file holds no factors for are the ones PEFT warns
  of ("Found missing adapter keys"), named in a note with their count and no update in the merge (PEFT's merge bit
  for bit); with ``init_lora_weights: false`` (random B in PEFT) the adapter is refused in one line. Before, nothing
  was said.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter

import pytest
import torch
from safetensors.torch import save_file

from subnetviz.analysis.updates import SpectraOptions, analyze_updates
from subnetviz.checkpoints import open_checkpoint
from subnetviz.checkpoints.adapters import open_finetune
from subnetviz.checkpoints.naming import strip_prefix
from subnetviz.errors import CheckpointError
from tests.integration.test_lora import _assert_as_peft, _bits, _peft_reloaded, _peft_saved

pytestmark = pytest.mark.timeout(300)

EMB, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def _edit_config(folder, **edit) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))


# --- F1 ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, lora, save",
    [
        ("llama", {"target_modules": ["q_proj"], "modules_to_save": ["embed_tokens"]}, None),
        ("llama", {"target_modules": ["q_proj", "lm_head"], "modules_to_save": ["embed_tokens"]}, None),
        ("llama", {"target_modules": ["q_proj"], "modules_to_save": ["embed_tokens"]}, {"save_embedding_layers": True}),
        ("gpt2", {"target_modules": ["c_attn"], "modules_to_save": ["wte"], "fan_in_fan_out": True}, None),
    ],
    ids=["embedding-saved", "embedding-saved-head-lora", "saved-with-embedding-layers", "gpt2-wte-saved"],
)
def test_an_embedding_trained_whole_unties_the_tied_head_as_peft_does(tmp_path, family, lora, save):
    """modules_to_save=["embed_tokens"] on a tied bf16 Llama that stores no head: PEFT wraps the embedding alone, so
    its merged model has tie_word_embeddings false, the trained embedding and a head of the base's embedding values
    (with the head's LoRA merged into them where it has one). The merged adapter is that model bit for bit, says so,
    and is analysed as PEFT's own merged save is (numel, changed, density and each tensor's changed count). The same
    for GPT-2's wte, and where save_embedding_layers saves the head too (with the base's values)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, folder, _ = _peft_saved(tmp_path, family, lora, dtype=None, tie=True, save=save)
    plain = open_checkpoint(base)
    emb = EMB if family == "llama" else "transformer.wte.weight"
    assert plain.tied_embeddings and HEAD not in plain.names and emb in plain.names
    ck = open_finetune(str(folder), plain)
    merged = _peft_reloaded(base, folder, torch.bfloat16)
    assert HEAD in ck.names and ck.config["tie_word_embeddings"] is False and not ck.tied_embeddings
    _assert_as_peft(ck, merged)
    assert not torch.equal(_bits(ck.get(emb)), _bits(plain.get(emb)))  # the trained copy
    head_lora = "lm_head" in lora["target_modules"]
    assert torch.equal(_bits(ck.get(HEAD)), _bits(plain.get(emb))) != head_lora  # the base's values (+ its LoRA)
    note = next(n for n in ck.notes if "unties the two as PEFT's merge does" in n)
    if save is None:  # (save_embedding_layers saves the head too, with the base's values: read as that copy)
        assert "a trained copy of the embedding (modules_to_save)" in note
        assert f"its {HEAD} is a tensor of its own" in note
        assert ("merged into them" in note) == head_lora and ("unchanged" in note) != head_lora

    # PEFT's own merged save, analysed as a full finetune, against the adapter analysed directly
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.bfloat16)
    peft_merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    assert peft_merged.config.tie_word_embeddings is False
    peft_merged.save_pretrained(tmp_path / "peft_merged")
    ours, theirs = analyze_updates(
        str(base), [str(folder), str(tmp_path / "peft_merged")], spectra=SpectraOptions(enabled=False)
    ).reports
    assert (ours.numel, ours.changed, ours.sparsity) == (theirs.numel, theirs.changed, theirs.sparsity)
    cols = ["key", "numel", "changed"]
    got = ours.tensors[cols].sort_values("key").reset_index(drop=True)
    want = theirs.tensors[cols].sort_values("key").reset_index(drop=True)
    assert got.equals(want)
    t = got.set_index("key")
    assert t.loc[strip_prefix(emb), "changed"] > 0
    assert (t.loc["lm_head.weight", "changed"] > 0) == head_lora


def test_a_tied_head_stays_tied_where_the_embedding_is_not_trained_whole(tmp_path):
    """The untying is the whole embedding's alone: a LoRA on the embedding (saved with its weight beside it) keeps
    the head tied, as in PEFT's merge, with no head of the merged model's own."""
    lora = {"target_modules": ["q_proj", "embed_tokens"]}
    base, folder, _ = _peft_saved(tmp_path, "llama", lora, dtype=None, tie=True, save={"save_embedding_layers": True})
    ck = open_finetune(str(folder), open_checkpoint(base))
    assert HEAD not in ck.names and ck.tied_embeddings
    _assert_as_peft(ck, _peft_reloaded(base, folder, torch.bfloat16))
    assert not any("a trained copy of the embedding" in n for n in ck.notes)


# --- F2 ------------------------------------------------------------------------------------------------------------


def _dump_two(tmp_path, names=("default", "other"), *, dora=False, extra: dict | None = None):
    """(base, adapter folder): a bf16 Llama and a PeftModel with two adapters on q_proj/v_proj, its whole LoRA
    state_dict (each factor under its adapter's name) dumped as adapter_model.safetensors, beside the first adapter's
    saved config."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tests.models import INTER, save_model, tiny_model

    base = save_model(tiny_model("llama", seed=0, intermediate=INTER, kv_heads=2), tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    cfg = dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, use_dora=dora)
    torch.manual_seed(3)
    pm = get_peft_model(model, LoraConfig(**cfg), adapter_name=names[0])
    pm.add_adapter(names[1], LoraConfig(**cfg))
    with torch.no_grad():  # (DoRA's magnitudes moved off their initial value too)
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn_like(p) * 0.1)
    tensors = {k: v.contiguous() for k, v in pm.state_dict().items() if "lora_" in k}
    tensors.update(extra or {})
    folder = tmp_path / "dump"
    folder.mkdir()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    pm.peft_config[names[0]].save_pretrained(str(folder))
    return base, folder


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_a_file_of_two_adapters_merges_the_one_peft_loads(tmp_path, dora):
    """`.default.` and `.other.` factors in one file: PEFT's loader reads 'default' and drops 'other'. The merge is
    'default''s, bit for bit PEFT's, with a note naming 'other' and the tensors left out; before, 'other' (sorted
    last) was merged."""
    base, folder = _dump_two(tmp_path, dora=dora)
    ck = open_finetune(str(folder), open_checkpoint(base))
    _assert_as_peft(ck, _peft_reloaded(base, folder, torch.bfloat16))
    keys = [k for a, b, _ in ck.pairs.values() for k in (a, b)] + list(ck.magnitudes.values())
    assert keys and all(".default." in k for k in keys)
    note = next(n for n in ck.notes if "holds the LoRA tensors of 2 adapters" in n)
    left = 4 * (3 if dora else 2)  # 4 modules: A, B (and the magnitude) each
    assert "the merge is the adapter 'default'" in note and f"the {left} tensor(s) of 'other' are left out" in note


def test_a_file_of_adapters_none_of_them_default_is_refused_in_one_line(tmp_path):
    """Without a 'default' adapter PEFT's loader reads none of the file's factors: refused, naming the adapters."""
    base, folder = _dump_two(tmp_path, names=("first", "second"))
    with pytest.raises(CheckpointError) as exc:
        open_finetune(str(folder), open_checkpoint(base))
    msg = str(exc.value)
    assert "\n" not in msg and "2 adapters ('first', 'second')" in msg and "'default'" in msg


def test_two_factors_of_one_kind_for_a_module_are_refused(tmp_path):
    """An A saved both without the adapter's name and under 'default' (both PEFT's default adapter): which one PEFT
    reads is a matter of order, so neither is taken, in one line naming both; before, the last one was merged."""
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    base, folder = _dump_two(tmp_path)
    from safetensors.torch import load_file

    tensors = {k: v for k, v in load_file(str(folder / "adapter_model.safetensors")).items() if ".other." not in k}
    tensors[f"{q}.lora_A.weight"] = torch.randn_like(tensors[f"{q}.lora_A.default.weight"])
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"two tensors are the lora_A of .*q_proj.*lora_A\..*lora_A\.") as exc:
        open_finetune(str(folder), open_checkpoint(base))
    assert "\n" not in str(exc.value)


# --- F3 ------------------------------------------------------------------------------------------------------------


def _peft_missing(base, folder, dtype=torch.bfloat16) -> tuple[set[str], dict]:
    """The modules PEFT's loader warns it found no adapter keys for, and its merge_and_unload state dict, on the base
    loaded in ``dtype`` (its stored one)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(model, str(folder))
    said = " ".join(str(w.message) for w in caught if "missing adapter keys" in str(w.message))
    missing = set(re.findall(r"'base_model\.model\.([^']+?)\.lora_[AB]\.default\.weight'", said))
    return missing, peft_model.merge_and_unload().state_dict()


@pytest.mark.parametrize(
    "family, trained, edit, kinds",
    [
        ("llama", ["q_proj", "k_proj"], {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}, "o_proj ×2"),
        ("llama", ["q_proj"], {"target_modules": r".*\.(q_proj|v_proj|down_proj)"}, "down_proj ×2, v_proj ×2"),
        ("llama", ["q_proj", "k_proj"], {"target_modules": "all-linear"}, "down_proj ×2, gate_proj ×2"),
        ("llama", ["q_proj"], {"target_modules": ["q_proj", "v_proj"], "layers_to_transform": [1]}, "v_proj ×1"),
        ("gpt2", ["c_attn"], {"target_modules": "all-linear"}, "c_fc ×2, c_proj ×4"),
        ("gpt2-released", ["c_attn"], {"target_modules": "all-linear"}, "c_fc ×2, c_proj ×4"),
        ("llama", ["q_proj", "k_proj"], {}, None),
    ],
    ids=["list", "regex", "all-linear", "layers_to_transform", "gpt2-all-linear", "gpt2-released-names", "as-trained"],
)
def test_modules_the_config_selects_without_factors_are_noted(tmp_path, family, trained, edit, kinds):
    """A config that selects modules the file holds no LoRA tensors for (copied from another run): those are the
    modules PEFT warns of, named in a note with their count; the merge is PEFT's bit for bit (B = 0 there, no
    update). The config the adapter was trained with gives no such note. A GPT-2 base stored under its release's
    names (``h.0.…``, PEFT's in memory ``transformer.h.0.…``) is matched under the names in memory."""
    from safetensors.torch import load_file

    lora = {"target_modules": trained, **({"layers_to_transform": [1]} if "layers_to_transform" in edit else {})}
    if family.startswith("gpt2"):
        lora["fan_in_fan_out"] = True
    base, folder, _ = _peft_saved(tmp_path, family.removesuffix("-released"), lora, dtype=None)
    if family == "gpt2-released":  # the names GPT-2's release stores: no transformer. prefix
        tensors = load_file(str(base / "model.safetensors"))
        released = {k.removeprefix("transformer."): v for k, v in tensors.items()}
        save_file(released, str(base / "model.safetensors"), metadata={"format": "pt"})
    _edit_config(folder, **edit)
    ck = open_finetune(str(folder), open_checkpoint(base))
    missing, merged = _peft_missing(base, folder)
    assert bool(missing) == bool(kinds)
    held = {n: merged[n] if n in merged else merged[f"transformer.{n}"] for n in ck.names}  # (released names)
    _assert_as_peft(ck, held)
    notes = [n for n in ck.notes if "selects" in n and "holds no LoRA tensors for" in n]
    if not kinds:
        assert not notes
        return
    assert len(notes) == 1, ck.notes
    (note,) = notes
    assert f"selects {len(missing)} module(s) of the base" in note and kinds in note and "no update" in note
    counts = sorted(Counter(m.rpartition(".")[2] for m in missing).items())  # PEFT's, by module name
    assert all(f"{k} ×{n}" in note for k, n in counts[:4]) and "initialisation" in note
    assert re.search(r"; e\.g\. (\S+)\)", note)[1] in missing


@pytest.mark.parametrize(
    "family, dtype, trained, selected",
    [
        ("llama", None, ["q_proj"], ["q_proj", "v_proj", "down_proj"]),
        ("llama", torch.float16, ["q_proj"], ["q_proj", "v_proj", "down_proj"]),
        ("llama", False, ["q_proj"], ["q_proj", "v_proj", "down_proj"]),
        ("gpt2", None, ["c_attn"], ["c_attn", "c_fc", "c_proj"]),
    ],
    ids=["llama-bf16", "llama-fp16", "llama-fp32", "gpt2-bf16"],
)
def test_dora_modules_selected_without_factors_merge_as_peft_merges_them(tmp_path, family, dtype, trained, selected):
    """DoRA: PEFT initialises a module's magnitude to its weight's norm, taken in the base's dtype, and its merge
    scales the weight by that over the float32 norm, so on a 16-bit base the modules the config selects without
    tensors in the file move by 1 ULP in some entries. Merged as PEFT merges them, bit for bit (a Conv1D's norm per
    output feature too), and the note says so; on a float32 base they are the base's."""
    lora = {"target_modules": trained, "use_dora": True, **({"fan_in_fan_out": True} if family == "gpt2" else {})}
    base, folder, _ = _peft_saved(tmp_path, family, lora, dtype=dtype)
    _edit_config(folder, target_modules=selected)
    plain = open_checkpoint(base)
    ck = open_finetune(str(folder), plain)
    missing, merged = _peft_missing(base, folder, torch.float32 if dtype is False else dtype or torch.bfloat16)
    _assert_as_peft(ck, {n: merged[n] if n in merged else merged[f"transformer.{n}"] for n in ck.names})
    (note,) = (n for n in ck.notes if "holds no LoRA tensors for" in n)
    assert f"selects {len(missing)} module(s)" in note
    moved = [n for n in plain.names if ("v_proj" in n or "down_proj" in n or ".c_fc." in n or "attn.c_proj" in n)]
    changed = [n for n in moved if not torch.equal(_bits(ck.get(n)), _bits(plain.get(n)))]
    if dtype is False:
        assert not changed and "DoRA" not in note
    else:
        assert changed and "with DoRA, PEFT initialises each one's magnitude m" in note and "1 ULP" in note


def test_a_dora_embedding_selected_without_factors_is_refused_in_one_line(tmp_path):
    """DoRA on an embedding is not merged here (as for one the file holds factors for): an embedding the config selects
    without tensors in the file, which PEFT's merge would rescale on a 16-bit base, is refused in one line."""
    base, folder, _ = _peft_saved(tmp_path, "llama", {"target_modules": ["q_proj"], "use_dora": True}, dtype=None)
    _edit_config(folder, target_modules=["q_proj", "embed_tokens"])
    with pytest.raises(CheckpointError, match=r"use_dora is set and the config selects the embedding .*embed_tokens"):
        open_finetune(str(folder), open_checkpoint(base))


def test_modules_selected_without_factors_under_random_init_are_refused(tmp_path):
    """init_lora_weights false: PEFT initialises B at random on the modules the file holds no factors for, so its
    merge adds an untrained update there: refused in one line naming the count and a module."""
    base, folder, _ = _peft_saved(tmp_path, "llama", {"target_modules": ["q_proj", "k_proj"]}, dtype=None)
    _edit_config(folder, target_modules=["q_proj", "k_proj", "v_proj"], init_lora_weights=False)
    with pytest.raises(CheckpointError) as exc:
        open_finetune(str(folder), open_checkpoint(base))
    msg = str(exc.value)
    assert "\n" not in msg and "init_lora_weights is false" in msg
    assert "2 module(s)" in msg and "v_proj ×2" in msg and "random" in msg
    _edit_config(folder, target_modules=["q_proj", "k_proj"])  # the config it was trained with: read
    assert open_finetune(str(folder), open_checkpoint(base)).pairs
