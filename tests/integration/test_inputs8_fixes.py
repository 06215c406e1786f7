"""Bad inputs, eighth review (inputs8).

1. ``mask import m.pt m.pt --overwrite`` replaced the user's torch.save file with the safetensors mask (still named
   ``.pt``): the destination is refused when it is the source, whatever ``--overwrite`` says.
2. A zero-byte ``pytorch_model.bin`` was read as a pre-1.6 torch.save file and refused as "not a readable pickle
   (pickle exhausted before seeing STOP)", pointing at an old format that is not there: it is said to be empty.
"""

from __future__ import annotations

import json

import pytest
import torch

from subnetviz.cli import main
from tests.ckpt_fixtures import llama64, write_folder


def test_mask_import_refuses_to_write_over_its_source(tmp_path, capsys):
    src = tmp_path / "m.pt"
    torch.save({"a.weight": torch.tensor([[True, False], [False, True]])}, src)
    before = src.read_bytes()
    link = tmp_path / "link.pt"
    link.symlink_to(src)
    for dst in (src, link):  # (the file itself, or a link to it)
        assert main(["mask", "import", str(src), str(dst), "--overwrite"]) != 0
        err = capsys.readouterr().err
        assert "this is the file being imported (SRC)" in err and "Traceback" not in err, err
        assert src.read_bytes() == before  # the user's file untouched
    assert main(["mask", "import", str(src), str(tmp_path / "m.safetensors")]) == 0  # another file: written


def test_an_empty_pytorch_model_bin_is_said_to_be_empty(tmp_path, capsys):
    model = llama64()
    base = write_folder(tmp_path / "base", model.state_dict())
    (base / "config.json").write_text(json.dumps(model.config.to_dict()))
    ft = tmp_path / "ft"
    ft.mkdir()
    (ft / "config.json").write_text((base / "config.json").read_text())
    (ft / "pytorch_model.bin").write_bytes(b"")
    assert main(["analyze", str(base), str(ft), "--out", str(tmp_path / "out"), "--no-spectra"]) != 0
    err = capsys.readouterr().err
    assert "pytorch_model.bin: an empty file (0 bytes)" in err and "pickle exhausted" not in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", [1, 3])
def test_a_short_bin_is_still_refused_as_before(tmp_path, size):
    """(not empty: the old-format check reads it, as before)"""
    from subnetviz.errors import MaskError
    from subnetviz.pickles import check_torch_file

    bad = tmp_path / "x.bin"
    bad.write_bytes(b"\x80" * size)
    with pytest.raises(MaskError) as err:
        check_torch_file(bad)
    assert "empty file" not in str(err.value)
