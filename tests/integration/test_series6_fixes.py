"""Series review, sixth pass: a checkpoint caught mid-save.

1. save_pretrained writes the shards first and the index last: a run's ``checkpoint-3/`` still being saved holds
   ``model-00001-of-00002.safetensors`` and no index. It was read as the whole model (11 tensors of 21), and the
   series, over the tensors every checkpoint holds, dropped the other 10 from every step, unsaid. Such a folder is
   now refused in one line naming the missing shard, as a shard index naming a missing shard is. Complete shards
   without an index, a single file, an adapter and differently named files are read as before.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from subnetviz.analysis.series import checkpoint_series
from subnetviz.checkpoints import open_checkpoint
from subnetviz.checkpoints.sources import _folder_files
from subnetviz.errors import CheckpointError

NAMES = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(4)]


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((4, 4)).astype(np.float32) for n in NAMES}


def _save(folder: Path, files: dict[str, list[str]], seed: int = 0) -> Path:
    """``folder`` holding each file of ``files`` with its tensors of :func:`_tensors` (the same for every seed but
    the last one's entries, which differ with ``seed``)."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = _tensors(0)
    sd[NAMES[-1]] = _tensors(seed)[NAMES[-1]]
    for name, keys in files.items():
        save_file({k: sd[k] for k in keys}, str(folder / name))
    return folder


def _shards(total: int, present: list[int]) -> dict[str, list[str]]:
    """save_pretrained's shard names, ``total`` of them, the tensors dealt over them, those numbered ``present``."""
    parts = np.array_split(np.arange(len(NAMES)), total)
    return {
        f"model-{i:05d}-of-{total:05d}.safetensors": [NAMES[j] for j in parts[i - 1]]
        for i in range(1, total + 1)
        if i in present
    }


def test_a_checkpoint_caught_mid_save_is_refused_naming_the_missing_shard(tmp_path):
    ck = _save(tmp_path / "run" / "checkpoint-3", _shards(2, [1]))
    (ck / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(str(ck))
    msg = str(err.value)
    assert "\n" not in msg
    assert "model-00002-of-00002.safetensors" in msg and "model-00001" not in msg
    assert "no index" in msg and "a save still in progress or an incomplete copy" in msg


def test_every_missing_shard_is_named_and_a_long_list_counted(tmp_path):
    ck = _save(tmp_path / "three", _shards(3, [2]))
    with pytest.raises(CheckpointError, match=r"model-00001-of-00003\.safetensors, model-00003-of-00003\.safetensors"):
        _folder_files(ck)
    # a name claiming 10^9 shards: counted, not listed (nor looped over) whole
    _save(tmp_path / "many", {"model-0000000002-of-1000000000.safetensors": NAMES})
    with pytest.raises(CheckpointError, match=r"model-0000000001-of-1000000000\.safetensors, .* and 999999994 more"):
        _folder_files(tmp_path / "many")


def test_the_series_refuses_the_partial_checkpoint_instead_of_shrinking_every_step(tmp_path):
    base = _save(tmp_path / "base", {"model.safetensors": NAMES}, seed=0)
    cks = [_save(tmp_path / "run" / f"checkpoint-{s}", {"model.safetensors": NAMES}, seed=s) for s in (1, 2)]
    partial = _save(tmp_path / "run" / "checkpoint-3", _shards(2, [1]), seed=3)
    whole = checkpoint_series([str(base), *map(str, cks)], [0, 1, 2])
    assert whole.numel == 4 * 16
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        checkpoint_series([str(base), *map(str, cks), str(partial)], [0, 1, 2, 3])


def test_whole_checkpoints_without_an_index_and_other_files_are_read_as_before(tmp_path):
    # every shard present, no index (an index deleted, a copy without it): all of them
    whole = _save(tmp_path / "whole", _shards(2, [1, 2]))
    assert [f.name for f in _folder_files(whole)] == list(_shards(2, [1, 2]))
    ck = open_checkpoint(str(whole))
    try:
        assert sorted(ck.names) == sorted(NAMES)
    finally:
        ck.close()
    # a single file; files named otherwise (a number in the name but not save_pretrained's pattern); an adapter
    single = _save(tmp_path / "single", {"model.safetensors": NAMES})
    assert [f.name for f in _folder_files(single)] == ["model.safetensors"]
    other = _save(tmp_path / "other", {"part-1-of-2.safetensors": NAMES[:2], "weights-00001.safetensors": NAMES[2:]})
    assert len(_folder_files(other)) == 2
    adapter = _save(tmp_path / "adapter", {"adapter_model.safetensors": NAMES})
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    assert [f.name for f in _folder_files(adapter)] == ["adapter_model.safetensors"]
    # an index present: its own refusal, unchanged (the index's words, not the folder's)
    indexed = _save(tmp_path / "indexed", _shards(2, [1]))
    (indexed / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {n: f for f, keys in _shards(2, [1, 2]).items() for n in keys}})
    )
    with pytest.raises(CheckpointError, match="shard\\(s\\) listed but missing: model-00002-of-00002.safetensors"):
        _folder_files(indexed)
