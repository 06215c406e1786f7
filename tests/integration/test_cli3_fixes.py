"""Fixes of the command line's third review (findings 2 to 6).

Proves: the command line's error lines name a path as it was given, not as a web visitor sees it (``…/final``: two
inputs of the same folder name could not be told apart), while a job's worker, a launched rank of a job, the app
and any process under enforced roots keep redacting, and redaction is back on once ``main()`` returns; ``train``
refuses a torch.save mask in the config's validation, before the model loads, in one line that gives the command
that converts it; ``mask import`` prints a sparse mask's density with analyze's digits, not ``0.000000``; a cached
``analyze``'s ``cached: served from`` line starts a line of its own (no empty progress bar before it); ``mask info``
prints valid JSON for a header with NaN or Infinity.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import subnetviz.cli as cli
from subnetviz import config
from subnetviz.__main__ import main
from subnetviz.errors import ConfigError, MaskError, PathNotAllowedError


def _err_lines(err: str) -> list[str]:
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]


# --- 2: paths as given on the command line, redacted for visitors --------------------------------------------------


def test_analyze_error_names_the_input_as_given(ckpt_zoo, tmp_path, capsys):
    """It read "error: config.json in …/final: not valid JSON": which of run1/final and run2/final?"""
    run1, run2 = tmp_path / "ckpts" / "run1" / "final", tmp_path / "ckpts" / "run2" / "final"
    shutil.copytree(ckpt_zoo.llama, run1)
    shutil.copytree(ckpt_zoo.llama, run2)
    (run2 / "config.json").write_text("{")
    code = main(["analyze", str(ckpt_zoo.llama), str(run1), str(run2), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = _err_lines(err)
    assert line.startswith(f"error: config.json in {run2}: not valid JSON"), line
    assert "…" not in line
    # and this process redacts again once the command has returned (the app's pages, a test after it)
    assert config.display_path(str(run2)) == "…/final"


def test_behavior_prompts_under_the_home_named_as_given(ckpt_zoo, tmp_path, monkeypatch, capsys):
    """A folder under SUBNETVIZ_HOME read "home/zoo/data: not a saved data set", relative to the home's name, which
    is no path from the working folder."""
    home = tmp_path / "home"
    data = home / "zoo" / "data"
    data.mkdir(parents=True)
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    llama = str(ckpt_zoo.llama)
    code = main(["behavior", llama, llama, "--prompts", str(data), "--out", str(tmp_path / "out")])
    (line,) = _err_lines(capsys.readouterr().err)
    assert code == 2
    assert line.startswith(f"error: {data}: not a saved data set"), line


def _show_path(args) -> int:
    print(config.display_path("/srv/private/run2/final"))
    return 0


@pytest.mark.parametrize(
    ("argv", "env", "shown"),
    [
        (["analyze", "b", "f", "--out", "o"], {}, "/srv/private/run2/final"),
        (["train", "--config", "c.json"], {}, "/srv/private/run2/final"),
        (["job", "/srv/runs/r1"], {}, "…/final"),  # a queued job's worker: its errors reach the app's pages
        (["train", "--config", "c.json"], {"SUBNETVIZ_RUN_DIR": "/srv/runs/r1"}, "…/final"),  # a job's launched rank
        (["analyze", "b", "f", "--out", "o"], {"SUBNETVIZ_ENFORCE_ROOTS": "1"}, "…/final"),  # the app's policy
    ],
)
def test_which_processes_show_full_paths(argv, env, shown, monkeypatch, capsys):
    for name in ("cmd_analyze", "cmd_train", "cmd_job"):
        monkeypatch.setattr(cli, name, _show_path)
    monkeypatch.delenv("SUBNETVIZ_RUN_DIR", raising=False)
    monkeypatch.delenv("SUBNETVIZ_ENFORCE_ROOTS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == shown
    assert config.display_path("/srv/private/run2/final") == "…/final"  # the default, restored


def refusing_job(config_: dict, ctx) -> None:
    """Test job (kind ``python``): refuses a file, naming it as the library names paths."""
    raise MaskError(f"{config.display_path(config_['file'])}: planted refusal.")


def test_a_job_worker_keeps_redacting(tmp_path, monkeypatch, capsys):
    """``python -m subnetviz job RUN_DIR`` goes through the same main(): the error its status records (which the
    app's pages show) names the file as a visitor may see it."""
    monkeypatch.setenv("SUBNETVIZ_ALLOW_TEST_JOBS", "1")
    monkeypatch.delenv("SUBNETVIZ_ENFORCE_ROOTS", raising=False)
    run = tmp_path / "run"
    run.mkdir()
    secret = tmp_path / "private" / "final"
    job = {"kind": "python", "target": f"{__name__}:refusing_job", "file": str(secret)}
    (run / "config.json").write_text(json.dumps(job))
    assert main(["job", str(run)]) == 1
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed"
    assert status["error"] == "…/final: planted refusal."
    assert str(tmp_path) not in capsys.readouterr().out


def test_a_refused_name_in_full(tmp_path):
    """A path the resolver refuses (a NUL byte) is named whole on the command line, the byte escaped; shortened for
    a visitor."""
    bad = f"{tmp_path}/a\0b/final"
    with config.full_paths():
        assert config.display_path(bad) == f"{tmp_path}/a\\0b/final"
        with pytest.raises(PathNotAllowedError, match="^" + str(tmp_path)):
            config.check_readable(bad)
    assert config.display_path(bad) == "…/final"


# --- 3: a torch.save training mask, refused before the model loads -------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.models import make_tiny_llama
    from tests.training_fixtures import write_addition_data

    root = tmp_path_factory.mktemp("cli3-train")
    base = make_tiny_llama(root / "base")
    data = write_addition_data(root / "data")
    masks = {n: torch.ones(s, dtype=torch.bool) for n, s in _shapes(base).items()}
    torch.save(masks, root / "m.pt")
    return {"root": root, "base": base, "data": data["sft"], "pt": root / "m.pt"}


def _shapes(folder: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {n: tuple(f.get_slice(n).get_shape()) for n in f.keys()}


@pytest.mark.parametrize("random", [False, True])
@pytest.mark.parametrize("run_dir", [False, True])
def test_train_refuses_a_torch_save_mask_before_the_model_loads(tiny, tmp_path, monkeypatch, capsys, random, run_dir):
    """It loaded the model, then said "not a readable safetensors mask file (Error while deserializing header: header
    too large)" of a mask `behavior --mask` and `mask import` read."""
    import subnetviz.training.run as run_mod

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(run_mod, "_Run", no_model)
    spec = f"random:{tiny['pt']}" if random else str(tiny["pt"])
    cfg = {"algorithm": "sft", "base": str(tiny["base"]), "data": str(tiny["data"]), "mask": spec, "steps": 1}
    cfg["output_dir"] = str(tmp_path / "out")
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    argv = ["train", "--config", str(tmp_path / "c.json")] + (["--run-dir", str(tmp_path / "rd")] * run_dir)
    assert main(argv) == 2
    (line,) = _err_lines(capsys.readouterr().err)
    dst = tiny["pt"].with_suffix(".safetensors")
    assert line == (
        f"error: training config: mask {spec!r}: a torch.save file; training reads safetensors masks: convert it "
        f"with `subnetviz mask import {tiny['pt']} {dst}`, then name that file instead."
    )
    assert not (tmp_path / "rd").exists() and not (tmp_path / "out").exists()


def test_the_converted_mask_passes_and_the_hint_works(tiny, tmp_path, capsys):
    """The command the message gives writes a mask the same validation takes."""
    from subnetviz.training.config import TrainConfig

    dst = tmp_path / "m.safetensors"
    assert main(["mask", "import", str(tiny["pt"]), str(dst)]) == 0
    cfg = {"algorithm": "sft", "base": str(tiny["base"]), "data": str(tiny["data"]), "output_dir": str(tmp_path / "o")}
    TrainConfig.from_dict({**cfg, "mask": str(dst)}).validate()
    with pytest.raises(ConfigError, match=r"a torch\.save file; training reads safetensors masks"):
        TrainConfig.from_dict({**cfg, "mask": str(tiny["pt"])}).validate()


def test_a_mask_reader_names_a_torch_save_file(tiny):
    """Where no config is validated first (a mask read for a job or a page), the safetensors reader says what the
    file is and how to convert it, not "Error while deserializing header: header too large"."""
    from subnetviz.masks import load_mask_set, mask_file_shapes

    for read in (load_mask_set, mask_file_shapes):
        with pytest.raises(MaskError, match=r"a torch\.save file, not a safetensors mask file; convert it with `subn"):
            read(tiny["pt"])


# --- 4, 5, 6: mask import's density, analyze's cached line, mask info's JSON -------------------------------------


def test_mask_import_density_of_a_sparse_mask(tmp_path, capsys):
    """It read "density 0.000000" for a mask of one entry in 4 million."""
    t = torch.zeros(2000, 2000, dtype=torch.bool)
    t[0, 0] = True
    torch.save({"a.weight": t}, tmp_path / "sparse.pt")
    assert main(["mask", "import", str(tmp_path / "sparse.pt"), str(tmp_path / "s.safetensors")]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"wrote {tmp_path / 's.safetensors'}: 1 tensors, density 2.500e-07 (1 of 4,000,000 entries)"


def test_cached_analyze_line_starts_a_line(ckpt_zoo, tmp_path, monkeypatch, capsys):
    """The second of two identical runs wrote "^Manalyze: 0tensor [00:00, ?tensor/s]cached: served from …"."""
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    ft = tmp_path / "ft"
    shutil.copytree(ckpt_zoo.llama, ft)
    args = ["analyze", str(ckpt_zoo.llama), str(ft), "--subspaces", "0", "--no-spectra"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("cached: served from "), repr(err[:200])
    assert "analyze:" not in err and "tensor/s" not in err  # no bar drawn for work that reported no step


def test_mask_info_prints_valid_json(tmp_path, capsys):
    from safetensors.torch import save_file

    meta = {"subnetviz": '{"density": NaN, "tolerance": Infinity, "method": "x"}'}
    save_file({"a.weight": torch.ones(2, 2, dtype=torch.uint8)}, str(tmp_path / "n.safetensors"), metadata=meta)
    assert main(["mask", "info", str(tmp_path / "n.safetensors")]) == 0

    def refuse(c):
        raise ValueError(f"{c} is not JSON")

    info = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert info["metadata"] == {"density": None, "tolerance": None, "method": "x"}
    assert info["density"] == 1.0
