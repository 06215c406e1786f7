"""Bigram subnetworks: train a mask as a job or load one, then fidelity, ablation, location, overlap,
the residual stream and generations (reference/bigram_subnetworks.md)."""

import math
from collections.abc import Callable
from functools import partial

import streamlit as st

from subnetviz import config, figures, selection, ui, uilogic
from subnetviz.bigram.config import (
    PRESET_MAX_STEPS,
    BigramJobConfig,
    check_zoo_tokenizer,
    model_family,
    zoo_bigram_path,
)
from subnetviz.bigram.locate import shares_heatmap_frame
from subnetviz.bigram.store import analysis_key, is_cached
from subnetviz.errors import SubnetvizError
from subnetviz.figures import bigram as bg_figures

HALF_WIDTH = ("bg-r", "bg-bits")  # the figures drawn two to a row (the covariance maps too)
TITLE_ROW = 22  # px a line of a run chart's title takes (17 px font), as on the Training page


def _analysis(model: str, mask: str, optimal: str | None, corpus: str, address: str | None = None):
    """The analysis from the disk cache, else computed (on the session's Ray cluster, if any). Kept in memory by
    :func:`subnetviz.ui.heavy` under the disk cache's key, which follows every file. A damaged entry (removed, and
    so computed again) is said first in a caption (:func:`~subnetviz.ui.damage_note`; the page said nothing)."""
    from subnetviz.cache import entry
    from subnetviz.jobs.cluster_pages import cached_mask_analysis

    ui.damage_note(entry("bigram", analysis_key(model, mask, corpus, optimal)))
    with st.spinner("Analysing the subnetwork (fidelity, ablations, residual stream)…"):
        return cached_mask_analysis(model, mask, corpus=corpus, optimal=optimal, address=address)


def train(model: str, corpus: str) -> None:
    if not ui.allowed("launch"):
        runs_view()
        return
    with st.form("bg_train"):
        c = st.columns(5)
        target = c[0].selectbox("Target (optimal = the model's own softmax)", ["bigram", "optimal"], key="bg_target")
        lam = c[1].number_input("λ (sparsity)", 0.0, 1e4, 10.0, key="bg_lambda")
        preset = c[2].selectbox("Preset (fast: lr 1e-2, β×1.003)", ["fast", "paper"], key="bg_preset")
        steps = c[3].number_input(  # empty: the preset's own (the paper's 15,000; 3,000 had capped every preset)
            "Max steps",
            1,
            100_000,
            None,
            key="bg_steps",
            placeholder="the preset's",
            help=f"Empty: the preset's own ({', '.join(f'{k} {v:,}' for k, v in PRESET_MAX_STEPS.items())}); "
            "training also stops earlier by the paper's rule (undecided < 1 % of the masks above 0.9).",
        )
        seed = c[4].number_input("Seed", 0, 2**31 - 1, 0, key="bg_seed")
        go = st.form_submit_button("Train mask", type="primary", icon=":material/play_arrow:")
    if go:
        with ui.said_here():  # the form stays, with its values
            cfg = BigramJobConfig(
                model=model,
                corpus=corpus,
                target=target,
                lam=float(lam),
                preset=preset,
                steps=None if steps is None else int(steps),
                seed=int(seed),
                device=ui.workspace().device,
            )
            run_id, new = ui.submit_job(cfg.to_dict(), name=f"{target} mask λ={lam:g}")
            ui.queued_line(run_id, new, "Its mask joins the saved masks when it finishes.")
    runs_view()


def runs_view() -> None:
    """Mask-training runs; polls every 2 s while one is queued or running, static otherwise."""
    ui.live(_runs, "bigram_mask")


def _runs() -> None:
    from subnetviz.report.training import run_names, title_lines

    r = ui.job_runner()
    r.poll()
    df = r.list_runs()
    df = df[df["kind"] == "bigram_mask"] if len(df) else df
    if not len(df):
        st.caption("No mask-training runs yet.")
        return
    ui.runs_table(df, "bg-runs", "Mask-training runs", kind=False)
    names = run_names(df)  # "name · id", as every run picker shows it
    # Inside this live fragment the URL is read and written by hand, as the Training page's run (a bound picker in a
    # fragment does not restore from the address bar: a shared link opened the newest run's curves, not the sender's)
    ids, asked = list(df["id"]), st.query_params.get("bg_run")
    shown = asked if asked in ids else ids[0]
    among = "this server's mask-training runs"
    line = uilogic.stale_link_line("run", asked, among, f"the newest, {names[shown]},") if asked not in ids else None
    if said := uilogic.link_fallback(st.session_state, "bg_run", line if asked is not None else None, shown):
        ui.warning(said)
    run_id = st.selectbox("Run", ids, index=ids.index(shown), format_func=names.get, key="bg_run")
    st.query_params["bg_run"] = run_id
    rec = r.get(run_id)
    if not rec.finished and ui.can("launch") and st.button("Cancel", key=f"bg-cancel-{run_id}", icon=":material/stop:"):
        r.cancel(run_id)
        st.rerun(scope="fragment")
    # why it ended, under the picker as the Training page's run card says it: it was only in the table's last
    # column, off-screen at 1400 px, and a failed run showed nothing (or a killed run's curves as if complete)
    why = " ".join(str(rec.error or "").split())  # one line
    if rec.status == "cancelled":  # what the user asked for, not an error
        st.caption(ui.plain(f"Cancelled: {why}" if why else "Cancelled."))
    elif rec.status == "failed":
        ui.error(f"Run {names[run_id]} failed: {why or 'no error was recorded'}")
    metrics = r.metrics(run_id)
    if len(metrics):
        long = metrics.melt(
            id_vars=["step"], value_vars=[c for c in ("loss", "kept", "undecided") if c in metrics], var_name="metric"
        ).dropna()
        # in lines broken at its " · ", as the Training page's (one line of 100 characters ran 167 px past the
        # chart's right edge at 1024 px); the figure picker names it by the title on one line
        head = f"Run {names[run_id]}"
        lines = title_lines(head)
        title = "<br>".join(figures.plain_label(line) for line in lines)
        if metrics.attrs.get("left_out"):  # (read from its end: a page reads it every 2 s)
            title += "<br><sup>a long metrics log: only its last rows are drawn</sup>"
        fig = figures.training_curves(long, title=title)
        if len(lines) > 1 and fig.layout.height:  # room above the panels for the title's extra lines (same panels)
            more = TITLE_ROW * (len(lines) - 1)
            fig.update_layout(margin_t=(fig.layout.margin.t or 80) + more, height=fig.layout.height + more)
        ui.chart(fig.update_layout(meta={"name": figures.plain_label(head)}), key="bg-curves")


def import_released(model: str) -> None:
    if not ui.can("upload"):
        return
    with st.expander("Import a released bigram-subnetwork pickle (GPT-2 / Pythia)"):
        path = st.text_input("subnetwork_dict_lambda*.pickle (restricted unpickler)", key="bg_pickle")
        if path and st.button("Import for this model", key="bg_import"):
            with ui.said_here():  # the analysis above stays
                with ui.memory_wait("importing the pickle") as wait:
                    out = selection.import_released(path, model, wait=wait)
                st.success(f"Saved {ui.plain(out.name)}; it is now among the saved masks.")


def headline(h: dict) -> None:
    """Eight numbers, in rows of as many as show whole at 1024 px (:func:`~subnetviz.uilogic.metrics_per_row`; four
    to a row cut "903 (0.204 %)" to "903 (0…" and "0.630 ± < 0.001" to "0.630 …"). The kept weights' share is in
    small grey text under their count (in the value, a large mask's "145,000 (0.170 %)" needed a row to itself). One
    the analysis leaves undefined (NaN: a share or ×chance of an empty mask) is a dash with why in the grey text
    (in the value, the why was cut off at the column's width)."""
    num = figures.format_number  # 3 significant digits, scientific below 1e-3: no "+0.000" hiding a number
    share = h["first_mlp_share"]  # NaN for an empty mask (it read "0.00 %")
    items = [  # (label, value, help, grey text under it: why it is undefined, with a dash for the value, or more)
        ("kept weights", f"{h['kept']:,}", None, f"{num(100 * h['density'])} % of the maskable weights"),
        ("r full model", num(h["r_full"]), None, None),
        ("r subnetwork", num(h["r_subnetwork"]), None, None),
        ("r random", figures.format_mean_sd(h["r_random_mean"], h["r_random_sd"]), None, None),
        ("first-layer MLP share", f"{num(100 * share)} %", None, None)
        if not math.isnan(share)
        else ("first-layer MLP share", None, None, f"({h.get('why_no_share') or 'undefined'})"),
        ("Δ bits/token, subnetwork ablated", num(h["delta_bits_ablated"], sign=True), None, None),
        ("Δ bits/token, random set ablated", num(h["delta_bits_random_ablated"], sign=True), None, None),
    ]
    if "overlap_x_chance" in h and math.isnan(h["overlap_x_chance"]):  # 0 / 0 (it read "nan×  (p = 1)")
        tip = "Undefined: no overlap is found, and none is expected by chance."
        items.append(("overlap × chance", None, tip, f"({h.get('why_no_x_chance') or 'undefined'})"))
    elif "overlap_x_chance" in h:
        # a permutation p-value is (1 + #null ≥ observed) / (1 + draws): at its floor no draw reached the overlap,
        # and p is below the floor, not equal to it
        draws = int(h.get("overlap_draws", 1000))
        p = h["overlap_p"]
        floor = p <= 1 / (1 + draws)
        shown = f"p < {1 / draws:g}" if floor else f"p = {p:.2g}"
        tip = f"Permutation p-value, {draws:,} draws of the null (the same count per block, drawn uniformly): " + (
            "none reached the observed overlap, so p is below 1/draws." if floor else "(1 + reached) / (1 + draws)."
        )
        # (3 significant digits as the values above: at one decimal 0.166 read "0.2×" and any ratio under 0.05 "0.0×")
        items.append((f"overlap × chance ({shown})", f"{num(h['overlap_x_chance'])}×", tip, None))
    # At most two to a row: the longest labels ("Δ bits/token, random set ablated") need half the main column there.
    width = min(uilogic.metrics_per_row([value or "—" for _, value, _, _ in items]), 2)
    for start in range(0, len(items), width):
        for col, (label, value, tip, grey) in zip(st.columns(width), items[start : start + width], strict=False):
            # the grey text as a delta with no arrow and no colour
            col.metric(label, value or "—", grey, "off", help=tip, delta_arrow="off")


def _zoo_mask_note() -> None:
    """While the demo zoo's bigram mask is being built: when, and the analysis once it is done."""
    from subnetviz.demo.extras import zoo_job_note

    note = zoo_job_note(ui.zoo(), ui.job_runner(), "bigram")
    if note is None:
        st.rerun()  # done: draw the page again, now with the mask
    st.info(note, icon=":material/hourglass_top:")


def analyse(model: str, corpus: str, where: str) -> None:
    """The analysis of the chosen masks of ``model`` on ``corpus``; ``where`` ("model … · corpus …", as the page's
    fields show them) under each figure's title."""
    import_released(model)
    if problem := ui.shared(uilogic.model_problem, model, ui.checkpoint_stamp(model)):  # (before its masks)
        ui.error(problem)
        return
    try:  # an architecture without a bigram-mask table (config.json only): one line, not one per saved mask
        model_family(model)
    except SubnetvizError as exc:
        ui.error(exc)
        return
    masks = {
        k: v for k, v in selection.saved_masks().items() if v.endswith("outputs/mask.safetensors") or "uploads" in k
    }
    if not masks:
        from subnetviz.demo.extras import zoo_job_note

        if zoo_job_note(ui.zoo(), ui.job_runner(), "bigram"):  # the zoo's own mask: redrawn until it is done
            ui.live(_zoo_mask_note, "bigram_mask")
            return
        st.info(
            "No bigram mask yet: train one (*Train a mask*; a λ = 10 mask of the demo base takes a few minutes "
            "on one CPU thread), upload one on the Workspace page, or import a released pickle above.",
            icon=":material/info:",
        )
        return
    # Only masks that fit the model are offered (the newest mask was pre-selected whatever the model, and one of
    # another model ended the page in an error); those left out are named with why.
    notes: list[str] = []  # what the page says about its masks and numbers, also in its export
    misfit = ui.mask_misfits(masks, model, uilogic.bigram_mask_misfit)
    if misfit:
        asked = [q for q in (st.query_params.get("bg_mask"), st.query_params.get("bg_opt")) if q in misfit]
        said = "; ".join(f"{label} ({misfit[label]})" for label in (asked or misfit))
        if len(misfit) == len(masks):
            st.info(  # (the advice as Markdown: through ui.plain its asterisks were shown)
                ui.plain(f"No saved mask fits this model: {said}.") + " Train one for it under *Train a mask*.",
                icon=":material/info:",
            )
            return
        if asked:
            ui.note(f"Left out of the link's masks, as they do not fit this model: {said}.", notes, warn=True)
        else:
            ui.note(f"Not offered, as they do not fit this model: {said}.", notes)
        masks = {label: path for label, path in masks.items() if label not in misfit}
    a, b = st.columns(2)
    names = list(masks)
    latest = {t: _default_of(masks, t) for t in ("bigram", "optimal")}  # the defaults, each of its target
    # The masks are read from and written into the URL by hand, the newest too: a bound picker leaves its default
    # (the newest mask) out, so a shared link showed whichever mask was newest when it was opened.
    q = st.query_params
    said = set(misfit)  # (a link's mask that does not fit the model is said above)
    mask = a.selectbox(
        "Bigram subnetwork mask",
        names,
        index=names.index(_link_choice("bg_mask", names, latest["bigram"] or names[0], "mask", said)),
        key="bg_mask",
    )
    opts = ["none", *names]
    opt = b.selectbox(
        "Optimal subnetwork mask (overlap)",
        opts,
        index=opts.index(_link_choice("bg_opt", opts, latest["optimal"] or "none", "optimal mask", said)),
        key="bg_opt",
    )
    q["bg_mask"], q["bg_opt"] = mask, opt  # (a link's entry not on offer replaced by what is shown)
    # only while no optimal mask is chosen (it was said beside an uploaded optimal mask and its overlap)
    if opt == "none" and latest["optimal"] is None:
        from subnetviz.demo.extras import zoo_job_note

        st.caption(
            zoo_job_note(ui.zoo(), ui.job_runner(), "optimal")
            or "No optimal-target mask yet: train one with target *optimal* under *Train a mask*, or choose another "
            "saved mask as the optimal one above, to see the overlap."
        )
    elif opt == "none":
        st.caption("Choose an optimal mask above to see the overlap.")
    table = zoo_bigram_path()
    if corpus == "zoo" and table.is_file():  # refused before it is priced, computed, or read from the disk cache
        from subnetviz.cache import file_stamp

        ui.shared(_zoo_fits, model, str(table), (ui.checkpoint_stamp(model), file_stamp(table)))
    key = analysis_key(model, masks[mask], corpus, masks.get(opt))
    # forward passes through the model in float32: priced, and asked for, before they start
    from subnetviz.analysis.cost import bigram_cost

    res, gens = ui.heavy(
        ("bigram", key),
        lambda: is_cached(key),
        lambda: bigram_cost(model, corpus),
        lambda: _analysis(model, masks[mask], masks.get(opt), corpus, ui.compute_address()),
        models=True,
    )
    headline(res.headline)
    for note in res.headline.get("notes") or []:  # how the mask was read: names matched, matrices it leaves out
        ui.note(note, notes)
    figs, tables = ui.shared(result_parts, res, gens, mask, opt, where)
    names = ["Ablation", "Location"]
    names += ["Residual stream"] * (res.residual is not None) + ["Overlap"] * (res.overlap is not None)
    names += ["Generations"] * (gens is not None)
    # Sections as tabs that draw only when open (2–4 charts, not 8: a revisit draws faster); in the URL.
    ui.said_if_not_offered("bg_tab", names, "tab", "this analysis's tabs")
    tabs = dict(zip(names, st.tabs(names, key="bg_tab", on_change="rerun", bind="query-params"), strict=True))
    if tabs["Ablation"].open:
        with tabs["Ablation"]:
            c, d = st.columns(2)
            with c:
                ui.chart(figs["bg-r"], key="bg-r")
            with d:
                ui.chart(figs["bg-bits"], key="bg-bits")
            st.caption(
                "Left: correlation r of each setting's next-token surprisal with the bigram's (1 = predicts like "
                "the bigram table). Right: extra bits per token against the full model (ablated = the subnetwork "
                "removed; random ablated = a random set of the same size removed)."
            )
            ui.table(tables["bg-ablation"][1], "bg-ablation", tables["bg-ablation"][0])
    if tabs["Location"].open:
        with tabs["Location"]:
            ui.chart(figs["bg-shares"], key="bg-shares")
            st.caption(f"Blocks as in the bigram paper: {BLOCKS[model_family(model)]}")
            ui.table(tables["bg-split"][1], "bg-split", tables["bg-split"][0])
    if "Residual stream" in tabs and tabs["Residual stream"].open:
        with tabs["Residual stream"]:
            ui.chart(figs["bg-rotation"], key="bg-rotation")
            st.caption(
                "How to read it: a ridge map from the residual stream after each layer to the input embedding "
                "(the current token) and to the last layer (the next-token side); the angle is the median rotation "
                "|arg λ| of the map's eigenvalues (0° = the same directions). The paper's full model turns from "
                "current to next in the first layer. Eigenvalues that are ~0 are left out of the median (the paper "
                "takes all d): with fewer distinct tokens than the hidden size, as in the demo zoo, the angles are "
                "not comparable to the paper's."
            )
            cov = [k for k in figs if k.startswith("bg-cov-")]
            for start in range(0, len(cov), 2):  # two to a row: three cut their titles and run ids at 1024 px
                for col, key in zip(st.columns(2), cov[start : start + 2], strict=False):
                    with col:
                        ui.chart(figs[key], key=key)
            st.caption(
                "Covariance similarity between layers' residual streams (1 = the same geometry): a block that "
                "stays bright across layers means the representation did not change there."
            )
    if "Overlap" in tabs and tabs["Overlap"].open:
        with tabs["Overlap"]:
            caption, frame = tables["bg-overlap"][0], tables["bg-overlap"][1]
            ui.table(frame, "bg-overlap", caption)  # shares under 1 % with three digits, as its export (formats)
            ui.chart(figs["bg-null"], key="bg-null")
    if "Generations" in tabs and tabs["Generations"].open:
        with tabs["Generations"]:
            ui.table(tables["bg-generations"][1], "bg-generations", tables["bg-generations"][0])
            st.caption(
                "Each row continues the same prompt (the start of a held-out sequence) with tokens sampled at "
                "temperature 0.3, one seed per row: the same seed draws the same random numbers with and "
                "without the subnetwork, so where two rows of a seed part, ablating it changed a prediction."
            )
    ui.export_button(
        "Bigram subnetworks",
        {"model": model, "corpus": corpus, "mask": mask, "optimal": opt},  # (the corpus changes every number)
        list(figs),
        list(tables),
        more=partial(ui.shared, result_parts, res, gens, mask, opt, where),  # the closed tabs, built on click
        notes=notes,
    )


# The Location tab's blocks in the model's own tensors (maskable.FAMILIES), with the module labels the other pages
# give them (checkpoints.naming): a GPT-2 or a Pythia was told of Llama's q_proj and gate_proj.
BLOCKS = {
    "llama": "Q, K, V, O = q_proj, k_proj, v_proj, o_proj (q, k, v, o on the other pages); MLP-in = gate_proj + "
    "up_proj (gate, up); MLP-out = down_proj (down).",
    "gpt2": "Q, K, V = the column thirds of attn.c_attn (q, k, v on the other pages); O = attn.c_proj (o); "
    "MLP-in = mlp.c_fc (mlp_in); MLP-out = mlp.c_proj (mlp_out).",
    "gpt_neox": "Q, K, V = the rows of attention.query_key_value, interleaved per head as the model splits them "
    "(q, k, v on the other pages); O = attention.dense (o); MLP-in = mlp.dense_h_to_4h (mlp_in); MLP-out = "
    "mlp.dense_4h_to_h (mlp_out).",
}


def _default_of(masks: dict[str, str], target: str) -> str | None:
    """The mask of ``target`` ("bigram", "optimal") a picker starts at: the newest mask-training run's (its label
    says its target), else the first other mask (an upload, an import, the zoo's) whose file's metadata says that
    target, as a run's mask says it (:func:`~subnetviz.selection.mask_info`: its header only). Only runs' labels
    were read: an uploaded optimal mask was never the default, and the page said there was none."""
    from subnetviz.cache import file_stamp

    runs = [label for label in masks if label.startswith(f"{target} mask")]
    if runs:
        return max(runs, key=lambda label: label.rsplit("· ", 1)[-1])
    others = (label for label in masks if not label.startswith(("bigram mask", "optimal mask")))
    return next(
        (n for n in others if selection.mask_info(masks[n], file_stamp(masks[n])).get("target") == target), None
    )


def _zoo_fits(model: str, table: str, stamps: tuple) -> bool:
    """:func:`~subnetviz.bigram.config.check_zoo_tokenizer` (it raises for a model whose tokenizer does not give
    the zoo's letters the zoo's ids), memoised for every session by the files' ``stamps``: it loads a tokenizer."""
    check_zoo_tokenizer(model, table)
    return True


def result_parts(res, gens, mask: str, optimal: str, where: str) -> tuple[dict, dict]:
    """Every tab's figures (key -> figure) and tables (key -> (caption, frame)) of one mask analysis:
    built once per analysis for every session; the open tab draws from them, the export takes them all.
    Each figure names under its title the ``mask`` (and the Overlap's ``optimal`` mask) and ``where`` ("model …
    · corpus …"), as the page shows them: a downloaded figure has no picker beside it."""
    summary = res.ablation.summary()
    located, split = "Where the subnetwork lives", res.split
    if why := res.headline.get("why_no_share"):  # an empty mask: its shares are 0 / 0 (the heatmap read 0 % everywhere)
        shares = figures.no_data_figure(located, f"nothing to locate: {why}")
        split = split.assign(share=f"— ({why})")
    else:
        shares = figures.sparsity_heatmap(
            shares_heatmap_frame(res.shares), "share", located, count_label="in the subnetwork"
        )
    figs = {
        "bg-r": bg_figures.fidelity_bars(summary),
        "bg-bits": bg_figures.delta_bits_bars(summary),
        "bg-shares": shares,
    }
    tables = {
        "bg-ablation": ("Fidelity and loss per setting (random: mean ± sd over seeds)", summary),
        "bg-split": ("Attention vs MLP", split),
    }
    if res.residual is not None:
        figs["bg-rotation"] = bg_figures.rotation_curves(res.residual.rotation)
        for label in dict.fromkeys(res.residual.covariance["model"]):
            figs[f"bg-cov-{label}"] = bg_figures.covariance_heatmap(
                res.residual.covariance_matrix(label), f"Covariance: {label}"
            )
    if res.overlap is not None:
        # (an undefined ×chance or share as a dash with why, not a bare "—"/"nan")
        tables["bg-overlap"] = ("Overlap with the optimal subnetwork vs both nulls", res.overlap.explained_frame())
        figs["bg-null"] = bg_figures.null_histogram(res.overlap.null_frame(), res.overlap.overlap)
    if gens is not None:
        tables["bg-generations"] = ("Generations at temperature 0.3: full model vs subnetwork ablated", gens)
    # "mask X", unless its label says it (a run's "bigram mask λ=10 · id" read "mask bigram mask λ=10")
    named = mask if "mask" in mask.split(" · ")[0].split() else f"mask {mask}"
    for key, fig in figs.items():  # (built here, for this call: changed in place)
        # half the page wide: a line broken at its " · " (a mask's run id was cut at 1024 px)
        narrow = 40 if key in HALF_WIDTH or key.startswith("bg-cov-") else None
        bg_figures.with_setting(fig, named, f"vs {optimal}" if key == "bg-null" else "", where, wrap=narrow)
    return figs, tables


def body() -> None:
    st.title("Bigram subnetworks")
    st.caption("Which weights map the current token to the next one (Chang & Bergen 2025), ablated and located.")
    a, b = st.columns(2)
    ws, members = ui.workspace(), selection.zoo_members(ui.zoo())
    # A zoo member by its id, never by the server's absolute path (visitors see no server paths).
    default = ws.base_label if ws.base_label in members else (ws.base or "")
    # Both fields are in the URL (by hand, as the masks are): a shared link analysed the sidebar's base on the zoo's
    # corpus with the sender's masks, other numbers and nothing said. A link's entry that cannot be used here is
    # dropped with a line that says so.
    model = a.text_input(
        "Model",
        value=_from_link(
            "bg_model", default, "model", lambda v: ui.checkpoint_info(selection.resolve_choice(v, members))
        ),
        key="bg_model",
        help="A zoo id, a folder or a cached hub id; defaults to the sidebar's base (the demo zoo's base).",
    )
    corpus = b.text_input(
        "Corpus",
        value=_from_link("bg_corpus", "zoo", "corpus", _existing_corpus),
        key="bg_corpus",
        help="`zoo` = the demo chain's exact bigram law; or, cut with the model's own tokenizer, a text file, a "
        "saved data-set folder (`Dataset.save_to_disk`, column `text`) or `hf:NAME[:SPLIT]` from the local "
        "data-set cache.",
    )
    _to_link("bg_model", model, default)
    _to_link("bg_corpus", corpus, "zoo")
    ui.need(bool(model), "Choose a model (the sidebar's base, a folder or a cached hub id).")
    # the model and corpus as the fields show them (a server path relative to its root), for the figures' subtitles
    where = f"model {config.redact_value(model)} · corpus {config.redact_value(corpus)}"
    model = selection.resolve_choice(model, members)
    corpus = uilogic.corpus_choice(corpus)
    views = ["Analyse a mask", "Train a mask"]
    ui.said_if_not_offered("bg_view", views, "view", "this page's views")
    view = st.segmented_control(
        "View",
        views,
        default=views[0],
        required=True,
        key="bg_view",
        bind="query-params",
        label_visibility="collapsed",
    )
    if view == "Analyse a mask":
        analyse(model, corpus, where)
    else:
        train(model, corpus)


def _from_link(key: str, default: str, what: str, check: Callable[[str], object]) -> str:
    """The value a field starts at: the URL's ``key`` when this session has not drawn the field yet and ``check``
    takes it, else ``default``. One it refuses (a run deleted since the link was shared, a file moved) is dropped
    from the URL, with one line naming it."""
    raw = st.query_params.get(key)
    if raw is None or key in st.session_state:  # (a field already drawn keeps what it holds)
        return default
    try:
        check(raw)
    except SubnetvizError as exc:
        del st.query_params[key]
        ui.warning(f"The link's {what} cannot be used here ({exc}); {default or 'none'} is shown instead.")
        return default
    return raw


def _link_choice(key: str, options: list[str], default: str, what: str, said: set[str]) -> str:
    """The option the URL's ``key`` names, else ``default``. A link's entry that names nothing on offer (a mask
    deleted since the link was shared, or one of another server: run ids differ) is said in one line with what is
    shown instead when the field is first drawn, unless it is in ``said`` already (it fell back to the newest with
    no word); the caller then writes what is shown into the URL."""
    raw = st.query_params.get(key)
    shown = uilogic.url_choice(raw, options, default)
    if raw is not None and raw not in options and raw not in said and key not in st.session_state:
        ui.warning(uilogic.stale_link_line(what, raw, "this server's bigram masks", default))
    return shown


def _to_link(key: str, value: str, default: str) -> None:
    """``value`` in the URL under ``key``, or no entry where it is the field's default."""
    q = st.query_params
    if value != default and q.get(key) != value:
        q[key] = value
    elif value == default and key in q:
        del q[key]


def _existing_corpus(corpus: str) -> None:
    """Refuse a corpus that is no file or folder under the roots ('zoo' and hf: names are taken as they are)."""
    resolved = uilogic.corpus_choice(corpus)
    if resolved != "zoo" and not resolved.startswith("hf:") and not config.exists(resolved):
        raise SubnetvizError(f"{corpus}: no such file or folder.")


ui.run_page(body)
