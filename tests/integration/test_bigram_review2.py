"""Second review of the Bigram page: the zoo corpus for a model of another tokenizer, and the Location heatmap's
hover (tests/app/test_bigram_review2_app.py checks the page itself).

The zoo corpus is the demo chain written in the zoo tokenizer's ids. A model whose tokenizer gives the chain's
letters other ids was analysed (and trained) on it with no word said: its numbers were those of unrelated tokens.
Here a planted zoo table names six letters at ids 10..15; one model's tokenizer reads them so, another's puts the
letters at ids 3..8, a third model has no tokenizer."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from bigram_fixtures import planted_transition

from subnetviz.bigram.maskable import full_mask
from subnetviz.errors import ConfigError
from subnetviz.masks import save_mask_set
from tests.models import bigram_model

LETTERS = "abcdef"
ZOO_IDS = list(range(10, 16))  # the planted zoo tokenizer's ids of the letters
OTHER_IDS = list(range(3, 9))  # another tokenizer's ids of the same letters
WHY = "(the zoo corpus is the demo chain in the zoo tokenizer's ids; give a text corpus for this model)."


def _tokenizer(letter_ids: list[int]):
    """A one-character-a-token tokenizer of 16 ids: three specials, the letters at ``letter_ids``, fillers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **dict(zip(LETTERS, letter_ids, strict=True))}
    free = [i for i in range(3, 16) if i not in vocab.values()]
    vocab |= {f"x{i}": i for i in free}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


@pytest.fixture
def zoo_models(tmp_path, monkeypatch):
    """A home whose zoo table names the letters (as the demo zoo's does), and three saved tiny GPT-2s of 16 ids:
    ``zoo`` (the zoo's tokenizer), ``other`` (the letters at other ids), ``none`` (no tokenizer); each with a mask."""
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    from subnetviz.config import zoo_dir

    zoo_dir().mkdir(parents=True)
    np.savez(
        zoo_dir() / "bigram.npz",
        transition=planted_transition(len(LETTERS)),
        token_ids=np.array(ZOO_IDS),
        letters=np.array(list(LETTERS)),
        vocab_size=np.int64(16),
    )
    folders = {}
    for name, ids in (("zoo", ZOO_IDS), ("other", OTHER_IDS), ("none", None)):
        model = bigram_model("gpt2")
        folders[name] = tmp_path / name
        model.save_pretrained(folders[name])
        if ids is not None:
            _tokenizer(ids).save_pretrained(folders[name])
        save_mask_set(folders[name] / "mask.safetensors", full_mask(model, True))
    return folders


def test_the_zoo_corpus_is_refused_for_a_model_whose_tokenizer_gives_its_letters_other_ids(zoo_models):
    """Refused by the config (the Train form's submit and the job's own check) and by the analysis, in one line
    naming the first letter and both ids; the same model on a text corpus is taken."""
    from subnetviz.bigram.config import BigramJobConfig
    from subnetviz.bigram.job import analyse_mask_file
    from subnetviz.jobs.kinds import validate_job_config

    other = str(zoo_models["other"])
    said = (
        f"corpus 'zoo' does not fit {other}: the zoo's letter 'a' is token id 10, and this model's tokenizer gives "
        f"it id 3 {WHY}"
    )
    for check in (
        lambda: BigramJobConfig(model=other).validate(),
        lambda: validate_job_config({"kind": "bigram_mask", "model": other, "corpus": "zoo"}),
        lambda: analyse_mask_file(other, str(zoo_models["other"] / "mask.safetensors"), residual_tokens=None),
    ):
        with pytest.raises(ConfigError) as caught:
            check()
        assert str(caught.value) == said
    text = zoo_models["other"].parent / "letters.txt"
    text.write_text("abcdef" * 50)
    BigramJobConfig(model=other, corpus=str(text)).validate()  # its own text, in its own ids: taken


def test_a_model_without_a_tokenizer_is_refused_the_zoo_corpus(zoo_models):
    from subnetviz.bigram.config import BigramJobConfig

    none = str(zoo_models["none"])
    with pytest.raises(ConfigError) as caught:
        BigramJobConfig(model=none).validate()
    assert str(caught.value) == f"corpus 'zoo' for {none}: it has no tokenizer to read the zoo's letters with {WHY}"


def test_a_model_with_the_zoo_tokenizer_is_still_analysed_on_the_zoo_corpus(zoo_models):
    """The zoo's own tokenizer passes, and the analysis runs: the full mask keeps every maskable weight, so the
    subnetwork is the full model (the same r), and its generations are in the zoo's letters."""
    from subnetviz.bigram.job import analyse_mask_file

    res, gens = analyse_mask_file(
        str(zoo_models["zoo"]),
        str(zoo_models["zoo"] / "mask.safetensors"),
        eval_sequences=8,
        seeds=(0,),
        residual_tokens=None,
        seq_len=12,
    )
    h = res.headline
    assert h["density"] == 1.0 and h["r_subnetwork"] == pytest.approx(h["r_full"], abs=1e-6)
    assert set(gens["prompt"]) == {gens["prompt"].iloc[0]} and re.fullmatch("[abcdef]{4}", gens["prompt"].iloc[0])


def test_a_table_that_names_no_letters_is_taken_as_it_is(zoo_models):
    """A bigram.npz written by hand in the model's own ids (no letters) has nothing to check: a model without a
    tokenizer is taken, as before."""
    from subnetviz.bigram.config import BigramJobConfig, zoo_bigram_path

    np.savez(zoo_bigram_path(), transition=planted_transition(16), token_ids=np.arange(16))
    BigramJobConfig(model=str(zoo_models["none"])).validate()


def test_the_location_hover_counts_the_subnetwork_and_says_nothing_of_changes():
    """A planted 2-layer grid: 396 of 73,728 weights of one block in the subnetwork. The hover reads the share, the
    count "in the subnetwork" and the block's density, with no "changed" and no "sparsity"; other pages' hover
    (no count_label) is unchanged."""
    from subnetviz import figures

    df = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1],
            "module": ["MLP-in", "O", "MLP-in", "O"],
            "changed": [396, 7, 0, 500],
        }
    )
    df["numel"] = [73_728, 1_024, 73_728, 1_024]
    df["density"] = df["changed"] / df["numel"]
    df["sparsity"] = 1 - df["density"]
    df["share"] = df["changed"] / df["changed"].sum()
    trace = figures.sparsity_heatmap(df, "share", "Where", count_label="in the subnetwork").data[0]
    hover = trace.hovertemplate
    assert "changed" not in hover and "sparsity" not in hover
    assert hover.startswith("layer %{y} · %{x}<br>share %{customdata[6]}%<br>in the subnetwork ")
    # the cell of layer 0, MLP-in (396 kept), filled into the template as Plotly does
    (cell,) = [c for row in trace.customdata for c in row if c[0] == 396]
    filled = re.sub(
        r"%\{customdata\[(\d)\](?::,\.0f)?\}",
        lambda m: f"{cell[int(m.group(1))]:,.0f}" if m.group(0).endswith(",.0f}") else str(cell[int(m.group(1))]),
        hover,
    )
    assert filled.split("<br>", 1)[1].removesuffix("<extra></extra>") == (
        "share 43.854%<br>in the subnetwork 396 of 73,728 (0.537%)"  # 396 / 903 and 396 / 73,728
    )
    default = figures.sparsity_heatmap(df, "share", "Where").data[0].hovertemplate
    assert "changed %{customdata[0]:,.0f} of %{customdata[1]:,.0f}" in default and "sparsity" in default
