"""The demo zoo's synthetic data: arithmetic problem sets and a first-order Markov-chain language.

- :class:`MarkovChain`: a fixed chain over a small alphabet, transition matrix drawn from a seeded
  Dirichlet with small concentration (so rows are peaked: structure a bigram subnetwork can find).
  Documents start from the stationary distribution and never end with ``<eos>``, so in the
  corpus every chain letter is followed by a chain letter drawn from ``transition[current]``: the
  token-level bigram target for the chain's tokens is exactly the saved matrix.
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
    """``letters``: K characters; ``transition``: (K, K) float64, rows sum to 1 (P[next | current]);
    ``stationary``: (K,) float64 with ``stationary @ transition == stationary``."""

    letters: tuple[str, ...]
    transition: np.ndarray
    stationary: np.ndarray
    concentration: float
    seed: int

    @property
    def entropy_rate(self) -> float:
        """H(next | current) under the stationary distribution, in nats."""
        p = self.transition
        logp = np.log(np.where(p > 0, p, 1.0))
        return float(-(self.stationary[:, None] * p * logp).sum())


def make_chain(letters: tuple[str, ...], *, concentration: float, seed: int) -> MarkovChain:
    """A chain whose rows are i.i.d. Dirichlet(``concentration``) draws (seeded)."""
    rng = np.random.default_rng(seed)
    k = len(letters)
    p = rng.dirichlet(np.full(k, float(concentration)), size=k)
    # A tiny floor keeps the chain irreducible and aperiodic (a unique stationary distribution)
    # even when a small concentration underflows entries to 0; the floored matrix is the truth.
    p = np.maximum(p, 1e-6)
    p /= p.sum(axis=1, keepdims=True)
    return MarkovChain(tuple(letters), p, stationary_distribution(p), float(concentration), int(seed))


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
    """(n_docs, length) int64 state indices: first state from the stationary law, then the chain."""
    cum_pi = np.cumsum(chain.stationary)
    cum_p = np.cumsum(chain.transition, axis=1)
    k = len(chain.letters)
    out = np.empty((n_docs, length), dtype=np.int64)
    out[:, 0] = np.minimum(np.searchsorted(cum_pi, rng.random(n_docs), side="right"), k - 1)
    for t in range(1, length):
        u = rng.random(n_docs)
        # Inverse-CDF per row: the number of cumulative entries <= u is the sampled index.
        out[:, t] = np.minimum((cum_p[out[:, t - 1]] <= u[:, None]).sum(axis=1), k - 1)
    return out


def chain_text(chain: MarkovChain, states: np.ndarray) -> list[str]:
    """Documents as strings (one character per state)."""
    letters = np.array(chain.letters)
    return ["".join(row) for row in letters[states]]


def save_bigram(
    path: str | os.PathLike, chain: MarkovChain, token_ids: list[int], *, doc_length: int, vocab_size: int
) -> Path:
    """``bigram.npz``: the chain's exact bigram law in token space (written atomically).

    Keys: ``token_ids`` (K,) the tokenizer ids of the letters, ``letters`` (K,) str,
    ``transition`` (K, K) P[next | current] with rows/cols in ``token_ids`` order,
    ``stationary`` (K,), ``concentration``, ``seed``, ``doc_length``, ``entropy_rate`` (nats),
    ``vocab_size`` (the tokenizer's, so a full-vocabulary table can be laid out).
    """
    buf = io.BytesIO()
    np.savez(
        buf,
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
