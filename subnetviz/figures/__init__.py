"""Pure Plotly figure builders: tidy DataFrame (or array) in, ``plotly.graph_objects.Figure`` out.

No Streamlit and no ``config`` here: the page (or :mod:`subnetviz.report`) passes
:data:`PLOTLY_CONFIG` when it shows a figure.

- :mod:`~subnetviz.figures.style`: the shared vocabulary (palette, module order, layout, checks);
- :mod:`~subnetviz.figures.colors`: a module kind's colour on every chart, masks in their model's colour;
- :mod:`~subnetviz.figures.updates`: update sparsity, tolerance sweep, ULP, norms / embeddings / head;
- :mod:`~subnetviz.figures.spectra`: singular values, rank / effective rank / stable rank;
- :mod:`~subnetviz.figures.matrix`: one update matrix (changed entries, signed Δ, row / column shares);
- :mod:`~subnetviz.figures.series`: checkpoint series, training curves, accuracy matrix;
- :mod:`~subnetviz.figures.overlap`: pairwise matrices, per-layer overlap, consensus;
- :mod:`~subnetviz.figures.sets`: Venn and UpSet (+ :mod:`~subnetviz.figures.venn`, the area-proportional layout);
- :mod:`~subnetviz.figures.bigram`: bigram-subnetwork fidelity, ablations, residual stream;
- :mod:`~subnetviz.figures.continual`: supermask continual learning.

Every builder of the first six is also available here as ``subnetviz.figures.NAME``.
"""

from subnetviz.figures.colors import colors_after, module_colors
from subnetviz.figures.matrix import delta_image, matrix_image, row_col_ratios
from subnetviz.figures.overlap import chance_consensus, consensus_bars, overlap_layer_heatmap, pairwise_matrix
from subnetviz.figures.series import accuracy_matrix, module_series, series_lines, split_bar, training_curves
from subnetviz.figures.sets import upset, venn2, venn3
from subnetviz.figures.spectra import (
    measure_range,
    model_spectra,
    rank_heatmap,
    rank_measure_heatmap,
    rank_thresholds,
    spectrum_curves,
)
from subnetviz.figures.style import (
    DIVERGING,
    MODULE_ORDER,
    PALETTE,
    PLOTLY_CONFIG,
    SEQUENTIAL,
    FigureDataError,
    color_map,
    compact_labels,
    format_mean_sd,
    format_number,
    no_data_figure,
    plain_label,
    with_subtitles,
)
from subnetviz.figures.updates import (
    module_bars,
    overall_bars,
    shared_range,
    sparsity_heatmap,
    tolerance_sweep,
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
    "colors_after",
    "compact_labels",
    "consensus_bars",
    "delta_image",
    "format_mean_sd",
    "format_number",
    "matrix_image",
    "measure_range",
    "model_spectra",
    "module_bars",
    "module_colors",
    "module_series",
    "no_data_figure",
    "plain_label",
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
    "with_subtitles",
]
