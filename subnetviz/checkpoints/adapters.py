"""LoRA / PEFT adapters read as the finetuned model they stand for.

A folder with ``adapter_config.json`` + ``adapter_model.safetensors`` given as a finetune of
``base`` is the merged model: every target weight is W + s·B·A (s = α/r, or α/√r with rsLoRA;
``rank_pattern`` / ``alpha_pattern`` per module; ``fan_in_fan_out`` transposes Δ for Conv1D;
embedding adapters use Δ = (B·A)ᵀ), computed in float32 and rounded once to the base's stored
dtype (round-to-nearest-even), as a merge would save it; ``modules_to_save`` replace their base
tensors; every other tensor is the base's. Merging happens per tensor in :meth:`MergedAdapter.get`,
so nothing but one tensor pair is ever in memory. DoRA (a learned magnitude renormalises each
merged column) is refused by name, as is any adapter type other than LoRA.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from subnetviz.checkpoints.header import read_safetensors_header
from subnetviz.checkpoints.sources import Checkpoint, open_checkpoint
from subnetviz.config import check_readable
from subnetviz.errors import CheckpointError, suggest

_LORA = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?(?:\.weight)?$"
)
_PEFT_PREFIX = "base_model.model."


def is_adapter(spec) -> bool:
    p = Path(str(spec)).expanduser()
    return p.is_dir() and (p / "adapter_config.json").is_file()


def open_finetune(spec, base: Checkpoint) -> Checkpoint:
    """A finetune given by path: a plain checkpoint, or a PEFT adapter folder merged onto ``base``."""
    if isinstance(spec, Checkpoint):
        return spec
    return MergedAdapter(str(spec), base) if is_adapter(spec) else open_checkpoint(spec)


def adapter_info(spec) -> dict:
    """What a workspace shows of an adapter folder on its own (headers only): it is no model, so no
    architecture of its own; the fingerprint follows the adapter's file and config."""
    folder = Path(str(spec)).expanduser()
    cfg = json.loads(check_readable(folder / "adapter_config.json").read_text())
    weights = check_readable(folder / "adapter_model.safetensors")
    header, raw = read_safetensors_header(weights)
    dtypes: dict[str, int] = {}
    for name, info in header.items():
        if name != "__metadata__":
            n = math.prod(int(d) for d in info["shape"])
            dtypes[str(info["dtype"]).lower()] = dtypes.get(str(info["dtype"]).lower(), 0) + n
    h = hashlib.sha256(raw)
    h.update(json.dumps(cfg, sort_keys=True).encode())
    st = weights.stat()
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return {
        "fingerprint": h.hexdigest()[:16],
        "architecture": f"{cfg.get('peft_type', 'LORA')} adapter (r={cfg.get('r', 8)})",
        "params": sum(dtypes.values()),
        "dtypes": dtypes,
        "family": None,
    }


class MergedAdapter(Checkpoint):
    """The base checkpoint with a LoRA adapter merged into its target weights, tensor by tensor."""

    def __init__(self, spec: str, base: Checkpoint):
        folder = Path(spec).expanduser()
        cfg_path = check_readable(folder / "adapter_config.json")
        try:
            self.adapter_config = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{cfg_path}: not a readable adapter config ({exc}).") from exc
        ac = self.adapter_config
        peft_type = str(ac.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise CheckpointError(
                f"{cfg_path}: peft_type {peft_type!r} is not supported (expected 'LORA'); "
                "merge it with peft and give the merged folder."
            )
        if ac.get("use_dora"):
            raise CheckpointError(
                f"{cfg_path}: DoRA adapters (use_dora: true) are not supported: the merged weight "
                "depends on a learned magnitude renormalisation; merge with peft and give the merged "
                "folder."
            )
        weights = folder / "adapter_model.safetensors"
        if not weights.is_file():
            raise CheckpointError(
                f"{folder}: adapter_config.json without adapter_model.safetensors (only safetensors adapters are read)."
            )
        check_readable(weights)
        super().__init__(base.spec, base.files, base.root, base.config)
        self.spec = spec
        self.base = base
        self.adapter_file = weights
        header, self._adapter_raw = read_safetensors_header(weights)
        self._adapter = _load(weights)
        self.pairs, self.replaced = self._plan(header)
        r, alpha = ac.get("r", 8), ac.get("lora_alpha", 8)
        rule = "α/√r (rsLoRA)" if ac.get("use_rslora") else "α/r"
        self.notes = [
            f"{Path(spec).name}: LoRA adapter merged onto {base.spec}: W + s·B·A with s = {rule} (r={r}, α={alpha}) "
            f"for {len(self.pairs)} tensor(s), computed in float32 and rounded to the base's stored dtype "
            "(round-to-nearest-even) as a merge would save it: rank(s·B·A) ≤ r, and the rounding adds a floor "
            "below the r-th singular value of Δ (at most ‖rounding error‖)"
            + (f"; {len(self.replaced)} tensor(s) replaced by modules_to_save" if self.replaced else "")
            + "."
        ]

    def _plan(self, header: dict) -> tuple[dict[str, tuple[str, str, bool]], dict[str, str]]:
        base_names = set(self.base.names)
        pairs: dict[str, dict[str, str]] = {}
        replaced: dict[str, str] = {}
        for key in header:
            if key == "__metadata__":
                continue
            short = key[len(_PEFT_PREFIX) :] if key.startswith(_PEFT_PREFIX) else key
            m = _LORA.match(short)
            if m is None:  # modules_to_save (and trainable biases): a full tensor replacing the base's
                target = short.replace(".modules_to_save.default", "")
                self._check_target(key, target, base_names)
                replaced[target] = key
                continue
            target = f"{m['module']}.weight"
            self._check_target(key, target, base_names)
            pairs.setdefault(target, {})[m["kind"]] = key
        out: dict[str, tuple[str, str, bool]] = {}
        for target, kinds in pairs.items():
            emb = "lora_embedding_A" in kinds
            a, b = (
                kinds.get("lora_embedding_A" if emb else "lora_A"),
                kinds.get("lora_embedding_B" if emb else "lora_B"),
            )
            if a is None or b is None:
                raise CheckpointError(
                    f"{self.adapter_file}: {target!r} has only one of its LoRA A/B tensors "
                    f"(found {sorted(kinds.values())})."
                )
            out[target] = (a, b, emb)
        for t in self.adapter_config.get("target_modules") or []:
            if isinstance(t, str) and not any(n.endswith(f".{t}.weight") or n == f"{t}.weight" for n in base_names):
                kinds = sorted(
                    {
                        n.rsplit(".", 2)[-2]
                        for n in base_names
                        if n.endswith(".weight") and "." in n and len(self.base.meta(n).shape) == 2
                    }
                )
                raise CheckpointError(
                    f"{self.spec}: target module {t!r} (adapter_config.json target_modules) matches no module of the "
                    f"base {self.base.spec}; its linear modules are {', '.join(kinds[:12])}."
                )
        return out, replaced

    def _check_target(self, key: str, target: str, base_names: set[str]) -> None:
        if target not in base_names:
            raise CheckpointError(
                f"{self.spec}: adapter tensor {key!r} targets {target!r}, which the base {self.base.spec} does not "
                f"hold.{suggest(target, base_names)}"
            )

    def _scale(self, target: str, r: int) -> float:
        ac = self.adapter_config
        module = target[: -len(".weight")]
        for pattern, val in (ac.get("rank_pattern") or {}).items():
            if re.fullmatch(rf"(.*\.)?{pattern}", module):
                r = int(val)
        alpha = ac.get("lora_alpha", 8)
        for pattern, val in (ac.get("alpha_pattern") or {}).items():
            if re.fullmatch(rf"(.*\.)?{pattern}", module):
                alpha = val
        return alpha / math.sqrt(r) if ac.get("use_rslora") else alpha / r

    def get(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        if name in self.replaced:
            return self._adapter[self.replaced[name]].to(device)
        w = self.base.get(name, device)
        if name not in self.pairs:
            return w
        ka, kb, emb = self.pairs[name]
        a = self._adapter[ka].to(device, torch.float32)  # (r, in) or, for embeddings, (r, vocab)
        b = self._adapter[kb].to(device, torch.float32)  # (out, r) or (dim, r)
        delta = (b @ a).mul_(self._scale(name, a.shape[0]))  # in place: one float32 temporary per tensor
        if emb or self.adapter_config.get("fan_in_fan_out"):
            delta = delta.T
        if tuple(delta.shape) != tuple(w.shape):
            raise CheckpointError(
                f"{self.spec}: LoRA update of {name!r} has shape {tuple(delta.shape)}, the base "
                f"weight {tuple(w.shape)}."
            )
        return delta.add_(w).to(w.dtype)  # w + Δ in float32 (w is exact in it), rounded once

    def array(self, name: str, view: np.dtype) -> np.ndarray | None:
        """The base's mapped bytes for a tensor the adapter leaves as it is; None (read through :meth:`get`)
        for a merged or replaced one, which exists only once computed."""
        if name in self.replaced or name in self.pairs:
            return None
        return self.base.array(name, view)

    @cached_property
    def fingerprint(self) -> str:
        h = hashlib.sha256(self.base.fingerprint.encode())
        st = self.adapter_file.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        h.update(self._adapter_raw)
        h.update(json.dumps(self.adapter_config, sort_keys=True).encode())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"MergedAdapter({self.spec!r} on {self.base.spec!r}, {len(self.pairs)} merged tensors)"


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))  # adapters are small (a few MB to a few hundred)
    except Exception as exc:  # safetensors' own error types
        raise CheckpointError(f"{path}: cannot read the adapter ({exc}).") from exc
