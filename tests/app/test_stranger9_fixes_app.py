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
    at = open_page("sparsity", ft=["dpo"], **query)
    assert not at.exception
    assert _lines(at) == [line]
    assert not [w for w in at.sidebar.warning if "The link" in str(w.value)]  # (in the main area, not the sidebar)
    key = next(iter(query))
    assert at.selectbox(key=key).value == line.split("; ")[1].split(" is shown")[0]


@pytest.mark.parametrize("query", [{"precision": "bf16"}, {"precision": ""}, {"device": "cpu"}, {}])
def test_a_precision_or_device_on_offer_says_nothing(query):
    at = open_page("sparsity", ft=["dpo"], **query)
    assert not at.exception and _lines(at) == []
