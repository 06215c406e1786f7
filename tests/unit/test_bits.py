"""The one comparison (subnetviz.analysis.bits) against independent references.

Proves: ULP distances on hand-computed bit patterns (+0/-0, sign crossings, subnormals, fp8, the
float64 overflow clamp) and against numpy.nextafter stepping (float16/32/64), the same answer from
the NumPy and torch paths; bitwise masks (-0 vs +0 differ, equal NaN payloads do not); tolerance
and ULP-bin counting against NumPy float64; the finite check; and that the Training page's run
comparison and the Update sparsity page bin one planted pair into the same ULP bins.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subnetviz.analysis import bits
from subnetviz.analysis.bits import (
    DEFAULT_TOLERANCES,
    ULP_EDGES,
    ULP_LABELS,
    ULP_LABELS_WITH_ZERO,
    Scratch,
    bits_differ,
    changed_stats_numpy,
    check_finite,
    counts_above,
    int_view,
    ulp_bins,
    ulp_counts_numpy,
    ulp_distance,
    ulp_distance_bits,
)
from subnetviz.errors import ConfigError, NonFiniteError


def _from_bits(patterns: list[int], dtype: torch.dtype) -> torch.Tensor:
    """Float tensor from unsigned bit patterns (e.g. 0x8000 = bf16 -0.0)."""
    width = torch.finfo(dtype).bits
    signed = [p - (1 << width) if p >= 1 << (width - 1) else p for p in patterns]
    return torch.tensor(signed, dtype=bits.INT_VIEW[dtype]).view(dtype)


# --- ULP distance: hand-computed cases ----------------------------------------------------------
# (a bits, b bits, distance). bf16: 1.0 = 0x3F80, magnitude 16256; -1.0 = 0xBF80.
BF16_CASES = [
    (0x0000, 0x8000, 0),  # +0 vs -0: one point, 0 ULP (though the bits differ)
    (0x3F80, 0x3F81, 1),  # 1.0 -> next float up
    (0xBF80, 0xBF81, 1),  # -1.0 -> next float down (sign-magnitude: the magnitude grows)
    (0x0001, 0x8001, 2),  # the smallest subnormals either side of zero: 1 + 1 steps
    (0x0000, 0x8001, 1),  # +0 to the first negative subnormal
    (0x3F80, 0xBF80, 2 * 16256),  # 1.0 vs -1.0: down to zero and up again
    (0x7F7F, 0xFF7F, 2 * 0x7F7F),  # the largest finite values of both signs (needs int32)
    (0x4000, 0x3F80, 0x80),  # 2.0 vs 1.0: one binade of 2^7 steps
]


@pytest.mark.parametrize(("pa", "pb", "want"), BF16_CASES)
def test_ulp_distance_bf16_hand_cases(pa, pb, want):
    a, b = _from_bits([pa], torch.bfloat16), _from_bits([pb], torch.bfloat16)
    assert ulp_distance(a, b).tolist() == [want]
    assert ulp_distance(b, a).tolist() == [want]  # symmetric
    assert ulp_distance(a, b).dtype == torch.int64


def test_ulp_distance_numpy_and_torch_paths_agree_on_mixed_chunks():
    """One chunk with and without sign crossings: the wide path must give the same-sign answers too."""
    pa, pb, want = (list(col) for col in zip(*BF16_CASES, strict=True))
    xi = _from_bits(pa, torch.bfloat16).view(torch.int16)
    yi = _from_bits(pb, torch.bfloat16).view(torch.int16)
    assert ulp_distance_bits(xi, yi, torch).tolist() == want
    assert ulp_distance_bits(xi.numpy(), yi.numpy(), np).tolist() == want
    same_sign = [i for i, (x, y) in enumerate(zip(pa, pb, strict=True)) if (x ^ y) < 0x8000]
    sx, sy = xi[same_sign], yi[same_sign]  # the stored-width fast path (no sign change in the chunk)
    assert ulp_distance_bits(sx, sy, torch).tolist() == [want[i] for i in same_sign]
    assert ulp_distance_bits(sx.numpy(), sy.numpy(), np).tolist() == [want[i] for i in same_sign]


def test_ulp_distance_fp8_hand_cases():
    # e4m3fn: 1.0 = 0x38, next = 0x39 (1.125); smallest subnormal 0x01 = 2^-9; -0 = 0x80.
    a = _from_bits([0x38, 0x01, 0x00, 0x38, 0x38], torch.float8_e4m3fn)
    b = _from_bits([0x39, 0x81, 0x80, 0xB8, 0x40], torch.float8_e4m3fn)
    assert float(a[0]) == 1.0 and float(b[0]) == 1.125 and float(b[4]) == 2.0
    assert ulp_distance(a, b).tolist() == [1, 2, 0, 2 * 0x38, 8]
    # e5m2: 1.0 = 0x3C; 2 mantissa bits -> 4 steps per binade
    a, b = _from_bits([0x3C, 0x3C], torch.float8_e5m2), _from_bits([0x40, 0xBC], torch.float8_e5m2)
    assert ulp_distance(a, b).tolist() == [4, 2 * 0x3C]


def test_ulp_distance_float64_overflow_is_clamped_past_every_bin():
    a = torch.tensor([1e300, 1.0], dtype=torch.float64)
    b = torch.tensor([-1e300, -1.0], dtype=torch.float64)
    got = ulp_distance(a, b).tolist()
    assert got[0] == np.iinfo(np.int64).max  # m_a + m_b overflows int64
    assert got[1] == 2 * 0x3FF0000000000000


@pytest.mark.parametrize("np_dtype", [np.float16, np.float32, np.float64])
def test_ulp_distance_matches_nextafter(np_dtype):
    """Independent reference: step values k times with numpy.nextafter (crossing zero too)."""
    rng = np.random.default_rng(0)
    tiny = np.finfo(np_dtype).smallest_subnormal
    a = np.concatenate([rng.normal(size=200), [0.0, -0.0, tiny, -tiny, 3 * tiny]]).astype(np_dtype)
    ks = rng.integers(-20, 21, size=a.size)
    b = a.copy()
    for i, k in enumerate(ks):
        for _ in range(abs(int(k))):
            b[i] = np.nextafter(b[i], np_dtype(np.inf if k > 0 else -np.inf))
    got = ulp_distance(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    # nextafter from -0.0 or +0.0 moves to the first subnormal: +0 and -0 count as one point.
    assert np.array_equal(got, np.abs(ks))


def test_ulp_distance_matches_nextafter_float32():
    """(Moved from test_training_masking.) float32 with the original draw, including 1e-45 subnormals."""
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.normal(size=200), [0.0, -0.0, 1e-45, -1e-45, 3e-45]]).astype(np.float32)
    ks = rng.integers(-20, 21, size=a.size)
    b = a.copy()
    for i, k in enumerate(ks):
        for _ in range(abs(int(k))):
            b[i] = np.nextafter(b[i], np.float32(np.inf if k > 0 else -np.inf))
    got = ulp_distance(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert np.array_equal(got, np.abs(ks))


def test_ulp_distance_refuses_mixed_or_non_float_input():
    with pytest.raises(ConfigError, match="one dtype and shape"):
        ulp_distance(torch.zeros(2), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ConfigError, match=r"float tensors.*got torch.int32"):
        int_view(torch.zeros(2, dtype=torch.int32))


# --- bitwise masks -----------------------------------------------------------------------------------
def test_int_view_widths():
    for dt, it in [
        (torch.bfloat16, torch.int16),
        (torch.float16, torch.int16),
        (torch.float32, torch.int32),
        (torch.float64, torch.int64),
        (torch.float8_e4m3fn, torch.int8),
        (torch.float8_e5m2, torch.int8),
    ]:
        x = torch.zeros(3, 2).to(dt)
        assert int_view(x).dtype == it and int_view(x).shape == (3, 2)
    assert int_view(torch.tensor([-0.0])).tolist() == [-(1 << 31)]  # the sign bit alone


def test_bits_differ_is_bitwise():
    nan = torch.tensor([float("nan")], dtype=torch.float32)
    other_nan = (nan.view(torch.int32) + 1).view(torch.float32)  # another payload
    a = torch.cat([torch.tensor([0.0, 1.0, 2.0]), nan, nan])
    b = torch.cat([torch.tensor([-0.0, 1.0, 2.5]), nan, other_nan])
    assert bits_differ(a, b).tolist() == [True, False, True, False, True]
    assert (a != b).tolist() == [False, False, True, True, True]  # float != would say otherwise
    ints = torch.tensor([1, 2, 3]), torch.tensor([1, 5, 3])
    assert bits_differ(*ints).tolist() == [False, True, False]
    # non-contiguous input: the view keeps the strides
    m = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert not bits_differ(m.t(), m.clone().t()).any()
    with pytest.raises(ConfigError, match="one dtype"):
        bits_differ(torch.zeros(2), torch.zeros(2, dtype=torch.bfloat16))


# --- tolerance and ULP-bin counting -----------------------------------------------------------------
@pytest.mark.parametrize("xp", [np, torch])
def test_counts_above_matches_float64_reference(xp):
    rng = np.random.default_rng(3)
    a = rng.normal(scale=1e-3, size=5000).astype(np.float32)
    b = (a + rng.normal(scale=3e-6, size=a.size)).astype(np.float32)
    d64 = np.abs(b.astype(np.float64) - a.astype(np.float64))  # exact for float32 inputs
    want = [int(sum(1 for v in d64.tolist() if v > t)) for t in DEFAULT_TOLERANCES]  # plain Python floats
    got = counts_above(d64 if xp is np else torch.from_numpy(d64), DEFAULT_TOLERANCES, xp)
    assert got == want and want[0] > want[-1] == 0  # spans the sweep and hits the early exit


def test_ulp_bins_hand_case():
    dist = np.array([0, 1, 1, 2, 3, 4, 5, 8, 9, 16, 17, 256, 257, 10**9])  # 14 changed entries
    above = counts_above(dist, ULP_EDGES, np)
    assert ulp_bins(len(dist), above) == [3, 1, 2, 2, 2, 2, 2]  # "1" also holds the distance-0 change
    assert len(ULP_LABELS) == len(ULP_EDGES) + 1 and ULP_LABELS_WITH_ZERO == ("0", *ULP_LABELS)


# --- the CPU kernel of the per-tensor pass --------------------------------------------------------
def _kernel_reference(xi: np.ndarray, yi: np.ndarray, dtype: torch.dtype, tols, eta: float) -> tuple:
    """Independent answer for the kernel: exact float64 values, ULP distances from the ordered keys
    (sign-magnitude -> k = m or -m, Python ints: no overflow), counts by plain comparisons."""
    t = lambda v: torch.from_numpy(v).view(dtype).to(torch.float64).numpy()  # noqa: E731 (exact upcast)
    va, vb = t(xi), t(yi)
    d = np.abs(vb - va)
    width = 8 * xi.itemsize
    mag = (1 << (width - 1)) - 1

    def key(v: int) -> int:
        return -(v & mag) if v < 0 else v

    dist = [abs(key(int(y)) - key(int(x))) for x, y in zip(xi.tolist(), yi.tolist(), strict=True)]
    rel = int(np.count_nonzero(d > eta * np.maximum(np.abs(va), np.abs(vb))))
    return (
        float(d.max()),
        [int(np.count_nonzero(d > tol)) for tol in tols],
        rel,
        [sum(1 for v in dist if v > e) for e in ULP_EDGES],
        sum(1 for v, x, y in zip(dist, xi.tolist(), yi.tolist(), strict=True) if v == 0 and x != y),
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("crossings", [0, 5])
def test_changed_stats_numpy_matches_float64_reference(dtype, crossings):
    """The kernel on gathered changed entries: the same-sign fast path and the sign changes counted
    apart (including -0/+0, which is 0 ULP and not a relative change), in reused buffers of two sizes."""
    rng = np.random.default_rng(crossings)
    scratch = Scratch()
    for n in (257, 64):  # the second call reuses the first call's (larger) buffers
        a = torch.from_numpy(rng.normal(scale=0.05, size=n)).to(dtype)
        steps = rng.integers(1, 300, size=n) * np.where(rng.random(n) < 0.5, -1, 1)
        xi = bits.int_view(a).numpy().copy()
        yi = (xi.astype(np.int64) + steps).astype(xi.dtype)  # k ULPs away (the magnitude moves by k)
        yi[:crossings] = xi[:crossings] ^ np.array(-1 << (8 * xi.itemsize - 1)).astype(xi.dtype)  # flip signs
        if crossings:
            xi[0], yi[0] = 0, np.array(-1 << (8 * xi.itemsize - 1)).astype(xi.dtype)  # +0 vs -0
        tols = (0.0, 1e-6, 1e-4, 1e-2)
        want = _kernel_reference(xi, yi, dtype, tols, eta=1e-2)
        changed = int(np.count_nonzero(xi != yi))
        got = changed_stats_numpy(xi, yi, changed, dtype, tols, 1e-2, False, scratch)
        assert got[0] == pytest.approx(want[0], rel=1e-6) and got[1] == want[1] and got[2] == want[2]
        assert got[3] == want[3] and want[3][0] > 0
        above, zero = ulp_counts_numpy(xi, yi, scratch)
        assert above == want[3] and zero == want[4] == (1 if crossings else 0)
        # η below half an ULP: the rule is "Δ != 0", counted as the changed pairs minus -0/+0
        eta = torch.finfo(dtype).eps / 4
        fast = changed_stats_numpy(xi, yi, changed, dtype, tols, eta, True, scratch)
        assert fast[2] == _kernel_reference(xi, yi, dtype, tols, eta)[2] == changed - want[4]


def test_changed_stats_numpy_on_a_whole_chunk_ignores_unchanged_pairs():
    """Unchanged pairs (Δ = 0, 0 ULP) count nowhere, so the kernel may run on a whole chunk."""
    rng = np.random.default_rng(7)
    xi = bits.int_view(torch.from_numpy(rng.normal(size=300)).to(torch.bfloat16)).numpy().copy()
    yi = xi.copy()
    yi[::3] += 2
    changed = int(np.count_nonzero(xi != yi))
    whole = changed_stats_numpy(xi, yi, changed, torch.bfloat16, DEFAULT_TOLERANCES, 1e-3, True, Scratch())
    idx = np.flatnonzero(xi != yi)
    gathered = changed_stats_numpy(xi[idx], yi[idx], changed, torch.bfloat16, DEFAULT_TOLERANCES, 1e-3, True, Scratch())
    assert whole[:4] == gathered[:4] and whole[2] == changed and whole[3][0] == changed


def test_one_definition_of_the_defaults():
    from subnetviz.analysis import sparsity

    assert sparsity.DEFAULT_TOLERANCES is bits.DEFAULT_TOLERANCES and sparsity.ULP_LABELS is bits.ULP_LABELS
    assert sparsity.check_finite is bits.check_finite
    assert bits.PAPER_TOLERANCE in bits.DEFAULT_TOLERANCES and 0 < bits.DEFAULT_ETA < 1


# --- finite check (moved from test_sparsity) -----------------------------------------------------------
@pytest.fixture(params=["1", "0"], ids=["jit", "torch"])
def finite_jit(request, monkeypatch):
    """Both finite checks: the compiled pattern pass (where numba is installed) and aminmax."""
    monkeypatch.setenv("SUBNETVIZ_JIT", request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_finite_finds_any_non_finite_entry(dtype, bad, finite_jit):
    x = torch.randn(50, 7).to(dtype)
    check_finite(x, "fine")  # no error
    check_finite(torch.empty(0, 3, dtype=dtype), "empty")
    x[31, 4] = bad
    x[2, 2] = bad
    with pytest.raises(NonFiniteError, match=r"w\.weight: 2 NaN/Inf"):
        check_finite(x, "w.weight")


@pytest.mark.parametrize("pos", [0, 1, 517, 998, 999])  # vector-lane heads and the scalar tail
def test_check_finite_single_nan_anywhere(pos, finite_jit):
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(1000).to(dtype)
        x[pos] = float("nan")
        with pytest.raises(NonFiniteError, match="1 NaN"):
            check_finite(x, "v")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_check_finite_passes_every_finite_edge_pattern(dtype, finite_jit):
    """The largest finite values, the smallest subnormals and both zeros of each sign (every exponent
    bit but one set, or none) are finite; every other exponent-all-ones pattern (Inf, quiet and
    signalling NaN of either sign) is refused, also in a strided view (checked by aminmax)."""
    fi = torch.finfo(dtype)
    edge = torch.tensor([fi.max, -fi.max, fi.smallest_normal, fi.tiny * fi.eps, 0.0, -0.0, 1.0], dtype=torch.float64)
    check_finite(edge.to(dtype).repeat(41), "edges")
    iv = bits.INT_VIEW[dtype]
    pattern = int(bits.EXPONENT_BITS[dtype])
    sign = -(1 << (8 * dtype.itemsize - 1))
    for special in (pattern, pattern | 1, pattern | (pattern >> 1) ^ pattern | 1, sign | pattern, sign | pattern | 1):
        x = edge.to(dtype).repeat(41)
        x.view(iv)[100] = special
        with pytest.raises(NonFiniteError, match="v: 1 NaN"):
            check_finite(x, "v")
        with pytest.raises(NonFiniteError, match="s: 1 NaN"):
            check_finite(x[::2], "s")  # entry 100 is in the strided view


def test_check_finite_fp8_and_integers():
    x = torch.randn(40).to(torch.float8_e4m3fn)
    check_finite(x, "fp8")
    x.view(torch.int8)[7] = 0x7F  # e4m3fn NaN
    with pytest.raises(NonFiniteError, match="fp8: 1 NaN"):
        check_finite(x, "fp8")
    check_finite(torch.arange(5), "ints")  # not floats: nothing to check


# --- both pages bin one planted pair alike ------------------------------------------------------------
def test_run_comparison_and_update_sparsity_use_the_same_ulp_bins(tmp_path):
    """The Training page (analysis.runs.compare_runs) and the Update sparsity page
    (analysis.updates.analyze_updates -> SparsityReport.ulp_histogram) on one planted bf16 pair:
    same labels after the run comparison's "0" (identical) bin, same counts in every one of them."""
    from safetensors.torch import save_file

    from subnetviz.analysis.runs import compare_runs
    from subnetviz.analysis.sparsity import compare_pair
    from subnetviz.analysis.updates import analyze_updates

    # one entry per bin: 1, 2, 3-4, 5-8, 9-16, 17-256, >256 ULP (added to the bit pattern of 1.0)
    offsets = [0, 0, 1, 2, 3, 7, 12, 100, 300, 1, 0]
    a = torch.ones(len(offsets), dtype=torch.bfloat16)
    b = (a.view(torch.int16) + torch.tensor(offsets, dtype=torch.int16)).view(torch.bfloat16)
    a[-1], b[-1] = 0.0, -0.0  # a bit change at distance 0: bin "1" on both pages
    for name, t in (("base", a), ("ft", b)):
        (tmp_path / name).mkdir()
        save_file({"w": t}, str(tmp_path / name / "model.safetensors"))
    runs = compare_runs(tmp_path / "base", tmp_path / "ft").ulp_histogram
    pages = analyze_updates(tmp_path / "base", [tmp_path / "ft"], device="cpu").reports[0].ulp_histogram()
    want = [2, 3, 1, 1, 1, 1, 1, 1]  # "0": the two untouched entries; "1": 1 ULP twice and -0/+0
    assert list(runs["bin"]) == ["0", *pages["bin"]] == list(ULP_LABELS_WITH_ZERO)
    assert runs["count"].tolist() == want and pages["count"].tolist() == want[1:]
    assert list(compare_pair(a, b).ulp_hist) == want[1:]


def test_run_comparison_leaves_buffers_out_as_update_sparsity_does(tmp_path):
    """Two twins that store GPT-2's float causal mask ``h.0.attn.bias`` and an int ``position_ids``: the
    "identical" share counts the weights only (2 of 4 entries identical), as the Update sparsity page
    counts them, and ``buffers`` names what was left out (the 16 + 8 buffer entries had read 26 of 28)."""
    from safetensors.torch import save_file

    from subnetviz.analysis.runs import compare_runs
    from subnetviz.analysis.updates import analyze_updates

    w = torch.ones(4, dtype=torch.bfloat16)
    buffers = {"h.0.attn.bias": torch.tril(torch.ones(1, 1, 4, 4)), "embeddings.position_ids": torch.arange(8)}
    for name, t in (("full", w), ("sub", w * torch.tensor([1, 1, 2, 2], dtype=torch.bfloat16))):
        (tmp_path / name).mkdir()
        save_file({"h.0.mlp.c_fc.weight": t, **buffers}, str(tmp_path / name / "model.safetensors"))
    res = compare_runs(tmp_path / "full", tmp_path / "sub")
    assert res.share_identical == 0.5 == analyze_updates(tmp_path / "full", [tmp_path / "sub"]).reports[0].sparsity
    assert res.buffers == ("embeddings.position_ids", "h.0.attn.bias")
    assert int(res.ulp_histogram["count"].sum()) == 4
