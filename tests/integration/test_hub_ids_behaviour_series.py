"""Hub ids on the Behaviour and Series pages (review "hub inputs", second pass, defects 2 and 3).

Behaviour (page, CLI and job: one ``validate_config``) refused every hub id as "does not exist", though the model
loader resolves a cached id to its snapshot. Series looked for a weight file's training step in the folder its link
leads to: every file of a hub snapshot is a link into ``blobs/``, so a run's ``checkpoint-N/model.safetensors``
files read as independent finetunes in the sidebar's order, and a hub id (whose snapshot holds trainer_state.json)
"carried no training step".

The hub cache is laid out here as huggingface_hub writes it (nothing is downloaded): ``models--ORG--NAME/blobs/``
(sha256 for LFS files, git-sha1 for the others), ``snapshots/<commit>/<file>`` relative links to the blobs, and
``refs/main`` holding the bare commit. References: KL from the logits of transformers' own models read from the
source folders, in float64 NumPy; the series' counts from planted +1 ULP changes, known without subnetviz's help.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.models import make_tiny_llama, save_model, tiny_model

BASE, FT, TRAINER = "2" * 40, "3" * 40, "c" * 40
RUN_SRC, ORDER_SRC = "workspace: one training run, by step", "workspace: base → finetuned in sidebar order"
PROMPTS = [{"prompt": "12+30=", "answer": "42"}, {"prompt": "7+8=", "answer": "15"}, {"prompt": "40+2="}]


def add_snapshot(cache: Path, repo_id: str, commit: str, files: dict[str, bytes]) -> Path:
    """``files`` (path in the repository -> bytes) as huggingface_hub stores a snapshot of ``repo_id`` at
    ``commit`` (the one ``refs/main`` names); returns the snapshot folder."""
    org, name = repo_id.split("/")
    repo = cache / f"models--{org}--{name}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap = repo / "snapshots" / commit
    for rel, data in files.items():
        lfs = rel.endswith((".safetensors", ".bin"))
        etag = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blob = repo / "blobs" / etag
        if not blob.exists():
            blob.write_bytes(data)
        dst = snap / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, dst.parent), dst)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)  # the bare commit, no newline
    return snap


def files_of(folder: Path, prefix: str = "") -> dict[str, bytes]:
    """Every file under ``folder`` as ``add_snapshot`` takes them, each named ``prefix`` + its path there."""
    return {prefix + str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def without_roots(monkeypatch, cache: Path) -> None:
    """``cache`` the Hugging Face cache huggingface_hub uses; no roots enforced."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "SUBNETVIZ_ROOTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("SUBNETVIZ_ENFORCE_ROOTS", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))


# --- 2. Behaviour takes a cached hub id ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny Llamas (one tokenizer) as folders, and the same as the cached hub ids acme/tiny-base and
    acme/tiny-ft; a prompt file."""
    root = tmp_path_factory.mktemp("behaviour-hub-ids").resolve()
    base = make_tiny_llama(root / "src" / "base", seed=0)
    ft = make_tiny_llama(root / "src" / "ft", seed=1)
    cache = root / "hub"
    add_snapshot(cache, "acme/tiny-base", BASE, files_of(base))
    add_snapshot(cache, "acme/tiny-ft", FT, files_of(ft))
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return {"root": root, "base": base, "ft": ft, "cache": cache, "prompts": prompts}


def reference_kl(base: Path, ft: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-token forward KL(base ‖ ft) and reverse KL over every position of each prompt and its answer, from
    transformers' models read from the source folders, one sequence at a time, in float64 NumPy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    mb = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    mf = AutoModelForCausalLM.from_pretrained(str(ft), dtype=torch.float32).eval()
    fwd, rev = [], []
    for p in PROMPTS:
        ids = tok(p["prompt"])["input_ids"]
        ids += tok(p["answer"], add_special_tokens=False)["input_ids"] if p.get("answer") else []
        with torch.no_grad():
            lb = mb(torch.tensor([ids])).logits[0].double().numpy()
            lf = mf(torch.tensor([ids])).logits[0].double().numpy()
        lb = lb - np.logaddexp.reduce(lb, axis=-1, keepdims=True)
        lf = lf - np.logaddexp.reduce(lf, axis=-1, keepdims=True)
        fwd.append((np.exp(lb) * (lb - lf)).sum(-1))
        rev.append((np.exp(lf) * (lf - lb)).sum(-1))
    return np.concatenate(fwd), np.concatenate(rev)


def test_a_behaviour_config_of_cached_hub_ids_runs_on_their_snapshots(models, monkeypatch):
    from subnetviz.analysis.behavior import run_config

    without_roots(monkeypatch, models["cache"])
    monkeypatch.chdir(models["root"])  # (no folder acme/ here: the ids are hub ids)
    cfg = {
        "base": "acme/tiny-base",
        "finetuned": ["acme/tiny-ft@main"],
        "prompts": str(models["prompts"]),
        "random_control": False,
        "curve": [],
        "device": "cpu",
    }
    rep = run_config(cfg)
    fwd, rev = reference_kl(models["base"], models["ft"])
    tokens = rep.tokens[rep.tokens["experiment"] == "finetuned"]
    assert np.allclose(tokens["kl_forward"].to_numpy(), fwd, rtol=1e-4, atol=1e-9)
    assert np.allclose(tokens["kl_reverse"].to_numpy(), rev, rtol=1e-4, atol=1e-9)
    assert fwd.mean() > 1e-3  # (two random initialisations: far apart, so the check above can fail)


def test_the_behaviour_cli_takes_hub_ids_and_refuses_one_not_cached_in_one_line(models, monkeypatch, capsys):
    from subnetviz.__main__ import main

    without_roots(monkeypatch, models["cache"])
    monkeypatch.chdir(models["root"])
    out = models["root"] / "out"
    args = ["--prompts", str(models["prompts"]), "--device", "cpu", "--no-random", "--curve", "--out"]
    assert main(["behavior", "acme/tiny-base", "acme/tiny-ft", *args, str(out)]) == 0
    got = json.loads((out / "behavior.json").read_text())["models"]["acme/tiny-ft"]["kl_forward"]
    fwd, _ = reference_kl(models["base"], models["ft"])
    assert got == pytest.approx(fwd.mean(), rel=1e-4)
    capsys.readouterr()
    assert main(["behavior", "acme/tiny-base", "acme/nonesuch", *args, str(models["root"] / "out2")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "acme/nonesuch" in err[0] and "not in the local Hugging Face cache" in err[0], err
    assert "does not exist" not in err[0]


def test_a_hub_id_is_refused_alike_while_the_cache_lies_outside_the_roots(models, monkeypatch):
    from subnetviz.analysis.behavior import validate_config
    from subnetviz.errors import PathNotAllowedError

    without_roots(monkeypatch, models["cache"])
    elsewhere = models["root"] / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(elsewhere))
    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    for ft in ("acme/tiny-ft", "acme/nonesuch"):
        with pytest.raises(PathNotAllowedError, match=r"hub ids are read from the Hugging Face cache, which lies"):
            validate_config({"base": "acme/tiny-base", "finetuned": [ft]})


# --- 3. Series: a run's checkpoints in a hub snapshot, as files (links into blobs/) or by the hub id -------------------
STEPS = (100, 12, 50)  # the sidebar's order; the run's is 12, 50, 100


@pytest.fixture
def trainer_run(tmp_path, monkeypatch):
    """A Trainer run pushed with every checkpoint (``hub_strategy="all_checkpoints"``) and cached as
    acme/tiny-trainer: the final model and trainer_state.json (global_step 100) at the top, checkpoint-N beside
    it, each with its trainer_state.json (checkpoint-50 with none: its step is in its name only)."""
    files = {"config.json": b"{}", "model.safetensors": b"final", "trainer_state.json": b'{"global_step": 100}'}
    for s in STEPS:
        files[f"checkpoint-{s}/model.safetensors"] = f"weights at {s}".encode()
        if s != 50:
            files[f"checkpoint-{s}/trainer_state.json"] = json.dumps({"global_step": s}).encode()
    snap = add_snapshot(tmp_path / "hub", "acme/tiny-trainer", TRAINER, files)
    without_roots(monkeypatch, tmp_path / "hub")
    monkeypatch.chdir(tmp_path)
    return snap


def test_a_runs_weight_files_in_a_hub_snapshot_are_one_run_by_step(trainer_run):
    from subnetviz.analysis.series import training_run

    paths = [str(trainer_run / f"checkpoint-{s}" / "model.safetensors") for s in STEPS]
    assert all(Path(p).is_symlink() and "blobs" in os.readlink(p) for p in paths)
    tr = training_run(paths, base="acme/tiny-base")
    assert tr.why_not == "" and tr.steps == STEPS and tr.folder == str(trainer_run)
    assert tr.read_from == ("trainer_state.json", "trainer_state.json", "folder name")
    assert [STEPS[i] for i in tr.order] == [12, 50, 100]


def test_a_hub_id_is_read_at_its_snapshots_step(trainer_run):
    from subnetviz.analysis.series import training_run

    ckpts = [str(trainer_run / f"checkpoint-{s}") for s in (12, 50)]
    tr = training_run(["acme/tiny-trainer", *ckpts], base="acme/tiny-base")
    assert tr.why_not == "" and tr.steps == (100, 12, 50) and tr.folder == str(trainer_run)
    # an id not cached carries no step (reading it says why), and stops nothing here
    tr = training_run(["acme/nonesuch", ckpts[0]], base="acme/tiny-base")
    assert tr.steps == (None, 12) and tr.why_not.startswith("acme/nonesuch carries no training step")


def test_a_file_reached_through_a_linked_cache_is_in_the_same_run_as_its_folder(trainer_run, tmp_path):
    """The cache given through a link (HF_HUB_CACHE may be one): a checkpoint folder by its real path and another's
    weight file through the link are in one run folder (the file's own link is not followed, its folder's path is)."""
    from subnetviz.analysis.series import training_run

    (tmp_path / "hublink").symlink_to(tmp_path / "hub", target_is_directory=True)
    linked = tmp_path / "hublink" / trainer_run.relative_to(tmp_path / "hub")
    tr = training_run([str(trainer_run / "checkpoint-12"), str(linked / "checkpoint-50" / "model.safetensors")])
    assert tr.why_not == "" and tr.steps == (12, 50) and tr.folder == str(trainer_run)


# --- the pages (AppTest): last in the module, as the app enforces the roots from here on ---------------------------
Q = "model.layers.0.self_attn.q_proj.weight"
UP = "model.layers.1.mlp.up_proj.weight"
# the entries each checkpoint holds moved by one ULP (all others equal to the base), some moved back later
PLAN = {
    12: {(Q, i) for i in range(6)},
    50: {(Q, i) for i in range(2, 6)} | {(UP, i) for i in (3, 17, 40)},
    100: {(Q, i) for i in range(2, 6)} | {(UP, i) for i in (17, 40, 99)} | {(Q, 100)},
}


@pytest.fixture(scope="module")
def app_hub(app_env):
    """In the app's test home (under its roots), as the cache huggingface_hub uses: the demo zoo's base and dpo as
    acme/tiny-base and acme/tiny-dpo, and a tiny Llama's run (PLAN) cached as acme/tiny-trainer."""
    from safetensors.torch import load_file, save_file

    from subnetviz.demo import load_zoo

    cache = app_env / "hub-behaviour-series"
    zoo = load_zoo()
    add_snapshot(cache, "acme/tiny-base", BASE, files_of(Path(zoo.base)))
    add_snapshot(cache, "acme/tiny-dpo", FT, files_of(Path(zoo.member_path("dpo"))))
    src = app_env / "series-src"
    base = save_model(tiny_model("llama", seed=0, kv_heads=2), src / "base")
    sd = load_file(str(base / "model.safetensors"))
    files = files_of(base)
    for step, entries in PLAN.items():
        moved = {n: t.clone() for n, t in sd.items()}
        for name, i in entries:
            moved[name].view(torch.int16).view(-1)[i] += 1
        ck = src / f"checkpoint-{step}"
        shutil.copytree(base, ck)
        save_file(moved, str(ck / "model.safetensors"), metadata={"format": "pt"})
        (ck / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        files.update(files_of(ck, f"checkpoint-{step}/"))
    snap = add_snapshot(cache, "acme/tiny-trainer", TRAINER, files)
    saved = os.environ.get("HF_HUB_CACHE")
    os.environ["HF_HUB_CACHE"] = str(cache)
    yield {"zoo": zoo, "base": base, "snap": snap, "numel": sum(t.numel() for t in sd.values())}
    if saved is None:
        os.environ.pop("HF_HUB_CACHE", None)
    else:
        os.environ["HF_HUB_CACHE"] = saved


def _checked(at):
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _finetuned_kl(at) -> float:
    from tests.app_fixtures import decode, plotly_specs

    bars = next(s for s in plotly_specs(at) if s["data"][0]["type"] == "bar")
    (trace,) = bars["data"]
    return dict(zip(trace["x"], decode(trace["y"]).tolist(), strict=True))["finetuned"]


@pytest.mark.slow
def test_the_behaviour_page_runs_hub_ids_as_their_folders(app_hub, typed_options):
    from tests.app_fixtures import open_page

    zoo = app_hub["zoo"]
    query = {"bh_curve": "false"}
    by_id = _checked(open_page("behavior", base="acme/tiny-base", ft=["acme/tiny-dpo"], **query))
    by_folder = _checked(
        open_page("behavior", base=str(zoo.base), ft=[str(zoo.member_path("dpo"))], **query)
    )  # (the same weights, read from the zoo's folders)
    assert _finetuned_kl(by_id) > 0
    assert _finetuned_kl(by_id) == pytest.approx(_finetuned_kl(by_folder), rel=1e-6)


@pytest.mark.slow
def test_the_series_page_reads_a_runs_snapshot_files_as_one_run_by_step(app_hub, typed_options):
    from tests.app_fixtures import open_page

    ft = [str(app_hub["snap"] / f"checkpoint-{s}" / "model.safetensors") for s in STEPS]
    at = _checked(open_page("series", base=str(app_hub["base"]), ft=ft, series_src=RUN_SRC))
    assert at.selectbox(key="series_src").value == RUN_SRC
    table = next(d.value for d in at.dataframe if "step" in d.value.columns)
    prev, vs_prev = set(), []
    for s in sorted(PLAN):
        vs_prev.append(len(PLAN[s] ^ prev))
        prev = PLAN[s]
    assert list(table["step"]) == [12, 50, 100]
    assert list(table["changed_vs_base"]) == [len(PLAN[s]) for s in sorted(PLAN)]
    assert list(table["changed_vs_previous"]) == vs_prev  # [6, 5, 3]: the run's own steps
    back = [len(set().union(*(PLAN[t] for t in sorted(PLAN) if t <= s)) - PLAN[s]) for s in sorted(PLAN)]
    assert table["back_to_start_share"].tolist() == pytest.approx([100 * b / app_hub["numel"] for b in back])


def test_series_a_users_own_links_to_a_runs_checkpoints_keep_their_steps(tmp_path):
    """links/early.safetensors -> out/checkpoint-500/model.safetensors: the folder holding the link says no step,
    so the step is the linked file's folder's (taking the link's own folder alone lost it: "carries no training
    step", the run read as independent finetunes)."""
    from safetensors.torch import save_file

    from subnetviz.analysis.series import training_run

    run = tmp_path / "out"
    for s in (500, 1000):
        d = run / f"checkpoint-{s}"
        d.mkdir(parents=True)
        save_file({"w": torch.zeros(2, 2)}, d / "model.safetensors")
        (d / "trainer_state.json").write_text(json.dumps({"global_step": s}))
    links = tmp_path / "links"
    links.mkdir()
    (links / "late.safetensors").symlink_to(run / "checkpoint-1000" / "model.safetensors")
    (links / "early.safetensors").symlink_to(run / "checkpoint-500" / "model.safetensors")
    for paths in (
        [links / "late.safetensors", links / "early.safetensors"],
        [run / "checkpoint-500" / "model.safetensors", links / "late.safetensors"],
    ):
        r = training_run([str(p) for p in paths])
        assert sorted(r.steps) == [500, 1000] and not r.why_not, (paths, r)
