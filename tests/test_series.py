"""Checkpoint series on planted bit patterns: every count is known by construction."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from subnetviz.analysis.series import checkpoint_series
from subnetviz.errors import ConfigError
from subnetviz.report.dashboard import analysis_report


def _write(path, tensors):
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return str(path)


def test_series_planted(tmp_path):
    base = torch.zeros(10, 10, dtype=torch.bfloat16)
    bias = torch.zeros(5, dtype=torch.bfloat16)
    v1 = base.clone()
    v1.view(-1)[:30] = 1.0  # 30 entries move at step 1
    v2 = v1.clone()
    v2.view(-1)[:10] = 0.0  # 10 of them come back to the initial value at step 2
    v2.view(-1)[90:95] = 2.0  # 5 new ones move
    b2 = bias.clone()
    b2[0] = 1.0
    paths = [
        _write(tmp_path / "c0", {"model.layers.0.mlp.up_proj.weight": base, "model.norm.weight": bias}),
        _write(tmp_path / "c1", {"model.layers.0.mlp.up_proj.weight": v1, "model.norm.weight": bias}),
        _write(tmp_path / "c2", {"model.layers.0.mlp.up_proj.weight": v2, "model.norm.weight": b2}),
    ]
    res = checkpoint_series(paths, [0, 100, 200])
    n = 105
    s = res.steps
    assert list(s["step"]) == [100, 200]
    assert list(s["changed_vs_first"]) == [30, 20 + 5 + 1]
    assert list(s["changed_vs_previous"]) == [30, 10 + 5 + 1]
    assert s["vs_first"].tolist() == pytest.approx([1 - 30 / n, 1 - 26 / n])
    assert s["ever_updated"].tolist() == pytest.approx([0.0, 10 / n])
    split = dict(zip(res.split["part"], res.split["count"], strict=True))
    assert split == {"never updated": n - 36, "updated, unchanged at the end": 10, "final subnetwork": 26}
    assert res.split["share"].sum() == pytest.approx(1.0)


def test_series_needs_two(tmp_path):
    p = _write(tmp_path / "c0", {"w": torch.zeros(2, dtype=torch.bfloat16)})
    with pytest.raises(ConfigError, match="at least two"):
        checkpoint_series([p])


def test_report_cli_writes_self_contained_html(tmp_path):
    from subnetviz.analysis.updates import analyze_updates, write_analysis

    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.standard_normal((8, 6)).astype(np.float32)).to(torch.bfloat16)
    w2 = w.clone()
    w2.view(-1)[:7] += 0.25
    base = _write(tmp_path / "b", {"model.layers.0.self_attn.q_proj.weight": w})
    ft = _write(tmp_path / "f", {"model.layers.0.self_attn.q_proj.weight": w2})
    out = write_analysis(analyze_updates(base, [ft, ft], labels=["a", "b"]), tmp_path / "out")
    html = analysis_report(out, tmp_path / "dash.html").read_text()
    lib_end = html.index("</script>")  # the first script is plotly.js itself (URLs inside are string constants)
    rest = html[lib_end:]
    assert "<script src" not in html and 'href="http' not in rest and "<link" not in rest  # opens offline
    assert html.count('class="figure"') >= 5  # two heatmaps, sweep, ULPs, special tensors (+ spectra, overlap)
    assert "Overlap of update masks" in html and "q" in html
    with pytest.raises(ConfigError, match="not an analysis folder"):
        analysis_report(tmp_path, tmp_path / "x.html")
