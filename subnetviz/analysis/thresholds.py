"""The comparison's default thresholds and ULP bins: plain numbers, importable without torch.

:mod:`~subnetviz.analysis.bits` re-exports them next to the bit comparison that uses them; a cache key
or a saved table that only needs the numbers (the Training page's comparison, the CLI's option
defaults) reads them here without importing torch.
"""

DEFAULT_TOLERANCES = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4)
PAPER_TOLERANCE = 1e-5
DEFAULT_ETA = 1e-3
# ULP-distance bins: upper edges (inclusive) and labels; the last bin is open. Saved analyses store
# one column per label (tensors.csv ``ulp_<label>``), so these are part of the on-disk format.
ULP_EDGES = (1, 2, 4, 8, 16, 256)
ULP_LABELS = ("1", "2", "3-4", "5-8", "9-16", "17-256", ">256")
ULP_LABELS_WITH_ZERO = ("0", *ULP_LABELS)  # "0" = bitwise-identical entries
