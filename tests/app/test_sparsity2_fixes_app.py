"""The Update sparsity page after its second review, on planted checkpoints typed into the URL, each number against
a float64 NumPy reference:

- One matrix shows the pair the analysis compares (a finetune without the ``model.`` prefix, a tied head against an
  untied one, a resized vocabulary's shared rows, with the analysis' note), where it showed a one-line error;
- GPT-2's fused c_attn keeps its q, k and v columns under a tolerance and under relative η (they became one qkv);
- every title and caption names the criterion with its parameter (relative η = 0.1, tol = 1e-05);
- the buffers the note says are "listed under buffers" are listed: name, shape, dtype and changed entries.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.app_fixtures import decode, open_page, plotly_specs
from tests.ckpt_fixtures import read_state_dict, write_folder
from tests.integration.test_sparsity2_fixes import EMBED, HEAD, Q, _mask, _plant
from tests.models import make_gpt2, save_model, tiny_model

pytestmark = pytest.mark.slow
W, B = "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias"
INV_FREQ, POS_IDS = "model.layers.0.self_attn.rotary_emb.inv_freq", "model.embed_positions.position_ids"


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    """Planted checkpoints in a home of their own (read roots: this folder)."""
    root = tmp_path_factory.mktemp("sparsity2-app").resolve()
    saved = {k: os.environ.get(k) for k in ("SUBNETVIZ_HOME", "SUBNETVIZ_ROOTS")}
    os.environ["SUBNETVIZ_HOME"], os.environ["SUBNETVIZ_ROOTS"] = str(root / "home"), str(root)
    torch.set_num_threads(1)
    base = save_model(tiny_model("llama", seed=0, kv_heads=2), root / "base")
    sd = read_state_dict(base)
    ft = {**sd, Q: _plant(sd[Q], 1, 40), EMBED: _plant(sd[EMBED], 2, 60), HEAD: _plant(sd[HEAD], 3, 30)}
    out = {"base": base}
    out["noprefix"] = write_folder(root / "noprefix", {k.removeprefix("model."): v for k, v in ft.items()}, base)
    extra = {k: torch.cat([ft[k], torch.randn(8, ft[k].shape[1]).to(torch.bfloat16)]) for k in (EMBED, HEAD)}
    out["resized"] = write_folder(root / "resized", {**ft, **extra}, base, vocab_size=72)
    tied = {k: v for k, v in ft.items() if k != HEAD}
    out["tied"] = write_folder(root / "tied", tied, base, tie_word_embeddings=True)
    out["untied"] = write_folder(root / "untied", {**tied, HEAD: _plant(tied[EMBED], 4, 64)}, base)
    # buffers on both sides, changed in the finetune: a float rotary frequency and integer position ids
    bufs = {INV_FREQ: torch.linspace(1, 0.01, 8), POS_IDS: torch.arange(64).reshape(1, 64)}
    out["buf-b"] = write_folder(root / "buf-b", {**sd, **bufs}, base)
    out["buf-f"] = write_folder(
        root / "buf-f", {**ft, INV_FREQ: bufs[INV_FREQ] * 1.5, POS_IDS: bufs[POS_IDS] * 2}, base
    )
    gpt2 = make_gpt2(root / "base-gpt2")
    g = read_state_dict(gpt2)
    out["gpt2"] = gpt2
    out["ft-gpt2"] = write_folder(root / "ft-gpt2", {**g, W: _plant(g[W], 5, 200), B: _plant(g[B], 6, 12)}, gpt2)
    yield out
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _page(ck, base: str, ft: str, **query):
    at = open_page("sparsity", base=str(ck[base]), ft=[str(ck[ft])], **query)
    assert not at.exception and not at.error, [e.message for e in at.exception] + [e.value for e in at.error]
    return at


def _texts(at) -> list[str]:
    return [
        e.value.replace("\\", "").replace("\u200b", "") for kind in ("caption", "markdown") for e in getattr(at, kind)
    ]


def _tensor(folder, name: str) -> torch.Tensor:
    return load_file(str(folder / "model.safetensors"))[name]


@pytest.mark.parametrize(
    "base, ft, key, name_b, name_f, rows",
    [
        ("base", "noprefix", "layers.0.self_attn.q_proj.weight", Q, Q.removeprefix("model."), None),
        ("tied", "untied", "lm_head.weight", EMBED, HEAD, None),
        ("base", "resized", "embed_tokens.weight", EMBED, EMBED, 64),
    ],
)
def test_one_matrix_shows_the_pair_the_analysis_compares(ck, typed_options, base, ft, key, name_b, name_f, rows):
    x, y = _tensor(ck[base], name_b), _tensor(ck[ft], name_f)
    x, y = (x[:rows], y[:rows]) if rows else (x, y)
    want = _mask(x, y, "relative", eta=0.1)
    at = _page(ck, base, ft, sp_tab="One matrix", dd_tensor=key, sp_crit="relative", sp_eta="0.1")
    caption = next(c for c in _texts(at) if " · criterion " in c)
    assert f" · criterion relative η = 0.1 · {int(want.sum()):,} of {want.size:,} changed " in caption, caption
    if name_b != name_f:
        assert f"(base: {name_b}, finetune: {name_f})" in caption
    if rows:
        assert "vocabulary resized; compared the 64 shared rows, extra rows per checkpoint: [0, 8]" in caption
    image, _, ratios = plotly_specs(at)
    assert decode(image["data"][0]["z"]).shape == want.shape  # a cell per entry: 100 = changed
    assert int((decode(image["data"][0]["z"]).astype(float) > 50).sum()) == int(want.sum())
    for spec, head in ((image, "Which entries changed"), (ratios, "Share of entries changed per row and per column")):
        title = spec["layout"]["title"]["text"]  # (the criterion under the title: in it, it ran past a half page)
        assert title.startswith(f"{head}<br>") and "relative η = 0.1" in title, title
    np.testing.assert_allclose(decode(ratios["data"][0]["y"]), 100 * want.mean(axis=1))
    np.testing.assert_allclose(decode(ratios["data"][1]["y"]), 100 * want.mean(axis=0))


@pytest.mark.parametrize("crit, eta, said", [("1e-05", None, "tol = 1e-05"), ("relative", "0.1", "relative η = 0.1")])
def test_gpt2_c_attn_keeps_q_k_v_under_every_criterion(ck, typed_options, crit, eta, said):
    at = _page(ck, "gpt2", "ft-gpt2", sp_crit=crit, **({"sp_eta": eta} if eta else {}))
    overall, heat = plotly_specs(at)[:2]
    assert overall["layout"]["title"]["text"] == f"Overall update sparsity per model ({said})"
    assert heat["layout"]["title"]["text"].endswith(f"sparsity ({said})")
    trace = heat["data"][0]
    assert {"q", "k", "v"} <= set(trace["x"]) and "qkv" not in trace["x"]
    a, b = read_state_dict(ck["gpt2"]), read_state_dict(ck["ft-gpt2"])
    z = decode(trace["z"]).astype(float)
    i = list(trace["y"]).index("0")
    for p, part in enumerate("qkv"):
        cols = slice(16 * p, 16 * (p + 1))  # Conv1D (in, 3·out): the thirds of the columns, bias alike
        changed = sum(int(_mask(a[n], b[n], crit, float(eta or 1e-3))[..., cols].sum()) for n in (W, B))
        numel = 16 * 16 + 16
        assert z[i, list(trace["x"]).index(part)] == pytest.approx(100 * (1 - changed / numel), abs=1e-9), part
    assert not any("under the exact criterion only" in t for t in _texts(at))


def test_buffers_are_listed_where_the_note_points(ck, typed_options):
    at = _page(ck, "buf-b", "buf-f")
    assert any("listed under buffers" in t for t in _texts(at))
    (box,) = [e for e in at.expander if e.label.startswith("Buffers (2)")]
    assert "not counted in the weight sparsity" in box.label
    table = next(d.value for d in at.dataframe if "name" in d.value.columns and "dtype" in d.value.columns)
    rows = table.set_index("name")
    a, b = read_state_dict(ck["buf-b"]), read_state_dict(ck["buf-f"])
    for name in (INV_FREQ, POS_IDS):
        x, y = a[name].numpy(), b[name].numpy()
        bits = (x.view(np.int32) != y.view(np.int32)) if x.dtype == np.float32 else x != y
        assert int(str(rows.loc[name, "changed"]).replace(",", "")) == int(bits.sum()) > 0
        assert rows.loc[name, "shape"] == "x".join(map(str, x.shape))
        assert rows.loc[name, "dtype"] == str(b[name].dtype).removeprefix("torch.")
    # the weights' numbers leave the buffers out: the overall bar counts parameters only
    numel = int(float(decode(plotly_specs(at)[0]["data"][0]["customdata"])[0][2]))
    assert numel == sum(v.numel() for k, v in a.items() if k not in (INV_FREQ, POS_IDS))


def test_packed_experts_split_exact_only_are_said_on_the_page(tmp_path, monkeypatch, typed_options):
    """gpt-oss's packed gate_up_proj (E, H, 2·I, gate and up interleaved) is split into gate and up from the exact
    mask's counts only: under a tolerance it is shown whole as gate_up, and the page says so (it said nothing)."""
    from tests.ckpt_fixtures import gpt_oss_model

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    model_cls, cfg = gpt_oss_model()
    torch.manual_seed(0)
    model_cls(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "base")
    sd = read_state_dict(tmp_path / "base")
    gu = "model.layers.1.mlp.experts.gate_up_proj"
    ft = write_folder(tmp_path / "ft", {**sd, gu: _plant(sd[gu], 7, 500)}, tmp_path / "base")
    for crit, split in (("exact", True), ("1e-05", False)):
        at = open_page("sparsity", base=str(tmp_path / "base"), ft=[str(ft)], sp_crit=crit)
        assert not at.exception and not at.error, [e.value for e in at.error]
        columns = set(plotly_specs(at)[1]["data"][0]["x"])
        said = [t for t in _texts(at) if "under the exact criterion only" in t]
        if split:
            assert {"gate", "up"} <= columns and "gate_up" not in columns and not said
        else:
            assert "gate_up" in columns and len(said) == 1
            assert "gate_up_proj" in said[0] and "shown whole under tol = 1e-05" in said[0]
