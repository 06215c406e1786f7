"""Build, cache and load the demo model zoo: ``python -m subnetviz demo build [--preset micro] [--force]``.

The zoo lives under :func:`subnetviz.config.zoo_dir` (or a given root): a char-level tokenizer,
the synthetic corpus (problem sets A and B; the Markov chain's exact bigram law in
``bigram.npz``), a tiny pretrained Llama (``base``) and its finetunes, each trained through
:func:`subnetviz.training.run.train`, the same code users run:

``grpo-s0`` (with a checkpoint series), ``grpo-s1``, ``grpo-s2`` (seeds on set A), ``grpo-B``
(set B), ``dpo`` (on-policy pairs sampled from the base), ``sft`` (gold answers for the prompts
the base gets wrong: off-policy), ``grpo-sub`` (GRPO seed 0 again, trained only inside
grpo-s0's exact update mask, ``masks/grpo-seed0.safetensors``).

Build rules: each stage (:mod:`subnetviz.demo.stages`) writes into a temporary folder that is
renamed when complete, so a crashed build resumes at the first missing stage; ``manifest.json``
(:mod:`subnetviz.demo.measure`) is written last, atomically, and a zoo whose manifest has the same
settings is reused untouched. One build at a time per root (:mod:`subnetviz.demo.lock`).

The CLI (what ``make app`` runs) then finishes the zoo for the pages (:mod:`subnetviz.demo.extras`,
recorded in the manifest's ``extras``): each member's training log becomes a succeeded ``train``
run of the job registry, the Training page's grpo-s0 vs grpo-sub comparison is computed into the
analysis cache, and what takes minutes (the base's bigram and optimal subnetwork masks, the
continual-learning demo) is queued as background jobs that the pages pick up when done.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from subnetviz.cache import read_json
from subnetviz.demo import (
    MANIFEST,
    MEMBER_IDS,
    PRESETS,
    ZOO_FORMAT,
    Zoo,
    ZooMember,
    ZooSettings,
    load_zoo,
    zoo_is_built,
)
from subnetviz.demo.extras import LOGS
from subnetviz.demo.lock import LOCK, build_lock
from subnetviz.demo.stages import STATE, run_stages, stage_count, write_json
from subnetviz.demo.zoo import is_complete, read_manifest, zoo_root
from subnetviz.errors import ConfigError, SubnetvizError, suggest
from subnetviz.text import terminal_text

__all__ = ["PRESETS", "Zoo", "ZooMember", "ZooSettings", "build_zoo", "load_zoo", "main", "zoo_is_built"]
Progress = Callable[[int, int, str], None]
BUILD_STATE = "build.json"  # the preset and settings fingerprint of the build in progress


def _wipe(root: Path) -> None:
    """Remove what a build writes (and nothing else that may live in ``root``)."""
    names = [
        MANIFEST,
        STATE,
        BUILD_STATE,
        "tokenizer",
        "data",
        "bigram.npz",
        "base",
        "masks",
        LOGS,
        *MEMBER_IDS,
        *(f"{m}.tensorboard" for m in MEMBER_IDS),
    ]
    for name in names:
        p = root / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _clear_leftovers(root: Path) -> None:
    """Temporary folders and files of a build that crashed (the lock is held: nothing else writes them)."""
    for p in [*root.glob(".*.partial"), *root.glob(".*.tmp-*"), *root.glob("data/.*.tmp-*")]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _remove_manifest(root: Path) -> None:
    """The manifest removed before it is written again. A folder in its place (a broken disk, a copy gone wrong;
    the pages read it as a zoo not built) is removed when empty; one holding files is not the build's to delete:
    ConfigError saying what to remove (unlink raised IsADirectoryError, a traceback, and the zoo was never rebuilt)."""
    path = root / MANIFEST
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    try:
        path.rmdir()
    except OSError:
        raise ConfigError(
            f"{path}: a folder holding files where the zoo's manifest file belongs; remove it, then run "
            "`python -m subnetviz demo build` again."
        ) from None


def _stderr_progress(step: int, total: int, message: str) -> None:
    print(f"[{step}/{total}] {message}", file=sys.stderr, flush=True)


def build_zoo(
    root: str | os.PathLike | None = None,
    *,
    preset: str | None = "demo",
    progress: Progress | None = None,
    force: bool = False,
    extras: bool = False,
    runs_root: str | os.PathLike | None = None,
    background: bool = True,
) -> Zoo:
    """Build (or reuse, or resume) the demo zoo under ``root`` and return it.

    ``progress(step, total, message)`` is called at each stage (also printed to stderr).
    ``force`` rebuilds from scratch. Raises :class:`JobError` while another build holds the lock.
    ``preset=None`` (``demo build`` without ``--preset``, what ``make app`` runs): the preset of the zoo already
    in ``root`` (a complete one reused, an unfinished build resumed), ``"demo"`` where there is none. A complete zoo
    of another preset is never replaced without ``force``: ConfigError naming its preset (a plain ``demo build``
    deleted a finished micro zoo and started the demo preset's build of minutes in its place); a stale zoo of the
    same preset (older code) or an unfinished build is built again.
    ``extras`` (the CLI's default): also register the members' training logs as runs in the job
    registry under ``runs_root`` (default :func:`~subnetviz.config.runs_dir`), precompute the
    Training page's comparison and, with ``background``, queue the bigram masks and the continual
    demo as background jobs there (:mod:`subnetviz.demo.extras`); recorded in the manifest's ``extras``.
    """
    if preset is not None and preset not in PRESETS:
        raise ConfigError(
            f"unknown zoo preset {preset!r}; expected one of {sorted(PRESETS)}.{suggest(preset, PRESETS)}"
        )
    root = zoo_root(root)

    def report(step: int, total: int, message: str) -> None:
        if progress is not None:  # first: a Ctrl-C right after the line is printed finds the stage recorded
            progress(step, total, message)
        _stderr_progress(step, total, message)

    root.mkdir(parents=True, exist_ok=True)
    foreign = sorted(p.name for p in root.iterdir() if not p.name.startswith(LOCK))
    if foreign and not ((root / BUILD_STATE).exists() or (root / MANIFEST).exists()):
        # A rebuild deletes folders such as data/ and base/: never in a folder that is not a zoo.
        raise ConfigError(
            f"{root} is not empty and holds no demo zoo (found {foreign[:5]}); build the zoo in a new or empty folder."
        )
    with build_lock(root):
        man = read_manifest(root)
        complete = man is not None and is_complete(root, man)
        state = read_json(root / BUILD_STATE)
        state = state if isinstance(state, dict) else {}
        asked, preset = preset, preset or _preset_there(man if complete else None, state)
        settings = PRESETS[preset]
        fp = settings.fingerprint()
        if complete and not force and man.preset != preset:
            raise ConfigError(_other_preset(root, man, preset))
        if not force and complete and man.fingerprint == fp:
            kept = "; kept as it is (`--preset demo --force` replaces it)" if asked is None and preset != "demo" else ""
            report(1, 1, f"demo zoo ({preset}) already built at {root}{kept}")
        else:
            _clear_leftovers(root)
            if force or state.get("fingerprint") != fp:
                if state or man is not None:  # (said: a zoo or the stages of a build were there, now gone)
                    was = state.get("preset")
                    what = (
                        f"the zoo built with --preset {man.preset}"
                        if complete
                        else "the stages of an unfinished build"
                        + (f" (--preset {was})" if isinstance(was, str) else "")
                    )
                    why = "--force" if force else "other settings or an older version"
                    print(
                        terminal_text(f"note: {what} in {root} removed ({why}); building --preset {preset}"),
                        file=sys.stderr,
                    )
                _wipe(root)
            _remove_manifest(root)  # stale, other settings or damaged: written again at the end
            write_json(root / BUILD_STATE, {"format": ZOO_FORMAT, "preset": preset, "fingerprint": fp})
            _build(root, preset, settings, report)
        if extras:
            _finish(root, runs_root, background, report)
    return load_zoo(root)


def _preset_there(man, state: dict) -> str:
    """The preset of the zoo in a folder: its complete manifest's (``man``, None when there is none), else that of
    the build recorded in ``build.json`` (``state``: one interrupted), else ``"demo"`` (nothing there, or a preset
    this version does not have)."""
    for name in (man.preset if man is not None else None, state.get("preset")):
        if isinstance(name, str) and name in PRESETS:
            return name
    return "demo"


def _other_preset(root: Path, man, preset: str) -> str:
    """Why a complete zoo built with another preset than ``preset`` is not replaced, and the two ways on."""
    found = man.preset
    if not (isinstance(found, str) and found in PRESETS):
        return (
            f"the zoo in {root} was built with a preset this version does not have ({found!r}); pass --force to "
            f"replace it with the {preset} preset."
        )
    keep = "reuse it" if PRESETS[found].fingerprint() == man.fingerprint else "rebuild it with that preset"
    return (
        f"the zoo in {root} was built with --preset {found}; run `python -m subnetviz demo build --preset {found}` "
        f"to {keep}, or pass --force to replace it with the {preset} preset."
    )


def _finish(root: Path, runs_root, background: bool, report: Progress) -> None:
    """The registry runs, the cached comparison and the background jobs; the manifest records them."""
    from subnetviz.demo.extras import finish_zoo

    t0 = time.perf_counter()
    zoo = load_zoo(root)
    ext = finish_zoo(zoo, runs_root, background=background)
    if ext != zoo.manifest.extras:  # unchanged on a reuse: the manifest stays untouched
        man = zoo.manifest
        seconds = {**man.stage_seconds, "extras": round(time.perf_counter() - t0, 3)}
        write_json(root / MANIFEST, replace(man, extras=ext, stage_seconds=seconds).to_dict())
    queued = ", ".join(f"{k} ({i})" for k, i in ext.jobs.items()) or "none"
    report(1, 1, f"training logs registered as runs in {ext.runs_root}; background jobs: {queued}")


def _build(root: Path, preset: str, s: ZooSettings, report: Progress) -> None:
    from subnetviz.demo.measure import measure_zoo

    t_start = time.perf_counter()
    total = stage_count(s) + 1
    state = run_stages(root, s, report, total)
    report(total, total, "evaluating every member and measuring sparsity; writing the manifest ...")
    t0 = time.perf_counter()
    man = measure_zoo(root, preset, s, state)
    stage_seconds = {**man.stage_seconds, "manifest": round(time.perf_counter() - t0, 3)}
    man = replace(
        man,
        stage_seconds=stage_seconds,
        build_seconds=round(sum(v for v in stage_seconds.values() if v), 3),
        this_run_seconds=round(time.perf_counter() - t_start, 3),
    )
    write_json(root / MANIFEST, man.to_dict())  # last, atomically: from here on the zoo counts as built
    report(total, total, f"demo zoo written to {root} ({man.build_seconds:.0f} s of building)")


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
    b.add_argument(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help="the zoo's settings: demo (the default for a new zoo) or micro (seconds; for tests). Without it a zoo "
        "already there is reused, or its unfinished build resumed, with its own preset; a complete zoo of another "
        "preset is replaced only with --force",
    )
    b.add_argument("--force", action="store_true", help="rebuild from scratch (replacing a zoo of any preset)")
    b.add_argument("--root", default=None, help="zoo folder (default: $SUBNETVIZ_HOME/zoo)")
    b.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    b.add_argument(
        "--no-extras",
        action="store_true",
        help="only the models: no runs in the job registry, no cached comparison, no background jobs",
    )
    b.add_argument("--no-background", action="store_true", help="no background jobs (bigram masks, continual demo)")
    b.add_argument("--runs", default=None, help="job registry folder (default: $SUBNETVIZ_HOME/runs)")
    sub.add_parser("path", help="print the zoo folder").add_argument("--root", default=None)
    args = parser.parse_args(argv)
    from subnetviz.cli.common import refuse_blank  # (the command line's own check, as every verb makes it)

    try:  # ('--root "$ZOO"' with ZOO unset: the zoo was built into the working folder, and 'path' printed it)
        refuse_blank(f"demo {args.command}", [("--root", args.root), ("--runs", getattr(args, "runs", None))])
    except SubnetvizError as exc:
        print(f"error: {terminal_text(exc)}", file=sys.stderr)
        return 2
    if args.command == "path":  # only said: the folder is not created (a home that cannot be made failed here)
        from subnetviz.config import home_path

        print(Path(args.root).expanduser().resolve() if args.root is not None else home_path() / "zoo")
        return 0
    # The stage lines are the progress display; library progress bars would drown them.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(max(1, args.threads))
    stage: list = []  # the last stage line (step, total, message): where a Ctrl-C stopped the build

    def seen(step: int, total: int, message: str) -> None:
        stage[:] = [step, total, message]

    try:
        if not args.no_extras:  # its comparison is published to the analysis cache: a bad limit said before the build
            from subnetviz.config import cache_limit_bytes

            cache_limit_bytes()
        t0 = time.perf_counter()
        # stdout is the command's own output (the zoo's folder and one row per member, read by scripts); what the
        # stages' trainings print (their run lines, DeepSpeed's import line through a handler it opens on the
        # stdout of that moment) goes to stderr with the stage lines, as ``experiment drivers`` does.
        with contextlib.redirect_stdout(sys.stderr):
            zoo = build_zoo(
                args.root,
                preset=args.preset,
                force=args.force,
                extras=not args.no_extras,
                runs_root=args.runs,
                background=not args.no_background,
                progress=seen,
            )
    except SubnetvizError as exc:
        print(f"error: {terminal_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the stages finished so far stay (each renamed in place when complete): said so
        where = f"at [{stage[0]}/{stage[1]}] {stage[2]}" if stage else "before the first stage"
        print(
            f"interrupted {where}; the stages finished so far are kept in {zoo_root(args.root)}, and the same "
            "`demo build` resumes from them.",
            file=sys.stderr,
        )
        return 130
    rows = [f"{m.id:10s} {m.algorithm:8s} acc {m.accuracy:6.1%}  sparsity {m.sparsity:6.1%}" for m in zoo.members]
    try:
        print("\n".join([f"demo zoo at {zoo.root} ({time.perf_counter() - t0:.1f} s)", *rows]))
    except KeyboardInterrupt:  # the zoo is complete: only its table was cut short (it said "nothing was written")
        from subnetviz.jobs.worker import complete_after_interrupt

        print(terminal_text(complete_after_interrupt(zoo.root)), file=sys.stderr)
        return 0
    return 0
