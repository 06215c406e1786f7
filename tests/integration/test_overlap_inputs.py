"""Overlap of masks that are not alike: resized vocabularies (shapes differing in the first dimension), more
finetunes than the N-way counting takes, tensor names with and without a model prefix, masks whose densities
differ from tensor to tensor (the per-tensor chance beside the paper's global one) and masks with no entry at all.

Every number is checked against float64 NumPy on planted masks or against hand counts.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from subnetviz.analysis.overlap import MAX_MASKS, mask_overlap
from subnetviz.errors import MaskError
from subnetviz.masks import MaskSet, PackedMasks, save_mask_set
from tests.app_fixtures import decode, open_page, plotly_specs

W = "model.layers.0.mlp.up_proj.weight"
E = "model.embed_tokens.weight"


def _write(folder: Path, sd: dict[str, torch.Tensor]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "model.safetensors"))
    cfg = {"model_type": "llama", "tie_word_embeddings": False}
    if E in sd:
        cfg["vocab_size"] = int(sd[E].shape[0])
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder)


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy()


def _packed(masks: dict[str, torch.Tensor]) -> PackedMasks:
    out = PackedMasks()
    for name, t in masks.items():
        out.add(name, t)
    return out


# --- 2: shapes that differ in the first dimension (a resized vocabulary) -------------------------------------------
@pytest.fixture(scope="module")
def resized(tmp_path_factory):
    """A base of vocabulary 12; finetune A shrinks it to 10 (resized to the tokenizer), B keeps 12."""
    root = tmp_path_factory.mktemp("resized")
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(8, 8, generator=g).to(torch.bfloat16)
    e0 = torch.randn(12, 8, generator=g).to(torch.bfloat16)
    wa, ea = w0.clone(), e0[:10].clone()
    wa[0] += 1
    ea[0] += 1
    ea[3, :5] += 1
    wb, eb = w0.clone(), e0.clone()
    wb[:, 0] += 1
    eb[0, :4] += 1
    eb[3, 2:] += 1
    eb[11] += 1  # a changed row past A's vocabulary: not compared
    paths = [_write(root / n, {W: w, E: e}) for n, w, e in (("base", w0, e0), ("a", wa, ea), ("b", wb, eb))]
    masks = {
        "A": {W: _bits(wa) != _bits(w0), E: _bits(ea) != _bits(e0)[:10]},
        "B": {W: _bits(wb) != _bits(w0), E: _bits(eb) != _bits(e0)},
    }
    return root, paths, masks


def test_a_resized_vocabulary_compares_the_shared_rows_in_the_update_analysis(resized):
    """The whole analysis failed ("mask 'B' has shape (12, 8) but mask 'A' has (10, 8)"); now the embedding is
    compared over its 10 shared rows, and the notes say which tensor and how many entries were not."""
    from subnetviz.analysis.updates import analyze_updates

    _, (base, a, b), masks = resized
    an = analyze_updates(base, [a, b], labels=["A", "B"], spectra=None, device="cpu")
    assert len(an.reports) == 2 and an.overlap is not None
    ma, mb = masks["A"], masks["B"]
    inter = int((ma[W] & mb[W]).sum() + (ma[E] & mb[E][:10]).sum())  # hand count over the shared rows
    row = an.overlap.pairwise.iloc[0]
    assert (row["count_a"], row["count_b"]) == (int(ma[W].sum() + ma[E].sum()), int(mb[W].sum() + mb[E][:10].sum()))
    assert (row["numel"], row["intersection"]) == (64 + 80, inter)
    said = [n for n in an.notes if n.startswith("Overlap of the update masks") and E in n]
    assert said and "first 10 rows" in said[0] and "B: 16" in said[0], an.notes


def test_a_cluster_merge_of_a_resized_vocabulary_says_what_the_local_analysis_says(resized):
    """On a cluster the per-pair analyses are merged (merge_analyses): its overlap and its notes are the local
    analysis's (the shared-rows note was dropped there)."""
    from subnetviz.analysis.sparsity import SparsityOptions
    from subnetviz.analysis.updates import analyze_updates
    from subnetviz.jobs.fanout import merge_analyses, pair_analysis

    _, (base, a, b), _ = resized
    local = analyze_updates(base, [a, b], labels=["A", "B"], spectra=None, device="cpu")
    options = SparsityOptions()
    parts = [pair_analysis(base, f, lab, options, None, "cpu") for f, lab in ((a, "A"), (b, "B"))]
    merged = merge_analyses(base, parts, options)
    overlap_notes = [n for n in local.notes if n.startswith("Overlap of the update masks")]
    assert overlap_notes and [n for n in merged.notes if n.startswith("Overlap of the update masks")] == overlap_notes
    assert merged.overlap.pairwise.equals(local.overlap.pairwise)


def test_the_cli_analyzes_a_resized_vocabulary(resized, monkeypatch):
    from subnetviz.__main__ import main

    root, (base, a, b), masks = resized
    monkeypatch.setenv("SUBNETVIZ_HOME", str(root / "home"))
    assert main(["analyze", base, a, b, "--out", str(root / "out"), "--no-spectra"]) == 0
    pair = pd.read_csv(root / "out" / "overlap_pairwise.csv").iloc[0]
    ma, mb = masks["A"], masks["B"]
    assert pair["intersection"] == int((ma[W] & mb[W]).sum() + (ma[E] & mb[E][:10]).sum())


@pytest.mark.parametrize("n_masks", [2, 3, 9])  # 8-bit codes (dense rows), 16-bit codes (compact groups)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("jit", ["1", "0"])
def test_shared_leading_rows_against_numpy(n_masks, packed, jit, monkeypatch):
    """Rows 5..7 of a (·, 3) tensor: prefixes of 15..21 entries end inside a packed byte (bits past them cleared);
    every mask's tensor is compared over the fewest rows, counted as NumPy counts the leading rows."""
    monkeypatch.setenv("SUBNETVIZ_JIT", jit)
    rng = np.random.default_rng(n_masks)
    rows = [5 + k % 3 for k in range(n_masks)]
    sets = [{"emb": rng.random((r, 3)) < 0.5, "w": rng.random((13, 11)) < rng.choice([0.1, 0.6])} for r in rows]
    given = [{k: torch.from_numpy(v) for k, v in s.items()} for s in sets]
    given = [_packed(s) for s in given] if packed else given
    labels = [f"m{k}" for k in range(n_masks)]
    rep = mask_overlap(given, labels)
    flat = np.stack([np.concatenate([s["emb"][:5].reshape(-1), s["w"].reshape(-1)]) for s in sets])
    codes = (flat.astype(np.int64) << np.arange(n_masks)[:, None]).sum(0)
    np.testing.assert_array_equal(rep.totals, np.bincount(codes, minlength=2**n_masks))
    np.testing.assert_array_equal(rep.sizes["count"], flat.sum(1))
    for (i, j), r in zip(itertools.combinations(range(n_masks), 2), rep.pairwise.itertuples(), strict=True):
        assert r.intersection == int((flat[i] & flat[j]).sum())
    assert rep.numel == 15 + 143
    (note,) = rep.notes
    extra = ", ".join(f"m{k}: {3 * (r - 5)}" for k, r in enumerate(rows) if r > 5)
    assert "emb" in note and "first 5 rows, 15 entries" in note and extra in note


def test_other_shape_differences_raise_or_are_left_out():
    a = {"q": torch.ones(4, 2, dtype=torch.bool), "k": torch.ones(3, 3, dtype=torch.bool)}
    b = {"q": torch.ones(2, 4, dtype=torch.bool), "k": torch.eye(3, dtype=torch.bool)}
    with pytest.raises(MaskError, match=r"'q'.*\(2, 4\)"):
        mask_overlap([a, b], ["a", "b"])
    rep = mask_overlap([a, b], ["a", "b"], other_shapes="skip")
    assert rep.numel == 9 and rep.pairwise["intersection"].item() == 3 and rep.tensor_names == ("k",)
    (note,) = rep.notes
    assert "Left out" in note and "q (a: (4, 2), b: (2, 4))" in note and "a: 8, b: 8" in note
    with pytest.raises(MaskError, match="no tensor left"):
        mask_overlap([{"q": a["q"]}, {"q": b["q"]}], ["a", "b"], other_shapes="skip")


def test_mask_files_of_a_resized_vocabulary_overlap_on_the_shared_rows(tmp_path):
    """A Δ mask of a resized finetune beside an uploaded mask of the full vocabulary (Overlap page)."""
    from subnetviz.jobs.cluster_pages import files_overlap_task

    g = torch.Generator().manual_seed(0)
    ma = {W: torch.rand(8, 8, generator=g) < 0.3, E: torch.rand(10, 8, generator=g) < 0.3}
    mb = {W: torch.rand(8, 8, generator=g) < 0.3, E: torch.rand(12, 8, generator=g) < 0.3}
    a = save_mask_set(tmp_path / "delta.safetensors", MaskSet(ma))
    b = save_mask_set(tmp_path / "upload.safetensors", MaskSet(mb))
    ov = files_overlap_task([str(a), str(b)], ["Δ resized ft", "upload"])
    assert ov.common == 2 and ov.report is not None
    inter = int((ma[W] & mb[W]).sum() + (ma[E] & mb[E][:10]).sum())
    assert ov.report.pairwise["intersection"].item() == inter and ov.report.numel == 64 + 80
    assert any(E in n and "upload: 16" in n for n in ov.notes), ov.notes


# --- 3: more finetunes than the N-way counting takes --------------------------------------------------------------
@pytest.fixture(scope="module")
def many(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    w0 = torch.randn(4, 5, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    base = _write(root / "base", {W: w0})
    fts = []
    for i in range(MAX_MASKS + 1):
        w = w0.clone()
        w.view(-1)[i] += 1
        fts.append(_write(root / f"ft{i:02d}", {W: w}))
    return root, base, fts


def test_more_finetunes_than_the_n_way_counting_keep_their_reports(many):
    from subnetviz.analysis.updates import analyze_updates

    _, base, fts = many
    an = analyze_updates(base, fts, spectra=None, device="cpu")
    assert len(an.reports) == MAX_MASKS + 1 and an.overlap is None
    assert [int(r.tensors["changed"].sum()) for r in an.reports] == [1] * (MAX_MASKS + 1)
    said = [n for n in an.notes if n.startswith("Overlap of the update masks: not computed")]
    assert said and f"{MAX_MASKS + 1} models" in said[0] and f"at most {MAX_MASKS}" in said[0]


def test_a_cluster_merge_of_more_finetunes_than_the_n_way_counting_keeps_its_reports(many):
    """The Ray fan-out merges the per-pair reports' masks (merge_overlap): past MAX_MASKS it raised, and the whole
    analysis on a cluster failed; now no overlap, as the local analysis has none, and up to it the same overlap."""
    from subnetviz.analysis.sparsity import SparsityOptions
    from subnetviz.jobs.fanout import merge_overlap, pair_report

    _, base, fts = many
    reports = [pair_report(base, f, f"ft{i}", SparsityOptions()) for i, f in enumerate(fts)]
    assert merge_overlap(base, reports) is None
    some = merge_overlap(base, reports[:3])
    assert some is not None and some.pairwise["intersection"].eq(0).all()


def test_the_overlap_page_of_seventeen_finetunes(many, monkeypatch, typed_options):
    """The page ran the update analysis of every finetune and failed with it; now it compares 2–8 of the saved
    masks and says how many there are."""
    root, base, fts = many
    home = root / "apphome"
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", f"{home}:{root}")
    at = open_page("overlap", base=base, ft=fts, ov_tab="Pairwise")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [c.value for c in at.caption if f"{MAX_MASKS + 1} masks to choose from" in c.value]
    table = next(d.value for d in at.dataframe if "o1_chance_global_paper" in d.value.columns)
    assert len(table) == 3  # the first three masks, three pairs: each changed a different entry
    assert (table["intersection"] == 0).all()


# --- 6: tensor names with and without the model's prefix -------------------------------------------------------------
@pytest.mark.parametrize(
    ("prefixed", "bare"),
    [
        ("model.layers.{}.mlp.up_proj.weight", "layers.{}.mlp.up_proj.weight"),
        ("transformer.h.{}.mlp.c_fc.weight", "h.{}.mlp.c_fc.weight"),
    ],
)
@pytest.mark.parametrize("prefixed_first", [True, False])
def test_mask_files_match_names_without_their_prefix(tmp_path, prefixed, bare, prefixed_first):
    from subnetviz.jobs.cluster_pages import files_overlap_task

    g = torch.Generator().manual_seed(0)
    ma = [torch.rand(8, 8, generator=g) < 0.3 for _ in range(2)]
    mb = [torch.rand(8, 8, generator=g) < 0.5 for _ in range(2)]
    delta = save_mask_set(tmp_path / "delta.safetensors", MaskSet({prefixed.format(i): m for i, m in enumerate(ma)}))
    upload = save_mask_set(tmp_path / "upload.safetensors", MaskSet({bare.format(i): m for i, m in enumerate(mb)}))
    paths, labels = [str(delta), str(upload)], ["Δ ft", "upload"]
    if not prefixed_first:
        paths, labels = paths[::-1], labels[::-1]
    ov = files_overlap_task(paths, labels)
    assert ov.common == 2 and not ov.partial and ov.report is not None
    inter = sum(int((x & y).sum()) for x, y in zip(ma, mb, strict=True))
    assert ov.report.pairwise["intersection"].item() == inter
    assert ov.report.tensor_names == (prefixed.format(0), prefixed.format(1))  # named as the checkpoint names them
    assert any("without the model prefix" in n for n in ov.notes)
    assert [g[0] for g in ov.report.consensus["group"].drop_duplicates()] == [0, 1]  # grouped by layer


# --- 7: the per-tensor (stratified) chance beside the paper's global one -----------------------------------------
def _planted_densities(n_masks: int, seed: int):
    rng = np.random.default_rng(seed)
    shapes = {
        "layers.0.mlp.up_proj.weight": (40, 50),
        "layers.0.mlp.up_proj.bias": (40,),
        "embed_tokens.weight": (300, 7),
    }
    dens = {"layers.0.mlp.up_proj.weight": 0.9, "layers.0.mlp.up_proj.bias": 0.5, "embed_tokens.weight": 0.02}
    return [{n: rng.random(s) < dens[n] * (0.6 + 0.1 * k) for n, s in shapes.items()} for k in range(n_masks)]


def test_per_tensor_chance_against_numpy_and_the_papers_global_chance_kept():
    sets = _planted_densities(3, seed=7)
    labels = ["a", "b", "c"]

    def group_of(name):  # weight and bias of the MLP in one group
        return name.rsplit(".", 1)[0]

    rep = mask_overlap([{k: torch.from_numpy(v) for k, v in s.items()} for s in sets], labels, group_of=group_of)
    names = list(sets[0])
    n_t = np.array([sets[0][n].size for n in names], dtype=np.float64)
    c = np.array([[s[n].sum() for s in sets] for n in names], dtype=np.float64)  # (T, N)
    flat = np.stack([np.concatenate([s[n].reshape(-1) for n in names]) for s in sets])
    n, size = flat.shape[1], flat.sum(1).astype(np.float64)
    by_tensor = rep.sizes_by_tensor()  # each mask's size per tensor, behind the per-tensor chance
    np.testing.assert_array_equal(by_tensor["count"].to_numpy().reshape(len(names), 3), c)
    assert list(by_tensor["name"][::3]) == names and list(by_tensor["numel"][::3]) == list(n_t)
    for r in rep.pairwise.itertuples():
        i, j = labels.index(r.a), labels.index(r.b)
        e = float(np.sum(c[:, i] * c[:, j] / n_t))
        inter = float((flat[i] & flat[j]).sum())
        assert r.expected_intersection_per_tensor == pytest.approx(e, rel=1e-13)
        assert r.o1_chance_per_tensor == pytest.approx(e / size[i], rel=1e-13)
        assert r.o2_chance_per_tensor == pytest.approx(e / size[j], rel=1e-13)
        assert r.jaccard_chance_per_tensor == pytest.approx(e / (size[i] + size[j] - e), rel=1e-13)
        assert r.ratio_over_chance_per_tensor == pytest.approx(inter / e, rel=1e-13)
        # the paper's global chance (App. E), unchanged
        p, q = size[i] / n, size[j] / n
        assert r.o1_chance == pytest.approx(q, rel=1e-14) and r.o2_chance == pytest.approx(p, rel=1e-14)
        assert r.jaccard_chance == pytest.approx(p * q / (p + q - p * q), rel=1e-13)
        assert r.ratio_over_chance == pytest.approx(inter / (n * p * q), rel=1e-13)
        assert r.expected_intersection == pytest.approx(n * p * q, rel=1e-13)
    # per group: the sums over the group's own tensors
    mlp = [k for k, nm in enumerate(names) if nm.startswith("layers.0.mlp")]
    row = rep.by_group[(rep.by_group["group"] == "layers.0.mlp.up_proj") & (rep.by_group["a"] == "a")]
    row = row[row["b"] == "c"].iloc[0]
    e = float(np.sum(c[mlp, 0] * c[mlp, 2] / n_t[mlp]))
    assert row["expected_intersection_per_tensor"] == pytest.approx(e, rel=1e-13)
    assert row["jaccard_chance_per_tensor"] == pytest.approx(e / (c[mlp, 0].sum() + c[mlp, 2].sum() - e), rel=1e-13)
    # consensus: the Poisson-binomial count per tensor by enumeration, summed; and the global one
    want_t, want_g = np.zeros(4), np.zeros(4)
    dens = size / n
    for bits in itertools.product([0, 1], repeat=3):
        k = sum(bits)
        for t in range(len(names)):
            p_t = c[t] / n_t[t]
            want_t[k] += n_t[t] * np.prod([pt if b else 1 - pt for pt, b in zip(p_t, bits, strict=True)])
        want_g[k] += n * np.prod([pt if b else 1 - pt for pt, b in zip(dens, bits, strict=True)])
    ch = rep.consensus_chance()
    np.testing.assert_allclose(ch["expected_per_tensor"], want_t, rtol=1e-12)
    np.testing.assert_allclose(ch["expected_global"], want_g, rtol=1e-12)


def test_independent_masks_within_each_tensor_read_one_times_the_per_tensor_chance():
    """The reviewer's case: two masks drawn independently within each tensor (densities 0.9 and 0.01) read ×1.96
    against the global chance; against the per-tensor chance they read ×1."""
    rng = np.random.default_rng(0)
    dens = {W: 0.9, E: 0.01}
    a, b = ({k: torch.from_numpy(rng.random(200_000) < p) for k, p in dens.items()} for _ in range(2))
    row = mask_overlap([a, b], ["A", "B"]).pairwise.iloc[0]
    assert row["ratio_over_chance_per_tensor"] == pytest.approx(1.0, abs=0.01)
    assert row["ratio_over_chance"] == pytest.approx(1.96, abs=0.03)  # the paper's global chance, kept
    assert row["o1"] == pytest.approx(row["o1_chance_per_tensor"], rel=0.01)
    assert row["jaccard"] == pytest.approx(row["jaccard_chance_per_tensor"], rel=0.01)


def test_overlap_figures_colour_by_the_per_tensor_chance_and_say_so():
    from subnetviz import figures

    sets = [{k: torch.from_numpy(v) for k, v in s.items()} for s in _planted_densities(3, seed=3)]
    rep = mask_overlap(sets, ["a", "b", "c"], group_of=lambda n: (0, n.split(".")[-2]))
    pw = rep.pairwise
    fig = figures.pairwise_matrix(pw, value="o1", view="ratio", labels=["a", "b", "c"])
    tr = fig.data[0]
    r = pw.iloc[0]  # (a, b): row a, column b, and its mirror o2
    assert tr.customdata[0, 1, 2] == pytest.approx(r["o1"] / r["o1_chance_per_tensor"], rel=1e-12)
    assert tr.customdata[1, 0, 2] == pytest.approx(r["o2"] / r["o2_chance_per_tensor"], rel=1e-12)
    assert tr.customdata[0, 1, 4] == pytest.approx(r["o1"] / r["o1_chance"], rel=1e-12)  # the paper's, in the hover
    assert tr.z[0, 1] == pytest.approx(np.log2(r["ratio_over_chance_per_tensor"]), rel=1e-9)
    assert "per-tensor chance" in tr.hovertemplate and "paper" in tr.hovertemplate
    assert tr.colorbar.title.text == "× per-tensor<br>chance" and "per-tensor chance" in fig.layout.title.text
    heat = rep.by_group[(rep.by_group["a"] == "a") & (rep.by_group["b"] == "b")]
    heat = heat.assign(layer=0, module=heat["group"].map(lambda g: g[1]))
    h = figures.overlap_layer_heatmap(heat, view="ratio").data[0]
    assert "per-tensor chance" in h.hovertemplate and h.colorbar.title.text == "Jaccard ×<br>per-tensor<br>chance"
    want = heat.set_index("module")
    for col, module in enumerate(h.x):
        ratio = want.loc[module, "jaccard"] / want.loc[module, "jaccard_chance_per_tensor"]
        assert h.customdata[0][col][2] == pytest.approx(ratio, rel=1e-12)
    bars = figures.consensus_bars(rep.consensus_overall(), chance=rep.consensus_chance())
    (marks,) = [t for t in bars.data if t.type == "scatter"]
    assert marks.name.startswith("per-tensor chance") and "per-tensor chance" in marks.hovertemplate
    np.testing.assert_allclose(marks.y, rep.consensus_chance()["expected_per_tensor"][1:], rtol=1e-12)
    glob = figures.consensus_bars(
        rep.consensus_overall(), chance=figures.chance_consensus(rep.sizes["density"], rep.numel)
    )
    assert [t for t in glob.data if t.type == "scatter"][0].name.startswith("global chance")


# --- the page: labels and tables of both chances, empty masks -------------------------------------------------------
@pytest.fixture
def upload_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "uploads").mkdir(parents=True)
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(home))
    return home


def _upload(home: Path, sets: list[dict]) -> list[str]:
    names = []
    for k, s in enumerate(sets):
        save_mask_set(home / "uploads" / f"m{k}.safetensors", MaskSet({n: torch.as_tensor(v) for n, v in s.items()}))
        names.append(f"uploads/m{k}")
    return names


def test_the_overlap_page_names_each_chance(upload_home):
    sets = _planted_densities(3, seed=5)
    chosen = _upload(upload_home, sets)
    at = open_page("overlap", masks=chosen, ov_masks=chosen, ov_tab="Pairwise")
    at.radio(key="ov_view").set_value("ratio").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    titles = [s["layout"]["title"]["text"] for s in plotly_specs(at)]
    assert len(titles) == 2 and all("× per-tensor chance" in t for t in titles), titles
    table = next(d.value for d in at.dataframe if "o1_chance_global_paper" in d.value.columns)
    assert {"o1_chance_per_tensor", "ratio_over_chance_per_tensor", "ratio_over_chance_global_paper"} <= set(table)
    assert "o1_chance" not in table.columns  # no chance column left unnamed
    names = list(sets[0])
    c = np.array([[s[n].sum() for s in sets] for n in names], dtype=np.float64)
    n_t = np.array([sets[0][n].size for n in names], dtype=np.float64)
    e = float(np.sum(c[:, 0] * c[:, 1] / n_t))
    first = table.iloc[0]
    assert first["expected_intersection_per_tensor"] == pytest.approx(e, rel=1e-12)
    # shown in % (the download holds the fraction)
    assert first["o1_chance_global_paper"] == pytest.approx(100 * c[:, 1].sum() / n_t.sum(), rel=1e-12)
    assert any("Per-tensor chance" in cap.value and "App. E" in cap.value for cap in at.caption)
    cons = open_page("overlap", masks=chosen, ov_masks=chosen, ov_tab="Consensus")
    (chart,) = plotly_specs(cons)
    assert "per-tensor chance" in chart["layout"]["title"]["text"]
    marks = [t for t in chart["data"] if t["type"] == "scatter"]
    assert marks[0]["name"].startswith("per-tensor chance")
    table = next(d.value for d in cons.dataframe if "expected_count_per_tensor" in d.value.columns)
    assert {"expected_count_global", "ratio_over_chance_per_tensor", "ratio_over_chance_global"} <= set(table)
    np.testing.assert_allclose(decode(marks[0]["y"]), table["expected_count_per_tensor"].iloc[1:], rtol=1e-12)


def test_empty_masks_on_the_sets_tab_say_so_instead_of_a_venn(upload_home):
    """Two masks with no entry: venn2 raised (VennInputError) and the page lost its tabs and export button."""
    from subnetviz import figures

    empty = {W: np.zeros((4, 4), dtype=bool)}
    chosen = _upload(upload_home, [empty, empty])
    at = open_page("overlap", masks=chosen, ov_masks=chosen, ov_tab="Sets")
    assert not at.exception and not at.error, [e.value for e in at.exception]
    assert [c.value for c in at.caption if "No mask has any entry" in c.value]
    titles = [s["layout"]["title"]["text"] for s in plotly_specs(at)]
    assert titles == ["Intersections of masks (UpSet)"]  # the UpSet alone, saying every intersection is empty
    assert [t.label for t in at.tabs] == ["Sets", "Pairwise", "Per layer", "Consensus"]
    assert [b for b in at.get("download_button") if "Export" in b.label]
    fig = figures.venn3([0] * 7, ["a", "b", "c"])  # the builder too: a figure that says so, no exception
    assert "no mask has any entry" in fig.layout.annotations[0].text


def test_a_link_naming_more_masks_than_the_page_compares_says_so(many, monkeypatch, typed_options):
    """A link naming all seventeen masks was cut to the first eight without a word (another comparison than the
    sender's page could show); now one line says how many the link names and which are compared."""
    from tests.app.test_behser7_fixes_app import _warnings
    from views.overlap import MAX_CHOSEN

    root, base, fts = many
    home = root / "apphome"
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", f"{home}:{root}")
    at = open_page("overlap", base=base, ft=fts, ov_tab="Pairwise")
    (picker,) = [m for m in at.multiselect if m.key == "ov_masks"]
    every = list(picker.options)
    assert len(every) == MAX_MASKS + 1
    at = open_page("overlap", base=base, ft=fts, ov_tab="Pairwise", ov_masks=every)
    assert not at.exception and not at.error, [e.value for e in at.error]
    line = f"The link names {MAX_MASKS + 1} masks; the first {MAX_CHOSEN} are compared, at most {MAX_CHOSEN} at a time."
    assert _warnings(at).count(line) == 1, _warnings(at)
    (picker,) = [m for m in at.multiselect if m.key == "ov_masks"]
    assert list(picker.value) == every[:MAX_CHOSEN]
    table = next(d.value for d in at.dataframe if "o1_chance_global_paper" in d.value.columns)
    assert len(table) == MAX_CHOSEN * (MAX_CHOSEN - 1) // 2  # every pair of the eight compared
    at = open_page("overlap", base=base, ft=fts, ov_tab="Pairwise", ov_masks=every[:MAX_CHOSEN])
    assert not [w for w in _warnings(at) if w.startswith("The link names")]  # eight named: nothing to say
