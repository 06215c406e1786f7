"""The browser tests' set-up: a real ``streamlit run`` on the test home (fixture ``app_url``) and
Debian's Chromium driven by Playwright (fixture ``browser``), with the waits every browser test uses
(a pytest plugin, registered in conftest.py)."""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests import app_fixtures

CHROMIUM = "/usr/bin/chromium"
CHART_PAGES = ["sparsity", "spectra", "overlap", "series", "behavior"]  # pages that draw charts on the zoo
PAGES = ["home", "workspace", *CHART_PAGES, "training", "bigram", "continual", "drivers"]
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[1]
DRAWN = ".trace, .heatmaplayer image, .bars path, .scatterlayer path"  # a chart's drawn data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict, root: Path = ROOT, log=subprocess.DEVNULL, timeout: float = 90.0):
    """``streamlit run app.py`` of the checkout ``root`` on a free loopback port with ``env``, started as
    ``make app`` starts it (``subnetviz.serve``, where ``root`` has it); returns ``(process, url)`` once
    ``/_stcore/health`` answers (RuntimeError, process killed, if it never does).
    ``log``: where the server's output goes. The e2e fixture and ``benches/bench_pages`` both start it here."""
    port = free_port()
    launcher = "subnetviz.serve" if (root / "subnetviz" / "serve.py").is_file() else "streamlit"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            launcher,
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=root,
        env={**env, "PYTHONPATH": str(root)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError("streamlit did not start")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def app_url(app_home):
    env = {
        **os.environ,
        "SUBNETVIZ_HOME": str(app_home),
        "SUBNETVIZ_ROOTS": app_fixtures.app_roots(app_home),
        "OMP_NUM_THREADS": "1",
    }
    # the server's output, kept for a failed run
    log = tempfile.NamedTemporaryFile("w", prefix="subnetviz-e2e-streamlit-", suffix=".log", delete=False)
    try:
        proc, url = start_server(env, log=log)
        try:
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    finally:
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


IDLE = """() => {
    const app = document.querySelector("[data-testid='stApp']");
    return !!app && app.dataset.testConnectionState === 'CONNECTED' && app.dataset.testScriptState === 'notRunning'
        && !!document.querySelector("[data-testid='stMain'] h1")
        && !document.querySelector("[data-testid='stSkeleton']");
}"""


def wait_for_app(page, timeout: float = 120_000) -> None:
    """Streamlit's own e2e recipe as one condition: connected, the script finished, the page's title
    drawn (so a run has happened at all: before the first run the state also reads notRunning) and
    no skeleton left. After a click, wait first on what the click changes (the URL, an element)."""
    page.wait_for_function(IDLE, timeout=timeout)


def wait_for_charts(page, timeout: float = 60_000) -> int:
    """Every Plotly chart on the page has drawn a trace; returns how many charts there are."""
    charts = page.locator("[data-testid='stPlotlyChart'] .js-plotly-plot")
    charts.first.wait_for(timeout=timeout)
    n = charts.count()
    for i in range(n):
        charts.nth(i).locator(DRAWN).first.wait_for(timeout=timeout)
    return n


def open_page(browser, url: str, height: int = 1000):
    ctx = browser.new_context(viewport={"width": 1500, "height": height})
    page = ctx.new_page()
    page.goto(url)
    wait_for_app(page)
    return ctx, page


# Without Debian's chromium a browser test is skipped on a developer's machine and fails in CI.
NEEDS_CHROMIUM = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK) and not os.environ.get("CI"),
    reason="needs Debian chromium (apt-get install chromium)",
)
E2E = [pytest.mark.e2e, NEEDS_CHROMIUM]
