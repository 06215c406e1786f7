"""Fixes of the fourth bad-inputs review's command-line findings (3 and 4).

Proves: an empty or blank checkpoint argument (``analyze BASE "$FT"`` with ``FT`` unset) is refused in one line
before any work, in every command that takes a path: nothing is read or computed and no cache entry is left (it
compared the working folder, then failed on a model with no name, "the folder is not as `analyze` wrote it", and
left the entry); a finetuned checkpoint whose name gives a blank label is refused the same way (it was published
as a model with no name). Text from a checkpoint (a tensor's name in a note and in the progress bar's postfix, a
folder's name in an error line and in the table) reaches the terminal with its control characters (ESC, BEL,
newline, C1) as visible escapes: one line per note, no escape sequence run; ordinary Unicode is left alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from subnetviz.cli.common import shown
from tests.models import make_llama

REPO = Path(__file__).resolve().parents[2]
RENAMED = "model.layers.0.mlp.up_proj.weight"
CTRL_NAME = "model.layers.0.mlp.up\x1b[31mRED\x07_proj\n.weight"  # ESC (a colour), BEL and a newline
CTRL_SHOWN = r"model.layers.0.mlp.up\x1b[31mRED\x07_proj\x0a.weight"
RAW_CONTROL = re.compile(r"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # every C0/C1 character but \n and \r


def _cli(args, home: Path, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "SUBNETVIZ_HOME": str(home),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    return subprocess.run(
        [sys.executable, "-m", "subnetviz", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=timeout,
    )


def _cache_entries(home: Path) -> list[Path]:
    cache = home / "cache"
    return [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs4_cli")
    return {"base": make_llama(root / "base", seed=0), "ft": make_llama(root / "ft", seed=1), "root": root}


# --- 3: an empty or blank checkpoint argument ------------------------------------------------------------------------


@pytest.mark.parametrize("arg", ["", "  "])
def test_analyze_refuses_an_empty_checkpoint_argument_before_any_work(models, tmp_path, arg):
    """Run from inside a model folder, as the review did: "" was that folder, analysed in full, then refused."""
    home, out = tmp_path / "home", tmp_path / "out"
    proc = _cli(["analyze", models["base"], arg, "--out", out, "--no-spectra", "--subspaces", "0"], home, models["ft"])
    err = proc.stderr.decode()
    assert proc.returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err[-2000:]  # one line: no progress bar, no note, no traceback
    kind = "an empty argument" if not arg else "a blank argument"
    assert lines[0].startswith(f"error: analyze: FINETUNED is {kind}"), lines[0]
    assert lines[0].endswith("(an unset shell variable?); nothing was read."), lines[0]
    assert _cache_entries(home) == []
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["analyze", "", "{ft}", "--out", "{out}"], "analyze: BASE is an empty argument"),
        (["analyze", "{base}", "{ft}", " ", "--out", "{out}"], "analyze: FINETUNED #2 is a blank argument"),
        (["behavior", "{base}", "", "--out", "{out}"], "behavior: FINETUNED is an empty argument"),
        (["behavior", "{base}", "{ft}", "--prompts", "", "--out", "{out}"], "behavior: --prompts is an empty"),
        (["behavior", "{base}", "{ft}", "--mask", "m=", "--out", "{out}"], "behavior: --mask m= is an empty"),
        (["mask", "info", ""], "mask info: SRC is an empty argument"),
        (["mask", "import", "", "{out}.safetensors"], "mask import: SRC is an empty argument"),
        (["train", "--config", ""], "train: --config is an empty argument"),
        (["experiment", "drivers", "--zoo", "", "--out", "{out}"], "experiment: --zoo is an empty argument"),
        (["report", "", "--out", "{out}.html"], "report: ANALYSIS_DIR is an empty argument"),
        (["app", "--roots", ""], "app: --roots is an empty argument"),  # (the server would read the working folder)
    ],
)
def test_every_command_refuses_an_empty_path_argument(models, tmp_path, argv, said):
    home, out = tmp_path / "home", tmp_path / "out"
    args = [a.format(base=models["base"], ft=models["ft"], out=out) for a in argv]
    proc = _cli(args, home, models["ft"], timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {said}"), err[-2000:]
    assert _cache_entries(home) == []
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())


def test_a_name_that_gives_a_blank_label_is_refused_before_any_work(models, tmp_path):
    """A folder named '   ' was published as a model with no name (its mask masks/___.safetensors)."""
    blank = tmp_path / "runs" / "   "
    blank.parent.mkdir()
    blank.symlink_to(models["ft"], target_is_directory=True)
    home, out = tmp_path / "home", tmp_path / "out"
    proc = _cli(["analyze", models["base"], blank, "--out", out, "--no-spectra", "--subspaces", "0"], home)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: FINETUNED '"), err[-2000:]
    assert "is only whitespace; give each finetuned model a name with --labels" in lines[0]
    assert _cache_entries(home) == [] and not out.exists()
    # with --labels it is analysed
    proc = _cli(
        ["analyze", models["base"], blank, "--labels", "ft", "--out", out, "--no-spectra", "--subspaces", "0"], home
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]


# --- 4: control characters of a checkpoint's text -------------------------------------------------------------------


def _renamed_copy(src: Path, dst: Path) -> Path:
    """``src`` with one tensor renamed to :data:`CTRL_NAME` (its config and the rest as they are)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
    sd = load_file(src / "model.safetensors")
    sd[CTRL_NAME] = sd.pop(RENAMED)
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_a_checkpoints_control_characters_reach_the_terminal_escaped(models, tmp_path):
    base = _renamed_copy(models["base"], tmp_path / "base_ctrl")
    ft = _renamed_copy(models["ft"], tmp_path / "ft\x1b[7mX")  # its folder's name: the model's label
    home, out = tmp_path / "home", tmp_path / "out"
    proc = _cli(["analyze", base, ft, "--out", out, "--no-spectra", "--subspaces", "0"], home)
    err, stdout = proc.stderr.decode(), proc.stdout.decode()
    assert proc.returncode == 0, err[-3000:]
    # nothing a terminal acts on: no ESC, BEL, C1; the newlines end lines (and \r is the progress bar's own)
    assert not RAW_CONTROL.findall(err), RAW_CONTROL.findall(err)
    assert not RAW_CONTROL.findall(stdout), stdout
    # the note names the tensor escaped, on one line
    (note,) = [line for line in err.splitlines() if "labelled 'other'" in line]
    assert note.startswith("note: ") and CTRL_SHOWN in note and note.endswith("every module."), note
    # the progress bar's postfix showed the name (its last 40 characters), escaped too
    assert r"up\x1b[31mRED\x07_proj\x0a.weight" in err.replace("\r", "\n")
    # the table's label
    assert r"ft\x1b[7mX" in stdout

    # an error line naming a folder with a title-setting sequence in its name (OSC 0 ... BEL)
    empty = tmp_path / "ft\x1b]0;TITLE\x07\x9b2J"
    empty.mkdir()
    proc = _cli(["analyze", base, empty, "--out", tmp_path / "out2"], home)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err[-2000:]
    assert not RAW_CONTROL.findall(err), err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert r"ft\x1b]0;TITLE\x07\x9b2J" in line, line


def test_shown_escapes_control_characters_only():
    """C0, DEL and C1 as \\xNN; the space, tab-free Unicode (Cyrillic, emoji, zero-width, a no-break space) and text
    already quoted with !r as they are; a byte of a name that is not UTF-8 as \\xff; a direction control (U+202E) as
    ⟨U+202E⟩, as the page shows it (tests/integration/test_cli_bidi_names.py)."""
    assert shown("a\x1b[31mb\x07c\nd\te\x7ff\x85g\x9bh\x00") == r"a\x1b[31mb\x07c\x0ad\x09e\x7ff\x85g\x9bh\x00"
    plain = "model.layers.0.мlp up_proj\u00a0\u200b😀 é"
    assert shown(plain) == plain
    assert shown(plain + "\u202e") == plain + "⟨U+202E⟩"
    quoted = repr(CTRL_NAME)
    assert shown(quoted) == quoted
    assert shown(os.fsdecode(b"ft\xff")) == r"ft\xff"


def test_a_jobs_error_line_reaches_its_log_escaped(tmp_path, monkeypatch):
    """A job's one-line error (printed by its worker into log.txt, which `runs` and the Training page show) carries
    text from checkpoints and masks too: its control characters are escaped as the command line's are."""
    from subnetviz.jobs.runner import JobRunner

    monkeypatch.setenv("SUBNETVIZ_ALLOW_TEST_JOBS", "1")
    runner = JobRunner(tmp_path / "runs")
    message = "mask names up\x1b[31mRED\x07_proj\n.weight, which the model lacks"
    run_id = runner.submit({"kind": "python", "target": "tests.training_fixtures:failing_job", "message": message})
    rec = runner.wait(run_id, timeout=120)
    log = (Path(rec.run_dir) / "log.txt").read_text()
    assert rec.status == "failed", log
    assert "error: mask names up\\x1b[31mRED\\x07_proj\\x0a.weight, which the model lacks" in log, log
    assert "\x1b" not in log and "\x07" not in log
