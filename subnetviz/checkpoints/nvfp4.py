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

transformers' FineGrainedFP8 stores the experts of a DeepSeek-V4-style model (``quant_method: "fp8"`` with
``expert_dtype: "fp4"``, in ``quantization_config`` or, V4, at the config's top level) in E2M1 too: an int8 weight
(out, in / 2), the first code of a byte in its low nibble (``Fp8Dequantize._unpack_fp4``), and one scale per 32
codes of a row, (out, ⌈in / 32⌉), E8M0 (``scale_fmt: "ue8m0"``) or float32, under ``weight_scale_inv`` or the
names its loader renames to it (:func:`fp8_scale_names`). Such a weight is listed as its codes in the weight's shape
(stored :data:`FP4_EXPERTS`), its scales as stored; w = E2M1[code] × scale, as ``Fp8Dequantize`` computes it in
float32.
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
FP4_EXPERTS = "FP4 (E2M1)"  # TensorMeta.stored of FineGrainedFP8's FP4 expert codes
FP4_GROUP = 32  # codes per scale of FineGrainedFP8's FP4 experts (transformers' sf_gran_k)


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
        what = f"{self.stored} codes of {name} (unpacked)"
        return nibbles(get(self.source), *self.shape, high_first=False, what=what)


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
    checkpoint (empty for any other); shapes checked from the headers. A weight that is NVFP4 (:func:`_is_nvfp4`)
    but whose bytes, FP8 scales or tensor-wide factor are missing or do not fit is a one-line
    :class:`CheckpointError` naming the tensor (left as stored, it was listed under another name than the other
    side's weight, "in only one of the pair", and dropped from the comparison)."""
    import torch

    qc = config.get("quantization_config") or config.get("compression_config")
    method = str(qc.get("quant_method", "")).lower() if isinstance(qc, dict) else ""
    if method == "fp8":
        return _fp4_experts(metas, config)
    if method not in ("compressed-tensors", "modelopt"):
        return {}
    out: dict[str, Codes | Scales] = {}
    for name, m in metas.items():
        stem, _, last = name.rpartition(".")
        if last != ("weight_packed" if method == "compressed-tensors" else "weight"):
            continue
        if m.dtype != torch.uint8 or len(m.shape) != 2:
            continue  # (another format: left as it is stored)
        factor = f"{stem}.weight_global_scale" if method == "compressed-tensors" else f"{stem}.weight_scale_2"
        if not _is_nvfp4(metas, stem, factor, qc, method):
            continue  # (another format: compressed-tensors' MXFP4 bytes, ModelOpt's INT4; left as stored)
        rows, cols = m.shape[0], m.shape[1] * 2
        if not rows or not cols:
            continue  # (an empty weight: nothing to unpack; read as stored)
        want = _check(name, m, metas, f"{stem}.weight_scale", factor)
        if method == "compressed-tensors" and f"{stem}.weight" in metas:
            raise CheckpointError(f"{stem!r} stores both 'weight' and 'weight_packed'.")
        out[f"{stem}.weight"] = Codes(name, (rows, cols))
        out[f"{stem}.weight_scale"] = Scales(f"{stem}.weight_scale", want, factor, method == "compressed-tensors")
    return out


def _is_nvfp4(metas: dict[str, TensorMeta], stem: str, factor: str, qc: dict, method: str) -> bool:
    """Whether the uint8 bytes of ``stem`` are NVFP4 codes. compressed-tensors: a tensor-wide factor
    (``weight_global_scale``, which no other format it packs in bytes has) or FP8 scales beside them (its MXFP4's are
    E8M0 bytes), or a config whose only 4-bit float format is ``nvfp4-pack-quantized``. ModelOpt: its
    ``quant_algo`` for the layer (the config's, or under ``MIXED_PRECISION`` the layer's in ``quantized_layers``)
    names NVFP4, or FP8 scales and a ``weight_scale_2`` beside them (W4A8_AWQ's INT4 bytes have float16 scales)."""
    import torch

    scale = metas.get(f"{stem}.weight_scale")
    fp8_scale = scale is not None and scale.dtype == torch.float8_e4m3fn
    if method == "compressed-tensors":
        groups = qc.get("config_groups")
        formats = {qc.get("format")} | {
            g.get("format") for g in (groups.values() if isinstance(groups, dict) else ()) if isinstance(g, dict)
        }
        declared = "nvfp4-pack-quantized" in formats and "mxfp4-pack-quantized" not in formats
        return factor in metas or fp8_scale or declared
    algo = qc.get("quant_algo")
    layers = qc.get("quantized_layers")
    if isinstance(layers, dict) and isinstance(layers.get(stem), dict):
        algo = layers[stem].get("quant_algo")
    return "NVFP4" in str(algo or "").upper() or (fp8_scale and factor in metas)


def _check(name: str, m: TensorMeta, metas: dict[str, TensorMeta], scale_name: str, factor: str) -> tuple[int, int]:
    """The shape (rows, codes / 16) of the FP8 scales of NVFP4 bytes ``name`` (``m``), their scales and tensor-wide
    factor checked from the headers: each present, of its dtype and shape; else one line naming what is wrong."""
    import torch

    shape, rows, cols = tuple(m.shape), m.shape[0], m.shape[1] * 2
    scale, f = metas.get(scale_name), metas.get(factor)
    if cols % GROUP:  # (the bytes hold no whole number of blocks: they, not their scales, are short)
        fits = ""
        if scale is not None and len(scale.shape) == 2:
            fits = f"; its weight_scale {tuple(scale.shape)} is for {scale.shape[1] * GROUP} codes a row"
        raise CheckpointError(
            f"{name} {shape}: {m.shape[1]} bytes a row hold {cols} codes, not a whole number of blocks of {GROUP} "
            f"(NVFP4 has one FP8 scale per {GROUP} codes of a row){fits}."
        )
    want = (rows, cols // GROUP)
    said = f"the NVFP4 weight {name} {shape}"
    if scale is None or scale.dtype != torch.float8_e4m3fn:
        found = "missing" if scale is None else f"{str(scale.dtype)[6:]} {tuple(scale.shape)}"
        raise CheckpointError(
            f"{scale_name}: {found}; expected {want} FP8 (float8_e4m3fn) scales, one per {GROUP} codes of a row, "
            f"for {said}."
        )
    if f is None or not f.dtype.is_floating_point or f.numel != 1:
        found = "missing" if f is None else f"{str(f.dtype)[6:]} {tuple(f.shape)}"
        raise CheckpointError(f"{factor}: {found}; expected one float value, the tensor-wide scale of {said}.")
    if tuple(scale.shape) != want:
        raise CheckpointError(
            f"{name} {shape}: expected its FP8 weight_scale to be {want} (one per {GROUP} codes of a row) "
            f"and {factor} one value; found {tuple(scale.shape)} and {tuple(f.shape)}."
        )
    return want


def fp8_scale_names(name: str, config: dict) -> tuple[str, ...]:
    """The names under which a FineGrainedFP8 checkpoint (``quant_method: "fp8"``) may store the scales of weight
    ``name``, in the order looked for: ``<name>_scale_inv`` (``_scale``), and beside a ``<stem>.weight`` the two
    that transformers' loader renames to ``weight_scale_inv``: ``<stem>.qscale_weight`` (Mistral Large) and
    ``<stem>.scale`` (DeepSeek-V4-Flash), not in an Inkling2 model, whose ``.scale`` tensors are norms
    (``FineGrainedFP8HfQuantizer.update_weight_conversions``)."""
    out = (f"{name}_scale_inv", f"{name}_scale")
    qc = config.get("quantization_config")
    stem, _, last = name.rpartition(".")
    if last != "weight" or not isinstance(qc, dict) or str(qc.get("quant_method", "")).lower() != "fp8":
        return out
    out += (f"{stem}.qscale_weight",)
    return out if str(config.get("model_type", "")).startswith("inkling2") else (*out, f"{stem}.scale")


def fp4_experts_declared(config: dict) -> bool:
    """Whether a FineGrainedFP8 config says its experts are FP4 (``expert_dtype: "fp4"`` in its
    ``quantization_config``, or at the top level, where DeepSeek-V4's config has it)."""
    qc = config.get("quantization_config")
    dtype = qc.get("expert_dtype") if isinstance(qc, dict) else None
    return str(dtype if dtype is not None else config.get("expert_dtype", "")).lower() == "fp4"


def _fp4_experts(metas: dict[str, TensorMeta], config: dict) -> dict[str, Codes]:
    """Logical name -> :class:`Codes` for every FP4 weight of a FineGrainedFP8 checkpoint whose experts are FP4:
    an int8 ``weight`` (out, in / 2) with a scale beside it (:func:`fp8_scale_names`) of (out, ⌈in / 32⌉), float or
    E8M0. Another shape is one line naming the weight; an int8 weight without a scale is left as stored (the
    analysis refuses it by name)."""
    import torch

    if not fp4_experts_declared(config):
        return {}
    out: dict[str, Codes] = {}
    for name, m in metas.items():
        if not name.endswith(".weight") or m.dtype != torch.int8 or len(m.shape) != 2 or not all(m.shape):
            continue
        scale = next((s for s in fp8_scale_names(name, config) if s in metas), None)
        if scale is None:
            continue
        rows, cols = m.shape[0], m.shape[1] * 2
        want = (rows, -(-cols // FP4_GROUP))
        s = metas[scale]
        if tuple(s.shape) != want or not (s.dtype.is_floating_point or s.dtype == torch.uint8):
            raise CheckpointError(
                f"{name} {tuple(m.shape)}: FP4 (E2M1) codes two a byte (expert_dtype 'fp4') need their scale "
                f"{scale!r} to be {want}, one per {FP4_GROUP} codes of a row, float or E8M0; found "
                f"{tuple(s.shape)} {str(s.dtype).replace('torch.', '')}."
            )
        out[name] = Codes(name, (rows, cols), stored=FP4_EXPERTS)
    return out


def _examples(names: list[str]) -> str:
    return ", ".join(names[:2]) + (" ..." if len(names) > 2 else "")


def notes(plan_: dict) -> list[str]:
    weights = [n for n, p in plan_.items() if isinstance(p, Codes) and p.stored != FP4_EXPERTS]
    fp4 = [n for n, p in plan_.items() if isinstance(p, Codes) and p.stored == FP4_EXPERTS]
    out = []
    if weights:
        out.append(
            f"NVFP4: {len(weights)} weight(s) ({_examples(weights)}) are stored as 4-bit E2M1 codes, two per byte, "
            f"with an FP8 scale per {GROUP} codes and a tensor-wide factor; read as their codes under the model's own "
            "names and shapes and compared as weights, dequantised as their exporter does (w = E2M1[code] × scale, "
            "the scale with the factor applied in float32)."
        )
    if fp4:
        out.append(
            f"FP4 experts: {len(fp4)} weight(s) ({_examples(fp4)}) are stored as 4-bit E2M1 codes, two per byte "
            f"(expert_dtype 'fp4'), with a scale per {FP4_GROUP} codes of a row; read as their codes in the weight's "
            "shape and compared as weights, dequantised as transformers does (w = E2M1[code] × scale, float32)."
        )
    return out
