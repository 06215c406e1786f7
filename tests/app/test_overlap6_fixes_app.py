"""overlap6's findings on the Overlap page (AppTest on its figures and layout, then Chromium at 1024 px with the
sidebar open, as tests/app/test_walk6b_fixes_app.py checks the default three masks), over saved masks of a tiny
mixture-of-experts model (tests/unit/test_overlap6_fixes.py has the builders):

1. Pairwise with 8 masks, or long names, side by side at 1024 px: 8 px cells, names over one another, the row names
   and the full-name key past the chart. Now one under the other, full width, where the key fits.
2. Per layer with experts: two heatmaps in half-page columns cut their titles and the pair, drew module kinds over
   one another; the expert grid's x axis read "module kind".
3. Pairwise × chance beside an empty mask: blank cells with no hover; now a grey "—" saying why.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from subnetviz.masks import MaskSet, save_mask_set
from tests.app.test_walk6b_fixes_app import FULL, GEOMETRY, HALF, _fits, _ok, _plain
from tests.app_fixtures import app_roots, open_page, plotly_specs, pointed_at
from tests.browser import E2E, start_server, wait_for_app, wait_for_charts

pytestmark = pytest.mark.slow

H, F, V, E = 12, 10, 33, 3
EIGHT = [f"uploads/seed-{i}" for i in range(8)]
LONG = [f"uploads/grpo-qwen-math-seed{s}-step500" for s in "ABCD"]
LONGEST = [f"uploads/grpo-qwen2.5-math-7b-instruct-lr1e-6-kl0.001-seed{s}-step500-final" for s in "ABC"]  # key: 88
CUT = "uploads/grp…eedA-step500 ∩ uploads/grp…eedB-step500"  # LONG's first pair, cut as the matrices cut it


def moe_shapes() -> dict[str, tuple[int, ...]]:
    """A tiny Qwen2-MoE: 2 layers, 3 experts and a shared expert, a router and a shared-expert gate."""
    s = {"model.embed_tokens.weight": (V, H)}
    for layer in range(2):
        p = f"model.layers.{layer}."
        s |= {p + f"self_attn.{m}_proj.weight": (H if m in "qo" else 4, H) for m in "qkvo"}
        s[p + "mlp.gate.weight"] = (E, H)
        for who in [*(f"experts.{e}" for e in range(E)), "shared_expert"]:
            s |= {p + f"mlp.{who}.{m}.weight": (F, H) for m in ("gate_proj", "up_proj")}
            s[p + f"mlp.{who}.down_proj.weight"] = (H, F)
        s[p + "mlp.shared_expert_gate.weight"] = (1, H)
    return s | {"model.norm.weight": (H,), "lm_head.weight": (V, H)}


@pytest.fixture(scope="module")
def moe_home(micro_zoo, tmp_path_factory):
    """A home over the micro zoo whose uploads hold 8 masks, 4 under 36-character names, 3 under 72-character ones
    (the full-name key's lines 88 characters) and an empty one, Z."""
    home = tmp_path_factory.mktemp("overlap6-home").resolve()
    (home / "zoo").symlink_to(os.path.realpath(micro_zoo.root), target_is_directory=True)
    (home / "uploads").mkdir()
    rng = np.random.default_rng(6)
    for name in [*EIGHT, *LONG, *LONGEST, "uploads/Z"]:
        density = 0.0 if name == "uploads/Z" else rng.uniform(0.1, 0.6)
        masks = {n: torch.from_numpy(rng.random(shape) < density) for n, shape in moe_shapes().items()}
        save_mask_set(home / f"{name}.safetensors", MaskSet(masks))
    return home


@pytest.fixture
def moe_env(moe_home):
    with pointed_at(moe_home, app_roots(moe_home)):
        yield moe_home


def _page(**query):
    """The page, and how many charts each of its rows of charts holds."""
    at = _ok(open_page("overlap", **query))
    rows: list[int] = []

    def walk(node) -> None:
        kids = list(getattr(node, "children", {}).values())
        charted = [k for k in kids if k.type == "column" and any(e.type == "plotly_chart" for e in k)]
        if charted:
            rows.append(len(charted))
        for k in kids:
            walk(k)

    walk(at.main)
    return at, rows


def test_eight_masks_or_long_names_draw_the_matrices_one_under_the_other(moe_env):
    at, rows = _page(ov_tab="Pairwise")
    assert rows == [2]  # the zoo's three update masks ("Δ grpo-s0"): side by side, as before (29 px cells)
    at, rows = _page(masks=EIGHT[:3], ov_masks=EIGHT[:3], ov_tab="Pairwise")
    assert rows == [1, 1]  # three of 14 characters: 17 px cells side by side
    for chosen in (EIGHT, LONG):
        at, rows = _page(masks=chosen, ov_masks=chosen, ov_tab="Pairwise")
        assert rows == [1, 1], rows
        for spec in plotly_specs(at):
            assert _fits(spec["layout"]["title"]["text"], FULL)


@pytest.mark.parametrize("view", ["value", "× per-tensor chance"])
def test_the_moe_heatmaps_are_full_width_with_the_pair_cut_and_an_expert_axis(moe_env, view):
    at, rows = _page(masks=LONG, ov_masks=LONG, ov_tab="Per layer", ov_view=view)
    assert rows == [1, 1], rows
    layer, expert = plotly_specs(at)
    for spec in (layer, expert):
        title = spec["layout"]["title"]["text"]
        assert _plain(title.split("<br>")[1]) == CUT and _fits(title, FULL), title
    assert layer["layout"]["xaxis"]["title"]["text"] == "module kind"
    assert expert["layout"]["xaxis"]["title"]["text"] == "expert"
    assert list(expert["data"][0]["x"]) == ["E0", "E1", "E2", "shared"]


def test_the_chance_matrices_grey_the_cells_beside_an_empty_mask(moe_env):
    chosen = [*EIGHT[:2], "uploads/Z"]
    at, _ = _page(masks=chosen, ov_masks=chosen, ov_tab="Pairwise", ov_view="× per-tensor chance")
    for spec in plotly_specs(at):
        assert len(spec["data"]) == 2, spec["layout"]["title"]["text"]  # the grey layer
        grey = spec["data"][1]
        dash = np.asarray(grey["text"]) == "—"
        assert dash[:2, 2].all() and dash[2, :2].all() and not dash[:2, :2].any() and not dash[2, 2]
        assert "no chance baseline to divide by" in np.asarray(grey["customdata"])[0, 2]


# --- in Chromium at 1024 px ------------------------------------------------------------------------------------
CUT_OFF = r"""() => Array.from(document.querySelectorAll("[data-testid='stPlotlyChart'] .js-plotly-plot")).map(gd => {
  const r = gd.getBoundingClientRect();
  const past = Array.from(gd.querySelectorAll("text")).map(t => [t.textContent, t.getBoundingClientRect()])
      .filter(([, b]) => b.width > 0 && (b.left < r.left - 1 || b.right > r.right + 1)).map(([t]) => t);
  const rows = Array.from(gd.querySelectorAll(".ytick text")).map(t => t.getBoundingClientRect().top).sort((a, b) => a - b);
  return {past, gaps: rows.slice(1).map((y, i) => y - rows[i]), cell: gd._fullLayout.xaxis._length};
})"""

CASES = {
    "8 masks": ("Pairwise", EIGHT, {}),
    "long names": ("Pairwise", LONG, {}),
    "long names, × chance": ("Pairwise", LONG, {"ov_view": "× per-tensor chance"}),
    "longest names": ("Pairwise", LONGEST, {}),
    "experts": ("Per layer", LONG, {"ov_view": "× per-tensor chance"}),
}


@pytest.fixture(scope="module")
def moe_url(moe_home):
    env = {**os.environ, "SUBNETVIZ_HOME": str(moe_home), "SUBNETVIZ_ROOTS": app_roots(moe_home)}
    proc, url = start_server({**env, "OMP_NUM_THREADS": "1"})
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.e2e
@E2E[1]
@pytest.mark.parametrize("case", CASES)
def test_at_1024_px_the_overlap_charts_of_many_or_long_masks_are_readable(browser, moe_url, case):
    from urllib.parse import urlencode

    tab, chosen, more = CASES[case]
    query = urlencode(
        [*(("masks", m) for m in chosen), *(("ov_masks", m) for m in chosen), ("ov_tab", tab), *more.items()]
    )
    ctx = browser.new_context(viewport={"width": 1024, "height": 1100})
    try:
        page = ctx.new_page()
        page.goto(f"{moe_url}/overlap?{query}")
        wait_for_app(page)
        assert wait_for_charts(page) == 2
        assert page.locator("[data-testid='stSidebar']").bounding_box()["width"] > 250  # the sidebar open
        for chart, cut in zip(page.evaluate(GEOMETRY), page.evaluate(CUT_OFF), strict=True):
            assert chart["width"] > HALF + 100, chart["title"]  # full width, one under the other
            assert not chart["past"], (chart["title"], chart["past"])
            assert not chart["crowded"], (chart["title"], chart["crowded"])
            assert not chart["under"], (chart["title"], chart["under"])
            assert not cut["past"], (chart["title"], cut["past"])  # no name, key or bar title past an edge
            if tab == "Pairwise":  # rows at least 24 px apart: a readable value in each cell, no name over another
                assert min(cut["gaps"]) >= 24, (chart["title"], cut["gaps"])
    finally:
        ctx.close()
