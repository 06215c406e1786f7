"""Spectra's sixth review in Chromium (tests/unit/test_spectra6_fixes.py has the builders): at 1024 px with the sidebar
open, and at 1440 px, no chart's title, message or footnote runs past its chart.

1. The singular-value subtitle of updates below full rank, with several models and with one, was one line that ran
   200–300 px past the page-wide chart: the hidden-σ count and the lone σ's key were cut off.
2. The principal-weight chart's zero-base explanation (Subspaces) was one line cut off on both sides of its
   half-width column, at 1024 px and at 1440 px.
"""

from __future__ import annotations

import shutil
from urllib.parse import urlencode

import pytest
import torch

from tests.browser import E2E, wait_for_app
from tests.ckpt_fixtures import read_state_dict, write_folder
from tests.models import INTER, save_model, tiny_model

pytestmark = [pytest.mark.slow, *E2E]
TAB = "Subspaces of W_base vs W_ft"
LAYER = "model.layers.{}.{}.weight"

# every text of each chart that reaches past its SVG (a title's, an annotation's), with the part that does
PAST = r"""() => Array.from(document.querySelectorAll("[data-testid='stPlotlyChart'] .js-plotly-plot")).map(gd => {
  const svg = gd.querySelector(".main-svg").getBoundingClientRect();
  const past = Array.from(gd.querySelectorAll(".g-gtitle text, .annotation-text")).map(t => [t.textContent,
      t.getBoundingClientRect()]).filter(([, b]) => b.width > 0 && (b.right > svg.right + 1 || b.left < svg.left - 1))
      .map(([t, b]) => `${t.slice(0, 60)} [${Math.round(b.left - svg.left)}..${Math.round(b.right - svg.left)}]`);
  return {title: (gd._fullLayout.title.text || "").replace(/<[^>]+>/g, " ").replace(/\s+/g, " ").trim(), width: svg.width, past,
          notes: Array.from(gd.querySelectorAll(".annotation-text")).map(t => t.textContent)};
})"""


# ``n`` charts or more, each laid out with its title
DRAWN = r"""n => { const c = document.querySelectorAll("[data-testid='stPlotlyChart'] .js-plotly-plot");
  return c.length >= n && Array.from(c).every(gd => gd._fullLayout && gd.querySelector(".g-gtitle text")); }"""


def _plus(sd, g, name, rank, scale=0.05):
    w = sd[name]
    return w + scale * torch.randn(w.shape[0], rank, generator=g) @ torch.randn(rank, w.shape[1], generator=g)


@pytest.fixture(scope="module")
def home(app_home):
    """Under the served home: a float32 Llama base, ``ftA``/``ftB`` with updates below full rank (q_proj rank 2
    and 3, down_proj one changed column: a lone σ), a base ``zb`` whose q_proj of both layers and o_proj of layer 1
    are all zero, ``zq`` changing only those (nothing to draw) and ``zmix`` also rotating k_proj (drawn)."""
    root = app_home / "spectra6-fixes"
    src = save_model(tiny_model("llama", intermediate=INTER, kv_heads=2), root / "src", dtype=False)
    base = read_state_dict(src)
    g = torch.Generator().manual_seed(6)
    for name, rank in (("ftA", 2), ("ftB", 3)):
        sd = {**base, LAYER.format(0, "self_attn.q_proj"): _plus(base, g, LAYER.format(0, "self_attn.q_proj"), rank)}
        down = LAYER.format(0, "mlp.down_proj")
        sd[down] = base[down].clone()
        sd[down][:, 5] += 1e-3
        write_folder(root / name, sd, src)
    zero = [
        LAYER.format(0, "self_attn.q_proj"),
        LAYER.format(1, "self_attn.q_proj"),
        LAYER.format(1, "self_attn.o_proj"),
    ]
    zb = {**base, **{n: torch.zeros_like(base[n]) for n in zero}}
    zq = {**zb, **{n: _plus(zb, g, n, 2) for n in zero}}
    zmix = {**zq, LAYER.format(0, "self_attn.k_proj"): _plus(zb, g, LAYER.format(0, "self_attn.k_proj"), 2)}
    write_folder(root / "base", base, src)
    for name, sd in (("zb", zb), ("zq", zq), ("zmix", zmix)):
        write_folder(root / name, sd, src)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _url(app_url, home, base, fts, **query) -> str:
    q = [("base", str(home / base)), *(("ft", str(home / f)) for f in fts)]
    q += [(k, x) for k, v in query.items() for x in (v if isinstance(v, list) else [v])]
    return f"{app_url}/spectra?{urlencode(q)}"


CASES = {
    "two models": ("base", ["ftA", "ftB"], {"spec_models": ["ftA", "ftB"], "spec_layer": "0"}),
    "one model": ("base", ["ftA", "ftB"], {"spec_models": "ftA", "spec_layer": "all"}),
    "zero base": ("zb", ["zq"], {"spec_tab": TAB, "sub_k": "4"}),
    "zero base beside drawn": ("zb", ["zmix"], {"spec_tab": TAB, "sub_k": "4"}),
}


@pytest.mark.parametrize("width", [1024, 1440])
@pytest.mark.parametrize("case", CASES)
def test_no_title_message_or_footnote_runs_past_its_chart(browser, app_url, home, case, width):
    base, fts, query = CASES[case]
    ctx = browser.new_context(viewport={"width": width, "height": 1100})
    try:
        page = ctx.new_page()
        page.goto(_url(app_url, home, base, fts, **query))
        wait_for_app(page)
        page.wait_for_function(DRAWN, arg=1 if "model" in case else 3)  # (a chart with nothing to draw has no trace)
        assert page.locator("[data-testid='stSidebar']").bounding_box()["width"] > 250  # the sidebar open
        charts = page.evaluate(PAST)
        for chart in charts:
            assert not chart["past"], (chart["title"], chart["width"], chart["past"])
        if case in ("two models", "one model"):
            (spectra,) = [c for c in charts if c["title"].startswith("Singular values of updates")]
            said = spectra["title"]  # (the subtitle's parts, each there to be read)
            assert "σ under the rank threshold (numerical zeros) not drawn" in said and "a lone σ: a dot" in said
            assert spectra["title"].startswith("Singular values of updates: ftA") == (case == "one model")
        else:
            (principal,) = [c for c in charts if "principal weights vs chance" in c["title"]]
            assert any("whose" in n and "so no principal weights" in n for n in principal["notes"])
    finally:
        ctx.close()
