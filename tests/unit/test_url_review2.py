"""The library's own gates for names a stranger may give (review "URL parameters and untrusted text", defects 2 and
3, for callers that do not go through :func:`subnetviz.selection.resolve_choice`: the CLI, jobs, pages calling
:mod:`subnetviz.checkpoints.sources`). While the roots are enforced: a hub id is refused in one line, the same for
every id, before anything under a Hugging Face cache outside the roots is listed or opened; ``org/name`` is a path
only where one exists under a root, and any path outside the roots is refused in the same words whether it exists or
not. An audit hook records what the process opens and lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from subnetviz.checkpoints.sources import (
    checkpoint_files,
    checkpoint_label,
    fingerprint,
    local_folder,
    open_checkpoint,
    resolve_hub_id,
)
from subnetviz.errors import NotCachedError, PathNotAllowedError, SubnetvizError
from tests.audit import watching
from tests.unit.test_hub_inputs_review import NEW, PLANT, base_weights, build_hub, model_files, planted

HF_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")
HUB_REFUSAL = (
    "<id>: hub ids are read from the Hugging Face cache, which lies outside the folders this server may read "
    "(its owner adds it with SUBNETVIZ_ROOTS)."
)


# ---------------------------------------------------------------- what the process touches (an audit hook)
@pytest.fixture
def places(tmp_path, monkeypatch):
    """A root (``inside``, the only one besides the home), the server's working folder outside it (``cwd``), a folder
    outside every root (``outside``) and the hub cache of :func:`build_hub` outside the roots too (``hub``), roots
    enforced."""
    inside, cwd, outside, hub = tmp_path / "inside", tmp_path / "cwd", tmp_path / "outside", tmp_path / "hub"
    for d in (inside, cwd, outside):
        d.mkdir()
    build_hub(hub)
    for var in HF_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(inside))
    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    monkeypatch.chdir(cwd)
    return inside, cwd, outside, hub


def write_model(folder: Path, weights: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True)
    for name, data in model_files(weights).items():
        (folder / name).write_bytes(data)


# every way the library reads a spec: what each says (error class and message) or returns
READERS = {
    "open_checkpoint": open_checkpoint,
    "checkpoint_files": checkpoint_files,
    "fingerprint": fingerprint,
    "local_folder": local_folder,
    "resolve_hub_id": resolve_hub_id,
}


def said(read, spec: str) -> str:
    """``ErrorClass: message`` of reading ``spec``, ``spec`` written ``<id>`` wherever it appears; one line."""
    with pytest.raises(SubnetvizError) as exc:
        read(spec)
    text = str(exc.value)
    assert "\n" not in text
    return f"{type(exc.value).__name__}: {text.replace(spec, '<id>')}"


# ---------------------------------------------------------------- 1. hub ids, the cache outside the roots
CACHED_OR_NEAR = [
    "acme/tiny-base",  # cached: its refs/main was read before its weights were refused
    "acme/Tiny-Base",  # "the cache holds acme/tiny-base (hub ids are case-sensitive ...)"
    "acme/tiny-base@nope",  # "it holds no snapshot for nope, but these: acme/tiny-base@main, @v1"
    "acme/tiny-base@1111",  # a short commit: the snapshots were listed
    "acme/tiny-base@v1",
    "acme/tiny-ft",
    "acme/never-cached",
]


@pytest.mark.parametrize("reader", list(READERS))
def test_a_hub_id_is_refused_alike_before_anything_under_the_cache_is_opened(places, reader):
    """Every id, cached or not, reads the same line, and nothing under the cache is listed or opened (the audit
    hook): with the fix undone, ``acme/tiny-base`` opens or names the cached snapshot and the others list it."""
    hub = places[3]
    with watching(hub) as seen:
        messages = {said(READERS[reader], spec) for spec in CACHED_OR_NEAR}
    assert seen == []
    assert messages == {f"PathNotAllowedError: {HUB_REFUSAL}"}


def test_a_revision_given_apart_is_refused_alike(places):
    hub = places[3]
    with watching(hub) as seen:
        for repo, rev in (("acme/tiny-base", "nope"), ("acme/tiny-base", "1111"), ("acme/nothing", None)):
            with pytest.raises(PathNotAllowedError) as exc:
                resolve_hub_id(repo, rev)
            spec = repo if rev is None else f"{repo}@{rev}"
            assert str(exc.value) == HUB_REFUSAL.replace("<id>", spec)
    assert seen == []


def test_a_hub_id_opens_where_the_cache_lies_under_the_roots(places, monkeypatch):
    """What stays: the cache under a root, ids are read from it (the numbers against the weights written there)."""
    inside = places[0]
    build_hub(inside / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(inside / "hub"))
    w = base_weights()
    ck = open_checkpoint("acme/tiny-base")  # refs/main: the base weights
    np.testing.assert_array_equal(ck.get("model.norm.weight").numpy(), w["model.norm.weight"])
    q = "model.layers.0.self_attn.q_proj.weight"
    got = open_checkpoint("acme/tiny-base@v1").get(q).numpy() - w[q]  # tag v1: the planted finetune
    assert sorted(np.flatnonzero(got)) == PLANT[q]
    assert resolve_hub_id("acme/tiny-base").name == NEW
    with pytest.raises(NotCachedError):
        resolve_hub_id("acme/never-cached")


# ---------------------------------------------------------------- 2. whether a path outside the roots exists
@pytest.mark.parametrize("cache_inside", [False, True])
@pytest.mark.parametrize("reader", [r for r in READERS if r != "resolve_hub_id"])
def test_org_name_outside_the_roots_reads_alike_whether_it_exists_or_not(places, monkeypatch, reader, cache_inside):
    """``acme/tiny`` is a model folder in the working folder (outside the roots), ``acme/none`` nothing: both are hub
    ids, refused or not cached in the same words, and nothing in the folder is opened or listed. With the fix undone,
    the folder was read as a path ("model.safetensors in …: leads outside") and the other was not cached."""
    inside, cwd, _, _ = places
    if cache_inside:
        (inside / "hub").mkdir()
        monkeypatch.setenv("HF_HUB_CACHE", str(inside / "hub"))
    write_model(cwd / "acme" / "tiny", base_weights())
    with watching(cwd / "acme") as seen:
        there, not_there = said(READERS[reader], "acme/tiny"), said(READERS[reader], "acme/none")
    assert seen == []
    assert there == not_there
    assert there.startswith("NotCachedError" if cache_inside else "PathNotAllowedError")


def test_org_name_outside_the_roots_is_labelled_alike_whether_it_exists_or_not(places):
    """A label is the id as given (it was the folder's name, ``tiny``, for the one that exists)."""
    _, cwd, _, _ = places
    write_model(cwd / "acme" / "tiny", base_weights())
    assert (checkpoint_label("acme/tiny"), checkpoint_label("acme/none")) == ("acme/tiny", "acme/none")


@pytest.mark.parametrize(
    ("there", "not_there"),
    [
        ("../outside/secret.safetensors", "../outside/nope.safetensors"),
        ("../outside/secret.txt", "../outside/nope.txt"),
        ("../outside/folder", "../outside/nofolder"),
        ("ABS/secret.safetensors", "ABS/nope.safetensors"),
    ],
)
def test_any_path_outside_the_roots_is_refused_alike_whether_it_exists_or_not(places, there, not_there):
    """A weights file there read "leads outside", another file "not a checkpoint file" and a missing one "no such
    file or folder"; now the roots are asked first, in the same words (after the name as given)."""
    _, _, outside, _ = places
    (outside / "secret.safetensors").write_bytes(b"\0" * 16)
    (outside / "secret.txt").write_text("root:x:0:0")
    write_model(outside / "folder", base_weights())
    there, not_there = (s.replace("ABS", str(outside)) for s in (there, not_there))
    with watching(outside) as seen:
        for read in (open_checkpoint, checkpoint_files, fingerprint):
            first, second = said(read, there), said(read, not_there)
            assert first.split(": ", 2)[2] == second.split(": ", 2)[2], (first, second)
            assert first.startswith("PathNotAllowedError: ") and "outside the folders this server may read" in first
    assert seen == []


def test_org_name_under_a_root_is_still_a_path(places, monkeypatch):
    """What stays: ``org/name`` that exists under a root is that folder (read, labelled by its name), with roots
    enforced; and without them, any existing ``org/name`` is a path."""
    inside, cwd, _, _ = places
    w = base_weights()
    write_model(inside / "acme" / "tiny", w)
    write_model(cwd / "acme" / "other", planted(w))
    monkeypatch.chdir(inside)
    ck = open_checkpoint("acme/tiny")
    np.testing.assert_array_equal(ck.get("lm_head.weight").numpy(), w["lm_head.weight"])
    assert checkpoint_label("acme/tiny") == "tiny" and ck.source == "acme/tiny"
    assert checkpoint_files("acme/tiny")[0] == [Path("acme/tiny/model.safetensors")]
    monkeypatch.delenv("SUBNETVIZ_ENFORCE_ROOTS")
    monkeypatch.chdir(cwd)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert sorted(np.flatnonzero(open_checkpoint("acme/other").get(q).numpy() - w[q])) == PLANT[q]
    assert checkpoint_label("acme/other") == "other"


def test_a_snapshot_folder_outside_the_roots_is_labelled_without_reading_its_refs(places, monkeypatch):
    """A snapshot path's label asked ``refs/main`` outside the roots; now it names the commit there and opens
    nothing; under the roots (or not enforced) ``refs/main`` still decides."""
    hub = places[3]
    snap = hub / "models--acme--tiny-base" / "snapshots" / NEW
    with watching(hub) as seen:
        assert checkpoint_label(snap) == f"acme/tiny-base@{NEW[:7]}"
    assert seen == []
    monkeypatch.delenv("SUBNETVIZ_ENFORCE_ROOTS")
    assert checkpoint_label(snap) == "acme/tiny-base"  # refs/main names this commit
