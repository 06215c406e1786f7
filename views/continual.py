"""Continual learning: one supermask subnetwork per task (SupSup, SSNeT, ExSSNeT, KKT), launched and compared."""

from functools import partial

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from subnetviz import figures, ui, uilogic
from subnetviz.figures import continual as cl_figures
from subnetviz.report.training import run_names
from subnetviz.supermask.config import ContinualConfig, PhaseEpochs, colliding_densities, density_clash
from subnetviz.supermask.job import data_note, load_result, load_task_masks
from subnetviz.supermask.metrics import owner_image, supsup_note

METHODS = ["finetune", "supsup", "ssnet", "exssnet", "exssnet+kkt"]
BENCHMARKS = ["permuted-digits", "split-digits", "arithmetic-text"]
DEMO = ContinualConfig(
    benchmark="permuted-digits",
    methods=("finetune", "supsup", "ssnet", "exssnet"),
    density=(0.05,),
    tasks=5,
    seeds=(0, 1, 2),
)


def launch() -> None:
    if not ui.allowed("launch"):
        return
    with st.form("cl_launch"):
        c1, c2, c3 = st.columns(3)
        bench = c1.selectbox(
            "Benchmark",
            BENCHMARKS,
            help="Digits from scikit-learn (offline); arithmetic-text "
            "uses the demo zoo's base model as a frozen encoder.",
        )
        methods = c2.multiselect("Methods", METHODS, default=["finetune", "supsup", "ssnet", "exssnet"])
        densities = c3.multiselect(  # (in percent, as the results' tables and titles write densities)
            "Mask density (share kept per layer)", [0.02, 0.05, 0.1, 0.3], default=[0.05], format_func=_percent
        )
        d1, d2, d3, d4 = st.columns(4)
        tasks = d1.number_input("Tasks", 1, 100, 5)
        seeds = d2.number_input("Seeds", 1, 10, 3)
        epochs = d3.number_input(  # empty: the benchmark's own (split-digits 30 + 30; a fixed 10 had replaced them)
            "Epochs per phase (mask / weights)",
            1,
            100,
            None,
            placeholder="the benchmark's",
            help="Empty: the benchmark's defaults (split-digits 30 + 30, permuted-digits and arithmetic-text "
            "10 + 10; finetuning twice as many).",
        )
        kkt = d4.checkbox(  # short, "KKT" first: a quarter of the form's width cut "also each masked method + KKT"
            "+ KKT variants",
            help="Also runs each masked method with KKT (SupSup+KKT, SSNeT+KKT, ExSSNeT+KKT): each task's mask "
            "starts from the most useful earlier mask (KNN accuracy above chance).",
        )
        inference = d4.checkbox(  # a short label: a quarter of the form's width cut the long one off
            "task inference (SupSup)",
            help="SupSup one-shot task inference (experimental): at test time the task is not given; SupSup "
            "infers it from one gradient of the output entropy over its superposed task masks. The results are "
            "under the Task inference tab.",
        )
        go = st.form_submit_button("Launch", type="primary", icon=":material/play_arrow:")
    if go:
        with ui.said_here():  # the form stays, with its values
            cfg = ContinualConfig(
                benchmark=bench,
                methods=tuple(methods),
                density=tuple(sorted(densities)),
                tasks=int(tasks),
                seeds=tuple(range(int(seeds))),
                epochs=PhaseEpochs() if epochs is None else PhaseEpochs(int(epochs), int(epochs), 2 * int(epochs)),
                kkt=kkt,
                task_inference=inference,
            )
            run_id, new = ui.submit_job(cfg.to_dict(), name=_run_name(cfg))
            ui.queued_line(run_id, new, "It appears under Results when it finishes (its error, if it fails).")


def owner_figure(masks, layer: str, method: str, density: float, seed):
    """Which task owns each weight of ``layer`` (a tensor's name: text) in ``method``'s masks at ``density`` and
    ``seed`` (built once per content of the masks, shared); the title names both, as a downloaded file has no
    picker beside it. The setting is on a second line, as the capacity charts write theirs: on one line, a chart
    half the page wide at 1024 px cut it after "(5"."""
    setting = figures.plain_label(f"{method}, {_percent(density)}, seed {seed}")
    title = f"owner task of {figures.plain_label(layer)}<br><sup>{setting}</sup>"
    return cl_figures.owner_image(owner_image(masks, layer), title=title)


def results() -> None:
    df = ui.job_runner().list_runs()
    ui.failed_runs(df, "continual", "continual")
    done = df[(df["kind"] == "continual") & (df["status"] == "succeeded")]
    if not len(done):
        from subnetviz.demo.extras import zoo_job_note

        note = zoo_job_note(ui.zoo(), ui.job_runner(), "continual")
        if note:  # the progress bar above redraws; the page reruns when the run is done
            st.info(note, icon=":material/hourglass_top:")
            st.stop()
        st.info(
            "No finished continual-learning run yet. The demo configuration (permuted digits, 5 tasks, "
            "density 5 %, four methods, 3 seeds) takes a minute or two on one CPU thread."
        )
        if ui.can("launch") and st.button("Run the demo configuration", type="primary", key="cl-demo"):
            ui.submit_job(DEMO.to_dict(), name="demo: permuted-digits, 5 tasks, d=0.05")
            st.rerun()
        st.stop()
    labels = run_names(done)
    # The run is written into the URL by hand, the newest too: a bound picker leaves its default (the newest run)
    # out, so a shared link showed whichever run was newest when it was opened (and fell back from a tab that run
    # lacks). The URL names it as the pickers do ("name · id"); an id alone is read too.
    ids, asked = list(labels), st.query_params.get("cl_run")
    named = next((i for i in ids if asked in (i, labels[i])), None)
    shown = ids[0] if named is None else named
    if asked is not None and named is None and "cl_run" not in st.session_state:
        # said as the link is opened (run ids differ from server to server, and runs get deleted: the newest was
        # shown with no word); the URL then names the run shown
        among = "this server's finished continual runs"
        ui.warning(uilogic.stale_link_line("run", asked, among, f"the newest, {labels[shown]},"))
    run_id = st.selectbox("Run", ids, index=ids.index(shown), format_func=labels.get, key="cl_run")
    st.query_params["cl_run"] = labels[run_id]
    folder = ui.job_runner().get(run_id).outputs
    frames = ui.shared(load_result, str(folder))  # a finished run's files: read once, for every session
    said: list[str] = []  # what the page says about the run's numbers, also in its export
    if note := data_note(folder):
        ui.note(note, said, warn=True)
    summary, acc = frames["summary"], frames["accuracy"]
    # finetuning (density 1.0, every weight) is shown beside each density; a masked method may run at 1.0 too
    baseline = summary["label"] == FINETUNE
    densities = sorted(summary.loc[~baseline, "density"].unique()) or [1.0]
    if pair := colliding_densities(densities):  # a run made before the config refused them: its tables mix them up
        ui.error(density_clash(*pair, "this run was made before such densities were refused; launch it again."))
        return
    # Written as a percentage, as the Launch form and the tables write densities. The URL names it the same way by
    # hand (a bound picker puts its shown text there) and reads an older link's fraction too ("0.05").
    usual = 0.05 if 0.05 in densities else densities[0]
    asked = st.query_params.get("cl_density")
    named = next((d for d in densities if asked in (_percent(d), f"{d:g}", str(d))), None)
    shown = usual if named is None else named
    if asked is not None and named is None and "cl_density" not in st.session_state:  # (then dropped from the URL)
        ui.warning(f"The link's density {asked} is not in this run; {_percent(shown)} is shown instead.")
    links = st.container()  # what a link names that this run lacks, said above the pickers and tabs
    c1, c2 = st.columns(2)
    density = c1.selectbox("Density", densities, index=densities.index(shown), format_func=_percent, key="cl_density")
    if density != usual:
        st.query_params["cl_density"] = _percent(density)
    elif "cl_density" in st.query_params:
        del st.query_params["cl_density"]
    seeds = sorted(acc["seed"].unique())
    table = summary[np.isclose(summary["density"], density) | baseline]
    ui.table(table, "cl-summary", "Final accuracy, forgetting, capacity (mean ± sd over seeds)")
    ui.note(FORGETTING_NOTE, said)
    if note := supsup_note(table, acc, density):
        ui.note(note, said)
    methods = list(dict.fromkeys(acc["label"]))
    at_density = {k: one_setting(frames[k], density) for k in ("knn", "inference")}
    names = ["Summary", "After each task", "Capacity"] + ["KKT"] * bool(len(at_density["knn"]))
    names += ["Task inference"] * bool(len(at_density["inference"]))
    # Sections as tabs that draw only when open (2–4 charts, not 9: a revisit draws faster); in the URL. A link's
    # tab, seed or method this run lacks is said (the bound pickers fell back to their first option with no word).
    with links:
        ui.said_if_not_offered("cl_tab", names, "tab", f"this run's tabs ({', '.join(names)})")
    tabs = dict(zip(names, st.tabs(names, key="cl_tab", on_change="rerun", bind="query-params"), strict=True))
    # The seed picker (beside Density, above the tabs) is drawn once the open tab is known: Summary shows means
    # over the seeds, and there the picker changed nothing, so it is disabled and says so.
    on_summary = tabs["Summary"].open
    with links:
        ui.said_if_not_offered(
            "cl_seed", seeds, "seed", f"this run's seeds ({', '.join(map(str, seeds))})", f"seed {seeds[0]}"
        )
    seed = c2.selectbox(
        f"Seed ({'not used on Summary' if on_summary else 'this tab'})" if len(seeds) > 1 else "Seed",
        seeds,
        key="cl_seed",
        bind="query-params",
        disabled=on_summary,
        help="Summary shows the mean ± sd over every seed; After each task, Capacity (its three charts), KKT and "
        "Task inference show one seed's run.",
    )
    knn, inference = one_setting(at_density["knn"], density, seed), one_setting(at_density["inference"], density, seed)
    with links:
        linked_methods(methods, tabs, knn, inference, density)
    if tabs["Summary"].open:
        with tabs["Summary"]:
            a, b = st.columns(2)
            with a:
                ui.chart(ui.shared(cl_figures.accuracy_vs_density, summary), key="cl-acc-density")
            with b:
                ui.chart(ui.shared(cl_figures.forgetting_bars, summary, density), key="cl-forgetting")
    if tabs["After each task"].open:
        with tabs["After each task"]:
            st.caption(
                "Accuracy on each task (column) after training each task (row), per method. Grey: the task is not "
                "trained yet. White, in italics: the task's accuracy just before it was trained, which "
                "forgetting_with_untrained also counts; forgetting counts only the diagonal and below."
            )
            cols = st.columns(min(len(methods), 2))  # two to a row: a 5×5 matrix's numbers need ~450 px
            for i, (label, A) in enumerate(accuracy_matrices(acc, seed, density).items()):
                with cols[i % len(cols)]:
                    ui.chart(ui.shared(accuracy_figure, A, label, seed, density), key=f"cl-A-{label}")
    if tabs["Capacity"].open:
        with tabs["Capacity"]:
            capacity(frames, folder, methods, density, seed)
    if "KKT" in tabs and tabs["KKT"].open:
        with tabs["KKT"]:
            if len(knn):
                kkt_tab(knn, density, seed)
            else:  # (the tab is offered for the density: another seed has KKT results)
                st.info(f"No KKT results at seed {seed}: pick another seed.")
    if "Task inference" in tabs and tabs["Task inference"].open:
        with tabs["Task inference"]:
            if len(inference):
                inference_tab(inference, density, seed)
            else:
                st.info(f"No task-inference results at seed {seed}: pick another seed.")
    st.caption("Task masks are saved with the run: pick them under *Saved masks* to compare them on the Overlap page.")
    ui.export_button(
        "Continual learning",
        {"run": run_id, "density": density, "seed": int(seed)},
        [
            "cl-acc-density",
            "cl-forgetting",
            "cl-capacity",
            "cl-exclusive",
            "cl-owner",
            *[f"cl-knn-{m}" for m in dict.fromkeys(knn.get("label", ()))],
            *[f"cl-inference-{m}" for m in dict.fromkeys(inference.get("label", ()))],
            *[f"cl-A-{m}" for m in methods],
        ],
        ["cl-summary", "cl-inference"],
        # the closed tabs, on click, with the URL's owner image as read now (the click's own thread has no URL)
        more=partial(
            closed_parts,
            frames,
            str(folder),
            methods,
            density,
            seed,
            st.query_params.get("cl_owner"),
            st.query_params.get("cl_layer"),
        ),
        notes=said,
    )


def capacity(frames, folder, methods, density, seed) -> None:
    """Which weights the tasks claim: capacity and exclusive share over tasks, and one layer's owner image."""
    a, b = st.columns(2)
    with a:
        # the picked seed's, as the owner image beside them (they drew the mean over seeds under "Seed (this tab)")
        ui.chart(ui.shared(cl_figures.capacity_curves, frames["capacity"], density, seed=seed), key="cl-capacity")
        ui.chart(ui.shared(cl_figures.exclusive_fraction, frames["capacity"], density, seed=seed), key="cl-exclusive")
    with b:
        masked = [m for m in methods if m != FINETUNE]
        label = st.selectbox("Owner image of", masked, key="cl_owner", bind="query-params") if masked else None
        masks = ui.shared(load_task_masks, str(folder), label, density, seed) if label else []
        if masks:
            layers = list(masks[0])
            _linked("cl_layer", layers, "layer", f"the layers of {label}'s task masks", density, listed=False)
            layer = st.selectbox("Layer", layers, key="cl_layer", bind="query-params")
            ui.chart(ui.shared(owner_figure, masks, layer, label, density, seed), key="cl-owner")


def linked_methods(methods, tabs: dict, knn: pd.DataFrame, inference: pd.DataFrame, density) -> None:
    """A link's owner-image, KKT and task-inference methods this run lacks (at ``density`` and the seed of ``knn``
    and ``inference``) said as the link is read, the open tab whichever it is (:func:`_linked`)."""
    masked = [m for m in methods if m != FINETUNE]
    _linked("cl_owner", masked, "owner-image method", "this run's masked methods", density)
    for key, what, frame, tab in [
        ("cl_kkt", "KKT", knn, "KKT"),
        ("cl_inf", "task-inference", inference, "Task inference"),
    ]:
        if tab not in tabs or len(frame):  # (an offered tab with none at this seed says so; its entry is kept)
            options = list(dict.fromkeys(frame.get("label", ())))
            _linked(key, options, f"{what} method", f"this run's {what} methods", density)


def _linked(key: str, options: list, what: str, among: str, density: float, listed: bool = True) -> None:
    """A link's entry for the picker ``key`` (drawn later, in a tab that may be closed or not offered) naming none of
    its ``options`` (``among``: what they are, listed after it unless not ``listed``): said once, with the first
    option shown instead, or left out where there are none (at ``density``), and dropped from the URL as the link is
    read (Streamlit leaves the entry of a picker it does not draw). An empty entry says nothing."""
    raw, first = st.query_params.get(key), ui.link_mark(key) not in st.session_state
    if options:
        ui.said_if_not_offered(key, options, what, f"{among} ({', '.join(options)})" if listed else among)
    else:
        among = f"{among} (none at density {_percent(density)})"
        line = uilogic.stale_choices_line(what, [raw], among, None) if raw else None
        ui.said_once(key, line, None)
    if first and raw is not None and (not options or uilogic.url_choice(raw, options, None) is None):
        del st.query_params[key]  # (a bound picker drops it as it is drawn; one in a closed tab is not drawn)


FINETUNE = "finetune"  # the label of the finetuning baseline (supermask.methods), at density 1.0


def accuracy_matrices(acc: pd.DataFrame, seed, density) -> dict:
    """Each method's accuracy after each task (rows: after task, columns: task) at one seed and density."""
    out = {}
    for label in dict.fromkeys(acc["label"]):
        at = (acc["label"] == FINETUNE) | np.isclose(acc["density"], density)  # (a SupSup run at 1.0 came twice)
        one = acc[(acc["label"] == label) & (acc["seed"] == seed) & at]
        if len(one):
            out[label] = one.pivot(index="after_task", columns="task", values="acc").to_numpy()
    return out


FORGETTING_NOTE = (
    "forgetting: the largest drop of a task's accuracy after it was learned, from its best on or after its own "
    "row to the end (mean over every task but the last). forgetting_with_untrained: as ExSSNeT's code computes "
    "it, whose best also counts the task's accuracy just before it was trained (the white cells under After each "
    "task); it reads more where a task scored higher untrained than trained."
)
# one fixed size for every cell's number: left to Plotly, the italic cells shrank to 2 px beside 7 px ones
CELL_FONT = 11
BEFORE_TRAINING = "#FFFFFF"  # the cell A[t, t+1]: the next task's accuracy before it is trained, set apart from both


def accuracy_figure(A, label: str, seed, density: float):
    """One method's accuracy matrix, tasks counted from 1; the title names the density (finetuning: dense) and the
    seed (a downloaded figure has no picker beside it). The cells just right of the diagonal, A[t, t+1] (task t+1 just before it is
    trained), are drawn white with their number in italics and a hover that says so: ExSSNeT's code counts them
    in its forgetting (forgetting_with_untrained), and they were grey with no number, so the cell behind that
    number could not be found."""
    tasks = [f"task {j + 1}" for j in range(A.shape[1])]
    title = (
        f"{figures.plain_label(label)}, {'dense' if label == FINETUNE else f'density {_percent(density)}'}, seed {seed}"
    )
    fig = cl_figures.mark_missing_accuracies(figures.accuracy_matrix(A, tasks, title=title), A)  # NaN: "n/a"
    n = A.shape[0]
    if n < 2 or A.shape[1] != n:
        return fig
    before = np.full((n, n), np.nan)
    rows = np.arange(n - 1)
    before[rows, rows + 1] = 100 * np.asarray(A, dtype=np.float64)[rows, rows + 1]
    fig.add_trace(
        go.Heatmap(
            z=before,
            x=tasks,
            y=tasks,
            text=np.where(np.isnan(before), "", np.char.mod("%.1f", before)),
            texttemplate="<i>%{text}</i>",
            textfont={"color": "#555555", "size": CELL_FONT},
            colorscale=[[0, BEFORE_TRAINING], [1, BEFORE_TRAINING]],
            showscale=False,
            hoverongaps=False,
            xgap=2,
            ygap=2,
            hovertemplate="after training %{y}<br>on %{x}, before it was trained: %{z:.2f}%"
            "<br>(counted in forgetting_with_untrained only)<extra></extra>",
        )
    )
    fig.data[0].textfont.size = CELL_FONT
    return fig.update_layout(
        title_text=f"{title}<br><sup>grey: task not trained yet</sup><br><sup>white, in italics: just before it was trained</sup>",
        margin_t=100,
    )


def one_setting(frame: pd.DataFrame, density, seed=None) -> pd.DataFrame:
    """The rows of ``frame`` (knn, inference) at one density and seed (every method's; every seed's: None)."""
    if not len(frame):
        return frame
    at = np.isclose(frame["density"], density)
    return frame[at & (frame["seed"] == seed)] if seed is not None else frame[at]


def kkt_tab(knn: pd.DataFrame, density, seed) -> None:
    """One method's KNN accuracies (methods choose differently, so each chart is one run's)."""
    label = st.selectbox("Method", list(dict.fromkeys(knn["label"])), key="cl_kkt", bind="query-params")
    st.caption(
        "Before training a new task, KKT classifies its data by k-nearest neighbours on the features of each "
        "earlier task's mask. Each bar is one such accuracy in this method's run; the outlined bar marked "
        "*chosen* is the mask the new task started from (the best one, when it beats chance 1/C; a task with "
        "none marked started from fresh scores)."
    )
    ui.chart(ui.shared(knn_figure, knn[knn["label"] == label], label, density, seed), key=f"cl-knn-{label}")


def inference_tab(inference: pd.DataFrame, density, seed) -> None:
    """How often SupSup's one-shot task inference found the right mask, beside the brute-force reference."""
    label = st.selectbox("Method", list(dict.fromkeys(inference["label"])), key="cl_inf", bind="query-params")
    st.caption(
        "SupSup one-shot task inference (experimental): the task of a batch of test samples is not given but "
        "inferred from the masks. For each true task and batch size, the share of trials (batches of test "
        "samples of that task) whose inferred mask was that task's: by SupSup's one-shot gradient test (one "
        "forward and backward pass) and by the lowest output entropy over every mask (one pass per mask). "
        "Chance is 1/T. When the right mask is inferred, the accuracy is that task's own in the matrix."
    )
    one = inference[inference["label"] == label]
    ui.chart(ui.shared(inference_figure, one, label, density, seed), key=f"cl-inference-{label}")
    ui.table(inference_table(inference), "cl-inference", INFERENCE_CAPTION)


INFERENCE_CAPTION = "Task inference: share of trials in which the right mask was inferred"


def inference_table(inference: pd.DataFrame) -> pd.DataFrame:
    """The inference rows as the table shows them: tasks counted from 1, both tests' shares and chance 1/T."""
    t = inference.assign(task=inference["task"] + 1, chance=1 / (inference["task"].max() + 1))
    t = t.rename(columns={"accuracy": "one_shot_accuracy"})
    cols = ["label", "density", "seed", "task", "samples", "trials", "one_shot_accuracy", "min_entropy_accuracy"]
    return t[[*cols, "chance"]].reset_index(drop=True)


def knn_figure(knn: pd.DataFrame, label: str, density, seed):
    title = (
        f"{figures.plain_label(label)}: KNN accuracy of each earlier mask (density {100 * density:g} %, seed {seed})"
    )
    return cl_figures.knn_bars(knn, title=title)


def inference_figure(inference: pd.DataFrame, label: str, density, seed):
    title = f"{figures.plain_label(label)}: right mask inferred (density {100 * density:g} %, seed {seed})"
    return cl_figures.inference_bars(inference, title=title)


def closed_parts(
    frames, folder: str, methods, density, seed, owner: str | None = None, layer: str | None = None
) -> tuple[dict, dict]:
    """Every tab's figures for the export (the open tab's are drawn; the others are built here on click),
    the owner image for the method ``owner`` and ``layer`` the URL names (else the first of each, as the tab
    opens)."""
    summary, acc, cap = frames["summary"], frames["accuracy"], frames["capacity"]
    figs = {
        "cl-acc-density": cl_figures.accuracy_vs_density(summary),
        "cl-forgetting": cl_figures.forgetting_bars(summary, density),
        "cl-capacity": cl_figures.capacity_curves(cap, density, seed=seed),
        "cl-exclusive": cl_figures.exclusive_fraction(cap, density, seed=seed),
    }
    for label, A in accuracy_matrices(acc, seed, density).items():
        figs[f"cl-A-{label}"] = accuracy_figure(A, label, seed, density)
    knn, inference = one_setting(frames["knn"], density, seed), one_setting(frames["inference"], density, seed)
    for label in dict.fromkeys(knn.get("label", ())):
        figs[f"cl-knn-{label}"] = knn_figure(knn[knn["label"] == label], label, density, seed)
    for label in dict.fromkeys(inference.get("label", ())):
        figs[f"cl-inference-{label}"] = inference_figure(inference[inference["label"] == label], label, density, seed)
    tables = {"cl-inference": (INFERENCE_CAPTION, inference_table(inference))} if len(inference) else {}
    masked = [m for m in methods if m != "finetune"]
    label = owner if owner in masked else (masked[0] if masked else None)
    masks = load_task_masks(folder, label, density, seed) if label in masked else []
    if masks:
        layer = layer if layer in masks[0] else next(iter(masks[0]))
        figs["cl-owner"] = owner_figure(masks, layer, label, density, seed)
    return figs, tables


def body() -> None:
    st.title("Continual learning with supermasks")
    st.caption(
        "A fixed random network learns one mask per task. SupSup trains masks only (it never forgets what it "
        "learned); SSNeT then trains the weights in each mask (forgets); ExSSNeT trains only weights no earlier "
        "mask uses (no forgetting, more accuracy); KKT starts a task from the most useful earlier mask."
    )
    views = ["Results", "Launch"]
    ui.said_if_not_offered("cl_view", views, "view", f"this page's views ({', '.join(views)})")
    view = st.segmented_control(
        "View",
        views,
        default="Results",
        required=True,
        key="cl_view",
        bind="query-params",
        label_visibility="collapsed",
    )
    if len(ui.active_runs("continual")):
        ui.live(partial(ui.job_progress, "continual", "tasks trained"), "continual")
    if view == "Launch":
        launch()
    else:
        results()


def _run_name(cfg: ContinualConfig) -> str:
    """A launched run's name: its benchmark, methods, densities as the page writes them, and task count."""
    dens = "/".join(_percent(d) for d in cfg.density)
    return f"{cfg.benchmark}: {'/'.join(cfg.methods)}, d={dens}, T={cfg.tasks}"


def _percent(density: float) -> str:
    """A density as the page writes it elsewhere: ``5 %`` for 0.05."""
    return f"{100 * density:g} %"


ui.run_page(body)
