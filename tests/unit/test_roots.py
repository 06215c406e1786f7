"""The server reads only under its roots — every file actually opened, not only the path given.

Reproductions from the issue: a folder inside a root whose ``model.safetensors`` is a symlink to a
file elsewhere, and a shard index listing ``../../…`` or an absolute path (``/etc/shadow``) were read
and the absolute name echoed back. And visitors never see absolute server paths.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from subnetviz import config
from subnetviz.checkpoints import open_checkpoint
from subnetviz.errors import CheckpointError, PathNotAllowedError
from subnetviz.masks import MaskSet, load_mask_set, save_mask_set


@pytest.fixture
def two_places(tmp_path, monkeypatch):
    """A root (``inside``) and a folder outside it holding a real weights file and a secret."""
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    save_file({"w": torch.ones(2, 2)}, str(outside / "model.safetensors"))
    (outside / "secret.txt").write_text("root:x:0:0")
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(inside))
    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    return inside, outside


def test_symlinked_weights_leading_outside_are_refused(two_places):
    inside, outside = two_places
    folder = inside / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(outside / "model.safetensors")
    with pytest.raises(PathNotAllowedError, match=r"^model\.safetensors in inside/ckpt: leads outside") as exc:
        open_checkpoint(folder)
    assert str(outside) not in str(exc.value) and str(inside) not in str(exc.value)


def test_symlinks_inside_the_roots_still_work(two_places):
    """An HF cache snapshot is symlinks into blobs/ of the same root: read as before."""
    inside, outside = two_places
    (inside / "blobs").mkdir()
    (outside / "model.safetensors").rename(inside / "blobs" / "abc123")
    snap = inside / "snap"
    snap.mkdir()
    (snap / "model.safetensors").symlink_to(inside / "blobs" / "abc123")
    assert open_checkpoint(snap).get("w").sum() == 4


@pytest.mark.parametrize("entry", ["../../outside/model.safetensors", "ABS", "sub/../../x.safetensors"])
def test_index_entries_leaving_the_folder_are_refused(two_places, entry):
    inside, outside = two_places
    folder = inside / "sharded"
    folder.mkdir()
    save_file({"a": torch.zeros(2)}, str(folder / "model-00001.safetensors"))
    entry = str(outside / "secret.txt") if entry == "ABS" else entry
    index = {"weight_map": {"a": "model-00001.safetensors", "b": entry}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match=r"shard entry #\d is (an absolute path|a path leaving its folder)"
    ) as exc:
        open_checkpoint(folder)
    assert "secret" not in str(exc.value) and "outside" not in str(exc.value)


def test_index_entries_are_checked_without_roots_too(tmp_path, monkeypatch):
    """The CLI is not restricted to roots, but an index never names files outside its folder."""
    monkeypatch.delenv("SUBNETVIZ_ENFORCE_ROOTS", raising=False)
    (tmp_path / "m.index.json").write_text(json.dumps({"weight_map": {"a": "/etc/shadow"}}))
    with pytest.raises(CheckpointError, match="shard entry #1 is an absolute path"):
        open_checkpoint(tmp_path / "m.index.json")


def test_mask_symlink_outside_is_refused(two_places):
    inside, outside = two_places
    save_mask_set(outside / "m.safetensors", MaskSet({"w": torch.ones(3, dtype=torch.bool)}, {}))
    (inside / "m.safetensors").symlink_to(outside / "m.safetensors")
    with pytest.raises(PathNotAllowedError, match="leads outside"):
        load_mask_set(inside / "m.safetensors")


def test_without_enforcement_the_cli_reads_anywhere(two_places, monkeypatch):
    inside, outside = two_places
    monkeypatch.delenv("SUBNETVIZ_ENFORCE_ROOTS")
    (inside / "ckpt").mkdir()
    (inside / "ckpt" / "model.safetensors").symlink_to(outside / "model.safetensors")
    assert open_checkpoint(inside / "ckpt").names == ["w"]


def test_visitors_see_paths_relative_to_a_root(two_places):
    inside, outside = two_places
    assert config.display_path(inside / "zoo" / "base") == "inside/zoo/base"
    assert config.display_path(outside / "secret.txt") == "…/secret.txt"
    msg = f"{inside}/zoo/base/model.safetensors: truncated; compare {outside}/secret.txt."
    assert config.redact(msg) == "inside/zoo/base/model.safetensors: truncated; compare …/secret.txt."
    # a message already redacted stays as it is (a page redacts the error it shows: "……/secret.txt" before)
    assert config.redact(config.redact(msg)) == config.redact(msg)
    # floor division in a formula is no path (the FP8 and grouped-int notes read "j …/ 16")
    rule = "w = (code − zero[i, j // 16]) × scale[i // bs, j // bs] × 1 / 127"
    assert config.redact(rule) == rule
    with pytest.raises(PathNotAllowedError) as exc:
        config.check_allowed(outside)
    assert str(outside) not in str(exc.value) and str(inside) not in str(exc.value)


def test_a_symlink_loop_in_a_checkpoint_folder_is_one_line(tmp_path):
    """``ln -s model.safetensors ft/model.safetensors``: Path.resolve raised RuntimeError ("Symlink loop"), a
    traceback; now the path helpers' own error, naming the file and its folder."""
    folder = tmp_path / "ft"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to("model.safetensors")
    with pytest.raises(PathNotAllowedError, match=r"^model\.safetensors in .*ft: a loop of symbolic links") as exc:
        open_checkpoint(folder)
    assert "\n" not in str(exc.value)
    for helper in (config.check_allowed, config.check_readable):
        with pytest.raises(PathNotAllowedError, match="a loop of symbolic links"):
            helper(folder / "model.safetensors")
    assert config.display_path(folder / "model.safetensors").endswith("model.safetensors")


@pytest.mark.parametrize("path", ["/srv/models/" + "x" * 300, "x" * 300, "org/" + "x" * 300, "/a/" + "b/" * 2100])
def test_a_name_no_file_can_have_is_refused_in_one_line(two_places, path):
    """``?ft=`` 300 letters: Path.exists raised OSError (ENAMETOOLONG) on every page of the shared link (a bug
    notice, and the link stayed broken); now refused in one line, the name shortened, and ``exists`` says False."""
    from subnetviz.checkpoints.adapters import is_adapter
    from subnetviz.selection import resolve_choice

    for refuse in (config.check_allowed, config.check_readable, config.check_name, lambda p: resolve_choice(p, {})):
        with pytest.raises(PathNotAllowedError, match="a name longer than file systems take") as exc:
            refuse(path)
        assert "\n" not in str(exc.value) and "/srv" not in str(exc.value) and len(str(exc.value)) < 200
    assert not config.exists(path) and not is_adapter(path)
    assert len(config.display_path(path)) < 120


@pytest.mark.parametrize("path", ["/srv/models/a\0b", "a\0b", "~/x\0"])
def test_a_path_with_a_nul_byte_is_refused_in_one_line(two_places, path):
    """A URL parameter ``base=a%00b`` reaching the path helpers: ValueError ("embedded null byte") before, a bug
    notice in the app; now PathNotAllowedError, which the callers catch, and display / redact never raise."""
    for helper in (config.check_allowed, config.check_readable):
        with pytest.raises(PathNotAllowedError, match="a path with a NUL byte") as exc:
            helper(path)
        assert "\0" not in str(exc.value) and "/srv" not in str(exc.value) and "\n" not in str(exc.value)
    shown = config.display_path(path)
    assert "\0" not in shown and "/srv" not in shown
    redacted = config.redact(f"cannot open {path}: no such file.")  # (a message that names it: never raises)
    assert not path.startswith("/") or ("\0" not in redacted and "/srv" not in redacted)


def test_the_home_stays_a_root_beside_the_named_ones(two_places):
    """``SUBNETVIZ_ROOTS=/data`` left out the server's own home: a job launched from the page trained to the end,
    then failed reading its own model in runs/ ("leads outside the folders this server may read")."""
    inside, outside = two_places
    run = config.home() / "runs" / "r1" / "model.safetensors"
    assert config.check_readable(run) == run.resolve() and config.check_allowed(run) == run.resolve()
    assert config.allowed_roots()[:2] == [config.home().resolve(), inside.resolve()]
    with pytest.raises(PathNotAllowedError):
        config.check_readable(outside / "model.safetensors")


def test_the_default_roots_hold_the_datasets_cache(tmp_path, monkeypatch):
    """With no SUBNETVIZ_ROOTS the roots are the home, the hub cache, the datasets cache and the working folder,
    each where huggingface_hub and datasets put it (HF_HOME, HF_DATASETS_CACHE): without the datasets cache every
    server, a laptop's ``make app`` too, refused the Bigram page's ``hf:`` corpora."""
    monkeypatch.delenv("SUBNETVIZ_ROOTS", raising=False)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    roots = config.allowed_roots()
    assert (tmp_path / "hf" / "hub").resolve() in roots and (tmp_path / "hf" / "datasets").resolve() in roots
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "ds"))
    assert (tmp_path / "ds").resolve() in config.allowed_roots()
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path / "data"))  # the owner's roots: only those (and the home)
    assert config.allowed_roots() == [(tmp_path / "home").resolve(), (tmp_path / "data").resolve()]
