"""Behaviour review fixes: a tied base with an untied finetune masked per tensor (reverting its update is the base
exactly), the cache keyed by the config and tokenizer, prompts that encode to nothing or to ids past the model's
vocabulary refused in one line, non-finite logits refused and NaN written as JSON null, answers encoded as the
continuation of their prompt, a note for configs that differ in the forward pass, the base's logits kept unpadded,
predicts_answer only where an answer token is next, and ``hf:`` names that would read the working directory."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from subnetviz.analysis.behavior import BehaviorReport, Prompt, behavior, write_behavior
from subnetviz.analysis.behavior_data import Encoded, correct, encode, read_prompts, token_frame
from subnetviz.errors import ConfigError, NonFiniteError
from tests.ckpt_fixtures import bf16_step, read_state_dict, write_folder
from tests.models import char_tokenizer, make_tiny_llama

PROMPTS = [Prompt("12+30=", "42"), Prompt("7+8=", "15"), Prompt("40+2=")]


def _with_tokenizer(src: Path, dst: Path) -> Path:
    for f in [*src.glob("tokenizer*"), *src.glob("special_tokens_map.json")]:
        shutil.copy(f, dst / f.name)
    return dst


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A base and a finetune that moved a random 30 % of every matrix by 3 bf16 steps."""
    root = tmp_path_factory.mktemp("bh-review")
    base = make_tiny_llama(root / "base", hidden=16, intermediate=32)
    sd = read_state_dict(base)
    g = torch.Generator().manual_seed(3)
    moved = {k: torch.where(torch.rand(v.shape, generator=g) < 0.3, bf16_step(v, 3), v) for k, v in sd.items()}
    ft = _with_tokenizer(base, write_folder(root / "ft", moved, config_from=base))
    return base, ft


# --- 1. a tied base, an untied finetune -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tied_base(tmp_path_factory):
    """A base that ties its head (stores only the embedding) and a finetune that stores an untied head: the head
    moved in one row, the embedding in a random half of its entries."""
    root = tmp_path_factory.mktemp("bh-tied")
    src = make_tiny_llama(root / "src", hidden=16, intermediate=32)
    sd = read_state_dict(src)
    emb = sd["model.embed_tokens.weight"]
    base_sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    base = _with_tokenizer(src, write_folder(root / "base", base_sd, src, tie_word_embeddings=True))
    head = emb.clone()
    head[5] = bf16_step(emb[5], 7)
    g = torch.Generator().manual_seed(1)
    ft_emb = torch.where(torch.rand(emb.shape, generator=g) < 0.5, bf16_step(emb, 2), emb)
    ft_sd = {**base_sd, "model.embed_tokens.weight": ft_emb, "lm_head.weight": head}
    ft = _with_tokenizer(src, write_folder(root / "ft", ft_sd, src, tie_word_embeddings=False))
    return base, ft, emb, ft_emb, head


def test_a_tied_base_and_an_untied_finetune_revert_their_update_to_the_base_exactly(tied_base):
    from subnetviz.analysis.revert import update_masks

    base, ft, *_ = tied_base
    rep = behavior(
        str(base), [str(ft)], PROMPTS, masks={"update": update_masks}, random_control=False, curve=None, device="cpu"
    )
    s = rep.summary.set_index("experiment")
    assert s.loc["update/inside", "kl_forward"] == 0.0 and s.loc["update/inside", "kl_reverse"] == 0.0
    assert s.loc["update/inside", "fraction_reverted"] == 1.0
    assert s.loc["update/outside", "kl_forward"] == s.loc["finetuned", "kl_forward"] > 0
    assert s.loc["update/outside", "fraction_reverted"] == 0.0
    assert not any("config" in n for n in rep.notes), rep.notes  # tie_word_embeddings is the weights' business


def test_each_of_the_two_tensors_gets_its_own_mask_and_a_file_may_name_the_head(tied_base):
    from subnetviz.analysis.revert import ModelBuilder, check_mask_names, mask_placement_note, update_masks

    base, ft, emb, ft_emb, head = tied_base
    builder = ModelBuilder(str(base), str(ft), "cpu")
    masks = update_masks(builder)
    as_u16 = lambda t: t.view(torch.int16)  # noqa: E731 - stored bits
    assert torch.equal(masks["model.embed_tokens.weight"], as_u16(ft_emb) != as_u16(emb))
    assert torch.equal(masks["lm_head.weight"], as_u16(head) != as_u16(emb))
    assert int(masks["lm_head.weight"].sum()) == int((as_u16(head[5]) != as_u16(emb[5])).sum()) > 0
    check_mask_names(masks, builder, "file")  # the head under the finetune's name is accepted
    only_embedding = {"model.embed_tokens.weight": masks["model.embed_tokens.weight"]}
    note = mask_placement_note(only_embedding, builder, "old")
    assert note and "lm_head.weight" in note and "outside" in note
    assert mask_placement_note(masks, builder, "new") is None


# --- 2. the cache key ----------------------------------------------------------------------------------------------
def test_the_cache_is_keyed_by_each_models_config_and_the_bases_tokenizer(pair, tmp_path):
    from subnetviz.analysis.behavior import behavior_entry, cached_behavior

    base, ft = pair
    base2, ft2 = shutil.copytree(base, tmp_path / "base"), shutil.copytree(ft, tmp_path / "ft")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p.text, "answer": p.answer}) + "\n" for p in PROMPTS))
    cfg = {"base": str(base2), "finetuned": [str(ft2)], "prompts": [str(prompts)], "curve": [], "device": "cpu"}
    cache = tmp_path / "cache"
    first = cached_behavior(cfg, cache_root=cache)["summary"].loc[0, "kl_forward"]
    conf = json.loads((ft2 / "config.json").read_text())
    (ft2 / "config.json").write_text(json.dumps({**conf, "rms_norm_eps": 1.0}))
    assert not behavior_entry(cfg, cache)[0].ready
    second = cached_behavior(cfg, cache_root=cache)["summary"].loc[0, "kl_forward"]
    fresh = behavior(str(base2), [str(ft2)], PROMPTS, curve=None, device="cpu").summary.loc[0, "kl_forward"]
    assert second == pytest.approx(fresh, rel=1e-9) and abs(second - first) > 1e-3 * first
    from tokenizers import processors

    bos = char_tokenizer()  # the base's tokenizer replaced by one that puts <bos> in front
    bos._tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    bos.save_pretrained(base2)
    assert not behavior_entry(cfg, cache)[0].ready
    tokens = cached_behavior(cfg, cache_root=cache)["summary"].loc[0, "tokens"]
    want = sum(len(p.text) + len(p.answer or "") + 1 for p in PROMPTS)  # one character each, and a <bos>
    assert tokens == want


# --- 3. and 4. prompts the model cannot take --------------------------------------------------------------------
@pytest.mark.parametrize("row", [{"prompt": ""}, {"prompt": "", "answer": "61"}])
def test_a_prompt_that_encodes_to_nothing_is_refused_naming_its_line(pair, tmp_path, row):
    base, ft = pair
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "1+2=", "answer": "3"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ConfigError, match=r"p\.jsonl, line 2: the prompt '' encodes to no token") as err:
        behavior(str(base), [str(ft)], read_prompts(f), curve=None, device="cpu")
    assert "\n" not in str(err.value)


def test_an_answer_with_no_position_before_it_is_not_scored_and_no_position_has_no_row():
    assert correct(torch.tensor([7, 8]), Encoded(torch.tensor([4, 5]), 0)) is None
    frame = token_frame([Encoded(torch.tensor([], dtype=torch.long), None)], char_tokenizer())
    assert len(frame) == 0


def test_token_ids_past_the_models_vocabulary_are_refused_naming_the_prompt_and_sizes(pair, tmp_path):
    base, ft = pair
    tok = char_tokenizer()
    rows = tok.convert_tokens_to_ids("=")  # the embedding ends just before "="
    folders = []
    for src, name in ((base, "base"), (ft, "ft")):
        sd = read_state_dict(src)
        sd = {k: (v[:rows] if v.shape[0] == len(tok) else v) for k, v in sd.items()}
        folders.append(_with_tokenizer(base, write_folder(tmp_path / name, sd, src, vocab_size=rows)))
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "12+3"}) + "\n" + json.dumps({"prompt": "1+2=", "answer": "3"}) + "\n")
    with pytest.raises(ConfigError, match=rf"line 2: token id {rows} \('='\) .*\({len(tok)} tokens\).* {rows} rows"):
        behavior(str(folders[0]), [str(folders[1])], read_prompts(f), curve=None, device="cpu")


# --- 5. non-finite logits --------------------------------------------------------------------------------------------
def test_logits_that_overflow_from_finite_weights_are_refused_naming_model_and_prompt(pair, tmp_path):
    base, ft = pair
    sd = read_state_dict(ft)
    sd["model.norm.weight"] = torch.full_like(sd["model.norm.weight"], 3e38)  # finite; the logits overflow
    broken = _with_tokenizer(base, write_folder(tmp_path / "ft", sd, ft))
    with pytest.raises(NonFiniteError, match=r"^x \(finetuned\): NaN or infinite logits at prompt 0, position 0"):
        behavior(str(base), [str(broken)], PROMPTS, labels=["x"], curve=None, device="cpu")


def test_behavior_json_writes_nan_as_null(tmp_path):
    summary = pd.DataFrame(
        [
            {"model": "m", "experiment": "finetuned", "mask": "", "side": "", "kl_forward": float("nan"),
             "kl_reverse": float("inf"), "accuracy": float("nan"), "fraction_reverted": 0.0, "tokens": 3},
        ]
    )  # fmt: skip
    empty = pd.DataFrame()
    report = BehaviorReport("b", ["m"], summary, empty, empty, empty, seconds=float("nan"))
    write_behavior(report, tmp_path)

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    got = json.loads((tmp_path / "behavior.json").read_text(), parse_constant=refuse)
    m = got["models"]["m"]
    assert m["kl_forward"] is None and m["kl_reverse"] is None and m["accuracy"] is None and got["seconds"] is None


# --- 6. the answer as the prompt's continuation ---------------------------------------------------------------------
def _metaspace_tokenizer(post_eos: bool = False):
    """A SentencePiece-style BPE (Metaspace, prepend_scheme 'always', as Llama-2's): every text it encodes starts
    with a word boundary "▁" (``post_eos``: and ends with ``</s>``, as a T5-style post-processor does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "▁": 3, **{c: i + 4 for i, c in enumerate("0123456789+=")}}
    vocab |= {"▁1": 16, "▁4": 17, "▁7": 18}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[("▁", "1"), ("▁", "4"), ("▁", "7")], unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    if post_eos:
        tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def test_an_answer_is_encoded_as_the_continuation_of_its_prompt_not_as_a_new_word():
    from subnetviz.analysis.behavior_data import apart_note

    tok = _metaspace_tokenizer()
    (e,) = encode(tok, [Prompt("12+30=", "42")])
    want = ["▁1", "2", "+", "3", "0", "=", "4", "2"]  # '12+30=42' as one text: no "▁" before the answer
    assert tok.convert_ids_to_tokens(e.ids.tolist()) == want and e.answer_start == 6 and not e.apart
    assert apart_note([e]) is None


def test_a_tokenizer_that_appends_eos_gets_the_answer_right_after_the_prompt():
    """The prompt "12+30=" ends in </s>; the answer follows the prompt, and the </s> the tokenizer appends ends the text (it
    was kept between them: "= </s> ▁4 2", an answer scored after a token the model never sees there)."""
    from subnetviz.analysis.behavior_data import apart_note

    tok = _metaspace_tokenizer(post_eos=True)
    e, plain = encode(tok, [Prompt("12+30=", "42"), Prompt("7+8=")])
    assert tok.convert_ids_to_tokens(e.ids.tolist()) == ["▁1", "2", "+", "3", "0", "=", "4", "2", "</s>"]
    assert e.answer_start == 6 and not e.apart and not plain.apart
    assert apart_note([e, plain]) is None


# --- 7. configs that differ ---------------------------------------------------------------------------------------
def test_a_finetune_whose_config_changes_the_forward_pass_gets_a_note_naming_the_key(pair, tmp_path):
    base, ft = pair
    conf = json.loads((ft / "config.json").read_text())
    other = shutil.copytree(ft, tmp_path / "rope")
    rope = {**conf["rope_parameters"], "rope_theta": 100.0}
    (other / "config.json").write_text(json.dumps({**conf, "rope_parameters": rope}))
    same = shutil.copytree(ft, tmp_path / "same")  # differs only in what does not reach the logits
    (same / "config.json").write_text(json.dumps({**conf, "transformers_version": "0.0", "_name_or_path": "x"}))
    rep = behavior(str(base), [str(other), str(same)], PROMPTS, labels=["rope", "same"], curve=None, device="cpu")
    notes = [n for n in rep.notes if "config" in n]
    assert len(notes) == 1 and notes[0].startswith("rope: reverted models keep the finetune's config"), notes
    assert "rope_parameters.rope_theta: 10000.0 -> 100.0" in notes[0] and "not the base" in notes[0]


# --- 8. the base's logits, kept unpadded ----------------------------------------------------------------------------
def test_the_bases_kept_logits_hold_the_bytes_the_budget_counts_and_equal_unpadded_passes(pair):
    from subnetviz.analysis.behavior import base_logits_kept
    from subnetviz.analysis.routing import RoutingTap
    from subnetviz.checkpoints.models import load_causal_lm

    base, _ = pair
    model = load_causal_lm(base).eval()
    enc = encode(char_tokenizer(), [Prompt("1+2=" * 25)] + [Prompt("1=")] * 7)  # one of 100 tokens, 7 of 2
    batches = [enc[:4], enc[4:]]
    with RoutingTap(model) as tap:
        kept = base_logits_kept(model, batches, "cpu", tap, True, "base")
    vocab = model.config.vocab_size
    n_tokens = sum(len(e.ids) for e in enc)
    assert sum(t.untyped_storage().nbytes() for t in kept) == n_tokens * vocab * 4  # what _require_room counts
    rows = torch.cat(list(kept))
    with torch.no_grad():
        alone = torch.cat([model(input_ids=e.ids[None]).logits[0] for e in enc])
    assert torch.allclose(rows, alone, atol=1e-5)


# --- 9. which positions predict the answer -------------------------------------------------------------------------
def test_only_positions_whose_next_token_is_an_answer_token_predict_the_answer():
    tok = char_tokenizer()
    (e,) = encode(tok, [Prompt("1+2=", "61")])  # 4 prompt tokens, 2 answer tokens
    frame = token_frame([e], tok)
    assert frame["predicts_answer"].tolist() == [False, False, False, True, True, False]
    assert frame["next_token_id"].tolist()[-1] == -1


# --- hf: names that datasets would read from the working directory --------------------------------------------------
def test_hf_names_that_are_a_folder_of_the_working_directory_or_a_file_loader_are_refused(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    (cwd / "docs").mkdir(parents=True)
    (cwd / "docs" / "data.jsonl").write_text(json.dumps({"prompt": "SECRET outside the roots"}) + "\n")
    (cwd / "top.jsonl").write_text(json.dumps({"prompt": "SECRET too"}) + "\n")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path / "roots"))
    # read from the datasets cache, which does not hold it: never the working directory's docs/ folder
    with pytest.raises(ConfigError, match=r"^hf:docs:train: not a data set on this machine") as err:
        read_prompts("hf:docs:train")
    assert "SECRET" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^hf:json:train: 'json' is a file-format loader"):
        read_prompts("hf:json:train")
