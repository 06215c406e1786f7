"""Home: what subnetviz answers, where to start, and the state of the demo zoo."""

import streamlit as st

from subnetviz import config, ui


def body() -> None:
    st.title("subnetviz")
    st.markdown("**Which parameters did finetuning change, what do the updates look like, and is it the same "
                "subnetwork every time?** Interactive analyses from three papers on subnetworks in language models.")  # fmt: skip
    cols = st.columns(3)
    cards = [
        ("Update sparsity", "sparsity", "Which entries changed, per layer × module, bitwise and along a tolerance "
         "sweep; ULP distances; precision effects."),
        ("Spectra", "spectra", "Singular values and rank of each update against a random-sparse baseline."),
        ("Overlap", "overlap", "Venn, UpSet and pairwise overlap of update masks across seeds, data and algorithms."),
        ("Series", "series", "Sparsity over a training run: against the start and step to step."),
        ("Training runs", "training", "Finetune the whole model or only a subnetwork (TRL SFT/DPO/GRPO)."),
        ("Bigram subnetworks", "bigram", "Which weights carry current-token → next-token predictions."),
        ("Continual learning", "continual", "SupSup / SSNeT / ExSSNeT: disjoint subnetworks per task."),
        ("Workspace", "workspace", "What is loaded: checkpoints, masks, the demo zoo manifest."),
    ]  # fmt: skip
    for i, (title, path, text) in enumerate(cards):
        with cols[i % 3].container(border=True):
            st.page_link(f"views/{path}.py", label=title, icon=":material/arrow_forward:")
            st.caption(text)
    z = ui.zoo()
    if z is None:
        st.warning("The demo zoo is not built. Run `python -m subnetviz demo build` (the README's `make app` does it).")
    else:
        st.success(f"Demo zoo ready: {len(z.members)} models under {ui.plain(config.display_path(z.root))}. "
                   "The sidebar starts on it; point it at your own checkpoints any time.")  # fmt: skip


ui.run_page(body)
