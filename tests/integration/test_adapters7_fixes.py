"""Review "adapters", seventh pass: the two confirmed findings.

- F1: PEFT's trainable tokens (``trainable_token_indices``) on a resized vocabulary, made as people make them
  (``tokenizer.add_tokens``, ``resize_token_embeddings``, then the new ids trained), merge as PEFT's own
  ``merge_and_unload`` merges them, bit for bit, with the 72-row embedding and head PEFT's merged model has: new ids
  on an untied Llama (fp32) and on a tied Qwen2 (bf16), the old ids on a resized vocabulary, and a head with its own
  token adapter. PEFT saves the resized embedding whole beside the tokens (``<module>.token_adapter.base_layer.weight``,
  ``save_embedding_layers``) and its loader loads it. Before: the new ids were refused ("index 64 outside the 64
  rows"; on the tied base "targets 'lm_head.weight', which the base does not hold"), and the old ids on the resized
  vocabulary were merged into the base's 64 rows beside a 72-row head, with a note saying PEFT drops the embedding it
  loads and the head's copy counted as modules_to_save. The notes now say the vocabulary was resized from 64 to 72.
- F2: a folder holding ``adapter_model.safetensors`` without its ``adapter_config.json`` (a partial download, the
  weights copied alone) is refused in one line saying the config is missing and what to do, by the CLI and on the
  Workspace page. Before it was read as a Llama of LoRA factors ("no tensor names in common").

Every adapter is made by the installed peft (get_peft_model + save_pretrained); nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from subnetviz.analysis.updates import SpectraOptions, analyze_updates
from subnetviz.checkpoints import open_checkpoint
from subnetviz.checkpoints.adapters import open_finetune
from subnetviz.errors import CheckpointError
from tests.integration.test_lora import _assert_as_peft, _bits

VOCAB, ADDED = 64, 8  # the base's vocabulary, and the tokens added before training (72 rows)
NEW = ["<new0>", "<new1>", "<new6>"]  # three of the added tokens, trained


def _base(tmp_path, family: str):
    """A tiny base and its tokenizer of VOCAB tokens: an untied fp32 Llama, or a tied bf16 Qwen2."""
    import transformers as T

    from tests.models import char_tokenizer, save_model, tiny_model

    tok = char_tokenizer()
    tok.add_tokens([f"<w{i}>" for i in range(VOCAB - len(tok))])
    assert len(tok) == VOCAB
    if family == "llama":
        model, dtype = tiny_model("llama", vocab=VOCAB, hidden=32, intermediate=64, kv_heads=2, tie=False), False
    else:
        cfg = T.Qwen2Config(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=True,
        )
        torch.manual_seed(0)
        model, dtype = T.Qwen2ForCausalLM(cfg), torch.bfloat16
    return save_model(model, tmp_path / f"base-{family}", dtype=dtype, tokenizer=tok), dtype or torch.float32


def _adapter(tmp_path, base, dtype, tokens, *, name="adapter", **save):
    """A LoRA on q_proj with trainable tokens, made as people make it: tokens added to the tokenizer, the embedding
    resized to it, the listed ``tokens`` (names, or {module: names}) trained (moved off their values), saved by
    PEFT's save_pretrained (which saves the resized embedding layers: save_embedding_layers "auto")."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    tok.add_tokens([f"<new{i}>" for i in range(ADDED)])
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    ids = (
        {m: tok.convert_tokens_to_ids(t) for m, t in tokens.items()}
        if isinstance(tokens, dict)
        else tok.convert_tokens_to_ids(tokens)
    )
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], trainable_token_indices=ids)
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for _, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(tmp_path / name, **save)
    return tmp_path / name


def _peft_merge(base, folder, dtype) -> dict:
    """PEFT's merge as anyone who loads the adapter gets it: the base in its stored dtype, resized to the adapter's
    vocabulary (its new rows random, and not the ones trained), PeftModel.from_pretrained, merge_and_unload."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype)
    torch.manual_seed(123)
    model.resize_token_embeddings(VOCAB + ADDED, mean_resizing=False)
    fresh = model.get_input_embeddings().weight.detach().clone()
    merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload().state_dict()
    assert not torch.equal(merged["model.embed_tokens.weight"][VOCAB:], fresh[VOCAB:])  # (PEFT loads the saved rows)
    return merged


EMB, HEAD = "model.embed_tokens.weight", "lm_head.weight"


@pytest.mark.parametrize(
    "family, tokens",
    [
        ("llama", NEW),  # new ids, untied head (saved whole beside the tokens)
        ("qwen2", NEW),  # new ids, a head tied to the embedding: its token adapter is the embedding's
        ("llama", ["1", "5", "="]),  # old ids on a resized vocabulary
        ("llama", {"embed_tokens": NEW, "lm_head": NEW[:2]}),  # the untied head with token adapter of its own
    ],
)
def test_trainable_tokens_on_a_resized_vocabulary_merge_as_peft_merges_them(tmp_path, family, tokens):
    base, dtype = _base(tmp_path, family)
    folder = _adapter(tmp_path, base, dtype, tokens)
    merged = _peft_merge(base, folder, dtype)
    assert merged[EMB].shape == merged[HEAD].shape == (VOCAB + ADDED, 32)
    ck = open_finetune(str(folder), open_checkpoint(base))
    _assert_as_peft(ck, merged)  # every tensor, bit for bit, in the base's dtype: the embedding's 72 rows too
    assert ck.meta(EMB).shape == (VOCAB + ADDED, 32)
    if family == "qwen2":  # one tensor for both, as the base stores it; PEFT's merged head is that tensor
        assert HEAD not in ck.names and torch.equal(_bits(merged[HEAD]), _bits(ck.get(EMB)))
        assert any("the trainable tokens the adapter saves for lm_head are the embedding's" in n for n in ck.notes)
    else:
        assert ck.meta(HEAD).shape == (VOCAB + ADDED, 32)
    notes = " ".join(ck.notes)
    assert "vocabulary was resized from 64 to 72 rows" in notes, ck.notes
    assert "does not select" not in notes and "replaced by modules_to_save" not in notes, ck.notes
    assert "embedding layer(s) saved whole (save_embedding_layers)" in ck.notes[0]
    # the analysis (the CLI's analyze) compares the rows the merged model shares with the base
    rep = analyze_updates(str(base), [str(folder)], spectra=SpectraOptions(enabled=False)).reports[0]
    plain = open_checkpoint(base)
    want = int((_bits(merged[EMB][:VOCAB]) != _bits(plain.get(EMB))).sum())
    assert int(rep.tensors.set_index("name").loc[EMB, "changed"]) == want
    assert (want > 0) == (tokens == ["1", "5", "="])  # (new ids change no shared row)


def test_a_resized_vocabulary_saved_without_its_embedding_says_so(tmp_path):
    """New ids saved without the resized embedding (save_embedding_layers=False): no merge can know the new rows;
    refused in one line that says what is missing."""
    base, dtype = _base(tmp_path, "llama")
    folder = _adapter(tmp_path, base, dtype, NEW, save_embedding_layers=False)
    with pytest.raises(CheckpointError, match=r"index 64 outside the 64 rows") as err:
        open_finetune(str(folder), open_checkpoint(base))
    assert "needs the resized embedding beside it" in str(err.value) and "\n" not in str(err.value)


def test_trainable_tokens_that_disagree_with_their_saved_layer_are_refused(tmp_path):
    """The tied head's tokens not the embedding's (an edited file), and a saved layer without its tokens: one line."""
    base, dtype = _base(tmp_path, "qwen2")
    folder = _adapter(tmp_path, base, dtype, NEW)
    weights = folder / "adapter_model.safetensors"
    sd = load_file(str(weights))
    key = "base_model.model.lm_head.token_adapter.trainable_tokens_delta"
    save_file({**sd, key: sd[key] + 1}, str(weights))
    with pytest.raises(CheckpointError, match="the base ties lm_head.weight to model.embed_tokens.weight") as err:
        open_finetune(str(folder), open_checkpoint(base))
    assert "is not the embedding's" in str(err.value) and "\n" not in str(err.value)
    base, dtype = _base(tmp_path, "llama")
    folder = _adapter(tmp_path, base, dtype, NEW, name="untied")
    weights = folder / "adapter_model.safetensors"
    sd = load_file(str(weights))
    del sd["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]
    save_file(sd, str(weights))
    with pytest.raises(CheckpointError, match="holds no trainable_tokens_delta for 'model.embed_tokens.weight'"):
        open_finetune(str(folder), open_checkpoint(base))


# --- F2 ------------------------------------------------------------------------------------------------------------


def _without_config(tmp_path, base) -> object:
    """A PEFT-made LoRA folder with its adapter_config.json gone (what a download of ``*.safetensors`` leaves)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    folder = tmp_path / "nocfg"
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)).save_pretrained(folder)
    (folder / "adapter_config.json").unlink()
    assert sorted(p.name for p in folder.iterdir() if p.suffix != ".md") == ["adapter_model.safetensors"]
    return folder


def _says_config_missing(msg: str) -> None:
    assert "\n" not in msg and "no adapter_config.json" in msg, msg
    assert "download or copy the adapter's adapter_config.json" in msg and "no tensor names in common" not in msg


def test_an_adapter_without_its_config_is_refused_saying_so(tmp_path, capsys, monkeypatch):
    from subnetviz.__main__ import main
    from subnetviz.uilogic import checkpoint_info
    from tests.ckpt_fixtures import fake_hub_cache

    base, _ = _base(tmp_path, "llama")
    folder = _without_config(tmp_path, base)
    for spec in (folder, folder / "adapter_model.safetensors"):
        for call in (
            open_checkpoint,
            lambda s: open_finetune(str(s), open_checkpoint(base)),
            lambda s: checkpoint_info(str(s)),  # the Workspace's row
        ):
            with pytest.raises(CheckpointError) as err:
                call(spec)
            _says_config_missing(str(err.value))
            assert str(err.value).startswith(str(spec))
    assert main(["analyze", str(base), str(folder), "--out", str(tmp_path / "o"), "--no-spectra", "--no-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {folder}: adapter_model.safetensors holds a PEFT adapter's weights"), err
    _says_config_missing(err)
    # a partial download in the hub cache: the same line, naming the hub id
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    fake_hub_cache(tmp_path / "hub", "someorg/tiny-lora", folder)
    with pytest.raises(CheckpointError, match=r"^someorg/tiny-lora: adapter_model\.safetensors holds") as err:
        open_finetune("someorg/tiny-lora", open_checkpoint(base))
    _says_config_missing(str(err.value))
    # with its config back, it is the adapter again
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"]}))
    assert len(open_finetune(str(folder), open_checkpoint(base)).pairs) == 2


@pytest.mark.slow
def test_the_workspace_says_an_adapters_config_is_missing(app_env):
    from tests.app_fixtures import open_page

    folder = _without_config(app_env / "tmp-adapters7", app_env / "zoo" / "base")
    try:
        at = open_page("workspace", ft=["grpo-s0", str(folder)])
        assert not at.exception, [e.message for e in at.exception]
        said = [e.value.replace("\\", "").replace("\u200b", "") for e in at.error]
        assert len(said) == 1, said
        _says_config_missing(said[0])
        table = at.dataframe[0].value.set_index("label")
        assert table.loc["nocfg", "architecture"] == "cannot be read"  # (before: "llama", 1,344 parameters)
        assert table.loc["grpo-s0", "architecture"] == "LlamaForCausalLM"
    finally:
        shutil.rmtree(folder.parent)
