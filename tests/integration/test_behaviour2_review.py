"""Behaviour, second review: a mask named like a curve point, an untied base against a finetune that ties its head,
the config note on training-only keys, answers that are not text, a prompt a chat template rendered, seeds out of
range, and the answer tokens left after a context cut. Planted pairs with known answers (a finetune that differs
from its base only inside a mask, a reverted model that must be the base exactly) and hand-counted token tables."""

import json
import shutil

import numpy as np
import pytest
import torch

from subnetviz.analysis.behavior import Prompt, behavior
from subnetviz.errors import ConfigError
from tests.ckpt_fixtures import bf16_step, read_state_dict, write_folder
from tests.models import char_tokenizer, make_tiny_llama

PROMPTS = [Prompt("12+30=", "42"), Prompt("7+8=", "15")]


def _with_tokenizer(src, dst):
    for f in list(src.glob("tokenizer*")) + list(src.glob("special_tokens_map.json")):
        shutil.copy(f, dst / f.name)
    return dst


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A base; ``ft`` differs from it only inside M (a random 20 % of one matrix, moved 40 ULPs)."""
    root = tmp_path_factory.mktemp("behaviour2")
    base = make_tiny_llama(root / "base", seed=0)
    sd = read_state_dict(base)
    name = "model.layers.0.mlp.down_proj.weight"
    m = torch.rand(sd[name].shape, generator=torch.Generator().manual_seed(1)) < 0.2
    sd[name] = torch.where(m, bf16_step(sd[name], 40), sd[name])
    ft = _with_tokenizer(base, write_folder(root / "ft", sd, config_from=base))
    return base, ft, {name: m}


# --- 1. a mask whose name starts with "curve" --------------------------------------------------------------------
def test_a_mask_named_like_a_curve_point_is_reverted_as_a_mask(planted):
    """A mask file curve_top10.safetensors is named curve_top10: it was taken for a curve point and the run ended
    in an IndexError traceback (curve:x in a ValueError). Now each is reverted like any mask: inside is the base
    exactly (the finetune differs only inside M), outside the finetune, and the curve holds only the curve."""
    base, ft, masks = planted
    named = {"curve_top10": masks, "curve:x": masks}
    rep = behavior(str(base), [str(ft)], PROMPTS, masks=named, random_control=False, curve=[1.0], device="cpu")
    s = rep.summary.set_index("experiment")
    want = ["finetuned", "curve_top10/inside", "curve_top10/outside", "curve:x/inside", "curve:x/outside"]
    assert list(s.index) == want
    assert s.loc["finetuned", "kl_forward"] > 0
    for name in named:
        assert s.loc[f"{name}/inside", "kl_forward"] == 0.0 and s.loc[f"{name}/inside", "fraction_reverted"] == 1.0
        assert s.loc[f"{name}/outside", "kl_forward"] == s.loc["finetuned", "kl_forward"]
    assert sorted(rep.curves["order"]) == ["abs_delta", "random"] and (rep.curves["kl_forward"] == 0.0).all()
    assert set(rep.tokens["experiment"]) == set(want)  # (the outside runs were left out of tokens.csv)


# --- 2. an untied base, a finetune that ties its head ------------------------------------------------------------
def _untied_base_tied_ft(root):
    """A base storing lm_head apart from its embedding; a finetune that ties its head, its embedding and one MLP
    moved (its head, the embedding, differs from the base's head everywhere)."""
    src = make_tiny_llama(root / "src", hidden=16, intermediate=32)
    sd = read_state_dict(src)
    emb = sd["model.embed_tokens.weight"]
    base = write_folder(root / "base", {**sd, "lm_head.weight": bf16_step(emb, 5)}, src, tie_word_embeddings=False)
    tied = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    tied["model.embed_tokens.weight"] = bf16_step(emb, 2)
    tied["model.layers.1.mlp.up_proj.weight"] = bf16_step(tied["model.layers.1.mlp.up_proj.weight"], 20)
    ft = write_folder(root / "ft", tied, src, tie_word_embeddings=True)
    return _with_tokenizer(src, base), _with_tokenizer(src, ft)


def _numpy_kl(base, ft, prompts):
    """Mean forward KL(base ‖ ft) per token over ``prompts``, from each model loaded by transformers as it is saved
    (float64, one prompt at a time) and NumPy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    mb, mf = (AutoModelForCausalLM.from_pretrained(str(m), dtype=torch.float64).eval() for m in (base, ft))
    out = []
    for p in prompts:
        ids = torch.tensor([tok(p.text + p.answer)["input_ids"]])
        with torch.no_grad():
            lb, lf = mb(ids).logits[0].numpy(), mf(ids).logits[0].numpy()
        lb = lb - np.logaddexp.reduce(lb, axis=-1, keepdims=True)
        lf = lf - np.logaddexp.reduce(lf, axis=-1, keepdims=True)
        out.append((np.exp(lb) * (lb - lf)).sum(-1))
    return float(np.concatenate(out).mean())


def test_an_untied_base_with_a_tied_finetune_reverts_to_the_base(tmp_path, monkeypatch):
    """Every reverted model kept the finetune's tied head, so "100 % of Δ reverted" had the base's embedding as its
    head: KL above the finetune's own, with no note. The reverted model's head now has a tensor of its own, written
    from the base's head: every change reverted is the base (KL exactly 0), and the finetune is the finetune."""
    from subnetviz.analysis import revert
    from subnetviz.analysis.revert import mask_source

    base, ft = _untied_base_tied_ft(tmp_path)
    rep = behavior(
        str(base), [str(ft)], PROMPTS, masks={"update": mask_source("update")}, random_control=False,
        curve=[1.0], device="cpu",
    )  # fmt: skip
    s = rep.summary.set_index("experiment")
    assert s.loc["update/inside", "fraction_reverted"] == 1.0 and s.loc["update/inside", "kl_forward"] == 0.0
    assert (rep.curves["fraction_reverted"] == 1.0).all() and (rep.curves["kl_forward"] == 0.0).all()
    assert s.loc["finetuned", "kl_forward"] == pytest.approx(_numpy_kl(base, ft, PROMPTS), rel=1e-4)
    assert not [n for n in rep.notes if "head" in n]
    builder = revert.ModelBuilder(str(base), str(ft), "cpu")
    builder.build(revert.mask_selector({}, False))  # everything reverted
    sd = read_state_dict(base)
    for got, name in ((builder.model.get_output_embeddings(), "lm_head.weight"),
                      (builder.model.get_input_embeddings(), "model.embed_tokens.weight")):  # fmt: skip
        assert torch.equal(got.weight.detach().to(torch.bfloat16), sd[name]), name
    # where the model's head cannot be given a tensor of its own, the run says so in one note
    monkeypatch.setattr(revert, "_untie_head", lambda model: None)
    rep = behavior(str(base), [str(ft)], PROMPTS, masks={"update": mask_source("update")}, random_control=False,
                   curve=None, device="cpu")  # fmt: skip
    said = [n for n in rep.notes if "lm_head.weight" in n]
    assert len(said) == 1 and "cannot be restored" in said[0] and "\n" not in said[0]


# --- 3. the config note ---------------------------------------------------------------------------------------
def test_the_config_note_counts_only_keys_that_change_an_eval_forward_pass(planted, tmp_path):
    """A finetune whose config differs only in dropout, the router's loss settings and router logits (what an MoE
    finetune by the HF Trainer saves) was said to be "not the base even with every weight reverted", where that
    revert gave KL exactly 0. Those keys are no difference now; a norm's eps and the activation still are."""
    base, _, masks = planted
    sd = read_state_dict(base)
    training = {
        "attention_dropout": 0.1, "hidden_dropout": 0.2, "resid_pdrop": 0.1, "classifier_dropout": 0.3,
        "output_router_logits": True, "router_aux_loss_coef": 0.02, "router_z_loss_coef": 0.01, "layerdrop": 0.1,
    }  # fmt: skip
    ft = _with_tokenizer(base, write_folder(tmp_path / "ft_train", sd, base, **training))
    rep = behavior(str(base), [str(ft)], PROMPTS, masks={"m": masks}, random_control=False, curve=None, device="cpu")
    assert (rep.summary["kl_forward"] == 0.0).all()  # (the same weights: the keys change nothing in eval mode)
    assert not [n for n in rep.notes if "config" in n]
    cfg = json.loads((base / "config.json").read_text())
    forward = {"rms_norm_eps": cfg["rms_norm_eps"] * 100, "hidden_act": "gelu"}
    ft2 = _with_tokenizer(base, write_folder(tmp_path / "ft_fwd", sd, base, **training, **forward))
    rep = behavior(str(base), [str(ft2)], PROMPTS, masks={"m": masks}, random_control=False, curve=None, device="cpu")
    (note,) = [n for n in rep.notes if "config" in n]
    assert "in 2 key(s)" in note and "hidden_act: 'silu' -> 'gelu'" in note and "rms_norm_eps" in note
    assert rep.summary.set_index("experiment").loc["m/inside", "kl_forward"] > 0  # (and indeed not the base)


# --- 4. answers that are not strings, 5. chat messages ---------------------------------------------------------
@pytest.mark.parametrize("answer", [["42"], 3.0, 42, True, {"text": "2"}])
def test_an_answer_that_is_not_a_string_is_refused_naming_the_file_and_line(tmp_path, answer):
    """["42"] was read as the text "['42']", 3.0 as "3.0", true as "True", and each scored wrong with no word;
    training's reader refuses such a row. Now one line naming the file and line."""
    from subnetviz.analysis.behavior_data import read_prompts

    f = tmp_path / "p.jsonl"
    rows = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "12+30=", "answer": answer}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ConfigError) as exc:
        read_prompts(f)
    msg = str(exc.value)
    assert msg.startswith(f"{f}, line 2: 'answer' must be a string") and "\n" not in msg
    f.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "3+4=", "answer": None}) + "\n")
    assert [(p.text, p.answer) for p in read_prompts(f)] == [("1+1=", "2"), ("3+4=", None)]


def test_chat_message_prompts_are_refused_with_the_format_expected(tmp_path):
    """A prompt of chat messages (the SFT format the training pages read) was refused with "expected an object with
    a string 'prompt'", which did not say that messages are not read here or how to give them."""
    from subnetviz.analysis.behavior_data import read_prompts

    f = tmp_path / "chat.jsonl"
    f.write_text(json.dumps({"prompt": [{"role": "user", "content": "12+30="}], "answer": "42"}) + "\n")
    with pytest.raises(ConfigError) as exc:
        read_prompts(f)
    msg = str(exc.value)
    assert msg.startswith(f"{f}, line 1: 'prompt' is a list (chat messages?)") and "\n" not in msg
    assert "as text" in msg and "apply_chat_template(messages, tokenize=False, add_generation_prompt=True)" in msg
    import datasets  # a saved data set of chat messages: its str() was scored as the text "[{'role': ..."

    chat = [[{"role": "user", "content": "12+30="}]]
    datasets.Dataset.from_dict({"prompt": chat, "answer": ["42"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ConfigError) as exc:
        read_prompts(tmp_path / "ds")
    msg = str(exc.value)
    assert msg.startswith(f"{tmp_path / 'ds'}, row 0: 'prompt' is not text (chat messages?)") and "\n" not in msg
    assert "apply_chat_template(messages, tokenize=False, add_generation_prompt=True)" in msg


def _bos_tokenizer():
    """The char tokenizer that puts <bos> (id 1) in front of every text, as Llama's and Gemma's do."""
    from tokenizers import processors

    tok = char_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 1)]
    )
    return tok


def test_a_prompt_that_begins_with_the_bos_text_gets_no_second_bos():
    """A prompt rendered by a chat template begins with "<bos>"; encoding it added another, so every model was
    scored on "<bos> <bos> ...". Hand-written ids: <bos>=1, then one id per character ('0' is 3)."""
    from subnetviz.analysis.behavior_data import encode

    tok = _bos_tokenizer()
    chars = {c: i + 3 for i, c in enumerate("0123456789+=")}
    want = [1] + [chars[c] for c in "12+30=42"]
    rendered, plain = encode(tok, [Prompt("<bos>12+30=", "42"), Prompt("12+30=", "42")])
    assert rendered.ids.tolist() == want and rendered.answer_start == 7 and not rendered.apart
    assert plain.ids.tolist() == want and plain.answer_start == 7  # (a plain prompt still gets its one BOS)


# --- 6. seeds out of range -------------------------------------------------------------------------------------
def test_a_seed_out_of_range_is_refused_in_one_line_before_any_work(planted, tmp_path, capsys):
    """--seed 1e14 ran the finetune, then ended in "Overflow when unpacking long long" (a traceback). Seeds from 0
    to 2^32 - 1 are taken (the largest one runs the random control and the random curve); others are refused in
    one line by the config check and by the CLI, before anything is written."""
    from subnetviz.__main__ import main
    from subnetviz.analysis.behavior import validate_config

    base, ft, masks = planted
    for seed in (10**14, 2**32, -1, True, 2.5, "3"):
        with pytest.raises(ConfigError, match=r"^behavior config: seed must be a whole number from 0 to 4294967295"):
            validate_config({"base": str(base), "finetuned": [str(ft)], "seed": seed})
    validate_config({"base": str(base), "finetuned": [str(ft)], "seed": 2**32 - 1})
    rep = behavior(str(base), [str(ft)], PROMPTS, masks={"m": masks}, curve=[0.5], seed=2**32 - 1, device="cpu")
    assert rep.summary.set_index("experiment").loc["random(m)/inside", "fraction_reverted"] > 0
    out, _ = tmp_path / "out", capsys.readouterr()  # (the run's loading bars)
    for seed in ("100000000000000", "-1"):
        rc = main(["behavior", str(base), str(ft), "--out", str(out), "--device", "cpu", "--seed", seed])
        err = capsys.readouterr().err
        assert rc == 2 and err.strip() == f"error: --seed must be a whole number from 0 to 4294967295, got {seed}."
        assert not out.exists()


# --- 7. a context cut ------------------------------------------------------------------------------------------
def test_answer_tokens_left_by_a_context_cut_stay_marked_and_the_note_counts_prompts():
    """Cut to 16 positions, a 13-token prompt with a 5-token answer keeps 3 answer tokens, predicted at positions
    12, 13 and 14: they showed predicts_answer 0 (no answer band on the chart). The note's "2 lost answer tokens"
    counted prompts (one lost 2 tokens, the other 10). Counted by hand below."""
    from subnetviz.analysis.behavior_data import Encoded, correct, fit_context, token_frame

    def enc(n_prompt, n_answer):
        ids = torch.arange(n_prompt + n_answer) % 10 + 3
        return Encoded(ids, n_prompt if n_answer else None)

    planted = [enc(6, 1), enc(13, 5), enc(23, 10), enc(20, 0)]  # fits; 3 answer tokens kept; none kept; no answer
    got, note = fit_context(planted, 16)
    assert [len(e.ids) for e in got] == [7, 16, 16, 16]
    assert [e.answer_start for e in got] == [6, 13, None, None]
    frame = token_frame(got, char_tokenizer())
    marked = {p: g.loc[g["predicts_answer"], "position"].tolist() for p, g in frame.groupby("prompt")}
    assert marked == {0: [5], 1: [12, 13, 14], 2: [], 3: []}
    # accuracy: the whole answer of prompt 0 scored; the cut answers not, even where the argmax hits every token left
    perfect = [torch.cat([e.ids[1:], torch.tensor([0])]) for e in got]
    assert [correct(p, e) for p, e in zip(perfect, got, strict=True)] == [True, None, None, None]
    assert note == (
        "3 of 4 prompt(s) longer than the model's context of 16 positions cut to their first 16 tokens; "
        "2 of them lost answer tokens (not scored for accuracy)."
    )


def test_an_answer_whose_eos_alone_is_cut_is_scored():
    """A tokenizer that appends <eos> (Llama-2's add_eos_token): 14 prompt tokens + a 2-token answer fill a context
    of 16 and only the <eos> is cut. The prompt was marked cut, its right answer left unscored (accuracy 0 where it
    is 1/2) and counted as having lost answer tokens (behaviour review 4)."""
    from subnetviz.analysis.behavior_data import Encoded, correct, fit_context, tail_note

    eos = 2
    whole = Encoded(torch.tensor([*range(3, 17), 20, 21, eos]), 14, answer_end=16, tail=(eos,))  # 17 tokens
    short = Encoded(torch.tensor([3, 4, 5, 20, eos]), 3, answer_end=4, tail=(eos,))  # fits
    got, note = fit_context([whole, short], 16)
    assert [len(e.ids) for e in got] == [16, 5]
    assert not got[0].cut and got[0].end == 16 and got[0].tail == ()
    perfect = torch.cat([got[0].ids[1:], torch.tensor([0])])
    assert correct(perfect, got[0]) is True  # the whole answer is there: scored
    assert note == (
        "1 of 2 prompt(s) longer than the model's context of 16 positions cut to their first 16 tokens; "
        "1 lost only the special token(s) after the answer (scored)."
    )
    tok = char_tokenizer()
    assert "(1 of 2 prompt(s))" in tail_note(got, tok)  # the cut one ends with no <eos> now
