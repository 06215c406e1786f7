"""walk6's findings 2, 3, 4, 6 and 8 on the pages (the micro zoo): AppTest on the figures the pages build, and
Chromium at 1024 px with the sidebar open, where each was seen (tests/unit/test_walk6b_fixes.py has the builders).

2. Sparsity › One matrix: "changed (%)", the column panel's y title, was drawn inside the row panel.
3. One matrix's two images, Spectra's rank heatmaps, Overlap's o1 and Consensus titles ran past their charts.
4. Overlap › Pairwise: o1's last column name lay under its colour bar.
6. Layer × module heatmaps named 5 of 9 module kinds (Sparsity's three side by side, Spectra's 4 of 7).
8. What drives sparsity: the learning-rate axis read "1e-06, 1e-05, 0.0001".
"""

from __future__ import annotations

import html
import re

import pandas as pd
import pytest

from tests.app_fixtures import open_page, plotly_specs
from tests.browser import E2E, wait_for_app, wait_for_charts

pytestmark = pytest.mark.slow

HALF, FULL = 274, 564  # a chart's width (px) at 1024 px with the sidebar open: half the page, the page
TITLE_PX, SUB_PX = 7.5, 5.0  # a bold title's and a subtitle line's width a character, at most (test_walk5_fixes)
MODULES = ["q", "k", "v", "o", "gate", "up", "down", "attn_norm", "mlp_norm"]


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _plain(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _fits(title: str, width: int) -> bool:
    head, *subs = title.split("<br>")
    return 4 + TITLE_PX * len(_plain(head)) <= width and all(4 + SUB_PX * len(_plain(s)) <= width for s in subs)


def _charts(at) -> dict[str, dict]:
    """title (its first line, as text) -> the chart's spec."""
    return {_plain(s["layout"]["title"]["text"].split("<br>")[0]): s for s in plotly_specs(at)}


def test_one_matrix_titles_fit_and_its_panels_share_one_y_title(app_env):
    at = _ok(open_page("sparsity", sp_tab="One matrix"))
    charts = _charts(at)
    images = [s for t, s in charts.items() if t.startswith(("Which entries changed", "Signed update"))]
    (ratios,) = [s for t, s in charts.items() if t.startswith("Share of entries changed")]
    assert len(images) == 2
    for spec in images:
        title = spec["layout"]["title"]["text"]
        assert _fits(title, HALF), title
        assert "full resolution (a cell per entry)" in title and "layers.0.self_attn.q_proj.weight" in title
    assert _fits(ratios["layout"]["title"]["text"], FULL)
    assert ratios["layout"]["yaxis"]["title"]["text"] == "changed (%)"
    assert "title" not in ratios["layout"]["yaxis2"] and ratios["layout"]["yaxis2"]["matches"] == "y"


@pytest.mark.parametrize(
    "crit", [{"sp_crit": "relative", "sp_eta": "0.004"}, {"sp_crit": "1e-05"}, {"sp_crit": "exact"}]
)
def test_one_matrix_titles_fit_under_every_criterion_and_precision(app_env, crit):
    """The criterion and the precision under the titles, with the matrix: "Which entries changed (relative η =
    0.004 at bf16)" in the title ran past its half-page chart, "Signed update Δ = W_ft − W_base at bf16" too."""
    at = _ok(open_page("sparsity", sp_tab="One matrix", precision="bf16", **crit))
    charts = _charts(at)
    images = [s for t, s in charts.items() if t.startswith(("Which entries changed", "Signed update"))]
    (ratios,) = [s for t, s in charts.items() if t.startswith("Share of entries changed")]
    named = {"relative": "relative η = 0.004", "1e-05": "tol = 1e-05", "exact": "exact"}[crit["sp_crit"]]
    assert len(images) == 2
    for spec in images:
        title = spec["layout"]["title"]["text"]
        assert _fits(title, HALF), title
        assert "at bf16" in _plain(title) and "layers.0.self_attn.q_proj.weight" in title, title
    for spec in (images[0], ratios):
        assert f"{named} at bf16" in _plain(spec["layout"]["title"]["text"].replace("<br>", " · "))
    assert _fits(ratios["layout"]["title"]["text"], FULL)


def test_sparsity_heatmaps_name_every_module_kind_two_to_a_row(app_env):
    at = _ok(open_page("sparsity", sp_models=["grpo-s0", "grpo-s1", "dpo"]))
    heat = [s for s in plotly_specs(at) if s["data"][0]["type"] == "heatmap"]
    assert len(heat) == 3
    for spec in heat:
        x = spec["layout"]["xaxis"]
        assert x["tickmode"] == "array" and x["tickvals"] == x["ticktext"] == list(spec["data"][0]["x"]) == MODULES
        assert x["autotickangles"] == [0, 90]
    # the three heatmaps two to a row (three to a row left nine module kinds 7 px each at 1024 px)
    holding = [c for c in at.columns if any(e.type == "plotly_chart" for e in c)]
    assert len(holding) == 3 and {round(c.weight, 3) for c in holding} == {0.5}, [c.weight for c in holding]


def test_spectra_rank_titles_fit_and_name_every_module(app_env):
    at = _ok(open_page("spectra", spec_models=["grpo-s0"], spec_view="Effective and stable rank"))
    charts = _charts(at)
    assert set(charts) == {"grpo-s0: effective rank", "grpo-s0: stable rank"}
    for spec in charts.values():
        assert _fits(spec["layout"]["title"]["text"], HALF), spec["layout"]["title"]["text"]
        assert spec["layout"]["xaxis"]["tickvals"] == list(spec["data"][0]["x"])
    assert "(99 % of Σσ²) / min(m, n)" in charts["grpo-s0: effective rank"]["layout"]["title"]["text"]


@pytest.mark.parametrize("view", ["value", "× per-tensor chance"])
def test_overlap_pairwise_titles_fit_and_column_names_turn_upright(app_env, view):
    query = {"ov_view": view} if view != "value" else {}
    at = _ok(open_page("overlap", ov_tab="Pairwise", **query))
    charts = _charts(at)
    assert set(charts) == {"o1: share of the row mask", "Jaccard |A∩B| / |A∪B|"}
    o1 = charts["o1: share of the row mask"]["layout"]
    assert _plain(o1["title"]["text"].split("<br>")[1]).startswith("in the column mask")
    for spec in charts.values():
        assert _fits(spec["layout"]["title"]["text"], HALF), spec["layout"]["title"]["text"]
        assert spec["layout"]["xaxis"]["autotickangles"] == [0, 90]


def test_overlap_consensus_title_fits(app_env):
    at = _ok(open_page("overlap", ov_tab="Consensus"))
    (spec,) = plotly_specs(at)
    title = spec["layout"]["title"]["text"]
    assert _fits(title, FULL), title
    head, *subs = [_plain(x) for x in title.split("<br>")]
    assert head == "Consensus: in how many masks is a changed parameter?" and subs[0] == "markers: per-tensor chance"


@pytest.fixture
def lr_grid(planted_grid) -> str:
    """A one-seed grid over three learning rates and two step counts, as the newest finished drivers run."""
    from subnetviz.experiments.drivers import COLUMNS

    base = {"seed": 0, "algorithm": "grpo", "accuracy": 0.5, "kl_forward": 0.004, "learning_rate": 1e-5, "steps": 8}
    base |= {"beta": 0.0, "max_grad_norm": 1.0, "optimizer": "adamw_torch", "data": "task", "train_seconds": 1.0}
    base |= {"status": "done", "note": "", "grid_version": 2}
    axes = {"learning_rate": ["1e-06", "1e-05", "0.0001"], "steps": ["4", "8"]}
    rows = [
        {**base, "factor": f, "value": v, "precision": p, "sparsity": 0.9 - 0.2 * i if p == "bf16" else 0.004}
        for f, values in axes.items()
        for i, v in enumerate(values)
        for p in ("bf16", "fp32")
    ]
    return planted_grid(pd.DataFrame(rows, columns=COLUMNS))


def test_drivers_charts_name_learning_rates_in_one_notation(lr_grid):
    at = _ok(open_page("drivers", dr_run=lr_grid))
    (factors,) = [s for s in plotly_specs(at) if "against each factor" in s["layout"]["title"]["text"]]
    assert factors["layout"]["xaxis"]["ticktext"] == ["1e-6", "1e-5", "1e-4"]
    pairs = _ok(open_page("drivers", dr_run=lr_grid, dr_tab="bf16 vs fp32"))
    (spec,) = [s for s in plotly_specs(pairs) if "bf16 vs fp32" in s["layout"]["title"]["text"]]
    runs = spec["layout"]["xaxis"]["categoryarray"]
    assert runs[:3] == ["learning_rate=1e-6 s0", "learning_rate=1e-5 s0", "learning_rate=1e-4 s0"]


# --- in Chromium at 1024 px ------------------------------------------------------------------------------------
GEOMETRY = r"""() => Array.from(document.querySelectorAll("[data-testid='stPlotlyChart'] .js-plotly-plot")).map(gd => {
  const r = gd.getBoundingClientRect(), L = gd._fullLayout;
  const plots = Object.values(L._plots || {}).map(p => ({x: p.xaxis, y: p.yaxis,
      x0: r.left + p.xaxis._offset, x1: r.left + p.xaxis._offset + p.xaxis._length,
      y0: r.top + p.yaxis._offset, y1: r.top + p.yaxis._offset + p.yaxis._length}));
  const hit = (b, q) => Math.min(b.right, q.x1 !== undefined ? q.x1 : q.right) - Math.max(b.left, q.x0 !== undefined ? q.x0 : q.left) > 1
      && Math.min(b.bottom, q.y1 !== undefined ? q.y1 : q.bottom) - Math.max(b.top, q.y0 !== undefined ? q.y0 : q.top) > 1;
  const past = Array.from(gd.querySelectorAll(".g-gtitle text, .cbtitle text")).map(t => [t.textContent, t.getBoundingClientRect()])
      .filter(([, b]) => b.width > 0 && b.right > r.right + 1).map(([t, b]) => [t, Math.round(b.right - r.right)]);
  const inside = [];  // a y-axis title inside another panel's plotting area
  gd.querySelectorAll("g[class^='g-y'][class$='title'] text").forEach(t => {
    const own = (t.closest("g[class]").getAttribute("class").match(/g-(y\d*)title/) || [])[1];
    plots.filter(p => p.y._id !== own).forEach(p => { if (hit(t.getBoundingClientRect(), p)) inside.push(t.textContent); });
  });
  const bar = gd.querySelector(".colorbar .cbfills");
  const under = bar ? Array.from(gd.querySelectorAll(".xtick text")).filter(t => hit(t.getBoundingClientRect(), bar.getBoundingClientRect()))
      .map(t => t.textContent) : [];
  const heat = (gd._fullData || []).find(d => d.type === "heatmap");
  // neighbouring tick labels drawn over each other: upright ones closer than their font size, others overlapping
  const xt = Array.from(gd.querySelectorAll(".xtick text")).map(t => [t.textContent, t.getBoundingClientRect(),
      parseFloat(getComputedStyle(t).fontSize), /rotate\(-?90/.test(t.getAttribute("transform") || "")]);
  const crowded = xt.slice(1).filter(([, b, size, upright], i) => { const a = xt[i][1];
      return upright ? (b.left + b.right - a.left - a.right) / 2 < size : b.left < a.right - 1; })
      .map(([t, b, size], i) => `${t}: ${((b.left + b.right - xt[i][1].left - xt[i][1].right) / 2).toFixed(1)} px from the last, ${size} px font`);
  return {title: (L.title.text || "").replace(/<[^>]+>/g, " "), past, inside, under, crowded, width: r.width,
          category: L.xaxis.type === "category",
          columns: heat && heat.x ? Array.from(heat.x).map(String) : null,
          ticks: Array.from(gd.querySelectorAll(".xtick text")).map(t => t.textContent)};
})"""

VIEWS = {
    "sparsity": "sparsity?sp_models=grpo-s0&sp_models=grpo-s1&sp_models=dpo",
    "one matrix": "sparsity?sp_tab=One+matrix",
    "spectra rank": "spectra?spec_models=grpo-s0&spec_view=Effective+and+stable+rank",
    "pairwise": "overlap?ov_tab=Pairwise",
    "consensus": "overlap?ov_tab=Consensus",
}


@pytest.mark.e2e
@E2E[1]
@pytest.mark.parametrize("view", VIEWS)
def test_at_1024_px_nothing_is_cut_or_drawn_over_another_panel(browser, app_url, view):
    ctx = browser.new_context(viewport={"width": 1024, "height": 1100})
    try:
        page = ctx.new_page()
        page.goto(f"{app_url}/{VIEWS[view]}")
        wait_for_app(page)
        wait_for_charts(page)
        width = page.locator("[data-testid='stSidebar']").bounding_box()["width"]
        assert width > 250  # the sidebar open, as Streamlit opens it: the width the findings were seen at
        for chart in page.evaluate(GEOMETRY):
            assert not chart["past"], (chart["title"], chart["past"])  # every title line inside its chart
            assert not chart["inside"], (chart["title"], chart["inside"])
            assert not chart["under"], (chart["title"], chart["under"])
            assert not chart["crowded"], (chart["title"], chart["width"], chart["crowded"])
            if chart["category"] and chart["columns"] and len(chart["columns"]) <= 32:  # every column named
                assert chart["ticks"] == chart["columns"], chart["title"]
    finally:
        ctx.close()
