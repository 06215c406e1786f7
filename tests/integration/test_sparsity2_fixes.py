"""Update sparsity after its second review, against float64 NumPy references on planted checkpoints:

- One matrix (:func:`~subnetviz.analysis.drill.matrix_update`) reads the pair the analysis compares: a finetune saved
  without the ``model.`` prefix, a head one side ties to its input embedding (both ways), and the shared rows of a
  resized vocabulary (with the analysis' own note). It read one name from both files and refused all four.
- GPT-2's ``c_attn`` and GPT-NeoX's ``query_key_value`` are split into q, k and v under every criterion (exact, each
  tolerance, relative η), each part's count equal to the reference; they were merged into one "qkv" column under
  any criterion but exact.
- Titles name the criterion with its parameter (:func:`~subnetviz.figures.updates.criterion_label`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from subnetviz.analysis.drill import matrix_update
from subnetviz.analysis.sparsity import SparsityOptions
from subnetviz.analysis.updates import analyze_updates
from subnetviz.figures.updates import criterion_label
from tests.ckpt_fixtures import read_state_dict, write_folder
from tests.models import make_gpt2, make_neox, save_model, tiny_model

Q = "model.layers.0.self_attn.q_proj.weight"
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
TOLS = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4)


# --- an independent float64 reference ------------------------------------------------------------------------------
def _bits(t: torch.Tensor) -> np.ndarray:
    """A bf16 tensor's bit patterns (uint16)."""
    assert t.dtype == torch.bfloat16
    return t.contiguous().view(torch.int16).numpy().view(np.uint16)


def _f64(t: torch.Tensor) -> np.ndarray:
    """A bf16 tensor's exact values in float64, decoded from its bits (the top half of a float32)."""
    return (_bits(t).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _mask(a: torch.Tensor, b: torch.Tensor, criterion: str, eta: float = 1e-3) -> np.ndarray:
    """Which entries changed from ``a`` to ``b`` (bf16) under ``criterion``, by the definitions in float64."""
    if criterion == "exact":
        return _bits(a) != _bits(b)
    x, y = _f64(a), _f64(b)
    if criterion == "relative":
        return np.abs(y - x) > eta * np.maximum(np.abs(x), np.abs(y))
    return np.abs(y - x) > float(criterion)


def _move(t: torch.Tensor, where, steps) -> torch.Tensor:
    """``t`` (bf16) with the entries at ``where`` moved by ``steps`` representable values (integer view)."""
    t = t.clone()
    v = t.view(torch.int16)
    v[where] = v[where] + torch.as_tensor(steps, dtype=torch.int16)
    return t


def _plant(t: torch.Tensor, seed: int, n: int) -> torch.Tensor:
    """``n`` random entries of ``t`` moved by 1 to 300 representable steps: small changes that only 'exact' and
    the small tolerances see, and large ones that every criterion sees."""
    g = torch.Generator().manual_seed(seed)
    flat = _move(t.reshape(-1), torch.randperm(t.numel(), generator=g)[:n], torch.randint(1, 300, (n,), generator=g))
    return flat.reshape(t.shape)


# --- One matrix reads the pair the analysis compares -----------------------------------------------------------------
@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """A bf16 Llama base (untied head) and finetunes that pair only through the alignment."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sparsity2-pairs")
    base = save_model(tiny_model("llama", seed=0, kv_heads=2), root / "base")
    sd = read_state_dict(base)
    ft = dict(sd)
    ft[Q] = _plant(sd[Q], 1, 40)
    ft[EMBED] = _plant(sd[EMBED], 2, 60)
    ft[HEAD] = _plant(sd[HEAD], 3, 30)
    out = {"base": base}
    # saved from the bare model: no 'model.' prefix on any name
    out["noprefix"] = write_folder(root / "noprefix", {k.removeprefix("model."): v for k, v in ft.items()}, base)
    # 8 tokens added: embedding and head of 72 rows
    extra = {k: torch.cat([ft[k], torch.randn(8, ft[k].shape[1]).to(torch.bfloat16)]) for k in (EMBED, HEAD)}
    out["resized"] = write_folder(root / "resized", {**ft, **extra}, base, vocab_size=72)
    # a model that ties its head (no lm_head stored) and a copy of it that unties it, the head changed
    tied_sd = {k: v for k, v in ft.items() if k != HEAD}
    out["tied"] = write_folder(root / "tied", tied_sd, base, tie_word_embeddings=True)
    out["untied"] = write_folder(
        root / "untied", {**tied_sd, HEAD: _plant(tied_sd[EMBED], 4, 64)}, base, tie_word_embeddings=False
    )
    return out


def _tensor(folder, name: str) -> torch.Tensor:
    return load_file(str(folder / "model.safetensors"))[name]


CASES = {  # label: base, finetune, the key the picker offers, the base's tensor, the finetune's tensor, shared rows
    "no model. prefix": ("base", "noprefix", "layers.0.self_attn.q_proj.weight", Q, Q.removeprefix("model."), None),
    "untied base, tied finetune": ("untied", "tied", HEAD, HEAD, EMBED, None),
    "tied base, untied finetune": ("tied", "untied", HEAD, EMBED, HEAD, None),
    "vocabulary resized": ("base", "resized", "embed_tokens.weight", EMBED, EMBED, 64),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("criterion", ["exact", "1e-05", "relative"])
def test_one_matrix_reads_the_pair_the_analysis_compares(pairs, case, criterion):
    b, f, key, name_b, name_f, rows = CASES[case]
    x, y = _tensor(pairs[b], name_b), _tensor(pairs[f], name_f)
    if rows is not None:
        assert y.shape[0] == rows + 8
        x, y = x[:rows], y[:rows]
    want = _mask(x, y, criterion, eta=0.1)
    assert want.any() or case == "untied base, tied finetune"  # (the tied finetune's embedding is the head's base)
    upd = matrix_update(str(pairs[b]), str(pairs[f]), key, criterion=criterion, eta=0.1)
    assert upd.names == (name_b, name_f)
    assert upd.shape == want.shape and upd.n_changed == int(want.sum())
    np.testing.assert_array_equal(upd.rows_changed, want.sum(axis=1))
    np.testing.assert_array_equal(upd.cols_changed, want.sum(axis=0))
    np.testing.assert_allclose(upd.delta.sums.sum(), (_f64(y) - _f64(x)).sum(), rtol=1e-5, atol=1e-6)
    assert upd.rows_compared == rows
    if rows is not None:  # the analysis' own line on it
        assert upd.note == "embed_tokens.weight: vocabulary resized; compared the 64 shared rows, extra rows per " + (
            "checkpoint: [0, 8]"
        )
    else:
        assert upd.note == ""
    # the analysis counts the same pair (its exact count here: the other criteria are columns of the same row)
    rep = analyze_updates(str(pairs[b]), [str(pairs[f])], options=SparsityOptions(eta=0.1)).reports[0]
    column = {"exact": "changed", "relative": "changed_rel"}.get(criterion, f"changed@{criterion}")
    assert int(rep.tensors.set_index("key").loc[key, column]) == int(want.sum())


def test_one_matrix_names_a_pair_missing_from_either_side_in_one_line(pairs):
    with pytest.raises(Exception, match=r"no tensor 'layers\.0\.self_attn\.q_prj\.weight' is in both .*Did you mean"):
        matrix_update(str(pairs["base"]), str(pairs["noprefix"]), "layers.0.self_attn.q_prj.weight")


# --- fused QKV split under every criterion ---------------------------------------------------------------------------
def _gpt2_parts(t: np.ndarray) -> dict[str, np.ndarray]:
    """GPT-2's c_attn (Conv1D, stored (in, 3·out); bias (3·out,)): q, k, v are the thirds of the last dim."""
    d = t.shape[-1] // 3
    return {p: t[..., i * d : (i + 1) * d] for i, p in enumerate("qkv")}


def _neox_parts(heads: int):
    """GPT-NeoX's query_key_value (3·H, H) and bias (3·H,): rows per head [q; k; v], head_size rows each."""

    def split(t: np.ndarray) -> dict[str, np.ndarray]:
        per = t.reshape(heads, 3, t.shape[0] // (3 * heads), *t.shape[1:])
        return {p: per[:, i] for i, p in enumerate("qkv")}

    return split


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """GPT-2 and GPT-NeoX (bf16) and finetunes whose fused QKV weights and biases moved by 1 to 300 steps."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sparsity2-fused")
    out = {}
    for family, make, marker in (("gpt2", make_gpt2, "c_attn"), ("neox", make_neox, "query_key_value")):
        base = make(root / f"base-{family}")
        sd = read_state_dict(base)
        ft = {k: (_plant(v, i, max(3, v.numel() // 4)) if marker in k else v) for i, (k, v) in enumerate(sd.items())}
        heads = json.loads((base / "config.json").read_text()).get("num_attention_heads")
        split = _gpt2_parts if family == "gpt2" else _neox_parts(heads)
        out[family] = base, write_folder(root / f"ft-{family}", ft, base), marker, split
    return out


@pytest.mark.parametrize("family", ["gpt2", "neox"])
@pytest.mark.parametrize("precision", [None, "fp32"])  # as stored (the compiled pass' views), and cast (tensors)
def test_fused_qkv_is_split_under_every_criterion(fused, family, precision):
    base, ft, marker, split = fused[family]
    eta = 0.01
    rep = analyze_updates(
        str(base), [str(ft)], options=SparsityOptions(eta=eta, precision=precision), spectra=None, device="cpu"
    ).reports[0]
    a, b = read_state_dict(base), read_state_dict(ft)
    names = [n for n in a if marker in n]
    criteria = {"changed": "exact", **{f"changed@{t:g}": f"{t:g}" for t in TOLS}, "changed_rel": "relative"}
    seen = set()
    for column, criterion in criteria.items():
        grid = rep.by_layer_module(column)
        assert "qkv" not in set(grid["module"]), column
        for layer in sorted({int(n.split(".")[-4]) for n in names}):  # (…h.0.attn.c_attn.weight: the layer)
            want = {p: 0 for p in "qkv"}
            numel = {p: 0 for p in "qkv"}
            for n in (n for n in names if f".{layer}." in n):
                mask = split(_mask(a[n], b[n], criterion, eta))
                for p in "qkv":
                    want[p] += int(mask[p].sum())
                    numel[p] += mask[p].size
            cells = grid[grid["layer"] == layer].set_index("module")
            got = {p: int(cells.loc[p, "changed"]) for p in "qkv"}
            assert got == want, (column, layer)
            assert {p: int(cells.loc[p, "numel"]) for p in "qkv"} == numel
            seen.add(tuple(want.values()))
    assert len(seen) > 4  # the criteria do differ on these planted changes


def test_fused_split_kept_exact_only_is_named_and_shown_whole(fused):
    """Where the parts table holds exact counts only (a table saved before, or parts split from counts), the
    tensor stays whole under another criterion, and :meth:`split_exact_only` names it for the page's note."""
    base, ft, marker, _ = fused["gpt2"]
    rep = analyze_updates(str(base), [str(ft)], spectra=None, device="cpu").reports[0]
    rep.parts = rep.parts[["key", "module", "numel", "changed"]]
    assert rep.split_exact_only("changed") == []
    keys = rep.split_exact_only("changed@1e-05")
    assert keys and all(marker in k for k in keys)
    grid = rep.by_layer_module("changed@1e-05")
    assert "qkv" in set(grid["module"]) and not {"q", "k", "v"} & set(grid["module"])


# --- titles name the criterion with its parameter --------------------------------------------------------------------
def test_criterion_label_names_the_parameter():
    assert criterion_label("exact", 0.1) == "exact"
    assert criterion_label("relative", 0.1) == "relative η = 0.1"
    assert criterion_label("relative", 0.001) == "relative η = 0.001"
    assert criterion_label("1e-05", 0.1) == "tol = 1e-05"


def test_shapes_kept_for_the_cases(pairs):
    """The planted folders are what the cases say (guards the fixtures above)."""
    assert "lm_head.weight" not in load_file(str(pairs["tied"] / "model.safetensors"))
    assert json.loads((pairs["untied"] / "config.json").read_text())["tie_word_embeddings"] is False
    assert not any(k.startswith("model.") for k in load_file(str(pairs["noprefix"] / "model.safetensors")))
