"""Review follow-ups of the Workspace and the shared sidebar (third pass), below the pages.

Proves: a checkpoint named as its folder and as that folder's ``model.safetensors`` (or its shard index, or a link)
is one checkpoint to the sidebar, compared once with the repeat named, while a copy of it elsewhere and an adapter
folder's own model file stay checkpoints of their own (it was compared twice, as ``ftA`` and ``ftA-2``); an adapter
saved in bf16 or fp16 lists its file's stored dtype under the name the model rows use (``bfloat16``; it read ``bf16``
and ``f32``); a link's ``device=cuda`` is kept as an option on a server without CUDA, and the analyses run on the CPU
with a line saying so.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from subnetviz import uilogic
from subnetviz.checkpoints.adapters import adapter_info
from subnetviz.checkpoints.sources import weights_identity
from tests.models import make_llama


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A single-file Llama ``ftA``, a sharded one ``sh`` (with its index), a byte copy of ``ftA`` in another folder,
    a link to ``ftA``, and a folder holding a full model beside a LoRA adapter (its weights and config)."""
    root = tmp_path_factory.mktemp("workspace3")
    make_llama(root / "base", seed=0)
    make_llama(root / "ftA", seed=1)
    make_llama(root / "sh", seed=2, sharded=True)
    shutil.copytree(root / "ftA", root / "copy" / "ftA")
    (root / "linkA").symlink_to(root / "ftA", target_is_directory=True)
    both = shutil.copytree(root / "ftA", root / "both")
    _adapter(both, torch.float32)
    return root


def _adapter(folder, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A rank-2 LoRA on layer 0's q_proj of the tiny Llama (hidden 16), saved in ``dtype``; its tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {f"{prefix}.lora_A.weight": torch.randn(2, 16), f"{prefix}.lora_B.weight": torch.randn(16, 2)}
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "fan_in_fan_out": False}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return tensors


@pytest.fixture
def roots(folders, monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(folders))
    return folders


def test_a_folder_its_weights_file_its_index_and_a_link_read_the_same_weights(roots):
    root = roots
    one = {weights_identity(root / "ftA"), weights_identity(root / "ftA" / "model.safetensors")}
    one.add(weights_identity(root / "linkA"))
    one.add(weights_identity(f"{root}/ftA/"))
    assert len(one) == 1
    assert weights_identity(root / "sh") == weights_identity(root / "sh" / "model.safetensors.index.json")
    shard = sorted((root / "sh").glob("model-*.safetensors"))[0]
    assert weights_identity(shard) != weights_identity(root / "sh")  # one shard is not the whole model
    assert weights_identity(root / "copy" / "ftA") != weights_identity(root / "ftA")  # the same bytes elsewhere
    # beside a base the folder is its adapter merged; its model.safetensors is the model saved there
    assert weights_identity(root / "both") != weights_identity(root / "both" / "model.safetensors")


def test_the_sidebar_compares_a_checkpoint_named_twice_once_and_says_so(roots):
    root = roots
    given = [
        str(root / "ftA"),
        str(root / "ftA" / "model.safetensors"),
        str(root / "sh" / "model.safetensors.index.json"),
        str(root / "sh"),
        str(root / "copy" / "ftA"),
        str(root / "base" / "model.safetensors"),
    ]
    chosen = uilogic.sidebar_choice(str(root / "base"), given, [], "stored", "cpu", {}, {}, None)
    assert chosen.refused is None
    assert chosen.workspace.finetuned == (
        ("ftA", given[0]),
        ("sh", given[2]),  # the first of the two names is kept
        ("ftA-2", given[4]),  # a copy elsewhere is another checkpoint (its own file identities)
    )
    where = f"{root.name}/"  # (paths are shown from their root)
    assert [(name.split(where)[-1], what) for name, what in chosen.repeated] == [
        ("ftA/model.safetensors", "the same checkpoint as ftA"),
        ("sh", "the same checkpoint as sh"),
        ("base/model.safetensors", "the base"),
    ]
    line = uilogic.repeated_line(chosen.repeated)
    assert line.startswith("Not compared again, named already: ") and "ftA/model.safetensors (the same" in line


def test_the_cap_counts_a_folder_and_its_file_once(roots):
    """33 entries, of which one is ftA's file after ftA's folder, are 32 checkpoints: all under the cap."""
    root = roots
    links = []
    for i in range(31):  # 31 more distinct checkpoints (folders of their own, each a copy of sh's files)
        folder = root / "many" / f"m{i:02d}"
        if not folder.exists():
            shutil.copytree(root / "sh", folder)
        links.append(str(folder))
    given = [str(root / "ftA"), str(root / "ftA" / "model.safetensors"), *links]
    chosen = uilogic.sidebar_choice(str(root / "base"), given, [], "stored", "cpu", {}, {}, None)
    assert chosen.refused is None and len(chosen.workspace.finetuned) == 32


@pytest.mark.parametrize(
    ("dtype", "name"), [(torch.bfloat16, "bfloat16"), (torch.float16, "float16"), (torch.float32, "float32")]
)
def test_an_adapters_row_names_its_files_stored_dtype_as_model_rows_do(tmp_path, dtype, name):
    tensors = _adapter(tmp_path / "lora", dtype)
    info = adapter_info(tmp_path / "lora")
    assert info["dtypes"] == {name: sum(t.numel() for t in tensors.values())}  # 2·16 + 16·2 = 64 entries


def test_an_adapter_of_two_dtypes_lists_both(tmp_path):
    tensors = _adapter(tmp_path / "lora", torch.float32)
    mixed = {k: v.to(torch.bfloat16) if "lora_B" in k else v for k, v in tensors.items()}
    save_file(mixed, str(tmp_path / "lora" / "adapter_model.safetensors"))
    assert adapter_info(tmp_path / "lora")["dtypes"] == {"float32": 32, "bfloat16": 32}


def test_a_links_cuda_is_kept_and_the_cpu_used_where_there_is_none():
    assert uilogic.device_options("cuda", cuda=False) == ["auto", "cpu", "cuda"]  # (it was dropped: 'auto')
    assert uilogic.device_options(None, cuda=False) == ["auto", "cpu"]  # not offered unasked
    assert uilogic.device_options(None, cuda=True) == ["auto", "cpu", "cuda"]
    used, line = uilogic.device_used("cuda", cuda=False)
    assert used == "cpu" and line.startswith("This server has no CUDA device: the analyses run on the CPU")
    assert uilogic.device_used("cuda", cuda=True) == ("cuda", None)
    assert uilogic.device_used("auto", cuda=False) == ("auto", None)


def test_weights_identity_reads_no_tensor(roots, monkeypatch):
    """Only config.json and index files are read: no safetensors file is opened for its data."""
    opened = []
    real_open = open

    def watch(file, *args, **kwargs):
        if str(file).endswith(".safetensors"):
            opened.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", watch)
    weights_identity(roots / "sh")
    weights_identity(roots / "ftA" / "model.safetensors")
    assert opened == []
