"""Untrusted text shown as text: the one place that neutralises Unicode's direction controls.

A name from someone else's checkpoint, run or mask may carry U+202E (right-to-left override) and its kin:
shown as they are, they reverse what follows them on screen, so ``ft\u202egnp.exe`` reads ``ftexe.png``
in a table, a chart title or an exported dashboard. :func:`visible_controls` writes each such character
as its code point in brackets (``⟨U+202E⟩``); the page, the chart and the export call it on every piece
of data they show.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# embeddings, overrides and isolates (U+202A–E, U+2066–9), and the marks U+200E/F, U+061C
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def visible_controls(text: str) -> str:
    """``text`` with every direction control shown as ``⟨U+XXXX⟩`` instead of acting on what follows."""
    return _BIDI.sub(lambda m: f"⟨U+{ord(m.group(0)):04X}⟩", text) if _BIDI.search(text) else text


def has_controls(text: str) -> bool:
    return bool(_BIDI.search(text))


_SURROGATE = re.compile("[\ud800-\udfff]")


def escaped(text: str) -> str:
    """``text`` as UTF-8 text that every writer takes: a byte of a file name that is not UTF-8 (Python's surrogate
    escape ``\\udcff`` for the byte 0xff) written as ``\\xff``, any other lone surrogate as ``\\udXXX``. A label
    holding one was refused by pyarrow's strings (the tables, ``sigma.parquet``), by Streamlit's widgets and by
    ``str.encode``: a traceback where the folder's model was analysed."""
    return _SURROGATE.sub(_escape, text)


def _escape(m: re.Match) -> str:
    """The escape :func:`escaped` writes for one lone surrogate."""
    code = ord(m.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


# C0 and C1 control characters and DEL: text a terminal acts on (ESC starts a sequence that recolours, sets the
# title or, on some terminals, writes the clipboard; BEL rings; a newline splits a one-line note)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def terminal_text(text: object) -> str:
    """``text`` as a terminal or a log is given it: each C0/C1 control character (and DEL) as its escape (``\\x1b``,
    ``\\x0a``), a byte of a name that is not UTF-8 as ``\\xff`` (:func:`escaped`); the space and every other
    character as they are. Every note, error line and progress postfix the command line (and a job's log) prints goes
    through it: they carry text from checkpoints (tensor names, shard file names, a folder's name), and a tensor named
    ``up\\x1b[31mRED\\x07_proj`` recoloured the terminal and rang its bell. Text already quoted with ``!r`` holds no
    control characters and is left as it is. Direction controls are shown as ``⟨U+202E⟩`` (:func:`visible_controls`),
    as the page and the exports show them: after a folder name ending in U+202E, ``analyze``'s summary line read
    right to left in a browser's log view or a notebook (sparsity 0.697930 as "039796.0")."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", visible_controls(escaped(str(text))))


_SEPARATORS = re.compile(r"[^A-Za-z0-9_]+")


def file_slug(text: str, limit: int = 80) -> str:
    """``text`` (a chart's name, as the figure picker shows it) as a file-name part: its ASCII letters, digits and
    "_" as they are (case kept), every run of other characters one "-", at most ``limit`` characters, cut at a "-";
    a slug that lost more than separators (a name cut, an accent dropped, no such letters at all: a Hebrew run name)
    ends in 8 hex digits of its whole text, so two charts' files differ where their names do. Two runs' Series
    charts were both ``subnetviz-series.svg``; lower-cased with "_" folded, the finetunes ``grpo_s0``, ``grpo-s0``
    and ``GRPO-s0`` had one slug, and their heatmaps one file name. Names differing only in which separator they
    use ("a b", "a-b") still share one (the browser numbers a second download; no file is overwritten)."""
    ascii_ = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = _SEPARATORS.sub("-", ascii_).strip("-")
    if slug and slug == _SEPARATORS.sub("-", text).strip("-") and len(slug) <= limit:
        return slug
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    cut = slug[: limit - 9].rsplit("-", 1)[0] if len(slug) > limit - 9 else slug
    return f"{cut}-{digest}" if cut else digest
