"""How large a model a config.json may describe, against the weights stored beside it.

Behaviour and Bigram check the memory a model takes from the weights' headers, and transformers builds and
allocates what the config says: a config whose counts or widths far exceed the weights (10^30 layers, 10^9 key/value
heads, a vocabulary of 10^18) held a server thread for good or allocated terabytes before the load refused it. Here
they are refused in one line naming the key and both numbers, before transformers reads the config
(:func:`check_config_counts`) and before anything is built (:func:`check_config_sizes`); a count no key check knows
is stopped while the model is built on the meta device (:func:`bounded_build`). The builder that applies them is
:func:`subnetviz.checkpoints.models.built_on_meta`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from subnetviz.errors import CheckpointError

# How much larger than the weights stored beside it the model a config.json describes may be: Behaviour and Bigram
# check the memory a model takes from the weights' headers (float32_bytes), and transformers builds and allocates
# what the config says. A tied head the weights store once counts twice at most; OPT-350m's embedding is half its
# hidden size wide. The slack lets a tiny model's config describe a missing part, which the load then names.
DESCRIBED_FACTOR = 2
DESCRIBED_SLACK = 2**22  # parameters
# A single size key may exceed what the weights show by this factor before it is refused by name (the model's
# count then bounds it): an embedding narrower than the hidden size, attention rows read either way round
KEY_FACTOR = 4
# config.json's keys that count the modules built one by one (layers, a vision tower's blocks): each may be up to
# KEY_FACTOR times the highest index stored + 1, and experts that times their indices or the largest dimension
# stored (a fused experts tensor), before transformers reads the config (10^30 layers were built for good, and
# Qwen3's config class itself lists one type per layer: seconds per million); a count up to COUNT_FLOOR is left to
# the model's count (built_on_meta: milliseconds to build), so that what the model is (an omni model, no model
# transformers runs) is said first
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "depth")
COUNT_FLOOR = 256
WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
_INDEX = re.compile(r"(?:^|\.)(\d+)(?=\.|$)")
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?=\.|$)")


@dataclass(frozen=True)
class Stored:
    """What the weights files beside a config hold, from their headers: each tensor's shape (logical: a packed
    quantized weight in its weight's shape) and the parameters they count; and the config.json they were checked
    against, as read."""

    shapes: dict[str, tuple[int, ...]]
    params: int
    config_json: dict

    @property
    def tensors(self) -> int:
        return len(self.shapes)


def check_config_counts(spec, folder: Path, raw: dict) -> Stored:
    """Refuse, in one line naming ``spec``, the key and both numbers, a config.json ``raw`` that counts far more
    layers, blocks or experts than the weights in ``folder`` hold (:data:`LAYER_KEYS`, :data:`COUNT_FLOOR`; in it and
    the configs nested in it), before transformers reads it: a layer or block count past :data:`KEY_FACTOR` times
    the highest index stored + 1 (the tensors stored, where no name holds an index), an expert count past that
    many times the experts the weights can hold. A value of another type is left to transformers' validation.
    Returns the weights' :class:`Stored` counts, which :func:`built_on_meta` bounds the model by."""
    import math

    from subnetviz.checkpoints.families import EXPERT_COUNT_KEYS

    shapes = stored_shapes(spec, folder, raw)
    layers, what = _layers_stored(shapes)
    widest = max((max(s) for s in shapes.values() if s), default=1)
    for path, part in _config_parts(raw):
        for key in LAYER_KEYS:
            _refuse_above(spec, f"{path}{key}", part.get(key), layers, what)
        for key in EXPERT_COUNT_KEYS:
            _refuse_above(spec, f"{path}{key}", part.get(key), max(layers, widest), "experts at most")
    return Stored(shapes, sum(math.prod(s) for s in shapes.values()), raw)


def _layers_stored(shapes: dict[str, tuple[int, ...]]) -> tuple[int, str]:
    """(how many layers the stored names number, what that count is, for a message): the highest index after a
    layer list's name (``layers.``, ``h.``, ``blocks.``: a vision tower's too) + 1; else the highest index in any
    name + 1 (a naming no list name matches); else the tensors stored."""
    layers = [int(i) for n in shapes for i in _LAYER_INDEX.findall(n)]
    if layers:
        return max(layers) + 1, "layers (the highest layer index stored + 1)"
    indices = [int(i) for n in shapes for i in _INDEX.findall(n)]
    if indices:
        return max(indices) + 1, "numbered modules (the highest index in a tensor name + 1)"
    return len(shapes), "tensors"


def check_config_sizes(spec, stored: Stored) -> None:
    """Refuse, in one line naming ``spec``, the keys and both numbers, a config.json (``stored.config_json``) whose
    language model is far wider than the weights ``stored``, before anything is built from it: ``vocab_size`` ×
    ``hidden_size`` past :data:`KEY_FACTOR` times the input embedding, the attention heads × ``head_dim`` past a
    q, k or v projection's. (Transformers' Storage size calculation overflowed, or allocated 9 TB for 10^9 KV heads
    before it refused the load.)"""
    from subnetviz.checkpoints.naming import language_config

    raw = stored.config_json
    text, path = language_config(raw)
    _check_embedding(spec, raw, text, path, stored.shapes)
    _check_attention(spec, raw, text, path, stored.shapes)


def stored_shapes(spec, folder: Path, raw: dict) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the weights files the weight pages read of ``folder`` (with config
    ``raw``), from their headers (a ``torch.save`` file through the weight pages' checked reader); each file
    through :func:`~subnetviz.config.check_readable` first."""
    from subnetviz.checkpoints.sources import Checkpoint, _folder_files
    from subnetviz.config import check_readable, display_path

    files = _folder_files(folder)
    for f in files:
        check_readable(f, what=f"{f.name} in {display_path(folder)}")
    ck = Checkpoint(str(spec), files, folder, raw)
    try:
        return {n: tuple(ck.meta(n).shape) for n in ck.names}
    finally:
        ck.close()


def _config_parts(raw: dict, path: str = "", depth: int = 0) -> Iterator[tuple[str, dict]]:
    """``(path, dict)`` of config.json and the configs nested in it (``text_config.``, ``vision_config.``,
    ``thinker_config.text_config.``), three deep at most."""
    yield path, raw
    if depth < 3:
        for key, value in raw.items():
            if isinstance(value, dict):
                yield from _config_parts(value, f"{path}{key}.", depth + 1)


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v > 0


def _shown(v) -> str:
    return f"{v:,}" if isinstance(v, int) and v < 10**15 else f"{v:.3g}"


def _refuse_above(spec, key: str, value, found: int, what: str) -> None:
    if _number(value) and value > max(KEY_FACTOR * found, COUNT_FLOOR):
        raise CheckpointError(
            f"{spec}: config.json does not describe its weights: {key} is {_shown(value)}, but they hold "
            f"{found:,} {what}; refused before building the model."
        )


def _check_embedding(spec, raw: dict, text: dict, path: str, shapes: dict[str, tuple[int, ...]]) -> None:
    """``vocab_size`` × the hidden size of ``text`` against the largest input embedding stored."""
    vocab = text.get("vocab_size")
    key, width = next(((k, text[k]) for k in WIDTH_KEYS if text.get(k) is not None), (None, None))
    if not (_number(vocab) and _number(width)):
        return
    table = _names_table(raw, shapes)
    embeds = [(n, s) for n, s in shapes.items() if len(s) == 2 and table.describe(n).module == "embed"]
    if not embeds:
        return
    name, (rows, cols) = max(embeds, key=lambda e: e[1][0] * e[1][1])
    if vocab * width > KEY_FACTOR * rows * cols:
        raise CheckpointError(
            f"{spec}: config.json does not describe its weights: {path}vocab_size × {path}{key} is "
            f"{_shown(vocab)} × {_shown(width)}, but its embedding {name} holds {rows:,} × {cols:,}; refused before "
            "building the model."
        )


def _check_attention(spec, raw: dict, text: dict, path: str, shapes: dict[str, tuple[int, ...]]) -> None:
    """The query heads and the key/value heads × ``head_dim`` (default: hidden size / heads) of ``text`` against
    the rows of the largest q, k and v projection stored (separate ones: a fused QKV is left to the count)."""
    from subnetviz.checkpoints.naming import config_count

    heads = config_count(text, "num_attention_heads")
    width = next((text[k] for k in WIDTH_KEYS if text.get(k) is not None), None)
    head_dim = config_count(text, "head_dim") or (width // heads if heads and isinstance(width, int) else None)
    if not heads or not head_dim:
        return
    kv = text.get("num_key_value_heads")
    kv_key, kv = ("num_key_value_heads", kv) if _number(kv) else ("num_attention_heads", heads)
    table = _names_table(raw, shapes)
    for module, key, count in (("q", "num_attention_heads", heads), ("k", kv_key, kv), ("v", kv_key, kv)):
        projections = [
            (n, max(s))  # (its rows, or its columns where stored the other way round: the larger, to be lenient)
            for n, s in shapes.items()
            if len(s) == 2 and (info := table.describe(n)).module == module and info.param == "weight"
        ]
        if not projections:
            continue
        name, rows = max(projections, key=lambda p: p[1])
        if count * head_dim > KEY_FACTOR * rows:
            raise CheckpointError(
                f"{spec}: config.json does not describe its weights: {path}{key} × head_dim is {_shown(count)} × "
                f"{head_dim:,} rows, but {name} holds {rows:,}; refused before building the model."
            )


def _names_table(raw: dict, shapes: dict):
    """The naming table of the stored names, by config.json's model type alone (its other keys are checked by
    transformers, in its words)."""
    from subnetviz.checkpoints.naming import NameTable

    mt = raw.get("model_type")
    return NameTable.from_config({"model_type": mt} if isinstance(mt, str) else {}, list(shapes))


def mismatch(model, stored: Stored) -> str | None:
    """The first parameter of ``model`` (built from config.json) stored under its name in another shape, said in
    one sentence; None where there is none (names transformers converts as it loads are not compared)."""
    for name, p in model.named_parameters():
        shape = stored.shapes.get(name)
        if shape is not None and tuple(p.shape) != shape:
            return (
                f"{name} is {' × '.join(map(str, p.shape)) or 'a scalar'} as config.json describes it, "
                f"{' × '.join(map(str, shape)) or 'a scalar'} in its weights."
            )
    return None


class Unbounded(Exception):
    def __init__(self, limit: int):
        super().__init__(limit)
        self.limit = limit


_BUILD = threading.local()  # this thread's registrations left while it builds a model (:func:`bounded_build`)
_HOOKS_LOCK = threading.Lock()
_hooks_registered = False


@contextmanager
def bounded_build(limit: int) -> Iterator[None]:
    """While the block runs, at most ``limit`` modules and parameters registered by this thread (_Unbounded past
    it): a count a config sets that no key check knows (a vision tower's blocks under another name, a list of
    experts) would otherwise build for good. torch's global registration hooks are added once per process and
    count only for a thread inside this block (added and removed per build, another thread's module built at the
    same time could find torch's hook table changed as it read it)."""
    global _hooks_registered
    from torch.nn.modules import module as nn_module

    with _HOOKS_LOCK:
        if not _hooks_registered:
            nn_module.register_module_module_registration_hook(_count_registration)
            nn_module.register_module_parameter_registration_hook(_count_registration)
            _hooks_registered = True
    previous = getattr(_BUILD, "left", None)
    _BUILD.left, _BUILD.limit = limit, limit
    try:
        yield
    finally:
        _BUILD.left = previous


def _count_registration(module, name, value) -> None:
    left = getattr(_BUILD, "left", None)
    if left is None:
        return
    _BUILD.left = left - 1
    if left <= 0:
        raise Unbounded(_BUILD.limit)
