"""Update sparsity: which entries changed, per layer × module, along a tolerance sweep, in ULPs."""

from collections.abc import Callable
from dataclasses import replace
from functools import partial

import pandas as pd
import streamlit as st

from subnetviz import figures, ui, uilogic
from subnetviz.analysis.experts import by_expert, routers
from subnetviz.analysis.sparsity_report import SHORT_DTYPES, compared_dtypes, ulp_dtype
from subnetviz.errors import SubnetvizError
from subnetviz.figures import moe
from subnetviz.figures.style import heatmaps_per_row
from subnetviz.figures.updates import criterion_label, heatmap_cell_text, percent_text


def body() -> None:
    st.title("Update sparsity")
    st.caption(
        "Sparsity = share of parameters **unchanged** (1 − changed/all); density = share changed. "
        "'Exact' compares bit patterns; tolerances count |Δ| ≤ tol as unchanged (the paper uses 1e-5)."
    )
    ws = ui.workspace()
    ui.need_pair(ws)
    at = ui.compared_at(ws)  # the comparison precision, said here and in every chart title below
    analysis = ui.update_analysis(ws)
    reports = {r.model: r for r in analysis.reports}
    tols = list(analysis.reports[0].options.tolerances)
    criteria = ["exact"] + [f"{t:g}" for t in tols] + ["relative"]
    c1, c2, c3 = st.columns([3, 2, 2])
    # The models and One matrix's model are read from the URL and written back by hand, as the Bigram and Continual
    # pages' runs: when the sidebar's finetunes changed, a bound picker's fallback (a removed model dropped) left the
    # URL as it was, and its default (the first three) grew back with the model, so a shared link showed other models
    # and other numbers than the sender's page.
    # A link's entry naming nothing on offer here (a model, criterion, η, average, tab, One matrix's model or matrix)
    # is said, with what is shown instead: each fell back to the default without a word (other numbers than the
    # sender's).
    usual = list(reports)[:3]
    linked = ui.linked_many("sp_models", list(reports), usual, "model", "the models compared here")
    shown = c1.multiselect("Models side by side", list(reports), default=linked, key="sp_models")
    ui.in_url("sp_models", shown, usual)
    eta = analysis.reports[0].options.eta
    ui.said_if_not_offered("sp_crit", criteria, "criterion", f"the criteria on offer ({', '.join(criteria)})")
    crit = c2.selectbox(
        "Criterion",
        criteria,
        key="sp_crit",
        bind="query-params",
        help=f"exact = bitwise; a number = absolute tolerance |Δ| ≤ tol; relative = |Δ| ≤ η·max(|w|,|w'|), "
        f"η = {eta:g}.",
    )
    if crit == "relative":
        usual_eta = _eta_text(eta) if _eta_text(eta) in ETAS else ETAS[1]
        ui.said_if_not_offered("sp_eta", ETAS, "η", f"the η on offer ({', '.join(ETAS)})", default=usual_eta)
        eta = float(
            st.select_slider(
                "η of the relative criterion",
                ETAS,
                value=usual_eta,
                key="sp_eta",
                bind="query-params",
                help="|Δ| ≤ η·max(|w|,|w'|) counts as unchanged. Below a dtype's smallest relative step (bf16 2⁻⁸ "
                "≈ 0.0039, fp16 2⁻¹¹ ≈ 0.00049, fp32 2⁻²⁴) η counts every changed entry but sign flips of zero; "
                "larger η leaves out changes small against the weight's size.",
            )
        )
        if eta != analysis.reports[0].options.eta:  # another η: the analysis at that η (cached like the default)
            analysis = ui.update_analysis(ws, eta=eta)
            reports = {r.model: r for r in analysis.reports}
    column = {"exact": "changed", "relative": "changed_rel"}.get(crit, f"changed@{crit}")
    grids = ui.shared(layer_grids, analysis, column)  # once per analysis and criterion, for every session
    # A per-tensor mean differs from the weighted share only where a cell holds several tensors.
    several = any((g["tensors"] > 1).any() for g in grids.values())
    averages = ["parameter-weighted", "per-tensor mean"]
    why = "per-tensor mean is offered when a layer × module cell holds several tensors (e.g. experts)"
    if several:
        ui.said_if_not_offered("sp_avg", averages, "average", f"the averages on offer ({', '.join(averages)})")
        weighting = c3.radio("Average", averages, key="sp_avg", bind="query-params", horizontal=True, help=why)
    else:  # both shown, greyed: the choice exists, and the help says why it does not apply here
        c3.radio(
            "Average",
            averages,
            disabled=True,
            horizontal=True,
            key="sp_avg_one",
            help=f"{why}; here every cell holds one tensor, so both averages are the same.",
        )
        weighting = averages[0]
        asked = st.query_params.get("sp_avg")  # a shared URL's choice that this workspace cannot show: said, dropped
        among = f"the averages this workspace can show ({weighting} only, as each layer × module cell holds one tensor)"
        stale = asked not in (None, "", weighting)
        ui.said_once("sp_avg_one", uilogic.stale_link_line("average", asked, among, weighting) if stale else None, 0)
        if "sp_avg" in st.query_params:
            del st.query_params["sp_avg"]
    said: list[str] = []  # the notes that qualify the numbers: on the page and in its export
    # what was left out of the comparison, stored forms (quantized: changes that are only rounding), mixed precision
    ui.analysis_notes(analysis.notes, said)
    if crit == "relative":
        ui.note(relative_note(eta, compared_dtypes([reports[m] for m in shown] or list(reports.values()))), said)
    value = "sparsity" if weighting == "parameter-weighted" else "mean_sparsity"
    ui.need(bool(shown), "Pick at least one model.")
    buffers_section([reports[m] for m in shown])  # where the buffers note points ("listed under buffers")
    colors = figures.color_map(list(reports))  # a model keeps its colour whichever models are shown
    drill_links(reports)  # (said whichever tab is open: the export draws One matrix)
    # Sections as tabs that draw only when open: a view holds 1–3 charts, not ten (faster to show).
    ui.said_if_not_offered("sp_tab", TABS, "tab", "this page's tabs")
    tabs = st.tabs(
        TABS,
        key="sp_tab",
        on_change="rerun",
        bind="query-params",
    )
    overall = overall_frame(grids, reports, shown, column)
    named = criterion_label(crit, eta) + at  # titles name the criterion with its η or tolerance, and the precision
    whole = [k for m in shown for k in reports[m].split_exact_only(column)]
    if whole:  # fused tensors split only under the exact criterion: said, not silently merged
        ui.note(
            f"{len(set(whole))} fused tensor(s) ({', '.join(list(dict.fromkeys(whole))[:3])}) are split into their "
            f"parts (q, k, v; gate, up) under the exact criterion only (packed experts and quantized weights are "
            f"split from the exact mask's counts): shown whole under {criterion_label(crit, eta)}.",
            said,
        )
    first = partial(layers_tab, overall, grids, tuple(shown), named, value, colors)
    if tabs[0].open:
        with tabs[0]:
            figs = ui.shared(layers_tab, overall, grids, tuple(shown), named, value, colors)
            ui.chart(figs["overall"], key="overall")
            # every module kind named under its column: two to a row where three leave the names no room
            per_row = min(heatmaps_per_row(max(grids[m]["module"].nunique() for m in shown)), len(shown))
            if not heatmap_cell_text([grids[m] for m in shown], value):
                shared = "One colour range across the models; cell" if len(shown) > 1 else "Cell"
                st.caption(f"{shared} values on hover.")
            for start in range(0, len(shown), per_row):
                cols = st.columns(per_row)
                for col, model in zip(cols, shown[start : start + per_row], strict=False):
                    with col:
                        ui.chart(figs[f"heat-{model}"], key=f"heat-{model}")
    if tabs[1].open:
        with tabs[1]:
            f, tables = ui.shared(other_tabs, analysis, tuple(shown), colors, at, column, named)
            a, b = st.columns(2)
            with a:
                ui.chart(f["sweep"], key="sweep")
            with b:
                ui.chart(f["ulp"], key="ulp")
            ui.table(tables["sweep-table"][1], "sweep-table", "Sparsity per criterion")
    if tabs[2].open:
        with tabs[2]:
            f, tables = ui.shared(other_tabs, analysis, tuple(shown), colors, at, column, named)
            ui.chart(f["special"], key="special")
            ui.table(tables["special-table"][1], "special-table", tables["special-table"][0])
    if tabs[3].open:
        with tabs[3]:
            drill_down(ws, reports, crit, eta, said)
    # One matrix for the export from another tab: its picks as the URL holds them (read now, built on click)
    q = st.query_params
    drill = (
        None if tabs[3].open else partial(drill_export, ws, reports, crit, eta, q.get("dd_model"), q.get("dd_tensor"))
    )
    experts_section(analysis, shown, colors, at)  # MoE models only (issue 10)
    numbers = {"criterion": crit, "average": weighting, "precision": ws.precision or "stored dtype"}
    if crit == "relative":
        numbers["relative η"] = f"{eta:g}"
    ui.export_button(
        "Update sparsity",
        {"base": ws.base, "models": shown, **numbers},
        ["overall"]
        + [f"heat-{m}" for m in shown]
        + ["sweep", "ulp", "special", "drill-image", "drill-delta", "drill-ratios"]
        + [f"experts-{m}" for m in shown]
        + ["routers"],  # MoE models only: the Experts section's figures and table
        ["sweep-table", "special-table", "experts-table", "buffers-table"],
        # every tab, whichever is open
        more=lambda: _merged(first(), other_tabs(analysis, tuple(shown), colors, at, column, named), drill),
        notes=said,
    )


TABS = ["Layers × modules", "Tolerance sweep and ULPs", "Norms, embeddings, head", "One matrix"]


def _merged(figs: dict, rest: tuple[dict, dict], drill=None) -> tuple[dict, dict, list[str]]:
    """The export's closed tabs: the layer figures, the other tabs' parts and, unless its tab is open, One matrix's."""
    more, notes = drill() if drill is not None else ({}, [])
    return {**figs, **rest[0], **more}, rest[1], notes


def overall_frame(grids: dict, reports: dict, shown, column: str) -> pd.DataFrame:
    """Each shown model's changed entries under the criterion's ``column`` (layer cells + norms, embeddings,
    head), its parameters and sparsity."""
    overall = pd.DataFrame(
        [
            {
                "model": m,
                "changed": int(grids[m]["changed"].sum()) + special_changed(reports[m], column),
                "numel": reports[m].numel,
            }
            for m in shown
        ]
    )
    overall["sparsity"] = 1 - overall["changed"] / overall["numel"]
    return overall


def layers_tab(overall: pd.DataFrame, grids: dict, shown: tuple, crit: str, value: str, colors: dict) -> dict:
    """The first tab's figures: overall sparsity per model and each model's layer × module heatmap on one
    colour range (the export builds them too when another tab is open); ``crit`` as the titles name it, with its
    parameter and the comparison precision (``relative η = 0.001 at bf16``: :func:`criterion_label`)."""
    figs = {
        "overall": figures.overall_bars(overall, title=f"Overall update sparsity per model ({crit})", colors=colors)
    }
    zrange = figures.shared_range([grids[m] for m in shown], value)
    for model in shown:
        figs[f"heat-{model}"] = figures.sparsity_heatmap(
            grids[model],
            value=value,
            zrange=zrange,
            cell_text=heatmap_cell_text([grids[m] for m in shown], value),
            title=f"{figures.plain_label(model)}: {value.replace('_', ' ')} ({crit})",
        )
    return figs


def layer_grids(analysis, column: str) -> dict:
    """Each model's layer × module table under one criterion (rows of the layer grid only)."""
    grids = {r.model: r.by_layer_module(column) for r in analysis.reports}
    return {m: g[g["layer"].notna()] for m, g in grids.items()}


def other_tabs(
    analysis, shown: tuple, colors: dict, at: str = "", column: str = "changed", named: str = "exact"
) -> tuple[dict, dict]:
    """The sweep / ULP and norms tabs' figures and tables for the models shown, in the page's colours
    (built for the open tab, or at export for all); ``at``: the comparison precision as titles add it. The norms,
    embeddings and head are counted under the page's criterion (``column`` of the tensors table, as the layer grid
    is; ``named``: as titles name it, with the precision): they were exact under a "criterion 1e-05" header."""
    reports = [analysis.report(m) for m in shown]
    # Short titles, the precision on a line of its own: the two charts sit side by side, 274 px each at 1024 px,
    # where "Distance between base and finetuned weights in ULPs" ran past its chart's edge.
    sub = f"<br><sup>compared{at}</sup>" if at else ""
    sweep = pd.concat([r.sweep() for r in reports], ignore_index=True)
    ulp = pd.concat([r.ulp_histogram() for r in reports], ignore_index=True)
    counted = [under(r, column) for r in reports]
    special = pd.concat([r.special_by_module() for r in counted], ignore_index=True)
    return (
        {
            "sweep": figures.tolerance_sweep(
                sweep[sweep["tolerance"].notna()], title=f"Update sparsity against tolerance{sub}", colors=colors
            ),
            "ulp": figures.ulp_histogram(
                ulp,
                colors=colors,
                dtype=ulp_dtype(reports),
                title=f"Base-to-finetuned distance in ULPs{sub}",
            ),
            "special": figures.module_bars(  # under the criterion above, as the table under it
                special, title=f"Norms, embeddings and head: update sparsity ({named})", colors=colors
            ),
        },
        {
            "sweep-table": ("Sparsity per criterion", sweep),
            "special-table": (
                f"Every norm, embedding and head tensor ({named})",
                pd.concat([r.special() for r in counted], ignore_index=True),
            ),
        },
    )


def under(report, column: str):
    """``report`` with each tensor's ``changed`` and ``sparsity`` under the criterion's ``column`` of its tensors
    table (the analysis counts every tensor under every criterion: no other pass), for its per-tensor tables."""
    if column == "changed":
        return report
    t = report.tensors
    counts = t[column]
    return replace(report, tensors=t.assign(changed=counts, sparsity=1.0 - counts / t["numel"].where(t["numel"] > 0)))


def special_changed(report, column: str) -> int:
    """Changed entries outside the layer grid (norms, embeddings, head) under the same criterion."""
    t = report.tensors
    return int(t.loc[t["layer"].isna(), column].sum())


# η choices of the relative criterion (text: a stable URL value); 2⁻⁸ ≈ 0.0039 is bf16's smallest relative step.
ETAS = ["0.0001", "0.001", "0.002", "0.004", "0.008", "0.01", "0.02", "0.05", "0.1"]
# Half the spacing of 1 (torch.finfo(dtype).eps / 2) of each float dtype compared as itself: two different finite
# values of the dtype differ by more than this share of the larger magnitude. Codes (FP8, int8) are compared as
# their dequantised weights in another dtype, so no claim is made for them.
_STEPS = {  # dtype -> (the step as the note writes it, the step)
    "bfloat16": ("2⁻⁸ ≈ 0.0039", 2**-8),
    "float16": ("2⁻¹¹ ≈ 0.00049", 2**-11),
    "float32": ("2⁻²⁴ ≈ 6.0e-8", 2**-24),
    "float64": ("2⁻⁵³ ≈ 1.1e-16", 2**-53),
}
RELATIVE_STEPS = {d: (SHORT_DTYPES[d], *step) for d, step in _STEPS.items()}  # dtype -> (short name, text, step)


def _eta_text(eta: float) -> str:
    return f"{eta:g}" if eta >= 1e-3 else f"{eta:.4f}".rstrip("0")


def relative_note(eta: float, dtypes: list[str]) -> str:
    """What the relative criterion at ``eta`` means for the ``dtypes`` compared. Where η lies below a dtype's
    smallest relative step, it counts every changed entry of that dtype but sign flips of zero (−0 ↔ +0: the bits
    differ, Δ = 0), so there 'relative' is 'exact' less those; the note says so only of such dtypes."""
    rule = (
        f"Relative criterion at η = {eta:g}: a change with |Δ| ≤ {eta:g}·max(|w|,|w'|) counts as unchanged, "
        f"so only changes large against the weight's own size remain."
    )
    below = [RELATIVE_STEPS[d] for d in dtypes if d in RELATIVE_STEPS and eta < RELATIVE_STEPS[d][2]]
    if not below:
        return rule
    names = " and ".join(name for name, _, _ in below)
    steps = below[0][1] if len(below) == 1 else ", ".join(f"{step} ({name})" for name, step, _ in below)
    larger = next((e for e in ETAS if float(e) >= max(s for _, _, s in below)), ETAS[-1])
    if len(below) == len(dtypes):
        what = (
            f"These weights were compared in {names}, where two different values differ by at least {steps} of "
            f"the larger magnitude. η is below that, so 'relative' counts every changed entry, as 'exact' does, "
            f"except sign flips of zero (−0 ↔ +0)."
        )
    else:
        others = " and ".join(SHORT_DTYPES.get(d, d) for d in dtypes if RELATIVE_STEPS.get(d) not in below)
        what = (
            f"Some weights were compared in {names}, where two different values differ by at least {steps} of the "
            f"larger magnitude. η is below that, so in those tensors 'relative' counts every changed entry except "
            f"sign flips of zero (−0 ↔ +0); in {others} a change up to η·max(|w|,|w'|) counts as unchanged."
        )
    return f"{rule} {what} Choose η ≥ {larger} above to leave out changes that are small against the weight."


def buffer_rows(reports) -> pd.DataFrame:
    """The buffers (rotary frequencies, position ids, causal masks: tensors that are no parameters) the reports
    compared bitwise apart from the weights, one row per model and buffer: name, shape, dtype, entries and
    changed entries (0: unchanged). Quantization scales, listed in the same table of a report, are left out."""
    cols = ["model", "name", "shape", "dtype", "numel", "changed"]
    frames = [r.buffers for r in reports if r.buffers is not None and len(r.buffers)]
    if not frames:
        return pd.DataFrame(columns=cols)
    side = pd.concat(frames, ignore_index=True)
    return side.loc[side["group"] == "buffers", cols].reset_index(drop=True)


def buffers_section(reports) -> None:
    """A closed expander listing the shown models' buffers (:func:`buffer_rows`), where any was compared: the
    buffers note says they are listed under buffers, not counted in the weight sparsity."""
    rows = buffer_rows(reports)
    if rows.empty:
        return
    label = f"Buffers ({len(rows)}): compared bitwise, not counted in the weight sparsity"
    with st.expander(label, icon=":material/list:"):
        ui.table(rows, "buffers-table", "Buffers (not counted in the weight sparsity)")


def experts_section(analysis, shown, colors: dict, at: str = "") -> None:
    """Mixture-of-experts models only: exact sparsity per layer × expert (shared experts apart) and the routers."""
    experts = ui.shared(expert_tables, analysis, tuple(shown))
    if all(e.empty for e in experts.values()):
        return
    st.subheader("Experts")
    for col, model in zip(st.columns(len(shown)), shown, strict=True):
        with col:
            ui.chart(
                moe.expert_heatmap(
                    experts[model], title=f"{figures.plain_label(model)}: sparsity per expert (exact{at})"
                ),
                key=f"experts-{model}",
            )
    ui.chart(
        moe.router_bars(pd.concat([routers(analysis.report(m)) for m in shown], ignore_index=True), colors=colors),
        key="routers",
    )
    ui.table(pd.concat(experts.values(), ignore_index=True), "experts-table", "Per layer × expert")


def expert_tables(analysis, shown: tuple) -> dict:
    return {m: by_expert(analysis.report(m)) for m in shown}


def drill_down(ws, reports, crit: str, eta: float, said: list[str]) -> None:
    a, b = st.columns(2)
    models = list(reports)  # (by hand, as the models side by side above)
    linked = uilogic.url_choice(st.query_params.get("dd_model"), models, models[0])
    model = a.selectbox("Model", models, index=models.index(linked), key="dd_model")
    ui.in_url("dd_model", model, models[0])
    names = matrix_names(reports[model])
    ui.need(bool(names), "No 2-D tensors to show.")
    # (by hand too: the matrices are the model's, and one another model lacks fell back while the URL kept it)
    usual = names[default_matrix(names)]
    key = uilogic.url_choice(st.query_params.get("dd_tensor"), names, usual)
    key = b.selectbox("Matrix", names, index=names.index(key), key="dd_tensor")
    ui.in_url("dd_tensor", key, usual)
    figs, line = drill_parts(ws, reports, crit, eta, model, key)
    st.caption(line(ui.plain))
    said.append(f"One matrix: {line(str)}")
    # side by side, or one under the other for a matrix twice as wide as tall or more: half the page gave a
    # 96 × 384 down_proj a strip of 100 × 25 px at 1024 px, its row labels over each other (walk8)
    mats = reports[model].tensors
    wide = wide_matrix(mats.loc[mats["key"] == key, "shape"].iloc[0])  # (as drill_parts finds its row)
    c, d = (st.container(),) * 2 if wide else st.columns(2)
    with c:
        ui.chart(figs["drill-image"], key="drill-image")
    with d:
        ui.chart(figs["drill-delta"], key="drill-delta")
    ui.chart(figs["drill-ratios"], key="drill-ratios")


def drill_links(reports) -> None:
    """One matrix's model and matrix in a link naming nothing on offer here: said (:func:`ui.said_once`) with the
    ones shown instead (the tab's, or the export's from another tab: :func:`drill_export`)."""
    models, q = list(reports), st.query_params
    asked = q.get("dd_model")
    model = uilogic.url_choice(asked, models, models[0])
    stale = asked not in (None, "") and asked not in models
    line = uilogic.stale_link_line("model", asked, "the models compared here", models[0]) if stale else None
    ui.said_once("dd_model", line, st.session_state.get("dd_model", model))
    model = uilogic.url_choice(st.session_state.get("dd_model"), models, model)  # the tab's, once drawn
    names, asked = matrix_names(reports[model]), q.get("dd_tensor")
    usual = names[default_matrix(names)] if names else None
    stale = bool(names) and asked not in (None, "") and asked not in names
    line = uilogic.stale_link_line("matrix", asked, f"the matrices of {model}", usual) if stale else None
    ui.said_once("dd_tensor", line, st.session_state.get("dd_tensor", uilogic.url_choice(asked, names, usual)))


def wide_matrix(shape: str) -> bool:
    """Whether a matrix of ``shape`` ("96x384", as the tensors table writes it) is twice as wide as tall or more."""
    rows, cols = (int(x) for x in str(shape).split("x")[:2])
    return cols >= 2 * rows


def matrix_names(report) -> list[str]:
    """The 2-D tensors of a model's report, named as the picker offers them."""
    return list(report.tensors.loc[report.tensors["ndim"] == 2, "key"])


def default_matrix(names: list[str]) -> int:
    """The matrix the picker starts on: the first query projection (attention's own), else the first."""
    return next((i for i, n in enumerate(names) if "q_proj" in n or "c_attn" in n), 0)


def drill_parts(ws, reports, crit: str, eta: float, model: str, key: str) -> tuple[dict, Callable[..., str]]:
    """One matrix's three charts (which entries changed, Δ, row and column shares), read from the two checkpoints
    (the pair the analysis compared, by its ``key``: each side's own name, a resized vocabulary's shared rows; at
    most 128 cells a side drawn), and the line that names it, given how to write the names in it (the page:
    :func:`ui.plain`, a stranger's text; the export: as they are, escaped there)."""
    from subnetviz.analysis.drill import matrix_update

    mats = reports[model].tensors
    row = mats[mats["key"] == key].iloc[0]
    upd = matrix_update(
        ws.base, dict(ws.finetuned)[model], key, criterion=crit, eta=eta, max_side=128, precision=ws.precision
    )

    at = ui.compared_at(ws, say=False)  # the sidebar's comparison precision, as the analysis (said atop the page)
    named = criterion_label(crit, eta) + at

    def line(esc: Callable[[str], str]) -> str:  # the matrix named as in the picker, then as in each file
        base_name, ft_name = upd.names
        if base_name != ft_name:  # (no model. prefix on one side, a head one side ties to its embedding)
            stored = f" (base: {esc(base_name)}, finetune: {esc(ft_name)})"
        else:
            stored = f" (stored as {esc(base_name)})" if base_name != key else ""
        share = percent_text([100 * upd.n_changed / max(1, int(row["numel"]))], decimals=2)[0]  # 1 in 10^5: not 0.00
        resized = f" · {esc(upd.note)}" if upd.note else ""  # the analysis' own line: shared rows only
        return (
            f"{esc(key)}{stored} · shape {row['shape']} · criterion {named} · {upd.n_changed:,} of "
            f"{int(row['numel']):,} changed ({share} %) · "
            f"largest |Δ| {figures.format_number(row['max_abs_delta'])}{resized}"
        )

    subject = f"{model} · {key}"  # in each chart: the export and a paper figure have no picker to say it
    if upd.rows_compared is not None:
        subject += f" (the {upd.rows_compared:,} shared rows)"
    # the criterion and the precision under the titles, with the matrix (in the title, "Which entries changed
    # (relative η = 0.0039 at bf16)" ran 110 px past its half-page chart at 1024 px); each chart still names them
    crit_axes = {"subject": f"{subject} · {named}", "orientation": upd.orientation}
    delta_axes = {"subject": f"{subject} · compared{at}" if at else subject, "orientation": upd.orientation}
    figs = {
        "drill-image": figures.matrix_image(upd.changed, title="Which entries changed", **crit_axes),
        "drill-delta": figures.delta_image(upd.delta, **delta_axes),
        "drill-ratios": figures.row_col_ratios(
            upd.row_share, upd.col_share, title="Share of entries changed per row and per column", **crit_axes
        ),
    }
    return figs, line


def drill_export(ws, reports, crit: str, eta: float, model: str | None, key: str | None) -> tuple[dict, list[str]]:
    """One matrix's charts for the export from another tab, for the model and matrix the URL names (else the
    tab's first choices), and its line as a note."""
    model = uilogic.url_choice(model, list(reports), next(iter(reports)))
    names = matrix_names(reports[model])
    if not names:
        return {}, [f"One matrix: {model} has no 2-D tensors to show."]
    key = uilogic.url_choice(key, names, names[default_matrix(names)])
    try:
        figs, line = drill_parts(ws, reports, crit, eta, model, key)
    except SubnetvizError as exc:  # (e.g. a checkpoint changed or gone since): the other tabs are still exported
        return {}, [f"One matrix: {model} · {key} could not be read, so it is not in this export: {exc}"]
    return figs, [f"One matrix: {line(str)}"]


ui.run_page(body)
