"""Spectra & Subspaces, second review (integration): the subspaces follow the comparison precision chosen, an untied
head against a tied base is named as the head, and `report` shows the subspaces' notes. References are float64
NumPy / SciPy on matrices rounded to bf16 by hand."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from subnetviz.analysis.subspaces import SubspaceOptions, analyze_subspaces, cached_subspaces
from tests.ckpt_fixtures import read_state_dict, write_folder
from tests.models import INTER, make_llama, save_model, tiny_model

Q = "model.layers.0.self_attn.q_proj.weight"
K = 4


def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` rounded to bfloat16 (round-to-nearest-even on the bits, NaN-free input), as float64."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return rounded.view(np.float32).astype(np.float64)


def _reference(a: np.ndarray, b: np.ndarray, k: int = K) -> dict:
    """Largest left/right principal angles (°) between the top-k singular subspaces, and the σ ratios' mean."""
    from scipy.linalg import subspace_angles

    ua, sa, vta = np.linalg.svd(a)
    ub, sb, vtb = np.linalg.svd(b)
    ratio = sb[:k] / sa[:k]
    return {
        "angle_left_max": np.degrees(subspace_angles(ua[:, :k], ub[:, :k])).max(),
        "angle_right_max": np.degrees(subspace_angles(vta[:k].T, vtb[:k].T)).max(),
        "sv_ratio_mean": ratio.mean(),
    }


@pytest.fixture(scope="module")
def fp32_pair(tmp_path_factory):
    """An fp32 Llama pair: q_proj moves by 1e-4 relative everywhere (below half a bf16 step, so at bf16 only the
    entries near a rounding boundary change) and one entry by +0.5."""
    root = tmp_path_factory.mktemp("prec")
    src = save_model(tiny_model("llama", intermediate=INTER, kv_heads=2), root / "src", dtype=False)
    sd = read_state_dict(src)
    assert sd[Q].dtype == torch.float32
    ft = {k: v.clone() for k, v in sd.items()}
    ft[Q] = sd[Q] * (1 + 1e-4)
    ft[Q][3, 5] = sd[Q][3, 5] + 0.5
    return write_folder(root / "base", sd, src), write_folder(root / "ft", ft, src)


def test_the_subspaces_follow_the_comparison_precision_chosen(fp32_pair):
    base, ft = fp32_pair
    a, b = (read_state_dict(p)[Q].numpy() for p in (base, ft))
    a16, b16 = _bf16(a), _bf16(b)
    changed = int((a16 != b16).sum())
    assert 1 < changed < a.size // 4  # (the planted case: at bf16 few entries differ, at fp32 every one)
    table = analyze_subspaces(base, [ft], labels=["ft"], options=SubspaceOptions(k=K, precision="bf16"), device="cpu")
    row = table.to_frame().set_index("name").loc[Q]
    # at the stored fp32 it read every entry changed (chance 100 %) while the bf16 update mask held `changed`
    assert row["changed"] == changed and row["principal_overlap_chance"] == pytest.approx(changed / a.size)
    ref = _reference(a16, b16)
    for col in ("angle_left_max", "angle_right_max"):
        assert row[col] == pytest.approx(ref[col], abs=1e-5)
    assert row["sv_ratio_mean"] == pytest.approx(ref["sv_ratio_mean"], rel=1e-9)
    assert any("compared at bf16" in n for n in table.notes)

    # the update analysis at bf16 counts the same entries
    from subnetviz.analysis.sparsity import SparsityOptions
    from subnetviz.analysis.updates import analyze_updates

    rep = analyze_updates(base, [ft], options=SparsityOptions(precision="bf16"), spectra=None, device="cpu").reports[0]
    assert int(rep.tensors.set_index("name").loc[Q, "changed"]) == changed


def test_the_cache_tells_the_precisions_apart(fp32_pair, tmp_path):
    base, ft = (str(p) for p in fp32_pair)
    kw = dict(labels=["ft"], device="cpu", cache_root=tmp_path, with_notes=True)
    stored, _, notes = cached_subspaces(base, [ft], options=SubspaceOptions(k=K), **kw)
    at_bf16, _, notes16 = cached_subspaces(base, [ft], options=SubspaceOptions(k=K, precision="bf16"), **kw)
    numel = int(stored.set_index("name").loc[Q, ["rows", "cols"]].prod())
    assert int(stored.set_index("name").loc[Q, "changed"]) == numel  # fp32: each entry moved
    assert int(at_bf16.set_index("name").loc[Q, "changed"]) < numel // 4
    assert not any("bf16" in n for n in notes) and any("compared at bf16" in n for n in notes16)


def test_an_untied_head_against_a_tied_base_is_named_as_the_head(tmp_path):
    base = make_llama(tmp_path / "base", tie=True)
    sd = read_state_dict(base)
    assert "lm_head.weight" not in sd
    emb = sd["model.embed_tokens.weight"].float()
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(emb.shape[0], 2, generator=g), torch.randn(emb.shape[1], 2, generator=g)
    ft_emb = emb + 0.5 * torch.outer(u[:, 0], v[:, 0])  # a rank-1 change of the embedding
    head = emb + 2.0 * u @ v.T  # a rank-2 change of the head (the base's logits use the embedding)
    dtype = sd["model.embed_tokens.weight"].dtype
    sd_ft = {**sd, "model.embed_tokens.weight": ft_emb.to(dtype), "lm_head.weight": head.to(dtype)}
    ft = write_folder(tmp_path / "ft", sd_ft, base, tie_word_embeddings=False)
    table = analyze_subspaces(base, [ft], labels=["ft"], options=SubspaceOptions(k=K), device="cpu")
    rows = table.to_frame()
    assert rows["name"].is_unique  # two rows named model.embed_tokens.weight, both module "embed"
    by = rows.set_index("name")
    assert by.loc["lm_head.weight", "module"] == "lm_head" and by.loc["model.embed_tokens.weight", "module"] == "embed"
    stored = read_state_dict(ft)
    a = sd["model.embed_tokens.weight"].double().numpy()
    for name, key in (("lm_head.weight", "lm_head.weight"), ("model.embed_tokens.weight", "model.embed_tokens.weight")):
        ref = _reference(a, stored[key].double().numpy())
        for col in ("angle_left_max", "angle_right_max", "sv_ratio_mean"):
            assert by.loc[name, col] == pytest.approx(ref[col], abs=1e-6)
    ratios = by.loc[["lm_head.weight", "model.embed_tokens.weight"], "sv_ratio_mean"]
    assert abs(ratios.iloc[0] - ratios.iloc[1]) > 0.1  # (two comparisons that differ, each under its own name)
    # the chart of the most rotated matrices: one line per matrix, indices 1..K (the two merged zigzagged 1..K, 1..K)
    from subnetviz.figures.subspaces import angle_curves

    fig = angle_curves(table.vectors(), ["lm_head.weight", "model.embed_tokens.weight"])
    assert sorted(t.name for t in fig.data) == ["lm_head.weight", "model.embed_tokens.weight"]
    assert all(list(t.x) == list(range(1, K + 1)) for t in fig.data)


def test_report_shows_the_subspaces_notes(tmp_path, capsys):
    """An fp32 base against its bf16 release: the subspaces round the base to bf16 and say so in
    subspaces_notes.json; the HTML report's Subspaces section said nothing of it."""
    from subnetviz.cli import main
    from subnetviz.report.dashboard import analysis_report

    src = save_model(tiny_model("llama", intermediate=INTER, kv_heads=2), tmp_path / "src", dtype=False)
    sd = read_state_dict(src)
    base = write_folder(tmp_path / "base", sd, src)
    ft_sd = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    ft_sd[Q][0, :3] += 0.25
    ft = write_folder(tmp_path / "ft", ft_sd, src, torch_dtype="bfloat16")
    out = tmp_path / "out"
    args = ["analyze", str(base), str(ft), "--labels", "ft", "--subspaces", "2", "--out", str(out), "--no-cache"]
    assert main(args) == 0, capsys.readouterr().err
    notes = json.loads((out / "subspaces_notes.json").read_text())
    (note,) = [n for n in notes if "rounded to the dtype the update mask compares them at" in n]
    page = Path(analysis_report(out, tmp_path / "report.html")).read_text()
    assert html.escape(note) in page
    assert page.index(html.escape(note)) > page.index("Subspaces of W_base vs W_ft")


def test_analyze_precision_reaches_the_subspaces(fp32_pair, tmp_path, capsys):
    """`analyze --precision bf16 --subspaces K` compared the subspaces at the stored dtype (the CLI built their
    options without the precision): subspaces.csv counted every moved entry where the update mask counts the bf16
    changes. Both now count the same entries, and the notes say bf16."""
    import pandas as pd

    from subnetviz.cli import main

    base, ft = fp32_pair
    out = tmp_path / "out"
    args = ["analyze", str(base), str(ft), "--labels", "ft", "--subspaces", "2", "--precision", "bf16"]
    assert main([*args, "--out", str(out), "--no-cache"]) == 0, capsys.readouterr().err
    a, b = (read_state_dict(p)[Q].numpy() for p in (base, ft))
    want = int((_bf16(a) != _bf16(b)).sum())  # by hand: both sides rounded to bf16
    sub = pd.read_csv(out / "subspaces.csv")
    row = sub[sub["name"] == Q]
    count_col = next(c for c in ("changed", "n_changed", "mask_count") if c in sub.columns)
    assert int(row[count_col].iloc[0]) == want
    assert any("bf16" in n for n in json.loads((out / "subspaces_notes.json").read_text()))
