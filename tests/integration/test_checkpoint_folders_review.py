"""Checkpoint folders as trainers leave them, without a transformers weights file (review overlap_series2, defect 4).

The ``*.pt`` fallback took every ``.pt`` file of such a folder as the model's weights: a custom loop's ``model.pt``
beside ``optimizer.pt`` was refused as "optimizer.pt: expected a state dict of tensors", an FSDP checkpoint was
refused as its ``scheduler.pt``, and a DeepSpeed checkpoint or a run folder holding only ``checkpoint-<N>/`` got no
hint. A trainer's own state is now never read as the model, and a folder left without weights names what it holds
and what to give instead. DeepSpeed's ``*_model_states.pt`` is read through its ``"module"`` state dict.

References: planted +1 ULP changes counted by hand; the state dicts written here, compared bitwise.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from subnetviz.analysis.series import checkpoint_series
from subnetviz.checkpoints import open_checkpoint
from subnetviz.checkpoints.sources import checkpoint_files
from subnetviz.errors import CheckpointError

W = "model.layers.0.mlp.up_proj.weight"
E = "model.embed_tokens.weight"
PLANTED = [(0, 1), (2, 5), (7, 15)]  # entries of W moved by one ULP in the finetune


class _Evil:
    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.sentinel}",))


@pytest.fixture
def states(tmp_path):
    """The base's and the finetune's state dicts (float32), the base folder, and a sentinel a pickle would touch."""
    torch.manual_seed(0)
    base = {W: torch.randn(8, 16), E: torch.randn(32, 16)}
    ft = {k: v.clone() for k, v in base.items()}
    for i in PLANTED:
        ft[W].view(torch.int32)[i] += 1
    folder = tmp_path / "base"
    folder.mkdir()
    save_file(base, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return {"base": base, "ft": ft, "folder": folder, "sentinel": tmp_path / "SENTINEL"}


def _trainer_state(folder, sentinel) -> None:
    """What the HF Trainer writes beside a model: a real optimizer and scheduler state, pickled RNG state and
    arguments (malicious here: unpickled, they would touch the sentinel), trainer_state.json."""
    p = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.AdamW([p])
    p.grad = torch.ones(4)
    opt.step()
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    torch.save(torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0).state_dict(), folder / "scheduler.pt")
    for name in ("rng_state.pth", "training_args.bin"):
        (folder / name).write_bytes(pickle.dumps(_Evil(sentinel)))
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 50}))


def _changed(base_folder, ft) -> int:
    return int(checkpoint_series([str(base_folder), str(ft)]).steps["changed_vs_first"].iloc[0])


def test_a_custom_loops_model_pt_beside_the_optimizer_is_the_model(states, tmp_path):
    ck = tmp_path / "step_50"
    ck.mkdir()
    torch.save(states["ft"], ck / "model.pt")
    _trainer_state(ck, states["sentinel"])
    files, _ = checkpoint_files(str(ck))
    assert [f.name for f in files] == ["model.pt"]
    assert _changed(states["folder"], ck) == len(PLANTED)
    with pytest.raises(CheckpointError, match="a trainer's own state \\(optimizer.pt\\), not a model's weights"):
        open_checkpoint(str(ck / "optimizer.pt"))  # given as a file: said what it is, not "a state dict of tensors"
    assert not states["sentinel"].exists()


@pytest.mark.parametrize(
    ("layout", "said"),
    [
        (
            "state_only",
            "it holds a trainer's state only (optimizer.pt, rng_state.pth, scheduler.pt, training_args.bin)",
        ),
        ("fsdp", "it holds FSDP sharded state (pytorch_model_fsdp_0/): consolidate it into one file (accelerate "),
        (
            "deepspeed",
            "it holds DeepSpeed ZeRO state (global_step50/): write the weights with DeepSpeed's zero_to_fp32",
        ),
        ("run", "it holds 2 training checkpoint folder(s) (checkpoint-50 … checkpoint-100): give one of them, e.g. "),
    ],
)
def test_a_folder_without_weights_names_what_it_holds(states, tmp_path, layout, said):
    ck = tmp_path / layout / "checkpoint-50"
    ck.mkdir(parents=True)
    (ck / "config.json").write_text(json.dumps({"model_type": "llama"}))
    _trainer_state(ck, states["sentinel"])
    given = ck
    if layout == "fsdp":  # SHARDED_STATE_DICT: the weights in distcp shards, the optimizer's beside them
        (ck / "pytorch_model_fsdp_0").mkdir()
        (ck / "pytorch_model_fsdp_0" / "__0_0.distcp").write_bytes(b"\0" * 64)
        (ck / "optimizer_0").mkdir()
        (ck / "optimizer.pt").unlink()
    elif layout == "deepspeed":
        (ck / "global_step50").mkdir()
        (ck / "zero_to_fp32.py").write_text("# DeepSpeed's script\n")
        (ck / "latest").write_text("global_step50")
        (ck / "optimizer.pt").unlink()
        (ck / "scheduler.pt").unlink()
    elif layout == "run":  # a crashed run's output_dir: its checkpoints, no final model
        given = tmp_path / layout
        (given / "checkpoint-100").mkdir()
        for step in (50, 100):
            save_file(states["ft"], str(given / f"checkpoint-{step}" / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(str(given))
    msg = str(err.value)
    assert msg.startswith(f"{given}: no weights found") and said in msg and "\n" not in msg, msg
    assert "expected a state dict of tensors" not in msg
    if layout == "run":  # the last checkpoint by step, not by name (checkpoint-50 sorts after checkpoint-100)
        assert f"e.g. {given / 'checkpoint-100'}," in msg
    assert not states["sentinel"].exists()


def _deepspeed_tag(folder, module, sentinel) -> None:
    """A DeepSpeed ``global_step<N>/`` folder: the model's states under "module", the optimizer's partition."""
    folder.mkdir(parents=True)
    shapes = [{k: v.shape for k, v in module.items()}]
    torch.save(
        {"module": module, "buffer_names": [], "ds_version": "0.16.0", "param_shapes": shapes},
        folder / "mp_rank_00_model_states.pt",
    )
    torch.save(
        {"optimizer_state_dict": {"zero_stage": 2}, "ds_version": "0.16.0"},
        folder / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
    )
    (folder.parent / "rng_state.pth").write_bytes(pickle.dumps(_Evil(sentinel)))


def test_deepspeeds_model_states_are_read_through_their_module(states, tmp_path):
    tag = tmp_path / "checkpoint-50" / "global_step50"
    _deepspeed_tag(tag, states["ft"], states["sentinel"])
    files, _ = checkpoint_files(str(tag))
    assert [f.name for f in files] == ["mp_rank_00_model_states.pt"]
    ck = open_checkpoint(str(tag))
    try:
        assert sorted(ck.names) == sorted(states["ft"])
        assert all(torch.equal(ck.get(n).view(torch.int32), states["ft"][n].view(torch.int32)) for n in ck.names)
    finally:
        ck.close()
    assert _changed(states["folder"], tag) == len(PLANTED)
    assert not states["sentinel"].exists()


def test_zero3_placeholders_are_refused_with_the_command(states, tmp_path):
    """Under ZeRO-3 "module" holds empty placeholders (the weights are partitioned in the optimizer's files)."""
    tag = tmp_path / "checkpoint-50" / "global_step50"
    _deepspeed_tag(tag, {k: torch.empty(0) for k in states["ft"]}, states["sentinel"])
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(str(tag))
    msg = str(err.value)
    assert "DeepSpeed ZeRO-3 state" in msg and "python zero_to_fp32.py ." in msg and "\n" not in msg, msg
