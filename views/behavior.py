"""Behaviour: what the finetunes now do differently from the base (KL, accuracy), and which weights carry it."""

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd
import streamlit as st

from subnetviz import config, ui, uilogic
from subnetviz.figures import behavior as bfig
from subnetviz.figures import plain_label


def prompt_files() -> dict[str, str]:
    root = config.zoo_dir() / "data"
    return {f.stem: str(f) for f in sorted(root.glob("*_eval.jsonl"))} if root.is_dir() else {}


ROUTERS = "MoE routers (swap)"  # the routers as a revert mask: the finetune with the base's, and the other way
HERE = "computed here (cached)"  # the Results picker's own computation, beside the finished background jobs
LIMITS = [16, 64, 256]  # prompts per set


def mask_choices(ws) -> dict[str, str]:
    """label -> path of the masks Behaviour may revert: the zoo's, then the sidebar's saved masks; one entry per
    file (by its real path), named as the sidebar names it (the zoo's grpo-seed0 file was "zoo grpo-s0" here and
    "masks/grpo-seed0" in the sidebar and on Overlap, and picked in the sidebar it was offered, computed and
    tabulated twice)."""
    from subnetviz.selection import saved_masks

    z = ui.zoo()
    zoo = {f"zoo {name}": str(z.mask_path(name)) for name in z.manifest.masks} if z is not None else {}
    sidebar = {os.path.realpath(path): label for label, path in saved_masks().items()}
    out, seen = {}, set()
    for label, path in [*zoo.items(), *ws.masks]:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            out[sidebar.get(real, label)] = str(path)
    if ws.base is not None and routers_now(ws.base):
        out[ROUTERS] = "routers"
    return out


def routers_now(base: str) -> bool:
    """:func:`has_routers` of ``base`` (memoised by its stamp); False, said for this run only, when its header
    could not be read now for lack of memory (not kept: the next run asks again)."""
    from subnetviz.errors import SubnetvizError

    try:
        return ui.shared(has_routers, base, ui.checkpoint_stamp(base))
    except SubnetvizError as exc:
        st.caption(ui.plain(f"{ROUTERS} is not offered for now: the base could not be read ({exc})."))
        return False


def fitting_masks(masks: dict[str, str], base: str) -> dict[str, str]:
    """The masks that fit ``base`` (:func:`~subnetviz.uilogic.mask_misfit`), the only ones offered: the first was
    pre-selected whatever the base, and the zoo's mask beside another model's base stopped the page before any KL
    was computed. The others are named with why in one line; one the link names, in a warning (the widget drops
    it from the link). A mask that could not be checked now (lack of memory) is not offered on this run, in a
    warning; the next run checks it again (kept as a misfit, it was left out for the server's life)."""
    misfit, unchecked = ui.mask_checks(masks, base)
    if unchecked:
        said = "; ".join(f"{label} ({why})" for label, why in unchecked.items())
        ui.warning(f"Not offered for now, as they could not be checked against this base at the moment: {said}")
        masks = {label: path for label, path in masks.items() if label not in unchecked}
    if not misfit:
        return masks
    asked = [m for m in st.query_params.get_all("bh_masks") if m in misfit]
    said = "; ".join(f"{label} ({misfit[label]})" for label in (asked or misfit))
    if asked:
        st.warning(
            ui.plain(f"Left out of the link's masks, as they do not fit this base: {said}."), icon=":material/warning:"
        )
    elif len(misfit) == len(masks):
        st.caption(
            ui.plain(f"No mask to revert: none fits this base, so the finetunes are run without reverting. {said}.")
        )
    else:
        st.caption(ui.plain(f"Not offered, as they do not fit this base: {said}."))
    return {label: path for label, path in masks.items() if label not in misfit}


def computed(entry, cfg: dict):
    """The behaviour analysis of ``cfg`` through its disk cache ``entry``, on the session's cluster if any; a
    damaged entry (removed, and so computed again) is said first (:func:`~subnetviz.ui.damage_note`)."""
    from subnetviz.jobs.cluster_pages import cached_behavior

    ui.damage_note(entry)
    return cached_behavior(cfg, address=ui.compute_address())


def has_routers(base: str, stamp: tuple = ()) -> bool:
    """Whether the base holds router tensors (a mixture of experts), from its header and naming table. ``stamp``
    (the base's files, :func:`~subnetviz.ui.checkpoint_stamp`) only keys :func:`~subnetviz.ui.shared`'s memo: by
    its path alone, a base folder rewritten with another model kept the old answer for the server's life."""
    from subnetviz.analysis.routing import router_tensors
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.errors import ConfigError, SubnetvizError

    try:
        return bool(router_tensors(open_checkpoint(base)))
    except ConfigError:
        raise  # (a memory refusal holds for now, not for the base: memoised as False, for the server's life)
    except SubnetvizError:  # (the page says what is wrong with the base where it reads it)
        return False


def finished_runs(df: pd.DataFrame) -> dict[str, Path]:
    """Succeeded behaviour jobs of the registry's runs ``df`` by name ("run name · id", as every picker shows runs)
    -> their outputs."""
    from subnetviz.report.training import run_names

    if not len(df):
        return {}
    done = df[(df["kind"] == "behavior") & (df["status"] == "succeeded")]
    names = run_names(done)
    return {f"run {names[r.id]}": Path(r.run_dir) / "outputs" for r in done.itertuples()}


def body() -> None:
    st.title("Behaviour")
    st.caption(
        "Teacher-forced on every position of each prompt and its answer: forward KL(π_base ‖ π) and reverse "
        "KL(π ‖ π_base) in nats per token (RL's Razor, arXiv 2509.04259: the forward KL on the task predicts "
        "forgetting, where update size and sparsity do not). Revert experiments set the finetune's entries "
        "inside (or outside) a mask back to the base: is the subnetwork sufficient / necessary for the change? "
        "The random control reverts as many entries per tensor, drawn uniformly. For a mixture of experts, "
        "*Routing* shows which experts each token reaches against the base, and the *MoE routers (swap)* mask "
        "runs the finetune with the base's routers (and the base with the finetune's)."
    )
    ws = ui.workspace()
    ui.need_pair(ws)
    paths, labels = runnable_models(ws)
    files, masks = prompt_files(), mask_choices(ws)
    ui.need(
        bool(files), "No prompt sets: build the demo zoo, or run `python -m subnetviz behavior ... --prompts FILE`."
    )
    offered, masks = masks, fitting_masks(masks, ws.base)
    # A link's prompt sets, masks, count and results this server does not offer are said, with what is shown
    # instead: they were swapped for the defaults without a word (a finished job's results this server lacks, for
    # the visitor's own workspace's numbers).
    sets = ui.linked_many("bh_prompts", list(files), list(files)[:1], "prompt set", "this server's prompt sets")
    # The masks (and Per token's model and experiment) are read from the URL and written back by hand (ui.in_url):
    # bound, a mask removed in the sidebar was dropped while the URL kept it, and a link made from it reverted other
    # masks than the sender's page showed once the mask was back. (A link's mask offered no more, as an old
    # "zoo grpo-s0", is left out, with a line; one that does not fit this base is said by fitting_masks.)
    usual = list(masks)[:1]
    linked = ui.linked_many(
        "bh_masks", list(masks), usual, "mask", "the masks on offer here", set(offered) - set(masks)
    )
    ui.said_if_not_offered(
        "bh_limit", LIMITS, "prompts per set", f"the counts on offer ({', '.join(map(str, LIMITS))})"
    )
    c1, c2, c3 = st.columns([2, 2, 1])
    chosen = c1.multiselect("Prompt sets", list(files), default=sets, key="bh_prompts")
    ui.in_url("bh_prompts", chosen, list(files)[:1])
    mask_names = c2.multiselect("Masks to revert", list(masks), default=linked, key="bh_masks")
    ui.in_url("bh_masks", mask_names, usual)
    limit = c3.selectbox("Prompts per set", LIMITS, key="bh_limit", bind="query-params")
    curve = st.toggle("Revert curve (|Δ| order vs random order)", value=True, key="bh_curve", bind="query-params")
    ui.need(bool(chosen), "Pick at least one prompt set.")
    cfg = {
        "kind": "behavior",
        "base": ws.base,
        "finetuned": paths,
        "labels": labels,
        "prompts": [files[k] for k in chosen],
        "masks": {k: masks[k] for k in mask_names},
        "curve": [0.0, 0.25, 0.5, 0.75, 1.0] if curve else [],
        "limit": int(limit),
        "device": ws.device,
    }
    registry = ui.job_runner().list_runs()  # (read once: the results offered, the failed and the active runs)
    runs = finished_runs(registry)
    # A select box, whose options are plain text: a radio renders its options as Markdown, and run names hold
    # folder names ("ft-**v2**" was drawn in bold, "![p](…)" an image).
    among = "this server's finished behaviour runs"
    ui.said_if_not_offered("bh_source", [HERE, *runs], "results", among, f"{HERE}, for the models in the sidebar,")
    source = st.selectbox("Results", [HERE, *runs], key="bh_source", bind="query-params")
    if source in runs:
        from subnetviz.analysis.behavior import read_behavior

        res = read_behavior(runs[source])
    else:
        from subnetviz.analysis.behavior import behavior_entry
        from subnetviz.analysis.cost import behavior_cost

        entry = behavior_entry(cfg)[0]
        with st.spinner("Teacher-forcing the prompts through every model and reverted model…"):
            res = ui.heavy(
                ("behavior", entry.folder.name),
                lambda: entry.ready,
                lambda: behavior_cost(cfg),
                lambda: computed(entry, cfg),
                models=True,
            )
    launched = ui.allowed("launch") and st.button(
        "Run as a background job (larger prompt sets)", icon=":material/play_arrow:"
    )
    if launched:
        with ui.said_here():  # the results below stay
            run_id, new = ui.submit_job({**cfg, "limit": None}, name=f"behaviour {', '.join(labels)}")
            ui.queued_line(run_id, new, "It appears under Results when it has finished.")
    # the jobs launched and not finished, and those that failed since the last success: neither was shown here (the
    # Results list holds finished runs only); redrawn while one runs, the page once it is done (its results listed)
    if launched or len(uilogic.active(registry, "behavior")):  # (a page with none reads the registry no more)
        ui.live(partial(ui.job_progress, "behavior", "model passes"), kind="behavior")
    ui.failed_runs(registry, "behavior", "behaviour")
    if source in runs:  # a finished job's results: its own models, prompts and masks (its run names them)
        context = {"results": source}
    else:
        context = {
            "results": source,
            "base": ws.base,
            "finetuned": labels,
            "prompt sets": chosen,
            "prompts per set": int(limit),
            "masks reverted": mask_names,
            "revert curve": bool(curve),
        }
    show(res, context)


def runnable_models(ws) -> tuple[list[str], list[str]]:
    """The workspace's finetunes Behaviour can run, and their labels: a LoRA/PEFT adapter is left out with a line
    saying why (a model is run from a full model's folder), so the full finetunes beside it still run; the page
    stops with that line when every finetune is an adapter, or the base is one."""
    from subnetviz.checkpoints.models import refuse_adapter
    from subnetviz.errors import CheckpointError

    try:
        refuse_adapter(ws.base)
    except CheckpointError as e:
        ui.need(False, ui.plain(str(e)))
    paths, labels, adapters = [], [], []
    for path, label in zip(ws.paths, ws.labels, strict=True):
        try:
            refuse_adapter(path)
        except CheckpointError:
            adapters.append(label)
            continue
        paths.append(path)
        labels.append(label)
    if adapters:
        msg = (
            f"Not run here: {', '.join(adapters)} (LoRA/PEFT adapters). Behaviour runs models from a full model's "
            "folder: merge an adapter onto its base (peft's merge_and_unload, then save_pretrained) and add that "
            "folder."
        )
        ui.need(bool(paths), ui.plain(msg))
        st.info(ui.plain(msg), icon=":material/info:")
    return paths, labels


TABS = ["Per model", "Per prompt", "Per token", "Routing (MoE)"]
KL = ["kl_forward", "kl_reverse"]  # a prompt's accuracy is one right-or-wrong: Per prompt spreads the KLs only


def show(res: dict[str, pd.DataFrame], context: dict | None = None) -> None:
    """The results' tabs and the export; ``context``: what made them (named in the export)."""
    said: list[str] = []  # the notes that qualify the numbers: on the page and in its export
    notes = res.get("notes")
    for note in dict.fromkeys(notes["note"] if notes is not None else ()):  # masks placed, prompts cut, ...
        ui.note(str(note), said)
    # Each tab has its own controls (Per token draws both KLs, with no measure to choose). They are read and written
    # by hand (ui.linked, _keep), whichever tab is open: a closed tab's control is not drawn, and bound to the URL, its
    # entry left the URL as its tab closed (a link copied on Per prompt opened Per model on the forward KL, while the
    # sender's page and export kept accuracy). A link's entry they cannot take is said, with what is shown instead.
    name = bfig.MEASURE.get
    value = ui.linked("bh_value", list(bfig.MEASURE), "measure", "the Per model tab's measures", name)
    kl = ui.linked("bh_kl", KL, "KL", "the Per prompt tab's KLs", name)
    tokens = res["tokens"]
    models = list(dict.fromkeys(tokens["model"]))
    places = ui.shared(bfig.prompt_places, tokens)  # each prompt's set and its number there
    names = {p: bfig.prompt_name(place) for p, place in places.items()}
    if models:  # Per token's model, experiment and prompt (the export's too)
        model = ui.linked("bh_model", models, "model", "these results' models")
        experiments = experiments_of(tokens, model)
        experiment = ui.linked("bh_exp", experiments, "experiment", f"the experiments run on {model}")
        _follow("bh_prompt", names)
        prompt = ui.linked("bh_prompt", list(names), "prompt", "these results' prompts", names.get)
    routing = res.get("routing")
    sets = routing_sets(routing)
    domain = ui.linked("bh_domain", sets, "prompt set", "the routing's prompt sets") if sets else None
    ui.said_if_not_offered("bh_tab", TABS, "tab", "this page's tabs")
    # Sections as tabs that draw only when open: 1-2 charts per view instead of four (faster to show).
    tabs = st.tabs(TABS, key="bh_tab", on_change="rerun", bind="query-params")
    if tabs[0].open:
        with tabs[0]:
            value = _measure("Measure", list(bfig.MEASURE), "bh_value", value)
            side_by_side(*ui.shared(model_parts, res, value))
    if tabs[1].open:
        with tabs[1]:
            kl = _measure("KL", KL, "bh_kl", kl)
            ui.chart(ui.shared(prompt_spread, res, kl), key="bh-hist")
    _keep("bh_value", value, list(bfig.MEASURE)[0], name)
    _keep("bh_kl", kl, KL[0], name)
    if tabs[2].open:
        with tabs[2]:
            if not models:
                st.info("These results hold no per-token rows.", icon=":material/info:")
            else:
                c1, c2, c3 = st.columns(3)
                model = _select(c1, "Model", models, model, "bh_model")
                experiments = experiments_of(tokens, model)
                experiment = _select(c2, "Experiment", experiments, experiment, "bh_exp")
                prompt = _select(c3, "Prompt", list(names), prompt, "bh_prompt", names.get)
                ui.chart(ui.shared(token_figure, tokens, model, experiment, prompt, names[prompt]), key="bh-tokens")
    if models:
        _keep("bh_model", model, models[0])
        _keep("bh_exp", experiment, experiments[0])
        _keep("bh_prompt", prompt, list(names)[0])
        st.session_state[_named("bh_prompt")] = names[prompt]
    if tabs[3].open:
        with tabs[3]:
            if not sets:
                st.info(
                    "No mixture-of-experts router in these models: the routing is measured for MoE models "
                    "(Mixtral, Qwen-MoE, DeepSeek, OLMoE, gpt-oss, …), whose routers this analysis hooks."
                )
            else:
                if len(sets) > 1:
                    domain = _select(st, "Prompt set", sets, domain, "bh_domain")
                side_by_side(*ui.shared(routing_parts, routing, domain))
    if domain:
        _keep("bh_domain", domain, sets[0])
    # the token view's selection, named in the export: the prompt by its set and its number there
    picked = (model, experiment, prompt, names[prompt]) if models else None
    selection = {"model": model, "experiment": experiment, **_place(places[prompt])} if models else {}
    routing_params = {"routing prompt set": domain} if domain else {}
    ui.export_button(
        "Behaviour",
        {**(context or {}), "measure": bfig.MEASURE[value], "per-prompt KL": bfig.MEASURE[kl], **selection}
        | routing_params,
        ["bh-bars", "bh-curves", "bh-hist", "bh-tokens", "bh-routing", "bh-load"],
        ["behavior-summary", "behavior-curves", "behavior-routing"],
        more=lambda: every_tab(res, value, kl, picked, domain),
        notes=said,
    )


def _place(place: tuple[str | None, int]) -> dict:
    """A prompt as the export names it: its set and its number there, or its number alone where the results name
    no set (:func:`~subnetviz.figures.behavior.prompt_places`)."""
    of_set, number = place
    return {"prompt": number} if of_set is None else {"prompt set": of_set, "prompt": number}


def side_by_side(figs: dict, tables: dict) -> None:
    """A tab's two charts side by side (each under its own key), then its tables."""
    for col, (key, fig) in zip(st.columns(2), figs.items(), strict=True):
        with col:
            ui.chart(fig, key=key)
    for key, (caption, frame) in tables.items():
        ui.table(frame, key, caption)


def _measure(label: str, options: list[str], key: str, value: str) -> str:
    """A measure radio showing ``value`` (:func:`~subnetviz.ui.linked`), named as on the charts (the tables keep the column
    names)."""
    return st.radio(label, options, index=options.index(value), format_func=bfig.MEASURE.get, horizontal=True, key=key)


def _select(where, label: str, options: list, value, key: str, name: Callable | None = None):
    """A select box in ``where`` showing ``value`` (:func:`~subnetviz.ui.linked`), its options named by ``name``."""
    shown = {} if name is None else {"format_func": name}
    return where.selectbox(label, options, index=options.index(value), key=key, **shown)


def _named(key: str) -> str:
    return f"_bh_named:{key}"  # the name of the value shown last of the control ``key`` (:func:`_follow`)


def _follow(key: str, names: dict) -> None:
    """Per token's prompt is numbered across every prompt set chosen (``names``: number -> "set B, prompt 2"):
    with an earlier set removed the others are numbered anew, and the number shown last named another prompt ("set
    B, prompt 2", 18 of A and B, read "set B, prompt 0" once A was gone, the URL's entry dropped without a word).
    The prompt shown last is found again by its name, under its new number, unless this run's pick replaced it."""
    state = st.session_state
    shown, named = state.get(ui.link_mark(key)), state.get(_named(key))
    if key in state and state[key] != shown:  # a prompt picked in this run
        return
    if shown is None or named is None or names.get(shown) == named:
        return
    moved = next((p for p, n in names.items() if n == named), None)
    if moved is not None:
        state.pop(key, None)  # (the picker drawn at its new number, as the mark gives it)
        state[ui.link_mark(key)] = moved


def _keep(key: str, value, first, name: Callable = str) -> None:
    """``value`` kept as the control's shown last (:func:`~subnetviz.ui.linked`) and written into the URL whichever tab is open,
    named as ``name`` names it (left out where it is the ``first`` option, as a bound control leaves it)."""
    st.session_state[ui.link_mark(key)] = value
    ui.in_url(key, name(value), name(first))


def experiments_of(tokens: pd.DataFrame, model: str) -> list[str]:
    """The revert experiments run on ``model``, in their order."""
    return list(dict.fromkeys(tokens[tokens["model"] == model]["experiment"]))


def model_parts(res: dict, value: str) -> tuple[dict, dict]:
    """Per model: KL bars and revert curves, and the two tables."""
    summary, curves = res["summary"], res["curves"]
    tables = {"behavior-summary": ("KL (nats per token) and accuracy per model and revert experiment", summary)}
    if len(curves):
        tables["behavior-curves"] = ("KL and accuracy against the share of Δ reverted", curves)
    figs = {"bh-bars": bfig.kl_bars(summary, value=value), "bh-curves": bfig.revert_curves(curves, value=value)}
    return figs, tables


def prompt_spread(res: dict, kl: str):
    """Each finetuned model's per-prompt mean forward or reverse KL."""
    prompts = res["prompts"]
    finetuned = prompts[prompts["experiment"] == "finetuned"]
    return bfig.prompt_spread(finetuned, value=kl)


def token_figure(tokens: pd.DataFrame, model: str, experiment: str, prompt: int, name: str):
    """Per token: one prompt's tokens (``prompt``: its number across every set; ``name``: its set and its number
    there, :func:`~subnetviz.figures.behavior.prompt_name`)."""
    one = tokens[(tokens["model"] == model) & (tokens["experiment"] == experiment) & (tokens["prompt"] == prompt)]
    return bfig.token_bars(one, title=f"{plain_label(model)} · {experiment} · {plain_label(name)}: which tokens moved")


def routing_sets(routing: pd.DataFrame | None) -> list[str]:
    """The prompt sets the routing table holds, every prompt first where there are several; [] for no MoE."""
    from subnetviz.analysis.routing import ALL

    if routing is None or routing.empty:
        return []
    sets = list(dict.fromkeys(routing["domain"].astype(str)))
    return [ALL, *(d for d in sets if d != ALL)] if ALL in sets else sets


def routing_parts(routing: pd.DataFrame, domain: str) -> tuple[dict, dict]:
    """The routing tab's two charts and its table, for one prompt set."""
    rows = routing[routing["domain"].astype(str) == domain]
    which = f"prompt set: {plain_label(domain)}"
    figs = {
        "bh-routing": bfig.routing_overlap(
            rows,
            title=f"Routing shared with the base, per layer<br><sup>mean Jaccard of each token's top-k experts · {which}"
            "</sup>",
        ),
        "bh-load": bfig.routing_entropy(
            rows, title=f"Entropy of the expert load per layer<br><sup>ln E: every expert used alike · {which}</sup>"
        ),
    }
    tables = {"behavior-routing": ("Routing against the base's, per model, experiment, prompt set and router", routing)}
    return figs, tables


def every_tab(res: dict, value: str, kl: str, picked: tuple | None, domain: str | None = None) -> tuple[dict, dict]:
    """Every tab's figures and tables, for the export (the closed tabs are built on click only); ``picked``: Per
    token's model, experiment, prompt and its name (:func:`token_figure`)."""
    figs, tables = model_parts(res, value)
    figs = {**figs, "bh-hist": prompt_spread(res, kl)}
    if picked:
        figs["bh-tokens"] = token_figure(res["tokens"], *picked)
    if domain:  # an MoE model's routing
        rf, rt = routing_parts(res["routing"], domain)
        figs, tables = {**figs, **rf}, {**tables, **rt}
    return figs, tables


ui.run_page(body)
