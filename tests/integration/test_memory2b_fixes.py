"""The float64 Δ the spectra decompose, of a pair stored in one quantized form (FP8 blocks against FP8 blocks,
bitsandbytes NF4 against NF4, compressed-tensors' asymmetric int8 groups against the same) and of a float pair that
the update pass compares through :func:`~subnetviz.analysis.quant.compare_aligned` (dtypes that differ, a precision
chosen): formed band by band into one float64 array.

Proves: each Δ equals, bit for bit, a float64 NumPy reference that decodes the stored codes itself (and rounds to
the chosen precision itself), with bands forced small enough to cut the matrix many times (ragged last band, scale
blocks ragged at the edges); in a process of its own, forming the Δ of a 2048 × 4096 FP8 pair holds at its peak
about the Δ itself (8 bytes an entry), under the 16 the spectra's memory check (``spectrum_bytes``) asks for. Formed
whole, both sides dequantised in float32 and float64 and their difference held ~32 bytes an entry (a float pair 24):
twice what was checked, so a matrix that passed the check could take the server down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from subnetviz.analysis import quant
from subnetviz.analysis.sparsity import SparsityOptions
from subnetviz.checkpoints import open_checkpoint
from tests.ckpt_fixtures import one_layer_llama_config, write_config_folder

ROOT = Path(__file__).resolve().parents[2]
W = "model.layers.0.mlp.down_proj.weight"
STEM = W.removesuffix(".weight")


def _write(folder: Path, sd: dict, quant: dict | None = None) -> Path:
    return write_config_folder(folder, sd, one_layer_llama_config(quant))


class _At:
    names = (W, W)


def _delta(base: Path, ft: Path, precision: str | None, band: int, monkeypatch) -> torch.Tensor:
    """The Δ :func:`compare_aligned` hands to the spectra, its bands forced to about ``band`` entries."""
    monkeypatch.setattr(quant, "_BAND_ELEMENTS", band)
    cb, cf = open_checkpoint(str(base)), open_checkpoint(str(ft))
    fa, fb = quant.checkpoint_forms(cb)[W], quant.checkpoint_forms(cf)[W]
    a, b = cb.get(W, "cpu"), cf.get(W, "cpu")
    opts = SparsityOptions(precision=precision)
    _, _, delta = quant.compare_aligned(a, b, fa, fb, _At, cb, cf, opts, "cpu", quant.FormLog(), 0, packed=True)
    d = delta()
    assert d.dtype == torch.float64 and tuple(d.shape) == tuple(a.shape)
    return d


def _same_bits(d: torch.Tensor, ref: np.ndarray) -> None:
    assert ref.dtype == np.float64 and d.shape == ref.shape
    assert np.array_equal(d.numpy().view(np.int64), ref.view(np.int64))  # bit for bit (signed zeros too)
    assert np.count_nonzero(ref) > 0


# --- NumPy decoding ---------------------------------------------------------------------------------------------
def _bf16(bits: np.ndarray) -> np.ndarray:
    """float64 values of bf16 bit patterns."""
    return (bits.astype(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` rounded to bf16 (to nearest, ties to even), as float64."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return _bf16(((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16))


def _as(x32: np.ndarray, precision: str | None) -> np.ndarray:
    """float32 weights as the comparison sees them, in float64: as they are, or rounded to bf16."""
    return _round_bf16(x32) if precision == "bf16" else x32.astype(np.float64)


def _e4m3(codes: np.ndarray) -> np.ndarray:
    """float64 values of e4m3fn bit patterns (no NaN among them here)."""
    c = codes.astype(np.int64)
    e, m = (c >> 3) & 0xF, c & 7
    mag = np.where(e == 0, m / 8.0 * 2.0**-6, (1 + m / 8.0) * 2.0 ** (e - 7))
    return np.where(c & 0x80, -mag, mag)


def _weights(rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A float32 weight and its finetune (one entry in 7 moved)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    w2 = w.clone()
    w2.view(-1)[::7] += 0.004 * torch.randn(w2.view(-1)[::7].shape, generator=g)
    return w, w2


def _fp8_blocks(w: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` as e4m3 codes with a float32 scale per block (DeepSeek's weight_scale_inv, ragged at the edges)."""
    rows, cols = w.shape
    b0, b1 = block
    nr, nc = -(-rows // b0), -(-cols // b1)
    big = torch.zeros(nr * b0, nc * b1)
    big[:rows, :cols] = w.abs()
    s = (big.reshape(nr, b0, nc, b1).amax((1, 3)) / 448.0).clamp_min(2.0**-20)
    image = s.repeat_interleave(b0, 0).repeat_interleave(b1, 1)[:rows, :cols]
    return (w / image).to(torch.float8_e4m3fn), s


FP8 = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}


@pytest.mark.parametrize("precision", [None, "bf16"])
def test_fp8_pair_delta_in_bands_is_the_numpy_reference(precision, tmp_path, monkeypatch):
    """600 × 1000 with 128 × 128 blocks (the last ragged both ways), 128-row bands: 5 of them."""
    w, w2 = _weights(600, 1000, seed=1)
    (ca, sa), (cb, sb) = _fp8_blocks(w, (128, 128)), _fp8_blocks(w2, (128, 128))
    base = _write(tmp_path / "a", {W: ca, f"{W}_scale_inv": sa}, FP8)
    ft = _write(tmp_path / "b", {W: cb, f"{W}_scale_inv": sb}, FP8)
    d = _delta(base, ft, precision, 1000, monkeypatch)

    def eff(c: torch.Tensor, s: torch.Tensor) -> np.ndarray:  # exact product (4 × 24 bits), rounded once to float32
        image = s.numpy().astype(np.float64).repeat(128, 0).repeat(128, 1)[:600, :1000]
        return (_e4m3(c.view(torch.uint8).numpy()) * image).astype(np.float32)

    _same_bits(d, _as(eff(cb, sb), precision) - _as(eff(ca, sa), precision))


def test_bitsandbytes_nf4_pair_delta_in_bands_is_the_numpy_reference(tmp_path, monkeypatch):
    """bitsandbytes' own NF4 (blocks of 64 along each row), decoded here from its packed bytes and quant_map;
    5-row bands of a 96-row matrix."""
    F = pytest.importorskip("bitsandbytes.functional")
    rows, cols = 96, 512
    quant_config = {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": False,
        "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_quant_storage": "uint8",
    }
    effs = []
    for side, x in zip("ab", _weights(rows, cols, seed=2), strict=True):
        packed, state = F.quantize_4bit(x.to(torch.bfloat16), blocksize=64, quant_type="nf4", compress_statistics=False)
        sd = {W: packed, **{f"{W}.{k}": v for k, v in state.as_dict(packed=True).items()}}
        effs.append(_write(tmp_path / side, sd, quant_config))
        by = packed.numpy().reshape(-1)
        codes = np.stack([by >> 4, by & 15], 1).reshape(rows, cols)  # two codes a byte, the first in the high nibble
        table = sd[f"{W}.quant_map"].numpy().astype(np.float32)
        absmax = np.repeat(sd[f"{W}.absmax"].numpy().astype(np.float32), 64).reshape(rows, cols)
        effs.append((table[codes].astype(np.float64) * absmax).astype(np.float32))
    d = _delta(effs[0], effs[2], None, 5 * cols, monkeypatch)
    _same_bits(d, effs[3].astype(np.float64) - effs[1].astype(np.float64))


def test_compressed_tensors_asymmetric_int8_groups_delta_in_bands_is_the_numpy_reference(tmp_path, monkeypatch):
    """int8 codes with a bf16 scale and an int8 zero point per group of 32 columns: w = (code − zero) × scale;
    3-row bands of a 203-row matrix."""
    rows, cols, group = 203, 256, 32
    weights = {"num_bits": 8, "type": "int", "symmetric": False, "strategy": "group", "group_size": group}
    quant_config = {
        "quant_method": "compressed-tensors",
        "format": "int-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}},
        "ignore": ["lm_head"],
    }
    g = torch.Generator().manual_seed(3)
    scale = (torch.rand(rows, cols // group, generator=g) * 1e-3 + 1e-4).to(torch.bfloat16)
    sides = []
    for side in "ab":
        codes = torch.randint(-128, 128, (rows, cols), generator=g, dtype=torch.int8)
        zero = torch.randint(-20, 21, (rows, cols // group), generator=g, dtype=torch.int8)
        sd = {W: codes, f"{STEM}.weight_scale": scale, f"{STEM}.weight_zero_point": zero}
        folder = _write(tmp_path / side, sd, quant_config)
        s = _bf16(scale.view(torch.int16).numpy().view(np.uint16)).repeat(group, 1)
        z = zero.numpy().astype(np.float64).repeat(group, 1)
        sides.append((folder, ((codes.numpy().astype(np.float64) - z) * s).astype(np.float32)))
    forms = quant.checkpoint_forms(open_checkpoint(str(sides[0][0])))
    assert forms[W].kind == "int8" and forms[W].zero and forms[W].group == group  # (the form this test means)
    d = _delta(sides[0][0], sides[1][0], None, 3 * cols, monkeypatch)
    _same_bits(d, sides[1][1].astype(np.float64) - sides[0][1].astype(np.float64))


@pytest.mark.parametrize("case", ["fp32-bf16", "fp32-at-bf16"])
def test_float_pair_delta_in_bands_is_the_numpy_reference(case, tmp_path, monkeypatch):
    """A float32 base against a bf16 finetune (the base rounded to bf16, as saving it in bf16 would), and a float32
    pair at a chosen bf16 precision; 3-row bands of a 203 × 1001 matrix."""
    w, w2 = _weights(203, 1001, seed=4)
    if case == "fp32-bf16":
        w2 = w2.to(torch.bfloat16)
    base, ft = _write(tmp_path / "a", {W: w}), _write(tmp_path / "b", {W: w2})
    precision = "bf16" if case == "fp32-at-bf16" else None
    d = _delta(base, ft, precision, 3 * 1001, monkeypatch)
    xa, xb = w.numpy(), w2.float().numpy()
    ref_a = _round_bf16(xa)  # both cases see the base in bf16
    ref_b = _round_bf16(xb) if precision else xb.astype(np.float64)
    _same_bits(d, ref_b - ref_a)


_MEASURE = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    from tests.memory_probe import checks_asked, peak_during
    from subnetviz.analysis import quant
    from subnetviz.analysis.sparsity import SparsityOptions
    from subnetviz.analysis.update_pass import spectrum_bytes
    from subnetviz.checkpoints import open_checkpoint

    class At:
        names = (sys.argv[3], sys.argv[3])

    def compare(base, ft):
        cb, cf = open_checkpoint(base), open_checkpoint(ft)
        fa, fb = quant.checkpoint_forms(cb)[At.names[0]], quant.checkpoint_forms(cf)[At.names[1]]
        a, b = cb.get(At.names[0], "cpu"), cf.get(At.names[1], "cpu")
        _, _, delta = quant.compare_aligned(a, b, fa, fb, At, cb, cf, SparsityOptions(), "cpu", quant.FormLog(), 0,
                                            packed=True)
        return delta, tuple(a.shape)

    small, _ = compare(*sys.argv[4:6])
    small()  # imports and lazy setup, on a small pair
    delta, shape = compare(*sys.argv[1:3])
    d, start, peak = peak_during(delta)
    print(json.dumps({"start": start, "peak": peak, "checked": spectrum_bytes(shape, False),
                      "nonzero": int(torch.count_nonzero(d))}))
    """
)


def _measure(tmp_path: Path, sides) -> dict:
    """Peak RssAnon growth while ``delta()`` of the big pair forms, in a process of its own, sampled every ms."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SUBNETVIZ_HOME": str(tmp_path / "home")}
    args = [str(sides["big"][0]), str(sides["big"][1]), W, str(sides["small"][0]), str(sides["small"][1])]
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc")
@pytest.mark.parametrize("form", ["fp8", "bf16-fp32"])
def test_delta_holds_the_delta_not_four_copies(form, tmp_path):
    """A 2048 × 4096 FP8 pair (128 × 128 blocks), and a float32 base against a bf16 finetune (compared at bf16
    through compare_aligned): forming the Δ grows anonymous memory by the Δ (8 bytes an entry) and one band's
    temporaries (measured 9-12 bytes an entry in all), under the 16 spectrum_bytes asks for besides its Gram.
    Formed whole it grew ~32 (FP8) and ~24 (float)."""
    sides = {}
    for name, (rows, cols) in (("big", (2048, 4096)), ("small", (256, 512))):
        w, w2 = _weights(rows, cols, seed=rows)
        if form == "fp8":
            (ca, sa), (cb, sb) = _fp8_blocks(w, (128, 128)), _fp8_blocks(w2, (128, 128))
            sides[name] = (
                _write(tmp_path / f"{name}_a", {W: ca, f"{W}_scale_inv": sa}, FP8),
                _write(tmp_path / f"{name}_b", {W: cb, f"{W}_scale_inv": sb}, FP8),
            )
        else:
            sides[name] = (_write(tmp_path / f"{name}_a", {W: w}), _write(tmp_path / f"{name}_b", {W: w2.bfloat16()}))
    got = _measure(tmp_path, sides)
    numel = 2048 * 4096
    held = got["peak"] - got["start"]
    assert got["nonzero"] > numel // 10  # (a real Δ was formed)
    assert held <= 8 * numel + (48 << 20), held / numel  # the Δ, and one band's temporaries (~1 M entries)
    assert held <= got["checked"] - 8 * 2048 * 2048, (held / 2**20, got["checked"] / 2**20)  # (less its Gram)
