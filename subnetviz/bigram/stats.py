"""Bigram statistics P(next | current) over a model's vocabulary, stored sparsely.

Owns :class:`BigramTable` (counts -> maximum-likelihood rows with back-off to the unigram, then to
uniform 1/V, as the paper's ``NGramModel.ngram_predict_with_backoff``), the token corpora it is
built from, and the two ways to build one:

- :func:`count_bigrams` over token sequences (the first token of each sequence is counted under a
  BOS context, row ``V``), e.g. :func:`corpus_from_text` / :func:`corpus_from_dataset` with the
  model's own tokenizer;
- :func:`table_from_transition` from an exact Markov transition matrix (the demo zoo's chain).

Rows live in a SciPy CSR matrix of shape ``(V + 1, V)`` so a 50K vocabulary costs memory in
proportion to the distinct bigrams seen. Dense rows are materialised only per batch
(:meth:`BigramTable.probs_rows`: float32 ``(B*T, V)``, never a float64 ``B×T×V`` array).

The demo zoo's ``bigram.npz`` is read by :func:`load_transition_npz` with keys ``transition``
(``(n, n)`` float, row-stochastic over the chain's states), ``token_ids`` (``(n,)`` int, the
token id of each state) and optionally ``vocab_size`` (int; default ``max(token_ids) + 1``).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from subnetviz.errors import ConfigError

DENSE_CACHE_BYTES = 256 * 2**20  # below this, rows are gathered from one dense float32 copy
MIN_SEQUENCES = 10  # a text corpus cut into fewer is refused (a table and a mask learned from a handful)
EVAL_SHARE = 0.2  # at most this share of a text corpus's sequences is held out


@dataclass(frozen=True)
class TokenCorpus:
    """Token sequences of equal length: ``ids`` LongTensor ``(n_sequences, seq_len)``."""

    ids: torch.Tensor
    source: str = ""

    @property
    def n_tokens(self) -> int:
        return int(self.ids.numel())

    def split(self, n_eval: int) -> tuple[TokenCorpus, TokenCorpus]:
        """(train, eval): the last ``n_eval`` sequences are held out, at most :data:`EVAL_SHARE` of them (a
        3,834-token text cut into 119 sequences held out 118 of them: the mask was trained, and the bigram
        table counted, on one sequence). A corpus of fewer than :data:`MIN_SEQUENCES` is refused."""
        n = len(self.ids)
        if n < MIN_SEQUENCES:
            raise ConfigError(
                f"{self.source or 'the corpus'}: {n} sequence(s) of {int(self.ids.shape[1])} tokens once tokenised; "
                f"at least {MIN_SEQUENCES} are needed, to train on and to hold out. Give a longer text."
            )
        n_eval = min(max(int(n_eval), 1), max(int(n * EVAL_SHARE), 1))
        return TokenCorpus(self.ids[:-n_eval], self.source), TokenCorpus(self.ids[-n_eval:], self.source)


@dataclass(frozen=True)
class BigramTable:
    """Next-token distributions for every context ``0..V-1`` plus BOS (row ``V``).

    ``probs``: CSR ``(V+1, V)`` float64 maximum-likelihood rows (all-zero for unseen contexts);
    ``unigram``: ``(V,)`` float64 back-off distribution (uniform where no token was seen);
    ``context_counts``: ``(V+1,)`` how often each context occurred (weights for the entropy rate).
    """

    probs: sp.csr_matrix
    unigram: np.ndarray
    context_counts: np.ndarray
    source: str = ""

    @property
    def vocab_size(self) -> int:
        return int(self.probs.shape[1])

    @property
    def bos(self) -> int:
        return self.vocab_size

    def seen(self) -> np.ndarray:
        """(V+1,) bool: contexts with a maximum-likelihood row (the rest back off)."""
        return np.diff(self.probs.indptr) > 0

    def dense_rows(self, contexts: np.ndarray) -> np.ndarray:
        """float32 ``(len(contexts), V)`` rows with back-off applied."""
        contexts = np.asarray(contexts, dtype=np.int64)
        rows = self.probs[contexts].toarray().astype(np.float32)
        unseen = ~self.seen()[contexts]
        if unseen.any():
            rows[unseen] = self.unigram.astype(np.float32)
        return rows

    def _dense_cache(self, device: torch.device) -> torch.Tensor | None:
        v = self.vocab_size
        if (v + 1) * v * 4 > DENSE_CACHE_BYTES:
            return None
        cache = self.__dict__.setdefault("_cache", {})  # per-instance memo (frozen dataclass)
        key = str(device)
        if key not in cache:
            cache[key] = torch.from_numpy(self.dense_rows(np.arange(v + 1))).to(device)
        return cache[key]

    def probs_rows(self, context_ids: torch.Tensor) -> torch.Tensor:
        """Target rows for a batch: ``context_ids`` any shape (e.g. ``(B, T)``) -> float32
        ``(numel, V)`` on the same device, row ``i`` = P(· | context_ids.flatten()[i])."""
        flat = context_ids.reshape(-1)
        self.check_ids(flat, contexts=True)
        dense = self._dense_cache(flat.device)
        if dense is not None:
            return dense.index_select(0, flat)
        uniq, inverse = torch.unique(flat, return_inverse=True)
        return self._gather_sparse(uniq).index_select(0, inverse)

    def _gather_sparse(self, contexts: torch.Tensor) -> torch.Tensor:
        """Dense float32 rows ``(len(contexts), V)`` built on the contexts' device from a CSR copy
        kept there (no host round trip per batch, so GPU training is not fed by SciPy)."""
        dev = contexts.device
        cache = self.__dict__.setdefault("_csr", {})
        if str(dev) not in cache:
            p = self.probs
            cache[str(dev)] = tuple(
                torch.from_numpy(np.ascontiguousarray(a)).to(dev)
                for a in (
                    p.indptr.astype(np.int64),
                    p.indices.astype(np.int64),
                    p.data.astype(np.float32),
                    self.seen(),
                    self.unigram.astype(np.float32),
                )
            )
        crow, col, val, seen, unigram = cache[str(dev)]
        starts, ends = crow[contexts], crow[contexts + 1]
        lengths = ends - starts
        rows = torch.zeros(len(contexts), self.vocab_size, dtype=torch.float32, device=dev)
        row_ids = torch.repeat_interleave(torch.arange(len(contexts), device=dev), lengths)
        # position of each stored entry: its row's start + its rank within the row
        first = torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
        entry = torch.arange(int(lengths.sum()), device=dev) - first + torch.repeat_interleave(starts, lengths)
        rows[row_ids, col[entry]] = val[entry]
        unseen = ~seen[contexts]
        rows[unseen] = unigram
        return rows

    def check_ids(self, ids: torch.Tensor, contexts: bool = False) -> None:
        """Token ids 0 .. V-1 (row V is the table's start-of-sequence context, never a token: a corpus token V was
        let through); ``contexts``: the rows asked for, where V is that start context."""
        top = self.vocab_size + 1 if contexts else self.vocab_size
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= top):
            bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
            raise ConfigError(
                f"token id {bad} outside the bigram table's vocabulary of {self.vocab_size} "
                f"({self.source or 'table'}); build the table with the model's own tokenizer."
            )

    def prob(self, prev_ids: np.ndarray, next_ids: np.ndarray) -> np.ndarray:
        """P(next | prev) elementwise (back-off applied), float64, shape of the inputs."""
        prev = np.asarray(prev_ids, dtype=np.int64).reshape(-1)
        nxt = np.asarray(next_ids, dtype=np.int64).reshape(-1)
        p = np.asarray(self.probs[prev, nxt]).reshape(-1).astype(np.float64)
        unseen = ~self.seen()[prev]
        p[unseen] = self.unigram[nxt[unseen]]
        return p.reshape(np.shape(prev_ids))

    def surprisal(self, prev_ids, next_ids) -> np.ndarray:
        """-log2 P(next | prev) in bits (``inf`` for a pair the table gives probability 0)."""
        if isinstance(prev_ids, torch.Tensor):
            prev_ids = prev_ids.cpu().numpy()
        if isinstance(next_ids, torch.Tensor):
            next_ids = next_ids.cpu().numpy()
        with np.errstate(divide="ignore"):
            return -np.log2(self.prob(prev_ids, next_ids))

    def row_entropy(self) -> np.ndarray:
        """(V+1,) entropy in bits of each context's row (back-off rows included)."""
        terms = self.probs.copy()
        pos = terms.data > 0
        terms.data[pos] = -terms.data[pos] * np.log2(terms.data[pos])
        out = np.asarray(terms.sum(axis=1)).reshape(-1)
        u = self.unigram[self.unigram > 0]
        out = np.where(self.seen(), out, -(u * np.log2(u)).sum())
        return out

    def entropy(self) -> float:
        """Conditional entropy H(next | current) in bits, weighted by how often each context occurs."""
        w = self.context_counts.astype(np.float64)
        if w.sum() == 0:
            w = self.seen().astype(np.float64)
        return float((w * self.row_entropy()).sum() / w.sum())

    def sample(self, n_sequences: int, seq_len: int, seed: int = 0) -> TokenCorpus:
        """Sequences drawn from the table itself (first token from the BOS row), as a corpus."""
        rng = np.random.default_rng(seed)
        rows = self.dense_rows(np.arange(self.vocab_size + 1)).astype(np.float64)
        cdf = np.cumsum(rows, axis=1)
        cdf /= cdf[:, -1:]
        out = np.empty((n_sequences, seq_len), dtype=np.int64)
        cur = np.full(n_sequences, self.bos)
        for t in range(seq_len):
            u = rng.random(n_sequences)
            cur = np.minimum((cdf[cur] < u[:, None]).sum(axis=1), self.vocab_size - 1)
            out[:, t] = cur
        return TokenCorpus(torch.from_numpy(out), f"sampled from {self.source or 'bigram table'}")


def count_bigrams(sequences, vocab_size: int, source: str = "") -> BigramTable:
    """Maximum-likelihood bigram table from token sequences (an ``(N, T)`` array/tensor or a list of
    1-D arrays). Each sequence's first token is counted under the BOS context (row ``vocab_size``)."""
    if isinstance(sequences, torch.Tensor | np.ndarray):
        sequences = list(np.asarray(sequences.cpu() if isinstance(sequences, torch.Tensor) else sequences))
    counts = sp.csr_matrix((vocab_size + 1, vocab_size), dtype=np.float64)
    unigram = np.zeros(vocab_size, dtype=np.float64)
    chunk_prev: list[np.ndarray] = []
    chunk_next: list[np.ndarray] = []
    n_pairs = 0
    for seq in sequences:
        seq = np.asarray(seq, dtype=np.int64).reshape(-1)
        if seq.size == 0:
            continue
        if seq.min() < 0 or seq.max() >= vocab_size:
            raise ConfigError(f"{source or 'corpus'}: token id {int(seq.max())} >= vocabulary size {vocab_size}.")
        chunk_prev.append(np.concatenate([[vocab_size], seq[:-1]]))
        chunk_next.append(seq)
        n_pairs += seq.size
        if n_pairs > 5_000_000:  # bounded memory: fold chunks into the sparse counts
            counts = counts + _pair_counts(chunk_prev, chunk_next, vocab_size)
            chunk_prev, chunk_next, n_pairs = [], [], 0
    if chunk_prev:
        counts = counts + _pair_counts(chunk_prev, chunk_next, vocab_size)
    if counts.nnz == 0:
        raise ConfigError(f"{source or 'corpus'}: no tokens to count bigrams from; give a non-empty corpus.")
    unigram = np.asarray(counts.sum(axis=0)).reshape(-1)
    return _normalise(counts.tocsr(), unigram, source)


def _pair_counts(prev: list[np.ndarray], nxt: list[np.ndarray], v: int) -> sp.csr_matrix:
    p, n = np.concatenate(prev), np.concatenate(nxt)
    return sp.coo_matrix((np.ones(p.size), (p, n)), shape=(v + 1, v)).tocsr()  # duplicates are summed


def _normalise(counts: sp.csr_matrix, unigram: np.ndarray, source: str) -> BigramTable:
    counts.sum_duplicates()
    counts.eliminate_zeros()
    row_tot = np.asarray(counts.sum(axis=1)).reshape(-1)
    inv = np.divide(1.0, row_tot, out=np.zeros_like(row_tot), where=row_tot > 0)
    probs = sp.diags(inv) @ counts
    uni = unigram / unigram.sum() if unigram.sum() > 0 else np.full(unigram.size, 1.0 / unigram.size)
    return BigramTable(sp.csr_matrix(probs), uni, row_tot, source)


def table_from_transition(
    transition, token_ids, vocab_size: int | None = None, stationary=None, source: str = "transition matrix"
) -> BigramTable:
    """Exact table of a Markov chain: state ``i`` is token ``token_ids[i]``; ``transition[i, j]`` =
    P(token_ids[j] | token_ids[i]). Contexts outside the chain (and BOS) back off to the
    stationary distribution (computed by power iteration unless given)."""
    t = np.asarray(transition, dtype=np.float64)
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] != ids.size:
        raise ConfigError(
            f"{source}: transition has shape {t.shape}; expected ({ids.size}, {ids.size}) to match token_ids."
        )
    if np.any(t < 0) or not np.allclose(t.sum(axis=1), 1.0, atol=1e-6):
        raise ConfigError(f"{source}: transition rows must be probabilities summing to 1.")
    v = int(vocab_size) if vocab_size is not None else int(ids.max()) + 1
    if ids.min() < 0 or ids.max() >= v or len(np.unique(ids)) != ids.size:
        raise ConfigError(f"{source}: token_ids must be distinct ids in [0, {v}).")
    if stationary is None:
        pi = np.full(ids.size, 1.0 / ids.size)
        for _ in range(10_000):
            nxt = pi @ t
            if np.abs(nxt - pi).max() < 1e-13:
                break
            pi = nxt
    else:
        pi = np.asarray(stationary, dtype=np.float64)
    pi = pi / pi.sum()
    coo = sp.coo_matrix(t)
    probs = sp.csr_matrix((coo.data, (ids[coo.row], ids[coo.col])), shape=(v + 1, v))
    unigram = np.zeros(v)
    unigram[ids] = pi
    weights = np.zeros(v + 1)
    weights[ids] = pi
    table = _normalise(probs, unigram, source)
    return BigramTable(table.probs, table.unigram, weights, source)


def load_transition_npz(path: str | os.PathLike, vocab_size: int | None = None) -> BigramTable:
    """The demo zoo's ``bigram.npz`` (keys ``transition``, ``token_ids``, optional ``vocab_size`` and
    ``stationary``); ``vocab_size`` (e.g. the model's) is used when the file does not store one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no bigram table file; build the demo zoo first (python -m subnetviz demo).")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("transition", "token_ids") if k not in z.files]
        if missing:
            raise ConfigError(f"{path}: missing keys {missing}; found {z.files}.")
        vocab = int(z["vocab_size"]) if "vocab_size" in z.files else vocab_size
        stationary = z["stationary"] if "stationary" in z.files else None
        return table_from_transition(z["transition"], z["token_ids"], vocab, stationary, source=str(path))


def _tokenizer(tokenizer):
    """A tokenizer as given, or the one in a folder (a cached hub id's snapshot) named by ``tokenizer``: its files
    checked first and any failure to load it one CheckpointError
    (:func:`~subnetviz.checkpoints.models.folder_tokenizer`; a tokenizer_config.json holding a list was an
    AttributeError traceback)."""
    if isinstance(tokenizer, str | os.PathLike):
        from subnetviz.checkpoints.models import check_folder_files, folder_tokenizer
        from subnetviz.checkpoints.sources import local_folder

        folder = local_folder(tokenizer) or Path(tokenizer).expanduser()
        if folder.is_dir():
            check_folder_files(folder)
        return folder_tokenizer(folder, str(tokenizer))
    return tokenizer


MAX_TOKENS = 5_000_000  # a corpus's tokens read at most (bigram counts and evaluation need far fewer)
PIECE_CHARS = 1 << 20  # characters of text tokenized at a time


def _corpus_from_texts(texts, tokenizer, seq_len: int, max_tokens: int | None, source: str) -> TokenCorpus:
    """Tokenize an iterable of text pieces into one stream (8 bytes a token), cut into ``seq_len`` sequences."""
    from array import array

    tokenizer = _tokenizer(tokenizer)
    ids = array("q")
    for text in texts:
        ids.extend(_encode(tokenizer, text))
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    if max_tokens is not None:
        del ids[max_tokens:]
    if len(ids) < 2:
        raise ConfigError(f"{source}: tokenizes to {len(ids)} tokens; a corpus needs at least 2 (is it empty?).")
    n = len(ids) // seq_len
    arr = np.frombuffer(ids, dtype=np.int64)[: n * seq_len if n else len(ids)].reshape(max(n, 1), -1)
    return TokenCorpus(torch.from_numpy(arr.copy()), source)


def corpus_from_text(
    path: str | os.PathLike, tokenizer, seq_len: int = 128, max_tokens: int | None = MAX_TOKENS
) -> TokenCorpus:
    """Tokenize a UTF-8 text file with the model's tokenizer (a loaded tokenizer or a local folder) and cut
    the token stream into sequences of ``seq_len`` (a shorter corpus gives one shorter sequence). The file is
    read :data:`PIECE_CHARS` characters at a time (cut at a line or word break), and only until ``max_tokens``
    tokens: memory and time stay bounded whatever the file's size or lines. A file that is not text (a NUL byte,
    or bytes that are not UTF-8, in what is read) is refused, naming where."""
    from subnetviz.config import not_a_file

    path = Path(path)
    if kind := not_a_file(path):  # (a named pipe blocked the read below, a device read without end)
        raise ConfigError(f"{path}: {kind}, not a regular file; refused.")
    if not path.is_file():
        raise ConfigError(f"{path}: no such corpus file.")

    def not_text(offset: int, why: str) -> ConfigError:
        return ConfigError(f"{path}: not a UTF-8 text file ({why} near character {offset:,}); give a text corpus.")

    def pieces():
        done, rest = 0, ""
        with open(path, encoding="utf-8", errors="strict", newline="") as fh:
            while True:
                try:
                    chunk = fh.read(PIECE_CHARS)
                except UnicodeDecodeError as exc:
                    raise not_text(done + len(rest), f"byte 0x{exc.object[exc.start]:02x} is not UTF-8") from None
                if "\x00" in chunk:
                    raise not_text(done + len(rest) + chunk.index("\x00"), "a NUL byte")
                text = rest + chunk
                if not chunk:
                    if text:
                        yield text
                    return
                cut = max(text.rfind("\n"), text.rfind(" "))  # before a line or word break (which starts the
                cut = cut if cut > 0 else len(text)  # next piece, as a tokenizer would see it in the whole text)
                done += cut
                rest = text[cut:]
                yield text[:cut]

    return _corpus_from_texts(pieces(), tokenizer, seq_len, max_tokens, str(path))


_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def hub_dataset(spec: str) -> tuple[str, str]:
    """``hf:<name>[:<split>]`` -> (name, split): a dataset of the hub by its id (``wikitext``, ``org/name``), read
    from the local datasets cache. A path is refused: ``load_dataset`` reads any folder it is given, outside the
    roots this server may read."""
    name, _, split = spec[3:].partition(":")
    if not _HUB_NAME.fullmatch(name) or ".." in name or not re.fullmatch(r"[\w.-]*", split):
        raise ConfigError(
            f"{spec[:120]}: hf:<name>[:<split>] names a dataset of the hub by its id (wikitext, org/name), not a path."
        )
    return name, split


def cached_dataset(spec: str, name: str, instead: str = "a text file or a saved dataset folder") -> str:
    """What ``load_dataset`` is given for ``hf:<name>``: ``hf://datasets/<name>``, a data set of the hub, which
    offline is read from the datasets cache only. Given the bare name, ``load_dataset`` first read a folder of that
    name in the working directory (``hf:docs``: the server's ``docs/``, outside ``SUBNETVIZ_ROOTS``). A name of
    one of datasets' file-format loaders (``text``, ``json``, ``csv``, ...) is refused: those read the working
    directory's files whatever the prefix. ``instead``: what the refusal says to give (the Behaviour page reads
    prompts from a JSONL file)."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    if name in _PACKAGED_DATASETS_MODULES:
        raise ConfigError(
            f"{spec[:120]}: {name!r} is a file-format loader of datasets, which reads the working directory's "
            f"files, not a data set of the hub; give {instead} by its path."
        )
    return f"hf://datasets/{name}"


# A corpus file is text, read as UTF-8 a piece at a time (corpus_from_text): a visitor's link named any file under the
# roots (a config, a key) and saw its first tokens. A binary file (.parquet, .arrow) is not read as a corpus.
CORPUS_SUFFIXES = (".txt", ".text", ".md", ".csv", ".tsv", ".json", ".jsonl")


def check_corpus_file(spec: str | os.PathLike) -> None:
    """ConfigError, one line listing what is read, unless the corpus file ``spec`` (its name as given: a hub
    snapshot's file is a link to a ``blobs/<sha256>`` file) ends in one of :data:`CORPUS_SUFFIXES`. Asks the file
    system nothing: the same words whether the file exists or not."""
    from subnetviz.config import display_path

    if Path(spec).suffix.lower() not in CORPUS_SUFFIXES:
        raise ConfigError(
            f"{display_path(spec)}: not a corpus; give 'zoo', hf:NAME, a saved data set's folder or a text file "
            f"({', '.join(CORPUS_SUFFIXES)})."
        )


_OFFLINE_LOCK = threading.Lock()
_OFFLINE_USERS = [0, None]  # loads inside hub_offline() now, and the flags as they were before the first


@contextlib.contextmanager
def hub_offline():
    """datasets and huggingface_hub kept offline for the block (the cache only, nothing asked of the hub), their
    flags put back when the last such block in the process ends. datasets and huggingface_hub read their offline
    variables when they are imported, so the environment cannot do it; and two loads that each saved and put back
    the flags turned them off under each other (the first to end put "online" back while the other loaded)."""
    import datasets
    from huggingface_hub import constants as hub

    with _OFFLINE_LOCK:
        if _OFFLINE_USERS[0] == 0:
            _OFFLINE_USERS[1] = datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE
        _OFFLINE_USERS[0] += 1
        datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        with _OFFLINE_LOCK:
            _OFFLINE_USERS[0] -= 1
            if _OFFLINE_USERS[0] == 0:
                datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE = (
                    _OFFLINE_USERS[1]
                )


def check_cached_hub_dataset(spec: str) -> tuple[str, str]:
    """``hf:<name>[:<split>]`` -> (what ``load_dataset`` is given, the split: "train" unless named), once the local
    datasets cache holds the data set and that split: ConfigError, one line naming it, otherwise. A cache lookup
    (``datasets.load_dataset_builder`` inside :func:`hub_offline`: its ``dataset_info.json``, no row read, nothing
    asked of the hub), as :func:`corpus_from_dataset` then loads it: a bigram-mask job's config is checked with it
    when it is queued (a mistyped name was queued and failed only when the run started, minutes later)."""
    import datasets

    from subnetviz.config import display_path

    name, split = hub_dataset(spec)
    path = cached_dataset(spec, name)
    try:
        with hub_offline():
            builder = datasets.load_dataset_builder(path)
    except (FileNotFoundError, ValueError, ConnectionError, OSError, RuntimeError) as exc:
        cache = display_path(datasets.config.HF_DATASETS_CACHE)
        raise ConfigError(
            f"{spec}: not a local dataset: {name} is not in the local Hugging Face datasets cache ({cache}), and "
            f"nothing is downloaded ({type(exc).__name__})."
        ) from None
    split = split or "train"
    splits = list(builder.info.splits or ())  # (unknown for some cached layouts: the load then says it)
    if splits and split not in splits:
        raise ConfigError(f"{spec}: the local datasets cache's {name} has no split {split!r}; it holds {splits}.")
    return path, split


_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")  # what load_from_disk looks for first


def check_saved_dataset(spec: str | os.PathLike) -> str:
    """The folder ``spec`` (resolved) to give ``datasets.load_from_disk``, once every file it will open passed
    :func:`~subnetviz.config.check_readable`: ``dataset_info.json``, ``state.json`` (read by
    :func:`~subnetviz.config.read_json`) and the data files its ``_data_files`` name, or for a ``DatasetDict``
    folder its ``dataset_dict.json`` and each split's subfolder likewise. ``load_from_disk`` joins those names to
    the folder as they are: an absolute name, or one with ``..``, opened a file outside every root (a hub data set's
    ``state.json`` chose which). Such a name, or one that is not a regular file of the folder (after links; a hub
    snapshot's files link to its repository's ``blobs/``), is refused: ConfigError or PathNotAllowedError, one line
    naming the folder and the entry."""
    from subnetviz.config import check_name, check_readable, display_path, read_json

    check_name(spec)  # (a NUL byte, a name too long, a loop of links: one line)
    shown = display_path(spec)
    folder = Path(spec).expanduser().resolve()
    if "::" in str(folder) or "://" in str(folder):  # (fsspec, under load_from_disk, reads those as URLs)
        raise ConfigError(f"{shown}: a saved data set's folder is a path, not a URL; refused.")
    present = {n: check_readable(folder / n, what=f"{n} in {shown}").is_file() for n in _DATASET_FILES}
    if present["dataset_info.json"] and present["state.json"]:
        _check_dataset_files(folder, shown)
    elif present["dataset_dict.json"]:
        splits = read_json(folder / "dataset_dict.json", ConfigError, what=f"dataset_dict.json in {shown}")
        splits = splits.get("splits")
        if not isinstance(splits, list) or not splits or not all(isinstance(k, str) for k in splits):
            raise ConfigError(f"dataset_dict.json in {shown}: expected 'splits', a list of split names.")
        for i, name in enumerate(splits):
            what = f"dataset_dict.json in {shown}: split #{i + 1}"
            if not re.fullmatch(r"[\w.-]+", name) or name in (".", ".."):  # (joined to the folder as it is)
                raise ConfigError(f"{what} is not a split name (a subfolder's name); refused.")
            check_readable(folder / name / "state.json", what=f"{what} ({name})")  # (where a link leads, first)
            if not (folder / name).is_dir():
                raise ConfigError(f"{what} ({name}): no such folder in {shown}.")
            _check_dataset_files((folder / name).resolve(), f"{shown}/{name}")
    else:
        raise ConfigError(
            f"{shown}: not a saved data set (Dataset.save_to_disk writes dataset_info.json and state.json, "
            "DatasetDict.save_to_disk dataset_dict.json)."
        )
    return str(folder)


def _check_dataset_files(folder: Path, shown: str) -> None:
    """The checks of :func:`check_saved_dataset` for one ``Dataset`` folder (``folder`` resolved)."""
    from subnetviz.config import check_readable, display_path, hub_snapshot_of, read_json

    read_json(folder / "dataset_info.json", ConfigError, what=f"dataset_info.json in {shown}")
    where = f"state.json in {shown}"
    files = read_json(folder / "state.json", ConfigError, what=where).get("_data_files")
    if not isinstance(files, list) or not files:
        raise ConfigError(f"{where}: expected '_data_files', a list of the data set's files.")
    snap = hub_snapshot_of(folder)  # (a hub snapshot's files are links to its repository's blobs/ folder)
    homes = [folder]
    if snap is not None:
        homes.append(folder.parents[len(Path(snap[2]).parts) + 1] / "blobs")
    for i, entry in enumerate(files):
        name = entry.get("filename") if isinstance(entry, dict) else None
        what = f"{where}: _data_files entry #{i + 1}"
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{what} has no file name; refused.")
        if name.startswith("/") or ".." in name.split("/"):  # (not shown: it names a place outside, maybe a root's)
            kind = "an absolute path" if name.startswith("/") else "a path leaving its folder (..)"
            raise ConfigError(f"{what} is {kind}; a saved data set's files lie in its folder. Refused.")
        path = folder / name
        resolved = check_readable(path, what=f"{what} ({_shown_name(name)})")
        if not path.is_file():
            raise ConfigError(f"{what} ({_shown_name(name)}): no such file in the folder.")
        if not any(resolved.is_relative_to(h) for h in homes):
            raise ConfigError(
                f"{what} ({_shown_name(name)}): leads out of its folder (to {display_path(resolved)}); refused."
            )


def plain_columns(ds, columns, spec: str):
    """``ds`` (a ``datasets.Dataset``) with only ``columns``, once none of them is a feature ``datasets`` decodes
    when it is read (Image, Audio, Video, Pdf, …, also inside a list): ConfigError, one line naming the data set
    and the column. Such a column stores a path or a URL, and reading it opened that file wherever it lies, or sent
    the server's requests to that address, whatever the roots (a saved data set's ``dataset_info.json`` chooses
    its features). The other columns are dropped unread: a row read whole decoded every one of them."""
    from datasets.features.features import require_decoding

    for col in columns:
        if require_decoding(ds.features[col]):
            raise ConfigError(
                f"{spec}: column {col!r} holds datasets' {_feature_name(ds.features[col])} feature, which it decodes by "
                "opening the file or URL each row names; expected text. Refused."
            )
    return ds.select_columns(list(columns))


def _feature_name(feature) -> str:
    inner = getattr(feature, "feature", None)  # (a List / Sequence of images: the decoded kind inside)
    return f"list of {_feature_name(inner)}" if inner is not None else type(feature).__name__


def _shown_name(name: str) -> str:
    return repr(name) if len(name) <= 80 else f"{name[:40]!r}…{name[-20:]!r} ({len(name):,} characters)"


def corpus_from_dataset(
    spec: str, tokenizer, seq_len: int = 128, text_field: str = "text", max_tokens: int | None = None
) -> TokenCorpus:
    """A local dataset's ``text_field`` as a corpus: a folder written by ``Dataset.save_to_disk`` or
    ``hf:<name>[:<split>]`` already in the local Hugging Face datasets cache (never downloaded, and never a
    folder of the working directory: :func:`cached_dataset`). Each record is one piece of the token stream."""
    import datasets

    folder = None if spec.startswith("hf:") else check_saved_dataset(spec)  # every file it opens, checked first
    # The cache only: reuse_cache_if_exists fetched a dataset the cache lacked (hub_offline: nothing asked of it).
    try:
        if folder is None:
            path, split = check_cached_hub_dataset(spec)  # (a name the cache lacks: the job's own words, first)
            with hub_offline():
                ds = datasets.load_dataset(path, split=split, download_mode="reuse_cache_if_exists")
        else:
            ds = datasets.load_from_disk(folder)
    except (FileNotFoundError, ValueError, ConnectionError, OSError, RuntimeError) as exc:
        raise ConfigError(f"{spec}: not a local dataset ({type(exc).__name__}: {exc}).") from exc
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    if text_field not in ds.column_names:
        raise ConfigError(f"{spec}: no column {text_field!r}; columns are {ds.column_names}.")
    ds = plain_columns(ds, [text_field], spec)
    return _corpus_from_texts((str(t) for t in ds[text_field]), tokenizer, seq_len, max_tokens, spec)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text.strip() else []


def check_vocab(table: BigramTable, model) -> None:
    """ConfigError unless the model's output vocabulary covers the table's (logits are truncated to
    the table's ``V``, as the paper does for Pythia's padded 50304 vs 50277)."""
    n_out = model.get_output_embeddings().weight.shape[0]
    if table.vocab_size > n_out:
        raise ConfigError(
            f"bigram table ({table.source or 'table'}) has a vocabulary of {table.vocab_size} tokens but the model "
            f"predicts {n_out}; build the table with this model's tokenizer."
        )
