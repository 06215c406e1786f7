"""Spectra: singular values and rank of each update matrix, against a random-sparse baseline."""

from functools import partial

import pandas as pd
import streamlit as st

from subnetviz import figures, ui, uilogic
from subnetviz.errors import CastRangeError, NonFiniteError


def body() -> None:
    st.title("Spectra of updates")
    st.caption(
        "Rank at torch's default tolerance (σ > σ₁·max(m,n)·ε_fp32, as the paper's script); effective rank = "
        "smallest k holding 99 % of Σσ²; stable rank = ‖Δ‖F²/‖Δ‖₂². The random baseline scatters the same "
        "Δ entries uniformly over the matrix: a sparse random matrix is full-rank too."
    )
    ws = ui.workspace()
    ui.need_pair(ws)
    # Each tab's choices are read from the URL and written back by hand (_linked), whichever tab is open: a closed
    # tab's control is not drawn, and bound to the URL its entry left the URL as its tab closed (a link copied on
    # the Δ tab opened the Subspaces tab at K = 16, left, while the sender's page and export kept 32, right). A link's
    # entry naming nothing on offer here is said, with what is shown instead. (The model's options are the sidebar's
    # finetunes: bound, one removed there fell back while the URL kept it, and a link made from it opened another
    # model than the sender's page showed once the model was back.)
    ks = ", ".join(map(str, K_OPTIONS))
    models = list(ws.labels)
    sub = (
        _linked("sub_k", K_OPTIONS, 16, "K", f"the Subspaces tab's K values ({ks})"),
        _linked("sub_model", models, models[0], "model", "the finetunes in the sidebar"),
        _linked("sub_side", SIDES, SIDES[0], "side", f"the Subspaces tab's sides ({', '.join(SIDES)})"),
    )
    view = _linked("spec_view", VIEWS, VIEWS[0], "view", "the Spectra of Δ tab's views")
    ui.said_if_not_offered("spec_tab", TABS, "tab", "this page's tabs")
    # Tabs that draw only when open: the subspace pass decomposes every weight, not only the updates.
    tabs = st.tabs(TABS, key="spec_tab", on_change="rerun", bind="query-params")
    if tabs[1].open:
        with tabs[1]:
            subspaces(ws, *sub)
    if tabs[0].open:
        with tabs[0]:
            updates(ws, view, sub)


TABS = ["Spectra of Δ", "Subspaces of W_base vs W_ft"]


def _linked(key: str, options: list, default, what: str, among: str):
    """The value a tab's control ``key`` shows: its own in this session (while its tab is open), else the one shown
    last (Streamlit drops a control's value as its tab closes), else the one the link names, else ``default``;
    written into the URL whichever tab is open (left out where it is the ``default``, as a bound control leaves it).
    A link's entry naming none of ``options`` (compared as text) is said, with the one shown (``what``, ``among``:
    :func:`~subnetviz.uilogic.stale_link_line`)."""
    value = ui.linked(key, options, what, among, default=default)
    ui.in_url(key, str(value), str(default))
    return value


K_OPTIONS, SIDES = [4, 8, 16, 32, 64], ["left", "right"]


def subspaces(ws, k: int, model: str, side: str) -> None:
    from subnetviz.analysis.subspaces import GRAM_SIDE, SubspaceOptions

    st.caption(
        "Principal angles θᵢ = arccos σᵢ(U_baseᵀU_ft) between the top-K singular subspaces of W_base and "
        "W_ft (arXiv 2508.16546: RL rotates singular vectors, barely moves singular values); σ ratios "
        "σᵢ(W_ft)/σᵢ(W_base), i ≤ K (2509.17866); the share of the update inside the principal weights "
        "(largest |rank-K reconstruction of W_base|, as many as changed) against chance = the update density "
        "(2511.08567: RL avoids principal weights). Float64 Gram; randomized SVD (refined in float64) only for a "
        f"matrix with a side over {SubspaceOptions().max_dim} and the other over {GRAM_SIDE} (the embeddings of "
        "14B-and-larger models)."
    )
    # the sidebar's comparison precision, as the update mask and the Δ take it: said atop the tab
    ui.compared_at(ws)
    c1, c2, c3 = st.columns(3)
    # each shown as read (body: _linked), the model's options the sidebar's finetunes
    k = c1.selectbox("K (top singular directions)", K_OPTIONS, index=K_OPTIONS.index(k), key="sub_k")
    models = list(ws.labels)
    model = c2.selectbox("Model", models, index=models.index(model), key="sub_model")
    side = c3.radio("Side", SIDES, index=SIDES.index(side), horizontal=True, key="sub_side")
    bar, progress = ui.progress_bar("Decomposing every weight matrix of the base and the finetuned models")
    try:
        data = ui.heavy(
            subspaces_key(ws, int(k)),
            lambda: subspaces_cached(ws, int(k)),
            lambda: uilogic.subspaces_cost(ws, int(k)),
            lambda: subspace_data(ws, int(k), progress),
            planned=True,  # (one decomposition at a time in this server: each checks its memory against what is free)
            recheck=partial(memory_skip_check, ws, int(k)),  # (comparisons skipped for memory: again once it is free)
        )
    # a finetune holding NaN/Inf, or past a dtype's range at its pair's precision: left out, the others compared (as
    # the Δ tab does)
    except (NonFiniteError, CastRangeError) as exc:
        ui.leave_out_nonfinite(ws, exc, partial(subspaces_key, k=int(k)))
    figs, tables, notes = subspace_parts(ws, int(k), model, side, data)
    bar.empty()
    said: list[str] = []  # the notes that qualify the numbers: on the page and in its export
    for note in notes:  # skips for lack of memory, packed experts left out, the randomized path, zero matrices
        ui.note(note, said)  # (tensor names: shown as text)
    a, b = st.columns(2)
    with a:
        ui.chart(figs["sub-angles"], key="sub-angles")
    with b:
        ui.chart(figs["sub-principal"], key="sub-principal")
    ui.chart(figs["sub-curves"], key="sub-curves")
    ui.table(tables["subspaces-table"][1], "subspaces-table", tables["subspaces-table"][0])
    # The export also holds the closed tab (Spectra of Δ) under the selections in the URL.
    # (only the workspace's models, as delta_parts draws them: a URL's other names were listed in the parameters and
    # named rank heatmaps that were never drawn, so the export lacked them without a word)
    chosen = list(dict.fromkeys(m for m in st.query_params.get_all("spec_models") if m in ws.labels)) or ws.labels[:1]
    layer, module = st.query_params.get("spec_layer"), st.query_params.get("spec_module", "all")
    ui.export_button(
        "Spectra",
        {
            "base": ws.base,
            "K": int(k),
            "model": model,
            "side": side,
            "Δ models": chosen,
            # the comparison precision of the Δ spectra and of the subspaces alike (with none chosen, each pair at
            # the update mask's dtype: the notes say where a side was rounded to it)
            "precision": ws.precision or "stored dtype",
        },
        ["sub-angles", "sub-principal", "sub-curves", "spectra"]
        + [f"{kind}-{m}" for m in chosen for kind in ("eff", "stable")],
        ["subspaces-table", "spectra-table"],
        more=partial(delta_parts, ws, tuple(chosen), layer, module),
        notes=said,
    )


def subspaces_key(ws, k: int) -> tuple:
    """The tab's key of its analysis at ``k`` of the workspace ``ws`` (:func:`ui.heavy`)."""
    return ("subspaces", ui.fingerprints(ws), tuple(ws.labels), int(k), ws.device, ws.precision)


def subspace_options(ws, k: int):
    """The subspaces' options at ``k`` and the sidebar's comparison precision: each pair compared at the dtype the
    update mask and the Δ use (the precision was not passed, so with bf16 chosen the subspaces counted an fp32 pair's
    every entry changed where the mask held 22)."""
    from dataclasses import replace

    return replace(uilogic.subspace_options(k), precision=ws.precision)


def subspaces_cached(ws, k: int) -> bool:
    """Whether the tab's analysis at ``k`` and the sidebar's precision is in the disk cache (headers only)."""
    from subnetviz.analysis.subspaces import is_cached

    opts = subspace_options(ws, k)
    return is_cached(ws.base, list(ws.paths), labels=list(ws.labels), options=opts, device=ws.device)


def memory_skip_check(ws, k: int, data: tuple):
    """None when the tab's analysis ``data`` skipped no comparison for lack of memory; else a check of whether it
    still stands, for the app's memo: its cache entry is the one it was read from and the disk cache would serve
    it as it is (:func:`subspaces_cached`: not while memory allows a comparison it skipped). Kept as final, the
    skips stayed on the tab for the server's life, after the disk cache had computed them."""
    from subnetviz.errors import SubnetvizError

    if not data[0]["method"].astype(str).str.startswith("skipped").any():
        return None
    stamp = entry_stamp(ws, k)

    def stands() -> bool:
        try:
            return entry_stamp(ws, k) == stamp and subspaces_cached(ws, k)
        except SubnetvizError:  # (unreadable now: computed again, which says what is wrong)
            return False

    return stands


def entry_stamp(ws, k: int) -> str:
    """The stamp of the manifest of the tab's cache entry at ``k`` (headers only): a new copy is a new stamp."""
    from subnetviz.cache import MANIFEST, file_stamp

    return file_stamp(subspaces_entry(ws, k).folder / MANIFEST)


def subspaces_entry(ws, k: int):
    """The tab's disk-cache entry at ``k`` and the sidebar's precision, as ``cached_subspaces`` finds it."""
    from subnetviz.analysis.subspaces import _entry

    return _entry(ws.base, list(ws.paths), list(ws.labels), subspace_options(ws, k), None)[2]


def subspace_data(ws, k: int, progress=None) -> tuple:
    """(rows, vectors, notes) of the subspaces analysis at ``k``: from the disk cache, else computed (and cached)."""
    from subnetviz.analysis.subspaces import cached_subspaces

    # an entry found damaged (by subspaces_cached, the check before this) is computed again: said in the notes
    damaged = subspaces_entry(ws, k).status()[1]
    rows, vectors, notes = cached_subspaces(
        ws.base,
        list(ws.paths),
        labels=list(ws.labels),
        options=subspace_options(ws, k),
        device=ws.device,
        progress=progress,
        with_notes=True,
    )
    ui.need(len(rows) > 0, "No 2-D weight matrices to compare.")
    # Matrices named as on every other page and tab ("layers.0.mlp.down_proj.weight", without the checkpoint's
    # "model." prefix); the CLI's subspaces files keep the checkpoint's own names.
    from subnetviz.checkpoints.naming import strip_prefix

    rows, vectors = (f.assign(name=f["name"].map(strip_prefix)) for f in (rows, vectors))
    return rows, vectors, [damaged, *notes] if damaged else notes


def subspace_parts(ws, k: int, model: str, side: str, data: tuple | None = None, *, export: bool = False) -> tuple:
    """The subspaces tab's figures and table from ``data`` (:func:`subspace_data`), drawn when it is open, or
    built at export from the other tab, where an analysis not computed yet and long is left out with a note:
    an export starts no hour of work."""
    from subnetviz.figures import subspaces as sfig

    if export:
        left = ui.heavy_note(lambda: subspaces_cached(ws, k), lambda: uilogic.subspaces_cost(ws, k))
        if left:
            return {}, {}, [left]
    if data is None:  # (the export: computed here when cached or short, one at a time as the tab computes it)
        data = ui.one_at_a_time(lambda: subspaces_cached(ws, k), lambda: subspace_data(ws, k))
    rows, vectors, notes = data
    sel = rows[rows["model"] == model]
    # the model and the comparison precision in each chart: an export or paper figure has no picker
    which = f"{figures.plain_label(model)}, K = {int(k)}{ui.compared_at(ws, say=False)}"
    figs = {
        # a short first line: in a half-width column the long one lost its unit, "(°)", at 1400 px
        "sub-angles": sfig.angle_heatmap(
            sel[sel["layer"].notna()],
            side=side,
            title=f"Largest principal angle (°)<br><sup>top-K {side} singular subspaces · {which}</sup>",
        ),
        # (on two lines: in a half-width column at 1024 px one line was cut at "principal-weig")
        # (named in the figure picker as one line: its break is for width only, not a " · ")
        "sub-principal": sfig.principal_overlap_scatter(
            sel, title=f"Update mask inside the<br>principal weights vs chance<br><sup>{which}</sup>"
        ).update_layout(meta={"name": f"Update mask inside the principal weights vs chance · {which}"}),
        # the changed matrices only (an unchanged one's angles are 0 by definition), those without angles said
        "sub-curves": sfig.rotated_curves(
            sel,
            vectors[vectors["model"] == model],
            side=side,
            n=6,
            title=f"{figures.plain_label(model)}: principal angles of the most rotated changed matrices (at most six)"
            f"{ui.compared_at(ws, say=False)}",
        ),
    }
    table = ("Principal angles, σ ratios and principal-weight overlap per matrix", rows)
    # matrices whose base (or finetune) is all zero: no angles, a blank heatmap cell, said (on the page and export)
    zero = sfig.zero_matrix_note(rows)
    return figs, {"subspaces-table": table}, [*notes, *([zero] if zero else [])]


def delta_parts(ws, chosen: tuple, layer: str | None, module: str) -> tuple:
    """The Spectra of Δ tab's figures, table and notes for the export (on click only): both views, a chart the
    page would not draw (every matrix in it unchanged) left out with the page's words; an analysis not computed
    yet and long is left out with a note."""
    left = ui.heavy_note(
        lambda: uilogic.updates_cached(ws, spectra=True, mask_tolerance=None), lambda: uilogic.spectra_cost(ws)
    )
    if left:
        return {}, {}, [left]
    at = ui.compared_at(ws, say=False)  # the Δ's comparison precision, in the titles
    analysis = ui.one_at_a_time(  # (computed here when short: one at a time, as the tab computes it)
        lambda: uilogic.updates_cached(ws, spectra=True, mask_tolerance=None),
        lambda: uilogic.compute_updates(ws, spectra=True, mask_tolerance=None),
    )
    spec, skipped = spectra_rows(analysis), skipped_rows(analysis)
    if spec is None:
        return {}, {}, list(analysis.notes)
    chosen = tuple(m for m in chosen if m in analysis.labels) or tuple(analysis.labels[:1])
    layers = sorted(int(v) for v in spec["layer"].dropna().unique())
    layer = layer if layer == "all" or uilogic.url_int(layer) in layers else (str(layers[0]) if layers else "all")
    # the view's layer and module as drawn (from another tab they come from the URL, a stale one replaced: a
    # module the layer lacks, or a stranger's text, was named in the export's notes over an empty chart)
    in_layer = spec if layer == "all" else spec[spec["layer"] == uilogic.url_int(layer)]
    module = uilogic.url_choice(module, ["all", *map(str, in_layer["module"].dropna().unique())], "all")
    figs, notes = {}, list(analysis.notes)  # what was compared and how, as the tab says above its views
    notes.append(f"Singular values: {', '.join(chosen)} · layer {layer} · module {module}.")
    notes += [n for n in [skipped_summary(skipped)] if n]
    here = _selected(spec, chosen, layer, module)
    note = unchanged_note(here)
    if note:
        notes.append(f"Singular values: {note}")
    if not len(here) or (here["rank"] > 0).any():
        figs["spectra"] = spectrum_figure(analysis, spec, chosen, layer, module, at)
    grid = spec[spec["model"].isin(chosen) & spec["layer"].notna()]
    grid = grid.assign(layer=grid["layer"].astype(int))
    notes.append(rank_note(spec[spec["model"].isin(chosen)], skipped=_skipped_layers(skipped, chosen)))
    for m in chosen:
        one = grid[grid["model"] == m]
        if len(one) and (one["rank"] == 0).all():  # the page draws no heatmap of zeros: said instead
            notes.append(f"{m}: every layer matrix is unchanged (Δ = 0).")
            continue
        figs[f"eff-{m}"] = figures.rank_measure_heatmap(
            one, "effective_rank_99", title=rank_title(m, "effective_rank_99", at)
        )
        figs[f"stable-{m}"] = figures.rank_measure_heatmap(
            one,
            "stable_rank",
            title=rank_title(m, "stable_rank", at),
            zrange=figures.measure_range(grid, "stable_rank"),
        )
    return figs, {"spectra-table": ("Rank, effective rank and stable rank", spec)}, notes


RANK_MEASURES = {
    "effective_rank_99": ("effective rank", "(99 % of Σσ²)"),
    "stable_rank": ("stable rank", "‖Δ‖F²/‖Δ‖₂²"),
}


def rank_title(model: str, measure: str, at: str = "") -> str:
    """The title of ``model``'s heatmap of ``measure`` (a key of :data:`RANK_MEASURES`): the model and the measure,
    its formula over min(m, n) and the precision (``at``) under it. On one line they ran up to 62 px past a chart
    half the page wide at 1024 px."""
    name, formula = RANK_MEASURES[measure]
    return f"{figures.plain_label(model)}: {name}<br><sup>{formula} / min(m, n){at}</sup>"


def unchanged_note(here) -> str | None:
    """What the Singular values view says of the chosen matrices ``here`` that are unchanged (Δ = 0, no singular
    value to draw): all of them, some, or None."""
    unchanged = int((here["rank"] == 0).sum())
    if not unchanged:
        return None
    if unchanged == len(here):
        return f"The {unchanged:,} matrices chosen are unchanged (Δ = 0): no singular values to draw."
    return f"{unchanged:,} of the matrices chosen are unchanged (Δ = 0): they have no singular values to draw."


def rank_note(rows, esc=str, skipped: int = 0) -> str:
    """The rank view's sentence on the numerical rank of every decomposed matrix of the chosen models, ``rows``: the
    layer matrices (the heatmaps'), and those outside the layers (the embeddings and the head: only in the table)
    counted apart; each below full rank named with its rank (those outside the layers were named nowhere, the
    sentence reading "42 of 42 layer matrices are full-rank" while the embedding's update had rank 21 of 30).
    ``esc``: how the labels and tensor names in it are written (the page: :func:`ui.plain`, a stranger's text; the
    export: as they are, escaped there); ``skipped``: the chosen models' layer matrices that got no spectrum (said,
    not silently missing from the count)."""
    zero = rows["rank"] == 0  # unchanged (Δ = 0): no rank to speak of, said apart
    most = rows[["rows", "cols"]].min(axis=1)
    low = ~zero & (rows["rank"] < most)
    below = rows[low]
    # at most six (an MoE model has thousands of matrices); each is in the table
    named = [
        esc(f"{m} · {n} (rank {int(r):,} of {int(f):,})")
        for m, n, r, f in zip(below["model"], below["name"], below["rank"], most[low], strict=True)
    ]
    named = ", ".join(named[:6]) + (f" and {len(named) - 6:,} more (each in the table below)" if len(named) > 6 else "")
    inside = rows["layer"].notna()
    full = ~zero & ~low
    outside = (
        f"and {int((full & ~inside).sum()):,} of {int((~inside).sum()):,} matrices outside the layers (in the "
        "table only) "
        if (~inside).any()
        else ""
    )
    return (
        f"Numerical rank: {int((full & inside).sum()):,} of {int(inside.sum()):,} layer matrices "
        + (f"decomposed ({skipped:,} more got no spectrum, as said above) " if skipped else "")
        + outside
        + "are full-rank "
        "(as a random sparse matrix of the same density is), so rank alone says little; effective and stable rank "
        "below show how the update's energy is spread."
        + (f" Below full rank: {named}." if len(below) else "")
        + (f" Unchanged (Δ = 0, rank 0): {int(zero.sum()):,}." if zero.any() else "")
    )


def updates(ws, view: str, sub: tuple) -> None:
    """The Spectra of Δ tab in ``view`` (read by :func:`body`); ``sub``: the Subspaces tab's K, model and side, for
    the export."""
    at = ui.compared_at(ws)  # Δ at the sidebar's comparison precision: said atop the tab and in its titles
    analysis = ui.update_analysis(ws, spectra=True)
    spec = ui.shared(spectra_rows, analysis)  # once per analysis, for every session
    skipped = ui.shared(skipped_rows, analysis)
    # what the comparison left out, stored forms (a quantized copy's Δ that is only rounding): the export's copy
    # comes with delta_parts, as the next note's
    ui.analysis_notes(analysis.notes, [])
    left = skipped_summary(skipped)  # embeddings, lack of memory, packed experts stored quantized
    if left:
        ui.note(left, [])  # (the export's copy comes with delta_parts, both views')
    ui.need(spec is not None, "No 2-D update matrices to analyse.")
    models = list(analysis.labels)
    # Two views that draw only when chosen (one chart, or two heatmaps per model and the table); in the URL.
    view = st.segmented_control(
        "View", VIEWS, default=view, required=True, key="spec_view", label_visibility="collapsed"
    )
    every = view != VIEWS[0]  # the rank view shows every layer and module: its pickers rest
    c1, c2, c3 = st.columns([2, 1, 1])
    # (by hand, as the Subspaces tab's model: the models, the layers and a layer's modules are the workspace's; a
    # link's entry naming none of them said, with what is shown instead)
    linked = ui.linked_many("spec_models", models, models[:1], "model", "the models compared here")
    chosen = c1.multiselect("Models", models, default=linked, key="spec_models")
    ui.in_url("spec_models", chosen, models[:1])
    layers = sorted(int(v) for v in spec["layer"].dropna().unique())
    layer_opts = ["all"] + [str(v) for v in layers]
    usual = layer_opts[1 if len(layer_opts) > 1 else 0]
    named = "every layer" if usual == "all" else f"layer {usual}"
    layer = _read("spec_layer", layer_opts, usual, "layer", "the layers of the models compared here", named)
    layer = c2.selectbox(
        "Layer",
        layer_opts,
        index=layer_opts.index(layer),
        key="spec_layer",
        disabled=every,
        help="The singular values' layer; the rank view shows every layer." if every else None,
    )
    ui.in_url("spec_layer", layer, usual)
    # the modules of the chosen layer: lm_head and the embedding have none, so they are offered under "all"
    in_layer = spec if layer == "all" else spec[spec["layer"] == uilogic.url_int(layer)]
    mods = ["all", *map(str, in_layer["module"].dropna().unique())]
    where = "every layer" if layer == "all" else f"layer {layer}"
    module = _read("spec_module", mods, "all", "module", f"the modules of {where}", "every module")
    module = c3.selectbox(
        "Module",
        mods,
        index=mods.index(module),
        key="spec_module",
        disabled=every,
        help="The singular values' module; the rank view shows every module." if every else None,
    )
    ui.in_url("spec_module", module, "all")
    ui.need(bool(chosen), "Pick at least one model.")
    keys = ["spectra"] + [f"{kind}-{m}" for m in chosen for kind in ("eff", "stable")]
    if view == VIEWS[0]:
        here = _selected(spec, tuple(chosen), layer, module)
        note = unchanged_note(here)
        if len(here) and not (here["rank"] > 0).any():  # nothing to draw: said, not an empty chart
            st.session_state.get("_figures", {}).pop("spectra", None)  # (nor an earlier one in the export)
            st.info(f"{note} Choose another model, layer or module.", icon=":material/info:")
        else:
            ui.chart(ui.shared(spectrum_figure, analysis, spec, tuple(chosen), layer, module, at), key="spectra")
            if note:
                st.caption(note)
    else:
        rank_view(spec, chosen, _skipped_layers(skipped, chosen), at)
    # the notes of this tab (both views) come with its parts (delta_parts), the closed Subspaces tab's with its own
    ui.export_button(
        "Spectra",
        {
            "base": ws.base,
            "models": chosen,
            "layer": layer,
            "module": module,
            "precision": ws.precision or "stored dtype",
        },
        [*keys, "sub-angles", "sub-principal", "sub-curves"],
        ["spectra-table", "subspaces-table"],
        # the other view and the closed Subspaces tab under the selections in the URL (on click only; the
        # subspaces decompose every weight)
        more=partial(
            merged_parts,
            partial(delta_parts, ws, tuple(chosen), layer, module),
            partial(
                subspace_parts,
                ws,
                *sub,
                export=True,
            ),
        ),
    )


VIEWS = ["Singular values", "Effective and stable rank"]
TABLE_COLUMNS = [
    "model",
    "name",
    "layer",
    "module",
    "expert",
    "rows",
    "cols",
    "density",
    "rank",
    "rank_frac",
    "baseline_rank",
    "baseline_rank_frac",
    "effective_rank_99",
    "stable_rank",
    "method",
    "skipped",
    "note",
    "mtp",
]


def rank_view(spec, chosen: list, skipped: int = 0, at: str = "") -> None:
    """Numerical rank in one sentence, effective and stable rank per chosen model as heatmaps, the table;
    ``skipped``: the chosen models' layer matrices that got no spectrum; ``at``: the comparison precision as the
    titles add it."""
    grid = spec[spec["model"].isin(chosen) & spec["layer"].notna()]
    grid = grid.assign(layer=grid["layer"].astype(int))
    st.caption(rank_note(spec[spec["model"].isin(chosen)], ui.plain, skipped))  # (every matrix, the heatmaps' apart)
    for model in chosen:
        one = grid[grid["model"] == model]
        if len(one) and (one["rank"] == 0).all():  # two heatmaps of zeros on an empty colour range: said instead
            for key in (f"eff-{model}", f"stable-{model}"):
                st.session_state.get("_figures", {}).pop(key, None)
            st.info(f"{ui.plain(model)}: every layer matrix is unchanged (Δ = 0).", icon=":material/info:")
            continue
        a, b = st.columns(2)
        with a:
            ui.chart(
                ui.shared(
                    figures.rank_measure_heatmap,
                    one,
                    "effective_rank_99",
                    title=rank_title(model, "effective_rank_99", at),
                ),
                key=f"eff-{model}",
            )
        with b:
            ui.chart(
                ui.shared(
                    figures.rank_measure_heatmap,
                    one,
                    "stable_rank",
                    title=rank_title(model, "stable_rank", at),
                    zrange=figures.measure_range(grid, "stable_rank"),
                ),
                key=f"stable-{model}",
            )
    ui.table(spec, "spectra-table", "Rank, effective rank and stable rank")


def merged_parts(*builders) -> tuple[dict, dict, list]:
    """The figures, tables and notes of several ``(figures, tables[, notes])`` builders, in order (for the export)."""
    figs, tables, notes = {}, {}, []
    for build in builders:
        f, t, *n = build()
        figs.update(f)
        tables.update(t)
        notes += n[0] if n else []
    return figs, tables, notes


def spectra_rows(analysis):
    """Every analysed 2-D update (skipped ones left out, named by :func:`skipped_summary`; each expert of a packed
    3-D tensor is one) with its layer, module and expert (for MoE models), in the table's column order; None when
    there is none."""
    spec = analysis.spectra_located()
    if not len(spec):
        return None
    # expert and mtp only where an MoE layer or a multi-token-prediction module has some
    sparse = {"expert": spec.get("expert", pd.Series()).notna().any(), "mtp": spec.get("mtp", pd.Series()).any()}
    cols = [c for c in TABLE_COLUMNS if c in spec.columns and sparse.get(c, True)]
    return spec.loc[~spec["skipped"].astype(bool), cols]


def skipped_rows(analysis):
    """The matrices that got no spectrum (embedding-sized, lack of memory, packed experts stored quantized on a
    side), located as :func:`spectra_rows`' rows are: the page names them instead of leaving them out unsaid."""
    spec = analysis.spectra_located()
    if not len(spec):
        return pd.DataFrame(columns=["model", "name", "layer", "skipped", "note"])
    return spec.loc[spec["skipped"].eq(True), ["model", "name", "layer", "skipped", "note"]]


def skipped_summary(skipped) -> str | None:
    """The note naming the ``skipped`` rows and why (:func:`subnetviz.analysis.spectra.skipped_summary`; imported
    here, as the page's other analysis code is, so that opening the page loads no torch)."""
    from subnetviz.analysis.spectra import skipped_summary as summary

    return summary(skipped)


def _skipped_layers(skipped, chosen) -> int:
    """How many layer matrices of the ``chosen`` models are among the ``skipped`` rows."""
    return int((skipped["model"].isin(list(chosen)) & skipped["layer"].notna()).sum())


def _read(key: str, options: list, default: str, what: str, among: str, shown: str):
    """The option the link's ``key`` names (:func:`~subnetviz.uilogic.url_choice`), else ``default``; a link's entry
    naming none of ``options`` said once, with the one shown, ``default``, named as ``shown`` (:func:`ui.said_once`)."""
    asked = st.query_params.get(key)
    value = uilogic.url_choice(asked, options, default)
    stale = asked not in (None, "") and asked not in options
    line = uilogic.stale_link_line(what, asked, among, shown) if stale else None
    ui.said_once(key, line, st.session_state.get(key, value))
    return value


def _selected(spec, chosen: tuple, layer: str, module: str):
    """The rows of ``spec`` for the chosen models, layer and module ("all": every one)."""
    sel = spec[spec["model"].isin(chosen)]
    if layer != "all":
        sel = sel[sel["layer"] == int(layer)]
    if module != "all":
        sel = sel[sel["module"] == module]
    return sel


def spectrum_title(chosen: tuple, at: str = "") -> str:
    """The singular values' first title line: the comparison precision (``at``) and, with one model, the model
    (its curves are named by matrix only: a figure file had no word of whose update), as the rank heatmaps'."""
    return f"Singular values of updates{at}" + (f": {figures.plain_label(chosen[0])}" if len(chosen) == 1 else "")


def spectrum_figure(analysis, spec, chosen: tuple, layer: str, module: str, at: str = ""):
    """The singular-value curves of the chosen models' matrices in one layer and module (or all); an unchanged
    matrix (Δ = 0, all σ zero) is left out: on the log axis it was a legend entry with an invisible curve. ``at``:
    the comparison precision, in the title's first line (:func:`spectrum_title`)."""
    sel = _selected(spec, chosen, layer, module)
    sel = sel[sel["rank"] > 0]
    sig = analysis.sigmas()
    sig = sig[sig["model"].isin(chosen)].merge(sel[["model", "name"]], on=["model", "name"])
    # each model in the colour it has on the Update sparsity page (by its place in the workspace)
    colors = figures.color_map(list(analysis.labels))
    return figures.model_spectra(sig, sel, chosen, colors=colors, title=spectrum_title(chosen, at))


ui.run_page(body)
