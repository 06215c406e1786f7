"""Checkpoints exported by NVIDIA ModelOpt (``quant_method: modelopt``: NVIDIA's FP8 and NVFP4 releases).

Proves: a tiny Llama quantized (calibrated on a few batches) and exported by ModelOpt itself reads as
FP8 codes with their per-tensor ``weight_scale`` (effective w = code × scale, the single rounding of the
exact product) or as NVFP4 packed codes, every scale (``weight_scale`` in FP8, ``weight_scale_2``,
``input_scale``) listed with the scales; one flipped code counts once, and one changed per-tensor scale
changes exactly that tensor's nonzero codes effectively. Before: ``modelopt`` was refused as an unknown
quantization method.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from subnetviz.analysis.quant import effective, tensor_forms
from subnetviz.analysis.updates import analyze_updates
from subnetviz.checkpoints import open_checkpoint
from tests.ckpt_fixtures import read_state_dict, write_folder

Q = "model.layers.0.self_attn.q_proj"


def _export(folder, algo: str):
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint

    from tests.models import tiny_model

    model = tiny_model("llama", seed=0, intermediate=64, kv_heads=2).to(torch.bfloat16)
    model.config.architectures = ["LlamaForCausalLM"]
    cfg = {"FP8": mtq.FP8_DEFAULT_CFG, "NVFP4": mtq.NVFP4_DEFAULT_CFG}[algo]

    def calibrate(m):
        for seed in range(4):
            m(torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(seed)))

    export_hf_checkpoint(mtq.quantize(model, cfg, calibrate), export_dir=folder)
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("modelopt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {algo: _export(root / algo, algo) for algo in ("FP8", "NVFP4")}


@pytest.mark.parametrize("algo, dtype, kind", [("FP8", torch.float8_e4m3fn, "fp8"), ("NVFP4", torch.uint8, "int8")])
def test_modelopt_exports_are_read_and_one_code_counts_once(exported, tmp_path, algo, dtype, kind):
    ck = open_checkpoint(exported[algo])
    assert ck.config["quantization_config"]["quant_method"] == "modelopt"
    forms = tensor_forms({n: ck.meta(n) for n in ck.names}, ck.config)
    weights = [n for n in ck.names if n.endswith("_proj.weight")]
    assert len(weights) == 14 and {ck.meta(n).dtype for n in weights} == {dtype}
    assert {forms[n].kind for n in weights} == {kind}
    scales = [n for n in ck.names if n.rpartition(".")[2] in ("weight_scale", "weight_scale_2", "input_scale")]
    assert scales and {forms[n].kind for n in scales} == {"scale"}
    assert {f.kind for f in forms.values()} <= {"float", "fp8", "int8", "scale"}
    sd = read_state_dict(exported[algo])
    sd[f"{Q}.weight"].view(torch.uint8)[2, 1] ^= 0x01
    ft = write_folder(tmp_path / "ft", sd, exported[algo])
    rep = analyze_updates(str(exported[algo]), [str(ft)], labels=["ft"]).reports[0]
    t = rep.tensors.set_index("name")
    assert t.loc[f"{Q}.weight", "changed"] == 1 and rep.changed == 1 and set(weights) <= set(t.index)


def test_modelopt_fp8_effective_weights_and_a_changed_scale(exported, tmp_path):
    ck = open_checkpoint(exported["FP8"])
    forms = tensor_forms({n: ck.meta(n) for n in ck.names}, ck.config)
    for n in [n for n in ck.names if n.endswith("_proj.weight")]:
        code, scale = ck.get(n), ck.get(f"{n}_scale")
        assert scale.shape == () and scale.dtype == torch.float32
        ours = effective(code, scale, forms[n], (128, 128), name=n)
        assert torch.equal(ours, (code.double() * scale.double()).float()), n  # the exact product, rounded once
    sd = read_state_dict(exported["FP8"])
    sd[f"{Q}.weight_scale"] *= 2
    ft = write_folder(tmp_path / "ft", sd, exported["FP8"])
    t = analyze_updates(str(exported["FP8"]), [str(ft)], labels=["ft"]).reports[0].tensors.set_index("name")
    nonzero = int((sd[f"{Q}.weight"].float() != 0).sum())
    assert t.loc[f"{Q}.weight", "changed_codes"] == 0 and t.loc[f"{Q}.weight", "changed"] == nonzero > 0
