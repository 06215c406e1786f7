"""Behaviour's pickers whose options come from the workspace say in the URL what they show (the micro zoo, AppTest).

As Spectra's, Overlap's and Sparsity's (tests/app/test_url_pickers_app.py): bound to the URL
(``bind="query-params"``), a picker whose choice left its options fell back, or dropped the choice, while the URL
kept the old one; once the option came back, the page showed one view and a link made from its URL opened another.
The masks to revert (``bh_masks``: a mask removed in the sidebar and added again), Per token's model (``bh_model``:
a finetune removed and typed again) and experiment (``bh_exp``: its mask unpicked and picked again). Each is now read
from the URL and written back after it is drawn (``ui.in_url``).
"""

from __future__ import annotations

import json

import pytest

from tests.app_fixtures import home_of_its_own, open_page

pytestmark = pytest.mark.slow

FT = ["grpo-s0", "grpo-s1", "dpo"]
FAST = {"bh_limit": "16", "bh_curve": "false"}
ZOO_MASK = "masks/grpo-seed0"  # the micro zoo's mask, as the sidebar names it: offered whatever the sidebar holds
TOKENS = {"bh_tab": "Per token"}


@pytest.fixture(scope="module")
def upload(micro_zoo, tmp_path_factory):
    """A home of its own (its uploads meet no other module) holding a copy of the zoo's mask as an upload: a mask
    Behaviour offers only while the sidebar holds it; its label."""
    from subnetviz.selection import save_upload

    with home_of_its_own(micro_zoo, tmp_path_factory, "url-pickers-behaviour") as home:
        manifest = json.loads((home / "zoo" / "manifest.json").read_text())
        entry = next(iter(manifest["masks"].values()))
        stored = save_upload("copy.safetensors", (home / "zoo" / entry["path"]).read_bytes())
        yield f"uploads/{stored.stem}"


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _shared(at):
    """The page a link made from ``at``'s URL opens. The sidebar's finetunes and masks are set as it shows them
    (AppTest has no browser, which writes the sidebar's bound pickers into the URL)."""
    sidebar = {key: at.multiselect(key=key).value for key in ("ft", "masks")}
    query = {k: v for k, v in at.query_params.items() if k not in sidebar}
    return _ok(open_page("behavior", **sidebar, **query))


def _seen(at, pickers: dict[str, str]) -> dict:
    """What the page shows: each picker's value (``key -> "selectbox" | "multiselect"``)."""
    return {key: getattr(at, kind)(key=key).value for key, kind in pickers.items()}


def test_masks_after_a_sidebar_mask_is_removed_and_added_again(upload):
    pickers = {"bh_masks": "multiselect"}
    at = _ok(open_page("behavior", ft=["grpo-s0"], masks=[upload], bh_masks=[upload], **FAST))
    assert _seen(at, pickers) == {"bh_masks": [upload]} and at.query_params["bh_masks"] == upload
    _ok(at.multiselect(key="masks").unselect(upload).run())
    assert upload not in at.multiselect(key="bh_masks").options
    _ok(at.multiselect(key="masks").select(upload).run())
    shown = _seen(at, pickers)
    assert shown == {"bh_masks": []}  # dropped while it was gone, and not picked again
    assert at.query_params["bh_masks"] == ""  # none, as "bh_masks=" (it kept the upload: the link reverted it)
    assert _seen(_shared(at), pickers) == shown


def test_token_model_after_a_finetune_is_removed_and_typed_again(upload):
    pickers = {"bh_model": "selectbox"}
    at = _ok(open_page("behavior", ft=FT, bh_model="dpo", **TOKENS, **FAST))
    assert _seen(at, pickers) == {"bh_model": "dpo"} and at.query_params["bh_model"] == "dpo"
    _ok(at.multiselect(key="ft").unselect("dpo").run())
    _ok(at.multiselect(key="ft").select("dpo").run())
    shown = _seen(at, pickers)
    assert shown == {"bh_model": "grpo-s0"}  # fell back while dpo was gone; the first: left out of the URL
    assert "bh_model" not in at.query_params  # (it kept bh_model=dpo: the link opened dpo's tokens)
    assert _seen(_shared(at), pickers) == shown


def test_token_experiment_after_its_mask_is_unpicked_and_picked_again(upload):
    pickers = {"bh_masks": "multiselect", "bh_exp": "selectbox"}
    outside = f"{ZOO_MASK}/outside"
    at = _ok(open_page("behavior", ft=["grpo-s0"], bh_exp=outside, **TOKENS, **FAST))
    assert _seen(at, pickers) == {"bh_masks": [ZOO_MASK], "bh_exp": outside}
    _ok(at.multiselect(key="bh_masks").unselect(ZOO_MASK).run())  # no mask: the finetune's own row only
    assert at.selectbox(key="bh_exp").options == ["finetuned"]
    _ok(at.multiselect(key="bh_masks").select(ZOO_MASK).run())  # and picked again: the page keeps "finetuned"
    shown = _seen(at, pickers)
    assert shown == {"bh_masks": [ZOO_MASK], "bh_exp": "finetuned"}
    assert "bh_exp" not in at.query_params  # (it kept the mask's outside experiment: the link opened that one)
    assert _seen(_shared(at), pickers) == shown


def test_token_pickers_write_what_is_picked(upload):
    """A choice made on the page travels in the link, the defaults are left out, and a link naming a model or an
    experiment these results do not hold opens the first, its URL without them."""
    pickers = {"bh_model": "selectbox", "bh_exp": "selectbox"}
    at = _ok(open_page("behavior", ft=FT, **TOKENS, **FAST))
    at.selectbox(key="bh_model").select("grpo-s1").run()
    _ok(at.selectbox(key="bh_exp").select(f"{ZOO_MASK}/inside").run())
    assert at.query_params["bh_model"] == "grpo-s1" and at.query_params["bh_exp"] == f"{ZOO_MASK}/inside"
    assert _seen(_shared(at), pickers) == _seen(at, pickers)
    _ok(at.selectbox(key="bh_model").select("grpo-s0").run())
    assert "bh_model" not in at.query_params
    stale = _ok(open_page("behavior", ft=FT, bh_model="gone", bh_exp="nope", **TOKENS, **FAST))
    assert _seen(stale, pickers) == {"bh_model": "grpo-s0", "bh_exp": "finetuned"}
    assert not any(k in stale.query_params for k in pickers)
