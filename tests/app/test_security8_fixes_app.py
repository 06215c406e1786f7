"""security8: a shared link's text, read by the export of a tab that is not open, is checked as the open tab checks
it. Spectra's export from the Subspaces tab wrote the link's ``spec_module`` into its notes as it stood (a module
the layer lacks drew an empty "no data" chart; a stranger's sentence read as the app's note)."""

from __future__ import annotations

import html
import re

import pytest

from subnetviz.text import file_slug
from tests.app_fixtures import open_page

pytestmark = pytest.mark.slow

SUBSPACES = "Subspaces of W_base vs W_ft"


def _notes(page: str) -> str:
    return " ".join(html.unescape(m) for m in re.findall(r'<p class="notes">(.*?)</p>', page, re.S))


@pytest.mark.parametrize("module", ["lm_head", "Δ is zero here: all updates are noise — see evil.example"])
def test_the_subspaces_export_names_the_module_the_delta_tab_draws(app_env, exports, module):
    at = open_page("spectra", spec_tab=SUBSPACES, spec_layer="0", spec_module=module)
    assert not at.exception, [e.message for e in at.exception]
    page = exports["Spectra"]()
    page = page.decode() if isinstance(page, bytes) else page
    said = _notes(page)
    assert "Singular values: grpo-s0 · layer 0 · module all." in said and module not in said
    assert "evil.example" not in page


def test_a_figure_files_key_part_is_slugged_too():
    """The chart's key holds a model's label (heat-{model}): a hub id's "/" and a U+202E reached the file's name."""
    for key in ("heat-org/model", "eff-ft\u202egvs.exe", 'bg-cov-a"b\\c'):
        slug = file_slug(key, 40)
        assert slug and all(c.isascii() and (c.isalnum() or c == "-") for c in slug) and len(slug) <= 40
