"""Review "mask files users bring" (second pass): the fixes, on planted files at small sizes.

- A pickle's calls were charged a fixed ~50 bytes whatever they built: a 1 KB ``.pt`` calling ``bytearray(N)``,
  ``_codecs.encode`` of one memoised string again and again, or a bigram pickle calling ``bytes(array)`` /
  ``_codecs.encode(array, "hex_codec")`` built any amount of memory before the one-line refusal (a legacy
  ``pytorch_model.bin`` as well). Each call is now charged what it can build, before it runs.
- A ``torch.save`` mask of meta tensors (a model built without weights) ended in a traceback.
- A packed mask whose bytes do not hold its ``shape:`` passed the Training form's header check (queued, then failed).
- A safetensors mask from another tool lost its header's provenance on import.
- 0/1 masks stored as uint16/32/64 were refused as not 0/1; an empty ``np.savez()`` was called "no zip archive".
"""

from __future__ import annotations

import codecs
import io
import json
import pickle
import tracemalloc

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from subnetviz.errors import CheckpointError, MaskError, SubnetvizError, UnsafePickleError
from subnetviz.masks import import_mask, load_mask_set, mask_file_shapes
from subnetviz.pickles import check_torch_file, pickle_budget

MIB = 1 << 20


class _Call:
    """An object pickled as ``func(*args)``: what a hostile file can ask an unpickler to call."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _peak(fn) -> tuple[BaseException, int]:
    """The error ``fn`` raises and the most memory Python allocated meanwhile (bytearray, bytes and str included)."""
    tracemalloc.start()
    try:
        with pytest.raises(SubnetvizError) as caught:
            fn()
        return caught.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _one_line(exc: BaseException, path) -> str:
    text = str(exc)
    assert "\n" not in text and str(path) in text and "Traceback" not in text, text
    return text


# --- 1. what a pickle's calls build is charged before they run -----------------------------------------------------
def test_a_pt_mask_calling_bytearray_of_a_number_is_refused_before_allocating(tmp_path):
    """944 bytes of torch.save file whose pickle calls ``bytearray(8 MiB)``: the budget of a file that size is about
    1 MiB, so the call is refused as the scan reaches it, nothing of it allocated (it built the 8 MiB, then said the
    entry is no tensor)."""
    path = tmp_path / "mask.pt"
    torch.save({"w": torch.ones(3, dtype=torch.bool), "junk": _Call(bytearray, 8 * MIB)}, path)
    assert pickle_budget(path.stat().st_size) < 2 * MIB
    exc, peak = _peak(lambda: import_mask(path))
    assert isinstance(exc, UnsafePickleError)
    text = _one_line(exc, path)
    assert f"allocate {8 * MIB:,} bytes for a call of builtins.bytearray" in text and "Refused before" in text
    assert peak < 2 * MIB, f"{peak:,} bytes allocated before the refusal"


def test_a_pt_mask_encoding_one_memoised_string_again_and_again_is_refused(tmp_path):
    """One 64 KiB string in the pickle's memo, passed to ``_codecs.encode`` 100 times: 6.4 MiB built by a 66 KB
    file (each call used to be charged 50 bytes)."""
    big = "x" * (64 << 10)
    path = tmp_path / "mask.pt"
    torch.save(
        {"w": torch.ones(3, dtype=torch.bool), "junk": [_Call(codecs.encode, big, "latin1") for _ in range(100)]}, path
    )
    assert path.stat().st_size < 100_000
    exc, peak = _peak(lambda: import_mask(path))
    assert isinstance(exc, UnsafePickleError) and "_codecs.encode" in _one_line(exc, path)
    assert peak < 2 * MIB, f"{peak:,} bytes allocated before the refusal"


@pytest.mark.parametrize(
    "call, what",
    [
        (lambda n: _Call(torch.FloatTensor, n), "calls torch.FloatTensor on arguments"),  # n floats, from a number
        # torch's _rebuild_from_type_v2(func, type, args, state) calls func(*args): bytearray(n) inside it
        (lambda n: _Call(torch._tensor._rebuild_from_type_v2, bytearray, torch.Tensor, (n,), {}), "bytearray"),
    ],
)
def test_other_allocating_calls_torch_admits_are_refused(tmp_path, call, what):
    path = tmp_path / "mask.pt"
    torch.save({"w": torch.ones(3, dtype=torch.bool), "junk": call(8 * MIB)}, path)
    exc, peak = _peak(lambda: check_torch_file(path))
    assert isinstance(exc, UnsafePickleError) and what in _one_line(exc, path)
    assert peak < 2 * MIB


def test_a_legit_torch_save_of_python_values_is_still_read(tmp_path):
    """What torch.save writes for bytes, bytearray, sets, Counters, sizes and devices (protocol 2: encode of latin-1
    text, bytearray of that, set of a list) is charged what it builds, well inside the budget: read as before."""
    import collections

    values = {"b": b"xy" * 5000, "ba": bytearray(b"q" * 5000), "s": set(range(300)), "c": collections.Counter("aab")}
    values |= {"sz": torch.Size([2, 3]), "dev": torch.device("cpu"), "z": 1 + 2j}
    w = torch.rand(64, 64) < 0.5
    for legacy in (False, True):
        path = tmp_path / f"values{legacy}.pt"
        torch.save({"w": w, **values}, path, _use_new_zipfile_serialization=not legacy)
        check_torch_file(path)  # not refused
    torch.save({"w": w.to(torch.bfloat16), "note": "from rl.py"}, tmp_path / "mask.pt")
    ms = import_mask(tmp_path / "mask.pt")
    assert torch.equal(ms.masks["w"], w) and ms.metadata["note"] == "from rl.py"


@pytest.mark.parametrize("how", ["bytes", "hex"])
def test_a_bigram_pickle_copying_its_array_again_and_again_is_refused(tmp_path, how):
    """A released-bigram pickle holding one 64 KiB array and calling ``bytes(array)`` (a copy) or
    ``_codecs.encode(array, "hex_codec")`` (twice its bytes) 60 times: 3.75 or 7.5 MiB from a 70 KB file whose
    budget is about 1.1 MiB. The restricted unpickler charges each call its array's bytes (×2 for hex) first."""
    arr = np.zeros(64 << 10, np.uint8)
    copy = (lambda: _Call(bytes, arr)) if how == "bytes" else (lambda: _Call(codecs.encode, arr, "hex_codec"))
    path = tmp_path / f"{how}.pickle"
    path.write_bytes(pickle.dumps({"model.w": np.ones((2, 2), bool), "junk": [copy() for _ in range(60)]}, protocol=4))
    assert path.stat().st_size < 80_000
    exc, peak = _peak(lambda: import_mask(path))
    text = _one_line(exc, path)
    assert isinstance(exc, UnsafePickleError) and "Refused before allocating" in text
    assert (f"allocate {64 << 10:,} bytes" if how == "bytes" else f"allocate {2 * (64 << 10) + 64:,} bytes") in text
    assert peak < 3 * MIB, f"{peak:,} bytes allocated before the refusal"


def test_a_bigram_pickle_sizing_bytes_by_a_numpy_integer_is_charged(tmp_path):
    """``bytes(np.int64(N))`` makes N zero bytes (a NumPy integer is a size): charged N, not the 8 of its buffer."""
    path = tmp_path / "n.pickle"
    path.write_bytes(pickle.dumps({"model.w": np.ones((2, 2), bool), "junk": _Call(bytes, np.int64(8 * MIB))}))
    exc, peak = _peak(lambda: import_mask(path))
    assert isinstance(exc, UnsafePickleError) and f"allocate {8 * MIB:,} bytes" in _one_line(exc, path)
    assert peak < 2 * MIB


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "pre-1.6"])
def test_a_pytorch_model_bin_calling_bytearray_is_refused_by_the_checkpoint_reader(tmp_path, legacy):
    """The checkpoint reader walks a legacy ``pytorch_model.bin`` as the mask importer walks a ``.pt``: a state dict
    with ``bytearray(8 MiB)`` among its values is refused naming the file, before torch.load builds it."""
    from subnetviz.checkpoints import open_checkpoint

    path = tmp_path / "pytorch_model.bin"
    sd = {"model.w": torch.randn(4, 4), "junk": _Call(bytearray, 8 * MIB)}
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    exc, peak = _peak(lambda: open_checkpoint(path))
    assert isinstance(exc, CheckpointError)
    assert "bytearray" in _one_line(exc, path) and "Refused before" in str(exc)
    assert peak < 2 * MIB, f"{peak:,} bytes allocated before the refusal"


# --- 2. meta tensors ----------------------------------------------------------------------------------------------
@pytest.fixture
def meta_pt(tmp_path):
    """``{name: p != 0}`` of a model built on the meta device (as init_empty_weights does): shapes, no values."""
    with torch.device("meta"):
        lin = torch.nn.Linear(4, 3)
    path = tmp_path / "masks.pt"
    torch.save({n: p != 0 for n, p in lin.named_parameters()}, path)
    return path


def test_a_mask_of_meta_tensors_is_one_line_in_the_cli_and_the_upload(meta_pt, capsys):
    from subnetviz.cli import main
    from subnetviz.selection import save_upload

    with pytest.raises(MaskError, match=r"masks\.pt: mask 'weight' is a meta tensor \(shapes only, no values"):
        import_mask(meta_pt, packed=True)
    for args in (["mask", "info", str(meta_pt)], ["mask", "import", str(meta_pt), str(meta_pt.with_suffix(".st"))]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is a meta tensor" in err and "Traceback" not in err, err
    assert not meta_pt.with_suffix(".st").exists()
    with pytest.raises(MaskError) as caught:  # the Workspace uploader says a SubnetvizError in one line
        save_upload("masks.pt", meta_pt.read_bytes())
    assert str(caught.value).startswith("masks.pt: mask 'weight' is a meta tensor")


# --- 3. a packed mask whose bytes do not hold its shape, at submit -----------------------------------------------
def _packed_file(path, shapes: dict, short: str | None = None):
    """A packed mask file as save_mask_set writes it (np.packbits, ``shape:<name>``), ``short``'s bytes one short."""
    tensors, meta = {}, {"format": "subnetviz-mask/1", "subnetviz": "{}"}
    for name, shape in shapes.items():
        bits = np.packbits(np.ones(int(np.prod(shape)), bool))
        tensors[name] = bits[:-1] if name == short else bits
        meta[f"shape:{name}"] = ",".join(map(str, shape))
    save_file(tensors, str(path), metadata=meta)
    return path


def test_a_packed_mask_a_byte_short_is_refused_from_its_header(tmp_path):
    """(96, 384) entries need 4,608 bytes; the file stores 4,607. The header check said nothing; the run failed."""
    good = _packed_file(tmp_path / "good.safetensors", {"a": (96, 384), "b": (5,)})
    assert mask_file_shapes(good) == {"a": (96, 384), "b": (5,)}
    bad = _packed_file(tmp_path / "short.safetensors", {"a": (96, 384), "b": (5,)}, short="a")
    with pytest.raises(MaskError) as caught:
        mask_file_shapes(bad)
    text = _one_line(caught.value, bad)
    assert "packed mask 'a' has 4607 values of torch.uint8; expected 4,608 uint8 bytes for shape (96, 384)" in text


def test_the_training_check_refuses_it_before_anything_is_queued(tmp_path):
    from subnetviz.training.mask_fit import check_mask_fits
    from tests.models import make_llama

    base = make_llama(tmp_path / "base")
    shapes = {"model.layers.0.mlp.down_proj.weight": (16, 32)}
    check_mask_fits(str(base), str(_packed_file(tmp_path / "fits.safetensors", shapes)))  # fits: no error
    bad = _packed_file(tmp_path / "short.safetensors", shapes, short="model.layers.0.mlp.down_proj.weight")
    with pytest.raises(MaskError, match=r"has 63 values of torch\.uint8; expected 64 uint8 bytes for shape \(16, 32\)"):
        check_mask_fits(str(base), str(bad))


# --- 5. another tool's safetensors provenance ---------------------------------------------------------------------
def test_a_foreign_safetensors_mask_keeps_its_header_provenance(tmp_path, monkeypatch):
    from subnetviz.selection import save_upload

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    m = np.arange(12).reshape(3, 4) % 3 == 0
    said = {"base_model": "meta-llama/Llama-3.1-8B", "method": "wanda", "sparsity": "0.5", "created_by": "prune.py"}
    path = tmp_path / "foreign.safetensors"
    save_file({"model.w": m.astype(np.uint8)}, str(path), metadata={**said, "format": "pt", "count": "999"})
    ms = import_mask(path)
    # the file's own entries (its method over the default), where it came from; not safetensors' "format", nor a
    # count the app works out from the masks
    assert ms.metadata == {**said, "source": str(path)} and ms.count == 4
    stored = save_upload("foreign.safetensors", path.read_bytes())
    with safe_open(str(stored), "np") as f:
        info = json.loads(f.metadata()["subnetviz"])
    assert {k: info[k] for k in said} == said and info["source"] == "upload foreign.safetensors"
    assert info["count"] == 4 and info["numel"] == 12
    save_file({"model.w": m.astype(np.uint8)}, str(tmp_path / "plain.safetensors"))  # no header entries at all
    assert import_mask(tmp_path / "plain.safetensors").metadata == {
        "method": "safetensors file",
        "source": str(tmp_path / "plain.safetensors"),
    }
    assert load_mask_set(stored).metadata == info  # the app's own file: its provenance as it wrote it


# --- 6. unsigned 0/1 masks; an empty .npz ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
@pytest.mark.parametrize("fmt", ["npz", "pt", "safetensors"])
def test_unsigned_zero_one_masks_are_read(tmp_path, dtype, fmt):
    rng = np.random.default_rng(3)
    m = rng.random((7, 13)) < 0.4
    path = tmp_path / f"m.{fmt}"
    if fmt == "npz":
        np.savez(path, w=m.astype(dtype))
    elif fmt == "pt":
        torch.save({"w": torch.from_numpy(m.astype(dtype))}, path)
    else:
        from safetensors.torch import save_file as save_torch

        save_torch({"w": torch.from_numpy(m.astype(dtype))}, str(path))
    for packed in (False, True):
        ms = import_mask(path, packed=packed)
        assert ms.count == int(np.count_nonzero(m)) and ms.numel == m.size
        assert np.array_equal(ms.masks["w"].numpy(), m)
    bad = m.astype(dtype)
    bad[2, 5] = 2
    if fmt == "npz":
        np.savez(path, w=bad)
    elif fmt == "pt":
        torch.save({"w": torch.from_numpy(bad)}, path)
    else:
        save_torch({"w": torch.from_numpy(bad)}, str(path))
    with pytest.raises(MaskError, match=r"mask 'w' has values outside \{0, 1\} \(dtype torch\.uint\d+, e\.g\. 2\)"):
        import_mask(path)


def test_an_empty_npz_is_said_to_hold_no_arrays(tmp_path):
    path = tmp_path / "none.npz"
    np.savez(path)
    with pytest.raises(MaskError) as caught:
        import_mask(path)
    text = _one_line(caught.value, path)
    assert "holds no arrays" in text and "no zip archive" not in text


def test_a_bigram_pickle_of_unsigned_masks_is_read(tmp_path):
    m = np.eye(5, dtype=bool)
    path = tmp_path / "u.pickle"
    path.write_bytes(pickle.dumps({"model.w": m.astype(np.uint32), "orig_model_name": "x"}, protocol=2))
    ms = import_mask(path)
    assert ms.count == 5 and np.array_equal(ms.masks["model.w"].numpy(), m)


def test_the_torch_scan_of_a_big_legit_mask_stays_inside_its_budget(tmp_path):
    """A 1 M-entry bool mask saved by torch.save (its storage a record of the file): read, not refused."""
    m = torch.rand(1000, 1000) < 0.1
    buf = io.BytesIO()
    torch.save({"w": m}, buf)
    (tmp_path / "big.pt").write_bytes(buf.getvalue())
    assert torch.equal(import_mask(tmp_path / "big.pt", packed=True).masks["w"], m)
