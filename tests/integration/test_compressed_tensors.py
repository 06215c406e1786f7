"""Checkpoints written by compressed-tensors (llm-compressor's format, vLLM's quantized releases).

Proves: a tiny Llama quantized and saved by compressed-tensors itself in four of its formats (int8
W8A8 ``int-quantized``, int4 ``pack-quantized``, ``nvfp4-pack-quantized``, FP8 ``float-quantized``) has
every quantized weight compared and counted as a weight (before: their integer codes were read as
buffers, left out of the sparsity, and NVFP4's FP8 scales were refused as FP8 weights without a scale);
scales, zero points, global scales and ``weight_shape`` (where the words are not unpacked:
test_compressed_tensors_packed.py) are listed with the scales; one flipped code
counts once; the int8 effective weights are exact (float32) and equal compressed-tensors' own dequantisation
rounded to its bf16, and a changed
per-channel scale changes exactly the nonzero codes of its row.
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
FORMATS = {  # preset (or int4 with groups of 16: the tiny model is 16 wide) -> the weight's name and dtype as listed
    "W8A8": ("weight", torch.int8),
    "W4A16-g16": ("weight", torch.int8),  # stored as int32 words (weight_packed), listed unpacked (ct_packed)
    "NVFP4A16": ("weight", torch.uint8),  # stored as bytes (weight_packed), listed as codes (checkpoints.nvfp4)
    "FP8": ("weight", torch.float8_e4m3fn),
    "MXFP8A16": ("weight", torch.float8_e4m3fn),  # E8M0 (uint8) scales per group of 32 (a 64-wide model)
}
# where the stored tensor has another name than the listed one
STORED = {"W4A16-g16": "weight_packed", "NVFP4A16": "weight_packed"}


def _scheme(name: str):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme, preset_name_to_scheme

    if name == "W4A16-g16":
        args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=16)
        return QuantizationScheme(targets=["Linear"], weights=args)
    return preset_name_to_scheme(name, ["Linear"])


def _quantize(folder, name: str):
    """A tiny Llama quantized with ``name`` and written by compressed-tensors' own compressor; the scales
    from each weight's min/max by compressed-tensors' calculate_qparams (what an observer would give)."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam

    from tests.models import tiny_model

    if name.startswith("MX"):  # groups of 32: a wider model
        import transformers as T

        torch.manual_seed(0)
        cfg = T.LlamaConfig(
            vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
        )
        model = T.LlamaForCausalLM(cfg).to(torch.bfloat16)
    else:
        model = tiny_model("llama", seed=0, intermediate=64, kv_heads=2).to(torch.bfloat16)
    apply_quantization_config(model, QuantizationConfig(config_groups={"g": _scheme(name)}, ignore=["lm_head"]))
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or scheme.weights is None:
            continue
        w, args = module.weight.data.float(), scheme.weights
        if args.strategy in ("group", "tensor_group"):
            groups = w.reshape(w.shape[0], -1, args.group_size)
            lo, hi = groups.amin(-1), groups.amax(-1)
        elif args.strategy == "channel":
            lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        else:
            lo, hi = w.amin().reshape(1), w.amax().reshape(1)
        gs = None
        if hasattr(module, "weight_global_scale"):
            gs = generate_gparam(w.amin(), w.amax())
            module.weight_global_scale.data.copy_(gs.reshape(module.weight_global_scale.shape))
        scale, zero = calculate_qparams(lo, hi, args, global_scale=gs)
        module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape).to(module.weight_scale.dtype))
        if hasattr(module, "weight_zero_point"):
            module.weight_zero_point.data.copy_(zero.reshape(module.weight_zero_point.shape))
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(folder)
    compressor.update_config(str(folder))
    return folder


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    root = tmp_path_factory.mktemp("compressed-tensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: _quantize(root / name, name) for name in FORMATS}


@pytest.mark.parametrize("name", list(FORMATS))
def test_quantized_weights_are_weights_and_one_flipped_code_counts_once(ct, tmp_path, name):
    last, dtype = FORMATS[name]
    ck = open_checkpoint(ct[name])
    assert ck.config["quantization_config"]["quant_method"] == "compressed-tensors"
    weights = [n for n in ck.names if n.endswith(f"_proj.{last}")]
    assert len(weights) == 14 and all(ck.meta(n).dtype == dtype for n in weights)  # 7 projections × 2 layers
    forms = tensor_forms({n: ck.meta(n) for n in ck.names}, ck.config)
    assert {forms[n].kind for n in weights} <= {"int8", "codes", "fp8"}
    aux = [n for n in ck.names if n.rpartition(".")[2].startswith(("weight_scale", "weight_zero", "weight_global"))]
    assert aux and {forms[n].kind for n in aux} == {"scale"}
    assert {f.kind for f in forms.values()} <= {"float", "int8", "codes", "fp8", "scale"}  # no buffer at all
    if name == "MXFP8A16":  # (before: refused, its (rows, cols / 32) scales not 128 × 128 blocks)
        assert ck.meta(f"{Q}.weight_scale").dtype == torch.uint8 and forms[f"{Q}.weight"].kind == "fp8"
    sd = read_state_dict(ct[name])
    code = sd[f"{Q}.{STORED.get(name, last)}"]
    code.view(torch.uint8)[1, 0] ^= 0x40  # one stored code (one byte of a packed int)
    ft = write_folder(tmp_path / "ft", sd, ct[name])
    rep = analyze_updates(str(ct[name]), [str(ft)], labels=["ft"]).reports[0]
    t = rep.tensors.set_index("name")
    assert set(weights) <= set(t.index)  # every quantized weight is a row of the weights' table
    assert t.loc[f"{Q}.{last}", "changed"] == 1 and rep.changed == 1
    assert rep.numel == int(t["numel"].sum()) and rep.numel > sum(ck.meta(n).numel for n in ck.names if "norm" in n)


def test_int8_effective_weights_are_compressed_tensors_own(ct, tmp_path):
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    ck = open_checkpoint(ct["W8A8"])
    forms = tensor_forms({n: ck.meta(n) for n in ck.names}, ck.config)
    form = forms[f"{Q}.weight"]
    assert form.kind == "int8" and form.scale == f"{Q}.weight_scale"
    args = QuantizationArgs(**ck.config["quantization_config"]["config_groups"]["group_0"]["weights"])
    for n in [n for n in ck.names if n.endswith("_proj.weight")]:
        scale = ck.get(f"{n}_scale")
        ours = effective(ck.get(n), scale, forms[n], (1, 1), name=n)  # float32, exact
        assert torch.equal(ours.double(), ck.get(n).double() * scale.double()), n
        theirs = dequantize(ck.get(n), scale, None, args)  # in the scale's dtype (bf16): ours, rounded once
        assert theirs.dtype == torch.bfloat16 and torch.equal(ours.to(torch.bfloat16), theirs), n
    # One row's scale changed: its codes are the same, its effective weights change where the code is not 0.
    sd = read_state_dict(ct["W8A8"])
    sd[f"{Q}.weight_scale"][3] *= 2
    ft = write_folder(tmp_path / "ft", sd, ct["W8A8"])
    a = analyze_updates(str(ct["W8A8"]), [str(ft)], labels=["ft"])
    t = a.reports[0].tensors.set_index("name")
    nonzero = int((sd[f"{Q}.weight"][3] != 0).sum())
    assert t.loc[f"{Q}.weight", "changed_codes"] == 0 and t.loc[f"{Q}.weight", "changed"] == nonzero > 0
    assert any("compressed-tensors int8 weights" in n and "code × weight_scale[i]" in n for n in a.notes)


def test_mxfp8_effective_weights_are_compressed_tensors_own(ct, tmp_path):
    """MXFP8: w = code × 2^(s − 127) per group of 32 along a row, exact in float32, as compressed-tensors
    dequantises it; one changed exponent doubles its group's nonzero weights and changes nothing else."""
    from compressed_tensors.compressors.mx_utils import decompress_mx_scale
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    from subnetviz.analysis.quant import block_size, scale_values

    ck = open_checkpoint(ct["MXFP8A16"])
    forms = tensor_forms({n: ck.meta(n) for n in ck.names}, ck.config)
    args = QuantizationArgs(**ck.config["quantization_config"]["config_groups"]["group_0"]["weights"])
    assert block_size(ck.config) == (1, 32)
    for n in [n for n in ck.names if n.endswith("_proj.weight")]:
        ours = effective(ck.get(n), scale_values(ck, f"{n}_scale", "cpu"), forms[n], (1, 32), name=n)
        theirs = dequantize(ck.get(n), decompress_mx_scale(ck.get(f"{n}_scale")), None, args, dtype=torch.float32)
        assert torch.equal(ours, theirs), n
    sd = read_state_dict(ct["MXFP8A16"])
    sd[f"{Q}.weight_scale"][5, 1] += 1
    ft = write_folder(tmp_path / "ft", sd, ct["MXFP8A16"])
    t = analyze_updates(str(ct["MXFP8A16"]), [str(ft)], labels=["ft"]).reports[0].tensors.set_index("name")
    nonzero = int((sd[f"{Q}.weight"][5, 32:64].float() != 0).sum())
    assert t.loc[f"{Q}.weight", "changed_codes"] == 0 and t.loc[f"{Q}.weight", "changed"] == nonzero > 0
    assert t["changed"].sum() == nonzero and t["changed_codes"].sum() == 0


def test_mxfp8_bad_scales_and_config_groups_are_one_line(ct, tmp_path):
    from subnetviz.analysis.quant import block_size
    from subnetviz.errors import CheckpointError

    sd = read_state_dict(ct["MXFP8A16"])
    sd[f"{Q}.weight_scale"][7, 0] = 255
    bad = write_folder(tmp_path / "nan", sd, ct["MXFP8A16"])
    with pytest.raises(
        CheckpointError, match=rf"scale '{Q}.weight_scale' holds the byte 255 \(NaN in E8M0\) at \(7, 0\)"
    ):
        analyze_updates(str(ct["MXFP8A16"]), [str(bad)])
    fp8 = {"type": "float", "num_bits": 8}
    groups = {
        "a": {"weights": {**fp8, "strategy": "group", "group_size": 32}},
        "b": {"weights": {**fp8, "strategy": "block", "block_structure": [128, 128]}},
    }
    with pytest.raises(CheckpointError, match="several block sizes"):
        block_size({"quantization_config": {"quant_method": "compressed-tensors", "config_groups": groups}})
    int4 = {"weights": {"type": "int", "num_bits": 4, "strategy": "group", "group_size": 16}}
    assert block_size({"quantization_config": {"config_groups": {"a": int4}}}) == (128, 128)  # no FP8 group
