"""The command line after its sixth review (cli6).

Proves: an output name the file system takes but that is too long once made the temporary name the result is first
written under is refused before any work, in one line giving the limit, for ``analyze``, ``behavior``,
``experiment drivers``, ``report`` and ``mask import`` (it failed with "File name too long" after the whole run), and a
name of exactly that limit is written; ``--help`` under an ASCII stdout prints its Δ and ≤ as escapes (a
UnicodeEncodeError traceback, exit 1); a stdout that cannot be written once the result is in place (a full disk)
says the result is complete and keeps the command's exit status (it said "error: cannot complete", exit 2), whether
the failure comes at a write or at the flush of a buffered stdout; ``app --port A --server.port B`` is refused in
one line, and a pass-through ``--server.port`` alone is the port the start-up line names (it named 8501 or ``--port``'s
while the server listened on the other); ``experiment drivers --seeds 99999999999`` is one line before anything is
planned (it took 18.8 GB before its first line).
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from subnetviz.__main__ import main
from tests.ckpt_fixtures import bf16_step, read_state_dict, write_folder

# what a temporary name adds to a name: ".NAME.tmp-PID-CLOCK", the longest pid and clock (cache.longest_tmp_name)
ADDED = len(f"..tmp-{4194304}-{2**64}")


@pytest.fixture(scope="module")
def ft(ckpt_zoo, tmp_path_factory):
    """A finetune of the zoo's Llama: every tensor's first entry moved by 1 ULP."""
    sd = read_state_dict(ckpt_zoo.llama)
    for t in sd.values():
        t.view(-1)[:1] = bf16_step(t.view(-1)[:1], 1)
    return write_folder(tmp_path_factory.mktemp("cli6") / "ft", sd, ckpt_zoo.llama)


@pytest.fixture
def mask_file(tmp_path):
    from subnetviz.masks import MaskSet, save_mask_set

    return save_mask_set(tmp_path / "src.safetensors", MaskSet({"w": torch.tensor([True, False, True])}))


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err[-2000:]
    return lines[0]


def _spare(folder: Path) -> int:
    """The longest output name (bytes) written in ``folder``: its file system's limit less the temporary name's."""
    return os.pathconf(folder, "PC_NAME_MAX") - ADDED


# --- 1: an --out name too long for its temporary name ---------------------------------------------------------


def _no_work(monkeypatch):
    """Every command's work fails the test if it starts: what is checked is refused before it."""
    from subnetviz import masks
    from subnetviz.analysis import behavior, updates
    from subnetviz.experiments import drivers
    from subnetviz.report import dashboard

    for mod, name in (
        (updates, "analyze_updates"),
        (updates, "cached_analysis"),
        (behavior, "run_config"),
        (drivers, "run_drivers"),
        (dashboard, "analysis_report"),
        (masks, "import_mask"),
    ):
        monkeypatch.setattr(mod, name, lambda *a, **k: pytest.fail("the work ran"))


@pytest.mark.parametrize("verb", ["analyze", "behavior", "experiment", "report", "mask"])
def test_an_out_name_too_long_for_its_temporary_name_is_refused_before_the_work(
    ckpt_zoo, tmp_path, capsys, monkeypatch, verb
):
    """A 235-byte --out (mkdir takes it) ran the whole analysis, or the whole grid, then failed with "cannot write the
    result (File name too long)"; a 233-byte report or mask file failed after it was built."""
    _no_work(monkeypatch)
    spare = _spare(tmp_path)
    model = str(ckpt_zoo.llama)
    if verb in ("report", "mask"):
        name = "x" * (spare + 1 - len(".html")) + ".html"
        (tmp_path / "analysis").mkdir()
        args = ["report", str(tmp_path / "analysis"), "--out"] if verb == "report" else ["mask", "import", model]
        prefix = "error: --out " if verb == "report" else "error: "
    else:
        name = "x" * (spare + 1)
        args = {
            "analyze": ["analyze", model, model, "--out"],
            "behavior": ["behavior", model, model, "--out"],
            "experiment": ["experiment", "drivers", "--zoo", str(tmp_path), "--out"],
        }[verb]
        prefix = "error: --out "
    out = tmp_path / name
    assert main([*args, str(out)]) == 2
    line = _one_error(capsys.readouterr().err)
    assert line == (
        f"{prefix}{out}: its name is {spare + 1} bytes long; at most {spare} bytes here (the result is first "
        "written under a temporary name made from it). Choose a shorter name."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == (["analysis"] if verb in ("report", "mask") else [])


def test_an_out_name_of_the_longest_allowed_is_written(ckpt_zoo, ft, mask_file, tmp_path, capsys):
    """The limit is no stricter than it must be: names of exactly as many bytes as it allows are written (an
    analysis, its report and an imported mask), and the same count in 2-byte letters is refused as bytes."""
    spare = _spare(tmp_path)
    out = tmp_path / ("a" * spare)
    args = ["analyze", str(ckpt_zoo.llama), str(ft), "--no-spectra", "--subspaces", "0", "--no-cache"]
    assert main([*args, "--out", str(out)]) == 0
    assert (out / "summary.json").is_file()
    html = tmp_path / ("h" * (spare - len(".html")) + ".html")
    assert main(["report", str(out), "--out", str(html)]) == 0 and html.stat().st_size > 0
    dst = tmp_path / ("m" * (spare - len(".safetensors")) + ".safetensors")
    assert main(["mask", "import", str(mask_file), str(dst)]) == 0 and dst.is_file()
    capsys.readouterr()
    wide = tmp_path / ("é" * (spare // 2 + 1))
    assert main([*args, "--out", str(wide)]) == 2
    assert f"its name is {2 * (spare // 2 + 1)} bytes long" in _one_error(capsys.readouterr().err)
    assert not wide.exists()


# --- 2: --help under an ASCII stdout ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "escaped"), [("analyze", "\\u0394"), ("behavior", "\\u0394"), ("experiment", "\\u2264")]
)
def test_help_on_an_ascii_stdout_prints_escapes(monkeypatch, verb, escaped):
    """--help printed inside parsing, before stdout was made lenient: '|Δ|' and '≤' were a UnicodeEncodeError
    traceback and exit 1 under PYTHONIOENCODING=ascii (or a latin-1 locale)."""
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii", errors="strict", write_through=True))
    with pytest.raises(SystemExit) as ended:
        main([verb, "--help"])
    text = raw.getvalue().decode("ascii")
    assert ended.value.code == 0 and text.startswith(f"usage: subnetviz {verb}") and escaped in text, text


def test_help_under_pythonioencoding_ascii_in_a_process(tmp_path):
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-m", "subnetviz", "analyze", "--help"],
        env=env,
        capture_output=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0 and b"|\\u0394|" in done.stdout and not done.stderr, done.stderr[-2000:]


# --- 3: a stdout that cannot be written once the result is in place --------------------------------------------


class _Full(io.RawIOBase):
    """A stdout on a full disk: every write fails with ENOSPC while ``full`` (after the test, the stream's own flush at
    its end goes through)."""

    full = True

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return len(b)


@pytest.fixture(params=["unbuffered", "buffered"])
def full_stdout(request, monkeypatch):
    """Puts stdout on a full disk, called in the test (capsys puts its own stdout back as the test starts): each
    write fails (PYTHONUNBUFFERED, as here), or the writes wait in a buffer and its flush fails (a plain `> file`:
    the failure came only at the exit, "Exception ignored" and exit status 120). Returns the stream."""
    raw = _Full()

    def install() -> io.TextIOWrapper:
        if request.param == "buffered":
            stream = io.TextIOWrapper(io.BufferedWriter(raw, buffer_size=1 << 16), encoding="utf-8")
        else:
            stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
        monkeypatch.setattr(sys, "stdout", stream)
        return stream

    yield install
    raw.full = False  # (the stream's own flush as it is collected goes through)


def _complete(path: Path) -> str:
    return (
        f"the result was written: {path} is complete; what was to be printed after it could not be written: "
        f"{os.strerror(errno.ENOSPC)} (errno {errno.ENOSPC})."
    )


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def test_a_full_stdout_after_analyze_published_says_it_is_complete(ckpt_zoo, ft, tmp_path, capsys, full_stdout):
    """'analyze ... > summary.txt' on a full quota: exit 2 and "error: cannot complete: No space left on device",
    while --out was complete; a rerun then failed on the folder already there."""
    out = tmp_path / "o"
    args = ["analyze", str(ckpt_zoo.llama), str(ft), "--no-spectra", "--subspaces", "0", "--no-cache"]
    full_stdout()
    assert main([*args, "--out", str(out)]) == 0
    err = _lines(capsys.readouterr().err)
    assert err[-1] == _complete(out) and not any(line.startswith("error:") for line in err), err
    assert (out / "summary.json").is_file()


def test_a_full_stdout_after_mask_import_says_it_is_complete(mask_file, tmp_path, capsys, full_stdout):
    dst = tmp_path / "m.safetensors"
    full_stdout()
    assert main(["mask", "import", str(mask_file), str(dst)]) == 0
    assert _lines(capsys.readouterr().err) == [_complete(dst)] and dst.is_file()


def test_a_full_stdout_after_a_grid_with_failed_points_keeps_its_status_and_error(
    tmp_path, monkeypatch, capsys, full_stdout
):
    from subnetviz.experiments import drivers
    from tests.integration.test_cli5_fixes import plant_failed_grid

    plant_failed_grid(monkeypatch)
    monkeypatch.setattr(drivers, "grid_notes", lambda results: [])
    out = tmp_path / "grid"
    full_stdout()
    code = main(["experiment", "drivers", "--preset", "micro", "--zoo", str(tmp_path), "--out", str(out)])
    err = _lines(capsys.readouterr().err)
    assert code == 1 and err[-2:] == [
        _complete(out),
        f"error: drivers: 1 grid point(s) failed (the first, lr=0.001: diverged); the other runs' results are in {out}",
    ], err
    assert (out / "results.csv").is_file()


def test_a_full_stdout_with_nothing_published_is_exit_2_naming_stdout(capsys, full_stdout):
    """Nothing published ('runs'): still exit 2 and one line; a buffered stdout's failure is said as stdout's (it was
    "Exception ignored" at the exit, exit status 120, after "no runs" had seemed printed)."""
    stream = full_stdout()
    assert main(["runs"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert line.startswith("error: cannot complete") and line.endswith(f"{os.strerror(errno.ENOSPC)} (errno 28).")
    if isinstance(stream.buffer, io.BufferedWriter):
        assert "(writing to stdout)" in line, line


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_runs_to_dev_full_names_stdout_in_a_process(tmp_path):
    """'runs > /dev/full', a real full device with stdout buffered as for any '> file' (the fixture above fakes the
    device): the line names stdout. (Under PYTHONUNBUFFERED each print fails inside the command, and the line names
    nothing: left alone.)"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[2]), SUBNETVIZ_HOME=str(tmp_path / "home"))
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "subnetviz", "runs"], env=env, stdout=full, stderr=subprocess.PIPE, timeout=300
        )
    err = done.stderr.decode()
    assert done.returncode == 2 and err.strip().splitlines() == [
        f"error: cannot complete (writing to stdout): {os.strerror(errno.ENOSPC)} (errno 28)."
    ], err


# --- 4: app --port and a pass-through --server.port ------------------------------------------------------------


class _Started(Exception):
    """Raised by the stand-in for os.execve: the command line `subnetviz app` built."""


def _app(monkeypatch, tmp_path, capsys, *args) -> tuple[int | list[str], str]:
    """``subnetviz app ARGS``: the server's command line (or the exit status where it did not start), and stderr."""

    def fake_execve(path, argv, env):
        raise _Started(argv)

    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    try:
        code = main(["app", *args])
    except _Started as started:
        return started.args[0], capsys.readouterr().err
    return code, capsys.readouterr().err


def _ports(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--server.port"]


@pytest.mark.parametrize(
    ("args", "port"),
    [
        ([], "8501"),
        (["--port", "8904"], "8904"),
        (["--server.port", "8905"], "8905"),
        (["--server.port=8906"], "8906"),
        (["--port", "8907", "--server.port", "8907"], "8907"),
        (["--server.port", "8908", "--server.address", "127.0.0.1"], "8908"),
    ],
)
def test_app_serves_on_the_port_its_start_up_line_names(monkeypatch, tmp_path, capsys, args, port):
    """`app --server.port 8905` served on 8905 while the start-up line said "on port 8501" (and with --port 8904,
    "on port 8904"): the pass-through option, after --port's, won."""
    argv, err = _app(monkeypatch, tmp_path, capsys, *args)
    assert isinstance(argv, list) and _ports(argv) == [port], argv
    assert not any(a.startswith("--server.port=") for a in argv)
    assert f" on port {port} (" in err, err
    if "--server.address" in args:
        assert argv[argv.index("--server.address", argv.index("--server.port")) + 1] == "127.0.0.1"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--port", "8904", "--server.port", "8905"], "app: --port 8904 and --server.port 8905 name two ports"),
        (["--port", "8904", "--server.port=8905"], "app: --port 8904 and --server.port 8905 name two ports"),
        (["--server.port", "lots"], "app: --server.port lots: not a whole number"),
        (["--server.port", "70000"], "app: --server.port 70000: 70000 is no port"),
        (["--server.port"], "app: --server.port needs a port number"),
    ],
)
def test_app_refuses_two_ports_or_a_bad_one_in_one_line(monkeypatch, tmp_path, capsys, args, says):
    code, err = _app(monkeypatch, tmp_path, capsys, *args)
    assert code == 2 and says in _one_error(err), err


# --- the drivers grid's seeds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seeds", ["99999999999", "101"])
def test_drivers_with_absurd_seeds_is_one_line_before_anything(tmp_path, capsys, monkeypatch, seeds):
    """'--seeds 99999999999' planned 19 runs a seed before its first line: 18.8 GB in 20 s, and SIGTERM went
    unanswered."""
    from subnetviz.experiments import drivers

    monkeypatch.setattr(drivers.DriversPreset, "plan", lambda *a, **k: pytest.fail("the grid was planned"))
    monkeypatch.setattr(drivers, "run_drivers", lambda *a, **k: pytest.fail("the grid ran"))
    out = tmp_path / "ex"
    assert main(["experiment", "drivers", "--out", str(out), "--seeds", seeds]) == 2
    line = _one_error(capsys.readouterr().err)
    assert line == f"error: drivers seeds must be at most 100 (each seed trains a whole grid), got {seeds}.", line
    assert not out.exists()
