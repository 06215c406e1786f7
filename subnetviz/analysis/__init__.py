"""Analyses over checkpoints and masks: pure tensor functions returning typed results.

Each module owns one analysis and returns frozen dataclasses or tidy DataFrames
(``.to_frame()``); nothing here reads files or imports streamlit.
"""

from __future__ import annotations

import importlib

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


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
