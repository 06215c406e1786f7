"""The Streamlit-free half of :mod:`subnetviz.ui`: what its widgets show and decide, as plain Python.

Untrusted text made safe for Markdown, the workspace a sidebar selection resolves to, the profile log
``benches/bench_load.py`` reads, checkpoint headers, the role a visitor gets, and the HTML dashboard an
export builds. :mod:`subnetviz.ui` draws; this module computes, and is tested without a browser.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
import unicodedata
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from subnetviz import config
from subnetviz.errors import SubnetvizError
from subnetviz.selection import Workspace, label_of, resolve_choice
from subnetviz.text import visible_controls

# --- untrusted text ----------------------------------------------------------------------------------
_MD_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")
_AUTOLINK = re.compile(r"(?i)[a-z0-9+.-]:|www\.|[^\s]@")


def plain(text: object) -> str:
    """``text`` for a Streamlit element that renders Markdown, shown exactly as text.

    Everything a visitor can put into a page (query parameters, file names, config values, error
    messages quoting them) goes through here: every ASCII punctuation character is backslash-escaped
    (CommonMark), so ``[x](http://…)`` is no link, ``![i](…)`` fetches nothing, ``$…$`` is no formula,
    ``:material/…:`` no icon and ``<b>`` no HTML; server paths are shown relative to their root.
    """
    text = visible_controls(config.redact(str(text)))  # a U+202E in a name reverses nothing on the page
    # Streamlit's Markdown (remark-gfm) also links bare URLs and e-mail addresses found in the *decoded*
    # text, escapes or not: a zero-width space after a scheme, inside "www." and before "@" breaks those.
    text = _AUTOLINK.sub(lambda m: m.group(0)[:-1] + "\u200b" + m.group(0)[-1], text)
    return _MD_PUNCT.sub(r"\\\1", text)


_PLAIN_NAME = re.compile(r"(?!\d+\.)(?!.*www\.)[A-Za-z0-9][A-Za-z0-9./-]*", re.IGNORECASE)


def label_text(text: object) -> str:
    """A name (a checkpoint's label) for a label Streamlit renders as Markdown, such as a metric's: as it is where
    Markdown reads it as text (letters and digits, then also ``-``, ``.`` and ``/``: ``grpo-s0``, ``acme/tiny-ft``),
    so the label is the name itself for a screen reader or a test; else :func:`plain`. A folder named
    ``![px](https:evil.example)`` made every visitor's browser fetch from another host."""
    text = str(text)
    return text if _PLAIN_NAME.fullmatch(text) else plain(text)


# --- the sidebar's selection ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SidebarChoice:
    """What the sidebar's choices resolve to: the workspace, the error that refused the base or cut the list of
    finetunes (None: neither), and the finetune entries not compared because they name a checkpoint named
    before them (``(entry as shown, what it repeats)``: the base, another entry, or the same text twice)."""

    workspace: Workspace
    refused: SubnetvizError | None
    repeated: tuple[tuple[str, str], ...] = ()


def workspace_of(
    base: str | None,
    finetuned: Sequence[str],
    masks: Sequence[str],
    precision: str,
    device: str,
    members: dict[str, str],
    mask_files: dict[str, str],
    zoo_root: str | None,
) -> tuple[Workspace, SubnetvizError | None]:
    """The workspace the sidebar's choices name, and the error that refused the base or cut the list
    (:func:`sidebar_choice`, which also says which entries repeat a checkpoint)."""
    chosen = sidebar_choice(base, finetuned, masks, precision, device, members, mask_files, zoo_root)
    return chosen.workspace, chosen.refused


def sidebar_choice(
    base: str | None,
    finetuned: Sequence[str],
    masks: Sequence[str],
    precision: str,
    device: str,
    members: dict[str, str],
    mask_files: dict[str, str],
    zoo_root: str | None,
) -> SidebarChoice:
    """The workspace the sidebar's choices name, with what was not taken and why.

    A refused base refuses the checkpoints (a path outside the roots is never opened). A finetune refused on its own
    (a stale entry of a shared link, a path outside the roots) is left out with its reason (``left_out``, no path)
    and the others are compared: one such entry refused them all. An entry naming a checkpoint named before it (the
    base, a zoo id and its folder, a link, a trailing ``/``) is compared once and listed in ``repeated``. Only then
    is the list cut to :data:`MAX_FINETUNED` distinct checkpoints, so a repeated or refused entry takes no place
    (33 entries naming 32 checkpoints compared 31 and said "the first 32 are shown"). A URL can list thousands of
    entries: the first :data:`MAX_EXAMINED` are looked at, the rest left out unread, with the reason said."""
    refused = None
    try:
        base_path = resolve_choice(base, members) if base else None
    except SubnetvizError as exc:
        refused, base_path, finetuned = exc, None, []
    entries = list(finetuned)
    seen: dict[str | None, str] = {_same(base_path): "the base"} if base_path else {}
    base_label = label_of(base, members) if base_path else ""  # (a refused base is named by the error alone)
    given: set[str] = set()
    # labels taken: the base's too, so a finetune in a folder named as the base's (llama/final, rl/final) is final-2
    # (both were "final" on every page: the Series axis, the Workspace table, Behaviour's and Overlap's legends)
    taken = {label_key(base_label)} if base_label else set()
    out, left, repeated = [], [], []
    for c in entries[:MAX_EXAMINED]:
        if c in given or (base and c == base):  # the same text again: nothing to resolve
            repeated.append((entry_name(c), "the base" if base and c == base else "listed twice"))
            continue
        given.add(c)
        try:
            path = resolve_choice(c, members)
        except SubnetvizError as exc:  # (its message names it, shortened where it is too long to be a name)
            left.append((c, "", str(exc)))
            continue
        same = _same(path)
        if same in seen:  # a checkpoint named twice (its id and its folder, its folder and its file) is compared once
            repeated.append((entry_name(c), seen[same]))  # ("the base", or "the same checkpoint as ftB")
            continue
        label, k = label_of(c, members), 2
        # two folders of one name (/a/ft and /b/ft, as the library), or of names that read alike (NFC and NFD "café",
        # "ft" and "ft " and "ft\u200b" were three metrics and three Series ticks reading "ft")
        while label_key(label) in taken:
            label, k = f"{label_of(c, members)}-{k}", k + 1
        taken.add(label_key(label))
        seen[same] = f"the same checkpoint as {label}"
        out.append((label, path))
    unread = entries[MAX_EXAMINED:]
    if refused is None and (len(out) > MAX_FINETUNED or unread):
        over = [lbl for lbl, _ in out[MAX_FINETUNED:]] + [entry_name(c) for c in unread]
        if unread:
            text = (
                f"{len(entries):,} finetuned checkpoints chosen; a view looks at the first {MAX_EXAMINED} and "
                f"compares at most {MAX_FINETUNED}: {min(len(out), MAX_FINETUNED)} compared, {len(over):,} left out "
                f"({some_names(over)})."
            )
        else:
            text = (
                f"{len(out):,} finetuned checkpoints chosen; a view compares at most {MAX_FINETUNED}: the first "
                f"{MAX_FINETUNED} are compared and the other {len(over):,} left out ({some_names(over)})."
            )
        refused, out = SubnetvizError(text), out[:MAX_FINETUNED]
    ws = Workspace(
        base_path,
        base_label,
        tuple(out),
        tuple((k, mask_files[k]) for k in masks if k in mask_files),
        None if precision == "stored" else precision,
        device,
        zoo_root,
        tuple(left),
    )
    return SidebarChoice(ws, refused, tuple(repeated))


# invisible where shown but neither a format (Cf) nor a control character: the combining grapheme joiner, the Hangul
# fillers, Khmer's inherent vowels, Mongolian's variation selectors and the variation selectors
_IGNORABLE = re.compile("[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u3164\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]")


def label_key(label: str) -> str:
    """What a label reads as on a page, for telling two labels apart: NFC (a name in NFD, as macOS writes names, read
    as the same word in NFC), without its invisible characters (format characters such as U+200B and U+202E, control
    characters, :data:`_IGNORABLE`), each run of whitespace as one space and none at the ends (a browser shows
    ``ft `` as ``ft``)."""
    text = unicodedata.normalize("NFC", label)
    text = "".join(c if c.isspace() else "" if unicodedata.category(c) in ("Cf", "Cc") else c for c in text)
    return " ".join(_IGNORABLE.sub("", text).split())


MAX_FINETUNED = 32  # finetuned checkpoints one view compares
MAX_EXAMINED = 8 * MAX_FINETUNED  # finetune entries of a URL looked at (each resolved on every page run)


def entry_name(choice: str) -> str:
    """A sidebar entry as a line names it: a path as the pages show paths (relative to its root), anything else as
    given, shortened past 80 characters (a URL's 300 letters)."""
    if os.path.isabs(choice) or choice.startswith("~"):
        return config.display_path(choice)
    return choice if len(choice) <= 80 else f"{choice[:40]}…{choice[-20:]} ({len(choice):,} characters)"


def choice_name(choice: str, names: Mapping[str, str]) -> str:
    """A sidebar choice as the page's pickers name it: a finished run's (``"run <id>"``, the value the URL keeps) as
    ``"run <name · id>"`` (``names``: :func:`~subnetviz.report.training.run_names`), a checkpoint of one
    (``"run <id>@<step>"``) with its step after; any other choice, and a run ``names`` lacks, as it is. (The sidebar,
    *Train only* and the mask's warning said ``run <id>`` where the Run picker said "name · id".)"""
    if not choice.startswith("run "):
        return choice
    run, at, step = choice[4:].partition("@")
    return f"run {names[run]}{at}{step}" if run in names else choice


METRIC_EMS = 3.5  # the width st.metric shows whole in a quarter of the main column at 1024 px: 129 px of 36 px digits
_NARROW_EMS = {"-": 0.31, ".": 0.25}  # Source Sans: a minus and a point are narrower than a digit or "e" (0.5 em)


def metric_ems(text: str) -> float:
    """About how wide ``text`` is in ems of the metric's font (digits and "e" half an em; see :data:`_NARROW_EMS`)."""
    return sum(_NARROW_EMS.get(c, 0.5) for c in text)


def metric_number(value: float) -> str:
    """``value`` in at most :data:`METRIC_EMS` of width: 4 (else 3) significant digits where they fit, a whole number
    where that fits, else two (or, past an exponent of 99, one) in e-notation with a bare exponent (``-7.5e-9``,
    ``-2.2e-11``, ``1.2e7``). ``f"{v:.4g}"`` gave "-7.451e-09", which a quarter-width metric at 1024 px cut to
    "-7.451…": a loss of -7e-9 read as -7.45."""
    if not math.isfinite(value):
        return str(value)
    for text in (f"{value:.4g}", f"{value:.3g}", f"{value:.0f}" if abs(value) >= 1 else ""):
        if text and "e" not in text and metric_ems(text) <= METRIC_EMS:
            return text
    for digits in (1, 0):
        mantissa, exponent = f"{value:.{digits}e}".split("e")
        if metric_ems(text := f"{mantissa}e{int(exponent)}") <= METRIC_EMS or not digits:
            return text
    return text


def metrics_per_row(values: Sequence[str]) -> int:
    """How many ``st.metric`` showing ``values`` a row takes so that each shows whole at 1024 px with the sidebar open:
    4 (a quarter of the main column each, :data:`METRIC_EMS`) where the widest value fits a quarter, else the most that
    leave it wide enough ("99.9998 %": 3), and never more than there are values. Six to a row cut "68.09 %" to
    "68.0…" and "99.9998 %" (one change in 10^5) to "99.99…" on Workspace."""
    widest = max((metric_ems(v) for v in values), default=0.0)
    n = 4
    while n > 1 and widest > METRIC_EMS * 4 / n:  # (n columns get at least 4/n quarters: the gaps between them more)
        n -= 1
    return max(1, min(n, len(values)))


def some_names(names: Sequence[str], shown: int = 3) -> str:
    """A few names of a list and how many more: ``a, b, c and 97 more``."""
    head = ", ".join(names[:shown])
    return head if len(names) <= shown else f"{head} and {len(names) - shown:,} more"


LINK_FALLBACK = "_link_fallback:"  # the session's keys of the lines links were said with (:func:`link_fallback`)


def link_fallback(state: MutableMapping, key: str, line: str | None, shown: object) -> str | None:
    """What a page says of a shared link whose ``key`` names nothing on offer here (a run of another server, or one
    deleted since: run ids differ from server to server), or None. ``line``: the sentence (naming the link's entry
    and what is shown instead; None when the link's entry is on offer or there is none), read as the picker ``key``
    is first drawn in this session (``state``: its session state); ``shown``: the picker's value shown instead.
    The line is kept while the picker still shows ``shown``: inside a polling fragment (redrawn every 2 s while a
    job runs) a line said once was gone before it was read. A picker changed since says nothing."""
    memo = f"{LINK_FALLBACK}{key}"
    if key not in state:  # the picker's first draw: the link is read now
        if line is None:
            state.pop(memo, None)
            return None
        state[memo] = (line, shown)
    kept = state.get(memo)
    if kept is None:
        return None
    if key in state and state[key] != kept[1]:  # another value chosen since
        state.pop(memo, None)
        return None
    return kept[0]


def stale_link_line(what: str, asked: object, among: str, shown: str) -> str:
    """The sentence for :func:`link_fallback`: "The link's run X is not among this server's runs; Y is shown
    instead." (the link's entry shortened as a sidebar line shortens one, shown as text by the caller)."""
    return f"The link's {what} {entry_name(str(asked))} is not among {among}; {shown} is shown instead."


def stale_choices_line(what: str, dropped: Sequence[str], among: str, instead: Sequence[str] | None) -> str | None:
    """:func:`stale_link_line` for a multiple choice read from a link (:func:`url_choices`): the link's entries
    ``dropped`` (those naming nothing on offer; ``what``: one's kind, singular) and what is shown instead,
    ``instead`` (the picker's default, where none of the link's entries is left), or, for None, that they are left
    out (the link's other entries shown); None when nothing was dropped. "The link's masks a, b are not among the
    masks on offer here; they are left out." """
    if not dropped:
        return None
    many = len(dropped) > 1
    names = some_names([entry_name(str(d)) for d in dropped])
    head = f"The link's {what}{'s' if many else ''} {names} {'are' if many else 'is'} not among {among}"
    if instead is None:
        return f"{head}; {'they are' if many else 'it is'} left out."
    shown = some_names([str(i) for i in instead]) or "none"
    return f"{head}; {shown} {'are' if len(instead) > 1 else 'is'} shown instead."


def missing_pair_line(ws: Workspace, base_chosen: bool) -> str | None:
    """What a page comparing a base with finetunes says when it has no pair to compare (None: it has one). A base
    that was chosen but refused, or finetunes that were chosen but all left out, are said above the page (their
    errors): the page points there, not to the sidebar ("Choose a base and finetuned checkpoints", with both
    chosen and still shown in it)."""
    if ws.base is not None and ws.finetuned:
        return None
    if ws.base is None and base_chosen:
        return "The base could not be opened (see above): choose another in the sidebar."
    if ws.base is not None and ws.left_out:
        return "No finetuned checkpoint could be compared with the base (see above): choose others in the sidebar."
    return "Choose a base and finetuned checkpoints in the sidebar."


def left_out_lines(left_out: Sequence[tuple[str, str, str]], most: int = 3) -> list[str]:
    """The finetunes left out (``Workspace.left_out``: label, path, reason) as at most ``most`` + 1 lines: those
    left out for one reason in one line (how many, a few names, the reason), a single one in its own words, the
    reasons most are left out for first, and past ``most`` reasons the rest in one line. Each was an error box of its own: a link with 100 stale entries put 32
    boxes above every page's title."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for label, path, why in left_out:
        groups.setdefault(_reason(label, path, why), []).append((label, why))
    ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))  # the reasons most are left out for first
    cut = len(ranked) > most + 1  # (a last reason is said in its own line, not as "1 more for other reasons")
    lines = []
    for reason, items in ranked[:most] if cut else ranked:
        names = some_names([entry_name(label) for label, _ in items])
        lines.append(items[0][1] if len(items) == 1 else f"{len(items):,} finetunes left out ({names}): {reason}")
    if cut:
        rest = [item for _, items in ranked[most:] for item in items]
        names = some_names([entry_name(label) for label, _ in rest])
        lines.append(f"{len(rest):,} more finetunes left out for other reasons ({names}); the first: {rest[0][1]}")
    return lines


def _reason(label: str, path: str, why: str) -> str:
    """A left-out finetune's reason without its name in front: the library's messages begin with the checkpoint as
    given, or shown shortened (``…/passwd: outside the folders …``), then ``": "``."""
    for name in (label, path):
        if name and why.startswith(f"{name}: "):
            return why[len(name) + 2 :]
    head, sep, tail = why.partition(": ")
    return tail if sep and tail else why


def unsaved_masks_line(linked: Sequence[str], mask_files: dict[str, str]) -> str | None:
    """One line naming the saved masks a link names (``linked``: its ``masks`` entries) that this server does not
    have among ``mask_files`` (an upload removed since the link was shared, or never here), None when it has them
    all: the sidebar's list dropped them without a word, and Overlap then asked for masks the link did name."""
    gone = [entry_name(m) for m in dict.fromkeys(linked) if m and m not in mask_files]
    if not gone:
        return None
    if len(gone) == 1:
        return f"{gone[0]}: no saved mask of that name on this server (removed since the link was made?); left out."
    return (
        f"{len(gone):,} saved masks of the link left out ({some_names(gone)}): no saved masks of those names on this "
        "server (removed since the link was made?)."
    )


def repeated_line(repeated: Sequence[tuple[str, str]]) -> str | None:
    """One line naming the finetune entries not compared because they repeat a checkpoint (:class:`SidebarChoice`),
    None when there are none: each was dropped without a word."""
    if not repeated:
        return None
    items = [f"{name} ({what})" for name, what in repeated]
    return f"Not compared again, named already: {some_names(items)}."


def _same(path: str | None) -> str | None:
    """What tells two choices of one checkpoint apart from two checkpoints: the weights they read
    (:func:`~subnetviz.checkpoints.sources.weights_identity`: a folder, its ``model.safetensors`` or its shard index,
    a link to it, a cached hub id and its snapshot folder are one; they were compared twice, as ``ftA`` and
    ``ftA-2``). One that cannot be located (its error is said when it is read): the real path of a local one (a
    resolved choice is absolute; a hub id is not, and is not looked up as a folder of the working directory)."""
    from subnetviz.cache import file_stamp
    from subnetviz.checkpoints.sources import weights_identity

    if not path:
        return path
    try:  # a hub id each time (its refs move), a path while its files' stamps hold (every page run asked it)
        return _identity(path, file_stamp(path)) if os.path.isabs(path) else weights_identity(path)
    except (SubnetvizError, OSError):
        return os.path.realpath(path) if os.path.isabs(path) else path


@functools.lru_cache(maxsize=1024)
def _identity(path: str, stamp: str) -> str:
    """:func:`~subnetviz.checkpoints.sources.weights_identity` of the local ``path`` while ``stamp`` holds (its
    :func:`~subnetviz.cache.file_stamp`: a folder's files, a file's identity): it reads config.json and index files."""
    from subnetviz.checkpoints.sources import weights_identity

    return weights_identity(path)


def named(label: str, path: str, exc: BaseException) -> str:
    """A checkpoint's error as one line that names it once: the library's messages begin with the checkpoint as it
    was given (``acme/tiny-base: not in the local …``), which a label in front only repeated, and not always in the
    same words ("run x: …/runs/x/outputs/model: …")."""
    text = str(exc)
    return text if text.startswith((f"{label}:", f"{path}:")) else f"{label}: {text}"


def empty_workspace() -> Workspace:
    return Workspace(None, "", (), (), None, "auto", None)


def typed_base_caption(base: str | None, members: dict[str, str]) -> str | None:
    """A line under the base's box naming a typed path as the pages do (``Base: ftA (models/ftA)``), None for a zoo
    id or hub id (short: the box shows them whole). The box shows a path's first ~25 letters, the same for every
    checkpoint under one folder (``/tmp/review/workspace2/m…``); a format function would put the label in the URL
    in place of the path (Streamlit binds the formatted value)."""
    if not base or base in members or not (os.path.isabs(base) or base.startswith("~")):
        return None
    label, where = label_of(base, members), entry_name(base)
    return f"Base: {where}" if where in (label, f"…/{label}") else f"Base: {label} ({where})"


# The finetuned chips of typed paths all read "/tmp/review/works…": their box is laid out right to left, so what
# is cut is the start, and the folder names that tell them apart show. The text in it is one left-to-right isolate
# (LRI … PDI), its end at the box's right edge whatever its script: with LRM marks around it, a Hebrew or Arabic last
# folder was placed left of its parent by the right-to-left paragraph, where it was cut (two such chips both read
# "…/ckpts/names"). Two right-to-left folders in a row still read right to left, as a path does in any left-to-right
# text (…/ckpts/A/B shows B left of A). A weights file's chip (``…/ftA/model.safetensors``, ``…/ftB/model.safetensors.index.json``: a name every
# checkpoint's file shares) showed only that name's end ("afetensors.index.json" for every sharded checkpoint): its
# path wraps, and its last three lines show, with the folder's name before the file's. Each chip's title
# (Streamlit's) gives the whole path on hover. CSS only: the URL keeps the full choice.
_FILE_TITLES = ", ".join(f'[title$="{suffix}"]' for suffix in (".json", ".safetensors", ".bin", ".pt", ".pth"))
_FILE_CHIP = f".st-key-ft [data-tag] > span:is({_FILE_TITLES})"
CHIP_TAILS = f"""<style>
.st-key-ft [data-tag] > span[title] {{ direction: rtl; text-align: left; }}
.st-key-ft [data-tag] > span[title]::before {{ content: "\\2066"; }}
.st-key-ft [data-tag] > span[title]::after {{ content: "\\2069"; }}
.st-key-ft [data-tag]:has(> span:is({_FILE_TITLES})) {{ height: auto; min-height: 1.75rem; }}
{_FILE_CHIP} {{
  direction: ltr; white-space: normal; overflow-wrap: anywhere; text-overflow: clip; line-height: 1.25;
  display: flex; align-items: flex-end; max-height: calc(3 * 1.25em + 1px); overflow: hidden;
}}
{_FILE_CHIP}::before, {_FILE_CHIP}::after {{ content: none; }}
</style>"""

FT_DEFAULT = ("grpo-s0", "grpo-s1", "grpo-s2", "dpo", "sft")
"""The zoo members a fresh sidebar compares with the base."""

SIDEBAR_TEXT = {
    "base": {
        "placeholder": "zoo id, folder, .safetensors or org/name",
        "help": "A demo-zoo member, a local folder or file under the allowed roots, or a hub id "
        "already in the local Hugging Face cache (nothing is downloaded).",
    },
    "ft": {"help": "Compared with the base, side by side."},
    "masks": {"help": "Mask sets from the zoo, finished runs (bigram, continual, training) or uploads."},
    "precision": {
        "help": "'stored' compares each tensor in its stored dtype (bitwise); a pair stored in two dtypes "
        "(fp16 base, bf16 finetune) at the finetune's, the base rounded to nearest even, with a note. "
        "bf16/fp32 cast both sides first (RL's Razor / PNT precision effect)."
    },
}
"""Placeholders and help of the sidebar's widgets (keyword arguments, by widget key)."""


@functools.cache
def has_cuda() -> bool:
    """Whether the sidebar offers a CUDA device. Asked of torch once something has imported it; before
    that, of the NVIDIA driver (no driver, no CUDA), so drawing the sidebar never imports torch: that
    was ~4 s of every page's first open on a loaded machine, for one option of a select box."""
    import sys

    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    return nvidia_driver()


def device_options(asked: str | None, cuda: bool) -> list[str]:
    """The sidebar's Device options: ``cuda`` where this server has CUDA (:func:`has_cuda`), and also where the link
    asks for it (``asked``, its ``device=``), so that the link keeps it when shared onward: a value not among the
    options was dropped, and the box read ``auto`` without a word. :func:`device_used` says what is run then."""
    return ["auto", "cpu"] + (["cuda"] if cuda or asked == "cuda" else [])


def device_used(chosen: str, cuda: bool) -> tuple[str, str | None]:
    """The device the analyses run on for the Device box's ``chosen``, and the line that says why it is another
    one (None where it is not): ``cuda`` on a server without CUDA runs on the CPU."""
    if chosen == "cuda" and not cuda:
        return "cpu", (
            "This server has no CUDA device: the analyses run on the CPU (the link's device=cuda is kept for "
            "sharing, under Compute in the sidebar)."
        )
    return chosen, None


def nvidia_driver() -> bool:
    """Whether an NVIDIA driver is loaded (Linux): without one, torch sees no CUDA device."""
    return Path("/proc/driver/nvidia/version").exists()


def roots_caption() -> str:
    return "Reads only under the allowed roots: " + ", ".join(plain(r.name) for r in config.allowed_roots())


# --- profile log -------------------------------------------------------------------------------------
def write_profile(body: Callable, seconds: float, session: str) -> None:
    """With ``SUBNETVIZ_PROFILE_LOG`` set, one JSON line per body run (``benches/bench_load.py`` reads them):
    the page (a view's ``body`` is named by its file), the seconds, the session and the time."""
    code = getattr(body, "__code__", None)
    page = Path(code.co_filename).stem if code and body.__name__ == "body" else getattr(body, "__name__", "?")
    _log_line(page, seconds, session)


def _log_line(page: str, seconds: float, session: str = "") -> None:
    if log := os.environ.get("SUBNETVIZ_PROFILE_LOG"):
        line = {"page": page, "seconds": seconds, "session": session, "t": time.time()}
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


def watch_gc() -> None:
    """With ``SUBNETVIZ_PROFILE_LOG`` set, one ``{"page": "gc"}`` line per full (generation 2) collection:
    it holds the GIL, so every session waits for it (the bench reports them apart from script runs)."""
    import gc

    log = os.environ.get("SUBNETVIZ_PROFILE_LOG")
    if not log or any(getattr(cb, "_subnetviz", False) for cb in gc.callbacks):
        return
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            started[0] = time.perf_counter()
            return
        _log_line("gc", time.perf_counter() - started[0])

    callback._subnetviz = True
    gc.callbacks.append(callback)


_FROZEN_AT = [0]


def freeze_heap() -> bool:
    """Once the modules a page needs are loaded, move everything alive out of the cyclic collector's way
    (``gc.freeze``): a full collection then scans only what came after, instead of torch's, pandas' and
    plotly's ~300 000 objects (0.5-2 s holding the GIL, every session waiting). Runs again only when new
    modules were imported (a page's first visit); what is frozen is long-lived (modules, shared results)."""
    import gc
    import sys

    if len(sys.modules) == _FROZEN_AT[0]:
        return False
    _FROZEN_AT[0] = len(sys.modules)
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    _log_line("freeze", time.perf_counter() - t0)
    return True


# --- checkpoints -------------------------------------------------------------------------------------
def checkpoint_info(path: str) -> dict:
    """Fingerprint, architecture, parameter count, dtypes and naming family (headers only)."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import adapter_info, is_adapter

    if is_adapter(path):  # an adapter is no model on its own: it is merged onto the base when analysed
        return adapter_info(path)
    from subnetviz.analysis.quant import checkpoint_forms

    ck = open_checkpoint(path)
    # Parameters as the analysis counts them: buffers (GPT-2's 12.6 M-entry causal mask, position_ids) and
    # quantization scales are stored tensors, not parameters (GPT-2 read 137 M here, 124 M on its model card).
    forms = checkpoint_forms(ck)
    dtypes = ck.dtype_counts(n for n in ck.names if forms[n].kind not in ("buffer", "scale"))
    return {
        "fingerprint": ck.fingerprint,
        "architecture": ck.architecture,
        "params": sum(dtypes.values()),
        "dtypes": dtypes,
        "family": ck.names_table.family,
    }


def mask_misfit(mask: str, base: str, stamps: tuple = ()) -> str | None:
    """Why the mask file ``mask`` cannot be reverted in finetunes of ``base``, in a few words; None when it fits.

    It fits when every tensor it names is one of the base's, of the same shape, by the rule every page matches a
    mask's names by (:func:`~subnetviz.checkpoints.naming.match_names`: under another model prefix, or PEFT's
    ``base_model.model.`` and ``.base_layer.``), the rule the run places it by
    (:func:`~subnetviz.analysis.revert.place_masks`). A tied head's name (``lm_head.weight`` beside a base that
    ties it to its input embedding) fits where it has the embedding's shape: the run takes it by its own name
    where the finetune stores the head untied, else merges it into the embedding's entry. Read from the base's
    header and the mask bit-packed; ``stamps`` (the files' stamps) only key the caller's memo. A mask of another
    model (the zoo's Llama mask beside a GPT-2 base) was pre-selected on Behaviour and stopped the page before any
    KL was computed; a head beside a base that does not tie it was offered and then refused by the run.

    A memory refusal (the ConfigError of ``config.require_memory``) is raised, not returned: it holds for now, not
    for these files (as :func:`~subnetviz.selection.finetune_misfit`'s), and memoised as a misfit it kept the mask
    from the page for the server's life."""
    from subnetviz.analysis.revert import tied_embedding
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.experts_layout import mask_layout, transposed_experts
    from subnetviz.checkpoints.naming import TIED_HEADS, mask_key, match_names
    from subnetviz.errors import ConfigError
    from subnetviz.masks import load_mask_set

    try:
        ck = open_checkpoint(base)
        held = {n: tuple(ck.meta(n).shape) for n in ck.names}
        shapes = load_mask_set(mask, packed=True).shapes()
        # experts in the other layout than the base's (packed against one by one): read as the run places them
        layout = mask_layout(shapes, held, transposed=transposed_experts(ck.config))
        shapes = {n: s for n, s in shapes.items() if n not in layout.read}
        shapes |= {n: shape for n, (shape, _) in layout.tensors.items()}
        match = match_names(shapes, held)
        absent = list(match.unmatched)
        # (the embedding a tied head is merged into: looked for only where the mask names a head the base lacks)
        embed = tied_embedding(ck) if any(mask_key(n) in TIED_HEADS for n in absent) else None
    except ConfigError:
        raise  # (lack of memory: a state of the machine, said by the caller for this visit)
    except (SubnetvizError, OSError) as exc:
        return f"it cannot be checked against the base ({exc})"
    to = dict(match.to)
    if absent and len(absent) == len(shapes):
        return f"made for another model: none of its {len(shapes):,} tensors is in the base, e.g. {absent[0]!r}"
    unknown = [n for n in absent if embed is None or mask_key(n) not in TIED_HEADS]
    if unknown:
        return f"{len(unknown):,} of its {len(shapes):,} tensors are not in the base, e.g. {unknown[0]!r}"
    to.update((n, embed) for n in absent)  # (tied heads: the embedding's shape)
    wrong = [n for n, own in to.items() if shapes[n] != held[own]]
    if wrong:
        name = wrong[0]
        more = f" ({len(wrong):,} tensors differ)" if len(wrong) > 1 else ""
        return f"{name!r} has shape {shapes[name]} in the mask and {held[to[name]]} in the base{more}"
    return None


def model_problem(model: str, stamps: tuple = ()) -> str | None:
    """Why ``model`` cannot be built from its config (no config.json, a config transformers refuses), in one line;
    None when it can. The Bigram page says it before its masks: each mask was said not to fit for it ("cannot be
    checked against the model"), with advice to train one, which fails alike. ``stamps`` only key the caller's
    memo."""
    from subnetviz.bigram.maskable import model_skeleton
    from subnetviz.errors import SubnetvizError

    try:
        model_skeleton(model)
    except SubnetvizError as exc:
        return str(exc)
    return None


def bigram_mask_misfit(mask: str, model: str, stamps: tuple = ()) -> str | None:
    """Why the mask file ``mask`` is no bigram subnetwork of ``model``, in a few words; None when it is one.

    As the Bigram analysis decides it (:func:`~subnetviz.bigram.maskable.fitted_mask`: names matched across
    prefixes, only attention and MLP weight matrices), from the mask file's header and the model built on the meta
    device: no weight or mask value read. :func:`mask_misfit` accepts any tensor of the model, so an update mask
    over embeddings, norms and head was offered on Bigram and then refused by its analysis. ``stamps`` only key the
    caller's memo."""
    import torch

    from subnetviz.bigram.maskable import fitted_mask, model_skeleton
    from subnetviz.errors import MaskError
    from subnetviz.masks import MaskSet, mask_file_shapes

    try:
        skeleton = model_skeleton(model)
        shapes = mask_file_shapes(mask)
        with torch.device("meta"):
            fitted_mask(skeleton, MaskSet({n: torch.empty(s, dtype=torch.bool) for n, s in shapes.items()}), "it")
    except MaskError as exc:
        return str(exc).removeprefix("it: ").removeprefix("it ").rstrip(".")
    except (SubnetvizError, OSError, ValueError) as exc:
        return f"it cannot be checked against the model ({exc})"
    return None


def checkpoint_where(path: str) -> str:
    """Where a workspace's checkpoint is read from, as a visitor may see it: a hub id with the commit of its
    snapshot (``acme/tiny-base @ 2222222 (hub cache)``; it was shown as a folder of the server's working
    directory that does not exist), else the path relative to its root (:func:`~subnetviz.config.display_path`)."""
    from subnetviz.checkpoints.sources import _looks_like_hub_id, resolve_hub_id

    if not os.path.isabs(path) and _looks_like_hub_id(path):  # (a resolved path is absolute: never stat-ed here)
        try:
            return f"{path} @ {resolve_hub_id(path).name[:7]} (hub cache)"
        except SubnetvizError:
            return f"{path} (not in the hub cache)"
    return config.display_path(path)


def analysis_key(
    ws: Workspace, fingerprints: tuple, *, spectra: bool, mask_tolerance: float | None, eta: float | None = None
) -> tuple:
    """Every checkpoint's path and fingerprint, the precision, mask tolerance, relative η, spectra flag, device
    and the disk cache the result lives in: a changed file or option never finds a stale result, and a result
    whose masks lie in another home's cache (tests that switch SUBNETVIZ_HOME in one process) is not served."""
    return (
        "updates",
        str(config.cache_dir()),
        ws.base,
        tuple(ws.paths),
        tuple(ws.labels),
        ws.precision,
        mask_tolerance,
        eta,
        spectra,
        ws.device,
        fingerprints,
    )


def compute_updates(
    ws: Workspace,
    *,
    spectra: bool,
    mask_tolerance: float | None,
    eta: float | None = None,
    progress=None,
    address: str | None = None,
):
    """The workspace's update analysis: from the disk cache, else computed (``progress`` per tensor);
    ``eta``: the relative criterion's η (None: the default); ``address``: the Ray cluster to compute on
    (``""``: this process; None: ``SUBNETVIZ_RAY_ADDRESS``, if set)."""
    from subnetviz.jobs.cluster import cached_analysis  # on the Ray cluster when SUBNETVIZ_RAY_ADDRESS is set

    return cached_analysis(
        ws.base,
        list(ws.paths),
        **_analysis_options(ws, spectra, mask_tolerance, eta),
        device=ws.device,
        progress=progress,
        address=address,
    )


def _analysis_options(ws: Workspace, spectra: bool, mask_tolerance: float | None, eta: float | None) -> dict:
    """The labels and options :func:`compute_updates` analyses the workspace with."""
    from subnetviz.analysis.sparsity import SparsityOptions
    from subnetviz.analysis.updates import SpectraOptions

    extra = {} if eta is None else {"eta": float(eta)}
    return {
        "labels": list(ws.labels),
        "options": SparsityOptions(precision=ws.precision, mask_tolerance=mask_tolerance, **extra),
        "spectra": SpectraOptions(enabled=spectra),
    }


def updates_cached(ws: Workspace, *, spectra: bool, mask_tolerance: float | None, eta: float | None = None) -> bool:
    """Whether :func:`compute_updates` would read the analysis from the disk cache (headers only)."""
    from subnetviz.analysis.updates import is_cached

    return is_cached(ws.base, list(ws.paths), **_analysis_options(ws, spectra, mask_tolerance, eta), device=ws.device)


def memory_skip_check(analysis, ws: Workspace) -> Callable[[], bool] | None:
    """None when the update ``analysis`` (with spectra) skipped no spectrum for lack of memory; else a check of
    whether it still stands, for the app's memo: its cache entry is the one it was read from and no spectrum it
    skipped fits in the memory available now (the disk cache's rule, ``updates._memory_now_allows``: once one
    fits, the entry is computed again). Kept as final, the skips stayed in the app for the server's life."""
    from subnetviz.analysis.updates import MEMORY_SKIP, _memory_now_allows
    from subnetviz.cache import MANIFEST, file_stamp

    spec = analysis.spectra_table()
    if not len(spec) or "note" not in spec or not spec["note"].astype(str).str.startswith(MEMORY_SKIP).any():
        return None
    folder = analysis.source_dir
    if folder is None:  # (not read from the cache: nothing to check it against, so read again)
        return lambda: False
    stamp, spectra = file_stamp(folder / MANIFEST), _analysis_options(ws, True, None, None)["spectra"]

    def stands() -> bool:
        try:
            return file_stamp(folder / MANIFEST) == stamp and not _memory_now_allows(folder, spectra, ws.device)
        except (SubnetvizError, OSError):  # (unreadable now: read again, which says what is wrong)
            return False

    return stands


def spectra_cost(ws: Workspace):
    """What the workspace's spectra will cost (:func:`subnetviz.analysis.cost.spectra_cost`), from the headers."""
    from subnetviz.analysis.cost import spectra_cost
    from subnetviz.analysis.updates import SpectraOptions

    return spectra_cost(ws.base, list(ws.paths), SpectraOptions(enabled=True), ws.device)


def subspace_options(k: int):
    from subnetviz.analysis.subspaces import SubspaceOptions

    return SubspaceOptions(k=int(k))


def subspaces_cached(ws: Workspace, k: int) -> bool:
    """Whether the subspaces tab's analysis at ``k`` is in the disk cache (headers only)."""
    from subnetviz.analysis.subspaces import is_cached

    return is_cached(ws.base, list(ws.paths), labels=list(ws.labels), options=subspace_options(k), device=ws.device)


def subspaces_cost(ws: Workspace, k: int):
    """What the subspaces tab's analysis at ``k`` will cost, from the headers."""
    from subnetviz.analysis.cost import subspaces_cost

    return subspaces_cost(ws.base, list(ws.paths), subspace_options(k), ws.device, what="Subspaces of W_base vs W_ft")


# --- jobs --------------------------------------------------------------------------------------------
def sweep_temporaries() -> None:
    """Temporary folders a killed writer left behind, in the cache, the uploads and the zoo."""
    from subnetviz.cache import sweep

    for folder in (config.cache_dir(), config.home() / "uploads", config.zoo_dir()):
        sweep(folder)


def active(runs, kind: str | None = None):
    """The queued or running rows (of ``kind``) of a run registry's table."""
    if not len(runs):
        return runs
    runs = runs[runs["status"].isin(["queued", "running"])]
    return runs[runs["kind"] == kind] if kind else runs


# --- access ------------------------------------------------------------------------------------------
def strongest(roles: Sequence) -> object | None:
    """The editor role if any of ``roles`` (None: not admitted that way) is one, else a viewer, else None."""
    return max((r for r in roles if r is not None), key=lambda r: r.name == "editor", default=None)


def anonymous_role(auth: dict):
    """What a visitor who showed nothing may do (None: nothing, also on a misconfigured server)."""
    from subnetviz import access

    try:
        return access.policy(auth=auth).anonymous()
    except SubnetvizError:
        return None


# --- values a URL carries ----------------------------------------------------------------------------
# Widgets bound to the URL drop a value they do not offer; these are for the values a page reads from the
# URL by hand (inside fragments, and for what an export builds from closed tabs). A shared URL is a
# stranger's text: it may hold anything.
def url_number(raw: str | None, lo: float, hi: float, default: float) -> float:
    """The number in ``raw`` clamped to [lo, hi]; ``default`` where there is none or it is no finite number.
    Always a float (a float slider refuses an int value)."""
    try:
        x = float(raw) if raw is not None else float(default)
    except ValueError:
        return float(default)
    return float(min(hi, max(lo, x))) if math.isfinite(x) else float(default)


def url_int(raw: str | None, default: int | None = None) -> int | None:
    """The non-negative integer ``raw`` spells in ASCII digits (a URL's "3"), else ``default``: "²" and "٣" are
    digits to ``str.isdigit`` but ``int`` refuses the first, and no page means the second."""
    text = "" if raw is None else str(raw)
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else default


def url_choice(raw: str | None, options: Sequence, default):
    """The option of ``options`` that ``raw`` names (compared as text: a URL holds "16" for 16), else ``default``."""
    return next((o for o in options if str(o) == raw), default)


def url_choices(raw: Sequence[str], options: Sequence, default: list) -> list:
    """A multiple choice from a URL's repeated entries ``raw`` (compared as text, as :func:`url_choice`): the options
    they name, in the link's order, once each, entries naming nothing offered here dropped; ``default`` where there
    are none or none of them is offered; none for one empty entry (``?k=``: nothing chosen, as a bound picker reads
    it)."""
    if list(raw) == [""]:
        return []
    named = [o for text in dict.fromkeys(raw) for o in options if str(o) == text]
    return list(dict.fromkeys(named)) or list(default)


# --- export ------------------------------------------------------------------------------------------
def _shown_param(value: object) -> object:
    """A dashboard parameter as a visitor may see it: absolute paths in it relative to their root (a parameter
    that is a path, such as the base, shown whole: one with a space kept what followed it)."""
    return config.redact_value(value)


def dashboard_html(
    title: str,
    params: dict,
    figures: dict,
    tables: dict,
    figure_keys: Sequence[str],
    table_keys: Sequence[str],
    more: Callable[[], tuple] | None = None,
) -> str:
    """One self-contained HTML dashboard: this view's figures and tables, then ``more()``'s (closed tabs):
    ``(figures, tables)``, or ``(figures, tables, notes)`` where a closed tab was left out (its notes say why)."""
    from subnetviz.report.html import ReportSection, build_report, fmt_param

    try:
        f, t, *left = more() if more is not None else ({}, {})  # (figures, tables[, notes on what is left out])
    except Exception as exc:  # (the click's own thread: raised, it would reach no one, and nothing downloads)
        f, t, left = {}, {}, [[f"The closed tabs could not be built, so they are not in this export: {_why(exc)}"]]
    allf, allt = {**f, **figures}, {**t, **tables}
    params = {k: _shown_param(v) for k, v in params.items()}  # a shared file shows no server path
    section = ReportSection(
        title=title,
        figures=[allf[k] for k in figure_keys if k in allf],
        tables=[allt[k] for k in table_keys if k in allt],
        notes="\n".join(
            # each value spelt as in the Parameters table above it (["a", "b"], true), not as a Python repr
            ["Parameters: " + ", ".join(f"{k}={fmt_param(v)}" for k, v in params.items()), *(left[0] if left else [])]
        ),
    )
    return build_report(f"subnetviz · {title}", [section], params)


def _why(exc: BaseException) -> str:
    """An error as a visitor may read it: a subnetviz error's own line (paths relative to their roots), else
    only its type (the traceback goes to the server's log)."""
    import logging

    from subnetviz.config import redact
    from subnetviz.errors import SubnetvizError

    if isinstance(exc, SubnetvizError):
        return redact(str(exc))
    logging.getLogger("subnetviz").error("building an export failed", exc_info=exc)
    return f"an error inside subnetviz ({type(exc).__name__}); the server's log has its traceback."


def redacted(value):
    """``value`` (JSON-like: dicts, lists, strings) as visitors may see it: every server path in its strings
    shown relative to its root (:func:`subnetviz.config.redact_value`: a string that is a path shown whole, one
    with a space too), never absolute."""
    return config.redact_value(value)


def corpus_choice(corpus: str) -> str:
    """The corpus as typed: 'zoo'; ``hf:<name>[:<split>]`` (a dataset in the local Hugging Face datasets cache,
    when that cache lies under the roots; it was taken for a relative path and refused); else a text file (by its
    suffix: :func:`~subnetviz.bigram.stats.check_corpus_file`) or a saved data set's folder (its files checked:
    :func:`~subnetviz.bigram.stats.check_saved_dataset`) under the roots, resolved."""
    if corpus == "zoo":
        return corpus
    if corpus.startswith("hf:"):
        from datasets import config as datasets_config

        from subnetviz.bigram.stats import cached_dataset, hub_dataset
        from subnetviz.errors import PathNotAllowedError

        # a hub id, never a path (load_dataset reads any folder it is given), nor a file-format loader
        cached_dataset(corpus, hub_dataset(corpus)[0])
        try:
            config.check_allowed(datasets_config.HF_DATASETS_CACHE)
        except PathNotAllowedError:
            raise PathNotAllowedError(
                f"{corpus}: hf: corpora are read from the Hugging Face datasets cache, which lies outside the folders "
                "this server may read (its owner adds it with SUBNETVIZ_ROOTS)."
            ) from None
        return corpus
    from subnetviz.bigram.stats import check_corpus_file, check_saved_dataset

    resolved = config.check_allowed(corpus)
    if resolved.is_dir():  # a saved data set: every file load_from_disk will open, checked
        return check_saved_dataset(resolved)
    check_corpus_file(corpus)  # a text file by its name (a link in a hub snapshot leads to blobs/<sha256>)
    return str(resolved)
