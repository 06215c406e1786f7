"""Update sparsity, Training runs and What drives sparsity, ninth link review (links9), on the micro zoo (AppTest).

A shared link's entry naming nothing on offer on this server fell back to the default without a word on these pages
(other numbers than the sender's): Update sparsity's models, criterion, η, average (dropped from the URL where every
layer × module cell holds one tensor), tab, and One matrix's model and matrix; Training's view, smoothing, models
compared, accuracy toggle and held-out set; What drives sparsity's tab. Each is now said in one warning line naming
the entry and what is shown instead, as on the Overlap and Spectra pages; a valid or an empty entry says nothing, and
the line goes once another choice is picked. The expected lines are written out by hand.
"""

from __future__ import annotations

import pandas as pd
import pytest

from tests.app.test_app_sparsity_review import _page, ck  # noqa: F401 (a fixture: planted checkpoints)
from tests.app.test_behser7_fixes_app import _ok, _warnings
from tests.app.test_drivers3_fixes_app import BASE as GRID_ROW
from tests.app.test_training8_fixes_app import _rows
from tests.app_fixtures import open_page

pytestmark = pytest.mark.slow

FT = ["grpo-s0", "grpo-s1", "dpo"]
CRITERIA = "exact, 1e-08, 1e-07, 1e-06, 1e-05, 0.0001, relative"
ETAS = "0.0001, 0.001, 0.002, 0.004, 0.008, 0.01, 0.02, 0.05, 0.1"
Q0 = "layers.0.self_attn.q_proj.weight"  # One matrix's first matrix: the first query projection
VIEWS = "Launch, Runs, Subnetwork vs full"


@pytest.fixture(scope="module", autouse=True)
def _env(app_env):
    return app_env


def _link_lines(at) -> list[str]:
    return [w for w in _warnings(at) if w.startswith("The link's")]


def _sparsity(**query):
    return _ok(open_page("sparsity", ft=FT, **query))


# ---------------------------------------------------------------- Update sparsity

SPARSITY = {
    "a model gone, one kept": (
        {"sp_models": ["gone", "grpo-s1"]},
        ["The link's model gone is not among the models compared here; it is left out."],
        {"sp_models": ["grpo-s1"]},
    ),
    "no model on offer": (
        {"sp_models": ["gone", "older"]},
        [
            "The link's models gone, older are not among the models compared here; grpo-s0, grpo-s1, dpo are shown "
            "instead."
        ],
        {"sp_models": ["grpo-s0", "grpo-s1", "dpo"]},
    ),
    "criterion": (
        {"sp_crit": "1e-5"},
        [f"The link's criterion 1e-5 is not among the criteria on offer ({CRITERIA}); exact is shown instead."],
        {"sp_crit": "exact"},
    ),
    "η": (
        {"sp_crit": "relative", "sp_eta": "0.3"},
        [f"The link's η 0.3 is not among the η on offer ({ETAS}); 0.001 is shown instead."],
        {"sp_crit": "relative", "sp_eta": "0.001"},
    ),
    "an average this workspace cannot show": (
        {"sp_avg": "per-tensor mean"},
        [
            "The link's average per-tensor mean is not among the averages this workspace can show "
            "(parameter-weighted only, as each layer × module cell holds one tensor); parameter-weighted is shown instead."
        ],
        {"sp_avg_one": "parameter-weighted"},
    ),
    "an average of no kind": (
        {"sp_avg": "median"},
        [
            "The link's average median is not among the averages this workspace can show "
            "(parameter-weighted only, as each layer × module cell holds one tensor); parameter-weighted is shown instead."
        ],
        {"sp_avg_one": "parameter-weighted"},
    ),
    "tab": (
        {"sp_tab": "Nope"},
        ["The link's tab Nope is not among this page's tabs; Layers × modules is shown instead."],
        {},
    ),
    "One matrix's model and matrix": (
        {"sp_tab": "One matrix", "dd_model": "gone", "dd_tensor": "layers.9.nope.weight"},
        [
            "The link's model gone is not among the models compared here; grpo-s0 is shown instead.",
            f"The link's matrix layers.9.nope.weight is not among the matrices of grpo-s0; {Q0} is shown instead.",
        ],
        {"dd_model": "grpo-s0", "dd_tensor": Q0},
    ),
    "One matrix's matrix of another model": (
        {"sp_tab": "One matrix", "dd_model": "dpo", "dd_tensor": "model.layers.0.self_attn.q_proj.weight"},
        [
            "The link's matrix model.layers.0.self_attn.q_proj.weight is not among the matrices of dpo; "
            f"{Q0} is shown instead."
        ],
        {"dd_model": "dpo", "dd_tensor": Q0},
    ),
}


@pytest.mark.parametrize("case", SPARSITY)
def test_each_sparsity_entry_not_on_offer_is_said_with_what_is_shown(case):
    query, lines, shown = SPARSITY[case]
    at = _sparsity(**query)
    assert _link_lines(at) == lines
    for key, value in shown.items():
        widget = next(
            w
            for kind in ("multiselect", "selectbox", "select_slider", "radio")
            for w in getattr(at, kind)
            if w.key == key
        )
        assert widget.value == value, (key, widget.value)
    if "sp_avg" in query:
        assert "sp_avg" not in at.query_params  # (dropped, as before: this workspace cannot show it)


def test_one_matrix_entries_are_said_with_their_tab_closed():
    """The export draws One matrix from another tab, with the model and matrix the lines name."""
    at = _sparsity(dd_model="gone", dd_tensor="nope")
    assert _link_lines(at) == [
        "The link's model gone is not among the models compared here; grpo-s0 is shown instead.",
        f"The link's matrix nope is not among the matrices of grpo-s0; {Q0} is shown instead.",
    ]


@pytest.mark.parametrize(
    "query",
    [
        {"sp_models": ["grpo-s1", "dpo"], "sp_crit": "1e-05", "sp_avg": "parameter-weighted", "sp_tab": "One matrix"},
        {"sp_crit": "relative", "sp_eta": "0.01", "sp_tab": "One matrix", "dd_model": "dpo", "dd_tensor": Q0},
        {"sp_tab": "Tolerance sweep and ULPs", "dd_model": "grpo-s1", "dd_tensor": "layers.1.mlp.up_proj.weight"},
        {"sp_models": "", "sp_crit": "", "sp_avg": "", "sp_tab": "", "dd_model": "", "dd_tensor": ""},  # empty
        {"sp_crit": "relative", "sp_eta": ""},
    ],
    ids=["models and tab", "η and One matrix", "One matrix closed", "empty", "empty η"],
)
def test_a_sparsity_link_on_offer_says_nothing(query):
    at = _sparsity(**query)
    assert not _link_lines(at), _link_lines(at)
    if query.get("sp_eta"):
        assert at.select_slider(key="sp_eta").value == query["sp_eta"]
    if query.get("dd_model") and query["sp_tab"] == "One matrix":
        assert (at.selectbox(key="dd_model").value, at.selectbox(key="dd_tensor").value) == ("dpo", Q0)


def test_a_sparsity_line_is_said_until_another_choice_is_picked():
    at = _sparsity(sp_crit="1e-5", sp_tab="One matrix", dd_tensor="nope")
    assert len(_link_lines(at)) == 2
    _ok(at.run())  # a rerun: the pickers still show what the lines name
    assert len(_link_lines(at)) == 2
    _ok(at.selectbox(key="sp_crit").set_value("1e-05").run())
    assert _link_lines(at) == [f"The link's matrix nope is not among the matrices of grpo-s0; {Q0} is shown instead."]
    _ok(at.selectbox(key="dd_tensor").set_value("layers.1.mlp.up_proj.weight").run())
    assert not _link_lines(at), _link_lines(at)

    at = _sparsity(sp_crit="relative", sp_eta="0.3")
    _ok(at.run())
    assert len(_link_lines(at)) == 1
    _ok(at.select_slider(key="sp_eta").set_value("0.01").run())
    assert not _link_lines(at), _link_lines(at)


# ---------------------------------------------------------------- Training runs


def _training(**query):
    return _ok(open_page("training", **query))


def test_training_view_not_on_offer_is_said():
    at = _training(tr_view="Nope")
    assert _link_lines(at) == [
        f"The link's view Nope is not among this page's views ({VIEWS}); Launch is shown instead."
    ]
    assert at.button_group(key="tr_view").value == "Launch"
    assert not _link_lines(_training(tr_view="Runs")) and not _link_lines(_training(tr_view=""))


def test_training_comparison_entries_not_on_offer_are_said():
    at = _training(tr_view="Subnetwork vs full", cmp_full="zoo gone", cmp_sub="run older · 1234", cmp_acc="yes")
    among = "the finished models on offer here"
    assert _link_lines(at) == [
        f"The link's full finetune zoo gone is not among {among}; zoo grpo-s0 is shown instead.",
        f"The link's subnetwork-only twin run older · 1234 is not among {among}; zoo grpo-sub is shown instead.",
        "The link's accuracy setting yes is not among true or false; false (off) is shown instead.",
    ]
    shown = (at.selectbox(key="cmp_full").value, at.selectbox(key="cmp_sub").value, at.toggle(key="cmp_acc").value)
    assert shown == ("zoo grpo-s0", "zoo grpo-sub", False)
    _ok(at.selectbox(key="cmp_full").set_value("zoo dpo").run())  # another choice: its line goes, the others stay
    assert len(_link_lines(at)) == 2 and not any("full finetune" in w for w in _link_lines(at))
    at = _training(tr_view="Subnetwork vs full", cmp_full="zoo grpo-s1", cmp_sub="zoo dpo", cmp_acc="False")
    assert not _link_lines(at), _link_lines(at)


def test_training_held_out_set_not_on_offer_is_said():
    at = _training(tr_view="Subnetwork vs full", cmp_acc="true", cmp_eval="C_eval")
    default = at.selectbox(key="cmp_eval").value  # the set both models were held out on (their own)
    assert _link_lines(at) == [
        f"The link's held-out set C_eval is not among the held-out sets on offer here; {default} is shown instead."
    ]
    assert default in at.selectbox(key="cmp_eval").options and default != "C_eval"
    again = _training(tr_view="Subnetwork vs full", cmp_acc="true", cmp_eval=default)
    assert not _link_lines(again), _link_lines(again)


@pytest.mark.parametrize(
    ("raw", "line", "shown"),
    [
        ("abc", "The link's smoothing abc is not among the smoothings on offer (0 to 0.95); 0 is shown instead.", 0.0),
        ("3", "The link's smoothing 3 is not among the smoothings on offer (0 to 0.95); 0.95 is shown instead.", 0.95),
        ("0.5", None, 0.5),
        ("", None, 0.0),
    ],
)
def test_training_smoothing_not_on_offer_is_said(finished_run, raw, line, shown):
    _rows(finished_run("l9-curves", {"algorithm": "sft"}).parent.parent, 3)
    at = _training(tr_view="Runs", tr_run="l9-curves", tr_smooth=raw)
    assert _link_lines(at) == ([line] if line else [])
    assert at.slider(key="tr_smooth").value == shown


# ---------------------------------------------------------------- What drives sparsity


def test_drivers_tab_not_on_offer_is_said(planted_grid):
    from subnetviz.experiments.drivers import COLUMNS

    rows = [
        {**GRID_ROW, "factor": "steps", "value": v, "seed": 0, "precision": p, "sparsity": 0.5}
        for v in ("1", "2")
        for p in ("bf16", "fp32")
    ]
    label = planted_grid(pd.DataFrame(rows, columns=COLUMNS))
    at = _ok(open_page("drivers", dr_run=label, dr_tab="Nope"))
    assert _link_lines(at) == ["The link's tab Nope is not among this page's tabs; By factor is shown instead."]
    assert at.radio(key="dr_value").value == "sparsity"  # (By factor's own control: its tab is the one open)
    for tab in ("bf16 vs fp32", ""):
        again = _ok(open_page("drivers", dr_run=label, dr_tab=tab))
        assert not _link_lines(again), _link_lines(again)


# ---------------------------------------------------------------- Update sparsity, several tensors a cell (last)


def test_an_average_not_on_offer_is_said_where_cells_hold_several_tensors(ck, typed_options):  # noqa: F811
    """Layer 0 · q holds q_proj's weight and bias: both averages are on offer, and the radio is live. (Last of this
    module: ``ck`` points the process at a home of its own until the module ends.)"""
    at = _page(ck, "bf16", sp_avg="median")
    assert _link_lines(at) == [
        "The link's average median is not among the averages on offer (parameter-weighted, per-tensor mean); "
        "parameter-weighted is shown instead."
    ]
    assert at.radio(key="sp_avg").value == "parameter-weighted" and not at.radio(key="sp_avg").disabled
    _ok(at.radio(key="sp_avg").set_value("per-tensor mean").run())
    assert not _link_lines(at), _link_lines(at)
    assert not _link_lines(_page(ck, "bf16", sp_avg="per-tensor mean"))
