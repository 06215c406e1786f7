"""Exports review, sixth pass, findings 2 and 3 on the pages (the micro zoo): a figure names what its pickers chose,
as a downloaded figure has no picker beside it (tests/unit/test_exports6_fixes.py has the builder).

2. No Series chart named its series: two runs' charts downloaded as the same file with the same text, and the
   export's parameters named the source's kind only ("workspace: one training run, by step"). Each chart now names
   the zoo's series, the sidebar run's folder (as a visitor sees it) or the first and last checkpoints under its
   title, and the export's parameters the run's folder or the finetunes.
3. Spectra's singular values of one model (the page's default) named each curve by its matrix only: the title now
   ends in the model, "Singular values of updates: grpo-s0", as the rank heatmaps' "grpo-s0: effective rank".
"""

from __future__ import annotations

import html
import re
import shutil

import pytest

from subnetviz import config
from subnetviz.text import visible_controls
from tests.app.test_walk6b_fixes_app import FULL, _fits, _plain
from tests.app_fixtures import home_of_its_own, open_page, plotly_specs

pytestmark = pytest.mark.slow

RUN_SRC = "workspace: one training run, by step"
NOT_RUN_SRC = "workspace: base → finetuned in sidebar order"
# the Series charts' widths (px) at 1024 px with the sidebar open: two thirds and a third of the page, the page
WIDTHS = {"series": 360, "split": 175, "modules": FULL}
HOSTILE = "x<b>run</b>&amp;\u202eA-lanif"  # markup and an unterminated direction override in a run's folder name


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _series_specs(at) -> dict[str, dict]:
    """chart -> its spec: the series chart, the split bar, the module chart where drawn."""
    out = {}
    for spec in plotly_specs(at):
        head = _plain(spec["layout"]["title"]["text"].split("<br>")[0])
        key = "series" if head.startswith("Checkpoint series") else "split" if head.startswith("Where") else "modules"
        out[key] = spec
    return out


def _titles(specs: dict[str, dict]) -> dict[str, str]:
    return {key: spec["layout"]["title"]["text"] for key, spec in specs.items()}


def _subtitle(title: str) -> str:
    """The title's <sup> lines as one text (a break between two lines read as nothing: they continue a name)."""
    return "".join(_plain(s) for s in re.findall(r"<sup>(.*?)</sup>", title))


def _params(page: str) -> dict[str, str]:
    table = re.search(r'<table class="params"><caption>Parameters</caption>(.*?)</table>', page, re.S).group(1)
    return {html.unescape(k): html.unescape(v) for k, v in re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", table)}


def _check_fit(specs: dict[str, dict]) -> None:
    """The lines naming the series fit their chart (the titles' first lines are the builders'), every name as
    drawn (a direction override as ⟨U+202E⟩, never raw), and the title's lines end above the plot: in Chromium the
    first line's baseline is in the middle of the top margin, its top 16 px over it, a title line 21 px and a subtitle
    line 20 px under the one before, 15 px high (the split bar's last line ran into the bar where the margin grew by
    18 px a line)."""
    for key, spec in specs.items():
        title = spec["layout"]["title"]["text"]
        assert _fits("<br>".join(["", *re.findall(r"<sup>.*?</sup>", title)]), WIDTHS[key]), (key, title)
        assert "\u202e" not in title, title
        lines = title.split("<br>")
        sub = sum(line.startswith("<sup>") for line in lines)
        top = spec["layout"].get("margin", {}).get("t", 80)
        assert top / 2 - 16 + 21 * (len(lines) - sub) + 20 * (sub - 1) + 15 <= top - 4, (key, top, title)


def test_every_series_chart_names_the_zoos_series(app_env, exports):
    at = _ok(open_page("series"))
    specs = _series_specs(at)
    titles = _titles(specs)
    assert set(titles) == {"series", "split", "modules"}
    for title in titles.values():
        assert _subtitle(title) == "demo zoo: GRPO seed 0", title
    _check_fit(specs)
    assert _params(exports["Series"]())["series"] == "demo zoo: GRPO seed 0"


@pytest.fixture(scope="module")
def two_runs(micro_zoo, tmp_path_factory):  # noqa: F811
    """Two copies of the zoo's GRPO seed-0 run (its checkpoints/step-N), one with a hostile folder name, in a home of
    its own: (the base, {run folder: its checkpoints})."""
    import streamlit as st

    st.cache_resource.clear()
    with home_of_its_own(micro_zoo, tmp_path_factory, "exports6-runs") as home:
        src = micro_zoo.member_path("grpo-s0")
        runs = {}
        for name in ("lr-sweep-7", HOSTILE):
            run = shutil.copytree(src, home / "runs" / name)
            runs[run / "checkpoints"] = sorted((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
        yield home / "zoo" / "base", runs
    st.cache_resource.clear()


def test_each_runs_charts_and_export_name_its_folder(two_runs, exports, typed_options):
    base, runs = two_runs
    seen = []
    for folder, checkpoints in runs.items():
        at = _ok(open_page("series", base=str(base), ft=[str(c) for c in checkpoints], series_src=RUN_SRC))
        assert at.selectbox(key="series_src").value == RUN_SRC
        # relative to its root (never the server's absolute path), a direction override as ⟨U+202E⟩
        shown = visible_controls(config.display_path(folder))
        assert shown.endswith("/checkpoints") and not shown.startswith("/")
        specs = _series_specs(at)
        titles = _titles(specs)
        assert set(titles) == {"series", "split", "modules"}
        for title in titles.values():
            assert _subtitle(title) == "run " + shown, title
        assert len(titles["split"].split("<br>")) > 3  # (its folder on two lines a third of the page wide)
        _check_fit(specs)
        assert "<b>" not in "".join(titles.values())  # the folder's markup as text
        assert _params(exports["Series"]())["run"] == shown
        seen.append(tuple(titles.values()))
    assert seen[0] != seen[1]  # two runs: two figures that say which is which


def test_checkpoints_that_are_no_run_are_named_by_the_first_and_the_last(app_env, exports):
    at = _ok(open_page("series", ft=["grpo-s0", "grpo-s1", "dpo"], series_src=NOT_RUN_SRC))
    assert at.selectbox(key="series_src").value == NOT_RUN_SRC
    specs = _series_specs(at)
    titles = _titles(specs)
    assert set(titles) == {"series", "split"}  # (no module chart: not one run)
    assert "along the checkpoints" in titles["series"]
    for title in titles.values():
        assert _subtitle(title) == "base → grpo-s0 … dpo", title
    _check_fit(specs)
    assert _params(exports["Series"]())["finetunes"] == "grpo-s0, grpo-s1, dpo"


@pytest.mark.parametrize(
    ("query", "head"),
    [
        ({}, "Singular values of updates: grpo-s0"),  # the page's default: the first finetune
        ({"spec_models": ["grpo-s1"]}, "Singular values of updates: grpo-s1"),
        ({"spec_models": ["grpo-s1"], "precision": "bf16"}, "Singular values of updates at bf16: grpo-s1"),
        ({"spec_models": ["grpo-s0", "dpo"]}, "Singular values of updates"),  # each curve named "model · matrix"
    ],
)
def test_the_singular_values_of_one_model_name_it(app_env, exports, query, head):
    at = _ok(open_page("spectra", **query))
    (spec,) = plotly_specs(at)
    title = spec["layout"]["title"]["text"]
    assert _plain(title.split("<br>")[0]) == head
    assert _fits(title.split("<br>")[0], FULL), title
    # the export's figure too (the figure picker names it by this title)
    assert head in html.unescape(exports["Spectra"]())
