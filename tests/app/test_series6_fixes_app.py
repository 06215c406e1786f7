"""Series review, sixth pass, on the page (the micro zoo) and in Chromium.

2. Checkpoints that are not one run, named on the series chart's x axis by their folder names
   ("llama-3.2-1b-grpo-math-seed0-lr1e-6"): at Plotly's 30° the names ran under the legend (0.2 of the plot under
   it) and the last one, past the figure's edge, was not drawn, at 1024 and 1440 px and in the paper figure. They
   are now drawn across where they fit, else upright, every one, with the legend under them.
3. A series that fails (a NaN in a checkpoint) left its progress bar at "Walking the series: 20/21 · norm.weight"
   over the error: the bar is emptied also where the computation raises.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from subnetviz import figures as F
from tests import app_fixtures
from tests.app_fixtures import home_of_its_own, open_page
from tests.browser import E2E, start_server, wait_for_app, wait_for_charts
from tests.zoo_fixtures import micro_zoo  # noqa: F401

RUN_SRC = "workspace: one training run, by step"
NOT_RUN_SRC = "workspace: base → finetuned in sidebar order"
LONG = [
    "llama-3.2-1b-grpo-math-seed0-lr1e-6",
    "llama-3.2-1b-grpo-math-seed1-lr1e-6",
    "llama-3.2-1b-ppo-math-seed0-lr3e-6",
    "llama-3.2-1b-sft-math-seed0-lr2e-5",
]


def _with_nan(src: Path, dst: Path) -> Path:
    """A copy of the model folder ``src`` with one NaN in its first tensor of two or more dimensions."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    name = next(k for k, v in sd.items() if v.ndim >= 2)
    sd[name] = sd[name].clone()
    sd[name].view(-1)[0] = float("nan")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dst / "model.safetensors"), {"format": "pt"})
    return dst


def test_a_failed_series_leaves_no_progress_bar_over_its_error(micro_zoo, tmp_path_factory):  # noqa: F811
    import streamlit as st

    st.cache_resource.clear()
    with home_of_its_own(micro_zoo, tmp_path_factory, "series6-nan") as home:
        cks = [shutil.copytree(micro_zoo.member_path("grpo-s0"), home / "runN" / "step-1")]
        cks.append(_with_nan(micro_zoo.member_path("grpo-s1"), home / "runN" / "step-2"))
        at = open_page("series", base="base", ft=[str(c) for c in cks], series_src=RUN_SRC)  # (the zoo's)
    st.cache_resource.clear()
    assert not at.exception, [e.value for e in at.exception]
    assert any("NaN" in e.value and "runN" in e.value for e in at.error), [e.value for e in at.error]
    assert not at.get("progress"), [p.proto.text for p in at.get("progress")]  # was "Walking the series: 20/21 · …"


# --- the series chart of checkpoints that are no run: every name drawn, none under the legend ---------------------
STEPS = pd.DataFrame(
    {"step": [1, 2, 3, 4], "vs_first": [0.97, 0.94, 0.92, 0.89], "vs_previous": [0.97, 0.97, 0.97, 0.97]}
)

# In Chromium: each x tick label's box, the legend's and the axis title's (px, in the figure), the figure's size
BOXES = r"""gd => { const r = gd.getBoundingClientRect();
  const box = e => { const b = e.getBoundingClientRect();
      return {left: b.left - r.left, right: b.right - r.left, top: b.top - r.top, bottom: b.bottom - r.top}; };
  return {width: r.width, height: r.height,
          ticks: Array.from(gd.querySelectorAll('.xtick text')).map(t => ({text: t.textContent, ...box(t)})),
          legend: box(gd.querySelector('.legend .bg') || gd.querySelector('.legend')),
          title: box(gd.querySelector('.g-xtitle text'))}; }"""


def _overlap(a: dict, b: dict) -> bool:
    return (
        min(a["right"], b["right"]) - max(a["left"], b["left"]) > 1
        and min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > 1
    )


def _check_layout(geo: dict, names: list[str]) -> None:
    """Every name drawn, whole, inside the figure, none over the legend or the axis title, the title over the
    legend."""
    drawn = [t["text"] for t in geo["ticks"]]
    assert drawn == names, drawn  # the last one was not drawn at all
    for t in geo["ticks"]:
        assert t["left"] >= -1 and t["right"] <= geo["width"] + 1 and t["bottom"] <= geo["height"] + 1, t
        assert not _overlap(t, geo["legend"]), (t, geo["legend"])  # ran under the legend
        assert not _overlap(t, geo["title"]), (t, geo["title"])
    assert geo["title"]["bottom"] <= geo["legend"]["top"] + 1, (geo["title"], geo["legend"])


def _page_url(url: str, cks: list[Path], base: Path) -> str:
    from urllib.parse import urlencode

    query = [("base", str(base)), *(("ft", str(c)) for c in cks), ("series_src", NOT_RUN_SRC)]
    return f"{url}/series?{urlencode(query)}"


@pytest.mark.e2e
@E2E[1]
@pytest.mark.slow
def test_long_checkpoint_names_are_all_drawn_clear_of_the_legend_on_the_page(
    micro_zoo,  # noqa: F811
    tmp_path_factory,
    browser,
):
    home = tmp_path_factory.mktemp("series6-names").resolve()
    (home / "zoo").symlink_to(Path(micro_zoo.root).resolve(), target_is_directory=True)
    cks = [
        shutil.copytree(micro_zoo.member_path(m), home / "indep" / name)
        for m, name in zip(["grpo-s0", "grpo-s1", "sft", "dpo"], LONG, strict=True)
    ]
    env = {**os.environ, "SUBNETVIZ_HOME": str(home), "SUBNETVIZ_ROOTS": app_fixtures.app_roots(home)}
    proc, url = start_server(env)
    try:
        for width in (1024, 1440):
            ctx = browser.new_context(viewport={"width": width, "height": 900})
            try:
                page = ctx.new_page()
                page.goto(_page_url(url, cks, micro_zoo.member_path("base")))
                wait_for_app(page, 240_000)
                wait_for_charts(page)
                chart = page.locator("[data-testid='stPlotlyChart'] .js-plotly-plot").first
                assert "along the checkpoints" in chart.locator(".g-gtitle").text_content()
                geo = chart.evaluate(BOXES)
                _check_layout(geo, ["base", *LONG])
            finally:
                ctx.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.e2e
@E2E[1]
@pytest.mark.parametrize(
    "names",
    [["base", *LONG], ["base", *(n.upper() for n in LONG)], ["base", "sft", "dpo", "grpo", "ppo"]],
    ids=["long", "capitals", "short"],
)
def test_long_checkpoint_names_are_all_drawn_clear_of_the_legend_in_the_paper_figure(browser, names):
    """The figure as the paper-figure renderer lays it out for a file 900 px wide (figures_bytes draws that layout in
    Chromium with kaleido), drawn here in Chromium to measure it."""
    from subnetviz.report.static import lay_out_for_file

    fig = F.series_lines(STEPS, first="base", ticks=names)
    laid, height = lay_out_for_file(fig, 900, int(fig.layout.height or 500))
    laid.update_layout(width=900, height=height)
    page = browser.new_page(viewport={"width": 900, "height": height})
    try:
        page.set_content(laid.to_html(include_plotlyjs=True, full_html=True, config={"responsive": False}))
        page.locator(".js-plotly-plot .xtick text").first.wait_for()
        _check_layout(page.locator(".js-plotly-plot").first.evaluate(BOXES), names)
    finally:
        page.close()


def test_the_axis_of_checkpoints_names_them_across_or_upright_and_cuts_none_it_can_show():
    fig = F.series_lines(STEPS, first="base", ticks=["base", *LONG])
    axis = fig.layout.xaxis
    assert list(axis.ticktext) == ["base", *LONG] and list(axis.tickvals) == [0, 1, 2, 3, 4]
    assert list(axis.autotickangles) == [0, 90]  # never 30°: the names ran right, past the figure's edge
    assert fig.layout.legend.yref == "container" and fig.layout.legend.y == 0  # at the figure's bottom
    # the room under the plot holds the upright names (about 5 px a character), the axis title and the legend
    assert fig.layout.margin.b >= 5 * max(map(len, LONG)) + 30 + 20 * len(fig.data)
    hover = fig.data[0].text
    assert list(hover) == ["base", *LONG]
    # a name past 40 characters is cut in its middle (the whole in the hover), the cuts told apart
    longer = [f"{n}-{'x' * 30}-{i}" for i, n in enumerate(LONG)]
    cut = F.series_lines(STEPS, first="base", ticks=["base", *longer]).layout.xaxis.ticktext
    assert len(set(cut)) == 5 and max(map(len, cut)) <= 42
    assert np.all([c.endswith(str(i)) for i, c in enumerate(cut[1:])])
