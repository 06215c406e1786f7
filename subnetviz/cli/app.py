"""``subnetviz app``: the web app started from anywhere (a wheel's copy or a clone's ``app.py``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from subnetviz.cli.common import refuse_blank
from subnetviz.errors import SubnetvizError


def port(text: str) -> int:
    """``--port``: a TCP port, 0 (any free one, which Streamlit prints) to 65535. Out of range, Streamlit's
    server ended in a traceback."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is no port; give 1 to 65535 (or 0: any free port)")
    return value


DEFAULT_PORT = 8501  # (Streamlit's own)
PORT_FLAG = "--server.port"


def served_port(given: int | None, extra: list[str]) -> tuple[int, list[str]]:
    """The port the server listens on, and the options for ``streamlit run`` without their own ``--server.port``:
    ``--port`` (``given``; None: not given), or the pass-through ``--server.port V`` / ``--server.port=V`` (the
    last, as Streamlit reads it; only before a ``--``, after which the words are the script's), else
    :data:`DEFAULT_PORT`. Both, naming two ports, are refused in one line. (The pass-through one won, after
    ``--port``'s, while the start-up line named ``--port``'s: "on port 8904", the server on 8905.)"""
    end = extra.index("--") if "--" in extra else len(extra)
    kept, values, i = [], [], 0
    while i < end:
        word = extra[i]
        if word == PORT_FLAG:
            if i + 1 >= end:
                raise SubnetvizError(f"app: {PORT_FLAG} needs a port number (or use --port).")
            values.append(extra[i + 1])
            i += 2
            continue
        if word.startswith(f"{PORT_FLAG}="):
            values.append(word.partition("=")[2])
        else:
            kept.append(word)
        i += 1
    if not values:
        return (DEFAULT_PORT if given is None else given), extra
    try:
        chosen = port(values[-1])
    except argparse.ArgumentTypeError as exc:
        raise SubnetvizError(f"app: {PORT_FLAG} {values[-1]}: {exc}.") from None
    if given is not None and given != chosen:
        raise SubnetvizError(f"app: --port {given} and {PORT_FLAG} {chosen} name two ports; give one of them (--port).")
    return chosen, kept + extra[end:]


def app_script() -> Path:
    """The web app's entry script: the wheel's copy (``subnetviz/_app/app.py``), else the clone's ``app.py``."""
    package = Path(__file__).resolve().parents[1]  # subnetviz/
    installed = package / "_app" / "app.py"  # the wheel maps app.py and views/ here (pyproject.toml)
    if installed.is_file():
        return installed
    clone = package.parent
    if (clone / "app.py").is_file() and (clone / "views").is_dir():
        return clone / "app.py"
    raise SubnetvizError(
        f"the web app's scripts are missing: neither {installed} nor {clone / 'app.py'} exists. "
        "Reinstall subnetviz from a wheel or run it from a clone."
    )


def streamlit_config_flags(app: Path, cwd: Path) -> list[str]:
    """The app's ``.streamlit/config.toml`` as ``--section.key value`` flags.

    Streamlit reads that file only from the working directory; started anywhere else, the app
    still gets its settings (headless, no usage statistics, upload limit, theme). A config file in
    the working directory is the user's own choice and is left to Streamlit instead.
    """
    import tomllib

    config = app.parent / ".streamlit" / "config.toml"
    if (cwd / ".streamlit" / "config.toml").is_file() or not config.is_file():
        return []
    flags = []
    for section, options in tomllib.loads(config.read_text()).items():
        for key, value in options.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            flags += [f"--{section}.{key}", text]
    return flags


UPLOAD_FLAG = "--server.maxUploadSize"


def upload_size_mb() -> int:
    """Streamlit's ``server.maxUploadSize`` (whole MB) for subnetviz's own upload cap
    (``SUBNETVIZ_MAX_UPLOAD_MB``, :func:`~subnetviz.selection.max_upload_bytes`), rounded up: the server
    refuses a larger body before the app sees it, and the file uploader takes its limit from it. With the
    packaged 200 it stayed 200 MB whatever the variable said; a fraction of a MB is checked by the app itself."""
    import math

    from subnetviz.selection import max_upload_bytes

    try:
        cap = max_upload_bytes()
    except (ValueError, OverflowError):
        raise SubnetvizError(
            f"SUBNETVIZ_MAX_UPLOAD_MB={os.environ.get('SUBNETVIZ_MAX_UPLOAD_MB')!r}: not a number of megabytes "
            "above 0 (e.g. 500)."
        ) from None
    return max(1, math.ceil(cap / (1 << 20)))


def cmd_app(args: argparse.Namespace) -> int:
    # ('--roots "$DATA"' with DATA unset: the server would read the working folder, whatever it holds)
    refuse_blank("app", [("--home", args.home), ("--roots", args.roots)])
    from subnetviz.config import check_settings

    check_settings()  # a bad SUBNETVIZ_* value: one line now, not on the first page that reads it
    app = app_script()
    env = dict(os.environ)
    if args.home:
        env["SUBNETVIZ_HOME"] = str(Path(args.home).expanduser().resolve())
    if args.roots:
        env["SUBNETVIZ_ROOTS"] = os.pathsep.join(str(Path(r).expanduser().resolve()) for r in args.roots)
    extra = args.streamlit_args[1:] if args.streamlit_args[:1] == ["--"] else args.streamlit_args
    served, extra = served_port(args.port, extra)
    packaged = streamlit_config_flags(app, Path.cwd())
    if UPLOAD_FLAG in packaged:  # the upload cap follows SUBNETVIZ_MAX_UPLOAD_MB instead (just below)
        i = packaged.index(UPLOAD_FLAG)
        del packaged[i : i + 2]
    # Later flags win: the packaged settings first, the user's own options last.
    cmd = [
        sys.executable,
        "-m",
        "subnetviz.serve",  # streamlit run, importing what the pages need while the server starts
        "run",
        str(app),
        *packaged,
        UPLOAD_FLAG,
        str(upload_size_mb()),
        PORT_FLAG,
        str(served),
        *extra,
    ]
    print(
        f"subnetviz app: {app} on port {served} (SUBNETVIZ_HOME={env.get('SUBNETVIZ_HOME', 'default')})",
        file=sys.stderr,
        flush=True,
    )
    if os.name == "posix":
        os.execve(sys.executable, cmd, env)  # the server takes this process: signals reach it directly
    import subprocess

    return subprocess.call(cmd, env=env)
