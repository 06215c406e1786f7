"""A float checkpoint against a quantized copy of it (bf16 against FP8 blocks or bitsandbytes NF4, both ways round):
compared in row bands of whole scale blocks, with the memory check asking for what the bands hold.

Proves: every number of such a pair (changed, the tolerance sweep, η, the ULP histogram, the largest |Δ|, the
row / column counts, the rounding-only count and the saved mask bits) equals a float64 NumPy reference that
decodes the codes itself, with bands forced small enough to cut the matrix (and, with 1001 columns, the packed
mask's bytes) many times; the pass holds, at its peak, no more than 1.5 × what its memory check asked for, and far
less than the ~30 bytes an entry it held when it compared the whole matrix at once (its check asked for 8: a
405B-class matrix checked at 7 GB peaked near 30 GB); a machine short of the bands' memory refuses in one line.
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
from tests.ckpt_fixtures import one_layer_llama_config, write_config_folder

ROOT = Path(__file__).resolve().parents[2]
W = "model.layers.0.mlp.down_proj.weight"
TOLS = (1e-5, 1e-4, 1e-3)
ETA = 0.05
EDGES = (1, 2, 4, 8, 16, 256)  # the ULP histogram's bins: 1, 2, 3-4, 5-8, 9-16, 17-256, >256


def _write(folder: Path, sd: dict, quant: dict | None = None) -> Path:
    return write_config_folder(folder, sd, one_layer_llama_config(quant))


def _pair(rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A bf16 base and its finetune (one entry in 9 moved)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    w2 = w.clone()
    w2.view(-1)[::9] += 0.003 * torch.randn(w2.view(-1)[::9].shape, generator=g)
    return w.to(torch.bfloat16), w2.to(torch.bfloat16)


def _fp8_blocks(w: torch.Tensor, other: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` as e4m3 codes with a float32 scale per block (DeepSeek's weight_scale_inv, blocks ragged at the
    edges), the scale the larger |w| of either side over 448 so that both sides' quotients stay in range."""
    rows, cols = w.shape
    b0, b1 = block
    nr, nc = -(-rows // b0), -(-cols // b1)
    big = torch.zeros(nr * b0, nc * b1)
    big[:rows, :cols] = torch.maximum(w.float().abs(), other.float().abs())
    s = (big.reshape(nr, b0, nc, b1).amax((1, 3)) / 448.0).clamp_min(2.0**-20)
    image = s.repeat_interleave(b0, 0).repeat_interleave(b1, 1)[:rows, :cols]
    return (w.float() / image).to(torch.float8_e4m3fn), s


# --- a NumPy reference, decoding every stored form itself -----------------------------------------------------
def _bf16(bits: np.ndarray) -> np.ndarray:
    """float64 values of bf16 bit patterns."""
    return (bits.astype(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bf16 (round to nearest, ties to even), as bit patterns."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _e4m3(codes: np.ndarray) -> np.ndarray:
    """float64 values of e4m3fn bit patterns (no NaN among them here)."""
    c = codes.astype(np.int64)
    e, m = (c >> 3) & 0xF, c & 7
    mag = np.where(e == 0, m / 8.0 * 2.0**-6, (1 + m / 8.0) * 2.0 ** (e - 7))
    return np.where(c & 0x80, -mag, mag)


def _round_e4m3(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` (|x| ≤ 448) rounded to the nearest e4m3 value, ties to the even code, as float64."""
    v = _e4m3(np.arange(0x7F))  # the non-negative codes in order of value
    a = np.abs(x.astype(np.float64))
    hi = np.clip(np.searchsorted(v, a), 1, v.size - 1)
    lo = hi - 1
    dl, dh = a - v[lo], v[hi] - a
    pick = np.where(dl < dh, lo, np.where(dh < dl, hi, np.where(lo % 2 == 0, lo, hi)))
    return np.copysign(v[pick], x)


def _stats(xa: np.ndarray, xb: np.ndarray, bits: int) -> dict:
    """Every number of a pair compared as stored in an IEEE type of ``bits`` bits (``xa``, ``xb``: the patterns)."""
    ia, ib = (x.view(np.int16 if bits == 16 else np.int32).astype(np.int64) for x in (xa, xb))
    if bits == 16:
        fa, fb = _bf16(xa.view(np.uint16)), _bf16(xb.view(np.uint16))
    else:
        fa, fb = xa.view(np.float32).astype(np.float64), xb.view(np.float32).astype(np.float64)
    changed = ia != ib
    d = np.abs(fb - fa)
    mag = (1 << (bits - 1)) - 1
    key_a = np.where(ia < 0, -(ia & mag), ia & mag)  # sign-magnitude patterns in order: +0 and -0 are one key
    key_b = np.where(ib < 0, -(ib & mag), ib & mag)
    dist = np.abs(key_b - key_a)
    above = [int(np.count_nonzero(dist > e)) for e in EDGES]
    n = int(changed.sum())
    return {
        "changed": n,
        "tol": [int(np.count_nonzero(d > t)) for t in TOLS],
        "rel": int(np.count_nonzero(d > ETA * np.maximum(np.abs(fa), np.abs(fb)))),
        "ulp": [n - above[0]] + [above[j] - above[j + 1] for j in range(len(EDGES) - 1)] + [above[-1]],
        "max": float(d.max()),
        "rows": changed.sum(1),
        "cols": changed.sum(0),
        "bits": np.packbits(changed.reshape(-1)),
        "moved": fa != fb,
    }


def _reference(w_float: np.ndarray, eff32: np.ndarray, float_is_base: bool, precision: str | None) -> dict:
    """The pair as the update pass compares it: the quantized side dequantised in float32 (``eff32``), then, with no
    precision chosen, rounded to the float side's bf16; at fp32 both in float32. ``w_float``: bf16 patterns."""
    if precision is None:
        x_float, x_q, bits = w_float.view(np.uint16), _to_bf16_bits(eff32), 16
    else:
        x_float, x_q, bits = (
            _bf16(w_float.view(np.uint16)).astype(np.float32).view(np.uint32),
            eff32.view(np.uint32),
            32,
        )
    return _stats(x_float, x_q, bits) if float_is_base else _stats(x_q, x_float, bits)


def _report(base: Path, ft: Path, precision: str | None, band: int, monkeypatch):
    from subnetviz.analysis import quant

    monkeypatch.setattr(quant, "_BAND_ELEMENTS", band)
    opts = SparsityOptions(tolerances=TOLS, eta=ETA, precision=precision)
    a = analyze_updates(str(base), [str(ft)], labels=["ft"], options=opts, device="cpu")
    rep = a.reports[0]
    row = rep.tensors.set_index("name").loc[W]
    note = next(n for n in a.notes if "Stored forms differ" in n)
    found = re.search(r"Of their ([\d,]+) changed entries, ([\d,]+)", note)
    rounding = int(found.group(2).replace(",", "")) if found else 0
    return row, rep, rounding


def _check(row, rep, rounding: int, ref: dict, ref_rounding: int) -> None:
    assert row["changed"] == ref["changed"] and row["changed_codes"] == ref["changed"]
    assert [row[f"changed@{t:g}"] for t in TOLS] == ref["tol"]
    assert row["changed_rel"] == ref["rel"]
    assert list(row["ulp_hist"]) == ref["ulp"]
    assert row["max_abs_delta"] == ref["max"]
    rows, cols = rep.row_col[W.removeprefix("model.")]
    assert np.array_equal(rows, ref["rows"]) and np.array_equal(cols, ref["cols"])
    bits, _ = rep.masks.packed(W)
    assert np.array_equal(bits, ref["bits"])
    assert rounding == ref_rounding


# Bands forced small: FP8's 128 × 128 blocks give 128-row bands (5 of a ragged 600 × 1000 matrix); 1 × 32 blocks with
# 1001 columns give 8-row bands (26), each a whole number of the packed mask's bytes
FP8_CASES = {"128x128": ((600, 1000), (128, 128), 1000), "1x32": ((203, 1001), (1, 32), 3 * 1001)}


@pytest.mark.parametrize("case", list(FP8_CASES))
@pytest.mark.parametrize("float_is_base", [True, False], ids=["bf16-base", "fp8-base"])
@pytest.mark.parametrize("precision", [None, "fp32"])
def test_bf16_against_fp8_in_bands_is_the_numpy_reference(case, float_is_base, precision, tmp_path, monkeypatch):
    (rows, cols), block, band = FP8_CASES[case]
    w, w2 = _pair(rows, cols, seed=len(case))
    wf, wq = (w, w2) if float_is_base else (w2, w)  # the float side, and the side stored as FP8
    codes, scale = _fp8_blocks(wq, wf, block)
    quant = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": list(block)}
    f = _write(tmp_path / "float", {W: wf})
    q = _write(tmp_path / "fp8", {W: codes, f"{W}_scale_inv": scale}, quant)
    row, rep, rounding = _report(*((f, q) if float_is_base else (q, f)), precision, band, monkeypatch)

    c = codes.view(torch.uint8).numpy()
    s = scale.numpy().astype(np.float64).repeat(block[0], 0).repeat(block[1], 1)[:rows, :cols]
    eff32 = (_e4m3(c) * s).astype(np.float32)  # exact product (4 × 24 bits), rounded once to float32
    w_float = wf.view(torch.int16).numpy()
    ref = _reference(w_float, eff32, float_is_base, precision)
    again = _round_e4m3(_bf16(w_float.view(np.uint16)).astype(np.float32) / s.astype(np.float32))
    ref_rounding = int(np.count_nonzero((again == _e4m3(c)) & ref["moved"]))
    assert 0 < ref_rounding < ref["changed"]
    _check(row, rep, rounding, ref, ref_rounding)


@pytest.mark.parametrize("float_is_base", [True, False], ids=["bf16-base", "nf4-base"])
@pytest.mark.parametrize("precision", [None, "fp32"])
def test_bf16_against_bitsandbytes_nf4_in_bands_is_the_numpy_reference(float_is_base, precision, tmp_path, monkeypatch):
    """bitsandbytes' own NF4 quantisation (blocks of 64 along each row), decoded here from its packed bytes and its
    quant_map, checked against bitsandbytes' float32 dequantisation; 5-row bands of a 96-row matrix."""
    F = pytest.importorskip("bitsandbytes.functional")
    rows, cols = 96, 512
    w, w2 = _pair(rows, cols, seed=7)
    wf, wq = (w, w2) if float_is_base else (w2, w)
    packed, state = F.quantize_4bit(wq, blocksize=64, quant_type="nf4", compress_statistics=False)
    sd = {W: packed, **{f"{W}.{k}": v for k, v in state.as_dict(packed=True).items()}}
    quant = {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": False,
        "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_quant_storage": "uint8",
    }
    f = _write(tmp_path / "float", {W: wf})
    q = _write(tmp_path / "nf4", sd, quant)
    row, rep, rounding = _report(*((f, q) if float_is_base else (q, f)), precision, 5 * cols, monkeypatch)

    by = packed.numpy().reshape(-1)
    codes = np.stack([by >> 4, by & 15], 1).reshape(rows, cols)  # two codes a byte, the first in the high nibble
    table = sd[f"{W}.quant_map"].numpy().astype(np.float32)
    absmax = np.repeat(sd[f"{W}.absmax"].numpy().astype(np.float32), 64).reshape(rows, cols)
    eff32 = (table[codes].astype(np.float64) * absmax).astype(np.float32)
    state.dtype = torch.float32
    assert np.array_equal(eff32, F.dequantize_4bit(packed.clone(), state).numpy())  # the decoding is bitsandbytes'
    w_float = wf.view(torch.int16).numpy()
    ref = _reference(w_float, eff32, float_is_base, precision)
    x = _bf16(w_float.view(np.uint16)).astype(np.float32) * (np.float32(1) / absmax)  # as bitsandbytes quantises
    ts = np.sort(table)
    mids = (ts[:-1] + ts[1:]) / np.float32(2)
    again = ts[np.searchsorted(mids, np.clip(x, ts[0], ts[-1]), side="left")]  # the nearest value (ties: lower)
    ref_rounding = int(np.count_nonzero((again == table[codes]) & ref["moved"]))
    assert 0 < ref_rounding < ref["changed"]
    _check(row, rep, rounding, ref, ref_rounding)


def test_short_of_the_bands_memory_is_one_line_before_comparing(tmp_path, monkeypatch):
    from subnetviz import config
    from subnetviz.errors import ConfigError

    w, w2 = _pair(256, 512, seed=3)
    codes, scale = _fp8_blocks(w2, w, (128, 128))
    quant = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    f = _write(tmp_path / "float", {W: w})
    q = _write(tmp_path / "fp8", {W: codes, f"{W}_scale_inv": scale}, quant)
    monkeypatch.setattr(config, "_host_shortfall", lambda n: "needs more than this machine has" if n else None)
    with pytest.raises(ConfigError, match=rf"^{re.escape(W)} dequantised \(float32\) needs more") as exc:
        analyze_updates(str(f), [str(q)], device="cpu")
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

    class At:
        names = (sys.argv[3], sys.argv[3])

    def compare(base, ft):
        cb, cf = open_checkpoint(base), open_checkpoint(ft)
        fa, fb = quant.checkpoint_forms(cb)[At.names[0]], quant.checkpoint_forms(cf)[At.names[1]]
        a, b = cb.get(At.names[0], "cpu"), cf.get(At.names[1], "cpu")
        run = lambda: quant.compare_aligned(a, b, fa, fb, At, cb, cf, SparsityOptions(), "cpu", quant.FormLog(), 0,
                                            packed=True)
        return run

    compare(*sys.argv[4:6])()  # imports and compiled kernels, on a small pair
    run = compare(*sys.argv[1:3])
    (st, _, _), start, peak = peak_during(run)
    print(json.dumps({"start": start, "peak": peak, "asked": asked[-1], "changed": st.changed}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc")
def test_bf16_against_fp8_holds_what_its_check_asked_for(tmp_path):
    """In a process of its own, a 2048 × 4096 bf16 base against its FP8 finetune (128 × 128 blocks), the tensors read
    before: the comparison's peak anonymous memory (sampled every millisecond) is at most 1.5 × what its memory
    check asked for, and a few bytes an entry. Compared whole it held ~30 bytes an entry (240 MB here) against a
    check of 8 (64 MB)."""
    quant = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    paths = []
    for name, (rows, cols) in (("big", (2048, 4096)), ("small", (256, 512))):
        w, w2 = _pair(rows, cols, seed=rows)
        codes, scale = _fp8_blocks(w2, w, (128, 128))
        paths += [
            _write(tmp_path / f"{name}_bf16", {W: w}),
            _write(tmp_path / f"{name}_fp8", {W: codes, f"{W}_scale_inv": scale}, quant),
        ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SUBNETVIZ_HOME": str(tmp_path / "home")}
    args = [str(paths[0]), str(paths[1]), W, str(paths[2]), str(paths[3])]
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    numel = 2048 * 4096
    held = got["peak"] - got["start"]
    assert got["changed"] > numel // 2  # (a bf16 model against its FP8 copy differs almost everywhere)
    assert held <= 1.5 * got["asked"], (held / 2**20, got["asked"] / 2**20)
    assert held <= 6 * numel and got["asked"] <= 6 * numel, (held / numel, got["asked"] / numel)
