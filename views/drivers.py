"""What drives sparsity: small training grids on the demo base, update sparsity and accuracy per factor."""

from functools import partial
from pathlib import Path

import pandas as pd
import streamlit as st

from subnetviz import ui, uilogic
from subnetviz.figures import drivers as dfig


def finished_runs() -> dict[str, tuple[str, Path, int | None]]:
    """Succeeded drivers runs, newest first: run id -> (its "name · id" label, as every picker shows it;
    its outputs folder; the parameters of the base it trained, where known: :func:`base_params`)."""
    from subnetviz.report.training import run_names

    df = ui.job_runner().list_runs()
    if not len(df):
        return {}
    done = df[(df["kind"] == "drivers") & (df["status"] == "succeeded")]
    names = run_names(done)
    z = ui.zoo()
    return {
        r.id: (names[r.id], Path(r.run_dir) / "outputs", base_params(z, r.config, r.started)) for r in done.itertuples()
    }


def base_params(zoo, config: dict, started) -> int | None:
    """The parameter count of the demo base a drivers run trained: the zoo's, when the run trained this zoo (its
    config names no other) and started after the zoo was built; None when that is not known (a zoo built again
    since, with another preset, has another base)."""
    if zoo is None or zoo.manifest.base.params is None:
        return None
    trained = (config or {}).get("zoo") if isinstance(config, dict) else None
    if trained is not None and Path(trained).resolve() != Path(zoo.root).resolve():
        return None
    try:
        built = pd.Timestamp(zoo.manifest.created)
        if built.tzinfo is None:
            built = built.tz_localize("UTC")
        after = pd.notna(started) and pd.Timestamp(started) >= built
    except (TypeError, ValueError):
        return None
    return int(zoo.manifest.base.params) if after else None


def launch() -> None:
    from subnetviz.experiments.drivers import PRESETS

    if not ui.allowed("launch"):
        return
    c1, c2, c3 = st.columns([1, 1, 2])
    preset = c1.selectbox("Preset", list(PRESETS), key="dr_preset", help="quick: ≤ 5 min on 2 cores (demo base)")
    seeds = c2.number_input("Seeds", 1, 5, 1, key="dr_seeds")
    if c3.button("Run the grid as a job", icon=":material/play_arrow:", key="dr_launch"):
        run_id, new = ui.submit_job(
            {"kind": "drivers", "preset": preset, "seeds": int(seeds)}, name=f"drivers {preset} ×{seeds}"
        )
        ui.queued_line(run_id, new, "Its progress is shown below; the results appear when it has finished.")


def body() -> None:
    st.title("What drives update sparsity")
    st.caption(
        "Each run finetunes the demo base with the project's TRL training code, varying one factor around a "
        "default GRPO run (learning rate, steps, KL coefficient β, gradient clipping, optimizer, data origin, "
        "algorithm: SFT, DPO, GRPO, RLOO and PPO, the last three with the same exact-match reward), every run at "
        "a constant learning rate (SGD at its own); every run is saved twice from the same weights, in bf16 and in "
        "fp32. Sparsity is the bitwise share of unchanged parameters; accuracy is greedy exact match on held-out set "
        "A; KL is the forward KL(π_base ‖ π) per token on those prompts."
    )
    launch()
    ui.live(_results, kind="drivers")


def read_results(outputs: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A finished grid's results table and its verdicts (:func:`subnetviz.experiments.drivers_verdicts.read_results`;
    read when a grid is shown)."""
    from subnetviz.experiments.drivers_verdicts import read_results as read

    return read(outputs)


def grid_notes(results: pd.DataFrame) -> list[tuple[str, str]]:
    """What the grid shown recorded about itself (:func:`subnetviz.experiments.drivers_verdicts.grid_notes`)."""
    from subnetviz.experiments.drivers_verdicts import grid_notes as notes

    return notes(results)


def _results() -> None:
    # the grids launched and not finished, and those that failed since the last success: neither was shown here
    # (the page went on showing the older grid, or "No finished drivers run yet" while one ran or after it failed)
    ui.job_progress("drivers", "runs of the grid")
    ui.failed_runs(ui.job_runner().list_runs(), "drivers", "drivers")
    runs = finished_runs()
    if not runs:  # inside a polling fragment: return, not st.stop
        from subnetviz.demo.extras import zoo_job_note

        note = zoo_job_note(ui.zoo(), ui.job_runner(), "drivers")
        if note:  # the fragment redraws while it runs; the page picks the grid up when it is done
            st.info(note, icon=":material/hourglass_top:")
            return
        st.info(
            "No finished drivers run yet: launch the grid above (or `python -m subnetviz experiment drivers "
            "--out DIR`).",
            icon=":material/info:",
        )
        return
    # The run is read from and written into the URL by hand, the newest too: a bound picker leaves its default
    # (the newest run) out, so a shared link showed whichever run was newest when opened; and inside this live
    # fragment a bound widget does not restore from the address bar. By its "name · id" label, or its id.
    ids, asked = list(runs), st.query_params.get("dr_run")
    named = next((i for i in ids if asked in (i, runs[i][0])), None)
    shown = ids[0] if named is None else named
    # a link's grid this server lacks (run ids differ between servers; runs get deleted): said, with the one shown
    among, stale = "this server's finished drivers runs", asked is not None and named is None
    line = uilogic.stale_link_line("run", asked, among, f"the newest, {runs[shown][0]},") if stale else None
    if said := uilogic.link_fallback(st.session_state, "dr_run", line, shown):
        ui.warning(said)
    value = chosen_measure()
    choice = st.selectbox("Results", ids, index=ids.index(shown), format_func=lambda r: runs[r][0], key="dr_run")
    st.query_params["dr_run"] = runs[choice][0]
    results, v = ui.shared(read_results, str(runs[choice][1]))  # a finished run's files: read once, for every session
    if results.empty:
        st.info("This grid holds no runs: its results.csv has no rows.", icon=":material/info:")
        return
    said: list[str] = []  # what the page says about the grid's numbers, also in its export (a β of 0 that was 0.1)
    for level, line in grid_notes(results):  # from the grid shown, not from this server's environment
        # as text, server paths shown relative to their root (a "not run" reason names the PPO overlay's folder)
        ui.note(line, said, warn=level == "warning")
    if results["sparsity"].isna().all():
        st.info("No run of this grid was measured (see above).", icon=":material/info:")
        return
    st.subheader("Which of the paper's conjectures does the zoo reproduce?")
    from subnetviz.experiments.drivers_verdicts import SEED_RULE

    seeds, params = results["seed"].nunique(), runs[choice][2]
    model = f"a {params:,}-parameter model" if params else "the demo base"
    rule = (
        "a difference smaller than the spread between seeds is not evidence either way."
        if seeds < 2
        else "each seed is read on its own, and a verdict is reproduced or not only where every seed reads the "
        "same; where the seeds disagree, the difference is within their spread: undecided."
    )
    ui.note(f"{seeds} seed(s) per point on {model}: {rule}", said)
    for row in v.itertuples():
        mark = f"{MARKS.get(row.verdict, '')} {row.verdict}"  # (the table's words: "not measured" is not "undecided")
        st.markdown(
            f"**{row.conjecture}** — {mark}. Expected: {ui.plain(row.expected)}; observed: {ui.plain(row.observed)}.",
            help=SEED_RULE,
        )
    # Sections as tabs that draw only when open (one chart, not two and both tables); in the URL. A link's tab not on
    # offer is said, with the one shown (it fell back to the first without a word).
    ui.said_if_not_offered("dr_tab", TABS, "tab", "this page's tabs")
    tabs = st.tabs(TABS, key="dr_tab", on_change="rerun", bind="query-params")
    # The measure is By factor's own control (the other tabs do not depend on it, the export does): drawn in that
    # tab, read by chosen_measure whichever tab is open.
    for tab, keys in zip(tabs, TAB_PARTS.values(), strict=True):
        if tab.open:
            with tab:
                if "dr-factors" in keys:
                    # its default always the measure shown (the widget is known by its key alone): drawn with the
                    # first option's default on later runs, a browser whose radio the polling fragment redrew
                    # before it had taken the first run's value sent that default back, and a link's KL fell to
                    # sparsity while a drivers job was queued or running (the URL lost dr_value)
                    options = list(dfig.MEASURE)
                    value = st.radio(
                        "Measure",
                        options,
                        index=options.index(value),
                        format_func=lambda m: dfig.MEASURE[m][0],
                        horizontal=True,
                        key="dr_value",
                    )
                figs, tables = ui.shared(result_parts, results, v, value)
                for key in keys:
                    if key in figs:
                        ui.chart(figs[key], key=key)
                    else:
                        ui.table(tables[key][1], key, tables[key][0])
    figs, tables = ui.shared(result_parts, results, v, value)
    ui.export_button(
        "What drives sparsity",
        {"results": runs[choice][0], "measure": dfig.MEASURE[value][0]},
        list(figs),
        list(tables),
        more=partial(ui.shared, result_parts, results, v, value),  # the closed tabs, built on click
        notes=said,
    )


def chosen_measure() -> str:
    """The By-factor measure: the radio's choice in this session, else the one shown last in it, else the link's
    (an option's key, "kl_forward", or its label), else the first; written into the URL by hand whichever tab is
    open (the radio, bound and drawn only in its tab, left the URL when another tab was open: a link copied there
    showed sparsity, and its export another chart). A link's measure not on offer is said, as a stale run is."""
    options, state, asked = list(dfig.MEASURE), st.session_state, st.query_params.get("dr_value")
    first, linked = "dr_measure" not in state, dfig.measure_key(asked)
    value = next((v for v in (state.get("dr_value"), state.get("dr_measure"), linked) if v in options), options[0])
    stale = first and asked is not None and linked is None
    line = uilogic.stale_link_line("measure", asked, "this page's measures", dfig.MEASURE[value][0]) if stale else None
    if not first:  # the value shown now (another chosen since the link was read: its line is no longer said)
        state["dr_measure"] = value
    if said := uilogic.link_fallback(state, "dr_measure", line, value):
        ui.warning(said)
    state["dr_measure"] = value
    if value != options[0]:
        st.query_params["dr_value"] = dfig.MEASURE[value][0]  # as a link holds it: the label the radio shows
    elif "dr_value" in st.query_params:
        del st.query_params["dr_value"]
    return value


MARKS = {  # each verdict's word (drivers_verdicts.verdicts' "verdict") -> its icon beside the conjecture
    "reproduced": ":material/check_circle:",
    "not reproduced": ":material/cancel:",
    "undecided": ":material/help:",
    "not measured": ":material/remove_circle:",
}
TAB_PARTS = {  # tab -> its charts and tables, in order
    "By factor": ["dr-factors"],
    "bf16 vs fp32": ["dr-precision"],
    "Tables": ["drivers-verdicts", "drivers-results"],
}
TABS = list(TAB_PARTS)


def result_parts(results: pd.DataFrame, verdicts: pd.DataFrame, value: str) -> tuple[dict, dict]:
    """Every tab's figures (key -> figure) and tables (key -> (caption, frame)) of one grid: built once for
    every session; the open tab draws from them, the export takes them all."""
    from subnetviz.config import redact

    figs = {"dr-factors": dfig.factor_panels(results, value=value), "dr-precision": dfig.precision_pairs(results)}
    # the notes (a failed run's exception, a "not run" reason) with server paths shown relative to their root
    notes = results["note"].map(lambda n: redact(n) if isinstance(n, str) else n) if "note" in results else None
    shown = results if notes is None else results.assign(note=notes)
    tables = {
        # the verdict in words (True / False / None read "—" for both undecided and not measured), beside its
        # conjecture: after the long observed texts it lay past the table's right edge at 1440 px
        "drivers-verdicts": (
            "The paper's conjectures: verdict, expected, observed",
            verdicts.assign(observed=verdicts["observed"].map(redact))[
                ["conjecture", "verdict", "expected", "observed"]
            ],
        ),
        "drivers-results": ("One row per run and storage precision", shown),
    }
    return figs, tables


ui.run_page(body)
