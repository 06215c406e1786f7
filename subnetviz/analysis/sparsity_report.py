"""The data of update sparsity: how to compare (:class:`SparsityOptions`), one tensor pair's counts
(:class:`PairStats`), and the tables of an update analysis: :class:`SparsityReport` (one finetuned
model against the base), the rows it is built from (:func:`stats_row`, :func:`fused_part_rows`) and
:func:`summarize`.

The counts come from :func:`subnetviz.analysis.sparsity.compare_pair`; everything here is an exact
integer aggregation of them. Import these names from :mod:`subnetviz.analysis.sparsity`, which
re-exports them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from subnetviz.analysis.bits import DEFAULT_ETA, DEFAULT_TOLERANCES, PAPER_TOLERANCE, ULP_LABELS
from subnetviz.errors import ConfigError

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


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
        if self.mask_tolerance is not None and not (math.isfinite(self.mask_tolerance) and self.mask_tolerance >= 0):
            # NaN saved empty masks, a negative one marked unchanged entries as updated (|Δ| = 0 > −1)
            raise ConfigError(f"mask tolerance must be finite and >= 0, got {self.mask_tolerance}.")
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
    mask_bits: np.ndarray | None = None  # that mask bit-packed (np.packbits order), instead (packed=True)


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
        """Per (layer, module): weighted density (Σchanged/Σnumel), per-tensor mean density, and ``mtp``
        (the layer is a multi-token-prediction module's).

        ``criterion`` is a column of :attr:`tensors` (``changed``, ``changed@1e-05``, ``changed_rel``).
        Fused tensors (QKV, gate/up) are split into their parts where the split is known, under that criterion:
        :attr:`parts` holds each part's count under every criterion, or under the exact one only (packed 3-D
        experts, quantized forms: :meth:`split_exact_only`), and such a tensor is then shown whole.
        """
        t = self.tensors[["key", "layer", "module", "numel", criterion]].rename(columns={criterion: "changed"})
        t["mtp"] = self.tensors["block"].eq("mtp") if "block" in self.tensors else False
        if self.parts is not None and len(self.parts) and criterion in self.parts.columns:
            p = self.parts[~self.parts["key"].isin(self.split_exact_only(criterion))]
            p = p[["key", "module", "numel", criterion]].rename(columns={criterion: "changed"})
            fused = set(p["key"])
            meta = t.set_index("key")
            p = p.assign(
                changed=p["changed"].astype("int64"), layer=p["key"].map(meta["layer"]), mtp=p["key"].map(meta["mtp"])
            )
            t = pd.concat([t[~t["key"].isin(fused)], p[t.columns]], ignore_index=True)
        # (a 0-element tensor has no density: it entered the per-tensor mean as 100 % sparse, where the summary's
        # mean_tensor_sparsity leaves it out)
        t = t.assign(tensor_density=t["changed"] / t["numel"].where(t["numel"] > 0))
        g = t.groupby(["layer", "module"], dropna=False, sort=False)
        out = g.agg(
            changed=("changed", "sum"),
            numel=("numel", "sum"),
            tensors=("key", "count"),
            mean_density=("tensor_density", "mean"),
            mtp=("mtp", "all"),  # a multi-token-prediction module's layer (labelled so in the heatmaps)
        ).reset_index()
        out["density"] = out["changed"] / out["numel"]
        out["sparsity"] = 1.0 - out["density"]
        out["mean_sparsity"] = 1.0 - out["mean_density"]
        out.insert(0, "model", self.model)
        return out

    def split_exact_only(self, criterion: str) -> list[str]:
        """The fused tensors whose parts have exact counts only, none under ``criterion`` (a column of
        :attr:`tensors`): :meth:`by_layer_module` shows them whole under it."""
        if self.parts is None or not len(self.parts) or criterion == "changed":
            return []
        if criterion not in self.parts.columns:  # (a parts table saved before the parts had every criterion)
            return list(dict.fromkeys(self.parts["key"]))
        return list(dict.fromkeys(self.parts.loc[self.parts[criterion].isna(), "key"]))

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
            # changed / numel, as every other table writes it (1 − sparsity rounds twice: one ulp off)
            "density": self.changed / self.numel if self.numel else float("nan"),
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
    row.update(zip(_tolerance_columns(options.tolerances), st.changed_tol, strict=True))
    return row


@functools.lru_cache(maxsize=32)
def _tolerance_columns(tolerances: tuple[float, ...]) -> tuple[str, ...]:
    """The ``changed@tol`` column names of ``tolerances`` (formatted once per option set, not per tensor)."""
    return tuple(f"changed@{t:g}" for t in tolerances)


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


SHORT_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}


def compared_dtypes(reports: Sequence[SparsityReport]) -> list[str]:
    """The dtypes the reports' tensors were compared at (their ``dtype`` column: the chosen precision, or each
    pair's own), in first-seen order."""
    seen = pd.concat([r.tensors["dtype"] for r in reports], ignore_index=True) if reports else pd.Series([])
    return list(dict.fromkeys(seen.dropna().astype(str)))


def ulp_dtype(reports: Sequence[SparsityReport]) -> str:
    """What the reports' ULP distances are units of, as the histogram's axis names it: the chosen comparison
    precision ("bf16"), else the stored dtypes ("fp32, as stored")."""
    precision = reports[0].options.precision if reports else None
    stored = " and ".join(SHORT_DTYPES.get(d, d) for d in compared_dtypes(reports))
    return precision or f"{stored}, as stored"


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
