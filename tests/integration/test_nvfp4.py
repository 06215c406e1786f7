"""NVFP4 weights written by compressed-tensors (``nvfp4-pack-quantized``) and by NVIDIA ModelOpt, read as the weights
their own dequantisation gives.

Proves: the packed bytes are listed as ``q_proj.weight`` codes in the weight's shape (before: compared as bytes,
two codes an entry, and a scale change counted nothing), the FP8 block scales as float32 with the tensor-wide
factor applied as each exporter applies it (compressed-tensors divides by its global scale, ModelOpt multiplies by
scale_2); the effective weights are E2M1[code] × scale, bit for bit ModelOpt's float32 dequantisation and
compressed-tensors' bf16 one once rounded; a block's changed FP8 scale counts the block's nonzero weights, a
changed tensor-wide factor every nonzero weight; a scale that does not fit its weight is one line.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from subnetviz.analysis.quant import checkpoint_forms, effective, scale_values
from subnetviz.analysis.updates import analyze_updates
from subnetviz.checkpoints import open_checkpoint
from subnetviz.errors import CheckpointError
from tests.ckpt_fixtures import read_state_dict, write_folder

Q = "model.layers.0.self_attn.q_proj"
STORED = {"ct": "weight_packed", "modelopt": "weight"}  # the stored bytes' name
FACTOR = {"ct": "weight_global_scale", "modelopt": "weight_scale_2"}


@pytest.fixture(scope="module")
def nvfp4(tmp_path_factory):
    from tests.integration.test_compressed_tensors import _quantize
    from tests.integration.test_modelopt import _export

    root = tmp_path_factory.mktemp("nvfp4")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"ct": _quantize(root / "ct", "NVFP4A16"), "modelopt": _export(root / "modelopt", "NVFP4")}


def _theirs(kind: str, sd: dict, stem: str, shape) -> torch.Tensor:
    if kind == "ct":
        from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
        from compressed_tensors.quantization import preset_name_to_scheme

        local = {k[len(stem) + 1 :]: v for k, v in sd.items() if k.startswith(f"{stem}.")}
        return NVFP4PackedCompressor.decompress(local, preset_name_to_scheme("NVFP4A16", ["Linear"]))["weight"]
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    q = NVFP4QTensor(torch.Size(shape), torch.float32, sd[f"{stem}.weight"])
    scale, scale_2 = sd[f"{stem}.weight_scale"], sd[f"{stem}.weight_scale_2"]
    return q.dequantize(dtype=torch.float32, scale=scale, double_scale=scale_2, block_sizes={-1: 16})


@pytest.mark.parametrize("kind", ["ct", "modelopt"])
def test_codes_and_effective_weights_are_the_exporters_own(nvfp4, kind):
    ck = open_checkpoint(nvfp4[kind])
    sd = read_state_dict(nvfp4[kind])
    forms = checkpoint_forms(ck)
    weights = [n for n in ck.names if n.endswith("_proj.weight")]
    assert len(weights) == 14 and not any(n.endswith("weight_packed") for n in ck.names)
    assert any("NVFP4: 14 weight(s)" in n for n in ck.notes)
    for n in weights:
        stem = n.removesuffix(".weight")
        form, stored = forms[n], sd[f"{stem}.{STORED[kind]}"]
        assert ck.meta(n).shape == (stored.shape[0], 2 * stored.shape[1]) and ck.meta(n).dtype == torch.uint8
        assert form.kind == "int8" and form.table == "e2m1" and form.group == 16
        assert forms[f"{stem}.weight_scale"].kind == "scale" and ck.meta(f"{stem}.weight_scale").dtype == torch.float32
        ours = effective(ck.get(n), scale_values(ck, form.scale, "cpu"), form, (128, 128), name=n)
        theirs = _theirs(kind, sd, stem, ck.meta(n).shape)
        assert torch.equal(ours.to(theirs.dtype), theirs), n
        if kind == "modelopt":  # (its float32 dequantisation: ours exactly)
            assert theirs.dtype == torch.float32


@pytest.mark.parametrize("kind", ["ct", "modelopt"])
def test_a_block_scale_and_the_tensor_wide_factor_count_the_weights_they_move(nvfp4, tmp_path, kind):
    ck = open_checkpoint(nvfp4[kind])
    codes = ck.get(f"{Q}.weight")
    nonzero = (codes & 0x7) != 0  # E2M1's two zeros: codes 0 and 8
    sd = read_state_dict(nvfp4[kind])
    s = sd[f"{Q}.weight_scale"]
    s.view(torch.uint8)[1, 0] += 1  # row 1's first block: its FP8 scale one step up
    sd[f"{Q}.{STORED[kind]}"].view(torch.uint8)[0, 0] ^= 0x01  # row 0, column 0's code (the low nibble)
    a = analyze_updates(str(nvfp4[kind]), [str(write_folder(tmp_path / "ft", sd, nvfp4[kind]))], labels=["ft"])
    rep = a.reports[0]
    t = rep.tensors.set_index("name")
    expected = 1 + int(nonzero[1, :16].sum())
    assert t.loc[f"{Q}.weight", "changed"] == expected and t.loc[f"{Q}.weight", "changed_codes"] == 1
    assert bool(rep.masks[f"{Q}.weight"][0, 0]) and int(rep.masks[f"{Q}.weight"][1, :16].sum()) == expected - 1
    assert any("NVFP4 weights" in n and "E2M1[code] × weight_scale[i, j // 16]" in n for n in a.notes), a.notes
    sd = read_state_dict(nvfp4[kind])
    sd[f"{Q}.{FACTOR[kind]}"] *= 2
    t2 = analyze_updates(str(nvfp4[kind]), [str(write_folder(tmp_path / "f2", sd, nvfp4[kind]))], labels=["f"])
    t2 = t2.reports[0].tensors.set_index("name")
    assert t2.loc[f"{Q}.weight", "changed"] == int(nonzero.sum()) and t2.loc[f"{Q}.weight", "changed_codes"] == 0


def test_a_scale_that_does_not_fit_its_weight_is_one_line(nvfp4, tmp_path):
    sd = read_state_dict(nvfp4["modelopt"])
    sd[f"{Q}.weight_scale"] = sd[f"{Q}.weight_scale"][:, :0].contiguous()
    with pytest.raises(CheckpointError, match=rf"{Q}.weight .*: expected its FP8 weight_scale to be"):
        open_checkpoint(write_folder(tmp_path / "bad", sd, nvfp4["modelopt"]))
