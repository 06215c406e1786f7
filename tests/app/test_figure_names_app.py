"""The figure a visitor downloads is named by its chart, not only by its key: two runs' Series charts (and two
models' spectra) were both ``subnetviz-series.svg``, and a second download overwrote the first in the folder."""

from __future__ import annotations

import os

import pytest

from subnetviz.text import file_slug
from tests.app_fixtures import open_page

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "name,slug",
    [
        ("Which entries changed", "Which-entries-changed"),
        ("Series: update sparsity · 20261207-110000-grpo-sub/", "Series-update-sparsity-20261207-110000-grpo-sub"),
    ],
)
def test_an_ascii_name_is_its_own_slug(name, slug):
    assert file_slug(name) == slug


def test_names_that_lose_letters_or_length_keep_a_digest_of_the_whole():
    hebrew, other = "סדרה: ריצה א", "סדרה: ריצה ב"
    assert file_slug(hebrew) != file_slug(other) and len(file_slug(hebrew)) == 8  # no ASCII letters: the digest
    assert file_slug("café run") != file_slug("cafe run") and file_slug("café run").startswith("cafe-run-")
    long_a, long_b = "run " * 30 + "a", "run " * 30 + "b"  # the same first 80 characters
    assert file_slug(long_a) != file_slug(long_b) and all(len(file_slug(x)) <= 80 for x in (long_a, long_b))
    assert all(c.isascii() and (c.isalnum() or c == "-") for c in file_slug("a/b\\c:d\u202ee.svg"))


@pytest.fixture
def figure_files(monkeypatch):
    """file_name of each "Download figure" button drawn."""
    from streamlit.delta_generator import DeltaGenerator

    seen: list[str] = []
    original = DeltaGenerator.download_button

    def capture(self, label, data=None, *args, **kwargs):
        if str(kwargs.get("key", "")).startswith("pub-dl-"):
            seen.append(kwargs["file_name"])
        return original(self, label, data, *args, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "download_button", capture)
    return seen


@pytest.mark.skipif(not os.access("/usr/bin/chromium", os.X_OK), reason="needs Debian chromium for kaleido")
def test_the_downloaded_figure_is_named_by_its_chart(app_env, figure_files):
    at = open_page("sparsity")
    (picker,) = [s for s in at.selectbox if str(s.key).startswith("pub-chart-Update sparsity")]
    name = picker.format_func(picker.value)
    (button,) = [b for b in at.button if str(b.key).startswith("pub-make-Update sparsity")]
    button.click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert figure_files == [f"subnetviz-{file_slug(picker.value, 40)}-{file_slug(name)}.svg"]
    assert len(file_slug(name)) > 10  # the chart's title, not only its key


@pytest.mark.parametrize(
    ("page", "query", "head"),
    [
        ("series", {}, "Where the parameters ended up · "),
        (
            "spectra",
            {"spec_tab": "Subspaces of W_base vs W_ft"},
            "Update mask inside the principal weights vs chance · ",
        ),
    ],
)
def test_a_title_broken_for_width_is_named_in_one_line(app_env, page, query, head):
    """walk8: the figure picker read a break made for a narrow column as a " · " ("Where the parameters · ended
    up"); a chart whose title is wrapped names itself (layout.meta), its subtitle lines after a " · "."""
    at = open_page(page, **query)
    assert not at.exception, [e.message for e in at.exception]
    (picker,) = [s for s in at.selectbox if str(s.key).startswith("pub-chart-")]
    names = list(picker.options)  # (AppTest gives the options as the picker shows them)
    named = [n for n in names if n.startswith(head)]
    assert len(named) == 1 and len(named[0]) > len(head), names
