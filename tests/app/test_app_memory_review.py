"""AppTest: the Subspaces tab's decompositions run one at a time in the server. Each checks its memory matrix by
matrix against what is free; two sessions whose URLs differed only in K both passed the check of the same first
matrix and together held more than the machine had. A result already in the disk cache is shown at once, while
another session's decomposition runs."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.ckpt_fixtures import bf16_llama_pair

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("typed_options")]
TAB = "Subspaces of W_base vs W_ft"


@pytest.fixture(scope="module")
def pair(app_env):
    """A bf16 Llama pair of its own (no other test has decomposed it) inside the app's allowed roots."""
    home = bf16_llama_pair(app_env / "memory-review")
    yield home
    shutil.rmtree(home, ignore_errors=True)


def _open(home: Path, k: int):
    from streamlit.testing.v1 import AppTest

    from tests.app_fixtures import APP

    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["base"] = str(home / "base")
    at.query_params["ft"] = [str(home / "ft")]
    at.query_params["spec_tab"] = TAB
    at.query_params["sub_k"] = str(k)
    at.run()
    at.switch_page("views/spectra.py").run()
    return at


def test_subspace_decompositions_take_turns_and_a_cached_k_waits_for_nobody(pair, monkeypatch):
    from subnetviz import ui
    from subnetviz.analysis import subspaces

    monkeypatch.setenv("SUBNETVIZ_CONFIRM_ABOVE_S", "1000000")  # nothing asked: the sessions compute at once
    at = _open(pair, 16)  # K = 16: in the disk cache from now on
    assert not at.exception and not at.error and len(at.get("plotly_chart")) == 3
    ui._memo.clear()  # (and read from the disk from now on)
    real, lock = subspaces.compare_subspaces, threading.Lock()
    comparing, most, seen = [0], [0], set()
    first, let_go = threading.Event(), threading.Event()

    def slow(name, a, b, options, **kwargs):
        with lock:
            comparing[0] += 1
            most[0] = max(most[0], comparing[0])
            seen.add(options.k)
        first.set()
        let_go.wait(120)
        try:
            return real(name, a, b, options, **kwargs)
        finally:
            with lock:
                comparing[0] -= 1

    monkeypatch.setattr(subspaces, "compare_subspaces", slow)
    drawn: dict[int, int] = {}

    def session(k: int) -> None:
        page = _open(pair, k)
        drawn[k] = -1 if page.exception or page.error else len(page.get("plotly_chart"))

    sessions = [threading.Thread(target=session, args=(k,), daemon=True) for k in (4, 8)]
    sessions[0].start()
    assert first.wait(180), "the first session's decomposition did not start"
    sessions[1].start()
    time.sleep(3)  # time enough for the second session to start comparing, were it not waiting
    assert seen == {4}
    at = _open(pair, 16)  # a cached K, while K = 4 is being computed
    assert not at.exception and not at.error and len(at.get("plotly_chart")) == 3 and sessions[0].is_alive()
    let_go.set()
    for s in sessions:
        s.join(180)
    assert drawn == {4: 3, 8: 3} and most[0] == 1 and seen == {4, 8}
