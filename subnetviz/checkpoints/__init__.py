"""The reading layer: every read of model weights goes through here.

- :mod:`~subnetviz.checkpoints.header`: safetensors header parsing and validation;
- :mod:`~subnetviz.checkpoints.sources`: :func:`open_checkpoint` and the lazy :class:`Checkpoint`
  (HF folder, sharded index, single file, cached hub id, legacy ``.bin``);
- :mod:`~subnetviz.checkpoints.align`: :func:`align` / :func:`read_aligned`, pairing tensors by name;
- :mod:`~subnetviz.checkpoints.naming`: per-family naming tables (layer, module, fused parts).
"""

from subnetviz.checkpoints.align import AlignedTensor, Alignment, align, read_aligned
from subnetviz.checkpoints.header import ST_DTYPES, TensorMeta, read_safetensors_header
from subnetviz.checkpoints.sources import Checkpoint, open_checkpoint, resolve_hub_id

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
