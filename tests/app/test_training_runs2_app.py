"""The Training page against the second training-runs review: the Launch form with a mask that does not fit the
typed base and with training data of set B, the run card's accuracy and its outside-the-mask verdict once the model
on disk changed, the "Subnetwork vs full" base row for runs of another base, and the Runs view's curves of a
continual job and of a run that went NaN. Planted runs are written here by hand (registry rows, metrics, summaries,
digests by hashlib); the numbers compared come from the zoo's manifest or from the planted case itself."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.app_fixtures import open_page, plotly_specs

pytestmark = pytest.mark.slow


def _texts(at, kind: str) -> list[str]:
    """The texts as read (markdown escapes and the zero-width space the page puts before a colon taken out)."""
    return [e.value.replace("\\", "").replace("\u200b", "") for e in getattr(at.main, kind)]


@pytest.fixture
def queued(monkeypatch):
    """The configs the Launch form submits: each validated as the runner's submit validates it before it queues
    anything (a refusal raises there), then recorded instead of started."""
    from subnetviz.jobs.kinds import validate_job_config
    from subnetviz.jobs.runner import JobRunner

    seen: list[dict] = []

    def submit(self, config, name=None):
        validate_job_config(config)
        seen.append(config)
        return "run-queued"

    monkeypatch.setattr(JobRunner, "submit", submit)
    return seen


def _launch(at):
    next(b for b in at.button if b.label == "Launch run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# --- D2: a mask that does not fit the typed base ------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_base(app_env):
    """A 16-wide Llama under the app's roots (the zoo's base is 32 wide)."""
    from tests.models import make_tiny_llama

    folder = make_tiny_llama(Path(app_env) / "runs2-other-base", hidden=16, intermediate=32)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_mask_that_does_not_fit_the_typed_base_is_one_line_and_nothing_is_queued(app_env, queued, other_base):
    """Base = a 16-wide folder, Train only = grpo-s0's update mask (32 wide): the page said "Queued run ..." and a
    note about hyperparameters, and the run failed seconds later in the worker."""
    at = open_page("training")
    at.text_input(key="tr_base").input(str(other_base))
    at.selectbox(key="tr_mask").select("update mask of grpo-s0")
    at.number_input(key="tr_steps").set_value(2)
    _launch(at)
    assert queued == []
    errors = _texts(at, "error")
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "does not fit the model: " in errors[0] and "the model's parameter has (32, 16)" in errors[0]
    assert not _texts(at, "success") and not _texts(at, "warning")  # no "Queued run", no hyperparameter note


# --- D5: the held-out set follows the training data; the card names it --------------------------------------------


@pytest.mark.parametrize(
    ("data", "held_out", "eval_file"),
    [("B_train", None, "B_eval.jsonl"), (None, None, "A_eval.jsonl"), ("B_train", "A_eval", "A_eval.jsonl")],
)
def test_the_held_out_set_follows_the_training_data(app_env, queued, data, held_out, eval_file):
    """GRPO on B_train queued eval_data A_eval (the first of the sorted list, in a form that does not react to the
    training data). By default it is the training set's own (set A for the zoo's default data); a set chosen by
    hand is kept."""
    at = open_page("training")
    if data:
        at.selectbox(key="tr_data").select(data)
    if held_out:
        at.selectbox(key="tr_eval").select(held_out)
    _launch(at)
    assert len(queued) == 1 and Path(queued[0]["eval_data"]).name == eval_file
    assert Path(queued[0]["eval_data"]).parent == Path(queued[0]["data"]).parent  # the zoo's data folder


def test_own_training_data_gets_no_borrowed_held_out_set(app_env, queued, typed_options):
    own = Path(app_env) / "runs2-own.jsonl"
    own.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(4)))
    try:
        at = open_page("training")
        at.selectbox(key="tr_data").set_value(str(own))
        _launch(at)
    finally:
        own.unlink()
    assert len(queued) == 1 and queued[0]["eval_data"] is None
    assert [
        w
        for w in _texts(at, "warning")
        if w.startswith("No held-out accuracy for this run: runs2-own.jsonl has no held-out set")
    ]


def test_the_card_names_the_set_its_accuracy_is_on(finished_run, app_env):
    from subnetviz.demo import load_zoo

    model = finished_run("runs2-acc", {"algorithm": "grpo", "data": "/d/B_train.jsonl", "eval_data": "/d/A_eval.jsonl"})
    (model / "train_summary.json").write_text(json.dumps({"metrics": {"loss": 0.5}, "accuracy": 0.37}))
    at = open_page("training", tr_view="Runs", tr_run="runs2-acc")
    assert not at.exception and not at.error
    metrics = {m.label.replace("\\", ""): m.value for m in at.metric}
    # (the file in a caption: in the metric's label it was cut at 1024 px, "accuracy (A_eval.js…")
    assert metrics["accuracy"] == "37.0 %" and "Accuracy on A_eval.jsonl." in [
        c.value.replace("\\", "") for c in at.caption
    ]
    # a zoo member's accuracy, as its build measured it, is on its own problem set's file (grpo-B: set B)
    zoo = load_zoo()
    member = zoo.manifest.member("grpo-B")
    cfg = {"algorithm": "grpo", "zoo_member": "grpo-B", "zoo_fingerprint": zoo.manifest.fingerprint}
    (finished_run("runs2-zoo", cfg) / "train_summary.json").write_text(json.dumps({"metrics": {"loss": 0.5}}))
    at = open_page("training", tr_view="Runs", tr_run="runs2-zoo")
    metrics = {m.label.replace("\\", ""): m.value for m in at.metric}
    assert metrics["accuracy"] == f"{100 * member.accuracy_B:.1f} %"
    assert "Accuracy on B_eval.jsonl." in [c.value.replace("\\", "") for c in at.caption]


# --- D6: the verdict is about the weights the check read -----------------------------------------------------------


def _summary_with_record(model: Path, weights: bytes) -> None:
    (model / "model.safetensors").write_bytes(weights)
    st = (model / "model.safetensors").stat()
    record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": hashlib.sha256(weights).hexdigest()}
    check = {"outside_mask_identical": True, "changed_outside": 0, "changed_inside": 5, "tensors_compared": 1}
    summary = {"metrics": {"loss": 0.5}, "mask_check": {**check, "weights": {"model.safetensors": record}}}
    (model / "train_summary.json").write_text(json.dumps(summary))


def test_the_outside_the_mask_verdict_is_not_green_once_the_model_changed(finished_run, app_env):
    """One bit flipped in the saved weights after the run: the card still showed the green "bit-identical" line."""
    from subnetviz.demo import load_zoo

    mask = str(load_zoo().mask_path("grpo-s0"))
    weights = (Path(app_env) / "zoo" / "base" / "model.safetensors").read_bytes()
    model = finished_run("runs2-check", {"algorithm": "sft", "mask": mask})
    _summary_with_record(model, weights)
    at = open_page("training", tr_view="Runs", tr_run="runs2-check")
    assert not at.exception and not at.error
    assert [s for s in _texts(at, "success") if s.startswith("Outside the mask: bit-identical")]
    assert not [w for w in _texts(at, "warning") if "changed since" in w]

    flipped = bytearray(weights)
    flipped[-1] ^= 0x01
    (model / "model.safetensors").write_bytes(bytes(flipped))
    at = open_page("training", tr_view="Runs", tr_run="runs2-check")
    assert not at.exception and not at.error
    assert not [s for s in _texts(at, "success") if "Outside the mask" in s]
    (said,) = [w for w in _texts(at, "warning") if "Outside the mask" in w]
    assert "when checked after training" in said and "The model on disk changed since (model.safetensors" in said


def test_a_summary_without_the_weights_record_says_so(finished_run, app_env):
    from subnetviz.demo import load_zoo

    model = finished_run("runs2-old", {"algorithm": "sft", "mask": str(load_zoo().mask_path("grpo-s0"))})
    check = {"outside_mask_identical": True, "changed_outside": 0, "changed_inside": 5}
    (model / "train_summary.json").write_text(json.dumps({"metrics": {"loss": 0.5}, "mask_check": check}))
    at = open_page("training", tr_view="Runs", tr_run="runs2-old")
    assert [s for s in _texts(at, "success") if s.startswith("Outside the mask: bit-identical")]
    assert "Checked after training; this summary does not record which weights the check read." in _texts(at, "caption")


# --- D3: the comparison's base row ------------------------------------------------------------------------------------


def _planted_eval(sft: Path, base: Path, out: Path) -> Path:
    """An eval set on which the zoo's sft and base score differently, planted: the prompts "a+b=" whose greedy
    completions (8 new tokens, as the held-out accuracy generates) differ between the two, answered with sft's. The
    micro zoo's members all scored 0 % on A_eval on some machines, where the two bases could not be told apart."""
    from subnetviz.checkpoints.models import load_causal_lm, load_tokenizer

    prompts = [f"{a}+{b}=" for a in range(10) for b in range(10)]
    done = {}
    for folder in (sft, base):
        tok = load_tokenizer(folder)
        enc = tok(prompts, return_tensors="pt")  # (one length: no padding)
        model = load_causal_lm(folder).eval()
        with torch.no_grad():
            gen = model.generate(**enc, do_sample=False, max_new_tokens=8, pad_token_id=tok.eos_token_id)
        done[folder] = [
            t.strip() for t in tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        ]
    rows = [(p, a) for p, a, b in zip(prompts, done[sft], done[base], strict=True) if a != b][:64]
    assert rows, "sft and the base complete every prompt alike"
    out.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in rows))
    return out


def test_the_comparison_base_row_is_the_base_both_runs_were_trained_from(finished_run, app_env):
    """Two runs trained from another base (here the zoo's sft member, their models exact copies of it) were
    scored beside the sidebar's base (the zoo's base) under the label "base". The base row is their base: scored
    as the identical copies are, on an eval set where the two bases differ."""
    from subnetviz.demo import load_zoo
    from subnetviz.training.evaluate import evaluate_accuracy

    zoo = load_zoo()
    eval_file = _planted_eval(zoo.root / "sft", zoo.root / "base", Path(app_env) / "runs2-planted-eval.jsonl")
    sft, base = (evaluate_accuracy(zoo.root / m, eval_file) for m in ("sft", "base"))
    assert sft != base  # the planted difference between the two bases
    for run_id in ("runs2-full", "runs2-sub"):
        model = finished_run(run_id, {"algorithm": "sft", "base": str(zoo.root / "sft"), "eval_data": str(eval_file)})
        model.rmdir()
        shutil.copytree(zoo.root / "sft", model)
    at = open_page(
        "training",
        tr_view="Subnetwork vs full",
        cmp_full="run runs2-full · runs2-full",
        cmp_sub="run runs2-sub · runs2-sub",
        cmp_acc="true",
    )
    assert not at.exception and not at.error, [e.value for e in at.error]
    (acc,) = [d.value for d in at.dataframe if "model" in d.value.columns]
    rows = dict(zip(acc["model"], acc["accuracy"], strict=True))
    (label,) = [m for m in rows if m.startswith("base")]
    assert label.startswith("base (") and "sft" in label
    assert rows[label] == rows["full"] == rows["subnetwork"] == pytest.approx(100 * sft)  # (in %)


# --- D4 / D8: curves of a continual job, and of a run that went NaN ---------------------------------------------------


def _metrics(run_dir: Path, rows: list[dict]) -> None:
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"time": 1.0, "total": 8, **r}) + "\n" for r in rows))


def _curves(at) -> list[dict]:
    return [s for s in plotly_specs(at) if str(s["layout"].get("title", {}).get("text", "")).startswith("Run ")]


def test_a_continual_job_shows_no_training_curve_and_is_no_overlay(finished_run, app_env):
    """The demo's continual job was drawn as a "loss" curve over step 1..60 (methods, seeds and tasks one after
    another), smoothed across methods, and could be overlaid on a train run's loss."""
    cont = finished_run("runs2-cont", {"methods": ["SupSup"]}, kind="continual").parent.parent
    _metrics(cont, [{"step": i, "loss": 0.04, "method": "SupSup"} for i in range(1, 7)])
    train = finished_run("runs2-train", {"algorithm": "sft"}).parent.parent
    _metrics(train, [{"step": i, "loss": 1.0 / i} for i in range(1, 4)])
    at = open_page("training", tr_view="Runs", tr_run="runs2-cont")
    assert not at.exception and not at.error and not _curves(at)
    assert not [m for m in at.multiselect if m.key == "tr_overlay"]
    at = open_page("training", tr_view="Runs", tr_run="runs2-train", tr_overlay="runs2-cont")
    assert not at.exception and not at.error
    assert "runs2-cont" not in at.multiselect(key="tr_overlay").options
    (fig,) = _curves(at)
    assert {t.get("name") for t in fig["data"] if t.get("mode") == "lines+markers"} == {"runs2-train · runs2-train"}


def test_a_run_that_went_nan_is_marked_on_the_chart(finished_run, app_env):
    run_dir = finished_run("runs2-nan", {"algorithm": "sft"}).parent.parent
    rows = [{"step": s, "loss": 1.0 / s if s < 5 else float("nan"), "entropy": 0.5} for s in range(1, 9)]
    _metrics(run_dir, rows)
    at = open_page("training", tr_view="Runs", tr_run="runs2-nan")
    assert not at.exception and not at.error
    (fig,) = _curves(at)
    marks = [t for t in fig["data"] if t.get("mode") == "markers"]
    assert len(marks) == 1 and marks[0]["xaxis"] == "x" and "NaN/Inf at step" in marks[0]["hovertemplate"]
    from tests.app_fixtures import decode

    assert decode(marks[0]["x"]).tolist() == [5, 6, 7, 8]
    assert marks[0]["legendgroup"] == "runs2-nan · runs2-nan (diverged at step 5)"


def test_the_comparison_export_carries_what_was_not_compared(finished_run, app_env, exports):
    """'Not compared (present in one run only)' was a caption on the view and missing from its export: the
    exported share of identical parameters read as over both models whole. Here the full run's copy stores one
    extra tensor the subnetwork run lacks (planted), open view and closed view alike."""
    import html as _html
    import re

    from safetensors.torch import load_file, save_file

    from subnetviz.demo import load_zoo

    zoo = load_zoo()
    models = {}
    for run_id in ("runs2-x-full", "runs2-x-sub"):
        model = finished_run(run_id, {"algorithm": "sft", "base": str(zoo.root / "base")})
        model.rmdir()
        shutil.copytree(zoo.root / "sft", model)
        models[run_id] = model
    sd = load_file(str(models["runs2-x-full"] / "model.safetensors"))
    sd["extra.planted.weight"] = torch.zeros(2, 2)
    save_file(sd, str(models["runs2-x-full"] / "model.safetensors"), metadata={"format": "pt"})
    query = {"cmp_full": "run runs2-x-full · runs2-x-full", "cmp_sub": "run runs2-x-sub · runs2-x-sub"}
    for view in ("Subnetwork vs full", "Runs"):
        at = open_page("training", tr_view=view, **query)
        assert not at.exception and not at.error, [e.value for e in at.error]
        page = exports["Training runs"]()
        notes = _html.unescape(re.search(r'<p class="notes">(.*?)</p>', page, re.S).group(1))
        assert "Not compared (present in one run only): extra.planted.weight" in notes, view
        if view == "Subnetwork vs full":
            assert any("extra.planted.weight" in c.value.replace("\\", "") for c in at.caption)
