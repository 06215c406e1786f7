"""Files a stranger brings (an uploaded mask, a checkpoint folder named in a shared URL, its JSON files): each
one the readers refuse in one line naming the file, never a crash of the server (a segfault kills every
visitor's session), a traceback, or masks held far beyond the file's size.

The loads that crashed the process (SIGSEGV) run in a child process, so a regression fails its test instead of
ending the test session."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from subnetviz.errors import CheckpointError, MaskError, UnsafePickleError

ROOT = Path(__file__).resolve().parents[2]

# A dict keyed by a tuple 150,000 deep: hashing the key recursed in C past the stack (SIGSEGV).
DEEP = b"\x80\x02}" + b")" + b"\x85" * 150_000 + b"K\x01s."
EMPTY_DICT = b"\x80\x02}q\x00."


def _zip(path: Path, records: list[tuple[str, bytes]]) -> Path:
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        warnings.simplefilter("ignore")  # a name written twice, on purpose
        for name, data in records:
            z.writestr(name, data)
    return path


def _child(code: str, *args: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (its own process: a crash is its return code, not this session's end)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )


def _one_line_refusal(done: subprocess.CompletedProcess, says: str) -> None:
    assert done.returncode == 2, f"rc {done.returncode} (-11: SIGSEGV): {done.stderr[-500:]}"
    assert says in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr[-500:]


_MASK_INFO = (
    "import sys\nfrom subnetviz.errors import SubnetvizError\nfrom subnetviz.masks import import_mask\n"
    "try:\n    import_mask(sys.argv[1])\nexcept SubnetvizError as exc:\n    print(exc, file=sys.stderr)\n"
    "    sys.exit(2)\n"
)
_OPEN_CHECKPOINT = (
    "import sys\nfrom subnetviz.errors import SubnetvizError\nfrom subnetviz.checkpoints import open_checkpoint\n"
    "try:\n    open_checkpoint(sys.argv[1])\nexcept SubnetvizError as exc:\n    print(exc, file=sys.stderr)\n"
    "    sys.exit(2)\n"
)


# --- 1. an uploaded .pt mask: the pickle walked is the one torch.load unpickles --------------------------------


@pytest.mark.parametrize(
    "records, says",
    [
        # torch reads "<first record's folder>/data.pkl" = a/data.pkl; the walk read the first "*/data.pkl"
        ([("a/x/data.pkl", EMPTY_DICT), ("a/data.pkl", DEEP), ("a/version", b"3\n")], "2 records named data.pkl"),
        ([("a/version", b"3\n"), ("b/data.pkl", EMPTY_DICT), ("a/data.pkl", DEEP)], "2 records named data.pkl"),
        ([("a/data.pkl", EMPTY_DICT), ("a/data.pkl", DEEP), ("a/version", b"3\n")], "2 records named data.pkl"),
        # torch's reader matches record names without regard to case: "DATA.PKL" is its data.pkl
        ([("a/version", b"3\n"), ("a/DATA.PKL", DEEP)], "nests objects more than 100 deep"),
        ([("a/data.pkl", EMPTY_DICT), ("a/Data.pkl", DEEP), ("a/version", b"3\n")], "2 records named data.pkl"),
        # another .pkl record is walked too
        ([("a/data.pkl", EMPTY_DICT), ("a/constants.pkl", DEEP), ("a/version", b"3\n")], "nests objects"),
    ],
    ids=["nested-folder", "second-folder", "same-name-twice", "upper-case", "other-case-twice", "other-pkl"],
)
def test_a_pt_mask_is_walked_where_torch_reads_its_pickle(tmp_path, records, says):
    path = _zip(tmp_path / "mask.pt", records)
    _one_line_refusal(_child(_MASK_INFO, str(path)), says)


def test_a_pt_mask_torch_saved_still_imports(tmp_path):
    from subnetviz.masks import import_mask

    path = tmp_path / "m.pt"
    torch.save({"w": torch.eye(3, dtype=torch.bool), "note": "kept"}, path)
    ms = import_mask(path)
    assert torch.equal(ms.masks["w"], torch.eye(3, dtype=torch.bool)) and ms.metadata["note"] == "kept"


# --- 2. a legacy checkpoint (pytorch_model.bin / .pt): the same check before torch.load ------------------------


def test_a_bin_checkpoint_with_a_deep_pickle_is_refused_not_a_crash(tmp_path):
    folder = tmp_path / "deepbin"
    folder.mkdir()
    records = [("archive/data.pkl", DEEP), ("archive/version", b"3\n"), ("archive/byteorder", b"little")]
    _zip(folder / "pytorch_model.bin", records)
    _one_line_refusal(_child(_OPEN_CHECKPOINT, str(folder)), "nests objects more than 100 deep")


def test_a_pre_zip_format_checkpoint_with_a_deep_pickle_is_refused_not_a_crash(tmp_path):
    """Not a zip archive: torch.load reads the pre-1.6 format, a run of pickles from the file's start."""
    path = tmp_path / "old.bin"
    path.write_bytes(DEEP + b"\0" * 64)
    _one_line_refusal(_child(_OPEN_CHECKPOINT, str(path)), "nests objects more than 100 deep")


def test_a_bin_checkpoint_with_a_compressed_record_is_refused_before_reading(tmp_path):
    from subnetviz.checkpoints import open_checkpoint

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4096)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    folder = tmp_path / "bomb"
    folder.mkdir()
    with zipfile.ZipFile(folder / "pytorch_model.bin", "w", compression=zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info.filename))
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: record '.*' is compressed") as err:
        open_checkpoint(folder)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "pre-1.6"])
def test_legacy_checkpoints_someone_saved_still_open(tmp_path, zipped):
    from subnetviz.checkpoints import open_checkpoint

    sd = {"model.layers.0.mlp.up_proj.weight": torch.randn(8, 4), "model.norm.weight": torch.ones(4)}
    path = tmp_path / "pytorch_model.bin"
    torch.save(sd, path, _use_new_zipfile_serialization=zipped)
    ck = open_checkpoint(path)
    assert all(torch.equal(ck.get(n), t) for n, t in sd.items())


@pytest.mark.parametrize("key, says", [("w\udc80", r"tensor name 'w\\udc80' is not valid UTF-8"), (7, "not a string")])
def test_a_bin_checkpoint_whose_names_are_no_text_is_refused(tmp_path, key, says):
    from subnetviz.checkpoints import open_checkpoint

    path = tmp_path / "pytorch_model.bin"
    torch.save({key: torch.ones(2), "ok": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match=says):
        open_checkpoint(path)


# --- 3. a bigram pickle: what its entries hold, counted per entry, and what BUILD fills ------------------------


def test_one_array_shared_by_many_entries_is_refused_before_copying(tmp_path):
    """Pickle writes one array once and refers to it from every entry (the memo): 64 KiB in the file, 4 MiB of
    masks once each entry is copied (a 1 MB file made 300 masks of 315 M entries)."""
    from subnetviz.masks import import_mask, pickle_budget

    arr = np.zeros(1 << 16, dtype=bool)
    path = tmp_path / "shared.pickle"
    path.write_bytes(pickle.dumps({f"w{i}": arr for i in range(64)}, protocol=4))
    assert 64 * arr.nbytes > pickle_budget(path.stat().st_size)
    with pytest.raises(UnsafePickleError, match=r"shared\.pickle: its entries hold 4,194,304 bytes .*before copying"):
        import_mask(path)


class _Filled:
    """An array as numpy pickles one (an empty array rebuilt, then BUILD fills it), its bytes one object that the
    pickle writes once: every BUILD copies them into an array of its own."""

    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, (0,), b"b"), (1, (len(self.data),), np.dtype(bool), False, self.data)


def test_arrays_filled_by_build_are_charged_to_the_budget(tmp_path):
    from subnetviz.masks import import_mask

    shared = bytes(1 << 16)
    payload = {"w": np.ones(3, dtype=bool), "orig_model_name": [_Filled(shared) for _ in range(64)]}
    path = tmp_path / "filled.pickle"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    assert path.stat().st_size < 100_000  # 64 arrays of 64 KiB from one bytes object
    with pytest.raises(UnsafePickleError, match=r"filled\.pickle: pickle asks to allocate 65,536 bytes"):
        import_mask(path)
    # numpy's own pickles, filled the same way, still import (each array's bytes charged once)
    path.write_bytes(pickle.dumps({"w": np.eye(64, dtype=bool), "orig_model_name": "gpt2"}, protocol=2))
    assert torch.equal(import_mask(path).masks["w"], torch.eye(64, dtype=torch.bool))


@pytest.mark.parametrize("fmt", ["pickle", "pt"])
def test_mask_names_that_are_no_text_are_refused(tmp_path, fmt):
    from subnetviz.masks import import_mask

    path = tmp_path / f"m.{fmt}"
    if fmt == "pickle":
        path.write_bytes(pickle.dumps({"w\udc80": np.ones(3, dtype=bool)}))
    else:
        torch.save({"w\udc80": torch.ones(3, dtype=torch.bool)}, path)
    with pytest.raises(MaskError, match=r"m\.(pickle|pt): entry 'w\\udc80' is not valid UTF-8"):
        import_mask(path)


# --- 4. uploads: stored under 128 bits of their hash, reused only for the same bytes ---------------------------


def _mask_bytes(tmp_path: Path, seed: int) -> bytes:
    from subnetviz.masks import MaskSet, save_mask_set

    g = torch.Generator().manual_seed(seed)
    path = save_mask_set(tmp_path / f"src{seed}.safetensors", MaskSet({"w": torch.rand(8, 8, generator=g) < 0.3}))
    return path.read_bytes()


def test_a_file_planted_under_an_uploads_name_is_not_taken_for_it(tmp_path, monkeypatch):
    """An uploader who finds bytes whose SHA-256 begins as a colleague's file does (8 hex digits: 2^32 hashes,
    minutes) uploaded them first: the colleague's upload was then "stored" as the planted masks."""
    from subnetviz import selection
    from subnetviz.masks import MaskSet, load_mask_set, save_mask_set

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    victim = _mask_bytes(tmp_path, 0)
    digest = hashlib.sha256(victim).hexdigest()
    planted = selection.stored_mask_path("released.safetensors", digest)
    save_mask_set(planted, MaskSet({"w": torch.ones(8, 8, dtype=torch.bool)}, {"upload_sha256": "0" * 64}))
    stored = selection.save_upload("released.safetensors", victim)
    want = load_mask_set(tmp_path / "src0.safetensors").masks["w"]
    assert torch.equal(load_mask_set(stored).masks["w"], want)
    assert stored.name == f"released-{digest[:32]}.safetensors"
    mtime = stored.stat().st_mtime_ns
    assert selection.save_upload("released.safetensors", io.BytesIO(victim)) == stored  # the same bytes: kept
    assert stored.stat().st_mtime_ns == mtime
    # an upload whose own provenance claims the colleague's digest is stored with its own
    claims = save_mask_set(tmp_path / "claims.safetensors", MaskSet({"w": want}, {"upload_sha256": digest}))
    other = claims.read_bytes()
    again = selection.save_upload("released.safetensors", other)
    assert again != stored and load_mask_set(again).metadata["upload_sha256"] == hashlib.sha256(other).hexdigest()


def test_a_kept_copy_is_reused_only_when_its_bytes_are_the_masks(tmp_path, monkeypatch):
    from subnetviz import config, selection

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    src = config.cache_dir() / "analysis" / "mask.safetensors"
    src.parent.mkdir(parents=True)
    src.write_bytes(_mask_bytes(tmp_path, 0))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    planted = selection.stored_mask_path("update-mask", digest)
    planted.write_bytes(_mask_bytes(tmp_path, 1))
    kept = selection.kept_mask(src, "update-mask")
    assert Path(kept) == planted and planted.read_bytes() == src.read_bytes()
    assert planted.name.endswith(f"-{digest[:32]}.safetensors")


# --- 5. JSON with an integer of more digits than Python converts ------------------------------------------------


def test_json_with_a_huge_integer_is_one_line_naming_the_file(tmp_path):
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.config import parse_json, read_json

    big = "1" * 5000
    with pytest.raises(MaskError, match=r"^mask\.json: holds a number of more than 4,300 digits"):
        parse_json('{"n": ' + big + "}", "mask.json", MaskError)
    (tmp_path / "config.json").write_text('{"hidden_size": ' + big + "}")
    with pytest.raises(CheckpointError, match=r"config\.json: holds a number of more than"):
        read_json(tmp_path / "config.json", CheckpointError)
    folder = tmp_path / "model"
    folder.mkdir()
    header = ('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + big + "}}").encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt safetensors header: holds a number"):
        open_checkpoint(folder)


# --- 6. adapter_config.json numbers beyond any float ------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("r", "1" + "0" * 400, r"adapter_config\.json: r is '1000.*'; expected a rank >= 1"),
        ("r", str(2**31 + 1), r"adapter_config\.json: r is '2147483649'; expected a rank >= 1 \(at most 2\*\*31\)"),
        ("lora_alpha", "-1" + "0" * 400, r"adapter_config\.json: lora_alpha is '-1000.*'; expected a number"),
        ("rank_pattern", '{"up_proj": 1' + "0" * 400 + "}", r"rank_pattern\['up_proj'\] is '1000"),
        ("alpha_pattern", '{"up_proj": 1' + "0" * 400 + "}", r"alpha_pattern\['up_proj'\] is '1000"),
    ],
)
def test_adapter_numbers_beyond_any_float_are_refused_by_key(tmp_path, key, value, says):
    from safetensors.torch import save_file as save_torch

    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    base = tmp_path / "base"
    base.mkdir()
    save_torch({"model.layers.0.mlp.up_proj.weight": torch.zeros(4, 4)}, str(base / "model.safetensors"))
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    prefix = "base_model.model.model.layers.0.mlp.up_proj"
    lora = {f"{prefix}.lora_A.weight": torch.zeros(2, 4), f"{prefix}.lora_B.weight": torch.zeros(4, 2)}
    save_torch(lora, str(adapter / "adapter_model.safetensors"))
    cfg = '{"peft_type":"LORA","r":2,"lora_alpha":4,"target_modules":["up_proj"],"' + key + '":' + value + "}"
    (adapter / "adapter_config.json").write_text(cfg)
    with pytest.raises(CheckpointError, match=says) as err:
        open_finetune(str(adapter), open_checkpoint(base))
    assert "\n" not in str(err.value)


# --- 7. tensor names that are no UTF-8 text ---------------------------------------------------------------------


def _aligned_safetensors(path: Path, names: list[str], metadata: dict | None = None) -> Path:
    header, off = {}, 0
    for name in names:
        header[name] = {"dtype": "F32", "shape": [2], "data_offsets": [off, off + 8]}
        off += 8
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()  # (json writes "\udc80" as its escape)
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * off)
    return path


def test_tensor_names_with_a_lone_surrogate_are_refused_by_name(tmp_path):
    from subnetviz.checkpoints import open_checkpoint

    path = _aligned_safetensors(tmp_path / "m" / "model.safetensors", ["ok", "model.up_proj.weight\udc80"])
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: tensor name 'model\.up_proj\.weight\\udc80' is not"
    ):
        open_checkpoint(path)
    path = _aligned_safetensors(tmp_path / "n" / "model.safetensors", ["ok"], {"format": "pt\udc80"})
    with pytest.raises(CheckpointError, match=r"__metadata__\['format'\] 'pt\\udc80' is not valid UTF-8"):
        open_checkpoint(path)
    save_file({"model.layers.0.mlp.up_proj.weight": np.zeros(2, np.float32)}, str(tmp_path / "fine.safetensors"))
    assert open_checkpoint(tmp_path / "fine.safetensors").names == ["model.layers.0.mlp.up_proj.weight"]


# --- 8a. a shard index entry no file system can look up ----------------------------------------------------------


@pytest.mark.parametrize("entry", ["a" * 300 + ".safetensors", "a/" * 2500 + "x.safetensors"], ids=["name", "path"])
def test_a_shard_entry_too_long_to_look_up_is_one_line_without_the_server_path(tmp_path, entry):
    from subnetviz.checkpoints import open_checkpoint

    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": entry}}))
    with pytest.raises(CheckpointError, match=r"shard entry #1 \('a.*' \([\d,]+ characters\)\) names no file") as err:
        open_checkpoint(tmp_path)
    assert str(tmp_path) not in str(err.value) and "\n" not in str(err.value)
