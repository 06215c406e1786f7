"""The app's shared cache (subnetviz/memo.py, ui.shared) and the sidebar's listings: results are
computed once per content for every session, and a changed file or folder is never answered stale."""

import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from subnetviz.memo import Memo, token

CALLS: list[tuple] = []


def counted_sum(frame: pd.DataFrame, column: str) -> float:
    CALLS.append((column, len(frame)))
    return float(frame[column].sum())


def frame(values) -> pd.DataFrame:
    return pd.DataFrame({"model": ["a", "b", "c"], "v": np.asarray(values, dtype=np.float64)})


# --- content keys ------------------------------------------------------------------------------------
def test_equal_content_gives_equal_tokens_and_any_change_a_new_one():
    assert token(frame([1, 2, 3])) == token(frame([1, 2, 3]))  # two objects, one content
    assert token(frame([1, 2, 3])) != token(frame([1, 2, 4]))
    assert token(frame([1, 2, 3])) != token(frame([1, 2, 3]).astype({"v": np.float32}))
    assert token(np.arange(4)) != token(np.arange(4).reshape(2, 2))  # same bytes, another shape
    assert token(np.arange(4, dtype=np.int32)) != token(np.arange(4, dtype=np.uint32))
    assert token(float("nan")) == token(float("nan"))  # a NaN option finds its result again
    assert token(0.0) != token(-0.0)
    assert token((1, "x")) != token([1, "x"])
    assert token({"a": 1, "b": 2}) != token({"a": 1, "b": 3})
    assert token(True) != token(1) and token(1.0) != token(1)


def test_closures_and_lambdas_are_refused_not_keyed_by_name():
    memo = Memo()

    def local(x):
        return x

    for fn in (local, lambda x: x):
        with pytest.raises(TypeError, match="module-level"):
            memo.call(fn, 1)


def test_a_function_is_called_once_per_content_of_its_arguments():
    memo, CALLS[:] = Memo(), []
    first = memo.call(counted_sum, frame([1, 2, 3]), "v")
    again = memo.call(counted_sum, frame([1, 2, 3]), column="v")  # keyword: another key, computed once more
    same = memo.call(counted_sum, frame([1, 2, 3]), "v")  # a new frame of the same content: a hit
    other = memo.call(counted_sum, frame([1, 2, 5]), "v")
    assert (first, again, same, other) == (6.0, 6.0, 6.0, 8.0)
    assert len(CALLS) == 3 and memo.hits == 1


def test_a_result_passed_on_is_keyed_by_its_key_without_reading_it():
    memo = Memo()
    lock_holder = memo.get_or_compute(("res", 1), lambda: {"lock": threading.Lock(), "n": 3})
    assert token(lock_holder, memo) == ("memo", ("res", 1))  # a lock cannot be pickled: no digest made
    assert token(lock_holder["n"], memo) == 3
    with pytest.raises(TypeError, match="cannot key"):
        token({"lock": threading.Lock()}, memo)  # the same content from elsewhere has no key


def test_concurrent_sessions_asking_for_one_key_compute_it_once():
    memo, started, computed = Memo(), threading.Event(), []
    release = threading.Event()

    def compute():
        computed.append(threading.get_ident())
        started.set()
        release.wait(5)
        return object()

    out, arrived = [], []

    def session():
        arrived.append(1)
        out.append(memo.get_or_compute("k", compute))

    threads = [threading.Thread(target=session) for _ in range(8)]
    threads[0].start()
    started.wait(5)
    for t in threads[1:]:
        t.start()
    while len(arrived) < 8:
        threading.Event().wait(0.01)
    threading.Event().wait(0.2)  # the seven others are asking while the first one computes
    release.set()
    for t in threads:
        t.join(10)
    assert len(computed) == 1 and len(out) == 8 and all(o is out[0] for o in out)


def test_waiters_wake_to_a_stored_value(monkeypatch):
    """The waiters of a computation were woken before its value was stored: one that took the lock in between found
    neither the value nor a flight and computed it a second time (a second whole-model computation at once). Each
    wake-up here checks what a waiter would find at that moment."""
    import subnetviz.memo as memo_module

    memo, found = Memo(), []

    class Flight(threading.Event):
        def set(self):
            found.append((set(memo.items["derived"]), set(memo.flights)))
            super().set()

    monkeypatch.setattr(memo_module.threading, "Event", Flight)
    value = memo.get_or_compute("k", object)
    assert found == [({"k"}, set())] and memo.get_or_compute("k", object) is value
    with pytest.raises(OSError):  # a failure still wakes the next waiter, with nothing stored
        memo.get_or_compute("f", lambda: (_ for _ in ()).throw(OSError("disk")))
    assert found[-1] == ({"k"}, set()) and not memo.flights


def test_a_failed_computation_is_not_stored_and_the_next_caller_computes():
    memo, attempts = Memo(), []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("disk hiccup")
        return "ok"

    with pytest.raises(OSError):
        memo.get_or_compute("k", flaky)
    assert memo.get_or_compute("k", flaky) == "ok" and len(attempts) == 2
    assert not memo.flights


def test_the_lru_is_bounded_per_kind_and_evicted_results_lose_their_key():
    memo = Memo({"derived": 2, "analysis": 1})
    values = [memo.get_or_compute(("d", i), lambda i=i: [i]) for i in range(3)]
    big = memo.get_or_compute("a", lambda: ["analysis"], kind="analysis")
    assert list(memo.items["derived"]) == [("d", 1), ("d", 2)] and list(memo.items["analysis"]) == ["a"]
    assert memo.key_of(values[0]) is None and memo.key_of(values[2]) == ("d", 2) and memo.key_of(big) == "a"
    assert len(memo.tags) == 3  # nothing left behind for the evicted entry


# --- stamps: a changed file is a new key -------------------------------------------------------------
def test_shared_results_of_a_mask_file_follow_the_file_rewritten_in_place(tmp_path):
    import torch

    from subnetviz import ui
    from subnetviz.masks import MaskSet, save_mask_set

    path = tmp_path / "m.safetensors"
    counts = []
    for n in (3, 7):
        save_mask_set(path, MaskSet({"w": torch.arange(10) < n}))
        os.utime(path, ns=(10**18 + n, 10**18 + n))  # a rewrite inside one mtime tick is still a new stamp
        counts.append(ui.mask_summary(path)["count"])
        counts.append(ui.mask_files_overlap([str(path), str(path)], ("a", "b")).report.sizes["count"].iloc[0])
    assert counts == [3, 3, 7, 7]


def test_counting_or_overlapping_mask_files_keeps_no_mask_in_the_server(tmp_path):
    """The Workspace table and the Overlap page kept every mask a URL named, a byte per parameter, in the shared
    memo (by count: 32 of them) for the life of the server; now the counts and the overlap are kept, computed
    from the masks read bit-packed."""
    import torch

    from subnetviz import ui
    from subnetviz.masks import MaskSet, save_mask_set

    paths = [str(save_mask_set(tmp_path / f"m{n}.safetensors", MaskSet({"w": torch.arange(4000) < n}))) for n in (3, 7)]
    assert [ui.mask_summary(p)["count"] for p in paths] == [3, 7]
    overlap = ui.mask_files_overlap(paths, ("a", "b"))
    assert overlap.report.sizes["count"].tolist() == [3, 7]
    held = [v for kind in ui._memo().items.values() for v in kind.values()]
    tensors = [v for v in held if isinstance(v, (MaskSet, torch.Tensor))]
    assert not tensors and all(not isinstance(x, torch.Tensor) for v in held if isinstance(v, dict) for x in v.values())


# --- the sidebar's listings --------------------------------------------------------------------------
@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path))
    return tmp_path


def _finish_run(home: Path, run: str, files: dict[str, bytes]) -> None:
    """A job's end: outputs.tmp renamed to outputs (subnetviz/jobs/worker.py)."""
    tmp = home / "runs" / run / "outputs.tmp"
    for name, data in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    os.replace(tmp, tmp.parent / "outputs")


def test_the_sidebar_lists_new_runs_and_uploads_and_forgets_removed_ones(home):
    import shutil

    from subnetviz import selection

    assert selection.saved_masks() == {} and selection.zoo_members(None) == {}
    (home / "runs" / "r1").mkdir(parents=True)
    assert selection.saved_masks() == {}  # a run still going: nothing yet
    _finish_run(home, "r1", {"masks/topk.safetensors": b"not read", "model/config.json": b"{}"})
    assert list(selection.saved_masks()) == ["run r1/masks/topk"]
    assert selection.zoo_members(None) == {"run r1": str(home / "runs" / "r1" / "outputs" / "model")}
    up = selection.uploads_dir() / "mine-1a2b3c4d.safetensors"
    up.write_bytes(b"x")
    assert set(selection.saved_masks()) == {"run r1/masks/topk", "uploads/mine-1a2b3c4d"}
    shutil.rmtree(home / "runs" / "r1")
    up.unlink()
    assert selection.saved_masks() == {} and selection.zoo_members(None) == {}


def test_continual_task_masks_are_listed_as_their_charts_number_the_tasks(home, tmp_path):
    """Task masks are stored as task0..task{T-1}; the sidebar names them from their metadata as every chart
    does (task 1..T). A file without that metadata keeps its path label."""
    import torch

    from subnetviz import selection
    from subnetviz.masks import MaskSet, save_mask_set

    meta = {"method": "SupSup", "density": 0.05, "seed": 2, "task": 0, "source": "subnetviz.supermask"}
    save_mask_set(tmp_path / "task0.safetensors", MaskSet({"w": torch.tensor([True, False])}, meta))
    _finish_run(
        home,
        "r2",
        {
            "masks/supsup/d0.05/seed2/task0.safetensors": (tmp_path / "task0.safetensors").read_bytes(),
            "masks/supsup/d0.05/seed2/task1.safetensors": b"no header",
        },
    )
    assert set(selection.saved_masks()) == {
        "SupSup task 1 mask (d=0.05, seed 2) · r2",
        "run r2/masks/supsup/d0.05/seed2/task1",
    }


def _settle(home: Path) -> None:
    """Folders last changed a minute ago (a listing made now cannot share a clock tick with a change)."""
    past = time.time_ns() - 60 * 10**9
    for p in [home / "runs", home / "uploads", *(home / "runs").glob("*"), *(home / "runs").glob("*/outputs")]:
        if p.exists():
            os.utime(p, ns=(past, past))


def test_an_unchanged_sidebar_walks_no_folder(home, monkeypatch):
    from subnetviz import selection

    _finish_run(home, "r1", {"masks/a.safetensors": b"x", "model/config.json": b"{}"})
    selection.uploads_dir()
    _settle(home)
    first = selection.saved_masks(), selection.zoo_members(None)
    walks = []
    real_glob = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern: walks.append(pattern) or real_glob(self, pattern))
    for _ in range(3):
        assert (selection.saved_masks(), selection.zoo_members(None)) == first
    assert walks == []
    _finish_run(home, "r2", {"masks/b.safetensors": b"x"})
    assert "run r2/masks/b" in selection.saved_masks() and walks  # a finished run: listed again


def test_a_change_in_the_listings_clock_tick_is_not_missed(home):
    """File systems stamp mtimes with a coarse clock: a folder changed again in the tick it was listed in
    keeps its mtime. A listing of a folder changed in the last seconds is therefore never reused."""
    from subnetviz import selection

    uploads = selection.uploads_dir()
    tick = time.time_ns()
    os.utime(uploads, ns=(tick, tick))  # changed just now
    assert selection.saved_masks() == {}
    (uploads / "late-00000000.safetensors").write_bytes(b"x")
    os.utime(uploads, ns=(tick, tick))  # and again, in the same tick: the mtime did not move
    assert list(selection.saved_masks()) == ["uploads/late-00000000"]


# --- pages: one computation for every session --------------------------------------------------------
HEATMAPS: list[str] = []
REAL: dict = {}


def counting_heatmap(grid, **kw):
    HEATMAPS.append(kw.get("title", ""))
    return REAL["heatmap"](grid, **kw)


@pytest.mark.slow
def test_a_second_session_reuses_the_first_sessions_figures(app_env, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from subnetviz import figures, ui

    REAL["heatmap"] = figures.sparsity_heatmap
    monkeypatch.setattr(figures, "sparsity_heatmap", counting_heatmap)
    ui._memo.clear()  # (a page's figures are memoised by its builder's name: another test's may be there already)
    app = str(Path(__file__).resolve().parents[2] / "app.py")
    HEATMAPS[:] = []
    specs = []
    for _ in range(2):  # two visitors, two sessions
        at = AppTest.from_file(app, default_timeout=180)
        at.run()
        at.switch_page("views/sparsity.py").run()
        assert not at.exception and not at.error
        specs.append([el.proto.spec for el in at.get("plotly_chart")])
    assert HEATMAPS and len(HEATMAPS) == len(set(HEATMAPS))  # each heatmap built once, by the first session
    assert specs[0] == specs[1]  # and the second one was shown the same charts
