"""Fixes of the sixth Spectra/Subspaces review (tests/app/test_spectra6_fixes_app.py has them in Chromium).

1. The singular-value chart's subtitle was one line: below full rank (the hidden-σ count) and with a lone σ's key it
   ran 200–300 px past the page-wide chart at 1024 px with the sidebar open (564 px), and the part that explains the
   chart was cut off. Now it is broken at " · " (``style.subtitle``) and the top margin grows with it.
2. The principal-weight chart's zero-base explanation was one centred line of about 80 characters in a half-width
   chart (274 px at 1024 px): cut off on both sides, at 1440 px too. Now it is wrapped, as is the same footnote
   under a chart that draws other matrices, and the most-rotated chart's (a page-wide chart, several names).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from subnetviz.figures.spectra import model_spectra
from subnetviz.figures.style import title_margin
from subnetviz.figures.subspaces import principal_overlap_scatter, rotated_curves
from tests.app.test_walk6b_fixes_app import FULL, HALF, _fits, _plain

NO_DATA_PX = 7.0  # a character of a no-data message (16 px) at most; about 6.5 px measured in Chromium
NOTE_PX, NOTE_LEFT = 5.2, 70  # a footnote's (11 px; about 5 px measured), from the plot's left edge, 70 px in
Q0, Q1, O1 = (f"layers.{i}.self_attn.{m}_proj.weight" for i, m in ((0, "q"), (1, "q"), (1, "o")))
MOE = "layers.10.block_sparse_moe.experts.3.w1.weight"  # longer than a half-width chart's line


# --- 1. the singular values' subtitle ----------------------------------------------------------------------
def _frames(models: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sigma and shape frames of planted updates below full rank: q_proj rank 2 (62 numerical zeros), down_proj
    one changed column (rank 1: a lone σ), each with a scattered baseline of the same entries (float64 SVD)."""
    g = torch.Generator().manual_seed(6)
    parts, shapes = [], []
    for model in models:
        q = 0.05 * torch.randn(64, 2, generator=g) @ torch.randn(2, 64, generator=g)
        down = torch.zeros(64, 128)
        down[:, 5] = 1e-3 * (1 + torch.rand(64, generator=g))
        for name, module, delta in ((Q0, "q", q), ("layers.0.mlp.down_proj.weight", "down", down)):
            base = torch.zeros_like(delta).view(-1)
            nz = delta.flatten()[delta.flatten() != 0]
            base[torch.randperm(base.numel(), generator=g)[: nz.numel()]] = nz
            for kind, d in (("update", delta), ("random", base.view_as(delta))):
                s = torch.linalg.svdvals(d.double()).numpy()
                parts.append(
                    pd.DataFrame({"model": model, "name": name, "index": np.arange(1, s.size + 1), "sigma": s}).assign(
                        kind=kind
                    )
                )
            shapes.append({"model": model, "name": name, "rows": delta.shape[0], "cols": delta.shape[1]})
            shapes[-1]["module"] = module
    return pd.concat(parts, ignore_index=True), pd.DataFrame(shapes)


@pytest.mark.parametrize("models", [["ftA", "ftB"], ["ftA"]])
def test_the_singular_value_subtitle_fits_a_page_wide_chart_below_full_rank(models):
    sig, shapes = _frames(models)
    fig = model_spectra(sig, shapes, models)
    title = fig.layout.title.text
    head, *subs = title.split("<br>")
    # the first line as it was: the model named where one is chosen
    assert head == "Singular values of updates" + (": ftA" if len(models) == 1 else "")
    assert _fits(title, FULL), title  # each line inside 564 px: one ran to 1,000 px
    assert len(subs) >= 2 and all(s.startswith("<sup>") and s.endswith("</sup>") for s in subs)
    said = " · ".join(_plain(s) for s in subs)  # (each break stands for a " · ")
    assert "dashed: random sparse baseline · dotted: rank threshold" in said
    assert "a lone σ: a dot (baseline: a ring)" in said
    hidden = int(re.search(r"([\d,]+) σ under the rank threshold \(numerical zeros\) not drawn", said)[1])
    assert hidden >= len(models) * (62 + 63)  # (the updates' numerical zeros, and any of the baselines)
    assert said.startswith("colour: model · ") == (len(models) > 1)
    # the title's lines have room above the plot, which keeps its height
    assert fig.layout.margin.t == title_margin(title) > 80
    assert fig.layout.height - fig.layout.margin.t - fig.layout.margin.b == 320  # (the plot's own height)


@pytest.mark.parametrize("models", [["grpo-qwen-math-seed0", "grpo-qwen-math-seed1"], ["ftA"]])
def test_the_singular_value_legend_lies_under_the_axis_title_in_chromium(models):
    """walk7: with two models at 1024 px (564 px) the legend, set at -0.2 of the plot's height, lay on the x-axis
    title, and its two-to-a-row names shrank the plot to about 150 px."""
    from tests.unit.test_walk6a_fixes import _drawn

    probe = r"""() => { const gd = document.querySelector('.js-plotly-plot'); const b = e => e.getBoundingClientRect();
      return {fig: b(gd).bottom, legend: [b(gd.querySelector('.legend')).top, b(gd.querySelector('.legend')).bottom],
              xtitle: b(gd.querySelector('.g-xtitle text')).bottom, plot: b(gd.querySelector('.nsewdrag')).height}; }"""
    drawn = _drawn([model_spectra(*_frames(models), models)], FULL, probe=probe)
    assert drawn["xtitle"] <= drawn["legend"][0] and drawn["legend"][1] <= drawn["fig"] + 1, drawn
    assert drawn["plot"] >= 300, drawn


# --- 2. the zero-base explanations --------------------------------------------------------------------------
def _table(zero: list[str], drawn: list[str] = ()) -> pd.DataFrame:
    """A subspaces table: changed matrices whose base is all zero (``zero``: no overlap, no angles) and others
    with a principal-weight overlap and angles (``drawn``)."""
    rows = [
        {"name": n, "module": n.split(".")[-2], "principal_overlap": np.nan, "angle_left_max": np.nan} for n in zero
    ]
    rows += [{"name": n, "module": n.split(".")[-2], "principal_overlap": 0.02, "angle_left_max": 40.0} for n in drawn]
    df = pd.DataFrame(rows).assign(principal_overlap_chance=0.01, changed=256)
    df["sv_ratio_mean"] = np.where(df["principal_overlap"].isna(), np.nan, 1.0)
    return df.assign(angle_right_max=df["angle_left_max"])


def _lines(text: str) -> list[str]:
    return [_plain(x) for x in re.split(r"<br\s*/?>", text)]


def _centred_fit(text: str, width: int) -> bool:
    return all(NO_DATA_PX * len(line) + 8 <= width for line in _lines(text))


def _note_fit(text: str, width: int) -> bool:
    return all(NOTE_LEFT + NOTE_PX * len(line) <= width for line in _lines(text))


def _words(text: str) -> str:
    return " ".join(" ".join(_lines(text)).split())


@pytest.mark.parametrize("zero", [[Q0], [Q0, Q1, O1], [MOE]], ids=["one", "three", "a long name"])
def test_the_principal_weight_chart_says_why_it_is_empty_inside_its_half_width_chart(zero):
    fig = principal_overlap_scatter(_table(zero))
    (note,) = fig.layout.annotations
    assert _centred_fit(note.text, HALF), _lines(note.text)  # one line of 535 px in a chart of 274
    said = _words(note.text)
    if zero == [MOE]:  # broken after its dots, nowhere else
        assert MOE not in said and MOE in said.replace(". ", ".")
        said = said.replace(". ", ".")
    names = f"{zero[0]}, {zero[1]} and 1 more" if len(zero) > 1 else zero[0]
    assert said == f"{len(zero)} changed matri{'ces' if len(zero) > 1 else 'x'} whose base matrix is all zero " + (
        f"({names}), so no principal weights"
    )


def test_the_principal_weight_footnote_fits_beside_the_matrices_it_draws():
    k, v = "layers.0.self_attn.k_proj.weight", "layers.0.self_attn.v_proj.weight"
    fig = principal_overlap_scatter(_table([Q0, Q1, O1], [k, v]))
    assert len(fig.data) == 3  # k, v and the chance diagonal
    (note,) = fig.layout.annotations
    assert _note_fit(note.text, HALF), _lines(note.text)
    assert _words(note.text) == (
        f"Not drawn: 3 changed matrices whose base matrix is all zero ({Q0}, {Q1} and 1 more), so no principal weights."
    )
    # (the room it takes under the plot: tests/unit/test_principal_scatter_room.py, in Chromium)


def test_the_most_rotated_chart_says_it_inside_its_page_wide_chart():
    k = "layers.0.self_attn.k_proj.weight"
    vectors = pd.DataFrame({"name": k, "index": range(4), "angle_left": [1.0, 2.0, 3.0, 40.0]})
    for zero, drawn in (([Q0, Q1, O1, MOE], []), ([Q0, Q1, O1, MOE], [k])):
        fig = rotated_curves(_table(zero, drawn), vectors)
        (note,) = fig.layout.annotations
        fits = _note_fit if drawn else _centred_fit
        assert fits(note.text, FULL), _lines(note.text)
        assert f"whose base matrix is all zero ({Q0}, {Q1} and 2 more), so no top-K subspace" in _words(note.text)
