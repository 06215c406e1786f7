"""NVFP4 weights (NVIDIA's 4-bit float format: compressed-tensors' ``nvfp4-pack-quantized`` and NVIDIA ModelOpt's
exports, the Blackwell releases), read as the codes they hold in the weight's shape, with their block scales as
float32 values.

Both store a weight of shape (out, in) as uint8 bytes (out, in / 2), two E2M1 codes a byte, the first in the low
nibble; one FP8 (E4M3) scale per 16 codes of a row, (out, in / 16); and one float32 tensor-wide factor. The
weight is w = E2M1[code] × S, S the block's scale as float32 and then, in float32:

- compressed-tensors (``weight_packed``, ``weight_scale``, ``weight_global_scale``): S = scale / global_scale,
  as its ``dequantize`` divides (then rounded to the model's dtype);
- ModelOpt (``weight``, ``weight_scale``, ``weight_scale_2``): S = scale × scale_2, as ``NVFP4QTensor.dequantize``
  multiplies.

A :class:`~subnetviz.checkpoints.sources.Checkpoint` lists such a weight as ``<module>.weight``, uint8 codes (0..15)
in the weight's shape, and ``<module>.weight_scale`` as the float32 S (:func:`plan`); the analysis dequantises them
with the E2M1 values (:data:`E2M1`), entry by entry, under the model's own names. Tested bit for bit against
compressed-tensors' and ModelOpt's own dequantisation on checkpoints they write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from subnetviz.checkpoints.mxfp4 import FP4_VALUES
from subnetviz.errors import CheckpointError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from subnetviz.checkpoints.header import TensorMeta

E2M1 = np.array(FP4_VALUES, np.float32)  # code -> value (the sign is the code's top bit)
GROUP = 16  # codes per FP8 scale


@dataclass(frozen=True)
class Codes:
    """An NVFP4 weight's codes (uint8, 0..15) in the weight's shape."""

    source: str  # the stored bytes
    shape: tuple[int, int]
    drops: tuple[str, ...] = ()
    stored: str = "NVFP4"

    @property
    def dtype(self):
        import torch

        return torch.uint8

    def read(self, get: Callable[[str], torch.Tensor], name: str) -> torch.Tensor:
        from subnetviz.checkpoints.bnb4 import nibbles

        # (the first code of a byte in its low nibble)
        return nibbles(get(self.source), *self.shape, high_first=False, what=f"NVFP4 codes of {name} (unpacked)")


@dataclass(frozen=True)
class Scales:
    """An NVFP4 weight's block scales S as float32 (out, in / 16): the FP8 scale divided by compressed-tensors'
    global scale, or times ModelOpt's scale_2."""

    source: str  # the FP8 scales (weight_scale)
    shape: tuple[int, int]
    factor: str  # the float32 tensor-wide factor
    divide: bool  # compressed-tensors divides by it, ModelOpt multiplies
    drops: tuple[str, ...] = ()
    stored: str | None = None

    @property
    def dtype(self):
        import torch

        return torch.float32

    def read(self, get: Callable[[str], torch.Tensor], name: str) -> torch.Tensor:
        import torch

        s = get(self.source).to(torch.float32)
        f = get(self.factor).to(torch.float32).reshape(())
        if not bool(torch.isfinite(f)) or float(f) == 0.0:
            raise CheckpointError(
                f"{self.factor}: {float(f)}; an NVFP4 weight's tensor-wide scale must be finite and nonzero."
            )
        return (s / f if self.divide else s * f).reshape(self.shape)


def plan(metas: dict[str, TensorMeta], config: dict) -> dict[str, Codes | Scales]:
    """Logical name -> :class:`Codes` / :class:`Scales` for every NVFP4 weight of a compressed-tensors or ModelOpt
    checkpoint (empty for any other); shapes checked from the headers, a weight whose scales do not fit is a
    one-line :class:`CheckpointError` naming it."""
    import torch

    qc = config.get("quantization_config") or config.get("compression_config")
    method = str(qc.get("quant_method", "")).lower() if isinstance(qc, dict) else ""
    if method not in ("compressed-tensors", "modelopt"):
        return {}
    out: dict[str, Codes | Scales] = {}
    for name, m in metas.items():
        stem, _, last = name.rpartition(".")
        if method == "compressed-tensors":
            if last != "weight_packed" or f"{stem}.weight_global_scale" not in metas:
                continue
            factor, divide = f"{stem}.weight_global_scale", True
        else:
            if last != "weight" or f"{stem}.weight_scale_2" not in metas:
                continue
            factor, divide = f"{stem}.weight_scale_2", False
        scale = metas.get(f"{stem}.weight_scale")
        if m.dtype != torch.uint8 or len(m.shape) != 2 or scale is None or scale.dtype != torch.float8_e4m3fn:
            continue  # (another format: left as it is stored)
        rows, cols = m.shape[0], m.shape[1] * 2
        if not rows or not cols:
            continue  # (an empty weight: nothing to unpack; read as stored)
        want = (rows, cols // GROUP)
        if cols % GROUP or tuple(scale.shape) != want or metas[factor].numel != 1:
            raise CheckpointError(
                f"{name} {tuple(m.shape)}: expected its FP8 weight_scale to be {want} (one per {GROUP} codes of a row) "
                f"and {factor} one value; found {tuple(scale.shape)} and {tuple(metas[factor].shape)}."
            )
        if method == "compressed-tensors" and f"{stem}.weight" in metas:
            raise CheckpointError(f"{stem!r} stores both 'weight' and 'weight_packed'.")
        out[f"{stem}.weight"] = Codes(name, (rows, cols))
        out[f"{stem}.weight_scale"] = Scales(f"{stem}.weight_scale", want, factor, divide)
    return out


def notes(plan_: dict) -> list[str]:
    weights = [n for n, p in plan_.items() if isinstance(p, Codes)]
    if not weights:
        return []
    ex = ", ".join(weights[:2]) + (" ..." if len(weights) > 2 else "")
    return [
        f"NVFP4: {len(weights)} weight(s) ({ex}) are stored as 4-bit E2M1 codes, two per byte, with an FP8 scale per "
        f"{GROUP} codes and a tensor-wide factor; read as their codes under the model's own names and shapes and "
        "compared as weights, dequantised as their exporter does (w = E2M1[code] × scale, the scale with the factor "
        "applied in float32)."
    ]
