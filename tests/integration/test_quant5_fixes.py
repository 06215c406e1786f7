"""Stored forms, fifth review (quant5): sparsity-compressed checkpoints, packed GPTQ words, a bf16 base past fp16.

Proves, on tiny one-layer Llama folders written by hand (each with a known answer):

- a compressed-tensors checkpoint whose ``sparsity_config.format`` is not ``"dense"`` (``sparse-bitmask``,
  ``sparse-24-bitmask``: each weight stored as its nonzero values ``<w>.compressed`` with ``<w>.bitmask``) is
  refused in one line naming the checkpoint and the format, as the finetune or as the base (before: the packed
  values compared index by index as a float weight, the bitmasks as buffers, a moved entry read 0 changed; a dense
  base against it read sparsity 1.0); ``sparsity_config`` ``{}`` (what compressed-tensors writes without
  sparsity) or ``"dense"`` is read as before.
- GPTQ's 2-, 4- and 8-bit ``qweight`` words are unpacked into their codes and compared code by code: one code
  changed in every word is 1/16, 1/8 and 1/4 of the codes (before: every word, 100 %), the mask is the codes' own
  (input row k·r + i), and ``qzeros`` is listed with the scales, not counted as weights. Words left packed (3 bits,
  AWQ's GEMV layout, ModelOpt's and compressed-tensors' bytes and words) say in ``stored_as`` and the note what one
  entry holds.
- a bf16 (or float32) base whose values lie beyond float16's range, against a float16 finetune, compared by
  default (at the finetune's dtype) is refused in one line naming the base and suggesting ``--precision`` (before:
  the base's outliers read as Inf and the finetune was said to hold NaN or Inf).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from subnetviz.analysis.quant import tensor_forms, unpack_words
from subnetviz.analysis.sparsity import SparsityOptions
from subnetviz.analysis.updates import analyze_updates
from subnetviz.errors import CheckpointError, ConfigError
from tests.ckpt_fixtures import one_layer_llama_config, write_folder

S = "model.layers.0.mlp.up_proj"
W = f"{S}.weight"
LLAMA = one_layer_llama_config()
NORM = {"model.norm.weight": torch.ones(64, dtype=torch.bfloat16)}


def _write(folder, sd: dict, quant: dict | None = None, **edits):
    folder = write_folder(folder, {**NORM, **sd})
    cfg = dict(LLAMA, **edits)
    if quant is not None:
        cfg["quantization_config"] = quant
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder)


# --- 1. compressed-tensors sparsity compression ---------------------------------------------------
def _pruned() -> torch.Tensor:
    """A 64 × 64 bf16 weight pruned 2:4 (the two smallest of each four zeroed)."""
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(64, 64, generator=g) * 0.02).reshape(64, 16, 4)
    return x.scatter(-1, x.abs().argsort(-1)[..., :2], 0.0).reshape(64, 64).to(torch.bfloat16)


def _bitmask(t: torch.Tensor, fmt: str) -> dict:
    """``t`` as compressed-tensors' sparse-bitmask / sparse-24-bitmask store it: its nonzero values, their
    bitmask packed along the rows (little-endian bits), its shape and (sparse-bitmask) each row's offset."""
    mask = t != 0
    out = {
        f"{W}.shape": torch.tensor(list(t.shape)),
        f"{W}.bitmask": torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little")),
    }
    if fmt == "sparse-24-bitmask":
        out[f"{W}.compressed"] = t[mask].reshape(t.shape[0], -1)
    else:
        rc = mask.sum(-1)
        out[f"{W}.compressed"], out[f"{W}.row_offsets"] = t[mask], torch.cumsum(rc, 0) - rc
    return out


def _sparse_config(fmt) -> dict:
    return {
        "quant_method": "compressed-tensors",
        "format": "dense",
        "sparsity_config": {"format": fmt, "sparsity_structure": "2:4", "targets": ["Linear"], "ignore": ["lm_head"]},
    }


@pytest.mark.parametrize("fmt", ["sparse-bitmask", "sparse-24-bitmask", "some-future-format"])
def test_a_sparsity_compressed_checkpoint_is_refused_naming_it_and_its_format(tmp_path, fmt):
    pruned = _pruned()
    base = _write(tmp_path / "base", {W: pruned})
    stored = _bitmask(pruned, "sparse-24-bitmask" if fmt == "sparse-24-bitmask" else "sparse-bitmask")
    ft = _write(tmp_path / "ft", stored, _sparse_config(fmt))
    for pair in ((base, ft), (ft, base)):  # as the finetune and as the base
        with pytest.raises(CheckpointError) as err:
            analyze_updates(pair[0], [pair[1]], labels=["x"])
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"{ft}: ")
        assert f"sparsity_config.format is {fmt!r}" in msg and "decompressed" in msg


@pytest.mark.parametrize("sparsity", [{}, {"format": "dense", "sparsity_structure": "2:4"}, None])
def test_a_dense_sparsity_config_is_read_as_before(tmp_path, sparsity):
    """compressed-tensors writes ``sparsity_config: {}`` without sparsity, and ``"dense"`` where a sparse model
    was saved decompressed: the weights are plain, and compared entry by entry (one moved entry: 2 changed)."""
    pruned = _pruned()
    moved = pruned.clone()
    nz, z = (moved[0, :4] != 0).nonzero().flatten(), (moved[0, :4] == 0).nonzero().flatten()
    moved[0, z[0]], moved[0, nz[0]] = moved[0, nz[0]], 0
    quant = {"quant_method": "compressed-tensors", "format": "dense", "sparsity_config": sparsity}
    base, ft = _write(tmp_path / "b", {W: pruned}, quant), _write(tmp_path / "f", {W: moved}, quant)
    t = analyze_updates(base, [ft]).reports[0].tensors.set_index("name")
    assert t.loc[W, "changed"] == 2 and t.loc[W, "numel"] == 64 * 64


# --- 2. GPTQ's packed words -------------------------------------------------------------------------
def _gptq_pack(codes: np.ndarray, bits: int) -> torch.Tensor:
    """AutoGPTQ's packing, by hand: code of input row k·r + i in bits i·b of word r (k = 32 / b)."""
    per = 32 // bits
    w = np.zeros((codes.shape[0] // per, codes.shape[1]), dtype=np.int64)
    for i in range(per):
        w |= codes[i::per].astype(np.int64) << (bits * i)
    return torch.from_numpy(w.astype(np.uint32).view(np.int32))


def _gptq_pair(tmp_path, bits: int, fmt: str | None = "gptq"):
    """A GPTQ pair (64 × 64 codes): the finetune changes code 0 of every word (one in 32 / b), by one step."""
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=(64, 64))
    per = 32 // bits
    c2 = codes.copy()
    c2[::per] = (c2[::per] + 1) % (1 << bits)
    quant = {"quant_method": "gptq", "bits": bits, "group_size": 32, "desc_act": False, "sym": True}
    if fmt is not None:
        quant["checkpoint_format"] = fmt

    def sd(c):
        return {
            f"{S}.qweight": _gptq_pack(c, bits),
            f"{S}.qzeros": torch.full((2, 64 * bits // 32), 0x11111111, dtype=torch.int32),
            f"{S}.scales": torch.full((2, 64), 0.01, dtype=torch.float16),
            f"{S}.g_idx": torch.arange(64, dtype=torch.int32) // 32,
        }

    return _write(tmp_path / "b", sd(codes), quant), _write(tmp_path / "f", sd(c2), quant), codes != c2


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2", None])
def test_gptq_words_are_compared_code_by_code(tmp_path, bits, fmt):
    base, ft, truth = _gptq_pair(tmp_path, bits, fmt)
    assert truth.sum() == 64 * 64 * bits // 32  # one code of every word: 1/16, 1/8, 1/4 of the codes
    rep = analyze_updates(base, [ft], labels=["ft"]).reports[0]
    t = rep.tensors.set_index("name")
    row = t.loc[f"{S}.qweight"]
    assert row["numel"] == 64 * 64 and row["changed"] == row["changed_codes"] == truth.sum()
    assert row["stored_as"] == f"GPTQ int{bits} codes (qweight unpacked, {32 // bits} a word)"
    assert row["shape"] == "64x64"  # the codes' shape, as the mask is saved (not the words', 64·b/32 × 64)
    assert f"{S}.qzeros" not in t.index  # (zero points: with the scales, not weights)
    scales = rep.buffers.set_index("name")
    assert scales.loc[f"{S}.qzeros", "group"] == "scales" == scales.loc[f"{S}.scales", "group"]
    assert rep.changed == truth.sum() and rep.numel == 64 * 64 + 64  # (and the norm)
    assert torch.equal(rep.masks[f"{S}.qweight"], torch.from_numpy(truth))  # input row k·r + i, per code
    rows, cols = rep.row_col["layers.0.mlp.up_proj.qweight"]
    assert rows.tolist() == truth.sum(1).tolist() and cols.tolist() == truth.sum(0).tolist()
    (note,) = [n for n in rep.notes if n.startswith(f"GPTQ int{bits} codes")]
    assert f"unpacked into its {32 // bits} codes" in note and "an entry is one code" in note


def test_gptq_codes_compared_in_bands_give_the_same_mask_and_counts(tmp_path, monkeypatch):
    """Words unpacked a band at a time (here 8 code rows, one word row, a band): the same per-code mask, row and
    column counts as the whole."""
    from subnetviz.analysis import quant

    monkeypatch.setattr(quant, "_BAND_ELEMENTS", 64 * 8)
    base, ft, truth = _gptq_pair(tmp_path, 4)
    rep = analyze_updates(base, [ft], labels=["ft"]).reports[0]
    assert torch.equal(rep.masks[f"{S}.qweight"], torch.from_numpy(truth))
    rows, cols = rep.row_col["layers.0.mlp.up_proj.qweight"]
    assert rows.tolist() == truth.sum(1).tolist() and cols.tolist() == truth.sum(0).tolist()
    assert rep.tensors.set_index("name").loc[f"{S}.qweight", "changed"] == truth.sum() == 512


def test_unpack_words_reads_each_code_of_a_word_by_hand():
    """0x76543210: codes 0 … 7 (nibble i is row i); 0xF000000A (a negative int32): 10, then six 0s, then 15."""
    words = torch.tensor([[0x76543210, 0xF000000A - (1 << 32)]], dtype=torch.int32)
    assert unpack_words(words, 4)[:, 0].tolist() == list(range(8))
    assert unpack_words(words, 4)[:, 1].tolist() == [10, 0, 0, 0, 0, 0, 0, 15]
    assert unpack_words(words, 8)[:, 1].tolist() == [10, 0, 0, 240]  # (int16: 0 … 255)
    assert unpack_words(words, 2)[:, 0].tolist() == [0, 0, 1, 0, 2, 0, 3, 0, 0, 1, 1, 1, 2, 1, 3, 1]


def test_words_left_packed_say_what_an_entry_holds(tmp_path):
    """3-bit GPTQ (codes straddle words) and the marlin layout stay words, and say so in stored_as and the note."""
    quant = {"quant_method": "gptq", "bits": 3, "group_size": 32, "checkpoint_format": "gptq"}
    q = torch.randint(-(2**31), 2**31 - 1, (6, 64), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    q2 = q.clone()
    q2[0, 0] ^= 0b111  # one code, one word
    extra = {f"{S}.qzeros": torch.zeros(2, 6, dtype=torch.int32), f"{S}.scales": torch.ones(2, 64, dtype=torch.float16)}
    base = _write(tmp_path / "b", {f"{S}.qweight": q, **extra}, quant)
    ft = _write(tmp_path / "f", {f"{S}.qweight": q2, **extra}, quant)
    rep = analyze_updates(base, [ft]).reports[0]
    row = rep.tensors.set_index("name").loc[f"{S}.qweight"]
    said = "int32 word of 10 2/3 3-bit codes"
    assert (
        row["numel"] == 6 * 64
        and row["changed"] == 1
        and row["stored_as"] == f"GPTQ packed codes (an entry: one {said})"
    )
    (note,) = [n for n in rep.notes if n.startswith("GPTQ packed codes")]
    assert f"an entry is one {said}" in note and "count stored words, not weights" in note


@pytest.mark.parametrize(
    "quant, name, dtype, label",
    [
        (
            {"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"},
            f"{S}.qweight",
            torch.int32,
            "GPTQ marlin packed codes (an entry: one int32 word of 8 4-bit codes)",
        ),
        (
            {"quant_method": "awq", "bits": 4, "version": "gemv"},
            f"{S}.qweight",
            torch.int32,
            "AWQ packed codes (an entry: one int32 word of 8 4-bit codes)",
        ),
        ({"quant_method": "modelopt"}, W, torch.uint8, "ModelOpt packed codes (an entry: one byte of 2 4-bit codes)"),
        (
            {"quant_method": "bitsandbytes"},
            W,
            torch.uint8,
            "bnb 4-bit packed codes (an entry: one byte of 2 4-bit codes)",
        ),
        (
            {
                "quant_method": "compressed-tensors",
                "format": "pack-quantized",
                "config_groups": {"g": {"weights": {"type": "int", "num_bits": 5}, "targets": ["Linear"]}},
            },
            f"{S}.weight_packed",
            torch.int32,
            "compressed-tensors packed codes (an entry: one int32 word of 6 2/5 5-bit codes)",
        ),
    ],
)
def test_other_packed_codes_say_what_an_entry_holds(quant, name, dtype, label):
    metas = {name: SimpleNamespace(dtype=dtype, shape=(8, 64), stored=None)}
    form = tensor_forms(metas, {"quantization_config": quant})[name]
    assert form.kind == "codes" and form.label == label and not form.unpack


# --- 3. a bf16 base past float16's range against a float16 finetune -------------------------------
@pytest.mark.parametrize("base_dtype", [torch.bfloat16, torch.float32])
def test_a_base_past_float16s_range_is_refused_naming_the_base(tmp_path, base_dtype):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 64, generator=g) * 0.02
    w[0, :3] = torch.tensor([7e4, -1e5, 3e5])  # outliers past ±65504 (finite in the base)
    w = w.to(base_dtype)
    ft = w.float().clamp(-65504, 65504)
    ft[1, :4] += 0.01
    base = _write(tmp_path / "b", {W: w})
    fin = _write(tmp_path / "f", {W: ft.to(torch.float16)}, torch_dtype="float16")
    with pytest.raises(ConfigError) as err:
        analyze_updates(base, [fin])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{base}: {W}: 3 value(s) of the base tensor")
    assert "beyond float16's range" in msg and "--precision" in msg and "fp32" in msg
    t = analyze_updates(base, [fin], options=SparsityOptions(precision="fp32")).reports[0].tensors.set_index("name")
    truth = int((w.float() != ft.to(torch.float16).float()).sum())
    assert t.loc[W, "changed"] == truth > 3  # at fp32 the pair is compared (the clamped outliers among them)


def test_a_narrower_base_than_its_finetune_is_still_cast_silently_and_noted(tmp_path):
    """An fp16 base against a bf16 finetune widens nothing past a range: compared at bf16 as before."""
    w = (torch.randn(64, 64, generator=torch.Generator().manual_seed(3)) * 0.02).to(torch.float16)
    ft = w.to(torch.bfloat16).clone()
    ft[2, :5] += 0.25
    base, fin = _write(tmp_path / "b", {W: w}, torch_dtype="float16"), _write(tmp_path / "f", {W: ft})
    rep = analyze_updates(base, [fin]).reports[0]
    assert rep.tensors.set_index("name").loc[W, "changed"] == int((w.to(torch.bfloat16) != ft).sum())
    assert any(n.startswith("Mixed precision") for n in rep.notes)


def test_a_series_counts_gptq_codes_as_the_update_analysis_does(tmp_path):
    from subnetviz.analysis.series import checkpoint_series

    base, ft, truth = _gptq_pair(tmp_path, 4)
    s = checkpoint_series([base, ft])
    rep = analyze_updates(base, [ft]).reports[0]
    assert s.numel == rep.numel == 64 * 64 + 64  # codes and the norm (the words were 8 × 64)
    assert s.steps["changed_vs_first"].tolist() == [rep.changed] == [int(truth.sum())]


def test_behaviours_revert_refuses_a_base_past_the_finetunes_range(monkeypatch):
    """Behaviour's revert casts the base to the finetune's type: a bf16 outlier past float16's range became Inf."""
    import subnetviz.checkpoints as checkpoints
    from subnetviz.analysis.revert import ModelBuilder

    a = torch.tensor([[1.0, 7e4], [0.5, -1e5]], dtype=torch.bfloat16)
    b = a.float().clamp(-65504, 65504).to(torch.float16)
    monkeypatch.setattr(checkpoints, "read_aligned", lambda ck, at, side, device="cpu": (a, b)[side])
    owner = SimpleNamespace(ck_base=None, ck_ft=None, cast={})
    with pytest.raises(ConfigError, match=r"^w: 2 value\(s\) of the base tensor lie beyond float16's range"):
        ModelBuilder.pair(owner, SimpleNamespace(names=["w", "w"]))
    ok = a.clamp(-6e4, 6e4)
    monkeypatch.setattr(checkpoints, "read_aligned", lambda ck, at, side, device="cpu": (ok, ok.half())[side])
    x, y = ModelBuilder.pair(owner, SimpleNamespace(names=["w", "w"]))
    assert x.dtype == y.dtype == torch.float16 and torch.isfinite(x).all()


def test_the_scales_note_of_a_codes_only_pair_says_a_changed_scale_is_not_counted(tmp_path):
    """readme5: a GPTQ pair whose scales alone differ read "changed counts them" (0 changed, sparsity 100 %)."""
    from safetensors.torch import load_file, save_file

    base, ft, _ = _gptq_pair(tmp_path, 4)
    base_sd = load_file(f"{base}/model.safetensors")
    save_file({**base_sd, f"{S}.scales": base_sd[f"{S}.scales"] * 2}, f"{ft}/model.safetensors")
    rep = analyze_updates(base, [ft]).reports[0]
    (said,) = [n for n in rep.notes if n.startswith("Quantization scales")]
    assert rep.changed == 0 and "128 of 144 scale values changed" in said  # (qzeros: 16 more, unchanged)
    assert "compared as stored codes only" in said and "not counted in changed" in said
    assert "changed counts them" not in said


def test_one_matrix_draws_and_counts_gptq_codes_as_the_analysis_does(tmp_path):
    """regressions14: after per-code counting, One matrix still compared the words: "512 of 4,096 changed" beside
    the analysis' 1,024 changed codes, and an all-yellow 8 × 64 image of words."""
    from subnetviz.analysis.drill import matrix_update

    base, ft, truth = _gptq_pair(tmp_path, 4)
    rep = analyze_updates(base, [ft]).reports[0]
    row = rep.tensors.set_index("name").loc[f"{S}.qweight"]
    for band in (1 << 22, 64 * 3):  # one band; bands of 3 code rows rounded to whole words (8 rows)
        upd = matrix_update(base, ft, f"{S}.qweight", max_side=16, band_entries=band)
        assert upd.shape == (64, 64) and f"{upd.shape[0]}x{upd.shape[1]}" == row["shape"]
        assert upd.n_changed == row["changed"] == truth.sum()
        assert upd.rows_changed.tolist() == truth.sum(1).tolist() and upd.cols_changed.tolist() == truth.sum(0).tolist()


def test_bands_that_start_inside_a_cell_add_up_to_the_whole():
    """Bands of whole FP8 scale blocks (128 rows) need not start on an image cell's row (56 rows for 7,168 rows in
    128 cells): MatrixBlocks.add refused such a band."""
    from subnetviz.figures.matrix import MatrixBlocks

    rng = np.random.default_rng(0)
    a = rng.random((300, 40)) < 0.3
    whole = MatrixBlocks.of(a, 6)  # 50-row cells
    banded = MatrixBlocks.empty(a.shape, 6, binary=True)
    for r0 in range(0, 300, 128):  # bands at 0, 128, 256: inside cells 2 and 5
        banded.add(r0, a[r0 : r0 + 128])
    assert banded.f == whole.f == 50 and np.array_equal(banded.sums, whole.sums)
    tiny = MatrixBlocks.empty(a.shape, 6, binary=True)
    for r0 in range(0, 300, 7):  # bands shorter than a cell, each inside one
        tiny.add(r0, a[r0 : r0 + 7])
    assert np.array_equal(tiny.sums, whole.sums)
