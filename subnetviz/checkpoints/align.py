"""Name alignment: pair the tensors of two or more checkpoints by name and report everything that
cannot be paired (tensors only on one side, tied heads, resized vocabularies): nothing is silently
skipped."""

from __future__ import annotations

import re
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from subnetviz.checkpoints.experts_layout import match_layouts
from subnetviz.checkpoints.naming import TIED_HEADS, NameTable, strip_prefix
from subnetviz.checkpoints.sources import Checkpoint
from subnetviz.errors import AlignmentError
from subnetviz.lazy import CallableModule


@dataclass(frozen=True)
class AlignedTensor:
    """One tensor present in every checkpoint of an alignment.

    ``names[i]`` is its name in checkpoint ``i``; ``rows`` is set when the vocabulary was resized
    (only the first ``rows`` rows are shared and compared; ``extra_rows[i]`` are beyond them).
    """

    key: str
    names: tuple[str, ...]
    shape: tuple[int, ...]
    rows: int | None = None
    extra_rows: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        """The name its results are listed, described and masked under: the first checkpoint's, except for an
        output head that checkpoint ties to its input embedding while another stores it untied
        (:func:`_untied_heads`): then the head's own name, as that checkpoint stores it. Under the embedding's
        name its row was filed as the embedding and its mask took the embedding's place."""
        if self.key in TIED_HEADS and strip_prefix(self.names[0]) not in TIED_HEADS:
            return next((n for n in self.names if strip_prefix(n) in TIED_HEADS), self.names[0])
        return self.names[0]


@dataclass
class Alignment:
    checkpoints: list[Checkpoint]
    tensors: list[AlignedTensor]
    only_in: dict[int, list[str]] = field(default_factory=dict)  # checkpoint index -> its names not in every checkpoint
    notes: list[str] = field(default_factory=list)
    # each tensor not in every checkpoint: (its name in the first checkpoint holding it, the checkpoints holding it)
    held_by: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)

    def report(self, buffers: Mapping[int, Collection[str]] | None = None) -> list[str]:
        """Human-readable lines: everything not compared one-to-one, and why. ``buffers`` (checkpoint index ->
        names): of two checkpoints, the tensors only in one of them that are buffers (causal masks, rotary
        frequencies: not parameters) are listed on a line of their own, apart from the weights."""
        lines = list(self.notes)
        if len(self.checkpoints) > 2 and self.held_by:
            lines += self._not_in_every()
        else:  # two checkpoints: a tensor not in both is only in one of them
            for i, names in self.only_in.items():
                apart = set((buffers or {}).get(i, ()))
                weights = [n for n in names if n not in apart]
                if weights:
                    lines.append(f"{len(weights)} tensor(s) only in {self.checkpoints[i].spec}: {_listed(weights)}")
                held = [n for n in names if n in apart]
                if held:
                    lines.append(
                        f"{len(held)} buffer tensor(s) only in {self.checkpoints[i].spec}: {_listed(held)}. Buffers "
                        "(causal masks, rotary frequencies, constants) are not parameters, and often stored on one "
                        "side only (transformers 5 saves fewer of them than older saves): not counted with the weights."
                    )
        for t in self.tensors:
            if t.rows is not None:
                lines.append(
                    f"{t.key}: vocabulary resized; compared the {t.rows} shared rows, "
                    f"extra rows per checkpoint: {list(t.extra_rows)}"
                )
        return lines

    def _not_in_every(self) -> list[str]:
        """Of three or more checkpoints, one line per set of checkpoints that hold the same tensors not in every
        checkpoint, named by the shorter side: "only in" the holders, or "not in" the others (the last save
        lacking one tensor is one line naming that save, not one "only in" line per other checkpoint)."""
        groups: dict[tuple[int, ...], list[str]] = {}
        for name, held in self.held_by:
            groups.setdefault(held, []).append(name)
        n = len(self.checkpoints)
        lines = []
        for held, names in sorted(groups.items()):
            lacking = [i for i in range(n) if i not in held]
            if len(held) <= len(lacking):
                where = f"only in {self._specs(held)} (not in the other {len(lacking)})"
            else:
                where = f"not in {self._specs(lacking)} (in the other {len(held)})"
            lines.append(f"{len(names)} tensor(s) {where}: {_listed(sorted(names))}")
        return lines

    def _specs(self, indices: Sequence[int]) -> str:
        specs = [self.checkpoints[i].spec for i in indices]
        return ", ".join(specs[:4]) + (f" and {len(specs) - 4} more" if len(specs) > 4 else "")

    def __iter__(self) -> Iterator[AlignedTensor]:
        return iter(self.tensors)


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")


def _is_vocab_tensor(table: NameTable, name: str) -> bool:
    return table.describe(name).module in ("embed", "lm_head")


def align(checkpoints: Sequence[Checkpoint]) -> Alignment:
    """Pair tensors across checkpoints by name (``model.``-style prefixes ignored).

    Packed experts are read as the per-expert tensors another checkpoint stores, tensors a state-dict save holds by
    the model's names as the names a release stores them by where transformers only renames them on load
    (Granite-MoE's ``experts.gate_up_proj`` / ``down_proj`` / ``router.weight`` as ``input_linear`` /
    ``output_linear`` / ``router.layer``), and Qwen3-VL-MoE's packed experts stored (E, in, out) (Qwen's releases)
    transposed where another stores them (E, out, in) (a transformers 5 save)
    (:func:`~subnetviz.checkpoints.experts_layout.match_layouts`, said in that checkpoint's notes).
    Tied ``lm_head`` weights are counted once (with the embedding; a head stored beside the embedding with values of
    its own is untied, as transformers 5 loads it: :attr:`~subnetviz.checkpoints.sources.Checkpoint.head_stored_apart`,
    said in a note), and a head one checkpoint stores untied is compared with the input embedding of those that tie
    it (:func:`_untied_heads`); resized vocabularies compare the shared rows; tensors missing on any side are listed
    in ``only_in`` (and ``held_by``). A shape that differs in anything but the vocabulary rows raises
    :class:`AlignmentError` naming the tensor.
    """
    if len(checkpoints) < 2:
        raise AlignmentError("align needs at least two checkpoints.")
    match_layouts(checkpoints)  # packed experts against experts stored one by one (or transposed): one layout
    keyed: list[dict[str, str]] = []
    notes: list[str] = []
    for ck in checkpoints:
        m: dict[str, str] = {}
        table = ck.names_table
        for n in ck.names:
            if table.num_experts is not None:  # (the only tables check_packed checks)
                table.check_packed(n, ck.meta(n).shape, f"{ck.spec}: ")
            m.setdefault(strip_prefix(n), n)
        keyed.append(m)
    # Tied embeddings: a head stored in a model that ties it is the embedding's copy (transformers 5 ties the two on
    # load where their values are equal), whether one side or every side stored it; counting it would count the
    # embedding twice. Stored with values of its own, transformers loads it untied: compared as a tensor of its own.
    for i, ck in enumerate(checkpoints):
        apart = ck.head_stored_apart  # (read only where the config ties the head and both tensors are stored)
        if apart is not None:
            notes.append(
                f"{ck.spec}: its config ties {apart[0]} to the input embedding {apart[1]} (tie_word_embeddings), but "
                "it stores both with different values: transformers 5 loads it untied (it warns it will NOT tie them), "
                f"so {apart[0]} is compared as a tensor of its own."
            )
        for head in TIED_HEADS:
            if head in keyed[i] and ck.tied_embeddings:
                notes.append(f"{ck.spec}: {head} is tied to the input embedding; counted once (as the embedding).")
                del keyed[i][head]
    _refuse_other_architectures(checkpoints, keyed)
    _untied_heads(checkpoints, keyed, notes)
    common = [k for k in keyed[0] if all(k in km for km in keyed[1:])]
    shared = set(common)  # in every checkpoint: the rest of each is listed (linear in the checkpoints)
    only_in = {i: sorted(km[k] for k in km if k not in shared) for i, km in enumerate(keyed)}
    held_by = []
    for key in dict.fromkeys(k for km in keyed for k in km if k not in shared):
        held = tuple(i for i, km in enumerate(keyed) if key in km)
        held_by.append((keyed[held[0]][key], held))
    table = checkpoints[0].names_table
    tensors: list[AlignedTensor] = []
    apart: list[str] = []  # quantization companions laid out differently (_quant_companion)
    for key in common:
        names = tuple(km[key] for km in keyed)
        shapes = [ck.meta(n).shape for ck, n in zip(checkpoints, names, strict=True)]
        if all(s == shapes[0] for s in shapes):
            tensors.append(AlignedTensor(key, names, shapes[0]))
            continue
        if all(_quant_companion(ck, n) for ck, n in zip(checkpoints, names, strict=True)):
            laid = ", ".join(f"{ck.spec}: {tuple(s)}" for ck, s in zip(checkpoints, shapes, strict=True))
            apart.append(f"{names[0]} ({laid})")
            continue
        same_tail = all(len(s) == len(shapes[0]) and s[1:] == shapes[0][1:] for s in shapes)
        if same_tail and _is_vocab_tensor(table, names[0]):
            rows = min(s[0] for s in shapes)
            tensors.append(AlignedTensor(key, names, (rows, *shapes[0][1:]), rows, tuple(s[0] - rows for s in shapes)))
            continue
        found = ", ".join(f"{ck.spec}: {tuple(s)}" for ck, s in zip(checkpoints, shapes, strict=True))
        _refuse_bnb4(checkpoints, names, shapes)
        raise AlignmentError(
            f"tensor {names[0]!r} has different shapes ({found}); only vocabulary rows may differ. "
            "Are these checkpoints of the same architecture?"
        )
    if apart:
        notes.append(
            f"{len(apart)} quantization scale / zero-point tensor(s) are laid out differently by the checkpoints' "
            f"own schemes (e.g. {'; '.join(apart[:2])}{' ...' if len(apart) > 2 else ''}): not compared with each "
            "other; each side's weights are dequantised with its own and compared as weights."
        )
    if not tensors:
        _refuse_lora_factors(checkpoints)
        raise AlignmentError(
            "no tensor names in common between "
            + " and ".join(ck.spec for ck in checkpoints)
            + f" (e.g. {checkpoints[0].names[:2]} vs {checkpoints[1].names[:2]})."
        )
    return Alignment(list(checkpoints), tensors, only_in, notes, held_by)


# a PEFT adapter's own tensors: LoRA's factors (lora_A / lora_B, lora_embedding_A / _B for embeddings) and DoRA's
# magnitude vector, as PEFT names them in the file it saves
_LORA_FACTOR = re.compile(r"\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)(?:\.|$)")


def _refuse_lora_factors(checkpoints: Sequence[Checkpoint]) -> None:
    """AlignmentError naming a checkpoint that holds a LoRA adapter's factors where no tensor pairs: its weights
    saved under another name than ``adapter_model.*`` (or without its config) were read as a model and said "no
    tensor names in common", which sent their sender comparing names. An adapter is merged onto its base only from
    its folder with ``adapter_config.json``."""
    for ck in checkpoints:
        factors = [n for n in ck.names if _LORA_FACTOR.search(n)]
        if factors:
            raise AlignmentError(
                f"{ck.spec} holds a PEFT adapter's LoRA factors (e.g. {factors[0]!r}), not a model's weights: an "
                "adapter is merged onto its base from its folder, its weights named adapter_model.safetensors beside "
                "its adapter_config.json (rank, scale, target modules); give that folder as a finetuned model beside "
                "its base."
            )


def _refuse_other_architectures(checkpoints: Sequence[Checkpoint], keyed: list[dict[str, str]]) -> None:
    """AlignmentError where the checkpoints' configs name different model types and no tensor pairs by its own name:
    a GPT-2 as wide as a Llama base was compared on its head alone (the GPT-2's tied embedding read as the head),
    100 % of the GPT-2 "changed" and every other tensor listed as not compared. Models of one type stored under
    another's names (a Llama saved as Mistral) pair by name and are kept."""
    types = [str(ck.config.get("model_type") or "") for ck in checkpoints]
    if "" in types or len(set(types)) == 1:
        return
    if any(all(k in km for km in keyed[1:]) for k in keyed[0]):
        return
    raise AlignmentError(
        "no tensor names in common between "
        + " and ".join(f"{ck.spec} ({t})" for ck, t in zip(checkpoints, types, strict=True))
        + ": models of different architectures, not a base and its finetune."
    )


def _untied_heads(checkpoints: Sequence[Checkpoint], keyed: list[dict[str, str]], notes: list[str]) -> None:
    """A head some checkpoints store untied (a finetune that untied it, a PEFT adapter that trained a copy of it)
    is compared, in those that tie it to the input embedding, with that embedding: it is the head those models
    compute with (listed as only in one checkpoint before, its change was counted nowhere)."""
    for head in TIED_HEADS:
        if not any(head in km for km in keyed) or all(head in km for km in keyed):
            continue
        for i, ck in enumerate(checkpoints):
            if head in keyed[i] or not ck.tied_embeddings:
                continue
            embed = ck.input_embedding  # (not Gemma-4's per-layer embedding beside it)
            if embed is not None:
                keyed[i][head] = embed
                notes.append(
                    f"{ck.spec}: ties {head} to its input embedding {embed}, which another checkpoint stores "
                    f"untied; {head} is compared with that embedding's values there."
                )


# what quantizers save beside a quantized weight (scales, zero points, its shape, its group order): laid out by each
# checkpoint's own scheme (a scale per row, per 32 columns, per block), so two quantizations of one model store them
# in different shapes
_COMPANION = re.compile(
    r"(^|_)(scale|scale_inv|scale_2|zero_point|global_scale|shape|g_idx)$|^(SCB|scales|qzeros|absmax|quant_map)$"
    r"|^qscale_(weight|act)$"  # (Mistral's FP8 scale names)
)


def _quant_companion(ck: Checkpoint, name: str) -> bool:
    """Whether tensor ``name`` of ``ck`` is a quantization companion of a weight (by its name, in a checkpoint
    whose config says it is quantized): two quantizations of one model (FP8 with a scale per row and MXFP8's per 32
    columns, compressed-tensors' int4 groups and int8 rows, blocks of 16 and 128) store them in shapes that differ,
    and are still one architecture; the analysis dequantises each side's weights with its own."""
    quantized = isinstance(ck.config.get("quantization_config") or ck.config.get("compression_config"), dict)
    return quantized and bool(_COMPANION.search(name.rsplit(".", 1)[-1]))


# what bitsandbytes saves beside a 4-bit weight (Params4bit's packed uint8 bytes, two codes per byte)
_BNB4_COMPANIONS = ("absmax", "quant_map", "nested_absmax", "quant_state.bitsandbytes__nf4")
_BNB4_COMPANIONS += ("quant_state.bitsandbytes__fp4",)


def _bnb4(ck: Checkpoint, name: str) -> tuple[str, str] | None:
    """(quantisation, what tells it) of a weight the checkpoint stores bitsandbytes 4-bit packed: uint8 bytes
    with bitsandbytes' companions (``absmax``, ``quant_state``) beside it, or under a ``quantization_config``
    that loads in 4 bits; the quantisation is ``nf4`` / ``fp4`` (from the quant_state's name or the config's
    bnb_4bit_quant_type), else ``4-bit``. None for any other tensor."""
    import torch

    if ck.meta(name).dtype != torch.uint8 or not name.endswith("weight"):
        return None
    names = set(ck.names)
    beside = [c.split(".")[0] for c in _BNB4_COMPANIONS if f"{name}.{c}" in names]
    qc = ck.config.get("quantization_config")
    qc = qc if isinstance(qc, dict) else {}
    by_config = str(qc.get("quant_method") or "bitsandbytes").lower() == "bitsandbytes" and bool(qc.get("load_in_4bit"))
    if not beside and not by_config:
        return None
    kind = next((k for k in ("nf4", "fp4") if f"{name}.quant_state.bitsandbytes__{k}" in names), None)
    kind = kind or (qc.get("bnb_4bit_quant_type") if qc.get("bnb_4bit_quant_type") in ("nf4", "fp4") else "4-bit")
    told = f"with {' / '.join(dict.fromkeys(beside))} beside it" if beside else "quantization_config load_in_4bit"
    return kind, told


def _refuse_bnb4(checkpoints: Sequence[Checkpoint], names: tuple[str, ...], shapes: list) -> None:
    """A tensor whose shapes differ because one side stores it bitsandbytes 4-bit packed, the other as floats:
    said as that, in one line. Such codes are still packed because the checkpoint reader could not read them in
    the weight's shape (:mod:`~subnetviz.checkpoints.bnb4`: no quant_state, or blocks that straddle rows)."""
    packed = [(i, q) for i, ck in enumerate(checkpoints) if (q := _bnb4(ck, names[i])) is not None]
    floats = [i for i, ck in enumerate(checkpoints) if ck.meta(names[i]).dtype.is_floating_point]
    if not packed or not floats:
        return
    (i, (kind, told)), j = packed[0], floats[0]
    a, b = checkpoints[i], checkpoints[j]
    raise AlignmentError(
        f"tensor {names[i]!r}: {a.spec} stores it bitsandbytes 4-bit packed ({kind}, {told}: {tuple(shapes[i])} "
        f"bytes, two codes per byte), {b.spec} as {str(b.meta(names[j]).dtype)[6:]} {tuple(shapes[j])}; 4-bit "
        "codes are read in the weight's shape only where their quant_state gives the shape and each row holds whole "
        "blocks of the scales (checkpoints.bnb4), and these are not, so they cannot be compared entry by entry "
        "with float weights. Compare checkpoints stored alike: the finetune saved unquantised, or a base quantised "
        "the same way."
    )


def read_aligned(ck: Checkpoint, t: AlignedTensor, i: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Tensor ``t`` of checkpoint ``ck`` (position ``i`` in the alignment), shared rows only."""
    x = ck.get(t.names[i], device)
    return x[: t.rows] if t.rows is not None else x


# Called as align(): ``from subnetviz.checkpoints import align`` may give this module (the import system binds it in
# the package once anything imports it directly), which then calls :func:`align` (:class:`~subnetviz.lazy
# .CallableModule`).
sys.modules[__name__].__class__ = CallableModule
