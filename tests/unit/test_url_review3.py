"""Shared dashboards opened by strangers (review "URL parameters and untrusted text", defects 2 and 3), for the
readers the earlier fixes left out: the adapter test (:func:`~subnetviz.checkpoints.adapters.adapter_folder`, asked by
every weight analysis and the Workspace), the model-running reader
(:func:`~subnetviz.checkpoints.models.model_folder`: Behaviour, Bigram, training), the app's own choice
(:func:`~subnetviz.selection.resolve_choice`, one rule with the readers) and the CLI's ``--out`` check. While the
roots are enforced, a path outside them reads one message whether it names an adapter, a model, another folder or
nothing, and nothing outside the roots is asked about: an audit hook records what is opened or listed, and a
wrapper of ``os.stat`` every question of whether something is there (``exists``, ``is_dir``, ``is_file``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from subnetviz.errors import NotCachedError, PathNotAllowedError, SubnetvizError
from tests.audit import watching
from tests.unit.test_hub_inputs_review import LORA, NEW, base_weights, build_hub, lora_files, model_files

HF_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")
OUTSIDE_WORDS = "outside the folders this server may read"


# ---------------------------------------------------------------- what the process touches
def test_the_watch_sees_a_stat_an_open_and_a_listing(tmp_path, monkeypatch):
    """The premise: what the readers did before the fix (``os.path.isdir``, ``Path.is_file``, a read, a listing) is
    recorded; resolving a path's links (the roots check) is not."""
    (tmp_path / "f").write_text("x")
    with watching(tmp_path, monkeypatch=monkeypatch) as seen:
        (tmp_path / "f").resolve()
        (tmp_path / "nope").resolve()
        assert seen == []
        os.path.isdir(tmp_path / "f")
        (tmp_path / "f").is_file()
        (tmp_path / "f").read_text()
        os.listdir(tmp_path)
    assert [e for e, _ in seen] == ["stat", "stat", "open", "os.listdir"]


# ---------------------------------------------------------------- places
@pytest.fixture
def places(tmp_path, monkeypatch):
    """A root (``inside``, the only one besides the home) holding the hub cache of :func:`build_hub`, a base model
    and a LoRA adapter folder; the server's working folder outside it (``cwd``), holding ``acme/lora`` (an adapter)
    and ``acme/model`` (a model) as a stranger's ``org/name`` might name them; a folder outside every root
    (``outside``) holding an adapter folder ``lora``, a model folder ``model`` and a file. Roots enforced."""
    inside, cwd, outside = tmp_path / "inside", tmp_path / "cwd", tmp_path / "outside"
    build_hub(inside / "hub")
    lora, _ = lora_files()
    model = model_files(base_weights())
    for folder, files in (
        (inside / "base", model),
        (inside / "lora", lora),
        (cwd / "acme" / "lora", lora),
        (cwd / "acme" / "model", model),
        (outside / "lora", lora),
        (outside / "model", model),
    ):
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
    (outside / "secret.txt").write_text("root:x:0:0")
    for var in HF_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(inside / "hub"))
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(inside))
    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    monkeypatch.chdir(cwd)
    return inside, cwd, outside


def said(read, spec: str) -> str:
    """``ErrorClass: why`` of reading ``spec``: the message past the name it begins with, ``spec`` written ``<id>``
    wherever else it appears; one line."""
    with pytest.raises(SubnetvizError) as exc:
        read(spec)
    text = str(exc.value)
    assert "\n" not in text
    return f"{type(exc.value).__name__}: {text.split(': ', 1)[1].replace(spec, '<id>')}"


# the same places named as a stranger's link may: (what is there, what is not)
PATHS = [
    ("../outside/lora", "../outside/nolora"),
    ("../outside/model", "../outside/nomodel"),
    ("../outside/secret.txt", "../outside/nope.txt"),
    ("ABS/lora", "ABS/nolora"),
    ("ABS/model", "ABS/nomodel"),
]


def _spelled(pair: tuple[str, str], outside: Path) -> tuple[str, str]:
    there, not_there = pair
    return there.replace("ABS", str(outside)), not_there.replace("ABS", str(outside))


# ---------------------------------------------------------------- 1. adapters
def _adapter_readers(inside: Path) -> dict:
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune
    from subnetviz.uilogic import checkpoint_info

    base = open_checkpoint(str(inside / "base"))
    return {"open_finetune": lambda spec: open_finetune(spec, base), "checkpoint_info": checkpoint_info}


@pytest.mark.parametrize("pair", PATHS)
def test_a_path_outside_the_roots_reads_alike_as_a_finetune_whether_an_adapter_is_there_or_not(
    places, monkeypatch, pair
):
    """An adapter folder outside the roots was found an adapter (``os.path.isdir`` and ``adapter_config.json``
    asked there) and refused as "adapter_config.json in …: leads outside", a missing one "outside the folders":
    now both are refused in the readers' words, and nothing there is asked about."""
    inside, _, outside = places
    from subnetviz.checkpoints.adapters import is_adapter

    there, not_there = _spelled(pair, outside)
    readers = _adapter_readers(inside)
    with watching(outside, monkeypatch=monkeypatch) as seen:
        assert not is_adapter(there) and not is_adapter(not_there)
        for name, read in readers.items():
            first, second = said(read, there), said(read, not_there)
            assert first == second, (name, first, second)
            assert first.startswith("PathNotAllowedError: ") and OUTSIDE_WORDS in first
    assert seen == []


def test_org_name_outside_the_roots_is_a_hub_id_as_a_finetune_whether_an_adapter_is_there_or_not(places, monkeypatch):
    """``acme/lora`` is an adapter folder in the working folder (outside the roots), ``acme/none`` nothing: both are
    hub ids the cache does not hold, in the same words, and nothing in the folder is asked about (the adapter was
    found there and refused as leading outside)."""
    inside, cwd, _ = places
    readers = _adapter_readers(inside)
    with watching(cwd / "acme", monkeypatch=monkeypatch) as seen:
        for name, read in readers.items():
            first, second = said(read, "acme/lora"), said(read, "acme/none")
            assert first == second, (name, first, second)
            assert first.startswith("NotCachedError: ")
    assert seen == []


def test_an_adapter_under_the_roots_is_still_merged(places):
    """What stays: an adapter folder under a root, and a cached hub id's, are merged onto the base: W + s·B·A,
    computed here in float64 from the planted B and A and rounded once."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import adapter_folder, open_finetune

    inside, _, _ = places
    w = base_weights()
    _, deltas = lora_files()
    base = open_checkpoint(str(inside / "base"))
    assert adapter_folder(str(inside / "lora")) == inside / "lora"
    assert adapter_folder("acme/tiny-lora").name == LORA
    for spec in (str(inside / "lora"), "acme/tiny-lora"):
        merged = open_finetune(spec, base)
        for name, d in deltas.items():
            want = (w[name].astype(np.float64) + d).astype(np.float32)
            np.testing.assert_array_equal(merged.get(name).numpy(), want)
    assert adapter_folder(str(inside / "base")) is None  # a model, no adapter


# ---------------------------------------------------------------- 2. models run (Behaviour, Bigram, training)
@pytest.mark.parametrize("pair", PATHS)
def test_a_path_outside_the_roots_reads_alike_as_a_model_to_run_whether_one_is_there_or_not(places, monkeypatch, pair):
    """A model folder outside the roots was returned (its ``config.json`` asked there) and a missing one read "not a
    model folder"; an adapter there was named an adapter. Now every one is refused in the weight readers' words,
    and nothing there is asked about."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.models import model_folder, refuse_adapter

    _, _, outside = places
    there, not_there = _spelled(pair, outside)
    with watching(outside, monkeypatch=monkeypatch) as seen:
        first, second = said(model_folder, there), said(model_folder, not_there)
        refuse_adapter(there)  # (nothing said of what is there: reading it refuses it)
        assert first == second, (first, second)
        assert first.startswith("PathNotAllowedError: ") and OUTSIDE_WORDS in first
        assert first == said(open_checkpoint, there)  # the words the weight pages use
    assert seen == []


def test_a_model_under_the_roots_is_still_run_and_an_adapter_there_named(places):
    from subnetviz.checkpoints.models import model_folder
    from subnetviz.errors import CheckpointError

    inside, _, _ = places
    assert model_folder(str(inside / "base")) == inside / "base"
    assert model_folder("acme/tiny-base") == inside / "hub" / "models--acme--tiny-base" / "snapshots" / NEW
    for adapter in (str(inside / "lora"), "acme/tiny-lora"):
        with pytest.raises(CheckpointError, match=r": a LoRA/PEFT adapter \(adapter_config.json\), not a model"):
            model_folder(adapter)
    with pytest.raises(NotCachedError):  # org/name outside the roots: a hub id, whatever is there
        model_folder("acme/model")


# ---------------------------------------------------------------- 3. the app's choice, one rule with the readers
def test_the_app_never_hands_on_a_name_the_readers_open_outside_the_roots(places, monkeypatch):
    """Without ``SUBNETVIZ_ENFORCE_ROOTS`` (the library called as the app calls it) ``acme/model`` in the working
    folder, outside ``SUBNETVIZ_ROOTS``, was let through as a hub id while the readers then opened it as that
    folder; now it is a path there too, refused, and an id with nothing of its name stays a hub id."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.selection import resolve_choice

    inside, cwd, _ = places
    monkeypatch.delenv("SUBNETVIZ_ENFORCE_ROOTS")
    with pytest.raises(PathNotAllowedError, match=OUTSIDE_WORDS):
        resolve_choice("acme/model", {})
    assert resolve_choice("acme/tiny-base", {}) == "acme/tiny-base"
    ck = open_checkpoint(resolve_choice("acme/tiny-base", {}))
    np.testing.assert_array_equal(ck.get("lm_head.weight").numpy(), base_weights()["lm_head.weight"])
    assert ck.root == inside / "hub" / "models--acme--tiny-base" / "snapshots" / NEW


def test_a_hub_id_reads_one_line_in_the_app_and_in_the_readers(places, monkeypatch, tmp_path):
    """The cache outside the roots: the app's refusal and every reader's are one line, word for word."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.models import model_folder
    from subnetviz.selection import resolve_choice

    build_hub(tmp_path / "far")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "far"))
    want = (
        "PathNotAllowedError: hub ids are read from the Hugging Face cache, which lies outside the folders this "
        "server may read (its owner adds it with SUBNETVIZ_ROOTS)."
    )
    with watching(tmp_path / "far", monkeypatch=monkeypatch) as seen:
        for spec in ("acme/tiny-base", "acme/tiny-base@v1", "acme/never-cached", "acme/lora"):
            for read in (lambda s: resolve_choice(s, {}), open_checkpoint, model_folder):
                assert said(read, spec) == want, spec
    assert seen == []


def test_a_name_the_hub_cannot_hold_is_a_path_in_the_app(places, monkeypatch):
    """``views/..`` (huggingface_hub refuses ``..`` in an id) is a path: under a root it is that folder, outside
    them the app's refusal, in the same words whether it exists or not."""
    from subnetviz.selection import resolve_choice

    inside, cwd, _ = places
    (inside / "views").mkdir()
    (cwd / "views").mkdir()
    first, second = said(lambda s: resolve_choice(s, {}), "views/.."), said(lambda s: resolve_choice(s, {}), "nope/..")
    assert first == second and OUTSIDE_WORDS in first and first.startswith("PathNotAllowedError: no zoo member")
    monkeypatch.chdir(inside)
    assert resolve_choice("views/..", {}) == str(inside / "views" / "..")


# ---------------------------------------------------------------- 4. the CLI's --out check
def test_out_may_not_replace_the_cached_model_an_org_name_reads(places):
    """``acme/tiny-base`` is read from the hub cache (under the roots) although a folder of that name is in the
    working folder outside them: replacing the cache's folder of it would delete the input. The check asked whether
    ``acme/tiny-base`` existed where the readers do not look, and guarded that folder instead."""
    from subnetviz.cli.common import check_out

    inside, cwd, _ = places
    (cwd / "acme" / "tiny-base").mkdir()
    repo = inside / "hub" / "models--acme--tiny-base"
    with pytest.raises(SubnetvizError, match=r"which the input acme/tiny-base reads"):
        check_out(str(repo), True, ["acme/tiny-base"])
    assert (repo / "snapshots" / NEW / "model.safetensors").is_file()


@pytest.mark.parametrize("spec", ["views/..", "acme/x y", "acme/a--b", "acme/.hidden"])
def test_a_name_the_hub_cannot_hold_is_a_path_to_the_readers_as_to_the_app(spec):
    """The app read `views/..` as a path and the readers as a hub id ("not in the local Hugging Face cache ... hf
    download views/.."): one rule, huggingface_hub's own."""
    from subnetviz.checkpoints.sources import reads_as_hub_id
    from subnetviz.selection import _hub_id

    assert not reads_as_hub_id(spec) and not _hub_id(spec)
    assert reads_as_hub_id("acme/tiny-base") and reads_as_hub_id("acme/tiny-base@main")
