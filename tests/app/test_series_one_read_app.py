"""The Series page reads each checkpoint of a run once: its per-module chart comes from the series pass's own counts
(it ran the update analysis of every checkpoint against the first as well: a second read of the whole run), and draws
the numbers that analysis gives."""

from __future__ import annotations

import pandas as pd
import pytest

from subnetviz import ui
from subnetviz.analysis.updates import analyze_updates
from tests.app_fixtures import decode, home_of_its_own, open_page, plotly_specs
from tests.zoo_fixtures import micro_zoo  # noqa: F401


@pytest.fixture
def own_home(micro_zoo, tmp_path_factory):  # noqa: F811
    import streamlit as st

    st.cache_resource.clear()  # the process-wide memo: no series or analysis of an earlier test
    st.cache_data.clear()
    with home_of_its_own(micro_zoo, tmp_path_factory, "series-one-read"):
        yield micro_zoo
    st.cache_resource.clear()


def test_the_zoos_run_is_read_once_and_its_modules_are_the_update_analysis(own_home, monkeypatch):
    asked = []
    real = ui.update_analysis
    monkeypatch.setattr(ui, "update_analysis", lambda ws, **kw: asked.append(ws) or real(ws, **kw))
    at = open_page("series")
    assert not at.exception and not at.error, [e.message for e in at.exception] + [e.value for e in at.error]
    assert asked == []  # the chart's counts came with the series
    zoo = own_home
    steps, paths = [s for s, _ in zoo.series], [str(p) for _, p in zoo.series]
    per = analyze_updates(str(zoo.base), paths, labels=[f"step {s}" for s in steps], spectra=None, device="cpu")
    frame = pd.concat([r.by_layer_module().assign(step=s) for r, s in zip(per.reports, steps, strict=True)])
    g = frame.groupby(["module", "step"])[["changed", "numel"]].sum()
    spec = next(s for s in plotly_specs(at) if s["layout"]["title"]["text"].startswith("Sparsity per module kind"))
    assert len(spec["data"]) == frame["module"].nunique() >= 4
    for trace in spec["data"]:
        x, y = list(decode(trace["x"])), list(decode(trace["y"]))
        assert x == [0, *steps] and y[0] == 100.0
        want = [100 * (1 - g.loc[(trace["name"], s), "changed"] / g.loc[(trace["name"], s), "numel"]) for s in steps]
        assert y[1:] == pytest.approx(want, rel=1e-12)


def test_a_runs_fused_qkv_is_split_by_the_update_analysis(micro_zoo, tmp_path_factory, monkeypatch, typed_options):  # noqa: F811,E501
    """A GPT-2 run (``c_attn``: q, k and v in one tensor): the chart splits it as the update analysis does, so the
    page asks that analysis for it (the series pass keeps no counts per column)."""
    import shutil

    import streamlit as st
    import torch
    from safetensors.torch import load_file, save_file

    from tests.models import make_gpt2

    st.cache_resource.clear()
    asked = []
    real = ui.update_analysis
    monkeypatch.setattr(ui, "update_analysis", lambda ws, **kw: asked.append(ws) or real(ws, **kw))
    with home_of_its_own(micro_zoo, tmp_path_factory, "series-fused") as home:
        base = make_gpt2(home / "gpt2" / "base")
        ft = []
        for step in (10, 20):
            folder = home / "gpt2" / "run" / f"checkpoint-{step}"
            shutil.copytree(base, folder)
            tensors = load_file(str(folder / "model.safetensors"))
            attn = "transformer.h.0.attn.c_attn.weight" if "transformer.h.0.attn.c_attn.weight" in tensors else None
            attn = attn or next(k for k in tensors if k.endswith("attn.c_attn.weight"))
            w = tensors[attn].clone()
            w[:, : step // 10] += torch.tensor(0.5, dtype=w.dtype)  # the first q columns only
            tensors[attn] = w
            save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
            ft.append(str(folder))
        at = open_page("series", base=str(base), ft=ft, series_src="workspace: one training run, by step")
        assert not at.exception and not at.error, [e.message for e in at.exception] + [e.value for e in at.error]
    st.cache_resource.clear()
    assert len(asked) == 1, [c.value for c in at.caption] + [at.selectbox(key="series_src").value]
    spec = next(s for s in plotly_specs(at) if s["layout"]["title"]["text"].startswith("Sparsity per module kind"))
    names = {t["name"] for t in spec["data"]}
    assert {"q", "k", "v"} <= names
    below = {t["name"] for t in spec["data"] if min(decode(t["y"])) < 100}
    assert below == {"q"}  # only q's columns changed
