"""Pure Plotly figure builders: tidy DataFrame (or array) in, ``plotly.graph_objects.Figure`` out.

No Streamlit and no ``config`` here: the page (or :mod:`subnetviz.report`) passes
:data:`PLOTLY_CONFIG` when it shows a figure.

- :mod:`~subnetviz.figures.style`: the shared vocabulary (palette, module order, layout, checks);
- :mod:`~subnetviz.figures.updates`: update sparsity, tolerance sweep, ULP, spectra, series, training;
- :mod:`~subnetviz.figures.overlap` (+ :mod:`~subnetviz.figures.venn`, the area-proportional layout);
- :mod:`~subnetviz.figures.bigram`: bigram-subnetwork fidelity, ablations, residual stream;
- :mod:`~subnetviz.figures.continual`: supermask continual learning.

Every builder of the first three is also available here as ``subnetviz.figures.NAME``.
"""

from subnetviz.figures.overlap import (
    chance_consensus,
    consensus_bars,
    overlap_layer_heatmap,
    pairwise_matrix,
    upset,
    venn2,
    venn3,
)
from subnetviz.figures.style import (
    DIVERGING,
    MODULE_ORDER,
    PALETTE,
    PLOTLY_CONFIG,
    SEQUENTIAL,
    FigureDataError,
    color_map,
    format_number,
    no_data_figure,
)
from subnetviz.figures.updates import (
    accuracy_matrix,
    delta_image,
    matrix_image,
    measure_range,
    module_bars,
    module_series,
    overall_bars,
    rank_heatmap,
    rank_measure_heatmap,
    rank_thresholds,
    row_col_ratios,
    series_lines,
    shared_range,
    sparsity_heatmap,
    spectrum_curves,
    split_bar,
    tolerance_sweep,
    training_curves,
    ulp_histogram,
)

__all__ = [
    "DIVERGING",
    "MODULE_ORDER",
    "PALETTE",
    "PLOTLY_CONFIG",
    "SEQUENTIAL",
    "FigureDataError",
    "accuracy_matrix",
    "chance_consensus",
    "color_map",
    "consensus_bars",
    "delta_image",
    "format_number",
    "matrix_image",
    "measure_range",
    "module_bars",
    "module_series",
    "no_data_figure",
    "overall_bars",
    "overlap_layer_heatmap",
    "pairwise_matrix",
    "rank_heatmap",
    "rank_measure_heatmap",
    "rank_thresholds",
    "row_col_ratios",
    "series_lines",
    "shared_range",
    "sparsity_heatmap",
    "spectrum_curves",
    "split_bar",
    "tolerance_sweep",
    "training_curves",
    "ulp_histogram",
    "upset",
    "venn2",
    "venn3",
]
