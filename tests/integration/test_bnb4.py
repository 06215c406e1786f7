"""bitsandbytes' 4-bit weights (NF4 with double quantisation, FP4, NF4 stored as bf16 words), saved by transformers
with bitsandbytes itself, read as the weights bitsandbytes' own dequantize_4bit gives.

Proves: a 4-bit weight is listed as ``q_proj.weight``, uint8 codes in the weight's shape (before: its packed
bytes, (n/2, 1), compared as codes, a bf16 base refused by name), its block scales as float32 (dequantised from
the nested 8-bit quantisation as bitsandbytes does); the effective weights are TYPE[code] × absmax, bit for bit
bitsandbytes' float32 dequantisation and, rounded, its bf16 one; a changed code counts once, a block's changed
absmax counts its nonzero weights, a changed nested absmax every block it scales; a bf16 model against its own
4-bit copy is compared entry by entry with the changed entries attributed to rounding; a LoRA adapter is not merged
onto 4-bit codes; a malformed quant_state is one line.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from subnetviz.analysis.quant import checkpoint_forms, effective, scale_values
from subnetviz.analysis.updates import analyze_updates
from subnetviz.checkpoints import open_checkpoint
from subnetviz.errors import CheckpointError
from tests.ckpt_fixtures import llama64, read_state_dict, write_folder

Q = "model.layers.0.self_attn.q_proj.weight"
KINDS = {  # name -> (quant type, double quantisation, storage dtype)
    "nf4": ("nf4", True, torch.uint8),
    "fp4": ("fp4", False, torch.uint8),
    "nf4-bf16": ("nf4", False, torch.bfloat16),
}


@pytest.fixture(scope="module")
def bnb(tmp_path_factory):
    """A tiny Llama (64 wide) saved as bf16, then loaded in 4 bits by transformers with bitsandbytes on the CPU and
    saved as transformers saves a 4-bit model."""
    import transformers as T

    root = tmp_path_factory.mktemp("bnb4")
    llama64(torch.bfloat16).save_pretrained(root / "bf16")
    out = {"bf16": root / "bf16"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (qt, nested, storage) in KINDS.items():
            q = T.BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=qt,
                bnb_4bit_use_double_quant=nested,
                bnb_4bit_compute_dtype=torch.bfloat16,
                bnb_4bit_quant_storage=storage,
            )
            model = T.AutoModelForCausalLM.from_pretrained(
                root / "bf16", quantization_config=q, dtype=torch.bfloat16, device_map="cpu"
            )
            model.save_pretrained(root / name)
            out[name] = root / name
    return out


def _theirs(sd: dict, name: str, dtype: torch.dtype) -> torch.Tensor:
    """bitsandbytes' own dequantisation of one stored weight, its quant state read as bitsandbytes reads it."""
    import bitsandbytes.functional as F

    parts = {k[len(name) + 1 :]: v.clone() for k, v in sd.items() if k.startswith(f"{name}.")}
    state = F.QuantState.from_dict(parts, device=torch.device("cpu"))
    state.dtype = dtype
    return F.dequantize_4bit(sd[name].clone(), state)


@pytest.mark.parametrize("name", list(KINDS))
def test_codes_and_effective_weights_are_bitsandbytes_own(bnb, name):
    qt, nested, _ = KINDS[name]
    ck = open_checkpoint(bnb[name])
    sd = read_state_dict(bnb[name])
    forms = checkpoint_forms(ck)
    weights = [n for n in ck.names if n.endswith("_proj.weight")]
    assert len(weights) == 14 and not any(".quant_state." in n for n in ck.names)
    assert any(f"stored as {qt.upper()} 4-bit codes" in n for n in ck.notes)
    for n in weights:
        assert ck.meta(n).shape == tuple(json.loads(bytes(sd[f"{n}.quant_state.bitsandbytes__{qt}"].numpy()))["shape"])
        form = forms[n]
        assert form.kind == "int8" and form.table == qt and form.group == 64 and form.label == f"bnb {qt} codes"
        codes, absmax = ck.get(n), scale_values(ck, form.scale, "cpu")
        assert codes.dtype == torch.uint8 and int(codes.max()) <= 15 and absmax.dtype == torch.float32
        ours = effective(codes, absmax, form, (128, 128), name=n)
        assert torch.equal(ours, _theirs(sd, n, torch.float32)), n
        assert torch.equal(ours.to(torch.bfloat16), _theirs(sd, n, torch.bfloat16)), n
    if nested:
        assert sd[f"{Q}.absmax"].dtype == torch.uint8  # (double quantisation: the scales are codes too)


def test_a_code_an_absmax_and_a_nested_absmax_count_the_weights_they_change(bnb, tmp_path):
    ck = open_checkpoint(bnb["nf4"])
    codes = ck.get(Q)
    sd = read_state_dict(bnb["nf4"])
    sd[Q].view(torch.uint8)[0, 0] ^= 0x10  # the first code (high nibble of the first byte): row 0, column 0
    sd[f"{Q}.absmax"][5] ^= 1  # block 5: row 5 (64 columns, one block per row), its scale's 8-bit code
    ft = write_folder(tmp_path / "ft", sd, bnb["nf4"])
    a = analyze_updates(str(bnb["nf4"]), [str(ft)], labels=["ft"])
    rep = a.reports[0]
    t = rep.tensors.set_index("name")
    nf4_zero = 7  # NF4's 0.0: a weight of code 7 is 0 whatever its scale
    expected = 1 + int((codes[5] != nf4_zero).sum())
    assert t.loc[Q, "changed"] == expected and t.loc[Q, "changed_codes"] == 1 and rep.changed == expected
    assert t.loc[Q, "numel"] == 64 * 64 and tuple(rep.masks[Q].shape) == (64, 64) and bool(rep.masks[Q][0, 0])
    assert any("bitsandbytes NF4 weights" in n and "NF4[code] × absmax[i, j // 64]" in n for n in a.notes), a.notes
    sd = read_state_dict(bnb["nf4"])
    sd[f"{Q}.nested_absmax"][0] *= 2  # scales every block of the tensor's first 256 (all 64 of them)
    ft2 = write_folder(tmp_path / "ft2", sd, bnb["nf4"])
    t2 = analyze_updates(str(bnb["nf4"]), [str(ft2)], labels=["ft"]).reports[0].tensors.set_index("name")
    absmax = ck.get(f"{Q}.absmax")
    moved = (codes != nf4_zero) & (
        absmax - float(json.loads(bytes(sd[f"{Q}.quant_state.bitsandbytes__nf4"].numpy()))["nested_offset"]) != 0
    )
    assert t2.loc[Q, "changed"] == int(moved.sum()) > 0 and t2.loc[Q, "changed_codes"] == 0


@pytest.mark.parametrize("name", ["fp4", "nf4"])
def test_a_bf16_model_against_its_4bit_copy_is_compared_and_its_rounding_attributed(bnb, name):
    a = analyze_updates(str(bnb["bf16"]), [str(bnb[name])], labels=[name])
    t = a.reports[0].tensors.set_index("name")
    assert t.loc[Q, "numel"] == 64 * 64 and t.loc[Q, "changed"] > 0
    note = next(n for n in a.notes if "Stored forms differ" in n)
    changed = int(t.loc[t.index.str.endswith("_proj.weight"), "changed"].sum())
    share = float(note.split(f"Of their {changed:,} changed entries, ")[1].split("(")[1].split("%")[0])
    # FP4 with float32 scales: every changed entry is the rounding; NF4's double quantisation moved the scales
    # the codes were chosen with, so a few are not
    assert share == 100.0 if name == "fp4" else share > 99.0, note


def test_an_adapter_is_not_merged_onto_4bit_codes(bnb, tmp_path):
    """A QLoRA adapter names the 4-bit base's weights: merging Δ onto their codes would be nonsense (before the
    codes were in the weight's shape its shape check refused it; now it is refused by name)."""
    import transformers as T
    from peft import LoraConfig, get_peft_model

    from subnetviz.checkpoints.adapters import open_finetune

    model = T.AutoModelForCausalLM.from_pretrained(bnb["bf16"])
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    assert open_finetune(str(tmp_path / "adapter"), open_checkpoint(bnb["bf16"])).names  # onto floats: merged
    with pytest.raises(
        CheckpointError,
        match=r"the adapter targets .*q_proj.weight \(and 1 more\), which the base .* "
        r"stores as quantized codes \(bitsandbytes nf4\)",
    ):
        open_finetune(str(tmp_path / "adapter"), open_checkpoint(bnb["nf4"]))


def test_a_malformed_quant_state_is_one_line(bnb, tmp_path):
    sd = read_state_dict(bnb["fp4"])
    key = f"{Q}.quant_state.bitsandbytes__fp4"
    state = json.loads(bytes(sd[key].numpy()))
    for edit, match in (
        ({"blocksize": 7}, "a blocksize among"),
        ({"shape": [64, -64]}, "a shape of positive integers"),
        ({"shape": [64, 128]}, r"2,048 bytes of 4-bit codes for the shape \(64, 128\)"),
        ({"quant_type": "nf4"}, "its quant_type is 'nf4', its name says 'fp4'"),
    ):
        bad = dict(sd)
        bad[key] = torch.frombuffer(bytearray(json.dumps({**state, **edit}).encode()), dtype=torch.uint8)
        with pytest.raises(CheckpointError, match=match):
            open_checkpoint(write_folder(tmp_path / f"bad{len(match)}", bad, bnb["fp4"]))
    bad = dict(sd)
    bad[key] = torch.frombuffer(bytearray(b"{not json"), dtype=torch.uint8)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        open_checkpoint(write_folder(tmp_path / "notjson", bad, bnb["fp4"]))
