"""A JSONL record that is not valid JSON is named by its file's line, and where in that line it breaks: the
parser's own "line 2 column 1" (the record's newline counted) stood in brackets beside "line 4" (drivers2)."""

from __future__ import annotations

import pytest

from subnetviz.config import parse_json
from subnetviz.errors import ConfigError
from subnetviz.training.data import read_jsonl


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (b'{"prompt": "x"\n', "Expecting ',' delimiter at the end of the line"),
        (b'{"prompt": "x"\r\n', "Expecting ',' delimiter at the end of the line"),
        (b'{"prompt": x}', "Expecting value at column 12"),
        ('{"a": 1,\n "b": }', "Expecting value: line 2 column 7 (char 15)"),  # a whole file: its line and column
    ],
)
def test_a_broken_record_says_where_in_its_line(raw, said):
    with pytest.raises(ConfigError) as err:
        parse_json(raw, "f.jsonl, line 4", ConfigError, text=True)
    assert str(err.value) == f"f.jsonl, line 4: not valid JSON ({said})."


def test_read_jsonl_names_the_files_line_and_the_column(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "1+1=", "answer": "2"}\n\n{"prompt": "2+2=", "answer" "4"}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        read_jsonl(path, "grpo")
    assert str(err.value) == f"{path}, line 3: not valid JSON (Expecting ':' delimiter at column 29)."
