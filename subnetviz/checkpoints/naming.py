"""Tensor name -> (layer, block, module kind), from one table per architecture family.

Families: Llama/Qwen2/Mistral (separate q/k/v/o, gate/up/down), GPT-2 (Conv1D weights stored
(in, out); fused ``c_attn`` split in contiguous thirds along the output columns), GPT-NeoX/Pythia
(fused ``query_key_value`` interleaved per head along the output rows), BERT. An unknown
architecture falls back to a generic parse (layer = the first integer path component) and says so
in :attr:`NameTable.notice`; it never raises.

Module kinds are short canonical strings used across the app (heatmap columns):
``embed, pos_embed, q, k, v, o, qkv, gate, up, down, mlp_in, mlp_out, attn_norm, mlp_norm,
norm, final_norm, lm_head, other``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

MODULE_ORDER = [
    "embed", "pos_embed", "q", "k", "v", "qkv", "o", "gate", "up", "mlp_in", "down", "mlp_out",
    "attn_norm", "mlp_norm", "norm", "final_norm", "lm_head", "other",
]  # fmt: skip
BLOCK_OF = {
    "embed": "embedding", "pos_embed": "embedding", "lm_head": "head",
    "q": "attention", "k": "attention", "v": "attention", "qkv": "attention", "o": "attention",
    "gate": "mlp", "up": "mlp", "mlp_in": "mlp", "down": "mlp", "mlp_out": "mlp",
    "attn_norm": "norm", "mlp_norm": "norm", "norm": "norm", "final_norm": "norm", "other": "other",
}  # fmt: skip

# (regex on the name without a leading model prefix, module kind). First match wins.
_LLAMA = [
    (r"embed_tokens\.", "embed"),
    (r"self_attn\.q_proj\.", "q"), (r"self_attn\.k_proj\.", "k"), (r"self_attn\.v_proj\.", "v"),
    (r"self_attn\.o_proj\.", "o"),
    (r"mlp\.gate_proj\.", "gate"), (r"mlp\.up_proj\.", "up"), (r"mlp\.down_proj\.", "down"),
    (r"input_layernorm\.", "attn_norm"), (r"post_attention_layernorm\.", "mlp_norm"),
    (r"(q_norm|k_norm)\.", "attn_norm"),
    (r"^norm\.", "final_norm"), (r"lm_head\.", "lm_head"),
]  # fmt: skip
_GPT2 = [
    (r"wte\.", "embed"), (r"wpe\.", "pos_embed"),
    (r"attn\.c_attn\.", "qkv"), (r"attn\.c_proj\.", "o"),
    (r"mlp\.c_fc\.", "mlp_in"), (r"mlp\.c_proj\.", "mlp_out"),
    (r"ln_1\.", "attn_norm"), (r"ln_2\.", "mlp_norm"), (r"ln_f\.", "final_norm"), (r"lm_head\.", "lm_head"),
]  # fmt: skip
_NEOX = [
    (r"embed_in\.", "embed"),
    (r"attention\.query_key_value\.", "qkv"), (r"attention\.dense\.", "o"),
    (r"mlp\.dense_h_to_4h\.", "mlp_in"), (r"mlp\.dense_4h_to_h\.", "mlp_out"),
    (r"input_layernorm\.", "attn_norm"), (r"post_attention_layernorm\.", "mlp_norm"),
    (r"final_layer_norm\.", "final_norm"), (r"embed_out\.", "lm_head"),
]  # fmt: skip
_BERT = [
    (r"word_embeddings\.", "embed"), (r"position_embeddings\.", "pos_embed"),
    (r"token_type_embeddings\.", "embed"), (r"embeddings\.LayerNorm\.", "norm"),
    (r"attention\.self\.query\.", "q"), (r"attention\.self\.key\.", "k"), (r"attention\.self\.value\.", "v"),
    (r"attention\.output\.dense\.", "o"), (r"attention\.output\.LayerNorm\.", "attn_norm"),
    (r"intermediate\.dense\.", "mlp_in"), (r"output\.dense\.", "mlp_out"), (r"output\.LayerNorm\.", "mlp_norm"),
    (r"pooler\.", "other"), (r"cls\.predictions\.decoder\.", "lm_head"),
    (r"cls\.predictions\.bias$", "lm_head"),  # the decoder's (vocab,) bias: resized with the vocabulary
    (r"cls\.", "other"),
]  # fmt: skip

FAMILIES: dict[str, list[tuple[str, str]]] = {"llama": _LLAMA, "gpt2": _GPT2, "gpt_neox": _NEOX, "bert": _BERT}
# config.json model_type -> family
MODEL_TYPES = {
    "llama": "llama", "qwen2": "llama", "qwen3": "llama", "mistral": "llama", "gemma": "llama",
    "gemma2": "llama", "phi3": "llama", "olmo": "llama", "olmo2": "llama",
    "gpt2": "gpt2", "gpt_neox": "gpt_neox", "bert": "bert", "roberta": "bert",
}  # fmt: skip
_PREFIXES = ("model.", "transformer.", "gpt_neox.", "bert.", "roberta.", "base_model.")
_INT = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor sits: layer index (None outside the blocks), block, module kind, param kind."""

    layer: int | None
    block: str
    module: str
    param: str  # "weight" | "bias" | other trailing name

    @property
    def layer_label(self) -> str:
        return "—" if self.layer is None else str(self.layer)


def strip_prefix(name: str) -> str:
    """``model.layers.0.x`` -> ``layers.0.x``; names without a known prefix are returned unchanged."""
    for p in _PREFIXES:
        if name.startswith(p):
            return name[len(p) :]
    return name


def detect_family(model_type: str | None, names: list[str]) -> str | None:
    """The family from ``config.json``'s model_type, else from tell-tale tensor names, else None."""
    if model_type and model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    joined = "\n".join(names[:2000])
    if "self_attn.q_proj" in joined:
        return "llama"
    if "attn.c_attn" in joined:
        return "gpt2"
    if "attention.query_key_value" in joined:
        return "gpt_neox"
    if "attention.self.query" in joined:
        return "bert"
    return None


@dataclass(frozen=True)
class NameTable:
    """Maps names to :class:`TensorInfo` for one architecture family (or the generic fallback)."""

    family: str | None
    num_heads: int | None = None
    model_type: str | None = None

    @property
    def notice(self) -> str | None:
        if self.family is None:
            what = f"model_type {self.model_type!r}" if self.model_type else "these tensor names"
            return (
                f"Unknown architecture ({what}): layers are read from the first integer in each name and "
                "module kinds are 'other'. Per-module views are approximate."
            )
        return None

    def describe(self, name: str) -> TensorInfo:
        short = strip_prefix(name)
        param = short.rsplit(".", 1)[-1] if "." in short else short
        m = _INT.search(short)
        layer = int(m.group(1)) if m else None
        module = "other"
        for pattern, kind in FAMILIES.get(self.family or "", []):
            if re.search(pattern, short):
                module = kind
                break
        if module in ("embed", "pos_embed", "lm_head", "final_norm"):
            layer = None
        elif self.family == "bert" and module == "norm":
            layer = None
        return TensorInfo(layer, BLOCK_OF[module], module, param)

    def fused_parts(self, name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Split a fused QKV tensor into views ``{"q", "k", "v"}``; None for any other tensor.

        GPT-2 ``c_attn`` (Conv1D): weight (d, 3d), bias (3d,) -> contiguous thirds of the last dim.
        GPT-NeoX ``query_key_value`` (Linear): weight (3d, d), bias (3d,) -> rows interleaved per head,
        i.e. reshaped to (heads, 3, head_size, ...) as HF ``GPTNeoXAttention`` does.
        """
        info = self.describe(name)
        if info.module != "qkv":
            return None
        if self.family == "gpt2":
            n = tensor.shape[-1]
            if n % 3:
                return None
            d = n // 3
            return {k: tensor[..., i * d : (i + 1) * d] for i, k in enumerate("qkv")}
        if self.family == "gpt_neox" and self.num_heads:
            rows = tensor.shape[0]
            if rows % (3 * self.num_heads):
                return None
            hs = rows // (3 * self.num_heads)
            t = tensor.reshape(self.num_heads, 3, hs, *tensor.shape[1:])
            return {k: t[:, i] for i, k in enumerate("qkv")}
        return None


def module_sort_key(module: str) -> int:
    return MODULE_ORDER.index(module) if module in MODULE_ORDER else len(MODULE_ORDER)
