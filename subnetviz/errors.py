"""The one error family of subnetviz.

Every failure that a user can cause (a bad path, a corrupt file, a mask that does not fit) ends
in a :class:`SubnetvizError` subclass whose message says what failed, which file or tensor, what
was expected and what was found, and what to do. The UI turns these into a readable message in
one place (:func:`subnetviz.ui.error_boundary`); anything else is a bug.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SubnetvizError(Exception):
    """Base class: a failure caused by input, with a message meant for the user."""


class CheckpointError(SubnetvizError):
    """A checkpoint cannot be found, opened or read (missing path, no weights, corrupt file)."""


class NotCachedError(CheckpointError):
    """A hub id that is not in the local Hugging Face cache (nothing is ever downloaded)."""


class AlignmentError(SubnetvizError):
    """Two checkpoints cannot be compared tensor by tensor (shape mismatch, nothing in common)."""


class NonFiniteError(SubnetvizError):
    """A weight holds NaN or Inf. ``checkpoint``: the checkpoint whose stored tensor holds it, as it was given (its
    ``spec``), where the reader knows it (the update pass); None elsewhere. The app leaves such a finetune out and
    compares the others: one finetune with an Inf blanked Sparsity and Spectra for every model."""

    def __init__(self, message: str = "", checkpoint: str | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint


class MaskError(SubnetvizError):
    """A mask set is malformed or does not fit a model (names, shapes, dtype)."""


class UnsafePickleError(MaskError):
    """A pickle asked for something other than numpy arrays, dicts and strings."""


class PathNotAllowedError(SubnetvizError):
    """A path outside the configured roots (the server only reads under them)."""


class ConfigError(SubnetvizError):
    """A job or analysis configuration with a missing, unknown or out-of-range field."""


class CastRangeError(ConfigError):
    """A mixed-precision pair that cannot be compared at the precision it is compared at by default (the
    finetune's dtype): the base's values lie beyond that dtype's range and would read as Inf. ``checkpoint``: the
    finetune's ``spec``, as :class:`NonFiniteError`'s. It depends on the precision, not on the files alone: the app
    leaves that finetune out at this precision only (compared again at fp32 or bf16) and compares the others; one
    fp16 finetune among bf16 ones blanked every analysis page."""

    def __init__(self, message: str = "", checkpoint: str | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint

    def __reduce__(self):  # (pickled with its checkpoint: a Ray worker's error reaches the app whole)
        return type(self), (str(self), self.checkpoint)


class JobError(SubnetvizError):
    """A job cannot be started, found or cancelled (run folder exists, build already running)."""


def suggest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """A ' Did you mean ...?' suffix with the closest names, or '' when none is close.

    A tensor name (three or more dotted parts: ``model.layers.0.mlp.gate_proj.weight``) is matched only with
    tensors that can be the one meant (:func:`_same_tensor_kind`). By spelling alone, a Llama mask's ``gate_proj``
    and ``k_proj`` drew a GPT-2's ``mlp.c_proj`` and ``attn.c_proj``, another module each: no suggestion beats a
    wrong one."""
    candidates = [str(c) for c in candidates]
    parts = name.split(".")
    if len(parts) >= 3:
        candidates = [c for c in candidates if _same_tensor_kind(parts, c.split("."))]
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _same_tensor_kind(name: list[str], other: list[str]) -> bool:
    """Whether the tensor ``other`` (a name's dotted parts) can be the tensor ``name`` meant: it holds the same
    module and parameter (``q_proj`` … ``weight``: under another prefix, or PEFT's ``q_proj.base_layer.weight``),
    or differs from it in one part only, another layer's index or a typo (``q_prj``, not the sibling ``k_proj``)."""
    if other[-1] == name[-1] and name[-2] in other[:-1]:
        return True
    if len(other) != len(name):
        return False
    differ = [(a, b) for a, b in zip(name, other, strict=True) if a != b]
    if len(differ) != 1:
        return False
    a, b = differ[0]
    return (a.isdigit() and b.isdigit()) or difflib.SequenceMatcher(None, a, b).ratio() >= 0.8
