"""subnetviz: visual analysis of subnetworks in language models.

The package is a library first: everything here works from a notebook or the CLI without
Streamlit. Only :mod:`subnetviz.ui` imports streamlit.

The public names below are the notebook API (the README's "Python API" shows them at work).
They are imported on first use, so ``import subnetviz`` stays cheap and loads neither torch nor
streamlit:

- checkpoints: :func:`open_checkpoint` -> :class:`Checkpoint` (lazy, one tensor at a time);
- update analysis: :func:`analyze_updates` (:class:`SparsityOptions`, :class:`SpectraOptions`)
  -> :class:`UpdateAnalysis` (``.summary()``, ``.report(label)`` -> :class:`SparsityReport`,
  ``.spectra_table()``, ``.overlap``), saved and reopened with :func:`write_analysis` /
  :func:`read_analysis`;
- other analyses: :func:`checkpoint_series`, :func:`compare_runs`, :func:`update_spectra`;
- masks: :class:`MaskSet`, :func:`load_mask_set`, :func:`save_mask_set`,
  :func:`import_mask` (a torch.save file or a released bigram pickle, read safely),
  :func:`import_bigram_pickle`; overlap of masks: :func:`mask_overlap` -> :class:`OverlapReport`;
- figures: :mod:`subnetviz.figures` (pure Plotly builders: DataFrame in, ``go.Figure`` out);
- errors: :class:`SubnetvizError` (every expected failure); versions: :func:`version_info`.
"""

from __future__ import annotations

import importlib

from subnetviz.version import __version__, version_info

# public name -> module that defines it (a module itself when the name is a subpackage)
_EXPORTS: dict[str, str] = {
    "Checkpoint": "subnetviz.checkpoints",
    "open_checkpoint": "subnetviz.checkpoints",
    "SparsityOptions": "subnetviz.analysis.sparsity",
    "SparsityReport": "subnetviz.analysis.sparsity",
    "SpectraOptions": "subnetviz.analysis.updates",
    "UpdateAnalysis": "subnetviz.analysis.updates",
    "analyze_updates": "subnetviz.analysis.updates",
    "read_analysis": "subnetviz.analysis.updates",
    "write_analysis": "subnetviz.analysis.updates",
    "SeriesResult": "subnetviz.analysis.series",
    "checkpoint_series": "subnetviz.analysis.series",
    "RunComparison": "subnetviz.analysis.runs",
    "compare_runs": "subnetviz.analysis.runs",
    "SpectrumTable": "subnetviz.analysis.spectra",
    "update_spectra": "subnetviz.analysis.spectra",
    "OverlapReport": "subnetviz.analysis.overlap",
    "mask_overlap": "subnetviz.analysis.overlap",
    "MaskSet": "subnetviz.masks",
    "import_bigram_pickle": "subnetviz.masks",
    "import_mask": "subnetviz.masks",
    "load_mask_set": "subnetviz.masks",
    "save_mask_set": "subnetviz.masks",
    "SubnetvizError": "subnetviz.errors",
    "figures": "subnetviz.figures",
}

__all__ = ["__version__", "version_info", *sorted(_EXPORTS)]


def __getattr__(name: str):
    """Import a public name on first use (PEP 562); later lookups find it in the module's globals."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'subnetviz' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if module == f"{__name__}.{name}" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
