"""Where a training mask came from, and whether that run used other hyperparameters than this one.

A subnetwork-only run trains inside a mask; when the mask is some finetune's update mask (the demo
zoo's ``masks/grpo-seed0.safetensors``, an analysis' ``masks/<model>.safetensors``), the subnetwork it
describes is the one *that* finetune's algorithm, learning rate and step count produced. The
Training page warns when the run about to use it (or that used it) differs in any of them. A random
control mask (drawn at another mask's per-tensor densities) is no finetune's subnetwork: it names the mask it
took its densities from, and no source run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

HPARAMS = ("algorithm", "learning_rate", "steps")
RANDOM_METHOD = "random (same per-tensor density)"  # the ``method`` of a random control mask's provenance


def is_random(meta: Mapping) -> bool:
    """Whether a mask file's provenance is a random control's (``method`` starting with "random")."""
    return str(meta.get("method") or "").startswith("random")


def random_provenance(source_path: str, source_meta: Mapping, seed: int) -> dict:
    """The provenance of a random control mask drawn at the per-tensor densities of the mask at ``source_path``
    (whose provenance is ``source_meta``) with ``seed``. The source's identity (``model``, ``finetuned``, its
    paths and tolerance) goes under ``density_source_meta``: kept at the top it read as that finetune's
    subnetwork, and a run trained inside the random mask was warned about the source run's hyperparameters."""
    return {
        "method": RANDOM_METHOD,
        "description": f"random control mask drawn at the per-tensor densities of {source_path} (seed {seed})",
        "density_source": str(source_path),
        "density_source_meta": {k: v for k, v in source_meta.items() if k not in ("density", "count", "numel")},
        "seed": seed,
    }


def random_origin(meta: Mapping) -> str | None:
    """ "random control at the densities of <file>" for a random control mask's provenance, else None."""
    if not is_random(meta):
        return None
    src = Path(str(meta.get("density_source") or "")).name
    return f"random control at the densities of {src}" if src else "random control mask"


CONVENTION = "1/True = the entry is in the subnetwork (trained; kept); a tensor the file does not list is frozen"
"""The mask convention, said where masks come in (uploads, the Training page, ``mask --help``)."""


def dense_mask_note(densities: Mapping[str, float]) -> str | None:
    """A one-line note when a mask chosen for training is denser than 50 % in most of the tensors it lists
    (``densities``: tensor name -> share of its entries that are 1), else None. An update mask of an RL finetune
    is sparse, so a mask that is mostly ones may be written the other way round (1 = frozen, as a freeze map or a
    pruning mask of dropped weights is): training it would train the complement."""
    dense = sum(1 for d in densities.values() if d > 0.5)
    if not densities or 2 * dense <= len(densities):
        return None
    return (
        f"This mask is denser than 50 % in {dense} of its {len(densities)} tensors: is 1 = frozen in it? "
        f"Here {CONVENTION}; invert it if it marks the frozen entries."
    )


def dense_note_of(spec: str, stamp: tuple = ()) -> str | None:
    """:func:`dense_mask_note` of a config's ``mask`` (a file, or ``random:<file>``: drawn at that file's
    densities); None when the file cannot be read (the run card says what is wrong with it elsewhere). ``stamp``
    (the file's) only keys a caller's memo. Raised: a memory refusal (ConfigError: it holds for now, not for the
    file, and memoised as None the card's warning was lost for the server's life), and a file this process may not
    read (PathNotAllowedError: outside the server's roots), which the card says in place of the warning it cannot
    check (taken as None, the warning was dropped without a word)."""
    from subnetviz.errors import ConfigError, PathNotAllowedError, SubnetvizError

    path = spec[len("random:") :] if str(spec).startswith("random:") else str(spec)
    try:
        return dense_mask_note(mask_densities(path))
    except (ConfigError, PathNotAllowedError):
        raise
    except (SubnetvizError, OSError):
        return None


def mask_densities(path: str) -> dict[str, float]:
    """Each tensor of the mask file at ``path`` -> the share of its entries that are 1 (read bit-packed, one
    tensor unpacked at a time; an empty tensor left out)."""
    from subnetviz.masks import load_mask_set

    return densities(load_mask_set(path, packed=True).masks)


def densities(masks: Mapping) -> dict[str, float]:
    """Each mask of ``masks`` (name -> bool tensor, or bit-packed masks) -> the share of its entries that are 1;
    an empty one left out."""
    return {name: float(masks[name].sum()) / masks[name].numel() for name in masks if masks[name].numel()}


def mask_source(meta: Mapping) -> str | None:
    """The finetune a mask file's provenance names (``model`` of an analysis' update mask,
    ``finetuned`` of the demo zoo's mask); None for masks of another kind (bigram, random, uploads)."""
    if is_random(meta):  # (random masks of an older version kept their source's ``finetuned`` at the top)
        return None
    src = meta.get("model") or meta.get("finetuned")
    return str(src) if src else None


def source_path(meta: Mapping) -> str | None:
    """Where the finetune a mask's provenance names was read (``model_path`` of an analysis' update mask,
    ``finetuned_path`` of the demo zoo's mask): an absolute path or a hub id with its commit; None when the
    provenance records a label only (masks written before paths were recorded, uploads of other tools)."""
    if is_random(meta):
        return None
    path = meta.get("model_path") or meta.get("finetuned_path")
    return str(path) if path else None


def identify(
    meta: Mapping,
    members: Mapping[str, object],
    runs_dir: str | os.PathLike,
    series: Mapping[str, str | os.PathLike] | None = None,
) -> str | None:
    """The run a mask's provenance names *by where it was read*: a zoo member's id (``members``: id -> objects
    with a ``path``), one of the zoo's series checkpoints (``series``: the sidebar's id, ``grpo-s0@<step>`` -> its
    folder), ``"run <id>"`` for the model of a run under ``runs_dir`` (``<id>/outputs/model``) or ``"run <id>@<step>"``
    for one of its intermediate checkpoints (``<id>/outputs/model/checkpoints/step-<step>``); None for any other
    model, and for a provenance that records a label only. Matched by the real path (a run the demo registers links
    to its member's folder), never by the label: a user's folder called ``sft`` is not the zoo's ``sft``. (A
    checkpoint's mask was matched to nothing, and a mask of grpo-s0@12 got no hyperparameter warning.)"""
    path = source_path(meta)
    if mask_source(meta) is None or not path or not os.path.isabs(path):  # (a hub id is no member nor run)
        return None
    real = os.path.realpath(path)
    for mid, m in members.items():
        if os.path.realpath(getattr(m, "path", "") or "") == real:
            return str(mid)
    for sid, folder in (series or {}).items():
        if os.path.realpath(folder) == real:
            return str(sid)
    runs = os.path.realpath(runs_dir)
    rel = Path(os.path.relpath(real, runs)).parts if real.startswith(runs + os.sep) else ()
    if (run := _run_model(rel)) is not None:
        return run
    if os.path.lexists(path):
        return None
    # A home copied or moved since the mask was made (its zoo's mask names /old/home/zoo/grpo-s0): where nothing is
    # at the recorded path, the member or run at the same place in this home — its folder and the one holding it
    # (a series checkpoint: its folder, checkpoints/ and its member's folder).
    tail = Path(path).parts[-2:]
    for mid, m in members.items():
        if (p := getattr(m, "path", None)) and Path(p).parts[-2:] == tail:
            return str(mid)
    for sid, folder in (series or {}).items():
        if len(Path(path).parts) >= 3 and Path(folder).parts[-3:] == Path(path).parts[-3:]:
            return str(sid)
    parts = Path(path).parts
    at = next((i for i in (len(parts) - 4, len(parts) - 6) if i >= 0 and parts[i] == "runs"), None)
    run = _run_model(parts[at + 1 :]) if at is not None else None
    return run if run is not None and Path(runs, *parts[at + 1 :]).exists() else None


def _run_model(rel: tuple[str, ...]) -> str | None:
    """``"run <id>"`` for the parts ``<id>/outputs/model`` of a path under the runs folder, ``"run <id>@<step>"`` for
    ``<id>/outputs/model/checkpoints/step-<step>``, else None."""
    if len(rel) == 3 and rel[1:] == ("outputs", "model"):
        return f"run {rel[0]}"
    step = rel[4].removeprefix("step-") if len(rel) == 5 else ""
    if rel[1:4] == ("outputs", "model", "checkpoints") and step.isdigit():
        return f"run {rel[0]}@{int(step)}"
    return None


def checkpoint_of(source: str) -> tuple[str, int | None]:
    """A source :func:`identify` names, split into the member or run it is a checkpoint of and the checkpoint's step
    (``"grpo-s0@12"`` -> ``("grpo-s0", 12)``, ``"run r1@3"`` -> ``("run r1", 3)``); a final model: ``(source, None)``."""
    owner, at, step = source.rpartition("@")
    return (owner, int(step)) if at and owner and step.isdigit() else (source, None)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def run_hparams(cfg: Mapping, recorded: Mapping | None = None) -> dict:
    """The algorithm, learning rate, steps and seed a ``train`` job ran with: the recorded config
    (``train_config.json``, the config as run) where it holds a value of the right type, else the submitted
    config's, else :class:`~subnetviz.training.config.TrainConfig`'s default (a job submitted without a learning
    rate trained at the default one; its card read "lr nan", and no mask warning compared it)."""
    from dataclasses import MISSING, fields

    from subnetviz.training.config import TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    checks = {
        "algorithm": lambda v: v if isinstance(v, str) and v else None,
        "learning_rate": _number,
        "steps": lambda v: v if isinstance(v, int) and not isinstance(v, bool) else None,
        "seed": lambda v: v if isinstance(v, int) and not isinstance(v, bool) else None,
    }
    out = {}
    for key, check in checks.items():
        given = (check((recorded or {}).get(key)), check(cfg.get(key)), defaults.get(key))
        out[key] = next((v for v in given if v is not None), None)
    return out


def source_hparams(source: str, members: Mapping[str, object], runs: Mapping[str, Mapping]) -> dict | None:
    """Algorithm, learning rate and steps of ``source``: a zoo member (by id; objects with those
    attributes) or a finished run (``"run <id>"`` -> that run's config); a checkpoint of either (``"grpo-s0@12"``,
    ``"run <id>@12"``: :func:`checkpoint_of`) has its member's or run's algorithm and rate, and its step as steps.
    None when unknown."""
    if source in members:
        m = members[source]
        return {k: getattr(m, k, None) for k in HPARAMS}
    if source.startswith("run ") and source[4:] in runs:
        hp = run_hparams(runs[source[4:]] or {})  # what it ran with: defaults for what its config left out
        return {k: hp[k] for k in HPARAMS}
    owner, step = checkpoint_of(source)
    if step is not None and (hp := source_hparams(owner, members, runs)) is not None:
        return {**hp, "steps": step}
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
        return f"{int(v):,} step{'' if int(v) == 1 else 's'}"  # "1 step", never "1 steps"
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
