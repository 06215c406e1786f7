"""The per-tensor comparison as one compiled loop (numba): every statistic of a pair in one pass.

:func:`pair_pass` computes, over two 2-D integer views of one float dtype (bf16, fp16, fp32, fp64),
in one read of both: the changed count, the exact mask (or the mask at a tolerance), per-row and
per-column counts, the largest |Δ|, the tolerance sweep, the η rule and the ULP counts: the numbers
of the NumPy kernel of :mod:`~subnetviz.analysis.bits` (same compute dtypes: float32 for 16-bit
types, float64 otherwise; the tolerances and η rounded to that dtype as NumPy's scalars are).
:func:`~subnetviz.analysis.sparsity.compare_pair` runs it on CPU (``_compiled_pass``).
:func:`fp8_blocks_pass` does the same for FP8 codes with block scales (the effective comparison of
:mod:`~subnetviz.analysis.quant_codes`), the codes decoded by their fields and dequantised in
registers: no gather, no float32 copy of the tensor.

Each row is taken in segments of :data:`SEG` entries (:mod:`~subnetviz.analysis._bits_numba`): a
branch-free loop (it vectorises) writes |Δ| and the ULP distance of every entry of a segment with a
change into two cache-resident buffers and keeps the segment's largest values and its smallest
changes; the counts above each tolerance and ULP edge are short vector loops over those buffers,
skipped for edges the segment's largest value does not reach and taken from its changed count for
edges its smallest change passes. No branch depends on the data, so the cost per entry is the same
at 5 % and at 90 % changed.

numba is optional: without it (or with ``SUBNETVIZ_JIT=0``) :func:`kernels` returns None and the
callers use the NumPy kernels. Compiled code is cached on disk (``cache=True``): numba's
``__pycache__`` beside the module, ``NUMBA_CACHE_DIR`` when set, else its user cache where the
package folder is read-only; if no location is writable the kernels compile in memory (a warning
says so). The first use on a machine compiles (seconds per dtype); later processes load the cache.
:func:`warm` does either ahead of the first analysis.
"""

from __future__ import annotations

import importlib
import os
import struct
import threading

import numpy as np

from subnetviz.analysis.thresholds import ULP_EDGES

SEG = 2048  # entries per segment (the kernels' buffers: 8-16 KB each, they stay in L1)
_LOCK = threading.Lock()
_STATE: dict = {}


def compiled(module: str):
    """The compiled kernels' module ``subnetviz.analysis.<module>`` (``_bits_numba``, ``_series_numba``,
    ``_overlap_numba``), or None when numba is not installed or ``SUBNETVIZ_JIT=0`` (the callers then
    use their NumPy / torch kernels). Imported once per process; each kernel compiles (or loads from
    the on-disk cache) on its first call for a dtype."""
    if os.environ.get("SUBNETVIZ_JIT", "1") == "0":
        return None
    if module not in _STATE:
        with _LOCK:
            if module not in _STATE:
                try:
                    _STATE[module] = importlib.import_module(f"subnetviz.analysis.{module}")
                except ImportError:
                    _STATE[module] = None
    return _STATE[module]


def kernels():
    """The per-tensor pass' kernels (:mod:`subnetviz.analysis._bits_numba`) or None: :func:`compiled`."""
    return compiled("_bits_numba")


_TABLES: dict[str, np.ndarray] = {}


def _fp16_table() -> np.ndarray:
    """float32 value of each of the 65536 float16 bit patterns (exact: float16 ⊂ float32)."""
    t = _TABLES.get("fp16")
    if t is None:
        t = _TABLES["fp16"] = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    return t


class PairOut:
    """What :func:`pair_pass` found: changed, largest |Δ|, ``[#(|Δ| > tol)]``, η count, ``[#(ULP > edge)]``,
    and ``marked``: whether an unchanged entry (the same bits in both) is NaN / Inf."""

    __slots__ = ("above", "changed", "largest", "marked", "rel", "tol")

    def __init__(self, changed: int, largest: float, tol: list[int], rel: int, above: list[int], marked: bool):
        self.changed, self.largest, self.tol, self.rel, self.above = changed, largest, tol, rel, above
        self.marked = marked


_CONSTANTS: dict[tuple, tuple] = {}


def _constants(width: int, dtype_name: str, tolerances: tuple, edges: tuple, eta=0.0, mask_tol=None) -> tuple:
    """(compute dtype, ULP distance dtype, fp16 table, tolerances, edges, η, mask tolerance) of
    :func:`pair_pass`, the numbers in the compute dtype, built once per dtype and option set (arrays
    the kernel only reads: shared by every call and thread)."""
    key = (width, dtype_name, tolerances, edges, eta, mask_tol)
    got = _CONSTANTS.get(key)
    if got is None:
        ctype = np.float32 if width <= 2 else np.float64
        utype = {2: np.int32, 4: np.uint32, 8: np.uint64}[width]  # the kernels' ULP distance type
        lut = _fp16_table() if dtype_name == "float16" else np.zeros(1, np.float32)
        # left writeable: a read-only array is another numba type (another compiled signature)
        tols, edge_arr = np.asarray(tolerances, dtype=ctype), np.asarray(edges, dtype=utype)
        got = _CONSTANTS[key] = (ctype, utype, lut, tols, edge_arr, ctype(eta), ctype(mask_tol or 0.0))
    return got


def pair_pass(
    x2: np.ndarray,
    y2: np.ndarray,
    dtype_name: str,
    tolerances,
    edges,
    eta: float,
    rel_nonzero: bool,
    mask: np.ndarray | None,
    mask_tolerance: float | None,
    rows: np.ndarray | None,
    cols: np.ndarray | None,
    bits: np.ndarray | None = None,
    k=None,
) -> PairOut:
    """Run the compiled pass over 2-D integer views ``x2`` -> ``y2`` (C-contiguous, one shape) of float
    ``dtype_name`` ('bfloat16', 'float16', 'float32', 'float64'). ``mask`` (bool, x2's shape) receives
    the exact mask, or |Δ| > ``mask_tolerance`` when that is set (entries at or below it are written
    False); ``bits`` (uint8, ceil(size / 8), need not be zeroed: every byte is written) receives that mask
    bit-packed instead (np.packbits order), with no full-size mask written (``mask`` is then None);
    ``rows`` / ``cols`` (int64) receive the changed count per row and are added per column. ``k``:
    :func:`kernels`, where the caller has them (they must be non-None).

    The same pass checks that both tensors are finite (:func:`~subnetviz.analysis._bits_numba.pair`): a
    NaN / Inf on either side makes ``largest`` non-finite or sets ``marked``."""
    k = kernels() if k is None else k
    width = x2.itemsize
    ctype, utype, lut, tols, edge_arr, eta_c, mask_tol_c = _constants(
        width, dtype_name, tuple(tolerances), tuple(edges), eta, mask_tolerance
    )
    if dtype_name == "float16":  # the kernel tells bf16 (int16) from fp16 (uint16) by the view's type
        x2, y2 = x2.view(np.uint16), y2.view(np.uint16)
    out = np.zeros(4 + edge_arr.size + tols.size, np.int64)  # [..., largest |Δ| as bits, marked]
    packed = bits is not None
    mode = 0 if mask is None and not packed else (1 if mask_tolerance is None else 2)
    do_rc = rows is not None
    cols32 = np.zeros(x2.shape[1] if do_rc else 0, np.int32)  # column counts: int32 adds in the loop
    dbuf, ubuf, seg = _scratch(ctype, utype)
    k.pair(
        x2,
        y2,
        lut,
        tols,
        eta_c,
        bool(rel_nonzero),
        mode,
        mask_tol_c,
        seg if packed else (mask.view(np.uint8) if mask is not None else _NO_MASK),
        bits if packed else _NO_BITS,
        do_rc,
        rows if do_rc else _NO_ROWS,
        cols32,
        edge_arr,
        out,
        dbuf,
        ubuf,
    )
    if do_rc:
        cols += cols32
    n_edge, got = edge_arr.size, out.tolist()
    largest = _AS_FLOAT[width <= 2](got[-2])  # the bits of the largest |Δ| in the compute dtype
    return PairOut(
        got[0], largest, got[2 + n_edge : 2 + n_edge + tols.size], got[1], got[2 : n_edge + 2], bool(got[-1])
    )


def _float_of_bits(wide: bool):
    """The float whose IEEE bits (as a non-negative int) are given: float64 when ``wide``, else float32."""
    pack, unpack = struct.Struct("<q" if wide else "<i").pack, struct.Struct("<d" if wide else "<f").unpack
    return lambda v: unpack(pack(v))[0]


_AS_FLOAT = {False: _float_of_bits(True), True: _float_of_bits(False)}  # keyed by width <= 2


# Read-only stand-ins for the kernel's unused array arguments (left writeable: a read-only array is
# another numba type); and per thread, the segment buffers each call reuses (the read-ahead thread and
# the caller may run passes at once).
_NO_MASK, _NO_BITS, _NO_ROWS = np.zeros((1, 1), np.uint8), np.zeros(0, np.uint8), np.zeros(0, np.int64)
_LOCAL = threading.local()


def _scratch(ctype, utype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This thread's segment buffers for :func:`pair_pass`: |Δ| (``ctype``), ULP distance (``utype``) and
    one segment of mask bytes (uint8, 1 × SEG), allocated once per thread and type."""
    key = (ctype, utype)
    cache = getattr(_LOCAL, "bufs", None)
    if cache is None:
        cache = _LOCAL.bufs = {}
    got = cache.get(key)
    if got is None:
        got = cache[key] = (np.empty(SEG, ctype), np.empty(SEG, utype), np.empty((1, SEG), np.uint8))
    return got


def warm(dtype_names=("bfloat16", "float16", "float32", "float64", "fp8", "mxfp4")) -> float:
    """Import numba and load (or compile, the first time on a machine) the kernel for each dtype (``fp8``:
    the FP8 block-scale pass; ``mxfp4``: the dequantisation of gpt-oss's experts) on a tiny pair, so the
    first analysis does not pay for it; returns the seconds taken (0 without numba)."""
    import time

    t0 = time.perf_counter()
    if kernels() is None:
        return 0.0
    for name in dtype_names:
        if name == "fp8":
            from types import SimpleNamespace

            x = np.zeros((1, 2), np.uint8)
            one = np.ones((1, 1), np.float32)
            opts = SimpleNamespace(tolerances=(1e-5,), eta=1e-3)
            fp8_blocks_pass(x, x.copy(), "float8_e4m3fn", one, one, (1, 2), opts, None, None, None)
            kernels().any_marked(x.reshape(-1), np.uint8(0x7F))  # the finite check on FP8 codes
            code_counts(x, x.copy(), True)  # stored 1-byte codes: FP8 / packed 4-bit bytes
            code_counts(x.view(np.int8), x.view(np.int8).copy(), False)  # and bitsandbytes int8
            continue
        if name == "mxfp4":
            table = np.zeros((256, 16), np.int16)
            compiled("_mxfp4_numba").dequantize(
                np.zeros((1, 1, 1, 16), np.uint8), np.zeros((1, 1, 1), np.uint8), table, np.zeros((1, 32, 1), np.int16)
            )
            continue
        itype = {"bfloat16": np.int16, "float16": np.int16, "float32": np.int32, "float64": np.int64}[name]
        x = np.zeros((1, 2), itype)
        pair_pass(x, x.copy(), name, (1e-5,), ULP_EDGES, 1e-3, False, None, None, None, None)
        kernels().any_marked(x.reshape(-1), itype(0))  # the finite check (bits.check_finite)
    return time.perf_counter() - t0


# FP8 formats by their fields: mantissa bits, exponent bias, the first Inf/NaN magnitude, 2^(1 - bias - mantissa bits)
FP8_FORMATS = {"float8_e4m3fn": (3, 7, 0x7F, 2.0**-9), "float8_e5m2": (2, 15, 0x7C, 2.0**-16)}


def fp8_values(codes: np.ndarray, fmt: str) -> np.ndarray:
    """float32 values of FP8 codes (uint8) as the compiled pass decodes them (``fmt``: a key of FP8_FORMATS)."""
    man_bits, bias, special, sub = FP8_FORMATS[fmt]
    out = np.empty(codes.size, np.float32)
    kernels().fp8_values(codes.reshape(-1), np.int32(man_bits), np.int32(bias), np.int32(special), np.float32(sub), out)
    return out


def fp8_blocks_pass(x2, y2, fmt, sa, sb, block, options, mask, rows, cols):
    """FP8 codes ``x2`` -> ``y2`` (uint8 views, R × C, C-contiguous; ``fmt`` 'float8_e4m3fn' or 'float8_e5m2')
    with float32 block scales ``sa`` / ``sb`` (⌈R/b0⌉ × ⌈C/b1⌉), compiled: returns (effective :class:`PairOut`,
    changed codes, #(code steps > edge) per ULP edge) and fills ``mask`` (the effective mask), ``rows`` /
    ``cols`` (its counts) when given. The effective weights are fl(value(code) × scale) in float32,
    compared as two float32 tensors are (:func:`pair_pass`): the numbers of dequantising both sides
    whole and comparing them."""
    k = kernels()
    man_bits, bias, special, sub = FP8_FORMATS[fmt]
    n_cols = x2.shape[1]
    tols = np.asarray(options.tolerances, dtype=np.float64)
    edges = np.asarray(ULP_EDGES, dtype=np.uint32)
    out = np.zeros(3 + edges.size + tols.size, np.int64)
    code_out = np.zeros(1 + edges.size, np.int64)
    do_rc = rows is not None
    cols32 = np.zeros(n_cols if do_rc else SEG, np.int32)  # without counts: scratch the kernel writes
    k.fp8_blocks(
        x2,
        y2,
        (np.int32(man_bits), np.int32(bias), np.int32(special), np.float32(sub)),
        np.ascontiguousarray(sa, dtype=np.float32),
        np.ascontiguousarray(sb, dtype=np.float32),
        int(block[0]),
        int(block[1]),
        tols,
        float(options.eta),
        bool(options.eta < np.finfo(np.float32).eps / 2),  # η below half a float32 ULP: the rule is Δ != 0
        0 if mask is None else 1,
        mask.view(np.uint8) if mask is not None else np.zeros((1, SEG), np.uint8),  # (or scratch)
        do_rc,
        rows if do_rc else np.zeros(0, np.int64),
        cols32,
        edges,
        out,
        code_out,
        (np.empty(SEG, np.float64), np.empty(SEG, np.uint32), np.empty(SEG, np.int32), np.empty(SEG, np.int32))
        + (np.empty(n_cols, np.float32), np.empty(n_cols, np.float32)),  # |Δ|, ULPs, weights' bits, scales
    )
    if do_rc:
        cols += cols32
    n_edge = edges.size
    eff = PairOut(
        int(out[0]),
        float(np.array(out[-1], dtype=np.int64).view(np.float64)),
        out[2 + n_edge : 2 + n_edge + tols.size].tolist(),
        int(out[1]),
        out[2 : 2 + n_edge].tolist(),
        False,  # the codes were checked when read (check_finite_stored)
    )
    return eff, int(code_out[0]), code_out[1:].tolist()


def code_counts(x: np.ndarray, y: np.ndarray, sign_magnitude: bool) -> tuple[int, list[int]]:
    """(changed codes, #(steps > edge) per ULP edge) of two 1-byte code arrays (any shape, contiguous),
    compiled, in one pass and no index arrays: FP8 bytes in sign-magnitude code steps
    (``sign_magnitude``), integer codes (int8 / uint8) by their difference."""
    edges = np.asarray(ULP_EDGES, dtype=np.int32)
    out = np.zeros(1 + edges.size, np.int64)
    kernels().code_counts(x.reshape(-1), y.reshape(-1), bool(sign_magnitude), edges, out, np.empty(SEG, np.int32))
    return int(out[0]), out[1:].tolist()
