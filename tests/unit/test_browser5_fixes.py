"""The fifth browser review (Home, navigation and shared URLs), its two findings:

1. An error message naming a path with a component that starts with ``<``, ``(``, ``[``, ``{`` or a quote showed
   another path: ``/work/main/x/<y`` read "main/x<y" (its "/" lost), ``…/ckpts/(old)/model`` read
   "main/ckpts(old)…/model" (the rest taken for a second path outside the roots). Such a path is shown whole now,
   and a path outside the roots is still shown by its last component only.
2. A run's curves title was wrapped at any space, and the figure picker, which reads each line break as " · ",
   named the chart "… the base · gets wrong (A)) · …" and "… (fast) · · 2026…". The title breaks at its " · "
   separators (tests/app/test_browser5_fixes_app.py: the picker's name).
"""

from __future__ import annotations

import pytest

from subnetviz import config


@pytest.fixture
def two_places(tmp_path, monkeypatch):
    """A root (``inside``) and a folder outside every root (``outside``)."""
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(inside))
    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    return inside, outside


# --- 1: paths whose components start with a bracket or a quote -------------------------------------------------
@pytest.mark.parametrize(
    "rest",
    ["x/<y", "ckpts/(old)/model", "ckpts/[v2]/model", "ckpts/{a}/model", "x/'q'/m", 'x/"q"/m', "x/<y>/z", "a/b"],
)
def test_a_path_inside_a_root_is_shown_whole(two_places, rest):
    inside, _ = two_places
    message = f"{inside}/{rest}: no such file or folder"
    shown = config.redact(message)
    assert shown == f"inside/{rest}: no such file or folder"
    assert config.redact(shown) == shown  # (a page redacts the error it shows again: "(old)/model" stays)


@pytest.mark.parametrize("rest", ["(old)/model", "[v2]/model", "{a}/model", "<y>/model", "'q'/model", "a(b)c/model"])
def test_a_path_outside_the_roots_still_shows_its_last_component_only(two_places, rest):
    _, outside = two_places
    shown = config.redact(f"cannot open {outside}/{rest}: no such file")
    assert shown == "cannot open …/model: no such file"
    assert config.redact(shown) == shown


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("data '{inside}/d/train.jsonl': no such file", "data 'inside/d/train.jsonl': no such file"),
        ("data '{outside}/d/train.jsonl': no such file", "data '…/train.jsonl': no such file"),
        ("(see {inside}/x/).", "(see inside/x/)."),  # (a folder's "/" was dropped with the path)
        ("(see {outside}/s/t).", "(see …/t)."),
        ("['{inside}/x', \"{outside}/y\"]", "['inside/x', \"…/y\"]"),
        ("{{'base': '{outside}/s/t'}}", "{{'base': '…/t'}}"),
        ("from {inside}/it's/x.", "from inside/it's/x."),
        ("{inside}/x</i>", "inside/x</i>"),  # (a closing tag is no component)
    ],
)
def test_a_path_in_quotes_or_brackets_leaves_them_out(two_places, template, expected):
    inside, outside = two_places
    shown = config.redact(template.format(inside=inside, outside=outside))
    assert shown == expected.format(inside=inside)
    assert config.redact(shown) == shown


def test_what_is_no_path_stays_as_it_is(two_places):
    for text in ["j // 16 and 1 / 127", "http://a/b", "(/)", "a /. b", "…/x and inside/y", "x/(y)/z"]:
        assert config.redact(text) == text


@pytest.mark.parametrize(
    "template",
    [
        "No such file or directory: b'{outside}/s/model.safetensors'",  # (a bytes file name, as OSError writes it)
        "[Errno 2]{outside}/s/model.safetensors",
        "(see above){outside}/s/model.safetensors",
        "{{'a': 1}}{outside}/s/model.safetensors",
        "u'{outside}/s/model.safetensors'",
        "f-'{outside}/s/model.safetensors'",
        "x’{outside}/s/model.safetensors",
    ],
)
def test_a_path_after_a_bracket_or_a_quote_that_no_path_holds_is_hidden(two_places, template):
    """The regressions12 review: the rule that keeps "ckpts/(old)/model" whole (a "/" after a closing bracket or a
    quote after a name is no new path) also showed "[Errno 2]/srv/…" and "b'/srv/…'" whole; it applies only where
    the word already holds a "/"."""
    _, outside = two_places
    shown = config.redact(template.format(outside=outside))
    assert str(outside) not in shown and "…/model.safetensors" in shown, shown
    assert config.redact(shown) == shown


# --- 2: a run's curves title breaks at its " · " separators ----------------------------------------------------
@pytest.mark.parametrize(
    ("head", "lines"),
    [
        (  # a zoo run's bigram mask (as the review saw it): "(fast)" / "· 2026…" before
            "Run demo zoo 0f834756: optimal mask of the base, λ=10 (fast) · 20261206-192908-bigram_mask-00bb0a",
            ["Run demo zoo 0f834756: optimal mask of the base, λ=10 (fast)", "20261206-192908-bigram_mask-00bb0a"],
        ),
        (  # parts that fit one line together
            "Run sft · abc · 20261206-192908-train-00bb0a",
            ["Run sft · abc · 20261206-192908-train-00bb0a"],
        ),
        (  # "Run <name>" too long for a line of its own: wrapped at its spaces, the id after it where it fits
            "Run demo zoo 0f834756: sft (SFT on gold answers the base gets wrong (A)) · zoo-0f834756-sft-1796585347",
            [
                "Run demo zoo 0f834756: sft (SFT on gold answers the base",
                "gets wrong (A)) · zoo-0f834756-sft-1796585347",
            ],
        ),
        (
            "Run a very long name of a run · with a second part that is long too · 20261206-192908-train-00bb0a",
            ["Run a very long name of a run", "with a second part that is long too", "20261206-192908-train-00bb0a"],
        ),
    ],
)
def test_a_run_s_title_breaks_at_its_separators(head, lines):
    from subnetviz.report.training import TITLE_LINE, title_lines

    assert title_lines(head) == lines
    assert all(len(line) <= TITLE_LINE for line in lines)
