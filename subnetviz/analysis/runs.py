"""Is the subnetwork enough? Compare a subnetwork-only run with its full-finetune twin.

:func:`compare_runs` streams the two saved models tensor by tensor (``safetensors.safe_open``;
never two whole models in memory) and reports, as tidy tables:

- the share of entries identical at exact (bitwise) equality and within each absolute tolerance
  of the sweep (the paper's closeness metric: "94.0 % of weights are the same" at 1e-5),
  parameter-weighted and as a per-tensor average;
- a histogram of ULP distances in the stored dtype (bins 0, 1, 2, 3-4, 5-8, 9-16, >16), which
  says how far apart the non-identical entries really are (at tol 1e-4 every 1-ULP bf16
  difference on a weight below 2^-6 counts as "identical");
- with ``base_dir``: which entries each run changed from the base, and how many the subnetwork
  run changed outside the full run's update (0 when its mask is the full run's update mask);
- with ``eval_data``: greedy exact-match accuracy of base, full and subnetwork models.

ULP distance: the float's bits as a signed integer ``i`` map monotonically to
``k = i`` (``i >= 0``) or ``k = -(i & magnitude_bits)`` (negative floats), so that consecutive
floats differ by 1 across zero as well; the distance is ``|k_a - k_b|`` (``+0`` and ``-0`` are
0 ULPs apart though their bits differ). Each tensor pair is read once; ``|Δ|`` is computed once
in float64 (exact for bf16/fp16/fp32 inputs) and bucketed once for all tolerances.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from subnetviz.errors import AlignmentError, CheckpointError, NonFiniteError

DEFAULT_TOLERANCES = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4)
ULP_EDGES = (0, 1, 2, 4, 8, 16)  # right-closed bin edges: 0 | 1 | 2 | 3-4 | 5-8 | 9-16 | >16
ULP_LABELS = ("0", "1", "2", "3-4", "5-8", "9-16", ">16")
_INT_VIEW = {
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}
_CAP = 1 << 40  # sign-crossing distances are capped here (they are far beyond the last bin anyway)


@dataclass(frozen=True)
class RunComparison:
    """Subnetwork-only run vs full finetune. Tables are tidy DataFrames.

    - ``per_tensor``: ``name, dtype, numel, criterion ("exact" | "atol"), tolerance, identical, share``
    - ``ulp_histogram``: ``bin, count, share`` over every compared entry (bin labels :data:`ULP_LABELS`)
    - ``vs_base`` (with a base): ``name, numel, changed_full, changed_sub, changed_both, sub_outside_full``
    - ``accuracy`` (with eval data): ``model ("base" | "full" | "subnetwork"), accuracy``
    - ``unmatched``: tensor names present in only one of the two runs (reported, not compared)
    - ``base_unmatched``: compared tensors missing from the base or stored differently there
      (left out of ``vs_base``)
    """

    full_dir: str
    sub_dir: str
    base_dir: str | None
    per_tensor: pd.DataFrame
    ulp_histogram: pd.DataFrame
    vs_base: pd.DataFrame | None
    accuracy: pd.DataFrame | None
    unmatched: tuple[str, ...]
    base_unmatched: tuple[str, ...] = ()

    def to_frame(self) -> pd.DataFrame:
        """One row per criterion: ``criterion, tolerance, identical, numel, share, mean_tensor_share``.

        ``share`` is parameter-weighted; ``mean_tensor_share`` averages the per-tensor shares.
        """
        g = self.per_tensor.groupby(["criterion", "tolerance"], sort=False)
        out = g.agg(identical=("identical", "sum"), numel=("numel", "sum"), mean_tensor_share=("share", "mean"))
        out = out.reset_index()
        out["share"] = out["identical"] / out["numel"]
        return out[["criterion", "tolerance", "identical", "numel", "share", "mean_tensor_share"]]

    @property
    def share_identical(self) -> float:
        """Parameter-weighted share of entries bitwise identical between the two runs."""
        f = self.to_frame()
        return float(f.loc[f["criterion"] == "exact", "share"].iloc[0])


def weight_index(folder: str | os.PathLike) -> dict[str, Path]:
    """tensor name -> the ``.safetensors`` file holding it, for an HF folder or a single file."""
    from safetensors import safe_open

    path = Path(folder)
    if path.is_file() and path.suffix == ".safetensors":
        files = [path]
    elif (path / "model.safetensors.index.json").is_file():
        wm = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
        return {k: path / v for k, v in wm.items()}
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        raise CheckpointError(f"{path}: no model.safetensors, sharded index or .safetensors file found.")
    out: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            out.update({k: f for k in h.keys()})
    return out


def ulp_key(t: torch.Tensor) -> torch.Tensor:
    """Monotone integer image of a float tensor's bits (int64, same shape): adjacent floats differ by 1."""
    iv = _INT_VIEW.get(t.dtype)
    if iv is None:
        raise AlignmentError(f"ULP distance needs a float tensor; got {t.dtype}.")
    i = t.contiguous().view(iv).to(torch.int64)
    bits = torch.finfo(t.dtype).bits
    mag = i & ((1 << (bits - 1)) - 1)
    return torch.where(i >= 0, i, -mag)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|ulp_key(a) - ulp_key(b)| elementwise (int64), capped at 2^41 across a sign change."""
    ka, kb = ulp_key(a), ulp_key(b)
    same = (ka >= 0) == (kb >= 0)
    cross = ka.abs().clamp(max=_CAP) + kb.abs().clamp(max=_CAP)
    return torch.where(same, (ka - kb).abs(), cross)


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    iv = _INT_VIEW.get(a.dtype)
    return a.view(iv) == b.view(iv) if iv is not None else a == b


class TensorReader:
    """Open safetensors handles (one per file, inside ``stack``); ``get(name)`` reads one tensor."""

    def __init__(self, stack: ExitStack, index: dict[str, Path]):
        from safetensors import safe_open

        self.index = index
        self._handles = {f: stack.enter_context(safe_open(str(f), framework="pt")) for f in set(index.values())}

    def get(self, name: str) -> torch.Tensor:
        return self._handles[self.index[name]].get_tensor(name)


CHUNK = 1 << 22  # entries per slice of a large tensor: bounds the float64/int64 temporaries (~150 MB)


def _pair_counts(name, a, b, c, tol_t, ulp_edges):
    """One pass over a tensor pair (and its base ``c``), slice by slice.

    Returns ``(bitwise-equal count, [count |a-b| <= tol for each tol], ULP-bin counts,
    (changed_full, changed_sub, changed_both, sub_outside_full) or None without a base)``.
    """
    fa, fb = a.reshape(-1), b.reshape(-1)
    fc = c.reshape(-1) if c is not None else None
    exact = 0
    within = torch.zeros(len(tol_t), dtype=torch.int64)
    ulp_counts = torch.zeros(len(ULP_LABELS), dtype=torch.int64)
    changed = torch.zeros(4, dtype=torch.int64) if fc is not None else None
    for lo in range(0, fa.numel(), CHUNK):
        x, y = fa[lo : lo + CHUNK], fb[lo : lo + CHUNK]
        if torch.isnan(x).any() or torch.isnan(y).any():
            raise NonFiniteError(f"{name}: holds NaN in the {'full' if torch.isnan(x).any() else 'subnetwork'} run.")
        exact += int(_bits_equal(x, y).sum())
        absd = (x.to(torch.float64) - y.to(torch.float64)).abs()
        # bucket i holds tol[i-1] < |d| <= tol[i]; a cumulative sum gives the "|d| <= tol[i]" counts.
        within += torch.bincount(torch.bucketize(absd, tol_t), minlength=len(tol_t) + 1).cumsum(0)[:-1]
        ulp_counts += torch.bincount(torch.bucketize(ulp_distance(x, y), ulp_edges), minlength=len(ULP_LABELS))
        if fc is not None:
            z = fc[lo : lo + CHUNK]
            cf, cs = ~_bits_equal(x, z), ~_bits_equal(y, z)
            changed += torch.stack([cf.sum(), cs.sum(), (cf & cs).sum(), (cs & ~cf).sum()])
    return exact, within.tolist(), ulp_counts, None if changed is None else changed.tolist()


def compare_runs(
    full_dir: str | os.PathLike,
    sub_dir: str | os.PathLike,
    base_dir: str | os.PathLike | None = None,
    *,
    tolerances: tuple[float, ...] = DEFAULT_TOLERANCES,
    eval_data: str | os.PathLike | None = None,
    max_new_tokens: int = 8,
) -> RunComparison:
    """Compare the full finetune ``full_dir`` with its subnetwork-only twin ``sub_dir`` (see module doc)."""
    tols = sorted(float(t) for t in tolerances)
    if any(t < 0 for t in tols):
        raise AlignmentError(f"tolerances must be >= 0, got {tolerances}.")
    idx_full, idx_sub = weight_index(full_dir), weight_index(sub_dir)
    idx_base = weight_index(base_dir) if base_dir is not None else None
    names = sorted(set(idx_full) & set(idx_sub))
    unmatched = tuple(sorted(set(idx_full) ^ set(idx_sub)))
    if not names:
        raise AlignmentError(f"{full_dir} and {sub_dir} share no tensor names; are they runs of the same model?")
    tol_t = torch.tensor(tols, dtype=torch.float64)
    ulp_edges = torch.tensor(ULP_EDGES, dtype=torch.int64)
    rows, base_rows, base_unmatched = [], [], []
    ulp_counts = torch.zeros(len(ULP_LABELS), dtype=torch.int64)
    with ExitStack() as stack:
        rf, rs = TensorReader(stack, idx_full), TensorReader(stack, idx_sub)
        rb = TensorReader(stack, idx_base) if idx_base is not None else None
        for name in names:
            a, b = rf.get(name), rs.get(name)
            if a.dtype != b.dtype or a.shape != b.shape:
                raise AlignmentError(
                    f"{name}: full run stores {a.dtype}{tuple(a.shape)}, subnetwork run {b.dtype}{tuple(b.shape)}; "
                    "compare runs saved in the same dtype from the same base."
                )
            if not a.dtype.is_floating_point:  # integer buffers: bitwise equality only
                rows.append((name, str(a.dtype).removeprefix("torch."), a.numel(), "exact", 0.0, int((a == b).sum())))
                continue
            n = a.numel()
            c = rb.get(name) if rb is not None and name in idx_base else None
            if rb is not None and (c is None or c.shape != a.shape or c.dtype != a.dtype):
                base_unmatched.append(name)
                c = None
            exact, within, ulp_t, changed = _pair_counts(name, a, b, c, tol_t, ulp_edges)
            dtype = str(a.dtype).removeprefix("torch.")
            rows.append((name, dtype, n, "exact", 0.0, exact))
            rows.extend((name, dtype, n, "atol", t, within[i]) for i, t in enumerate(tols))
            ulp_counts += ulp_t
            if changed is not None:
                base_rows.append((name, n, *changed))
    per_tensor = pd.DataFrame(rows, columns=["name", "dtype", "numel", "criterion", "tolerance", "identical"])
    per_tensor["share"] = per_tensor["identical"] / per_tensor["numel"]
    total = int(ulp_counts.sum())
    hist = pd.DataFrame({"bin": list(ULP_LABELS), "count": ulp_counts.tolist()})
    hist["share"] = hist["count"] / total if total else 0.0
    vs_base = None
    if idx_base is not None:
        vs_base = pd.DataFrame(
            base_rows, columns=["name", "numel", "changed_full", "changed_sub", "changed_both", "sub_outside_full"]
        )
    accuracy = None
    if eval_data is not None:
        from subnetviz.training.evaluate import evaluate_accuracy

        models = ([("base", base_dir)] if base_dir is not None else []) + [("full", full_dir), ("subnetwork", sub_dir)]
        accuracy = pd.DataFrame(
            [(m, evaluate_accuracy(d, eval_data, max_new_tokens=max_new_tokens)) for m, d in models],
            columns=["model", "accuracy"],
        )
    return RunComparison(
        str(full_dir),
        str(sub_dir),
        None if base_dir is None else str(base_dir),
        per_tensor,
        hist,
        vs_base,
        accuracy,
        unmatched,
        tuple(base_unmatched),
    )
