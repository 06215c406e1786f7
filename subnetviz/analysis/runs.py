"""Is the subnetwork enough? Compare a subnetwork-only run with its full-finetune twin.

:func:`compare_runs` streams the two saved models tensor by tensor through the reading layer
(:func:`~subnetviz.checkpoints.open_checkpoint`, :func:`~subnetviz.checkpoints.align`; never two
whole models in memory) and compares each pair with the update analysis' own one-pass comparison
(:func:`~subnetviz.analysis.sparsity.compare_pair`, built on :mod:`~subnetviz.analysis.bits`), so
"identical", the tolerance sweep and the ULP bins mean the same here as on the Update sparsity
page. It reports, as tidy tables:

- the share of entries identical at exact (bitwise) equality and within each absolute tolerance
  of the sweep (the paper's closeness metric: "94.0 % of weights are the same" at 1e-5),
  parameter-weighted and as a per-tensor average;
- a histogram of ULP distances in the stored dtype over every compared entry: "0" for the
  bitwise-identical entries, then the update analysis' bins (:data:`~subnetviz.analysis.bits.ULP_LABELS`;
  a -0/+0 flip is a bit change and lands in "1"), which says how far apart the non-identical
  entries really are (at tol 1e-4 every 1-ULP bf16 difference on a weight below 2^-6 counts as
  "identical");
- with ``base_dir``: which entries each run changed from the base, and how many the subnetwork
  run changed outside the full run's update (0 when its mask is the full run's update mask);
- with ``eval_data``: greedy exact-match accuracy of base, full and subnetwork models.

Each tensor pair is read once. Weights must be finite (NaN / Inf are refused, as in the update
analysis). Buffers (``position_ids``, GPT-2's float causal mask ``attn.bias``, ``inv_freq``) and quantization
scales are not parameters: as on the Update sparsity page they are not counted (``buffers`` names them), so
12.6 M never-trained mask entries do not lift GPT-2's "identical" share.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

from subnetviz.analysis.bits import DEFAULT_TOLERANCES, ULP_LABELS_WITH_ZERO, bits_differ, check_finite
from subnetviz.analysis.run_result import RunComparison
from subnetviz.analysis.sparsity import SparsityOptions, compare_pair
from subnetviz.checkpoints import Checkpoint, TensorMeta, align, open_checkpoint, read_aligned
from subnetviz.checkpoints.naming import strip_prefix
from subnetviz.errors import AlignmentError

CHUNK = 1 << 22  # entries per slice of the comparison with the base: bounds its bool temporaries


def _refuse_mismatch(name: str, full: TensorMeta, sub: TensorMeta) -> None:
    if full.dtype != sub.dtype or full.shape != sub.shape:
        raise AlignmentError(
            f"{name}: full run stores {full.dtype}{tuple(full.shape)}, subnetwork run {sub.dtype}{tuple(sub.shape)}; "
            "compare runs saved in the same dtype from the same base."
        )


def _changed_vs_base(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> list[int]:
    """``[changed_full, changed_sub, changed_both, sub_outside_full]``: entries of the full run ``a``
    and the subnetwork run ``b`` whose bits differ from the base ``c`` (same shape), slice by slice."""
    fa, fb, fc = a.reshape(-1), b.reshape(-1), c.reshape(-1)
    out = torch.zeros(4, dtype=torch.int64)
    for lo in range(0, fa.numel(), CHUNK):
        z = fc[lo : lo + CHUNK]
        cf, cs = bits_differ(fa[lo : lo + CHUNK], z), bits_differ(fb[lo : lo + CHUNK], z)
        out += torch.stack([torch.count_nonzero(m) for m in (cf, cs, cf & cs, cs & ~cf)])
    return out.tolist()


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
    if any(float(t) < 0 for t in tolerances):
        raise AlignmentError(f"tolerances must be >= 0, got {tolerances}.")
    options = SparsityOptions(tolerances=tuple(tolerances), keep_masks=False, row_col=False)
    ck_full, ck_sub = open_checkpoint(full_dir), open_checkpoint(sub_dir)
    ck_base = open_checkpoint(base_dir) if base_dir is not None else None
    try:
        per_tensor, hist, vs_base, unmatched, base_unmatched, buffers = _compare(ck_full, ck_sub, ck_base, options)
    finally:
        for ck in (ck_full, ck_sub, ck_base):
            if ck is not None:
                ck.close()
    accuracy = None
    if eval_data is not None:
        from subnetviz.training.evaluate import evaluate_accuracy

        models = ([("base", base_dir)] if base_dir is not None else []) + [("full", full_dir), ("subnetwork", sub_dir)]
        accuracy = pd.DataFrame(
            [(m, evaluate_accuracy(d, eval_data, max_new_tokens=max_new_tokens)) for m, d in models],
            columns=["model", "accuracy"],
        )
    base = None if base_dir is None else str(base_dir)
    return RunComparison(
        str(full_dir), str(sub_dir), base, per_tensor, hist, vs_base, accuracy, unmatched, base_unmatched, buffers
    )


def _compare(ck_full: Checkpoint, ck_sub: Checkpoint, ck_base: Checkpoint | None, options: SparsityOptions):
    """``(per_tensor, ulp_histogram, vs_base, unmatched, base_unmatched, buffers)`` of :class:`RunComparison`."""
    # Twins saved from one base store every shared tensor alike: refuse before reading anything.
    sub_names = {strip_prefix(n): n for n in ck_sub.names}
    for name in ck_full.names:
        if strip_prefix(name) in sub_names:
            _refuse_mismatch(name, ck_full.meta(name), ck_sub.meta(sub_names[strip_prefix(name)]))
    al = align([ck_full, ck_sub])
    unmatched = tuple(sorted(n for names in al.only_in.values() for n in names))
    from subnetviz.analysis.quant import checkpoint_forms  # late: it imports the quantized forms' kernels

    forms = [checkpoint_forms(ck) for ck in (ck_full, ck_sub)]
    side = {
        t.key for t in al.tensors if any(f[n].kind in ("buffer", "scale") for f, n in zip(forms, t.names, strict=True))
    }
    buffers = tuple(sorted(t.names[0] for t in al.tensors if t.key in side))
    base_names = {strip_prefix(n): n for n in ck_base.names} if ck_base is not None else {}
    rows, base_rows, base_unmatched = [], [], []
    ulp_counts = np.zeros(len(ULP_LABELS_WITH_ZERO), dtype=np.int64)
    for t in sorted((t for t in al.tensors if t.key not in side), key=lambda t: t.names[0]):
        name = t.names[0]
        a, b = read_aligned(ck_full, t, 0), read_aligned(ck_sub, t, 1)
        dtype, n = str(a.dtype).removeprefix("torch."), a.numel()
        if not a.dtype.is_floating_point:  # integer buffers: bitwise equality only
            rows.append((name, dtype, n, "exact", 0.0, n - int(torch.count_nonzero(bits_differ(a, b)))))
            continue
        check_finite(a, f"full run {ck_full.spec} :: {name}")
        check_finite(b, f"subnetwork run {ck_sub.spec} :: {t.names[1]}")
        st = compare_pair(a, b, options, name=name)
        rows.append((name, dtype, n, "exact", 0.0, n - st.changed))
        rows.extend(
            (name, dtype, n, "atol", tol, n - c) for tol, c in zip(options.tolerances, st.changed_tol, strict=True)
        )
        ulp_counts += [n - st.changed, *st.ulp_hist]
        if ck_base is None:
            continue
        bn = base_names.get(t.key)
        if bn is None or ck_base.meta(bn).shape != a.shape or ck_base.meta(bn).dtype != a.dtype:
            base_unmatched.append(name)
            continue
        base_rows.append((name, n, *_changed_vs_base(a, b, ck_base.get(bn))))
    per_tensor = pd.DataFrame(rows, columns=["name", "dtype", "numel", "criterion", "tolerance", "identical"])
    per_tensor["share"] = per_tensor["identical"] / per_tensor["numel"]
    total = int(ulp_counts.sum())
    hist = pd.DataFrame({"bin": list(ULP_LABELS_WITH_ZERO), "count": ulp_counts.tolist()})
    hist["share"] = hist["count"] / total if total else 0.0
    vs_base = None
    if ck_base is not None:
        columns = ["name", "numel", "changed_full", "changed_sub", "changed_both", "sub_outside_full"]
        vs_base = pd.DataFrame(base_rows, columns=columns)
    return per_tensor, hist, vs_base, unmatched, tuple(base_unmatched), buffers
