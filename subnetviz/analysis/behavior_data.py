"""Prompts and teacher-forced forward passes of the behaviour experiment
(:mod:`subnetviz.analysis.behavior`): prompt sets (JSONL, a local data set, the zoo's problem sets),
encoding with the answer's start, logits of padded batches, the float64 KL terms, teacher-forced
exact match, and the per-position token table.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from subnetviz.errors import ConfigError


@dataclass(frozen=True)
class Prompt:
    text: str
    answer: str | None = None
    where: str | None = field(default=None, compare=False)  # its file and line (or data set and row), for errors


PROMPT_COLUMNS = ("prompt", "question", "problem", "input")
# ``completion``: TRL's prompt-completion rows (the zoo's SFT files), whose completions were dropped with no word.
ANSWER_COLUMNS = ("answer", "completion", "solution", "output", "target")
ANSWER_KEYS = ("answer", "completion")  # a JSONL row's answer: the first of these it holds
# A prompt and its answer longer than this is refused before it is tokenized: far past any context this runs in
# (positions past the model's are cut anyway), and a 400,000-character line ran for more than 10 CPU-minutes.
MAX_PROMPT_CHARS = 1_000_000
# What a prompt given as chat messages is told (the training pages read TRL's conversational rows; this reads text).
_AS_TEXT = (
    "behaviour reads each prompt as text: give it rendered, e.g. "
    "tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)."
)
_ANSWER_AS_TEXT = "behaviour reads each answer as text: give the assistant's reply as a string (its 'content')."
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # a hub id (org/name), not a path


def read_prompts(path: str | os.PathLike, limit: int | None = None) -> list[Prompt]:
    """JSONL rows with a string ``prompt`` and an optional string answer, the first of the keys
    :data:`ANSWER_KEYS` a row holds (``answer``, or ``completion`` as in TRL's prompt-completion rows; other keys
    ignored); any other value is refused naming the file and line, as training's reader refuses it. A prompt
    rendered by a chat template is text like any other (:func:`encode` adds no second BOS); chat messages (TRL's
    conversational rows) are refused with the format expected, and so is a completion of TRL's unpaired preference
    rows that is not labelled true (it is not an answer to score).

    Also a data set already on this machine: ``hf:NAME[:CONFIG]:SPLIT`` from the local ``datasets``
    cache (offline; nothing is downloaded) or a folder written by ``Dataset.save_to_disk``. Its
    prompt is the first of the columns :data:`PROMPT_COLUMNS`, its answer the first of
    :data:`ANSWER_COLUMNS` (text after a GSM8K-style ``####`` when present), read by the same rules: a prompt and an
    answer are strings (a null answer is none), anything else refused naming the row.
    """
    if str(path).startswith("hf:") or Path(path).is_dir():  # (a DatasetDict's folder holds dataset_dict.json)
        return _dataset_prompts(str(path), limit)
    from subnetviz.config import not_a_file

    path = Path(path)
    if kind := not_a_file(path):  # (a named pipe blocked the read below, a device read without end)
        raise ConfigError(f"{path}: {kind}, not a regular file; refused.")
    if not path.is_file():
        raise ConfigError(f"{path}: no such prompt file (JSONL with 'prompt' and optional 'answer').")
    from subnetviz.training.data import jsonl_objects

    out = []
    for lineno, row in jsonl_objects(path):
        where = f"{path}, line {lineno}"
        if isinstance(row.get("prompt"), list):  # (TRL's conversational rows, which the training pages read)
            raise ConfigError(f"{where}: 'prompt' is a list (chat messages?); {_AS_TEXT}")
        if not isinstance(row.get("prompt"), str):
            raise ConfigError(f"{where}: expected an object with a string 'prompt'.")
        key = next((k for k in ANSWER_KEYS if k in row), None)
        ans = _answer_text(row, key, where)
        out.append(_checked(Prompt(row["prompt"], ans, where), where))
        if limit and len(out) >= limit:
            break
    if not out:
        raise ConfigError(f"{path}: holds no prompts.")
    return out


def _shown(value) -> str:
    """``value`` as JSON (a data set's row may hold any Python object), at most 60 characters."""
    try:
        return json.dumps(value)[:60]
    except (TypeError, ValueError):
        return f"a {type(value).__name__}"


def _answer_text(row: dict, key: str | None, where: str) -> str | None:
    """The answer ``row[key]`` of a JSONL row or a data set's row: a string, or None (no key, or null). Anything
    else is refused naming ``where``: str() of ["42"] was scored as the text "['42']", and a data set's column of
    numbers (pandas makes one float when an answer is missing) as "61.0", a text no model writes after "21+40=".
    A completion of chat messages (TRL's conversational rows) is refused with the format expected, and one that
    TRL's unpaired preference rows label false (a rejected completion, not an answer)."""
    value = row.get(key) if key is not None else None
    if value is None:
        return None
    if not isinstance(value, str):
        hint = (
            f" (chat messages?); {_ANSWER_AS_TEXT}"
            if isinstance(value, list | dict)
            else "; save the answers as text, as the model should write them (a number is not read: a column of "
            "numbers turns 61 into 61.0 once a value is missing)."
        )
        raise ConfigError(f"{where}: {key!r} must be a string, got {_shown(value)}{hint}")
    if key == "completion" and "label" in row and row["label"] is not True:
        raise ConfigError(
            f"{where}: a 'completion' labelled {_shown(row['label'])} (TRL's unpaired preference rows) is not an "
            "answer to score; keep the rows labelled true, or give the answer as 'answer'."
        )
    return value


def _checked(p: Prompt, where: str) -> Prompt:
    """``p``, unless it is longer than :data:`MAX_PROMPT_CHARS` (said before anything is tokenized)."""
    n = len(p.text) + len(p.answer or "")
    if n > MAX_PROMPT_CHARS:
        raise ConfigError(
            f"{where}: a prompt and answer of {n:,} characters; at most {MAX_PROMPT_CHARS:,} are read "
            "(positions past the model's context are cut anyway)."
        )
    return p


def _hub_spec(spec: str) -> tuple[str, str | None, str]:
    """``hf:NAME[:CONFIG]:SPLIT`` -> (name, config, split), every part given; NAME a hub id, not a path
    (``load_dataset`` reads any folder it is given)."""
    parts = spec[3:].split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(f"{spec[:120]!r}: expected hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT, every part given.")
    if not _HUB_NAME.fullmatch(parts[0]) or ".." in parts[0] or not all(re.fullmatch(r"[\w.-]+", x) for x in parts[1:]):
        raise ConfigError(
            f"{spec[:120]!r}: hf:NAME names a data set of the hub by its id (gsm8k, org/name), not a path."
        )
    return parts[0], (parts[1] if len(parts) == 3 else None), parts[-1]


def _dataset_prompts(spec: str, limit: int | None) -> list[Prompt]:
    import datasets

    # (the corpus reader's rules)
    from subnetviz.bigram.stats import cached_dataset, check_saved_dataset, hub_offline, plain_columns

    folder = None if spec.startswith("hf:") else check_saved_dataset(spec)  # every file it opens, checked first
    # The cache only, nothing downloaded or asked of the hub (hub_offline: setting the environment here did
    # nothing, and the hub was asked for the data set by name).
    try:
        if folder is None:
            name, config, split = _hub_spec(spec)
            path = cached_dataset(spec, name, instead="a JSONL file or a saved data set's folder")
            with hub_offline():
                ds = datasets.load_dataset(path, config, split=split, download_mode="reuse_cache_if_exists")
        else:
            ds = datasets.load_from_disk(folder)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises anything (an IndexError for 'hf:::'): one line
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        if spec.startswith("hf:") and isinstance(exc, ConnectionError | FileNotFoundError):  # (the hub, offline)
            why = f"not in the datasets cache {datasets.config.HF_DATASETS_CACHE}; hf: data sets are never downloaded"
        raise ConfigError(f"{spec[:120]}: not a data set on this machine ({why}).") from None
    if isinstance(ds, datasets.DatasetDict):
        raise ConfigError(f"{spec}: holds splits {list(ds)}; name one (hf:NAME:SPLIT, or save one split).")
    cols = ds.column_names
    pcol = next((c for c in PROMPT_COLUMNS if c in cols), None)
    if pcol is None:
        raise ConfigError(f"{spec}: no prompt column; expected one of {PROMPT_COLUMNS}, found {cols}.")
    acol = next((c for c in ANSWER_COLUMNS if c in cols), None)
    # (with TRL's label beside a completion: _answer_text refuses a completion labelled false)
    label = ["label"] if acol == "completion" and "label" in cols else []
    ds = plain_columns(ds, [pcol] + [acol] * (acol is not None) + label, spec)
    rows = ds.select(range(min(limit, len(ds)))) if limit else ds
    out = []
    for i, r in enumerate(rows):
        where = f"{spec}, row {i}"
        if isinstance(r[pcol], list | dict):  # (its str() was scored as text: "[{'role': 'user', ...")
            raise ConfigError(f"{where}: {pcol!r} is not text (chat messages?); {_AS_TEXT}")
        if not isinstance(r[pcol], str):  # (str() of a null prompt was scored as the text "None")
            raise ConfigError(f"{where}: {pcol!r} must be a string, got {_shown(r[pcol])}.")
        ans = _answer_text(r, acol, where)
        p = Prompt(r[pcol], ans.split("####")[-1].strip() if ans and "####" in ans else ans, where)
        out.append(_checked(p, p.where))
    if not out:
        raise ConfigError(f"{spec}: holds no rows.")
    return out


def zoo_prompt_files(zoo_root: str | os.PathLike | None = None) -> list[Path]:
    """The demo zoo's held-out problem sets (``data/*_eval.jsonl``), the default prompt set."""
    from subnetviz.config import zoo_dir

    data = (Path(zoo_root) if zoo_root else zoo_dir()) / "data"
    files = sorted(data.glob("*_eval.jsonl")) if data.is_dir() else []
    if not files:
        raise ConfigError(f"no prompt file given and no demo zoo problem sets in {data}; pass --prompts FILE.")
    return files


# --- teacher-forced forward passes -------------------------------------------------------------------
@dataclass(frozen=True)
class Encoded:
    ids: torch.Tensor  # (L,) long: prompt then answer tokens (then the special tokens the tokenizer ends a text with)
    answer_start: int | None  # index of the first answer token
    apart: bool = False  # the answer was encoded on its own (the prompt's tokens do not begin prompt + answer's)
    cut: bool = False  # cut to the model's context (:func:`fit_context`): its answer's last tokens are gone, unscored
    answer_end: int | None = None  # index past the last answer token (None: the end of ``ids``)
    tail: tuple[int, ...] = ()  # the special tokens the tokenizer ended the text with (an EOS), kept after it

    @property
    def end(self) -> int:
        """Index past the last answer token: the special tokens of :attr:`tail` that follow it are not the answer."""
        return len(self.ids) if self.answer_end is None else min(self.answer_end, len(self.ids))


def encode(tokenizer, prompts: Sequence[Prompt]) -> list[Encoded]:
    """Each prompt's token ids, followed by its answer's as the model reads it after the prompt: ``prompt +
    answer`` encoded as one text, the answer starting after the prompt's own tokens. (Encoded on its own, an answer
    was a new text: a SentencePiece tokenizer puts a word boundary "▁" before it, a token the model does not see
    after the prompt.) Where the prompt's tokens do not begin the whole text's (the tokenizer merges across the
    seam), the answer is encoded on its own and appended, marked :attr:`Encoded.apart`. The tokenizer's special
    tokens (a BOS in front) are added unless the text already begins with its BOS token (a prompt a chat template
    rendered). Special tokens the tokenizer appends to every text (Llama-2's ``add_eos_token``: ``<bos> $A <eos>``)
    end the whole text, never the prompt: ``prompt answer <eos>``, a prompt without an answer ``prompt <eos>``
    (:attr:`Encoded.tail`; the answer was read after an ``<eos>`` in mid-text, a context the model never sees,
    and every answer was scored wrong). Which of the special tokens go in front and which at the end is learnt
    from a probe text with tokens of its own (:func:`special_layout`): an empty prompt's ``<bos>`` was taken for an
    appended token and scored after its answer. A prompt left with no token in front of its answer (a text that
    encodes to nothing, with no BOS added in front) is refused naming it: no position holds it, and its answer's
    first token would have no position to predict it."""
    out = encodings(tokenizer, prompts)
    for i, (e, p) in enumerate(zip(out, prompts, strict=True)):
        if e is None:
            raise ConfigError(
                f"{p.where or f'prompt {i}'}: the prompt {p.text[:60]!r} encodes to no token with the base's tokenizer "
                "(it adds none in front of a text); give each prompt some text."
            )
    return out


def encodings(tokenizer, prompts: Sequence[Prompt]) -> list[Encoded | None]:
    """:func:`encode`'s encodings, None for a prompt left with no token of its own (not refused here: a
    finetune's own tokenizer is only compared with the base's, :func:`~subnetviz.analysis.behavior
    .tokenizer_note`)."""
    out: list[Encoded | None] = []
    bos = getattr(tokenizer, "bos_token", None)
    layout = special_layout(tokenizer)
    for p in prompts:
        # A prompt that already begins with the BOS text (rendered by a chat template) gets no second one: the
        # models were scored on "<bos> <bos> ...", a context they never see.
        special = not (isinstance(bos, str) and bos and p.text.startswith(bos))
        ids = list(tokenizer(p.text, add_special_tokens=special)["input_ids"])
        k = _appended(tokenizer, p.text, ids, layout) if special else 0
        ids, tail = ids[: len(ids) - k], ids[len(ids) - k :]
        if not ids:
            out.append(None)
            continue
        start, end, apart = None, None, False
        if p.answer is not None:
            start = len(ids)
            whole = list(tokenizer(p.text + p.answer, add_special_tokens=special)["input_ids"])
            if whole[:start] == ids and whole[len(whole) - k :] == tail and len(whole) - k >= start:
                ids, end = whole[: len(whole) - k], len(whole) - k
            else:
                ids += list(tokenizer(p.answer, add_special_tokens=False)["input_ids"])
                end, apart = len(ids), True
        out.append(Encoded(torch.tensor(ids + tail, dtype=torch.long), start, apart, answer_end=end, tail=tuple(tail)))
    return out


# Texts that every tokenizer gives tokens of their own (a character tokenizer its <unk> at worst): the first that
# encodes to some token tells what the tokenizer adds in front of a text and at its end (:func:`special_layout`).
_PROBES = ("a", "0", "The", " ")


def special_layout(tokenizer) -> tuple[int, int] | None:
    """(in front, at the end): how many tokens the tokenizer's special tokens add before a text's own tokens and
    after them, learnt from a probe text (:data:`_PROBES`) encoded with and without them (``<bos> $A``: (1, 0);
    Llama-2's ``add_eos_token``: (1, 1)); None where no probe encodes to a token, or its own tokens do not sit
    together in its encoding with the special tokens."""
    for probe in _PROBES:
        own = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        if not own:
            continue
        ids = list(tokenizer(probe)["input_ids"])
        for front in range(len(ids) - len(own) + 1):
            if ids[front : front + len(own)] == own:
                return front, len(ids) - front - len(own)
        return None
    return None


def _appended(tokenizer, text: str, ids: list[int], layout: tuple[int, int] | None = None) -> int:
    """How many special tokens the tokenizer appended at the end of ``ids`` (``text`` encoded with its special
    tokens): those after the text's own tokens (``text`` encoded without them), each one of its special tokens.
    ``layout`` (:func:`special_layout`): the tokens the tokenizer adds in front and at the end, which decide where
    ``text``'s added tokens go when they number as many. Without it, a text with no token of its own has every added
    token in front: an empty prompt's ``<bos>`` passed for appended (its text's tokens, none, sit before it)."""
    specials = set(getattr(tokenizer, "all_special_ids", None) or ())
    if not ids or ids[-1] not in specials:
        return 0
    own = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    added = len(ids) - len(own)
    if layout is not None and added == sum(layout) and ids[layout[0] : len(ids) - layout[1]] == own:
        return layout[1] if all(t in specials for t in ids[len(ids) - layout[1] :]) else 0
    if not own:
        return 0
    for k in range(added, 0, -1):  # (the text's own tokens sit between the k appended and the added - k in front)
        if ids[added - k : len(ids) - k] == own and all(t in specials for t in ids[len(ids) - k :]):
            return k
    return 0


def apart_note(enc: Sequence[Encoded]) -> str | None:
    """The note for answers :func:`encode` encoded on their own (None when none was)."""
    n = sum(e.apart for e in enc)
    if not n:
        return None
    return (
        f"{n} of {sum(e.answer_start is not None for e in enc)} answer(s) encoded on their own and appended to the "
        "prompt's tokens: the tokenizer does not encode prompt + answer as the prompt's tokens followed by more "
        "(it merges tokens across the seam)."
    )


def tail_note(enc: Sequence[Encoded], tok) -> str | None:
    """The note that says what is scored where the tokenizer ends each text with special tokens (an EOS), kept at
    the end of the text (None when it ends none)."""
    tails = [e.tail for e in enc if e.tail]
    if not tails:
        return None
    names = " ".join(tok.convert_ids_to_tokens(list(max(set(tails), key=tails.count))))
    return (
        f"the base's tokenizer ends each text with {names} ({len(tails)} of {len(enc)} prompt(s)): scored as "
        f"prompt + answer + {names} (the answer right after the prompt), a prompt without an answer as prompt + "
        f"{names}; the KL counts the {names} position(s) too, the answer's exact match does not."
    )


def check_token_ids(enc: Sequence[Encoded], prompts: Sequence[Prompt], rows: int, tok, where: str) -> None:
    """Refuse a token id the model has no embedding row for (a tokenizer with added tokens the embedding was not
    resized for), naming the prompt, the token and both sizes, instead of an IndexError in the forward pass."""
    for i, (e, p) in enumerate(zip(enc, prompts, strict=True)):
        top = int(e.ids.max()) if len(e.ids) else -1
        if top >= rows:
            raise ConfigError(
                f"{p.where or f'prompt {i}'}: token id {top} ({tok.convert_ids_to_tokens(top)!r}) of the base's "
                f"tokenizer ({len(tok)} tokens) is past the {rows} rows of {where}'s embedding; the tokenizer and the "
                "model do not match (tokens added without resizing the embedding?)."
            )


def logits_of(model, batch: Sequence[Encoded], device) -> torch.Tensor:
    """(B, n, V) float32 logits of a right-padded batch (row i is valid up to ``len(batch[i].ids)``)."""
    n = max(len(e.ids) for e in batch)
    ids = torch.zeros(len(batch), n, dtype=torch.long)
    att = torch.zeros(len(batch), n, dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e.ids)], att[i, : len(e.ids)] = e.ids, 1
    with torch.no_grad():
        out = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float()
    return out


def kl_terms(logits_p: torch.Tensor, logits_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward KL(p ‖ q) and reverse KL(q ‖ p) per row of (L, V) logits, float64 nats, (L,) each."""
    lp = torch.log_softmax(logits_p.to(torch.float64), dim=-1)
    lq = torch.log_softmax(logits_q.to(torch.float64), dim=-1)
    diff = lp - lq
    return (lp.exp() * diff).sum(-1), -(lq.exp() * diff).sum(-1)


def correct(pred: torch.Tensor, e: Encoded) -> bool | None:
    """Teacher-forced exact match of the answer tokens given the argmax ``pred`` (L,) at each position
    (None without an answer, with no position before it to predict its first token, or cut to the context)."""
    if e.answer_start is None or e.cut or not 0 < e.answer_start < e.end:
        return None
    return bool(torch.equal(pred[e.answer_start - 1 : e.end - 1].cpu(), e.ids[e.answer_start : e.end]))


def token_frame(enc: Sequence[Encoded], tok) -> pd.DataFrame:
    """One row per position of every prompt: prompt, position, token, next_token_id (-1 at the end),
    predicts_answer (the next token is an answer token: the answer's last token predicts what follows it, which is
    not scored, nor is an EOS the tokenizer ends the text with)."""
    cols: dict[str, list] = {"prompt": [], "position": [], "token": [], "next_token_id": [], "predicts_answer": []}
    for pid, e in enumerate(enc):
        ids = e.ids.tolist()
        start, end = (e.answer_start, e.end) if e.answer_start is not None else (len(ids) + 1, 0)
        cols["prompt"] += [pid] * len(ids)
        cols["position"] += list(range(len(ids)))
        cols["token"] += tok.convert_ids_to_tokens(ids)
        cols["next_token_id"] += ids[1:] + [-1] if ids else []
        cols["predicts_answer"] += [start <= t + 1 < end for t in range(len(ids))]
    return pd.DataFrame(cols)


def fit_context(enc: Sequence[Encoded], positions: int | None) -> tuple[list[Encoded], str | None]:
    """Each encoding cut to its first ``positions`` tokens (the model's context: a GPT-2 indexed past its
    position table, a RoPE model ran past its context and its KLs were reported with no word), and the note that
    says how many were cut (None when none was). A cut answer is not scored (its last tokens are gone), but the
    answer tokens that survive the cut keep their start, so the positions predicting them are still marked
    (:func:`token_frame`). An answer the cut leaves whole (only the special tokens after it gone: an ``<eos>`` the
    tokenizer appends) is scored, and its :attr:`Encoded.tail` keeps what is left of those tokens."""
    if positions is None or all(len(e.ids) <= positions for e in enc):
        return list(enc), None
    out, cut, unscored, tail_only = [], 0, 0, 0
    for e in enc:
        if len(e.ids) <= positions:
            out.append(e)
            continue
        lost = e.answer_start is not None and e.end > positions  # (answer tokens gone, not only its tail)
        cut, unscored = cut + 1, unscored + lost
        tail_only += e.answer_start is not None and not lost
        start = e.answer_start if e.answer_start is not None and e.answer_start < positions else None
        end = min(e.end, positions) if start is not None else None
        tail = e.tail[: max(0, positions - (len(e.ids) - len(e.tail)))]  # (the tail's tokens the cut keeps)
        out.append(Encoded(e.ids[:positions], start, e.apart and start is not None, lost, end, tail))
    return out, (
        f"{cut} of {len(enc)} prompt(s) longer than the model's context of {positions} positions cut to their first "
        f"{positions} tokens"
        + (f"; {unscored} of them lost answer tokens (not scored for accuracy)" if unscored else "")
        + (f"; {tail_only} lost only the special token(s) after the answer (scored)" if tail_only else "")
        + "."
    )
