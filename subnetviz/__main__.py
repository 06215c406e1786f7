"""The command line: ``subnetviz {app,analyze,behavior,experiment,demo,train,job,runs,mask,report} ...`` (or ``python -m subnetviz``).

Every subcommand turns a :class:`~subnetviz.errors.SubnetvizError` into one readable line on
stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from subnetviz.errors import SubnetvizError


def _threads() -> None:
    # A 2-core laptop or CI box: torch's default thread count thrashes under load.
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))


def _progress_bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="tensor", file=sys.stderr, dynamic_ncols=True)

    def update(step: int, total: int, what: str) -> None:
        bar.total = total
        bar.n = step
        bar.set_postfix_str(what[-40:], refresh=False)
        bar.refresh()
        if step >= total:
            bar.close()

    return update


def check_out(out: str, overwrite: bool) -> Path:
    """An output folder the command may write: new, empty, or (with ``--overwrite``) replaced atomically
    once the new result is complete — never a user's folder deleted, never a file taken for a folder."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise SubnetvizError(f"--out {out}: a file is there, not a folder; choose a folder name.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise SubnetvizError(
            f"--out {out}: the folder exists and is not empty; choose a new folder, or pass --overwrite to replace it."
        )
    return path


def cmd_analyze(args: argparse.Namespace) -> int:
    import shutil

    from subnetviz.analysis.bits import DEFAULT_TOLERANCES
    from subnetviz.analysis.sparsity import SparsityOptions
    from subnetviz.analysis.updates import SpectraOptions, analyze_updates, cached_analysis, write_analysis
    from subnetviz.cache import atomic_folder

    _threads()
    tols = tuple(args.tolerances) if args.tolerances else DEFAULT_TOLERANCES
    options = SparsityOptions(
        tolerances=tols, eta=args.eta, precision=args.precision, mask_tolerance=args.mask_tolerance
    )
    spectra = SpectraOptions(enabled=args.spectra, max_dim=None if args.spectra_embeddings else 8192)
    if args.labels and len(args.labels) != len(args.finetuned):
        raise SubnetvizError(f"--labels has {len(args.labels)} names for {len(args.finetuned)} finetuned checkpoints.")
    out = check_out(args.out, args.overwrite)
    from subnetviz.cache import sweep
    from subnetviz.config import cache_dir

    sweep(cache_dir())  # temporary folders an earlier, killed run left behind
    kwargs = dict(
        labels=args.labels, options=options, spectra=spectra, device=args.device, progress=_progress_bar("analyze")
    )
    if args.no_cache:
        analysis = analyze_updates(args.base, args.finetuned, **kwargs)
    else:
        analysis = cached_analysis(args.base, args.finetuned, **kwargs)
        if analysis.cached:
            print(f"cached: served from {analysis.source_dir}", file=sys.stderr)
    subspaces = _subspaces(args, analysis.labels) if args.subspaces or args.subspaces_share else None
    with atomic_folder(out) as tmp:  # the analysis and its subspaces appear together or not at all
        if args.no_cache:
            write_analysis(analysis, tmp / "analysis", params={"base": args.base, "finetuned": args.finetuned})
            source = tmp / "analysis"
        else:
            source = analysis.source_dir
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        if source != analysis.source_dir:
            shutil.rmtree(source)
        if subspaces is not None:
            subspaces[0].to_csv(tmp / "subspaces.csv", index=False)
            subspaces[1].to_parquet(tmp / "subspaces.parquet", index=False)
    for line in analysis.notes:
        print(f"note: {line}", file=sys.stderr)
    summary = analysis.summary()
    print(summary[["model", "sparsity", "density", "numel", "changed"]].to_string(index=False))
    print(f"wrote {out}")
    return 0


def _subspaces(args: argparse.Namespace, labels: list[str]):
    """``analyze --subspaces K``: principal angles, σ ratios and principal-weight overlap per 2-D weight
    (through the disk cache unless ``--no-cache``); returns the (rows, vectors) frames."""
    from subnetviz.analysis.subspaces import SubspaceOptions, analyze_subspaces, cached_subspaces

    options = SubspaceOptions(k=args.subspaces, share=args.subspaces_share)
    kwargs = dict(labels=labels, options=options, device=args.device, progress=_progress_bar("subspaces"))
    if not args.no_cache:
        return cached_subspaces(args.base, args.finetuned, **kwargs)
    table = analyze_subspaces(args.base, args.finetuned, **kwargs)
    for line in table.notes:
        print(f"note: {line}", file=sys.stderr)
    return table.to_frame(), table.vectors()


def cmd_behavior(args: argparse.Namespace) -> int:
    from subnetviz.analysis.behavior import CURVE_POINTS, run_config, write_behavior
    from subnetviz.cache import atomic_folder

    _threads()
    masks = {}
    for spec in args.mask or []:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        masks[name] = path
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
    report = run_config(config, progress=_progress_bar("behavior"))
    with atomic_folder(args.out) as tmp:
        write_behavior(report, tmp)
    for line in report.notes:
        print(f"note: {line}", file=sys.stderr)
    cols = ["model", "experiment", "kl_forward", "kl_reverse", "accuracy", "fraction_reverted"]
    print(report.summary[cols].to_string(index=False))
    print(f"{report.tokens_per_second:.0f} tokens/s per model forward; wrote {args.out}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from subnetviz.cache import atomic_folder
    from subnetviz.experiments.drivers import NOT_AVAILABLE, run_drivers, verdicts

    _threads()
    results = run_drivers(args.zoo, args.preset, args.seeds, progress=_progress_bar("drivers"))
    verdict = verdicts(results)
    with atomic_folder(args.out) as tmp:
        results.to_csv(tmp / "results.csv", index=False)
        verdict.to_csv(tmp / "verdicts.csv", index=False)
    cols = ["factor", "value", "seed", "algorithm", "precision", "sparsity", "accuracy", "kl_forward"]
    print(results[cols].to_string(index=False))
    print(verdict.to_string(index=False))
    for algo, why in NOT_AVAILABLE.items():
        print(f"note: {algo}: {why}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    from subnetviz.jobs.worker import main_job

    _threads()
    return main_job(args.run_dir)


def cmd_train(args: argparse.Namespace) -> int:
    from subnetviz.jobs.worker import main_train

    _threads()
    return main_train(args.config, run_dir=args.run_dir)


def cmd_demo(args: argparse.Namespace) -> int:
    from subnetviz.demo.build import main

    _threads()
    return main(args.rest)


def cmd_runs(args: argparse.Namespace) -> int:
    from subnetviz.jobs.runner import JobRunner

    runner = JobRunner()
    runner.poll()
    if args.cancel:
        runner.cancel(args.cancel)
        print(f"cancelled {args.cancel}")
        return 0
    df = runner.list_runs()
    cols = ["id", "kind", "name", "status", "step", "total", "error"]
    print(df[cols].to_string(index=False, max_colwidth=60) if len(df) else "no runs")
    return 0


def cmd_mask(args: argparse.Namespace) -> int:
    from subnetviz.masks import import_bigram_pickle, load_mask_set, save_mask_set

    if args.action == "import-pickle":
        if not args.dst:
            raise SubnetvizError("mask import-pickle needs a destination: SRC.pickle DST.safetensors")
        ms = import_bigram_pickle(args.src)
        save_mask_set(args.dst, ms)
        print(f"wrote {args.dst}: {len(ms.masks)} tensors, density {ms.density:.6f}")
    else:
        ms = load_mask_set(args.src)
        print(
            json.dumps(
                {
                    "tensors": len(ms.masks),
                    "count": ms.count,
                    "numel": ms.numel,
                    "density": ms.density,
                    "metadata": ms.metadata,
                },
                indent=2,
                default=str,
            )
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from subnetviz.report.dashboard import analysis_report

    path = analysis_report(args.analysis_dir, args.out)
    print(f"wrote {path}")
    return 0


def app_script() -> Path:
    """The web app's entry script: the wheel's copy (``subnetviz/_app/app.py``), else the clone's ``app.py``."""
    package = Path(__file__).resolve().parent
    installed = package / "_app" / "app.py"  # the wheel maps app.py and views/ here (pyproject.toml)
    if installed.is_file():
        return installed
    clone = package.parent
    if (clone / "app.py").is_file() and (clone / "views").is_dir():
        return clone / "app.py"
    raise SubnetvizError(
        f"the web app's scripts are missing: neither {installed} nor {clone / 'app.py'} exists. "
        "Reinstall subnetviz from a wheel or run it from a clone."
    )


def streamlit_config_flags(app: Path, cwd: Path) -> list[str]:
    """The app's ``.streamlit/config.toml`` as ``--section.key value`` flags.

    Streamlit reads that file only from the working directory; started anywhere else, the app
    still gets its settings (headless, no usage statistics, upload limit, theme). A config file in
    the working directory is the user's own choice and is left to Streamlit instead.
    """
    import tomllib

    config = app.parent / ".streamlit" / "config.toml"
    if (cwd / ".streamlit" / "config.toml").is_file() or not config.is_file():
        return []
    flags = []
    for section, options in tomllib.loads(config.read_text()).items():
        for key, value in options.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            flags += [f"--{section}.{key}", text]
    return flags


def cmd_app(args: argparse.Namespace) -> int:
    app = app_script()
    env = dict(os.environ)
    if args.home:
        env["SUBNETVIZ_HOME"] = str(Path(args.home).expanduser().resolve())
    if args.roots:
        env["SUBNETVIZ_ROOTS"] = os.pathsep.join(str(Path(r).expanduser().resolve()) for r in args.roots)
    extra = args.streamlit_args[1:] if args.streamlit_args[:1] == ["--"] else args.streamlit_args
    # Later flags win: the packaged settings first, the user's own options last.
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        *streamlit_config_flags(app, Path.cwd()),
        "--server.port",
        str(args.port),
        *extra,
    ]
    print(
        f"subnetviz app: {app} on port {args.port} (SUBNETVIZ_HOME={env.get('SUBNETVIZ_HOME', 'default')})",
        file=sys.stderr,
        flush=True,
    )
    if os.name == "posix":
        os.execve(sys.executable, cmd, env)  # the server takes this process: signals reach it directly
    import subprocess

    return subprocess.call(cmd, env=env)


class _VersionAction(argparse.Action):
    """``--version``: the version and, from a clone, the git commit (computed only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from subnetviz.version import version_string

        print(version_string())
        parser.exit()


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
    w.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    w.set_defaults(func=cmd_app)

    a = sub.add_parser("analyze", help="update sparsity (+ spectra, overlap) of finetuned checkpoints vs a base")
    a.add_argument("base", help="HF folder, .safetensors file, index json, or cached hub id")
    a.add_argument("finetuned", nargs="+", help="one or more finetuned checkpoints")
    a.add_argument("--out", required=True, help="output folder (written only when the analysis succeeded)")
    a.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing non-empty --out (atomically, once the new result is complete)",
    )
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
    a.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    a.add_argument(
        "--spectra", action=argparse.BooleanOptionalAction, default=True, help="ranks/spectra of 2-D updates"
    )
    a.add_argument("--spectra-embeddings", action="store_true", help="also embedding-sized matrices (slow)")
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
    b.add_argument("base", help="base model folder (its tokenizer encodes the prompts)")
    b.add_argument("finetuned", nargs="+", help="one or more finetuned model folders")
    b.add_argument(
        "--prompts",
        nargs="+",
        help="JSONL with 'prompt' and optional 'answer', hf:NAME[:CONFIG]:SPLIT "
        "from the local datasets cache, or a save_to_disk folder (default: the zoo's eval sets)",
    )
    b.add_argument("--out", required=True, help="output folder: behavior.json, tokens.csv, prompts.csv, curves.csv")
    b.add_argument("--labels", nargs="+", help="a name per finetuned model")
    b.add_argument(
        "--mask",
        action="append",
        metavar="NAME=SPEC",
        help="a mask to revert inside/outside (repeat): "
        "a mask file, 'update' (each finetune's own update mask) or 'topk:F' (its top F of |Δ|)",
    )
    b.add_argument("--no-random", action="store_true", help="no random same-density control per mask")
    b.add_argument(
        "--curve",
        nargs="*",
        type=float,
        help="fractions of Δ reverted, |Δ| and random order (default 0 0.1 0.25 0.5 0.75 1; none: no curve)",
    )
    b.add_argument("--limit", type=int, help="at most this many prompts per file")
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda ...")
    b.set_defaults(func=cmd_behavior)

    x = sub.add_parser("experiment", help="experiment drivers: train small grids, sparsity vs each factor")
    x.add_argument("name", choices=["drivers"])
    x.add_argument("--out", required=True, help="output folder: results.csv, verdicts.csv")
    x.add_argument("--preset", default="quick", help="quick (≤ 5 min on 2 cores, default) or micro")
    x.add_argument("--seeds", type=int, default=1, help="seeds per grid point (default 1)")
    x.add_argument("--zoo", help="a built demo zoo (default SUBNETVIZ_HOME/zoo)")
    x.set_defaults(func=cmd_experiment)

    d = sub.add_parser("demo", help="the demo zoo: demo build [--preset micro] [--force]")
    d.add_argument("rest", nargs=argparse.REMAINDER)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="run one training job in the foreground")
    t.add_argument("--config", required=True, help="JSON training config")
    t.add_argument("--run-dir", help="run folder (default: a new folder under SUBNETVIZ_HOME/runs)")
    t.set_defaults(func=cmd_train)

    j = sub.add_parser("job", help="(internal) the worker process of one queued job")
    j.add_argument("run_dir")
    j.set_defaults(func=cmd_job)

    r = sub.add_parser("runs", help="list runs in the registry, or cancel one")
    r.add_argument("--cancel", metavar="RUN_ID")
    r.set_defaults(func=cmd_runs)

    m = sub.add_parser("mask", help="mask files: import-pickle SRC DST | info SRC")
    m.add_argument("action", choices=["import-pickle", "info"])
    m.add_argument("src")
    m.add_argument("dst", nargs="?")
    m.set_defaults(func=cmd_mask)

    rep = sub.add_parser("report", help="self-contained HTML dashboard of an analysis folder")
    rep.add_argument("analysis_dir")
    rep.add_argument("--out", required=True)
    rep.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    """The ``subnetviz`` command (console script) and ``python -m subnetviz``; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "app":
        args.streamlit_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except SubnetvizError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment: a read-only or full file system, a permission, a vanished file
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot complete{where}: {exc.strerror or exc} (errno {exc.errno}).", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
