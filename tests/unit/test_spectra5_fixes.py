"""Fixes of the fifth Spectra/Subspaces review.

1. A rank-1 update's singular values were invisible on the Spectra chart: its curve kept one σ above the rank
   threshold and was drawn with ``mode="lines"``, which draws no mark for a lone point (nor for the rank-1 baseline
   of a single-entry update).
2. A pair whose entries differ only in the sign of zero (+0 against −0) went through the full comparison: round-off
   angles of 4.7e-14° and a principal-weight overlap of 0 % against chance, for matrices equal as values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from subnetviz.analysis.subspaces import SubspaceOptions, analyze_subspaces, compare_subspaces
from subnetviz.figures.spectra import model_spectra
from tests.ckpt_fixtures import one_layer_llama_config, write_config_folder

EPS32 = float(np.finfo(np.float32).eps)


# --- 1. a lone σ gets a mark ------------------------------------------------------------------------------
def _sigmas(name: str, delta: torch.Tensor, baseline: torch.Tensor) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sigma and shape frames :func:`model_spectra` takes, of a planted Δ and its baseline (float64 SVD)."""
    parts = []
    for kind, d in (("update", delta), ("random", baseline)):
        s = torch.linalg.svdvals(d.double()).numpy()
        parts.append(
            pd.DataFrame({"model": "ft", "name": name, "index": np.arange(1, s.size + 1), "sigma": s, "kind": kind})
        )
    m, n = delta.shape
    return pd.concat(parts, ignore_index=True), pd.DataFrame(
        [{"model": "ft", "name": name, "rows": m, "cols": n, "module": "k"}]
    )


def _curves(fig) -> dict[str, object]:
    """The update's and the baseline's traces of a one-matrix spectra figure (solid and dashed)."""
    return {t.line.dash: t for t in fig.data if t.line.dash in ("solid", "dash")}


def _visible_points(trace) -> int:
    """Points Plotly draws a mark for: every finite one with markers on, else only those with a finite neighbour."""
    y = np.asarray(trace.y, dtype=float)
    ok = np.isfinite(y)
    if "markers" in trace.mode and (trace.marker.size is None or trace.marker.size > 0):
        return int(ok.sum())
    joined = ok & (np.r_[False, ok[:-1]] | np.r_[ok[1:], False])  # a segment to a neighbour
    return int(joined.sum())


def test_a_rank1_update_is_drawn_beside_its_full_baseline():
    """Δ changed down one column: rank 1 (one σ above the threshold), against a baseline of 32 scattered entries."""
    g = torch.Generator().manual_seed(0)
    delta = torch.zeros(32, 64)
    delta[:, 7] = 1e-3 * (1 + torch.rand(32, generator=g))
    baseline = torch.zeros(32, 64)
    baseline.view(-1)[torch.randperm(32 * 64, generator=g)[:32]] = 1e-3 * (1 + torch.rand(32, generator=g))
    sig, shapes = _sigmas("layers.0.self_attn.k_proj.weight", delta, baseline)
    c = _curves(model_spectra(sig, shapes, ["ft"]))
    y = np.asarray(c["solid"].y, dtype=float)
    assert np.isfinite(y).sum() == 1  # (the planted rank: the rest are numerical zeros, not drawn)
    assert np.isclose(y[0], float(torch.linalg.matrix_norm(delta.double(), 2)), rtol=1e-12)
    assert _visible_points(c["solid"]) == 1  # the update's σ₁, the largest value on the chart, has its mark
    assert _visible_points(c["dash"]) == int(np.isfinite(np.asarray(c["dash"].y, dtype=float)).sum()) > 1
    assert c["dash"].mode == "lines"  # a curve of many σ keeps its dashes (no beads hiding them)


def test_a_single_entry_update_and_its_rank1_baseline_both_have_a_mark():
    """One entry changed: Δ and its baseline (one entry scattered elsewhere) are rank 1 with the same σ."""
    delta, baseline = torch.zeros(64, 64), torch.zeros(64, 64)
    delta[3, 5] = baseline[40, 12] = 3.814697265625e-06
    sig, shapes = _sigmas("layers.0.self_attn.q_proj.weight", delta, baseline)
    fig = model_spectra(sig, shapes, ["ft"])
    c = _curves(fig)
    for t in (c["solid"], c["dash"]):
        y = np.asarray(t.y, dtype=float)
        assert y[np.isfinite(y)].tolist() == [3.814697265625e-06]
        assert _visible_points(t) == 1
    assert c["solid"].marker.symbol != c["dash"].marker.symbol  # (the two coincide: a dot in a ring)
    assert "lone σ" in fig.layout.title.text  # the subtitle says what the marks are


# --- 2. +0 against −0 -------------------------------------------------------------------------------------
def _signed_zero_pair(dtype=torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (48, 32) base whose row 0 is +0, and the finetune storing −0 there: 32 entries whose bits differ."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(48, 32, generator=g).to(dtype)
    base[0] = 0.0
    ft = base.clone()
    ft[0] = -0.0
    return base, ft


def test_sign_flips_of_zeros_compare_as_the_same_matrix():
    base, ft = _signed_zero_pair()
    assert torch.equal(base, ft) and not torch.equal(base.view(torch.int16), ft.view(torch.int16))
    r = compare_subspaces("w", base, ft, SubspaceOptions(k=4))
    assert r.changed == 32  # counted as the update pass (and the Sparsity page) counts them: bits differ
    assert r.principal_overlap_chance == 32 / (48 * 32)
    assert np.array_equal(r.angles_left, np.zeros(4)) and np.array_equal(r.angles_right, np.zeros(4))  # not 4.7e-14°
    assert np.array_equal(r.sv_ratio, np.ones(4))
    assert np.isnan(r.principal_overlap)  # no value moved: not "0 % inside against 2.1 % chance"
    assert r.zero_signs_only
    row = r.row()
    assert row["angle_left_max"] == row["angle_right_max"] == 0.0 and np.isnan(row["principal_overlap"])


def test_a_real_change_beside_sign_flips_is_compared_as_before():
    """Only a pair equal as values takes the shortcut: one entry moved as well gives its own angles and overlap."""
    base, ft = _signed_zero_pair()
    ft[5, 3] = -ft[5, 3] * 4
    r = compare_subspaces("w", base, ft, SubspaceOptions(k=4))
    assert r.changed == 33 and not r.zero_signs_only
    assert np.isfinite(r.principal_overlap) and r.angles_left.max() > 0


def test_the_analysis_notes_a_pair_that_differs_only_in_the_sign_of_zero(tmp_path):
    """Through the checkpoints: the row says what the direct call says, and a note says why."""
    base, ft = _signed_zero_pair()
    name = "model.layers.0.self_attn.v_proj.weight"
    cfg = one_layer_llama_config()
    write_config_folder(tmp_path / "base", {name: base}, cfg)
    write_config_folder(tmp_path / "ft", {name: ft}, cfg)
    table = analyze_subspaces(
        str(tmp_path / "base"), [str(tmp_path / "ft")], options=SubspaceOptions(k=4), device="cpu"
    )
    row = table.to_frame().set_index("name").loc[name]
    assert row["changed"] == 32 and row["angle_left_max"] == 0.0 and np.isnan(row["principal_overlap"])
    said = [n for n in table.notes if "sign of zero" in n]
    assert len(said) == 1 and name in said[0] and "1 matrix pair" in said[0]


def _table_with_a_sign_flip_row() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A subspaces table as the analysis writes it: v_proj's entries differ only in the sign of zero (64 changed,
    angles 0, σ ratios 1, overlap undefined), q_proj really changed."""
    df = pd.DataFrame(
        {
            "name": ["layers.0.self_attn.v_proj.weight", "layers.0.self_attn.q_proj.weight"],
            "module": ["v", "q"],
            "changed": [64, 10],
            "principal_overlap": [np.nan, 0.2],
            "principal_overlap_chance": [64 / 4096, 10 / 4096],
            "angle_left_max": [0.0, 5.0],
            "angle_right_max": [0.0, 4.0],
            "sv_ratio_mean": [1.0, 1.1],
            "method": ["gram", "gram"],
        }
    )
    vectors = pd.DataFrame(
        {
            "name": [df["name"][0]] * 2 + [df["name"][1]] * 2,
            "index": [0, 1, 0, 1],
            "angle_left": [0.0, 0.0, 1.0, 5.0],
            "angle_right": [0.0, 0.0, 1.0, 4.0],
        }
    )
    return df, vectors


def test_the_subspace_charts_say_a_sign_flip_matrix_is_the_same_not_a_zero_base():
    """The principal-weight chart said "1 changed matrix whose base matrix is all zero" of the ±0 matrix, and the
    most-rotated curves drew it at 0° among the rotated ones."""
    from subnetviz.figures.subspaces import principal_overlap_scatter, rotated_curves, signs_only

    df, vectors = _table_with_a_sign_flip_row()
    assert list(signs_only(df)) == [True, False]
    notes = " ".join(a.text.replace("<br>", " ") for a in principal_overlap_scatter(df).layout.annotations)
    assert "all zero" not in notes and "differ only in the sign of zero (layers.0.self_attn.v_proj.weight)" in notes
    fig = rotated_curves(df, vectors, n=6)
    assert [t.name for t in fig.data] == ["layers.0.self_attn.q_proj.weight"]
    assert "sign of zero" in " ".join(a.text.replace("<br>", " ") for a in fig.layout.annotations)
