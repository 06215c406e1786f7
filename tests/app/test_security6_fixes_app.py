"""Security review 6, finding 1 (AppTest): a queued or running job's progress bar, shown to every visitor on
Behaviour, Continual and Drivers, names the run as text. Its text (and its Cancel button's help) rendered as
Markdown: a run named ``![px](http://…)`` (a Behaviour job is named after checkpoint folders) made every visitor's
browser fetch from another host, and links, bold and LaTeX were drawn."""

from __future__ import annotations

import html
import re
import shutil
import time

import pytest
from markdown_it import MarkdownIt

from tests.app_fixtures import open_page

pytestmark = pytest.mark.slow

# what the review put in a run's name: an image from another host, a link, bold, LaTeX, HTML
EVIL = "prog ![px](http://127.0.0.1:8765/progress-img) [click](javascript:alert(31)) **bold** $x^2$ <b>bold</b>"


def _as_text(markdown: str) -> str:
    """``markdown`` as Streamlit's Markdown shows it (CommonMark, inline), refused if it draws any element."""
    rendered = MarkdownIt("commonmark").renderInline(markdown)
    assert not re.search(r"<(a|img|strong|em|b|code)\b", rendered), rendered
    assert "$x^2$" not in markdown, markdown  # (KaTeX reads an unescaped $…$ as a formula)
    return html.unescape(rendered).replace("\u200b", "")


@pytest.fixture
def active_jobs(app_env, monkeypatch):
    """``plant(kind)``: a queued and a running job of ``kind`` named :data:`EVIL` in the app's registry, their ids
    returned; removed afterwards. The runner's poll is a no-op meanwhile: it would start the queued row, and settle
    the running one (no process holds it) as failed."""
    from subnetviz.jobs.registry import RunRecord
    from subnetviz.jobs.runner import JobRunner

    monkeypatch.setattr(JobRunner, "poll", lambda self: None)
    runner, planted = JobRunner(), []

    def plant(kind: str) -> list[str]:
        now = time.time()
        for status, step in (("queued", None), ("running", 3)):
            run_id = f"security6-{kind}-{status}"
            rec = RunRecord(
                run_id,
                kind,
                EVIL,
                status,
                pid=None,
                pid_start=None,
                created=now,
                started=now if status == "running" else None,
                ended=None,
                step=step,
                total=10 if step else None,
                last_metrics={},
                error=None,
                run_dir=str(runner.root / run_id),
                config={"kind": kind},
            )
            with runner.registry.transaction() as con:
                runner.registry.insert(con, rec)
            planted.append(run_id)
        return planted[-2:]

    yield plant
    with runner.registry.transaction() as con:
        for run_id in planted:
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
    for run_id in planted:
        shutil.rmtree(runner.root / run_id, ignore_errors=True)


@pytest.mark.parametrize("page, kind", [("drivers", "drivers"), ("continual", "continual"), ("behavior", "behavior")])
def test_a_job_s_progress_bar_shows_its_name_as_text(active_jobs, page, kind):
    queued, running = active_jobs(kind)
    at = open_page(page)
    assert not at.exception, [e.message for e in at.exception]
    texts = [p.proto.text for p in at.progress]
    ours = [t for t in texts if "security6" in t]
    assert len(ours) == 2, texts  # one bar each, the queued and the running job
    shown = sorted(_as_text(t) for t in ours)
    assert shown == sorted([f"{EVIL} · {queued}: queued", f"{EVIL} · {running}: 3/10 {_unit(kind)}"])
    helps = [b.help for b in at.button if b.label == "Cancel" and "security6" in (b.help or "")]
    assert len(helps) == 2, [b.help for b in at.button]  # (the app's home lets every visitor launch)
    assert sorted(_as_text(h) for h in helps) == sorted(f"Cancel {EVIL} · {i}" for i in (queued, running))


def _unit(kind: str) -> str:
    return {"drivers": "runs of the grid", "continual": "tasks trained", "behavior": "model passes"}[kind]


def _tensor_progress() -> None:
    from subnetviz import ui

    _, progress = ui.progress_bar("Comparing tensors")
    progress(1, 2, "prog ![px](http://127.0.0.1:8765/tensor-img) **bold** $x^2$ <b>bold</b>")


def test_an_analysis_progress_bar_shows_the_tensor_s_name_as_text(app_env):
    """The item an analysis' bar names (a tensor's name, from a checkpoint's header) is shown as text too."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_tensor_progress, default_timeout=60).run()
    assert not at.exception, [e.message for e in at.exception]
    assert [_as_text(p.proto.text) for p in at.progress] == [
        "Comparing tensors: 1/2 · prog ![px](http://127.0.0.1:8765/tensor-img) **bold** $x^2$ <b>bold</b>"
    ]


# ---------------------------------------------------------------- finding 2: the Training form's Processes
def test_the_training_form_offers_as_many_processes_as_this_machine_runs(app_env, monkeypatch):
    """Computing on this server, Processes goes up to its CPU cores (it went to 256) and says so; a larger count
    sent from the page is not taken (Streamlit takes a value past a number field's bound as its default)."""
    import os

    from subnetviz.jobs.runner import JobRunner

    for var in ("SUBNETVIZ_RAY_ADDRESS", "SUBNETVIZ_RAY_ADDRESSES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "cpu")
    cores = len(os.sched_getaffinity(0))
    queued: list[dict] = []
    monkeypatch.setattr(JobRunner, "submit", lambda self, cfg, name=None: queued.append(cfg) or "run-1")
    at = open_page("training", tr_view="Launch")
    assert not at.exception, [e.message for e in at.exception]
    field = at.number_input(key="tr_nproc")
    assert field.max == cores
    assert field.help == f"processes that train together (here at most {cores}: one CPU core each)"
    at.selectbox(key="tr_strategy").select("ddp")
    at.number_input(key="tr_nproc").set_value(cores + 1)
    next(b for b in at.button if b.label == "Launch run").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert [(c["strategy"], c["num_processes"]) for c in queued] == [("ddp", 1)]
