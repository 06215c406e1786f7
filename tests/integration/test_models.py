"""Checkpoints loaded as transformers models (subnetviz.checkpoints.models): the files the comparison reads.

Proves: a merged model saved where its PEFT adapter was (config.json, model.safetensors *and*
adapter_config.json + adapter_model.safetensors, written by PEFT and transformers) loads as the merged
weights, where ``from_pretrained`` with PEFT installed applies the adapter a second time; a cached hub id
loads from its snapshot without opening a network connection; Behaviour runs such a folder as the
merged model (the same KL to the base as a copy of the merged model alone).
"""

from __future__ import annotations

import socket

import pytest
import torch

from tests.ckpt_fixtures import fake_hub_cache
from tests.models import INTER, save_model, tiny_model


@pytest.fixture()
def merged_save(tmp_path):
    """A LoRA run's folder after merging: PEFT's adapter files and the merged model in one folder."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = tiny_model("llama", seed=0, intermediate=INTER, kv_heads=2, tie=False)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj"], init_lora_weights=False)
    )
    folder = tmp_path / "run"
    peft_model.save_pretrained(folder)
    merged = peft_model.merge_and_unload()
    save_model(merged, folder, dtype=False)
    return folder, merged.state_dict()


def test_a_merged_save_beside_its_adapter_loads_as_the_merged_weights(merged_save):
    from transformers import AutoModelForCausalLM

    from subnetviz.checkpoints.models import load_causal_lm

    folder, weights = merged_save
    model = load_causal_lm(folder)
    params = dict(model.named_parameters())
    assert not [n for n in params if "lora" in n]
    for name, p in params.items():
        assert torch.equal(p, weights[name]), name
    # what the plain call does with PEFT installed: the adapter applied on top of the merged weights
    plain = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    assert [n for n, _ in plain.named_parameters() if "lora" in n]
    assert sorted(p.name for p in folder.iterdir()) == sorted(  # the folder itself is left as it was
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "README.md",
        ]
    )


def test_a_link_loop_beside_a_merged_save_does_not_stop_the_load(merged_save):
    """The adapter's files are left out through a folder of links; an entry that links to itself ended in
    Path.resolve's RuntimeError (a traceback), now it is linked as it is and never read."""
    from subnetviz.checkpoints.models import load_causal_lm

    folder, weights = merged_save
    (folder / "notes.txt").symlink_to("notes.txt")
    params = dict(load_causal_lm(folder).named_parameters())
    assert all(torch.equal(p, weights[name]) for name, p in params.items())


def test_a_cached_hub_id_loads_without_the_network(tmp_path, monkeypatch):
    from subnetviz.checkpoints.models import load_causal_lm, model_folder

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    source = save_model(tiny_model("gpt2", seed=3, bos_token_id=0, eos_token_id=0), tmp_path / "src", dtype=False)
    snap = fake_hub_cache(tmp_path / "hub", "someorg/tiny-gpt2", source)
    (snap / "generation_config.json").unlink()  # an optional file the hub would be asked for
    tried = []

    def refuse(self, address):
        tried.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    assert model_folder("someorg/tiny-gpt2") == snap
    model = load_causal_lm("someorg/tiny-gpt2")
    assert tried == []
    reference = tiny_model("gpt2", seed=3, bos_token_id=0, eos_token_id=0).state_dict()
    for name, p in model.named_parameters():
        assert torch.equal(p, reference[name]), name


def test_behaviour_runs_a_merged_save_as_the_weights_it_compares(tmp_path):
    """Behaviour of the merged save and of a copy of the merged model alone: the same numbers (before,
    with PEFT installed, the model was built with the adapter on top and refused for its LoRA parameters;
    accuracy and the bigram analysis ran it so, twice adapted)."""
    import shutil

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from subnetviz.analysis.behavior import behavior
    from subnetviz.analysis.behavior_data import Prompt
    from tests.models import char_tokenizer, make_tiny_llama

    base = make_tiny_llama(tmp_path / "base", dtype=torch.float32)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32), lora)
    run = tmp_path / "run"
    peft_model.save_pretrained(run)
    save_model(peft_model.merge_and_unload(), run, dtype=False, tokenizer=char_tokenizer())
    alone = shutil.copytree(run, tmp_path / "merged", ignore=shutil.ignore_patterns("adapter_*"))
    prompts = [Prompt("12+34=", "46"), Prompt("5+5=", "10")]
    rep = behavior(str(base), [str(run), str(alone)], prompts, curve=None, random_control=False, device="cpu")
    kl = rep.summary.set_index("model")["kl_forward"]
    assert kl[run.name] == kl[alone.name] > 0


def test_a_file_linking_outside_the_roots_is_refused_before_loading(tmp_path, monkeypatch):
    """transformers opens the tokenizer and generation files too: with the roots enforced (as on the web
    server), a tokenizer.json linking outside them is refused naming it, not read."""
    from subnetviz.checkpoints.models import load_causal_lm, load_tokenizer
    from subnetviz.errors import PathNotAllowedError
    from tests.models import make_tiny_llama

    folder = make_tiny_llama(tmp_path / "root" / "model")
    outside = tmp_path / "elsewhere" / "tokenizer.json"
    outside.parent.mkdir()
    (folder / "tokenizer.json").rename(outside)
    (folder / "tokenizer.json").symlink_to(outside)
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path / "root"))
    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    from subnetviz.bigram.stats import corpus_from_text

    corpus = tmp_path / "root" / "corpus.txt"
    corpus.write_text("12+3=15\n")
    for load in (load_tokenizer, load_causal_lm, lambda f: corpus_from_text(corpus, f, seq_len=4)):
        with pytest.raises(PathNotAllowedError, match="tokenizer.json in .*model: leads outside the folders"):
            load(folder)
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    assert load_tokenizer(folder)("12+3").input_ids


# --- the weights file transformers reads is the one the comparison read and checked ------------------------
def _deep(n: int):
    """A list nested ``n`` deep: a valid state-dict value for ``torch.load(weights_only=True)``, past the
    pickle walk's 100 levels (a tuple 150,000 deep crashed the process as it was hashed)."""
    x: object = 0
    for _ in range(n):
        x = [x]
    return x


@pytest.fixture()
def bin_folder(tmp_path):
    """A Llama folder whose weights are a ``torch.save`` pytorch_model.bin (seed 2), and the state dict saved."""
    from safetensors.torch import load_file

    folder = save_model(tiny_model("llama", seed=1, intermediate=INTER, kv_heads=2), tmp_path / "ckpt", dtype=False)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    state = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(2)) for k, v in state.items()}
    torch.save(state, folder / "pytorch_model.bin")
    return folder, state


def test_a_bin_beside_another_safetensors_is_walked_and_compared_as_transformers_loads_it(bin_folder):
    """The folder's model is its ``pytorch_model.bin``; another ``.safetensors`` beside it (a mask, as the
    RL-subnetwork code keeps them) is not part of it. The weight pages read that other file as the model (and
    Behaviour refused the folder); both now read the ``.bin``, as transformers does, and its pickle is walked
    before torch reads it."""
    from safetensors.torch import save_file

    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.models import load_causal_lm
    from subnetviz.errors import CheckpointError

    folder, state = bin_folder
    save_file({"mask": torch.ones(3)}, str(folder / "extra.safetensors"))
    ck = open_checkpoint(folder)
    assert [f.name for f in ck.files] == ["pytorch_model.bin"] and sorted(ck.names) == sorted(state)
    assert any("extra.safetensors" in n and "not read" in n for n in ck.notes), ck.notes
    torch.save({**state, "_meta": _deep(150)}, folder / "pytorch_model.bin")  # the walk refuses it; torch reads it
    with pytest.raises(CheckpointError, match="nests objects more than 100 deep") as exc:
        load_causal_lm(folder)
    assert "\n" not in str(exc.value)


def test_a_bin_transformers_reads_has_its_pickle_walked_first(bin_folder):
    from subnetviz.checkpoints.models import load_causal_lm
    from subnetviz.errors import CheckpointError

    folder, state = bin_folder
    model = load_causal_lm(folder)  # a plain state dict: loaded, its weights the file's
    for name, value in state.items():
        assert torch.equal(model.state_dict()[name], value), name
    torch.save({**state, "_meta": _deep(150)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="nests objects more than 100 deep"):
        load_causal_lm(folder)


def test_safetensors_beside_a_bin_are_what_runs(bin_folder):
    """``model.safetensors`` beside a ``pytorch_model.bin``: both readers take the safetensors, and transformers is
    held to them (use_safetensors), the ``.bin`` never read."""
    from safetensors.torch import save_file

    from subnetviz.checkpoints.models import load_causal_lm

    folder, state = bin_folder
    other = {k: torch.full_like(v, 0.5) for k, v in state.items()}
    save_file(other, str(folder / "model.safetensors"))
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle at all")  # read, it would fail the load
    model = load_causal_lm(folder)
    for name, value in other.items():
        assert torch.equal(model.state_dict()[name], value), name


def test_a_config_naming_other_weights_is_what_both_read(bin_folder):
    """``transformers_weights`` in config.json makes transformers read the file it names, whatever else is there;
    the weight pages read that file too (they read ``model.safetensors``, and Behaviour refused the folder)."""
    import json

    from safetensors.torch import save_file

    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.models import load_causal_lm

    folder, state = bin_folder
    (folder / "pytorch_model.bin").unlink()
    save_file(state, str(folder / "model.safetensors"))
    save_file({k: torch.zeros_like(v) for k, v in state.items()}, str(folder / "other.safetensors"))
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "transformers_weights": "other.safetensors"}))
    ck = open_checkpoint(folder)
    assert [f.name for f in ck.files] == ["other.safetensors"]
    assert all(not ck.get(n).any() for n in ck.names)  # the zeros of other.safetensors
    model = load_causal_lm(folder)
    assert all(not v.any() for k, v in model.state_dict().items() if k in state)
