"""Files a stranger or a broken disk brings (review "bad inputs"): config.json values of the wrong JSON type (D1, D2),
an analysis folder whose row_col.npz or sigma.parquet declares more than its tensors hold (D5), a named pipe or a
folder where a file should be (D6), a file where a folder should be (N2), `analyze --no-cache`'s manifest and the
subspaces in it (N3), a safetensors mask of no tensors (N4).

The tiny model is Llama-shaped, float32, written with safetensors directly (no transformers), with changes
planted at known entries: every count checked is known without subnetviz's help.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from subnetviz.cli import main
from subnetviz.errors import CheckpointError, ConfigError, MaskError, PathNotAllowedError
from tests.unit.test_hub_inputs_review import CONFIG, NUMEL, SHAPES  # the one-layer Llama of 920 parameters

PLANT = {"model.layers.0.self_attn.q_proj.weight": [0, 9, 63]}  # flat entries moved by +0.5 in the finetune
CHANGED = 3


def _write(folder: Path, tensors: dict[str, np.ndarray], config: dict) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """(base, finetune): the finetune differs in the CHANGED planted entries of q_proj; untied heads."""
    root = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    base = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    ft = {n: v.copy() for n, v in base.items()}
    for name, flat in PLANT.items():
        ft[name].reshape(-1)[flat] += 0.5
    # the heads differ from the embedding everywhere: a head read as tied is compared with another tensor
    return _write(root / "base", base, CONFIG), _write(root / "ft", ft, CONFIG)


def _edited(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        if "." in key:  # text_config.tie_word_embeddings
            outer, inner = key.split(".")
            cfg.setdefault(outer, {})[inner] = value
        else:
            cfg[key] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _analyze(base, ft, out, *extra) -> list[str]:
    return ["analyze", str(base), str(ft), "--out", str(out), "--no-spectra", "--subspaces", "0", *extra]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: "), err
    return err


# --- D1: config.json values of the wrong JSON type --------------------------------------------------------------
@pytest.mark.parametrize(
    "side, key, value",
    [
        ("ft", "model_type", ["llama"]),
        ("ft", "model_type", {"a": 1}),
        ("base", "num_attention_heads", [4, "a"]),  # (a list of whole numbers, one per stage, is read: below)
        ("base", "hidden_size", [0]),
        ("base", "hidden_size", []),
        ("base", "num_key_value_heads", {"a": 1}),
        ("base", "num_attention_heads", "2"),
        ("base", "num_key_value_heads", True),
    ],
)
def test_a_config_value_of_the_wrong_json_type_is_one_line(pair, tmp_path, capsys, side, key, value):
    """A list or object where config.json has a string or a count ended in "TypeError: unhashable type" (a
    traceback, exit 1; in the app the "This is a bug" notice); a string or boolean count was taken as it was."""
    base, ft = pair
    bad = _edited(base if side == "base" else ft, tmp_path / "bad", **{key: value})
    args = _analyze(bad, ft, tmp_path / "out") if side == "base" else _analyze(base, bad, tmp_path / "out")
    assert main([*args, "--no-cache"]) == 2
    err = _one_error_line(capsys)
    assert f"{key} is {json.dumps(value)}" in err and "config.json" in err, err
    assert not (tmp_path / "out").exists()


def test_counts_listed_per_stage_are_read_as_transformers_reads_them(tmp_path, capsys):
    """SegFormer, PVT, LeViT and others list num_attention_heads (and hidden sizes) per stage: a valid config
    transformers builds and saves, refused as "expected a whole number" by the new type check. One planted change in
    a real SegFormer pair is one changed entry (counted from the two files' tensors)."""
    import torch
    from safetensors.torch import load_file
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from subnetviz.analysis.sparsity import SparsityOptions
    from subnetviz.analysis.updates import SpectraOptions, analyze_updates

    torch.manual_seed(0)
    cfg = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[3, 3],
        strides=[2, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=3,
    )
    model = SegformerForSemanticSegmentation(cfg)
    model.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        dict(model.named_parameters())["segformer.stages.1.blocks.0.attention.q_proj.weight"][3, 5] += 1.0
    model.save_pretrained(tmp_path / "ft")
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("base", "ft"))
    want = sum(int((a[k] != b[k]).sum()) for k in a)
    assert json.loads((tmp_path / "base" / "config.json").read_text())["num_attention_heads"] == [1, 2]
    analysis = analyze_updates(
        str(tmp_path / "base"), [str(tmp_path / "ft")], options=SparsityOptions(), spectra=SpectraOptions(enabled=False)
    )
    (row,) = analysis.summary().itertuples()
    weights = sum(t.numel() for t in a.values() if t.is_floating_point())  # (num_batches_tracked: a buffer)
    assert want == 1 and row.changed == want and row.numel == weights


def test_config_check_names_the_folder_and_the_key():
    """What the readers of config.json call with "config.json in FOLDER" (one line naming both); null is a key not
    given, as transformers reads it."""
    from subnetviz.checkpoints.naming import check_config

    where = "config.json in zoo/ft"
    check_config({**CONFIG, "num_key_value_heads": None, "tie_word_embeddings": None}, where)  # no error
    cases = [
        ({"model_type": ["llama"]}, 'model_type is ["llama"] (a list)'),
        ({"hidden_size": 0}, "hidden_size is 0 (a number)"),
        ({"text_config": {"num_attention_heads": [4, 0]}}, "text_config.num_attention_heads is [4, 0] (a list)"),
        ({"thinker_config": {"text_config": {"hidden_size": 1.5}}}, "thinker_config.text_config.hidden_size is 1.5"),
        ({"multi_query": "false"}, 'multi_query is "false" (a string); expected true or false'),
        ({"tie_word_embeddings": "false"}, 'tie_word_embeddings is "false" (a string); expected true or false'),
        ({"text_config": {"tie_word_embeddings": 0}}, "text_config.tie_word_embeddings is 0 (a number)"),
    ]
    for change, said in cases:
        with pytest.raises(CheckpointError) as exc:
            check_config({**CONFIG, **change}, where)
        msg = str(exc.value)
        assert msg.startswith(f"{where}: ") and said in msg and "\n" not in msg, msg


# --- D2: tie_word_embeddings that is no boolean ----------------------------------------------------------------
def test_json_false_compares_the_untied_head(pair, tmp_path, capsys):
    """The reference for the refusals below: with JSON false (and null: Llama's default, untied) the changed
    count is the planted one, the heads compared with each other."""
    base, ft = pair
    for value in (False, None):
        ft2 = _edited(ft, tmp_path / f"ft-{value}", tie_word_embeddings=value)
        out = tmp_path / f"out-{value}"
        assert main(_analyze(base, ft2, out, "--no-cache")) == 0
        summary = json.loads((out / "summary.json").read_text())
        label = summary["labels"][0]
        assert summary["models"][label]["changed"] == CHANGED and summary["models"][label]["numel"] == NUMEL
    capsys.readouterr()


@pytest.mark.parametrize("value", ["false", 0, 1, [False], {"a": False}])
@pytest.mark.parametrize("side", ["base", "ft"])
@pytest.mark.parametrize("key", ["tie_word_embeddings", "text_config.tie_word_embeddings"])
def test_tie_word_embeddings_that_is_no_boolean_is_refused(pair, tmp_path, capsys, value, side, key):
    """ "tie_word_embeddings": "false" (a hand edit) was read as True: the finetune's untouched head was compared
    with the base's embedding, 1034 changed instead of 10 (sparsity 0.85 instead of 0.9985), the notes saying the
    head is tied. transformers refuses such a config; so does the analysis, naming the key."""
    base, ft = pair
    bad = _edited(base if side == "base" else ft, tmp_path / "bad", **{key: value})
    args = _analyze(bad, ft, tmp_path / "out") if side == "base" else _analyze(base, bad, tmp_path / "out")
    assert main([*args, "--no-cache"]) == 2
    err = _one_error_line(capsys)
    assert f"{key} is {json.dumps(value)}" in err and "expected true or false" in err, err
    assert not (tmp_path / "out").exists()


# --- D5: an analysis folder declaring more than its tensors hold ----------------------------------------------
@pytest.fixture(scope="module")
def analysis(pair, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("analysis") / "out"
    assert main(_analyze(*pair, out, "--no-cache")) == 0
    return out


def _stranger_copy(analysis: Path, dst: Path) -> Path:
    """The analysis as a stranger hands it over: no manifest (nothing to tell an edit by)."""
    shutil.copytree(analysis, dst)
    (dst / ".manifest.json").unlink(missing_ok=True)
    return dst


def _npy(header_shape: tuple, dtype: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": header_shape})
    return buf.getvalue() + data


def _replace_member(npz: Path, member: str, raw: bytes) -> None:
    arrays = dict(np.load(npz))
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in arrays.items():
            if k == member:
                z.writestr(k + ".npy", raw)
            else:
                b = io.BytesIO()
                np.save(b, v)
                z.writestr(k + ".npy", b.getvalue())


ROWS = "{label}::layers.0.self_attn.q_proj.weight::rows"  # q_proj: 8 rows of 8


@pytest.mark.parametrize(
    "shape, dtype, data",
    [
        ((5000,), "<i4", bytes(4 * 5000)),  # well formed, just not its tensor's 8 rows: read and drawn before
        ((8,), "<f8", np.zeros(8).tobytes()),  # floats are no counts
        ((8, 1), "<i4", bytes(32)),
    ],
)
def test_report_refuses_row_counts_its_tensor_does_not_have(analysis, tmp_path, capsys, shape, dtype, data):
    """row_col.npz's arrays were read as they came, unchecked against tensors.csv: a q_proj of 8 rows with 5000
    row counts made a report (exit 0, 'wrote')."""
    folder = _stranger_copy(analysis, tmp_path / "an")
    label = json.loads((folder / "summary.json").read_text())["labels"][0]
    member = ROWS.format(label=label)
    _replace_member(folder / "row_col.npz", member, _npy(shape, dtype, data))
    assert main(["report", str(folder), "--out", str(tmp_path / "r.html")]) == 2
    err = _one_error_line(capsys)
    assert "row_col.npz" in err and member in err and "declares" in err, err
    assert not (tmp_path / "r.html").exists()


def test_read_analysis_bounds_memory_before_reading(analysis, tmp_path):
    """A member declaring 10^9 entries (its deflated bytes need not be there: the header alone is the claim) was
    allocated whole by np.load (1.8 GB peak for a 1.4 MB file, larger ones killed the process); now its header is
    refused before any array is made (peak memory measured, of a read that fails)."""
    from subnetviz.analysis.updates import read_analysis

    folder = _stranger_copy(analysis, tmp_path / "an")
    label = json.loads((folder / "summary.json").read_text())["labels"][0]
    _replace_member(folder / "row_col.npz", ROWS.format(label=label), _npy((10**9,), "|u1", bytes(1 << 16)))
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="declares uint8 of shape") as exc:
            read_analysis(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak:,} bytes allocated"
    assert "Refused before reading" in str(exc.value) and "\n" not in str(exc.value)


def test_an_npz_member_naming_no_tensor_is_refused(analysis, tmp_path, capsys):
    folder = _stranger_copy(analysis, tmp_path / "an")
    with zipfile.ZipFile(folder / "row_col.npz", "a") as z:
        z.writestr("x::nothing::rows.npy", _npy((4,), "<i4", bytes(16)))
    assert main(["report", str(folder), "--out", str(tmp_path / "r.html")]) == 2
    assert "names no tensor of two or more dimensions" in _one_error_line(capsys)


def test_sigma_parquet_of_more_values_than_its_tensors_is_refused(analysis, tmp_path, capsys):
    """sigma.parquet was read whole, unchecked: more singular values than the matrices of tensors.csv have (two
    spectra, the update's and a random baseline's, of min(rows, cols) values each) made a report."""
    folder = _stranger_copy(analysis, tmp_path / "an")
    tensors = pd.read_csv(folder / "tensors.csv")
    bound = 0
    for shape in tensors["shape"].astype(str):
        dims = [int(d) for d in shape.split("x")]
        bound += 2 * min(dims) if len(dims) == 2 else 0
    n = bound + 1
    pd.DataFrame(
        {"model": ["ft"] * n, "name": ["w"] * n, "index": range(n), "sigma": 1.0, "kind": "update"}
    ).to_parquet(folder / "sigma.parquet", index=False)
    assert main(["report", str(folder), "--out", str(tmp_path / "r.html")]) == 2
    err = _one_error_line(capsys)
    assert f"{n:,} singular values" in err and f"at most {bound:,}" in err, err
    # as many as they have are read
    pd.read_parquet(folder / "sigma.parquet").head(bound).to_parquet(folder / "sigma.parquet", index=False)
    assert main(["report", str(folder), "--out", str(tmp_path / "r.html")]) == 0


# --- D6: a named pipe, a folder where a file should be ----------------------------------------------------------
class Unblocker:
    """Opens ``fifo`` for writing after ``after`` seconds if a reader still waits on it (the bug: the read would
    block forever otherwise), and records that it had to."""

    def __init__(self, fifo: Path, after: float = 20.0):
        self.fifo, self.needed = fifo, False
        self.timer = threading.Timer(after, self._open)

    def _open(self) -> None:
        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO: no reader waits
        except OSError:
            return
        self.needed = True
        os.close(fd)

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()


def test_a_named_pipe_as_the_weights_is_refused_not_waited_on(pair, tmp_path, capsys):
    """`analyze BASE FOLDER` with FOLDER/model.safetensors a named pipe never returned (nor did the page's thread
    in the app): the open waited for a writer."""
    base, ft = pair
    folder = tmp_path / "fifo"
    folder.mkdir()
    shutil.copy(ft / "config.json", folder)
    os.mkfifo(folder / "model.safetensors")
    with Unblocker(folder / "model.safetensors") as guard:
        code = main(_analyze(base, folder, tmp_path / "out", "--no-cache"))
    assert not guard.needed, "the reader waited on the named pipe"
    assert code == 2
    err = _one_error_line(capsys)
    assert "model.safetensors" in err and "a named pipe (FIFO), not a regular file" in err, err


def test_check_readable_refuses_what_is_no_regular_file(tmp_path):
    """The gate every opened file passes: a named pipe, a folder, a device or a socket is refused by name, before
    anything opens it; a regular file, or nothing there (its reader says so), passes."""
    import socket

    from subnetviz.config import check_readable

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "dir.safetensors").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    try:
        for path, kind in [
            (tmp_path / "pipe", "a named pipe (FIFO)"),
            (tmp_path / "dir.safetensors", "a folder"),
            (tmp_path / "sock", "a socket"),
            (Path("/dev/null"), "a character device"),
        ]:
            with pytest.raises(PathNotAllowedError) as exc:
                check_readable(path, what=f"{path.name} in here")
            assert str(exc.value) == f"{path.name} in here: {kind}, not a regular file; refused."
    finally:
        sock.close()
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    assert check_readable(tmp_path / "link") == (tmp_path / "file").resolve()
    assert check_readable(tmp_path / "missing") == (tmp_path / "missing").resolve()


def test_the_header_reader_refuses_a_pipe_and_a_folder(tmp_path):
    from subnetviz.checkpoints.header import read_safetensors_header

    os.mkfifo(tmp_path / "p.safetensors")
    (tmp_path / "d.safetensors").mkdir()
    with Unblocker(tmp_path / "p.safetensors") as guard, pytest.raises(CheckpointError, match="a named pipe"):
        read_safetensors_header(tmp_path / "p.safetensors")
    assert not guard.needed
    with pytest.raises(CheckpointError, match=r"d\.safetensors: a folder, not a regular file"):
        read_safetensors_header(tmp_path / "d.safetensors")


def test_a_training_base_with_a_named_pipe_is_refused_before_the_job(pair, tmp_path):
    """The trainers' from_pretrained opens whichever tokenizer or template files the base folder holds: a named
    pipe among them was skipped by the check (not a file) and would have hung the job on its open."""
    from subnetviz.training.config import _base_folder_problems

    base = shutil.copytree(pair[0], tmp_path / "base")
    assert _base_folder_problems(base) == []
    os.mkfifo(base / "tokenizer.json")
    assert _base_folder_problems(base) == [
        f"base {str(base)!r}: tokenizer.json is a named pipe (FIFO), not a regular file"
    ]


# --- N2: a file where a folder should be ---------------------------------------------------------------------
def test_a_file_where_the_output_folder_should_be_is_said_so(analysis, tmp_path, capsys):
    """`mask import SRC afile/x.safetensors` said "cannot complete afile: File exists (errno 17)"; `report
    --out afile/r.html` said "folder afile does not exist"."""
    from subnetviz.report.html import write_report

    afile = tmp_path / "afile"
    afile.write_text("")
    mask = next((analysis / "masks").iterdir())
    for dst in (afile / "x.safetensors", afile / "sub" / "x.safetensors"):
        assert main(["mask", "import", str(mask), str(dst)]) == 2
        assert f"{afile} is a file, not a folder" in _one_error_line(capsys)
    assert main(["report", str(analysis), "--out", str(afile / "r.html")]) == 2
    assert f"{afile} is a file, not a folder" in _one_error_line(capsys)
    with pytest.raises(ConfigError, match=f"{afile} is a file, not a folder"):
        write_report(afile / "r.html", "t", [])
    with pytest.raises(ConfigError, match="does not exist"):  # a folder that is simply missing: as before
        write_report(tmp_path / "none" / "r.html", "t", [])


# --- N3: the manifest of `analyze --no-cache`, and the subspaces in it -------------------------------------------
@pytest.mark.parametrize("cache", [False, True])
def test_analyze_output_lists_every_file_report_reads(pair, tmp_path, capsys, cache):
    """`analyze --no-cache` wrote no manifest, so a cut or edited copy of its folder was read as it was; the
    subspaces `report` draws were in no manifest, cached or not. An edited subspaces.csv is now refused."""
    from subnetviz.cache import verify_manifest

    out = tmp_path / "out"
    args = ["analyze", *map(str, pair), "--out", str(out), "--no-spectra", "--subspaces", "2"]
    assert main([*args, *([] if cache else ["--no-cache"])]) == 0
    listed = json.loads((out / ".manifest.json").read_text())["files"]
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != ".manifest.json"}
    assert set(listed) == on_disk and "subspaces.csv" in listed and "row_col.npz" in listed
    assert verify_manifest(out) is None
    text = (out / "subspaces.csv").read_text()
    (out / "subspaces.csv").write_text(text.replace(",", ";", 1))  # one byte changed: same size
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 2
    err = _one_error_line(capsys)
    assert "subspaces.csv does not hold what was written" in err, err
    assert not (tmp_path / "r.html").exists()


# --- N4: a safetensors mask of no tensors ------------------------------------------------------------------------
def test_a_safetensors_mask_of_no_tensors_is_refused(tmp_path):
    """A .safetensors upload holding only metadata was stored as a mask (0 tensors, density 0), while .pt and
    pickle uploads of no masks are refused."""
    from safetensors.numpy import save_file

    from subnetviz.masks import import_mask
    from subnetviz.selection import save_upload

    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty), metadata={"subnetviz": "{}"})
    with pytest.raises(MaskError, match="holds no masks"):
        import_mask(empty)
    with pytest.raises(MaskError, match=r"^mine\.safetensors: the file holds no masks\.$"):
        save_upload("mine.safetensors", empty.read_bytes())
