"""The one disk cache: key scheme, stamps, atomic publishes of folders and files."""

import json
import os
import threading
import time
from pathlib import Path

import pytest

from subnetviz.cache import atomic_folder, atomic_write, cache_key, entry, file_stamp


def test_success_replaces_and_failure_keeps_the_old_folder(tmp_path):
    target = tmp_path / "out"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_replace_swaps_the_whole_folder_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "out"
    with atomic_folder(target) as tmp:
        (tmp / "old.txt").write_text("old")
    with atomic_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]  # no file of the old folder survives
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_publish_without_replace_keeps_the_first_result(tmp_path):
    ent = entry("demo", "k1", root=tmp_path)
    assert not ent.ready and ent.folder == tmp_path / "k1"
    with ent.publish() as tmp:
        (tmp / "r.txt").write_text("first")
        with ent.publish() as tmp2:  # a concurrent identical computation finishes first
            (tmp2 / "r.txt").write_text("second")
    assert ent.ready and (ent.folder / "r.txt").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["k1"]


def test_concurrent_publishes_of_one_entry_all_succeed_and_leave_one_folder(tmp_path):
    ent = entry("demo", "k", root=tmp_path)
    errors = []
    barrier = threading.Barrier(4)

    def work(i):
        try:
            with ent.publish() as tmp:
                (tmp / "r.txt").write_text(str(i))
                barrier.wait()
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [p.name for p in tmp_path.iterdir()] == ["k"]
    assert (ent.folder / "r.txt").read_text() in {"0", "1", "2", "3"}


def test_default_entry_lives_under_the_cache_dir_by_kind(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path))
    from subnetviz.config import cache_dir

    assert entry("bigram", "abc").folder == cache_dir() / "bigram" / "abc"


def test_cache_key_changes_with_kind_version_and_every_part():
    from subnetviz.analysis.sparsity import SparsityOptions

    k = cache_key("updates", 1, base="fp0", options=SparsityOptions())
    assert len(k) == 24 and k == cache_key("updates", 1, options=SparsityOptions(), base="fp0")  # order-free
    assert k != cache_key("updates", 2, base="fp0", options=SparsityOptions())
    assert k != cache_key("bigram", 1, base="fp0", options=SparsityOptions())
    assert k != cache_key("updates", 1, base="fp1", options=SparsityOptions())
    assert k != cache_key("updates", 1, base="fp0", options=SparsityOptions(precision="bf16"))
    assert cache_key("x", 1, p=Path("/a")) == cache_key("x", 1, p="/a")


def test_update_analyses_are_keyed_by_the_code_that_computes_them(tmp_path, monkeypatch):
    """Other analysis code, other key: an analysis that a later commit computes differently (a naming table,
    a stored form) is computed again, not served from the cache (before: only a version number its owner
    had to bump, and several such commits did not). Code outside the analysis (pages, jobs) does not count."""
    import shutil

    from subnetviz import version
    from subnetviz.analysis import updates
    from subnetviz.analysis.sparsity import SparsityOptions
    from subnetviz.analysis.update_pass import SpectraOptions

    pkg = Path(version.__file__).parent
    copy = shutil.copytree(pkg, tmp_path / "subnetviz", ignore=shutil.ignore_patterns("__pycache__"))
    fingerprint = version.code_fingerprint.__wrapped__
    same = fingerprint(root=str(copy))
    assert same == version.code_fingerprint()  # where it lives does not count, what it says does
    (copy / "ui.py").write_text((copy / "ui.py").read_text() + "\n# a page's code\n")
    (copy / "analysis" / "__pycache__").mkdir()
    (copy / "analysis" / "__pycache__" / "x.py").write_text("# compiled leftovers")
    assert fingerprint(root=str(copy)) == same
    for edited in ("analysis/sparsity.py", "checkpoints/families.py", "masks.py"):
        (copy / edited).write_text((copy / edited).read_text() + "\n# edited\n")
        assert fingerprint(root=str(copy)) != same, edited
        same = fingerprint(root=str(copy))

    class Ck:
        fingerprint = "fp0"

    key = updates.cache_key(Ck(), [Ck()], ["a"], SparsityOptions(), SpectraOptions())
    monkeypatch.setattr(version, "code_fingerprint", lambda: "other code")
    assert updates.cache_key(Ck(), [Ck()], ["a"], SparsityOptions(), SpectraOptions()) != key


def test_cache_key_refuses_a_part_without_a_stable_form():
    with pytest.raises(TypeError, match="object"):
        cache_key("x", 1, thing=object())


def test_file_stamp_sees_a_rewrite_in_place_even_inside_a_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    f = folder / "model.safetensors"
    f.write_bytes(b"a" * 10)
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    file0, folder0 = file_stamp(f), file_stamp(folder)
    dir_mtime = folder.stat().st_mtime_ns
    f.write_bytes(b"b" * 10)  # same size, same folder entry: only the file's mtime moves
    os.utime(folder, ns=(dir_mtime, dir_mtime))  # the folder's own mtime does not
    assert file_stamp(f) != file0 and file_stamp(folder) != folder0
    assert file_stamp(None) == "-" and file_stamp(tmp_path / "nope").endswith("missing")
    # ... and with its old mtime put back (touch -r, a restore): the app's memo kept the old fingerprint
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    file1, folder1 = file_stamp(f), file_stamp(folder)
    time.sleep(0.01)  # (a later ctime)
    f.write_bytes(b"c" * 10)
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    os.utime(folder, ns=(dir_mtime, dir_mtime))
    assert file_stamp(f) != file1 and file_stamp(folder) != folder1


def test_file_stamp_of_a_folder_holding_a_name_that_is_not_utf8(tmp_path):
    """A file name that is not UTF-8 beside the weights (as an archive from elsewhere may extract) is stamped by
    its bytes: before, the stamp raised UnicodeEncodeError when a visitor named the folder."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"a" * 10)
    odd = os.path.join(os.fsencode(folder), b"notes-\xff.txt")
    open(odd, "wb").close()
    first = file_stamp(folder)
    assert len(first) > 8 and file_stamp(folder) == first
    os.utime(odd, ns=(1_000_000_000, 1_000_000_000))
    assert file_stamp(folder) != first  # and it is part of the stamp


def test_atomic_write_replaces_and_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "status.json"
    atomic_write(p, "old")
    atomic_write(p, b"new")
    assert p.read_bytes() == b"new"
    atomic_write(p, "ünïcode")
    assert p.read_bytes() == "ünïcode".encode()  # text is UTF-8 whatever the locale

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)  # fails after the temporary file was written
    with pytest.raises(OSError, match="No space"):
        atomic_write(p, "newer")
    monkeypatch.undo()
    assert p.read_text(encoding="utf-8") == "ünïcode" and [q.name for q in tmp_path.iterdir()] == ["status.json"]


def test_app_loaders_follow_files_rewritten_in_place(tmp_path):
    """The app's checkpoint-info and mask caches are keyed by file stamps: a weights file rewritten in
    place inside its folder (whose own mtime does not move) is read again, never answered stale."""
    import json

    import torch
    from safetensors.torch import save

    from subnetviz import ui
    from subnetviz.masks import MaskSet, save_mask_set

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": False}))
    weights = folder / "model.safetensors"
    infos = []
    for dtype in (torch.float32, torch.bfloat16):
        dir_mtime = folder.stat().st_mtime_ns
        with open(weights, "wb") as fh:  # in place: the folder's entry and mtime stay
            fh.write(save({"model.layers.0.mlp.up_proj.weight": torch.ones(4, 4, dtype=dtype)}))
        os.utime(folder, ns=(dir_mtime, dir_mtime))
        infos.append(ui.checkpoint_info(str(folder)))
    assert infos[0]["fingerprint"] != infos[1]["fingerprint"]
    assert infos[1]["dtypes"] == {"bfloat16": 16}

    mask = tmp_path / "m.safetensors"
    counts = []
    for n in (3, 7):
        save_mask_set(mask, MaskSet({"w": torch.arange(10) < n}))
        counts.append(ui.mask_summary(mask)["count"])
    assert counts == [3, 7]


# --- entries verified on read, and healed ---------------------------------------------------------------
def _published(tmp_path, files: dict[str, bytes]):
    ent = entry("demo", "k", root=tmp_path)
    with ent.publish() as tmp:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
    return ent


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_entry_is_not_served_but_removed_with_a_notice(tmp_path, damage):
    ent = _published(tmp_path, {"summary.json": b'{"a": 1}', "masks/m.safetensors": b"\x00" * 1000})
    assert ent.status() == (True, None)
    victim = ent.folder / "masks" / "m.safetensors"
    if damage == "truncate":
        victim.write_bytes(b"\x00" * 500)
    elif damage == "flip":
        victim.write_bytes(b"\x00" * 999 + b"\x01")
    else:
        victim.unlink()
    ready, notice = ent.status()
    assert not ready and "masks/m.safetensors" in notice and "computed again" in notice
    assert not ent.folder.exists() and not list(tmp_path.iterdir())  # removed, nothing left beside it
    assert _published(tmp_path, {"summary.json": b"{}"}).ready  # and the next publish takes its place


def test_an_entry_without_its_manifest_is_not_served(tmp_path):
    """A folder from an interrupted or older writer (no manifest written last) is recomputed."""
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "summary.json").write_text("{")
    ready, notice = entry("demo", "k", root=tmp_path).status()
    assert not ready and "no readable manifest" in notice


def test_an_analysis_labelled_like_a_missing_value_reads_back_whole(tmp_path):
    """A finetune labelled "NA" (or "None", "null", "nan": a folder's name): its rows were read back from
    the cached tensors.csv as missing, so its report came back empty."""
    from subnetviz.analysis.updates import cached_analysis
    from tests.models import make_llama

    base, ft = make_llama(tmp_path / "base", seed=0), make_llama(tmp_path / "ft", seed=1)
    labels = ["NA", "None"]
    first = cached_analysis(str(base), [str(ft), str(ft)], labels=labels, cache_root=tmp_path / "cache")
    again = cached_analysis(str(base), [str(ft), str(ft)], labels=labels, cache_root=tmp_path / "cache")
    assert again.cached and [r.model for r in again.reports] == labels
    for a, b in zip(first.reports, again.reports, strict=True):
        assert len(b.tensors) == len(a.tensors) > 0 and b.tensors["changed"].sum() == a.tensors["changed"].sum() > 0
    assert list(again.summary()["model"]) == labels


def test_the_cli_heals_a_truncated_cached_analysis(tmp_path, monkeypatch):
    """A truncated cached summary.json / tensors.csv used to break every later run, and a truncated cached
    mask was copied into new outputs with exit 0."""
    from subnetviz.__main__ import main
    from subnetviz.masks import load_mask_set
    from tests.models import make_llama

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    base, ft = make_llama(tmp_path / "base", seed=0), make_llama(tmp_path / "ft", seed=1)
    args = ["analyze", str(base), str(ft), "--no-spectra", "--tolerances", "1e-6"]
    assert main([*args, "--out", str(tmp_path / "o1")]) == 0
    (cached,) = (tmp_path / "home" / "cache" / "updates").iterdir()
    for name in ("summary.json", "tensors.csv"):
        (cached / name).write_bytes((cached / name).read_bytes()[:40])
    mask = next((cached / "masks").glob("*.safetensors"))
    mask.write_bytes(mask.read_bytes()[:100])
    assert main([*args, "--out", str(tmp_path / "o2")]) == 0
    assert (tmp_path / "o2" / "tensors.csv").read_bytes() == (tmp_path / "o1" / "tensors.csv").read_bytes()
    s1, s2 = (json.loads((tmp_path / o / "summary.json").read_text()) for o in ("o1", "o2"))
    assert s1["models"] == s2["models"]
    out_mask = next((tmp_path / "o2" / "masks").glob("*.safetensors"))
    assert load_mask_set(out_mask).count == load_mask_set(next((tmp_path / "o1" / "masks").glob("*"))).count


def test_sweep_removes_what_a_killed_writer_left(tmp_path):
    import subprocess
    import sys

    from subnetviz.cache import sweep

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    left = tmp_path / "updates" / f".abc.tmp-{pid}-123"
    left.mkdir(parents=True)
    (left / "half.csv").write_text("x")
    alive = tmp_path / "updates" / f".def.tmp-{os.getpid()}-456"  # a writer still at work: kept
    alive.mkdir()
    kept = tmp_path / "updates" / "abc"
    kept.mkdir()
    assert sweep(tmp_path) == [left]
    assert not left.exists() and alive.exists() and kept.exists()


# --- the cache's size limit ---------------------------------------------------------------------------
def _aged(kind: str, name: str, size: int, used_ago: float, monkeypatch, tmp_path) -> Path:
    """A published entry of ``kind`` holding ``size`` bytes, last used ``used_ago`` seconds ago."""
    import time

    monkeypatch.setenv("SUBNETVIZ_CACHE_GB", "inf")  # (publishing it removes nothing)
    ent = entry(kind, name)
    with ent.publish() as tmp:
        (tmp / "data.bin").write_bytes(b"x" * size)
    when = time.time() - used_ago
    for f in (ent.folder / ".manifest.json", ent.folder / ".used"):
        f.touch()
        os.utime(f, (when, when))
    return ent.folder


def test_the_analyses_over_the_limit_go_least_recently_used_first(tmp_path, monkeypatch):
    """Each distinct URL of a shared server may publish an analysis (another order of the finetunes, another
    precision: hundreds of MB for a large model), and nothing removed one: the disk filled for good."""
    from subnetviz import config

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path))
    old = _aged("updates", "old", 400_000, 7200, monkeypatch, tmp_path)
    older = _aged("subspaces", "older", 400_000, 9000, monkeypatch, tmp_path)
    recent = _aged("bigram", "recent", 400_000, 60, monkeypatch, tmp_path)  # in use: kept, over the limit or not
    continual = _aged("continual", "run", 400_000, 99_999, monkeypatch, tmp_path)  # training, not an analysis
    monkeypatch.setenv("SUBNETVIZ_CACHE_GB", str(1_200_000 / 2**30))  # 1.2 MB
    new = entry("updates", "new")
    with new.publish() as tmp:
        (tmp / "data.bin").write_bytes(b"y" * 300_000)
    # 1.5 MB of analyses: the least recently used goes first, until at most 1.2 MB is left
    assert not older.exists() and old.exists() and recent.exists() and new.folder.exists() and continual.exists()
    assert entry("updates", "old").status() == (True, None)
    assert not [p for p in (tmp_path / "cache").rglob("*") if ".old-" in p.name]  # nothing left beside them
    from subnetviz.errors import ConfigError

    monkeypatch.setenv("SUBNETVIZ_CACHE_GB", "-1")
    with pytest.raises(ConfigError, match="SUBNETVIZ_CACHE_GB='-1': expected a number of gigabytes"):
        config.cache_limit_bytes()


def test_a_page_whose_analysis_left_the_cache_computes_it_again(tmp_path, monkeypatch):
    """The page keeps its analysis in memory and reads masks from its folder when a view needs them: removed
    from the cache (its size limit), the analysis is computed again, not a 'no such mask file' error."""
    import shutil

    import torch
    from safetensors.torch import save_file

    from subnetviz import ui
    from subnetviz.selection import Workspace

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path))
    base, ft = tmp_path / "base", tmp_path / "ft"
    for folder, value in ((base, 0.0), (ft, 1.0)):
        folder.mkdir()
        w = torch.zeros(4, 4)
        w[0, 0] = value
        save_file({"model.layers.0.mlp.up_proj.weight": w}, str(folder / "model.safetensors"))
    ws = Workspace(str(base), "base", (("ft", str(ft)),), (), None, "cpu", None)
    first = ui.update_analysis(ws)
    assert first.reports[0].changed == 1
    shutil.rmtree(first.source_dir)
    again = ui.update_analysis(ws)
    assert again.source_dir.is_dir() and again.reports[0].changed == 1
