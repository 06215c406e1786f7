"""Mixture-of-experts views of an update analysis: sparsity per (layer, expert), shared vs routed
experts, and the routers' updates. Pure functions of a :class:`~subnetviz.analysis.sparsity.SparsityReport`
(its ``expert`` column, written by :func:`~subnetviz.analysis.updates.analyze_updates` from the naming
tables, and the per-row counts of packed 3-D expert tensors); figures in :mod:`subnetviz.figures.moe`.
"""

from __future__ import annotations

import pandas as pd

from subnetviz.analysis.sparsity import SparsityReport

EXPERT_COLUMNS = ["model", "layer", "expert", "kind", "tensors", "numel", "changed", "density", "sparsity", "mtp"]


def by_expert(report: SparsityReport) -> pd.DataFrame:
    """Per (layer, expert) update counts of an MoE model: routed experts by index, shared experts as
    ``"shared"``; a packed 3-D tensor (every expert along dim 0) contributes its per-expert row counts (so it
    needs a report analysed with ``row_col``, the default; without them it is left out).
    Columns: :data:`EXPERT_COLUMNS` (``kind``: routed | shared; ``mtp``: the layer is a multi-token-prediction
    module's, labelled so in the heatmap). Empty for a dense model."""
    t = report.tensors
    if "expert" not in t or not t["expert"].notna().any():
        return pd.DataFrame(columns=EXPERT_COLUMNS)
    t = t[t["expert"].notna() & (t["module"] != "router")]
    mtp = t["block"].eq("mtp") if "block" in t else pd.Series(False, index=t.index)
    rows = []
    for r, in_mtp in zip(t.itertuples(), mtp, strict=True):
        expert = str(r.expert)
        if expert == "all":
            counts = report.row_col.get(r.key, (None, None))[0]
            if counts is None:
                continue
            per = int(r.numel) // len(counts)
            rows += [(r.layer, str(e), "routed", per, int(c), bool(in_mtp)) for e, c in enumerate(counts)]
        else:
            kind = "shared" if expert == "shared" else "routed"
            rows.append((r.layer, expert, kind, int(r.numel), int(r.changed), bool(in_mtp)))
    df = pd.DataFrame(rows, columns=["layer", "expert", "kind", "numel", "changed", "mtp"])
    g = (
        df.groupby(["layer", "expert", "kind"], sort=False)
        .agg(tensors=("numel", "size"), numel=("numel", "sum"), changed=("changed", "sum"), mtp=("mtp", "all"))
        .reset_index()
    )
    g["density"] = g["changed"] / g["numel"].clip(lower=1)
    g["sparsity"] = 1.0 - g["density"]
    g.insert(0, "model", report.model)
    return g[EXPERT_COLUMNS]


def routers(report: SparsityReport) -> pd.DataFrame:
    """The router tensors (module ``router``) of an MoE model: one row each, with their update counts (``mtp``:
    the router of a multi-token-prediction module's layer). A shared expert's gate (Qwen2-MoE's
    ``shared_expert_gate``, expert ``shared``: a sigmoid on that one expert, choosing none) is no router, and
    is left out (:func:`is_router`)."""
    t = report.tensors
    r = t[[is_router(m, e) for m, e in zip(t["module"], t["expert"], strict=True)]]
    cols = ["model", "key", "layer", "expert", "numel", "changed", "sparsity", "max_abs_delta"]
    return r[cols].assign(mtp=r["block"].eq("mtp") if "block" in r else False).reset_index(drop=True)


def is_router(module, expert) -> bool:
    """Whether a tensor of naming ``module`` and ``expert`` is a router's (module ``router``), not a shared expert's
    gate (Qwen2-MoE's ``shared_expert_gate``, module ``router`` of expert ``shared``: a sigmoid on that one expert,
    which chooses no expert, as :func:`~subnetviz.analysis.routing.find_routers` says)."""
    return module == "router" and not (isinstance(expert, str) and expert == "shared")  # (None / NA: no expert)
