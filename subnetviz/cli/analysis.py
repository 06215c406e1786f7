"""The analysis subcommands: ``analyze`` (update sparsity, spectra, subspaces), ``behavior`` (KL,
accuracy, revert experiments) and ``experiment drivers``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from subnetviz.cli.common import (
    check_out,
    progress_bar,
    publish,
    quiet_libraries,
    refuse_blank,
    shown,
    shown_cells,
    threads,
)
from subnetviz.errors import SubnetvizError

SUBSPACES_NOTES = "subspaces_notes.json"  # analyze --subspaces: the subspaces' notes, a JSON list of lines


def cmd_analyze(args: argparse.Namespace) -> int:
    import shutil

    from subnetviz.analysis.bits import DEFAULT_TOLERANCES
    from subnetviz.analysis.sparsity import SparsityOptions
    from subnetviz.analysis.updates import SpectraOptions, analyze_updates, cached_analysis, write_analysis

    refuse_blank("analyze", [("BASE", args.base), ("FINETUNED", args.finetuned), ("--out", args.out)])
    threads()
    tols = tuple(args.tolerances) if args.tolerances else DEFAULT_TOLERANCES
    options = SparsityOptions(
        tolerances=tols, eta=args.eta, precision=args.precision, mask_tolerance=args.mask_tolerance
    )
    spectra = SpectraOptions(enabled=args.spectra, **({"max_dim": None} if args.spectra_embeddings else {}))
    if args.labels and len(args.labels) != len(args.finetuned):
        raise SubnetvizError(f"--labels has {len(args.labels)} names for {len(args.finetuned)} finetuned checkpoints.")
    _check_labels(args.labels, mask_files=True, finetuned=args.finetuned)
    if args.subspaces or args.subspaces_share:  # its options refused before the update pass, not after it
        from subnetviz.analysis.subspaces import SubspaceOptions

        SubspaceOptions(k=args.subspaces, share=args.subspaces_share, precision=args.precision)
    _check_device(args.device)
    if not args.no_cache:
        _check_cache_limit()
    out = check_out(args.out, args.overwrite, [args.base, *args.finetuned])
    for line in _repeats(args.base, args.finetuned):
        print(f"note: {shown(line)}", file=sys.stderr)
    from subnetviz.cache import USED, sweep
    from subnetviz.config import cache_dir

    sweep(cache_dir())  # temporary folders an earlier, killed run left behind
    kwargs = dict(
        labels=args.labels, options=options, spectra=spectra, device=args.device, progress=progress_bar("analyze")
    )
    if args.no_cache:
        analysis = analyze_updates(args.base, args.finetuned, **kwargs)
    else:
        analysis = cached_analysis(args.base, args.finetuned, **kwargs)
        if analysis.cached:
            print(f"cached: served from {shown(analysis.source_dir)}", file=sys.stderr)
    try:
        with publish(out, args.overwrite) as tmp:  # the analysis and its subspaces appear together or not at all
            # The analysis first, then the subspaces: its cache entry, marked used when it was read, may be evicted
            # once the subspaces (hours for a large model) have taken longer than the eviction's grace, by this
            # command's own publish of them or by any other; its copy here is this command's own.
            if args.no_cache:  # written in a folder of its own, then moved up: a copy would need the space twice
                written = write_analysis(
                    analysis, tmp / "analysis", params={"base": args.base, "finetuned": args.finetuned}
                )
                for f in written.iterdir():
                    os.replace(f, tmp / f.name)
                written.rmdir()
            else:
                source = analysis.source_dir  # (the cache's entry stays: copied, less its use stamp)
                shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(USED))
            if args.subspaces or args.subspaces_share:
                try:
                    subspaces = _subspaces(args, analysis.labels)
                except OSError as exc:  # reading the checkpoints, not writing --out: said as before, not as publish's
                    raise _ReadFailed(exc) from exc
                _write_subspaces(tmp, subspaces)
    except _ReadFailed as failed:
        raise failed.args[0] from None
    for line in analysis.notes:
        print(f"note: {shown(line)}", file=sys.stderr)
    summary = analysis.summary()
    shares = {"sparsity": share_text, "density": share_text}  # each its own digits: 1e-10 of 7B is not 0.000000
    table = shown_cells(summary[["model", "sparsity", "density", "numel", "changed"]])
    print(table.to_string(index=False, formatters=shares))
    print(f"wrote {shown(out)}")
    return 0


class _ReadFailed(Exception):
    """An OSError of the subspaces' computation (a checkpoint that cannot be read), carried out of ``publish``,
    which would say it as "--out O: cannot write the result"."""


def _write_subspaces(tmp: Path, subspaces) -> None:
    """``analyze --subspaces K``'s files in the result's folder: the rows and vectors, and the notes."""
    from subnetviz.analysis.updates import write_parquet

    rows, vectors, notes = subspaces
    rows.to_csv(tmp / "subspaces.csv", index=False)
    write_parquet(vectors, tmp / "subspaces.parquet")  # (through a file Python opens: an --out named out\xff)
    # its notes (skips, tensors left out, the dtype compared at) kept beside it: on stderr only, the folder
    # alone could not show that a tensor had been left out
    (tmp / SUBSPACES_NOTES).write_text(json.dumps(list(notes), indent=2))


def share_text(x: float) -> str:
    """A share as ``analyze`` prints it, a plain number a script can read back: six decimals, except where they
    would round a share that is neither 0 nor 1 onto one of them (a 7B model with 3,000 changed entries read
    1.000000 / 0.000000): then e-notation near 0 (``4.286e-07``) and as many decimals as tell it from 1 near 1
    (``0.9999995714``)."""
    text = f"{x:.6f}"
    if not math.isfinite(x) or x in (0.0, 1.0) or float(text) not in (0.0, 1.0):
        return text
    if float(text) == 0.0:
        return f"{x:.3e}"
    return next((f"{x:.{d}f}" for d in range(7, 18) if float(f"{x:.{d}f}") != 1.0), repr(x))


NAME_MAX = 255  # the longest file name (bytes) Linux and macOS file systems take


def _repeats(base: str, finetuned: list[str]) -> list[str]:
    """A line for each finetuned checkpoint that reads the weights the base or an earlier one reads
    (:func:`~subnetviz.checkpoints.sources.weights_identity`: a folder, its ``model.safetensors``, its shard index, a
    link to it). Each is still compared, as named (its row is asked for: a base against itself is a check that
    reads 0 changed), but the row's name alone did not say so (``base/model.safetensors`` read ``base``; a folder
    and its file were ``ft`` and ``ft-2``, two rows of one model). A checkpoint that cannot be located is said by
    the analysis, not here."""
    from subnetviz.checkpoints.sources import weights_identity

    def identity(spec: str) -> str | None:
        try:
            return weights_identity(spec)
        except (SubnetvizError, OSError):
            return None

    seen = {identity(base): "the base"}
    lines = []
    for spec in finetuned:
        key = identity(spec)
        if key is None:
            continue
        if seen.get(key) == "the base":
            lines.append(f"{spec} reads the same weights as the base: its row compares the base with itself.")
        elif key in seen:
            lines.append(f"{spec} reads the same weights as {seen[key]}, named before it: its row repeats that one.")
        else:
            seen[key] = spec
    return lines


def _check_labels(labels: list[str] | None, mask_files: bool, finetuned: Sequence[str] = ()) -> None:
    """``--labels`` before any work: none empty or blank (a model with no name, its mask written as the hidden
    ``masks/.safetensors``, and a folder ``report`` then rejects) and, where each model's mask is written
    (``mask_files``), none whose file name the file system refuses (found only once the whole analysis had run,
    naming a temporary file) and no two that make one file name (``a/b`` and ``a_b`` are both ``a_b.safetensors``).
    Without ``--labels``, the labels the ``finetuned`` checkpoints' names give are checked for blanks too (a folder
    named ``"   "`` made a model with no name, as an empty label did)."""
    if not labels:
        _check_derived_labels(finetuned)
        return
    blank = [lbl for lbl in labels if not lbl.strip()]
    if blank:
        raise SubnetvizError(f"--labels: empty label(s) {blank}; give each finetuned model a name.")
    if mask_files:
        from subnetviz.analysis.updates import _safe
        from subnetviz.cache import longest_tmp_name

        # masks/<label>.safetensors (with -N when a label differs from another only in case), and the temporary
        # name it is written under first
        spare = NAME_MAX - longest_tmp_name(f"-{len(labels)}.safetensors" if len(labels) > 1 else ".safetensors")
        for lbl in labels:
            size = len(_safe(lbl).encode("utf-8", "surrogateescape"))
            if size > spare:
                raise SubnetvizError(
                    f"--labels: {lbl[:40]!r}… is {size} bytes long; its mask file's name would be longer than the "
                    f"file system's {NAME_MAX} bytes. Give labels of at most {spare} bytes."
                )
        by_file: dict[str, list[str]] = {}
        for lbl in labels:
            by_file.setdefault(_safe(lbl), []).append(lbl)
        same = next((names for names in by_file.values() if len(names) > 1), None)
        if same:
            raise SubnetvizError(
                f"--labels: {' and '.join(map(repr, same))} would write one mask file "
                f"(masks/{_safe(same[0])}.safetensors); give labels that differ in letters, digits or -_.@."
            )


def _check_derived_labels(finetuned: Sequence[str]) -> None:
    """:func:`_check_labels`'s blank check on the labels the finetuned checkpoints' names give
    (:func:`~subnetviz.checkpoints.sources.checkpoint_label`)."""
    from subnetviz.checkpoints.sources import checkpoint_label

    for spec in finetuned:
        if not checkpoint_label(spec).strip():
            raise SubnetvizError(
                f"FINETUNED {spec!r}: its name, the model's label, is only whitespace; give each finetuned model a "
                "name with --labels."
            )


def _check_device(device: str) -> None:
    """``--device`` before any work: a result served from the cache never asks for the device, so a misspelt or
    absent one passed unnoticed there and failed only on the next computed run."""
    from subnetviz.config import resolve_device

    resolve_device(device)


def _check_cache_limit() -> None:
    """``SUBNETVIZ_CACHE_GB`` before any work, where the result is published to the cache: read when an entry is
    published, a bad value failed the command after the whole analysis (hours for a large model), and passed
    unnoticed where nothing new was published."""
    from subnetviz.config import cache_limit_bytes

    cache_limit_bytes()


def _subspaces(args: argparse.Namespace, labels: list[str]):
    """``analyze --subspaces K``: principal angles, σ ratios and principal-weight overlap per 2-D weight
    (through the disk cache unless ``--no-cache``); prints the table's notes (skips, left-out tensors, the
    randomized path, the dtype compared at), served from the cache too, and returns the (rows, vectors) frames and
    the notes."""
    from subnetviz.analysis.subspaces import SubspaceOptions, analyze_subspaces, cached_subspaces

    options = SubspaceOptions(k=args.subspaces, share=args.subspaces_share, precision=args.precision)
    kwargs = dict(labels=labels, options=options, device=args.device, progress=progress_bar("subspaces"))
    if args.no_cache:
        table = analyze_subspaces(args.base, args.finetuned, **kwargs)
        rows, vectors, notes = table.to_frame(), table.vectors(), table.notes
    else:
        rows, vectors, notes = cached_subspaces(args.base, args.finetuned, with_notes=True, **kwargs)
    for line in notes:
        print(f"note: {shown(line)}", file=sys.stderr)
    return rows, vectors, notes


def cmd_behavior(args: argparse.Namespace) -> int:
    from subnetviz.analysis.behavior import CURVE_POINTS, MAX_SEED, run_config, write_behavior

    refuse_blank(
        "behavior",
        [("BASE", args.base), ("FINETUNED", args.finetuned), ("--prompts", args.prompts), ("--out", args.out)],
    )
    threads()
    quiet_libraries()
    _check_labels(args.labels, mask_files=False, finetuned=args.finetuned)
    _check_device(args.device)
    # '~' as a shell leaves it quoted ("~/m", --opt=~/x, a script's list): analyze's readers expand it, these did not
    args.base, args.finetuned = _home(args.base), [_home(f) for f in args.finetuned]
    args.prompts = [p if str(p).startswith("hf:") else _home(p) for p in args.prompts] if args.prompts else None
    if not 0 <= args.seed < MAX_SEED:  # (a seed past it overflowed the generators' int64 seeds after the models loaded)
        raise SubnetvizError(f"--seed must be a whole number from 0 to {MAX_SEED - 1}, got {args.seed}.")
    masks = _mask_specs(args.mask or [])
    files = [path for path in masks.values() if not _special_mask(path)]
    # before the work: a folder in the way is said at once (one holding a mask file read too, not its NAME=PATH)
    out = check_out(args.out, args.overwrite, [args.base, *args.finetuned, *(args.prompts or []), *files])
    config = {
        "kind": "behavior",
        "base": args.base,
        "finetuned": args.finetuned,
        "labels": args.labels,
        "prompts": args.prompts,
        "masks": masks,
        "random_control": not args.no_random,
        "curve": list(CURVE_POINTS) if args.curve is None else args.curve,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": args.device,
        "limit": args.limit,
    }
    report = run_config(config, progress=progress_bar("behavior", "experiment"))  # (one per model and experiment)
    with publish(out, args.overwrite) as tmp:
        written = write_behavior(report, tmp)
    for line in report.notes:
        print(f"note: {shown(line)}", file=sys.stderr)
    cols = ["model", "experiment", "kl_forward", "kl_reverse", "accuracy", "fraction_reverted"]
    print(shown_cells(report.summary[cols]).to_string(index=False))
    if len(report.routing):  # an MoE model: how far its routing moved from the base's, per model and experiment
        from subnetviz.analysis.routing import overall

        r = overall(report.routing)
        g = (
            r.assign(jaccard=r["jaccard"] * r["tokens"], rerouted_share=r["rerouted_share"] * r["tokens"])
            .groupby(["model", "experiment"], sort=False)[["jaccard", "rerouted_share", "tokens"]]
            .sum()
        )
        moved = g[["jaccard", "rerouted_share"]].div(g["tokens"], axis=0).reset_index()
        print(f"routing against the base's (token-weighted over {r['router'].nunique()} routers, every prompt):")
        print(shown_cells(moved).to_string(index=False))
    print(shown(f"{report.tokens_per_second:.0f} tokens/s per model forward; wrote {args.out}: {', '.join(written)}"))
    return 0


def _home(path: str) -> str:
    """``path`` with a leading ``~`` expanded (as every reader of ``analyze`` expands it)."""
    return os.path.expanduser(path)


def _special_mask(spec: str) -> bool:
    """``update``, ``routers`` and ``topk:F``: masks made per finetune, not read from a file."""
    from subnetviz.analysis.behavior import SPECIAL_MASKS

    return spec in SPECIAL_MASKS or spec.startswith("topk:")


def _mask_specs(specs: list[str]) -> dict[str, str]:
    """``--mask NAME=SPEC`` (or a bare SPEC) as {name: spec}: the specials by what they are (topk:0.5 was
    'topk:0'), a file by its name; an empty or blank NAME (experiments named '/inside') and two masks of one
    name (the later one replaced the earlier, with no word) refused. A value that is an existing path, or whose
    part before the first '=' holds a '/' (no name does: it would name experiments 'a/b/inside'), is a bare path:
    run folders named after their settings (``sweep/lr=1e-5/mask.safetensors``) were split into the name
    'sweep/lr' and the path '1e-5/mask.safetensors'. A leading ``~`` of a path is expanded. A name that is another
    mask's random control's (``random(m)`` beside ``m``) is refused (:func:`~subnetviz.analysis.behavior
    .refuse_control_names`)."""
    from subnetviz.analysis.behavior import refuse_control_names

    masks: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and ("/" in name or os.sep in name or Path(spec).expanduser().exists()):
            sep = ""
        if not sep:
            name, path = (spec if _special_mask(spec) else Path(spec).stem), spec
        if not _special_mask(path):
            refuse_blank("behavior", [(f"--mask {spec}".strip(), path)])  # ('name=$M', M unset: the working folder)
            path = _home(path)
        if not name.strip():
            raise SubnetvizError(f"--mask {spec}: an empty mask name; give it one (--mask NAME=PATH) or leave out '='.")
        if name in masks:
            raise SubnetvizError(
                f"--mask: two masks named {name!r} ({masks[name]}, {path}); name each one: --mask NAME=PATH."
            )
        masks[name] = path
    refuse_control_names(masks, "--mask")  # (a mask 'random(m)' beside 'm': two experiments 'random(m)/inside')
    return masks


def cmd_experiment(args: argparse.Namespace) -> int:
    from subnetviz.experiments.drivers import grid_notes, run_drivers, validate_config, verdicts

    # (an empty --zoo read as none: the default zoo, unsaid; an empty --out was the working folder)
    refuse_blank("experiment", [("--zoo", args.zoo), ("--out", args.out)])
    validate_config({"preset": args.preset, "seeds": args.seeds})  # as a job's: one line before --out is looked at
    threads()
    quiet_libraries()
    out = check_out(args.out, args.overwrite, [args.zoo])
    # (SIGTERM ends it as Ctrl-C does, cli._run: the grid's work folders removed, a PPO child it waits on stopped)
    results = run_drivers(args.zoo, args.preset, args.seeds, progress=progress_bar("drivers", "point"))  # (points)
    verdict = verdicts(results)
    failed = results[results["status"] == "failed"]
    error = None
    if len(failed):  # published (the other runs are valid), but a script must notice
        first = f"{failed['factor'].iloc[0]}={failed['value'].iloc[0]}: {failed['note'].iloc[0]}"
        error = (
            f"drivers: {len(failed)} grid point(s) failed (the first, {' '.join(first.split())}); the other runs' "
            f"results are in {args.out}"
        )
    # (a signal after publishing ends it with this status and line too: cli._run)
    with publish(out, args.overwrite, status=1 if error else 0, error=error) as tmp:
        results.to_csv(tmp / "results.csv", index=False)
        verdict.to_csv(tmp / "verdicts.csv", index=False)
    cols = ["factor", "value", "seed", "algorithm", "precision", "sparsity", "accuracy", "kl_forward"]
    print(shown_cells(results[cols]).to_string(index=False))
    print(shown_cells(verdict).to_string(index=False))
    for _level, line in grid_notes(results):  # points not run or failed and why, what each optimizer ran at
        print(f"note: {shown(line)}", file=sys.stderr)
    print(f"wrote {shown(args.out)}")
    if error:
        print(f"error: {shown(error)}", file=sys.stderr)
        return 1
    return 0
