"""MoE, third review: a DeepSeek-V3 update mask trains, and Step-3.5 / Step-3.7 has a naming table.

Proves:

- The update mask ``analyze`` writes for a DeepSeek-V3 (transformers' own class, its release saved by
  ``save_pretrained``) holds the routers' ``e_score_correction_bias``, which the model keeps as a persistent buffer.
  Training took it as "not a parameter of the model" and refused the mask. Now such entries are left out with one
  note naming them (also for the ``random:`` control and the check at submit), and the mask selects exactly the
  planted parameter entries. A name that is neither a parameter nor a buffer is still refused, in one line with no
  ``.;``. A masked run on that mask changes no entry outside it and leaves the buffer as the base has it, counted
  from the saved files.
- Step-3.7 (``Step3p7ForConditionalGeneration``: its release stores each MoE layer's experts stacked per part,
  ``moe.gate_proj`` / ``moe.up_proj`` / ``moe.down_proj``, its router ``moe.gate`` and ``moe.router_bias``, its shared
  expert ``share_expert``; in memory ``mlp.experts.gate_up_proj``, ``mlp.gate`` and ``mlp.shared_experts``) is read
  with a table of its own in either layout. The planted changes of each expert, the shared expert and the routers
  come out in the layer × expert grid and the router table as counted independently from the saved tensors; nothing
  is labelled ``other``. MTP layers past ``num_hidden_layers`` are block ``mtp``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.models import char_tokenizer

BIAS = "model.layers.1.mlp.gate.e_score_correction_bias"
GATE_UP = "model.layers.1.mlp.experts.gate_up_proj"
O_PROJ = "model.layers.0.self_attn.o_proj.weight"


# --- DeepSeek-V3: an update mask holding a buffer ------------------------------------------------------------------
def _deepseek():
    tok = char_tokenizer()
    config = T.AutoConfig.for_model(
        "deepseek_v3", vocab_size=len(tok), hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2,
        n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1, kv_lora_rank=8, q_lora_rank=8,
        qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(config).float(), tok


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory):
    """A DeepSeek-V3 release and a finetune of it moved at 5 entries of layer 1's expert 2 (its gate), 4 of layer 0's
    o_proj and 1 of layer 1's router bias (a buffer), and the update mask ``analyze`` writes of the pair."""
    from subnetviz.cli import main

    root = tmp_path_factory.mktemp("deepseek")
    model, tok = _deepseek()
    assert BIAS in dict(model.named_buffers()) and BIAS not in dict(model.named_parameters())
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    with torch.no_grad():
        model.get_parameter(GATE_UP)[2, 3, :5] += 1.0  # expert 2's gate (the first I rows), row 3
        model.get_parameter(O_PROJ)[0, :4] += 1.0
        model.get_buffer(BIAS)[1] += 0.5
    model.save_pretrained(root / "ft")
    tok.save_pretrained(root / "ft")
    out = root / "an"
    argv = ["analyze", str(root / "base"), str(root / "ft"), "--labels", "ft", "--out", str(out)]
    assert main([*argv, "--no-spectra", "--subspaces", "0", "--no-cache"]) == 0
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    return {"root": root, "mask": out / "masks" / "ft.safetensors", "model": model, "shapes": shapes}


def _selected(path: Path) -> dict[str, int]:
    """The mask file's entries in the subnetwork per tensor (read with the mask reader; the file is bit-packed)."""
    from subnetviz.masks import load_mask_set

    return {n: int(m.sum()) for n, m in load_mask_set(str(path)).masks.items() if m.any()}


def test_a_deepseek_v3_update_mask_trains_without_its_buffer(deepseek):
    """Refused before ("'model.layers.1.mlp.gate.e_score_correction_bias' is not a parameter of the model"); now the
    buffer's entry is left out with one note naming it, and the parameters' masks are exactly the planted entries."""
    from subnetviz.training.masking import load_training_mask, tied_heads

    held = _selected(deepseek["mask"])
    assert held[BIAS] == 1 and held[O_PROJ] == 4  # (the premise: analyze's mask names the buffer, one entry in it)
    assert sum(held.values()) == 10
    notes: list[str] = []
    full, _ = load_training_mask(
        str(deepseek["mask"]), deepseek["shapes"], tied=tied_heads(deepseek["model"]), notes=notes
    )
    assert set(full) == set(deepseek["shapes"])
    want = {n: torch.zeros(s, dtype=torch.bool) for n, s in deepseek["shapes"].items()}
    want[GATE_UP][2, 3, :5] = True  # the release's experts.2.gate_proj.weight row 3, packed into the parameter
    want[O_PROJ][0, :4] = True
    assert all(torch.equal(full[n], want[n]) for n in want), [n for n in want if not torch.equal(full[n], want[n])]
    said = [n for n in notes if "buffers" in n]
    assert len(said) == 1 and BIAS in said[0] and "(1 of their entries in the mask)" in said[0]
    assert "\n" not in said[0]


def test_the_random_control_and_the_submit_check_take_it_too(deepseek):
    from subnetviz.training.mask_fit import check_mask_fits
    from subnetviz.training.masking import load_training_mask, tied_heads

    notes: list[str] = []
    full, _ = load_training_mask(
        f"random:{deepseek['mask']}", deepseek["shapes"], tied=tied_heads(deepseek["model"]), notes=notes, seed=3
    )
    assert sum(int(m.sum()) for m in full.values()) == 9  # the parameters' 9 entries, drawn again per tensor
    assert int(full[O_PROJ].sum()) == 4 and int(full[GATE_UP].sum()) == 5
    assert any(BIAS in n and "buffers" in n for n in notes)
    check_mask_fits(str(deepseek["root"] / "base"), str(deepseek["mask"]))  # refused before, from headers


def test_a_name_neither_parameter_nor_buffer_is_still_refused(deepseek, tmp_path):
    from subnetviz.errors import MaskError
    from subnetviz.masks import load_mask_set, save_mask_set
    from subnetviz.training.mask_fit import check_mask_fits
    from subnetviz.training.masking import load_training_mask, tied_heads

    ms = load_mask_set(str(deepseek["mask"]))
    for stray in ("model.layers.1.mlp.gate.e_score_bias", "model.layers.0.mlp.gate.e_score_correction_bias"):
        ms.masks[stray] = torch.ones(4, dtype=torch.bool)  # (layer 0 is dense: no router, no such buffer)
    save_mask_set(tmp_path / "m.safetensors", ms)
    with pytest.raises(MaskError, match="'model.layers.1.mlp.gate.e_score_bias' is not a parameter") as exc:
        load_training_mask(str(tmp_path / "m.safetensors"), deepseek["shapes"], tied=tied_heads(deepseek["model"]))
    message = str(exc.value)
    assert "'model.layers.0.mlp.gate.e_score_correction_bias' is not a parameter" in message
    assert BIAS not in message and "\n" not in message
    assert ".;" not in message  # (each problem a sentence: they were joined "model.; 'model...")
    with pytest.raises(MaskError, match="e_score_bias' is not a parameter") as exc:
        check_mask_fits(str(deepseek["root"] / "base"), str(tmp_path / "m.safetensors"))
    assert BIAS not in str(exc.value) and ".;" not in str(exc.value)


def _bits(folder: Path) -> dict[str, torch.Tensor]:
    """Every stored tensor of ``folder`` as its integer bits (compared as integers, independent of any float rule)."""
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: (t := f.get_tensor(k)).view(ints[t.element_size()]) for k in f.keys()}


@pytest.mark.slow
def test_a_run_on_the_deepseek_v3_mask_moves_nothing_outside_it(deepseek, tmp_path, capsys):
    from subnetviz.masks import load_mask_set
    from subnetviz.training.config import TrainConfig
    from subnetviz.training.run import SUMMARY_FILE, train
    from tests.training_fixtures import write_addition_data

    data = write_addition_data(tmp_path / "data", n=16)
    out = tmp_path / "out"
    cfg = TrainConfig(
        algorithm="sft", base=str(deepseek["root"] / "base"), data=str(data["sft"]), output_dir=str(out),
        mask=str(deepseek["mask"]), steps=2, learning_rate=1e-2, batch_size=16, bf16=False, seed=0,
    )  # fmt: skip
    train(cfg)  # before the fix: MaskError ... e_score_correction_bias' is not a parameter of the model
    assert BIAS in capsys.readouterr().err  # the note, on stderr for a run without a job
    base, trained = _bits(deepseek["root"] / "base"), _bits(out)
    assert set(base) == set(trained) and BIAS in base
    masks = load_mask_set(str(deepseek["mask"])).masks  # keyed by the stored names, as base and run store them
    inside = outside = 0
    for name in base:
        diff = base[name] != trained[name]
        m = masks[name].to(torch.bool) if name in masks else torch.zeros_like(diff)
        inside, outside = inside + int((diff & m).sum()), outside + int((diff & ~m).sum())
    assert outside == 0 and inside > 0
    assert torch.equal(base[BIAS], trained[BIAS])  # the buffer, inside the file's mask, stays as the base has it
    check = json.loads((out / SUMMARY_FILE).read_text())["mask_check"]
    assert (check["changed_inside"], check["changed_outside"], check["numel_inside"]) == (inside, 0, 9)
    assert check["outside_mask_identical"]


# --- Step-3.7: naming, expert grid and router table ------------------------------------------------------------------
E, INTER, H = 4, 8, 16  # experts, expert width, hidden size (INTER != H / 2: every stacked part has a shape of its own)


def _step3p7():
    text = dict(
        vocab_size=64, hidden_size=H, head_dim=8, num_attention_heads=2, num_key_value_heads=1,
        num_sliding_attention_heads=2, num_hidden_layers=2, layer_types=["full_attention"] * 2,
        mlp_layer_types=["dense", "sparse"], moe_intermediate_size=INTER, intermediate_size=24, n_routed_experts=E,
        num_experts_per_tok=2, share_expert_dim=INTER,
    )  # fmt: skip
    vision = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, patch_size=4)
    config = T.AutoConfig.for_model("step3p7", text_config=text, vision_config={**vision, "image_size": 16})
    torch.manual_seed(0)
    return T.AutoModelForImageTextToText.from_config(config).float()


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    """A Step-3.7 saved as released (``save_pretrained``) and as its in-memory state dict."""
    root = tmp_path_factory.mktemp("step3p7")
    model = _step3p7()
    assert type(model).__name__ == "Step3p7ForConditionalGeneration"
    model.save_pretrained(root / "rel")
    (root / "sd").mkdir()
    shutil.copy(root / "rel" / "config.json", root / "sd" / "config.json")
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(sd, str(root / "sd" / "model.safetensors"), metadata={"format": "pt"})
    assert "model.layers.1.moe.gate_proj.weight" in load_file(root / "rel" / "model.safetensors")  # (the premise)
    assert GATE_UP.replace("model.", "model.language_model.") in sd
    return root


def _finetune(src: Path, dst: Path, plant) -> tuple[dict[tuple[int, str], int], dict[str, int]]:
    """``src`` copied to ``dst`` with ``plant(tensors)`` applied to its tensors; returns the changed entries per
    (layer, expert) and per router tensor, counted here from the two files (each stacked or packed tensor's dim 0 is
    the expert; gate and up of a packed gate_up_proj are its rows' halves, both the expert's)."""
    shutil.copytree(src, dst)
    before = load_file(src / "model.safetensors")
    after = {k: v.clone() for k, v in before.items()}
    plant(after)
    save_file(after, str(dst / "model.safetensors"), metadata={"format": "pt"})
    experts: dict[tuple[int, str], int] = {}
    routers: dict[str, int] = {}
    for name, t in before.items():
        diff = t != after[name]
        if not diff.any():
            continue
        layer = int(name.split("layers.")[1].split(".")[0])
        if ".gate." in name or "router_bias" in name:
            routers[name] = int(diff.sum())
        elif "share" in name:
            experts[(layer, "shared")] = experts.get((layer, "shared"), 0) + int(diff.sum())
        elif t.dim() == 3:
            for e in range(t.shape[0]):
                if diff[e].any():
                    experts[(layer, str(e))] = experts.get((layer, str(e)), 0) + int(diff[e].sum())
        else:
            experts[(layer, "attention")] = int(diff.sum())
    return experts, routers


def _release_plant(sd):
    sd["model.layers.1.moe.gate_proj.weight"][2, 0, :5] += 1  # expert 2's gate
    sd["model.layers.1.moe.up_proj.weight"][0, 3, :2] += 1  # expert 0's up
    sd["model.layers.1.moe.down_proj.weight"][1, :3, 0] += 1  # expert 1's down
    sd["model.layers.1.moe.gate.weight"][0, :6] += 1  # the router
    sd["model.layers.1.moe.router_bias"][3] += 1  # its expert-choosing bias
    sd["model.layers.1.share_expert.up_proj.weight"][0, :2] += 1


def _state_dict_plant(sd):
    p = "model.language_model.layers.1.mlp."
    sd[p + "experts.gate_up_proj"][2, 0, :5] += 1  # expert 2's gate (rows :INTER)
    sd[p + "experts.gate_up_proj"][0, INTER + 3, :2] += 1  # expert 0's up (rows INTER:)
    sd[p + "experts.down_proj"][1, :3, 0] += 1
    sd[p + "gate.weight"][0, :6] += 1
    sd[p + "gate.e_score_correction_bias"][3] += 1
    sd[p + "shared_experts.up_proj.weight"][0, :2] += 1


@pytest.mark.parametrize("layout", ["rel", "sd"])
def test_step3p7_experts_and_routers_are_counted_in_either_layout(step, tmp_path, layout):
    """Before: no naming table, every MoE tensor 'other', the expert grid and the router table empty."""
    from subnetviz.analysis.experts import by_expert, routers
    from subnetviz.analysis.updates import analyze_updates

    plant = _release_plant if layout == "rel" else _state_dict_plant
    experts, router_counts = _finetune(step / layout, tmp_path / "ft", plant)
    assert experts == {(1, "2"): 5, (1, "0"): 2, (1, "1"): 3, (1, "shared"): 2}  # (the premise: what was planted)
    report = analyze_updates(str(step / layout), [str(tmp_path / "ft")], spectra=None).reports[0]
    assert report.changed == sum(experts.values()) + sum(router_counts.values()) == 19
    grid = by_expert(report)
    got = {(int(r.layer), r.expert): int(r.changed) for r in grid.itertuples() if r.changed}
    assert got == experts
    assert set(grid[grid.layer == 1].expert) == {"0", "1", "2", "3", "shared"}  # every expert of the MoE layer
    assert set(grid.layer) == {1}  # layer 0 is dense: no expert of its own
    table = routers(report)
    assert {r.key: int(r.changed) for r in table.itertuples() if r.changed} == {
        k.replace("model.", "", 1).replace("language_model.", ""): v for k, v in router_counts.items()
    }
    assert len(table) == 2  # the MoE layer's router and its bias
    assert not any("naming table" in n or "labelled 'other'" in n for n in report.notes), report.notes
    assert not (report.tensors.module == "other").any()


def test_step3p5_names_its_mtp_layers_shared_expert_and_stacked_experts():
    """A Step-3.5-Flash release's MTP layer (layer num_hidden_layers, as sglang's and vLLM's loaders read it) is
    block mtp, its stacked experts every expert's, its shared expert 'shared'."""
    from subnetviz.checkpoints.naming import NameTable
    from subnetviz.errors import CheckpointError

    config = {"model_type": "step3p5", "num_hidden_layers": 2, "num_nextn_predict_layers": 1, "moe_num_experts": E}
    names = [
        "model.layers.1.moe.gate_proj.weight", "model.layers.1.moe.router_bias",
        "model.layers.1.share_expert.down_proj.weight", "model.layers.2.eh_proj.weight", "model.layers.2.enorm.weight",
        "model.layers.2.shared_head.output.weight", "model.layers.2.shared_head.norm.weight",
        "model.layers.2.moe.down_proj.weight", "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.self_attn.g_proj.weight",
    ]  # fmt: skip
    table = NameTable.from_config(config, names)
    got = {n: table.describe(n) for n in names}
    assert table.notice is None and table.unmatched(names) == []
    assert (got[names[0]].block, got[names[0]].module, got[names[0]].expert) == ("moe", "gate", "all")
    assert (got[names[1]].block, got[names[1]].module) == ("moe", "router")
    assert (got[names[2]].module, got[names[2]].expert) == ("down", "shared")
    assert [got[n].module for n in names[3:7]] == ["mtp_proj", "norm", "lm_head", "final_norm"]
    assert all(got[n].block == "mtp" and got[n].layer == 2 for n in names[3:8])
    assert (got[names[8]].block, got[names[8]].module, got[names[8]].expert) == ("mlp", "up", None)
    assert got[names[9]].module == "attn_gate"
    with pytest.raises(CheckpointError, match="expected 4 experts"):  # moe_num_experts checks a stacked tensor's dim 0
        table.check_packed(names[0], (E + 1, INTER, H))
