"""A hub repository's training checkpoints pushed as branches (Pythia's ``EleutherAI/pythia-70m@step1000``, OLMo's
``@stage1-step1000-tokens5B``) are one run on the Series page, each at the step its revision names.

Each branch is its own snapshot (``snapshots/<commit>``, named for its commit: no step in the folder) with
``refs/<branch>`` naming the commit, as huggingface_hub caches ``revision="step1000"``; they read as independent
finetunes in the sidebar's order before. References: planted +1 ULP changes, counted without subnetviz.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.integration.test_hub_ids_behaviour_series import add_snapshot, files_of, without_roots
from tests.models import save_model, tiny_model

REPO = "acme/tiny-pythia"
RUN_SRC = "workspace: one training run, by step"
Q = "model.layers.0.self_attn.q_proj.weight"
UP = "model.layers.1.mlp.up_proj.weight"
# (step -> entries moved by one ULP against step 0); step 3000 is also what main names, as Pythia's step143000
PLAN = {
    1000: {(Q, i) for i in range(5)},
    2000: {(Q, i) for i in range(2, 5)} | {(UP, 7)},
    3000: {(UP, i) for i in (7, 9)},
}


def _commit(step: int) -> str:
    return f"{step:040x}"


@pytest.fixture
def cache(tmp_path):
    """acme/tiny-pythia cached at branches step0, step1000, step2000 and step3000 (= main); the numel."""
    from safetensors.torch import load_file, save_file

    base = save_model(tiny_model("llama", seed=0, kv_heads=2), tmp_path / "src" / "step0")
    sd = load_file(str(base / "model.safetensors"))
    hub = tmp_path / "hub"
    add_snapshot(hub, REPO, _commit(0), files_of(base))
    for step, entries in PLAN.items():
        moved = {n: t.clone() for n, t in sd.items()}
        for name, i in entries:
            moved[name].view(torch.int16).view(-1)[i] += 1
        ck = tmp_path / "src" / f"s{step}"
        shutil.copytree(base, ck)
        save_file(moved, str(ck / "model.safetensors"), metadata={"format": "pt"})
        add_snapshot(hub, REPO, _commit(step), files_of(ck))  # (refs/main: the last, step 3000)
    refs = hub / f"models--{REPO.replace('/', '--')}" / "refs"
    for step in (0, *PLAN):
        (refs / f"step{step}").write_text(_commit(step))
    return {"hub": hub, "numel": sum(t.numel() for t in sd.values())}


def test_step_branches_of_one_repository_are_one_run_by_step(cache, monkeypatch, tmp_path):
    from subnetviz.analysis.series import training_run

    without_roots(monkeypatch, cache["hub"])
    monkeypatch.chdir(tmp_path)
    tr = training_run([f"{REPO}@step2000", f"{REPO}@step1000"], base=f"{REPO}@step0")
    assert tr.why_not == "" and tr.steps == (2000, 1000) and tr.order == [1, 0] and tr.start == 0
    assert tr.folder == REPO and tr.read_from == ("hub revision", "hub revision")
    tr = training_run([f"{REPO}@step3000", f"{REPO}@step2000"], base=f"{REPO}@step1000")  # a later step as base
    assert tr.why_not == "" and tr.start == 1000
    assert (
        "step1000 is at step 1000, not after the base (step 2000)"
        in training_run([f"{REPO}@step1000"], base=f"{REPO}@step2000").why_not
    )
    # main (Pythia's last step) says no step: not taken as the run's start
    why = training_run([f"{REPO}@step1000"], base=REPO).why_not
    assert why.startswith(f"the base {REPO} is in the same repository at a revision that names no step")
    # another repository's base is the start, as a folder elsewhere is
    assert training_run([f"{REPO}@step1000"], base="acme/other").start == 0
    assert "branches of 2 hub repositories" in training_run([f"{REPO}@step1000", "acme/other@step5"]).why_not
    mixed = training_run([f"{REPO}@step1000", str(tmp_path / "src" / "s2000")])
    assert mixed.why_not.startswith(f"{REPO}@step1000 is a hub repository's branch and others are not")


def test_the_step_names_releases_use():
    from subnetviz.analysis.series import HUB_STEP

    steps = {"step143000": 143000, "step0": 0, "stage1-step1000-tokens5B": 1000, "step5000-tokens21B": 5000}
    steps |= {"stage2-ingredient1-step11931-tokens100B": None, "checkpoint-500": 500, "global_step20": 20}
    steps |= {"main": None, "v1.0": None, "step": None, "0123abc": None}
    for rev, step in steps.items():
        m = HUB_STEP.match(rev)
        assert (int(m.group(1) or m.group(2)) if m else None) == step, rev


@pytest.mark.slow
def test_the_series_page_reads_step_branches_as_one_run(cache, app_env, typed_options, monkeypatch):
    from tests.app_fixtures import open_page

    monkeypatch.setenv("HF_HUB_CACHE", str(cache["hub"]))  # (a cache under the roots: ids are read from it)
    monkeypatch.setenv("SUBNETVIZ_ROOTS", f"{app_env}:{cache['hub']}")
    ft = [f"{REPO}@step{s}" for s in (3000, 1000, 2000)]
    at = open_page("series", base=f"{REPO}@step0", ft=ft, series_src=RUN_SRC)
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="series_src").value == RUN_SRC
    table = next(d.value for d in at.dataframe if "step" in d.value.columns)
    assert list(table["step"]) == [1000, 2000, 3000]
    prev, vs_prev = set(), []
    for s in sorted(PLAN):
        vs_prev.append(len(PLAN[s] ^ prev))
        prev = PLAN[s]
    assert list(table["changed_vs_base"]) == [len(PLAN[s]) for s in sorted(PLAN)]
    assert list(table["changed_vs_previous"]) == vs_prev
    said = " ".join(c.value for c in at.caption).replace("\\", "")  # (shown as text: markdown escaped)
    assert f"one training run's checkpoints ({REPO}), taken in training order by their steps (hub revision)" in said
