"""Home: what subnetviz answers, where to start, and the state of the demo zoo."""

import streamlit as st

from subnetviz import config, ui


def body() -> None:
    st.title("subnetviz")
    st.markdown(
        "**Which parameters did finetuning change, what do the updates look like, and is it the same "
        "subnetwork every time?** Interactive analyses from papers on sparse updates and subnetworks in language "
        "models."
    )
    cards = [
        (
            "Update sparsity",
            "sparsity",
            "Which parameters did finetuning change — how sparse is an RL update against "
            "SFT/DPO, per layer × module, bitwise or at a tolerance?",
        ),
        (
            "Spectra",
            "spectra",
            "Is the sparse update low-rank, or full-rank like random sparse noise? Effective and "
            "stable rank; do the weights' singular subspaces rotate?",
        ),
        (
            "Overlap",
            "overlap",
            "Is it the same subnetwork every time — across seeds, data and algorithms, against chance?",
        ),
        ("Series", "series", "How does sparsity evolve during training, per module; which updates cancel out?"),
        (
            "Training runs",
            "training",
            "Is the subnetwork enough? Train only it and compare with the full finetune and a random-mask control.",
        ),
        (
            "Bigram subnetworks",
            "bigram",
            "Which weights carry current → next token predictions; are they necessary; "
            "what do they do to the residual stream?",
        ),
        (
            "Continual learning",
            "continual",
            "Can disjoint subnetworks learn tasks in sequence without forgetting (SupSup, SSNeT, ExSSNeT)?",
        ),
        (
            "Behaviour",
            "behavior",
            "How far did the finetune move the model's predictions (KL per token), and is the subnetwork "
            "sufficient or necessary for that change?",
        ),
        (
            "What drives sparsity",
            "drivers",
            "Which training factor (learning rate, steps, KL, clipping, data, algorithm, precision) makes "
            "updates sparse?",
        ),
        ("Workspace", "workspace", "What is loaded: checkpoints, masks, the demo zoo's measured numbers?"),
    ]
    # Two to a row: three cut "Bigram subnetworks", "What drives sparsity" and "Continual learning" at 1024 px (a
    # page link's label does not wrap). The cards of a row are as tall as its taller one.
    for start in range(0, len(cards), 2):
        for col, (title, path, text) in zip(st.columns(2), cards[start : start + 2], strict=False):
            with col.container(border=True, height="stretch"):
                st.page_link(f"views/{path}.py", label=title, icon=":material/arrow_forward:")
                st.caption(text)
    z = ui.zoo()
    if z is not None:  # without a zoo, the workspace's warning above every page says how to build it
        st.success(
            f"Demo zoo ready: {len(z.members)} models under {ui.plain(config.display_path(z.root))}. "
            "The sidebar starts on it; point it at your own checkpoints any time."
        )


ui.run_page(body)
