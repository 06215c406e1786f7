"""Fixes of the sparsity numbers' sixth review (/tmp/review/sparsity6/REPORT.md).

Proves: the heatmaps' per-tensor mean leaves a 0-element tensor out (it entered as 100 % sparse: a cell whose one
real tensor is 75 % sparse read 87.5 %), as the summary's ``mean_tensor_sparsity`` does; and One matrix's signed Δ
image of bf16 weights going from 3e38 to -3e38 draws the finite Δ the analysis' largest |Δ| reports (it drew -inf,
the Δ taken in float32).
"""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import save_file

import subnetviz
from subnetviz.analysis.drill import matrix_update
from subnetviz.figures.matrix import delta_image


def _pair(tmp_path, base: dict, ft: dict):
    for side, tensors in (("base", base), ("ft", ft)):
        (tmp_path / side).mkdir()
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / side / "model.safetensors"))
    return str(tmp_path / "base"), str(tmp_path / "ft")


def test_a_0_element_tensor_is_left_out_of_the_per_tensor_mean(tmp_path):
    w = torch.ones(4, 4, dtype=torch.bfloat16)
    w2 = w.clone()
    w2[0, :] = 2.0  # 4 of 16 changed: 75 % sparse
    empty = torch.zeros(0, dtype=torch.bfloat16)
    q, b = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias"
    base, ft = _pair(tmp_path, {q: w, b: empty}, {q: w2, b: empty})
    report = subnetviz.analyze_updates(base, [ft], labels=["ft"], spectra=subnetviz.SpectraOptions(enabled=False))
    r = report.report("ft")
    cells = r.by_layer_module()
    assert r.summary()["mean_tensor_sparsity"] == 0.75
    assert list(cells["mean_sparsity"]) == [0.75], cells  # (was 0.875: the empty bias counted as 100 % sparse)
    assert list(cells["sparsity"]) == [0.75]


def test_the_delta_image_of_a_bf16_update_past_float32_s_range_is_finite(tmp_path):
    name = "model.layers.0.self_attn.o_proj.weight"
    w = torch.zeros(2, 2, dtype=torch.bfloat16)
    w[0, 0] = 3e38
    w2 = w.clone()
    w2[0, 0] = -3e38
    w2[1, 1] = 1.0
    base, ft = _pair(tmp_path, {name: w}, {name: w2})
    up = matrix_update(base, ft, name)
    want = np.array([[float(w2[0, 0]) - float(w[0, 0]), 0.0], [0.0, 1.0]])  # float64 by hand: -6.0e38
    np.testing.assert_array_equal(up.delta.sums, want)
    z = np.asarray(delta_image(up.delta).data[0].z, dtype=np.float64)
    assert np.isfinite(z).all(), z
    np.testing.assert_array_equal(z, want)
