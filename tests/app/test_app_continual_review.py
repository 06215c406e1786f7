"""The Continual page (review): a run saved at two densities it cannot tell apart is one clear error line, not a
bug notice; an arithmetic-text run made on the old data (some test prompts were training prompts) says so."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from subnetviz.supermask.job import save_result
from subnetviz.supermask.metrics import ContinualResult, RunResult
from tests.app_fixtures import add_finished_run, open_page

pytestmark = pytest.mark.slow


def _run(benchmark: str, label: str, method: str, density: float, a: float) -> RunResult:
    acc = np.array([[a, 0.1], [a, a]])
    gen = torch.Generator().manual_seed(int(1e7 * density))
    masks = (
        () if method == "finetune" else tuple({"layer1.weight": torch.rand(4, 4, generator=gen) < 0.3} for _ in "ab")
    )
    return RunResult(benchmark, method, label, False, density, 0, acc, np.full(2, 0.1), masks)


@pytest.fixture
def planted(app_env):
    """Finished continual runs written as a job writes them: by id, (benchmark, densities, result config)."""
    from subnetviz.jobs.runner import JobRunner

    runner = JobRunner()
    plan = {
        "cl-near-densities": ("permuted-digits", (0.05, 0.0500001), {}),
        "cl-text-old-data": ("arithmetic-text", (0.05,), {"benchmark": "arithmetic-text", "hash": "old"}),
        "cl-text-new-data": ("arithmetic-text", (0.05,), {"hash": "new", "data_version": 2}),
    }
    for i, (run_id, (bench, densities, config)) in enumerate(plan.items()):
        folder = add_finished_run(runner, run_id, "continual", run_id, {"kind": "continual"}, created=1e9 + i)
        runs = [_run(bench, "finetune", "finetune", 1.0, 0.9)]
        runs += [_run(bench, "SupSup", "supsup", d, 0.5 + d) for d in densities]
        save_result(ContinualResult(bench, tuple(runs), config), folder / "outputs")
    yield
    with runner.registry.transaction() as con:
        con.executemany("DELETE FROM runs WHERE id = ?", [(r,) for r in plan])
    for run_id in plan:
        shutil.rmtree(runner.root / run_id)


def _bug_notices(at) -> list[str]:
    return [e.value for e in at.error if "went wrong" in e.value] + [str(e.value) for e in at.exception]


@pytest.mark.parametrize("tab", ["Summary", "After each task"])
def test_a_run_at_densities_that_cannot_be_told_apart_is_one_error_line(planted, tab):
    """densities 0.05 and 0.0500001 (accepted before): both tabs showed 'Something went wrong … This is a bug'."""
    at = open_page("continual", cl_run="cl-near-densities", cl_density="0.05", cl_tab=tab)
    assert _bug_notices(at) == []
    errors = [e.value.replace("\\", "") for e in at.error]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith("densities 0.05 and 0.0500001 are too close to tell apart")
    assert "launch it again" in errors[0]


def test_an_arithmetic_text_run_on_the_old_data_says_so(planted):
    at = open_page("continual", cl_run="cl-text-old-data")
    assert _bug_notices(at) == [] and not at.error
    assert any("test prompts were also training prompts" in w.value for w in at.warning)
    assert len(at.dataframe) >= 1  # the results are still shown below the note
    at = open_page("continual", cl_run="cl-text-new-data")
    assert _bug_notices(at) == [] and not at.error
    assert not any("training prompts" in w.value for w in at.warning)
