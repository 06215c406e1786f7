"""How well a (masked) model mimics the bigram model, and what removing a subnetwork costs.

Owns the paper's evaluation (§3.2, §6.3, §A.10):

- fidelity: Pearson r between per-token surprisals (``-log2 p`` of the actual next token) of a model
  and of the bigram model, with infinite bigram surprisals replaced by the largest finite one
  (``r``) or dropped (``r_dropinf``); soft cross-entropy and KL to the bigram rows; bits per token;
- the five settings of ``ablation_perplexities.py`` (full model, subnetwork alone, random subnetwork
  alone, subnetwork ablated, random subnetwork ablated) plus the empty subnetwork and the bigram
  model itself; random ones over several seeds (mean ± sd);
- random subnetworks of the same per-block size (:func:`random_mask`): a uniform shuffle within
  each block, or the paper code's null (a shuffle of the block's rows);
- a sparsity–fidelity curve over several masks (a λ sweep) and generations at temperature 0.3.

All positions with a next token (``T - 1`` per sequence) are scored. Masks are applied out of place
with ``functional_call``; the model's weights are never modified.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call

from subnetviz.bigram.maskable import Block, blocks_of, fitted_mask, full_mask, masked_parameters
from subnetviz.bigram.stats import BigramTable, TokenCorpus, check_vocab
from subnetviz.errors import ConfigError, NonFiniteError
from subnetviz.masks import MaskSet

NULLS = ("uniform", "rows")
LN2 = math.log(2.0)


def random_mask(mask_set: MaskSet, blocks: Sequence[Block], seed: int, null: str = "uniform") -> MaskSet:
    """A random mask with the same number of kept weights in every block as ``mask_set``.

    ``uniform``: the block's entries are permuted uniformly (the paper's description);
    ``rows``: the block's output units are permuted (``np.random.shuffle`` on the un-flattened (out, in) array, as
    the paper's code does, which transposes GPT-2's (in, out) blocks first), which keeps each unit's count."""
    if null not in NULLS:
        raise ConfigError(f"null model {null!r}; choose one of {NULLS}.")
    gen = torch.Generator().manual_seed(int(seed))
    out = {n: m.clone() for n, m in mask_set.masks.items()}
    for b in blocks:
        if b.param not in out:
            continue
        if null == "uniform":
            sub = b.select(mask_set.masks[b.param])
            flat = sub.reshape(-1)
            b.assign(out[b.param], flat[torch.randperm(flat.numel(), generator=gen)].reshape(sub.shape))
        else:
            sub = b.units(mask_set.masks[b.param])
            b.assign_units(out[b.param], sub[torch.randperm(sub.shape[0], generator=gen)])
    meta = {
        **mask_set.metadata,
        "method": f"random ({null}) like {mask_set.metadata.get('method', 'mask')}",
        "seed": int(seed),
    }
    return MaskSet(out, meta)


@dataclass(frozen=True)
class TokenScores:
    """Per-token scores of one model on a corpus (``n`` = sequences × (T - 1) positions)."""

    surprisal_bits: np.ndarray  # (n,) -log2 p(actual next token)
    soft_ce_bits: float  # mean -sum_v P_bigram(v) log2 q(v)
    kl_bits: float  # mean KL(P_bigram || q)


def checkpoint_name(model) -> str:
    """What messages call ``model``: the folder or hub id it was loaded from, else "the model"."""
    return str(getattr(model, "name_or_path", "") or "the model")


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def score_tokens(
    model,
    corpus: TokenCorpus,
    table: BigramTable | None = None,
    params: dict[str, torch.Tensor] | None = None,
    batch_size: int = 16,
    who: str | None = None,
) -> TokenScores:
    """Surprisals of ``model`` (with ``params`` substituted, e.g. masked weights) on ``corpus``;
    logits are truncated to the table's vocabulary when a table is given. A NaN logit gives a NaN surprisal;
    ``who`` (the checkpoint, for the message): refuse NaN or infinite logits instead, with a
    :class:`~subnetviz.errors.NonFiniteError` that says where they start (:func:`_nonfinite_logits`)."""
    dev = _device(model)
    model.eval()
    surp, ce_sum, kl_sum, n = [], 0.0, 0.0, 0
    for i in range(0, len(corpus.ids), batch_size):
        ids = corpus.ids[i : i + batch_size].to(dev)
        out = functional_call(model, params or {}, (ids,))
        v = table.vocab_size if table is not None else out.logits.shape[-1]
        if who is not None and not bool(torch.isfinite(out.logits[:, :-1, :v]).all()):
            raise _nonfinite_logits(model, params, ids, out.logits[:, :-1, :v], who, i)
        logp = torch.log_softmax(out.logits[:, :-1, :v].float(), dim=-1)  # (b, T-1, V)
        nxt = ids[:, 1:]
        surp.append((-logp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1) / LN2).reshape(-1).cpu())
        if table is not None:
            p = table.probs_rows(ids[:, :-1])  # (b*(T-1), V)
            lq = logp.reshape(-1, v)
            plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-45)), torch.zeros_like(p)).sum(-1)
            ce = -torch.where(p > 0, p * lq, torch.zeros_like(p)).sum(-1)
            ce_sum += float(ce.sum()) / LN2
            kl_sum += float((ce + plogp).sum()) / LN2
        n += nxt.numel()
    s = torch.cat(surp).double().numpy() if surp else np.zeros(0)
    return TokenScores(
        s, ce_sum / n if table is not None else float("nan"), kl_sum / n if table is not None else float("nan")
    )


def _nonfinite_logits(model, params, ids: torch.Tensor, logits: torch.Tensor, who: str, first: int) -> NonFiniteError:
    """The one-line error for a batch ``ids`` (``(B, T)``, sequences ``first`` on) whose scored ``logits``
    (``(B, T-1, V)``) hold NaN or Inf: the first such position, and the first layer whose output is not finite (one
    more forward pass of this batch, only here), in the rotation figure's numbering (0 = the embeddings)."""
    from subnetviz.bigram.residual import hidden_states

    seq, pos = (int(x) for x in (~torch.isfinite(logits).all(-1)).nonzero()[0])
    hs = hidden_states(model, ids, params)  # L + 1: the embeddings, then each layer (the last before the final norm)
    layer = next((k for k, h in enumerate(hs) if not bool(torch.isfinite(h).all())), None)
    where = (
        "every layer's output is finite, so the final norm or the output head overflowed"
        if layer is None
        else f"the first layer whose output is not finite is layer {layer} of {len(hs) - 1} (0 = the embeddings)"
    )
    weights = {**dict(model.named_parameters()), **(params or {})}
    broken = next((n for n, w in weights.items() if not bool(torch.isfinite(w).all())), None)
    cause = f"the weight {broken} holds NaN or Inf" if broken else "from finite weights: a value overflowed float32"
    return NonFiniteError(
        f"{who}: its logits are NaN or infinite ({cause}), first at evaluation "
        f"sequence {first + seq}, position {pos}; {where}. Its fidelity, ablations and residual stream cannot be "
        "computed."
    )


def bigram_surprisals(table: BigramTable, corpus: TokenCorpus) -> np.ndarray:
    """(n,) bits of the bigram model on every scored position of ``corpus`` (may hold ``inf``)."""
    ids = corpus.ids.numpy()
    return table.surprisal(ids[:, :-1], ids[:, 1:]).reshape(-1)


def _replace_inf(x: np.ndarray) -> np.ndarray:
    """``x`` with ``+inf`` (a surprisal of a token given probability 0) replaced by its largest finite
    value, or NaN when none is finite. A NaN stays NaN: it is no surprisal, and a number in its place
    would hide a broken model behind a finite fidelity and bits/token."""
    inf = np.isposinf(x)
    if not inf.any():
        return x
    finite = np.isfinite(x)
    return np.where(inf, x[finite].max() if finite.any() else np.nan, x)


def fidelity(model_bits: np.ndarray, bigram_bits: np.ndarray) -> tuple[float, float]:
    """(r with inf replaced by the largest finite value, r with inf tokens dropped)."""
    a, b = np.asarray(model_bits, float), np.asarray(bigram_bits, float)
    r_rep = _pearson(_replace_inf(a), _replace_inf(b))
    keep = np.isfinite(a) & np.isfinite(b)
    return r_rep, _pearson(a[keep], b[keep])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


@dataclass(frozen=True)
class AblationReport:
    """One row per (setting, seed); ``summary()`` gives mean ± sd per setting and Δ bits vs full."""

    rows: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.rows

    def summary(self) -> pd.DataFrame:
        cols = ["r", "r_dropinf", "bits", "soft_ce_bits", "kl_bits", "density"]
        g = self.rows.groupby("setting", sort=False)
        out = g[cols].mean().add_suffix("_mean").join(g[cols].std(ddof=1).add_suffix("_sd"))
        out["n_seeds"] = g.size()
        full = float(out.loc["full", "bits_mean"]) if "full" in out.index else float("nan")
        out["delta_bits"] = out["bits_mean"] - full
        return out.reset_index()


def _row(setting: str, seed, scores: TokenScores, ref: np.ndarray, density: float) -> dict:
    r, r_drop = fidelity(scores.surprisal_bits, ref)
    return {
        "setting": setting,
        "seed": seed,
        "r": r,
        "r_dropinf": r_drop,
        "bits": float(_replace_inf(scores.surprisal_bits).mean()),
        "soft_ce_bits": scores.soft_ce_bits,
        "kl_bits": scores.kl_bits,
        "density": density,
    }


def evaluate_subnetwork(
    model,
    mask_set: MaskSet,
    table: BigramTable,
    corpus: TokenCorpus,
    seeds: Sequence[int] = (0, 1, 2),
    null: str = "uniform",
    batch_size: int = 16,
    who: str | None = None,
) -> AblationReport:
    """Fidelity and loss for: the bigram model, the full model, the empty subnetwork, the subnetwork
    alone, random subnetworks alone, the subnetwork ablated and random subnetworks ablated. A maskable matrix the
    mask does not list is outside the subnetwork (:func:`~subnetviz.bigram.maskable.fitted_mask`), in the
    density and the random subnetworks too. ``who`` (the checkpoint): the full model's NaN or infinite logits are
    refused (:func:`score_tokens`), not scored as NaN."""
    mask_set, _ = fitted_mask(model, mask_set)
    check_vocab(table, model)
    table.check_ids(corpus.ids)
    blocks = blocks_of(model)
    ref = bigram_surprisals(table, corpus)
    bigram_scores = TokenScores(ref, table.row_entropy()[corpus.ids[:, :-1].numpy().reshape(-1)].mean(), 0.0)
    rows = [_row("bigram", None, bigram_scores, ref, float("nan"))]
    rows.append(_row("full", None, score_tokens(model, corpus, table, None, batch_size, who), ref, 1.0))
    empty = masked_parameters(model, full_mask(model, False), "keep")
    rows.append(_row("empty", None, score_tokens(model, corpus, table, empty, batch_size), ref, 0.0))
    d = mask_set.density
    for mode, label in (("keep", "subnetwork"), ("ablate", "ablated")):
        params = masked_parameters(model, mask_set, mode)
        rows.append(
            _row(
                label, None, score_tokens(model, corpus, table, params, batch_size), ref, d if mode == "keep" else 1 - d
            )
        )
    for seed in seeds:
        rnd = random_mask(mask_set, blocks, seed, null)
        for mode, label in (("keep", "random subnetwork"), ("ablate", "random ablated")):
            params = masked_parameters(model, rnd, mode)
            rows.append(
                _row(
                    label,
                    seed,
                    score_tokens(model, corpus, table, params, batch_size),
                    ref,
                    d if mode == "keep" else 1 - d,
                )
            )
    return AblationReport(pd.DataFrame(rows))


def sparsity_fidelity_curve(
    model, masks: Sequence[MaskSet], table: BigramTable, corpus: TokenCorpus, batch_size: int = 16
) -> pd.DataFrame:
    """One row per mask (e.g. a λ sweep): lambda, kept weights, density, fidelity r of the
    subnetwork alone, its bits/token and the bits/token of the model with it ablated. Each mask is taken as
    :func:`~subnetviz.bigram.maskable.fitted_mask` makes it, as :func:`evaluate_subnetwork` does: a maskable
    matrix it does not list is outside the subnetwork and counts in the density over all maskable weights. Bits
    replace infinite surprisals by the largest finite one, as the ablation table's do."""
    check_vocab(table, model)
    ref = bigram_surprisals(table, corpus)
    rows = []
    for ms in masks:
        ms, _ = fitted_mask(model, ms)
        keep = score_tokens(model, corpus, table, masked_parameters(model, ms, "keep"), batch_size)
        abl = score_tokens(model, corpus, table, masked_parameters(model, ms, "ablate"), batch_size)
        r, r_drop = fidelity(keep.surprisal_bits, ref)
        rows.append(
            {
                "lambda": ms.metadata.get("lambda"),
                "target": ms.metadata.get("target"),
                "kept": ms.count,
                "density": ms.density,
                "r": r,
                "r_dropinf": r_drop,
                "bits": float(_replace_inf(keep.surprisal_bits).mean()),
                "ablated_bits": float(_replace_inf(abl.surprisal_bits).mean()),
            }
        )
    return pd.DataFrame(rows).sort_values("density").reset_index(drop=True)


@torch.no_grad()
def generate(
    model,
    prompt_ids: torch.Tensor,
    n_new: int = 20,
    temperature: float = 0.3,
    seed: int = 0,
    params: dict[str, torch.Tensor] | None = None,
    who: str = "the model",
) -> torch.Tensor:
    """Sample ``n_new`` tokens after ``prompt_ids`` (1-D) with p^(1/τ) renormalised, then multinomial
    (the paper's ``generate_text``; seeded). Returns the 1-D prompt + continuation. NaN or infinite logits are
    a :class:`~subnetviz.errors.NonFiniteError` naming ``who`` (torch's multinomial raised a RuntimeError)."""
    if temperature <= 0:
        raise ConfigError(f"temperature {temperature}; must be > 0.")
    dev = _device(model)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    ids = prompt_ids.reshape(1, -1).to(dev)
    max_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 1024)
    for _ in range(n_new):
        logits = functional_call(model, params or {}, (ids[:, -max_pos:],)).logits[0, -1].float()
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteError(
                f"{who}: NaN or infinite logits at generated token {ids.shape[1] - prompt_ids.numel() + 1} "
                f"(seed {seed}); no text can be sampled from them."
            )
        logp = torch.log_softmax(logits, -1) / temperature  # log p^(1/τ), renormalised below
        nxt = torch.multinomial(torch.softmax(logp, -1), 1, generator=gen)
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return ids[0].cpu()


def generations(
    model,
    tokenizer,
    mask_set: MaskSet,
    prompt: str = "This is",
    n_new: int = 20,
    temperature: float = 0.3,
    seeds: Sequence[int] = (0,),
) -> pd.DataFrame:
    """Text from the full model and with the subnetwork ablated: columns setting, seed, prompt and
    continuation (the ``n_new`` sampled tokens, decoded on their own)."""
    prompt_ids = torch.tensor(tokenizer(prompt, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if prompt_ids.numel() == 0:
        raise ConfigError(f"prompt {prompt!r} tokenizes to nothing.")
    settings = {"full": None, "ablated": masked_parameters(model, mask_set, "ablate")}
    rows = []
    for label, params in settings.items():
        for seed in seeds:
            who = f"{checkpoint_name(model)}, the {label} model's generations"
            out = generate(model, prompt_ids, n_new, temperature, seed, params, who=who)
            rows.append(
                {
                    "setting": label,
                    "seed": seed,
                    "prompt": prompt,
                    "continuation": tokenizer.decode(out[prompt_ids.numel() :].tolist()),
                }
            )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class SubnetworkAnalysis:
    """Every analysis of one bigram subnetwork, as the page shows them (frames + a headline)."""

    ablation: AblationReport
    shares: pd.DataFrame  # layer, block, kept, n, share, density
    split: pd.DataFrame  # group, kept, share
    residual: object | None  # ResidualReport (full / subnetwork / random), or None when skipped
    overlap: object | None  # OverlapReport against the optimal subnetwork, or None
    headline: dict

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.headline])


def analyse_subnetwork(
    model,
    mask_set: MaskSet,
    table: BigramTable,
    corpus: TokenCorpus,
    optimal: MaskSet | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    null: str = "uniform",
    residual_tokens: int | None = 20_000,
    overlap_draws: int = 1000,
    batch_size: int = 16,
    where: str | None = None,
) -> SubnetworkAnalysis:
    """Fidelity and ablations, where the subnetwork lives, the residual stream (full / subnetwork /
    random subnetwork; ``residual_tokens=None`` skips it) and, given ``optimal``, the overlap. Each mask is taken
    as :func:`~subnetviz.bigram.maskable.fitted_mask` makes it (a maskable matrix it does not list is outside
    the subnetwork, in every number); the headline's ``notes`` say how (names matched across prefixes, matrices
    it does not list).

    A model whose logits are NaN or infinite (finite weights can overflow float32) is refused with one
    :class:`~subnetviz.errors.NonFiniteError` naming ``where`` (default :func:`checkpoint_name`). A headline value
    that is undefined is NaN, with the reason under ``why_no_share`` (the MLP shares of an empty mask) or
    ``why_no_x_chance`` (×chance and the share inside the optimal mask: :meth:`OverlapReport.why_undefined
    <subnetviz.bigram.locate.OverlapReport.why_undefined>`)."""
    from subnetviz.bigram.locate import attention_mlp_split, compare_subnetworks, subnetwork_shares
    from subnetviz.bigram.residual import analyse_residual_stream

    mask_set, notes = fitted_mask(model, mask_set)
    notes = list(notes)
    if optimal is not None:
        optimal, more = fitted_mask(model, optimal, "optimal mask")
        notes += [f"optimal mask: {n}" for n in more]
    blocks = blocks_of(model)
    where = where or checkpoint_name(model)
    ablation = evaluate_subnetwork(model, mask_set, table, corpus, seeds, null, batch_size, who=where)
    shares = subnetwork_shares(mask_set, blocks)
    split = attention_mlp_split(shares)
    residual = None
    if residual_tokens:
        rnd = random_mask(mask_set, blocks, seeds[0] if seeds else 0, null)
        residual = analyse_residual_stream(
            model,
            corpus,
            {"full": None, "bigram subnetwork": mask_set, "random subnetwork": rnd},
            residual_tokens,
            batch_size,
            where=where,
        )
    overlap = compare_subnetworks(mask_set, optimal, blocks, overlap_draws) if optimal is not None else None
    s = ablation.summary().set_index("setting")
    first = shares[shares["layer"] == shares["layer"].min()]
    headline = {
        "kept": mask_set.count,
        "density": mask_set.density,
        "lambda": mask_set.metadata.get("lambda"),
        "r_full": s.loc["full", "r_mean"],
        "r_subnetwork": s.loc["subnetwork", "r_mean"],
        "r_random_mean": s.loc["random subnetwork", "r_mean"] if seeds else float("nan"),
        "r_random_sd": s.loc["random subnetwork", "r_sd"] if seeds else float("nan"),
        # a share of nothing is undefined (0 / 0), not 0 %
        "first_mlp_share": float(first.loc[first["block"].isin(["MLP-in", "MLP-out"]), "share"].sum())
        if mask_set.count
        else float("nan"),
        "mlp_share": float(split.set_index("group").loc["mlp", "share"]) if mask_set.count else float("nan"),
        "bits_full": s.loc["full", "bits_mean"],
        "delta_bits_ablated": s.loc["ablated", "delta_bits"],
        "delta_bits_random_ablated": s.loc["random ablated", "delta_bits"] if seeds else float("nan"),
        "notes": notes,
    }
    if not mask_set.count:
        headline["why_no_share"] = "the bigram mask is empty"
    if overlap is not None:
        headline.update(
            optimal_density=optimal.density,
            overlap_x_chance=overlap.ratio_uniform,
            overlap_x_chance_rows=overlap.ratio_rows,
            overlap_p=overlap.p_uniform,
            overlap_draws=len(overlap.null_uniform),
            share_in_optimal=overlap.share_of_0_in_1,
        )
        if (why := overlap.why_undefined()) is not None:
            headline["why_no_x_chance"] = why
    return SubnetworkAnalysis(ablation, shares, split, residual, overlap, headline)
