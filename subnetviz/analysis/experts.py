"""Mixture-of-experts views of an update analysis: sparsity per (layer, expert), shared vs routed
experts, and the routers' updates. Pure functions of a :class:`~subnetviz.analysis.sparsity.SparsityReport`
(its ``expert`` column, written by :func:`~subnetviz.analysis.updates.analyze_updates` from the naming
tables, and the per-row counts of packed 3-D expert tensors); figures in :mod:`subnetviz.figures.moe`.
"""

from __future__ import annotations

import pandas as pd

from subnetviz.analysis.sparsity import SparsityReport

EXPERT_COLUMNS = ["model", "layer", "expert", "kind", "tensors", "numel", "changed", "density", "sparsity"]


def by_expert(report: SparsityReport) -> pd.DataFrame:
    """Per (layer, expert) update counts of an MoE model: routed experts by index, shared experts as
    ``"shared"``; a packed 3-D tensor (every expert along dim 0) contributes its per-expert row counts.
    Columns: :data:`EXPERT_COLUMNS` (``kind``: routed | shared). Empty for a dense model."""
    t = report.tensors
    if "expert" not in t or not t["expert"].notna().any():
        return pd.DataFrame(columns=EXPERT_COLUMNS)
    t = t[t["expert"].notna() & (t["module"] != "router")]
    rows = []
    for r in t.itertuples():
        expert = str(r.expert)
        if expert == "all":
            counts = report.row_col.get(r.key, (None, None))[0]
            if counts is None:
                continue
            per = int(r.numel) // len(counts)
            rows += [(r.layer, str(e), "routed", per, int(c)) for e, c in enumerate(counts)]
        else:
            rows.append((r.layer, expert, "shared" if expert == "shared" else "routed", int(r.numel), int(r.changed)))
    df = pd.DataFrame(rows, columns=["layer", "expert", "kind", "numel", "changed"])
    g = (
        df.groupby(["layer", "expert", "kind"], sort=False)
        .agg(tensors=("numel", "size"), numel=("numel", "sum"), changed=("changed", "sum"))
        .reset_index()
    )
    g["density"] = g["changed"] / g["numel"].clip(lower=1)
    g["sparsity"] = 1.0 - g["density"]
    g.insert(0, "model", report.model)
    return g[EXPERT_COLUMNS]


def routers(report: SparsityReport) -> pd.DataFrame:
    """The router tensors (module ``router``) of an MoE model: one row each, with their update counts."""
    t = report.tensors
    r = t[t["module"] == "router"]
    return r[["model", "key", "layer", "expert", "numel", "changed", "sparsity", "max_abs_delta"]].reset_index(
        drop=True
    )
