"""Tiny on-disk models and data for the training and runner tests (and the masked-GRPO bench).

- :func:`make_char_tokenizer`: a character-level tokenizer over ``<pad> <bos> <eos> 0-9 + =``.
- :func:`make_tiny_llama`: a random Llama saved in bf16 with that tokenizer (a real HF folder).
- :func:`write_addition_data`: two-digit additions as SFT / DPO / GRPO / eval JSONL.
- :func:`write_half_mask`: a random mask set over every parameter (density ``p``).
- :func:`sleep_job`, :func:`fail_job`: job functions for runner tests (``kind: "python"``).

torch is imported inside the functions that need it, so a test job's worker starts fast.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

CHARS = list("0123456789+=")


def make_char_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<pad>"
    )


def make_tiny_llama(
    folder: str | Path, *, hidden: int = 32, intermediate: int = 64, layers: int = 2, heads: int = 2, seed: int = 0
) -> Path:
    """Save a random tiny Llama (bf16) and its char tokenizer to ``folder``; returns the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tok = make_char_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=32,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _pairs(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randrange(10, 50), rng.randrange(10, 50)) for _ in range(n)]


def write_addition_data(folder: str | Path, n: int = 16, seed: int = 0) -> dict[str, Path]:
    """``{kind: path}`` for kinds sft, dpo, grpo, eval (two-digit additions, ``"a+b="`` -> ``"a+b"``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = {"sft": [], "dpo": [], "grpo": [], "eval": []}
    for a, b in _pairs(n, seed):
        p, ans = f"{a}+{b}=", str(a + b)
        rows["sft"].append({"prompt": p, "completion": ans})
        rows["dpo"].append({"prompt": p, "chosen": ans, "rejected": str(a + b + 1)})
        rows["grpo"].append({"prompt": p, "answer": ans})
    rows["eval"] = rows["grpo"][:8]
    paths = {}
    for kind, rs in rows.items():
        paths[kind] = folder / f"{kind}.jsonl"
        paths[kind].write_text("".join(json.dumps(r) + "\n" for r in rs))
    return paths


def write_half_mask(path: str | Path, model_dir: str | Path, p: float = 0.5, seed: int = 0) -> Path:
    """A random mask with density ``p`` over every parameter of the model in ``model_dir``."""
    import torch
    from safetensors import safe_open

    from subnetviz.masks import MaskSet, save_mask_set

    gen = torch.Generator().manual_seed(seed)
    masks = {}
    with safe_open(str(Path(model_dir) / "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            shape = f.get_slice(name).get_shape()
            masks[name] = torch.rand(shape, generator=gen) < p
    return save_mask_set(path, MaskSet(masks, {"method": "test: random", "p": p}))


def sleep_job(config: dict, ctx) -> None:
    """Test job: ``seconds`` of sleeping in ``steps`` steps, writing ``outputs/done.txt``."""
    steps = int(config.get("steps", 10))
    for i in range(steps):
        if ctx.should_stop():
            return
        time.sleep(float(config.get("seconds", 1.0)) / steps)
        ctx.progress(i + 1, steps, loss=1.0 / (i + 1))
    (ctx.out_dir / "done.txt").write_text("ok")
    (ctx.out_dir / "gpu.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", ""))


def fail_job(config: dict, ctx) -> None:
    """Test job: writes a partial output, then raises."""
    (ctx.out_dir / "partial.txt").write_text("half")
    raise ValueError("planned failure")
