"""workspace7's finding 1 on the Sparsity page (the micro zoo, AppTest): after a finetune was removed in the sidebar
and typed in again, the URL kept Sparsity's old choices (``dd_model`` naming the removed model, no ``sp_models``
once the fallback equalled that run's default), so the link opened another model and other numbers than the
sender's page showed. The pickers now write what they show into the URL; a link made from it shows the same.
(tests/unit/test_workspace7_fixes.py has findings 2 and 3.)"""

from __future__ import annotations

import pytest

from tests.app_fixtures import open_page
from tests.browser import E2E, wait_for_app
from tests.unit.test_workspace7_fixes import CHIP_VISIBLE

pytestmark = pytest.mark.slow

FT = ["grpo-s0", "grpo-s1", "dpo"]


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _seen(at) -> dict:
    """What the sender sees: the models side by side, One matrix's model and its line (changed entries)."""
    line = next(c.value for c in at.caption if " changed (" in c.value)
    return {"models": at.multiselect(key="sp_models").value, "model": at.selectbox(key="dd_model").value, "line": line}


def _shared(at):
    """The page a link made from ``at``'s URL opens. The sidebar's finetunes are set as it shows them: AppTest has no
    browser, which writes a bound picker's URL (the sidebar's), while the page's own writes are in ``at``'s URL."""
    query = {k: v for k, v in at.query_params.items() if k != "ft"}
    return _ok(open_page("sparsity", ft=at.multiselect(key="ft").value, **query))


def test_a_finetune_removed_and_typed_again_leaves_a_link_that_shows_the_senders_page(app_env):
    at = _ok(open_page("sparsity", ft=FT, sp_tab="One matrix", dd_model="dpo"))
    assert _seen(at)["model"] == "dpo" and at.query_params["dd_model"] == "dpo"
    assert _seen(at)["models"] == FT and "sp_models" not in at.query_params  # the default: left out
    at.multiselect(key="ft").unselect("dpo").run()
    _ok(at)
    gone = _seen(at)
    assert gone["models"] == ["grpo-s0", "grpo-s1"] and gone["model"] == "grpo-s0"
    assert "dd_model" not in at.query_params  # (the first model, the default; it named dpo, no longer compared)
    assert _seen(_shared(at)) == gone
    at.multiselect(key="ft").select("dpo").run()  # typed in again: the page keeps what it showed
    _ok(at)
    back = _seen(at)
    assert back == gone and at.multiselect(key="ft").value == FT
    assert at.query_params["sp_models"] == ["grpo-s0", "grpo-s1"]  # the default grew back to three: said
    assert "dd_model" not in at.query_params
    assert _seen(_shared(at)) == back


def test_the_model_picked_and_an_empty_choice_travel_in_the_link(app_env):
    """A model picked by hand and models unpicked are written (the default left out), and a link naming a model this
    workspace does not compare opens the rest, its URL without it."""
    at = _ok(open_page("sparsity", ft=FT, sp_tab="One matrix"))
    at.selectbox(key="dd_model").select("grpo-s1").run()
    at.multiselect(key="sp_models").unselect("grpo-s0").run()
    _ok(at)
    assert at.query_params["dd_model"] == "grpo-s1" and at.query_params["sp_models"] == ["grpo-s1", "dpo"]
    assert _seen(_shared(at)) == _seen(at)
    at.selectbox(key="dd_model").select("grpo-s0").run()  # back to the default: left out of the URL
    assert "dd_model" not in at.query_params
    stale = _ok(open_page("sparsity", ft=FT, sp_models=["dpo", "no-such-model"]))
    assert stale.multiselect(key="sp_models").value == ["dpo"] and stale.query_params["sp_models"] == "dpo"


# --- finding 3 in the app: the chips of right-to-left folder names, Chromium at 1024 px -------------------------------
VISIBLE = CHIP_VISIBLE  # the characters of a chip's text drawn whole inside its box


@pytest.mark.e2e
@E2E[1]
def test_chips_of_hebrew_and_arabic_folders_show_their_names(browser, app_url, app_home):
    """Two folders named in Hebrew and Arabic under one long parent: each chip shows its own name at its right end
    (both read "…kspace7/ckpts/names", and the × of one could not be told from the other's); a Latin name's as
    before."""
    import unicodedata
    from urllib.parse import urlencode

    parent = app_home / "a-long-folder-of-finetuned-checkpoints" / "names"
    names = ["מודל \u200fעברית", "نموذج", "my model v2"]
    paths = [str(parent / n) for n in names]
    ctx = browser.new_context(viewport={"width": 1024, "height": 900})
    try:
        page = ctx.new_page()
        page.goto(f"{app_url}/workspace?{urlencode([('ft', p) for p in paths])}")
        wait_for_app(page)
        chips = page.get_by_test_id("stSidebar").locator(".st-key-ft [data-tag] > span[title]")
        assert [c.get_attribute("title") for c in chips.all()] == paths
        for chip, name in zip(chips.all(), names, strict=True):
            seen, whole = chip.evaluate(VISIBLE), "".join(c for c in name if unicodedata.category(c) != "Cf")
            assert seen.endswith("/" + whole) and not seen.startswith(str(parent)), (name, seen)
    finally:
        ctx.close()
