"""Masked training, fourth review: the mask a run saves is the mask it enforced.

A tied base stores no ``lm_head.weight``; an update mask of it against a finetune that untied its head lists the
head apart. The run trains the embedding inside embedding ∪ head (``fold_tied_heads``), so the saved
``subnetwork_mask.safetensors`` must hold that union under the embedding's name: read as written, with no
subnetviz code, it must account for every entry the saved model changed. Before the fix the file was saved as given
(the head listed apart) and the saved model changed entries outside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from subnetviz.masks import MaskSet, save_mask_set

EMBED = "model.embed_tokens.weight"
HEAD = "lm_head.weight"


def _stored(folder: Path) -> dict[str, torch.Tensor]:
    """The stored tensors' bits (int16 view of bf16), compared as integers."""
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k).view(torch.int16) for k in f.keys()}


def _read_mask(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A saved mask read with safetensors and NumPy only: bit-packed (big-endian) with its ``shape:<name>``
    metadata, or plain; and its ``subnetviz`` provenance."""
    out = {}
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata() or {}
        for k in f.keys():
            t = f.get_tensor(k)
            if f"shape:{k}" in meta:
                shape = tuple(int(s) for s in meta[f"shape:{k}"].split(",") if s)
                t = np.unpackbits(t)[: int(np.prod(shape))].reshape(shape)
            out[k] = torch.from_numpy(t.astype(bool))
    return out, json.loads(meta.get("subnetviz", "{}"))


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """A tiny tied Llama (no stored head) with its tokenizer, SFT data, and a mask with its own head entry drawn
    apart from the embedding's, with a finetune's provenance."""
    from tests.models import char_tokenizer, save_model, tiny_model
    from tests.training_fixtures import write_addition_data

    root = tmp_path_factory.mktemp("tied4")
    tok = char_tokenizer()
    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    model = tiny_model(
        "llama", vocab=len(tok), hidden=32, intermediate=64, layers=2, heads=2, kv_heads=2, tie=True, **ids
    )
    base = save_model(model, root / "base", tokenizer=tok)
    stored = _stored(base)
    assert HEAD not in stored and EMBED in stored  # the layout this test is about
    gen = torch.Generator().manual_seed(1)
    masks = {k: torch.rand(v.shape, generator=gen) < 0.3 for k, v in stored.items()}
    masks[HEAD] = torch.rand(stored[EMBED].shape, generator=gen) < 0.3  # the untied finetune's head changes
    meta = {"method": "update mask", "finetuned": "ft-untied", "finetuned_path": str(root / "ft")}
    path = save_mask_set(root / "headmask.safetensors", MaskSet(masks, meta))
    data = write_addition_data(root / "data", n=8)
    return {"root": root, "base": base, "mask": Path(path), "masks": masks, "data": data}


@pytest.mark.slow
def test_a_tied_runs_saved_mask_is_the_one_it_enforced(tied, tmp_path):
    from subnetviz.training.config import TrainConfig
    from subnetviz.training.mask_origin import mask_source
    from subnetviz.training.run import SUMMARY_FILE, train

    torch.set_num_threads(1)
    out = tmp_path / "out"
    cfg = TrainConfig(
        algorithm="sft", base=str(tied["base"]), data=str(tied["data"]["sft"]), output_dir=str(out),
        mask=str(tied["mask"]), steps=2, learning_rate=1e-2, batch_size=8, weight_decay=0.1, seed=0,
    )  # fmt: skip
    train(cfg)
    saved, meta = _read_mask(out / "subnetwork_mask.safetensors")
    base, trained = _stored(tied["base"]), _stored(out)
    assert set(trained) == set(base)
    inside = outside = 0
    for k in base:  # read literally: a tensor the mask does not list is outside it
        diff = base[k] != trained[k]
        m = saved.get(k, torch.zeros(diff.shape, dtype=torch.bool))
        inside += int((diff & m).sum())
        outside += int((diff & ~m).sum())
    assert outside == 0  # 100s before the fix: the head's entries trained in the embedding, outside its entry
    assert set(saved) == set(base)  # the saved model's names; no head listed apart
    assert torch.equal(saved[EMBED], tied["masks"][EMBED] | tied["masks"][HEAD])
    check = json.loads((out / SUMMARY_FILE).read_text())["mask_check"]
    assert (check["changed_inside"], check["changed_outside"]) == (inside, 0) and inside > 0
    count, numel = sum(int(m.sum()) for m in saved.values()), sum(m.numel() for m in saved.values())
    assert (count, numel) == (check["numel_inside"], check["numel_inside"] + check["numel_outside"])
    # the provenance is the file's, its counts the saved mask's (not the file's, head included)
    assert meta["density"] == pytest.approx(check["numel_inside"] / numel, abs=1e-12)
    assert (meta["count"], meta["numel"]) == (count, numel)
    assert mask_source(meta) == "ft-untied" and meta["finetuned_path"] == str(tied["root"] / "ft")
    assert HEAD in meta["merged_tied_heads"] and EMBED in meta["merged_tied_heads"]


def test_both_arms_save_one_form_and_a_renamed_head_is_kept(tied):
    """The random control saved the merged mask, the real arm the file as given: the same names now. A head that
    the model only renames on load (GPT-NeoX's ``embed_out.weight``, stored as it is) is no tied head: the saved
    mask keeps the file's name, which the saved model stores."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from subnetviz.masks import load_mask_set
    from subnetviz.training.masking import StoredNames, load_training_mask, tied_heads, with_tied_heads_merged

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(tied["base"])))
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    _, real = load_training_mask(str(tied["mask"]), shapes, tied=tied_heads(model))
    _, control = load_training_mask(f"random:{tied['mask']}", shapes, seed=0, tied=tied_heads(model))
    assert set(real.masks) == set(control.masks) == set(shapes) and HEAD not in real.masks
    assert real.count == sum(int(m.sum()) for m in real.masks.values()) < load_mask_set(tied["mask"]).count
    # the control says its embedding was drawn at the merged entry's count, not the file's (training review 5)
    assert control.metadata["merged_tied_heads"] == real.metadata["merged_tied_heads"]
    assert int(control.masks[EMBED].sum()) == int(real.masks[EMBED].sum())

    neox = MaskSet({"embed_out.weight": torch.ones(3, 2, dtype=torch.bool)}, {"method": "update mask"})
    assert with_tied_heads_merged(neox, StoredNames({"embed_out.weight": "lm_head.weight"})) is neox
