"""What the demo zoo holds beyond its models, so every page shows real results on first open.

After the models are built (or found built), :func:`finish_zoo`:

- registers each finetune's own training log as a finished ``train`` run in the job registry
  (:func:`register_member_runs`): a run folder with the member's ``config.json`` (its
  :class:`~subnetviz.training.config.TrainConfig`, ``kind: train``), the per-step
  ``metrics.jsonl`` the build's training wrote (loss, reward, ...), and ``outputs/model``, a link
  to the zoo member, so the Training page shows its curves, config, final numbers and the
  outside-the-mask check;
- precomputes the Training page's grpo-s0 vs grpo-sub comparison into the analysis cache
  (:func:`subnetviz.demo.comparison.cached_compare_runs`);
- queues, as ordinary jobs of the registry, what takes minutes (:func:`start_background_jobs`):
  the bigram subnetwork mask of the base (fast preset, λ = 10), its "optimal" subnetwork mask and
  the continual-learning demo (permuted digits, 5 tasks, finetune / SupSup / SSNeT / ExSSNeT at
  5 % density), and the "what drives sparsity" grid (:mod:`subnetviz.experiments.drivers`, one
  seed of the quick preset; the micro preset on a micro zoo). They run in the background, one at a
  time (the registry's queue moves without any page open), and the pages pick their outputs up like
  any finished run's;
  :func:`pending_jobs` says which are still queued or running and about how long they need.

Everything is idempotent: a background job that is queued, running or has succeeded for this zoo
(same settings fingerprint) is found by name, a member run by the member and zoo fingerprint its
config names (:func:`_member_runs`), and not made again. What was made is recorded in the manifest
as :class:`~subnetviz.demo.manifest.ZooExtras`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from subnetviz.demo import MEMBERS
from subnetviz.demo.manifest import ZooExtras

LOGS = "logs"  # zoo folder of the members' training logs (one JobContext folder per member)
# Measured seconds of each background job on one CPU thread (benches/bench_zoo.py --wait, demo zoo,
# 2-core box at load average 15-33): the estimate of a queued job, before its own progress gives a
# better one. Bigram: 2174 steps to the stopping rule; optimal: 1858 steps; continual: 60 units;
# drivers: the quick grid's 19 points, 14 trainings (55 s at load average 0.5, 159 s at 8-10).
EXPECTED_SECONDS = {"bigram": 740.0, "optimal": 590.0, "continual": 320.0, "drivers": 160.0}
CONTINUAL_DEMO = {
    "benchmark": "permuted-digits",
    "methods": ["finetune", "supsup", "ssnet", "exssnet"],
    "density": [0.05],
    "tasks": 5,
    "seeds": [0, 1, 2],
}


def member_log_dir(root: Path, member_id: str) -> Path:
    return Path(root) / LOGS / member_id


def _tag(zoo) -> str:
    return f"demo zoo {zoo.manifest.fingerprint[:8]}"


def job_configs(zoo) -> dict[str, dict]:
    """The background jobs' configs, by key (``bigram``, ``optimal``, ``continual``, ``drivers``)."""
    from subnetviz.bigram.config import BigramJobConfig
    from subnetviz.supermask.config import ContinualConfig

    tag = _tag(zoo)
    out = {}
    for key in ("bigram", "optimal"):
        out[key] = BigramJobConfig(
            model=str(zoo.base),
            corpus="zoo",
            bigram=str(zoo.bigram_path),
            target=key,
            lam=10.0,
            preset="fast",
            device="cpu",
            name=f"{tag}: {key} mask of the base, λ=10 (fast)",
        ).to_dict()
    out["continual"] = ContinualConfig.from_dict(
        {**CONTINUAL_DEMO, "name": f"{tag}: permuted digits, 5 tasks, d=0.05"}
    ).to_dict()
    grid = "micro" if zoo.manifest.preset == "micro" else "quick"
    out["drivers"] = {
        "kind": "drivers",
        "zoo": str(zoo.root),
        "preset": grid,
        "seeds": 1,
        "name": f"{tag}: what drives sparsity, {grid} grid, 1 seed",
    }
    return out


def _by_name(runner) -> dict[str, object]:
    """Registry rows by name, the newest last (so it wins)."""
    return {r.name: r for r in runner.registry.rows() if r.name}


def start_background_jobs(zoo, runner) -> dict[str, str]:
    """Queue the bigram, optimal, continual and drivers jobs of ``zoo`` unless one of the same name is
    queued, running or succeeded; returns their run ids by key."""
    have = _by_name(runner)
    ids = {}
    for key, cfg in job_configs(zoo).items():
        rec = have.get(cfg["name"])
        if rec is not None and rec.status in ("queued", "running", "succeeded"):
            ids[key] = rec.id
        else:
            ids[key] = runner.submit(cfg, name=cfg["name"])
    return ids


def _link_to(target: Path, folder: Path) -> str:
    """What a link in ``folder`` to ``target`` holds: the relative way when both lie in one home (the runs
    folder's parent), so a copied or moved home's runs show its own zoo's models, not the original's; else the
    absolute path."""
    target, folder = Path(os.path.abspath(target)), Path(os.path.abspath(folder))
    home = folder.parents[2]  # folder is HOME/runs/ID/outputs
    if not target.is_relative_to(home):
        return str(target)
    # the way from where the link really lies (runs/ may be a link to another disk: the way from HOME/runs/ID would
    # dangle there), and absolute where it would not lead to the target
    way = os.path.relpath(os.path.realpath(target), os.path.realpath(folder))
    return (
        way
        if os.path.realpath(os.path.join(os.path.realpath(folder), way)) == os.path.realpath(target)
        else str(target)
    )


def _member_runs(runner, fingerprint: str) -> dict[str, object]:
    """The succeeded member runs of the zoo of ``fingerprint`` in the registry, by member, the newest last (so it
    wins): found by the ``zoo_member`` and ``zoo_fingerprint`` of their config and their id (what
    :func:`register_member_runs` names them), which a registry rebuilt from the run folders keeps
    (:mod:`subnetviz.jobs.rescan`); it keeps their name only where ``config.json`` holds it."""
    found = {}
    for r in runner.registry.rows():
        cfg = r.config or {}
        member = cfg.get("zoo_member")
        if (
            r.status == "succeeded"
            and cfg.get("zoo_fingerprint") == fingerprint
            and isinstance(member, str)
            and r.id.startswith(f"zoo-{fingerprint[:8]}-{member}-")
        ):
            found[member] = r
    return found


def _keep_name(runner, rec, name: str) -> None:
    """Make member run ``rec`` carry ``name`` in its row and in its run folder's ``config.json`` (as a submitted
    run's does), so a registry rebuilt from the folder names it so too. A home built before the name went into
    ``config.json`` gets it here, and a row rebuilt from such a folder (named as its training was) its name back."""
    from subnetviz.jobs.context import read_json, write_json

    cfg = {**(rec.config or {}), "name": name}
    if rec.elsewhere is None:  # (another home's folder is never written to)
        folder = Path(rec.run_dir)
        on_disk = read_json(folder / "config.json")
        if on_disk and on_disk.get("name") != name:
            with suppress(OSError):  # a folder that cannot be written: its row is named all the same
                write_json(folder / "config.json", {**on_disk, "name": name})
    if rec.name != name or rec.config != cfg:
        with runner.registry.transaction() as con:
            runner.registry.update(con, rec.id, name=name, config=cfg)


def register_member_runs(zoo, runner) -> dict[str, str]:
    """Each finetune's training log as a succeeded ``train`` run (made once per zoo build); run ids by member.
    A member's run already registered (:func:`_member_runs`) is kept, under its registry name."""
    from subnetviz.jobs.context import METRICS_FILE, STATUS_FILE
    from subnetviz.jobs.registry import RunRecord

    have = _member_runs(runner, zoo.manifest.fingerprint)
    ids = {}
    for recipe in MEMBERS:
        member = zoo.manifest.member(recipe.id)
        name = f"{_tag(zoo)}: {recipe.id} ({recipe.label})"
        if recipe.id in have:
            _keep_name(runner, have[recipe.id], name)
            ids[recipe.id] = have[recipe.id].id
            continue
        model = zoo.root / member.path
        log = member_log_dir(zoo.root, recipe.id) / METRICS_FILE
        cfg = {"kind": "train", **json.loads((model / "train_config.json").read_text())}
        # (the registry name in config.json too, as a submitted run's: a registry rebuilt from the folder keeps it)
        cfg.update(zoo_member=recipe.id, zoo_fingerprint=zoo.manifest.fingerprint, name=name)
        run_id = f"zoo-{zoo.manifest.fingerprint[:8]}-{recipe.id}-{int(time.time())}"
        run_dir = runner.registry.folder(run_id)
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        rows = log.read_text().splitlines() if log.is_file() else []
        (run_dir / METRICS_FILE).write_text("".join(line + "\n" for line in rows))
        last = json.loads(rows[-1]) if rows else {}
        metrics = {k: v for k, v in last.items() if k not in ("time", "step", "total")}
        (run_dir / STATUS_FILE).write_text(
            json.dumps({"step": member.steps, "total": member.steps, "metrics": metrics, "state": "succeeded"})
        )
        (run_dir / "log.txt").write_text(f"trained by `python -m subnetviz demo build` as zoo member {recipe.id}\n")
        (run_dir / "outputs").mkdir()
        os.symlink(_link_to(model, run_dir / "outputs"), run_dir / "outputs" / "model", target_is_directory=True)
        now = time.time()
        created = now - (member.train_seconds or 0.0)
        rec = RunRecord(
            run_id, "train", name, "succeeded", None, None, created, created, now,
            member.steps, member.steps, metrics, None, str(run_dir), cfg,
        )  # fmt: skip
        with runner.registry.transaction() as con:
            runner.registry.insert(con, rec)
        ids[recipe.id] = run_id
    return ids


def finish_zoo(zoo, runs_root: str | os.PathLike | None = None, *, background: bool = True) -> ZooExtras:
    """Register the member runs, precompute the comparison, queue the background jobs (see the module doc)."""
    from subnetviz.demo.comparison import cached_compare_runs, comparison_key
    from subnetviz.jobs.runner import JobRunner

    runner = JobRunner(runs_root, max_concurrent=1, gpus=[])
    members = register_member_runs(zoo, runner)
    full, sub = zoo.member_path("grpo-s0"), zoo.member_path("grpo-sub")
    cached_compare_runs(full, sub, zoo.base)
    jobs = start_background_jobs(zoo, runner) if background else {}
    return ZooExtras(
        runs_root=str(runner.root),
        member_runs=members,
        jobs=jobs,
        comparison={"full": "grpo-s0", "sub": "grpo-sub", "key": comparison_key(full, sub, zoo.base)},
    )


@dataclass(frozen=True)
class Pending:
    """A background job of the zoo not finished yet: ``eta_s`` about how long until it is."""

    key: str
    run_id: str
    status: str
    eta_s: float


def pending_jobs(zoo, runner) -> list[Pending]:
    """The zoo's background jobs still queued or running, in queue order, each with an estimate of the
    seconds until it is done (its own progress when running; the measured time of what runs before it
    and of itself when queued)."""
    extras = zoo.manifest.extras
    if extras is None or not extras.jobs:
        return []
    runner.poll()
    out, ahead, now = [], 0.0, time.time()
    recs = sorted(((k, runner.get(i)) for k, i in extras.jobs.items()), key=lambda kr: kr[1].created)
    for key, rec in recs:
        if rec.finished:
            continue
        left = EXPECTED_SECONDS.get(key, 300.0)
        if rec.status == "running" and rec.step and rec.total and rec.started:
            per_step = (now - rec.started) / rec.step
            left = per_step * max(rec.total - rec.step, 0)
        ahead += left
        out.append(Pending(key, rec.id, rec.status, ahead))
    return out


def clear_logs(root: Path, member_id: str) -> Path:
    """An empty log folder for ``member_id``'s training (a rerun starts a fresh log)."""
    d = member_log_dir(root, member_id)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


WHAT = {
    "bigram": "bigram subnetwork mask of the base (fast preset, λ = 10)",
    "optimal": "optimal subnetwork mask of the base (fast preset, λ = 10)",
    "continual": "continual-learning demo (permuted digits, 5 tasks, 5 % density)",
    "drivers": "training grid of What drives sparsity (one seed)",
}


def zoo_job_note(zoo, runner, key: str) -> str | None:
    """A sentence for a page while the zoo's background job ``key`` is queued or running: what is
    being built and about when it is ready; None when there is no such job or it has finished."""
    if zoo is None or zoo.manifest.extras is None:
        return None
    from subnetviz.errors import JobError

    try:
        pending = {p.key: p for p in pending_jobs(zoo, runner)}
    except JobError:  # a registry without the zoo's runs (another runs folder): nothing to say
        return None
    p = pending.get(key)
    if p is None:
        return None
    minutes = max(1, round(p.eta_s / 60))
    where = "running" if p.status == "running" else "queued behind the zoo's other jobs"
    return (
        f"The demo zoo's {WHAT.get(key, key)} is being built in the background ({where}) — ready in "
        f"~{minutes} min; this page picks it up when it is done."
    )
