"""``python -m subnetviz analyze BASE FT1 FT2 --out DIR`` end to end on planted checkpoints.

Proves: tensors.csv holds one row per tensor per model with the planted changed counts and, for
2-D tensors, ``rank`` equal to ``torch.linalg.matrix_rank`` of Δ; summary.json holds each model's
exact sparsity; the update masks are the planted positions; the overlap tables count the planted
intersection; a second identical run is served from the cache (the cached entry is not rewritten);
a failing analysis writes nothing to DIR.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from subnetviz.__main__ import main
from subnetviz.masks import load_mask_set
from tests.ckpt_fixtures import bf16_step, read_state_dict, write_folder

REPO = Path(__file__).resolve().parents[2]
LOW_RANK = "model.layers.0.mlp.up_proj.weight"  # ft1 changes only rows 3 and 7 of it: rank 2


def _plant(sd, seed, k_of):
    """Move k_of(i) random entries of tensor i by 1 ULP; returns the new state dict and the masks."""
    gen = torch.Generator().manual_seed(seed)
    out, masks = {}, {}
    for i, name in enumerate(sorted(sd)):
        t = sd[name].clone()
        flat = t.reshape(-1)
        idx = torch.randperm(flat.numel(), generator=gen)[: k_of(i)]
        flat[idx] = bf16_step(flat[idx], 1)
        out[name] = t
        masks[name] = t.view(torch.int16) != sd[name].view(torch.int16)
    return out, masks


@pytest.fixture(scope="module")
def planted(ckpt_zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    base = read_state_dict(ckpt_zoo.llama)
    ft1, m1 = _plant(base, 1, lambda i: 5 * (i % 3))
    ft1[LOW_RANK] = base[LOW_RANK].clone()
    ft1[LOW_RANK][[3, 7], ::3] = bf16_step(base[LOW_RANK][[3, 7], ::3], 2)
    m1[LOW_RANK] = ft1[LOW_RANK].view(torch.int16) != base[LOW_RANK].view(torch.int16)
    ft2, m2 = _plant(base, 2, lambda i: 4 + i % 2)
    p1 = write_folder(root / "ft1", ft1, ckpt_zoo.llama)
    p2 = write_folder(root / "ft2", ft2, ckpt_zoo.llama)
    return {"root": root, "base": base, "fts": [ft1, ft2], "masks": [m1, m2], "paths": [p1, p2]}


def _run(args, home):
    env = {**os.environ, "SUBNETVIZ_HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "subnetviz", "analyze", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def cli_runs(ckpt_zoo, planted):
    home = planted["root"] / "home"
    outs = [planted["root"] / "out1", planted["root"] / "out2"]
    procs = []
    for out in outs:
        procs.append(_run([ckpt_zoo.llama, *planted["paths"], "--out", out], home))
        entries = sorted((home / "cache" / "updates").iterdir()) if (home / "cache" / "updates").exists() else []
        procs[-1].cache = {e.name: (e / "summary.json").stat().st_mtime_ns for e in entries}
    return procs, outs


@pytest.mark.slow
def test_cli_writes_tables_masks_and_overlap(cli_runs, planted):
    procs, outs = cli_runs
    assert procs[0].returncode == 0, procs[0].stderr[-3000:]
    out = outs[0]
    base, fts, masks = planted["base"], planted["fts"], planted["masks"]
    labels = ["ft1", "ft2"]
    df = pd.read_csv(out / "tensors.csv")
    assert {"model", "name", "layer", "module", "shape", "numel", "changed", "rank"} <= set(df.columns)
    assert len(df) == 2 * len(base)
    for label, ft, mk in zip(labels, fts, masks, strict=True):
        sub = df[df["model"] == label].set_index("name")
        assert {n: int(c) for n, c in sub["changed"].items()} == {n: int(m.sum()) for n, m in mk.items()}
        assert {n: int(c) for n, c in sub["numel"].items()} == {n: t.numel() for n, t in base.items()}
        for name, a in base.items():
            if a.dim() != 2:
                assert pd.isna(sub.loc[name, "rank"]), name
                continue
            want = int(torch.linalg.matrix_rank(ft[name].float() - a.float()))
            assert int(sub.loc[name, "rank"]) == want, (label, name)
    assert int(df.set_index(["model", "name"]).loc[("ft1", LOW_RANK), "rank"]) == 2
    summary = json.loads((out / "summary.json").read_text())
    n = sum(t.numel() for t in base.values())
    for label, mk in zip(labels, masks, strict=True):
        assert summary["sparsity"][label] == 1.0 - sum(int(m.sum()) for m in mk.values()) / n
        ms = load_mask_set(out / summary["mask_files"][label])
        assert set(ms.masks) == set(mk) and all(torch.equal(ms.masks[k], mk[k]) for k in mk)
    pair = pd.read_csv(out / "overlap_pairwise.csv").iloc[0]
    inter = sum(int((masks[0][k] & masks[1][k]).sum()) for k in base)
    assert int(pair["intersection"]) == inter
    assert int(pair["count_a"]) == sum(int(m.sum()) for m in masks[0].values())
    for f in ("overlap_sizes.csv", "overlap_regions.csv", "overlap_consensus.csv"):
        assert (out / f).is_file()


@pytest.mark.slow
def test_second_identical_run_is_served_from_the_cache(cli_runs):
    procs, outs = cli_runs
    assert procs[1].returncode == 0, procs[1].stderr[-3000:]
    assert len(procs[0].cache) == 1 and procs[1].cache == procs[0].cache  # same entry, not rewritten
    for f in ("tensors.csv", "summary.json"):
        assert (outs[0] / f).read_text() == (outs[1] / f).read_text()


def _no_trace(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize("no_cache", [False, True])
def test_nan_in_the_second_model_writes_nothing(ckpt_zoo, planted, tmp_path, capsys, no_cache):
    sd = {k: v.clone() for k, v in planted["fts"][1].items()}
    sd["model.layers.1.self_attn.o_proj.weight"][2, 2] = float("nan")
    bad = write_folder(tmp_path / "ft_nan", sd, ckpt_zoo.llama)
    out = tmp_path / "out"
    args = ["analyze", str(ckpt_zoo.llama), str(planted["paths"][0]), str(bad), "--out", str(out), "--no-spectra"]
    assert main(args + (["--no-cache"] if no_cache else [])) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "o_proj" in err and "ft_nan" in err
    _no_trace(out)


def test_truncated_file_writes_nothing(ckpt_zoo, planted, tmp_path, capsys):
    data = (planted["paths"][1] / "model.safetensors").read_bytes()
    bad = tmp_path / "cut"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(data[: len(data) * 3 // 4])
    out = tmp_path / "out"
    assert main(["analyze", str(ckpt_zoo.llama), str(bad), "--out", str(out)]) == 2
    assert "truncated" in capsys.readouterr().err
    _no_trace(out)


def test_existing_out_survives_a_failed_run(ckpt_zoo, planted, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["analyze", str(ckpt_zoo.llama), str(planted["paths"][0]), "--out", str(out), "--no-spectra"]) == 0
    before = (out / "summary.json").read_text()
    capsys.readouterr()
    assert main(["analyze", str(ckpt_zoo.llama), str(tmp_path / "missing"), "--out", str(out), "--overwrite"]) == 2
    assert "missing" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before


def test_existing_folder_with_the_users_files_is_never_deleted(ckpt_zoo, planted, tmp_path, capsys):
    """``analyze … --out DIR`` used to delete an existing DIR with the user's files in it and exit 0."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    args = ["analyze", str(ckpt_zoo.llama), str(planted["paths"][0]), "--out", str(out), "--no-spectra"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err and "--overwrite" in err
    assert (out / "notes.txt").read_text() == "my notes"
    assert main([*args, "--overwrite"]) == 0  # asked for: replaced whole, never half
    assert (out / "summary.json").is_file() and not (out / "notes.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("where", ["the finetune", "a folder holding the inputs", "the working folder"])
def test_overwrite_never_deletes_an_input(ckpt_zoo, planted, tmp_path, capsys, monkeypatch, where):
    """``--overwrite`` replaces the folder whole: given the finetune's own folder (or one that holds it, or the
    working folder) it deleted the checkpoint once the result was written, and exited 0."""
    import shutil

    inputs = tmp_path / "work"
    shutil.copytree(ckpt_zoo.llama, inputs / "base")
    shutil.copytree(planted["paths"][0], inputs / "ft")
    monkeypatch.chdir(inputs)
    out = {"the finetune": inputs / "ft", "a folder holding the inputs": inputs, "the working folder": Path(".")}[where]
    args = ["analyze", str(inputs / "base"), str(inputs / "ft"), "--out", str(out), "--overwrite", "--no-spectra"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "replacing it would delete that" in err and err.count("\n") == 1, err
    assert (inputs / "ft" / "model.safetensors").is_file() and (inputs / "base" / "config.json").is_file()


def test_a_result_written_meanwhile_is_not_replaced(tmp_path):
    """Two runs to one new --out: both passed the check before the work, and the later one replaced the earlier's
    result at the end, without --overwrite. Now the later one fails, saying so, and the earlier result stays."""
    from subnetviz.cli.common import publish
    from subnetviz.errors import SubnetvizError

    out = tmp_path / "out"
    with pytest.raises(SubnetvizError, match="another result was written there while this one ran") as err:
        with publish(out, overwrite=False) as tmp:
            (tmp / "summary.json").write_text("mine")
            out.mkdir()
            (out / "summary.json").write_text("theirs")  # the other run's result, published first
    assert "\n" not in str(err.value) and (out / "summary.json").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left
    with publish(tmp_path / "empty", overwrite=False) as tmp:  # an empty folder is taken
        (tmp_path / "empty").mkdir()
        (tmp / "a").write_text("x")
    assert (tmp_path / "empty" / "a").read_text() == "x"


def test_out_naming_a_file_is_one_line(ckpt_zoo, planted, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["analyze", str(ckpt_zoo.llama), str(planted["paths"][0]), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "a file is there" in err and err.count("\n") == 1
    assert target.read_text() == "x"


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS", "EACCES"])
def test_full_or_read_only_file_system_is_one_line(ckpt_zoo, planted, tmp_path, capsys, monkeypatch, code):
    """A full, read-only or forbidden file system while the result is written (simulated: CI runs as
    root, which writes through permissions): one line, exit 2, nothing half-written left at --out."""
    import errno

    from subnetviz import cache

    real = cache.write_manifest

    def full(folder):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(folder))

    monkeypatch.setattr(cache, "write_manifest", full)
    out = tmp_path / "out"
    rc = main(
        [
            "analyze",
            str(ckpt_zoo.llama),
            str(planted["paths"][1]),
            "--out",
            str(out),
            "--no-spectra",
            "--tolerances",
            "1e-6",
        ]
    )
    monkeypatch.setattr(cache, "write_manifest", real)
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert rc == 2 and len(errors) == 1 and errors[0].startswith("error: cannot complete")
    assert os.strerror(getattr(errno, code)) in errors[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("verb", ["behavior", "experiment", "report"])
def test_every_writing_verb_keeps_a_users_output(verb, tmp_path, capsys):
    """``behavior`` and ``experiment`` replaced an existing --out folder, ``report`` an existing file,
    without being asked; now each stops before any work, in one line, and keeps it."""
    mine = tmp_path / "mine"
    if verb == "report":
        mine.write_text("<html>my report</html>")
        args = ["report", str(tmp_path / "no-analysis"), "--out", str(mine)]
    else:
        mine.mkdir()
        (mine / "notes.txt").write_text("my notes")
        rest = ["drivers"] if verb == "experiment" else [str(tmp_path / "base"), str(tmp_path / "ft")]
        args = [verb, *rest, "--out", str(mine)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and str(mine) in err
    if verb == "report":
        assert mine.read_text() == "<html>my report</html>"
    else:
        assert (mine / "notes.txt").read_text() == "my notes"


@pytest.mark.parametrize(
    "args, says",
    [
        (["--mask-tolerance", "nan"], "mask tolerance must be finite and >= 0, got nan"),
        (["--mask-tolerance", "-1"], "mask tolerance must be finite and >= 0, got -1.0"),
    ],
)
def test_a_mask_tolerance_no_mask_can_have_is_one_line(ckpt_zoo, planted, tmp_path, capsys, args, says):
    """NaN saved every mask empty, -1 marked unchanged entries as updated (|Δ| = 0 > -1): both exited 0."""
    out = tmp_path / "out"
    assert main(["analyze", str(ckpt_zoo.llama), str(planted["paths"][0]), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert says in err and not out.exists()


def test_a_bad_subspace_k_is_refused_before_the_update_pass(ckpt_zoo, tmp_path, capsys, monkeypatch):
    """--subspaces -1 was refused only after the whole update pass had run (minutes on a 7B pair)."""
    from subnetviz.analysis import updates

    monkeypatch.setattr(updates, "analyze_updates", lambda *a, **k: pytest.fail("the update pass ran"))
    monkeypatch.setattr(updates, "cached_analysis", lambda *a, **k: pytest.fail("the update pass ran"))
    out = tmp_path / "o"
    assert main(["analyze", str(ckpt_zoo.llama), str(ckpt_zoo.llama), "--out", str(out), "--subspaces", "-1"]) == 2
    assert "subspace K must be >= 1, got -1" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("seeds", ["0", "-1"])
def test_drivers_with_no_seeds_is_one_line(tmp_path, capsys, seeds):
    """'--seeds -1' (or 0) wrote an empty results.csv and verdicts of 'nan%' and exited 0."""
    assert main(["experiment", "drivers", "--out", str(tmp_path / "ex"), "--seeds", seeds]) == 2
    assert f"seeds must be a whole number >= 1, got {seeds}" in capsys.readouterr().err
    assert not (tmp_path / "ex").exists()


@pytest.mark.parametrize(
    "file, text",
    [
        ("summary.json", "{not json"),
        ("summary.json", "[1, 2]"),
        ("summary.json", '{"labels": "x"}'),
        ("summary.json", "[" * 100_000 + "]" * 100_000),
        ("tensors.csv", ""),
        ("tensors.csv", "a,b\n1,2\n"),
        ("spectra.csv", 'model,name\n"unterminated,x\n'),
        ("overlap_pairwise.csv", 'a,"b\n'),
    ],
)
def test_report_of_a_hand_edited_folder_is_one_line(cli_runs, tmp_path, capsys, file, text):
    """'report DIR' reads a folder someone else may have edited: each of these ended in a traceback (exit 1)."""
    import shutil

    folder = tmp_path / "edited"
    shutil.copytree(cli_runs[1][0], folder)
    (folder / file).write_text(text)
    (folder / ".manifest.json").unlink()  # the parsers themselves (with it, the manifest check refuses first)
    assert main(["report", str(folder), "--out", str(tmp_path / "d.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and not (tmp_path / "d.html").exists(), err[-400:]


@pytest.mark.parametrize("manifest", [True, False])
def test_report_of_a_cut_copy_is_refused_not_drawn(cli_runs, tmp_path, capsys, manifest):
    """A copy of an analysis folder whose tensors.csv was cut short (at a line end, so it parses) read as a
    normal dashboard with other numbers, exit 0. The manifest says what was written; without one, the rows
    must add up to each model's parameters in summary.json."""
    import shutil

    folder = tmp_path / "cut"
    shutil.copytree(cli_runs[1][0], folder)
    lines = (folder / "tensors.csv").read_text().splitlines(keepends=True)
    (folder / "tensors.csv").write_text("".join(lines[: len(lines) // 2]))
    if not manifest:
        (folder / ".manifest.json").unlink()
    assert main(["report", str(folder), "--out", str(tmp_path / "d.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not (tmp_path / "d.html").exists()
    assert ("tensors.csv has" in err and "were written" in err) if manifest else "summary.json says" in err, err


def test_report_holds_every_result_analyze_wrote(cli_runs, tmp_path):
    """The report left out the UpSet regions, the consensus and the subspaces that `analyze` writes beside it."""
    out = tmp_path / "d.html"
    assert main(["report", str(cli_runs[1][0]), "--out", str(out)]) == 0
    html = out.read_text()
    for what in ("Intersections of masks (UpSet)", "Consensus: in how many masks", "Subspaces of W_base vs W_ft"):
        assert what in html, what
    assert "ft1: largest principal angle" in html and "Principal angles and singular-value ratios" in html


def test_report_never_writes_into_the_folder_it_reads(cli_runs, tmp_path, capsys):
    """'report DIR --out DIR/summary.json --overwrite' replaced the analysis' own summary with HTML."""
    import shutil

    folder = tmp_path / "an"
    shutil.copytree(cli_runs[1][0], folder)
    before = (folder / "summary.json").read_bytes()
    assert main(["report", str(folder), "--out", str(folder / "summary.json"), "--overwrite"]) == 2
    assert "inside the analysis folder" in capsys.readouterr().err
    assert (folder / "summary.json").read_bytes() == before
    assert main(["report", str(folder), "--out", str(tmp_path)]) == 2
    assert "a folder is there; name the HTML file" in capsys.readouterr().err


@pytest.mark.parametrize("raised, code, says", [(KeyboardInterrupt, 130, "interrupted"), (BrokenPipeError, 141, "")])
def test_ctrl_c_and_a_closed_pipe_are_no_tracebacks(monkeypatch, capsys, raised, code, says):
    """Ctrl-C printed a KeyboardInterrupt traceback (exit 130); 'runs | head' said 'cannot complete: Broken pipe'."""
    from subnetviz import cli

    def boom(args):
        raise raised

    parser = cli.build_parser()
    args = parser.parse_args(["runs"])
    args.func = boom  # what the verb raises, from inside its work
    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(parser, args))
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # (a closed pipe sends the rest to devnull: restored afterwards)
    assert main(["runs"]) == code
    err = capsys.readouterr().err
    assert (says in err and err.count("\n") == 1) if says else "Traceback" not in err


class _Fixed:
    def __init__(self, parser, args):
        self.parser, self.args = parser, args

    def parse_known_args(self, argv):
        return self.args, []

    def error(self, message):
        raise AssertionError(message)


def test_an_out_that_cannot_be_written_is_said_before_the_work(ckpt_zoo, planted, tmp_path, capsys):
    """A parent that is a file, or a link to nothing, was found only after the whole analysis had run (and then
    named the temporary folder)."""
    (tmp_path / "somefile").write_text("x")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    for out, says in ((tmp_path / "somefile" / "sub", "cannot write there"), (tmp_path / "gone", "a link to nothing")):
        assert main(["analyze", str(ckpt_zoo.llama), str(planted["paths"][0]), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert says in err and "analyze:" not in err and ".tmp-" not in err, err


def test_what_a_killed_run_left_beside_its_out_is_cleared(tmp_path):
    """A SIGKILL between 'move the old result aside' and 'put the new one in place' left --out missing and the old
    result under a hidden name; a kill during the copy left a temporary folder: both stayed for good."""
    from subnetviz.cli.common import check_out

    dead = 4_194_301  # above Linux's largest pid: no such process
    out = tmp_path / "out"
    old = tmp_path / f".out.old-{dead}-1"
    old.mkdir()
    (old / "summary.json").write_text("the earlier result")
    (tmp_path / f".out.tmp-{dead}-2").mkdir()
    (tmp_path / f".other.tmp-{dead}-3").mkdir()  # another output's: not this one's to clear
    with pytest.raises(Exception, match="not empty"):
        check_out(str(out), overwrite=False)
    assert (out / "summary.json").read_text() == "the earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".other.tmp-{dead}-3", "out"]


def test_an_error_is_one_line_whatever_a_library_put_in_it(monkeypatch, capsys):
    from subnetviz import cli
    from subnetviz.errors import ConfigError

    def boom(args):
        raise ConfigError("base: no tokenizer (transformers said:\n  line one\n  line two)")

    parser = cli.build_parser()
    args = parser.parse_args(["runs"])
    args.func = boom
    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(parser, args))
    assert main(["runs"]) == 2
    assert capsys.readouterr().err == "error: base: no tokenizer (transformers said: line one line two)\n"


def test_a_checkpoint_named_again_is_said(ckpt_zoo, planted, tmp_path, capsys):
    """The base's own shard index and a finetune's folder named again by its file are compared as named (four
    rows), each repeat said on stderr: the rows read ``llama`` (0 changed) and ``ft1``, ``ft1-2`` with nothing
    telling that the first is the base against itself and the last a second row of one model."""
    index = ckpt_zoo.llama / "model.safetensors.index.json"
    ft1 = planted["paths"][0]
    ft1_file = next(ft1.glob("*.safetensors"))
    out = tmp_path / "out"
    args = ["analyze", str(ckpt_zoo.llama), str(index), str(ft1), str(planted["paths"][1]), str(ft1_file)]
    assert main([*args, "--out", str(out), "--no-spectra"]) == 0
    err = capsys.readouterr().err
    notes = [x for x in err.splitlines() if x.startswith("note: ") and "same weights" in x]
    assert notes == [
        f"note: {index} reads the same weights as the base: its row compares the base with itself.",
        f"note: {ft1_file} reads the same weights as {ft1}, named before it: its row repeats that one.",
    ]
    sparsity = json.loads((out / "summary.json").read_text())["sparsity"]
    assert len(sparsity) == 4 and sparsity["llama"] == 1.0 and sparsity["ft1"] == sparsity["ft1-2"] < 1.0


@pytest.mark.parametrize("tol", [None, 1e-5])
def test_the_report_says_which_entries_the_update_masks_hold(ckpt_zoo, planted, tmp_path, tol):
    """``report`` of an ``analyze --mask-tolerance T`` folder drew the overlap of masks taken at |Δ| > T under a
    Summary of exact counts, T said nowhere: the Parameters table and the overlap section now name the rule."""
    import html
    import re

    out, page = tmp_path / "out", tmp_path / "r.html"
    extra = ["--mask-tolerance", f"{tol:g}"] if tol is not None else []
    args = ["analyze", str(ckpt_zoo.llama), *map(str, planted["paths"]), "--out", str(out), "--no-spectra"]
    assert main([*args, *extra]) == 0
    assert main(["report", str(out), "--out", str(page)]) == 0
    text = html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<script.*?</script>", "", page.read_text(), flags=re.S)))
    said = "|Δ| > 1e-05 (--mask-tolerance)" if tol is not None else "exact (bitwise: every changed entry)"
    overlap = text[text.index("Overlap of update masks") :]
    assert f"update masks {said}" in " ".join(text[: text.index("Summary")].split())  # the page's Parameters
    assert f"update masks {said}" in " ".join(overlap.split())  # and the overlap section's own


def test_the_reports_summary_leaves_out_the_papers_column_where_the_sweep_has_no_1e5(ckpt_zoo, planted, tmp_path):
    """With tolerances that leave out 1e-5, the Summary's sparsity@1e-05 column was all dashes, with no word why."""
    out, page = tmp_path / "out", tmp_path / "r.html"
    args = ["analyze", str(ckpt_zoo.llama), str(planted["paths"][0]), "--out", str(out), "--no-spectra"]
    assert main([*args, "--tolerances", "1e-3"]) == 0
    assert main(["report", str(out), "--out", str(page)]) == 0
    assert "sparsity@1e-05" not in page.read_text()
    assert main([*args, "--overwrite"]) == 0  # the default sweep holds 1e-5: the column is there
    assert main(["report", str(out), "--out", str(page), "--overwrite"]) == 0
    assert "sparsity@1e-05" in page.read_text()
