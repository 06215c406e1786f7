"""Spectra review, third pass: each model's spectra rows are located (layer, module) from its own tensors table.

A finetune that unties and stores its own ``lm_head`` while the base and the first finetune tie it: its head's
row had no module (read from the first model's table, which has no ``lm_head``), so the Spectra page's Module
picker left ``lm_head`` out and the table, export and report showed it unlabelled; with the untied model first it
was right. The reference: each model's own tensors table, and the order of models not mattering.
"""

from __future__ import annotations

import json

from safetensors.torch import load_file, save_file

from subnetviz.analysis.updates import SpectraOptions, analyze_updates
from tests.models import save_model, tiny_model


def test_an_untied_head_in_a_later_model_keeps_its_module(tmp_path):
    base = save_model(tiny_model("llama", seed=0, vocab=96, kv_heads=2, tie=True), tmp_path / "base")
    sd = load_file(str(base / "model.safetensors"))
    tied = {n: t.clone() for n, t in sd.items()}
    tied["model.layers.0.self_attn.q_proj.weight"] += 0.05
    (tmp_path / "tied").mkdir()
    for f in ("config.json",):
        (tmp_path / "tied" / f).write_bytes((base / f).read_bytes())
    save_file(tied, str(tmp_path / "tied" / "model.safetensors"), metadata={"format": "pt"})
    embed = sd["model.embed_tokens.weight"]
    untied = {**tied, "lm_head.weight": (embed.float() * 1.5 + 0.01).to(embed.dtype)}  # (its own head)
    (tmp_path / "untied").mkdir()
    cfg = json.loads((base / "config.json").read_text()) | {"tie_word_embeddings": False}
    (tmp_path / "untied" / "config.json").write_text(json.dumps(cfg))
    save_file(untied, str(tmp_path / "untied" / "model.safetensors"), metadata={"format": "pt"})
    assert "lm_head.weight" not in sd  # (the base ties its head: no lm_head stored)

    located = {}
    for order in (["tied", "untied"], ["untied", "tied"]):
        an = analyze_updates(
            str(base), [str(tmp_path / m) for m in order], labels=order, spectra=SpectraOptions(), device="cpu"
        )
        spec = an.spectra_located()
        head = spec[spec["name"].str.endswith("lm_head.weight")]
        assert list(head["model"]) == ["untied"], head
        assert list(head["module"]) == ["lm_head"]
        own = an.report("untied").tensors.set_index("key")
        assert own.loc[head["name"].iloc[0], "module"] == "lm_head"
        located[tuple(order)] = spec.set_index(["model", "name"])[["layer", "module"]].sort_index().astype(str)
    first, second = located.values()
    assert first.equals(second)  # (the order of the models does not change any row's place)
