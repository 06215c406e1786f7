"""The app's test home and the AppTest helpers (open a page, decode its Plotly specs): a SUBNETVIZ_HOME whose zoo/ is the session's micro demo zoo.

``app_home`` only builds the folder; ``app_env`` points this process at it (AppTest runs
in-process) for one test module and restores the environment afterwards, so other test files
keep their own isolated home. ``SUBNETVIZ_E2E_HOME`` (a home that already holds a built zoo, e.g.
the full demo zoo) is used as is instead; the README's screenshots are taken that way.
"""

import base64
import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture(scope="session")
def app_home(micro_zoo, tmp_path_factory) -> Path:  # noqa: F811
    if os.environ.get("SUBNETVIZ_E2E_HOME"):
        return Path(os.environ["SUBNETVIZ_E2E_HOME"]).resolve()
    home = tmp_path_factory.mktemp("app-home").resolve()
    (home / "zoo").symlink_to(Path(micro_zoo.root).resolve(), target_is_directory=True)
    return home


@contextlib.contextmanager
def home_of_its_own(micro_zoo, tmp_path_factory, name: str):
    """A home of its own over the micro zoo (an empty cache, no runs), this process pointed at it while the block
    runs and the environment restored after: for a module whose tests must not meet other modules' results."""
    home = tmp_path_factory.mktemp(name).resolve()
    (home / "zoo").symlink_to(Path(micro_zoo.root).resolve(), target_is_directory=True)
    with pointed_at(home, app_roots(home)):
        yield home


@contextlib.contextmanager
def pointed_at(home: Path, roots: str):
    """This process's ``SUBNETVIZ_HOME`` and ``SUBNETVIZ_ROOTS`` set to ``home`` and ``roots`` while the block runs,
    the earlier values (or their absence) put back after."""
    saved = {k: os.environ.get(k) for k in ("SUBNETVIZ_HOME", "SUBNETVIZ_ROOTS")}
    os.environ["SUBNETVIZ_HOME"], os.environ["SUBNETVIZ_ROOTS"] = str(home), roots
    try:
        yield home
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def app_roots(home: Path) -> str:
    zoo = (home / "zoo").resolve()
    return os.pathsep.join(dict.fromkeys([str(home), str(zoo)]))


@pytest.fixture(scope="module")
def app_env(app_home):
    saved = {k: os.environ.get(k) for k in ("SUBNETVIZ_HOME", "SUBNETVIZ_ROOTS", "SUBNETVIZ_ENFORCE_ROOTS")}
    os.environ["SUBNETVIZ_HOME"] = str(app_home)
    os.environ["SUBNETVIZ_ROOTS"] = app_roots(app_home)
    yield app_home
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def exports(monkeypatch):
    """title -> a callable giving the HTML the page's export button downloads (the last run's)."""
    import streamlit as st

    seen: dict = {}
    original = st.download_button

    def capture(label, data=None, *args, **kwargs):
        key = str(kwargs.get("key", ""))
        if key.startswith("export-"):
            seen[key.removeprefix("export-")] = data
        return original(label, data, *args, **kwargs)

    monkeypatch.setattr(st, "download_button", capture)
    return seen


@pytest.fixture
def typed_options(monkeypatch):
    """AppTest sends a selectbox's state by the index of its value among the options, which a value
    typed in (accept_new_options: a folder) does not have; the browser sends the typed text."""
    from streamlit.proto.WidgetStates_pb2 import WidgetState
    from streamlit.testing.v1.element_tree import Selectbox

    original = Selectbox._widget_state

    def widget_state(self):
        if self.value is None or str(self.value) in self.options:
            return original.fget(self)
        ws = WidgetState()
        ws.id = self.id
        ws.string_value = str(self.value)
        return ws

    monkeypatch.setattr(Selectbox, "_widget_state", property(widget_state))


def plotly_specs(at):
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def decode(v):
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(s) for s in v["shape"].split(",")]) if "shape" in v else a
    return np.asarray(v)


def open_page(name: str, **query):
    """An AppTest of the app opened on page ``name`` (its file in views/) with ``query`` in the URL."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=180)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    if name != "home":
        at.switch_page(f"views/{name}.py").run()
    return at


@pytest.fixture
def planted_grid(app_env):
    """``plant(results)``: a "what drives sparsity" grid (a results DataFrame) written as the newest finished drivers
    run, its "name · id" label returned; removed afterwards."""
    import shutil
    import time
    import uuid

    from subnetviz.jobs.runner import JobRunner

    runner, ids = JobRunner(), []

    def plant(results) -> str:
        run_id = f"planted-drivers-{uuid.uuid4().hex[:8]}"  # a new folder: the page caches a grid by its path
        run_dir = add_finished_run(runner, run_id, "drivers", run_id, created=time.time() + 9600 + len(ids))
        ids.append(run_id)
        (run_dir / "outputs").mkdir(parents=True, exist_ok=True)
        results.to_csv(run_dir / "outputs" / "results.csv", index=False)
        return f"{run_id} · {run_id}"

    yield plant
    with runner.registry.transaction() as con:
        con.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in ids])
    for i in ids:
        shutil.rmtree(Path(runner.root) / i, ignore_errors=True)


@contextlib.contextmanager
def finished_continual_run(run_id: str, name: str, result):
    """A finished continual run whose outputs are ``result`` (saved as the job saves it): its folder, removed with
    its registry row afterwards."""
    import shutil

    from subnetviz.jobs.runner import JobRunner
    from subnetviz.supermask.job import save_result

    runner = JobRunner()
    run_dir = add_finished_run(runner, run_id, "continual", name, {"kind": "continual"})
    save_result(result, run_dir / "outputs")
    try:
        yield run_dir
    finally:
        with runner.registry.transaction() as con:
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        shutil.rmtree(run_dir)


def add_finished_run(runner, run_id: str, kind: str, name: str, config: dict | None = None, created=None):
    """A succeeded run in ``runner``'s registry whose folder the caller fills (its outputs written by hand, as
    a finished job leaves them); the run's folder."""
    import time

    from subnetviz.jobs.registry import RunRecord

    now = time.time() if created is None else created
    run_dir = Path(runner.root) / run_id
    rec = RunRecord(
        run_id,
        kind,
        name,
        "succeeded",
        pid=None,
        pid_start=None,
        created=now,
        started=now,
        ended=now,
        step=1,
        total=1,
        last_metrics={},
        error=None,
        run_dir=str(run_dir),
        config=config or {"kind": kind},
    )
    with runner.registry.transaction() as con:
        runner.registry.insert(con, rec)
    return run_dir


@pytest.fixture
def runner(app_env):
    """The job runner of the app's home."""
    from subnetviz.jobs.runner import JobRunner

    return JobRunner()


@pytest.fixture
def finished_run(runner):
    """``make(run_id, config, kind="train")``: a succeeded run in the app's registry whose folder the test fills
    (its ``outputs/model`` folder made, and returned), removed afterwards."""
    import shutil

    made = []

    def make(run_id: str, config: dict, kind: str = "train") -> Path:
        made.append(run_id)
        run_dir = add_finished_run(runner, run_id, kind, run_id, {"kind": kind, **config})
        (run_dir / "outputs" / "model").mkdir(parents=True)
        return run_dir / "outputs" / "model"

    yield make
    with runner.registry.transaction() as con:
        con.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in made])
    for i in made:
        shutil.rmtree(Path(runner.root) / i, ignore_errors=True)
