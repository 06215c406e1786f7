"""The Training page and the app's start-up against what a run folder or registry may hold: a registry that is no
SQLite database, a train_summary.json that is cut off, a list, text or huge, a job submitted without lr or seed,
a random control mask kept with its source's provenance, and the held-out set the comparison scores accuracy on.
Each planted case has its answer written out here (the numbers a zoo build measured, the defaults of the config
documentation), not recomputed through the page's helpers."""

import json
import shutil

import pytest

from tests.app_fixtures import app_roots, open_page, plotly_specs

pytestmark = pytest.mark.slow


def _texts(at, kind: str) -> list[str]:
    return [e.value.replace("\\", "") for e in getattr(at, kind)]


@pytest.fixture
def broken_home(app_home, monkeypatch, tmp_path):
    """A home over the test zoo whose job registry is 8 KiB of bytes that are no SQLite database."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "zoo").symlink_to((app_home / "zoo").resolve(), target_is_directory=True)
    (home / "runs").mkdir()
    (home / "runs" / "registry.sqlite").write_bytes(bytes(range(256)) * 32)
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", app_roots(home))
    return home


@pytest.mark.parametrize("page", ["home", "sparsity", "training"])
def test_a_corrupt_registry_is_one_error_and_the_other_pages_work(app_env, broken_home, page):
    """Before: ui.startup() raised the registry's ConfigError outside any page's error boundary, so every page,
    Home and the analysis pages included, ended in an uncaught exception (Streamlit's generic error when served)."""
    at = open_page(page, **({"tr_view": "Runs"} if page == "training" else {}))
    assert not at.exception, [e.value for e in at.exception]
    errors = _texts(at.main, "error")
    assert len(errors) == 1, errors
    assert "registry.sqlite" in errors[0] and "move it aside" in errors[0]
    assert not [e for e in errors if "Something went wrong" in e]
    if page == "sparsity":  # needs no registry: it still draws its charts
        assert plotly_specs(at) and all(s["data"] for s in plotly_specs(at))
    if page == "home":
        assert len(at.get("page_link")) == 10


def test_the_registry_is_opened_again_once_moved_aside(app_env, broken_home):
    """Nothing is cached on failure: with the file moved aside, the next page run starts a new registry."""
    at = open_page("training", tr_view="Runs")
    assert len(at.main.error) == 1
    (broken_home / "runs" / "registry.sqlite").rename(broken_home / "runs" / "registry.sqlite.broken")
    at = open_page("training", tr_view="Runs")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "No runs yet." in _texts(at, "caption")


def _card_caption(at) -> str:
    return next(c for c in _texts(at, "caption") if " · mask: " in c)


SUMMARIES = {
    "cut": '{"metrics": {"loss": 1.0}, "accuracy": ',
    "list": "[1, 2]",
    "huge": json.dumps({"metrics": {"loss": 0.5}, "pad": "x" * (2 << 20)}),
}


@pytest.mark.parametrize("variant", list(SUMMARIES))
def test_an_unreadable_summary_leaves_the_card_with_a_note(finished_run, variant):
    """Before: json.loads of the whole file, then .get on what it held: a JSONDecodeError / AttributeError bug box
    instead of the card (and a 2 MiB file read in full on every 2-s poll)."""
    run_id = f"summary-{variant}"
    model = finished_run(run_id, {"algorithm": "sft", "learning_rate": 2e-5, "steps": 7, "seed": 3})
    (model / "train_summary.json").write_text(SUMMARIES[variant])
    at = open_page("training", tr_view="Runs", tr_run=run_id)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "sft · mask: none (full finetune) · lr 2.0e-05 · 7 steps · seed 3" in _card_caption(at)
    notes = [c for c in _texts(at, "caption") if c.startswith("train_summary.json is unreadable")]
    assert len(notes) == 1 and "final numbers are not shown" in notes[0]
    assert [m.label for m in at.metric] == ["status"]


def test_a_summary_with_text_where_numbers_go_shows_the_numbers_it_has(finished_run):
    run_id = "summary-text-metric"
    model = finished_run(run_id, {"algorithm": "sft", "learning_rate": 2e-5, "steps": 7, "seed": 3})
    summary = {"metrics": {"loss": "x", "grad_norm": 0.25}, "accuracy": "0.5", "mask_check": {"changed_inside": "x"}}
    (model / "train_summary.json").write_text(json.dumps(summary))
    at = open_page("training", tr_view="Runs", tr_run=run_id)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert {m.label: m.value for m in at.metric} == {
        "status": "succeeded",
        "loss": "—",
        "grad_norm": "0.25",
        "accuracy": "—",
    }
    assert any(c.startswith("Full finetune: ? entries changed") for c in _texts(at, "caption"))


def test_a_card_says_the_device_the_run_trained_on(finished_run):
    """The device a run trained on (SUBNETVIZ_DEVICE, else CUDA when present) is in its summary; the card says it,
    as text (a device string from a file on disk is not markup)."""
    model = finished_run("device-recorded", {"algorithm": "sft", "steps": 2})
    (model / "train_summary.json").write_text(json.dumps({"metrics": {"loss": 0.5}, "device": "cpu"}))
    at = open_page("training", tr_view="Runs", tr_run="device-recorded")
    assert not at.exception and not at.error
    assert "Trained on cpu." in _texts(at, "caption")
    older = finished_run("device-unrecorded", {"algorithm": "sft", "steps": 2})
    (older / "train_summary.json").write_text(json.dumps({"metrics": {"loss": 0.5}}))
    at = open_page("training", tr_view="Runs", tr_run="device-unrecorded")
    assert not any(c.startswith("Trained on") for c in _texts(at, "caption"))


def test_a_card_shows_the_defaults_a_run_trained_with(finished_run, runner):
    """A job submitted without learning_rate / seed trains at TrainConfig's defaults (lr 1e-5, seed 0, 100 steps);
    its card read "lr nan · seed ?". The recorded train_config.json wins over both (the config as run)."""
    finished_run("defaults-unsaved", {"algorithm": "sft", "data": "d.jsonl"})
    at = open_page("training", tr_view="Runs", tr_run="defaults-unsaved")
    assert not at.exception and not at.error
    assert "sft · mask: none (full finetune) · lr 1.0e-05 · 100 steps · seed 0 · data d.jsonl" in _card_caption(at)
    saved = finished_run("defaults-saved", {"algorithm": "sft", "data": "d.jsonl", "steps": 2})
    (saved / "train_config.json").write_text(json.dumps({"learning_rate": 3e-4, "steps": 2, "seed": 0}))
    at = open_page("training", tr_view="Runs", tr_run="defaults-saved")
    assert "lr 3.0e-04 · 2 steps · seed 0" in _card_caption(at)


def test_the_mask_warning_compares_the_lr_a_run_used_by_default(finished_run, app_env):
    """A run inside grpo-s0's update mask, submitted without a learning rate, trained at 1e-5; the zoo's grpo-s0
    used another one. The lr left out of the job config was no difference, so no warning was given."""
    from subnetviz.demo import load_zoo

    zoo = load_zoo()
    member = next(m for m in zoo.members if m.id == "grpo-s0")
    assert member.learning_rate != 1e-5  # (the planted difference)
    mask = str(zoo.mask_path("grpo-s0"))
    finished_run("default-lr-in-mask", {"algorithm": "grpo", "steps": member.steps, "mask": mask})
    at = open_page("training", tr_view="Runs", tr_run="default-lr-in-mask")
    assert not at.exception and not at.error
    notes = [w for w in _texts(at, "warning") if "The mask comes from grpo-s0" in w]
    assert len(notes) == 1 and f"lr {member.learning_rate:.1e}" in notes[0] and "this run uses lr 1.0e-05" in notes[0]


def test_a_random_control_mask_is_named_random_and_not_its_source(finished_run, app_env, tmp_path):
    """A random control run's saved mask kept its source's provenance ("finetuned": "grpo-s0") beside
    method "random …": a run trained inside it was warned about grpo-s0's hyperparameters, as if it were
    grpo-s0's subnetwork, and its card named the file with nothing saying it is random."""
    import torch

    from subnetviz import config
    from subnetviz.masks import MaskSet, save_mask_set

    mask = config.home() / "uploads" / "random-twin-legacy.safetensors"
    meta = {"method": "random (same per-tensor density)", "finetuned": "grpo-s0", "density_source": "/x/grpo.st"}
    save_mask_set(mask, MaskSet({"model.embed_tokens.weight": torch.ones(4, 4, dtype=torch.bool)}, meta))
    try:
        finished_run("in-a-random-mask", {"algorithm": "sft", "learning_rate": 1e-4, "steps": 3, "mask": str(mask)})
        at = open_page("training", tr_view="Runs", tr_run="in-a-random-mask")
    finally:
        mask.unlink()
    assert not at.exception and not at.error
    assert not [w for w in _texts(at, "warning") if "The mask comes from" in w]
    assert "mask: random-twin-legacy.safetensors (random control at the densities of grpo.st)" in _card_caption(at)


def test_the_comparison_scores_accuracy_on_the_models_own_held_out_set(app_env):
    """grpo-B is trained and held out on set B: the comparison scored it on the zoo's set A (the first eval file)
    without naming it. Against grpo-s0 the default set is now grpo-B's own (B_eval), and grpo-s0 (held out on A)
    is named as scored on another set. The numbers equal the zoo build's own measurements on set B (the manifest's
    accuracy_B), made outside this page; a pair both held out on A is scored on A, with no note."""
    from subnetviz.demo import load_zoo

    zoo = load_zoo()
    acc_b = {m.id: m.accuracy_B for m in zoo.manifest.members}
    at = open_page(
        "training", tr_view="Subnetwork vs full", cmp_full="zoo grpo-B", cmp_sub="zoo grpo-s0", cmp_acc="true"
    )
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key="cmp_eval").value == "B_eval"
    (accuracy,) = [d.value for d in at.dataframe if "accuracy" in d.value.columns]
    shown = dict(zip(accuracy["model"], accuracy["accuracy"], strict=True))
    assert shown["full"] == pytest.approx(100 * acc_b["grpo-B"], abs=1e-6)
    assert shown["subnetwork"] == pytest.approx(100 * acc_b["grpo-s0"], abs=1e-6)
    notes = [w for w in _texts(at, "warning") if "held out on another set" in w]
    assert len(notes) == 1 and "on B_eval.jsonl" in notes[0] and "zoo grpo-s0 on A_eval.jsonl" in notes[0]
    at = open_page(
        "training", tr_view="Subnetwork vs full", cmp_full="zoo grpo-s0", cmp_sub="zoo grpo-sub", cmp_acc="true"
    )
    assert at.selectbox(key="cmp_eval").value == "A_eval"
    assert not [w for w in _texts(at, "warning") if "held out on another set" in w]


def test_a_run_s_own_held_out_file_is_the_default_set(finished_run, app_env):
    """A run trained with its own eval_data (a JSONL outside the zoo) is scored on that file, named by its name."""
    from subnetviz import config
    from subnetviz.demo import load_zoo

    zoo = load_zoo()
    mine = config.home() / "uploads" / "mine_eval.jsonl"
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.write_text("".join((zoo.root / "data" / "B_eval.jsonl").read_text().splitlines(keepends=True)[:6]))
    model = finished_run("own-eval-run", {"algorithm": "grpo", "eval_data": str(mine)})
    shutil.rmtree(model)
    shutil.copytree(zoo.member_path("grpo-B"), model)
    try:
        at = open_page(
            "training",
            tr_view="Subnetwork vs full",
            cmp_full="run own-eval-run · own-eval-run",
            cmp_sub="zoo grpo-B",
            cmp_acc="true",
        )
    finally:
        mine.unlink()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key="cmp_eval").value == "mine_eval.jsonl"
    notes = [w for w in _texts(at, "warning") if "held out on another set" in w]
    assert len(notes) == 1 and "on mine_eval.jsonl" in notes[0] and "zoo grpo-B on B_eval.jsonl" in notes[0]


def test_a_users_mask_of_a_folder_named_like_a_zoo_member_gets_no_zoo_hyperparameters(finished_run, app_env):
    """An update mask of the user's own finetune in a folder called ``grpo-s0`` (elsewhere than the zoo) named
    its source by label only, and the card quoted the zoo's grpo-s0 hyperparameters as the mask's. Now it is
    matched by where the finetune was read (``model_path``), and the user's folder is no zoo member."""
    import torch

    from subnetviz import config
    from subnetviz.demo import load_zoo
    from subnetviz.masks import MaskSet, save_mask_set

    member = next(m for m in load_zoo().members if m.id == "grpo-s0")
    mask = config.home() / "uploads" / "users-grpo-s0.safetensors"
    meta = {"method": "update mask", "model": "grpo-s0", "model_path": "/data/mine/grpo-s0", "base": "base"}
    save_mask_set(mask, MaskSet({"model.embed_tokens.weight": torch.ones(4, 4, dtype=torch.bool)}, meta))
    cfg = {"algorithm": "grpo", "learning_rate": 7e-4, "steps": member.steps, "mask": str(mask)}
    try:
        finished_run("in-the-users-mask", cfg)
        at = open_page("training", tr_view="Runs", tr_run="in-the-users-mask")
    finally:
        mask.unlink()
    assert not at.exception and not at.error
    assert not [w for w in _texts(at, "warning") if "The mask comes from" in w]


def test_a_run_card_says_when_its_mask_may_be_inverted(finished_run, app_env):
    """A mask denser than 50 % in most of its tensors may mark the frozen entries (1 = frozen); the note was
    given on submit only, so a run opened from a link or launched by the CLI said nothing on its card."""
    import torch

    from subnetviz import config
    from subnetviz.masks import MaskSet, save_mask_set

    mask = config.home() / "uploads" / "mostly-ones.safetensors"
    masks = {"a.weight": torch.ones(4, 4, dtype=torch.bool), "b.weight": torch.ones(2, 8, dtype=torch.bool)}
    masks["c.weight"] = torch.zeros(3, 3, dtype=torch.bool)
    save_mask_set(mask, MaskSet(masks, {"method": "a freeze map"}))
    try:
        finished_run("in-a-dense-mask", {"algorithm": "sft", "learning_rate": 1e-4, "steps": 3, "mask": str(mask)})
        at = open_page("training", tr_view="Runs", tr_run="in-a-dense-mask")
        twin = finished_run("in-its-random-twin", {"algorithm": "sft", "steps": 3, "mask": f"random:{mask}"})
        assert twin
        at_twin = open_page("training", tr_view="Runs", tr_run="in-its-random-twin")
    finally:
        mask.unlink()
    for page in (at, at_twin):
        assert not page.exception and not page.error
        notes = [w for w in _texts(page, "warning") if "This mask is denser than 50 % in 2 of its 3 tensors" in w]
        assert len(notes) == 1
