"""Name alignment: pair the tensors of two or more checkpoints by name and report everything that
cannot be paired (tensors only on one side, tied heads, resized vocabularies): nothing is silently
skipped."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from subnetviz.checkpoints.experts_layout import match_layouts
from subnetviz.checkpoints.naming import NameTable, strip_prefix
from subnetviz.checkpoints.sources import Checkpoint
from subnetviz.errors import AlignmentError


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


@dataclass
class Alignment:
    checkpoints: list[Checkpoint]
    tensors: list[AlignedTensor]
    only_in: dict[int, list[str]] = field(default_factory=dict)  # checkpoint index -> names only there
    notes: list[str] = field(default_factory=list)

    def report(self) -> list[str]:
        """Human-readable lines: everything not compared one-to-one, and why."""
        lines = list(self.notes)
        for i, names in self.only_in.items():
            if names:
                lines.append(
                    f"{len(names)} tensor(s) only in {self.checkpoints[i].spec}: {', '.join(names[:8])}"
                    + (" ..." if len(names) > 8 else "")
                )
        for t in self.tensors:
            if t.rows is not None:
                lines.append(
                    f"{t.key}: vocabulary resized; compared the {t.rows} shared rows, "
                    f"extra rows per checkpoint: {list(t.extra_rows)}"
                )
        return lines

    def __iter__(self) -> Iterator[AlignedTensor]:
        return iter(self.tensors)


def _is_vocab_tensor(table: NameTable, name: str) -> bool:
    return table.describe(name).module in ("embed", "lm_head")


def align(checkpoints: Sequence[Checkpoint]) -> Alignment:
    """Pair tensors across checkpoints by name (``model.``-style prefixes ignored).

    Packed experts are read as the per-expert tensors another checkpoint stores
    (:func:`~subnetviz.checkpoints.experts_layout.match_layouts`, said in that checkpoint's notes).
    Tied ``lm_head`` weights are counted once (with the embedding); resized vocabularies compare
    the shared rows; tensors missing on any side are listed in ``only_in``. A shape that differs in
    anything but the vocabulary rows raises :class:`AlignmentError` naming the tensor.
    """
    if len(checkpoints) < 2:
        raise AlignmentError("align needs at least two checkpoints.")
    match_layouts(checkpoints)  # packed experts against experts stored one by one: the latter's names for both
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
    # Tied embeddings: a head stored in a model that ties it is the embedding (HF ties it on load),
    # whether one side or every side stored the copy; counting it would count the embedding twice.
    for i, ck in enumerate(checkpoints):
        for head in ("lm_head.weight", "embed_out.weight", "cls.predictions.decoder.weight"):
            if head in keyed[i] and ck.tied_embeddings:
                notes.append(f"{ck.spec}: {head} is tied to the input embedding; counted once (as the embedding).")
                del keyed[i][head]
    common = [k for k in keyed[0] if all(k in km for km in keyed[1:])]
    shared = set(common)  # in every checkpoint: the rest of each is listed (linear in the checkpoints)
    only_in = {i: sorted(km[k] for k in km if k not in shared) for i, km in enumerate(keyed)}
    table = checkpoints[0].names_table
    tensors: list[AlignedTensor] = []
    for key in common:
        names = tuple(km[key] for km in keyed)
        shapes = [ck.meta(n).shape for ck, n in zip(checkpoints, names, strict=True)]
        if all(s == shapes[0] for s in shapes):
            tensors.append(AlignedTensor(key, names, shapes[0]))
            continue
        same_tail = all(len(s) == len(shapes[0]) and s[1:] == shapes[0][1:] for s in shapes)
        if same_tail and _is_vocab_tensor(table, names[0]):
            rows = min(s[0] for s in shapes)
            tensors.append(AlignedTensor(key, names, (rows, *shapes[0][1:]), rows, tuple(s[0] - rows for s in shapes)))
            continue
        found = ", ".join(f"{ck.spec}: {tuple(s)}" for ck, s in zip(checkpoints, shapes, strict=True))
        raise AlignmentError(
            f"tensor {names[0]!r} has different shapes ({found}); only vocabulary rows may differ. "
            "Are these checkpoints of the same architecture?"
        )
    if not tensors:
        raise AlignmentError(
            "no tensor names in common between "
            + " and ".join(ck.spec for ck in checkpoints)
            + f" (e.g. {checkpoints[0].names[:2]} vs {checkpoints[1].names[:2]})."
        )
    return Alignment(list(checkpoints), tensors, only_in, notes)


def read_aligned(ck: Checkpoint, t: AlignedTensor, i: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Tensor ``t`` of checkpoint ``ck`` (position ``i`` in the alignment), shared rows only."""
    x = ck.get(t.names[i], device)
    return x[: t.rows] if t.rows is not None else x
