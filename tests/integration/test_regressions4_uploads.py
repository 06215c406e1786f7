"""The fourth regression read, uploads: storing an uploaded mask (and importing a released pickle) waits for the
server's memory lock, which a whole-model computation holds for minutes; the wait is now told to a hook each second
(the page shows a spinner), and a hook that stops ends the wait with nothing stored. The uploads budget counts only
the files that are uploads: kept copies of update masks (a training launch) and imported pickles live in the same
folder but are not what visitors uploaded.

The lock is held by another thread, as a Behaviour run holds it; sizes are file sizes read with ``os.stat``."""

from __future__ import annotations

import io
import os
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from subnetviz import config, selection
from subnetviz.errors import MaskError

MiB = 1 << 20


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh home, which is the only root, with no limit set by the environment."""
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    for var in ("SUBNETVIZ_UPLOADS_GB", "SUBNETVIZ_MAX_UPLOAD_MB"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _npz(planted: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, w=planted)
    return buf.getvalue()


def _packed(path: Path, nbytes: int, seed: int) -> Path:
    """A bit-packed safetensors mask of ``nbytes`` packed bytes, as the Download mask button writes it."""
    bits = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)
    save_file({"w": bits}, str(path), metadata={"shape:w": str(8 * nbytes)})
    return path


class Holder:
    """Another session's computation: holds config.MEMORY_LOCK in its own thread for ``seconds``."""

    def __init__(self, seconds: float):
        self.held, self.seconds = threading.Event(), seconds
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self):
        with config.MEMORY_LOCK:
            self.held.set()
            time.sleep(self.seconds)

    def __enter__(self):
        self.thread.start()
        self.held.wait()
        return self

    def __exit__(self, *exc):
        self.thread.join()


def _lock_free_elsewhere() -> bool:
    """Whether another thread can take the memory lock now (nobody kept it)."""
    took = []

    def probe():
        ok = config.MEMORY_LOCK.acquire(blocking=False)
        if ok:
            config.MEMORY_LOCK.release()
        took.append(ok)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return took[0]


# --- 1. a wait for the memory lock is told ------------------------------------------------------------------------


def test_an_upload_behind_a_computation_tells_its_hook_each_second_then_is_stored(home):
    """The lock is held 2.5 s: the hook hears 0 s at once, then about every second while it waits, then None when
    the upload goes on; the stored mask holds the planted bits."""
    planted = np.random.default_rng(3).random((8, 8)) < 0.3
    told: list = []
    with Holder(2.5):
        t0 = time.monotonic()
        stored = selection.save_upload("m.npz", _npz(planted), wait=told.append)
        took = time.monotonic() - t0
    assert took >= 2.0, took
    assert told[0] == 0.0 and told[-1] is None, told
    ticks = told[1:-1]
    assert len(ticks) >= 2 and all(0.5 < b - a < 2.5 for a, b in zip([0.0, *ticks], ticks, strict=False)), told
    bits = load_file(str(stored))["w"]
    assert np.array_equal(np.unpackbits(bits)[: planted.size].astype(bool), planted.reshape(-1))
    assert _lock_free_elsewhere()


def test_a_free_lock_is_taken_without_a_word(home):
    told: list = []
    selection.save_upload("m.npz", _npz(np.ones((4, 4), bool)), wait=told.append)
    assert told == []


def test_a_hook_that_stops_the_wait_leaves_nothing_stored_and_the_lock_free(home):
    """A visitor who leaves the page: Streamlit raises in the hook at its next message. The upload ends there, its
    temporary folder is removed, nothing is stored, and the lock was never taken by it."""

    class Left(BaseException):  # as Streamlit's StopException, not an Exception
        pass

    def hook(waited):
        if waited:
            raise Left

    with Holder(2.0), pytest.raises(Left):
        selection.save_upload("m.npz", _npz(np.ones((4, 4), bool)), wait=hook)
    assert os.listdir(selection.uploads_dir()) == []
    assert _lock_free_elsewhere()


def test_importing_a_released_pickle_behind_a_computation_tells_its_hook(home):
    """The Bigram page's import waits as an upload does, told, and stores the pickle's mask."""
    from subnetviz.bigram.maskable import maskable_names
    from subnetviz.masks import load_mask_set
    from tests.models import bigram_model

    gpt2 = bigram_model("gpt2")
    gpt2.save_pretrained(home / "gpt2")
    rng = np.random.default_rng(0)
    payload = {n: rng.random(tuple(gpt2.get_parameter(n).shape)) < 0.1 for n in maskable_names(gpt2)}
    path = home / "subnetwork_dict_lambda1e1.pickle"
    path.write_bytes(pickle.dumps(payload))
    told: list = []
    with Holder(2.0):
        stored = selection.import_released(str(path), str(home / "gpt2"), wait=told.append)
    assert told[0] == 0.0 and told[-1] is None and len(told) >= 3, told
    got = load_mask_set(stored).masks
    assert all(np.array_equal(got[n].numpy(), payload[n]) for n in payload)


# --- 2. the uploads budget counts uploads ---------------------------------------------------------------------------


def test_kept_update_masks_and_imports_do_not_fill_the_uploads_budget(home, monkeypatch):
    """A 4 MiB budget; a training launch kept a 5 MiB update mask in the uploads folder, and a released-pickle
    import (a mask whose provenance records no upload) another 2 MiB: a small upload is still stored. Two uploads
    then fill the budget, and the third's refusal counts the two uploads' bytes (os.stat), not the 7 MiB beside."""
    from subnetviz.masks import MaskSet, PackedMasks, save_mask_set

    monkeypatch.setenv("SUBNETVIZ_UPLOADS_GB", str(4 / 1024))
    update = config.cache_dir() / "updates" / "k" / "masks" / "ft.safetensors"
    update.parent.mkdir(parents=True)
    pm = PackedMasks()
    pm.add_bits("w", np.random.default_rng(0).integers(0, 256, 5 * MiB, dtype=np.uint8), (8 * 5 * MiB,))
    save_mask_set(update, MaskSet(pm, {"method": "update mask"}))
    kept = Path(selection.kept_mask(str(update), "update-mask-of-ft"))
    assert kept.parent == selection.uploads_dir() and kept.stat().st_size > 5 * MiB
    imported = _packed(selection.stored_mask_path("subnetwork_dict_lambda1e1.pickle", "ab" * 32), 2 * MiB, seed=9)

    a = selection.save_upload("tiny.npz", _npz(np.ones((4, 4), bool)))
    blobs = [_packed(home / f"up{i}.safetensors", (3 * MiB) // 2, seed=i).read_bytes() for i in range(3)]
    b = selection.save_upload("up0.safetensors", blobs[0])
    c = selection.save_upload("up1.safetensors", blobs[1])
    uploaded = sum(p.stat().st_size for p in (a, b, c))
    with pytest.raises(MaskError) as err:
        selection.save_upload("up2.safetensors", blobs[2])
    text = str(err.value)
    assert "\n" not in text and text.startswith("up2.safetensors: not stored: the uploaded masks on this server take")
    assert f"take {uploaded / MiB:.1f} MiB of the 4.0 MiB they may" in text, (text, uploaded)
    assert kept.is_file() and imported.is_file()  # nothing stored is removed


def test_the_budget_still_counts_uploads_past_it_before_the_bytes_are_read(home, monkeypatch):
    """Uploads alone past the budget: the next is refused up front, its figure the uploads' bytes (os.stat)."""
    first = selection.save_upload("big.safetensors", _packed(home / "big.safetensors", 2 * MiB, seed=1).read_bytes())
    monkeypatch.setenv("SUBNETVIZ_UPLOADS_GB", str(1 / 1024))

    class Unread(io.BytesIO):
        def read(self, *args):
            raise AssertionError("the upload was read although the uploads fill the budget")

    with pytest.raises(MaskError, match=rf"take {first.stat().st_size / MiB:.1f} MiB of the 1.0 MiB"):
        selection.save_upload("more.safetensors", Unread())


def test_uploads_stored_before_the_digest_was_recorded_still_count(home):
    """An upload stored by an earlier version recorded only ``source: upload <name>`` (no digest): an upgraded
    server counted none of what it already held. Beside it, a kept update mask still does not count."""
    from subnetviz.masks import MaskSet, PackedMasks, save_mask_set

    def stored(name: str, meta: dict) -> Path:
        pm = PackedMasks()
        pm.add_bits("w", np.random.default_rng(3).integers(0, 256, MiB, dtype=np.uint8), (8 * MiB,))
        return save_mask_set(selection.uploads_dir() / name, MaskSet(pm, meta))

    selection.uploads_dir().mkdir(parents=True, exist_ok=True)
    old = stored("old-upload.safetensors", {"source": "upload old.safetensors", "method": "safetensors file"})
    stored("update-mask-of-ft.safetensors", {"method": "update mask", "model": "ft"})
    assert selection.uploads_bytes() == old.stat().st_size
