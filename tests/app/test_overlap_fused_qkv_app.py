"""The Overlap page's per-layer view splits GPT-2's fused c_attn into q, k and v, as the Update sparsity page does:
the heatmap's columns, its Jaccard and × per-tensor chance cells, the per-layer table (o1, o2, counts) and the
export, each checked against NumPy on masks planted part by part. The bias, whose layout mask files do not tell,
stays whole as qkv, and the page says so in the naming table's words.
"""

from __future__ import annotations

import html
import re

import numpy as np
import pytest
import torch

from subnetviz.masks import MaskSet, save_mask_set
from tests.app_fixtures import decode, open_page, plotly_specs
from tests.models import tiny_model

W = "transformer.h.0.attn.c_attn.weight"
NOTE = "c_attn is split into q, k and v only where the weight is shaped (H, 3H)"


@pytest.fixture
def gpt2_masks(tmp_path, monkeypatch):
    """Two masks of a tiny GPT-2 in a fresh home's uploads: q changed in a only, k in both, v in b only (c_attn of
    layer 0); 10 % random elsewhere."""
    home = tmp_path / "home"
    (home / "uploads").mkdir(parents=True)
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(home))
    sd = tiny_model("gpt2", hidden=16, layers=2, heads=4).state_dict()
    shapes = {n: tuple(t.shape) for n, t in sd.items() if t.dtype.is_floating_point}
    rng = np.random.default_rng(4)
    sets, chosen = [], []
    for k, dens in enumerate([(0.6, 0.5, 0.0), (0.0, 0.5, 0.3)]):
        masks = {n: rng.random(s) < 0.1 for n, s in shapes.items()}
        masks[W] = np.concatenate([rng.random((16, 16)) < d for d in dens], axis=1)
        sets.append(masks)
        save_mask_set(
            home / "uploads" / f"m{k}.safetensors", MaskSet({n: torch.from_numpy(v) for n, v in masks.items()})
        )
        chosen.append(f"uploads/m{k}")
    return sets, chosen


def _want(sets) -> dict[str, tuple[int, int, int]]:
    """(|A|, |B|, |A∩B|) of layer 0's q, k, v: the thirds of c_attn's columns (Conv1D, stored (in, out))."""
    a, b = sets[0][W], sets[1][W]
    return {p: (int(a[:, s].sum()), int(b[:, s].sum()), int((a[:, s] & b[:, s]).sum())) for p, s in _thirds().items()}


def _thirds() -> dict[str, slice]:
    return {"q": slice(0, 16), "k": slice(16, 32), "v": slice(32, 48)}


def _heat(at) -> dict:
    (spec,) = [s for s in plotly_specs(at) if "by layer and module" in s["layout"]["title"]["text"]]
    trace = spec["data"][0]
    custom = decode(trace["customdata"]).reshape(len(trace["y"]), len(trace["x"]), 3)
    return {(int(float(y)), x): custom[i, j] for i, y in enumerate(trace["y"]) for j, x in enumerate(trace["x"])}


def test_the_per_layer_view_splits_c_attn_into_q_k_v(gpt2_masks, exports):
    sets, chosen = gpt2_masks
    at = open_page("overlap", masks=chosen, ov_masks=chosen, ov_tab="Per layer")
    assert not at.exception and not at.error, [e.value for e in at.error]
    want = _want(sets)
    cells = _heat(at)
    assert {(0, "q"), (0, "k"), (0, "v"), (0, "qkv")} <= set(cells)  # the bias stays whole: no config says gpt2
    for p, (ca, cb, inter) in want.items():
        assert cells[(0, p)][0] == pytest.approx(100 * inter / (ca + cb - inter), rel=1e-12, nan_ok=True), p
    assert any(NOTE in c.value.replace("\\", "") for c in at.caption)

    table = next(d.value for d in at.dataframe if {"o1", "o2", "module"} <= set(d.value.columns))
    for p, (ca, cb, inter) in want.items():
        (row,) = table[(table["layer"] == 0) & (table["module"] == p)].itertuples()
        assert (row.count_a, row.count_b, row.intersection, row.numel) == (ca, cb, inter, 256), p
        if ca:
            assert row.o1 == pytest.approx(100 * inter / ca, rel=1e-12)  # shown in % (the download holds fractions)
        if cb:
            assert row.o2 == pytest.approx(100 * inter / cb, rel=1e-12)

    # × per-tensor chance: each part is its own tensor, at its own densities
    at.radio(key="ov_view").set_value("ratio").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    cells = _heat(at)
    (ca, cb, inter) = want["k"]  # the one part both masks changed
    e = ca * cb / 256
    assert cells[(0, "k")][2] == pytest.approx((inter / (ca + cb - inter)) / (e / (ca + cb - e)), rel=1e-12)

    page = exports["Overlap"]()
    assert NOTE in html.unescape(re.search(r'<p class="notes">(.*?)</p>', page, re.S).group(1))
    block = re.search(r"<b>[^<]* by layer and module, against[^<]*</b>(.*?)</table>", page, re.S).group(1)
    heads = [html.unescape(h) for h in re.findall(r"<th class=[^>]*>(.*?)</th>", block)]
    rows = [
        [html.unescape(c) for c in re.findall(r"<td class=[^>]*>(.*?)</td>", r)]
        for r in re.findall(r"<tr>(.*?)</tr>", block)
    ]
    by = {(r[heads.index("layer")], r[heads.index("module")]): r for r in rows if r}
    for p, (_, _, inter) in want.items():
        assert by[("0", p)][heads.index("intersection")] == f"{inter:,}", p
