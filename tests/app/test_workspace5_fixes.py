"""Fixes of the fifth Workspace and uploads review, on the app (AppTest) and the library.

1. An upload named ``.hidden.safetensors`` was stored as ``.hidden-<hash>.safetensors``: a dot file, which the
   saved-mask listing and the uploads' count both skip (taken for a writer's temporary). It was never listed, and
   uploads named so were not counted against SUBNETVIZ_UPLOADS_GB. Its stored name now loses its leading dots, and one
   stored so by an older version is counted.
2. A link naming a saved mask this server does not have (removed since, or never here) dropped it without a word;
   Overlap then said "Pick at least two masks." One line now names the entries left out.
3. A base and a finetune in folders of one name (``llama/final``, ``rl/final``) were both "final" on every page; the
   finetune is now ``final-2``, on every page and in a link.
4. ``GOOD.SAFETENSORS`` and ``BF16.PT`` passed the browser's filter (which ignores case) and were then refused as of
   no accepted format; they are taken as the CLI's ``mask import`` takes them.
"""

from __future__ import annotations

import io
import pickle
import shutil

import numpy as np
import pytest
import torch

from subnetviz import selection
from subnetviz.errors import MaskError
from subnetviz.masks import load_mask_set
from subnetviz.selection import uploads_dir
from tests.app_fixtures import home_of_its_own, open_page, plotly_specs
from tests.integration.test_regressions4_uploads import home  # noqa: F401 - a fresh home, the only root

pytestmark = pytest.mark.usefixtures("typed_options")


def _text(shown: str) -> str:
    """An element's text as the visitor reads it (ui.plain escapes punctuation and breaks autolinks)."""
    return str(shown).replace("\\", "").replace("\u200b", "")


def _errors(at) -> list[str]:
    assert not at.exception, [e.message for e in at.exception]
    return [_text(e.value) for e in at.error]


def _npz(seed: int, shape=(6, 6)) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, w=np.random.default_rng(seed).random(shape) < 0.5)
    return buf.getvalue()


@pytest.fixture
def uploads_let_in(monkeypatch):
    """AppTest's stand-in runtime has no session manager, which the guard of Streamlit's upload endpoint asks for the
    session's role (``ui.upload_refusal``, tested on its own): here every file set on the uploader is let in."""
    from subnetviz import ui

    monkeypatch.setattr(ui, "upload_refusal", lambda *args, **kwargs: None)


def _upload(at, name: str, data: bytes):
    at.file_uploader(key="mask_upload").set_value((name, data, "application/octet-stream"))
    return at.run()


# ---------------------------------------------------------------- 1. an upload named with a leading dot
def test_an_upload_named_with_a_leading_dot_is_stored_listed_and_counted(micro_zoo, tmp_path_factory, uploads_let_in):
    data = open(micro_zoo.mask_path(), "rb").read()  # a valid mask (the zoo's grpo-seed0)
    with home_of_its_own(micro_zoo, tmp_path_factory, "workspace5-dot-uploads"):
        at = open_page("workspace")
        said = {}
        for name in (".hidden.safetensors", ".safetensors", "...dots.npz"):
            _upload(at, name, data if name.endswith(".safetensors") else _npz(1))
            assert not at.exception and not at.main.error, [e.value for e in at.main.error]
            said[name] = [_text(s.value) for s in at.success]
        stored = sorted(p.name for p in uploads_dir().iterdir())
        assert [n.rsplit("-", 1)[0] for n in stored] == ["dots", "hidden", "mask"], stored  # no dot file
        assert said[".hidden.safetensors"][0].startswith("Stored as hidden-"), said
        assert said[".safetensors"][0].startswith("Stored as mask-"), said
        (listed,) = [m for m in at.multiselect if m.label == "Saved masks"]
        assert {f"uploads/{n.removesuffix('.safetensors')}" for n in stored} <= set(listed.options), listed.options
        assert selection.uploads_bytes() == sum((uploads_dir() / n).stat().st_size for n in stored)


def test_an_upload_stored_under_a_dot_name_by_an_older_version_counts_against_the_limit(home, monkeypatch):  # noqa: F811
    """One such file fills a limit the size of one upload: the next upload is refused, not stored beside it."""
    old = selection.save_upload("m0.npz", _npz(0))
    hidden = old.with_name("." + old.name)  # as an older version stored ``.m0.npz``
    old.rename(hidden)
    assert selection.uploads_bytes() == hidden.stat().st_size
    monkeypatch.setenv("SUBNETVIZ_UPLOADS_GB", str(hidden.stat().st_size / 2**30))
    with pytest.raises(MaskError, match=r"^m1\.npz: not stored: the uploaded masks on this server take"):
        selection.save_upload("m1.npz", _npz(1))
    assert sorted(p.name for p in uploads_dir().iterdir()) == [hidden.name]


# ---------------------------------------------------------------- 2. a link naming masks this server lacks
GONE = "uploads/gone-0007da0a45b1a59d0ac2b2ed2b96b0c2"
EVIL = "[EVIL](javascript:alert(1)) **B** :red[R]"


def test_a_link_naming_saved_masks_this_server_lacks_says_so_in_one_line(app_env):
    kept = "masks/grpo-seed0"
    at = open_page("overlap", masks=[kept, GONE, EVIL], ov_masks=[kept, GONE])
    lines = [e for e in _errors(at) if "saved mask" in e]
    assert lines == [
        f"2 saved masks of the link left out ({GONE}, {EVIL}): no saved masks of those names on this server "
        "(removed since the link was made?)."
    ], _errors(at)
    (raw,) = [e.value for e in at.error if "saved mask" in _text(e.value)]
    assert r"\[EVIL\]\(javascript" in raw and r"\*\*B\*\*" in raw  # (shown as text: no link, no bold)
    ws = at.session_state["_workspace"]
    assert [label for label, _ in ws.masks] == [kept]  # the page goes on with the masks it has
    # said while the list holds what the link gave it (the page's later runs), gone once the visitor changes it
    at.run()
    assert any(GONE in e for e in _errors(at))
    at.multiselect(key="masks").set_value([]).run()
    assert not [e for e in _errors(at) if "saved mask" in e]


def test_one_saved_mask_this_server_lacks_is_named_on_workspace(app_env):
    at = open_page("workspace", masks=[GONE])
    assert [e for e in _errors(at) if "saved mask" in e] == [
        f"{GONE}: no saved mask of that name on this server (removed since the link was made?); left out."
    ]
    assert not open_page("workspace", masks=["masks/grpo-seed0"]).error  # (a link whose masks are here: nothing)


# ---------------------------------------------------------------- 3. a finetune in a folder named as the base's
@pytest.fixture(scope="module")
def same_names(app_env, micro_zoo):
    """``llama/final`` (the zoo's base) and ``rl/final`` (grpo-s0, a finetune of it) under the app's home."""
    root = app_env / "workspace5"
    shutil.copytree(micro_zoo.member_path("base"), root / "llama" / "final", dirs_exist_ok=True)
    shutil.copytree(micro_zoo.member_path("grpo-s0"), root / "rl" / "final", dirs_exist_ok=True)
    return {"base": str(root / "llama" / "final"), "ft": [str(root / "rl" / "final"), "dpo"]}


@pytest.mark.parametrize("page", ["workspace", "series", "behavior", "overlap"])
def test_a_finetune_named_as_the_base_gets_a_label_of_its_own_on_every_page(same_names, page):
    from views.series import WORKSPACE_ORDER

    query = dict(same_names, series_src=WORKSPACE_ORDER) if page == "series" else same_names
    at = open_page(page, **query)
    assert _errors(at) == []
    ws = at.session_state["_workspace"]
    assert (ws.base_label, ws.labels) == ("final", ["final-2", "dpo"])
    tables = at.session_state["_tables"]
    if page == "workspace":
        assert list(tables["checkpoints"][1]["label"]) == ["final", "final-2", "dpo"]
        assert list(tables["masks"][1]["mask"]) == ["update mask of final-2", "update mask of dpo"]
    elif page == "series":
        ticks = [s["layout"]["xaxis"].get("ticktext") for s in plotly_specs(at) if "xaxis" in s["layout"]]
        assert ["final", "final-2", "dpo"] in [list(t) for t in ticks if t], ticks
    elif page == "behavior":
        assert set(tables["behavior-summary"][1]["model"]) == {"final-2", "dpo"}
    else:
        assert {"Δ final-2", "Δ dpo"} <= set(at.multiselect(key="ov_masks").options)


def test_a_link_naming_the_finetune_by_its_new_label_opens_as_it_was(same_names):
    """Overlap's chosen masks are in the link by label: ``Δ final-2`` is chosen again when the link is opened."""
    chosen = ["Δ final-2", "masks/grpo-seed0"]
    at = open_page("overlap", **same_names, masks=["masks/grpo-seed0"], ov_masks=chosen)
    assert _errors(at) == []
    assert at.multiselect(key="ov_masks").value == chosen
    assert at.query_params["ov_masks"] == chosen
    again = open_page("overlap", **{k: v for k, v in at.query_params.items()})
    assert _errors(again) == [] and again.multiselect(key="ov_masks").value == chosen
    assert len(plotly_specs(again)) > 0


# ---------------------------------------------------------------- 4. upper-case suffixes
def test_upper_case_suffixes_are_taken_as_the_cli_takes_them(home):  # noqa: F811
    planted = np.random.default_rng(3).random((6, 6)) < 0.5
    buf = io.BytesIO()
    torch.save({"w": torch.from_numpy(planted).to(torch.bfloat16)}, buf)  # a bf16 0/1 torch.save file
    files = {
        "BF16.PT": buf.getvalue(),
        "GOOD.NPZ": _npz(3),
        "OLD.PKL": pickle.dumps({"w": planted}, protocol=0),  # no PROTO opcode: told a pickle by its name alone
    }
    for name, data in files.items():
        path = selection.save_upload(name, data)
        assert path.name.startswith(name.split(".")[0] + "-"), path
        got = load_mask_set(path).masks["w"]
        assert np.array_equal(np.asarray(got), planted), name


def test_the_cli_s_import_tells_an_upper_case_pickle_by_its_name(home):  # noqa: F811
    """``mask import OLD.PKL``: a pickle of protocol 0 or 1 has no PROTO opcode, and only its name says pickle."""
    from subnetviz.masks import import_mask

    planted = np.random.default_rng(5).random((6, 6)) < 0.5
    path = home / "OLD.PKL"
    path.write_bytes(pickle.dumps({"w": planted}, protocol=1))
    assert np.array_equal(np.asarray(import_mask(path).masks["w"]), planted)


def test_an_upper_case_safetensors_upload_is_stored_on_workspace(micro_zoo, tmp_path_factory, uploads_let_in):
    data = open(micro_zoo.mask_path(), "rb").read()
    with home_of_its_own(micro_zoo, tmp_path_factory, "workspace5-upper-case"):
        at = _upload(open_page("workspace"), "GOOD.SAFETENSORS", data)
        assert not at.exception and not at.main.error, [e.value for e in at.main.error]
        assert [_text(s.value) for s in at.success][0].startswith("Stored as GOOD-")
        (listed,) = [m for m in at.multiselect if m.label == "Saved masks"]
        assert [o for o in listed.options if o.startswith("uploads/GOOD-")]
