"""Tensors that are not plain float weights: buffers, FP8 codes + scales, integer-quantized codes.

This module owns how the per-tensor pass (:func:`~subnetviz.analysis.updates.analyze_updates`)
compares every stored form that :func:`~subnetviz.analysis.sparsity.compare_pair`'s float path
does not take:

- **buffers** (int/bool tensors such as ``position_ids``, ``attention.bias``; float buffers named
  like ``rotary_emb.inv_freq``): compared bitwise (:func:`compare_buffer`), reported in their own
  group, never counted as parameters.
- **FP8 weights** (``float8_e4m3fn`` / ``float8_e5m2``) with ``weight_scale_inv`` block scales
  (``⌈m/bs⌉ × ⌈n/bs⌉``, DeepSeek-V3 style), a per-tensor / per-channel ``weight_scale``, or MXFP8's
  uint8 E8M0 exponents per group of 32 along a row (1 × 32 blocks, scale 2^(s − 127):
  :func:`scale_values`); transformers 5's FP8 experts, whose block scales are stored packed for every expert, with
  each expert's rows of them (:func:`~subnetviz.checkpoints.experts_layout.read_packed_scales`); fbgemm's FP8
  Llama 4 experts, packed (E, ·, N) with a scale per expert and output feature (``check_scale``'s ``expert``):
  the comparison dequantises both sides (w = code × scale[i // bs, j // bs], in float32) and runs the
  float pass on it, in row bands of whole scale blocks (packed experts: rows of their (E·H, N) view,
  :func:`compare_stack`), so memory stays a few bands, not two float32 copies of the tensor
  (:func:`compare_quantized`): ``changed``, the mask, the tolerance sweep
  and the row/column counts are those of the weights the model computes with (a changed block scale
  changes its block's nonzero weights, codes equal or not), so every number of a page agrees with the
  mask; ``changed_codes`` counts the stored codes that differ and the ULP histogram their code steps. Under
  ``quant_method: "fp8"`` the scales may also be ``<stem>.qscale_weight`` or ``<stem>.scale``, the names
  transformers' loader renames to ``weight_scale_inv`` (:func:`~subnetviz.checkpoints.nvfp4.fp8_scale_names`).
  A scale that holds NaN / Inf (or an E8M0 byte 255), or is stored as integers, is refused, naming its checkpoint
  (:func:`scale_values`; an FP8 weight's integer scale from the header, :func:`tensor_forms`); static activation scales (``activation_scale``, ``*_activation_scale``) are scales.
- **int8 codes with a float scale**: bitsandbytes (``weight`` int8 + ``SCB``, w = code × SCB[i] / 127; codes in
  another layout than rows, ``weight_format`` ≠ 0, refused as bitsandbytes refuses them)
  and compressed-tensors' integer weights (``weight`` int8, or 2/4/8-bit codes packed into int32
  ``weight_packed`` words, which the checkpoint lists unpacked as int8 ``weight``:
  :mod:`~subnetviz.checkpoints.ct_packed`) with a ``weight_scale`` per tensor, per row or per group of
  columns and, asymmetric, ``weight_zero_point`` laid out as the scales: w = (code − zero) × scale[i, j // g]; in
  act order (``weight_g_idx``: llm-compressor's GPTQ with ``actorder: "group"``, :class:`ActOrder`) column j's group
  is g_idx[j], w = (code − zero[i, g_idx[j]]) × scale[i, g_idx[j]], and two sides grouped differently are compared
  as weights. A float scale that fits no such layout is refused, naming it and its shape.
  Codes compared exactly, then the effective weights (float32, exact: compressed-tensors' own dequantisation
  is them rounded to the scale's dtype).
- **bitsandbytes 4-bit codes** (NF4 / FP4), which the checkpoint lists in the weight's shape with their block
  scales as float32 (:mod:`~subnetviz.checkpoints.bnb4`): the int8 form with a ``table`` (w = TYPE[code] ×
  absmax[i, j // blocksize], as bitsandbytes dequantises them).
- **AWQ's 4-bit codes** (AutoAWQ's GEMM layout), listed as the model's (out, in) weight with ``qzeros`` and
  ``scales`` transposed beside it (:mod:`~subnetviz.checkpoints.awq`): the int8 form with zero points.
- **NVFP4 codes** (compressed-tensors' and ModelOpt's), listed in the weight's shape with their FP8 block scales as
  float32, the tensor-wide factor applied (:mod:`~subnetviz.checkpoints.nvfp4`): the int8 form with the E2M1 table.
  So are FineGrainedFP8's FP4 experts (``expert_dtype: "fp4"``: int8 bytes, a float or E8M0 scale per 32 codes of
  a row, listed as codes by the same module); an integer weight of a quantized checkpoint that no form reads (FP4
  experts packed for every expert, int8 without ``expert_dtype: "fp4"``) is refused by name, never a buffer.
- **other integer codes** (GPTQ ``qweight``, AWQ's GEMV layout, bnb 4-bit bytes it cannot lay out,
  compressed-tensors' MXFP4 bytes and its 3/5/6/7-bit words, NVIDIA ModelOpt's INT4 ``weight`` bytes; ModelOpt's FP8
  is the FP8 form above): compared exactly as codes (:func:`compare_codes`), counted with the weights; no effective
  comparison (a notice says so). GPTQ's 2/4/8-bit words in its own layout are unpacked into their codes and compared
  code by code (:func:`compare_unpacked`); the others stay stored words or bytes, and ``stored_as`` and the notice say
  what one entry holds (:func:`_packed_said`: "int32 word of 8 4-bit codes"). Their scales, zero points (GPTQ's and
  AWQ's packed ``qzeros`` too), global scales and ``weight_shape`` are listed with the scales.
- **sparsity compression** (compressed-tensors' ``sparsity_config.format`` other than ``"dense"``: nonzero values and
  a bitmask per weight) is refused by name (:func:`_check_dense`).
- **MXFP4** (gpt-oss experts): the checkpoint reader already lists them dequantised, exactly, as the
  bfloat16 tensors transformers loads (:mod:`subnetviz.checkpoints.mxfp4`); compared as floats.

The comparisons of stored codes (buffers, codes, the FP8 block-scale pass, row-band dequantisation)
live in :mod:`subnetviz.analysis.quant_codes`; this module decides forms and dispatches.

A float side against a quantized one counts the changed entries that are only the float side rounded to the other's
codes, requantised with each library's own arithmetic (:func:`_rounding_only`, :attr:`TensorForm.requant`).

A float pair stored in two dtypes is compared at the finetune's, the base cast to it; a base value past that dtype's
range is refused naming the base and carrying the finetune (:func:`_cast_base`: the app leaves that finetune out
and compares the others).

Which form a tensor has is decided from the headers and ``quantization_config``
(:func:`tensor_forms`); an unknown quantization method or a scale that does not fit its weight's
blocks is a one-line :class:`~subnetviz.errors.CheckpointError`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction

import numpy as np
import torch

from subnetviz.analysis.bits import ulp_bins
from subnetviz.analysis.quant_codes import (
    FP8,
    _code_counts,
    compare_blocks,
    compare_buffer,
    compare_codes,
    dequantize,
    merge_bands,
)
from subnetviz.analysis.quant_codes import (
    check_finite_stored as check_finite_stored,  # re-exported for analyze_updates
)
from subnetviz.analysis.sparsity import PairStats, SparsityOptions, cast_overflow, compare_pair
from subnetviz.checkpoints.nvfp4 import FP4_EXPERTS, FP4_GROUP, fp4_experts_declared, fp8_scale_names
from subnetviz.errors import CastRangeError, CheckpointError

DEFAULT_BLOCK = 128
# quantization_config.quant_method values this module knows (effective comparison or codes).
KNOWN_METHODS = ("fp8", "fbgemm_fp8", "compressed-tensors", "modelopt", "bitsandbytes", "gptq", "awq", "mxfp4")
_CODE_ONLY = {"gptq": "GPTQ", "awq": "AWQ"}
# How each quant_method's exporter rounds a float weight to FP8 codes (TensorForm.requant; others: "float32")
_FP8_REQUANT = {"compressed-tensors": "native", "modelopt": "modelopt"}
# Float tensors that are buffers by name (HF registers them with persistent=False today, older
# saves kept them): rotary inverse frequencies (also transformers 5's original_inv_freq and per-attention-type
# sliding_attention_inv_freq), GPT-2's masked_bias constants; Gemma-4's per-layer output scale (a persistent
# buffer: saved, never trained).
_BUFFER_NAMES = re.compile(r"([._]inv_freq$|\.masked_bias$|\.position_ids$|\.token_type_ids$|\.layer_scalar$)")
# Causal masks (1, 1, n_ctx, n_ctx): GPT-2's `h.N.attn.bias`, saved as float32 by the original release and the
# finetunes made from it (its attention's weights are `c_attn`, `c_proj`; 12.6 M never-trained entries in GPT-2),
# GPT-NeoX / Pythia's `attention.bias` (bool, or cast to bf16 by a conversion script), GPT-Neo's, CodeGen's
# `causal_mask`.
_CAUSAL_MASK = re.compile(r"(^|\.)((attn|attention)\.bias|causal_mask)$")


def _is_causal_mask(name: str, shape) -> bool:
    return len(shape) == 4 and shape[0] == shape[1] == 1 and shape[2] == shape[3] and bool(_CAUSAL_MASK.search(name))


_SCALE_SUFFIXES = ("weight_scale_inv", "weight_scale", "input_scale", "SCB", "scales", "weight_zero_point")
# static activation scales saved beside a quantized weight (FineGrainedFP8's activation_scale, its FP8 experts'
# gate_up_proj_activation_scale / down_proj_activation_scale; Mistral's qscale_act): names ending so
_ACTIVATION_SCALES = ("activation_scale", "qscale_act")
_QUANT_AUX = ("weight_format", "absmax", "quant_map", "nested_absmax", "nested_quant_map")
# compressed-tensors' companions of a quantized weight (metadata and scales, never parameters)
_CT_AUX = ("weight_global_scale", "input_global_scale", "weight_shape", "weight_g_idx", "output_scale", "k_scale")
_CT_AUX += ("v_scale", "weight_packed_zero_point", "weight_scale_2", "pre_quant_scale")  # (and NVIDIA ModelOpt's)
# Entries per dequantised band on the CPU (1 MB of float32 per side: cache-sized; against 4 MB bands, bench_forms
# measured the int4 forms ~25 % faster and ~60 MB lighter), and on a GPU (16 MB: fewer kernel launches)
_BAND_ELEMENTS = 1 << 18
_GPU_BAND_ELEMENTS = 1 << 22


@dataclass(frozen=True, eq=False)
class ActOrder:
    """compressed-tensors' act-order groups of one weight: ``weight_g_idx``, the group of each column, which
    llm-compressor's GPTQ with ``actorder: "group"`` saves beside ``weight_packed`` / ``weight_scale``. Its
    dequantisation (compressed-tensors ≤ 0.12, ``_process_quantization``: the columns sorted by group, each group
    dequantised with its scale, then put back) is w[i, j] = (code[i, j] − zero[i, g[j]]) × scale[i, g[j]].
    :func:`tensor_forms` names it from the headers; :func:`checkpoint_forms` reads and checks ``groups``. Two are
    equal where their groups are (``key``, a digest of them)."""

    name: str
    groups: torch.Tensor | None = field(default=None, repr=False)  # int64 (cols,); None until read
    key: str = ""

    def __eq__(self, other) -> bool:
        return isinstance(other, ActOrder) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


@dataclass(frozen=True)
class TensorForm:
    """How one stored tensor is compared.

    ``kind``: ``float`` (compare_pair), ``buffer``, ``fp8`` (codes + ``scale`` companion),
    ``int8`` (codes + ``scale``: bnb's SCB, or compressed-tensors' weight_scale), ``codes`` (integer
    codes, no effective comparison),
    ``scale`` (a weight's scale: compared as floats, reported with the buffers, outside the sparsity).
    ``scale``: the companion scale tensor's name; ``label``: what the table's ``stored_as`` says.
    """

    kind: str
    scale: str | None = None
    label: str = "float"
    divisor: float = 1.0  # int8: w = code × scale / divisor (bitsandbytes' SCB: 127)
    zero: str | None = None  # int8: the zero points' tensor (asymmetric compressed-tensors), w = (code − zero) × scale
    group: int = 0  # int8: columns per scale along a row (compressed-tensors' group strategy); 0: per row or one
    codes: tuple[int, int] = (-127, 127)  # int8: the codes' range (compressed-tensors' int4: −8..7)
    # fp8 / int8: how the quantiser rounded a float weight to these codes (_rounding_only follows it): "float32",
    # round(w / (scale / divisor)) in float32; "native", in the float weight's own dtype (compressed-tensors: w / scale,
    # then + zero point, each rounded to it); "bnb", round(w × fl(127 / SCB)) in float32 (bitsandbytes'
    # int8_vectorwise_quant); "awq", round((w + zero × scale) / scale) in the float weight's dtype, the scale as
    # stored (float16) in the division (AutoAWQ's WQLinear_GEMM.from_linear); "modelopt", w / scale in torch's result
    # dtype of the two as stored (a 0-dim scale does not widen: a bf16 weight over ModelOpt's 0-dim float32 per-tensor
    # scale is bf16, one with dimensions float32), computed in float32 and rounded once to it, as torch's CPU kernels
    # compute ModelOpt's `(weight / weights_scaling_factor).to(torch.float8_e4m3fn)`
    requant: str = "float32"
    table: str | None = None  # int8: codes index a data type's values (bitsandbytes' nf4 / fp4: bnb4.TABLES)
    # fp8: rows per scale where not the config's block (an FP8 expert's up projection whose packed scale blocks
    # straddle gate and up: checkpoints.experts_layout.expert_scale_views); 0: the config's
    rows: int = 0
    # int8: compressed-tensors' act-order groups (weight_g_idx): w = (code − zero[i, g[j]]) × scale[i, g[j]]
    act_order: ActOrder | None = None
    # codes: bits per code where the stored words are unpacked into their codes and compared code by code (GPTQ's
    # qweight: unpack_words); 0: compared as stored
    unpack: int = 0
    # codes: what one stored entry holds where it is not one code ("int32 word of 8 4-bit codes": _packed_said; an
    # unpacked form, the word it unpacks, "int32 word"); the notes say it
    entry: str = ""

    @property
    def layout(self) -> tuple:
        """What must agree for two stored codes to be compared code by code (act order: the same groups)."""
        z = self.zero is not None
        return (self.kind, self.divisor, self.group, z, self.codes, self.table, self.rows, self.act_order)

    def block(self, config: dict) -> tuple[int, int]:
        """The scale block of this form in a checkpoint of ``config``: FP8's from the config (its rows per scale
        where the form has its own); a compressed-tensors group (1 × group); else (1, 1) (a scale per row, or
        one)."""
        if self.kind == "fp8":
            rows, cols = block_size(config)
            return (self.rows or rows), cols
        return (1, self.group) if self.group else (1, 1)


def quant_method(config: dict) -> str | None:
    """``quantization_config.quant_method`` (lower case), checked against :data:`KNOWN_METHODS`."""
    qc = config.get("quantization_config") or config.get("compression_config")
    if not isinstance(qc, dict):
        return None
    method = str(
        qc.get("quant_method") or ("bitsandbytes" if qc.get("load_in_8bit") or qc.get("load_in_4bit") else "")
    ).lower()
    if method and method not in KNOWN_METHODS:
        raise CheckpointError(
            f"config.json quantization_config.quant_method: unknown quantization method {method!r} "
            f"(expected one of {', '.join(KNOWN_METHODS)}); its tensors cannot be compared."
        )
    return method or None


def _check_dense(config: dict) -> None:
    """Refuse compressed-tensors' sparsity compression (``sparsity_config.format`` other than ``"dense"``:
    ``sparse-bitmask``, ``sparse-24-bitmask``, ...), which stores a weight as its nonzero values
    (``<name>.compressed``) with a packed bitmask and its shape beside them: read as stored, those values were
    compared index by index as a float weight (an index no longer the same matrix entry once the kept positions
    differ) and the bitmasks as buffers, its zeros never counted. (The weight pages only: a model is run by
    transformers, which decompresses it.)"""
    qc = config.get("quantization_config") or config.get("compression_config")
    sc = qc.get("sparsity_config") if isinstance(qc, dict) else None
    fmt = sc.get("format") if isinstance(sc, dict) else None  # (no sparsity: compressed-tensors writes {})
    if fmt is None or fmt == "dense":
        return
    said = repr(fmt[:60]) if isinstance(fmt, str) else str(fmt)[:60]
    raise CheckpointError(
        f"config.json quantization_config.sparsity_config.format is {said}: "
        "compressed-tensors' sparsity compression (weights stored as their nonzero values and a bitmask) is not "
        "read here, only dense weights; save the model decompressed (load it with transformers and "
        "compressed-tensors, then save_pretrained(..., save_compressed=False) under llm-compressor) and compare "
        "that copy."
    )


def block_size(config: dict) -> tuple[int, int]:
    """FP8 block size from ``quantization_config.weight_block_size`` or, in compressed-tensors' config, its
    weights' ``group_size`` (1 × g: MXFP8) or ``block_structure`` (default 128 × 128)."""
    qc = config.get("quantization_config") or {}
    bs = qc.get("weight_block_size") if isinstance(qc, dict) else None
    if bs is None and isinstance(qc, dict) and isinstance(qc.get("config_groups"), dict):
        bs = _group_block(qc["config_groups"])
    if bs is None:
        return DEFAULT_BLOCK, DEFAULT_BLOCK
    if not (isinstance(bs, list) and len(bs) == 2 and all(type(b) is int and b >= 1 for b in bs)):
        raise CheckpointError(
            f"config.json quantization_config.weight_block_size is {str(bs)[:60]}; expected two whole numbers "
            ">= 1 (rows and columns of a scale block, e.g. [128, 128])."
        )
    return bs[0], bs[1]


def _group_block(groups: dict) -> list | None:
    """The scale block of compressed-tensors' FP8 config groups: [1, group_size] for a group strategy,
    ``block_structure`` for a block one (a list [rows, columns], or the string "rows x columns", ``"128x128"``, that
    compressed-tensors still reads); None for per-tensor / per-channel scales (or no FP8 group). A malformed one is
    one line naming its key."""
    found = []
    for key, g in groups.items():
        w = g.get("weights") if isinstance(g, dict) else None
        if not isinstance(w, dict) or w.get("type") != "float" or w.get("num_bits") != 8:
            continue
        at = f"config.json quantization_config.config_groups.{str(key)[:60]}.weights"
        if w.get("strategy") in ("group", "tensor_group"):
            size = w.get("group_size")
            if not (type(size) is int and size >= 1):
                raise CheckpointError(
                    f"{at}.group_size is {str(size)[:60]}; expected a whole number >= 1 (columns per scale of a row)."
                )
            found.append([1, size])
        elif w.get("strategy") == "block" and w.get("block_structure") is not None:
            found.append(_block_structure(w["block_structure"], f"{at}.block_structure"))
    if len({str(b) for b in found}) > 1:
        raise CheckpointError(
            f"config.json quantization_config.config_groups give FP8 weights several block sizes ({found[:3]}); "
            "one per checkpoint is read."
        )
    return found[0] if found else None


def _block_structure(value, at: str) -> list[int]:
    """A compressed-tensors ``block_structure`` as [rows, columns], read as its ``QuantizationArgs`` reads it: a
    list of two whole numbers >= 1, or a string of them joined by "x" (``"128x128"``, kept "for backward
    compatibility"); else one line naming ``at``, its key."""
    bs = value
    if isinstance(bs, str):
        try:
            bs = [int(x) for x in bs.split("x")]
        except ValueError:
            bs = None
    if not (isinstance(bs, list) and len(bs) == 2 and all(type(b) is int and b >= 1 for b in bs)):
        shown = repr(value[:60]) if isinstance(value, str) else str(value)[:60]
        raise CheckpointError(
            f"{at} is {shown}; expected two whole numbers >= 1, the rows and columns of a scale block "
            '([128, 128], or "128x128").'
        )
    return bs


def checkpoint_forms(ck) -> dict[str, TensorForm]:
    """:func:`tensor_forms` of every tensor of checkpoint ``ck``; a malformed quantized checkpoint is one line
    naming it. FP8 experts whose block scales are stored packed (transformers 5's FP8 save) are first read with
    each expert's own scales (:func:`~subnetviz.checkpoints.experts_layout.read_packed_scales`, as aligning does)."""
    from subnetviz.checkpoints.experts_layout import read_packed_scales

    read_packed_scales(ck)
    try:
        forms = tensor_forms({n: ck.meta(n) for n in ck.names}, ck.config, getattr(ck, "scale_rows", None))
        for name, form in forms.items():
            if form.act_order is not None:
                forms[name] = _read_act_order(ck, name, form)
        return forms
    except CheckpointError as exc:
        raise CheckpointError(f"{ck.spec}: {exc}") from None


def _read_act_order(ck, name: str, form: TensorForm) -> TensorForm:
    """``form`` of checkpoint ``ck``'s weight ``name`` with its act-order groups (``weight_g_idx``) read and checked:
    integers, one per column, each a group of its scales (0 … groups − 1), every group holding a column (as
    compressed-tensors numbers the groups by the values present); all −1 (compressed-tensors' placeholder before
    GPTQ sets it) or each column in its own run's group (j // group): column order, the form as it is."""
    g_name = form.act_order.name
    g = ck.get(g_name, "cpu")
    cols = ck.meta(name).shape[1]
    groups = cols // form.group
    said = f"{g_name} ({str(g.dtype)[6:]} {tuple(g.shape)}, the act-order groups of {name!r})"
    if g.dtype.is_floating_point or g.dtype.is_complex or g.dtype == torch.bool:
        raise CheckpointError(f"{said} is not integers; expected each column's group.")
    if tuple(g.shape) != (cols,):
        raise CheckpointError(f"{said}: expected shape ({cols},), a group for each of its {cols} columns.")
    g = g.to(torch.int64)
    if bool((g == -1).all()):
        return replace(form, act_order=None)
    bad = (g < 0) | (g >= groups)
    if bool(bad.any()):
        j = int(bad.nonzero()[0])
        raise CheckpointError(
            f"{said} holds {int(g[j])} at column {j}; expected a group 0 … {groups - 1} (its weight_scale has "
            f"{groups} per row) in every column, or -1 in every column (unset)."
        )
    empty = torch.bincount(g, minlength=groups) == 0
    if bool(empty.any()):
        raise CheckpointError(
            f"{said}: group {int(empty.nonzero()[0])} of its {groups} holds no column; compressed-tensors numbers "
            "act-order groups by the values present, so the stored scales would not be read as laid out."
        )
    if torch.equal(g, torch.arange(cols) // form.group):
        return replace(form, act_order=None)
    key = hashlib.blake2b(g.numpy().tobytes(), digest_size=16).hexdigest()
    return replace(form, act_order=ActOrder(g_name, g, key))


def act_groups(form: TensorForm) -> torch.Tensor | None:
    """A form's act-order groups (each column's, int64), read by :func:`checkpoint_forms`; None in column order."""
    if form.act_order is None:
        return None
    if form.act_order.groups is None:
        raise ValueError(f"{form.act_order.name}: act-order groups not read (checkpoint_forms reads them)")
    return form.act_order.groups


def tensor_forms(metas: dict, config: dict, scale_rows: Mapping[str, int] | None = None) -> dict[str, TensorForm]:
    """Name -> :class:`TensorForm` for every tensor of one checkpoint (``metas``: name -> TensorMeta;
    ``scale_rows``: scale name -> rows per scale where not the config's block, the checkpoint's
    ``scale_rows``)."""
    method = quant_method(config)
    _check_dense(config)
    forms: dict[str, TensorForm] = {}
    for name, m in metas.items():
        stem, _, last = name.rpartition(".")
        if m.dtype in FP8 and not (method and last in _SCALE_SUFFIXES):  # (NVFP4 stores its scales in FP8)
            scale = next((s for s in fp8_scale_names(name, config) if s in metas), None)
            if scale is None:
                raise CheckpointError(_no_scale(name, m, metas, config))
            sd = metas[scale].dtype
            if not (sd.is_floating_point or sd == torch.uint8):
                raise CheckpointError(
                    f"scale {scale!r} {tuple(metas[scale].shape)} of {name!r} is {str(sd)[6:]}; expected float "
                    "scales (or uint8 E8M0 exponents); cannot dequantise it."
                )
            form = TensorForm(
                "fp8",
                scale,
                f"{str(m.dtype).replace('torch.', '')} codes",
                rows=(scale_rows or {}).get(scale, 0),
                requant=_FP8_REQUANT.get(method, "float32"),  # (_rounding_only)
            )
            check_scale(name, m.shape, scale, metas[scale].shape, form.block(config))
            forms[name] = form
            forms[scale] = TensorForm("scale", None, "scale")
        # (codes a reader lists in the weight's shape: checkpoints.ct_packed, bnb4, awq, nvfp4)
        elif m.stored == "AWQ int4" and last == "weight":
            scale, zero = metas[f"{stem}.scales"], f"{stem}.qzeros"
            group = m.shape[1] // max(scale.shape[1], 1)
            forms[name] = TensorForm(
                "int8", f"{stem}.scales", "AWQ int4 codes", zero=zero, group=group, codes=(0, 15), requant="awq"
            )
            forms[zero] = forms[f"{stem}.scales"] = TensorForm("scale", None, "scale")
        elif m.stored == "AWQ int4 zero points":
            forms[name] = TensorForm("scale", None, "scale")
        elif m.stored == FP4_EXPERTS:  # (FineGrainedFP8's FP4 experts: checkpoints.nvfp4)
            scale = next((s for s in fp8_scale_names(name, config) if s in metas), None)
            if scale is None:
                raise CheckpointError(_unread_codes(name, m, metas, config, method or "fp8"))
            forms[name] = TensorForm(
                "int8", scale, f"{FP4_EXPERTS} codes", group=FP4_GROUP, codes=(0, 15), table="e2m1"
            )
            forms[scale] = TensorForm("scale", None, "scale")
        elif m.stored == "NVFP4" and f"{stem}.weight_scale" in metas:
            group = m.shape[1] // max(metas[f"{stem}.weight_scale"].shape[1], 1)
            forms[name] = TensorForm(
                "int8", f"{stem}.weight_scale", "NVFP4 codes", group=group, codes=(0, 15), table="e2m1"
            )
            forms[f"{stem}.weight_scale"] = TensorForm("scale", None, "scale")
        elif m.stored and m.stored.startswith("bitsandbytes ") and f"{name}.absmax" in metas:
            forms[name] = _bnb4_form(name, m, metas[f"{name}.absmax"])
            forms[f"{name}.absmax"] = TensorForm("scale", None, "scale")
        elif m.dtype == torch.int8 and f"{stem}.SCB" in metas and last == "weight":
            check_scale(name, m.shape, f"{stem}.SCB", metas[f"{stem}.SCB"].shape, (1, 1))
            forms[name] = TensorForm("int8", f"{stem}.SCB", "bnb int8 codes", 127.0, requant="bnb")
            forms[f"{stem}.SCB"] = TensorForm("scale", None, "scale")
        elif method == "compressed-tensors" and last in ("weight", "weight_packed") and not m.dtype.is_floating_point:
            forms[name] = _compressed_tensors_form(name, m, metas, config)
        elif method == "modelopt" and last == "weight" and not m.dtype.is_floating_point:
            # INT4 (and NVFP4 no reader laid out) as uint8 bytes of two codes; INT8 (SmoothQuant) one int8 code a byte
            forms[name] = (
                _words_form("ModelOpt", m, 4) if m.dtype == torch.uint8 else TensorForm("codes", None, "ModelOpt codes")
            )
        elif not m.dtype.is_floating_point and method in _CODE_ONLY and last == "qzeros":
            forms[name] = TensorForm("scale", None, "scale")  # (packed zero points: listed with the scales)
        elif not m.dtype.is_floating_point and method in _CODE_ONLY and last == "qweight":
            forms[name] = _code_only_form(method, m, config)
        elif m.dtype == torch.uint8 and method == "bitsandbytes" and last == "weight":
            forms[name] = _words_form("bnb 4-bit", m, 4)
        elif name not in forms:
            forms[name] = _other_form(name, m, metas, config, method)
    return forms


def _other_form(name: str, m, metas: dict, config: dict, method: str | None) -> TensorForm:
    """The form of a tensor that is no quantized weight's codes: a quantization companion (scales, zero points,
    static activation scales, metadata) of a quantized checkpoint, a buffer, or a float weight. An integer weight of
    a quantized checkpoint that no form reads is refused by name (:func:`_unread_codes`): codes, never a buffer."""
    last = name.rpartition(".")[2]
    if method and (last in _SCALE_SUFFIXES or ".quant_state." in name or last in _QUANT_AUX + _CT_AUX):
        return TensorForm("scale", None, "scale")
    if method and last.endswith(_ACTIVATION_SCALES):  # (static activation scales: calibration, no weight)
        return TensorForm("scale", None, "scale")
    if method and not m.dtype.is_floating_point and (last == "weight" or last.endswith("_proj")):
        raise CheckpointError(_unread_codes(name, m, metas, config, method))
    if not m.dtype.is_floating_point or _BUFFER_NAMES.search(name) or _is_causal_mask(name, m.shape):
        return TensorForm("buffer", None, "buffer")
    if m.stored:  # MXFP4 codes, read dequantised (checkpoints.mxfp4)
        return TensorForm("float", None, f"{m.stored} codes as {str(m.dtype)[6:]}")
    return TensorForm("float")


def _unread_codes(name: str, m, metas: dict, config: dict, method: str) -> str:
    """Why integer weight ``name`` of a quantized checkpoint is not compared: no known form takes it (an integer
    weight is codes, never a buffer)."""
    dtype, shape = str(m.dtype).replace("torch.", ""), tuple(m.shape)
    said = f"tensor {name!r} is stored as {dtype} {shape} in a quant_method {method!r} checkpoint"
    if method != "fp8":
        return f"{said}: integer codes of no form read here (no scale of a known layout beside it); cannot compare it."
    if not fp4_experts_declared(config):
        return (
            f"{said} whose quantization_config has no expert_dtype 'fp4': integer codes of no form read here "
            "(int8 weights are read as FP4 (E2M1) codes only where expert_dtype is 'fp4'); cannot compare it."
        )
    if len(shape) != 2:
        return (
            f"{said}: FP4 (E2M1) experts packed for every expert in one tensor are not read (each expert's own 2-D "
            "weight, with its scale per 32 codes of a row, is); cannot compare it."
        )
    looked = " or ".join(repr(s) for s in fp8_scale_names(name, config))
    return (
        f"{said} as FP4 (E2M1) codes (expert_dtype 'fp4') but has no scale beside it ({looked}); cannot dequantise it."
    )


def _no_scale(name: str, m, metas: dict, config: dict) -> str:
    """Why FP8 weight ``name`` cannot be dequantised: no scale beside it, or (transformers 5's FP8 experts) its
    scales packed for every expert in a tensor whose shape does not fit the experts' codes."""
    from subnetviz.checkpoints.experts_layout import packed_scale_of

    dtype = str(m.dtype).replace("torch.", "")
    packed = packed_scale_of(name, metas)
    if packed is not None:
        bm, bn = block_size(config)
        return (
            f"tensor {name!r} is stored as {dtype} with its block scales packed for every expert in {packed!r} "
            f"{tuple(metas[packed].shape)}, which does not fit the experts' codes ({tuple(m.shape)}) in {bm}×{bn} "
            "blocks (transformers 5's FP8 experts pack them (E, ⌈2I/bm⌉, ⌈H/bn⌉) for gate_up, (E, ⌈H/bm⌉, ⌈I/bn⌉) "
            "for down, every expert 0 … E−1 stored); cannot dequantise it."
        )
    looked = " or ".join(repr(s) for s in fp8_scale_names(name, config))
    return f"tensor {name!r} is stored as {dtype} but has no {looked} beside it; cannot dequantise it."


def _compressed_tensors_form(name: str, m, metas: dict, config: dict) -> TensorForm:
    """A compressed-tensors integer weight. int8 codes (stored so, or int4 / int8 packed into int32 words and read
    unpacked: :mod:`~subnetviz.checkpoints.ct_packed`) with a float scale per tensor, per row or per group of
    columns, and integer zero points laid out as the scales where the scheme is asymmetric, are ``int8``: effective
    w = (code − zero) × scale, as compressed-tensors dequantises them; with act-order groups (``weight_g_idx``,
    :class:`ActOrder`) scale[i, g[j]]. A float scale (or integer zero points) that fits no such layout is refused,
    naming the scale and its shape; int8 codes whose scale is missing or not float are refused, naming it. Formats
    with no effective form here (MXFP4 bytes, 3/5/6/7-bit words, float zero points) are compared as ``codes``: a
    stored entry is then one byte of two 4-bit codes, one int32 word of the config's width's codes
    (:func:`~subnetviz.checkpoints.ct_packed.packed_format`, where it names one), or one int8 code."""
    stem = name.rpartition(".")[0]
    scale, zero = f"{stem}.weight_scale", f"{stem}.weight_zero_point"
    s, z = metas.get(scale), metas.get(zero)
    bits = 4 if m.stored and "int4" in m.stored else 2 if m.stored and "int2" in m.stored else 8
    if m.dtype == torch.int8 and name.endswith(".weight") and (s is None or not s.dtype.is_floating_point):
        # (int8 codes, stored so or unpacked, are always saved with their float scale: without one they are no
        # weights, and compared as codes they could not be set against the other side's weights)
        found = "missing" if s is None else f"{str(s.dtype)[6:]} {tuple(s.shape)}, not float"
        raise CheckpointError(
            f"scale {scale!r} of {name!r} {tuple(m.shape)} (compressed-tensors int{bits} codes) is {found}; cannot "
            "dequantise it."
        )
    if m.dtype == torch.int8 and name.endswith(".weight"):
        shape, s_shape = tuple(m.shape), tuple(s.shape)
        how = _ct_strategy(shape, s_shape)
        if how is None:
            expected = (
                f"one value, one per row ({shape[0]},) or ({shape[0]}, 1), or ({shape[0]}, G) for G groups of columns "
                f"that divide its {shape[1]}"
                if len(shape) == 2
                else "one value for the tensor"
            )
            raise CheckpointError(
                f"scale {scale!r} {s_shape} of {name!r} {shape} (compressed-tensors int{bits} codes) fits no "
                f"per-tensor, per-row or group layout: expected {expected}; cannot dequantise it."
            )
        if z is not None and not z.dtype.is_floating_point and not _same_layout(z.shape, s.shape):
            raise CheckpointError(
                f"zero points {zero!r} {tuple(z.shape)} of {name!r} {shape}: expected them laid out as its scales "
                f"{scale!r} {s_shape}."
            )
        if z is None or not z.dtype.is_floating_point:
            g_idx = f"{stem}.weight_g_idx"
            return TensorForm(
                "int8",
                scale,
                f"compressed-tensors int{bits} codes",
                zero=zero if z is not None else None,
                group=how,
                codes=(-(1 << (bits - 1)), (1 << (bits - 1)) - 1),
                requant="native",
                act_order=ActOrder(g_idx) if how and len(shape) == 2 and g_idx in metas else None,
            )
    if m.dtype == torch.int8:  # (one code an entry: int8 codes with float zero points)
        return TensorForm("codes", None, "compressed-tensors codes")
    from subnetviz.checkpoints.ct_packed import packed_format

    widths = packed_format(config)
    bits = 4 if m.dtype == torch.uint8 else next(iter(widths)) if len(widths) == 1 else None
    return _words_form("compressed-tensors", m, bits)


def _code_only_form(method: str, m, config: dict) -> TensorForm:
    """The form of a GPTQ / AWQ ``qweight`` that no reader lists as codes (its zero points ``qzeros`` are listed
    with the scales). GPTQ's own layout (``checkpoint_format`` "gptq" / "gptq_v2", or none) at 2, 4 or 8 bits:
    each word holds the codes of consecutive input rows, code k of word r in bits k·b.. being input row
    (words / b)·r + k (AutoGPTQ's and GPTQModel's ``pack``); such words are unpacked into their codes
    (:func:`unpack_words`) and compared code by code. Any other width (3 bits: codes straddle words) or layout
    (marlin, AWQ's GEMV): compared as stored words, each said to hold its codes (:func:`_words_form`); the label
    names the layout, cut to :data:`_ECHO_CHARS` (a config's text, echoed in ``stored_as`` and the notes)."""
    qc = config.get("quantization_config") or config.get("compression_config") or {}
    bits = qc.get("bits", qc.get("w_bit"))
    fmt = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower()
    width = m.dtype.itemsize * 8
    if (
        method == "gptq"
        and bits in (2, 4, 8)
        and type(bits) is int
        and fmt in ("gptq", "gptq_v2")
        and len(m.shape) == 2
    ):
        unit = f"{str(m.dtype)[6:]} word"
        return TensorForm(
            "codes", None, f"GPTQ int{bits} codes (qweight unpacked, {width // bits} a word)", unpack=bits, entry=unit
        )
    layout = "" if method != "gptq" or fmt in ("gptq", "gptq_v2") else f" {_echoed(fmt)}"
    return _words_form(f"{_CODE_ONLY[method]}{layout}", m, bits if type(bits) is int else None)


_ECHO_CHARS = 60  # the most of a config's own text that a label echoes


def _echoed(text: str, limit: int = _ECHO_CHARS) -> str:
    """A config's own text as a label echoes it: cut to ``limit`` characters with an ellipsis (a 300-character
    ``checkpoint_format`` went whole into ``stored_as`` and the notes)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _words_form(what: str, m, bits: int | None) -> TensorForm:
    """Codes compared as their stored words or bytes, each holding several codes (``bits`` wide; None: unknown):
    the label and the notes say what one entry is (:func:`_packed_said`)."""
    said = _packed_said(m.dtype, bits)
    return TensorForm("codes", None, f"{what} packed codes (an entry: one {said})", entry=said)


def _packed_said(dtype: torch.dtype, bits: int | None) -> str:
    """What one stored entry of packed codes holds: "int32 word of 8 4-bit codes", "byte of 2 4-bit codes",
    "int32 word of 10 2/3 3-bit codes" (codes straddling words), "int32 word of packed codes" (width unknown)."""
    width = dtype.itemsize * 8
    unit = "byte" if width == 8 else f"{str(dtype)[6:]} word"
    if not (type(bits) is int and 1 <= bits <= width):
        return f"{unit} of packed codes"
    n = Fraction(width, bits)
    whole = n.numerator // n.denominator
    count = str(whole) if n.denominator == 1 else f"{whole} {n - whole}"
    return f"{unit} of {count} {bits}-bit codes"


def stored_codes(x: torch.Tensor, form: TensorForm) -> torch.Tensor:
    """Stored integer tensor ``x`` of a ``codes`` form as its entries are compared: a form that unpacks its words
    (GPTQ's qweight) as its codes (:func:`unpack_words`), any other as stored (a series compares them alike)."""
    return unpack_words(x, form.unpack) if form.kind == "codes" and form.unpack else x


def unpack_words(words: torch.Tensor, bits: int) -> torch.Tensor:
    """GPTQ-packed integer ``words`` (R, C) as their codes (R·k, C), k = word bits / ``bits`` codes a word: code i
    of word r (bits i·b .. i·b + b − 1) is row k·r + i. int8 codes (int16 for 8-bit codes, 0 … 255)."""
    per = words.dtype.itemsize * 8 // bits
    low = (1 << bits) - 1
    out = torch.int16 if bits == 8 else torch.int8
    parts = [((words >> (bits * i)) & low).to(out) for i in range(per)]
    return torch.stack(parts, dim=1).reshape(words.shape[0] * per, *words.shape[1:])


def _bnb4_form(name: str, m, absmax) -> TensorForm:
    """A bitsandbytes 4-bit weight read as its codes (:mod:`~subnetviz.checkpoints.bnb4`): w = TYPE[code] ×
    absmax[i, j // blocksize], the absmax read as float32 of shape (rows, columns / blocksize)."""
    qt = m.stored.split()[-1]
    group = m.shape[1] // absmax.shape[1]
    return TensorForm("int8", f"{name}.absmax", f"bnb {qt} codes", group=group, codes=(0, 15), table=qt)


def _ct_strategy(shape: tuple[int, ...], scale: tuple[int, ...]) -> int | None:
    """Columns per scale of a compressed-tensors weight of ``shape`` with scales of shape ``scale``: 0 for one
    scale or one per row, the group size for a group of columns per scale; None where the scales fit neither."""
    if math.prod(scale) == 1:
        return 0
    if len(shape) != 2:
        return None
    rows, cols = shape
    if scale in ((rows,), (rows, 1)):
        return 0
    if len(scale) == 2 and scale[0] == rows and scale[1] >= 1 and cols % scale[1] == 0:
        return cols // scale[1]
    return None


def _same_layout(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return tuple(a) == tuple(b) or (math.prod(a) == 1 and math.prod(b) == 1)


# --- scales and dequantisation -------------------------------------------------------------------
def check_scale(
    name: str, weight_shape: tuple[int, ...], scale_name: str, scale_shape: tuple[int, ...], block: tuple[int, int]
) -> str:
    """How ``scale`` applies to ``weight``: ``tensor``, ``channel``, ``block``, or, for experts packed in one 3-D
    weight (E, ·, N) with a scale per expert and output feature along its last axis, ``expert`` (fbgemm's FP8
    Llama 4 experts: ``gate_up_proj_scale`` (E, 1, 2I) of ``gate_up_proj`` (E, H, 2I), ``down_proj_scale`` (E, H, 1)
    of ``down_proj`` (E, I, H), as ``FbgemmFp8Llama4TextExperts`` holds and computes with them); else a one-line
    error."""
    numel = math.prod(scale_shape)
    if numel == 1:
        return "tensor"
    if len(weight_shape) == 3:
        e, _, n = weight_shape
        if tuple(scale_shape) in ((e, 1, n), (e, n, 1)):
            return "expert"
        raise CheckpointError(
            f"scale {scale_name!r} of {name!r}: expected one value per tensor or, for packed experts of shape "
            f"{tuple(weight_shape)}, one per expert and output feature (its last axis) as fbgemm's FP8 Llama 4 "
            f"stores them, ({e}, 1, {n}) or ({e}, {n}, 1); found {tuple(scale_shape)}. Packed FP8 experts with "
            "scales along another axis, or in blocks, are not read."
        )
    if len(weight_shape) == 2:
        m, n = weight_shape
        if tuple(scale_shape) in ((m,), (m, 1)):
            return "channel"
        want = (math.ceil(m / block[0]), math.ceil(n / block[1]))
        if tuple(scale_shape) == want:
            return "block"
        expected = f"{want} for {block[0]}×{block[1]} blocks of a {m}×{n} weight (or ({m},), (1,))"
    else:
        expected = f"one value per tensor for a weight of shape {tuple(weight_shape)}"
    raise CheckpointError(f"scale {scale_name!r} of {name!r}: expected shape {expected}, found {tuple(scale_shape)}.")


@dataclass
class QuantStats:
    """A quantized pair: ``stats`` is the float pass over the dequantised weights (its ``changed``, mask,
    tolerances and row/column counts are the effective ones: what the model computes with), except
    ``ulp_hist``, the distance in code steps of the codes that differ; ``changed_codes`` counts those."""

    stats: PairStats  # effective, with the codes' code-step histogram
    changed_codes: int


def compare_quantized(
    a: torch.Tensor,
    sa: torch.Tensor,
    b: torch.Tensor,
    sb: torch.Tensor,
    options: SparsityOptions,
    *,
    name: str,
    scale_names: tuple[str, str],
    block: tuple[int, int] = (DEFAULT_BLOCK, DEFAULT_BLOCK),
    divisor: float = 1.0,
    zeros: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    table: np.ndarray | None = None,
    g_idx: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
) -> QuantStats:
    """Codes ``a``/``b`` (FP8 or int8, shape (m, n), 1-D or packed experts (E, ·, N)) with scales ``sa``/``sb``
    (and zero points ``zeros``, laid out as the scales; act-order groups ``g_idx``, each side's or None): codes
    compared exactly, then both sides dequantised band by
    band (whole row blocks, ~1M entries: cache-sized; a tensor that is not 2-D, rows of its 2-D view:
    :func:`compare_stack`, its memory asked for first) and compared by the float pass, whose results are merged
    across bands.

    FP8 with block scales on CPU takes :func:`~subnetviz.analysis.quant_codes.compare_blocks`: one pass
    over the codes, dequantising only the changed entries and the blocks whose scale changed.
    """
    if a.shape != b.shape:
        raise CheckpointError(f"{name}: shapes differ ({tuple(a.shape)} vs {tuple(b.shape)}).")
    how_a = check_scale(name, tuple(a.shape), scale_names[0], tuple(sa.shape), block)
    how_b = check_scale(name, tuple(b.shape), scale_names[1], tuple(sb.shape), block)
    a, b = a.contiguous(), b.contiguous()
    za, zb = zeros
    ga, gb = g_idx
    plain = how_a == how_b == "block" and za is None and zb is None and table is None and ga is None and gb is None
    changed, above = None, None
    if table is not None:  # code steps along the data type's values in order (NF4's codes are; FP4's and E2M1's not)
        rank = np.argsort(np.argsort(table, kind="stable"), kind="stable").astype(np.uint8)
        if (rank != np.arange(rank.size)).any():
            changed, above = _code_counts(_ranked(a, rank), _ranked(b, rank))
    fast = compare_blocks(a, sa, b, sb, options, name=name, block=block) if plain else None
    if fast is not None:
        eff, changed, above = fast
        stats = replace(eff, ulp_hist=tuple(ulp_bins(changed, above)), dtype=str(a.dtype)[6:])
        return QuantStats(stats, changed)
    if changed is None:
        changed, above = _code_counts(a, b)
    if a.dim() not in (0, 2) and a.numel():  # one scale, or packed experts' per-feature ones (tensor or expert)
        # in bands of rows of its 2-D view (packed experts: a few of each expert's rows at a time), the memory asked
        # for first: dequantised whole, both sides in float32 and the pass' buffers held ~16 bytes an entry, unchecked
        # (Llama-4-Maverick's 128 packed experts of 5120 × 16384: ~170 GB)
        from subnetviz.config import require_memory

        shape = tuple(a.shape)
        step = band_rows(_flat_view(shape), 1, a.device)
        kept, band = _forms_memory(shape, step, options, packed=False)
        cpu = a.device.type == "cpu"
        dev = str(a.device)
        require_memory(f"{name} dequantised (float32)", kept + (band if cpu else 0), dev, 0 if cpu else band)
        va, vb = a.reshape(_flat_view(shape)), b.reshape(_flat_view(shape))
        eff = compare_stack(
            shape,
            step,
            lambda r0, r1: (
                _stack_rows(va, shape, sa, how_a, r0, r1, divisor, za, table),
                _stack_rows(vb, shape, sb, how_b, r0, r1, divisor, zb, table),
            ),
            options,
            name,
        )
    elif a.dim() != 2:  # (a scalar, or empty: whole)
        ea = dequantize(a, sa, how_a, block, 0, divisor, za, table)
        eb = dequantize(b, sb, how_b, block, 0, divisor, zb, table)
        eff = compare_pair(ea, eb, options, name=name)
    else:
        step = band_rows(tuple(a.shape), block[0], a.device)
        eff = compare_bands(
            tuple(a.shape),
            step,
            lambda r0, r1: (
                dequantize(a[r0:r1], sa, how_a, block, r0, divisor, za, table, ga),
                dequantize(b[r0:r1], sb, how_b, block, r0, divisor, zb, table, gb),
            ),
            options,
            name,
        )
    stats = replace(eff, ulp_hist=tuple(ulp_bins(changed, above)), dtype=str(a.dtype).replace("torch.", ""))
    return QuantStats(stats, changed)


def compare_unpacked(a: torch.Tensor, b: torch.Tensor, bits: int, options: SparsityOptions, name: str) -> PairStats:
    """:func:`~subnetviz.analysis.quant_codes.compare_codes` of GPTQ-packed words ``a`` / ``b`` (R, C) unpacked into
    their codes (R·k, C) (:func:`unpack_words`, k codes a word), a band of words at a time (about
    :data:`_BAND_ELEMENTS` codes): every count, the mask (bool, of the codes' shape (R·k, C), allocated once and
    filled band by band) and the row / column counts are per code. Memory: one band and these outputs."""
    if a.shape != b.shape or a.dim() != 2:
        raise CheckpointError(
            f"{name}: packed codes of shapes {tuple(a.shape)} and {tuple(b.shape)}; expected one 2-D shape."
        )
    a, b = a.cpu(), b.cpu()  # (codes are compared on the CPU: compare_codes' counts are NumPy arrays)
    per = a.dtype.itemsize * 8 // bits
    rows, cols = a.shape
    shape = (rows * per, cols)
    step = band_rows(shape, per, a.device) // per
    mask = torch.empty(shape, dtype=torch.bool) if options.keep_masks else None
    parts = []
    for r0 in range(0, max(rows, 1), step):
        ca, cb = unpack_words(a[r0 : r0 + step], bits), unpack_words(b[r0 : r0 + step], bits)
        st = compare_codes(ca, cb, options, name=name)
        del ca, cb
        if mask is not None:
            mask[r0 * per : r0 * per + st.mask.shape[0]] = st.mask
        parts.append(replace(st, mask=None))
    merged = merge_bands(parts, replace(options, keep_masks=False), shape)
    return replace(merged, mask=mask)


def band_rows(shape: tuple[int, ...], unit: int, device) -> int:
    """Rows of one band of a matrix of ``shape`` compared in row bands: about :data:`_BAND_ELEMENTS` entries
    (:data:`_GPU_BAND_ELEMENTS` on a GPU), a whole number of ``unit`` rows (a scale block's), one unit at least."""
    band = _BAND_ELEMENTS if torch.device(device).type == "cpu" else _GPU_BAND_ELEMENTS
    return max(unit, (band // max(shape[1], 1)) // unit * unit)


def compare_bands(
    shape: tuple[int, int],
    step: int,
    pair_of,
    options: SparsityOptions,
    name: str,
    *,
    packed: bool = False,
    each=None,
) -> PairStats:
    """:func:`~subnetviz.analysis.sparsity.compare_pair` of a (rows × cols) pair, ``step`` rows at a time:
    ``pair_of(r0, r1)`` gives rows ``r0:r1`` of both sides as compared, and ``each(r0, r1, a, b)``, where given,
    sees them too (the rounding-only count). The bands' statistics are merged (:func:`merge_bands`); the mask
    (bool, or bit-packed where ``packed``: ``step`` × cols must then be a multiple of 8, so each band's bits start
    on a byte) and the row / column counts are allocated once and filled as the bands come, so memory is one band
    and these outputs (each band's own mask, kept until the merge, pinned the heap between the bands' float32
    temporaries: a 2048 × 4096 int4 pair grew ~12 MB a band; its column counts, 8 bytes a column a band)."""
    rows, cols = shape
    if packed and rows > step and step * cols % 8:
        raise ValueError(f"{name}: bands of {step} × {cols} entries do not start on a byte of the packed mask.")
    keep, row_col = options.keep_masks, options.row_col
    mask = torch.empty(shape, dtype=torch.bool) if keep and not packed else None
    bits = np.empty((rows * cols + 7) // 8, np.uint8) if keep and packed else None
    row_counts = np.empty(rows, np.int64) if row_col else None
    col_counts = np.zeros(cols, np.int64) if row_col else None
    parts = []
    for r0 in range(0, rows, step):
        r1 = min(r0 + step, rows)
        ea, eb = pair_of(r0, r1)
        st = compare_pair(ea, eb, options, name=name, packed=packed)
        if each is not None:
            each(r0, r1, ea, eb)
        del ea, eb
        if mask is not None:
            mask[r0:r1] = st.mask.reshape(r1 - r0, cols)
        if bits is not None:
            bits[r0 * cols // 8 : r0 * cols // 8 + st.mask_bits.size] = st.mask_bits
        if row_col:
            row_counts[r0:r1] = st.row_counts
            col_counts += st.col_counts
        parts.append(replace(st, mask=None, mask_bits=None, row_counts=None, col_counts=None))
    merged = merge_bands(parts, replace(options, keep_masks=False, row_col=False), shape)
    return replace(merged, mask=mask, mask_bits=bits, row_counts=row_counts, col_counts=col_counts)


def _flat_view(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, columns) of the 2-D view in which a tensor of ``shape`` that is not 2-D is compared in row bands
    (:func:`compare_stack`): its last axis as the columns (packed experts (E, H, N): (E·H, N), a few rows of one
    expert, or a few experts, a band); a 1-D tensor as one column."""
    if len(shape) <= 1:
        return math.prod(shape), 1
    return math.prod(shape[:-1]), shape[-1]


def _stack_rows(view, shape, scale, how: str, r0: int, r1: int, divisor=1.0, zero=None, table=None) -> torch.Tensor:
    """Rows ``r0:r1`` of ``view`` (the codes of a tensor of ``shape`` that is not 2-D, as :func:`_flat_view` lays
    them out) dequantised as :func:`~subnetviz.analysis.quant_codes.dequantize` forms the whole, entry by entry
    (``how``: one scale, or packed experts' scale per expert and output feature, ``expert``: row i of the view is
    expert i // H's, so that is a block of H rows × 1 column of the scales read as (E, N))."""
    part = view[r0:r1]
    if how == "expert":
        e, per, n = shape
        z = None if zero is None else zero.reshape(e, n)
        return dequantize(part, scale.reshape(e, n), "block", (per, 1), r0, divisor, z, table)
    if how != "tensor":
        raise ValueError(f"a tensor of shape {shape} with {how!r} scales is not read in bands")
    return dequantize(part, scale, how, (1, 1), r0, divisor, zero, table)


def compare_stack(
    shape: tuple[int, ...], step: int, pair_of, options: SparsityOptions, name: str, *, packed: bool = False
) -> PairStats:
    """:func:`~subnetviz.analysis.sparsity.compare_pair` of a pair of ``shape`` that is not 2-D (packed experts, a
    1-D tensor), ``step`` rows of its 2-D view (:func:`_flat_view`) at a time: ``pair_of(r0, r1)`` gives those rows
    of both sides as compared. Each band is compared as one row of its entries, whose column counts are then its
    exact mask: the row / column counts are formed from them as :func:`compare_pair` forms them of the whole tensor
    viewed (shape[0], rest) (an expert's changed entries, and each (h, n) entry's over the experts), a 1-D tensor's
    as its own (its mask as row counts, the changed entries as its one column count). The mask (bool, or bit-packed
    where ``packed``: ``step`` × columns must then be a multiple of 8) is allocated once and filled band by band;
    the statistics are merged (:func:`merge_bands`). Memory: one band and these outputs."""
    rows, cols = _flat_view(shape)
    numel = rows * cols
    if packed and rows > step and step * cols % 8:
        raise ValueError(f"{name}: bands of {step} × {cols} entries do not start on a byte of the packed mask.")
    keep, row_col, one_d = options.keep_masks, options.row_col, len(shape) == 1
    mask = torch.empty(numel, dtype=torch.bool) if keep and not packed else None
    bits = np.empty((numel + 7) // 8, np.uint8) if keep and packed else None
    per = 1 if one_d else math.prod(shape[1:])  # entries of one row of the (shape[0], rest) view
    row_counts = np.zeros(numel if one_d else shape[0], np.int64) if row_col else None
    col_counts = np.zeros(1 if one_d else per, np.int64) if row_col else None
    parts = []
    for r0 in range(0, rows, step):
        r1 = min(r0 + step, rows)
        i0, i1 = r0 * cols, r1 * cols
        ea, eb = pair_of(r0, r1)
        st = compare_pair(ea.reshape(1, -1), eb.reshape(1, -1), options, name=name, packed=packed)
        del ea, eb
        if mask is not None:
            mask[i0:i1] = st.mask.reshape(-1)
        if bits is not None:
            bits[i0 // 8 : i0 // 8 + st.mask_bits.size] = st.mask_bits
        if row_col and one_d:
            row_counts[i0:i1] = st.col_counts
            col_counts[0] += st.changed
        elif row_col:
            _add_stack_counts(st.col_counts, i0, per, row_counts, col_counts)
        parts.append(replace(st, mask=None, mask_bits=None, row_counts=None, col_counts=None))
    merged = merge_bands(parts, replace(options, keep_masks=False, row_col=False), shape)
    mask = mask.reshape(shape) if mask is not None else None
    return replace(merged, mask=mask, mask_bits=bits, row_counts=row_counts, col_counts=col_counts)


def _add_stack_counts(ne: np.ndarray, i0: int, per: int, row_counts: np.ndarray, col_counts: np.ndarray) -> None:
    """Add the exact mask ``ne`` (0 / 1) of the entries ``i0:i0 + ne.size`` of a tensor viewed (rows, ``per``) to its
    row counts (each row's changed entries) and column counts (each column's, over the rows): the band's part of
    its first row, its whole rows, and the start of its last."""
    i1 = i0 + ne.size
    first = i0 // per
    starts = np.maximum(np.arange(first, (i1 - 1) // per + 1) * per, i0) - i0
    row_counts[first : first + starts.size] += np.add.reduceat(ne, starts)
    head = min(i1, (first + 1) * per) - i0  # the rest of the first row
    col_counts[i0 - first * per : i0 - first * per + head] += ne[:head]
    full = (ne.size - head) // per
    if full:
        col_counts += ne[head : head + full * per].reshape(full, per).sum(0)
    tail = head + full * per
    if tail < ne.size:
        col_counts[: ne.size - tail] += ne[tail:]


def _ranked(codes: torch.Tensor, rank: np.ndarray) -> torch.Tensor:
    """1-byte ``codes`` mapped through ``rank`` (a code's place among the data type's sorted values), a band of
    1 M at a time: indexing the whole tensor at once formed two int64 copies of it (64 MB for 8 M codes, 2.5×
    the time of the analysis)."""
    x = codes.contiguous().cpu().numpy().reshape(-1)
    out = np.empty(x.size, np.uint8)
    for i in range(0, x.size, 1 << 20):
        np.take(rank, x[i : i + (1 << 20)], out=out[i : i + (1 << 20)])
    return torch.from_numpy(out.reshape(tuple(codes.shape))).to(codes.device)


def effective(
    code: torch.Tensor,
    scale: torch.Tensor,
    form: TensorForm,
    block: tuple[int, int],
    *,
    name: str = "tensor",
    scale_name: str = "scale",
    zero: torch.Tensor | None = None,
) -> torch.Tensor:
    """The whole float32 effective weight (a tensor read whole: the subspaces' matrices, one that is not 2-D);
    ``block`` is an FP8 form's (an int8 form's is its own: :meth:`TensorForm.block`), ``zero`` the form's zero points
    where it has them; act-order groups are the form's (:func:`act_groups`)."""
    divisor, table = form.divisor, form_table(form)
    if form.kind != "fp8":
        block = form.block({})
    how = check_scale(name, tuple(code.shape), scale_name, tuple(scale.shape), block)
    return dequantize(code, scale, how, block, 0, divisor, zero, table, act_groups(form))


def form_table(form: TensorForm) -> np.ndarray | None:
    """The values a form's codes index (bitsandbytes' NF4 / FP4), else None."""
    if form.table is None:
        return None
    from subnetviz.checkpoints.bnb4 import TABLES
    from subnetviz.checkpoints.nvfp4 import E2M1

    return E2M1 if form.table == "e2m1" else TABLES[form.table]


def row_block(ck, form: TensorForm) -> int:
    """Rows of one scale block of a weight stored in ``form`` (bands of :func:`weight_rows` start at multiples)."""
    return form.block(ck.config)[0] if form.kind in ("fp8", "int8") else 1


def zero_values(ck, form: TensorForm, dev) -> torch.Tensor | None:
    """The zero points of a weight stored in ``form`` (compressed-tensors' asymmetric schemes), else None."""
    return ck.get(form.zero, dev) if form.zero else None


def weight_rows(
    ck,
    name: str,
    form: TensorForm,
    x: torch.Tensor,
    r0: int = 0,
    r1: int | None = None,
    *,
    scale: torch.Tensor | None = None,
    zero: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows ``r0:r1`` of checkpoint ``ck``'s stored tensor ``x`` (``name``, in ``form``) as weights: a float tensor
    as stored, FP8 / int8 codes dequantised with their scales (float32; the codes alone are no weights). A tensor
    that is not 2-D is read whole. Read a band at a time, memory stays a band (a whole FP8 expert in float32 is
    four times its codes). ``scale`` / ``zero``: the form's scale values and zero points on ``x``'s device, read
    once by a caller that reads many bands; else read here, on the CPU."""
    part = x[r0:r1] if x.dim() == 2 else x
    if form.kind not in ("fp8", "int8"):
        return part
    if scale is None:
        scale, zero = scale_values(ck, form.scale, "cpu"), zero_values(ck, form, "cpu")
    block = form.block(ck.config)
    if x.dim() != 2:
        return effective(part, scale, form, block, name=name, scale_name=form.scale, zero=zero)
    how = check_scale(name, tuple(x.shape), form.scale, tuple(scale.shape), block)
    return dequantize(part, scale, how, block, r0, form.divisor, zero, form_table(form), act_groups(form))


# --- the per-tensor dispatch used by analyze_updates ---------------------------------------------
SIDE_COLUMNS = ["model", "key", "name", "group", "layer", "module", "shape", "numel", "dtype", "changed"]


class FormLog:
    """What took a non-default path, per finetuned model, turned into one note per kind.

    A kind is a tuple: its name (``"codes"``, ``"q"``, ``"cast"``, ``"scale"``, ...) and its fields, kept apart: a
    field can be a config's own text (GPTQ's ``checkpoint_format``), which a kind packed into one string with "|"
    between its fields split into too many parts (a ValueError for ``"marlin|v2"``)."""

    def __init__(self):
        self.events: dict[tuple[int, tuple], list[tuple[str, int, int]]] = {}

    def add(self, i: int, kind: tuple, name: str, changed: int = 0, numel: int = 0) -> None:
        self.events.setdefault((i, kind), []).append((name, changed, numel))

    def notes(self, i: int) -> list[str]:
        out = []
        for (j, kind), ev in self.events.items():
            if j != i:
                continue
            n, changed, numel = len(ev), sum(e[1] for e in ev), sum(e[2] for e in ev)
            ex = ", ".join(e[0] for e in ev[:4]) + (" ..." if n > 4 else "")
            touched = sum(1 for e in ev if e[1])
            what, *fields = kind
            if what == "cast":
                da, db = fields
                out.append(
                    f"Mixed precision: {n} tensor(s) stored as {da} in the base and {db} in the finetune "
                    f"({ex}): compared at the finetune's stored dtype {db}, the base cast with "
                    "round-to-nearest-even as saving would. --precision / the precision control override."
                )
            elif what == "buffer":
                out.append(
                    f"Buffers: {n} non-parameter tensor(s) ({ex}) compared bitwise: {changed:,} changed entries "
                    f"in {touched}; listed under buffers, not counted in the weight sparsity."
                )
            elif what == "scale":
                # (a model whose weights are compared as codes only counts no weight for a changed scale: the
                # note said "changed counts them" beside the codes note saying it does not)
                mine = {k for (m, k) in self.events if m == i}
                codes_only = any(k[0] == "codes" for k in mine) and not any(k[0] == "q" for k in mine)
                out.append(
                    f"Quantization scales: {n} tensor(s) ({ex}) compared bitwise: {changed:,} of {numel:,} "
                    f"scale values changed in {touched}. "
                    + (
                        "The weights are compared as stored codes only, so a weight whose scale changed while its "
                        "code did not is not counted in changed."
                        if codes_only
                        else "A changed block scale changes every weight of its block: changed counts them (the "
                        "weights as dequantised), changed_codes the stored codes that differ."
                    )
                )
            elif what == "q":
                form, rule = fields
                codes = numel  # this kind's events carry the changed codes in the third slot
                out.append(
                    f"{form} weights: {n} tensor(s) ({ex}) compared as the model computes with them, dequantised "
                    f"(w = {rule}, float32): {changed:,} changed; as everywhere else (masks, tolerances, spectra, "
                    f"overlap). Stored codes that differ (changed_codes): {codes:,}; their ULP bins count code steps."
                )
            elif what == "codes":
                label, per, entry = fields
                if per:
                    said = (
                        f"; each {entry} unpacked into its {per} codes (code k of word r is input row {per}r + k), "
                        "so an entry is one code"
                    )
                else:
                    said = (
                        f"; an entry is one {entry}, changed when any of its codes changed: numel, changed and the "
                        "sparsity count stored words, not weights"
                        if entry
                        else ""
                    )
                out.append(
                    f"{label}: {n} tensor(s) ({ex}) compared as stored codes only ({changed:,} changed){said}; "
                    "this format is not dequantised here, so there is no effective comparison: a weight whose "
                    "scales or zero points changed while its codes did not is not counted as changed (the "
                    "Quantization scales note counts those)."
                )
            elif what == "forms2":
                out.append(
                    f"Stored forms differ ({fields[0]}): {n} tensor(s) ({ex}); both sides were dequantised (float32) "
                    f"and compared as weights ({numel:,} changed), not code by code: changed_codes counts the same "
                    "entries."
                )
            elif what == "forms":
                out.append(
                    f"Stored forms differ ({fields[0]}): {n} tensor(s) ({ex}); the quantized side was "
                    "dequantised (float32) and compared with the other at its stored dtype."
                    + (
                        f" Of their {numel:,} changed entries, {changed:,} ({changed / numel:.2%}) are exactly what "
                        "quantising the float side with the quantized side's own scales gives: rounding, not "
                        "training. Compare checkpoints stored in the same form to see the update alone."
                        if changed
                        else ""
                    )
                )
        return out


def side_row(
    model: str, key: str, at, info, ck_base, ck, fa: TensorForm, fb: TensorForm, dev, log: FormLog, i: int
) -> dict:
    """A buffer or scale pair, compared bitwise, as one row of the report's ``buffers`` table."""
    from subnetviz.checkpoints import read_aligned

    a, b = read_aligned(ck_base, at, 0, dev), read_aligned(ck, at, 1, dev)
    group = "buffers" if "buffer" in (fa.kind, fb.kind) else "scales"
    changed = compare_buffer(a, b)
    log.add(i, ("buffer",) if group == "buffers" else ("scale",), at.names[0], changed, b.numel())
    dtype = str(b.dtype).replace("torch.", "") + ("" if a.dtype == b.dtype else f" (base {str(a.dtype)[6:]})")
    return {
        "model": model,
        "key": key,
        "name": at.names[0],
        "group": group,
        "layer": info.layer,
        "module": info.module,
        "shape": "x".join(map(str, at.shape)),
        "numel": b.numel(),
        "dtype": dtype,
        "changed": changed,
    }


def comparison_dtype(fa: TensorForm, fb: TensorForm, dtype_a: torch.dtype, dtype_b: torch.dtype) -> torch.dtype:
    """The dtype at which :func:`compare_aligned` compares a pair stored in forms ``fa`` (base) / ``fb``
    (finetune) and dtypes ``dtype_a`` / ``dtype_b`` (no precision asked for): a float pair at the finetune's
    dtype, a float side against a quantized one at the float side's, a quantized pair as dequantised (float32).
    The subspaces' update mask follows it too."""
    if fa.kind == "float":
        return dtype_b if fb.kind == "float" else dtype_a
    return dtype_b if fb.kind == "float" else torch.float32


def compare_aligned(
    a: torch.Tensor,
    b: torch.Tensor,
    fa: TensorForm,
    fb: TensorForm,
    at,
    ck_base,
    ck,
    options: SparsityOptions,
    dev,
    log: FormLog,
    i: int,
    *,
    packed: bool = False,
):
    """One aligned weight pair in whatever form it is stored (``packed``: a float pair's mask comes back
    bit-packed, :func:`~subnetviz.analysis.sparsity.compare_pair`'s ``mask_bits``).

    Returns ``(PairStats, changed_codes, delta)`` (``changed_codes``: stored entries that differ, the codes of
    an FP8 or int8 pair whose PairStats are the dequantised weights'; otherwise PairStats' own count) where ``delta()`` gives the float64 Δ for
    spectra (effective for quantized forms) or is None (codes with no effective form); a float pair's
    ``delta(e)`` gives the Δ of slice ``e`` alone (one expert of a packed 3-D tensor).
    """
    name = at.names[0]
    if fa.kind == fb.kind == "float":
        if options.precision is None and a.dtype != b.dtype:
            log.add(i, ("cast", str(a.dtype)[6:], str(b.dtype)[6:]), name)
            a = _cast_base(a, b.dtype, ck_base, ck, name)  # round-to-nearest-even, as saving in b's dtype would
        st = compare_pair(a, b, options, name=name, packed=packed)

        def float_delta(e: int | None = None) -> torch.Tensor:
            xa, xb = (a, b) if e is None else (a[e], b[e])
            step = band_rows(tuple(xa.shape), 1, xa.device) if xa.dim() == 2 and xa.numel() else 0
            return _delta(tuple(xa.shape), step, lambda r0, r1: (xa[r0:r1], xb[r0:r1]), options.precision, xa.device)

        return st, st.changed, float_delta
    if fa.kind == fb.kind == "codes":
        if fa.unpack != fb.unpack or (fa.unpack and a.dtype != b.dtype):
            raise CheckpointError(
                f"{name}: stored as {fa.label} in the base and {fb.label} in the finetune; packed codes of two "
                "layouts cannot be compared code by code."
            )
        st = compare_unpacked(a, b, fb.unpack, options, name) if fb.unpack else compare_codes(a, b, options, name=name)
        per = a.dtype.itemsize * 8 // fb.unpack if fb.unpack else 0  # (codes a word, where unpacked)
        log.add(i, ("codes", fb.label, per, fb.entry), name, st.changed)
        return st, st.changed, None
    if fa.kind == fb.kind and fa.kind in ("fp8", "int8") and _same_scales(fa, fb, ck_base, ck):
        side_a, side_b = _Side(a, fa, ck_base, dev, name), _Side(b, fb, ck, dev, name)  # (scales read and checked)
        sa, sb, za, zb = side_a.scale, side_b.scale, side_a.zero, side_b.zero
        q = compare_quantized(
            a,
            sa,
            b,
            sb,
            options,
            name=name,
            scale_names=(fa.scale, fb.scale),
            block=fa.block(ck_base.config),
            divisor=fa.divisor,
            zeros=(za, zb),
            table=form_table(fa),
            g_idx=(act_groups(fa), act_groups(fb)),
        )
        log.add(i, _log_kind(fa, sa), name, q.stats.changed, q.changed_codes)
        # the float64 Δ for spectra, each side dequantised with its own scales (float32) a band of whole scale
        # blocks at a time: dequantised whole, both sides in float32 and float64 and their difference held ~32 bytes
        # an entry, twice what the spectra's memory check asks for
        two_d = a.dim() == 2 and a.numel() > 0
        step = band_rows(tuple(a.shape), math.lcm(row_block(ck_base, fa), row_block(ck, fb)), a.device) if two_d else 0
        pair_of = lambda r0, r1: (side_a.rows(r0, r1), side_b.rows(r0, r1))  # noqa: E731
        return q.stats, q.changed_codes, lambda: _delta(tuple(a.shape), step, pair_of, options.precision, a.device)
    # Different stored forms (e.g. a bf16 base and an FP8 release): dequantise the quantized side; codes stored in two
    # layouts (int4 and int8, NF4 and FP4, compressed-tensors' and AWQ's, FP8 with a scale per row and in blocks, or
    # in blocks of two sizes): both sides, each with its own scales and its own config's block, compared as weights
    # in float32 (as the series and the drill do; the analysis refused it whole). A matrix in row bands of whole scale
    # blocks, as compare_quantized, the drill and the series read them: compared whole, a bf16 base against its FP8
    # copy held ~30 bytes an entry (a 53248 × 16384 MLP matrix: ~30 GB).
    st, rounding, delta = _compare_forms(a, b, fa, fb, ck_base, ck, options, dev, name, packed)
    both = fa.kind != "float" and fb.kind != "float"
    said_a, said_b = _layout_said(fa, _scales_said(ck_base, fa, a)), _layout_said(fb, _scales_said(ck, fb, b))
    if said_a == said_b and fa.act_order != fb.act_order:  # (the same layout, its columns grouped differently)
        said = f"{said_a} on both sides, their columns grouped differently (weight_g_idx)"
    else:
        said = f"{said_a} vs {said_b}"
    log.add(i, ("forms2" if both else "forms", said), name, rounding, st.changed)
    return st, st.changed, delta


def _cast_base(a: torch.Tensor, dtype: torch.dtype, ck_base, ck, name: str) -> torch.Tensor:
    """Base float tensor ``a`` cast to the finetune's ``dtype`` (round-to-nearest-even), as a mixed-precision pair
    is compared when no precision is chosen; refused in one line naming the base, the finetune ``ck`` and the count
    where the cast overflows (a bf16 base's outliers past float16's ±65504 would read as Inf, and the finetune be
    said to hold NaN/Inf), as the float16 precision refuses it (:func:`~subnetviz.analysis.sparsity.cast_overflow`).
    The error carries ``ck.spec``: this pair alone cannot be compared at this precision, and the app leaves that
    finetune out, not every other (a ConfigError blanked every analysis page)."""
    cast = a.to(dtype)
    if torch.finfo(a.dtype).max <= torch.finfo(dtype).max or not (over := cast_overflow(a, cast)):
        return cast
    wider = "fp32 or bf16" if dtype == torch.float16 else "fp32"
    raise CastRangeError(
        f"{ck_base.spec}: {name}: {over:,} value(s) of the base tensor ({str(a.dtype)[6:]}) lie beyond "
        f"{str(dtype)[6:]}'s range (±{torch.finfo(dtype).max:g}), the dtype of the finetune {ck.spec}, at which a "
        f"mixed-precision pair is compared by default; compare at {wider} (the comparison precision, --precision) "
        "instead.",
        checkpoint=ck.spec,
    )


# Bytes per entry of one band of the mixed-forms pass at its peak, bounded above: the dequantised side in float32
# and the scale image that forms it (with bitsandbytes' table, the codes as int64 indices), both sides as compared,
# compare_pair's buffers, and the rounding-only count's temporaries (the multiplier image, the float side over it,
# its codes again, int64 midpoint indices for a table, the two float32 sides it compares). Measured with one band
# the whole of a 4096 × 8192 matrix: 19-22 (bf16 against FP8 blocks, each precision), 26-28 (against NF4).
_FORMS_BAND_BYTES = 40


class _Side:
    """One side of a pair in different stored forms: checkpoint ``ck``'s stored tensor ``x`` in ``form``, with
    the scales and zero points of codes read once (on ``dev``) and checked to fit (one line naming ``ck``)."""

    def __init__(self, x: torch.Tensor, form: TensorForm, ck, dev, name: str):
        self.x, self.form, self.ck, self.name = x, form, ck, name
        self.scale = self.zero = self.how = None
        if form.kind in ("fp8", "int8"):
            self.scale, self.zero = scale_values(ck, form.scale, dev), zero_values(ck, form, dev)
            self.how = _scale_fits(ck, name, x, form, self.scale)
        # a tensor that is not 2-D as its 2-D view (compare_stack's bands; a view of the stored tensor)
        self.view = x.reshape(_flat_view(tuple(x.shape))) if x.dim() != 2 else None

    @property
    def quantized(self) -> bool:
        return self.form.kind in ("fp8", "int8")

    def rows(self, r0: int, r1: int | None) -> torch.Tensor:
        """Rows ``r0:r1`` as weights (:func:`weight_rows`)."""
        return weight_rows(self.ck, self.name, self.form, self.x, r0, r1, scale=self.scale, zero=self.zero)

    def stack_rows(self, r0: int, r1: int) -> torch.Tensor:
        """Rows ``r0:r1`` of a tensor that is not 2-D, in its 2-D view (:func:`_flat_view`), as weights."""
        if not self.quantized:
            return self.view[r0:r1]
        f = self.form
        return _stack_rows(
            self.view, tuple(self.x.shape), self.scale, self.how, r0, r1, f.divisor, self.zero, form_table(f)
        )


def _forms_memory(shape: tuple[int, ...], step: int, options: SparsityOptions, packed: bool) -> tuple[int, int]:
    """(kept, band) bytes the banded pass of a tensor of ``shape`` (in different forms, or quantized and not 2-D)
    holds at its peak, compared ``step`` rows at a time (of its 2-D view where it is not 2-D: :func:`_flat_view`; 0:
    whole): its outputs (the mask, bit-packed where ``packed``; the row and column counts, a 1-D tensor's row counts
    8 bytes an entry) and one band (:data:`_FORMS_BAND_BYTES` an entry: a band not 2-D is compared as one row, whose
    column counts, its exact mask, are 8 bytes an entry of it)."""
    numel = math.prod(shape)
    cols = shape[1] if len(shape) == 2 else _flat_view(shape)[1]
    band = min(numel, step * cols) if step else numel
    kept = ((numel + 7) // 8 if packed else numel) if options.keep_masks else 0
    if options.row_col and len(shape) >= 2:
        kept += 8 * (shape[0] + 2 * math.prod(shape[1:]))  # (a band's column counts beside the running sum)
    elif options.row_col:
        kept += 8 * (numel + 1)
    return kept, _FORMS_BAND_BYTES * band


def _compare_forms(a, b, fa: TensorForm, fb: TensorForm, ck_base, ck, options: SparsityOptions, dev, name, packed):
    """:func:`compare_aligned` of a pair stored in different forms: ``(PairStats, rounding-only count, delta)``.
    Each side read as weights (:class:`_Side`), cast to :func:`comparison_dtype` where no precision is chosen; a
    matrix in row bands of whole scale blocks of both sides (a multiple of 8 entries, so the packed mask's bytes
    follow band by band), the memory asked for first (:func:`_forms_memory`): the bands, not the whole tensor."""
    if a.shape != b.shape:
        raise CheckpointError(f"{name}: shapes differ ({tuple(a.shape)} vs {tuple(b.shape)}).")
    for f in (fa, fb):
        if f.kind not in ("float", "fp8", "int8"):
            raise CheckpointError(
                f"{name}: stored as {fa.label} in the base and {fb.label} in the finetune; codes "
                "without an effective form cannot be compared with another form."
            )
    from subnetviz.config import require_memory

    shape = tuple(a.shape)
    two_d = a.dim() == 2 and a.numel() > 0
    stack = a.dim() not in (0, 2) and a.numel() > 0  # (in bands of its 2-D view: compare_stack)
    if two_d:
        unit = math.lcm(row_block(ck_base, fa), row_block(ck, fb), 8 // math.gcd(shape[1], 8))
        step = band_rows(shape, unit, a.device)
    else:
        cols = _flat_view(shape)[1]
        step = band_rows(_flat_view(shape), 8 // math.gcd(cols, 8), a.device) if stack else 0
    kept, band = _forms_memory(shape, step, options, packed)
    cpu = str(dev) == "cpu"
    require_memory(f"{name} dequantised (float32)", kept + (band if cpu else 0), str(dev), 0 if cpu else band)
    side_a, side_b = _Side(a, fa, ck_base, dev, name), _Side(b, fb, ck, dev, name)
    target = comparison_dtype(fa, fb, a.dtype, b.dtype)

    def pair_of(r0: int, r1: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        ea, eb = side_a.rows(r0, r1), side_b.rows(r0, r1)
        return (ea.to(target), eb.to(target)) if options.precision is None else (ea, eb)

    def delta() -> torch.Tensor:  # the float64 Δ for spectra, a band at a time (a tensor that is not 2-D: whole)
        return _delta(shape, step if two_d else 0, pair_of, options.precision, a.device)

    rounding = [0]
    # a float side against a quantized one: how many of the changed entries are rounding (band by band)
    quantized = (side_a if side_a.quantized else side_b) if side_a.quantized != side_b.quantized else None
    if stack:  # packed experts: the same count in the bands of its 2-D view (it was left at 0: "none rounding")

        def stack_pair(r0: int, r1: int) -> tuple[torch.Tensor, torch.Tensor]:
            ea, eb = side_a.stack_rows(r0, r1), side_b.stack_rows(r0, r1)
            ea, eb = (ea.to(target), eb.to(target)) if options.precision is None else (ea, eb)
            if quantized is not None:
                rounding[0] += _rounding_only(quantized, r0, r1, eb if side_a.quantized else ea, ea, eb, options)
            return ea, eb

        st = compare_stack(shape, step, stack_pair, options, name, packed=packed)
        return st, rounding[0], delta
    if not two_d:
        ea, eb = pair_of(0, None)
        return compare_pair(ea, eb, options, name=name, packed=packed), 0, delta
    each = None
    if quantized is not None:

        def each(r0: int, r1: int, ea: torch.Tensor, eb: torch.Tensor) -> None:
            rounding[0] += _rounding_only(quantized, r0, r1, eb if side_a.quantized else ea, ea, eb, options)

    st = compare_bands(shape, step, pair_of, options, name, packed=packed, each=each)
    return st, rounding[0], delta


def _same_scales(fa: TensorForm, fb: TensorForm, ck_base, ck) -> bool:
    """Whether two quantized sides (forms ``fa`` of ``ck_base``, ``fb`` of ``ck``) store their codes alike, so that
    they are compared code by code: one layout, one scale block by each checkpoint's own config, scales of one
    shape. Two quantizations of one model may differ in any (FP8 with a scale per row against MXFP8's per 32
    columns or 16 × 16 blocks; blocks of 44 and 48 whose scale grids have one shape on a 64 × 128 weight): those
    are both dequantised, each with its own scales and block."""
    if fa.layout != fb.layout or fa.block(ck_base.config) != fb.block(ck.config):
        return False
    return tuple(ck_base.meta(fa.scale).shape) == tuple(ck.meta(fb.scale).shape)


def _scale_fits(ck, name: str, x: torch.Tensor, form: TensorForm, scale: torch.Tensor) -> str:
    """:func:`check_scale` of checkpoint ``ck``'s weight ``name`` (codes ``x`` in ``form``) with its own block; a
    scale that does not fit is one line naming the checkpoint."""
    block = form.block(ck.config) if form.kind == "fp8" else form.block({})
    try:
        return check_scale(name, tuple(x.shape), form.scale, tuple(scale.shape), block)
    except CheckpointError as exc:
        raise CheckpointError(f"{ck.spec}: {exc}") from None


def _scales_said(ck, form: TensorForm, x: torch.Tensor) -> str | None:
    """How an FP8 weight's scales are laid out, as the notes say it (a scale per row, 16×16 blocks, ...); None for
    other forms (:func:`_layout_said` says theirs)."""
    if form.kind != "fp8":
        return None
    how = check_scale("", tuple(x.shape), form.scale, tuple(ck.meta(form.scale).shape), form.block(ck.config))
    b0, b1 = form.block(ck.config)
    return {
        "tensor": "one scale",
        "channel": "a scale per row",
        "expert": "a scale per expert and output feature",
    }.get(how, f"a scale per {b1} columns" if b0 == 1 else f"{b0}×{b1} blocks")


def _rounding_only(side: _Side, r0: int, r1: int, w: torch.Tensor, ea: torch.Tensor, eb: torch.Tensor, options) -> int:
    """Of the entries of rows ``r0:r1`` that differ between a float side and a quantized one (``side``; ``w`` the
    float side's rows, ``ea`` / ``eb`` both as compared), how many are exactly what quantising the float side with
    the quantized side's own scales gives: rounding, not training. A bf16 base against its own FP8 or int8 copy
    differs almost everywhere, and each such entry reads as changed. The float side is quantised with each
    library's own arithmetic (:attr:`TensorForm.requant`): compressed-tensors in the weight's own dtype (w / scale,
    + zero point, each rounded to it, its FP8 as its integers; torch's dtype of w / scale, the wider where the scale
    is stored wider), ModelOpt's FP8 as w / scale in torch's result dtype of the two (a 0-dim scale does not widen a
    bf16 weight), bitsandbytes int8 as round(w × fl(127 / SCB)) in float32, AutoAWQ as round((w + zero × scale)
    / scale) in the weight's dtype with its float16 scale, NVFP4's E2M1 to the nearest value, ties to even, others
    round(w / step) in float32; act-order groups (:class:`ActOrder`) pick each column's scale. FP8 codes are clamped
    to their largest finite value first, as quantisers do."""
    form = side.form
    g_idx = act_groups(form)
    if side.view is not None:  # packed experts (or a 1-D tensor): rows r0:r1 of their 2-D view
        code, shape = side.view[r0:r1], tuple(side.x.shape)

        def image(value: float, scale: torch.Tensor, zero: torch.Tensor | None = None, divisor=form.divisor):
            like = torch.full((1, 1), value, dtype=code.dtype).expand(side.view.shape)  # (no whole-size tensor)
            return _stack_rows(like, shape, scale, side.how, r0, r1, divisor, zero)

    else:
        code, block = side.x[r0:r1], form.block(side.ck.config)
        how = check_scale(side.name, tuple(side.x.shape), form.scale, tuple(side.scale.shape), block)

        def image(value: float, scale: torch.Tensor, zero: torch.Tensor | None = None, divisor=form.divisor):
            return dequantize(torch.full_like(code, value), scale, how, block, r0, divisor, zero, None, g_idx)

    def zeros() -> torch.Tensor:  # each entry's zero point, laid out as its scale: the weight of a code of 0 is -zero
        return -image(0.0, torch.ones_like(side.scale), side.zero, 1.0)

    with torch.no_grad():
        if form.table is not None:  # to the nearest of the type's values (bitsandbytes: A × (1 / absmax))
            step = image(1.0, side.scale)  # each entry's multiplier (scale / divisor): the weight of a code of 1
            w32 = w.to(torch.float32)
            x = w32 / step if form.table == "e2m1" else w32 * (1.0 / step)
            del step
            return _rounding_only_table(x, code, form, ea, eb, options)
        if form.requant == "bnb":  # int8_vectorwise_quant: round(A * (127.0 / absmax)), float32
            x = w.to(torch.float32) * image(1.0, 127.0 / side.scale.to(torch.float32), None, 1.0)
        elif form.requant == "awq":  # from_linear: round((w + zeros * scales) / scales.half()), the layer's dtype
            dt, s = w.dtype, image(1.0, side.scale, None, 1.0)
            x = w + (zeros().to(dt) * s.to(dt) if side.zero is not None else 0.0)
            x = x / s.to(side.scale.dtype)  # (the stored scales: float16; float32 where w is float32 or bfloat16)
            del s
        elif form.requant == "modelopt":  # weight / scale in torch's result dtype (bf16 for a 0-dim float32 scale),
            dt = torch.result_type(w, side.scale)  # computed as torch's CPU kernels do: in float32, rounded once to dt
            wide = torch.promote_types(dt, torch.float32)
            x = (w.to(wide) / image(1.0, side.scale).to(wide)).to(dt)
        else:
            dt = torch.promote_types(w.dtype, side.scale.dtype) if form.requant == "native" else torch.float32
            x = w.to(dt) / image(1.0, side.scale).to(dt)
            if side.zero is not None:
                x += zeros().to(dt)
        if form.kind == "fp8":  # clamped, then rounded to nearest even, as a quantiser does
            big = torch.finfo(code.dtype).max
            again = x.clamp_(-big, big).to(code.dtype).to(torch.float32)
        else:
            again = torch.round(x.to(torch.float32)).clamp(*form.codes)
        del x
        same_code = again == code.to(torch.float32)
        del again
        return int(torch.count_nonzero(same_code & _moved(ea, eb, options)))


def _moved(ea: torch.Tensor, eb: torch.Tensor, options) -> torch.Tensor:
    """Where the two sides differ as the comparison sees them (at the chosen precision, where one is)."""
    if options is not None and options.precision is not None:
        from subnetviz.analysis.sparsity import PRECISIONS

        ea, eb = ea.to(PRECISIONS[options.precision]), eb.to(PRECISIONS[options.precision])
    return ea.to(torch.float32) != eb.to(torch.float32)


def _rounding_only_table(x: torch.Tensor, code: torch.Tensor, form: TensorForm, ea, eb, options) -> int:
    """:func:`_rounding_only` for codes that index a data type's values: ``x`` the float side over its block's
    scale. bitsandbytes' 4-bit (quantize_4bit): the nearest value by the midpoints of the sorted values, a tie to
    the lower (its argmin takes the first); E2M1 (NVFP4, FP4 experts): the nearest magnitude, a tie to the even
    code (0.25, 1.25, 2.5, 5 down; 0.75, 1.75, 3.5 up), then the sign, as compressed-tensors' ``cast_to_fp4`` and
    ModelOpt's ``NVFP4QTensor._cast_fp4`` round."""
    t = torch.from_numpy(form_table(form)).to(x.device)
    if form.table == "e2m1":
        again = _e2m1_nearest_even(x, t)
    else:
        ts = t[torch.argsort(t, stable=True)]
        again = ts[torch.bucketize(x.clamp(float(ts[0]), float(ts[-1])), (ts[:-1] + ts[1:]) / 2)]
    del x
    same_code = again == t[code.long()]
    del again
    return int(torch.count_nonzero(same_code & _moved(ea, eb, options)))


def _e2m1_nearest_even(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The E2M1 value nearest ``x`` (float32), a tie to the even code, as ``cast_to_fp4`` rounds: the magnitude's
    index among the midpoints of 0, 0.5, 1, 1.5, 2, 3, 4, 6 (a value on one goes to the lower), one up on the odd
    midpoints (0.75, 1.75, 3.5: the upper value is the even code); beyond 6, 6; the sign put back."""
    mags = table[:8]  # (codes 0..7: the magnitudes in order; 8..15 their negatives)
    mid = (mags[:-1] + mags[1:]) / 2
    a = x.abs()
    i = torch.bucketize(a, mid)
    i += torch.isin(a, mid[1::2])
    v = mags[i.clamp_(max=7)]
    del a, i
    return torch.where(x < 0, -v, v)


def _delta(shape: tuple[int, ...], step: int, pair_of, precision: str | None, device) -> torch.Tensor:
    """The float64 Δ (finetune − base) the spectra decompose, of a pair whose sides as compared ``pair_of(r0, r1)``
    gives (rows ``r0:r1``; ``r1`` None: whole), each first rounded to ``precision`` where one is chosen
    (:func:`_f64`). A matrix (``step`` > 0) is formed ``step`` rows at a time into one float64 array: 8 bytes an
    entry and one band's temporaries, under the 16 the spectra's memory check asks for
    (:func:`~subnetviz.analysis.update_pass.spectrum_bytes`). Formed whole, both sides in float64 and their
    difference held 24 bytes an entry, and two dequantised sides in float32 beside them 32. ``step`` 0: whole (a
    tensor that is not 2-D)."""
    if not step:
        ea, eb = pair_of(0, None)
        return _f64(eb, None, precision) - _f64(ea, None, precision)
    d = torch.empty(shape, dtype=torch.float64, device=device)
    for r0 in range(0, shape[0], step):
        ea, eb = pair_of(r0, r0 + step)
        if precision is not None:
            from subnetviz.analysis.sparsity import PRECISIONS

            ea, eb = ea.to(PRECISIONS[precision]), eb.to(PRECISIONS[precision])
        # widened in place (exact), then less the other side widened as it is read: the band's float64 copies of
        # both sides (_f64) are never formed, and the difference is the same float64 subtraction
        d[r0 : r0 + step].copy_(eb).sub_(ea)
        del ea, eb
    return d


def _f64(x: torch.Tensor, e: int | None, precision: str | None = None) -> torch.Tensor:
    """``x`` (or its slice ``e`` along dim 0) in float64, first rounded to the comparison ``precision`` where one
    is chosen (as :func:`~subnetviz.analysis.sparsity.compare_pair` casts both sides): the spectra decompose the Δ
    the update mask sees (with bf16 chosen, an fp32 pair's Δ below half a bf16 step was dense and full-rank while
    its mask held one entry)."""
    x = x if e is None else x[e]
    if precision is not None:
        from subnetviz.analysis.sparsity import PRECISIONS

        x = x.to(PRECISIONS[precision])
    return x.to(torch.float64)


def scale_values(ck, name: str, dev) -> torch.Tensor:
    """A weight's scales as values: stored as they are, or, stored as uint8 (E8M0, MXFP8's group scales),
    2^(s − 127) in float32 (exact); a byte 255 (NaN in E8M0), a NaN / Inf among float scales (which would make
    its whole block of weights NaN, on both sides alike where both hold it), or a scale of another dtype (integers:
    no scale format stores them) is refused, naming the checkpoint and where. bitsandbytes int8's scales (``SCB``)
    are read only beside row-major codes (:func:`_check_bnb_format`)."""
    s = ck.get(name, dev)
    if name.endswith(".SCB"):
        _check_bnb_format(ck, name)
    if s.dtype == torch.uint8:
        if bool((s == 255).any()):
            at = tuple(int(i) for i in (s == 255).nonzero()[0])
            raise CheckpointError(f"{ck.spec}: scale {name!r} holds the byte 255 (NaN in E8M0) at {at}.")
        from subnetviz.checkpoints.mxfp4 import E8M0_VALUES

        return torch.from_numpy(E8M0_VALUES).to(s.device)[s.long()]
    if not s.dtype.is_floating_point:  # (read as values, an int32 0.19 scale was 0: every weight of it 0)
        raise CheckpointError(
            f"{ck.spec}: scale {name!r} is {str(s.dtype)[6:]} {tuple(s.shape)}; expected float scales (or uint8 E8M0 "
            "exponents); cannot dequantise the weight it scales."
        )
    bad = ~torch.isfinite(s.to(torch.float32) if s.dtype.itemsize == 1 else s)  # (FP8 / E8M0 scales: widened)
    if bool(bad.any()):
        at = tuple(int(i) for i in bad.nonzero()[0])
        raise CheckpointError(
            f"{ck.spec}: scale {name!r} holds {int(bad.sum())} NaN/Inf value(s) (the first at {at}); the "
            "weights it scales would be NaN or Inf. Analyses need finite weights."
        )
    return s


# bitsandbytes' LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING, inverted: the int8 codes' layouts it has saved
_BNB_FORMATS = {0: "row", 1: "col32", 2: "col_turing", 3: "col_ampere"}


def _check_bnb_format(ck, scb: str) -> None:
    """Refuse bitsandbytes int8 codes saved in another layout than row-major: ``weight_format`` (a uint8 scalar
    beside ``weight`` and ``SCB``; absent, row) other than 0, as bitsandbytes' own loader refuses them. Older
    releases saved 2 (col_turing) or 3 (col_ampere) after a forward pass reordered the codes, which read as rows
    would be dequantised with the wrong row's scale."""
    fmt = f"{scb.removesuffix('.SCB')}.weight_format"
    if fmt not in ck.names:
        return
    v = ck.get(fmt, "cpu")
    value = int(v.reshape(-1)[0]) if v.numel() == 1 and not v.dtype.is_floating_point else None
    if value != 0:
        said = (
            "not one integer"
            if value is None
            else f"{value} ({_BNB_FORMATS.get(value, 'no format bitsandbytes knows')})"
        )
        raise CheckpointError(
            f"{ck.spec}: {fmt!r} is {said}; bitsandbytes int8 codes are read only in its row-major layout "
            "(weight_format 0, 'row'), the one bitsandbytes itself loads."
        )


def _log_kind(form: TensorForm, scale: torch.Tensor) -> tuple[str, str, str]:
    """The :class:`FormLog` kind of a quantized pair: ``("q", <what>, <how it is dequantised>)``."""
    if form.kind == "fp8":  # (packed experts' 3-D scales: one per expert and output feature, fbgemm's)
        return "q", "FP8", "code × scale[e, j]" if scale.dim() == 3 else "code × scale[i // bs, j // bs]"
    if form.divisor != 1.0:
        return "q", "bitsandbytes int8", "code × SCB[i] / 127"
    if form.table == "e2m1" and form.label.startswith(FP4_EXPERTS):
        return "q", FP4_EXPERTS, f"E2M1[code] × {form.scale.rsplit('.', 1)[-1]}[i, j // {form.group}]"
    if form.table == "e2m1":
        return "q", "NVFP4", f"E2M1[code] × weight_scale[i, j // {form.group}] (with its tensor-wide factor)"
    if form.table is not None:  # (absmax: one scale per block of a row's columns)
        t = form.table.upper()
        return "q", f"bitsandbytes {t}", f"{t}[code] × absmax[i, j // {form.group}]"
    group = f"[i, {form.act_order.name.rsplit('.', 1)[-1]}[j]]" if form.act_order else f"[i, j // {form.group}]"
    idx = "" if math.prod(scale.shape) == 1 else group if form.group else "[i]"
    code = f"(code − {form.zero.rsplit('.', 1)[-1]}{idx})" if form.zero else "code"  # (weight_zero_point, qzeros)
    return "q", form.label.removesuffix(" codes"), f"{code} × {form.scale.rsplit('.', 1)[-1]}{idx}"


def _layout_said(form: TensorForm, scales: str | None = None) -> str:
    """A stored form as the notes name it: its label, and for codes with a scale how the scale is laid out
    (``scales``: an FP8 form's, :func:`_scales_said`)."""
    if form.kind == "fp8" and scales:
        return f"{form.label} ({scales})"
    if form.kind != "int8":
        return form.label
    per = f"a scale per {form.group} columns" if form.group else "a scale per row or tensor"
    order = ", in act order (weight_g_idx)" if form.act_order else ""
    return f"{form.label} ({per}{order}{', zero points' if form.zero else ''})"
