"""Review "Home, Workspace and the shared sidebar", second pass, without a browser: the 32-finetune cap counts
distinct checkpoints after repeated entries are merged (33 entries naming 32 compared 31 and said "the first 32 are
shown"); refused entries are said in a line per reason, not a box each; an entry naming a checkpoint already chosen
is listed, not dropped unsaid; a typed base is named under its box; a .pt / .pth / .npz that is no mask is refused
in the words of its format (it was "not a readable safetensors mask file")."""

from __future__ import annotations

import os

import pytest

from subnetviz.errors import MaskError


def _choice(base, fts, members=None):
    from subnetviz.uilogic import sidebar_choice

    return sidebar_choice(base, fts, [], "stored", "auto", members or {}, {}, None)


def _workspace(base, fts):
    """(workspace, refused) as the sidebar had them before the review (``workspace_of``, kept for its callers)."""
    from subnetviz.uilogic import workspace_of

    return workspace_of(base, fts, [], "stored", "auto", {}, {}, None)


def test_the_cap_counts_distinct_checkpoints_after_repeats_are_merged(tmp_path, monkeypatch):
    from subnetviz.uilogic import MAX_FINETUNED

    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    folders = [tmp_path / f"ft{i:02d}" for i in range(MAX_FINETUNED)]
    for f in folders:
        f.mkdir()
    (tmp_path / "base").mkdir()
    (tmp_path / "ft03_again").symlink_to(folders[3], target_is_directory=True)
    entries = [str(f) for f in folders[:10]] + [str(tmp_path / "ft03_again")] + [str(f) for f in folders[10:]]
    assert len(entries) == MAX_FINETUNED + 1 and len({os.path.realpath(e) for e in entries}) == MAX_FINETUNED
    ws, refused = _workspace(str(tmp_path / "base"), entries)
    assert refused is None  # 32 distinct checkpoints fit under the cap of 32: nothing is cut
    assert [os.path.realpath(p) for p in ws.paths] == [os.path.realpath(f) for f in folders]  # the 32nd included
    assert _choice(str(tmp_path / "base"), entries).repeated == (
        (f"{tmp_path.name}/ft03_again", "the same checkpoint as ft03"),
    )

    # over the cap: the count and the number left out are those of distinct checkpoints, the base and a repeat apart
    more = [tmp_path / f"more{i}" for i in range(8)]
    for f in more:
        f.mkdir()
    entries += [str(f) for f in more] + [str(tmp_path / "base"), str(folders[0]) + "/"]
    ws, refused = _workspace(str(tmp_path / "base"), entries)
    assert str(refused).startswith(f"{MAX_FINETUNED + 8} finetuned checkpoints chosen; a view compares at most 32")
    assert "the first 32 are compared and the other 8 left out (more0, more1, more2 and 5 more)" in str(refused)
    assert len(ws.finetuned) == MAX_FINETUNED
    assert {what for _, what in _choice(str(tmp_path / "base"), entries).repeated} == {
        "the same checkpoint as ft03",
        "the base",
        "the same checkpoint as ft00",
    }


def test_entries_past_those_looked_at_are_counted_and_refused_ones_take_no_place(tmp_path, monkeypatch):
    """A link with one good finetune and 100 stale ones compares the good one with no cap line (it said "101 chosen …
    the first 32 are shown" while 1 was); past MAX_EXAMINED entries the rest are left out unread, and said so."""
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    (tmp_path / "good").mkdir()
    ws, refused = _workspace(str(tmp_path / "base"), [str(tmp_path / "good")] + [f"gone-run-{i}" for i in range(100)])
    assert refused is None and ws.labels == ["good"] and len(ws.left_out) == 100

    from subnetviz.uilogic import MAX_EXAMINED

    entries = [str(tmp_path / "good")] + [f"gone-run-{i}" for i in range(MAX_EXAMINED + 40)]
    chosen = _choice(str(tmp_path / "base"), entries)
    assert chosen.workspace.labels == ["good"] and len(chosen.workspace.left_out) == MAX_EXAMINED - 1
    assert str(chosen.refused) == (
        f"{MAX_EXAMINED + 41:,} finetuned checkpoints chosen; a view looks at the first {MAX_EXAMINED} and compares at "
        "most 32: 1 compared, 41 left out (gone-run-255, gone-run-256, gone-run-257 and 38 more)."
    )


def test_many_left_out_finetunes_are_a_few_lines():
    """100 stale entries of one reason are one line naming how many, three of them and the reason once; past three
    reasons the rest are one line; a single one keeps its own words."""
    from subnetviz.uilogic import left_out_lines

    stale = [
        (f"gone-{i}", "", f"gone-{i}: no zoo member, finished run or hub id of that name here.") for i in range(100)
    ]
    lines = left_out_lines(stale)
    assert lines == ["100 finetunes left out (gone-0, gone-1, gone-2 and 97 more): no zoo member, finished run or hub "
                     "id of that name here."]  # fmt: skip
    odd = [(f"x{i}", f"/m/x{i}", f"x{i}: reason number {i}.") for i in range(5)]
    lines = left_out_lines(stale[:2] + odd + [("y", "/m/y", "y: read error.")])
    assert len(lines) == 4 and lines[0].startswith("2 finetunes left out (gone-0, gone-1): no zoo member")
    assert lines[1:3] == ["x0: reason number 0.", "x1: reason number 1."]
    assert lines[3].startswith("4 more finetunes left out for other reasons (x2, x3, x4 and 1 more); the first: x2: ")
    assert left_out_lines(odd[:4]) == [why for *_, why in odd[:4]]  # four reasons: each its own line


def test_a_repeated_entry_is_said_in_one_line(tmp_path, monkeypatch):
    from subnetviz.uilogic import repeated_line

    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    for d in ("base", "ftA"):
        (tmp_path / d).mkdir()
    (tmp_path / "ftA_link").symlink_to(tmp_path / "ftA", target_is_directory=True)
    base, ft = str(tmp_path / "base"), str(tmp_path / "ftA")
    chosen = _choice(base, [ft, str(tmp_path / "ftA_link"), base, ft])
    assert chosen.refused is None and chosen.workspace.labels == ["ftA"]
    root = tmp_path.name
    assert repeated_line(chosen.repeated) == (
        f"Not compared again, named already: {root}/ftA_link (the same checkpoint as ftA), {root}/base (the base), "
        f"{root}/ftA (listed twice)."
    )
    assert repeated_line(_choice(base, [ft]).repeated) is None


def test_a_typed_base_is_named_under_its_box(tmp_path, monkeypatch):
    from subnetviz.uilogic import typed_base_caption

    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    (tmp_path / "runs" / "base-7b").mkdir(parents=True)
    assert typed_base_caption(str(tmp_path / "runs" / "base-7b"), {}) == f"Base: base-7b ({tmp_path.name}/runs/base-7b)"
    assert typed_base_caption("base", {"base": str(tmp_path)}) is None  # a zoo id: shown whole in the box
    assert typed_base_caption("acme/tiny-base", {}) is None and typed_base_caption(None, {}) is None


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("weights.pt", b"hello, this is not a mask\n", "not a torch.save file (it is no zip archive)"),
        ("mask.pth", b"\x00" * 64, "not a torch.save file (it is no zip archive)"),
        ("m.npz", b"garbage!" * 4, "not a NumPy .npz file (it is no zip archive)"),
        ("empty.pt", b"", "not a torch.save file (it is empty)"),
    ],
)
def test_a_file_that_is_no_mask_is_refused_in_the_words_of_its_format(tmp_path, monkeypatch, name, data, words):
    from subnetviz.selection import save_upload

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path))
    with pytest.raises(MaskError) as exc:
        save_upload(name, data)
    text = str(exc.value)
    assert text == f"{name}: {words}, nor a safetensors or pickle mask." and "deserializing" not in text


def test_a_safetensors_name_keeps_the_safetensors_words(tmp_path, monkeypatch):
    from subnetviz.selection import save_upload

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path))
    with pytest.raises(MaskError, match=r"^broken\.safetensors: not a readable safetensors mask file"):
        save_upload("broken.safetensors", b"hello, this is not a mask\n")
