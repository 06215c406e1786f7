"""PPO's exact-match reward module against the GRPO reward function, read the way TRL 0.29.1's
``get_reward`` reads it (score at the last non-pad token after the context), and the PPO overlay's
availability check."""

import pytest
import torch

from subnetviz.demo.tokenizer import build_tokenizer
from subnetviz.experiments.ppo import ExactMatchReward, unavailable_reason
from subnetviz.training.data import exact_match_reward

ROWS = [("12+3=", "15"), ("7+7=", "14"), ("40+2=", "42")]


def _tok():
    tok = build_tokenizer(8)
    tok.padding_side = "left"
    return tok


def _reward(tok):
    return ExactMatchReward(tok, {tuple(tok(p)["input_ids"]): a for p, a in ROWS})


def _trl_read(model, query_responses, pad, context_length):
    """What TRL's get_reward does with a reward model (re-stated here, not imported: TRL 1.16 has none)."""
    mask = query_responses != pad
    ids = torch.masked_fill(query_responses, ~mask, 0)
    hidden = getattr(model, model.base_model_prefix)(input_ids=ids, attention_mask=mask).hidden_states[-1]
    logits = model.score(hidden)
    resp_pad = (query_responses[:, context_length:] == pad).int()
    first = torch.where(resp_pad.any(1), resp_pad.argmax(1), torch.full_like(resp_pad[:, 0], resp_pad.shape[1]))
    last = first - 1 + context_length
    return logits[torch.arange(len(ids)), last].squeeze(-1)


@pytest.mark.parametrize(
    ("completions", "expected"),
    [
        (["15", "14", "42"], [1, 1, 1]),  # all right, no EOS
        (["15<eos>", "41<eos>", "4"], [1, 0, 0]),  # right with EOS, wrong, a prefix of the answer
        (["1", "14<eos>", "42"], [0, 1, 1]),  # too short; right; right
        (["155", "<eos>", "42<eos>"], [0, 0, 1]),  # too long; empty; right
    ],
)
def test_reward_equals_exact_match_at_the_sequence_end(completions, expected):
    tok = _tok()
    pad, eos = tok.pad_token_id, tok.eos_token_id
    queries = tok([p for p, _ in ROWS], return_tensors="pt", padding=True)["input_ids"]
    width = 4
    resp = []
    for c in completions:
        ids = tok(c.replace("<eos>", ""), add_special_tokens=False)["input_ids"] + ([eos] if "<eos>" in c else [])
        resp.append(ids + [pad] * (width - len(ids)))
    qr = torch.cat([queries, torch.tensor(resp)], dim=1)
    got = _trl_read(_reward(tok), qr, pad, queries.shape[1])
    texts = [tok.decode([t for t in r if t != pad], skip_special_tokens=True) for r in resp]
    want = exact_match_reward(texts, [a for _, a in ROWS])
    assert got.tolist() == want == expected


def test_unknown_prompt_and_prefix_prompts_are_errors():
    tok = _tok()
    with pytest.raises(ValueError, match="no known prompt"):
        r = _reward(tok)
        ids = torch.tensor([tok("3+3=")["input_ids"] + tok("6", add_special_tokens=False)["input_ids"]])
        r.backbone(input_ids=ids, attention_mask=torch.ones_like(ids))
    short, long = tok("1+1")["input_ids"], tok("1+1=")["input_ids"]
    if long[: len(short)] == short:  # a tokenizer that adds an end token makes no prefix; then nothing to check
        with pytest.raises(ValueError, match="prefix"):
            ExactMatchReward(tok, {tuple(short): "2", tuple(long): "2"})


def test_missing_overlay_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_PPO_TRL", str(tmp_path))
    reason = unavailable_reason()
    assert reason and "0.29.1" in reason and "bootstrap.sh" in reason and str(tmp_path) in reason
    (tmp_path / "trl/experimental/ppo").mkdir(parents=True)
    (tmp_path / "trl/experimental/ppo/ppo_trainer.py").write_text("")
    (tmp_path / "trl-0.29.1.dist-info").mkdir()  # the version is checked too (tests/unit/test_drivers_review.py)
    (tmp_path / "trl-0.29.1.dist-info/METADATA").write_text("Metadata-Version: 2.1\nName: trl\nVersion: 0.29.1\n")
    assert unavailable_reason() is None
