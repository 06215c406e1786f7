"""The command line: ``subnetviz {app,analyze,behavior,experiment,demo,train,job,runs,mask,report} ...`` (or ``python -m subnetviz``).

Every subcommand turns a :class:`~subnetviz.errors.SubnetvizError` into one readable line on
stderr and exit status 2; anything else is a bug and keeps its traceback. Ctrl-C is one line and exit
status 130, also where a library caught it and went on or failed on it (nothing is published after it); SIGTERM on
every verb run at a terminal is taken as one, with exit status 143. A Ctrl-C or SIGTERM that arrives once the result
is in place (``--out``, ``train``'s ``output_dir``, the zoo) stopped only what the command prints after it: the line
says the result is complete and where, and the exit status is the one the command would have ended with (0; 1 for
``experiment drivers`` with failed grid points), since the exit status says whether the result is there (a script
that reran on 130 failed: "the folder exists"). So does a stdout that cannot be written after it (a full disk): the
line says the result is complete and what was lost, with the same exit status.
The parser is here, the commands in :mod:`~subnetviz.cli.analysis` (analyze, behavior, experiment),
:mod:`~subnetviz.cli.jobs` (train, job, demo, runs, mask, report) and :mod:`~subnetviz.cli.app` (app).
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from pathlib import Path

from subnetviz.cli.analysis import cmd_analyze, cmd_behavior, cmd_experiment
from subnetviz.cli.app import DEFAULT_PORT, cmd_app, port
from subnetviz.cli.common import (
    forget_published,
    interrupted,
    published,
    shown,
    sigterm_interrupts,
    watch_interrupts,
)
from subnetviz.cli.jobs import cmd_demo, cmd_job, cmd_mask, cmd_report, cmd_runs, cmd_train
from subnetviz.config import full_paths
from subnetviz.errors import SubnetvizError
from subnetviz.training.mask_origin import CONVENTION


class _VersionAction(argparse.Action):
    """``--version``: the version and, from a clone, the git commit (computed only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from subnetviz.version import version_string

        print(version_string())
        parser.exit()


OVERWRITE_HELP = "replace an existing non-empty --out (atomically, once the new result is complete)"
DEVICE_HELP = "auto (the default: SUBNETVIZ_DEVICE when set, else CUDA when present), cpu, cuda, cuda:1 ..."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="subnetviz", description=__doc__.splitlines()[0])
    p.add_argument("--version", action=_VersionAction, help="print the version (and git commit from a clone) and exit")
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser(
        "app",
        allow_abbrev=False,
        help="start the web app; other --options go to streamlit run",
        description="Start the web app from anywhere. Options not listed here are passed to "
        "`streamlit run` (e.g. --server.address 127.0.0.1, --server.baseUrlPath viz).",
    )
    w.add_argument("--home", help="SUBNETVIZ_HOME for this server: zoo, runs and cache (default ~/.cache/subnetviz)")
    w.add_argument("--roots", nargs="+", metavar="DIR", help="SUBNETVIZ_ROOTS: the folders the server may read")
    w.add_argument(
        "--port", type=port, help=f"port to serve on (default {DEFAULT_PORT}; 0: any free port; or --server.port)"
    )
    w.set_defaults(func=cmd_app)

    a = sub.add_parser("analyze", help="update sparsity (+ spectra, overlap) of finetuned checkpoints vs a base")
    a.add_argument("base", help="HF folder, .safetensors file, index json, or cached hub id")
    a.add_argument("finetuned", nargs="+", help="one or more finetuned checkpoints")
    a.add_argument("--out", required=True, help="output folder (written only when the analysis succeeded)")
    a.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    a.add_argument("--labels", nargs="+", help="a name per finetuned checkpoint")
    a.add_argument("--tolerances", nargs="+", type=float, help="absolute tolerances (default 1e-8 1e-7 1e-6 1e-5 1e-4)")
    a.add_argument("--eta", type=float, default=1e-3, help="relative rule |Δ| <= eta·max(|w|,|w'|) (default 1e-3)")
    a.add_argument(
        "--precision",
        choices=["bf16", "fp16", "fp32"],
        help="cast both sides to this dtype before comparing (default: each tensor in its stored dtype; "
        "a pair stored in two dtypes is compared at the finetune's, the base rounded to nearest even, "
        "with a note)",
    )
    a.add_argument("--mask-tolerance", type=float, help="save update masks at this tolerance (default: exact)")
    a.add_argument("--device", default="auto", help=DEVICE_HELP)
    a.add_argument(
        "--spectra", action=argparse.BooleanOptionalAction, default=True, help="ranks/spectra of 2-D updates"
    )
    a.add_argument(
        "--spectra-embeddings", action="store_true", help="also vocabulary-sized matrices (embeddings, heads: slow)"
    )
    a.add_argument("--no-cache", action="store_true", help="recompute even when a cached result exists")
    a.add_argument(
        "--subspaces",
        type=int,
        default=16,
        metavar="K",
        help="top-K singular subspaces of W_base vs W_ft per 2-D weight -> subspaces.csv (0: off; default 16)",
    )
    a.add_argument("--subspaces-share", type=float, metavar="F", help="K = ceil(F · min(m, n)) per matrix instead")
    a.set_defaults(func=cmd_analyze)

    b = sub.add_parser("behavior", help="teacher-forced KL and accuracy vs the base, revert experiments for masks")
    b.add_argument("base", help="base model folder or cached hub id (its tokenizer encodes the prompts)")
    b.add_argument("finetuned", nargs="+", help="one or more finetuned model folders or cached hub ids")
    b.add_argument(
        "--prompts",
        nargs="+",
        help="JSONL with 'prompt' and optional 'answer', hf:NAME[:CONFIG]:SPLIT "
        "from the local datasets cache, or a save_to_disk folder (default: the zoo's eval sets)",
    )
    b.add_argument(
        "--out",
        required=True,
        help="output folder: behavior.json, summary.csv (one row per model and experiment), tokens.csv, prompts.csv, "
        "curves.csv, and routing.csv for mixture-of-experts models",
    )
    b.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    b.add_argument("--labels", nargs="+", help="a name per finetuned model")
    b.add_argument(
        "--mask",
        action="append",
        metavar="NAME=SPEC",
        help="a mask to revert inside/outside (repeat): "
        "a mask file (safetensors, a torch.save .pt, a bigram pickle), 'update' (each finetune's own update mask), "
        "'topk:F' (its top F of |Δ|) or 'routers' (an MoE model's routers: swapped between base and finetune). "
        "NAME= is optional (a file is then named by its file name); a value that is an existing file, or whose part "
        "before the first '=' holds a '/', is read whole as a path (sweep/lr=1e-5/mask.safetensors)",
    )
    b.add_argument(
        "--no-random",
        action="store_true",
        help="no random control per mask (as many entries per tensor as the mask, drawn uniformly)",
    )
    b.add_argument(
        "--curve",
        nargs="*",
        type=float,
        help="fractions of Δ reverted, |Δ| and random order (default 0 0.1 0.25 0.5 0.75 1; none: no curve)",
    )
    b.add_argument("--limit", type=int, help="at most this many prompts per file")
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="auto", help=DEVICE_HELP)
    b.set_defaults(func=cmd_behavior)

    x = sub.add_parser("experiment", help="experiment drivers: train small grids, sparsity vs each factor")
    x.add_argument("name", choices=["drivers"])
    x.add_argument("--out", required=True, help="output folder: results.csv, verdicts.csv")
    x.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    x.add_argument("--preset", default="quick", help="quick (≤ 5 min on 2 cores, default) or micro")
    # (drivers.MAX_SEEDS: importing it here would load torch for every verb's --help)
    x.add_argument(
        "--seeds", type=int, default=1, help="seeds per grid point: each a whole grid (default 1, at most 100)"
    )
    x.add_argument("--zoo", help="a built demo zoo (default SUBNETVIZ_HOME/zoo)")
    x.set_defaults(func=cmd_experiment)

    # The demo's own parser reads what follows 'demo' (its sub-verbs and their options); this one only says them.
    d = sub.add_parser(
        "demo",
        help="the demo zoo: demo build [--preset micro] [--force] | demo path",
        usage="subnetviz demo {build,path} [options]",
        description="The demo model zoo.\n\n"
        "  build   build the demo zoo (reused when already built)\n"
        "  path    print the zoo folder",
        epilog="Each one's options: subnetviz demo build --help, subnetviz demo path --help.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("rest", nargs=argparse.REMAINDER, metavar="{build,path} ...", help="the sub-verb and its options")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="run one training job in the foreground")
    t.add_argument("--config", required=True, help="JSON training config")
    t.add_argument(
        "--run-dir",
        help="a new folder to run in, as a queued job does (config.json, status.json, metrics.jsonl, tensorboard/; "
        "the model in outputs/model; the log is this terminal's, no log.txt); one in SUBNETVIZ_HOME/runs is "
        "registered when the run ends, so 'subnetviz runs' and the Training page list it ('runs --rescan' lists "
        "it while it runs); without it the model goes to the config's output_dir",
    )
    t.set_defaults(func=_train)

    j = sub.add_parser("job", help="(internal) the worker process of one queued job")
    j.add_argument("run_dir")
    j.set_defaults(func=cmd_job)

    r = sub.add_parser(
        "runs",
        help="list runs in the registry, or cancel one; either also starts queued runs while slots are free",
        description="List the runs in the registry (SUBNETVIZ_HOME/runs), or cancel one. A run's error (why it "
        "failed or was cancelled) is printed in full on the line under its row; its files (config.json, log.txt, "
        "status.json, outputs/) are in SUBNETVIZ_HOME/runs/RUN_ID. Like every look at the registry, it also "
        "settles runs whose process has ended and starts queued runs while slots are free: each under the settings "
        "it was queued with (its worker command, GPUs and read roots), not this shell's. A registry found new or "
        "empty beside run folders (lost, moved aside, a 0-byte file) is rebuilt from them, said on stderr.",
    )
    which = r.add_mutually_exclusive_group()
    which.add_argument("--cancel", metavar="RUN_ID", help="cancel this queued or running run")
    which.add_argument(
        "--rescan",
        action="store_true",
        help="register the run folders that no registry row names (a registry restored from an older copy), from "
        "their config.json and status.json; runs already registered are left as they are",
    )
    r.set_defaults(func=cmd_runs)

    mask_help = (
        "mask files: import SRC DST (a torch.save file, a NumPy .npz or a released bigram pickle, read safely, to "
        "safetensors; import-pickle is the same) | info SRC"
    )
    m = sub.add_parser(
        "mask",
        help=mask_help,
        description=f"{mask_help[0].upper()}{mask_help[1:]}. A mask is bool or 0/1 tensors keyed by parameter "
        f"name: {CONVENTION}.",
    )
    m.add_argument("action", choices=["import", "import-pickle", "info"])
    m.add_argument("src")
    m.add_argument("dst", nargs="?")
    m.add_argument("--overwrite", action="store_true", help="replace DST if it is there")
    m.set_defaults(func=cmd_mask)

    rep = sub.add_parser("report", help="self-contained HTML dashboard of an analysis folder")
    rep.add_argument("analysis_dir")
    rep.add_argument("--out", required=True, help="the HTML file to write")
    rep.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    rep.set_defaults(func=cmd_report)
    return p


def _train(args: argparse.Namespace) -> int:
    """``train``; a ``--run-dir`` among the home's runs is registered once the run ends (:func:`register_run_dir`)."""
    code = cmd_train(args)
    if args.run_dir:
        register_run_dir(args.run_dir)
    return code


def register_run_dir(run_dir: str) -> None:
    """Register the folder of a ``train --run-dir`` that has ended, when it is one of SUBNETVIZ_HOME/runs and this
    process made it (its foreground record names this process: not a folder that was there, refused), from its
    config and final status as ``runs --rescan`` registers a folder (:mod:`~subnetviz.jobs.rescan`). A registry new
    or empty is first rebuilt from every run folder, as any runner does on its first look. Left alone when already
    registered (a rescan while it ran). It was listed by no page or ``runs`` until a rescan, though its help said
    the folder is used "as a queued job does". A registry that cannot take it is said, the run's status kept."""
    import sqlite3

    from subnetviz import config
    from subnetviz.jobs.context import read_json
    from subnetviz.jobs.registry import FOREGROUND_FILE, Registry, same_folder
    from subnetviz.jobs.rescan import adopt_run_folders
    from subnetviz.jobs.scheduler import REGISTRY_FILE

    folder, root = Path(os.path.abspath(run_dir)), config.home_path() / "runs"
    if not same_folder(folder.parent, root) or read_json(folder / FOREGROUND_FILE).get("pid") != os.getpid():
        return
    try:
        registry = Registry(root / REGISTRY_FILE)
        if not adopt_run_folders(registry, only_when_empty=True):  # (a registry new or empty: rebuilt with it)
            adopt_run_folders(registry, names={folder.name})  # (a name a rescan leaves out is left out here too)
    except (SubnetvizError, OSError, sqlite3.Error) as exc:
        print(
            f"note: {shown(str(folder))} is not registered ({shown(str(exc))}); 'subnetviz runs --rescan' registers it.",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    """The ``subnetviz`` command (console script) and ``python -m subnetviz``; returns the exit status."""
    _lenient_stdout()  # before parsing: --help prints there (its Δ and ≤ under PYTHONIOENCODING=ascii)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "app":
        args.streamlit_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    with nullcontext() if _redacts(args.command) else full_paths():  # the paths as the user gave them
        return _run(args)


def _redacts(command: str) -> bool:
    """Whether this process's messages show paths as a web visitor sees them (``…/final``), not as given: a
    queued job's worker (``job``: its errors reach the app's pages) and every rank a job launches (``train`` in a
    job's run folder), and ``app``, which becomes the server. Every other verb runs for the user at the terminal
    (:func:`~subnetviz.config.full_paths`); under enforced roots paths are redacted whatever this says."""
    if command in ("app", "job"):
        return True
    if command == "train":
        from subnetviz.training.sharded import RUN_DIR_ENV

        return bool(os.environ.get(RUN_DIR_ENV))
    return False


def _run(args: argparse.Namespace) -> int:
    """The verb, its failures said in one line on stderr with an exit status (:func:`main`)."""
    # SIGTERM (kill PID, timeout, a batch system's stop) as Ctrl-C for every verb run at a terminal: its temporary
    # folders removed and one line, exit 143 (the default ended it at once). `app` becomes the server, and `job`
    # and `train` take it themselves (a run recorded as stopped, its launched ranks stopped).
    stop = nullcontext() if args.command in ("app", "job", "train") else sigterm_interrupts()
    forget_published()
    try:
        with watch_interrupts(), stop:
            try:
                status = args.func(args)
                _flush_stdout()  # a full disk or a closed pipe said here, as the command's, not at the exit's flush
                return status
            except Exception:
                if interrupted():  # a Ctrl-C a library swallowed, and then failed on (numba, compiling): said as one
                    raise KeyboardInterrupt from None
                raise
    except SubnetvizError as exc:
        _end_bars()
        # one line, whatever a library said; a name's control characters and non-UTF-8 bytes as escapes (\x1b, \xff)
        print(f"error: {shown(' '.join(str(exc).split()))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away ('runs | head'): nothing more to say to it
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the exit's flush of what is left goes nowhere
        return 141
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, not a traceback (nothing half-written is left: see --out)
        from subnetviz.jobs.worker import complete_after_interrupt, signal_of

        _end_bars()
        done = published()
        if done is not None:  # after the result was put in place: only what is printed after it was cut short
            path, status, error = done
            print(shown(complete_after_interrupt(path)), file=sys.stderr)
            if error:
                print(f"error: {shown(error)}", file=sys.stderr)
            return status
        print("interrupted: nothing was written.", file=sys.stderr)
        return 128 + signal_of(exc)  # 130, or 143 where SIGTERM was raised as one (sigterm_interrupts)
    except OSError as exc:  # the environment: a read-only or full file system, a permission, a vanished file
        _end_bars()
        done = published()
        if done is not None:  # after the result was put in place: only printing its summary failed (stdout full)
            path, status, error = done
            _discard_stdout()
            print(shown(complete_but_unprinted(path, exc)), file=sys.stderr)
            if error:
                print(f"error: {shown(error)}", file=sys.stderr)
            return status
        where = f" {exc.filename}" if exc.filename else ""
        try:
            _flush_stdout()  # what was printed before the failure, where stdout still takes it
        except OSError:  # stdout itself failed (a full disk): else the exit's flush failed again, exit status 120
            _discard_stdout()
            where = where or " (writing to stdout)"
        print(shown(f"error: cannot complete{where}: {exc.strerror or exc} (errno {exc.errno})."), file=sys.stderr)
        return 2


def complete_but_unprinted(path: os.PathLike | str, exc: OSError) -> str:
    """The line for a write that failed (``exc``) once the command's result was in place at ``path``: only what was
    to be printed after it (the summary table, the "wrote" line, to a full disk) is lost, and the command ends with
    the status it would have ended with, as after a Ctrl-C there (:func:`_run`). It ended with exit status 2 and
    "error: cannot complete: No space left on device": a script that took that for "nothing was written" ran the
    command again, which failed on the folder already there."""
    said = f"{exc.strerror or exc} (errno {exc.errno})" if exc.errno else str(exc)
    return (
        f"the result was written: {os.fspath(path)} is complete; what was to be printed after it could not be "
        f"written: {said}."
    )


def _flush_stdout() -> None:
    """stdout's buffer written now (what a command printed to a file or pipe waits there until the exit, where a
    failure to write it is only "Exception ignored" and exit status 120)."""
    if sys.stdout is not None:
        sys.stdout.flush()


def _discard_stdout() -> None:
    """What stdout could not write stays in its buffer, and the exit's flush would fail on it again: it now goes to
    nowhere (the file descriptor made /dev/null's, where there is one; else a new stdout)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(null, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # (no file descriptor: a stand-in stream)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the exit's flush of what is left goes nowhere
    finally:
        os.close(null)


def _lenient_stdout() -> None:
    """stdout writes what its encoding cannot as ``\\xe9`` escapes, as stderr does: a label printed in the table
    after the result was published (``--labels é`` under ``PYTHONIOENCODING=ascii`` or a latin-1 locale) made a
    UnicodeEncodeError traceback and exit 1 for a run that had succeeded."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None and getattr(sys.stdout, "errors", None) == "strict":
        try:
            reconfigure(errors="backslashreplace")
        except (ValueError, OSError):  # (a closed or detached stream: the print says so itself)
            pass


def _end_bars() -> None:
    """Close the progress bars still drawn, so an error starts a line of its own (``grep '^error:'`` finds it)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(tqdm, "tqdm", None) and getattr(tqdm.tqdm, "_instances", ()) or ()):
        bar.close()
