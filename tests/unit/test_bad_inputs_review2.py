"""Files a stranger or a broken disk brings, second round (review "bad inputs"): tokenizer files of the wrong JSON
type (D3), files and folder links in a model folder's subfolders (D4) and named pipes (D6) that transformers would
open, config.json's wrong-typed values named with their folder (D1) and a shard index whose weight_map is no
object (N1). Each error is one line naming the folder and the file.

The tokenizer model is :func:`tests.models.make_tiny_llama` (a character tokenizer, 15 tokens); a file outside
the roots holds a marker text, so a test can tell whether transformers read it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from subnetviz.cli import main
from subnetviz.errors import CheckpointError, ConfigError, PathNotAllowedError
from tests.unit.test_bad_inputs_review import Unblocker  # opens a FIFO a reader would wait on for good

SECRET = "SECRET-OUTSIDE-ROOTS"
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def tok_model(tmp_path_factory) -> Path:
    """A tiny Llama with its tokenizer (the source every test copies; never changed)."""
    from tests.models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tok") / "model")


@pytest.fixture
def roots(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(a root folder, a secret file outside it), with the roots enforced as the app and its jobs run."""
    root = tmp_path / "roots"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jinja").write_text(SECRET)
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(root))
    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    return root, outside / "secret.jinja"


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    assert not any("Traceback" in line for line in err), err
    return err[-1]


# --- D3: tokenizer files of the wrong JSON type ------------------------------------------------------------------
WRONG_TYPE = ["tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"]


@pytest.mark.parametrize("name", WRONG_TYPE)
def test_a_tokenizer_file_of_the_wrong_json_type_is_one_line(tok_model, tmp_path, name):
    """`[1]` in tokenizer_config.json / tokenizer.json / special_tokens_map.json ended in an AttributeError or
    TypeError from inside transformers (behaviour caught only OSError and ValueError)."""
    from subnetviz.checkpoints.models import load_tokenizer

    bad = _copy(tok_model, tmp_path / "bad")
    (bad / name).write_text("[1]")
    with pytest.raises(CheckpointError) as exc:
        load_tokenizer(str(bad))
    assert str(exc.value) == f"{bad}: its tokenizer cannot be loaded ({name}: expected a JSON object, found list)."


def test_other_tokenizer_failures_are_one_line_naming_the_file(tok_model, tmp_path):
    from subnetviz.checkpoints.models import load_tokenizer

    cases = {
        "tokenizer_config.json": ('{"tokenizer_class": ["x"]}', "tokenizer_config.json: tokenizer_class is a list"),
        "tokenizer.json": ("{bad", "tokenizer.json: not valid JSON"),
    }
    for i, (name, (text, said)) in enumerate(cases.items()):
        bad = _copy(tok_model, tmp_path / f"bad{i}")
        (bad / name).write_text(text)
        with pytest.raises(CheckpointError, match=f"^{bad}: its tokenizer cannot be loaded \\({said}") as exc:
            load_tokenizer(str(bad))
        assert "\n" not in str(exc.value)
    bare = _copy(tok_model, tmp_path / "none")
    for f in bare.glob("*token*"):
        f.unlink()
    with pytest.raises(CheckpointError, match=r"its tokenizer cannot be loaded \(no tokenizer file there"):
        load_tokenizer(str(bare))
    assert len(load_tokenizer(str(tok_model))) == 15  # the untouched model's tokenizer loads


@pytest.mark.parametrize("name", WRONG_TYPE)
def test_behavior_says_which_tokenizer_file_is_wrong(tok_model, tmp_path, capsys, name):
    """The CLI's `behavior` exited 1 with a traceback; now 2 with the line naming the base and the file."""
    bad = _copy(tok_model, tmp_path / "bad")
    (bad / name).write_text("[1]")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    out = tmp_path / "out"
    args = ["behavior", str(bad), str(tok_model), "--prompts", str(prompts), "--out", str(out), "--no-random"]
    assert main(args) == 2
    err = _one_error_line(capsys)
    assert f"{bad}: its tokenizer cannot be loaded ({name}: expected a JSON object, found list)" in err, err
    assert not out.exists()


def test_the_behaviour_plan_bigram_and_training_paths_say_it_too(tok_model, tmp_path):
    """Every other path that loads a model's tokenizer: the Behaviour page's cost estimate (planned_passes), the
    bigram job's vocabulary size (it called AutoTokenizer unguarded, and without local_files_only) and corpus,
    and the training config's check."""
    from subnetviz.analysis.behavior import planned_passes
    from subnetviz.bigram.job import tokenizer_size
    from subnetviz.bigram.stats import corpus_from_text
    from subnetviz.training.config import _base_tokenizer

    bad = _copy(tok_model, tmp_path / "bad")
    (bad / "tokenizer_config.json").write_text("[1]")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("12+3=15\n")
    said = "its tokenizer cannot be loaded (tokenizer_config.json: expected a JSON object, found list)."
    config = {"kind": "behavior", "base": str(bad), "finetuned": [str(tok_model)], "prompts": [str(prompts)]}
    for call in (
        lambda: planned_passes(config),
        lambda: tokenizer_size(bad),
        lambda: corpus_from_text(corpus, bad, seq_len=4),
    ):
        with pytest.raises(CheckpointError) as exc:
            call()
        assert str(exc.value) == f"{bad}: {said}"
    with pytest.raises(ConfigError) as exc:
        _base_tokenizer(str(bad))
    assert str(exc.value) == f"base {str(bad)!r}: {said}"
    assert tokenizer_size(tok_model) == 15


def test_the_behaviour_page_shows_one_line_not_the_bug_notice(tok_model, tmp_path, monkeypatch, typed_options):
    """In the app the page's error boundary showed "Something went wrong inside subnetviz … This is a bug"."""
    from streamlit.testing.v1 import AppTest

    from tests.app_fixtures import APP

    home = tmp_path / "home"
    (home / "zoo" / "data").mkdir(parents=True)
    (home / "zoo" / "data" / "sums_eval.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n')
    ft = _copy(tok_model, tmp_path / "ft")
    bad = _copy(tok_model, tmp_path / "bad")
    (bad / "tokenizer_config.json").write_text("[1]")
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["base"] = str(bad)
    at.query_params["ft"] = [str(ft)]
    at.run()
    at.switch_page("views/behavior.py").run()
    assert not at.exception, [e.message for e in at.exception]
    errors = [e.value.replace("\\", "").replace("\u200b", "") for e in at.error]  # (Markdown escapes taken out)
    assert not any("This is a bug" in e for e in errors), errors
    said = "its tokenizer cannot be loaded (tokenizer_config.json: expected a JSON object, found list)"
    assert any(said in e and "\n" not in e for e in errors), errors


# --- D4: a model folder's subfolders, through the roots check ------------------------------------------------------
def test_a_chat_template_in_a_subfolder_linking_outside_the_roots_is_refused(tok_model, roots):
    """transformers reads additional_chat_templates/*.jinja too: a link there to a file outside the roots was read
    into tok.chat_template, though only the folder's top-level files were checked."""
    from subnetviz.checkpoints.models import load_causal_lm, load_tokenizer

    root, secret = roots
    folder = _copy(tok_model, root / "model")
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "ok.jinja").write_text(TEMPLATE)
    # the subfolder is read: a template inside the roots lands in the tokenizer (the check below is not idle)
    assert load_tokenizer(str(folder)).chat_template == {"ok": TEMPLATE}
    (folder / "additional_chat_templates" / "evil.jinja").symlink_to(secret)
    for load in (load_tokenizer, load_causal_lm):
        with pytest.raises(PathNotAllowedError) as exc:
            load(str(folder))
        assert str(exc.value) == (
            "additional_chat_templates/evil.jinja in roots/model: leads outside the folders this server may read; "
            "refused."
        )


def test_a_subfolder_linking_outside_the_roots_is_refused(tok_model, roots):
    """A linked additional_chat_templates folder did the same; the link itself is refused, and not walked."""
    from subnetviz.checkpoints.models import load_tokenizer

    root, secret = roots
    folder = _copy(tok_model, root / "model")
    (folder / "additional_chat_templates").symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(PathNotAllowedError) as exc:
        load_tokenizer(str(folder))
    assert str(exc.value) == (
        "additional_chat_templates in roots/model: leads outside the folders this server may read; refused."
    )


def test_links_between_folders_inside_the_roots_are_walked_once(tok_model, roots):
    """A subfolder linking to another folder inside the roots is followed (its files checked) and a link back up
    is not walked again: the walk ends."""
    from subnetviz.checkpoints.models import check_folder_files, folder_entries, load_tokenizer

    root, secret = roots
    templates = root / "templates"
    templates.mkdir()
    (templates / "ok.jinja").write_text(TEMPLATE)
    folder = _copy(tok_model, root / "model")
    (folder / "additional_chat_templates").symlink_to(templates, target_is_directory=True)
    (templates / "up").symlink_to(folder, target_is_directory=True)  # a loop: model -> templates -> model
    names = [name for name, _ in folder_entries(folder)]
    assert "additional_chat_templates/ok.jinja" in names and "additional_chat_templates/up" in names
    assert not any(n.startswith("additional_chat_templates/up/") for n in names), names
    assert check_folder_files(folder) == folder
    assert load_tokenizer(str(folder)).chat_template == {"ok": TEMPLATE}
    (templates / "evil.jinja").symlink_to(secret)  # a file of the linked folder is checked too
    with pytest.raises(PathNotAllowedError, match=r"^additional_chat_templates/evil\.jinja in roots/model: leads"):
        load_tokenizer(str(folder))


def test_the_walk_stops_at_its_limit_with_one_line(tok_model, tmp_path, monkeypatch):
    """With the roots not enforced (the CLI) a folder link is followed wherever it leads: a link to a disk's worth of
    data would be walked whole before every load, so the walk ends, in one line, past its limit."""
    from subnetviz.checkpoints import models

    data = tmp_path / "data"
    data.mkdir()
    for i in range(8):
        (data / f"{i}.txt").write_text("x")
    folder = _copy(tok_model, tmp_path / "model")
    n_top = len(list(folder.iterdir()))
    (folder / "data").symlink_to(data, target_is_directory=True)
    monkeypatch.setattr(models, "FOLDER_ENTRIES", n_top + 1 + 8)  # exactly what is there: walked
    assert len(list(models.folder_entries(folder))) == n_top + 1 + 8
    monkeypatch.setattr(models, "FOLDER_ENTRIES", n_top + 1 + 7)
    with pytest.raises(CheckpointError, match=f"more than {n_top + 8} files and folders under it"):
        models.check_folder_files(folder)


def test_a_training_base_with_a_subfolder_leading_outside_is_refused(tok_model, roots):
    from subnetviz.training.config import _base_folder_problems

    root, secret = roots
    base = _copy(tok_model, root / "base")
    assert _base_folder_problems(base) == []
    (base / "additional_chat_templates").mkdir()
    (base / "additional_chat_templates" / "evil.jinja").symlink_to(secret)
    (base / "linked").symlink_to(secret.parent, target_is_directory=True)
    assert _base_folder_problems(base) == [
        f"base {str(base)!r}: linked leads outside the folders this server may read",
        f"base {str(base)!r}: additional_chat_templates/evil.jinja leads outside the folders this server may read",
    ]


# --- D6: a named pipe that transformers would open ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["tokenizer.json", "additional_chat_templates/x.jinja"])
def test_a_named_pipe_in_a_model_folder_is_refused_not_waited_on(tok_model, tmp_path, name):
    """check_folder_files skipped what is not a plain file (is_file() is False for a FIFO): every entry but a folder
    now passes check_readable, which refuses it by name before anything opens it (an open waits for a writer for
    good; the transformers installed here happens to skip a FIFO, taking tokenizer.json for missing: a ValueError
    that named nothing, and the template one loaded without a word)."""
    from subnetviz.checkpoints.models import load_tokenizer
    from subnetviz.training.config import _base_folder_problems

    folder = _copy(tok_model, tmp_path / "model")
    (folder / name).unlink(missing_ok=True)
    (folder / name).parent.mkdir(exist_ok=True)
    os.mkfifo(folder / name)
    with Unblocker(folder / name, after=15.0) as guard, pytest.raises(PathNotAllowedError) as exc:
        load_tokenizer(str(folder))
    assert not guard.needed, "the loader waited on the named pipe"
    assert str(exc.value) == f"{name} in …/model: a named pipe (FIFO), not a regular file; refused."
    assert _base_folder_problems(folder) == [f"base {str(folder)!r}: {name} is a named pipe (FIFO), not a regular file"]


# --- D1: config.json's wrong-typed values name the folder ----------------------------------------------------------
@pytest.mark.parametrize("key, value", [("model_type", ["llama"]), ("num_attention_heads", {"a": 1})])
def test_a_wrong_typed_config_value_names_its_folder(tok_model, tmp_path, capsys, key, value):
    """The one-line error said "config.json: model_type is …", naming no folder (the naming table checked it,
    far from where the config was read)."""
    from subnetviz.checkpoints import open_checkpoint

    bad = _copy(tok_model, tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())
    cfg[key] = value
    (bad / "config.json").write_text(json.dumps(cfg))
    said = f"config.json in …/bad: {key} is {json.dumps(value)}"
    with pytest.raises(CheckpointError) as exc:
        open_checkpoint(str(bad)).names  # noqa: B018 - reading the names builds the naming table
    assert str(exc.value).startswith(said), str(exc.value)
    out = tmp_path / "out"
    assert main(["analyze", str(tok_model), str(bad), "--out", str(out), "--no-spectra", "--no-cache"]) == 2
    assert f"config.json in {bad}: {key} is {json.dumps(value)}" in _one_error_line(capsys)  # (the CLI: in full)
    assert not out.exists()


# --- N1: a shard index whose weight_map is no object -------------------------------------------------------------
def _sharded(folder: Path, index: dict) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"w": np.zeros((2, 2), np.float32)}, str(folder / "model-00001-of-00001.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize(
    "index, said",
    [
        ({"weight_map": ["model-00001-of-00001.safetensors"]}, "weight_map is a list"),
        ({"weight_map": "model-00001-of-00001.safetensors"}, "weight_map is a string"),
        ({"weight_map": None}, "weight_map is null"),
        ({"metadata": {}}, "has no weight_map"),
    ],
)
def test_a_shard_index_whose_weight_map_is_no_object_is_said_so(tmp_path, index, said):
    """A list said "not a valid shard index (AttributeError: 'list' object has no attribute 'values')"."""
    from subnetviz.checkpoints import open_checkpoint

    folder = _sharded(tmp_path / "m", index)
    with pytest.raises(CheckpointError) as exc:
        open_checkpoint(str(folder))
    path = folder / "model.safetensors.index.json"
    assert str(exc.value) == f"{path}: {said}; expected an object of tensor name → shard file."
    # the same folder with a weight map of tensor name -> shard is read
    _sharded(tmp_path / "ok", {"weight_map": {"w": "model-00001-of-00001.safetensors"}})
    assert open_checkpoint(str(tmp_path / "ok")).names == ["w"]
