"""Quantized checkpoints, third review (quant3): act order, each library's rounding, malformed compressed-tensors.

Proves, each against an independent reference (float64 NumPy, or the quantization library's own functions):

- compressed-tensors act-order weights (llm-compressor's GPTQ ``actorder: "group"``: ``weight_g_idx`` beside
  ``weight_packed``) are dequantised w = (code − zero[i, g[j]]) × scale[i, g[j]], the published spec
  (compressed-tensors ≤ 0.12 ``_process_quantization``: columns sorted by group, each group (de)quantised with its
  scale, then put back; the fixtures are made so with compressed-tensors' own ``quantize`` / ``dequantize`` and
  ``pack_to_int32``). Before, every path used scale[i, j // g]: 2,558 of 4,096 weights wrong, a bf16 base against
  its own act-order copy 65 % "rounding", a changed group scale counted under columns 0–15. Two sides grouped
  differently are compared as weights (the same weights under relabelled groups: 0 changed); a malformed g_idx is
  one line naming the checkpoint and the tensor.
- the "rounding only" share requantises as each library does: bitsandbytes int8 as ``int8_vectorwise_quant``
  (round(A × (127 / absmax)), its own codes here) and AutoAWQ GEMM as ``WQLinear_GEMM.from_linear`` ((w + zero ×
  scale) / scale in float16, its own packing here): 100 % of a float base's own copy (before: 99.97 %, 99.6 %).
- a compressed-tensors int weight whose ``weight_scale`` fits no layout is refused, naming the checkpoint, the tensor,
  the scale and its shape (before: compared as codes only, a changed scale counted 0, or refused naming neither).
- compressed-tensors' ``block_structure: "64x64"`` is read as compressed-tensors reads it; a malformed one is one
  line naming ``config_groups.<group>.weights.block_structure``.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

from subnetviz.analysis.quant import block_size, checkpoint_forms, effective, scale_values, weight_rows, zero_values
from subnetviz.analysis.updates import analyze_updates
from subnetviz.checkpoints import open_checkpoint
from subnetviz.errors import CheckpointError
from tests.ckpt_fixtures import one_layer_llama_config, write_config_folder

P = "model.layers.0.mlp.up_proj"
R, C, G = 64, 64, 16


def _rounding(notes: list[str]) -> tuple[int, int]:
    """(changed, rounding only) of the one 'Stored forms differ' note of a float side against a quantized one."""
    note = next(n for n in notes if "Stored forms differ" in n)
    found = re.search(r"Of their ([\d,]+) changed entries, ([\d,]+) \(", note)
    assert found, note
    return int(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))


# --- 1. compressed-tensors act order ------------------------------------------------------------------------------
def _ct_quant(symmetric: bool = True) -> dict:
    weights = {"num_bits": 4, "type": "int", "symmetric": symmetric, "strategy": "group", "group_size": G}
    weights |= {"actorder": "group", "dynamic": False}
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}},
    }


def _args(symmetric: bool):
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(num_bits=4, type="int", symmetric=symmetric, strategy="group", group_size=G)


def _act_order(w: torch.Tensor, g_idx: torch.Tensor, symmetric: bool = True):
    """(codes int8, scale bf16 (R, C/G), zero int8 or None) of ``w`` quantized in act order as the spec does it with
    compressed-tensors' own ``quantize``: the columns sorted by group, quantized in groups of G, put back."""
    from compressed_tensors.quantization.lifecycle.forward import quantize

    perm = torch.argsort(g_idx, stable=True)
    wp = w[:, perm]
    groups = wp.float().reshape(R, -1, G)
    if symmetric:
        scale = (groups.abs().amax(-1) / 7.5).to(torch.bfloat16)
        zero = torch.zeros(scale.shape, dtype=torch.int8)
    else:
        lo, hi = groups.amin(-1).clamp(max=0), groups.amax(-1).clamp(min=0)
        scale = ((hi - lo) / 15).to(torch.bfloat16)
        zero = (-8 - torch.round(lo / scale.float())).clamp(-8, 7).to(torch.int8)
    codes_p = quantize(wp, scale, zero, _args(symmetric))
    codes = codes_p[:, torch.argsort(perm)].to(torch.int8)
    return codes, scale, None if symmetric else zero


def _theirs(codes: torch.Tensor, scale, zero, g_idx: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    """compressed-tensors' own dequantisation in act order (sorted by group, dequantised, put back), in bf16."""
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    perm = torch.argsort(g_idx, stable=True)
    z = zero if zero is not None else torch.zeros(scale.shape, dtype=torch.int8)
    out = dequantize(codes[:, perm].to(torch.bfloat16), scale, z, _args(symmetric))
    return out[:, torch.argsort(perm)]


def _reference(codes, scale, zero, g_idx) -> np.ndarray:
    """float64: (code − zero[i, g[j]]) × scale[i, g[j]]."""
    g = g_idx.long().numpy()
    c = codes.numpy().astype(np.float64)
    if zero is not None:
        c = c - zero.numpy().astype(np.float64)[:, g]
    return c * scale.float().numpy().astype(np.float64)[:, g]


def _write_ct(folder, codes, scale, zero, g_idx, symmetric: bool = True):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    sd = {
        f"{P}.weight_packed": pack_to_int32(codes, 4),
        f"{P}.weight_scale": scale,
        f"{P}.weight_shape": torch.tensor([R, C]),
    }
    if g_idx is not None:
        sd[f"{P}.weight_g_idx"] = g_idx
    if zero is not None:
        sd[f"{P}.weight_zero_point"] = pack_to_int32(zero, 4, packed_dim=0)
    return write_config_folder(folder, sd, one_layer_llama_config(_ct_quant(symmetric)))


def _groups(seed: int) -> torch.Tensor:
    """A random act order: column perm[k] is in group k // G (int32, as llm-compressor saves it)."""
    perm = torch.randperm(C, generator=torch.Generator().manual_seed(seed))
    g = torch.empty(C, dtype=torch.int32)
    g[perm] = torch.arange(C, dtype=torch.int32) // G
    return g


@pytest.fixture(scope="module")
def ao(tmp_path_factory):
    """A bf16 weight, and its W4A16 act-order copies (symmetric, and asymmetric with zero points)."""
    root = tmp_path_factory.mktemp("ct-actorder")
    torch.manual_seed(0)
    w = (torch.randn(R, C) * 0.02).to(torch.bfloat16)
    g_idx = _groups(1)
    out = {
        "w": w,
        "g_idx": g_idx,
        "bf16": write_config_folder(root / "bf16", {f"{P}.weight": w}, one_layer_llama_config()),
    }
    for sym in (True, False):
        codes, scale, zero = _act_order(w, g_idx, sym)
        tag = "sym" if sym else "asym"
        out[tag] = (codes, scale, zero)
        out[f"{tag}_folder"] = _write_ct(root / tag, codes, scale, zero, g_idx, sym)
    return out


@pytest.mark.parametrize("tag", ["sym", "asym"])
def test_act_order_weights_are_dequantised_with_each_column_s_group(ao, tag):
    codes, scale, zero = ao[tag]
    ck = open_checkpoint(ao[f"{tag}_folder"])
    form = checkpoint_forms(ck)[f"{P}.weight"]
    assert torch.equal(ck.get(f"{P}.weight"), codes)  # (read as compressed-tensors packed them)
    ref = _reference(codes, scale, zero, ao["g_idx"])
    sc, zp = scale_values(ck, form.scale, "cpu"), zero_values(ck, form, "cpu")
    ours = effective(ck.get(f"{P}.weight"), sc, form, (128, 128), name=P, zero=zp)
    assert np.array_equal(ours.double().numpy(), ref)  # exact in float32 (4-bit codes × bf16 scales)
    assert torch.equal(ours.to(torch.bfloat16), _theirs(codes, scale, zero, ao["g_idx"], tag == "sym"))
    # the series and the One matrix view read row bands through weight_rows: the same weights
    bands = torch.cat(
        [weight_rows(ck, f"{P}.weight", form, ck.get(f"{P}.weight"), r0, r0 + 5) for r0 in range(0, R, 5)]
    )
    assert np.array_equal(bands.double().numpy(), ref)


@pytest.mark.parametrize("tag", ["sym", "asym"])
def test_a_bf16_base_against_its_act_order_copy_is_all_rounding(ao, tag):
    """Every entry that differs is the bf16 weight quantized in act order: changed is the float64 reference's (at
    bf16) and the note counts all of them as rounding (before: 65 %)."""
    codes, scale, zero = ao[tag]
    a = analyze_updates(str(ao["bf16"]), [str(ao[f"{tag}_folder"])], labels=["q"])
    t = a.reports[0].tensors.set_index("name")
    ref = torch.from_numpy(_reference(codes, scale, zero, ao["g_idx"])).to(torch.bfloat16)
    expected = int((ref != ao["w"]).sum())
    assert t.loc[f"{P}.weight", "changed"] == expected > 0
    assert _rounding(a.notes) == (expected, expected)
    assert any("weight_g_idx" in n and "act order" in n for n in a.notes), a.notes


def test_a_changed_group_scale_moves_that_group_s_columns(ao, tmp_path):
    codes, scale, zero = ao["sym"]
    g = ao["g_idx"].long()
    scale2 = scale.clone()
    scale2[:, 0] *= 2
    ft = _write_ct(tmp_path / "s2", codes, scale2, None, ao["g_idx"])
    a = analyze_updates(str(ao["sym_folder"]), [str(ft)], labels=["s2"])
    rep = a.reports[0]
    t = rep.tensors.set_index("name")
    moved = (codes != 0) & (g == 0)[None, :]  # float64 reference: nonzero codes of group 0's columns
    assert t.loc[f"{P}.weight", "changed"] == int(moved.sum()) > 0 and t.loc[f"{P}.weight", "changed_codes"] == 0
    assert torch.equal(rep.masks[f"{P}.weight"], moved)
    assert any("weight_g_idx[j]" in n for n in a.notes), a.notes  # (the rule the note gives)


def test_two_sides_grouped_differently_are_compared_as_weights(ao, tmp_path):
    """The same weights with the groups relabelled (g -> 3 − g, the scale columns reversed to match): no weight
    changed, although every stored scale column and g_idx entry did. Another act order of the same float weight:
    changed is the float64 references' difference."""
    codes, scale, _ = ao["sym"]
    g = ao["g_idx"]
    relabelled = _write_ct(tmp_path / "relabel", codes, scale.flip(1).contiguous(), None, (C // G - 1 - g).int())
    a = analyze_updates(str(ao["sym_folder"]), [str(relabelled)], labels=["r"])
    t = a.reports[0].tensors.set_index("name")
    assert t.loc[f"{P}.weight", "changed"] == 0
    assert any("grouped differently (weight_g_idx)" in n for n in a.notes), a.notes

    g2 = _groups(7)
    codes2, scale2, _ = _act_order(ao["w"], g2)
    other = _write_ct(tmp_path / "other", codes2, scale2, None, g2)
    a = analyze_updates(str(ao["sym_folder"]), [str(other)], labels=["o"])
    t = a.reports[0].tensors.set_index("name")
    ref_a, ref_b = _reference(codes, scale, None, g), _reference(codes2, scale2, None, g2)
    assert t.loc[f"{P}.weight", "changed"] == int(np.count_nonzero(ref_a != ref_b)) > 0


def test_an_unset_or_column_order_g_idx_reads_as_column_order(ao, tmp_path):
    """g_idx all −1 (compressed-tensors' placeholder) or j // G: scale[i, j // G], code by code against a save
    without it."""
    codes, scale, _ = ao["sym"]
    plain = _write_ct(tmp_path / "plain", codes, scale, None, None)
    ref = codes.double().numpy() * np.repeat(scale.float().numpy().astype(np.float64), G, 1)
    for tag, g in (
        ("unset", torch.full((C,), -1, dtype=torch.int32)),
        ("cols", torch.arange(C, dtype=torch.int32) // G),
    ):
        folder = _write_ct(tmp_path / tag, codes, scale, None, g)
        ck = open_checkpoint(folder)
        form = checkpoint_forms(ck)[f"{P}.weight"]
        assert form.act_order is None
        assert np.array_equal(weight_rows(ck, f"{P}.weight", form, ck.get(f"{P}.weight")).double().numpy(), ref)
        a = analyze_updates(str(plain), [str(folder)], labels=[tag])
        assert a.reports[0].tensors.set_index("name").loc[f"{P}.weight", "changed"] == 0
        assert not any("Stored forms differ" in n for n in a.notes), a.notes


@pytest.mark.parametrize(
    "g_idx, said",
    [
        (torch.zeros(C, dtype=torch.float32), "is not integers"),
        (torch.zeros(C - 1, dtype=torch.int32), "expected shape (64,)"),
        (torch.full((C,), 4, dtype=torch.int32), "holds 4 at column 0; expected a group 0 … 3"),
        (torch.cat([torch.full((1,), -1), torch.arange(1, C) // G]).int(), "holds -1 at column 0"),
        ((torch.arange(C) % 3).int(), "group 3 of its 4 holds no column"),
    ],
)
def test_a_malformed_g_idx_is_one_line_naming_checkpoint_and_tensor(ao, tmp_path, g_idx, said):
    codes, scale, _ = ao["sym"]
    bad = _write_ct(tmp_path / "bad", codes, scale, None, g_idx)
    with pytest.raises(CheckpointError) as err:
        analyze_updates(str(ao["sym_folder"]), [str(bad)], labels=["bad"])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(bad)) and f"{P}.weight_g_idx" in msg and said in msg, msg


# --- 2. the rounding-only share follows each library's arithmetic --------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_float_base_against_its_bitsandbytes_int8_copy_is_all_rounding(tmp_path, dtype):
    """Codes and SCB from bitsandbytes' own int8_vectorwise_quant: every changed entry is rounding (before: its
    float32 w / (SCB / 127) missed a few hundred per million)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import bitsandbytes.functional as F

    torch.manual_seed(0)
    w = (torch.randn(512, 512) * 0.02).to(dtype)
    codes, scb, _ = F.int8_vectorwise_quant(w.clone())
    cfg = one_layer_llama_config()
    base = write_config_folder(tmp_path / "base", {f"{P}.weight": w}, cfg)
    quant = one_layer_llama_config({"quant_method": "bitsandbytes", "load_in_8bit": True})
    q = write_config_folder(tmp_path / "q", {f"{P}.weight": codes, f"{P}.SCB": scb}, quant)
    a = analyze_updates(str(base), [str(q)], labels=["q"])
    changed = a.reports[0].tensors.set_index("name").loc[f"{P}.weight", "changed"]
    ref = torch.from_numpy(codes.numpy().astype(np.float64) * scb.numpy().astype(np.float64)[:, None] / 127)
    assert changed == int((ref.to(dtype) != w).sum()) > 0
    assert _rounding(a.notes) == (changed, changed)


def test_a_float16_base_against_its_autoawq_copy_is_all_rounding(tmp_path):
    """A float16 layer packed by AutoAWQ's own WQLinear_GEMM.from_linear with float16 scales and zero points (as its
    quantiser calls it); the scales leave every (w + zero × scale) / scale within the codes' range in float64, so
    every code is AutoAWQ's rounding and every changed entry is rounding (before: 99.6 %)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from awq.modules.linear.gemm import WQLinear_GEMM

    group, n = 32, 256
    torch.manual_seed(0)
    lin = torch.nn.Linear(n, n, bias=False).half()
    lin.weight.data = (torch.randn(n, n) * 0.02).half()
    g = lin.weight.data.float().reshape(n, -1, group)
    lo, hi = g.amin(-1), g.amax(-1)
    scales = ((hi - lo) / 15 * 1.05).half()
    zeros = torch.round(-lo / scales.float() + 0.35).clamp(0, 15).half()  # (the group's codes: about 0 … 15.1)
    x = (g.double() + (zeros.double() * scales.double())[..., None]) / scales.double()[..., None]
    assert float(x.min()) > -0.45 and float(x.max()) < 15.45  # (no code AutoAWQ would pack out of its nibble)
    packed = WQLinear_GEMM.from_linear(lin, 4, group, scales=scales.t().contiguous(), zeros=zeros.t().contiguous())
    cfg = {**one_layer_llama_config(), "hidden_size": n, "intermediate_size": n, "torch_dtype": "float16"}
    base = write_config_folder(tmp_path / "base", {f"{P}.weight": lin.weight.data.clone()}, cfg)
    awq = {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm"}
    sd = {f"{P}.{k}": getattr(packed, k).contiguous() for k in ("qweight", "qzeros", "scales")}
    q = write_config_folder(tmp_path / "q", sd, {**cfg, "quantization_config": awq})
    a = analyze_updates(str(base), [str(q)], labels=["awq"])
    changed = a.reports[0].tensors.set_index("name").loc[f"{P}.weight", "changed"]
    assert changed > 0 and _rounding(a.notes) == (changed, changed)


# --- 3. a compressed-tensors scale that fits no layout -------------------------------------------------------------
@pytest.mark.parametrize("both", [True, False])
def test_a_compressed_tensors_scale_of_no_layout_is_refused_by_name(ao, tmp_path, both):
    codes, scale, _ = ao["sym"]
    cut = scale[:, :3].contiguous()  # 3 scales a row for 64 columns: no group size divides it
    bad = _write_ct(tmp_path / "bad", codes, cut, None, None)
    if both:  # one scale doubled in the finetune (before: counted 0, the weight compared as codes only)
        cut2 = cut.clone()
        cut2[0, 0] *= 2
        base, ft = bad, _write_ct(tmp_path / "bad2", codes, cut2, None, None)
    else:  # against the bf16 base (before: "codes without an effective form", naming no checkpoint or scale)
        base, ft = ao["bf16"], bad
    with pytest.raises(CheckpointError) as err:
        analyze_updates(str(base), [str(ft)], labels=["ft"])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: "), msg
    assert f"scale '{P}.weight_scale' (64, 3) of '{P}.weight' (64, 64)" in msg, msg


# --- 4. block_structure as a string --------------------------------------------------------------------------------
def _fp8_config(block) -> dict:
    weights = {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": block, "symmetric": True}
    group = {"targets": ["Linear"], "weights": {**weights, "dynamic": False}}
    quant = {"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"group_0": group}}
    return one_layer_llama_config(quant)


def test_a_block_structure_string_is_read_as_compressed_tensors_reads_it(tmp_path):
    from compressed_tensors.quantization import QuantizationArgs

    theirs = QuantizationArgs(num_bits=8, type="float", strategy="block", block_structure="32x64").block_structure
    assert block_size(_fp8_config("32x64")) == tuple(theirs) == (32, 64)
    # one 32 × 64 block's scale doubled: its nonzero codes are the changed weights (128 × 128, the default, would
    # have refused the (4, 2) scales)
    torch.manual_seed(0)
    codes = (torch.randn(128, 128) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    s = torch.rand(4, 2, dtype=torch.float32) + 0.5
    s2 = s.clone()
    s2[1, 1] *= 2
    cfg = _fp8_config("32x64")
    a = write_config_folder(tmp_path / "a", {f"{P}.weight": codes, f"{P}.weight_scale": s}, cfg)
    b = write_config_folder(tmp_path / "b", {f"{P}.weight": codes, f"{P}.weight_scale": s2}, cfg)
    t = analyze_updates(str(a), [str(b)], labels=["b"]).reports[0].tensors.set_index("name")
    assert t.loc[f"{P}.weight", "changed"] == int((codes[32:64, 64:128].float() != 0).sum()) > 0


@pytest.mark.parametrize("block", ["64x", "64x64x2", "axb", "64X64", "0x64", [64], [64, "64"]])
def test_a_malformed_block_structure_names_its_key(block):
    from compressed_tensors.quantization import QuantizationArgs
    from pydantic import ValidationError

    with pytest.raises(ValidationError):  # compressed-tensors refuses it too
        QuantizationArgs(num_bits=8, type="float", strategy="block", block_structure=block)
    with pytest.raises(CheckpointError) as err:
        block_size(_fp8_config(block))
    msg = str(err.value)
    assert "config_groups.group_0.weights.block_structure" in msg and "weight_block_size" not in msg, msg
