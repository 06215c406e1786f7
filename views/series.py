"""Series: update sparsity along a training run, against the start and step to step."""

from dataclasses import replace

import pandas as pd
import streamlit as st

from subnetviz import figures, ui


def module_figure(per, steps: tuple[int, ...], first: str):
    """Sparsity per module kind at each checkpoint of a run (built once per analysis, shared)."""
    frame = pd.concat([r.by_layer_module().assign(step=s) for r, s in zip(per.reports, steps, strict=True)])
    return figures.module_series(frame, first=first)


TABLE_NAMES = {  # the analysis's columns, named in the table as on the chart (the first checkpoint is the base)
    "vs_first": "sparsity_vs_base",
    "vs_previous": "sparsity_vs_previous",
    "changed_vs_first": "changed_vs_base",
    "changed_vs_previous": "changed_vs_previous",
    "back_to_start": "back_to_start_share",
}


def body() -> None:
    st.title("Checkpoint series")
    st.caption(
        "Sparsity against the first checkpoint and between consecutive ones (bitwise), and the share of "
        "parameters updated at some step but back to their initial value — gradients that cancelled out."
    )
    ws = ui.workspace()
    z = ui.zoo()
    sources = {}  # name -> (paths, steps, what step 0 is, axis labels or None for training steps)
    if z is not None and z.series:
        sources["demo zoo: GRPO seed 0"] = (
            [str(z.base)] + [str(path) for _, path in z.series],
            [0] + [step for step, _ in z.series],
            "base",
            None,
        )
    if ws.base and len(ws.finetuned) >= 1:
        sources["workspace: base → finetuned in sidebar order"] = (
            [ws.base, *ws.paths],
            list(range(len(ws.paths) + 1)),
            ws.base_label or "base",
            [ws.base_label or "base", *ws.labels],
        )
    ui.need(bool(sources), "A series needs ordered checkpoints: build the demo zoo or pick finetuned checkpoints.")
    choice = st.selectbox("Series", list(sources), key="series_src", bind="query-params")
    paths, steps, first, ticks = sources[choice]
    result = ui.series(paths, steps)
    for note in result.notes:  # buffers and scales not counted, FP8 / int8 dequantised, codes as codes
        st.caption(ui.plain(note))  # tensor names: shown as text
    a, b = st.columns([2, 1])
    with a:
        ui.chart(ui.shared(figures.series_lines, result.steps, first=first, ticks=ticks), key="series")
    with b:
        ui.chart(ui.shared(figures.split_bar, result.split), key="split")
        st.caption(
            "Never updated: equal to the start at every checkpoint; updated, unchanged at the end: changed at "
            "some step and back to the start at the end (cancelled out); final subnetwork: changed at the end."
        )
    if ticks is None:  # one run: its checkpoints against the base, per module kind
        steps_ws = replace(
            ws, base=paths[0], finetuned=tuple((f"step {s}", p) for s, p in zip(steps[1:], paths[1:], strict=True))
        )
        per = ui.update_analysis(steps_ws)
        ui.chart(ui.shared(module_figure, per, tuple(steps[1:]), first), key="modules")
    table = result.steps.rename(columns=TABLE_NAMES)[["step", *TABLE_NAMES.values()]]
    if ticks is not None:  # not one run: each row names its checkpoint (the step is its place in the sidebar)
        table.insert(1, "checkpoint", [ticks[int(s)] for s in table["step"]])
    ui.table(table, "series-table", "Sparsity per step" if ticks is None else "Sparsity per checkpoint")
    ui.table(result.split, "split-table", "Never updated / cancelled out / subnetwork")
    ui.export_button(
        "Series",
        {"series": choice, "checkpoints": len(paths)},
        ["series", "split", "modules"],
        ["series-table", "split-table"],
    )


ui.run_page(body)
