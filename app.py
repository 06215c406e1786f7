"""subnetviz: the Streamlit entry point. It only routes: access, the shared workspace sidebar, then the page."""

import os
from pathlib import Path

import streamlit as st

from subnetviz import ui

PAGES = Path(__file__).parent / "views"
SECTIONS = {
    "": [("home", "Home", "home"), ("workspace", "Workspace", "folder_open")],
    "RL subnetworks": [
        ("sparsity", "Update sparsity", "grid_on"),
        ("spectra", "Spectra", "show_chart"),
        ("overlap", "Overlap", "join_inner"),
        ("series", "Series", "timeline"),
        ("training", "Training runs", "model_training"),
    ],
    "Beyond the papers": [("behavior", "Behaviour", "psychology"), ("drivers", "What drives sparsity", "science")],
    "Circuits": [("bigram", "Bigram subnetworks", "route")],
    "Continual learning": [("continual", "Continual learning", "stacks")],
}

# A local favicon: a Material icon here would make every visitor's browser fetch it from fonts.gstatic.com.
st.set_page_config(page_title="subnetviz", page_icon=str(PAGES / "favicon.png"), layout="wide")
nav = {
    section: [
        st.Page(PAGES / f"{name}.py", title=title, icon=f":material/{icon}:", url_path=name, default=name == "home")
        for name, title, icon in entries
    ]
    for section, entries in SECTIONS.items()
}
page = st.navigation(nav)
ui.page_opened(page.url_path)  # a link's lines are said on the page that read it, not on the next ones
# A shared server reads only under its roots: every file it opens, and every job it starts (children
# inherit the environment). The CLI and the library set nothing and are not restricted.
os.environ["SUBNETVIZ_ENFORCE_ROOTS"] = "1"
ui.gate()  # closed or read-only servers: admit this session first (subnetviz/access.py)
ui.preload_charts()  # the browser loads the chart library while this run works (ui._PRELOAD)
ui.startup()  # once per server: sweep killed writers' temporary folders, recover jobs, start the queue
st.session_state.pop("_workspace", None)
ui.run_page(ui.workspace_sidebar, fresh=False)
page.run()
