"""Update sparsity: which parameters did finetuning change, in one streaming pass per tensor.

For each aligned tensor pair (base ``a``, finetuned ``b``) the pass reads both tensors once, in
their stored dtype (or after casting both to a chosen precision), and computes:

- ``changed``: entries whose bit patterns differ (exact equality on the integer view; the
  paper's η-relative rule at η < 2^-9 is equivalent for bf16, see the brief);
- ``changed@tol`` for each absolute tolerance of the sweep (|Δ| > tol), ``changed_rel`` under
  |Δ| > η·max(|a|, |b|), a histogram of distances in units in the last place (ULPs) of the
  compared dtype, the largest |Δ|, and per-row / per-column update counts.

Everything except the bitwise comparison and the row/column sums is computed on the *changed*
entries only (gathered once), so the pass costs little more than reading the two files. Big
tensors are processed in row chunks so memory stays bounded by a few times the largest tensor.

The comparison itself (integer views, ULP distance and bins, tolerance defaults, the finite check)
is :mod:`~subnetviz.analysis.bits`; this module runs it over a tensor pair and aggregates.

Naming note: *density* = changed / numel; *sparsity* = 1 − density (the paper's definition).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from subnetviz.analysis.bits import (
    DEFAULT_ETA,
    DEFAULT_TOLERANCES,
    INT_VIEW,
    PAPER_TOLERANCE,
    ULP_EDGES,
    ULP_LABELS,
    counts_above,
    ulp_bins,
    ulp_distance_bits,
)
from subnetviz.analysis.bits import check_finite as check_finite  # re-exported: callers import it from here
from subnetviz.errors import ConfigError, NonFiniteError

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Rows per chunk: ~1M entries on CPU keeps the changed entries' temporaries near L2 (measured
# ~15 % faster than 8M); a GPU wants big launches and few synchronisations.
CHUNK_ELEMENTS, GPU_CHUNK_ELEMENTS = 1 << 20, 1 << 26
_NUMPY_ON_CPU = True  # NumPy kernels for index/byte-sum steps on CPU (tests switch it off to check the torch path)
_COMPILE_ON_CUDA = True  # torch.compile the fused chunk kernel on CUDA (off: eager, same numbers)
# Above this share of changed entries a CPU chunk's statistics run on the whole chunk rather than
# on gathered changed entries (measured crossover on one thread: gathering costs ~1 ns/entry).
DENSE_FRACTION = 0.5


@dataclass(frozen=True)
class SparsityOptions:
    """How to compare. ``precision``: None = each tensor's stored dtype; 'bf16'/'fp16'/'fp32' = cast first."""

    tolerances: tuple[float, ...] = DEFAULT_TOLERANCES
    eta: float = DEFAULT_ETA
    precision: str | None = None
    mask_tolerance: float | None = None  # None = the exact (bitwise) update mask
    keep_masks: bool = True
    row_col: bool = True

    def __post_init__(self):
        object.__setattr__(self, "tolerances", tuple(sorted({float(t) for t in self.tolerances})))
        if any((not math.isfinite(t)) or t < 0 for t in self.tolerances):
            raise ConfigError(f"tolerances must be finite and >= 0, got {self.tolerances}.")
        if not (0 < self.eta < 1):
            raise ConfigError(f"eta must lie in (0, 1), got {self.eta}.")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {sorted(PRECISIONS)} or None, got {self.precision!r}.")
        if self.mask_tolerance is not None and self.mask_tolerance not in self.tolerances:
            object.__setattr__(self, "tolerances", tuple(sorted({*self.tolerances, self.mask_tolerance})))


@dataclass
class PairStats:
    """Counts for one tensor pair. ``changed_tol[i]`` goes with ``tolerances[i]``."""

    numel: int
    dtype: str
    changed: int
    changed_tol: tuple[int, ...]
    changed_rel: int
    ulp_hist: tuple[int, ...]
    max_abs_delta: float
    row_counts: np.ndarray | None = None  # (rows,) changed entries per row of the 2-D view
    col_counts: np.ndarray | None = None  # (cols,)
    mask: torch.Tensor | None = None  # bool, the tensor's shape (exact, or at mask_tolerance)


def _flat_changed(ne: torch.Tensor) -> torch.Tensor:
    """Flat indices of the True entries of a contiguous bool tensor (int64, ascending)."""
    if ne.device.type == "cpu" and _NUMPY_ON_CPU:
        # NumPy's flatnonzero is ~30x faster than torch.nonzero / boolean indexing on one CPU thread.
        return torch.from_numpy(np.flatnonzero(ne.numpy()))
    return ne.reshape(-1).nonzero().squeeze(1)


def _row_col_counts(ne: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Changed entries per row and per column of a 2-D bool chunk (int32 accumulators)."""
    if ne.device.type == "cpu" and _NUMPY_ON_CPU:  # NumPy's byte sums are ~2x torch's on one thread
        u8 = ne.numpy().view(np.uint8)
        return torch.from_numpy(u8.sum(1, dtype=np.int32)), torch.from_numpy(u8.sum(0, dtype=np.int32))
    return ne.sum(1, dtype=torch.int32), ne.sum(0, dtype=torch.int32)


def _changed_stats(xi, yi, dtype: torch.dtype, ctype: torch.dtype, options: SparsityOptions, rel_is_nonzero: bool):
    """Statistics of integer views ``xi``, ``yi`` (torch, any one shape; gathered changed entries or
    a whole chunk: an unchanged pair has Δ = 0 and ULP distance 0, which no count includes).

    Returns (largest |Δ|, ``[#(|Δ| > tol)]``, η-rule count, ``[#(ULP > edge)]``, |Δ| array). On CPU
    the arithmetic runs in NumPy (its compare-and-count kernels are ~4x torch's on one thread).
    """
    xs, ys = xi.view(dtype).to(ctype), yi.view(dtype).to(ctype)
    xp = np if xi.device.type == "cpu" and _NUMPY_ON_CPU else torch
    if xp is np:
        xi, yi, xs, ys = xi.numpy(), yi.numpy(), xs.numpy(), ys.numpy()
        d = np.subtract(ys, xs)
        np.abs(d, out=d)
    else:
        d = (ys - xs).abs()
    # |Δ| <= tol counts as unchanged; d is 0 for -0 vs +0, which no tolerance counts.
    tol = counts_above(d, options.tolerances, xp)
    dist = ulp_distance_bits(xi, yi, xp)
    if rel_is_nonzero:  # |Δ| != 0 <=> ULP distance != 0 for finite values: no pass over |Δ|
        above = counts_above(dist, (0, *ULP_EDGES), xp)
        return float(d.max()), tol, above[0], above[1:], d
    rel = int(xp.count_nonzero(d > options.eta * xp.maximum(xp.abs(xs), xp.abs(ys))))
    return float(d.max()), tol, rel, counts_above(dist, ULP_EDGES, xp), d


def _fused_chunk_stats(
    xi,
    yi,
    dtype: torch.dtype,
    ctype: torch.dtype,
    tolerances: tuple[float, ...],
    eta: float,
    rel_is_nonzero: bool,
    mask_tolerance: float | None,
):
    """:func:`_changed_stats` of a whole chunk as branch-free torch ops with no host synchronisation
    (8-, 16- and 32-bit types), so ``torch.compile`` fuses it into one kernel on a GPU.

    Returns 0-d / 1-d tensors: (largest |Δ|, #(|Δ| > tol) per tolerance, η-rule count,
    #(ULP > edge) per edge, the mask-tolerance mask or None). ULP distances are taken in a wider
    integer (int32 for 16-bit types, int64 for 32-bit), so no sign-crossing branch is needed.
    """
    xs, ys = xi.view(dtype).to(ctype), yi.view(dtype).to(ctype)
    d = (ys - xs).abs()
    tol = torch.stack([(d > t).sum(dtype=torch.int64) for t in tolerances]) if tolerances else d.new_zeros(0)
    wide = torch.int32 if xi.element_size() <= 2 else torch.int64
    x, y = xi.to(wide), yi.to(wide)
    magnitude = (1 << (8 * xi.element_size() - 1)) - 1
    mx, my = x & magnitude, y & magnitude
    dist = torch.where((x ^ y) >= 0, (my - mx).abs(), mx + my)
    above = torch.stack([(dist > e).sum(dtype=torch.int64) for e in ULP_EDGES])
    if rel_is_nonzero:
        rel = (dist > 0).sum(dtype=torch.int64)
    else:
        rel = (d > eta * torch.maximum(xs.abs(), ys.abs())).sum(dtype=torch.int64)
    keep = d > mask_tolerance if mask_tolerance is not None else None
    return d.max(), tol, rel, above, keep


_COMPILED: dict[str, Callable] = {}


def _chunk_kernel(device: torch.device) -> Callable:
    """:func:`_fused_chunk_stats`, compiled (``torch.compile``) on CUDA, eager elsewhere.

    Compilation happens on the first call; when it fails (no Triton, an old GPU) the eager
    function is used from then on, with a warning, so the analysis never fails for it.
    """
    if device.type != "cuda" or not _COMPILE_ON_CUDA:
        return _fused_chunk_stats
    if "cuda" not in _COMPILED:
        compiled = torch.compile(_fused_chunk_stats, dynamic=True)

        def run(*args, **kwargs):
            try:
                return compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 (any compiler failure: fall back, never fail the analysis)
                warnings.warn(
                    f"torch.compile of the comparison kernel failed ({type(exc).__name__}: {exc}); running it eagerly.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                _COMPILED["cuda"] = _fused_chunk_stats
                return _fused_chunk_stats(*args, **kwargs)

        _COMPILED["cuda"] = run
    return _COMPILED["cuda"]


def compare_pair(
    a: torch.Tensor, b: torch.Tensor, options: SparsityOptions = SparsityOptions(), *, name: str = "tensor"
) -> PairStats:
    """All update statistics of one tensor pair ``a`` (base) -> ``b`` (finetuned), same shape.

    Shapes: any; 2-D and higher are viewed as (shape[0], rest) for row/column counts.

    One pass per chunk of rows: the bitwise comparison of the integer views, written straight
    into the mask, and its row/column counts (int32 byte sums, NumPy on CPU) give the changed
    count; every other statistic is derived from the changed entries only. On CPU these are
    gathered once (flat indices, NumPy kernels) when few entries changed, and the whole chunk is
    used when most did (an unchanged pair has Δ = 0 and ULP distance 0, so it counts nowhere, and
    the gather would cost more than it saves). On a GPU the chunk's statistics are one fused
    kernel (:func:`_chunk_kernel`) accumulated on the device, synchronised once per tensor.
    """
    if a.shape != b.shape:
        raise ConfigError(f"{name}: shapes differ ({tuple(a.shape)} vs {tuple(b.shape)}).")
    if options.precision is not None:
        dt = PRECISIONS[options.precision]
        a, b = a.to(dt), b.to(dt)
    elif a.dtype != b.dtype:
        a, b = a.to(torch.float32), b.to(torch.float32)
    if a.dtype not in INT_VIEW or a.dtype.itemsize == 1:  # fp8 codes: only after a cast (precision)
        raise ConfigError(f"{name}: dtype {a.dtype} is not a floating-point weight type.")
    a, b = a.contiguous(), b.contiguous()
    itype = INT_VIEW[a.dtype]
    ctype = torch.float64 if a.dtype in (torch.float32, torch.float64) else torch.float32
    a2 = a.reshape(a.shape[0], -1) if a.dim() >= 2 else a.reshape(-1, 1)
    b2 = b.reshape(a2.shape)
    rows, cols = a2.shape
    dev = a.device
    changed = rel = 0
    tol_counts = [0] * len(options.tolerances)
    above_edge = [0] * len(ULP_EDGES)  # #(ULP distance > edge_j)
    max_d = 0.0
    row_counts = torch.zeros(rows, dtype=torch.int64, device=dev) if options.row_col else None
    col_counts = torch.zeros(cols, dtype=torch.int64, device=dev) if options.row_col else None
    mask_tol = options.mask_tolerance
    mask = None
    if options.keep_masks:  # the exact mask is written chunk by chunk by the comparison itself
        mask = (torch.empty if mask_tol is None else torch.zeros)((rows, cols), dtype=torch.bool, device=dev)
    step = max(1, (CHUNK_ELEMENTS if dev.type == "cpu" else GPU_CHUNK_ELEMENTS) // max(cols, 1))
    # For a dtype with p significand bits, two different finite values differ by at least
    # 2^-p of the larger magnitude, so at eta < 2^-p the relative rule is "Δ != 0" (bf16: p = 8).
    rel_is_nonzero = options.eta < torch.finfo(a.dtype).eps / 2  # eps = 2^(1-p)
    numpy_cpu = dev.type == "cpu" and _NUMPY_ON_CPU
    fused = not numpy_cpu and a.dtype.itemsize <= 4  # torch path (a GPU): one kernel per chunk
    kernel = _chunk_kernel(dev) if fused else None
    acc = None  # the fused path's device accumulators: (max, tolerance counts, rel, ULP counts)
    for r0 in range(0, rows, step):
        xb, yb = a2[r0 : r0 + step].view(itype), b2[r0 : r0 + step].view(itype)
        if numpy_cpu:  # NumPy's compare is ~2x torch's on one thread
            out = mask[r0 : r0 + step].numpy() if mask is not None and mask_tol is None else None
            ne = torch.from_numpy(np.not_equal(xb.numpy(), yb.numpy(), out=out))
        elif mask is not None and mask_tol is None:
            ne = torch.ne(xb, yb, out=mask[r0 : r0 + step])
        else:
            ne = xb != yb
        if row_counts is not None:
            r_counts, c_counts = _row_col_counts(ne)
            row_counts[r0 : r0 + step] = r_counts
            col_counts += c_counts
            n = int(r_counts.sum(dtype=torch.int64))  # a few thousand ints, not another pass over ne
        else:
            n = int(torch.count_nonzero(ne))
        if n == 0:
            continue
        changed += n
        if fused:
            out = kernel(xb, yb, a.dtype, ctype, options.tolerances, options.eta, rel_is_nonzero, mask_tol)
            if acc is None:
                acc = out[:4]
            else:
                acc = (torch.maximum(acc[0], out[0]), *(s + o for s, o in zip(acc[1:], out[1:4], strict=True)))
            if out[4] is not None:
                mask[r0 : r0 + step] = out[4]
            continue
        dense = n > DENSE_FRACTION * ne.numel()
        if dense:
            xi, yi = xb, yb
        else:
            idx = _flat_changed(ne)
            xi, yi = xb.reshape(-1).index_select(0, idx), yb.reshape(-1).index_select(0, idx)
        chunk_max, tols, chunk_rel, above, d = _changed_stats(xi, yi, a.dtype, ctype, options, rel_is_nonzero)
        if not math.isfinite(chunk_max):  # NaN if any compared entry is NaN; Inf if any is ±Inf
            raise NonFiniteError(f"{name}: NaN or Inf in the weights (largest |Δ| is {chunk_max}).")
        max_d = max(max_d, chunk_max)
        tol_counts = [s + c for s, c in zip(tol_counts, tols, strict=True)]
        above_edge = [s + c for s, c in zip(above_edge, above, strict=True)]
        rel += chunk_rel
        if mask is not None and mask_tol is not None:
            keep = d > mask_tol
            keep = torch.from_numpy(keep) if isinstance(keep, np.ndarray) else keep
            if dense:
                mask[r0 : r0 + step] = keep
            else:
                mask.view(-1)[r0 * cols + idx[keep]] = True
    if acc is not None:
        max_d = float(acc[0])
        if not math.isfinite(max_d):
            raise NonFiniteError(f"{name}: NaN or Inf in the weights (largest |Δ| is {max_d}).")
        tol_counts, rel, above_edge = acc[1].tolist(), int(acc[2]), acc[3].tolist()
    # bin 0 ("1 ULP") also holds the bit changes at distance 0 (-0 vs +0): every changed entry is binned
    ulp = ulp_bins(changed, above_edge)
    return PairStats(
        numel=a.numel(),
        dtype=str(a.dtype).replace("torch.", ""),
        changed=changed,
        changed_tol=tuple(tol_counts),
        changed_rel=rel,
        ulp_hist=tuple(ulp),
        max_abs_delta=max_d,
        row_counts=row_counts.cpu().numpy() if row_counts is not None else None,
        col_counts=col_counts.cpu().numpy() if col_counts is not None else None,
        mask=mask.reshape(a.shape).cpu() if mask is not None else None,
    )


@dataclass
class SparsityReport:
    """Update statistics of one finetuned model against the base.

    ``tensors``: one row per aligned tensor (columns below). ``masks``: name -> bool update mask.
    ``row_col``: name -> (row_counts, col_counts). ``notes``: alignment and naming notices.
    """

    model: str
    base: str
    options: SparsityOptions
    tensors: pd.DataFrame
    masks: Mapping[str, torch.Tensor] = field(default_factory=dict)  # PackedMasks from analyze_updates
    row_col: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    parts: pd.DataFrame | None = None  # fused QKV split: key, module, numel, changed
    notes: list[str] = field(default_factory=list)
    # Buffers (int/bool tensors, rotary inv_freq, ...) and quantization scales: compared, listed,
    # never counted in the weight sparsity. Columns: key, name, group, layer, module, shape, numel, dtype, changed.
    buffers: pd.DataFrame | None = None

    # --- aggregates ------------------------------------------------------------------------------
    @property
    def numel(self) -> int:
        return int(self.tensors["numel"].sum())

    @property
    def changed(self) -> int:
        return int(self.tensors["changed"].sum())

    @property
    def sparsity(self) -> float:
        """Global exact sparsity, parameter-weighted: 1 − changed / numel."""
        return 1.0 - self.changed / self.numel if self.numel else float("nan")

    def sweep(self) -> pd.DataFrame:
        """Global sparsity per criterion: exact (tolerance 0), each absolute tolerance, and relative η."""
        n = self.numel
        rows = [{"model": self.model, "criterion": "exact", "tolerance": 0.0, "changed": self.changed}]
        for t in self.options.tolerances:
            rows.append(
                {
                    "model": self.model,
                    "criterion": f"|Δ|>{t:g}",
                    "tolerance": t,
                    "changed": int(self.tensors[f"changed@{t:g}"].sum()),
                }
            )
        rows.append(
            {
                "model": self.model,
                "criterion": f"relative η={self.options.eta:g}",
                "tolerance": float("nan"),
                "changed": int(self.tensors["changed_rel"].sum()),
            }
        )
        df = pd.DataFrame(rows)
        df["numel"] = n
        df["density"] = df["changed"] / n
        df["sparsity"] = 1.0 - df["density"]
        return df

    def ulp_histogram(self) -> pd.DataFrame:
        counts = np.array(self.tensors["ulp_hist"].tolist()).sum(0) if len(self.tensors) else np.zeros(len(ULP_LABELS))
        return pd.DataFrame({"model": self.model, "bin": list(ULP_LABELS), "count": counts.astype(np.int64)})

    def by_layer_module(self, criterion: str = "changed") -> pd.DataFrame:
        """Per (layer, module): weighted density (Σchanged/Σnumel) and per-tensor mean density.

        ``criterion`` is a column of :attr:`tensors` (``changed``, ``changed@1e-05``, ``changed_rel``).
        Fused QKV tensors are split into q/k/v when the split is known (exact criterion only).
        """
        t = self.tensors[["key", "layer", "module", "numel", criterion]].rename(columns={criterion: "changed"})
        if criterion == "changed" and self.parts is not None and len(self.parts):
            fused = set(self.parts["key"])
            meta = self.tensors.set_index("key")["layer"]
            p = self.parts.assign(layer=self.parts["key"].map(meta))
            t = pd.concat([t[~t["key"].isin(fused)], p[t.columns]], ignore_index=True)
        t = t.assign(tensor_density=t["changed"] / t["numel"].clip(lower=1))
        g = t.groupby(["layer", "module"], dropna=False, sort=False)
        out = g.agg(
            changed=("changed", "sum"),
            numel=("numel", "sum"),
            tensors=("key", "count"),
            mean_density=("tensor_density", "mean"),
        ).reset_index()
        out["density"] = out["changed"] / out["numel"]
        out["sparsity"] = 1.0 - out["density"]
        out["mean_sparsity"] = 1.0 - out["mean_density"]
        out.insert(0, "model", self.model)
        return out

    def special(self) -> pd.DataFrame:
        """Norms, embeddings and the head, one row per tensor, apart from the layer matrices."""
        t = self.tensors[self.tensors["block"].isin(["norm", "embedding", "head"])]
        return t[["model", "key", "layer", "block", "module", "numel", "changed", "sparsity"]].reset_index(drop=True)

    def special_by_module(self) -> pd.DataFrame:
        """:meth:`special` summed per module kind (all attention norms together, ...): group, changed, numel, sparsity."""
        t = self.special()
        g = (
            t.groupby("module", sort=False)
            .agg(changed=("changed", "sum"), numel=("numel", "sum"), tensors=("key", "count"))
            .reset_index()
        )
        g["sparsity"] = 1.0 - g["changed"] / g["numel"].clip(lower=1)
        return g.rename(columns={"module": "group"}).assign(model=self.model)

    def summary(self) -> dict:
        sw = self.sweep()
        return {
            "model": self.model,
            "base": self.base,
            "numel": self.numel,
            "changed": self.changed,
            "sparsity": self.sparsity,
            "density": 1.0 - self.sparsity,
            "mean_tensor_sparsity": float(self.tensors["sparsity"].mean()) if len(self.tensors) else float("nan"),
            "sweep": {r.criterion: r.sparsity for r in sw.itertuples()},
            "precision": self.options.precision or "stored",
            "notes": self.notes,
        }


def stats_row(model: str, key: str, name: str, info, shape, st: PairStats, options: SparsityOptions) -> dict:
    row = {
        "model": model,
        "key": key,
        "name": name,
        "layer": info.layer,
        "block": info.block,
        "module": info.module,
        "param": info.param,
        "shape": "x".join(str(s) for s in shape),
        "ndim": len(shape),
        "numel": st.numel,
        "dtype": st.dtype,
        "changed": st.changed,
        "sparsity": 1.0 - st.changed / st.numel if st.numel else float("nan"),
        "changed_rel": st.changed_rel,
        "max_abs_delta": st.max_abs_delta,
        "ulp_hist": st.ulp_hist,
    }
    for t, c in zip(options.tolerances, st.changed_tol, strict=True):
        row[f"changed@{t:g}"] = c
    return row


def fused_part_rows(table, name: str, key: str, shape, st: PairStats) -> list[dict]:
    """q/k/v changed counts of a fused QKV tensor from its row/column counts (no extra pass)."""
    if st.row_counts is None or table.family not in ("gpt2", "gpt_neox"):
        return []
    if len(shape) == 2:
        counts = torch.from_numpy(st.col_counts if table.family == "gpt2" else st.row_counts)
        other = shape[0] if table.family == "gpt2" else shape[1]
        parts = table.fused_parts(name, counts if table.family == "gpt2" else counts.reshape(-1, 1))
    else:  # bias: one count per entry = changed or not; row counts hold them
        counts = torch.from_numpy(st.row_counts)
        other = 1
        parts = table.fused_parts(name, counts)
    if not parts:
        return []
    return [
        {"key": key, "module": k, "numel": int(v.numel()) * other, "changed": int(v.sum())} for k, v in parts.items()
    ]


ProgressFn = Callable[[int, int, str], None]


def summarize(reports: Sequence[SparsityReport]) -> pd.DataFrame:
    """One row per finetuned model: exact sparsity, density, the paper's 1e-5 figure, tensors compared."""
    rows = []
    for r in reports:
        s = r.summary()
        rows.append(
            {
                "model": r.model,
                "sparsity": s["sparsity"],
                "density": s["density"],
                f"sparsity@{PAPER_TOLERANCE:g}": s["sweep"].get(f"|Δ|>{PAPER_TOLERANCE:g}", float("nan")),
                "mean_tensor_sparsity": s["mean_tensor_sparsity"],
                "numel": s["numel"],
                "changed": s["changed"],
                "tensors": len(r.tensors),
            }
        )
    return pd.DataFrame(rows)
