"""Spectra & Subspaces, second review (unit): σ ratios read as numbers near 1, not as ratios against chance; the
subspaces' precision option is checked as the update analysis' is."""

import numpy as np
import pandas as pd
import pytest

from subnetviz.errors import ConfigError
from subnetviz.report.formats import RATIO, SCIENTIFIC, column_format, display_frame, format_value, formatted_frame


def _subspace_rows() -> pd.DataFrame:
    """Two matrices whose σ moved by about 1e-4 (as RL moves them): mean ratios 1 ± 1e-4, deviations 1e-4, 3e-4."""
    return pd.DataFrame(
        {
            "name": ["q_proj", "k_proj"],
            "angle_left_max": [2.5e-3, 1.0],
            "sv_ratio_mean": [1.0001, 0.9999],
            "sv_ratio_maxdev": [1e-4, 3e-4],
        }
    )


def test_sigma_ratios_read_their_distance_from_one_in_the_export():
    out = formatted_frame(_subspace_rows())
    # "1.00×" and "0.00×" for every row: no digit of the finding, and a "×" that reads as a multiple of chance
    assert list(out["sv_ratio_mean"]) == ["1.000100", "0.999900"]
    assert list(out["sv_ratio_maxdev"]) == ["1.000e-4", "3.000e-4"]
    assert not any("×" in str(v) for v in out[["sv_ratio_mean", "sv_ratio_maxdev"]].to_numpy().ravel())


def test_sigma_ratios_in_the_apps_table_keep_the_digits():
    shown, fmts = display_frame(_subspace_rows())
    assert fmts["sv_ratio_maxdev"] == SCIENTIFIC
    mean = fmts["sv_ratio_mean"]
    assert "×" not in mean
    # what the browser writes with that printf format: the two ratios apart from 1 and from each other
    assert [mean % v for v in shown["sv_ratio_mean"]] == ["1.000100", "0.999900"]


@pytest.mark.parametrize(
    "values, text",
    [
        ([1 + 3e-7, 1.25], ["1.000000300", "1.250000000"]),  # the smallest distance from 1 sets the decimals
        ([1.0, 1.0], ["1.0000", "1.0000"]),  # unchanged: exactly 1
        ([1.5, 0.75], ["1.5000", "0.7500"]),  # far from 1: four decimals
    ],
)
def test_the_decimals_follow_the_smallest_distance_from_one(values, text):
    fmt = column_format("sv_ratio_mean", pd.Series(values))
    assert [format_value(v, fmt) for v in values] == text


def test_ratios_against_chance_keep_the_times_sign():
    for name in ("ratio_over_chance", "ratio", "o1_x_chance"):
        assert column_format(name, pd.Series([1.5, 2.0])) == RATIO
    assert format_value(1.5, RATIO) == "1.50×"


def test_the_long_vectors_sigma_ratio_column_reads_as_the_mean():
    v = pd.Series(np.array([1.0002, 0.9998, 1.0]))
    fmt = column_format("sv_ratio", v)
    assert [format_value(x, fmt) for x in v] == ["1.000200", "0.999800", "1.000000"]


def test_a_subspace_precision_outside_the_update_analysis_choices_is_refused():
    from subnetviz.analysis.subspaces import SubspaceOptions

    with pytest.raises(ConfigError, match="precision must be one of"):
        SubspaceOptions(k=4, precision="fp8")
    assert SubspaceOptions(k=4, precision="bf16") != SubspaceOptions(k=4)  # (the cache key tells them apart)
