"""The compiled per-tensor pass (subnetviz.analysis.bits_jit, numba) against independent references.

Proves: on planted pairs of every float dtype (sign crossings, -0/+0, distances in every ULP bin,
rows wider than one segment and a ragged last segment) the compiled pass gives the float64 / exact
integer reference's counts, tolerance sweep, η rule (both forms), largest |Δ|, mask, mask at a
tolerance and row/column counts; ``compare_pair`` and the FP8 block pass give the same PairStats
with the compiled kernels as with the NumPy kernels (SUBNETVIZ_JIT=0 path) on 5 %, 30 % and 90 %
changed; without numba everything falls back to NumPy.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from subnetviz.analysis import bits, bits_jit
from subnetviz.analysis.bits import ULP_EDGES, ulp_bins

pytestmark = pytest.mark.skipif(bits_jit.kernels() is None, reason="numba not installed: the NumPy path runs")

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64]


def _planted(dtype: torch.dtype, shape: tuple[int, int], share: float, seed: int, steps=(1, 300)):
    """(a, b) of ``dtype``: a share of entries moved by 1..300 ULPs (``steps``) either way, some signs
    flipped, one +0 -> -0 pair, one unchanged zero."""
    rng = np.random.default_rng(seed)
    a = torch.from_numpy(rng.normal(scale=0.05, size=shape)).to(dtype)
    xi = bits.int_view(a).numpy().copy()
    width = 8 * xi.itemsize
    move = rng.random(shape) < share
    steps = rng.integers(*steps, size=shape) * np.where(rng.random(shape) < 0.5, -1, 1)
    neg = xi < 0  # steps move the magnitude, never through zero (no NaN patterns)
    sign_bit = np.array(-1 << (width - 1)).astype(xi.dtype)
    m = (xi & np.array((1 << (width - 1)) - 1).astype(xi.dtype)).astype(np.int64)
    m = np.where(m + steps < 0, m - steps, m + steps)
    moved = m.astype(xi.dtype) | np.where(neg, sign_bit, np.zeros_like(sign_bit))
    yi = np.where(move, moved, xi)
    flip = move & (rng.random(shape) < 0.02)
    yi = np.where(flip, xi ^ np.array(-1 << (width - 1)).astype(xi.dtype), yi)  # sign changes
    xi[0, 0], yi[0, 0] = 0, np.array(-1 << (width - 1)).astype(xi.dtype)  # +0 vs -0
    xi[0, 1] = yi[0, 1] = 0
    return xi, yi


def _reference(xi: np.ndarray, yi: np.ndarray, dtype: torch.dtype, tols, eta: float, mask_tol):
    """Exact float64 values, |Δ| rounded to the compute dtype (float32 for 16-bit types) as the pass
    takes it, tolerances and η rounded to it as NumPy scalars are; ULP distances from the ordered keys
    in Python integers; counts by plain comparisons."""
    ctype = np.float32 if xi.itemsize <= 2 else np.float64
    val = lambda v: torch.from_numpy(v).view(dtype).to(torch.float64).numpy()  # noqa: E731 (exact upcast)
    va, vb = val(xi), val(yi)
    d = np.abs(vb.astype(ctype) - va.astype(ctype))  # the two values are exact in ctype
    mag = (1 << (8 * xi.itemsize - 1)) - 1
    key = np.vectorize(lambda v: -(int(v) & mag) if v < 0 else int(v), otypes=[object])
    dist = np.abs(key(yi) - key(xi))
    ne = xi != yi
    thr = ctype(eta) * np.maximum(np.abs(va).astype(ctype), np.abs(vb).astype(ctype))
    return {
        "changed": int(ne.sum()),
        "largest": float(d.max()),
        "tol": [int(np.count_nonzero(d > ctype(t))) for t in tols],
        "rel": int(np.count_nonzero(d > thr)),
        "rel_nonzero": int(np.count_nonzero(dist > 0)),
        "above": [int(np.count_nonzero(dist > e)) for e in ULP_EDGES],
        "mask": ne,
        "mask_tol": d > ctype(mask_tol),
        "rows": ne.sum(1),
        "cols": ne.sum(0),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 2 * bits_jit.SEG + 37), (300, 5), (1, 400), (1000, 13), (51, 1000)])
def test_pair_pass_matches_the_float64_reference(dtype, shape):
    xi, yi = _planted(dtype, shape, 0.4, seed=shape[1])
    tols = (0.0, 1e-6, 1e-4, 1e-2)
    ref = _reference(xi, yi, dtype, tols, 1e-2, 1e-4)
    assert ref["above"][0] > 0 and ref["above"][-1] > 0 and ref["tol"][-1] < ref["tol"][0]  # spans the bins
    assert np.isfinite(torch.from_numpy(yi).view(dtype).to(torch.float64).numpy()).all()
    name = str(dtype)[6:]
    for rel_nonzero in (False, True):
        mask = np.ones(shape, np.bool_)
        rows, cols = np.full(shape[0], -1, np.int64), np.zeros(shape[1], np.int64)
        out = bits_jit.pair_pass(xi, yi, name, tols, ULP_EDGES, 1e-2, rel_nonzero, mask, None, rows, cols)
        assert out.changed == ref["changed"] and out.tol == ref["tol"] and out.above == ref["above"]
        assert out.rel == (ref["rel_nonzero"] if rel_nonzero else ref["rel"])
        assert out.largest == ref["largest"]
        assert np.array_equal(mask, ref["mask"])
        assert np.array_equal(rows, ref["rows"]) and np.array_equal(cols, ref["cols"])
    at_tol = np.zeros(shape, np.bool_)
    out = bits_jit.pair_pass(xi, yi, name, tols, ULP_EDGES, 1e-2, False, at_tol, 1e-4, None, None)
    assert np.array_equal(at_tol, ref["mask_tol"]) and out.changed == ref["changed"]
    for mask_tol, want in ((None, ref["mask"]), (1e-4, ref["mask_tol"])):  # the mask bit-packed by the kernel
        packed = np.zeros((xi.size + 7) // 8, np.uint8)
        out = bits_jit.pair_pass(xi, yi, name, tols, ULP_EDGES, 1e-2, False, None, mask_tol, None, None, packed)
        assert np.array_equal(packed, np.packbits(want.reshape(-1))) and out.tol == ref["tol"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_counts_from_the_smallest_change_match_the_reference(dtype):
    """A segment whose changed entries are all further apart than a tolerance / ULP edge takes that count
    from its changed count instead of a counting pass: planted segments where every change is 300..600
    ULPs (the shortcut applies to the low thresholds), the +0 -> -0 segment (0 ULPs, |Δ| = 0: never)
    and segments of 1..300 ULPs; every count as the float64 reference's."""
    seg = bits_jit.SEG
    shape = (4, seg + 150)  # two segments a row, the second one ragged
    far_x, far_y = _planted(dtype, shape, 0.3, seed=7, steps=(300, 600))
    xi, yi = _planted(dtype, shape, 0.3, seed=8)
    xi[1:3], yi[1:3] = far_x[1:3], far_y[1:3]
    tols = (0.0, 1e-20, 1e-6, 1e-4, 1e-2)
    ref = _reference(xi, yi, dtype, tols, 1e-2, 1e-4)
    d = np.abs(torch.from_numpy(yi).view(dtype).double().numpy() - torch.from_numpy(xi).view(dtype).double().numpy())
    ne = xi != yi
    smallest = [d[r, c0 : c0 + seg][ne[r, c0 : c0 + seg]].min() for r in range(4) for c0 in (0, seg)]
    assert max(smallest) > 0.0 == min(smallest) and ref["above"][-1] < ref["changed"]  # both ways
    mask = np.zeros(shape, np.bool_)
    rows, cols = np.zeros(4, np.int64), np.zeros(shape[1], np.int64)
    out = bits_jit.pair_pass(xi, yi, str(dtype)[6:], tols, ULP_EDGES, 1e-2, False, mask, None, rows, cols)
    assert out.changed == ref["changed"] and out.tol == ref["tol"] and out.above == ref["above"]
    assert out.rel == ref["rel"] and out.largest == ref["largest"] and np.array_equal(mask, ref["mask"])
    assert np.array_equal(rows, ref["rows"]) and np.array_equal(cols, ref["cols"])


def test_pair_pass_float64_extremes():
    """float64 distances that need all 64 bits (the largest values of both signs) land in the last bin."""
    big = np.array([[0x7FEFFFFFFFFFFFFF, 1, 5]], dtype=np.int64)  # the largest finite value, subnormals
    other = big.copy()
    other[0, 0] |= np.int64(-(1 << 63))  # the same magnitude, negative: 2 × 0x7FEF... steps apart
    other[0, 1] = 2
    out = bits_jit.pair_pass(big, other, "float64", (0.0,), ULP_EDGES, 1e-3, False, None, None, None, None)
    assert out.changed == 2 and out.above == [1, 1, 1, 1, 1, 1] and out.largest == float("inf")


def _compare_both(a, b, options, monkeypatch):
    from subnetviz.analysis.sparsity import compare_pair

    fast = compare_pair(a, b, options, name="w")
    with monkeypatch.context() as m:
        m.setenv("SUBNETVIZ_JIT", "0")
        slow = compare_pair(a, b, options, name="w")
    return fast, slow


def _assert_same(fast, slow):
    for f in dataclasses.fields(fast):
        x, y = getattr(fast, f.name), getattr(slow, f.name)
        if isinstance(x, (np.ndarray, torch.Tensor)):
            assert np.array_equal(np.asarray(x), np.asarray(y)), f.name
        else:
            assert x == y, f.name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("share", [0.05, 0.3, 0.9])
def test_compare_pair_compiled_equals_numpy_kernels(dtype, share, monkeypatch):
    from subnetviz.analysis.sparsity import SparsityOptions

    xi, yi = _planted(dtype, (64, 700), share, seed=int(share * 100))
    a, b = (torch.from_numpy(v).view(dtype) for v in (xi, yi))
    for options in (
        SparsityOptions(),
        SparsityOptions(eta=1e-9, row_col=False),
        SparsityOptions(mask_tolerance=1e-3),
        SparsityOptions(keep_masks=False, tolerances=(0.0, 1e-3)),
    ):
        fast, slow = _compare_both(a, b, options, monkeypatch)
        _assert_same(fast, slow)
        assert fast.changed == int(np.count_nonzero(xi != yi))
    fast, slow = _compare_both(a[0], b[0], SparsityOptions(), monkeypatch)  # a 1-D tensor (a column)
    _assert_same(fast, slow)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("jit", [True, False])
def test_packed_mask_is_packbits_of_the_mask(dtype, jit, monkeypatch):
    """``packed=True``: the compiled pass writes the mask's bits itself, which must be np.packbits of the
    bool mask at every bit offset (rows whose width is no multiple of 8 or of a segment, a 1-D column,
    a tensor shorter than a byte), exact and at a tolerance; the other numbers are unchanged. Without
    the compiled kernels (``jit`` False) the bool mask is packed at the end."""
    from subnetviz.analysis.sparsity import SparsityOptions, compare_pair

    if not jit:
        monkeypatch.setenv("SUBNETVIZ_JIT", "0")
    for seed, shape in enumerate([(5,), (1, 3), (13, 5), (3, 2049), (4100,), (9, 3, 5), (17, 4096), (64, 33)]):
        rows = shape[0] if len(shape) > 1 else 1
        xi, yi = _planted(dtype, (rows, int(np.prod(shape)) // rows), 0.3, seed=seed)
        a, b = (torch.from_numpy(v.reshape(shape)).view(dtype) for v in (xi, yi))
        for options in (SparsityOptions(), SparsityOptions(mask_tolerance=1e-3), SparsityOptions(row_col=False)):
            ref, got = compare_pair(a, b, options), compare_pair(a, b, options, packed=True)
            assert got.mask is None and ref.mask_bits is None
            want = np.packbits(ref.mask.numpy().reshape(-1))
            assert got.mask_bits.dtype == np.uint8 and np.array_equal(got.mask_bits, want), (shape, options)
            _assert_same(dataclasses.replace(got, mask_bits=None), dataclasses.replace(ref, mask=None))


@pytest.mark.parametrize("share", [0.0, 0.0004, 0.3])
def test_packed_bits_overwrite_whatever_the_array_held(share):
    """The pass writes every byte of the packed mask (the caller allocates it without zeroing): an array
    that starts all ones comes back as np.packbits of the mask, with segments and blocks of short rows
    that have no change (0 and 0.04 % changed) beside ones that do, at offsets that are no multiple of 8."""
    for seed, shape in enumerate([(3, 2 * bits_jit.SEG + 3), (301, 13), (1, 5000), (7, 1000), (2, 9)]):
        xi, yi = _planted(torch.bfloat16, shape, share, seed=seed)
        n = xi.size
        mask = np.zeros(shape, np.bool_)
        bits_jit.pair_pass(xi, yi, "bfloat16", (1e-5,), ULP_EDGES, 1e-3, True, mask, None, None, None)
        bits = np.full((n + 7) // 8, 0xFF, np.uint8)
        bits_jit.pair_pass(xi, yi, "bfloat16", (1e-5,), ULP_EDGES, 1e-3, True, None, None, None, None, bits)
        assert np.array_equal(bits, np.packbits(mask.reshape(-1))), shape


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_the_compiled_pass_refuses_non_finite_entries_changed_or_not(dtype, bad):
    """The compiled pass checks finiteness as it compares (the update pass then skips its own read of
    both tensors for it): a NaN / Inf in ``a`` or ``b`` is refused at any position, in long rows, in
    blocks of short rows and in a 1-D column, whether that entry changed or is the same in both, in a
    pair with changes and in one without; a finite pair passes. A cast pair is not checked by the pass
    (``checks_finite`` says so, and the caller checks)."""
    from subnetviz.analysis.sparsity import SparsityOptions, checks_finite, compare_pair
    from subnetviz.errors import NonFiniteError

    for seed, shape in enumerate([(3, 2 * bits_jit.SEG + 5), (40, 7), (300,), (1, 9)]):
        rows = shape[0] if len(shape) > 1 else 1
        xi, yi = _planted(dtype, (rows, int(np.prod(shape)) // rows), 0.3, seed=seed)
        a, b = (torch.from_numpy(v.reshape(shape)).view(dtype) for v in (xi, yi))
        other = torch.float16 if dtype != torch.float16 else torch.float32  # a cast pair: checked by the caller
        assert checks_finite(a, b, SparsityOptions()) and not checks_finite(a, b.to(other), SparsityOptions())
        compare_pair(a, b, packed=True)  # finite: passes
        n = a.numel()
        # an unchanged pair too: a segment with no change never reaches the statistics, so only the
        # check in the changes' own loop sees an entry that is the same NaN / Inf on both sides
        for b0 in (b, a.clone()):
            for where in (0, n // 2, n - 1):
                for side in ("a", "both", "b"):
                    x, y = a.clone(), b0.clone()
                    for t in (x, y) if side == "both" else (x if side == "a" else y,):
                        t.view(-1)[where] = bad
                    with pytest.raises(NonFiniteError, match="w.q"):
                        compare_pair(x, y, name="w.q", packed=True)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("share", [0.05, 0.3, 0.9])
def test_fp8_block_pass_compiled_equals_numpy(dtype, share, monkeypatch):
    """The compiled FP8 block pass against the NumPy one (gather + float pass) and the dense pass."""
    from subnetviz.analysis import quant_codes
    from subnetviz.analysis.quant import compare_quantized, dequantize
    from subnetviz.analysis.sparsity import SparsityOptions, compare_pair

    monkeypatch.setattr(quant_codes, "FAST_MIN_BAND", 1)
    g = torch.Generator().manual_seed(int(share * 10))
    m, n, blk = 100, 300, (32, 64)  # ragged block rows and columns
    a = (torch.randn(m, n, generator=g) * 8).to(dtype)
    b = a.clone()
    b.view(torch.int8)[torch.rand(m, n, generator=g) < share] ^= 1
    b.view(torch.int8)[0, 0] = -128
    sa = torch.rand(4, 5, generator=g) + 0.5
    sb = sa.clone()
    sb[1, 2] *= 1.25
    sb[3, 4] *= 0.5
    sa[2, 1] = sb[2, 1] = 2.0**-120
    b[4:9], b[40:44] = a[4:9], a[40:44]  # same codes: same weights (skipped), and where sb[1, 2] changed
    for opts in (
        SparsityOptions(),
        SparsityOptions(eta=1e-9, row_col=False),
        SparsityOptions(keep_masks=False),
        SparsityOptions(mask_tolerance=0.05),  # a mask at a tolerance: the dense bands (compare_blocks: None)
    ):
        got = compare_quantized(a, sa, b, sb, opts, name="w", scale_names=("sa", "sb"), block=blk)
        with monkeypatch.context() as mp:
            mp.setenv("SUBNETVIZ_JIT", "0")
            slow = compare_quantized(a, sa, b, sb, opts, name="w", scale_names=("sa", "sb"), block=blk)
            ref = compare_pair(dequantize(a, sa, "block", blk), dequantize(b, sb, "block", blk), opts, name="w")
        _assert_same(got.stats, slow.stats)
        assert got.stats.changed == slow.stats.changed == ref.changed and got.changed_codes == slow.changed_codes
        assert (got.stats.changed_tol, got.stats.changed_rel, got.stats.max_abs_delta) == (
            ref.changed_tol,
            ref.changed_rel,
            ref.max_abs_delta,
        )
        assert got.stats.ulp_hist == tuple(ulp_bins(got.changed_codes, quant_codes._code_counts(a, b)[1]))
        if not opts.keep_masks:
            assert got.stats.mask is None
            continue
        assert torch.equal(got.stats.mask, ref.mask)
        if opts.mask_tolerance is None:
            assert not ref.mask[4:9].any() and ref.mask[40:44, 128:192].all() and not ref.mask[40:44, :128].any()
        else:
            assert quant_codes.compare_blocks(a, sa, b, sb, opts, name="w", block=blk) is None
            assert 0 < int(ref.mask.sum()) < got.stats.changed


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_decoding_by_fields_equals_torch_bit_for_bit(dtype):
    """The compiled pass decodes FP8 codes arithmetically (no table): every one of the 256 codes gives
    torch's float32 bits, NaN payloads and signed zeros included."""
    codes = np.arange(256, dtype=np.uint8)
    want = torch.from_numpy(codes).view(dtype).float().numpy().view(np.uint32)
    got = bits_jit.fp8_values(codes, str(dtype)[6:]).view(np.uint32)
    assert np.array_equal(got, want), [hex(c) for c in codes[got != want]]


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.int8, torch.uint8])
def test_code_counts_compiled_equals_numpy(dtype, monkeypatch):
    """Changed codes and code-step bins of 1-byte codes (FP8 sign-magnitude steps, +0 -> -0 at 0 steps;
    integer codes by difference, up to 255 apart) from the compiled pass and from NumPy, over more than
    one segment."""
    from subnetviz.analysis.quant_codes import _code_counts

    g = torch.Generator().manual_seed(5)
    n = 3 * bits_jit.SEG + 11
    x = torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8)
    y = torch.where(torch.rand(n, generator=g) < 0.3, torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8), x)
    x[:2], y[:2] = torch.tensor([0, 3], dtype=torch.uint8), torch.tensor([0x80, 3], dtype=torch.uint8)
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        bad = (x & 0x7F) >= (0x7F if dtype == torch.float8_e4m3fn else 0x7C)  # no NaN/Inf codes
        x, y = torch.where(bad, 0, x), torch.where((y & 0x7F) >= 0x7C, 1, y)
    a, b = x.view(dtype).reshape(7, -1) if n % 7 == 0 else x.view(dtype), y.view(dtype)
    fast = _code_counts(a, b.reshape(a.shape))
    with monkeypatch.context() as m:
        m.setenv("SUBNETVIZ_JIT", "0")
        slow = _code_counts(a, b.reshape(a.shape))
    assert fast == slow and fast[0] == int((x != y).sum()) and fast[1][-2] > 0  # 1-byte codes: < 256 steps


def test_without_numba_the_numpy_kernels_run(monkeypatch):
    from subnetviz.analysis.sparsity import compare_pair

    monkeypatch.setitem(bits_jit._STATE, "_bits_numba", None)  # as if numba were not installed
    assert bits_jit.kernels() is None and bits_jit.warm() == 0.0
    a = torch.randn(5, 6).to(torch.bfloat16)
    b = a.clone()
    b[1, 2] += 1
    assert compare_pair(a, b).changed == 1


def test_no_writable_cache_location_compiles_in_memory(tmp_path):
    """Where numba finds no cache location (a read-only install and no writable user cache; simulated by
    a locator that never applies), the kernels compile in memory with a warning instead of failing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "noloc.py").write_text(
        "class NoLocator:\n    @classmethod\n    def from_function(cls, py_func, py_file):\n        return None\n"
    )
    repo = Path(__file__).resolve().parents[2]
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    from subnetviz.analysis import bits_jit\n"
        "    assert bits_jit.kernels() is not None\n"
        "from subnetviz.analysis.sparsity import compare_pair\n"
        "a = torch.zeros(3, 4, dtype=torch.bfloat16); b = a.clone(); b[1, 2] = 1\n"
        "print(compare_pair(a, b).changed, sum('compiling in memory' in str(x.message) for x in w))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{repo}",
        "NUMBA_CACHE_LOCATOR_CLASSES": "noloc.NoLocator",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("NUMBA_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    changed, warned = out.stdout.split()
    assert changed == "1" and int(warned) > 0
