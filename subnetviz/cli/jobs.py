"""The job subcommands: ``train`` (one run in the foreground), ``job`` (a queued job's worker), ``demo``,
``runs`` (list, cancel or rescan); and the file subcommands ``mask`` and ``report``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from subnetviz.cli.analysis import share_text
from subnetviz.cli.common import (
    check_name_length,
    file_target,
    publish_file,
    refuse_blank,
    shown,
    shown_cells,
    threads,
)
from subnetviz.errors import SubnetvizError


def cmd_job(args: argparse.Namespace) -> int:
    from subnetviz.jobs.worker import main_job

    refuse_blank("job", [("RUN_DIR", args.run_dir)])  # (an empty one ran a config.json of the working folder)
    threads()
    return main_job(args.run_dir)


def cmd_train(args: argparse.Namespace) -> int:
    from subnetviz.jobs.worker import main_train

    refuse_blank("train", [("--config", args.config), ("--run-dir", args.run_dir)])
    threads()
    return main_train(args.config, run_dir=args.run_dir)


def cmd_demo(args: argparse.Namespace) -> int:
    from subnetviz.demo.build import main

    threads()
    return main(args.rest)


def cmd_runs(args: argparse.Namespace) -> int:
    from subnetviz.jobs.runner import JobRunner

    runner = JobRunner()
    if args.rescan:
        added = runner.adopted + runner.rescan()  # (a registry found empty was rebuilt as the runner was made)
        print(
            f"registered {len(added)} run folder(s) that the registry did not name: {', '.join(map(shown, added))}"
            if added
            else f"every run folder in {shown(runner.root)} is in the registry; nothing to register"
        )
        return 0
    if runner.adopted:
        n = len(runner.adopted)
        print(
            f"note: {shown(runner.registry.path)}: the job registry was new or empty; {n} run(s) were registered "
            f"again from their folders in {shown(runner.root)}.",
            file=sys.stderr,
        )
    runner.poll()
    if args.cancel is not None:
        if not args.cancel.strip():
            raise SubnetvizError("--cancel needs a run id (python -m subnetviz runs lists them).")
        runner.cancel(args.cancel)
        print(f"cancelled {shown(args.cancel)}")
        return 0
    df = runner.list_runs()
    if not len(df):
        print("no runs")
        return 0
    cols = ["id", "kind", "name", "status", "step", "total"]
    # a missing name as nothing, steps as whole numbers (not NaN and 2.0); a long name cut, never an error: that is
    # printed whole on the line under its run (a run's error quotes a checkpoint's text: a tensor's name, a file's)
    table = df[cols].astype({"step": "Int64", "total": "Int64"}).astype(object).where(lambda d: d.notna(), "")
    lines = shown_cells(table).to_string(index=False, max_colwidth=60).splitlines()
    print(lines[0])
    for line, error in zip(lines[1:], df["error"], strict=True):
        print(line)
        if isinstance(error, str) and error.strip():
            print(f"    error: {shown(error)}")
    return 0


def cmd_mask(args: argparse.Namespace) -> int:
    from subnetviz.cache import file_in_the_way
    from subnetviz.masks import import_mask, save_mask_set

    refuse_blank(f"mask {args.action}", [("SRC", args.src), ("DST", args.dst)])
    src = os.path.expanduser(args.src)  # ('~' a shell left quoted: "~/m.pt", a script's argument list)
    if args.action == "info" and (args.dst or args.overwrite):  # (ignored without a word: nothing is written)
        extra = " and ".join([f"DST {args.dst}"] * bool(args.dst) + ["--overwrite"] * args.overwrite)
        raise SubnetvizError(f"mask info reads one file (SRC) and writes none; {extra} is for mask import.")
    if args.action in ("import", "import-pickle"):
        if not args.dst:
            raise SubnetvizError(f"mask {args.action} needs a destination: SRC DST.safetensors")
        given = Path(args.dst).expanduser()
        dst = file_target(given, args.dst)  # a link: its target written, the link kept
        if dst.is_dir():  # (--overwrite never replaces a folder: the message offered it)
            raise SubnetvizError(
                f"{args.dst}: a folder is there; name the file to write, e.g. {given / 'mask.safetensors'}."
            )
        if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(dst, src):  # (even with --overwrite)
            raise SubnetvizError(f"{args.dst}: this is the file being imported (SRC); write the mask to another file.")
        if os.path.lexists(dst) and not args.overwrite:
            raise SubnetvizError(f"{args.dst}: a file is already there; choose a new file name, or pass --overwrite.")
        if (blocked := file_in_the_way(dst)) is not None:
            raise SubnetvizError(f"{args.dst}: {blocked} is a file, not a folder; choose a path in a folder.")
        check_name_length(dst, args.dst)  # (its temporary name's "File name too long" came after the reading)
        ms = import_mask(src)  # safetensors, torch.save or a released bigram pickle, told by the content
        dst.parent.mkdir(parents=True, exist_ok=True)
        # never over a file that appeared at DST meanwhile, without --overwrite (two imports to one name)
        with publish_file(dst, args.overwrite, option="") as tmp:
            save_mask_set(tmp, ms)
        # the density as analyze prints it (share_text): 1 entry of 16 million read "density 0.000000"
        linked = f" (the file it links to, {shown(dst)})" if dst != given else ""
        print(
            f"wrote {shown(args.dst)}{linked}: {len(ms.masks)} tensors, density {share_text(ms.density)} "
            f"({ms.count:,} of {ms.numel:,} entries)"
        )
    else:
        ms = import_mask(src)
        info = dict(tensors=len(ms.masks), count=ms.count, numel=ms.numel, density=ms.density)
        if (task := _page_task(ms.metadata)) is not None:
            info[PAGE_TASK] = task
        info["metadata"] = ms.metadata
        # valid JSON: a header's NaN or Infinity (which json reads and, by default, writes back) as null
        print(json.dumps(json.loads(json.dumps(info, default=str), parse_constant=lambda _: None), indent=2))
    return 0


PAGE_TASK = "task (counted from 1, as the app shows it)"


def _page_task(metadata: dict) -> int | None:
    """A continual run's task mask's task as the Continual page and the sidebar's *Saved masks* count it, from 1
    (the file ``task2.safetensors`` and its ``"task": 2``, kept for scripts, count from 0); None for other masks."""
    task = metadata.get("task")
    if metadata.get("source") != "subnetviz.supermask" or isinstance(task, bool) or not isinstance(task, int):
        return None
    return task + 1


def cmd_report(args: argparse.Namespace) -> int:
    from subnetviz.cache import file_in_the_way
    from subnetviz.report.dashboard import analysis_report

    refuse_blank("report", [("ANALYSIS_DIR", args.analysis_dir), ("--out", args.out)])
    given = Path(args.out).expanduser()
    out = file_target(given, f"--out {args.out}")  # a link: its target written, the link kept
    if out.is_dir():
        raise SubnetvizError(
            f"--out {args.out}: a folder is there; name the HTML file to write, e.g. {given / 'report.html'}."
        )
    if os.path.lexists(out) and not args.overwrite:
        raise SubnetvizError(f"--out {args.out}: a file is already there; choose a new file name, or pass --overwrite.")
    source = Path(args.analysis_dir).expanduser().resolve()
    if out.resolve().is_relative_to(source):  # --overwrite would replace one of the files it reads
        raise SubnetvizError(f"--out {args.out}: inside the analysis folder {args.analysis_dir}; write it elsewhere.")
    if (blocked := file_in_the_way(out)) is not None:
        raise SubnetvizError(f"--out {args.out}: {blocked} is a file, not a folder; choose a path in a folder.")
    if not out.parent.is_dir():
        raise SubnetvizError(f"--out {args.out}: folder {out.parent} does not exist; create it first.")
    check_name_length(out, f"--out {args.out}")  # (else "File name too long" once the page was built)
    # The page takes seconds to build: without --overwrite, a file that appears at --out meanwhile (another
    # report to the same name, a user's) is not replaced; this run fails saying so.
    with publish_file(out, args.overwrite) as tmp:
        analysis_report(args.analysis_dir, tmp)
    print(f"wrote {shown(given)}" + (f" (the file it links to, {shown(out)})" if out != given else ""))
    return 0
