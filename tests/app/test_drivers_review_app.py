"""The What-drives-sparsity page after review D1-D7, on planted grids in the app's registry: what the page says
about PPO comes from the grid shown (not from the server's environment), a failed or skipped point is named
with its reason, a grid of the older format says what it measured differently, the optimizer axis names each
learning rate, and an empty grid says it has no runs. The texts expected are written out here."""

import shutil
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from tests.app_fixtures import add_finished_run, open_page

pytestmark = pytest.mark.slow

BASE = {"seed": 0, "algorithm": "grpo", "accuracy": 0.5, "kl_forward": 0.01, "learning_rate": 1e-5, "steps": 8}
BASE |= {"beta": 0.0, "max_grad_norm": 1.0, "optimizer": "adamw_torch", "data": "task", "train_seconds": 1.0}


def _grid(extra: list[dict], version: bool = True) -> pd.DataFrame:
    """A planted grid: SFT, DPO and PPO on the algorithm axis and the two optimizers (each with its bf16 and fp32
    rows), plus ``extra`` rows; without ``version``, in the older format (no status, note, grid_version)."""
    rows = [
        {"factor": "algorithm", "value": a, "algorithm": a, "precision": p, "sparsity": s}
        for a, s in (("sft", 0.6), ("dpo", 0.7), ("ppo", 0.8))
        for p in ("bf16", "fp32")
    ]
    sgd = {"optimizer": "sgd", "learning_rate": 5e-3, "momentum": 0.9} if version else {"optimizer": "sgd"}
    rows += [
        {"factor": "optimizer", "value": v, "precision": p, "sparsity": 0.9, **o}
        for v, o in (("adamw", {}), ("sgd", sgd))
        for p in ("bf16", "fp32")
    ]
    df = pd.DataFrame([{**BASE, "status": "done", "note": "", "grid_version": 2, **r} for r in rows + extra])
    return df if version else df.drop(columns=["status", "note", "grid_version", "momentum"], errors="ignore")


@pytest.fixture
def planted_grid(app_env):
    """Write a grid as the newest finished drivers run; removed from the shared home afterwards."""
    from subnetviz.jobs.runner import JobRunner

    runner, ids = JobRunner(), []

    def plant(results: pd.DataFrame) -> None:
        run_id = f"review-drivers-{uuid.uuid4().hex[:8]}"  # a new folder: the page caches a grid by its path
        run_dir = add_finished_run(runner, run_id, "drivers", run_id, created=time.time() + 9000 + len(ids))
        ids.append(run_id)
        (run_dir / "outputs").mkdir(parents=True, exist_ok=True)
        results.to_csv(run_dir / "outputs" / "results.csv", index=False)

    yield plant
    with runner.registry.transaction() as con:
        con.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in ids])
    for i in ids:
        shutil.rmtree(Path(runner.root) / i, ignore_errors=True)


def _texts(at) -> list[str]:
    return [_read(e.value) for kind in ("caption", "warning", "info", "markdown") for e in getattr(at, kind)]


def _read(text: str) -> str:
    """An element's text as read (the page escapes Markdown and breaks would-be links with zero-width spaces)."""
    return text.replace("\\", "").replace("\u200b", "")


def test_ppo_notes_come_from_the_grid_shown(planted_grid, monkeypatch, tmp_path):
    """Served where PPO cannot run, a grid with a PPO point said "PPO: not run: TRL 0.29.1 … is not installed"
    beside its PPO bar; it now says its PPO clipping value has no effect, and each optimizer's rate."""
    monkeypatch.setenv("SUBNETVIZ_PPO_TRL", str(tmp_path / "no-overlay"))
    planted_grid(_grid([]))
    at = open_page("drivers")
    assert not at.exception and not at.error, [e.value for e in at.error]
    text = " ".join(_texts(at))
    assert "not installed" not in text and "not run" not in text
    assert "PPO: its max_grad_norm has no effect (TRL's PPO loop does not clip gradients)." in _texts(at)
    assert "Optimizer axis: adamw at learning rate 1e-05; sgd at learning rate 0.005 with momentum 0.9." in _texts(at)
    assert not at.warning  # a grid of this format, every point done: nothing to warn about


def test_a_failed_and_a_skipped_point_are_named_with_their_reasons(planted_grid):
    why = "RuntimeError: PPO run failed (exit 1): ImportError: cannot import name 'PPOConfig'"
    grid = _grid([])
    grid = grid[grid["algorithm"] != "ppo"]
    failed = {**BASE, "factor": "algorithm", "value": "ppo", "algorithm": "ppo", "status": "failed", "note": why}
    skipped = [
        {**BASE, "factor": "data", "value": d, "algorithm": "sft", "data": d, "status": "not run", "note": "no sets"}
        for d in ("on_policy", "gold")
    ]
    planted_grid(pd.concat([grid, pd.DataFrame([failed, *skipped]).assign(grid_version=2)]))
    at = open_page("drivers")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [_read(w.value) for w in at.warning] == [f"algorithm=ppo failed: {why}"]
    assert "data=on_policy, data=gold not run: no sets" in _texts(at)
    assert any("observed: not measured: no sets." in t for t in _texts(at))


def test_an_older_grid_says_what_it_measured_differently(planted_grid):
    planted_grid(_grid([], version=False))
    at = open_page("drivers")
    assert not at.exception and not at.error, [e.value for e in at.error]
    (warning,) = [_read(w.value) for w in at.warning]
    assert warning == (
        "Trained before grid format 2 (this page reads it as is): its PPO point used a learning rate decaying "
        "linearly to 0 (the other runs a constant one); its DPO row's β reads 0, but DPO trained with β 0.1."
    )
    assert any(
        t.startswith("Optimizer axis: adamw at learning rate 1e-05; sgd at learning rate 1e-05: ") for t in _texts(at)
    )


def test_an_empty_grid_says_so(planted_grid):
    """A header-only results.csv captioned "0 seed(s) per point" above empty verdicts."""
    planted_grid(_grid([]).iloc[:0])
    at = open_page("drivers")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [i.value for i in at.info] == ["This grid holds no runs: its results.csv has no rows."]
    assert not any("seed(s) per point" in t for t in _texts(at))
