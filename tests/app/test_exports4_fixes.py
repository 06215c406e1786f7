"""Continual figures name the setting they were drawn at (exports review 4).

A figure downloaded for a paper carries only its title: the forgetting and exclusive-share charts named no
density, the owner image neither density nor seed, and the accuracy matrices only the seed, so two figures of one
run at 5 % and 10 % came out with the same title.
"""

from __future__ import annotations

import pytest

from tests.app.test_app_continual_review import _run
from tests.app_fixtures import add_finished_run, open_page, plotly_specs

pytestmark = pytest.mark.slow


@pytest.fixture
def two_densities(app_env):
    from subnetviz.jobs.runner import JobRunner
    from subnetviz.supermask.job import save_result
    from subnetviz.supermask.metrics import ContinualResult

    runner = JobRunner()
    folder = add_finished_run(runner, "cl-two", "continual", "two densities", {"kind": "continual"}, created=1e9)
    runs = [_run("permuted-digits", "finetune", "finetune", 1.0, 0.9)]
    runs += [_run("permuted-digits", "SupSup", "supsup", d, 0.5 + d) for d in (0.05, 0.1)]
    save_result(ContinualResult("permuted-digits", tuple(runs), {}), folder / "outputs")
    return "cl-two"


def _titles(at) -> list[str]:
    return [spec["layout"]["title"]["text"] for spec in plotly_specs(at)]


def test_every_continual_figure_names_its_density_and_seed(two_densities):
    at = open_page("continual", cl_run=two_densities, cl_density="10 %", cl_tab="Summary")
    assert not at.exception and not at.error, [e.value for e in at.error]
    forgetting = [t for t in _titles(at) if t.startswith("Forgetting")]
    assert forgetting == [
        "Forgetting (max drop once learned)<br><sup>at density 10 % (finetune: dense)</sup><br><sup>one seed</sup>"
    ]

    at = open_page("continual", cl_run=two_densities, cl_density="10 %", cl_tab="After each task")
    assert not at.exception and not at.error, [e.value for e in at.error]
    matrices = sorted(t.split("<br>")[0] for t in _titles(at) if "seed" in t)
    assert matrices == ["SupSup, density 10 %, seed 0", "finetune, dense, seed 0"], _titles(at)

    at = open_page("continual", cl_run=two_densities, cl_density="10 %", cl_tab="Capacity")
    assert not at.exception and not at.error, [e.value for e in at.error]
    titles = _titles(at)
    assert "Exclusive share of each task's mask<br><sup>density 10 %, whole model, seed 0</sup>" in titles, titles
    assert "owner task of layer1.weight<br><sup>SupSup, 10 %, seed 0</sup>" in titles, titles
