"""The drivers grid after its second-pass review (drivers2), the parts read without a model: a KL of NaN is no seed
dot on the log axis' floor but a line under the chart; a conjecture whose axis kept fewer than two measured values
is listed as "not measured" with why (it vanished), and a value no seed measured is named in the observed text; an
exact 2-point difference is within 2 points; "undecided" and "not measured" are two words; the bf16-vs-fp32 chart's
"trained nothing" subtitle is broken into lines the chart holds (measured in Chromium).

Every planted sparsity and every expected text is worked out here by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from subnetviz.experiments.drivers import COLUMNS, PRESETS, verdicts
from subnetviz.experiments.drivers_verdicts import within_points
from subnetviz.figures import drivers as D
from tests.browser import NEEDS_CHROMIUM

RUN = {"accuracy": 0.4, "train_seconds": 1.0, "grid_version": 2}


def _quick(sparsity, kl=lambda spec: 1e-3, seeds: int = 1) -> pd.DataFrame:
    """The quick preset's grid: ``sparsity(spec)`` -> (bf16, fp32) sparsity of the run, or None (the point failed:
    one row, no save); ``kl(spec)`` the bf16 and fp32 saves' KL."""
    rows = []
    for s in PRESETS["quick"].plan(seeds=seeds):
        x = sparsity(s)
        if x is None:
            rows.append({**s.__dict__, "status": "failed", "note": "RuntimeError: boom", "grid_version": 2})
            continue
        for prec, v in zip(("bf16", "fp32"), x, strict=True):
            rows.append({**s.__dict__, **RUN, "precision": prec, "sparsity": v, "kl_forward": kl(s)})
            rows[-1] |= {"status": "done", "note": ""}
    return pd.DataFrame(rows, columns=COLUMNS)


DEFAULT = PRESETS["quick"].plan(1)[1].recipe()  # learning_rate=1e-05: the default GRPO run, on six axes


def _by_name(v: pd.DataFrame) -> dict[str, dict]:
    return {r["conjecture"]: r for r in v.astype({"reproduced": object}).to_dict("records")}


# --- 1. a KL of NaN -----------------------------------------------------------------------------------------
def _kl_nan_grid() -> pd.DataFrame:
    """Two seeds; steps=4's KL is NaN in both (not measured), beta=0.1's KL is 0 (a bf16 save equal to the base)."""

    def kl(s):
        if s.factor == "steps" and s.value == "4":
            return float("nan")
        return 0.0 if (s.factor == "beta" and s.value == "0.1") else 1e-3 * (1 + s.seed)

    return _quick(lambda s: (0.8 - 0.1 * s.seed, 0.01), kl, seeds=2)


def test_a_kl_of_nan_is_no_dot_and_is_named_under_the_chart():
    """The review's plg2: steps=4 had no bar but an ordinary "one seed" dot at 1e-4, the floor, hovering "seed 0:
    0.0001", a value nobody measured. No trace holds steps=4 now; the KL of 0 keeps its open triangle at the floor;
    a line under the chart names the two runs."""
    fig = D.factor_panels(_kl_nan_grid(), value="kl_forward")
    assert fig.layout.yaxis.type == "log"
    steps = [t for t in fig.data if t.xaxis == "x2"]  # the steps panel (learning rate is the first)
    assert {t.type for t in steps} == {"bar", "scatter"}
    (bar,) = [t for t in steps if t.type == "bar"]
    assert list(bar.x) == ["4", "8", "16"] and bar.y[0] is None
    for t in (t for t in steps if t.type == "scatter"):
        assert "4" not in list(t.x), (t.name, list(t.x), list(t.y))
        assert not np.isnan(np.asarray(t.customdata, dtype=float)).any()
    (dots,) = [t for t in steps if t.name == D.SEED_NAME]
    assert sorted(zip(dots.x, dots.y, strict=True)) == [("16", 1e-3), ("16", 2e-3), ("8", 1e-3), ("8", 2e-3)]
    (zero,) = [t for t in fig.data if t.name == "KL 0 (at the axis floor)"]  # a 0 is still drawn on the floor
    floor = 10 ** (fig.layout.yaxis.range[0] + 0.3)
    assert list(zero.x) == ["0.1", "0.1"] and np.allclose(list(zero.y), floor) and math.isclose(floor, 1e-4)
    (note,) = fig.layout.annotations[-1:]
    assert note.text == "KL not measured (NaN), not drawn: steps=4 s0, steps=4 s1"
    assert fig.layout.height == D.HEIGHT + D.NOTE_LINE + 8  # a line of its own: the panels keep their height
    assert fig.layout.height - fig.layout.margin.b == D.HEIGHT - 60


def test_every_measured_kl_draws_as_before_and_no_line_is_added():
    g = _kl_nan_grid()
    g.loc[g["kl_forward"].isna(), "kl_forward"] = 2e-3
    fig = D.factor_panels(g, value="kl_forward")
    assert fig.layout.height == D.HEIGHT and fig.layout.margin.b == 60
    assert not [a for a in fig.layout.annotations if "not measured" in a.text]
    (dots,) = [t for t in fig.data if t.xaxis == "x2" and t.name == D.SEED_NAME]
    assert sorted(zip(dots.x, dots.y, strict=True))[:2] == [("16", 1e-3), ("16", 2e-3)] and "4" in list(dots.x)


def test_a_long_list_of_unmeasured_runs_is_broken_into_lines_and_counted():
    g = _kl_nan_grid()
    g.loc[(g["factor"].isin(["learning_rate", "algorithm"])) & (g["precision"] == "bf16"), "kl_forward"] = np.nan
    lines = D._unmeasured(g[g["precision"] == "bf16"], "kl_forward")
    assert all(len(x) <= D.NOTE_CHARS for x in lines) and len(lines) >= 2
    # 3 learning rates, steps=4 and 5 algorithms, in two seeds: 18 runs, the first four (seed 0's) named
    assert " ".join(lines) == (
        "KL not measured (NaN), not drawn: learning_rate=1e-06 s0, learning_rate=1e-05 s0, learning_rate=0.0001 s0, "
        "steps=4 s0, and 14 more"
    )


# --- 2. conjectures that vanished -----------------------------------------------------------------------------
def test_an_axis_left_with_one_value_is_not_measured_and_a_missing_value_is_named():
    """The review's A1: the default GRPO run (on six axes) trained nothing. "KL coefficient" and "gradient clipping"
    vanished from the verdicts (5 of 7 conjectures), and "larger learning rate" read reproduced from 2 of its 3
    values without saying that 1e-05 was left out."""
    lr = {1e-6: 0.95, 1e-4: 0.5}
    g = _quick(lambda s: (1.0, 1.0) if s.recipe() == DEFAULT else (lr.get(s.learning_rate, 0.9), 0.01))
    v = _by_name(verdicts(g))
    assert len(v) == 7
    kl = v["KL coefficient has little effect"]
    assert kl["observed"] == "not measured: beta=0 trained nothing, so fewer than two of its values to compare"
    assert kl["reproduced"] is None and kl["verdict"] == "not measured"
    clip = v["gradient clipping has little effect"]
    assert (
        clip["observed"].startswith("not measured: clipping=on trained nothing") and clip["verdict"] == "not measured"
    )
    lr_row = v["larger learning rate → denser updates"]
    assert lr_row["observed"] == "1e-06: 95.0%, 0.0001: 50.0%; left out: learning_rate=1e-05 trained nothing"
    assert lr_row["reproduced"] is True and lr_row["verdict"] == "reproduced"
    assert v["larger steps → denser updates"]["observed"] == "4: 90.0%, 16: 90.0%; left out: steps=8 trained nothing"
    algos = v["RL updates are sparser than SFT"]["observed"]
    assert algos == "DPO: 90.0%, PPO: 90.0%, RLOO: 90.0%, SFT: 90.0%; left out: algorithm=grpo trained nothing"


def test_failed_points_leave_not_measured_rows_naming_them():
    """The review's A2: β=0.1 and SFT failed; "KL coefficient" and "RL updates are sparser than SFT" vanished."""
    g = _quick(lambda s: None if (s.factor, s.value) in {("beta", "0.1"), ("algorithm", "sft")} else (0.9, 0.01))
    v = _by_name(verdicts(g))
    assert len(v) == 7
    assert v["RL updates are sparser than SFT"]["observed"] == (
        "not measured: algorithm=sft failed, so no SFT point to compare"
    )
    assert v["KL coefficient has little effect"]["observed"] == (
        "not measured: beta=0.1 failed, so fewer than two of its values to compare"
    )
    assert {v[k]["verdict"] for k in ("RL updates are sparser than SFT", "KL coefficient has little effect")} == {
        "not measured"
    }


def test_a_value_no_seed_measured_is_named_with_each_seed_s_reason():
    """Two seeds: learning_rate=1e-04 failed in seed 0 and trained nothing in seed 1; the other two values fall."""

    def sp(s):
        if s.factor == "learning_rate" and s.learning_rate == 1e-4:
            return None if s.seed == 0 else (1.0, 1.0)
        return ({1e-6: 0.9, 1e-5: 0.8}.get(s.learning_rate, 0.7) if s.factor == "learning_rate" else 0.8, 0.01)

    v = _by_name(verdicts(_quick(sp, seeds=2)))["larger learning rate → denser updates"]
    assert v["observed"] == (
        "1e-06: 90.0%, 1e-05: 80.0%; left out: learning_rate=0.0001 failed in seed 0, trained nothing in seed 1"
    )
    assert v["verdict"] == "reproduced"


def test_every_seed_failing_one_value_says_so_once():
    g = _quick(lambda s: None if (s.factor, s.value) == ("clipping", "off") else (0.9, 0.01), seeds=2)
    v = _by_name(verdicts(g))["gradient clipping has little effect"]
    assert v["observed"] == (
        "not measured: clipping=off failed in every seed, so fewer than two of its values to compare"
    )


# --- 5. the 2-point tie -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("low", "high", "within"),
    [(0.95, 0.97, True), (0.95, 0.970001, False), (0.5, 0.52, True), (0.1, 0.12, True), (0.1, 0.1201, False)],
)
def test_two_points_is_within_two_points_and_a_hair_more_is_not(low, high, within):
    """0.97 − 0.95 is 0.020000000000000018 in binary floating point: an exact 2-point difference read as beyond 2
    points (95 vs 97 % "not reproduced"); 95 vs 97.0001 % is beyond."""
    assert within_points(high - low, 2) is within
    g = _quick(
        lambda s: (
            ({"0": low, "0.1": high}[s.value], 0.01)
            if s.factor == "beta"
            else (high if s.recipe() == DEFAULT else 0.9, 0.01)
        )
    )
    v = _by_name(verdicts(g))["KL coefficient has little effect"]
    assert v["reproduced"] is within and v["verdict"] == ("reproduced" if within else "not reproduced")


# --- 6. the verdict in words ------------------------------------------------------------------------------------
def test_undecided_and_not_measured_are_two_words():
    """Two seeds: DPO beats SFT in seed 0 only (undecided); the data axis failed (not measured). Both read "—" in
    the verdicts table and the export."""

    def sp(s):
        if s.factor == "data":
            return None
        if s.factor == "algorithm":
            return ({"sft": 0.5, "dpo": 0.6 if s.seed == 0 else 0.4}.get(s.value, 0.7), 0.01)
        return (0.9, 0.01)

    v = _by_name(verdicts(_quick(sp, seeds=2)))
    assert v["RL updates are sparser than SFT"]["reproduced"] is None
    assert v["RL updates are sparser than SFT"]["verdict"] == "undecided"
    assert v["in-distribution data drives sparsity"]["reproduced"] is None
    assert v["in-distribution data drives sparsity"]["verdict"] == "not measured"
    assert v["bf16 storage hides small updates"]["verdict"] == "reproduced"
    assert {r["verdict"] for r in v.values()} <= {"reproduced", "not reproduced", "undecided", "not measured"}


# --- 4. the "trained nothing" subtitle --------------------------------------------------------------------------
def _g3() -> pd.DataFrame:
    """The review's plg3: one seed, the default GRPO run trained nothing (six runs drawn as ×)."""
    lr = {1e-6: 0.95, 1e-4: 0.5}
    return _quick(lambda s: (1.0, 1.0) if s.recipe() == DEFAULT else (lr.get(s.learning_rate, 0.9), 0.01))


def test_the_subtitle_is_broken_between_runs_and_keeps_its_explanation():
    fig = D.precision_pairs(_g3())
    title = fig.layout.title.text
    lines = [x.removeprefix("<sup>").removesuffix("</sup>") for x in title.split("<br>")[1:]]
    assert len(lines) == 3 and all(len(x) <= D.SUBTITLE_CHARS for x in lines)
    assert lines[0].startswith("× trained nothing: learning_rate=1e-5 s0, steps=8 s0,")
    assert " ".join(lines).endswith("no step changed a weight), so its 100 % measures no training")
    runs = ["learning_rate=1e-5 s0", "steps=8 s0", "beta=0 s0", "clipping=on s0", "optimizer=adamw s0"]
    assert all(any(r in x for x in lines) for r in runs + ["algorithm=grpo s0"])  # a name never split
    assert fig.layout.margin.t == 80 + 36 * 2 and fig.layout.height == 450 + 36 * 2  # the plot keeps its height


@NEEDS_CHROMIUM
@pytest.mark.parametrize("width", [564, 980], ids=["1024px", "1440px"])
def test_the_subtitle_ends_inside_the_chart_and_above_its_plot(width):
    """The chart as wide as the page gives it (564 px at 1024, 980 px at 1440, the sidebar open): one line ran
    off it at "…algorithm=gr" and at "…so its 100 %", its "measures no training" unread."""
    from tests.unit.test_walk6a_fixes import _drawn

    (drawn,) = _drawn([D.precision_pairs(_g3())], width)
    assert drawn["titles"], drawn
    for line in drawn["titles"]:
        assert line["right"] <= drawn["right"] - 10, (line, drawn["right"])
    assert max(t["bottom"] for t in drawn["titles"]) <= min(p["top"] for p in drawn["plots"])


NOTE_PROBE = r"""() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => {
  const r = gd.getBoundingClientRect(), L = gd._fullLayout;
  const box = (t) => { const b = t.getBoundingClientRect(); return {left: b.left, right: b.right, top: b.top,
      bottom: b.bottom, text: t.textContent}; };
  return {left: r.left, right: r.right, top: r.top, bottom: r.top + L.height,
          notes: Array.from(gd.querySelectorAll('.annotation-text')).map(box).filter(b => /not measured/.test(b.text)),
          ticks: Array.from(gd.querySelectorAll('.xtick text')).map(box)};
})"""


@NEEDS_CHROMIUM
@pytest.mark.parametrize("width", [564, 980], ids=["1024px", "1440px"])
def test_the_unmeasured_line_lies_under_the_tick_labels_inside_the_chart(width):
    from tests.unit.test_walk6a_fixes import _drawn

    g = _kl_nan_grid()
    g.loc[(g["factor"] == "learning_rate") & (g["precision"] == "bf16"), "kl_forward"] = np.nan  # two lines
    (drawn,) = _drawn([D.factor_panels(g, value="kl_forward")], width, probe=NOTE_PROBE)
    (note,) = drawn["notes"]
    assert note["left"] >= drawn["left"] and note["right"] <= drawn["right"] - 10, note
    assert note["bottom"] <= drawn["bottom"], (note, drawn["bottom"])
    assert note["top"] >= max(t["bottom"] for t in drawn["ticks"]), note


def test_a_grid_where_every_run_trained_nothing_measures_no_conjecture():
    """Every run's fp32 save equals the base: the bf16-vs-fp32 row read "+nan percentage points" beside "—"."""
    v = _by_name(verdicts(_quick(lambda s: (1.0, 1.0))))
    assert len(v) == 7 and {r["verdict"] for r in v.values()} == {"not measured"}
    assert v["bf16 storage hides small updates"]["observed"] == (
        "not measured: no run that trained has both saves' sparsity"
    )
    assert v["larger steps → denser updates"]["observed"] == (
        "not measured: steps=4 trained nothing; steps=8 trained nothing; steps=16 trained nothing, so fewer than two "
        "of its values to compare"
    )
