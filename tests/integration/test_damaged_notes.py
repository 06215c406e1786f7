"""A damaged disk-cache entry is removed and computed again, and the computation says so: the Bigram analysis in its
headline's notes, the behaviour analysis and the subspaces in their notes, the Training comparison in the notes it
returns, the continual job in its log (each dropped the notice, as ``CacheEntry.ready`` does). The numbers equal a
fresh computation's, and the notice is not stored with the new copy.

Damage is done as a disk does it: one byte flipped in a file of the entry, or a file cut short.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.bigram_fixtures import planted_transition
from tests.ckpt_fixtures import bf16_step, read_state_dict, write_folder
from tests.models import make_tiny_llama
from tests.training_fixtures import write_addition_data


def _listed(folder: Path) -> list[str]:
    return sorted(json.loads((folder / ".manifest.json").read_text())["files"])


def flip(folder: Path, name: str | None = None) -> str:
    """One byte of a file of the entry flipped (the first the manifest lists, or ``name``): its name."""
    name = name or _listed(folder)[0]
    raw = bytearray((folder / name).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (folder / name).write_bytes(bytes(raw))
    return name


def cut(folder: Path, name: str | None = None) -> str:
    """A file of the entry cut to half its bytes: its name."""
    name = name or _listed(folder)[-1]
    raw = (folder / name).read_bytes()
    (folder / name).write_bytes(raw[: len(raw) // 2])
    return name


def only_entry(root: Path) -> Path:
    (folder,) = [p for p in root.iterdir() if not p.name.startswith(".")]
    return folder


def damaged(notes, name: str) -> list[str]:
    said = [str(n) for n in notes if "was damaged" in str(n)]
    assert all(name in n and "computed again" in n for n in said), said
    return said


# --- subspaces (the CLI's analyze --subspaces) -------------------------------------------------------------------
@pytest.fixture
def pair(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8, generator=g).to(torch.bfloat16),
        "model.layers.0.mlp.down_proj.weight": torch.randn(8, 24, generator=g).to(torch.bfloat16),
    }
    base = write_folder(tmp_path / "base", sd)
    ft = {k: v.clone() for k, v in sd.items()}
    for v in ft.values():
        v[0, :3] = bf16_step(v[0, :3], 5)
    return str(base), str(write_folder(tmp_path / "ft", ft))


def test_subspaces_computed_again_after_damage_say_so_in_their_notes(pair, tmp_path):
    from subnetviz.analysis.subspaces import analyze_subspaces, cached_subspaces, is_cached, read_subspace_notes

    base, ft = pair
    kw = dict(labels=["ft"], device="cpu", cache_root=tmp_path / "cache", with_notes=True)
    cached_subspaces(base, [ft], **kw)
    folder = only_entry(tmp_path / "cache")
    name = flip(folder, "subspaces.csv")
    check = {k: v for k, v in kw.items() if k != "with_notes"}
    assert not is_cached(base, [ft], **check) and folder.is_dir()  # a check looks only: the computation says it
    rows, vectors, notes = cached_subspaces(base, [ft], **kw)
    assert len(damaged(notes, name)) == 1 and notes[0] == damaged(notes, name)[0]
    fresh = analyze_subspaces(base, [ft], labels=["ft"], device="cpu")  # the reference: computed, not cached
    for got, want in ((rows, fresh.to_frame()), (vectors, fresh.vectors())):
        assert list(got.columns) == list(want.columns) and len(got) == len(want)
        for col in got.columns:
            if "second" in col:  # (timings)
                continue
            if pd.api.types.is_numeric_dtype(want[col]):
                assert np.allclose(got[col].to_numpy(float), want[col].to_numpy(float), equal_nan=True), col
            else:
                assert got[col].astype(str).tolist() == want[col].astype(str).tolist(), col
    assert not damaged(read_subspace_notes(folder), name)  # (not stored: the new copy is sound)
    assert not damaged(cached_subspaces(base, [ft], **kw)[2], name)  # a sound copy: nothing more to say

    cut(folder)  # removed by a page's check before it computes: the page says it, not repeated here
    from subnetviz.analysis.subspaces import SubspaceOptions, _entry

    ent = _entry(base, [ft], ["ft"], SubspaceOptions(), tmp_path / "cache")[2]
    assert ent.status()[1]
    assert not damaged(cached_subspaces(base, [ft], **kw)[2], "")


# --- the Bigram page's analysis ---------------------------------------------------------------------------------
@pytest.fixture
def bigram_home(tmp_path, monkeypatch):
    """A zoo with a planted bigram chain over make_tiny_llama's 15 tokens, the model and a mask of an up proj."""
    from subnetviz.masks import MaskSet, save_mask_set

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    from subnetviz.config import zoo_dir

    zoo_dir().mkdir(parents=True)
    np.savez(zoo_dir() / "bigram.npz", transition=planted_transition(15), token_ids=np.arange(15))
    model = make_tiny_llama(tmp_path / "model", dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    mask = tmp_path / "mask.safetensors"
    save_mask_set(mask, MaskSet({"model.layers.0.mlp.up_proj.weight": torch.rand(64, 32, generator=g) < 0.2}))
    return str(model), str(mask)


def test_a_bigram_analysis_computed_again_after_damage_says_so_in_its_notes(bigram_home, tmp_path):
    from subnetviz.bigram.job import analyse_mask_file
    from subnetviz.bigram.store import PAGE_OPTIONS, analysis_key, cached_mask_analysis, is_cached, load_analysis

    model, mask = bigram_home
    cache = tmp_path / "cache"
    cached_mask_analysis(model, mask, cache_root=cache)
    folder = only_entry(cache)
    name = flip(folder, "headline.json")
    assert not is_cached(analysis_key(model, mask), cache) and folder.is_dir()  # (looked at only)
    again, gens = cached_mask_analysis(model, mask, cache_root=cache)
    said = damaged(again.headline["notes"], name)
    assert len(said) == 1 and again.headline["notes"][0] == said[0]
    fresh, fresh_gens = analyse_mask_file(model, mask, **PAGE_OPTIONS)
    for k, v in fresh.headline.items():
        if isinstance(v, float):
            assert again.headline[k] == pytest.approx(v, nan_ok=True), k
    pd.testing.assert_frame_equal(again.ablation.rows, fresh.ablation.rows)
    pd.testing.assert_frame_equal(gens, fresh_gens)
    assert not damaged(load_analysis(folder)[0].headline.get("notes") or [], name)  # (not stored)
    assert not damaged(cached_mask_analysis(model, mask, cache_root=cache)[0].headline.get("notes") or [], name)


# --- the behaviour analysis -------------------------------------------------------------------------------------
@pytest.fixture
def planted(tmp_path):
    base = make_tiny_llama(tmp_path / "base", seed=0)
    sd = read_state_dict(base)
    name = "model.layers.0.mlp.down_proj.weight"
    sd[name] = bf16_step(sd[name], 40)
    ft = write_folder(tmp_path / "ft", sd, config_from=base)
    for f in [*base.glob("tokenizer*"), *base.glob("special_tokens_map.json")]:
        shutil.copy(f, ft / f.name)
    data = write_addition_data(tmp_path / "data", n=3)
    return {"base": str(base), "finetuned": [str(ft)], "labels": ["ft"], "prompts": str(data["eval"]), "curve": []}


def test_a_behaviour_analysis_computed_again_after_damage_says_so_in_its_notes(planted, tmp_path):
    from subnetviz.analysis.behavior import cached_behavior, run_config

    cfg = {**planted, "device": "cpu"}
    cache = tmp_path / "cache"
    cached_behavior(cfg, cache_root=cache)
    folder = only_entry(cache)
    name = cut(folder, "summary.csv")
    again = cached_behavior(cfg, cache_root=cache)
    notes = list(again["notes"]["note"])
    assert len(damaged(notes, name)) == 1 and "was damaged" in notes[0]
    fresh = run_config(cfg).summary  # the reference: computed, not cached
    got = again["summary"]
    assert len(got) == len(fresh) and len(fresh) > 0
    for col in fresh.columns:
        if (
            "second" not in col
            and pd.api.types.is_numeric_dtype(fresh[col])
            and not pd.api.types.is_bool_dtype(fresh[col])
        ):
            assert np.allclose(got[col].to_numpy(float), fresh[col].to_numpy(float), equal_nan=True), col
    assert not damaged(list(cached_behavior(cfg, cache_root=cache)["notes"]["note"]), name)  # (a sound copy)


# --- the Training page's comparison ------------------------------------------------------------------------------
def test_a_run_comparison_computed_again_after_damage_says_so_in_its_notes(tmp_path):
    from subnetviz.analysis.runs import compare_runs
    from subnetviz.demo.comparison import cached_compare_runs, is_cached

    full, sub = (make_tiny_llama(tmp_path / n, seed=i) for i, n in enumerate(("full", "sub")))
    cache = tmp_path / "cache"
    first, notes = cached_compare_runs(full, sub, cache_root=cache, with_notes=True)
    assert notes == []
    folder = only_entry(cache)
    name = flip(folder, "per_tensor.parquet")
    assert not is_cached(full, sub, cache_root=cache) and folder.is_dir()  # (looked at only)
    again, notes = cached_compare_runs(full, sub, cache_root=cache, with_notes=True)
    assert len(notes) == 1 and damaged(notes, name) == notes
    fresh = compare_runs(full, sub)  # the reference: computed, not cached
    pd.testing.assert_frame_equal(again.per_tensor, fresh.per_tensor, check_dtype=False)
    pd.testing.assert_frame_equal(again.ulp_histogram, fresh.ulp_histogram, check_dtype=False)
    assert cached_compare_runs(full, sub, cache_root=cache, with_notes=True)[1] == []  # a sound copy


# --- the continual job -------------------------------------------------------------------------------------------
def test_a_continual_job_trained_again_after_damage_says_so_in_its_log(tmp_path, monkeypatch, capsys):
    from subnetviz.config import cache_dir
    from subnetviz.jobs.context import JobContext
    from subnetviz.supermask import job

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    config = {"methods": ["supsup"], "tasks": 2, "seeds": [0], "epochs": {"mask": 1}}
    first = JobContext.for_dir(tmp_path / "run1")
    job.run_job(config, first)
    folder = only_entry(cache_dir() / "continual")
    name = flip(folder, "result.json") if (folder / "result.json").is_file() else flip(folder)
    capsys.readouterr()
    again = JobContext.for_dir(tmp_path / "run2")
    job.run_job(config, again)
    log = capsys.readouterr().out.splitlines()
    said = damaged(log, name)
    assert len(said) == 1 and said[0].startswith("continual: the cached continual result")
    assert not [line for line in log if "reused" in line]  # (trained again, not read)
    want, got = job.load_result(first.out_dir), job.load_result(again.out_dir)
    for key in ("runs", "accuracy"):
        timed = [c for c in want[key].columns if c.endswith("_s")]  # (wall-clock timings)
        pd.testing.assert_frame_equal(got[key].drop(columns=timed), want[key].drop(columns=timed))
    job.run_job(config, JobContext.for_dir(tmp_path / "run3"))
    log = capsys.readouterr().out
    assert "reused" in log and "was damaged" not in log
