"""The sixth browser review's finding: Bigram › Train a mask's Run picker was never put in the URL (it is drawn in a
live fragment, where a bound picker does not restore from the address bar): a shared link opened the newest run's
curves, not the sender's, and said nothing. The URL now names the run shown (``bg_run``), a link's run is reopened,
and one this server lacks is said, the newest shown."""

from __future__ import annotations

import shutil
import time

import pytest

from tests.app_fixtures import add_finished_run, open_page

pytestmark = pytest.mark.slow

CFG = {"kind": "bigram_mask", "target": "bigram", "lambda": 10.0, "preset": "fast", "steps": None, "seed": 0}
OLDER, NEWER = "99991230-000000-bigram_mask-older", "99991231-000000-bigram_mask-newer"


@pytest.fixture
def two_runs(app_env):
    from subnetviz.jobs.runner import JobRunner

    runner = JobRunner()
    folders = [
        add_finished_run(runner, OLDER, "bigram_mask", "the sender's mask", CFG, created=time.time() + 1e6),
        add_finished_run(runner, NEWER, "bigram_mask", "a later mask", CFG, created=time.time() + 2e6),
    ]
    yield
    with runner.registry.transaction() as con:
        con.execute("DELETE FROM runs WHERE id IN (?, ?)", (OLDER, NEWER))
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _picker(at):
    assert not at.exception, [e.value for e in at.exception]
    return at.selectbox(key="bg_run")


def test_the_run_picker_is_in_the_url_and_a_link_reopens_its_run(two_runs):
    at = open_page("bigram", bg_view="Train a mask")
    assert _picker(at).value == NEWER and at.query_params["bg_run"] == NEWER  # the newest, named too
    again = open_page("bigram", bg_view="Train a mask", bg_run=OLDER)  # the sender's link
    assert _picker(again).value == OLDER and again.query_params["bg_run"] == OLDER
    assert not again.warning, [w.value for w in again.warning]


def test_a_link_to_a_run_this_server_lacks_says_so_and_shows_the_newest(two_runs):
    gone = "20990101-000000-bigram_mask-abcdef"
    at = open_page("bigram", bg_view="Train a mask", bg_run=gone)
    assert _picker(at).value == NEWER and at.query_params["bg_run"] == NEWER
    said = [w.value.replace("\\", "") for w in at.warning]  # (shown as text: Markdown's characters escaped)
    assert any(gone in w and "is not among this server's mask-training runs" in w for w in said), said
