"""What a killed writer leaves, and a cache entry that vanishes while it is read (the interruptions review).

- A Workspace upload cut off by a server kill left ``uploads/.upload-XXXX.safetensors``: every mask picker listed
  the half file, and no sweep removed it.
- A cache entry evicted (or removed as damaged by another reader) while a reader verified it raised
  FileNotFoundError out of the verification; the reader marked it used only after hashing it, so eviction's grace
  did not protect it.
  The update analyses' reader (tiny Llamas) is checked end to end: it keeps the entry or computes it again.
- ``report --out`` and ``mask import`` killed while writing left a hidden part-file beside the user's file for good.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from subnetviz import cache
from subnetviz.analysis.updates import cached_analysis
from subnetviz.cache import enforce_limit, entry, verify_manifest
from subnetviz.cli.common import publish_file
from subnetviz.errors import SubnetvizError
from tests.models import make_llama

REPO = Path(__file__).resolve().parents[2]


def _killed_at(code: str, env: dict) -> None:
    """Run ``code`` in a child Python that prints "stalled" where it is to be killed, and SIGKILL it there (a
    server or CLI killed mid-write: no ``finally`` runs)."""
    env = {**os.environ, **env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "stalled"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


# --- 1. a killed upload ----------------------------------------------------------------------------------------
def test_an_upload_killed_mid_write_is_never_listed_and_the_start_sweep_removes_it(tmp_path, monkeypatch):
    """The child stores an upload whose stream stalls after its first megabyte, and is killed there."""
    home = tmp_path / "home"
    _killed_at(
        r"""
        import io, time
        from subnetviz import selection

        class Slow(io.BytesIO):
            reads = 0
            def read(self, k=-1):
                self.reads += 1
                if self.reads == 2:  # the first megabyte is on disk
                    print("stalled", flush=True)
                    time.sleep(60)
                return super().read(k)

        selection.save_upload("my_mask.safetensors", Slow(b"\x00" * (3 << 20)))
        """,
        {"SUBNETVIZ_HOME": str(home)},
    )
    left = list((home / "uploads").iterdir())
    assert left, "the kill left nothing to sweep: the test did not cut the upload off"
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    from subnetviz import selection, uilogic

    assert selection.saved_masks() == {}  # the half file is never offered as a mask
    uilogic.sweep_temporaries()  # what the app runs when it starts
    assert list((home / "uploads").iterdir()) == []


def test_an_upload_leaves_nothing_beside_the_stored_mask_and_a_pickle_is_still_told_by_its_name(tmp_path, monkeypatch):
    """The temporary copy is removed after a stored upload and after a refused one; a pickle whose first byte is
    not protocol 2's PROTO opcode (protocol 0, told only by its ``.pickle`` name) is still read as a pickle."""
    import pickle

    import numpy as np

    from subnetviz import selection
    from subnetviz.errors import MaskError
    from subnetviz.masks import load_mask_set

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path))
    planted = np.array([[True, False, False], [False, True, True]])
    stored = selection.save_upload("old.pickle", pickle.dumps({"w": planted}, protocol=0))
    assert load_mask_set(stored).masks["w"].numpy().tolist() == planted.tolist()
    with pytest.raises(MaskError, match=r"^half\.safetensors: "):
        selection.save_upload("half.safetensors", stored.read_bytes()[:40])
    assert [p.name for p in (tmp_path / "uploads").iterdir()] == [stored.name]


def test_hidden_files_are_not_listed_as_masks(tmp_path, monkeypatch):
    """Only finished files are listed: a dot file (a writer's temporary one) in the uploads, the zoo's masks or a
    run's outputs, or a file inside a hidden folder there, is not."""
    from subnetviz import selection
    from subnetviz.masks import MaskSet, save_mask_set

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path))
    ms = MaskSet({"w": torch.tensor([True, False])})
    places = {
        "uploads": tmp_path / "uploads",
        "masks": tmp_path / "zoo" / "masks",
        "run": tmp_path / "runs" / "r1" / "outputs",
    }
    for folder in places.values():
        save_mask_set(folder / "kept.safetensors", ms)
        save_mask_set(folder / ".half.safetensors", ms)
        (folder / ".sub.tmp-1-2").mkdir()
        save_mask_set(folder / ".sub.tmp-1-2" / "inside.safetensors", ms)
    listed = sorted(Path(p).relative_to(tmp_path).as_posix() for p in selection.saved_masks().values())
    assert listed == ["runs/r1/outputs/kept.safetensors", "uploads/kept.safetensors", "zoo/masks/kept.safetensors"]


# --- 2. a cache entry that vanishes while it is read -------------------------------------------------------------
def _entry(root: Path, key: str = "k", *, age_s: float = 3600.0, size: int = 2000):
    """A published ``updates`` entry under ``root`` (a cache folder), last used ``age_s`` ago."""
    ent = entry("updates", key, root=root / "updates")
    with ent.publish() as tmp:
        (tmp / "a.csv").write_bytes(b"a" * size)
        (tmp / "b.csv").write_bytes(b"b" * size)
    old = time.time() - age_s
    for f in (ent.folder / cache.MANIFEST, ent.folder / cache.USED):
        if f.exists():
            os.utime(f, (old, old))
    return ent


def _on_first_digest(monkeypatch, action) -> list:
    """Run ``action`` once, just before the first file is hashed (the reader is then verifying the entry)."""
    real, fired = cache.file_digest, []

    def hooked(path):
        if not fired:
            fired.append(path)
            action()
        return real(path)

    monkeypatch.setattr(cache, "file_digest", hooked)
    return fired


def test_a_folder_removed_while_its_manifest_is_verified_reads_as_missing(tmp_path, monkeypatch):
    ent = _entry(tmp_path)
    fired = _on_first_digest(monkeypatch, lambda: os.rename(ent.folder, tmp_path / "elsewhere"))
    assert verify_manifest(ent.folder) == "a.csv is missing"  # not a FileNotFoundError out of the hash
    assert fired


def test_an_entry_removed_while_it_is_verified_is_a_plain_miss(tmp_path, monkeypatch):
    """Another reader moving it aside as damaged, or an eviction: computed again, with no "damaged" notice."""
    ent = _entry(tmp_path)
    fired = _on_first_digest(monkeypatch, lambda: shutil.rmtree(ent.folder))
    assert ent.status() == (False, None)
    assert fired and list((tmp_path / "updates").iterdir()) == []


def test_an_entry_being_verified_is_marked_used_first_so_eviction_keeps_it(tmp_path, monkeypatch):
    """Another session's publish, over the cache's limit, evicts least recently used entries while this reader
    hashes an entry last used an hour ago: the reader's mark (made before hashing) keeps it."""
    ent = _entry(tmp_path)
    evicted: list = []
    _on_first_digest(monkeypatch, lambda: evicted.extend(enforce_limit(tmp_path, 0)))
    assert ent.status() == (True, None)
    assert evicted == [] and ent.folder.is_dir()
    assert time.time() - (ent.folder / cache.USED).stat().st_mtime < 60


def test_eviction_keeps_an_entry_marked_used_after_it_was_listed(tmp_path, monkeypatch):
    """An eviction lists the entries and their last use first; a reader marking one used after that (and before
    the eviction reaches it) keeps it."""
    ent = _entry(tmp_path)
    other = _entry(tmp_path, "other", age_s=7200)  # older still: looked at first, and evicted
    real, seen = cache._size_and_use, []

    def listed_then_used(folder):
        got = real(folder)
        if folder.name == "k" and not seen:
            seen.append(folder)
            cache.touch(folder)  # a reader opens it right after the listing
        return got

    monkeypatch.setattr(cache, "_size_and_use", listed_then_used)
    removed = enforce_limit(tmp_path, 0)
    assert seen and removed == [other.folder]
    assert ent.folder.is_dir() and ent.status() == (True, None)


def test_an_entry_without_a_manifest_is_sized_by_its_files(tmp_path):
    """An entry whose manifest is unreadable is sized by walking it (1,000 + 500 bytes here), and over the limit by
    one byte it is evicted."""
    folder = tmp_path / "updates" / "k"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"a" * 1000)
    (folder / "sub" / "b.bin").write_bytes(b"b" * 500)
    assert enforce_limit(tmp_path, 1500) == [] and folder.is_dir()
    assert enforce_limit(tmp_path, 1499) == [folder] and not folder.exists()


def test_an_entry_replaced_by_a_new_copy_while_verified_is_verified_again_not_removed(tmp_path, monkeypatch):
    """The folder verified against its manifest is swapped for another complete copy (another process computed it
    again) between reading the manifest and hashing: the hashes disagree, but the copy there is whole and is kept,
    not removed as damaged."""
    ent = _entry(tmp_path, age_s=0)

    def new_copy():
        with cache.atomic_folder(ent.folder) as tmp:
            (tmp / "a.csv").write_bytes(b"A" * 2000)  # (as large: the old manifest's sizes still match)
            (tmp / "b.csv").write_bytes(b"B" * 2000)
            cache.write_manifest(tmp)

    fired = _on_first_digest(monkeypatch, new_copy)
    assert ent.status() == (True, None)
    assert fired and (ent.folder / "a.csv").read_bytes() == b"A" * 2000  # the new copy, kept
    assert [p.name for p in (tmp_path / "updates").iterdir()] == ["k"]


# --- 2, through the reader: an update analysis (tiny Llamas) evicted or removed while it is opened ---------------
@pytest.fixture
def models(tmp_path):
    return str(make_llama(tmp_path / "base", seed=0)), str(make_llama(tmp_path / "ft", seed=1))


def _aged(result) -> None:
    old = time.time() - 3600
    for f in (result.source_dir / cache.MANIFEST, result.source_dir / cache.USED):
        if f.exists():
            os.utime(f, (old, old))


def _changed(result) -> list[int]:
    return [int(r.tensors["changed"].sum()) for r in result.reports]


def _hook_once(monkeypatch, name: str, action) -> list:
    """Run ``action`` once, when the reader first calls ``cache.<name>``."""
    real, fired = getattr(cache, name), []

    def hooked(path):
        if not fired:
            fired.append(path)
            action()
        return real(path)

    monkeypatch.setattr(cache, name, hooked)
    return fired


def test_an_analysis_evicted_or_removed_while_opened_is_kept_or_computed_again(tmp_path, models, monkeypatch):
    base, ft = models
    root = tmp_path / "cache"
    first = cached_analysis(base, [ft], cache_root=root / "updates")
    assert not first.cached and sum(_changed(first)) > 0

    def evict():  # what another session's publish runs when the cache is over its limit
        evicted.extend(cache.enforce_limit(root, 0))

    # another session's eviction while this reader hashes the entry: the reader marked it used first, so it stays
    _aged(first)
    evicted: list = []
    fired = _hook_once(monkeypatch, "file_digest", evict)
    again = cached_analysis(base, [ft], cache_root=root / "updates")
    assert fired and evicted == [] and again.cached and _changed(again) == _changed(first)
    monkeypatch.undo()

    # another reader moves it aside (as damaged) while this one hashes it: a plain miss, computed again
    _aged(first)
    fired = _hook_once(monkeypatch, "file_digest", lambda: shutil.rmtree(first.source_dir))
    again = cached_analysis(base, [ft], cache_root=root / "updates")
    assert fired and not again.cached and _changed(again) == _changed(first)
    assert not [n for n in again.notes if "damaged" in n]
    monkeypatch.undo()

    # evicted just before the reader marks it used: a plain miss, computed again (was "cannot read the analysis")
    _aged(first)
    evicted = []
    fired = _hook_once(monkeypatch, "touch", evict)
    again = cached_analysis(base, [ft], cache_root=root / "updates")
    assert fired and evicted == [first.source_dir] and not again.cached and _changed(again) == _changed(first)
    assert not [n for n in again.notes if "damaged" in n]
    monkeypatch.undo()
    assert sorted(p.name for p in (root / "updates").iterdir()) == [first.source_dir.name]  # nothing beside it


# --- 3. a killed `report --out` / `mask import` ------------------------------------------------------------------
def test_what_a_killed_file_writer_left_is_removed_by_the_next_run_to_that_name(tmp_path):
    """The child writes ``out`` as `report` and `mask import` do (publish_file, the writer's own temporary file
    inside) and is killed mid-write; the next run to the same name leaves only the finished file."""
    out = tmp_path / "o" / "r.html"
    out.parent.mkdir()
    (out.parent / "mine.txt").write_text("a user's file")
    _killed_at(
        rf"""
        import time
        from pathlib import Path
        from subnetviz.cache import atomic_path
        from subnetviz.cli.common import publish_file

        with publish_file(Path({str(out)!r}), False) as tmp:
            with atomic_path(tmp) as part:
                part.write_bytes(b"x" * 100_000)
                print("stalled", flush=True)
                time.sleep(60)
        """,
        {},
    )
    assert len(list(out.parent.iterdir())) > 1, "the kill left nothing behind: the test did not cut the write off"
    with publish_file(out, False) as tmp:
        tmp.write_text("done")
    assert sorted(p.name for p in out.parent.iterdir()) == ["mine.txt", "r.html"]
    assert out.read_text() == "done"


def test_a_live_writers_temporary_file_is_left_alone(tmp_path):
    """Two runs to one name: the second's sweep does not take the first's file while the first still writes."""
    out = tmp_path / "r.html"
    with publish_file(out, False) as first:
        first.write_text("first")
        with pytest.raises(SubnetvizError, match="another file was written there"):
            with publish_file(out, False) as second:
                assert first.read_text() == "first"  # (still there: this process is alive)
                second.write_text("second")
                out.write_text("a user's")  # appears meanwhile
        out.unlink()
    assert out.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_a_writers_message_names_the_users_file_not_the_temporary_one(tmp_path):
    out = tmp_path / "r.html"
    with pytest.raises(SubnetvizError) as err:
        with publish_file(out, False) as tmp:
            with cache.atomic_path(tmp) as part:
                raise SubnetvizError(f"{part}: cannot write it; also {tmp}: said twice")
    assert str(err.value) == f"{out}: cannot write it; also {out}: said twice"
    with pytest.raises(OSError) as oserr:
        with publish_file(out, False) as tmp:
            with cache.atomic_path(tmp) as part:
                raise OSError(28, "No space left on device", str(part))
    assert oserr.value.filename == str(out)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_between_the_renames_of_an_overwrite_puts_the_old_folder_back(tmp_path, monkeypatch):
    """``--overwrite``: Ctrl-C after the old result was moved aside and before the new one was renamed in removed the
    old one and left nothing at the output."""
    import os

    from subnetviz import cache

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("the user's result")
    real = os.replace
    calls = []

    def interrupted_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new folder's rename over the target
            raise KeyboardInterrupt
        return real(src, dst)

    with pytest.raises(KeyboardInterrupt):
        with cache.atomic_folder(target) as tmp:
            (tmp / "new.txt").write_text("new")
            monkeypatch.setattr(cache.os, "replace", interrupted_second)
    monkeypatch.setattr(cache.os, "replace", real)
    assert (target / "old.txt").read_text() == "the user's result" and not (target / "new.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it
