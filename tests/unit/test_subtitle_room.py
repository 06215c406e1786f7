"""A chart that gets lines under its title (the Series page names the series it shows under each chart's title) makes
room for them with one rule, :func:`subnetviz.figures.with_subtitles` over ``title_margin``: the page had its own
(40–42 px a line) beside the builders' (36 px a further line). Drawn by plotly.js in Chromium at the width each chart
has at 1024 px with the sidebar open, the last subtitle line ends above the plot, and the plot keeps its height."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from subnetviz import figures as F
from subnetviz.figures.series import SPLIT_NOT_RUN
from tests.browser import NEEDS_CHROMIUM
from tests.unit.test_walk6a_fixes import _drawn

pytestmark = NEEDS_CHROMIUM

LINE = "20261207-110000-grpo-sub/checkpoint-"  # a subtitle line as the Series page writes one (a run's folder)


def _series():
    steps = pd.DataFrame({"step": [100, 200, 300], "vs_first": [0.9, 0.8, 0.7], "vs_previous": [0.9, 0.95, 0.96]})
    return F.series_lines(steps, first="first checkpoint", start=0)


def _split():
    return F.split_bar(pd.DataFrame({"part": list(SPLIT_NOT_RUN), "count": [60, 10, 30]}))


def _modules():
    rng = np.random.default_rng(0)
    mods = pd.DataFrame(
        [
            {"step": s, "module": m, "changed": int(rng.integers(0, 100)), "numel": 100}
            for s in (1, 2, 3)
            for m in ("q_proj", "mlp.up_proj")
        ]
    )
    return F.module_series(mods, start=0)


@pytest.mark.parametrize(
    "build,width", [(_series, 365), (_split, 180), (_modules, 564)], ids=["series", "split", "modules"]
)
@pytest.mark.parametrize("n", [1, 2, 4])
def test_the_subtitle_lines_end_above_the_plot_which_keeps_its_height(build, width, n):
    bare = build()
    fig = F.with_subtitles(build(), [LINE[: 30 if width < 300 else 60]] * n)
    assert fig.layout.title.text.count("<sup>") == n + bare.layout.title.text.count("<sup>")
    drawn, plain = _drawn([fig, bare], width)
    last = max(t["bottom"] for t in drawn["titles"])
    assert last <= min(p["top"] for p in drawn["plots"]) - 2, (last, drawn["plots"])
    height = lambda d: max(p["bottom"] - p["top"] for p in d["plots"])  # noqa: E731
    assert height(drawn) >= height(plain) - 1
