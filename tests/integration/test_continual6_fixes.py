"""Continual results, seventh look (continual6 review), without Streamlit.

- A cut-off or missing ``frames/*.parquet`` in a run folder raised pyarrow's ArrowInvalid (FileNotFoundError),
  which the page called a bug; now one ConfigError line naming the file.
- The Summary titles ran past a chart half the page wide at 1024 px (274 px): the forgetting title by 81 px, the
  setting line under both by 3 px.
- A NaN final accuracy (a damaged or hand-edited result) made the SupSup note read "55.0 % vs nan %", and a NaN
  cell below the diagonal was drawn in the grey that means "task not trained yet".
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from subnetviz.errors import ConfigError
from subnetviz.figures import accuracy_matrix
from subnetviz.figures import continual as cf
from subnetviz.figures.style import GREY_CELL
from subnetviz.supermask.job import load_result, save_result
from subnetviz.supermask.metrics import ContinualResult, RunResult, supsup_note

FT = np.array([[0.9, 0.1, 0.1], [0.5, 0.9, 0.1], [0.3, 0.6, 0.95]])
SUP = np.array([[0.5, 0.1, 0.1], [0.5, 0.55, 0.1], [0.5, 0.55, 0.6]])
TITLE_CHARS = 34  # a bold title line: ~7.5 px a character, the chart 274 px wide at 1024 px (titles.py measured)
SUBTITLE_CHARS = 48  # a <sup> line: ~5.3 px a character (56 ran 3 px past)


def _result(ft=FT, sup=SUP, seeds=(0, 1), densities=(0.2,)) -> ContinualResult:
    runs = []
    for seed in seeds:
        runs.append(RunResult("permuted-digits", "finetune", "finetune", False, 1.0, seed, ft, np.full(3, 0.1)))
        for d in densities:
            masks = tuple(
                {"l.weight": torch.rand(4, 5, generator=torch.Generator().manual_seed(t)) < d} for t in range(3)
            )
            runs.append(RunResult("permuted-digits", "supsup", "SupSup", False, d, seed, sup, np.full(3, 0.1), masks))
    return ContinualResult("permuted-digits", tuple(runs))


def _lines(title: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", line) for line in title.split("<br>")]


# --- 1: a damaged frame file ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "unreadable (cut off or not a Parquet"),
        (lambda p: p.write_bytes(b"not parquet at all"), "unreadable (cut off or not a Parquet"),
        (lambda p: p.unlink(), "missing"),
    ],
    ids=["cut-off", "not-parquet", "missing"],
)
def test_a_damaged_frame_file_is_one_line_naming_it(tmp_path, damage, said):
    save_result(_result(), tmp_path)
    assert set(load_result(tmp_path)) >= {"summary", "accuracy"}  # (the premise: the run reads whole)
    path = tmp_path / "frames" / "accuracy.parquet"
    damage(path)
    with pytest.raises(ConfigError) as info:
        load_result(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{path}: {said}") and "Launch the run again" in message, message
    assert "\n" not in message


# --- 2: titles that fit a half-width chart at 1024 px ------------------------------------------------------------
def test_the_summary_titles_fit_a_half_width_chart():
    """The forgetting title (50 characters) and the setting line under both Summary charts (56) ran past the chart;
    so would the accuracy-vs-density title (38) of a run with two densities."""
    one = _result().to_frames()["summary"]
    two = _result(densities=(0.1, 0.2)).to_frames()["summary"]
    figs = [cf.forgetting_bars(one, 0.2), cf.accuracy_vs_density(one), cf.accuracy_vs_density(two)]
    for fig in figs:
        lines = _lines(fig.layout.title.text)
        assert len(lines[0]) <= TITLE_CHARS and max(map(len, lines[1:])) <= SUBTITLE_CHARS, lines
        assert fig.layout.margin.t >= 80 + 18 * (len(lines) - 2)  # room above the plot for every line
    assert _lines(figs[0].layout.title.text) == [
        "Forgetting (max drop once learned)",
        "at density 20 % (finetune: dense)",
        "mean ± sd over 2 seeds",
    ]


# --- 3: a NaN accuracy -------------------------------------------------------------------------------------------
def test_the_supsup_note_claims_no_order_of_a_nan_final_accuracy():
    ft = FT.copy()
    ft[2, 0] = np.nan  # finetune's final accuracy is NaN
    for a, expected in ((FT, True), (ft, False)):
        frames = _result(ft=a).to_frames()
        note = supsup_note(frames["summary"], frames["accuracy"], 0.2)
        assert (note is not None) == expected, note  # (the premise: the finite run has the note)
    assert note is None or "nan" not in note


def test_a_nan_accuracy_below_the_diagonal_is_marked_not_grey():
    A = FT.copy()
    A[2, 0] = A[1, 2] = np.nan  # below the diagonal; just right of it (task 3 before it was trained)
    tasks = ["task 1", "task 2", "task 3"]
    fig = cf.mark_missing_accuracies(accuracy_matrix(A, tasks), A)
    assert len(fig.data) == 2
    marked = fig.data[1]
    z = np.array(marked.z, dtype=float)
    assert np.argwhere(~np.isnan(z)).tolist() == [[1, 2], [2, 0]]  # those two, not A[0, 2] (not trained yet)
    assert marked.text[2][0] == "n/a" and marked.text[0][2] == ""
    assert {c for _, c in marked.colorscale} == {cf.MISSING_CELL} and cf.MISSING_CELL != GREY_CELL
    assert list(marked.x) == tasks and list(marked.y) == tasks
    whole = cf.mark_missing_accuracies(accuracy_matrix(FT, tasks), FT)
    assert len(whole.data) == 1  # nothing missing: nothing drawn
