"""An update mask names its finetune by where it was read, and the Training page's note matches it by that path.

A mask recorded its finetune by label only: a user's own finetune in a folder called ``sft`` was taken for the
demo zoo's ``sft`` member, and the page quoted that zoo run's hyperparameters. The paths here are planted by the
test (tmp folders), not taken from the code."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from subnetviz.training.mask_origin import identify, source_path
from tests.models import make_tiny_llama


def _finetune(base: Path, dst: Path) -> Path:
    """A copy of ``base`` with one entry of every 2-D tensor moved (bit flip of the lowest mantissa bit)."""
    dst.mkdir(parents=True)
    for f in base.iterdir():
        if f.suffix != ".safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
    sd = load_file(str(base / "model.safetensors"))
    for t in sd.values():
        if t.dim() == 2 and t.is_floating_point():
            bits = t.view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t.view(torch.int32)
            bits.view(-1)[0] ^= 1
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_an_update_mask_records_where_its_models_were_read_and_by_which_code(tmp_path, monkeypatch):
    from subnetviz.analysis.updates import analyze_updates, write_analysis

    torch.set_num_threads(1)
    base = make_tiny_llama(tmp_path / "mine" / "base")
    _finetune(base, tmp_path / "mine" / "sft")
    monkeypatch.chdir(tmp_path / "mine")  # relative specs, as a user types them: recorded absolute
    out = write_analysis(analyze_updates("base", ["sft"]), tmp_path / "an")
    with safe_open(str(out / "masks" / "sft.safetensors"), framework="np") as f:
        meta = json.loads(f.metadata()["subnetviz"])
    assert meta["model"] == "sft"
    assert meta["model_path"] == str(tmp_path / "mine" / "sft")
    assert meta["base_path"] == str(tmp_path / "mine" / "base")
    assert "git_revision" in meta and meta["subnetviz_version"]
    assert source_path(meta) == str(tmp_path / "mine" / "sft")


def test_a_mask_is_matched_to_a_zoo_member_or_run_by_path_never_by_label(tmp_path):
    zoo, runs = tmp_path / "zoo", tmp_path / "runs"
    (zoo / "sft").mkdir(parents=True)
    (runs / "r1" / "outputs" / "model").mkdir(parents=True)
    (runs / "r2" / "outputs").mkdir(parents=True)
    os.symlink(zoo / "sft", runs / "r2" / "outputs" / "model")  # the demo registers a member's run as a link
    members = {"sft": SimpleNamespace(id="sft", path=zoo / "sft")}
    mine = tmp_path / "mine" / "sft"
    # the user's own folder called sft is not the zoo's sft
    assert identify({"method": "update mask", "model": "sft", "model_path": str(mine)}, members, runs) is None
    # a label alone (masks written before paths were recorded, other tools' files) names no run
    assert identify({"method": "update mask", "model": "sft"}, members, runs) is None
    # the zoo's member, also through a run's link to it, and the demo's own mask (finetuned_path)
    assert identify({"model": "x", "model_path": str(zoo / "sft")}, members, runs) == "sft"
    assert identify({"model": "x", "model_path": str(runs / "r2" / "outputs" / "model")}, members, runs) == "sft"
    assert identify({"finetuned": "grpo", "finetuned_path": str(zoo / "sft")}, members, runs) == "sft"
    # a run's model, and only the model folder of a run
    assert identify({"model": "run r1", "model_path": str(runs / "r1" / "outputs" / "model")}, members, runs) == (
        "run r1"
    )
    assert identify({"model": "x", "model_path": str(runs / "r1" / "outputs")}, members, runs) is None
    # a hub id with its commit is no member nor run; a random control names no source
    assert identify({"model": "sft", "model_path": "acme/sft@" + "a" * 40}, members, runs) is None
    rnd = {"method": "random (same per-tensor density)", "model": "sft", "model_path": str(zoo / "sft")}
    assert identify(rnd, members, runs) is None


def test_a_mask_of_a_copied_or_moved_home_is_matched_at_the_same_place_in_this_home(tmp_path):
    """The zoo's mask records /old/home/zoo/grpo-s0: in a copied or moved home nothing is there, and the page's
    warning that the mask comes from a run with other hyperparameters went silent. Where nothing is at the
    recorded path, the member or run at the same place here is taken; where something is, the path alone decides."""
    zoo, runs, old = tmp_path / "new" / "zoo", tmp_path / "new" / "runs", tmp_path / "old"
    (zoo / "grpo-s0").mkdir(parents=True)
    (runs / "r1" / "outputs" / "model").mkdir(parents=True)
    members = {"grpo-s0": SimpleNamespace(id="grpo-s0", path=zoo / "grpo-s0")}
    zoo_mask = {"finetuned": "grpo-s0", "finetuned_path": str(old / "zoo" / "grpo-s0")}
    assert identify(zoo_mask, members, runs) == "grpo-s0"
    run_mask = {"model": "run r1", "model_path": str(old / "runs" / "r1" / "outputs" / "model")}
    assert identify(run_mask, members, runs) == "run r1"
    gone = {"model": "run r9", "model_path": str(old / "runs" / "r9" / "outputs" / "model")}  # no such run here
    assert identify(gone, members, runs) is None
    elsewhere = {"finetuned": "grpo-s0", "finetuned_path": str(old / "mine" / "grpo-s0")}  # another folder's name
    assert identify(elsewhere, members, runs) is None
    (old / "zoo" / "grpo-s0").mkdir(parents=True)  # the old home still there: its folder is not this one's member
    assert identify(zoo_mask, members, runs) is None
