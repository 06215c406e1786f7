"""Fixes from the third browser walk (review), on the pages (AppTest): Overlap colours each update mask as its model.

Overlap coloured the chosen masks by their place in the picker: with Δ dpo and Δ sft chosen they were blue and orange
(grpo-s0's and grpo-s1's colours everywhere else), while Update sparsity drew dpo pink and sft light blue. Now an
update mask has its model's colour on the Venn and the UpSet, and a saved mask a colour no model of the workspace has.
"""

from __future__ import annotations

import pytest

from tests.app_fixtures import decode, open_page, plotly_specs

pytestmark = pytest.mark.slow


def _title(spec) -> str:
    return str((spec["layout"].get("title") or {}).get("text") or "")


def _sparsity_colours(models: list[str]) -> dict[str, str]:
    """model -> its bar's colour on Update sparsity's overall chart, with ``models`` shown."""
    at = open_page("sparsity", sp_models=models)
    assert not at.exception, [e.message for e in at.exception]
    for spec in plotly_specs(at):
        for t in spec["data"]:
            x, c = t.get("x"), (t.get("marker") or {}).get("color")
            if t.get("type") == "bar" and isinstance(c, list) and x is not None and set(decode(x)) == set(models):
                return dict(zip(map(str, decode(x)), c, strict=True))
    raise AssertionError("no overall bar chart of the models on Update sparsity")


def _overlap_colours(at) -> tuple[dict[str, str], dict[str, str]]:
    """(label -> its colour on the Venn, label -> its set-size bar's colour on the UpSet) of an Overlap page."""
    specs = {_title(s).split("<br>")[0]: s for s in plotly_specs(at)}
    venn = specs["Overlap (area-proportional)"]
    on_venn = {
        a["text"].removeprefix("<b>").removesuffix("</b>"): a["font"]["color"] for a in venn["layout"]["annotations"]
    }
    upset = specs["Intersections of masks (UpSet)"]
    sizes = next(t for t in upset["data"] if t.get("type") == "bar" and isinstance(t["marker"].get("color"), list))
    on_upset = dict(zip(sizes["hovertext"], sizes["marker"]["color"], strict=True))  # (y: the row numbers)
    return on_venn, on_upset


def test_overlap_draws_each_update_mask_in_its_models_colour(app_env):
    models = ["dpo", "sft"]
    want = _sparsity_colours(models)
    assert want["dpo"] != want["sft"]
    at = open_page("overlap", ov_masks=[f"Δ {m}" for m in models], ov_tab="Sets")
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    on_venn, on_upset = _overlap_colours(at)
    for m in models:
        assert on_venn[f"Δ {m}"] == want[m], (m, on_venn, want)
        assert on_upset[f"Δ {m}"] == want[m], (m, on_upset, want)


def test_a_saved_mask_gets_a_colour_no_model_has(app_env):
    every = open_page("sparsity")
    assert not every.exception
    at_models = list(every.multiselect(key="sp_models").options)  # the workspace's finetunes, in its order
    model_colours = set(_sparsity_colours(at_models).values())
    saved = "masks/grpo-seed0"
    at = open_page("overlap", masks=[saved], ov_masks=["Δ grpo-s0", saved], ov_tab="Sets")
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    on_venn, on_upset = _overlap_colours(at)
    assert on_venn[saved] == on_upset[saved] and on_venn[saved] not in model_colours, (on_venn, model_colours)
    assert on_venn["Δ grpo-s0"] in model_colours


# the Llama matrices' module kinds, read from their names here (not through the app's naming)
_KIND = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up"}
_KIND |= {"down_proj": "down"}


def test_a_module_kind_has_one_colour_on_spectra_and_series(app_env):
    spectra = open_page("spectra")
    assert not spectra.exception, [e.message for e in spectra.exception]
    sv = next(s for s in plotly_specs(spectra) if _title(s).startswith("Singular values"))
    by_spectra = {}
    for t in sv["data"]:
        if t.get("showlegend") is not False and t.get("name"):
            part = t["name"].split(".")[-2]
            by_spectra[_KIND[part]] = t["line"]["color"]
    series = open_page("series")
    assert not series.exception, [e.message for e in series.exception]
    per_module = next(s for s in plotly_specs(series) if _title(s).startswith("Sparsity per module"))
    by_series = {t["name"]: t["line"]["color"] for t in per_module["data"]}
    shared = set(by_spectra) & set(by_series)
    assert len(shared) >= 5, (by_spectra, by_series)
    assert {m: by_spectra[m] for m in shared} == {m: by_series[m] for m in shared}
    assert len(set(by_series.values())) == len(by_series)  # each kind a colour of its own
