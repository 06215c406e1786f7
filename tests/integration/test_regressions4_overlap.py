"""The Overlap page's split of a fused QKV into q, k and v reads each mask's part from its bits a block at a time.

Proves: (1) every part's region counts, sizes and per-part chance equal NumPy's count of the membership codes of
the parts cut by hand (GPT-2's column thirds with runs on whole bytes and not, GPT-NeoX's rows per head, blocks of
rows, a bias), bit-packed and bool masks, compiled and not, with the blocks and gathers cut small so that they
fall across runs and bytes at many places; a part that is no view of the tensor leaves it whole. (2) In a process
of its own, 8 bit-packed masks of one 2048 x 6144 (and 2047 x 6141: runs off whole bytes) c_attn: the overlap's
peak anonymous memory (sampled every millisecond) stays under a byte an entry of one mask, and the whole task
(files read) under 1.5 x what its memory check asked for. Unpacking every mask's tensor at once it held ~9 bytes
an entry (108-122 MiB here) against a check of the packed bytes (24 MiB).
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

import subnetviz.analysis.overlap_counts as overlap_counts
from subnetviz.analysis.overlap import mask_overlap
from subnetviz.masks import PackedMasks

ROOT = Path(__file__).resolve().parents[2]

# tensor -> shape; each fused one cut as below (by hand, in NumPy, for the reference)
SHAPES = {"g7.w": (7, 21), "g16.w": (16, 48), "g7.b": (21,), "nx.w": (3 * 3 * 5, 7), "rows.w": (10, 13), "x": (5, 3)}


def _cut_numpy(name: str, m: np.ndarray) -> dict | None:
    """The parts of mask ``m`` (bool, the tensor's shape) as NumPy arrays, row-major in each part's own shape."""
    if name.startswith("g"):  # GPT-2's Conv1D c_attn: thirds of the last dimension
        d = m.shape[-1] // 3
        return {(name, p): m[..., i * d : (i + 1) * d] for i, p in enumerate("qkv")}
    if name == "nx.w":  # GPT-NeoX: rows per head [q, k, v], 3 heads of 5 rows
        return {(name, p): m.reshape(3, 3, 5, 7)[:, i] for i, p in enumerate("qkv")}
    if name == "rows.w":  # blocks of rows, one of them of no whole bytes
        return {(name, "a"): m[:3], (name, "b"): m[3:4], (name, "c"): m[4:]}
    return None


def _parts_of(name: str, t: torch.Tensor) -> dict | None:
    """The same cuts, as torch views (what mask_overlap is given)."""
    if name.startswith("g"):
        d = t.shape[-1] // 3
        return {(name, p): t[..., i * d : (i + 1) * d] for i, p in enumerate("qkv")}
    if name == "nx.w":
        return {(name, p): t.reshape(3, 3, 5, 7)[:, i] for i, p in enumerate("qkv")}
    if name == "rows.w":
        return {(name, "a"): t[:3], (name, "b"): t[3:4], (name, "c"): t[4:]}
    return None


def _masks(n_masks: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{n: rng.random(s) < rng.uniform(0.05, 0.95) for n, s in SHAPES.items()} for _ in range(n_masks)]


def _as_input(sets: list[dict], packed: bool) -> list:
    if not packed:
        return [{n: torch.from_numpy(m) for n, m in s.items()} for s in sets]
    out = []
    for s in sets:
        pm = PackedMasks()
        for n, m in s.items():
            pm.add_bits(n, np.packbits(m.reshape(-1)), m.shape)
        out.append(pm)
    return out


@pytest.mark.parametrize("n_masks", [2, 3, 9, 16])
@pytest.mark.parametrize("packed", [True, False], ids=["bit-packed", "bool"])
@pytest.mark.parametrize("jit", ["1", "0"], ids=["compiled", "numpy"])
@pytest.mark.parametrize("small", [False, True], ids=["blocks", "tiny-blocks"])
def test_each_part_counts_as_numpys_codes_of_the_parts_cut_by_hand(monkeypatch, n_masks, packed, jit, small):
    monkeypatch.setenv("SUBNETVIZ_JIT", jit)
    if small:  # blocks of 64 entries at 16 masks, gathers of 8 and 16: cut across runs and bytes everywhere
        monkeypatch.setattr(overlap_counts, "CHUNK", 64 * 16)
        monkeypatch.setattr(overlap_counts, "PART_STEP", 8)
        monkeypatch.setattr(overlap_counts, "COUNT_STEP", 16)
    sets = _masks(n_masks, seed=n_masks)
    rep = mask_overlap(_as_input(sets, packed), parts_of=_parts_of)
    weights = 1 << np.arange(n_masks)
    want: dict = {}
    for name in SHAPES:
        cut = _cut_numpy(name, sets[0][name])
        for group in cut or {name: None}:
            flat = [(_cut_numpy(name, s[name])[group] if cut else s[name]).reshape(-1) for s in sets]
            want[group] = flat
    assert set(rep.region_counts) == set(want)
    for group, flat in want.items():
        codes = (np.stack(flat).astype(np.int64) * weights[:, None]).sum(0)
        np.testing.assert_array_equal(rep.region_counts[group], np.bincount(codes, minlength=2**n_masks), group)
        rows = rep.by_group[rep.by_group["group"] == group]
        for r in rows.itertuples():
            a, b = flat[int(r.a[1:])], flat[int(r.b[1:])]
            assert (r.count_a, r.count_b, r.intersection, r.numel) == (a.sum(), b.sum(), (a & b).sum(), a.size)
            e = a.sum() * b.sum() / a.size  # each part its own stratum
            assert r.expected_intersection_per_tensor == pytest.approx(e, rel=1e-12)
    counts = np.array([[s[n].sum() for s in sets] for n in SHAPES])
    np.testing.assert_array_equal(rep.tensor_counts, counts)


def test_a_part_that_is_no_view_of_the_tensor_leaves_it_whole():
    """A ``parts_of`` that copies (torch.cat) cannot be read from the bits: the tensor is counted whole."""
    sets = _masks(2, seed=5)

    def copies(name, t):
        if name != "rows.w":
            return None
        return {"ab": torch.cat([t[:2], t[8:]]), "rest": t[2:8]}

    rep = mask_overlap(_as_input(sets, True), parts_of=copies)
    assert "rows.w" in rep.region_counts and "ab" not in rep.region_counts
    codes = sets[0]["rows.w"].reshape(-1).astype(np.int64) + 2 * sets[1]["rows.w"].reshape(-1)
    np.testing.assert_array_equal(rep.region_counts["rows.w"], np.bincount(codes, minlength=4))


_MEASURE = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from tests.memory_probe import checks_asked, peak_during
    from subnetviz.jobs.cluster_pages import files_overlap_task, sets_overlap
    from subnetviz.masks import MaskSet, PackedMasks, load_mask_set, save_mask_set

    asked = checks_asked()
    folder, h, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    def files(h):
        rng, paths = np.random.default_rng(h), []
        for i in range(n):
            pm = PackedMasks()
            bits = rng.integers(0, 256, (3 * h * h + 7) // 8, dtype=np.uint8)
            pm.add_bits("transformer.h.0.attn.c_attn.weight", bits, (h, 3 * h))
            pm.add_bits("transformer.h.0.mlp.c_fc.weight", rng.integers(0, 256, 8, dtype=np.uint8), (8, 8))
            paths.append(os.path.join(folder, f"m{h}_{i}.safetensors"))
            save_mask_set(paths[-1], MaskSet(pm, {}))
        return paths

    labels = [f"m{i}" for i in range(n)]
    files_overlap_task(files(h % 64 + 61), labels)  # imports and compiled kernels, on small masks
    big = files(h)
    if sys.argv[4] == "split":  # the overlap of masks already read
        sets = [load_mask_set(p, packed=True) for p in big]
        rep, start, peak = peak_during(lambda: sets_overlap(sets, labels))
    else:  # the whole task: the files read, then overlapped
        before = len(asked)
        rep, start, peak = peak_during(lambda: files_overlap_task(big, labels))
        asked = asked[before:]  # the task's own check first, then each file's as it is read
    codes = np.zeros((h, h), np.int64)
    for i, p in enumerate(big):  # NumPy, after the measure: the k part (columns h:2h) of each mask's bits
        bits = load_mask_set(p, packed=True).masks.packed("transformer.h.0.attn.c_attn.weight")[0]
        codes += np.unpackbits(bits, count=3 * h * h).reshape(h, 3 * h)[:, h : 2 * h].astype(np.int64) << i
    k_right = np.array_equal(rep.report.region_counts[(0, "k")], np.bincount(codes.reshape(-1), minlength=2**n))
    groups = sorted(str(g) for g in rep.report.region_counts)
    print(json.dumps({"held": peak - start, "asked": asked[:1], "groups": groups, "k_right": k_right}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc")
@pytest.mark.parametrize("h", [2048, 2047], ids=["whole-bytes", "off-bytes"])
@pytest.mark.parametrize("what", ["split", "task"])
def test_the_split_of_eight_masks_holds_little_and_what_its_check_asked_for(tmp_path, h, what):
    """``split``: the overlap of masks already read holds less than a byte an entry of one mask (it held ~9: 8
    masks unpacked, and their parts copied). ``task``: the files read and overlapped, at most 1.5 x what the memory
    check asked for (it held ~4.5 x the packed bytes it asked for)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SUBNETVIZ_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tmp_path), str(h), "8", what],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["groups"] == ["(0, 'k')", "(0, 'mlp_in')", "(0, 'q')", "(0, 'v')"] and got["k_right"]
    if what == "split":
        assert got["held"] < 3 * h * h, got["held"] / (3 * h * h)
    else:
        asked = got["asked"][0]  # the overlap's check, before the first file is read
        assert asked >= 8 * 3 * h * h / 8  # (at least the masks' packed bytes)
        assert got["held"] <= 1.5 * asked, (got["held"] / 2**20, asked / 2**20)
