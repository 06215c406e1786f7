"""The demo zoo's figures, measured with the same analysis users run, into a :class:`ZooManifest`.

Sparsity, changed counts and update masks come from :func:`subnetviz.analysis.updates.analyze_updates`
(exact: bitwise on the stored bf16, every tensor, parameter-weighted), the seed overlaps from its
:func:`~subnetviz.analysis.overlap.mask_overlap` report, accuracies from
:func:`subnetviz.training.evaluate.evaluate_accuracy`. Nothing here compares tensors itself.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

from subnetviz.cache import read_json
from subnetviz.demo import MASK_FILE, MEMBERS, ZOO_FORMAT, ZooSettings
from subnetviz.demo.manifest import (
    BaseInfo,
    BigramInfo,
    OverlapPair,
    ProblemSet,
    SeriesPoint,
    ZooManifest,
    ZooMask,
    ZooMember,
)

# Pairs of members whose update masks' overlap the manifest records (seeds, data, algorithms, sub vs full).
OVERLAP_PAIRS = (
    ("grpo-s0", "grpo-s1"),
    ("grpo-s0", "grpo-s2"),
    ("grpo-s1", "grpo-s2"),
    ("grpo-s0", "grpo-B"),
    ("grpo-s0", "dpo"),
    ("grpo-s0", "sft"),
    ("grpo-s0", "grpo-sub"),
)


def compare(base: Path, models: dict[str, Path], *, keep_masks: bool = True):
    """The exact update analysis of ``models`` (label -> folder) against ``base``, in one streaming pass."""
    from subnetviz.analysis.sparsity import SparsityOptions
    from subnetviz.analysis.updates import analyze_updates

    options = SparsityOptions(tolerances=(), keep_masks=keep_masks, row_col=False)
    return analyze_updates(
        str(base), [str(p) for p in models.values()], labels=list(models), options=options, spectra=None, device="cpu"
    )


def update_mask(base: Path, other: Path) -> dict:
    """name -> bool tensor, True where ``other``'s stored bit patterns differ from ``base``'s."""
    return dict(compare(base, {"other": other}).reports[0].masks)


def overlap_pair(pairwise, a: str, b: str) -> OverlapPair:
    """One row of the analysis' pairwise overlap frame, oriented ``a`` then ``b`` (an empty mask overlaps 0)."""
    row = pairwise[(pairwise["a"] == a) & (pairwise["b"] == b)]
    flip = not len(row)
    if flip:
        row = pairwise[(pairwise["a"] == b) & (pairwise["b"] == a)]
    r = row.iloc[0]
    o1, o2, c1, c2, n1, n2 = (r[k] for k in ("o1", "o2", "o1_chance", "o2_chance", "count_a", "count_b"))
    if flip:
        o1, o2, c1, c2, n1, n2 = o2, o1, c2, c1, n2, n1
    return OverlapPair(
        a, b, float(o1) if n1 else 0.0, float(o2) if n2 else 0.0, float(c1), float(c2), int(r["intersection"])
    )


def measure_zoo(root: Path, preset: str, s: ZooSettings, state: dict) -> ZooManifest:
    """Evaluate every member and measure its update against the base; the zoo's manifest."""
    import numpy as np

    from subnetviz.demo.tokenizer import vocabulary
    from subnetviz.training.evaluate import evaluate_accuracy

    def acc(folder: Path) -> dict[str, float]:
        return {k: evaluate_accuracy(folder, root / "data" / f"{k}_eval.jsonl") for k in ("A", "B")}

    base = root / "base"
    pre = read_json(base / "pretrain.json") or {}
    base_acc = acc(base)
    members = [
        ZooMember(
            id="base",
            path=Path("base"),
            algorithm="pretrain",
            seed=s.pretrain_seed,
            data="mix",
            steps=pre.get("steps", s.pretrain_steps),
            learning_rate=s.pretrain_lr,
            accuracy=base_acc["A"],
            accuracy_A=base_acc["A"],
            accuracy_B=base_acc["B"],
            sparsity=1.0,
            changed=0,
            numel=pre.get("params"),
        )
    ]
    updates = compare(base, {m.id: root / m.id for m in MEMBERS})
    sub_vs_full = compare(root / "grpo-s0", {"grpo-sub": root / "grpo-sub"}, keep_masks=False).reports[0]
    for m, rep in zip(MEMBERS, updates.reports, strict=True):
        a = acc(root / m.id)
        summary = read_json(root / m.id / "train_summary.json") or {}
        members.append(
            ZooMember(
                id=m.id,
                path=Path(m.id),
                algorithm=m.algorithm,
                seed=m.seed,
                data=m.data,
                steps=s.ft_steps,
                learning_rate=s.ft_lr,
                batch_size=s.batch_size,
                accuracy=a[m.data],
                accuracy_A=a["A"],
                accuracy_B=a["B"],
                sparsity=rep.sparsity,
                changed=rep.changed,
                numel=rep.numel,
                description=m.label,
                train_seconds=summary.get("seconds"),
                data_notes=state.get(m.id, {}).get("data"),
            )
        )
        if m.masked:
            # The paper's parameter-level closeness of theta_sub and theta_full (bitwise here).
            members[-1] = replace(
                members[-1],
                mask=MASK_FILE,
                mask_check=summary.get("mask_check"),
                identical_to_grpo_s0=sub_vs_full.sparsity,
            )
    steps = s.series_steps()
    rels = {f"step-{k}": f"grpo-s0/checkpoints/step-{k}" for k in steps}
    points = compare(base, {k: root / rel for k, rel in rels.items()}, keep_masks=False).reports if steps else []
    series = [
        SeriesPoint(k, Path(rels[f"step-{k}"]), rep.sparsity, acc(root / rels[f"step-{k}"])["A"])
        for k, rep in zip(steps, points, strict=True)
    ]
    final = next(e for e in members if e.id == "grpo-s0")
    series.append(SeriesPoint(s.ft_steps, Path("grpo-s0"), final.sparsity, final.accuracy))
    overlap = [overlap_pair(updates.overlap.pairwise, a, b) for a, b in OVERLAP_PAIRS]
    with np.load(root / "bigram.npz") as z:
        bigram = BigramInfo(
            "bigram.npz",
            tuple(str(c) for c in z["letters"]),
            tuple(int(i) for i in z["token_ids"]),
            float(z["entropy_rate"]),
            int(z["order"]) if "order" in z.files else 1,
            float(z["bigram_entropy_rate"]) if "bigram_entropy_rate" in z.files else None,
        )
    counts = {
        k: sum(1 for _ in open(root / "data" / f"{k}.jsonl"))
        for k in ("pretrain", "A_train", "A_eval", "B_train", "B_eval")
    }
    mask_info = state.get("mask", {})
    return ZooManifest(
        format=ZOO_FORMAT,
        preset=preset,
        fingerprint=s.fingerprint(),
        settings=asdict(s),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        base=BaseInfo(
            Path("base"),
            pre.get("params"),
            pre.get("steps"),
            pre.get("seconds"),
            base_acc["A"],
            base_acc["A"],
            base_acc["B"],
            "LlamaForCausalLM",
            s.shape,
            pre.get("stop_reason"),
        ),
        tokenizer={"path": "tokenizer", "kind": "character-level WordLevel", "vocab": vocabulary(s.n_letters)},
        corpus={
            "arithmetic": f"'a+b=' -> 'a+b' + <eos>, operands in {s.pool[0]}..{s.pool[1]}, held-out eval and dev problems "
            f"excluded ({counts['pretrain']} problems)",
            "markov_chain": _chain_text(s),
            "mix_per_step": {"arithmetic_docs": s.batch_arith, "chain_docs": s.batch_chain},
        },
        bigram=bigram,
        problem_sets={
            k: ProblemSet(
                f"a+b with a, b in {lo}..{hi}",
                f"data/{k}_train.jsonl",
                f"data/{k}_eval.jsonl",
                counts[f"{k}_train"],
                counts[f"{k}_eval"],
            )
            for k, (lo, hi) in (("A", s.range_a), ("B", s.range_b))
        },
        members=tuple(members),
        series=tuple(series),
        masks={"grpo-s0": ZooMask(MASK_FILE, *(mask_info.get(k) for k in ("density", "count", "numel")))},
        overlap=tuple(overlap),
        stage_seconds={k: v.get("seconds") for k, v in state.items()},
    )


def _chain_text(s: ZooSettings) -> str:
    if s.chain_order == 2:
        law = (
            f"second order, P[c | a, b] ∝ P1[b, c]·Q[a, b, c] with Dirichlet({s.concentration}) rows P1 and "
            f"Dirichlet({s.concentration2}) factors Q"
        )
    else:
        law = f"Dirichlet({s.concentration}) rows"
    return (
        f"{s.n_letters} letters, {law} (seed {s.chain_seed}); documents of {s.chain_len} letters "
        "from the stationary law, no <eos>"
    )
