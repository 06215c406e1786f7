"""What the alignment says of tensors not in every checkpoint. Of two checkpoints a tensor not in both is "only
in" one of them; of three or more, each line names the checkpoints that lack the tensors (or, where fewer, those
that hold them). Before, a tensor missing only from the last of three was said to be "only in" both others.
Planted: tensors held by known sets of checkpoints."""

import json

import torch
from safetensors.torch import save_file

from subnetviz.analysis.series import checkpoint_series
from subnetviz.checkpoints import align, open_checkpoint


def _write(path, names, prefix="model."):
    path.mkdir(parents=True)
    save_file({prefix + n: torch.zeros(4) for n in names}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return str(path)


def _notes(lines: list[str], root) -> list[str]:
    return [line.replace(f"{root}/", "") for line in lines if "tensor(s)" in line]


def test_three_checkpoints_name_the_one_that_lacks_a_tensor(tmp_path):
    """b is in ck0 and ck1 (not in ck2), extra in ck1 and ck2 (not in ck0), solo in ck1 alone."""
    paths = [
        _write(tmp_path / "ck0", ["a", "b"]),
        _write(tmp_path / "ck1", ["a", "b", "extra", "solo"]),
        _write(tmp_path / "ck2", ["a", "extra"], prefix=""),  # another prefix: the same tensors
    ]
    res = checkpoint_series(paths)
    assert sorted(_notes(res.notes, tmp_path)) == [
        "1 tensor(s) not in ck0 (in the other 2): model.extra",
        "1 tensor(s) not in ck2 (in the other 2): model.b",
        "1 tensor(s) only in ck1 (not in the other 2): model.solo",
    ]


def test_sixteen_checkpoints_whose_last_lacks_one_tensor_give_one_line(tmp_path):
    paths = [_write(tmp_path / f"ck{i:02d}", ["a", "b"] if i < 15 else ["a"]) for i in range(16)]
    al = align([open_checkpoint(p) for p in paths])
    lines = _notes(al.report(), tmp_path)
    assert lines == ["1 tensor(s) not in ck15 (in the other 15): model.b"]


def test_a_tensor_held_by_two_of_five_names_those_two(tmp_path):
    paths = [_write(tmp_path / f"ck{i}", ["a", "x"] if i in (1, 3) else ["a"]) for i in range(5)]
    lines = _notes(align([open_checkpoint(p) for p in paths]).report(), tmp_path)
    assert lines == ["1 tensor(s) only in ck1, ck3 (not in the other 3): model.x"]


def test_two_checkpoints_keep_the_only_in_wording(tmp_path):
    paths = [_write(tmp_path / "ck0", ["a", "b"]), _write(tmp_path / "ck1", ["a", "c", "d"])]
    lines = _notes(align([open_checkpoint(p) for p in paths]).report(), tmp_path)
    assert lines == ["1 tensor(s) only in ck0: model.b", "2 tensor(s) only in ck1: model.c, model.d"]
