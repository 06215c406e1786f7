"""Charts that share a 1024 px page with others: nothing of their titles, colour-bar titles or bar labels cut."""

import numpy as np
import pandas as pd

from subnetviz import figures as F


def test_upset_bar_labels_turn_upright_when_five_or_more_stand_side_by_side():
    """Seven bars in a half-width column at 1024 px: "17.4k17k16.5k15.2k" ran into each other."""
    labels = ["a", "b", "c"]
    df = pd.DataFrame({"members": list(range(1, 8)), "count": [98_900, 17_400, 17_000, 16_500, 15_200, 10_900, 10_600]})
    assert F.upset(df, labels).data[0].textangle == -90
    few = pd.DataFrame({"members": [1, 2, 3], "count": [10, 5, 2]})
    assert F.upset(few, labels).data[0].textangle in (0, None)  # a few labels stay level


def test_a_layer_heatmap_s_colour_bar_title_puts_its_unit_on_a_line_of_its_own():
    """Three sparsity heatmaps side by side at 1024 px cut "sparsity (%)" at "sparsity (9"."""
    df = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1],
            "module": ["q", "k", "q", "k"],
            "changed": [1, 2, 3, 4],
            "numel": [10, 10, 10, 10],
            "sparsity": [0.9, 0.8, 0.7, 0.6],
            "density": [0.1, 0.2, 0.3, 0.4],
        }
    )
    fig = F.sparsity_heatmap(df)
    assert fig.data[0].colorbar.title.text == "sparsity<br>(%)"
    assert np.nanmax(fig.data[0].z) == 90.0


def test_set_chart_counts_pick_their_unit_after_rounding_and_shares_near_100_keep_their_decimals():
    """999,700 read "1e+03k" on the Venn and the UpSet bars; a region at 99.97 % of the union read "100.0%"."""
    from subnetviz.figures.sets import _compact

    assert [_compact(v) for v in (999, 999_499, 999_700, 999_999_999, 98_900, 1_000, 17_000)] == [
        "999",
        "999k",
        "1M",
        "1G",
        "98.9k",
        "1k",
        "17k",
    ]
    labels = ["a", "b"]
    df = pd.DataFrame({"members": [1, 2, 3], "count": [999_700, 0, 300]})
    bars = F.upset(df, labels).data[0]
    assert "1M" in list(bars.text) and not any("e+" in t for t in bars.text)
    venn = F.venn2([999_700, 0, 300], labels)
    texts = [t for tr in venn.data for t in (tr.text or []) if t]
    assert any(t.endswith("99.97%") for t in texts) and not any("100.0%" in t or "e+" in t for t in texts), texts
