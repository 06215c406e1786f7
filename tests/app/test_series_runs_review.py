"""The Series page on the sidebar's checkpoints of one training run (review overlap_series2, defect 1).

A run's ``checkpoint-<N>`` folders given in the sidebar were always read as independent finetunes in the sidebar's
order: "not one run", the cancelled updates called "not one undone", no per-module chart, and the steps were the
sidebar positions (an ``ls`` order drew checkpoint-1000 after checkpoint-100). Now such checkpoints are one run: the
steps come from trainer_state.json / step.json / the folder names, they are sorted by step (and the page says so
when the sidebar's order differed), and the run's captions, split and module chart are drawn.

Reference: planted +1 ULP changes with a known schedule (some reverted later), every count from the sets alone.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from subnetviz.analysis.series import training_run
from tests.app_fixtures import decode, open_page, plotly_specs
from tests.models import save_model, tiny_model

pytestmark = pytest.mark.slow
Q = "model.layers.0.self_attn.q_proj.weight"
UP = "model.layers.1.mlp.up_proj.weight"
RUN_SRC, ORDER_SRC = "workspace: one training run, by step", "workspace: base → finetuned in sidebar order"
# the entries each checkpoint holds moved by one ULP (all others equal to the base): some reverted later
A = {(Q, i) for i in range(6)}
B = {(UP, i) for i in (3, 17, 40, 41)}
C = {(Q, i) for i in (100, 101, 102)}
PLAN = {
    5: A,
    10: (A - {(Q, 0), (Q, 1)}) | B,
    20: (A - {(Q, 0), (Q, 1)}) | B | C,
    100: (A - {(Q, 0), (Q, 1)}) | (B - {(UP, 3)}) | C | {(UP, 99)},
}
STATE = {5, 20}  # checkpoints that carry trainer_state.json; the others' steps are in their names only


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A base, and its training run ``run/checkpoint-<N>`` (the Trainer's layout: optimizer, scheduler beside)."""
    root = tmp_path_factory.mktemp("series-runs-review").resolve()
    saved = {k: os.environ.get(k) for k in ("SUBNETVIZ_HOME", "SUBNETVIZ_ROOTS")}
    os.environ["SUBNETVIZ_HOME"], os.environ["SUBNETVIZ_ROOTS"] = str(root / "home"), str(root)
    torch.set_num_threads(1)
    base = save_model(tiny_model("llama", seed=0, kv_heads=2), root / "base")
    sd = load_file(str(base / "model.safetensors"))
    numel = sum(t.numel() for t in sd.values())
    for step, entries in PLAN.items():
        ck = root / "run" / f"checkpoint-{step}"
        shutil.copytree(base, ck)
        moved = {n: t.clone() for n, t in sd.items()}
        for name, i in entries:
            moved[name].view(torch.int16).view(-1)[i] += 1
        save_file(moved, str(ck / "model.safetensors"), metadata={"format": "pt"})
        (ck / "optimizer.pt").write_bytes(b"optimizer state, never read")
        if step in STATE:
            (ck / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 100}))
    yield {"root": root, "base": base, "numel": numel}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _reference(numel: int) -> dict:
    """Every count of the series from the planted sets: vs the base, vs the previous checkpoint, back to the base
    after an update, and the split."""
    steps = sorted(PLAN)
    prev, ever, out = set(), set(), {"vs_base": [], "vs_prev": [], "back": []}
    for s in steps:
        now = PLAN[s]
        ever |= now
        out["vs_base"].append(len(now))
        out["vs_prev"].append(len(now ^ prev))
        out["back"].append(len(ever - now) / numel)
        prev = now
    last = PLAN[steps[-1]]
    out["split"] = [numel - len(ever), len(ever - last), len(last)]
    return out


def _texts(at) -> str:
    return " ".join(e.value.replace("\\", "").replace("\u200b", "") for e in (*at.caption, *at.info, *at.warning))


@pytest.mark.parametrize("src", [RUN_SRC, ORDER_SRC])  # ORDER_SRC: a link made before; the run is read as one
def test_a_runs_checkpoints_in_ls_order_are_one_run_by_step(run, typed_options, src):
    ls_order = sorted(f"checkpoint-{s}" for s in PLAN)  # checkpoint-10, checkpoint-100, checkpoint-20, checkpoint-5
    ft = [str(run["root"] / "run" / name) for name in ls_order]
    at = open_page("series", base=str(run["base"]), ft=ft, series_src=src)
    assert not at.exception and not at.error, [e.message for e in at.exception] + [e.value for e in at.error]
    assert at.selectbox(key="series_src").value == RUN_SRC
    said = _texts(at)
    assert "gradients that cancelled out" in said and "not one run" not in said and "not one undone" not in said
    assert "one training run's checkpoints" in said and "Ordered by training step, not as in the sidebar" in said
    ref = _reference(run["numel"])
    table = next(d.value for d in at.dataframe if "step" in d.value.columns)
    assert list(table["step"]) == sorted(PLAN)
    assert list(table["checkpoint"]) == [f"checkpoint-{s}" for s in sorted(PLAN)]
    assert list(table["changed_vs_base"]) == ref["vs_base"]
    assert list(table["changed_vs_previous"]) == ref["vs_prev"]
    assert table["back_to_start_share"].tolist() == pytest.approx([100 * b for b in ref["back"]])
    split = next(d.value for d in at.dataframe if "part" in d.value.columns)
    assert list(split["part"]) == ["never updated", "updated, unchanged at the end", "final subnetwork"]
    assert list(split["count"]) == ref["split"]
    specs = {s["layout"]["title"]["text"].split("<br>")[0]: s for s in plotly_specs(at)}
    lines = specs["Checkpoint series: update sparsity over training"]
    assert any("back to the start" in t["name"] for t in lines["data"])
    assert list(decode(lines["data"][0]["x"])) == [0, *sorted(PLAN)] and not lines["layout"]["xaxis"].get("ticktext")
    modules = next(s for t, s in specs.items() if t.startswith("Sparsity per module kind"))
    assert all(list(decode(t["x"])) == [0, *sorted(PLAN)] for t in modules["data"])


def test_a_folder_without_a_step_keeps_the_sidebar_order_and_says_why(run, typed_options):
    """The run's final model at the top of its folder carries no step here: the checkpoints are not read as one
    run, and the page says which one has no step (the independent-finetune view, its wording kept)."""
    final = run["root"] / "run"
    shutil.copy(run["root"] / "run" / "checkpoint-100" / "model.safetensors", final / "model.safetensors")
    shutil.copy(run["base"] / "config.json", final / "config.json")
    try:
        ft = [str(run["root"] / "run" / f"checkpoint-{s}") for s in sorted(PLAN)] + [str(final)]
        at = open_page("series", base=str(run["base"]), ft=ft, series_src=ORDER_SRC)
    finally:
        (final / "model.safetensors").unlink()
        (final / "config.json").unlink()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key="series_src").value == ORDER_SRC
    said = _texts(at)
    assert "Not read as one training run: run carries no training step" in said
    assert "independent finetunes" in said and "gradients that cancelled out" not in said
    table = next(d.value for d in at.dataframe if "step" in d.value.columns)
    assert list(table["step"]) == list(range(1, len(ft) + 1))


# --- training_run on its own: where the steps come from, and what is not one run ----------------------------------


def _folder(path, trainer_step=None, step_json=None):
    path.mkdir(parents=True)
    if trainer_step is not None:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": trainer_step}))
    if step_json is not None:
        (path / "step.json").write_text(json.dumps({"step": step_json}))
    return str(path)


def test_steps_come_from_trainer_state_then_step_json_then_the_name(tmp_path):
    a = _folder(tmp_path / "run" / "checkpoint-7", trainer_step=70)  # global_step first
    b = _folder(tmp_path / "run" / "step-30", step_json=30)
    c = _folder(tmp_path / "run" / "global_step50")
    d = _folder(tmp_path / "run" / "checkpoint-9")
    (tmp_path / "run" / "checkpoint-9" / "trainer_state.json").write_text("{not json")  # passed over: the name
    tr = training_run([a, b, c, d], ["a", "b", "c", "d"])
    assert tr.why_not == "" and tr.steps == (70, 30, 50, 9) and tr.folder == str((tmp_path / "run").resolve())
    assert tr.read_from == ("trainer_state.json", "step.json", "folder name", "folder name")
    assert tr.order == [3, 1, 2, 0] and tr.reordered


def test_the_final_model_at_the_top_of_the_run_with_its_own_step_belongs(tmp_path):
    ck = _folder(tmp_path / "out" / "checkpoint-100")
    final = tmp_path / "out"
    (final / "trainer_state.json").write_text(json.dumps({"global_step": 120}))
    tr = training_run([str(final), ck])
    assert tr.why_not == "" and tr.steps == (120, 100) and tr.order == [1, 0]


def test_a_base_that_is_a_checkpoint_of_the_run_starts_it_at_its_step(tmp_path):
    ck5, ck10, ck20 = (_folder(tmp_path / "run" / f"checkpoint-{s}") for s in (5, 10, 20))
    tr = training_run([ck20, ck10], base=ck5)
    assert tr.why_not == "" and tr.start == 5 and tr.steps == (20, 10)
    assert training_run([ck20, ck10], base=str(tmp_path / "elsewhere")).start == 0  # another folder: the start, 0
    assert "checkpoint-10 is at step 10, not after the base (step 20)" in training_run([ck10], base=ck20).why_not


@pytest.mark.parametrize(
    ("layout", "why"),
    [
        ({"r1/checkpoint-10": None, "r2/checkpoint-20": None}, "2 different folders"),
        ({"r/checkpoint-10": None, "r/step-7": 10}, "are both at step 10"),  # (step-7's trainer_state says 10)
        ({"r/checkpoint-10": None, "r/snap": 20}, "snap is no checkpoint-<N>, step-<N> or global_step<N> folder"),
        ({"r/checkpoint-10": None, "r/other": None}, "other carries no training step"),
        ({"r/checkpoint-0": None}, "is at step 0, not after the base"),
    ],
)
def test_what_is_not_one_run(tmp_path, layout, why):
    paths = [_folder(tmp_path / rel, trainer_step=s) for rel, s in layout.items()]
    tr = training_run(paths, [os.path.basename(p) for p in paths])
    assert why in tr.why_not, tr.why_not


def test_with_the_demo_zoo_a_link_to_the_sidebar_order_opens_the_run(app_env, typed_options):
    """With the demo zoo built its series is the first source: a link made before (``series_src`` the sidebar
    order) opened the zoo's run instead of the sidebar's run. (Last in this file: app_env sets the read roots.)"""
    folder = app_env / "tmp-series-runs-review"
    base = save_model(tiny_model("llama", seed=0, kv_heads=2), folder / "base")
    try:
        for step in (20, 10):
            shutil.copytree(base, folder / "run" / f"step-{step}")
            (folder / "run" / f"step-{step}" / "step.json").write_text(json.dumps({"step": step}))
        ft = [str(folder / "run" / "step-20"), str(folder / "run" / "step-10")]
        at = open_page("series", base=str(base), ft=ft, series_src=ORDER_SRC)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key="series_src").options == ["demo zoo: GRPO seed 0", RUN_SRC]
    assert at.selectbox(key="series_src").value == RUN_SRC
    table = next(d.value for d in at.dataframe if "step" in d.value.columns)
    assert list(table["step"]) == [10, 20] and list(table["changed_vs_base"]) == [0, 0]
    assert not [w.value for w in at.main.warning]  # (no word from Streamlit on the choice set before the widget)


def test_independent_finetunes_each_with_its_trainer_state_are_no_run(tmp_path):
    """Two finetunes saved side by side, each with the trainer_state.json Trainer.save_state() writes at the top
    of its output_dir, were read as one run's checkpoints at steps 938 and 1250 (their own runs' ends)."""
    a, b = (tmp_path / "models" / n for n in ("sft-A", "sft-B"))
    for folder, step in ((a, 938), (b, 1250)):
        _folder(folder)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    tr = training_run([str(a), str(b)], ["sft-A", "sft-B"])
    assert tr.why_not.startswith("sft-A is no checkpoint-<N>, step-<N> or global_step<N> folder of a run")
