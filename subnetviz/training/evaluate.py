"""Greedy exact-match accuracy of a saved model on a JSONL problem set (``prompt``, ``answer``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from subnetviz.training.data import read_jsonl


def planned_tokens(
    model_dir: str | os.PathLike, eval_jsonl: str | os.PathLike, max_new_tokens: int = 8, batch_size: int = 64
) -> tuple[int, int]:
    """What :func:`evaluate_accuracy` will run for one model, without loading it: (generation steps, tokens
    through the model), from the prompts and the tokenizer. Each batch's prompts, left padded to the longest,
    go through once, then one token per step for ``max_new_tokens`` steps (the cache holds the rest)."""
    from subnetviz.checkpoints.models import load_tokenizer

    rows = read_jsonl(eval_jsonl, "eval")
    lengths = [len(ids) for ids in load_tokenizer(model_dir)([r["prompt"] for r in rows])["input_ids"]]
    steps = tokens = 0
    for i in range(0, len(lengths), batch_size):
        chunk = lengths[i : i + batch_size]
        steps += 1 + max_new_tokens
        tokens += len(chunk) * (max(chunk) + max_new_tokens)
    return steps, tokens


def evaluate_accuracy(
    model_dir: str | os.PathLike, eval_jsonl: str | os.PathLike, *, max_new_tokens: int = 8, batch_size: int = 64
) -> float:
    """Greedy exact-match accuracy: share of rows whose stripped completion equals ``answer``.

    Prompts are tokenized as TRL's GRPO trainer tokenizes them (the tokenizer's defaults), left
    padded; the completion is the decoded new tokens without special tokens.
    """
    from subnetviz.checkpoints.models import load_causal_lm, load_tokenizer
    from subnetviz.checkpoints.sources import float32_bytes
    from subnetviz.config import require_memory, resolve_device

    rows = read_jsonl(eval_jsonl, "eval")
    device = resolve_device("auto")
    need = float32_bytes(model_dir)
    require_memory(f"Accuracy of {Path(model_dir).name} (the model in float32)", need, device, need)
    tok = load_tokenizer(model_dir)
    tok.padding_side = "left"
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = load_causal_lm(model_dir).to(device).eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            enc = tok([r["prompt"] for r in chunk], return_tensors="pt", padding=True).to(device)
            gen = model.generate(
                **enc,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=tok.eos_token_id,
                top_p=None,
                top_k=None,
                temperature=None,
            )
            texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            correct += sum(t.strip() == str(r["answer"]).strip() for t, r in zip(texts, chunk, strict=True))
    return correct / len(rows)
