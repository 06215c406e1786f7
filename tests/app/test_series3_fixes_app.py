"""Series review, third pass, on the page: a link naming the other workspace source keeps the source the page shows
in its URL (the address bar lost ``series_src``, and that link opened the demo zoo's series), and the demo zoo's own
run picked in the sidebar (``grpo-s0@N`` and ``grpo-s0``) is one run by step, its final model at its last step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.app_fixtures import open_page

pytestmark = pytest.mark.slow
RUN_SRC, ORDER_SRC = "workspace: one training run, by step", "workspace: base → finetuned in sidebar order"


def test_the_zoos_run_from_the_sidebar_is_one_run_and_the_link_keeps_its_source(app_env, typed_options):
    from subnetviz.demo import load_zoo

    zoo = load_zoo()
    (first, _), (second, _) = zoo.series[:2]
    final = json.loads((Path(zoo.member_path("grpo-s0")) / "train_summary.json").read_text())["steps_done"]
    ft = [f"grpo-s0@{second}", f"grpo-s0@{first}", "grpo-s0"]
    at = open_page("series", base="base", ft=ft, series_src=ORDER_SRC)  # a link made when they were no run
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key="series_src").value == RUN_SRC
    assert at.query_params["series_src"] == RUN_SRC  # (what the address bar keeps: the source shown)
    table = next(d.value for d in at.dataframe if "step" in d.value.columns)
    assert list(table["step"]) == [first, second, final]
    said = " ".join(c.value for c in at.caption).replace("\\", "")
    assert "taken in training order by their steps (step.json, train_summary.json)" in said
