"""subnetviz: the Streamlit entry point. It only routes: the shared workspace sidebar, then the page."""

from pathlib import Path

import streamlit as st

from subnetviz import ui

PAGES = Path(__file__).parent / "views"
SECTIONS = {
    "": [("home", "Home", "home"), ("workspace", "Workspace", "folder_open")],
    "RL subnetworks": [("sparsity", "Update sparsity", "grid_on"), ("spectra", "Spectra", "show_chart"),
                       ("overlap", "Overlap", "join_inner"), ("series", "Series", "timeline"),
                       ("training", "Training runs", "model_training")],
    "Circuits": [("bigram", "Bigram subnetworks", "route")],
    "Continual learning": [("continual", "Continual learning", "stacks")],
}  # fmt: skip

# A local favicon: a Material icon here would make every visitor's browser fetch it from fonts.gstatic.com.
st.set_page_config(page_title="subnetviz", page_icon=str(PAGES / "favicon.png"), layout="wide")
nav = {
    section: [
        st.Page(PAGES / f"{name}.py", title=title, icon=f":material/{icon}:", url_path=name, default=name == "home")
        for name, title, icon in entries
        if (PAGES / f"{name}.py").exists()  # a page still being written is left out, not an error
    ]
    for section, entries in SECTIONS.items()
}
page = st.navigation({s: p for s, p in nav.items() if p})
st.session_state.pop("_workspace", None)
ui.run_page(ui.workspace_sidebar, fresh=False)
page.run()
