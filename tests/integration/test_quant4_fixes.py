"""Quantized checkpoints, fourth review (quant4): each exporter's own rounding, malformed quantized weights.

Every checkpoint here is written by the library itself (compressed-tensors' ``ModelCompressor``, NVIDIA ModelOpt's
``export_hf_checkpoint``, AutoAWQ's ``WQLinear_GEMM``, bitsandbytes' ``int8_vectorwise_quant``) from one tiny bf16
Llama, then, for the malformed cases, one tensor of one layer removed, cast or cut. Proves:

- a bf16 base against its own ModelOpt FP8 export is 100 % "rounding, not training": ModelOpt divides the bf16
  weight by a 0-dim float32 scale, which torch computes in bf16 (each value rounded to bf16, then to e4m3), and the
  requantisation now does the same (before: in float32, 287 of 7,149 changed entries, 4 %, blamed on training);
  compressed-tensors' FP8 stays 100 %.
- NVFP4 (compressed-tensors and ModelOpt) requantises E2M1 ties to the even code, as ``cast_to_fp4`` and
  ``NVFP4QTensor._cast_fp4`` do (before: to the lower value, 7 and 10 ties blamed on training).
- NVFP4 bytes without their global scale / scale_2 or FP8 scales (or with bf16 ones), AWQ words without scales or
  zero points or short of a whole group, are refused in one line naming the checkpoint and the tensor (before:
  left as stored, listed "in only one of the pair", sparsity 1.0 over the rest); a short NVFP4 ``weight_packed`` is
  blamed on itself (before: on its scale); a compressed-tensors int weight with a missing or integer
  ``weight_scale``, an FP8 weight with an integer scale (compressed-tensors', DeepSeek-V3-style ``weight_scale_inv``)
  and a bitsandbytes int8 weight with an integer ``SCB`` are refused naming the checkpoint and the scale (before:
  "codes without an effective form", naming neither; the integer scales read as values, 0.19 read 0).
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from subnetviz.analysis.quant import _e2m1_nearest_even, checkpoint_forms, scale_values
from subnetviz.analysis.updates import analyze_updates
from subnetviz.checkpoints import open_checkpoint
from subnetviz.checkpoints.nvfp4 import E2M1
from subnetviz.errors import CheckpointError
from tests.ckpt_fixtures import fp8_folder, one_layer_llama_config, read_state_dict, write_config_folder, write_folder
from tests.integration.test_awq import awq  # noqa: F401 - a fixture: AutoAWQ's own GEMM packing of a tiny Llama

Q = "model.layers.0.self_attn.q_proj"
MIDPOINTS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])  # between E2M1's magnitudes 0 … 6


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """The bf16 tiny Llama the exporters start from, and its copies by compressed-tensors (``ct_<preset>``) and
    ModelOpt (``mo_<algo>``)."""
    from tests.integration.test_compressed_tensors import _quantize
    from tests.integration.test_modelopt import _export
    from tests.models import tiny_model

    root = tmp_path_factory.mktemp("quant4")
    tiny_model("llama", seed=0, intermediate=64, kv_heads=2).to(torch.bfloat16).save_pretrained(root / "bf16")
    out = {"bf16": root / "bf16"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for preset in ("FP8", "NVFP4A16", "W8A8", "W4A16-g16", "MXFP4A16"):
            out[f"ct_{preset}"] = _quantize(root / f"ct_{preset}", preset)
        for algo in ("FP8", "NVFP4"):
            out[f"mo_{algo}"] = _export(root / f"mo_{algo}", algo)
    return out


def _rounding(notes: list[str]) -> tuple[int, int]:
    """(changed, rounding only) of the one 'Stored forms differ' note of a float side against a quantized one."""
    note = next(n for n in notes if "Stored forms differ" in n)
    found = re.search(r"Of their ([\d,]+) changed entries, ([\d,]+) \(", note)
    assert found, note
    return int(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))


# --- 1. FP8: ModelOpt's division in bf16 ---------------------------------------------------------------------------
def test_modelopt_fp8_codes_are_its_bf16_division_and_a_bf16_base_is_all_rounding(lib):
    base, sd = read_state_dict(lib["bf16"]), read_state_dict(lib["mo_FP8"])
    weights = [n for n in sd if n.endswith("_proj.weight")]
    float32_misses = 0
    for n in weights:
        w, s, code = base[n], sd[f"{n}_scale"], sd[n].view(torch.uint8)
        assert w.dtype == torch.bfloat16 and s.shape == () and s.dtype == torch.float32
        assert (w / s).dtype == torch.bfloat16  # (torch: a 0-dim float32 tensor does not widen a bf16 one)
        assert torch.equal((w / s).to(torch.float8_e4m3fn).view(torch.uint8), code), n  # ModelOpt's own codes
        float32_misses += int(((w.float() / s).to(torch.float8_e4m3fn).view(torch.uint8) != code).sum())
    assert len(weights) == 14 and float32_misses > 0  # (requantised in float32, these read as training)
    a = analyze_updates(str(lib["bf16"]), [str(lib["mo_FP8"])], labels=["mo"])
    changed, rounding = _rounding(a.notes)
    assert changed > float32_misses and rounding == changed


def test_compressed_tensors_fp8_copy_is_still_all_rounding(lib):
    a = analyze_updates(str(lib["bf16"]), [str(lib["ct_FP8"])], labels=["ct"])
    changed, rounding = _rounding(a.notes)
    assert changed > 0 and rounding == changed


# --- 2. NVFP4: E2M1 ties to even -----------------------------------------------------------------------------------
def test_e2m1_requantisation_rounds_as_compressed_tensors_and_modelopt(lib):
    from compressed_tensors.quantization.utils.fp4_utils import cast_to_fp4
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    g = torch.Generator().manual_seed(0)
    x = torch.cat([MIDPOINTS, -MIDPOINTS, torch.tensor([0.0, 6.0, -6.0, 7.5, -40.0]), torch.randn(4096, generator=g)])
    x = torch.cat([x, x * 4])
    ours = _e2m1_nearest_even(x, torch.from_numpy(E2M1))
    assert torch.equal(ours, cast_to_fp4(x.clone()))
    assert torch.equal(ours, torch.from_numpy(E2M1)[NVFP4QTensor._cast_fp4(x.clone()).long()])


@pytest.mark.parametrize("which", ["ct_NVFP4A16", "mo_NVFP4"])
def test_a_bf16_base_against_its_own_nvfp4_copy_is_all_rounding(lib, which):
    ck, base = open_checkpoint(lib[which]), open_checkpoint(lib["bf16"])
    ties = 0  # entries exactly between two E2M1 values: before, each read as training
    for name, form in checkpoint_forms(ck).items():
        if form.kind == "int8":
            x = base.get(name, "cpu").float() / scale_values(ck, form.scale, "cpu").repeat_interleave(16, 1)
            ties += int(torch.isin(x.abs(), MIDPOINTS).sum())
    assert ties > 0
    a = analyze_updates(str(lib["bf16"]), [str(lib[which])], labels=["nvfp4"])
    changed, rounding = _rounding(a.notes)
    assert changed > 0 and rounding == changed


# --- 3. malformed quantized weights: one line naming the checkpoint and the tensor --------------------------------
def _drop(part):
    return lambda sd, stem: sd.pop(f"{stem}.{part}")


def _cast(part, dtype):
    return lambda sd, stem: sd.__setitem__(f"{stem}.{part}", sd[f"{stem}.{part}"].to(dtype))


def _cut(part, dim):
    def cut(sd, stem):
        t = sd[f"{stem}.{part}"]
        sd[f"{stem}.{part}"] = (t[:, :-1] if dim else t[:-1]).contiguous()

    return cut


MALFORMED = {  # case: (source, edit, the tensor named, what is said)
    "nvfp4_global_missing": ("ct_NVFP4A16", _drop("weight_global_scale"), "weight_global_scale", ": missing"),
    "nvfp4_scale_missing": ("ct_NVFP4A16", _drop("weight_scale"), "weight_scale", ": missing"),
    "nvfp4_scale_bf16": ("ct_NVFP4A16", _cast("weight_scale", torch.bfloat16), "weight_scale", ": bfloat16"),
    "nvfp4_packed_short": ("ct_NVFP4A16", _cut("weight_packed", 1), "weight_packed (16, 7)", "not a whole number"),
    "modelopt_nvfp4_scale_2_missing": ("mo_NVFP4", _drop("weight_scale_2"), "weight_scale_2", ": missing"),
    "modelopt_nvfp4_scale_missing": ("mo_NVFP4", _drop("weight_scale"), "weight_scale", ": missing"),
    "modelopt_nvfp4_scale_bf16": ("mo_NVFP4", _cast("weight_scale", torch.bfloat16), "weight_scale", ": bfloat16"),
    "awq_scales_missing": ("awq", _drop("scales"), "scales", ": missing"),
    "awq_qzeros_missing": ("awq", _drop("qzeros"), "qzeros", ": missing"),
    "awq_qweight_short": ("awq", _cut("qweight", 0), "qweight (63, 8)", "not a whole number of groups of 32"),
    "awq_qweight_int16": ("awq", _cast("qweight", torch.int16), "qweight", ": int16"),
    "ct_int8_scale_missing": ("ct_W8A8", _drop("weight_scale"), "weight_scale", "is missing"),
    "ct_int8_scale_int32": ("ct_W8A8", _cast("weight_scale", torch.int32), "weight_scale", "is int32"),
    "ct_int4_scale_missing": ("ct_W4A16-g16", _drop("weight_scale"), "weight_scale", "is missing"),
    "ct_int4_scale_int16": ("ct_W4A16-g16", _cast("weight_scale", torch.int16), "weight_scale", "is int16"),
    "ct_fp8_scale_int32": ("ct_FP8", _cast("weight_scale", torch.int32), "weight_scale", "is int32"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_quantized_weight_is_refused_naming_checkpoint_and_tensor(lib, awq, tmp_path, case):  # noqa: F811
    source, edit, tensor, said = MALFORMED[case]
    src = awq["awq"] if source == "awq" else lib[source]
    sd = read_state_dict(src)
    edit(sd, Q)
    bad = write_folder(tmp_path / case, sd, src)
    with pytest.raises(CheckpointError) as err:
        analyze_updates(str(src), [str(bad)], labels=["bad"])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: ") and f"{Q}.{tensor}" in msg and said in msg, msg
    if case == "nvfp4_packed_short":  # (the bytes are short, not the scale)
        assert "expected its FP8 weight_scale" not in msg, msg


def test_compressed_tensors_mxfp4_bytes_stay_codes(lib):
    """MXFP4 bytes (uint8 ``weight_packed`` with E8M0 scales, no global scale) are not taken for NVFP4."""
    forms = checkpoint_forms(open_checkpoint(lib["ct_MXFP4A16"]))
    assert forms[f"{Q}.weight_packed"].kind == "codes"


def test_a_deepseek_style_fp8_scale_stored_as_integers_is_refused(lib, tmp_path):
    """Block FP8 (``weight_scale_inv``, quant_method fp8): the finetune's codes are the base's, its scales the same
    values stored as int32 (before: read as values, 0.19 read 0, every weight of the tensor counted changed); refused
    from the header, as its form is decided."""
    base = fp8_folder(lib["bf16"], tmp_path / "fp8")
    sd = read_state_dict(base)
    sd[f"{Q}.weight_scale_inv"] = (sd[f"{Q}.weight_scale_inv"] * 1000).to(torch.int32)
    bad = write_folder(tmp_path / "int", sd, base)
    with pytest.raises(CheckpointError) as err:
        analyze_updates(str(base), [str(bad)], labels=["int"])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: ") and f"{Q}.weight_scale_inv" in msg and "int32" in msg, msg
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(bad))}: scale '{Q}.weight_scale_inv' .* is int32"):
        checkpoint_forms(open_checkpoint(bad))  # (from its header, before any scale is read)


def test_a_bitsandbytes_int8_scb_stored_as_integers_is_refused(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import bitsandbytes.functional as F

    torch.manual_seed(0)
    codes, scb, _ = F.int8_vectorwise_quant((torch.randn(64, 64) * 0.02).to(torch.bfloat16))
    p = "model.layers.0.mlp.up_proj"
    quant = one_layer_llama_config({"quant_method": "bitsandbytes", "load_in_8bit": True})
    base = write_config_folder(tmp_path / "base", {f"{p}.weight": codes, f"{p}.SCB": scb}, quant)
    bad = write_config_folder(tmp_path / "bad", {f"{p}.weight": codes, f"{p}.SCB": (scb * 1000).to(torch.int32)}, quant)
    with pytest.raises(CheckpointError) as err:
        analyze_updates(str(base), [str(bad)], labels=["bad"])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: ") and f"{p}.SCB" in msg and "int32" in msg, msg
