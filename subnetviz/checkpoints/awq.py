"""AWQ's 4-bit weights (AutoAWQ's GEMM format: most AWQ releases on the Hub), read as the codes they hold in the
weight's shape, with their scales and zero points laid out like the weight.

AutoAWQ stores a linear layer of ``in`` inputs and ``out`` outputs as ``<module>.qweight`` (int32, in × out / 8:
each word holds 8 output columns' 4-bit codes, column ``8c + ORDER[i]`` in bits ``4i..``), ``<module>.qzeros``
(int32, groups × out / 8, packed the same way) and ``<module>.scales`` (float16, groups × out), a group being
``group_size`` consecutive inputs; AutoAWQ dequantises w[in, out] = (code − zero) × scale (its
``dequantize_gemm``), the layer computing with its transpose. A :class:`~subnetviz.checkpoints.sources.Checkpoint`
lists such a layer as ``<module>.weight``: uint8 codes (0..15) of shape (out, in) (the model's own parameter,
transposed back), with ``qzeros`` as uint8 and ``scales`` as they are stored, both (out, groups) (:func:`plan`);
the analysis then dequantises them as other integer codes with zero points (:mod:`subnetviz.analysis.quant`),
entry by entry, under the model's own names. Only the GEMM layout is read (``version: gemm``, the default);
GEMV and the exllama / Marlin repackings stay stored codes.
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

ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ's packing order: bits 4i.. of a word hold column 8c + ORDER[i]
_NIBBLE_OF_COLUMN = tuple(ORDER.index(j) for j in range(8))  # column 8c + j is in nibble _NIBBLE_OF_COLUMN[j]


def awq_config(config: dict) -> tuple[int, int] | None:
    """(bits, group size) of an AWQ checkpoint in the GEMM layout this module reads; None for any other."""
    qc = config.get("quantization_config")
    if not isinstance(qc, dict) or str(qc.get("quant_method", "")).lower() != "awq":
        return None
    version = str(qc.get("version") or "gemm").lower()
    bits, group = qc.get("bits", qc.get("w_bit")), qc.get("group_size", qc.get("q_group_size"))
    if version != "gemm" or bits != 4 or type(group) is not int or group < 1 or not qc.get("zero_point", True):
        return None
    return bits, group


@dataclass(frozen=True)
class Unpacked:
    """A stored AWQ tensor (in-major, columns packed or not) read in the weight's (out, in)-major layout."""

    source: str
    shape: tuple[int, int]  # as listed: (out, in) codes, or (out, groups) zero points / scales
    packed: bool  # 4-bit codes in int32 words (qweight, qzeros); else a float tensor transposed (scales)
    stored: str | None
    drops: tuple[str, ...] = ()
    float_dtype: object = None  # the scales' stored dtype

    @property
    def dtype(self):
        import torch

        return torch.uint8 if self.packed else self.float_dtype

    def read(self, get: Callable[[str], torch.Tensor], name: str) -> torch.Tensor:
        import torch

        from subnetviz.config import require_memory

        x = get(self.source)
        if not self.packed:
            return x.t().contiguous()
        rows, cols = self.shape  # (out, in): the stored words are (in, out / 8)
        require_memory(f"AWQ codes of {name} (unpacked, transposed)", 3 * rows * cols)
        words = np.ascontiguousarray(x.numpy(), dtype="<i4")
        u8 = words.view(np.uint8).reshape(words.shape[0], words.shape[1], 4)  # little-endian bytes of each word
        out = np.empty((rows, cols), np.uint8)  # (out, in): output column 8c + j of word c is row 8c + j
        by_word = out.reshape(words.shape[1], 8, cols)
        for j, i in enumerate(_NIBBLE_OF_COLUMN):  # nibble i: byte i // 2, its high half when i is odd
            byte = u8[:, :, i // 2]
            by_word[:, j, :] = (byte >> 4).T if i % 2 else (byte & 0x0F).T  # (one (in, out / 8) byte temporary)
        return torch.from_numpy(out)


def plan(metas: dict[str, TensorMeta], config: dict) -> dict[str, Unpacked]:
    """Logical name -> :class:`Unpacked` for every ``qweight`` / ``qzeros`` / ``scales`` triple of an AWQ (GEMM)
    checkpoint (empty for any other); shapes checked from the headers. A ``qweight`` whose zero points or scales are
    missing or do not fit, or which is no int32 matrix of whole groups of inputs (AutoAWQ's ``WQLinear_GEMM`` asserts
    ``in_features % group_size == 0``), is a one-line :class:`CheckpointError` naming the tensor: left as stored
    codes, it was listed under another name than the other side's weight and dropped from the comparison."""
    found = awq_config(config)
    if found is None:
        return {}
    import torch

    _, group = found
    out: dict[str, Unpacked] = {}
    for name, m in metas.items():
        if not name.endswith(".qweight"):
            continue
        stem = name[: -len(".qweight")]
        if m.dtype != torch.int32 or len(m.shape) != 2:
            raise CheckpointError(
                f"{name}: {str(m.dtype)[6:]} {tuple(m.shape)}; expected int32 words (inputs, outputs / 8), AutoAWQ's "
                "GEMM layout (quantization_config version 'gemm')."
            )
        n_in, n_out = m.shape[0], m.shape[1] * 8
        if not n_in or not n_out:
            continue  # (an empty layer: nothing to unpack; read as stored)
        groups = math.ceil(n_in / group)
        want = {f"{stem}.qzeros": (torch.int32, (groups, n_out // 8)), f"{stem}.scales": (None, (groups, n_out))}
        for part, (dtype, shape) in want.items():
            got = metas.get(part)
            if (
                got is None
                or tuple(got.shape) != shape
                or (dtype is not None and got.dtype != dtype)
                or (dtype is None and not got.dtype.is_floating_point)
            ):
                said = "missing" if got is None else f"{str(got.dtype)[6:]} {tuple(got.shape)}"
                raise CheckpointError(
                    f"{part}: {said}; expected {shape} ({'int32 words' if dtype else 'float scales'}) for {name} "
                    f"{tuple(m.shape)} in groups of {group}."
                )
        if n_in % group:
            raise CheckpointError(
                f"{name} {tuple(m.shape)}: {n_in} input rows, not a whole number of groups of {group} (the "
                "quantization_config's group_size); AutoAWQ's GEMM layout holds whole groups."
            )
        if f"{stem}.weight" in metas:
            continue  # (a float weight stored beside it)
        s = metas[f"{stem}.scales"]
        out[f"{stem}.weight"] = Unpacked(name, (n_out, n_in), True, "AWQ int4")
        out[f"{stem}.qzeros"] = Unpacked(f"{stem}.qzeros", (n_out, groups), True, "AWQ int4 zero points")
        out[f"{stem}.scales"] = Unpacked(f"{stem}.scales", (n_out, groups), False, None, (), s.dtype)
    return out


def notes(plan_: dict) -> list[str]:
    weights = [n for n, p in plan_.items() if p.stored == "AWQ int4"]
    if not weights:
        return []
    ex = ", ".join(weights[:2]) + (" ..." if len(weights) > 2 else "")
    return [
        f"AWQ: {len(weights)} weight(s) ({ex}) are stored as 4-bit codes packed eight to an int32 word in AutoAWQ's "
        "order, input-major; read as their codes in the model's own (out, in) layout, with their zero points and "
        "scales per group of inputs, and compared as weights, dequantised as AutoAWQ does ((code − zero) × scale)."
    ]
