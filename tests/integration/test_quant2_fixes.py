"""Quantized checkpoint readers, second review (quant2): each layout read as its own library reads it, or refused by
name.

Proves, each number against an independent float64 NumPy dequantisation:

- FineGrainedFP8's FP4 experts (``expert_dtype: "fp4"``: int8 weights, two E2M1 codes a byte, low nibble first, a
  float or E8M0 scale per 32 codes of a row) are read as codes in the weight's shape and compared as weights,
  equal to transformers' own ``Fp8Dequantize``; an integer weight no form reads is refused by name (before: filed
  as a buffer, "not counted in the weight sparsity", and the headline said 0 changed);
- a NaN / Inf float scale is refused when read, naming the checkpoint that holds it and the scale (before: accepted
  where both sides shared it, 0 changed; and the finetune was blamed for the base's);
- a compressed-tensors FP8 copy of a bf16 base is 100 % rounding (before: ~97 %: it was requantised in float32,
  compressed-tensors divides in the weight's dtype), and an int8 one with float32 scales too;
- bitsandbytes int8 codes in another layout than rows (``weight_format`` ≠ 0) are refused by name;
- static activation scales are listed with the scales, not counted as weights;
- FP8 scales under ``.qscale_weight`` / ``.scale`` (renamed by transformers' loader) are read, not in Inkling2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from subnetviz.analysis.quant import checkpoint_forms, tensor_forms, weight_rows
from subnetviz.analysis.updates import SpectraOptions, analyze_updates
from subnetviz.checkpoints import open_checkpoint
from subnetviz.errors import CheckpointError
from tests.ckpt_fixtures import bnb_int8, fp8_quantize, one_layer_llama_config, write_config_folder

NO_SPECTRA = SpectraOptions(enabled=False)
UP = "model.layers.0.mlp.up_proj"
EXPERT = "model.layers.0.mlp.experts.0.gate_proj"


def _analyze(base, ft):
    return analyze_updates(str(base), [str(ft)], spectra=NO_SPECTRA).reports[0]


# --- FP4 experts of a FineGrainedFP8 checkpoint ------------------------------------------------------------------
def _e2m1(code: np.ndarray) -> np.ndarray:
    """E2M1 values from the format's definition (sign, 2 exponent bits with bias 1, 1 mantissa bit), float64."""
    sign = np.where(code & 8, -1.0, 1.0)
    e, m = (code >> 1) & 3, (code & 1).astype(np.float64)
    return sign * np.where(e == 0, m * 0.5, np.ldexp(1.0 + m / 2, e.astype(np.int64) - 1))


def _fp4_reference(packed: torch.Tensor, exps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes (rows, 2·bytes), float64 weights) of int8 bytes, the first code of a byte in its low nibble, with E8M0
    exponents ``exps`` per 32 codes of a row: w = E2M1[code] × 2^(e − 127)."""
    u = packed.view(torch.uint8).numpy().astype(np.int64)
    codes = np.empty((u.shape[0], u.shape[1] * 2), np.int64)
    codes[:, 0::2], codes[:, 1::2] = u & 0xF, u >> 4
    scale = np.repeat(np.ldexp(1.0, exps.astype(np.int64) - 127), 32, axis=1)[:, : codes.shape[1]]
    return codes, _e2m1(codes) * scale


def _fp4_quant(expert_dtype_at: str = "quantization_config") -> dict:
    qc = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [16, 16], "scale_fmt": "ue8m0"}
    config = one_layer_llama_config(qc)
    if expert_dtype_at == "quantization_config":
        qc["expert_dtype"] = "fp4"
    else:  # (DeepSeek-V4's config keeps it at the top level; transformers moves it)
        config["expert_dtype"] = "fp4"
    return config


def _fp4_folder(folder, packed, exps, config, *, scale_name="weight_scale_inv", scale_dtype="e8m0", extra=None):
    if scale_dtype == "e8m0":  # (saved as F8_E8M0, as scale_fmt "ue8m0" saves it)
        scale = torch.from_numpy(exps.astype(np.uint8)).view(torch.float8_e8m0fnu)
    else:
        scale = torch.from_numpy(np.ldexp(1.0, exps - 127).astype(np.float32))
    sd = {f"{EXPERT}.weight": packed, f"{EXPERT}.{scale_name}": scale, **(extra or {})}
    return write_config_folder(folder, sd, config)


def _fp4_codes(rows=64, cols=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    packed = torch.randint(-128, 128, (rows, cols // 2), dtype=torch.int8, generator=g)
    exps = np.random.default_rng(seed).integers(115, 125, (rows, math.ceil(cols / 32)))
    return packed, exps


@pytest.mark.parametrize(
    "scale_name,scale_dtype,at",
    [
        ("weight_scale_inv", "e8m0", "quantization_config"),
        ("weight_scale_inv", "float32", "quantization_config"),
        ("scale", "e8m0", "config"),  # (DeepSeek-V4-Flash: `.scale`, expert_dtype at the top level)
    ],
)
def test_fp4_experts_are_read_as_transformers_dequantises_them(tmp_path, scale_name, scale_dtype, at):
    """The int8 bytes are listed as (rows, 2·bytes) codes, the scale beside them as a scale; the weights are the
    float64 reference (exact in float32) and transformers' own Fp8Dequantize, bit for bit."""
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    packed, exps = _fp4_codes()
    folder = _fp4_folder(tmp_path / "fp4", packed, exps, _fp4_quant(at), scale_name=scale_name, scale_dtype=scale_dtype)
    ck = open_checkpoint(folder)
    forms = checkpoint_forms(ck)
    name = f"{EXPERT}.weight"
    assert tuple(ck.meta(name).shape) == (64, 96) and forms[name].label == "FP4 (E2M1) codes"
    assert forms[f"{EXPERT}.{scale_name}"].kind == "scale"
    got = weight_rows(ck, name, forms[name], ck.get(name))
    codes, ref = _fp4_reference(packed, exps)
    assert torch.equal(ck.get(name).to(torch.int64), torch.from_numpy(codes))
    assert got.dtype == torch.float32 and np.array_equal(got.numpy().astype(np.float64), ref)
    stored_scale = torch.from_numpy(exps.astype(np.uint8))  # (transformers' own path for E8M0 bytes)
    theirs = Fp8Dequantize(None)._dequantize_one(packed, stored_scale, output_dtype=torch.float32)
    assert torch.equal(got, theirs)


def test_fp4_experts_changed_codes_and_a_changed_scale_are_counted_as_weights(tmp_path):
    """A finetune with 40 changed codes and one changed scale: changed, changed_codes and max_abs_delta are those of
    the float64 reference, and the expert is a weight (before: a buffer, and the report said 0 changed)."""
    packed, exps = _fp4_codes()
    config = _fp4_quant()
    base = _fp4_folder(tmp_path / "base", packed, exps, config)
    codes_a, ref_a = _fp4_reference(packed, exps)
    rng = np.random.default_rng(1)
    codes_b = codes_a.copy()
    for i in rng.choice(codes_b.size, 40, replace=False):
        r, c = divmod(int(i), codes_b.shape[1])
        while _e2m1(codes_b[r, c]) == _e2m1(codes_a[r, c]):  # (a value that differs: not +0 for −0)
            codes_b[r, c] = rng.integers(0, 16)
    exps_b = exps.copy()
    exps_b[5, 1] += 1
    packed_b = torch.from_numpy((codes_b[:, 0::2] | (codes_b[:, 1::2] << 4)).astype(np.uint8)).view(torch.int8)
    ft = _fp4_folder(tmp_path / "ft", packed_b, exps_b, config)
    _, ref_b = _fp4_reference(packed_b, exps_b)

    rep = _analyze(base, ft)
    r = rep.tensors.set_index("name").loc[f"{EXPERT}.weight"]
    assert r["stored_as"] == "FP4 (E2M1) codes"
    assert r["changed"] == int((ref_a != ref_b).sum()) > 40
    assert r["changed_codes"] == int((codes_a != codes_b).sum()) == 40
    assert r["max_abs_delta"] == pytest.approx(float(np.abs(ref_b - ref_a).max()), rel=1e-6)
    assert f"{EXPERT}.weight" not in set(rep.buffers["name"])
    assert rep.changed == r["changed"] and rep.numel == 64 * 96 + 64


def test_a_bf16_base_against_its_fp4_copy_counts_rounding(tmp_path):
    """A bf16 base against an FP4 copy quantised from it (each entry the nearest E2M1 value at its block's scale,
    no ties) plus 25 codes moved elsewhere: changed is the reference's (at bf16) and the note's rounding count is
    the changed entries whose code is the nearest one."""
    rng = np.random.default_rng(0)
    w64 = rng.normal(0, 0.02, (64, 96))
    table, values = _e2m1(np.arange(16)), np.unique(_e2m1(np.arange(16)))  # (values: −0 and +0 are one)
    while True:  # entries halfway between two E2M1 values (a bf16 can be) moved one bf16 step, so none is a tie
        w = torch.from_numpy(w64).to(torch.bfloat16)
        w64 = w.double().numpy()
        exps = np.ceil(np.log2(np.abs(w64).reshape(64, 3, 32).max(2) / 6.0)).astype(np.int64) + 127
        x = w64 / np.repeat(np.ldexp(1.0, exps - 127), 32, axis=1)
        two = np.sort(np.abs(x[..., None] - values), axis=-1)[..., :2]
        tie = two[..., 0] == two[..., 1]
        if not tie.any():
            break
        w64 = np.where(tie, w64 * (1 + 2.0**-7), w64)
    nearest = np.abs(x[..., None] - table).argmin(-1)
    codes = nearest.copy()
    for i in rng.choice(codes.size, 25, replace=False):  # 25 codes that are not the nearest: training
        r, c = divmod(int(i), 96)
        while table[codes[r, c]] == table[nearest[r, c]]:
            codes[r, c] = rng.integers(0, 16)
    packed = torch.from_numpy((codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)).view(torch.int8)
    base = write_config_folder(tmp_path / "base", {f"{EXPERT}.weight": w}, one_layer_llama_config())
    ft = _fp4_folder(tmp_path / "ft", packed, exps, _fp4_quant())
    _, ref = _fp4_reference(packed, exps)
    differs = torch.from_numpy(ref).to(torch.bfloat16).double().numpy() != w64  # (compared at the base's bf16)
    rounding = int((differs & (table[codes] == table[nearest])).sum())

    rep = _analyze(base, ft)
    r = rep.tensors.set_index("name").loc[f"{EXPERT}.weight"]
    assert r["stored_as"] == "float -> FP4 (E2M1) codes" and r["changed"] == int(differs.sum())
    note = next(n for n in rep.notes if n.startswith("Stored forms differ"))
    assert f"Of their {int(differs.sum()):,} changed entries, {rounding:,} (" in note
    assert int(differs.sum()) - rounding == 25


@pytest.mark.parametrize("case", ["no expert_dtype", "packed experts", "no scale"])
def test_an_integer_weight_no_form_reads_is_refused_by_name(tmp_path, case):
    """An int8 weight under quant_method fp8 that is not FP4 experts with their scale: one line naming it (before:
    a buffer, left out of the weight sparsity without a word)."""
    packed, exps = _fp4_codes()
    config = _fp4_quant()
    if case == "no expert_dtype":
        del config["quantization_config"]["expert_dtype"]
        folder, name = _fp4_folder(tmp_path / "x", packed, exps, config), f"{EXPERT}.weight"
    elif case == "packed experts":
        name = "model.layers.0.mlp.experts.gate_up_proj"
        extra = {name: torch.zeros(4, 128, 32, dtype=torch.int8), f"{name}_scale_inv": torch.ones(4, 128, 2)}
        folder = _fp4_folder(tmp_path / "x", packed, exps, config, extra=extra)
    else:
        name = f"{EXPERT}.weight"
        folder = write_config_folder(tmp_path / "x", {name: packed}, config)
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' is stored as int8") as err:
        _analyze(folder, folder)
    assert "\n" not in str(err.value) and str(folder) in str(err.value)


def test_an_fp4_scale_of_the_wrong_shape_is_one_line(tmp_path):
    packed, exps = _fp4_codes()
    folder = _fp4_folder(tmp_path / "x", packed, exps[:, :2], _fp4_quant())
    with pytest.raises(CheckpointError, match=r"weight_scale_inv' to be \(64, 3\).*found \(64, 2\)") as err:
        open_checkpoint(folder)
    assert "\n" not in str(err.value)


# --- non-finite scales -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["base", "ft", "both"])
def test_a_non_finite_fp8_scale_is_refused_naming_its_checkpoint(tmp_path, bad, where):
    """A NaN / Inf block scale makes its whole block NaN: refused when read, naming the checkpoint that holds it
    (the base where both do) and the scale. Before: both sides alike were accepted with 0 changed, and a base's
    was blamed on the finetune."""
    w = torch.from_numpy(np.random.default_rng(0).normal(0, 0.02, (64, 64)).astype(np.float32))
    codes, scale = fp8_quantize(w, (16, 16))
    config = one_layer_llama_config({"quant_method": "fp8", "weight_block_size": [16, 16]})
    broken = scale.clone()
    broken[1, 2] = bad
    sides = {}
    for side in ("base", "ft"):
        s = broken if where in (side, "both") else scale
        sd = {f"{UP}.weight": codes, f"{UP}.weight_scale_inv": s}
        sides[side] = write_config_folder(tmp_path / side, sd, config)
    with pytest.raises(CheckpointError) as err:
        _analyze(sides["base"], sides["ft"])
    msg = str(err.value)
    named = sides["ft" if where == "ft" else "base"]
    assert msg.startswith(f"{named}: scale '{UP}.weight_scale_inv' holds 1 NaN/Inf value(s) (the first at (1, 2));")
    assert "\n" not in msg


def test_a_nan_scb_is_refused_naming_the_base_that_holds_it(tmp_path):
    w = torch.from_numpy(np.random.default_rng(0).normal(0, 0.02, (64, 64)).astype(np.float32))
    codes, scb = bnb_int8(w)
    bad = scb.clone()
    bad[3] = float("nan")
    config = one_layer_llama_config({"quant_method": "bitsandbytes", "load_in_8bit": True})
    base = write_config_folder(tmp_path / "base", {f"{UP}.weight": codes, f"{UP}.SCB": bad}, config)
    ft = write_config_folder(tmp_path / "ft", {f"{UP}.weight": codes, f"{UP}.SCB": scb}, config)
    with pytest.raises(CheckpointError) as err:
        _analyze(base, ft)
    assert str(err.value).startswith(f"{base}: scale '{UP}.SCB' holds 1 NaN/Inf value(s) (the first at (3,));")


# --- compressed-tensors FP8 (and int8) requantised as compressed-tensors quantises --------------------------------
def _ct_config(kind: str, strategy: str) -> dict:
    weights = {"num_bits": 8, "type": kind, "strategy": strategy, "symmetric": True, "dynamic": False}
    qc = {
        "quant_method": "compressed-tensors",
        "format": "float-quantized" if kind == "float" else "int-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}},
    }
    return one_layer_llama_config(qc)


@pytest.mark.parametrize(
    "kind,strategy,scale_dtype",
    [("float", "channel", torch.bfloat16), ("float", "tensor", torch.bfloat16), ("int", "channel", torch.float32)],
)
def test_a_compressed_tensors_copy_of_a_bf16_base_is_all_rounding(tmp_path, kind, strategy, scale_dtype):
    """compressed-tensors' own quantize (x / scale in torch's dtype of the two: bf16 for FP8 with bf16 scales,
    float32 for int8 with float32 ones; clamp; cast) of a bf16 weight: every changed entry is rounding. changed is
    the float64 reference's, compared at bf16. Before: 96.8 % (FP8 per channel), 98.6 % (per tensor), and below
    100 % for int8 with float32 scales (divided in bf16 by the scale rounded to bf16)."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import quantize

    w = torch.from_numpy(np.random.default_rng(0).normal(0, 0.02, (256, 256)).astype(np.float32)).to(torch.bfloat16)
    top, dtype = (448.0, torch.float8_e4m3fn) if kind == "float" else (127.0, torch.int8)
    amax = w.float().abs().amax(1, keepdim=True) if strategy == "channel" else w.float().abs().amax().reshape(1)
    scale = (amax / top).to(scale_dtype)
    args = QuantizationArgs(num_bits=8, type=kind, strategy=strategy, symmetric=True)
    codes = quantize(w, scale, None, args, dtype=dtype)
    base = write_config_folder(tmp_path / "base", {f"{UP}.weight": w}, one_layer_llama_config())
    sd = {f"{UP}.weight": codes, f"{UP}.weight_scale": scale}
    ft = write_config_folder(tmp_path / "ft", sd, _ct_config(kind, strategy))
    deq = codes.to(torch.float64).numpy() * scale.to(torch.float64).numpy()
    changed = int((torch.from_numpy(deq).to(torch.bfloat16) != w).sum())

    rep = _analyze(base, ft)
    assert rep.tensors.set_index("name").loc[f"{UP}.weight", "changed"] == changed > 1000
    note = next(n for n in rep.notes if n.startswith("Stored forms differ"))
    assert f"Of their {changed:,} changed entries, {changed:,} (100.00%)" in note


# --- bitsandbytes int8's weight_format ---------------------------------------------------------------------------
def _bnb_folder(folder, codes, scb, fmt):
    sd = {f"{UP}.weight": codes, f"{UP}.SCB": scb, f"{UP}.weight_format": fmt}
    return write_config_folder(
        folder, sd, one_layer_llama_config({"quant_method": "bitsandbytes", "load_in_8bit": True})
    )


@pytest.mark.parametrize(
    "fmt,said",
    [
        (torch.tensor(2, dtype=torch.uint8), r"2 \(col_turing\)"),
        (torch.tensor(3, dtype=torch.uint8), r"3 \(col_ampere\)"),
        (torch.tensor(7, dtype=torch.uint8), r"7 \(no format bitsandbytes knows\)"),
        (torch.tensor([0, 0], dtype=torch.uint8), "not one integer"),
    ],
)
def test_bnb_int8_codes_in_another_layout_than_rows_are_refused(tmp_path, fmt, said):
    w = torch.from_numpy(np.random.default_rng(0).normal(0, 0.02, (64, 64)).astype(np.float32))
    codes, scb = bnb_int8(w)
    folder = _bnb_folder(tmp_path / "x", codes, scb, fmt)
    with pytest.raises(CheckpointError, match=rf"'{UP}\.weight_format' is {said}; .*row-major") as err:
        _analyze(folder, folder)
    assert "\n" not in str(err.value)


def test_bnb_int8_row_codes_are_read(tmp_path):
    """weight_format 0 (row): read, w = code × SCB / 127; changed is the float64 reference's."""
    w = torch.from_numpy(np.random.default_rng(0).normal(0, 0.02, (64, 64)).astype(np.float32))
    codes, scb = bnb_int8(w)
    moved = codes.clone()
    moved[2, :5] += 1
    row = torch.tensor(0, dtype=torch.uint8)
    base, ft = _bnb_folder(tmp_path / "b", codes, scb, row), _bnb_folder(tmp_path / "f", moved, scb, row)
    ref = lambda c: c.double().numpy() * scb.double().numpy()[:, None] / 127  # noqa: E731
    rep = _analyze(base, ft)
    assert rep.tensors.set_index("name").loc[f"{UP}.weight", "changed"] == int((ref(codes) != ref(moved)).sum()) == 5


# --- static activation scales ------------------------------------------------------------------------------------
def test_static_activation_scales_are_listed_with_the_scales(tmp_path):
    """FineGrainedFP8's activation_scale (a linear's) and its FP8 experts' *_activation_scale (one per expert): a
    changed calibration is a changed scale, not a changed weight (before: counted as parameters)."""
    w = torch.from_numpy(np.random.default_rng(0).normal(0, 0.02, (64, 64)).astype(np.float32))
    codes, scale = fp8_quantize(w, (16, 16))
    qc = {"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": [16, 16]}
    act = {
        f"{UP}.activation_scale": torch.tensor(0.02),
        "model.layers.0.mlp.experts.gate_up_proj_activation_scale": torch.full((4,), 0.5),
        "model.layers.0.mlp.experts.down_proj_activation_scale": torch.full((4,), 0.25),
    }
    sides = {}
    for side, k in (("base", 1.0), ("ft", 1.5)):
        sd = {f"{UP}.weight": codes, f"{UP}.weight_scale_inv": scale, **{n: v * k for n, v in act.items()}}
        sides[side] = write_config_folder(tmp_path / side, sd, one_layer_llama_config(qc))
    rep = _analyze(sides["base"], sides["ft"])
    b = rep.buffers.set_index("name")
    assert set(act) <= set(b.index) and (b.loc[list(act), "group"] == "scales").all()
    assert b.loc[list(act), "changed"].tolist() == [1, 4, 4]
    assert not set(act) & set(rep.tensors["name"])
    assert rep.numel == 64 * 64 + 64 and rep.changed == 0


# --- FP8 scales under the names transformers renames -------------------------------------------------------------
@pytest.mark.parametrize("scale_name", ["qscale_weight", "scale"])
def test_fp8_scales_under_renamed_names_are_read(tmp_path, scale_name):
    """Mistral Large's `.qscale_weight` and DeepSeek-V4-Flash's `.scale` beside an FP8 `.weight` (transformers'
    loader renames both to weight_scale_inv): read as its block scales; changed is the float64 reference's. Before:
    refused, "has no '..._scale_inv' or '..._scale' beside it"."""
    w = torch.from_numpy(np.random.default_rng(0).normal(0, 0.02, (64, 64)).astype(np.float32))
    codes, scale = fp8_quantize(w, (16, 16))
    moved = codes.clone()
    moved.view(torch.uint8)[7, 3:9] ^= 1
    assert not moved.float().isnan().any()
    scale_b = scale.clone()
    scale_b[3, 0] *= 2
    config = one_layer_llama_config({"quant_method": "fp8", "weight_block_size": [16, 16]})
    base = write_config_folder(tmp_path / "b", {f"{UP}.weight": codes, f"{UP}.{scale_name}": scale}, config)
    ft = write_config_folder(tmp_path / "f", {f"{UP}.weight": moved, f"{UP}.{scale_name}": scale_b}, config)
    ref = lambda c, s: c.double().numpy() * np.kron(s.double().numpy(), np.ones((16, 16)))  # noqa: E731

    rep = _analyze(base, ft)
    r = rep.tensors.set_index("name").loc[f"{UP}.weight"]
    assert r["changed"] == int((ref(codes, scale) != ref(moved, scale_b)).sum()) > 6 and r["changed_codes"] == 6
    assert rep.buffers.set_index("name").loc[f"{UP}.{scale_name}", "group"] == "scales"


def test_inkling2_scale_tensors_are_not_read_as_fp8_scales(tmp_path):
    """transformers keeps Inkling2's `.scale` tensors (norms) out of its rename: so does the reader."""
    codes, scale = fp8_quantize(torch.ones(64, 64), (16, 16))
    config = one_layer_llama_config({"quant_method": "fp8", "weight_block_size": [16, 16]})
    folder = write_config_folder(tmp_path / "x", {f"{UP}.weight": codes, f"{UP}.scale": scale}, config)
    ck = open_checkpoint(folder)
    metas = {n: ck.meta(n) for n in ck.names}
    assert tensor_forms(metas, ck.config)[f"{UP}.weight"].scale == f"{UP}.scale"
    with pytest.raises(CheckpointError, match=rf"'{UP}\.weight' is stored as float8_e4m3fn but has no .*beside it"):
        tensor_forms(metas, {**ck.config, "model_type": "inkling2"})


def test_two_fp8_quantizations_under_qscale_names_are_one_architecture(tmp_path):
    """Mistral's `.qscale_weight` in blocks of 16 against one in blocks of 32: scales of two shapes are two
    quantizations of one model (as `weight_scale_inv` ones are), each side dequantised with its own; they were an
    alignment error of mismatched shapes."""
    w = torch.from_numpy(np.random.default_rng(1).normal(0, 0.02, (64, 64)).astype(np.float32))
    config = one_layer_llama_config({"quant_method": "fp8", "weight_block_size": [16, 16]})
    (c16, s16), (c32, s32) = fp8_quantize(w, (16, 16)), fp8_quantize(w, (32, 32))
    base = write_config_folder(tmp_path / "b", {f"{UP}.weight": c16, f"{UP}.qscale_weight": s16}, config)
    config32 = one_layer_llama_config({"quant_method": "fp8", "weight_block_size": [32, 32]})
    ft = write_config_folder(tmp_path / "f", {f"{UP}.weight": c32, f"{UP}.qscale_weight": s32}, config32)
    ref = lambda c, s, b: c.double().numpy() * np.kron(s.double().numpy(), np.ones((b, b)))  # noqa: E731

    r = _analyze(base, ft).tensors.set_index("name").loc[f"{UP}.weight"]
    assert r["changed"] == int((ref(c16, s16, 16) != ref(c32, s32, 32)).sum())
