"""Overlap: is it the same subnetwork every time? Venn, UpSet, pairwise matrices, per layer, consensus."""

import streamlit as st

from subnetviz import figures, ui
from subnetviz.analysis.updates import mask_path


def body() -> None:
    st.title("Overlap of subnetworks")
    st.caption(
        "o1 = |A∩B|/|A| (share of the row mask inside the column mask); its chance value is B's density. "
        "Jaccard = |A∩B|/|A∪B| against pq/(p+q−pq) for independent masks of the same densities."
    )
    ws = ui.workspace()
    c1, c2 = st.columns([1, 3])
    crit = c1.selectbox(
        "Update masks at",
        ["exact", "1e-08", "1e-07", "1e-06", "1e-05", "0.0001"],
        key="ov_crit",
        bind="query-params",
        help="Exact = bitwise changed; a tolerance counts |Δ| ≤ tol as unchanged.",
    )
    sources: dict[str, str] = {}
    if ws.base and ws.finetuned:
        analysis = ui.update_analysis(ws, mask_tolerance=None if crit == "exact" else float(crit))
        sources.update({f"Δ {m}": str(mask_path(analysis.source_dir, m)) for m in analysis.labels})
    sources.update({label: path for label, path in ws.masks})
    ui.need(len(sources) >= 2, "Overlap needs at least two masks: choose finetuned checkpoints or saved masks.")
    default = list(sources)[: min(3, len(sources))]
    chosen = c2.multiselect(
        "Masks (2–8)", list(sources), default=default, key="ov_masks", bind="query-params", max_selections=8
    )
    ui.need(len(chosen) >= 2, "Pick at least two masks.")
    # once per masks for every session, here or on the session's Ray cluster (jobs.cluster_pages)
    overlap = ui.mask_files_overlap([sources[c] for c in chosen], tuple(chosen))
    ui.need(overlap.common > 0, "These masks share no tensor names; they are over different models.")
    if overlap.partial:
        st.caption(f"Compared over the {overlap.common} tensors present in every chosen mask.")
    report = overlap.report
    if len(chosen) in (2, 3):  # Venn beside the UpSet; beyond three masks the UpSet alone, full width
        a, b = st.columns(2)
        with a:
            counts = report.venn_regions()["count"].to_numpy()
            venn = figures.venn2 if len(chosen) == 2 else figures.venn3
            ui.chart(ui.shared(venn, counts, chosen), key="venn")
    else:
        b = st.container()
    with b:
        ui.chart(ui.shared(figures.upset, report.regions, chosen), key="upset")
    view = st.radio(
        "Pairwise view",
        ["value", "ratio"],
        horizontal=True,
        key="ov_view",
        bind="query-params",
        format_func=lambda v: "values" if v == "value" else "× chance",
    )
    cols = st.columns(2)  # no o2 panel: o2(A, B) = o1(B, A), the o1 matrix read down its columns
    titles = {"o1": "o1: share of the row mask in the column mask", "jaccard": "Jaccard |A∩B| / |A∪B|"}
    for col, metric in zip(cols, titles, strict=True):
        with col:
            title = titles[metric] + (" (× chance)" if view == "ratio" else "")
            ui.chart(
                ui.shared(
                    figures.pairwise_matrix, report.pairwise, value=metric, view=view, labels=chosen, title=title
                ),
                key=f"pw-{metric}",
            )
    ui.table(report.pairwise, "pairwise", "Pairwise overlap against chance")
    by = report.by_group.copy()
    by["layer"] = by["group"].map(lambda g: g[0])
    by["module"] = by["group"].map(lambda g: g[1])
    pair = st.selectbox(
        "Per-layer view of the pair",
        [f"{r.a} ∩ {r.b}" for r in report.pairwise.itertuples()],
        key="ov_pair",
        bind="query-params",
    )
    pa, pb = pair.split(" ∩ ")
    one = by[(by["a"] == pa) & (by["b"] == pb) & by["layer"].notna()]
    c, d = st.columns(2)
    with c:
        ui.chart(ui.shared(figures.overlap_layer_heatmap, one, view=view), key="layer-overlap")
    with d:
        pw = report.pairwise
        dens = {
            **dict(zip(pw["b"], pw["count_b"] / pw["numel"], strict=True)),
            **dict(zip(pw["a"], pw["count_a"] / pw["numel"], strict=True)),
        }
        chance = figures.chance_consensus([dens[c] for c in chosen], int(pw["numel"].iloc[0]))
        ui.chart(ui.shared(figures.consensus_bars, report.consensus_overall(), chance=chance), key="consensus")
    experts_overlap(overlap.experts, pa, pb, view)
    ui.export_button(
        "Overlap",
        {"masks": chosen, "criterion": crit, "view": view},
        ["venn", "upset", "pw-o1", "pw-jaccard", "layer-overlap", "consensus", "expert-overlap"],
        ["pairwise"],
    )


def experts_overlap(rep, pa, pb, view) -> None:
    """Mixture-of-experts masks only (``rep``: their overlap per layer × expert over the per-expert
    tensors, None for others): the chosen pair's."""
    if rep is None:
        return
    by = rep.by_group.assign(
        layer=lambda d: d["group"].map(lambda g: g[0]), module=lambda d: d["group"].map(lambda g: g[1])
    )
    st.subheader("Experts")
    ui.chart(
        figures.overlap_layer_heatmap(
            by[(by["a"] == pa) & (by["b"] == pb)], view=view, title=f"{pa} ∩ {pb}: Jaccard per layer × expert"
        ),
        key="expert-overlap",
    )


ui.run_page(body)
