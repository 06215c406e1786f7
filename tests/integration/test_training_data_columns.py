"""Training data whose columns hold more than one type (training review 5): an extra ``id`` that is a number on
most rows and a string on one passed submit and failed in the worker with pyarrow's traceback after the model had
loaded; a prompt that is plain text on one row and chat messages on another likewise. The extra column is left
out (no trainer reads it); a required column of two forms is refused at submit, naming the file, line and field."""

from __future__ import annotations

import json

import pytest

from subnetviz.errors import ConfigError
from subnetviz.training.data import load_dataset, read_jsonl


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_an_extra_column_of_two_types_is_left_out(tmp_path):
    rows = [{"prompt": f"{i}+1=", "completion": str(i + 1), "id": i} for i in range(5)]
    rows[3]["id"] = "three"
    ds = load_dataset(_write(tmp_path / "sft.jsonl", rows), "sft")
    assert ds.column_names == ["prompt", "completion"] and ds["completion"] == ["1", "2", "3", "4", "5"]
    rows[3]["id"] = 3  # one type: kept, as before
    assert load_dataset(_write(tmp_path / "sft2.jsonl", rows), "sft").column_names == ["completion", "id", "prompt"]


def test_a_required_column_of_two_forms_is_refused_naming_the_line(tmp_path):
    rows = [{"prompt": "1+1=", "completion": "2"}, {"prompt": [{"role": "user", "content": "2+2="}], "completion": "4"}]
    path = _write(tmp_path / "sft.jsonl", rows)
    with pytest.raises(ConfigError) as err:
        read_jsonl(path, "sft")
    assert str(err.value) == (
        f"{path}, line 2: 'prompt' is chat messages here but plain text on line 1; every row's 'prompt' must be of "
        "one form."
    )
