"""The only module of subnetviz that imports streamlit.

It owns what every page shares: the workspace sidebar (base, finetuned checkpoints, masks, device,
precision — bound to query parameters so a copied URL reopens the same view), the cached loaders
(keys include path, fingerprint, device and dtype), the error boundary that turns a
:class:`~subnetviz.errors.SubnetvizError` into a readable message, and the export buttons.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
import time
import traceback
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd
import streamlit as st

from subnetviz import config, selection, uilogic
from subnetviz.cache import MANIFEST, file_stamp, touch
from subnetviz.errors import CastRangeError, NonFiniteError, SubnetvizError
from subnetviz.memo import Memo
from subnetviz.selection import PRECISIONS, Workspace, saved_masks, zoo_members
from subnetviz.text import file_slug
from subnetviz.uilogic import plain  # pages call ui.plain


# --- untrusted text: shown as text (uilogic.plain) -----------------------------------------------------
def error(message: object) -> None:
    """An error box in the main area whose text is shown as text (see :func:`plain`)."""
    st.error(plain(message), icon=":material/error:")


def warning(message: object) -> None:
    st.warning(plain(message), icon=":material/warning:")


# --- errors ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def said_here():
    """An action's input error (a launch, an upload, an import) said where the action is, in the main
    area, and the rest of the page still drawn: through run_page the message ended the page there (a
    runs list, the results or the zoo manifest after the action were not drawn)."""
    try:
        yield
    except SubnetvizError as exc:
        error(exc)


@contextlib.contextmanager
def memory_wait(doing: str) -> Iterator[selection.Wait]:
    """A ``wait`` hook for :func:`selection.save_upload` and :func:`selection.import_released` (``doing``: "storing
    the upload"): while another computation on this server holds the memory lock (:func:`selection.memory_turn`), a
    spinner says what waits and for how long, gone once it goes on. Every second the hook sends the page a message,
    where Streamlit stops the script of a visitor who left or did something else: the wait ends with it. (An upload
    waited minutes, without a word, behind another visitor's Behaviour run.)"""
    with contextlib.ExitStack() as shown:
        slot: list = []

        def tick(waited: float | None) -> None:
            if waited is None:  # its turn: the spinner goes
                shown.close()
                return
            if not slot:
                shown.enter_context(
                    st.spinner(
                        f"Waiting for another computation on this server to finish before {doing} (one at a time: "
                        "each checks the memory it will hold)…",
                        show_time=True,
                    )
                )
                slot.append(st.empty())
            slot[0].empty()  # a message to the page: a stop or rerun asked meanwhile is taken here

        yield tick


def run_page(body: Callable[[], None], *, fresh: bool = True) -> None:
    """Run a page body; input errors become one readable message, bugs a short notice (no traceback).

    ``fresh``: a page run starts with no collected figures, so an export holds this view's figures
    only, never a stale one (fragments, which redraw a part of the page, pass False).
    ``SUBNETVIZ_DEV=1`` shows the traceback of unexpected errors, for development only.
    """
    if fresh:
        st.session_state["_figures"], st.session_state["_tables"] = {}, {}
    t0 = time.perf_counter()
    try:
        body()
    except SubnetvizError as exc:
        error(exc)
    except Exception as exc:  # a bug: keep the server alive, say so plainly
        if type(exc).__module__.startswith("streamlit"):
            raise  # st.stop / st.rerun / page switches are control flow, not errors
        st.error(
            f"Something went wrong inside subnetviz ({type(exc).__name__}). "
            "This is a bug; the details are in the server log.",
            icon=":material/bug_report:",
        )
        print(traceback.format_exc(), flush=True)
        if os.environ.get("SUBNETVIZ_DEV") == "1":
            st.code(traceback.format_exc())
    finally:
        if os.environ.get("SUBNETVIZ_PROFILE_LOG"):
            from streamlit.runtime.scriptrunner import get_script_run_ctx

            ctx = get_script_run_ctx()
            uilogic.write_profile(body, time.perf_counter() - t0, ctx.session_id if ctx else "")
        if fresh and st.runtime.exists():  # a served page (not an AppTest): see uilogic.freeze_heap
            uilogic.freeze_heap()


# --- the chart and table modules, loaded while the page waits -----------------------------------------
# Streamlit's frontend loads an element's module only when the first such element arrives. Evaluating
# the Plotly one (4.7 MB) took 1.2-1.5 s of the 2-2.7 s a chart page needed after a click from Home on
# this machine, and the table's (DataFrame + Arrow, 1.2 MB) most of the rest, while the script itself
# ran in 0.05-0.25 s. Importing those modules as soon as any page opens lets the browser do it while it
# waits for the script (or the reader): the module map then hands the elements their evaluated modules.
# It starts when the browser is idle, so a page without charts draws first. Only Streamlit's own static
# files are named; nothing else runs.
_PRELOADED = ("PlotlyChart", "DataFrame")
_PRELOAD = """<script>(() => {
  if (window.__subnetvizCharts) return;
  window.__subnetvizCharts = true;
  const main = document.querySelector('script[type="module"][src*="static/js/"]');
  // when the page has drawn what it has (a page without charts is not slowed by them), or at once
  // while the server computes: the browser is idle then
  const later = window.requestIdleCallback || ((f) => setTimeout(f, 50));
  if (main) later(() => Promise.all(NAMES.map((n) => import(new URL(n, main.src).href))).then(
    () => { window.__subnetvizCharts = "loaded"; }, () => { window.__subnetvizCharts = false; }));
})();</script>"""


@functools.cache
def _element_modules() -> tuple[str, ...]:
    """File names of the frontend's modules in :data:`_PRELOADED` in this Streamlit build (each found once)."""
    js = Path(st.__file__).parent / "static" / "static" / "js"
    found = [list(js.glob(f"{name}.*.js")) for name in _PRELOADED]
    return tuple(f[0].name for f in found if len(f) == 1)


def preload_charts() -> None:
    """Start loading the chart and table modules in the browser now (once per tab; see _PRELOAD)."""
    names = _element_modules()
    if names and st.runtime.exists():
        import json

        with st.sidebar:
            st.html(_PRELOAD.replace("NAMES", json.dumps(list(names))), unsafe_allow_javascript=True)


# --- access: who may enter, and launch or upload (policy in subnetviz/access.py) ----------------------
def _auth_section() -> dict:
    """The [auth] section of Streamlit's secrets ({} when there is none): it turns on st.login."""
    return st.secrets.to_dict().get("auth", {}) if st.secrets.load_if_toml_exists() else {}


def gate() -> None:
    """Admit this session or stop the script at a login form; app.py calls it before the sidebar and page.

    The session keeps only the resulting role (``_access``); pages ask :func:`can`. A misconfigured
    server shows nothing but the one-line reason (it fails closed).
    """
    from subnetviz import access

    guard_uploads()  # before the login form: a stranger's session exists as soon as the page opens
    try:
        pol = access.policy(auth=_auth_section())
    except SubnetvizError as exc:
        error(f"Access to this server is misconfigured: {exc}")
        st.stop()
    user = st.user.to_dict() if pol.oidc and st.user.is_logged_in else None
    given = st.query_params.get("token")
    found = [access.role_for_user(user, pol) if user else None, access.check_token(given, pol)]
    role = uilogic.strongest([*found, st.session_state.get("_access"), pol.anonymous()])
    if role is None:
        st.session_state.pop("_access", None)
        _login(pol, refused=user is not None, bad_token=given is not None)  # stops the script
    st.session_state["_access"] = role
    if found[1] is not None and found[1].name == access.EDITOR:
        # An editor's token leaves the address bar once it has admitted the session: a copied link of this view
        # (the way views are shared) must not hand out editor rights. A viewer's token stays: sharing it is how
        # a closed server's links reach collaborators.
        del st.query_params["token"]
    if pol.methods:
        with st.sidebar:
            st.caption(f"Signed in as {role.name}" + ("" if role.can("launch") else " (view and export)"))
            if user and st.button("Log out", key="_logout"):
                st.logout()
            if role.name == "viewer" and (pol.editor_token or pol.editor_password):
                with st.expander("Editor access"):
                    _secret_form(pol, "Editor password or token")


def _login(pol, *, refused: bool, bad_token: bool) -> None:
    st.title("subnetviz")
    if refused:
        st.warning("This account may not use this server; ask its owner to add it.", icon=":material/lock:")
        if st.button("Log out", key="_logout"):
            st.logout()
        st.stop()
    st.caption("This server is shared with invited people only.")
    if bad_token:
        time.sleep(1.0)  # slows guessing
        st.error("The token in this link is not valid (or no longer).", icon=":material/lock:")
    for provider in pol.oidc_providers:
        if st.button(f"Log in with {provider}" if provider else "Log in", key=f"_login-{provider}", type="primary"):
            st.login(provider)
    if "password" in pol.methods or "token" in pol.methods:
        _secret_form(pol, "Password" if "password" in pol.methods else "Access token")
    st.stop()


def _secret_form(pol, label: str) -> None:
    """A password/token form; on success the session keeps the role (never the secret) and reruns."""
    from subnetviz import access

    with st.form("_access_form", clear_on_submit=True, border=False):
        secret = st.text_input(label, type="password", key="_access_secret")
        submitted = st.form_submit_button("Enter", icon=":material/login:")
    if submitted:
        role = access.check_password(secret, pol) or access.check_token(secret, pol)
        if role is not None:
            st.session_state["_access"] = role
            st.rerun()
        time.sleep(1.0)  # slows guessing
        st.error(f"Wrong {label.lower()}.", icon=":material/lock:")


def can(action: str) -> bool:
    """Whether this session may ``action`` (``"view"``, ``"export"``, ``"launch"``, ``"upload"``).

    Without :func:`gate` (a page run on its own, e.g. in a test) this is the anonymous visitor's right.
    """
    role = st.session_state.get("_access") or uilogic.anonymous_role(_auth_section())
    return role is not None and role.can(action)


def allowed(action: str) -> bool:
    """:func:`can`, and where not, one line in place of the widget saying why."""
    from subnetviz import access

    if can(action):
        return True
    st.caption(access.refusal(action))
    return False


# --- uploads: what Streamlit's upload endpoint may keep in the server's memory ----------------------------
# Every tab has a Streamlit session, a stranger's on a closed server's login form too, and Streamlit's
# ``PUT /_stcore/upload_file/{session}/{file id}`` kept any file up to server.maxUploadSize for any session and
# any file id, in memory, until the session ended: a loop of PUTs took the server down. Guarded here twice: the
# route answers a PUT that :func:`upload_refusal` refuses before reading its body (bytes being received count
# against the server's cap), and the file manager's ``add_file`` keeps a file only as it allows.
UPLOADS_HELD = 4
"""Full-size uploads (server.maxUploadSize each) the whole server holds in memory at once, those kept and those
being received, all sessions together; a session keeps at most one's worth."""

_UPLOAD_LOCK = threading.Lock()  # a file's check and its storing (or its bytes' reservation), one at a time
_receiving = [0]  # bytes of the uploads being received now: their Content-Length, reserved before the body is read


def guard_uploads(manager_class: type | None = None) -> None:
    """Guard Streamlit's upload endpoint (see above). ``add_file`` of its in-memory upload manager
    (``manager_class``, default the one the server uses) stores a file only as :func:`upload_refusal` allows, else
    raises its HTTP status (403, 413); the PUT route checks the same before it reads the body, where it is built
    after this call. Once per process: ``subnetviz.serve`` calls it before the server starts (both guards, and a
    session that never runs the script is covered), :func:`gate` on every run (a plain ``streamlit run``: the
    manager's guard)."""
    if manager_class is None:
        from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager as manager_class

        _guard_upload_route()
    original = manager_class.add_file
    if getattr(original, "_subnetviz_guard", False):
        return

    @functools.wraps(original)
    def add_file(self, session_id: str, file) -> None:
        with _UPLOAD_LOCK:
            refused = upload_refusal(self, session_id, file.file_id, len(file.data))
            if refused is not None:
                from starlette.exceptions import HTTPException

                raise HTTPException(status_code=refused[0], detail=refused[1])
            original(self, session_id, file)

    add_file._subnetviz_guard = True
    manager_class.add_file = add_file


def _guard_upload_route() -> None:
    """Make the server's app build its upload routes through :func:`guarded_upload_routes` (Streamlit 1.67's
    Starlette app, which builds them when the server starts)."""
    from streamlit.web.server.starlette import starlette_app

    make = starlette_app.create_upload_routes
    if getattr(make, "_subnetviz_guard", False):
        return

    @functools.wraps(make)
    def create_upload_routes(runtime, upload_mgr, base_url):
        return guarded_upload_routes(make(runtime, upload_mgr, base_url), upload_mgr)

    create_upload_routes._subnetviz_guard = True
    starlette_app.create_upload_routes = create_upload_routes


def guarded_upload_routes(routes: list, manager) -> list:
    """Streamlit's upload ``routes`` with the PUT's endpoint answering first what :func:`upload_refusal` refuses
    (its one line, its status) for a file of the request's Content-Length, the body unread: a refused PUT cost a
    read of up to server.maxUploadSize into memory, and eight at once from a login form took the server from 162 to
    806 MiB. A PUT let through holds its bytes (the whole limit where no length is given) until it is answered."""
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    def guarded(endpoint):
        async def put(request):
            from streamlit import config as st_config

            cap = int(st_config.get_option("server.maxUploadSize")) << 20
            length = request.headers.get("content-length", "")
            size = int(length) if length.isdigit() and int(length) <= cap else cap
            params = request.path_params
            with _UPLOAD_LOCK:
                refused = upload_refusal(manager, params["session_id"], params["file_id"], size, _receiving[0])
                if refused is None:
                    _receiving[0] += size
            if refused is not None:
                return PlainTextResponse(refused[1], status_code=refused[0])
            try:
                return await endpoint(request)
            finally:
                with _UPLOAD_LOCK:
                    _receiving[0] -= size

        return put

    return [
        Route(r.path, guarded(r.endpoint), methods=["PUT"]) if "PUT" in (getattr(r, "methods", None) or ()) else r
        for r in routes
    ]


def upload_refusal(manager, session_id: str, file_id: str, size: int, receiving: int = 0) -> tuple[int, str] | None:
    """Why ``manager`` may not keep a file of ``size`` bytes under ``file_id`` for ``session_id``, as (HTTP
    status, one line), or None when it may: the session's role must allow uploads (403), and the bytes kept,
    this file's included (a file sent again under its id replaces itself), must stay within one
    server.maxUploadSize for the session and, with the ``receiving`` bytes of other uploads under way,
    :data:`UPLOADS_HELD` of them for the server (413)."""
    from streamlit import config as st_config

    role = _session_role(session_id)
    if role is None or not role.can("upload"):
        return 403, "This session may not upload files on this server."
    cap = int(st_config.get_option("server.maxUploadSize")) << 20
    try:
        with manager._lock:  # (Streamlit's MemoryUploadedFileManager: its files by session, and their bytes)
            mine = manager.file_storage.get(session_id, {})
            replaced = len(mine[file_id].data) if file_id in mine else 0
            session_bytes = sum(len(f.data) for f in mine.values()) - replaced
            server_bytes = manager._total_bytes - replaced
    except AttributeError:  # another Streamlit's manager: nothing is kept that could not be counted
        return 403, "Uploads are off: this Streamlit's upload manager is not one subnetviz can count."
    if session_bytes + size > cap:
        return 413, f"This session holds {session_bytes >> 20} MB of uploads; at most {cap >> 20} MB in all."
    if server_bytes + receiving + size > UPLOADS_HELD * cap:
        return 413, "The server holds as many uploads as it takes at once; try again in a while."
    return None


def _session_role(session_id: str):
    """The access role of Streamlit session ``session_id`` (None: no such session, or one that may do nothing):
    what :func:`gate` stored, else an anonymous visitor's (as :func:`can`). Read from outside the session's
    script run, so anything unexpected is no role."""
    from streamlit.runtime import Runtime

    from subnetviz import access

    if not Runtime.exists():
        return None
    info = Runtime.instance()._session_mgr.get_active_session_info(session_id)
    if info is None:
        return None
    try:
        role = info.session.session_state["_access"]
    except KeyError:
        role = None
    except Exception:  # noqa: BLE001 - its script changing the state as it is read: refused, the upload retried
        return None
    if role is None:
        try:
            role = uilogic.anonymous_role(_auth_section())
        except Exception:  # noqa: BLE001 - secrets that cannot be read: no role (the page says why)
            return None
    return role if isinstance(role, access.Role) else None


# --- zoo and choices -----------------------------------------------------------------------------
def zoo():
    """The demo zoo (None while it is not built), cached by its manifest's stamp: a rebuild shows at once."""
    return selection.current_zoo()


def workspace_sidebar() -> Workspace:
    """Draw the shared sidebar once per run (from app.py) and remember the selection."""
    z = zoo()
    members = zoo_members(z)
    with st.sidebar:
        st.markdown("### Workspace")
        if z is None:
            st.warning("The demo zoo is not built yet: run `python -m subnetviz demo build` (or `make app`).")
        ids, text, q = list(members), uilogic.SIDEBAR_TEXT, {"bind": "query-params"}
        first = ids.index("base") if "base" in members else None
        # (runs stay "run <id>" here: with a format_func the query-param binding writes the label into the URL, and a
        # shared link broke when a run's name changed)
        base = st.selectbox("Base checkpoint", ids, first, key="base", accept_new_options=True, **q, **text["base"])
        if shown := uilogic.typed_base_caption(base, members):  # a typed path's box shows its first letters only
            st.caption(plain(shown))
        ft_opts = [m for m in ids if m != base]
        ft_default = [m for m in uilogic.FT_DEFAULT if m in ft_opts]
        finetuned = st.multiselect(
            "Finetuned checkpoints", ft_opts, ft_default, key="ft", accept_new_options=True, **q, **text["ft"]
        )
        st.html(uilogic.CHIP_TAILS)  # typed paths' chips show their ends (the full path on hover, as before)
        mask_files = saved_masks()
        linked = st.query_params.get_all("masks")  # (read first: the list drops, unsaid, what is not an option)
        masks = st.multiselect("Saved masks", list(mask_files), [], key="masks", **q, **text["masks"])
        with st.expander("Compute", expanded=False):
            devices = uilogic.device_options(st.query_params.get("device"), uilogic.has_cuda())
            # a link's precision or device not on offer: said in the main area (the bound boxes fell back unsaid)
            unoffered = [
                said_if_not_offered(key, options, what, f"the {what}s on offer ({', '.join(options)})", say=False)
                for key, options, what in [("precision", PRECISIONS, "precision"), ("device", devices, "device")]
            ]
            prec = st.selectbox("Comparison precision", PRECISIONS, key="precision", **q, **text["precision"])
            chosen_device = st.selectbox("Device", devices, key="device", **q)
            device, no_cuda = uilogic.device_used(chosen_device, uilogic.has_cuda())
            cluster_choice()
        st.caption(uilogic.roots_caption())
    chosen = uilogic.sidebar_choice(
        base, finetuned, masks, prec, device, members, mask_files, str(z.root) if z else None
    )
    ws, refused = readable(chosen.workspace), chosen.refused
    if refused is not None:
        error(refused)  # in the main area, where the visitor looks
    # the stale entries of a shared link: one line per reason (a few names, how many), every page compares the rest
    for line in uilogic.left_out_lines(ws.left_out):
        error(line)
    if unsaved := _unsaved_masks(linked, masks, mask_files):
        error(unsaved)  # (the link's masks this server does not have: dropped from the list and the URL unsaid)
    for line in filter(None, unoffered):
        warning(line)
    if repeated := uilogic.repeated_line(chosen.repeated):
        st.caption(plain(repeated))  # (an entry naming the base, or a checkpoint chosen already, was dropped unsaid)
    if no_cuda:
        st.caption(plain(no_cuda))  # (a link's device=cuda became 'auto' on a server without CUDA, unsaid)
    if refused is None and z is None and not base:
        # also here, not only in the sidebar: every page's main area says why it has nothing to show
        warning(
            "The demo zoo is not built yet: run 'python -m subnetviz demo build' (or 'make app'), "
            "or choose checkpoints in the sidebar."
        )
    st.session_state["_workspace"] = ws
    return ws


def _unsaved_masks(linked: list[str], masks: list[str], mask_files: dict[str, str]) -> str | None:
    """The line naming the link's saved masks that this server does not have (``uilogic.unsaved_masks_line``), or
    None. The URL holds them on the run that reads the link only (the list then drops them from it): the line is kept
    for this session's later runs while the list holds what it held then, and goes once the visitor changes it."""
    said = st.session_state.get("_unsaved_masks")
    if (line := uilogic.unsaved_masks_line(linked, mask_files)) is not None:
        st.session_state["_unsaved_masks"] = (linked, list(masks))
        return line
    if said is None:
        return None
    if said[1] != list(masks):
        del st.session_state["_unsaved_masks"]
        return None
    return uilogic.unsaved_masks_line(said[0], mask_files)  # (None where they are saved masks again)


def readable(ws: Workspace) -> Workspace:
    """``ws`` without the finetunes whose headers cannot be read (a run deleted since a link was shared, a folder
    moved), that cannot be compared with the base (another architecture: :func:`misfit`) or that an analysis found
    holding NaN or Inf or could not compare at its precision (:func:`leave_out_nonfinite`, remembered for these
    files), which it adds to ``left_out`` with the reason in one line: one such entry raised in the update analysis,
    and Workspace, Sparsity, Spectra, Overlap and Behaviour drew nothing for the finetunes that were still there."""
    kept, left = [], []
    base = _base_fingerprint(ws.base) if ws.finetuned else None
    for label, path in ws.finetuned:
        try:
            info = checkpoint_info(path)  # (cached by the files' stamps: a stat per file on later runs)
        except SubnetvizError as exc:
            left.append((label, path, uilogic.named(label, path, exc)))
            continue
        why = misfit(ws.base, base, path, info["fingerprint"]) if base else None
        bad = _known_nonfinite(ws.base, base, path, info["fingerprint"], ws.precision) if base and not why else None
        if why is not None:
            left.append((label, path, f"{label} is left out (it cannot be compared with the base): {why}"))
        elif bad is not None:
            left.append((label, path, f"{label} is left out ({bad[0]}): {bad[1]}"))
        else:
            kept.append((label, path))
    return replace(ws, finetuned=tuple(kept), left_out=ws.left_out + tuple(left)) if left else ws


def _base_fingerprint(base: str | None) -> str | None:
    """The base's fingerprint; None where there is no base or it cannot be read (the pages say so, and no finetune
    is blamed for it)."""
    try:
        return checkpoint_info(base)["fingerprint"] if base else None
    except SubnetvizError:
        return None


def misfit(base: str, base_fingerprint: str, path: str, fingerprint: str) -> str | None:
    """Why the finetune ``path`` cannot be compared with ``base`` (:func:`selection.finetune_misfit`), or None.

    Cached by both checkpoints' paths and fingerprints (each kept by its files' stamps), so a page revisit costs a
    memo lookup: the headers are aligned once per state of the files."""
    key = ("misfit", base, base_fingerprint, path, fingerprint)
    try:
        return _memo().get_or_compute(key, functools.partial(selection.finetune_misfit, base, path), kind="info")
    except SubnetvizError:  # not a misfit of these files (a memory refusal): the page that computes says it
        return None


def _nonfinite_key(base: str, base_fingerprint: str, path: str, fingerprint: str) -> tuple:
    """The memo's key of what an analysis found of the finetune ``path`` against ``base``: a stored tensor holding
    NaN or Inf (both checkpoints by path and fingerprint, as :func:`misfit` is: another state of the files is
    another key)."""
    return ("nonfinite", base, base_fingerprint, path, fingerprint)


def _cast_range_key(base: str, base_fingerprint: str, path: str, fingerprint: str, precision: str | None) -> tuple:
    """The memo's key of a pair that cannot be compared at ``precision`` (the sidebar's; None: the stored dtypes,
    :class:`~subnetviz.errors.CastRangeError`), as :func:`_nonfinite_key` with the precision: at another precision
    the finetune is compared again."""
    return ("cast-range", base, base_fingerprint, path, fingerprint, precision)


# what each remembered refusal says of the finetune it leaves out (readable's line)
_LEFT_OUT_WHY = {"nonfinite": "its weights are not all finite", "cast-range": "not comparable at this precision"}


def _known_nonfinite(
    base: str, base_fingerprint: str, path: str, fingerprint: str, precision: str | None
) -> tuple[str, str] | None:
    """``(why, error)`` of what an analysis raised for the finetune ``path`` against ``base`` (its stored weights
    hold NaN or Inf, or the pair cannot be compared at ``precision``: :func:`leave_out_nonfinite`), or None when it
    raised neither: memo lookups, nothing is read."""
    for key in (
        _nonfinite_key(base, base_fingerprint, path, fingerprint),
        _cast_range_key(base, base_fingerprint, path, fingerprint, precision),
    ):
        if _memo().known(key, "info"):
            return _LEFT_OUT_WHY[key[0]], _memo().get_or_compute(key, lambda: None, kind="info")
    return None


def nonfinite_finetune(ws: Workspace, exc: NonFiniteError | CastRangeError) -> str | None:
    """The path of the finetune of ``ws`` whose stored weights ``exc`` says hold NaN or Inf (or whose pair with the
    base cannot be compared at this precision), or None (the base's, a Δ that overflowed, a checkpoint not named).
    The update and subspaces passes carry the checkpoint (``exc.checkpoint``), matched against the workspace's paths
    only."""
    return next((p for p in ws.paths if p != ws.base and exc.checkpoint == p), None)


def leave_out_nonfinite(
    ws: Workspace, exc: NonFiniteError | CastRangeError, key_of: Callable[[Workspace], Hashable] | None = None
) -> NoReturn:
    """An analysis of ``ws`` found a finetune holding NaN or Inf (``exc``): remembered for its files (process-wide,
    as analyses are: no session reads it again to find out) and the page run again, where :func:`readable` leaves
    it out of the sidebar's workspace with ``exc``'s line and every page compares the others. One such finetune
    blanked Sparsity and Spectra for every model. ``exc`` is raised as it is (one page-wide line, as before) when it
    names no finetune of the sidebar's workspace: the base holds it, or a workspace a page built itself (Series'
    steps), which the sidebar's run again would not leave it out of. ``key_of``: the :func:`heavy` key of the work
    on a workspace; the visitor's Compute for ``ws`` holds for the others (not asked for a second time). A
    :class:`~subnetviz.errors.CastRangeError` (a base past the finetune's fp16 range, at the stored precision) is
    remembered for ``ws``'s precision only: at fp32 that finetune is compared again."""
    path, sidebar = nonfinite_finetune(ws, exc), workspace()
    base = _base_fingerprint(ws.base)
    if path is None or base is None or sidebar.base != ws.base or path not in sidebar.paths:
        raise exc
    if key_of is not None and st.session_state.get(_started(key_of(ws))):
        rest = replace(ws, finetuned=tuple(f for f in ws.finetuned if f[1] != path))
        st.session_state[_started(key_of(rest))] = True
    fingerprint = checkpoint_info(path)["fingerprint"]
    if isinstance(exc, CastRangeError):
        key = _cast_range_key(ws.base, base, path, fingerprint, ws.precision)
    else:
        key = _nonfinite_key(ws.base, base, path, fingerprint)
    _memo().get_or_compute(key, lambda: str(exc), kind="info")
    if path in readable(sidebar).paths:  # (the page run again would meet it again: said here instead, no loop)
        raise exc
    st.rerun()


def cluster_choice() -> None:
    """'Compute on': this server or a Ray cluster the server's owner named (config.ray_clusters). The
    name is in the URL, never an address: a visitor cannot make the server connect anywhere else."""
    try:
        clusters = config.ray_clusters()
    except SubnetvizError as exc:
        st.session_state["_cluster"] = None  # the server's default (SUBNETVIZ_RAY_ADDRESS)
        error(f"The server's cluster list is misconfigured: {exc}")
        return
    name = next(iter(clusters))
    if len(clusters) > 1:
        name = st.selectbox("Compute on", list(clusters), key="cluster", bind="query-params", help=CLUSTER_HELP)
    st.session_state["_cluster"] = clusters.get(name)


CLUSTER_HELP = (
    "Where analyses run: in this server's process, or on a Ray cluster the server's owner named "
    "(results are identical and shared; only where the work happens differs). Jobs you launch go there too."
)


def compute_address() -> str | None:
    """The Ray address this session computes on (``""``: this server's process; None: the server's
    default, where no sidebar ran): what jobs.cluster and jobs.cluster_pages take as ``address``."""
    return st.session_state.get("_cluster")


def workspace() -> Workspace:
    """The sidebar's selection for this run (empty when the sidebar could not be drawn)."""
    ws = st.session_state.get("_workspace")
    return ws if ws is not None else uilogic.empty_workspace()


def compared_at(ws: Workspace, *, say: bool = True, applies: bool = True) -> str:
    """The sidebar's comparison precision as chart titles add it (``" at bf16"``; ``""`` at the stored dtypes).

    ``say``: also say it once, in a caption where the page calls this (near its top), as 'Compared at bf16 (sidebar
    › Compute)'; nothing is said at the stored dtypes. ``applies=False``: a page whose numbers are compared in the
    stored dtypes whatever the sidebar says (Series) says that instead, and nothing is added to titles. The
    precision was named only in the collapsed sidebar, One matrix's caption and the export's parameters: a bf16
    link read 70.04 % where the stored comparison reads 70.01 %, under the same titles."""
    if not ws.precision:
        return ""
    if say and applies:
        st.caption(
            f"Compared at {ws.precision} (sidebar › Compute): both checkpoints' tensors are cast to {ws.precision} "
            "before they are compared, so the numbers can differ from those of the stored dtypes."
        )
    elif say:
        st.caption(
            f"Compared in the stored dtypes: the sidebar's comparison precision ({ws.precision}, sidebar › Compute) "
            "does not apply to this page."
        )
    return f" at {ws.precision}" if applies else ""


# --- cached analyses: one process-wide memo, shared by every session (subnetviz/memo.py) -------------------
@st.cache_resource(show_spinner=False)
def _memo() -> Memo:
    """Not ``st.cache_data`` (which pickles a copy per hit): results are immutable and handed out as is.
    Computations run outside any cached function: they draw a progress bar into the page."""
    return Memo()


def shared(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` computed once per content of its arguments for every session (a figure,
    a grouped table): arguments that came from here are keyed by their key, others by their content.
    ``fn`` must be a module-level function and its result is shared: never mutate it."""
    return _memo().call(fn, *args, **kwargs)


def checkpoint_info(path: str) -> dict:
    """Fingerprint, architecture, parameter count and dtypes (headers only).

    Cached by :func:`checkpoint_stamp`: size and mtime_ns of every file the checkpoint reads (a folder's
    own mtime misses a weights file rewritten in place, an index json's own stamp a shard rewritten in place).
    A hub id by the snapshot folder it resolves to now (its refs read each run: a new revision is a new folder) and
    that folder's stamp: every page run read every shard's header of a hub finetune again (0.7 s per run for a
    DeepSeek-V3-sized snapshot). A hub id that does not resolve is read as given, which says why.
    """
    stamped = path
    if not config.exists(path):
        from subnetviz.checkpoints.sources import local_folder

        try:
            folder = local_folder(path)
        except SubnetvizError:
            folder = None
        if folder is None:
            return uilogic.checkpoint_info(path)
        stamped = str(folder)
    key = ("checkpoint", path, stamped, checkpoint_stamp(stamped))
    return dict(_memo().get_or_compute(key, lambda: uilogic.checkpoint_info(path), kind="info"))


def fingerprints(ws: Workspace) -> tuple[str, ...]:
    """The fingerprints of the base and the finetunes of ``ws``, in order (:func:`checkpoint_info`'s, cached)."""
    return tuple(checkpoint_info(p)["fingerprint"] for p in [ws.base, *ws.paths])


def fingerprint(path: str) -> str:
    """A checkpoint's fingerprint (every file's path, identity and header) without importing torch for
    safetensors; cached by :func:`checkpoint_stamp` like :func:`checkpoint_info`."""
    from subnetviz.checkpoints.sources import fingerprint as of

    if not config.exists(path):
        return of(path)
    return _memo().get_or_compute(("fingerprint", path, checkpoint_stamp(path)), lambda: of(path), kind="info")


@functools.lru_cache(maxsize=256)
def _checkpoint_files(path: str, where: tuple[str, str]) -> tuple[list[Path], Path | None]:
    """:func:`~subnetviz.checkpoints.sources.checkpoint_files` of ``path`` while ``where`` (the stamps of what
    decides it) holds: it reads config.json and index files and checks each file against the roots, which every
    run of every page did for every checkpoint, twice."""
    from subnetviz.checkpoints.sources import checkpoint_files

    return checkpoint_files(path)


def mask_misfits(masks: dict[str, str], model: str, check: Callable | None = None) -> dict[str, str]:
    """The masks (label -> file) that do not fit ``model``, each with why in a few words
    (:func:`~subnetviz.uilogic.mask_misfit`), memoised by the files' stamps. Behaviour and Bigram offer only the
    others: the newest mask was pre-selected whatever the model, and one of another model stopped the page. A mask
    that could not be checked now (:func:`mask_checks`) is among them, saying so: for this run only."""
    misfit, unchecked = mask_checks(masks, model, check)
    now = {label: f"it cannot be checked against it now ({why})" for label, why in unchecked.items()}
    return {label: misfit.get(label) or now[label] for label in masks if label in misfit or label in now}


def mask_checks(
    masks: dict[str, str], model: str, check: Callable | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """``(misfits, unchecked)``: the masks (label -> file) that do not fit ``model``, each with why in a few words
    (``check``, memoised by the files' stamps), and those that could not be checked now, each with why (a memory
    refusal: a state of the machine, not of the files, so it is not kept and the next run checks them again;
    memoised as a misfit, a mask refused at a busy moment was left out for the server's life)."""
    from subnetviz.cache import file_stamp
    from subnetviz.uilogic import mask_misfit

    check = check or mask_misfit  # (Bigram's: uilogic.bigram_mask_misfit, attention and MLP matrices only)
    stamp = checkpoint_stamp(model)
    misfit, unchecked = {}, {}
    for label, path in masks.items():
        if path == "routers":
            continue
        try:
            why = shared(check, path, model, (file_stamp(path), stamp))
        except SubnetvizError as exc:
            unchecked[label] = str(exc)
            continue
        if why:
            misfit[label] = why
    return misfit, unchecked


def checkpoint_stamp(path: str) -> tuple[str, ...]:
    """:func:`~subnetviz.cache.file_stamp` of ``path`` (a folder: every file directly inside it, config, tokenizer
    and an adapter's two files included) and of every file the checkpoint reads beyond it: an index json's shards
    and the config.json beside a file. Keyed by the typed path's stamp alone, a checkpoint chosen by its index
    kept its old fingerprint, and the page its old analysis, after a shard was rewritten in place. An adapter is
    its own two files (the base it is merged onto is keyed on its own); a spec that cannot be read is stamped as
    given (reading it raises, and nothing is kept)."""
    from subnetviz.checkpoints.adapters import is_adapter

    stamps = [file_stamp(path)]
    if is_adapter(path):
        return tuple(stamps)
    p = Path(path).expanduser()
    # which files it reads follows from the folder's files (a folder's stamp covers those directly inside it; a
    # file's folder holds its index's shards and its config): worked out once per state of them, each run stat()s
    where = (stamps[0], file_stamp(p.parent) if p.is_file() else "")
    try:
        files, root = _checkpoint_files(str(path), where)
    except SubnetvizError:
        return tuple(stamps)
    stamps += [file_stamp(f) for f in files]
    if root is not None:
        stamps.append(file_stamp(root / "config.json"))
    return tuple(stamps)


def progress_bar(what: str):
    bar = st.empty()

    def progress(step: int, total: int, item: str) -> None:
        if total:
            # (the bar renders Markdown; the item, a tensor's name from a checkpoint's header, as text: label_text)
            bar.progress(min(step / total, 1.0), text=f"{what}: {step}/{total} · {uilogic.label_text(item)}")

    return bar, progress


def update_analysis(
    ws: Workspace, *, spectra: bool = False, mask_tolerance: float | None = None, eta: float | None = None
):
    """The update analysis of the workspace (disk-cached, then memory-cached), with a progress bar.

    The key holds every checkpoint's path and fingerprint, the precision, mask tolerance, relative η,
    spectra flag and device, so a changed file or option never returns a stale result.
    """
    if not ws.base or not ws.finetuned:
        raise SubnetvizError("Choose a base and at least one finetuned checkpoint in the sidebar.")
    key = uilogic.analysis_key(ws, fingerprints(ws), spectra=spectra, mask_tolerance=mask_tolerance, eta=eta)
    bar, progress = progress_bar("Comparing tensors")

    def compute():
        return uilogic.compute_updates(
            ws, spectra=spectra, mask_tolerance=mask_tolerance, eta=eta, progress=progress, address=compute_address()
        )

    def get():
        return heavy(
            key,
            lambda: uilogic.updates_cached(ws, spectra=True, mask_tolerance=mask_tolerance, eta=eta),
            lambda: uilogic.spectra_cost(ws),
            compute,
            priced=spectra,
            planned=spectra,  # (the spectra check each matrix's memory against what is available)
            kind="analysis",
            # (spectra skipped for lack of memory: kept while memory is still short, computed again once it is not)
            recheck=functools.partial(uilogic.memory_skip_check, ws=ws),
        )

    try:  # (the bar emptied also where the computation raises: it stood part-way over the error)
        try:
            result = get()
        # a finetune holding NaN/Inf, or that cannot be compared at this precision: left out, the others compared (the
        # page runs again)
        except (NonFiniteError, CastRangeError) as exc:
            opts = dict(spectra=spectra, mask_tolerance=mask_tolerance, eta=eta)
            leave_out_nonfinite(ws, exc, lambda w: uilogic.analysis_key(w, fingerprints(w), **opts))
        if result.source_dir is not None:  # its masks are read from there, when a view needs them
            if not (result.source_dir / MANIFEST).is_file():  # removed from the cache (its size limit): again
                _memo().forget(("heavy", key), "analysis")
                result = get()
            touch(result.source_dir)  # in use: kept
    finally:
        bar.empty()
    return result


def heavy(
    key: Hashable,
    ready: Callable[[], bool],
    estimate: Callable[[], Any],
    compute: Callable[[], Any],
    *,
    models: bool = False,
    planned: bool = False,
    priced: bool = True,
    kind: str = "derived",
    recheck: Callable[[Any], Callable[[], bool] | None] | None = None,
) -> Any:
    """``compute()``'s result for the work under ``key``, asked for first by :func:`confirm_heavy`, unless a
    session is computing it now: then this one waits for that result (a viewer too, who is not told "not
    computed yet" while it is being computed), and sessions asking at once share one computation. A wait that
    ends without a result (the session computing it left) asks again, so a viewer never takes the work over.
    ``models``: the work holds whole models in memory; one such computation runs at a time in this server
    (:func:`_models_lock`), the others wait for it. ``planned``: the work checks its memory, matrix by matrix,
    against what is available (spectra, subspaces): it too runs one at a time, under the same lock, unless
    ``ready()`` says it is read from the disk cache (a cached revisit never waits for another session's
    computation). ``priced=False``: work that is always cheap enough to simply run (no price asked), still shared.
    ``kind``: the memory cache's budget it counts against. ``recheck``: for a result that skipped work for lack of
    memory, the check of whether it still stands (:meth:`~subnetviz.memo.Memo.get_or_compute`); kept as final, it
    was served for the server's life after memory was free, while the disk cache computed it again."""
    flight = ("heavy", key)
    if priced and not _memo().known(flight, kind):
        confirm_heavy(key, ready, estimate)

    def run():
        if priced:  # again: a wait for another session's computation can end without its result
            confirm_heavy(key, ready, estimate)
        if models:
            with _models_turn():
                return compute()
        if planned:
            return one_at_a_time(ready, compute)
        return compute()

    return _memo().get_or_compute(flight, run, kind=kind, recheck=recheck)


def one_at_a_time(ready: Callable[[], bool], compute: Callable[[], Any]) -> Any:
    """``compute()`` of work that plans its memory against what is available (``config.memory_shortfall`` before
    each matrix: spectra, subspaces) under :func:`_models_lock`, unless ``ready()`` says it only reads the disk
    cache. Two sessions asking for it with other options (URLs that differ only in K) each passed the check of the
    same first matrix and together held more than the machine had (3.0 GiB on a 2.6 GiB one)."""
    if ready():
        return compute()
    with _models_turn():
        return compute()


@contextlib.contextmanager
def _models_turn() -> Iterator[None]:
    """:func:`_models_lock` held for the block; while another session's computation holds it, a spinner says this
    one waits for it, with the time waited (two Behaviour runs, or spectra behind a bigram analysis, waited minutes
    without a word: the page looked hung)."""
    with memory_wait("this one starts") as tick, selection.memory_turn(tick):
        yield


@st.cache_resource(show_spinner=False)
def _models_lock() -> threading.RLock:
    """Held by a computation that loads whole models (Behaviour, the bigram analysis, held-out accuracy) or plans
    its memory matrix by matrix (spectra, subspaces: :func:`one_at_a_time`). Each compares what it will hold with
    the memory available before it allocates (``config.require_memory``, ``config.memory_shortfall``); two
    sessions checking at once could each pass, then together exceed it and take the server down. Reentrant: such
    a computation may start another in its thread. The same lock as the mask uploads' (``config.MEMORY_LOCK``: an
    upload is unpacked and checked in memory too), which say while they wait for it (:func:`memory_wait`)."""
    return config.MEMORY_LOCK


def confirm_heavy(key: Hashable, ready: Callable[[], bool], estimate: Callable[[], Any]) -> None:
    """Go on when the work under ``key`` is done already (``ready()``: in the disk cache) or small; else stop
    the page with its :class:`~subnetviz.analysis.cost.Cost` (``estimate()``, from the headers) and a button
    that starts it, or, for a viewer who may not launch jobs, with why not. A shared server's visitor cannot
    start an hour of decompositions by opening a tab; once anyone has computed it, everyone sees it from the
    cache. Above ``SUBNETVIZ_CONFIRM_ABOVE_S`` seconds (default 60)."""
    from subnetviz.analysis.cost import duration

    started = _started(key)
    if st.session_state.get(started):
        return
    cost = _over_limit(ready, lambda: _memo().get_or_compute(("cost", key), estimate))
    if cost is None:
        return
    if not can("launch"):
        st.info(
            f"{cost.text()}: not computed yet, and longer than a viewer may start on this server. Once an editor "
            "opens this view and starts it, the result is kept on the server and shown to every visitor.",
            icon=":material/hourglass_empty:",
        )
        st.stop()
    st.info(
        f"{cost.text()} (estimated from the checkpoints and a timing here). It starts when you ask; the result is "
        "then kept on the server and shown to every visitor, and leaving the page stops it.",
        icon=":material/hourglass_empty:",
    )
    if st.button(f"Compute (about {duration(cost.seconds)})", key=f"{started}-go", type="primary"):
        st.session_state[started] = True
        st.rerun()
    st.stop()


def _started(key: Hashable) -> str:
    """The session-state flag set when the visitor asked for the heavy work under ``key`` (:func:`confirm_heavy`)."""
    return f"_heavy-{hashlib.sha256(repr(key).encode()).hexdigest()[:16]}"


def damage_note(entry) -> str | None:
    """Where a page computes a disk-cached result (``entry``, a :class:`~subnetviz.cache.CacheEntry`): the notice
    that its entry was found damaged and removed, so it is computed again (kept by the entry: a check before, such
    as an ``is_cached``, removed it), said here in a caption; None when there is none."""
    notice = entry.status()[1]
    if notice:
        st.caption(plain(notice))
    return notice


def heavy_note(ready: Callable[[], bool], estimate: Callable[[], Any]) -> str | None:
    """For an export, which builds closed tabs on click: why an analysis is left out (not computed yet, and
    over the limit of :func:`confirm_heavy`), or None when it may be built."""
    cost = _over_limit(ready, estimate)
    return (
        None if cost is None else f"{cost.text()}: not computed yet, so not in this export; open its tab to compute it."
    )


def _over_limit(ready: Callable[[], bool], estimate: Callable[[], Any]):
    """The work's :class:`~subnetviz.analysis.cost.Cost` when it is not ready and its estimate is over
    ``SUBNETVIZ_CONFIRM_ABOVE_S``; None when it may simply run (or be read)."""
    if ready():
        return None
    cost = estimate()
    return cost if cost.seconds > config.confirm_above_seconds() else None


# --- output helpers ------------------------------------------------------------------------------
def chart(fig, key: str) -> None:
    from subnetviz.figures import PLOTLY_CONFIG

    if _memo().key_of(fig) is not None and "to_dict" not in vars(fig):
        spec = fig.to_dict()  # a shared figure is never changed: Streamlit's deep copy, made once
        fig.to_dict = lambda: spec
    st.plotly_chart(fig, key=key, config=PLOTLY_CONFIG, width="stretch")
    st.session_state.setdefault("_figures", {})[key] = fig


STYLED_CELLS = 20_000  # above this a Styler costs too much (about 60 ms at the limit): see styled


def styled(shown: pd.DataFrame, fmts: dict[str, str]):
    """``shown`` as :func:`table` hands it to Streamlit, and the columns whose text it writes itself.

    A column format is one printf for every cell: printf writes an exact zero ``0.000e+0``, and a share
    column that holds shares below 0.01 % in e-notation throughout (``6.421e+1 %`` for 64.21 %). A table
    with either goes as a Styler that writes those columns' text cell by cell, as the export does (``0``;
    ``64.21 %`` beside ``9.042e-4 %``). Streamlit shows a Styler's text only where no column format is
    set, so the plain float columns get their text here too, as Streamlit's default writes it (four
    decimals, trailing zeros trimmed). Sorting and downloads keep the numbers.

    Above :data:`STYLED_CELLS` cells a Styler costs too much (2.2 s for 100,000 rows of three columns, and pandas
    refuses one over 262,144 cells): :func:`table` gives a small-share column there one fixed-decimal format
    (:func:`~subnetviz.report.formats.share_format`), and nothing is written here."""
    from subnetviz.report.formats import MISSING, SCIENTIFIC, SHOWN_SMALL_PERCENT, e_text

    own = [  # the columns whose text is written here
        c for c, f in fmts.items() if f == SHOWN_SMALL_PERCENT or (f == SCIENTIFIC and bool((shown[c] == 0).any()))
    ]
    if not own or shown.size > STYLED_CELLS:
        return shown, set()
    plain = [
        str(c) for c in shown.columns if str(c) not in fmts and pd.api.types.is_float_dtype(shown[c])
    ]  # no format: Streamlit would show the Styler's default six decimals
    texts = {c: functools.partial(e_text, percent=fmts[c] == SHOWN_SMALL_PERCENT) for c in own}
    texts.update({c: _plain_text for c in plain})
    return shown.style.format(texts, na_rep=MISSING), set(own)


def large_share_formats(shown: pd.DataFrame, fmts: dict[str, str]) -> dict[str, str]:
    """``fmts`` with each small-share column of a table too large for a Styler (:func:`styled`) given its one
    fixed-decimal format (:func:`~subnetviz.report.formats.share_format`): the column stays numbers, so it sorts
    by them; computed once per table (:func:`shared`)."""
    from subnetviz.report.formats import SHOWN_SMALL_PERCENT, share_format

    return {c: share_format(shown[c]) if f == SHOWN_SMALL_PERCENT else f for c, f in fmts.items()}


def _plain_text(x: float) -> str:
    return f"{x:.4f}".rstrip("0").rstrip(".")


def table(df: pd.DataFrame, key: str, caption: str = "", **kwargs) -> None:
    """A dataframe with CSV and Parquet downloads beside it; numbers shown by
    :func:`subnetviz.report.formats.display_frame` (separators, percent with two decimals, scientific),
    as the HTML export writes them; the downloads hold ``df`` itself."""
    from subnetviz.report.formats import E_NOTATION, MISSING, display_frame
    from subnetviz.report.html import download_frame

    own = kwargs.get("column_config") or {}
    shown, fmts = shared(display_frame, df, tuple(str(c) for c in own))  # the caller's columns stay its own
    if shown.size > STYLED_CELLS:  # no Styler: each share column one format that tells its values from 0 and 100
        fmts = shared(large_share_formats, shown, fmts)
    data, texts = styled(shown, fmts)
    # e-notation is wider than the column's auto-size guess from its header or its blank cells: fixed width
    formats = {
        c: st.column_config.NumberColumn(format=None if c in texts else f, width=96 if f in E_NOTATION else None)
        for c, f in fmts.items()
    }
    kwargs["column_config"] = {**formats, **own}
    kwargs.setdefault("placeholder", MISSING)  # a missing value reads as a dash, not a grey "None"
    st.dataframe(data, key=key, width="stretch", hide_index=True, **kwargs)
    st.session_state.setdefault("_tables", {})[key] = (caption or key, df)
    kinds = [("CSV", "csv", "csv", "text/csv"), ("Parquet", "parquet", "pq", "application/octet-stream")]
    row = st.container(horizontal=True)  # buttons as wide as their labels, also in a narrow column
    for label, fmt, short, mime in kinds:
        # A callable: the bytes are made only when someone clicks, not on every rerun.
        row.download_button(
            label,
            lambda fmt=fmt: download_frame(df, fmt),
            file_name=f"{key}.{fmt}",
            mime=mime,
            key=f"{key}-{short}",
            on_click="ignore",
        )


def runs_table(df: pd.DataFrame, key: str, caption: str, *, kind: bool = True) -> None:
    """The registry's runs ``df`` as every page lists them (:func:`subnetviz.report.training.runs_table`:
    progress as a bar, times with their date and zone, counts with separators); ``kind=False`` leaves out the kind
    column (a page that lists one kind of run)."""
    from subnetviz.report.training import runs_table as frame

    shown = frame(df) if kind else frame(df).drop(columns="kind")
    bar = st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent")
    table(shown, key, caption, column_config={"progress": bar})


def export_button(
    title: str,
    params: dict,
    figure_keys: Sequence[str] = (),
    table_keys: Sequence[str] = (),
    more=None,
    notes: Sequence[str] = (),
) -> None:
    """One self-contained HTML dashboard of this page's figures and tables, with their parameters.

    ``more``: a callable returning ``(figures, tables)`` dicts (key -> figure, key -> (caption, frame))
    for the tabs not open now, or ``(figures, tables, notes)``; it runs only when the button is clicked, so
    closed tabs cost nothing. ``notes``: the page's own notes that qualify its numbers (what was compared,
    what was left out; see :func:`note`), written in the export under its parameters, as text.
    """
    figs = dict(st.session_state.get("_figures", {}))
    tabs = dict(st.session_state.get("_tables", {}))
    built = _with_notes(more, list(notes))
    st.download_button(
        "Export dashboard (HTML)",
        lambda: uilogic.dashboard_html(title, params, figs, tabs, figure_keys, table_keys, built),
        file_name=f"subnetviz-{title.lower().replace(' ', '-')}.html",
        mime="text/html",
        key=f"export-{title}",
        icon=":material/download:",
        on_click="ignore",
    )
    figure_download([k for k in figure_keys if k in figs], title)


def note(text: str, notes: list[str], *, warn: bool = False) -> None:
    """A caption that qualifies the page's numbers, shown as text, and kept in ``notes`` for its export: the
    exported numbers carried no word of what the page said about them (a subset of tensors compared, rows left
    out). ``warn``: shown as a warning box instead (the numbers mean something else than they read: a grid's
    β of 0 that trained at 0.1)."""
    if warn:
        warning(text)
    else:
        st.caption(plain(text))
    notes.append(text)


# The analysis notes that change how a page's numbers read: part of the models left out of the comparison (a
# "100 %" over the norms alone), changes that are only quantization rounding, codes compared as codes.
KEY_NOTES = ("Not compared (in only one of the pair)", "rounding, not training", "compared as stored codes only")


def analysis_notes(notes: Sequence[str], said: list[str]) -> None:
    """An update analysis' ``notes`` on a page that shows its numbers, kept short: those that change how the
    numbers read (:data:`KEY_NOTES`) shown first, the others under a closed "Notes (N)" expander; every one kept
    in ``said`` for the page's export (as :func:`note`). Only the Workspace page showed them: Update sparsity read
    "100.0 %" for a model whose linear layers were never compared."""
    key = [n for n in notes if any(k in n for k in KEY_NOTES)]
    rest = [n for n in notes if n not in key]
    for n in key:
        note(n, said)
    if rest:
        with st.expander(f"{'More notes' if key else 'Notes'} ({len(rest)})", icon=":material/notes:"):
            for n in rest:
                note(n, said)


def _with_notes(more, notes: list[str]):
    """``more`` (see :func:`export_button`) with the page's ``notes`` before the closed tabs' own, every note with
    its server paths shown relative to their roots (a shared file shows none); a ``more`` that fails keeps the
    page's notes and says why the closed tabs are not there (as ``dashboard_html`` would)."""

    def built() -> tuple[dict, dict, list[str]]:
        try:
            f, t, *left = more() if more is not None else ({}, {})
        except Exception as exc:  # (the click's own thread: raised, it would reach no one, and nothing downloads)
            f, t = {}, {}
            left = [[f"The closed tabs could not be built, so they are not in this export: {uilogic._why(exc)}"]]
        return f, t, [config.redact(str(n)) for n in [*notes, *(left[0] if left else [])]]

    return built


def figure_download(keys: Sequence[str], title: str) -> None:
    """Publication figures: any chart of the page as SVG, PDF or PNG (at a chosen scale), rendered
    server-side by kaleido with the system Chromium when "Make figure" is clicked.

    Where kaleido or a browser is missing the expander says so in one line, with what to install, instead of
    offering a button that cannot work."""
    if not keys:
        return
    with st.expander("Figure for a paper (SVG, PDF, PNG)", icon=":material/image:"):
        _figure_file(list(keys), title)


@st.fragment
def _figure_file(keys: list[str], title: str) -> None:
    """The chart, format and scale pickers, and the file made on a click (a fragment: a click redraws this part
    of the page only). The file is made at once, not by a download button's callable: Streamlit caught that
    one's error, logged its traceback and showed only "Failed to generate file for download", so the reason
    (kaleido missing, a browser that did not start) never reached the visitor. Here it is shown in one line,
    and the server log gets one line."""
    from subnetviz.report.static import FORMATS, StaticExportError, figure_bytes, unavailable

    figs = st.session_state.get("_figures", {})
    keys = [k for k in keys if k in figs]
    if not keys:
        return
    names = {k: _chart_name(figs[k], k) for k in keys}
    # the picker under a key of its charts' names: with the same options and new names (a control retitled a
    # chart) the browser kept showing the old name of the chart chosen; the choice is kept across that
    signature = hashlib.sha1("\x00".join(names.values()).encode("utf-8", "surrogatepass")).hexdigest()[:10]
    chosen = st.session_state.get(f"pub-chosen-{title}")
    a, b, c, d = st.columns([3, 1, 1, 2], vertical_alignment="bottom")
    key = a.selectbox(
        "Chart",
        keys,
        index=keys.index(chosen) if chosen in keys else 0,
        key=f"pub-chart-{title}-{signature}",
        format_func=names.get,
    )
    st.session_state[f"pub-chosen-{title}"] = key
    fmt = b.selectbox("Format", list(FORMATS), key=f"pub-fmt-{title}")
    scale = c.selectbox("PNG scale", [1, 2, 3, 4], index=1, key=f"pub-scale-{title}", disabled=fmt != "png")
    fig = figs[key]
    scale = float(scale) if fmt == "png" else 1.0  # vector: its true size
    if (missing := unavailable()) is not None:  # checked before the click: what to install, not a failing button
        st.caption(plain(missing))
        return
    if d.button("Make figure", key=f"pub-make-{title}", icon=":material/image:"):
        try:
            with st.spinner("Rendering the figure…"):
                made = (figure_bytes(fig, fmt, scale=scale), None)
        except StaticExportError as exc:
            print(f"subnetviz: figure {key!r}: {exc}", flush=True)  # one line, no traceback: the reason is known
            made = (None, str(exc))
        # the file is of this figure's content: a page run that rebuilds the chart with new data leaves it behind
        st.session_state[f"pub-made-{title}"] = (_figure_signature(fig), key, fmt, scale, *made)
    kept = st.session_state.get(f"pub-made-{title}")
    # compared by content, not by object: a page redrawn every 2 s while a job runs (or any rerun) rebuilds equal
    # charts, and the file made a moment before vanished with its object
    if kept is None or kept[1:4] != (key, fmt, scale) or kept[0] != _figure_signature(fig):
        return
    data, why = kept[4:]
    if why is not None:
        error(why[:1].upper() + why[1:])
        return
    d.download_button(
        "Download figure",
        data,
        # (two runs' charts: two files; the key holds a model's label too, a hub id's "/" or a U+202E: slugged)
        file_name=f"subnetviz-{file_slug(key, 40)}-{file_slug(names[key])}.{fmt}",
        mime=FORMATS[fmt],
        key=f"pub-dl-{title}",
        icon=":material/download:",
        on_click="ignore",
    )


def _figure_signature(fig) -> str:
    """A chart's content as a short digest: equal for a chart rebuilt from the same data and look."""
    return hashlib.sha1(fig.to_json().encode("utf-8", "surrogatepass")).hexdigest()


def _chart_name(fig, key: str) -> str:
    """A chart as the figure picker names it: the name it gives itself (``layout.meta["name"]``, written as a title
    is: a run's curves, whose title may break inside a long name), else its title as read on the page (each line
    break read as a " · " separator), else its key. Plotly's tags go first, then the entities are decoded: a name
    drawn as text ("<v1>", escaped by ``plain_label``) stays in the picker's name (decoded first, it was taken for a
    tag and removed)."""
    import html
    import re

    meta = fig.layout.meta
    named = meta.get("name") if isinstance(meta, dict) else None
    text = named if isinstance(named, str) else (fig.layout.title.text or "") if fig.layout.title else ""
    text = re.sub(r"<[^>]*>", "", re.sub(r"<br\s*/?>", " · ", text, flags=re.I))
    return html.unescape(text).strip() or key


def in_url(key: str, value: str | list[str], default: str | list[str]) -> None:
    """The URL's ``key`` made to say the picker's ``value``: left out where it is the ``default`` (as a bound picker
    leaves it), an empty list as ``key=`` (read back as none, not as the default); written only when it differs.

    For a picker whose options come from the workspace (its models, masks, tensors, layers), read from the URL by
    hand (:func:`uilogic.url_choice`, :func:`uilogic.url_choices`) and written back after it is drawn. Bound to the
    URL instead (``bind="query-params"``), its value fell back (to the first option, a removed one dropped) when the
    sidebar's finetunes changed, while the URL kept the old choice: once the option came back, the page showed one
    choice and a link made from its URL opened another."""
    if value == default:
        if key in st.query_params:
            del st.query_params[key]
        return
    text = (value or [""]) if isinstance(value, list) else [value]
    if st.query_params.get_all(key) != text:
        st.query_params[key] = text


def link_mark(key: str) -> str:
    """Where the session keeps the value a control ``key`` read from the URL showed last, once its link is read."""
    return f"_link_shown:{key}"


def page_opened(name: str) -> None:
    """Called by the app each run with the page it runs (its URL path): once the session opens another page, the
    lines a link was said with (:func:`said_once`) are forgotten. A link's ``precision=fp64`` was still said on every
    page the visitor went to afterwards, none of whose addresses named it (the sidebar reads it on every page), and a
    stale tab's line came back on a bare address of its page. The values shown last (:func:`link_mark`) stay."""
    state = st.session_state
    if state.get("_link_page") != name:
        for key in [k for k in state if str(k).startswith(uilogic.LINK_FALLBACK)]:
            del state[key]
        state["_link_page"] = name


def said_once(key: str, line: str | None, shown: object, say: bool = True) -> str | None:
    """``line`` (a link's ``key`` naming nothing on offer here, and what is shown instead; None when it names what
    is on offer, or nothing) said from the run that first reads the link while ``shown`` stays shown
    (:func:`~subnetviz.uilogic.link_fallback`). First read by a mark of the page's own (:func:`link_mark`): a
    control in a closed tab is not drawn (its key is not in the session state), and a bound one is not there before
    its first draw. Returned, and shown as a warning where the control is unless not ``say`` (the caller shows it
    elsewhere: the sidebar's settings are said in the main area)."""
    state, mark = st.session_state, link_mark(key)
    if mark in state:  # read already: what is shown now, compared with what was shown then
        state[mark] = shown
    if (said := uilogic.link_fallback(state, mark, line, shown)) and say:
        warning(said)
    state[mark] = shown
    return said


def said_if_not_offered(
    key: str,
    options: Sequence,
    what: str,
    among: str,
    shown: str | None = None,
    say: bool = True,
    default: Any = None,
) -> str | None:
    """Before the control ``key`` bound to the URL is drawn (a page's tabs, its view, a count): a link's entry naming
    none of its ``options`` (compared as text, :func:`~subnetviz.uilogic.url_choice`) is said with the first option
    (or ``default``: the one it shows without a link; ``shown``: how to name it), which the control shows instead (:func:`said_once`). Streamlit drops such an
    entry from the URL with no word. An empty entry names nothing: no line. The line is returned (``say``:
    :func:`said_once`)."""
    raw = st.query_params.get(key)
    stale = raw not in (None, "") and uilogic.url_choice(raw, options, None) is None
    first = options[0] if default is None else default  # (the option the control shows without a link)
    line = uilogic.stale_link_line(what, raw, among, shown or str(first)) if stale else None
    return said_once(key, line, st.session_state.get(key, first), say)


def linked(key: str, options: Sequence, what: str, among: str, name: Callable = str, default: Any = None):
    """The value a control ``key`` read from the URL shows (a tab's, drawn only while its tab is open): its own in
    this session (while drawn), else the one shown last (Streamlit drops a control's value as its tab closes;
    :func:`link_mark`), else the one the link's ``key`` names (as ``name`` names it, or as text), else ``default``
    (None: the first option). A link's entry naming none of ``options`` is said, with the one shown
    (:func:`said_once`; ``what``, ``among``: :func:`~subnetviz.uilogic.stale_link_line`). The caller writes the
    value shown into the URL (:func:`in_url`) whichever tab is open, and keeps it under :func:`link_mark`."""
    state, asked = st.session_state, st.query_params.get(key)
    named = next((o for o in options if asked in (str(o), name(o))), None)
    first = options[0] if default is None else default
    value = next((v for v in (state.get(key), state.get(link_mark(key)), named) if _offered(v, options)), first)
    stale = asked not in (None, "") and named is None
    said_once(key, uilogic.stale_link_line(what, asked, among, name(value)) if stale else None, value)
    return value


def _offered(value, options: Sequence) -> bool:
    return value is not None and not isinstance(value, list) and value in options


def linked_many(key: str, options: Sequence, default: list, what: str, among: str, elsewhere=()) -> list:
    """A multiple choice as the link's ``key`` gives it (:func:`~subnetviz.uilogic.url_choices`), its entries
    naming nothing on offer said (:func:`~subnetviz.uilogic.stale_choices_line`, :func:`said_once`) with the rest
    of the link's, or ``default`` where none is left. Those in ``elsewhere`` are said by the caller (a mask that
    does not fit)."""
    asked, texts = st.query_params.get_all(key), {str(o) for o in options}
    chosen = uilogic.url_choices(asked, options, default)
    dropped = [a for a in dict.fromkeys(asked) if a and a not in texts and a not in elsewhere]
    kept = any(a in texts for a in asked)
    line = uilogic.stale_choices_line(what, dropped, among, None if kept else chosen)
    said_once(key, line, st.session_state.get(key, chosen))  # (the picker's value, once it is drawn)
    return chosen


def need_pair(ws: Workspace) -> None:
    """Stop a page that compares a base with finetunes when the workspace has no such pair, saying why
    (:func:`~subnetviz.uilogic.missing_pair_line`)."""
    if line := uilogic.missing_pair_line(ws, bool(st.session_state.get("base"))):
        need(False, line)


def need(condition: bool, message: str) -> None:
    """Stop the page with an informative note (not an error) when a precondition is not met."""
    if not condition:
        st.info(message, icon=":material/info:")
        st.stop()


def mask_summary(path: str | os.PathLike) -> dict:
    """A mask file's tensors, entries in the mask, parameters, density and method, counted bit-packed (1 bit per
    parameter held while it is read, nothing kept), cached by its :func:`~subnetviz.cache.file_stamp` (path,
    size, mtime_ns) and shared. A URL naming a few large finetunes kept each mask, a byte per parameter,
    for the life of the server only to count it."""
    from subnetviz.masks import load_mask_set

    def summary() -> dict:
        ms = load_mask_set(path, packed=True)
        return {
            "tensors": len(ms.masks),
            "count": ms.count,
            "numel": ms.numel,
            "density": ms.density,
            "method": str(ms.metadata.get("method", "")),
        }

    return dict(_memo().get_or_compute(("mask-summary", str(path), file_stamp(path)), summary, kind="info"))


def mask_files_overlap(paths: Sequence[str], labels: Sequence[str]):
    """The Overlap page's overlap of mask files (jobs.cluster_pages.FilesOverlap), shared by every session and
    keyed by the files' stamps: here (the masks read bit-packed while it is computed, none kept), or on this
    session's cluster."""
    from subnetviz.jobs import cluster, cluster_pages

    address = cluster.resolve_address(compute_address())
    key = ("files-overlap", tuple(paths), tuple(labels), tuple(file_stamp(p) for p in paths))
    if not address:
        return _memo().get_or_compute(
            key, lambda: cluster_pages.files_overlap_task(list(paths), list(labels)), kind="analysis"
        )
    bar, progress = progress_bar("Overlapping the masks")
    try:  # (emptied also where it raises)
        return _memo().get_or_compute(
            key, lambda: cluster_pages.files_overlap(paths, labels, address=address, progress=progress), kind="analysis"
        )
    finally:
        bar.empty()


def series(paths: Sequence[str], steps: Sequence[int]):
    """Checkpoint-series analysis (memory-cached by the checkpoints' fingerprints), with progress."""
    from subnetviz.jobs.cluster import checkpoint_series  # on the Ray cluster when SUBNETVIZ_RAY_ADDRESS is set

    fps = tuple(checkpoint_info(p)["fingerprint"] for p in paths)
    bar, progress = progress_bar("Walking the series")
    try:  # (emptied also where it raises: a NaN in a checkpoint left it at "20/21 · norm.weight" over the error)
        return _memo().get_or_compute(
            ("series", tuple(paths), tuple(steps), fps),
            lambda: checkpoint_series(list(paths), list(steps), progress=progress, address=compute_address()),
            kind="analysis",
        )
    finally:
        bar.empty()


# --- jobs ----------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def _job_runner(root: str, ray_address: str | None = None):
    from subnetviz.jobs.runner import JobRunner

    # No NVIDIA driver, no CUDA device: the runner need not import torch to count them (~4 s of the
    # first page a fresh server shows, on a loaded machine). With a driver it asks torch, as before.
    # ray_address: the session's choice ("": local processes; None: SUBNETVIZ_RAY_ADDRESS). Runners
    # over one root share its registry; each run keeps the launch (local or Ray) it was queued with.
    return JobRunner(root, gpus=None if uilogic.nvidia_driver() else [], ray_address=ray_address)


@st.cache_resource(show_spinner=False)
def _startup(home: str) -> bool:
    uilogic.sweep_temporaries()
    uilogic.watch_gc()  # SUBNETVIZ_PROFILE_LOG only
    return True


@st.cache_resource(show_spinner=False)
def _start_jobs(runs: str) -> bool:
    job_runner()  # recovers killed jobs and starts the queue
    return True


_REGISTRY_ERROR = "_registry_error"  # session key: this page run's registry error, said at the top of the page


def startup() -> None:
    """Once per server process (and home): sweep what killed writers left, recover the job queue.

    A job registry that cannot be opened (a file that is no SQLite database, a lock another process holds
    longer than the registry waits) is said once, in the main area, and the page still draws: only the job
    pages need the registry, and they end quietly where they would use it (:func:`job_runner`). Outside any
    page's error boundary the error ended every page, Home and the analysis pages included, in a traceback.
    Nothing is cached on failure: the next page run tries again (a registry moved aside, a lock released).
    """
    _startup(str(config.home()))
    st.session_state.pop(_REGISTRY_ERROR, None)
    try:
        _start_jobs(str(config.runs_dir()))
    except SubnetvizError as exc:
        print(f"subnetviz: the job queue is not started: {exc}", flush=True)
        st.session_state[_REGISTRY_ERROR] = str(exc)
        error(exc)


def job_runner():
    """The job runner over this home's registry (one per runs folder and backend, shared by every session):
    new jobs run where this session computes (:func:`compute_address`). When this page run could not open the
    registry (:func:`startup` said why at the top of the page), the page stops here: no second error box, and no
    second wait for a registry another process holds locked."""
    if st.session_state.get(_REGISTRY_ERROR) is not None:
        st.stop()
    return _job_runner(str(config.runs_dir()), compute_address())


_SUBMITTED = "_submitted_jobs"  # session state: the hash of each configuration this session queued -> its run id


def submit_job(cfg: dict, name: str) -> tuple[str, bool]:
    """Queue job ``cfg`` under ``name``: (its run id, True), or (the run id, False) where this session queued the
    same configuration before and that run is still queued or running, which is not queued twice. A second click
    on a launch button (a double click, or two 0.2 s apart: each reran the page with the button pressed) queued
    two identical jobs, and the page named one. Once that run has ended, the same settings queue a new run."""
    import json

    key = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()
    queued = st.session_state.setdefault(_SUBMITTED, {})
    runner = job_runner()
    if (earlier := queued.get(key)) is not None:
        try:
            if runner.get(earlier).status in ("queued", "running"):
                return earlier, False
        except SubnetvizError:  # (removed since: a new run)
            pass
    run_id = runner.submit(cfg, name=name)
    queued[key] = run_id  # (before anything is drawn: the next click's rerun may stop this one at its next element)
    return run_id, True


def queued_line(run_id: str, new: bool, follow: str = "") -> None:
    """What a launch says (:func:`submit_job`'s answer): ``Queued run X.``, or that the same settings were queued
    from this tab as run X, which has not finished (not queued twice); then ``follow`` (the page's Markdown: where to
    follow the run)."""
    tail = f" {follow}" if follow else ""
    if new:
        st.success(f"Queued run {run_id}.{tail}")
    else:
        st.info(
            f"Not queued twice: run {run_id}, queued from this tab with the same settings, has not finished.{tail}",
            icon=":material/content_copy:",
        )


FAILED_SHOWN = 3  # the newest failed runs of a kind said on its page; the Training page lists them all


def failed_runs(df: pd.DataFrame, kind: str, what: str) -> None:
    """An error line for each run of ``kind`` (``what``: its name in the text) that failed since the last one
    succeeded, newest first, at most :data:`FAILED_SHOWN`: a launch that failed was said only in the Training
    page's list of all runs, and the page went on showing the older results as if nothing had been launched."""
    from subnetviz.report.training import run_names

    runs = df[df["kind"] == kind] if len(df) else df
    if not len(runs):
        return
    ended = pd.to_datetime(runs["ended"], utc=True, errors="coerce")  # (the registry's read gives times already)
    last_ok = ended[runs["status"] == "succeeded"].max()  # NaT when none did: every failure is shown
    failed = runs[(runs["status"] == "failed") & ~(ended <= last_ok)]  # (a failure with no end time is shown too)
    failed = failed.loc[ended[failed.index].sort_values(ascending=False, na_position="first").index]
    names = run_names(failed)
    for rec in failed.head(FAILED_SHOWN).itertuples():
        why = rec.error if isinstance(rec.error, str) and rec.error.strip() else "no error was recorded"
        error(f"Run {names[rec.id]} failed: {' '.join(config.redact(why).split())}")  # one line, paths as shown
    if len(failed) > FAILED_SHOWN:
        st.caption(f"{len(failed) - FAILED_SHOWN} more failed {what} runs are listed on the Training page.")


def job_progress(kind: str, unit: str) -> None:
    """A progress bar for each job of ``kind`` that is queued or running, named as every picker names runs
    ("name · id": two runs of one name told apart), ``unit`` what its steps count, with Cancel beside it for those
    who may launch."""
    from subnetviz.report.training import run_names

    active = active_runs(kind)
    names = run_names(active) if len(active) else {}
    for rec in active.itertuples():
        step, total = (0 if pd.isna(v) else int(v) for v in (rec.step, rec.total))
        # The bar's text and the button's help render Markdown: the name (a folder's, in a Behaviour job's) and the id
        # each as text, a plain one as it is (uilogic.label_text). A run named "![px](http://…)" made every visitor's
        # browser fetch from another host.
        name = " · ".join(uilogic.label_text(part) for part in names[rec.id].rsplit(" · ", 1))
        if rec.status == "queued":
            st.progress(0.0, text=f"{name}: queued")
        else:
            st.progress(min(step / total, 1.0) if total else 0.0, text=f"{name}: {step}/{total} {unit}")
        if can("launch") and st.button("Cancel", key=f"cancel-{kind}-{rec.id}", help=f"Cancel {name}"):
            job_runner().cancel(rec.id)


def active_runs(kind: str | None = None) -> pd.DataFrame:
    """Queued or running jobs (of ``kind``), after a poll of the registry."""
    r = job_runner()
    r.poll()
    return uilogic.active(r.list_runs(), kind)


def live(render: Callable[[], None], kind: str | None = None) -> None:
    """Draw ``render``; while jobs (of ``kind``) are queued or running, redraw it every 2 s.

    Only the fragment reruns, and only while something is active: a finished page is static.
    """
    if len(active_runs(kind)):
        _poll(render, kind)
    else:
        run_page(render, fresh=False)


@st.fragment(run_every="2s")
def _poll(render: Callable[[], None], kind: str | None) -> None:
    run_page(render, fresh=False)  # a fragment rerun is outside the page's error boundary
    if not len(active_runs(kind)):
        st.rerun()  # everything finished: redraw once, without the timer
