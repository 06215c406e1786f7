"""The command line keeps its promises on the inputs a reviewer found it broke them with.

Proves: ``--out --overwrite`` never replaces a folder holding a ``--mask NAME=PATH`` file or a hub id's
snapshot in the local Hugging Face cache; a label too long for a file name, an empty mask name and a device
that does not exist are refused before any work (the device on a cached result too); ``--no-cache`` moves its
result into place instead of copying it, and a copy failing file by file is one line; a mask that cannot be
written is one line naming its file; an interrupted ``train`` leaves no TensorBoard folder of its own; an app
port out of range is refused by the parser; ``demo --help`` names the demo's sub-verbs.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from subnetviz.__main__ import main
from tests.ckpt_fixtures import bf16_step, read_state_dict, write_folder


@pytest.fixture(scope="module")
def ft(ckpt_zoo, tmp_path_factory):
    """A finetune of the zoo's Llama: every tensor's first entry moved by 1 ULP."""
    sd = read_state_dict(ckpt_zoo.llama)
    for t in sd.values():
        t.view(-1)[:1] = bf16_step(t.view(-1)[:1], 1)
    return write_folder(tmp_path_factory.mktemp("trust") / "ft", sd, ckpt_zoo.llama)


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err[-2000:]
    return lines[0]


def _no_work(monkeypatch):
    """The analysis and the behaviour run fail the test if they start: what is checked is refused before."""
    from subnetviz.analysis import behavior, updates

    for mod, name in ((updates, "analyze_updates"), (updates, "cached_analysis"), (behavior, "run_config")):
        monkeypatch.setattr(mod, name, lambda *a, **k: pytest.fail("the work ran"))


# --- --out never replaces a folder holding an input -------------------------------------------------------


def test_behavior_never_replaces_the_folder_of_a_named_mask(tmp_path, capsys, monkeypatch):
    """'--mask g0=usermasks/precious.safetensors --out usermasks --overwrite' deleted the mask: the check was
    given the whole 'g0=...' spec, which is no path."""
    _no_work(monkeypatch)
    mine = tmp_path / "usermasks"
    mine.mkdir()
    (mine / "precious.safetensors").write_bytes(b"the user's mask")
    spec = f"g0={mine / 'precious.safetensors'}"
    args = ["behavior", str(tmp_path / "base"), str(tmp_path / "ft"), "--mask", spec, "--out", str(mine), "--overwrite"]
    assert main(args) == 2
    line = _one_error(capsys.readouterr().err)
    assert "replacing it would delete that" in line and "precious.safetensors" in line
    assert (mine / "precious.safetensors").read_bytes() == b"the user's mask"


@pytest.mark.parametrize("spec", ["=m.safetensors", " =m.safetensors"])
def test_behavior_refuses_an_empty_mask_name(tmp_path, capsys, monkeypatch, spec):
    """'--mask =FILE' ran, its experiments named '/inside' and 'random()/inside'."""
    _no_work(monkeypatch)
    out = tmp_path / "out"
    assert main(["behavior", str(tmp_path / "b"), str(tmp_path / "f"), "--mask", spec, "--out", str(out)]) == 2
    assert "an empty mask name" in _one_error(capsys.readouterr().err) and not out.exists()


def _symlinked_hub_cache(cache: Path, repo_id: str, source: Path) -> Path:
    """``source``'s files as the hub keeps them: content in ``blobs/``, the snapshot's files links to them."""
    org, name = repo_id.split("/")
    repo = cache / f"models--{org}--{name}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for i, f in enumerate(sorted(Path(source).iterdir())):
        shutil.copy2(f, repo / "blobs" / f"blob{i}")
        (snap / f.name).symlink_to(Path("..", "..", "blobs", f"blob{i}"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap


@pytest.mark.parametrize("where", ["the hub cache", "the model's folder in it", "its blobs", "the snapshot"])
def test_analyze_never_replaces_the_hub_cache_of_an_input(ckpt_zoo, tmp_path, capsys, monkeypatch, where):
    """'analyze org/base org/ft --out <hub cache, or models--org--ft> --overwrite' deleted the cached checkpoints:
    a hub id was compared as the path 'org/ft', not as the snapshot it is read from."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    snap = _symlinked_hub_cache(hub, "toyorg/tiny", ckpt_zoo.gpt2)
    repo = snap.parent.parent
    out = {"the hub cache": hub, "the model's folder in it": repo, "its blobs": repo / "blobs", "the snapshot": snap}
    args = ["analyze", "toyorg/tiny", "toyorg/tiny", "--out", str(out[where]), "--overwrite", "--no-spectra"]
    assert main([*args, "--subspaces", "0"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert "the input toyorg/tiny" in line and "replacing it would delete that" in line, line
    assert (snap / "model.safetensors").is_file() and read_state_dict(snap)  # the links still reach their blobs


# --- refused before any work --------------------------------------------------------------------------------


def test_a_label_too_long_for_a_file_name_is_refused_before_the_work(ckpt_zoo, ft, tmp_path, capsys, monkeypatch):
    """A 230-character label ran the whole analysis, then failed naming a temporary file ('File name too long').
    The limit is no stricter than it must be: a label of as many bytes as it allows makes its mask file."""
    _no_work(monkeypatch)
    out = tmp_path / "out"
    for label in ("x" * 230, "é" * 110):  # (bytes count, not characters: 220 in UTF-8)
        assert main(["analyze", str(ckpt_zoo.llama), str(ft), "--labels", label, "--out", str(out)]) == 2
        line = _one_error(capsys.readouterr().err)
        assert line.startswith("error: --labels:") and "at most 209 bytes" in line and not out.exists(), line
    monkeypatch.undo()
    label = "y" * 209
    args = ["analyze", str(ckpt_zoo.llama), str(ft), "--labels", label, "--out", str(out), "--no-spectra"]
    assert main([*args, "--subspaces", "0", "--no-cache"]) == 0
    assert (out / "masks" / f"{label}.safetensors").is_file()


def test_a_device_that_does_not_exist_is_refused_on_a_cached_result(ckpt_zoo, ft, tmp_path, capsys):
    """'--device banana' passed whenever the result came from the cache (the device was never asked for)."""
    args = ["analyze", str(ckpt_zoo.llama), str(ft), "--no-spectra", "--subspaces", "0"]
    assert main([*args, "--out", str(tmp_path / "first"), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "second"), "--device", "banana"]) == 2
    assert "device 'banana'" in _one_error(capsys.readouterr().err)
    assert not (tmp_path / "second").exists()


# --- writing the result -------------------------------------------------------------------------------------


def test_no_cache_moves_its_result_into_place(ckpt_zoo, ft, tmp_path, monkeypatch):
    """'--no-cache' wrote the result into --out's temporary folder and copied it beside itself (twice the space:
    a disk with room for one result was full); the files are those a cached run writes (less the cache's
    manifest)."""
    args = ["analyze", str(ckpt_zoo.llama), str(ft), "--no-spectra", "--subspaces", "0"]
    assert main([*args, "--out", str(tmp_path / "cached")]) == 0
    monkeypatch.setattr(shutil, "copytree", lambda *a, **k: pytest.fail("the result was copied"))
    assert main([*args, "--out", str(tmp_path / "moved"), "--no-cache"]) == 0

    def files(folder):
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != ".manifest.json")

    assert files(tmp_path / "moved") == files(tmp_path / "cached")
    assert files(tmp_path / "moved") and not (tmp_path / "moved" / "analysis").exists()
    assert main(["report", str(tmp_path / "moved"), "--out", str(tmp_path / "r.html")]) == 0


def test_a_copy_failing_file_by_file_is_one_short_line(tmp_path):
    """A full disk under the copy from the cache printed shutil.Error's list of (source, target, reason) for every
    file: several KB naming the temporary folder."""
    from subnetviz.cli.common import publish
    from subnetviz.errors import SubnetvizError

    out = tmp_path / "out"
    with pytest.raises(SubnetvizError) as err:
        with publish(out, overwrite=False) as tmp:
            why = f"[Errno 28] No space left on device: '{tmp / 'tensors.csv'}'"
            raise shutil.Error([(f"/cache/f{i}", str(tmp / f"f{i}"), why) for i in range(40)])
    said = str(err.value)
    assert said == f"--out {out}: cannot write the result (No space left on device; 39 more file(s) failed too)."
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.fixture
def mask_file(tmp_path):
    from subnetviz.masks import MaskSet, save_mask_set

    return save_mask_set(tmp_path / "src.safetensors", MaskSet({"w": torch.tensor([True, False, True])}))


@pytest.mark.parametrize("cleanup_fails", [False, True])
def test_a_mask_that_cannot_be_written_is_one_line(mask_file, tmp_path, capsys, monkeypatch, cleanup_fails):
    """'mask import SRC DST' into a folder it may not write: safetensors' SafetensorError (no OSError) ended in a
    traceback, exit 1. Simulated (tests run as root, which writes through permissions), with the removal of the
    temporary file failing too, as a read-only file system refuses even the removal of nothing."""
    import safetensors.numpy
    from safetensors import SafetensorError

    def refused(tensors, filename, metadata=None):
        where = Path(filename).with_name(".tmpXYZ")
        raise SafetensorError(f'Error while serializing: I/O error: Permission denied (os error 13) at path "{where}"')

    monkeypatch.setattr(safetensors.numpy, "save_file", refused)
    if cleanup_fails:
        unlink = Path.unlink

        def read_only(self, missing_ok=False):
            if ".tmp-" in self.name:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            return unlink(self, missing_ok=missing_ok)

        monkeypatch.setattr(Path, "unlink", read_only)
    dst = tmp_path / "locked" / "dst.safetensors"
    assert main(["mask", "import", str(mask_file), str(dst)]) == 2
    line = _one_error(capsys.readouterr().err)
    assert line == f"error: cannot complete {dst}: Permission denied (errno 13).", line
    assert not dst.exists()


# --- train, app, demo ---------------------------------------------------------------------------------------


def test_an_interrupted_train_leaves_no_tensorboard_folder_of_its_own(tmp_path, capsys, monkeypatch):
    """Ctrl-C said 'interrupted: nothing was written.' and left <output_dir>.tensorboard/<run>/ with its events;
    another run's events beside it stay."""
    from subnetviz.training import trainers
    from tests.models import make_tiny_llama
    from tests.training_fixtures import write_addition_data

    base = make_tiny_llama(tmp_path / "base", hidden=16, intermediate=32, heads=2)
    data = write_addition_data(tmp_path / "data", n=8)
    out = tmp_path / "out"
    events = out.with_name("out.tensorboard")
    other = events / "111-aaaaaaaa"  # an earlier run's
    other.mkdir(parents=True)
    (other / "events.out.tfevents.1.host.111.0").write_bytes(b"earlier")
    seen = []

    def ctrl_c(self, args, state, control, **kwargs):
        seen.extend(p.name for p in events.iterdir() if p != other and list(p.rglob("events.out.tfevents.*")))
        raise KeyboardInterrupt

    monkeypatch.setattr(trainers.ProgressCallback, "on_step_end", ctrl_c)
    config = {"algorithm": "sft", "base": str(base), "data": str(data["sft"]), "output_dir": str(out), "steps": 3}
    (tmp_path / "run.json").write_text(json.dumps({**config, "learning_rate": 1e-2, "batch_size": 4, "seed": 0}))
    assert main(["train", "--config", str(tmp_path / "run.json")]) == 130
    assert "interrupted: nothing was written." in capsys.readouterr().err
    assert len(seen) == 1  # its events were there when it was interrupted
    assert sorted(p.name for p in events.iterdir()) == [other.name]
    assert (other / "events.out.tfevents.1.host.111.0").read_bytes() == b"earlier"
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]

    shutil.rmtree(other)  # alone, its folder under <output_dir>.tensorboard goes with it
    assert main(["train", "--config", str(tmp_path / "run.json")]) == 130
    assert not events.exists()


def test_an_app_port_out_of_range_is_refused_by_the_parser(capsys, monkeypatch):
    """'app --port 99999' started Streamlit, whose server ended in a traceback (exit 1). 0 is any free port."""
    from subnetviz.cli import build_parser

    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("the server was started"))
    for port in ("99999", "-5", "65536", "eighty"):
        with pytest.raises(SystemExit) as exc:
            main(["app", "--port", port])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "argument --port:" in err and "Traceback" not in err and err.count("\n") == 2  # usage, the error
    for port in (0, 1, 8501, 65535):
        assert build_parser().parse_known_args(["app", "--port", str(port)])[0].port == port


def test_demo_help_names_its_sub_verbs(capsys, monkeypatch):
    """'demo --help' listed only a positional 'rest'; 'demo build ...' still reaches the demo's own parser."""
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    said = capsys.readouterr().out
    assert "build" in said and "path" in said and "demo build --help" in said and "rest" not in said
    from subnetviz.demo import build

    got = []
    monkeypatch.setattr(build, "main", lambda argv: got.append(argv) or 0)
    assert main(["demo", "build", "--preset", "micro", "--force"]) == 0
    assert got == [["build", "--preset", "micro", "--force"]]
