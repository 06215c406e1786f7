"""Figure builders draw the numbers they are given: checked against independent references.

Heatmap cells against a hand-built pivot, Venn areas against numerical integration and a fine
grid (not the layout's own formulas), UpSet bars against element-level sets, block means against
a loop over blocks, and the JSON that reaches the browser decoded back from plotly's base64.
"""

import base64
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.integrate import quad

from subnetviz import figures as F
from subnetviz.figures.venn import REGIONS3, VennInputError, venn2_layout, venn3_layout


def decode(v):
    """plotly>=6 serialises numpy arrays as {'dtype','bdata','shape'} (base64 typed arrays)."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(s) for s in v["shape"].split(",")]) if "shape" in v else a
    return np.asarray(v)


def heat_frame():
    rows = []
    rng = np.random.default_rng(1)
    for layer in (2, 0, 1):  # shuffled on purpose: the figure must order layers itself
        for module in ("down", "q", "up", "k"):
            numel = 64 * 64
            changed = int(rng.integers(0, numel))
            rows.append(
                dict(
                    layer=layer,
                    module=module,
                    changed=changed,
                    numel=numel,
                    density=changed / numel,
                    sparsity=1 - changed / numel,
                )
            )
    rows.append(dict(layer="final", module="lm_head", changed=5, numel=100, density=0.05, sparsity=0.95))
    df = pd.DataFrame(rows)
    return df[~((df.layer == 1) & (df.module == "up"))]  # one missing cell


# --- heatmaps -------------------------------------------------------------------------------


def test_sparsity_heatmap_z_equals_table_and_missing_is_nan():
    df = heat_frame()
    fig = F.sparsity_heatmap(df)
    tr = fig.data[0]
    assert list(tr.x) == ["q", "k", "up", "down", "lm_head"]  # canonical module order
    assert list(tr.y) == ["0", "1", "2", "final"]
    assert fig.layout.yaxis.autorange == "reversed"  # layer 0 on top
    for row in df.itertuples():
        i, j = list(tr.y).index(str(row.layer)), list(tr.x).index(row.module)
        assert tr.z[i, j] == pytest.approx(100 * row.sparsity, rel=1e-12)
        assert tuple(tr.customdata[i, j, :2]) == (row.changed, row.numel)
        assert tr.customdata[i, j, 3] == pytest.approx(100 * row.density, rel=1e-12)
    assert np.isnan(tr.z[1, 2])  # layer 1 × up was never given: blank, not 0
    assert np.isnan(tr.z[0, 4]) and np.isnan(tr.z[3, 0])
    assert np.isfinite(tr.z).sum() == len(df)
    # What reaches the browser is the same array (base64 typed array).
    spec = json.loads(fig.to_json())
    np.testing.assert_array_equal(decode(spec["data"][0]["z"]), tr.z)
    assert "changed %{customdata[0]:,.0f} of %{customdata[1]:,.0f}" in tr.hovertemplate


def test_sparsity_cells_never_round_a_change_away():
    """Four changed weights in 10,000: one decimal wrote "100.0" in the cell, as if the module were untouched
    (and 0.04 % read "0.0"); the cell keeps the digits that tell it from 100 (or 0), exact values stay."""
    rows = [(0, "q", 4, 10_000), (0, "k", 0, 10_000), (1, "q", 9_996, 10_000), (1, "k", 2_500, 10_000)]
    df = pd.DataFrame(
        [
            dict(layer=la, module=m, changed=c, numel=n, density=c / n, sparsity=1 - c / n, kept=c / n)
            for la, m, c, n in rows
        ]
    )
    tr = F.sparsity_heatmap(df).data[0]
    assert tr.texttemplate == "%{text}"
    cells = {(y, x): tr.text[i][j] for i, y in enumerate(tr.y) for j, x in enumerate(tr.x)}
    assert cells == {("0", "q"): "99.96", ("0", "k"): "100.0", ("1", "q"): "0.040", ("1", "k"): "75.0"}
    kept = F.sparsity_heatmap(df, "kept").data[0]  # the Bigram page's share of kept weights, the same way
    assert kept.text[0][0] == "0.040" and kept.text[1][0] == "99.96"
    bars = F.overall_bars(pd.DataFrame({"model": ["rl", "sft"], "sparsity": [0.99996, 0.3]})).data[0]
    assert list(bars.text) == ["99.996 %", "30.0 %"]  # the bar over a model, the same way


def test_shared_range_spans_every_frame_and_heatmaps_use_it():
    a, b = heat_frame(), heat_frame().assign(sparsity=lambda d: d["sparsity"] * 0.5)
    lo, hi = F.shared_range([a, b])
    both = np.concatenate([a["sparsity"], b["sparsity"]])
    assert (lo, hi) == pytest.approx((100 * both.min(), 100 * both.max()))
    figs = [F.sparsity_heatmap(f, zrange=(lo, hi)) for f in (a, b)]
    assert {(f.data[0].zmin, f.data[0].zmax) for f in figs} == {(lo, hi)}
    assert F.sparsity_heatmap(a).data[0].zmin is None  # alone: its own range
    assert F.sparsity_heatmap(a, cell_text=False).data[0].texttemplate is None  # values on hover only
    assert F.shared_range([a.assign(sparsity=0.5)]) == (49.5, 50.5)  # a constant grid still gets a drawable bar
    assert F.shared_range([]) == (0.0, 100.0)


def test_overall_bars_one_bar_per_model_in_percent():
    df = pd.DataFrame({"model": ["grpo", "sft"], "sparsity": [0.681, 0.276], "changed": [10, 20], "numel": [100, 100]})
    fig = F.overall_bars(df)
    assert list(fig.data[0].x) == ["grpo", "sft"]
    assert list(fig.data[0].y) == pytest.approx([68.1, 27.6])
    assert list(fig.data[0].text) == ["68.1 %", "27.6 %"]
    with pytest.raises(F.FigureDataError):
        F.overall_bars(df.assign(sparsity=[68.1, 27.6]))
    high = F.overall_bars(df.assign(sparsity=[0.979, 0.999]))  # the label above a 99.9 % bar is not cut off
    assert high.layout.yaxis.range[1] >= 110 and high.data[0].cliponaxis is False
    assert max(high.layout.yaxis.tickvals) == 100  # no tick past 100 %


def test_delta_image_is_signed_block_mean_centred_on_zero():
    d = np.zeros((4, 6))
    d[:2, :2] = 2.0
    d[2:, 4:] = -1.0
    fig = F.delta_image(d, max_side=3)  # blocks of 2×2
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (2, 3) and z[0, 0] == 2.0 and z[1, 2] == -1.0 and z[0, 1] == 0.0
    assert fig.data[0].zmid == 0 and fig.data[0].zmin == -2.0 and fig.data[0].zmax == 2.0
    assert "mean of a 2×2 block" in fig.layout.title.text
    # the colourbar's title on top: at the side Plotly turns it by 90°, and "Δ" reads as "◁"
    assert fig.data[0].colorbar.title.text == "Δ" and fig.data[0].colorbar.title.side in (None, "top")
    full = F.delta_image(d, max_side=8)
    assert "full resolution" in full.layout.title.text and "mean" not in full.layout.title.text


def test_sparsity_heatmap_other_value_column_and_errors():
    df = heat_frame().assign(sparsity_unweighted=lambda d: d.sparsity / 2)
    fig = F.sparsity_heatmap(df, value="sparsity_unweighted")
    assert np.nanmax(fig.data[0].z) == pytest.approx(50 * df.sparsity.max())
    assert "(%)" in fig.data[0].colorbar.title.text
    with pytest.raises(F.FigureDataError, match="density"):
        F.sparsity_heatmap(df.drop(columns="density"))
    with pytest.raises(F.FigureDataError, match="one row per"):
        F.sparsity_heatmap(pd.concat([df, df.head(1)]))


def test_rank_and_overlap_heatmaps():
    df = heat_frame()[["layer", "module"]].assign(rank_frac=0.5, rank_frac_random=1.0, jaccard=0.2, jaccard_chance=0.1)
    r = F.rank_heatmap(df).data[0]
    assert np.nanmin(r.z) == np.nanmax(r.z) == 50
    o = F.overlap_layer_heatmap(df).data[0]
    assert np.nanmax(o.z) == pytest.approx(20)
    ratio = F.overlap_layer_heatmap(df, view="ratio").data[0]
    assert np.nanmax(ratio.z) == pytest.approx(1.0)  # log2(0.2 / 0.1): ×2 is one step above ×1
    assert ratio.zmid == 0


# --- lines and bars --------------------------------------------------------------------------


def test_tolerance_sweep_draws_exact_point_apart():
    tol = [0, 1e-8, 1e-6, 1e-5]
    df = pd.DataFrame(
        {"model": ["a"] * 4 + ["b"] * 4, "tolerance": tol * 2, "sparsity": [0.5, 0.6, 0.7, 0.8, 0.1, 0.2, 0.3, 0.4]}
    )
    fig = F.tolerance_sweep(df)
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    exact = [t for t in fig.data if t.mode == "markers"]
    assert [t.name for t in lines] == ["a", "b"]
    np.testing.assert_allclose(lines[0].x, [1e-8, 1e-6, 1e-5])
    np.testing.assert_allclose(lines[0].y, [60, 70, 80])
    assert exact[0].y[0] == pytest.approx(50) and exact[0].x[0] == pytest.approx(1e-9)
    assert exact[0].marker.symbol == "diamond-open" and exact[0].marker.color == lines[0].line.color
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis.ticktext[0] == "exact"
    assert fig.layout.yaxis.title.text == "sparsity (%)"
    with pytest.raises(F.FigureDataError):
        F.tolerance_sweep(df.assign(tolerance=-1.0))


def test_ulp_histogram_keeps_bin_order_and_shares():
    bins = ["0", "1", "2-3", ">3"]
    df = pd.DataFrame({"model": ["m"] * 4, "bin": bins, "count": [70, 20, 0, 10]})
    fig = F.ulp_histogram(df.iloc[::-1].assign(bin=pd.Categorical(df.bin[::-1], categories=bins)))
    tr = fig.data[0]
    assert list(tr.x) == bins
    np.testing.assert_array_equal(tr.y, [70, 20, 0, 10])
    np.testing.assert_allclose(tr.customdata, [70, 20, 0, 10])  # % of this model's total (100)
    assert fig.layout.yaxis.type == "log"


def test_module_bars_spectrum_series_training_accuracy():
    mb = F.module_bars(pd.DataFrame({"model": ["a", "b"], "name": ["embed", "embed"], "sparsity": [0.25, 0.75]}))
    assert [list(t.x) for t in mb.data] == [[25.0], [75.0]]
    sp = pd.DataFrame(
        {
            "name": ["w"] * 4,
            "index": [0, 1, 0, 1],
            "sigma": [2.0, 1.0, 0.5, 0.4],
            "kind": ["update"] * 2 + ["random"] * 2,
        }
    )
    fig = F.spectrum_curves(sp)
    assert [t.line.dash for t in fig.data] == ["solid", "dash"] and fig.layout.yaxis.type == "log"
    np.testing.assert_array_equal(fig.data[0].y, [2.0, 1.0])
    se = F.series_lines(
        pd.DataFrame(
            {"step": [10, 0], "vs_first": [0.9, 1.0], "vs_previous": [0.95, np.nan], "back_to_start": [0.1, 0]}
        )
    )
    np.testing.assert_allclose(se.data[0].y, [100, 90])  # sorted by step
    assert len(se.data) == 3
    tc = pd.DataFrame({"step": [0, 1, 0, 1], "metric": ["loss", "loss", "reward", "reward"], "value": [2, 1, 0, 1]})
    fig = F.training_curves(tc)
    assert len(fig.data) == 2 and fig.data[1].xaxis == "x2"
    A = np.array([[0.9, np.nan], [0.8, 0.7]])
    acc = F.accuracy_matrix(A, ["t1", "t2"]).data[0]
    np.testing.assert_allclose(acc.z, 100 * A)
    assert list(acc.text[0]) == ["90.0", ""]
    with pytest.raises(F.FigureDataError):
        F.accuracy_matrix(A, ["t1", "t2", "t3"])


def test_consensus_bars_leaves_out_k0_and_says_so():
    df = pd.DataFrame({"k": [0, 1, 2, 3], "count": [1000, 60, 30, 10]})
    fig = F.consensus_bars(df)
    np.testing.assert_array_equal(fig.data[0].x, [1, 2, 3])
    np.testing.assert_allclose(fig.data[0].customdata, [60, 30, 10])  # % of union = 100
    assert "1,000 parameters in no mask" in fig.layout.title.text
    per_layer = F.consensus_bars(pd.DataFrame({"layer": [0, 0, 1], "k": [1, 2, 1], "count": [3, 1, 5]}))
    assert [list(t.y) for t in per_layer.data] == [[75.0, 100.0], [25.0, 0.0]]


# --- matrix drill-down ------------------------------------------------------------------------


def test_matrix_image_block_mean_matches_loop_and_keeps_aspect():
    rng = np.random.default_rng(0)
    mask = rng.random((50, 23)) < 0.3
    fig = F.matrix_image(mask, max_side=10)  # block 5×5; the last column block is 5×3
    tr = fig.data[0]
    assert tr.z.shape == (10, 5)
    for bi in range(10):
        for bj in range(5):
            block = mask[5 * bi : 5 * bi + 5, 5 * bj : 5 * bj + 5]
            assert tr.z[bi, bj] == pytest.approx(100 * block.mean())
            assert tr.customdata[bi, bj, 4] == block.sum() and tr.customdata[bi, bj, 5] == block.size
    assert tr.customdata[-1, -1, 3] == 22  # original column index of the last block's end
    assert fig.layout.yaxis.scaleanchor == "x"
    full = F.matrix_image(mask.astype(np.float32), max_side=64).data[0]
    np.testing.assert_allclose(full.z, 100 * mask)
    with pytest.raises(F.FigureDataError):
        F.matrix_image(np.zeros((2, 2, 2), bool))
    assert fig.data[0].colorbar.title.text == "changed (%)" and full.colorbar.title.text == "changed (%)"
    binary = F.matrix_image(mask, max_side=64, subject="grpo · layers.0.q.weight")  # a cell per entry, 0 or 100
    assert list(binary.data[0].colorbar.ticktext) == ["unchanged", "changed"]
    assert (
        "<sup>grpo · layers.0.q.weight · 50×23</sup><br><sup>full resolution (a cell per entry)"
        in binary.layout.title.text
    )


def test_one_matrix_charts_name_their_model_and_matrix():
    subject = "dpo · layers.1.mlp.up_proj.weight"
    figs = [
        F.delta_image(np.ones((4, 4)), subject=subject),
        F.row_col_ratios(np.ones(4), np.ones(4), subject=subject),
    ]
    assert all(f"<sup>{subject}" in f.layout.title.text for f in figs)
    assert "<sup>" not in F.row_col_ratios(np.ones(4), np.ones(4)).layout.title.text


def test_row_col_ratios_downsamples_by_mean():
    rows = np.arange(10) / 10
    fig = F.row_col_ratios(rows, np.array([0.5, 1.0]), max_points=5)
    np.testing.assert_allclose(fig.data[0].y, [5, 25, 45, 65, 85])
    np.testing.assert_allclose(fig.data[1].y, [50, 100])
    assert fig.layout.yaxis.range[1] == fig.layout.yaxis2.range[1] == 100  # one range for both panels


def test_row_col_ratios_axis_fits_a_few_percent():
    fig = F.row_col_ratios(np.array([0.01, 0.02, 0.0]), np.array([0.04, np.nan]))
    assert fig.layout.yaxis.range[1] == fig.layout.yaxis2.range[1] == pytest.approx(4.6)  # 1.15 × the largest
    assert F.row_col_ratios(np.zeros(3), np.zeros(2)).layout.yaxis.range[1] == 1.0  # nothing changed: still an axis


# --- Venn -------------------------------------------------------------------------------------


def circles(fig):
    """(centres, radii) read back from the figure's circle shapes."""
    c = np.array([[(s.x0 + s.x1) / 2, (s.y0 + s.y1) / 2] for s in fig.layout.shapes])
    r = np.array([(s.x1 - s.x0) / 2 for s in fig.layout.shapes])
    return c, r


def lens_by_quadrature(c1, r1, c2, r2):
    """Intersection area of two disks by integrating the overlap of vertical chords."""
    lo, hi = max(c1[0] - r1, c2[0] - r2), min(c1[0] + r1, c2[0] + r2)
    if lo >= hi:
        return 0.0

    def chord(x):
        h1 = math.sqrt(max(r1 * r1 - (x - c1[0]) ** 2, 0))
        h2 = math.sqrt(max(r2 * r2 - (x - c2[0]) ** 2, 0))
        return max(0.0, min(c1[1] + h1, c2[1] + h2) - max(c1[1] - h1, c2[1] - h2))

    return quad(chord, lo, hi, epsabs=1e-13, epsrel=1e-12, limit=200)[0]


def grid_regions(c, r, n=1500):
    """Exclusive region areas of 3 circles counted on an n×n grid (independent of venn.py)."""
    lo, hi = (c - r[:, None]).min(0), (c + r[:, None]).max(0)
    xs, ys = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    px, py = np.meshgrid(xs, ys)
    inside = [(px - cx) ** 2 + (py - cy) ** 2 <= rr**2 for (cx, cy), rr in zip(c, r, strict=True)]
    cell = (xs[1] - xs[0]) * (ys[1] - ys[0])
    out = []
    for code in REGIONS3:
        sel = np.ones_like(px, bool)
        for i, ch in enumerate(code):
            sel &= inside[i] if ch == "1" else ~inside[i]
        out.append(sel.sum() * cell)
    return np.array(out)


def test_venn2_areas_are_the_planted_counts():
    only_a, only_b, both = 300, 500, 200
    fig = F.venn2([only_a, only_b, both], ["A", "B"])
    (ca, cb), (ra, rb) = circles(fig)
    union = only_a + only_b + both
    # Areas are in units of the union: π r² · union = set size; lens · union = |A ∩ B|.
    assert math.pi * ra**2 * union == pytest.approx(only_a + both, rel=1e-9)
    assert math.pi * rb**2 * union == pytest.approx(only_b + both, rel=1e-9)
    assert lens_by_quadrature(ca, ra, cb, rb) * union == pytest.approx(both, rel=1e-6)
    marker = fig.data[0]
    np.testing.assert_array_equal(marker.customdata[:, 0], [only_a, only_b, both])
    np.testing.assert_allclose(marker.customdata[:, 1], [30, 50, 20])
    assert list(marker.hovertext) == ["only A", "only B", "A ∩ B"]
    assert fig.layout.yaxis.scaleanchor == "x"  # circles stay round
    # Side by side, each label sits centred straight above its own circle (to the outer side a long one ran
    # off the chart's edge).
    for ann, (cx, cy), r in zip(fig.layout.annotations, (ca, cb), (ra, rb), strict=True):
        assert (ann.xanchor, ann.yanchor) == ("center", "bottom")
        assert (ann.x, ann.y) == pytest.approx((cx, cy + r))


@pytest.mark.parametrize("regions", [(0, 0, 5), (5, 3, 0), (0, 7, 4)])
def test_venn2_edge_cases_containment_and_disjoint(regions):
    lay = venn2_layout(regions)
    assert lay.region_error < 1e-9
    ok = ~np.isnan(lay.label_points[:, 0])
    assert list(ok) == [c > 0 for c in regions]


def planted_sets(seed=0, n=20000):
    rng = np.random.default_rng(seed)
    a = rng.random(n) < 0.30
    b = (rng.random(n) < 0.25) | (a & (rng.random(n) < 0.3))
    c = (rng.random(n) < 0.15) | (b & (rng.random(n) < 0.2))
    sets = np.stack([a, b, c])
    regions = [int(np.all(sets == np.array([ch == "1" for ch in code])[:, None], axis=0).sum()) for code in REGIONS3]
    return sets, regions


def test_venn3_pairwise_layout_is_exact_per_pair_and_error_is_honest():
    sets, regions = planted_sets()
    union = sets.any(0).sum()
    fig = F.venn3(regions, ["A", "B", "C"], method="pairwise")
    c, r = circles(fig)
    for i in range(3):
        assert math.pi * r[i] ** 2 * union == pytest.approx(sets[i].sum(), rel=1e-9)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert lens_by_quadrature(c[i], r[i], c[j], r[j]) * union == pytest.approx((sets[i] & sets[j]).sum(), rel=1e-6)
    lay = venn3_layout(regions, method="pairwise")
    independent = grid_regions(c, r) * union
    honest = np.abs(independent - np.array(regions)).sum() / union
    assert lay.region_error == pytest.approx(honest, abs=2e-3)
    np.testing.assert_allclose(lay.actual * union, independent, atol=2e-3 * union)
    assert f"{100 * (1 - lay.region_error):.1f}%" in fig.layout.title.text


def test_venn_prints_counts_only_in_regions_large_enough_to_hold_them():
    """Two small masks inside a large one (a bigram mask beside an update mask): the small regions' counts
    piled on top of each other; they keep their hover, the large regions keep their printed counts."""
    regions = {"100": 153_000, "010": 526, "001": 3_950, "011": 327, "101": 41, "111": 4, "110": 6}
    fig = F.venn3(regions, ["Δ grpo-s0", "bigram", "optimal"])
    (points,) = [t for t in fig.data if t.mode == "markers+text"]
    shown = {h: t for h, t in zip(points.hovertext, points.text, strict=True)}
    assert shown["only Δ grpo-s0"].startswith("153k") and shown["only optimal"].startswith("3.95k")  # 2.5 %
    assert all(t == "" for h, t in shown.items() if h not in ("only Δ grpo-s0", "only optimal")), shown  # < 0.4 %
    assert "only bigram" in shown and "bigram ∩ optimal only" in shown  # small regions still answer in the hover
    even = F.venn3({"100": 40, "010": 35, "001": 30, "110": 12, "101": 10, "011": 9, "111": 5}, ["a", "b", "c"])
    (points,) = [t for t in even.data if t.mode == "markers+text"]
    assert all(points.text), points.text  # comparable sets: every region's count printed


def test_venn_names_regions_too_small_to_draw_with_their_counts():
    """Three large sets with one-parameter pairwise overlaps: exact areas leave those regions no point to
    hover; the subtitle names each with its count instead of dropping it silently."""
    regions = {"100": 1e6, "010": 1e6, "001": 1e6, "110": 1, "101": 1, "011": 1, "111": 1}
    fig = F.venn3(regions, ["a", "b", "c"])
    (points,) = [t for t in fig.data if t.mode == "markers+text"]
    assert sorted(points.hovertext) == ["only a", "only b", "only c"]
    assert "too small to draw: a ∩ b only (1), a ∩ c only (1), b ∩ c only (1), a ∩ b ∩ c (1)" in fig.layout.title.text
    assert fig.layout.margin.t >= 56 + 18 * 2  # room for the title's two extra lines
    plain = F.venn3({"100": 40, "010": 35, "001": 30, "110": 12, "101": 10, "011": 9, "111": 5}, ["a", "b", "c"])
    assert "too small" not in plain.layout.title.text


def test_venn_names_two_small_circles_apart_and_as_text():
    """A large update mask and two tiny masks side by side at its edge: both names sat on one line over each
    other; each now hangs on a leader, one above and one below, long run names on two lines. Names are text:
    a '<b>' in one is shown, not applied."""
    regions = {"100": 1_000_000, "010": 500, "110": 300, "001": 400, "101": 200, "011": 100, "111": 50}
    labels = ["update <b>mask</b>", "bigram mask λ=10 · run-a", "optimal mask λ=10 · run-b"]
    fig = F.venn3(regions, labels)
    notes = {a.text: a for a in fig.layout.annotations}
    big, first, second = notes["<b>update &lt;b&gt;mask&lt;/b&gt;</b>"], *(a for a in notes.values() if a.showarrow)
    assert not big.showarrow
    assert first.text == "<b>bigram mask λ=10<br>· run-a</b>" and second.text == "<b>optimal mask λ=10<br>· run-b</b>"
    assert first.ay < 0 < second.ay  # one above its circle, one below: never on the same line
    (points,) = [t for t in fig.data if t.mode == "markers+text"]
    assert "only update &lt;b&gt;mask&lt;/b&gt;" in points.hovertext
    even = F.venn3({"100": 40, "010": 35, "001": 30, "110": 12, "101": 10, "011": 9, "111": 5}, ["a", "b", "c"])
    assert not any(a.showarrow for a in even.layout.annotations)  # comparable circles: names beside them


def test_venn3_auto_is_no_worse_and_handles_impossible_triangles():
    _, regions = planted_sets(3)
    assert venn3_layout(regions).region_error <= venn3_layout(regions, method="pairwise").region_error + 1e-12
    # B is half in A and half in C, but A and C are disjoint: no triangle makes all 3 pairs exact.
    impossible = [50, 0, 5, 50, 0, 5, 0]
    with pytest.raises(VennInputError, match="triangle"):
        venn3_layout(impossible, method="pairwise")
    lay = venn3_layout(impossible)
    assert lay.method == "cost"
    c, r = lay.centers, lay.radii
    honest = np.abs(grid_regions(c, r) - lay.target).sum() / lay.target.sum()
    assert lay.region_error == pytest.approx(honest, abs=3e-3)


@pytest.mark.parametrize("bad", [[1, 2], [1, -1, 1, 1, 1, 1, 1], [0] * 7, [1, np.nan, 1, 1, 1, 1, 1]])
def test_venn_bad_counts_raise(bad):
    with pytest.raises(VennInputError):
        venn3_layout(bad)


def test_venn_accepts_region_mapping_and_checks_labels():
    fig = F.venn3({"100": 4, "111": 2, "011": 1}, ["a", "b", "c"])
    assert sorted(fig.data[0].customdata[:, 0]) == [1, 2, 4]
    with pytest.raises(F.FigureDataError):
        F.venn2([1, 1, 1], ["only one"])


# --- UpSet and pairwise -----------------------------------------------------------------------


def test_upset_bars_and_set_sizes_match_element_sets():
    rng = np.random.default_rng(2)
    n_sets, labels = 8, [f"m{i}" for i in range(8)]
    member = rng.random((n_sets, 5000)) < np.linspace(0.05, 0.4, n_sets)[:, None]
    codes = (member.T * (1 << np.arange(n_sets))).sum(1)
    counts = pd.Series(codes[codes > 0]).value_counts()
    df = pd.DataFrame({"members": counts.index.astype(int), "count": counts.to_numpy()})
    fig = F.upset(df, labels, max_bars=40)
    bars, sizes = fig.data[0], fig.data[3]
    np.testing.assert_array_equal(bars.y, np.sort(counts.to_numpy())[::-1][:40])
    np.testing.assert_array_equal(sizes.x, member.sum(1))  # set sizes from every region, not only the top 40
    assert f"40 of {len(counts)}" in fig.layout.title.text
    # The same regions given as tuples of labels or '0/1' strings draw the same bars.
    as_tuples = df.assign(members=[tuple(lab for i, lab in enumerate(labels) if c >> i & 1) for c in df.members])
    as_bits = df.assign(members=["".join("1" if c >> i & 1 else "0" for i in range(8)) for c in df.members])
    for other in (as_tuples, as_bits):
        np.testing.assert_array_equal(F.upset(other, labels).data[0].y, bars.y)
    # Dots: the member line of the first bar joins exactly its members.
    top_code = int(df.sort_values("count", ascending=False).members.iloc[0])
    line = fig.data[2]
    first = list(line.y[: list(line.y).index(None)])
    assert first == [i for i in range(8) if top_code >> i & 1]


def test_upset_degree_sort_and_bad_members():
    df = pd.DataFrame({"members": [("a", "b"), ("a",), ("b",)], "count": [10, 1, 5]})
    fig = F.upset(df, ["a", "b"], sort="degree")
    np.testing.assert_array_equal(fig.data[0].y, [5, 1, 10])
    with pytest.raises(F.FigureDataError, match="not among"):
        F.upset(pd.DataFrame({"members": [("z",)], "count": [1]}), ["a", "b"])


def test_pairwise_matrix_fills_mirror_and_ratio():
    df = pd.DataFrame(
        {
            "a": ["x"],
            "b": ["y"],
            "o1": [0.6],
            "o2": [0.3],
            "o1_chance": [0.2],
            "o2_chance": [0.4],
            "jaccard": [0.25],
            "jaccard_chance": [0.125],
        }
    )
    o1 = F.pairwise_matrix(df, value="o1").data[0]
    assert o1.z[0, 1] == pytest.approx(60) and o1.z[1, 0] == pytest.approx(30)  # o1(x, y) = o2(y, x)
    assert np.isnan(o1.z[0, 0]) and o1.text[0, 1] == "60.0%"
    assert o1.customdata[1, 0, 2] == pytest.approx(0.3 / 0.4)
    o2 = F.pairwise_matrix(df, value="o2").data[0]
    np.testing.assert_allclose(o2.z, o1.z.T)
    r = F.pairwise_matrix(df, value="jaccard", view="ratio").data[0]
    assert r.z[0, 1] == pytest.approx(1.0) and r.z[1, 0] == pytest.approx(1.0)  # log2(×2)
    assert r.text[0, 1] == "×2.00"
    with pytest.raises(F.FigureDataError):
        F.pairwise_matrix(df, value="dice")


def test_pairwise_matrix_cuts_long_mask_names_on_its_axes_only():
    """An uploaded mask's name (its file name and hash, 49 characters) took the plot area and left the matrix a
    few pixels wide: on the axes a long name is cut in the middle, the hover and the cells keep it whole."""
    long = "uploads/up3_new-d4741bb4bb40caa005e6ae045acc25d1"
    df = pd.DataFrame({"a": ["masks/grpo-seed0"], "b": [long], "jaccard": [0.25], "jaccard_chance": [0.125]})
    fig = F.pairwise_matrix(df, value="jaccard")
    assert list(fig.data[0].x) == ["masks/grpo-seed0", long]  # the categories, as the hover names them
    shown = list(fig.layout.xaxis.ticktext)
    assert shown[0] == "masks/grpo-seed0" and len(shown[1]) == 24 and "…" in shown[1]
    assert shown[1].startswith(long[:11]) and shown[1].endswith(long[-12:])
    assert list(fig.layout.yaxis.ticktext) == shown and list(fig.layout.xaxis.tickvals) == list(fig.data[0].x)


# --- every builder survives an empty frame ----------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        F.sparsity_heatmap,
        F.rank_heatmap,
        F.overlap_layer_heatmap,
        F.tolerance_sweep,
        F.ulp_histogram,
        F.module_bars,
        F.spectrum_curves,
        F.series_lines,
        F.training_curves,
        F.consensus_bars,
        F.pairwise_matrix,
        lambda df: F.upset(df, ["a"]),
        lambda df: F.matrix_image(np.zeros((0, 0))),
        lambda df: F.row_col_ratios([], []),
        lambda df: F.accuracy_matrix(np.zeros((0, 0)), []),
    ],
)
def test_empty_input_gives_a_no_data_figure(build):
    fig = build(pd.DataFrame())
    assert fig.layout.annotations[0].text == "no data" and fig.layout.title.text


def test_palette_is_stable_and_backend_has_no_streamlit():
    assert F.color_map(["a", "b"]) == {"a": F.PALETTE[0], "b": F.PALETTE[1]}
    import subprocess
    import sys

    code = "import subnetviz.figures, subnetviz.report, sys; assert 'streamlit' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_heatmap_layers_without_index_share_one_row():
    df = pd.DataFrame(
        {
            "layer": [1.0, np.nan, 0.0, None],
            "module": ["q", "embed", "q", "lm_head"],
            "changed": [1, 2, 3, 4],
            "numel": [10] * 4,
            "sparsity": [0.9, 0.8, 0.7, 0.6],
            "density": [0.1, 0.2, 0.3, 0.4],
        }
    )
    tr = F.sparsity_heatmap(df).data[0]
    assert list(tr.y) == ["0", "1", "—"] and list(tr.x) == ["embed", "q", "lm_head"]
    np.testing.assert_allclose(tr.z[2], [80, np.nan, 60])


def test_venn_leaves_out_an_empty_set_and_names_it():
    fig = F.venn3([5, 0, 0, 2, 1, 0, 0], ["a", "b", "c"])
    assert len(fig.layout.shapes) == 2
    assert [a.text for a in fig.layout.annotations] == ["<b>a</b>", "<b>c</b>"]
    assert "empty, not drawn: b" in fig.layout.title.text


def test_matrix_image_accepts_a_torch_mask():
    import torch

    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[0] = True
    np.testing.assert_allclose(F.matrix_image(mask, max_side=3).data[0].z, [[50, 50, 50], [0, 0, 0]])


@pytest.mark.parametrize(
    "build",
    [
        lambda: F.sparsity_heatmap(heat_frame().assign(sparsity=lambda d: 100 * d.sparsity)),
        lambda: F.series_lines(pd.DataFrame({"step": [0], "vs_first": [85.0], "vs_previous": [np.nan]})),
        lambda: F.accuracy_matrix(np.array([[95.0]]), ["t"]),
    ],
)
def test_percentages_where_fractions_are_expected_are_refused(build):
    with pytest.raises(F.FigureDataError, match="divide them by 100"):
        build()


def test_overlap_views_label_ratios_and_reject_unknown_views():
    df = pd.DataFrame({"layer": [0], "module": ["q"], "jaccard": [0.3], "jaccard_chance": [0.1]})
    tr = F.overlap_layer_heatmap(df, view="ratio").data[0]
    assert tr.text[0, 0] == "×3.00" and tr.z[0, 0] == pytest.approx(np.log2(3))
    with pytest.raises(F.FigureDataError, match="view"):
        F.overlap_layer_heatmap(df, view="log")


def test_backend_overlap_frames_fit_the_builders_as_they_are():
    """OverlapReport's frames go straight into venn3 / upset / pairwise_matrix / consensus_bars."""
    import torch

    from subnetviz.analysis.overlap import mask_overlap

    sets, regions = planted_sets(5, n=3000)
    masks = [
        {"layers.0.w": torch.from_numpy(s[:1000].copy()), "layers.1.w": torch.from_numpy(s[1000:].copy())} for s in sets
    ]
    rep = mask_overlap(masks, ["a", "b", "c"], group_of=lambda name: int(name.split(".")[1]))
    venn = rep.venn_regions()
    fig = F.venn3(dict(zip(venn["region"], venn["count"], strict=True)), ["a", "b", "c"])
    np.testing.assert_array_equal(np.sort(fig.data[0].customdata[:, 0]), np.sort([r for r in regions if r]))
    up = F.upset(rep.regions, list(rep.labels))
    np.testing.assert_array_equal(up.data[3].x, sets.sum(1))
    pm = F.pairwise_matrix(rep.pairwise, value="o1").data[0]
    assert pm.z[0, 1] == pytest.approx(100 * (sets[0] & sets[1]).sum() / sets[0].sum())
    cons = F.consensus_bars(rep.consensus)
    assert list(cons.data[0].x) == ["0", "1"] and cons.layout.xaxis.title.text == "group"


def test_rank_heatmap_takes_spectrum_table_columns_with_nullable_ints():
    df = pd.DataFrame(
        {
            "layer": [0, 0],
            "module": ["q", "k"],
            "rows": [8, 8],
            "cols": [4, 2],
            "rank": pd.array([3, pd.NA], dtype="Int64"),
            "rank_frac": [0.75, np.nan],
            "baseline_rank_frac": [1.0, np.nan],
        }
    )
    tr = F.rank_heatmap(df).data[0]
    np.testing.assert_allclose(tr.z, [[75, np.nan]])
    np.testing.assert_allclose(tr.customdata[0, 0], [3, 4, 100])
    assert np.isnan(tr.customdata[0, 1, 0]) and "random baseline" in tr.hovertemplate


def test_spectrum_curves_threshold_line_and_one_legend_entry_per_matrix():
    sig = pd.DataFrame(
        {
            "name": ["a"] * 4 + ["b"] * 4,
            "index": [1, 2] * 4,
            "sigma": [4.0, 1.0, 3.0, 2.0, 8.0, 1.0, 6.0, 2.0],
            "kind": ["update", "update", "random", "random"] * 2,
        }
    )
    shapes = pd.DataFrame({"name": ["a", "b"], "rows": [10, 3], "cols": [5, 30]})
    tol = F.rank_thresholds(sig, shapes)
    eps = float(np.finfo(np.float32).eps)
    assert tol == pytest.approx({"a": 4.0 * 10 * eps, "b": 8.0 * 30 * eps})  # σ₁ of the update, not of the baseline
    fig = F.spectrum_curves(sig, thresholds=tol)
    assert [t.name for t in fig.data if t.showlegend is not False] == ["a", "b"]
    dotted = [t for t in fig.data if t.line.dash == "dot"]
    assert [tuple(t.y) for t in dotted] == [(tol["a"],) * 2, (tol["b"],) * 2]
    assert fig.layout.legend.orientation == "h"  # under the plot, not over the curves


def test_model_spectra_colour_each_model_and_keep_each_matrix_threshold():
    rows = []
    for model, scale in (("m1", 1.0), ("m2", 2.0)):
        for name in ("model.layers.0.q.weight", "model.layers.0.k.weight"):
            rows += [{"model": model, "name": name, "index": i, "sigma": scale / i, "kind": "update"} for i in (1, 2)]
    sig = pd.DataFrame(rows)
    shapes = pd.DataFrame(
        {"model": ["m1", "m1", "m2", "m2"], "name": ["model.layers.0.q.weight", "model.layers.0.k.weight"] * 2}
    ).assign(rows=4, cols=8)
    fig = F.model_spectra(sig, shapes, ["m1", "m2"])
    curves = [t for t in fig.data if t.showlegend is not False]
    assert [t.name for t in curves] == ["m1 · layers.0.q.weight", "m1 · layers.0.k.weight"] + [
        "m2 · layers.0.q.weight",
        "m2 · layers.0.k.weight",
    ]
    colour = F.color_map(["m1", "m2"])
    # one colour per model (by matrix, the modules' colours repeated across models)
    assert [t.line.color for t in curves] == [colour["m1"]] * 2 + [colour["m2"]] * 2
    dotted = {t.legendgroup: t.y[0] for t in fig.data if t.line.dash == "dot"}
    assert dotted["m2 · layers.0.k.weight"] == pytest.approx(2.0 * 8 * float(np.finfo(np.float32).eps))
    assert "colour: model" in fig.layout.title.text
    given = F.model_spectra(sig, shapes, ["m1", "m2"], colors={"m0": "#000", "m1": "#111", "m2": "#222"})
    assert [t.line.color for t in given.data if t.showlegend is not False] == ["#111"] * 2 + ["#222"] * 2
    one = F.model_spectra(sig[sig.model == "m1"], shapes[shapes.model == "m1"], ["m1"])
    assert [t.name for t in one.data if t.showlegend is not False] == [
        "model.layers.0.q.weight",
        "model.layers.0.k.weight",
    ]
    assert "colour: model" not in one.layout.title.text


def test_rank_measure_heatmap_is_percent_of_min_dim():
    df = pd.DataFrame(
        {
            "layer": [0, 0],
            "module": ["q", "up"],
            "rows": [10, 40],
            "cols": [10, 20],
            "effective_rank_99": [5, 10],
            "stable_rank": [2.5, 1.0],
        }
    )
    z = np.asarray(F.rank_measure_heatmap(df).data[0].z, dtype=float)
    assert list(z[0]) == pytest.approx([50.0, 50.0])
    st = F.rank_measure_heatmap(df, "stable_rank", zrange=F.measure_range(df, "stable_rank")).data[0]
    assert list(np.asarray(st.z, dtype=float)[0]) == pytest.approx([25.0, 5.0]) and (st.zmin, st.zmax) == (0.0, 25.0)


def test_chance_consensus_is_the_poisson_binomial_by_enumeration():
    import itertools

    p = [0.3, 0.5, 0.9]
    got = F.chance_consensus(p, 1000)
    want = np.zeros(4)
    for bits in itertools.product([0, 1], repeat=3):
        want[sum(bits)] += np.prod([q if b else 1 - q for q, b in zip(p, bits, strict=True)])
    assert list(got["k"]) == [0, 1, 2, 3]
    assert got["chance"].to_numpy() == pytest.approx(1000 * want, rel=1e-12)
    fig = F.consensus_bars(pd.DataFrame({"k": [0, 1, 2, 3], "count": [10, 20, 30, 40]}), chance=got)
    marks = [t for t in fig.data if t.type == "scatter"]
    assert list(marks[0].x) == [1, 2, 3] and list(marks[0].y) == pytest.approx(1000 * want[1:])


def test_overlap_layer_heatmap_drops_empty_columns_and_fits_the_ratio_range():
    df = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1, 0],
            "module": ["q", "k", "q", "k", "attn_norm"],
            "jaccard": [0.5, 0.4, 0.3, 0.45, np.nan],
            "jaccard_chance": [0.2, 0.2, 0.2, 0.2, np.nan],
        }
    )
    tr = F.overlap_layer_heatmap(df).data[0]
    assert list(tr.x) == ["q", "k"]  # the never-changed norm has no overlap to show: no blank column
    assert "×2.50" in tr.text[0][0] and "50.0%" in tr.text[0][0]  # value and × chance in each cell
    r = F.overlap_layer_heatmap(df, view="ratio").data[0]
    assert r.zmax == pytest.approx(np.log2(2.5)) and r.zmin == pytest.approx(-np.log2(2.5))  # fits the data, ×2.5 top
    assert "×2.5" in r.colorbar.ticktext and all(abs(t) <= r.zmax + 1e-9 for t in r.colorbar.tickvals)


def test_overlap_layer_heatmap_greys_the_cells_with_nothing_to_colour_and_says_why():
    """A cell neither mask touches (Jaccard 0/0) and, on the ×chance scale, one only a single mask touches
    (chance 0) are drawn grey with a dash and a hover that says which; ×0 (no overlap where chance expects
    some) is a value, drawn at the scale's low end, not left blank."""
    df = pd.DataFrame(
        {  # layer 0: q ×2, k neither mask; layer 1: q one mask only, k disjoint masks (Jaccard 0, chance 0.1)
            "layer": [0, 0, 1, 1],
            "module": ["q", "k", "q", "k"],
            "jaccard": [0.4, np.nan, 0.0, 0.0],
            "jaccard_chance": [0.2, np.nan, 0.0, 0.1],
        }
    )
    value = F.overlap_layer_heatmap(df)
    main, grey = value.data
    assert np.isnan(main.z[0][1]) and list(grey.text[0]) == ["", "—"] and list(grey.text[1]) == ["", ""]
    assert grey.customdata[0][1] == "neither mask has a weight here" and not grey.showscale
    assert main.text[1][0] == "0.0%"  # in values, a one-sided cell is a Jaccard of 0, drawn as one
    ratio = F.overlap_layer_heatmap(df, view="ratio")
    main, grey = ratio.data
    assert [list(r) for r in grey.text] == [["", "—"], ["—", ""]]
    assert "no chance baseline" in grey.customdata[1][0]
    assert main.z[1][1] == pytest.approx(main.zmin) and main.text[1][1] == "×0.00"  # ×0: the low end
    assert main.z[0][0] == pytest.approx(1.0)  # log2(×2)
    # nothing undefined: no grey layer
    assert len(F.overlap_layer_heatmap(df.iloc[[0]]).data) == 1


def test_overlap_cells_keep_a_small_share_visible():
    """A small overlap keeps two significant digits in its cell ("0.0065%"): one decimal read "0.0%", as if
    the masks shared nothing; zero stays 0.0%, a share from 0.05 % up keeps one decimal."""
    from subnetviz.figures.style import percent_cells

    assert list(percent_cells(np.array([38.43, 0.0065, 0.0, 0.05, np.nan, 2e-5]))) == [
        "38.4%",
        "0.0065%",
        "0.0%",
        "0.1%",
        "",
        "2.0e-05%",
    ]
    assert list(percent_cells(np.array([99.96, 99.9996, 99.94, 100.0, 100 - 1e-9]), unit="")) == [
        "99.96",
        "99.9996",
        "99.9",
        "100.0",
        ">99.9999",
    ]
    pw = pd.DataFrame({"a": ["x"], "b": ["y"], "o1": [6.5e-5], "o2": [0.2], "o1_chance": [0.3], "o2_chance": [0.01]})
    cells = F.pairwise_matrix(pw, "o1").data[0].text
    assert cells[0][1] == "0.0065%" and cells[1][0] == "20.0%"


def test_series_lines_adds_the_step0_point_and_names_the_start():
    df = pd.DataFrame(
        {"step": [10, 20], "vs_first": [0.9, 0.8], "vs_previous": [0.9, 0.95], "back_to_start": [0.0, 0.01]}
    )
    fig = F.series_lines(df, first="base")
    assert fig.data[0].name == "sparsity vs base"
    assert list(fig.data[0].x) == [0, 10, 20] and list(fig.data[0].y) == pytest.approx([100, 90, 80])
    named = F.series_lines(df.assign(step=[1, 2]), ticks=["base", "grpo", "sft"])
    assert (
        list(named.layout.xaxis.ticktext) == ["base", "grpo", "sft"] and named.layout.xaxis.title.text == "checkpoint"
    )
    # not one run: the title does not say training, and the hover names the checkpoint, not a step number
    assert "training" not in named.layout.title.text and "training" in fig.layout.title.text
    assert list(named.data[0].text) == ["base", "grpo", "sft"] and named.data[0].hovertemplate.startswith("%{text}")
    assert fig.data[0].text is None and fig.data[0].hovertemplate.startswith("step %{x}")


def test_split_bar_stacks_shares_in_fixed_colours_and_module_series_is_weighted():
    split = pd.DataFrame(
        {"part": ["never updated", "updated, unchanged at the end", "final subnetwork"], "count": [60, 10, 30]}
    )
    fig = F.split_bar(split)
    assert fig.layout.barmode == "stack" and [t.x[0] for t in fig.data] == pytest.approx([60, 10, 30])
    assert [t.marker.color for t in fig.data] == [F.series.SPLIT_COLORS[p] for p in split["part"]]
    mods = pd.DataFrame({"step": [1, 1, 2], "module": ["q", "q", "q"], "changed": [1, 3, 8], "numel": [10, 30, 40]})
    tr = F.module_series(mods).data[0]
    # Σchanged/Σnumel, not a mean of shares; from the step-0 point (the base against itself)
    assert list(tr.x) == [0, 1, 2] and list(tr.y) == pytest.approx([100.0, 90.0, 80.0])
    twelve = pd.DataFrame({"step": 1, "module": [f"m{i}" for i in range(12)], "changed": 1, "numel": 10})
    styles = [(t.line.color, t.line.dash) for t in F.module_series(twelve).data]
    assert len(set(styles)) == 12  # past eight colours, dashed: no two module kinds drawn alike


def test_training_curves_have_markers_and_smooth_like_tensorboard():
    df = pd.DataFrame({"step": [1], "metric": ["loss"], "value": [2.0]})
    tr = F.training_curves(df).data[0]
    assert "markers" in tr.mode  # a one-point curve stays visible
    v = np.array([1.0, 3.0, np.nan, 5.0])
    got = F.series.smooth_ema(v, 0.5)
    assert got[0] == 1.0 and got[1] == pytest.approx((0.25 * 1 + 0.5 * 3) / 0.75)  # debiased EMA
    assert got[2] == got[1]  # a NaN step carries the average on
    many = pd.DataFrame(
        {"step": [1, 2, 1, 2], "metric": ["loss"] * 4, "value": [1.0, 2, 3, 4], "run": ["a", "a", "b", "b"]}
    )
    fig = F.training_curves(many, smoothing=0.5)
    assert [t.name for t in fig.data if t.showlegend] == ["a", "b"]
    assert sum(t.opacity == 0.3 for t in fig.data) == 2  # the raw curve stays, faint, under each smoothed one
    # The chosen run (first) is drawn wide and first: an overlaid run with the same curve leaves it a rim.
    same = many.assign(value=[1.0, 2, 1, 2])
    lines = [t for t in F.training_curves(same).data if t.showlegend]
    assert [(t.name, t.line.width, t.marker.size) for t in lines] == [("a", 5, 9), ("b", 2, 5)]
    assert F.training_curves(same[same["run"] == "a"]).data[0].line.width == 2  # one run: nothing to set apart
    acc = pd.DataFrame({"step": [1, 2], "metric": ["accuracy"] * 2, "value": [0.25, 0.5]})
    fig = F.training_curves(acc)
    assert list(fig.data[0].y) == [25.0, 50.0] and fig.layout.annotations[0].text == "accuracy (%)"  # as elsewhere
    assert fig.layout.xaxis.dtick == 1  # a short run's steps read 1, 2, not 1, 1.5, 2
    long = pd.DataFrame({"step": [0, 20, 20], "metric": ["loss", "loss", "accuracy"], "value": [1.0, 0.5, 0.5]})
    fig = F.training_curves(long)
    assert fig.layout.xaxis.dtick is None and fig.layout.xaxis2.dtick == 1  # accuracy: one point, whole steps


def test_format_number_never_hides_a_small_number():
    assert F.format_number(0.00012) == "1.20e-04" and F.format_number(-2.3e-5, sign=True) == "-2.30e-05"
    assert F.format_number(4e-4, sign=True) == "+4.00e-04"  # the random ablation's tiny Δ bits, not "+0.000"
    assert F.format_number(12345.6) == "12,346" and F.format_number(0.9873) == "0.987"
    assert F.format_number(float("nan")) == "—"


def test_continual_one_density_is_bars_and_untrained_cells_are_blank():
    from subnetviz.figures import continual as C

    summary = pd.DataFrame(
        {
            "label": ["finetune", "SupSup", "ExSSNeT"],
            "density": [1.0, 0.05, 0.05],
            "final_acc_mean": [0.9, 0.8, 0.95],
            "final_acc_sd": [0.01, np.nan, 0.02],
        }
    )
    fig = C.accuracy_vs_density(summary)
    assert fig.data[0].type == "bar" and "5 %" in fig.layout.title.text  # no one-point log axis
    assert sorted(fig.data[0].y) == pytest.approx([80, 90, 95])
    # each value labelled above its error bar's cap (on the bar's end, the error bar crossed its digits)
    assert fig.data[0].text is None and fig.data[1].mode == "text"
    above = dict(zip(fig.data[1].x, fig.data[1].y, strict=True))  # mean + sd, and a little more
    assert above == pytest.approx({"finetune": 91, "SupSup": 80, "ExSSNeT": 97}, abs=2)
    assert above["finetune"] > 91 and above["SupSup"] > 80 and above["ExSSNeT"] > 97
    assert list(fig.data[1].text) == ["90.0 %", "80.0 %", "95.0 %"] and fig.layout.yaxis.range[1] >= 97
    no_result = C.accuracy_vs_density(summary.assign(final_acc_mean=[0.9, np.nan, 0.95]))
    assert 97 <= no_result.layout.yaxis.range[1] < 120  # the axis from the methods with a result, not NaN
    A = np.array([[0.9, 0.1], [0.8, 0.9]])
    z = np.asarray(F.accuracy_matrix(A, ["task 1", "task 2"]).data[0].z, dtype=float)
    assert np.isnan(z[0, 1]) and z[1, 0] == pytest.approx(80)  # task 2 not trained after task 1: grey, no number


def test_prompt_spread_shows_every_prompt_per_model_on_one_axis_and_titles_the_measure():
    from subnetviz.figures import behavior as B
    from subnetviz.figures.style import color_map

    prompts = pd.DataFrame(
        {
            "model": ["a", "a", "a", "b", "b"],
            "prompt": [0, 1, 2, 0, 1],
            "kl_forward": [1e-4, 2e-3, 5e-4, 0.02, 0.01],
            "kl_reverse": [2e-4, 1e-3, 4e-4, 0.03, 0.02],
        }
    )
    fig = B.prompt_spread(prompts)
    # one box per model holding every prompt's value as a point (not a histogram binned per model)
    assert [t.type for t in fig.data] == ["box", "box"] and [t.name for t in fig.data] == ["a", "b"]
    assert list(fig.data[0].y) == [1e-4, 2e-3, 5e-4] and fig.data[0].boxpoints == "all"
    assert list(fig.data[1].customdata) == [0, 1]  # the hover names the prompt
    assert fig.data[0].marker.color == color_map(["a", "b"])["a"]  # the model's colour on the other charts
    assert "forward KL" in fig.layout.title.text
    rev = B.prompt_spread(prompts, value="kl_reverse")
    assert "reverse KL" in rev.layout.title.text and list(rev.data[1].y) == [0.03, 0.02]
    assert B.prompt_spread(prompts.iloc[:0]).layout.annotations[0].text == "no data"


def test_behaviour_charts_name_the_measure_and_draw_accuracy_in_percent():
    from subnetviz.figures import behavior as B

    summary = pd.DataFrame(
        {
            "model": ["a", "a"],
            "experiment": ["finetuned", "m/inside"],
            "kl_forward": [1e-3, 0.0],
            "accuracy": [0.375, 0.5],
        }
    )
    curves = pd.DataFrame(
        {
            "model": "a",
            "order": ["abs_delta", "abs_delta"],
            "fraction_reverted": [0.0, 1.0],
            "kl_reverse": [2e-3, 0.0],
            "accuracy": [0.25, 0.5],
        }
    )
    acc = B.kl_bars(summary, value="accuracy")
    assert list(acc.data[0].y) == pytest.approx([37.5, 50.0]) and acc.layout.yaxis.title.text == "accuracy (%)"
    kl = B.kl_bars(summary)
    assert list(kl.data[0].y) == pytest.approx([1e-3, 0.0]) and kl.layout.yaxis.title.text == "nats per token"
    rev = B.revert_curves(curves, value="kl_reverse")
    assert rev.layout.title.text.startswith("Reverse KL(π ‖ π_base) against")  # not the column name kl_reverse
    assert "Reverse KL" in rev.data[0].hovertemplate
    acc_curve = B.revert_curves(curves, value="accuracy")
    assert (
        list(acc_curve.data[0].y) == pytest.approx([25.0, 50.0]) and acc_curve.layout.yaxis.title.text == "accuracy (%)"
    )


def test_token_bars_name_the_measures_and_shade_the_answer_positions():
    from subnetviz.figures import behavior as B

    tokens = pd.DataFrame(  # prompt "2+3=" and answer "5": positions 3 ("=") and 4 ("5") predict the answer
        {
            "position": [4, 0, 1, 2, 3],
            "token": ["5", "2", "+", "3", "="],
            "predicts_answer": [True, False, False, False, True],
            "kl_forward": [2e-4, 1e-5, 0.0, 3e-5, 5e-4],
            "kl_reverse": [1e-4, 2e-5, 0.0, 1e-5, 4e-4],
        }
    )
    fig = B.token_bars(tokens)
    fwd, rev = fig.data
    assert (fwd.name, rev.name) == (B.MEASURE["kl_forward"], B.MEASURE["kl_reverse"])  # not the column names
    assert list(fwd.x) == ["0:2", "1:+", "2:3", "3:=", "4:5"] and list(fwd.y) == pytest.approx(
        [1e-5, 0, 3e-5, 5e-4, 2e-4]
    )
    assert [c.strip() for c in fwd.customdata] == ["", "", "", "(predicts the answer)", "(predicts the answer)"]
    assert fig.layout.yaxis.exponentformat == "e"  # 5e-4, not 500µ
    (band,) = fig.layout.shapes  # one band over positions 3 and 4, edge to edge on the category axis
    assert (band.x0, band.x1) == (2.5, 4.5)
    assert [a.text for a in fig.layout.annotations] == ["predicts the answer"]
    gap = B.token_bars(tokens.assign(predicts_answer=[True, True, False, False, False]))  # runs 0 and 4
    assert sorted((b.x0, b.x1) for b in gap.layout.shapes) == [(-0.5, 0.5), (3.5, 4.5)]
    assert not B.token_bars(tokens.drop(columns="predicts_answer")).layout.shapes  # older results: no band


def test_compact_labels_take_out_what_every_label_shares():
    run = "20261202-214905-continual-499df0"
    tasks = [f"SupSup task {i} mask (d=0.05, seed 0) · {run}" for i in (1, 2, 3)]
    assert F.compact_labels(tasks) == (["task 1", "task 2", "task 3"], f"SupSup … mask (d=0.05, seed 0) · {run}")
    seeds = [f"SupSup task 1 mask (d=0.05, seed {i}) · {run}" for i in (0, 1)]
    assert F.compact_labels(seeds) == (["seed 0", "seed 1"], f"SupSup task 1 mask (d=0.05, …) · {run}")
    methods = [f"{m} task 1 mask (d=0.05, seed 0) · {run}" for m in ("SupSup", "ExSSNeT")]
    assert F.compact_labels(methods) == (["SupSup", "ExSSNeT"], f"… task 1 mask (d=0.05, seed 0) · {run}")
    # Masks of two runs that their "what" tells apart: the run ids go under the title.
    a, b = "20261202-214905-bigram_mask-983484", "20261202-214905-bigram_mask-faf878"
    two = [f"bigram mask λ=10 · {a}", f"optimal mask λ=10 · {b}"]
    assert F.compact_labels(two) == (["bigram mask λ=10", "optimal mask λ=10"], f"… · runs {a}, {b}")
    # ... also beside an update mask, which has no run (the pairwise matrices were squeezed to a stamp)
    mixed = [*two, "Δ grpo-s0"]
    assert F.compact_labels(mixed) == (["bigram mask λ=10", "optimal mask λ=10", "Δ grpo-s0"], f"… · runs {a}, {b}")
    many = [f"mask {i} · run-{i}" + "x" * 20 for i in range(4)]
    assert F.compact_labels(many)[1] == "… · 4 runs"
    # The same "what" from two runs: the run ids are what tells them apart; the "what" goes under the title.
    twins = [f"bigram mask λ=10 · {a}", f"bigram mask λ=10 · {b}"]
    assert F.compact_labels(twins) == ([a, b], "bigram mask λ=10 · …")
    # Nothing shared at either end: whole labels, each broken once at " · ".
    odd = [f"bigram mask λ=10 · {a}", f"bigram mask λ=10 · {b} x", "Δ sft"]
    assert F.compact_labels(odd) == ([f"bigram mask λ=10<br>· {a}", f"bigram mask λ=10<br>· {b} x", "Δ sft"], "")
    assert F.compact_labels(["Δ grpo-s0", "Δ dpo", "Δ sft"]) == (["Δ grpo-s0", "Δ dpo", "Δ sft"], "")  # short: as is
    same_start = ["a very long shared beginning X", "a very long shared beginning Y"]
    assert F.compact_labels(same_start) == (["X", "Y"], "a very long shared beginning …")
    one = ["a single label that is much longer than the limit"]
    assert F.compact_labels(one) == (one, "")


def test_tokens_and_run_names_are_text_not_markup():
    """Plotly reads HTML in labels: a Llama "<s>" token vanished and struck the rest through, "<br>" broke the
    line, "&amp;" read "&", and "%{y}" in a run's name was filled in by the hover. They reach the chart escaped
    (Plotly decodes &lt; &gt; &amp; &#123; back to the characters, so they read as typed)."""
    from subnetviz.figures.behavior import token_bars

    tokens = pd.DataFrame(
        {
            "position": [0, 1, 2],
            "token": ["<s>", "a&amp;b", "</s>"],
            "kl_forward": [0.1, 0.2, 0.3],
            "kl_reverse": [0.1] * 3,
        }
    )
    bars = token_bars(tokens).data[0]
    assert list(bars.x) == ["0:&lt;s&gt;", "1:a&amp;amp;b", "2:&lt;/s&gt;"]
    run = "<b>lr</b> %{y}"
    df = pd.DataFrame(
        {"step": [0, 1, 0, 1], "metric": ["loss"] * 4, "value": [1.0, 0.5, 1.0, 0.6], "run": [run] * 2 + ["x"] * 2}
    )
    fig = F.training_curves(df)
    (line,) = [t for t in fig.data if t.name and "lr" in t.name]
    assert line.name == "&lt;b&gt;lr&lt;/b&gt; %&#123;y}" and line.hovertemplate.startswith(
        "&lt;b&gt;lr&lt;/b&gt; %&#123;y}<br>"
    )
    assert F.plain_label("plain run · 1") == "plain run · 1"  # ordinary names unchanged


def _strings(node) -> list[str]:
    """Every string in a figure's JSON (titles, names, ticks, hovers, annotations), walked recursively."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list | tuple | np.ndarray):
        return [s for v in node for s in _strings(v)]
    return []


HOSTILE = "ft<i>x</i> & %{y}"  # a folder name / tensor name as someone else chose it
SHOWN = "ft&lt;i&gt;x&lt;/i&gt; &amp; %&#123;y}"  # what Plotly decodes back to HOSTILE, as text


def test_data_reaches_every_chart_as_text():
    """Model labels, module names and mask names reach each chart escaped, once, wherever they are drawn (ticks,
    legends, hovers, annotations, titles a builder makes): Plotly reads <i>, <a href>, <br> and &-entities in all
    of them, and fills "%{y}" in a hover. Colours keyed by the raw label still colour the escaped one."""
    other = "plain"
    heat = heat_frame().assign(module=lambda d: d["module"].replace("lm_head", HOSTILE))
    figs = {
        "heatmap": F.sparsity_heatmap(heat),
        "bars": F.overall_bars(
            pd.DataFrame({"model": [HOSTILE, other], "sparsity": [0.9, 0.5]}),
            colors={HOSTILE: "#123456", other: "#abcdef"},
        ),
        "upset": F.upset(pd.DataFrame({"members": [(HOSTILE,), (HOSTILE, other)], "count": [3, 2]}), [HOSTILE, other]),
        "venn": F.venn2({"10": 5, "01": 4, "11": 2}, [HOSTILE, other], colors={HOSTILE: "#123456", other: "#abcdef"}),
        "pairwise": F.pairwise_matrix(
            pd.DataFrame({"a": [HOSTILE], "b": [other], "o1": [0.5], "o1_chance": [0.25]}),
            value="o1",
            chance_col="o1_chance",
            labels=[HOSTILE, other],
        ),
        "matrix": F.matrix_image(np.eye(4, dtype=bool), subject=HOSTILE),
        "accuracy": F.accuracy_matrix(np.array([[0.5, 0.2]]), [HOSTILE, other]),
        "series": F.series_lines(
            pd.DataFrame({"step": [1, 2], "vs_first": [0.9, 0.8], "vs_previous": [0.9, 0.95]}),
            ticks=["base", HOSTILE, other],
        ),
    }
    for name, fig in figs.items():
        texts = _strings(fig.to_plotly_json())
        assert not [t for t in texts if "<i>" in t], name  # never markup
        assert any(SHOWN in t for t in texts), name  # shown, as text
        assert not [t for t in texts if "&amp;lt;" in t], name  # and escaped once, not twice
    bars = figs["bars"].data[0]
    assert list(bars.x) == [SHOWN, other] and list(bars.marker.color) == ["#123456", "#abcdef"]
    assert F.plain_label(HOSTILE) == SHOWN
    from subnetviz.figures.style import _text_frame

    plain = heat_frame()  # nothing to escape (string columns and a string column index): the frame itself, no copy
    assert _text_frame(plain) is plain
    cat = pd.DataFrame({"bin": pd.Categorical(["b<1", "a"], categories=["b<1", "a"])})
    assert list(_text_frame(cat)["bin"].cat.categories) == ["b&lt;1", "a"]  # escaped, in their order


def test_every_figure_builder_takes_its_data_as_text():
    """A builder added later escapes its data too: each public function of the figure modules that returns a
    figure is a ``takes_data`` builder (the test above checks what that does)."""
    import importlib
    import inspect

    names = ["behavior", "bigram", "continual", "drivers", "matrix", "moe", "overlap", "series", "sets", "spectra"]
    names += ["subspaces", "updates"]
    builders = []
    for name in names:
        mod = importlib.import_module(f"subnetviz.figures.{name}")
        for fname, fn in vars(mod).items():
            fn = inspect.unwrap(fn) if callable(fn) else fn
            if inspect.isfunction(fn) and fn.__module__ == mod.__name__ and not fname.startswith("_"):
                if inspect.signature(fn).return_annotation in ("go.Figure", "Figure"):
                    builders.append((name, fname, getattr(vars(mod)[fname], "takes_data", False)))
    assert len(builders) >= 45
    assert [b for b in builders if not b[2]] == []


def test_one_matrix_update_in_bands_equals_the_whole_matrix(tmp_path):
    """The One matrix view's update, a band of rows at a time (so a 10^9-entry embedding is never held): its
    block sums, row and column counts and total equal those of the whole matrix computed at once, for every
    criterion, with bands that are not a divisor of the rows and blocks with ragged edges."""
    import torch
    from safetensors.torch import save_file

    from subnetviz.analysis.drill import matrix_update

    g = torch.Generator().manual_seed(0)
    base = torch.randn(203, 37, generator=g).to(torch.bfloat16)
    moved = torch.rand(base.shape, generator=g) < 0.3
    ft = torch.where(moved, (base.float() * (1 + 1e-2 * torch.randn(base.shape, generator=g))).to(torch.bfloat16), base)
    for name, t in (("base", base), ("ft", ft)):
        (tmp_path / name).mkdir()
        save_file({"w": t}, str(tmp_path / name / "model.safetensors"))
    x, y = base.float().numpy().astype(np.float64), ft.float().numpy().astype(np.float64)
    d = y - x
    for crit, want in {
        "exact": base.view(torch.int16).numpy() != ft.view(torch.int16).numpy(),
        "1e-3": np.abs(d) > 1e-3,
        "relative": np.abs(d) > 1e-3 * np.maximum(np.abs(x), np.abs(y)),
    }.items():
        for band in (37, 37 * 7, 10**6):  # one row, seven rows (not a multiple of the block), everything
            upd = matrix_update(str(tmp_path / "base"), str(tmp_path / "ft"), "w", crit, max_side=16, band_entries=band)
            f = upd.changed.f
            assert f == 13 and upd.n_changed == int(want.sum())  # 203 rows / 16 cells
            np.testing.assert_array_equal(upd.rows_changed, want.sum(axis=1))
            np.testing.assert_array_equal(upd.cols_changed, want.sum(axis=0))
            for i in range(0, 203, f):
                for j in range(0, 37, f):
                    assert upd.changed.sums[i // f, j // f] == want[i : i + f, j : j + f].sum()
                    assert upd.delta.sums[i // f, j // f] == pytest.approx(
                        d[i : i + f, j : j + f].sum(), rel=1e-9, abs=1e-12
                    )
    # the page's images from the bands are the images of the whole arrays
    assert F.matrix_image(upd.changed).to_json() == F.matrix_image(want, max_side=16).to_json()
    assert F.delta_image(upd.delta).to_json() == F.delta_image(d.astype(np.float32), max_side=16).to_json()


@pytest.mark.parametrize("shape", [(2, 771), (771, 2), (1, 20_000), (5, 5)])
def test_matrix_images_of_matrices_thinner_than_a_block(shape):
    """Fewer rows (columns) than a block and a ragged other side: a (2, 771) matrix failed with "cannot reshape
    array of size 0" (its block rows were inferred from no entries). Each cell is still its block's share."""
    a = np.arange(np.prod(shape)).reshape(shape) % 3 == 0
    fig = F.matrix_image(a, max_side=128)
    f = max(1, int(np.ceil(max(shape) / 128)))
    z = decode(fig.data[0].z).astype(np.float64)
    ref = np.array([[a[i : i + f, j : j + f].mean() for j in range(0, shape[1], f)] for i in range(0, shape[0], f)])
    np.testing.assert_allclose(z, 100 * ref, rtol=1e-6)
    assert F.delta_image(a.astype(np.float32), max_side=128).data[0].z.shape == ref.shape


def test_rank_heatmaps_pool_the_experts_of_an_moe_layer():
    """An MoE layer's experts are one matrix each, several per (layer, module) cell (before: refused, "one row
    per (layer, module) is expected"): the cell is their measures summed over their summed min(m, n)."""
    df = pd.DataFrame(
        {
            "layer": [0, 0, 0, 0, 1],
            "module": ["gate", "gate", "gate", "q", "gate"],
            "rows": [8, 8, 16, 16, 8],  # two routed experts (8 × 16), a shared one (16 × 16); attention's q
            "cols": [16, 16, 16, 16, 16],
            "effective_rank_99": [2, 4, 8, 4, None],  # layer 1's one gate was skipped: no cell value
            "stable_rank": [1.0, 1.0, 2.0, 2.0, None],
            "rank_frac": [0.5, 1.0, 0.25, 1.0, None],
            "baseline_rank_frac": [1.0, 1.0, 0.5, 1.0, None],
        }
    )
    tr = F.rank_measure_heatmap(df).data[0]
    z = np.asarray(tr.z, dtype=float)
    assert list(tr.x) == ["q", "gate"] and list(tr.y) == ["0", "1"]
    assert z[0, 1] == pytest.approx(100 * 14 / 32) and z[0, 0] == pytest.approx(25.0) and np.isnan(z[1, 1])
    assert "3 matrices" not in tr.hovertemplate and "matrices, summed" in tr.hovertemplate
    assert np.asarray(tr.customdata, dtype=float)[0, 1, 2] == 3
    assert F.measure_range(df, "stable_rank") == (0.0, pytest.approx(100 * 4 / 32))
    r = F.rank_heatmap(df.assign(min_dim=df[["rows", "cols"]].min(axis=1))).data[0]
    zr = np.asarray(r.z, dtype=float)
    assert zr[0, 1] == pytest.approx(100 * (4 + 8 + 4) / 32)  # Σ rank / Σ min(m, n)
    assert np.asarray(r.customdata, dtype=float)[0, 1, 2] == pytest.approx(100 * (8 + 8 + 8) / 32)  # the baseline
