"""Behaviour, third review: a tokenizer that ends each text with an EOS (Llama-2's ``add_eos_token``) scored every
answer after an ``<eos>`` in mid-text; a saved data set's numbers and nulls were read through str() ("61.0",
"None"); TRL's prompt/completion rows lost their completions with no word. Each is checked against an independent
float64 computation on a tiny Llama pair: sequences written by hand (one id per character), per-position KL from
``torch.nn.functional.kl_div`` and the teacher-forced exact match of the answer tokens."""

import json
import shutil

import numpy as np
import pytest
import torch

from subnetviz.analysis.behavior import Prompt, behavior
from subnetviz.analysis.behavior_data import correct, encode, read_prompts, token_frame
from subnetviz.errors import ConfigError
from tests.ckpt_fixtures import read_state_dict, write_folder
from tests.models import CHARS, char_tokenizer, make_tiny_llama

BOS, EOS = 1, 2
CHAR = {c: i + 3 for i, c in enumerate(CHARS)}  # char_tokenizer's ids: one per character


def _ids(text):
    return [CHAR[c] for c in text]


def _eos_tokenizer():
    """The char tokenizer with the post-processor ``<bos> $A <eos>`` (Llama-2's add_eos_token)."""
    from tokenizers import processors

    tok = char_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A $B <eos>", special_tokens=[("<bos>", BOS), ("<eos>", EOS)]
    )
    return tok


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny Llama base and a finetune with noise on one layer's MLP, each saved with the char tokenizer
    (``plain``: nothing added) and again with the EOS-appending one (``eos``): the same weights. The LM head's rows
    of <pad> <bos> <eos> are zero (logit 0), so the argmax is a character (a random head predicted <bos>)."""
    root = tmp_path_factory.mktemp("behaviour3")
    base = make_tiny_llama(root / "base", seed=0)
    sd = read_state_dict(base)
    sd["lm_head.weight"][:3] = 0
    write_folder(base, sd, config_from=base)
    g = torch.Generator().manual_seed(3)
    for k in [k for k in sd if "layers.1.mlp" in k]:
        sd[k] = (sd[k].float() + 0.05 * torch.randn(sd[k].shape, generator=g)).to(sd[k].dtype)
    ft = write_folder(root / "ft", sd, config_from=base)
    char_tokenizer().save_pretrained(ft)
    eos = {}
    for name, src in (("base", base), ("ft", ft)):
        eos[name] = root / f"eos_{name}"
        shutil.copytree(src, eos[name])
        for f in eos[name].glob("tokenizer*"):
            f.unlink()
        _eos_tokenizer().save_pretrained(eos[name])
    return {"plain": (base, ft), "eos": (eos["base"], eos["ft"])}


def _reference(base, ft, seqs):
    """Float64, one sequence at a time: per-position forward / reverse KL and the teacher-forced exact match of
    ``ids[start:stop]`` (None without an answer). ``seqs``: (ids, start, stop) written by hand."""
    from transformers import AutoModelForCausalLM

    models = [AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float64).eval() for p in (base, ft)]
    fwd, rev, acc = [], [], []
    for ids, start, stop in seqs:
        with torch.no_grad():
            lb, lf = (torch.log_softmax(m(input_ids=torch.tensor([ids])).logits[0], -1) for m in models)
        kl = torch.nn.functional.kl_div
        fwd.append(kl(lf, lb, reduction="none", log_target=True).sum(-1).numpy())
        rev.append(kl(lb, lf, reduction="none", log_target=True).sum(-1).numpy())
        acc.append(None if start is None else lf.argmax(-1)[start - 1 : stop - 1].tolist() == ids[start:stop])
    return fwd, rev, acc


def _greedy(folder, prefix, n):
    """The finetune's float64 greedy continuation of ``prefix`` (ids), ``n`` characters, as text."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float64).eval()
    ids, out = list(prefix), ""
    inv = {v: k for k, v in CHAR.items()}
    for _ in range(n):
        with torch.no_grad():
            logits = m(input_ids=torch.tensor([ids])).logits[0, -1]
        best = int(logits.argmax())
        assert best in inv, f"the greedy token after {ids} is {best}, not a character"
        ids.append(best)
        out += inv[best]
    return out


def _check_against(rep, fwd, rev, acc, label="ft"):
    t = rep.tokens[(rep.tokens["model"] == label) & (rep.tokens["experiment"] == "finetuned")]
    for i, (f, r) in enumerate(zip(fwd, rev, strict=True)):
        got = t[t["prompt"] == i].sort_values("position")
        np.testing.assert_allclose(got["kl_forward"].to_numpy(), f, rtol=2e-3, atol=1e-7)
        np.testing.assert_allclose(got["kl_reverse"].to_numpy(), r, rtol=2e-3, atol=1e-7)
    s = rep.summary.set_index("experiment").loc["finetuned"]
    np.testing.assert_allclose(s["kl_forward"], np.concatenate(fwd).mean(), rtol=1e-4)
    np.testing.assert_allclose(s["kl_reverse"], np.concatenate(rev).mean(), rtol=1e-4)
    scored = [a for a in acc if a is not None]
    assert s["accuracy"] == pytest.approx(np.mean(scored))
    assert s["tokens"] == sum(len(x) for x in fwd)


# --- 1. a tokenizer that ends each text with an EOS ----------------------------------------------------------------
def test_an_eos_appending_tokenizer_scores_the_answer_right_after_the_prompt():
    """With ``<bos> $A <eos>`` the prompt's ids ended in <eos>, so "12+30=" + "42" was read as
    <bos> 1 2 + 3 0 = <eos> 4 2, marked apart. Now <bos> 1 2 + 3 0 = 4 2 <eos> (ids by hand), the answer at 7..8;
    a prompt without an answer keeps its <eos>; only the answer's positions predict it, and the exact match reads
    the answer's tokens, not the <eos> after them."""
    tok = _eos_tokenizer()
    assert tok("1")["input_ids"] == [BOS, CHAR["1"], EOS]  # (the premise: every text ends with <eos>)
    answered, bare = encode(tok, [Prompt("12+30=", "42"), Prompt("7+8=")])
    assert answered.ids.tolist() == [BOS, *_ids("12+30=42"), EOS]
    assert (answered.answer_start, answered.end, answered.apart, answered.tail) == (7, 9, False, (EOS,))
    assert bare.ids.tolist() == [BOS, *_ids("7+8="), EOS] and bare.answer_start is None
    frame = token_frame([answered, bare], tok)
    assert frame.loc[frame["predicts_answer"], ["prompt", "position"]].values.tolist() == [[0, 6], [0, 7]]
    right = torch.tensor([0, 0, 0, 0, 0, 0, CHAR["4"], CHAR["2"], 0, 0])  # the answer right, the <eos> not
    assert correct(right, answered) is True
    assert correct(torch.where(torch.arange(10) == 7, CHAR["3"], right), answered) is False


def test_an_answer_merged_across_the_seam_is_appended_before_the_eos():
    """A BPE that merges "=4" across the seam: the prompt's tokens do not begin prompt + answer's, so the answer is
    encoded on its own (with a note), and the <eos> the tokenizer ends each text with still comes last."""
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    from subnetviz.analysis.behavior_data import apart_note

    vocab = {"<pad>": 0, "<bos>": BOS, "<eos>": EOS, **CHAR, "=4": 15}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[("=", "4")], unk_token="<pad>"))
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", BOS), ("<eos>", EOS)]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    assert tok("12+30=42")["input_ids"] == [BOS, *_ids("12+30"), 15, CHAR["2"], EOS]  # (the premise: merged)
    (e,) = encode(tok, [Prompt("12+30=", "42")])
    assert e.ids.tolist() == [BOS, *_ids("12+30=42"), EOS] and (e.answer_start, e.end, e.apart) == (7, 9, True)
    assert apart_note([e]).startswith("1 of 1 answer(s) encoded on their own")


def test_an_eos_appending_tokenizer_matches_a_float64_reference_and_the_plain_tokenizers_accuracy(pair):
    """The same weights with the EOS tokenizer and with one that adds nothing. The answers are the finetune's
    greedy two characters after <bos> + prompt (one made wrong), so 2 of 3 are right. Against the float64
    reference over the hand-written <bos> prompt answer <eos>: every per-token KL, the summary and the accuracy;
    before the fix the answer came after an <eos> (accuracy 0 of 3, the ids differ). With the plain tokenizer
    (same model, no <bos>: other contexts) the reference agrees as well."""
    eos_base, eos_ft = pair["eos"]
    questions = ["12+30=", "7+8=", "45+45="]
    answers = [_greedy(eos_ft, [BOS, *_ids(q)], 2) for q in questions]
    wrong = "0" if answers[2][0] != "0" else "1"
    answers[2] = wrong + answers[2][1]
    prompts = [Prompt(q, a) for q, a in zip(questions, answers, strict=True)] + [Prompt("9+9=")]
    rep = behavior(str(eos_base), [str(eos_ft)], prompts, labels=["ft"], curve=None, device="cpu")
    seqs = [([BOS, *_ids(q + a), EOS], 1 + len(q), 1 + len(q + a)) for q, a in zip(questions, answers, strict=True)]
    seqs.append(([BOS, *_ids("9+9="), EOS], None, None))
    t = rep.tokens[rep.tokens["experiment"] == "finetuned"]
    for i, (ids, _, _) in enumerate(seqs):
        assert t[t["prompt"] == i].sort_values("position")["next_token_id"].tolist() == ids[1:] + [-1]
    fwd, rev, acc = _reference(eos_base, eos_ft, seqs)
    assert acc == [True, True, False, None]
    _check_against(rep, fwd, rev, acc)
    (note,) = [n for n in rep.notes if "<eos>" in n]
    assert note.startswith("the base's tokenizer ends each text with <eos> (4 of 4 prompt(s))") and "\n" not in note
    assert not any("encoded on their own" in n for n in rep.notes)

    base, ft = pair["plain"]
    plain = behavior(str(base), [str(ft)], prompts, labels=["ft"], curve=None, device="cpu")
    seqs = [(_ids(q + a), len(q), len(q + a)) for q, a in zip(questions, answers, strict=True)]
    seqs.append((_ids("9+9="), None, None))
    _check_against(plain, *_reference(base, ft, seqs))
    assert not any("<eos>" in n for n in plain.notes)


# --- 2. a saved data set's numbers and nulls -------------------------------------------------------------------------
def test_a_saved_dataset_refuses_a_null_prompt_and_answers_that_are_not_text(tmp_path):
    """A float answer column (pandas makes one when an answer is missing) was read as "61.0", a null prompt as the
    text "None"; JSONL refuses both rows. Now one line naming the row; a column of whole numbers likewise (JSONL
    refuses 42: one rule for both readers)."""
    import datasets
    import pandas as pd

    df = pd.DataFrame({"prompt": ["21+40=", "26+11="], "answer": [61.0, np.nan]})
    datasets.Dataset.from_pandas(df).save_to_disk(str(tmp_path / "float"))
    datasets.Dataset.from_dict({"question": ["21+40=", None], "answer": ["61", "5"]}).save_to_disk(
        str(tmp_path / "null")
    )
    datasets.Dataset.from_dict({"prompt": ["21+40="], "answer": [61]}).save_to_disk(str(tmp_path / "int"))
    for name, want in [
        ("float", "row 0: 'answer' must be a string, got 61.0;"),
        ("null", "row 1: 'question' must be a string, got null."),
        ("int", "row 0: 'answer' must be a string, got 61;"),
    ]:
        with pytest.raises(ConfigError) as err:
            read_prompts(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}, {want}") and "\n" not in str(err.value)
    jsonl = tmp_path / "null.jsonl"
    jsonl.write_text(json.dumps({"prompt": None, "answer": "5"}) + "\n")
    with pytest.raises(ConfigError, match="line 1: expected an object with a string 'prompt'"):
        read_prompts(jsonl)
    datasets.Dataset.from_dict({"prompt": ["21+40=", "26+11="], "answer": ["61", None]}).save_to_disk(
        str(tmp_path / "text")
    )
    assert [(p.text, p.answer) for p in read_prompts(tmp_path / "text")] == [("21+40=", "61"), ("26+11=", None)]


def test_a_dataset_of_text_answers_scores_as_its_jsonl_and_the_reference(pair, tmp_path):
    """The same rows as a saved data set and as JSONL read the same prompts, and score the float64 reference's
    numbers (the answer "61", not "61.0": '.' is no token of this tokenizer)."""
    import datasets

    base, ft = pair["plain"]
    rows = [{"prompt": "21+40=", "answer": "61"}, {"prompt": "26+11=", "answer": "37"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = read_prompts(tmp_path / "ds")
    assert prompts == read_prompts(tmp_path / "p.jsonl") == [Prompt(r["prompt"], r["answer"]) for r in rows]
    rep = behavior(str(base), [str(ft)], prompts, labels=["ft"], curve=None, device="cpu")
    seqs = [(_ids(r["prompt"] + r["answer"]), len(r["prompt"]), len(r["prompt"]) + 2) for r in rows]
    _check_against(rep, *_reference(base, ft, seqs))


# --- 3. TRL's prompt/completion rows ---------------------------------------------------------------------------------
def test_trl_prompt_completion_rows_are_scored_with_their_completion_as_the_answer(pair, tmp_path):
    """``{"prompt": "41+10=", "completion": "51"}`` (the zoo's SFT files) lost its completion: KL over the prompt
    only, accuracy NaN, no note. Now the completion is the answer, in JSONL and in a saved data set, scored as the
    float64 reference scores prompt + completion (the finetune's greedy completions, so accuracy 1)."""
    import datasets

    base, ft = pair["plain"]
    rows = [{"prompt": q, "completion": _greedy(ft, _ids(q), 2)} for q in ("41+10=", "32+49=")]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "sft_ds"))
    want = [Prompt(r["prompt"], r["completion"]) for r in rows]
    assert read_prompts(tmp_path / "sft.jsonl") == read_prompts(tmp_path / "sft_ds") == want
    rep = behavior(str(base), [str(ft)], want, labels=["ft"], curve=None, device="cpu")
    seqs = [(_ids(r["prompt"] + r["completion"]), 6, 8) for r in rows]
    fwd, rev, acc = _reference(base, ft, seqs)
    assert acc == [True, True]
    _check_against(rep, fwd, rev, acc)
    assert rep.tokens["predicts_answer"].sum() == 2 * 2  # (two answer tokens per prompt, one model run)


def test_trl_conversational_and_unpaired_preference_completions_are_refused_in_one_line(tmp_path):
    """TRL's conversational prompt-completion rows (lists of {role, content}) and its unpaired preference rows
    (a completion labelled false is a rejected one, not an answer) are refused naming the line; an 'answer' key
    comes before 'completion'."""
    f = tmp_path / "p.jsonl"
    cases = [
        (
            {"prompt": "12+30=", "completion": [{"role": "assistant", "content": "42"}]},
            "line 1: 'completion' must be a string, got [{",
        ),
        ({"prompt": "12+30=", "completion": "41", "label": False}, "line 1: a 'completion' labelled false"),
        ({"prompt": [{"role": "user", "content": "12+30="}], "completion": "42"}, "line 1: 'prompt' is a list"),
    ]
    for row, want in cases:
        f.write_text(json.dumps(row) + "\n")
        with pytest.raises(ConfigError) as err:
            read_prompts(f)
        assert str(err.value).startswith(f"{f}, {want}") and "\n" not in str(err.value)
    f.write_text(
        json.dumps({"prompt": "1+1=", "completion": "2", "label": True})
        + "\n"
        + json.dumps({"prompt": "2+2=", "answer": "4", "completion": "5"})
        + "\n"
    )
    assert [(p.text, p.answer) for p in read_prompts(f)] == [("1+1=", "2"), ("2+2=", "4")]
