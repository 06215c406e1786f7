"""The newest model families through Behaviour, training masks, naming and spectra (review of the new families).

- Behaviour of a vision-language model transformers 5 builds only as an image-text-to-text model (Mistral-3,
  Qwen2-VL) runs, with KLs equal to a float64 reference from the text model built by hand; a model with no class
  that returns next-token logits (the Qwen omni models, Kimi-K2's own code) is refused in one line.
- A Llama-4 release's update mask trains in the text model: the vision tower's all-zero entries are left out with a
  note, one that selects anything is refused in one line.
- Gemma-3n's multimodal embedders and LLaVA-NeXT's image_newline are the vision / audio side, not ``other``; a
  Mistral-3, LLaVA or Aya Vision checkpoint has a naming table of its own (no "chosen by names" warning).
- Spectra leave a state-space layer's A_log, D and dt_bias out, whatever their shape.
"""

import shutil

import numpy as np
import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file

from subnetviz.analysis.behavior import Prompt, behavior
from tests.ckpt_fixtures import mistral3_text_model
from tests.models import char_tokenizer

TEXT = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1)
TEXT.update(head_dim=8, num_hidden_layers=2)
PIXTRAL = dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
PIXTRAL.update(image_size=16, patch_size=4, head_dim=8)
PROMPTS = [Prompt("12+30=", "42"), Prompt("7+8=", "15"), Prompt("40+2=")]


def _save_pair(root, model, plant: dict[str, float], seed: int = 1):
    """``model`` saved in bf16 as ``root/base`` (with the char tokenizer), and ``root/ft``: the tensors of ``plant``
    (stored name -> step) moved by that step at a random 30 % of their entries; returns (base, ft, {name: mask})."""
    base, ft = root / "base", root / "ft"
    model.to(torch.bfloat16).save_pretrained(base)
    char_tokenizer().save_pretrained(base)
    shutil.copytree(base, ft)
    sd = load_file(ft / "model.safetensors")
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name, step in plant.items():
        m = torch.rand(sd[name].shape, generator=g) < 0.3
        sd[name] = torch.where(m, sd[name] + step, sd[name]).to(sd[name].dtype)
        masks[name] = m & (sd[name] != load_file(base / "model.safetensors")[name])
    save_file(sd, str(ft / "model.safetensors"), metadata={"format": "pt"})
    return base, ft, masks


def _scaled(model, std: float = 0.3):
    """``model`` with every parameter drawn from N(0, std²): under transformers' init (std 0.02) a planted change
    moves the next-token distributions by a KL of ~1e-7, too little to tell a right number from a wrong one."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def _kl_reference(logits_of, ids_list):
    """Per-token forward and reverse KL (float64 NumPy) of the (base, ft) logits ``logits_of(ids)`` returns."""
    fwd, rev = [], []
    for ids in ids_list:
        lb, lf = (x.double().numpy() for x in logits_of(ids))
        lb = lb - np.logaddexp.reduce(lb, axis=-1, keepdims=True)
        lf = lf - np.logaddexp.reduce(lf, axis=-1, keepdims=True)
        fwd.append((np.exp(lb) * (lb - lf)).sum(-1))
        rev.append((np.exp(lf) * (lf - lb)).sum(-1))
    return np.concatenate(fwd), np.concatenate(rev)


def _ids(prompts):
    tok = char_tokenizer()
    return [tok.convert_tokens_to_ids(list(p.text + (p.answer or ""))) for p in prompts]


@pytest.fixture(scope="module")
def mistral3(tmp_path_factory):
    """A Mistral-3 (Mistral-Small-3.1's class, an untied head) and a finetune planted in two text matrices."""
    torch.manual_seed(0)
    cfg = T.Mistral3Config(
        text_config=dict(model_type="mistral", **TEXT, tie_word_embeddings=False),
        vision_config=PIXTRAL,
        image_token_index=5,
        spatial_merge_size=2,
        tie_word_embeddings=False,
    )
    model = _scaled(T.Mistral3ForConditionalGeneration(cfg))
    plant = {
        "language_model.model.layers.1.self_attn.q_proj.weight": 0.5,
        "language_model.model.layers.0.mlp.down_proj.weight": 0.25,
    }
    return _save_pair(tmp_path_factory.mktemp("mistral3"), model, plant)


def test_behaviour_of_a_mistral3_pair_equals_its_text_model_built_by_hand(mistral3):
    """Mistral3ForConditionalGeneration is no causal LM to transformers 5: Behaviour ended in a raw ValueError
    traceback. It now runs its text path; every token's KL equals the float64 KL of the language model built by
    hand, reverting the planted entries gives the base (KL exactly 0) and reverting the rest changes nothing."""
    base, ft, masks = mistral3
    rep = behavior(str(base), [str(ft)], PROMPTS, labels=["ft"], masks={"M": masks}, curve=[1.0], device="cpu")
    mb, mf = mistral3_text_model(base), mistral3_text_model(ft)

    def logits(ids):
        with torch.no_grad():  # one sequence at a time, no padding
            return mb(torch.tensor([ids])).logits[0], mf(torch.tensor([ids])).logits[0]

    fwd, rev = _kl_reference(logits, _ids(PROMPTS))
    tokens = rep.tokens[rep.tokens["experiment"] == "finetuned"]
    assert fwd.mean() > 1e-4  # (planted steps large enough to move the distributions)
    assert np.allclose(tokens["kl_forward"].to_numpy(), fwd, rtol=1e-4, atol=1e-9)
    assert np.allclose(tokens["kl_reverse"].to_numpy(), rev, rtol=1e-4, atol=1e-9)
    s = rep.summary.set_index("experiment")
    assert s.loc["finetuned", "kl_forward"] == pytest.approx(fwd.mean(), rel=1e-4)
    assert s.loc["M/inside", "kl_forward"] == 0.0 and s.loc["M/inside", "fraction_reverted"] == 1.0
    assert s.loc["M/outside", "kl_forward"] == s.loc["finetuned", "kl_forward"]
    curve = rep.curves.set_index("order")
    assert (curve["kl_forward"] == 0.0).all()  # every changed entry reverted, both orders


def test_behaviour_of_a_qwen2_vl_pair_equals_transformers_run_one_prompt_at_a_time(tmp_path):
    """Qwen2-VL (its 3-D rotary positions): the batched, padded run of Behaviour against transformers' own
    Qwen2VLForConditionalGeneration run on each prompt alone."""
    torch.manual_seed(0)
    cfg = T.Qwen2VLConfig(
        text_config=dict(**TEXT, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=16, num_heads=2, patch_size=4, spatial_merge_size=2),
    )
    model = _scaled(T.Qwen2VLForConditionalGeneration(cfg))
    base, ft, _ = _save_pair(tmp_path, model, {"model.layers.0.self_attn.q_proj.weight": 0.5})
    rep = behavior(str(base), [str(ft)], PROMPTS, labels=["ft"], curve=None, device="cpu")
    mb, mf = (T.Qwen2VLForConditionalGeneration.from_pretrained(str(f), dtype=torch.float32).eval() for f in (base, ft))

    def logits(ids):
        with torch.no_grad():
            return mb(input_ids=torch.tensor([ids])).logits[0], mf(input_ids=torch.tensor([ids])).logits[0]

    fwd, rev = _kl_reference(logits, _ids(PROMPTS))
    tokens = rep.tokens[rep.tokens["experiment"] == "finetuned"]
    assert fwd.mean() > 1e-4
    assert np.allclose(tokens["kl_forward"].to_numpy(), fwd, rtol=1e-4, atol=1e-9)
    assert np.allclose(tokens["kl_reverse"].to_numpy(), rev, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize(
    "model_type, expected",
    [
        ("llama", "AutoModelForCausalLM"),
        ("gemma3", "AutoModelForCausalLM"),  # (transformers builds the whole multimodal model as a causal LM)
        ("llama4", "AutoModelForCausalLM"),  # (the text model)
        ("mistral3", "AutoModelForImageTextToText"),
        ("qwen2_vl", "AutoModelForImageTextToText"),
        ("qwen2_5_vl", "AutoModelForImageTextToText"),
        ("qwen3_vl", "AutoModelForImageTextToText"),
        ("qwen3_vl_moe", "AutoModelForImageTextToText"),
        ("qwen2_5_omni", None),
        ("qwen3_omni_moe", None),
    ],
)
def test_the_class_a_model_is_run_with(model_type, expected):
    from subnetviz.checkpoints.models import text_model_class
    from subnetviz.errors import ConfigError

    config = T.AutoConfig.for_model(model_type)
    if expected is not None:
        assert text_model_class(config).__name__ == expected
        return
    with pytest.raises(ConfigError, match=rf"^m: {model_type} \(.*\) has no class in transformers .* cannot be run"):
        text_model_class(config, "m")


def test_an_omni_model_or_one_transformers_does_not_know_is_refused_in_one_line(tmp_path, capsys):
    """The CLI's Behaviour on a Qwen2.5-Omni pair, and loading a Kimi-K2 (model type kimi_k2, code of its own):
    one ``error:`` line, exit 2, no traceback (a raw ValueError before)."""
    from subnetviz.checkpoints.models import load_causal_lm
    from subnetviz.cli import main
    from subnetviz.errors import CheckpointError

    folders = []
    for name in ("base", "ft"):
        folder = tmp_path / name
        T.AutoConfig.for_model("qwen2_5_omni").save_pretrained(folder)
        save_file(
            {"thinker.model.embed_tokens.weight": torch.zeros(64, 16, dtype=torch.bfloat16)}, folder / "w.safetensors"
        )
        (folder / "w.safetensors").rename(folder / "model.safetensors")
        char_tokenizer().save_pretrained(folder)
        folders.append(folder)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "1+2=", "answer": "3"}\n')
    code = main(
        [
            "behavior",
            str(folders[0]),
            str(folders[1]),
            "--prompts",
            str(prompts),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert "qwen2_5_omni (" in lines[0] and "no class in transformers" in lines[0]

    kimi = tmp_path / "kimi"
    shutil.copytree(folders[0], kimi)
    (kimi / "config.json").write_text('{"model_type": "kimi_k2", "architectures": ["DeepseekV3ForCausalLM"]}')
    with pytest.raises(CheckpointError, match=r"model type 'kimi_k2' is unknown to transformers") as exc:
        load_causal_lm(kimi)
    assert "\n" not in str(exc.value)


# --- training masks of a release whose vision tower the text model does not build -----------------------------------
@pytest.fixture(scope="module")
def llama4(tmp_path_factory):
    """A Llama4ForConditionalGeneration release (language_model.*, vision_model.*, multi_modal_projector.*), a
    text-only finetune of 4 entries of one q_proj, and the update analysis's mask of it."""
    import subnetviz
    from subnetviz.analysis.updates import write_analysis

    torch.manual_seed(0)
    text = dict(TEXT, intermediate_size=8, intermediate_size_mlp=32, num_local_experts=4, num_experts_per_tok=1)
    text.update(interleave_moe_layer_step=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16)
    vision.update(patch_size=4, vision_output_dim=16, projector_input_dim=16, projector_output_dim=16)
    cfg = T.Llama4Config(text_config=text, vision_config=dict(vision, pixel_shuffle_ratio=0.5), image_token_index=5)
    root = tmp_path_factory.mktemp("llama4")
    base, ft = root / "base", root / "ft"
    T.Llama4ForConditionalGeneration(cfg).to(torch.bfloat16).save_pretrained(base)
    shutil.copytree(base, ft)
    sd = load_file(ft / "model.safetensors")
    key = "language_model.model.layers.0.self_attn.q_proj.weight"
    sd[key] = sd[key].clone()
    sd[key][0, :4] += 1
    save_file(sd, str(ft / "model.safetensors"), metadata={"format": "pt"})
    an = subnetviz.analyze_updates(str(base), [str(ft)], device="cpu", spectra=None)
    write_analysis(an, root / "an")
    with torch.device("meta"):  # the text model, as AutoModelForCausalLM of a llama4 config builds it
        model = T.AutoModelForCausalLM.from_config(T.AutoConfig.from_pretrained(base))
    assert type(model).__name__ == "Llama4ForCausalLM"
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    return next((root / "an" / "masks").glob("*.safetensors")), shapes


def test_a_llama4_release_mask_trains_in_its_text_model(llama4):
    """The mask's vision-tower entries, all zero, named no parameter of the text model and the mask was refused;
    they are now left out with a note, and the mask selects exactly the 4 planted entries."""
    from subnetviz.training.masking import load_training_mask

    path, shapes = llama4
    notes: list[str] = []
    full, _ = load_training_mask(str(path), shapes, notes=notes)
    planted = "model.layers.0.self_attn.q_proj.weight"
    assert set(full) == set(shapes)
    assert {n for n, m in full.items() if m.any()} == {planted}
    expected = torch.zeros(shapes[planted], dtype=torch.bool)
    expected[0, :4] = True
    assert torch.equal(full[planted], expected)
    tower = [n for n in notes if "outside the language model" in n]  # (beside: names matched across prefixes)
    assert len(tower) == 1 and "left out" in tower[0]
    assert "vision_model." in tower[0] or "multi_modal_projector." in tower[0]


def test_a_vision_tower_entry_in_the_subnetwork_is_refused_in_one_line(llama4, tmp_path):
    from subnetviz.errors import MaskError
    from subnetviz.masks import load_mask_set, save_mask_set
    from subnetviz.training.masking import load_training_mask

    path, shapes = llama4
    ms = load_mask_set(str(path))
    tower = next(n for n in ms.masks if n.startswith("vision_model.") and ms.masks[n].numel() > 2)
    ms.masks[tower] = ms.masks[tower].clone()
    ms.masks[tower].view(-1)[:2] = True
    save_mask_set(tmp_path / "m.safetensors", ms)
    with pytest.raises(MaskError, match=rf"2 entries in 1 tensor\(s\) outside the language model \({tower}\)") as exc:
        load_training_mask(str(tmp_path / "m.safetensors"), shapes)
    assert "\n" not in str(exc.value) and "text model only" in str(exc.value)


# --- naming ------------------------------------------------------------------------------------------------------
def test_gemma3n_embedders_are_the_vision_projector_and_the_audio_side():
    """Gemma3nMultimodalEmbedder's tensors (model.embed_vision.*, model.embed_audio.*, as transformers names them)
    were block and module 'other', left out of every per-module view."""
    from subnetviz.checkpoints.naming import NameTable

    text = T.Gemma3nTextConfig(**TEXT, vocab_size_per_layer_input=64, hidden_size_per_layer_input=4)
    audio = T.Gemma3nAudioConfig(hidden_size=16, vocab_size=8, vocab_offset=72)
    embedder = T.models.gemma3n.modeling_gemma3n.Gemma3nMultimodalEmbedder(audio, text)
    own = [n for n, _ in embedder.named_parameters()]
    assert "embedding_projection.weight" in own and "embedding.weight" in own
    names = [f"model.{side}.{n}" for side in ("embed_vision", "embed_audio") for n in own]
    names += ["model.language_model.layers.0.self_attn.q_proj.weight"]
    table = NameTable.from_config({"model_type": "gemma3n", "text_config": {"num_hidden_layers": 2}}, names)
    for n in names[:-1]:
        info = table.describe(n)
        side = "vision" if "embed_vision" in n else "audio"
        assert (info.block, info.module, info.layer) == ((side, "projector" if side == "vision" else "audio", None)), (
            n,
            info,
        )
    assert table.unmatched(names) == []


def _saved_names(model, folder):
    model.save_pretrained(folder)
    return list(load_file(folder / "model.safetensors"))


@pytest.mark.parametrize("kind", ["mistral3", "llava", "llava_next", "aya_vision"])
def test_vision_language_wrappers_have_a_naming_table_of_their_own(kind, tmp_path):
    """Each read with the llama table, by its model type: no "no naming table of its own ... chosen by their
    names" warning on every page; every tensor matched, the language model's layers as attention / MLP / norms,
    the tower and projector (LLaVA-NeXT's image_newline included) as block vision."""
    from subnetviz.checkpoints.sources import open_checkpoint

    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16)
    vision.update(patch_size=4)
    builds = {
        "mistral3": lambda: T.Mistral3ForConditionalGeneration(
            T.Mistral3Config(
                text_config=dict(model_type="mistral", **TEXT), vision_config=PIXTRAL, spatial_merge_size=2
            )
        ),
        "llava": lambda: T.LlavaForConditionalGeneration(
            T.LlavaConfig(
                text_config=dict(model_type="qwen2", **TEXT),
                vision_config=dict(model_type="siglip_vision_model", **vision),
            )
        ),
        "llava_next": lambda: T.LlavaNextForConditionalGeneration(
            T.LlavaNextConfig(
                text_config=dict(model_type="granite", **TEXT),
                vision_config=dict(model_type="clip_vision_model", **vision),
                image_grid_pinpoints=[[16, 16]],
            )
        ),
        "aya_vision": lambda: T.AyaVisionForConditionalGeneration(
            T.AyaVisionConfig(
                text_config=dict(model_type="cohere2", **TEXT),
                vision_config=dict(model_type="siglip_vision_model", **vision),
                downsample_factor=2,
            )
        ),
    }
    names = _saved_names(builds[kind](), tmp_path / kind)
    ck = open_checkpoint(str(tmp_path / kind))
    table = ck.names_table
    assert (table.family, table.guessed, table.notice) == ("llama", False, None)
    assert table.unmatched(ck.names) == []
    infos = {n: table.describe(n) for n in names}
    assert not [n for n, i in infos.items() if i.module == "other"]
    for n, i in infos.items():
        if n.startswith(("vision_tower.", "model.vision_tower.", "multi_modal_projector.")) or n.endswith(
            "image_newline"
        ):
            assert i.block == "vision", (n, i)
        elif ".layers.1.self_attn.q_proj.weight" in n:
            assert (i.layer, i.block, i.module) == (1, "attention", "q"), (n, i)


# --- spectra ------------------------------------------------------------------------------------------------------
def test_spectra_leave_out_a_state_space_layers_a_log_d_and_dt_bias(tmp_path):
    """Jamba's Mamba-1 mixer stores a 2-D A_log (d_inner, d_state): it was decomposed as a weight matrix. Every
    tensor of the pair is changed; the spectra list every changed 2-D weight but the norms and A_log, and the
    planned list (what the cost estimate prices) holds exactly as many matrices."""
    import subnetviz
    from subnetviz.analysis.update_pass import SpectraOptions, planned_spectra
    from tests.ckpt_fixtures import changed_jamba_pair

    base, ft = changed_jamba_pair(tmp_path, **{**TEXT, "num_hidden_layers": 2})
    sd = load_file(ft / "model.safetensors")
    a_log = "model.layers.0.mamba.A_log"
    assert sd[a_log].dim() == 2 and sd["model.layers.0.mamba.D"].dim() == 1
    options = SpectraOptions(enabled=True, baseline=False, max_dim=None)
    an = subnetviz.analyze_updates(str(base), [str(ft)], device="cpu", spectra=options)
    got = set(an.spectra_located()["name"])
    norms = ("norm.weight", "layernorm.weight")
    expected = {
        k.removeprefix("model.")  # (spectra name a matrix by its key, the name without the model prefix)
        for k, v in sd.items()
        if v.dim() == 2 and not k.endswith(norms) and k.rsplit(".", 1)[-1] != "A_log"
    }
    assert got == expected
    assert not {n for n in got if n.rsplit(".", 1)[-1] in ("A_log", "D", "dt_bias")}
    assert len(planned_spectra(str(base), [str(ft)], options)) == len(expected)
