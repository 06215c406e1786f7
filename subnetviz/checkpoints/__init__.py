"""The reading layer: every read of model weights goes through here.

- :mod:`~subnetviz.checkpoints.header`: safetensors header parsing and validation;
- :mod:`~subnetviz.checkpoints.sources`: :func:`open_checkpoint` and the lazy :class:`Checkpoint`
  (HF folder, sharded index, single file, cached hub id, legacy ``.bin``);
- :mod:`~subnetviz.checkpoints.align`: :func:`align` / :func:`read_aligned`, pairing tensors by name;
- :mod:`~subnetviz.checkpoints.naming`: per-family naming tables (layer, module, fused parts);
- :mod:`~subnetviz.checkpoints.models`: a checkpoint as a transformers model (local files only, no
  adapter applied on top), for the analyses that run the model;
- :mod:`~subnetviz.checkpoints.adapters`: a LoRA adapter read as the merged finetune;
- :mod:`~subnetviz.checkpoints.mxfp4`: gpt-oss's MXFP4 experts read as the bf16 tensors they stand for.
"""

from __future__ import annotations

from subnetviz.lazy import exports

# public name -> defining module, imported on first use (PEP 562): locating files and reading headers
# (fingerprints) need no torch, while ``align`` imports it.
_EXPORTS = {
    "AlignedTensor": "align",
    "Alignment": "align",
    "align": "align",
    "read_aligned": "align",
    "ST_DTYPES": "header",
    "TensorMeta": "header",
    "read_safetensors_header": "header",
    "Checkpoint": "sources",
    "open_checkpoint": "sources",
    "resolve_hub_id": "sources",
}

__all__ = [
    "ST_DTYPES",
    "AlignedTensor",
    "Alignment",
    "Checkpoint",
    "TensorMeta",
    "align",
    "open_checkpoint",
    "read_aligned",
    "read_safetensors_header",
    "resolve_hub_id",
]


__getattr__ = exports(__name__, _EXPORTS)
