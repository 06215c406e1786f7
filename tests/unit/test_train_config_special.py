"""A training config whose data, eval data or mask path is a named pipe or a folder: the problem says what is there
(it read "no such file" / "no such mask file", and its sender looked for a file that is there). Nothing is opened."""

import os

import pytest

from subnetviz.errors import ConfigError
from subnetviz.training.config import TrainConfig


@pytest.fixture()
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return str(path)


def _problems(tmp_path, **over):
    base = dict(algorithm="sft", base=str(tmp_path / "nobase"), data=str(tmp_path / "data.jsonl"))
    base["output_dir"] = str(tmp_path / "out")
    base.update(over)
    with pytest.raises(ConfigError) as err:
        TrainConfig(**base).validate(check_output=False)
    return str(err.value)


@pytest.mark.parametrize("field", ["data", "eval_data", "mask"])
def test_a_named_pipe_is_named(tmp_path, fifo, field):
    said = _problems(tmp_path, **{field: fifo})
    assert f"{field} '" in said and "pipe': a named pipe (FIFO), not a regular file; refused" in said, said
    assert "no such" not in said.split(f"{field} '", 1)[1].split(";")[0]


def test_a_random_mask_on_a_folder_is_named(tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    said = _problems(tmp_path, mask=f"random:{folder}")
    assert f"mask {'random:' + str(folder)!r}: a folder, not a regular file; refused" in said, said


def test_missing_paths_still_say_no_such_file(tmp_path):
    problems = _problems(tmp_path, mask=str(tmp_path / "gone.safetensors"), eval_data=str(tmp_path / "e.jsonl"))
    assert "data.jsonl': no such file" in problems and "e.jsonl': no such file" in problems, problems
    assert f"mask {str(tmp_path / 'gone.safetensors')!r}: no such mask file" in problems, problems
