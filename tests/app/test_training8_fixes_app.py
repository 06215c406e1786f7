"""The Training page against the eighth training review: an overlaid run killed or cancelled part-way that read as
a finished run (the page's legend and its HTML export), run names that told a 3-step run from a 400-step one on
another mask by id alone, a learning-rate field that offered the 1.0 a launch refuses, and a
``subnetviz train --run-dir $SUBNETVIZ_HOME/runs/X`` run that neither ``runs`` nor the page listed until a rescan
(a tiny model trained from the command line here). The expected labels and names are written out by hand."""

import html as _html
import json

import pytest

from tests.app.test_training6_fixes_app import queued  # noqa: F401 (a fixture: the configs and names launched)
from tests.app.test_training_runs2_app import _launch
from tests.app_fixtures import add_finished_run, home_of_its_own, open_page, plotly_specs

pytestmark = pytest.mark.slow


# --- 1: the Runs view and its export say where a failed or cancelled run stopped ------------------------------------


def _rows(folder, steps: int) -> None:
    (folder / "metrics.jsonl").write_text(
        "".join(json.dumps({"time": 1.0, "step": s, "loss": 1.0 / s}) + "\n" for s in range(1, steps + 1))
    )


def test_the_runs_view_and_its_export_say_where_an_overlaid_run_stopped(finished_run, runner, app_env, exports):
    """``tr_run=<finished>&tr_overlay=<killed at 12 of 400>&tr_overlay=<cancelled at 35 of 400>``: the legend named
    the two stopped runs as it names a finished one."""
    for run_id, steps in (("t8-full", 3), ("t8-killed", 12), ("t8-cancelled", 35)):
        _rows(finished_run(run_id, {"algorithm": "sft"}).parent.parent, steps)
    with runner.registry.transaction() as con:
        runner.registry.update(con, "t8-killed", status="failed", step=12, total=400, error="killed")
        runner.registry.update(con, "t8-cancelled", status="cancelled", step=35, total=400)
    at = open_page("training", tr_view="Runs", tr_run="t8-full", tr_overlay=["t8-killed", "t8-cancelled"])
    assert not at.exception, [e.value for e in at.exception]
    (fig,) = [s for s in plotly_specs(at) if str(s["layout"]["title"]["text"]).startswith("Run ")]
    want = [
        "t8-full · t8-full",
        "t8-killed · t8-killed (failed at step 12 of 400)",
        "t8-cancelled · t8-cancelled (cancelled at step 35 of 400)",
    ]
    assert [t["name"] for t in fig["data"] if t.get("mode") == "lines+markers" and t.get("showlegend")] == want
    page = _html.unescape(exports["Training runs"]())
    for label in want[1:]:  # (as the figure's JSON writes it: "·" as an escape)
        assert json.dumps(label) in page, label


# --- 2 and 3: the Launch form's generated name and its learning-rate bound ------------------------------------------


@pytest.mark.parametrize(
    ("mask", "random", "name"),
    [
        ("update mask of grpo-s0", False, "sft sub(grpo-s0) 3 steps lr=1e-05 s=0"),
        ("update mask of grpo-s0", True, "sft random(grpo-s0) 3 steps lr=1e-05 s=0"),
        ("none (full finetune)", False, "sft 3 steps lr=1e-05 s=0"),
    ],
)
def test_the_generated_run_name_says_steps_and_mask_source(app_env, queued, mask, random, name):  # noqa: F811
    """Runs of 3 and 400 steps on grpo-s0's and dpo's masks were "sft sub lr=1e-05 s=0" and "… s=2" alike."""
    at = open_page("training")
    at.selectbox(key="tr_alg").select("sft")
    at.selectbox(key="tr_mask").select(mask)
    if random:
        at.checkbox(key="tr_random").check()
    at.number_input(key="tr_steps").set_value(3)
    _launch(at)
    assert [n for _, n in queued] == [name]


def test_the_learning_rate_field_offers_only_rates_a_launch_takes(app_env, queued):  # noqa: F811
    """The field's maximum was 1.0, which the launch refused ("learning_rate must be in (0, 1)")."""
    at = open_page("training")
    field = at.number_input(key="tr_lr")
    assert field.max < 1
    at.selectbox(key="tr_alg").select("sft")
    field.set_value(field.max)
    _launch(at)
    assert not at.error, [e.value for e in at.error]
    assert [c["learning_rate"] for c, _ in queued] == [field.max]


# --- 4: train --run-dir in the home's runs is listed by `runs` and the page ----------------------------------------


def test_a_cli_train_run_dir_in_the_homes_runs_is_listed_without_a_rescan(micro_zoo, tmp_path_factory, capsys):
    """The reviewer's ``train --config cli.json --run-dir $SUBNETVIZ_HOME/runs/cli-run-1``: it succeeded, and
    ``subnetviz runs`` and the page listed it only after ``runs --rescan``."""
    from subnetviz.cli import main
    from subnetviz.jobs.runner import JobRunner
    from tests.models import make_tiny_llama
    from tests.training_fixtures import write_addition_data

    with home_of_its_own(micro_zoo, tmp_path_factory, "t8-cli-home") as home:
        # a registry holding a run (as the reviewer's did): one found empty is rebuilt from every folder, this one's too
        add_finished_run(JobRunner(), "t8-earlier", "train", "earlier")
        work = tmp_path_factory.mktemp("t8-cli-run")
        base, data = make_tiny_llama(work / "base"), write_addition_data(work / "data", n=8)
        cfg = {"algorithm": "sft", "base": str(base), "data": str(data["sft"]), "steps": 2, "batch_size": 4}
        (work / "c.json").write_text(json.dumps({**cfg, "name": "cli run", "output_dir": str(work / "unused")}))
        assert main(["train", "--config", str(work / "c.json"), "--run-dir", str(home / "runs" / "cli-run-1")]) == 0
        capsys.readouterr()
        assert main(["runs"]) == 0
        out = capsys.readouterr().out
        rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["cli-run-1"]]
        assert rows == [["cli-run-1", "train", "cli", "run", "succeeded", "2", "2"]], (
            out
        )  # id kind name status step total
        at = open_page("training", tr_view="Runs", tr_run="cli-run-1")
        assert not at.exception and not at.warning, [e.value for e in [*at.exception, *at.warning]]
        assert at.selectbox(key="tr_run").value == "cli-run-1"
        assert at.metric[0].value == "succeeded"
