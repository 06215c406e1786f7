"""The principal-weight scatter (Spectra › Subspaces) is drawn half the page wide: 274 px at 1024 px with the
sidebar open. Its legend beside the plot left the plot 82 px wide, and its y-axis title ("share of the update inside
principal weights (%)") was longer than the plot and ran up into the title's last line. The legend and the note of
what is not drawn lie under the x-axis title now, one under the other, and the plot keeps 310 px of height. Measured
on the figure drawn by plotly.js in Chromium."""

from __future__ import annotations

import pytest

from subnetviz.figures.subspaces import principal_overlap_scatter
from tests.app.test_walk6b_fixes_app import HALF
from tests.browser import NEEDS_CHROMIUM
from tests.unit.test_spectra6_fixes import O1, Q0, Q1, _table
from tests.unit.test_walk6a_fixes import _drawn, _overlap

pytestmark = NEEDS_CHROMIUM

PROBE = r"""() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => {
  const r = gd.getBoundingClientRect(), L = gd._fullLayout;
  const box = (e) => { const b = e.getBoundingClientRect(); return {left: b.left, right: b.right, top: b.top,
      bottom: b.bottom}; };
  return {fig: {left: r.left, right: r.right, top: r.top, bottom: r.bottom},
    plot: {left: r.left + L.xaxis._offset, right: r.left + L.xaxis._offset + L.xaxis._length,
           top: r.top + L.yaxis._offset, bottom: r.top + L.yaxis._offset + L.yaxis._length},
    title: Array.from(gd.querySelectorAll('.g-gtitle text')).map(box),
    xtitle: box(gd.querySelector('.g-xtitle text')), ytitle: box(gd.querySelector('.g-ytitle text')),
    legend: box(gd.querySelector('.legend .bg')), notes: Array.from(gd.querySelectorAll('.annotation')).map(box)};
})"""

MODULES = ["self_attn.k_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.down_proj", "mlp.gate_proj"]
TITLE = "Update mask inside the<br>principal weights vs chance<br><sup>grpo-s0 vs base · top-K = 16</sup>"  # the page's


@pytest.mark.parametrize("zero", [[], [Q0, Q1, O1]], ids=["all-drawn", "with-a-note"])
@pytest.mark.parametrize("kinds", [2, 5])
def test_the_legend_and_the_note_lie_under_the_plot_which_keeps_its_size(zero, kinds):
    drawn = [f"model.layers.{i}.{m}.weight" for i in range(3) for m in MODULES[:kinds]]
    (d,) = _drawn([principal_overlap_scatter(_table(zero, drawn), title=TITLE)], HALF, probe=PROBE)
    plot, legend = d["plot"], d["legend"]
    assert plot["right"] - plot["left"] >= 160 and plot["bottom"] - plot["top"] >= 300, plot  # was 82 px wide
    assert max(t["bottom"] for t in d["title"]) <= plot["top"] - 2  # the title's lines above the plot
    assert d["ytitle"]["top"] >= plot["top"] - 1 and d["ytitle"]["bottom"] <= plot["bottom"] + 1  # not up into them
    assert legend["top"] >= d["xtitle"]["bottom"] and legend["right"] <= d["fig"]["right"] + 1  # under the axis title
    assert not any(_overlap(legend, n) for n in d["notes"])
    for box in [legend, *d["notes"]]:
        assert box["bottom"] <= d["fig"]["bottom"] and box["left"] >= d["fig"]["left"]  # inside the figure
    assert len(d["notes"]) == (1 if zero else 0)
    if zero:
        assert d["notes"][0]["top"] >= legend["bottom"]
