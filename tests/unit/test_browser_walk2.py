"""Fixes from the second browser walk (review), the library's half.

- A mask is offered on Behaviour only where it fits the base (uilogic.mask_misfit): the zoo's mask was
  pre-selected beside a GPT-2 base and stopped the page before any KL was computed.
- One module order for every page: GPT-2's fused attention read "o, qkv" on Overlap's per-layer heatmap beside
  Sparsity's "q, k, v, o" (figures.style kept a second list that put qkv after o).
- A mask of another architecture is refused on the Bigram page in one line that says so; "Did you mean" suggests
  only a tensor of the same module (it offered GPT-2's mlp.c_proj for a Llama gate_proj, attn.c_proj for k_proj).
- One matrix's downsampled Δ image hovers the block's rows and columns and says its value is the block's mean (it
  read "row 4, col 1: Δ 1.000e+00" for a 3×3 block whose one changed entry held 9).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from subnetviz.errors import MaskError, suggest
from subnetviz.masks import MaskSet, save_mask_set
from tests.models import bigram_model, make_gpt2, make_llama


def _hover(trace, i: int, j: int) -> str:
    """The hover text of heatmap cell (i, j), its template filled in from the cell's customdata and z."""
    text = re.sub(
        r"%\{customdata\[(\d)\](:[^}]*)?\}",
        lambda m: format(float(trace.customdata[i][j][int(m[1])]), (m[2] or ":")[1:]),
        trace.hovertemplate,
    )
    text = re.sub(r"%\{z(:[^}]*)?\}", lambda m: format(float(trace.z[i][j]), (m[1] or ":")[1:]), text)
    return text.replace("<extra></extra>", "")


# --- One matrix: the Δ image's hover on blocks ----------------------------------------------------------------------


def test_a_downsampled_delta_image_hovers_the_blocks_ranges_and_its_mean():
    """384 × 96 drawn in 3 × 3 blocks, one entry Δ = 9 at (3, 0): its block (rows 3–5, cols 0–2) has mean 9 / 9 = 1;
    the hover names that block and says mean, as the changed image's hover names the same rows and columns."""
    from subnetviz.figures.matrix import delta_image, matrix_image

    d = np.zeros((384, 96))
    d[3, 0] = 9.0
    delta, changed = delta_image(d, max_side=128).data[0], matrix_image(d != 0, max_side=128).data[0]
    assert _hover(delta, 1, 0) == "rows 3–5, cols 0–2<br>mean Δ of the block 1.000e+00"
    assert _hover(changed, 1, 0).startswith("rows 3–5, cols 0–2<br>changed 1 of 9")
    assert _hover(delta, 0, 0) == "rows 0–2, cols 0–2<br>mean Δ of the block 0.000e+00"
    # the last block row of 384 = 128 · 3 rows: 381–383; every cell's ranges are the changed image's
    assert _hover(delta, 127, 31).startswith("rows 381–383, cols 93–95")
    np.testing.assert_array_equal(np.asarray(delta.customdata)[..., :4], np.asarray(changed.customdata)[..., :4])


def test_a_full_resolution_delta_image_hovers_one_entry():
    from subnetviz.figures.matrix import delta_image

    d = np.zeros((4, 5))
    d[2, 3] = -0.5
    tr = delta_image(d, max_side=8).data[0]
    assert tr.customdata is None and "mean" not in tr.hovertemplate
    assert tr.hovertemplate.startswith("row %{y:.0f}, col %{x:.0f}: Δ %{z:.3e}")
    assert float(tr.z[2][3]) == -0.5


# --- one module order -----------------------------------------------------------------------------------------------


def _cells(modules: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"layer": 0, "module": modules})


def test_gpt2s_fused_attention_comes_before_its_output_projection_on_overlap():
    """The Overlap per-layer heatmap of two GPT-2 masks (c_attn not split there: module qkv) in the order Sparsity's
    heatmap draws q, k, v, o: qkv, then o, then the MLP and the norms."""
    from subnetviz import figures

    modules = ["mlp_norm", "o", "attn_norm", "mlp_out", "qkv", "mlp_in"]
    df = _cells(modules).assign(jaccard=0.5, jaccard_chance_per_tensor=0.25)
    assert list(figures.overlap_layer_heatmap(df).data[0].x) == [
        "qkv",
        "o",
        "mlp_in",
        "mlp_out",
        "attn_norm",
        "mlp_norm",
    ]
    split = ["mlp_norm", "o", "v", "attn_norm", "k", "mlp_out", "q", "mlp_in"]
    sp = _cells(split).assign(changed=1, numel=4).assign(density=0.25, sparsity=0.75)
    assert list(figures.sparsity_heatmap(sp).data[0].x) == [
        "q",
        "k",
        "v",
        "o",
        "mlp_in",
        "mlp_out",
        "attn_norm",
        "mlp_norm",
    ]


def test_figures_order_every_module_kind_as_the_naming_table_does():
    """Every module kind the naming tables give (their BLOCK_OF), put in the figures' order, reads as naming's
    MODULE_ORDER sorts it: one order on every page. A post-attention norm sits beside its norm (figures listed it
    after every kind they knew)."""
    from subnetviz.checkpoints.naming import BLOCK_OF, module_sort_key
    from subnetviz.figures.style import _module_order

    kinds = [k for k in BLOCK_OF if k != "other"]
    shuffled = list(np.random.default_rng(0).permutation(kinds))
    assert _module_order([*shuffled, "other"]) == [*sorted(kinds, key=module_sort_key), "other"]
    assert _module_order(["mlp_norm", "post_attn_norm", "attn_norm"]) == ["attn_norm", "post_attn_norm", "mlp_norm"]
    assert _module_order(["MLP-out", "O", "Q", "MLP-in", "K", "V"]) == ["Q", "K", "V", "O", "MLP-in", "MLP-out"]


# --- "Did you mean" only of the same module -------------------------------------------------------------------------

GPT2_NAMES = [
    f"transformer.h.{i}.{m}.weight" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
]
LLAMA_NAMES = [
    f"model.layers.{i}.{m}.weight"
    for i in range(2)
    for m in ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj", "mlp.down_proj")
]


@pytest.mark.parametrize(
    "name", ["model.layers.0.mlp.gate_proj.weight", "model.layers.0.self_attn.k_proj.weight", "model.norm.weight"]
)
def test_no_suggestion_of_another_module(name):
    """A Llama tensor's name against a GPT-2's: close in letters (gate_proj ~ c_proj, k_proj ~ c_proj), another
    module each, so nothing is suggested."""
    assert suggest(name, GPT2_NAMES) == ""


@pytest.mark.parametrize(
    "name, meant",
    [
        ("model.layers.0.self_attn.q_prj.weight", "model.layers.0.self_attn.q_proj.weight"),  # a typo
        ("layers.1.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"),  # without the model's prefix
        ("model.layers.7.self_attn.k_proj.weight", "model.layers.0.self_attn.k_proj.weight"),  # a layer not there
    ],
)
def test_suggestions_of_the_same_tensor_kind_stay(name, meant):
    got = suggest(name, LLAMA_NAMES)
    assert got.startswith(" Did you mean ") and repr(meant) in got
    module = ".".join(meant.split(".")[-2:])  # every name suggested is of the meant module: q_proj.weight, …
    assert all(n.endswith(module) for n in re.findall(r"'([^']+)'", got)), got


def test_names_that_are_no_tensor_path_are_suggested_as_before():
    assert suggest("grpo-s", ["grpo-s0", "dpo"]) == " Did you mean 'grpo-s0'?"
    assert suggest("score.weight", ["lm_head.weight"]) == suggest("score.weight", ["lm_head.weight"], n=3)


# --- the Bigram page: a mask of another model ------------------------------------------------------------------------


def test_a_mask_of_another_model_is_refused_in_one_line_that_says_so():
    """A Llama bigram mask checked against a GPT-2: one line naming the model the mask was made on (its metadata),
    no "Did you mean" (it listed five names, each with a GPT-2 tensor of another module)."""
    from subnetviz.bigram.maskable import check_mask_fits

    llama = bigram_model("llama")
    masks = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in llama.named_parameters() if p.ndim == 2}
    ms = MaskSet(masks, {"model": "acme/tiny-llama"})
    with pytest.raises(MaskError) as err:
        check_mask_fits(bigram_model("gpt2"), ms, where="mask.safetensors")
    text = str(err.value)
    assert "\n" not in text and "Did you mean" not in text
    assert text.startswith("mask.safetensors was made for another model (acme/tiny-llama): none of its")
    assert f"none of its {len(masks)} tensors is a parameter of this gpt2 model" in text
    check_mask_fits(llama, MaskSet({n: m for n, m in masks.items() if "layers" in n and "proj" in n}))  # its own


def test_a_mask_of_the_same_model_with_one_wrong_tensor_is_still_refused_by_name():
    from subnetviz.bigram.maskable import check_mask_fits, maskable_shapes

    gpt2 = bigram_model("gpt2")
    shapes = maskable_shapes(gpt2)
    masks = {n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}
    masks["transformer.h.5.attn.c_attn.weight"] = masks.pop("transformer.h.1.attn.c_attn.weight")
    with pytest.raises(MaskError) as err:
        check_mask_fits(gpt2, MaskSet(masks))
    text = str(err.value)
    assert "made for another model" not in text
    assert "'transformer.h.5.attn.c_attn.weight' is not a parameter of the model. Did you mean" in text
    assert "c_proj" not in text and "c_fc" not in text  # only c_attn tensors suggested


# --- Behaviour: which masks fit the base ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("walk2-models")
    return {"llama": make_llama(root / "llama"), "gpt2": make_gpt2(root / "gpt2"), "root": root}


def _mask_of(path, names_shapes: dict, **meta):
    return str(
        save_mask_set(path, MaskSet({n: torch.zeros(s, dtype=torch.bool) for n, s in names_shapes.items()}, meta))
    )


def _header(folder) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes of a saved model, read by safetensors itself (the reference)."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="np") as f:
        return {n: tuple(f.get_slice(n).get_shape()) for n in f.keys()}


def test_a_mask_fits_the_base_it_names_every_tensor_of_with_its_shape(models):
    from subnetviz.uilogic import mask_misfit

    llama = _header(models["llama"])
    whole = _mask_of(models["root"] / "whole.safetensors", llama)
    some = _mask_of(models["root"] / "some.safetensors", dict(list(llama.items())[:3]))
    assert mask_misfit(whole, str(models["llama"])) is None
    assert mask_misfit(some, str(models["llama"])) is None  # a mask of some tensors: the rest count as outside


def test_a_mask_of_another_architecture_does_not_fit(models):
    from subnetviz.uilogic import mask_misfit

    llama = _header(models["llama"])
    mask = _mask_of(models["root"] / "llama-mask.safetensors", llama)
    why = mask_misfit(mask, str(models["gpt2"]))
    first = next(iter(llama))
    assert why == f"made for another model: none of its {len(llama)} tensors is in the base, e.g. {first!r}"


def test_a_mask_with_other_shapes_or_extra_names_does_not_fit(models):
    from subnetviz.uilogic import mask_misfit

    llama = _header(models["llama"])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert llama[q] == (16, 16)  # the planted shape below differs from it
    wrong = _mask_of(models["root"] / "wrong.safetensors", {**llama, q: (8, 16)})
    assert mask_misfit(wrong, str(models["llama"])) == f"{q!r} has shape (8, 16) in the mask and (16, 16) in the base"
    extra = _mask_of(models["root"] / "extra.safetensors", {**llama, "model.layers.9.mlp.up_proj.weight": (4, 4)})
    assert mask_misfit(extra, str(models["llama"])) == (
        f"1 of its {len(llama) + 1} tensors are not in the base, e.g. 'model.layers.9.mlp.up_proj.weight'"
    )
    gone = str(models["root"] / "gone.safetensors")
    assert mask_misfit(gone, str(models["llama"])).startswith("it cannot be checked against the base (")


def test_a_head_the_base_ties_is_left_to_the_run(tmp_path):
    """A tied base stores no lm_head.weight; a finetune that unties it has one, and its update mask names it (behaviour
    looks it up in the finetune): such a mask fits."""
    from subnetviz.uilogic import mask_misfit

    base = make_llama(tmp_path / "tied", tie=True)
    held = _header(base)
    assert "lm_head.weight" not in held
    mask = _mask_of(tmp_path / "untied.safetensors", {**held, "lm_head.weight": held["model.embed_tokens.weight"]})
    assert mask_misfit(mask, str(base)) is None
