"""Behaviour sixth-pass fixes on tiny models: an empty prompt under a base tokenizer that puts ``<bos>`` in front is
scored as ``<bos> answer`` against an independent float64 reference (it was ``answer <bos>``, with false notes), and
a finetune whose own tokenizer encodes a prompt to nothing is noted as encoding it otherwise (the run ended with an
error that blamed the base's tokenizer, after the earlier finetunes were computed), its tokenizer compared before
any model is loaded."""

import shutil

import numpy as np
import pytest
import torch
from tokenizers import processors

from subnetviz.analysis.behavior import Prompt, behavior
from tests.ckpt_fixtures import bf16_step, read_state_dict, write_folder
from tests.models import char_tokenizer, make_tiny_llama


def _bos_tokenizer():
    tok = char_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)]
    )
    return tok


@pytest.fixture(scope="module")
def bos_pair(tmp_path_factory):
    """A base whose tokenizer puts <bos> in front of every text (as Llama-3's, Gemma's, Mistral's), a finetune that
    moved a random 30 % of every matrix with the same tokenizer, and one whose own tokenizer adds no <bos>."""
    root = tmp_path_factory.mktemp("bh6")
    base = make_tiny_llama(root / "base", hidden=16, intermediate=32)
    _bos_tokenizer().save_pretrained(base)
    sd = read_state_dict(base)
    g = torch.Generator().manual_seed(5)
    moved = {k: torch.where(torch.rand(v.shape, generator=g) < 0.3, bf16_step(v, 4), v) for k, v in sd.items()}
    ft = write_folder(root / "ft", moved, config_from=base)
    _bos_tokenizer().save_pretrained(ft)
    ft_plain = root / "ft_plain"
    shutil.copytree(ft, ft_plain)
    for f in ft_plain.glob("tokenizer*"):
        f.unlink()
    char_tokenizer().save_pretrained(ft_plain)  # no post-processor: '' encodes to no token
    return base, ft, ft_plain


def _reference(base, ft, ids: list[int]) -> tuple[np.ndarray, list[int]]:
    """Forward KL(base ‖ ft) per position and the finetune's argmax, float64 weights, one prompt, NumPy softmax."""
    from transformers import AutoModelForCausalLM

    x = torch.tensor([ids])
    out = []
    for m in (base, ft):
        model = AutoModelForCausalLM.from_pretrained(str(m), dtype=torch.float64).eval()
        with torch.no_grad():
            z = model(x).logits[0].numpy()
        z = z - z.max(-1, keepdims=True)
        out.append(z - np.log(np.exp(z).sum(-1, keepdims=True)))
    lb, lf = out
    return (np.exp(lb) * (lb - lf)).sum(-1), lf.argmax(-1).tolist()


def test_an_empty_prompt_under_a_bos_tokenizer_matches_a_float64_reference(bos_pair):
    base, ft, _ = bos_pair
    tok = _bos_tokenizer()
    answer = "12+3=15"
    rep = behavior(str(base), [str(ft)], [Prompt("", answer)], curve=None, random_control=False, device="cpu")
    ids = tok(answer)["input_ids"]  # the intended text: <bos> 1 2 + 3 = 1 5
    assert ids[0] == tok.bos_token_id
    kl, pred = _reference(base, ft, ids)
    t = rep.tokens[rep.tokens["experiment"] == "finetuned"].sort_values("position")
    assert t["next_token_id"].tolist() == ids[1:] + [-1]
    assert t["token"].iloc[0] == "<bos>" and t["predicts_answer"].sum() == len(answer)
    np.testing.assert_allclose(t["kl_forward"].to_numpy(), kl, rtol=1e-4, atol=1e-7)
    correct = rep.prompts.loc[rep.prompts["experiment"] == "finetuned", "correct"].iloc[0]
    assert correct is not None and bool(correct) == (pred[:-1] == ids[1:])  # scored: <bos> predicts its first token
    assert not any("appended" in n or "ends each text" in n for n in rep.notes), rep.notes  # nothing merged/appended


def test_a_finetunes_tokenizer_that_encodes_a_prompt_to_nothing_is_a_note_said_before_any_model_loads(
    bos_pair, monkeypatch
):
    import subnetviz.analysis.behavior as bh
    import subnetviz.checkpoints.models as models

    base, ft, ft_plain = bos_pair
    events = []
    note, load = bh.tokenizer_note, models.load_causal_lm
    monkeypatch.setattr(bh, "tokenizer_note", lambda ft, *a, **k: events.append(("note", ft)) or note(ft, *a, **k))
    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: events.append(("load",)) or load(*a, **k))
    prompts = [Prompt("12+3=", "15"), Prompt("", "7")]
    rep = behavior(str(base), [str(ft), str(ft_plain)], prompts, curve=None, random_control=False, device="cpu")
    assert set(rep.summary["model"]) == {"ft", "ft_plain"}
    (said,) = [n for n in rep.notes if "its own tokenizer" in n]
    assert said.startswith("ft_plain: its own tokenizer encodes 2 of 2 prompt(s) otherwise")
    assert "1 of them to no token at all" in said
    assert events[:2] == [("note", str(ft)), ("note", str(ft_plain))] and ("load",) in events[2:]
