"""Labels that look like numbers, paths with spaces, the upload cap and the behaviour CLI's files (review fixes).

Proves: models labelled 100, 007 and 7 (by --labels, or by their folder's name) are analysed, served from the
cache, reported and read back under those labels, with the planted changed counts (the CSVs read them back as
integers: '100' matched no row and the analysis failed, "007" and "7" became one model 7); the behaviour tables
keep them apart too; a provenance path with a space is shown whole relative to its root or as '…/<name>' (the
free-text pattern stopped at the space and kept the rest); `subnetviz app` gives Streamlit the configured upload
cap (it always passed 200 MB); `behavior` on a dense model writes no empty routing.csv and says which files it
wrote; the drivers and behaviour progress bars count grid points and experiments, not tensors.
"""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest
import torch
from safetensors import safe_open

from subnetviz.__main__ import main
from tests.ckpt_fixtures import bf16_step, read_state_dict, write_folder

LABELS = ["100", "007", "7"]
MOVED = {"100": 3, "007": 5, "7": 8}  # entries moved by 1 ULP in each of the first four tensors (sorted names)


@pytest.fixture(scope="module")
def numbered(ckpt_zoo, tmp_path_factory):
    """Three finetunes of the tiny Llama in folders named 100, 007 and 7; each moves MOVED[label] entries of
    each of the first four tensors by one bf16 step. Returns (root, folders, changed count per label, counted
    here from the bits of the state dicts)."""
    root = tmp_path_factory.mktemp("numbered")
    base = read_state_dict(ckpt_zoo.llama)
    folders, changed = [], {}
    for seed, label in enumerate(LABELS):
        gen = torch.Generator().manual_seed(seed)
        sd = {k: v.clone() for k, v in base.items()}
        for name in sorted(sd)[:4]:
            flat = sd[name].reshape(-1)
            idx = torch.randperm(flat.numel(), generator=gen)[: MOVED[label]]
            flat[idx] = bf16_step(flat[idx], 1)
        folders.append(write_folder(root / "steps" / label, sd, ckpt_zoo.llama))
        changed[label] = sum(int((sd[k].view(torch.int16) != base[k].view(torch.int16)).sum()) for k in sd)
    return root, folders, changed


def _check_folder(out, labels, changed):
    """An analyze --out folder read back as the library reads it: the labels, and each model's changed count
    against the count taken from the planted state dicts."""
    from subnetviz.analysis.subspaces import read_subspaces
    from subnetviz.analysis.updates import read_analysis

    analysis = read_analysis(out)
    assert analysis.labels == labels
    assert {r.model: int(r.tensors["changed"].sum()) for r in analysis.reports} == {
        lab: changed[folder] for lab, folder in zip(labels, LABELS, strict=True)
    }
    assert list(analysis.spectra_frame["model"].unique()) == labels  # (spectra.csv read back: the report draws it)
    rows, _ = read_subspaces(out)
    assert list(rows["model"].unique()) == labels


@pytest.mark.parametrize("named_by", ["folders", "--labels", "--labels --no-cache"])
def test_numeric_labels_are_analysed_and_reported(ckpt_zoo, numbered, tmp_path, capsys, monkeypatch, named_by):
    """`analyze --labels 100 200` computed, wrote, read back and failed: "'100' has 0 parameters in its rows ...
    the folder is not as analyze wrote it"; with --no-cache `report` failed the same way. A checkpoint folder
    named 100 did so without --labels."""
    root, folders, changed = numbered
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    args = ["analyze", str(ckpt_zoo.llama)]
    if named_by == "folders":
        args += [*map(str, folders)]
    else:  # the same checkpoints under other folder names, named on the command line
        copies = [shutil.copytree(f, tmp_path / f"ck-{i}") for i, f in enumerate(folders)]
        args += [*map(str, copies), "--labels", *LABELS, *named_by.split()[1:]]
    out = tmp_path / "out"
    rc = main([*args, "--out", str(out), "--subspaces", "4"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err.rpartition("error:")[2][:500]
    _check_folder(out, LABELS, changed)
    html = tmp_path / "report.html"
    rc = main(["report", str(out), "--out", str(html)])
    assert rc == 0, capsys.readouterr().err.rpartition("error:")[2][:500]
    assert html.stat().st_size > 0


def test_numeric_labels_through_the_library_cache(ckpt_zoo, numbered, tmp_path):
    """The pages' path: cached_analysis computes, writes the cache entry and returns it as read from disk; the
    second call is served from that entry. The labels are the folders' names."""
    from subnetviz.analysis.updates import cached_analysis

    _, folders, changed = numbered
    for _ in range(2):
        analysis = cached_analysis(str(ckpt_zoo.llama), [str(f) for f in folders], cache_root=tmp_path / "c")
        assert analysis.labels == LABELS
        assert {r.model: int(r.tensors["changed"].sum()) for r in analysis.reports} == changed


def test_read_frame_keeps_name_columns_as_text(tmp_path):
    """A planted CSV of the kinds this package writes: every name column comes back as the text written (labels
    100, 007, 7; a token "1"; a drivers value 1e-05), the numeric ones as numbers, an empty field as missing."""
    from subnetviz.cache import read_frame

    frame = pd.DataFrame(
        {
            "model": ["100", "007", "7"],
            "a": ["100", "007", "7"],
            "b": ["7", "100", "007"],
            "token": ["1", "2", "3"],
            "value": ["1e-05", "None", "2"],
            "note": ["", "x", ""],
            "changed": [1, 2, 3],
            "sparsity": [0.5, 0.25, 0.125],
        }
    )
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    back = read_frame(path)
    for col in ("model", "a", "b", "token", "value"):
        assert back[col].tolist() == frame[col].tolist(), col
    assert back["note"].isna().tolist() == [True, False, True]
    assert back["changed"].tolist() == [1, 2, 3] and back["sparsity"].tolist() == [0.5, 0.25, 0.125]
    assert back["changed"].dtype.kind == "i" and back["sparsity"].dtype.kind == "f"
    assert read_frame(path, dtype={"changed": float})["changed"].dtype.kind == "f"  # a dtype given still applies


@pytest.fixture(scope="module")
def dense_pair(tmp_path_factory):
    """A tiny dense Llama (no routers) and two finetunes in folders named 007 and 7, tokenizer files beside."""
    from tests.models import make_tiny_llama

    root = tmp_path_factory.mktemp("behavior-labels")
    base = make_tiny_llama(root / "base", seed=0)
    sd = read_state_dict(base)
    out = []
    for label, ulps in (("007", 30), ("7", 60)):
        name = "model.layers.0.mlp.down_proj.weight"
        ft_sd = {**sd, name: bf16_step(sd[name], ulps)}
        ft = write_folder(root / "steps" / label, ft_sd, config_from=base)
        for f in [*base.glob("tokenizer*"), *base.glob("special_tokens_map.json")]:
            shutil.copy(f, ft / f.name)
        out.append(ft)
    prompts = root / "p.jsonl"
    prompts.write_text(
        "".join(json.dumps(r) + "\n" for r in ({"prompt": "12+30=", "answer": "42"}, {"prompt": "7+8="}))
    )
    return base, out, prompts


def test_behavior_keeps_numeric_labels_apart_and_lists_its_files(dense_pair, tmp_path, capsys):
    """Behaviour's tables read back a model column of integers (folders 007 and 7 both became 7); a dense model
    got a header-only routing.csv; the files written were not said; its progress bar counted 'tensor's."""
    from subnetviz.analysis.behavior import read_behavior

    base, fts, prompts = dense_pair
    out = tmp_path / "b"
    args = ["behavior", str(base), *map(str, fts), "--prompts", str(prompts), "--out", str(out), "--curve"]
    rc = main([*args, "--no-random", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err.rpartition("error:")[2][:500]
    written = ["behavior.json", "summary.csv", "tokens.csv", "prompts.csv", "curves.csv"]
    assert sorted(p.name for p in out.iterdir()) == sorted(written)  # no routing.csv: no routers
    assert f"wrote {out}: {', '.join(written)}" in captured.out
    assert "experiment/s" in captured.err and "tensor" not in captured.err
    tables = read_behavior(out)
    assert tables["summary"]["model"].tolist() == ["007", "7"]
    assert tables["routing"].empty
    per_model = tables["tokens"].groupby("model")["kl_forward"].mean()
    assert list(per_model.index) == ["007", "7"] and per_model["7"] > per_model["007"] > 0  # two models, not one
    assert sorted(tables["prompts"]["model"].unique()) == ["007", "7"]


def test_drivers_progress_counts_grid_points(monkeypatch, tmp_path, capsys):
    """`experiment drivers` showed '0/17 [… ?tensor/s, learning_rate=1e-05 seed 0]': it counts grid points."""
    from subnetviz.experiments import drivers

    def fake_run(zoo, preset, seeds, progress=None):
        progress(0, 2, "learning_rate=1e-05 seed 0")
        progress(1, 2, "learning_rate=1e-04 seed 0")
        progress(2, 2, "done")
        row = {"factor": "lr", "value": "1", "seed": 0, "algorithm": "grpo", "status": "done", "grid_version": 2}
        return pd.DataFrame([row | {c: 0.0 for c in ("sparsity", "accuracy", "kl_forward")}], columns=drivers.COLUMNS)

    monkeypatch.setattr(drivers, "run_drivers", fake_run)
    monkeypatch.setattr(drivers, "verdicts", lambda results: pd.DataFrame({"conjecture": ["x"]}))
    monkeypatch.setattr(drivers, "not_available", lambda: {})
    assert main(["experiment", "drivers", "--out", str(tmp_path / "d")]) == 0
    err = capsys.readouterr().err
    assert "2/2" in err and "point" in err and "tensor" not in err


# --- provenance paths with a space ---------------------------------------------------------------------------
def test_a_downloaded_mask_shows_a_path_with_a_space_whole(tmp_path, monkeypatch):
    """'/home/alice smith/private/ckpt-7/base' became '…/alice smith/private/ckpt-7/base' in a downloaded mask's
    provenance: the free-text pattern stopped at the space and kept the rest."""
    from subnetviz.masks import MaskSet, load_mask_set, save_mask_set, shareable_bytes

    root = tmp_path / "team ckpts"
    (root / "alice smith" / "ft").mkdir(parents=True)
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(root))
    info = {
        "base": "/home/alice smith/private/ckpt-7/base",  # outside every root
        "finetuned": [str(root / "alice smith" / "ft"), "/data/team x/llama-70b-internal/ft"],
        "method": "update",
    }
    masks = {"w": torch.tensor([[True, False, True]])}
    path = save_mask_set(tmp_path / "m.safetensors", MaskSet(masks, info))
    out = tmp_path / "dl.safetensors"
    out.write_bytes(shareable_bytes(path))
    with safe_open(str(out), "np") as f:
        meta = f.metadata()
    shown = json.loads(meta["subnetviz"])
    assert shown["base"] == "…/base"
    assert shown["finetuned"] == ["team ckpts/alice smith/ft", "…/ft"]
    assert shown["method"] == "update" and "alice" not in shown["base"] and "team x" not in meta["subnetviz"]
    assert torch.equal(load_mask_set(out).masks["w"], masks["w"])


def test_page_values_show_a_path_with_a_space_whole():
    """The Workspace's manifest view and an export's parameters showed '…/alice smith/runs' for a path with a
    space; free text keeps its own redaction."""
    from subnetviz import uilogic

    shown = uilogic.redacted({"runs": "/srv/alice smith/runs", "notes": ["from /srv/x/y", 3], "n": 1})
    assert shown == {"runs": "…/runs", "notes": ["from …/y", 3], "n": 1}
    html = uilogic.dashboard_html("t", {"base": "/home/alice smith/ckpt/base", "k": 3}, {}, {}, [], [])
    assert "base=…/base" in html and "alice smith" not in html and "ckpt/base" not in html  # (aliceblue: plotly.js)


# --- the upload cap ---------------------------------------------------------------------------------------------
class _Started(Exception):
    """Raised by the stand-in for os.execve: the command line `subnetviz app` built."""


def _app_command(monkeypatch, tmp_path, *extra) -> list[str]:
    def fake_execve(path, argv, env):
        raise _Started(argv)

    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.chdir(tmp_path)  # no .streamlit/ here: the packaged config's flags are passed
    with pytest.raises(_Started) as started:
        main(["app", "--port", "0", *extra])
    return started.value.args[0]


@pytest.mark.parametrize(("mb", "flag"), [("1000", "1000"), ("0.5", "1"), ("250.2", "251"), (None, "200")])
def test_app_gives_streamlit_the_configured_upload_cap(monkeypatch, tmp_path, mb, flag):
    """SUBNETVIZ_MAX_UPLOAD_MB=1000 still gave 'File must be 200MB or smaller': `subnetviz app` passed the
    packaged --server.maxUploadSize 200 whatever the variable said (the uploader takes its limit from it)."""
    if mb is None:
        monkeypatch.delenv("SUBNETVIZ_MAX_UPLOAD_MB", raising=False)
    else:
        monkeypatch.setenv("SUBNETVIZ_MAX_UPLOAD_MB", mb)
    cmd = _app_command(monkeypatch, tmp_path)
    at = [i for i, a in enumerate(cmd) if a == "--server.maxUploadSize"]
    assert len(at) == 1 and cmd[at[0] + 1] == flag, cmd
    assert "--server.headless" in cmd  # (the rest of the packaged config still passed)


def test_app_upload_cap_own_flag_wins_and_a_bad_value_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SUBNETVIZ_MAX_UPLOAD_MB", "1000")
    cmd = _app_command(monkeypatch, tmp_path, "--server.maxUploadSize", "50")
    at = [i for i, a in enumerate(cmd) if a == "--server.maxUploadSize"]
    assert [cmd[i + 1] for i in at] == ["1000", "50"]  # the user's own, last, is the one Streamlit keeps
    for bad in ("lots", "-3", "0", "nan", "inf"):  # (-3 started a server whose uploads took 1 MB: readme4)
        monkeypatch.setenv("SUBNETVIZ_MAX_UPLOAD_MB", bad)
        capsys.readouterr()
        assert main(["app", "--port", "0"]) == 2, bad
        err = capsys.readouterr().err
        assert f"SUBNETVIZ_MAX_UPLOAD_MB='{bad}': not a number of megabytes above 0" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SUBNETVIZ_CACHE_GB", "lots"),
        ("SUBNETVIZ_UPLOADS_GB", "-1"),
        ("SUBNETVIZ_MAX_QUEUED", "0"),
        ("SUBNETVIZ_CONFIRM_ABOVE_S", "soon"),
        ("SUBNETVIZ_RAY_ADDRESSES", "not an address"),
        ("SUBNETVIZ_DEVICE", "tpu"),
    ],
)
def test_app_refuses_a_bad_setting_before_the_server_starts(monkeypatch, tmp_path, capsys, name, value):
    """`subnetviz app` with SUBNETVIZ_CACHE_GB=lots started the server; the bad value was refused only on the first
    page that published an analysis (and the others only where a page read them). Now: one line at start-up."""
    monkeypatch.setenv(name, value)
    started = []
    monkeypatch.setattr(os, "execve", lambda *a: started.append(a))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["app", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert not started and name in err and err.count("\n") == 1, err


@pytest.mark.slow
def test_pages_show_a_folder_named_100(app_env, tmp_path, monkeypatch):
    """A finetuned folder named 100 (checkpoints saved by step) showed "'100' has 0 parameters in its rows …" on
    Update sparsity, and on every page built on the update analysis."""
    from tests.app_fixtures import app_roots, open_page

    base = app_env / "zoo" / "base"
    sd = read_state_dict(base)
    folders, changed = [], {}
    for seed, label in enumerate(LABELS):  # MOVED[label] entries of the first tensor moved by one bf16 step
        gen = torch.Generator().manual_seed(seed)
        ft = {k: v.clone() for k, v in sd.items()}
        name = sorted(ft)[0]
        flat = ft[name].reshape(-1)
        idx = torch.randperm(flat.numel(), generator=gen)[: MOVED[label]]
        flat[idx] = bf16_step(flat[idx], 1)
        folders.append(write_folder(tmp_path / "steps" / label, ft, base))
        changed[label] = sum(int((ft[k].view(torch.int16) != sd[k].view(torch.int16)).sum()) for k in sd)
    monkeypatch.setenv("SUBNETVIZ_ROOTS", os.pathsep.join([app_roots(app_env), str(tmp_path)]))
    query = {"ft": [str(f) for f in folders]}  # (the base: the zoo's, by default)
    at = open_page("sparsity", **query)
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert len(at.get("plotly_chart")) > 0
    at = open_page("workspace", **query)
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    shown = {m.label: m.help for m in at.metric}
    assert list(shown) == LABELS
    for label in LABELS:  # "N of M parameters changed"
        assert shown[label].startswith(f"{changed[label]:,} of "), shown[label]


def test_make_apps_server_takes_the_upload_limit_too(monkeypatch):
    """``make app`` starts the server through subnetviz.serve, where .streamlit/config.toml's 200 MB capped uploads
    whatever SUBNETVIZ_MAX_UPLOAD_MB said: the command line it hands Streamlit now carries the configured size
    (rounded up to whole MB), keeps a size given on it, and is unchanged without the variable."""
    from subnetviz.serve import upload_limit

    argv = ["run", "app.py", "--server.port", "8501"]
    monkeypatch.delenv("SUBNETVIZ_MAX_UPLOAD_MB", raising=False)
    assert upload_limit(argv) == argv
    monkeypatch.setenv("SUBNETVIZ_MAX_UPLOAD_MB", "1000")
    assert upload_limit(argv) == [*argv, "--server.maxUploadSize", "1000"]
    monkeypatch.setenv("SUBNETVIZ_MAX_UPLOAD_MB", "0.5")
    assert upload_limit(argv)[-1] == "1"
    mine = [*argv, "--server.maxUploadSize=50"]
    assert upload_limit(mine) == mine
    monkeypatch.setenv("SUBNETVIZ_MAX_UPLOAD_MB", "lots")
    assert upload_limit(argv) == argv  # (the app's own check says so on the upload)
