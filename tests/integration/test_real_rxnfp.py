"""A second real checkpoint family trained by others: rxnfp's reaction BERTs (IBM RXN, 12 layers,
hidden 256, fp32), shipped inside the ``rxnfp`` wheel pinned in requirements-testdata.txt — the
pretrained masked-LM *and* two finetunes of it, as legacy ``pytorch_model.bin`` state dicts read by
the project's loader (``torch.load(weights_only=True)``). Nothing is downloaded from a hub.

Proves, against independent NumPy counts on the real weights:
- a real finetune made by others (``bert_ft_10k_25s``) against its real pretrained base
  (``bert.``-prefixed, with MLM/NSP heads the finetune lacks and a classifier the base lacks): the
  changed count is the bitwise count over the aligned tensors, per tensor and in total, and the
  tensors on one side only are named in the notes;
- planted changes in a safetensors copy of ``bert_ft`` against the ``.bin`` as released are counted
  exactly, in the right layer × module cells.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
import pytest
import torch

from subnetviz.analysis.updates import analyze_updates
from tests.ckpt_fixtures import write_folder

HEADS_ONLY_IN_BASE = {
    "cls.predictions.bias",
    "cls.predictions.decoder.weight",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.dense.weight",
    "cls.seq_relationship.bias",
    "cls.seq_relationship.weight",
}


def _model(name: str) -> Path:
    folder = Path(str(importlib.resources.files("rxnfp") / "models" / "transformers" / name))
    if not (folder / "pytorch_model.bin").is_file():
        pytest.fail(f"{folder} has no pytorch_model.bin: run scripts/bootstrap.sh (requirements-testdata.txt)")
    return folder


def _load(folder: Path) -> dict[str, torch.Tensor]:
    """The reference reading: a plain tensor state dict, never unpickled freely."""
    return torch.load(str(folder / "pytorch_model.bin"), map_location="cpu", weights_only=True)


def _bits_changed(a: torch.Tensor, b: torch.Tensor) -> int:
    return int(np.count_nonzero(a.numpy().view(np.uint32) != b.numpy().view(np.uint32)))


def test_rxnfp_real_finetune_against_its_pretrained_base():
    base_dir, ft_dir = _model("bert_pretrained"), _model("bert_ft_10k_25s")
    base = {k.removeprefix("bert."): v for k, v in _load(base_dir).items()}
    ft = {k.removeprefix("bert."): v for k, v in _load(ft_dir).items()}
    common = sorted(set(base) & set(ft))
    assert len(common) == 199 and all(base[k].dtype == torch.float32 for k in common)
    per_tensor = {k: _bits_changed(base[k], ft[k]) for k in common}
    expected = sum(per_tensor.values())
    numel = sum(base[k].numel() for k in common)

    rep = analyze_updates(str(base_dir), [str(ft_dir)], labels=["ft10k"]).reports[0]
    assert (rep.changed, rep.numel) == (expected, numel)
    assert 0 < numel - expected < numel  # a real finetune: most entries moved, not all
    t = rep.tensors.set_index("key")  # the aligned key (the base's stored name, less "bert.", is in `name`)
    assert {k: int(t.loc[k, "changed"]) for k in common} == per_tensor
    q = "encoder.layer.4.attention.self.query.weight"
    assert (t.loc[q, "name"], t.loc[q, "layer"], t.loc[q, "module"]) == (f"bert.{q}", 4, "q")
    only_base = next(n for n in rep.notes if "only in" in n and "bert_pretrained" in n)
    assert all(h in only_base for h in HEADS_ONLY_IN_BASE)
    assert any("only in" in n and "classifier.weight" in n for n in rep.notes)


def test_rxnfp_planted_changes_against_the_released_bin(tmp_path):
    base_dir = _model("bert_ft")
    sd = _load(base_dir)
    ft = {k: v.clone() for k, v in sd.items()}
    planted = {  # tensor -> (index, count of entries moved one ULP up)
        "encoder.layer.2.attention.self.query.weight": (np.s_[7, 10:15], 5),
        "encoder.layer.11.intermediate.dense.weight": (np.s_[100:107, 3], 7),
        "embeddings.word_embeddings.weight": (np.s_[42, :3], 3),
        "encoder.layer.0.output.LayerNorm.bias": (np.s_[:2], 2),
    }
    for name, (idx, _) in planted.items():
        ft[name][idx] = torch.nextafter(ft[name][idx], torch.tensor(float("inf")))
    folder = write_folder(tmp_path / "ft", ft, base_dir)
    rep = analyze_updates(str(base_dir), [str(folder)], labels=["ft"]).reports[0]
    expected = {k: _bits_changed(sd[k], ft[k]) for k in sd}
    assert {k: v for k, v in expected.items() if v} == {k: n for k, (_, n) in planted.items()}
    assert rep.changed == 17 and rep.numel == sum(v.numel() for v in sd.values())
    changed = rep.tensors.query("changed > 0").fillna({"layer": -1})
    cells = changed.groupby(["layer", "module"])["changed"].sum().to_dict()
    assert cells == {(2, "q"): 5, (11, "mlp_in"): 7, (0, "mlp_norm"): 2, (-1, "embed"): 3}
