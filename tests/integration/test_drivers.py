"""The sparsity-drivers experiment: the grid's plan, the verdicts against hand-made results, the micro preset
trained on the micro zoo (every run's fp32 save is at most as sparse as its bf16 save: a bf16 bit change
implies an fp32 change), the figures, the CLI parser and the page."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from subnetviz.experiments.drivers import COLUMNS, PRESETS, not_available, verdicts


def test_plan_covers_every_factor_and_trains_shared_recipes_once():
    specs = PRESETS["quick"].plan(seeds=2)
    factors = {s.factor for s in specs}
    assert factors == {"learning_rate", "steps", "beta", "clipping", "optimizer", "data", "algorithm"}
    assert {s.algorithm for s in specs} == {"sft", "dpo", "grpo", "rloo", "ppo"} and not not_available()
    assert {s.seed for s in specs} == {0, 1}
    recipes = {s.recipe() for s in specs}
    assert len(recipes) < len(specs)  # the default run sits on several axes and is trained once per seed
    default = PRESETS["quick"].default
    on_axes = [s for s in specs if s.seed == 0 and s.recipe() == default.recipe()]
    assert len(on_axes) >= 5


def _results(rows):
    base = {
        "seed": 0,
        "algorithm": "grpo",
        "accuracy": 0.5,
        "kl_forward": 0.0,
        "learning_rate": 1e-5,
        "steps": 8,
        "beta": 0.0,
        "max_grad_norm": 1.0,
        "optimizer": "adamw_torch",
        "data": "task",
        "train_seconds": 1.0,
    }
    return pd.DataFrame([{**base, **r} for r in rows], columns=COLUMNS)


def test_verdicts_read_hand_made_results():
    res = _results(
        [
            {"factor": "data", "value": "on_policy", "data": "on_policy", "precision": "bf16", "sparsity": 0.8},
            {"factor": "data", "value": "gold", "data": "gold", "precision": "bf16", "sparsity": 0.5},
            {"factor": "beta", "value": "0", "precision": "bf16", "sparsity": 0.70},
            {"factor": "beta", "value": "0.1", "beta": 0.1, "precision": "bf16", "sparsity": 0.60},
            {"factor": "learning_rate", "value": "1e-06", "learning_rate": 1e-6, "precision": "bf16", "sparsity": 0.9},
            {
                "factor": "learning_rate",
                "value": "0.0001",
                "learning_rate": 1e-4,
                "precision": "bf16",
                "sparsity": 0.95,
            },
            {"factor": "learning_rate", "value": "1e-06", "learning_rate": 1e-6, "precision": "fp32", "sparsity": 0.1},
        ]
    )
    v = verdicts(res).set_index("conjecture")["reproduced"]
    assert v["in-distribution data drives sparsity"]
    assert not v["KL coefficient has little effect"]  # 10 points apart
    assert not v["larger learning rate → denser updates"]  # sparsity rose with the learning rate
    assert v["bf16 storage hides small updates"]
    observed = verdicts(res).set_index("conjecture")["observed"]
    assert observed["bf16 storage hides small updates"] == "bf16 − fp32 sparsity +80.0 percentage points on average"
    algos = _results(
        [
            {"factor": "algorithm", "value": a, "algorithm": a, "precision": "bf16", "sparsity": x}
            for a, x in (("sft", 0.3), ("grpo", 0.7), ("ppo", 0.5), ("dpo", 0.2))
        ]
    )
    v = verdicts(algos).set_index("conjecture")
    assert v.loc["RL updates are sparser than SFT", "reproduced"] is False  # DPO 20 % < SFT 30 %
    assert "PPO: 50.0%" in v.loc["RL updates are sparser than SFT", "observed"]
    v = verdicts(algos[algos["algorithm"] != "dpo"]).set_index("conjecture")["reproduced"]
    assert v["RL updates are sparser than SFT"] is True


def test_a_flat_response_is_not_reproduced_and_one_run_counts_once():
    """Every run 100 % sparse (no effect at all) read "larger learning rate → denser updates: reproduced";
    the default recipe, standing on six factor axes, weighted the bf16 − fp32 gap six times."""
    flat = _results(
        [
            {"factor": "learning_rate", "value": str(lr), "learning_rate": lr, "precision": "bf16", "sparsity": 1.0}
            for lr in (1e-6, 1e-5, 1e-4)
        ]
    )
    assert verdicts(flat).set_index("conjecture").loc["larger learning rate → denser updates", "reproduced"] is False
    default = [  # one run (the default recipe) on three axes, and one other run
        {"factor": f, "value": v, "precision": p, "sparsity": x}
        for f, v in (("learning_rate", "1e-05"), ("beta", "0"), ("clipping", "on"))
        for p, x in (("bf16", 0.9), ("fp32", 0.1))
    ]
    other = [
        {"factor": "beta", "value": "0.1", "beta": 0.1, "precision": p, "sparsity": x}
        for p, x in (("bf16", 0.6), ("fp32", 0.4))
    ]
    observed = verdicts(_results(default + other)).set_index("conjecture")["observed"]
    assert observed["bf16 storage hides small updates"] == "bf16 − fp32 sparsity +50.0 percentage points on average"


def test_without_the_ppo_trl_the_grid_leaves_ppo_out(tmp_path, monkeypatch):
    from subnetviz.experiments.drivers import _plan

    monkeypatch.setenv("SUBNETVIZ_PPO_TRL", str(tmp_path / "none"))
    assert "bootstrap.sh" in not_available()["ppo"]
    specs, skipped = _plan(PRESETS["quick"], 1, None)
    assert "ppo" not in {s.algorithm for s in specs}
    assert [(s.algorithm, "not run: " + why) for s, why in skipped] == [("ppo", not_available()["ppo"])]


def test_figures_draw_every_factor():
    from subnetviz.figures import drivers as dfig

    res = _results(
        [
            {"factor": f, "value": v, "precision": p, "sparsity": s}
            for f, v, s in [("steps", "4", 0.9), ("steps", "8", 0.8), ("beta", "0", 0.7)]
            for p in ("bf16", "fp32")
        ]
    )
    fig = dfig.factor_panels(res)
    bars = [t for t in fig.data if t.type == "bar"]
    # shares drawn in %, as the tables and the other pages show them
    assert (
        len(bars) == 2 and np.allclose(bars[0].y, [90.0, 80.0]) and fig.layout.yaxis.title.text == "update sparsity (%)"
    )
    assert fig.layout.title.text.startswith("Update sparsity against")  # the measure's name, not its column
    assert fig.layout.yaxis2.title.text is None  # the shared y axis titled once
    kl = dfig.factor_panels(res.assign(kl_forward=[1e-8, 1e-8, 2e-2, 2e-2, 3e-4, 3e-4]), value="kl_forward")
    assert kl.layout.yaxis.type == "log" and kl.layout.yaxis.title.text == "nats per token (log)"
    assert np.allclose(np.concatenate([t.y for t in kl.data if t.type == "bar"]), [1e-8, 2e-2, 3e-4])
    assert dfig.factor_panels(res, value="kl_forward").layout.yaxis.type != "log"  # a zero has no place on it
    fp32 = res.assign(precision="fp32", sparsity=res["sparsity"] / 100)  # fp32 saves: 0.9 %, 0.8 %, 0.7 %
    pairs = dfig.precision_pairs(pd.concat([res[res["precision"] == "bf16"], fp32]))
    line, bf16, f32 = pairs.data  # one segment per run, then one marker trace per save precision
    assert (bf16.name, f32.name) == ("bf16 save", "fp32 save")
    assert list(bf16.x) == list(f32.x) == ["steps=4 s0", "steps=8 s0", "beta=0 s0"]
    assert np.allclose(bf16.y, [90.0, 80.0, 70.0]) and np.allclose(f32.y, [0.9, 0.8, 0.7])
    assert list(line.x) == [x for run in ("steps=4 s0", "steps=8 s0", "beta=0 s0") for x in (run, run, None)]
    assert np.allclose([y for y in line.y if y is not None], [0.9, 90.0, 0.8, 80.0, 0.7, 70.0])


def test_a_drivers_job_config_with_odd_seeds_is_refused():
    """seeds "x" failed inside the job with a traceback, 1.7 silently became 1."""
    from subnetviz.errors import ConfigError
    from subnetviz.experiments.drivers import validate_config

    for seeds in ("x", 1.7, 0, True):
        with pytest.raises(ConfigError, match="drivers seeds must be a whole number >= 1"):
            validate_config({"preset": "micro", "seeds": seeds})
    validate_config({"preset": "micro", "seeds": 2})


def test_cli_parses_the_experiment():
    from subnetviz.__main__ import build_parser

    args = build_parser().parse_args(["experiment", "drivers", "--out", "x", "--preset", "micro", "--seeds", "2"])
    assert args.name == "drivers" and args.preset == "micro" and args.seeds == 2


@pytest.mark.slow
def test_micro_grid_on_the_micro_zoo(micro_zoo, tmp_path, monkeypatch):  # noqa: F811
    """Run as the app runs jobs: reads enforced under the roots (the zoo and the run folder only)."""
    import os

    from subnetviz.experiments.drivers import run_job, validate_config
    from subnetviz.jobs.context import JOB_KINDS, JobContext

    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    monkeypatch.setenv("SUBNETVIZ_ROOTS", os.pathsep.join([str(Path(micro_zoo.root).resolve()), str(tmp_path)]))

    assert JOB_KINDS["drivers"] == "subnetviz.experiments.drivers:run_job"
    cfg = {"kind": "drivers", "preset": "micro", "zoo": str(micro_zoo.root)}
    validate_config(cfg)
    ctx = JobContext.for_dir(tmp_path / "run")
    run_job(cfg, ctx)
    res = pd.read_csv(ctx.out_dir / "results.csv", dtype={"value": str})
    assert list(res.columns) == COLUMNS
    assert set(res["algorithm"]) == {"sft", "dpo", "grpo", "rloo", "ppo"}
    ppo = res[res["algorithm"] == "ppo"].set_index("precision")
    assert ppo.loc["fp32", "sparsity"] < 1 and ppo.loc["fp32", "kl_forward"] > 0  # TRL's PPO really moved the policy
    pairs = res.pivot_table(index=["factor", "value", "seed"], columns="precision", values="sparsity")
    assert (pairs["fp32"] <= pairs["bf16"]).all()  # every bf16 bit change is an fp32 change too
    assert ((res["sparsity"] >= 0) & (res["sparsity"] <= 1)).all()
    sgd = res[(res["factor"] == "optimizer") & (res["precision"] == "bf16")].set_index("value")
    assert (sgd.loc["sgd", "learning_rate"], sgd.loc["sgd", "momentum"]) == (5e-3, 0.9)  # "Do We Need Adam?"'s SGD
    assert sgd.loc["sgd", "sparsity"] >= sgd.loc["adamw", "sparsity"]  # even at its own rate SGD moves fewer weights
    assert (res["status"] == "done").all() and (res["grid_version"] == 2).all()
    assert (ctx.out_dir / "verdicts.csv").exists()


@pytest.mark.slow
def test_drivers_page_renders(app_env):
    from tests.app_fixtures import open_page

    at = open_page("drivers")
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.mark.slow
def test_drivers_page_shows_a_finished_run(app_env):
    """A succeeded drivers run in the registry (outputs written by hand): verdicts, charts and the table."""
    import time
    from urllib.parse import parse_qs

    from subnetviz.jobs.runner import JobRunner
    from tests.app_fixtures import add_finished_run, decode, open_page, plotly_specs

    runner, now = JobRunner(), time.time()
    runs = {  # id -> (name, created, (sparsity, accuracy) at steps 4 and 8): an older and a newer grid
        "fake-drivers-old": ("grid on the test zoo", now - 60, [(0.9, 0.25), (0.8, 0.5)]),
        "fake-drivers-new": ("second grid", now, [(0.7, 0.75), (0.6, 1.0)]),
    }
    for run_id, (name, created, values) in runs.items():
        res = _results(
            [
                {"factor": "steps", "value": v, "precision": p, "sparsity": s, "accuracy": a}
                for v, (s, a) in zip(["4", "8"], values, strict=True)
                for p in ("bf16", "fp32")
            ]
        )
        run_dir = add_finished_run(runner, run_id, "drivers", name, created=created)
        (run_dir / "outputs").mkdir(parents=True, exist_ok=True)
        res.to_csv(run_dir / "outputs" / "results.csv", index=False)
    try:
        at = open_page("drivers")
        # A shared URL holds what the pickers show (Streamlit's binding keeps the formatted option).
        shared = open_page("drivers", dr_run="grid on the test zoo · fake-drivers-old", dr_value="Held-out accuracy")
        card = open_page("training", tr_view="Runs", tr_run="fake-drivers-old")  # the run in the Training list
        pairs = open_page("drivers", dr_tab="bf16 vs fp32")  # a tab draws only when open; the URL opens it
    finally:  # the app home is shared by the session's other page tests: leave its registry as it was
        with runner.registry.transaction() as con:
            con.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in runs])
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    bars = [t for s in plotly_specs(at) for t in s["data"] if t["type"] == "bar"]
    assert np.allclose(decode(bars[0]["y"]), [70.0, 60.0])  # the newest grid, sparsity in % as the tables show it
    assert any("larger steps" in m.value for m in at.markdown)
    picker = at.selectbox(key="dr_run")  # runs by name, newest first
    assert picker.options[:2] == [
        "second grid · fake-drivers-new",
        "grid on the test zoo · fake-drivers-old",
    ]
    # The URL's run and measure come back: accuracy in %, the measure named on the radio.
    assert not shared.exception, [e.message for e in shared.exception]
    assert shared.selectbox(key="dr_run").value == "fake-drivers-old"
    assert shared.radio(key="dr_value").value == "accuracy"
    assert shared.radio(key="dr_value").options == ["Update sparsity", "Held-out accuracy", "Forward KL(π_base ‖ π)"]
    bars = [t for s in plotly_specs(shared) for t in s["data"] if t["type"] == "bar"]
    assert np.allclose(decode(bars[0]["y"]), [25.0, 50.0])
    assert not pairs.exception, [e.message for e in pairs.exception]
    (spec,) = plotly_specs(pairs)
    assert not pairs.radio  # the measure is By factor's control: the bf16-vs-fp32 chart does not depend on it
    assert [t.get("name") for t in spec["data"][1:]] == ["bf16 save", "fp32 save"]
    assert np.allclose(decode(spec["data"][1]["y"]), [70.0, 60.0])  # the newest grid's bf16 saves
    # Its card on the Training page links to its results (the URL that picks it) and offers no curves to overlay.
    assert not card.exception, [e.message for e in card.exception]
    (link,) = [e.proto for e in card.get("page_link")]
    assert link.label == "Its results on What drives sparsity" and link.page.endswith("drivers")
    assert parse_qs(link.query_string) == {"dr_run": ["grid on the test zoo · fake-drivers-old"]}
    keys = {w.key for w in [*card.multiselect, *card.slider]}
    assert not keys & {"tr_overlay", "tr_smooth"}  # no overlay picker, no smoothing for a run without curves


def test_without_on_policy_and_gold_sets_the_data_factor_is_not_measured(micro_zoo, tmp_path):  # noqa: F811
    """Rows the base never answers correctly: the on-policy set fell back to the gold rows, and the verdict
    compared two copies of one set under the two names. No sets now, and the verdict says why: the reason its
    data points record, or that the grid has no data axis."""
    from subnetviz.experiments.drivers_runs import sft_sets

    rows = [{"prompt": f"{i}+{i}=", "answer": "§never§"} for i in range(4)]
    assert sft_sets(str(micro_zoo.root / "base"), rows, n=4, seed=0, samples=2) == ([], [])
    res = _results([{"factor": "beta", "value": "0", "precision": "bf16", "sparsity": 0.7}])
    v = verdicts(res).set_index("conjecture").loc["in-distribution data drives sparsity"]
    assert v["reproduced"] is None and v["observed"] == "not measured: the data axis is not in this grid"
    from subnetviz.experiments.drivers import NO_SFT_SETS

    dropped = _results(
        [
            {"factor": "data", "value": d, "data": d, "algorithm": "sft", "status": "not run", "note": NO_SFT_SETS}
            for d in ("on_policy", "gold")
        ]
    )
    v = verdicts(dropped).set_index("conjecture").loc["in-distribution data drives sparsity"]
    assert v["reproduced"] is None and v["observed"].startswith("not measured: the base answered every")


def test_a_finished_grid_whose_results_are_gone_is_one_line(tmp_path):
    """A succeeded run whose outputs/results.csv was deleted: the page showed the generic "a bug" notice
    (FileNotFoundError); now a one-line refusal naming the folder."""
    from subnetviz.errors import ConfigError
    from subnetviz.experiments.drivers import read_results

    with pytest.raises(ConfigError, match=r"no results\.csv; this is not a finished drivers grid's output folder"):
        read_results(tmp_path)
