"""Shared dashboards opened by strangers (review "URL parameters and untrusted text"), without Streamlit: a
checkpoint's name in a metric label shown as text, hub ids refused where the Hugging Face cache lies outside the
roots (before the cache is looked at), a relative path outside the roots refused in the same words whether it
exists or not, and one bad finetune of a link left out (named once) while the others are compared."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from subnetviz.errors import PathNotAllowedError, SubnetvizError
from tests import audit
from tests.unit.test_hub_inputs_review import build_hub

HF_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")


# ---------------------------------------------------------------- what the process touches (an audit hook)
@pytest.fixture
def watched():
    """Start watching folders: ``watched(folder)``; the list of what was opened or listed there."""

    def watch(folder: Path) -> list[tuple[str, str]]:
        audit.WATCH.append(folder.resolve())
        return audit.SEEN

    audit.SEEN.clear()
    yield watch
    audit.WATCH.clear()
    audit.SEEN.clear()


@pytest.fixture
def places(tmp_path, monkeypatch):
    """A root (``inside``, the only one besides the home), the server's working folder outside it (``cwd``, with a
    ``views`` folder as the app's has) and, beside them, a folder outside every root holding a secret; every HF
    variable unset (the hub cache is then ``~/.cache/huggingface/hub``, outside the roots)."""
    inside, cwd, outside = tmp_path / "inside", tmp_path / "cwd", tmp_path / "outside"
    for d in (inside, cwd / "views", outside):
        d.mkdir(parents=True)
    (outside / "secret.txt").write_text("root:x:0:0")
    for var in HF_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(inside))
    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    monkeypatch.chdir(cwd)
    return inside, cwd, outside


def _refusal(choice: str) -> str:
    from subnetviz.selection import resolve_choice

    with pytest.raises(PathNotAllowedError) as exc:
        resolve_choice(choice, {})
    text = str(exc.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------- 1. a name in a metric's label
RENDER = MarkdownIt("commonmark").enable(["table", "strikethrough"])


def _rendered(text: str) -> str:
    return RENDER.renderInline(text)


@pytest.mark.parametrize("name", ["grpo-s0", "acme/tiny-ft", "run-20250101-000000", "Llama-3.1-8B", "qwen2.5/7b"])
def test_a_plain_name_is_its_own_label_and_markdown_reads_it_as_text(name):
    """A checkpoint's name that Markdown leaves alone stays as it is (CommonMark, markdown-it-py, renders it as
    the same text), so a metric's label reads the name, not backslashes."""
    from subnetviz.uilogic import label_text

    assert label_text(name) == name
    assert _rendered(name) == name


EVIL = "[EVIL LINK](javascript:alert(1)) ![px](https:evil.example) **BOLD** :red[RED] $x^2$ <b>tag"


@pytest.mark.parametrize("name", [EVIL, "1. first", "- item", "a_b_", "www.evil.example", "me@evil.example", "__x__"])
def test_a_name_markdown_would_act_on_is_escaped_to_its_own_text(name):
    """A folder named with Markdown: rendered, its label is the name as text (no link, image, emphasis or tag)."""
    from subnetviz.uilogic import label_text

    shown = label_text(name)
    html = _rendered(shown)
    for tag in ("<a", "<img", "<strong", "<em", "<b>", "<ol", "<ul"):
        assert tag not in html, (name, html)
    assert html.replace("\u200b", "") == name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------- 2. hub ids where the hub cache lies outside the roots
def test_hub_ids_are_refused_before_the_cache_is_looked_at_when_it_lies_outside_the_roots(
    places, tmp_path, monkeypatch, watched
):
    """``ft=acme/tiny-base`` listed the cache and answered "the cache holds acme/Tiny-Base"; ``@nope`` listed its
    revisions; a cached id read refs/main and a tree listing. Now one line, the same for every id, and nothing
    under the cache is opened or listed."""
    from subnetviz import uilogic

    cache = tmp_path / "hub"
    build_hub(cache)  # acme/tiny-base (and others), outside the roots
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    seen = watched(cache)
    asked = ["acme/tiny-base", "acme/Tiny-Base", "acme/tiny-base@nope", "acme/tiny-ft", "acme/never-cached"]
    results = []
    for choice in asked:  # as the sidebar and the Workspace page go: resolve, then read the headers of what is left
        for base, fts in ((choice, []), (str(places[0]), [choice])):
            ws, refused = uilogic.workspace_of(base, fts, [], "stored", "cpu", {}, {}, None)
            for path in [ws.base, *ws.paths] if ws.base else []:
                uilogic.checkpoint_where(path)
                with contextlib.suppress(SubnetvizError):
                    uilogic.checkpoint_info(path)
            results.append((choice, ws, refused))
    assert seen == []
    said = set()
    for choice, ws, refused in results:
        if ws.base is None:  # a refused base: nothing else is opened
            said.add(str(refused).replace(choice, "<id>", 1))
        else:
            assert refused is None and ws.finetuned == ()
            ((label, path, why),) = ws.left_out
            assert (label, path) == (choice, "")
            said.add(why.replace(choice, "<id>", 1))
    assert said == {
        "<id>: hub ids are read from the Hugging Face cache, which lies outside the folders this server may read "
        "(its owner adds it with SUBNETVIZ_ROOTS)."
    }


def test_hub_ids_still_open_when_the_cache_lies_under_the_roots(places, tmp_path, monkeypatch):
    from subnetviz import uilogic

    inside, _, _ = places
    cache = inside / "hub"
    build_hub(cache)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    ws, refused = uilogic.workspace_of("acme/tiny-base", ["acme/tiny-ft"], [], "stored", "cpu", {}, {}, None)
    assert refused is None and ws.left_out == () and (ws.base, ws.paths) == ("acme/tiny-base", ["acme/tiny-ft"])
    assert uilogic.checkpoint_where("acme/tiny-ft").startswith("acme/tiny-ft @ ")


# ---------------------------------------------------------------- 3. whether a path outside the roots exists
def test_a_relative_path_outside_the_roots_is_refused_alike_whether_it_exists_or_not(places):
    """``base=views/../../../etc/shadow`` read "outside the folders this server may read" and ``…/etc/nope`` "no
    such file or folder": a stranger learnt which server paths exist. Every spelling now reads the same."""
    _, _, outside = places
    pairs = [
        ("views/../../outside/secret.txt", "views/../../outside/nope.txt"),  # the report's spelling
        ("../outside/secret.txt", "../outside/nope.txt"),
        (str(outside / "secret.txt"), str(outside / "nope.txt")),
        ("outside/secret.txt", "outside/nope.txt"),  # shaped as a hub id: no path of that name under a root
        ("views/..", "nope/.."),  # no repository id (huggingface_hub refuses '..'): a path
    ]
    for there, not_there in pairs:
        assert (outside / "secret.txt").exists() and not (outside / "nope.txt").exists()
        first, second = _refusal(there), _refusal(not_there)  # "<the name as given or shortened>: <why>"
        assert first.split(": ", 1)[1] == second.split(": ", 1)[1], (first, second)
        assert "outside the folders this server may read" in first


def test_a_relative_path_under_a_root_is_a_path_and_a_missing_one_a_hub_id(places, monkeypatch):
    """What stays as it was, inside the roots: ``org/name`` is a folder where one is under a root, else a hub id."""
    from subnetviz.selection import resolve_choice

    inside, _, _ = places
    (inside / "acme" / "tiny").mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(inside / "hub"))  # the hub cache under the roots
    monkeypatch.chdir(inside)
    assert resolve_choice("acme/tiny", {}) == str(inside / "acme" / "tiny")
    assert resolve_choice("acme/other", {}) == "acme/other"


# ---------------------------------------------------------------- 5 and 7. one bad finetune of a link
def test_a_refused_finetune_is_left_out_named_once_and_the_others_are_kept(places):
    from subnetviz import uilogic

    inside, _, _ = places
    for name in ("base", "ft"):
        (inside / name).mkdir()
    members = {"base": str(inside / "base"), "ft": str(inside / "ft")}
    stale = "run 20250101-000000-train-gone00"
    ws, refused = uilogic.workspace_of("base", ["ft", stale], [], "stored", "cpu", members, {}, None)
    assert refused is None and ws.finetuned == (("ft", str(inside / "ft")),)
    ((label, path, why),) = ws.left_out
    assert (label, path) == (stale, "") and why.count(stale) == 1 and why.startswith(f"{stale}: ")


@pytest.mark.parametrize(
    ("label", "path", "message", "shown"),
    [
        ("acme/x", "acme/x", "acme/x: not in the local Hugging Face cache.", "acme/x: not in the local Hugging Face cache."),
        ("run a", "/h/runs/a/outputs/model", "/h/runs/a/outputs/model: no such file.", "/h/runs/a/outputs/model: no such file."),
        ("x", "/h/x", "config.json in zoo/x: not valid JSON.", "x: config.json in zoo/x: not valid JSON."),
        ("dpo", "/h/dpo", "dpo-2: something.", "dpo: dpo-2: something."),  # another name that begins alike
    ],
)  # fmt: skip
def test_a_checkpoint_s_error_names_it_once(label, path, message, shown):
    from subnetviz.uilogic import named

    assert named(label, path, PathNotAllowedError(message)) == shown
