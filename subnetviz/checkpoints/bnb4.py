"""bitsandbytes' 4-bit weights (NF4 / FP4, QLoRA's storage: transformers' ``load_in_4bit`` saved, Unsloth's
``-bnb-4bit`` releases), read as the codes they hold in the weight's shape, with their block scales as values.

transformers saves a 4-bit linear weight as ``<module>.weight``: the codes of the weight flattened row by row, two
per byte (the first in the high nibble), in bytes or viewed as another storage dtype, with ``weight.absmax`` (one
scale per block of ``blocksize`` codes: float32, or with double quantisation uint8 codes of a second, 8-bit
blockwise quantisation: ``nested_quant_map[a] × nested_absmax[i // nested_blocksize] + nested_offset``),
``weight.quant_map`` (the 16 values of the 4-bit data type) and ``weight.quant_state.bitsandbytes__nf4|fp4`` (JSON
bytes: the weight's shape, dtype, blocksize, quant type and the nested quantisation's offset). bitsandbytes
dequantises w = TYPE[code] × absmax[i // blocksize] in float32 (then rounds to the compute dtype), with the data
type's fixed table (its stored ``quant_map`` is not read: :data:`TABLES`).

A :class:`~subnetviz.checkpoints.sources.Checkpoint` lists such a weight as ``<module>.weight``, uint8 codes (0..15)
of the weight's shape, and ``<module>.weight.absmax`` as float32 scales of shape (rows, columns / blocksize)
(:func:`plan`), where a block never straddles two rows (columns a multiple of the blocksize: every released
model's); the analysis then dequantises them as it does other codes (:mod:`subnetviz.analysis.quant`), entry by
entry, under the model's own names. Tested bit for bit against bitsandbytes' own ``dequantize_4bit`` on real
checkpoints transformers writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from subnetviz.errors import CheckpointError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from subnetviz.checkpoints.header import TensorMeta

# The 4-bit data types' values, in code order (bitsandbytes.functional.get_4bit_type), float32
TABLES = {
    "nf4": np.array(
        [
            -1.0,
            -0.6961928009986877,
            -0.5250730514526367,
            -0.39491748809814453,
            -0.28444138169288635,
            -0.18477343022823334,
            -0.09105003625154495,
            0.0,
            0.07958029955625534,
            0.16093020141124725,
            0.24611230194568634,
            0.33791524171829224,
            0.44070982933044434,
            0.5626170039176941,
            0.7229568362236023,
            1.0,
        ],
        np.float32,
    ),
    "fp4": np.array(
        [0.0, 0.0052083334885537624, 0.6666666865348816, 1.0, 0.3333333432674408, 0.5, 0.1666666716337204, 0.25]
        + [-0.0, -0.0052083334885537624, -0.6666666865348816, -1.0, -0.3333333432674408, -0.5]
        + [-0.1666666716337204, -0.25],
        np.float32,
    ),
}
_STATE_BYTES = 1 << 16  # a quant_state's JSON: a few hundred bytes
_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # what bitsandbytes dequantises


def nibbles(packed: torch.Tensor, rows: int, cols: int, *, high_first: bool, what: str) -> torch.Tensor:
    """4-bit codes two a byte (``packed``: any storage dtype, its bytes in order) as uint8 (rows, cols), the first
    code of a byte in its high nibble (bitsandbytes) or its low one (NVFP4's exporters); padding past
    rows × cols dropped. The memory for the codes and their temporaries is asked for first, as ``what``."""
    import torch

    from subnetviz.config import require_memory

    require_memory(what, 3 * rows * cols)
    u = packed.contiguous().view(torch.uint8).reshape(-1).numpy()
    codes = np.empty((u.size, 2), np.uint8)
    first, second = (codes[:, 0], codes[:, 1]) if high_first else (codes[:, 1], codes[:, 0])
    np.right_shift(u, 4, out=first)
    np.bitwise_and(u, 0x0F, out=second)
    return torch.from_numpy(np.ascontiguousarray(codes.reshape(-1)[: rows * cols].reshape(rows, cols)))


@dataclass(frozen=True)
class Codes:
    """A 4-bit weight read as its codes (uint8, 0..15), in the weight's shape."""

    source: str  # the stored bytes (the weight's own name)
    shape: tuple[int, int]
    quant_type: str
    blocksize: int
    drops: tuple[str, ...] = ()

    @property
    def stored(self) -> str:
        return f"bitsandbytes {self.quant_type}"

    @property
    def dtype(self):
        import torch

        return torch.uint8

    def read(self, get: Callable[[str], torch.Tensor], name: str) -> torch.Tensor:
        what = f"bitsandbytes {self.quant_type} codes of {name} (unpacked)"
        return nibbles(get(self.source), *self.shape, high_first=True, what=what)


@dataclass(frozen=True)
class Absmax:
    """A 4-bit weight's block scales as float32 values, (rows, columns / blocksize); with double quantisation,
    dequantised as bitsandbytes does: ``nested_quant_map[a] × nested_absmax[i // nested_blocksize]``, then
    ``+ nested_offset``, each in float32."""

    source: str  # weight.absmax
    shape: tuple[int, int]
    nested: tuple[str, str, int, float] | None  # (nested_absmax, nested_quant_map, nested_blocksize, offset)
    drops: tuple[str, ...] = ()
    stored: str | None = None

    @property
    def dtype(self):
        import torch

        return torch.float32

    def read(self, get: Callable[[str], torch.Tensor], name: str) -> torch.Tensor:
        import torch

        a = get(self.source)
        if self.nested is None:
            return a.to(torch.float32).reshape(self.shape)
        absmax_name, map_name, nbs, offset = self.nested
        q = a.contiguous().view(torch.uint8).reshape(-1).long()
        nested, table = get(absmax_name).to(torch.float32).reshape(-1), get(map_name).to(torch.float32).reshape(-1)
        out = table[q] * nested[torch.arange(q.numel()) // nbs]
        out += torch.tensor(offset, dtype=torch.float32)
        return out.reshape(self.shape)


@dataclass(frozen=True)
class Bytes:
    """A 4-bit weight this module does not lay out in the weight's shape, stored in another dtype than bytes
    (``bnb_4bit_quant_storage``: bf16 for FSDP-QLoRA): listed as its bytes (uint8, (n, 1)), as a uint8-stored one
    is, so it is compared as codes, never read as float weights."""

    source: str
    shape: tuple[int, int]
    drops: tuple[str, ...] = ()
    stored: str | None = None

    @property
    def dtype(self):
        import torch

        return torch.uint8

    def read(self, get: Callable[[str], torch.Tensor], name: str) -> torch.Tensor:
        import torch

        return get(self.source).contiguous().view(torch.uint8).reshape(self.shape)


def plan(metas: dict[str, TensorMeta], read: Callable[[TensorMeta], torch.Tensor]) -> dict[str, Codes | Absmax | Bytes]:
    """Logical name -> :class:`Codes` / :class:`Absmax` for every 4-bit weight saved with its quant_state whose
    rows hold whole blocks (empty for any other checkpoint). ``read`` gives a stored tensor's values (the
    quant_state's JSON bytes). A quant_state or companion that does not fit its weight is a one-line
    :class:`CheckpointError` naming it."""
    import torch

    out: dict[str, Codes | Absmax] = {}
    for state_name, m in metas.items():
        head, _, kind = state_name.rpartition(".quant_state.bitsandbytes__")
        if not head or kind not in TABLES or not head.endswith("weight") or head not in metas:
            continue
        w = metas[head]
        if w.dtype != torch.uint8:  # read as bytes (below) unless laid out in the weight's shape
            out[head] = Bytes(head, (w.numel * w.dtype.itemsize, 1))
        state = _state(state_name, m, read)
        if state["quant_type"] != kind:
            raise CheckpointError(f"{state_name}: its quant_type is {state['quant_type']!r}, its name says {kind!r}.")
        shape, bs = state["shape"], state["blocksize"]
        if len(shape) != 2:
            continue  # (read as stored codes)
        rows, cols = shape
        stored_bytes = w.numel * w.dtype.itemsize
        if stored_bytes != math.ceil(rows * cols / 2):
            raise CheckpointError(
                f"{head}: {stored_bytes:,} bytes of 4-bit codes for the shape {tuple(shape)} its quant_state gives "
                f"(expected {math.ceil(rows * cols / 2):,}: two codes per byte)."
            )
        blocks = math.ceil(rows * cols / bs)
        absmax = metas.get(f"{head}.absmax")
        nested = None
        if "nested_offset" in state:
            want = {f"{head}.absmax": (torch.uint8, blocks)}
            nbs = state["nested_blocksize"]
            want[f"{head}.nested_absmax"] = (torch.float32, math.ceil(blocks / nbs))
            want[f"{head}.nested_quant_map"] = (torch.float32, 256)
            nested = (f"{head}.nested_absmax", f"{head}.nested_quant_map", nbs, state["nested_offset"])
        else:
            want = {f"{head}.absmax": (None, blocks)}
        for name, (dtype, n) in want.items():
            got = metas.get(name)
            if got is None or got.numel != n or (dtype is not None and got.dtype != dtype):
                found = "missing" if got is None else f"{str(got.dtype)[6:]} {tuple(got.shape)}"
                expected = f"{n:,} values" + (f" of {str(dtype)[6:]}" if dtype is not None else "")
                raise CheckpointError(f"{name}: {found}; expected {expected} for the 4-bit weight {head}.")
        if nested is None and not absmax.dtype.is_floating_point:
            raise CheckpointError(f"{head}.absmax is {str(absmax.dtype)[6:]}; expected float scales.")
        if cols % bs:
            continue  # blocks straddle rows: no scale per (row, group); read as stored codes
        out[head] = Codes(head, (rows, cols), kind, bs, (state_name,))
        out[f"{head}.absmax"] = Absmax(f"{head}.absmax", (rows, cols // bs), nested)
    return out


def _state(name: str, m, read) -> dict:
    """The quant_state's JSON, its fields checked."""
    import torch

    from subnetviz.config import parse_json

    if m.dtype != torch.uint8 or len(m.shape) != 1 or m.numel > _STATE_BYTES:
        raise CheckpointError(f"{name}: {str(m.dtype)[6:]} {tuple(m.shape)}; expected the quant_state's JSON bytes.")
    state = parse_json(bytes(read(m).numpy()), name, CheckpointError)
    shape, bs, qt = state.get("shape"), state.get("blocksize"), state.get("quant_type")
    ok = (
        isinstance(shape, list)
        and shape
        and all(type(s) is int and 1 <= s <= 1 << 40 for s in shape)
        and bs in _BLOCKSIZES
        and qt in TABLES
    )
    if ok and "nested_offset" in state:
        nbs, offset = state.get("nested_blocksize"), state.get("nested_offset")
        ok = nbs in _BLOCKSIZES and isinstance(offset, int | float) and math.isfinite(offset)
    if not ok:
        raise CheckpointError(
            f"{name}: expected a shape of positive integers, a blocksize among {_BLOCKSIZES}, quant_type nf4 or fp4 "
            "(and with nested_offset a nested_blocksize and a finite offset); got "
            f"{ {k: state.get(k) for k in ('shape', 'blocksize', 'quant_type', 'nested_blocksize', 'nested_offset')} }."
        )
    return state


def notes(plan_: dict) -> list[str]:
    """The checkpoint's note on the 4-bit weights it reads as codes."""
    weights = [(n, p) for n, p in plan_.items() if isinstance(p, Codes)]
    if not weights:
        return []
    ex = ", ".join(n for n, _ in weights[:2]) + (" ..." if len(weights) > 2 else "")
    kinds = "/".join(sorted({p.quant_type.upper() for _, p in weights}))
    return [
        f"bitsandbytes: {len(weights)} weight(s) ({ex}) are stored as {kinds} 4-bit codes, two per byte, with a "
        "scale per block; read as their codes under the model's own names and shapes and compared as weights, "
        "dequantised as bitsandbytes does (w = TYPE[code] × absmax[block])."
    ]
