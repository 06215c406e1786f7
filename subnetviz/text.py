"""Untrusted text shown as text: the one place that neutralises Unicode's direction controls.

A name from someone else's checkpoint, run or mask may carry U+202E (right-to-left override) and its kin:
shown as they are, they reverse what follows them on screen, so ``ft\u202egnp.exe`` reads ``ftexe.png``
in a table, a chart title or an exported dashboard. :func:`visible_controls` writes each such character
as its code point in brackets (``⟨U+202E⟩``); the page, the chart and the export call it on every piece
of data they show.
"""

from __future__ import annotations

import re

# embeddings, overrides and isolates (U+202A–E, U+2066–9), and the marks U+200E/F, U+061C
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def visible_controls(text: str) -> str:
    """``text`` with every direction control shown as ``⟨U+XXXX⟩`` instead of acting on what follows."""
    return _BIDI.sub(lambda m: f"⟨U+{ord(m.group(0)):04X}⟩", text) if _BIDI.search(text) else text


def has_controls(text: str) -> bool:
    return bool(_BIDI.search(text))
