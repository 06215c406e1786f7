"""End-to-end, on a real closed server: what Streamlit's upload endpoint keeps in the server's memory.

Every tab has a Streamlit session, a stranger's on the login form too, and the XSRF cookie is handed to that page.
``PUT /_stcore/upload_file/{session}/{any file id}`` kept each file (up to server.maxUploadSize) in memory until the
session ended, whoever sent it: four PUTs of 150 MB from the login form took the server's memory from 162 to 764 MiB
(reviewer's repro), and a loop of them to an out-of-memory kill. Here, with real HTTP PUTs from real sessions:

- a stranger on the login form and an admitted viewer are refused (403) from the request's headers, the body
  never read, and the server's memory does not grow;
- an editor still uploads a mask through the Workspace page's uploader, and keeps at most one upload's worth
  (server.maxUploadSize, from SUBNETVIZ_MAX_UPLOAD_MB) at once (413 past it).
"""

from __future__ import annotations

import http.client
import os
import select
import tempfile
import time
import uuid
from urllib.parse import urlsplit

import psutil
import pytest

from tests import app_fixtures
from tests.browser import E2E, start_server, wait_for_app

pytestmark = E2E

TOKEN, EDITOR_TOKEN = "viewer-token-0123456789abcdef", "editor-token-fedcba9876543210"
MB = 1 << 20
LIMIT_MB = 40  # SUBNETVIZ_MAX_UPLOAD_MB: the server's per-file limit, and what one session may keep


@pytest.fixture(scope="module")
def closed_server(app_home):
    env = {
        **os.environ,
        "SUBNETVIZ_HOME": str(app_home),
        "SUBNETVIZ_ROOTS": app_fixtures.app_roots(app_home),
        "OMP_NUM_THREADS": "1",
        "SUBNETVIZ_ACCESS_TOKEN": TOKEN,
        "SUBNETVIZ_EDITOR_TOKEN": EDITOR_TOKEN,
        "SUBNETVIZ_MAX_UPLOAD_MB": str(LIMIT_MB),
    }
    log = tempfile.NamedTemporaryFile("w", prefix="subnetviz-e2e-uploads-", suffix=".log", delete=False)
    try:
        proc, url = start_server(env, log=log)
        try:
            yield proc, url
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    finally:
        log.close()


def _open(browser, url: str):
    """A fresh tab on ``url``, once drawn: (context, page, its Streamlit session id, its XSRF cookie)."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    ids: list[str] = []

    def frame(payload) -> None:
        if isinstance(payload, bytes | bytearray):
            msg = ForwardMsg()
            try:
                msg.ParseFromString(bytes(payload))
            except Exception:  # noqa: BLE001 - not a ForwardMsg (a ping)
                return
            if msg.HasField("new_session") and msg.new_session.initialize.session_id:
                ids.append(msg.new_session.initialize.session_id)

    ctx = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = ctx.new_page()
    page.on("websocket", lambda ws: ws.on("framereceived", frame))
    page.goto(url)
    wait_for_app(page)
    cookies = {c["name"]: c["value"] for c in ctx.cookies()}
    assert ids and cookies.get("_streamlit_xsrf"), "no session id or XSRF cookie"
    return ctx, page, ids[0], cookies["_streamlit_xsrf"]


def _put(url: str, session: str, xsrf: str, size: int, file_id: str | None = None) -> tuple[int, bool]:
    """One PUT of ``size`` bytes as the file uploader sends it: (HTTP status, whether the server answered before
    the body was sent). A refused PUT is answered from its headers alone: its body is never read."""
    boundary = "subnetviz-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
    try:
        conn.putrequest("PUT", f"/_stcore/upload_file/{session}/{file_id or uuid.uuid4()}")
        for key, value in {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail)),
            "X-Xsrftoken": xsrf,
            "Cookie": f"_streamlit_xsrf={xsrf}",
        }.items():
            conn.putheader(key, value)
        conn.endheaders()
        if select.select([conn.sock], [], [], 1.0)[0]:  # answered from the headers
            return conn.getresponse().status, True
        conn.send(head)
        chunk = b"\0" * MB
        for start in range(0, size, MB):
            conn.send(chunk[: min(MB, size - start)])
        conn.send(tail)
        return conn.getresponse().status, False
    finally:
        conn.close()


def _rss(proc) -> int:
    return psutil.Process(proc.pid).memory_info().rss


def test_a_stranger_on_the_login_form_has_nothing_kept(browser, closed_server):
    proc, url = closed_server
    ctx, page, session, xsrf = _open(browser, url)
    try:
        assert page.get_by_text("This server is shared with invited people only").count() == 1
        before = _rss(proc)
        answers = [_put(url, session, xsrf, (LIMIT_MB - 1) * MB) for _ in range(4)]
        time.sleep(1)
        grown = _rss(proc) - before
        # refused from the headers, the body never read (before: 204 each, and ~39 MB more held per PUT)
        assert answers == [(403, True)] * 4
        assert grown < (LIMIT_MB - 1) * MB, f"the server's memory grew by {grown / MB:.0f} MB"
    finally:
        ctx.close()


def test_a_viewer_has_nothing_kept(browser, closed_server):
    proc, url = closed_server
    ctx, page, session, xsrf = _open(browser, f"{url}/?token={TOKEN}")
    try:
        assert page.get_by_test_id("stSidebar").get_by_text("Signed in as viewer").count() == 1
        assert _put(url, session, xsrf, 1 * MB) == (403, True)
    finally:
        ctx.close()


def test_an_editor_uploads_a_mask_and_keeps_at_most_one_uploads_worth(browser, closed_server, app_home, tmp_path):
    import torch

    from subnetviz.masks import MaskSet, save_mask_set

    proc, url = closed_server
    mask = tmp_path / "endpoint.safetensors"
    save_mask_set(mask, MaskSet({"w": torch.rand(8, 8, generator=torch.Generator().manual_seed(0)) < 0.5}, {}))
    ctx, page, session, xsrf = _open(browser, f"{url}/workspace?token={EDITOR_TOKEN}")
    try:
        page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(mask))  # the page's own uploader
        page.get_by_text("Stored as endpoint-").first.wait_for(timeout=60_000)
        assert page.locator("[data-testid='stAlertContentError']").count() == 0
        half = LIMIT_MB // 2 * MB
        assert _put(url, session, xsrf, half, file_id="half") == (204, False)
        assert _put(url, session, xsrf, half, file_id="half") == (204, False)  # the same id again replaces itself
        # the session keeps the mask (a few hundred bytes) and one half: a second half is past one upload's worth
        assert _put(url, session, xsrf, half) == (413, True)
    finally:
        ctx.close()
        for f in (app_home / "uploads").glob("endpoint-*"):
            f.unlink()
