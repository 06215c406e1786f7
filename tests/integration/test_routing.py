"""Routing of a mixture of experts in the behaviour analysis: a planted finetune whose only change swaps two
experts' router rows in layer 1, against transformers' own router logits read one prompt at a time (no padding,
no hooks: an independent path) and against what the swap must give by construction; the router swap as a revert
mask; a dense model's empty table; prompt sets told apart; the CLI's files."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from subnetviz.analysis.behavior import Prompt, behavior, read_behavior, write_behavior
from subnetviz.analysis.revert import mask_source
from subnetviz.analysis.routing import ALL, COLUMNS, find_routers, jaccard, load_entropy
from subnetviz.errors import ConfigError
from tests.ckpt_fixtures import read_state_dict, write_folder
from tests.models import make_tiny_llama, make_tiny_moe

SUMS = [Prompt("12+30=", "42"), Prompt("7+8=", "15"), Prompt("40+2=")]
MORE = [Prompt("99+1=", "100"), Prompt("5+5=", "10")]
ROUTER = "model.layers.1.mlp.gate.weight"


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """A Qwen3-MoE base (4 experts, top 2) and a finetune whose only change swaps rows 0 and 1 of layer 1's router:
    its layer 1 sends a token to expert 1 where the base sends it to expert 0, and back."""
    return _swapped(tmp_path_factory.mktemp("routing"))


def _swapped(root):
    """The planted pair of :func:`moe` under ``root``: (base, finetune)."""
    base = make_tiny_moe(root / "base", seed=3)
    sd = read_state_dict(base)
    sd[ROUTER] = sd[ROUTER][[1, 0, 2, 3]].clone()
    return base, _beside(base, root / "ft", sd)


def _beside(base, folder, sd):
    """``sd`` written to ``folder`` as a finetune of ``base``, with its tokenizer."""
    ft = write_folder(folder, sd, config_from=base)
    for f in base.glob("tokenizer*"):
        (ft / f.name).write_bytes(f.read_bytes())
    return ft


def _picks(folder, prompts) -> dict[int, np.ndarray]:
    """Per layer, (T, 2) experts of every token, from the model's own router logits (top 2 of their softmax)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    out: dict[int, list] = {0: [], 1: []}
    for p in prompts:
        ids = tok(p.text)["input_ids"] + (tok(p.answer, add_special_tokens=False)["input_ids"] if p.answer else [])
        with torch.no_grad():
            logits = model(torch.tensor([ids]), output_router_logits=True).router_logits
        for layer, lg in enumerate(logits):
            out[layer].append(torch.softmax(lg.double(), -1).topk(2, dim=-1).indices.numpy())
    return {layer: np.concatenate(v) for layer, v in out.items()}


def _entropy(picks: np.ndarray, experts: int = 4) -> float:
    p = np.bincount(picks.reshape(-1), minlength=experts) / picks.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def test_routing_against_the_models_own_router_logits_and_the_planted_swap(moe):
    base, ft = moe
    rep = behavior(str(base), [str(ft)], SUMS, labels=["ft"], curve=None, device="cpu")
    r = rep.routing.set_index("layer")
    assert list(rep.routing.columns) == COLUMNS
    assert set(r["experiment"]) == {"finetuned"} and set(r["router"]) == {
        "model.layers.0.mlp.gate",
        "model.layers.1.mlp.gate",
    }
    pb, pf = _picks(base, SUMS), _picks(ft, SUMS)
    tokens = sum(len(x) for x in pb[0])
    for layer in (0, 1):
        sb, sf = [set(map(int, row)) for row in pb[layer]], [set(map(int, row)) for row in pf[layer]]
        ref = np.array([len(a & b) / len(a | b) for a, b in zip(sb, sf, strict=True)])
        assert r.loc[layer, "tokens"] == len(ref) == tokens // 2
        assert r.loc[layer, "jaccard"] == pytest.approx(ref.mean(), abs=1e-15)
        assert r.loc[layer, "rerouted_share"] == pytest.approx((ref < 1).mean(), abs=1e-15)
        assert r.loc[layer, "load_entropy"] == pytest.approx(_entropy(pf[layer]), abs=1e-12)
        assert r.loc[layer, "load_entropy_base"] == pytest.approx(_entropy(pb[layer]), abs=1e-12)
    # by construction: layer 0 routes as the base; layer 1 relabels experts 0 <-> 1, so a token holding one of
    # them keeps one of its two experts (Jaccard 1/3) and its load is the base's, relabelled (same entropy)
    assert r.loc[0, "jaccard"] == 1.0 and r.loc[0, "rerouted_share"] == 0.0
    one = np.array([(0 in row) != (1 in row) for row in pb[1]])
    assert 0 < one.mean() < 1, "the planted swap must move some tokens and not others"
    assert r.loc[1, "jaccard"] == pytest.approx(np.where(one, 1 / 3, 1.0).mean(), abs=1e-15)
    assert r.loc[1, "load_entropy"] == pytest.approx(r.loc[1, "load_entropy_base"], abs=1e-12)
    assert rep.to_json()["models"]["ft"]["routing"]["routers"] == 2


def test_swapping_the_routers_back_is_the_base_and_into_the_base_is_the_finetune(moe):
    """Only the router changed: the finetune with the base's routers is the base (KL 0, routing as the base's);
    the base with the finetune's routers is the finetune. No random control: it would be the same mask."""
    base, ft = moe
    rep = behavior(
        str(base), [str(ft)], SUMS, labels=["ft"], masks={"swap": mask_source("routers")}, curve=None, device="cpu"
    )
    s = rep.summary.set_index("experiment")
    assert list(s.index) == ["finetuned", "swap/inside", "swap/outside"]
    assert s.loc["finetuned", "kl_forward"] > 0  # (small: random experts of a tiny model move little)
    assert s.loc["swap/inside", "kl_forward"] == 0.0 and s.loc["swap/inside", "kl_reverse"] == 0.0
    assert s.loc["swap/outside", "kl_forward"] == s.loc["finetuned", "kl_forward"]
    r = rep.routing.set_index(["experiment", "layer"])
    assert r.loc[("swap/inside", 1), "jaccard"] == 1.0
    assert r.loc[("swap/outside", 1), "jaccard"] == r.loc[("finetuned", 1), "jaccard"] < 1


def test_prompt_sets_are_told_apart(moe):
    base, ft = moe
    rep = behavior(
        str(base), [str(ft)], SUMS + MORE, labels=["ft"], domains=["a"] * 3 + ["b"] * 2, curve=None, device="cpu"
    )
    one = behavior(str(base), [str(ft)], MORE, labels=["ft"], curve=None, device="cpu").routing.set_index("layer")
    r = rep.routing[rep.routing["domain"] == "b"].set_index("layer")
    for col in ("tokens", "jaccard", "rerouted_share", "load_entropy", "load_entropy_base"):
        assert r[col].to_dict() == pytest.approx(one[col].to_dict(), abs=1e-15), col
    everything = behavior(str(base), [str(ft)], SUMS + MORE, labels=["ft"], curve=None, device="cpu").routing
    both = rep.routing[rep.routing["domain"] == ALL].set_index("layer")  # over every prompt: not a mean of the sets'
    for col in ("tokens", "jaccard", "rerouted_share", "load_entropy", "load_entropy_base"):
        assert both[col].to_dict() == pytest.approx(everything.set_index("layer")[col].to_dict(), abs=1e-15), col
    assert set(rep.routing["domain"]) == {"a", "b", ALL} and set(everything["domain"]) == {"all"}
    with pytest.raises(ConfigError, match="2 prompt-set names for 5 prompts"):
        behavior(str(base), [str(ft)], SUMS + MORE, domains=["a", "b"], curve=None, device="cpu")


def test_a_dense_model_has_an_empty_table_and_no_router_mask(tmp_path):
    base = make_tiny_llama(tmp_path / "base", hidden=16, intermediate=32)
    rep = behavior(str(base), [str(base)], SUMS, labels=["same"], curve=None, device="cpu")
    assert rep.routing.empty and list(rep.routing.columns) == COLUMNS
    (tmp_path / "out").mkdir()
    write_behavior(rep, tmp_path / "out")
    assert not (tmp_path / "out" / "routing.csv").exists()  # (a dense model's run has no routing table)
    back = read_behavior(tmp_path / "out")["routing"]
    assert back.empty and list(back.columns) == COLUMNS
    with pytest.raises(ConfigError, match="no router tensors"):
        behavior(str(base), [str(base)], SUMS, masks={"swap": mask_source("routers")}, curve=None, device="cpu")


def test_helpers_against_hand_counts():
    a = torch.tensor([[0, 1], [2, 3], [0, 2]])
    b = torch.tensor([[1, 0], [0, 1], [0, 3]])
    assert jaccard(a, b).tolist() == [1.0, 0.0, 1 / 3]
    assert load_entropy(torch.tensor([[0, 1], [2, 3]]), 4) == pytest.approx(np.log(4))
    assert load_entropy(torch.tensor([[0, 0], [0, 0]]), 4) == 0.0
    assert np.isnan(load_entropy(torch.empty(0, 2, dtype=torch.int64), 4))


def test_routers_are_found_in_the_families_transformers_lays_out(tmp_path):
    """Each MoE family's block holds its router as ``gate`` or ``router`` beside ``experts``; a dense model none."""
    import transformers as T

    from tests.unit.test_families import _build

    for kind in ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "llama4_text", "gpt_oss"):
        model = _build(kind)
        found = find_routers(model)
        cfg = model.config
        layers = [i for i in range(cfg.num_hidden_layers) if any(r[0] == i for r in found)]
        assert layers, kind
        assert all(k == cfg.num_experts_per_tok for *_, k in found), kind
    assert (
        find_routers(
            T.LlamaForCausalLM(T.LlamaConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, vocab_size=8))
        )
        == []
    )


def test_cli_writes_routing_and_says_how_far_it_moved(moe, tmp_path, capsys):
    from subnetviz.cli import main

    base, ft = moe
    prompts = tmp_path / "sums.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p.text, "answer": p.answer}) for p in SUMS[:2]))
    out = tmp_path / "out"
    code = main(
        ["behavior", str(base), str(ft), "--out", str(out), "--prompts", str(prompts), "--mask", "routers", "--curve"]
    )
    assert code == 0
    routing = read_behavior(out)["routing"]
    assert set(routing["domain"]) == {"sums"} and set(routing["experiment"]) == {
        "finetuned",
        "routers/inside",
        "routers/outside",
    }
    said = capsys.readouterr().out
    assert "routing against the base's" in said and "routers/inside" in said


@pytest.mark.slow
@pytest.mark.usefixtures("typed_options")
def test_the_behaviour_page_shows_an_moe_pairs_routing_and_offers_the_router_swap(app_env):
    """The Routing tab of an MoE pair (under the app's roots): the routers mask offered, the overlap chart's
    'inside' line (the finetune with the base's routers) at 1 in every layer, the entropy chart's base and
    finetune; a dense pair's tab says there is no router to hook."""
    from tests.app_fixtures import decode, open_page, plotly_specs

    base, ft = _swapped(app_env / "routing-page")
    at = open_page(
        "behavior",
        base=str(base),
        ft=[str(ft)],
        bh_tab="Routing (MoE)",
        bh_masks="MoE routers (swap)",
        bh_curve="false",
        bh_limit="16",
    )
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert "MoE routers (swap)" in at.multiselect(key="bh_masks").options
    specs = {s["layout"]["title"]["text"].split("<br>")[0]: s for s in plotly_specs(at)}
    overlap = specs["Routing shared with the base, per layer"]
    lines = {t["name"]: t for t in overlap["data"]}
    assert set(lines) == {"ft · finetuned", "ft · MoE routers (swap)/inside", "ft · MoE routers (swap)/outside"}
    assert decode(lines["ft · MoE routers (swap)/inside"]["y"]).tolist() == [1.0, 1.0]
    assert [t["name"] for t in specs["Entropy of the expert load per layer"]["data"]] == [
        "ln E (balanced)",
        "base",
        "ft",
    ]
    dense = open_page("behavior", bh_tab="Routing (MoE)")
    assert not dense.exception and any("No mixture-of-experts router" in i.value for i in dense.info)
    assert "MoE routers (swap)" not in dense.multiselect(key="bh_masks").options


def _moe(kind: str):
    """A tiny MoE model of ``kind``: tests.unit.test_families' builds, and three families they do not hold."""
    import transformers as T

    from tests.unit.test_families import BASE, DEEPSEEK, _build

    torch.manual_seed(0)
    if kind == "deepseek_v3":  # runnable: its value head as wide as the query/key head, two expert groups
        extra = {"v_head_dim": 8, "n_group": 2, "topk_group": 1, "n_routed_experts": 8, "num_key_value_heads": 4}
        return T.DeepseekV3ForCausalLM(T.DeepseekV3Config(**{**BASE, **DEEPSEEK, **extra}))
    if kind == "phimoe":
        return T.PhimoeForCausalLM(T.PhimoeConfig(**BASE, num_local_experts=4, num_experts_per_tok=2))
    if kind == "dbrx":
        ffn = dict(ffn_hidden_size=8, moe_num_experts=4, moe_top_k=2)
        attn = dict(kv_n_heads=2, rope_theta=1e4)
        cfg = T.DbrxConfig(
            vocab_size=64, d_model=16, n_heads=4, n_layers=2, max_seq_len=64, ffn_config=ffn, attn_config=attn
        )
        return T.DbrxForCausalLM(cfg)
    if kind == "jetmoe":
        cfg = T.JetMoeConfig(**BASE, num_local_experts=4, num_experts_per_tok=2, kv_channels=4)
        return T.JetMoeForCausalLM(cfg)
    return _build(kind)


def test_dbrx_and_jetmoe_routers_are_found():
    """DBRX holds its router's weight in .layer and numbers its blocks transformer.blocks.N; JetMoE holds its
    experts as input_linear / output_linear (and routes its attention heads too): both were read as dense."""
    dbrx = find_routers(_moe("dbrx"))
    assert [(layer, e, k) for layer, _, _, e, k in dbrx] == [(0, 4, 2), (1, 4, 2)]
    jet = {name: (layer, e, k) for layer, name, _, e, k in find_routers(_moe("jetmoe"))}
    assert jet["model.layers.0.mlp.router"] == (0, 4, 2) and jet["model.layers.1.mlp.router"] == (1, 4, 2)


@pytest.mark.parametrize("kind", ["deepseek_v3", "phimoe", "granitemoe", "jamba", "ernie4_5_moe"])
def test_reverting_an_moe_finetunes_whole_update_gives_the_base(kind, tmp_path):
    """A finetune that moved every stored expert and router tensor (DeepSeek-V3's e_score_correction_bias too: a
    buffer that chooses experts) reverted inside its update mask is the base: KL 0, all of Δ reverted, routed as
    the base. Each family stores them in names transformers 5 renames or packs on load (PhiMoE's gate is its
    router, Granite's experts are input_linear / output_linear, Jamba's sit under feed_forward, Ernie's
    moe_statics under the gate): behaviour refused every one of them, and left DeepSeek's bias as the finetune's."""
    from tests.ckpt_fixtures import bf16_step
    from tests.models import char_tokenizer, save_model

    base = save_model(_moe(kind), tmp_path / "base", tokenizer=char_tokenizer())
    sd = read_state_dict(base)
    moved = [n for n in sd if any(p in n for p in (".experts.", "router", ".gate.", "moe_statics", "input_linear"))]
    moved = [n for n in moved if sd[n].is_floating_point()]
    assert moved, sorted(sd)
    g = torch.Generator().manual_seed(1)
    for n in moved:  # (a bias at zero, DeepSeek's, moved far enough to choose other experts)
        zero = not sd[n].any()
        sd[n] = (2 * torch.randn(sd[n].shape, generator=g)).to(sd[n].dtype) if zero else bf16_step(sd[n], 300)
    ft = _beside(base, tmp_path / "ft", sd)
    masks = {"upd": mask_source("update")}
    rep = behavior(str(base), [str(ft)], SUMS, masks=masks, random_control=False, curve=None, device="cpu")
    s = rep.summary.set_index("experiment")
    assert s.loc["finetuned", "kl_forward"] > 0
    assert s.loc["upd/inside", "kl_forward"] == 0.0 and s.loc["upd/inside", "fraction_reverted"] == 1.0
    inside = rep.routing[rep.routing["experiment"] == "upd/inside"]
    assert len(inside) and (inside["jaccard"] == 1.0).all()


def test_two_routers_in_a_layer_draw_a_line_each():
    """JetMoE routes its MLP's experts and its attention heads in every layer: one line per router kind, not one
    line going back and forth between them."""
    from subnetviz.figures.behavior import routing_entropy, routing_overlap

    rows = [
        {"model": "ft", "experiment": "finetuned", "domain": "all", "layer": layer, "router": f"model.layers.{layer}.{r}",
         "experts": 4, "top_k": 2, "tokens": 10, "jaccard": j, "rerouted_share": 1 - j, "load_entropy": 1.0,
         "load_entropy_base": 1.2}
        for layer in (0, 1)
        for r, j in (("mlp.router", 0.5), ("self_attention.experts.router", 0.9))
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=COLUMNS)
    lines = {t.name: list(t.y) for t in routing_overlap(frame).data}
    assert lines == {
        "ft · finetuned · mlp.router": [0.5, 0.5],
        "ft · finetuned · self_attention.experts.router": [0.9, 0.9],
    }
    names = [t.name for t in routing_entropy(frame).data]
    assert "ft · mlp.router" in names and "base · self_attention.experts.router" in names and len(names) == 6


def test_the_routing_is_priced_before_the_models_load():
    """An MoE's routing holds k experts per token and layer for two models: priced with the rest of behaviour's
    memory; a dense config carrying a generation top_k prices nothing."""
    import transformers as T

    from subnetviz.analysis.routing import routing_bytes

    moe = T.Qwen3MoeConfig(num_hidden_layers=48, num_experts=128, num_experts_per_tok=8)
    assert routing_bytes(moe, 100_000) == 2 * 100_000 * 48 * 8 * 4
    dense = T.LlamaConfig(num_hidden_layers=32)
    dense.top_k = 50
    assert routing_bytes(dense, 100_000) == 0 and routing_bytes(None, 10) == 0


def test_parameters_transformers_converts_on_load_are_refused_not_written_back(tmp_path, monkeypatch):
    """Qwen3-VL-MoE's releases store their experts (E, H, 2I) and transformers transposes them on load: a stored
    tensor written into such a parameter as it is would be another model (square experts would even fit).
    transformers' own mapping says which parameters a converter changes; behaviour refuses those by name."""
    import transformers as T

    from subnetviz.analysis import revert
    from subnetviz.checkpoints import experts_layout
    from subnetviz.errors import ConfigError as Refused

    text = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4)
    text |= dict(num_key_value_heads=2, head_dim=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8)
    text |= dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [1, 1, 0]})
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16, patch_size=2)
    vision |= dict(spatial_merge_size=1, temporal_patch_size=1, deepstack_visual_indexes=[])
    model = T.Qwen3VLMoeForConditionalGeneration(T.Qwen3VLMoeConfig(text_config=text, vision_config=vision))
    layer = "model.language_model.layers.0.mlp."
    stored = {f"{layer}experts.gate_up_proj": "a", f"{layer}experts.down_proj": "b", f"{layer}gate.weight": "c"}
    loaded, converted = experts_layout.loaded_into(model, stored)
    assert converted == {f"{layer}experts.gate_up_proj": "Transpose", f"{layer}experts.down_proj": "Transpose"}
    assert loaded[f"{layer}gate.weight"] == ["c"]
    # the builder refuses such a parameter in one line naming it (here a tiny Llama's, as if converted)
    base = make_tiny_llama(tmp_path / "base", hidden=16, intermediate=32)
    name = "model.layers.0.mlp.down_proj.weight"
    monkeypatch.setattr(experts_layout, "loaded_into", lambda model, stored: ({}, {name: "Transpose"}))
    with pytest.raises(Refused, match=rf"transformers converts {name} on load \(Transpose\)"):
        revert.ModelBuilder(str(base), str(base), "cpu")
