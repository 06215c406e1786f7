"""Behaviour of finetuned models against their base: teacher-forced KL, accuracy, revert experiments.

This module owns the link from "which weights changed" to "what the model now does":

- **KL** at every position of every prompt (and of its answer when given), teacher-forced on the
  gold tokens: forward KL(π_base ‖ π_ft) = Σ_y π_base(y) log(π_base(y)/π_ft(y)) and the reverse
  KL(π_ft ‖ π_base), in nats per token, from float64 log-softmax of the logits (RL's Razor,
  arXiv 2509.04259: the forward KL on the task predicts forgetting). Means are token-weighted.
- **Accuracy** (rows with an answer): teacher-forced exact match, every answer token is the
  argmax given the gold prefix, i.e. greedy decoding reproduces the answer's tokens (the stop
  token is not checked).
- **Revert experiments** for a mask M: the finetune with its entries inside M set back to the base
  (``inside``) and with those outside M set back (``outside``); a random mask of the same per-tensor
  count as the control; and the curve of KL / accuracy against the fraction of Δ reverted, largest
  |Δ| first vs a random order. A reverted model is built by streaming each tensor pair from disk
  into one model instance (``where(M, base, ft)``, :mod:`subnetviz.analysis.revert`), never by
  loading a second copy of the weights.

- **Routing** of mixture-of-experts models (:mod:`subnetviz.analysis.routing`): per layer and prompt set, the
  overlap of the experts each token reaches in the base and in each model run here, and the entropy of the
  expert load; the ``routers`` mask swaps the routers between the base and the finetune.

Everything runs in float32 weights (bf16 checkpoints upcast exactly), logits to float64 for the KL.
Results: :class:`BehaviorReport` (frames) and :func:`write_behavior` (``behavior.json``, ``summary.csv``,
``tokens.csv``, ``prompts.csv``, ``curves.csv``, and ``routing.csv`` for mixture-of-experts models).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from subnetviz.analysis.behavior_data import (
    ANSWER_COLUMNS,
    PROMPT_COLUMNS,
    Encoded,
    Prompt,
    apart_note,
    check_token_ids,
    correct,
    encode,
    encodings,
    fit_context,
    kl_terms,
    logits_of,
    read_prompts,
    tail_note,
    token_frame,
    zoo_prompt_files,
)
from subnetviz.analysis.revert import (
    ModelBuilder,
    Selector,
    abs_delta_selector,
    aligned_pair,
    check_mask_names,
    check_model_finite,
    config_difference,
    mask_placement_note,
    mask_selector,
    mask_source,
    random_order_selector,
    random_selector,
    release_freed,
    revert_bytes,
    update_masks,
    write_unloaded_pieces,
)
from subnetviz.analysis.routing import RoutingTap, overall, routing_bytes, routing_frame, routing_rows
from subnetviz.cache import read_frame
from subnetviz.errors import ConfigError, NonFiniteError, suggest

__all__ = [
    "ANSWER_COLUMNS",
    "PROMPT_COLUMNS",
    "BehaviorReport",
    "Encoded",
    "Prompt",
    "behavior",
    "correct",
    "encode",
    "kl_terms",
    "logits_of",
    "read_prompts",
    "zoo_prompt_files",
]

ProgressFn = Callable[[int, int, str], None]
CURVE_POINTS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
TOKEN_COLUMNS = [
    "model",
    "experiment",
    "prompt",
    "set",
    "position",
    "token",
    "next_token_id",
    "predicts_answer",
    "kl_forward",
    "kl_reverse",
]
_BASE_CACHE_BYTES = 1 << 30  # keep the base's logits in memory below this; recompute above


@dataclass
class BehaviorReport:
    """``summary``: one row per (model, experiment): kl_forward, kl_reverse (mean nats/token), accuracy,
    fraction_reverted, tokens; ``tokens``: per position; ``prompts``: per prompt means; ``curves``:
    KL/accuracy against the fraction of Δ reverted (order ``abs_delta`` or ``random``); ``routing``: per model,
    experiment, prompt set and MoE router (:data:`subnetviz.analysis.routing.COLUMNS`; empty for dense models).
    ``tokens`` and ``prompts`` name each prompt's set (``set``: its file, :func:`prompt_set_name`), ``prompts`` also
    its ``line`` there (a JSONL file's line, from 1; a data set's row, from 0). ``params``: what the run was given
    (:func:`run_config`: the prompt files as given and as read, the limit, masks, curve, seed, batch size, device),
    written to ``behavior.json`` so that its folder says what produced it."""

    base: str
    labels: list[str]
    summary: pd.DataFrame
    tokens: pd.DataFrame
    prompts: pd.DataFrame
    curves: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    routing: pd.DataFrame = field(default_factory=lambda: routing_frame([]))
    params: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """``models[label]``: kl_forward, kl_reverse, accuracy and ``reverts[mask][side]`` with the same figures."""
        models: dict = {}
        for row in self.summary.itertuples():
            figs = {
                "kl_forward": row.kl_forward,
                "kl_reverse": row.kl_reverse,
                "accuracy": None if pd.isna(row.accuracy) else row.accuracy,
            }
            m = models.setdefault(row.model, {"reverts": {}})
            if row.experiment == "finetuned":
                m.update(figs, tokens=int(row.tokens))
            else:
                m["reverts"].setdefault(row.mask, {})[row.side] = {**figs, "fraction_reverted": row.fraction_reverted}
        ft = overall(self.routing)
        ft = ft[ft["experiment"] == "finetuned"]
        for model, g in ft.groupby("model", sort=False):  # token-weighted over the routers
            w = g["tokens"].to_numpy(float)
            models.setdefault(model, {"reverts": {}})["routing"] = {
                "routers": int(g["router"].nunique()),
                "jaccard": float(np.average(g["jaccard"], weights=w)) if w.sum() else None,
                "rerouted_share": float(np.average(g["rerouted_share"], weights=w)) if w.sum() else None,
            }
        return _json_safe(
            {
                "base": self.base,
                "labels": self.labels,
                "unit": "nats per token",
                "models": models,
                "notes": self.notes,
                "seconds": self.seconds,
                "tokens_per_second": self.tokens_per_second,
                "params": self.params,
            }
        )


def _json_safe(obj):
    """``obj`` with every NaN or infinite float as None: JSON has no NaN (``json.dumps`` wrote a bare ``NaN``,
    which a strict parser refuses)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    return obj


# --- the experiment -----------------------------------------------------------------------------------
def behavior(
    base: str,
    finetuned: Sequence[str],
    prompts: Sequence[Prompt],
    *,
    labels: Sequence[str] | None = None,
    domains: Sequence[str] | None = None,
    masks: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    random_control: bool = True,
    curve: Sequence[float] | None = CURVE_POINTS,
    batch_size: int = 16,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressFn | None = None,
) -> BehaviorReport:
    """KL and accuracy of each finetuned model against ``base`` on ``prompts``, and revert experiments.

    ``masks``: name -> mask set (tensor name -> bool tensor), each reverted inside and outside in
    every finetune (and its random control when ``random_control``); ``curve``: fractions of Δ for
    the |Δ|-order and random-order curves (None: no curve; each fraction once, ascending). Prompts longer
    than the models' context are cut to it, with a note. ``domains``: each prompt's set (its file), by which the
    routing of MoE models is told apart (default: one set).
    """
    from subnetviz.checkpoints.models import load_causal_lm, load_tokenizer
    from subnetviz.config import resolve_device

    t0 = time.perf_counter()
    dev = resolve_device(device)
    labels = _labels(labels, finetuned, prompts)
    masks = dict(masks or {})
    refuse_control_names(masks, "behaviour")
    curve = sorted({float(f) for f in curve}) if curve else None  # a fraction given twice was run twice
    _refuse_adapters([base, *finetuned])
    for ft in finetuned:  # from the headers, before any model is loaded: a pair behaviour cannot compare
        aligned_pair(str(base), str(ft))
    tok = load_tokenizer(base)  # (any failure to load it: one line naming the folder and the file)
    encoded = encode(tok, prompts)
    # each finetune's own tokenizer against the base's, before any model is loaded (not after the earlier finetunes)
    tok_notes = [tokenizer_note(str(ft), tok, prompts, encoded, base=str(base)) for ft in finetuned]
    enc, cut_note = fit_context(encoded, _context_length([base, *finetuned]))
    domains = list(domains) if domains is not None else ["all"] * len(prompts)
    if len(domains) != len(prompts):
        raise ConfigError(f"{len(domains)} prompt-set names for {len(prompts)} prompts.")
    token_domains = [d for d, e in zip(domains, enc, strict=True) for _ in range(len(e.ids))]
    lines = [_line_of(p) for p in prompts]
    batches = [enc[i : i + batch_size] for i in range(0, len(enc), batch_size)]
    n_tokens = sum(len(e.ids) for e in enc)
    _require_room(
        base, finetuned, batches, n_tokens, tok, dev, _revert_room(base, finetuned, masks, random_control, curve)
    )
    base_model = load_causal_lm(base)
    write_unloaded_pieces(base_model, str(base))  # (Llama 4 experts stored one by one: transformers cannot load them)
    base_model = base_model.to(dev).eval()
    check_model_finite(base_model, str(base))  # each finetune's: by its ModelBuilder
    check_token_ids(encoded, prompts, base_model.get_input_embeddings().weight.shape[0], tok, str(base))
    vocab = base_model.config.get_text_config().vocab_size  # (a vision-language model's is its text config's)
    keep = n_tokens * vocab * 4 <= _BASE_CACHE_BYTES
    with RoutingTap(base_model) as base_tap:  # an MoE base's routing, taken in that pass (or in one of its own)
        base_cache = base_logits_kept(base_model, batches, dev, base_tap, keep, f"{base} (the base)")
    base_picks = base_tap.take()

    plan = _plan(masks, random_control, curve, seed)
    summary, tokens, per_prompt, curves, routing = [], [], [], [], []
    notes = [n for n in (cut_note, apart_note(enc), tail_note(enc, tok)) if n]
    static = token_frame(enc, tok)
    static.insert(1, "set", token_domains)
    total, step, t_fwd, fwd_tokens = len(finetuned) * len(plan), 0, 0.0, 0
    for label, ft, tok_note in zip(labels, finetuned, tok_notes, strict=True):
        builder = ModelBuilder(str(base), str(ft), dev)
        tap = RoutingTap(builder.model)  # (its routers found once; hooked for each experiment's pass)
        for name, ms in masks.items():
            if not callable(ms):
                check_mask_names(ms, builder, name)
                notes += [f"{label}: {n}" for n in [mask_placement_note(ms, builder, name)] if n]
        notes += [f"{label}: {tok_note}"] if tok_note else []
        differ = config_difference(str(base), str(ft))
        if differ:
            notes.append(
                f"{label}: reverted models keep the finetune's config, which differs from the base's in "
                f"{len(differ)} key(s) ({'; '.join(differ[:4])}{' ...' if len(differ) > 4 else ''}): even with every "
                "weight reverted, the model is not the base."
            )
        for run in plan:
            experiment, is_curve = run.experiment, run.order is not None
            if progress:
                progress(step, total, f"{label}: {experiment}")
            step += 1
            frac = builder.build(run.make(builder))
            t1 = time.perf_counter()
            base_logits = (
                base_cache[bi]
                if base_cache is not None
                else _packed(logits_of(base_model, bt, dev), bt, f"{base} (the base)", bi * batch_size)
                for bi, bt in enumerate(batches)
            )
            with tap:
                kl_f, kl_r, acc, rows = _score(
                    builder.model, base_logits, batches, batch_size, dev, tap, f"{label} ({experiment})"
                )
            picks = tap.take()
            release_freed()  # (the pass's activations: what glibc kept of them, back to the system)
            if tap.routers and not is_curve:
                routing += routing_rows(label, experiment, picks, base_picks, tap.routers, token_domains)
            per_prompt += [
                {
                    "model": label,
                    "experiment": experiment,
                    "prompt": r["prompt"],
                    "set": domains[r["prompt"]],
                    "line": lines[r["prompt"]],
                    **r,
                }
                for r in rows
            ]
            t_fwd, fwd_tokens = t_fwd + time.perf_counter() - t1, fwd_tokens + n_tokens
            if not is_curve:
                tokens.append(static.assign(model=label, experiment=experiment, kl_forward=kl_f, kl_reverse=kl_r))
            scored = [a for a in acc if a is not None]
            row = {
                "model": label,
                "experiment": experiment,
                "mask": run.mask,
                "side": run.side,
                "kl_forward": float(kl_f.mean()),
                "kl_reverse": float(kl_r.mean()),
                "accuracy": float(np.mean(scored)) if scored else float("nan"),
                "fraction_reverted": frac,
                "tokens": n_tokens,
            }
            if is_curve:
                curves.append({**row, "order": run.order, "fraction": float(run.side)})
            else:
                summary.append(row)
        notes += [n for n in [builder.cast_note(label), builder.head_note(label)] if n]
        del builder
    if progress:
        progress(total, total, "done")
    notes += [] if keep else ["base logits recomputed per model (too large to keep in memory)."]
    unread = sorted(base_tap.unread)
    if unread:
        notes.append(
            f"routing: {len(unread)} router(s) returned neither expert indices nor logits of every token "
            f"({', '.join(unread[:3])}{' ...' if len(unread) > 3 else ''}); left out of the routing table."
        )
    curve_cols = ["model", "order", "fraction", "fraction_reverted", "kl_forward", "kl_reverse", "accuracy"]
    return BehaviorReport(
        str(base),
        labels,
        pd.DataFrame(summary),
        pd.concat(tokens, ignore_index=True)[TOKEN_COLUMNS],
        pd.DataFrame(per_prompt),
        pd.DataFrame(curves, columns=curve_cols),
        notes,
        time.perf_counter() - t0,
        fwd_tokens / t_fwd if t_fwd else 0.0,
        routing_frame(routing),
    )


def tokenizer_note(ft: str, tok, prompts: Sequence[Prompt], encoded: Sequence, base: str | None = None) -> str | None:
    """The note for a finetune whose own tokenizer encodes prompts otherwise than the base's ``tok`` (which gave
    ``encoded``): every model is given the base's tokens, and a finetune trained with added tokens, another
    vocabulary or another end-of-text token was scored silently on an encoding it never saw. None where it has no
    tokenizer of its own (or one that does not load: only the base's is read) or encodes every prompt the same, or
    where its tokenizer files are ``base``'s byte for byte (nothing loaded or encoded: a finetune saved with its
    base's tokenizer, the common case, cost the Behaviour run 40 % more on the demo zoo)."""
    from subnetviz.checkpoints.models import load_tokenizer
    from subnetviz.errors import SubnetvizError

    if base is not None and _same_tokenizer_files(base, ft):
        return None
    try:
        own = load_tokenizer(ft)
    except SubnetvizError:
        return None
    theirs = encodings(own, prompts)  # (a prompt it encodes to no token: encoded otherwise, not a refusal)
    same = [a is not None and bool(torch.equal(a.ids, b.ids)) for a, b in zip(theirs, encoded, strict=True)]
    if all(same):
        return None
    first, empty = same.index(False), sum(a is None for a in theirs)
    return (
        f"its own tokenizer encodes {same.count(False):,} of {len(same):,} prompt(s) otherwise than the base's (first: "
        f"prompt {first}"
        + (f"; {empty:,} of them to no token at all" if empty else "")
        + "); every model is given the base's tokens, so its numbers are those of the base's encoding."
    )


def _same_tokenizer_files(base: str, ft: str) -> bool:
    """Whether the folders of ``base`` and ``ft`` hold the same tokenizer files (:data:`~subnetviz.checkpoints
    .models.TOKENIZER_FILES` and the JSON beside them), byte for byte; False where either cannot be read."""
    from subnetviz.checkpoints.models import TOKENIZER_FILES, TOKENIZER_JSON, model_folder
    from subnetviz.errors import SubnetvizError

    try:
        a, b = model_folder(base), model_folder(ft)
        names = dict.fromkeys(TOKENIZER_FILES + TOKENIZER_JSON + ("merges.txt",))
        files = [(a / n, b / n) for n in names if (a / n).is_file() or (b / n).is_file()]
        return bool(files) and all(x.is_file() and y.is_file() and _same_file(x, y) for x, y in files)
    except (OSError, SubnetvizError):
        return False


# tokenizer_config.json keys that change no token a text encodes to (TRL's and transformers' saves write them)
_NOT_ENCODING = {"is_local", "local_files_only", "padding_side", "truncation_side", "name_or_path", "_commit_hash"}


def _same_file(x: Path, y: Path) -> bool:
    """Byte for byte, or for ``tokenizer_config.json`` the same JSON but for :data:`_NOT_ENCODING`'s keys."""
    bx, by = x.read_bytes(), y.read_bytes()
    if bx == by or x.name != "tokenizer_config.json":
        return bx == by
    try:
        cx, cy = json.loads(bx), json.loads(by)
    except ValueError:
        return False
    if not (isinstance(cx, dict) and isinstance(cy, dict)):
        return False
    return {k: v for k, v in cx.items() if k not in _NOT_ENCODING} == {
        k: v for k, v in cy.items() if k not in _NOT_ENCODING
    }


def _line_of(prompt: Prompt) -> int | None:
    """The line of ``prompt`` in its JSONL file (from 1), or its row in a data set (from 0), as its ``where`` says
    it (``"FILE, line N"``, ``"SPEC, row N"``); None for a prompt made in code."""
    head, _, number = (prompt.where or "").rpartition(" ")
    return int(number) if head.endswith((", line", ", row")) and number.isdigit() else None


def base_logits_kept(model, batches, dev, tap: RoutingTap, keep: bool, who: str) -> list[torch.Tensor] | None:
    """The base's logits of each batch, packed (:func:`_packed`: the bytes :func:`_require_room` counts, not the
    padded batch's), when ``keep``; else None, after a pass for the routing tap where the base has routers.
    Non-finite logits are refused naming the prompt (:func:`_packed`)."""
    cache: list[torch.Tensor] | None = [] if keep else None
    first = 0
    for bt in batches if keep or tap.routers else ():
        logits = _packed(_forward(model, bt, dev, tap), bt, who, first)
        first += len(bt)
        if cache is not None:
            cache.append(logits)
        del logits
    return cache


def _packed(logits: torch.Tensor, batch, who: str | None = None, first: int = 0) -> torch.Tensor:
    """(Σ n_i, V) logits of a right-padded (B, n, V) batch: each row's valid positions, one after another (a copy,
    so the padded batch is freed). ``who``: refuse NaN or Inf logits with a :class:`NonFiniteError` naming the
    model and the prompt (its index ``first`` + row): finite weights can still overflow float32, and the KLs and
    argmax accuracy of such logits mean nothing."""
    out = torch.cat([logits[j, : len(e.ids)] for j, e in enumerate(batch)])
    if who is not None:
        bad = ~torch.isfinite(out).all(-1)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            ends = np.cumsum([len(e.ids) for e in batch])
            j = int(np.searchsorted(ends, row, side="right"))
            pos = row - (int(ends[j - 1]) if j else 0)
            raise NonFiniteError(
                f"{who}: NaN or infinite logits at prompt {first + j}, position {pos}, from finite weights (a value "
                "overflowed float32); the KLs and accuracy of that model cannot be computed."
            )
    return out


def _forward(model, batch, dev, tap: RoutingTap | None):
    """:func:`logits_of` of one batch, the routing tap (if any) told which of its positions are tokens."""
    if tap is not None and tap.routers:
        tap.expect([len(e.ids) for e in batch], max(len(e.ids) for e in batch))
    return logits_of(model, batch, dev)


def _labels(labels: Sequence[str] | None, finetuned: Sequence[str], prompts: Sequence) -> list[str]:
    """One label per finetune (default: its folder's name, made unique as the update analysis makes it: two
    runs' ``outputs/model`` are ``model`` and ``model-2``); refuses labels given twice (one model's results
    replaced the other's) and an empty prompt set."""
    from subnetviz.analysis.update_pass import _label_for

    used: set[str] = set()
    labels = list(labels) if labels else [_label_for(str(f), used) for f in finetuned]
    blank = [lbl for lbl in labels if not str(lbl).strip()]
    if blank:  # a row with no name, which the pages cannot tell apart or pick
        raise ConfigError(f"behaviour: empty label(s) {blank}; give each finetuned model a name.")
    if len(labels) != len(finetuned):
        raise ConfigError(f"{len(labels)} labels for {len(finetuned)} finetuned models.")
    twice = sorted({lbl for lbl in labels if labels.count(lbl) > 1})
    if twice:
        raise ConfigError(f"behaviour: the label(s) {twice} name two finetuned models; give each its own label.")
    if not prompts:
        raise ConfigError("behaviour needs at least one prompt.")
    return labels


def _context_length(models: Sequence) -> int | None:
    """The fewest positions any of ``models`` takes (``max_position_embeddings``, GPT-2's ``n_positions``, ...;
    from each config's text config: a vision-language model's language model says it, not its top level), None
    when no config says. A config transformers refuses is one CheckpointError naming its model
    (:func:`~subnetviz.checkpoints.models.model_config`), before any model is loaded: it was passed over here, and
    its strict validation's errors (no ValueError) were a traceback."""
    from subnetviz.checkpoints.models import CONTEXT_KEYS, model_config

    found = []
    for m in models:
        cfg = model_config(m).get_text_config()
        for key in CONTEXT_KEYS:
            n = getattr(cfg, key, None)
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                found.append(n)
                break
    return min(found) if found else None


@dataclass(frozen=True)
class Step:
    """One experiment run on each finetune: its name, the mask it reverts and which side (the curve's fraction for a
    curve point), ``order`` (``abs_delta`` or ``random``) for a curve point and None for anything else, and the
    selector maker. A curve point is told by ``order``, not by its name: a mask named ``curve_top10`` (a file's stem)
    was taken for one, and its run ended in an IndexError traceback."""

    experiment: str
    mask: str
    side: str
    make: Callable[[ModelBuilder], Selector | None]
    order: str | None = None


def control_name(mask: str) -> str:
    """The name of the random control of the mask named ``mask`` (its experiment: ``random(NAME)/inside``)."""
    return f"random({mask})"


def refuse_control_names(names, where: str) -> None:
    """Refuse a mask named as another mask's random control (:func:`control_name`: ``random(X)`` beside a mask
    ``X``), in one line that says so from ``where`` (``--mask``, ``behavior config``): both made the experiment
    ``random(X)/inside``, two summary rows of one mask and side, of which ``behavior.json`` kept one and the page drew
    both in one chart."""
    names = [str(n) for n in names]
    taken = {control_name(n): n for n in names}
    clash = next((n for n in names if n in taken), None)
    if clash is not None:
        raise ConfigError(
            f"{where}: the mask name {clash!r} is that of the random control of the mask {taken[clash]!r} (its "
            f"experiment {clash}/inside); give the mask another name."
        )


def _plan(masks: Mapping, random_control: bool, curve: Sequence[float] | None, seed: int) -> list[Step]:
    """The experiments run on each finetune: the plain finetune first, then each mask inside / outside (and its
    random control), then the curves."""
    plan = [Step("finetuned", "", "", lambda b: None)]
    for name, ms in masks.items():
        plan += [
            Step(f"{name}/inside", name, "inside", lambda b, ms=ms: mask_selector(b.resolve(ms), True)),
            Step(f"{name}/outside", name, "outside", lambda b, ms=ms: mask_selector(b.resolve(ms), False)),
        ]
        if random_control and not getattr(ms, "whole_tensors", False):  # (the routers: the same mask drawn)
            rand = control_name(name)
            plan.append(Step(f"{rand}/inside", rand, "inside", lambda b, ms=ms: random_selector(b.resolve(ms), seed)))
    for f in curve or ():
        at = f"{f:g}"
        plan += [
            Step(f"curve abs_delta {at}", "curve:abs_delta", at, lambda b, f=f: abs_delta_selector(b, f), "abs_delta"),
            Step(f"curve random {at}", "curve:random", at, lambda b, f=f: random_order_selector(f, seed), "random"),
        ]
    return plan


# What the first computation of a process imports and compiles beside what it holds (transformers' model code,
# numba's kernels): 0.18 GiB measured on loading a Llama; a check that left it out was passed by a computation
# that then held more than it counted.
_LIBRARIES = 192 * 2**20


def _revert_room(base, finetuned, masks: Mapping, random_control: bool, curve: Sequence[float] | None) -> int:
    """What reverting the finetunes holds beside the two models at most (:func:`~subnetviz.analysis.revert
    .revert_bytes`, one finetune at a time): the mask sets made per finetune (``update``, ``topk:F``, the routers),
    the |Δ| sample where a curve point or ``topk:F`` is below 1, and the largest tensor's build temporaries (the
    random control's permutation where a mask set has one)."""
    made = [ms for ms in masks.values() if callable(ms) and not getattr(ms, "whole_tensors", False)]
    routers = any(callable(ms) and getattr(ms, "whole_tensors", False) for ms in masks.values())
    drawn = random_control and any(not getattr(ms, "whole_tensors", False) for ms in masks.values())
    # (topk:F: its fraction is inside the function, counted as below 1)
    sampled = any(0 < f < 1 for f in curve or ()) or any(ms is not update_masks for ms in made)
    return max(
        (
            revert_bytes(
                str(base),
                str(ft),
                made=len(made),
                routers=routers,
                random_control=drawn,
                sampled=sampled,
            )
            for ft in finetuned
        ),
        default=0,
    )


def _require_room(base, finetuned, batches, n_tokens: int, tok, dev: str, reverting: int = 0) -> None:
    """Refuse before loading what would not fit (:func:`subnetviz.config.require_memory`): the base and one
    finetune (rewritten in place per experiment) in float32, the base's logits where they are kept, a
    batch's logits of both models with the KL's temporaries (about four of them), ``reverting``
    (:func:`_revert_room`: mask sets, the |Δ| sample, the build temporaries) and what the libraries take
    (:data:`_LIBRARIES`). On a GPU the host holds one model at a time, while it is loaded, beside the reverting
    (counted whole on both: its masks and permutations are made on the host). All from the headers and the
    config: nothing is loaded. A config transformers refuses is one CheckpointError
    (:func:`~subnetviz.checkpoints.models.model_config`)."""
    from subnetviz.checkpoints.models import model_config
    from subnetviz.checkpoints.sources import float32_bytes
    from subnetviz.config import require_memory

    cfg = model_config(base).get_text_config()
    try:
        vocab = int(cfg.vocab_size)
    except (AttributeError, TypeError, ValueError):  # (no vocab_size, or none a number: the tokenizer's size)
        cfg, vocab = None, len(tok)
    base_b, ft_b = float32_bytes(base), max((float32_bytes(ft) for ft in finetuned), default=0)
    cache = n_tokens * vocab * 4
    batch = max((len(bt) * max(len(e.ids) for e in bt) for bt in batches), default=0) * vocab * 4
    held = base_b + ft_b + (cache if cache <= _BASE_CACHE_BYTES else 0) + 4 * batch + routing_bytes(cfg, n_tokens)
    held += reverting + _LIBRARIES
    what = "Behaviour (the base and a finetune in float32, the logits, an MoE's routing, the reverted builds)"
    require_memory(what, held if dev == "cpu" else max(base_b, ft_b) + reverting + _LIBRARIES, dev, held)


def _score(model, base_logits, batches, batch_size: int, dev, tap: RoutingTap | None = None, who: str = "model"):
    """Teacher-forced pass of ``model`` over the batches against the base's packed logits (one (Σ n, V) per batch,
    :func:`_packed`): per-position forward / reverse KL (concatenated over prompts), per-prompt correctness, and
    one row per prompt (prompt index, mean KLs, correct). ``tap``: the routing hooks on ``model``, if any; ``who``:
    the model and experiment, named where its logits are not finite."""
    kl_f, kl_r, acc, rows = [], [], [], []
    for bi, (lb, bt) in enumerate(zip(base_logits, batches, strict=True)):
        lf = _packed(_forward(model, bt, dev, tap), bt, who, bi * batch_size)
        lengths = [len(e.ids) for e in bt]
        fwd, rev = (np.split(x.cpu().numpy(), np.cumsum(lengths)[:-1]) for x in kl_terms(lb, lf))
        pred = lf.argmax(-1).split(lengths)
        for j, e in enumerate(bt):
            kl_f.append(fwd[j])
            kl_r.append(rev[j])
            acc.append(correct(pred[j], e))
            rows.append(
                {
                    "prompt": bi * batch_size + j,
                    "kl_forward": float(kl_f[-1].mean()),
                    "kl_reverse": float(kl_r[-1].mean()),
                    "correct": acc[-1],
                }
            )
    return np.concatenate(kl_f), np.concatenate(kl_r), acc, rows


def write_behavior(report: BehaviorReport, folder: str | os.PathLike) -> list[str]:
    """The report's files in ``folder``; returns their names, in the order written. ``routing.csv`` only when
    a model has routers (an MoE model): a dense model's was a header with no rows."""
    folder = Path(folder)
    (folder / "behavior.json").write_text(json.dumps(report.to_json(), indent=2, default=float, allow_nan=False))
    frames = {"summary": report.summary, "tokens": report.tokens, "prompts": report.prompts, "curves": report.curves}
    if len(report.routing):
        frames["routing"] = report.routing
    for name, frame in frames.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    return ["behavior.json", *(f"{name}.csv" for name in frames)]


def read_behavior(folder: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """The tables :func:`write_behavior` wrote in ``folder``, and ``notes`` (one column ``note``: the report's notes
    from ``behavior.json``, how masks were placed and what was cut or left out; the page showed none of them); a
    folder without the tables (a run's outputs deleted, or a folder of something else) is a one-line
    :class:`ConfigError`, not a FileNotFoundError."""
    from subnetviz.config import display_path

    folder = Path(folder)
    names = ("summary", "tokens", "prompts", "curves")
    missing = [f"{n}.csv" for n in names if not (folder / f"{n}.csv").is_file()]
    if missing:
        raise ConfigError(
            f"{display_path(folder)}: no {', '.join(missing)}; this is not a finished behaviour job's output folder."
        )
    out = {n: read_frame(folder / f"{n}.csv") for n in names}
    routing = folder / "routing.csv"  # (none for a dense model, nor from a run finished before routing was measured)
    out["routing"] = read_frame(routing) if routing.is_file() else routing_frame([])
    out["notes"] = pd.DataFrame({"note": _read_notes(folder / "behavior.json")}, dtype=object)
    return out


def _read_notes(path: Path) -> list[str]:
    """The ``notes`` of a ``behavior.json`` :func:`write_behavior` wrote; none where it cannot be read (the tables
    are what the page shows: a note is no reason to refuse them)."""
    try:
        notes = json.loads(path.read_text(encoding="utf-8")).get("notes")
    except (OSError, ValueError, AttributeError):
        return []
    return [n for n in notes if isinstance(n, str)] if isinstance(notes, list) else []


# --- configs: the CLI, the job and the page share one ------------------------------------------------
CONFIG_KEYS = {
    "kind",
    "base",
    "finetuned",
    "labels",
    "prompts",
    "masks",
    "curve",
    "random_control",
    "batch_size",
    "seed",
    "device",
    "limit",
    "name",
}


def validate_config(config: dict) -> None:
    """Check a behaviour config (job kind ``behavior``) before anything starts."""
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"behavior config: unknown key(s) {unknown}.{suggest(unknown[0], CONFIG_KEYS)}")
    if not config.get("base") or not config.get("finetuned"):
        raise ConfigError("behavior config needs 'base' and a non-empty 'finetuned' list.")
    specials = [m for m in (config.get("masks") or {}).values() if m in SPECIAL_MASKS or str(m).startswith("topk:")]
    refuse_control_names(config.get("masks") or {}, "behavior config")
    for f in [config["base"], *config["finetuned"]]:
        _check_model_given(f)
    for f in (m for m in (config.get("masks") or {}).values() if m not in specials):
        if not Path(f).exists():
            raise ConfigError(f"behavior config: {f} does not exist.")
    _refuse_adapters([config["base"], *config["finetuned"]])
    curve = config.get("curve") or []
    if any(not 0 <= float(f) <= 1 for f in curve):
        raise ConfigError(f"behavior config: curve fractions must lie in [0, 1], got {curve}.")
    for key, default in (("limit", None), ("batch_size", 16)):  # limit 0 read every prompt, -1 one per file
        value = config.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"behavior config: {key} must be a whole number >= 1, got {value!r}.")
    seed = config.get("seed", 0)  # (each tensor's generator is seeded seed * 1_000_003 + its index: an int64)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ConfigError(f"behavior config: seed must be a whole number from 0 to {MAX_SEED - 1}, got {seed!r}.")


def _check_model_given(spec) -> None:
    """A model of a behaviour config is there: a path that exists, or a hub id (``org/name[@rev]``, hub id or path
    as :func:`~subnetviz.checkpoints.sources.reads_as_hub_id` says) in the local Hugging Face cache, resolved as the
    model loader resolves it (NotCachedError, in one line, where it is not cached; nothing is downloaded). Every hub
    id was refused as "does not exist", though the sidebar, the CLI and the loader take them."""
    from subnetviz.checkpoints.sources import local_folder, reads_as_hub_id

    if reads_as_hub_id(spec):
        local_folder(spec)
    elif not Path(spec).exists():
        raise ConfigError(f"behavior config: {spec} does not exist.")


def _refuse_adapters(models: Sequence) -> None:
    """Behaviour runs models: a LoRA/PEFT adapter given as a model (the update analyses merge one given beside its
    base) is refused first, by the line that says so (:func:`~subnetviz.checkpoints.models.refuse_adapter`), not by
    the checkpoint reader's, which says to give it beside its base, as it was."""
    from subnetviz.checkpoints.models import refuse_adapter

    for m in models:
        refuse_adapter(m)


SPECIAL_MASKS = ("update", "routers")  # masks made per finetune, not read from a file (and topk:F)
# Seeds taken: below 2^32 (numpy's range), so that seed * 1_000_003 plus a tensor's index, each tensor's generator
# seed, stays an int64 (--seed 1e14 overflowed it after the models were loaded: a ValueError traceback).
MAX_SEED = 2**32


def prompt_set_name(spec) -> str:
    """A prompt set's name in the routing table: its file's name without ``.jsonl`` (and the zoo's ``_eval``),
    or the ``hf:`` spec as given."""
    text = str(spec)
    if text.startswith("hf:"):
        return text
    stem = Path(text).name.removesuffix(".jsonl")
    return stem.removesuffix("_eval") or stem


def run_config(config: dict, progress: ProgressFn | None = None) -> BehaviorReport:
    """:func:`behavior` for a config dict (prompts: a JSONL path, a list of them, or the zoo's eval sets)."""

    validate_config(config)
    files = config.get("prompts") or zoo_prompt_files()
    files = [files] if isinstance(files, str | os.PathLike) else files
    limit = config.get("limit")
    sets = [(prompt_set_name(f), read_prompts(f, limit)) for f in files]
    prompts = [p for _, ps in sets for p in ps]
    masks = {name: mask_source(spec) for name, spec in (config.get("masks") or {}).items()}
    curve = config.get("curve", CURVE_POINTS)
    report = behavior(
        config["base"],
        config["finetuned"],
        prompts,
        labels=config.get("labels"),
        domains=[name for name, ps in sets for _ in ps],
        masks=masks,
        random_control=config.get("random_control", True),
        curve=curve or None,
        batch_size=int(config.get("batch_size", 16)),
        seed=int(config.get("seed", 0)),
        device=config.get("device", "auto"),
        progress=progress,
    )
    report.params = _params(config, files, sets, curve)
    return report


def _params(config: dict, files: Sequence, sets: Sequence, curve) -> dict:
    """What a run was given, for ``behavior.json``: the config's settings, its prompt files as given (None: the
    zoo's eval sets) and each as read (set name, absolute path or ``hf:`` spec, prompts read), the curve run, and
    the device it ran on."""
    from subnetviz.config import resolve_device

    def path(f) -> str:
        return str(f) if str(f).startswith("hf:") else os.path.abspath(f)

    given = config.get("prompts")
    params = {
        **{k: v for k, v in config.items() if k not in ("kind", "prompts", "curve")},
        "prompts": [str(f) for f in ([given] if isinstance(given, str | os.PathLike) else given)] if given else None,
        "prompt_files": [
            {"set": name, "path": path(f), "prompts": len(ps)} for f, (name, ps) in zip(files, sets, strict=True)
        ],
        "limit": config.get("limit"),
        "seed": int(config.get("seed", 0)),
        "curve": sorted({float(f) for f in curve}) if curve else None,
        "device_used": resolve_device(config.get("device", "auto")),
    }
    return json.loads(json.dumps(params, default=str))  # (a path given as a Path: its text)


def planned_passes(config: dict) -> tuple[int, int, int, int]:
    """What :func:`run_config` will run, without loading a model: (forward passes over every prompt, models
    built, tokens per pass, parameters of the base), from the prompts, the base's tokenizer and the headers.
    Each finetune is built and run once per experiment (the finetune, each mask inside / outside and its
    random control, each curve point in |Δ| and random order); the base is run once in all, or once per
    experiment where its logits are not kept."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.models import load_tokenizer

    validate_config(config)
    files = config.get("prompts") or zoo_prompt_files()
    files = [files] if isinstance(files, str | os.PathLike) else files
    prompts = [p for f in files for p in read_prompts(f, config.get("limit"))]
    tok = load_tokenizer(config["base"])  # (any failure to load it: one line naming the folder and the file)
    enc, _ = fit_context(encode(tok, prompts), _context_length([config["base"], *config["finetuned"]]))
    n_tokens = sum(len(e.ids) for e in enc)
    specs = list((config.get("masks") or {}).values())
    whole = sum(m == "routers" for m in specs)  # no random control: it would be the same mask
    experiments = 1 + (len(specs) - whole) * (3 if config.get("random_control", True) else 2) + 2 * whole
    experiments += 2 * len({float(f) for f in config.get("curve", CURVE_POINTS) or ()})
    runs = len(config["finetuned"]) * experiments
    keep = n_tokens * len(tok) * 4 <= _BASE_CACHE_BYTES
    return runs + (1 if keep else runs), runs, n_tokens, open_checkpoint(config["base"]).num_params


def run_job(config: dict, ctx) -> None:
    """Job kind ``behavior``: the files of :func:`write_behavior` in the run's outputs."""
    report = run_config(config, progress=lambda s, t, what: ctx.progress(s, t))
    write_behavior(report, ctx.out_dir)
    ctx.log(f"behaviour: {len(report.summary)} experiments, {report.tokens_per_second:.0f} tokens/s")


def cached_behavior(
    config: dict, progress: ProgressFn | None = None, cache_root: str | os.PathLike | None = None
) -> dict[str, pd.DataFrame]:
    """:func:`run_config` through the disk cache (keyed by checkpoints' fingerprints, the stamps of their folders'
    files and of the prompt and mask files, and the config).

    A damaged entry this call finds is removed and computed again, said first in ``notes`` (not stored: the new
    copy is sound). One an earlier check removed is not said again here: the Behaviour page, which checks the entry
    first, says it (``ui.damage_note``) before it computes."""
    ent, files = behavior_entry(config, cache_root)
    there = ent.folder.is_dir()
    ready, notice = ent.status()
    if not ready:
        report = run_config({**config, "prompts": files}, progress)
        with ent.publish() as folder:
            write_behavior(report, folder)
    out = read_behavior(ent.folder)
    if there and notice and not ready:  # (found damaged by this call)
        out["notes"] = pd.DataFrame({"note": [notice, *out["notes"]["note"]]}, dtype=object)
    return out


def behavior_entry(config: dict, cache_root: str | os.PathLike | None = None):
    """The disk-cache entry of ``config``'s behaviour analysis, and its prompt files (the zoo's by default)."""
    from subnetviz import cache as _cache
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.models import model_folder
    from subnetviz.version import code_fingerprint

    models = [config["base"], *config["finetuned"]]
    _refuse_adapters(models)
    fps = [open_checkpoint(p).fingerprint for p in models]
    # The fingerprint is the weights'; the numbers also depend on each model's config.json (activation, norm eps,
    # RoPE, tied head) and the base's tokenizer (the tokens scored): every file beside the weights is stamped.
    folders = [_cache.file_stamp(model_folder(p)) for p in models]
    files = config.get("prompts") or [str(p) for p in zoo_prompt_files()]
    stamps = [_cache.file_stamp(f) for f in ([files] if isinstance(files, str) else files)]
    masks = [_cache.file_stamp(p) for p in (config.get("masks") or {}).values() if Path(p).exists()]
    key = _cache.cache_key(
        "behavior",
        BEHAVIOR_VERSION,
        code=code_fingerprint(BEHAVIOR_CODE),
        fps=fps,
        folders=folders,
        prompts=stamps,
        masks=masks,
        config={k: v for k, v in config.items() if k != "name"},
    )
    return _cache.entry("behavior", key, root=cache_root), files


# Bump when the files change layout (2: NaN weights refused; 3: prompts cut to the context, a curve fraction given
# twice run once, mixed precision cast as analyze does; 4: routing.csv, the routing of MoE models per prompt set; 5: its
# column rerouted_share, was changed; 6: config and tokenizer in the key, answers encoded with their prompt, a tied
# base's two tensors masked apart, predicts_answer only where the next token is an answer's, NaN written as null, notes
# for differing configs). Changed numbers need no bump: the key holds the fingerprint of the code in BEHAVIOR_CODE
# (bumps were missed: rotary buffers, tied embedding order and DeepSeek's expert bias changed numbers under 5).
BEHAVIOR_VERSION = 6
# The package's code that computes the behaviour analysis (:func:`~subnetviz.version.code_fingerprint` of it is in the
# key): the analysis and its reverts, the model and mask readers, and the prompt files' reader.
BEHAVIOR_CODE = ("analysis", "checkpoints", "masks.py", "training/data.py")
