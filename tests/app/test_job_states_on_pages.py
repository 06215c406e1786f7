"""A launch clicked twice, and the states of the jobs a page launched, on the pages that launch them (the jobs4 and
pages6 reviews): a second click (a double click, or two 0.2 s apart) queued a second identical job and the page
named one; Drivers and Behaviour showed neither a queued or running job they launched nor one that failed."""

import sqlite3

import pytest

from tests.app.test_jobs3_fixes_app import busy, own_home  # noqa: F401 - fixtures
from tests.app_fixtures import add_finished_run, open_page

pytestmark = pytest.mark.slow


def _texts(at, kind: str) -> list[str]:
    return [e.value.replace("\\", "").replace("\u200b", "") for e in getattr(at.main, kind)]


def _rows(root, kind: str) -> list[tuple[str, str]]:
    con = sqlite3.connect(root / "registry.sqlite")
    try:
        return con.execute("SELECT id, status FROM runs WHERE kind = ? ORDER BY created", [kind]).fetchall()
    finally:
        con.close()


def _progress(at) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def _failed(runner, run_id: str, kind: str, name: str, error: str) -> None:
    add_finished_run(runner, run_id, kind, name)
    with runner.registry.transaction() as con:
        con.execute("UPDATE runs SET status = 'failed', error = ? WHERE id = ?", [error, run_id])


def test_a_second_click_on_a_launch_is_not_queued_twice(own_home, busy):  # noqa: F811
    runner, _ = busy  # (holds the one place: what the page queues stays queued)
    at = open_page("drivers")
    launch = next(b for b in at.button if b.label == "Run the grid as a job")
    launch.click().run()
    ((run_id, status),) = _rows(own_home / "runs", "drivers")
    assert status == "queued" and _texts(at, "success") == [
        f"Queued run {run_id}. Its progress is shown below; the results appear when it has finished."
    ]
    assert _progress(at) == [f"drivers quick ×1 · {run_id}: queued"]  # named with its id; queued, not "0/0"
    next(b for b in at.button if b.label == "Run the grid as a job").click().run()
    assert [r for r, _ in _rows(own_home / "runs", "drivers")] == [run_id]  # (it queued a second one)
    (said,) = _texts(at, "info")[:1]
    assert said.startswith(f"Not queued twice: run {run_id}, queued from this tab with the same settings"), said
    assert not _texts(at, "success")
    runner.cancel(run_id)  # once that run has ended, the same settings queue a new run
    next(b for b in at.button if b.label == "Run the grid as a job").click().run()
    assert len(_rows(own_home / "runs", "drivers")) == 2 and len(_texts(at, "success")) == 1


def test_a_failed_drivers_grid_is_said_on_its_page(own_home, busy):  # noqa: F811
    runner, _ = busy
    _failed(runner, "20990101-000000-drivers-aaaaaa", "drivers", "drivers quick ×1", "no demo zoo base in /x/nozoo")
    at = open_page("drivers")
    assert not at.exception, [e.value for e in at.exception]
    assert _texts(at, "error") == [
        "Run drivers quick ×1 · 20990101-000000-drivers-aaaaaa failed: no demo zoo base in …/nozoo"  # (redacted)
    ]


def test_behaviour_shows_its_queued_and_failed_jobs(own_home, busy):  # noqa: F811
    runner, _ = busy
    _failed(runner, "20990101-000000-behavior-bbbbbb", "behavior", "behaviour sft", "bad.jsonl, line 1: not JSON")
    zoo = own_home / "zoo"
    cfg = {"kind": "behavior", "base": str(zoo / "base"), "finetuned": [str(zoo / "sft")], "prompts": []}
    queued = runner.submit(cfg, name="behaviour sft")
    at = open_page("behavior")
    assert not at.exception, [e.value for e in at.exception]
    assert "Run behaviour sft · 20990101-000000-behavior-bbbbbb failed: bad.jsonl, line 1: not JSON" in _texts(
        at, "error"
    )
    assert _progress(at) == [f"behaviour sft · {queued}: queued"]


@pytest.mark.parametrize(
    ("page", "query", "button", "kind"),
    [
        ("bigram", {"bg_view": "Train a mask"}, "Train mask", "bigram_mask"),
        ("continual", {"cl_view": "Launch"}, "Launch", "continual"),
    ],
)
def test_a_second_click_on_a_form_launch_is_not_queued_twice(own_home, busy, page, query, button, kind):  # noqa: F811
    """Each click reran the page with the form's button pressed: two jobs of one configuration, one named."""
    at = open_page(page, **query)
    next(b for b in at.button if b.label == button).click().run()
    ((run_id, _),) = _rows(own_home / "runs", kind)
    assert _texts(at, "success")[0].startswith(f"Queued run {run_id}.")
    next(b for b in at.button if b.label == button).click().run()
    assert [r for r, _ in _rows(own_home / "runs", kind)] == [run_id]
    assert any(t.startswith(f"Not queued twice: run {run_id}") for t in _texts(at, "info")), _texts(at, "info")
