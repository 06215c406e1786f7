"""Where a training mask came from, and whether that run used other hyperparameters than this one.

A subnetwork-only run trains inside a mask; when the mask is some finetune's update mask (the demo
zoo's ``masks/grpo-seed0.safetensors``, an analysis' ``masks/<model>.safetensors``), the subnetwork it
describes is the one *that* finetune's algorithm, learning rate and step count produced. The
Training page warns when the run about to use it (or that used it) differs in any of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

HPARAMS = ("algorithm", "learning_rate", "steps")


def mask_source(meta: Mapping) -> str | None:
    """The finetune a mask file's provenance names (``model`` of an analysis' update mask,
    ``finetuned`` of the demo zoo's mask); None for masks of another kind (bigram, random, uploads)."""
    src = meta.get("model") or meta.get("finetuned")
    return str(src) if src else None


def source_hparams(source: str, members: Mapping[str, object], runs: Mapping[str, Mapping]) -> dict | None:
    """Algorithm, learning rate and steps of ``source``: a zoo member (by id; objects with those
    attributes) or a finished run (``"run <id>"`` -> that run's config). None when unknown."""
    if source in members:
        m = members[source]
        return {k: getattr(m, k, None) for k in HPARAMS}
    if source.startswith("run ") and source[4:] in runs:
        cfg = runs[source[4:]] or {}
        return {k: cfg.get(k) for k in HPARAMS}
    return None


def differences(source: Mapping, cfg: Mapping) -> list[str]:
    """The hyperparameters that differ (``learning_rate`` compared to 1e-9 relative), in ``HPARAMS`` order;
    a value missing on either side is not a difference."""
    out = []
    for k in HPARAMS:
        a, b = source.get(k), cfg.get(k)
        if a is None or b is None:
            continue
        if k == "learning_rate":
            if not math.isclose(float(a), float(b), rel_tol=1e-9):
                out.append(k)
        elif str(a) != str(b):
            out.append(k)
    return out


def _fmt(k: str, v: object) -> str:
    if k == "learning_rate":
        return f"lr {float(v):.1e}"
    if k == "steps":
        return f"{int(v):,} steps"
    return str(v)


def mismatch_note(source: str, hp: Mapping, cfg: Mapping) -> str | None:
    """A sentence for the page when ``cfg`` differs from the mask's source run, else None."""
    diff = differences(hp, cfg)
    if not diff:
        return None
    theirs = ", ".join(_fmt(k, hp[k]) for k in diff)
    ours = ", ".join(_fmt(k, cfg[k]) for k in diff)
    return (
        f"The mask comes from {source}, trained with {theirs}; this run uses {ours}. A mask found under other "
        "hyperparameters need not be the subnetwork this run would update by itself."
    )
