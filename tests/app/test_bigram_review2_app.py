"""Second review of the Bigram page, on the page: the zoo corpus refused for a model of another tokenizer (Analyse
and Train), the Location tab's caption in the model's own modules and its hover in a mask's words, and the corpus
in the export's parameters.

Planted in the app's home (removed afterwards: the home is shared): a GPT-2 and a GPT-NeoX of the zoo's vocabulary
saved with the zoo's tokenizer, a GPT-2 of the same shapes whose tokenizer puts the zoo's letters at other ids, and
an uploaded random mask of each (and of the zoo's base)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.app_fixtures import open_page, plotly_specs
from tests.models import save_model, tiny_model

pytestmark = pytest.mark.slow

MASKS = {"gpt2": "uploads/review2-gpt2", "gpt_neox": "uploads/review2-neox", "base": "uploads/review2-base"}
WHY = "(the zoo corpus is the demo chain in the zoo tokenizer's ids; give a text corpus for this model)."


def _foreign_tokenizer(size: int, letters: list[str]):
    """A tokenizer of ``size`` ids whose letters sit at ids 3, 4, ... (the zoo's are elsewhere)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{c: 3 + i for i, c in enumerate(letters)}}
    vocab |= {f"x{i}": i for i in range(len(vocab), size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


@pytest.fixture(scope="module")
def planted(app_env):
    """family (or "foreign") -> the saved model's folder."""
    from transformers import AutoTokenizer

    from subnetviz.bigram.maskable import full_mask, load_local_model
    from subnetviz.masks import MaskSet, save_mask_set

    zoo = app_env / "zoo"
    cfg = json.loads((zoo / "base" / "config.json").read_text())
    size = {"vocab": cfg["vocab_size"], "positions": cfg["max_position_embeddings"]}
    zoo_tok = AutoTokenizer.from_pretrained(str(zoo / "base"), local_files_only=True)
    with np.load(zoo / "bigram.npz") as z:
        letters = [str(c) for c in z["letters"]]
    root = app_env / "review2"
    folders = {}
    models = {"base": load_local_model(zoo / "base")}
    for name, family, tok in (
        ("gpt2", "gpt2", zoo_tok),
        ("gpt_neox", "gpt_neox", zoo_tok),
        ("foreign", "gpt2", _foreign_tokenizer(cfg["vocab_size"], letters)),
    ):
        models[name] = tiny_model(family, seed=1, **size)
        folders[name] = save_model(models[name], root / name, dtype=torch.float32, tokenizer=tok)
    for name, label in MASKS.items():
        g = torch.Generator().manual_seed(2)
        masks = {n: torch.rand(m.shape, generator=g) < 0.2 for n, m in full_mask(models[name]).masks.items()}
        save_mask_set(app_env / f"{label}.safetensors", MaskSet(masks, {"target": "bigram"}))
    yield folders
    shutil.rmtree(root)
    for label in MASKS.values():
        (app_env / f"{label}.safetensors").unlink()


def _read(text: str) -> str:
    return text.replace("\\", "").replace("\u200b", "")


def _said_for_foreign(folder) -> str:
    from subnetviz.config import display_path

    return (
        f"corpus 'zoo' does not fit {display_path(folder)}: the zoo's letter 'a' is token id "
        f"{_zoo_id('a')}, and this model's tokenizer gives it id 3 {WHY}"
    )


def _zoo_id(letter: str) -> int:
    from subnetviz.config import zoo_dir

    with np.load(zoo_dir() / "bigram.npz") as z:
        return int(dict(zip(z["letters"].tolist(), z["token_ids"].tolist(), strict=True))[letter])


def test_the_zoo_corpus_for_a_model_of_another_tokenizer_is_one_line_not_numbers(app_env, planted):
    """Analysed on the default corpus, the foreign GPT-2 drew a whole headline from unrelated tokens (its mask
    fits it: the premise is the corpus alone). Now one error, no number; on its own text it is analysed."""
    at = open_page("bigram", bg_model=str(planted["foreign"]), bg_mask=MASKS["gpt2"])
    assert not at.exception, [e.message for e in at.exception]
    assert [_read(e.value) for e in at.error] == [_said_for_foreign(planted["foreign"])]
    assert not at.metric and not plotly_specs(at)


def test_the_train_form_refuses_the_zoo_corpus_for_that_model_and_queues_nothing(app_env, planted):
    from subnetviz.jobs.runner import JobRunner

    before = set(JobRunner().list_runs().get("id", []))
    at = open_page("bigram", bg_model=str(planted["foreign"]), bg_view="Train a mask")
    assert not at.exception and not at.error, [e.value for e in at.error]
    next(b for b in at.button if b.label == "Train mask").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert [_read(e.value) for e in at.main.error] == [_said_for_foreign(planted["foreign"])]
    assert set(JobRunner().list_runs().get("id", [])) == before


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_the_location_tab_names_the_models_own_modules_and_the_mask_in_its_hover(app_env, planted, family, exports):
    """The caption named Llama's q_proj and gate_proj for every model. Each maskable tensor of the model (its
    names from the checkpoint) is named in the caption with the module label the other pages give it (the
    checkpoint's naming table); the heatmap's hover counts weights "in the subnetwork", never "changed"; the
    export's parameters name the corpus the numbers were computed on."""
    from subnetviz.checkpoints import open_checkpoint

    at = open_page("bigram", bg_model=str(planted[family]), bg_mask=MASKS[family], bg_tab="Location")
    assert not at.exception and not at.error, [e.value for e in at.error]
    (caption,) = [_read(c.value) for c in at.caption if "Blocks as in the bigram paper" in c.value]
    ck = open_checkpoint(str(planted[family]))
    own = {"gpt2": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}.get(
        family, ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
    )
    for name in ck.names:
        if ".0." not in name or not name.endswith(".weight") or not any(f".{m}." in name for m in own):
            continue
        module = name.split(".0.", 1)[1].removesuffix(".weight")
        label = ck.names_table.describe(name).module
        shown = "(q, k, v on the other pages)" if label == "qkv" else f"{module} ({label})"
        assert module in caption and shown in caption, (name, label, caption)
    assert sum(f".0.{m}.weight" in " ".join(ck.names) for m in own) == 4  # (the premise: all four were checked)
    for llama in ("q_proj", "gate_proj", "down_proj"):
        assert llama not in caption
    (heat,) = [
        s for s in plotly_specs(at) if s["layout"]["title"]["text"].split("<br>")[0] == "Where the subnetwork lives"
    ]
    hover = heat["data"][0]["hovertemplate"]
    assert "in the subnetwork %{customdata[0]:,.0f} of %{customdata[1]:,.0f}" in hover
    assert "changed" not in hover and "sparsity" not in hover
    html = exports["Bigram subnetworks"]()
    assert "corpus=zoo" in html and f"mask={MASKS[family]}" in html


def test_the_zoo_base_keeps_its_llama_caption(app_env, planted):
    at = open_page("bigram", bg_model="base", bg_mask=MASKS["base"], bg_tab="Location")
    assert not at.exception and not at.error, [e.value for e in at.error]
    (caption,) = [_read(c.value) for c in at.caption if "Blocks as in the bigram paper" in c.value]
    assert "q_proj, k_proj, v_proj, o_proj (q, k, v, o on the other pages)" in caption and "c_attn" not in caption
