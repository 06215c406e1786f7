"""compressed-tensors' packed integer weights (``pack-quantized``: W4A16, W8A16, asymmetric W4A16 with packed zero
points, W2A16), written by compressed-tensors itself, read as the weights its own decompressor gives.

Proves: a packed weight is listed under the model's own name and shape (``q_proj.weight``, int8 codes: 4-bit codes
were compared as int32 words, one changed code read as one changed "entry" of eight, the mask in the words' shape
under ``weight_packed``); the codes and zero points are compressed-tensors' ``unpack_from_int32``'s; the effective
weights are (code − zero) × scale, exact in float32, and compressed-tensors' own ``decompress`` gives them rounded
to its bf16; a group's changed scale changes exactly its nonzero (code − zero) weights and a changed zero point its
whole group, with no code changed (before: neither counted); a bf16 model against its own quantized copy is
compared entry by entry with every changed entry attributed to rounding; 3-bit words stay compared as codes, said.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from subnetviz.analysis.quant import checkpoint_forms, effective, scale_values, zero_values
from subnetviz.analysis.updates import SpectraOptions, analyze_updates
from subnetviz.checkpoints import open_checkpoint
from tests.ckpt_fixtures import llama64, read_state_dict, write_folder

Q = "model.layers.0.self_attn.q_proj"
SCHEMES = {"w4": (4, True), "w4asym": (4, False), "w8": (8, True), "w8asym": (8, False), "w2": (2, True)}
GROUP = 16


def _args(bits: int, symmetric: bool):
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy="group", group_size=GROUP)


def _quantize(root, name: str, bits: int, symmetric: bool):
    """A tiny Llama (64 wide: four groups of 16 per row) saved as bf16 (``root/bf16``), then quantized with groups
    of 16 and written by compressed-tensors' own compressor; scales and zero points from each group's min / max by
    compressed-tensors' calculate_qparams (what an observer gives)."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, apply_quantization_config
    from compressed_tensors.quantization.utils import calculate_qparams

    model = llama64(torch.bfloat16)
    if not (root / "bf16").exists():
        model.save_pretrained(root / "bf16")
    scheme = QuantizationScheme(targets=["Linear"], weights=_args(bits, symmetric))
    apply_quantization_config(model, QuantizationConfig(config_groups={"g": scheme}, ignore=["lm_head"]))
    for module in model.modules():
        if getattr(module, "quantization_scheme", None) is None:
            continue
        groups = module.weight.data.float().reshape(module.weight.shape[0], -1, GROUP)
        scale, zero = calculate_qparams(groups.amin(-1), groups.amax(-1), module.quantization_scheme.weights)
        module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape).to(module.weight_scale.dtype))
        if hasattr(module, "weight_zero_point"):
            module.weight_zero_point.data.copy_(zero.reshape(module.weight_zero_point.shape))
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(root / name)
    compressor.update_config(str(root / name))
    return root / name


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct-packed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {name: _quantize(root, name, *scheme) for name, scheme in SCHEMES.items()}
        out["w3"] = _quantize(root, "w3", 3, True)
    out["bf16"] = root / "bf16"
    return out


def _theirs(sd: dict, stem: str, bits: int, symmetric: bool) -> torch.Tensor:
    """compressed-tensors' own decompression of one module's stored tensors (its weight, in the scale's dtype)."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme

    local = {k[len(stem) + 1 :]: v for k, v in sd.items() if k.startswith(f"{stem}.")}
    scheme = QuantizationScheme(targets=["Linear"], weights=_args(bits, symmetric))
    return PackedQuantizationCompressor.decompress(local, scheme)["weight"]


@pytest.mark.parametrize("name", list(SCHEMES))
def test_codes_and_effective_weights_are_compressed_tensors_own(ct, name):
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    bits, symmetric = SCHEMES[name]
    ck = open_checkpoint(ct[name])
    sd = read_state_dict(ct[name])
    forms = checkpoint_forms(ck)
    weights = [n for n in ck.names if n.endswith("_proj.weight")]
    assert len(weights) == 14 and not any(n.endswith(("weight_packed", "weight_shape")) for n in ck.names)
    assert any(f"stored as {bits}-bit codes packed into int32 words" in n for n in ck.notes)
    for n in weights:
        stem = n.removesuffix(".weight")
        form, packed = forms[n], sd[f"{stem}.weight_packed"]
        shape = tuple(int(v) for v in sd[f"{stem}.weight_shape"])
        assert ck.meta(n).shape == shape and ck.meta(n).dtype == torch.int8
        assert form.kind == "int8" and form.group == GROUP and form.label == f"compressed-tensors int{bits} codes"
        codes = ck.get(n)
        assert torch.equal(codes, unpack_from_int32(packed, bits, torch.Size(shape))), n
        assert torch.equal(ck.get(n), codes)  # read again, the same: unpacking never writes the file's map
        zero = zero_values(ck, form, "cpu")
        if symmetric:
            assert zero is None and form.zero is None
        else:
            zshape = tuple(sd[f"{stem}.weight_scale"].shape)
            assert torch.equal(zero, unpack_from_int32(sd[f"{stem}.weight_zero_point"], bits, zshape, packed_dim=0))
        scale = scale_values(ck, form.scale, "cpu")
        ours = effective(codes, scale, form, (128, 128), name=n, zero=zero)  # (an FP8 block is not an int form's)
        z = 0 if zero is None else zero.double().repeat_interleave(GROUP, dim=1)
        exact = (codes.double() - z) * scale.double().repeat_interleave(GROUP, dim=1)
        assert ours.dtype == torch.float32 and torch.equal(ours.double(), exact), n  # float32 holds it exactly
        theirs = _theirs(sd, stem, bits, symmetric)
        assert theirs.dtype == torch.bfloat16 and torch.equal(ours.to(torch.bfloat16), theirs), n


@pytest.mark.parametrize("name", list(SCHEMES))
def test_one_code_a_group_scale_and_a_zero_point_count_as_the_weights_they_change(ct, tmp_path, name):
    bits, symmetric = SCHEMES[name]
    ck = open_checkpoint(ct[name])
    codes = ck.get(f"{Q}.weight")
    zero = zero_values(ck, checkpoint_forms(ck)[f"{Q}.weight"], "cpu")
    sd = read_state_dict(ct[name])
    # one code: the low bits of word (2, 0), the first code of row 2
    sd[f"{Q}.weight_packed"][2, 0] ^= 1
    # one group's scale: row 5, columns 32..47
    sd[f"{Q}.weight_scale"][5, 2] *= 2
    ft = write_folder(tmp_path / "ft", sd, ct[name])
    a = analyze_updates(str(ct[name]), [str(ft)], labels=["ft"], spectra=SpectraOptions(enabled=True, baseline=False))
    rep = a.reports[0]
    t = rep.tensors.set_index("name")
    group = codes[5, 32:48].int() - (0 if zero is None else int(zero[5, 2]))
    expected = 1 + int((group != 0).sum())
    assert t.loc[f"{Q}.weight", "changed"] == expected and t.loc[f"{Q}.weight", "changed_codes"] == 1
    assert t.loc[f"{Q}.weight", "numel"] == 64 * 64 and rep.changed == expected
    mask = rep.masks[f"{Q}.weight"]  # under the model's own name, in the weight's shape
    assert tuple(mask.shape) == (64, 64) and bool(mask[2, 0]) and int(mask[5, 32:48].sum()) == expected - 1
    scales = rep.buffers.set_index("name")
    assert scales.loc[f"{Q}.weight_scale", "changed"] == 1
    rule = f"code × weight_scale[i, j // {GROUP}]" if symmetric else "(code − weight_zero_point[i, j // 16])"
    assert any(f"compressed-tensors int{bits} weights" in n and rule in n for n in a.notes), a.notes
    assert not any("compared as stored codes only" in n for n in a.notes)
    spectra = a.spectra["ft"].to_frame()
    assert "layers.0.self_attn.q_proj.weight" in set(spectra["name"])  # the effective Δ decomposed (codes gave none)
    if symmetric:
        return
    sd = read_state_dict(ct[name])
    z = sd[f"{Q}.weight_zero_point"]  # (rows·bits / 32, groups): row 0's zero point is the low bits of word (0, g)
    z[0, 1] ^= 1
    ft2 = write_folder(tmp_path / "ft2", sd, ct[name])
    t2 = analyze_updates(str(ct[name]), [str(ft2)], labels=["ft"]).reports[0].tensors.set_index("name")
    # every weight of row 0's second group moves by one scale step, no code changed
    assert t2.loc[f"{Q}.weight", "changed"] == GROUP and t2.loc[f"{Q}.weight", "changed_codes"] == 0


def test_a_bf16_model_against_its_quantized_copy_is_rounding_only(ct):
    """The bf16 model the quantized ones were made from, compared with its W4A16 copy: every weight read at the
    model's own name and compared (none left out as words), and the changed ones attributed to rounding."""
    a = analyze_updates(str(ct["bf16"]), [str(ct["w4asym"])], labels=["w4"])
    rep = a.reports[0]
    t = rep.tensors.set_index("name")
    assert t.loc[f"{Q}.weight", "numel"] == 64 * 64 and t.loc[f"{Q}.weight", "changed"] > 0
    left = " ".join(n for n in a.notes if "Not compared" in n)  # (the scales and zero points, on one side only)
    assert "_proj.weight " not in left and "_proj.weight," not in left and "codes" not in left, left
    note = next(n for n in a.notes if "Stored forms differ" in n)
    changed = int(t.loc[t.index.str.endswith("_proj.weight"), "changed"].sum())
    assert f"Of their {changed:,} changed entries, {changed:,} (100.00%)" in note, note


def test_three_bit_words_stay_codes_and_say_so(ct, tmp_path):
    ck = open_checkpoint(ct["w3"])
    assert f"{Q}.weight_packed" in ck.names and f"{Q}.weight" not in ck.names
    assert checkpoint_forms(ck)[f"{Q}.weight_packed"].kind == "codes"
    sd = read_state_dict(ct["w3"])
    sd[f"{Q}.weight_packed"][0, 0] ^= 1
    a = analyze_updates(str(ct["w3"]), [str(write_folder(tmp_path / "ft", sd, ct["w3"]))], labels=["ft"])
    assert a.reports[0].changed == 1
    assert any("compared as stored codes only" in n for n in a.notes)


def test_a_weight_shape_that_does_not_fit_its_words_is_one_line(ct, tmp_path):
    from subnetviz.errors import CheckpointError

    sd = read_state_dict(ct["w4"])
    sd[f"{Q}.weight_shape"] = torch.tensor([64, 200])
    bad = write_folder(tmp_path / "bad", sd, ct["w4"])
    with pytest.raises(CheckpointError, match=rf"{Q}.weight_packed \(64, 8\) does not hold 200 columns of 4-bit codes"):
        open_checkpoint(bad)
    sd[f"{Q}.weight_shape"] = torch.tensor([32, 64])
    bad = write_folder(tmp_path / "rows", sd, ct["w4"])
    with pytest.raises(CheckpointError, match=r"weight_shape says \(32, 64\), but .* holds 64 rows"):
        open_checkpoint(bad)
    sd[f"{Q}.weight_shape"] = torch.tensor([64, -1])
    with pytest.raises(CheckpointError, match=r"weight_shape holds \[64, -1\]"):
        open_checkpoint(write_folder(tmp_path / "neg", sd, ct["w4"]))


def test_a_quantized_checkpoint_is_not_run_as_a_model(ct):
    """Behaviour, the bigram analysis and training run float32 models built from the stored weights: a
    compressed-tensors checkpoint is refused in one line (transformers' own error was a size-mismatch report of
    the packed zero points, or a missing library)."""
    from subnetviz.checkpoints.models import load_causal_lm
    from subnetviz.errors import CheckpointError

    with pytest.raises(CheckpointError, match="a compressed-tensors-quantized checkpoint; models are run here"):
        load_causal_lm(ct["w4asym"])
    assert load_causal_lm(ct["bf16"]).config.hidden_size == 64


def test_training_refuses_a_quantized_base_before_it_starts(ct, tmp_path):
    from subnetviz.errors import ConfigError
    from subnetviz.training.config import TrainConfig

    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    cfg = TrainConfig(algorithm="sft", base=str(ct["w4asym"]), data=str(data), output_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="a compressed-tensors-quantized checkpoint; models are run here"):
        cfg.validate()
