"""Overlap and Spectra, ninth review (ovsp9), on the micro zoo (AppTest).

1. Spectra's K and side (Subspaces tab) and its view (Spectra of Δ tab) were bound to the URL, so their entries left
   it once their tab closed: a link copied on the other tab opened K = 16, left and the singular values, while the
   sender's page and export kept K = 8, right and the rank view. They are now read and written by hand, whichever
   tab is open.
2. Overlap: a link's criterion, masks, view, tab and pair that are not on offer here fell back to the defaults
   without a word (another comparison than the sender's). Each is now said in one line, with what is shown instead.
3. Spectra: the same for its models, layer, module, view, tab, K, model and side.
4. Spectra's rank view said "14 of 14 layer matrices are full-rank" and named nothing below full rank, while the
   embedding's update is below full rank. Its "Below full rank" list now covers every decomposed matrix, each named
   as the table names it, with its rank; the count says which matrices it counts.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.app.test_behser7_fixes_app import _all, _ok, _warnings
from tests.app_fixtures import open_page

pytestmark = pytest.mark.slow

FT = ["grpo-s0", "grpo-s1", "dpo"]
DELTA, SUB = "Spectra of Δ", "Subspaces of W_base vs W_ft"
RANK = "Effective and stable rank"


@pytest.fixture(scope="module", autouse=True)
def _env(app_env):
    return app_env


def _open(page: str, **query):
    return _ok(open_page(page, ft=FT, **query))


def _click_tab(at, tab: str):
    """A click on one of Spectra's tabs: the tab opens and the browser writes it into the URL (left out for the
    first), as it does for the bound tabs."""
    at.session_state["spec_tab"] = tab
    if tab == DELTA:
        at.query_params.pop("spec_tab", None)
    else:
        at.query_params["spec_tab"] = tab
    return _ok(at.run())


def _link_lines(at) -> list[str]:
    return [w for w in _warnings(at) if w.startswith("The link's")]


# ---------------------------------------------------------------- 1. the URL keeps every tab's choice


def test_k_side_and_view_stay_in_the_url_whichever_tab_is_open():
    """AppTest writes no pick of a bound control into the URL (the browser does, and dropped it as its tab closed):
    the picks below reach the URL only as the page writes them by hand."""
    at = _open("spectra", spec_tab=SUB, sub_k="4")
    _ok(at.selectbox(key="sub_k").set_value(8).run())
    _ok(at.radio(key="sub_side").set_value("right").run())
    _ok(at.selectbox(key="sub_model").set_value("dpo").run())
    _click_tab(at, DELTA)
    assert {k: _all(at, k) for k in ("sub_k", "sub_side", "sub_model")} == {
        "sub_k": ["8"],
        "sub_side": ["right"],
        "sub_model": ["dpo"],
    }, "kept with the Δ tab open"
    _ok(at.button_group(key="spec_view").set_value(RANK).run())
    assert _all(at, "spec_view") == [RANK]
    _click_tab(at, SUB)
    assert _all(at, "spec_view") == [RANK], "kept with the Subspaces tab open"
    assert _all(at, "sub_k") == ["8"] and _all(at, "sub_side") == ["right"]
    seen = (at.selectbox(key="sub_k").value, at.radio(key="sub_side").value, at.selectbox(key="sub_model").value)
    assert seen == (8, "right", "dpo")  # the sender's page, as its link opens it
    # a colleague opening the link made now: the same K, side and model, then the same view
    shared = {k: v for k, v in at.query_params.items() if k != "ft"}
    again = _open("spectra", **shared)
    assert (again.selectbox(key="sub_k").value, again.radio(key="sub_side").value) == (8, "right")
    assert again.selectbox(key="sub_model").value == "dpo"
    _click_tab(again, DELTA)
    assert again.button_group(key="spec_view").value == RANK
    assert not _link_lines(again), _link_lines(again)
    # the default again: left out of the URL, as a bound control leaves it
    _ok(again.button_group(key="spec_view").set_value("Singular values").run())
    assert "spec_view" not in again.query_params and _all(again, "sub_k") == ["8"]


# ---------------------------------------------------------------- 2, 3. a link's entries not on offer are said


STALE = {
    "spectra, every entry": (
        "spectra",
        {
            "spec_tab": "bogus",
            "sub_k": "128",
            "sub_model": "grpo-B",
            "sub_side": "both",
            "spec_view": "Rank",
            "spec_models": "grpo-B",
            "spec_layer": "7",
            "spec_module": "qkv",
        },
        [
            "The link's K 128 is not among the Subspaces tab's K values (4, 8, 16, 32, 64); 16 is shown instead.",
            "The link's model grpo-B is not among the finetunes in the sidebar; grpo-s0 is shown instead.",
            "The link's side both is not among the Subspaces tab's sides (left, right); left is shown instead.",
            "The link's view Rank is not among the Spectra of Δ tab's views; Singular values is shown instead.",
            "The link's tab bogus is not among this page's tabs; Spectra of Δ is shown instead.",
            "The link's model grpo-B is not among the models compared here; grpo-s0 is shown instead.",
            "The link's layer 7 is not among the layers of the models compared here; layer 0 is shown instead.",
            "The link's module qkv is not among the modules of layer 0; every module is shown instead.",
        ],
    ),
    "spectra, some models and a module": (
        "spectra",
        {"spec_models": ["grpo-B", "dpo"], "spec_layer": "1", "spec_module": "qkv"},
        [
            "The link's model grpo-B is not among the models compared here; it is left out.",
            "The link's module qkv is not among the modules of layer 1; every module is shown instead.",
        ],
    ),
    "spectra, the Subspaces tab": (
        "spectra",
        {"spec_tab": SUB, "sub_k": "1e309", "sub_side": "Right"},
        [
            "The link's K 1e309 is not among the Subspaces tab's K values (4, 8, 16, 32, 64); 16 is shown instead.",
            "The link's side Right is not among the Subspaces tab's sides (left, right); left is shown instead.",
        ],
    ),
    "overlap, every entry": (
        "overlap",
        {
            "ov_crit": "1e-5",
            "ov_masks": ["Δ dpo", "Δ grpo-s1", "Δ grpo-B"],
            "ov_view": "ratio",  # (the URL names it as the radio does: "× per-tensor chance")
            "ov_tab": "Per layer",
            "ov_pair": "Δ grpo-B ∩ Δ dpo",
        },
        [
            "The link's criterion 1e-5 is not among the criteria on offer (exact, 1e-08, 1e-07, 1e-06, 1e-05, "
            "0.0001); exact is shown instead.",
            "The link's mask Δ grpo-B is not among the masks on offer here; it is left out.",
            "The link's view ratio is not among this page's views (values, × per-tensor chance); values is shown "
            "instead.",
            "The link's pair Δ grpo-B ∩ Δ dpo is not among the pairs of the masks chosen; Δ dpo ∩ Δ grpo-s1 is "
            "shown instead.",
        ],
    ),
    "overlap, no mask on offer, a tab, a pair with its tab closed": (
        "overlap",
        {"ov_masks": ["gone", "older"], "ov_tab": "Nope", "ov_pair": "gone ∩ older"},
        [
            "The link's masks gone, older are not among the masks on offer here; Δ grpo-s0, Δ grpo-s1, Δ dpo are "
            "shown instead.",
            "The link's pair gone ∩ older is not among the pairs of the masks chosen; Δ grpo-s0 ∩ Δ grpo-s1 is shown "
            "instead.",
            "The link's tab Nope is not among this page's tabs; Sets is shown instead.",
        ],
    ),
}


@pytest.mark.parametrize("case", STALE)
def test_each_entry_not_on_offer_is_said_with_what_is_shown(case):
    page, query, lines = STALE[case]
    at = _open(page, **query)
    assert _link_lines(at) == lines


def test_what_the_overlap_lines_name_is_what_is_shown():
    at = _open("overlap", **STALE["overlap, every entry"][1])
    assert at.selectbox(key="ov_crit").value == "exact"
    assert at.multiselect(key="ov_masks").value == ["Δ dpo", "Δ grpo-s1"]
    assert at.radio(key="ov_view").value == "value"
    assert at.selectbox(key="ov_pair").value == "Δ dpo ∩ Δ grpo-s1"
    assert "ov_pair" not in at.query_params and _all(at, "ov_masks") == ["Δ dpo", "Δ grpo-s1"]


@pytest.mark.parametrize(
    ("page", "query"),
    [
        (
            "spectra",
            {
                "sub_k": "8",
                "sub_model": "dpo",
                "sub_side": "right",
                "spec_view": RANK,
                "spec_models": ["grpo-s1", "dpo"],
            },
        ),
        ("spectra", {"spec_tab": SUB, "sub_k": "4", "spec_layer": "1", "spec_module": "q"}),
        ("spectra", {"spec_tab": "", "sub_k": "", "sub_side": "", "spec_view": "", "spec_layer": ""}),  # empty
        (
            "overlap",
            {
                "ov_crit": "1e-05",
                "ov_masks": ["Δ dpo", "Δ grpo-s1"],
                "ov_view": "× per-tensor chance",
                "ov_tab": "Per layer",
                "ov_pair": "Δ dpo ∩ Δ grpo-s1",
            },
        ),
        ("overlap", {"ov_crit": "", "ov_view": "", "ov_tab": "", "ov_pair": ""}),  # empty: nothing named
    ],
    ids=["spectra Δ", "spectra Subspaces", "spectra empty", "overlap", "overlap empty"],
)
def test_a_link_on_offer_says_nothing(page, query):
    at = _open(page, **query)
    assert not _link_lines(at), _link_lines(at)
    if page == "overlap" and query["ov_pair"]:
        assert at.radio(key="ov_view").value == "ratio" and at.selectbox(key="ov_pair").value == query["ov_pair"]


def test_a_line_is_said_until_another_choice_is_picked():
    said = "The link's criterion 1e-5"
    at = _open("overlap", ov_crit="1e-5")
    assert [w for w in _link_lines(at) if w.startswith(said)]
    _ok(at.run())  # a rerun: the picker still shows what the line names
    assert [w for w in _link_lines(at) if w.startswith(said)]
    _ok(at.selectbox(key="ov_crit").set_value("1e-05").run())
    assert not _link_lines(at), _link_lines(at)

    at = _open("spectra", spec_view="Rank", spec_layer="7")
    assert len(_link_lines(at)) == 2
    _ok(at.run())
    assert len(_link_lines(at)) == 2
    _ok(at.button_group(key="spec_view").set_value(RANK).run())
    assert _link_lines(at) == [
        "The link's layer 7 is not among the layers of the models compared here; layer 0 is shown instead."
    ]
    _ok(at.button_group(key="spec_view").set_value("Singular values").run())  # (the layer picker at work again)
    assert len(_link_lines(at)) == 1
    _ok(at.selectbox(key="spec_layer").set_value("1").run())
    assert not _link_lines(at), _link_lines(at)


# ---------------------------------------------------------------- 4. below full rank: every decomposed matrix


def _ranks(model: str) -> dict[str, tuple[int, int]]:
    """name (as the page's table names it) -> (rank, min(m, n)) of every 2-D update of ``model`` over the zoo's
    base: float64 NumPy from the stored bf16 bits, at the page's threshold σ₁·max(m, n)·ε_fp32."""
    from subnetviz.demo.build import load_zoo
    from tests.zoo_fixtures import read_bits

    def f64(bits):  # bf16 bit patterns -> float64, exactly
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)

    members = {m.id: m.path for m in load_zoo().members}
    base, ft = read_bits(members["base"]), read_bits(members[model])
    out = {}
    for name, bits in base.items():
        if bits.ndim != 2:
            continue
        delta = f64(ft[name]) - f64(bits)
        top = np.linalg.norm(delta, 2)
        rank = np.linalg.matrix_rank(delta, tol=top * max(delta.shape) * np.finfo(np.float32).eps) if top else 0
        out[name.removeprefix("model.")] = (int(rank), min(delta.shape))
    return out


def test_the_rank_view_names_every_matrix_below_full_rank_with_its_rank():
    ranks = _ranks("grpo-s0")
    below = {n: r for n, r in ranks.items() if 0 < r[0] < r[1]}
    assert "embed_tokens.weight" in below  # (the planted case: the zoo's embedding update is below full rank)
    at = _open("spectra", spec_models="grpo-s0", spec_view=RANK)
    (said,) = [c.value.replace("\\", "") for c in at.caption if c.value.startswith("Numerical rank")]
    layer = {n: r for n, r in ranks.items() if n.startswith("layers.")}
    other = {n: r for n, r in ranks.items() if n not in layer}
    full = [sum(1 for r in group.values() if r[0] == r[1]) for group in (layer, other)]
    assert said.startswith(
        f"Numerical rank: {full[0]} of {len(layer)} layer matrices and {full[1]} of {len(other)} matrices outside "
        "the layers (in the table only) are full-rank"
    ), said
    assert len(below) <= 6  # (each named)
    for name, (rank, most) in below.items():
        assert f"grpo-s0 · {name} (rank {rank} of {most})" in said, (name, said)
    assert said.count(" · ") == len(below)
