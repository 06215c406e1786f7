"""Shared dashboards opened by strangers (review "URL parameters and untrusted text"), on the pages (AppTest): a
folder's name in the Workspace metric is shown as text; a hub id is refused in one line where the hub cache lies
outside the roots; a relative path outside the roots reads alike whether it exists or not; the Bigram page's model
and corpus travel in the URL; one stale finetune of a link no longer blanks Sparsity, Spectra, Overlap and
Behaviour; Spectra's export from the Subspaces tab names only the models it draws."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from tests.app_fixtures import open_page, plotly_specs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("typed_options")]

HUB_REFUSAL = (
    "hub ids are read from the Hugging Face cache, which lies outside the folders this server may read "
    "(its owner adds it with SUBNETVIZ_ROOTS)."
)


def _text(shown: str) -> str:
    """An error box's text as the visitor reads it (ui.plain escapes punctuation and breaks autolinks)."""
    return shown.replace("\\", "").replace("\u200b", "")


def _errors(at) -> list[str]:
    assert not at.exception, [e.message for e in at.exception]
    return [_text(e.value) for e in at.error]


# ---------------------------------------------------------------- 1. a folder's name in the metric label
EVIL = "[EVIL LINK](javascript:alert(1)) ![px](https:evil.example) **BOLD** :red[RED] $x^2$ <b>tag"


def test_the_workspace_metric_shows_a_folder_s_name_as_text(app_env):
    """st.metric renders its label as Markdown: the folder's name drew a link, an image every visitor's browser
    fetched from another host, bold, red and KaTeX. Its label now renders (CommonMark) as the name, as text."""
    folder = app_env / "url-review-models" / EVIL
    shutil.copytree(app_env / "zoo" / "dpo", folder)
    try:
        at = open_page("workspace", ft=[str(folder), "grpo-s0"])
        assert _errors(at) == []
        labels = [m.label for m in at.metric]
    finally:
        shutil.rmtree(folder.parent)
    assert labels[1] == "grpo-s0"  # a plain name is its own label
    rendered = MarkdownIt("commonmark").renderInline(labels[0])
    assert not re.search(r"<(a|img|strong|em|b)\b", rendered), rendered
    assert html.unescape(rendered).replace("\u200b", "") == EVIL


# ---------------------------------------------------------------- 2. hub ids, the hub cache outside the roots
def test_a_hub_id_is_refused_in_one_line_when_the_hub_cache_lies_outside_the_roots(app_env, tmp_path, monkeypatch):
    """``ft=acme/tiny-base`` listed the cache and said it holds ``acme/Tiny-Base``; now one line that says nothing of
    the cache, and the other finetune is compared."""
    from tests.unit.test_hub_inputs_review import build_hub

    build_hub(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for hub_id in ("acme/tiny-base", "acme/Tiny-Base@nope", "acme/never-cached"):
        at = open_page("workspace", ft=["grpo-s0", hub_id])
        assert _errors(at) == [f"{hub_id}: {HUB_REFUSAL}"]
        assert [m.label for m in at.metric] == ["grpo-s0"]


# ---------------------------------------------------------------- 3. whether a server path exists
def test_a_relative_path_outside_the_roots_reads_alike_whether_it_exists_or_not(app_env, tmp_path):
    """``base=views/../../../etc/shadow`` read "outside the folders this server may read", ``…/etc/nope`` "no such
    file or folder". The server's folder is the checkout (it holds views/), outside the test home's roots."""
    (tmp_path / "secret.txt").write_text("root:x:0:0")
    said = []
    for name in ("secret.txt", "nope.txt"):
        choice = "views/../../../../../../../.." + str(tmp_path / name)
        (error,) = _errors(open_page("workspace", base=choice))
        assert error.startswith(f"{choice}: ")
        said.append(error.removeprefix(f"{choice}: "))
    assert said[0] == said[1] and "outside the folders this server may read" in said[0]


# ---------------------------------------------------------------- 4. the Bigram page's model and corpus in the URL
@pytest.fixture
def bigram_mask(app_env):
    """A random mask of the zoo's base among the uploads; its name in the sidebar's list."""
    import torch

    from subnetviz import config
    from subnetviz.bigram.maskable import full_mask, load_local_model
    from subnetviz.masks import MaskSet, save_mask_set

    model = load_local_model(config.zoo_dir() / "base")
    path = config.home() / "uploads" / "url-review.safetensors"
    g = torch.Generator().manual_seed(3)
    save_mask_set(path, MaskSet({n: torch.rand(m.shape, generator=g) < 0.3 for n, m in full_mask(model).masks.items()}))
    yield "uploads/url-review"
    path.unlink()


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_the_bigram_model_travels_in_the_url(app_env, bigram_mask):
    """A model typed on the Bigram page was not in the URL: a shared link analysed the sidebar's base with the
    same mask, other numbers and nothing said."""
    at = open_page("bigram", bg_mask=bigram_mask)
    assert _errors(at) == []
    on_base = _metrics(at)
    at.text_input(key="bg_model").input("dpo").run()
    assert _errors(at) == []
    sent = _metrics(at)
    assert sent != on_base  # (the premise: the model changes the numbers)
    url = dict(at.query_params)
    assert url["bg_model"] in ("dpo", ["dpo"]) and "bg_corpus" not in url  # the default corpus is left out
    link = open_page("bigram", **url)
    assert _errors(link) == []
    assert link.text_input(key="bg_model").value == "dpo" and _metrics(link) == sent
    # back to the default (the sidebar's base): the entry leaves the URL
    link.text_input(key="bg_model").input("base").run()
    assert "bg_model" not in link.query_params and _metrics(link) == on_base


def test_the_bigram_corpus_travels_in_the_url(app_env, bigram_mask):
    corpus = app_env / "url-review-corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 50)
    try:
        at = open_page("bigram", bg_mask=bigram_mask)
        at.text_input(key="bg_corpus").input(str(corpus)).run()
        assert not at.exception, [e.message for e in at.exception]
        url = dict(at.query_params)
        assert url["bg_corpus"] in (str(corpus), [str(corpus)])
        link = open_page("bigram", **url)
        assert not link.exception and link.text_input(key="bg_corpus").value == str(corpus)
    finally:
        corpus.unlink()


def test_a_stale_bigram_model_or_corpus_in_a_link_is_dropped_with_a_line(app_env, bigram_mask):
    """A link's model or corpus that is gone since: the field starts at its default, the entry leaves the URL, and
    one line says so (the page is drawn, not ended by the error)."""
    stale = {"bg_model": "run 20250101-000000-train-gone00", "bg_corpus": str(app_env / "gone.txt")}
    at = open_page("bigram", bg_mask=bigram_mask, **stale)
    assert _errors(at) == []
    said = [_text(w.value) for w in at.warning]
    assert len(said) == 2
    assert said[0].startswith(f"The link's model cannot be used here ({stale['bg_model']}: ")
    assert said[1].startswith("The link's corpus cannot be used here (") and "gone.txt: no such file" in said[1]
    assert at.text_input(key="bg_model").value == "base" and at.text_input(key="bg_corpus").value == "zoo"
    assert not {"bg_model", "bg_corpus"} & set(at.query_params) and len(at.metric) >= 7


# ---------------------------------------------------------------- 5 and 7. one stale finetune of a link
STALE = "run 20250101-000000-train-gone00"


@pytest.mark.parametrize("page", ["sparsity", "spectra", "overlap", "behavior"])
def test_stale_finetunes_in_a_link_are_left_out_and_the_page_drawn(app_env, page):
    """Finetunes of a shared link that are gone (a run deleted, a member renamed: no such choice; a folder under the
    roots moved: unreadable): the pages drew only the first one's error. Now each is said once, in one line, and the
    page draws what it draws without them."""
    plain = open_page(page, ft=["grpo-s0", "dpo"])
    assert _errors(plain) == []
    gone = app_env / "url-review-gone"
    at = open_page(page, ft=["grpo-s0", STALE, "dpo", str(gone)])
    refused, unreadable = _errors(at)
    assert refused.startswith(f"{STALE}: ") and refused.count(STALE) == 1
    assert unreadable.count(gone.name) == 1 and "no such file or folder" in unreadable
    assert len(plotly_specs(at)) == len(plotly_specs(plain)) > 0
    assert len(at.dataframe) == len(plain.dataframe)


def test_the_workspace_lists_an_unreadable_finetune_once(app_env):
    """A folder under the roots that is gone: listed as "cannot be read", its reason in one line that names it once
    (it read "gone: …/gone: no such file…"), and the others compared."""
    gone = app_env / "url-review-gone"
    at = open_page("workspace", ft=["grpo-s0", str(gone)])
    (error,) = _errors(at)
    assert error.count("url-review-gone") == 1 and "no such file or folder" in error
    table = at.dataframe[0].value
    assert list(table["label"]) == ["base", "grpo-s0", "url-review-gone"]
    assert list(table["architecture"])[2] == "cannot be read"
    assert [m.label for m in at.metric] == ["grpo-s0"]


# ---------------------------------------------------------------- 6. Spectra's export from the Subspaces tab
def test_spectra_s_export_from_the_subspaces_tab_names_only_the_models_it_draws(app_env, exports):
    """``spec_models`` naming models outside the workspace went into the export's parameters, while the rank
    heatmaps were looked up under those names and silently left out."""
    found = {}
    for models in (["dpo"], ["grpo-s9", "not-a-model"], ["not-a-model", "dpo"]):
        at = open_page("spectra", ft=["grpo-s0", "dpo"], spec_tab="Subspaces of W_base vs W_ft", spec_models=models)
        assert _errors(at) == []
        page = exports["Spectra"]()
        page = page.decode() if isinstance(page, bytes) else page
        params = re.search(r'<table class="params"><caption>Parameters</caption>(.*?)</table>', page, re.S).group(1)
        shown = dict(re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", params, re.S))
        named = json.loads(html.unescape(shown["Δ models"]))
        found[tuple(models)] = (named, set(re.findall(r"([\w-]+): effective rank", page)))
    assert found == {
        ("dpo",): (["dpo"], {"dpo"}),
        ("grpo-s9", "not-a-model"): (["grpo-s0"], {"grpo-s0"}),  # (the first model, as the Δ tab draws it)
        ("not-a-model", "dpo"): (["dpo"], {"dpo"}),
    }


def test_nothing_is_written_into_the_checkout(app_env):
    """(The review's exports landed in the working folder; the app writes under its home only.)"""
    assert not list(Path.cwd().glob("export_*.html"))
