"""Behaviour page, seventh review (behser7), without Streamlit: a prompt named by its set and its number there
(prompt 16 of two sets of 16 is the second set's first), and the line a link's multiple choice gets when some of
its entries name nothing on offer."""

from __future__ import annotations

import pandas as pd

from subnetviz import uilogic
from subnetviz.figures import behavior as B


def _frame(sets: dict[str, list[int]]) -> pd.DataFrame:
    """Token-like rows: three positions per prompt, the rows shuffled (a frame's order is not its prompts')."""
    rows = [{"prompt": p, "set": s, "position": t} for s, ps in sets.items() for p in ps for t in range(3)]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_a_prompt_is_placed_in_its_set_by_its_number_there():
    frame = _frame({"A": [0, 1, 2], "B": [3, 4]})
    assert B.prompt_places(frame) == {0: ("A", 0), 1: ("A", 1), 2: ("A", 2), 3: ("B", 0), 4: ("B", 1)}
    assert B.prompt_name(("B", 0)) == "set B, prompt 0"
    # results that name no set: each prompt by its own number
    assert B.prompt_places(frame.drop(columns="set")) == {p: (None, p) for p in range(5)}
    assert B.prompt_name((None, 3)) == "prompt 3"
    assert B.prompt_places(frame.iloc[:0]) == {}


def test_the_per_prompt_hover_names_the_set():
    prompts = pd.DataFrame(
        {"model": ["m"] * 4, "prompt": [0, 1, 2, 3], "set": ["A", "A", "B", "B"], "kl_forward": [1.0, 2.0, 3.0, 4.0]}
    )
    fig = B.prompt_spread(prompts)
    assert list(fig.data[0].customdata) == ["set A, prompt 0", "set A, prompt 1", "set B, prompt 0", "set B, prompt 1"]
    assert fig.data[0].hovertemplate.startswith("%{customdata}: ")


def test_a_links_entries_not_on_offer_are_named_with_what_is_shown():
    among = "this server's prompt sets"
    assert uilogic.stale_choices_line("prompt set", [], among, ["A"]) is None
    assert (
        uilogic.stale_choices_line("prompt set", ["x"], among, ["A"])
        == "The link's prompt set x is not among this server's prompt sets; A is shown instead."
    )
    assert (
        uilogic.stale_choices_line("mask", ["x", "y"], "the masks on offer here", None)
        == "The link's masks x, y are not among the masks on offer here; they are left out."
    )
    assert uilogic.stale_choices_line("mask", ["x"], "the masks on offer here", None).endswith("; it is left out.")
    assert uilogic.stale_choices_line("mask", ["x"], "the masks", ["a", "b"]).endswith("; a, b are shown instead.")
    assert uilogic.stale_choices_line("mask", ["x"], "the masks", []).endswith("; none is shown instead.")
    many = uilogic.stale_choices_line("mask", [f"m{i}" for i in range(5)], "the masks", None)
    assert many.startswith("The link's masks m0, m1, m2 and 2 more are not among the masks;")
