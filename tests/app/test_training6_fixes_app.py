"""The Training page against the sixth masked-training review: the hyperparameter warning for an update mask of a
checkpoint (the zoo's ``grpo-s0@<step>``, a run's ``checkpoints/step-<k>``), a small loss on the run card cut at
1024 px ("-7.451e-09" shown as "-7.451…"), the comparison's ULP titles past a half-width chart, runs alike but for
their strategy told apart by their id only, and a run named by its id where the other pickers say "name · id".
Planted runs, masks and summaries are written here by hand; the expected hyperparameters come from the zoo's
manifest and the planted configs."""

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.app.test_training_runs2_app import _launch
from tests.app_fixtures import add_finished_run, open_page

pytestmark = pytest.mark.slow


def _texts(at, kind: str) -> list[str]:
    """The texts as read (markdown escapes and the zero-width space the page puts before a colon taken out)."""
    return [e.value.replace("\\", "").replace("\u200b", "") for e in getattr(at.main, kind)]


def _card_caption(at) -> str:
    return next(c for c in _texts(at, "caption") if " · mask: " in c)


@pytest.fixture
def queued(monkeypatch):
    """(config, name) of each job the Launch form submits, validated as the runner's submit validates it, then
    recorded instead of started."""
    from subnetviz.jobs.kinds import validate_job_config
    from subnetviz.jobs.runner import JobRunner

    seen: list[tuple[dict, str]] = []

    def submit(self, config, name=None):
        validate_job_config(config)
        seen.append((config, name))
        return "run-queued"

    monkeypatch.setattr(JobRunner, "submit", submit)
    return seen


def _warns_of_series_mask(at, member, step: int) -> None:
    """The page warns that the mask comes from the series checkpoint ``grpo-s0@<step>`` of ``member``."""
    (note,) = [w for w in _texts(at, "warning") if "The mask comes from" in w]
    assert note.startswith(
        f"The mask comes from grpo-s0@{step}, trained with grpo, lr {member.learning_rate:.1e}, {step} "
        f"step{'s' if step != 1 else ''}; this run uses sft, lr 7.0e-04, 3 steps."
    ), note


@pytest.fixture
def named_run(runner):
    """``make(run_id, name, config, model_from=None)``: a succeeded train run named ``name`` in the app's registry,
    its ``outputs/model`` a copy of ``model_from`` (else an empty folder, returned), removed afterwards."""
    made = []

    def make(run_id: str, name: str, config: dict, model_from: Path | None = None) -> Path:
        made.append(run_id)
        model = add_finished_run(runner, run_id, "train", name, {"kind": "train", **config}) / "outputs" / "model"
        if model_from is None:
            model.mkdir(parents=True)
        else:
            shutil.copytree(model_from, model)
        return model

    yield make
    with runner.registry.transaction() as con:
        con.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in made])
    for i in made:
        shutil.rmtree(Path(runner.root) / i, ignore_errors=True)


def _update_mask(name: str, model: str, model_path: Path) -> Path:
    """An update mask in the home's uploads whose provenance says it was read from ``model_path``."""
    from subnetviz import config
    from subnetviz.masks import MaskSet, save_mask_set

    mask = config.home() / "uploads" / f"{name}.safetensors"
    meta = {"method": "update mask", "model": model, "model_path": str(model_path), "base": "base"}
    m = torch.zeros(32, 32, dtype=torch.bool)
    m[0, :4] = True  # sparse: no "is 1 = frozen?" warning beside the one tested
    save_mask_set(mask, MaskSet({"model.layers.0.self_attn.q_proj.weight": m}, meta))
    return mask


# --- 1: a checkpoint's update mask is matched to its checkpoint --------------------------------------------------


def test_a_checkpoint_is_identified_by_its_folder_and_has_its_member_s_or_run_s_hyperparameters(tmp_path):
    """An update mask of the zoo's ``grpo-s0@12`` (read from ``zoo/grpo-s0/checkpoints/step-12``) matched neither a
    member's folder nor a run's ``outputs/model``: it named no source, so no warning. Now: the series checkpoint,
    and by the same rule a run's ``outputs/model/checkpoints/step-<k>``, also in a home copied elsewhere."""
    from subnetviz.training.mask_origin import identify, source_hparams

    zoo, runs, old = tmp_path / "new" / "zoo", tmp_path / "new" / "runs", tmp_path / "old"
    step12 = zoo / "grpo-s0" / "checkpoints" / "step-12"
    step3 = runs / "r1" / "outputs" / "model" / "checkpoints" / "step-3"
    step12.mkdir(parents=True)
    step3.mkdir(parents=True)
    members = {"grpo-s0": SimpleNamespace(id="grpo-s0", path=zoo / "grpo-s0", algorithm="grpo", learning_rate=2e-6)}
    members["grpo-s0"].steps = 100
    series = {"grpo-s0@12": step12, "grpo-s0@100": zoo / "grpo-s0"}  # (the final point is the member itself)

    def source(path: Path) -> str | None:
        return identify({"model": "x", "model_path": str(path)}, members, runs, series)

    assert source(step12) == "grpo-s0@12"
    assert source(zoo / "grpo-s0") == "grpo-s0"  # the member, not its last series point
    assert source(step3) == "run r1@3"
    assert source(runs / "r1" / "outputs" / "model" / "checkpoints") is None  # not a checkpoint
    assert source(old / "zoo" / "grpo-s0" / "checkpoints" / "step-12") == "grpo-s0@12"  # a copied home's mask
    assert source(old / "runs" / "r1" / "outputs" / "model" / "checkpoints" / "step-3") == "run r1@3"
    assert source(old / "runs" / "r1" / "outputs" / "model" / "checkpoints" / "step-9") is None  # not here
    runs_cfg = {"r1": {"algorithm": "sft", "learning_rate": 3e-4, "steps": 40}}
    assert source_hparams("grpo-s0@12", members, runs_cfg) == {"algorithm": "grpo", "learning_rate": 2e-6, "steps": 12}
    assert source_hparams("run r1@3", members, runs_cfg) == {"algorithm": "sft", "learning_rate": 3e-4, "steps": 3}
    assert source_hparams("run r9@3", members, runs_cfg) is None


def test_the_card_warns_about_a_mask_of_a_zoo_series_checkpoint(finished_run, app_env):
    """The review's run: sft at another lr inside the update mask of grpo-s0@<step> (a GRPO mask at the zoo's lr after
    that many steps). The card said nothing; the same run in grpo-s0's own mask was warned."""
    from subnetviz.demo import load_zoo

    zoo = load_zoo()
    member = zoo.manifest.member("grpo-s0")
    step, folder = zoo.series[0]
    assert step != member.steps and folder.is_dir()
    mask = _update_mask("six-series-mask", f"grpo-s0@{step}", folder)
    try:
        finished_run("six-in-series-mask", {"algorithm": "sft", "learning_rate": 7e-4, "steps": 3, "mask": str(mask)})
        at = open_page("training", tr_view="Runs", tr_run="six-in-series-mask")
    finally:
        mask.unlink()
    assert not at.exception and not at.error, [e.value for e in at.error]
    _warns_of_series_mask(at, member, step)


def test_the_launch_form_warns_about_the_update_mask_of_a_series_checkpoint(app_env, queued):
    """The review's reproduction: sidebar grpo-s0@<step>, *Train only* its update mask, sft, 3 steps, another lr: only
    "Queued run" was said."""
    from subnetviz.demo import load_zoo

    zoo = load_zoo()
    member = zoo.manifest.member("grpo-s0")
    step = zoo.series[0][0]
    at = open_page("training", ft=f"grpo-s0@{step}")
    at.selectbox(key="tr_alg").select("sft")
    at.selectbox(key="tr_mask").select(f"update mask of grpo-s0@{step}")
    at.number_input(key="tr_steps").set_value(3)
    at.number_input(key="tr_lr").set_value(7e-4)
    _launch(at)
    assert len(queued) == 1 and queued[0][0]["mask"]
    _warns_of_series_mask(at, member, step)


# --- 2: the card's numbers fit their column ------------------------------------------------------------------------


# Glyph widths of the metric's 36 px Source Sans in Chromium, measured at 1024 px on the run card, and the width of
# a quarter of the main column there (the value's box): "-7.451e-09" is 157 px.
PX = {"-": 11.2, ".": 8.95, "e": 18.2, " ": 8.6, "%": 28.3, **{d: 17.9 for d in "0123456789"}}
COLUMN_PX = 129


@pytest.mark.parametrize("sign", [1, -1])
def test_a_metric_number_fits_a_quarter_column_and_reads_as_its_value(sign):
    """As wide as the quarter-column's box at 1024 px at most, and read back within 5 % of the value (two significant
    digits): "-7.451e-09" was cut to "-7.451…", read as -7.45."""
    from subnetviz.uilogic import metric_number

    for exponent in range(-40, 41):
        for mantissa in (1.0, 1.049, 2.173, 7.451, 9.96):
            value = sign * mantissa * 10.0**exponent
            text = metric_number(value)
            assert sum(PX[c] for c in text) <= COLUMN_PX, (value, text)
            assert float(text) == pytest.approx(value, rel=0.05), (value, text)
    assert metric_number(-7.451e-09) == "-7.5e-9" and metric_number(-2.173e-11) == "-2.2e-11"
    assert metric_number(1.758) == "1.758" and metric_number(0.0625) == "0.0625" and metric_number(0.0) == "0"


def test_the_card_shows_a_tiny_loss_whole_and_names_the_held_out_file_outside_the_label(finished_run, app_env):
    """A GRPO card (four columns): loss -7.451e-09 read "-7.451…" at 1024 px, and "accuracy (A_eval.jsonl)" was cut to
    "accuracy (A_eval.js…". Each value now fits (its full digits in the help), the label is "accuracy" and the
    caption says the file."""
    cfg = {"algorithm": "grpo", "eval_data": "/d/A_eval.jsonl"}
    summary = {"metrics": {"loss": -7.451e-09, "reward": 1.758, "grad_norm": 0.0625}, "accuracy": 0.37}
    (finished_run("six-tiny-loss", cfg) / "train_summary.json").write_text(json.dumps(summary))
    at = open_page("training", tr_view="Runs", tr_run="six-tiny-loss")
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = {m.label: (m.value, m.help) for m in at.metric if m.label != "status"}
    assert {k: v for k, (v, _) in shown.items()} == {
        "loss": "-7.5e-9",
        "reward": "1.758",
        "grad_norm": "0.0625",
        "accuracy": "37.0 %",
    }
    assert "-7.451e-09" in shown["loss"][1]  # the full value, on hover
    assert all(sum(PX[c] for c in value) <= COLUMN_PX for value, _ in shown.values())
    assert all(len(label) <= 9 for label in shown)  # (14 px labels: "accuracy (A_eval.jsonl)" was cut)
    assert "Accuracy on A_eval.jsonl." in _texts(at, "caption")


# --- 3: the comparison's ULP titles fit its half-width chart -------------------------------------------------------

TITLE_CHARS = 34  # a line of the bold 17 px title: ~7.5 px a character; the chart is 274 px wide at 1024 px
SUBTITLE_CHARS = 48  # a <sup> line: ~5.3 px a character
AXIS_CHARS = 40  # an axis title line, centred on the plot (~157 px from the left, 117 to the right): ~5.7 px a char


def _lines(text: str) -> list[tuple[str, str]]:
    """(kind, visible text) of each line of a Plotly title: "sup" for a <sup> line."""
    out = []
    for line in text.split("<br>"):
        kind = "sup" if line.startswith("<sup>") else "main"
        out.append((kind, re.sub(r"<[^>]+>", "", line)))
    return out


def test_the_comparison_s_ulp_titles_fit_a_half_width_chart_at_1024_px():
    """The title "ULP distance between the two finetunes" and the axis title "distance (units in the last place of
    the compared dtype)" ran past the 274 px chart; each line now fits (the screenshots at 1024, 1400 and 1920 px are
    in the fix's report), with the dtype the sparsity page names too."""
    import pandas as pd

    from subnetviz import figures
    from subnetviz.report.training import comparison_parts

    result = SimpleNamespace(
        ulp_histogram=pd.DataFrame({"bin": ["0", "1", ">256"], "count": [5, 3, 1]}),
        to_frame=lambda: pd.DataFrame({"share": [1.0]}),
        accuracy=None,
    )
    fig = comparison_parts(result, "zoo grpo-s0", "zoo grpo-sub")[0]["cmp-ulp"]
    for kind, line in _lines(fig.layout.title.text):
        assert len(line) <= (SUBTITLE_CHARS if kind == "sup" else TITLE_CHARS), line
    assert "ULP distance between the two finetunes" in fig.layout.title.text  # (the export's e2e check reads it)
    df = pd.DataFrame({"model": "m", "bin": ["1", "2"], "count": [3, 1]})
    for dtype in ("", "bf16", "fp32, as stored"):
        axis = (fig if not dtype else figures.ulp_histogram(df, dtype=dtype)).layout.xaxis.title.text
        assert all(len(line) <= AXIS_CHARS for _, line in _lines(axis)), axis


# --- 4: the strategy and process count on the card and in the name -------------------------------------------------


def test_the_card_says_the_strategy_and_process_count(finished_run, app_env):
    """Two runs alike but for fsdp2 vs single read the same; the card now says how its processes trained (the
    recorded train_config.json first: the config as run)."""
    finished_run("six-single", {"algorithm": "sft", "learning_rate": 1e-4, "steps": 4, "data": "/d/sft_A.jsonl"})
    sharded = {"algorithm": "sft", "learning_rate": 1e-4, "steps": 4, "strategy": "fsdp2", "num_processes": 1}
    model = finished_run("six-fsdp2", {**sharded, "data": "/d/sft_A.jsonl"})
    at = open_page("training", tr_view="Runs", tr_run="six-single")
    assert _card_caption(at).endswith("· data sft_A.jsonl · single process")
    at = open_page("training", tr_view="Runs", tr_run="six-fsdp2")
    assert _card_caption(at).endswith("· data sft_A.jsonl · fsdp2 × 1 process")
    (model / "train_config.json").write_text(json.dumps({**sharded, "strategy": "zero2", "num_processes": 2}))
    at = open_page("training", tr_view="Runs", tr_run="six-fsdp2")
    assert _card_caption(at).endswith("· zero2 × 2 processes")


@pytest.mark.parametrize(("strategy", "tail"), [("single", "s=0"), ("fsdp2", "s=0 fsdp2 n=1")])
def test_the_default_run_name_says_a_multi_process_strategy(app_env, queued, strategy, tail):
    at = open_page("training")
    at.selectbox(key="tr_alg").select("sft")
    at.selectbox(key="tr_strategy").select(strategy)
    _launch(at)
    assert [(c["strategy"], name) for c, name in queued] == [(strategy, f"sft 30 steps lr=1e-05 {tail}")]


# --- 5: a run named as the other pickers name it -------------------------------------------------------------------


def test_choice_name_names_a_run_by_name_and_id():
    from subnetviz.uilogic import choice_name

    names = {"r1": "sft lr=0.0001 s=1 · r1"}
    assert choice_name("run r1", names) == "run sft lr=0.0001 s=1 · r1"
    assert choice_name("run r1@3", names) == "run sft lr=0.0001 s=1 · r1@3"
    assert choice_name("run r2", names) == "run r2" and choice_name("grpo-s0@12", names) == "grpo-s0@12"


def test_train_only_and_the_mask_warning_name_a_run_by_name_and_id(app_env, queued, named_run):
    """Sidebar ft=run <id>: *Train only* offered "update mask of run <id>" and the warning said "The mask comes from
    run <id>", where the Run picker says "name · id". The URL value stays the id."""
    from subnetviz.demo import load_zoo

    run_id, name = "six-named-run", "sft lr=0.0001 s=1"
    named_run(run_id, name, {"algorithm": "sft", "learning_rate": 1e-4, "steps": 4}, load_zoo().member_path("sft"))
    at = open_page("training", ft=f"run {run_id}")
    assert not at.exception and not at.error, [e.value for e in at.error]
    # the sidebar keeps "run <id>": its options are what its query-param binding writes into a shared link
    assert f"run {run_id}" in at.multiselect(key="ft").value and f"run {run_id}" in at.multiselect(key="ft").options
    picker = at.selectbox(key="tr_mask")
    assert f"update mask of run {name} · {run_id}" in picker.options
    picker.select(f"update mask of run {run_id}")
    _launch(at)
    assert len(queued) == 1 and queued[0][0]["mask"]
    (note,) = [w for w in _texts(at, "warning") if "The mask comes from" in w]
    assert note.startswith(f"The mask comes from run {name} · {run_id}, trained with sft, lr 1.0e-04, 4 steps;"), note
