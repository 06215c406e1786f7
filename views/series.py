"""Series: update sparsity along a training run, against the start and step to step."""

import plotly.express as px
import streamlit as st

from subnetviz import figures, ui


def body() -> None:
    st.title("Checkpoint series")
    st.caption("Sparsity against the first checkpoint and between consecutive ones (bitwise), and the share of "
               "parameters updated at some step but back to their initial value — gradients that cancelled out.")  # fmt: skip
    ws = ui.workspace()
    z = ui.zoo()
    sources = {}
    if z is not None and z.series:
        sources["demo zoo: GRPO seed 0"] = ([ws.base or str(z.base)] + [str(path) for _, path in z.series],
                                            [0] + [step for step, _ in z.series])  # fmt: skip
    if ws.base and len(ws.finetuned) >= 1:
        sources["workspace: base → finetuned in sidebar order"] = ([ws.base, *ws.paths], list(range(len(ws.paths) + 1)))
    ui.need(bool(sources), "A series needs ordered checkpoints: build the demo zoo or pick finetuned checkpoints.")
    choice = st.selectbox("Series", list(sources), key="series_src", bind="query-params")
    paths, steps = sources[choice]
    result = ui.series(paths, steps)
    a, b = st.columns([2, 1])
    with a:
        ui.chart(figures.series_lines(result.steps), key="series")
    with b:
        fig = px.pie(result.split, names="part", values="count", hole=0.5,
                     title="Where the parameters ended up")  # fmt: skip
        fig.update_traces(hovertemplate="%{label}<br>%{value:,} parameters (%{percent})<extra></extra>")
        ui.chart(fig, key="split")
    ui.table(result.steps, "series-table", "Sparsity per step")
    ui.table(result.split, "split-table", "Never updated / cancelled out / subnetwork")
    ui.export_button("Series", {"series": choice, "checkpoints": len(paths)}, ["series", "split"],
                     ["series-table", "split-table"])


ui.run_page(body)
