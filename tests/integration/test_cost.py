"""The cost of spectra and subspaces, told before they start (subnetviz.analysis.cost): the matrices it counts
from the headers are the ones the analyses then decompose, on a dense model, a gpt-oss model saved by
transformers (packed 3-D experts, their biases, a quantized pair), a convolution kernel and an embedding over
``max_dim``; the work formula by hand; the timing only where the work is large."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from subnetviz.analysis import cost
from subnetviz.analysis.subspaces import SubspaceOptions, analyze_subspaces, subspace_keys
from subnetviz.analysis.update_pass import SpectraOptions, analyze_updates, planned_spectra
from tests.ckpt_fixtures import bf16_step, gpt_oss_model, gpt_oss_mxfp4, read_state_dict, write_folder
from tests.models import make_llama


def _changed(folder, out, seed=0, extra=None):
    """``folder``'s tensors with every weight's first entry moved one ULP (and ``extra`` added), in ``out``."""
    sd = read_state_dict(folder)
    for t in sd.values():
        if t.dtype == torch.bfloat16 and t.numel():
            t.view(-1)[:1] = bf16_step(t.view(-1)[:1], 1 + seed)
    sd.update(extra or {})
    return write_folder(out, sd, folder)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    root = tmp_path_factory.mktemp("cost-dense")
    base = make_llama(root / "base")
    sd = read_state_dict(base)
    sd = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    # a Mamba-style convolution kernel (3-D, no experts) beside the layers: no stack of matrices
    sd["model.layers.0.mixer.conv1d.weight"] = torch.randn(32, 1, 4).to(torch.bfloat16)
    write_folder(root / "base", sd, base)
    return root / "base", [_changed(root / "base", root / f"ft{i}", seed=i) for i in (0, 1)]


@pytest.fixture(scope="module")
def gptoss(tmp_path_factory):
    model_cls, cfg = gpt_oss_model(hidden=64, inter=96, experts=4, vocab=80)
    root = tmp_path_factory.mktemp("cost-gptoss")
    torch.manual_seed(0)
    model_cls(cfg).to(torch.bfloat16).save_pretrained(root / "base")
    return root / "base", _changed(root / "base", root / "ft"), gpt_oss_mxfp4(root / "mxfp4", root / "base")


def _decomposed(analysis) -> list[tuple[int, int]]:
    spec = analysis.spectra_table()
    spec = spec[~spec["skipped"].astype(bool)]
    return sorted(zip(spec["rows"].astype(int), spec["cols"].astype(int), strict=True))


@pytest.mark.parametrize("max_dim", [8192, 40])
def test_planned_spectra_are_the_matrices_the_analysis_decomposes(dense, max_dim):
    base, fts = dense
    options = SpectraOptions(baseline=False, max_dim=max_dim)
    analysis = analyze_updates(base, fts, spectra=options)
    done = _decomposed(analysis)
    assert sorted(planned_spectra(base, fts, options)) == done
    # an embedding over max_dim is left out of both; the convolution kernel is decomposed by neither
    assert all(max(s) <= max_dim for s in done) and (32, 1) not in done and (32, 4) not in done
    if max_dim == 40:
        assert len(done) < len(_decomposed(analyze_updates(base, fts, spectra=SpectraOptions(baseline=False))))


def test_planned_spectra_of_packed_experts_one_matrix_per_expert(gptoss):
    base, ft, mxfp4 = gptoss
    options = SpectraOptions(baseline=False)
    analysis = analyze_updates(base, [ft], spectra=options)
    done = _decomposed(analysis)
    planned = planned_spectra(base, [ft], options)
    assert sorted(planned) == done
    # 2 layers × 4 experts × (gate_up (64, 192) and down (96, 64)); the (E, out) biases are no matrices
    assert done.count((64, 192)) == 8 and done.count((96, 64)) == 8
    # a quantized pair's packed Δ is not split into experts: the MXFP4 side plans what the pass takes
    assert sorted(planned_spectra(base, [mxfp4], options)) == _decomposed(
        analyze_updates(base, [mxfp4], spectra=options)
    )


def test_spectra_cost_counts_the_baseline_and_prices_the_work(dense, monkeypatch):
    base, fts = dense
    shapes = planned_spectra(base, fts, SpectraOptions())
    # by hand: two decompositions (Δ and its random baseline) and the per-entry work of each matrix
    per_entry = cost.SPECTRA_ENTRY + cost.BASELINE_ENTRY
    work = sum(2 * (0.5 * max(s) * min(s) ** 2 + min(s) ** 3) + per_entry * s[0] * s[1] for s in shapes)
    monkeypatch.setattr(cost, "_rates", {})
    c = cost.spectra_cost(base, fts, SpectraOptions(), "cpu")
    assert c.matrices == 2 * len(shapes) and c.device == "cpu"
    # small work is priced at the SLOW bound and nothing is timed
    assert c.seconds == pytest.approx(work * cost.SLOW) and cost._rates == {}
    # work over the bound is timed once on the probe matrix, then priced by that rate
    monkeypatch.setattr(cost, "SMALL", 0.0)
    c2 = cost.spectra_cost(base, fts, SpectraOptions(), "cpu")
    per = cost._rates["spectra", "cpu"]
    assert 0 < per < cost.SLOW and c2.seconds == pytest.approx(work * per)
    assert cost.spectra_cost(base, fts, SpectraOptions(baseline=False), "cpu").matrices == len(shapes)
    assert cost.spectra_cost(base, fts, SpectraOptions(enabled=False), "cpu").matrices == 0


def test_subspace_keys_are_the_matrices_the_analysis_compares(dense):
    base, fts = dense
    keys = subspace_keys(base, fts)
    rows = analyze_subspaces(base, fts, labels=["a", "b"], options=SubspaceOptions(k=4)).to_frame()
    assert sorted(zip(rows["rows"], rows["cols"], strict=True)) == sorted(s for s, _ in keys for _ in range(2))
    assert all(models == 2 for _, models in keys)
    c = cost.subspaces_cost(base, fts, SubspaceOptions(k=4), "cpu")
    assert c.matrices == 3 * len(keys)  # each base matrix once, each finetuned model's once


def test_subspace_keys_of_packed_experts_one_matrix_per_expert(gptoss):
    """gpt-oss's packed (E, out) biases were priced and decomposed as matrices and its (E, in, out) experts were
    neither; now each expert is one matrix in the plan and in the analysis, MXFP4 experts (read dequantised, as
    bf16) too."""
    base, ft, mxfp4 = gptoss
    for other in (ft, mxfp4):
        keys = subspace_keys(base, [other])
        rows = analyze_subspaces(base, [other], labels=["a"], options=SubspaceOptions(k=2)).to_frame()
        assert sorted(zip(rows["rows"], rows["cols"], strict=True)) == sorted(s for s, _ in keys)
        # 2 layers × 4 experts × (gate_up (64, 192) and down (96, 64)); no bias, whatever its shape
        assert [s for s, _ in keys].count((64, 192)) == 8 and [s for s, _ in keys].count((96, 64)) == 8
        assert not rows["name"].str.contains("bias").any() and rows["name"].str.endswith("[3]").sum() == 4
        assert cost.subspaces_cost(base, [other], SubspaceOptions(k=2), "cpu").matrices == 2 * len(keys)


def test_units_and_durations_by_hand():
    assert cost.units(8, 4, (1.0, 2.0)) == 8 * 16 + 2 * 64
    assert cost.spectrum_units(8, 4, False) == 0.5 * 8 * 16 + 64 + cost.SPECTRA_ENTRY * 32
    assert cost.units(4, 8, (0.5, 1.0)) == 0.5 * 8 * 16 + 64  # the long side, whichever it is
    # svd_lowrank's 2·(4 + 1) float32 products, then the float64 refinement's 2 an iteration (counted twice), priced
    # at its 16 iterations at most
    assert cost.randomized_units(100, 50, 20, 4) == (2 * 5 + 4 * 16) * 100 * 50 * 20
    assert [cost.duration(s) for s in (0.2, 40, 89.6, 300, 5399, 5400, 3 * 3600)] == [
        "1 s",
        "40 s",
        "90 s",
        "5 min",
        "90 min",
        "1.5 h",
        "3.0 h",
    ]
    c = cost.Cost("Spectra of Δ", 1344, 1440.0, "cpu")
    assert c.text() == "Spectra of Δ: 1,344 matrix decompositions, about 24 min on this server's cpu"
    assert cost.Cost("x", 1, 1.0, "cuda:0").text() == "x: 1 matrix decomposition, about 1 s on this server's cuda:0"


def test_confirm_limit_from_the_environment(monkeypatch):
    from subnetviz.config import CONFIRM_ABOVE_S, confirm_above_seconds
    from subnetviz.errors import ConfigError

    monkeypatch.delenv("SUBNETVIZ_CONFIRM_ABOVE_S", raising=False)
    assert confirm_above_seconds() == CONFIRM_ABOVE_S == 60
    for raw, want in [("0", 0.0), (" 600 ", 600.0), ("inf", math.inf)]:
        monkeypatch.setenv("SUBNETVIZ_CONFIRM_ABOVE_S", raw)
        assert confirm_above_seconds() == want
    for raw in ["-1", "nan", "a minute"]:
        monkeypatch.setenv("SUBNETVIZ_CONFIRM_ABOVE_S", raw)
        with pytest.raises(ConfigError, match="SUBNETVIZ_CONFIRM_ABOVE_S"):
            confirm_above_seconds()


def test_an_export_leaves_out_long_work_not_computed_and_says_so(monkeypatch):
    """An export builds its closed tabs on click: what is not computed yet and over the limit is left out, with
    a line in the dashboard saying what and why (an export that looked complete would mislead)."""
    from subnetviz import ui, uilogic

    long = cost.Cost("Subspaces of W_base vs W_ft", 12, 600.0, "cpu")
    monkeypatch.setenv("SUBNETVIZ_CONFIRM_ABOVE_S", "60")
    asked = []
    estimate = lambda: asked.append(1) or long  # noqa: E731
    assert ui.heavy_note(lambda: True, estimate) is None and not asked  # computed: built, nothing estimated
    note = ui.heavy_note(lambda: False, estimate)
    assert note == (
        "Subspaces of W_base vs W_ft: 12 matrix decompositions, about 10 min on this server's cpu: not computed "
        "yet, so not in this export; open its tab to compute it."
    )
    monkeypatch.setenv("SUBNETVIZ_CONFIRM_ABOVE_S", "601")
    assert ui.heavy_note(lambda: False, estimate) is None
    page = uilogic.dashboard_html("Spectra", {"K": 16}, {}, {}, [], [], lambda: ({}, {}, [note + " <b>"]))
    assert "Parameters: K=16\nSubspaces of W_base vs W_ft: 12 matrix decompositions" in page
    assert "&lt;b&gt;" in page and " <b>" not in page
    assert "Parameters: K=16</p>" in uilogic.dashboard_html("Spectra", {"K": 16}, {}, {}, [], [], lambda: ({}, {}))


def test_an_embedding_sized_matrix_is_skipped_before_its_delta_is_formed(dense, monkeypatch):
    """The pass formed each matrix's float64 Δ and only then skipped embedding-sized ones: 1 GB for
    Qwen2.5-0.5B's embedding, 13 GB for a 7B's, in the server's process, for nothing."""
    from subnetviz.analysis import update_pass

    base, fts = dense
    formed = []
    original = update_pass._delta_of_views

    def recording(x, y, dtype):
        fn = original(x, y, dtype)

        def delta(e=None):
            d = fn(e)
            formed.append(tuple(d.shape))
            return d

        return delta

    monkeypatch.setattr(update_pass, "_delta_of_views", recording)
    analysis = analyze_updates(base, fts[:1], spectra=SpectraOptions(baseline=False, max_dim=40))
    spec = analysis.spectra_table()
    big = spec[spec["note"].str.contains("embedding-sized", na=False)]
    assert len(big) >= 2 and big["skipped"].all() and big["density"].isna().all()  # embedding and lm_head
    assert formed and all(max(s) <= 40 for s in formed)
    assert sorted(formed) == _decomposed(analysis)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A pair whose MLP is wider than 8192 (Llama-3-8B's is 14336, a 70B's 28672) and whose embedding is
    vocabulary-sized (over 65,536 rows), each with changed entries."""
    root = tmp_path_factory.mktemp("cost-wide")
    gen = torch.Generator().manual_seed(3)
    sd = {
        "model.embed_tokens.weight": torch.randn(70_000, 4, generator=gen).to(torch.bfloat16),
        "model.layers.0.mlp.down_proj.weight": torch.randn(8, 9_000, generator=gen).to(torch.bfloat16),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8, generator=gen).to(torch.bfloat16),
    }
    write_folder(root / "base", sd)
    (root / "base" / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 1}')
    return root / "base", _changed(root / "base", root / "ft")


def test_mlps_of_any_width_are_decomposed_and_vocabulary_sized_matrices_skipped(wide):
    """The default skipped every side over 8192: the MLP matrices of Llama-3-8B (the paper's Tulu-3-8B, whose
    Table 2 averages over all matrices), Qwen2.5-1.5B and every larger model were left out of the spectra."""
    base, ft = wide
    spec = analyze_updates(base, [ft], spectra=SpectraOptions(baseline=False)).spectra_table().set_index("name")
    down = spec.loc["layers.0.mlp.down_proj.weight"]
    assert not down["skipped"] and down["rank"] >= 1
    embed = spec.loc["embed_tokens.weight"]
    assert embed["skipped"] and "max_dim 65536" in embed["note"]
    assert sorted(planned_spectra(base, [ft], SpectraOptions())) == [(8, 8), (8, 9_000)]


def test_a_matrix_that_would_not_fit_in_memory_is_skipped_with_a_note(wide, monkeypatch):
    """Memory is bounded before allocation: a Δ whose spectrum needs more than the usable share of the memory
    available is not formed; it is skipped with both figures, and the rest of the analysis goes on."""
    from subnetviz import config
    from subnetviz.analysis import update_pass

    base, ft = wide
    need = update_pass.spectrum_bytes((8, 9_000), True)
    assert need == 33 * 72_000 + 8 * 64
    monkeypatch.setattr(config, "available_memory_bytes", lambda: int(need / config.MEMORY_USABLE) - 1024)
    formed = []
    original = update_pass._delta_of_views
    monkeypatch.setattr(
        update_pass,
        "_delta_of_views",
        lambda x, y, dtype: lambda e=None: formed.append(x.shape) or original(x, y, dtype)(e),
    )
    analysis = analyze_updates(base, [ft], spectra=SpectraOptions())
    spec = analysis.spectra_table().set_index("name")
    down = spec.loc["layers.0.mlp.down_proj.weight"]
    assert down["skipped"] and "needs about" in down["note"] and "of it usable" in down["note"]
    assert not spec.loc["layers.0.self_attn.q_proj.weight"]["skipped"]  # the small one still fits
    assert formed == [(8, 8)] and analysis.summary()["changed"].sum() > 0


def test_a_subspace_comparison_that_would_not_fit_in_memory_is_skipped_with_a_row_saying_so(wide, monkeypatch):
    """The subspace pass held, for a vocabulary-sized embedding, both matrices, their float32 (randomized SVD)
    copy and the principal mask's magnitudes at once (about 20 bytes per entry: 20 GB for a 70B's embedding),
    unchecked. A pair that would not fit is not read: its row says why, the others are compared."""
    from subnetviz import config
    from subnetviz.analysis.subspaces import subspace_bytes

    base, ft = wide
    options = SubspaceOptions(k=2)
    need = subspace_bytes((70_000, 4), 2, options)
    # by hand: both matrices (2 × 2 bytes), the update mask (1) and the principal magnitudes (float32, 4) per
    # entry; two float64 bands of rows (16 per entry, at most 2^24 entries); four float64 (m + n) × K bases and
    # products; on the exact path the Gram and its copy (16 · min²). Over max_dim but 4 wide: the (4, 4) Gram path.
    assert need == 70_000 * 4 * (2 * 2 + 1 + 4) + 16 * 70_000 * 4 + 32 * 2 * 70_004 + 16 * 4 * 4
    # randomized (no Gram): the float32 copy of a matrix in place of the magnitudes, K + oversample columns
    big = 70_000 * 5000
    assert subspace_bytes((70_000, 5000), 2, options) == big * 9 + 16 * 2**24 + 32 * (2 + 16) * 75_000
    assert subspace_bytes((8, 8), 2, options) == 64 * 9 + 16 * 64 + 32 * 2 * 16 + 16 * 64
    monkeypatch.setattr(config, "available_memory_bytes", lambda: int((need - 1) / config.MEMORY_USABLE))
    table = analyze_subspaces(base, [ft], labels=["ft"], options=options)
    rows = table.to_frame().set_index("name")
    embed = rows.loc["model.embed_tokens.weight"]
    assert embed["method"].startswith("skipped, needs about") and np.isnan(embed["angle_left_max"])
    assert (rows.drop("model.embed_tokens.weight")["method"] == "gram").all()
    assert rows.drop("model.embed_tokens.weight")["angle_left_max"].notna().all()
    assert len(table.vectors()) == 2 * 2 and any("skipped for lack of memory" in n for n in table.notes)
