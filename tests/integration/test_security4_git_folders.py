"""A model folder that is a ``git clone`` of a hub repository (its ``.git/`` inside) on a server that enforces its
roots: ``.git/`` is never read (its config may hold a token), yet the model loads — it was refused as ".git …: leads
outside the folders this server may read" once ``.git`` folders became unreadable — and a clone whose weights
git-annex keeps (``model.safetensors -> .git/annex/objects/…``) loads too: the contents store is a model's files,
not the repository's history or remotes."""

from __future__ import annotations

import os

import pytest

from subnetviz import config
from subnetviz.checkpoints import open_checkpoint
from subnetviz.checkpoints.models import check_folder_files, folder_entries
from subnetviz.errors import PathNotAllowedError
from tests.models import save_model, tiny_model


@pytest.fixture
def clone(tmp_path, monkeypatch):
    folder = save_model(tiny_model("llama", seed=0, kv_heads=2), tmp_path / "clone")
    (folder / ".git" / "refs").mkdir(parents=True)
    (folder / ".git" / "config").write_text('[remote "origin"]\n  url = https://user:hf_SECRET@huggingface.co/x\n')
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    return folder


def test_a_clone_with_its_git_folder_loads_and_git_is_never_read(clone):
    assert not any(name.startswith(".git") for name, _ in folder_entries(clone))
    check_folder_files(clone)  # (what a model's loader is given: every file it may open, checked)
    assert open_checkpoint(str(clone)).meta("lm_head.weight").shape[0] > 0
    with pytest.raises(PathNotAllowedError, match=r"not readable \(this server never reads files in .git"):
        config.check_readable(clone / ".git" / "config")
    with pytest.raises(PathNotAllowedError, match="not readable"):
        config.check_readable(clone / ".GIT" / "config")  # (whether or not anything is there)


def test_weights_kept_by_git_annex_are_read(clone):
    key = "SHA256E-s1--ab.safetensors"  # (annex keeps each file in a folder of its key's name)
    store = clone / ".git" / "annex" / "objects" / "Xy" / "Zw" / key / key
    store.parent.mkdir(parents=True)
    os.replace(clone / "model.safetensors", store)
    (clone / "model.safetensors").symlink_to(os.path.relpath(store, clone))
    check_folder_files(clone)  # (what a model's loader is given: every file it may open, checked)
    assert open_checkpoint(str(clone)).meta("lm_head.weight").shape[0] > 0
    assert config.check_readable(clone / "model.safetensors") == store.resolve()
    with pytest.raises(PathNotAllowedError, match="not readable"):
        config.check_readable(clone / ".git" / "annex" / "config")  # (only the objects store)


def test_weights_git_annex_keeps_in_a_submodule_are_read_and_its_config_is_not(tmp_path, monkeypatch):
    """git-annex in a submodule: the submodule's files lead into <super>/.git/modules/<sub>/annex/objects (they
    were refused once .git folders became unreadable); the submodule's own config stays unreadable."""
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    git = tmp_path / "super" / ".git" / "modules" / "models" / "sub"  # (a submodule named models/sub)
    store = git / "annex" / "objects" / "Xk" / "Pq" / "K.safetensors" / "K.safetensors"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"12345678")
    (git / "config").write_text("[remote]\n")
    (tmp_path / "super" / "sub").mkdir()
    (tmp_path / "super" / "sub" / "model.safetensors").symlink_to(store)
    assert config.check_readable(tmp_path / "super" / "sub" / "model.safetensors") == store.resolve()
    for private in (git / "config", tmp_path / "super" / ".git" / "config", git / "objects" / "annex" / "x"):
        with pytest.raises(PathNotAllowedError, match="not readable"):
            config.check_readable(private)
