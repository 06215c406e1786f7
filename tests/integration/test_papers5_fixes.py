"""Fifth review of the Bigram page (papers5): a model with finite weights whose float32 forward pass overflows to
NaN logits is refused in one line (it crashed in numpy's eigvals with LinAlgError, "This is a bug" on the page), the
residual-stream functions refuse NaN or Inf with a NonFiniteError, never a LinAlgError or a silent NaN, and the
values an empty mask leaves undefined (first-layer MLP share, overlap × chance, share inside the optimal mask) read
as a dash with why, on the page's headline and in its Overlap table and export, not "nan×", "0.00 %" or "None"."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from bigram_fixtures import V, planted_transition

from subnetviz.bigram.maskable import full_mask
from subnetviz.errors import NonFiniteError
from subnetviz.masks import MaskSet, save_mask_set
from tests.app_fixtures import open_page, plotly_specs
from tests.models import bigram_model

SCALE = 1e25  # q_proj and k_proj times this: every weight finite (< 3.4e38), the attention scores inf, then NaN


def _overflowing(model):
    """``model`` with layer 0's query and key projections scaled so that its float32 attention scores overflow."""
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        attn.q_proj.weight.mul_(SCALE)
        attn.k_proj.weight.mul_(SCALE)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())  # (the premise: finite weights)
    return model


def _table_and_corpus():
    from subnetviz.bigram.stats import table_from_transition

    table = table_from_transition(planted_transition(), np.arange(V))
    return table, table.sample(20, 16, seed=0)


def _random_mask(model, density: float, seed: int) -> MaskSet:
    g = torch.Generator().manual_seed(seed)
    return MaskSet({n: torch.rand(m.shape, generator=g) < density for n, m in full_mask(model).masks.items()}, {})


@pytest.fixture
def overflow_zoo(tmp_path, monkeypatch):
    """A home whose zoo holds the planted chain's bigram.npz, a saved tiny Llama whose logits overflow to NaN from
    finite weights, and a mask file that fits it."""
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    from subnetviz.config import zoo_dir

    zoo_dir().mkdir(parents=True, exist_ok=True)
    np.savez(zoo_dir() / "bigram.npz", transition=planted_transition(), token_ids=np.arange(V))
    model = _overflowing(bigram_model("llama"))
    model.save_pretrained(tmp_path / "model")
    save_mask_set(tmp_path / "mask.safetensors", _random_mask(model, 0.3, 0))
    return tmp_path / "model", tmp_path / "mask.safetensors"


def _one_line_about(err, folder) -> None:
    said = str(err.value)
    assert "\n" not in said and said.startswith(f"{folder}: its logits are NaN or infinite"), said
    assert "from finite weights" in said and "sequence 0, position 0" in said, said
    assert "layer 1 of 2 (0 = the embeddings)" in said, said  # layer 0's attention overflowed


# --- 1. NaN logits from finite weights ------------------------------------------------------------------------------
def test_the_page_s_analysis_refuses_nan_logits_in_one_line(overflow_zoo, tmp_path):
    """Before: numpy.linalg.LinAlgError from residual.rotation_angles_deg (no SubnetvizError: "This is a bug")."""
    from subnetviz.jobs.cluster_pages import cached_mask_analysis

    folder, mask = overflow_zoo
    with pytest.raises(NonFiniteError) as err:  # what views/bigram.py::_analysis calls, no cluster
        cached_mask_analysis(str(folder), str(mask), address="", cache_root=tmp_path / "cache")
    _one_line_about(err, folder)
    assert not list((tmp_path / "cache").rglob("headline.json"))  # nothing cached


def test_the_mask_job_on_that_model_fails_with_one_line(overflow_zoo, tmp_path, capsys):
    """The command line's path (the ``job`` worker of a bigram_mask run): failed, one line, no traceback, no mask."""
    from tests.integration.test_bigram_review_fixes import failed_mask_job

    folder, _ = overflow_zoo
    run_dir, error = failed_mask_job(folder, tmp_path, steps=3)
    assert "NaN/Inf logits" in error
    assert not list(run_dir.rglob("mask.safetensors")) and "Traceback" not in capsys.readouterr().out


def test_analyse_subnetwork_names_the_checkpoint_it_is_given():
    from subnetviz.bigram.evaluate import analyse_subnetwork, evaluate_subnetwork

    model = _overflowing(bigram_model("llama"))
    table, corpus = _table_and_corpus()
    with pytest.raises(NonFiniteError) as err:
        analyse_subnetwork(model, full_mask(model, True), table, corpus, seeds=(0,), where="zoo/base")
    _one_line_about(err, "zoo/base")
    # called without a checkpoint to name, the evaluation keeps its NaN (no number in its place), as before
    s = evaluate_subnetwork(model, full_mask(model, True), table, corpus, seeds=()).summary().set_index("setting")
    assert np.isnan(s.loc["full", "r_mean"]) and np.isnan(s.loc["full", "bits_mean"])


def test_a_nan_weight_is_named_as_the_cause():
    from subnetviz.bigram.evaluate import score_tokens

    model = bigram_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    table, corpus = _table_and_corpus()
    with pytest.raises(NonFiniteError, match=r"the weight model\.layers\.1\.mlp\.down_proj\.weight holds NaN") as e:
        score_tokens(model, corpus, table, who="m")
    assert "layer 2 of 2" in str(e.value)


def test_the_residual_stream_refuses_nan_activations_naming_the_stream_and_layer():
    """Before: LinAlgError ("Array must not contain infs or NaNs") from np.linalg.eigvals."""
    from subnetviz.bigram.residual import analyse_residual_stream

    model = _overflowing(bigram_model("llama"))
    _, corpus = _table_and_corpus()
    with pytest.raises(NonFiniteError) as err:
        analyse_residual_stream(model, corpus, {"full": None}, max_tokens=64, where="zoo/base")
    said = str(err.value)
    assert said.startswith("zoo/base, the residual stream of the full model: NaN or Inf activations from layer 1 of")
    assert "\n" not in said


@pytest.mark.parametrize("where", [0, 1, 2])
def test_residual_functions_raise_nonfinite_not_linalg_or_nan(where):
    """Each public function of the residual stream, fed NaN: a NonFiniteError (eigvals and eigh raised LinAlgError,
    the ridge solve returned NaN)."""
    from subnetviz.bigram import residual as r

    rng = np.random.default_rng(0)
    layers = [rng.normal(size=(40, 6)) for _ in range(3)]
    layers[where][5, 2] = np.nan
    stats = r.ResidualStats.from_arrays(rng.normal(size=(40, 6)), layers)
    for call in (r.rotation_profile, r.covariance_matrices, r.covariance_similarity):
        with pytest.raises(NonFiniteError, match=rf"from layer {where} of 2 on \(0 = the embeddings\)"):
            call(stats)
    with pytest.raises(NonFiniteError):
        r.ridge_map(layers[where], layers[0])
    coef = np.eye(6)
    coef[1, 3] = np.inf
    for call in (r.rotation_angles_deg, r.median_rotation_deg):
        with pytest.raises(NonFiniteError, match="the ridge map holds NaN or Inf"):
            call(coef)
    assert r.median_rotation_deg(np.eye(6)) == 0.0  # (a finite map still has its angles)


def test_generations_refuse_nan_logits():
    """Before: torch.multinomial's RuntimeError ("probability tensor contains either inf, nan or element < 0")."""
    from subnetviz.bigram.evaluate import generate

    model = _overflowing(bigram_model("llama"))
    with pytest.raises(NonFiniteError, match="m: NaN or infinite logits at generated token 1 \\(seed 0\\)"):
        generate(model, torch.tensor([1, 2, 3]), n_new=3, who="m")


# --- 2. Empty masks -------------------------------------------------------------------------------------------------
def test_an_empty_mask_leaves_its_shares_and_x_chance_undefined_with_why():
    """Before: first_mlp_share (and mlp_share) 0.0 for a subnetwork of no weight, ×chance NaN with nothing said."""
    from subnetviz.bigram.evaluate import analyse_subnetwork

    model = bigram_model("llama")
    table, corpus = _table_and_corpus()
    some = _random_mask(model, 0.3, 1)
    opts = {"seeds": (0,), "residual_tokens": None, "overlap_draws": 20}
    res = analyse_subnetwork(model, full_mask(model, False), table, corpus, optimal=some, **opts)
    h = res.headline
    assert np.isnan(h["first_mlp_share"]) and np.isnan(h["mlp_share"]) and np.isnan(h["overlap_x_chance"])
    assert h["why_no_share"] == "the bigram mask is empty" and h["why_no_x_chance"] == "the bigram mask is empty"
    frame = res.overlap.explained_frame()
    assert list(frame["x_chance"]) == list(frame["share_of_0_in_1"]) == ["— (the bigram mask is empty)"] * 2
    assert frame["overlap"].tolist() == [0.0, 0.0]  # the numbers that are defined stay numbers

    res = analyse_subnetwork(model, some, table, corpus, optimal=full_mask(model, False), **opts)
    h = res.headline
    assert h["why_no_x_chance"] == "the optimal mask is empty" and "why_no_share" not in h
    assert 0 < h["first_mlp_share"] <= 1
    frame = res.overlap.explained_frame()
    assert list(frame["x_chance"]) == ["— (the optimal mask is empty)"] * 2
    assert frame["share_of_0_in_1"].tolist() == [0.0, 0.0]  # C0 is not empty: its share inside C1 is 0, a number

    res = analyse_subnetwork(model, some, table, corpus, optimal=_random_mask(model, 0.5, 2), **opts)
    assert "why_no_x_chance" not in res.headline and res.overlap.why_undefined() is None
    assert res.overlap.explained_frame().equals(res.overlap.to_frame())


def test_masks_in_no_common_block_have_no_chance_level():
    from subnetviz.bigram.locate import compare_subnetworks
    from subnetviz.bigram.maskable import blocks_of

    model = bigram_model("llama")
    a, b = full_mask(model, False), full_mask(model, False)
    a.masks["model.layers.0.mlp.up_proj.weight"][:] = True
    b.masks["model.layers.1.mlp.up_proj.weight"][:] = True
    rep = compare_subnetworks(a, b, blocks_of(model), draws=10)
    assert np.isnan(rep.ratio_uniform) and rep.why_undefined() == "no overlap found and none expected by chance"
    assert rep.explained_frame()["x_chance"].tolist() == ["— (no overlap found and none expected by chance)"] * 2


# --- the page ---------------------------------------------------------------------------------------------------------
EMPTY, SOME = "uploads/papers5-empty", "uploads/papers5-some"


@pytest.fixture(scope="module")
def planted(app_env):
    """An empty mask and a random one of the zoo's base (uploads), and a copy of the base whose logits overflow;
    removed afterwards (the home is shared)."""
    from subnetviz.bigram.maskable import load_local_model

    base = app_env / "zoo" / "base"
    model = load_local_model(base)
    save_mask_set(app_env / f"{EMPTY}.safetensors", MaskSet(full_mask(model, False).masks, {"target": "bigram"}))
    save_mask_set(app_env / f"{SOME}.safetensors", MaskSet(_random_mask(model, 0.2, 3).masks, {"target": "optimal"}))
    folder = app_env / "papers5" / "overflow"
    _overflowing(model).save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (base / f).is_file():
            shutil.copy(base / f, folder / f)
    yield folder
    shutil.rmtree(folder.parent)
    for label in (EMPTY, SOME):
        (app_env / f"{label}.safetensors").unlink()


@pytest.mark.slow
def test_the_page_shows_a_dash_with_why_for_an_empty_mask(app_env, planted, exports):
    at = open_page("bigram", bg_model="base", bg_mask=EMPTY, bg_opt=SOME, bg_tab="Overlap")
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = {m.label: (m.value, m.delta) for m in at.metric}  # the why in grey under the dash (no arrow, no colour)
    assert shown["first-layer MLP share"] == ("—", "(the bigram mask is empty)")  # (it read "0.00 %")
    assert shown["overlap × chance"] == ("—", "(the bigram mask is empty)")  # (it read "nan×" under "(p = 1)")
    assert not any("nan" in str(v).lower() for v, _ in shown.values()), shown
    (table,) = [d.value for d in at.dataframe if "x_chance" in d.value.columns]
    assert table["x_chance"].tolist() == table["share_of_0_in_1"].tolist() == ["— (the bigram mask is empty)"] * 2
    html = exports["Bigram subnetworks"]()
    assert "— (the bigram mask is empty)" in html and "nan×" not in html


@pytest.mark.slow
def test_the_location_tab_of_an_empty_mask_says_there_is_nothing_to_locate(app_env, planted):
    """Before: the heatmap drew 0 % in every cell and the Attention vs MLP table read 0.00 % for each group, shares
    of a subnetwork of no weight (0 / 0)."""
    at = open_page("bigram", bg_model="base", bg_mask=EMPTY, bg_tab="Location")
    assert not at.exception and not at.error, [e.value for e in at.error]
    (spec,) = [s for s in plotly_specs(at) if "Where the subnetwork lives" in str(s["layout"].get("title"))]
    assert not spec["data"], spec["data"]  # no heatmap of zeros
    assert "nothing to locate: the bigram mask is empty" in str(spec["layout"]["annotations"])
    (split,) = [d.value for d in at.dataframe if "group" in d.value.columns]
    assert split["share"].tolist() == ["— (the bigram mask is empty)"] * len(split)
    assert split["kept"].tolist() == [0] * len(split)


def test_shares_of_an_empty_mask_are_undefined_not_zero():
    from subnetviz.bigram.locate import attention_mlp_split, subnetwork_shares
    from subnetviz.bigram.maskable import blocks_of

    model = bigram_model("llama")
    shares = subnetwork_shares(full_mask(model, False), blocks_of(model))
    assert shares["share"].isna().all() and (shares["kept"] == 0).all()
    assert attention_mlp_split(shares)["share"].isna().all()
    some = subnetwork_shares(_random_mask(model, 0.3, 1), blocks_of(model))
    assert some["share"].sum() == pytest.approx(1.0)


@pytest.mark.slow
def test_the_page_refuses_nan_logits_in_one_line(app_env, planted):
    """Before: "Something went wrong inside subnetviz (LinAlgError). This is a bug"."""
    at = open_page("bigram", bg_model=str(planted), bg_mask=SOME)
    assert not at.exception, [e.message for e in at.exception]
    (said,) = [e.value.replace("\\", "") for e in at.error]
    assert "its logits are NaN or infinite (from finite weights" in said and "This is a bug" not in said, said
    assert "layer 1 of" in said and not at.metric
