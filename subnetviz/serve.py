"""``python -m subnetviz.serve run app.py [streamlit options]``: Streamlit's own command line, in a process
that has imported what the pages need before the server starts.

A plain ``streamlit run`` imports only Streamlit; the first visitor's first script run then pays for
NumPy, pandas, pyarrow, Plotly and subnetviz's page modules (1-1.5 s on a 2-core machine) while the
visitor waits. Here they are imported first, in the main thread (the server answers a second later;
imports running beside the server's start raced with Streamlit's own import of Plotly). Nothing is
computed and no file is read but modules: the pages' results are the same. A module that fails to
import is left to the page, which reports it as it always does. Torch is not among them: a server that
only shows cached results never needs it. ``make app``, ``subnetviz app`` and the browser tests start
the server this way.

Before the server starts, Streamlit's upload endpoint is guarded (:func:`subnetviz.ui.guard_uploads`): a PUT
from a session whose role may not upload is refused from its headers, its body never read, and a file is kept
in memory only within the caps there.
"""

from __future__ import annotations

import importlib
import os
import sys

# What every page's first run imports beyond Streamlit (the cached views).
WARM = (
    "numpy",
    "pandas",
    "pyarrow",
    "plotly.graph_objects",
    "psutil",
    "sqlite3",
    "subnetviz.ui",
    "subnetviz.selection",
    "subnetviz.jobs.runner",
    "subnetviz.checkpoints.sources",
    "subnetviz.demo.comparison",
    "subnetviz.report.training",
    "subnetviz.report.html",
    "subnetviz.report.static",
    "subnetviz.figures.updates",
    "subnetviz.figures.spectra",
    "subnetviz.figures.overlap",
    "subnetviz.figures.sets",
    "subnetviz.figures.venn",
    "subnetviz.figures.matrix",
    "subnetviz.figures.series",
)
WARM_ENV = "SUBNETVIZ_WARM"  # "0": none (as a plain ``streamlit run``, e.g. to measure against)


def warm(modules: tuple[str, ...] = WARM) -> list[str]:
    """Import ``modules`` in order; the names that failed (each is the page's to report)."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a missing optional module is the page's to report, not the server's
            failed.append(name)
    return failed


def upload_limit(argv: list[str]) -> list[str]:
    """``argv`` (Streamlit's command line) with its upload limit following ``SUBNETVIZ_MAX_UPLOAD_MB`` (rounded up to
    whole MB) where that is set: ``.streamlit/config.toml``'s 200 MB otherwise capped uploads whatever the variable
    said. A ``--server.maxUploadSize`` already on the command line is kept; a value that is no number is left to
    the app's own check, which says so on the upload."""
    from subnetviz.cli.app import UPLOAD_FLAG, upload_size_mb
    from subnetviz.errors import SubnetvizError

    if os.environ.get("SUBNETVIZ_MAX_UPLOAD_MB") is None or any(a.startswith(UPLOAD_FLAG) for a in argv):
        return argv
    try:
        return [*argv, UPLOAD_FLAG, str(upload_size_mb())]
    except SubnetvizError:
        return argv


def check_settings() -> None:
    """Every ``SUBNETVIZ_*`` setting the server reads (:func:`subnetviz.config.check_settings`, and
    ``SUBNETVIZ_MAX_UPLOAD_MB`` where set), before the server starts: a bad value ends the command with one line
    naming it (``error: ...``, as ``subnetviz app`` says it) and exit status 2. ``make app`` started the server
    and the first page that published an analysis, stored an upload or queued a job refused it. The access settings
    too (:func:`subnetviz.access.policy`: tokens, passwords, accounts and the secrets' ``[auth]``): a too-short
    ``SUBNETVIZ_EDITOR_TOKEN`` served every visitor "Access to this server is misconfigured" and the console said
    nothing."""
    from subnetviz.access import policy
    from subnetviz.cli.app import upload_size_mb
    from subnetviz.config import check_settings as check
    from subnetviz.errors import SubnetvizError

    try:
        check()
        policy()
        if os.environ.get("SUBNETVIZ_MAX_UPLOAD_MB") is not None:
            upload_size_mb()
    except SubnetvizError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    if sys.argv[1:2] == ["run"]:
        check_settings()
    from streamlit.web import cli  # Streamlit first: it configures Plotly's theme as it is imported

    if os.environ.get(WARM_ENV, "1") != "0":
        warm()
    from subnetviz.ui import guard_uploads

    guard_uploads()  # before the server builds its upload route (see the module docstring)
    sys.argv[1:] = upload_limit(sys.argv[1:])
    sys.argv[0] = "streamlit"  # (as a plain `streamlit run` has it)
    cli.main(prog_name=streamlit_command())  # (click made it 'python -m subnetviz.streamlit', which is no module)


def streamlit_command() -> str:
    """Streamlit's command line as Streamlit's own messages name it (``Try 'streamlit run --help' for help.`` after
    a misspelt option of ``subnetviz app``), a command that works as it is typed: ``streamlit`` where the one found
    on PATH is this environment's (beside this interpreter), else this interpreter's ``-m streamlit`` (a venv not
    activated, ``python -m subnetviz app``: no ``streamlit`` on PATH, or another environment's)."""
    import shlex
    import shutil

    found = shutil.which("streamlit")
    try:
        ours = found is not None and os.path.samefile(os.path.dirname(found), os.path.dirname(sys.executable))
    except OSError:
        ours = False
    return "streamlit" if ours else f"{shlex.quote(sys.executable)} -m streamlit"


if __name__ == "__main__":
    main()
