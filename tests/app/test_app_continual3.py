"""The Continual page (third review): a method whose accuracies never drop once a task is learned reads 0
forgetting, with ExSSNeT's code's variant under its own name and its source cells (a task just before it was
trained) shown in the heatmaps; a failed continual run is said on this page, in one line; every chart title
writes the density one way ("density 5 %"), on the page and in its export."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from subnetviz.supermask.job import save_result
from subnetviz.supermask.metrics import ContinualResult, RunResult
from tests.app_fixtures import add_finished_run, decode, home_of_its_own, open_page, plotly_specs

pytestmark = pytest.mark.slow

# SupSup: every column constant from the diagonal down; tasks 2-4 score more just before they are trained
# (0.60, 0.55, 0.52) than after (0.48, 0.50, 0.51). The old forgetting read (0 + 0.12 + 0.05) / 3.
NEVER_FORGETS = np.array(
    [
        [0.90, 0.60, 0.40, 0.30],
        [0.90, 0.48, 0.55, 0.35],
        [0.90, 0.48, 0.50, 0.52],
        [0.90, 0.48, 0.50, 0.51],
    ]
)
RUN = "cl3-never-forgets"


@pytest.fixture(scope="module")
def app_home(micro_zoo, tmp_path_factory):
    """A home of its own (its registry gets failed runs the other modules must not see), with one finished run:
    SupSup at density 5 % with KKT rows and task inference, as a job writes it."""
    with home_of_its_own(micro_zoo, tmp_path_factory, "continual3-app") as home:
        from subnetviz.jobs.runner import JobRunner

        runner = JobRunner()
        folder = add_finished_run(runner, RUN, "continual", "never forgets", {"kind": "continual"}, time.time() - 3600)
        gen = torch.Generator().manual_seed(0)
        masks = tuple({"layer1.weight": torch.rand(6, 4, generator=gen) < 0.3} for _ in range(4))
        knn = tuple(
            {"task": t, "source_task": i, "knn_acc": 0.4 + 0.1 * i, "chance": 0.5, "chosen": False}
            for t in range(1, 4)
            for i in range(t)
        )
        inference = tuple(
            {"samples": 1, "task": j, "trials": 4, "correct": 2, "accuracy": 0.5, "min_entropy_accuracy": 0.75}
            for j in range(4)
        )
        run = RunResult(
            "permuted-digits", "supsup", "SupSup", False, 0.05, 0, NEVER_FORGETS, np.full(4, 0.5), masks, knn, inference
        )
        save_result(ContinualResult("permuted-digits", (run,), {}), folder / "outputs")
        yield home


def _ok(at):
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _figure(at, title_start: str) -> dict:
    (spec,) = [s for s in plotly_specs(at) if s["layout"]["title"]["text"].startswith(title_start)]
    return spec


def test_a_method_that_never_drops_reads_no_forgetting_and_the_variant_is_named(app_home):
    at = _ok(open_page("continual", cl_run=RUN))
    _, table = at.session_state["_tables"]["cl-summary"]
    (row,) = table.to_dict("records")
    assert row["forgetting_mean"] == 0.0  # it read 0.0567: task 2's 0.60 before it was trained, 0.48 after
    assert row["forgetting_with_untrained_mean"] == pytest.approx(((0.60 - 0.48) + (0.55 - 0.50) + 0.0) / 3)
    bars = _figure(at, "Forgetting")["data"][0]
    assert decode(bars["y"]).tolist() == [0.0]
    said = " ".join(c.value.replace("\\", "").replace("\u200b", "") for c in at.caption)
    assert "forgetting_with_untrained: as ExSSNeT's code computes it" in said
    assert "never forgets what it learned" in said


def test_the_cells_just_before_training_are_shown_with_their_numbers(app_home):
    """ExSSNeT's code counts A[t, t+1] in its forgetting; those cells were grey with no number."""
    at = _ok(open_page("continual", cl_run=RUN, cl_tab="After each task"))
    spec = _figure(at, "SupSup, density 5 %, seed 0")
    trained, before = spec["data"]
    z = np.asarray(decode(before["z"]), dtype=float)
    want = np.full((4, 4), np.nan)
    want[[0, 1, 2], [1, 2, 3]] = [60.0, 55.0, 52.0]
    np.testing.assert_allclose(z, want, atol=1e-9)
    assert np.all(np.isnan(np.asarray(decode(trained["z"]), dtype=float)[[0, 1, 2], [1, 2, 3]]))  # not twice
    assert [before["text"][t][t + 1] for t in range(3)] == ["60.0", "55.0", "52.0"]
    assert "before it was trained" in before["hovertemplate"] and "forgetting_with_untrained" in before["hovertemplate"]
    assert "just before it was trained" in spec["layout"]["title"]["text"]


DENSITY = re.compile(r"density [^,)<]*")


def _densities(titles) -> list[str]:
    return [m for t in titles for m in DENSITY.findall(t)]


def test_every_title_writes_the_density_one_way(app_home, exports):
    titles = []
    for tab in ("Summary", "Capacity", "KKT", "Task inference"):
        at = _ok(open_page("continual", cl_run=RUN, cl_tab=tab))
        titles += [s["layout"]["title"]["text"] for s in plotly_specs(at)]
    shown = _densities(titles)
    # the accuracy bars, forgetting, the capacity and exclusive-share curves, the KKT and the task inference charts:
    # "0.05" and "5%" before
    assert len(shown) == 6 and set(shown) == {"density 5 %"}, titles
    page = exports["Continual learning"]()
    dec, exported = __import__("json").JSONDecoder(), []
    for m in re.finditer(r'Plotly\.newPlot\(\s*"sv-figure-\d+",\s*', page):
        _, end = dec.raw_decode(page, m.end())
        layout, _ = dec.raw_decode(page, re.compile(r"\s*,\s*").match(page, end).end())
        exported.append((layout.get("title") or {}).get("text") or "")
    assert len(_densities(exported)) >= 4 and set(_densities(exported)) == {"density 5 %"}, exported


def _add_run(home: Path, run_id: str, status: str, ended: float, error: str | None, name: str | None = None):
    from subnetviz.jobs.registry import RunRecord
    from subnetviz.jobs.runner import JobRunner

    runner = JobRunner()
    rec = RunRecord(
        run_id, "continual", name or run_id, status, None, None, ended - 5, ended - 4, ended, 1, 4, {}, error,
        str(Path(runner.root) / run_id), {"kind": "continual"},
    )  # fmt: skip
    with runner.registry.transaction() as con:
        runner.registry.insert(con, rec)
    return runner


def _drop(runner, ids) -> None:
    with runner.registry.transaction() as con:
        con.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in ids])


def test_a_failed_run_is_said_on_the_page_in_one_line(app_home):
    """A run that failed after the last success: its error, one line, paths as the pages show them; a failure
    before that success, and a cancelled run, are not said again. The older finished run is still shown."""
    now = time.time()
    where = app_home / "runs" / "cl3-failed-new" / "data.bin"
    runner = _add_run(
        app_home, "cl3-failed-new", "failed", now, f"RuntimeError: something broke in task 2\n  in {where}"
    )
    runner = _add_run(app_home, "cl3-failed-old", "failed", now - 7200, "RuntimeError: an old failure")
    runner = _add_run(app_home, "cl3-cancelled", "cancelled", now, "cancelled by the user")
    try:
        at = open_page("continual", cl_run=RUN)
        assert not at.exception
        errors = [e.value.replace("\\", "").replace("\u200b", "") for e in at.error]
        assert len(errors) == 1, errors
        assert errors[0].startswith(
            "Run cl3-failed-new · cl3-failed-new failed: RuntimeError: something broke in task 2"
        )
        assert "\n" not in errors[0] and str(app_home) not in errors[0] and "data.bin" in errors[0]
        assert at.selectbox(key="cl_run").value == RUN  # the finished run is still shown below
        assert len(plotly_specs(at)) >= 2
    finally:
        _drop(runner, ["cl3-failed-new", "cl3-failed-old", "cl3-cancelled"])
    assert not open_page("continual", cl_run=RUN).error  # gone with its row


def test_a_failed_run_with_no_finished_one_is_said_above_the_demo_offer(micro_zoo, tmp_path_factory, app_home):
    with home_of_its_own(micro_zoo, tmp_path_factory, "continual3-failed-only") as home:
        runner = _add_run(home, "cl3-only", "failed", time.time(), "ConfigError: no such benchmark", name="my run")
        try:
            at = open_page("continual")
            assert not at.exception
            errors = [e.value.replace("\\", "").replace("\u200b", "") for e in at.error]
            assert errors == ["Run my run · cl3-only failed: ConfigError: no such benchmark"]
            assert any("No finished continual-learning run yet" in i.value for i in at.info)
        finally:
            _drop(runner, ["cl3-only"])


def test_the_launch_form_writes_densities_in_percent(app_home):
    """The launch form offered densities as 0.05 while the results' tables and titles write 5 %."""
    at = _ok(open_page("continual", cl_view="Launch"))
    (picker,) = [m for m in at.multiselect if m.label.startswith("Mask density")]
    assert picker.format_func(0.05) == "5 %" and picker.format_func(0.3) == "30 %"
    assert picker.value == [0.05]  # (the values the config takes are unchanged)
