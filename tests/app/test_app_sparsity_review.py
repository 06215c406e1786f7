"""The Sparsity page after the review of its numbers, on planted checkpoints typed into the URL: One matrix
counts at the sidebar's comparison precision, the relative note is true of the dtypes compared, the ULP axis
names the compared dtype, the per-tensor-mean hover shows the cell's value, a GPT-2 Conv1D weight's axes are
named [in, out], a 0-row matrix draws without a crash, and a share just short of 100 % never reads 100.00 %."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.app_fixtures import decode, open_page, plotly_specs
from tests.models import make_gpt2, save_model, tiny_model
from tests.unit.test_sparsity_review import _bf16

pytestmark = pytest.mark.slow
V = "model.layers.0.self_attn.v_proj.weight"
Q, QB = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias"
EMBED = "model.embed_tokens.weight"


def _bump(sd: dict, name: str, at: list[tuple[int, ...]], steps: int = 1) -> None:
    """Move entries ``at`` of ``sd[name]`` by ``steps`` representable values (on the integer view)."""
    t = sd[name].clone()
    iv = {torch.bfloat16: torch.int16, torch.float32: torch.int32}[t.dtype]
    for i in at:
        t.view(iv)[i] += steps
    sd[name] = t


def _pair(root, name: str, dtype, plant, **size):
    """base-NAME and ft-NAME: a tiny Llama (biases on) saved in ``dtype``, and a copy changed by ``plant(sd)``."""
    base, ft = root / f"base-{name}", root / f"ft-{name}"
    model = tiny_model("llama", seed=0, kv_heads=2, attention_bias=True, **size)
    save_model(model, base, dtype=dtype)
    shutil.copytree(base, ft)
    sd = load_file(str(ft / "model.safetensors"))
    plant(sd)
    save_file(sd, str(ft / "model.safetensors"), metadata={"format": "pt"})
    return base, ft


def _fp32_plant(sd):
    _bump(sd, V, [(i, j) for i in range(sd[V].shape[0]) for j in range(sd[V].shape[1])])  # one fp32 step each
    sd[V] = sd[V].clone()
    sd[V][0, 0] *= 1.05  # and one change bf16 sees
    _bump(sd, Q, [(0, 1), (1, 2), (2, 3), (3, 4)])


def _bf16_plant(sd):
    _bump(sd, Q, [(0, 1), (1, 2), (2, 3), (3, 4)])
    _bump(sd, QB, [(0,), (1,), (2,), (3,), (4,)])  # q's cell: 4 of 256 and 5 of 16 changed
    sd[Q] = sd[Q].clone()
    sd[Q][5, 5] = 0.0
    sd[Q][5, 6] = -0.0  # base keeps +0 (below): a sign flip of zero, bits differ, Δ = 0


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    """The planted checkpoints, in a home of their own (read roots: this folder)."""
    root = tmp_path_factory.mktemp("sparsity-review").resolve()
    saved = {k: os.environ.get(k) for k in ("SUBNETVIZ_HOME", "SUBNETVIZ_ROOTS")}
    os.environ["SUBNETVIZ_HOME"], os.environ["SUBNETVIZ_ROOTS"] = str(root / "home"), str(root)
    torch.set_num_threads(1)
    out = {}
    out["fp32"] = _pair(root, "fp32", torch.float32, _fp32_plant)
    base_bf16, ft_bf16 = _pair(root, "bf16", torch.bfloat16, _bf16_plant)
    sd = load_file(str(base_bf16 / "model.safetensors"))
    sd[Q] = sd[Q].clone()
    sd[Q][5, 5] = sd[Q][5, 6] = 0.0
    save_file(sd, str(base_bf16 / "model.safetensors"), metadata={"format": "pt"})
    out["bf16"] = base_bf16, ft_bf16
    out["vocab"] = _pair(root, "vocab", torch.bfloat16, lambda sd: _bump(sd, EMBED, [(7, 3)]), vocab=4096)
    gpt2, ft_gpt2 = make_gpt2(root / "base-gpt2"), root / "ft-gpt2"
    shutil.copytree(gpt2, ft_gpt2)
    sd = load_file(str(ft_gpt2 / "model.safetensors"))
    _bump(sd, "transformer.h.0.mlp.c_fc.weight", [(0, 5), (3, 40)])
    save_file(sd, str(ft_gpt2 / "model.safetensors"), metadata={"format": "pt"})
    out["gpt2"] = gpt2, ft_gpt2
    for side in ("a", "b"):
        w = torch.full((2, 3), 1.0 if side == "a" else 2.0, dtype=torch.bfloat16)
        save_file({"w": w, "empty": torch.zeros(0, 4, dtype=torch.bfloat16)}, str(root / f"{side}.safetensors"))
    out["empty"] = root / "a.safetensors", root / "b.safetensors"
    yield out
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _page(ck, pair: str, **query):
    base, ft = ck[pair] if isinstance(pair, str) else pair
    at = open_page("sparsity", base=str(base), ft=[str(f) for f in np.atleast_1d(ft)], **query)
    assert not at.exception and not at.error, [e.message for e in at.exception] + [e.value for e in at.error]
    return at


def _texts(at) -> list[str]:
    return [
        e.value.replace("\\", "").replace("\u200b", "")
        for kind in ("caption", "info", "markdown")
        for e in getattr(at, kind)
    ]


def test_one_matrix_counts_at_the_chosen_precision(ck, typed_options):
    """fp32 checkpoints compared at bf16: v_proj moved one fp32 step everywhere and one entry by 5 %. One matrix
    said what fp32 sees (every entry) while the analysis counted at bf16; now its caption and image count bf16."""
    base, ft = ck["fp32"]
    x, y = (load_file(str(p / "model.safetensors"))[V].numpy() for p in (base, ft))
    at16 = int((_bf16(x)[0] != _bf16(y)[0]).sum())
    at32 = int((x.view(np.uint32) != y.view(np.uint32)).sum())
    assert at16 < at32 == x.size
    for precision, want in (("bf16", at16), ("stored", at32)):
        at = _page(ck, "fp32", precision=precision, sp_tab="One matrix", dd_tensor="layers.0.self_attn.v_proj.weight")
        caption = next(c for c in _texts(at) if " · criterion " in c)
        assert f" · {want:,} of {x.size:,} changed " in caption, caption
        assert ("criterion exact at bf16" in caption) == (precision == "bf16")
        image = decode(plotly_specs(at)[0]["data"][0]["z"]).astype(float)  # a cell per entry: 100 = changed
        assert int((image > 50).sum()) == want


def test_relative_note_is_true_of_the_dtypes_compared(ck, typed_options):
    """The note said 'relative' equals 'exact' whatever the dtype: false for fp32 (η = 0.001 is far above its
    2⁻²⁴) and not quite true for bf16 (a sign flip of zero is exact's, not relative's)."""
    fp32 = " ".join(_texts(_page(ck, "fp32", sp_crit="relative", sp_models=["ft-fp32"])))
    assert "Relative criterion at η = 0.001" in fp32 and "as 'exact' does" not in fp32 and "every changed" not in fp32
    bf16 = next(t for t in _texts(_page(ck, "bf16", sp_crit="relative")) if "Relative criterion" in t)
    assert "compared in bf16" in bf16 and "2⁻⁸" in bf16 and "except sign flips of zero" in bf16
    half = next(
        t
        for t in _texts(_page(ck, "fp32", sp_crit="relative", sp_eta="0.0001", precision="fp16"))
        if "Relative criterion" in t
    )
    assert "compared in fp16" in half and "2⁻¹¹" in half and "bf16" not in half
    above = next(t for t in _texts(_page(ck, "bf16", sp_crit="relative", sp_eta="0.004")) if "Relative crit" in t)
    assert "every changed" not in above  # η = 0.004 ≥ 2⁻⁸: no claim
    # a bf16 finetune beside an fp32 one (compared at fp32, the finetune's dtype): said of bf16 only
    mixed = (ck["bf16"][0], [ck["bf16"][1], ck["fp32"][1]])
    text = next(t for t in _texts(_page(ck, mixed, sp_crit="relative")) if "Relative criterion" in t)
    assert "Some weights were compared in bf16" in text and "in fp32 a change up to" in text


def test_ulp_axis_names_the_compared_dtype(ck, typed_options):
    for precision, said in (("bf16", "compared dtype (bf16)"), ("stored", "compared dtype (fp32, as stored)")):
        at = _page(ck, "fp32", precision=precision, sp_tab="Tolerance sweep and ULPs")
        ulp = next(s for s in plotly_specs(at) if "ULP" in s["layout"]["title"]["text"])
        assert said in ulp["layout"]["xaxis"]["title"]["text"]


def test_per_tensor_mean_hover_shows_the_cells_value(ck, typed_options):
    """Layer 0 · q holds q_proj's weight (4 of 256 changed) and bias (5 of 16, and a ±0 flip in the weight)."""
    base, ft = ck["bf16"]
    a, b = load_file(str(base / "model.safetensors")), load_file(str(ft / "model.safetensors"))
    share = [float((a[k].view(torch.int16) != b[k].view(torch.int16)).double().mean()) for k in (Q, QB)]
    at = _page(ck, "bf16", sp_avg="per-tensor mean", sp_models=["ft-bf16"])
    heat = plotly_specs(at)[1]["data"][0]
    i, j = list(heat["y"]).index("0"), list(heat["x"]).index("q")
    assert "per-tensor mean sparsity %{customdata[6]}%" in heat["hovertemplate"]
    assert heat["customdata"][i][j][6] == f"{100 * (1 - np.mean(share)):.3f}"


def test_conv1d_axes_on_one_matrix(ck, typed_options):
    """GPT-2's mlp.c_fc is stored [n_embd, 4·n_embd] (Conv1D): its rows are input dims."""
    at = _page(ck, "gpt2", sp_tab="One matrix", dd_tensor="h.0.mlp.c_fc.weight")
    specs = plotly_specs(at)
    assert len(specs) == 3 and decode(specs[0]["data"][0]["z"]).shape == (16, 64)  # n_embd 16, full resolution
    for spec in specs[:2]:
        assert spec["layout"]["yaxis"]["title"]["text"] == "row (input dim)"
        assert spec["layout"]["xaxis"]["title"]["text"] == "column (output dim)"


def test_a_zero_row_matrix_draws_no_data(ck, typed_options):
    at = _page(ck, "empty", sp_tab="One matrix", dd_tensor="empty")
    specs = plotly_specs(at)
    assert len(specs) == 3 and any(" · criterion " in t for t in _texts(at))
    assert [s["layout"]["annotations"][0]["text"] for s in specs[:2]] == ["no data", "no data"]


def test_a_share_short_of_100_reads_so_in_tables_and_hovers(ck, typed_options):
    """1 of 65,536 embedding entries changed: the table read 100.00 % and the overall bar's hover 100.00%."""
    at = _page(ck, "vocab", sp_tab="Norms, embeddings, head")
    styled = at.dataframe[0].proto.arrow_data.styler.display_values
    shown = pa.ipc.open_stream(styled).read_all().to_pandas()
    cells = dict(zip(shown["key"], shown["sparsity"], strict=True))
    assert cells["embed_tokens.weight"] == "99.998 %" and cells["lm_head.weight"] == "100.00 %"
    one = _page(ck, "vocab", sp_tab="One matrix", dd_tensor="embed_tokens.weight")  # its caption's share too
    assert " · 1 of 65,536 changed (0.0015 %) · " in next(c for c in _texts(one) if " · criterion " in c)
    bar = plotly_specs(_page(ck, "vocab"))[0]["data"][0]
    numel = int(bar["customdata"][0][2])
    text = bar["customdata"][0][0]
    assert re.fullmatch(r"99\.9\d+", text) and abs(float(text) - 100 * (1 - 1 / numel)) < 1e-3
