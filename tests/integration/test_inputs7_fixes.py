"""Bad inputs, seventh pass (review inputs7): each finding's fix, proved on files built here.

1. ``report`` (``read_analysis``) on a folder without its manifest (as a refusal advises deleting it) opened whatever
   stood there: a named pipe ``tensors.csv`` blocked it for good, a link to ``/dev/zero`` grew the CSV parser until
   memory ran out. Now a file that is not a regular file is refused in one line before any is opened, and the
   files' sizes are bounded before they are read.
2. A 117 KB ``.npz`` upload whose 0-d string held 30 million characters stored a 30 MB mask file past
   SUBNETVIZ_UPLOADS_GB: the room check counted the packed bits, not the header's metadata. Now the importers keep
   texts of a few KB (the others left out, said), and the room check counts every byte the stored file will hold.
3. config.json's ``architectures`` was never checked: ``{"a": 1}`` and ``"LlamaForCausalLM"`` were shown as the
   model's architecture ``{'a': 1}`` and ``L``, and the table's Parquet export failed without a word. Now anything
   but a list of strings (or none) is refused in one line naming the file, as ``model_type`` is.
4. A named pipe or a device given as a mask, pickle, corpus or prompt file was "no such … file"; now it is named as
   what it is, and never opened.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from subnetviz import config, selection
from subnetviz.errors import CheckpointError, ConfigError, MaskError

pytestmark = pytest.mark.timeout(300)

MiB = 1 << 20


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def _checkpoint(path: Path, tensors: dict[str, torch.Tensor], **cfg) -> str:
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": False, **cfg}))
    return str(path)


def _call_unblocked(fn, fifo: Path, seconds: float = 30):
    """``fn()`` in a thread; where it is still running after ``seconds`` (blocked opening the named pipe ``fifo``),
    a writer opens the pipe and closes it (the reader sees its end) and the test fails: it hung."""
    result: dict = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        for _ in range(20):  # (every open of the pipe for reading waits for a writer: release each)
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
            t.join(0.5)
            if not t.is_alive():
                break
        pytest.fail(f"blocked on the named pipe {fifo.name}: it was opened for reading")
    if "error" in result:
        raise result["error"]
    return result.get("value")


# --- 1. an analysis folder's files that are not regular files, or too large ---------------------------------------
@pytest.fixture(scope="module")
def analysis_dir(tmp_path_factory) -> Path:
    """A real analysis (two finetunes of a planted base, so its overlap tables are written too) with its manifest."""
    from subnetviz.analysis.updates import analyze_updates, write_analysis

    root = tmp_path_factory.mktemp("inputs7-analysis")
    w = torch.zeros(8, 8, dtype=torch.bfloat16)
    one, two = w.clone(), w.clone()
    one[0, :3] = 1
    two[0, 1:5] = 1
    name = "model.layers.0.mlp.up_proj.weight"
    base = _checkpoint(root / "base", {name: w})
    fts = [_checkpoint(root / n, {name: t}) for n, t in (("one", one), ("two", two))]
    return write_analysis(analyze_updates(base, fts, labels=["one", "two"]), root / "out")


def _copy_without_manifest(src: Path, dst: Path) -> Path:
    from subnetviz.cache import MANIFEST

    shutil.copytree(src, dst)
    (dst / MANIFEST).unlink()
    return dst


def test_the_analysis_folder_reads_back_as_written(analysis_dir, tmp_path):
    """The checks refuse nothing `analyze` writes, with its manifest or without it."""
    from subnetviz.analysis.updates import read_analysis

    for folder in (analysis_dir, _copy_without_manifest(analysis_dir, tmp_path / "copy")):
        a = read_analysis(folder)
        assert a.labels == ["one", "two"] and [r.changed for r in a.reports] == [3, 4]
    assert (analysis_dir / "overlap_pairwise.csv").is_file()  # (read by the report: checked as well)


@pytest.mark.parametrize("name", ["tensors.csv", "summary.json", "row_col.npz", "overlap_pairwise.csv"])
def test_a_named_pipe_in_an_analysis_folder_is_refused_not_opened(analysis_dir, tmp_path, name):
    """A named pipe in place of a file `read_analysis` (or the report) reads, in a folder without its manifest:
    refused in one line naming the file and saying what it is; nothing blocks."""
    from subnetviz.analysis.updates import read_analysis
    from subnetviz.report.dashboard import analysis_report

    folder = _copy_without_manifest(analysis_dir, tmp_path / "fifo")
    (folder / name).unlink()
    os.mkfifo(folder / name)
    for call in (lambda: read_analysis(folder), lambda: analysis_report(folder, tmp_path / "r.html")):
        with pytest.raises(ConfigError) as err:
            _call_unblocked(call, folder / name)
        text = _one_line(err)
        assert text.startswith(f"{folder / name}: a named pipe (FIFO), not a regular file"), text
    assert not (tmp_path / "r.html").exists()


def test_a_named_pipe_manifest_is_refused_not_opened(analysis_dir, tmp_path):
    """The manifest itself (read first, to verify the folder) a named pipe: refused, not opened."""
    from subnetviz.analysis.updates import read_analysis
    from subnetviz.cache import MANIFEST

    folder = _copy_without_manifest(analysis_dir, tmp_path / "fifo")
    os.mkfifo(folder / MANIFEST)
    with pytest.raises(ConfigError) as err:
        _call_unblocked(lambda: read_analysis(folder), folder / MANIFEST)
    assert "a named pipe (FIFO), not a regular file" in _one_line(err)


def test_a_device_in_an_analysis_folder_is_refused_not_read(analysis_dir, tmp_path, monkeypatch):
    """tensors.csv a link to /dev/zero: refused in one line as a character device, and the CSV reader never
    called (it read /dev/zero until memory ran out)."""
    from subnetviz.analysis import updates

    def never(path, **kwargs):
        if config.not_a_file(path):
            raise AssertionError(f"read {path}, which is no regular file")
        return updates_read_frame(path, **kwargs)

    updates_read_frame = updates.read_frame
    monkeypatch.setattr(updates, "read_frame", never)
    folder = _copy_without_manifest(analysis_dir, tmp_path / "zero")
    (folder / "tensors.csv").unlink()
    (folder / "tensors.csv").symlink_to("/dev/zero")
    with pytest.raises(ConfigError) as err:
        updates.read_analysis(folder)
    assert _one_line(err) == f"{folder / 'tensors.csv'}: a character device, not a regular file as `analyze` " + (
        "writes it; refused before reading."
    )


def test_an_analysis_file_too_large_is_refused_before_reading(analysis_dir, tmp_path, monkeypatch):
    """A table past the limit on one, a JSON file past config.JSON_FILE_LIMIT, and tables that together would hold
    more than the memory available: each refused in one line before anything is parsed."""
    from subnetviz.analysis import updates

    folder = _copy_without_manifest(analysis_dir, tmp_path / "big")
    size = (folder / "tensors.csv").stat().st_size
    monkeypatch.setattr(updates, "TABLE_FILE_LIMIT", size - 1)
    with pytest.raises(ConfigError) as err:
        updates.read_analysis(folder)
    assert _one_line(err) == (
        f"{folder / 'tensors.csv'}: {size:,} bytes, more than `analyze` writes there ({size - 1:,}); refused before "
        "reading."
    )
    monkeypatch.undo()

    summary = (folder / "summary.json").stat().st_size
    monkeypatch.setattr(config, "JSON_FILE_LIMIT", summary - 1)
    with pytest.raises(ConfigError, match=r"summary\.json: .* bytes, more than `analyze` writes there"):
        updates.read_analysis(folder)
    monkeypatch.undo()

    monkeypatch.setattr(config, "available_memory_bytes", lambda: 1000)
    with pytest.raises(ConfigError) as err:
        updates.read_analysis(folder)
    assert _one_line(err).startswith(f"Reading the tables of {folder} needs about")


# --- 2. metadata texts of imported masks, and the uploads' room -----------------------------------------------------
@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh home, which is the only root, with no limit set by the environment."""
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path / "home"))
    for var in ("SUBNETVIZ_UPLOADS_GB", "SUBNETVIZ_MAX_UPLOAD_MB"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


def _npz_with_note(chars: int) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(
        buf, **{"model.layers.0.mlp.down_proj.weight": np.ones((96, 384), bool), "note": np.array("y" * chars)}
    )
    return buf.getvalue()


def test_an_npz_upload_of_a_long_text_stores_no_more_than_its_limit(home, monkeypatch):
    """The review's upload (a deflated 0-d string of 3 million characters, a 1 MiB budget): stored without the
    text, which the provenance names as left out; the uploads stay within their budget."""
    from subnetviz.masks import LEFT_OUT_KEY, load_mask_set

    monkeypatch.setenv("SUBNETVIZ_UPLOADS_GB", str(1 / 1024))
    data = _npz_with_note(3_000_000)
    assert len(data) < 64 * 1024
    stored = selection.save_upload("notes.npz", data)
    assert stored.stat().st_size < 64 * 1024 and selection.uploads_bytes() <= config.uploads_limit_bytes()
    meta = load_mask_set(stored, packed=True).metadata
    assert "note" not in meta and "'note' (3,000,000 characters)" in meta[LEFT_OUT_KEY], meta


@pytest.mark.parametrize("fmt", ["npz", "pt", "safetensors"])
def test_imported_texts_are_kept_within_their_limits(tmp_path, fmt):
    """Each importer (.npz 0-d strings, torch.save strings, another tool's safetensors header) keeps the short texts
    as they are, and leaves out one too long and those past the total, saying which."""
    from subnetviz.masks import LEFT_OUT_KEY, METADATA_TEXT_LIMIT, METADATA_TOTAL_LIMIT, import_mask

    short = {f"k{i:03d}": "s" * 1000 for i in range(METADATA_TOTAL_LIMIT // 1004 + 8)}
    texts = {"model_name": "acme/x", "long": "L" * (METADATA_TEXT_LIMIT + 1), **short}
    mask = np.array([[True, False], [False, True]])
    path = tmp_path / f"m.{fmt}"
    if fmt == "npz":
        np.savez(path, w=mask, **{k: np.array(v) for k, v in texts.items()})
    elif fmt == "pt":
        torch.save({"w": torch.from_numpy(mask), **texts}, path)
    else:
        save_file({"w": torch.from_numpy(mask)}, str(path), metadata=texts)
    meta = import_mask(path, packed=True).metadata
    assert import_mask(path, packed=True).metadata == meta  # (the same texts kept each time it is read)
    kept = {k: v for k, v in meta.items() if k in texts}
    assert kept["model_name"] == "acme/x" and "long" not in kept
    assert all(v == texts[k] for k, v in kept.items())
    assert (
        sum(len(k) + len(v) for k, v in kept.items())
        <= METADATA_TOTAL_LIMIT
        < sum(len(k) + len(v) for k, v in texts.items() if k != "long")
    )
    said = meta[LEFT_OUT_KEY]
    assert f"'long' ({METADATA_TEXT_LIMIT + 1:,} characters)" in said and "more: longer than" in said, said


def test_a_pickle_model_name_is_kept_within_the_limit(tmp_path):
    """The released pickle's ``orig_model_name``: a text past the limit is left out, as the other importers'."""
    import pickle

    from subnetviz.masks import LEFT_OUT_KEY, import_bigram_pickle

    path = tmp_path / "subnetwork_dict_lambda1.pickle"
    path.write_bytes(pickle.dumps({"w": np.ones((2, 2), bool), "orig_model_name": "n" * 100_000}, protocol=4))
    meta = import_bigram_pickle(path).metadata
    assert "orig_model_name" not in meta and "'orig_model_name' (100,000 characters)" in meta[LEFT_OUT_KEY]


def test_the_uploads_room_counts_the_header_not_only_the_bits(home, tmp_path, monkeypatch):
    """A safetensors upload of this app's own format, its provenance holding 2 MiB of text (not another tool's
    text: kept whole), 1 byte of bits, under a 1 MiB budget: refused in one line before anything is written, its
    figure the whole file's; the uploads folder holds nothing after, not even a half-written temporary."""
    from subnetviz.masks import MaskSet, save_mask_set, stored_bytes

    monkeypatch.setenv("SUBNETVIZ_UPLOADS_GB", str(1 / 1024))
    ms = MaskSet({"w": torch.ones(2, 2, dtype=torch.bool)}, {"method": "hand-made", "notes": "x" * (2 * MiB)})
    src = save_mask_set(tmp_path / "big-header.safetensors", ms)
    with pytest.raises(MaskError) as err:
        selection.save_upload("big-header.safetensors", src.read_bytes())
    text = _one_line(err)
    assert text.startswith("big-header.safetensors: not stored: the uploaded masks on this server take 0.0 MiB of")
    assert "this one needs 2.0 MiB" in text, text
    assert list(selection.uploads_dir().iterdir()) == []
    assert stored_bytes(ms) > 2 * MiB


def test_stored_bytes_is_the_size_save_mask_set_writes(tmp_path):
    """stored_bytes, worked out before writing, equals the written file's size: bool tensors and bit-packed ones,
    a 0-d mask and an empty one, names and texts beyond ASCII, control characters and escapes in the provenance."""
    from subnetviz.masks import MaskSet, load_mask_set, save_mask_set, stored_bytes

    g = torch.Generator().manual_seed(0)
    sets = [
        MaskSet({"a": torch.rand(3, 5, generator=g) > 0.5}),
        MaskSet(
            {f"model.layers.{i}.w": torch.rand(100, 37, generator=g) > 0.5 for i in range(30)},
            {"method": "m", "note": 'é\n\t"ß\\ 日本 😀 \x01 \x7f', "nested": {"a": [1, 2.5, None]}},
        ),
        MaskSet(
            {
                "ünï.😀": torch.zeros((), dtype=torch.bool),
                "z": torch.zeros(0, 4, dtype=torch.bool),
                "b": torch.ones(9, dtype=torch.bool),
            },
            {"source": "/srv/a\udcffb"},
        ),
        MaskSet({f"m{i}": torch.rand(300, 1000, generator=g) > 0.9 for i in range(12)}, {"count": 3}),
    ]
    for i, ms in enumerate(sets):
        path = save_mask_set(tmp_path / f"m{i}.safetensors", ms)
        packed = load_mask_set(path, packed=True)
        assert stored_bytes(ms) == path.stat().st_size == stored_bytes(MaskSet(packed.masks, ms.metadata)), i


# --- 3. config.json's architectures ---------------------------------------------------------------------------------
_W = {"model.layers.0.mlp.up_proj.weight": torch.zeros(4, 4, dtype=torch.bfloat16)}


@pytest.mark.parametrize(
    ("arch", "said"),
    [
        (
            {"a": 1},
            'architectures is {"a": 1} (an object); expected a list of class names such as ["LlamaForCausalLM"]',
        ),
        ("LlamaForCausalLM", 'architectures is "LlamaForCausalLM" (a string); expected a list of class names'),
        (5, "architectures is 5 (a number); expected a list"),
        ([{"a": 1}], 'architectures[0] is {"a": 1} (an object); expected a class name (a string)'),
        (["LlamaForCausalLM", None], "architectures[1] is null; expected a class name (a string)"),
    ],
)
def test_architectures_that_are_not_a_list_of_names_are_refused(tmp_path, arch, said):
    """Refused in one line naming the folder's config.json, as a model_type that is no string is."""
    from subnetviz.checkpoints.sources import open_checkpoint

    folder = _checkpoint(tmp_path / "m", _W, architectures=arch)
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(folder)
    text = _one_line(err)
    assert text.startswith(f"config.json in {config.display_path(folder)}: {said}"), text


@pytest.mark.parametrize(
    ("arch", "shown"), [(["MistralForCausalLM", "X"], "MistralForCausalLM"), ([], "llama"), (None, "llama")]
)
def test_architectures_absent_null_or_a_list_read_as_before(tmp_path, arch, shown):
    from subnetviz.checkpoints.sources import open_checkpoint

    folder = _checkpoint(tmp_path / "m", _W, **({} if arch == [] else {"architectures": arch}))
    assert open_checkpoint(folder).architecture == shown


def test_architecture_of_a_config_not_read_by_the_checks_falls_back_to_the_family(tmp_path):
    """A config set on a checkpoint some other way (not through config.json's checks): its architecture is a name,
    never the first letter of a string or an object."""
    from subnetviz.checkpoints.sources import open_checkpoint

    ck = open_checkpoint(_checkpoint(tmp_path / "m", _W))
    for bad in ("LlamaForCausalLM", {"a": 1}, [{"a": 1}], [5]):
        ck.config["architectures"] = bad
        assert ck.architecture == "llama", bad


# --- 4. named pipes and devices given as masks, pickles, corpora and prompts ---------------------------------------
@pytest.fixture
def specials(tmp_path) -> dict[str, tuple[Path, str]]:
    """A named pipe and links to /dev/zero and /dev/urandom, under mask-like names: (path, what it is)."""
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    zero, rand = tmp_path / "zero.pt", tmp_path / "urandom.pickle"
    zero.symlink_to("/dev/zero")
    rand.symlink_to("/dev/urandom")
    return {
        "fifo": (fifo, "a named pipe (FIFO)"),
        "zero": (zero, "a character device"),
        "rand": (rand, "a character device"),
    }


def _readers():
    from subnetviz.analysis.behavior_data import read_prompts
    from subnetviz.bigram.stats import corpus_from_text
    from subnetviz.masks import (
        import_bigram_pickle,
        import_mask,
        import_npz_masks,
        import_torch_masks,
        load_mask_set,
        mask_file_shapes,
    )

    return {
        "load_mask_set": (load_mask_set, MaskError),
        "mask_file_shapes": (mask_file_shapes, MaskError),
        "import_torch_masks": (import_torch_masks, MaskError),
        "import_npz_masks": (import_npz_masks, MaskError),
        "import_bigram_pickle": (import_bigram_pickle, MaskError),
        "import_mask": (import_mask, MaskError),
        "corpus_from_text": (lambda p: corpus_from_text(p, None), ConfigError),
        "read_prompts": (read_prompts, ConfigError),
    }


@pytest.mark.parametrize("reader", list(_readers()))
def test_pipes_and_devices_are_named_as_such_not_as_missing(specials, reader):
    """Each reader says what the file is, in one line naming it, never "no such … file"; nothing is opened (a pipe
    would block, a device read without end)."""
    fn, error = _readers()[reader]
    for path, what in specials.values():
        with pytest.raises(error) as err:
            _call_unblocked(lambda p=path: fn(p), path)
        text = _one_line(err)
        assert text == f"{path}: {what}, not a regular file; refused.", text


def test_a_missing_file_is_still_said_missing(tmp_path):
    for reader, (fn, error) in _readers().items():
        with pytest.raises(error, match="no such"):
            fn(tmp_path / "gone.safetensors")
        assert reader


def test_importing_a_released_pickle_that_is_a_pipe_is_named_as_such(home, tmp_path):
    """The server's import of a released pickle by its path (inside the roots): a named pipe there was "no such
    pickle", and a pipe past that check would have blocked the hash of its bytes."""
    fifo = home / "subnetwork_dict_lambda1.pickle"
    home.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    with pytest.raises(MaskError) as err:
        _call_unblocked(lambda: selection.import_released(str(fifo), "zoo/base"), fifo)
    text = _one_line(err)
    assert text.endswith("subnetwork_dict_lambda1.pickle: a named pipe (FIFO), not a regular file; refused."), text
    assert "no such" not in text
