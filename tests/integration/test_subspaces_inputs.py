"""The subspaces pass on the inputs it got wrong: gpt-oss's packed experts and biases, a comparison skipped for lack
of memory (cached for ever), NaN weights (a SciPy traceback), mixed stored dtypes and forms (rounding counted as
update), a zero or tied base (an overlap that depended on where the changes lie) and the notes of the cached path;
each against float64 NumPy / SciPy, the update pass, or numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from subnetviz.analysis import subspaces as S
from subnetviz.analysis.subspaces import SubspaceOptions, analyze_subspaces, compare_subspaces
from subnetviz.analysis.subspaces_linalg import principal_threshold, top_k
from subnetviz.analysis.updates import analyze_updates
from tests.ckpt_fixtures import fp8_folder, gpt_oss_model, read_state_dict, write_folder
from tests.models import make_llama

SHORT = "needs about 9 GiB of memory; this machine has 1 GiB available (simulated)"


def _moved(sd: dict, share: float, seed: int, keep=lambda name, t: True) -> dict:
    """``sd`` with ``share`` of the entries of each 2-D / 3-D float tensor that ``keep`` accepts moved (+0.01)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if v.dim() >= 2 and v.dtype.is_floating_point and keep(k, v):
            out[k] = torch.where(torch.rand(v.shape, generator=g) < share, v.float() + 0.01, v.float()).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def _reference(b: np.ndarray, f: np.ndarray, k: int) -> tuple[float, float, float]:
    """(largest left angle, largest right angle, mean σ ratio) of the top-``k`` subspaces, float64 NumPy + SciPy."""
    from scipy.linalg import subspace_angles

    ub, sb, vb = np.linalg.svd(b, full_matrices=False)
    uf, sf, vf = np.linalg.svd(f, full_matrices=False)
    left = np.degrees(subspace_angles(ub[:, :k], uf[:, :k])).max()
    right = np.degrees(subspace_angles(vb[:k].T, vf[:k].T)).max()
    return left, right, float((sf[:k] / sb[:k]).mean())


# --- 1. packed experts and their biases ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def gptoss(tmp_path_factory):
    """A tiny gpt-oss pair saved by transformers (bf16): experts packed (E, in, out), biases (E, out); 5 % of
    every expert tensor's and bias's entries moved in the finetune."""
    model_cls, cfg = gpt_oss_model(hidden=64, inter=96, experts=4, vocab=80)
    root = tmp_path_factory.mktemp("sub-gptoss")
    torch.manual_seed(0)
    model_cls(cfg).to(torch.bfloat16).save_pretrained(root / "base")
    sd = read_state_dict(root / "base")
    ft = write_folder(root / "ft", _moved(sd, 0.05, 1, lambda k, v: ".experts." in k), root / "base")
    return root / "base", ft, sd, read_state_dict(ft)


def test_packed_experts_are_compared_one_by_one_and_biases_are_no_matrices(gptoss):
    """``_matrices`` kept any 2-D tensor: gpt-oss's packed biases (E, out) were decomposed as if they were the
    MLP's weights (rows of module gate_up / down, 0.00° in the heatmap), while the (E, in, out) experts were
    silently absent. Now each expert is a matrix of its own, named ``name[e]`` as the spectra name it."""
    base, ft, sb, sf = gptoss
    k = 4
    rows = analyze_subspaces(str(base), [str(ft)], labels=["m"], options=SubspaceOptions(k=k)).to_frame()
    names = set(rows["name"])
    assert not any("bias" in n for n in names), sorted(names)
    packed = [n for n in sb if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert len(packed) == 4
    for name in packed:
        for e in range(4):
            row = rows.set_index("name").loc[f"{name}[{e}]"]
            assert row["expert"] in (e, str(e)) and row["module"] in ("gate_up", "down") and row["layer"] in (0, 1)
            b, f = sb[name][e].double().numpy(), sf[name][e].double().numpy()
            assert (row["rows"], row["cols"]) == b.shape
            assert row["changed"] == int((b != f).sum()) > 0
            left, right, ratio = _reference(b, f, k)
            assert abs(row["angle_left_max"] - left) < 1e-6 and abs(row["angle_right_max"] - right) < 1e-6
            assert abs(row["sv_ratio_mean"] - ratio) < 1e-9
    # the attention's and router's 2-D weights are there as before, and nothing else
    assert len(rows) == 4 * 4 + sum(1 for n, t in sb.items() if t.dim() == 2 and not n.endswith("bias"))


def test_a_packed_expert_tensor_stored_quantized_is_left_out_with_a_note(gptoss, tmp_path):
    """A packed expert tensor whose finetune is stored as FP8 codes is not split into experts: it is left out and
    the notes count it (not silently absent)."""
    base, _, sb, _ = gptoss
    sd = dict(sb)
    name = "model.layers.0.mlp.experts.gate_up_proj"
    w = sd[name].float()
    scale = w.abs().max() / 448
    sd[name] = (w / scale).to(torch.float8_e4m3fn)
    sd[f"{name}_scale_inv"] = scale.reshape(1)
    qc = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic"}
    ft = write_folder(tmp_path / "ft", sd, base, quantization_config=qc)
    table = analyze_subspaces(str(base), [str(ft)], labels=["m"], options=SubspaceOptions(k=2))
    names = set(table.to_frame()["name"])
    assert not any(n.startswith(name) for n in names)
    assert "model.layers.1.mlp.experts.gate_up_proj[3]" in names
    assert any("1 packed expert tensor(s) stored quantized" in n and "gate_up_proj" in n for n in table.notes)


# --- 2. a skip for lack of memory is not served for good ---------------------------------------------------------
def test_a_comparison_skipped_for_lack_of_memory_is_computed_again_once_memory_allows(tmp_path, monkeypatch):
    base = make_llama(tmp_path / "base", seed=0)
    ft = write_folder(tmp_path / "ft", _moved(read_state_dict(base), 0.05, 2), base)
    args = dict(labels=["m"], options=SubspaceOptions(k=2), device="cpu", cache_root=tmp_path / "cache")
    name = "model.layers.0.mlp.down_proj.weight"
    real, real_analyze = S._memory_short, S.analyze_subspaces
    monkeypatch.setattr(S, "_memory_short", lambda ck_b, ck, at, *a, **kw: SHORT if at.names[0] == name else None)
    rows, vectors, notes = S.cached_subspaces(str(base), [str(ft)], with_notes=True, **args)
    row = rows.set_index("name").loc[name]
    assert row["method"] == f"skipped, {SHORT}" and math.isnan(row["angle_left_max"])
    assert any("1 matrix comparison(s) skipped" in n for n in notes)
    cached = dict(labels=["m"], options=args["options"], device="cpu", cache_root=args["cache_root"])
    assert S.is_cached(str(base), [str(ft)], **cached)  # still short: the cached result is the answer
    computed = []
    monkeypatch.setattr(S, "analyze_subspaces", lambda *a, **kw: computed.append(1) or real_analyze(*a, **kw))
    again = S.cached_subspaces(str(base), [str(ft)], **args)[0]
    assert not computed and again.set_index("name").loc[name, "method"] == f"skipped, {SHORT}"
    monkeypatch.setattr(S, "_memory_short", real)  # memory to spare now: the row is computed
    assert not S.is_cached(str(base), [str(ft)], **cached)  # (the page prices it as work, not as a cache read)
    rows2, vectors2, notes2 = S.cached_subspaces(str(base), [str(ft)], with_notes=True, **args)
    row2 = rows2.set_index("name").loc[name]
    assert computed and row2["method"] == "gram" and row2["angle_left_max"] > 0
    assert len(vectors2) == len(vectors) + 2  # its K = 2 angles and ratios too
    assert any("computed again" in n for n in notes2)
    assert S.is_cached(str(base), [str(ft)], **cached)


# --- 3. NaN / Inf weights -------------------------------------------------------------------------------------
def test_a_nan_weight_is_the_update_pass_one_line_error(tmp_path):
    from subnetviz.errors import NonFiniteError

    base = make_llama(tmp_path / "base", seed=0)
    sd = read_state_dict(base)
    sd["model.layers.1.mlp.up_proj.weight"][0, 3] = float("nan")
    sd["model.layers.1.mlp.up_proj.weight"][2, 1] = float("inf")
    ft = write_folder(tmp_path / "ft", sd, base)
    with pytest.raises(NonFiniteError) as sub:
        analyze_subspaces(str(base), [str(ft)], labels=["m"], options=SubspaceOptions(k=2), device="cpu")
    with pytest.raises(NonFiniteError) as upd:
        analyze_updates(str(base), [str(ft)], labels=["m"], device="cpu")
    msg = str(sub.value)
    assert msg == str(upd.value) and "\n" not in msg
    assert msg.startswith(f"{ft} :: model.layers.1.mlp.up_proj.weight: 2 NaN/Inf value(s)")


# --- 4. the principal-weight selection --------------------------------------------------------------------
@pytest.mark.parametrize("count", [1, 2, 37, 500, 999, 1000])
def test_principal_threshold_is_the_count_th_largest_with_its_ties(count):
    """The radix selection (no copy, no int64 indices: torch.kthvalue's 12 bytes per entry) against a sort."""
    g = torch.Generator().manual_seed(count)
    mag = torch.rand(1000, generator=g) * 3
    mag[100:180] = 1.5  # ties, and exact zeros
    mag[200:230] = 0.0
    t, above, tied = principal_threshold(mag, count)
    ref = np.sort(mag.double().numpy())[::-1]
    assert t == ref[count - 1] and above == int((ref > t).sum()) and tied == int((ref == t).sum())
    assert above < count <= above + tied


def test_the_principal_overlap_takes_no_kthvalue(monkeypatch):
    """``torch.kthvalue`` copied the magnitudes and took int64 indices (measured 12 bytes per entry beyond them:
    18 at the mask step where the memory budget said 11); the selection no longer calls it."""

    def refuse(*a, **k):
        raise AssertionError("torch.kthvalue called")

    monkeypatch.setattr(torch, "kthvalue", refuse)
    rng = np.random.default_rng(0)
    wb = torch.tensor(rng.standard_normal((40, 30)))
    wf = wb.clone()
    wf[::3, ::2] += 0.5
    res = compare_subspaces("w", wb, wf, SubspaceOptions(k=3))
    u, s, vt = np.linalg.svd(wb.numpy())
    recon = np.abs((u[:, :3] * s[:3]) @ vt[:3]).ravel()
    changed = (wf != wb).numpy().ravel()
    top = np.argsort(-recon)[: changed.sum()]  # no ties in random data: the overlap is exact
    assert res.principal_overlap == pytest.approx(changed[top].sum() / changed.sum(), abs=1e-12)


# --- 5. mixed stored dtypes and forms -------------------------------------------------------------------------
def test_an_fp32_base_against_a_bf16_finetune_counts_the_update_not_the_rounding(tmp_path):
    """The update mask was ``base != ft`` when the dtypes differed: every fp32 base value not representable in
    bf16 read as changed (3072 of 3072). The update pass compares at the finetune's dtype (base rounded to it)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 48, generator=g)
    planted = torch.rand(64, 48, generator=g) < 0.05
    ft = torch.where(planted, w.to(torch.bfloat16).float() + 0.25, w).to(torch.bfloat16)
    moved = planted & (ft != w.to(torch.bfloat16))  # (by hand: +0.25 moves every bf16 value of this size)
    assert moved.sum() == planted.sum()
    # the direct API: a finetune's dtype by default
    assert compare_subspaces("w", w, ft, SubspaceOptions(k=4)).changed == int(planted.sum())
    write_folder(tmp_path / "base", {"model.layers.0.mlp.down_proj.weight": w})
    write_folder(tmp_path / "ft", {"model.layers.0.mlp.down_proj.weight": ft})
    rows = analyze_subspaces(str(tmp_path / "base"), [str(tmp_path / "ft")], labels=["m"], device="cpu").to_frame()
    upd = analyze_updates(str(tmp_path / "base"), [str(tmp_path / "ft")], labels=["m"], device="cpu")
    assert int(rows["changed"].iloc[0]) == int(planted.sum()) == int(upd.report("m").tensors["changed"].sum())


@pytest.fixture(scope="module")
def fp8_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sub-fp8")
    base = make_llama(root / "base", seed=0)
    ft = write_folder(root / "ft", _moved(read_state_dict(base), 0.05, 3), base)
    return base, fp8_folder(base, root / "base_fp8"), ft, fp8_folder(ft, root / "ft_fp8")


@pytest.mark.parametrize("pair", ["bf16-fp8", "fp8-bf16", "fp8-fp8"])
def test_changed_is_the_update_pass_changed_for_every_stored_form(fp8_pairs, pair):
    """A bf16 side against FP8 codes is compared at bf16 (both sides cast to it), an FP8 pair as dequantised
    float32: per tensor, ``changed`` is the update pass's (it counted float64 value changes, and rounding)."""
    base, base_fp8, ft, ft_fp8 = fp8_pairs
    b, f = {"bf16-fp8": (base, ft_fp8), "fp8-bf16": (base_fp8, ft), "fp8-fp8": (base_fp8, ft_fp8)}[pair]
    rows = analyze_subspaces(str(b), [str(f)], labels=["m"], options=SubspaceOptions(k=2), device="cpu").to_frame()
    t = analyze_updates(str(b), [str(f)], labels=["m"], device="cpu").report("m").tensors
    want = dict(zip(t["name"], t["changed"], strict=True))
    got = dict(zip(rows["name"], rows["changed"], strict=True))
    quantized = [n for n in got if ".layers." in n]
    assert len(quantized) == 14 and sum(got[n] for n in quantized) > 0
    assert {n: int(got[n]) for n in got} == {n: int(want[n]) for n in got}
    if pair == "bf16-fp8":  # by hand, one tensor: the dequantised codes rounded to bf16 against the bf16 base
        name = "model.layers.0.self_attn.q_proj.weight"
        sb, sf = read_state_dict(b), read_state_dict(f)
        scale = sf[f"{name}_scale_inv"].float().repeat_interleave(8, 0).repeat_interleave(8, 1)
        deq = (sf[name].float() * scale[: sb[name].shape[0], : sb[name].shape[1]]).to(torch.bfloat16)
        assert got[name] == int((deq.view(torch.int16) != sb[name].view(torch.int16)).sum())


# --- 6. a zero base, and ties -----------------------------------------------------------------------------------
def test_a_zero_base_has_no_principal_subspace():
    """W_base = 0: its top-K subspace is arbitrary, so its angles and principal overlap are undefined (NaN); the
    overlap read 1.0 for changes in the first rows and 0.0 for the same changes in the last ones."""
    g = torch.Generator().manual_seed(0)
    base = torch.zeros(32, 16, dtype=torch.bfloat16)
    fill = torch.randn(4, 16, generator=g).to(torch.bfloat16)
    for rows in (slice(0, 4), slice(28, 32)):
        ft = base.clone()
        ft[rows] = fill
        r = compare_subspaces("w", base, ft, SubspaceOptions(k=4))
        assert math.isnan(r.principal_overlap) and np.isnan(r.angles_left).all() and np.isnan(r.angles_right).all()
        assert r.changed == 64 and r.principal_overlap_chance == 64 / 512
    same = compare_subspaces("w", base, base.clone(), SubspaceOptions(k=4))
    assert np.isnan(same.angles_left).all() and same.changed == 0


@pytest.mark.parametrize(
    "where, expected",
    [
        # W = [[2, 2], [2, 2], [0, 0]], K = 1: W V Vᵀ = W; four entries tie at 2, two at 0 (exactly).
        # count = changed = 2: threshold 2, none above, 4 tied, 2 slots: a changed tied entry counts 2/4.
        ([(0, 0), (2, 0)], (2 / 4) / 2),
        ([(1, 1), (2, 1)], (2 / 4) / 2),  # the same by position (the flat-index tie-break said 0.5, then 0)
        ([(0, 0), (1, 1)], (2 * 2 / 4) / 2),
        ([(0, 1), (1, 0), (1, 1)], (3 * 3 / 4) / 3),  # count 3: 3 slots among the 4 tied
        # count 5: threshold 0, 4 above (3 of them changed), 2 tied (both changed), 1 slot: (3 + 2 · 1/2) / 5
        ([(0, 0), (1, 0), (1, 1), (2, 0), (2, 1)], (3 + 2 / 2) / 5),
    ],
)
def test_ties_at_the_threshold_count_fractionally(where, expected):
    base = torch.tensor([[2.0, 2.0], [2.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    ft = base.clone()
    for i, j in where:
        ft[i, j] += 0.5
    r = compare_subspaces("w", base, ft, SubspaceOptions(k=1))
    assert r.principal_overlap == pytest.approx(expected, abs=1e-12)
    assert r.principal_overlap_chance == len(where) / 6
    t = top_k(base, 1)
    assert np.allclose(base.numpy() @ t.right.numpy() @ t.right.numpy().T, base.numpy(), atol=1e-12)


# --- 7. notes on the cached path ------------------------------------------------------------------------------
def test_the_cli_prints_the_subspace_notes_also_when_served_from_the_cache(tmp_path, monkeypatch, capsys):
    """The cached path (the default) dropped the table's notes: written beside the frames, printed both ways."""
    from subnetviz.__main__ import main
    from subnetviz.config import cache_dir

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    base = make_llama(tmp_path / "base", seed=0)
    ft = write_folder(tmp_path / "ft", _moved(read_state_dict(base), 0.05, 4), base)
    monkeypatch.setattr(S, "choose_method", lambda shape, options: "randomized")  # a note that is cached
    args = ["analyze", str(base), str(ft), "--subspaces", "2", "--no-spectra", "--device", "cpu"]
    for run in ("computed", "cached"):
        assert main([*args, "--out", str(tmp_path / run)]) == 0
        err = capsys.readouterr().err
        assert "note: subspaces: matrices with a side over 32768 and the other over 4096 used randomized" in err, run
    assert str(cache_dir()).startswith(str(tmp_path / "home"))
    rows, _, notes = S.cached_subspaces(
        str(base), [str(ft)], labels=["ft"], options=SubspaceOptions(k=2), device="cpu", with_notes=True
    )
    assert (rows["method"] == "randomized").all() and len(notes) == 1 and "randomized" in notes[0]
