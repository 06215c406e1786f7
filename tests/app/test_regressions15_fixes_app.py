"""AppTest, regressions15 findings 1 and 4.

1. A bf16 base whose values lie beyond float16's range, with a bf16 finetune and an
fp16 one, at the stored precision. The analysis' refusal of the fp16 pair was a ConfigError that named no finetune:
Update sparsity (and every analysis page) showed one page-wide line and no finetune at all. Now the fp16 finetune
alone is left out with that line (base tensor, count, the advice to compare at fp32 or bf16), the bf16 one drawn;
at fp32 the fp16 finetune is compared again (its leave-out is remembered for the stored precision only).
4. A drivers link's measure (``dr_value=kl_forward``) fell to sparsity in Chromium while a drivers job was queued:
   after the first run the Measure radio was drawn with the first option as its default, and a browser whose radio
   the job-progress fragment redrew before it held the first run's value sent that default back (about one load in
   two; AppTest, which sends the value it holds, kept KL). The radio's default is now always the measure shown.
"""

from __future__ import annotations

import pytest

from tests.app.test_drivers1_fixes_app import grid  # noqa: F401 (a fixture: the planted grid)
from tests.app.test_spectra4_fixes import _errors, _open
from tests.app_fixtures import decode, open_page, plotly_specs
from tests.unit.test_regressions15_fixes import outlier_pair

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("typed_options")]
NUMEL = 64 * 64 + 64  # the weight and the norm (unchanged)


def _bars(at) -> dict[str, float]:
    """Update sparsity's bar chart: model -> its sparsity (%)."""
    (bars,) = [s["data"][0] for s in plotly_specs(at) if s["data"][0]["type"] == "bar"]
    return dict(zip(map(str, bars["x"]), decode(bars["y"]).astype(float).tolist(), strict=True))


def test_the_fp16_finetune_alone_is_left_out_and_compared_again_at_fp32(app_env):
    home = app_env / "regressions15-cast"
    base, fa, fb, x = outlier_pair(home)
    changed = {m: int((x["base"] != x[m]).sum()) for m in ("A", "B")}  # float64 NumPy: stored values that differ
    assert changed["A"] == 4 and changed["B"] >= 7  # (B: its four, and the base's three outliers clamped)
    at = _open(home, ["A", "B"], page="sparsity", base="b", ok=False)
    (line,) = _errors(at)
    assert line.startswith("B is left out (not comparable at this precision): "), line
    assert "3 value(s) of the base tensor (bfloat16)" in line and "fp32 or bf16" in line
    assert _bars(at) == pytest.approx({"A": 100 * (1 - changed["A"] / NUMEL)})  # the bf16 finetune compared
    for _ in range(2):  # at fp32 both compared (not left out for the other precision's refusal), then stored again
        at = _open(home, ["A", "B"], page="sparsity", base="b", precision="fp32")
        assert _bars(at) == pytest.approx({m: 100 * (1 - c / NUMEL) for m, c in changed.items()})
        at = _open(home, ["A", "B"], page="sparsity", base="b", ok=False)
        (again,) = _errors(at)
        assert again == line and list(_bars(at)) == ["A"]


def test_a_drivers_links_measure_is_the_radios_default_on_every_run(grid):  # noqa: F811
    """The default the browser takes the radio's value from, where it has not taken one yet, is the linked KL on the
    page.s every run (the first and the runs after it), not the first option."""
    at = open_page("drivers", dr_run=grid, dr_value="kl_forward")
    for _ in range(3):
        radio = at.radio(key="dr_value")
        assert radio.value == "kl_forward" and radio.proto.default == 2  # (sparsity, accuracy, KL)
        assert at.query_params["dr_value"] == "Forward KL(π_base ‖ π)" and not at.exception and not at.error
        at.run()
    radio.set_value("accuracy").run()  # another measure chosen: shown, and the default it is drawn with
    radio = at.radio(key="dr_value")
    assert radio.value == "accuracy" and radio.proto.default == 1 and not at.warning


def test_the_subspaces_tab_leaves_the_fp16_finetune_out_too(app_env):
    """Spectra's Subspaces tab decomposes the pair as compared (the base cast to the fp16 finetune's dtype): its
    refusal was a ConfigError naming no finetune, one page-wide line for the tab and the bf16 finetune not drawn."""
    home = app_env / "regressions15-cast-sub"
    outlier_pair(home)
    at = _open(home, ["A", "B"], base="b", ok=False, spec_tab="Subspaces of W_base vs W_ft")
    (line,) = _errors(at)
    assert line.startswith("B is left out (not comparable at this precision): ") and "float16's range" in line, line
    assert at.selectbox(key="sub_model").options == ["A"]  # the bf16 finetune decomposed, the fp16 one not offered
