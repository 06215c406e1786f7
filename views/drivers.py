"""What drives sparsity: small training grids on the demo base, update sparsity and accuracy per factor."""

from pathlib import Path

import pandas as pd
import streamlit as st

from subnetviz import ui
from subnetviz.figures import drivers as dfig


def finished_runs() -> dict[str, tuple[str, Path]]:
    """Succeeded drivers runs, newest first: run id -> (its "name · id" label, as every picker shows it;
    its outputs folder)."""
    from subnetviz.report.training import run_names

    df = ui.job_runner().list_runs()
    if not len(df):
        return {}
    done = df[(df["kind"] == "drivers") & (df["status"] == "succeeded")]
    names = run_names(done)
    return {r.id: (names[r.id], Path(r.run_dir) / "outputs") for r in done.itertuples()}


def launch() -> None:
    from subnetviz.experiments.drivers import PRESETS

    if not ui.allowed("launch"):
        return
    c1, c2, c3 = st.columns([1, 1, 2])
    preset = c1.selectbox("Preset", list(PRESETS), key="dr_preset", help="quick: ≤ 5 min on 2 cores (demo base)")
    seeds = c2.number_input("Seeds", 1, 5, 1, key="dr_seeds")
    if c3.button("Run the grid as a job", icon=":material/play_arrow:", key="dr_launch"):
        run_id = ui.job_runner().submit(
            {"kind": "drivers", "preset": preset, "seeds": int(seeds)}, name=f"drivers {preset} ×{seeds}"
        )
        st.success(f"Queued run {run_id}.")


def body() -> None:
    from subnetviz.experiments.drivers import not_available

    st.title("What drives update sparsity")
    st.caption(
        "Each run finetunes the demo base with the project's TRL training code, varying one factor around a "
        "default GRPO run (learning rate, steps, KL coefficient β, gradient clipping, optimizer, data origin, "
        "algorithm: SFT, DPO, GRPO, RLOO and PPO, the last three with the same exact-match reward); every run "
        "is saved twice from the same weights, in bf16 and in fp32. Sparsity is the "
        "bitwise share of unchanged parameters; accuracy is greedy exact match on held-out set A; KL is the "
        "forward KL(π_base ‖ π) per token on those prompts. "
        + " ".join(f"{k.upper()}: {v}" for k, v in not_available().items())
    )
    launch()
    ui.live(_results, kind="drivers")


def _results() -> None:
    from subnetviz.experiments.drivers import verdicts

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
    choice = st.selectbox("Results", list(runs), format_func=lambda r: runs[r][0], key="dr_run", bind="query-params")
    results = pd.read_csv(runs[choice][1] / "results.csv", dtype={"value": str})
    st.subheader("Which of the paper's conjectures does the zoo reproduce?")
    v = verdicts(results)
    seeds = results["seed"].nunique()
    st.caption(
        f"{seeds} seed(s) per point on a 0.45M-parameter model: a difference smaller than the spread between "
        "seeds is not evidence either way."
    )
    for row in v.itertuples():
        mark = {
            True: ":material/check_circle: reproduced",
            False: ":material/cancel: not reproduced",
            None: ":material/help: undecided",
        }[row.reproduced]
        st.markdown(f"**{row.conjecture}** — {mark}. Expected: {row.expected}; observed: {row.observed}.")
    value = st.radio(
        "Measure",
        list(dfig.MEASURE),
        format_func=lambda m: dfig.MEASURE[m][0],
        horizontal=True,
        key="dr_value",
        bind="query-params",
    )
    ui.chart(dfig.factor_panels(results, value=value), key="dr-factors")
    ui.chart(dfig.precision_pairs(results), key="dr-precision")
    ui.table(results, "drivers-results", "One row per run and storage precision")
    ui.table(v, "drivers-verdicts", "The paper's conjectures: expected, observed, reproduced")
    ui.export_button(
        "What drives sparsity",
        {"results": runs[choice][0], "measure": value},
        ["dr-factors", "dr-precision"],
        ["drivers-verdicts", "drivers-results"],
    )


ui.run_page(body)
