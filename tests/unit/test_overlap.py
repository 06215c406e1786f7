"""Mask overlap: planted intersections with exact counts, every number against a float64 NumPy
reference on random masks, N = 8 and N = 10 UpSet regions against brute force, the invariants
(regions sum to the union, o1·|I1| = o2·|I2|, groups sum to totals) and the error paths."""

import collections
import itertools

import numpy as np
import pytest
import torch

from subnetviz.analysis.overlap import mask_overlap
from subnetviz.errors import ConfigError, MaskError
from subnetviz.masks import MaskSet

SHAPES = {"layers.0.q": (12, 10), "layers.0.k": (6, 10), "layers.1.q": (12, 10), "layers.1.norm": (10,)}


def _planted(region_counts: dict[int, int], shapes: dict[str, tuple], n_masks: int, seed: int) -> list[dict]:
    """Masks whose membership codes have exactly ``region_counts[code]`` entries (rest: code 0)."""
    total = sum(int(np.prod(s)) for s in shapes.values())
    codes = np.concatenate([np.full(c, code) for code, c in region_counts.items()] + [np.zeros(0, int)])
    codes = np.concatenate([codes, np.zeros(total - codes.size, int)])
    np.random.default_rng(seed).shuffle(codes)
    sets = [{} for _ in range(n_masks)]
    offset = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        block = codes[offset : offset + size].reshape(shape)
        offset += size
        for k in range(n_masks):
            sets[k][name] = torch.from_numpy((block >> k) & 1 == 1)
    return sets


def _random_sets(n_masks: int, densities, seed: int, shapes=SHAPES) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{name: torch.rand(shape, generator=g) < p for name, shape in shapes.items()} for p in densities]


def _flat(sets) -> np.ndarray:
    """(N, n) bool: the NumPy reference view (concatenation in name order)."""
    return np.stack([np.concatenate([s[name].numpy().reshape(-1) for name in s]) for s in sets])


def test_planted_two_masks_exact_numbers():
    # |only 1| = 20, |only 2| = 5, |both| = 10 among n = 310 parameters
    sets = _planted({1: 20, 2: 5, 3: 10}, SHAPES, 2, seed=0)
    rep = mask_overlap(sets, ["seed42", "seed123"])
    venn = rep.venn_regions()
    assert list(venn["region"]) == ["10", "01", "11"]
    assert list(venn["count"]) == [20, 5, 10]
    assert list(venn["members"]) == [("seed42",), ("seed123",), ("seed42", "seed123")]
    row = rep.pairwise.iloc[0]
    n = 310
    assert (row["a"], row["b"], row["count_a"], row["count_b"], row["numel"]) == ("seed42", "seed123", 30, 15, n)
    assert (row["intersection"], row["union"]) == (10, 35)
    assert row["o1"] == 10 / 30 and row["o2"] == 10 / 15
    assert row["o1_chance"] == 15 / n and row["o2_chance"] == 30 / n
    assert row["jaccard"] == pytest.approx(10 / 35, rel=1e-15)
    p, q = 30 / n, 15 / n
    assert row["jaccard_chance"] == pytest.approx(p * q / (p + q - p * q), rel=1e-15)
    assert row["ratio_over_chance"] == pytest.approx(10 * n / (30 * 15), rel=1e-15)
    assert list(rep.sizes["count"]) == [30, 15] and list(rep.sizes["density"]) == [30 / n, 15 / n]
    overall = rep.consensus_overall()
    assert list(overall["count"]) == [n - 35, 25, 10]


def test_planted_three_masks_venn_order():
    planted = {1: 3, 2: 5, 3: 7, 4: 11, 5: 13, 6: 17, 7: 19}
    rep = mask_overlap(_planted(planted, SHAPES, 3, seed=1), ["a", "b", "c"])
    venn = rep.venn_regions()
    assert list(venn["region"]) == ["100", "010", "110", "001", "101", "011", "111"]
    assert list(venn["count"]) == [3, 5, 7, 11, 13, 17, 19]
    assert venn.loc[venn["region"] == "101", "members"].item() == ("a", "c")
    assert rep.union == sum(planted.values())


def test_every_number_against_numpy_reference():
    densities = [0.1, 0.35, 0.6, 0.35]
    sets = _random_sets(4, densities, seed=2)
    labels = ["r0", "r1", "r2", "r3"]
    rep = mask_overlap(sets, labels)
    flat = _flat(sets)
    n = flat.shape[1]
    np.testing.assert_array_equal(rep.sizes["count"], flat.sum(axis=1))
    np.testing.assert_array_equal(rep.sizes["density"], flat.sum(axis=1) / n)
    assert len(rep.pairwise) == 6
    for _, row in rep.pairwise.iterrows():
        a, b = flat[labels.index(row["a"])], flat[labels.index(row["b"])]
        inter, union = float(np.sum(a & b)), float(np.sum(a | b))
        p, q = a.sum() / n, b.sum() / n
        assert row["intersection"] == inter and row["union"] == union
        assert row["o1"] == pytest.approx(inter / a.sum(), rel=1e-14)
        assert row["o2"] == pytest.approx(inter / b.sum(), rel=1e-14)
        assert row["o1_chance"] == pytest.approx(q, rel=1e-14) and row["o2_chance"] == pytest.approx(p, rel=1e-14)
        assert row["jaccard"] == pytest.approx(inter / union, rel=1e-14)
        assert row["jaccard_chance"] == pytest.approx(p * q / (p + q - p * q), rel=1e-14)
        assert row["ratio_over_chance"] == pytest.approx(inter / (n * p * q), rel=1e-12)
    hist = np.bincount(flat.sum(axis=0), minlength=5)
    np.testing.assert_array_equal(rep.consensus_overall()["count"], hist)
    # per group (default: each tensor), against the same reference restricted to the tensor
    for name in SHAPES:
        sub = np.stack([s[name].numpy().reshape(-1) for s in sets])
        got = rep.consensus[rep.consensus["group"] == name]
        np.testing.assert_array_equal(got["count"], np.bincount(sub.sum(axis=0), minlength=5))
        g = rep.by_group[(rep.by_group["group"] == name) & (rep.by_group["a"] == "r1") & (rep.by_group["b"] == "r2")]
        assert g["intersection"].item() == int(np.sum(sub[1] & sub[2]))


def _brute_force_regions(flat: np.ndarray) -> dict[int, int]:
    n_masks = flat.shape[0]
    out = {}
    for code in range(1, 2**n_masks):
        inside = [(code >> k) & 1 == 1 for k in range(n_masks)]
        exact = np.ones(flat.shape[1], bool)
        for k in range(n_masks):
            exact &= flat[k] if inside[k] else ~flat[k]
        out[code] = int(exact.sum())
    return out


@pytest.mark.parametrize("n_masks", [8, 10])
def test_upset_regions_against_brute_force(n_masks):
    shapes = {"w1": (40, 30), "w2": (25,), "w3": (7, 9, 2)}
    sets = _random_sets(n_masks, np.linspace(0.2, 0.8, n_masks), seed=n_masks, shapes=shapes)
    labels = [f"run{k}" for k in range(n_masks)]
    rep = mask_overlap(sets, labels)
    flat = _flat(sets)
    expected = _brute_force_regions(flat)
    assert len(rep.regions) == 2**n_masks - 1
    for code, members, degree, count in rep.regions[["code", "members", "degree", "count"]].itertuples(index=False):
        assert count == expected[code]
        assert members == tuple(lbl for k, lbl in enumerate(labels) if (code >> k) & 1)
        assert degree == len(members)


@pytest.mark.parametrize("jit", ["1", "0"])  # the compiled histograms, torch.bincount
@pytest.mark.parametrize("n_masks", [1, 2, 3, 5, 8, 9, 16])  # 8-bit codes of 8..1 parameters, 16-bit codes
def test_bit_packed_masks_give_the_bool_masks_regions(n_masks, jit, monkeypatch):
    """Masks held bit-packed (as analyze_updates holds them, counted on the packed bits) give exactly
    the regions of the same masks as bool tensors, and those of the brute force."""
    from subnetviz.masks import PackedMasks

    monkeypatch.setenv("SUBNETVIZ_JIT", jit)

    shapes = {"w1": (13, 11), "w2": (5,), "w3": (3, 4, 5), "w4": (40, 26)}  # 8-byte words and ragged tails
    sets = _random_sets(n_masks, np.linspace(0.1, 0.9, n_masks), seed=100 + n_masks, shapes=shapes)
    packed = []
    for m in sets:
        pm = PackedMasks()
        for name, t in m.items():
            pm.add(name, t)
        packed.append(pm)
    plain, bitwise = mask_overlap(sets), mask_overlap(packed)
    np.testing.assert_array_equal(plain.totals, bitwise.totals)
    mixed = mask_overlap([p if k % 2 else m for k, (m, p) in enumerate(zip(sets, packed, strict=True))])
    np.testing.assert_array_equal(plain.totals, mixed.totals)  # padded unpacked bits beside bool views
    import subnetviz.analysis.overlap_counts as overlap_module

    monkeypatch.setattr(overlap_module, "CHUNK", 16)  # blocks of 64 parameters (one word), the last one partial
    for blocked in (mask_overlap(sets), mask_overlap(packed), mask_overlap([packed[0], *sets[1:]])):
        for name, region in plain.region_counts.items():
            np.testing.assert_array_equal(blocked.region_counts[name], region)
    flat = _flat(sets)  # each parameter's membership tuple, counted one by one
    expected = collections.Counter(sum(int(v) << k for k, v in enumerate(col)) for col in flat.T)
    assert {c: int(n) for c, n in enumerate(plain.totals) if n} == dict(expected)
    with pytest.raises(MaskError, match="shape"):
        bad = PackedMasks()
        for name, t in sets[-1].items():
            bad.add(name, t.reshape(-1) if name == "w1" else t)
        mask_overlap([packed[0], bad])


def test_a_filtered_view_of_packed_masks_keeps_its_filter():
    """analyze_updates passes a Mapping view (names common to every finetune) over PackedMasks,
    holding the unfiltered masks in ``.masks``: the view's names are the ones compared."""
    from collections.abc import Mapping

    from subnetviz.masks import PackedMasks

    class View(Mapping):
        def __init__(self, masks, keep):
            self.masks, self.names = masks, [n for n in masks if n in keep]

        def __getitem__(self, name):
            return self.masks[name]

        def __iter__(self):
            return iter(self.names)

        def __len__(self):
            return len(self.names)

    a, b = PackedMasks(), PackedMasks()
    a.add("w", torch.tensor([True, False, True]))
    b.add("w", torch.tensor([True, True, False]))
    a.add("only_in_a", torch.ones(4, dtype=torch.bool))
    rep = mask_overlap([View(a, {"w"}), View(b, {"w"})], ["a", "b"])
    assert rep.numel == 3 and rep.totals.tolist() == [0, 1, 1, 1]


def test_invariants():
    sets = _random_sets(5, [0.05, 0.2, 0.5, 0.5, 0.9], seed=3)
    rep = mask_overlap(sets)
    flat = _flat(sets)
    # regions sum to the union
    assert rep.regions["count"].sum() == rep.union == int(flat.any(axis=0).sum())
    # o1·|I1| = o2·|I2| = |I1 ∩ I2|
    pw = rep.pairwise
    np.testing.assert_allclose(pw["o1"] * pw["count_a"], pw["o2"] * pw["count_b"], rtol=1e-14)
    np.testing.assert_allclose(pw["o1"] * pw["count_a"], pw["intersection"], rtol=1e-14)
    # each size is the sum of the regions that contain it
    for k, label in enumerate(rep.labels):
        inside = rep.regions["members"].apply(lambda m, lbl=label: lbl in m)
        assert rep.regions.loc[inside, "count"].sum() == rep.sizes.loc[k, "count"]
    # consensus: Σ_k k·count = Σ sizes, Σ_k count = n
    overall = rep.consensus_overall()
    assert (overall["k"] * overall["count"]).sum() == rep.sizes["count"].sum()
    assert overall["count"].sum() == rep.numel == flat.shape[1]
    # per-group numbers sum to the totals
    summed = rep.by_group.groupby(["a", "b"], sort=False)[["intersection", "union", "count_a", "numel"]].sum()
    total = rep.pairwise.set_index(["a", "b"])[["intersection", "union", "count_a", "numel"]]
    assert summed.equals(total)


def test_group_of_layer_module():
    sets = _random_sets(3, [0.3, 0.4, 0.5], seed=4)

    def group_of(name):
        parts = name.split(".")
        return int(parts[1]), parts[2]

    rep = mask_overlap([MaskSet(s) for s in sets], ["x", "y", "z"], group_of=group_of)
    groups = set(rep.consensus["group"])
    assert groups == {(0, "q"), (0, "k"), (1, "q"), (1, "norm")}
    q0 = rep.consensus[rep.consensus["group"] == (0, "q")]
    assert q0["count"].sum() == 120
    sizes = rep.sizes_by_group()
    got = sizes[(sizes["group"] == (1, "q")) & (sizes["label"] == "y")]
    assert got["count"].item() == int(sets[1]["layers.1.q"].sum()) and got["numel"].item() == 120
    assert got["density"].item() == got["count"].item() / 120
    np.testing.assert_array_equal(sizes.groupby("label", sort=False)["count"].sum(), rep.sizes["count"])
    # same numbers as grouping by name when groups are one tensor each
    by_name = mask_overlap(sets, ["x", "y", "z"])
    assert by_name.regions.equals(rep.regions) and by_name.pairwise.equals(rep.pairwise)

    merged = mask_overlap(sets, ["x", "y", "z"], group_of=lambda name: name.split(".")[2])  # q of both layers
    got = merged.by_group[(merged.by_group["group"] == "q") & (merged.by_group["a"] == "x")]
    want = by_name.by_group[
        by_name.by_group["group"].isin(["layers.0.q", "layers.1.q"]) & (by_name.by_group["a"] == "x")
    ]
    np.testing.assert_array_equal(got["intersection"], want.groupby("b", sort=False)["intersection"].sum())


def test_chance_baselines_for_independent_masks():
    g = torch.Generator().manual_seed(5)
    shape = (1000, 1000)
    rep = mask_overlap([{"w": torch.rand(shape, generator=g) < p} for p in (0.3, 0.6)])
    row = rep.pairwise.iloc[0]
    # independent masks: overlap equals chance up to sampling noise (sd ~ 1e-3 at n = 1e6)
    assert row["o1"] == pytest.approx(row["o1_chance"], abs=5e-3)
    assert row["o2"] == pytest.approx(row["o2_chance"], abs=5e-3)
    assert row["jaccard"] == pytest.approx(row["jaccard_chance"], abs=5e-3)
    assert row["ratio_over_chance"] == pytest.approx(1.0, abs=1e-2)
    same = mask_overlap([{"w": torch.rand(shape, generator=g) < 0.3}] * 2)
    assert same.pairwise.loc[0, "jaccard"] == 1.0 and same.pairwise.loc[0, "ratio_over_chance"] > 3


def test_empty_masks_give_nan_ratios_not_errors():
    rep = mask_overlap([{"w": torch.zeros(4, 4, dtype=torch.bool)}, {"w": torch.ones(4, 4, dtype=torch.bool)}])
    row = rep.pairwise.iloc[0]
    assert np.isnan(row["o1"]) and row["o2"] == 0.0 and row["jaccard"] == 0.0
    single = mask_overlap([{"w": torch.ones(3, dtype=torch.bool)}], ["only"])
    assert single.pairwise.empty and list(single.regions["count"]) == [3]


def test_bad_input_raises():
    a = {"layers.0.q": torch.zeros(4, 4, dtype=torch.bool), "layers.0.k": torch.zeros(4, 2, dtype=torch.bool)}
    renamed = {"layers.0.q": a["layers.0.q"], "layers.0.kk": a["layers.0.k"]}
    with pytest.raises(MaskError, match=r"layers\.0\.kk"):
        mask_overlap([a, renamed])
    with pytest.raises(MaskError, match=r"lacks tensor 'layers\.0\.k'"):
        mask_overlap([a, {"layers.0.q": a["layers.0.q"]}])
    with pytest.raises(MaskError, match=r"layers\.0\.k.*\(2, 4\)"):
        mask_overlap([a, {**a, "layers.0.k": torch.zeros(2, 4, dtype=torch.bool)}])
    with pytest.raises(MaskError, match="torch.bool"):
        mask_overlap([a, {**a, "layers.0.k": torch.zeros(4, 2)}])
    with pytest.raises(ConfigError, match="labels"):
        mask_overlap([a, a], ["only one"])
    with pytest.raises(ConfigError, match="unique"):
        mask_overlap([a, a], ["x", "x"])
    with pytest.raises(ConfigError, match="between 1 and"):
        mask_overlap([])
    with pytest.raises(ConfigError, match="Venn"):
        mask_overlap([a] * 4).venn_regions()
    with pytest.raises(MaskError, match="mapping"):
        mask_overlap([a, [1, 2]])
    with pytest.raises(MaskError, match="no tensors"):
        mask_overlap([{}, {}])


def test_pairs_cover_all_combinations_in_label_order():
    rep = mask_overlap(_random_sets(4, [0.5] * 4, seed=6), ["d", "c", "b", "a"])
    assert list(zip(rep.pairwise["a"], rep.pairwise["b"], strict=True)) == list(itertools.combinations("dcba", 2))


@pytest.mark.parametrize("n_masks", [9, 12, 16])
def test_split_reduction_matches_the_direct_products(n_masks):
    """Above 8 masks the sizes, pair intersections and exactly-k counts come from the codes split
    into low and high bits; they equal the products over every code, and the brute-force sums."""
    from subnetviz.analysis import overlap as ov

    rng = np.random.default_rng(n_masks)
    region = rng.integers(0, 1000, (5, 2**n_masks)).astype(np.int64)
    sizes, inter, degree = ov._reduce(region, n_masks)
    codes = np.arange(2**n_masks)
    bit = [(codes >> k) & 1 for k in range(n_masks)]
    assert sizes.tolist() == [[int(r[bit[k] == 1].sum()) for k in range(n_masks)] for r in region]
    ia, ib = np.triu_indices(n_masks, 1)
    assert inter.tolist() == [
        [int(r[(bit[a] & bit[b]) == 1].sum()) for a, b in zip(ia, ib, strict=True)] for r in region
    ]
    ones = np.sum(bit, axis=0)
    assert degree.tolist() == [[int(r[ones == k].sum()) for k in range(n_masks + 1)] for r in region]


@pytest.mark.parametrize("n_masks", [3, 12])
def test_reduction_is_exact_in_float32_float64_and_int64(n_masks):
    """A chunk of groups is reduced in float32 when every group there has fewer than 2**24 parameters,
    in float64 below 2**53 and in int64 beyond (chosen by the groups' parameters): the same numbers."""
    from subnetviz.analysis import overlap as ov

    region = np.random.default_rng(n_masks).integers(0, 100, (300, 2**n_masks)).astype(np.int64)
    got = {
        numel: ov._reduce(region, n_masks, None if numel is None else np.full(300, numel))
        for numel in (None, 2**24, 2**53)
    }
    for numel in (2**24, 2**53):
        for a, b in zip(got[None], got[numel], strict=True):
            assert a.dtype == b.dtype == np.int64 and a.tolist() == b.tolist(), numel
    assert got[None][0].tolist() == (region @ ov._membership(n_masks)).tolist()
    big = np.random.default_rng(0).integers(2**21, 2**22, (300, 2**n_masks)) | 1  # groups of > 2**24: float64
    assert ov._reduce(big, n_masks)[0].tolist() == (big @ ov._membership(n_masks)).tolist()


def test_mask_files_place_an_mtp_module_after_the_last_layer():
    """Mask files carry no config.json: a Qwen3.5 release's MTP module (mtp.layers.0.*) is the layer after the
    last one its names count, in the per-layer and the per-expert overlap (before: layer None, so it left
    the per-layer heatmap and its experts formed a row "—")."""
    import torch

    from subnetviz.jobs.cluster_pages import sets_overlap
    from subnetviz.masks import MaskSet

    names = [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.experts.0.up_proj.weight",
        "mtp.layers.0.self_attn.q_proj.weight",
        "mtp.layers.0.mlp.experts.0.up_proj.weight",
    ]
    a = MaskSet({n: torch.ones(2, 4, dtype=torch.bool) for n in names})
    b = MaskSet({n: torch.zeros(2, 4, dtype=torch.bool) for n in names})
    got = sets_overlap([a, b], ["a", "b"])
    layers = {g[0] for g in got.report.region_counts}
    assert layers == {0, 1, 2}
    assert {g for g in got.experts.region_counts} == {(1, "E0"), (2, "E0")}
    assert got.mtp_layers == (2,)  # and the Overlap page's per-layer heatmaps label it
    from subnetviz import figures

    by = got.report.by_group
    one = by.assign(layer=by["group"].map(lambda g: g[0]), module=by["group"].map(lambda g: g[1]))
    fig = figures.overlap_layer_heatmap(one.assign(mtp=one["layer"].isin(got.mtp_layers)))
    assert list(fig.layout.yaxis.ticktext) == ["0", "1", "2 · MTP"]


def test_the_expert_overlap_leaves_routers_out_names_and_orders_experts_as_the_sparsity_page():
    """The layer × expert view took the shared expert's router (shared_expert_gate) into the shared expert's
    cell (Jaccard 0.167 for identical shared-expert changes), labelled it 'Eshared' and ordered E10 before E2;
    tensors holding every expert of a layer (packed) were left out with no word."""
    from subnetviz import figures
    from subnetviz.jobs.cluster_pages import sets_overlap
    from subnetviz.masks import MaskSet

    p = "model.layers.0.mlp."
    shapes = {
        p + "experts.2.up_proj.weight": (4, 6),
        p + "experts.10.gate_proj.weight": (4, 6),
        p + "shared_expert.up_proj.weight": (4, 6),
        p + "shared_expert_gate.weight": (1, 6),
        p + "gate.weight": (12, 6),
    }

    def masks(**on):
        out = {k: torch.zeros(s, dtype=torch.bool) for k, s in shapes.items()}
        for k, idx in on.items():
            out[p + k].view(-1)[idx] = True
        return MaskSet(out, {})

    one = masks(**{"shared_expert.up_proj.weight": [0, 1, 2, 3], "shared_expert_gate.weight": [0, 1, 2, 3, 4]})
    two = masks(
        **{
            "shared_expert.up_proj.weight": [0, 1, 2, 3],
            "experts.2.up_proj.weight": [5],
            "experts.10.gate_proj.weight": [1],
        }
    )
    fo = sets_overlap([one, two], ["a", "b"])
    by = fo.experts.by_group
    cell = {g[1]: j for g, j in zip(by["group"], by["jaccard"], strict=True)}
    assert cell["shared"] == 1.0 and "Eshared" not in cell and fo.packed_experts == 0
    grid = by.assign(layer=by["group"].map(lambda g: g[0]), module=by["group"].map(lambda g: g[1]))
    fig = figures.overlap_layer_heatmap(grid[(grid["a"] == "a") & (grid["b"] == "b")])
    assert list(fig.data[0].x) == ["E2", "E10", "shared"]
    packed = {"model.layers.0.mlp.experts.gate_up_proj": torch.zeros(4, 6, 8, dtype=torch.bool)}
    fo = sets_overlap([MaskSet(packed, {}), MaskSet(packed, {})], ["a", "b"])
    assert fo.experts is None and fo.packed_experts == 1
