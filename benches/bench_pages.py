"""Time to first complete render of each page in a real browser, first visit and second (cached) visit.

Starts ``streamlit run app.py`` on the demo zoo (``SUBNETVIZ_HOME``, default the user's cache; build
it first with ``python -m subnetviz demo build``), opens every page in Playwright + Debian
Chromium and waits until the script finished, no skeleton is left and every chart has drawn.
The first visit of each page runs on a fresh server process (cold caches for that page's
analysis, except the on-disk result cache, which is cleared first unless ``--keep-disk-cache``);
the second visit reopens it in a new tab of the same browser profile (a new Streamlit session,
warm browser and server caches), and a third comes from the home page through the sidebar link
(in-app navigation: same session and frontend, once the home page has finished loading and the browser
is idle). Each time is the page's own clock, from the start of the navigation (a new tab) or the click
(in-app) to the first moment the page is fully drawn (DRAWN), not the driver's, which sees it a round
trip or more later. Goals: ≤ 5 s first, ≤ 1 s cached; the Training
page's comparison view (``training-compare``) ≤ 3 s first. With ``--baseline REV`` each page is timed
on a git worktree of REV too, alternated page by page in the same run, and the summary gives
this tree / baseline ratios (the machine's load cancels out of a ratio, not of a wall time).

The same run also times the platform's floor (unless ``--no-floor``): a bare Streamlit page (this app's
``.streamlit/config.toml``, the same browser) with one tiny Plotly chart, and without it, opened in a
new tab the same way. Every page's new-tab time is also given as a ratio to that floor: what of it is
this app's, and what any Streamlit page drawing a Plotly chart pays (loading and evaluating Plotly's
4.7 MB module in the browser).

    python -m benches.bench_pages [--pages sparsity spectra ...] [--baseline REV] [--no-floor]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.browser import FLAGS, start_server
from tests.browser import PAGES as BROWSER_PAGES  # every page of the app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*BROWSER_PAGES, "training-compare"]  # every page, and the Training page's comparison view
# A page's view other than its default: name -> (page file, path and query)
VIEWS = {"training-compare": ("training", "training?tr_view=Subnetwork+vs+full")}
FIRST_GOAL = {"training-compare": 3.0}
# The floor: a Streamlit page and nothing of this app's; ?chart=0 leaves the Plotly chart out.
FLOOR_APP = """import plotly.graph_objects as go
import streamlit as st

st.title("Floor")
if st.query_params.get("chart", "1") == "1":
    st.plotly_chart(go.Figure(go.Heatmap(z=[[1, 2], [3, 4]])))
else:
    st.write("No chart.")
"""
FLOOR_VIEWS = {"floor: 1 Plotly chart": "?chart=1", "floor: no chart": "?chart=0"}


# Counts finished script runs (the app's script state going running -> notRunning), so a timing stops
# when a run has finished instead of after a fixed sleep guarding against the state read before the run
# (it added 100 ms to every visit and 50 ms to every navigation). A run so short that React shows
# running and notRunning in one commit is not seen: then notRunning 100 ms after the click counts (in-app
# only, window.__since > 0; a new tab waits for its first run).
RUNS = """(() => {
  window.__runs = 0;
  window.__since = 0;
  let last = null;
  new MutationObserver(() => {
    const app = document.querySelector("[data-testid='stApp']");
    const state = app ? app.dataset.testScriptState : null;  // 'running' only ever follows a connection
    if (state === 'notRunning' && last === 'running') window.__runs += 1;
    if (state) last = state;
  }).observe(document, {subtree: true, childList: true, attributes: true});
})();"""
# The page's own clock of "fully drawn" (what wait_drawn checks, seen from inside the page): the
# performance.now() of the first DOM change after which the run has finished (as FINISHED), no skeleton
# is left and every Plotly chart has its SVG. Python's waits see the same state later, by a Playwright
# round trip or several (20-300 ms on a loaded 2-core machine), which the reader never waits for.
# window.__drawn is reset whenever the state is not drawn, so it is the start of the final drawn state.
DRAWN = """(() => {
  window.__drawn = null;
  window.__after = 0;
  const check = () => {
    const app = document.querySelector("[data-testid='stApp']");
    const done = !!app && app.dataset.testConnectionState === 'CONNECTED' && app.dataset.testScriptState === 'notRunning'
      && !document.querySelector("[data-testid='stSkeleton']")
      && [...document.querySelectorAll("[data-testid='stPlotlyChart']")].every(
        (c) => c.querySelector('.js-plotly-plot .main-svg'));
    const ran = window.__runs > window.__after || (window.__since > 0 && performance.now() - window.__since > 100);
    if (!done) window.__drawn = null;
    else if (ran && window.__drawn === null) window.__drawn = performance.now();
  };
  new MutationObserver(check).observe(document, {subtree: true, childList: true, attributes: true});
  setInterval(check, 20);  // a state reached by the clock alone (FINISHED's 100 ms rule), not by a change
})();"""
FINISHED = """(after) => {
  const app = document.querySelector("[data-testid='stApp']");
  return window.__runs > after || (window.__since > 0 && performance.now() - window.__since > 100 && !!app
    && app.dataset.testConnectionState === 'CONNECTED' && app.dataset.testScriptState === 'notRunning');
}"""


def wait_run(page, after: int = 0) -> None:
    """Until more than ``after`` script runs have finished in this page since ``window.__since`` (see RUNS)."""
    page.wait_for_function(FINISHED, arg=after, timeout=300_000, polling=10)


def wait_drawn(page) -> None:
    """Until the script run finished, no skeleton is left and every Plotly chart has drawn."""
    from playwright.sync_api import expect

    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=300_000)
    expect(page.get_by_test_id("stSkeleton")).to_have_count(0, timeout=300_000)
    charts = page.locator("[data-testid='stPlotlyChart'] .js-plotly-plot")
    for i in range(charts.count()):
        charts.nth(i).locator(".main-svg").first.wait_for(timeout=300_000)


def drawn_seconds(page, since: float, wall: float) -> float:
    """Seconds from ``since`` (the page's clock, ms) to fully drawn by the page's clock (DRAWN); ``wall``
    (Python's clock) where the page kept no time."""
    drawn = page.evaluate("window.__drawn")
    return (drawn - since) / 1000 if drawn is not None and drawn >= since else wall


def render_seconds(ctx, url: str) -> float:
    """Open ``url`` in a new tab of ``ctx`` (a new Streamlit session) and time it until fully drawn, from
    the start of the navigation by the page's own clock."""

    page = ctx.new_page()
    page.add_init_script(RUNS)
    page.add_init_script(DRAWN)
    t0 = time.perf_counter()
    page.goto(url)
    wait_run(page)
    wait_drawn(page)
    dt = drawn_seconds(page, 0.0, time.perf_counter() - t0)
    errors = page.get_by_test_id("stException").count() + page.get_by_test_id("stAlertContentError").count()
    page.close()
    if errors:
        raise RuntimeError(f"{url}: the page shows an error")
    return dt


def navigate_seconds(ctx, url: str, name: str) -> float:
    """Open the home page, then click the sidebar link to ``name`` and time that in-app navigation
    (same Streamlit session and frontend: what a user revisiting a page inside the app waits for)."""
    from playwright.sync_api import expect

    page = ctx.new_page()
    page.add_init_script(RUNS)
    page.add_init_script(DRAWN)
    page.goto(url)
    wait_run(page)
    expect(page.get_by_test_id("stSkeleton")).to_have_count(0, timeout=300_000)
    # A revisit comes from an app that has finished loading: wait until the browser is idle (nothing
    # fetched for 500 ms, then an idle callback), as it is by the time a reader clicks on.
    page.wait_for_load_state("networkidle")
    page.evaluate("new Promise(done => requestIdleCallback(() => done(), {timeout: 30000}))")
    link = f"[data-testid='stSidebarNav'] a[href$='/{name}']"
    page.locator(link).wait_for()
    t0 = time.perf_counter()
    # the click from inside the page, at the page's clock's zero (a driver's click lands a round trip later)
    since, runs = page.evaluate(
        "(sel) => { window.__since = performance.now(); window.__after = window.__runs; window.__drawn = null; "
        "document.querySelector(sel).click(); return [window.__since, window.__runs]; }",
        link,
    )
    # the page's path (a page that writes its choices into the URL adds a query to it)
    page.wait_for_url(lambda url: urlsplit(url).path.endswith(f"/{name}"), timeout=60_000)
    wait_run(page, runs)
    wait_drawn(page)
    dt = drawn_seconds(page, since, time.perf_counter() - t0)
    page.close()
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", nargs="+", default=PAGES)
    ap.add_argument("--keep-disk-cache", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="cached visits per page (their median is reported)")
    ap.add_argument("--no-floor", action="store_true", help="do not time the bare Streamlit page (the floor)")
    ap.add_argument(
        "--baseline",
        metavar="REV",
        help="also time git revision REV (a temporary worktree), page by page "
        "alternated with this tree, in the same run and on the same zoo",
    )
    args = ap.parse_args()
    trees = [("this tree", ROOT)]
    if args.baseline:
        import tempfile

        wt = Path(tempfile.mkdtemp(prefix="bench-pages-baseline-")) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(wt), args.baseline],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        trees.insert(0, (f"baseline {args.baseline}", wt))
    try:
        return _run(args, trees)
    finally:
        if args.baseline:
            subprocess.run(["git", "worktree", "remove", "--force", str(trees[0][1])], cwd=ROOT, check=False)


def _run(args, trees) -> int:
    from playwright.sync_api import sync_playwright

    from subnetviz import config

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=FLAGS)
        for name, (tree, root) in ((n, t) for n in args.pages for t in trees):
            file, path = VIEWS.get(name, (name, name))
            if not (root / "views" / f"{file}.py").exists():
                continue
            if not args.keep_disk_cache:
                shutil.rmtree(config.cache_dir() / "updates", ignore_errors=True)
            proc, url = start_server(env, root)  # fresh process: empty in-memory caches
            try:
                page_url = url + ("" if name == "home" else f"/{path}")
                # A colleague's browser: a fresh profile for the first visit; the second visit is a new
                # tab (a new Streamlit session) in the same profile, with the browser's cache warm.
                ctx = browser.new_context(viewport={"width": 1500, "height": 1000})
                try:
                    first = render_seconds(ctx, page_url)
                    # cached visits: the median of --repeat (a loaded machine's one-off stalls drop out)
                    second = statistics.median(render_seconds(ctx, page_url) for _ in range(args.repeat))
                    inapp = (
                        statistics.median(navigate_seconds(ctx, url, name) for _ in range(args.repeat))
                        if name not in ("home", *VIEWS)
                        else float("nan")
                    )
                except RuntimeError as exc:  # one page's error is reported, the others are still timed
                    print(f"{name} [{tree}]: {exc}", flush=True)
                    first = second = inapp = float("nan")
                ctx.close()
            finally:
                proc.terminate()
                proc.wait(timeout=20)
            rows.append((name, tree, first, second, inapp))
            label = f"{name} [{tree}]" if len(trees) > 1 else name
            print(f"{label:16s} first {first:6.2f} s   cached {second:6.2f} s   in-app {inapp:6.2f} s", flush=True)
        floor = {} if args.no_floor else _floor(browser, env, args.repeat)
        browser.close()
    w = max(len(f"{n} [{tr}]") if len(trees) > 1 else len(n) for n, tr, *_ in rows) if rows else 16
    print(f"\n{'page':{w}s}  first (s)  goal    cached: new tab (s)  goal 1   cached: in-app (s)  goal 1")
    for name, tree, first, second, inapp in rows:
        goal = FIRST_GOAL.get(name, 5.0)
        label = f"{name} [{tree}]" if len(trees) > 1 else name
        print(
            f"{label:{w}s}  {first:9.2f}  {'ok  ' if first <= goal else 'MISS'} {goal:g}  {second:17.2f}  "
            f"{'ok  ' if second <= 1 else 'MISS'}   {inapp:16.2f}  {'ok' if inapp <= 1 else '-' if inapp != inapp else 'MISS'}"
        )
    if len(trees) > 1:  # this tree / baseline, page by page (< 1: faster than the baseline)
        this, base = trees[1][0], trees[0][0]
        by = {(n, tr): (f, s, i) for n, tr, f, s, i in rows}
        print(f"\nratio this tree / {base}    first   cached: new tab   cached: in-app")
        for name in dict.fromkeys(n for n, *_ in rows):
            if (name, this) in by and (name, base) in by:
                r = [
                    a / b if b == b and b > 0 else float("nan")
                    for a, b in zip(by[name, this], by[name, base], strict=True)
                ]
                print(f"{name:26s}  {r[0]:6.2f}  {r[1]:16.2f}  {r[2]:15.2f}")
    if floor:
        print("\nfloor: a bare Streamlit page in a new tab (same settings, same browser), median of --repeat")
        for what, seconds in floor.items():
            print(f"  {what:24s} {seconds:5.2f} s")
        base = floor["floor: 1 Plotly chart"]
        print("cached: new tab / the floor with one chart (1.0: no slower than any Streamlit page with a chart)")
        for name, tree, _, second, _ in rows:
            label = f"{name} [{tree}]" if len(trees) > 1 else name
            print(f"  {label:{w}s}  {second / base:5.2f}")
    return 0


def _floor(browser, env: dict, repeat: int) -> dict[str, float]:
    """New-tab times of :data:`FLOOR_APP` (with and without its chart), each the median of ``repeat``
    after one first visit, on a server of its own with this app's ``.streamlit/config.toml``."""
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-pages-floor-") as tmp:
        root = Path(tmp)
        (root / "app.py").write_text(FLOOR_APP)
        shutil.copytree(ROOT / ".streamlit", root / ".streamlit", ignore=shutil.ignore_patterns("secrets.toml"))
        proc, url = start_server(env, root)
        try:
            ctx = browser.new_context(viewport={"width": 1500, "height": 1000})
            for what, query in FLOOR_VIEWS.items():
                render_seconds(ctx, url + "/" + query)  # the first visit warms the browser's cache
                out[what] = statistics.median(render_seconds(ctx, url + "/" + query) for _ in range(repeat))
                print(f"{what:24s} cached {out[what]:6.2f} s", flush=True)
            ctx.close()
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    return out


if __name__ == "__main__":
    sys.exit(main())
