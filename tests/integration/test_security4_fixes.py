"""Security review, pass 4: what a visitor's corpus may make the server read.

1. A ``save_to_disk`` folder's ``state.json`` names the data files ``datasets.load_from_disk`` opens, joined to the
   folder as they are: an absolute name, or one with ``..``, read a file outside every root (a hub data set's
   ``state.json`` chose which) and showed its first tokens. Both readers (the Bigram corpus, Behaviour's prompts)
   now check every file it opens first, for a ``DatasetDict``'s splits too.
2. A viewer's link could name any text file under the roots as the corpus, the app folder's
   ``.streamlit/secrets.toml`` and ``.git/`` included: those folders are never read, and a corpus file is text by
   its suffix.
"""

from __future__ import annotations

import json
import shutil

import datasets
import pytest

from subnetviz import config, uilogic
from subnetviz.analysis.behavior_data import read_prompts
from subnetviz.bigram.stats import CORPUS_SUFFIXES, check_saved_dataset, corpus_from_dataset
from subnetviz.demo.tokenizer import build_tokenizer
from subnetviz.errors import ConfigError, PathNotAllowedError

SECRET = "hiddenblackmagic"
ARROW = "data-00000-of-00001.arrow"


@pytest.fixture
def two_places(tmp_path, monkeypatch):
    """A root (``inside``, also the working directory) and, outside it, a saved data set of secret text."""
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    rows = {"text": [f"{SECRET} {i}" for i in range(40)], "prompt": [SECRET] * 40}
    datasets.Dataset.from_dict(rows).save_to_disk(str(outside / "ds"))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(inside))
    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    monkeypatch.chdir(inside)
    return inside, outside


def _saved(folder, texts=("abcab abd ",) * 40):
    datasets.Dataset.from_dict({"text": list(texts), "prompt": list(texts)}).save_to_disk(str(folder))
    return folder


def _with_entries(folder, *names):
    """``folder``'s state.json listing ``names`` as its data files."""
    state = json.loads((folder / "state.json").read_text())
    state["_data_files"] = [{"filename": n} for n in names]
    (folder / "state.json").write_text(json.dumps(state))
    return folder


def _both_readers_refuse(folder, error=ConfigError) -> str:
    """The one-line refusal of the Bigram corpus reader, which Behaviour's prompt reader gives alike."""
    with pytest.raises(error) as corpus:
        corpus_from_dataset(str(folder), build_tokenizer(6), seq_len=8)
    with pytest.raises(error) as prompts:
        read_prompts(folder)
    said = str(corpus.value)
    assert str(prompts.value) == said and "\n" not in said and SECRET not in said
    return said


@pytest.mark.parametrize("entry", ["ABS", f"../../outside/ds/{ARROW}", f"sub/../../../outside/ds/{ARROW}"])
def test_state_json_entries_leaving_the_folder_are_refused_by_both_readers(two_places, entry):
    inside, outside = two_places
    evil = _with_entries(_saved(inside / "evil"), str(outside / "ds" / ARROW) if entry == "ABS" else entry)
    said = _both_readers_refuse(evil)
    assert said.startswith("state.json in inside/evil: _data_files entry #1 is ")
    assert said.endswith("a saved data set's files lie in its folder. Refused.")
    assert str(outside) not in said and str(inside) not in said
    kind = "an absolute path" if entry == "ABS" else "a path leaving its folder (..)"
    assert f"entry #1 is {kind};" in said and "outside" not in said  # (the entry's text is not echoed)


def test_a_data_file_linking_outside_is_refused_alike_whether_anything_is_there(two_places):
    """A link in the folder that leads outside the roots: refused by where it leads, before the file system is
    asked whether anything is there (the words would tell a visitor which outside files exist)."""
    inside, outside = two_places
    evil = _with_entries(_saved(inside / "evil"), "data.arrow")
    said = []
    for target in (outside / "ds" / ARROW, outside / "ds" / "nothing.arrow"):
        (evil / "data.arrow").unlink(missing_ok=True)
        (evil / "data.arrow").symlink_to(target)
        said.append(_both_readers_refuse(evil, PathNotAllowedError))
    assert said[0] == said[1]
    assert said[0] == (
        "state.json in inside/evil: _data_files entry #1 ('data.arrow'): leads outside the folders this server may "
        "read; refused."
    )


def test_a_data_file_linking_elsewhere_under_the_roots_or_missing_is_refused(two_places):
    inside, _ = two_places
    other = _saved(inside / "other")
    evil = _with_entries(_saved(inside / "evil"), "data.arrow")
    (evil / "data.arrow").symlink_to(other / ARROW)
    assert "entry #1 ('data.arrow'): leads out of its folder (to inside/other/" in _both_readers_refuse(evil)
    (evil / "data.arrow").unlink()
    (evil / "data.arrow").mkdir()  # (a folder where the file would be)
    said = _both_readers_refuse(evil, PathNotAllowedError)
    assert said.endswith("entry #1 ('data.arrow'): a folder, not a regular file; refused.")
    (evil / "data.arrow").rmdir()
    assert _both_readers_refuse(evil).endswith("entry #1 ('data.arrow'): no such file in the folder.")


def test_state_json_and_dataset_info_linking_outside_are_refused(two_places):
    inside, outside = two_places
    evil = _saved(inside / "evil")
    (evil / "state.json").unlink()
    (evil / "state.json").symlink_to(outside / "ds" / "state.json")
    said = _both_readers_refuse(evil, PathNotAllowedError)
    assert said == "state.json in inside/evil: leads outside the folders this server may read; refused."


def test_a_dataset_dict_s_splits_are_checked_as_load_from_disk_reads_them(two_places):
    """datasets 5's DatasetDict.load_from_disk joins each name of dataset_dict.json's "splits" to the folder and
    loads that subfolder as a Dataset (its own state.json): a split name that is a path, a split folder linked
    outside the roots, and a split's state.json naming an outside file are each refused; a plain DatasetDict reads
    as before (its train split)."""
    inside, outside = two_places
    dd = inside / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["abcab abd "] * 40}),
            "test": datasets.Dataset.from_dict({"text": ["x"]}),
        }
    ).save_to_disk(str(dd))
    corpus = corpus_from_dataset(str(dd), build_tokenizer(6), seq_len=8)
    assert corpus.n_tokens > 100 and check_saved_dataset(dd) == str(dd.resolve())

    listed = json.loads((dd / "dataset_dict.json").read_text())
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["../../outside/ds"]}))
    with pytest.raises(ConfigError, match=r"^dataset_dict\.json in inside/dd: split #1 is not a split name") as err:
        corpus_from_dataset(str(dd), build_tokenizer(6))
    assert str(outside) not in str(err.value)

    (dd / "dataset_dict.json").write_text(json.dumps(listed))
    shutil.rmtree(dd / "test")
    (dd / "test").symlink_to(outside / "ds")
    with pytest.raises(PathNotAllowedError, match=r"^dataset_dict\.json in inside/dd: split #\d \(test\): leads out"):
        corpus_from_dataset(str(dd), build_tokenizer(6))

    (dd / "test").unlink()
    _with_entries(_saved(dd / "test"), str(outside / "ds" / ARROW))
    with pytest.raises(ConfigError, match=r"^state\.json in inside/dd/test: _data_files entry #1 is an absolute path"):
        corpus_from_dataset(str(dd), build_tokenizer(6))


def test_a_hub_snapshot_s_saved_data_set_reads_through_its_blob_links(two_places):
    """hf download writes a snapshot's files as links into the repository's blobs/: they are the folder's files."""
    inside, _ = two_places
    made = _saved(inside / "made")
    repo = inside / "hub" / "datasets--acme--corpus"
    snap = repo / "snapshots" / ("c" * 40)
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(made.iterdir())):
        f.rename(repo / "blobs" / f"sha{i}")
        (snap / f.name).symlink_to(f"../../blobs/sha{i}")
    assert corpus_from_dataset(str(snap), build_tokenizer(6), seq_len=8).n_tokens > 100
    assert uilogic.corpus_choice(str(snap)) == str(snap)
    assert read_prompts(snap)[0].text == "abcab abd "


# ---------------------------------------------------------------------------------------------- 2. what is read
@pytest.mark.parametrize(
    "name", [".streamlit/secrets.toml", ".git/config", "sub/.git/config", ".GIT/config", "x/.Streamlit/a.txt"]
)
def test_git_and_streamlit_folders_under_a_root_are_never_read(two_places, name):
    """The same words whether the file is there or not; check_readable refuses it too where roots are enforced."""
    inside, _ = two_places
    said = []
    for there in (False, True):
        if there:
            (inside / name).parent.mkdir(parents=True, exist_ok=True)
            (inside / name).write_text("cookie_secret = 'abc'\n")
        with pytest.raises(PathNotAllowedError) as err:
            config.check_allowed(name)
        said.append(str(err.value))
        with pytest.raises(PathNotAllowedError, match=r"not readable \(this server never reads files in \.git or "):
            config.check_readable(inside / name)
        with pytest.raises(PathNotAllowedError, match=r"not readable"):
            uilogic.corpus_choice(name)
    assert said[0] == said[1] == f"{name}: not readable (this server never reads files in .git or .streamlit folders)."


def test_a_link_into_a_git_folder_is_refused_and_only_below_the_root(two_places, tmp_path, monkeypatch):
    inside, _ = two_places
    (inside / ".git").mkdir()
    (inside / ".git" / "config").write_text("[remote]\n")
    (inside / "notes.txt").symlink_to(inside / ".git" / "config")
    with pytest.raises(PathNotAllowedError, match=r"^notes\.txt: not readable"):
        uilogic.corpus_choice("notes.txt")
    # a root that itself lies in a folder named .git: its files are below the root, not in a .git folder of it
    root = tmp_path / "a" / ".git" / "data"
    root.mkdir(parents=True)
    (root / "corpus.txt").write_text("text")
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(root))
    assert config.check_allowed(root / "corpus.txt") == root / "corpus.txt"
    # the command line (roots not enforced) reads the user's own files, wherever they are
    monkeypatch.delenv("SUBNETVIZ_ENFORCE_ROOTS")
    assert config.check_readable(inside / ".git" / "config") == inside / ".git" / "config"


def test_a_corpus_file_must_be_text_by_its_suffix(two_places):
    """A key, a config or a secrets file anywhere under the roots is no corpus: one line listing what is read, the
    same whether the file is there or not; text files, saved data sets, zoo and hf: are taken as before."""
    inside, _ = two_places
    listed = ", ".join(CORPUS_SUFFIXES)
    said = []
    for there in (False, True):
        if there:
            (inside / "private").mkdir()
            (inside / "private" / "secrets.toml").write_text("client_secret = 'abc'\n")
        with pytest.raises(ConfigError) as err:
            uilogic.corpus_choice("private/secrets.toml")
        said.append(str(err.value))
    assert (
        said[0]
        == said[1]
        == (
            "inside/private/secrets.toml: not a corpus; give 'zoo', hf:NAME, a saved data set's folder or a text file "
            f"({listed})."
        )
    )
    for name in ("id_rsa", "config.yaml", "train.parquet"):
        with pytest.raises(ConfigError, match=r": not a corpus; give 'zoo'"):
            uilogic.corpus_choice(name)
    for name in ("corpus.txt", "Corpus.TXT", "rows.jsonl", "table.csv"):
        (inside / name).write_text("abc abd\n" * 20)
        assert uilogic.corpus_choice(name) == str(inside / name)
    assert uilogic.corpus_choice(str(_saved(inside / "ds"))) == str(inside / "ds")
    assert uilogic.corpus_choice("zoo") == "zoo"
    # a hub snapshot's text file: a link to blobs/<sha256>, read by its name
    snap = inside / "hub" / "datasets--acme--text" / "snapshots" / ("d" * 40)
    snap.mkdir(parents=True)
    (snap.parents[1] / "blobs").mkdir()
    (snap.parents[1] / "blobs" / "0123abcd").write_text("abc abd\n" * 20)
    (snap / "train.txt").symlink_to("../../blobs/0123abcd")
    assert uilogic.corpus_choice(str(snap / "train.txt")) == str(snap.parents[1] / "blobs" / "0123abcd")


def test_a_folder_that_is_no_saved_data_set_is_refused_in_one_line(two_places):
    inside, _ = two_places
    (inside / "plain").mkdir()
    (inside / "plain" / "a.txt").write_text("abc")
    with pytest.raises(ConfigError, match=r"^inside/plain: not a saved data set \(Dataset\.save_to_disk writes"):
        uilogic.corpus_choice("plain")
