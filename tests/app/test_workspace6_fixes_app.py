"""Review "Workspace" (sixth pass), on the app: AppTest, and the widths in Chromium at 1024 px.

1. Workspace's headline metrics came up to six to a row: at 1024 px with the sidebar open the demo's five numbers
   read "68.0…  69.7…  67.0…  42.7…  36.0…", and one change in 10^5 read "99.99…" (the table said 99.9998 %). They come
   at most four to a row now, three where a value is wider than a quarter of the column.
2. Folders whose names read alike (NFC and NFD "café"; "ft", "ft " and "ft\\u200b") were two metrics reading "café"
   and three reading "ft", with different numbers; the second and third now carry a suffix.
"""

from __future__ import annotations

import shutil
import unicodedata
from urllib.parse import urlencode

import pytest

from subnetviz.uilogic import METRIC_EMS, label_key, metric_ems
from tests.app_fixtures import open_page
from tests.browser import E2E, wait_for_app
from tests.ckpt_fixtures import read_state_dict, write_folder

ZOO_FTS = ["grpo-s0", "grpo-s1", "grpo-s2", "dpo", "sft"]


@pytest.fixture(scope="module")
def planted(app_home):
    """In the app's home: ``onechange`` (the base with one entry of one tensor changed: 1 of 22,048 parameters, which
    reads "99.995 %"), and copies of zoo members in folders whose names read alike."""
    root = app_home / "workspace6"
    if not (root / "onechange").exists():
        sd = read_state_dict(app_home / "zoo" / "base")
        sd["model.norm.weight"].view(-1)[0] += 1
        write_folder(root / "onechange", sd, app_home / "zoo" / "base")
        alike = {
            ("nfc", unicodedata.normalize("NFC", "café")): "grpo-s1",
            ("nfd", unicodedata.normalize("NFD", "café")): "dpo",
            ("a", "ft"): "grpo-s0",
            ("sp", "ft "): "sft",
            ("zw", "ft\u200b"): "grpo-s2",
        }
        for (where, name), member in alike.items():
            shutil.copytree(
                app_home / "zoo" / member, root / where / name, ignore=shutil.ignore_patterns("checkpoints")
            )
    return root


def _rows(at):
    """The headline metrics' rows: for each row of columns holding a metric, (columns in the row, the values)."""
    rows = []
    for block in at.main.children.values():
        if getattr(block, "type", "") != "flex_container":
            continue
        cols = [c for c in block.children.values() if getattr(c, "type", "") == "column"]
        values = [m.value for c in cols for m in c.get("metric")]
        if values:
            rows.append((len(cols), values))
    return rows


def _assert_whole_at_1024(rows):
    for n, values in rows:
        assert n <= 4, rows  # five or six to a row cut "68.09 %" to "68.0…" at 1024 px
        assert max(metric_ems(v) for v in values) <= METRIC_EMS * 4 / n, rows  # each fits its share of the column


def test_the_demo_finetunes_numbers_come_at_most_four_to_a_row(app_env):
    at = open_page("workspace")
    assert not at.exception
    rows = _rows(at)
    assert [v for _, vs in rows for v in vs] == [m.value for m in at.metric] and len(at.metric) == 5
    _assert_whole_at_1024(rows)
    assert [n for n, _ in rows] == [4, 4]  # (the last row's columns as wide as the first's: the numbers line up)


def test_a_number_wider_than_a_quarter_comes_three_to_a_row(app_env, planted):
    at = open_page("workspace", base="base", ft=[str(planted / "onechange"), *ZOO_FTS])
    assert not at.exception
    one = at.metric[0].value
    assert one.startswith("99.99") and one != "100.00 %" and metric_ems(one) > METRIC_EMS, one
    rows = _rows(at)
    _assert_whole_at_1024(rows)
    assert [n for n, _ in rows] == [3, 3]


def test_folders_whose_names_read_alike_are_labelled_apart(app_env, planted):
    nfc, nfd = (planted / "nfc").iterdir().__next__(), (planted / "nfd").iterdir().__next__()
    folders = [nfc, nfd, planted / "a" / "ft", planted / "sp" / "ft ", planted / "zw" / "ft\u200b"]
    at = open_page("workspace", base="base", ft=[str(f) for f in folders])
    assert not at.exception and len(at.metric) == 5
    labels = [m.label for m in at.metric]
    # as each label reads on the page (a browser drops the ends' spaces and shows no zero-width space)
    assert len({label_key(lab.replace("\\", "")) for lab in labels}) == 5, labels
    values = {label_key(lab.replace("\\", "")): m.value for lab, m in zip(labels, at.metric, strict=True)}
    assert values["café"] != values["café-2"] and len({values["ft"], values["ft -2"], values["ft-2"]}) == 3


VALUE_WIDTHS = """els => els.map(e => { const d = e.querySelector('div') || e;
    return [e.innerText, d.scrollWidth, d.clientWidth]; })"""


@pytest.mark.e2e
@E2E[1]
@pytest.mark.parametrize("case", ["demo", "one-change"])
def test_every_headline_number_shows_whole_at_1024_px_with_the_sidebar_open(browser, app_url, planted, case):
    """The review's t10: each stMetricValue's text no wider than its box (the demo's five finetunes on a fresh
    Workspace; one change beside them)."""
    fts = [] if case == "demo" else [str(planted / "onechange"), *ZOO_FTS]
    query = "?" + urlencode([("base", "base")] + [("ft", f) for f in fts]) if fts else ""
    ctx = browser.new_context(viewport={"width": 1024, "height": 1000})
    try:
        page = ctx.new_page()
        page.goto(f"{app_url}/workspace{query}")
        wait_for_app(page)
        assert page.get_by_test_id("stSidebar").is_visible()  # (as it opens at 1024 px)
        got = page.get_by_test_id("stMetricValue").evaluate_all(VALUE_WIDTHS)
        assert len(got) == (5 if case == "demo" else 6), got
        assert all(scroll <= client for _, scroll, client in got), got  # "68.0…" was 117 px in 100 px
    finally:
        ctx.close()
