"""Mask sets on disk: bit-packed round trip, validation against a checkpoint, the released pickles.

Proves: save/load is lossless for odd sizes and 0-d/1-d/3-d masks and the file really is
bit-packed; validation names the mask and suggests close names; legit released pickles
(protocols 2-5) import; a pickle that asks for anything else is refused before any code runs.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from subnetviz.checkpoints import open_checkpoint
from subnetviz.errors import MaskError, UnsafePickleError
from subnetviz.masks import (
    MaskSet,
    import_bigram_pickle,
    import_mask,
    load_mask_set,
    save_mask_set,
    validate_mask_set,
)
from tests.ckpt_fixtures import Boom

SHAPES = {"a": (7, 13), "b": (1,), "c": (3, 5, 9), "d": (), "e": (8, 8), "f": (0, 4)}


def _random_masks(seed=0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.rand(s, generator=gen) < 0.3 for k, s in SHAPES.items()}


def test_round_trip_bit_packed_odd_sizes(tmp_path):
    masks = _random_masks()
    path = save_mask_set(tmp_path / "m.safetensors", MaskSet(masks, {"method": "test", "tolerance": 1e-5}))
    back = load_mask_set(path)
    assert set(back.masks) == set(masks)
    for k, m in masks.items():
        assert back.masks[k].dtype == torch.bool and back.masks[k].shape == m.shape and torch.equal(back.masks[k], m)
    count, numel = sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())
    assert back.metadata["method"] == "test" and back.metadata["tolerance"] == 1e-5
    assert back.metadata["count"] == count and back.metadata["numel"] == numel
    assert back.count == count and back.density == pytest.approx(count / numel)
    with safe_open(str(path), framework="np") as f:  # stored as packbits: ceil(numel / 8) bytes
        for k, s in SHAPES.items():
            arr = f.get_tensor(k)
            assert arr.dtype == np.uint8 and arr.size == (int(np.prod(s)) + 7) // 8, k
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, nothing left behind


def test_a_mask_read_bit_packed_equals_it_read_whole(tmp_path):
    """``load_mask_set(packed=True)`` (counting and overlaps: a bit per parameter held) against the bool tensors
    counted in NumPy: our packed files, plain bool / 0-1 float files, and a file from elsewhere whose padding
    bits past the entries are set (a count of set bits would count them)."""
    masks = _random_masks()
    ours = save_mask_set(tmp_path / "m.safetensors", MaskSet(masks))
    plain = tmp_path / "plain.safetensors"
    save_file({"u": masks["a"].to(torch.bfloat16), "b": masks["c"]}, str(plain))
    with safe_open(str(ours), framework="np") as f:  # the same masks, padding bits of every last byte set
        meta, bits = f.metadata(), {k: f.get_tensor(k).copy() for k in f.keys()}
    for k, b in bits.items():
        n = int(np.prod(SHAPES[k]))
        if n % 8:
            b[-1] |= 0xFF >> (n % 8)
    from safetensors.numpy import save_file as save_np

    padded = tmp_path / "padded.safetensors"
    save_np(bits, str(padded), metadata=meta)
    for path in (ours, plain, padded):
        whole, packed = load_mask_set(path), load_mask_set(path, packed=True)
        expect = sum(int(np.asarray(m.numpy(), dtype=np.int64).sum()) for m in whole.masks.values())
        assert packed.count == whole.count == expect and packed.numel == whole.numel
        assert packed.shapes() == whole.shapes()
        assert all(torch.equal(packed.masks[k], whole.masks[k]) for k in whole.masks)
    assert load_mask_set(padded, packed=True).count == load_mask_set(ours).count


def test_a_mask_larger_than_the_memory_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A 7B model's mask is 7 GB as bool tensors (0.9 GB packed): the need, from the header, is compared with
    the memory available before any tensor is read, whole or bit-packed."""
    from subnetviz import config
    from subnetviz.errors import ConfigError

    path = save_mask_set(tmp_path / "m.safetensors", MaskSet({"w": torch.ones(4096, 1024, dtype=torch.bool)}))
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 2 << 20)  # 2 MiB: 4 MiB as bool, 0.5 packed
    with pytest.raises(ConfigError, match=r"The mask m\.safetensors needs about .* Refused before loading"):
        load_mask_set(path)
    assert load_mask_set(path, packed=True).count == 4096 * 1024
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 1 << 10)
    with pytest.raises(ConfigError, match="Refused before loading"):
        load_mask_set(path, packed=True)


def test_plain_uint8_and_bool_files_load(tmp_path):
    m = (torch.arange(10) % 3 == 0).reshape(2, 5)
    save_file({"u": m.to(torch.uint8), "b": m}, str(tmp_path / "plain.safetensors"))
    back = load_mask_set(tmp_path / "plain.safetensors")
    assert torch.equal(back.masks["u"], m) and torch.equal(back.masks["b"], m)


@pytest.mark.parametrize(
    "tensor, match",
    [
        (torch.rand(3, 3), r"outside \{0, 1\} \(dtype torch.float32, e.g. 0\."),
        (torch.tensor([0, 1, 2], dtype=torch.uint8), "outside"),
        (torch.tensor([0.0, float("nan")]), "outside.*nan"),
        (torch.tensor([1 + 2j]), "dtype torch.complex64"),
    ],
)
def test_unusable_mask_files(tmp_path, tensor, match):
    save_file({"model.layers.0.mlp.up_proj.weight": tensor}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(MaskError, match=match) as err:
        load_mask_set(tmp_path / "bad.safetensors")
    assert "up_proj" in str(err.value) and "bad.safetensors" in str(err.value)


def test_corrupt_and_missing_mask_files(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(100))
    with pytest.raises(MaskError, match="junk.safetensors"):
        load_mask_set(tmp_path / "junk.safetensors")
    with pytest.raises(MaskError, match="nope.safetensors"):
        load_mask_set(tmp_path / "nope.safetensors")


def test_packed_size_mismatch_is_refused(tmp_path):
    path = save_mask_set(tmp_path / "m.safetensors", MaskSet({"w": torch.ones(4, 4, dtype=torch.bool)}))
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
    meta["shape:w"] = "40,4"  # claims more bits than stored
    from safetensors.numpy import save_file as save_np

    save_np({"w": np.packbits(np.ones(16, bool))}, str(path), metadata=meta)
    with pytest.raises(MaskError, match="'w'"):
        load_mask_set(path)


# --- validation against a checkpoint ----------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_shapes(ckpt_zoo):
    ck = open_checkpoint(ckpt_zoo.llama)
    return {n: ck.meta(n).shape for n in ck.names}


def test_validate_accepts_a_fitting_mask(llama_shapes):
    ms = MaskSet({n: torch.zeros(s, dtype=torch.bool) for n, s in llama_shapes.items()})
    validate_mask_set(ms, llama_shapes, require_all=True)


def test_validate_wrong_name_suggests(llama_shapes):
    ms = MaskSet({"model.layers.0.self_attn.q_prj.weight": torch.zeros(16, 16, dtype=torch.bool)})
    with pytest.raises(MaskError, match="q_prj") as err:
        validate_mask_set(ms, llama_shapes)
    assert "Did you mean 'model.layers.0.self_attn.q_proj.weight'" in str(err.value)


def test_validate_wrong_shape_and_dtype(llama_shapes):
    name = "model.layers.1.mlp.down_proj.weight"
    with pytest.raises(MaskError, match=r"down_proj.*\(32, 16\).*\(16, 32\)"):
        validate_mask_set(MaskSet({name: torch.zeros(32, 16, dtype=torch.bool)}), llama_shapes)
    with pytest.raises(MaskError, match="float32"):
        validate_mask_set(MaskSet({name: torch.zeros(16, 32)}), llama_shapes)


def test_validate_require_all_names_the_missing(llama_shapes):
    ms = MaskSet({"lm_head.weight": torch.zeros(llama_shapes["lm_head.weight"], dtype=torch.bool)})
    validate_mask_set(ms, llama_shapes)  # a partial mask is fine by default
    with pytest.raises(MaskError, match="have no mask"):
        validate_mask_set(ms, llama_shapes, require_all=True)


# --- released bigram pickles ----------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_import_legit_released_pickle(tmp_path, protocol):
    masks = {k: v.numpy() for k, v in _random_masks(1).items()}
    path = tmp_path / "subnetwork_dict_lambda0.1.pickle"
    path.write_bytes(pickle.dumps({**masks, "orig_model_name": "EleutherAI/pythia-70m"}, protocol=protocol))
    ms = import_bigram_pickle(path)
    assert ms.metadata["orig_model_name"] == "EleutherAI/pythia-70m"
    assert set(ms.masks) == set(masks)
    for k, v in masks.items():
        np.testing.assert_array_equal(ms.masks[k].numpy(), v)
        assert ms.masks[k].dtype == torch.bool


def test_malicious_pickle_never_runs(tmp_path):
    sentinel = tmp_path / "PWNED"
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"w": np.ones(3, bool), "x": Boom(sentinel)}))
    with pytest.raises(UnsafePickleError, match=r"evil\.pickle.*(posix|os)\.system"):
        import_bigram_pickle(path)
    assert not sentinel.exists()
    assert issubclass(UnsafePickleError, MaskError)


def test_pickle_of_a_non_mask(tmp_path):
    path = tmp_path / "list.pickle"
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(MaskError, match="list.pickle"):
        import_bigram_pickle(path)
    (tmp_path / "floats.pickle").write_bytes(pickle.dumps({"w": np.ones(3, np.float32)}))
    with pytest.raises(MaskError, match="'w'"):
        import_bigram_pickle(tmp_path / "floats.pickle")


# --- memory exhaustion from a few hundred bytes ---------------------------------------------------------
def _bomb(call: bytes) -> bytes:
    """A protocol-2 pickle ``{"w": <call>}``: tiny file, huge allocation if the call runs."""
    return b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01" + call + b"s."


_BOMBS = {
    # builtins.bytes(200_000_000): what a 300-byte pickle used to allocate, zero-filled, at once
    "bytes": b"cbuiltins\nbytes\nJ\x00\xc2\xeb\x0b\x85R",
    # numpy.ndarray((25_000_000,), "f8"): 200 MB of array from a class call
    "ndarray": b"cnumpy\nndarray\nJ@x}\x01\x85X\x02\x00\x00\x00f8\x86R",
    # numpy.core.multiarray._reconstruct(ndarray, (200_000_000,), b"b")
    "reconstruct": b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\xc2\xeb\x0b\x85C\x01b\x87R",
}


@pytest.mark.parametrize("kind", sorted(_BOMBS))
def test_pickle_bomb_refused_before_allocating(tmp_path, kind):
    import tracemalloc

    from subnetviz.errors import UnsafePickleError

    path = tmp_path / f"{kind}.pickle"
    path.write_bytes(_bomb(_BOMBS[kind]))
    assert path.stat().st_size < 100
    tracemalloc.start()
    try:
        with pytest.raises(UnsafePickleError, match=r"allocate 200,000,000 bytes.*Refused before allocating"):
            import_bigram_pickle(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, f"{kind}: {peak:,} bytes allocated before refusing"


def test_pickle_budget_admits_large_legit_masks(tmp_path):
    """The budget follows the file: a real 8 MB mask (protocols 2 and 4) still imports."""
    masks = {"h.0.mlp.c_fc.weight": np.random.default_rng(0).random((2048, 4096)) < 0.01}
    for protocol in (2, 4, 5):
        path = tmp_path / f"big{protocol}.pickle"
        path.write_bytes(pickle.dumps(masks, protocol=protocol))
        ms = import_bigram_pickle(path)
        assert torch.equal(ms.masks["h.0.mlp.c_fc.weight"], torch.from_numpy(masks["h.0.mlp.c_fc.weight"]))


@pytest.mark.parametrize("shape", ["-8,-1", "3,x", "-1"])
def test_packed_mask_with_a_bad_shape_is_one_line(tmp_path, shape):
    from safetensors.numpy import save_file

    path = tmp_path / "bad.safetensors"
    save_file({"w": np.zeros(1, np.uint8)}, str(path), metadata={"shape:w": shape})
    with pytest.raises(MaskError, match=r"bad\.safetensors: packed mask 'w' has shape .*non-negative integers"):
        load_mask_set(path)


@pytest.mark.parametrize(
    ("shape", "stored", "match"),
    [
        ("4294967296,4294967296", 0, r"has 0 values of .*uint8; expected 2,305,843,009,213,693,952 uint8 bytes"),
        ("65536,65536,65536,65536", 1, r"expected 2,305,843,009,213,693,952 uint8 bytes"),  # NumPy's product: 0
        ("0,4294967296,4294967296", 0, r"no entries, yet its other dimensions multiply to"),
        ("-1", 1, r"non-negative integers"),
    ],
)
def test_packed_mask_whose_shape_overflows_is_one_line(tmp_path, shape, stored, match):
    """A ``shape:<name>`` whose NumPy product wraps to 0 matched a file of 0 bytes and then failed to reshape
    ("cannot reshape array of size 0"): sizes are Python ints, so it is refused by name, in every reader."""
    from safetensors.numpy import save_file

    from subnetviz.masks import load_mask_tensor

    path = tmp_path / "ovf.safetensors"
    save_file({"w": np.zeros(stored, np.uint8)}, str(path), metadata={"format": "subnetviz-mask/1", "shape:w": shape})
    for read in (load_mask_set, import_mask, lambda p: load_mask_tensor(p, "w")):
        with pytest.raises(MaskError, match=rf"ovf\.safetensors: packed mask 'w' .*{match}") as err:
            read(path)
        assert "\n" not in str(err.value)


def test_packed_mask_tensor_reads_as_the_whole_set(tmp_path):
    """load_mask_tensor (one mask, for drill-down views) and load_mask_set agree, now that both check the shape."""
    from subnetviz.masks import load_mask_tensor

    masks = _random_masks()
    path = save_mask_set(tmp_path / "m.safetensors", MaskSet(masks))
    whole = load_mask_set(path).masks
    for name, m in masks.items():
        assert torch.equal(load_mask_tensor(path, name), m) and torch.equal(whole[name], m), name


@pytest.mark.parametrize(
    "array", [np.array([True, False], dtype=object), np.array(["1", "0"]), np.array([b"1"]), np.zeros(2, "V4")]
)
def test_released_pickle_of_an_array_no_mask_can_be_is_one_line(tmp_path, array):
    """A bigram-style pickle whose array holds objects or strings: the restricted unpickler admits it, then
    torch.from_numpy raised TypeError; refused by name."""
    path = tmp_path / "m.pickle"
    path.write_bytes(pickle.dumps({"transformer.h.0.mlp.c_fc.weight": array}, protocol=2))
    for read in (import_bigram_pickle, import_mask):
        with pytest.raises(MaskError, match=r"m\.pickle: entry 'transformer.h.0.mlp.c_fc.weight' is a numpy array of"):
            read(path)


# --- torch.save files ----------------------------------------------------------------------------------
def _torch_file(path, obj, **kw):
    torch.save(obj, path, **kw)
    return path


def test_torch_save_masks_import_in_every_dtype(tmp_path):
    """Masks someone saved with torch.save: bool, uint8 0/1 and bf16 0/1 (the RL-subnetwork code keeps its
    masks as bf16 0/1), inside one wrapping dict, with a string kept as metadata; the same bits as written."""
    masks = _random_masks(3)
    obj = {"masks": {"a": masks["a"], "c": masks["c"].to(torch.uint8), "e": masks["e"].to(torch.bfloat16)}}
    path = _torch_file(tmp_path / "m.pt", obj)
    ms = import_mask(path)
    assert set(ms.masks) == {"a", "c", "e"} and ms.metadata["method"] == "torch.save file"
    for k in ms.masks:
        assert ms.masks[k].dtype == torch.bool and torch.equal(ms.masks[k], masks[k])
    named = import_mask(_torch_file(tmp_path / "n.pth", {"w": masks["a"], "orig_model_name": "gpt2"}))
    assert named.metadata["orig_model_name"] == "gpt2" and torch.equal(named.masks["w"], masks["a"])
    # told by the content, not by the name: a torch file named .safetensors, a safetensors file named .pt
    assert torch.equal(import_mask(_torch_file(tmp_path / "t.safetensors", {"w": masks["a"]})).masks["w"], masks["a"])
    st = save_mask_set(tmp_path / "s.safetensors", MaskSet({"w": masks["a"]}))
    (tmp_path / "s.pt").write_bytes(st.read_bytes())
    assert torch.equal(import_mask(tmp_path / "s.pt").masks["w"], masks["a"])
    bf = tmp_path / "bf16.safetensors"  # a bf16 0/1 safetensors mask (no NumPy dtype) reads too
    save_file({"w": masks["e"].to(torch.bfloat16)}, str(bf))
    assert torch.equal(load_mask_set(bf).masks["w"], masks["e"])


def test_malicious_torch_file_never_runs(tmp_path):
    sentinel = tmp_path / "PWNED"
    path = _torch_file(tmp_path / "evil.pt", {"w": torch.ones(3, dtype=torch.bool), "x": Boom(sentinel)})
    with pytest.raises(UnsafePickleError, match=r"evil\.pt: .*it asks for (posix|os)\.system.*nothing in it was run"):
        import_mask(path)
    assert not sentinel.exists()


def test_compressed_or_truncated_torch_files_are_refused_before_reading(tmp_path):
    """torch.save stores its records uncompressed; a compressed record could expand without bound (a zip
    bomb), so it is refused from the archive's directory, before torch reads anything."""
    import zipfile

    src = _torch_file(tmp_path / "m.pt", {"w": torch.zeros(1000, dtype=torch.bool)})
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    with pytest.raises(UnsafePickleError, match=r"bomb\.pt: record .* is compressed"):
        import_mask(bomb)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(MaskError, match=r"cut\.pt: not a readable torch\.save file"):
        import_mask(cut)


def test_torch_views_bigger_than_the_file_are_refused_before_allocating(tmp_path):
    """A tensor of 10^12 entries over one stored byte (stride 0), or a thousand tensors over one storage: a
    few hundred bytes on disk, a terabyte once made bool. Refused from the sizes, before any conversion."""
    one = torch.ones(1, dtype=torch.uint8)
    with pytest.raises(MaskError, match=r"huge\.pt: mask 'w' of shape \(1000000000000,\) is a view larger"):
        import_mask(_torch_file(tmp_path / "huge.pt", {"w": one.expand(10**12)}))
    shared = torch.ones(1 << 16, dtype=torch.bool)
    with pytest.raises(MaskError, match=r"shared\.pt: its masks have 65,536,000 entries"):
        import_mask(_torch_file(tmp_path / "shared.pt", {f"w{i}": shared for i in range(1000)}))


def test_legacy_torch_file_and_non_masks_are_named(tmp_path):
    legacy = _torch_file(tmp_path / "old.pt", {"w": torch.ones(2)}, _use_new_zipfile_serialization=False)
    with pytest.raises(MaskError, match=r"old\.pt: a torch\.save file in the format of PyTorch before 1\.6"):
        import_mask(legacy)
    with pytest.raises(MaskError, match=r"list\.pt: expected a dict of masks"):
        import_mask(_torch_file(tmp_path / "list.pt", [torch.ones(2)]))
    with pytest.raises(MaskError, match=r"num\.pt: entry 'w' is int, expected a tensor"):
        import_mask(_torch_file(tmp_path / "num.pt", {"w": 3}))
    with pytest.raises(MaskError, match=r"half\.pt: mask 'w' has values outside \{0, 1\}"):
        import_mask(_torch_file(tmp_path / "half.pt", {"w": torch.tensor([0.0, 0.5])}))
    with pytest.raises(MaskError, match=r"sparse\.pt: mask 'w' is a torch\.sparse_coo tensor"):
        import_mask(_torch_file(tmp_path / "sparse.pt", {"w": torch.eye(3).to_sparse()}))


def test_cli_mask_import_never_replaces_a_file_unasked(tmp_path, capsys):
    from subnetviz.__main__ import main

    src = _torch_file(tmp_path / "m.pt", {"w": torch.eye(3, dtype=torch.bool)})
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"someone's file")
    assert main(["mask", "import", str(src), str(dst)]) == 2
    assert dst.read_bytes() == b"someone's file" and "already there" in capsys.readouterr().err
    assert main(["mask", "import", str(src), str(dst), "--overwrite"]) == 0
    assert torch.equal(load_mask_set(dst).masks["w"], torch.eye(3, dtype=torch.bool))
    assert main(["mask", "info", str(src)]) == 0 and '"density": 0.3333' in capsys.readouterr().out
    # a folder as the destination: --overwrite never replaces one, so it is not offered
    assert main(["mask", "import", str(src), str(tmp_path), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "a folder is there; name the file to write" in err and "--overwrite" not in err


def test_a_safetensors_mask_whose_header_length_starts_with_0x80_is_read(tmp_path):
    """A safetensors file begins with its header's length: 128 + 256·k bytes puts 0x80, a pickle's PROTO opcode,
    first. 'mask info' of such a mask (one in 256, the masks analyze writes among them) said 'not a readable
    pickle (unsupported pickle protocol: 18)'."""
    import struct

    from subnetviz.masks import MaskSet, import_mask, save_mask_set

    gen = torch.Generator().manual_seed(0)
    for width in range(1, 400):  # until a header's length has 0x80 as its low byte
        path = save_mask_set(
            tmp_path / f"m{width}.safetensors", MaskSet({"w" * width: torch.rand(8, 8, generator=gen) < 0.5})
        )
        if path.read_bytes()[0] == 0x80:
            break
        path.unlink()
    else:
        pytest.skip("no header of such a length")
    assert struct.unpack("<Q", path.read_bytes()[:8])[0] % 256 == 0x80
    assert import_mask(path).count == load_mask_set(path).count
    with pytest.raises(MaskError, match="a folder, not a mask file"):
        import_mask(tmp_path)


def _torch_record(path, payload: bytes):
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")
    return path


@pytest.mark.parametrize(
    "name, payload, says",
    [
        # a tuple 150,000 deep as a dict key: hashing it recursed in C past the stack (a segfault, rc 139)
        ("key.pickle", b"\x80\x04}" + b")" + b"\x85" * 150_000 + b"K\x01s.", "nests objects more than 100 deep"),
        ("key.pt", b"\x80\x02}" + b")" + b"\x85" * 150_000 + b"K\x01s.", "nests objects more than 100 deep"),
        # metadata nested 5,000 deep: a RecursionError traceback in the error message's repr
        ("list.pickle", b"\x80\x04}X\x0f\x00\x00\x00orig_model_name" + b"]" * 5000 + b"a" * 4999 + b"s.", "100 deep"),
        # 2 MB of empty-set opcodes built 490 MB of sets (the budget charged arrays and bytes only)
        ("sets.pickle", b"\x80\x04](" + b"\x8f" * 2_000_000 + b"e.", "builds objects of more than"),
        ("dicts.pt", b"\x80\x02](" + b"}" * 2_000_000 + b"e.", "builds objects of more than"),
    ],
)
def test_a_hostile_pickle_is_refused_before_it_builds_anything(tmp_path, name, payload, says):
    """The pickle's opcodes are walked first (no object built): nesting and containers are bounded by the
    file's size; checked in a process of its own, as a regression would crash it."""
    path = tmp_path / name
    if name.endswith(".pt"):
        _torch_record(path, payload)
    else:
        path.write_bytes(payload)
    done = subprocess.run(
        [sys.executable, "-m", "subnetviz", "mask", "info", str(path)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 2 and says in done.stderr and done.stderr.count("\n") == 1, done.stderr[-500:]


def test_a_downloaded_mask_names_no_server_path(tmp_path, monkeypatch):
    """The Workspace's mask download served the file as it is: its provenance named the server's absolute paths
    ("base": "/root/.cache/subnetviz/zoo/base") where every page shows them relative to their root."""
    from subnetviz.masks import shareable_bytes

    root = tmp_path / "ckpts"
    (root / "base").mkdir(parents=True)
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(root))
    masks = {"w": torch.tensor([[True, False, True]]), "v": torch.zeros(5, dtype=torch.bool)}
    path = save_mask_set(root / "m.safetensors", MaskSet(masks, {"base": str(root / "base"), "method": "update"}))
    out = tmp_path / "downloaded.safetensors"
    out.write_bytes(shareable_bytes(path))
    with safe_open(str(out), "np") as f:
        info = f.metadata()["subnetviz"]
    assert str(tmp_path) not in info and '"base": "ckpts/base"' in info and '"method": "update"' in info
    again = load_mask_set(out)
    assert set(again.masks) == {"w", "v"} and all(torch.equal(again.masks[k], masks[k]) for k in masks)


def test_a_saved_mask_is_readable_as_the_umask_allows(tmp_path, monkeypatch):
    """safetensors wrote mask files 0600 while every other file of a result folder was 0644 (umask 022): the
    masks of a folder shared with colleagues could not be read by them."""
    from subnetviz import cache

    monkeypatch.setattr(cache, "_UMASK", 0o022)  # the process' umask, as the module read it at import
    path = save_mask_set(tmp_path / "m.safetensors", MaskSet({"w": torch.ones(3, dtype=torch.bool)}, {}))
    assert path.stat().st_mode & 0o777 == 0o644
