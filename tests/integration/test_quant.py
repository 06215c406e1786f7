"""Quantized storage: FP8 codes + block scales, bitsandbytes int8 + SCB, GPTQ codes.

Proves: planted FP8 code changes are counted effectively (the weights as dequantised) and as codes
(``changed_codes``, ULP bins in code steps); one changed block scale leaves the codes equal but
changes exactly the nonzero weights of its block in ``changed`` (checked against a float64 NumPy
dequantisation), and every number agrees with it: the headline, the update mask, the per-layer
heatmap and the tolerance sweep (never more changed entries at a tolerance than bitwise); the scale
table says which scale changed; a per-tensor ``weight_scale`` works; a bf16 base
against an FP8 release is compared after dequantising; bnb int8 codes and an SCB change behave
alike; GPTQ codes are compared exactly with a notice; a scale that does not fit its weight's blocks
and an unknown quantization method are one-line errors naming what was expected and found.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from subnetviz.analysis.series import checkpoint_series
from subnetviz.analysis.updates import SpectraOptions, analyze_updates
from subnetviz.errors import CheckpointError
from tests import ckpt_fixtures
from tests.ckpt_fixtures import bnb_int8, fp8_folder, read_state_dict, write_folder

W = "model.layers.0.mlp.up_proj.weight"  # (32, 16): 4 × 2 blocks of 8 × 8


@pytest.fixture(scope="module")
def fp8_base(ckpt_zoo, tmp_path_factory):
    src = tmp_path_factory.mktemp("fp8src")
    write_folder(src, read_state_dict(ckpt_zoo.llama), ckpt_zoo.llama)
    return fp8_folder(src, tmp_path_factory.mktemp("fp8") / "base")


def _edit(base, out, fn):
    sd = read_state_dict(base)
    fn(sd)
    return write_folder(out, sd, base)


def _bump_codes(codes: torch.Tensor, idx: list[tuple[int, int]]) -> None:
    """Move FP8 codes one representable step (toward zero, or away from it at the smallest magnitudes)."""
    v = codes.view(torch.int8)
    for i, j in idx:
        u = int(v[i, j]) & 0xFF
        mag = u & 0x7F
        new = (u & 0x80) | (mag - 1 if mag > 1 else mag + 1)
        v[i, j] = new - 256 if new > 127 else new


def test_fp8_codes_and_effective(fp8_base, tmp_path):
    same = analyze_updates(str(fp8_base), [str(fp8_base)]).reports[0]
    assert same.changed == 0 and same.tensors["changed_codes"].sum() == 0
    row = same.tensors.set_index("name").loc[W]
    assert row["stored_as"] == "float8_e4m3fn codes" and row["numel"] == 32 * 16
    assert set(same.buffers["group"]) == {"scales"}

    planted = [(0, 1), (9, 3), (30, 15)]
    ft = _edit(fp8_base, tmp_path / "codes", lambda sd: _bump_codes(sd[W], planted))
    rep = analyze_updates(str(fp8_base), [str(ft)], labels=["ft"]).reports[0]
    r = rep.tensors.set_index("name").loc[W]
    assert r["changed"] == 3 and r["changed_codes"] == 3 and r["ulp_hist"][0] == 3
    assert rep.changed == 3
    assert any(n.startswith("FP8 weights") for n in rep.notes)
    mask = rep.masks[W]
    assert sorted(map(tuple, mask.nonzero().tolist())) == planted


def test_one_changed_block_scale_changes_its_block_effectively(fp8_base, tmp_path):
    sd = read_state_dict(fp8_base)
    codes, scale = sd[W], sd[f"{W}_scale_inv"]
    new_scale = scale.clone()
    new_scale[2, 1] *= 1.5
    ft = _edit(fp8_base, tmp_path / "scale", lambda d: d[f"{W}_scale_inv"].copy_(new_scale))
    rep = analyze_updates(str(fp8_base), [str(ft)], labels=["ft"]).reports[0]
    r = rep.tensors.set_index("name").loc[W]
    # Independent reference: float64 NumPy dequantisation of both sides.
    c = codes.float().numpy().astype(np.float64)
    expand = lambda s: np.kron(s.numpy().astype(np.float64), np.ones((8, 8)))  # noqa: E731
    expected = int(np.count_nonzero(c * expand(scale) != c * expand(new_scale)))
    assert expected == int(np.count_nonzero(c[16:24, 8:16]))  # the block's nonzero codes
    assert r["changed_codes"] == 0 and r["changed"] == expected > 0 and sum(r["ulp_hist"]) == 0
    assert int(rep.masks[W][16:24, 8:16].sum()) == expected and int(rep.masks[W].sum()) == expected
    # One number everywhere: the headline, the layer × module heatmap and the sweep agree with the mask.
    assert rep.changed == expected and rep.sparsity == 1 - expected / rep.numel
    cell = rep.by_layer_module().set_index(["layer", "module"]).loc[(0, "up")]
    assert cell["changed"] == expected
    sweep = rep.sweep().set_index("criterion")["sparsity"]
    assert (sweep >= sweep["exact"]).all()
    sc = rep.buffers.set_index("name").loc[f"{W}_scale_inv"]
    assert sc["group"] == "scales" and sc["changed"] == 1
    assert any(n.startswith("Quantization scales") and "changes every weight of its block" in n for n in rep.notes)
    # Spectra take the effective Δ: one 8 × 8 block is nonzero, so its rank is at most 8.
    spec = analyze_updates(
        str(fp8_base), [str(ft)], labels=["ft"], spectra=SpectraOptions(enabled=True, baseline=False)
    ).spectra_table()
    assert 0 < int(spec.set_index("name").loc["layers.0.mlp.up_proj.weight", "rank"]) <= 8


def test_per_tensor_weight_scale_and_bf16_base_against_fp8(tmp_path):
    torch.manual_seed(0)
    w = torch.randn(8, 6) * 0.1
    s = (w.abs().max() / ckpt_fixtures.FP8_MAX).reshape(1)
    codes = (w / s).to(torch.float8_e4m3fn)
    cfg = {"model_type": "llama", "quantization_config": {"quant_method": "compressed-tensors"}}
    base = write_folder(tmp_path / "b", {W: codes, f"{W}_scale": s})
    codes2 = codes.clone()
    _bump_codes(codes2, [(1, 1)])
    ft = write_folder(tmp_path / "f", {W: codes2, f"{W}_scale": s.clone()})
    for f in (base, ft):
        (f / "config.json").write_text(json.dumps(cfg))
    rep = analyze_updates(str(base), [str(ft)]).reports[0]
    assert rep.changed == 1 and rep.tensors.loc[0, "changed_codes"] == 1
    # A bf16 base against the FP8 release: the FP8 side is dequantised, both compared at bf16.
    eff = (codes.float() * s).to(torch.bfloat16)
    bf = write_folder(tmp_path / "bf", {W: eff})
    (bf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    mixed = analyze_updates(str(bf), [str(base)]).reports[0]
    assert mixed.changed == 0 and any(n.startswith("Stored forms differ") for n in mixed.notes)


def test_bnb_int8_codes_and_scb(tmp_path):
    torch.manual_seed(0)
    w = torch.randn(6, 10) * 0.05
    codes, scb = bnb_int8(w)
    cfg = {"model_type": "llama", "quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}}
    fmt = torch.tensor(0, dtype=torch.uint8)
    base = write_folder(
        tmp_path / "b", {W: codes, W.replace("weight", "SCB"): scb, W.replace("weight", "weight_format"): fmt}
    )
    codes2, scb2 = codes.clone(), scb.clone()
    codes2[0, :4] += 1  # 4 codes, one step each
    scb2[3] *= 1.25  # a whole row effectively
    ft = write_folder(
        tmp_path / "f", {W: codes2, W.replace("weight", "SCB"): scb2, W.replace("weight", "weight_format"): fmt.clone()}
    )
    for f in (base, ft):
        (f / "config.json").write_text(json.dumps(cfg))
    rep = analyze_updates(str(base), [str(ft)]).reports[0]
    r = rep.tensors.iloc[0]
    assert r["stored_as"] == "bnb int8 codes" and r["changed_codes"] == 4 and r["ulp_hist"][0] == 4
    assert r["changed"] == 4 + int(torch.count_nonzero(codes[3]))
    assert set(rep.buffers["group"]) == {"scales"} and rep.buffers["changed"].sum() == 1
    assert any(n.startswith("bitsandbytes int8 weights") for n in rep.notes)


def test_bnb_int8_weights_are_bitsandbytes_own_dequantisation_bit_for_bit():
    """bitsandbytes' int8_vectorwise_dequant (and transformers' float32 fallback) computes
    code × SCB × 7.874015718698502e-3 in float32, in that order; dividing SCB by 127 first differed in the last bit
    of about a quarter of the weights, so an SCB moved by one ULP read as fewer changed entries than bitsandbytes
    computes with."""
    from subnetviz.analysis.quant import TensorForm, compare_quantized, effective
    from subnetviz.analysis.sparsity_report import SparsityOptions

    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 200, generator=g).half().float()
    scb = w.abs().amax(1)
    codes = torch.round(w * 127 / scb[:, None]).to(torch.int8)
    ref = codes * scb.view(-1, 1) * 7.874015718698502e-3  # bitsandbytes' formula, float32
    mine = effective(codes, scb, TensorForm("int8", "SCB", "bnb int8 codes", 127.0), (1, 1), name="w")
    assert torch.equal(mine.view(torch.int32), ref.view(torch.int32))
    scb2 = scb.clone()
    scb2[3] = torch.nextafter(scb[3], torch.tensor(1e9))
    ref2 = codes * scb2.view(-1, 1) * 7.874015718698502e-3
    q = compare_quantized(
        codes,
        scb,
        codes.clone(),
        scb2,
        SparsityOptions(),
        name="w",
        scale_names=("a", "b"),
        block=(1, 1),
        divisor=127.0,
    )
    assert q.stats.changed == int((ref.view(torch.int32) != ref2.view(torch.int32)).sum()) > 0


def test_gptq_codes_are_compared_as_codes_with_a_notice(tmp_path):
    q = torch.randint(-(2**31), 2**31 - 1, (4, 8), dtype=torch.int32)
    cfg = {"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}
    stem = "model.layers.0.mlp.up_proj"
    tensors = {
        f"{stem}.qweight": q,
        f"{stem}.qzeros": torch.zeros(1, 8, dtype=torch.int32),
        f"{stem}.scales": torch.ones(1, 64, dtype=torch.float16),
        f"{stem}.g_idx": torch.zeros(32, dtype=torch.int32),
    }
    base = write_folder(tmp_path / "b", tensors)
    q2 = q.clone()
    q2[1, 2] ^= 0x10
    ft = write_folder(tmp_path / "f", {**{k: v.clone() for k, v in tensors.items()}, f"{stem}.qweight": q2})
    for f in (base, ft):
        (f / "config.json").write_text(json.dumps(cfg))
    rep = analyze_updates(str(base), [str(ft)]).reports[0]
    t = rep.tensors.set_index("name")
    said = "GPTQ int4 codes (qweight unpacked, 8 a word)"
    assert t.loc[f"{stem}.qweight", "changed"] == 1 and t.loc[f"{stem}.qweight", "stored_as"] == said
    assert any(n.startswith(said) and "no effective comparison" in n for n in rep.notes)
    scales = {"layers.0.mlp.up_proj.scales", "layers.0.mlp.up_proj.qzeros", "layers.0.mlp.up_proj.g_idx"}
    assert set(rep.buffers["key"]) == scales


def test_bad_scale_shape_is_one_line(fp8_base, tmp_path):
    ft = _edit(fp8_base, tmp_path / "bad", lambda sd: sd.__setitem__(f"{W}_scale_inv", torch.ones(3, 2)))
    with pytest.raises(CheckpointError) as err:
        analyze_updates(str(fp8_base), [str(ft)])
    msg = str(err.value)
    assert "\n" not in msg and f"{W}_scale_inv" in msg and "expected shape (4, 2)" in msg and "found (3, 2)" in msg


@pytest.mark.parametrize("block", [[0, 0], ["a", 8], [8], [-8, 8], [8.0, 8], "128"])
def test_block_size_someone_else_wrote_is_checked(fp8_base, tmp_path, block):
    """weight_block_size [0, 0] was a ZeroDivisionError, ["a", 8] a ValueError, [8] silently 128 × 128."""
    sd = read_state_dict(fp8_base)
    qc = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": block}
    ft = write_folder(tmp_path / "odd", sd, fp8_base, quantization_config=qc)
    with pytest.raises(CheckpointError, match=r"weight_block_size is .*; expected two whole numbers >= 1") as err:
        analyze_updates(str(fp8_base), [str(ft)])
    assert "\n" not in str(err.value)


def test_unknown_quantization_method_is_one_line(fp8_base, tmp_path):
    sd = read_state_dict(fp8_base)
    ft = write_folder(tmp_path / "hqq", sd, fp8_base, quantization_config={"quant_method": "hqq"})
    with pytest.raises(CheckpointError) as err:
        analyze_updates(str(fp8_base), [str(ft)])
    msg = str(err.value)
    assert "\n" not in msg and "'hqq'" in msg and "expected one of" in msg and "fp8" in msg


@pytest.mark.parametrize("how", ["block", "channel", "tensor", "mixed"])
def test_banded_pass_equals_the_whole_dequantised_pass(how, monkeypatch):
    """Dequantising and comparing in row bands (three here, ragged last one) gives what compare_pair
    gives on the whole dequantised tensors: counts, tolerances, relative rule, max |Δ|, row/column
    counts and mask, for block, per-channel, per-tensor and mixed scale layouts."""
    from subnetviz.analysis import quant
    from subnetviz.analysis.quant import compare_quantized, dequantize
    from subnetviz.analysis.sparsity import SparsityOptions, compare_pair

    monkeypatch.setattr(quant, "_BAND_ELEMENTS", 16 * 24)  # 16-row bands of a 40-row tensor

    g = torch.Generator().manual_seed(3)
    m, n, blk = 40, 24, (16, 8)
    a = (torch.randn(m, n, generator=g) * 50).to(torch.float8_e4m3fn)
    b = a.clone()
    flip = torch.rand(m, n, generator=g) < 0.2
    b.view(torch.int8)[flip] ^= 1
    shapes = {"block": (3, 3), "channel": (m, 1), "tensor": (1,), "mixed": (3, 3)}
    sa = torch.rand(shapes[how], generator=g) + 0.5
    sb = sa.clone().reshape(-1)
    sb[0] *= 1.5
    sb = sb.reshape(shapes[how]) if how != "mixed" else torch.tensor([0.75])
    opts = SparsityOptions(mask_tolerance=1e-2)
    got = compare_quantized(a, sa, b, sb, opts, name="w", scale_names=("sa", "sb"), block=blk)
    how_b = "tensor" if how == "mixed" else how
    ref = compare_pair(
        dequantize(a, sa, "block" if how == "mixed" else how, blk), dequantize(b, sb, how_b, blk), opts, name="w"
    )
    assert got.stats.changed == ref.changed > int(flip.sum()) // 2
    st = got.stats
    assert (st.changed_tol, st.changed_rel, st.max_abs_delta) == (ref.changed_tol, ref.changed_rel, ref.max_abs_delta)
    assert np.array_equal(st.row_counts, ref.row_counts) and np.array_equal(st.col_counts, ref.col_counts)
    assert torch.equal(st.mask, ref.mask) and got.changed_codes == int(flip.sum())


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("eta", [1e-3, 1e-9])
def test_block_pass_equals_the_dense_dequantised_pass(dtype, eta, monkeypatch):
    """quant_codes.compare_blocks (codes compared once, only changed entries and changed-scale blocks
    dequantised) gives exactly what the dense pass gives (dequantise both sides whole, compare_pair):
    counts, tolerances, relative rule, ULP bins, max |Δ|, row/column counts and the mask; the codes'
    count and code-step bins match the codes compared whole. Planted: changed codes, changed block
    scales (adjacent and ragged edge blocks), a code doubled while its block's scale halves (the
    effective weight unchanged), +0 -> -0, a zero scale and a scale below 2^-100."""
    from subnetviz.analysis import quant_codes
    from subnetviz.analysis.quant import compare_quantized, dequantize
    from subnetviz.analysis.quant_codes import _code_counts
    from subnetviz.analysis.sparsity import SparsityOptions, compare_pair

    monkeypatch.setattr(quant_codes, "FAST_MIN_BAND", 1)
    g = torch.Generator().manual_seed(11)
    m, n, blk = 70, 90, (16, 32)  # ragged last block row and column
    a = (torch.randn(m, n, generator=g) * 8).to(dtype)
    a[0, :4] = 0.0
    b = a.clone()
    flip = torch.rand(m, n, generator=g) < 0.25
    b.view(torch.int8)[flip] ^= 1
    b.view(torch.int8)[0, 0] = -128  # +0 -> -0: a changed code at 0 steps
    sa = torch.rand(5, 3, generator=g) + 0.5
    sb = sa.clone()
    sb[1, 0] *= 1.25
    sb[1, 1] *= 0.75  # adjacent changed blocks
    sb[4, 2] *= 1.5  # the ragged corner block
    sa[2, 2] = sb[2, 2] = 0.0  # a zero scale: every weight 0 whatever the code
    sa[3, 0] = sb[3, 0] = 2.0**-120  # below the plain range: dequantised whole
    # Block (2, 0): one code doubled exactly while the scale halves: same weight, changed code.
    sb[2, 0] = sa[2, 0] / 2
    b[32:48, 0:32] = a[32:48, 0:32]
    a[33, 3], b[33, 3] = 1.0, 2.0
    opts = SparsityOptions(eta=eta)
    ran = []
    fast = quant_codes.compare_blocks
    monkeypatch.setattr("subnetviz.analysis.quant.compare_blocks", lambda *a, **k: ran.append(fast(*a, **k)) or ran[-1])
    got = compare_quantized(a, sa, b, sb, opts, name="w", scale_names=("sa", "sb"), block=blk)
    assert ran and ran[0] is not None  # the block pass ran
    monkeypatch.setattr(quant_codes, "FAST_MIN_BAND", 1 << 60)  # the dense bands, as the reference
    dense = compare_quantized(a, sa, b, sb, opts, name="w", scale_names=("sa", "sb"), block=blk)
    ref = compare_pair(dequantize(a, sa, "block", blk), dequantize(b, sb, "block", blk), opts, name="w")
    for st in (got.stats, dense.stats):
        assert (st.changed_tol, st.changed_rel, st.max_abs_delta) == (
            ref.changed_tol,
            ref.changed_rel,
            ref.max_abs_delta,
        )
        assert np.array_equal(st.row_counts, ref.row_counts) and np.array_equal(st.col_counts, ref.col_counts)
        assert torch.equal(st.mask, ref.mask)
    assert got.stats.changed == dense.stats.changed == ref.changed and got.changed_codes == dense.changed_codes
    assert not got.stats.mask[33, 3] and got.stats.mask[0, 0]  # same weight; -0 has other bits
    changed, above = _code_counts(a, b)
    assert got.changed_codes == dense.changed_codes == changed
    assert got.stats.ulp_hist == dense.stats.ulp_hist
    assert (got.stats.numel, got.stats.dtype) == (m * n, str(dtype)[6:])


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("jit", ["1", "0"])
def test_fp8_finite_check_on_bit_patterns_matches_the_values(dtype, jit, monkeypatch):
    """check_finite_stored (compiled: one pass over the bytes; NumPy: eight codes per 64-bit word, then
    the tail) raises exactly for the codes whose value is NaN/Inf, at every position in a word and in
    the tail, and in and after the compiled loop's 64-byte vectors, naming the count."""
    from subnetviz.analysis.quant_codes import check_finite_stored
    from subnetviz.errors import NonFiniteError

    monkeypatch.setenv("SUBNETVIZ_JIT", jit)
    codes = torch.arange(256, dtype=torch.uint8)
    bad = ~torch.isfinite(codes.view(dtype).float())
    assert int(bad.sum()) == {torch.float8_e4m3fn: 2, torch.float8_e5m2: 8}[dtype]
    for code in range(256):
        # in the first word, the second, the 3-byte tail of 19; in and after the vectors of 203
        for n, pos in [(19, p) for p in (0, 5, 7, 8, 17, 18)] + [(203, p) for p in (0, 63, 64, 191, 192, 202)]:
            x = torch.full((n,), 0x38, dtype=torch.uint8)
            x[pos] = code
            if bad[code]:
                with pytest.raises(NonFiniteError, match="1 NaN/Inf"):
                    check_finite_stored(x.view(dtype), "w")
            else:
                check_finite_stored(x.view(dtype), "w")
    check_finite_stored(torch.full((4, 8), 0x38, dtype=torch.uint8).view(dtype), "w")  # words only


def test_codes_of_no_rows_compare():
    """A quantized tensor of shape [0, N] (its codes compared exactly): 'cannot reshape tensor of 0 elements'."""
    from subnetviz.analysis.quant_codes import compare_codes
    from subnetviz.analysis.sparsity import SparsityOptions

    a = torch.zeros((0, 8), dtype=torch.int32)
    st = compare_codes(a, a.clone(), SparsityOptions(), name="x")
    assert st.numel == 0 and st.changed == 0


def test_a_float_base_against_a_quantized_finetune_says_what_is_rounding(ckpt_zoo, fp8_base, tmp_path):
    """A bf16 base against its own FP8 copy, untrained, read as density 0.84: every entry FP8 rounding moved
    was counted as an update, with a note only that the forms differ. The note now counts the changed entries
    that are exactly the float side quantised with the FP8 side's own scales; codes moved by hand are not."""
    import re

    bumped = [(0, 0), (1, 1), (2, 3)]
    ft = _edit(fp8_base, tmp_path / "ft", lambda sd: _bump_codes(sd[W], bumped))
    res = analyze_updates(str(ckpt_zoo.llama), [str(fp8_base), str(ft)], labels=["copy", "ft"])

    def counts(rep):
        (note,) = [n for n in rep.notes if n.startswith("Stored forms differ")]
        changed, rounding = (
            int(x.replace(",", "")) for x in re.search(r"Of their ([\d,]+) .*?, ([\d,]+) \(", note).groups()
        )
        return changed, rounding

    copy, tuned = res.reports
    assert counts(copy) == (copy.changed, copy.changed) and copy.changed > 0  # all of it rounding
    assert counts(tuned) == (tuned.changed, tuned.changed - len(bumped))  # the three moved codes are not
    from subnetviz.analysis.sparsity import SparsityOptions

    coarse = analyze_updates(str(ckpt_zoo.llama), [str(fp8_base)], options=SparsityOptions(precision="bf16"))
    changed, rounding = counts(coarse.reports[0])
    assert rounding <= changed == coarse.reports[0].changed  # counted as the comparison sees them (not > 100 %)


def test_a_gptq_finetune_against_a_float_base_says_what_was_left_out(tmp_path):
    """A GPTQ finetune against its bf16 base: the quantized side stores ``qweight`` where the base stores
    ``weight``, so no linear layer paired up; the analysis reported sparsity over the norms alone, and said so
    only in a per-model list no page, CLI line or summary showed. Now the analysis notes say what share was
    left out, and why."""
    cfg = {"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}
    stem = "model.layers.0.mlp.up_proj"
    norm = {"model.norm.weight": torch.ones(64, dtype=torch.bfloat16)}
    base = write_folder(tmp_path / "b", {f"{stem}.weight": torch.zeros(64, 32, dtype=torch.bfloat16), **norm})
    (base / "config.json").write_text(json.dumps({"model_type": "llama"}))
    quant = {
        f"{stem}.qweight": torch.zeros(4, 64, dtype=torch.int32),
        f"{stem}.qzeros": torch.zeros(1, 8, dtype=torch.int32),
        f"{stem}.scales": torch.ones(1, 64, dtype=torch.float16),
        f"{stem}.g_idx": torch.zeros(32, dtype=torch.int32),
    }
    ft = write_folder(tmp_path / "f", {**quant, "model.norm.weight": norm["model.norm.weight"].clone()})
    (ft / "config.json").write_text(json.dumps(cfg))
    res = analyze_updates(str(base), [str(ft)], labels=["gptq"])
    (said,) = [n for n in res.notes if "Not compared" in n]
    assert said.startswith("gptq: Not compared") and "2,048 of its 2,112 stored entries (97.0%)" in said
    assert "quantized integer codes (g_idx, qweight: GPTQ" in said
    assert res.reports[0].numel == 64  # the norm alone was compared, as the note says


def test_subspaces_read_fp8_weights_dequantised_and_leave_scales_out(ckpt_zoo, fp8_base, tmp_path):
    """Subspaces took FP8 codes for weights: an FP8 pair whose block scales of one matrix doubled (the weights
    exactly ×2) read σ ratio 1 and nothing changed; the 2-D ``weight_scale_inv`` tensors were decomposed as
    matrices; and a bf16 base against FP8 codes ended in a traceback (Float8 promotion), losing the analysis."""
    from subnetviz.analysis.subspaces import SubspaceOptions, analyze_subspaces, subspace_keys

    def double(sd):
        sd[f"{W}_scale_inv"] = sd[f"{W}_scale_inv"] * 2

    ft = _edit(fp8_base, tmp_path / "ft", double)
    rows = analyze_subspaces(str(fp8_base), [str(ft)], options=SubspaceOptions(k=4)).to_frame().set_index("name")
    assert not rows.index.str.endswith("scale_inv").any()
    w = rows.loc[W]
    assert w["sv_ratio_mean"] == pytest.approx(2.0, abs=1e-6) and w["angle_left_max"] < 1e-6
    nonzero = int(torch.count_nonzero(read_state_dict(fp8_base)[W].float()))
    assert w["changed"] == nonzero
    assert len(subspace_keys(str(fp8_base), [str(ft)])) == len(rows)  # what is priced is what is decomposed
    mixed = analyze_subspaces(str(ckpt_zoo.llama), [str(fp8_base)], options=SubspaceOptions(k=4)).to_frame()
    assert W in set(mixed["name"]) and np.isfinite(mixed.set_index("name").loc[W, "sv_ratio_mean"])


@pytest.mark.parametrize("band", [None, 64])  # 64 entries: the (32, 16) matrix in four bands of 8 rows (its blocks)
def test_a_series_reads_stored_forms_as_the_update_analysis_does(fp8_base, tmp_path, monkeypatch, band):
    """Along a series of FP8 checkpoints the scales are not parameters and the weights are the dequantised
    ones: a changed block scale changes its block's nonzero weights at that step, as in the update analysis
    (the series had counted the scale tensors as weights and their codes without the scales: 1 changed entry
    out of numel + the scales' entries)."""
    sd = read_state_dict(fp8_base)
    step1 = _edit(
        fp8_base, tmp_path / "s1", lambda d: d[f"{W}_scale_inv"].__setitem__((2, 1), d[f"{W}_scale_inv"][2, 1] * 1.5)
    )
    step2 = _edit(step1, tmp_path / "s2", lambda d: _bump_codes(d[W], [(0, 1), (9, 3)]))
    if band is not None:  # dequantised band by band (a whole FP8 expert held first, previous and current in float32)
        from subnetviz.analysis import series

        monkeypatch.setattr(series, "BAND_ENTRIES", band)
    s = checkpoint_series([str(fp8_base), str(step1), str(step2)])
    reports = analyze_updates(str(fp8_base), [str(step1), str(step2)]).reports
    assert s.numel == reports[0].numel  # weights only: no scales
    block = int(np.count_nonzero(sd[W].float().numpy()[16:24, 8:16]))
    assert s.steps["changed_vs_first"].tolist() == [r.changed for r in reports] == [block, block + 2]
    assert s.steps["changed_vs_previous"].tolist() == [block, 2]
    assert any("FP8 weight tensor(s) compared dequantised" in n for n in s.notes)
    assert any("quantization scale tensor(s) are not counted" in n for n in s.notes)


def test_a_series_leaves_buffers_out_and_compares_integer_codes_exactly(tmp_path):
    """Buffers (an int ``position_ids``, GPT-2's float causal mask ``attn.bias``) are not counted along a
    series, as in the update analysis; GPTQ's int32 codes are compared on their bits (cast to float32, as
    they were, 2^30 and 2^30 + 1 read equal)."""
    stem = "model.layers.0.mlp.up_proj"
    cfg = {"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}
    q = torch.full((4, 8), 2**30, dtype=torch.int32)
    w = torch.randn(8, 8)
    versions = []
    for i in range(3):
        q2, w2 = q.clone(), w.clone()
        q2[0, 0] += i  # steps 1 and 2 change one code by one
        w2[1, 1] += i
        tensors = {
            f"{stem}.qweight": q2,
            f"{stem}.qzeros": torch.zeros(1, 8, dtype=torch.int32),
            f"{stem}.scales": torch.ones(1, 64, dtype=torch.float16),
            "model.layers.0.self_attn.o_proj.weight": w2,
            "model.embed_positions.position_ids": torch.arange(8 + i).reshape(1, -1)[:, :8].clone() + i,
            "h.0.attn.bias": torch.tril(torch.ones(1, 1, 4, 4)) * (1 + i),
        }
        versions.append(write_folder(tmp_path / f"v{i}", tensors))
        (versions[-1] / "config.json").write_text(json.dumps(cfg))
    s = checkpoint_series([str(v) for v in versions])
    reports = analyze_updates(str(versions[0]), [str(v) for v in versions[1:]]).reports
    assert s.numel == reports[0].numel == 4 * 8 * 8 + 8 * 8  # qweight's codes, o_proj (qzeros: with the scales)
    assert s.steps["changed_vs_first"].tolist() == [r.changed for r in reports] == [2, 2]
    assert s.steps["changed_vs_previous"].tolist() == [2, 2]
    assert any("buffer tensor(s), not parameters, are not counted" in n for n in s.notes)
    assert any("packed integer codes" in n for n in s.notes)


def test_one_matrix_view_reads_fp8_weights_as_the_table_counts_them(fp8_base, tmp_path):
    """The Update sparsity page's One matrix read FP8 codes without their scales: a changed block scale showed
    0 changed entries and a Δ of 0 beside a table counting the block's weights; a bf16 base against its FP8
    copy compared bf16 weights with float32 dequantised ones."""
    from subnetviz.analysis.drill import matrix_update

    sd = read_state_dict(fp8_base)
    scale = sd[f"{W}_scale_inv"]
    ft = _edit(fp8_base, tmp_path / "scale", lambda d: d[f"{W}_scale_inv"].__setitem__((2, 1), scale[2, 1] * 1.5))
    table = analyze_updates(str(fp8_base), [str(ft)]).reports[0].tensors.set_index("name")
    for band in (None, 64):  # whole, and in bands of 8 rows (one block row each)
        upd = matrix_update(str(fp8_base), str(ft), W, **({} if band is None else {"band_entries": band}))
        assert upd.n_changed == table.loc[W, "changed"] > 0 and upd.rows_changed[16:24].sum() == upd.n_changed
    codes = sd[W].float().numpy().astype(np.float64)
    s64 = np.kron(scale.numpy().astype(np.float64), np.ones((8, 8)))
    want = float((codes[16:24, 8:16] * s64[16:24, 8:16] * 0.5).sum())  # Δ of the block: half its weights
    assert upd.delta.sums.sum() == pytest.approx(want, rel=1e-5)
    plain = {}  # the base's own weights in bf16 (each FP8 weight dequantised, its scale dropped)
    for k, v in sd.items():
        if k.endswith("_scale_inv"):
            continue
        if f"{k}_scale_inv" in sd:
            s = np.kron(sd[f"{k}_scale_inv"].numpy().astype(np.float64), np.ones((8, 8)))[: v.shape[0], : v.shape[1]]
            v = torch.from_numpy(v.float().numpy().astype(np.float64) * s)
        plain[k] = v.to(torch.bfloat16)
    bf = write_folder(tmp_path / "bf", plain)
    (bf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    mixed = analyze_updates(str(bf), [str(fp8_base)]).reports[0].tensors.set_index("name")
    assert matrix_update(str(bf), str(fp8_base), W).n_changed == mixed.loc[W, "changed"]
