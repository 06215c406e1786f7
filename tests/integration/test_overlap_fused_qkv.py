"""The per-layer overlap splits a fused QKV into q, k and v as the Update sparsity page does.

GPT-2's ``c_attn`` (Conv1D, q, k and v in thirds of its columns), Phi-3's ``qkv_proj`` and Falcon's grouped
``query_key_value`` (rows), with update masks planted part by part (q changed in one mask, k in both, ...): every
(layer, part) cell's counts, Jaccard, o1, o2, per-tensor chance and consensus are checked against float64 NumPy on
the parts cut by hand from the layouts transformers gives them. A layout no config tells stays whole as ``qkv``,
with the naming table's note.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subnetviz.analysis.overlap import mask_overlap, overlap_by_layer_module
from subnetviz.checkpoints.naming import NameTable
from subnetviz.masks import PackedMasks
from tests.models import tiny_model

H = 16  # hidden size of the tiny models (4 heads of 4)
LABELS = ["a", "b", "c"]


def _gpt2_shapes() -> dict[str, tuple[int, ...]]:
    sd = tiny_model("gpt2", hidden=H, layers=2, heads=4).state_dict()
    return {n: tuple(t.shape) for n, t in sd.items() if t.dtype.is_floating_point}


def _plant(shapes: dict, parts: dict, dens: dict, seed: int) -> list[dict[str, np.ndarray]]:
    """Three masks, 10 % random everywhere, except in the fused tensors: ``parts[name]`` gives each part's
    entries (a bool array of the tensor's shape) and ``dens[part]`` each mask's density there."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(3):
        masks = {n: rng.random(s) < 0.1 for n, s in shapes.items()}
        for name, where in parts.items():
            m = np.zeros(shapes[name], bool)
            for part, sel in where.items():
                m[sel] = rng.random(int(sel.sum())) < dens[part][k]
            masks[name] = m
        out.append(masks)
    return out


# a: q and k, b: k and v (k in both), c: q and v; every mask differs in density from part to part
DENS = {"q": (0.6, 0.0, 0.3), "k": (0.5, 0.5, 0.0), "v": (0.0, 0.3, 0.2)}


def _thirds(shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """GPT-2's Conv1D c_attn, stored (in, out): q, k, v are the thirds of its last dimension."""
    d = shape[-1] // 3
    cols = np.arange(shape[-1])
    return {p: np.broadcast_to(cols // d == i, shape).copy() for i, p in enumerate("qkv")}


def _cells(sets, members: dict) -> dict:
    """NumPy: per cell (layer, part), its entries of each mask over the strata (tensor, selection) it holds."""
    out = {}
    for cell, strata in members.items():
        flat = [np.concatenate([s[n][sel] for n, sel in strata]) for s in sets]
        counts = [[int(s[n][sel].sum()) for s in sets] for n, sel in strata]
        sizes = [int(sel.sum()) for _, sel in strata]
        out[cell] = (flat, counts, sizes)
    return out


def _check_cells(rep, want: dict) -> None:
    for cell, (flat, counts, sizes) in want.items():
        rows = rep.by_group[rep.by_group["group"] == cell]
        assert len(rows) == 3, (cell, sorted(set(rep.by_group["group"]), key=str))
        for r in rows.itertuples():
            i, j = LABELS.index(r.a), LABELS.index(r.b)
            a, b = flat[i], flat[j]
            inter, ca, cb = int((a & b).sum()), int(a.sum()), int(b.sum())
            assert (r.count_a, r.count_b, r.intersection, r.union, r.numel) == (
                ca,
                cb,
                inter,
                int((a | b).sum()),
                a.size,
            )
            e = sum(c[i] * c[j] / n for c, n in zip(counts, sizes, strict=True))
            assert r.expected_intersection_per_tensor == pytest.approx(e, rel=1e-13, abs=1e-300)
            if ca and cb:
                assert r.o1 == pytest.approx(inter / ca, rel=1e-14) and r.o2 == pytest.approx(inter / cb, rel=1e-14)
                assert r.jaccard == pytest.approx(inter / (ca + cb - inter), rel=1e-14)
                assert r.jaccard_chance_per_tensor == pytest.approx(e / (ca + cb - e), rel=1e-13)
        k = np.sum(flat, axis=0)
        got = rep.consensus[rep.consensus["group"] == cell]["count"].to_numpy()
        np.testing.assert_array_equal(got, np.bincount(k, minlength=4))


def _gpt2_cells(shapes, split_bias: bool) -> dict:
    members = {}
    for layer in range(2):
        w, b = f"transformer.h.{layer}.attn.c_attn.weight", f"transformer.h.{layer}.attn.c_attn.bias"
        for part in "qkv":
            members[(layer, part)] = [(w, _thirds(shapes[w])[part])] + (
                [(b, _thirds(shapes[b])[part])] if split_bias else []
            )
        if not split_bias:
            members[(layer, "qkv")] = [(b, np.ones(shapes[b], bool))]
    return members


@pytest.fixture(scope="module")
def gpt2():
    shapes = _gpt2_shapes()
    fused = {n: _thirds(s) for n, s in shapes.items() if ".c_attn." in n}
    return shapes, _plant(shapes, fused, DENS, seed=3)


@pytest.mark.parametrize("packed", [False, True], ids=["bool", "bit-packed"])
def test_gpt2_c_attn_cells_without_a_config_are_numpys(gpt2, packed):
    """Mask files carry no config.json: the weight, shaped (H, 3H), is split by its thirds; the bias stays whole
    as qkv, and the note says so as the Update sparsity page does."""
    shapes, sets = gpt2
    table = NameTable.from_config({}, sorted(shapes))
    tensors = [{n: torch.from_numpy(v) for n, v in s.items()} for s in sets]
    if packed:
        tensors = [_packed(s) for s in tensors]
    rep = overlap_by_layer_module(tensors, LABELS, table)
    _check_cells(rep, _cells(sets, _gpt2_cells(shapes, split_bias=False)))
    modules = {g[1] for g in rep.by_group["group"]}
    assert {"q", "k", "v", "qkv"} <= modules
    assert any("c_attn is split into q, k and v only where the weight is shaped (H, 3H)" in n for n in rep.notes)
    # the split moves entries between groups only: the overall numbers are those of the whole tensors
    plain = mask_overlap(tensors, LABELS, group_of=lambda n: (table.describe(n).layer, table.describe(n).module))
    np.testing.assert_array_equal(rep.totals, plain.totals)
    assert rep.pairwise.equals(plain.pairwise) and rep.tensor_names == plain.tensor_names
    np.testing.assert_array_equal(rep.tensor_counts, plain.tensor_counts)
    np.testing.assert_allclose(
        rep.consensus_chance()["expected_per_tensor"], plain.consensus_chance()["expected_per_tensor"]
    )
    assert rep.by_group.groupby(["a", "b"])["intersection"].sum().tolist() == rep.pairwise["intersection"].tolist()


def test_gpt2_with_its_config_splits_the_bias_too(gpt2):
    shapes, sets = gpt2
    table = NameTable.from_config({"model_type": "gpt2", "n_head": 4, "n_embd": H}, sorted(shapes))
    rep = overlap_by_layer_module([{n: torch.from_numpy(v) for n, v in s.items()} for s in sets], LABELS, table)
    _check_cells(rep, _cells(sets, _gpt2_cells(shapes, split_bias=True)))
    assert "qkv" not in {g[1] for g in rep.by_group["group"]} and not rep.notes


def test_more_than_eight_masks_split_alike():
    """Above 8 masks the groups keep compact counts (another path): q's cell is still NumPy's."""
    shapes = _gpt2_shapes()
    rng = np.random.default_rng(11)
    w = "transformer.h.1.attn.c_attn.weight"
    sets = [{n: rng.random(s) < 0.05 * (1 + k % 4) for n, s in shapes.items()} for k in range(9)]
    labels = [f"m{k}" for k in range(9)]
    table = NameTable.from_config({}, sorted(shapes))
    rep = overlap_by_layer_module(
        [_packed({n: torch.from_numpy(v) for n, v in s.items()}) for s in sets], labels, table
    )
    q = _thirds(shapes[w])["q"]
    row = rep.by_group[(rep.by_group["group"] == (1, "q")) & (rep.by_group["a"] == "m2") & (rep.by_group["b"] == "m7")]
    assert row["intersection"].item() == int((sets[2][w][q] & sets[7][w][q]).sum())
    k = np.sum([s[w][q] for s in sets], axis=0)
    got = rep.consensus[rep.consensus["group"] == (1, "q")]["count"].to_numpy()
    np.testing.assert_array_equal(got, np.bincount(k, minlength=10))


# --- Phi-3's qkv_proj and Falcon's grouped query_key_value: rows ----------------------------------------------------
PHI3 = {
    "model.layers.0.self_attn.qkv_proj.weight": (32, H),  # q: 4 heads of 4 rows, k and v: 2 KV heads of 4
    "model.layers.0.self_attn.o_proj.weight": (H, H),
    "model.layers.0.mlp.gate_up_proj.weight": (64, H),
    "model.layers.0.mlp.down_proj.weight": (H, 32),
}
PHI3_CONFIG = {"model_type": "phi3", "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": H}


def _rows(shape, bounds: dict) -> dict[str, np.ndarray]:
    rows = np.arange(shape[0])[:, None]
    return {p: np.broadcast_to((rows >= lo) & (rows < hi), shape).copy() for p, (lo, hi) in bounds.items()}


def test_phi3_qkv_proj_with_its_config_is_split_by_rows():
    qkv = "model.layers.0.self_attn.qkv_proj.weight"
    parts = _rows(PHI3[qkv], {"q": (0, 16), "k": (16, 24), "v": (24, 32)})
    sets = _plant(PHI3, {qkv: parts}, DENS, seed=5)
    table = NameTable.from_config(PHI3_CONFIG, list(PHI3))
    rep = overlap_by_layer_module([{n: torch.from_numpy(v) for n, v in s.items()} for s in sets], LABELS, table)
    _check_cells(rep, _cells(sets, {(0, p): [(qkv, sel)] for p, sel in parts.items()}))
    gu = "model.layers.0.mlp.gate_up_proj.weight"  # its gate and up halves, as the Sparsity page's grid has them
    halves = _rows(PHI3[gu], {"gate": (0, 32), "up": (32, 64)})
    _check_cells(rep, _cells(sets, {(0, p): [(gu, sel)] for p, sel in halves.items()}))
    assert not rep.notes


def test_phi3_qkv_proj_without_head_counts_stays_whole_and_says_so():
    sets = _plant(PHI3, {}, DENS, seed=6)
    table = NameTable.from_config({}, list(PHI3))  # mask files: no config.json, no head counts
    rep = overlap_by_layer_module([{n: torch.from_numpy(v) for n, v in s.items()} for s in sets], LABELS, table)
    qkv = "model.layers.0.self_attn.qkv_proj.weight"
    _check_cells(rep, _cells(sets, {(0, "qkv"): [(qkv, np.ones(PHI3[qkv], bool))]}))
    assert not {"q", "k", "v"} & {g[1] for g in rep.by_group["group"]}
    (note,) = rep.notes
    assert "counted whole as qkv in 1 layer(s)" in note and "head counts" in note


FALCON = {
    "transformer.h.0.self_attention.query_key_value.weight": (32, H),  # 4 heads, 2 KV heads, head_dim 4
    "transformer.h.0.self_attention.dense.weight": (H, H),
    "transformer.h.0.mlp.dense_h_to_4h.weight": (64, H),
    "transformer.h.0.mlp.dense_4h_to_h.weight": (H, 64),
}


def _falcon_grouped(shape, heads=4, kv=2, hd=4) -> dict[str, np.ndarray]:
    """new_decoder_architecture (FalconAttention._split_heads): per KV group, heads/kv query heads, then one key
    head and one value head, each head_dim rows."""
    per = heads // kv + 2
    part = np.empty(shape[0], object)
    for g in range(kv):
        for s in range(per):
            part[(g * per + s) * hd : (g * per + s + 1) * hd] = "q" if s < per - 2 else "k" if s == per - 2 else "v"
    return {p: np.broadcast_to((part == p)[:, None], shape).copy() for p in "qkv"}


def test_falcon_grouped_query_key_value_is_split_per_kv_group():
    qkv = "transformer.h.0.self_attention.query_key_value.weight"
    parts = _falcon_grouped(FALCON[qkv])
    sets = _plant(FALCON, {qkv: parts}, DENS, seed=8)
    config = {"model_type": "falcon", "num_attention_heads": 4, "num_kv_heads": 2, "new_decoder_architecture": True}
    table = NameTable.from_config(config, list(FALCON))
    rep = overlap_by_layer_module([{n: torch.from_numpy(v) for n, v in s.items()} for s in sets], LABELS, table)
    _check_cells(rep, _cells(sets, {(0, p): [(qkv, sel)] for p, sel in parts.items()}))


def test_falcon_without_a_layout_stays_whole_with_the_sparsity_pages_note():
    sets = _plant(FALCON, {}, DENS, seed=9)
    table = NameTable.from_config({}, list(FALCON))  # chosen by the names: no config tells the layout
    rep = overlap_by_layer_module([{n: torch.from_numpy(v) for n, v in s.items()} for s in sets], LABELS, table)
    qkv = "transformer.h.0.self_attention.query_key_value.weight"
    _check_cells(rep, _cells(sets, {(0, "qkv"): [(qkv, np.ones(FALCON[qkv], bool))]}))
    assert table.notice in rep.notes and "query_key_value is not split into q, k and v" in table.notice


def _packed(masks: dict[str, torch.Tensor]) -> PackedMasks:
    out = PackedMasks()
    for name, t in masks.items():
        out.add(name, t)
    return out
