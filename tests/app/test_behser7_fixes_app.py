"""Behaviour page, seventh review (behser7), on the micro zoo (AppTest).

1. A shared link's choices this server cannot offer (a prompt set, a mask, a count, a finished job's results, a
   tab, a measure, a prompt) were swapped for the defaults without a word. A link naming a finished behaviour job
   the recipient's server lacks showed the recipient's own workspace's numbers as the answer. Each is now said,
   with what is shown instead, as Series, Training and Drivers say a stale run.
2. A closed tab's choice left the URL: a measure picked on Per model was gone from the link once Per prompt was
   open (its radio, bound to the URL, is drawn only while its tab is open). It is now kept whichever tab is open.
3. Per token's "prompt 16" did not say which prompt set: with two sets of 16 it is the second set's first prompt.
   The picker, the chart's title and the export now name the set and the prompt's number there.
"""

from __future__ import annotations

import json

import pytest

from tests.app.test_export_review_fixes import _figures, _params, _title
from tests.app_fixtures import open_page, plotly_specs

pytestmark = pytest.mark.slow

FAST = {"ft": ["grpo-s0"], "bh_limit": "16", "bh_curve": "false"}
ZOO_MASK = "masks/grpo-seed0"  # the micro zoo's mask, as the sidebar names it
SETS = ["A_eval", "B_eval"]  # the micro zoo's prompt sets: 20 prompts each, 16 of each run here


def _open(**query):
    """The Behaviour page opened from a link holding ``query`` (over :data:`FAST`: one finetune, no curve)."""
    return _ok(open_page("behavior", **{**FAST, **query}))


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _all(at, key: str) -> list[str]:
    """The URL's entries under ``key`` (AppTest holds one as a string, several as a list)."""
    value = at.query_params.get(key, [])
    return [value] if isinstance(value, str) else list(value)


def _warnings(at) -> list[str]:
    return [str(w.value).replace("\\", "") for w in at.warning]  # (shown as text: Markdown escaped)


def _said(at, start: str) -> str:
    (line,) = [w for w in _warnings(at) if w.startswith(start)] or [None]
    assert line is not None, _warnings(at)
    return line


# ---------------------------------------------------------------- 1. a link's choices not on offer are said


@pytest.fixture(scope="module", autouse=True)
def _env(app_env):
    return app_env


def test_a_link_naming_nothing_on_offer_says_each_and_shows_the_defaults():
    at = _open(bh_prompts="nope", bh_masks="gone", bh_limit="999", bh_source="run nothing · 1")
    assert at.multiselect(key="bh_prompts").value == ["A_eval"]
    assert at.multiselect(key="bh_masks").value == [ZOO_MASK]
    assert at.selectbox(key="bh_limit").value == 16
    assert at.selectbox(key="bh_source").value == "computed here (cached)"
    assert _said(at, "The link's prompt set nope") == (
        "The link's prompt set nope is not among this server's prompt sets; A_eval is shown instead."
    )
    assert _said(at, "The link's mask gone") == (
        f"The link's mask gone is not among the masks on offer here; {ZOO_MASK} is shown instead."
    )
    assert _said(at, "The link's prompts per set") == (
        "The link's prompts per set 999 is not among the counts on offer (16, 64, 256); 16 is shown instead."
    )
    # the worst of them: a finished job's results the recipient's server lacks, shown as its own computation
    assert _said(at, "The link's results") == (
        "The link's results run nothing · 1 is not among this server's finished behaviour runs; computed here "
        "(cached), for the models in the sidebar, is shown instead."
    )
    for key in ("bh_prompts", "bh_masks", "bh_limit", "bh_source"):  # what is shown: the defaults, left out
        assert key not in at.query_params, (key, at.query_params.get(key))


def test_a_links_entries_on_offer_are_kept_and_the_others_named_as_left_out():
    at = _open(bh_prompts=["gone", "B_eval"], bh_masks=[ZOO_MASK, "old", "older"])
    assert at.multiselect(key="bh_prompts").value == ["B_eval"]
    assert at.multiselect(key="bh_masks").value == [ZOO_MASK]
    assert _said(at, "The link's prompt set") == (
        "The link's prompt set gone is not among this server's prompt sets; it is left out."
    )
    assert _said(at, "The link's masks") == (
        "The link's masks old, older are not among the masks on offer here; they are left out."
    )
    assert _all(at, "bh_prompts") == ["B_eval"] and _all(at, "bh_masks") == []


def test_a_link_on_offer_says_nothing():
    at = _open(bh_prompts=SETS, bh_masks=[ZOO_MASK], bh_tab="Per prompt")
    assert not [w for w in _warnings(at) if w.startswith("The link's")], _warnings(at)
    assert _all(at, "bh_prompts") == SETS


@pytest.mark.parametrize(
    ("query", "line"),
    [
        ({"bh_tab": "Nope"}, "The link's tab Nope is not among this page's tabs; Per model is shown instead."),
        (
            {"bh_value": "bogus"},
            "The link's measure bogus is not among the Per model tab's measures; Forward KL(π_base ‖ π) is shown "
            "instead.",
        ),
        (
            {"bh_kl": "bogus", "bh_tab": "Per prompt"},
            "The link's KL bogus is not among the Per prompt tab's KLs; Forward KL(π_base ‖ π) is shown instead.",
        ),
        *(
            (
                {"bh_prompt": raw, "bh_tab": "Per token"},
                f"The link's prompt {raw} is not among these results' prompts; set A, prompt 0 is shown instead.",
            )
            for raw in ("-5", "inf", "999")
        ),
        (  # the Per token tab closed: said all the same (the export shows that prompt)
            {"bh_prompt": "999"},
            "The link's prompt 999 is not among these results' prompts; set A, prompt 0 is shown instead.",
        ),
        (
            {"bh_model": "gone", "bh_tab": "Per token"},
            "The link's model gone is not among these results' models; grpo-s0 is shown instead.",
        ),
    ],
)
def test_a_value_the_page_cannot_take_is_said_and_dropped_from_the_url(query, line):
    at = _open(**query)
    assert line in _warnings(at), _warnings(at)
    asked = next(iter(query))  # (the other entry opens the tab it belongs to)
    assert asked not in at.query_params, at.query_params.get(asked)  # the first option shown: left out


def test_the_line_stays_while_its_choice_is_shown_and_goes_once_another_is_picked():
    from subnetviz.figures.behavior import MEASURE

    at = _open(bh_value="bogus")
    said = "The link's measure bogus"
    assert [w for w in _warnings(at) if w.startswith(said)]
    at.run()  # (a rerun: the picker still shows what the line names)
    assert [w for w in _warnings(at) if w.startswith(said)]
    _ok(at.radio(key="bh_value").set_value("accuracy").run())
    assert not [w for w in _warnings(at) if w.startswith(said)], _warnings(at)
    assert at.query_params["bh_value"] == MEASURE["accuracy"]


# ---------------------------------------------------------------- 2. a closed tab's choice stays in the URL


def test_each_tabs_choice_stays_in_the_url_while_another_tab_is_open():
    from subnetviz.figures.behavior import MEASURE

    at = _open(bh_value=MEASURE["accuracy"])  # (a link: AppTest writes no pick of a bound control into the URL)
    assert at.radio(key="bh_value").value == "accuracy"
    at.session_state["bh_tab"] = "Per prompt"  # (a click on the tab)
    _ok(at.run())
    # (it was gone: a link copied now opened the forward KL)
    assert at.query_params.get("bh_value") == MEASURE["accuracy"], "kept with Per prompt open"
    _ok(at.radio(key="bh_kl").set_value("kl_reverse").run())
    at.session_state["bh_tab"] = "Per token"
    _ok(at.run())
    _ok(at.selectbox(key="bh_prompt").set_value(3).run())
    at.session_state["bh_tab"] = "Per model"
    _ok(at.run())
    shared = {k: _all(at, k) for k in at.query_params}
    assert shared["bh_value"] == [MEASURE["accuracy"]] and shared["bh_kl"] == [MEASURE["kl_reverse"]]
    assert shared["bh_prompt"] == ["3"]
    assert at.radio(key="bh_value").value == "accuracy"  # the sender's page, as the link opens it
    again = _open(**{k: v for k, v in shared.items() if k not in FAST})
    assert again.radio(key="bh_value").value == "accuracy"
    again.session_state["bh_tab"] = "Per prompt"
    _ok(again.run())
    assert again.radio(key="bh_kl").value == "kl_reverse"


# ---------------------------------------------------------------- 3. Per token names the prompt's set


def test_per_token_names_the_prompts_set_and_its_number_there(exports, app_env):
    """Two sets of 16: prompt 16 (as the URL numbers it, across both sets) is B's first, "set B, prompt 0", in the
    picker, the chart's title and the export; its tokens are B_eval.jsonl's first line's."""
    at = _open(bh_prompts=SETS, bh_tab="Per token", bh_prompt="16")
    picker = at.selectbox(key="bh_prompt")  # (its options as shown: their names)
    assert picker.value == 16 and picker.options[picker.index] == "set B, prompt 0"
    assert picker.options == [f"set {s}, prompt {i}" for s in "AB" for i in range(16)]
    (title,) = [s["layout"]["title"]["text"] for s in plotly_specs(at) if "which tokens moved" in str(s["layout"])]
    assert title == "grpo-s0 · finetuned · set B, prompt 0: which tokens moved"
    (chart,) = [s for s in plotly_specs(at) if s["layout"]["title"]["text"] == title]
    tokens = "".join(x.split(":", 1)[1] for x in chart["data"][0]["x"])
    first = json.loads((app_env / "zoo" / "data" / "B_eval.jsonl").read_text().splitlines()[0])
    assert first["prompt"] + first["answer"] in tokens, tokens  # B's first prompt, read from its file
    page = exports["Behaviour"]()
    params = _params(page)
    assert params["prompt set"] == "B" and params["prompt"] == "0"
    assert [_title(f) for f in _figures(page) if "which tokens moved" in _title(f)] == [title]


def test_the_prompt_shown_follows_its_set_when_an_earlier_set_is_removed():
    """Prompts are numbered across every set chosen: "set B, prompt 2" is 18 of A and B (16 each), 2 of B alone.
    With A removed the picker showed "set B, prompt 0" (18 was no prompt any more) and dropped it from the URL; a
    number still held would have named another set's prompt. It follows the prompt by its name."""
    at = _open(bh_prompts=SETS, bh_tab="Per token", bh_prompt="18")
    picker = at.selectbox(key="bh_prompt")
    assert picker.options[picker.index] == "set B, prompt 2"
    _ok(at.multiselect(key="bh_prompts").set_value(["B_eval"]).run())
    picker = at.selectbox(key="bh_prompt")
    assert picker.options[picker.index] == "set B, prompt 2" and picker.value == 2, picker.options[picker.index]
    assert _all(at, "bh_prompt") == ["2"] and not _warnings(at)
    _ok(at.selectbox(key="bh_prompt").set_value(5).run())  # a pick after it is kept as picked
    assert at.selectbox(key="bh_prompt").value == 5 and _all(at, "bh_prompt") == ["5"]
