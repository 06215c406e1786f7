"""Workspace: what is loaded (architecture, parameters, dtypes, the zoo manifest) and a one-glance sparsity table."""

import pandas as pd
import streamlit as st

from subnetviz import ui


def body() -> None:
    st.title("Workspace")
    ws = ui.workspace()
    ui.need(ws.base is not None, "Choose a base checkpoint in the sidebar.")
    rows = []
    for label, path in [(ws.base_label or "base", ws.base), *ws.finetuned]:
        info = ui.checkpoint_info(path)
        rows.append({"role": "base" if path == ws.base else "finetuned", "label": label,
                     "architecture": info["architecture"], "family": info["family"] or "unknown",
                     "parameters": info["params"],
                     "stored dtype": ", ".join(f"{k} ({v:,})" for k, v in info["dtypes"].items()),
                     "fingerprint": info["fingerprint"], "path": path})  # fmt: skip
    st.subheader("Checkpoints")
    ui.table(pd.DataFrame(rows), "checkpoints", "Checkpoints in the workspace")
    if ws.finetuned:
        st.subheader("Exact update sparsity against the base")
        analysis = ui.update_analysis(ws)
        summary = analysis.summary()
        cols = st.columns(min(len(summary), 6))
        for col, r in zip(cols, summary.itertuples(), strict=False):
            col.metric(r.model, f"{100 * r.sparsity:.2f} %", help=f"{r.changed:,} of {r.numel:,} parameters changed "
                       "(bitwise); sparsity = 1 − changed / all, parameter-weighted.")  # fmt: skip
        ui.table(summary, "sparsity-summary", "Exact (bitwise) update sparsity, parameter-weighted")
        for note in analysis.notes:
            st.caption(note)
    if ws.masks:
        from subnetviz.masks import load_mask_set

        st.subheader("Saved masks")
        mrows = []
        for label, path in ws.masks:
            ms = load_mask_set(path)
            mrows.append({"mask": label, "tensors": len(ms.masks), "in mask": ms.count, "parameters": ms.numel,
                          "density": ms.density, "method": ms.metadata.get("method", ""), "path": path})  # fmt: skip
        ui.table(pd.DataFrame(mrows), "masks", "Mask sets")
    z = ui.zoo()
    if z is not None:
        st.subheader("Demo zoo manifest")
        members = pd.DataFrame(z.manifest.get("members", []))
        ui.table(members, "zoo-members", "Demo zoo members")
        with st.expander("Full manifest (JSON)"):
            st.json(z.manifest, expanded=False)


ui.run_page(body)
