"""The What-drives-sparsity page after the first review (drivers1), on a planted grid in the app's registry.

The measure of the "By factor" tab is in the URL whichever tab is open (a link copied on "Tables" or "bf16 vs
fp32" lost it: the recipient saw sparsity, and exported another chart than the sender); a link may name it by its
key ("kl_forward") as well as by the label the radio shows; a link's measure the page does not offer is said, as a
stale run is. In Chromium at 1024 px, the factor chart names every value of every panel (the algorithm panel named
three of five bars) and draws its legend clear of the title."""

import json

import pandas as pd
import pytest

from tests.app_fixtures import open_page, plotly_specs
from tests.browser import E2E, wait_for_app, wait_for_charts
from tests.integration.test_drivers1_fixes import AXES

pytestmark = pytest.mark.slow

KL = "Forward KL(π_base ‖ π)"
BASE = {"seed": 0, "algorithm": "grpo", "accuracy": 0.5, "kl_forward": 0.004, "learning_rate": 1e-5, "steps": 8}
BASE |= {"beta": 0.0, "max_grad_norm": 1.0, "optimizer": "adamw_torch", "data": "task", "train_seconds": 1.0}
BASE |= {"status": "done", "note": "", "grid_version": 2}


@pytest.fixture
def grid(planted_grid) -> str:
    """A one-seed grid on every axis, planted as the newest finished drivers run: its "name · id" label."""
    from subnetviz.experiments.drivers import COLUMNS

    rows = [
        {**BASE, "factor": f, "value": v, "precision": p, "sparsity": 0.5 + 0.05 * i if p == "bf16" else 0.004}
        for f, values in AXES.items()
        for i, v in enumerate(values)
        for p in ("bf16", "fp32")
    ]
    return planted_grid(pd.DataFrame(rows, columns=COLUMNS))


def _ok(at):
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _factor_title(page: str) -> str:
    """The measure of the "By factor" chart in an exported page (its title, as the page's JSON writes it)."""
    (title,) = [t for t in ("Update sparsity", "Held-out accuracy", KL) if json.dumps(f"{t} against each")[:-1] in page]
    return title


def _warnings(at) -> list[str]:
    return [w.value.replace("\\", "") for w in at.warning]


@pytest.mark.parametrize("tab", ["Tables", "bf16 vs fp32"])
def test_a_link_copied_on_another_tab_keeps_its_measure(grid, exports, tab):
    """The sender chose KL on "By factor" and opened another tab: the URL lost dr_value, and a recipient's page
    (and export) showed sparsity. Opened on that tab, the link's measure stays in the URL and in the export."""
    at = _ok(open_page("drivers", dr_run=grid, dr_value=KL, dr_tab=tab))
    assert not at.radio  # the measure is drawn in its own tab only
    assert at.query_params["dr_value"] == KL
    page = exports["What drives sparsity"]()
    assert _factor_title(page) == KL and f"<td>{KL}</td>" in page  # its chart, and its parameter


def test_the_measure_chosen_is_written_into_the_url(grid):
    """Chosen on the radio: in the URL; back to the first measure: out of it (the default, as the run picker's)."""
    at = _ok(open_page("drivers", dr_run=grid))
    assert "dr_value" not in at.query_params
    at.radio(key="dr_value").set_value("kl_forward").run()
    _ok(at)
    assert at.query_params["dr_value"] == KL
    assert plotly_specs(at)[0]["layout"]["title"]["text"] == f"{KL} against each factor (bf16 saves)"
    at.radio(key="dr_value").set_value("sparsity").run()
    assert "dr_value" not in _ok(at).query_params


@pytest.mark.parametrize(("link", "key", "label"), [("kl_forward", "kl_forward", KL), ("accuracy", "accuracy", None)])
def test_a_link_may_name_the_measure_by_its_key(grid, link, key, label):
    """?dr_value=kl_forward (the option's key, as the code and the command name it) was dropped without a word."""
    at = _ok(open_page("drivers", dr_run=grid, dr_value=link))
    assert at.radio(key="dr_value").value == key and not _warnings(at)
    label = label or "Held-out accuracy"
    assert at.query_params["dr_value"] == label  # written back as the radio shows it
    assert plotly_specs(at)[0]["layout"]["title"]["text"] == f"{label} against each factor (bf16 saves)"


def test_a_link_s_unknown_measure_is_said_as_a_stale_run_is(grid):
    """?dr_value=bogus showed sparsity without a word (a stale dr_run is said). Said on the link's first page and
    while nothing else is chosen, on any tab; gone once a measure is chosen."""
    said = "The link's measure bogus is not among this page's measures; Update sparsity is shown instead."
    at = _ok(open_page("drivers", dr_run=grid, dr_value="bogus"))
    assert _warnings(at) == [said]
    assert at.radio(key="dr_value").value == "sparsity" and "dr_value" not in at.query_params
    at.run()  # the live fragment redraws: the line stays
    assert _warnings(_ok(at)) == [said]
    at.radio(key="dr_value").set_value("accuracy").run()
    assert _warnings(_ok(at)) == []
    tables = _ok(open_page("drivers", dr_run=grid, dr_value="bogus", dr_tab="Tables"))
    assert _warnings(tables) == [said]


# --- in Chromium ---------------------------------------------------------------------------------------------
GEOMETRY = """() => {
    const g = document.querySelector("[data-testid='stPlotlyChart'] .js-plotly-plot");
    const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
    const hit = (a, b) => a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
    const legend = box(g.querySelector('.legend'));
    return {
        ticks: [...g.querySelectorAll('g.xaxislayer-above')].map(l => [...l.querySelectorAll('text')].map(t => t.textContent)),
        legendOnTitle: hit(box(g.querySelector('.gtitle')), legend),
        legendOnPanelTitles: [...g.querySelectorAll('.annotation-text')].some(a => hit(box(a), legend)),
    };
}"""


@pytest.mark.e2e
@E2E[1]
@pytest.mark.parametrize("value", ["sparsity", "kl_forward"])
def test_at_1024_px_every_value_is_named_and_the_legend_clear_of_the_title(grid, browser, app_url, value):
    from urllib.parse import urlencode

    from subnetviz.figures.style import number_labels

    ctx = browser.new_context(viewport={"width": 1024, "height": 1100})
    try:
        page = ctx.new_page()
        page.goto(f"{app_url}/drivers?{urlencode({'dr_run': grid, 'dr_value': value})}")
        wait_for_app(page)
        wait_for_charts(page)
        got = page.evaluate(GEOMETRY)
        assert got["ticks"] == [number_labels(v) for v in AXES.values()]  # "1e-6, 1e-5, 1e-4" (walk6)
        assert not got["legendOnTitle"] and not got["legendOnPanelTitles"]
    finally:
        ctx.close()
