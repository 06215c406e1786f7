"""The fifth browser review, finding 2: "Figure for a paper" named a run's curves "Run demo zoo 0f834756: sft (SFT on
gold answers the base · gets wrong (A)) · zoo-…" and "… λ=10 (fast) · · 20261206-…": the title was wrapped at any
space, and the picker reads each line break as " · ". The title breaks at its separators where it can, and the
picker names the chart by the run's name as it is (tests/unit/test_browser5_fixes.py: the lines)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.app_fixtures import add_finished_run, open_page, plotly_specs

NAMES = {  # the review's two runs, as the Run picker names them ("name · id")
    "b5-sft": "demo zoo 0f834756: sft (SFT on gold answers the base gets wrong (A)) · b5-sft",
    "b5-mask": "demo zoo 0f834756: optimal mask of the base, λ=10 (fast) · b5-mask",
    "b5-odd": "a <v1> & 50%{x} run · b5-odd",  # (drawn as text: its name whole in the picker too)
}


def _metrics(run_dir: Path) -> None:
    rows = [{"time": 1.0, "total": 4, "step": s, "loss": 1.0 / s} for s in range(1, 5)]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_picker_names_a_run_s_curves_by_the_run_s_name(tmp_path):
    from subnetviz.jobs.runner import JobRunner
    from subnetviz.report.training import curves_figure
    from subnetviz.ui import _chart_name

    runner = JobRunner(tmp_path / "runs", max_concurrent=1)
    for run_id, label in NAMES.items():
        _metrics(add_finished_run(runner, run_id, "train", label.rpartition(" · ")[0], {"kind": "train"}))
        fig = curves_figure(runner, [run_id], NAMES)
        assert _chart_name(fig, "key") == f"Run {label}"
        assert "· ·" not in fig.layout.title.text and "<br>·" not in fig.layout.title.text
    mask = curves_figure(runner, ["b5-mask"], NAMES).layout.title.text
    assert mask == "Run demo zoo 0f834756: optimal mask of the base, λ=10 (fast)<br>b5-mask"  # at its separator


def test_a_title_without_a_name_of_its_own_reads_its_breaks_as_separators():
    """Bigram's titles break only at " · " separators (figures.bigram.with_setting), and its picker names stay."""
    import plotly.graph_objects as go

    from subnetviz.ui import _chart_name

    fig = go.Figure(layout_title_text="Bigram statistics<br><sup>mask a · run 1</sup>")
    assert _chart_name(fig, "key") == "Bigram statistics · mask a · run 1"
    assert _chart_name(go.Figure(layout_meta=[1, 2]), "key") == "key"  # (meta of another kind: no name)


@pytest.mark.slow
def test_the_training_page_s_figure_picker_names_the_run(app_env, runner):
    made = []
    try:
        for run_id, label in NAMES.items():
            made.append(run_id)
            run_dir = add_finished_run(runner, run_id, "train", label.rpartition(" · ")[0], {"kind": "train"})
            _metrics(run_dir)
        at = open_page("training", tr_view="Runs", tr_run="b5-sft")
        assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
        titles = [s["layout"]["title"]["text"] for s in plotly_specs(at)]
        assert any(t.startswith("Run demo zoo 0f834756: sft") and "<br>" in t for t in titles), titles
        (chart,) = [s for s in at.selectbox if s.label == "Chart"]
        assert f"Run {NAMES['b5-sft']}" in chart.options, chart.options
    finally:
        with runner.registry.transaction() as con:
            con.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in made])
        for i in made:
            shutil.rmtree(Path(runner.root) / i, ignore_errors=True)
