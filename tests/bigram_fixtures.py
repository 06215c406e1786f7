"""Tiny models and a planted Markov chain for the bigram-subnetwork tests (no hub, no disk)."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig

V = 16  # vocabulary of the planted chain and of every tiny model


def planted_transition(v: int = V, seed: int = 0, concentration: float = 0.3) -> np.ndarray:
    """(v, v) row-stochastic matrix with peaked Dirichlet rows."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(v, concentration), size=v)
    p = np.maximum(p, 1e-4)
    return p / p.sum(1, keepdims=True)


def tiny_model(kind: str, vocab: int = V, seed: int = 0):
    torch.manual_seed(seed)
    common = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0, "vocab_size": vocab}
    if kind == "gpt2":
        cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, attn_implementation="eager", **common)
    elif kind == "gpt_neox":
        cfg = GPTNeoXConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            attn_implementation="eager",
            **common,
        )
    elif kind == "llama":
        cfg = LlamaConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            attn_implementation="eager",
            **common,
        )
    else:
        raise ValueError(kind)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # no parameter exactly 0 and non-trivial norms/biases: masks must be visible
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def pretrain(model, ids: torch.Tensor, steps: int = 120, lr: float = 3e-3, batch: int = 32, seed: int = 0):
    """A few AdamW steps of next-token training so the model knows something about the chain."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        b = ids[torch.randint(0, len(ids), (batch,), generator=gen)]
        loss = model(b, labels=b).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
