"""Bigram figure builders: the drawn numbers are the frame's numbers, in the documented order."""

import numpy as np
import pandas as pd
import pytest

from subnetviz.figures import bigram as bf


def _summary():
    return pd.DataFrame(
        {
            "setting": ["full", "random ablated", "subnetwork", "bigram", "ablated", "random subnetwork", "empty"],
            "r_mean": [0.97, 0.97, 0.99, 1.0, 0.96, 0.67, 0.67],
            "r_sd": [np.nan, 0.001, np.nan, np.nan, np.nan, 0.002, np.nan],
            "delta_bits": [0.0, 0.0002, -0.01, -0.03, 0.02, 1.25, 1.26],
            "bits_sd": [np.nan] * 7,
        }
    )


def test_fidelity_bars_in_setting_order_with_spread():
    fig = bf.fidelity_bars(_summary())
    bar = fig.data[0]
    assert list(bar.x) == ["bigram", "full", "subnetwork", "ablated", "random subnetwork", "random ablated", "empty"]
    assert np.allclose(bar.y, [1.0, 0.97, 0.99, 0.96, 0.67, 0.97, 0.67])
    assert np.allclose(bar.error_y.array, [0, 0, 0, 0, 0.002, 0.001, 0])
    # a setting without seeds has no spread in its hover (it read "± 0.0 (sd)"); one with seeds says over how many
    s = _summary().assign(n_seeds=[1, 3, 1, 1, 1, 3, 1])
    hover = dict(zip(bf.fidelity_bars(s).data[0].x, bf.fidelity_bars(s).data[0].customdata, strict=True))
    assert hover["full"] == "" and hover["random subnetwork"] == " ± 0.002 (sd over 3 seeds)"
    assert "%{customdata}" in bar.hovertemplate and "± 0.0 " not in str(list(bar.customdata))


def test_delta_bits_leaves_out_the_full_model():
    bar = bf.delta_bits_bars(_summary()).data[0]
    assert "full" not in list(bar.x) and dict(zip(bar.x, bar.y, strict=True))["ablated"] == 0.02
    # significant digits in the hover: the random ablation's +0.0002 must not read +0.0000 (as .4f rounds 2e-5)
    assert "%{y:+.4g}" in bar.hovertemplate and "%{y:+.4f}" not in bar.hovertemplate


def test_rotation_curves_one_line_per_model_and_target():
    rot = pd.DataFrame(
        {
            "model": ["full"] * 4 + ["bigram subnetwork"] * 4,
            "layer": [0, 1, 0, 1] * 2,
            "target": ["input", "input", "output", "output"] * 2,
            "angle_deg": [0.0, 56.2, 70.5, 46.3, 0.0, 47.0, 68.5, 34.5],
        }
    )
    fig = bf.rotation_curves(rot)
    assert len(fig.data) == 4
    traces = {t.name: list(t.y) for t in fig.data}
    assert traces["full → input"] == [0.0, 56.2] and traces["bigram subnetwork → output"] == [68.5, 34.5]


def test_covariance_heatmap_is_the_matrix():
    m = pd.DataFrame([[1.0, 0.3], [0.3, 1.0]], index=[0, 1], columns=[0, 1])
    z = bf.covariance_heatmap(m, "t").data[0].z
    assert np.allclose(np.asarray(z), m.to_numpy())


def test_null_histogram_marks_the_observed_overlap():
    null = pd.DataFrame({"null": ["uniform"] * 3 + ["rows"] * 3, "overlap": [0.1, 0.2, 0.1, 0.3, 0.2, 0.25]})
    fig = bf.null_histogram(null, observed=0.9)
    assert [t.name for t in fig.data] == ["null: uniform", "null: rows"]
    # in % of the maskable weights, as the overlap table shows the overlap
    assert fig.layout.shapes[0].x0 == pytest.approx(90.0) and list(fig.data[0].x) == pytest.approx([10, 20, 10])
    assert "%" in fig.layout.xaxis.title.text and fig.layout.xaxis.exponentformat == "e"


def test_empty_frames_give_no_data_figures():
    for fig in (
        bf.fidelity_bars(pd.DataFrame()),
        bf.rotation_curves(pd.DataFrame()),
        bf.null_histogram(pd.DataFrame(), 0.0),
    ):
        assert any("no data" in (a.text or "") for a in fig.layout.annotations)
