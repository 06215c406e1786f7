"""The drivers grid after the first review (drivers1): a verdict's observed means are those of the seeds that decide
it, and the seeds left out are named with why (a 2-seed grid read "reproduced" beside a rising-then-falling
sequence); a data axis whose run trained nothing says so, not that the base answered every prompt; the factor
chart names every value of every panel and keeps its legend on a line of its own under the title; a link's
measure is read by its key or its label.

Every planted sparsity and every expected mean is worked out here by hand."""

import pandas as pd
import pytest

from subnetviz.experiments.drivers import COLUMNS, NO_SFT_SETS, verdicts

BASE = {"algorithm": "grpo", "accuracy": 0.4, "learning_rate": 1e-5, "steps": 8, "beta": 0.0, "max_grad_norm": 1.0}
BASE |= {"optimizer": "adamw_torch", "data": "task", "train_seconds": 1.0, "grid_version": 2}


def _grid(points: dict[tuple[str, str], list]) -> pd.DataFrame:
    """(factor, value) -> per seed (seed = position): a bf16 sparsity (an fp32 row of 0.4 % beside it), "failed"
    (a failed point: one row, no save), or "still" (a run that trained nothing: both saves equal the base)."""
    rows = []
    for (f, v), per_seed in points.items():
        for seed, x in enumerate(per_seed):
            point = {**BASE, "factor": f, "value": v, "seed": seed, "note": ""}
            if f == "data":
                point |= {"algorithm": "sft", "data": v}
            if x == "failed":
                rows.append(point | {"status": "failed", "note": "RuntimeError: boom"})
                continue
            b16, f32 = (1.0, 1.0) if x == "still" else (x, 0.004)
            for p, s in (("bf16", b16), ("fp32", f32)):
                rows.append(point | {"precision": p, "sparsity": s, "kl_forward": 1e-3, "status": "done"})
    return pd.DataFrame(rows, columns=COLUMNS)


def _verdict(results: pd.DataFrame, name: str) -> pd.Series:
    # (a column of decided verdicts only is NumPy's bool: read as Python's, as one beside None reads)
    return verdicts(results).astype({"reproduced": object}).set_index("conjecture").loc[name]


def test_the_observed_means_are_the_seeds_that_decide():
    """The review's case: seed 0 falls 90 → 80 → 70 %, seed 1 falls 60 → 50 % with 1e-05 failed. Seed 1 is left
    out of the verdict (it lacks a point), yet its numbers entered the means: "1e-06: 75.0%, 1e-05: 80.0%, 0.0001:
    60.0%" beside "reproduced", a sequence that rises and then falls."""
    lr = _grid(
        {
            ("learning_rate", "1e-06"): [0.90, 0.60],
            ("learning_rate", "1e-05"): [0.80, "failed"],
            ("learning_rate", "0.0001"): [0.70, 0.50],
        }
    )
    v = _verdict(lr, "larger learning rate → denser updates")
    # seed 0 alone: its own three numbers, and seed 1 named with the point it lacks and why
    assert v["observed"] == "1e-06: 90.0%, 1e-05: 80.0%, 0.0001: 70.0%; seed 1 left out: learning_rate=1e-05 failed"
    assert v["reproduced"] is True


def test_every_verdict_reads_its_deciding_seeds_and_names_the_others():
    """Algorithms, β, clipping, steps and data: a seed that lacks a point (failed, or trained nothing) is out of the
    verdict and of its means alike."""
    g = _grid(
        {
            ("algorithm", "sft"): [0.30, 0.10, 0.20],
            ("algorithm", "grpo"): [0.50, 0.90, 0.40],
            ("algorithm", "dpo"): [0.40, "failed", 0.60],
            ("beta", "0"): [0.50, 0.10, 0.51],
            ("beta", "0.1"): [0.51, "still", 0.50],
            ("steps", "4"): ["still", 0.9, 0.8],
            ("steps", "8"): [0.2, 0.7, 0.6],
            ("data", "on_policy"): [0.8, 0.2, 0.9],
            ("data", "gold"): [0.5, "failed", 0.4],
        }
    )
    v = _verdict(g, "RL updates are sparser than SFT")
    # seeds 0 and 2: DPO (40 + 60) / 2, GRPO (50 + 40) / 2, SFT (30 + 20) / 2; seed 1 (GRPO 90 %) left out
    assert v["observed"] == "DPO: 50.0%, GRPO: 45.0%, SFT: 25.0%; seed 1 left out: algorithm=dpo failed"
    assert v["reproduced"] is True
    v = _verdict(g, "KL coefficient has little effect")
    assert v["observed"] == "0: 50.5%, 0.1: 50.5%; seed 1 left out: beta=0.1 trained nothing"
    assert v["reproduced"] is True  # within 2 points in seeds 0 and 2 (seed 1's 10 % is not among the means)
    v = _verdict(g, "larger steps → denser updates")
    assert v["observed"] == "4: 85.0%, 8: 65.0%; seed 0 left out: steps=4 trained nothing"
    assert v["reproduced"] is True
    v = _verdict(g, "in-distribution data drives sparsity")
    assert v["observed"] == "on-policy 85.0% vs gold 45.0%; seed 1 left out: data=gold failed"
    assert v["reproduced"] is True


def test_with_no_seed_measuring_every_value_the_verdict_says_so():
    """Each seed lacks a different point: no seed decides, and the text says which point each lacks."""
    g = _grid(
        {
            ("learning_rate", "1e-06"): [0.90, "failed"],
            ("learning_rate", "1e-05"): ["failed", 0.70],
            ("learning_rate", "0.0001"): [0.50, 0.30],
        }
    )
    v = _verdict(g, "larger learning rate → denser updates")
    assert v["reproduced"] is None
    assert v["observed"] == (
        "1e-06: 90.0%, 1e-05: 70.0%, 0.0001: 40.0%; no seed measured every value "
        "(seed 0: learning_rate=1e-05 failed; seed 1: learning_rate=1e-06 failed)"
    )


def test_a_grid_of_one_seed_reads_as_before():
    g = _grid(
        {("learning_rate", "1e-06"): [0.9], ("learning_rate", "1e-05"): [0.8], ("learning_rate", "0.0001"): [0.7]}
    )
    v = _verdict(g, "larger learning rate → denser updates")
    assert v["observed"] == "1e-06: 90.0%, 1e-05: 80.0%, 0.0001: 70.0%" and v["reproduced"] is True


def test_a_data_run_that_trained_nothing_is_the_reason_given():
    """The on-policy SFT run moved no weight (fp32 save equal to the base): the verdict said the base answered every
    training prompt, or none, correctly, when both sets existed and both trained."""
    g = _grid({("data", "on_policy"): ["still"], ("data", "gold"): [0.5], ("beta", "0"): [0.7]})
    v = _verdict(g, "in-distribution data drives sparsity")
    assert v["reproduced"] is None
    assert v["observed"] == (
        "not measured: data=on_policy seed 0 trained nothing (its fp32 save equals the base): left out"
    )
    assert NO_SFT_SETS not in v["observed"]
    # a data axis whose points recorded no reason and trained: the base's sets, as before
    dropped = _grid({("beta", "0"): [0.7]})
    gold = dropped.assign(factor="data", value="gold", algorithm="sft", sparsity=float("nan"))
    dropped = pd.concat([dropped, gold], ignore_index=True)
    assert _verdict(dropped, "in-distribution data drives sparsity")["observed"] == f"not measured: {NO_SFT_SETS}"


# --- the factor chart ---------------------------------------------------------------------------------------------
AXES = {  # the quick preset's axes, five algorithms
    "learning_rate": ["1e-06", "1e-05", "0.0001"],
    "steps": ["4", "8", "16"],
    "beta": ["0", "0.1"],
    "clipping": ["on", "off"],
    "optimizer": ["adamw", "sgd"],
    "data": ["on_policy", "gold"],
    "algorithm": ["sft", "dpo", "grpo", "rloo", "ppo"],
}


def _quick_like() -> pd.DataFrame:
    """The quick preset's axes with five algorithms (the demo grid at 1024 px named sft, grpo and ppo only)."""
    axes = AXES
    return _grid({(f, v): [0.5 + 0.01 * i] for f, values in axes.items() for i, v in enumerate(values)}), axes


def test_every_panel_names_every_value():
    """Plotly's automatic tick spacing skipped labels in a narrow panel: every value is now a tick of its own."""
    from subnetviz.figures.drivers import factor_panels
    from subnetviz.figures.style import number_labels

    g, axes = _quick_like()
    for value in ("sparsity", "kl_forward"):
        fig = factor_panels(g, value=value)
        layout = fig.layout
        for j, values in enumerate(axes.values(), start=1):
            axis = layout[f"xaxis{j if j > 1 else ''}"]
            assert axis.tickmode == "array" and list(axis.tickvals) == values
            assert list(axis.ticktext) == number_labels(values)  # "1e-6, 1e-5, 1e-4": one notation (walk6)
        # each panel as wide as its values ask: the algorithm panel (5 values) wider than the optimizer's (2)
        width = {f: layout[f"xaxis{j if j > 1 else ''}"].domain for j, f in enumerate(axes, start=1)}
        assert width["algorithm"][1] - width["algorithm"][0] == pytest.approx(
            2 * (width["optimizer"][1] - width["optimizer"][0])
        )


def test_the_legend_has_a_line_of_its_own_under_the_title():
    """At 1024 px the legend, on the title's line at its right end, was drawn over a long measure's title."""
    from subnetviz.figures.drivers import HEIGHT, TOP, factor_panels

    g, _ = _quick_like()
    fig = factor_panels(g, value="kl_forward")
    layout = fig.layout
    assert layout.height == HEIGHT and layout.margin.t == TOP
    title, legend = layout.title, layout.legend
    assert (title.yref, title.yanchor, title.y) == ("container", "top", 1)  # the title from its pad down
    assert (legend.yref, legend.yanchor, legend.orientation) == ("container", "top", "h")
    legend_top = (1 - legend.y) * HEIGHT  # px from the figure's top
    assert legend_top >= title.pad.t + 26  # under the title's line (16 px text in a 12 px pad)
    assert TOP - legend_top >= 2 * 22 + 20  # two legend lines, then the panels' titles


def test_a_measure_is_named_by_its_key_or_its_label():
    from subnetviz.figures.drivers import MEASURE, measure_key

    for key, (label, *_) in MEASURE.items():
        assert measure_key(key) == key and measure_key(label) == key
    assert measure_key("bogus") is None and measure_key(None) is None and measure_key("") is None
