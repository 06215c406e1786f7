"""Saved data sets whose columns ``datasets`` decodes (security review 5).

A saved data set's ``dataset_info.json`` chooses its features. A column declared ``Image`` stores a path or a URL,
and reading that column opened the file wherever it lies, or sent the server's requests to that address (HEAD and
GET, the body read whole), whatever the roots. A viewer's link reached it through the Bigram page's corpus; the
Behaviour prompt reader decoded every column of each row, so one extra image column was enough. Each test listens
on a local port the data set names and checks that nothing connected.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from subnetviz.errors import ConfigError


class Listener:
    """A TCP port on 127.0.0.1 that counts the connections made to it (answering none)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/internal"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()  # (no answer: the reader fails, after it has connected)

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener():
    lst = Listener()
    yield lst
    lst.close()


def _saved(folder: Path, columns: dict[str, list], images: set[str]) -> Path:
    """A ``save_to_disk`` folder of ``columns``; those in ``images`` hold {path, bytes: None} rows, and
    ``dataset_info.json`` declares them ``Image`` (as a data set built from paths, or saved without its files'
    bytes, is)."""
    import datasets

    feats = {
        k: (
            {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
            if k in images
            else datasets.Value("string")
        )
        for k in columns
    }
    rows = {k: ([{"path": p, "bytes": None} for p in v] if k in images else v) for k, v in columns.items()}
    datasets.Dataset.from_dict(rows, features=datasets.Features(feats)).save_to_disk(str(folder))
    info = json.loads((folder / "dataset_info.json").read_text())
    for k in images:
        info["features"][k] = {"_type": "Image"}
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder


def test_a_corpus_whose_text_column_is_an_image_feature_is_refused_unread(tmp_path, listener):
    from subnetviz.bigram.stats import corpus_from_dataset
    from tests.models import char_tokenizer

    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    ds = _saved(tmp_path / "ds", {"text": [listener.url, str(outside)] * 3}, {"text"})
    with pytest.raises(ConfigError) as err:
        corpus_from_dataset(str(ds), char_tokenizer())
    msg = str(err.value)
    assert "column 'text' holds datasets' Image feature" in msg and "expected text" in msg and "\n" not in msg
    assert listener.connections == 0


def test_prompts_with_an_extra_image_column_are_read_without_it(tmp_path, listener):
    from subnetviz.analysis.behavior_data import read_prompts

    ds = _saved(
        tmp_path / "prompts",
        {"prompt": ["1+1=", "2+2="], "answer": ["2", "4"], "image": [listener.url, listener.url]},
        {"image"},
    )
    prompts = read_prompts(str(ds))
    assert [(p.text, p.answer) for p in prompts] == [("1+1=", "2"), ("2+2=", "4")]
    assert listener.connections == 0


def test_a_prompt_column_that_is_an_image_feature_is_refused(tmp_path, listener):
    from subnetviz.analysis.behavior_data import read_prompts

    ds = _saved(tmp_path / "prompts", {"prompt": [listener.url], "answer": ["2"]}, {"prompt"})
    with pytest.raises(ConfigError, match="column 'prompt' holds datasets' Image feature"):
        read_prompts(str(ds))
    assert listener.connections == 0
