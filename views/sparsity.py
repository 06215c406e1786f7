"""Update sparsity: which entries changed, per layer × module, along a tolerance sweep, in ULPs."""

import pandas as pd
import streamlit as st

from subnetviz import figures, ui
from subnetviz.analysis.experts import by_expert, routers
from subnetviz.analysis.updates import mask_path
from subnetviz.figures import moe
from subnetviz.masks import load_mask_tensor


def body() -> None:
    st.title("Update sparsity")
    st.caption("Sparsity = share of parameters **unchanged** (1 − changed/all); density = share changed. "
               "'Exact' compares bit patterns; tolerances count |Δ| ≤ tol as unchanged (the paper uses 1e-5).")  # fmt: skip
    ws = ui.workspace()
    ui.need(ws.base is not None and bool(ws.finetuned), "Choose a base and finetuned checkpoints in the sidebar.")
    analysis = ui.update_analysis(ws)
    reports = {r.model: r for r in analysis.reports}
    tols = list(analysis.reports[0].options.tolerances)
    criteria = ["exact"] + [f"{t:g}" for t in tols] + ["relative"]
    c1, c2, c3 = st.columns([3, 2, 2])
    shown = c1.multiselect("Models side by side", list(reports), default=list(reports)[:3], key="sp_models",
                           bind="query-params", max_selections=4)  # fmt: skip
    crit = c2.selectbox("Criterion", criteria, key="sp_crit", bind="query-params",
                        help="exact = bitwise; a number = absolute tolerance; relative = |Δ| ≤ η·max(|w|,|w'|).")
    weighting = c3.radio("Average", ["parameter-weighted", "per-tensor mean"], key="sp_avg", bind="query-params",
                         horizontal=True)  # fmt: skip
    column = {"exact": "changed", "relative": "changed_rel"}.get(crit, f"changed@{crit}")
    value = "sparsity" if weighting == "parameter-weighted" else "mean_sparsity"
    ui.need(bool(shown), "Pick at least one model.")
    # Sections as tabs that draw only when open: a view holds 1–3 charts, not ten (faster to show).
    tabs = st.tabs(["Layers × modules", "Tolerance sweep and ULPs", "Norms, embeddings, head", "One matrix"],
                   key="sp_tab", on_change="rerun", bind="query-params")  # fmt: skip
    if tabs[0].open:
        with tabs[0]:
            cols = st.columns(len(shown))
            for col, model in zip(cols, shown, strict=True):
                grid = reports[model].by_layer_module(column)
                grid = grid[grid["layer"].notna()]
                with col:
                    ui.chart(figures.sparsity_heatmap(grid, value=value, title=f"{model}: {value.replace('_', ' ')} "
                                                      f"({crit})"), key=f"heat-{model}")  # fmt: skip
    if tabs[1].open:
        with tabs[1]:
            sweep = pd.concat([r.sweep() for r in analysis.reports], ignore_index=True)
            a, b = st.columns(2)
            with a:
                ui.chart(figures.tolerance_sweep(sweep[sweep["tolerance"].notna()]), key="sweep")
            with b:
                ulp = pd.concat([r.ulp_histogram() for r in analysis.reports], ignore_index=True)
                ui.chart(figures.ulp_histogram(ulp), key="ulp")
            ui.table(sweep, "sweep-table", "Sparsity per criterion")
    if tabs[2].open:
        with tabs[2]:
            special = pd.concat([r.special_by_module() for r in analysis.reports], ignore_index=True)
            ui.chart(figures.module_bars(special), key="special")
            ui.table(pd.concat([r.special() for r in analysis.reports], ignore_index=True), "special-table",
                     "Every norm, embedding and head tensor")  # fmt: skip
    if tabs[3].open:
        with tabs[3]:
            drill_down(analysis, reports)
    experts_section(analysis, shown)  # MoE models only (issue 10)
    ui.export_button("Update sparsity", {"base": ws.base, "models": shown, "criterion": crit, "average": weighting},
                     [f"heat-{m}" for m in shown] + ["sweep", "ulp", "special", "drill-image", "drill-ratios"],
                     ["sweep-table", "special-table"])  # fmt: skip


def experts_section(analysis, shown) -> None:
    """Mixture-of-experts models only: exact sparsity per layer × expert (shared experts apart) and the routers."""
    experts = {m: by_expert(analysis.report(m)) for m in shown}
    if all(e.empty for e in experts.values()):
        return
    st.subheader("Experts")
    for col, model in zip(st.columns(len(shown)), shown, strict=True):
        with col:
            ui.chart(moe.expert_heatmap(experts[model], title=f"{model}: sparsity per expert (exact)"),
                     key=f"experts-{model}")  # fmt: skip
    ui.chart(moe.router_bars(pd.concat([routers(analysis.report(m)) for m in shown], ignore_index=True)), key="routers")
    ui.table(pd.concat(experts.values(), ignore_index=True), "experts-table", "Per layer × expert")


def drill_down(analysis, reports) -> None:
    a, b = st.columns(2)
    model = a.selectbox("Model", list(reports), key="dd_model", bind="query-params")
    rep = reports[model]
    mats = rep.tensors[rep.tensors["ndim"] == 2]
    names = list(mats["key"])
    ui.need(bool(names), "No 2-D tensors to show.")
    default = next((i for i, n in enumerate(names) if "q_proj" in n or "c_attn" in n), 0)
    key = b.selectbox("Matrix", names, index=default, key="dd_tensor", bind="query-params")
    row = mats[mats["key"] == key].iloc[0]
    mask = load_mask_tensor(mask_path(analysis.source_dir, model), row["name"]).numpy()
    st.caption(f"{ui.plain(row['name'])} · shape {row['shape']} · {int(row['changed']):,} of {int(row['numel']):,} changed "
               f"({100 * (1 - row['sparsity']):.2f} %) · largest |Δ| {row['max_abs_delta']:.3g}")  # fmt: skip
    c, d = st.columns(2)
    with c:
        ui.chart(figures.matrix_image(mask, max_side=128), key="drill-image")
    with d:
        ui.chart(figures.row_col_ratios(mask.mean(axis=1), mask.mean(axis=0)), key="drill-ratios")


ui.run_page(body)
