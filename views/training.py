"""Training runs: launch a full or subnetwork-only finetune (TRL), watch it, compare the twins."""

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import streamlit as st

from subnetviz import config, selection, ui, uilogic
from subnetviz.cache import file_stamp
from subnetviz.demo.comparison import model_files
from subnetviz.figures.updates import percent_text
from subnetviz.jobs.context import read_json
from subnetviz.report import training as pages
from subnetviz.training import mask_origin
from subnetviz.training.config import STRATEGIES, process_room, train_device
from subnetviz.training.mask_origin import random_origin, run_hparams

AUTO = "zoo set A in this algorithm's format"
OWN_EVAL = "the training data's own held-out set"  # B_train -> B_eval; set A (AUTO) -> A_eval
ZOO_DATA = {"grpo": "A_train", "dpo": "dpo_A", "sft": "sft_A"}


def data_files() -> dict[str, str]:
    root = config.zoo_dir() / "data"
    return {f.stem: str(f) for f in sorted(root.glob("*.jsonl"))} if root.is_dir() else {}


def launch(ws) -> None:
    if not ui.allowed("launch"):
        return
    data = data_files()
    masks = {"none (full finetune)": None}
    if ws.base and ws.finetuned:
        from subnetviz.analysis.updates import mask_path

        analysis = ui.update_analysis(ws)
        masks.update({f"update mask of {m}": str(mask_path(analysis.source_dir, m)) for m in analysis.labels})
    masks.update({label: path for label, path in ws.masks})
    with st.form("launch"):
        c1, c2, c3 = st.columns(3)
        algorithm = c1.selectbox("Algorithm", ["grpo", "dpo", "sft"], key="tr_alg")
        members = selection.zoo_members(ui.zoo())  # a zoo member shows by its id, never by a server path
        default = ws.base_label if ws.base_label in members else (ws.base or "")
        base = c2.text_input("Base checkpoint (zoo id or folder)", value=default, key="tr_base")
        mask_label = c3.selectbox(
            "Train only",
            list(masks),
            key="tr_mask",
            format_func=_mask_choice_names(masks),  # a run as "name · id", as the page's other pickers name it
            help=f"The subnetwork to train, every other entry left bit-identical: {mask_origin.CONVENTION}.",
        )
        random_twin = c3.checkbox(  # a short label: a third of the form's width cut the long one off
            "random control mask",
            key="tr_random",
            help="Train a random mask of the same per-tensor density instead of the chosen one: the control that "
            "tells whether the chosen subnetwork matters or only its size.",
        )
        train_opts = [AUTO] + [k for k in data if k not in ("pretrain", "dev") and not k.endswith("eval")]
        d1, d2 = st.columns(2)
        train_data = d1.selectbox(
            "Training data (JSONL)",
            train_opts,
            key="tr_data",
            accept_new_options=True,
            help="A zoo data set, or a path to your own JSONL: SFT {prompt, completion}, "
            "DPO {prompt, chosen, rejected}, GRPO {prompt, answer}.",
        )
        # A form does not rerun when Training data changes: the default is resolved on submit (it stayed A_eval
        # for B_train, and the card's accuracy on set A read as the run's own held-out accuracy).
        eval_opts = [OWN_EVAL, *(k for k in data if k.endswith("eval"))]
        eval_data = d2.selectbox("Held-out data for accuracy", eval_opts, key="tr_eval", index=0)
        from subnetviz.jobs.cluster import resolve_address

        on_cluster = bool(resolve_address(ui.compute_address()))  # jobs go to a Ray cluster: it hands out GPUs
        e1, e2, e3, e4, e5, *e6 = st.columns(6 if on_cluster else 5)
        steps = e1.number_input("Steps", 1, 100_000, 30, key="tr_steps")
        # below 1, as a run takes it (1.0 was offered, then refused on launch); 0.99 is the largest the field's
        # two digits show as itself (0.999 read "1.0e+00")
        lr = e2.number_input(
            "Learning rate", 1e-8, 0.99, 1e-5, format="%.1e", key="tr_lr", help="above 0 and below 1 (at most 0.99)"
        )
        seed = e3.number_input("Seed", 0, 2**31 - 1, 0, key="tr_seed")
        strategy = e4.selectbox(
            "Strategy",
            STRATEGIES,
            key="tr_strategy",
            help="single process, DDP, FSDP2 or DeepSpeed ZeRO-2 / ZeRO-3 (sharded; GPUs or CPU)",
        )
        # on this server, as many as it runs at once (a count past the bound arriving from the page is taken as the
        # default, 1, by Streamlit; its submit or launch refuses it besides); on Ray the job declares what it takes
        most, each = (256, None) if on_cluster else _process_room()
        nproc = e5.number_input(
            "Processes",
            1,
            most,
            1,
            key="tr_nproc",
            help="processes that train together" + (f" (here at most {most}: one {each} each)" if each else ""),
        )
        gpus = (
            e6[0].number_input(
                "GPUs",
                0,
                256,
                0,
                key="tr_gpus",
                help="GPUs the job asks its Ray cluster for; the processes that train together share them "
                "(one each). 0: it trains on CPUs.",
            )
            if on_cluster
            else 0
        )
        submitted = st.form_submit_button("Launch run", type="primary", icon=":material/play_arrow:")
    if submitted and 0 < gpus < nproc:
        ui.error(f"{int(nproc)} processes need {int(nproc)} GPUs (one each); the job asks for {int(gpus)}.")
    elif submitted and random_twin and not masks[mask_label]:  # (it queued a full finetune, named as asked)
        ui.error(
            "A random control mask takes the density of a chosen mask: choose one under *Train only* (with none, "
            "it would train every parameter)."
        )
    elif submitted:
        with ui.said_here():  # the form stays, with its values (a data path outside the roots)
            mask = masks[mask_label]
            if mask:  # an update mask lives in the cache, which may remove it before the run starts: a kept copy
                mask = selection.kept_mask(mask, mask_label.replace(" ", "-"))
            if mask and random_twin:
                mask = f"random:{mask}"
            if train_data == AUTO:
                train_data = ZOO_DATA[algorithm]
            base = selection.resolve_choice(base, members)  # the server reads only under the allowed roots
            train_path = data.get(train_data) or str(config.check_allowed(train_data))
            eval_path = _zoo_eval_of(train_path) if eval_data == OWN_EVAL else data.get(eval_data)
            cfg = {
                "kind": "train",
                "algorithm": algorithm,
                "base": base,
                "data": train_path,
                "eval_data": eval_path,
                "mask": mask,
                "steps": int(steps),
                "learning_rate": float(lr),
                "seed": int(seed),
                "strategy": strategy,
                "num_processes": int(nproc),
                **({"num_gpus": int(gpus)} if gpus else {}),
            }
            if algorithm == "grpo":
                cfg.update(batch_size=16, num_generations=8, max_completion_length=4)
            # the mask read whole (bit-packed) before anything is queued: values outside {0, 1} are refused here,
            # not by the worker after "Queued run" (the submit check reads headers only)
            dense = mask_origin.dense_mask_note(mask_origin.mask_densities(masks[mask_label])) if mask else None
            name = pages.run_name(cfg, mask_label if mask else None, random_twin)
            run_id, new = ui.submit_job(cfg, name=name)
            ui.queued_line(run_id, new, f"[Follow it in Runs](training?tr_view=Runs&tr_run={run_id}).")
            if eval_path is None:
                ui.warning(
                    f"No held-out accuracy for this run: {Path(train_path).name} has no held-out set of its own here "
                    "(the zoo's training sets have one); choose one under *Held-out data for accuracy* to measure it."
                )
            if note := mask_note(mask, cfg):
                ui.warning(note)
            if dense:
                ui.warning(dense)


def _mask_choice_names(masks: dict[str, str | None]):
    """How *Train only* shows its choices: the update mask of a run chosen in the sidebar (``run <id>``, the
    value kept) as ``update mask of run <name · id>`` (:func:`~subnetviz.uilogic.choice_name`), the rest as they are."""
    prefix = "update mask of "
    if not any(k.startswith(prefix + "run ") for k in masks):
        return str
    runs = ui.job_runner().list_runs()
    names = pages.run_names(runs) if len(runs) else {}
    return lambda k: prefix + uilogic.choice_name(k[len(prefix) :], names) if k.startswith(prefix) else k


def _process_room() -> tuple[int, str | None]:
    """The most processes a run launched from this server may start here, and what each takes (one CPU core, or
    one GPU: :func:`~subnetviz.training.config.process_room`); (256, None) where the run's device cannot be told
    (``SUBNETVIZ_DEVICE`` naming none here: the launch says why)."""
    from subnetviz.errors import SubnetvizError

    try:
        most, each = process_room(train_device())
    except SubnetvizError:
        return 256, None
    return max(1, min(most, 256)), each


def mask_note(mask: str | None, cfg: dict) -> str | None:
    """A warning when the training mask is the update mask of a run with other hyperparameters: a zoo member, one of
    its series checkpoints (``grpo-s0@12``), a run's model or checkpoint, a run named as the pickers name it."""
    if not mask:
        return None
    path = mask[7:] if str(mask).startswith("random:") else str(mask)
    z = ui.zoo()
    members = {m.id: m for m in z.members} if z is not None else {}
    series = {f"grpo-s0@{step}": folder for step, folder in z.series} if z is not None else {}  # (the sidebar's ids)
    meta = selection.mask_info(path, file_stamp(path))
    source = mask_origin.identify(meta, members, config.runs_dir(), series)
    if source is None:
        return None
    owner, step = mask_origin.checkpoint_of(source)
    runs, shown = {}, source
    if owner.startswith("run ") and owner not in members:
        df = ui.job_runner().list_runs()
        runs = {i: c for i, c in zip(df["id"], df["config"], strict=True) if i == owner[4:]}
        shown = uilogic.choice_name(source, pages.run_names(df) if len(df) else {})
    hp = mask_origin.source_hparams(source, members, runs)
    return mask_origin.mismatch_note(shown, hp, cfg) if hp else None


def runs_view() -> None:
    """The registry's runs; polls every 2 s while one is queued or running, static otherwise."""
    ui.live(_runs_view)


def _runs_view() -> None:
    r = ui.job_runner()
    r.poll()
    df = r.list_runs()
    if not len(df):
        st.caption("No runs yet.")
        return
    ui.runs_table(df, "runs-table", "Runs")
    names = pages.run_names(df)
    # Inside this live fragment the URL is read and written by hand (stale ids dropped): bound widgets
    # in a fragment do not restore from the address bar.
    ids, asked = list(df["id"]), st.query_params.get("tr_run")
    shown = pages.shown_run(df, asked)
    # a link's run this server lacks (ids differ between servers; runs get deleted): said, with the run shown
    stale = asked is not None and asked not in ids
    newest = "the newest training run" if dict(zip(ids, df["kind"], strict=True))[shown] == "train" else "the newest"
    line = uilogic.stale_link_line("run", asked, "this server's runs", f"{newest}, {names[shown]},") if stale else None
    if said := uilogic.link_fallback(st.session_state, "tr_run", line, shown):
        ui.warning(said)
    run_id = st.selectbox("Run", ids, index=ids.index(shown), key="tr_run", format_func=names.get)
    st.query_params["tr_run"] = run_id
    rec = r.get(run_id)
    cols = st.columns([2, 1, 3])  # a sixth of the column cut "succeeded" to "succee…"
    cols[0].metric("status", rec.status)
    if (
        not rec.finished
        and ui.can("launch")
        and cols[1].button("Cancel", key=f"cancel-{run_id}", icon=":material/stop:")
    ):
        r.cancel(run_id)
        st.rerun(scope="fragment")
    run_card(rec, names.get(run_id))
    if rec.error and rec.status == "cancelled":  # a cancellation is what the user asked for, not an error
        st.caption(f"Cancelled: {ui.plain(rec.error)}")
    elif rec.error:
        ui.error(rec.error)
    if not pages.has_curves(r, run_id):  # nothing to overlay or smooth (a job that logs no curves, or none yet)
        return
    others = pages.overlay_options(r, df, run_id)  # the same kind's runs with curves (a continual log is no curve)
    linked = st.query_params.get_all("tr_overlay")
    kept = [i for i in linked if i in others]
    dropped = [uilogic.entry_name(i) for i in dict.fromkeys(linked) if i not in others]
    line = (  # (left out with no word: the chart showed fewer runs than the link named)
        f"The link's overlay run{'s' if len(dropped) > 1 else ''} {uilogic.some_names(dropped)} "
        f"{'are' if len(dropped) > 1 else 'is'} not among this server's runs of this kind with curves; "
        f"{'they are' if len(dropped) > 1 else 'it is'} left out."
        if dropped
        else None
    )
    if said := uilogic.link_fallback(st.session_state, "tr_overlay", line, kept):
        ui.warning(said)
    overlay = st.multiselect(
        "Overlay runs (full / subnetwork / random-mask control)",
        others,
        format_func=names.get,
        default=kept,
        key="tr_overlay",
    )
    st.query_params["tr_overlay"] = overlay
    # a link's smoothing outside 0–0.95, or no number: said, with the one shown (read unclamped, it differs from it)
    asked = st.query_params.get("tr_smooth")
    smooth = uilogic.url_number(asked, 0, 0.95, 0)
    stale = asked not in (None, "") and uilogic.url_number(asked, -1, 2, -1) != smooth
    line = uilogic.stale_link_line("smoothing", asked, "the smoothings on offer (0 to 0.95)", f"{smooth:g}")
    ui.said_once("tr_smooth", line if stale else None, st.session_state.get("tr_smooth", smooth))
    smoothing = st.slider(
        "Smoothing (EMA)",
        0.0,
        0.95,
        smooth,
        0.05,
        key="tr_smooth",
    )
    st.query_params["tr_smooth"] = f"{smoothing:g}"
    if (fig := pages.curves_figure(r, [run_id, *overlay], names, smoothing, ui.workspace().finetuned)) is not None:
        ui.chart(fig, key="curves")


def zoo_accuracy(cfg: dict) -> tuple[float | None, str]:
    """A demo zoo member's held-out accuracy as its build measured it (its training had no eval set), with the file
    it is on (the member's own problem set's, ``B_eval.jsonl`` for grpo-B); None for any other run, or when the zoo
    was rebuilt since the run was registered."""
    z = ui.zoo()
    if z is None or not cfg.get("zoo_member") or cfg.get("zoo_fingerprint") != z.manifest.fingerprint:
        return None, ""
    m = next((m for m in z.manifest.members if m.id == cfg["zoo_member"]), None)
    if m is None:
        return None, ""
    return m.accuracy, f"{m.data}_eval.jsonl" if m.data in ("A", "B") else "its own held-out set"


# Job kinds whose results have a page of their own: (page, its title, the URL parameter that picks the run
# by its "name · id" label, or None where the page picks masks, not runs: a mask job's link picks its mask).
RESULTS_PAGE = {
    "drivers": ("drivers", "What drives sparsity", "dr_run"),
    "continual": ("continual", "Continual learning", "cl_run"),
    "bigram_mask": ("bigram", "Bigram subnetworks", None),
}


def _mask_pick(rec) -> dict[str, str]:
    """The Bigram page's URL that picks a mask job's mask: as the bigram mask, or as the optimal mask
    it is compared with (the page's two pickers), by the label the saved-mask list gives it."""
    outputs = os.path.realpath(Path(rec.run_dir) / "outputs") + os.sep
    label = next((k for k, p in selection.saved_masks().items() if os.path.realpath(p).startswith(outputs)), None)
    if label is None:
        return {}
    return {"bg_opt" if (rec.config or {}).get("target") == "optimal" else "bg_mask": label}


def run_card(rec, run_label: str | None = None) -> None:
    """The run's config (algorithm, mask and where it came from, lr, steps, data), final numbers, bit-identity check;
    a job with a results page of its own links there (``run_label``: its "name · id", as the pickers show it)."""
    cfg = rec.config or {}
    if rec.kind != "train":
        st.caption(
            f"{ui.plain(rec.kind)} job · "
            + ", ".join(
                f"{k} {ui.plain('/'.join(map(str, v)) if isinstance(v, list) else str(v))}"
                for k, v in cfg.items()
                if k in ("target", "lambda", "lam", "preset", "steps", "seed", "seeds", "benchmark", "methods", "tasks")
                and v is not None  # unset: the preset's default (a mask job's steps read "steps None")
            )
        )
        if rec.status == "succeeded" and rec.kind in RESULTS_PAGE:
            page, title, param = RESULTS_PAGE[rec.kind]
            query = {param: run_label} if param and run_label else _mask_pick(rec) if rec.kind == "bigram_mask" else {}
            st.page_link(
                f"views/{page}.py",
                label=f"Its results on {title}",
                icon=":material/arrow_forward:",
                query_params=query or None,
            )
        return
    mask = cfg.get("mask")
    model = Path(rec.run_dir) / "outputs" / "model"
    # The values it trained with: its train_config.json once saved, else its job config with the trainer's
    # defaults for what that left out (a job submitted without lr or seed read "lr nan · seed ?").
    recorded = read_json(model / "train_config.json")
    hp = run_hparams(cfg, recorded)
    st.caption(
        f"{ui.plain(hp['algorithm'] or rec.kind)} · mask: {mask_label(mask)} · lr {hp['learning_rate']:.1e} · "
        f"{hp['steps']} steps · seed {hp['seed']} · data {ui.plain(Path(str(cfg.get('data', '?'))).name)} · "
        f"{ui.plain(pages.run_processes(cfg, recorded))}"
    )
    summary = model / "train_summary.json"
    if summary.is_file():
        summary_card(summary, cfg, mask)
    elif rec.last_metrics:
        st.caption(
            "Last metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in rec.last_metrics.items() if isinstance(v, float))
        )
    if note := mask_note(mask, {**cfg, **hp}):
        ui.warning(note)
    if mask and (note := dense_note(str(mask))):
        ui.warning(note)  # (said on submit only: a run shared by link, or launched by the CLI, said nothing)


def dense_note(mask: str) -> str | None:
    """The run card's warning on a mask denser than 50 % (:func:`~subnetviz.training.mask_origin.dense_note_of`,
    memoised by the file's stamp), or why it could not be checked now (lack of memory: for this run only, as it
    is not kept; memoised as no warning, the warning was lost for the server's life), or here (a file this server
    may not read: its provenance is not read either, so no warning of either kind was dropped without a word)."""
    from subnetviz.errors import PathNotAllowedError, SubnetvizError

    try:
        return ui.shared(mask_origin.dense_note_of, mask, file_stamp(mask.removeprefix("random:")))
    except PathNotAllowedError as exc:
        return f"This mask's density (1 = frozen?) and provenance (the run it came from) cannot be checked here: {exc}"
    except SubnetvizError as exc:
        return f"Whether this mask is denser than 50 % (1 = frozen?) cannot be checked now: {exc}"


def mask_label(mask: str | None) -> str:
    """How a run card names its mask: none, the random twin of a file, or the file (saying so when the file is
    itself a random control mask, such as a random run's saved ``subnetwork_mask.safetensors``)."""
    if not mask:
        return "none (full finetune)"
    if str(mask).startswith("random:"):
        return f"random twin of {ui.plain(Path(mask[7:]).name)}"
    origin = random_origin(selection.mask_info(str(mask), file_stamp(mask)))
    return ui.plain(Path(mask).name + (f" ({origin})" if origin else ""))


SUMMARY_MAX_BYTES = 1 << 20  # a run's train_summary.json is a few KiB; a larger one is not read (every 2-s poll)


def _number(value) -> float | int | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _count(value) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "?"


def summary_card(path: Path, cfg: dict, mask: str | None) -> None:
    """A finished run's final numbers and bitwise check from its ``train_summary.json``, read bounded and with its
    types checked (the run folder is a file on disk: a cut-off, listed or oversized one broke the whole card)."""
    try:
        too_big = path.stat().st_size > SUMMARY_MAX_BYTES
    except OSError:
        too_big = True
    s = {} if too_big else read_json(path)
    if not s:
        st.caption(
            f"{path.name} is unreadable (not a JSON object, cut off, or over {SUMMARY_MAX_BYTES >> 20} MiB): "
            "this run's final numbers are not shown."
        )
        return
    metrics = s.get("metrics") if isinstance(s.get("metrics"), dict) else {}
    # The accuracy names the set it is on: the run's eval_data, or a zoo member's own set (a run on B_train held
    # out on A_eval read as accuracy on B beside grpo-B's).
    held_out = cfg.get("eval_data") or read_json(path.parent / "train_config.json").get("eval_data")  # (as run)
    accuracy, on = _number(s.get("accuracy")), Path(held_out).name if isinstance(held_out, str) else ""
    if accuracy is None:
        accuracy, on = zoo_accuracy(cfg)
    shown = [(k, _number(v)) for k, v in metrics.items() if k in ("loss", "reward", "grad_norm")][:3]
    # Each value short enough for a quarter of the column at 1024 px (uilogic.metric_number; its full digits in the
    # help), and the held-out file on a caption: "-7.451e-09" was cut to "-7.451…" and read as -7.45, and
    # "accuracy (A_eval.jsonl)" to "accuracy (A_eval.js…".
    cols = st.columns(4)
    for col, (label, value) in zip(cols, shown, strict=False):
        text = "—" if value is None else uilogic.metric_number(value)
        full = None if value is None else f"{value:.10g}"
        col.metric(label, text, help=f"{label} {full}" if full is not None and text != full else None)
    where = f"on {ui.plain(on)}" if on else ""
    cols[len(shown)].metric(
        "accuracy", "—" if accuracy is None else f"{100 * accuracy:.1f} %", help=f"held-out accuracy {where}".strip()
    )
    if isinstance(device := s.get("device"), str) and device:  # (recorded since runs follow SUBNETVIZ_DEVICE)
        st.caption(f"Trained on {ui.plain(device)}.")
    if where:
        st.caption(f"Accuracy {where}.")
    if isinstance(n := s.get("nonfinite_steps"), int) and n > 0:  # its loss went NaN/Inf: a number above is no result
        ui.warning(
            f"The run diverged: loss or gradient norm NaN/Inf at {n:,} step(s), first at "
            f"step {s.get('first_nonfinite_step')}."
        )
    check = s.get("mask_check") if isinstance(s.get("mask_check"), dict) else {}
    weights = check.get("weights") if isinstance(check.get("weights"), dict) else {}
    since = _changed_since(path.parent, weights) if weights else None
    if check and not mask:  # a full finetune: every parameter trainable, nothing lies outside
        st.caption(
            f"Full finetune: {_count(check.get('changed_inside', 0))} entries changed, no mask to stay outside of."
            + (f" {since}" if since else "")
        )
    elif check:
        ok = check.get("outside_mask_identical") is True
        verdict = (
            f"Outside the mask: {'bit-identical to the base' if ok else 'NOT bit-identical'} "
            f"({_count(check.get('changed_outside', 0))} entries changed outside, "
            f"{_count(check.get('changed_inside', 0))} inside)"
        )
        if since:  # the verdict is about the weights as saved, not the model there now: no green line
            ui.warning(f"{verdict} when checked after training. {since}")
        else:
            (st.success if ok else st.warning)(verdict + ".")
            if not weights:  # a summary from before checks recorded the weights they read
                st.caption("Checked after training; this summary does not record which weights the check read.")


def _changed_since(folder: Path, record: dict) -> str | None:
    """A line saying that the model's weights files are no longer those the summary's check read (``record``:
    rewritten, edited, partly copied: :func:`~subnetviz.training.config.changed_weights`), else None."""
    from subnetviz.training.config import changed_weights

    changed = ui.shared(changed_weights, str(folder), record, file_stamp(folder))
    if not changed:
        return None
    files = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    return (
        f"The model on disk changed since ({ui.plain(files)} not as checked): the check says nothing about the "
        "weights there now."
    )


def compare(ws, said: list[str] | None = None) -> None:
    said = [] if said is None else said
    found = _candidates()
    models, own = {k: v[0] for k, v in found.items()}, {k: v[1] for k, v in found.items()}
    bases = {k: v[2] for k, v in found.items()}
    ui.need(len(models) >= 2, "Two finished models are needed for a comparison.")
    keys = list(models)
    c1, c2 = st.columns(2)
    usual = (
        keys.index("zoo grpo-s0") if "zoo grpo-s0" in keys else 0,
        keys.index("zoo grpo-sub") if "zoo grpo-sub" in keys else 1,
    )
    # A link's model, accuracy toggle or held-out set naming nothing on offer here: said, with what is shown instead
    # (each fell back to its default without a word: another comparison than the sender's).
    among = "the finished models on offer here"
    ui.said_if_not_offered("cmp_full", keys, "full finetune", among, default=keys[usual[0]])
    ui.said_if_not_offered("cmp_sub", keys, "subnetwork-only twin", among, default=keys[usual[1]])
    full = c1.selectbox(
        "Full finetune",
        keys,
        index=usual[0],
        key="cmp_full",
        bind="query-params",
    )
    sub = c2.selectbox(
        "Subnetwork-only twin",
        keys,
        index=usual[1],
        key="cmp_sub",
        bind="query-params",
    )
    # Held-out accuracy generates with both models (seconds): on request, so the bitwise comparison shows at once.
    asked = st.query_params.get("cmp_acc")  # (a bound toggle reads true or false, in any case)
    stale = asked not in (None, "") and asked.lower() not in ("true", "false")
    line = uilogic.stale_link_line("accuracy setting", asked, "true or false", "false (off)") if stale else None
    ui.said_once("cmp_acc", line, st.session_state.get("cmp_acc", False))
    with_acc = st.toggle("Also held-out accuracy (generates with both models)", key="cmp_acc", bind="query-params")
    eval_data = eval_set(full, sub, own) if with_acc else None
    # The base row and the changes vs base: the base both models were trained from, else the sidebar's.
    base, base_note = pages.comparison_base(bases[full], bases[sub], ws.base)
    # With an eval set, each model's folder too: the accuracy generates with its config and tokenizer.
    stamp = (
        *(ui.fingerprint(p) for p in (models[full], models[sub], base) if p),
        file_stamp(eval_data),
        *(model_files(models[full], models[sub], base) if eval_data is not None else ()),
    )
    compute = partial(_comparison, models[full], models[sub], base, eval_data, stamp)
    if eval_data is not None:  # generation with three models: priced, and asked for, before it starts
        from subnetviz.analysis.cost import accuracy_cost
        from subnetviz.demo.comparison import is_cached

        paths = [p for p in (base, models[full], models[sub]) if p]
        result = ui.heavy(
            ("accuracy", stamp),
            lambda: is_cached(models[full], models[sub], base, eval_data),
            lambda: accuracy_cost(paths, eval_data),
            compute,
            models=True,
        )
    else:
        result = compute()
    figs, tables = pages.comparison_parts(result, full, sub, base_label(base), base_note)
    if "accuracy" in tables and eval_data:  # which data the numbers are on: the models may be held out on others
        tables["accuracy"] = (
            tables["accuracy"][0].replace("Held-out accuracy", f"Held-out accuracy on {Path(eval_data).name}", 1),
            tables["accuracy"][1],
        )
    a, b = st.columns(2)
    with a:
        # (two decimals, or the digits that tell a share just under 100 from 100: one differing in 10^5 is not 100.00)
        identical = percent_text([100 * result.share_identical], decimals=2)[0]
        st.metric("parameters bitwise identical", f"{identical} %" if identical else "n/a")  # (n/a: no parameters)
        for key, (caption, frame) in tables.items():
            ui.table(frame, key, caption)
    with b:
        ui.chart(figs["cmp-ulp"], key="cmp-ulp")
    for line in _RECOMPUTED.pop((models[full], models[sub], base, eval_data, stamp), []):  # (damaged: computed again)
        ui.note(line, said)
    for line in pages.comparison_notes(result):  # (in the export too: it dropped them)
        ui.note(line, said)


# A damaged disk entry's notice, from the call of _comparison that computed it again to the visit that says it, once:
# said inside the cached function, Streamlit replayed the caption on every later visit (the entry sound again).
_RECOMPUTED: dict[tuple, list[str]] = {}


@st.cache_data(show_spinner="Comparing the two finetunes tensor by tensor…", max_entries=8)
def _comparison(full: str, sub: str, base: str | None, eval_data: str | None, stamp: tuple):
    """``stamp``: the checkpoints' fingerprints, the eval file's stamp and with it the model folders' files, so a
    model rewritten in place (a rerun into the same folder, an edited config or tokenizer) is compared again
    instead of being answered from the cache."""
    from subnetviz.demo.comparison import cached_compare_runs  # on disk: the demo build fills it

    result, notes = cached_compare_runs(full, sub, base, eval_data=eval_data, with_notes=True)
    if notes:
        _RECOMPUTED[(full, sub, base, eval_data, stamp)] = notes
    return result


def body() -> None:
    st.title("Training runs")
    st.caption(
        "Runs are OS processes with a run folder and a SQLite registry: they survive closing the tab. "
        "Subnetwork-only runs multiply gradients by the mask and decay only inside it; parameters outside "
        "stay bit-identical (verified after training). Every run also writes TensorBoard events into its run "
        "folder (the demo zoo's member trainings beside their folders in zoo/): open them all with "
        "`tensorboard --logdir $SUBNETVIZ_HOME`."
    )
    ws = ui.workspace()
    said: list[str] = []  # the open view's notes on its numbers, for the export
    views = {"Launch": launch, "Runs": lambda _ws: runs_view(), "Subnetwork vs full": partial(compare, said=said)}
    among = f"this page's views ({', '.join(views)})"
    ui.said_if_not_offered("tr_view", list(views), "view", among)  # (it fell back to Launch without a word)
    view = st.segmented_control(
        "View",
        list(views),
        default="Launch",
        required=True,
        key="tr_view",
        bind="query-params",
        label_visibility="collapsed",
    )
    view = view if view in views else "Launch"  # an empty "tr_view=" in a URL gave None
    views[view](ws)
    export(ws, view, said)


def eval_set(full: str, sub: str, own: dict[str, str | None]) -> str | None:
    """The held-out file the comparison scores accuracy on, picked under the models (and named in the URL): by
    default the one both models were held out on, else the full finetune's, else the subnetwork's, else the zoo's
    first (``own``: each model's own held-out file, where known). A model held out on another set is said: its
    number here is not the one on its run card."""
    sets = {k: v for k, v in data_files().items() if k.endswith("eval")}
    zoo = {os.path.realpath(v): v for v in sets.values()}
    own = {m: zoo.get(os.path.realpath(p), p) for m in (full, sub) if (p := own.get(m))}  # a zoo file by its zoo path
    for path in own.values():  # a run's own file, outside the zoo
        if path not in sets.values():
            sets[path if Path(path).name in sets else Path(path).name] = path
    if not sets:
        return None
    labels = list(sets)
    want = own.get(full) or own.get(sub)
    default = next((i for i, k in enumerate(labels) if sets[k] == want), 0)
    ui.said_if_not_offered(
        "cmp_eval", labels, "held-out set", "the held-out sets on offer here", default=labels[default]
    )
    label = st.selectbox("Held-out set for accuracy", labels, index=default, key="cmp_eval", bind="query-params")
    chosen = sets[label]
    other = [f"{m} on {Path(own[m]).name}" for m in (full, sub) if own.get(m) and own[m] != chosen]
    if other:
        ui.warning(
            f"Accuracy of every model here is on {Path(chosen).name}; held out on another set: {', '.join(other)}."
        )
    return chosen


def _readable(path: str) -> bool:
    """Whether this server may read the file (a run queued from the CLI may name one outside its roots)."""
    from subnetviz.errors import SubnetvizError

    try:
        return config.check_readable(path).is_file()
    except (SubnetvizError, OSError):
        return False


def _zoo_eval_of(data: object) -> str | None:
    """The zoo's held-out file of the problem set a zoo data file belongs to (``A_train``, ``dpo_A``, ``sft_A`` ->
    ``A_eval``); None for any other file."""
    files = data_files()
    if not isinstance(data, str) or data not in files.values():
        return None
    parts = Path(data).stem.split("_")
    letters = [p for p in parts if p in ("A", "B")]
    return files.get(f"{letters[0]}_eval") if len(letters) == 1 else None


def candidates() -> dict[str, str]:
    """Finished models to compare (label -> path): the zoo's members, then succeeded runs' models by name
    ("run name · id"), each model once (a zoo member's registered run links to the member's folder)."""
    return {label: path for label, (path, *_) in _candidates().items()}


def _candidates() -> dict[str, tuple[str, str | None, str | None]]:
    """:func:`candidates` with each model's own held-out file (None where unknown: the base, a run without one) and
    the base it was trained from (the zoo's base for a member, a run's config's ``base``; None where unknown or not
    readable here)."""
    from subnetviz.report.training import run_names

    z = ui.zoo()
    files = data_files()
    out: dict[str, tuple[str, str | None, str | None]] = {}
    if z is not None:
        out.update({f"zoo {m.id}": (str(m.path), files.get(f"{m.data}_eval"), str(z.base)) for m in z.members})
    runs = ui.job_runner().list_runs()
    names = run_names(runs) if len(runs) else {}
    for rec in runs.itertuples():
        model = Path(rec.run_dir) / "outputs" / "model"
        if rec.status == "succeeded" and model.is_dir() and not selection.in_zoo(model):
            cfg = rec.config if isinstance(rec.config, dict) else {}
            own = cfg.get("eval_data") if isinstance(cfg.get("eval_data"), str) else _zoo_eval_of(cfg.get("data"))
            base = cfg.get("base") if isinstance(cfg.get("base"), str) else None
            base = base if base and _readable(str(Path(base) / "config.json")) else None
            out[f"run {names[rec.id]}"] = (str(model), own if own and _readable(own) else None, base)
    return out


def base_label(base: str | None) -> str:
    """How the comparison names its base: the zoo's ``base``, else the folder as a visitor may see it."""
    z = ui.zoo()
    if base and z is not None and os.path.realpath(base) == os.path.realpath(z.base):
        return "zoo base"
    return config.display_path(base) if base else ""


def export(ws, view: str, said: Sequence[str] = ()) -> None:
    """One dashboard of every view (runs table, the chosen run's curves with its overlays, the
    comparison) under the selections in the URL; the views not open are built on click only."""
    r = ui.job_runner()
    df = r.list_runs()
    ids = list(df["id"])
    run_ids = [pages.shown_run(df, st.query_params.get("tr_run"))] if ids else []  # the run the Runs view shows
    others = pages.overlay_options(r, df, run_ids[0]) if ids else []  # as the Runs view offers them
    run_ids += [i for i in st.query_params.get_all("tr_overlay") if i in others and i not in run_ids]
    smoothing = uilogic.url_number(st.query_params.get("tr_smooth"), 0, 0.95, 0)
    found, compare = _candidates(), None
    if len(found) >= 2:
        keys = list(found)
        full = st.query_params.get("cmp_full", "zoo grpo-s0" if "zoo grpo-s0" in keys else keys[0])
        sub = st.query_params.get("cmp_sub", "zoo grpo-sub" if "zoo grpo-sub" in keys else keys[1])
        if full in found and sub in found:
            base, _ = pages.comparison_base(found[full][2], found[sub][2], ws.base)  # (the view's own base)
            compare = (full, found[full][0], sub, found[sub][0], base)
    ui.export_button(
        "Training runs",
        {"view": view, "runs": run_ids, "smoothing": smoothing, "comparison": compare[::2] if compare else None},
        ["curves", "cmp-ulp"],
        ["runs-table", "comparison", "accuracy"],
        more=partial(
            pages.export_parts,
            r,
            run_ids,
            smoothing,
            compare if view != "Subnetwork vs full" else None,
            ui.workspace().finetuned,
        ),
        notes=said,
    )


ui.run_page(body)
