"""Fixes from the third browser walk (review): the singular-value axis and one colour per module kind.

- Spectra › Singular values at Layer = all ran its log axis from 10⁻¹ to 10⁻²⁹ with 29 stacked tick labels: an
  embedding whose update has 21 non-zero rows of 30 has 9 singular values that are exactly zero, and a float64 SVD
  gives them as rounding noise (1e-20 … 1e-29), which was drawn as data. Values under the rank threshold the page
  states (σ₁·max(m, n)·ε_fp32) are now left out and counted in the subtitle, and a log axis over many decades gets
  one tick every few decades.
- A module kind had a different colour on each chart (down_proj blue in the singular values, green in the subspaces
  scatter, yellow on Series), and the scatter gave v and lm_head one colour (the palette's eight, cycled).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from subnetviz import figures as F
from subnetviz.figures import subspaces as sfig

EPS32 = float(np.finfo(np.float32).eps)  # the rank threshold's ε, as torch's matrix_rank takes it for float32


def _curve_frame(name: str, sigma: np.ndarray, kind: str = "update") -> pd.DataFrame:
    return pd.DataFrame({"name": name, "index": np.arange(1, len(sigma) + 1), "sigma": sigma, "kind": kind})


def _update_trace(fig, name: str):
    return next(t for t in fig.data if t.name == name and t.showlegend)


def test_numerical_zeros_of_a_planted_low_rank_update_are_not_drawn():
    # An embedding's update over 30 tokens × 64 dims in which 9 tokens never moved (rank 21 in exact arithmetic),
    # turned by an orthogonal matrix so that the SVD's zero singular values are rounding noise, as on the page.
    rng = np.random.default_rng(3)
    delta = np.zeros((30, 64), dtype=np.float32)
    delta[:21] = rng.standard_normal((21, 64)).astype(np.float32) * 1e-3
    mixed = np.linalg.qr(rng.standard_normal((30, 30)))[0] @ delta.astype(np.float64)  # still rank 21, rows mixed
    sigma = np.linalg.svd(mixed, compute_uv=False)  # float64 SVD: σ₂₂ … σ₃₀ come out as rounding noise, not 0
    threshold = sigma[0] * 64 * EPS32
    assert (sigma[21:] < 1e-12 * sigma[0]).all() and (sigma[21:] > 0).any()  # rounding noise, not all exact zeros
    fig = F.spectrum_curves(_curve_frame("embed_tokens.weight", sigma), thresholds={"embed_tokens.weight": threshold})
    y = np.asarray(_update_trace(fig, "embed_tokens.weight").y, dtype=float)
    assert np.isfinite(y).sum() == 21  # σ₁ … σ₂₁ drawn, σ₂₂ … σ₃₀ (numerical zeros) left out
    assert np.allclose(y[:21], sigma[:21]) and np.nanmin(y) > threshold
    assert "9 σ under the rank threshold (numerical zeros) not drawn" in fig.layout.title.text


def test_a_log_axis_over_many_decades_keeps_its_labels_few():
    # a spectrum that truly spans 31 decades (each value above the threshold given): drawn whole, labelled sparsely
    sigma = 10.0 ** -np.arange(0, 32)
    fig = F.spectrum_curves(_curve_frame("m", sigma), thresholds={"m": 0.5e-31})
    y = np.asarray(_update_trace(fig, "m").y, dtype=float)
    assert np.isfinite(y).all()
    step = fig.layout.yaxis.dtick
    decades = 0 - np.floor(np.log10(0.5e-31))  # from 10⁰ down to the dotted threshold line: 32 decades
    assert decades / step + 1 <= 10, step  # at most ten tick labels (it was one a decade: 33)
    # a short spectrum keeps one label a decade
    short = F.spectrum_curves(_curve_frame("m", np.array([1e-2, 3e-3, 1e-4])), thresholds={"m": 1e-7})
    assert short.layout.yaxis.dtick == 1


def _color_of(fig, name: str) -> str:
    t = next(t for t in fig.data if t.name == name)
    return t.marker.color if t.mode == "markers" else t.line.color


def test_a_module_kind_has_one_colour_on_every_chart():
    spectra_kinds = ["down", "gate", "up", "k", "o", "q", "v"]  # the singular values' order (by matrix name)
    scatter_kinds = ["lm_head", "embed", "down", "gate", "up", "k", "o", "q", "v"]  # the subspaces scatter's
    series_kinds = ["embed", "q", "k", "v", "o", "gate", "up", "down"]  # Series' (the module order)
    part = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj"}
    part |= {"gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
    names = {m: f"model.layers.2.{part[m]}.weight" for m in spectra_kinds}
    sigmas = pd.concat(
        [
            _curve_frame(names[m], np.array([1.0, 0.5, 0.25]), kind).assign(model="ft")
            for m in names
            for kind in ("update", "random")
        ]
    )
    shapes = pd.DataFrame(
        {"model": "ft", "name": list(names.values()), "module": list(names), "layer": 2, "rows": 8, "cols": 8}
    )
    spectra = F.model_spectra(sigmas, shapes, ["ft"])
    by_spectra = {m: _color_of(spectra, names[m]) for m in spectra_kinds}

    scatter_rows = pd.DataFrame(
        {"name": scatter_kinds, "module": scatter_kinds, "principal_overlap": 0.3, "principal_overlap_chance": 0.2}
    )
    scatter = sfig.principal_overlap_scatter(scatter_rows)
    by_scatter = {m: _color_of(scatter, m) for m in scatter_kinds}

    steps = pd.DataFrame({"step": 10, "module": series_kinds, "changed": 1, "numel": 10})
    series = F.module_series(steps)
    by_series = {m: _color_of(series, m) for m in series_kinds}

    for m in spectra_kinds:
        assert by_spectra[m] == by_scatter[m] == by_series[m], (m, by_spectra[m], by_scatter[m], by_series[m])
    for m in ("embed", "lm_head"):
        assert by_scatter[m] == by_series.get(m, by_scatter[m])
    # within a chart each kind a colour of its own (v and lm_head were both blue in the scatter, told apart by a
    # diamond marker only)
    assert len(set(by_scatter.values())) == len(scatter_kinds)
    assert len(set(by_series.values())) == len(series_kinds)


def test_at_every_layer_a_kind_keeps_its_colour_and_the_subtitle_says_so():
    # Layer = all: four down_proj matrices and a q_proj, each in its kind's colour (as at one layer, on Series)
    names = [f"model.layers.{i}.mlp.down_proj.weight" for i in range(4)] + ["model.layers.0.self_attn.q_proj.weight"]
    sigmas = pd.concat([_curve_frame(n, np.array([1.0, 0.5])).assign(model="ft") for n in names])
    kinds = ["down"] * 4 + ["q"]
    shapes = pd.DataFrame(
        {"model": "ft", "name": names, "module": kinds, "layer": [0, 1, 2, 3, 0], "rows": 4, "cols": 4}
    )
    fig = F.model_spectra(sigmas, shapes, ["ft"])
    one_layer = F.module_series(pd.DataFrame({"step": 1, "module": ["q", "down"], "changed": 1, "numel": 2}))
    assert {_color_of(fig, n) for n in names[:4]} == {_color_of(one_layer, "down")}
    assert _color_of(fig, names[4]) == _color_of(one_layer, "q") != _color_of(one_layer, "down")
    assert "colour: module kind" in fig.layout.title.text
