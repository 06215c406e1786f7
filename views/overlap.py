"""Overlap: is it the same subnetwork every time? Venn, UpSet, pairwise matrices, per layer, consensus."""

import streamlit as st

from subnetviz import figures, ui, uilogic
from subnetviz.analysis.updates import mask_path
from subnetviz.figures.overlap import cut_labels, matrices_per_row
from subnetviz.figures.style import subtitle


def body() -> None:
    st.title("Overlap of subnetworks")
    st.caption(
        "o1 = |A∩B|/|A| (share of the row mask inside the column mask); Jaccard = |A∩B|/|A∪B|. "
        "Per-tensor chance: masks drawn independently inside each tensor t at that tensor's densities pₜ, qₜ, "
        "expecting Σₜ nₜ·pₜ·qₜ entries in both; it colours the × per-tensor chance view. The paper's chance "
        "(App. E) is global, one density per mask over the whole model: o1's is B's density, Jaccard's "
        "pq/(p+q−pq). They differ by the masks' parameter-weighted covariance of pₜ and qₜ: where the two "
        "masks' densities rise and fall together across tensors (as for finetunes of one model) the global chance "
        "is lower and its × chance higher; where they go opposite ways (one mask mostly attention, the other mostly "
        "MLP) it is higher and its × chance lower. The tables give both."
    )
    ws = ui.workspace()
    c1, c2 = st.columns([1, 3])
    # A link's criterion, masks, view, tab and pair this server does not offer are said, with what is shown instead:
    # they were swapped for the defaults without a word (another comparison than the sender's).
    ui.said_if_not_offered("ov_crit", CRITERIA, "criterion", f"the criteria on offer ({', '.join(CRITERIA)})")
    crit = c1.selectbox(
        "Update masks at",
        CRITERIA,
        key="ov_crit",
        bind="query-params",
        help="Exact = bitwise changed; a tolerance counts |Δ| ≤ tol as unchanged.",
    )
    sources: dict[str, str] = {}
    deltas: set[str] = set()  # the update masks, made at the sidebar's comparison precision
    if ws.base and ws.finetuned:
        analysis = ui.update_analysis(ws, mask_tolerance=None if crit == "exact" else float(crit))
        sources.update({f"Δ {m}": str(mask_path(analysis.source_dir, m)) for m in analysis.labels})
        deltas = set(sources)
    sources.update({label: path for label, path in ws.masks})
    # each update mask in its model's colour (as on every page: by the model's place in the workspace), the saved
    # masks in colours after the models', ones no model has; keyed by label, whichever masks are chosen
    models = [f"Δ {m}" for m in analysis.labels] if deltas else []
    colors = figures.colors_after(models, [lbl for lbl in sources if lbl not in deltas])
    ui.need(len(sources) >= 2, "Overlap needs at least two masks: choose finetuned checkpoints or saved masks.")
    default = list(sources)[: min(3, len(sources))]
    # The masks (and the Per layer tab's pair) are read from the URL and written back by hand (ui.in_url): bound, a
    # finetune removed in the sidebar dropped its mask while the URL kept it, and a link made from it opened other
    # masks than the sender's page showed once the finetune was back.
    asked = ui.linked_many("ov_masks", list(sources), default, "mask", "the masks on offer here")
    linked = asked[:MAX_CHOSEN]
    cut = len(asked) > MAX_CHOSEN  # (cut to the first 8 without a word: another comparison than the sender's)
    line = f"The link names {len(asked)} masks; the first {MAX_CHOSEN} are compared, at most {MAX_CHOSEN} at a time."
    ui.said_once("ov_masks_cut", line if cut else None, st.session_state.get("ov_masks", linked))
    chosen = c2.multiselect(
        f"Masks (2–{MAX_CHOSEN})",
        list(sources),
        default=linked,
        key="ov_masks",
        max_selections=MAX_CHOSEN,
    )
    ui.in_url("ov_masks", chosen, default)
    if len(sources) > MAX_CHOSEN:  # e.g. 17–32 finetunes: the analysis keeps every mask, the page compares 8
        st.caption(f"{len(sources)} masks to choose from; this page compares up to {MAX_CHOSEN} of them at a time.")
    ui.need(len(chosen) >= 2, "Pick at least two masks.")
    # once per masks for every session, here or on the session's Ray cluster (jobs.cluster_pages)
    overlap = ui.mask_files_overlap([sources[c] for c in chosen], tuple(chosen))
    ui.need(overlap.common > 0, "These masks share no tensor names; they are over different models.")
    notes = getattr(overlap, "notes", ())
    ui.need(
        overlap.report is not None,
        "No overlap to show: " + " ".join(ui.plain(n) for n in notes) if notes else "No overlap to show.",
    )
    said: list[str] = []  # the notes that qualify the numbers: on the page and in its export
    if overlap.partial:
        ui.note(f"Compared over the {overlap.common} tensors present in every chosen mask.", said)
    for note in notes:  # names matched without a prefix, tensors compared over shared rows or left out
        ui.note(note, said)
    report = overlap.report
    compared = len(report.tensor_names)  # the tensors compared (those left out for their shapes are not)
    empty = [lbl for lbl, n in zip(report.sizes["label"], report.sizes["count"], strict=True) if n == 0]
    # A mask empty over the tensors compared here may hold entries elsewhere (a W3 copy's linear layers, not
    # compared, beside a W4 one's 72,248 changed entries): "nothing changed" only of a mask empty in its file.
    truly = {lbl for lbl in empty if ui.mask_summary(sources[lbl])["count"] == 0}
    if truly:  # its o1 row is 0 / 0: grey cells, said why
        ui.note(
            f"{', '.join(lbl for lbl in empty if lbl in truly)}: no entry in the mask (nothing changed in the "
            'tensors it covers), so its share inside another mask (o1, its row) is undefined: a grey "—".',
            said,
        )
    if len(truly) < len(empty):
        ui.note(
            f"{', '.join(lbl for lbl in empty if lbl not in truly)}: no entry in the {compared:,} tensors "
            "compared here (its entries lie in tensors not compared), so its share "
            'inside another mask (o1, its row) is undefined here: a grey "—".',
            said,
        )
    # (the URL names the view as the radio does, "× per-tensor chance"; the session holds "ratio")
    raw, names = st.query_params.get("ov_view"), list(VIEW_NAMES.values())
    stale = raw not in (None, "") and raw not in names
    line = uilogic.stale_link_line("view", raw, f"this page's views ({', '.join(names)})", names[0]) if stale else None
    ui.said_once("ov_view", line, st.session_state.get("ov_view", "value"))
    view = st.radio(
        "Pairwise and per-layer values",
        ["value", "ratio"],
        horizontal=True,
        key="ov_view",
        bind="query-params",
        format_func=VIEW_NAMES.get,
    )
    # Sections as tabs that draw only when open: 1–3 charts per view instead of six (faster to show).
    precision = ui.compared_at(ws).strip() if deltas.intersection(chosen) else ""  # (said here: above the tabs)
    pairs = [f"{r.a} ∩ {r.b}" for r in report.pairwise.itertuples()]
    # the Per layer tab's pair: said whichever tab is open (the export draws it)
    asked = st.query_params.get("ov_pair")
    stale = asked not in (None, "") and asked not in pairs
    line = uilogic.stale_link_line("pair", asked, "the pairs of the masks chosen", pairs[0]) if stale else None
    ui.said_once("ov_pair", line, st.session_state.get("ov_pair", uilogic.url_choice(asked, pairs, pairs[0])))
    ui.said_if_not_offered("ov_tab", TABS, "tab", "this page's tabs")
    tabs = st.tabs(TABS, key="ov_tab", on_change="rerun", bind="query-params")
    hues = tuple(colors[c] for c in chosen)
    # the criterion in each chart (a downloaded figure has no picker to say it): update masks only, saved ones are
    # as saved
    # and the sidebar's comparison precision they were made at (said once above the tabs)
    made = " ".join(filter(None, (f"at tolerance {crit}" if crit != "exact" else "", precision)))
    at = f"update masks {made}" if made and deltas.intersection(chosen) else ""
    for tab, name in zip(tabs, TABS, strict=True):
        if not tab.open:
            continue
        with tab:
            if name == "Sets" and report.union == 0 and len(chosen) in (2, 3):
                st.caption(
                    "No mask has any entry (every chosen mask is empty): there is no Venn diagram to draw."
                    if len(truly) == len(chosen)
                    else f"No chosen mask has any entry in the {compared:,} tensors compared here: there is "
                    "no Venn diagram to draw."
                )
            if name == "Per layer":
                pair = uilogic.url_choice(st.query_params.get("ov_pair"), pairs, pairs[0])
                pair = st.selectbox("Per-layer view of the pair", pairs, index=pairs.index(pair), key="ov_pair")
                ui.in_url("ov_pair", pair, pairs[0])
                figs, tables = ui.shared(tab_parts, overlap, tuple(chosen), view, name, pair, at, hues)
                if overlap.packed_experts:  # gpt-oss, Llama-4, Granite: every expert of a layer in one tensor
                    st.caption(packed_note(overlap.packed_experts))
            else:
                figs, tables = ui.shared(tab_parts, overlap, tuple(chosen), view, name, None, at, hues)
            draw(figs, tables, per_row(name, chosen, view))
    asked = st.query_params.get("ov_pair")
    params = {"masks": chosen, "view": VIEW_NAMES[view]}
    if deltas.intersection(chosen):  # update masks: of the base, at the criterion and the comparison precision
        # (saved masks are as saved: none of the three is theirs)
        params = {"base": ws.base, "masks": chosen, "criterion": crit, "view": VIEW_NAMES[view]}
        params["precision"] = ws.precision or "stored dtype"
    if overlap.packed_experts:  # the per-layer chart is in the export whichever tab is open
        said.append(packed_note(overlap.packed_experts))
    ui.export_button(
        "Overlap",
        params,
        ["venn", "upset", "pw-o1", "pw-jaccard", "layer-overlap", "expert-overlap", "consensus"],
        ["pairwise", "layer-table", "consensus-table"],
        more=lambda: every_tab(overlap, tuple(chosen), view, asked if asked in pairs else pairs[0], at, hues),
        notes=said,
    )


def packed_note(n: int) -> str:
    return (
        f"{n} tensor(s) hold every expert of their layer (packed experts): they count in the layer × module view, "
        "not split per expert here; the Update sparsity page's Experts section splits them."
    )


TABS = ["Sets", "Pairwise", "Per layer", "Consensus"]
CRITERIA = ["exact", "1e-08", "1e-07", "1e-06", "1e-05", "0.0001"]  # the update masks' tolerances on offer
VIEW_NAMES = {"value": "values", "ratio": "× per-tensor chance"}  # the view as the radio and the export name it
MAX_CHOSEN = 8  # masks compared at once (the N-way counting takes up to 16; beyond 8 the UpSet is unreadable)
# the pairwise table's global chance columns, named as the paper's (App. E) beside the per-tensor ones
PAPER_CHANCE = {
    c: f"{c}_global_paper"
    for c in ("o1_chance", "o2_chance", "jaccard_chance", "ratio_over_chance", "expected_intersection")
}


def per_row(name: str, chosen: list, view: str) -> int:
    """How many of tab ``name``'s charts share a row. Pairwise: o1 and Jaccard side by side while a half-page chart
    at 1024 px leaves their cells readable, else one under the other (eight masks left 8 px cells, the names drawn
    over one another). Per layer: one a row, the layer × expert grid under the layer × module one (side by side at
    1024 px, their titles ran past them and the module kinds were drawn over one another)."""
    if name == "Pairwise":
        return matrices_per_row(figures.compact_labels(chosen)[0], view)
    return 1 if name == "Per layer" else 2


def draw(figs: dict, tables: dict, per: int = 2) -> None:
    """A tab's charts, ``per`` to a row (a lone last one full width), then its tables."""
    keys = list(figs)
    for start in range(0, len(keys), per):
        row = keys[start : start + per]
        for col, key in zip(st.columns(len(row)), row, strict=True):
            with col:
                ui.chart(figs[key], key=key)
    for key, (caption, frame) in tables.items():
        ui.table(frame, key, caption)


def tab_parts(
    overlap, chosen: tuple, view: str, name: str, pair: str | None = None, at: str = "", hues: tuple = ()
) -> tuple[dict, dict]:
    """One tab's figures and tables (key -> figure, key -> (caption, frame)), shared by every session; ``at``: the
    update masks' criterion, under each title ("" at exact or with no update mask chosen); ``hues``: each chosen
    mask's colour, in ``chosen``'s order (default: by place in ``chosen``)."""
    report = overlap.report
    # Long labels (masks of a run: "SupSup task 1 mask (d=0.05, seed 0) · <run id>") drawn short on the
    # charts, what they share under each title; the tables keep the full labels.
    short, shared = figures.compact_labels(chosen)
    under = " · ".join(x for x in (figures.plain_label(shared) if shared else "", at) if x)
    sub = f"<br><sup>{under}</sup>" if under else ""
    crit = f" · {at}" if at else ""  # after a subtitle of its own (the pair)
    colors = dict(zip(short, hues, strict=True)) if hues else None
    if name == "Sets":
        figs = {}
        # Venn beside the UpSet; beyond three masks the UpSet alone, full width. No Venn of empty masks (no circle)
        if len(chosen) in (2, 3) and report.union > 0:
            venn = figures.venn2 if len(chosen) == 2 else figures.venn3
            figs["venn"] = venn(
                report.venn_regions()["count"].to_numpy(),
                short,
                title=f"Overlap (area-proportional){sub}",
                colors=colors,
            )
        regions = report.regions.assign(members=report.regions["code"])  # bit i = chosen[i] = short[i]
        figs["upset"] = figures.upset(regions, short, title=f"Intersections of masks (UpSet){sub}", colors=colors)
        return figs, {}
    if name == "Pairwise":  # no o2 panel: o2(A, B) = o1(B, A), the o1 matrix read down its columns
        # (title, what opens the line under it): "in the column mask" under o1's title, as "× per-tensor chance"
        # is: in one line the title ran 51 px past a chart half the page wide at 1024 px
        titles = {"o1": ("o1: share of the row mask", "in the column mask"), "jaccard": ("Jaccard |A∩B| / |A∪B|", "")}
        to_short = dict(zip(chosen, short, strict=True))
        pairwise = report.pairwise.assign(a=report.pairwise["a"].map(to_short), b=report.pairwise["b"].map(to_short))
        figs = {
            f"pw-{metric}": figures.pairwise_matrix(
                pairwise,
                value=metric,
                view=view,
                labels=short,
                title=title
                + subtitle(" · ".join(x for x in (lead, "× per-tensor chance" if view == "ratio" else "", under) if x)),
            )
            for metric, (title, lead) in titles.items()
        }
        table = report.pairwise.rename(columns=PAPER_CHANCE)
        caption = "Pairwise overlap against the per-tensor chance and the paper's global chance (App. E)"
        return figs, {"pairwise": (caption, table)}
    if name == "Per layer":
        # the pair whose text was chosen (labels are names from folders and masks: they may hold " ∩ " themselves)
        pa, pb = next(
            ((r.a, r.b) for r in report.pairwise.itertuples() if f"{r.a} ∩ {r.b}" == pair),
            (report.pairwise["a"].iloc[0], report.pairwise["b"].iloc[0]),
        )
        one = pair_by_layer(report, pa, pb)
        what = "Jaccard × per-tensor chance" if view == "ratio" else "Jaccard"
        # The pair under the title (the exported dashboard and the paper figure name it), on a line of its
        # own: two run labels in one line ran past the chart's right edge. Its names cut as the pairwise matrices
        # cut them (two 36-character names ran 145 px past a half-page chart), the criterion on a line after it.
        cuts = dict(zip(chosen, cut_labels([figures.plain_label(c) for c in chosen])[0], strict=True))
        named = subtitle(" ∩ ".join(cuts.get(x, figures.plain_label(x)) for x in (pa, pb)), at)
        figs = {
            "layer-overlap": figures.overlap_layer_heatmap(
                one[one["layer"].notna()].assign(mtp=lambda d: d["layer"].isin(overlap.mtp_layers)),
                view=view,
                title=f"{what} by layer and module{named}",
            )
        }
        if overlap.experts is not None:  # mixture-of-experts masks: the pair per layer × expert
            figs["expert-overlap"] = figures.overlap_layer_heatmap(
                pair_by_layer(overlap.experts, pa, pb).assign(mtp=lambda d: d["layer"].isin(overlap.mtp_layers)),
                view=view,
                title=f"{what} per layer × expert{named}",
                x_title="expert",
            )
        # the heatmap's cells as numbers (o1, o2 and both chances beside Jaccard), one row per layer × module
        cells = one.drop(columns="group")[["layer", "module", *one.columns.drop(["group", "layer", "module"])]]
        caption = f"{pair} by layer and module, against the per-tensor chance and the paper's global chance"
        return figs, {"layer-table": (caption, cells.rename(columns=PAPER_CHANCE).reset_index(drop=True))}
    # Consensus: how many masks agree on each entry, against independent masks: per tensor (drawn), and global
    chance = report.consensus_chance()
    overall = report.consensus_overall()
    # the chart's chance markers as numbers: the expected count and the observed count over it (× chance)
    table = overall.merge(chance, on="k", how="left").rename(
        columns={"expected_per_tensor": "expected_count_per_tensor", "expected_global": "expected_count_global"}
    )
    table["ratio_over_chance_per_tensor"] = table["count"] / table["expected_count_per_tensor"]
    table["ratio_over_chance_global"] = table["count"] / table["expected_count_global"]
    # what the markers are on a line under the title (after it, the title ran 43 px past the page's width at 1024 px)
    # with the criterion; the chart adds a line of its own, the parameters in no mask
    title = "Consensus: in how many masks is a changed parameter?" + subtitle("markers: per-tensor chance" + crit)
    caption = "Entries changed in exactly k of the masks, against independent masks: per-tensor and global chance"
    return (
        {"consensus": figures.consensus_bars(overall, title=title, chance=chance)},
        {"consensus-table": (caption, table)},
    )


def pair_by_layer(report, a: str, b: str):
    """The pair (a, b)'s rows of ``report.by_group``, its (layer, module) group split into two columns."""
    by = report.by_group
    one = by[(by["a"] == a) & (by["b"] == b)]
    return one.assign(layer=one["group"].map(lambda g: g[0]), module=one["group"].map(lambda g: g[1]))


def every_tab(overlap, chosen: tuple, view: str, pair: str, at: str = "", hues: tuple = ()) -> tuple[dict, dict]:
    """Every tab's figures and tables, for the export (the closed tabs are built on click only)."""
    figs, tables = {}, {}
    for name in TABS:
        f, t = tab_parts(overlap, chosen, view, name, pair, at, hues)
        figs.update(f)
        tables.update(t)
    return figs, tables


ui.run_page(body)
