"""The app against the third shared-server review: a viewer of a public read-only server sees no absolute server
path in the Runs tables of the Training and Bigram pages (nor in what their downloads and exports take), where a
failed run's error quotes the files it read; and a launch past the queue cap is refused in one line, nothing
queued. The failed and waiting runs are planted in the app home's registry by hand and removed afterwards."""

import shutil
import time
from pathlib import Path

import pytest

from tests.app_fixtures import open_page

pytestmark = pytest.mark.slow

EDITOR_TOKEN = "e" * 24


def _plant(runner, run_id: str, kind: str, status: str, name: str, error: str | None, created: float) -> None:
    from subnetviz.jobs.registry import RunRecord

    run_dir = Path(runner.root) / run_id
    run_dir.mkdir()
    rec = RunRecord(
        run_id,
        kind,
        name,
        status,
        pid=None,
        pid_start=None,
        created=created,
        started=None,
        ended=created + 1 if status != "queued" else None,
        step=0,
        total=2,
        last_metrics={},
        error=error,
        run_dir=str(run_dir),
        config={"kind": kind},
    )
    with runner.registry.transaction() as con:
        runner.registry.insert(con, rec)


@pytest.fixture
def planted(runner):
    """``plant(run_id, kind, status, name, error)``: a run in the app's registry (created long ago, so no page
    takes it for the newest), removed with its folder afterwards."""
    made = []

    def plant(run_id, kind, status, name, error=None):
        made.append(run_id)
        _plant(runner, run_id, kind, status, name, error, 1000.0 + len(made))

    yield plant
    with runner.registry.transaction() as con:
        con.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in made])
    for i in made:
        shutil.rmtree(Path(runner.root) / i, ignore_errors=True)


def _cells(at, run_id: str) -> dict:
    for df in (d.value for d in at.dataframe):
        if "id" in df.columns and run_id in set(df["id"]):
            return df[df["id"] == run_id].iloc[0].to_dict()
    raise AssertionError(f"no table lists {run_id}")


@pytest.mark.parametrize(
    ("page", "kind", "query", "table"),
    [
        ("training", "train", {"tr_view": "Runs"}, "runs-table"),
        ("bigram", "bigram_mask", {"bg_view": "Train a mask"}, "bg-runs"),
    ],
)
def test_a_viewer_sees_no_absolute_server_path_in_a_runs_table(app_env, planted, monkeypatch, page, kind, query, table):
    """A failed run whose error (and CLI-given name) quote a data file by its absolute path: the viewer's table
    cell, and the frame its CSV / Parquet downloads and the HTML export take, show it from its root, as the run's
    error box does ("<home's name>/shared-data/…")."""
    monkeypatch.setenv("SUBNETVIZ_EDITOR_TOKEN", EDITOR_TOKEN)  # public, read-only: this visitor is a viewer
    home = Path(app_env)
    data = home / "shared-data" / "alice-private-project" / "sft_train.jsonl"
    run_id = f"19700101-000000-{kind}-sh3err"
    planted(run_id, kind, "failed", f"sft on {data}", f"training config: data '{data}': no such file.")
    at = open_page(page, **query, **({"tr_run": run_id} if page == "training" else {}))
    assert not at.exception, [e.value for e in at.exception]
    assert any("Signed in as viewer" in c.value for c in at.sidebar.caption)
    shown = f"{home.name}/shared-data/alice-private-project/sft_train.jsonl"
    cells = _cells(at, run_id)
    assert cells["error"] == f"training config: data '{shown}': no such file.", cells["error"]
    assert cells["name"] == f"sft on {shown}", cells["name"]
    _, frame = at.session_state["_tables"][table]
    assert str(home) not in frame.to_csv() and shown in frame.to_csv()


def test_a_launch_past_the_queue_cap_is_refused_in_one_line_and_nothing_is_queued(
    app_env, planted, runner, monkeypatch
):
    """SUBNETVIZ_MAX_QUEUED = 1 and one job waiting (kept waiting: no job is started in this test): the Launch
    form says why in one line, names the variable, says nothing of a queued run, and the queue is as it was."""
    import subnetviz.jobs.runner as runner_module

    monkeypatch.setattr(runner_module, "advance", lambda registry, launch: [])  # nothing starts here
    monkeypatch.setenv("SUBNETVIZ_MAX_QUEUED", "1")
    planted("19700101-000000-train-sh3wait", "train", "queued", "waiting")
    before = [(r.id, r.status) for r in runner.registry.rows()]
    folders = sorted(p.name for p in Path(runner.root).iterdir())
    try:
        at = open_page("training")
        at.number_input(key="tr_steps").set_value(2)
        next(b for b in at.button if b.label == "Launch run").click().run()
        assert not at.exception, [e.value for e in at.exception]
        errors = [e.value.replace("\\", "").replace("\u200b", "") for e in at.main.error]
        assert len(errors) == 1 and "\n" not in errors[0], errors
        assert errors[0].startswith("Not queued: 1 job waits to start") and "SUBNETVIZ_MAX_QUEUED" in errors[0], errors
        assert not [s.value for s in at.main.success]
        time.sleep(0.1)
        assert [(r.id, r.status) for r in runner.registry.rows()] == before
        assert sorted(p.name for p in Path(runner.root).iterdir()) == folders
    finally:  # a run the form queued all the same (the cap not kept) is removed: no later test may start it
        made = [r.id for r in runner.registry.rows() if (r.id, r.status) not in before]
        with runner.registry.transaction() as con:
            con.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in made])
        for i in made:
            shutil.rmtree(Path(runner.root) / i, ignore_errors=True)
