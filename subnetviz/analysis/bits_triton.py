"""The update pass of one float tensor pair on a GPU in one Triton kernel (one read of both tensors).

:func:`pair_pass` gives what :func:`~subnetviz.analysis.sparsity._fused_chunk_stats` gives for a whole
tensor, viewed as 2-D (rows, cols) integer views of 16- or 32-bit floats with ``cols`` a multiple of 8:
the largest |Δ|, the counts vector ``[#changed, #(|Δ| > tol) per tolerance, η-rule count, #(ULP > edge)
per edge]``, row and column counts, and the mask (bitwise, or |Δ| > ``mask_tolerance``) bit-packed in
``np.packbits`` order, each byte written by the tile that holds its 8 entries. Each program keeps every
intermediate in registers, writes its counts to its own slot (summed by one small reduction afterwards:
no contended atomics) and adds its row/column sums atomically (one address per row or column). The
accumulating kernel (``_pair_kernel_rows``, the default: measured 19-20 % of an H200's copy bandwidth
against 13 % for the other) takes :data:`ITERATIONS` row tiles per program and reduces once at the end,
its counts kept per entry in 8-bit fields (at most 6 tolerances); the one-tile kernel (``_pair_kernel``)
takes any number of tolerances.

Finiteness: the largest |Δ| is the maximum of the bit patterns of |Δ| (non-negative floats order as
their bits; NaN's patterns lie above Inf's), so a NaN or Inf anywhere in either tensor (NaN − NaN and
Inf − Inf are NaN) makes it non-finite, as torch's maximum does, and the caller refuses it.

Without Triton (a CPU-only install) :data:`AVAILABLE` is False and nothing here is used; Triton is imported
only when a GPU pass runs (:mod:`~subnetviz.analysis.bits_triton_kernel`). Tests run the
kernel on the CPU with Triton's interpreter (``TRITON_INTERPRET=1``) where Triton is installed.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from subnetviz.analysis.bits import ULP_EDGES

AVAILABLE = importlib.util.find_spec("triton") is not None
BLOCK_ROWS, BLOCK_COLS, NUM_WARPS = 16, 256, 4
# Row tiles per program of the accumulating kernel (0: the one-tile kernel); its tile and warps.
ITERATIONS, LOOP_ROWS, LOOP_COLS, LOOP_WARPS = 16, 4, 256, 4
_GRID_Y = 65535  # CUDA's limit on a launch grid's second dimension
_CONSTANTS: dict = {}  # (device, dtype, values) -> the thresholds / ULP edges as a device tensor


def fits(xv: torch.Tensor) -> bool:
    """Whether :func:`pair_pass` takes the 2-D integer view ``xv``: Triton present, a GPU tensor (or the
    interpreter), 16- or 32-bit, at least 8 columns and a multiple of 8 (each mask byte in one row)."""
    if not AVAILABLE or xv.dim() != 2 or xv.element_size() not in (2, 4):
        return False
    rows, cols = xv.shape
    # a launch grid's second dimension holds at most 65535 column tiles (a (1, 20M) view would not launch)
    narrow = -(-cols // min(BLOCK_COLS, LOOP_COLS)) <= _GRID_Y
    return rows > 0 and cols >= 8 and cols % 8 == 0 and narrow and (xv.is_cuda or _interpreting())


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _constant(dev: torch.device, dtype: torch.dtype, values: tuple) -> torch.Tensor:
    """``values`` as a tensor on ``dev``, made once (a fresh one per tensor pair would be a host->device
    copy, and a wait, per call)."""
    key = (dev, dtype, values)
    t = _CONSTANTS.get(key)
    if t is None:
        if len(_CONSTANTS) > 256:
            _CONSTANTS.clear()
        t = _CONSTANTS[key] = torch.tensor(values, dtype=dtype, device=dev)
    return t


_FLOAT = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def pair_pass(
    xv: torch.Tensor,
    yv: torch.Tensor,
    dtype: torch.dtype,
    tolerances: tuple[float, ...],
    eta: float,
    rel_is_nonzero: bool,
    mask_tolerance: float | None,
    row_col: bool,
    keep_mask: bool,
):
    """``(largest |Δ|, counts, rows, cols, bits)`` of the pair of 2-D integer views (see the module
    docstring; ``rows``/``cols`` int32 or None, ``bits`` uint8 of ceil(numel / 8) bytes or None), all on
    the views' device, with no synchronisation."""
    import triton
    import triton.language as tl

    from subnetviz.analysis.bits_triton_kernel import _pair_kernel, _pair_kernel_rows

    rows, cols = xv.shape
    dev = xv.device
    wide32 = xv.element_size() == 2
    ctype = torch.float32 if wide32 else torch.float64
    nt, ne = len(tolerances), len(ULP_EDGES)
    k = nt + ne + 3  # changed, tolerances, η rule, edges, largest |Δ|'s bits
    # the accumulating kernel keeps 8-bit fields: tolerances + η rule and (0, *edges) each in 8 fields
    loop = 0 < ITERATIONS <= 255 and nt + 2 <= 8 and ne + 2 <= 8
    br, bc, warps = (LOOP_ROWS, LOOP_COLS, LOOP_WARPS) if loop else (BLOCK_ROWS, BLOCK_COLS, NUM_WARPS)
    grid = (triton.cdiv(rows, br * (ITERATIONS if loop else 1)), triton.cdiv(cols, bc))
    part = torch.empty(grid[0] * grid[1], k, dtype=torch.int64, device=dev)
    # the thresholds in the compared type, as torch rounds a Python float against a tensor of it
    mask_tol = mask_tolerance if mask_tolerance is not None else 0.0
    tol = _constant(dev, ctype, (*tolerances, eta, mask_tol))
    edges = _constant(dev, torch.int32 if wide32 else torch.int64, ULP_EDGES)
    rc = torch.zeros(rows + cols if row_col else 1, dtype=torch.int32, device=dev)
    bits = torch.empty((rows * cols) // 8 if keep_mask else 1, dtype=torch.uint8, device=dev)
    kernel = _pair_kernel_rows if loop else _pair_kernel
    extra = {"ITER": ITERATIONS} if loop else {}
    kernel[grid](
        xv,
        yv,
        rows,
        cols,
        tol,
        edges,
        part,
        rc,
        rc[rows:] if row_col else rc,
        bits,
        NT=nt,
        NE=ne,
        K=k,
        FLOAT=getattr(tl, _FLOAT[dtype]),
        WIDE=tl.int32 if wide32 else tl.int64,
        CTYPE=tl.float32 if wide32 else tl.float64,
        BITS=tl.int32 if wide32 else tl.int64,
        MAGNITUDE=(1 << (8 * xv.element_size() - 1)) - 1,
        REL_NONZERO=bool(rel_is_nonzero),
        KEEP=0 if not keep_mask else (1 if mask_tolerance is None else 2),
        ROW_COL=bool(row_col),
        BR=br,
        BC=bc,
        num_warps=warps,
        **extra,
    )
    counts = part[:, : k - 1].sum(0)
    top = part[:, k - 1].max()
    largest = (top.to(torch.int32) if wide32 else top).view(ctype)
    return (
        largest,
        counts,
        rc[:rows] if row_col else None,
        rc[rows:] if row_col else None,
        bits if keep_mask else None,
    )
