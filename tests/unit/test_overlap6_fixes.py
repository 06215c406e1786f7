"""overlap6's findings in the figure builders (tests/app/test_overlap6_fixes_app.py has the page and Chromium):

1. Pairwise matrices of 6–8 masks or of long names side by side at 1024 px: 8 px cells, names drawn over one another,
   the full-name key past the chart. :func:`matrices_per_row` sets them one under the other, full width, where the
   key fits; the upright cut names get their height.
2. The layer × expert grid's x axis was titled "module kind".
3. The × chance matrix left a mask beside an empty one blank, with no hover: a grey "—" and the reason now.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from subnetviz import figures
from subnetviz.figures.overlap import KEY_LINE, matrices_per_row

LONG = [f"uploads/grpo-qwen-math-seed{s}-step500" for s in "ABCD"]


@pytest.mark.parametrize(
    ("labels", "view", "per_row"),
    [
        (["Δ grpo-s0", "Δ grpo-s1", "Δ grpo-s2"], "value", 2),  # the demo's default: 29 px cells side by side
        (["Δ grpo-s0", "Δ grpo-s1", "Δ grpo-s2"], "ratio", 1),  # the × chance colour bar is wider: 21 px
        ([f"Δ grpo-s{i}" for i in range(6)], "value", 1),  # six masks: 11 px apart side by side
        ([*(f"Δ grpo-s{i}" for i in range(7)), "masks/grpo-seed0"], "value", 1),  # the zoo's eight: 8 px cells
        (LONG, "value", 1),  # 24-character cut names leave no plot at half width
        (["a", "b"], "value", 2),
    ],
)
def test_matrices_side_by_side_only_where_their_cells_stay_readable(labels, view, per_row):
    assert matrices_per_row(labels, view) == per_row


def test_a_matrix_of_cut_names_gets_the_height_of_its_upright_names():
    pw = pd.DataFrame(
        [
            {"a": a, "b": b, "o1": 0.5, "o2": 0.5, "jaccard": 0.3, "o1_chance_per_tensor": 0.2}
            for i, a in enumerate(LONG)
            for b in LONG[i + 1 :]
        ]
    )
    fig = figures.pairwise_matrix(pw, value="o1", labels=LONG)
    key = fig.layout.xaxis.title.text.split("<br>")[1:]
    assert len(key) == 4  # one line a name: "uploads/grp…eedA-step500 = uploads/grpo-qwen-math-seedA-step500"
    assert all(len(line.split(">", 1)[1].split("<", 1)[0]) <= KEY_LINE for line in key)
    assert matrices_per_row(LONG) == 1  # with a key: full width, where its lines fit (not half, 72 px past)
    to_short = {x: x[-13:-8] for x in LONG}  # "seedA"
    short = figures.pairwise_matrix(pw.assign(a=pw["a"].map(to_short), b=pw["b"].map(to_short)), value="o1")
    # the 24-character cut names upright under the matrix: 98 px more than 5-character ones (it had 96 px left)
    assert fig.layout.height - short.layout.height - 15 * len(key) == 7 * 14


def test_the_layer_by_expert_grid_titles_its_columns_expert():
    df = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1],
            "module": ["E0", "shared", "E0", "shared"],
            "jaccard": [0.2, 0.3, 0.4, 0.5],
            "jaccard_chance_per_tensor": [0.1, 0.1, 0.2, 0.2],
        }
    )
    for view in ("value", "ratio"):
        assert figures.overlap_layer_heatmap(df, view=view, x_title="expert").layout.xaxis.title.text == "expert"
        assert figures.overlap_layer_heatmap(df, view=view).layout.xaxis.title.text == "module kind"


def _with_empty_mask() -> pd.DataFrame:
    """A, B (half in each other) and Z, empty: A's share in Z is 0 against a chance of 0; Z's own share is 0 / 0."""
    row = {"o1": 0.5, "o2": 0.5, "jaccard": 1 / 3}
    chance = {"o1_chance_per_tensor": 0.25, "o2_chance_per_tensor": 0.25, "jaccard_chance_per_tensor": 0.14}
    none = {"o1": 0.0, "o2": np.nan, "jaccard": 0.0}
    no_chance = {"o1_chance_per_tensor": 0.0, "o2_chance_per_tensor": np.nan, "jaccard_chance_per_tensor": 0.0}
    return pd.DataFrame(
        [
            {"a": "A", "b": "B", **row, **chance},
            {"a": "A", "b": "Z", **none, **no_chance},
            {"a": "B", "b": "Z", **none, **no_chance},
        ]
    )


def _grey(fig) -> dict[tuple[str, str], str]:
    """(row, column) -> the hover's reason, of every grey "—" cell."""
    assert len(fig.data) == 2, "no grey layer"
    grey = fig.data[1]
    text, why = np.asarray(grey.text), np.asarray(grey.customdata)
    assert grey.hovertemplate.startswith("row %{y} · column %{x}<br>%{customdata}")
    return {(y, x): str(why[i, j]) for i, y in enumerate(grey.y) for j, x in enumerate(grey.x) if text[i, j] == "—"}


def test_the_chance_matrix_greys_the_cells_beside_an_empty_mask_and_says_why():
    labels = ["A", "B", "Z"]
    o1 = _grey(figures.pairwise_matrix(_with_empty_mask(), value="o1", view="ratio", labels=labels))
    # Z's column: A's share inside Z is 0 and chance 0; Z's row: its own share is 0 / 0. The diagonal stays blank.
    assert set(o1) == {("A", "Z"), ("B", "Z"), ("Z", "A"), ("Z", "B")}
    assert o1[("A", "Z")] == "one mask has no weight in the tensors compared: o1 0, and no chance baseline to divide by"
    assert "row mask has no weight" in o1[("Z", "A")] and "(o1) is 0 / 0" in o1[("Z", "A")]
    jac = _grey(figures.pairwise_matrix(_with_empty_mask(), value="jaccard", view="ratio", labels=labels))
    assert set(jac) == {("A", "Z"), ("B", "Z"), ("Z", "A"), ("Z", "B")}
    assert all(why.startswith("one mask has no weight") and "Jaccard 0" in why for why in jac.values())
    # values: Jaccard 0 beside Z is a value (0.0%), only o1's 0 / 0 row is grey
    assert _grey(figures.pairwise_matrix(_with_empty_mask(), value="o1", labels=labels)).keys() == {
        ("Z", "A"),
        ("Z", "B"),
    }
    assert len(figures.pairwise_matrix(_with_empty_mask(), value="jaccard", labels=labels).data) == 1
