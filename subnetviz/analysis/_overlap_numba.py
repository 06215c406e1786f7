"""The numba histograms behind :mod:`subnetviz.analysis.overlap_counts` (imported only through it:
this module needs numba at import time): composite membership codes counted straight into int64
bins, no histogram allocated per block.
"""

from __future__ import annotations

import numpy as np

from subnetviz.analysis._bits_numba import jit


@jit
def hist8(codes, out):  # pragma: no cover (compiled)
    """``out[k % 4, codes[k]] += 1`` (out: (4, 256) int64): four sub-histograms, so runs of one code
    (sparse masks: mostly code 0) do not wait on the previous increment of the same bin."""
    n = codes.size
    m = n - n % 4
    for i in range(0, m, 4):
        out[0, codes[i]] += 1
        out[1, codes[i + 1]] += 1
        out[2, codes[i + 2]] += 1
        out[3, codes[i + 3]] += 1
    for i in range(m, n):
        out[0, codes[i]] += 1


@jit
def hist16(lo, hi, out):  # pragma: no cover (compiled)
    """``out[lo[k] | hi[k] << 8] += 1`` (out: (65536,) int64): the 16-bit code of each parameter from
    its two byte planes (masks 0-7 and 8-15), without interleaving them first."""
    for i in range(lo.size):
        out[np.int64(lo[i]) | (np.int64(hi[i]) << 8)] += 1
