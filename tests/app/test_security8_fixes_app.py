"""security8 (and walk8): a shared link's text, read by the export of a tab that is not open, is checked as the open tab checks
it. Spectra's export from the Subspaces tab wrote the link's ``spec_module`` into its notes as it stood (a module
the layer lacks drew an empty "no data" chart; a stranger's sentence read as the app's note)."""

from __future__ import annotations

import html
import json
import re

import pytest

from subnetviz.text import file_slug
from tests.app_fixtures import open_page, plotly_specs

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


def _in_columns(at) -> list[str]:
    """The first title line of every chart drawn inside a column."""
    return [
        json.loads(el.proto.spec)["layout"]["title"]["text"].split("<br>")[0]
        for col in at.columns
        for el in col.get("plotly_chart")
    ]


@pytest.mark.parametrize(
    ("tensor", "side_by_side"),
    [("layers.1.mlp.down_proj.weight", False), ("layers.0.self_attn.q_proj.weight", True)],  # (32 × 64, 32 × 32)
)
def test_a_wide_matrix_is_drawn_one_image_under_the_other(app_env, tensor, side_by_side):
    """walk8: One matrix's two images of a 96 × 384 down_proj, each half the page wide, were strips of 100 × 25 px
    at 1024 px, their row labels over each other; a matrix twice as wide as tall or more takes the page's width."""
    at = open_page("sparsity", sp_tab="One matrix", dd_model="dpo", dd_tensor=tensor)
    assert not at.exception and not at.error, [e.value for e in at.error]
    titles = [s["layout"]["title"]["text"] for s in plotly_specs(at)]
    assert any(t.startswith("Which entries changed") for t in titles) and any(t.startswith("Signed") for t in titles)
    paired = [t for t in _in_columns(at) if t.startswith(("Which entries changed", "Signed"))]
    assert len(paired) == (2 if side_by_side else 0), paired
