"""The demo zoo build's stages, in order: data, base, each finetune (and grpo-s0's update mask).

Each stage is idempotent: it is skipped when its outputs exist, and it writes them under a
temporary name renamed when complete (:func:`subnetviz.cache.atomic_folder` /
:func:`~subnetviz.cache.atomic_write`, or ``train()``'s own rename), so a crashed build resumes
at the first missing stage. A stage rerun makes the stages that depend on it stale (grpo-sub is
trained inside grpo-s0's mask, so a new grpo-s0 means a new mask and a new grpo-sub).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from subnetviz import cache
from subnetviz.cache import atomic_folder, atomic_write, read_json
from subnetviz.demo import MASK_FILE, MEMBERS, MemberRecipe, ZooSettings
from subnetviz.errors import JobError

STATE = ".state"  # per-stage timings and notes of the build in progress
Progress = Callable[[int, int, str], None]


def write_json(path: Path, obj) -> None:
    cache.write_json(path, obj, indent=2)


def fresh(path: Path) -> Path:
    """``path`` removed (file or folder), so a stage can write it anew."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    return path


def corpus_parts(s: ZooSettings):
    """(tokenizer, chain, problem sets): cheap and deterministic, so recomputed rather than read."""
    from subnetviz.demo import corpus
    from subnetviz.demo.tokenizer import build_tokenizer, chain_letters

    tok = build_tokenizer(s.n_letters, model_max_length=s.shape.max_position_embeddings)
    chain = corpus.make_chain(
        chain_letters(s.n_letters),
        concentration=s.concentration,
        seed=s.chain_seed,
        order=s.chain_order,
        concentration2=s.concentration2,
    )
    sets = corpus.make_problem_sets(
        pool=s.pool, range_a=s.range_a, range_b=s.range_b, n_eval=s.n_eval, seed=s.data_seed
    )
    return tok, chain, sets


def stage_data(root: Path, s: ZooSettings) -> None:
    from subnetviz.demo.corpus import write_corpus

    tok, chain, sets = corpus_parts(s)
    write_corpus(root, tok, chain, sets, chain_len=s.chain_len)


def stage_base(root: Path, s: ZooSettings, report: Callable[[str], None]) -> dict:
    from subnetviz.demo.pretrain import pretrain

    tok, chain, sets = corpus_parts(s)
    with atomic_folder(root / "base") as tmp:
        res = pretrain(
            tmp,
            tok,
            s.shape,
            sets.pretrain,
            chain,
            steps=s.pretrain_steps,
            batch_arith=s.batch_arith,
            batch_chain=s.batch_chain,
            chain_len=s.chain_len,
            max_lr=s.pretrain_lr,
            seed=s.pretrain_seed,
            dev=sets.dev,
            target_accuracy=s.pretrain_target,
            check_every=s.pretrain_check_every,
            progress=lambda k, n, acc: report(f"step {k}/{n}" + ("" if acc is None else f", dev accuracy {acc:.1%}")),
        )
        info = {
            "params": res.params,
            "steps": res.steps,
            "seconds": res.seconds,
            "final_loss_arith": res.final_loss_arith,
            "final_loss_chain": res.final_loss_chain,
            "dev_accuracy": res.dev_accuracy,
            "stop_reason": res.stop_reason,
            "chain_entropy_rate": chain.entropy_rate,
            "chain_bigram_entropy_rate": chain.bigram_entropy_rate,
        }
        write_json(tmp / "pretrain.json", info)
    return info


def member_data(root: Path, s: ZooSettings, m: MemberRecipe) -> tuple[Path, dict]:
    """The training JSONL of ``m`` (DPO and SFT data are made from the base here) and notes on it."""
    from subnetviz.demo import pretrain

    data = root / "data"
    rows = [json.loads(line) for line in open(data / f"{m.data}_train.jsonl")]
    if m.algorithm == "grpo":
        return data / f"{m.data}_train.jsonl", {"rows": len(rows)}
    if m.algorithm == "dpo":
        out, notes = pretrain.preference_pairs(
            root / "base",
            rows,
            n_prompts=s.dpo_prompts,
            n_samples=s.dpo_samples,
            max_new_tokens=s.max_completion_length,
            seed=s.data_seed,
        )
        if not out:
            raise JobError(
                f"DPO data: none of {notes['sampled_prompts']} prompts had both a correct and a wrong base "
                "sample; the base is too weak or too strong for this preset."
            )
    else:
        out, notes = pretrain.offpolicy_sft_rows(
            root / "base", rows, max_new_tokens=s.max_completion_length, min_rows=s.batch_size
        )
    path = data / f"{m.algorithm}_{m.data}.jsonl"
    atomic_write(path, "".join(json.dumps(row) + "\n" for row in out))  # the layout of corpus.write_jsonl
    return path, notes


def stage_member(root: Path, s: ZooSettings, m: MemberRecipe) -> dict:
    from subnetviz.training.config import TrainConfig
    from subnetviz.training.run import train

    data, notes = member_data(root, s, m)
    cfg = TrainConfig(
        algorithm=m.algorithm,
        base=str(root / "base"),
        data=str(data),
        output_dir=str(root / m.id),
        mask=str(root / MASK_FILE) if m.masked else None,
        steps=s.ft_steps,
        learning_rate=s.ft_lr,
        seed=m.seed,
        batch_size=s.batch_size,
        num_generations=s.num_generations,
        max_completion_length=s.max_completion_length,
        save_steps=s.series_steps() if m.series else [],
        name=f"demo-zoo {m.id}",
    )
    from subnetviz.demo.extras import clear_logs
    from subnetviz.jobs.context import JobContext

    # The member's per-step metrics (loss, reward, ...) go to logs/<id>/metrics.jsonl, as a job's would:
    # the build registers them as the member's run in the job registry (subnetviz.demo.extras).
    ctx = JobContext.for_dir(clear_logs(root, m.id))
    res = train(cfg, ctx)
    shutil.rmtree(ctx.out_dir, ignore_errors=True)  # a job's output folder: unused here
    return {
        "data": notes,
        "train_seconds": res.seconds,
        "steps_done": res.steps_done,
        "metrics": res.metrics,
        "mask_check": res.mask_check,
    }


def stage_mask(root: Path) -> dict:
    """grpo-s0's exact update mask (bf16 bit patterns that differ from the base's), by the analysis."""
    from subnetviz.demo.measure import update_mask
    from subnetviz.masks import MaskSet, save_mask_set
    from subnetviz.version import version_info

    meta = {  # (the keys an update mask of `analyze` records, README: base_path, model_path, the code that wrote it)
        "method": "exact update mask: bf16 bit patterns differ",
        "tolerance": 0.0,
        "dtype": "bfloat16",
        "base": "base",
        "model": "grpo-s0",
        "base_path": str(root / "base"),
        "model_path": str(root / "grpo-s0"),
        "created_by": "subnetviz demo build",
        **version_info(),
    }
    ms = MaskSet(update_mask(root / "base", root / "grpo-s0"), meta)
    save_mask_set(root / MASK_FILE, ms)
    return {"density": ms.density, "count": ms.count, "numel": ms.numel}


@dataclass(frozen=True)
class Stage:
    key: str
    label: str
    outputs: tuple[str, ...]  # paths under the root; the stage is done when they all exist
    deps: tuple[str, ...]  # stages whose rerun makes this one stale
    run: Callable[[Callable[[str], None]], dict | None]  # run(say) -> notes for the manifest


def stages(root: Path, s: ZooSettings) -> list[Stage]:
    """The build's stages in order (the manifest is the last step, outside this list)."""
    out = [
        Stage(
            "data",
            "corpus, tokenizer, bigram law, problem sets",
            ("data", "tokenizer", "bigram.npz"),
            (),
            lambda say: stage_data(root, s),
        ),
        Stage(
            "base",
            f"pretraining the base (up to {s.pretrain_steps} steps)",
            ("base/model.safetensors",),
            ("data",),
            lambda say: stage_base(root, s, say),
        ),
    ]
    for m in MEMBERS:
        deps = ("base", "mask") if m.masked else ("base",)
        out.append(
            Stage(m.id, m.label, (f"{m.id}/model.safetensors",), deps, lambda say, m=m: stage_member(root, s, m))
        )
        if m.id == "grpo-s0":
            out.append(
                Stage("mask", "grpo-s0 exact update mask", (MASK_FILE,), ("grpo-s0",), lambda say: stage_mask(root))
            )
    return out


def run_stages(root: Path, s: ZooSettings, report: Progress, total: int) -> dict:
    """Run every stage that is missing or stale; returns the per-stage record (seconds and notes)."""
    state_file = root / STATE / "stages.json"
    state_file.parent.mkdir(exist_ok=True)
    state = read_json(state_file) or {}
    rerun: set[str] = set()
    for i, st in enumerate(stages(root, s), start=1):
        stale = any(d in rerun for d in st.deps)
        if not stale and all((root / p).exists() for p in st.outputs):
            report(i, total, f"{st.label} (cached)")
            state.setdefault(st.key, {"seconds": None})  # finished, but its record was lost in a crash
            continue
        rerun.add(st.key)
        for p in st.outputs:  # a stale or partial output: train() and the renames need a clean slot
            fresh(root / p.split("/")[0] if p.endswith("model.safetensors") else root / p)
        report(i, total, f"{st.label} ...")
        t0 = time.perf_counter()
        info = st.run(lambda msg, i=i, st=st: report(i, total, f"{st.label}: {msg}")) or {}
        state[st.key] = {"seconds": round(time.perf_counter() - t0, 3), **info}
        write_json(state_file, state)
    return state


def stage_count(s: ZooSettings) -> int:
    return len(stages(Path("."), s))
