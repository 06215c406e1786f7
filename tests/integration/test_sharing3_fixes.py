"""The third shared-server review: an uploaded mask is read, checked and stored bit-packed, holds about what its
memory check asked for (the peak of this process's memory measured while it is stored), and two uploads at once
check and allocate one after the other; a mask is counted without an 8-byte copy per entry; the uploads folder has
a budget and the job queue a cap, each refused in one line; the Runs table shows no absolute server path.

Memories are measured, at a few MB, by sampling this process's resident set while the work runs; the masks are
planted bits whose counts and bytes NumPy gives independently."""

from __future__ import annotations

import gc
import io
import os
import pickle
import sqlite3
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import load_file, save_file

from subnetviz import config, masks, selection
from subnetviz.errors import JobError, MaskError, UnsafePickleError

MiB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh home, which is the only root, with no limit set by the environment."""
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    for var in ("SUBNETVIZ_UPLOADS_GB", "SUBNETVIZ_MAX_QUEUED", "SUBNETVIZ_MAX_UPLOAD_MB"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def _peak(work) -> tuple[int, object]:
    """(the most this process's resident set grew while ``work()`` ran, sampled every half millisecond, its
    result)."""
    gc.collect()
    base = _rss()
    top = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            top[0] = max(top[0], _rss())
            time.sleep(0.0005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = work()
    finally:
        stop.set()
        t.join()
    return top[0] - base, out


@pytest.fixture
def asked(monkeypatch):
    """The host bytes each memory check of the mask readers asked for, in order."""
    seen: list[int] = []
    original = config.require_memory

    def logged(what, host_bytes, *args, **kwargs):
        seen.append(host_bytes)
        return original(what, host_bytes, *args, **kwargs)

    monkeypatch.setattr(masks, "require_memory", logged)
    return seen


def _packed_upload(tmp: Path, nbytes: int, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """A bit-packed safetensors mask of ``nbytes`` bytes (8 entries each), as the Download mask button writes it;
    (its bytes, the packed bits)."""
    bits = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)
    p = tmp / f"planted{seed}.safetensors"
    save_file(
        {"model.layers.0.mlp.down_proj.weight": bits},
        str(p),
        metadata={"shape:model.layers.0.mlp.down_proj.weight": str(8 * nbytes)},
    )
    data = p.read_bytes()
    p.unlink()
    return data, bits


# --- 1. memory ----------------------------------------------------------------------------------------------------


def test_a_mask_is_counted_without_an_eight_byte_copy_per_entry():
    """torch.sum of a bool tensor first copies it to int64: 256 MiB for 32 Mi entries. The count is the planted
    number of set entries."""
    n = 32 * MiB
    m = torch.zeros(n, dtype=torch.bool)
    where = np.random.default_rng(1).choice(n, 12345, replace=False)
    m[torch.from_numpy(where)] = True
    grew, count = _peak(lambda: masks.MaskSet({"w": m}).count)
    assert count == 12345
    assert grew < 8 * MiB, f"counting 32 Mi entries grew the process by {grew / MiB:.0f} MiB"


def test_a_packed_upload_holds_about_what_its_check_asked_for(home, asked):
    """A 4 MiB bit-packed upload (32 Mi entries) held about 290 MiB while stored (unpacked to a byte per entry, then
    counted through an int64 copy), after a check that asked for 100 MiB. Now it holds about twice its size (the
    bits read, the file's pages mapped) and its check asks for that; the stored file holds the planted bits."""
    size = 4 * MiB
    data, bits = _packed_upload(home, size)
    grew, stored = _peak(lambda: selection.save_upload("big mask.safetensors", io.BytesIO(data)))
    assert asked, "no memory check before the mask was read"
    assert max(asked) <= 3 * size, f"the check asked for {max(asked) / MiB:.0f} MiB for a {size / MiB:.0f} MiB upload"
    # what it held: the check's figure, and the file's pages mapped while it is read (page cache, not counted)
    assert grew <= 1.25 * sum(asked) + size + 8 * MiB, (
        f"storing the upload grew the process by {grew / MiB:.0f} MiB; its checks asked for {sum(asked) / MiB:.0f} MiB"
    )
    kept = load_file(str(stored))["model.layers.0.mlp.down_proj.weight"]
    assert np.array_equal(kept, bits)
    info = selection.mask_info(str(stored), "x")
    assert info["count"] == int(np.unpackbits(bits).sum()) and info["numel"] == 8 * size


def _plain_uint8(tmp: Path, n: int) -> tuple[str, bytes, np.ndarray]:
    m = np.random.default_rng(2).integers(0, 2, n, dtype=np.uint8)
    p = tmp / "plain.safetensors"
    save_file({"w": m}, str(p))
    return "plain.safetensors", p.read_bytes(), m.astype(bool)


def _npz(tmp: Path, n: int) -> tuple[str, bytes, np.ndarray]:
    m = np.random.default_rng(3).integers(0, 2, n, dtype=np.uint8).astype(bool)
    p = tmp / "m.npz"
    np.savez(p, w=m)
    return "m.npz", p.read_bytes(), m


def _torch_float(tmp: Path, n: int) -> tuple[str, bytes, np.ndarray]:
    m = np.random.default_rng(4).integers(0, 2, n // 4, dtype=np.uint8).astype(bool)
    p = tmp / "m.pt"
    torch.save({"w": torch.from_numpy(m.astype(np.float32))}, p)
    return "m.pt", p.read_bytes(), m


def _pickle(tmp: Path, n: int, protocol: int = 2) -> tuple[str, bytes, np.ndarray]:
    m = np.random.default_rng(5).integers(0, 2, n, dtype=np.uint8).astype(bool)
    return "subnetwork_dict_lambda1.pickle", pickle.dumps({"w": m, "orig_model_name": "x"}, protocol=protocol), m


@pytest.mark.parametrize("make", [_plain_uint8, _npz, _torch_float, _pickle], ids=["uint8", "npz", "torch", "pickle"])
def test_uploads_of_every_format_are_checked_for_what_they_hold(home, asked, make):
    """Plain 0/1 safetensors, .npz, torch.save and pickles of 8 MiB: each holds no more than its checks asked for
    (the torch file and the pickle had no check at all; the others were unpacked and counted through int64), and
    the stored mask is the planted one."""
    name, data, planted = make(home, 8 * MiB)
    grew, stored = _peak(lambda: selection.save_upload(name, io.BytesIO(data)))
    assert asked, "no memory check before the mask was read"
    mapped = len(data) if name.endswith(".safetensors") else 0
    assert grew <= 1.25 * sum(asked) + mapped + 8 * MiB, (
        f"{name}: storing it grew the process by {grew / MiB:.0f} MiB; its checks asked for {sum(asked) / MiB:.0f} MiB"
    )
    kept = load_file(str(stored))["w"]
    assert np.array_equal(np.unpackbits(kept)[: planted.size].astype(bool), planted.reshape(-1))


def test_two_uploads_at_once_are_read_one_after_the_other(home, monkeypatch):
    """Two visitors' uploads arriving together each checked the memory before either had allocated. Now the
    second one's reading starts once the first is stored, and the lock they take is the process's memory lock
    (the one the app's model computations share): another thread cannot take it while an upload is read."""
    inside, most, blocked = [0], [0], []
    original = masks.import_mask
    guard = threading.Lock()

    def slow_import(path, **kwargs):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])

        def try_lock():
            took = config.MEMORY_LOCK.acquire(blocking=False)
            if took:
                config.MEMORY_LOCK.release()
            blocked.append(not took)

        other = threading.Thread(target=try_lock)
        other.start()
        other.join()
        time.sleep(0.3)
        try:
            return original(path, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(masks, "import_mask", slow_import)
    uploads = [_packed_upload(home, 64 * 1024, seed=i)[0] for i in range(2)]
    go = threading.Barrier(2)
    errors: list[BaseException] = []

    def upload(i):
        go.wait()
        try:
            selection.save_upload(f"mask{i}.safetensors", io.BytesIO(uploads[i]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    assert most[0] == 1, "two uploads were read at the same time"
    assert blocked == [True, True], "the memory lock was free while an upload was read"
    assert len(list(selection.uploads_dir().glob("*.safetensors"))) == 2


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _safetensors_bytes(tmp: Path, tensors: dict, metadata: dict | None = None) -> bytes:
    p = tmp / "x.safetensors"
    save_file(tensors, str(p), metadata=metadata)
    data = p.read_bytes()
    p.unlink()
    return data


REFUSED = {
    "a plain tensor with a 2": (
        "two.safetensors",
        lambda tmp: _safetensors_bytes(tmp, {"w": np.array([0, 1, 2], dtype=np.uint8)}),
        "has values outside {0, 1}",
    ),
    "packed bits too few for their shape": (
        "short.safetensors",
        lambda tmp: _safetensors_bytes(tmp, {"w": np.zeros(2, dtype=np.uint8)}, {"shape:w": "100"}),
        "expected 13 uint8 bytes",
    ),
    "packed bits of another dtype": (
        "wide.safetensors",
        lambda tmp: _safetensors_bytes(tmp, {"w": np.zeros(2, dtype=np.int16)}, {"shape:w": "16"}),
        "expected 2 uint8 bytes",
    ),
    "a NaN in a torch file": (
        "nan.pt",
        lambda tmp: _torch_bytes({"w": torch.tensor([0.0, float("nan")])}),
        "has values outside {0, 1}",
    ),
    "a string array in an npz": (
        "text.npz",
        lambda tmp: _npz_bytes(w=np.array(["a", "b"])),
        "expected bool (or 0/1 numbers)",
    ),
    "a pickle with a 3": (
        "three.pickle",
        lambda tmp: pickle.dumps({"w": np.array([0, 3], dtype=np.int64)}, protocol=4),
        "has values outside {0, 1}",
    ),
    "a safetensors file of no masks": (
        "none.safetensors",
        lambda tmp: _safetensors_bytes(tmp, {}, {"a": "b"}),
        "the file holds no masks",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_what_the_upload_check_refused_it_still_refuses_naming_the_upload(home, case):
    name, make, words = REFUSED[case]
    with pytest.raises(MaskError) as err:
        selection.save_upload(name, make(home))
    text = str(err.value)
    assert text.startswith(f"{name}: ") and words in text and "\n" not in text, text
    assert str(home) not in text
    assert not list(selection.uploads_dir().glob("*.safetensors"))


def test_a_pickle_asking_for_a_forbidden_class_is_still_refused(home):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with pytest.raises(UnsafePickleError, match=r"^evil\.pickle: "):
        selection.save_upload("evil.pickle", pickle.dumps({"w": Evil()}))


# --- 3. the uploads budget and the queue cap ---------------------------------------------------------------------


def test_uploads_past_their_budget_are_refused_in_one_line_and_nothing_stored_is_removed(home, monkeypatch):
    """SUBNETVIZ_UPLOADS_GB = 10 MiB: two 4 MiB uploads are stored, the third is refused in one line naming the
    variable, the stored two stay as they were, and the same bytes as a stored one are still taken (nothing new
    is written). Once the folder is full, an upload is refused before its bytes are copied."""
    monkeypatch.setenv("SUBNETVIZ_UPLOADS_GB", str(10 / 1024))
    blobs = [_packed_upload(home, 4 * MiB, seed=i)[0] for i in range(3)]
    stored = [selection.save_upload(f"m{i}.safetensors", blobs[i]) for i in range(2)]
    before = {p: p.stat().st_mtime_ns for p in selection.uploads_dir().iterdir()}
    with pytest.raises(MaskError) as err:
        selection.save_upload("m2.safetensors", blobs[2])
    text = str(err.value)
    assert "\n" not in text and text.startswith("m2.safetensors: not stored") and "SUBNETVIZ_UPLOADS_GB" in text, text
    assert "of the 10.0 MiB they may" in text and "this one needs 4.0 MiB" in text, text
    assert {p: p.stat().st_mtime_ns for p in selection.uploads_dir().iterdir()} == before
    assert selection.save_upload("m0.safetensors", blobs[0]) == stored[0]

    monkeypatch.setenv("SUBNETVIZ_UPLOADS_GB", str(8 / 1024))  # full: refused up front

    class Unread(io.BytesIO):
        def read(self, *args):
            raise AssertionError("the upload was read although the folder is full")

    with pytest.raises(MaskError, match=r"^m3\.safetensors: not stored: the uploaded masks on this server take"):
        selection.save_upload("m3.safetensors", Unread())


@pytest.mark.parametrize("value", ["0", "-1", "lots", "nan"])
def test_a_bad_uploads_budget_is_one_line_naming_the_variable(home, monkeypatch, value):
    from subnetviz.errors import ConfigError

    monkeypatch.setenv("SUBNETVIZ_UPLOADS_GB", value)
    with pytest.raises(ConfigError, match=r"^SUBNETVIZ_UPLOADS_GB="):
        config.uploads_limit_bytes()


def test_the_uploads_budget_defaults_to_two_gigabytes(home):
    assert config.uploads_limit_bytes() == 2 * 2**30


WORKER = [
    sys.executable,
    "-c",
    "import sys; from subnetviz.jobs.worker import main_job; sys.exit(main_job(sys.argv[1]))",
]
SLEEP = {"kind": "python", "target": "tests.training_fixtures:sleep_job"}


def test_jobs_past_the_queue_cap_are_refused_in_one_line(home, monkeypatch):
    """SUBNETVIZ_MAX_QUEUED = 2: with one job running and two waiting, a third waiting one is refused in one line
    and leaves no run folder or registry row; once one has started, a job is queued again."""
    from subnetviz.jobs.runner import JobRunner

    monkeypatch.setenv("SUBNETVIZ_ALLOW_TEST_JOBS", "1")
    monkeypatch.setenv("SUBNETVIZ_MAX_QUEUED", "2")
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    root = home / "runs"
    runner = JobRunner(root, max_concurrent=1, command=WORKER, cancel_grace_s=3.0, gpus=[])
    blocker = runner.submit({**SLEEP, "seconds": 60, "steps": 60})
    try:
        deadline = time.time() + 30
        while runner.get(blocker).status != "running":
            assert time.time() < deadline, "the first job did not start"
            time.sleep(0.05)
        waiting = [runner.submit({**SLEEP, "seconds": 0.1, "steps": 1}) for _ in range(2)]
        folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        with pytest.raises(JobError) as err:
            runner.submit({**SLEEP, "seconds": 0.1, "steps": 1})
        text = str(err.value)
        assert text.startswith("Not queued: 2 jobs wait to start") and "SUBNETVIZ_MAX_QUEUED" in text, text
        assert "\n" not in text
        assert sorted(p.name for p in root.iterdir() if p.is_dir()) == folders
        con = sqlite3.connect(root / "registry.sqlite")
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 3
        con.close()
        runner.cancel(blocker)  # the slot frees: the first waiting job starts, and there is room for one
        runner.wait(waiting[0], timeout=60)
        runner.wait(runner.submit({**SLEEP, "seconds": 0.1, "steps": 1}), timeout=60)
    finally:
        for rec in runner.registry.rows():
            if not rec.finished:
                runner.cancel(rec.id)


@pytest.mark.parametrize("value", ["0", "-2", "many", "1.5"])
def test_a_bad_queue_cap_is_one_line_naming_the_variable(home, monkeypatch, value):
    from subnetviz.errors import ConfigError

    monkeypatch.setenv("SUBNETVIZ_MAX_QUEUED", value)
    with pytest.raises(ConfigError, match=r"^SUBNETVIZ_MAX_QUEUED="):
        config.max_queued_jobs()


def test_the_queue_cap_defaults_to_sixteen(home):
    assert config.max_queued_jobs() == 16


# --- 2. the Runs table -------------------------------------------------------------------------------------------


def test_the_runs_table_shows_errors_and_names_without_absolute_server_paths(home):
    """A failed run's error quotes the data file it could not read by its absolute path; the table (which the page
    shows, downloads and exports) shows it from its root, as the run's error box does. Text with no path and a
    missing error stay as they were."""
    from subnetviz.report.training import runs_table

    runs = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "name": [f"sft on {home}/shared-data/x.jsonl", "plain name", None],
            "kind": ["train"] * 3,
            "status": ["failed", "succeeded", "cancelled"],
            "step": [0, 2, 1],
            "total": [2, 2, 2],
            "created": [1.0, 2.0, 3.0],
            "ended": [1.5, 2.5, 3.5],
            "error": [
                f"training config: data '{home}/shared-data/x.jsonl': no such file.",
                None,
                "cancelled by the user",
            ],
        }
    )
    shown = runs_table(runs)
    text = shown.to_csv()
    assert str(home) not in text
    root = home.name  # a path under a root is shown from the root's own name
    assert shown["error"].iloc[0] == f"training config: data '{root}/shared-data/x.jsonl': no such file."
    assert shown["name"].iloc[0] == f"sft on {root}/shared-data/x.jsonl"
    assert shown["name"].iloc[1] == "plain name" and shown["error"].iloc[2] == "cancelled by the user"
    assert pd.isna(shown["error"].iloc[1]) and pd.isna(shown["name"].iloc[2])


def test_a_memory_refusal_of_an_upload_names_the_upload_not_its_temporary_copy(home, monkeypatch):
    """The check said "The mask upload.safetensors needs about …": the name of the copy the reader saw."""
    from subnetviz.errors import ConfigError

    data, _ = _packed_upload(home, 64 * 1024)
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 1024)
    with pytest.raises(ConfigError) as err:
        selection.save_upload("my mask.safetensors", data)
    text = str(err.value)
    assert text.startswith("The mask my mask.safetensors needs about 0.1 MiB of memory"), text
    assert "upload.safetensors" not in text and "\n" not in text and str(home) not in text
    assert not list(selection.uploads_dir().glob("*.safetensors"))
