"""Series: update sparsity along a training run, against the start and step to step."""

from dataclasses import replace
from pathlib import Path

import pandas as pd
import streamlit as st

from subnetviz import config, figures, ui, uilogic
from subnetviz.analysis.series import in_every_step, training_run
from subnetviz.figures.series import SPLIT_NOT_RUN
from subnetviz.text import visible_controls

# Each chart names the series it shows under its title (a downloaded figure has no picker beside it: two runs' charts
# were the same file): in subtitle lines of at most this many characters (~5 px each) at 1024 px with the sidebar
# open: the series chart two thirds of the page (~365 px), the split bar a third (~180 px), the module chart the page.
TWO_THIRDS, THIRD, PAGE = 70, 34, 110


def name_lines(pieces: tuple[str, ...], width: int) -> list[str]:
    """A series' name in ``pieces`` (a path's folders, each with its "/"; " … last") as subtitle lines of at most
    ``width`` characters, broken only between pieces, a piece longer than a line cut in its middle; as text."""
    lines: list[str] = []
    for piece in map(visible_controls, pieces):  # (measured as drawn: a U+202E as ⟨U+202E⟩)
        if lines and len(lines[-1]) + len(piece) <= width:
            lines[-1] += piece
        else:
            lines.append(piece.lstrip())
    half = (width - 1) // 2
    return [figures.plain_label(x if len(x) <= width else f"{x[:half]}…{x[half + 1 - width :]}") for x in lines]


def series_figure(lines, first: str, ticks, start: int, called: tuple[str, ...]):
    """The series chart, named by ``called`` (:func:`name_lines`' pieces)."""
    fig = figures.series_lines(lines, first=first, ticks=ticks, start=start)
    return figures.with_subtitles(fig, name_lines(called, TWO_THIRDS))


def split_figure(split, called: tuple[str, ...]):
    """Where the parameters ended up, named by ``called``."""
    return figures.with_subtitles(figures.split_bar(split), name_lines(called, THIRD))


def module_figure(per, steps: tuple[int, ...], first: str, called: tuple[str, ...] = ()):
    """Sparsity per module kind at each checkpoint of a run (``steps``: the first checkpoint's, then one per
    step): from the series' own counts (``per``: a :class:`SeriesResult` holding them), or from the update analysis
    of the run's checkpoints against its first (``per``: its reports, cut to the tensors the series compared),
    built once per analysis, shared; named by ``called``."""
    if getattr(per, "modules", None) is not None:
        frame = per.modules
    else:
        reports = in_every_step(per.reports)
        frame = pd.concat([r.by_layer_module().assign(step=s) for r, s in zip(reports, steps[1:], strict=True)])
    return figures.with_subtitles(figures.module_series(frame, first=first, start=steps[0]), name_lines(called, PAGE))


TABLE_NAMES = {  # the analysis's columns, named in the table as on the chart (the first checkpoint is the base)
    "vs_first": "sparsity_vs_base",
    "vs_previous": "sparsity_vs_previous",
    "changed_vs_first": "changed_vs_base",
    "changed_vs_previous": "changed_vs_previous",
    "back_to_start": "back_to_start_share",
}


NOT_RUN_NAMES = TABLE_NAMES | {"back_to_start": "changed_earlier_equal_to_base_share"}  # not one run: no "back"

RUN_CAPTION = (
    "Sparsity against the first checkpoint and between consecutive ones (bitwise), and the share of "
    "parameters updated at some step but back to their initial value — gradients that cancelled out."
)
NOT_RUN_CAPTION = (
    "Sparsity of each checkpoint against the base and against the checkpoint before it in the sidebar (bitwise). "
    "They are taken as independent finetunes, not one run: where one finetune changed a parameter and a later, "
    "independent one did not, nothing was undone."
)
RUN_SPLIT_CAPTION = (
    "Never updated: equal to the start at every checkpoint; updated, unchanged at the end: changed at "
    "some step and back to the start at the end (cancelled out); final subnetwork: changed at the end."
)
NOT_RUN_SPLIT_CAPTION = (
    "Equal to the base in every checkpoint; changed in an earlier checkpoint, equal to the base in the last "
    "(another finetune's update the last one did not make, not one undone); changed in the last checkpoint."
)


WORKSPACE_RUN = "workspace: one training run, by step"
WORKSPACE_ORDER = "workspace: base → finetuned in sidebar order"


def run_folder(folder: str) -> str:
    """A run's folder as a visitor sees it (relative to its root); a hub repository's id as it is."""
    return config.display_path(folder) if Path(folder).is_absolute() else folder


def base_name(label: str, path: str) -> str:
    """The base as the page names it (``label``: the series' first tick) and where it is (:func:`run_folder`), for
    the caption and the export: every number of the series is against it, and a shared file has no sidebar."""
    where = run_folder(str(path))
    return label if where == label else f"{label} ({where})"


def workspace_source(ws) -> tuple[str, tuple, list[str], tuple[str, ...], dict]:
    """The sidebar's finetunes as a series source (name, source, what to say of it, the series' name in pieces for
    the charts (:func:`name_lines`), what the export's parameters add): one training run's checkpoints in training
    order (steps from trainer_state.json, step.json or checkpoint-<N> names), named by the run's folder, else
    independent finetunes in the sidebar's order, named by the first and the last."""
    tr = training_run(ws.paths, ws.labels, ws.base)
    first = ws.base_label or "base"
    if tr.why_not:  # said where the finetunes look like a run's checkpoints (some carry a step), not for any finetune
        why = [f"Not read as one training run: {tr.why_not}"] if any(s is not None for s in tr.steps) else []
        source = ([ws.base, *ws.paths], list(range(len(ws.paths) + 1)), first, [first, *ws.labels])
        called = (first, f" → {ws.labels[0]}", *((f" … {ws.labels[-1]}",) if len(ws.labels) > 1 else ()))
        return WORKSPACE_ORDER, source, why, called, {"finetunes": ", ".join(ws.labels)}
    o = tr.order
    how = ", ".join(dict.fromkeys(tr.read_from[i] for i in o))
    said = [
        f"The finetunes are one training run's checkpoints ({tr.folder}), taken in training order by their steps "
        f"({how}); the base is "
        + (f"the run's checkpoint at step {tr.start}." if tr.start else "the run's start, step 0.")
    ]
    if tr.reordered:
        shown = ", ".join(ws.labels[:4]) + (" …" if len(ws.labels) > 4 else "")
        said.append(
            f"Ordered by training step, not as in the sidebar ({shown}): 'vs previous' is each checkpoint against "
            "the one before it in training."
        )
    source = (
        [ws.base, *(ws.paths[i] for i in o)],
        [tr.start, *(tr.steps[i] for i in o)],
        first,
        None,
        [ws.labels[i] for i in o],
    )
    folder = run_folder(tr.folder)
    called = ("run ", *(part + "/" for part in folder.split("/")[:-1]), folder.split("/")[-1])
    return WORKSPACE_RUN, source, said, called, {"run": folder}


def body() -> None:
    st.title("Checkpoint series")
    ws = ui.workspace()
    z = ui.zoo()
    # name -> (paths, steps, what step 0 is, axis labels or None for training steps[, checkpoint names])
    sources = {}
    if z is not None and z.series:
        sources["demo zoo: GRPO seed 0"] = (
            [str(z.base)] + [str(path) for _, path in z.series],
            [0] + [step for step, _ in z.series],
            "base",
            None,
        )
    about: dict[str, list[str]] = {}  # what to say of a source where it is chosen
    called = {name: (name,) for name in sources}  # the series' name on its charts (the zoo's: its source's)
    params: dict[str, dict] = {}  # what the export's parameters say of it beyond the source's kind
    name = None
    if ws.base and len(ws.finetuned) >= 1:
        name, source, notes, called[name], params[name] = workspace_source(ws)
        sources[name], about[name] = source, notes
    ui.need(bool(sources), "A series needs ordered checkpoints: build the demo zoo or pick finetuned checkpoints.")
    # the sidebar's finetunes chosen under the other workspace source's name (a link made before they were read as
    # one run, or a finetune added since): the workspace's source, not the first one
    # The choice is read from and written into the URL by hand: a bound picker given the replacement above in the
    # session state showed it, but the address bar kept no series_src, and that link opened the demo zoo's series.
    asked = st.session_state.get("series_src", st.query_params.get("series_src"))
    if asked in (WORKSPACE_RUN, WORKSPACE_ORDER) and asked not in sources and name in sources:
        st.session_state["series_src"] = asked = name
    options = list(sources)
    index = {} if "series_src" in st.session_state else {"index": options.index(asked) if asked in sources else 0}
    # a link's series not on offer here (a zoo not built on this server, finetunes not in its sidebar): said
    stale = "series_src" not in st.session_state and asked is not None and asked not in sources
    line = uilogic.stale_link_line("series", asked, "the series on offer here", options[0]) if stale else None
    if said := uilogic.link_fallback(st.session_state, "series_src", line, options[0]):
        ui.warning(said)
    choice = st.selectbox("Series", options, key="series_src", **index)
    st.query_params["series_src"] = choice
    paths, steps, first, ticks, *checkpoints = sources[choice]
    run = ticks is None  # one training run's checkpoints; else independent checkpoints in the sidebar's order
    base = base_name(first, paths[0])
    st.caption(f"{RUN_CAPTION if run else NOT_RUN_CAPTION} Base: {ui.plain(base)}.")
    said: list[str] = []  # the notes that qualify the numbers: on the page and in its export
    for note in about.get(choice, []):
        ui.note(note, said)
    ui.compared_at(ws, applies=False)  # a link's bf16 is not this page's: said, where one is set
    result = ui.series(paths, steps)
    # what was left out (tensors not in every checkpoint, resized vocabularies' extra rows), a merged adapter,
    # mixed precision, buffers and scales not counted, FP8 / int8 dequantised, codes as codes
    for note in result.notes:
        ui.note(note, said)  # tensor names: shown as text
    # not one run: no back-to-start line (a finetune's update a later, independent one did not make is no return)
    lines = result.steps if run else result.steps.drop(columns="back_to_start")
    split = result.split if run else result.split.assign(part=result.split["part"].map(SPLIT_NOT_RUN))
    a, b = st.columns([2, 1])
    with a:
        ui.chart(ui.shared(series_figure, lines, first, ticks, steps[0], called[choice]), key="series")
    with b:
        ui.chart(ui.shared(split_figure, split, called[choice]), key="split")
        st.caption(RUN_SPLIT_CAPTION if run else NOT_RUN_SPLIT_CAPTION)
    if run:  # one run: its checkpoints against the base, per module kind
        per = result  # the series pass's own counts per tensor: no second read of the checkpoints
        if result.modules is None:  # a fused QKV or gate/up: split into parts by the update analysis
            # bitwise on the stored dtype, as the caption and the series lines beside it say (not at the sidebar's
            # comparison precision, which would round small updates away in this chart only)
            steps_ws = replace(
                ws,
                base=paths[0],
                finetuned=tuple((f"step {s}", p) for s, p in zip(steps[1:], paths[1:], strict=True)),
                precision=None,
            )
            per = ui.update_analysis(steps_ws)
        ui.chart(ui.shared(module_figure, per, tuple(steps), first, called[choice]), key="modules")
    names = TABLE_NAMES if run else NOT_RUN_NAMES
    table = result.steps.rename(columns=names)[["step", *names.values()]]
    if not run:  # each row names its checkpoint (the step is its place in the sidebar)
        table.insert(1, "checkpoint", [ticks[int(s)] for s in table["step"]])
    elif checkpoints:  # the sidebar's run: each step's checkpoint
        table.insert(1, "checkpoint", checkpoints[0])
    ui.table(table, "series-table", "Sparsity per step" if run else "Sparsity per checkpoint")
    ui.table(
        split,
        "split-table",
        "Never updated / cancelled out / subnetwork" if run else "Equal to the base / changed earlier / changed last",
    )
    ui.export_button(
        "Series",
        {"series": choice, "base": base, **params.get(choice, {}), "checkpoints": len(paths)},
        ["series", "split", "modules"],
        ["series-table", "split-table"],
        notes=said,
    )


ui.run_page(body)
