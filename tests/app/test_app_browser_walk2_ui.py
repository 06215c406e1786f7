"""Browser walk 2, on the pages (AppTest):

- one finetune of another architecture in a link (a GPT-2 beside the zoo's Llama base) blanked Workspace, Sparsity,
  Spectra, Overlap and Behaviour with one 'different shapes' error; it is left out with one line naming it and why,
  and the rest is drawn, as for a finetune that cannot be read;
- a comparison precision other than 'stored' (URL precision=bf16) is said near the top of the pages whose numbers
  depend on it and in their chart titles (it was named only in the collapsed sidebar);
- a table too large for a Styler gives its share column one format with the decimals that tell its values from
  0 % and 100 %, numbers still (they sort).
"""

from __future__ import annotations

import re

import pytest

from tests.app_fixtures import open_page, plotly_specs
from tests.models import save_model, tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("typed_options")]


def _text(shown: str) -> str:
    """A message as the visitor reads it (ui.plain escapes punctuation and breaks autolinks)."""
    return shown.replace("\\", "").replace("\u200b", "")


def _errors(at) -> list[str]:
    assert not at.exception, [e.message for e in at.exception]
    return [_text(e.value) for e in at.error]


def _captions(at) -> str:
    return " ".join(_text(c.value) for c in at.caption)


def _titles(at) -> list[str]:
    return [re.sub(r"<[^>]+>", " ", (s["layout"].get("title") or {}).get("text") or "") for s in plotly_specs(at)]


# ---------------------------------------------------------------- a finetune of another architecture
@pytest.fixture(scope="module")
def gpt2(app_env):
    """A tiny GPT-2 24 wide under the app's home: its head and embedding cannot be paired with the zoo base's."""
    return save_model(tiny_model("gpt2", hidden=24, bos_token_id=0, eos_token_id=0), app_env / "walk2-gpt2")


@pytest.mark.parametrize("page", ["workspace", "sparsity", "spectra", "overlap", "behavior"])
def test_a_finetune_of_another_architecture_is_left_out_and_the_rest_drawn(app_env, gpt2, page):
    plain = open_page(page, ft=["grpo-s0", "dpo"])
    assert _errors(plain) == []
    at = open_page(page, ft=["grpo-s0", str(gpt2), "dpo"])
    (said,) = _errors(at)  # one line, naming it and why
    assert said.startswith("walk2-gpt2 is left out (it cannot be compared with the base): ")
    assert "models of different architectures" in said and "(gpt2)" in said
    assert len(plotly_specs(at)) == len(plotly_specs(plain)) > 0 or page == "workspace"
    assert len(at.dataframe) == len(plain.dataframe)
    assert [m.label for m in at.metric] == [m.label for m in plain.metric]
    assert [m.value for m in at.metric] == [m.value for m in plain.metric]
    if page == "workspace":  # listed with what its header says: the architecture that does not fit
        table = at.dataframe[0].value
        assert list(table["label"]) == ["base", "grpo-s0", "dpo", "walk2-gpt2"]
        assert list(table["architecture"])[3] == "GPT2LMHeadModel" and list(table["family"])[3] == "gpt2"
        assert [m.label for m in at.metric] == ["grpo-s0", "dpo"]


@pytest.mark.parametrize("page", ["sparsity", "spectra", "behavior"])
def test_with_every_finetune_left_out_the_page_points_to_their_errors(app_env, gpt2, page):
    """Its one finetune left out, the page said "Choose a base and finetuned checkpoints in the sidebar." under the
    error, though both were chosen and still shown there; a refused base likewise."""
    at = open_page(page, ft=[str(gpt2)])
    assert [e[:27] for e in _errors(at)] == ["walk2-gpt2 is left out (it "]
    assert [_text(i.value) for i in at.info] == [
        "No finetuned checkpoint could be compared with the base (see above): choose others in the sidebar."
    ]
    at = open_page(page, base="/usr/share", ft=["grpo-s0"])  # outside the allowed roots: refused unopened
    assert len(_errors(at)) == 1 and "outside" in _errors(at)[0] and not plotly_specs(at)
    assert [_text(i.value) for i in at.info] == [
        "The base could not be opened (see above): choose another in the sidebar."
    ]


def test_the_misfit_is_decided_once_per_state_of_the_files(app_env, gpt2, monkeypatch):
    """A page revisit asks the memo, not the headers: the alignment runs once for the pair, and again only after
    the finetune's files change."""
    from subnetviz import selection

    calls: list[str] = []
    real = selection.finetune_misfit

    def counted(base, path):
        calls.append(path)
        return real(base, path)

    monkeypatch.setattr(selection, "finetune_misfit", counted)
    other = save_model(tiny_model("gpt2", hidden=24, seed=3, bos_token_id=0, eos_token_id=0), app_env / "walk2-gpt2b")
    at = open_page("sparsity", ft=["grpo-s0", str(other)])
    for _ in range(2):
        at.run()
    assert _errors(at)[0].startswith("walk2-gpt2b is left out") and calls.count(str(other)) == 1
    weights = other / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # rewritten in place: a new stamp, asked again
    at.run()
    assert calls.count(str(other)) == 2


# ---------------------------------------------------------------- the comparison precision on the page
SAID = "Compared at bf16 (sidebar › Compute)"


def test_the_workspace_says_the_comparison_precision(app_env):
    stored = open_page("workspace", ft=["grpo-s0"])
    at = open_page("workspace", ft=["grpo-s0"], precision="bf16")
    assert _errors(at) == [] and _errors(stored) == []
    assert _captions(at).count(SAID) == 1 and "Compared at" not in _captions(stored)
    heads = [s.value for s in at.subheader]
    assert "Exact update sparsity against the base at bf16" in heads
    assert "Exact update sparsity against the base" in [s.value for s in stored.subheader]
    assert "bitwise at bf16" in at.metric[0].help


def test_update_sparsity_names_the_precision_in_every_chart_title(app_env):
    stored = open_page("sparsity", ft=["grpo-s0", "dpo"])
    at = open_page("sparsity", ft=["grpo-s0", "dpo"], precision="bf16")
    assert _errors(at) == [] and _captions(at).count(SAID) == 1
    titles = _titles(at)
    assert titles and all("at bf16" in t for t in titles), titles
    assert "Overall update sparsity per model (exact at bf16)" in titles[0]
    assert not any("bf16" in t for t in _titles(stored)) and "Compared at" not in _captions(stored)
    # the other tabs' charts too
    sweep = open_page("sparsity", ft=["grpo-s0"], precision="bf16", sp_tab="Tolerance sweep and ULPs")
    assert all("at bf16" in t for t in _titles(sweep)) and len(_titles(sweep)) == 2
    norms = open_page("sparsity", ft=["grpo-s0"], precision="bf16", sp_tab="Norms, embeddings, head")
    assert _titles(norms) == ["Norms, embeddings and head: update sparsity (exact at bf16)"]
    matrix = open_page("sparsity", ft=["grpo-s0"], precision="bf16", sp_tab="One matrix")
    changed, delta = [t for t in _titles(matrix) if t.startswith(("Which entries changed", "Signed update"))]
    assert changed.startswith("Which entries changed ") and "exact at bf16" in changed and "compared at bf16" in delta


def test_spectra_names_the_precision_of_the_deltas(app_env):
    at = open_page("spectra", ft=["grpo-s0"], precision="bf16")
    assert _errors(at) == [] and _captions(at).count(SAID) == 1
    (title,) = _titles(at)
    assert title.startswith("Singular values of updates at bf16")
    ranks = open_page("spectra", ft=["grpo-s0"], precision="bf16", spec_view="Effective and stable rank")
    assert len(_titles(ranks)) == 2 and all(t.rstrip().endswith("at bf16") for t in _titles(ranks)), _titles(ranks)
    stored = open_page("spectra", ft=["grpo-s0"])
    assert "bf16" not in " ".join(_titles(stored)) and "Compared at" not in _captions(stored)


def test_overlap_names_the_precision_its_update_masks_were_made_at(app_env):
    """The update masks (Δ) are made at the sidebar's precision: the page says so once and every chart's title
    names it; with saved masks only (the zoo's bigram mask) nothing is said."""
    q = {"ft": ["grpo-s0", "dpo"], "ov_masks": ["Δ grpo-s0", "Δ dpo"]}
    at = open_page("overlap", precision="bf16", **q)
    assert _errors(at) == [] and _captions(at).count(SAID) == 1
    titles = _titles(at)
    assert titles and all("update masks at bf16" in t for t in titles), titles
    stored = open_page("overlap", **q)
    assert "Compared at" not in _captions(stored) and not any("bf16" in t for t in _titles(stored))


def test_series_says_the_sidebar_precision_does_not_apply(app_env):
    at = open_page("series", ft=["grpo-s0", "dpo"], precision="bf16")
    assert _errors(at) == []
    assert "the sidebar's comparison precision (bf16, sidebar › Compute) does not apply" in _captions(at)
    assert SAID not in _captions(at) and not any("bf16" in t for t in _titles(at))


# ---------------------------------------------------------------- a large table's share column
def _large_table():
    import numpy as np
    import pandas as pd

    from subnetviz import ui

    rows = ui.STYLED_CELLS // 2 + 10  # (two columns)
    shares = np.r_[[1 - 1e-6, 0.6421, 2.453e-5], np.full(rows - 3, 0.5)]
    ui.table(pd.DataFrame({"name": [f"t{i}" for i in range(rows)], "sparsity": shares}), "big")


def test_a_large_table_gives_its_share_column_decimals_that_tell_it_from_100_and_keeps_numbers(app_env):
    """The browser got '%.3e %%' for the column: 99.9999 % read 1.000e+2 % and 64.21 % read 6.421e+1 %. The column
    stays numbers (it sorts by them) with one fixed-decimal format: 4 decimals tell 99.9999 % from 100 %, and
    2.453e-3 % from 0."""
    import json

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_large_table, default_timeout=60).run()
    assert not at.exception
    shown = at.dataframe[0].value
    assert list(shown["sparsity"][:4]) == [100 * (1 - 1e-6), 64.21, 100 * 2.453e-5, 50.0]
    config = json.loads(at.dataframe[0].proto.columns)["sparsity"]
    assert config["type_config"]["type"] == "number" and config["type_config"]["format"] == "%.4f %%"
