"""Training data: JSONL files -> ``datasets.Dataset`` in the shape each TRL trainer expects.

Row formats (one JSON object per line; blank lines are skipped):

- SFT:  ``{"prompt": str, "completion": str}`` -> TRL's plain prompt-completion format (the loss
  is on the completion only).
- DPO:  ``{"prompt": str, "chosen": str, "rejected": str}`` -> TRL's plain preference format.
- GRPO: ``{"prompt": str, "answer": str}`` -> ``prompt`` plus an ``answer`` column that TRL passes
  to the reward function; the reward is exact match of the stripped completion with ``answer``.
- eval: ``{"prompt": str, "answer": str}`` (greedy exact-match accuracy).

Plain text is what the tiny char-level demo tokenizer needs: prompt ``"12+34="``, completion
``"46"``. Prompts and completions may also be chat messages (a list of ``{"role", "content"}``
objects, TRL's conversational format; the model's tokenizer then needs a chat template); GRPO
answers and eval rows are plain strings. Extra keys are kept. A bad file raises :class:`ConfigError`
naming the file and the line.
"""

from __future__ import annotations

import os
from pathlib import Path

from subnetviz.errors import ConfigError

FIELDS: dict[str, tuple[str, ...]] = {
    "sft": ("prompt", "completion"),
    "dpo": ("prompt", "chosen", "rejected"),
    "grpo": ("prompt", "answer"),
    "eval": ("prompt", "answer"),
}


# The longest JSONL line read (bytes): a prompt and answer of the behaviour readers' 1,000,000 characters
# (MAX_PROMPT_CHARS) written as JSON escapes take up to 12 bytes a character, with room for a training row's
# other fields. A file that is one line without end (a binary file, a dump without newlines) is refused at it,
# holding this much memory, not its whole size.
MAX_LINE_BYTES = 32 * 2**20


def jsonl_objects(path: Path):
    """``(line number, object)`` for every non-blank line of a JSONL file; a line that is not valid JSON
    or not an object (or not UTF-8 text, or nested too deeply to parse), or longer than :data:`MAX_LINE_BYTES`,
    is a ConfigError naming the file and line. Each line is read with that bound, before it is parsed.
    The file passes :func:`subnetviz.config.check_readable` first (PathNotAllowedError outside enforced roots)."""
    from subnetviz.config import check_readable, display_path, parse_json

    resolved = check_readable(path, what=f"data file {display_path(path)}")  # refused outside enforced roots
    limit = MAX_LINE_BYTES
    with open(resolved, "rb") as fh:
        lineno = 0
        while line := fh.readline(limit + 1):  # (at most limit + 1 bytes: the line's own end, or one past it)
            lineno += 1
            if len(line) > limit and not line.endswith(b"\n"):
                raise ConfigError(
                    f"{path}, line {lineno}: longer than {limit:,} bytes; no prompt or training row needs a line "
                    "this long (a file that is not JSONL?). Refused before parsing."
                )
            if line.strip():
                yield lineno, parse_json(line, f"{path}, line {lineno}", ConfigError, text=True)


def read_jsonl(path: str | os.PathLike, kind: str) -> list[dict]:
    """Rows of ``path`` checked for the string fields of ``kind`` (a key of :data:`FIELDS`)."""
    if kind not in FIELDS:
        raise ConfigError(f"unknown data kind {kind!r}; expected one of {', '.join(FIELDS)}.")
    from subnetviz.config import check_readable, display_path

    path = Path(path)
    check_readable(path, what=f"data file {display_path(path)}")  # before is_file: says nothing outside the roots
    if not path.is_file():
        raise ConfigError(f"{path}: no such data file.")
    rows: list[dict] = []
    need = FIELDS[kind]
    form: dict[str, tuple[str, int]] = {}  # field -> (text or chat messages, the line it first was so)
    for lineno, row in jsonl_objects(path):
        missing = [k for k in need if k not in row]
        if missing:
            raise ConfigError(
                f"{path}, line {lineno}: missing field(s) {missing}; {kind} rows need {list(need)}, "
                f"found {sorted(row)}."
            )
        bad = [k for k in need if not _text_or_messages(row[k], k)]
        if bad:
            raise ConfigError(
                f"{path}, line {lineno}: field(s) {bad} must be strings"
                + (" (or chat messages: a list of {'role', 'content'} objects)." if kind != "eval" else ".")
            )
        if kind == "eval" and not isinstance(row["prompt"], str):
            raise ConfigError(f"{path}, line {lineno}: eval prompts must be plain strings.")
        for k in need:  # one form a column: datasets refused a mix in the worker, after the model had loaded
            this = "plain text" if isinstance(row[k], str) else "chat messages"
            first = form.setdefault(k, (this, lineno))
            if first[0] != this:
                raise ConfigError(
                    f"{path}, line {lineno}: {k!r} is {this} here but {first[0]} on line {first[1]}; every row's "
                    f"{k!r} must be of one form."
                )
        rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: holds no rows; {kind} data needs at least one {list(need)} object per line.")
    return rows


def _text_or_messages(value, key: str) -> bool:
    """A plain string, or (not for ``answer``) a conversational list of role/content messages."""
    if isinstance(value, str):
        return True
    return (
        key != "answer"
        and isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in value)
    )


def load_dataset(path: str | os.PathLike, algorithm: str):
    """A ``datasets.Dataset`` for ``algorithm`` ("sft" | "dpo" | "grpo") from a JSONL file. Extra keys are kept
    where every row has them and each holds one type; else only the required columns are (no trainer reads the
    others: an ``id`` that is a number on most rows and a string on one failed in the worker with pyarrow's
    traceback, after the model had loaded)."""
    import pyarrow as pa
    from datasets import Dataset

    rows = read_jsonl(path, algorithm)
    keys = sorted({k for r in rows for k in r})
    need = list(FIELDS[algorithm])
    if any(set(r) != set(keys) for r in rows):
        # datasets needs one schema: keep only the required columns when extras differ by row.
        keys = need
    for columns in [keys] + [need] * (keys != need):
        try:
            return Dataset.from_dict({k: [r[k] for r in rows] for k in columns})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            why = " ".join(str(exc).split())[:200]
    raise ConfigError(f"{path}: its rows' {', '.join(need)} cannot form one table ({why}).")


def rows_over_length(
    rows: list[dict], tokenizer, algorithm: str, max_length: int, *, until_kept: bool = False, where: str = "data"
) -> tuple[list[int], int | None]:
    """The rows (0-based indices) TRL's SFT or DPO trainer drops because none of their completion tokens lies within
    the first ``max_length`` tokens of prompt + completion (its ``keep_start`` truncation), and the fewest prompt
    tokens among them (None when none is dropped).

    Tokenized as TRL does: plain text with EOS appended to completions, chat messages with the tokenizer's chat
    template (the prompt with the generation prompt); the completion starts where the tokenized prompt and
    prompt + completion diverge. SFT keeps a row with a completion token before ``max_length``; DPO one whose
    prompt is shorter than ``max_length``.

    ``until_kept``: stop at the first batch that keeps a row (what a submit needs to know: whether any row is
    left; tokenizing a whole dataset there held the page for seconds per 10k rows), so the drops returned are
    those met until then. A row the tokenizer or its chat template cannot take is a one-line
    :class:`~subnetviz.errors.ConfigError` naming ``where`` and the row.
    """
    from subnetviz.errors import ConfigError

    completions = ("completion",) if algorithm == "sft" else ("chosen", "rejected")
    eos = getattr(tokenizer, "eos_token", None)
    dropped: list[int] = []
    fewest: int | None = None
    step = 1024  # a fast tokenizer encodes a batch in one call
    for start in range(0, len(rows), step):
        kept_any = False
        for i, n, kept in _lengths(rows, range(start, min(start + step, len(rows))), tokenizer, completions, eos,
                                   algorithm, max_length, where, ConfigError):  # fmt: skip
            if kept:
                kept_any = True
            else:
                dropped.append(i)
                fewest = n if fewest is None else min(fewest, n)
        if until_kept and kept_any:
            break
    return dropped, fewest


def prompts_past_context(
    rows: list[dict], tokenizer, limit: int, *, longest: int | None = None, where: str = "data"
) -> list[tuple[int, int]]:
    """(row, prompt tokens) of the rows whose prompt takes more than ``limit`` tokens of ``tokenizer`` (GRPO's
    prompts, tokenized as TRL does, chat rows with the generation prompt): with the completion generated after
    it, such a prompt runs past the base's positions (a GPT-2 indexes past its position table, a RoPE model runs
    where it was never trained, and TRL has no prompt length to cut it to). ``longest``: only that many rows,
    the longest by characters (what a submit can afford; the training process looks at every row)."""
    from subnetviz.errors import ConfigError

    idx = list(range(len(rows)))
    if longest is not None and len(rows) > longest:
        size = [len(str(r.get("prompt", ""))) for r in rows]
        idx = sorted(sorted(idx, key=lambda i: -size[i])[:longest])
    out = []
    for start in range(0, len(idx), 1024):  # a fast tokenizer encodes a batch in one call
        part = idx[start : start + 1024]
        for i, n, kept in _lengths(rows, part, tokenizer, (), None, "prompt", limit, where, ConfigError):
            if not kept:
                out.append((i, n))
    return out


def _lengths(rows, idx, tokenizer, completions, eos, algorithm, max_length, where, error):
    """(row, prompt tokens, whether TRL keeps it) for the rows ``idx``, plain ones in one batch call."""
    is_chat = {i: any(isinstance(rows[i][k], list) for k in ("prompt", *completions)) for i in idx}
    plain = [i for i in idx if not is_chat[i]]
    out = []
    try:
        if plain:
            prompts = tokenizer([rows[i]["prompt"] for i in plain])["input_ids"]
            full = [tokenizer([rows[i]["prompt"] + _with_eos(rows[i][k], eos) for i in plain])["input_ids"]
                    for k in completions]  # fmt: skip
            out += [(i, *_kept(prompts[j], [f[j] for f in full], algorithm, max_length)) for j, i in enumerate(plain)]
    except Exception as exc:  # noqa: BLE001 - the tokenizer's own error, about someone's data
        raise error(
            f"{where}: rows {plain[0] + 1}-{plain[-1] + 1} cannot be tokenized ({type(exc).__name__}: {exc})."
        ) from None
    for i in idx:
        if not is_chat[i]:
            continue
        r = rows[i]
        try:
            prompt = _chat_ids(tokenizer, r["prompt"], r, add_generation_prompt=True)
            full = [_chat_ids(tokenizer, _messages(r["prompt"]) + _messages(r[k]), r) for k in completions]
        except Exception as exc:  # noqa: BLE001 - a template, tools or template arguments that do not fit
            raise error(
                f"{where}: row {i + 1}: its chat template cannot be applied ({type(exc).__name__}: {exc})."
            ) from None
        out.append((i, *_kept(prompt, full, algorithm, max_length)))
    return sorted(out)


def _with_eos(text: str, eos: str | None) -> str:
    return text + eos if eos and not text.endswith(eos) else text


def _messages(value) -> list:
    return value if isinstance(value, list) else [{"role": "user", "content": value}]


def _chat_ids(tokenizer, messages, row: dict, **kwargs) -> list[int]:
    import json

    tools = row.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    extra = row.get("chat_template_kwargs") if isinstance(row.get("chat_template_kwargs"), dict) else {}
    extra = {k: v for k, v in extra.items() if k not in ("add_generation_prompt", "tokenize", "return_dict", "tools")}
    out = tokenizer.apply_chat_template(
        _messages(messages), tokenize=True, return_dict=True, tools=tools, **extra, **kwargs
    )
    return list(out["input_ids"])


def _kept(prompt: list[int], fulls: list[list[int]], algorithm: str, max_length: int) -> tuple[int, bool]:
    """(prompt tokens, whether TRL keeps the row): the prompt is the common prefix of the prompt's tokens and every
    prompt + completion's."""
    if not fulls:  # a prompt alone (GRPO's): kept while it fits
        return len(prompt), len(prompt) <= max_length
    n = min(_common_prefix(prompt, f) for f in fulls)
    if algorithm == "sft":
        return n, n < max_length and len(fulls[0]) > n
    return n, n < max_length


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def exact_match_reward(completions: list, answer: list, **kwargs) -> list[float]:
    """GRPO reward: 1.0 where the stripped completion equals the row's ``answer``, else 0.0."""
    out = []
    for c, a in zip(completions, answer, strict=True):
        text = c if isinstance(c, str) else c[-1]["content"]  # conversational completions are message lists
        out.append(1.0 if text.strip() == str(a).strip() else 0.0)
    return out
