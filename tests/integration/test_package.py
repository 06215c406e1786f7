"""subnetviz as a package: the wheel, the ``subnetviz`` command, the notebook API and its README.

Proves:
- ``import subnetviz`` loads neither torch, pandas nor streamlit, and every public name resolves
  lazily to a documented object;
- ``pyproject.toml`` lists every subpackage (the explicit list that maps the app into the wheel)
  and declares a range for every pinned requirement that admits the pinned version;
- the README's "Python API" examples run as written against tiny checkpoints on disk;
- (slow) the wheel, installed with ``--no-deps`` into a fresh virtual environment that sees the
  project's dependencies, runs ``subnetviz --version``, ``subnetviz analyze`` and ``subnetviz app``
  from a folder outside the clone, importing the installed package rather than the clone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.ckpt_fixtures import bf16_step, read_state_dict, write_folder
from tests.models import make_llama

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _pyproject_version() -> str:
    """The version pyproject.toml resolves (setuptools reads the attr statically from version.py)."""
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    module, name = attr.rsplit(".", 1)
    text = (REPO / (module.replace(".", "/") + ".py")).read_text()
    return re.search(rf'^{name} = "([^"]+)"', text, re.M).group(1)


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


# ------------------------------------------------------------------------------ the import and the API
def test_import_is_cheap():
    code = (
        "import sys, subnetviz; print(subnetviz.__version__); "
        "print(sorted(m for m in ('torch', 'pandas', 'streamlit', 'transformers', 'plotly') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=_clean_env(), capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")
    assert out[:2] == [_pyproject_version(), "[]"]


PUBLIC = sorted(set(__import__("subnetviz").__all__) - {"__version__"})


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_resolves_and_is_documented(name):
    import subnetviz

    obj = getattr(subnetviz, name)
    doc = obj.__doc__ or ""
    assert len(doc.strip()) > 20 and not doc.startswith(f"{name}("), f"subnetviz.{name} needs a docstring"
    assert name in dir(subnetviz)


def test_unknown_name_is_an_attribute_error():
    import subnetviz

    with pytest.raises(AttributeError, match="no attribute 'analyse_updates'"):
        _ = subnetviz.analyse_updates


def test_version_info_from_the_clone():
    from subnetviz.version import version_info

    info = version_info()
    assert info["subnetviz_version"] == _pyproject_version()
    assert re.fullmatch(r"[0-9a-f]{40}", info["git_revision"]) and isinstance(info["git_dirty"], bool)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert info["git_revision"] == head
    out = subprocess.run(
        [sys.executable, "-m", "subnetviz", "--version"],
        cwd=REPO,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.startswith(f"subnetviz {info['subnetviz_version']} (git {head[:12]}")


# ------------------------------------------------------------------------------ pyproject.toml
def test_pyproject_lists_every_subpackage():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "subnetviz").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert {"subnetviz._app", "subnetviz._app.views"} <= listed


def _names(lines) -> dict[str, str]:
    """requirement name (normalised) -> the rest of the line (its environment marker left off)."""
    out = {}
    for line in lines:
        line = line.split("#")[0].split(";")[0].strip()
        if line and not line.startswith("-"):
            m = re.match(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)", line)
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(3)
    return out


def test_pyproject_ranges_admit_the_pinned_versions():
    from packaging.specifiers import SpecifierSet

    project = PYPROJECT["project"]
    for declared, pinned_file in (
        (project["dependencies"], "requirements.txt"),
        (project["optional-dependencies"]["dev"], "requirements-dev.txt"),
    ):
        ranges = _names(declared)
        pins = _names((REPO / pinned_file).read_text().splitlines())
        pins.pop("setuptools", None)  # the build backend (build-system.requires), not a runtime dependency
        assert set(pins) == set(ranges), f"{pinned_file} and pyproject.toml list different packages"
        for name, pin in pins.items():
            version = pin.removeprefix("==")
            assert SpecifierSet(ranges[name]).contains(version), f"{name} {ranges[name]} excludes the pinned {version}"
    assert "+cpu" not in json.dumps(project) and all("==" not in d for d in project["dependencies"])


# ------------------------------------------------------------------------------ the app from the clone
def test_app_script_and_settings_from_the_clone(tmp_path):
    from subnetviz.cli.app import app_script, streamlit_config_flags

    app = app_script()
    assert app == REPO / "app.py" and (REPO / "views" / "home.py").is_file()
    assert not (REPO / "pages").exists()  # Streamlit would serve a pages/ folder beside app.py by itself
    flags = streamlit_config_flags(app, tmp_path)
    pairs = dict(zip(flags[::2], flags[1::2], strict=True))
    assert pairs["--server.headless"] == "true" and pairs["--browser.gatherUsageStats"] == "false"
    assert streamlit_config_flags(app, REPO) == []  # the working folder's own config.toml is Streamlit's to read


def test_other_verbs_refuse_unknown_options(capsys):
    from subnetviz.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["runs", "--server.port", "1"])
    assert exc.value.code == 2 and "unrecognized arguments: --server.port 1" in capsys.readouterr().err


# ------------------------------------------------------------------------------ README examples
def _write_tiny_pair(root: Path, n_finetuned: int = 2) -> dict[str, Path]:
    """ckpts/base (a tiny bf16 Llama) and ckpts/rl-seed<i>: 10 % of every tensor moved by one ULP."""
    base = make_llama(root / "ckpts" / "base")
    sd = read_state_dict(base)
    out = {"base": base}
    for i in range(n_finetuned):
        gen = torch.Generator().manual_seed(i + 1)
        ft = {}
        for name, t in sd.items():
            t = t.clone()
            flat = t.reshape(-1)
            idx = torch.randperm(flat.numel(), generator=gen)[: max(1, flat.numel() // 10)]
            flat[idx] = bf16_step(flat[idx], 1)
            ft[name] = t
        out[f"rl-seed{i}"] = write_folder(root / "ckpts" / f"rl-seed{i}", ft, base)
    return out


def readme_api_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## Python API\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, "README.md has no '## Python API' section"
    return re.findall(r"```python\n(.*?)```", section.group(1), re.S)


def test_readme_python_api_examples_run(tmp_path, monkeypatch):
    import plotly.basedatatypes
    import plotly.graph_objects as go

    _write_tiny_pair(tmp_path)
    monkeypatch.chdir(tmp_path)
    shown: list[go.Figure] = []
    monkeypatch.setattr(plotly.basedatatypes.BaseFigure, "show", lambda fig, *a, **k: shown.append(fig))
    blocks = readme_api_blocks()
    assert len(blocks) >= 3
    ns: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md (Python API, block {i + 1})", "exec"), ns)  # noqa: S102 - our own README
    assert len(shown) >= 5 and all(isinstance(f, go.Figure) and f.data for f in shown)
    summary = ns["analysis"].summary().set_index("model")
    changed = {
        k: sum(max(1, t.numel() // 10) for t in read_state_dict(tmp_path / "ckpts" / "base").values())
        for k in ("rl-seed0", "rl-seed1")
    }
    assert summary["changed"].to_dict() == changed  # the planted changes, found by the README's code
    assert ns["mask"].count == changed["rl-seed0"]
    assert (tmp_path / "analysis-out" / "summary.json").is_file() and (tmp_path / "rl-seed0.safetensors").is_file()


# ------------------------------------------------------------------------------ the wheel, installed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build_wheel(tmp: Path) -> Path:
    """Build from a copy of the sources, so that no build/ or *.egg-info lands in the clone."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "app.py"):
        shutil.copy2(REPO / name, src / name)
    for name in ("subnetviz", "views", ".streamlit"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        check=True,
        timeout=300,
        env=_clean_env(),
    )
    (wheel,) = (tmp / "dist").glob("subnetviz-*.whl")
    return wheel


def _venv_seeing_project_deps(tmp: Path, wheel: Path) -> Path:
    """A fresh venv (no pip) whose .pth adds this environment's site-packages; the wheel installed --no-deps."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "subnetviz_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        timeout=300,
        env=_clean_env(),
    )
    return venv


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_clone(tmp_path):
    t0 = time.perf_counter()
    wheel = _build_wheel(tmp_path)
    t_build = time.perf_counter() - t0
    venv = _venv_seeing_project_deps(tmp_path, wheel)
    t_install = time.perf_counter() - t0 - t_build
    print(f"wheel built in {t_build:.1f} s, venv + install in {t_install:.1f} s")
    cli = venv / "bin" / "subnetviz"
    work = tmp_path / "work"  # outside the clone: only the installed package can be imported here
    work.mkdir()
    env = _clean_env(SUBNETVIZ_HOME=str(tmp_path / "home"))

    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import subnetviz; print(subnetviz.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(REPO / "subnetviz")

    version = subprocess.run([str(cli), "--version"], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"subnetviz {_pyproject_version()}"  # no git revision

    paths = _write_tiny_pair(work, n_finetuned=1)
    run = subprocess.run(
        [str(cli), "analyze", str(paths["base"]), str(paths["rl-seed0"]), "--out", "out", "--no-spectra"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads((work / "out" / "summary.json").read_text())
    numel = sum(t.numel() for t in read_state_dict(paths["base"]).values())
    planted = sum(max(1, t.numel() // 10) for t in read_state_dict(paths["base"]).values())
    assert summary["models"]["rl-seed0"]["changed"] == planted and summary["models"]["rl-seed0"]["numel"] == numel

    # The installed entry script routes to the installed page scripts (no browser: AppTest).
    script = (
        "import pathlib, subnetviz; from streamlit.testing.v1 import AppTest; "
        "at = AppTest.from_file(str(pathlib.Path(subnetviz.__file__).parent / '_app' / 'app.py'), "
        "default_timeout=60).run(); at.switch_page('views/sparsity.py').run(); "
        "print([e.message for e in at.exception], [t.value for t in at.title])"
    )
    pages = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert pages.returncode == 0 and pages.stdout.strip().endswith("[] ['Update sparsity']"), pages.stderr

    port = _free_port()
    app = subprocess.Popen(
        [str(cli), "app", "--port", str(port), "--home", str(tmp_path / "home"), "--server.address", "127.0.0.1"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            assert app.poll() is None and time.time() < deadline, "subnetviz app did not answer its health check"
            time.sleep(0.3)
    finally:
        os.killpg(app.pid, signal.SIGTERM)
        try:
            log = app.communicate(timeout=20)[0].decode()
        except subprocess.TimeoutExpired:
            os.killpg(app.pid, signal.SIGKILL)
            log = app.communicate()[0].decode()
    served = re.search(r"subnetviz app: (\S+) on port", log).group(1)
    assert Path(served) == Path(where).parent / "_app" / "app.py", log  # the wheel's copy, not the clone's
    assert (Path(served).parent / "views" / "sparsity.py").is_file()
