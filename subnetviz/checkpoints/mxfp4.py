"""MXFP4 weights (gpt-oss): 4-bit codes with one power-of-two scale per block of 32, read as the weights
they stand for.

gpt-oss releases (``quantization_config.quant_method: "mxfp4"``) store every expert projection as two
uint8 tensors beside each other: ``<proj>_blocks`` of shape (E, R, G, 16), two FP4 (E2M1) codes per byte
(low nibble first), and ``<proj>_scales`` of shape (E, R, G), one E8M0 exponent per block of 32 codes
(w = FP4(code) · 2^(scale − 127), the OCP Microscaling format). transformers dequantises them on load to
``<proj>`` of shape (E, G·32, R) in bfloat16 (the rows of the stored blocks become the last dim: gate_up
(E, H, 2I), down (E, I, H)), and that is what a finetune of gpt-oss saves. A
:class:`~subnetviz.checkpoints.sources.Checkpoint` of an MXFP4 release therefore lists ``<proj>`` with that
shape and dtype in place of the stored pair (:func:`plan`), and reading it dequantises it
(:func:`dequantize`): an MXFP4 base is compared with its bf16 finetunes tensor by tensor, by name, with
nothing cast. Every value FP4 · 2^(s − 127) is exact
in bfloat16 (two significant bits; bfloat16 has float32's exponent range), so the comparison is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from subnetviz.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from subnetviz.checkpoints.header import TensorMeta

# E2M1 code -> value (the sign is the code's top bit), as the OCP MX specification and transformers define it
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
BLOCK = 32  # codes per scale
_NAN_SCALE = 255  # E8M0 0xFF is NaN
# byte -> its two values (low nibble first), float32
_PAIRS = np.array([[FP4_VALUES[b & 0x0F], FP4_VALUES[b >> 4]] for b in range(256)], np.float32)
# scale byte -> 2^(s - 127) in float32, exact for every s < 255 (2^-127 is a float32 subnormal)
_POW2 = np.array([np.ldexp(1.0, s - 127) if s < _NAN_SCALE else np.nan for s in range(256)], np.float32)
E8M0_VALUES = _POW2  # (also MXFP8's group scales: analysis.quant.scale_values)
# (scale byte, code) -> bfloat16 bits of FP4(code) · 2^(s − 127): the top half of the exact float32's bits
with np.errstate(over="ignore"):  # 6 · 2^127 is inf in float32, as in bfloat16 (transformers gives inf too)
    _BF16 = ((_POW2[:, None] * np.array(FP4_VALUES, np.float32)).view(np.uint32) >> 16).astype(np.uint16).view(np.int16)
STORED = "mxfp4"  # TensorMeta.stored of a dequantised tensor


@dataclass(frozen=True)
class Packed:
    """One MXFP4 tensor: its stored pair and the shape it has once dequantised."""

    blocks: str
    scales: str
    shape: tuple[int, ...]


def is_mxfp4(config: dict) -> bool:
    qc = config.get("quantization_config")
    return isinstance(qc, dict) and str(qc.get("quant_method", "")).lower() == "mxfp4"


def plan(metas: dict[str, TensorMeta], config: dict) -> dict[str, Packed]:
    """Logical name -> :class:`Packed` for every ``<name>_blocks`` / ``<name>_scales`` pair of an MXFP4
    checkpoint (empty for any other); each pair's dtypes and shapes are checked here, from the headers:
    a pair that does not fit is a one-line :class:`CheckpointError` naming it."""
    if not is_mxfp4(config):
        return {}
    import torch

    out: dict[str, Packed] = {}
    for name, m in metas.items():
        if name.endswith("_scales") and f"{name[: -len('_scales')]}_blocks" not in metas and m.dtype == torch.uint8:
            raise CheckpointError(f"MXFP4 scales {name!r} have no '{name[: -len('_scales')]}_blocks' beside them.")
        if not name.endswith("_blocks"):
            continue
        stem = name[: -len("_blocks")]
        scales = f"{stem}_scales"
        if scales not in metas:
            raise CheckpointError(f"MXFP4 blocks {name!r} have no {scales!r} beside them; cannot dequantise them.")
        s = metas[scales]
        if m.dtype != torch.uint8 or s.dtype != torch.uint8:
            raise CheckpointError(
                f"MXFP4 pair {name!r} / {scales!r} is stored as {str(m.dtype)[6:]} / {str(s.dtype)[6:]}; "
                "expected uint8 (two FP4 codes per byte, one E8M0 exponent per block)."
            )
        if len(m.shape) != 4 or m.shape[3] != BLOCK // 2 or tuple(s.shape) != tuple(m.shape[:3]):
            raise CheckpointError(
                f"MXFP4 pair {name!r} {tuple(m.shape)} / {scales!r} {tuple(s.shape)}: expected blocks "
                f"(experts, rows, groups, {BLOCK // 2}) and scales (experts, rows, groups), as gpt-oss stores "
                "its experts."
            )
        if stem in metas:
            raise CheckpointError(f"{stem!r} is stored both as a tensor and as MXFP4 blocks {name!r}.")
        e, r, g, _ = m.shape
        out[stem] = Packed(name, scales, (e, g * BLOCK, r))
    return out


def metas_with(metas: dict[str, TensorMeta], packed: dict[str, Packed]) -> dict[str, TensorMeta]:
    """``metas`` with each planned pair replaced by its dequantised tensor (bfloat16, the logical shape, in
    the blocks' place in the order)."""
    if not packed:
        return metas
    import torch

    by_blocks = {p.blocks: (stem, p) for stem, p in packed.items()}
    drop = {p.scales for p in packed.values()}
    out: dict[str, TensorMeta] = {}
    for name, m in metas.items():
        if name in by_blocks:
            stem, p = by_blocks[name]
            out[stem] = replace(m, name=stem, dtype=torch.bfloat16, shape=p.shape, stored=STORED)
        elif name not in drop:
            out[name] = m
    return out


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, *, name: str = "tensor") -> torch.Tensor:
    """(E, R, G, 16) codes and (E, R, G) exponents -> (E, G·32, R) bfloat16, as transformers'
    ``convert_moe_packed_tensors`` gives it: by the compiled loop of :mod:`subnetviz.analysis._mxfp4_numba`
    (bf16 bits from a (scale, code) table), else by NumPy one expert at a time (float32 temporaries of one
    expert). A scale of 255 (NaN in E8M0) is refused, naming where it is, before the result is allocated."""
    import torch

    from subnetviz.analysis import bits_jit
    from subnetviz.config import require_memory

    e, r, g, b = blocks.shape
    kernel = bits_jit.compiled("_mxfp4_numba")
    # the result, and (without the compiled loop) one expert's float32 values and their transpose
    require_memory(
        f"MXFP4 tensor {name} (dequantised to bfloat16)", e * r * g * b * 4 + (0 if kernel else r * g * b * 16)
    )
    codes = blocks.cpu().numpy()
    exps = scales.cpu().numpy()
    nan = exps == _NAN_SCALE
    if nan.any():
        at = tuple(int(v) for v in np.argwhere(nan)[0])
        raise CheckpointError(
            f"MXFP4 tensor {name}: scale byte 255 (NaN in E8M0) at expert {at[0]}, row {at[1]}, block {at[2]}."
        )
    if kernel is not None:
        # torch's allocation, not NumPy's: NumPy advises transparent huge pages for large arrays, and their
        # first touch then waits on the kernel's compaction (measured 0.2-0.7 s for 67 MB on a busy machine)
        bits = torch.empty((e, g * b * 2, r), dtype=torch.int16)
        kernel.dequantize(codes, exps, _BF16, bits.numpy())
        return bits.view(torch.bfloat16)
    out = torch.empty((e, g * b * 2, r), dtype=torch.bfloat16)
    for i in range(e):  # NumPy: one expert at a time
        vals = _PAIRS[codes[i]].reshape(r, g, b * 2)  # (R, G, 32)
        with np.errstate(over="ignore"):
            vals *= _POW2[exps[i]][:, :, None]  # a power of two: exact (or inf, as transformers gives it)
        out[i] = torch.from_numpy(vals.reshape(r, g * b * 2)).T  # exact in bfloat16
    return out
