"""Training a subnetwork mask by continuous sparsification (Savarese et al. 2020), as the bigram
subnetworks paper does it (``paper_code/utils/circuit_utils.py::train_circuit``), without patching
modules.

One real logit ``s`` per maskable weight (init 0, i.e. mask 0.5; weights that are exactly 0 get
``s = -1e6``); the soft mask is ``sigmoid(beta * s)`` with ``beta`` starting at 1 and multiplied by
``beta_growth`` after every optimizer step. The forward pass is ``functional_call`` with
``W * sigmoid(beta * s)`` for the maskable weights; everything else (embeddings, unembedding,
norms, biases) is the model's own and frozen. The loss, in nats, is

    soft-target CE(target rows, logits[..., :V]) averaged over every position
    + lam * sum(sigmoid(beta * s)) / |M|

with target rows from a :class:`~subnetviz.bigram.stats.BigramTable` gathered per batch, or
``"optimal"``: the full model's own softmax (the paper's "optimal subnetwork"). AdamW on the logits
only. Stop when ``#(0.1 <= mask <= 0.9) < 1% of #(mask > 0.9)`` (the paper's rule; also when nothing
is undecided) or at ``max_steps``. The binary mask is ``s > 0``. A loss that is not finite (a model whose
logits hold NaN/Inf) stops the run with :class:`~subnetviz.errors.NonFiniteError`: no mask is made.

The model is run in eval mode (no dropout): the base is frozen, and dropout noise would only blur
the target. Batches are drawn by a seeded permutation of the training sequences. With
``tensorboard_dir`` every step's curve values are also written there as TensorBoard scalars
(``train/loss``, ``train/ce``, ...), like the TRL training runs.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call

from subnetviz.bigram.maskable import family_of, maskable_names
from subnetviz.bigram.stats import BigramTable, TokenCorpus, check_vocab
from subnetviz.config import resolve_device
from subnetviz.errors import ConfigError, NonFiniteError, suggest
from subnetviz.masks import MaskSet

ZERO_WEIGHT_LOGIT = -1e6
TARGETS = ("bigram", "optimal")


@dataclass(frozen=True)
class MaskTrainingConfig:
    """Constants of one mask-training run. ``PRESETS`` holds the paper's and a fast one."""

    lam: float = 10.0
    lr: float = 1e-2
    beta_growth: float = 1.003
    weight_decay: float = 0.01
    batch_size: int = 32
    max_steps: int = 3000
    seed: int = 0
    preset: str = "fast"

    def validate(self) -> None:
        if not isinstance(self.lam, int | float) or math.isnan(self.lam) or self.lam < 0:
            raise ConfigError(f"lambda = {self.lam!r}; the sparsity weight must be a number >= 0.")
        if self.lr <= 0 or self.beta_growth < 1 or self.weight_decay < 0:
            raise ConfigError(
                f"lr {self.lr}, beta_growth {self.beta_growth}, weight_decay {self.weight_decay}: "
                "need lr > 0, beta_growth >= 1, weight_decay >= 0."
            )
        if self.batch_size < 1 or self.max_steps < 1:
            raise ConfigError(f"batch_size {self.batch_size} and max_steps {self.max_steps} must be >= 1.")


PRESETS: dict[str, MaskTrainingConfig] = {
    # the paper's constants: AdamW 5e-5 (wd 0.01), beta x1.001 per step, 32 x 128 tokens, 15K steps
    "paper": MaskTrainingConfig(
        lr=5e-5,
        beta_growth=1.001,
        weight_decay=0.01,
        batch_size=32,
        max_steps=15000,
        preset="paper",
    ),
    # the brief's CPU reproduction: lr 1e-2, beta x1.003 (decided in ~2K steps on a 100K-weight model)
    "fast": MaskTrainingConfig(
        lr=1e-2, beta_growth=1.003, weight_decay=0.01, batch_size=32, max_steps=3000, preset="fast"
    ),
}


def preset_config(preset: str = "fast", **overrides) -> MaskTrainingConfig:
    """The preset's constants with ``overrides`` (any :class:`MaskTrainingConfig` field) applied."""
    if preset not in PRESETS:
        raise ConfigError(f"preset {preset!r} is unknown; choose one of {sorted(PRESETS)}.{suggest(preset, PRESETS)}")
    cfg = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    return cfg


@dataclass(frozen=True)
class MaskTrainingResult:
    """The binary mask (``s > 0``), the per-step curve and how the run ended."""

    mask_set: MaskSet
    curve: pd.DataFrame  # step, loss, ce, reg, beta, kept (sigma > 0.5), above (> 0.9), undecided, seconds
    steps: int
    stopped_by: str  # "rule" | "max_steps" | "cancelled"
    soft_final: dict = field(default_factory=dict)  # fractions below 0.1 / undecided / above 0.9

    def to_frame(self) -> pd.DataFrame:
        return self.curve


def _batches(corpus: TokenCorpus, batch_size: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    n = len(corpus.ids)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield corpus.ids[perm[i : i + batch_size]]


def loss_is_stable(ce, window: int = 10, margin: int = 100) -> bool:
    """The paper's ``check_loss_stability`` (``paper_code/utils/circuit_utils.py``), over the whole curve.

    Walking from step 1, each CE is compared with the mean of the up to ``window`` steps before it (from step 0,
    spikes included). A spike is a CE above that mean + 0.25 or above 1.25 × that mean. The run is unstable when,
    from a spike until ``margin`` steps before the end, no CE comes back down to that earlier mean (so a spike in
    the last ``margin`` steps always fails). A jump that stays up fails too: it is never re-attained.
    The paper retries such runs (up to 3 times). Unlike the paper, a curve with a NaN or Inf CE is never stable
    (a NaN compares False with every threshold and would pass as no spike)."""
    ce = np.asarray(ce, dtype=np.float64).reshape(-1)
    if not np.isfinite(ce).all():
        return False
    end = len(ce) - int(margin)  # a spike must be recovered from before this step
    prev = list(ce[:1])
    for i in range(1, len(ce)):
        prev_mean = float(np.mean(prev))
        if ce[i] > prev_mean + 0.25 or ce[i] > 1.25 * prev_mean:
            if i >= end or ce[i:end].min() > prev_mean:
                return False
        prev.append(ce[i])
        if len(prev) > window:
            prev.pop(0)
    return True


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_v target[v] * log_softmax(logits)[v], in nats.

    ``logits``: ``(N, V_model)``, truncated to ``target``'s ``V``; ``target``: ``(N, V)`` rows."""
    logp = torch.log_softmax(logits[:, : target.shape[1]].float(), dim=-1)
    # 0 * -inf would be nan: only positions where the target has mass contribute
    return -(torch.where(target > 0, target * logp, torch.zeros_like(logp))).sum(-1).mean()


def train_bigram_mask(
    model,
    corpus: TokenCorpus,
    target: BigramTable | str,
    config: MaskTrainingConfig | None = None,
    *,
    device: str = "auto",
    on_step: Callable[[int, int, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    metadata: dict | None = None,
    tensorboard_dir: str | os.PathLike | None = None,
) -> MaskTrainingResult:
    """Train a mask over ``model``'s maskable weights to mimic ``target`` on ``corpus``.

    ``target``: a :class:`BigramTable` (the bigram subnetwork) or ``"optimal"`` (the full model's
    softmax). ``on_step(step, total, metrics)`` is called after every optimizer step; the run
    returns early, marked ``cancelled``, when ``should_stop()`` is true. ``tensorboard_dir``: a
    folder that receives the curve as TensorBoard event files (a job passes its run folder's
    ``tensorboard/``). The model's weights are not modified (it is moved to ``device`` and put in
    eval mode; ``requires_grad`` flags are restored)."""
    config = config or PRESETS["fast"]
    config.validate()
    family_of(model)
    if isinstance(target, str):
        if target != "optimal":
            raise ConfigError(f"target {target!r}; give a BigramTable or 'optimal'.")
        table = None
    else:
        table = target
        check_vocab(table, model)
        table.check_ids(corpus.ids)
    if corpus.ids.numel() == 0:
        raise ConfigError("the training corpus holds no tokens.")
    dev = torch.device(resolve_device(device))
    torch.manual_seed(config.seed)
    model = model.to(dev).eval()
    grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)  # frozen base: only the mask logits get gradients
    events = _EventWriter(tensorboard_dir, config) if tensorboard_dir is not None else None
    try:
        return _train(model, corpus, table, config, dev, on_step, should_stop, metadata, events)
    finally:
        if events is not None:
            events.close()
        for n, p in model.named_parameters():
            p.requires_grad_(grad_flags[n])


class _EventWriter:
    """The curve as TensorBoard scalars ``train/<column>`` at each step, plus the config as text."""

    def __init__(self, folder: str | os.PathLike, config: MaskTrainingConfig):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(log_dir=str(folder))
        self.writer.add_text("config", "  \n".join(f"{k} = {v}" for k, v in asdict(config).items()))

    def step(self, rec: dict) -> None:
        for key, value in rec.items():
            if key != "step":
                self.writer.add_scalar(f"train/{key}", value, rec["step"])

    def close(self) -> None:
        self.writer.close()


def _train(model, corpus, table, config, dev, on_step, should_stop, metadata, events=None) -> MaskTrainingResult:
    names = maskable_names(model)
    params = dict(model.named_parameters())
    weights = {n: params[n].detach() for n in names}
    logits = {
        n: torch.where(
            w == 0, torch.full_like(w, ZERO_WEIGHT_LOGIT, dtype=torch.float32), torch.zeros_like(w, dtype=torch.float32)
        ).requires_grad_(True)
        for n, w in weights.items()
    }
    n_mask = sum(s.numel() for s in logits.values())
    opt = torch.optim.AdamW(list(logits.values()), lr=config.lr, weight_decay=config.weight_decay)
    beta = 1.0
    rows, stopped_by, step = [], "max_steps", 0
    batches = _batches(corpus, config.batch_size, config.seed)
    t0 = time.perf_counter()
    for step in range(1, config.max_steps + 1):
        if should_stop is not None and should_stop():
            stopped_by, step = "cancelled", step - 1
            break
        ids = next(batches).to(dev)
        with torch.no_grad():
            if table is None:
                tgt = torch.softmax(model(ids).logits.float(), dim=-1)
                tgt = tgt.reshape(-1, tgt.shape[-1])
            else:
                tgt = table.probs_rows(ids)
        soft = {n: torch.sigmoid(beta * s) for n, s in logits.items()}
        masked = {n: weights[n] * soft[n].to(weights[n].dtype) for n in names}
        out = functional_call(model, masked, (ids,))
        ce = soft_cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), tgt)
        reg = sum(m.sum() for m in soft.values()) / n_mask
        loss = ce + config.lam * reg
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise NonFiniteError(
                f"mask training: the loss is {loss_value} at step {step} (CE {float(ce.detach())}); the model "
                "gives NaN/Inf logits, so no mask is made. Check the model's weights."
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        beta *= config.beta_growth
        with torch.no_grad():
            # sigmoid(beta*s) > 0.9 <=> s > ln(9)/beta (and < 0.1 <=> s < -ln(9)/beta): compare, no sigmoid
            cut = math.log(9.0) / beta
            low = sum(int((s < -cut).sum()) for s in logits.values())
            above = sum(int((s > cut).sum()) for s in logits.values())
            undecided = n_mask - low - above
            kept = sum(int((s > 0).sum()) for s in logits.values())
        rec = {
            "step": step,
            "loss": loss_value,
            "ce": float(ce.detach()),
            "reg": float(reg.detach()),
            "beta": beta,
            "kept": kept / n_mask,
            "above": above / n_mask,
            "undecided": undecided / n_mask,
            "seconds": time.perf_counter() - t0,
        }
        rows.append(rec)
        if events is not None:
            events.step(rec)
        if on_step is not None:
            on_step(step, config.max_steps, rec)
        if undecided < 0.01 * above or undecided == 0:
            stopped_by = "rule"
            break
    masks = {n: (s.detach() > 0).cpu() for n, s in logits.items()}
    meta = {
        "method": "continuous sparsification",
        "target": "optimal" if table is None else "bigram",
        "lambda": config.lam,
        "preset": config.preset,
        "steps": step,
        "stopped_by": stopped_by,
        "beta_final": beta,
        "config": asdict(config),
        "model_type": model.config.model_type,
        **(metadata or {}),
    }
    if table is not None:
        meta["bigram_source"] = table.source
    meta["stable"] = loss_is_stable([r["ce"] for r in rows])
    soft_final = {}
    if rows:
        soft_final = {
            "undecided": rows[-1]["undecided"],
            "above": rows[-1]["above"],
            "below": 1 - rows[-1]["undecided"] - rows[-1]["above"],
        }
    return MaskTrainingResult(MaskSet(masks, meta), pd.DataFrame(rows), step, stopped_by, soft_final)
