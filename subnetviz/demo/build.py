"""Build, cache and load the demo model zoo: ``python -m subnetviz demo build [--preset micro] [--force]``.

The zoo lives under :func:`subnetviz.config.zoo_dir` (or a given root): a char-level tokenizer,
the synthetic corpus (problem sets A and B; the Markov chain's exact bigram law in
``bigram.npz``), a tiny pretrained Llama (``base``) and its finetunes, each trained through
:func:`subnetviz.training.run.train`, the same code users run:

``grpo-s0`` (with a checkpoint series), ``grpo-s1``, ``grpo-s2`` (seeds on set A), ``grpo-B``
(set B), ``dpo`` (on-policy pairs sampled from the base), ``sft`` (gold answers for the prompts
the base gets wrong: off-policy), ``grpo-sub`` (GRPO seed 0 again, trained only inside
grpo-s0's exact update mask, ``masks/grpo-seed0.safetensors``).

Build rules: each stage writes into a temporary folder that is renamed when complete, so a
crashed build resumes at the first missing stage; ``manifest.json`` is written last, atomically,
and a zoo whose manifest has the same settings is reused untouched. One build at a time per root:
a lock file holds the owner's pid, and a lock left by a dead process is taken over.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from subnetviz.demo import (
    MANIFEST,
    MASK_FILE,
    MEMBER_IDS,
    MEMBERS,
    PRESETS,
    ZOO_FORMAT,
    Member,
    Zoo,
    ZooMember,
    ZooSettings,
    _complete,
    _read_manifest,
    _root,
    load_zoo,
    zoo_is_built,
)
from subnetviz.errors import ConfigError, JobError, SubnetvizError, suggest

__all__ = ["PRESETS", "Zoo", "ZooMember", "ZooSettings", "build_zoo", "load_zoo", "main", "zoo_is_built"]
LOCK = ".build.lock"
STATE = ".state"  # per-stage timings and notes of the build in progress
Progress = Callable[[int, int, str], None]


# ---------------------------------------------------------------------------------------------
# Locking


class BuildLock:
    """``root/.build.lock`` holding the owner's pid; refuses while that pid is alive.

    Checking and taking the lock happen under an ``flock`` on ``root/.build.lock.guard`` (held for
    microseconds), so two builds that both find a stale lock cannot both take it over.
    """

    def __init__(self, root: Path):
        self.path = root / LOCK
        self.guard = root / (LOCK + ".guard")

    def _guarded(self):
        import fcntl

        fh = open(self.guard, "a")
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when fh is closed
        return fh

    def __enter__(self) -> BuildLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._guarded():
            owner = _lock_owner(self.path)
            if owner is not None and _alive(owner):
                raise JobError(
                    f"{self.path.parent}: a demo zoo build is already running (pid {owner}, lock {self.path}). "
                    "Wait for it to finish, or delete the lock file if that process is not a build."
                )
            # Free, or stale (its owner is dead): take it.
            tmp = self.path.with_name(f"{LOCK}.tmp-{os.getpid()}")
            tmp.write_text(str(os.getpid()))
            os.replace(tmp, self.path)
        return self

    def __exit__(self, *exc) -> None:
        with self._guarded():
            if _lock_owner(self.path) == os.getpid():
                self.path.unlink(missing_ok=True)


def _lock_owner(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# ---------------------------------------------------------------------------------------------
# Building


def _wipe(root: Path) -> None:
    """Remove what a build writes (and nothing else that may live in ``root``)."""
    names = [MANIFEST, STATE, "build.json", "tokenizer", "data", "bigram.npz", "base", "masks", *MEMBER_IDS]
    for name in names:
        p = root / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for p in root.glob(".*.partial"):
        shutil.rmtree(p, ignore_errors=True)


def _stderr_progress(step: int, total: int, message: str) -> None:
    print(f"[{step}/{total}] {message}", file=sys.stderr, flush=True)


def build_zoo(
    root: str | os.PathLike | None = None,
    *,
    preset: str = "demo",
    progress: Progress | None = None,
    force: bool = False,
) -> Zoo:
    """Build (or reuse, or resume) the demo zoo under ``root`` and return it.

    ``progress(step, total, message)`` is called at each stage (also printed to stderr).
    ``force`` rebuilds from scratch. Raises :class:`JobError` while another build holds the lock.
    """
    if preset not in PRESETS:
        raise ConfigError(
            f"unknown zoo preset {preset!r}; expected one of {sorted(PRESETS)}.{suggest(preset, PRESETS)}"
        )
    settings = PRESETS[preset]
    root = _root(root)

    def report(step: int, total: int, message: str) -> None:
        _stderr_progress(step, total, message)
        if progress is not None:
            progress(step, total, message)

    root.mkdir(parents=True, exist_ok=True)
    foreign = sorted(p.name for p in root.iterdir() if not p.name.startswith(LOCK))
    if foreign and not ((root / "build.json").exists() or (root / MANIFEST).exists()):
        # A rebuild deletes folders such as data/ and base/: never in a folder that is not a zoo.
        raise ConfigError(
            f"{root} is not empty and holds no demo zoo (found {foreign[:5]}); build the zoo in a new or empty folder."
        )
    with BuildLock(root):
        fp = settings.fingerprint()
        man = _read_manifest(root)
        if not force and man is not None and man.get("fingerprint") == fp and _complete(root, man):
            report(1, 1, f"demo zoo ({preset}) already built at {root}")
            return load_zoo(root)
        state = _read_json(root / "build.json")
        if force or (state or {}).get("fingerprint") != fp:
            _wipe(root)
        (root / MANIFEST).unlink(missing_ok=True)  # stale or other settings: written again at the end
        _write_json(root / "build.json", {"format": ZOO_FORMAT, "preset": preset, "fingerprint": fp})
        _run_stages(root, preset, settings, report)
    return load_zoo(root)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Stages (each one idempotent: skipped when its output exists, written to a temporary name first)


def _corpus(s: ZooSettings):
    """(tokenizer, chain, problem sets): cheap and deterministic, so recomputed rather than read."""
    from subnetviz.demo import corpus
    from subnetviz.demo.tokenizer import build_tokenizer, chain_letters

    tok = build_tokenizer(s.n_letters, model_max_length=s.shape.max_position_embeddings)
    chain = corpus.make_chain(chain_letters(s.n_letters), concentration=s.concentration, seed=s.chain_seed)
    sets = corpus.make_problem_sets(
        pool=s.pool, range_a=s.range_a, range_b=s.range_b, n_eval=s.n_eval, seed=s.data_seed
    )
    return tok, chain, sets


def _fresh(path: Path) -> Path:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    return path


def _stage_data(root: Path, s: ZooSettings) -> None:
    from subnetviz.demo.corpus import write_corpus

    tok, chain, sets = _corpus(s)
    write_corpus(root, tok, chain, sets, chain_len=s.chain_len)


def _stage_base(root: Path, s: ZooSettings, report: Callable[[str], None]) -> dict:
    from subnetviz.demo.pretrain import pretrain

    tok, chain, sets = _corpus(s)
    tmp = _fresh(root / ".base.partial")
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
    }
    _write_json(tmp / "pretrain.json", info)
    os.replace(tmp, _fresh(root / "base"))
    return info


def _member_data(root: Path, s: ZooSettings, m: Member) -> tuple[Path, dict]:
    """The training JSONL of ``m`` (DPO and SFT data are made from the base here) and notes on it."""
    from subnetviz.demo import corpus, pretrain

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
    tmp = path.with_name(f".{path.name}.tmp")
    corpus.write_jsonl(tmp, out)
    os.replace(tmp, path)
    return path, notes


def _stage_member(root: Path, s: ZooSettings, m: Member) -> dict:
    from subnetviz.training.config import TrainConfig
    from subnetviz.training.run import train

    data, notes = _member_data(root, s, m)
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
    res = train(cfg)
    return {
        "data": notes,
        "train_seconds": res.seconds,
        "steps_done": res.steps_done,
        "metrics": res.metrics,
        "mask_check": res.mask_check,
    }


def _stage_mask(root: Path) -> dict:
    from subnetviz.demo.pretrain import update_masks
    from subnetviz.masks import MaskSet, save_mask_set

    masks = update_masks(root / "base", root / "grpo-s0")
    meta = {
        "method": "exact update mask: bf16 bit patterns differ",
        "tolerance": 0.0,
        "dtype": "bfloat16",
        "base": "base",
        "finetuned": "grpo-s0",
        "base_path": str(root / "base"),
        "finetuned_path": str(root / "grpo-s0"),
        "created_by": "subnetviz demo build",
    }
    ms = MaskSet(masks, meta)
    save_mask_set(root / MASK_FILE, ms)
    return {"density": ms.density, "count": ms.count, "numel": ms.numel}


@dataclass(frozen=True)
class Stage:
    key: str
    label: str
    outputs: tuple[str, ...]  # paths under the root; the stage is done when they all exist
    deps: tuple[str, ...]  # stages whose rerun makes this one stale
    run: Callable[[Callable[[str], None]], dict | None]  # run(say) -> notes for the manifest


def _stages(root: Path, s: ZooSettings) -> list[Stage]:
    """The build's stages in order (the manifest is the last step, outside this list)."""
    out = [
        Stage(
            "data",
            "corpus, tokenizer, bigram law, problem sets",
            ("data", "tokenizer", "bigram.npz"),
            (),
            lambda say: _stage_data(root, s),
        ),
        Stage(
            "base",
            f"pretraining the base (up to {s.pretrain_steps} steps)",
            ("base/model.safetensors",),
            ("data",),
            lambda say: _stage_base(root, s, say),
        ),
    ]
    for m in MEMBERS:
        deps = ("base", "mask") if m.masked else ("base",)
        out.append(
            Stage(m.id, m.label, (f"{m.id}/model.safetensors",), deps, lambda say, m=m: _stage_member(root, s, m))
        )
        if m.id == "grpo-s0":
            out.append(
                Stage("mask", "grpo-s0 exact update mask", (MASK_FILE,), ("grpo-s0",), lambda say: _stage_mask(root))
            )
    return out


def _run_stages(root: Path, preset: str, s: ZooSettings, report: Progress) -> None:
    t_start = time.perf_counter()
    state_file = root / STATE / "stages.json"
    state_file.parent.mkdir(exist_ok=True)
    state = _read_json(state_file) or {}
    stages = _stages(root, s)
    total = len(stages) + 1
    rerun: set[str] = set()
    for i, st in enumerate(stages, start=1):
        stale = any(d in rerun for d in st.deps)
        if not stale and all((root / p).exists() for p in st.outputs):
            report(i, total, f"{st.label} (cached)")
            state.setdefault(st.key, {"seconds": None})  # finished, but its record was lost in a crash
            continue
        rerun.add(st.key)
        for p in st.outputs:  # a stale or partial output: train() and the renames need a clean slot
            _fresh(root / p.split("/")[0] if p.endswith("model.safetensors") else root / p)
        report(i, total, f"{st.label} ...")
        t0 = time.perf_counter()
        info = st.run(lambda msg, i=i, st=st: report(i, total, f"{st.label}: {msg}")) or {}
        state[st.key] = {"seconds": round(time.perf_counter() - t0, 3), **info}
        _write_json(state_file, state)
    report(total, total, "evaluating every member and measuring sparsity; writing the manifest ...")
    t0 = time.perf_counter()
    man = _manifest(root, preset, s, state)
    man["stage_seconds"]["manifest"] = round(time.perf_counter() - t0, 3)
    man["build_seconds"] = round(sum(v for v in man["stage_seconds"].values() if v), 3)
    man["this_run_seconds"] = round(time.perf_counter() - t_start, 3)
    _write_json(root / MANIFEST, man)  # last, atomically: from here on the zoo counts as built
    report(total, total, f"demo zoo written to {root} ({man['build_seconds']:.0f} s of building)")


def _manifest(root: Path, preset: str, s: ZooSettings, state: dict) -> dict:
    import numpy as np

    from subnetviz.demo.pretrain import mask_overlap, mask_sparsity, update_masks
    from subnetviz.demo.tokenizer import vocabulary
    from subnetviz.training.evaluate import evaluate_accuracy

    def acc(folder: Path) -> dict[str, float]:
        return {k: evaluate_accuracy(folder, root / "data" / f"{k}_eval.jsonl") for k in ("A", "B")}

    base = root / "base"
    pre = _read_json(base / "pretrain.json") or {}
    base_acc = acc(base)
    members = [
        {
            "id": "base",
            "path": "base",
            "algorithm": "pretrain",
            "seed": s.pretrain_seed,
            "data": "mix",
            "steps": pre.get("steps", s.pretrain_steps),
            "learning_rate": s.pretrain_lr,
            "accuracy": base_acc["A"],
            "accuracy_A": base_acc["A"],
            "accuracy_B": base_acc["B"],
            "sparsity": 1.0,
            "changed": 0,
            "numel": pre.get("params"),
        }
    ]
    masks = {}
    for m in MEMBERS:
        masks[m.id] = update_masks(base, root / m.id)
        sp, changed, numel = mask_sparsity(masks[m.id])
        a = acc(root / m.id)
        summary = _read_json(root / m.id / "train_summary.json") or {}
        entry = {
            "id": m.id,
            "path": m.id,
            "algorithm": m.algorithm,
            "seed": m.seed,
            "data": m.data,
            "steps": s.ft_steps,
            "learning_rate": s.ft_lr,
            "batch_size": s.batch_size,
            "accuracy": a[m.data],
            "accuracy_A": a["A"],
            "accuracy_B": a["B"],
            "sparsity": sp,
            "changed": changed,
            "numel": numel,
            "description": m.label,
            "train_seconds": summary.get("seconds"),
            "data_notes": state.get(m.id, {}).get("data"),
        }
        if m.masked:
            entry["mask"] = MASK_FILE
            entry["mask_check"] = summary.get("mask_check")
            # The paper's parameter-level closeness of theta_sub and theta_full (bitwise here).
            entry["identical_to_grpo_s0"] = mask_sparsity(update_masks(root / "grpo-s0", root / m.id))[0]
        members.append(entry)
    series = []
    for k in s.series_steps():
        rel = f"grpo-s0/checkpoints/step-{k}"
        sp, _, _ = mask_sparsity(update_masks(base, root / rel))
        series.append({"step": k, "path": rel, "sparsity": sp, "accuracy": acc(root / rel)["A"]})
    final = next(e for e in members if e["id"] == "grpo-s0")
    series.append({"step": s.ft_steps, "path": "grpo-s0", "sparsity": final["sparsity"], "accuracy": final["accuracy"]})
    pairs = [
        ("grpo-s0", "grpo-s1"),
        ("grpo-s0", "grpo-s2"),
        ("grpo-s1", "grpo-s2"),
        ("grpo-s0", "grpo-B"),
        ("grpo-s0", "dpo"),
        ("grpo-s0", "sft"),
        ("grpo-s0", "grpo-sub"),
    ]
    overlap = [{"a": x, "b": y, **mask_overlap(masks[x], masks[y])} for x, y in pairs]
    with np.load(root / "bigram.npz") as z:
        bigram = {
            "path": "bigram.npz",
            "letters": [str(c) for c in z["letters"]],
            "token_ids": [int(i) for i in z["token_ids"]],
            "entropy_rate_nats": float(z["entropy_rate"]),
        }
    counts = {
        k: sum(1 for _ in open(root / "data" / f"{k}.jsonl"))
        for k in ("pretrain", "A_train", "A_eval", "B_train", "B_eval")
    }
    mask_info = state.get("mask", {})
    return {
        "format": ZOO_FORMAT,
        "preset": preset,
        "fingerprint": s.fingerprint(),
        "settings": asdict(s),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base": {
            "path": "base",
            "params": pre.get("params"),
            "pretraining_steps": pre.get("steps"),
            "pretraining_seconds": pre.get("seconds"),
            "accuracy": base_acc["A"],
            "accuracy_A": base_acc["A"],
            "accuracy_B": base_acc["B"],
            "architecture": "LlamaForCausalLM",
            **asdict(s.shape),
            "stop_reason": pre.get("stop_reason"),
        },
        "tokenizer": {"path": "tokenizer", "kind": "character-level WordLevel", "vocab": vocabulary(s.n_letters)},
        "corpus": {
            "arithmetic": f"'a+b=' -> 'a+b' + <eos>, operands in {s.pool[0]}..{s.pool[1]}, held-out eval and dev problems "
            f"excluded ({counts['pretrain']} problems)",
            "markov_chain": f"{s.n_letters} letters, Dirichlet({s.concentration}) rows (seed {s.chain_seed}); "
            f"documents of {s.chain_len} letters from the stationary law, no <eos>",
            "mix_per_step": {"arithmetic_docs": s.batch_arith, "chain_docs": s.batch_chain},
        },
        "bigram": bigram,
        "problem_sets": {
            "A": {
                "description": f"a+b with a, b in {s.range_a[0]}..{s.range_a[1]}",
                "train": "data/A_train.jsonl",
                "eval": "data/A_eval.jsonl",
                "n_train": counts["A_train"],
                "n_eval": counts["A_eval"],
            },
            "B": {
                "description": f"a+b with a, b in {s.range_b[0]}..{s.range_b[1]}",
                "train": "data/B_train.jsonl",
                "eval": "data/B_eval.jsonl",
                "n_train": counts["B_train"],
                "n_eval": counts["B_eval"],
            },
        },
        "members": members,
        "series": series,
        "masks": {"grpo-s0": {"path": MASK_FILE, **{k: mask_info.get(k) for k in ("density", "count", "numel")}}},
        "overlap": overlap,
        "stage_seconds": {k: v.get("seconds") for k, v in state.items()},
    }


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m subnetviz demo build [--preset demo|micro] [--force] [--root DIR] [--threads N]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="python -m subnetviz demo", description="The demo model zoo.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the demo zoo (reused when already built)")
    b.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    b.add_argument("--force", action="store_true", help="rebuild from scratch")
    b.add_argument("--root", default=None, help="zoo folder (default: $SUBNETVIZ_HOME/zoo)")
    b.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    sub.add_parser("path", help="print the zoo folder").add_argument("--root", default=None)
    args = parser.parse_args(argv)
    if args.command == "path":
        print(_root(args.root))
        return 0
    # The stage lines are the progress display; library progress bars would drown them.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(max(1, args.threads))
    try:
        t0 = time.perf_counter()
        zoo = build_zoo(args.root, preset=args.preset, force=args.force)
    except SubnetvizError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = [f"{m.id:10s} {m.algorithm:8s} acc {m.accuracy:6.1%}  sparsity {m.sparsity:6.1%}" for m in zoo.members]
    print("\n".join([f"demo zoo at {zoo.root} ({time.perf_counter() - t0:.1f} s)", *rows]))
    return 0
