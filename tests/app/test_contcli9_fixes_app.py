"""The Continual page on a shared link naming what the run lacks (contcli9 review), through AppTest.

Run and density were said ("The link's density 2 % is not in this run; 5 % is shown instead"); a link's seed, tab,
owner-image method, layer, KKT method, task-inference method and view fell back without a word (another seed's
matrices, another method's owner image), and a ``cl_kkt`` whose tab the run lacks stayed in the URL. Each is now
said once, with what is shown instead, and dropped from the URL; a valid or empty entry says nothing, and nothing is
said once the user picks another value."""

from __future__ import annotations

import pytest

from tests.app.test_continual6_fixes_app import _read
from tests.app.test_continual_review_fixes import _result as kkt_result
from tests.app_fixtures import finished_continual_run, open_page, plotly_specs
from tests.integration.test_continual6_fixes import _result as plain_result

pytestmark = pytest.mark.slow

# plain_result: finetune + SupSup at density 20 %, seeds 0 and 1, one layer "l.weight", no KKT, no task inference.
# kkt_result: SupSup, SupSup+KKT, ExSSNeT+KKT at 5 %, seed 0, layer "layer1.weight", KNN rows and SupSup's inference.
PLAIN, KKT = "cl9-plain", "cl9-kkt"


@pytest.fixture(scope="module")
def runs(app_env):
    with finished_continual_run(PLAIN, "plain", plain_result()), finished_continual_run(KKT, "with KKT", kkt_result()):
        yield


def _warnings(at) -> list[str]:
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    return [_read(w.value) for w in at.warning]


def _titles(at) -> list[str]:
    return [s["layout"]["title"]["text"] for s in plotly_specs(at)]


def test_a_seed_the_run_lacks_is_said_with_the_one_shown_and_not_after_a_pick(runs):
    at = open_page("continual", cl_run=PLAIN, cl_seed="2", cl_tab="After each task")
    assert _warnings(at) == ["The link's seed 2 is not among this run's seeds (0, 1); seed 0 is shown instead."]
    assert "cl_seed" not in at.query_params
    assert [t.split("<br>")[0] for t in _titles(at)] == ["finetune, dense, seed 0", "SupSup, density 20 %, seed 0"]
    at.selectbox(key="cl_seed").select(1).run()
    assert _warnings(at) == [] and at.selectbox(key="cl_seed").value == 1
    assert all(", seed 1" in t for t in _titles(at))


def test_an_owner_method_and_layer_the_run_lacks_are_said(runs):
    at = open_page("continual", cl_run=PLAIN, cl_tab="Capacity", cl_owner="SSNeT", cl_layer="layer9.weight")
    assert _warnings(at) == [  # (the first above the tabs, the second in the tab, above the layer's picker)
        "The link's owner-image method SSNeT is not among this run's masked methods (SupSup); SupSup is shown instead.",
        "The link's layer layer9.weight is not among the layers of SupSup's task masks; l.weight is shown instead.",
    ]
    assert "cl_owner" not in at.query_params and "cl_layer" not in at.query_params
    assert [t for t in _titles(at) if "owner task" in t] == [
        "owner task of l.weight<br><sup>SupSup, 20 %, seed 0</sup>"
    ]


def test_a_kkt_link_on_a_run_without_kkt_is_said_and_left_out_of_the_url(runs):
    at = open_page("continual", cl_run=PLAIN, cl_tab="KKT", cl_kkt="ExSSNeT+KKT", cl_inf="SupSup")
    assert _warnings(at) == [
        "The link's tab KKT is not among this run's tabs (Summary, After each task, Capacity); Summary is shown "
        "instead.",
        "The link's KKT method ExSSNeT+KKT is not among this run's KKT methods (none at density 20 %); it is left out.",
        "The link's task-inference method SupSup is not among this run's task-inference methods (none at density "
        "20 %); it is left out.",
    ]
    assert not {"cl_tab", "cl_kkt", "cl_inf"} & set(at.query_params), dict(at.query_params)


def test_a_kkt_method_the_run_lacks_is_said_until_another_is_picked(runs):
    at = open_page("continual", cl_run=KKT, cl_tab="KKT", cl_kkt="SSNeT+KKT")
    assert _warnings(at) == [
        "The link's KKT method SSNeT+KKT is not among this run's KKT methods (SupSup+KKT, ExSSNeT+KKT); SupSup+KKT "
        "is shown instead."
    ]
    assert at.selectbox(key="cl_kkt").value == "SupSup+KKT" and "cl_kkt" not in at.query_params
    assert _titles(at)[0].startswith("SupSup+KKT: KNN accuracy")
    at.selectbox(key="cl_kkt").select("ExSSNeT+KKT").run()
    assert _warnings(at) == [] and _titles(at)[0].startswith("ExSSNeT+KKT: KNN accuracy")


def test_a_view_and_a_closed_tab_s_method_the_run_lacks_are_said(runs):
    """The Task inference tab is closed (Summary is open): its picker is not drawn, and Streamlit left its entry."""
    at = open_page("continual", cl_run=KKT, cl_view="Nowhere", cl_inf="Nope")
    assert _warnings(at) == [
        "The link's view Nowhere is not among this page's views (Results, Launch); Results is shown instead.",
        "The link's task-inference method Nope is not among this run's task-inference methods (SupSup); SupSup is "
        "shown instead.",
    ]
    assert not {"cl_view", "cl_inf"} & set(at.query_params), dict(at.query_params)


def test_a_valid_or_empty_link_says_nothing(runs):
    valid = {"cl_seed": "1", "cl_tab": "Capacity", "cl_owner": "SupSup", "cl_layer": "l.weight"}
    at = open_page("continual", cl_run=PLAIN, **valid)
    assert _warnings(at) == []
    assert at.query_params["cl_seed"] == "1" and at.query_params["cl_tab"] == "Capacity"  # (a default: left out)
    assert [t for t in _titles(at) if "owner task" in t] == [
        "owner task of l.weight<br><sup>SupSup, 20 %, seed 1</sup>"
    ]
    at = open_page("continual", cl_run=KKT, cl_tab="KKT", cl_kkt="", cl_inf="", cl_owner="", cl_layer="")
    assert _warnings(at) == []
