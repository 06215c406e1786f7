"""Update sparsity against planted answers and a float64 NumPy reference.

Proves: per-tensor changed counts (exact, every tolerance, the η rule), the ULP histogram, row /
column counts and max |Δ| on a hand-planted pair and on random pairs (chunked and not); the
aggregations (per layer × module sums to the total, weighted vs per-tensor mean, global sparsity,
density vs sparsity labels); fused QKV splits (GPT-2 thirds, GPT-NeoX interleaved heads, the
latter checked against HF's attention); the precision option; NaN/Inf refusal.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import subnetviz.analysis.sparsity as sp
from subnetviz.analysis.sparsity import SparsityOptions, compare_pair
from subnetviz.analysis.updates import analyze_updates
from subnetviz.errors import NonFiniteError
from tests.ckpt_fixtures import bf16_step, read_state_dict, write_folder
from tests.models import HEADS, HIDDEN, neox_config, tiny_model

TOLS = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4)


# --- the float64 NumPy reference --------------------------------------------------------------------
def _bits_and_values(t: torch.Tensor) -> tuple[np.ndarray, np.ndarray, int]:
    """(unsigned bit patterns, exact float64 values, bit width) without torch's float conversions."""
    if t.dtype == torch.bfloat16:
        u = t.view(torch.int16).numpy().view(np.uint16)
        return u, (u.astype(np.uint32) << 16).view(np.float32).astype(np.float64), 16
    if t.dtype == torch.float16:
        u = t.view(torch.int16).numpy().view(np.uint16)
        return u, u.view(np.float16).astype(np.float64), 16
    if t.dtype == torch.float32:
        u = t.view(torch.int32).numpy().view(np.uint32)
        return u, u.view(np.float32).astype(np.float64), 32
    raise TypeError(t.dtype)


def reference(a: torch.Tensor, b: torch.Tensor, tols=TOLS, eta=1e-3) -> dict:
    ua, va, w = _bits_and_values(a)
    ub, vb, _ = _bits_and_values(b)
    sign = np.uint64(1 << (w - 1))

    def ordered(u):
        u = u.astype(np.uint64)
        mag = (u & (sign - np.uint64(1))).astype(np.int64)
        return np.where(u & sign, -mag, mag)

    ne = ua != ub
    d = np.abs(vb - va)
    dist = np.abs(ordered(ub) - ordered(ua))[ne]
    edges = [(0, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 256), (257, np.inf)]
    a2 = ne.reshape(ne.shape[0], -1) if ne.ndim >= 2 else ne.reshape(-1, 1)
    return {
        "changed": int(ne.sum()),
        "changed_tol": tuple(int((d > t).sum()) for t in tols),
        "changed_rel": int((d > eta * np.maximum(np.abs(va), np.abs(vb))).sum()),
        "ulp_hist": tuple(int(((dist >= lo) & (dist <= hi)).sum()) for lo, hi in edges),
        "max_abs_delta": float(d[ne].max()) if ne.any() else 0.0,
        "rows": a2.sum(1),
        "cols": a2.sum(0),
        "mask": ne,
    }


def assert_matches(st, ref):
    assert st.changed == ref["changed"]
    assert st.changed_tol == ref["changed_tol"]
    assert st.changed_rel == ref["changed_rel"]
    assert st.ulp_hist == ref["ulp_hist"]
    assert st.max_abs_delta == pytest.approx(ref["max_abs_delta"], rel=1e-6, abs=0)
    np.testing.assert_array_equal(st.row_counts, ref["rows"])
    np.testing.assert_array_equal(st.col_counts, ref["cols"])
    np.testing.assert_array_equal(st.mask.numpy(), ref["mask"])


# --- planted by hand --------------------------------------------------------------------------------
def _bf(v: float) -> torch.Tensor:
    return torch.tensor([v], dtype=torch.bfloat16)


def _from_bits(bits: int) -> torch.Tensor:
    return torch.tensor([bits - 0x10000 if bits >= 0x8000 else bits], dtype=torch.int16).view(torch.bfloat16)


# (count, base value, finetuned value): sizes chosen around the tolerances. 1 ULP at 2^-10 is 2^-17 = 7.6e-6.
GROUPS = [
    (5, _bf(2**-10), bf16_step(_bf(2**-10), 1)),  # Δ 7.6e-6: > 1e-6, <= 1e-5; 1 ULP
    (4, _bf(2**-10), bf16_step(_bf(2**-10), 2)),  # Δ 1.5e-5: > 1e-5, <= 1e-4; 2 ULP
    (3, _bf(-(2**-10)), bf16_step(_bf(-(2**-10)), 3)),  # |Δ| 2.3e-5, negative side; 3 ULP
    (2, _bf(2**-20), bf16_step(_bf(2**-20), 1)),  # Δ 7.5e-9 <= every tolerance, yet bitwise changed
    (2, _bf(2**-14), bf16_step(_bf(2**-14), 1)),  # Δ 4.8e-7: > 1e-7, <= 1e-6
    (1, _bf(0.01), _bf(2.0)),  # large: > 256 ULP, the max |Δ|
    (1, _bf(-0.0), _bf(0.0)),  # -0 -> +0: bits differ, Δ = 0 (first ULP bin, no tolerance, not relative)
    (2, _bf(1.0), bf16_step(_bf(1.0), 7)),  # 5-8 ULP
    (1, _bf(1.0), bf16_step(_bf(1.0), 12)),  # 9-16 ULP
    (1, _bf(1.0), bf16_step(_bf(1.0), 100)),  # 17-256 ULP
    (1, _from_bits(0x0001), _from_bits(0x8001)),  # crosses zero between subnormals: 2 ULP
]
PLANTED = {
    "changed": 23,
    "changed_tol": (19, 19, 17, 12, 5),  # 1e-8 drops 2^-20, ±0, subnormals; 1e-6 drops 2^-14; ...
    "changed_rel": 22,  # all but ±0: η = 1e-3 is below half a bf16 ULP (relative)
    "ulp_hist": (10, 5, 3, 2, 1, 1, 1),
}


def planted_pair(shape=(12, 10), stride=5):
    gen = torch.Generator().manual_seed(0)
    a = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16).reshape(-1)
    b = a.clone()
    pos = []
    p = 0
    for count, va, vb in GROUPS:
        for _ in range(count):
            a[p], b[p] = va[0], vb[0]
            pos.append(p)
            p += stride
    return a.reshape(shape), b.reshape(shape), np.array(pos)


def test_planted_pair_matches_hand_counts_and_reference():
    a, b, pos = planted_pair()
    st = compare_pair(a, b, SparsityOptions())
    assert st.changed == PLANTED["changed"]
    assert st.changed_tol == PLANTED["changed_tol"]
    assert st.changed_rel == PLANTED["changed_rel"]
    assert st.ulp_hist == PLANTED["ulp_hist"]
    assert sum(st.ulp_hist) == st.changed
    assert st.max_abs_delta == 2.0 - float(_bf(0.01))
    np.testing.assert_array_equal(st.row_counts, np.bincount(pos // 10, minlength=12))
    np.testing.assert_array_equal(st.col_counts, np.bincount(pos % 10, minlength=10))
    assert st.mask.shape == a.shape and st.mask.reshape(-1).nonzero().reshape(-1).tolist() == pos.tolist()
    assert_matches(st, reference(a, b))


def test_mask_at_a_tolerance_keeps_only_bigger_changes():
    a, b, _ = planted_pair()
    st = compare_pair(a, b, SparsityOptions(mask_tolerance=1e-5))
    ref = reference(a, b)
    d = np.abs(_bits_and_values(b)[1] - _bits_and_values(a)[1])
    np.testing.assert_array_equal(st.mask.numpy(), d > 1e-5)
    assert int(st.mask.sum()) == PLANTED["changed_tol"][3]
    assert st.changed == ref["changed"]  # the exact count is unaffected by the mask choice


@pytest.mark.parametrize("numpy_kernels", [True, False])  # False: the torch path a GPU takes
@pytest.mark.parametrize("chunk", [None, 7])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(37, 23), (101,), (4, 3, 5)])
def test_random_pairs_match_float64_reference(monkeypatch, numpy_kernels, chunk, dtype, shape):
    monkeypatch.setattr(sp, "_NUMPY_ON_CPU", numpy_kernels)
    if chunk:  # several chunks of whole rows, the last one partial: boundaries must not matter
        monkeypatch.setattr(sp, "CHUNK_ELEMENTS", chunk * (shape[-1] if len(shape) > 1 else 1))
    gen = torch.Generator().manual_seed(hash((dtype, shape)) % 1000)
    a = (torch.randn(shape, generator=gen) * 0.05).to(dtype)
    n = a.numel()
    which = torch.rand(shape, generator=gen) < 0.4
    sizes = 10 ** (torch.rand(shape, generator=gen) * 7 - 10)  # 1e-10 .. 1e-3
    signs = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
    b = torch.where(which, (a.double() + signs * sizes).to(dtype), a)
    b.view(-1)[: max(1, n // 20)] = -b.view(-1)[: max(1, n // 20)]  # some sign flips
    st = compare_pair(a, b, SparsityOptions())
    assert_matches(st, reference(a, b))
    assert 0 < st.changed < n


@pytest.mark.parametrize("path", ["jit", "numpy", "torch"])
@pytest.mark.parametrize("shape", [(3, 5), (15,)])
def test_finite_bf16_values_whose_delta_float32_cannot_hold_are_compared_not_refused(monkeypatch, path, shape):
    """bfloat16 is compared in float32: 2e38 -> -2e38 differ by 4e38, past float32's 3.4e38, so the pass saw an
    infinite |Δ| and refused finite weights as 'NaN or Inf'. Every count as the float64 reference gives it, the
    largest |Δ| exact; a true Inf beside such a pair is still refused."""
    monkeypatch.setenv("SUBNETVIZ_JIT", "0" if path == "numpy" else "1")
    monkeypatch.setattr(sp, "_NUMPY_ON_CPU", path != "torch")
    monkeypatch.setattr(sp, "CHUNK_ELEMENTS", 5)  # several chunks: the overflow in one of them
    a = (torch.arange(15, dtype=torch.float64) / 7).reshape(shape).to(torch.bfloat16)
    a.view(-1)[[4, 11]] = torch.tensor([2e38, -3e38], dtype=torch.bfloat16)
    b = a.clone()
    b.view(-1)[[4, 11, 12]] = torch.tensor([-2e38, 3e38, 7.0], dtype=torch.bfloat16)
    st = compare_pair(a, b, SparsityOptions())
    ref = reference(a, b)
    assert_matches(st, ref)
    assert st.changed == 3 and st.max_abs_delta == float((b.double() - a.double()).abs().max())  # 6e38, exactly
    b.view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteError, match="NaN/Inf|NaN or Inf"):
        compare_pair(a, b, SparsityOptions())


@pytest.mark.parametrize("numpy_kernels", [True, False])  # False: the fused torch kernel a GPU runs
@pytest.mark.parametrize("density", [0.02, 0.3, 0.6, 0.97])  # both sides of DENSE_FRACTION (0.35)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("seed", range(3))
def test_one_pass_matches_reference_at_every_density(monkeypatch, numpy_kernels, density, dtype, seed):
    """Randomized: the gathered (few changed) and whole-chunk (most changed) CPU paths and the fused
    torch kernel give the float64 NumPy reference's numbers, with a mask at a tolerance and a
    relative η that is not 'Δ != 0', over several chunks with a partial last one."""
    monkeypatch.setattr(sp, "_NUMPY_ON_CPU", numpy_kernels)
    monkeypatch.setattr(sp, "CHUNK_ELEMENTS", 11 * 29)
    gen = torch.Generator().manual_seed(seed)
    shape = (50, 29)
    a = (torch.randn(shape, generator=gen) * 0.05).to(dtype)
    which = torch.rand(shape, generator=gen) < density
    sizes = 10 ** (torch.rand(shape, generator=gen) * 8 - 10)  # 1e-10 .. 1e-2
    b = torch.where(which, (a.double() + sizes * torch.randn(shape, generator=gen).sign()).to(dtype), a)
    b.view(-1)[:7] = -b.view(-1)[:7]  # sign crossings
    a.view(-1)[8], b.view(-1)[8] = -0.0, 0.0  # a bit change with Δ = 0
    eta = 1e-2 if dtype != torch.float32 else 1e-3  # bf16/fp16: above half an ULP, a real relative test
    st = compare_pair(a, b, SparsityOptions(eta=eta, mask_tolerance=1e-6))
    ref = reference(a, b, eta=eta)
    d = np.abs(_bits_and_values(b)[1] - _bits_and_values(a)[1])
    np.testing.assert_array_equal(st.mask.numpy(), d > 1e-6)
    ref["mask"] = d > 1e-6
    assert_matches(st, ref)
    exact = compare_pair(a, b, SparsityOptions(eta=eta))
    np.testing.assert_array_equal(exact.mask.numpy(), reference(a, b)["mask"])


@pytest.mark.parametrize("density", [0.05, 0.9])  # gathered and whole-chunk statistics
@pytest.mark.parametrize("shape", [(700, 16), (600, 13), (300, 1), (1000,)])
def test_row_and_column_counts_of_long_chunks(monkeypatch, density, shape):
    """Row counts from 8-byte popcounts (columns a multiple of 8) or byte sums (not), column counts
    from uint8 sums of 255-row blocks plus a remainder: chunks of more than 255 rows, with and
    without a partial last chunk, against the float64 NumPy reference."""
    cols = shape[1] if len(shape) > 1 else 1
    for chunk in (None, 520):
        if chunk:
            monkeypatch.setattr(sp, "CHUNK_ELEMENTS", chunk * cols)
        gen = torch.Generator().manual_seed(len(shape) + cols)
        a = (torch.randn(shape, generator=gen) * 0.05).to(torch.bfloat16)
        which = torch.rand(shape, generator=gen) < density
        b = torch.where(which, (a.float() * (1 + 2**-6)).to(torch.bfloat16), a)
        st = compare_pair(a, b, SparsityOptions())
        assert_matches(st, reference(a, b))
        assert st.col_counts.max() > 0 and st.row_counts.dtype == np.int64


def test_gpu_kernel_falls_back_to_eager_when_compilation_fails(monkeypatch):
    """The CUDA dispatcher compiles the fused kernel lazily; a compiler failure warns once and
    the eager kernel gives the numbers (tested without a GPU: the kernel runs on CPU tensors)."""
    monkeypatch.setattr(sp, "_COMPILED", {})

    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("no triton")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    assert sp._chunk_kernel(torch.device("cpu")) is sp._fused_chunk_stats
    kernel = sp._chunk_kernel(torch.device("cuda"))
    a, b, _ = planted_pair()
    args = (a.view(torch.int16), b.view(torch.int16), torch.bfloat16, torch.float32, TOLS, 1e-3, True, None)
    with pytest.warns(RuntimeWarning, match="no triton"):
        got = kernel(*args)
    assert sp._chunk_kernel(torch.device("cuda")) is sp._fused_chunk_stats  # no second attempt
    counts = got[1].tolist()  # [changed, per tolerance, η rule, per ULP edge]
    assert counts[0] == PLANTED["changed"] and counts[1 : 1 + len(TOLS)] == list(PLANTED["changed_tol"])
    assert counts[1 + len(TOLS)] == PLANTED["changed_rel"]


@pytest.mark.parametrize("chunk", [None, 5])
def test_the_gpu_path_packs_its_mask_and_gives_the_cpu_numbers(monkeypatch, chunk):
    """The torch pass a GPU runs (NumPy off): its mask packed on the device (``_pack_bits``) is
    np.packbits of the CPU pass's mask at every bit offset (sizes no multiple of 8, a 1-D column,
    several chunks with a partial last one), exact and at a tolerance, with and without row/column
    counts, and every other number is the CPU pass's."""
    gen = torch.Generator().manual_seed(7)
    for shape in [(5,), (13, 5), (40, 33), (9, 3, 5), (1, 3)]:
        a = (torch.randn(shape, generator=gen) * 0.05).to(torch.bfloat16)
        which = torch.rand(shape, generator=gen) < 0.3
        b = torch.where(which, (a.double() * (1 + 10 ** (torch.rand(shape, generator=gen) * 4 - 6))).to(a.dtype), a)
        for options in (SparsityOptions(), SparsityOptions(mask_tolerance=1e-4), SparsityOptions(row_col=False)):
            want = compare_pair(a, b, options)
            with monkeypatch.context() as m:
                m.setattr(sp, "_NUMPY_ON_CPU", False)
                if chunk:
                    m.setattr(sp, "CHUNK_ELEMENTS", chunk * (a[0].numel() if a.dim() > 1 else 1))
                got = compare_pair(a, b, options, packed=True)
                plain = compare_pair(a, b, options)
            assert got.mask is None and np.array_equal(got.mask_bits, np.packbits(want.mask.numpy().reshape(-1)))
            assert torch.equal(plain.mask, want.mask), (shape, options)
            for f in ("changed", "changed_tol", "changed_rel", "ulp_hist", "max_abs_delta"):
                assert getattr(got, f) == getattr(want, f), (shape, options, f)
            if options.row_col:
                assert np.array_equal(got.row_counts, want.row_counts) and got.row_counts.dtype == np.int64
                assert np.array_equal(got.col_counts, want.col_counts)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_the_gpu_path_refuses_a_non_finite_entry_that_did_not_change(monkeypatch, bad):
    """The fused kernel takes |Δ| of every entry, so a NaN / Inf that is the same in both tensors
    (NaN − NaN, Inf − Inf are NaN) is refused as the compiled CPU pass refuses it, in any chunk."""
    monkeypatch.setattr(sp, "_NUMPY_ON_CPU", False)
    monkeypatch.setattr(sp, "CHUNK_ELEMENTS", 4 * 10)
    a, b, _ = planted_pair()
    for where in (0, 61, a.numel() - 1):
        x, y = a.clone(), b.clone()
        x.view(-1)[where] = y.view(-1)[where] = bad
        with pytest.raises(NonFiniteError, match="w.k"):
            compare_pair(x, y, name="w.k")


TRITON_DTYPES = [torch.bfloat16, torch.float16, torch.float32]


@pytest.mark.parametrize("dtype", TRITON_DTYPES)
def test_the_triton_pass_gives_the_cpu_numbers(monkeypatch, dtype):
    """The one-kernel Triton pass a GPU runs (here in Triton's interpreter, on the CPU), both kernels (one
    tile per program, and several row tiles accumulated in 8-bit fields): every statistic, row/column
    counts and the mask (bit-packed by the kernel, and unpacked) are the NumPy pass's, over tiles with
    partial edges (rows and columns no multiple of the tile, several programs along the rows), exact and
    at a tolerance, with a relative η that is not 'Δ != 0', with 2 and 7 tolerances; a NaN that did not
    change is refused.

    Each shape runs two of the five option sets per dtype, in turn: over the three dtypes every shape meets every
    option set, and every dtype every option set (twice), in 30 interpreted passes instead of the 75 of every
    combination (the interpreter ran them for a minute, the suite's longest test)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs in its own interpreter (test_the_triton_pass_in_triton_s_interpreter)")
    from subnetviz.analysis import bits_triton

    monkeypatch.setattr(sp, "_TRITON_ON_CUDA", True)  # a failure switches it off: restored after the test
    # tiles of 64 columns (the GPU's are wider): partial tiles at these widths, and less padding to interpret
    monkeypatch.setattr(bits_triton, "BLOCK_COLS", 64)
    monkeypatch.setattr(bits_triton, "LOOP_COLS", 64)
    calls = []
    real = bits_triton.pair_pass
    monkeypatch.setattr(bits_triton, "pair_pass", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    gen = torch.Generator().manual_seed(11)
    cases = [((40, 264), 16), ((17, 520), 3), ((5, 2, 8), 16), ((150, 24), 3), ((150, 24), 0)]
    option_sets = (
        SparsityOptions(),
        SparsityOptions(eta=1e-2, mask_tolerance=1e-5),
        SparsityOptions(row_col=False),
        SparsityOptions(keep_masks=False, tolerances=(0.0, 1e-3)),
        SparsityOptions(tolerances=tuple(10.0**-k for k in range(3, 10))),  # 7: the one-tile kernel
    )
    turn = 2 * TRITON_DTYPES.index(dtype)  # this dtype's offsets: 0-1, 2-3, 4-0 (mod 5) from each shape's index
    for c, (shape, iterations) in enumerate(cases):  # row tiles per program of the accumulating kernel; 0: one tile
        monkeypatch.setattr(bits_triton, "ITERATIONS", iterations)
        a = (torch.randn(shape, generator=gen) * 0.05).to(dtype)
        which = torch.rand(shape, generator=gen) < 0.3
        b = torch.where(which, (a.double() * (1 + 10 ** (torch.rand(shape, generator=gen) * 4 - 6))).to(dtype), a)
        b.view(-1)[:5] = -b.view(-1)[:5]  # sign crossings
        for options in (option_sets[(c + turn) % 5], option_sets[(c + turn + 1) % 5]):
            want = compare_pair(a, b, options)
            with monkeypatch.context() as m:
                m.setattr(sp, "_NUMPY_ON_CPU", False)
                n = len(calls)
                got = compare_pair(a, b, options, packed=True)
                plain = compare_pair(a, b, options) if options == SparsityOptions() else got  # the unpacked mask
                assert len(calls) == n + 1 + (plain is not got), "the Triton pass did not run"
            for f in ("changed", "changed_tol", "changed_rel", "ulp_hist", "max_abs_delta"):
                assert getattr(got, f) == getattr(want, f) == getattr(plain, f), (shape, options, f)
            if options.keep_masks:
                assert np.array_equal(got.mask_bits, np.packbits(want.mask.numpy().reshape(-1))), (shape, options)
                assert plain is got or torch.equal(plain.mask, want.mask)
            else:
                assert got.mask_bits is None
            if options.row_col:
                assert np.array_equal(got.row_counts, want.row_counts) and got.row_counts.dtype == np.int64
                assert np.array_equal(got.col_counts, want.col_counts) and got.col_counts.dtype == np.int64
    monkeypatch.setattr(sp, "_NUMPY_ON_CPU", False)
    x, y = a.clone(), b.clone()
    x.view(-1)[-1] = y.view(-1)[-1] = float("nan")
    with pytest.raises(NonFiniteError, match="w.v"):
        compare_pair(x, y, name="w.v")


def test_the_triton_pass_takes_only_views_it_can_launch(monkeypatch):
    """Which 2-D integer views go to the Triton kernel (the others take the torch pass): 16/32-bit, a column
    count that is a multiple of 8, and no more column tiles than a launch grid's second dimension holds (a
    (1, 20M) view failed to launch, and the failure switched the kernel off for every later tensor)."""
    from subnetviz.analysis import bits_triton

    monkeypatch.setattr(bits_triton, "AVAILABLE", True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # a CPU view counts as the interpreter's (no GPU here)

    def view(*shape, dtype=torch.int16):
        return torch.empty(shape, dtype=dtype, device="meta")

    assert (
        bits_triton.fits(view(4096, 11008))
        and bits_triton.fits(view(3, 8))
        and bits_triton.fits(view(2, 8, dtype=torch.int32))
    )
    assert not bits_triton.fits(view(40, 33)) and not bits_triton.fits(view(5, 4)) and not bits_triton.fits(view(0, 8))
    assert not bits_triton.fits(view(4, 8, dtype=torch.int64)) and not bits_triton.fits(view(64))
    widest = 65535 * min(bits_triton.BLOCK_COLS, bits_triton.LOOP_COLS)
    assert bits_triton.fits(view(1, widest)) and not bits_triton.fits(view(1, widest + 8))
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not bits_triton.fits(view(4096, 11008))  # neither a GPU tensor nor the interpreter


@pytest.mark.slow
def test_the_triton_pass_in_triton_s_interpreter():
    """The test above in a fresh interpreter with ``TRITON_INTERPRET=1`` (Triton reads it when it is first
    imported, and importing torch may import it), where Triton is installed (requirements-dev.txt)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            __file__,
            "-k",
            "triton_pass_gives",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0 and "3 passed" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]


@pytest.mark.slow
def test_the_fused_kernels_compile_whole_and_match_eager():
    """``torch.compile(fullgraph=True)`` of the fused chunk kernel and the bit packer (Inductor's CPU
    backend here; the GPU compiles the same graph with Triton): no graph break, every output the
    eager one's."""
    gen = torch.Generator().manual_seed(3)
    a = (torch.randn(60, 37, generator=gen) * 0.02).bfloat16()
    steps = torch.randint(0, 3, a.shape, generator=gen, dtype=torch.int16)
    b = (a.view(torch.int16) + steps).view(torch.bfloat16)
    kernel = torch.compile(sp._fused_chunk_stats, dynamic=True, fullgraph=True)
    args = (
        a.view(torch.int16),
        b.view(torch.int16),
        torch.bfloat16,
        torch.float32,
        TOLS,
        1e-2,
        False,
        1e-5,
        True,
        True,
    )
    for got, want in zip(kernel(*args), sp._fused_chunk_stats(*args), strict=True):
        assert torch.equal(got, want)
    mask = torch.rand(37, 13, generator=gen) < 0.5
    packed = torch.compile(sp._pack_bits, dynamic=True, fullgraph=True)(mask)
    assert np.array_equal(packed.numpy(), np.packbits(mask.numpy().reshape(-1)))


def test_small_changes_leave_the_upper_counts_at_zero():
    """1-ULP changes of weights near 2^-10 (Δ 7.6e-6): the higher tolerances and ULP bins are 0."""
    a = torch.full((40, 30), 2**-10).to(torch.bfloat16)
    b = a.clone()
    b[::3, ::2] = bf16_step(b[::3, ::2], 1)
    st = compare_pair(a, b)
    n = 14 * 15
    assert st.changed == n and st.changed_tol == (n, n, n, 0, 0) and st.ulp_hist == (n, 0, 0, 0, 0, 0, 0)
    assert_matches(st, reference(a, b))


def test_identical_pair_is_all_zero():
    a = torch.randn(6, 5).to(torch.bfloat16)
    st = compare_pair(a, a.clone())
    assert (st.changed, st.changed_rel, sum(st.changed_tol), sum(st.ulp_hist)) == (0, 0, 0, 0)
    assert st.max_abs_delta == 0.0 and not st.mask.any()


def test_relative_rule_differs_from_exact_in_fp32():
    a = torch.tensor([1.0, 1.0, 2.0, 0.0], dtype=torch.float32)
    b = torch.tensor([1.0005, 1.002, 2.0, 1e-12], dtype=torch.float32)
    st = compare_pair(a, b, SparsityOptions(eta=1e-3))
    assert st.changed == 3
    assert st.changed_rel == 2  # 1 -> 1.0005 is within 1e-3 relative; 1 -> 1.002 and 0 -> 1e-12 are not
    assert st.changed_tol == (2, 2, 2, 2, 2)  # 1e-12 is below every tolerance
    assert st.changed_rel == reference(a, b)["changed_rel"]


def test_float64_ulp_distances_including_sign_crossings():
    one = np.float64(1.0)
    a = torch.tensor([1.0, -1.0, 1.0, 1e300, -0.0, 5e-324], dtype=torch.float64)
    b = torch.tensor(
        [np.nextafter(one, 2), np.nextafter(np.nextafter(-one, -2), -2), 1.0 + 2**-40, -1e300, 0.0, -5e-324],
        dtype=torch.float64,
    )
    st = compare_pair(a, b)
    # 1 ULP; 2 ULP; 2^12 ULP; opposite huge values (the int64 sum overflows: clamped, still > 256);
    # -0 vs +0 (first bin, Δ = 0); the two smallest subnormals either side of zero (2 ULP)
    assert st.changed == 6 and st.ulp_hist == (2, 2, 0, 0, 0, 0, 2)
    assert st.changed_tol == (1, 1, 1, 1, 1)  # only the sign flip of 1e300 exceeds 1e-8 (2^-40 ≈ 9.1e-13)
    assert st.max_abs_delta == 2e300


# --- precision ---------------------------------------------------------------------------------------
def _round_to_bf16_bits(x32: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even fp32 -> bf16 bit patterns, in integer arithmetic (no torch)."""
    u = x32.view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def test_precision_bf16_compares_after_the_cast():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(64, 32, generator=gen) * 0.05
    b = a + torch.randn(64, 32, generator=gen) * 1e-6  # fp32-level updates, most vanish in bf16
    fp32 = compare_pair(a, b, SparsityOptions())
    bf16 = compare_pair(a, b, SparsityOptions(precision="bf16"))
    want = int((_round_to_bf16_bits(a.numpy()) != _round_to_bf16_bits(b.numpy())).sum())
    assert fp32.changed == int((a.numpy() != b.numpy()).sum()) > 0.9 * a.numel()
    assert bf16.changed == want and 0 < want < fp32.changed // 4
    assert bf16.dtype == "bfloat16" and fp32.dtype == "float32"
    assert_matches(bf16, reference(a.to(torch.bfloat16), b.to(torch.bfloat16)))


def test_mixed_stored_dtypes_compare_in_fp32():
    gen = torch.Generator().manual_seed(2)
    a = (torch.randn(10, 8, generator=gen) * 0.05).to(torch.bfloat16)
    b = a.float()
    b[0, :3] += 1e-4  # real changes; every other entry is the same number stored wider
    st = compare_pair(a, b)
    assert st.dtype == "float32" and st.changed == 3
    assert_matches(st, reference(a.float(), b))


# --- non-finite --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_changed_entry_is_refused(bad):
    a = torch.zeros(4, 4, dtype=torch.bfloat16)
    b = a.clone()
    b[2, 1] = bad
    with pytest.raises(NonFiniteError, match="layers.0.w"):
        compare_pair(a, b, name="layers.0.w")


# --- aggregation over a planted checkpoint pair -------------------------------------------------------
@pytest.fixture(scope="module")
def planted_llama(ckpt_zoo, tmp_path_factory):
    """The zoo Llama and a copy with exactly k_i entries of tensor i moved by 1 ULP (k_i = i % 4 * 3)."""
    sd = read_state_dict(ckpt_zoo.llama)
    gen = torch.Generator().manual_seed(3)
    planted = {}
    for i, name in enumerate(sorted(sd)):
        k = (i % 4) * 3
        flat = sd[name].reshape(-1)
        idx = torch.randperm(flat.numel(), generator=gen)[:k]
        flat[idx] = bf16_step(flat[idx], 1)
        planted[name] = k
    ft = write_folder(tmp_path_factory.mktemp("planted") / "ft", sd, ckpt_zoo.llama)
    rep = analyze_updates(ckpt_zoo.llama, [ft], spectra=None, device="cpu").reports[0]
    return rep, planted, {n: t.numel() for n, t in sd.items()}


def test_per_tensor_counts_are_the_planted_ones(planted_llama):
    rep, planted, numel = planted_llama
    got = dict(zip(rep.tensors["name"], rep.tensors["changed"], strict=True))
    assert got == planted
    assert dict(zip(rep.tensors["name"], rep.tensors["numel"], strict=True)) == numel
    # every planted change is 1 ULP of a normal-sized weight: one bin, all tolerances agree with exact
    assert rep.ulp_histogram()["count"].tolist() == [sum(planted.values()), 0, 0, 0, 0, 0, 0]


def test_global_and_sweep_labels(planted_llama):
    rep, planted, numel = planted_llama
    total, n = sum(planted.values()), sum(numel.values())
    assert rep.sparsity == 1 - total / n
    sw = rep.sweep().set_index("criterion")
    assert sw.loc["exact", "changed"] == total
    assert sw.loc["exact", "density"] == total / n and sw.loc["exact", "sparsity"] == 1 - total / n
    assert list(sw.index) == ["exact", *[f"|Δ|>{t:g}" for t in TOLS], "relative η=0.001"]
    assert (sw["changed"].diff().dropna().iloc[:-1] <= 0).all()  # looser tolerance, fewer changed
    s = rep.summary()
    assert s["sparsity"] == rep.sparsity and s["density"] == pytest.approx(total / n)
    assert s["mean_tensor_sparsity"] == pytest.approx(np.mean([1 - planted[k] / numel[k] for k in planted]))


def _layer(x):
    return None if pd.isna(x) else int(x)


def test_by_layer_module_weighted_and_mean(planted_llama):
    rep, planted, numel = planted_llama
    t = rep.tensors.set_index("name")
    groups: dict = {}
    for name in planted:
        groups.setdefault((_layer(t.loc[name, "layer"]), t.loc[name, "module"]), []).append(name)
    blm = rep.by_layer_module()
    assert int(blm["changed"].sum()) == sum(planted.values()) and int(blm["numel"].sum()) == sum(numel.values())
    assert len(blm) == len(groups)
    for row in blm.itertuples():
        names = groups[(_layer(row.layer), row.module)]
        ch, nu = sum(planted[x] for x in names), sum(numel[x] for x in names)
        assert row.changed == ch and row.numel == nu and row.tensors == len(names)
        assert row.density == pytest.approx(ch / nu) and row.sparsity == pytest.approx(1 - ch / nu)
        assert row.mean_density == pytest.approx(np.mean([planted[x] / numel[x] for x in names]))
        assert row.mean_sparsity == pytest.approx(1 - row.mean_density)
    per_layer = blm.groupby(blm["layer"].map(_layer), dropna=False)["changed"].sum()
    assert int(per_layer.sum()) == rep.changed
    assert set(blm["module"]) >= {"q", "k", "v", "o", "gate", "up", "down", "attn_norm", "mlp_norm", "embed", "lm_head"}
    assert set(rep.special()["module"]) == {"embed", "lm_head", "attn_norm", "mlp_norm", "final_norm"}


# --- fused QKV ------------------------------------------------------------------------------------------
def _changed_parts(rep, layer):
    blm = rep.by_layer_module()
    sel = blm[(blm["layer"] == layer) & blm["module"].isin(["q", "k", "v", "qkv"])]
    return dict(zip(sel["module"], sel["changed"], strict=True)), dict(zip(sel["module"], sel["numel"], strict=True))


def test_gpt2_c_attn_split_in_contiguous_thirds(ckpt_zoo, tmp_path):
    sd = read_state_dict(ckpt_zoo.gpt2)
    w = sd["transformer.h.1.attn.c_attn.weight"]  # Conv1D: (d, 3d), k = columns [d, 2d)
    assert w.shape == (HIDDEN, 3 * HIDDEN)
    w[2:5, HIDDEN : 2 * HIDDEN] = bf16_step(w[2:5, HIDDEN : 2 * HIDDEN], 1)  # 3 x 16 = 48 entries
    bias = sd["transformer.h.1.attn.c_attn.bias"]
    bias[HIDDEN + 1] = bf16_step(bias[HIDDEN + 1 : HIDDEN + 2], 2)[0]
    ft = write_folder(tmp_path / "ft", sd, ckpt_zoo.gpt2)
    rep = analyze_updates(ckpt_zoo.gpt2, [ft], spectra=None, device="cpu").reports[0]
    changed, numel = _changed_parts(rep, 1)
    assert changed == {"q": 0, "k": 49, "v": 0}
    assert numel == {m: HIDDEN * HIDDEN + HIDDEN for m in "qkv"}
    assert rep.changed == 49
    assert _changed_parts(rep, 0)[0] == {"q": 0, "k": 0, "v": 0}


def test_gpt_neox_qkv_split_interleaved_per_head(ckpt_zoo, tmp_path):
    sd = read_state_dict(ckpt_zoo.neox)
    name = "gpt_neox.layers.0.attention.query_key_value.weight"
    w = sd[name]  # (3d, d) rows = heads x (q, k, v) x head_size
    hs = HIDDEN // HEADS
    v_head1 = slice(1 * 3 * hs + 2 * hs, 1 * 3 * hs + 3 * hs)
    w[v_head1, :5] = bf16_step(w[v_head1, :5], 1)  # hs x 5 entries
    ft = write_folder(tmp_path / "ft", sd, ckpt_zoo.neox)
    rep = analyze_updates(ckpt_zoo.neox, [ft], spectra=None, device="cpu").reports[0]
    changed, numel = _changed_parts(rep, 0)
    assert changed == {"q": 0, "k": 0, "v": hs * 5}
    assert numel == {m: HIDDEN * HIDDEN + HIDDEN for m in "qkv"}


def test_gpt_neox_layout_matches_hf_attention():
    """Perturb one row of query_key_value; HF's attention must see exactly that head's q, k or v move."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from subnetviz.checkpoints.naming import NameTable

    seen = {}

    def capture(module, query, key, value, *args, **kwargs):
        seen.update(q=query.detach().clone(), k=key.detach().clone(), v=value.detach().clone())
        return sdpa_attention_forward(module, query, key, value, *args, **kwargs)

    AttentionInterface.register("subnetviz_capture", capture)
    cfg = neox_config()
    cfg.num_hidden_layers = 1
    cfg.rotary_pct = 0.0  # no rotation, so each head's q/k/v is the raw projection
    cfg._attn_implementation = "subnetviz_capture"
    model = tiny_model("gpt_neox", seed=0, config=cfg).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    table = NameTable("gpt_neox", HEADS)
    qkv = model.gpt_neox.layers[0].attention.query_key_value
    with torch.no_grad():
        model(ids)
        before = dict(seen)
        for row in range(qkv.weight.shape[0]):
            marker = torch.zeros(qkv.weight.shape[0], 1)
            marker[row] = 1
            parts = table.fused_parts("gpt_neox.layers.0.attention.query_key_value.weight", marker)
            (which,) = [k for k, v in parts.items() if v.sum() == 1]
            head = int(parts[which].sum(dim=(1, 2)).argmax())
            orig = qkv.weight[row].clone()
            qkv.weight[row] += 1.0
            model(ids)
            qkv.weight[row] = orig
            moved = {k: (seen[k] - before[k]).abs().amax(dim=(0, 2, 3)) > 0 for k in "qkv"}  # per head
            assert moved[which].tolist() == [h == head for h in range(HEADS)], (row, which, head)
            assert not any(moved[k].any() for k in "qkv" if k != which), row


def test_fp16_precision_on_weights_beyond_its_range_says_so(tmp_path):
    """--precision fp16 on a bf16 pair holding 1e5 (finite; beyond fp16's 65504) read "NaN/Inf value(s) in the
    first (base) tensor", though both checkpoints are finite."""
    from safetensors.torch import save_file

    from subnetviz.analysis.sparsity import SparsityOptions
    from subnetviz.analysis.updates import analyze_updates
    from subnetviz.errors import ConfigError

    w = torch.ones(4, 4, dtype=torch.bfloat16)
    w[0, 0] = 1e5
    for name, t in (("b", w), ("f", w * 2)):
        (tmp_path / name).mkdir()
        save_file({"model.layers.0.mlp.up_proj.weight": t}, str(tmp_path / name / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"1 value\(s\) of the base tensor lie beyond float16's range"):
        analyze_updates(str(tmp_path / "b"), [str(tmp_path / "f")], options=SparsityOptions(precision="fp16"))
    ok = analyze_updates(str(tmp_path / "b"), [str(tmp_path / "f")], options=SparsityOptions(precision="fp32"))
    assert ok.reports[0].changed == 16


def test_the_summary_density_is_changed_over_numel(tmp_path):
    """summary.json's density was 1 − sparsity, rounded twice: one ulp from changed / numel, which every other
    table (the sweep, overlap sizes, mask metadata) writes. 1 changed of 10: 0.1, not 0.09999999999999998."""
    import torch
    from safetensors.torch import save_file

    import subnetviz

    save_file({"w": torch.zeros(10, dtype=torch.bfloat16)}, str(tmp_path / "base.safetensors"))
    ft = torch.zeros(10, dtype=torch.bfloat16)
    ft[3] = 1.0
    save_file({"w": ft}, str(tmp_path / "ft.safetensors"))
    an = subnetviz.analyze_updates(str(tmp_path / "base.safetensors"), [str(tmp_path / "ft.safetensors")])
    summary = an.reports[0].summary()
    assert summary["changed"] == 1 and summary["numel"] == 10
    assert summary["density"] == 0.1 and 1.0 - summary["sparsity"] != 0.1
