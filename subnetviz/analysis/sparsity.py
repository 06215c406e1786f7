"""Update sparsity: which parameters did finetuning change, in one streaming pass per tensor.

For each aligned tensor pair (base ``a``, finetuned ``b``) the pass reads both tensors once, in
their stored dtype (or after casting both to a chosen precision), and computes:

- ``changed``: entries whose bit patterns differ (exact equality on the integer view). A zero whose sign
  flipped (+0 ↔ −0) counts as changed here, where the papers' Δ = 0 (and |Δ| > tol, the η rule) count it
  unchanged; apart from that, the paper's η-relative rule at η < 2^-9 is equivalent for bf16 (see the brief);
- ``changed@tol`` for each absolute tolerance of the sweep (|Δ| > tol), ``changed_rel`` under
  |Δ| > η·max(|a|, |b|), a histogram of distances in units in the last place (ULPs) of the
  compared dtype, the largest |Δ|, and per-row / per-column update counts.

One pass per chunk of rows: the bitwise comparison of the integer views is written straight into
the mask, the row/column counts are integer-only sums of it, and every other statistic is derived
from the changed entries only (:func:`~subnetviz.analysis.bits.changed_stats_numpy`, every step
into a reused buffer), so the pass costs little more than reading the two files. Big tensors are
processed in row chunks so memory stays bounded by a few times the largest tensor.

The comparison itself (integer views, ULP distance and bins, tolerance defaults, the finite check)
is :mod:`~subnetviz.analysis.bits`; this module runs it over a tensor pair and aggregates. The
tables built from the results are :mod:`~subnetviz.analysis.sparsity_report` (re-exported here).

Naming note: *density* = changed / numel; *sparsity* = 1 − density (the paper's definition).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from subnetviz.analysis import bits_jit, bits_triton
from subnetviz.analysis.bits import (
    DEFAULT_ETA,
    DEFAULT_TOLERANCES,
    INT_VIEW,
    ULP_EDGES,
    ULP_LABELS,
    Scratch,
    changed_stats_numpy,
    counts_above,
    int_view,
    ulp_bins,
    ulp_distance_bits,
)
from subnetviz.analysis.bits import check_finite as check_finite  # re-exported: callers import it from here
from subnetviz.analysis.sparsity_report import (  # re-exported: their home before the split
    PRECISIONS,
    PairStats,
    ProgressFn,
    SparsityOptions,
    SparsityReport,
    _tolerance_columns,
    fused_part_rows,
    stats_row,
    summarize,
)
from subnetviz.errors import ConfigError, NonFiniteError

__all__ = [
    "DEFAULT_ETA",
    "DEFAULT_TOLERANCES",
    "PRECISIONS",
    "ULP_LABELS",
    "PairStats",
    "ProgressFn",
    "SparsityOptions",
    "SparsityReport",
    "check_finite",
    "checks_finite",
    "compare_pair",
    "compare_views",
    "fused_part_criteria",
    "fused_part_rows",
    "stats_row",
    "stored_kernels",
    "summarize",
]

# Rows per chunk: ~256K entries on CPU keep the chunk's work buffers (~5 MB) in cache between the
# steps (measured ~15 % faster than 1M on one thread; 32K loses as much to per-step overhead); a
# GPU wants big launches and few synchronisations.
CHUNK_ELEMENTS, GPU_CHUNK_ELEMENTS = 1 << 18, 1 << 26
_NUMPY_ON_CPU = True  # NumPy kernels on CPU (tests switch it off to check the torch path a GPU takes)
_COMPILE_ON_CUDA = True  # torch.compile the fused chunk kernel on CUDA (off: eager, same numbers)
_TRITON_ON_CUDA = True  # the one-kernel Triton pass on CUDA where it applies (off: the torch pass, same numbers)
# Above this share of changed entries a CPU chunk's statistics run on the whole chunk rather than
# on gathered changed entries: the whole-chunk statistics cost ~2.2 ns per entry at any share,
# gathering costs ~0.6 ns per entry of the chunk (flatnonzero and two takes) plus the statistics
# of the gathered ones (measured crossover on one thread: ~33 %).
DENSE_FRACTION = 0.35


def _fused_chunk_stats(
    xi,
    yi,
    dtype: torch.dtype,
    ctype: torch.dtype,
    tolerances: tuple[float, ...],
    eta: float,
    rel_is_nonzero: bool,
    mask_tolerance: float | None,
    row_col: bool = False,
    keep_mask: bool = False,
):
    """Every statistic of a chunk of whole rows (2-D integer views ``xi``, ``yi`` of 8- to 32-bit floats)
    as branch-free torch ops with no host synchronisation, so ``torch.compile`` fuses them into a few
    kernels that each read the chunk once on a GPU (the comparison, its counts and the mask included).

    Returns ``(largest |Δ|, counts, row counts, column counts, mask)``: ``counts`` is one int64 vector
    ``[#changed, #(|Δ| > tol) per tolerance, η-rule count, #(ULP > edge) per edge]`` (so one transfer
    brings them all); row / column counts (int32) only with ``row_col``; the mask (bitwise, or
    |Δ| > ``mask_tolerance``) only with ``keep_mask``. Unchanged entries count nowhere (Δ = 0, ULP
    distance 0), so the statistics of the whole chunk are those of its changed entries; a NaN or Inf
    anywhere in either tensor makes the largest |Δ| non-finite (NaN − NaN is NaN), which the caller
    refuses. ULP distances are taken in a wider integer (int32 for 16-bit types, int64 for 32-bit), so
    no sign-crossing branch is needed.
    """
    ne = xi != yi
    xs, ys = xi.view(dtype).to(ctype), yi.view(dtype).to(ctype)
    d = (ys - xs).abs()
    wide = torch.int32 if xi.element_size() <= 2 else torch.int64
    x, y = xi.to(wide), yi.to(wide)
    magnitude = (1 << (8 * xi.element_size() - 1)) - 1
    mx, my = x & magnitude, y & magnitude
    dist = torch.where((x ^ y) >= 0, (my - mx).abs(), mx + my)
    rel = (dist > 0) if rel_is_nonzero else (d > eta * torch.maximum(xs.abs(), ys.abs()))
    counts = torch.stack(
        [
            ne.sum(dtype=torch.int64),
            *((d > t).sum(dtype=torch.int64) for t in tolerances),
            rel.sum(dtype=torch.int64),
            *((dist > e).sum(dtype=torch.int64) for e in ULP_EDGES),
        ]
    )
    rows = ne.sum(1, dtype=torch.int32) if row_col else None
    cols = ne.sum(0, dtype=torch.int32) if row_col else None
    keep = (ne if mask_tolerance is None else d > mask_tolerance) if keep_mask else None
    return d.max(), counts, rows, cols, keep


def _pack_bits(mask):
    """A bool tensor's entries (row-major) as bits in ``np.packbits`` order, on its own device: the
    mask of a GPU pass comes to the host as one eighth of its bytes."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.reshape(-1, 8) << _bit_shifts(flat.device)).sum(1, dtype=torch.uint8)  # disjoint bits: sum = OR


def _unpack_bits(bits, n: int):
    """The first ``n`` entries packed by :func:`_pack_bits` (or ``np.packbits``), as bool, on their device."""
    return ((bits[:, None] >> _bit_shifts(bits.device)) & 1).reshape(-1)[:n].bool()


def _bit_shifts(device):
    return torch.arange(7, -1, -1, dtype=torch.uint8, device=device)  # np.packbits: the first entry is the top bit


_COMPILED: dict[str, Callable] = {}


def _chunk_kernel(device: torch.device, fn: Callable = _fused_chunk_stats) -> Callable:
    """``fn`` (:func:`_fused_chunk_stats`, :func:`_pack_bits`), compiled (``torch.compile``) on CUDA, eager
    elsewhere.

    Compilation happens on the first call; when it fails (no Triton, an old GPU) the eager
    function is used from then on, with a warning, so the analysis never fails for it.
    """
    if device.type != "cuda" or not _COMPILE_ON_CUDA:
        return fn
    key = fn.__name__
    if key not in _COMPILED:
        compiled = torch.compile(fn, dynamic=True)

        def run(*args, **kwargs):
            try:
                return compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 (any compiler failure: fall back, never fail the analysis)
                warnings.warn(
                    f"torch.compile of the comparison kernel {key} failed ({type(exc).__name__}: {exc}); "
                    "running it eagerly.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                _COMPILED[key] = fn
                return fn(*args, **kwargs)

        _COMPILED[key] = run
    return _COMPILED[key]


@dataclass
class _Pass:
    """The running totals of one tensor pair's pass (host numbers; the fused GPU path keeps its own
    device accumulators in ``device`` and folds them in at the end)."""

    name: str
    tolerances: int
    changed: int = 0
    rel: int = 0
    largest: float = 0.0
    tol: list[int] = field(default_factory=list)
    above: list[int] = field(default_factory=lambda: [0] * len(ULP_EDGES))  # #(ULP distance > edge_j)
    rows: np.ndarray | torch.Tensor | None = None
    cols: np.ndarray | torch.Tensor | None = None
    mask: torch.Tensor | None = None
    bits: torch.Tensor | None = None  # the mask bit-packed on the device (the Triton pass), or None
    device: tuple | None = None
    # bfloat16 is compared in float32: two finite values of opposite sign past ~1.7e38 differ by more than it
    # holds, so an infinite largest |Δ| is looked at again (:func:`exact_largest`) instead of refused at once
    overflow_ok: bool = False
    overflowed: bool = False

    def __post_init__(self):
        self.tol = self.tol or [0] * self.tolerances

    def add(self, largest: float, tol, rel: int, above) -> None:
        if math.isinf(largest) and self.overflow_ok:  # maybe finite bf16 values whose Δ float32 cannot hold
            self.overflowed = True
            return self._add_counts(tol, rel, above)
        if not math.isfinite(largest):  # NaN if any compared entry is NaN; Inf if any is ±Inf
            raise NonFiniteError(f"{self.name}: NaN or Inf in the weights (largest |Δ| is {largest}).")
        self.largest = max(self.largest, largest)
        self._add_counts(tol, rel, above)

    def _add_counts(self, tol, rel: int, above) -> None:
        self.tol = [s + c for s, c in zip(self.tol, tol, strict=True)]
        self.above = [s + c for s, c in zip(self.above, above, strict=True)]
        self.rel += rel

    def add_device(self, largest: torch.Tensor, counts: torch.Tensor) -> None:
        """A fused chunk's largest |Δ| and counts vector (:func:`_fused_chunk_stats`), kept on the device."""
        if self.device is None:
            self.device = (largest, counts)
        else:
            self.device = (torch.maximum(self.device[0], largest), self.device[1] + counts)

    def stats(self, a: torch.Tensor, packed: bool = False) -> PairStats:
        if self.device is not None:  # one transfer per tensor (counts < 2^53 are exact in float64)
            largest, counts = self.device
            vals = torch.cat([largest.reshape(1).double(), counts.double()]).tolist()
            t = self.tolerances
            self.changed += int(vals[1])
            self.add(vals[0], [int(v) for v in vals[2 : 2 + t]], int(vals[2 + t]), [int(v) for v in vals[3 + t :]])
        rows, cols = self.rows, self.cols
        if isinstance(rows, torch.Tensor):  # device counts: one transfer for both
            both = torch.cat([rows, cols]).to(torch.int64).cpu().numpy()
            rows, cols = both[: rows.numel()], both[rows.numel() :]
        # bin 0 ("1 ULP") also holds the bit changes at distance 0 (-0 vs +0): every changed entry is binned
        return PairStats(
            numel=a.numel(),
            dtype=str(a.dtype).replace("torch.", ""),
            changed=self.changed,
            changed_tol=tuple(self.tol),
            changed_rel=self.rel,
            ulp_hist=tuple(ulp_bins(self.changed, self.above)),
            max_abs_delta=self.largest,
            row_counts=rows,
            col_counts=cols,
            mask=self._mask(a) if not packed else None,
            mask_bits=self._bits() if packed else None,
        )

    def _mask(self, a: torch.Tensor) -> torch.Tensor | None:
        if self.bits is not None:  # unpacked on the device, then one transfer
            return _unpack_bits(self.bits, a.numel()).reshape(a.shape).cpu()
        return self.mask.reshape(a.shape).cpu() if self.mask is not None else None

    def _bits(self) -> np.ndarray | None:
        if self.bits is not None:
            return self.bits.cpu().numpy()
        return _pack(self.mask) if self.mask is not None else None


def cast_overflow(x: torch.Tensor, cx: torch.Tensor) -> int:
    """Entries of float ``x`` that its cast ``cx`` (``x.to(dtype)``, a narrower range) holds as ±Inf where ``x``
    held a finite value: beyond the range of ``cx``'s dtype (a bf16 or float32 weight past float16's ±65504).
    0 where ``cx`` holds no Inf (one pass over ``cx``, the count only then)."""
    if not bool(torch.isinf(cx).any()):
        return 0
    return int(torch.count_nonzero(torch.isinf(cx) & ~torch.isinf(x)))


def _comparable(a: torch.Tensor, b: torch.Tensor, options: SparsityOptions, name: str):
    """``a``, ``b`` in the compared dtype, contiguous, as 2-D (shape[0], rest) views (1-D: a column). The
    rest is its product, not -1: a tensor of no rows (shape [0, N]) has no entries from which to infer it."""
    if a.shape != b.shape:
        raise ConfigError(f"{name}: shapes differ ({tuple(a.shape)} vs {tuple(b.shape)}).")
    if options.precision is not None:
        dt = PRECISIONS[options.precision]
        ca, cb = a.to(dt), b.to(dt)
        if dt == torch.float16:  # finite weights beyond fp16's range read as Inf: said as that, not as NaN/Inf
            for side, x, cx in (("base", a, ca), ("finetuned", b, cb)):
                if x.dtype != dt and x.dtype.is_floating_point and (over := cast_overflow(x, cx)):
                    raise ConfigError(
                        f"{name}: {over:,} value(s) of the {side} tensor lie beyond float16's range (±65504) "
                        "once cast; compare at bf16 or fp32 (--precision) instead."
                    )
        a, b = ca, cb
    elif a.dtype != b.dtype:
        a, b = a.to(torch.float32), b.to(torch.float32)
    if a.dtype not in INT_VIEW or a.dtype.itemsize == 1:  # fp8 codes: only after a cast (precision)
        raise ConfigError(f"{name}: dtype {a.dtype} is not a floating-point weight type.")
    a, b = a.contiguous(), b.contiguous()
    a2 = a.reshape(a.shape[0], math.prod(a.shape[1:])) if a.dim() >= 2 else a.reshape(-1, 1)
    return a, a2, b.reshape(a2.shape)


@functools.lru_cache(maxsize=64)
def _rel_is_nonzero(dtype: torch.dtype, eta: float) -> bool:
    """For a dtype with p significand bits, two different finite values differ by at least 2^-p of
    the larger magnitude, so at eta < 2^-p the relative rule is "Δ != 0" (bf16: p = 8)."""
    return eta < torch.finfo(dtype).eps / 2  # eps = 2^(1-p)


def _pack(mask: torch.Tensor) -> np.ndarray:
    """``np.packbits`` of a mask's entries (row-major); a GPU's mask is packed there, so one eighth of
    its bytes comes to the host."""
    if mask.device.type == "cpu":
        return np.packbits(mask.numpy().reshape(-1))
    return _chunk_kernel(mask.device, _pack_bits)(mask).cpu().numpy()


def compare_pair(
    a: torch.Tensor,
    b: torch.Tensor,
    options: SparsityOptions = SparsityOptions(),
    *,
    name: str = "tensor",
    packed: bool = False,
) -> PairStats:
    """All update statistics of one tensor pair ``a`` (base) -> ``b`` (finetuned), same shape.

    Shapes: any; 2-D and higher are viewed as (shape[0], rest) for row/column counts.

    One pass per chunk of rows: the bitwise comparison of the integer views, written straight
    into the mask, and its row/column counts (integer-only sums) give the changed count; every
    other statistic is derived from the changed entries only. On CPU (NumPy kernels, every step
    into a reused buffer) these are gathered once when few entries changed, and the whole chunk
    is used when more did (an unchanged pair has Δ = 0 and ULP distance 0, so it counts nowhere,
    and the gather would cost more than it saves). On a GPU the whole tensor is one Triton kernel
    (:mod:`~subnetviz.analysis.bits_triton`: one read of both tensors) where Triton is present and the
    view fits, else each chunk is one ``torch.compile``d kernel (:func:`_chunk_kernel`); either way the
    results stay on the device until one transfer per tensor.

    ``packed``: the mask comes back bit-packed as ``mask_bits`` (np.packbits order) and ``mask`` is
    None. The compiled CPU pass and the Triton kernel write the bits themselves (no full-size bool mask
    is ever allocated); the other paths pack their mask at the end (on the GPU, there).
    """
    k = _compiled_kernels(a.device.type)
    if k is None or not _as_stored(a, b, options):
        a, a2, b2 = _comparable(a, b, options, name)  # cast, made contiguous, checked
        if k is None or not a.numel():
            return _generic_pass(a, a2, b2, options, name, packed)
        b = b2.reshape(a.shape)
    return _compiled_pass(k, a, b, options, name, packed)


def fused_part_criteria(
    table, name: str, a: torch.Tensor, b: torch.Tensor, options: SparsityOptions
) -> dict[str, dict[str, int]] | None:
    """The counts under every criterion of each part of a fused tensor (GPT-2's ``c_attn``, GPT-NeoX's, Falcon's
    and Phi-3's fused QKV, a gated ``q_proj``, Phi-3's ``gate_up_proj``), split as the naming table splits it
    (:meth:`~subnetviz.checkpoints.naming.NameTable.fused_parts`, as the Overlap page splits masks): part ->
    ``{"numel", "changed", "changed@tol" per tolerance, "changed_rel"}``, each part compared by
    :func:`compare_pair` as the whole pair is (``a``, ``b``: the pair as compared, one shape). The exact counts
    split from the row/column counts (:func:`fused_part_rows`) need no second pass; the tolerances and η do: one
    more pass over the fused tensor. None where the table does not split it (a packed 3-D expert tensor is split
    by :meth:`~subnetviz.checkpoints.naming.NameTable.part_counts`, from counts, not here)."""
    pa, pb = table.fused_parts(name, a), table.fused_parts(name, b)
    if not pa or not pb or list(pa) != list(pb):
        return None
    opts = replace(options, keep_masks=False, row_col=False, mask_tolerance=None)
    out: dict[str, dict[str, int]] = {}
    for part, x in pa.items():
        st = compare_pair(x.contiguous(), pb[part].contiguous(), opts, name=f"{name} ({part})")
        tol = dict(zip(_tolerance_columns(opts.tolerances), st.changed_tol, strict=True))
        out[part] = {"numel": st.numel, "changed": st.changed, **tol, "changed_rel": st.changed_rel}
    return out


def checks_finite(a: torch.Tensor, b: torch.Tensor, options: SparsityOptions) -> bool:
    """Whether :func:`compare_pair` of ``a``, ``b`` refuses NaN / Inf in either tensor itself (the compiled
    pass checks them as it compares, at no extra read), so a caller that reads them need not check them
    first. Otherwise only a NaN / Inf among the changed entries is refused."""
    return _compiled_kernels(a.device.type) is not None and _as_stored(a, b, options)


def _compiled_kernels(device: str):
    """The compiled pass' kernels where it runs on ``device`` (the CPU, numba on), else None."""
    return bits_jit.kernels() if device == "cpu" and _NUMPY_ON_CPU else None


def _stored_fits(dtype_a: torch.dtype, dtype_b: torch.dtype, numel: int, options: SparsityOptions) -> bool:
    """Whether the compiled pass takes a pair stored as ``dtype_a`` -> ``dtype_b`` as it is: one dtype
    (16 bits or wider), not empty, no precision to cast to."""
    return (
        options.precision is None and dtype_a == dtype_b and dtype_a in INT_VIEW and dtype_a.itemsize > 1 and numel > 0
    )


def _as_stored(a: torch.Tensor, b: torch.Tensor, options: SparsityOptions) -> bool:
    """:func:`_stored_fits` for tensors ``a``, ``b``, which must also be contiguous and of one shape."""
    return (
        a.shape == b.shape
        and a.is_contiguous()
        and b.is_contiguous()
        and _stored_fits(a.dtype, b.dtype, a.numel(), options)
    )


def _compiled_pass(k, a: torch.Tensor, b: torch.Tensor, options: SparsityOptions, name: str, packed: bool) -> PairStats:
    """:func:`compare_pair` by the compiled kernels: :func:`compare_views` of the integer views."""
    iv = INT_VIEW[a.dtype]
    return compare_views(k, a.view(iv).numpy(), b.view(iv).numpy(), a.dtype, options, name=name, packed=packed)


def stored_kernels(dtype_a: torch.dtype, dtype_b: torch.dtype, numel: int, options: SparsityOptions, device: str):
    """The compiled pass' kernels when a pair stored as ``dtype_a`` -> ``dtype_b`` (``numel`` entries each) is
    compared on ``device`` as stored by :func:`compare_views` (what :func:`compare_pair` does with such a
    pair, given contiguous tensors), else None. That pass checks both tensors finite as it compares them."""
    return _compiled_kernels(device) if _stored_fits(dtype_a, dtype_b, numel, options) else None


def compare_views(
    k,
    x: np.ndarray,
    y: np.ndarray,
    dtype: torch.dtype,
    options: SparsityOptions = SparsityOptions(),
    *,
    name: str = "tensor",
    packed: bool = False,
) -> PairStats:
    """:func:`compare_pair` of two tensors of float ``dtype`` given as their C-contiguous integer views
    (:data:`~subnetviz.analysis.bits.INT_VIEW`, as NumPy arrays of one shape), by the compiled kernels ``k``
    (:func:`stored_kernels`): one call over the (shape[0], rest) views, the mask bit-packed by the kernel
    when ``packed``. Few Python steps: an update pass makes hundreds of these calls, most of them on small
    tensors, straight from the views of the mapped files (no torch tensor per pair)."""
    shape, n = x.shape, x.size
    rows, cols = (shape[0], n // shape[0]) if len(shape) >= 2 else (n, 1)
    x2, y2 = x.reshape(rows, cols), y.reshape(rows, cols)
    column = cols == 1 and rows > 1  # a 1-D tensor viewed as a column: one row of the kernel
    if column:
        x2, y2 = x2.reshape(1, rows), y2.reshape(1, rows)
    keep = options.keep_masks
    bits = np.empty((n + 7) // 8, np.uint8) if keep and packed else None  # every byte written by the pass
    mask = (
        (np.empty if options.mask_tolerance is None else np.zeros)(x2.shape, np.bool_) if keep and not packed else None
    )
    rc = options.row_col and not column
    row_counts = np.zeros(rows, np.int64) if options.row_col else None
    col_counts = np.zeros(cols, np.int64) if options.row_col else None
    dtype_name = _DTYPE_NAMES[dtype]
    out = bits_jit.pair_pass(
        x2,
        y2,
        dtype_name,
        options.tolerances,
        ULP_EDGES,
        options.eta,
        _rel_is_nonzero(dtype, options.eta),
        mask,
        options.mask_tolerance,
        row_counts if rc else None,
        col_counts if rc else None,
        bits,
        k,
    )
    if out.marked:  # an unchanged entry is NaN / Inf (a changed one makes the largest |Δ| non-finite)
        bad = int(torch.count_nonzero(~torch.isfinite(torch.from_numpy(x).view(dtype))))
        raise NonFiniteError(
            f"{name}: {bad} NaN/Inf value(s) in the first (base) tensor. Analyses need finite weights."
        )
    largest = out.largest
    if out.changed and math.isinf(largest) and dtype == torch.bfloat16:  # Δ past float32 (see _Pass.overflow_ok)
        largest = exact_largest(*(torch.from_numpy(v).view(dtype) for v in (x2, y2)), name)
    elif out.changed and not math.isfinite(largest):  # NaN if any compared entry is NaN; Inf if any is ±Inf
        raise NonFiniteError(f"{name}: NaN or Inf in the weights (largest |Δ| is {largest}).")
    if column and options.row_col:
        row_counts[:] = np.not_equal(x2, y2).reshape(-1)
        col_counts[0] = out.changed
    return PairStats(
        numel=n,
        dtype=dtype_name,
        changed=out.changed,
        changed_tol=tuple(out.tol),
        changed_rel=out.rel,
        ulp_hist=tuple(ulp_bins(out.changed, out.above)),
        max_abs_delta=largest,
        row_counts=row_counts,
        col_counts=col_counts,
        mask=torch.from_numpy(mask).reshape(shape) if mask is not None else None,
        mask_bits=bits,
    )


_DTYPE_NAMES = {t: str(t)[6:] for t in INT_VIEW}  # torch.bfloat16 -> 'bfloat16'


def _generic_pass(a, a2, b2, options: SparsityOptions, name: str, packed: bool) -> PairStats:
    """:func:`compare_pair` by the NumPy kernels on CPU (no numba, or ``SUBNETVIZ_JIT=0``), by torch on
    other devices (and, fused and compiled, on CUDA)."""
    acc = _Pass(name, len(options.tolerances), overflow_ok=a.dtype == torch.bfloat16)
    if a.device.type == "cpu" and _NUMPY_ON_CPU:
        _keep_mask(acc, a2, options)
        _numpy_pass(int_view(a2).numpy(), int_view(b2).numpy(), a.dtype, options, acc)
    else:
        _torch_pass(int_view(a2), int_view(b2), a.dtype, options, acc)
    st = acc.stats(a, packed)
    if acc.overflowed:
        st = replace(st, max_abs_delta=exact_largest(a2, b2, name))
    return st


def exact_largest(a: torch.Tensor, b: torch.Tensor, name: str) -> float:
    """The largest |b - a| taken in float64, a block of rows at a time, for a pair whose |Δ| overflowed float32
    (bfloat16 values of opposite sign past ~1.7e38: finite, and their Δ too, in float64); a NaN or Inf in
    either tensor is refused as the pass refuses it."""
    a2 = a.reshape(a.shape[0], -1) if a.dim() >= 2 else a.reshape(-1, 1)
    b2 = b.reshape(a2.shape)
    step = max(1, CHUNK_ELEMENTS // max(a2.shape[1], 1))
    largest = 0.0
    for r0 in range(0, a2.shape[0], step):
        x, y = a2[r0 : r0 + step].double(), b2[r0 : r0 + step].double()
        bad = int((~torch.isfinite(x)).sum() + (~torch.isfinite(y)).sum())
        if bad:
            raise NonFiniteError(f"{name}: {bad} NaN/Inf value(s) in the weights. Analyses need finite weights.")
        largest = max(largest, float((y - x).abs().max())) if x.numel() else largest
    return largest


def _keep_mask(acc: _Pass, a2: torch.Tensor, options: SparsityOptions) -> None:
    """The full-size bool mask the chunked passes write into (the exact one chunk by chunk by the comparison
    itself), where masks are kept; the Triton kernel writes its bits instead and needs none."""
    if options.keep_masks:
        acc.mask = (torch.empty if options.mask_tolerance is None else torch.zeros)(
            a2.shape, dtype=torch.bool, device=a2.device
        )


def _numpy_pass(x2: np.ndarray, y2: np.ndarray, dtype: torch.dtype, options: SparsityOptions, acc: _Pass) -> None:
    """The CPU pass over 2-D integer views, in chunks of whole rows, into ``acc``."""
    rows, cols = x2.shape
    if options.row_col:
        acc.rows, acc.cols = np.zeros(rows, np.int64), np.zeros(cols, np.int64)
    mask = acc.mask.numpy() if acc.mask is not None else None
    exact_mask = mask is not None and options.mask_tolerance is None
    scratch = Scratch()
    rel_is_nonzero = _rel_is_nonzero(dtype, options.eta)
    step = max(1, CHUNK_ELEMENTS // max(cols, 1))
    for r0 in range(0, rows, step):
        x, y = x2[r0 : r0 + step], y2[r0 : r0 + step]
        out = mask[r0 : r0 + step] if exact_mask else scratch.get("ne", np.bool_, x.size).reshape(x.shape)
        ne = np.not_equal(x, y, out=out)
        n = _count_rows(ne, acc, r0)
        if n == 0:
            continue
        acc.changed += n
        idx = None if n > DENSE_FRACTION * ne.size else np.flatnonzero(ne)
        xi, yi = x.reshape(-1), y.reshape(-1)
        if idx is not None:  # gathered once into reused buffers
            xi = np.take(xi, idx, out=scratch.get("gx", xi.dtype, idx.size))
            yi = np.take(yi, idx, out=scratch.get("gy", yi.dtype, idx.size))
        *stats, d = changed_stats_numpy(xi, yi, n, dtype, options.tolerances, options.eta, rel_is_nonzero, scratch)
        acc.add(*stats)
        if mask is not None and not exact_mask:  # the mask at a tolerance: |Δ| > mask_tolerance
            flat = mask[r0 : r0 + step].reshape(-1)
            if idx is None:
                np.greater(d, options.mask_tolerance, out=flat)
            else:
                flat[idx[d > options.mask_tolerance]] = True


def _count_rows(ne: np.ndarray, acc: _Pass, r0: int) -> int:
    """Changed entries of a 2-D bool chunk; with row/column counts on, those are taken (integer-only:
    popcounts of 8-byte words per row, uint8 sums of at most 255 rows per column) and summed."""
    if acc.rows is None:
        return int(np.count_nonzero(ne))
    r, c = ne.shape
    u8 = ne.view(np.uint8)
    if c == 1:
        row = u8[:, 0]
    elif c % 8 == 0:  # each True byte of a word is one set bit
        row = np.bitwise_count(ne.view(np.uint64)).sum(1, dtype=np.int32)
    else:  # torch's byte row sums are ~2.5x NumPy's
        row = torch.from_numpy(ne).sum(1, dtype=torch.int32).numpy()
    acc.rows[r0 : r0 + r] = row
    full = r - r % 255  # a uint8 sum of 255 rows of 0/1 cannot overflow
    if full:
        acc.cols += u8[:full].reshape(-1, 255, c).sum(1, dtype=np.uint8).sum(0, dtype=np.int64)
    if full < r:
        acc.cols += u8[full:].sum(0, dtype=np.uint8)
    return int(acc.rows[r0 : r0 + r].sum())


def _torch_pass(xv: torch.Tensor, yv: torch.Tensor, dtype: torch.dtype, options: SparsityOptions, acc: _Pass) -> None:
    """The torch pass (a GPU, or the CPU with NumPy off) over 2-D integer views, into ``acc``.

    Where the Triton kernel applies (:func:`_triton_pass`), the whole tensor is that one kernel. Otherwise
    16- and 32-bit types: one fused kernel per chunk (:func:`_fused_chunk_stats`: the comparison, every
    count, the row/column counts and the mask), accumulated on the device with no synchronisation until
    :meth:`_Pass.stats`. float64: the changed entries gathered and their statistics taken in torch."""
    rows, cols = xv.shape
    dev = xv.device
    rel_is_nonzero = _rel_is_nonzero(dtype, options.eta)
    out = _triton_pass(xv, yv, dtype, options, rel_is_nonzero, options.keep_masks) if xv.numel() else None
    if out is not None:  # the whole tensor in one kernel, one read of both (no chunks: no temporaries)
        largest, counts, acc.rows, acc.cols, acc.bits = out
        acc.add_device(largest, counts)
        return
    if options.row_col:
        acc.rows = torch.zeros(rows, dtype=torch.int64, device=dev)
        acc.cols = torch.zeros(cols, dtype=torch.int64, device=dev)
    _keep_mask(acc, xv, options)
    if not xv.numel():
        return
    exact_mask = acc.mask is not None and options.mask_tolerance is None
    ctype = torch.float64 if xv.element_size() >= 4 else torch.float32
    step = max(1, (CHUNK_ELEMENTS if dev.type == "cpu" else GPU_CHUNK_ELEMENTS) // max(cols, 1))
    if xv.element_size() <= 4:
        kernel = _chunk_kernel(dev)
        keep = acc.mask is not None
        for r0 in range(0, rows, step):
            largest, counts, r, c, m = kernel(
                xv[r0 : r0 + step],
                yv[r0 : r0 + step],
                dtype,
                ctype,
                options.tolerances,
                options.eta,
                rel_is_nonzero,
                options.mask_tolerance,
                options.row_col,
                keep,
            )
            acc.add_device(largest, counts)
            if r is not None:
                acc.rows[r0 : r0 + step] = r
                acc.cols += c
            if m is not None:
                if step >= rows:  # one chunk: its mask is the tensor's (no copy)
                    acc.mask = m
                else:
                    acc.mask[r0 : r0 + step] = m
        return
    for r0 in range(0, rows, step):
        xb, yb = xv[r0 : r0 + step], yv[r0 : r0 + step]
        ne = torch.ne(xb, yb, out=acc.mask[r0 : r0 + step]) if exact_mask else xb != yb
        if acc.rows is not None:
            acc.rows[r0 : r0 + step] = ne.sum(1, dtype=torch.int32)
            acc.cols += ne.sum(0, dtype=torch.int32)
            n = int(acc.rows[r0 : r0 + step].sum())  # a few thousand ints, not another pass over ne
        else:
            n = int(torch.count_nonzero(ne))
        if n == 0:
            continue
        acc.changed += n
        idx = ne.reshape(-1).nonzero().squeeze(1)
        xi, yi = xb.reshape(-1).index_select(0, idx), yb.reshape(-1).index_select(0, idx)
        *stats, d = _changed_stats(xi, yi, dtype, ctype, options, rel_is_nonzero)
        acc.add(*stats)
        if acc.mask is not None and not exact_mask:
            acc.mask.view(-1)[r0 * cols + idx[d > options.mask_tolerance]] = True


def _triton_pass(xv, yv, dtype: torch.dtype, options: SparsityOptions, rel_is_nonzero: bool, keep: bool):
    """:func:`~subnetviz.analysis.bits_triton.pair_pass` where it applies (Triton, a GPU, a fitting view),
    else None. A kernel that fails to build (an old GPU, no compiler) warns once and the torch path runs
    from then on, so the analysis never fails for it."""
    global _TRITON_ON_CUDA
    if not _TRITON_ON_CUDA or not bits_triton.fits(xv):  # fits: a GPU tensor (or Triton's interpreter)
        return None
    try:
        return bits_triton.pair_pass(
            xv,
            yv,
            dtype,
            options.tolerances,
            options.eta,
            rel_is_nonzero,
            options.mask_tolerance,
            options.row_col,
            keep,
        )
    except Exception as exc:  # noqa: BLE001 (any kernel build failure: fall back, never fail the analysis)
        _TRITON_ON_CUDA = False
        warnings.warn(
            f"the Triton comparison kernel failed ({type(exc).__name__}: {exc}); running the torch pass.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def _changed_stats(xi, yi, dtype: torch.dtype, ctype: torch.dtype, options: SparsityOptions, rel_is_nonzero: bool):
    """Statistics of gathered changed entries (torch, 1-D integer views; the float64 path of
    :func:`_torch_pass`): (largest |Δ|, ``[#(|Δ| > tol)]``, η-rule count, ``[#(ULP > edge)]``, |Δ|)."""
    xs, ys = xi.view(dtype).to(ctype), yi.view(dtype).to(ctype)
    d = (ys - xs).abs()
    tol = counts_above(d, options.tolerances, torch)
    dist = ulp_distance_bits(xi, yi, torch)
    if rel_is_nonzero:  # |Δ| != 0 <=> ULP distance != 0 for finite values: no pass over |Δ|
        above = counts_above(dist, (0, *ULP_EDGES), torch)
        return float(d.max()), tol, above[0], above[1:], d
    rel = int(torch.count_nonzero(d > options.eta * torch.maximum(xs.abs(), ys.abs())))
    return float(d.max()), tol, rel, counts_above(dist, ULP_EDGES, torch), d
