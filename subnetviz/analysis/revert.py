"""Reverted models: a finetune with chosen entries set back to its base, built tensor by tensor.

:class:`ModelBuilder` holds one model instance and rewrites every parameter as
``where(select, base, ft)``, streaming each aligned tensor pair from disk (never a second copy of
the weights). Selectors say which entries to revert: inside or outside a mask set, a random
same-count control, the largest |Δ| first, or a random order. A base stored in another float dtype than
the finetune is cast to the finetune's with round-to-nearest-even, as the update analysis compares them:
"changed" and a reverted entry's value are those of the base saved in the finetune's dtype
(:meth:`ModelBuilder.pair`). Mask sets can also be made per finetune (:func:`update_masks`,
:func:`top_delta_masks`; :func:`mask_source` parses the CLI's ``--mask`` values). Used by
:mod:`subnetviz.analysis.behavior`.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from subnetviz.analysis.sparsity import cast_overflow
from subnetviz.errors import AlignmentError, ConfigError, MaskError, suggest

_CASTABLE = (torch.bfloat16, torch.float16, torch.float32, torch.float64)  # values, not codes with a scale
# Entries per block of the |Δ| and of the random draws: their float32 temporaries are a few MB, not a few bytes per
# entry of the largest tensor (a 152064 x 8192 embedding: 5 GB each). Draws are taken block after block from one
# generator, which gives the numbers one draw over the whole tensor gives (torch's CPU uniform fills serially).
BLOCK = 1 << 20
SAMPLE = 20_000_000  # |Δ| values at most behind the threshold of the curve and of topk:F (:func:`abs_delta_selector`)
Selector = Callable[[int, str, torch.Tensor, torch.Tensor], torch.Tensor]  # (index, key, base, ft) -> bool mask


def check_model_finite(model, where: str) -> None:
    """Raise :class:`~subnetviz.errors.NonFiniteError` naming the first parameter of ``model`` (loaded from
    ``where``) that holds NaN or Inf: KLs of a broken model would mean nothing."""
    from subnetviz.analysis.bits import check_finite

    for name, p in model.named_parameters():
        check_finite(p.detach(), f"{where} :: {name}")


def aligned_pair(base: str, ft: str):
    """(base checkpoint, finetune checkpoint, aligned tensors by key), from the headers. A resized vocabulary is
    refused naming the tensor and both shapes: the KL compares next-token distributions over one vocabulary,
    and a token only one model has makes it infinite or undefined (the update analysis, which compares
    weights, takes the shared rows)."""
    from subnetviz.checkpoints import align, open_checkpoint

    ck_base, ck_ft = open_checkpoint(base), open_checkpoint(ft)
    aligned = {t.key: t for t in align([ck_base, ck_ft]).tensors}
    resized = next((t for t in aligned.values() if t.rows is not None), None)
    if resized is not None:
        name, shapes = resized.names[1], (ck_base.meta(resized.names[0]).shape, ck_ft.meta(resized.names[1]).shape)
        raise AlignmentError(
            f"{ft}: {name!r} has shape {tuple(shapes[1])}, in the base {base} {tuple(shapes[0])}: a resized "
            "vocabulary; behaviour compares next-token distributions over one vocabulary, so both need the same one."
        )
    return ck_base, ck_ft, aligned


class ModelBuilder:
    """One model instance whose weights are rewritten, tensor by tensor, as ``where(select, base, ft)``."""

    def __init__(self, base: str, ft: str, device):
        from subnetviz.checkpoints.experts_layout import loaded_into, transposed_experts
        from subnetviz.checkpoints.models import load_causal_lm
        from subnetviz.checkpoints.naming import strip_prefix

        self.ck_base, self.ck_ft, self.aligned = aligned_pair(base, ft)
        self.cast: dict[str, tuple[torch.dtype, torch.dtype]] = {}  # base tensor -> (base dtype, finetune dtype)
        self.device = device
        self.model = load_causal_lm(ft).to(device).eval()
        check_model_finite(self.model, ft)  # once: every build writes these tensors again (or the base's)
        head = _untied_base_head(self.aligned)
        if head is not None:
            _untie_head(self.model)
        # (aligned key, the parameter or the part of it that tensor fills): transformers 5 packs the experts a
        # checkpoint stores one by one (Qwen-MoE, Mixtral, DeepSeek, OLMoE, ...) into one parameter per layer and
        # renames some (PhiMoE's router, Granite's experts), as its conversion mapping says; the buffers a checkpoint
        # stores (DeepSeek-V3's e_score_correction_bias, which chooses experts) are written too
        shapes = {k: tuple(t.shape) for k, t in self.aligned.items()}
        stored: dict[str, str] = {}  # the finetune's stored name -> its aligned key
        for k, t in self.aligned.items():  # (a tied finetune's embedding is also the base's untied head: its own)
            if t.names[1] not in stored or strip_prefix(t.names[1]) == k:
                stored[t.names[1]] = k
        loaded, converted = loaded_into(self.model, stored)
        transposed = transposed_experts(self.model.config.to_dict())  # Llama 4's experts: (E, H, 2I) / (E, I, H)
        self.params: list[tuple[str, torch.Tensor]] = []
        missing = []
        tensors = [(n, p, True) for n, p in self.model.named_parameters()]
        tensors += [(n, b, False) for n, b in _persistent_buffers(self.model) if b.is_floating_point()]
        for n, p, is_param in tensors:
            if n in converted:  # its values are not a stored tensor's: writing one back would be another model
                raise ConfigError(
                    f"{ft}: transformers converts {n} on load ({converted[n]}); behaviour writes each parameter "
                    "back from the stored tensors, and cannot write this one."
                )
            pieces = _pieces(n, tuple(p.shape), shapes, loaded, transposed)
            if pieces is None:
                if is_param:
                    missing.append(strip_prefix(n))
                continue  # (a buffer no checkpoint stores: rotary tables, causal masks)
            self.params += [(key, _part(p, index)) for key, index in pieces]
        self._resolved: dict[int, Mapping[str, torch.Tensor]] = {}
        # a mask set given as such (by id, held: an id is not reused while it lives) -> it keyed by mask_names
        self._placed: dict[int, tuple[Mapping, MaskPlacement]] = {}
        # aligned key -> the name its mask is looked up by: the base's, but an untied head against a tied base
        # (the base's embedding lined up twice) goes by its own name, as the update analysis saves its mask
        self.mask_names = {key: at.name for key, at in self.aligned.items()}
        if missing:
            raise ConfigError(f"{ft}: model parameters without a tensor in both checkpoints: {missing[:5]}.")
        # the base's own head where the finetune ties its head: None once it has a parameter of its own to be written
        # into (:func:`_untie_head`), else its name (:meth:`head_note`: the reverted head stays the embedding)
        self.unrestored_head = None if head is None or head.key in {k for k, _ in self.params} else head.names[0]

    def pair(self, at, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned tensor ``at`` of the base and of the finetune, the base cast to the finetune's float dtype
        where they differ (round-to-nearest-even, as :mod:`subnetviz.analysis.quant` compares a mixed-precision
        pair; recorded in :attr:`cast` for :meth:`cast_note`)."""
        from subnetviz.checkpoints import read_aligned

        a, b = read_aligned(self.ck_base, at, 0, device), read_aligned(self.ck_ft, at, 1, device)
        if a.dtype != b.dtype:
            if a.dtype not in _CASTABLE or b.dtype not in _CASTABLE:  # FP8 codes without their scales: no values
                raise ConfigError(
                    f"{at.names[0]}: stored as {str(a.dtype)[6:]} in the base and {str(b.dtype)[6:]} in the finetune; "
                    "behaviour reverts float weights of one of the types bfloat16, float16, float32, float64."
                )
            self.cast[at.names[0]] = (a.dtype, b.dtype)
            a, wide = a.to(b.dtype), a
            if over := cast_overflow(wide, a):  # (a bf16 base past float16's range read as Inf, blamed on nothing)
                raise ConfigError(
                    f"{at.names[0]}: {over:,} value(s) of the base tensor lie beyond {str(b.dtype)[6:]}'s range once "
                    "cast to the finetune's type; behaviour reverts a base and finetune of one float type."
                )
        return a, b

    def cast_note(self, label: str) -> str | None:
        """The note for the tensors :meth:`pair` cast (None when none was)."""
        if not self.cast:
            return None
        kinds = sorted({f"{str(x)[6:]} in the base and {str(y)[6:]} in the finetune" for x, y in self.cast.values()})
        names = list(self.cast)
        return (
            f"{label}: mixed precision: {len(names)} tensor(s) stored as {'; '.join(kinds)} ({', '.join(names[:4])}"
            f"{' ...' if len(names) > 4 else ''}): changed entries and reverted values are the base's cast to the "
            "finetune's dtype with round-to-nearest-even, as the update analysis compares them."
        )

    def head_note(self, label: str) -> str | None:
        """The note for a base head no reverted model can hold (:attr:`unrestored_head`; None when there is none)."""
        if self.unrestored_head is None:
            return None
        return (
            f"{label}: the finetune ties its output head to its input embedding, while the base stores its own "
            f"{self.unrestored_head}, which the finetune's model has no tensor for: the base's head cannot be "
            "restored, so even with every weight reverted the model is not the base."
        )

    def resolve(self, masks) -> Mapping[str, torch.Tensor]:
        """A mask set, or a function of this builder that makes one (:func:`top_delta_masks`), made once. A mask
        set given as such is keyed by :attr:`mask_names` (:func:`place_masks`: names under another prefix, a tied
        head folded into the embedding)."""
        if not callable(masks):
            return place_masks(masks, self).masks
        if id(masks) not in self._resolved:
            self._resolved[id(masks)] = masks(self)
        return self._resolved[id(masks)]

    def build(self, select: Selector | None) -> float:
        """Rewrite every parameter (``select=None``: the finetune itself); returns the share of changed
        entries (stored bits differ) that were reverted.

        Written into the parameter itself: the finetune's values, then the base's where selected (no full-size
        ``where`` and float32 copy of it beside the parameter), and counted with ``count_nonzero`` (a bool
        ``sum`` makes an int64 temporary of the tensor's size). Per entry of the tensor being written it holds the
        selection and the changed mask (:func:`revert_bytes`)."""
        from subnetviz.analysis.bits import bits_differ
        from subnetviz.checkpoints import read_aligned

        reverted = changed = 0
        with torch.no_grad():
            for i, (key, p) in enumerate(self.params):
                at = self.aligned[key]
                if select is None:
                    p.copy_(read_aligned(self.ck_ft, at, 1, self.device))  # (copy_ converts to p's dtype)
                    continue
                a, b = self.pair(at, self.device)
                sel = select(i, self.mask_names[key], a, b)  # first: its own temporaries are gone before m is made
                m = bits_differ(a, b)  # a tensor of its own: the selected entries are kept in it in place
                changed += int(torch.count_nonzero(m))
                m &= sel
                del sel
                reverted += int(torch.count_nonzero(m))
                if torch.promote_types(a.dtype, p.dtype) == p.dtype:  # the base's values convert exactly into p
                    p.copy_(b)
                    for s in _blocks(p):  # (on the CPU, where() first casts a whole input of another dtype)
                        torch.where(m[s], a[s], p[s], out=p[s])
                else:  # (a float64 finetune in a float32 model: rounded once, as where(m, a, b).to(p.dtype))
                    p.copy_(torch.where(m, a, b))
                del a, b, m
                release_freed()
        return reverted / changed if changed else 0.0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed() -> None:
    """Hand the memory freed by the last step back to the system. glibc keeps freed blocks below its mmap threshold
    (which rises to 32 MB as larger blocks are freed) in its heap, where blocks still in use scattered among them
    keep it from shrinking: between the reverted builds, their blocks of |Δ| and the forward passes, a 337M-parameter
    pair's process held 0.5 GiB more after six experiments than it used (the memory check counts what is used)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _untied_base_head(aligned: Mapping) -> object | None:
    """The aligned output head that the base stores as its own and the finetune ties to its input embedding (the
    alignment lines the finetune's embedding up with it, :func:`~subnetviz.checkpoints.align`), or None."""
    from subnetviz.checkpoints.naming import TIED_HEADS, strip_prefix

    return next(
        (
            at
            for key, at in aligned.items()
            if key in TIED_HEADS and strip_prefix(at.names[0]) in TIED_HEADS and strip_prefix(at.names[1]) != key
        ),
        None,
    )


def _untie_head(model) -> None:
    """Give ``model``'s output head a parameter of its own (a copy of the input embedding it is tied to), where the
    base stores its head apart: a reverted model's head is then written from the base's head, not from its
    embedding (one tensor for both made "every weight reverted" a model whose head was the base's embedding, its
    KL above the finetune's own, with no word). Nothing where the model's head is not one parameter shared with
    its embedding (:attr:`ModelBuilder.unrestored_head` then says so)."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or inp is None or getattr(out, "weight", None) is not getattr(inp, "weight", None):
        return
    out.weight = torch.nn.Parameter(inp.weight.detach().clone())
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        cfg.tie_word_embeddings = False  # (so that nothing ties them again)


def _persistent_buffers(model) -> list[tuple[str, torch.Tensor]]:
    """The buffers ``model`` loads from a checkpoint (persistent ones: DeepSeek-V3's e_score_correction_bias), not
    those it computes (rotary inverse frequencies, which an older checkpoint may store in another dtype than the
    model computes them in: transformers never loads those, so neither is one written here)."""
    out = []
    for prefix, module in model.named_modules():
        skip = getattr(module, "_non_persistent_buffers_set", set())
        out += [
            (f"{prefix}.{n}" if prefix else n, b) for n, b in module._buffers.items() if b is not None and n not in skip
        ]
    return out


def _pieces(
    name: str, shape: tuple[int, ...], shapes: Mapping, loaded: Mapping, transposed: bool = False
) -> list[tuple[str, tuple]] | None:
    """The aligned tensors a model tensor ``name`` is made of (:func:`~subnetviz.checkpoints.experts_layout
    .param_pieces`; ``transposed``: the model packs its experts as Llama 4 does): those transformers' conversion
    mapping loads into it (``loaded``), else by the names' rules."""
    from subnetviz.checkpoints.experts_layout import param_pieces
    from subnetviz.checkpoints.naming import strip_prefix

    keys = loaded.get(name)
    if keys:
        if len(keys) == 1 and tuple(shapes[keys[0]]) == tuple(shape):
            return [(keys[0], ())]
        pieces = param_pieces(strip_prefix(name), shape, {k: shapes[k] for k in keys}, transposed=transposed)
        if pieces is not None and len(pieces) == len(keys):
            return pieces
    return param_pieces(strip_prefix(name), shape, shapes, transposed=transposed)


def write_unloaded_pieces(model, spec: str) -> None:
    """Write into ``model``, loaded from checkpoint ``spec``, the parameters transformers could not load from it
    because ``spec`` stores them in pieces its conversion mapping does not know: Llama 4's experts stored one by one
    (llm-compressor's, GPTQModel's and auto-round's layout, each expert's matrices the transposes of the packed
    slices), which transformers leaves at their random initial values. Every other parameter is left as loaded."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.experts_layout import loaded_into, param_pieces, transposed_experts
    from subnetviz.checkpoints.naming import strip_prefix

    ck = open_checkpoint(spec)
    try:
        full = {strip_prefix(n): n for n in ck.names}
        shapes = {short: tuple(ck.meta(n).shape) for short, n in full.items()}
        loaded, _ = loaded_into(model, {n: n for n in ck.names})
        transposed = transposed_experts(model.config.to_dict())
        with torch.no_grad():
            for n, p in model.named_parameters():
                if strip_prefix(n) in shapes or n in loaded:  # (transformers loaded it: by its name or its mapping)
                    continue
                for key, index in param_pieces(strip_prefix(n), tuple(p.shape), shapes, transposed=transposed) or ():
                    _part(p, index).copy_(ck.get(full[key], p.device))
    finally:
        ck.close()


def _part(p: torch.Tensor, index: tuple) -> torch.Tensor:
    """The part of model tensor ``p`` that a piece's ``index`` names (:func:`_pieces`), as a view of it, which
    :meth:`ModelBuilder.build` writes into. A Llama 4 expert stored one by one (its gate, up or down: the columns
    of ``p[e]`` transposed, index ``(array([e]), :, columns)``) is ``p[e, :, first:last + 1].T``; that index
    itself reads a copy, and what was written into a copy would never reach the model."""
    t = p.detach()
    if not index:
        return t
    if isinstance(index[0], np.ndarray):  # (its columns are a run, np.arange(first, first + n): param_pieces)
        (e,), cols = index[0].tolist(), index[2]
        return t[e, :, int(cols[0]) : int(cols[0]) + len(cols)].T
    return t[index]


def mask_selector(masks: Mapping[str, torch.Tensor], inside: bool) -> Selector:
    """Revert inside (``inside=True``) or outside a mask set keyed by tensor name (absent = all False)."""

    def select(i: int, name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        m = _mask_for(masks, name, a)
        return m if inside else ~m

    return select


def random_selector(masks: Mapping[str, torch.Tensor], seed: int) -> Selector:
    """The control: per tensor, as many entries as the mask holds, drawn uniformly (seeded per tensor).

    The permutation is taken in int32 where the tensor's entries fit it: torch's CPU randperm makes the same draws
    and swaps whatever the integer type, so it is the same permutation at half the memory (4 bytes per entry, not
    8). Its first ``count`` entries are set a block at a time (indexing with int32 widens the whole index to int64
    first)."""

    def select(i: int, name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        count = int(torch.count_nonzero(_mask_for(masks, name, a)))
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        n = a.numel()
        out = torch.zeros(n, dtype=torch.bool)
        perm = torch.randperm(n, generator=g, dtype=torch.int32 if n <= 2**31 else torch.int64)
        for j in range(0, count, BLOCK):
            out[perm[j : min(j + BLOCK, count)].long()] = True
        del perm
        return out.view(a.shape).to(a.device)

    return select


def _blocks(x: torch.Tensor) -> list:
    """Indices of ``x`` by blocks of whole rows along its first dimension, about :data:`BLOCK` entries each (at
    least one row), in storage order; a 0-d tensor is one block."""
    if x.dim() == 0:
        return [()]
    step = max(1, BLOCK // max(1, x[0].numel())) if x.shape[0] else 1
    return [slice(r, r + step) for r in range(0, x.shape[0], step)]


def _mask_for(masks: Mapping[str, torch.Tensor], name: str, a: torch.Tensor) -> torch.Tensor:
    m = masks.get(name)
    if m is None:
        return torch.zeros(a.shape, dtype=torch.bool, device=a.device)
    if tuple(m.shape) != tuple(a.shape):
        raise MaskError(f"mask for {name!r} has shape {tuple(m.shape)}, the tensor {tuple(a.shape)}.")
    return m.to(a.device, torch.bool)


@dataclass(frozen=True)
class MaskPlacement:
    """A mask set given by file, keyed as a :class:`ModelBuilder` looks masks up (:attr:`ModelBuilder.mask_names`).
    ``masks``: the set so keyed; ``unknown``: the mask's names that are no tensor of the pair; ``notes``: how names
    were placed (matched across prefixes, a tied head folded), each one line."""

    masks: Mapping[str, torch.Tensor]
    unknown: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def tied_embedding(ck) -> str | None:
    """The input embedding checkpoint ``ck`` ties its output head to (its stored name), or None where it does not
    tie one or the embedding cannot be told (the rule :func:`~subnetviz.checkpoints.align` compares an untied head
    by)."""
    from subnetviz.checkpoints.naming import TIED_HEADS, strip_prefix

    if not ck.tied_embeddings:
        return None
    table = ck.names_table
    found = [n for n in ck.names if strip_prefix(n) not in TIED_HEADS and table.describe(n).module == "embed"]
    return found[0] if len(found) == 1 else None


def place_masks(masks: Mapping[str, torch.Tensor], builder: ModelBuilder) -> MaskPlacement:
    """``masks`` keyed by the names ``builder`` looks them up by, one rule with the other pages
    (:func:`~subnetviz.checkpoints.naming.match_names`): a name under another model prefix, or PEFT's
    (``base_model.model.``, ``.base_layer.``), is the tensor it names. An output head the base ties to its input
    embedding, which neither checkpoint holds apart (the finetune ties it too), is merged (OR) into the
    embedding's entry, as training folds it: the model computes both with that one tensor. Where the finetune
    stores an untied head, the head keeps its own name. Experts in the other layout than the base's (a mask of
    packed ``experts.gate_up_proj`` / ``down_proj`` beside a base that stores them one by one, or the reverse) are
    read in the base's, as checkpoints are matched (:func:`~subnetviz.checkpoints.experts_layout.mask_layout`), and
    said in the notes. Made once per builder and mask set."""
    from subnetviz.checkpoints.experts_layout import mask_layout, relaid_masks, transposed_experts
    from subnetviz.checkpoints.naming import TIED_HEADS, mask_key, match_names
    from subnetviz.masks import mask_shape, renamed_masks

    held = builder._placed.get(id(masks))
    if held is not None and held[0] is masks:
        return held[1]
    given = masks
    names = list(dict.fromkeys(builder.mask_names.values()))
    # experts in another layout than the base's (packed gate_up_proj / down_proj against one by one): the base's
    shapes = {builder.mask_names[k]: tuple(t.shape) for k, t in builder.aligned.items()}
    layout = mask_layout(
        {n: mask_shape(masks, n) for n in masks}, shapes, transposed=transposed_experts(builder.ck_base.config)
    )
    masks = relaid_masks(masks, layout)
    match = match_names(masks, names)
    to, unknown = dict(match.to), []
    notes = [n for n in [layout.note("the base"), match.note("the base")] if n]
    heads = [n for n in match.unmatched if mask_key(n) in TIED_HEADS]
    embed = tied_embedding(builder.ck_base) if heads else None
    for n in match.unmatched:
        if embed is None or embed not in names or mask_key(n) not in TIED_HEADS:
            unknown.append(n)
            continue
        want = tuple(builder.aligned[next(k for k, v in builder.mask_names.items() if v == embed)].shape)
        if mask_shape(masks, n) != want:
            raise MaskError(
                f"mask for {n!r} has shape {mask_shape(masks, n)}; the base ties that head to its input embedding "
                f"{embed!r}, of shape {want}."
            )
        to[n] = embed
        notes.append(
            f"{n!r} is the output head the base ties to its input embedding {embed!r} (neither checkpoint holds it "
            "apart): its entries are merged (OR) into the embedding's, as training merges them."
        )
    placed = masks if all(k == v for k, v in to.items()) else renamed_masks(masks, to)
    got = MaskPlacement(placed, tuple(unknown), tuple(notes))
    builder._placed[id(given)] = (given, got)
    return got


def check_mask_names(masks: Mapping[str, torch.Tensor], builder: ModelBuilder, label: str) -> None:
    """Every tensor of the mask set ``label`` names a tensor of the base (or, where two aligned tensors share a
    base tensor, the finetune's name of the second: ``AlignedTensor.name``), under any model prefix, or is a tied
    head folded into the embedding (:func:`place_masks`), of its shape (said with the mask's name before any model
    is rewritten)."""
    from subnetviz.masks import mask_shape

    shapes = {builder.mask_names[k]: tuple(t.shape) for k, t in builder.aligned.items()}
    try:
        placed = place_masks(masks, builder)
    except MaskError as exc:  # (a tied head of another shape than the embedding it is merged into)
        raise MaskError(f"mask {label!r}: {exc}") from None
    unknown = placed.unknown
    if unknown:
        raise MaskError(
            f"mask {label!r}: {len(unknown)} tensor name(s) not in the base checkpoint, e.g. "
            f"{unknown[0]!r}.{suggest(unknown[0], shapes)}"
        )
    wrong = [
        (n, mask_shape(placed.masks, n), shapes[n]) for n in placed.masks if mask_shape(placed.masks, n) != shapes[n]
    ]
    if wrong:
        name, got, want = wrong[0]
        raise MaskError(
            f"mask {label!r} does not fit the base: {name!r} has shape {got}, the tensor {want}"
            + (f" ({len(wrong)} tensors differ)." if len(wrong) > 1 else ".")
        )


def mask_placement_note(masks: Mapping[str, torch.Tensor], builder: ModelBuilder, label: str) -> str | None:
    """The notes on how the mask set ``label`` was placed in this pair, in one line (None when there is none): its
    names matched across prefixes or a tied head folded (:func:`place_masks`), and a base tensor the finetune holds
    twice (``AlignedTensor.name``) that the mask names, but not the second one by the finetune's name: that second
    tensor counts as outside the mask."""
    placed = place_masks(masks, builder)
    notes = [f"mask {label!r}: {n}" for n in placed.notes]
    lacking = [
        (builder.aligned[k].names[0], n)
        for k, n in builder.mask_names.items()
        if n != builder.aligned[k].names[0] and builder.aligned[k].names[0] in placed.masks and n not in placed.masks
    ]
    if lacking:
        shared, second = lacking[0]
        notes.append(
            f"mask {label!r}: the finetune lines up two tensors with the base's {shared} (its own, and {second}); the "
            f"mask names {shared} only, which is the first one's: {second} counts as outside the mask."
        )
    return " ".join(notes) or None


# Config keys that do not change a forward pass's logits in eval mode (names, dtypes, ids used for generation,
# initialisation, what a model returns; training-only settings by :func:`_training_only`): a finetune that differs
# from its base only in these is the base once every weight is reverted. ``tie_word_embeddings`` is the weights'
# business: a reverted untied head is the base's embedding where the base ties it, and where the finetune ties a head
# the base stores apart, the model's head is untied and written from the base's (:func:`_untie_head`).
_NOT_FORWARD = {
    "_name_or_path",
    "_commit_hash",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "attn_implementation",
    "architectures",
    "auto_map",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "tie_word_embeddings",
    "initializer_range",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "id2label",
    "label2id",
    "task_specific_params",
    "tokenizer_class",
    "problem_type",
    "finetuning_task",
    "generation_config",
    "transformers.js_config",
}


# Settings of training only: the router's auxiliary losses and whether the router's logits are returned for them
# (an MoE finetune by the HF Trainer or TRL saves output_router_logits: true and its own coefficient), the router's
# jitter noise (added in training mode only); dropout by :func:`_training_only`'s patterns.
_TRAINING_ONLY = {"output_router_logits", "router_jitter_noise", "layerdrop", "seq_aux", "gradient_checkpointing"}


def _training_only(key: str) -> bool:
    """Whether the config key ``key`` sets something that acts in training mode only (an eval-mode forward pass is
    the same whatever its value): dropout rates (``attention_dropout``, GPT-2's ``resid_pdrop``), auxiliary and
    z-losses (``router_aux_loss_coef``, ``aux_loss_alpha``, ``router_z_loss_coef``) and :data:`_TRAINING_ONLY`."""
    k = key.lower()
    return k in _TRAINING_ONLY or "dropout" in k or k.endswith("pdrop") or "aux_loss" in k or "z_loss" in k


def config_difference(base: str, ft: str) -> list[str]:
    """What in ``ft``'s config differs from ``base``'s in a way that can change an eval-mode forward pass's logits
    (``rope_theta: 10000 -> 100``, a norm's eps, the activation; not dropout or a router's loss), nested keys
    dotted; [] when nothing does or a config cannot be read. Every reverted model is built from the finetune's
    config, so with such a difference even "every weight reverted" is not the base. The configs are read by
    :func:`~subnetviz.checkpoints.models.model_config`, whose CheckpointError (a config transformers refuses) is
    such a config that cannot be read."""
    from subnetviz.checkpoints.models import model_config
    from subnetviz.errors import CheckpointError

    try:
        a, b = (model_config(m).to_dict() for m in (base, ft))
    except (OSError, CheckpointError):
        return []
    out: list[str] = []

    def walk(x, y, prefix: str) -> None:
        for key in sorted(set(x) | set(y), key=str):
            if key in _NOT_FORWARD or _training_only(str(key)):
                continue
            u, v = x.get(key), y.get(key)
            if isinstance(u, dict) and isinstance(v, dict):
                walk(u, v, f"{prefix}{key}.")
            elif u != v:
                out.append(f"{prefix}{key}: {_short(u)} -> {_short(v)}")

    walk(a, b, "")
    return out


def _short(value, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def abs_delta_selector(builder: ModelBuilder, fraction: float, sample: int = SAMPLE, seed: int = 0) -> Selector:
    """Revert the ``fraction`` of changed entries with the largest |Δ| (one threshold over all tensors).

    The threshold is the exact quantile of |Δ| over changed entries of a model of at most ``sample``
    parameters; of a larger one, the quantile over a uniform sample of them, drawn tensor by tensor at the
    rate ``sample`` / parameters, so at most about ``sample`` values are held whatever share changed (all
    of them were: 8 GB for a 7B model with 30 % changed). bf16 updates tie a lot: entries exactly at the
    threshold are reverted with the probability that makes the expected count exact (seeded draw
    per tensor), so the reported share lands on ``fraction`` instead of overshooting it.
    """
    if fraction <= 0:
        return lambda i, n, a, b: torch.zeros(a.shape, dtype=torch.bool, device=a.device)
    if fraction >= 1:
        return lambda i, n, a, b: torch.ones(a.shape, dtype=torch.bool, device=a.device)
    thr, p_tie = _delta_cut(builder, fraction, sample, seed)

    def select(i: int, name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed * 1_000_003 + 7919 + i)
        out = torch.empty(a.shape, dtype=torch.bool, device=a.device)
        for s in _blocks(a):  # (|Δ| and the tie draws by blocks of rows: the same numbers, a few MB at a time)
            d = (b[s].float() - a[s].float()).abs_()
            tie = (torch.rand(d.shape, generator=g) < p_tie).to(a.device)
            out[s] = (d > thr) | ((d == thr) & tie)
        return out

    return select


def _delta_cut(builder: ModelBuilder, fraction: float, sample: int, seed: int) -> tuple[float, float]:
    """(threshold, probability of reverting an entry exactly at it) for the top ``fraction`` of |Δ|."""
    from subnetviz.analysis.bits import bits_differ

    cache = getattr(builder, "_abs_delta", None)
    if cache is None:
        total = sum(p.numel() for _, p in builder.params)
        rate = min(1.0, sample / total) if total else 1.0  # the sample's expected size is at most ``sample``
        vals = []
        for i, (key, _) in enumerate(builder.params):
            a, b = builder.pair(builder.aligned[key])
            g = torch.Generator().manual_seed(seed * 1_000_003 + 104_729 + i)
            for s in _blocks(a):  # by blocks of rows, in storage order: the values and draws of the whole tensor
                d = (b[s].float() - a[s].float()).abs_()[bits_differ(a[s], b[s])]
                if rate < 1:
                    d = d[torch.rand(d.shape, generator=g) < rate]
                vals.append(d.numpy())
                release_freed()  # (the few values kept split the freed blocks: the heap grew by each block)
        allv = np.concatenate(vals) if vals else np.zeros(0, np.float32)
        del vals
        if allv.size > sample:
            allv = np.random.default_rng(seed).choice(allv, sample, replace=False)
        allv.sort()  # in place (np.sort made a second copy)
        cache = builder._abs_delta = allv[::-1]
        release_freed()
    if cache.size == 0:
        return float("inf"), 0.0
    k = max(1, int(np.ceil(fraction * cache.size)))
    thr = cache[k - 1]
    above = int(np.count_nonzero(cache > thr))
    equal = int(np.count_nonzero(cache == thr))
    return float(thr), (k - above) / equal


def top_delta_masks(builder: ModelBuilder, fraction: float) -> Mapping[str, torch.Tensor]:
    """This finetune's changed entries with the largest |Δ| (the top ``fraction`` of them, one threshold
    over all tensors, ties drawn as in :func:`abs_delta_selector`), keyed as ``AlignedTensor.name`` (the base's
    tensor names). Held bit-packed (:class:`~subnetviz.masks.PackedMasks`, a tensor unpacked when it is read):
    as bool tensors the set took 1 byte per parameter for as long as the finetune was reverted (7 GB for a 7B
    model), packed it takes 1 bit."""
    from subnetviz.analysis.bits import bits_differ
    from subnetviz.masks import PackedMasks

    select = abs_delta_selector(builder, fraction) if fraction < 1 else None  # (every changed entry: no selector)
    out = PackedMasks()
    for i, (key, _) in enumerate(builder.params):
        a, b = builder.pair(builder.aligned[key])
        name = builder.mask_names[key]
        m = bits_differ(a, b)
        if select is not None:
            m &= select(i, name, a, b)
        out.add(name, m)
        del a, b, m
        release_freed()
    return out


def revert_bytes(base: str, ft: str, *, made: int, routers: bool, random_control: bool, sampled: bool) -> int:
    """The memory reverting ``ft`` holds beside the two models (:class:`ModelBuilder`), from the headers:

    - ``made`` mask sets made for this finetune (``update``, ``topk:F``: :func:`top_delta_masks`), bit-packed, and
      with ``routers`` the routers' mask (whole bool tensors, 1 byte per entry), kept while it is reverted;
    - ``sampled`` (a curve point or ``topk:F`` below 1): the |Δ| sample of :func:`_delta_cut`, float32 values kept,
      16 bytes each while it is drawn (the values and their concatenation, or numpy's int64 permutation where the
      draw overshoots ``sample`` and is cut to it);
    - the build of the largest tensor (:meth:`ModelBuilder.build`), per entry: the selection, made first (a mask
      set's tensor unpacked: numpy's bits, then the bools, and its complement: 2 bytes; with the
      ``random_control``, its selection and the permutation: 1 + 4 in int32, 1 + 8 past 2^31 entries), then the
      changed mask (1; counted beside the selection's peak, which leaves a byte of room for the allocator's own);
      the base cast to the finetune's dtype where they differ; a float64 finetune's ``where`` (it does not go
      into a float32 parameter); and the blocks of |Δ|, draws and ``where`` (about 32 bytes per entry of
      :data:`BLOCK`).

    On a 337M-parameter Llama pair (largest tensor 32000 x 2048) a build with the random control peaked at 5.0 to
    5.2 bytes per entry of that tensor over what it started from, the other builds at 2.0 to 2.9; Behaviour with
    the page's default experiments at 0.91 of what its memory check counted (1.65 before these were counted and
    shrunk)."""
    from subnetviz.analysis.routing import router_tensors

    ck_base, ck_ft, aligned = aligned_pair(base, ft)
    try:
        params = ck_ft.num_params
        held = made * (params // 8 + len(aligned))  # (each tensor's bits rounded up to a byte)
        if routers:
            held += sum(math.prod(ck_base.meta(n).shape) for n in router_tensors(ck_base))
        head = _untied_base_head(aligned)
        held += 4 * math.prod(head.shape) if head is not None else 0  # (the finetune's head untied: a float32 copy)
        build = 0
        for at in aligned.values():
            n = math.prod(at.shape)
            da, db = ck_base.meta(at.names[0]).dtype, ck_ft.meta(at.names[1]).dtype
            per = 1 + ((5 if n <= 2**31 else 9) if random_control else 2)
            per += db.itemsize if da != db else 0
            per += db.itemsize if torch.promote_types(db, torch.float32) != torch.float32 else 0
            build = max(build, per * n)
    finally:
        ck_base.close()
        ck_ft.close()
    build += 32 * BLOCK
    if not sampled:
        return held + build
    sample = min(SAMPLE, params)
    return held + max(16 * sample, 4 * sample + build)


def update_masks(builder: ModelBuilder) -> Mapping[str, torch.Tensor]:
    """This finetune's exact update mask (stored bits differ), keyed as ``AlignedTensor.name``."""
    return top_delta_masks(builder, 1.0)


def mask_source(spec: str):
    """A ``--mask`` value: a mask file, ``update`` (each finetune's own update mask), ``topk:F`` (each
    finetune's top fraction F of changed entries by |Δ|) or ``routers`` (an MoE model's router tensors, whole:
    :func:`subnetviz.analysis.routing.router_masks`). A file is read in any format ``mask import`` reads
    (safetensors, a ``torch.save`` .pt, a bigram pickle; nothing is written): a .pt was read as safetensors and
    refused as "header too large"."""
    from subnetviz.masks import import_mask

    if spec == "update":
        return update_masks
    if spec == "routers":
        from subnetviz.analysis.routing import router_masks

        return router_masks
    if spec.startswith("topk:"):
        try:
            frac = float(spec[5:])
        except ValueError:
            frac = -1.0
        if not 0 < frac <= 1:
            raise ConfigError(f"mask {spec!r}: topk:F needs a fraction F in (0, 1], e.g. topk:0.1.")
        return lambda b: top_delta_masks(b, frac)
    return import_mask(spec).masks


def random_order_selector(fraction: float, seed: int) -> Selector:
    """Revert each changed entry with probability ``fraction`` (nested across fractions: one draw per entry)."""

    def select(i: int, name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        out = torch.empty(a.shape, dtype=torch.bool, device=a.device)
        for s in _blocks(a):  # (the draws by blocks of rows: the same numbers, no float32 copy of the tensor)
            out[s] = (torch.rand(out[s].shape, generator=g) < fraction).to(a.device)
        return out

    return select
