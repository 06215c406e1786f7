"""A planted Markov chain and a short pretraining loop for the bigram-subnetwork tests (no hub, no disk);
their tiny models come from :func:`tests.models.bigram_model`."""

from __future__ import annotations

import numpy as np
import torch

from tests.models import BIGRAM_VOCAB as V  # vocabulary of the planted chain and of every tiny model


def planted_transition(v: int = V, seed: int = 0, concentration: float = 0.3) -> np.ndarray:
    """(v, v) row-stochastic matrix with peaked Dirichlet rows."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(v, concentration), size=v)
    p = np.maximum(p, 1e-4)
    return p / p.sum(1, keepdims=True)


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
