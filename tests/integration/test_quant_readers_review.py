"""The quantized-checkpoint readers, reviewed from outside (each test failed before its fix):

- a series from a bf16 model to its W4A16 copy counts what the update analysis counts (it compared the
  dequantised weights in float32: 72,946 changed entries against the analysis' and compressed-tensors' 72,248);
- two checkpoints quantized in different layouts (symmetric and asymmetric int4) are compared as weights, both
  dequantised, with a note (the whole analysis was refused);
- an AWQ layer of zero width is read as stored (a ZeroDivisionError traceback on the CLI and the pages);
- bitsandbytes 4-bit bytes the reader cannot lay out, stored as bf16 words (FSDP-QLoRA's quant_storage), are compared
  as codes (they were read as bf16 weights: a NaN error for one changed code);
- a LoRA adapter whose modules_to_save copy replaces a weight the base stores as codes is refused (the float copy
  was cast to the codes' integer dtype and dequantised with the base's scales).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from subnetviz.analysis.quant import checkpoint_forms, effective, scale_values, zero_values
from subnetviz.analysis.updates import analyze_updates
from subnetviz.checkpoints import open_checkpoint
from subnetviz.errors import CheckpointError
from tests.ckpt_fixtures import llama64, read_state_dict, write_folder

Q = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    from tests.integration.test_compressed_tensors_packed import _quantize

    root = tmp_path_factory.mktemp("ct-review")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {"w4": _quantize(root, "w4", 4, True), "w4asym": _quantize(root, "w4asym", 4, False)}
    out["bf16"] = root / "bf16"
    return out


def test_a_series_from_a_float_model_to_its_quantized_copy_counts_what_the_analysis_counts(ct):
    from subnetviz.analysis.series import checkpoint_series

    changed = analyze_updates(str(ct["bf16"]), [str(ct["w4asym"])], labels=["q"]).reports[0].changed
    series = checkpoint_series([str(ct["bf16"]), str(ct["w4asym"])])
    assert int(series.steps["changed_vs_first"].iloc[0]) == changed > 0


def test_codes_in_two_layouts_are_compared_as_weights(ct):
    a = analyze_updates(str(ct["w4"]), [str(ct["w4asym"])], labels=["asym"])
    t = a.reports[0].tensors.set_index("name")
    base, ft = open_checkpoint(ct["w4"]), open_checkpoint(ct["w4asym"])
    fb, ff = checkpoint_forms(base)[f"{Q}.weight"], checkpoint_forms(ft)[f"{Q}.weight"]
    wb = effective(base.get(f"{Q}.weight"), scale_values(base, fb.scale, "cpu"), fb, (1, 1), name=Q)
    wf = effective(
        ft.get(f"{Q}.weight"), scale_values(ft, ff.scale, "cpu"), ff, (1, 1), name=Q, zero=zero_values(ft, ff, "cpu")
    )
    expected = int((wb.double() != wf.double()).sum())  # the weights each side computes with, in float64
    assert t.loc[f"{Q}.weight", "changed"] == expected > 0
    note = next(n for n in a.notes if "Stored forms differ" in n)
    assert "both sides were dequantised (float32)" in note and "zero points" in note


def test_an_awq_layer_of_zero_width_is_read_as_stored(tmp_path):
    awq = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"}
    sd = {
        f"{Q}.qweight": torch.zeros(0, 8, dtype=torch.int32),
        f"{Q}.qzeros": torch.zeros(0, 8, dtype=torch.int32),
        f"{Q}.scales": torch.zeros(0, 64, dtype=torch.float16),
        "model.norm.weight": torch.ones(64, dtype=torch.float16),
    }
    folder = write_folder(tmp_path / "awq0", sd)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": awq}))
    ck = open_checkpoint(folder)
    assert f"{Q}.qweight" in ck.names and f"{Q}.weight" not in ck.names
    assert checkpoint_forms(ck)[f"{Q}.qweight"].kind == "codes"


def test_bnb_bytes_it_cannot_lay_out_stored_as_bf16_words_are_codes(tmp_path):
    """48 columns: blocks of 64 straddle rows, so the codes stay bytes, here saved in bf16 words."""
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        vocab_size=64,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    T.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    q = T.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=torch.bfloat16,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = T.AutoModelForCausalLM.from_pretrained(
            tmp_path / "bf16", quantization_config=q, dtype=torch.bfloat16, device_map="cpu"
        )
    model.save_pretrained(tmp_path / "nf4")
    ck = open_checkpoint(tmp_path / "nf4")
    assert read_state_dict(tmp_path / "nf4")[f"{Q}.weight"].dtype == torch.bfloat16  # (as FSDP-QLoRA stores it)
    assert ck.meta(f"{Q}.weight").dtype == torch.uint8 and checkpoint_forms(ck)[f"{Q}.weight"].kind == "codes"
    sd = read_state_dict(tmp_path / "nf4")
    sd[f"{Q}.weight"].view(torch.uint8).view(-1)[0] ^= 0x10  # one code
    ft = write_folder(tmp_path / "ft", sd, tmp_path / "nf4")
    assert analyze_updates(str(tmp_path / "nf4"), [str(ft)], labels=["ft"]).reports[0].changed == 1


def test_an_adapter_replacing_a_quantized_weight_is_refused(ct, tmp_path):
    from safetensors.torch import save_file

    from subnetviz.checkpoints.adapters import open_finetune

    ad = tmp_path / "adapter"
    ad.mkdir()
    g = torch.Generator().manual_seed(1)
    save_file(
        {
            "base_model.model.lm_head.lora_A.weight": torch.randn(4, 64, generator=g).to(torch.bfloat16),
            "base_model.model.lm_head.lora_B.weight": torch.zeros(64, 4).to(torch.bfloat16),
            f"base_model.model.{Q}.weight": llama64().state_dict()[f"{Q}.weight"].clone(),
        },
        str(ad / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["lm_head"]}
    (ad / "adapter_config.json").write_text(json.dumps({**config, "modules_to_save": ["q_proj"]}))
    assert open_finetune(str(ad), open_checkpoint(ct["bf16"])).get(f"{Q}.weight").dtype == torch.bfloat16
    with pytest.raises(CheckpointError, match=rf"the adapter targets {Q}.weight, which the base .* quantized codes"):
        open_finetune(str(ad), open_checkpoint(ct["w4asym"]))


def test_dequantising_a_whole_tensor_asks_for_its_memory_first(ct, monkeypatch):
    """A float side against a quantized one is compared in bands: what a band holds (40 bytes an entry; this 64 x 64
    matrix is one band) is asked for before it is formed (a vocabulary-sized pair would have been allocated unasked)."""
    from subnetviz import config
    from subnetviz.errors import ConfigError

    asked = []

    def shortfall(n: int) -> str | None:
        asked.append(n)
        return "needs more than this machine has" if n >= 40 * 64 * 64 else None

    monkeypatch.setattr(config, "_host_shortfall", shortfall)
    with pytest.raises(ConfigError, match=r"dequantised \(float32\) needs more than this machine has"):
        analyze_updates(str(ct["bf16"]), [str(ct["w4asym"])], labels=["q"])


def test_code_steps_of_unsorted_types_follow_their_values():
    """E2M1's codes are sign and magnitude: code steps count along the sorted values, mapped a band at a time."""
    import numpy as np

    from subnetviz.analysis.quant import _ranked
    from subnetviz.checkpoints.nvfp4 import E2M1

    rank = np.argsort(np.argsort(E2M1, kind="stable"), kind="stable").astype(np.uint8)
    assert E2M1[np.argsort(rank)].tolist() == sorted(E2M1.tolist())  # rank orders the values
    codes = torch.randint(0, 16, (1500, 777), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert torch.equal(_ranked(codes, rank), torch.from_numpy(rank)[codes.long()])  # (1.2 M codes: two bands)
