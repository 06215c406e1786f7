"""Fixes from the continual7 review (the Continual page at 1024 px, its summary numbers and tiny densities).

2. Summary › Final average accuracy with seven methods (the Launch form's defaults with "+ KKT variants"): each
   label "84.8 %" took 38 px of a bar's 25 px and ran into its neighbours ("84.8 %90.3 %"). A label's unit, size and
   decimals are now the first that fit side by side at 1024 px.
3. KKT: Plotly shrank each "chosen" over its bar to the bar's width (8 px tall at 1024 px with four earlier masks,
   1 px with seven). The word keeps its size, and stands upright where groups are too close for it across.
4. A mean over seeds that cancels (forward transfer +0.0023148 and -0.0023148, sums of k/540 each rounded its own
   way) read 3.469e-16 % in the Summary table: the summary's means and sds keep 12 decimals.
5. A density under one weight's worth of a layer (1e-6 of permuted-digits' 1,280-weight head) kept 1 weight there
   (0.078 %) while titles, note, reference curve and mask metadata gave 1e-6: such a density is refused, with the
   count it would keep and the smallest density that keeps the promise.

Geometry is measured on the figures drawn by plotly.js in Chromium (``test_walk6a_fixes._drawn``) in a div as wide as
the app gives the chart at 1024 px with the sidebar open: 274 px for the Summary's half-width charts, 564 px for the
KKT chart, which spans the main column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from subnetviz.errors import ConfigError
from subnetviz.figures import continual as cf
from subnetviz.supermask.config import ContinualConfig, masked_layer_sizes, thin_density
from subnetviz.supermask.layers import kept_count
from subnetviz.supermask.metrics import ContinualResult, RunResult, rederived, summarize
from tests.browser import NEEDS_CHROMIUM
from tests.unit.test_walk6a_fixes import FULL, HALF, _drawn

LABELS = ["finetune", "SupSup", "SSNeT", "ExSSNeT", "SupSup+KKT", "SSNeT+KKT", "ExSSNeT+KKT"]

# the run the review measured (dfc091: the form's defaults with "+ KKT variants", 2 seeds), its Summary bars' values
DFC091 = [0.525, 0.418, 0.848, 0.903, 0.384, 0.695, 0.841]
DFC091_FORGETTING = [0.508, 0.0, 0.076, 0.0, 0.0, 0.250, 0.0]


def _summary(acc, forgetting=None, sd=0.01) -> pd.DataFrame:
    labs = LABELS[: len(acc)]
    return pd.DataFrame(
        {
            "label": labs,
            "density": [1.0 if lab == "finetune" else 0.05 for lab in labs],
            "seeds": 2,
            "final_acc_mean": acc,
            "final_acc_sd": sd,
            "forgetting_mean": forgetting if forgetting is not None else [0.1] * len(acc),
            "forgetting_sd": sd,
        }
    )


VALUES = r"""() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => {
  const box = t => { const b = t.getBoundingClientRect();
      return {text: t.textContent, left: b.left, right: b.right, top: b.top, bottom: b.bottom,
              size: parseFloat(getComputedStyle(t).fontSize)}; };
  const r = gd.getBoundingClientRect(), L = gd._fullLayout;
  return {values: Array.from(gd.querySelectorAll('.textpoint text')).map(box),
          chosen: Array.from(gd.querySelectorAll('text.bartext')).filter(t => t.textContent).map(box),
          top: r.top, plotTop: r.top + L.yaxis._offset, right: r.right}; })"""


def _collisions(boxes: list[dict], gap: float = 1.0) -> list[tuple[str, str, float]]:
    """Pairs of text boxes that meet vertically and lie closer than ``gap`` px across (how far apart they are)."""
    out = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            if a["top"] < b["bottom"] and b["top"] < a["bottom"]:
                apart = max(b["left"] - a["right"], a["left"] - b["right"])
                if apart < gap:
                    out.append((a["text"], b["text"], round(apart, 1)))
    return out


# --- 2. value labels ---------------------------------------------------------------------------------------------
def test_seven_methods_labels_drop_the_unit_and_three_keep_it():
    y = 100 * np.array(DFC091)
    text, size = cf.value_labels(y, " %")
    assert not any("%" in t for t in text) and text[2] == "84.8" and size <= 12  # the axis title says "(%)"
    three, size = cf.value_labels(y[:3], " %")
    assert three == ["52.5 %", "41.8 %", "84.8 %"] and size == 12  # room enough: as before
    # a forgetting that rounds to 0 from below reads 0.0, not -0.0
    assert cf.value_labels(np.array([-0.03, 5.0]), "")[0] == ["0.0", "5.0"]


@NEEDS_CHROMIUM
def test_no_two_value_labels_of_a_summary_chart_meet_at_1024_px():
    """The Summary's two charts, half the main column wide, for 3 to 7 methods: the review's run, every method at
    100 % (the widest label), equal heights (the one-task run's "65.8 %65.8 %") and negative forgetting."""
    figs, cases = [], []
    for n in range(3, 8):
        for acc, forgetting in (
            (DFC091[:n], DFC091_FORGETTING[:n]),
            ([1.0] * n, [-0.123] * n),
            ([0.658] * n, [0.999] * n),
        ):
            s = _summary(acc, forgetting)
            figs += [cf.accuracy_vs_density(s), cf.forgetting_bars(s, 0.05)]
            cases += [(n, "accuracy", acc[0]), (n, "forgetting", forgetting[0])]
    drawn = _drawn(figs, HALF, VALUES)
    for case, d in zip(cases, drawn, strict=True):
        assert len(d["values"]) == case[0], case
        assert not _collisions(d["values"]), (case, _collisions(d["values"]))
        assert all(v["size"] >= 10 for v in d["values"]), case  # not shrunk into specks
        assert all(v["right"] <= d["right"] for v in d["values"]), case


# --- 3. "chosen" --------------------------------------------------------------------------------------------------
def _knn(tasks: int, top: bool = False) -> pd.DataFrame:
    """One KKT run's KNN rows over ``tasks`` tasks: each new task's best earlier mask chosen (at 100 %: ``top``)."""
    rng, rows = np.random.default_rng(tasks), []
    for t in range(1, tasks):
        accs = rng.uniform(0.3, 0.95, t)
        best = int(np.argmax(accs))
        accs[best] = 1.0 if top else accs[best]
        rows += [
            {"label": "SSNeT+KKT", "density": 0.05, "seed": 0, "task": t, "source_task": s, "knn_acc": accs[s]}
            | {"chance": 0.1, "chosen": s == best}
            for s in range(t)
        ]
    return pd.DataFrame(rows)


def test_chosen_keeps_its_size_and_the_axis_holds_it():
    fig = cf.knn_bars(_knn(5, top=True))
    bars = [t for t in fig.data if t.type == "bar"]
    assert all(b.constraintext == "inside" and b.textfont.size == cf.CHOSEN_PX for b in bars)  # never shrunk outside
    assert all(b.textangle == 0 for b in bars) and fig.layout.yaxis.range[1] > 105
    many = cf.knn_bars(_knn(10))
    assert all(b.textangle == -90 for b in many.data if b.type == "bar")  # 9 groups: upright


@NEEDS_CHROMIUM
@pytest.mark.parametrize("top", [False, True], ids=["review", "chosen-at-100"])
def test_each_chosen_is_drawn_at_its_size_apart_and_inside_the_plot_at_1024_px(top):
    """The KKT chart, the main column wide, for 2 to 12 tasks: every "chosen" at 11 px (it was 8 px tall with 4
    earlier masks and 1 px with 7), no two meeting, and each under the plot's top (not in the title)."""
    tasks = [2, 3, 5, 8, 9, 12]
    drawn = _drawn([cf.knn_bars(_knn(t, top)) for t in tasks], FULL, VALUES)
    for t, d in zip(tasks, drawn, strict=True):
        chosen = d["chosen"]
        assert len(chosen) == t - 1 and all(c["text"] == "chosen" for c in chosen), t
        assert all(c["size"] >= 10 for c in chosen), t
        extent = [max(c["bottom"] - c["top"], c["right"] - c["left"]) for c in chosen]
        assert min(extent) >= 30, (t, extent)  # the word's length, across or upright ("chosen" is 35 px at 11 px)
        assert not _collisions(chosen), (t, _collisions(chosen))
        assert all(c["top"] >= d["plotTop"] for c in chosen), (t, [c["top"] - d["plotTop"] for c in chosen])


# --- 4. a mean that cancels -----------------------------------------------------------------------------------------
def _runs(values: list[float], metric: str = "forward_transfer") -> pd.DataFrame:
    return pd.DataFrame(
        {"label": "SSNeT", "method": "ssnet", "kkt": False, "density": 0.05, "seed": range(len(values)), metric: values}
    )


def test_a_mean_of_seeds_that_cancel_is_zero():
    seeds = [0.0023148148148148216, -0.0023148148148148147]  # the review's run's SSNeT, seeds 0 and 1
    assert _runs(seeds)["forward_transfer"].mean() != 0  # (3.469e-18: what the table showed as 3.469e-16 %)
    row = summarize(_runs(seeds)).iloc[0]
    assert row["forward_transfer_mean"] == 0.0 and not np.signbit(row["forward_transfer_mean"])
    assert row["forward_transfer_sd"] == pytest.approx(np.std(seeds, ddof=1), abs=1e-12)
    # one run whose own tasks cancel: A[0,1] - A_rand[1] = 0.7 - 0.1, A[1,2] - A_rand[2] = 0.3 - 0.9
    acc = np.array([[0.8, 0.7, 0.1], [0.8, 0.8, 0.3], [0.8, 0.8, 0.8]])
    run = RunResult("permuted-digits", "ssnet", "SSNeT", False, 0.05, 0, acc, np.array([0.1, 0.1, 0.9]))
    frames = ContinualResult("permuted-digits", (run,)).to_frames()
    assert frames["runs"]["forward_transfer"].iloc[0] != 0  # -5.6e-17
    assert frames["summary"]["forward_transfer_mean"].iloc[0] == 0.0
    assert rederived(frames)["summary"]["forward_transfer_mean"].iloc[0] == 0.0  # as load_result gives the page


def test_summary_means_are_the_means_to_twelve_decimals():
    rng = np.random.default_rng(7)
    values = rng.uniform(-1, 1, 5)
    row = summarize(_runs(list(values))).iloc[0]
    assert row["forward_transfer_mean"] == pytest.approx(values.mean(), abs=5e-13)
    assert row["forward_transfer_sd"] == pytest.approx(values.std(ddof=1), abs=5e-13)
    assert row["seeds"] == 5
    gap = summarize(_runs([0.5, np.nan])).iloc[0]  # a seed without the metric: the mean of the others
    assert gap["forward_transfer_mean"] == 0.5 and np.isnan(gap["forward_transfer_sd"])
    none = summarize(_runs([np.nan, np.nan])).iloc[0]
    assert np.isnan(none["forward_transfer_mean"]) and np.isnan(none["forward_transfer_sd"])


# --- 5. densities under one weight's worth of a layer ------------------------------------------------------------
def test_the_review_s_tiny_density_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        ContinualConfig(density=[1e-6, 1.0], tasks=12, seeds=[4294967295])
    line = str(err.value)
    assert "\n" not in line and "Traceback" not in line
    assert "density 1e-06 is too small for permuted-digits" in line
    assert "layer3.weight has 1,280 weights, and a mask keeps 1 of them (0.0781 %, not 0.0001 %)" in line
    assert "use a density of at least 0.000782" in line


@pytest.mark.parametrize(("bench", "least"), [("permuted-digits", 0.000782), ("split-digits", 0.00391)])
def test_the_density_a_refusal_names_is_accepted_and_keeps_its_promise(bench, least):
    assert f"at least {least:g} " in thin_density(bench, least * 0.999)
    ContinualConfig(benchmark=bench, tasks=2, density=least)  # accepted
    for d in np.geomspace(least, 1.0, 200):  # every layer keeps density × its weights to within a third
        for numel in masked_layer_sizes(bench).values():
            assert abs(kept_count(numel, d) - d * numel) <= d * numel / 3 + 1e-9, (bench, d, numel)


def test_densities_the_form_offers_and_finetune_alone_are_never_refused():
    for bench in ("permuted-digits", "split-digits", "arithmetic-text"):
        for d in (0.02, 0.05, 0.1, 0.3, 1.0):
            assert thin_density(bench, d) is None
    assert ContinualConfig(methods=["finetune"], density=1e-6).density == (1e-6,)  # finetune is dense


def test_the_sizes_checked_are_those_of_the_network_a_run_builds():
    from subnetviz.supermask.data import permuted_digits, split_digits
    from subnetviz.supermask.layers import MaskedMLP
    from subnetviz.supermask.methods import MethodConfig, model_sizes

    for bench in (split_digits(2, 0), permuted_digits(2, 0)):
        net = MaskedMLP(model_sizes(bench, MethodConfig("supsup")), 2, 0.05)
        built = {name: layer.weight.numel() for name, layer in net.masked_layers().items()}
        assert masked_layer_sizes(bench.name) == built, bench.name
    # arithmetic-text: its head (two classes) and hidden layer; its first layer is the encoder width × 128
    assert masked_layer_sizes("arithmetic-text") == {"layer2.weight": 128 * 128, "layer3.weight": 128 * 2}


def test_submitting_a_tiny_density_is_refused_before_the_job_runs():
    from subnetviz.supermask.job import validate_config

    with pytest.raises(ConfigError, match=r"^density 0\.001 is too small for split-digits: layer3\.weight has 256"):
        validate_config({"benchmark": "split-digits", "methods": ["supsup"], "density": 0.001, "tasks": 2})
