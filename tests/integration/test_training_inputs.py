"""Masked training on inputs that used to break after the model had trained: a GPT-2 base stored without its
``transformer.`` prefix, a tied base that stores its head beside the embedding, a check that fails (the trained
model is kept), and SFT / DPO data whose prompts fill TRL's max_length (refused before any model loads).

Every bitwise check reads the saved files on their integer view (independent of check_outside_mask).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from subnetviz.errors import ConfigError, MaskError
from subnetviz.masks import MaskSet, save_mask_set
from subnetviz.training.config import MAX_LENGTH, TrainConfig
from subnetviz.training.masking import check_outside_mask, check_state_outside_mask
from subnetviz.training.run import train
from tests.models import char_tokenizer, make_tiny_llama, save_model, tiny_model
from tests.training_fixtures import write_addition_data, write_half_mask

IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_addition_data(tmp_path_factory.mktemp("inputs") / "data", n=8)


def _cfg(base: Path, data_file: Path, out: Path, **kw) -> TrainConfig:
    d = dict(algorithm="sft", base=str(base), data=str(data_file), output_dir=str(out), steps=2, batch_size=4)
    d.update(learning_rate=1e-2, seed=0, **kw)
    return TrainConfig(**d)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(Path(folder) / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t.view(torch.int32)


def _random_masks(model, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in model.named_parameters()}


# --- a GPT-2 base stored without "transformer." (as openai-community/gpt2 is) ----------------------------------


def _prefixless_gpt2(folder: Path) -> Path:
    tok = char_tokenizer()
    model = tiny_model("gpt2", vocab=len(tok), hidden=16, layers=2, heads=2, positions=64, **IDS)
    save_model(model, folder, tokenizer=tok)
    sd = load_file(folder / "model.safetensors")
    sd = {k.removeprefix("transformer."): v for k, v in sd.items() if not k.startswith("lm_head")}
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_prefixless_gpt2_base_is_saved_in_its_naming_and_checked(data, tmp_path):
    from transformers import AutoModelForCausalLM

    base = _prefixless_gpt2(tmp_path / "gpt2")
    model = AutoModelForCausalLM.from_pretrained(base)
    masks = _random_masks(model)  # named as the model's parameters: "transformer.h.0..."
    assert all(n.startswith(("transformer.", "lm_head")) for n in masks)
    save_mask_set(tmp_path / "m.safetensors", MaskSet(masks, {"method": "test"}))
    res = train(_cfg(base, data["sft"], tmp_path / "out", mask=str(tmp_path / "m.safetensors"), save_steps=[1]))
    stored = _tensors(base)
    by_key = {n.removeprefix("transformer."): m for n, m in masks.items()}
    for folder in (Path(res.output_dir), Path(res.output_dir) / "checkpoints" / "step-1"):
        saved = _tensors(folder)
        assert {k: v.dtype for k, v in saved.items()} == {k: v.dtype for k, v in stored.items()}  # base's names
        inside = outside = 0
        for k, v in stored.items():
            d = _bits(v) != _bits(saved[k])
            inside += int((d & by_key[k]).sum())
            outside += int((d & ~by_key[k]).sum())
        assert outside == 0 and inside > 100
    for check in (res.mask_check, res.gathered_check):
        assert check["outside_mask_identical"] and check["tensors_compared"] == len(stored)
        assert check["changed_outside"] == 0 and check["changed_inside"] > 100


# --- a tied base that stores lm_head.weight beside the embedding -------------------------------------------------


def _tied_base_storing_head(folder: Path) -> Path:
    tok = char_tokenizer()
    size = dict(vocab=len(tok), hidden=16, intermediate=32, layers=2, heads=2, kv_heads=2)
    save_model(tiny_model("llama", tie=True, **size, **IDS), folder, tokenizer=tok)
    sd = load_file(folder / "model.safetensors")
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_tied_base_storing_its_head_keeps_it_and_checks_it_with_the_embedding(data, tmp_path):
    from transformers import AutoModelForCausalLM

    base = _tied_base_storing_head(tmp_path / "tied")
    model = AutoModelForCausalLM.from_pretrained(base)
    masks = _random_masks(model, seed=1)
    assert "lm_head.weight" not in masks  # tied: not a parameter of its own
    save_mask_set(tmp_path / "m.safetensors", MaskSet(masks, {"method": "test"}))
    res = train(_cfg(base, data["sft"], tmp_path / "out", mask=str(tmp_path / "m.safetensors")))
    stored, saved = _tensors(base), _tensors(Path(res.output_dir))
    assert set(saved) == set(stored) and "lm_head.weight" in saved
    emb, head = saved["model.embed_tokens.weight"], saved["lm_head.weight"]
    assert torch.equal(_bits(emb), _bits(head))  # the head is the embedding, stored twice
    outside = 0
    for k, v in stored.items():
        m = masks["model.embed_tokens.weight" if k == "lm_head.weight" else k]
        outside += int(((_bits(v) != _bits(saved[k])) & ~m).sum())
    assert outside == 0
    for check in (res.mask_check, res.gathered_check):
        assert check["outside_mask_identical"] and check["changed_outside"] == 0
        assert check["tensors_compared"] == len(stored) and check["changed_inside"] > 100


# --- the checks line tensors up as align does; nothing compared is no proof ---------------------------------------


def test_checks_line_up_prefixes_and_tied_heads_and_fail_with_nothing_compared(tmp_path):
    w = torch.zeros(4, 3, dtype=torch.bfloat16)
    moved = w.clone()
    moved[0, 0] = 1.0  # inside the mask
    m = torch.zeros(4, 3, dtype=torch.bool)
    m[0] = True
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save_file({"h.0.w": w}, str(tmp_path / "a" / "model.safetensors"))
    save_file({"transformer.h.0.w": moved}, str(tmp_path / "b" / "model.safetensors"))
    chk = check_outside_mask(tmp_path / "a", tmp_path / "b", {"transformer.h.0.w": m})
    assert (chk.tensors_compared, chk.changed_inside, chk.changed_outside, chk.outside_mask_identical) == (
        1,
        1,
        0,
        True,
    )
    (tmp_path / "c").mkdir()
    save_file({"other": w}, str(tmp_path / "c" / "model.safetensors"))
    with pytest.raises(MaskError, match="no tensor names in common"):
        check_outside_mask(tmp_path / "a", tmp_path / "c", {"h.0.w": m})
    # The gathered state: lined up by prefix; a state that matches nothing compares 0 tensors and is no proof.
    chk = check_state_outside_mask(tmp_path / "a", {"transformer.h.0.w": moved.float()}, {"transformer.h.0.w": m})
    assert (chk.tensors_compared, chk.changed_inside, chk.outside_mask_identical) == (1, 1, True)
    none = check_state_outside_mask(tmp_path / "a", {"unrelated": w.float()}, {"unrelated": m})
    assert none.tensors_compared == 0 and not none.outside_mask_identical
    # A tied head (not in the masks) changes exactly where its embedding changes: inside the embedding's mask.
    tied = tmp_path / "tied"
    tied.mkdir()
    (tied / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": True}))
    save_file({"model.embed_tokens.weight": w, "lm_head.weight": w.clone()}, str(tied / "model.safetensors"))
    state = {"model.embed_tokens.weight": moved.float()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    chk = check_state_outside_mask(tied, state, {"model.embed_tokens.weight": m})
    assert (chk.tensors_compared, chk.changed_inside, chk.changed_outside) == (2, 2, 0) and chk.outside_mask_identical


def test_a_failed_check_keeps_the_trained_model(data, tmp_path, monkeypatch, capsys):
    import subnetviz.training.run as run_mod

    base = make_tiny_llama(tmp_path / "base", hidden=16, intermediate=32)
    mask = write_half_mask(tmp_path / "m.safetensors", base)

    def failing(*args, **kwargs):
        raise MaskError("planted: the check failed.")

    monkeypatch.setattr(run_mod, "check_outside_mask", failing)
    out = tmp_path / "out"
    with pytest.raises(MaskError, match=r"planted: the check failed; the trained model is kept, unpublished") as e:
        train(_cfg(base, data["sft"], out, mask=str(mask)))
    (kept,) = tmp_path.glob("out.unpublished-*")
    assert str(kept) in str(e.value) and "\n" not in str(e.value)
    assert (kept / "model.safetensors").is_file() and (kept / "train_config.json").is_file()
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert str(kept) in capsys.readouterr().err
    # A job's model (RUN_DIR/outputs.tmp/model, which goes when the job fails) is kept in the run folder itself.
    assert run_mod._Partial(tmp_path / "run" / "outputs.tmp" / "model").unpublished().parent == tmp_path / "run"


# --- prompts longer than TRL's max_length ----------------------------------------------------------------------


def test_data_whose_prompts_fill_max_length_is_refused_before_training(data, tmp_path, capsys):
    base = make_tiny_llama(tmp_path / "base", hidden=16, intermediate=32)
    long = "1" * (MAX_LENGTH + 10) + "+1="
    every = tmp_path / "long.jsonl"
    every.write_text("".join(json.dumps({"prompt": long, "completion": "2"}) + "\n" for _ in range(4)))
    for algorithm, rows in (("sft", every), ("dpo", tmp_path / "long_dpo.jsonl")):
        if algorithm == "dpo":
            rows.write_text(json.dumps({"prompt": long, "chosen": "2", "rejected": "3"}) + "\n")
        cfg = _cfg(base, rows, tmp_path / "out", algorithm=algorithm)
        msg = rf"{rows.name}': no row keeps a completion token within the limit of {MAX_LENGTH} tokens .* every prompt"
        with pytest.raises(ConfigError, match=msg) as e:
            cfg.validate()
        assert "\n" not in str(e.value)
        with pytest.raises(ConfigError, match="no row keeps"):
            train(cfg)
    # A few rows over the limit: accepted with a note naming them; TRL leaves them out.
    some = tmp_path / "some.jsonl"
    rows = [json.loads(line) for line in Path(data["sft"]).read_text().splitlines()]
    rows[2] = {"prompt": long, "completion": "2"}
    some.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(base, some, tmp_path / "out2", steps=1)
    assert cfg.validate() == []  # at submit: tokenized until a row is kept, no more (the page waits for it)
    (note,) = cfg.validate(all_rows=True)
    assert f"1 of {len(rows)} rows keep no completion token within the limit of {MAX_LENGTH} tokens" in note
    assert note.endswith("left out of training (rows 3)")
    assert train(cfg).steps_done == 1
    assert "1 of 8 rows" in capsys.readouterr().err


def test_grpo_prompts_that_leave_no_room_in_the_context_are_refused_before_training(tmp_path):
    """TRL's GRPO has no prompt length: a prompt that with max_completion_length generated tokens runs past the
    base's positions (32 here) ran past a GPT-2's position table mid-run (or a RoPE model past its context). At
    submit the longest rows are tokenized, in the training process every row; a completion length that leaves
    no room at all is refused too."""
    base = make_tiny_llama(tmp_path / "base", hidden=16, intermediate=32)  # max_position_embeddings 32
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(10)]
    rows[41] = {"prompt": "1" * 30 + "+1=", "answer": "2"}  # 33 tokens (one per character)
    data_file = tmp_path / "grpo.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(base, data_file, tmp_path / "out", algorithm="grpo", max_completion_length=4, num_generations=2)
    for all_rows in (False, True):
        with pytest.raises(ConfigError, match=r"1 prompt\(s\) take more than 28 tokens .* context of 32 positions "
                           r"\(rows 42 \(33 tokens\)\)"):  # fmt: skip
            cfg.validate(all_rows=all_rows)
    with pytest.raises(ConfigError, match="1 prompt"):
        train(cfg)
    assert not (tmp_path / "out").exists()
    rows[41] = {"prompt": "1" * 20 + "+1=", "answer": "2"}  # 24 tokens + 4 generated: fits
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cfg.validate(all_rows=True) == []
    with pytest.raises(ConfigError, match="max_completion_length 32 leaves no room"):
        _cfg(
            base, data_file, tmp_path / "out", algorithm="grpo", max_completion_length=32, num_generations=2
        ).validate()


def test_rows_a_chat_template_cannot_take_are_refused_in_one_line(tmp_path):
    """Tools that are no JSON, or template arguments that collide with the call's own, raised a JSONDecodeError /
    TypeError out of the submit (the page's "a bug" notice): one line naming the file and the row."""
    from transformers import AutoTokenizer

    from subnetviz.training.data import rows_over_length

    base = make_tiny_llama(tmp_path / "base", hidden=16, intermediate=32)
    tok = AutoTokenizer.from_pretrained(base)
    if not getattr(tok, "chat_template", None):
        tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    msg = [{"role": "user", "content": "1+1="}]
    good = {"prompt": msg, "completion": [{"role": "assistant", "content": "2"}]}
    with pytest.raises(ConfigError, match=r"^data 'x.jsonl': row 2: its chat template cannot be applied") as e:
        rows_over_length([good, {**good, "tools": "{not json"}], tok, "sft", MAX_LENGTH, where="data 'x.jsonl'")
    assert "\n" not in str(e.value)
    collide = {**good, "chat_template_kwargs": {"add_generation_prompt": True, "tokenize": False}}
    assert rows_over_length([good, collide], tok, "sft", MAX_LENGTH) == ([], None)  # the call's own keys win
    # until_kept: the rows after the first batch that keeps one are not tokenized
    many = [good] * 2048 + [{**good, "tools": "{not json"}]
    assert rows_over_length(many, tok, "sft", MAX_LENGTH, until_kept=True) == ([], None)
