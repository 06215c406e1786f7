"""gpt-oss checkpoints: MXFP4 experts read as the weights transformers loads, and bf16 finetunes of them.

Proves: every tensor of an MXFP4 folder laid out as the gpt-oss releases store it (``<proj>_blocks``
uint8 (E, R, G, 16), ``<proj>_scales`` uint8 (E, R, G), ``quant_method: mxfp4``) reads bit for bit as
transformers' own ``from_pretrained`` dequantises it, with its names, shapes and parameter count; an
MXFP4 base against a bf16 finetune that transformers saved from it counts exactly the planted changes,
per expert, with gate and up split as gpt-oss interleaves them; one changed scale changes exactly the
block's nonzero values; a pair that does not fit, a NaN scale or too little memory is a one-line error
naming the tensor, before anything is allocated.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from subnetviz import config
from subnetviz.analysis.updates import analyze_updates
from subnetviz.checkpoints import open_checkpoint
from subnetviz.errors import CheckpointError, ConfigError
from tests.ckpt_fixtures import bf16_step, gpt_oss_model, gpt_oss_mxfp4, read_state_dict, write_folder

E, H, INTER = 4, 64, 96  # experts, hidden (2 blocks of 32), intermediate (3 blocks): no square expert matrix
GU, DN = "model.layers.1.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"


def _model_cls():
    return gpt_oss_model()[0]


@pytest.fixture(scope="module")
def gptoss(tmp_path_factory):
    """(bf16 folder saved by transformers, the same model with its experts in MXFP4 as the releases store them)."""
    model_cls, cfg = gpt_oss_model(hidden=H, inter=INTER, experts=E)
    root = tmp_path_factory.mktemp("gptoss")
    torch.manual_seed(0)
    model_cls(cfg).to(torch.bfloat16).save_pretrained(root / "bf16")
    return root / "bf16", gpt_oss_mxfp4(root / "mxfp4", root / "bf16")


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)  # bit for bit: -0.0 is not 0.0


@pytest.mark.parametrize("jit", ["1", "0"], ids=["compiled", "numpy"])
def test_every_code_at_every_scale_dequantises_as_transformers_does(jit, monkeypatch):
    """All 256 bytes at all 255 finite scales (0 .. 254, the largest giving inf), and a shape that crosses
    the compiled loop's row tiles: bit for bit transformers' own dequantisation."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from subnetviz.checkpoints.mxfp4 import dequantize

    monkeypatch.setenv("SUBNETVIZ_JIT", jit)
    codes = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(1, 255, 16, 16).contiguous()
    scales = torch.arange(255, dtype=torch.uint8).reshape(1, 255, 1).expand(1, 255, 16).contiguous()
    g = torch.Generator().manual_seed(3)
    tiles = (torch.randint(0, 256, (2, 2500, 3, 16), generator=g, dtype=torch.uint8),)
    tiles += (torch.randint(100, 150, (2, 2500, 3), generator=g, dtype=torch.uint8),)
    for c, sc in ((codes, scales), tiles):
        got, want = dequantize(c, sc), convert_moe_packed_tensors(c, sc)
        assert got.dtype == torch.bfloat16 and got.shape == want.shape
        assert torch.equal(_bits(got), _bits(want))
    assert torch.isinf(dequantize(codes, scales)).any()  # 6 · 2^127 overflows, as it does in transformers


def test_reads_what_transformers_loads(gptoss):
    _, mx = gptoss
    model_cls = _model_cls()
    sd = model_cls.from_pretrained(mx).state_dict()  # transformers dequantises MXFP4 on the CPU
    ck = open_checkpoint(mx)
    assert sorted(ck.names) == sorted(sd)
    assert not any(n.endswith(("_blocks", "_scales")) for n in ck.names)
    for name in ck.names:
        got = ck.get(name)
        assert got.dtype == sd[name].dtype and got.shape == sd[name].shape, name
        assert torch.equal(_bits(got), _bits(sd[name])), name
        assert ck.meta(name).shape == tuple(sd[name].shape)
    assert ck.get(GU).shape == (E, H, 2 * INTER) and ck.get(DN).shape == (E, INTER, H)
    assert ck.num_params == sum(t.numel() for t in sd.values())
    experts = sum(t.numel() for n, t in sd.items() if n.endswith(("experts.gate_up_proj", "experts.down_proj")))
    assert ck.dtypes["mxfp4"] == experts and sum(ck.dtypes.values()) == ck.num_params
    assert ck.names_table.family == "gpt_oss" and ck.names_table.unmatched(ck.names) == []
    assert ck.array(GU, np.int16) is None  # not a view of the file: dequantised when read
    assert any("MXFP4" in n for n in ck.notes)


def test_mxfp4_base_against_the_bf16_finetune_transformers_saved(gptoss, tmp_path):
    """What an RL run on gpt-oss leaves: the release in MXFP4, the finetune saved in bf16."""
    _, mx = gptoss
    model_cls = _model_cls()
    model = model_cls.from_pretrained(mx)
    p = dict(model.named_parameters())
    with torch.no_grad():
        gu = p[GU]  # (E, H, 2I): gate = [..., ::2], up = [..., 1::2]
        gu[1, 5, [0, 2, 4]] = bf16_step(gu[1, 5, [0, 2, 4]], 1)  # expert 1, gate: 3
        gu[2, 7, 1] = bf16_step(gu[2, 7, 1:2], 1)[0]  # expert 2, up: 1
        dn = p[DN]
        dn[3, 0, :4] = bf16_step(dn[3, 0, :4], 2)  # expert 3: 4
        r = p["model.layers.0.mlp.router.weight"]
        r[0, :2] = bf16_step(r[0, :2], 1)
        s = p["model.layers.1.self_attn.sinks"]
        s[1] = bf16_step(s[1:2], 1)[0]
    model.save_pretrained(tmp_path / "ft")
    assert "quantization_config" not in json.loads((tmp_path / "ft" / "config.json").read_text())
    a = analyze_updates(str(mx), [str(tmp_path / "ft")], labels=["rl"])
    rep = a.reports[0]
    t = rep.tensors.set_index("key")
    assert t["changed"].sum() == 3 + 1 + 4 + 2 + 1
    assert t.loc["layers.1.mlp.experts.gate_up_proj", "changed"] == 4
    assert t.loc["layers.0.mlp.experts.down_proj", "changed"] == 4
    assert t.loc["layers.0.mlp.router.weight", "module"] == "router"
    assert t.loc["layers.1.self_attn.sinks", "module"] == "sinks" and t.loc["layers.1.self_attn.sinks", "changed"] == 1
    assert t.loc["layers.1.mlp.experts.gate_up_proj", "stored_as"] == "mxfp4 codes as bfloat16 -> float"
    assert t.loc["layers.1.mlp.experts.gate_up_proj", "expert"] == "all"
    rows, _ = rep.row_col["layers.1.mlp.experts.gate_up_proj"]
    assert list(rows) == [0, 3, 1, 0]  # per expert
    blm = rep.by_layer_module().set_index(["layer", "module"])
    assert blm.loc[(1, "gate"), "changed"] == 3 and blm.loc[(1, "up"), "changed"] == 1
    assert blm.loc[(1, "gate"), "numel"] == E * H * INTER + E * INTER  # weights and the interleaved bias
    assert any("MXFP4" in n for n in a.notes)


def test_each_packed_expert_has_its_own_spectrum(gptoss, tmp_path):
    """Spectra of an MXFP4 release against a bf16 finetune: each expert of a packed (E, in, out) tensor is one
    matrix, named key[e], with its layer, module and expert (before: every packed tensor was left out of the
    spectra, so gpt-oss showed attention only), its singular values those of that expert's Δ in float64 NumPy."""
    from subnetviz.analysis.update_pass import SpectraOptions

    bf16, mx = gptoss
    ref = read_state_dict(mx)
    base = open_checkpoint(mx)
    sd = {n: base.get(n) for n in base.names}  # the release's experts as transformers loads them
    gen = torch.Generator().manual_seed(3)
    w = sd[DN]
    moved = torch.rand(w.shape, generator=gen) < 0.2
    sd[DN] = torch.where(moved, bf16_step(w, 1), w)
    ft = write_folder(
        tmp_path / "ft", {**{k: v for k, v in ref.items() if "_blocks" not in k and "_scales" not in k}, **sd}, bf16
    )
    a = analyze_updates(str(mx), [str(ft)], labels=["rl"], spectra=SpectraOptions(baseline=False))
    spec = a.spectra_located().set_index("name")
    delta = sd[DN].double().numpy() - base.get(DN).double().numpy()
    for e in range(E):
        row = spec.loc[f"layers.0.mlp.experts.down_proj[{e}]"]
        assert (row["layer"], row["module"], row["expert"]) == (0, "down", str(e))
        assert (row["rows"], row["cols"]) == (INTER, H)
        want = np.linalg.svd(delta[e], compute_uv=False)
        got = a.sigmas().query("name == @row.name and kind == 'update'")["sigma"].to_numpy()
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * want[0])
    assert spec.loc["layers.0.mlp.experts.gate_up_proj[2]", "effective_rank_99"] == 0  # unchanged: no energy
    assert "layers.0.mlp.experts.down_proj" not in spec.index
    assert not spec.index.str.contains("_bias").any()  # the packed (E, out) biases are no matrices


def test_one_changed_scale_changes_its_blocks_nonzero_values(gptoss, tmp_path):
    _, mx = gptoss
    sd = read_state_dict(mx)
    e, row, grp = 2, 9, 1
    scales = sd[f"{GU}_scales"]
    scales[e, row, grp] += 1
    codes = sd[f"{GU}_blocks"][e, row, grp]
    nonzero = int(((codes & 0x07) != 0).sum() + ((codes >> 4 & 0x07) != 0).sum())  # ±0 stays ±0
    assert 0 < nonzero < 32
    ft = write_folder(tmp_path / "ft", sd, mx)
    rep = analyze_updates(str(mx), [str(ft)], labels=["s"]).reports[0]
    t = rep.tensors.set_index("key")
    assert t["changed"].sum() == nonzero
    rows, cols = rep.row_col["layers.1.mlp.experts.gate_up_proj"]
    assert list(rows) == [0, 0, nonzero, 0]
    # in the (E, H, 2I) layout, the block is column `row` of inputs grp·32 .. grp·32 + 31
    cols = torch.as_tensor(cols).reshape(H, 2 * INTER)
    assert int(cols[grp * 32 : (grp + 1) * 32, row].sum()) == nonzero and int(cols.sum()) == nonzero


def _edit(mx, tmp_path, fn):
    out = tmp_path / "bad"
    shutil.rmtree(out, ignore_errors=True)
    sd = read_state_dict(mx)
    fn(sd)
    return write_folder(out, sd, mx)


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda sd: sd.pop(f"{GU}_scales"), ["no", f"{GU}_scales", "beside"]),
        (lambda sd: sd.pop(f"{GU}_blocks"), [f"{GU}_scales", f"{GU}_blocks", "beside"]),
        (
            lambda sd: sd.update({f"{GU}_scales": sd[f"{GU}_scales"][:, :, :1].clone()}),
            ["expected blocks", "(4, 192, 1)"],
        ),
        (lambda sd: sd.update({f"{GU}_blocks": sd[f"{GU}_blocks"].view(torch.int8)}), ["int8", "expected uint8"]),
        (lambda sd: sd.update({f"{GU}_blocks": sd[f"{GU}_blocks"][0].clone()}), ["expected blocks", "(192, 2, 16)"]),
        (lambda sd: sd.update({GU: torch.zeros(E, H, 2 * INTER, dtype=torch.bfloat16)}), ["both", GU]),
    ],
    ids=["no-scales", "no-blocks", "scale-shape", "int8-codes", "3d-blocks", "both-forms"],
)
def test_a_pair_that_does_not_fit_is_one_line(gptoss, tmp_path, edit, words):
    _, mx = gptoss
    bad = _edit(mx, tmp_path, edit)
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(bad)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and all(w in msg for w in words), msg


def test_nan_scale_and_memory_are_refused_before_allocating(gptoss, tmp_path, monkeypatch):
    _, mx = gptoss

    def nan_scale(sd):
        sd[f"{GU}_scales"][3, 17, 1] = 255

    ck = open_checkpoint(_edit(mx, tmp_path, nan_scale))
    with pytest.raises(CheckpointError, match=r"scale byte 255 \(NaN in E8M0\) at expert 3, row 17, block 1"):
        ck.get(GU)
    ck.get(DN)  # the other tensors read
    ck = open_checkpoint(mx)
    monkeypatch.setattr(config, "available_memory_bytes", lambda: E * H * 2 * INTER * 2)  # the result alone
    with pytest.raises(ConfigError, match=f"MXFP4 tensor {GU} .dequantised to bfloat16. needs about"):
        ck.get(GU)


def test_a_series_from_the_mxfp4_release(gptoss, tmp_path):
    """A checkpoint series that starts at the MXFP4 release: its experts are dequantised, not taken by
    address from the file (before: 'changed since the header was read', the name not in the header)."""
    from subnetviz.analysis.series import checkpoint_series

    _, mx = gptoss
    model_cls = _model_cls()
    model = model_cls.from_pretrained(mx)
    for step, n in ((1, 3), (2, 5)):
        with torch.no_grad():
            w = dict(model.named_parameters())[GU]
            w[0, 0, :n] = bf16_step(w[0, 0, :n], 1)  # step 2 moves 2 more entries, and the first 3 again
        model.save_pretrained(tmp_path / f"step{step}")
    s = checkpoint_series([str(mx), str(tmp_path / "step1"), str(tmp_path / "step2")])
    assert list(s.steps["changed_vs_first"]) == [3, 5] and list(s.steps["changed_vs_previous"]) == [3, 5]


def test_a_sharded_release_with_blocks_and_scales_in_different_shards(gptoss, tmp_path):
    """gpt-oss-120b is 15 shards: a tensor's blocks and its scales may sit in different files. Read through
    the shard index, every tensor equals the single-file release's."""
    from safetensors.torch import save_file

    _, mx = gptoss
    sd = read_state_dict(mx)
    scales = {k: v for k, v in sd.items() if k.endswith("_scales")}
    rest = {k: v for k, v in sd.items() if k not in scales}
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_file(rest, str(folder / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file(scales, str(folder / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    weight_map = {k: "model-00001-of-00002.safetensors" for k in rest}
    weight_map |= {k: "model-00002-of-00002.safetensors" for k in scales}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text((mx / "config.json").read_text())
    one, two = open_checkpoint(mx), open_checkpoint(folder)
    assert len(two.files) == 2 and sorted(two.names) == sorted(one.names)
    for name in one.names:
        assert torch.equal(_bits(two.get(name)), _bits(one.get(name))), name
