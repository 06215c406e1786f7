"""Fixes from walk6 (every page at 1024 px with the sidebar open, and at 1600 px), on the app: AppTest, and the widths
in Chromium at 1024 px.

1. Bigram's eight headline numbers were four to a row whatever their width: at 1024 px "903 (0.204 %)" read
   "903 (0…", "0.630 ± < 0.001" "0.630 …" and "-4.00e-04" "-4.00e…", and the labels "Δ bits/token, subne…". They come
   as many to a row as show whole (uilogic.metrics_per_row), at most two (the longest labels need half the column);
   the kept weights' share is in grey under their count (a large mask's "145,000 (0.170 %)" took a row of its own).
3. Bigram › Train a mask: the run chart's title was one line of 100 characters, 167 px past the chart's right edge;
   it breaks at its " · " as the Training page's does. The Ablation charts (half the page wide) cut the mask's run
   id, and the Residual stream's three covariance maps (a third each) cut their titles, run id and colour-bar
   title: the long lines under their titles break at " · ", and the maps come two to a row.
7. Home: three cards a row cut "Bigram subnetworks", "What drives sparsity" and "Continual learning" at 1024 px (a
   page link's label does not wrap); the cards come two to a row.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from urllib.parse import urlencode

import pytest
import torch

from subnetviz.uilogic import METRIC_EMS, metric_ems
from tests.app_fixtures import add_finished_run, open_page, plotly_specs
from tests.browser import E2E, wait_for_app

pytestmark = pytest.mark.slow

RUN_ID = "walk6a-20261206-192908-bigram_mask-af5699"  # a mask run's id, as long as the demo zoo's
RUN_NAME = "demo zoo 0f834756: bigram mask of the base, λ=10 (fast)"
NEWEST = time.time() + 10**7  # created after any run another test leaves in the shared home


def _blocks(node):
    """Every block under ``node`` (depth first), ``node`` included."""
    yield node
    for child in getattr(node, "children", {}).values():
        if hasattr(child, "children"):
            yield from _blocks(child)


def _rows(at, kind: str) -> list[list[list]]:
    """Each row of columns (st.columns) holding ``kind`` elements: for each row, each column's elements."""
    rows = []
    for block in _blocks(at.main):
        cols = [c for c in getattr(block, "children", {}).values() if getattr(c, "type", "") == "column"]
        inside = [list(c.get(kind)) for c in cols]
        if any(inside):
            rows.append(inside)
    return rows


@pytest.fixture(scope="module")
def mask_run(app_env):
    """A finished bigram-mask run of the zoo's base: its mask (a random one, 20 % kept) and a log of 40 steps. Its
    mask is labelled "bigram mask λ=10 · <id>", 58 characters, as the demo zoo's are."""
    from subnetviz.bigram.maskable import full_mask, load_local_model
    from subnetviz.jobs.context import METRICS_FILE
    from subnetviz.jobs.runner import JobRunner
    from subnetviz.masks import MaskSet, save_mask_set

    runner = JobRunner()
    cfg = {"kind": "bigram_mask", "target": "bigram", "lambda": 10.0, "preset": "fast", "steps": None, "seed": 0}
    run_dir = add_finished_run(runner, RUN_ID, "bigram_mask", RUN_NAME, cfg, created=NEWEST)
    g = torch.Generator().manual_seed(6)
    model = load_local_model(app_env / "zoo" / "base")
    masks = {n: torch.rand(m.shape, generator=g) < 0.2 for n, m in full_mask(model).masks.items()}
    save_mask_set(run_dir / "outputs" / "mask.safetensors", MaskSet(masks, {"target": "bigram", "lambda": 10.0}))
    rows = [
        {"step": s, "loss": 7 / (1 + s), "kept": 0.5 / (1 + s), "undecided": max(0.0, 1 - s / 20)} for s in range(40)
    ]
    (run_dir / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    yield f"bigram mask λ=10 · {RUN_ID}"
    with runner.registry.transaction() as con:
        con.execute("DELETE FROM runs WHERE id = ?", (RUN_ID,))
    shutil.rmtree(run_dir)


def _plain_lines(title: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", line) for line in title.split("<br>")]


# --- 1. the headline ----------------------------------------------------------------------------------------------
def test_the_bigram_headline_comes_at_most_two_to_a_row_each_value_whole(mask_run):
    from subnetviz import selection
    from subnetviz.masks import load_mask_set

    at = open_page("bigram", bg_model="base", bg_mask=mask_run, bg_opt="none")
    assert not at.exception and not at.error, [e.value for e in at.error]
    rows = _rows(at, "metric")
    shown = [m for row in rows for col in row for m in col]
    assert [m.label for m in shown] == [m.label for m in at.metric] and len(shown) == 7  # (no optimal: no overlap)
    # two to a row (four cut them at 1024 px), the last row's columns as wide as the others' (the numbers line up)
    assert [[len(col) for col in row] for row in rows] == [[1, 1]] * 3 + [[1, 0]], rows
    for row in rows:
        assert all(metric_ems(m.value) <= METRIC_EMS * 4 / len(row) for col in row for m in col), rows
    kept = {m.label: m for m in at.metric}["kept weights"]
    count = load_mask_set(selection.saved_masks()[mask_run]).count
    assert kept.value == f"{count:,}"  # the count alone: "903 (0.204 %)" was cut to "903 (0…"
    assert re.fullmatch(r"\d+(\.\d+)? % of the maskable weights", kept.delta), kept.delta


# --- 3. the run chart's title, the half-width charts' lines, the covariance maps' rows ----------------------------
def test_the_mask_run_s_title_breaks_at_its_separator_as_the_training_page_s(mask_run):
    from subnetviz.report.training import TITLE_LINE

    at = open_page("bigram", bg_view="Train a mask")
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.selectbox(key="bg_run").set_value(RUN_ID).run()
    (spec,) = [s for s in plotly_specs(at) if s["layout"]["title"]["text"].startswith("Run ")]
    lines = _plain_lines(spec["layout"]["title"]["text"])
    assert lines == [f"Run {RUN_NAME}", RUN_ID]  # broken where its " · " was (one line of 100 characters)
    assert max(map(len, lines)) <= TITLE_LINE
    assert spec["layout"]["meta"] == {"name": f"Run {RUN_NAME} · {RUN_ID}"}  # the figure picker's name, one line
    assert spec["layout"]["margin"]["t"] == 80 + 22 and spec["layout"]["height"] == 430 + 22  # room for the line
    assert [a["text"] for a in spec["layout"]["annotations"]] == ["loss", "kept (%)", "undecided (%)"]


def test_half_width_bigram_charts_break_the_mask_s_line_and_the_covariance_maps_come_two_to_a_row(mask_run):
    where = "model base · corpus zoo"
    for tab, keys in (("Ablation", ["Fidelity", "Loss"]), ("Residual stream", ["Covariance"] * 3)):
        at = open_page("bigram", bg_model="base", bg_mask=mask_run, bg_opt="none", bg_tab=tab)
        assert not at.exception and not at.error, [e.value for e in at.error]
        half = [s for s in plotly_specs(at) if s["layout"]["title"]["text"].startswith(tuple(keys))]
        assert len(half) == len(keys)
        for spec in half:  # the mask's run id on a line of its own: whole in a chart half the page wide
            assert _plain_lines(spec["layout"]["title"]["text"])[1:] == ["bigram mask λ=10", RUN_ID, where]
        rows = [row for row in _rows(at, "plotly_chart") if sum(map(len, row)) and len(row) > 1]
        assert rows and all(len(row) == 2 for row in rows), rows
        if tab == "Residual stream":
            assert [sum(map(len, row)) for row in rows] == [2, 1]  # three maps: two, then one
    assert _plain_lines(half[0]["layout"]["title"]["text"])[0] == "Covariance: full"


# --- 7. Home ------------------------------------------------------------------------------------------------------
def test_home_s_cards_come_two_to_a_row(app_env):
    at = open_page("home")
    assert not at.exception
    rows = _rows(at, "page_link")
    assert [len(row) for row in rows] == [2] * 5 and all(len(col) == 1 for row in rows for col in row)
    assert [col[0].proto.label for row in rows for col in row][6:9] == [
        "Continual learning",
        "Behaviour",
        "What drives sparsity",
    ]


# --- in Chromium, 1024 px, sidebar open -----------------------------------------------------------------------------
CUT = """els => els.filter(e => e.offsetParent && e.scrollWidth > e.clientWidth + 1).map(e => e.textContent.trim())"""
TEXTS = (
    "[data-testid='stMain'] [data-testid='stMetricValue'] div, [data-testid='stMain'] [data-testid='stMetricLabel'] p, "
    "[data-testid='stMain'] [data-testid='stMetricDelta'] div, [data-testid='stMain'] [data-testid='stPageLink-NavLink'] span"
)


@pytest.mark.e2e
@E2E[1]
def test_home_cards_and_bigram_numbers_show_whole_at_1024_px(browser, app_url, mask_run):
    """No page link's label, metric value, label or grey line narrower than its text ("Bigram subnetwo",
    "903 (0…"), and every Bigram metric drawn."""
    ctx = browser.new_context(viewport={"width": 1024, "height": 1000})
    try:
        page = ctx.new_page()
        bigram = "bigram?" + urlencode({"bg_mask": mask_run, "bg_opt": "none"})
        for path, drawn in (("", "stPageLink-NavLink"), (bigram, "stMetricValue")):
            page.goto(f"{app_url}/{path}")
            wait_for_app(page, timeout=300_000)
            assert page.get_by_test_id("stSidebar").is_visible()  # (as it opens at 1024 px)
            assert page.get_by_test_id(drawn).count() >= 7
            assert page.locator(TEXTS).evaluate_all(CUT) == [], path
    finally:
        ctx.close()
