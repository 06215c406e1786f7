"""The fourth regression read, on the app (AppTest): a mask uploaded on the Workspace page, or a released pickle
imported on the Bigram page, while another session's whole-model computation holds the server's memory lock, waited
for it without a word. Now a spinner says the upload waits for another computation on this server, with the time
waited, and the upload is stored once the computation ends. The lock is held by another thread for 2.5 s, as a
Behaviour run holds it; the spinners the pages open are recorded as they are asked for (they are gone at the end)."""

from __future__ import annotations

import io
import pickle
import threading
import time

import numpy as np
import pytest

from subnetviz import config
from tests.app_fixtures import open_page

pytestmark = pytest.mark.slow

HELD_S = 2.5


@pytest.fixture
def spinners(monkeypatch):
    """The (text, show_time) of every spinner a page opens."""
    import streamlit as st

    seen: list[tuple[str, bool]] = []
    original = st.spinner

    def spinner(text="In progress...", *args, **kwargs):
        seen.append((text, bool(kwargs.get("show_time"))))
        return original(text, *args, **kwargs)

    monkeypatch.setattr(st, "spinner", spinner)
    return seen


@pytest.fixture
def uploads_let_in(monkeypatch):
    """AppTest's stand-in runtime has no session manager, which the guard of Streamlit's upload endpoint asks for
    the session's role (``ui.upload_refusal``, tested on its own): here every file set on the uploader is let in."""
    from subnetviz import ui

    monkeypatch.setattr(ui, "upload_refusal", lambda *args, **kwargs: None)


def _hold_memory_lock() -> threading.Thread:
    """Another session's computation: the memory lock held, in its own thread, for HELD_S seconds."""
    held = threading.Event()

    def hold():
        with config.MEMORY_LOCK:
            held.set()
            time.sleep(HELD_S)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    held.wait()
    return t


def _waits(spinners) -> list[tuple[str, bool]]:
    return [s for s in spinners if "Waiting for another computation on this server to finish" in s[0]]


def test_an_upload_behind_a_computation_shows_a_spinner_then_is_stored(app_env, spinners, uploads_let_in):
    planted = np.random.default_rng(4).random((6, 6)) < 0.5
    buf = io.BytesIO()
    np.savez(buf, w=planted)
    at = open_page("workspace")
    assert not at.exception
    assert not _waits(spinners)  # nothing waits: no spinner
    holder = _hold_memory_lock()
    t0 = time.monotonic()
    at.file_uploader(key="mask_upload").set_value(("waited mask.npz", buf.getvalue(), "application/octet-stream"))
    at.run()
    took = time.monotonic() - t0
    holder.join()
    assert not at.exception and not at.main.error, [e.value for e in at.main.error]
    assert took >= 2.0, took
    waits = _waits(spinners)
    assert len(waits) == 1 and "before storing the upload" in waits[0][0] and waits[0][1], spinners
    stored = [s.value for s in at.success if s.value.startswith(r"Stored as waited\_mask\-")]
    assert stored, [s.value for s in at.success]


def test_an_import_behind_a_computation_shows_a_spinner_then_is_stored(app_env, spinners):
    from subnetviz.bigram.maskable import maskable_names
    from tests.models import bigram_model

    root = app_env / "regressions4"
    gpt2 = bigram_model("gpt2")
    gpt2.save_pretrained(root / "gpt2")
    rng = np.random.default_rng(0)
    payload = {n: rng.random(tuple(gpt2.get_parameter(n).shape)) < 0.1 for n in maskable_names(gpt2)}
    path = root / "subnetwork_dict_lambda1e1.pickle"
    path.write_bytes(pickle.dumps(payload))
    at = open_page("bigram", bg_model=str(root / "gpt2"))
    assert not at.exception
    at.text_input(key="bg_pickle").input(str(path)).run()
    holder = _hold_memory_lock()
    at.button(key="bg_import").click().run()
    holder.join()
    assert not at.exception
    waits = _waits(spinners)
    assert len(waits) == 1 and "before importing the pickle" in waits[0][0] and waits[0][1], spinners
    saved = [s.value for s in at.success if s.value.startswith(r"Saved subnetwork\_dict\_lambda1e1\-")]
    assert saved, [s.value for s in at.success]  # (shown as text: Markdown's characters escaped)


def test_a_computation_behind_another_shows_a_spinner_then_runs(app_env, spinners):
    """Behaviour (whole models in memory) behind another session's computation: it waited minutes without a word,
    the page looking hung; a spinner says it waits, with the time waited, and the page draws once it may go on."""
    from subnetviz import ui

    query = {"ft": ["grpo-s0"], "bh_limit": "16", "bh_curve": "false", "bh_masks": []}
    ui._memo.clear()  # (not served from this server's memory: it takes its turn)
    holder = _hold_memory_lock()
    at = open_page("behavior", **query)
    holder.join()
    assert not at.exception and not at.error, [e.value for e in at.error]
    waits = _waits(spinners)
    assert len(waits) == 1 and waits[0][1] and "before this one starts" in waits[0][0], waits
    assert at.get("plotly_chart")
