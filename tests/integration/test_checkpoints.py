"""Checkpoint opening, alignment and bad input.

Proves: every storage form (sharded folder, index json, single file, legacy .bin, cached hub id)
yields the same tensors with the header's dtype; a malicious pickle is refused without running;
alignment handles ``model.`` prefixes, tied heads, resized vocabularies and one-sided tensors and
reports them; every bad input ends in a SubnetvizError subclass naming the file or tensor.
"""

from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import pytest
import torch

from subnetviz.analysis.updates import analyze_updates
from subnetviz.checkpoints import align, open_checkpoint, read_aligned
from subnetviz.errors import AlignmentError, CheckpointError, NonFiniteError, NotCachedError, SubnetvizError
from tests.ckpt_fixtures import bf16_step, fake_hub_cache, read_state_dict, write_folder
from tests.models import VOCAB, make_llama


@pytest.fixture(scope="module")
def llama_sd(ckpt_zoo):
    return read_state_dict(ckpt_zoo.llama)


def _same_tensors(ck, sd):
    assert sorted(ck.names) == sorted(sd)
    for name, t in sd.items():
        got = ck.get(name)
        assert got.dtype == t.dtype and torch.equal(got.view(torch.int16), t.view(torch.int16)), name


# --- opening ---------------------------------------------------------------------------------------------
def test_sharded_folder_and_its_index(ckpt_zoo, llama_sd):
    index = ckpt_zoo.llama / "model.safetensors.index.json"
    assert index.is_file()
    for spec in (ckpt_zoo.llama, index):
        ck = open_checkpoint(spec)
        assert len(ck.files) == len(set(json.loads(index.read_text())["weight_map"].values())) >= 2
        _same_tensors(ck, llama_sd)
        assert ck.dtypes == {"bfloat16": sum(t.numel() for t in llama_sd.values())}
        assert ck.meta("lm_head.weight").shape == (VOCAB, 16)
        assert ck.names_table.family == "llama" and not ck.tied_embeddings


def test_single_file_and_legacy_bin(ckpt_zoo, llama_sd):
    for spec in (ckpt_zoo.single, ckpt_zoo.legacy_bin, ckpt_zoo.legacy_bin.parent):
        ck = open_checkpoint(spec)
        _same_tensors(ck, llama_sd)
        assert ck.names_table.family == "llama"  # detected from the names (no config.json there)


def test_other_families_open_with_their_config(ckpt_zoo):
    for folder, family in [(ckpt_zoo.gpt2, "gpt2"), (ckpt_zoo.neox, "gpt_neox"), (ckpt_zoo.bert, "bert")]:
        ck = open_checkpoint(folder)
        assert ck.names_table.family == family
        _same_tensors(ck, read_state_dict(folder))
    assert open_checkpoint(ckpt_zoo.gpt2).tied_embeddings


def test_malicious_pickle_is_refused_and_never_runs(ckpt_zoo):
    assert not ckpt_zoo.sentinel.exists()
    with pytest.raises(CheckpointError, match="pytorch_model.bin") as err:
        open_checkpoint(ckpt_zoo.malicious_bin)
    assert "weights_only" in str(err.value)
    assert not ckpt_zoo.sentinel.exists()


def test_hub_id_through_the_local_cache_only(ckpt_zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snap = fake_hub_cache(tmp_path / "hub", "someorg/tiny-gpt2", ckpt_zoo.gpt2)
    ck = open_checkpoint("someorg/tiny-gpt2")
    assert ck.root == snap and ck.names_table.family == "gpt2"
    _same_tensors(ck, read_state_dict(ckpt_zoo.gpt2))
    with pytest.raises(NotCachedError, match="someorg/not-there"):
        open_checkpoint("someorg/not-there")


def test_fingerprint_is_stable_and_follows_the_files(ckpt_zoo, tmp_path):
    folder = shutil.copytree(ckpt_zoo.gpt2, tmp_path / "g")
    fp = open_checkpoint(folder).fingerprint
    assert open_checkpoint(folder).fingerprint == fp
    sd = read_state_dict(folder)
    sd["transformer.ln_f.weight"][0] = bf16_step(sd["transformer.ln_f.weight"][:1], 1)[0]
    write_folder(folder, sd)  # same header and size, new data
    os.utime(folder / "model.safetensors", ns=(1, 2))
    assert open_checkpoint(folder).fingerprint != fp


def test_two_finetunes_with_one_header_and_a_copied_mtime_differ(ckpt_zoo, tmp_path):
    """Two finetunes of one architecture (same header, same size) whose files kept one mtime (cp -p, rsync -a,
    an archive): the fingerprint was name, size, mtime and header, so `analyze` served one the other's results
    from the cache. So was a file rewritten in place and its mtime set back."""
    one = shutil.copytree(ckpt_zoo.gpt2, tmp_path / "one")
    two = shutil.copytree(ckpt_zoo.gpt2, tmp_path / "two")
    sd = read_state_dict(two)
    sd["transformer.ln_f.weight"][0] = bf16_step(sd["transformer.ln_f.weight"][:1], 1)[0]
    write_folder(two, sd)
    for f in (one, two):
        os.utime(f / "model.safetensors", ns=(10**18, 10**18))
    assert open_checkpoint(one).fingerprint != open_checkpoint(two).fingerprint
    before = open_checkpoint(one).fingerprint
    write_folder(one, read_state_dict(two))  # in place, then the old mtime put back
    os.utime(one / "model.safetensors", ns=(10**18, 10**18))
    assert open_checkpoint(one).fingerprint != before


def _transformers_state_dict(folder) -> dict[str, torch.Tensor]:
    """What transformers loads from ``folder`` (the independent reference for which files a folder means)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).state_dict()


def _reads_as(ck, ref: dict[str, torch.Tensor]) -> None:
    assert sorted(ck.names) == sorted(ref)
    for name, t in ref.items():
        assert torch.equal(ck.get(name).view(torch.int16), t.view(torch.int16)), name


@pytest.mark.parametrize("how", ["save_pretrained", "save_file"])
def test_single_file_beside_an_old_shard_index_is_read_as_transformers_reads_it(ckpt_zoo, tmp_path, how):
    """A folder saved sharded, then saved again as one model.safetensors: save_pretrained deletes the old shards
    but leaves their index; another writer (safetensors' save_file, a consolidation script) leaves both. transformers
    loads model.safetensors first; subnetviz followed the index: it refused the first folder ("shard(s) listed but
    missing") and read the stale shards of the second (0 changes where transformers sees 7). A note says which."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    folder = tmp_path / how
    model = AutoModelForCausalLM.from_pretrained(str(ckpt_zoo.llama), dtype=torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="8KB")  # the earlier save, sharded
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.view(torch.int16).view(-1)[:7] += 1  # the finetune: 7 entries
    if how == "save_pretrained":
        model.save_pretrained(folder)  # the final save, one file
        assert not list(folder.glob("model-*.safetensors"))
    else:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
        assert list(folder.glob("model-*.safetensors"))
    assert (folder / "model.safetensors.index.json").is_file() and (folder / "model.safetensors").is_file()
    ck = open_checkpoint(folder)
    assert ck.files == [folder / "model.safetensors"]
    _reads_as(ck, _transformers_state_dict(folder))
    (note,) = ck.notes
    assert "model.safetensors was read" in note and "model.safetensors.index.json" in note and "ignored" in note
    analysis = analyze_updates(ckpt_zoo.llama, [folder], labels=["ft"], spectra=None, device="cpu")
    assert analysis.reports[0].changed == 7
    assert any(n.startswith("ft: the folder holds both model.safetensors") for n in analysis.notes)


def test_tensor_stored_in_two_shards_is_read_from_the_later_one_with_a_note(ckpt_zoo, tmp_path):
    """Two shards both holding a tensor: read from the later file in name order, as transformers loads it (each
    shard in turn into one state dict), and said in a note rather than silently."""
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(ckpt_zoo.llama, tmp_path / "l")
    first, *_, last = sorted(folder.glob("model-*.safetensors"))
    name = next(iter(load_file(str(first))))
    later = load_file(str(last))
    later[name] = bf16_step(load_file(str(first))[name], 1)  # another value, in the later shard
    assert not torch.equal(later[name], load_file(str(first))[name])
    save_file(later, str(last), metadata={"format": "pt"})
    ck = open_checkpoint(folder)
    _reads_as(ck, _transformers_state_dict(folder))
    assert ck.meta(name).file == last
    assert any(name in n and first.name in n and last.name in n and "more than one file" in n for n in ck.notes)
    assert len(open_checkpoint(ckpt_zoo.llama).notes) == 0  # no note where each tensor is stored once


# --- bad input ---------------------------------------------------------------------------------------------
def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="nothing-here"):
        open_checkpoint(tmp_path / "nothing-here")


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no weights found") as err:
        open_checkpoint(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_a_gguf_file_is_named_as_gguf(tmp_path):
    """llama.cpp's GGUF, the file or a folder holding only it: one line saying it is GGUF and what to give instead
    (before: "not a checkpoint file", or "no weights found" beside a 4 GB file)."""
    f = tmp_path / "Qwen3-8B-Q4_K_M.gguf"
    f.write_bytes(b"GGUF\x03\x00\x00\x00")
    for path in (f, tmp_path):
        with pytest.raises(CheckpointError) as err:
            open_checkpoint(path)
        msg = str(err.value)
        assert "\n" not in msg and "GGUF (llama.cpp)" in msg and "safetensors release" in msg
        assert f.name in msg


def test_truncated_safetensors(ckpt_zoo, tmp_path):
    f = tmp_path / "cut.safetensors"
    data = ckpt_zoo.single.read_bytes()
    f.write_bytes(data[: len(data) // 2])  # cut in the middle of the data section
    with pytest.raises(CheckpointError, match="truncated") as err:
        open_checkpoint(f)
    assert "cut.safetensors" in str(err.value)


@pytest.mark.parametrize(
    "payload",
    [
        random.Random(0).randbytes(64),  # garbage: an absurd header length (seeded: the same test every run)
        (20).to_bytes(8, "little") + b"{not json at all!!!}" + b"\0" * 16,  # plausible length, not JSON
        (2).to_bytes(8, "little") + b"[]",  # JSON but not an object
        (66).to_bytes(8, "little") + b'{"w": {"dtype": "BF16", "shape": ["a"], "data_offsets": [0, "x"]}}',  # types
        b"\x01\x02",  # shorter than the length field
    ],
)
def test_corrupt_header(tmp_path, payload):
    f = tmp_path / "bad.safetensors"
    f.write_bytes(payload)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        open_checkpoint(f)


def test_header_offsets_that_do_not_fit_the_shape(tmp_path):
    header = {"w": {"dtype": "BF16", "shape": [4, 4], "data_offsets": [0, 8]}}
    raw = json.dumps(header).encode()
    f = tmp_path / "short.safetensors"
    f.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"short\.safetensors.*'w'.*32 bytes"):
        open_checkpoint(f)


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [-2, -2], "data_offsets": [0, 16]},  # multiplies to 4 entries
        {"dtype": "F32", "shape": [4], "data_offsets": [-8, 8]},  # would read the header as data
        {"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": [2.0, 2], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": ["x", 10**12], "data_offsets": [0, 16]},  # "x" * 10**12 before
        {"dtype": "F32", "shape": {"0": 4}, "data_offsets": [0, 16]},
        {"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]},
    ],
)
def test_header_sizes_are_whole_numbers_checked_before_use(tmp_path, entry):
    """Shapes and offsets someone else wrote are whole numbers >= 0 before anything multiplies or reads by
    them: refused when the checkpoint is opened, naming the tensor (before, a shape [-2, -2] was listed as
    4 parameters and failed when read)."""
    raw = json.dumps({"w": entry}).encode()
    f = tmp_path / "odd.safetensors"
    f.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 16)
    with pytest.raises(
        CheckpointError,
        match=r"odd\.safetensors: (corrupt header entry for tensor 'w'|tensor 'w' has "
        "unsupported dtype)",
    ) as err:
        open_checkpoint(f)
    assert "\n" not in str(err.value)


def _raw_safetensors(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


def _f32(shape, offsets):
    return {"dtype": "F32", "shape": shape, "data_offsets": offsets}


_W, _N = "model.layers.0.mlp.up_proj.weight", "model.norm.weight"


@pytest.mark.parametrize(
    ("header", "data", "match"),
    [  # each refused by safetensors itself (checked in the test)
        ({_W: _f32([8], [0, 32]), _N: _f32([4], [0, 16])}, 32, rf"{_W}' overlap the bytes of tensor '{_N}'"),
        ({_W: _f32([8], [0, 32]), _N: _f32([4], [16, 32])}, 32, rf"{_N}' overlap the bytes of tensor '{_W}'"),
        ({_W: _f32([8], [0, 32]), _N: _f32([4], [48, 64])}, 64, rf"bytes 32 to 48 .* before tensor '{_N}'"),
        ({_W: _f32([8], [16, 48])}, 48, rf"bytes 0 to 16 .* before tensor '{_W}'"),
        ({_W: _f32([8], [0, 32])}, 36, "4 bytes after the last tensor's data"),
        ({_W: _f32([8], [0, 32]), _N: _f32([0, 4], [16, 16])}, 32, rf"{_N}' overlap the bytes of tensor '{_W}'"),
        ({"__metadata__": {"format": 1}, _W: _f32([8], [0, 32])}, 32, "__metadata__ is an object with values other"),
        ({"__metadata__": {"x": None}, _W: _f32([8], [0, 32])}, 32, "__metadata__ is an object with values other"),
        ({"__metadata__": ["pt"], _W: _f32([8], [0, 32])}, 32, "__metadata__ is list"),
    ],
    ids=[
        "overlap",
        "overlap-tail",
        "gap",
        "gap-at-start",
        "trailing",
        "empty-inside-another",
        "meta-int",
        "meta-null",
        "meta-list",
    ],
)
def test_header_whose_tensors_do_not_tile_the_data_is_refused_as_safetensors_refuses_it(tmp_path, header, data, match):
    """Tensors are read from a map of the file by their header's offsets, not through safetensors, so what its own
    validation refuses is refused here too: offsets overlapping another tensor's (its numbers would be read from
    that tensor's bytes), bytes in a gap or after the last tensor, and __metadata__ that is not strings. Before,
    each was read (a norm aliasing the first 16 bytes of a weight reported 4 changes of its own)."""
    from safetensors import safe_open

    f = _raw_safetensors(tmp_path / "model.safetensors", header, np.arange(data, dtype=np.uint8).tobytes())
    with pytest.raises(Exception, match="invalid offset|not fully covered|invalid type"):
        with safe_open(str(f), "pt") as h:
            [h.get_tensor(k) for k in h.keys()]
    with pytest.raises(CheckpointError, match=match) as err:
        open_checkpoint(tmp_path)
    assert "\n" not in str(err.value) and str(f) in str(err.value)


@pytest.mark.parametrize(
    ("header", "data"),
    [  # each read by safetensors itself (checked in the test)
        ({_W: _f32([8], [16, 48]), _N: _f32([4], [0, 16])}, 48),  # entries out of order
        ({"a": _f32([0], [0, 0]), "z": _f32([0, 3], [0, 0]), _W: _f32([8], [0, 32])}, 32),  # empty, at 0
        ({_W: _f32([8], [0, 32]), "z": _f32([3, 0], [32, 32]), _N: _f32([4], [32, 48])}, 48),  # empty, between
        ({_W: _f32([8], [0, 32]), "z": _f32([0, 4096], [32, 32])}, 32),  # empty, at the end
        ({"__metadata__": None, _W: _f32([8], [0, 32])}, 32),
        ({"__metadata__": {}, _W: {**_f32([8], [0, 32]), "extra": 1}}, 32),
    ],
    ids=["out-of-order", "empty-at-start", "empty-between", "empty-at-end", "meta-null", "meta-empty"],
)
def test_header_safetensors_reads_is_still_read(tmp_path, header, data):
    """Every layout safetensors accepts still opens, each tensor read as safetensors reads it."""
    from safetensors import safe_open

    f = _raw_safetensors(tmp_path / "ok.safetensors", header, np.arange(data, dtype=np.uint8).tobytes())
    ck = open_checkpoint(f)
    with safe_open(str(f), "pt") as ref:
        assert sorted(ck.names) == sorted(ref.keys())
        for name in ref.keys():
            want = ref.get_tensor(name)
            assert ck.get(name).shape == want.shape and torch.equal(ck.get(name), want), name


def test_every_file_safetensors_writes_is_read(tmp_path):
    """Files safetensors itself writes (padded header, tensors in name order, empty ones among them) tile exactly."""
    from safetensors.torch import save_file

    tensors = {"a": torch.zeros(0, 4), "b": torch.ones(3, dtype=torch.bfloat16), "c": torch.zeros(4, 0)}
    tensors |= {"d": torch.tensor(1.5), "e": torch.zeros(0), "f": torch.arange(5, dtype=torch.int8)}
    save_file(tensors, str(tmp_path / "w.safetensors"), metadata={"format": "pt"})
    ck = open_checkpoint(tmp_path / "w.safetensors")
    assert all(torch.equal(ck.get(k), t) for k, t in tensors.items())


@pytest.mark.parametrize("shape", [[0, 2**63, 2**63], [2**62, 0], [0, 2**40, 2**30], [2**31, 0, 7]])
def test_empty_tensor_with_overflowing_dimensions_is_refused_by_the_header_check(tmp_path, shape):
    """A shape with a 0 takes 0 bytes whatever its other dimensions: [0, 2**63, 2**63] and [2**62, 0] passed the
    header check and then crashed the read (int64 overflow in torch's reshape, "array is too big" in NumPy),
    and smaller ones would size per-row counts of 2**31 entries. Refused when the header is read, naming it."""
    f = _raw_safetensors(
        tmp_path / "model.safetensors", {_W: _f32([8], [0, 32]), "q": _f32(shape, [32, 32])}, bytes(32)
    )
    with pytest.raises(CheckpointError, match=r"tensor 'q': shape \[.*\] has no entries, yet its other dim") as err:
        open_checkpoint(tmp_path)
    assert "\n" not in str(err.value) and str(f) in str(err.value)


@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (0,), (2, 0, 3)])
def test_empty_tensors_in_both_checkpoints_are_compared(tmp_path, shape):
    """A tensor of no entries in base and finetuned: a row with 0 entries, 0 changed (shape [0, N] crashed
    `analyze` with "cannot reshape tensor of 0 elements into shape [0, -1]"; [N, 0] worked)."""
    from safetensors.torch import save_file

    sd = {
        _W: torch.randn(8, 4, generator=torch.Generator().manual_seed(0)),
        "model.layers.0.x.weight": torch.zeros(shape),
    }
    for side in ("base", "ft"):
        (tmp_path / side).mkdir()
        save_file(sd, str(tmp_path / side / "model.safetensors"))
    report = analyze_updates(tmp_path / "base", [tmp_path / "ft"], spectra=None, device="cpu").reports[0]
    row = report.tensors.set_index("name").loc["model.layers.0.x.weight"]
    assert (row.numel, row.changed) == (0, 0)


@pytest.mark.parametrize("numpy_on_cpu", [True, False])  # False: the torch pass a GPU takes
@pytest.mark.parametrize("shape", [(0, 4), (0, 2, 3), (5, 0)])
def test_compare_pair_of_empty_tensors_counts_their_rows_and_columns(monkeypatch, numpy_on_cpu, shape):
    """A pair of no entries is viewed as (shape[0], rest) like any other: rows and columns counted, none changed."""
    from subnetviz.analysis import sparsity

    monkeypatch.setattr(sparsity, "_NUMPY_ON_CPU", numpy_on_cpu)
    a = torch.zeros(shape, dtype=torch.bfloat16)
    st = sparsity.compare_pair(a, a.clone(), name="q")
    rest = int(np.prod(shape[1:]))
    assert (st.numel, st.changed) == (0, 0)
    assert list(st.row_counts) == [0] * shape[0] and list(st.col_counts) == [0] * rest
    assert st.mask.shape == shape


@pytest.mark.parametrize("where", ["header", "config.json", "model.safetensors.index.json"])
@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "[1, 2]", "{not json"])
def test_json_a_checkpoint_brings_is_checked(ckpt_zoo, tmp_path, where, text):
    """A safetensors header, config.json or shard index nested too deeply for the parser (RecursionError,
    which no JSONDecodeError handler catches), not an object, or not JSON: one line naming the file. A
    config.json that cannot be read is no longer ignored: it says how tensors are stored (quantization)."""
    folder = shutil.copytree(ckpt_zoo.llama, tmp_path / "l")
    if where == "header":
        f = sorted(folder.glob("model-*.safetensors"))[0]
        f.write_bytes(len(text).to_bytes(8, "little") + text.encode())
    else:
        (folder / where).write_text(text)
    with pytest.raises(CheckpointError, match=r"(JSON nested too deeply|expected a JSON object|not valid JSON)") as e:
        open_checkpoint(folder)
    assert "\n" not in str(e.value) and (f.name if where == "header" else where) in str(e.value)


def test_json_files_are_bounded_before_reading(ckpt_zoo, tmp_path, monkeypatch):
    from subnetviz import config

    folder = shutil.copytree(ckpt_zoo.llama, tmp_path / "l")
    index, cfg = (folder / n for n in ("model.safetensors.index.json", "config.json"))
    for f in (index, cfg):
        size = f.stat().st_size
        monkeypatch.setattr(config, "JSON_FILE_LIMIT", size - 1)
        with pytest.raises(CheckpointError, match=rf"{f.name}[^:]*: {size:,} bytes, more than a checkpoint's JSON"):
            open_checkpoint(folder)
        monkeypatch.setattr(config, "JSON_FILE_LIMIT", size)
        assert open_checkpoint(folder).config
        index.unlink(missing_ok=True)  # the shards are then found in the folder


def test_mapped_reads_equal_safetensors_for_every_stored_dtype(tmp_path):
    """Checkpoint.get reads a safetensors tensor as a view of the mapped file: bit for bit what
    safetensors' own reader gives, for every dtype the headers allow (bf16, fp8, bool, ints), a 0-d and
    an empty tensor; a tensor whose data is not aligned to its item size (a header of odd length) is
    read by safetensors instead (and ``array``, the bytes as a NumPy view, gives None for it); ``populate`` (pages mapped ahead) changes nothing read; and the tensors
    stay usable after the checkpoint is closed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {
        "bf16": torch.randn(5, 7, generator=g).to(torch.bfloat16),
        "f16": torch.randn(3, generator=g).to(torch.float16),
        "f32": torch.randn(2, 3, 4, generator=g),
        "f64": torch.randn(4, generator=g).double(),
        "e4m3": torch.randn(9, generator=g).to(torch.float8_e4m3fn),
        "e5m2": torch.randn(6, generator=g).to(torch.float8_e5m2),
        "flag": torch.rand(10, generator=g) > 0.5,
        "i64": torch.arange(-3, 8),
        "i8": torch.arange(-5, 5, dtype=torch.int8),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    f = tmp_path / "all.safetensors"
    save_file(tensors, str(f))
    ck = open_checkpoint(f)
    with safe_open(str(f), "pt") as ref:
        for name, t in tensors.items():
            got = ck.get(name)
            want = ref.get_tensor(name)
            assert got.dtype == want.dtype == t.dtype and got.shape == want.shape == t.shape, name
            assert got.reshape(-1).view(torch.uint8).tolist() == want.reshape(-1).view(torch.uint8).tolist(), name
    assert ck._maps  # read through the map
    for name, t in tensors.items():  # the same bytes as a NumPy array of a same-width type (the update pass's views)
        view = np.dtype(f"u{t.element_size()}") if t.dtype != torch.bool else np.dtype(np.uint8)
        arr = ck.array(name, view)
        assert arr.dtype == view and arr.shape == tuple(t.shape), name
        assert arr.reshape(-1).view(np.uint8).tolist() == t.reshape(-1).view(torch.uint8).tolist(), name
    for name, t in tensors.items():  # mapping a tensor's pages ahead (update pass) reads, never changes
        ck.populate(name)
        assert ck.get(name).reshape(-1).view(torch.uint8).tolist() == t.reshape(-1).view(torch.uint8).tolist()
    kept = ck.get("bf16")
    ck.close()
    assert torch.equal(kept.float(), tensors["bf16"].float())
    # an odd header length: the data section starts at an odd offset, so 2-byte tensors are not aligned
    header = {"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}
    raw = json.dumps(header).encode()
    raw += b" " * (1 - len(raw) % 2)  # padded to an odd length
    assert len(raw) % 2 == 1
    odd = tmp_path / "odd.safetensors"
    data = torch.tensor([[1.0, -2.0], [3.0, 0.5]], dtype=torch.bfloat16)
    odd.write_bytes(len(raw).to_bytes(8, "little") + raw + data.view(torch.uint8).numpy().tobytes())
    ck_odd = open_checkpoint(odd)
    assert torch.equal(ck_odd.get("w"), data) and ck_odd._handles  # (safetensors' reader copied it)
    assert ck_odd.array("w", np.dtype(np.int16)) is None  # not mapped: the caller reads it
    ck_odd.populate("w")  # not mapped: nothing to do


def test_file_rewritten_after_opening_is_refused(ckpt_zoo, tmp_path):
    """A safetensors file replaced after the checkpoint read its header (another run saving into the
    folder) is refused by name, not read at the old offsets."""
    from safetensors.torch import save_file

    f = tmp_path / "model.safetensors"
    f.write_bytes(ckpt_zoo.single.read_bytes())
    ck = open_checkpoint(f)
    name = ck.names[0]
    save_file({"other": torch.zeros(f.stat().st_size)}, str(f))  # larger: every old offset lies inside it
    with pytest.raises(CheckpointError, match="changed since its header was read") as err:
        ck.get(name)
    assert "model.safetensors" in str(err.value)


def test_index_naming_a_missing_shard(ckpt_zoo, tmp_path):
    folder = shutil.copytree(ckpt_zoo.llama, tmp_path / "l")
    first = sorted(folder.glob("model-*.safetensors"))[0]
    first.unlink()
    with pytest.raises(CheckpointError, match=first.name):
        open_checkpoint(folder)


@pytest.mark.parametrize("entry", [5, None, ["model.safetensors"], {"a": 1}])
def test_index_with_a_shard_entry_that_is_no_file_name_is_one_line(ckpt_zoo, tmp_path, entry):
    """{"weight_map": {"a": 5}} ended in a TypeError traceback (Path(5)) instead of naming the index."""
    folder = shutil.copytree(ckpt_zoo.llama, tmp_path / "l")
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"][next(iter(data["weight_map"]))] = entry
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not a file name") as err:
        open_checkpoint(folder)
    assert "\n" not in str(err.value) and "model.safetensors.index.json" in str(err.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("side", ["finetuned", "both"])
def test_non_finite_weight_names_file_and_tensor(ckpt_zoo, llama_sd, tmp_path, bad, side):
    name = "model.layers.1.mlp.up_proj.weight"
    sd = {k: v.clone() for k, v in llama_sd.items()}
    sd[name][3, 4] = bad
    ft = write_folder(tmp_path / "ft", sd, ckpt_zoo.llama)
    base = write_folder(tmp_path / "base", sd, ckpt_zoo.llama) if side == "both" else ckpt_zoo.llama
    with pytest.raises(NonFiniteError, match="up_proj") as err:
        analyze_updates(base, [ft], spectra=None, device="cpu")
    assert str(tmp_path / ("base" if side == "both" else "ft")) in str(err.value)


# --- alignment -----------------------------------------------------------------------------------------------
def test_model_prefix_on_one_side(ckpt_zoo, llama_sd, tmp_path):
    bare = {k.removeprefix("model."): v for k, v in llama_sd.items()}
    ft = write_folder(tmp_path / "bare", bare)
    al = align([open_checkpoint(ckpt_zoo.llama), open_checkpoint(ft)])
    assert len(al.tensors) == len(llama_sd) and not any(al.only_in.values())
    pair = {t.names for t in al.tensors}
    assert ("model.layers.0.self_attn.q_proj.weight", "layers.0.self_attn.q_proj.weight") in pair
    rep = analyze_updates(ckpt_zoo.llama, [ft], spectra=None, device="cpu").reports[0]
    assert rep.changed == 0 and rep.numel == sum(t.numel() for t in llama_sd.values())


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory):
    return make_llama(tmp_path_factory.mktemp("tied") / "base", tie=True)


@pytest.mark.parametrize("stored", ["finetuned", "base", "both"])
def test_tied_head_counted_once(tied_llama, tmp_path, stored):
    sd = read_state_dict(tied_llama)
    assert "lm_head.weight" not in sd  # save_pretrained drops the tied copy
    with_head = {**sd, "lm_head.weight": sd["model.embed_tokens.weight"].clone()}
    ft = write_folder(tmp_path / "ft", with_head if stored != "base" else sd, tied_llama)
    base = write_folder(tmp_path / "b", with_head if stored != "finetuned" else sd, tied_llama)
    al = align([open_checkpoint(base), open_checkpoint(ft)])
    keys = [t.key for t in al.tensors]
    assert "lm_head.weight" not in keys and "embed_tokens.weight" in keys
    assert not any(al.only_in.values())
    assert any("tied" in n for n in al.notes)
    rep = analyze_updates(base, [ft], spectra=None, device="cpu").reports[0]
    assert rep.numel == sum(t.numel() for t in sd.values())  # the embedding once


def test_a_head_a_finetune_untied_is_compared_with_the_bases_tied_embedding(tied_llama, tmp_path):
    """A finetune that untied its head (tie_word_embeddings false, lm_head stored: a full finetune that untied it,
    or a PEFT adapter that trained a copy of it) against a base that ties it: the head is compared with the
    base's embedding, which the base computes its logits with. It was listed as only in the finetune, its change
    counted nowhere."""
    sd = read_state_dict(tied_llama)
    emb = sd["model.embed_tokens.weight"]
    head = emb.clone()
    head[3, :5] = bf16_step(head[3, :5], 1)  # 5 entries of the head moved, the embedding not
    ft = write_folder(tmp_path / "ft", {**sd, "lm_head.weight": head}, tied_llama, tie_word_embeddings=False)
    for base_side, ft_side in ((tied_llama, ft), (ft, tied_llama)):  # (and the other way round)
        al = align([open_checkpoint(base_side), open_checkpoint(ft_side)])
        pair = {t.key: t.names for t in al.tensors}
        assert set(pair["lm_head.weight"]) == {"lm_head.weight", "model.embed_tokens.weight"}
        assert not any(al.only_in.values()) and any("compared with that embedding" in n for n in al.notes)
    rep = analyze_updates(tied_llama, [ft], spectra=None, device="cpu").reports[0]
    t = rep.tensors.set_index("key")
    assert t.loc["lm_head.weight", "changed"] == 5 and t.loc["embed_tokens.weight", "changed"] == 0
    assert rep.changed == 5


def test_resized_vocabulary_compares_shared_rows(ckpt_zoo, llama_sd, tmp_path):
    sd = {k: v.clone() for k, v in llama_sd.items()}
    extra = torch.randn(3, 16).to(torch.bfloat16)
    emb, head = "model.embed_tokens.weight", "lm_head.weight"
    sd[emb] = torch.cat([sd[emb], extra])
    sd[head] = torch.cat([sd[head], extra])
    sd[emb][5, :4] = bf16_step(sd[emb][5, :4], 1)  # 4 changes in the shared rows
    ft = write_folder(tmp_path / "ft", sd, ckpt_zoo.llama, vocab_size=VOCAB + 3)
    base_ck, ft_ck = open_checkpoint(ckpt_zoo.llama), open_checkpoint(ft)
    al = align([base_ck, ft_ck])
    by_key = {t.key: t for t in al.tensors}
    for key in ("embed_tokens.weight", "lm_head.weight"):
        assert by_key[key].rows == VOCAB and by_key[key].extra_rows == (0, 3) and by_key[key].shape == (VOCAB, 16)
        assert read_aligned(ft_ck, by_key[key], 1).shape == (VOCAB, 16)
    assert sum("vocabulary resized" in line and "[0, 3]" in line for line in al.report()) == 2
    an = analyze_updates(ckpt_zoo.llama, [ft], spectra=None, device="cpu")
    rep = an.reports[0]
    assert rep.changed == 4
    assert int(rep.tensors.set_index("key").loc["embed_tokens.weight", "numel"]) == VOCAB * 16
    assert any("vocabulary resized" in n for n in rep.notes)


def test_tensor_on_one_side_only_is_reported(ckpt_zoo, llama_sd, tmp_path):
    sd = {k: v.clone() for k, v in llama_sd.items()}
    gone = sd.pop("model.layers.1.mlp.gate_proj.weight")
    sd["model.layers.1.mlp.adapter.weight"] = torch.zeros(4, 4, dtype=torch.bfloat16)
    ft = write_folder(tmp_path / "ft", sd, ckpt_zoo.llama)
    al = align([open_checkpoint(ckpt_zoo.llama), open_checkpoint(ft)])
    assert al.only_in == {0: ["model.layers.1.mlp.gate_proj.weight"], 1: ["model.layers.1.mlp.adapter.weight"]}
    lines = " ".join(al.report())
    assert "gate_proj" in lines and "adapter" in lines
    rep = analyze_updates(ckpt_zoo.llama, [ft], spectra=None, device="cpu").reports[0]
    assert rep.numel == sum(t.numel() for t in llama_sd.values()) - gone.numel()
    assert any("adapter" in n for n in rep.notes) and any("gate_proj" in n for n in rep.notes)


def test_shape_mismatch_outside_the_vocabulary(ckpt_zoo, llama_sd, tmp_path):
    sd = {k: v.clone() for k, v in llama_sd.items()}
    name = "model.layers.0.mlp.up_proj.weight"
    sd[name] = torch.zeros(33, 16, dtype=torch.bfloat16)
    ft = write_folder(tmp_path / "ft", sd, ckpt_zoo.llama)
    with pytest.raises(AlignmentError, match="up_proj") as err:
        analyze_updates(ckpt_zoo.llama, [ft], spectra=None, device="cpu")
    assert "(32, 16)" in str(err.value) and "(33, 16)" in str(err.value)


def test_nothing_in_common_and_too_few(ckpt_zoo):
    gpt2, bert = open_checkpoint(ckpt_zoo.gpt2), open_checkpoint(ckpt_zoo.bert)
    with pytest.raises(AlignmentError, match="no tensor names in common"):
        align([gpt2, bert])
    with pytest.raises(AlignmentError):
        align([gpt2])


def test_bf16_base_against_fp32_finetuned(ckpt_zoo, llama_sd, tmp_path):
    sd = {k: v.float() for k, v in llama_sd.items()}  # the same numbers, stored wider
    sd["model.norm.weight"][:2] += 1e-3
    ft = write_folder(tmp_path / "ft", sd, ckpt_zoo.llama)
    assert open_checkpoint(ft).dtypes == {"float32": sum(t.numel() for t in sd.values())}
    rep = analyze_updates(ckpt_zoo.llama, [ft], spectra=None, device="cpu").reports[0]
    assert rep.changed == 2 and set(rep.tensors["dtype"]) == {"float32"}


def test_every_error_is_a_subnetviz_error():
    for cls in (CheckpointError, NotCachedError, AlignmentError, NonFiniteError):
        assert issubclass(cls, SubnetvizError)


def test_trainer_folder_reads_only_the_model_files(ckpt_zoo, llama_sd, tmp_path):
    """A trainer checkpoint also holds optimizer.pt & co. and maybe a mask file: only the model is read."""
    st_dir = write_folder(tmp_path / "st", llama_sd, ckpt_zoo.llama)
    from subnetviz.masks import MaskSet, save_mask_set

    save_mask_set(st_dir / "update_mask.safetensors", MaskSet({"x": torch.ones(3, dtype=torch.bool)}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    torch.save(llama_sd, bin_dir / "pytorch_model.bin")
    for d in (st_dir, bin_dir):
        torch.save({"state": {}, "param_groups": [{"lr": 1e-5}]}, d / "optimizer.pt")
        torch.save({"last_epoch": 3}, d / "scheduler.pt")
        _same_tensors(open_checkpoint(d), llama_sd)


def test_old_format_bin_is_read(llama_sd, tmp_path):
    f = tmp_path / "old.bin"
    torch.save(llama_sd, f, _use_new_zipfile_serialization=False)
    _same_tensors(open_checkpoint(f), llama_sd)


def test_old_format_bin_is_read_whole_only_where_it_fits(llama_sd, tmp_path, monkeypatch):
    """A pre-1.6 file cannot be mapped: it is read into memory whole, so its size is checked against the
    memory available first (a ConfigError naming it, not an out-of-memory kill of the server)."""
    from subnetviz import config
    from subnetviz.errors import ConfigError

    f = tmp_path / "old.bin"
    torch.save(llama_sd, f, _use_new_zipfile_serialization=False)
    monkeypatch.setattr(config, "available_memory_bytes", lambda: f.stat().st_size)
    with pytest.raises(ConfigError, match=r"old\.bin \(a pre-1\.6 torch\.save file, read whole\) needs about"):
        open_checkpoint(f)
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 2 * f.stat().st_size)
    _same_tensors(open_checkpoint(f), llama_sd)


def test_old_format_bin_declaring_more_than_it_stores_is_refused(tmp_path):
    """A pre-1.6 (non-zip) torch.save file declares each storage's size in its pickle; torch allocates that
    size (untouched, so nothing resident) and then reads the stored size, which must match: a file that
    declares 2·10^9 floats for 123 457 stored ones is one error naming the file, nothing is kept."""
    import struct

    f = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(123457)}, f, _use_new_zipfile_serialization=False)
    raw = f.read_bytes()
    declared = b"J" + struct.pack("<i", 123457)  # the storage's size: the first of the two in the pickle
    f.write_bytes(raw.replace(declared, b"J" + struct.pack("<i", 2 * 10**9), 1))
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: refused or unreadable legacy checkpoint"):
        open_checkpoint(f)


def test_bin_with_a_view_bigger_than_its_storage_is_refused(llama_sd, tmp_path):
    """A .bin someone else saved whose weight is a stride-0 view (one stored row read as 10^9 rows): every
    full-size temporary of the comparison would allocate it. Refused at opening, naming the tensor; tied
    weights (two names over one storage) still read."""
    name = next(n for n, t in llama_sd.items() if t.ndim == 2)
    sd = dict(llama_sd)
    sd[name] = llama_sd[name][:1].expand(10**9, llama_sd[name].shape[1])
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' of shape \(1000000000, \d+\) is a view larger"):
        open_checkpoint(tmp_path)
    tied = dict(llama_sd, **{"extra.weight": llama_sd[name]})
    torch.save(tied, tmp_path / "pytorch_model.bin")
    assert open_checkpoint(tmp_path).names


def test_resized_bert_vocabulary_includes_the_decoder_bias(ckpt_zoo, tmp_path):
    sd = read_state_dict(ckpt_zoo.bert)
    for name in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias"):
        sd[name] = torch.cat([sd[name], torch.zeros(2, *sd[name].shape[1:], dtype=sd[name].dtype)])
    ft = write_folder(tmp_path / "ft", sd, ckpt_zoo.bert, vocab_size=VOCAB + 2)
    al = align([open_checkpoint(ckpt_zoo.bert), open_checkpoint(ft)])
    resized = {t.key: t.extra_rows for t in al.tensors if t.rows is not None}
    assert resized == {"embeddings.word_embeddings.weight": (0, 2), "cls.predictions.bias": (0, 2)}
