"""The demo zoo's character-level tokenizer, built locally (nothing comes from a hub).

One token per character over a fixed vocabulary, in this order::

    <pad> <bos> <eos> <unk> 0 1 ... 9 + = <chain letters a, b, ...>

The order is fixed so token ids are deterministic and the bigram file can name them. No special
token is added on encoding: TRL tokenizes with ``add_special_tokens=False``, so the base model is
pretrained on documents without ``<bos>`` and every caller sees the same ids for ``"12+34="``.
A document ends with ``<eos>`` only where it has a natural end (an arithmetic answer); Markov-chain
documents have none, so a chain letter is only ever followed by another chain letter.
"""

from __future__ import annotations

import os
from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
DIGITS = tuple("0123456789")
OPERATORS = ("+", "=")


def chain_letters(n_letters: int) -> tuple[str, ...]:
    """The Markov chain's alphabet: the first ``n_letters`` lowercase letters."""
    if not 2 <= n_letters <= 26:
        from subnetviz.errors import ConfigError

        raise ConfigError(f"the Markov chain needs 2..26 letters, got {n_letters}.")
    return tuple(chr(ord("a") + i) for i in range(n_letters))


def vocabulary(n_letters: int) -> list[str]:
    """Every token, in id order."""
    return [*SPECIAL_TOKENS, *DIGITS, *OPERATORS, *chain_letters(n_letters)]


def build_tokenizer(n_letters: int, *, model_max_length: int = 32):
    """A ``PreTrainedTokenizerFast`` that maps each character to one id of :func:`vocabulary`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(vocabulary(n_letters))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")  # one token per character
    core.decoder = decoders.Fuse()  # join characters back without separators
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def save_tokenizer(tokenizer, folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return folder
