"""compressed-tensors' packed integer weights (``pack-quantized``: llm-compressor's W4A16 / W8A16 releases), read
as the integer codes they hold.

compressed-tensors stores a weight quantized to b bits as ``<module>.weight_packed``: int32 words, each holding
32 / b codes of one row (code j of a word at bits j·b.., stored offset by 2^(b−1) so they are unsigned), with the
weight's shape in ``<module>.weight_shape`` (a small integer tensor: the packed width does not give the number of
columns exactly) and, for an asymmetric scheme, the zero points ``<module>.weight_zero_point`` packed the same way
along the rows (``packed_dim=0``). A :class:`~subnetviz.checkpoints.sources.Checkpoint` lists such a weight as
``<module>.weight``, int8 codes of the weight's shape (and the zero points as int8, one per scale), in place of the
stored words (:func:`plan`), and reading it unpacks them (:func:`unpack`): the analysis then dequantises them with
their scales like any other integer codes (:mod:`subnetviz.analysis.quant`), names them as the model's own
parameter and counts them entry by entry.

Only b = 2, 4 and 8 are read: there every compressed-tensors version packs alike (32 / b codes per word, none
straddling a word). For 3, 5, 6 and 7 bits, compressed-tensors 0.12 and later pack densely (codes straddle words)
where earlier versions left bits unused, and a small weight's packed width fits both; those stay stored codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from subnetviz.errors import CheckpointError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from subnetviz.checkpoints.header import TensorMeta

READ_BITS = (2, 4, 8)  # widths every compressed-tensors version packs alike
STORED = "compressed-tensors int{bits}"  # TensorMeta.stored of an unpacked tensor
_MAX_SHAPE_ENTRIES = 8  # a weight_shape tensor is read when the checkpoint opens: a few integers, no more


@dataclass(frozen=True)
class Unpacked:
    """One packed tensor read as codes: the stored int32 words, the codes' shape, their width and the dim packed.
    (A computed tensor of :class:`~subnetviz.checkpoints.sources.Checkpoint`: ``source`` the stored tensor whose
    place it takes, ``drops`` the stored tensors it consumes, :meth:`read` its values.)"""

    packed: str
    shape: tuple[int, ...]
    bits: int
    dim: int  # 1: a weight's rows, packed along their columns; 0: zero points, packed along the rows
    drops: tuple[str, ...] = ()  # (a weight's weight_shape)

    @property
    def source(self) -> str:
        return self.packed

    @property
    def stored(self) -> str:
        return STORED.format(bits=self.bits)

    @property
    def dtype(self):
        import torch

        return torch.int8

    def read(self, get: Callable[[str], torch.Tensor], name: str) -> torch.Tensor:
        """The codes, from ``get`` (a stored tensor by name)."""
        return unpack(get(self.packed), self, name=name)


def packed_format(config: dict) -> set[int]:
    """Widths of the integer weights a compressed-tensors config packs (``pack-quantized``), from its config groups;
    empty for any other checkpoint."""
    qc = config.get("quantization_config") or config.get("compression_config")
    if not isinstance(qc, dict) or str(qc.get("quant_method", "")).lower() != "compressed-tensors":
        return set()
    groups = qc.get("config_groups")
    bits: set[int] = set()
    for g in (groups or {}).values() if isinstance(groups, dict) else ():
        w = g.get("weights") if isinstance(g, dict) else None
        fmt = (g.get("format") if isinstance(g, dict) else None) or qc.get("format")
        if isinstance(w, dict) and w.get("type") == "int" and fmt in ("pack-quantized", "mixed-precision", None):
            if type(w.get("num_bits")) is int:
                bits.add(w["num_bits"])
    return bits


def plan(metas: dict[str, TensorMeta], config: dict, read: Callable[[TensorMeta], torch.Tensor]) -> dict[str, Unpacked]:
    """Logical name -> :class:`Unpacked` for every 2-D ``<module>.weight_packed`` (and its packed zero points) of a
    pack-quantized compressed-tensors checkpoint whose width this module reads (empty for any other checkpoint).
    ``read`` gives a stored tensor's values: each ``weight_shape`` is read (a few integers) and checked against its
    packed words; a shape that does not fit is a one-line :class:`CheckpointError` naming it."""
    widths = packed_format(config)
    if not widths:
        return {}
    import torch

    out: dict[str, Unpacked] = {}
    for name, m in metas.items():
        if not name.endswith(".weight_packed") or m.dtype != torch.int32 or len(m.shape) != 2:
            continue
        stem = name[: -len(".weight_packed")]
        rows, words = m.shape
        shape = _weight_shape(metas, stem, read)
        if shape is None or len(shape) != 2:
            continue  # (a 3-D or shapeless weight stays stored codes)
        if shape[0] != rows:
            raise CheckpointError(
                f"{stem}.weight_shape says {tuple(shape)}, but {name} holds {rows} rows {tuple(m.shape)}."
            )
        bits = [b for b in sorted(widths) if math.ceil(shape[1] * b / 32) == words]
        if not bits:
            raise CheckpointError(
                f"{name} {tuple(m.shape)} does not hold {shape[1]} columns of "
                f"{' or '.join(f'{b}-bit' for b in sorted(widths))} codes (its weight_shape {tuple(shape)}); "
                f"expected {', '.join(str(math.ceil(shape[1] * b / 32)) for b in sorted(widths))} words per row."
            )
        if len(bits) > 1 or bits[0] not in READ_BITS:
            continue  # (read as stored codes; the analysis says so)
        b = bits[0]
        if f"{stem}.weight" in metas:
            raise CheckpointError(f"{stem!r} stores both 'weight' and 'weight_packed'.")
        out[f"{stem}.weight"] = Unpacked(name, (rows, shape[1]), b, 1, (f"{stem}.weight_shape",))
        zp = metas.get(f"{stem}.weight_zero_point")
        scale = metas.get(f"{stem}.weight_scale")
        if zp is not None and zp.dtype == torch.int32 and scale is not None and len(scale.shape) == 2:
            want = (math.ceil(rows * b / 32), scale.shape[1])
            if tuple(zp.shape) != want:
                raise CheckpointError(
                    f"{stem}.weight_zero_point {tuple(zp.shape)}: expected {want}, {b}-bit zero points of its "
                    f"{tuple(scale.shape)} scales packed along the rows."
                )
            out[f"{stem}.weight_zero_point"] = Unpacked(zp.name, (rows, scale.shape[1]), b, 0)
    return out


def _weight_shape(metas: dict, stem: str, read) -> tuple[int, ...] | None:
    m = metas.get(f"{stem}.weight_shape")
    if m is None:
        return None
    if m.dtype.is_floating_point or len(m.shape) != 1 or m.numel > _MAX_SHAPE_ENTRIES:
        raise CheckpointError(
            f"{stem}.weight_shape is {str(m.dtype)[6:]} {tuple(m.shape)}; expected a few integers (the weight's shape)."
        )
    values = [int(v) for v in read(m).reshape(-1).tolist()]
    if any(v < 1 or v > 1 << 40 for v in values):
        raise CheckpointError(f"{stem}.weight_shape holds {values}; a weight's shape is positive and bounded.")
    return tuple(values)


def notes(plan_: dict) -> list[str]:
    """The checkpoint's note on the packed weights it reads as codes."""
    ours = {n: p for n, p in plan_.items() if isinstance(p, Unpacked)}
    weights = [n for n, p in ours.items() if p.dim == 1]
    if not weights:
        return []
    ex = ", ".join(weights[:2]) + (" ..." if len(weights) > 2 else "")
    widths = "/".join(str(b) for b in sorted({p.bits for p in ours.values()}))
    return [
        f"compressed-tensors: {len(weights)} weight(s) ({ex}) are stored as {widths}-bit codes packed into int32 "
        "words; read as the codes they hold (unpacked as compressed-tensors unpacks them) under the model's own "
        "names and shapes, and compared as weights, dequantised with their scales."
    ]


def unpack(words: torch.Tensor, p: Unpacked, *, name: str = "tensor") -> torch.Tensor:
    """The int8 codes of packed ``words`` (int32) as compressed-tensors' ``unpack_from_int32`` gives them: code j of
    a word at bits j·b.. (little-endian), less the 2^(b−1) offset; the padding past the last column dropped. Memory
    for the codes is asked for before they are allocated."""
    import torch

    from subnetviz.config import require_memory

    rows, cols = p.shape
    require_memory(f"compressed-tensors codes of {name} (unpacked to int8)", 2 * rows * cols)
    w = words.cpu().numpy()
    if p.dim == 0:
        w = w.T
        rows, cols = cols, rows
    u8 = np.ascontiguousarray(w, dtype="<i4").view(np.uint8).reshape(w.shape[0], -1)  # bytes in order
    per, offset = 8 // p.bits, np.uint8(1 << (p.bits - 1))
    if per == 1:  # (a new array: u8 may be the file's own map)
        codes = np.subtract(u8, offset, dtype=np.uint8)  # (wraps in uint8: the signed code, two's complement)
    else:
        codes = np.empty((u8.shape[0], u8.shape[1], per), np.uint8)
        for j in range(per):
            np.right_shift(u8, j * p.bits, out=codes[:, :, j])
        codes &= np.uint8((1 << p.bits) - 1)
        codes = codes.reshape(u8.shape[0], -1)
        codes -= offset  # (in place, wrapping as above)
    codes = codes[:, :cols].view(np.int8)
    if p.dim == 0:
        codes = codes.T
    return torch.from_numpy(np.ascontiguousarray(codes))
