"""The demo zoo's synthetic data: arithmetic problem sets and a Markov-chain language.

- :class:`MarkovChain`: a fixed chain over a small alphabet. First order: the transition matrix's
  rows are seeded Dirichlet draws with small concentration (peaked rows: structure a bigram
  subnetwork can find). Second order (the zoo's default, ``order=2``): the next letter depends on
  the previous two, ``P[c | a, b] ∝ P1[b, c] · Q[a, b, c]`` with ``P1`` such a peaked bigram
  matrix and one Dirichlet(``concentration2``) factor ``Q[a, b]`` per previous pair, so a model
  that looks one letter back is measurably worse than one that looks two back (the full model is
  no longer almost a bigram model) while the bigram law stays peaked. ``transition`` is then the
  exact *marginal* bigram law ``P[c | b]`` of the stationary source, and ``stationary`` its letter law.
  Documents start from the stationary law (of letters, or of letter pairs) and never end with
  ``<eos>``, so in the corpus every chain letter is followed by a chain letter and the token-level
  bigram statistics of the chain's tokens are exactly ``transition``.
- :class:`ProblemSets`: two-digit addition ``"a+b="`` -> ``"a+b"``. The pretraining pool covers
  operands in ``lo..hi``; set A and set B are sub-ranges (different answer distributions), each
  with a training split and a held-out evaluation split that pretraining never sees.

Everything is deterministic given the seeds.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from subnetviz.cache import atomic_folder, atomic_write


@dataclass(frozen=True)
class MarkovChain:
    """``letters``: K characters; ``transition``: (K, K) float64, rows sum to 1 (P[next | current],
    for a second-order chain the stationary marginal); ``stationary``: (K,) float64 with
    ``stationary @ transition == stationary``. Second order: ``transition2`` (K, K, K)
    P[next | previous two] and ``pair_stationary`` (K, K), the stationary law of letter pairs."""

    letters: tuple[str, ...]
    transition: np.ndarray
    stationary: np.ndarray
    concentration: float
    seed: int
    transition2: np.ndarray | None = None
    pair_stationary: np.ndarray | None = None
    concentration2: float | None = None

    @property
    def order(self) -> int:
        return 1 if self.transition2 is None else 2

    @property
    def bigram_entropy_rate(self) -> float:
        """H(next | current) under the stationary distribution, in nats (the best a bigram model does)."""
        return _conditional_entropy(self.stationary, self.transition)

    @property
    def entropy_rate(self) -> float:
        """The source's entropy rate in nats: H(next | current), or H(next | previous two) for order 2."""
        if self.transition2 is None:
            return self.bigram_entropy_rate
        k = len(self.letters)
        return _conditional_entropy(self.pair_stationary.reshape(-1), self.transition2.reshape(k * k, k))


def _conditional_entropy(weights: np.ndarray, rows: np.ndarray) -> float:
    logp = np.log(np.where(rows > 0, rows, 1.0))
    return float(-(weights[:, None] * rows * logp).sum())


def _peaked_rows(rng: np.random.Generator, concentration: float, shape: tuple[int, ...]) -> np.ndarray:
    k = shape[-1]
    p = rng.dirichlet(np.full(k, float(concentration)), size=shape[:-1])
    # A tiny floor keeps the chain irreducible and aperiodic (a unique stationary distribution)
    # even when a small concentration underflows entries to 0; the floored matrix is the truth.
    p = np.maximum(p, 1e-6)
    return p / p.sum(axis=-1, keepdims=True)


def make_chain(
    letters: tuple[str, ...], *, concentration: float, seed: int, order: int = 1, concentration2: float = 0.5
) -> MarkovChain:
    """A seeded chain. ``order=1``: rows i.i.d. Dirichlet(``concentration``) draws. ``order=2``:
    ``P[c | a, b] ∝ P1[b, c] · Q[a, b, c]`` (``P1`` rows Dirichlet(``concentration``), each
    ``Q[a, b]`` Dirichlet(``concentration2``)); ``transition`` is its exact stationary bigram marginal."""
    if order not in (1, 2):
        raise ValueError(f"chain order {order}; 1 or 2.")
    rng = np.random.default_rng(seed)
    k = len(letters)
    p1 = _peaked_rows(rng, concentration, (k, k))
    if order == 1:
        return MarkovChain(tuple(letters), p1, stationary_distribution(p1), float(concentration), int(seed))
    t2 = p1[None, :, :] * _peaked_rows(rng, concentration2, (k, k, k))
    t2 = np.maximum(t2 / t2.sum(axis=-1, keepdims=True), 1e-6)
    t2 /= t2.sum(axis=-1, keepdims=True)
    pairs = pair_stationary(t2)
    letter = pairs.sum(axis=0)  # the law of the current letter b (pairs (a, b) summed over a)
    marginal = np.einsum("ab,abc->bc", pairs, t2) / letter[:, None]
    marginal /= marginal.sum(axis=1, keepdims=True)
    return MarkovChain(
        tuple(letters), marginal, letter, float(concentration), int(seed), t2, pairs, float(concentration2)
    )


def pair_stationary(t2: np.ndarray) -> np.ndarray:
    """(K, K) stationary law of letter pairs ``(a, b)`` of a second-order chain ``t2`` (K, K, K): the
    stationary distribution of the pair chain ``(a, b) -> (b, c)`` with probability ``t2[a, b, c]``."""
    k = t2.shape[0]
    pair = np.zeros((k * k, k * k))
    for a in range(k):
        for b in range(k):
            pair[a * k + b, b * k : (b + 1) * k] = t2[a, b]
    return stationary_distribution(pair).reshape(k, k)


def stationary_distribution(p: np.ndarray) -> np.ndarray:
    """The left eigenvector of ``p`` (K, K) for eigenvalue 1, normalised to sum 1 (float64)."""
    k = p.shape[0]
    # Solve pi (P - I) = 0 with sum(pi) = 1 as one least-squares system.
    a = np.vstack([(p - np.eye(k)).T, np.ones((1, k))])
    b = np.zeros(k + 1)
    b[-1] = 1.0
    pi, *_ = np.linalg.lstsq(a, b, rcond=None)
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def sample_chain(chain: MarkovChain, n_docs: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """(n_docs, length) int64 state indices: the first state (or first pair, for order 2) from the
    stationary law, then the chain."""
    k = len(chain.letters)
    out = np.empty((n_docs, length), dtype=np.int64)
    if chain.order == 2:
        first = _draw(np.cumsum(chain.pair_stationary.reshape(-1))[None, :], rng.random(n_docs), k * k)
        out[:, 0], start = first // k, 1
        if length > 1:
            out[:, 1] = first % k
            start = 2
        cum = np.cumsum(chain.transition2.reshape(k * k, k), axis=1)
        for t in range(start, length):
            out[:, t] = _draw(cum[out[:, t - 2] * k + out[:, t - 1]], rng.random(n_docs), k)
        return out
    out[:, 0] = _draw(np.cumsum(chain.stationary)[None, :], rng.random(n_docs), k)
    cum_p = np.cumsum(chain.transition, axis=1)
    for t in range(1, length):
        out[:, t] = _draw(cum_p[out[:, t - 1]], rng.random(n_docs), k)
    return out


def _draw(cum: np.ndarray, u: np.ndarray, k: int) -> np.ndarray:
    """Inverse-CDF per row: the number of cumulative entries <= u is the sampled index."""
    return np.minimum((cum <= u[:, None]).sum(axis=1), k - 1)


def chain_text(chain: MarkovChain, states: np.ndarray) -> list[str]:
    """Documents as strings (one character per state)."""
    letters = np.array(chain.letters)
    return ["".join(row) for row in letters[states]]


def save_bigram(
    path: str | os.PathLike, chain: MarkovChain, token_ids: list[int], *, doc_length: int, vocab_size: int
) -> Path:
    """``bigram.npz``: the chain's exact bigram law in token space (written atomically).

    Keys: ``token_ids`` (K,) the tokenizer ids of the letters, ``letters`` (K,) str,
    ``transition`` (K, K) P[next | current] with rows/cols in ``token_ids`` order (a second-order
    source's stationary marginal), ``stationary`` (K,), ``concentration``, ``seed``,
    ``doc_length``, ``entropy_rate`` (the source's, nats), ``bigram_entropy_rate`` (H(next | current),
    nats), ``order``, ``vocab_size`` (the tokenizer's, so a full-vocabulary table can be laid out);
    order 2 also ``transition2`` (K, K, K) P[next | previous two] and ``pair_stationary`` (K, K),
    so the source's own text can be sampled (:func:`subnetviz.bigram.job.sample_zoo_source`).
    """
    second = {}
    if chain.order == 2:
        second = {
            "transition2": chain.transition2,
            "pair_stationary": chain.pair_stationary,
            "concentration2": np.float64(chain.concentration2),
        }
    buf = io.BytesIO()
    np.savez(
        buf,
        **second,
        order=np.int64(chain.order),
        bigram_entropy_rate=np.float64(chain.bigram_entropy_rate),
        token_ids=np.asarray(token_ids, dtype=np.int64),
        letters=np.asarray(chain.letters),
        transition=chain.transition,
        stationary=chain.stationary,
        concentration=np.float64(chain.concentration),
        seed=np.int64(chain.seed),
        doc_length=np.int64(doc_length),
        entropy_rate=np.float64(chain.entropy_rate),
        vocab_size=np.int64(vocab_size),
    )
    return atomic_write(path, buf.getvalue())


@dataclass(frozen=True)
class Problem:
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}+{self.b}="

    @property
    def answer(self) -> str:
        return str(self.a + self.b)


@dataclass(frozen=True)
class ProblemSets:
    """Disjoint splits of the addition problems; ``pretrain`` never contains an eval problem."""

    pretrain: tuple[Problem, ...]
    dev: tuple[Problem, ...]
    a_train: tuple[Problem, ...]
    a_eval: tuple[Problem, ...]
    b_train: tuple[Problem, ...]
    b_eval: tuple[Problem, ...]
    ranges: dict


def make_problem_sets(
    *, pool: tuple[int, int], range_a: tuple[int, int], range_b: tuple[int, int], n_eval: int, seed: int
) -> ProblemSets:
    """Split every ``a+b`` with operands in the inclusive ranges.

    Set A: both operands in ``range_a``; set B: both in ``range_b``. ``n_eval`` problems of each are
    held out from everything else; the rest of A and B are their training splits. ``dev``: another
    ``n_eval`` pool problems (outside both eval splits) held out to decide when pretraining stops.
    Pretraining uses every other pool problem (it sees A's and B's training problems too, as a
    base model would have seen its RL prompts' kind of data).
    """
    rng = np.random.default_rng(seed)

    def grid(lo: int, hi: int) -> list[Problem]:
        return [Problem(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1)]

    def split(problems: list[Problem]) -> tuple[list[Problem], list[Problem]]:
        order = rng.permutation(len(problems))
        held = [problems[i] for i in order[:n_eval]]
        rest = [problems[i] for i in order[n_eval:]]
        return rest, held

    a_train, a_eval = split(grid(*range_a))
    b_train, b_eval = split(grid(*range_b))
    held = set(a_eval) | set(b_eval)
    rest, dev = split([p for p in grid(*pool) if p not in held])
    return ProblemSets(
        tuple(rest),
        tuple(dev),
        tuple(a_train),
        tuple(a_eval),
        tuple(b_train),
        tuple(b_eval),
        {"pool": list(pool), "A": list(range_a), "B": list(range_b)},
    )


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def grpo_rows(problems: tuple[Problem, ...]) -> list[dict]:
    """GRPO / eval rows ``{"prompt", "answer"}``."""
    return [{"prompt": p.prompt, "answer": p.answer} for p in problems]


def dpo_rows(prompts: list[str], answers: list[str], samples: list[list[str]], rng: np.random.Generator) -> list[dict]:
    """On-policy preference pairs: for each prompt with at least one correct and one incorrect
    sample, ``chosen`` = a correct sample, ``rejected`` = a random incorrect one.

    ``samples[i]`` are the base model's completions for ``prompts[i]`` (stripped strings).
    Prompts where every sample is right (or every one wrong) give no pair and are dropped.
    """
    rows = []
    for prompt, answer, outs in zip(prompts, answers, samples, strict=True):
        wrong = [s for s in outs if s != answer]
        if answer in outs and wrong:
            rows.append({"prompt": prompt, "chosen": answer, "rejected": wrong[int(rng.integers(len(wrong)))]})
    return rows


def write_corpus(root: str | os.PathLike, tokenizer, chain: MarkovChain, sets: ProblemSets, *, chain_len: int) -> None:
    """Write ``root/tokenizer/``, ``root/bigram.npz`` and ``root/data/*.jsonl`` (each published
    atomically: :func:`subnetviz.cache.atomic_folder`, :func:`~subnetviz.cache.atomic_write`)."""
    root = Path(root)
    with atomic_folder(root / "tokenizer") as tmp:
        tokenizer.save_pretrained(tmp)
    ids = tokenizer.convert_tokens_to_ids(list(chain.letters))
    save_bigram(root / "bigram.npz", chain, ids, doc_length=chain_len, vocab_size=len(tokenizer))
    splits = {
        "pretrain": sets.pretrain,
        "dev": sets.dev,
        "A_train": sets.a_train,
        "A_eval": sets.a_eval,
        "B_train": sets.b_train,
        "B_eval": sets.b_eval,
    }
    with atomic_folder(root / "data") as tmp:
        for name, problems in splits.items():
            write_jsonl(tmp / f"{name}.jsonl", grpo_rows(problems))
