"""Packed experts against experts stored one by one (subnetviz.checkpoints.experts_layout).

A finetune saved from transformers 5's in-memory state dict stores an MoE's experts packed
(``mlp.experts.gate_up_proj`` (E, 2I, H), ``down_proj`` (E, H, I)); its release, and ``save_pretrained``, store them
one by one. Proves: such a pair is compared expert by expert, its counts equal to what transformers itself loads
from the two folders (both read into its packed form and compared entry by entry), in either direction and beside a
finetune stored one by one; the packed side says how it was read; shapes that do not fit are left listed as before,
unless a packed tensor's own shape is not its config's (refused).
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from subnetviz.analysis.updates import SpectraOptions, analyze_updates
from subnetviz.errors import CheckpointError

SMALL = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4, num_local_experts=4,
    num_experts_per_tok=2, pad_token_id=0, bos_token_id=0, eos_token_id=0,
)  # fmt: skip


def _model(kind: str, seed: int):
    import transformers as T

    torch.manual_seed(seed)
    return T.AutoModelForCausalLM.from_config(T.AutoConfig.for_model(kind, **SMALL)).to(torch.bfloat16)


def _pair(tmp_path, kind: str, *, packed: str = "ft"):
    """(base folder, finetune folder, the finetune's model): the base saved by save_pretrained (experts one by
    one), the finetune with planted changes in two experts and elsewhere; the side named ``packed`` saved from its
    in-memory state dict (packed experts), the other by save_pretrained."""
    base, ft = _model(kind, 0), _model(kind, 0)
    sd = ft.state_dict()
    with torch.no_grad():
        gate_up = next(k for k in sd if k.endswith("layers.1.mlp.experts.gate_up_proj"))
        down = next(k for k in sd if k.endswith("layers.0.mlp.experts.down_proj"))
        sd[gate_up][2, 3, :5] += 1.0  # expert 2's gate row 3
        sd[gate_up][1, -1, :7] += 1.0  # expert 1's last up row
        sd[down][3, :, 0] += 1.0  # expert 3's down column 0
        next(v for k, v in sd.items() if k.endswith("layers.0.self_attn.q_proj.weight"))[0, :4] += 1.0
    for name, model in (("base", base), ("ft", ft)):
        folder = tmp_path / name
        model.save_pretrained(folder)
        if name == packed:  # the in-memory state dict, as a consolidation or a plain safetensors save writes it
            (folder / "model.safetensors").unlink()
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return tmp_path / "base", tmp_path / "ft"


def _reference(base, ft) -> tuple[int, int]:
    """(parameters, changed entries) as transformers loads the two folders (into its packed form)."""
    import transformers as T

    a, b = (T.AutoModelForCausalLM.from_pretrained(str(f), dtype=torch.bfloat16).state_dict() for f in (base, ft))
    keys = [k for k in a if k != "lm_head.weight" or "lm_head.weight" in b]
    return sum(a[k].numel() for k in keys), sum(
        int((a[k].view(torch.int16) != b[k].view(torch.int16)).sum()) for k in keys
    )


@pytest.mark.parametrize("kind", ["qwen3_moe", "mixtral"])
@pytest.mark.parametrize("packed", ["ft", "base"])
def test_packed_experts_are_compared_with_experts_stored_one_by_one(tmp_path, kind, packed):
    base, ft = _pair(tmp_path, kind, packed=packed)
    params, changed = _reference(base, ft)
    rep = analyze_updates(str(base), [str(ft)], spectra=SpectraOptions(enabled=False)).reports[0]
    t = rep.tensors
    assert int(t["numel"].sum()) == params and int(t["changed"].sum()) == changed == 5 + 7 + 32 + 4
    per_expert = t[t["expert"].notna()].groupby("expert")["changed"].sum()
    assert per_expert.to_dict() == {"0": 0, "1": 7, "2": 5, "3": 32}
    notes = " ".join(rep.notes)
    assert "read as the per-expert tensors" in notes and "only in" not in notes


def test_a_packed_finetune_beside_one_stored_expert_by_expert(tmp_path):
    """Three checkpoints: the packed finetune is read as the others' per-expert tensors; the other finetune as is."""
    base, ft = _pair(tmp_path / "a", "qwen3_moe", packed="ft")
    other = tmp_path / "other"
    _model("qwen3_moe", 0).save_pretrained(other)
    analysis = analyze_updates(str(base), [str(ft), str(other)], spectra=SpectraOptions(enabled=False))
    a, b = analysis.reports
    assert int(a.tensors["changed"].sum()) == 48 and int(b.tensors["changed"].sum()) == 0
    assert list(a.tensors["name"]) == list(b.tensors["name"])  # one alignment, tensor for tensor


def test_packed_experts_whose_own_shape_is_not_the_configs_are_refused(tmp_path):
    """A packed layer whose own shape is not the one config.json implies (here down_proj stored (E, I, H)), which
    transformers would not load, is refused in one line naming the finetune, the tensor, its shape and the config's
    (it was listed as only in the finetune, its changes dropped)."""
    from safetensors.torch import load_file

    base, ft = _pair(tmp_path, "qwen3_moe", packed="ft")
    sd = load_file(str(ft / "model.safetensors"))
    key = next(k for k in sd if k.endswith("layers.1.mlp.experts.down_proj"))
    e, h, i = sd[key].shape
    sd[key] = sd[key].transpose(1, 2).contiguous()
    save_file(sd, str(ft / "model.safetensors"))
    said = f"{ft}: packed experts tensor {key!r} has shape {(e, i, h)}; config.json implies {(e, h, i)}"
    with pytest.raises(CheckpointError, match=re.escape(said)):
        analyze_updates(str(base), [str(ft)], spectra=SpectraOptions(enabled=False))


def test_packed_experts_beside_experts_of_different_sizes_stay_listed(tmp_path):
    """A release whose experts differ in size (one pruned) has no packed form; the packed finetune's layer is listed
    as only in the finetune with the note, not read into the wrong shapes (which aborted the whole comparison)."""
    from safetensors.torch import load_file

    base, ft = _pair(tmp_path, "qwen3_moe", packed="ft")
    sd = load_file(str(base / "model.safetensors"))
    for role in ("gate_proj", "up_proj"):  # expert 2 of layer 1 pruned to half its intermediate rows
        key = next(k for k in sd if k.endswith(f"layers.1.mlp.experts.2.{role}.weight"))
        sd[key] = sd[key][: sd[key].shape[0] // 2].contiguous()
    key = next(k for k in sd if k.endswith("layers.1.mlp.experts.2.down_proj.weight"))
    sd[key] = sd[key][:, : sd[key].shape[1] // 2].contiguous()
    save_file(sd, str(base / "model.safetensors"), metadata={"format": "pt"})
    rep = analyze_updates(str(base), [str(ft)], spectra=SpectraOptions(enabled=False)).reports[0]
    notes = " ".join(rep.notes)
    assert notes.count("do not fit the per-expert shapes") == 1 and "only in" in notes
    assert rep.tensors["expert"].notna().any()  # layer 0 still read expert by expert
