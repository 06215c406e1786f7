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

Everything runs in float32 weights (bf16 checkpoints upcast exactly), logits to float64 for the KL.
Results: :class:`BehaviorReport` (frames) and :func:`write_behavior` (``behavior.json``,
``tokens.csv``, ``prompts.csv``, ``curves.csv``).
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

from subnetviz.analysis.revert import (
    ModelBuilder,
    Selector,
    abs_delta_selector,
    check_mask_names,
    mask_selector,
    mask_source,
    random_order_selector,
    random_selector,
)
from subnetviz.errors import ConfigError, suggest

ProgressFn = Callable[[int, int, str], None]
CURVE_POINTS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
TOKEN_COLUMNS = [
    "model",
    "experiment",
    "prompt",
    "position",
    "token",
    "next_token_id",
    "predicts_answer",
    "kl_forward",
    "kl_reverse",
]
_BASE_CACHE_BYTES = 1 << 30  # keep the base's logits in memory below this; recompute above


@dataclass(frozen=True)
class Prompt:
    text: str
    answer: str | None = None


PROMPT_COLUMNS = ("prompt", "question", "problem", "input")
ANSWER_COLUMNS = ("answer", "solution", "output", "target")


def read_prompts(path: str | os.PathLike, limit: int | None = None) -> list[Prompt]:
    """JSONL rows with a string ``prompt`` and an optional string ``answer`` (other keys ignored).

    Also a data set already on this machine: ``hf:NAME[:CONFIG]:SPLIT`` from the local ``datasets``
    cache (offline; nothing is downloaded) or a folder written by ``Dataset.save_to_disk``. Its
    prompt is the first of the columns :data:`PROMPT_COLUMNS`, its answer the first of
    :data:`ANSWER_COLUMNS` (text after a GSM8K-style ``####`` when present).
    """
    if str(path).startswith("hf:") or (Path(path).is_dir() and (Path(path) / "dataset_info.json").exists()):
        return _dataset_prompts(str(path), limit)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such prompt file (JSONL with 'prompt' and optional 'answer').")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}, line {lineno}: not valid JSON ({exc.msg}).") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ConfigError(f"{path}, line {lineno}: expected an object with a string 'prompt'.")
        ans = row.get("answer")
        out.append(Prompt(row["prompt"], None if ans is None else str(ans)))
        if limit and len(out) >= limit:
            break
    if not out:
        raise ConfigError(f"{path}: holds no prompts.")
    return out


def _dataset_prompts(spec: str, limit: int | None) -> list[Prompt]:
    import datasets

    try:
        if spec.startswith("hf:"):
            parts = spec[3:].split(":")
            if len(parts) not in (2, 3):
                raise ConfigError(f"{spec!r}: expected hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT.")
            name, config, split = parts[0], (parts[1] if len(parts) == 3 else None), parts[-1]
            os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the local cache only
            ds = datasets.load_dataset(name, config, split=split)
        else:
            ds = datasets.load_from_disk(spec)
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        raise ConfigError(f"{spec}: not a data set on this machine ({exc}).") from None
    if isinstance(ds, datasets.DatasetDict):
        raise ConfigError(f"{spec}: holds splits {list(ds)}; name one (hf:NAME:SPLIT, or save one split).")
    cols = ds.column_names
    pcol = next((c for c in PROMPT_COLUMNS if c in cols), None)
    if pcol is None:
        raise ConfigError(f"{spec}: no prompt column; expected one of {PROMPT_COLUMNS}, found {cols}.")
    acol = next((c for c in ANSWER_COLUMNS if c in cols), None)
    rows = ds.select(range(min(limit, len(ds)))) if limit else ds
    out = []
    for r in rows:
        ans = None if acol is None or r[acol] is None else str(r[acol])
        out.append(Prompt(str(r[pcol]), ans.split("####")[-1].strip() if ans and "####" in ans else ans))
    if not out:
        raise ConfigError(f"{spec}: holds no rows.")
    return out


def zoo_prompt_files(zoo_root: str | os.PathLike | None = None) -> list[Path]:
    """The demo zoo's held-out problem sets (``data/*_eval.jsonl``), the default prompt set."""
    from subnetviz.config import zoo_dir

    data = (Path(zoo_root) if zoo_root else zoo_dir()) / "data"
    files = sorted(data.glob("*_eval.jsonl")) if data.is_dir() else []
    if not files:
        raise ConfigError(f"no prompt file given and no demo zoo problem sets in {data}; pass --prompts FILE.")
    return files


@dataclass
class BehaviorReport:
    """``summary``: one row per (model, experiment): kl_forward, kl_reverse (mean nats/token), accuracy,
    fraction_reverted, tokens; ``tokens``: per position; ``prompts``: per prompt means; ``curves``:
    KL/accuracy against the fraction of Δ reverted (order ``abs_delta`` or ``random``)."""

    base: str
    labels: list[str]
    summary: pd.DataFrame
    tokens: pd.DataFrame
    prompts: pd.DataFrame
    curves: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tokens_per_second: float = 0.0

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
        return {
            "base": self.base,
            "labels": self.labels,
            "unit": "nats per token",
            "models": models,
            "notes": self.notes,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
        }


# --- teacher-forced forward passes -------------------------------------------------------------------
@dataclass(frozen=True)
class Encoded:
    ids: torch.Tensor  # (L,) long: prompt then answer tokens
    answer_start: int | None  # index of the first answer token


def encode(tokenizer, prompts: Sequence[Prompt]) -> list[Encoded]:
    out = []
    for p in prompts:
        ids = list(tokenizer(p.text)["input_ids"])
        start = None
        if p.answer is not None:
            start = len(ids)
            ids += list(tokenizer(p.answer, add_special_tokens=False)["input_ids"])
        out.append(Encoded(torch.tensor(ids, dtype=torch.long), start))
    return out


def logits_of(model, batch: Sequence[Encoded], device) -> torch.Tensor:
    """(B, n, V) float32 logits of a right-padded batch (row i is valid up to ``len(batch[i].ids)``)."""
    n = max(len(e.ids) for e in batch)
    ids = torch.zeros(len(batch), n, dtype=torch.long)
    att = torch.zeros(len(batch), n, dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e.ids)], att[i, : len(e.ids)] = e.ids, 1
    with torch.no_grad():
        out = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float()
    return out


def kl_terms(logits_p: torch.Tensor, logits_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward KL(p ‖ q) and reverse KL(q ‖ p) per row of (L, V) logits, float64 nats, (L,) each."""
    lp = torch.log_softmax(logits_p.to(torch.float64), dim=-1)
    lq = torch.log_softmax(logits_q.to(torch.float64), dim=-1)
    diff = lp - lq
    return (lp.exp() * diff).sum(-1), -(lq.exp() * diff).sum(-1)


def correct(pred: torch.Tensor, e: Encoded) -> bool | None:
    """Teacher-forced exact match of the answer tokens given the argmax ``pred`` (L,) at each position
    (None without an answer)."""
    if e.answer_start is None or e.answer_start >= len(e.ids):
        return None
    return bool(torch.equal(pred[e.answer_start - 1 : len(e.ids) - 1].cpu(), e.ids[e.answer_start :]))


# --- the experiment -----------------------------------------------------------------------------------
def behavior(
    base: str,
    finetuned: Sequence[str],
    prompts: Sequence[Prompt],
    *,
    labels: Sequence[str] | None = None,
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
    the |Δ|-order and random-order curves (None: no curve).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from subnetviz.config import resolve_device

    t0 = time.perf_counter()
    dev = resolve_device(device)
    labels = list(labels) if labels else [Path(str(f).rstrip("/")).name for f in finetuned]
    if len(labels) != len(finetuned):
        raise ConfigError(f"{len(labels)} labels for {len(finetuned)} finetuned models.")
    if not prompts:
        raise ConfigError("behaviour needs at least one prompt.")
    masks = dict(masks or {})
    try:
        tok = AutoTokenizer.from_pretrained(str(base))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{base}: no tokenizer to encode the prompts with ({exc}).") from None
    enc = encode(tok, prompts)
    batches = [enc[i : i + batch_size] for i in range(0, len(enc), batch_size)]
    n_tokens = sum(len(e.ids) for e in enc)
    base_model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).to(dev).eval()
    vocab = base_model.config.vocab_size
    keep = n_tokens * vocab * 4 <= _BASE_CACHE_BYTES
    base_cache = [logits_of(base_model, bt, dev) for bt in batches] if keep else None

    plan: list[tuple[str, str, str, Callable[[ModelBuilder], Selector | None]]] = [
        ("finetuned", "", "", lambda b: None)
    ]
    for name, ms in masks.items():
        plan += [
            (f"{name}/inside", name, "inside", lambda b, ms=ms: mask_selector(b.resolve(ms), True)),
            (f"{name}/outside", name, "outside", lambda b, ms=ms: mask_selector(b.resolve(ms), False)),
        ]
        if random_control:
            plan += [
                (
                    f"random({name})/inside",
                    f"random({name})",
                    "inside",
                    lambda b, ms=ms: random_selector(b.resolve(ms), seed),
                )
            ]
    for f in curve or ():
        plan += [
            (f"curve abs_delta {f:g}", "curve:abs_delta", f"{f:g}", lambda b, f=f: abs_delta_selector(b, f)),
            (f"curve random {f:g}", "curve:random", f"{f:g}", lambda b, f=f: random_order_selector(f, seed)),
        ]

    summary, tokens, per_prompt, curves = [], [], [], []
    static = _token_frame(enc, tok)
    total, step, t_fwd, fwd_tokens = len(finetuned) * len(plan), 0, 0.0, 0
    for label, ft in zip(labels, finetuned, strict=True):
        builder = ModelBuilder(str(base), str(ft), dev)
        for name, ms in masks.items():
            if not callable(ms):
                check_mask_names(ms, builder, name)
        for experiment, mask, side, make in plan:
            if progress:
                progress(step, total, f"{label}: {experiment}")
            step += 1
            frac = builder.build(make(builder))
            kl_f, kl_r, acc, t1 = [], [], [], time.perf_counter()
            for bi, bt in enumerate(batches):
                lb = base_cache[bi] if keep else logits_of(base_model, bt, dev)
                lf = logits_of(builder.model, bt, dev)
                fwd, rev = (x.cpu().numpy() for x in kl_terms(lb, lf))  # (B, n): padded positions unused
                pred = lf.argmax(-1)
                for j, e in enumerate(bt):
                    n = len(e.ids)
                    kl_f.append(fwd[j, :n])
                    kl_r.append(rev[j, :n])
                    acc.append(correct(pred[j], e))
                    per_prompt.append(
                        {
                            "model": label,
                            "experiment": experiment,
                            "prompt": bi * batch_size + j,
                            "kl_forward": float(kl_f[-1].mean()),
                            "kl_reverse": float(kl_r[-1].mean()),
                            "correct": acc[-1],
                        }
                    )
            t_fwd, fwd_tokens = t_fwd + time.perf_counter() - t1, fwd_tokens + n_tokens
            if not experiment.startswith("curve"):
                tokens.append(
                    static.assign(
                        model=label,
                        experiment=experiment,
                        kl_forward=np.concatenate(kl_f),
                        kl_reverse=np.concatenate(kl_r),
                    )
                )
            scored = [a for a in acc if a is not None]
            row = {
                "model": label,
                "experiment": experiment,
                "mask": mask,
                "side": side,
                "kl_forward": float(np.concatenate(kl_f).mean()),
                "kl_reverse": float(np.concatenate(kl_r).mean()),
                "accuracy": float(np.mean(scored)) if scored else float("nan"),
                "fraction_reverted": frac,
                "tokens": n_tokens,
            }
            if experiment.startswith("curve"):
                curves.append({**row, "order": mask.split(":")[1], "fraction": float(side)})
            else:
                summary.append(row)
        del builder
    if progress:
        progress(total, total, "done")
    notes = [] if keep else ["base logits recomputed per model (too large to keep in memory)."]
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
    )


def _token_frame(enc: Sequence[Encoded], tok) -> pd.DataFrame:
    """One row per position of every prompt: prompt, position, token, next_token_id (-1 at the end),
    predicts_answer (the next token is an answer token)."""
    cols: dict[str, list] = {"prompt": [], "position": [], "token": [], "next_token_id": [], "predicts_answer": []}
    for pid, e in enumerate(enc):
        ids = e.ids.tolist()
        start = e.answer_start if e.answer_start is not None else len(ids) + 1
        cols["prompt"] += [pid] * len(ids)
        cols["position"] += list(range(len(ids)))
        cols["token"] += tok.convert_ids_to_tokens(ids)
        cols["next_token_id"] += ids[1:] + [-1]
        cols["predicts_answer"] += [t + 1 >= start for t in range(len(ids))]
    return pd.DataFrame(cols)


def write_behavior(report: BehaviorReport, folder: str | os.PathLike) -> None:
    folder = Path(folder)
    (folder / "behavior.json").write_text(json.dumps(report.to_json(), indent=2, default=float))
    report.summary.to_csv(folder / "summary.csv", index=False)
    report.tokens.to_csv(folder / "tokens.csv", index=False)
    report.prompts.to_csv(folder / "prompts.csv", index=False)
    report.curves.to_csv(folder / "curves.csv", index=False)


def read_behavior(folder: str | os.PathLike) -> dict[str, pd.DataFrame]:
    folder = Path(folder)
    return {n: pd.read_csv(folder / f"{n}.csv") for n in ("summary", "tokens", "prompts", "curves")}


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
    specials = [m for m in (config.get("masks") or {}).values() if m == "update" or str(m).startswith("topk:")]
    for f in [
        config["base"],
        *config["finetuned"],
        *(m for m in (config.get("masks") or {}).values() if m not in specials),
    ]:
        if not Path(f).exists():
            raise ConfigError(f"behavior config: {f} does not exist.")
    curve = config.get("curve") or []
    if any(not 0 <= float(f) <= 1 for f in curve):
        raise ConfigError(f"behavior config: curve fractions must lie in [0, 1], got {curve}.")


def run_config(config: dict, progress: ProgressFn | None = None) -> BehaviorReport:
    """:func:`behavior` for a config dict (prompts: a JSONL path, a list of them, or the zoo's eval sets)."""

    validate_config(config)
    files = config.get("prompts") or zoo_prompt_files()
    files = [files] if isinstance(files, str | os.PathLike) else files
    limit = config.get("limit")
    prompts = [p for f in files for p in read_prompts(f, limit)]
    masks = {name: mask_source(spec) for name, spec in (config.get("masks") or {}).items()}
    curve = config.get("curve", CURVE_POINTS)
    return behavior(
        config["base"],
        config["finetuned"],
        prompts,
        labels=config.get("labels"),
        masks=masks,
        random_control=config.get("random_control", True),
        curve=curve or None,
        batch_size=int(config.get("batch_size", 16)),
        seed=int(config.get("seed", 0)),
        device=config.get("device", "auto"),
        progress=progress,
    )


def run_job(config: dict, ctx) -> None:
    """Job kind ``behavior``: the files of :func:`write_behavior` in the run's outputs."""
    report = run_config(config, progress=lambda s, t, what: ctx.progress(s, t))
    write_behavior(report, ctx.out_dir)
    ctx.log(f"behaviour: {len(report.summary)} experiments, {report.tokens_per_second:.0f} tokens/s")


def cached_behavior(
    config: dict, progress: ProgressFn | None = None, cache_root: str | os.PathLike | None = None
) -> dict[str, pd.DataFrame]:
    """:func:`run_config` through the disk cache (keyed by checkpoints' fingerprints, file stamps, config)."""
    from subnetviz import cache as _cache
    from subnetviz.checkpoints import open_checkpoint

    fps = [open_checkpoint(p).fingerprint for p in [config["base"], *config["finetuned"]]]
    files = config.get("prompts") or [str(p) for p in zoo_prompt_files()]
    stamps = [_cache.file_stamp(f) for f in ([files] if isinstance(files, str) else files)]
    masks = [_cache.file_stamp(p) for p in (config.get("masks") or {}).values() if Path(p).exists()]
    key = _cache.cache_key(
        "behavior",
        BEHAVIOR_VERSION,
        fps=fps,
        prompts=stamps,
        masks=masks,
        config={k: v for k, v in config.items() if k != "name"},
    )
    ent = _cache.entry("behavior", key, root=cache_root)
    if not ent.ready:
        report = run_config({**config, "prompts": files}, progress)
        with ent.publish() as folder:
            write_behavior(report, folder)
    return read_behavior(ent.folder)


BEHAVIOR_VERSION = 1  # bump when the same inputs would give different numbers or files
