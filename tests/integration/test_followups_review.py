"""Follow-ups of the mask-name rule and of the vision-language models (review follow-ups).

- Training matches a mask file's names to the model's by the rule the other pages use: a mask without the model
  prefix, or keyed as PEFT names the model (``base_model.model.``, ``.base_layer.``), trains exactly its planted
  entries, with a note; PEFT's ``base_model.model.lm_head.weight`` of a tied model folds into the embedding.
- Behaviour reads a vision-language model's vocabulary and context from its text config (the loaded config is
  the checkpoint's, not patched), and keeps its notes in what it reads back.
- Subspaces leave a state-space layer's A_log out, as the spectra do.
- SFT of a Mistral-3 trains its text model (TRL's own loading ended in an ImportError traceback for a missing
  torchvision): the vision tower is left as it is, weight decay included, and the model is saved under the base's
  own names.
"""

import re
import shutil

import numpy as np
import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file

from subnetviz.masks import MaskSet, save_mask_set
from tests.ckpt_fixtures import mistral3_text_model
from tests.models import char_tokenizer, tiny_model

TEXT = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1)
TEXT.update(head_dim=8, num_hidden_layers=2)
PIXTRAL = dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
PIXTRAL.update(image_size=16, patch_size=4, head_dim=8)
LORA = re.compile(r"\.(q_proj|v_proj)\.weight$")  # the modules a LoRA wraps: PEFT names them .base_layer.weight


def _planted(shapes: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random mask (density 0.3) for every parameter of ``shapes``, keyed by the model's own names."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(s, generator=g) < 0.3 for n, s in shapes.items()}


def _peft(name: str) -> str:
    """``name`` as PEFT's ``named_parameters()`` give it (written by hand, not by the package's helpers)."""
    return "base_model.model." + LORA.sub(r".\1.base_layer.weight", name)


def _mask_file(tmp_path, name: str, masks: dict) -> str:
    return str(save_mask_set(tmp_path / f"{name}.safetensors", MaskSet(masks, {})))


# --- training: one name rule --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "variant, rename, keep",
    [
        ("no prefix", lambda n: n.removeprefix("model."), lambda n: True),
        ("peft", _peft, lambda n: True),
        ("some peft", _peft, lambda n: ".layers.0.mlp." in n),
    ],
)
def test_training_trains_exactly_a_mask_keyed_without_prefix_or_by_peft(tmp_path, variant, rename, keep):
    """A mask without ``model.`` was matched, one keyed by PEFT refused as naming no parameter of the model. Each
    now trains exactly the planted entries of the tensors it lists (the others frozen), with a note saying that
    names were matched across prefixes."""
    from subnetviz.training.masking import load_training_mask, tied_heads

    model = tiny_model("llama", hidden=16, layers=2, heads=2, tie=False)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    planted = _planted(shapes)
    listed = {n for n in shapes if keep(n)}
    path = _mask_file(tmp_path, variant, {rename(n): planted[n] for n in listed})
    notes: list[str] = []
    full, _ = load_training_mask(path, shapes, tied=tied_heads(model), notes=notes)
    assert set(full) == set(shapes)
    for n in shapes:
        assert torch.equal(full[n], planted[n] if n in listed else torch.zeros(shapes[n], dtype=torch.bool)), n
    assert sum(int(m.sum()) for m in full.values()) == sum(int(planted[n].sum()) for n in listed)
    said = [n for n in notes if "names matched across prefixes" in n]
    assert len(said) == 1 and path in said[0] and "\n" not in said[0]


def test_training_folds_a_peft_named_tied_head_into_the_embedding(tmp_path):
    """A tied model's PEFT ``state_dict`` lists the head as ``base_model.model.lm_head.weight``: it was refused (the
    fold looked it up without the model prefix only). Its entries are now merged (OR) into the embedding's."""
    from subnetviz.training.masking import load_training_mask, tied_heads

    model = tiny_model("llama", hidden=16, layers=2, heads=2, tie=True)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    emb = "model.embed_tokens.weight"
    assert "lm_head.weight" not in shapes  # (tied: one parameter)
    planted = _planted(shapes)
    head = torch.rand(shapes[emb], generator=torch.Generator().manual_seed(9)) < 0.3
    masks = {_peft(n): m for n, m in planted.items()} | {"base_model.model.lm_head.weight": head}
    full, _ = load_training_mask(_mask_file(tmp_path, "peft_tied", masks), shapes, tied=tied_heads(model))
    assert torch.equal(full[emb], planted[emb] | head)
    assert int(full[emb].sum()) == int((planted[emb] | head).sum()) > int(planted[emb].sum())
    assert all(torch.equal(full[n], planted[n]) for n in shapes if n != emb)


# --- a tiny Mistral-3 ---------------------------------------------------------------------------------------------
def _mistral3(root, positions: int = 4096):
    """A Mistral-3 (Mistral-Small-3.1's class, untied head; text context ``positions``) saved in bf16 with the char
    tokenizer in ``root``; every parameter drawn from N(0, 0.3²) so a planted change moves the logits."""
    cfg = T.Mistral3Config(
        text_config=dict(model_type="mistral", **TEXT, tie_word_embeddings=False, max_position_embeddings=positions),
        vision_config=PIXTRAL,
        image_token_index=5,
        spatial_merge_size=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = T.Mistral3ForConditionalGeneration(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model.to(torch.bfloat16).save_pretrained(root)
    char_tokenizer().save_pretrained(root)
    return root


def test_behaviour_reads_a_vision_language_models_vocabulary_and_context_from_its_text_config(tmp_path):
    """The loaded model's config was patched (vocab_size copied onto it) for Behaviour to read the vocabulary; the
    context sat in the text config, unread, so a prompt longer than the model takes ran past its positions. Now
    the config loaded is the checkpoint's, prompts are cut to the text config's 8 positions with a note, and every
    token's KL equals the float64 KL of the text model built by hand, on those 8 tokens."""
    from subnetviz.analysis.behavior import Prompt, behavior
    from subnetviz.checkpoints.models import load_causal_lm

    base = _mistral3(tmp_path / "base", positions=8)
    ft = tmp_path / "ft"
    shutil.copytree(base, ft)
    sd = load_file(ft / "model.safetensors")
    for key in (
        "language_model.model.layers.1.self_attn.q_proj.weight",
        "language_model.model.layers.0.mlp.down_proj.weight",
    ):
        sd[key] = (sd[key].float() + 0.5).to(sd[key].dtype)
    save_file(sd, str(ft / "model.safetensors"), metadata={"format": "pt"})

    loaded, stored = load_causal_lm(base).config, T.AutoConfig.from_pretrained(base)
    assert set(loaded.to_dict()) == set(stored.to_dict())  # (its keys as stored: no vocab_size set on top)
    assert not hasattr(loaded, "vocab_size") and loaded.get_text_config().vocab_size == 64

    prompts = [Prompt("12+30+7=", "49"), Prompt("7+8=", "15")]  # 10 and 6 tokens
    rep = behavior(str(base), [str(ft)], prompts, labels=["ft"], curve=None, device="cpu")
    assert any("8" in n and "cut" in n for n in rep.notes), rep.notes
    tokens = rep.tokens[rep.tokens["experiment"] == "finetuned"]
    tok = char_tokenizer()
    ids = [tok.convert_tokens_to_ids(list(p.text + p.answer))[:8] for p in prompts]
    assert list(tokens.groupby("prompt").size()) == [len(i) for i in ids] == [8, 6]
    mb, mf = mistral3_text_model(base), mistral3_text_model(ft)
    fwd, rev = [], []
    with torch.no_grad():
        for i in ids:
            lb = mb(torch.tensor([i])).logits[0].double().numpy()
            lf = mf(torch.tensor([i])).logits[0].double().numpy()
            lb = lb - np.logaddexp.reduce(lb, axis=-1, keepdims=True)
            lf = lf - np.logaddexp.reduce(lf, axis=-1, keepdims=True)
            fwd.append((np.exp(lb) * (lb - lf)).sum(-1))
            rev.append((np.exp(lf) * (lf - lb)).sum(-1))
    fwd, rev = np.concatenate(fwd), np.concatenate(rev)
    assert fwd.mean() > 1e-4
    assert np.allclose(tokens["kl_forward"].to_numpy(), fwd, rtol=1e-4, atol=1e-9)
    assert np.allclose(tokens["kl_reverse"].to_numpy(), rev, rtol=1e-4, atol=1e-9)


def test_behaviour_results_read_back_keep_the_reports_notes(tmp_path):
    """The page reads a report back from its files: the notes (how a mask's names were placed, ...) were in
    behavior.json only, and the page showed none. A PEFT-named mask's run says that names were matched across
    prefixes, and reading the files back gives the report's notes, in order."""
    from subnetviz.analysis.behavior import Prompt, behavior, read_behavior, write_behavior
    from tests.models import make_tiny_llama

    base = make_tiny_llama(tmp_path / "base", hidden=16, intermediate=32)
    ft = tmp_path / "ft"
    shutil.copytree(base, ft)
    sd = load_file(ft / "model.safetensors")
    key = "model.layers.0.mlp.down_proj.weight"
    changed = torch.rand(sd[key].shape, generator=torch.Generator().manual_seed(1)) < 0.3
    sd[key] = torch.where(changed, sd[key].float() + 0.5, sd[key].float()).to(sd[key].dtype)
    save_file(sd, str(ft / "model.safetensors"), metadata={"format": "pt"})
    masks = {"peft": {_peft(key): changed}}
    rep = behavior(str(base), [str(ft)], [Prompt("12+30=", "42")], labels=["ft"], masks=masks, curve=None, device="cpu")
    assert any("names matched across prefixes" in n and _peft(key) in n for n in rep.notes), rep.notes
    assert rep.summary.set_index("experiment").loc["peft/inside", "kl_forward"] == 0.0  # (the planted entries)
    out = tmp_path / "out"
    out.mkdir()
    write_behavior(rep, out)
    assert list(read_behavior(out)["notes"]["note"]) == rep.notes


# --- subspaces -------------------------------------------------------------------------------------------------------
def test_subspaces_leave_out_a_state_space_layers_a_log(tmp_path):
    """Jamba's Mamba-1 mixer stores a 2-D A_log (d_inner, d_state), log decay rates applied entry by entry: the
    spectra left it out, the subspaces compared it as a weight matrix. Every tensor of the pair is changed; the
    subspaces list every 2-D weight but the norms and A_log."""
    from subnetviz.analysis.subspaces import analyze_subspaces
    from tests.ckpt_fixtures import changed_jamba_pair

    base, ft = changed_jamba_pair(tmp_path, **TEXT)
    sd = load_file(ft / "model.safetensors")
    assert sd["model.layers.0.mamba.A_log"].dim() == 2
    names = set(analyze_subspaces(str(base), [str(ft)], device="cpu").to_frame()["name"])
    expected = {
        k
        for k, v in sd.items()
        if v.dim() == 2 and not k.endswith(("norm.weight", "layernorm.weight")) and not k.endswith(".A_log")
    }
    assert {n.rsplit("[", 1)[0] for n in names} == expected
    assert not any(n.endswith(".A_log") for n in names)


# --- training a vision-language model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mistral3_run(tmp_path_factory):
    from tests.training_fixtures import write_addition_data

    root = tmp_path_factory.mktemp("mistral3-train")
    return _mistral3(root / "base"), write_addition_data(root / "data")


def _text(name: str) -> bool:
    return name.startswith("language_model.") or ".language_model." in name or name.startswith("lm_head.")


def test_sft_of_a_mistral3_trains_its_text_parameters(mistral3_run, tmp_path):
    """TRL, given a Mistral-3's path, loaded it with its image processor and ended in an ImportError traceback
    (torchvision). The trainer now holds the model Behaviour runs, with the base's tokenizer: 2 steps change text
    parameters only (the vision tower and projector are never reached by a text prompt)."""
    from subnetviz.training.config import TrainConfig
    from subnetviz.training.trainers import build_trainer

    base, data = mistral3_run
    cfg = TrainConfig(
        "sft", str(base), str(data["sft"]), str(tmp_path / "out"), steps=2, learning_rate=1e-2, batch_size=8
    )
    trainer = build_trainer(cfg, tmp_path / "scratch", [])
    assert isinstance(trainer.model, T.Mistral3ForConditionalGeneration)
    assert isinstance(trainer.processing_class, T.PreTrainedTokenizerBase)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    after = dict(trainer.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach().cpu())}
    text = {n for n in before if _text(n)}
    assert text and len(text) < len(before)  # (a vision tower and a projector beside the text model)
    assert changed == text


def test_a_mistral3_run_with_weight_decay_is_saved_under_the_base_names_with_the_vision_tower_untouched(
    mistral3_run, tmp_path
):
    """A whole run (weight decay on): the saved model holds the base's tensors under the base's names (transformers
    renamed them once more on save, language_model.model.model.*, and the run's own check refused the pair); no
    vision-tower or projector bit differs from the base (the decay moved them, with no gradient ever reaching them),
    and the text matrices moved."""
    from subnetviz.training.config import TrainConfig
    from subnetviz.training.run import train

    base, data = mistral3_run
    out = str(tmp_path / "out")
    cfg = TrainConfig(
        "sft", str(base), str(data["sft"]), out, steps=2, learning_rate=1e-2, batch_size=8, weight_decay=0.1
    )
    res = train(cfg)
    a, b = load_file(base / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert set(a) == set(b)
    differ = {k for k in a if not torch.equal(a[k].view(torch.int16), b[k].view(torch.int16))}
    assert differ and all(k.startswith("language_model.") for k in differ), sorted(differ)
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in differ
    assert res.steps_done == 2 and res.mask_check["outside_mask_identical"] is True


def test_a_mask_that_does_not_fit_a_mistral3_is_refused_at_submit(mistral3_run, tmp_path):
    """The submit check built the base with AutoModelForCausalLM, which cannot build a Mistral-3, and so left
    every vision-language base's mask to the run; it builds the class the run builds now (on the meta device)."""
    from safetensors import safe_open

    from subnetviz.errors import MaskError
    from subnetviz.training.mask_fit import check_mask_fits

    base, _ = mistral3_run
    with safe_open(str(base / "model.safetensors"), framework="pt") as f:
        shapes = {n: tuple(f.get_slice(n).get_shape()) for n in f.keys()}
    q = next(n for n in shapes if n.endswith("layers.0.self_attn.q_proj.weight") and "language_model" in n)
    check_mask_fits(str(base), _mask_file(tmp_path, "fits", {q: torch.ones(shapes[q], dtype=torch.bool)}))
    wrong = (shapes[q][0] + 1, shapes[q][1])
    with pytest.raises(MaskError, match=r"q_proj\.weight"):
        check_mask_fits(str(base), _mask_file(tmp_path, "wrong", {q: torch.ones(wrong, dtype=torch.bool)}))
