"""Analyses over checkpoints and masks: pure tensor functions returning typed results.

Each module owns one analysis and returns frozen dataclasses or tidy DataFrames
(``.to_frame()``); nothing here reads files or imports streamlit.
"""

from subnetviz.analysis.overlap import OverlapReport, mask_overlap
from subnetviz.analysis.spectra import (
    SingularValues,
    SpectrumResult,
    SpectrumTable,
    normalized_spectral_shift,
    random_sparse_like,
    singular_values,
    update_spectra,
    update_spectrum,
)

__all__ = [
    "OverlapReport",
    "SingularValues",
    "SpectrumResult",
    "SpectrumTable",
    "mask_overlap",
    "normalized_spectral_shift",
    "random_sparse_like",
    "singular_values",
    "update_spectra",
    "update_spectrum",
]
