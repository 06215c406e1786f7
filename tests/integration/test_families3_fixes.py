"""Model families, third pass.

1. Qwen3-VL's deepstack mergers (``visual.deepstack_merger_list.{0,1,2}``, the same patch merger as
   ``visual.merger``, projecting vision blocks 8, 16 and 24 into the language model) were vision-tower layers 0-2:
   their changes and parameters added to those blocks' cells, and left out of the projector's. Built here with the
   release's default ``deepstack_visual_indexes`` (the one earlier test set it to []).
2. EXAONE-3.x (``transformer.h.N.attn.attention.q_proj``, ``mlp.c_fc_0``, ...) had no table: every tensor "other".

The models are transformers' own classes at tiny sizes, saved with ``save_pretrained`` (its real names); a planted
finetune gives the per-module counts, known without subnetviz.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

from subnetviz.analysis.updates import SpectraOptions, analyze_updates
from subnetviz.checkpoints import open_checkpoint


def _planted(folder, out, changes: dict[str, int]):
    """A copy of ``folder`` whose tensors ``changes`` name have that many entries moved by one ULP."""
    out.mkdir()
    for f in folder.iterdir():
        if f.suffix == ".json":
            (out / f.name).write_bytes(f.read_bytes())
    sd = load_file(str(folder / "model.safetensors"))
    for name, n in changes.items():
        sd[name] = sd[name].clone()
        sd[name].view(torch.int16).view(-1)[:n] += 1
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _per_module(base, ft) -> dict:
    an = analyze_updates(str(base), [str(ft)], spectra=SpectraOptions(enabled=False), device="cpu")
    t = an.reports[0].tensors
    return t[t["changed"] > 0].groupby(["block", "module"], dropna=False)["changed"].sum().to_dict()


def test_qwen3_vl_deepstack_mergers_are_projectors_not_vision_layers(tmp_path):
    import transformers as T

    text = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4)
    text |= dict(num_key_value_heads=2, head_dim=4)
    text |= dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [1, 1, 0]})
    vision = dict(depth=3, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16, patch_size=2)
    vision |= dict(spatial_merge_size=1, temporal_patch_size=1, deepstack_visual_indexes=[0, 1, 2])
    torch.manual_seed(0)
    model = T.Qwen3VLForConditionalGeneration(T.Qwen3VLConfig(text_config=text, vision_config=vision))
    base = tmp_path / "base"
    model.to(torch.bfloat16).save_pretrained(base)
    names = open_checkpoint(str(base)).names_table
    mergers = [n for n in load_file(str(base / "model.safetensors")) if ".deepstack_merger_list." in n]
    assert len(mergers) >= 6  # (three mergers, each a norm and two linears)
    for n in mergers:
        info = names.describe(n)
        assert (info.module, info.layer) == ("projector", None), (n, info)
    assert names.describe("model.visual.blocks.0.attn.qkv.weight").module == "vision"

    ft = _planted(base, tmp_path / "ft", {
        "model.visual.blocks.0.attn.qkv.weight": 3,
        "model.visual.deepstack_merger_list.0.linear_fc1.weight": 5,
        "model.visual.merger.linear_fc1.weight": 1,
    })  # fmt: skip
    an = analyze_updates(str(base), [str(ft)], spectra=SpectraOptions(enabled=False), device="cpu")
    t = an.reports[0].tensors
    vision0 = t[(t["module"] == "vision") & (t["layer"] == 0)]["changed"].sum()
    assert vision0 == 3 and t[t["module"] == "projector"]["changed"].sum() == 6


def test_exaone_3_tensors_have_their_modules(tmp_path):
    """EXAONE-3.5 as released (transformers 5 reads it as Llama's and saves the release's names back)."""
    import transformers as T

    sizes = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2)
    cfg = T.ExaoneConfig(**sizes, num_attention_heads=4, num_key_value_heads=2, head_dim=4)
    torch.manual_seed(0)
    base = tmp_path / "base"
    T.AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).save_pretrained(base)
    stored = list(load_file(str(base / "model.safetensors")))
    names = open_checkpoint(str(base)).names_table
    got = {n: (names.describe(n).layer, names.describe(n).module) for n in stored}
    assert "other" not in {m for _, m in got.values()}, got
    assert names.notice in ("", None), names.notice
    prefix = "transformer.h.1." if "transformer.h.1.mlp.c_fc_0.weight" in got else "model.layers.1."
    if prefix == "transformer.h.1.":  # the release's names
        want = {"attn.attention.q_proj": "q", "attn.attention.out_proj": "o", "mlp.c_fc_0": "gate"}
        want |= {"mlp.c_fc_1": "up", "mlp.c_proj": "down", "ln_1": "attn_norm", "ln_2": "mlp_norm"}
        assert {k: got[f"{prefix}{k}.weight"] for k in want} == {k: (1, m) for k, m in want.items()}
        assert got["transformer.wte.weight"][1] == "embed" and got["transformer.ln_f.weight"][1] == "final_norm"
    ft = _planted(base, tmp_path / "ft", {f"{prefix}{'mlp.c_fc_1' if 'h.' in prefix else 'mlp.up_proj'}.weight": 4})
    assert json.loads((ft / "config.json").read_text())["model_type"] == "exaone"
    assert _per_module(base, ft) == {("mlp", "up"): 4}
