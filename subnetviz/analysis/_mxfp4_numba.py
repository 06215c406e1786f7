"""The MXFP4 dequantisation of :mod:`subnetviz.checkpoints.mxfp4` as one compiled loop (numba; imported only
through :func:`subnetviz.analysis.bits_jit.compiled`). Each code becomes its bfloat16 bit pattern by one
lookup in a (scale, code) table that fits in L1, written straight into the transposed layout transformers
gives: no float32 copy, no separate transpose. The loop runs along each output row (contiguous writes) over
a tile of stored rows whose codes stay in cache: measured 1.2 ns per parameter on gpt-oss-20b's expert
shapes, against 4 ns for the loop along the stored rows and 11 ns for NumPy (one thread)."""

from __future__ import annotations

from subnetviz.analysis._bits_numba import jit

ROWS = 1024  # stored rows per tile (its codes, 1024 × groups × 16 bytes, are read 32 times per block)


@jit
def dequantize(codes, scales, table, out):
    """codes (E, R, G, 16) uint8, scales (E, R, G) uint8, table (256, 16) int16 (bf16 bits of
    FP4(code) · 2^(s − 127)) -> out (E, G·32, R) int16: out[e, 32g + 2k (+1), r] = the low (high) nibble
    of codes[e, r, g, k]."""
    e_n, r_n, g_n, b_n = codes.shape
    for e in range(e_n):
        for r0 in range(0, r_n, ROWS):
            r1 = min(r0 + ROWS, r_n)
            for g in range(g_n):
                c0 = g * 2 * b_n
                for k in range(b_n):
                    lo = out[e, c0 + 2 * k]
                    hi = out[e, c0 + 2 * k + 1]
                    for r in range(r0, r1):
                        byte = codes[e, r, g, k]
                        s = scales[e, r, g]
                        lo[r] = table[s, byte & 15]
                        hi[r] = table[s, byte >> 4]
