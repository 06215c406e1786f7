"""Analyses over checkpoints and masks: pure tensor functions returning typed results.

Each module owns one analysis and returns frozen dataclasses or tidy DataFrames
(``.to_frame()``); nothing here reads files or imports streamlit.
"""

from __future__ import annotations

from subnetviz.lazy import exports

# public name -> defining module, imported on first use (PEP 562): a module of this package that needs
# no torch (thresholds, run_result) is imported without the ones that do.
_EXPORTS = {
    "OverlapReport": "overlap",
    "mask_overlap": "overlap",
    **dict.fromkeys(
        (
            "SingularValues",
            "SpectrumResult",
            "SpectrumTable",
            "normalized_spectral_shift",
            "random_sparse_like",
            "singular_values",
            "update_spectra",
            "update_spectrum",
        ),
        "spectra",
    ),
}

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


__getattr__ = exports(__name__, _EXPORTS)
