"""Model families, fifth review (families5): Gemma's second embedding, GPTQ's series scales note and its matrix axes.

1. Gemma-4 and Gemma-3n store a second embedding table beside ``model.embed_tokens.weight``: the per-layer
   embedding ``model.embed_tokens_per_layer.weight`` (here of the input embedding's very shape, (64, 16)). The head
   they tie (``_tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}``) was matched only where one
   embedding was stored: a finetune storing ``lm_head.weight`` with values of its own under a tied config (loaded
   untied by transformers 5) was dropped as tied ("counted once", 0 changed), and one whose config unties the head
   was left out as "only in one of the pair" (0 changed). Both now count the head as transformers loads the pair.
   The models are built with transformers' own config classes and saved with ``save_pretrained``.
2. The Series notes of a GPTQ run said its scales were "compared with the scales applied" while its codes are
   compared as codes only: a run whose every scale moved read "unchanged, scales applied". The note now says what
   the update analysis says; FP8 / int8 forms (AWQ's GEMM codes, dequantised) keep "applied".
3. One matrix titled the rows of an unpacked GPTQ ``qweight`` "output dim": its codes are (in, out), code i of word r
   being input row k·r + i. AWQ's codes, listed as the model's (out, in) weight, stay "out_in".

The GPTQ and AWQ checkpoints are a tiny Qwen2 saved by transformers (float16), its linear weights replaced by
GPTQ's (``qweight``, ``qzeros``, ``scales``, ``g_idx``) and AutoAWQ GEMM's (``qweight``, ``qzeros``, ``scales``)
tensors under their release names, with the ``quantization_config`` those releases carry.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.ckpt_fixtures import read_state_dict, write_folder
from tests.integration.test_inputs4_fixes import _loaded_counts  # (transformers' own count of a pair)

HEAD, EMBED, PER_LAYER = "lm_head.weight", "model.embed_tokens.weight", "model.embed_tokens_per_layer.weight"
TEXT = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_attention_heads=4, num_key_value_heads=2)
TEXT.update(head_dim=4, num_hidden_layers=2, pad_token_id=0, bos_token_id=0, eos_token_id=0)
TEXT.update(hidden_size_per_layer_input=8, vocab_size_per_layer_input=64)  # (per-layer table: 64 × 2·8, as the input's)
TEXT.update(layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True)


# ---------------------------------------------------------------- 1. the head tied to embed_tokens, not per-layer
def _gemma(family: str):
    import transformers as T

    if family == "gemma4_text":
        return T.Gemma4ForCausalLM(T.Gemma4TextConfig(**TEXT))
    config = T.Gemma3nTextConfig(
        **{**TEXT, "intermediate_size": [32, 32]}, activation_sparsity_pattern=[0.0, 0.0], num_kv_shared_layers=0
    )
    return T.Gemma3nForCausalLM(config)


@pytest.fixture(scope="module", params=["gemma4_text", "gemma3n_text"])
def gemma(request, tmp_path_factory) -> dict[str, Path]:
    """A tied bf16 base saved by transformers (no ``lm_head.weight`` stored), and two finetunes storing
    ``lm_head.weight`` as the embedding with 5 entries one bf16 step up: ``tied_cfg`` (the config still ties it)
    and ``untied`` (``tie_word_embeddings: false``)."""
    root = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    model = _gemma(request.param).to(torch.bfloat16)
    assert model._tied_weights_keys == {HEAD: EMBED}  # the release's own tie, by name
    model.save_pretrained(root / "base")
    sd = read_state_dict(root / "base")
    assert HEAD not in sd and sd[PER_LAYER].shape == sd[EMBED].shape  # (no shape tells the two tables apart)
    head = sd[EMBED].clone()
    head.view(-1).view(torch.int16)[:5] += 1
    out = {"base": root / "base"}
    for tag, tie in (("tied_cfg", True), ("untied", False)):
        out[tag] = write_folder(root / tag, {**sd, HEAD: head}, root / "base", tie_word_embeddings=tie)
    return out


def test_the_input_embedding_a_gemma_head_ties_to_is_embed_tokens(gemma):
    from subnetviz.checkpoints import open_checkpoint

    for tag in ("base", "tied_cfg", "untied"):
        assert open_checkpoint(gemma[tag]).input_embedding == EMBED, tag
    apart = open_checkpoint(gemma["tied_cfg"])
    assert apart.head_stored_apart == (HEAD, EMBED) and not apart.tied_embeddings
    assert open_checkpoint(gemma["base"]).tied_embeddings


@pytest.mark.parametrize("tag", ["tied_cfg", "untied"])
def test_a_gemma_finetune_storing_its_own_head_is_counted_as_transformers_loads_it(gemma, tag):
    """tied_cfg: 0 changed and "tied … counted once"; untied: 0 changed and the head "in only one of the pair"."""
    from subnetviz.analysis.updates import analyze_updates

    a = analyze_updates(str(gemma["base"]), [str(gemma[tag])], device="cpu")
    row = a.summary().iloc[0]
    numel, changed = _loaded_counts(gemma["base"], gemma[tag])
    assert changed == 5 and (int(row.numel), int(row.changed)) == (numel, changed)
    t = a.reports[0].tensors.set_index("name")
    assert t.loc[HEAD, "changed"] == 5 and t.loc[PER_LAYER, "changed"] == 0
    notes = "\n".join(a.notes)
    assert "counted once" not in notes and "only in one" not in notes and HEAD in notes
    said = [n for n in a.notes if "compared with that embedding's values" in n]  # the base's side of the head
    assert len(said) == 1 and EMBED in said[0] and PER_LAYER not in said[0]
    if tag == "tied_cfg":
        (apart,) = [n for n in a.notes if "NOT tie them" in n]
        assert EMBED in apart and PER_LAYER not in apart


# ---------------------------------------------------------------- 2 and 3. GPTQ / AWQ Qwen2
GS = 32  # group size (of 64 and 128 inputs)
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
LINEARS += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
DOWN = "model.layers.0.mlp.down_proj"  # Linear(128 -> 64)
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ: bits 4i.. of a word hold column 8c + AWQ_ORDER[i]


def _pack_rows(codes: np.ndarray) -> np.ndarray:
    """GPTQ's qweight: 4-bit codes (in, out) -> int32 (in / 8, out), input row 8r + i in bits 4i of word r."""
    c = codes.astype(np.uint32).reshape(codes.shape[0] // 8, 8, codes.shape[1])
    w = np.zeros((c.shape[0], c.shape[2]), np.uint32)
    for i in range(8):
        w |= c[:, i, :] << np.uint32(4 * i)
    return w.view(np.int32)


def _pack_cols(codes: np.ndarray, order=tuple(range(8))) -> np.ndarray:
    """(rows, cols) 4-bit codes -> int32 (rows, cols / 8): column 8c + order[i] in bits 4i (GPTQ's qzeros: in order;
    AutoAWQ's qweight and qzeros: AWQ_ORDER)."""
    c = codes.astype(np.uint32).reshape(codes.shape[0], codes.shape[1] // 8, 8)
    w = np.zeros(c.shape[:2], np.uint32)
    for i in range(8):
        w |= c[:, :, order[i]] << np.uint32(4 * i)
    return w.view(np.int32)


def _quantized_qwen2(root: Path, method: str, moved: tuple[int, int] | None = None, scale: float = 1.0) -> Path:
    """A tiny Qwen2 (float16, saved by transformers) with every linear layer GPTQ- or AWQ-quantized (4 bits, groups
    of 32 inputs, random codes from a fixed seed). ``moved``: (input, output) of the one code of ``DOWN`` moved by
    one step; ``scale``: every ``scales`` value multiplied by it (the codes unchanged)."""
    import transformers as T

    torch.manual_seed(0)
    config = T.Qwen2Config(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    T.Qwen2ForCausalLM(config).to(torch.float16).save_pretrained(root / "float")
    sd = {k: v.numpy() for k, v in read_state_dict(root / "float").items()}
    rng = np.random.default_rng(0)
    for layer in LINEARS:
        s = f"model.layers.0.{layer}"
        fout, fin = sd.pop(f"{s}.weight").shape
        codes = rng.integers(0, 16, size=(fin, fout))
        if s == DOWN and moved is not None:
            codes[moved] = (codes[moved] + 1) % 16
        scales = (np.abs(rng.standard_normal((fin // GS, fout))) * 0.01 + 1e-3).astype(np.float16) * scale
        zeros = np.full((fin // GS, fout), 8)
        if method == "gptq":
            sd[f"{s}.qweight"], sd[f"{s}.qzeros"] = _pack_rows(codes), _pack_cols(zeros - 1)  # (v1: zero − 1 stored)
            sd[f"{s}.g_idx"] = (np.arange(fin) // GS).astype(np.int32)
        else:
            sd[f"{s}.qweight"], sd[f"{s}.qzeros"] = _pack_cols(codes, AWQ_ORDER), _pack_cols(zeros, AWQ_ORDER)
        sd[f"{s}.scales"] = scales.astype(np.float16)
    quant = {
        "gptq": {"bits": 4, "damp_percent": 0.01, "desc_act": False, "group_size": GS, "quant_method": "gptq"},
        "awq": {"bits": 4, "group_size": GS, "quant_method": "awq", "version": "gemm", "zero_point": True},
    }[method]
    if method == "gptq":
        quant.update(modules_in_block_to_quantize=None, sym=True, true_sequential=True)
    else:
        quant.update(modules_to_not_convert=None)
    folder = write_folder(root / "q", {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()})
    cfg = json.loads((root / "float" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "quantization_config": quant}))
    return folder


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families5-quant")
    out = {}
    for method in ("gptq", "awq"):
        out[f"{method}_base"] = _quantized_qwen2(root / f"{method}_base", method)
        out[f"{method}_scales"] = _quantized_qwen2(root / f"{method}_scales", method, scale=1.5)
        out[f"{method}_code"] = _quantized_qwen2(root / f"{method}_code", method, moved=(37, 5))
    return out


def test_a_gptq_series_whose_scales_changed_does_not_say_they_are_applied(quantized):
    """Every GPTQ scale ×1.5, the codes unchanged: the series counts 0 changed, as the analysis does, and its scales
    note says so instead of "compared with the scales applied"."""
    from subnetviz.analysis.series import checkpoint_series
    from subnetviz.analysis.updates import analyze_updates

    base, ft = quantized["gptq_base"], quantized["gptq_scales"]
    s = checkpoint_series([base, ft])
    rep = analyze_updates(str(base), [str(ft)]).reports[0]
    assert s.steps["changed_vs_first"].tolist() == [rep.changed] == [0]
    (said,) = [n for n in rep.notes if n.startswith("Quantization scales")]
    assert "compared as stored codes only" in said and "not counted in changed" in said  # (the analysis, as before)
    (scales,) = [n for n in s.notes if "quantization scale" in n]
    assert "scales applied" not in scales and "\n" not in scales
    assert "compared as their codes only" in scales and "not counted as changed" in scales and ".qzeros" in scales


def test_an_awq_series_still_says_its_scales_are_applied(quantized):
    """AWQ's GEMM codes are dequantised with their scales (the int8 form): a scale ×1.5 changes its weights."""
    from subnetviz.analysis.series import checkpoint_series
    from subnetviz.analysis.updates import analyze_updates

    base, ft = quantized["awq_base"], quantized["awq_scales"]
    s = checkpoint_series([base, ft])
    rep = analyze_updates(str(base), [str(ft)]).reports[0]
    assert s.steps["changed_vs_first"].tolist() == [rep.changed] and rep.changed > 0
    (scales,) = [n for n in s.notes if "quantization scale" in n]
    assert "compared with the scales applied" in scales and "codes only" not in scales


@pytest.mark.parametrize(
    ("method", "name", "shape", "orientation", "row", "col"),
    [
        ("gptq", f"{DOWN}.qweight", (128, 64), "in_out", 37, 5),  # unpacked codes: (in, out)
        ("awq", f"{DOWN}.weight", (64, 128), "out_in", 5, 37),  # listed as the model's (out, in) weight
    ],
)
def test_one_matrix_names_the_rows_of_quantized_codes_as_they_are_laid_out(
    quantized, method, name, shape, orientation, row, col
):
    """The one code of input 37, output 5 of down_proj (Linear(128 -> 64)) changed: the image's row and column of
    that change are the input and output its orientation names."""
    from subnetviz.analysis.drill import matrix_update
    from subnetviz.figures.matrix import AXIS_TITLES

    upd = matrix_update(str(quantized[f"{method}_base"]), str(quantized[f"{method}_code"]), name)
    assert upd.shape == shape and upd.n_changed == 1 and upd.orientation == orientation
    assert np.flatnonzero(upd.rows_changed).tolist() == [row] and np.flatnonzero(upd.cols_changed).tolist() == [col]
    y_title, x_title = AXIS_TITLES[upd.orientation]
    assert ("input" in y_title) == (row == 37) and ("output" in x_title) == (col == 5)


def test_the_series_scales_note_follows_the_forms_beside_the_scales():
    """Codes only: not compared; FP8 / int8 only: applied (as before); both: each said of its own."""
    import pandas as pd

    from subnetviz.analysis.series import SeriesResult

    def note(**forms) -> str:
        s = SeriesResult(pd.DataFrame(), pd.DataFrame(), 0, {"scale": ["a.scales", "a.qzeros"], **forms})
        (said,) = [n for n in s.notes if "quantization scale" in n]
        return said

    assert "scales applied" in note(fp8=["b.weight"]) and "codes only" not in note(int8=["b.weight"])
    only = note(codes=["a.qweight"])
    assert "scales applied" not in only and "nor compared" in only and only.startswith("2 ")
    both = note(codes=["a.qweight"], fp8=["b.weight"])
    assert "FP8 / int8 weights are compared with their scales applied" in both and "codes only" in both


def test_training_masks_and_adapters_tie_a_gemma_head_to_embed_tokens(gemma):
    """The same choice where a masked run checks its head (training.masking's _MaskOf) and where a LoRA adapter is
    merged onto a tied base (adapters.MergedAdapter): each picked the embedding only where exactly one was filed, so
    on Gemma-4 / Gemma-3n (two) a tied head got no mask and an adapter no embedding."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import MergedAdapter
    from subnetviz.training.masking import _MaskOf

    ck = open_checkpoint(str(gemma["base"]))
    embed_mask = torch.zeros(tuple(ck.meta(EMBED).shape), dtype=torch.bool)
    embed_mask[0, :3] = True
    mask_of = _MaskOf({EMBED: embed_mask, PER_LAYER: ~embed_mask}, ck)
    assert mask_of.embedding == EMBED and torch.equal(mask_of(HEAD), embed_mask)
    assert MergedAdapter._input_embedding.func(type("A", (), {"base": ck})()) == EMBED
