"""Quantized tensors that are not 2-D (fbgemm's FP8 Llama 4 experts packed (E, H, N) with a scale per expert and output
feature; a 1-D tensor), against their own form or a float side: compared in row bands of their 2-D view (a few rows
of an expert, or a few experts, at a time), with a memory check asking for what a band and the outputs hold.

Proves: every number of such a pair (changed, changed_codes, the tolerance sweep, η, the ULP histogram, the largest
|Δ|, the per-expert row counts and the per-entry column counts over the experts, the saved mask bits) equals a float64
NumPy reference that decodes the codes itself, with bands forced small enough to cut experts (and the packed mask's
bytes) in many places, or large enough to hold several experts; the pass holds, at its peak, no more than 1.5 × what
its check asked for and a few bytes an entry (dequantised whole, an FP8 pair held ~16 bytes an entry with no check
at all: Llama-4-Maverick's packed experts, ~170 GB; a bf16 side against it was checked at 40 and held 12); a machine
short of the bands' memory refuses in one line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from subnetviz.analysis.sparsity import SparsityOptions
from subnetviz.analysis.updates import analyze_updates
from tests.ckpt_fixtures import write_config_folder
from tests.integration.test_memory2_fixes import _round_e4m3  # (e4m3 rounding, ties to even, in NumPy)

ROOT = Path(__file__).resolve().parents[2]
GU = "model.layers.0.feed_forward.experts.gate_up_proj"  # (E, H, 2I), scale (E, 1, 2I)
DN = "model.layers.0.feed_forward.experts.down_proj"  # (E, I, H), scale (E, H, 1)
E, HID, INTER = 3, 36, 25  # an expert of down_proj holds 900 entries: experts do not start on a byte of the mask
TOLS = (1e-5, 1e-4, 1e-3)
ETA = 0.05
EDGES = (1, 2, 4, 8, 16, 256)  # the ULP histogram's bins: 1, 2, 3-4, 5-8, 9-16, 17-256, >256
FBGEMM = {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0, "modules_to_not_convert": ["lm_head"]}


def _config(quant: dict | None = None) -> dict:
    c = {
        "architectures": ["Llama4ForCausalLM"],
        "model_type": "llama4_text",
        "vocab_size": 64,
        "hidden_size": HID,
        "intermediate_size": INTER,
        "intermediate_size_mlp": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 9,
        "num_local_experts": E,
        "num_experts_per_tok": 1,
        "interleave_moe_layer_step": 1,
        "torch_dtype": "bfloat16",
    }
    if quant:
        c["quantization_config"] = quant
    return c


def _write(folder: Path, sd: dict, quant: dict | None = None) -> Path:
    return write_config_folder(folder, sd, _config(quant))


def _experts(seed: int) -> dict[str, torch.Tensor]:
    """A bf16 packed-experts pair's base side, (E, H, 2I) and (E, I, H)."""
    g = torch.Generator().manual_seed(seed)
    return {
        GU: (torch.randn(E, HID, 2 * INTER, generator=g) * 0.02).to(torch.bfloat16),
        DN: (torch.randn(E, INTER, HID, generator=g) * 0.02).to(torch.bfloat16),
    }


def _moved(sd: dict, seed: int) -> dict:
    """A finetune: one entry in 9 moved."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, w in sd.items():
        w2 = w.float().clone()
        w2.view(-1)[::9] += 0.003 * torch.randn(w2.view(-1)[::9].shape, generator=g)
        out[k] = w2.to(torch.bfloat16)
    return out


def _fbgemm(sd: dict) -> dict:
    """fbgemm's FP8 of packed experts, as transformers' FbgemmFp8Quantize stores Llama 4's: a scale per expert and
    output feature (the last axis), amax / 448: gate_up_proj_scale (E, 1, 2I), down_proj_scale (E, H, 1)."""
    q = {}
    for k, v in sd.items():
        t = v.float().transpose(1, 2)  # (E, N, ·): a row per output feature
        s = t.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 448.0  # (E, N, 1)
        q[k] = (t / s).to(torch.float8_e4m3fn).transpose(1, 2).contiguous()
        q[f"{k}_scale"] = s.transpose(1, 2).contiguous() if k == GU else s
    return q


def _retrained(q: dict) -> dict:
    """An FP8 finetune of ``q``: one code in 7 moved by a step or more (finite), and one scale in 5 × 1.5."""
    out = {k: v.clone() for k, v in q.items()}
    for k in (GU, DN):
        u = out[k].view(torch.uint8).view(-1)[::7]
        new = u ^ 0x09
        u.copy_(torch.where((new & 0x7F) == 0x7F, u ^ 0x10, new))
        out[f"{k}_scale"].view(-1)[::5] *= 1.5
    return out


# --- a NumPy reference, decoding every stored form itself -----------------------------------------------------
def _e4m3(codes: np.ndarray) -> np.ndarray:
    """float64 values of e4m3fn bit patterns (no NaN among them here)."""
    c = codes.astype(np.int64)
    e, m = (c >> 3) & 0xF, c & 7
    mag = np.where(e == 0, m / 8.0 * 2.0**-6, (1 + m / 8.0) * 2.0 ** (e - 7))
    return np.where(c & 0x80, -mag, mag)


def _deq(q: dict, k: str) -> np.ndarray:
    """float32 code[e, i, j] × scale[e, j]: the exact product (4 × 24 bits), rounded once."""
    s = q[f"{k}_scale"].numpy().astype(np.float64)
    return (_e4m3(q[k].view(torch.uint8).numpy()) * s.reshape(s.shape[0], 1, -1)).astype(np.float32)


def _bf16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bf16 (round to nearest, ties to even), as bit patterns."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _key(bits: np.ndarray, width: int) -> np.ndarray:
    """Sign-magnitude patterns (``width`` bits) as integers in order of value: +0 and -0 are one key."""
    i = bits.astype(np.int64)
    mag = i & ((1 << (width - 1)) - 1)
    return np.where(i >> (width - 1) & 1, -mag, mag)


def _hist(ka: np.ndarray, kb: np.ndarray, n: int) -> list[int]:
    dist = np.abs(kb - ka)
    above = [int(np.count_nonzero(dist > e)) for e in EDGES]
    return [n - above[0]] + [above[j] - above[j + 1] for j in range(len(EDGES) - 1)] + [above[-1]]


def _stats(fa: np.ndarray, fb: np.ndarray, changed: np.ndarray) -> dict:
    """Every number of a pair of float64 values ``fa``, ``fb`` (stored as patterns that differ at ``changed``)."""
    d = np.abs(fb - fa)
    rows = changed.reshape(changed.shape[0], -1)
    return {
        "changed": int(changed.sum()),
        "tol": [int(np.count_nonzero(d > t)) for t in TOLS],
        "rel": int(np.count_nonzero(d > ETA * np.maximum(np.abs(fa), np.abs(fb)))),
        "max": float(d.max()),
        "rows": rows.sum(1),
        "cols": rows.sum(0),
        "bits": np.packbits(changed.reshape(-1)),
        "moved": fa != fb,
    }


def _fp8_pair_reference(qa: dict, qb: dict, k: str) -> dict:
    """Two FP8 sides compared as weights (float32), the ULP bins counting the codes' steps."""
    ea, eb = _deq(qa, k), _deq(qb, k)
    ref = _stats(ea.astype(np.float64), eb.astype(np.float64), ea.view(np.uint32) != eb.view(np.uint32))
    ca, cb = qa[k].view(torch.uint8).numpy(), qb[k].view(torch.uint8).numpy()
    codes = ca != cb
    ref["codes"] = int(codes.sum())
    ref["ulp"] = _hist(_key(ca[codes], 8), _key(cb[codes], 8), ref["codes"])
    return ref


def _forms_reference(w: torch.Tensor, q: dict, k: str, float_is_base: bool) -> dict:
    """A bf16 side against an FP8 one, dequantised in float32 and rounded to bf16 (the float side's dtype)."""
    xf, xq = w.view(torch.int16).numpy().view(np.uint16), _to_bf16_bits(_deq(q, k))
    xa, xb = (xf, xq) if float_is_base else (xq, xf)
    ref = _stats(_bf16(xa), _bf16(xb), xa != xb)
    ref["codes"] = ref["changed"]
    ref["ulp"] = _hist(_key(xa[xa != xb], 16), _key(xb[xa != xb], 16), ref["changed"])
    return ref


def _check(rep, k: str, ref: dict) -> None:
    row = rep.tensors.set_index("name").loc[k]
    assert row["changed"] == ref["changed"] and row["changed_codes"] == ref["codes"]
    assert [row[f"changed@{t:g}"] for t in TOLS] == ref["tol"]
    assert row["changed_rel"] == ref["rel"]
    assert list(row["ulp_hist"]) == ref["ulp"]
    assert row["max_abs_delta"] == ref["max"]
    rows, cols = rep.row_col[k.removeprefix("model.")]
    assert np.array_equal(rows, ref["rows"]) and np.array_equal(cols, ref["cols"])
    bits, _ = rep.masks.packed(k)
    assert np.array_equal(bits, ref["bits"])


def _report(base: Path, ft: Path, band: int, monkeypatch):
    from subnetviz.analysis import quant

    monkeypatch.setattr(quant, "_BAND_ELEMENTS", band)
    opts = SparsityOptions(tolerances=TOLS, eta=ETA)
    return analyze_updates(str(base), [str(ft)], labels=["ft"], options=opts, device="cpu", spectra=None)


# bands of ~200 entries cut every expert (900 and 1800 entries) in several places; ~2000 hold one or two experts and
# part of the next; 2^18 the whole stack
BANDS = [200, 2000, 1 << 18]


@pytest.mark.parametrize("band", BANDS)
def test_fbgemm_fp8_experts_against_an_fp8_finetune_in_bands_are_the_numpy_reference(band, tmp_path, monkeypatch):
    q = _fbgemm(_experts(seed=1))
    q2 = _retrained(q)
    base, ft = _write(tmp_path / "fp8", q, FBGEMM), _write(tmp_path / "fp8_ft", q2, FBGEMM)
    rep = _report(base, ft, band, monkeypatch).reports[0]
    for k in (GU, DN):
        ref = _fp8_pair_reference(q, q2, k)
        assert 0 < ref["codes"] < ref["changed"] < np.prod(q[k].shape)  # (a changed scale moves unchanged codes)
        _check(rep, k, ref)


@pytest.mark.parametrize("band", BANDS)
@pytest.mark.parametrize("float_is_base", [True, False], ids=["bf16-base", "fp8-base"])
def test_bf16_against_fbgemm_fp8_experts_in_bands_is_the_numpy_reference(band, float_is_base, tmp_path, monkeypatch):
    w = _experts(seed=2)
    w2 = _moved(w, seed=3)
    wf, wq = (w, w2) if float_is_base else (w2, w)
    q = _fbgemm(wq)
    f, fq = _write(tmp_path / "bf16", wf), _write(tmp_path / "fp8", q, FBGEMM)
    a = _report(*((f, fq) if float_is_base else (fq, f)), band, monkeypatch)
    rep, ref_rounding, ref_changed = a.reports[0], 0, 0
    for k in (GU, DN):
        ref = _forms_reference(wf[k], q, k, float_is_base)
        assert 0 < ref["changed"] < np.prod(q[k].shape)
        _check(rep, k, ref)
        # the rounding-only count: changed entries whose code is the float side quantised with the code's own scale
        # (float32 w / scale, rounded to e4m3); it was 0 for packed experts, diluting the share a note gives
        s = q[f"{k}_scale"].numpy().reshape(E, 1, -1)
        again = _round_e4m3(_bf16(wf[k].view(torch.int16).numpy().view(np.uint16)).astype(np.float32) / s)
        ref_rounding += int(np.count_nonzero((again == _e4m3(q[k].view(torch.uint8).numpy())) & ref["moved"]))
        ref_changed += ref["changed"]
    assert 0 < ref_rounding < ref_changed
    said = [re.search(r"Of their ([\d,]+) changed entries, ([\d,]+)", n) for n in a.notes if "Stored forms" in n]
    assert [(int(m[1].replace(",", "")), int(m[2].replace(",", ""))) for m in said if m] == [
        (ref_changed, ref_rounding)
    ]


@pytest.mark.parametrize("band", [16, 40, 1 << 18])
def test_a_1d_quantized_pair_in_bands_is_the_numpy_reference(band, monkeypatch):
    """A 1-D tensor of FP8 codes with one scale each side: its row counts are its mask, its one column count the
    changed entries (as the float pass counts a 1-D tensor), its mask in order."""
    from subnetviz.analysis import quant

    monkeypatch.setattr(quant, "_BAND_ELEMENTS", band)
    g = torch.Generator().manual_seed(5)
    w = torch.randn(203, generator=g)
    ca = (w * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    cb = ca.clone()
    u = cb.view(torch.uint8)[::4]
    u.copy_(torch.where(((u ^ 0x08) & 0x7F) == 0x7F, u ^ 0x10, u ^ 0x08))
    sa, sb = torch.tensor([0.01]), torch.tensor([0.0125])
    opts = SparsityOptions(tolerances=TOLS, eta=ETA)
    got = quant.compare_quantized(ca, sa, cb, sb, opts, name="w", scale_names=("sa", "sb"), block=(1, 1)).stats
    ea = (_e4m3(ca.view(torch.uint8).numpy()) * np.float64(np.float32(0.01))).astype(np.float32)
    eb = (_e4m3(cb.view(torch.uint8).numpy()) * np.float64(np.float32(0.0125))).astype(np.float32)
    changed = ea.view(np.uint32) != eb.view(np.uint32)
    d = np.abs(eb.astype(np.float64) - ea.astype(np.float64))
    assert got.changed == int(changed.sum()) > 100
    assert list(got.changed_tol) == [int(np.count_nonzero(d > t)) for t in TOLS]
    assert got.changed_rel == int(np.count_nonzero(d > ETA * np.maximum(np.abs(ea), np.abs(eb))))
    assert got.max_abs_delta == float(d.max())
    assert np.array_equal(got.row_counts, changed.astype(np.int64)) and list(got.col_counts) == [changed.sum()]
    assert got.mask.shape == (203,) and np.array_equal(got.mask.numpy(), changed)


def test_short_of_the_bands_memory_is_one_line_before_comparing(tmp_path, monkeypatch):
    """An FP8 pair of packed experts (compared whole before, with no memory check at all) asks first."""
    from subnetviz import config
    from subnetviz.errors import ConfigError

    q = _fbgemm(_experts(seed=4))
    base, ft = _write(tmp_path / "fp8", q, FBGEMM), _write(tmp_path / "fp8_ft", _retrained(q), FBGEMM)
    monkeypatch.setattr(config, "_host_shortfall", lambda n: "needs more than this machine has" if n else None)
    said = r"^model\.layers\.0\.feed_forward\.experts\.\w+ dequantised \(float32\) needs more"
    with pytest.raises(ConfigError, match=said) as exc:
        analyze_updates(str(base), [str(ft)], device="cpu", spectra=None)
    assert "\n" not in str(exc.value)


_MEASURE = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    from tests.memory_probe import checks_asked, peak_during
    from subnetviz.analysis import quant
    from subnetviz.analysis.sparsity import SparsityOptions
    from subnetviz.checkpoints import open_checkpoint

    asked = checks_asked()
    asked.append(0)  # (read when no check asked at all)
    W = sys.argv[3]

    class At:
        names = (W, W)

    def compare(base, ft):
        cb, cf = open_checkpoint(base), open_checkpoint(ft)
        fa, fb = quant.checkpoint_forms(cb)[W], quant.checkpoint_forms(cf)[W]
        a, b = cb.get(W, "cpu"), cf.get(W, "cpu")
        return lambda: quant.compare_aligned(a, b, fa, fb, At, cb, cf, SparsityOptions(), "cpu", quant.FormLog(), 0,
                                             packed=True)

    compare(*sys.argv[4:6])()  # imports and compiled kernels, on a small pair
    run = compare(*sys.argv[1:3])
    (st, _, _), start, peak = peak_during(run)
    print(json.dumps({"start": start, "peak": peak, "asked": asked[-1], "changed": st.changed}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc")
@pytest.mark.parametrize("base_form", ["fp8", "bf16"])
def test_packed_fp8_experts_hold_what_their_check_asked_for(base_form, tmp_path):
    """In a process of its own, 8 packed experts of 1024 × 2048 (16.8 M entries, 16 MB of FP8 codes a side; scales
    (E, 1, N)) against an FP8 finetune, from an FP8 or a bf16 base, the tensors read before: the comparison's peak
    anonymous memory (sampled every millisecond) is at most 1.5 × what its memory check asked for, and a few bytes
    an entry. Dequantised whole, the FP8 pair held ~16 bytes an entry (255 MB here) and asked nothing; the bf16 base
    held ~12 and was checked at 40."""
    paths = []
    for tag, (e, h, n) in (("big", (8, 1024, 2048)), ("small", (2, 16, 64))):
        g = torch.Generator().manual_seed(h)
        w = (torch.randn(e, h, n, generator=g) * 0.02).to(torch.bfloat16)
        s = (w.float().abs().amax(1, keepdim=True) / 448.0).clamp_min(1e-12)
        q = {GU: (w.float() / s).to(torch.float8_e4m3fn), f"{GU}_scale": s}
        q2 = {GU: q[GU].clone(), f"{GU}_scale": s}
        u = q2[GU].view(torch.uint8).view(-1)[::97]
        u.copy_(torch.where(((u ^ 0x08) & 0x7F) == 0x7F, u ^ 0x10, u ^ 0x08))
        base = _write(
            tmp_path / f"{tag}_base", {GU: w} if base_form == "bf16" else q, None if base_form == "bf16" else FBGEMM
        )
        paths += [base, _write(tmp_path / f"{tag}_ft", q2, FBGEMM)]
        del w, q, q2, u
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SUBNETVIZ_HOME": str(tmp_path / "home")}
    args = [str(paths[0]), str(paths[1]), GU, str(paths[2]), str(paths[3])]
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    numel = 8 * 1024 * 2048
    held = got["peak"] - got["start"]
    assert got["changed"] > numel // 200  # (one code in 97 moved; against bf16, almost every entry)
    assert held <= 1.5 * got["asked"], (held / 2**20, got["asked"] / 2**20)
    assert held <= 6 * numel and got["asked"] <= 6 * numel, (held / numel, got["asked"] / numel)
