"""Review "Home, Workspace and the shared sidebar", second pass, on the app (AppTest; the chips in Chromium).

Workspace drew 6 headline metrics for 12 finetunes and said nothing of the rest; a base that cannot be read (or is
refused) ended the page before the masks (uploader included) and the zoo manifest, which do not need it; a link with
100 stale finetunes put 32 error boxes above every page's title; a finetune repeating one chosen already was dropped
without a word; the sidebar's chips of typed paths all read "/tmp/review/works…"."""

from __future__ import annotations

import pytest
import torch

from tests.app_fixtures import open_page
from tests.browser import E2E
from tests.browser import open_page as open_browser_page
from tests.ckpt_fixtures import read_state_dict, write_folder
from tests.models import make_llama

pytestmark = pytest.mark.usefixtures("typed_options")

CHANGED = {f"ft{k}": k for k in range(1, 9)}  # finetune -> entries of lm_head changed (planted)


@pytest.fixture(scope="module")
def planted(app_env):
    """An fp32 Llama base in the app's home and 8 finetunes, ``ftK`` with K entries of ``lm_head.weight`` moved by
    0.5 (exact in fp32), a link to ft1, and a folder with no weights; (folder, parameters of the base)."""
    root = app_env / "workspace2"
    make_llama(root / "tmp")
    base = {k: v.to(torch.float32) for k, v in read_state_dict(root / "tmp").items()}
    write_folder(root / "base", base, root / "tmp", torch_dtype="float32")
    for name, k in CHANGED.items():
        sd = {n: v.clone() for n, v in base.items()}
        sd["lm_head.weight"].view(-1)[torch.arange(k) * 7] += 0.5
        write_folder(root / name, sd, root / "tmp", torch_dtype="float32")
    (root / "ft1_link").symlink_to(root / "ft1", target_is_directory=True)
    (root / "empty").mkdir()
    return root, sum(v.numel() for v in base.values())


def _text(element) -> str:
    """What a Markdown element reads as (ui.plain escapes punctuation and breaks autolinks)."""
    return element.value.replace("\\", "").replace("\u200b", "")


def _no_exception(at):
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_every_finetune_has_its_headline_number(planted):
    root, numel = planted
    at = _no_exception(open_page("workspace", base=str(root / "base"), ft=[str(root / n) for n in CHANGED]))
    assert not at.error, [e.value for e in at.error]
    helps = {m.label: m.help for m in at.metric}
    assert list(helps) == list(CHANGED)  # 8 metrics (it drew the first 6)
    for name, k in CHANGED.items():
        assert helps[name].startswith(f"{k} of {numel:,} parameters changed"), helps[name]


def _sections(at) -> list[str]:
    return [s.value for s in at.subheader]


def test_a_base_that_cannot_be_read_leaves_the_masks_and_the_manifest(planted):
    from subnetviz.selection import saved_masks

    root, _ = planted
    mask = next(iter(saved_masks()))  # a zoo mask, chosen in the sidebar
    at = _no_exception(open_page("workspace", base=str(root / "empty"), ft=[str(root / "ft1")], masks=[mask]))
    assert _sections(at) == ["Checkpoints", "Masks", "Demo zoo manifest"]  # (it stopped after Checkpoints)
    (said,) = [_text(e) for e in at.error]
    assert said.startswith(f"{root.parent.name}/workspace2/empty: no weights found") and said.endswith(
        "Choose another base in the sidebar."
    )
    assert len(at.get("file_uploader")) == 1
    assert list(at.session_state["_tables"]["masks"][1]["mask"]) == [mask]

    at = _no_exception(open_page("workspace", base="/etc", masks=[mask]))  # refused: said at the top
    assert _sections(at) == ["Checkpoints", "Masks", "Demo zoo manifest"] and len(at.get("file_uploader")) == 1
    assert [i.value for i in at.info] == ["Choose a base checkpoint in the sidebar."]
    assert list(at.session_state["_tables"]["masks"][1]["mask"]) == [mask]


def test_a_link_with_many_stale_finetunes_is_one_line(planted):
    root, numel = planted
    stale = [f"gone-run-{i}" for i in range(100)]
    at = _no_exception(open_page("workspace", base=str(root / "base"), ft=[str(root / "ft2"), *stale]))
    (said,) = [_text(e) for e in at.error]  # (32 boxes, the last "101 chosen … the first 32 are shown")
    assert said.startswith("100 finetunes left out (gone-run-0, gone-run-1, gone-run-2 and 97 more): no zoo member")
    assert [m.help.split(" parameters")[0] for m in at.metric] == [f"2 of {numel:,}"]


def test_a_repeated_finetune_is_said_and_a_typed_base_named(planted):
    root, _ = planted
    base, where = str(root / "base"), f"{root.parent.name}/workspace2"  # (paths are shown from their root)
    at = _no_exception(open_page("workspace", base=base, ft=[str(root / "ft1"), str(root / "ft1_link"), base]))
    assert [m.label for m in at.metric] == ["ft1"]
    said = [_text(c) for c in at.caption if "named already" in _text(c)]
    assert said == [
        f"Not compared again, named already: {where}/ft1_link (the same checkpoint as ft1), {where}/base (the base)."
    ]
    assert f"Base: base ({where}/base)" in [_text(c) for c in at.sidebar.caption]


# --- the chips in a browser --------------------------------------------------------------------------------------
CHIP_BOX = """(e) => {
    const text = e.firstChild, range = document.createRange(), box = e.getBoundingClientRect();
    range.setStart(text, 0); range.setEnd(text, 1);
    const first = range.getBoundingClientRect();
    range.setStart(text, text.length - 1); range.setEnd(text, text.length);
    const last = range.getBoundingClientRect();
    return {first: first.left - box.left, last: last.right - box.right, title: e.title, text: text.data};
}"""


@pytest.mark.e2e
@E2E[1]
def test_chips_of_typed_paths_show_their_ends(browser, app_url, app_home):
    """Each chip of a long typed path shows its end (the folder's name), its start cut; the title is the whole path."""
    from urllib.parse import urlencode

    folder = app_home / "a-long-folder-of-finetuned-checkpoints" / "seeds"
    paths = [str(folder / f"run-{s}") for s in ("alpha", "beta")]
    ctx, page = open_browser_page(browser, f"{app_url}/workspace?{urlencode([('ft', p) for p in paths])}")
    try:
        chips = page.get_by_test_id("stSidebar").locator(".st-key-ft [data-tag] > span[title]")
        assert chips.count() == 2
        for chip, path in zip(chips.all(), paths, strict=True):
            got = chip.evaluate(CHIP_BOX)
            assert got["title"] == got["text"] == path
            assert got["first"] < 0 and got["last"] <= 0.5, got  # the start cut, the last letter inside the chip
    finally:
        ctx.close()
