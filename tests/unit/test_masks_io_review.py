"""Masks as researchers move them between tools: a NumPy ``.npz`` of masks is read (pickle-free), the mask
convention is said where masks come in, and a dense mask chosen for training gets a note."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch

from subnetviz.cli import main
from subnetviz.errors import MaskError, UnsafePickleError
from subnetviz.masks import import_mask


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "model.layers.0.mlp.up_proj.weight": rng.random((20, 12)) < 0.3,
        "model.layers.0.input_layernorm.weight": (rng.random(12) < 0.5).astype(np.uint8),
        "lm_head.weight": (rng.random((7, 5)) < 0.2).astype(np.float32),
        "scalar": np.array(True),
    }


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_a_numpy_npz_of_masks_is_read_bit_for_bit(tmp_path, save):
    arrays = _arrays()
    path = tmp_path / "m.npz"
    save(path, **arrays)
    ms = import_mask(path)
    assert set(ms.masks) == set(arrays)
    for name, a in arrays.items():
        got = ms.masks[name]
        assert got.dtype == torch.bool and tuple(got.shape) == a.shape
        assert np.array_equal(got.numpy(), a != 0), name
    assert ms.count == sum(int((a != 0).sum()) for a in arrays.values())
    assert ms.metadata["method"] == "NumPy .npz file"


def test_a_big_endian_npz_and_a_name_kept_as_metadata(tmp_path):
    a = (np.arange(24).reshape(4, 6) % 3 == 0).astype(">i4")
    path = tmp_path / "be.npz"
    np.savez(path, w=a, orig_model_name=np.array("pythia-70m"))
    ms = import_mask(path)
    assert np.array_equal(ms.masks["w"].numpy(), a != 0)
    assert ms.metadata["orig_model_name"] == "pythia-70m"


def test_the_cli_reads_an_npz(tmp_path, capsys):
    path = tmp_path / "m.npz"
    np.savez(path, w=np.eye(4, dtype=bool))
    assert main(["mask", "info", str(path)]) == 0
    assert '"count": 4' in capsys.readouterr().out


def test_an_npz_of_pickled_objects_is_refused_unread(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, w=np.array([{"a": 1}, None], dtype=object))  # savez pickles object arrays
    with pytest.raises(UnsafePickleError, match="'w' holds Python objects"):
        import_mask(path)


def test_an_npz_with_values_other_than_0_1_is_refused_naming_the_array(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, ok=np.ones(3, dtype=bool), w=np.array([0.0, 1.0, 0.5]))
    with pytest.raises(MaskError, match=r"mask 'w' has values outside \{0, 1\}"):
        import_mask(path)
    np.savez(path, w=np.array(["a", "b"]))
    with pytest.raises(MaskError, match="mask 'w' has dtype <U1"):
        import_mask(path)


def test_an_npz_declaring_more_than_it_holds_is_refused_before_allocating(tmp_path):
    # a .npy header declaring 10^12 bools, followed by 4 bytes: np.load would allocate a terabyte first
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|b1", "fortran_order": False, "shape": (10**12,)})
    path = tmp_path / "forged.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("w.npy", header.getvalue() + b"\x01\x00\x01\x00")  # (the header has the magic)
    with pytest.raises(MaskError, match="declares 1,000,000,000,000 bytes"):
        import_mask(path)


def test_a_torch_save_zip_is_still_read_as_torch(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.tensor([True, False, True])}, path)
    ms = import_mask(path)
    assert ms.masks["w"].tolist() == [True, False, True] and ms.metadata["method"] == "torch.save file"


# --- the convention, said where masks come in; a dense training mask gets a note ----------------------------


def test_mask_help_states_the_convention(capsys):
    with pytest.raises(SystemExit) as done:
        main(["mask", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "1/True = the entry is in the subnetwork (trained; kept)" in text
    assert "a tensor the file does not list is frozen" in text


def test_a_mask_dense_in_most_tensors_gets_the_inverted_note(tmp_path):
    from subnetviz.masks import MaskSet, save_mask_set
    from subnetviz.training.mask_origin import dense_mask_note, mask_densities

    # planted: a freeze map (1 = frozen) of an update that touched 3 % of a, 10 % of b; c is all ones
    a = np.zeros((10, 10), dtype=bool)
    a.reshape(-1)[:3] = True
    b = np.zeros(50, dtype=bool)
    b[:5] = True
    frozen = {"a": ~a, "b": ~b, "c": np.ones(7, dtype=bool)}
    path = save_mask_set(tmp_path / "frozen.safetensors", MaskSet({k: torch.from_numpy(v) for k, v in frozen.items()}))
    got = mask_densities(str(path))
    assert got == {"a": 97 / 100, "b": 45 / 50, "c": 1.0}
    note = dense_mask_note(got)
    assert note is not None and "denser than 50 % in 3 of its 3 tensors" in note and "1 = frozen" in note
    assert "\n" not in note
    # the same update as a subnetwork (1 = trained): sparse, no note
    path = save_mask_set(tmp_path / "sub.safetensors", MaskSet({"a": torch.from_numpy(a), "b": torch.from_numpy(b)}))
    assert dense_mask_note(mask_densities(str(path))) is None
    # dense in half of the tensors only (not most): no note; in 2 of 3: the note
    assert dense_mask_note({"x": 0.9, "y": 0.1}) is None
    assert dense_mask_note({"x": 0.9, "y": 0.6, "z": 0.1}) is not None
    assert dense_mask_note({"x": 0.5, "y": 0.5}) is None  # exactly half the entries is not denser than half


def test_an_npz_uploaded_on_the_workspace_is_stored_bit_for_bit(tmp_path, monkeypatch):
    """The upload widget took .safetensors, .pt and pickles only: a NumPy .npz was refused by its name."""
    from safetensors.numpy import load_file

    from subnetviz.masks import load_mask_set
    from subnetviz.selection import UPLOAD_SUFFIXES, save_upload

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    arrays = {k: v for k, v in _arrays().items() if v.ndim}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    assert ".npz" in UPLOAD_SUFFIXES
    stored = save_upload("my mask.npz", buf.getvalue())
    assert stored.suffix == ".safetensors" and set(load_file(str(stored))) >= set(arrays)
    ms = load_mask_set(stored)
    for name, a in arrays.items():
        assert np.array_equal(ms.masks[name].numpy(), a != 0), name
