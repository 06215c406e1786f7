"""Spectra and subspaces review fixes, each against float64 NumPy / SciPy on planted cases:

1. the spectra decompose the Δ the update mask compares (both sides at the chosen precision; a mixed-dtype pair
   with none chosen at the finetune's dtype), for float pairs, mixed stored forms and quantized pairs;
2. the subspaces decompose the weights at the dtype the mask compares them at (an fp32 base is rounded to its bf16
   finetune's dtype), and a note says so;
3. the Spectra page and its export name the matrices that got no spectrum, and count them in the rank sentence;
4. a packed expert tensor stored quantized on a side gets skipped spectra rows, and ``analyze --subspaces`` keeps the
   subspaces' notes in its output folder.
"""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

from subnetviz.analysis.sparsity import SparsityOptions
from subnetviz.analysis.subspaces import SubspaceOptions, analyze_subspaces, compare_subspaces
from subnetviz.analysis.updates import SpectraOptions, analyze_updates
from tests.ckpt_fixtures import bf16_step, fp8_quantize, gpt_oss_model, read_state_dict, write_folder

NAME = "model.layers.0.mlp.down_proj.weight"
EPS32 = float(np.finfo(np.float32).eps)
QC = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [8, 8]}


def _f64(x: torch.Tensor, dtype: torch.dtype | None = None) -> np.ndarray:
    """``x`` rounded to ``dtype`` (round to nearest even; None: as it is), in float64 NumPy."""
    return (x if dtype is None else x.to(dtype)).to(torch.float64).numpy()


def _reference(d: np.ndarray) -> dict:
    """Density, rank (σ > σ₁·max(m, n)·eps32, the paper's rule), stable rank Σσ²/σ₁² and σ of Δ, by NumPy."""
    s = np.linalg.svd(d, compute_uv=False)
    rank = int((s > s[0] * max(d.shape) * EPS32).sum()) if s[0] > 0 else 0
    return {"density": np.count_nonzero(d) / d.size, "rank": rank, "stable": (s**2).sum() / s[0] ** 2, "sigma": s}


def _spectrum(base, ft, precision: str | None) -> tuple[dict, dict, np.ndarray]:
    """(spectra row, tensors row, σ of Δ) of ``NAME`` from the update pass of ``base`` -> ``ft`` at ``precision``."""
    an = analyze_updates(
        str(base),
        [str(ft)],
        labels=["m"],
        options=SparsityOptions(precision=precision),
        spectra=SpectraOptions(),
        device="cpu",
    )
    spec = an.spectra_table()
    row = spec[spec["name"].str.endswith("layers.0.mlp.down_proj.weight")].iloc[0].to_dict()
    t = an.report("m").tensors
    trow = t[t["name"] == NAME].iloc[0].to_dict()
    sig = an.sigmas()
    sigma = sig[(sig["name"] == row["name"]) & (sig["kind"] == "update")].sort_values("index")["sigma"].to_numpy()
    return row, trow, sigma


def _check(row: dict, trow: dict, sigma: np.ndarray, want: np.ndarray) -> None:
    """The spectra row and σ of the pass against the NumPy reference ``want`` (Δ), and the mask's count with it."""
    ref = _reference(want)
    assert not row["skipped"]
    assert int(trow["changed"]) == np.count_nonzero(want)  # the mask sees this Δ
    assert row["density"] == pytest.approx(ref["density"], abs=0)
    assert int(row["rank"]) == ref["rank"]
    assert row["stable_rank"] == pytest.approx(ref["stable"], rel=1e-9)
    k, s = ref["rank"], ref["sigma"]
    # to the values' documented resolution sqrt(min(m, n)·eps64)·σ₁ (the Gram path's), relatively 1e-9 above it
    np.testing.assert_allclose(sigma[:k], s[:k], rtol=1e-9, atol=np.sqrt(min(want.shape) * 2.0**-52) * s[0])


# ---------------------------------------------------------------- 1. Δ at the comparison's precision
@pytest.fixture(scope="module")
def fp32_pairs(tmp_path_factory):
    """An fp32 base ``w`` (32 × 16); ``a``: w·(1 + 1e-5) in fp32 (below half a bf16 step almost everywhere);
    ``b``: w rounded to bf16 with three entries of row 0 doubled (a rank-1 update of 3 entries)."""
    root = tmp_path_factory.mktemp("spec-precision")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 16, generator=g)
    a = w * (1 + 1e-5)
    b = w.to(torch.bfloat16)
    b[0, :3] = b[0, :3] * 2
    folders = {k: write_folder(root / k, {NAME: v}) for k, v in (("base", w), ("a", a), ("b", b))}
    return folders, w, a, b


def test_an_fp32_pair_at_bf16_decomposes_the_bf16_difference(fp32_pairs):
    """At precision bf16 the mask found the few entries that move in bf16, but the spectra reported the fp32
    difference: dense and full-rank."""
    folders, w, a, _ = fp32_pairs
    want = _f64(a, torch.bfloat16) - _f64(w, torch.bfloat16)
    assert 0 < np.count_nonzero(want) < want.size // 10  # (planted: most entries do not move in bf16)
    _check(*_spectrum(folders["base"], folders["a"], "bf16"), want)
    _check(*_spectrum(folders["base"], folders["a"], None), _f64(a) - _f64(w))  # stored dtype: every entry


@pytest.mark.parametrize("precision", [None, "bf16"])
def test_an_fp32_base_against_a_bf16_finetune_is_three_entries_of_rank_one(fp32_pairs, precision):
    """No precision rounds the base to the finetune's bf16, as the mask does; bf16 chosen says the same rounding
    explicitly, yet it turned the 3-entry rank-1 Δ into the base's rounding error everywhere (rank 16 of 16)."""
    folders, w, _, b = fp32_pairs
    want = _f64(b) - _f64(w, torch.bfloat16)
    assert np.count_nonzero(want) == 3
    row, trow, sigma = _spectrum(folders["base"], folders["b"], precision)
    _check(row, trow, sigma, want)
    assert int(row["rank"]) == 1


def _fp8_folder(folder, w: torch.Tensor):
    codes, scale = fp8_quantize(w, (8, 8))
    out = write_folder(folder, {NAME: codes, f"{NAME}_scale_inv": scale})
    (out / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": QC}))
    return out, codes.float() * scale.repeat_interleave(8, 0).repeat_interleave(8, 1)  # dequantised, by hand


@pytest.mark.parametrize("pair", ["fp32-fp8", "fp8-fp8"])
def test_quantized_sides_at_bf16_decompose_the_bf16_difference(tmp_path, pair):
    """A float base against FP8 codes (the mixed-forms branch) and an FP8 pair: at bf16, Δ is of both dequantised
    sides rounded to bf16, as the mask compares them (it was the float32 difference)."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(32, 16, generator=g)
    moved = w + torch.where(torch.rand(32, 16, generator=g) < 0.2, 0.3, 0.0)
    ft, deq_ft = _fp8_folder(tmp_path / "ft", moved)
    if pair == "fp32-fp8":
        base, deq_base = write_folder(tmp_path / "base", {NAME: w}), w
    else:
        base, deq_base = _fp8_folder(tmp_path / "base", w)
    want = _f64(deq_ft, torch.bfloat16) - _f64(deq_base, torch.bfloat16)
    assert np.count_nonzero(want) > 0 and not np.array_equal(want, _f64(deq_ft) - _f64(deq_base))
    _check(*_spectrum(base, ft, "bf16"), want)


# ---------------------------------------------------------------- 2. subspaces at the mask's dtype
K = 8


def _angles(b: np.ndarray, f: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(largest left angle °, largest right angle °, σ ratios) of the top-K subspaces, float64 NumPy + SciPy."""
    ub, sb, vbt = np.linalg.svd(b, full_matrices=False)
    uf, sf, vft = np.linalg.svd(f, full_matrices=False)
    left = np.degrees(subspace_angles(ub[:, :K], uf[:, :K])).max()
    right = np.degrees(subspace_angles(vbt[:K].T, vft[:K].T)).max()
    return left, right, sf[:K] / sb[:K]


@pytest.fixture(scope="module")
def mixed():
    """An fp32 base (64 × 48), its bf16 release, and the release with one entry moved one bf16 step."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 48, generator=g, dtype=torch.float64).float()
    ft0 = w.to(torch.bfloat16)
    ft1 = ft0.clone()
    ft1[5, 7] = bf16_step(ft0[5, 7].reshape(1), 1)[0]  # one bf16 step away from zero
    return w, ft0, ft1


def test_an_fp32_base_against_its_bf16_release_is_no_rotation(mixed):
    """The mask rounded the base to bf16, the angles did not: one changed entry read as the whole rounding's angle
    (0.33°, 15× the true 0.02°), σ-ratio deviations came from rounding alone."""
    w, ft0, ft1 = mixed
    r0 = compare_subspaces("w", w, ft0, SubspaceOptions(k=K))
    assert r0.changed == 0 and np.all(r0.angles_left == 0) and np.all(r0.angles_right == 0)
    r1 = compare_subspaces("w", w, ft1, SubspaceOptions(k=K))
    left, right, ratio = _angles(_f64(w, torch.bfloat16), _f64(ft1))
    assert r1.changed == 1
    assert r1.angles_left.max() == pytest.approx(left, abs=1e-6)
    assert r1.angles_right.max() == pytest.approx(right, abs=1e-6)
    np.testing.assert_allclose(r1.sv_ratio, ratio, rtol=1e-10)
    unrounded = _angles(_f64(w), _f64(ft1))[0]
    assert unrounded > 10 * left  # (planted: the rounding alone would read as a 15× larger angle)


def test_analyze_subspaces_rounds_the_base_per_finetune_dtype_and_says_so(tmp_path, mixed):
    """One fp32 base against a bf16 finetune and an fp32 one: each compared at its own dtype (the base's top-K
    is not shared across them), and the notes name the dtypes."""
    w, _, ft1 = mixed
    f32 = w.clone()
    f32[5, 7] += 0.01
    base = write_folder(tmp_path / "base", {NAME: w})
    fts = [write_folder(tmp_path / "b16", {NAME: ft1}), write_folder(tmp_path / "f32", {NAME: f32})]
    table = analyze_subspaces(
        str(base), [str(f) for f in fts], labels=["b16", "f32"], options=SubspaceOptions(k=K), device="cpu"
    )
    rows = table.to_frame().set_index("model")
    for label, b, f in (("b16", _f64(w, torch.bfloat16), _f64(ft1)), ("f32", _f64(w), _f64(f32))):
        left, right, ratio = _angles(b, f)
        assert rows.loc[label, "changed"] == 1
        assert rows.loc[label, "angle_left_max"] == pytest.approx(left, abs=1e-6), label
        assert rows.loc[label, "angle_right_max"] == pytest.approx(right, abs=1e-6), label
        assert rows.loc[label, "sv_ratio_mean"] == pytest.approx(ratio.mean(), rel=1e-10), label
    said = [n for n in table.notes if "rounded" in n]
    assert len(said) == 1 and "base read as float32 and the finetune as bfloat16, compared at bfloat16" in said[0]
    assert "1 with" in said[0]  # one matrix (the fp32 finetune's pair needed no cast)


# ---------------------------------------------------------------- 3. the Spectra page names what it skipped
@pytest.fixture
def big_vocab(tmp_path, monkeypatch):
    """A home with a tiny Llama of a 70,000-token vocabulary (embedding and head over max_dim 65,536) and a finetune
    of every 2-D weight moved; its down_proj (8 × 16, the only matrix of that shape) is skipped for lack of memory."""
    from subnetviz.analysis import update_pass
    from tests.models import save_model, tiny_model

    home = tmp_path / "home"
    m = tiny_model("llama", seed=0, vocab=70000, hidden=8, intermediate=16, layers=1, heads=2, kv_heads=1)
    base = save_model(m, home / "models" / "base")
    sd = read_state_dict(base)
    g = torch.Generator().manual_seed(1)
    for k in list(sd):
        if sd[k].ndim == 2:
            sd[k] = (sd[k].float() + 0.01 * torch.randn(sd[k].shape, generator=g)).to(sd[k].dtype)
    ft = write_folder(home / "models" / "ft", sd, config_from=base)
    short = "skipped, needs about 9 GiB of memory; this machine has 1 GiB available (simulated)"
    real = update_pass._memory_reason
    monkeypatch.setattr(
        update_pass, "_memory_reason", lambda shape, *a: short if tuple(shape) == (8, 16) else real(shape, *a)
    )
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(home))
    return base, ft


@pytest.mark.slow
def test_the_spectra_page_and_export_name_the_skipped_matrices(big_vocab, typed_options, monkeypatch):
    """The page drew only the decomposed rows: the embedding, the head and a matrix skipped for lack of memory were
    absent with no word, and "N of N layer matrices" counted only the decomposed ones."""
    import streamlit as st

    from tests.app_fixtures import open_page

    seen: dict = {}
    original = st.download_button

    def capture(label, data=None, *args, **kwargs):
        seen[str(kwargs.get("key", ""))] = data
        return original(label, data, *args, **kwargs)

    monkeypatch.setattr(st, "download_button", capture)
    base, ft = big_vocab
    at = open_page("spectra", base=str(base), ft=[str(ft)], spec_view="Effective and stable rank")
    assert not at.exception and not at.error
    texts = [c.value.replace("\\", "").replace("\u200b", "") for c in at.caption]  # (as ui.plain escapes)
    said = [t for t in texts if "matrices got no spectrum" in t]
    assert len(said) == 1, texts
    assert "3 matrices" in said[0]
    assert "embedding-sized (a side over 65,536): " in said[0]
    assert "embed_tokens.weight" in said[0] and "lm_head.weight" in said[0]
    assert "not enough memory: layers.0.mlp.down_proj.weight" in said[0]
    rank = next(t for t in texts if t.startswith("Numerical rank"))
    assert rank.startswith("Numerical rank: 6 of 6 layer matrices decomposed (1 more got no spectrum"), rank
    table = at.dataframe[0].value
    assert len(table) == 6 and "layers.0.mlp.down_proj.weight" not in set(table["name"])
    page = html.unescape(next(data for key, data in seen.items() if "Spectra" in key)())
    notes = re.search(r'<p class="notes">(.*?)</p>', page, re.S).group(1)
    assert (
        notes.count("matrices got no spectrum") == 1
        and "lm_head.weight" in notes
        and "6 of 6 layer matrices decomposed" in (notes)
    )


# ---------------------------------------------------------------- 4. packed experts stored quantized
@pytest.fixture(scope="module")
def gptoss_fp8(tmp_path_factory):
    """A tiny gpt-oss pair whose finetune stores layer 0's packed gate_up_proj as FP8 codes (+ one scale); every
    packed expert tensor is moved 1 %."""
    root = tmp_path_factory.mktemp("spec-gptoss")
    model_cls, cfg = gpt_oss_model(hidden=64, inter=96, experts=4, vocab=80)
    torch.manual_seed(0)
    model_cls(cfg).to(torch.bfloat16).save_pretrained(root / "base")
    sb = read_state_dict(root / "base")
    sd = {k: (v.float() * 1.01).to(v.dtype) if ".experts." in k and v.dim() == 3 else v.clone() for k, v in sb.items()}
    name = "model.layers.0.mlp.experts.gate_up_proj"
    w = sd[name].float()
    scale = w.abs().max() / 448
    sd[name] = (w / scale).to(torch.float8_e4m3fn)
    sd[f"{name}_scale_inv"] = scale.reshape(1)
    qc = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic"}
    return root / "base", write_folder(root / "ft", sd, root / "base", quantization_config=qc)


@pytest.mark.slow
def test_packed_experts_stored_quantized_get_skipped_spectra_rows(gptoss_fp8):
    """Its experts had no spectra row, no skipped row and no note: absent from spectra.csv, the page and the report."""
    from subnetviz.analysis.spectra import skipped_summary

    base, ft = gptoss_fp8
    an = analyze_updates(str(base), [str(ft)], labels=["m"], spectra=SpectraOptions(), device="cpu")
    spec = an.spectra_located()
    key = "layers.0.mlp.experts.gate_up_proj"
    rows = spec[spec["name"].str.startswith(key + "[")]
    assert sorted(rows["name"]) == [f"{key}[{e}]" for e in range(4)]
    assert rows["skipped"].all() and rows["note"].str.contains("packed experts stored quantized on a side").all()
    assert (rows["layer"] == 0).all() and sorted(rows["expert"].astype(int)) == [0, 1, 2, 3]
    assert (rows["rows"] == 64).all() and (rows["cols"] == 192).all()
    other = spec[spec["name"].str.startswith("layers.1.mlp.experts.gate_up_proj[")]
    assert len(other) == 4 and not other["skipped"].any()  # (the float pair of layer 1: decomposed as before)
    line = skipped_summary(spec)
    assert line.startswith("4 matrices got no spectrum") and f"{key} (4 experts)" in line


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["cached", "no-cache"])
def test_analyze_keeps_the_subspace_notes_in_its_folder(gptoss_fp8, tmp_path, monkeypatch, cache):
    """The subspaces' note that the tensor was left out went to stderr only: the folder alone could not show it."""
    from subnetviz.__main__ import main

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    base, ft = gptoss_fp8
    out = tmp_path / "out"
    args = ["analyze", str(base), str(ft), "--subspaces", "2", "--device", "cpu", "--out", str(out)]
    assert main(args + (["--no-cache"] if cache == "no-cache" else [])) == 0
    notes = json.loads((out / "subspaces_notes.json").read_text())
    assert any("1 packed expert tensor(s) stored quantized" in n and "gate_up_proj" in n for n in notes), notes
    spec = (out / "spectra.csv").read_text()
    assert spec.count("packed experts stored quantized on a side") == 4
