"""End-to-end: a real ``streamlit run`` driven by Playwright in Debian's Chromium.

Opens every page, waits for the script to finish and the charts to draw, asserts no exception
element and that every chart has data, and saves a screenshot per page (docs/screenshots when
``SUBNETVIZ_SCREENSHOTS`` is set, else a temp folder). Also: a shared URL reopens the same view in a
fresh browser context, and a short training run started from the page reaches "succeeded".
"""

import os
import re
import tempfile
from pathlib import Path

import pytest

from tests.browser import CHART_PAGES, CHROMIUM, DRAWN, E2E, PAGES, ROOT, open_page, wait_for_app, wait_for_charts  # noqa: F401

SHOTS = Path(os.environ.get("SUBNETVIZ_SCREENSHOTS") or "/tmp/subnetviz-e2e")
QUERY = {"training": "?tr_view=Runs"}  # the view a screenshot should show (the launch form is the default)

pytestmark = E2E


@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders(browser, app_url, name):
    assert (ROOT / "views" / f"{name}.py").is_file(), f"page {name} is gone"  # a deleted page fails, never skips
    SHOTS.mkdir(parents=True, exist_ok=True)
    # A tall window: Streamlit scrolls inside its own container, so the screenshot shows what fits.
    ctx, page = open_page(browser, app_url + ("" if name == "home" else f"/{name}{QUERY.get(name, '')}"), height=2400)
    try:
        assert page.get_by_test_id("stException").count() == 0
        assert page.get_by_test_id("stAlertContentError").count() == 0, page.get_by_test_id(
            "stAlertContentError"
        ).all_inner_texts()
        if name in CHART_PAGES:  # every chart drew at least one trace (Spectra opens on its one-chart view)
            assert wait_for_charts(page) >= (1 if name == "spectra" else 2)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    finally:
        ctx.close()


def test_shared_url_reopens_the_same_view(browser, app_url):
    ctx, page = open_page(browser, app_url + "/sparsity")
    try:
        page.get_by_test_id("stSelectbox").filter(has_text="Criterion").click()
        page.get_by_role("option", name="1e-05").click()
        page.wait_for_url("**sp_crit=1e-05**", timeout=60_000)  # the rerun wrote the choice into the URL
        wait_for_app(page)
        shared = page.url
        assert "sp_crit=1e-05" in shared
    finally:
        ctx.close()
    ctx2, page2 = open_page(browser, shared)  # a colleague opening the link: a fresh context
    try:
        box = page2.get_by_test_id("stSelectbox").filter(has_text="Criterion")
        assert box.locator("input").input_value() == "1e-05"  # the selected value lives in the combobox input
        assert page2.get_by_test_id("stException").count() == 0
    finally:
        ctx2.close()


def test_training_run_from_the_page_succeeds(browser, app_url, tmp_path):
    ctx, page = open_page(browser, app_url + "/training")
    try:
        page.get_by_label("Algorithm").click()
        page.get_by_role("option", name="sft").click()
        steps = page.get_by_label("Steps")
        steps.fill("2")
        page.get_by_role("button", name="Launch run").click()
        page.get_by_text("Queued run").wait_for(timeout=30_000)
        page.get_by_role("radio", name="Runs").click()  # segmented control options are radios
        page.get_by_test_id("stMetricValue").filter(has_text="succeeded").wait_for(timeout=240_000)
        # the polling fragment's last rerun, then the static redraw: no Cancel button, the curves drawn
        page.get_by_role("button", name="Cancel").wait_for(state="detached", timeout=60_000)
        wait_for_app(page)
        wait_for_charts(page)
        assert page.get_by_test_id("stException").count() == 0
        html = _export(page, tmp_path)  # every view: the runs table, this run's curves, the comparison
        assert "<b>Runs</b>" in html and "succeeded" in html and "Run sft" in html
        assert "ULP distance between the two finetunes" in html  # the closed comparison view, built on click
    finally:
        page.screenshot(path=str(Path(tempfile.gettempdir()) / "subnetviz-e2e-training-run.png"), full_page=True)
        ctx.close()


def test_path_outside_the_roots_is_refused_in_the_page(browser, app_url):
    ctx, page = open_page(browser, app_url + "/workspace?base=%2Fetc")
    try:
        assert page.get_by_test_id("stException").count() == 0
        page.get_by_text("outside the folders this server may read").first.wait_for(timeout=30_000)
    finally:
        ctx.close()


def test_a_broken_mask_upload_is_named_and_the_page_stays(browser, app_url, app_home, tmp_path):
    """A truncated safetensors dropped on the Workspace page: one error under the uploader that names the
    file as the visitor named it, the rest of the page (the zoo manifest) still drawn, nothing stored;
    then a good mask is stored, and a torch.save one."""
    import torch

    from subnetviz.masks import MaskSet, save_mask_set

    good = tmp_path / "good.safetensors"
    save_mask_set(good, MaskSet({"w": torch.rand(8, 8, generator=torch.Generator().manual_seed(0)) < 0.5}, {}))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(good.read_bytes()[:40])
    from_torch = tmp_path / "rl mask.pt"
    torch.save({"w": torch.eye(8, dtype=torch.bfloat16)}, from_torch)
    before = set((app_home / "uploads").glob("*")) if (app_home / "uploads").exists() else set()
    ctx, page = open_page(browser, app_url + "/workspace")
    try:
        drop = page.get_by_test_id("stFileUploaderDropzoneInput")
        drop.set_input_files(str(broken))
        alert = page.locator("[data-testid='stAlertContentError']")
        alert.first.wait_for(timeout=60_000)
        wait_for_app(page)
        text = alert.inner_text().replace("\u200b", "").splitlines()[-1]  # after the icon's name; as text
        assert alert.count() == 1 and text.startswith("broken.safetensors: not a readable safetensors"), text
        assert page.get_by_text("Demo zoo manifest").count() == 1 and page.get_by_test_id("stException").count() == 0
        assert (set((app_home / "uploads").glob("*")) if (app_home / "uploads").exists() else set()) == before
        page.get_by_role("button", name="Remove").first.click()  # the broken file, off the uploader
        drop.set_input_files(str(good))
        page.get_by_text("Stored as good-").first.wait_for(timeout=60_000)
        assert page.locator("[data-testid='stAlertContentError']").count() == 0
        # the note says to pick it under Saved masks: the sidebar lists it at once (it was drawn before the upload)
        saved = page.get_by_test_id("stSidebar").get_by_test_id("stMultiSelect").filter(has_text="Saved masks")
        saved.locator("input").first.click()
        saved.locator("input").first.fill("good-")
        page.get_by_role("option").filter(has_text="uploads/good-").first.wait_for(timeout=30_000)
        page.mouse.click(900, 40)  # outside the list: it closes
        page.get_by_role("button", name="Remove").first.click()
        drop.set_input_files(str(from_torch))  # a torch.save mask, bf16 0/1: the browser offers it, the app stores it
        page.get_by_text("Stored as rl_mask-").first.wait_for(timeout=60_000)
        assert page.locator("[data-testid='stAlertContentError']").count() == 0
    finally:
        ctx.close()
        for f in (set((app_home / "uploads").glob("good-*")) | set((app_home / "uploads").glob("rl_mask-*"))) - before:
            f.unlink()


def test_export_button_downloads_a_self_contained_dashboard(browser, app_url, app_home, tmp_path):
    ctx, page = open_page(browser, app_url + "/sparsity", height=2400)
    try:
        with page.expect_download(timeout=60_000) as info:
            page.get_by_role("button", name="Export dashboard (HTML)").click()
        path = tmp_path / "dashboard.html"
        info.value.save_as(path)
        html = path.read_text()
        rest = html[html.index("</script>") :]  # after the embedded plotly.js
        assert "<script src" not in html and 'href="http' not in rest
        assert html.count('class="figure"') >= 6 and "sparsity (exact)" in html  # the open tab's heatmaps
        # ... and the closed tabs' figures and tables, built at export time
        assert "Update sparsity against tolerance" in html and "Sparsity per criterion" in html
        # a shared file names the base as a visitor sees it (relative to its root), not the server's path
        assert str(app_home) not in html and str((app_home / "zoo").resolve()) not in html
        assert re.search(r"<th>base</th><td>[\w.-]+/base</td>", html)  # root/base (micro-zoo0/base here)
    finally:
        ctx.close()


def test_side_by_side_heatmaps_share_one_colour_range_in_the_browser(browser, app_url):
    """Drawn by plotly.js, not only in the spec: every heatmap of the models shown side by side has the same zmin/zmax."""
    ctx, page = open_page(browser, app_url + "/sparsity?sp_models=grpo-s0&sp_models=dpo&sp_models=sft", height=2400)
    try:
        page.locator(".heatmaplayer").first.wait_for(timeout=60_000)
        ranges = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')]
            .filter(p => p.data && p.data[0].type === 'heatmap').map(p => [p.data[0].zmin, p.data[0].zmax])""")
        assert len(ranges) == 3 and len({tuple(r) for r in ranges}) == 1, ranges
    finally:
        ctx.close()


def test_publication_figure_downloads_as_svg(browser, app_url, tmp_path):
    ctx, page = open_page(browser, app_url + "/sparsity", height=2400)
    try:
        # the page drawn first: a click on "Make figure" during the first script run (the analysis still computing,
        # a loaded CI machine) was lost to the rerun, and "Download figure" never came
        wait_for_charts(page)
        # ... and the script finished: a figure made while a full run was still going was of that run's chart
        # objects, which the run's end replaced, so its "Download figure" never came (a CI flake)
        wait_for_app(page)
        page.get_by_text("Figure for a paper (SVG, PDF, PNG)").click()
        page.get_by_role("button", name="Make figure").click()  # rendered on click: a failure is said in one line
        with page.expect_download(timeout=120_000) as info:
            page.get_by_role("button", name="Download figure").click(timeout=120_000)
        path = tmp_path / "figure.svg"
        info.value.save_as(path)
        assert path.read_bytes().lstrip().startswith(b"<svg")
    finally:
        ctx.close()


def _export(page, tmp_path) -> str:
    with page.expect_download(timeout=240_000) as info:
        page.get_by_role("button", name="Export dashboard (HTML)").click()
    path = tmp_path / "dashboard.html"
    info.value.save_as(path)
    return path.read_text()


def test_sparsity_export_from_another_tab_holds_the_heatmaps_and_names_eta(browser, app_url, tmp_path):
    """Exported from the sweep tab, the dashboard lost the overall bars and every heatmap with no word; and an
    export under the relative rule never said its η (nor the comparison precision)."""
    url = "/sparsity?sp_tab=Tolerance+sweep+and+ULPs&sp_crit=relative&sp_eta=0.05&sp_models=dpo&sp_models=sft"
    ctx, page = open_page(browser, app_url + url, height=2400)
    try:
        wait_for_charts(page)
        html = _export(page, tmp_path)
        titles = html.replace("\\u03b7", "η")  # (a chart's JSON escapes its non-ASCII letters)
        assert "Overall update sparsity per model (relative η = 0.05)" in titles  # the closed first tab ...
        assert (
            "dpo: sparsity (relative η = 0.05)" in titles and "sft: sparsity (relative η = 0.05)" in titles
        )  # ... heatmaps
        assert "Update sparsity against tolerance" in html  # the open tab
        assert "<th>relative η</th><td>0.05</td>" in html and "<th>precision</th><td>stored dtype</td>" in html
    finally:
        ctx.close()


def test_spectra_export_holds_both_tabs(browser, app_url, tmp_path):
    """Exported from the Subspaces tab, the dashboard also holds the closed Spectra of Δ tab (built on click)."""
    ctx, page = open_page(browser, app_url + "/spectra?spec_tab=Subspaces+of+W_base+vs+W_ft", height=2400)
    try:
        wait_for_charts(page)
        html = _export(page, tmp_path)
        assert "Largest principal angle" in html  # the open tab
        assert "Singular values of updates" in html and "effective rank" in html  # the closed tab's two views
        assert "Rank, effective rank and stable rank" in html  # and its table
    finally:
        ctx.close()


def test_spectra_export_from_singular_values_holds_every_view(browser, app_url, tmp_path):
    """Exported from the default Singular values view, the dashboard also holds the rank view and Subspaces."""
    ctx, page = open_page(browser, app_url + "/spectra?sub_k=4", height=2400)
    try:
        assert wait_for_charts(page) == 1  # the open view: one chart
        html = _export(page, tmp_path)
        assert "Singular values of updates" in html
        assert "effective rank" in html and "Rank, effective rank and stable rank" in html  # the closed view
        assert "Largest principal angle" in html  # the closed tab
    finally:
        ctx.close()


def test_continual_export_holds_the_owner_image_the_url_names(browser, app_url, app_home, tmp_path, monkeypatch):
    """The export builds the closed tabs on click, in a thread of its own with no URL: the owner image of the
    method and layer in the URL is read when the page is drawn (before: always the first method's). A run of
    its own, so that the test does not depend on another's."""
    from subnetviz.jobs.runner import JobRunner

    monkeypatch.setenv("SUBNETVIZ_HOME", str(app_home))
    runner = JobRunner()
    config = {"kind": "continual", "benchmark": "permuted-digits", "methods": ["supsup", "exssnet"], "density": [0.05]}
    rid = runner.submit({**config, "tasks": 3, "seeds": [0], "epochs": {"mask": 1, "weight": 1}}, name="e2e owner")
    rec = runner.wait(rid, timeout=300)
    assert rec.status == "succeeded", rec.error
    url = f"{app_url}/continual?cl_run={rid}&cl_owner=ExSSNeT&cl_layer=layer2.weight"
    ctx, page = open_page(browser, url, height=2400)
    try:
        page.locator("[data-testid='stPlotlyChart']").first.wait_for(timeout=60_000)  # (a tiny run's bars may be 0)
        html = _export(page, tmp_path)
        assert (
            "owner task of layer2.weight" in html
            and "ExSSNeT, 5 %, seed 0" in html
            and "SupSup, 5 %, seed 0" not in html
        )
    finally:
        ctx.close()


def test_a_layer_in_unicode_digits_is_dropped_and_the_export_still_downloads(browser, app_url, tmp_path):
    """'²' is a digit to str.isdigit but not to int: the page and its export took it for a layer (the export
    then failed with no word to the visitor, and nothing downloaded)."""
    ctx, page = open_page(browser, app_url + "/spectra?spec_tab=Subspaces+of+W_base+vs+W_ft&spec_layer=%C2%B2&sub_k=4")
    try:
        wait_for_charts(page)
        html = _export(page, tmp_path)
        assert "Largest principal angle" in html and "Singular values of updates" in html
    finally:
        ctx.close()


def test_overlap_view_and_pair_round_trip_through_the_url(browser, app_url):
    """What the page writes into the URL (the × per-tensor chance view, the per-layer pair) reopens the same view."""
    ctx, page = open_page(browser, app_url + "/overlap", height=2400)
    try:
        page.get_by_text("× per-tensor chance", exact=True).click()
        page.wait_for_url("**ov_view=**", timeout=60_000)
        wait_for_app(page)
        page.get_by_role("tab", name="Per layer").click()
        page.wait_for_url("**ov_tab=**", timeout=60_000)
        wait_for_app(page)
        page.get_by_test_id("stSelectbox").filter(has_text="Per-layer view of the pair").click()
        page.get_by_role("option", name="Δ grpo-s1 ∩ Δ grpo-s2").click()
        page.wait_for_url("**ov_pair=**", timeout=60_000)
        wait_for_app(page)
        shared = page.url
    finally:
        ctx.close()
    ctx2, page2 = open_page(browser, shared, height=2400)
    try:
        assert page2.get_by_role("radio", name="× per-tensor chance").is_checked()
        box = page2.get_by_test_id("stSelectbox").filter(has_text="Per-layer view of the pair")
        assert box.locator("input").input_value() == "Δ grpo-s1 ∩ Δ grpo-s2"
        assert page2.get_by_test_id("stException").count() == 0
    finally:
        ctx2.close()
