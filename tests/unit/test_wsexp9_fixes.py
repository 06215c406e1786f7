"""Workspace / uploads review (wsexp9), finding 4, in the library (tests/app/test_wsexp9_fixes_app.py has the pages).

4. A safetensors mask cut inside its header (an interrupted copy: its first 20 bytes) whose header length begins
   with 0x80 (128 + 256·k bytes), a pickle's PROTO opcode, was read as a pickle and refused as "not a readable
   pickle (ValueError: unsupported pickle protocol: 8)". Where its 9th byte is the header's "{" (or a file named
   .safetensors ends before its header begins), it is now said to be a truncated safetensors file, with the header
   length its first 8 bytes give and the file's size.
"""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch

from subnetviz.errors import MaskError
from subnetviz.masks import MaskSet, import_mask, load_mask_set, other_mask_format, save_mask_set


@pytest.fixture(scope="module")
def proto_headed(tmp_path_factory) -> bytes:
    """The bytes of a mask file whose safetensors header is 128 + 256·k bytes long: its first byte is 0x80."""
    folder = tmp_path_factory.mktemp("wsexp9-masks")
    gen = torch.Generator().manual_seed(0)
    for width in range(1, 400):  # until a header's length has 0x80 as its low byte
        path = save_mask_set(
            folder / f"m{width}.safetensors", MaskSet({"w" * width: torch.rand(8, 8, generator=gen) < 0.5})
        )
        raw = path.read_bytes()
        if raw[0] == 0x80:
            return raw
    pytest.skip("no header of such a length")


def _said(path) -> str:
    with pytest.raises(MaskError) as exc:
        import_mask(path)
    return str(exc.value)


@pytest.mark.parametrize("name", ["cut.safetensors", "cut.pickle", "cut.pt"])
def test_a_safetensors_file_cut_inside_its_header_is_said_to_be_truncated(proto_headed, tmp_path, name):
    (n,) = struct.unpack("<Q", proto_headed[:8])  # the header length, read by hand
    assert proto_headed[0] == 0x80 and proto_headed[8:9] == b"{" and n > 20 - 8
    cut = tmp_path / name
    cut.write_bytes(proto_headed[:20])
    text = _said(cut)
    assert text == (
        f"{cut}: not a readable safetensors mask file: a truncated safetensors file (header length {n:,} bytes, "
        "file 20 bytes); copy or upload the whole file again."
    ), text
    assert "pickle" not in text.removeprefix(str(cut))
    assert other_mask_format(cut) is None  # (not "a pickle": the training's mask check sends no one to convert it)
    with pytest.raises(MaskError, match="a truncated safetensors file"):  # the training's reader says it too
        load_mask_set(cut)


def test_an_upload_cut_inside_its_header_is_named_as_sent(proto_headed, tmp_path, monkeypatch):
    from subnetviz.selection import save_upload

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path))
    (n,) = struct.unpack("<Q", proto_headed[:8])
    with pytest.raises(MaskError) as exc:
        save_upload("trunc_header.safetensors", proto_headed[:20])
    assert str(exc.value).startswith("trunc_header.safetensors: not a readable safetensors mask file: a truncated")
    assert f"(header length {n:,} bytes, file 20 bytes)" in str(exc.value)
    assert not list((tmp_path / "uploads").glob("*.safetensors"))  # nothing stored


@pytest.mark.parametrize(("size", "length"), [(8, True), (5, False)])
def test_a_safetensors_name_cut_before_its_header_is_truncated(proto_headed, tmp_path, size, length):
    cut = tmp_path / "short.safetensors"
    cut.write_bytes(proto_headed[:size])
    text = _said(cut)
    assert (
        "a truncated safetensors file" in text
        and f"file {size} bytes" in text
        and "pickle" not in text[len(str(cut)) :]
    )
    if length:
        assert f"header length {struct.unpack('<Q', proto_headed[:8])[0]:,} bytes" in text


def test_whole_files_and_real_pickles_are_read_as_before(proto_headed, tmp_path):
    whole = tmp_path / "whole.safetensors"
    whole.write_bytes(proto_headed)
    assert import_mask(whole).count == load_mask_set(whole).count
    # a released bigram pickle named .safetensors is still read by its content
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(pickle.dumps({"transformer.h.0.mlp.c_fc.weight": np.eye(3, dtype=bool)}))
    ms = import_mask(disguised)
    assert torch.equal(ms.masks["transformer.h.0.mlp.c_fc.weight"], torch.eye(3, dtype=torch.bool))
    # a broken pickle keeps its words
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"\x80\x08junk-and-more")
    assert "not a readable pickle" in _said(junk)
