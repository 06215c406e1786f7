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
    """A weight holds NaN or Inf."""


class MaskError(SubnetvizError):
    """A mask set is malformed or does not fit a model (names, shapes, dtype)."""


class UnsafePickleError(MaskError):
    """A pickle asked for something other than numpy arrays, dicts and strings."""


class PathNotAllowedError(SubnetvizError):
    """A path outside the configured roots (the server only reads under them)."""


class ConfigError(SubnetvizError):
    """A job or analysis configuration with a missing, unknown or out-of-range field."""


class JobError(SubnetvizError):
    """A job cannot be started, found or cancelled (run folder exists, build already running)."""


def suggest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """A ' Did you mean ...?' suffix with the closest names, or '' when none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
