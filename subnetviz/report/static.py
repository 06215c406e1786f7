"""Publication figures: a Plotly figure as SVG, PDF or PNG, rendered server-side by kaleido.

Kaleido (v1) drives a Chrome/Chromium it finds; on these machines that is Debian's
``/usr/bin/chromium`` (``BROWSER_PATH`` overrides it). The figure keeps the page's look (template,
colours, fonts); only its size is fixed, so the file is the same whatever the browser window was.
"""

from __future__ import annotations

import os
import shutil
import threading

from subnetviz.errors import SubnetvizError

FORMATS = {"svg": "image/svg+xml", "pdf": "application/pdf", "png": "image/png"}
SYSTEM_CHROMIUM = "/usr/bin/chromium"
# Each render starts a browser of its own (about 5 processes): at most this many at once in the server, the
# other visitors' downloads wait their turn
_RENDERS = threading.BoundedSemaphore(2)


class StaticExportError(SubnetvizError):
    """The figure could not be rendered to a file (kaleido or a browser missing)."""


def _browser() -> str | None:
    found = os.environ.get("BROWSER_PATH") or (SYSTEM_CHROMIUM if os.access(SYSTEM_CHROMIUM, os.X_OK) else None)
    return found or shutil.which("chromium") or shutil.which("google-chrome")


def figure_bytes(fig, fmt: str = "svg", scale: float = 1.0, width: int = 900, height: int | None = None) -> bytes:
    """``fig`` (a ``go.Figure``) as ``fmt`` bytes; ``scale`` multiplies the pixel size (PNG resolution)."""
    if fmt not in FORMATS:
        raise StaticExportError(f"unknown figure format {fmt!r}; choose one of {sorted(FORMATS)}.")
    try:
        import kaleido  # noqa: F401
    except ImportError as exc:
        raise StaticExportError("kaleido is not installed: pip install -r requirements.txt.") from exc
    browser = _browser()
    if browser is None:
        raise StaticExportError(
            "no Chrome/Chromium for kaleido: install Debian's chromium (apt-get install chromium) or set BROWSER_PATH."
        )
    os.environ.setdefault("BROWSER_PATH", browser)
    h = height or int(fig.layout.height or 500)
    for attempt in range(3):  # kaleido's fresh browser tab sometimes runs before its script loaded (under load)
        try:
            with _RENDERS:
                return fig.to_image(format=fmt, width=width, height=h, scale=scale)
        except Exception as exc:  # kaleido raises its own JavascriptError/ChromeNotFound types
            if attempt == 2:
                raise StaticExportError(f"could not render the figure as {fmt}: {exc}") from exc
    raise AssertionError("unreachable")
