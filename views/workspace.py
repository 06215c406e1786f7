"""Workspace: what is loaded (architecture, parameters, dtypes, the zoo manifest) and a one-glance sparsity table."""

import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import streamlit as st

from subnetviz import config, selection, ui, uilogic
from subnetviz.errors import SubnetvizError
from subnetviz.figures.updates import percent_text
from subnetviz.training.mask_origin import CONVENTION

UNREADABLE = {"architecture": "cannot be read", "family": None, "params": pd.NA, "dtypes": {}, "fingerprint": ""}


def body() -> None:
    st.title("Workspace")
    ws = ui.workspace()
    at = ui.compared_at(ws)  # the sparsity below is compared at the sidebar's precision: said here, and in its title
    rows, unreadable = [], {}
    # the finetunes the sidebar left out (unreadable, or another architecture than the base's; the reason is said at
    # the top of every page) are listed too, a readable one with what its header says
    listed = [(ws.base_label or "base", ws.base, None)] if ws.base is not None else []
    listed += [(lab, p, None) for lab, p in ws.finetuned]
    listed += [left for left in ws.left_out if left[1]]  # (a choice refused has no path: its error names it)
    for label, path, left_out in listed:
        try:
            info = ui.checkpoint_info(path)
        except SubnetvizError as exc:  # listed as unreadable; the others are still shown and compared
            if not left_out:  # (a left-out one's reason is said already)
                unreadable[path] = uilogic.named(label, path, exc)
            info = UNREADABLE
        rows.append(
            {
                "role": "base" if path == ws.base else "finetuned",
                "label": label,
                "architecture": info["architecture"],
                "family": info["family"] or "unknown",
                "parameters": info["params"],
                "stored dtype": ", ".join(f"{k} ({v:,})" for k, v in info["dtypes"].items()),
                "fingerprint": info["fingerprint"],
                "path": uilogic.checkpoint_where(path),
            }
        )
    st.subheader("Checkpoints")
    if rows:
        table = pd.DataFrame(rows).astype({"parameters": "Int64"})  # a count, missing where unreadable
        ui.table(table, "checkpoints", "Checkpoints in the workspace")
    for path, message in unreadable.items():
        ui.error(message + (" Choose another base in the sidebar." if path == ws.base else ""))
    if ws.base is None:  # (a base refused is said at the top; masks and the manifest below do not need one)
        st.info("Choose a base checkpoint in the sidebar.", icon=":material/info:")
    ws = replace(ws, finetuned=tuple((lab, p) for lab, p in ws.finetuned if p not in unreadable))
    analysis, said = None, []  # said: the analysis' notes, on the page and in its export
    if ws.finetuned and ws.base is not None and ws.base not in unreadable:  # the one section that needs the base
        st.subheader(f"Exact update sparsity against the base{at}")
        analysis = ui.update_analysis(ws)
        summary = analysis.summary()
        # 1 change in 10^5 is not 100.00 %: "99.9998 %", in rows narrow enough to show it whole at 1024 px
        shares = summary["sparsity"].to_numpy(float, na_value=math.nan)
        values = [f"{t} %" for t in percent_text(100 * shares, decimals=2)]
        width = uilogic.metrics_per_row(values)
        for start in range(0, len(summary), width):  # every finetune has its headline number
            rows = zip(values[start : start + width], summary.iloc[start : start + width].itertuples(), strict=True)
            for col, (value, r) in zip(st.columns(width), rows, strict=False):
                col.metric(
                    uilogic.label_text(r.model),  # a metric's label is Markdown: a folder's name shown as text
                    value,
                    help=f"{r.changed:,} of {r.numel:,} parameters changed "
                    f"(bitwise{at}); sparsity = 1 − changed / all, parameter-weighted.",
                )
        ui.table(summary, "sparsity-summary", f"Exact (bitwise) update sparsity{at}, parameter-weighted")
        for note in analysis.notes:
            ui.note(note, said)
    st.subheader("Masks")
    up = None
    if ui.allowed("upload"):
        up = st.file_uploader(
            "Add a mask (.safetensors, a torch.save .pt / .pth, a NumPy .npz or a released bigram-subnetwork .pickle — "
            "read safely: nothing in a file is run)",
            type=[s.lstrip(".") for s in selection.UPLOAD_SUFFIXES],
            key="mask_upload",
            help=f"Bool or 0/1 tensors keyed by parameter name: {CONVENTION}.",
        )
    if up is not None:
        with ui.said_here():  # under the uploader; the rest of the page stays
            done = st.session_state.get("_mask_stored")
            if not done or done[0] != up.file_id:
                with ui.memory_wait("storing the upload") as wait:
                    stored = selection.save_upload(up.name, up, wait=wait)
                st.session_state["_mask_stored"] = (up.file_id, stored.name)
                # once more, so that the sidebar (drawn before this) lists it: the note said to pick it there
                st.rerun()
            st.success(f"Stored as {ui.plain(done[1])}; pick it under *Saved masks* in the sidebar.")
    files = dict(ws.masks)
    if analysis is not None:
        from subnetviz.analysis.updates import mask_path

        files.update({f"update mask of {m}": str(mask_path(analysis.source_dir, m)) for m in analysis.labels})
    _mask_table(files)
    if unlisted := selection.unlisted():  # (a name Streamlit's lists cannot carry; the rest are listed)
        more = f", and {len(unlisted) - 5} more" if len(unlisted) > 5 else ""
        ui.warning(
            f"Not listed in the sidebar, as the path is not UTF-8 text (rename to list it): {', '.join(unlisted[:5])}"
            f"{more}."
        )
    z = ui.zoo()
    if z is not None:
        st.subheader("Demo zoo manifest")
        ui.table(pd.DataFrame([m.to_dict() for m in z.manifest.members]), "zoo-members", "Demo zoo members")
        with st.expander("Full manifest (JSON)"):
            st.json(uilogic.redacted(z.manifest.to_dict()), expanded=False)  # (it names the runs folder)
    params = {
        "base": ws.base or "none chosen",  # (a path: shown relative to its root)
        "finetunes": [lab for lab, _ in ws.finetuned],
        "masks": [lab for lab, _ in ws.masks],
        "precision": ws.precision or "stored dtype",
    }
    ui.export_button("Workspace", params, [], ["checkpoints", "sparsity-summary", "masks", "zoo-members"], notes=said)


def _mask_table(files: dict[str, str]) -> None:
    """The chosen masks (label -> file) counted in one table, an unreadable one said in one line under it (the others
    are still listed), and a download of a readable one."""
    mrows, unread = [], {}
    for label, path in files.items():
        try:
            ms = ui.mask_summary(path)
        except SubnetvizError as exc:  # said in one line below the table; the readable masks are still listed
            unread[label] = uilogic.named(label, path, exc)
            continue
        mrows.append(
            {
                "mask": label,
                "tensors": ms["tensors"],
                "in mask": ms["count"],
                "parameters": ms["numel"],
                "density": ms["density"],
                "method": ms["method"],
                "path": config.display_path(path),
            }
        )
    readable = {label: path for label, path in files.items() if label not in unread}  # (the ones to download)
    if mrows:
        ui.table(pd.DataFrame(mrows), "masks", "Mask sets")
    for message in unread.values():
        ui.error(message)
    if readable:
        pick = st.selectbox("Download a mask (safetensors, bit-packed, with provenance)", list(readable), key="mask_dl")
        st.download_button(
            "Download mask",
            lambda: _mask_bytes(readable[pick]),  # its provenance names server paths as the pages show them
            file_name=Path(readable[pick]).name,
            mime="application/octet-stream",
            key="mask-dl-btn",
            icon=":material/download:",
            on_click="ignore",
        )


def _mask_bytes(path: str) -> bytes:
    from subnetviz.masks import shareable_bytes

    return shareable_bytes(path)


ui.run_page(body)
