"""A PEFT adapter's weights saved under another name than ``adapter_model.*`` (``my-lora.safetensors``), alone or
in a folder without ``adapter_config.json``: compared with a base, one line saying it holds LoRA factors and how an
adapter is given (it said "no tensor names in common", which sent its sender comparing names). Built with PEFT."""

from __future__ import annotations

import shutil

import pytest

from subnetviz.analysis.updates import analyze_updates
from subnetviz.checkpoints import open_checkpoint
from subnetviz.errors import AlignmentError
from tests.integration.test_adapters7_fixes import _base, _without_config


def test_lora_factors_under_another_name_are_said_as_such(tmp_path, capsys):
    from subnetviz.__main__ import main

    base, _ = _base(tmp_path, "llama")
    folder = _without_config(tmp_path, base)
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(folder / "adapter_model.safetensors", renamed / "my-lora.safetensors")
    for spec in (renamed, renamed / "my-lora.safetensors"):
        with pytest.raises(AlignmentError) as err:
            analyze_updates(open_checkpoint(base), [open_checkpoint(str(spec))], labels=["lora"])
        msg = str(err.value)
        assert msg.startswith(f"{spec} holds a PEFT adapter's LoRA factors (e.g. 'base_model.model."), msg
        assert ".lora_A.weight'" in msg and "adapter_config.json" in msg and "\n" not in msg, msg
        assert "no tensor names in common" not in msg
    assert main(["analyze", str(base), str(renamed), "--out", str(tmp_path / "o"), "--no-spectra", "--no-cache"]) == 2
    assert "holds a PEFT adapter's LoRA factors" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_model_without_lora_names_still_says_no_names_in_common(tmp_path):
    import torch
    from safetensors.torch import save_file

    base, _ = _base(tmp_path, "llama")
    other = tmp_path / "other.safetensors"
    save_file({"encoder.lora_Ax.weight": torch.zeros(2, 2)}, str(other))  # (lora_A only as a whole name part)
    with pytest.raises(AlignmentError, match="no tensor names in common"):
        analyze_updates(open_checkpoint(base), [open_checkpoint(str(other))], labels=["x"])
