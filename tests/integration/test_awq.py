"""AWQ's 4-bit weights in AutoAWQ's GEMM layout, packed by AutoAWQ itself (``WQLinear_GEMM.from_linear``), read as
the weights AutoAWQ's own ``dequantize_gemm`` gives.

Proves: a layer stored as ``qweight`` / ``qzeros`` / ``scales`` (input-major, eight codes a word in AWQ's order)
is listed as ``q_proj.weight`` in the model's (out, in) layout (before: its words were compared as codes and a
float base had no layer paired with it, "not compared"), its zero points and scales transposed beside it; the
effective weights are (code − zero) × scale, exact in float32 and AutoAWQ's float16 once rounded; one changed code
counts once, a group's changed scale its nonzero (code − zero) weights, a changed zero point its whole group; the
float model against its AWQ copy is compared entry by entry; other AWQ layouts (GEMV) stay codes.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from subnetviz.analysis.quant import checkpoint_forms, effective, scale_values, zero_values
from subnetviz.analysis.updates import analyze_updates
from subnetviz.checkpoints import open_checkpoint
from tests.ckpt_fixtures import llama64, read_state_dict, write_folder

Q = "model.layers.0.self_attn.q_proj"
GROUP = 32
AWQ = {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True, "version": "gemm"}


@pytest.fixture(scope="module")
def awq(tmp_path_factory):
    """A tiny Llama (64 wide) saved in float16, and its linear layers packed by AutoAWQ's WQLinear_GEMM with
    scales and zero points from each group's min / max (what AWQ's quantiser computes after its search)."""

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from awq.modules.linear.gemm import WQLinear_GEMM

    root = tmp_path_factory.mktemp("awq")
    model = llama64(torch.float16)
    model.save_pretrained(root / "fp16")
    sd = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name == "lm_head":
            continue
        groups = module.weight.data.float().reshape(module.out_features, -1, GROUP)
        lo, hi = groups.amin(-1), groups.amax(-1)
        scales = (hi - lo).clamp(min=1e-5) / 15
        zeros = (-torch.round(lo / scales)).clamp(0, 15)
        packed = WQLinear_GEMM.from_linear(module.float(), 4, GROUP, scales=scales.t().contiguous(), zeros=zeros.t())
        sd.update({f"{name}.{k}": getattr(packed, k).contiguous() for k in ("qweight", "qzeros", "scales")})
    stems = {k.rsplit(".", 1)[0] for k in sd}
    sd.update({k: v for k, v in read_state_dict(root / "fp16").items() if k.rsplit(".", 1)[0] not in stems})
    write_folder(root / "awq", sd, root / "fp16", quantization_config=AWQ)
    return {"fp16": root / "fp16", "awq": root / "awq"}


def test_codes_and_effective_weights_are_autoawq_own(awq):
    from awq.utils.packing_utils import dequantize_gemm

    ck = open_checkpoint(awq["awq"])
    sd = read_state_dict(awq["awq"])
    forms = checkpoint_forms(ck)
    weights = [n for n in ck.names if n.endswith("_proj.weight")]
    assert len(weights) == 14 and not any(n.endswith(".qweight") for n in ck.names)
    assert any("AWQ: 14 weight(s)" in n for n in ck.notes)
    for n in weights:
        stem = n.removesuffix(".weight")
        form = forms[n]
        n_in, n_out = sd[f"{stem}.qweight"].shape[0], sd[f"{stem}.qweight"].shape[1] * 8
        assert ck.meta(n).shape == (n_out, n_in) and form.kind == "int8" and form.group == GROUP
        assert forms[f"{stem}.qzeros"].kind == forms[f"{stem}.scales"].kind == "scale"
        codes, scale, zero = ck.get(n), scale_values(ck, form.scale, "cpu"), zero_values(ck, form, "cpu")
        ours = effective(codes, scale, form, (128, 128), name=n, zero=zero)
        exact = (codes.double() - zero.double().repeat_interleave(GROUP, 1)) * scale.double().repeat_interleave(
            GROUP, 1
        )
        assert torch.equal(ours.double(), exact), n
        theirs = dequantize_gemm(sd[f"{stem}.qweight"], sd[f"{stem}.qzeros"], sd[f"{stem}.scales"], 4, GROUP)
        assert theirs.dtype == torch.float16 and torch.equal(ours.t().to(torch.float16), theirs), n


def test_a_code_a_scale_and_a_zero_point_count_the_weights_they_change(awq, tmp_path):
    ck = open_checkpoint(awq["awq"])
    codes, zero = ck.get(f"{Q}.weight"), ck.get(f"{Q}.qzeros")
    sd = read_state_dict(awq["awq"])
    sd[f"{Q}.qweight"][3, 0] ^= 1  # input 3, the word's first nibble: output column 0 (AWQ's order puts 0 first)
    sd[f"{Q}.scales"][1, 9] *= 2  # output 9, inputs 32..63
    ft = write_folder(tmp_path / "ft", sd, awq["awq"])
    a = analyze_updates(str(awq["awq"]), [str(ft)], labels=["ft"])
    rep = a.reports[0]
    t = rep.tensors.set_index("name")
    expected = 1 + int((codes[9, 32:64].int() != int(zero[9, 1])).sum())
    assert t.loc[f"{Q}.weight", "changed"] == expected and t.loc[f"{Q}.weight", "changed_codes"] == 1
    mask = rep.masks[f"{Q}.weight"]
    assert tuple(mask.shape) == (64, 64) and bool(mask[0, 3]) and int(mask[9, 32:64].sum()) == expected - 1
    assert any(
        "AWQ int4 weights" in n and "(w = (code − qzeros[i, j // 32]) × scales[i, j // 32]" in n for n in a.notes
    )
    sd = read_state_dict(awq["awq"])
    sd[f"{Q}.qzeros"][0, 0] ^= 1  # inputs 0..31's zero point of output column 0
    t2 = analyze_updates(str(awq["awq"]), [str(write_folder(tmp_path / "z", sd, awq["awq"]))], labels=["z"])
    t2 = t2.reports[0].tensors.set_index("name")
    assert t2.loc[f"{Q}.weight", "changed"] == GROUP and t2.loc[f"{Q}.weight", "changed_codes"] == 0


def test_the_float_model_against_its_awq_copy_is_compared_entry_by_entry(awq):
    a = analyze_updates(str(awq["fp16"]), [str(awq["awq"])], labels=["awq"])
    t = a.reports[0].tensors.set_index("name")
    assert t.loc[f"{Q}.weight", "numel"] == 64 * 64 and t.loc[f"{Q}.weight", "changed"] > 0
    assert not any("quantized integer codes" in n for n in a.notes), a.notes  # (every layer paired)
    note = next(n for n in a.notes if "Stored forms differ" in n)
    assert "float vs AWQ int4 codes" in note and "rounding, not training" in note


def test_other_awq_layouts_stay_codes(awq, tmp_path):
    gemv = write_folder(tmp_path / "gemv", read_state_dict(awq["awq"]), awq["awq"])
    cfg = json.loads((gemv / "config.json").read_text())
    cfg["quantization_config"]["version"] = "gemv"
    (gemv / "config.json").write_text(json.dumps(cfg))
    ck = open_checkpoint(gemv)
    assert f"{Q}.qweight" in ck.names and f"{Q}.weight" not in ck.names
    assert checkpoint_forms(ck)[f"{Q}.qweight"].kind == "codes"
