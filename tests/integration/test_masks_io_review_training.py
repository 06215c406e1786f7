"""Masks moved between tools, on a real GPT-NeoX (Pythia's family): its checkpoint stores the head as
``embed_out.weight``, and transformers 5 loads it into the parameter ``lm_head.weight``.

An update mask names tensors as the checkpoint stores them. Training the base inside that mask must fit the model
(the head's mask goes to ``lm_head.weight``), leave every entry outside the mask bit-identical, and the check must
say so: every count here is made from the saved safetensors files with our own bitwise comparison.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from subnetviz.masks import MaskSet, save_mask_set
from subnetviz.training.masking import (
    check_outside_mask,
    check_state_outside_mask,
    load_training_mask,
    tied_heads,
)
from tests.models import char_tokenizer, make_neox

HEAD = "embed_out.weight"
QKV = "gpt_neox.layers.0.attention.query_key_value.weight"


def _stored(folder: Path) -> dict[str, torch.Tensor]:
    """The stored tensors' bits (int16 view of bf16): compared as integers, independent of any float rule."""
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k).view(torch.int16) for k in f.keys()}


def _count(base: Path, trained: Path, masks: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """Stored name -> (changed inside, changed outside) ``masks`` (keyed by stored names; unlisted = outside)."""
    a, b = _stored(base), _stored(trained)
    assert set(a) == set(b)
    out = {}
    for k in a:
        d = a[k] != b[k]
        m = masks.get(k, torch.zeros(d.shape, dtype=torch.bool))
        out[k] = (int((d & m).sum()), int((d & ~m).sum()))
    return out


@pytest.fixture(scope="module")
def neox(tmp_path_factory):
    """A tiny GPT-NeoX base (with a tokenizer) and an update mask keyed by its stored names: random entries of
    the head and of layer 0's fused QKV, nothing else (every other tensor frozen)."""
    root = tmp_path_factory.mktemp("neox")
    base = make_neox(root / "base")
    char_tokenizer().save_pretrained(base)
    stored = load_file(str(base / "model.safetensors"))
    assert HEAD in stored and "lm_head.weight" not in stored  # the layout this test is about
    gen = torch.Generator().manual_seed(3)
    masks = {k: torch.rand(stored[k].shape, generator=gen) < 0.3 for k in (HEAD, QKV)}
    path = save_mask_set(root / "update.safetensors", MaskSet(masks, {"method": "update mask"}))
    return {"root": root, "base": base, "masks": masks, "mask_file": Path(path), "stored": stored}


def _shapes_and_tied(base: Path):
    """The parameters' names and shapes and the stored names they load from, as a run reads them (meta model)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(base)))
    return {n: tuple(p.shape) for n, p in model.named_parameters()}, tied_heads(model)


def test_a_neox_update_mask_is_read_onto_the_head_parameter(neox):
    shapes, tied = _shapes_and_tied(neox["base"])
    assert "lm_head.weight" in shapes and HEAD not in shapes
    full, _ = load_training_mask(str(neox["mask_file"]), shapes, tied=tied)
    assert torch.equal(full["lm_head.weight"], neox["masks"][HEAD])
    assert torch.equal(full[QKV], neox["masks"][QKV])
    assert sum(int(m.sum()) for m in full.values()) == sum(int(m.sum()) for m in neox["masks"].values())
    # its random control: the same per-tensor counts, on the same parameters
    rnd, _ = load_training_mask(f"random:{neox['mask_file']}", shapes, tied=tied, seed=5)
    assert int(rnd["lm_head.weight"].sum()) == int(neox["masks"][HEAD].sum())
    assert int(rnd[QKV].sum()) == int(neox["masks"][QKV].sum())


def test_a_neox_random_control_is_saved_under_the_stored_names(neox):
    """The mask set a random control saves names the head as the checkpoint stores it (``embed_out.weight``), as
    the real mask's does: under the model's ``lm_head.weight`` it named no tensor of the saved model."""
    shapes, tied = _shapes_and_tied(neox["base"])
    full, used = load_training_mask(f"random:{neox['mask_file']}", shapes, tied=tied, seed=5)
    assert set(used.masks) == {HEAD, QKV}
    assert torch.equal(used.masks[HEAD], full["lm_head.weight"]) and torch.equal(used.masks[QKV], full[QKV])
    assert int(used.masks[HEAD].sum()) == int(neox["masks"][HEAD].sum())
    assert not torch.equal(used.masks[HEAD], neox["masks"][HEAD])  # drawn, not the file's
    _, real = load_training_mask(str(neox["mask_file"]), shapes, tied=tied)
    assert set(real.masks) == set(used.masks)


def _plant(src: Path, dst: Path, flips: dict[str, list[int]]) -> Path:
    """A copy of ``src`` with the lowest mantissa bit flipped at the given flat indices of each stored tensor."""
    shutil.copytree(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    for k, idx in flips.items():
        bits = sd[k].clone().view(torch.int16).reshape(-1)
        bits[idx] ^= 1
        sd[k] = bits.reshape(sd[k].shape).view(torch.bfloat16)
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_the_checks_find_the_head_inside_its_mask_and_a_planted_change_outside(neox, tmp_path):
    # keyed by the model's parameters, as a run's masks are (the head as lm_head.weight); unlisted = outside
    full = {"lm_head.weight": neox["masks"][HEAD], QKV: neox["masks"][QKV]}
    head = neox["masks"][HEAD].reshape(-1)
    inside, outside = torch.nonzero(head).reshape(-1), torch.nonzero(~head).reshape(-1)
    # three entries of the head inside its mask, and then one outside it
    ok = _plant(neox["base"], tmp_path / "ok", {HEAD: inside[:3].tolist()})
    check = check_outside_mask(neox["base"], ok, full)
    n_tensors = len(neox["stored"])
    assert (check.changed_inside, check.changed_outside, check.tensors_compared) == (3, 0, n_tensors)
    assert check.outside_mask_identical
    bad = _plant(neox["base"], tmp_path / "bad", {HEAD: [*inside[:3].tolist(), int(outside[0])]})
    check = check_outside_mask(neox["base"], bad, full)
    assert (check.changed_inside, check.changed_outside) == (3, 1)
    assert not check.outside_mask_identical
    # the gathered state dict names the head as the model does: compared (not skipped) under its mask
    state = {
        ("lm_head.weight" if k == HEAD else k): v.float() for k, v in load_file(str(bad / "model.safetensors")).items()
    }
    check = check_state_outside_mask(neox["base"], state, full)
    assert (check.changed_inside, check.changed_outside, check.tensors_compared) == (3, 1, n_tensors)
    assert not check.outside_mask_identical


@pytest.mark.slow
def test_a_neox_trains_inside_its_update_mask_and_nothing_outside_moves(neox, tmp_path):
    from subnetviz.training.config import TrainConfig
    from subnetviz.training.run import SUMMARY_FILE, train
    from tests.training_fixtures import write_addition_data

    data = write_addition_data(tmp_path / "data", n=8)
    out = tmp_path / "out"
    cfg = TrainConfig(
        algorithm="sft",
        base=str(neox["base"]),
        data=str(data["sft"]),
        output_dir=str(out),
        mask=str(neox["mask_file"]),
        steps=3,
        learning_rate=1e-2,
        batch_size=8,
        bf16=False,
        seed=0,
    )
    train(cfg)  # before the fix: MaskError 'embed_out.weight' is not a parameter of the model
    counts = _count(neox["base"], out, neox["masks"])
    assert sum(o for _, o in counts.values()) == 0, {k: c for k, c in counts.items() if c[1]}
    assert counts[HEAD][0] > 0 and counts[QKV][0] > 0  # the head and the QKV were trained, inside the mask
    changed_inside = sum(i for i, _ in counts.values())
    summary = json.loads((out / SUMMARY_FILE).read_text())
    n_tensors = len(neox["stored"])
    assert summary["mask_check"]["changed_inside"] == changed_inside
    assert summary["mask_check"]["changed_outside"] == 0
    assert summary["mask_check"]["numel_inside"] == sum(int(m.sum()) for m in neox["masks"].values())
    assert summary["mask_check"]["tensors_compared"] == n_tensors
    assert summary["gathered_check"]["tensors_compared"] == n_tensors  # the head too (27 of 28 before)
    assert summary["gathered_check"]["changed_outside"] == 0
    assert summary["gathered_check"]["outside_mask_identical"] and summary["mask_check"]["outside_mask_identical"]


@pytest.mark.slow
def test_the_upload_and_train_only_widgets_state_the_convention(app_env):
    from tests.app_fixtures import open_page

    convention = "1/True = the entry is in the subnetwork (trained; kept); a tensor the file does not list is frozen"
    at = open_page("workspace")
    assert not at.exception
    uploader = at.get("file_uploader")
    assert uploader and convention in uploader[0].proto.help
    at = open_page("training", tr_view="Launch")
    assert not at.exception
    assert convention in at.selectbox(key="tr_mask").help


def test_a_run_inside_a_mask_dense_in_most_tensors_says_it_may_be_inverted(tmp_path, capsys):
    """The note that a mask denser than 50 % in most tensors may be written the other way round (1 = frozen) was
    given on the page's submit only: a run from the CLI or a config said nothing. It is in the run's log now (on
    stderr without a job), and a mask that is sparse in most tensors gets none."""
    from subnetviz.training.config import TrainConfig
    from subnetviz.training.run import train
    from tests.models import make_tiny_llama
    from tests.training_fixtures import write_addition_data

    torch.set_num_threads(1)
    base = make_tiny_llama(tmp_path / "base")
    data = write_addition_data(tmp_path / "data", n=8)
    with safe_open(str(base / "model.safetensors"), framework="pt") as f:
        shapes = {n: f.get_slice(n).get_shape() for n in f.keys()}
    names = sorted(shapes)
    dense = {n: torch.ones(shapes[n], dtype=torch.bool) for n in names}  # every tensor 100 % ones
    sparse = {n: torch.zeros(shapes[n], dtype=torch.bool) for n in names}
    for m in sparse.values():
        m.view(-1)[0] = True
    for label, masks, said in (("dense", dense, True), ("sparse", sparse, False)):
        mask = save_mask_set(tmp_path / f"{label}.safetensors", MaskSet(masks, {"method": "test"}))
        cfg = TrainConfig(
            algorithm="sft", base=str(base), data=str(data["sft"]), output_dir=str(tmp_path / f"out-{label}"),
            mask=str(mask), steps=1, learning_rate=1e-3, batch_size=8, bf16=False, seed=0,
        )  # fmt: skip
        capsys.readouterr()
        train(cfg)
        err = capsys.readouterr().err
        assert ("This mask is denser than 50 % in" in err) is said, err[-2000:]
        if said:
            assert f"in {len(names)} of its {len(names)} tensors: is 1 = frozen in it?" in err
