"""A stranger's shared links (ninth review, stranger9), on the micro zoo (AppTest).

1. A link's comparison precision or device that this server does not offer (``precision=BF16``, ``precision=fp8``,
   ``device=cuda:1``) fell back to the stored dtype / auto with no word, the entry dropped from the URL: the
   visitor's numbers differed from the sender's. Each is now said in the main area with what is used instead.
"""

from __future__ import annotations

import pytest

from tests.app.test_behser7_fixes_app import _warnings
from tests.app_fixtures import open_page

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _env(app_env):
    return app_env


def _lines(at) -> list[str]:
    return [w.replace("\u200b", "") for w in _warnings(at) if w.startswith("The link's")]  # (":" kept from emoji)


@pytest.mark.parametrize(
    ("query", "line"),
    [
        (
            {"precision": "BF16"},
            "The link's precision BF16 is not among the precisions on offer (stored, bf16, fp32, fp16); stored is "
            "shown instead.",
        ),
        (
            {"precision": "fp8"},
            "The link's precision fp8 is not among the precisions on offer (stored, bf16, fp32, fp16); stored is "
            "shown instead.",
        ),
        (
            {"device": "cuda:1"},
            "The link's device cuda:1 is not among the devices on offer (auto, cpu); auto is shown instead.",
        ),
    ],
)
def test_a_links_precision_or_device_not_on_offer_is_said_in_the_main_area(query, line):
    at = open_page("home", ft=["dpo"], **query)  # (the page the link opens: AppTest runs Home before any other)
    assert not at.exception
    assert _lines(at) == [line]
    assert not [w for w in at.sidebar.warning if "The link" in str(w.value)]  # (in the main area, not the sidebar)
    key = next(iter(query))
    assert at.selectbox(key=key).value == line.split("; ")[1].split(" is shown")[0]


@pytest.mark.parametrize("query", [{"precision": "bf16"}, {"precision": ""}, {"device": "cpu"}, {}])
def test_a_precision_or_device_on_offer_says_nothing(query):
    at = open_page("home", ft=["dpo"], **query)
    assert not at.exception and _lines(at) == []


def test_a_links_lines_stay_on_the_page_that_read_it():
    """(regressions17) A link's lines were said on every page the visitor went to afterwards (the sidebar's
    precision on each of them), and a stale criterion's line came back on a bare /sparsity: they are the page's that
    read the link, and go once another page opens."""
    at = open_page("home", ft=["dpo"], precision="fp64")
    assert [w[:30] for w in _lines(at)] == ["The link's precision fp64 is n"]
    assert len(_lines(at.run())) == 1  # (kept while the visitor stays on the page: a rerun says it again)
    _away(at, "sparsity")
    assert _lines(at) == []
    at = open_page("sparsity", ft=["dpo"], sp_crit="zzz")
    assert [w[:30] for w in _lines(at)] == ["The link's criterion zzz is no"]
    assert len(_lines(at.run())) == 1
    for page in ("spectra", "workspace", "sparsity"):  # the sidebar's links: addresses with no query
        _away(at, page)
        assert _lines(at) == [], (page, _lines(at))


def _away(at, page: str) -> None:
    """The sidebar's link to ``page``: its address names no query."""
    for key in list(at.query_params):
        del at.query_params[key]
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception
