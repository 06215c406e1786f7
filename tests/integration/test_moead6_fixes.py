"""Review moead6: a LoRA on packed experts read beside a finetune that stores its experts one by one; a packed
experts tensor whose own sizes disagree with config.json; Qwen2-MoE's shared expert gate is no router.

Tiny models built here with transformers' own classes (nothing downloaded); the numbers are checked against
planted changes and PEFT's own ``merge_and_unload``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from subnetviz.analysis.experts import by_expert, routers
from subnetviz.analysis.routing import router_tensors
from subnetviz.analysis.updates import SpectraOptions, analyze_updates
from subnetviz.checkpoints import open_checkpoint
from subnetviz.checkpoints.adapters import open_finetune
from subnetviz.checkpoints.experts_layout import match_layouts
from subnetviz.errors import CheckpointError
from subnetviz.figures.moe import router_bars
from tests.integration.test_lora import _as_stored
from tests.integration.test_moe2_fixes import _model, _save_state_dict

NO_SPECTRA = SpectraOptions(enabled=False)


def _counts(report) -> dict[tuple[int, str], int]:
    """(layer, expert) -> changed entries of the routed experts, where any changed."""
    g = by_expert(report)
    return {(int(r.layer), str(r.expert)): int(r.changed) for r in g.itertuples() if r.changed}


@pytest.fixture(scope="module")
def lora_on_packed(tmp_path_factory):
    """A Qwen3-MoE base saved from its in-memory state dict (packed experts), a PEFT LoRA on its packed experts
    (target_parameters) with B zero but for two entries of layer 1 (rank 0 of expert 0 and rank 1 of expert 3,
    one output row each), PEFT's merge_and_unload of it saved with save_pretrained (experts one by one), and
    that merge's state dict with the base's (in memory, packed)."""
    from peft import LoraConfig, get_peft_model

    tmp = tmp_path_factory.mktemp("lora_on_packed")
    model = _model("qwen3_moe")
    model.save_pretrained(tmp / "release")
    base_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _save_state_dict(tmp / "base_packed", base_sd, tmp / "release")
    params = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], target_parameters=params)
    peft_model = get_peft_model(type(model).from_pretrained(tmp / "release"), lora)
    torch.manual_seed(5)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_A" in n:
                p.copy_(torch.randn_like(p))
            elif "lora_B" in n:
                p.zero_()
                if "layers.1." in n and "experts" in n:  # B (out, r·E), column rank·E + expert
                    p.view(-1)[0] = 1.0  # row 0, rank 0 of expert 0
                    p.view(-1)[-1] = 0.8  # last row, rank 1 of expert 3
    peft_model.save_pretrained(tmp / "adapter")
    merged_model = peft_model.merge_and_unload()
    merged = {k: v.detach().clone() for k, v in merged_model.state_dict().items()}
    merged_model.save_pretrained(tmp / "peft_merged")
    return tmp, base_sd, merged


def _reference(base_sd, merged) -> dict[tuple[int, str], int]:
    """(layer, expert) -> entries PEFT's merge changed in that expert's gate, up and down, bit by bit."""
    out = {}
    for layer in (0, 1):
        for part in ("gate_up_proj", "down_proj"):
            key = f"model.layers.{layer}.mlp.experts.{part}"
            diff = (merged[key].view(torch.int32) != base_sd[key].view(torch.int32)).flatten(1).sum(1)
            for e, n in enumerate(diff.tolist()):
                if n:
                    out[layer, str(e)] = out.get((layer, str(e)), 0) + n
    return out


def test_a_lora_on_packed_experts_counts_the_same_alone_and_beside_a_per_expert_finetune(lora_on_packed):
    """Beside a finetune that stores its experts one by one, the packed base is read per expert; the adapter merged
    onto it was left packed, so none of its expert updates was compared (32 changed instead of 80, "44.5 % not
    compared"). Now the adapter's merged experts are read through the same per-expert views: the same counts
    alone and beside the other, PEFT's own merge's, and the planted ones (one row of expert 0's gate and of its
    down, one of expert 3's up and of its down: H + I = 16 + 12 entries each)."""
    tmp, base_sd, merged = lora_on_packed
    reference = _reference(base_sd, merged)
    assert reference == {(1, "0"): 16 + 12, (1, "3"): 16 + 12}
    base, adapter, other = str(tmp / "base_packed"), str(tmp / "adapter"), str(tmp / "peft_merged")
    alone = analyze_updates(base, [adapter], labels=["lora"], spectra=NO_SPECTRA).reports[0]
    both = analyze_updates(base, [adapter, other], labels=["lora", "peft"], spectra=NO_SPECTRA).reports
    assert _counts(alone) == _counts(both[0]) == _counts(both[1]) == reference
    assert int(alone.tensors["changed"].sum()) == int(both[0].tensors["changed"].sum()) == 2 * 28
    assert not [n for n in both[0].notes if "only in" in n or "not compared" in n.lower()], both[0].notes


def test_a_lora_on_packed_experts_read_per_expert_is_peft_merge_bit_for_bit(lora_on_packed):
    """Each per-expert view of the merged adapter (one expert's W[e] + s·Δ[e], then its gate, up or down rows) is
    the matching slice of PEFT's merge_and_unload, bit for bit; its untouched tensors are the base's."""
    tmp, _, merged = lora_on_packed
    base = open_checkpoint(tmp / "base_packed")
    ck = open_finetune(str(tmp / "adapter"), base)
    other = open_checkpoint(tmp / "peft_merged")
    match_layouts([base, ck, other])
    per_expert = [n for n in ck.names if ".experts.0." in n or ".experts.3." in n]
    assert len(per_expert) == 2 * 2 * 3 and set(ck.names) == set(base.names) == set(other.names)
    for name in ck.names:
        want = _as_stored(merged, name)
        assert torch.equal(ck.get(name).view(torch.int32), want.view(torch.int32)), name
        got = ck.array(name, np.int32)  # (a merged tensor or view exists only once computed)
        assert got is None if ".experts." in name else got is None or np.array_equal(got, want.view(torch.int32))


def test_a_packed_experts_tensor_of_another_inner_size_than_config_is_refused(tmp_path):
    """A packed Mixtral finetune whose layer-1 gate_up_proj is (4, 2I − 2, H), against a base storing its experts
    one by one: the layer's experts were listed as only in this checkpoint and its changes dropped, the analysis
    written over 65 % of the model. Now one line naming the checkpoint, the tensor, its shape and config.json's."""
    model = _model("mixtral")
    model.save_pretrained(tmp_path / "base")
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    key = "model.layers.1.mlp.experts.gate_up_proj"
    e, rows, hidden = sd[key].shape
    sd[key] = sd[key][:, : rows - 2].contiguous()
    _save_state_dict(tmp_path / "ft", sd, tmp_path / "base")
    for pair in ([tmp_path / "base", tmp_path / "ft"], [tmp_path / "ft", tmp_path / "base"]):
        with pytest.raises(CheckpointError) as got:
            analyze_updates(str(pair[0]), [str(pair[1])], spectra=NO_SPECTRA)
        said = str(got.value)
        assert "\n" not in said and said.startswith(str(tmp_path / "ft"))
        assert key in said and str((e, rows - 2, hidden)) in said and str((e, rows, hidden)) in said, said


def test_a_packed_experts_tensor_of_the_config_sizes_is_still_compared(tmp_path):
    """The refusal's control: the same packed finetune with its sizes as config.json says is compared, the planted
    change counted."""
    model = _model("mixtral")
    model.save_pretrained(tmp_path / "base")
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd["model.layers.1.mlp.experts.gate_up_proj"][2, 0, :3] += 1.0
    _save_state_dict(tmp_path / "ft", sd, tmp_path / "base")
    rep = analyze_updates(str(tmp_path / "base"), [str(tmp_path / "ft")], spectra=NO_SPECTRA).reports[0]
    assert _counts(rep) == {(1, "2"): 3}


def test_the_shared_expert_gate_is_no_router(tmp_path):
    """Qwen2-MoE's shared_expert_gate (a sigmoid on the shared expert) was counted as layer 1's router: the router
    bar read 1 of 80 entries changed where the router did not change, and the 'routers' revert mask swapped it.
    Planted: 2 entries of layer 0's router, 1 of layer 1's shared_expert_gate; the bars read 2 / (E·H) and 0."""
    model = _model("qwen2_moe", shared_expert_intermediate_size=8)
    model.save_pretrained(tmp_path / "base")
    sd = load_file(str(tmp_path / "base" / "model.safetensors"))
    sd["model.layers.0.mlp.gate.weight"].view(-1)[:2] += 1.0
    sd["model.layers.1.mlp.shared_expert_gate.weight"].view(-1)[:1] += 1.0
    (tmp_path / "ft").mkdir()
    for f in (tmp_path / "base").iterdir():
        if f.suffix != ".safetensors":
            (tmp_path / "ft" / f.name).write_bytes(f.read_bytes())
    save_file(sd, str(tmp_path / "ft" / "model.safetensors"), metadata={"format": "pt"})
    rep = analyze_updates(str(tmp_path / "base"), [str(tmp_path / "ft")], spectra=NO_SPECTRA).reports[0]
    assert int(rep.tensors["changed"].sum()) == 3  # (both changes are in the analysis)
    r = routers(rep)
    assert not r["key"].str.contains("shared_expert_gate").any()
    experts, hidden = sd["model.layers.0.mlp.gate.weight"].shape
    assert r.groupby("layer")["changed"].sum().to_dict() == {0: 2, 1: 0}
    assert r.groupby("layer")["numel"].sum().to_dict() == {0: experts * hidden, 1: experts * hidden}
    bars = router_bars(r.assign(model="ft")).data[0]
    assert list(bars.x) == ["0", "1"] and list(bars.y) == pytest.approx([100 * 2 / (experts * hidden), 0.0])
    held = router_tensors(open_checkpoint(tmp_path / "base"))  # what the 'routers' revert mask swaps
    assert sorted(held) == ["model.layers.0.mlp.gate.weight", "model.layers.1.mlp.gate.weight"]
