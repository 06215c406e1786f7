"""Streamlit's upload endpoint on a shared server (subnetviz.ui.guard_uploads): a file is kept in the server's
memory only for a session whose role may upload, and only within the caps (one server.maxUploadSize a session,
ui.UPLOADS_HELD of them for the server).

Before, ``PUT /_stcore/upload_file/{session}/{any id}`` kept any file up to 200 MB for any session, a stranger's
on a closed server's login form included, until the session ended: a loop of PUTs took the server down. Here the
guard wraps a real ``MemoryUploadedFileManager`` (a subclass, so the class the server uses is left as it is) and
the roles are planted; the roles' lookup is checked on real ``SessionState`` objects.
"""

from __future__ import annotations

import pytest
from starlette.exceptions import HTTPException
from streamlit import config as st_config
from streamlit.proto.WidgetStates_pb2 import WidgetStates
from streamlit.runtime import Runtime
from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
from streamlit.runtime.state.session_state import SessionState
from streamlit.runtime.uploaded_file_manager import UploadedFileRec

from subnetviz import access, ui

MB = 1 << 20
EDITOR = access.Role(access.EDITOR, frozenset(access.ACTIONS))
VIEWER = access.Role(access.VIEWER, access.ALWAYS)


@pytest.fixture
def manager(monkeypatch):
    """A guarded upload manager, with server.maxUploadSize 2 MB and the sessions' roles planted in ``roles``."""

    class Manager(MemoryUploadedFileManager):
        pass

    # (the method as Streamlit ships it, also where this process's app runs guarded Streamlit's own class)
    Manager.add_file = _unguarded()
    ui.guard_uploads(Manager)
    saved = st_config.get_option("server.maxUploadSize")
    st_config.set_option("server.maxUploadSize", 2)
    roles: dict[str, access.Role | None] = {}
    monkeypatch.setattr(ui, "_session_role", lambda session_id: roles.get(session_id))
    mgr = Manager("/_stcore/upload_file")
    mgr.roles = roles
    yield mgr
    st_config.set_option("server.maxUploadSize", saved)


def _unguarded():
    add_file = MemoryUploadedFileManager.add_file
    return getattr(add_file, "__wrapped__", add_file)


def put(mgr, session: str, file_id: str, size: int) -> int:
    """The HTTP status the upload endpoint answers for a PUT of ``size`` bytes (204: stored)."""
    try:
        mgr.add_file(session, UploadedFileRec(file_id, "x.bin", "application/octet-stream", b"\0" * size))
    except HTTPException as exc:
        return exc.status_code
    return 204


def held(mgr, session: str | None = None) -> int:
    """Bytes the manager keeps (for ``session``, else in all), counted from its files."""
    sessions = [session] if session else list(mgr.file_storage)
    return sum(len(f.data) for s in sessions for f in mgr.file_storage.get(s, {}).values())


def test_a_session_that_may_not_upload_has_nothing_kept(manager):
    manager.roles.update({"viewer": VIEWER})  # "stranger": no role (a closed server's login form)
    for i in range(5):
        assert put(manager, "stranger", f"id-{i}", 1 * MB) == 403
        assert put(manager, "viewer", f"id-{i}", 1 * MB) == 403
        assert put(manager, "gone", f"id-{i}", 1 * MB) == 403  # no such session
    assert held(manager) == 0 and dict(manager.file_storage) == {}
    assert manager.get_stats() == {}  # Streamlit's own count of what it holds: nothing


def test_an_editor_keeps_one_uploads_worth_and_may_replace_it(manager):
    manager.roles["ed"] = EDITOR
    assert put(manager, "ed", "a", 2 * MB) == 204  # exactly the per-file limit
    assert put(manager, "ed", "b", 1) == 413  # one byte more than a session may hold
    assert put(manager, "ed", "a", 2 * MB) == 204  # the same id again replaces itself
    assert held(manager, "ed") == 2 * MB
    manager.remove_file("ed", "a")  # the uploader's "remove" (a DELETE)
    assert put(manager, "ed", "b", 1 * MB) == 204 and put(manager, "ed", "c", 1 * MB) == 204
    assert put(manager, "ed", "d", 1) == 413
    assert held(manager, "ed") == 2 * MB and sorted(manager.file_storage["ed"]) == ["b", "c"]


def test_the_whole_server_keeps_at_most_uploads_held_full_uploads(manager):
    sessions = [f"ed{i}" for i in range(ui.UPLOADS_HELD + 2)]
    manager.roles.update(dict.fromkeys(sessions, EDITOR))
    status = [put(manager, s, "f", 2 * MB) for s in sessions]
    assert status == [204] * ui.UPLOADS_HELD + [413, 413]
    assert held(manager) == ui.UPLOADS_HELD * 2 * MB
    manager.remove_session_files(sessions[0])  # a session ends: its room is free again
    assert put(manager, sessions[-1], "f", 2 * MB) == 204


def test_the_guard_is_put_on_once(manager):
    wrapped = type(manager).add_file
    ui.guard_uploads(type(manager))
    assert type(manager).add_file is wrapped
    manager.roles["ed"] = EDITOR
    assert put(manager, "ed", "a", 2 * MB) == 204 and put(manager, "ed", "b", 1) == 413  # counted once, not twice


def test_the_route_answers_a_refused_put_before_reading_it_and_counts_uploads_under_way(manager):
    """The PUT route checks the request's headers first: a session that may not upload is answered without its body
    being read (the endpoint, which reads it, is never called), and the bytes of uploads under way count against the
    server's cap, so that many large PUTs at once cannot each be read into memory."""
    import asyncio

    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    editors = [f"ed{i}" for i in range(ui.UPLOADS_HELD + 1)]
    manager.roles.update(dict.fromkeys(editors, EDITOR))
    reading: list[str] = []

    async def scenario():
        release = asyncio.Event()

        async def endpoint(request):  # Streamlit's: reads the body (here: waits), stores, answers 204
            reading.append(request.path_params["session_id"])
            await release.wait()
            return Response(status_code=204)

        async def delete(request):
            return Response(status_code=204)

        path = "/_stcore/upload_file/{session_id}/{file_id}"
        routes = [Route(path, endpoint, methods=["PUT"]), Route(path, delete, methods=["DELETE"])]
        put, kept = ui.guarded_upload_routes(routes, manager)
        assert kept is routes[1]  # the DELETE route as Streamlit made it

        def request(session: str, length: int | None):
            headers = [] if length is None else [(b"content-length", str(length).encode())]
            params = {"session_id": session, "file_id": "f"}
            return Request({"type": "http", "method": "PUT", "path_params": params, "headers": headers})

        assert (await put.endpoint(request("stranger", MB))).status_code == 403
        assert reading == []  # refused from the headers
        under_way = [asyncio.create_task(put.endpoint(request(s, 2 * MB))) for s in editors[:-1]]
        await asyncio.sleep(0.01)
        assert sorted(reading) == sorted(editors[:-1])
        assert (await put.endpoint(request(editors[-1], 2 * MB))).status_code == 413  # the server's cap, under way
        assert (await put.endpoint(request(editors[-1], None))).status_code == 413  # no length: the whole limit
        release.set()
        assert [r.status_code for r in await asyncio.gather(*under_way)] == [204] * ui.UPLOADS_HELD
        assert ui._receiving[0] == 0
        assert (await put.endpoint(request(editors[-1], 2 * MB))).status_code == 204

    asyncio.run(scenario())


class _Sessions:
    """The runtime's session manager as _session_role reads it: active sessions by id."""

    def __init__(self, states: dict[str, SessionState]):
        self.states = states

    def get_active_session_info(self, session_id):
        state = self.states.get(session_id)
        return None if state is None else type("Info", (), {"session": type("S", (), {"session_state": state})})


@pytest.mark.parametrize("closed", [False, True])
def test_a_sessions_role_is_the_one_the_gate_stored_else_the_anonymous_visitors(monkeypatch, closed):
    """Read from the session's own state as ``ui.gate`` left it. A widget value a client sends under the key
    ``_access`` is no role (Streamlit does not hand it out without the widget's metadata); a session the gate has
    not admitted gets the anonymous visitor's role: none on a closed server, an editor's on an open one."""
    for name in ("SUBNETVIZ_ACCESS_TOKEN", "SUBNETVIZ_EDITOR_TOKEN", "SUBNETVIZ_PASSWORD", "SUBNETVIZ_VISITORS_CAN"):
        monkeypatch.delenv(name, raising=False)
    if closed:
        monkeypatch.setenv("SUBNETVIZ_ACCESS_TOKEN", "viewer-token-0123456789")
    monkeypatch.setattr(ui, "_auth_section", lambda: {})
    viewer, fresh, forged = SessionState(), SessionState(), SessionState()
    viewer["_access"] = VIEWER
    sent = WidgetStates()
    forged_widget = sent.widgets.add()
    forged_widget.id, forged_widget.string_value = "_access", "editor"
    forged.on_script_will_rerun(sent)
    runtime = type("Runtime", (), {"_session_mgr": _Sessions({"viewer": viewer, "fresh": fresh, "forged": forged})})
    monkeypatch.setattr(Runtime, "_instance", runtime)
    assert ui._session_role("viewer") == VIEWER
    assert ui._session_role("nobody") is None
    anonymous = None if closed else EDITOR
    assert ui._session_role("fresh") == anonymous
    assert ui._session_role("forged") == anonymous


def test_the_server_command_guards_uploads_before_the_server_starts(monkeypatch):
    """``python -m subnetviz.serve run app.py`` (make app, subnetviz app) guards Streamlit's own upload manager
    before the server starts: a session that never runs the script (so never reaches ui.gate) is covered too."""
    import sys

    from streamlit.web import cli
    from streamlit.web.server.starlette import starlette_app

    from subnetviz import serve

    make = starlette_app.create_upload_routes
    monkeypatch.setattr(MemoryUploadedFileManager, "add_file", _unguarded())  # (both put back after the test)
    monkeypatch.setattr(starlette_app, "create_upload_routes", getattr(make, "__wrapped__", make))
    monkeypatch.setattr(cli, "main", lambda **kwargs: None)
    monkeypatch.setattr(sys, "argv", ["subnetviz.serve", "run", "app.py"])
    monkeypatch.setenv(serve.WARM_ENV, "0")
    monkeypatch.delenv("SUBNETVIZ_MAX_UPLOAD_MB", raising=False)
    assert not getattr(MemoryUploadedFileManager.add_file, "_subnetviz_guard", False)
    assert not getattr(starlette_app.create_upload_routes, "_subnetviz_guard", False)
    serve.main()
    assert MemoryUploadedFileManager.add_file._subnetviz_guard
    assert starlette_app.create_upload_routes._subnetviz_guard  # the PUT route the server builds, guarded too


def test_make_apps_server_refuses_a_bad_setting_before_it_starts(tmp_path):
    """``make app`` (``python -m subnetviz.serve run app.py``) with SUBNETVIZ_CACHE_GB=lots served the app; the
    value was refused only on the first page that published an analysis. Now one line, exit 2, no server."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "SUBNETVIZ_CACHE_GB": "lots", "SUBNETVIZ_HOME": str(tmp_path), "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-m", "subnetviz.serve", "run", "app.py", "--server.port", "1"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr == "error: SUBNETVIZ_CACHE_GB='lots': expected a number of gigabytes > 0 (or 'inf'), e.g. 20.\n"


def test_make_apps_server_refuses_a_bad_access_setting_before_it_starts(tmp_path):
    """A too-short SUBNETVIZ_EDITOR_TOKEN started the server (health ok, the console silent) and every visitor read
    "Access to this server is misconfigured"; now one line naming the setting, exit 2, no server (the secret is
    never quoted)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "SUBNETVIZ_EDITOR_TOKEN": "edsecret123",
        "SUBNETVIZ_HOME": str(tmp_path),
        "PYTHONPATH": str(root),
    }
    env.pop("SUBNETVIZ_ACCESS_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "subnetviz.serve", "run", "app.py", "--server.port", "1"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: SUBNETVIZ_EDITOR_TOKEN") and "16" in done.stderr, done.stderr
    assert "edsecret123" not in done.stderr and done.stderr.count("\n") == 1
