"""Subspace geometry of W_base vs W_ft: planted rotations with a known answer, SciPy and NumPy references,
the principal-weight mask, and the CLI's subspaces.csv / Parquet twin."""

import numpy as np
import pandas as pd
import pytest
import torch

from subnetviz.analysis.subspaces import (
    SubspaceOptions,
    analyze_subspaces,
    compare_subspaces,
    principal_angles,
    principal_mask,
    top_k,
)
from tests.ckpt_fixtures import read_state_dict, write_folder
from tests.models import make_llama


def planted(m=40, n=24, k=4, theta_deg=17.0, seed=0):
    """W_base = U diag(σ) Vᵀ with well separated σ; W_ft rotates left vector u_0 towards u_k (outside the
    top-k) by θ in the plane (u_0, u_k). Known answer: largest left angle θ, right angles 0, σ ratio 1."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    sig = np.geomspace(10.0, 0.1, n)
    sig[k:] *= 0.3  # a clear gap after the top-k
    t = np.radians(theta_deg)
    u2 = u.copy()
    u2[:, 0] = np.cos(t) * u[:, 0] + np.sin(t) * u[:, k]
    u2[:, k] = -np.sin(t) * u[:, 0] + np.cos(t) * u[:, k]
    return (u * sig) @ v.T, (u2 * sig) @ v.T


@pytest.mark.parametrize("method", ["gram", "svd", "randomized"])
def test_planted_rotation_gives_the_known_angles(method):
    wb, wf = planted()
    res = compare_subspaces("w", torch.tensor(wb), torch.tensor(wf), SubspaceOptions(k=4, method=method))
    tol = 1e-8 if method != "randomized" else 1e-3  # randomized runs in float32
    assert abs(res.angles_left.max() - 17.0) < tol
    assert np.all(np.abs(res.angles_left[:-1]) < tol)  # only one direction moved
    assert np.all(np.abs(res.angles_right) < max(tol, 1e-6))
    assert np.allclose(res.sv_ratio, 1.0, atol=1e-6 if method == "randomized" else 1e-12)
    row = res.row()
    assert abs(row["sv_ratio_mean"] - 1) < 1e-6 and row["sv_ratio_maxdev"] < 1e-6


def test_wide_matrix_swaps_sides():
    wb, wf = planted()
    res = compare_subspaces("w", torch.tensor(wb.T.copy()), torch.tensor(wf.T.copy()), SubspaceOptions(k=4))
    assert abs(res.angles_right.max() - 17.0) < 1e-8 and res.angles_left.max() < 1e-6


def test_uniform_scaling_is_a_ratio_not_a_rotation():
    wb, _ = planted()
    res = compare_subspaces("w", torch.tensor(wb), torch.tensor(1.5 * wb), SubspaceOptions(k=5))
    assert np.allclose(res.sv_ratio, 1.5, rtol=1e-12) and res.row()["sv_ratio_maxdev"] < 1e-12
    assert res.angles_left.max() < 1e-5 and res.angles_right.max() < 1e-5


def test_angles_match_scipy_on_random_subspaces():
    from scipy.linalg import subspace_angles

    rng = np.random.default_rng(3)
    for m, k in [(30, 5), (12, 6), (50, 1)]:
        a, _ = np.linalg.qr(rng.standard_normal((m, k)))
        b, _ = np.linalg.qr(a + 1e-3 * rng.standard_normal((m, k)) if k > 1 else rng.standard_normal((m, k)))
        ours = principal_angles(torch.tensor(a), torch.tensor(b))
        ref = np.sort(np.degrees(subspace_angles(a, b)))
        assert np.allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_gram_top_k_matches_numpy_svd():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((60, 20))
    t = top_k(torch.tensor(w), 5, method="gram")
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    assert np.allclose(t.sigma, s[:5], rtol=1e-12)
    assert np.allclose(np.abs(t.right.numpy().T @ vt[:5].T), np.eye(5), atol=1e-10)
    assert np.allclose(np.abs(t.left.numpy().T @ u[:, :5]), np.eye(5), atol=1e-10)


def test_principal_mask_is_the_top_count_of_the_rank_k_reconstruction():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((16, 12))
    t = top_k(torch.tensor(w), 3, method="svd")
    mask = principal_mask(torch.tensor(w), t.right, 20).numpy()
    u, s, vt = np.linalg.svd(w)
    recon = np.abs((u[:, :3] * s[:3]) @ vt[:3])
    expected = np.zeros(recon.size, dtype=bool)
    expected[np.argsort(-recon.ravel())[:20]] = True
    assert mask.sum() == 20 and np.array_equal(mask.ravel(), expected)


def test_principal_overlap_planted_inside_and_outside():
    """An update placed exactly on the principal entries overlaps 1; on the others, 0; chance = density."""
    rng = np.random.default_rng(4)
    wb = torch.tensor(rng.standard_normal((20, 10)), dtype=torch.float32)
    t = top_k(wb, 2, method="svd")
    pm = principal_mask(wb, t.right, 30)
    for where, expected in [
        (pm, 1.0),
        (~pm & (torch.rand(20, 10, generator=torch.Generator().manual_seed(0)) < 0.2), 0.0),
    ]:
        wf = torch.where(where, wb * 1.001 + 1e-3, wb)
        res = compare_subspaces("w", wb, wf, SubspaceOptions(k=2, method="svd"))
        assert res.principal_overlap == expected
        assert res.principal_overlap_chance == int(where.sum()) / 200


def test_checkpoints_streamed_and_written(tmp_path):
    base = make_llama(tmp_path / "base", seed=0)
    sd = read_state_dict(base)
    name = "model.layers.0.mlp.down_proj.weight"
    sd[name] = (sd[name].float() * 1.25).to(torch.bfloat16)  # exact power-of-two-ish scaling: no rotation
    ft = write_folder(tmp_path / "ft", sd, config_from=base)
    table = analyze_subspaces(str(base), [str(ft)], labels=["ft"], options=SubspaceOptions(k=4), device="cpu")
    df = table.to_frame()
    assert set(df["model"]) == {"ft"} and len(df) == len(set(df["name"]))
    assert all(n.endswith("weight") for n in df["name"])
    assert "model.norm.weight" not in set(df["name"])  # 1-D tensors are not matrices
    row = df[df["name"] == name].iloc[0]
    assert abs(row["sv_ratio_mean"] - 1.25) < 1e-2 and row["angle_left_max"] < 1.0
    others = df[df["name"] != name]
    assert (others["angle_left_max"] == 0).all() and (others["changed"] == 0).all()
    vec = table.vectors()
    assert len(vec) == int(df["k"].sum())


def test_cli_analyze_writes_subspaces(tmp_path):
    import pandas as pd

    from subnetviz.__main__ import main

    base = make_llama(tmp_path / "base", seed=0)
    sd = read_state_dict(base)
    name = "model.layers.1.self_attn.q_proj.weight"
    sd[name] = (sd[name].float() + 0.05 * torch.randn_like(sd[name].float())).to(torch.bfloat16)
    ft = write_folder(tmp_path / "ft", sd, config_from=base)
    out = tmp_path / "out"
    assert (
        main(["analyze", str(base), str(ft), "--out", str(out), "--subspaces", "3", "--no-spectra", "--device", "cpu"])
        == 0
    )
    df = pd.read_csv(out / "subspaces.csv")
    assert (df["k"] <= 3).all() and (out / "tensors.csv").exists()
    assert df.set_index("name").loc[name, "angle_left_max"] > 0
    vec = pd.read_parquet(out / "subspaces.parquet")
    assert set(vec.columns) >= {"angle_left", "angle_right", "sv_ratio"}
    out2 = tmp_path / "out2"
    assert (
        main(
            [
                "analyze",
                str(base),
                str(ft),
                "--out",
                str(out2),
                "--subspaces",
                "0",
                "--no-spectra",
                "--device",
                "cpu",
                "--no-cache",
            ]
        )
        == 0
    )
    assert (out2 / "tensors.csv").exists() and not (out2 / "subspaces.csv").exists()
    out3 = tmp_path / "out3"
    assert (
        main(
            [
                "analyze",
                str(base),
                str(ft),
                "--out",
                str(out3),
                "--subspaces-share",
                "0.5",
                "--no-spectra",
                "--device",
                "cpu",
                "--no-cache",
            ]
        )
        == 0
    )
    df3 = pd.read_csv(out3 / "subspaces.csv")
    assert (df3["k"] == np.ceil(0.5 * np.minimum(df3["rows"], df3["cols"]))).all()


def test_figures_draw_the_table():
    from subnetviz.figures import subspaces as sfig

    wb, wf = planted()
    res = compare_subspaces(
        "model.layers.0.mlp.up_proj.weight", torch.tensor(wb), torch.tensor(wf), SubspaceOptions(k=4)
    )
    from dataclasses import replace

    from subnetviz.analysis.subspaces import SubspaceTable

    table = SubspaceTable({"ft": [replace(res, layer=0, module="up")]})
    df = table.to_frame()
    heat = sfig.angle_heatmap(df)
    assert abs(float(np.nanmax(np.asarray(heat.data[0].z, dtype=float))) - 17.0) < 1e-6
    curves = sfig.angle_curves(table.vectors(), [res.name])
    assert np.allclose(curves.data[0].y, res.angles_left)
    scatter = sfig.principal_overlap_scatter(df)
    assert len(scatter.data) == 2  # one module + the chance diagonal
    nine = pd.concat([df.assign(module=f"m{i}") for i in range(9)], ignore_index=True)
    marks = [(t.marker.color, t.marker.symbol) for t in sfig.principal_overlap_scatter(nine).data[:9]]
    assert len(set(marks)) == 9  # past eight colours another symbol: the ninth module is not the first's twin
    # an MoE's experts, several matrices per (layer, module): one cell, their largest angle (it raised before)
    experts = pd.concat(
        [
            df.assign(name=f"e{i}", angle_left_max=a, sv_ratio_mean=r)
            for i, (a, r) in enumerate([(3.0, 1.0), (40.0, 2.0)])
        ],
        ignore_index=True,
    )
    cell = sfig.angle_heatmap(experts).data[0]
    assert np.asarray(cell.z, dtype=float).tolist() == [[40.0]]
    assert np.asarray(cell.customdata, dtype=float)[0, 0].tolist() == [1.5, 4.0, 2.0]  # mean ratio, K, matrices


@pytest.mark.slow
def test_spectra_page_subspaces_tab_renders(app_env):
    from tests.app_fixtures import open_page, plotly_specs

    at = open_page("spectra", sub_k="4", spec_tab="Subspaces of W_base vs W_ft")
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    titles = [s["layout"]["title"]["text"] for s in plotly_specs(at)]
    assert any("principal angle" in t.lower() for t in titles), titles
    # when the randomized path is taken, as choose_method decides it (it said "above 32768 rows": a 152k × 896
    # embedding takes the exact Gram path)
    assert any("a side over 32768 and the other over 4096" in c.value for c in at.caption), [
        c.value for c in at.caption
    ]
    model = at.selectbox(key="sub_model").value
    assert all(model in t for t in titles), titles  # each chart names the model it shows
    # Matrices named as on the Spectra of Δ tab (and every other page): no checkpoint prefix "model.".
    table = next(d.value for d in at.dataframe if "angle_left_max" in d.value.columns)
    assert "layers.0.mlp.down_proj.weight" in set(table["name"]) and not table["name"].str.startswith("model.").any()
    curves = next(s for s in plotly_specs(at) if "most rotated" in s["layout"]["title"]["text"])
    assert curves["data"] and all(t["name"].startswith(("layers.", "lm_head", "embed")) for t in curves["data"])


def test_the_randomized_path_is_refined_to_float64():
    """float32 ``svd_lowrank`` found the subspace, but its σ and vectors were float32's: a σ ratio's deviation of
    1e-6 (the size of what arXiv 2509.17866 reads) was noise, angles off by 2e-4°. Refined in float64 (two
    subspace iterations and Rayleigh-Ritz), they are float64's, against NumPy's float64 SVD."""
    from subnetviz.analysis.subspaces_linalg import principal_angles, top_k

    gen = np.random.default_rng(0)
    m, n, k = 40_000, 96, 16
    u, _ = np.linalg.qr(gen.standard_normal((m, n)))
    v, _ = np.linalg.qr(gen.standard_normal((n, n)))
    s = np.geomspace(10.0, 0.01, n)
    w = torch.from_numpy((u * s) @ v.T).to(torch.float32)
    ref_u, ref_s, ref_vt = np.linalg.svd(w.double().numpy(), full_matrices=False)
    got = top_k(w, k, method="randomized")
    assert np.abs(got.sigma / ref_s[:k] - 1).max() < 1e-12 and abs(got.next_sigma / ref_s[k] - 1) < 1e-9
    left = principal_angles(got.left, torch.from_numpy(ref_u[:, :k]))
    right = principal_angles(got.right, torch.from_numpy(ref_vt[:k].T))
    assert left.max() < 1e-6 and right.max() < 1e-6, (left.max(), right.max())  # (float32 alone: 1e-3°)
