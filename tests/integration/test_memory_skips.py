"""A result skipped for lack of memory is a state of the machine when it ran, not of the checkpoints: the disk
cache must not serve it for good once memory is free (the analysis is computed again, and says why), while a
shortage that lasts keeps being served from the cache."""

from __future__ import annotations

import pytest
import torch

from subnetviz.analysis.update_pass import SpectraOptions, spectrum_bytes
from subnetviz.analysis.updates import cached_analysis, is_cached
from tests.ckpt_fixtures import bf16_step, write_folder

DOWN = "layers.0.mlp.down_proj.weight"


@pytest.fixture
def pair(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8, generator=g).to(torch.bfloat16),
        f"model.{DOWN}": torch.randn(8, 900, generator=g).to(torch.bfloat16),
    }
    base = write_folder(tmp_path / "base", sd)
    ft = {k: v.clone() for k, v in sd.items()}
    for v in ft.values():
        v[0, :3] = bf16_step(v[0, :3], 1)
    return str(base), str(write_folder(tmp_path / "ft", ft))


def test_a_spectrum_skipped_for_memory_is_computed_again_once_memory_allows(pair, tmp_path, monkeypatch):
    from subnetviz import config

    base, ft = pair
    need = spectrum_bytes((8, 900), True)
    short = int(need / config.MEMORY_USABLE) - 1024  # the 8 x 900 matrix does not fit, the 8 x 8 does
    monkeypatch.setattr(config, "available_memory_bytes", lambda: short)
    kw = dict(labels=["ft"], spectra=SpectraOptions(), device="cpu", cache_root=tmp_path / "cache")
    first = cached_analysis(base, [ft], **kw).spectra_table().set_index("name")
    assert first.loc[DOWN, "skipped"] and "needs about" in first.loc[DOWN, "note"]
    assert is_cached(base, [ft], **kw)  # still short: the cached result is the answer, served as it is
    again = cached_analysis(base, [ft], **kw)
    assert again.cached and again.spectra_table().set_index("name").loc[DOWN, "skipped"]

    monkeypatch.setattr(config, "available_memory_bytes", lambda: 64 * 2**30)  # memory is free now
    assert not is_cached(base, [ft], **kw)  # (the page prices it as work, not as a cache read)
    fresh = cached_analysis(base, [ft], **kw)
    spec = fresh.spectra_table().set_index("name")
    assert not fresh.cached and not spec.loc[DOWN, "skipped"] and spec.loc[DOWN, "rank"] == 1
    assert any("skipped 1 spectrum(s) for lack of memory; 1 fit now" in n for n in fresh.notes)
    later = cached_analysis(base, [ft], **kw)  # and the new result is the one the cache serves from now on
    assert later.cached and not later.spectra_table().set_index("name").loc[DOWN, "skipped"]
