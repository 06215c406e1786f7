"""Fixes from the third browser walk (review), on the pages and the figures they draw.

- Behaviour named the zoo's mask file "zoo grpo-s0" where the sidebar and Overlap name it "masks/grpo-seed0"; picked
  in the sidebar too, it was offered under both names and, with both chosen, computed and tabulated twice.
- The runs tables (Training › Runs, Bigram › Train a mask) showed created/ended as HH:MM:SS in UTC, unsaid, with no
  date, though runs span days.
- Bigram › Overlap's table rounded small shares to one significant digit (0.09 % for 0.0854 %).
- Drivers › By factor drew its per-seed dots with no legend entry, and nothing said the bar is their mean.
- Bigram's covariance heatmaps floated above their x axis (the square aspect grew the y range, not the domain).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.app_fixtures import add_finished_run, home_of_its_own, open_page


@pytest.fixture(scope="module")
def home(micro_zoo, tmp_path_factory):
    with home_of_its_own(micro_zoo, tmp_path_factory, "walk3-pages") as h:
        yield h


def _sidebar_label_of_the_zoo_mask(home: Path) -> tuple[str, str]:
    """(the zoo's first mask's manifest name, the label the sidebar's saved masks give its file: "masks/<stem>")."""
    manifest = json.loads((home / "zoo" / "manifest.json").read_text())
    name, entry = next(iter(manifest["masks"].items()))
    return name, f"masks/{Path(entry['path']).stem}"


@pytest.mark.slow
def test_behaviour_offers_the_zoo_mask_once_under_the_sidebars_name(home):
    name, label = _sidebar_label_of_the_zoo_mask(home)
    at = open_page(
        "behavior", ft=["grpo-s0"], masks=[label], bh_masks=[label, f"zoo {name}"], bh_limit="16", bh_curve="false"
    )
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    masks = at.multiselect(key="bh_masks")
    # one file, one entry, named as the sidebar names it (was ["zoo grpo-s0", "masks/grpo-seed0"])
    assert [o for o in masks.options if o != "MoE routers (swap)"] == [label]
    assert masks.value == [label]
    summary = next(d.value for d in at.dataframe if {"model", "experiment", "kl_forward"} <= set(d.value.columns))
    experiments = list(summary["experiment"])
    assert len(experiments) == len(set(experiments)), experiments  # no revert experiment tabulated twice
    assert any(label in e for e in experiments) and not any(f"zoo {name}" in e for e in experiments)


@pytest.mark.slow
def test_a_fresh_visit_pre_selects_the_zoo_mask_under_the_sidebars_name(home):
    _, label = _sidebar_label_of_the_zoo_mask(home)
    at = open_page("behavior", base="base", ft=["sft"], bh_limit="16", bh_curve="false")
    assert not at.exception, [e.message for e in at.exception]
    assert at.multiselect(key="bh_masks").value == [label]


@pytest.mark.parametrize(
    ("page", "kind", "query", "table"),
    [
        ("training", "train", {"tr_view": "Runs"}, "runs-table"),
        ("bigram", "bigram_mask", {"bg_view": "Train a mask"}, "bg-runs"),
    ],
)
def test_the_runs_tables_show_the_date_and_the_zone(home, page, kind, query, table):
    import shutil

    from subnetviz.jobs.runner import JobRunner

    runner = JobRunner()
    evening = datetime(2026, 12, 5, 22, 14, 21, tzinfo=UTC).timestamp()
    morning = datetime(2026, 12, 6, 3, 23, 20, tzinfo=UTC).timestamp()
    ids = [f"20261205-221421-{kind}-w3a", f"20261206-032320-{kind}-w3b"]
    for run_id, t in zip(ids, (evening, morning), strict=True):
        add_finished_run(runner, run_id, kind, run_id, created=t)
    try:
        at = open_page(page, **query)
        assert not at.exception, [e.message for e in at.exception]
        (df,) = [d.value for d in at.dataframe if "id" in d.value.columns and set(ids) <= set(d.value["id"])]
        rows = df.set_index("id")
        assert rows.loc[ids[0], "created"] == "2026-12-05 22:14 UTC"
        assert rows.loc[ids[1], "created"] == "2026-12-06 03:23 UTC"
        assert rows.loc[ids[1], "ended"] == "2026-12-06 03:23 UTC"
        # sorted as text, the evening before comes first (as HH:MM:SS, 22:14:21 sorted after 03:23:20)
        assert sorted(rows.loc[ids, "created"]) == ["2026-12-05 22:14 UTC", "2026-12-06 03:23 UTC"]
        assert at.session_state["_tables"][table][1].set_index("id").loc[ids[0], "created"] == "2026-12-05 22:14 UTC"
    finally:
        with runner.registry.transaction() as con:
            con.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in ids])
        for i in ids:
            shutil.rmtree(Path(runner.root) / i, ignore_errors=True)


def test_drivers_seed_dots_are_named_in_the_legend_with_what_the_bar_is():
    from subnetviz.figures.drivers import factor_panels

    rows = [
        {"factor": f, "value": v, "seed": s, "precision": "bf16", "sparsity": 0.5 + 0.01 * s}
        for f, values in (("learning_rate", ("1e-5", "1e-4")), ("steps", ("1", "2")))
        for v in values
        for s in (0, 1)
    ]
    fig = factor_panels(pd.DataFrame(rows))
    dots = [t for t in fig.data if t.type == "scatter"]
    assert len(dots) == 2  # the seeds of each of the two panels
    named = [t for t in dots if t.showlegend]
    assert len(named) == 1 and "seed" in named[0].name and "mean over seeds" in named[0].name
    assert len({t.legendgroup for t in dots}) == 1 and dots[0].legendgroup == named[0].name
    assert fig.layout.showlegend is not False


def test_the_covariance_heatmap_shrinks_its_domain_not_its_range():
    from subnetviz.figures.bigram import covariance_heatmap

    m = pd.DataFrame(np.eye(4), index=range(4), columns=range(4))
    fig = covariance_heatmap(m, "t")
    assert fig.layout.yaxis.scaleanchor == "x"  # square cells
    # the domain shrinks to the matrix, so the x axis (anchored at the y domain's bottom) sits under it
    assert fig.layout.xaxis.constrain == "domain" and fig.layout.yaxis.constrain == "domain"
