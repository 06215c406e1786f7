"""The pickers whose options come from the workspace say in the URL what they show (the micro zoo, AppTest).

workspace7's finding 1 beyond Sparsity's models: bound to the URL (``bind="query-params"``), a picker whose choice
left its options (a finetune removed in the sidebar, a model whose checkpoint lacks a layer) fell back to its first
option, or dropped the choice, while the URL kept the old one. Once the option came back, the page showed one view
and a link made from its URL opened another: Spectra's Subspaces model (``sub_model``) and the Δ tab's models,
layer and module (``spec_models``, ``spec_layer``, ``spec_module``), Overlap's masks and pair (``ov_masks``,
``ov_pair``), Sparsity's One matrix tensor (``dd_tensor``). Each is now read from the URL and written back after it
is drawn (``ui.in_url``). tests/app/test_workspace7_fixes_app.py has Sparsity's models.
"""

from __future__ import annotations

import shutil

import pytest

from tests.app_fixtures import open_page
from tests.ckpt_fixtures import read_state_dict, write_folder

pytestmark = pytest.mark.slow

FT = ["grpo-s0", "grpo-s1", "dpo"]
SUBSPACES = "Subspaces of W_base vs W_ft"


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _shared(at, page: str):
    """The page a link made from ``at``'s URL opens. The sidebar's finetunes are set as it shows them (AppTest has no
    browser, which writes the sidebar's bound picker into the URL; the page's own writes are in ``at``'s URL)."""
    query = {k: v for k, v in at.query_params.items() if k != "ft"}
    return _ok(open_page(page, ft=at.multiselect(key="ft").value, **query))


def _url(at, key: str) -> list[str]:
    """The URL's entries for ``key`` (AppTest's query_params hold one entry as text, several as a list)."""
    value = at.query_params.get(key, [])
    return [value] if isinstance(value, str) else list(value)


def _seen(at, pickers: dict[str, str]) -> dict:
    """What the page shows: each picker's value (``key -> "selectbox" | "multiselect"``)."""
    return {key: getattr(at, kind)(key=key).value for key, kind in pickers.items()}


def _readd(at, ft: str):
    """``ft`` removed in the sidebar, then typed in again."""
    _ok(at.multiselect(key="ft").unselect(ft).run())
    return _ok(at.multiselect(key="ft").select(ft).run())


@pytest.fixture(scope="module")
def partial_finetunes(app_env):
    """grpo-s1's weights without layer 1 (``no-layer1``) and without layer 1's MLP (``no-mlp1``): finetunes whose
    matrices, layers and modules are fewer than the zoo's (each compared over the tensors it shares with the base)."""
    home = app_env / "url-pickers"
    sd = read_state_dict(app_env / "zoo" / "grpo-s1")
    folders = {
        name: str(write_folder(home / name, {k: v for k, v in sd.items() if cut not in k}, app_env / "zoo" / "grpo-s1"))
        for name, cut in (("no-layer1", "layers.1."), ("no-mlp1", "layers.1.mlp."))
    }
    yield folders
    shutil.rmtree(home, ignore_errors=True)


# --- Spectra ----------------------------------------------------------------------------------------------------
def test_spectra_subspaces_model_after_a_finetune_is_removed_and_typed_again(app_env):
    at = _ok(open_page("spectra", ft=FT, spec_tab=SUBSPACES, sub_model="dpo"))
    assert at.selectbox(key="sub_model").value == "dpo" and at.query_params["sub_model"] == "dpo"
    _readd(at, "dpo")
    shown = _seen(at, {"sub_model": "selectbox"})
    assert shown == {"sub_model": "grpo-s0"}  # fell back while dpo was gone; the first: left out of the URL
    assert "sub_model" not in at.query_params  # (it kept sub_model=dpo: the link opened dpo's subspaces)
    assert _seen(_shared(at, "spectra"), {"sub_model": "selectbox"}) == shown


def test_spectra_models_after_a_finetune_is_removed_and_typed_again(app_env):
    at = _ok(open_page("spectra", ft=FT, spec_models=["grpo-s1", "dpo"]))
    assert at.multiselect(key="spec_models").value == ["grpo-s1", "dpo"]
    _readd(at, "dpo")
    shown = _seen(at, {"spec_models": "multiselect"})
    assert shown == {"spec_models": ["grpo-s1"]}
    assert at.query_params["spec_models"] == "grpo-s1"  # (it kept grpo-s1 and dpo: the link drew both)
    assert _seen(_shared(at, "spectra"), {"spec_models": "multiselect"}) == shown


def test_spectra_layer_and_module_after_the_workspace_loses_them(app_env, partial_finetunes):
    """A layer only grpo-s0 has, and a module only grpo-s0 has in a layer: with grpo-s0 removed they fell back (to
    the first layer, to "all"); typed in again, the page kept the fallback and the URL the old choice."""
    pickers = {"spec_layer": "selectbox", "spec_module": "selectbox"}
    at = _ok(open_page("spectra", ft=["grpo-s0", partial_finetunes["no-layer1"]], spec_layer="1"))
    _readd(at, "grpo-s0")
    assert _seen(at, pickers) == {"spec_layer": "0", "spec_module": "all"}
    assert "spec_layer" not in at.query_params  # (the first layer, the default; it kept spec_layer=1)
    assert _seen(_shared(at, "spectra"), pickers) == _seen(at, pickers)

    at = _ok(open_page("spectra", ft=["grpo-s0", partial_finetunes["no-mlp1"]], spec_layer="1", spec_module="down"))
    assert _seen(at, pickers) == {"spec_layer": "1", "spec_module": "down"}
    _readd(at, "grpo-s0")
    assert _seen(at, pickers) == {"spec_layer": "1", "spec_module": "all"}
    assert at.query_params["spec_layer"] == "1" and "spec_module" not in at.query_params  # (it kept down)
    assert _seen(_shared(at, "spectra"), pickers) == _seen(at, pickers)


def test_spectra_pickers_write_what_is_picked(app_env):
    """A choice made on the page travels in the link; the defaults are left out, and a link naming a model, layer or
    module this workspace does not have opens the defaults, its URL without them."""
    pickers = {"spec_models": "multiselect", "spec_layer": "selectbox", "spec_module": "selectbox"}
    at = _ok(open_page("spectra", ft=FT))
    at.multiselect(key="spec_models").select("dpo").run()
    at.selectbox(key="spec_layer").select("1").run()
    _ok(at.selectbox(key="spec_module").select("q").run())
    assert {k: _url(at, k) for k in pickers} == {
        "spec_models": ["grpo-s0", "dpo"],
        "spec_layer": ["1"],
        "spec_module": ["q"],
    }
    assert _seen(_shared(at, "spectra"), pickers) == _seen(at, pickers)
    _ok(at.selectbox(key="spec_module").select("all").run())
    assert "spec_module" not in at.query_params
    stale = _ok(open_page("spectra", ft=FT, spec_models="gone", spec_layer="7", spec_module="nope"))
    assert _seen(stale, pickers) == {"spec_models": ["grpo-s0"], "spec_layer": "0", "spec_module": "all"}
    assert not any(k in stale.query_params for k in pickers)


# --- Overlap ----------------------------------------------------------------------------------------------------
def test_overlap_masks_after_a_finetune_is_removed_and_typed_again(app_env):
    at = _ok(open_page("overlap", ft=FT, ov_masks=["Δ grpo-s1", "Δ dpo"]))
    assert at.multiselect(key="ov_masks").value == ["Δ grpo-s1", "Δ dpo"]
    at.multiselect(key="ft").unselect("dpo").run()
    assert at.multiselect(key="ov_masks").value == ["Δ grpo-s1"]
    assert at.query_params["ov_masks"] == "Δ grpo-s1"  # one mask: "Pick at least two masks.", as the link opens
    at.multiselect(key="ft").select("dpo").run()
    shown = _seen(at, {"ov_masks": "multiselect"})
    assert shown == {"ov_masks": ["Δ grpo-s1"]} and at.query_params["ov_masks"] == "Δ grpo-s1"
    assert _seen(_shared(at, "overlap"), {"ov_masks": "multiselect"}) == shown  # (it opened Δ grpo-s1 and Δ dpo)
    _ok(at.multiselect(key="ov_masks").select("Δ grpo-s0").run())
    assert _url(at, "ov_masks") == ["Δ grpo-s1", "Δ grpo-s0"]
    _ok(at.multiselect(key="ov_masks").unselect("Δ grpo-s1").select("Δ grpo-s1").select("Δ dpo").run())
    assert "ov_masks" not in at.query_params  # the default (the first three, in order): left out


def test_overlap_pair_after_its_mask_is_unpicked_and_picked_again(app_env):
    pickers = {"ov_masks": "multiselect", "ov_pair": "selectbox"}
    at = _ok(open_page("overlap", ft=FT, ov_tab="Per layer", ov_pair="Δ grpo-s1 ∩ Δ dpo"))
    first = at.selectbox(key="ov_pair").options[0]
    assert at.selectbox(key="ov_pair").value == "Δ grpo-s1 ∩ Δ dpo" != first
    _ok(at.multiselect(key="ov_masks").unselect("Δ dpo").run())  # the pair's mask unpicked: its first pair shown
    _ok(at.multiselect(key="ov_masks").select("Δ dpo").run())  # and picked again: the page keeps it
    assert _seen(at, pickers) == {"ov_masks": ["Δ grpo-s0", "Δ grpo-s1", "Δ dpo"], "ov_pair": first}
    assert "ov_pair" not in at.query_params  # (it kept the grpo-s1 ∩ dpo pair: the link opened that one)
    assert _seen(_shared(at, "overlap"), pickers) == _seen(at, pickers)


# --- Sparsity ---------------------------------------------------------------------------------------------------
def test_sparsity_matrix_after_a_model_lacking_it_is_shown(app_env, partial_finetunes):
    """One matrix's tensor of layer 1, then a model without layer 1 (it fell back to the first query projection),
    then the first model again: the page showed the query projection, the URL the layer-1 matrix."""
    pickers = {"dd_model": "selectbox", "dd_tensor": "selectbox"}
    ft = ["grpo-s0", partial_finetunes["no-layer1"]]
    at = _ok(open_page("sparsity", ft=ft, sp_tab="One matrix", dd_tensor="layers.1.mlp.down_proj.weight"))
    assert _seen(at, pickers) == {"dd_model": "grpo-s0", "dd_tensor": "layers.1.mlp.down_proj.weight"}
    _ok(at.selectbox(key="dd_model").select("no-layer1").run())
    assert at.selectbox(key="dd_tensor").value == "layers.0.self_attn.q_proj.weight"
    assert "dd_tensor" not in at.query_params  # the default of this model's matrices
    _ok(at.selectbox(key="dd_model").select("grpo-s0").run())
    shown = _seen(at, pickers)
    assert shown == {"dd_model": "grpo-s0", "dd_tensor": "layers.0.self_attn.q_proj.weight"}
    assert "dd_tensor" not in at.query_params  # (it kept layers.1.mlp.down_proj.weight: the link opened that one)
    line = next(c.value for c in at.caption if " changed (" in c.value)
    shared = _shared(at, "sparsity")
    assert _seen(shared, pickers) == shown and line in [c.value for c in shared.caption]
    _ok(at.selectbox(key="dd_tensor").select("layers.1.self_attn.v_proj.weight").run())
    assert at.query_params["dd_tensor"] == "layers.1.self_attn.v_proj.weight"
    assert _seen(_shared(at, "sparsity"), pickers)["dd_tensor"] == "layers.1.self_attn.v_proj.weight"
