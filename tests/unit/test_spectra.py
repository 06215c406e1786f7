"""Spectra of update matrices: singular values against float64 NumPy, rank against the paper's
``torch.linalg.matrix_rank(delta.float())``, hand-computed effective/stable ranks, the random
baseline's exact multiset, and the skip path."""

import numpy as np
import pytest
import torch

from subnetviz.analysis.spectra import (
    EPS32,
    SpectrumTable,
    normalized_spectral_shift,
    random_sparse_like,
    singular_values,
    update_spectra,
    update_spectrum,
)
from subnetviz.errors import AlignmentError, ConfigError, NonFiniteError

METHODS = ["auto", "gram", "svd"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sparse(m: int, n: int, density: float, seed: int, dtype=torch.bfloat16, scale=1e-3) -> torch.Tensor:
    g = _gen(seed)
    x = torch.randn(m, n, generator=g, dtype=torch.float64) * scale
    x[torch.rand(m, n, generator=g, dtype=torch.float64) > density] = 0
    return x.to(dtype)


def _conditioned(m: int, n: int, cond: float, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """U diag(s) Vᵀ with s log-spaced from 1 down to 1/cond: a matrix with a known spectrum."""
    rng = np.random.default_rng(seed)
    k = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = np.logspace(0, -np.log10(cond), k)
    return torch.from_numpy((u * s) @ v.T), s


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("m", "n", "r"), [(60, 40, 7), (40, 60, 13), (200, 50, 1), (30, 30, 29), (5, 90, 4)])
def test_planted_rank_is_recovered_exactly(method, m, n, r):
    g = _gen(m * n + r)
    delta = torch.randn(m, r, generator=g, dtype=torch.float64) @ torch.randn(r, n, generator=g, dtype=torch.float64)
    sv = singular_values(delta, method=method)
    assert sv.rank == r
    assert sv.rank_frac == pytest.approx(r / min(m, n))
    assert int(torch.linalg.matrix_rank(delta.float())) == r  # the paper's convention agrees


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("m", "n", "cond"), [(120, 80, 1e2), (80, 120, 1e3), (64, 64, 10.0), (300, 20, 50.0)])
def test_values_match_float64_numpy_svd(method, m, n, cond):
    delta, planted = _conditioned(m, n, cond, seed=m + n)
    reference = np.linalg.svd(delta.numpy(), compute_uv=False)
    np.testing.assert_allclose(reference, planted, rtol=1e-12)  # the fixture itself is right
    sv = singular_values(delta, method=method)
    assert sv.values.dtype == np.float64 and sv.values.shape == (min(m, n),)
    assert np.all(np.diff(sv.values) <= 0), "values must be sorted descending"
    assert np.max(np.abs(sv.values - reference) / reference) <= 1e-9


@pytest.mark.parametrize("shape", [(230, 17), (17, 230)])
def test_chunked_gram_matches_one_shot(monkeypatch, shape):
    import subnetviz.analysis.spectra as spectra

    delta = _sparse(*shape, 0.4, seed=21, dtype=torch.float32)
    one_shot = singular_values(delta, method="gram").values
    monkeypatch.setattr(spectra, "_CHUNK_ELEMENTS", 17 * 13)  # 13 rows/cols per chunk, last one ragged
    chunked = singular_values(delta, method="gram").values
    np.testing.assert_allclose(chunked, one_shot, rtol=1e-12)
    np.testing.assert_allclose(chunked, np.linalg.svd(delta.double().numpy(), compute_uv=False), rtol=1e-10)


def test_gaussian_sparse_bf16_matches_float64_reference_in_norm():
    delta = _sparse(256, 96, 0.3, seed=1)
    reference = np.linalg.svd(delta.double().numpy(), compute_uv=False)
    sv = singular_values(delta, method="gram")
    assert np.max(np.abs(sv.values - reference)) / reference[0] <= 1e-12
    assert sv.resolution < 1e-6 * reference[0]


def _rank_cases():
    g = _gen(7)
    dup = torch.randn(50, 20, generator=g)
    dup[:, 10:] = dup[:, :10]  # 10 duplicated columns -> rank 10
    zero_rows = _sparse(64, 48, 0.3, seed=2, dtype=torch.float32)
    zero_rows[20:] = 0
    lowrank_bf16 = (torch.randn(80, 3, generator=g) @ torch.randn(3, 40, generator=g)).bfloat16()
    return {
        "dense_fp32": torch.randn(70, 50, generator=g),
        "sparse_bf16_tall": _sparse(300, 64, 0.3, seed=3),
        "sparse_bf16_wide": _sparse(64, 300, 0.3, seed=4),
        "sparse_bf16_square": _sparse(128, 128, 0.3, seed=5),
        "very_sparse_bf16": _sparse(100, 100, 0.01, seed=6),
        "fp16": _sparse(90, 60, 0.5, seed=8, dtype=torch.float16),
        "duplicated_columns": dup,
        "zero_rows": zero_rows,
        "lowrank_rounded_to_bf16": lowrank_bf16,
        "transposed_view": _sparse(40, 100, 0.3, seed=9).T,
        "one_row": _sparse(1, 30, 0.5, seed=10),
    }


@pytest.mark.parametrize("case", list(_rank_cases()))
@pytest.mark.parametrize("method", METHODS)
def test_rank_equals_torch_matrix_rank_of_float(case, method):
    delta = _rank_cases()[case]
    expected = int(torch.linalg.matrix_rank(delta.float()))
    assert singular_values(delta, method=method).rank == expected


def test_auto_falls_back_to_svd_when_a_value_sits_on_the_threshold():
    tol = 5 * EPS32  # σ1 = 1, max(m, n) = 5
    sigma = torch.tensor([1.0, 0.5, 0.2, tol * (1 + 1e-4), tol * (1 - 1e-4)], dtype=torch.float64)
    delta = torch.diag(sigma)
    sv = singular_values(delta, method="auto")
    assert sv.method == "gram+svd"
    assert sv.rank == 4  # strictly above tol counts, just below does not
    assert int(torch.linalg.matrix_rank(delta.float())) == 4
    # far from the threshold the fast path is kept
    assert singular_values(torch.diag(sigma[:3]), method="auto").method == "gram"


def test_effective_and_stable_rank_by_hand():
    sv = singular_values(torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.0])))
    # σ² = 9, 4, 1, 0; total 14; 0.99·14 = 13.86 -> needs 9 + 4 + 1
    assert sv.effective_rank(0.99) == 3
    assert sv.effective_rank(0.9) == 2  # 12.6 <= 13
    assert sv.effective_rank(0.5) == 1  # 7 <= 9
    assert sv.stable_rank == pytest.approx(14 / 9, rel=1e-14)
    assert sv.rank == 3
    sv = singular_values(torch.diag(torch.tensor([10.0, 1.0])))
    assert sv.effective_rank(0.99) == 1  # 100 >= 0.99·101
    assert sv.stable_rank == pytest.approx(1.01, rel=1e-14)
    # the energy bound is inclusive ("≥"): the identity's 99 % lies in exactly 99 of 100 directions
    assert singular_values(torch.eye(100)).effective_rank(0.99) == 99
    assert singular_values(torch.eye(2)).effective_rank(0.5) == 1
    # energy 1 needs every nonzero direction, never more (cumsum may round below the total)
    g = _gen(1)
    for _ in range(5):
        assert singular_values(torch.randn(30, 20, generator=g)).effective_rank(1.0) == 20


@pytest.mark.parametrize("method", METHODS)
def test_zero_matrix(method):
    sv = singular_values(torch.zeros(12, 7, dtype=torch.bfloat16), method=method)
    assert np.all(sv.values == 0)
    assert (sv.rank, sv.rank_frac, sv.effective_rank(), sv.stable_rank) == (0, 0.0, 0, 0.0)
    res = update_spectrum("zero", torch.zeros(12, 7), method=method)
    assert (res.rank, res.density, res.stable_rank, res.baseline_rank) == (0, 0.0, 0.0, 0)


def test_bf16_and_orientation_do_not_change_values():
    delta = _sparse(90, 40, 0.3, seed=11)
    ref = singular_values(delta.double(), method="svd").values
    np.testing.assert_allclose(singular_values(delta).values, ref, rtol=1e-10, atol=1e-14 * ref[0])
    np.testing.assert_allclose(singular_values(delta.T).values, ref, rtol=1e-10, atol=1e-14 * ref[0])


def test_random_baseline_keeps_multiset_and_density():
    delta = _sparse(60, 80, 0.25, seed=12)
    base = random_sparse_like(delta, seed=3)
    assert base.shape == delta.shape and base.dtype == delta.dtype
    assert int(torch.count_nonzero(base)) == int(torch.count_nonzero(delta))
    assert torch.equal(torch.sort(base.flatten()).values, torch.sort(delta.flatten()).values)
    assert not torch.equal(base, delta)
    assert torch.equal(base, random_sparse_like(delta, seed=3)), "seeded"
    assert not torch.equal(base, random_sparse_like(delta, seed=4))


def test_update_spectrum_fields_and_baseline():
    delta = _sparse(120, 48, 0.3, seed=13)
    res = update_spectrum("layers.0.q", delta, seed=5)
    ref = np.linalg.svd(delta.double().numpy(), compute_uv=False)
    np.testing.assert_allclose(res.sigma, ref, rtol=1e-9)
    assert res.shape == (120, 48)
    assert res.density == pytest.approx(int(torch.count_nonzero(delta)) / delta.numel())
    assert res.rank == int(torch.linalg.matrix_rank(delta.float()))
    assert res.rank_frac == res.rank / 48
    assert res.stable_rank == pytest.approx((ref**2).sum() / ref[0] ** 2, rel=1e-10)
    base = random_sparse_like(delta, seed=5)
    np.testing.assert_allclose(res.baseline_sigma, np.linalg.svd(base.double().numpy(), compute_uv=False), rtol=1e-9)
    assert res.baseline_rank == int(torch.linalg.matrix_rank(base.float()))
    assert res.method == "gram" and not res.skipped
    assert update_spectrum("x", delta, baseline=False).baseline_rank is None


def test_skip_embedding_sized_and_vectors():
    q_delta = _sparse(16, 16, 0.5, seed=14)
    table = update_spectra({"embed": torch.ones(500, 16), "norm": torch.ones(16), "q": q_delta}, max_dim=256)
    embed, norm, q = table.results
    assert embed.skipped and "embedding-sized" in embed.note and embed.rank is None
    assert norm.skipped and "not a matrix" in norm.note
    assert not q.skipped and q.rank == int(torch.linalg.matrix_rank(q_delta.float()))
    frame = table.to_frame()
    assert list(frame["name"]) == ["embed", "norm", "q"]
    assert list(frame["skipped"]) == [True, True, False]
    assert frame["rank"].isna().tolist() == [True, True, False]
    assert frame.loc[0, "rows"] == 500 and frame.loc[0, "cols"] == 16
    long = table.sigma_frame()
    assert set(long["name"]) == {"q"} and set(long["kind"]) == {"update", "random"}
    assert (long["kind"] == "update").sum() == 16 and long["index"].min() == 1


def test_empty_table_frames():
    table = SpectrumTable(())
    assert table.to_frame().empty and table.sigma_frame().empty
    assert "sigma" in table.sigma_frame().columns


def test_normalized_spectral_shift():
    w0, _ = _conditioned(40, 30, 10.0, seed=15)
    assert normalized_spectral_shift(w0, w0) == pytest.approx(0.0, abs=1e-14)
    assert normalized_spectral_shift(w0, 3 * w0) == pytest.approx(2.0, rel=1e-12)
    w1 = w0 + 0.1 * torch.randn(40, 30, generator=_gen(16), dtype=torch.float64)
    s0 = np.linalg.svd(w0.numpy(), compute_uv=False)
    s1 = np.linalg.svd(w1.numpy(), compute_uv=False)
    expected = np.linalg.norm(s1 - s0) / np.linalg.norm(s0)
    assert normalized_spectral_shift(w0, w1) == pytest.approx(expected, rel=1e-9)
    assert np.isnan(normalized_spectral_shift(torch.zeros(4, 3), torch.ones(4, 3)))


def test_bad_input_raises():
    with pytest.raises(ConfigError, match="2-D"):
        singular_values(torch.ones(5))
    with pytest.raises(ConfigError, match="method"):
        singular_values(torch.ones(3, 3), method="qr")
    with pytest.raises(ConfigError, match="dtype"):
        singular_values(torch.ones(3, 3, dtype=torch.int64))
    bad = torch.ones(4, 3)
    bad[1, 2] = float("nan")
    for method in METHODS:
        with pytest.raises(NonFiniteError, match="layers.3.v"):
            update_spectrum("layers.3.v", bad, method=method)
    with pytest.raises(AlignmentError, match="shape"):
        normalized_spectral_shift(torch.ones(3, 4), torch.ones(4, 3))
