"""Fixes of the second command-line review (/tmp/review/cli2/REPORT.md), in one process: the first part without
models, the second on tiny planted Llamas (one file: a unit file of the same name beside it clashed at collection,
the test folders being no packages).

- ``OMP_NUM_THREADS`` that OpenMP takes (``4,2``) or that is no count (``0``, ``abc``): no traceback (defect 1);
- ``SUBNETVIZ_DEVICE`` is what ``auto`` stands for, refused in one line naming it when it names no device here
  (defect 2);
- ``--out`` that is a link: the folder it points to is checked and written, the link stays (defect 3), also for a
  whole ``analyze``;
- ``--overwrite`` never replaces a folder that an input's links point into (defect 4), also for ``analyze``;
- a Ctrl-C a library swallows (a C callback, as numba's compile is): one line and exit 130, nothing published
  (defect 5);
- Ctrl-C during ``demo build`` says where it stopped and that a rerun resumes (defect 6);
- ``behavior`` records what produced its folder: ``behavior.json``'s ``params`` (prompt files as given and as
  read, limit, seed, curve, masks) and each prompt's set and line in ``prompts.csv`` / ``tokens.csv`` (defect 7);
- ``--mask`` with '=' in a folder name is a path (defect 8);
- a label stdout cannot encode does not fail the run after it was published (defect 9);
- library progress bars and the deprecation warning off under ``behavior`` / ``experiment`` (defect 10);
- the small items of 11: ``SUBNETVIZ_HOME`` a file, ``demo path`` with a home that cannot be made, no parents of
  ``--out`` left by a failed command, ``~`` in ``behavior`` and ``mask info``, ``mask info`` with a destination,
  ``overlap_consensus.csv``'s ``layer`` and ``module`` columns (equal to a NumPy count of the planted masks).
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import re
import shutil
import signal
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from subnetviz import cli
from subnetviz.cli.common import check_out, publish, thread_count
from subnetviz.errors import ConfigError, SubnetvizError
from tests.ckpt_fixtures import bf16_step, read_state_dict, write_folder
from tests.models import make_tiny_llama
from tests.training_fixtures import write_half_mask


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --- 1. OMP_NUM_THREADS ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, threads, noted", [("4,2", 4, False), (" 2", 2, False), ("", 1, False), ("0", 1, True), ("abc", 1, True)]
)
def test_a_thread_count_is_read_from_any_omp_value(raw, threads, noted, capsys):
    assert thread_count(raw) == threads
    err = capsys.readouterr().err
    assert ("OMP_NUM_THREADS" in err) == noted and len(_lines(err)) == int(noted)


@pytest.mark.parametrize("raw, expected", [("4,2", 4), ("0", 1), ("abc", 1)])
def test_every_verb_runs_under_an_omp_value_openmp_takes_or_refuses(raw, expected, monkeypatch, capsys):
    """``demo path`` (which calls threads() first, as every verb that computes does) exited 1 with a ValueError or
    RuntimeError traceback."""
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", raw)
    try:
        assert cli.main(["demo", "path"]) == 0
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)
    assert "Traceback" not in capsys.readouterr().err


# --- 2. SUBNETVIZ_DEVICE -------------------------------------------------------------------------------------------
def test_auto_stands_for_the_device_the_variable_names(monkeypatch):
    """With a GPU present, ``SUBNETVIZ_DEVICE=cpu`` still computed on CUDA: 'auto' never read the variable."""
    from subnetviz.config import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "cpu")
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu"
    assert resolve_device("cuda") == "cuda"  # a device named explicitly wins
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "")
    assert resolve_device("auto") == "cuda"
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "auto")
    assert resolve_device("auto") == "cuda"


@pytest.mark.parametrize("value", ["bogus", "cuda:7"])
def test_a_variable_naming_no_device_here_is_refused_in_one_line_before_any_work(value, tmp_path, monkeypatch, capsys):
    """``SUBNETVIZ_DEVICE=bogus`` (or a GPU that is not there) wrote its result where ``--device`` of it is refused."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SUBNETVIZ_DEVICE", value)
    out = tmp_path / "out"
    assert cli.main(["analyze", str(tmp_path / "nope"), str(tmp_path / "nope2"), "--out", str(out)]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"error: SUBNETVIZ_DEVICE={value!r}") and not out.exists(), err


# --- 3. --out that is a link ----------------------------------------------------------------------------------------
def test_an_out_linked_to_an_empty_folder_is_written_into_that_folder(tmp_path):
    """The result was renamed over the link: 'Not a directory' after the whole run, the target left empty."""
    target, link = tmp_path / "scratch" / "results", tmp_path / "results"
    target.mkdir(parents=True)
    link.symlink_to(target)
    out = check_out(str(link), overwrite=False)
    with publish(out, overwrite=False) as tmp:
        (tmp / "summary.json").write_text("new")
    assert link.is_symlink() and (target / "summary.json").read_text() == "new"


def test_overwrite_through_a_link_replaces_the_folder_it_points_to_and_keeps_the_link(tmp_path):
    """The link itself was replaced by a folder in the link's parent; the result never reached the target."""
    target, link = tmp_path / "scratch" / "results", tmp_path / "results"
    target.mkdir(parents=True)
    (target / "old.csv").write_text("old")
    link.symlink_to(target)
    with pytest.raises(SubnetvizError, match="not empty"):
        check_out(str(link), overwrite=False)
    out = check_out(str(link), overwrite=True)
    with publish(out, overwrite=True) as tmp:
        (tmp / "summary.json").write_text("new")
    assert link.is_symlink() and os.path.realpath(link) == str(target)
    assert sorted(p.name for p in target.iterdir()) == ["summary.json"]


# --- 4. --overwrite and an input's links ---------------------------------------------------------------------------
def test_overwrite_refuses_the_folder_that_an_inputs_links_point_into(tmp_path):
    """``analyze BASE ftlink --out store --overwrite`` with ftlink/* links into store/ deleted the weights."""
    store, view = tmp_path / "store", tmp_path / "ftlink"
    store.mkdir()
    view.mkdir()
    for name in ("model.safetensors", "config.json"):
        (store / name).write_bytes(b"x")
        (view / name).symlink_to(store / name)
    with pytest.raises(SubnetvizError, match=r"model\.safetensors, which the input .*ftlink reads") as exc:
        check_out(str(store), overwrite=True, inputs=[str(view)])
    assert "\n" not in str(exc.value)
    # a link to a folder above the files counts too; a folder of its own next to them does not
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "w").mkdir()
    (tmp_path / "deep" / "w" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "model.safetensors").symlink_to(tmp_path / "deep" / "w" / "model.safetensors")
    with pytest.raises(SubnetvizError, match="which the input"):
        check_out(str(tmp_path / "deep"), overwrite=True, inputs=[str(tmp_path / "v2")])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.csv").write_text("earlier result")
    assert check_out(str(tmp_path / "other"), overwrite=True, inputs=[str(view)]) == tmp_path / "other"


def test_an_out_inside_an_input_folder_is_still_allowed(tmp_path):
    """Listing a folder's entries must not refuse an earlier result kept inside the input folder."""
    base = tmp_path / "base"
    (base / "analysis").mkdir(parents=True)
    (base / "model.safetensors").write_bytes(b"x")
    (base / "analysis" / "summary.json").write_text("earlier")
    assert check_out(str(base / "analysis"), overwrite=True, inputs=[str(base)]) == base / "analysis"


# --- 5. a Ctrl-C a library swallows ---------------------------------------------------------------------------------
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)


def _interrupted_in_a_callback(x: int) -> int:
    """A Python callback called from C (as LLVM calls numba's object cache while it compiles), in which Ctrl-C
    arrives: Python can only print its KeyboardInterrupt and drop it."""
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)
    return x


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # (no traceback printed)
@pytest.mark.usefixtures("terminal_sigint")
def test_a_ctrl_c_swallowed_by_a_callback_then_failed_on_is_one_line_and_130(tmp_path, monkeypatch, capsys):
    """numba then raised 'RuntimeError: no compiled object yet': 50 lines of traceback and exit 1."""
    callback = _CALLBACK(_interrupted_in_a_callback)

    def compiling(args):
        callback(3)
        raise RuntimeError("no compiled object yet for <Library 'pack_bits'>")

    monkeypatch.setattr(cli, "cmd_analyze", compiling)
    assert cli.main(["analyze", "a", "b", "--out", str(tmp_path / "out")]) == 130
    out, err = capsys.readouterr()
    assert _lines(err) == ["interrupted: nothing was written."], err
    assert "Traceback" not in out + err


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # (no traceback printed)
@pytest.mark.usefixtures("terminal_sigint")
def test_a_ctrl_c_swallowed_by_a_callback_publishes_nothing(tmp_path, monkeypatch, capsys):
    """A run whose interrupt was dropped went on, published --out and exited 0."""
    from subnetviz.cli.common import progress_bar

    callback = _CALLBACK(_interrupted_in_a_callback)
    steps = []

    def runs_on(args):
        out = check_out(args.out, args.overwrite)
        callback(3)  # swallowed: the command goes on
        bar = progress_bar("analyze")
        try:
            bar(1, 2, "a tensor")
            steps.append("went on")
        finally:
            with publish(out, args.overwrite) as tmp:
                (tmp / "summary.json").write_text("{}")
        return 0

    monkeypatch.setattr(cli, "cmd_analyze", runs_on)
    out = tmp_path / "out"
    assert cli.main(["analyze", "a", "b", "--out", str(out)]) == 130
    assert not out.exists() and steps == [] and list(tmp_path.iterdir()) == []
    err = capsys.readouterr().err
    assert "Traceback" not in err and _lines(err)[-1] == "interrupted: nothing was written."


@pytest.mark.usefixtures("terminal_sigint")
def test_the_default_handler_is_back_after_a_command(monkeypatch):
    monkeypatch.setattr(cli, "cmd_runs", lambda args: 0)
    hook = sys.unraisablehook
    assert cli.main(["runs"]) == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and sys.unraisablehook is hook


# --- 6. Ctrl-C during demo build -----------------------------------------------------------------------------------
def test_an_interrupted_demo_build_says_where_and_that_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    """It said "interrupted: nothing was written." while stages 1-4 were on disk and the next build reused them."""
    import subnetviz.demo.build as build

    def stopped_at_stage_five(root=None, *, progress=None, **kw):
        for step in range(1, 6):
            progress(step, 11, f"stage {step}")
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "build_zoo", stopped_at_stage_five)
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path))
    assert cli.main(["demo", "build", "--preset", "micro"]) == 130
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("interrupted at [5/11] stage 5;"), err
    assert "kept in" in err[0] and "resumes" in err[0] and "nothing was written" not in err[0]


# --- 8. --mask with '=' in a path ----------------------------------------------------------------------------------
def test_a_mask_path_with_an_equals_sign_is_a_path(tmp_path, monkeypatch, capsys):
    """``sweep/lr=1e-5/mask.safetensors`` was split into the name 'sweep/lr' and the path '1e-5/mask.safetensors'."""
    from subnetviz.cli.analysis import _mask_specs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "lr=1e-5.safetensors").write_bytes(b"x")  # a file of that name here: read whole
    got = _mask_specs(
        ["sweep/lr=1e-5/mask.safetensors", "m1=sweep/lr=1e-5/other.safetensors", "lr=1e-5.safetensors", "t=topk:0.1"]
    )
    assert got == {
        "mask": "sweep/lr=1e-5/mask.safetensors",
        "m1": "sweep/lr=1e-5/other.safetensors",
        "lr=1e-5": "lr=1e-5.safetensors",
        "t": "topk:0.1",
    }
    with pytest.raises(SystemExit):
        cli.main(["behavior", "--help"])
    assert "before the first '=' holds a '/', is read whole as a path" in " ".join(capsys.readouterr().out.split())


# --- 9. stdout that cannot encode a label --------------------------------------------------------------------------
def test_a_label_stdout_cannot_encode_is_escaped_not_a_failure(monkeypatch):
    """``PYTHONIOENCODING=ascii analyze ... --labels é`` exited 1 with a UnicodeEncodeError after --out was written."""
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii", errors="strict"))

    def prints_a_label(args):
        print("model sparsity\n    é 0.5")
        return 0

    monkeypatch.setattr(cli, "cmd_analyze", prints_a_label)
    assert cli.main(["analyze", "a", "b", "--out", "x"]) == 0
    sys.stdout.flush()
    assert raw.getvalue().decode("ascii").splitlines()[-1] == "    \\xe9 0.5"


# --- 10. library bars and warnings ---------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", [["behavior", "b", "f", "--out", "o", "--seed", "-1"], ["experiment", "drivers"]])
def test_behavior_and_experiment_turn_the_library_bars_and_the_deprecation_warning_off(verb, monkeypatch, capsys):
    from transformers.utils import logging as hf_logging

    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(var, raising=False)
    if verb[0] == "experiment":  # stops right after the libraries are told (its --out check)
        verb = [*verb, "--out", "x"]
        monkeypatch.setattr("subnetviz.cli.analysis.check_out", lambda *a: (_ for _ in ()).throw(ConfigError("stop")))
    hf_logging.enable_progress_bar()
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert cli.main(verb) == 2
            warnings.warn("`is_gradient_checkpointing` is deprecated and removed in v6.", FutureWarning, stacklevel=1)
            warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
        assert not hf_logging.is_progress_bar_enabled()
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
        assert [str(w.message) for w in seen] == ["another FutureWarning"]
    finally:
        hf_logging.enable_progress_bar()
    capsys.readouterr()


# --- 11. the small items -------------------------------------------------------------------------------------------
def test_a_home_that_is_a_file_names_the_variable(tmp_path, monkeypatch, capsys):
    """It read 'cannot complete /…/env.sh: File exists (errno 17).'"""
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "file"))
    assert cli.main(["runs"]) == 2
    err = _lines(capsys.readouterr().err)
    assert err == [f"error: SUBNETVIZ_HOME={tmp_path / 'file'}: a file, not a folder; set SUBNETVIZ_HOME to a folder."]


def test_demo_path_prints_a_home_it_cannot_create(tmp_path, monkeypatch, capsys):
    """``demo path`` only prints a folder; it failed with 'cannot complete …: Operation not permitted'."""
    (tmp_path / "file").write_text("x")
    home = tmp_path / "file" / "home"  # under a file: no one can create it, root neither
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    assert cli.main(["demo", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(home / "zoo") and not home.exists()
    assert cli.main(["runs"]) == 2  # a command that needs it says so, naming the variable
    assert capsys.readouterr().err.startswith(f"error: SUBNETVIZ_HOME={home}: cannot create the folder")


def test_a_command_failing_on_its_input_leaves_no_parents_of_its_out(tmp_path, monkeypatch, capsys):
    """``analyze nope FT --out lit/a/b/out`` left lit/a/b."""
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "cpu")
    out = str(tmp_path / "lit" / "a" / "b" / "out")
    assert cli.main(["analyze", str(tmp_path / "nope"), str(tmp_path / "nope2"), "--out", out]) == 2
    assert not (tmp_path / "lit").exists()
    assert "nope" in capsys.readouterr().err


def test_an_out_under_a_file_is_said_before_the_work(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SubnetvizError, match=r"cannot write there \(.*f is a file, not a folder\)"):
        check_out(str(tmp_path / "f" / "a" / "out"), overwrite=False)


def test_mask_info_expands_a_quoted_tilde_and_refuses_a_destination(tmp_path, monkeypatch, capsys):
    import json

    from subnetviz.masks import MaskSet, save_mask_set

    save_mask_set(tmp_path / "m.safetensors", MaskSet({"w": torch.tensor([True, False, False, True])}, {}))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cli.main(["mask", "info", "~/m.safetensors"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 2 and info["numel"] == 4
    for extra in (["dst.safetensors"], ["--overwrite"]):
        assert cli.main(["mask", "info", "~/m.safetensors", *extra]) == 2
        err = _lines(capsys.readouterr().err)
        assert len(err) == 1 and "mask info reads one file" in err[0] and "mask import" in err[0], err
    assert not (tmp_path / "dst.safetensors").exists()


# --- end to end, on tiny planted Llamas ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A bf16 base and two finetunes; finetune j moves 3 + 2·j + (i mod 4) random entries of tensor i by 1 ULP."""
    root = tmp_path_factory.mktemp("cli2")
    base = make_tiny_llama(root / "base", seed=0)
    sd = read_state_dict(base)
    fts, masks = [], []
    for j in range(2):
        g = torch.Generator().manual_seed(10 + j)
        out, mask = {}, {}
        for i, name in enumerate(sorted(sd)):
            flat = sd[name].clone().reshape(-1)
            idx = torch.randperm(flat.numel(), generator=g)[: 3 + 2 * j + i % 4]
            flat[idx] = bf16_step(flat[idx], 1)
            out[name] = flat.reshape(sd[name].shape)
            mask[name] = (out[name].view(torch.int16) != sd[name].view(torch.int16)).numpy()
        ft = write_folder(root / f"ft{j}", out, config_from=base)
        for f in [*base.glob("tokenizer*"), *base.glob("special_tokens_map.json")]:
            shutil.copy(f, ft / f.name)
        fts.append(ft)
        masks.append(mask)
    return {"root": root, "base": base, "fts": fts, "masks": masks, "sd": sd}


@pytest.fixture()
def env(planted, tmp_path, monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_analyze_into_a_link_to_an_empty_folder_writes_there(planted, env, capsys):
    """The whole analysis ran, then: 'error: --out lk_link: cannot write the result (Not a directory).'"""
    target, link = env / "scratch" / "results", env / "results"
    target.mkdir(parents=True)
    link.symlink_to(target)
    args = [str(planted["base"]), *map(str, planted["fts"]), "--out", str(link), "--no-spectra", "--subspaces", "0"]
    assert cli.main(["analyze", *args]) == 0, capsys.readouterr().err
    assert link.is_symlink() and os.path.realpath(link) == str(target)
    summary = json.loads((target / "summary.json").read_text())
    for j, ft in enumerate(planted["masks"]):
        changed = sum(int(m.sum()) for m in ft.values())
        assert summary["models"][f"ft{j}"]["changed"] == changed


def test_overwrite_of_the_folder_an_inputs_links_read_is_refused_before_any_work(planted, env, capsys):
    """``ftlink/*`` linked into ``store/``: ``--out store --overwrite`` deleted the weights, saying 'wrote store'."""
    store, view = env / "store", env / "ftlink"
    shutil.copytree(planted["fts"][0], store)
    view.mkdir()
    for f in store.iterdir():
        (view / f.name).symlink_to(f)
    before = sorted(p.name for p in store.iterdir())
    assert cli.main(["analyze", str(planted["base"]), str(view), "--out", str(store), "--overwrite"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "which the input" in err[0] and str(view) in err[0], err
    assert sorted(p.name for p in store.iterdir()) == before and (view / "model.safetensors").resolve().is_file()


def test_overlap_consensus_has_layer_and_module_columns_with_the_planted_counts(planted, env, capsys):
    """The ``group`` column held Python tuple text ("(None, 'lm_head')") that a script had to evaluate."""
    out = env / "out"
    args = [str(planted["base"]), *map(str, planted["fts"]), "--out", str(out), "--no-spectra", "--subspaces", "0"]
    assert cli.main(["analyze", *args]) == 0, capsys.readouterr().err
    cons = pd.read_csv(out / "overlap_consensus.csv")
    assert list(cons.columns) == ["layer", "module", "k", "count"]
    assert not cons["module"].astype(str).str.contains(r"[()']").any()
    # independent: per layer (the number in the tensor's name, none for embeddings, final norm and head) and k,
    # the entries that exactly k of the planted masks hold
    expected: dict[tuple, int] = {}
    for name in planted["sd"]:
        k = sum(m[name].astype(int) for m in planted["masks"])
        layer = re.search(r"\.layers\.(\d+)\.", name)
        key = int(layer.group(1)) if layer else -1
        for kk in range(3):
            expected[key, kk] = expected.get((key, kk), 0) + int((k == kk).sum())
    got = cons.assign(layer=cons["layer"].fillna(-1).astype(int)).groupby(["layer", "k"])["count"].sum()
    assert got.to_dict() == expected


def test_behavior_records_its_inputs_and_each_prompts_file_and_line(planted, env, monkeypatch, capsys):
    """No file in the folder named the prompt files, --limit or --seed; prompts were numbered 0…N−1 across files."""
    monkeypatch.setenv("HOME", str(env))
    shutil.copytree(planted["base"], env / "base")
    (env / "pa.jsonl").write_text("\n".join(json.dumps({"prompt": f"{a}+1=", "answer": str(a + 1)}) for a in (1, 2, 3)))
    # a blank line first: the line numbers are the file's, not the count of prompts read
    (env / "pb.jsonl").write_text("\n" + "\n".join(json.dumps({"prompt": f"{a}+2="}) for a in (4, 5, 6)) + "\n")
    mask = env / "sweep" / "lr=1e-5" / "mask.safetensors"  # a run folder named after its settings
    mask.parent.mkdir(parents=True)
    write_half_mask(mask, planted["base"])
    monkeypatch.chdir(env)
    out = env / "beh"
    args = ["~/base", str(planted["fts"][0]), "--prompts", "~/pa.jsonl", "pb.jsonl", "--limit", "2", "--seed", "7"]
    args += ["--curve", "0", "1", "--no-random", "--mask", "sweep/lr=1e-5/mask.safetensors", "--out", str(out)]
    assert cli.main(["behavior", *args]) == 0, capsys.readouterr().err
    params = json.loads((out / "behavior.json").read_text())["params"]
    assert params["prompts"] == [str(env / "pa.jsonl"), "pb.jsonl"]
    assert params["prompt_files"] == [
        {"set": "pa", "path": str(env / "pa.jsonl"), "prompts": 2},
        {"set": "pb", "path": str(env / "pb.jsonl"), "prompts": 2},
    ]
    assert (params["limit"], params["seed"], params["curve"]) == (2, 7, [0.0, 1.0])
    assert params["masks"] == {"mask": "sweep/lr=1e-5/mask.safetensors"} and params["random_control"] is False
    assert params["base"] == str(env / "base") and params["device_used"] == "cpu"
    prompts = pd.read_csv(out / "prompts.csv")
    ft = prompts[prompts["experiment"] == "finetuned"]
    rows = list(zip(ft["prompt"], ft["set"], ft["line"], strict=True))
    assert rows == [(0, "pa", 1), (1, "pa", 2), (2, "pb", 2), (3, "pb", 3)]
    assert set(prompts["experiment"]) >= {"finetuned", "mask/inside", "mask/outside"}
    tokens = pd.read_csv(out / "tokens.csv")
    per_prompt = tokens.groupby("prompt")["set"].unique().map(list).to_dict()
    assert per_prompt == {0: ["pa"], 1: ["pa"], 2: ["pb"], 3: ["pb"]}
    # the prompt's tokens are those of its own file's line: the char tokenizer gives one token per character
    first = tokens[(tokens["prompt"] == 2) & (tokens["experiment"] == "finetuned")]
    assert "".join(t for t in first["token"] if t not in ("<bos>", "<eos>")) == "4+2="
    assert np.isfinite(ft["kl_forward"]).all()
