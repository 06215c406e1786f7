"""AppTest of the mixture-of-experts sections of the Update sparsity and Overlap pages, on a tiny
Qwen2-MoE (2 layers × 4 routed experts + a shared expert, built by transformers) with planted
updates in two finetunes: the layer × expert heatmaps, the router bars, the per-expert table and the
experts' Jaccard heatmap show the planted numbers (hand-computed below), and a dense model draws no
Experts section."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from tests.ckpt_fixtures import bf16_step, gpt_oss_model, gpt_oss_mxfp4, read_state_dict, write_folder

APP = str(Path(__file__).resolve().parents[2] / "app.py")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("typed_options")]
E = "model.layers.{}.mlp.experts.{}.{}_proj.weight"
ROUTED = 3 * 8 * 16  # gate, up (8 × 16) and down (16 × 8) of one routed expert
SHARED = 3 * 16 * 16  # the shared expert's gate, up and down (intermediate 16)
ROUTER = 4 * 16  # mlp.gate (4 experts × 16); the shared_expert_gate (1 × 16) is no router
# Planted: tensor -> {finetune: (row, first column, entries moved one bf16 ULP)}
PLANT = {
    E.format(0, 1, "gate"): {"ft1": (2, 0, 5), "ft2": (2, 2, 5)},  # overlap: columns 2..4 (3 entries)
    E.format(1, 3, "down"): {"ft1": (4, 0, 7)},
    E.format(1, 2, "up"): {"ft2": (1, 0, 6)},
    "model.layers.1.mlp.shared_expert.up_proj.weight": {"ft1": (0, 0, 4)},
    "model.layers.0.mlp.gate.weight": {"ft1": (1, 0, 2)},
}


@pytest.fixture(scope="module")
def moe_home(app_env):
    """The tiny MoE pair inside the app's test home (under its allowed roots), beside the micro zoo."""
    import transformers as T

    home = app_env / "moe-pages"
    torch.manual_seed(0)
    cfg = T.Qwen2MoeConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=8,
        shared_expert_intermediate_size=16,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    T.Qwen2MoeForCausalLM(cfg).to(torch.bfloat16).save_pretrained(home / "base")
    for ft in ("ft1", "ft2"):
        sd = read_state_dict(home / "base")
        for name, plants in PLANT.items():
            if ft in plants:
                row, c0, n = plants[ft]
                sd[name][row, c0 : c0 + n] = bf16_step(sd[name][row, c0 : c0 + n], 1)
        write_folder(home / ft, sd, home / "base")
    yield home
    shutil.rmtree(home, ignore_errors=True)


def _open(page: str, home: Path, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["base"] = str(home / "base")  # folders, as a link to the page would carry them
    at.query_params["ft"] = [str(home / "ft1"), str(home / "ft2")]
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _charts(at) -> dict:
    out = {}
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        title = spec["layout"].get("title", {}).get("text", "")
        out[title] = spec
    return out


def _z(trace) -> np.ndarray:
    z = trace["z"]
    if isinstance(z, dict) and "bdata" in z:  # plotly's typed-array encoding
        a = np.frombuffer(base64.b64decode(z["bdata"]), dtype=np.dtype(z["dtype"]))
        return a.reshape([int(s) for s in z["shape"].split(",")]) if "shape" in z else a
    return np.array([[np.nan if v is None else v for v in row] for row in z], dtype=float)


def _planted(ft: str, layer: int, expert: str) -> int:
    part = "shared_expert." if expert == "shared" else f"experts.{expert}."
    return sum(p[ft][2] for name, p in PLANT.items() if ft in p and f"layers.{layer}.mlp.{part}" in name)


def test_update_sparsity_page_shows_the_planted_experts(moe_home):
    at = _open("sparsity", moe_home)
    # Several experts per layer × module cell: the per-tensor mean is a different average, and a live choice.
    avg = at.radio(key="sp_avg")
    assert avg.options == ["parameter-weighted", "per-tensor mean"] and not avg.disabled
    charts = _charts(at)
    experts = ["0", "1", "2", "3", "shared"]
    for ft in ("ft1", "ft2"):
        heat = next(s for t, s in charts.items() if t.startswith(f"{ft}: sparsity per expert"))["data"][0]
        assert list(heat["x"]) == ["E0", "E1", "E2", "E3", "shared"] and list(heat["y"]) == ["0", "1"]
        want = np.array(
            [
                [100 * (1 - _planted(ft, layer, e) / (SHARED if e == "shared" else ROUTED)) for e in experts]
                for layer in (0, 1)
            ]
        )
        assert np.allclose(_z(heat), want, rtol=0, atol=1e-9), ft
        assert (want < 100).sum() == {"ft1": 3, "ft2": 2}[ft]  # the planted cells, nothing else
    bars = next(s for t, s in charts.items() if t.startswith("Routers"))["data"]
    got = {b["name"]: [float(v) for v in _z({"z": b["y"]}).reshape(-1)] for b in bars}
    assert got["ft1"] == pytest.approx([100 * 2 / ROUTER, 0.0]) and got["ft2"] == [0.0, 0.0]
    table = next(d.value for d in at.dataframe if {"model", "layer", "expert", "changed"} <= set(d.value.columns))
    changed = table.set_index(["model", "layer", "expert"])["changed"]
    assert changed.sum() == 5 + 7 + 4 + 5 + 6 and changed[("ft1", 1, "3")] == 7 and changed[("ft2", 1, "2")] == 6


def test_overlap_page_shows_the_experts_jaccard(moe_home):
    at = _open("overlap", moe_home, ov_tab="Per layer")  # the tab of the per-layer views
    charts = _charts(at)
    heat = next(s for t, s in charts.items() if "Jaccard per layer × expert" in t)["data"][0]
    assert "Δ ft1 ∩ Δ ft2" in next(t for t in charts if "per layer × expert" in t)
    cells = dict(zip(heat["x"], _z(heat).T.tolist(), strict=True))  # column -> [layer 0, layer 1]
    # Layer 0, expert 1: ft1 changed columns 0..4 of row 2, ft2 columns 2..6: 3 shared of 7.
    assert cells["E1"][0] == pytest.approx(100 * 3 / 7)
    # Changed in one finetune only: Jaccard 0; nothing changed in either: no value (blank).
    assert cells["E3"][1] == 0.0 and cells["E2"][1] == 0.0 and cells["shared"][1] == 0.0
    assert np.isnan(cells["E1"][1]) and np.isnan(cells["E3"][0])
    assert "E0" not in cells  # an expert no mask touches has no column


def test_dense_model_has_no_experts_section(app_env):
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page("views/sparsity.py").run()
    assert not at.exception and not any("per expert" in t for t in _charts(at))
    assert "Experts" not in [h.value for h in at.subheader]


GPTOSS_E, GPTOSS_H, GPTOSS_I = 4, 32, 64
GU = "model.layers.{}.mlp.experts.gate_up_proj"


@pytest.fixture(scope="module")
def gptoss_home(app_env):
    """gpt-oss as it is released and finetuned: the base's experts in MXFP4 (4-bit codes + E8M0 scales, as the
    release stores them), two finetunes saved by transformers in bf16 from the dequantised weights, planted."""
    home = app_env / "gptoss-pages"
    model_cls, cfg = gpt_oss_model(hidden=GPTOSS_H, inter=GPTOSS_I, experts=GPTOSS_E, head_dim=8, vocab=64)
    torch.manual_seed(0)
    model_cls(cfg).to(torch.bfloat16).save_pretrained(home / "bf16")
    gpt_oss_mxfp4(home / "base", home / "bf16", scales=(120, 132))
    shutil.rmtree(home / "bf16")
    # ft1: expert 2 of layer 1, 5 gate entries (even columns) and 3 up (odd); ft2: expert 0 of layer 0, 4 up
    for ft, layer, expert, cols in (("ft1", 1, 2, [0, 2, 4, 6, 8, 1, 3, 5]), ("ft2", 0, 0, [1, 3, 5, 7])):
        model = model_cls.from_pretrained(home / "base")
        with torch.no_grad():
            w = dict(model.named_parameters())[GU.format(layer)]
            w[expert, 0, cols] = bf16_step(w[expert, 0, cols], 1)
        model.save_pretrained(home / ft)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_gpt_oss_in_mxfp4_against_its_bf16_finetunes(gptoss_home):
    """The Update sparsity page on an MXFP4 base: the experts read as transformers loads them, so only the
    planted entries count; gate and up are split as gpt-oss interleaves them; the per-expert heatmap puts
    them on their experts; the attention sinks are a module of their own; the Workspace says MXFP4."""
    at = _open("sparsity", gptoss_home)
    charts = _charts(at)
    per_param = GPTOSS_H * GPTOSS_I + GPTOSS_I  # one expert's gate (or up): weights and bias
    heat = next(s for t, s in charts.items() if t.startswith("ft1: sparsity per expert"))["data"][0]
    assert list(heat["x"]) == ["E0", "E1", "E2", "E3"] and list(heat["y"]) == ["0", "1"]
    expert = 2 * per_param + GPTOSS_I * GPTOSS_H + GPTOSS_H  # gate, up and down of one expert, with biases
    want = np.full((2, 4), 100.0)
    want[1, 2] = 100 * (1 - 8 / expert)
    assert np.allclose(_z(heat), want, rtol=0, atol=1e-9)
    module_heat = charts["ft1: sparsity (exact)"]["data"][0]
    cells = dict(zip(module_heat["x"], _z(module_heat).T.tolist(), strict=True))  # module -> [layer 0, layer 1]
    assert list(cells)[:7] == ["q", "k", "v", "o", "sinks", "gate", "up"] and {"down", "router"} <= set(cells)
    gate_up = 2 * GPTOSS_E * per_param
    assert cells["gate"][1] == pytest.approx(100 * (1 - 5 / (gate_up / 2)))
    assert cells["up"][1] == pytest.approx(100 * (1 - 3 / (gate_up / 2)))
    assert cells["gate"][0] == 100.0 and cells["sinks"] == [100.0, 100.0]
    ws = _open("workspace", gptoss_home)
    captions = [c.value.replace("\\", "").replace("\u200b", "") for c in ws.caption]  # escaped: shown as text
    assert any(c.startswith("base: MXFP4: 4 tensor(s)") for c in captions), captions
    table = ws.dataframe[0].value.set_index("label")
    experts = 2 * 3 * GPTOSS_E * GPTOSS_H * GPTOSS_I  # gate_up (2I) + down (I) of both layers
    assert table.loc["base", "stored dtype"].endswith(f"mxfp4 ({experts:,})")
    assert table.loc["ft1", "stored dtype"].startswith("bfloat16") and "mxfp4" not in table.loc["ft1", "stored dtype"]
    assert table.loc["base", "parameters"] == table.loc["ft1", "parameters"]  # counted as parameters, not bytes


def test_spectra_rank_view_pools_each_layers_experts(moe_home):
    """The rank view of an MoE pair (before: "rank_measure_heatmap: one row per (layer, module) is expected; 5
    rows for ('0', 'gate')", for every MoE model): a cell holds its experts' effective ranks summed over their
    summed min(m, n). Planted in ft1, layer 0: one row of expert 1's gate moved (a rank-1 Δ) and nothing else in
    that layer's gate matrices (4 experts of 8 × 16, the shared expert's 16 × 16): 1 / (4·8 + 16)."""
    at = _open("spectra", moe_home, spec_view="Effective and stable rank", spec_models=["ft1", "ft2"])
    charts = _charts(at)
    eff = next(spec for title, spec in charts.items() if title.startswith("ft1: effective rank"))
    trace = eff["data"][0]
    z = _z(trace)
    cell = z[list(trace["y"]).index("0"), list(trace["x"]).index("gate")]
    assert cell == pytest.approx(100 * 1 / (4 * 8 + 16))
    assert "matrices, summed" in trace["hovertemplate"]
    assert sum(1 for title in charts if "stable rank" in title) == 2
    caption = next(c.value for c in at.caption if c.value.startswith("Numerical rank"))
    # at most six named (an MoE model has thousands of matrices); the planted finetunes leave most unchanged,
    # which are said apart, not named as below full rank
    assert caption.count(" · ") <= 6 and "Unchanged (Δ = 0, rank 0): " in caption
