"""Tensor name -> (layer, block, module kind), from one table per architecture family.

The tables themselves are :mod:`~subnetviz.checkpoints.families`: Llama/Qwen2/Mistral (separate
q/k/v/o, gate/up/down), MoE families (Mixtral, Qwen2/3-MoE, DeepSeek-V2/V3 with MLA, Llama-4,
gpt-oss with attention sinks, packed 3-D experts), Phi-3 (fused ``qkv_proj`` / ``gate_up_proj``),
GLM-4, LFM2, post-norm families (Gemma-2/3/4, OLMo-2/3), Mamba mixers and the hybrids that hold them
(Nemotron-H, Jamba, Falcon-H1, Granite-4.0-H with Granite's packed experts), OPT, GPT-2 (Conv1D weights
stored (in, out); fused ``c_attn`` split in contiguous thirds along the output columns), GPT-BigCode (GPT-2's
names, its ``c_attn`` an nn.Linear whose rows are split as the config says: multi-query or per head),
GPT-NeoX/Pythia (fused ``query_key_value`` interleaved per head along the output rows), Falcon and BLOOM
(``query_key_value`` split as the config's layout says: per KV group, multi-query or per head; not split where no
config says), BERT; Qwen3-Next's and Qwen3.5's ``q_proj`` split per head into the query and the gate on
attention's output; multimodal checkpoints' language model under ``model.language_model.`` and a vision tower as
its own block; omni models' language model in their ``thinker.``, with the audio tower (block ``audio``) and the
talker and waveform model (block ``speech``) apart, where their numbered layers would have been counted in the
language model's. An unknown architecture falls back to a generic parse (layer = the first integer path component)
and says so in :attr:`NameTable.notice`; it never raises. Names no table knows are ``other`` and listed by
:meth:`NameTable.unmatched` (the analysis notes them).

Experts sit in block ``moe`` with the dense module kinds (gate/up/down) and an ``expert`` (index,
``"shared"``, ``"all"`` for packed); routers are module ``router``. Module kinds are short
canonical strings used across the app (heatmap columns), in :data:`MODULE_ORDER`.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from subnetviz.checkpoints.families import (
    AUDIO,
    EXPERT_COUNT_KEYS,
    EXPERT_INDEX,
    FAMILIES,
    GATED_QUERY,
    MODEL_TYPES,
    MTP_COUNT_KEYS,
    MTP_LAYER_PARTS,
    MTP_RULES,
    PACKED_EXPERTS,
    PREFIXES,
    PROJECTOR,
    SHARED_EXPERT,
    SPEECH,
    TELLTALES,
    VISION,
    check_tie_keys,
    json_type,
    said_bool,
)
from subnetviz.errors import CheckpointError

if TYPE_CHECKING:  # naming needs no torch: fused tensors are split with their own methods
    import torch

# The order of module kinds on every page (layer × module columns, tables); figures.style adds the kinds only
# figures name.
MODULE_ORDER = [
    "embed",
    "pos_embed",
    "per_layer",  # Gemma-3n / Gemma-4 per-layer embeddings
    "q",
    "k",
    "v",
    "qkv",  # fused q, k, v where no table splits them (beside q, k, v, before o)
    "q_a",
    "q_b",
    "kv_a",
    "kv_b",
    "o",
    "attn_gate",  # AFMoE's gate on attention's output
    "indexer",  # DeepSeek-V3.2's sparse-attention indexer
    "compressor",  # DeepSeek-V4's KV compressor
    "laurel",  # Gemma-3n's low-rank residual branch
    "sinks",  # gpt-oss's attention sinks
    "linear_attn",  # hybrids' linear-attention and short-convolution layers
    "conv",
    "ssm",  # Mamba mixers (Nemotron-H, Jamba, Falcon-H1, Granite-4.0-H)
    "gate",
    "up",
    "gate_up",
    "mlp_in",
    "down",
    "mlp_out",
    "router",  # a mixture of experts' router, after the MLP parts its experts hold
    "act",
    "attn_norm",
    "post_attn_norm",
    "mlp_norm",
    "post_mlp_norm",
    "norm",
    "final_norm",
    "hc",  # DeepSeek-V4's hyper-connections, Gemma-3n's AltUp
    "mtp_proj",
    "lm_head",
    "vision",
    "projector",
    "audio",
    "speech",
    "other",
]
BLOCK_OF = {
    "embed": "embedding",
    "pos_embed": "embedding",
    "per_layer": "embedding",
    "lm_head": "head",
    "q": "attention",
    "k": "attention",
    "v": "attention",
    "qkv": "attention",
    "o": "attention",
    "q_a": "attention",
    "q_b": "attention",
    "kv_a": "attention",
    "kv_b": "attention",
    "sinks": "attention",
    "attn_gate": "attention",
    "indexer": "attention",
    "compressor": "attention",
    "laurel": "attention",  # Gemma-3n's low-rank residual branch beside attention
    "linear_attn": "attention",
    "conv": "attention",
    "ssm": "attention",  # a token mixer, like linear attention
    "act": "mlp",
    "gate": "mlp",
    "up": "mlp",
    "gate_up": "mlp",
    "mlp_in": "mlp",
    "down": "mlp",
    "mlp_out": "mlp",
    "router": "moe",
    "mtp_proj": "mtp",
    "vision": "vision",
    "projector": "vision",
    "audio": "audio",
    "speech": "speech",
    "attn_norm": "norm",
    "post_attn_norm": "norm",
    "mlp_norm": "norm",
    "post_mlp_norm": "norm",
    "norm": "norm",
    "final_norm": "norm",
    "hc": "norm",  # the residual streams' mixing (DeepSeek-V4's hyper-connections, Gemma-3n's AltUp), beside norms
    "other": "other",
}
# The module kinds that are norms: their weights are scales, whatever their shape (Cohere's per-head q_norm and
# k_norm are (heads, head_dim)), so the spectra and the subspaces leave them out. "hc", filed beside them in
# block norm, holds learned mixing matrices (DeepSeek-V4's hc_attn_fn, Gemma-3n's AltUp), which they keep.
NORM_MODULES = frozenset(m for m, b in BLOCK_OF.items() if b == "norm") - {"hc"}
_PREFIXES = PREFIXES
TIED_HEADS = ("lm_head.weight", "embed_out.weight", "cls.predictions.decoder.weight")
"""Output heads a model may tie to its input embedding (its ``tie_word_embeddings``)."""
# A layer or expert index: at most 9 digits (a longer run of digits in a stranger's tensor name is no index,
# and int() of thousands of digits raises)
_INT = re.compile(r"(?:^|\.)(\d{1,9})(?:\.|$)")
_LEAD_INT = re.compile(r"(\d{1,9})\.")
_MTP = "(mtp)"  # the rule table of MTP modules' own tensors, matched before the family's


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor sits: layer index (None outside the blocks), block, module kind, param kind,
    and for mixture-of-experts tensors the expert (its index, ``"shared"``, or ``"all"`` for a
    packed 3-D tensor holding every expert along dim 0)."""

    layer: int | None
    block: str
    module: str
    param: str  # "weight" | "bias" | other trailing name
    expert: int | str | None = None

    @property
    def layer_label(self) -> str:
        return "—" if self.layer is None else str(self.layer)


@functools.cache
def _compiled_rules(family: str) -> tuple[tuple[re.Pattern, str], ...]:
    """``FAMILIES[family]``'s rules with their patterns compiled (once per family, not once per name)."""
    rules = MTP_RULES if family == _MTP else FAMILIES.get(family, [])
    return tuple((re.compile(pattern), kind) for pattern, kind in rules)


@functools.lru_cache(maxsize=1 << 16)
def _match_rules(family: str, short: str) -> str | None:
    """The module kind of the first of ``family``'s rules that ``short`` matches, or None; cached (a name is
    matched when the analysis lists the names no rule knows and again when it describes each tensor, and
    the next analysis of the same family asks for the same names)."""
    for pattern, kind in _compiled_rules(family):
        if pattern.search(short):
            return kind
    return None


def strip_prefix(name: str) -> str:
    """``model.layers.0.x`` -> ``layers.0.x`` (also ``model.language_model.``, ...); names without a
    known prefix are returned unchanged."""
    for p in _PREFIXES:
        if name.startswith(p):
            return name[len(p) :]
    return name


def by_short_name(names) -> dict[str, str]:
    """Each of ``names`` keyed by its name without a model prefix (:func:`strip_prefix`); of names that strip
    alike the first wins, as :func:`subnetviz.checkpoints.align` lines up tensors stored under other prefixes."""
    out: dict[str, str] = {}
    for n in names:
        out.setdefault(strip_prefix(n), n)
    return out


PEFT_PREFIX = "base_model.model."
"""Where a PEFT model (``PeftModel.named_parameters()``, its ``state_dict()``) names the model it wraps."""


def unwrapped_name(name: str) -> str:
    """``name`` without PEFT's wrapping: its ``base_model.model.`` prefix and a LoRA-wrapped module's
    ``.base_layer.`` (``base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight`` ->
    ``model.layers.0.self_attn.q_proj.weight``); other names unchanged."""
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX) :]
    return name.replace(".base_layer.", ".")


def mask_key(name: str) -> str:
    """The name a mask's tensor is matched by: PEFT's wrapping lifted (:func:`unwrapped_name`), then the model
    prefix (:func:`strip_prefix`). ``base_model.model.model.layers.0.mlp.up_proj.weight``,
    ``model.layers.0.mlp.up_proj.weight`` and ``layers.0.mlp.up_proj.weight`` all give the last."""
    return strip_prefix(unwrapped_name(name))


@dataclass(frozen=True)
class NameMatch:
    """A mask's tensor names matched to a checkpoint's or a model's (:func:`match_names`). ``to``: each name that
    matched -> the checkpoint's name (itself where the checkpoint has it as it is), in the mask's order;
    ``unmatched``: the others; ``across``: the (mask's, checkpoint's) pairs matched under another prefix."""

    to: dict[str, str]
    unmatched: tuple[str, ...]
    across: tuple[tuple[str, str], ...]

    def note(self, where: str = "the checkpoint") -> str | None:
        """One line saying that names were matched across prefixes (None when none was)."""
        if not self.across:
            return None
        mask, own = self.across[0]
        return (
            f"names matched across prefixes: {len(self.across):,} of the mask's {len(self.to) + len(self.unmatched):,}"
            f" tensors are named in {where} without or with another prefix (model., transformer., PEFT's "
            f"base_model.model. and .base_layer., ...), e.g. {mask!r} is {own!r}."
        )


def match_names(names, stored) -> NameMatch:
    """``names`` (a mask's tensors) matched to ``stored`` (the tensor names of the checkpoint or model it is used
    on), one rule for every page that takes a mask file: a name ``stored`` holds as it is is itself; another is the
    stored name with the same :func:`mask_key` (the first of those that key alike, as :func:`by_short_name` keeps
    it), unless the mask names that tensor already. A mask from a tool that strips the model prefix, or from
    PEFT's ``named_parameters()`` (``base_model.model.``, ``.base_layer.``), was matched on one page and refused
    as "another model" on the next."""
    stored = list(stored)
    names = list(names)
    own = set(stored)
    keyed: dict[str, str] = {}
    for n in stored:
        keyed.setdefault(mask_key(n), n)
    taken = {n for n in names if n in own}
    to: dict[str, str] = {}
    unmatched: list[str] = []
    across: list[tuple[str, str]] = []
    for n in names:
        if n in own:
            to[n] = n
            continue
        target = keyed.get(mask_key(n))
        if target is None or target in taken:
            unmatched.append(n)
            continue
        taken.add(target)
        to[n] = target
        across.append((n, target))
    return NameMatch(to, tuple(unmatched), tuple(across))


# A module whose own name is a vocabulary's (an embedding's or an LM head's), where no family's table reads the
# names: ``emb``, Meta's Llama releases' ``tok_embeddings``, ...
_VOCABULARY_MODULES = frozenset(
    {"emb", "embed", "embedding", "embeddings", "embed_tokens", "tok_embeddings", "word_embeddings", "wte"}
    | {"embed_in", "lm_head", "embed_out", "unembed"}
)


# LM heads named by words that name other modules too, taken as a head outside the numbered layers only: Meta's Llama
# releases' and InternLM2's output.weight, ChatGLM's output_layer, OLMo-1's ff_out
_OUTSIDE_LAYERS_HEADS = frozenset({"output", "output_layer", "ff_out"})


@functools.lru_cache(maxsize=1 << 16)
def looks_like_vocabulary(name: str) -> bool:
    """Whether ``name`` is a vocabulary's tensor (an embedding or an LM head: a resized vocabulary changes their
    rows) by the name alone, where no family's table was chosen for the names: some family's table reads it as module
    ``embed`` or ``lm_head``, or its module (its last component but a ``weight`` / ``bias``) is named as one
    (``emb``, ``embed``, ``tok_embeddings``, ...). A vision or audio tower's embeddings are no vocabulary's, nor
    position embeddings."""
    short = strip_prefix(unwrapped_name(name))
    if _tower(short):
        return False
    read = {_match_rules(family, short) for family in FAMILIES}
    if "pos_embed" in read:  # (Mamba's ^embeddings. would take BERT's embeddings.position_embeddings in)
        return False
    if read & {"embed", "lm_head"}:
        return True
    parts = short.split(".")
    module = parts[-2] if len(parts) > 1 and parts[-1] in ("weight", "bias") else parts[-1]
    if module in _OUTSIDE_LAYERS_HEADS:  # (a layer's own output/ff_out is no head: only outside the numbered layers)
        return not re.search(r"(^|\.)\d+\.", short)
    return module in _VOCABULARY_MODULES


def mtp_split(short: str) -> tuple[int, str] | None:
    """(j, the name inside the module) for a (prefix-stripped) name in multi-token-prediction module j stored
    beside the layers: ``mtp.layers.0.self_attn.q_proj.weight`` -> (0, ``self_attn.q_proj.weight``),
    ``mtp.fc.weight`` -> (0, ``fc.weight``) (Qwen3-Next, Qwen3.5), ``mtp_block.0.mlp.up_proj.weight`` ->
    (0, ``mlp.up_proj.weight``) and ``mtp_emb_norm.0.weight`` -> (0, ``emb_norm.weight``) (ERNIE-4.5),
    ``mtp_layers.1.…`` (Hunyuan); None for any other name. Without this, the first integer in the name made
    MTP module 0's attention and MLP part of layer 0."""
    comp, dot, rest = short.partition(".")
    if not dot or not (comp == "mtp" or comp.startswith("mtp_")):
        return None
    part = comp[4:]
    if rest.startswith("layers."):
        rest = rest[len("layers.") :]
    j, m = 0, _LEAD_INT.match(rest)
    if m:
        j, rest = int(m.group(1)), rest[m.end() :]
    return j, rest if part in MTP_LAYER_PARTS else f"{part}.{rest}"


def _tower(short: str) -> bool:
    """Whether a (prefix-stripped) name is outside the language model: a vision or audio tower, the projector,
    an omni model's speech side (each a block of its own)."""
    return bool(PROJECTOR.match(short) or VISION.match(short) or AUDIO.match(short) or SPEECH.match(short))


def detect_family(model_type: str | None, names: list[str]) -> str | None:
    """The family from ``config.json``'s model_type, else from tell-tale tensor names (the language model's: an
    audio tower's fc1/fc2 are no OPT), else None."""
    if isinstance(model_type, str) and model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    joined = "\n".join([n for n in names[:5000] if not _tower(strip_prefix(n))] or names[:5000])
    return next((fam for tell, fam in TELLTALES if tell in joined), None)


def expert_of(short: str) -> int | str | None:
    """The expert a (prefix-stripped) name belongs to: index, ``"shared"``, ``"all"`` (packed) or None."""
    m = EXPERT_INDEX.search(short)
    if m:
        return int(m.group(1))
    if SHARED_EXPERT.search(short):
        return "shared"
    if PACKED_EXPERTS.search(short):
        return "all"
    return None


@dataclass(frozen=True)
class NameTable:
    """Maps names to :class:`TensorInfo` for one architecture family (or the generic fallback).

    The config numbers are optional: ``num_heads`` splits GPT-NeoX's interleaved QKV and the gated ``q_proj``
    of :data:`~subnetviz.checkpoints.families.GATED_QUERY`'s model types; ``num_kv_heads`` and ``hidden_size``
    split Phi-3's ``qkv_proj``; ``num_layers`` marks layers past it (DeepSeek-V3's
    multi-token-prediction layer) as block ``mtp``; ``num_experts`` checks packed expert tensors;
    ``mtp_start`` (num_hidden_layers) places an MTP module stored beside the layers (:func:`mtp_split`):
    module j is layer ``mtp_start + j``, block ``mtp``, where DeepSeek-V3 stores its own. ``sandwich``: the
    layers also hold a norm before the MLP (``pre_feedforward_layernorm``, as Gemma-2 and its kin do), so
    ``post_attention_layernorm`` is the norm *after* attention, whatever the family's table says. ``guessed``:
    the family was chosen by the tensor names (no model_type, or one no table names), so a layout only a config
    could tell is not taken for granted (GPT-2's ``c_attn``, see :meth:`_gpt2_parts`).
    """

    family: str | None
    num_heads: int | None = None
    model_type: str | None = None
    num_kv_heads: int | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    num_experts: int | None = None
    mtp_start: int | None = None
    sandwich: bool = False
    qkv_layout: str | None = None  # Falcon / BLOOM / GPT-BigCode's fused QKV rows: see fused_qkv_layout
    guessed: bool = False  # the family was chosen by the tensor names, no config.json's model_type naming it

    @classmethod
    def from_config(cls, config: dict, names: list[str], where: str = "config.json") -> NameTable:
        """The table for a checkpoint of ``config`` (its config.json, ``where`` in messages) and tensor ``names``;
        a value of the wrong JSON type among the keys it reads is a CheckpointError (:func:`check_naming_keys`)."""
        check_naming_keys(config, where)
        text, _ = language_config(config)
        mt = config.get("model_type")
        heads = config_count(text, "num_attention_heads") or config_count(text, "n_head")
        experts = next((text[k] for k in EXPERT_COUNT_KEYS if isinstance(text.get(k), int)), None)
        mtp = next((text[k] for k in MTP_COUNT_KEYS if isinstance(text.get(k), int) and text[k] > 0), 0)
        layers = text.get("num_hidden_layers")
        if not isinstance(layers, int):  # no config: the layer after the last one any name counts
            found = [
                int(m.group(1))
                for n in names
                if not (mtp_split(s := strip_prefix(n)) or _tower(s)) and (m := _INT.search(s))
            ]  # the language model's layers (a vision or audio tower's and a talker's are their own)
            layers = max(found) + 1 if found else None
        family = detect_family(mt, names)
        layout, kv = fused_qkv_layout(text, mt) if family in ("falcon", "gpt_bigcode") else (None, None)
        return cls(
            family,
            heads,
            mt,
            kv or config_count(text, "num_key_value_heads") or heads,
            config_count(text, "hidden_size"),
            layers if mtp else None,
            experts,
            layers,
            any("pre_feedforward_layernorm." in n or "pre_mlp_layernorm." in n for n in names),
            layout,
            family is not None and mt not in MODEL_TYPES,
        )

    @property
    def notice(self) -> str | None:
        if self.family is None:
            what = f"model_type {self.model_type!r}" if self.model_type else "these tensor names"
            return (
                f"Unknown architecture ({what}): layers are read from the first integer in each name and "
                "module kinds are 'other'. Per-module views are approximate."
            )
        fused = self._fused_notice()
        if self.model_type and self.model_type not in MODEL_TYPES:
            return (
                f"Architecture {self.model_type!r} has no naming table of its own: its tensors are read with the "
                f"{self.family} table, chosen by their names. Check the per-module views before relying on them."
                + fused
            )
        return fused.strip() or None

    def _fused_notice(self) -> str:
        """What the notice says of a fused QKV tensor left whole (or split only where its shape tells), else ""."""
        if self.family == "falcon" and self.qkv_layout is None:
            return (
                " Its fused query_key_value is not split into q, k and v: config.json does not say how its rows are "
                "grouped (Falcon's new_decoder_architecture / multi_query), so it is counted whole as qkv."
            )
        if self.family == "gpt_bigcode" and (self.qkv_layout is None or not self.num_heads):
            return (
                " Its fused c_attn is not split into q, k and v: config.json does not give n_head, which its rows "
                "are grouped by, so it is counted whole as qkv."
            )
        if self.family == "gpt2" and self.guessed:
            return (
                " Its fused c_attn is split into q, k and v only where the weight is shaped (H, 3H), as GPT-2's "
                "Conv1D is: no config.json says gpt2, and GPT-BigCode writes the same names for an nn.Linear whose "
                "rows are split by its config. Other c_attn weights and every c_attn bias are counted whole as qkv."
            )
        return ""

    def _match(self, short: str, mtp: bool = False) -> str | None:
        """The module kind ``short`` matches (inside an MTP module, ``mtp``: its own rules first)."""
        return (mtp and _match_rules(_MTP, short)) or _match_rules(self.family or "", short)

    def describe(self, name: str) -> TensorInfo:
        """Block, layer, module kind, parameter and expert of ``name``; cached per table and name (an
        analysis asks once per model and use, and the answer is an immutable :class:`TensorInfo`)."""
        return _describe(self, name)

    def _describe_name(self, name: str) -> TensorInfo:
        short = strip_prefix(name)
        mtp = mtp_split(short)
        if mtp is not None:  # an MTP module beside the layers: the layer after the last (+ j), block mtp
            layer = None if self.mtp_start is None else self.mtp_start + mtp[0]
            short = mtp[1]
        param = short.rsplit(".", 1)[-1] if "." in short else short
        if mtp is None:
            m = _INT.search(short)
            layer = int(m.group(1)) if m else None
            if PROJECTOR.match(short):
                return TensorInfo(None, "vision", "projector", param)
            if VISION.match(short):
                return TensorInfo(layer, "vision", "vision", param)
            if AUDIO.match(short):
                return TensorInfo(layer, "audio", "audio", param)
            if SPEECH.match(short):
                return TensorInfo(layer, "speech", "speech", param)
        module = self._match(short, mtp is not None) or "other"
        if module == "mlp_norm" and self.sandwich and "post_attention_layernorm." in short:
            module = "post_attn_norm"
        expert = expert_of(short) if self.family in FAMILIES else None
        if expert == "all" and param.endswith("_proj"):
            param = "weight"  # packed experts are stored without a .weight suffix
        elif expert == "all" and param.endswith("_proj_bias"):
            param = "bias"  # and gpt-oss's packed biases as <proj>_bias
        if module in ("embed", "pos_embed", "lm_head", "final_norm") and not (mtp or self._is_mtp(layer)):
            layer = None
        elif self.family == "bert" and module == "norm":
            layer = None
        block = BLOCK_OF[module]
        if expert is not None and block == "mlp":
            block = "moe"
        if mtp is not None or self._is_mtp(layer):
            block = "mtp"
        return TensorInfo(layer, block, module, param, expert)

    def _is_mtp(self, layer: int | None) -> bool:
        return self.num_layers is not None and layer is not None and layer >= self.num_layers

    def unmatched(self, names: list[str]) -> list[str]:
        """Names no table of this family knows (their module is ``other`` by default, not by a rule)."""
        if self.family is None:
            return list(names)
        out = []
        for n in names:
            short = strip_prefix(n)
            mtp = mtp_split(short)
            if mtp is not None:
                if not self._match(mtp[1], True):
                    out.append(n)
            elif not (_tower(short) or self._match(short)):
                out.append(n)
        return out

    def check_packed(self, name: str, shape: tuple[int, ...], where: str = "") -> None:
        """A packed-expert tensor must hold the config's expert count along dim 0."""
        if self.num_experts is None or expert_of(strip_prefix(name)) != "all" or len(shape) != 3:
            return
        if shape[0] != self.num_experts:
            raise CheckpointError(
                f"{where}packed-expert tensor {name!r}: expected {self.num_experts} experts along dim 0 "
                f"(config.json), found {shape[0]} (shape {tuple(shape)})."
            )

    def fused_parts(self, name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Split a fused tensor into views: ``{"q", "k", "v"}`` for QKV, ``{"gate", "up"}`` for gate/up.

        GPT-2 ``c_attn`` (Conv1D): weight (d, 3d), bias (3d,) -> contiguous thirds of the last dim (see
        :meth:`_gpt2_parts` for when that is known). GPT-BigCode ``c_attn`` (Linear): rows split as Falcon's are.
        GPT-NeoX ``query_key_value`` (Linear): weight (3d, d), bias (3d,) -> rows interleaved per head,
        i.e. reshaped to (heads, 3, head_size, ...) as HF ``GPTNeoXAttention`` does.
        Phi-3 ``qkv_proj`` (Linear): rows [q (heads·hd); k (kv·hd); v (kv·hd)], hd = hidden / heads.
        Phi-3 ``gate_up_proj``: rows [gate; up] halves. (Packed 3-D experts: see :meth:`part_counts`.)
        Qwen3-Next's gated ``q_proj`` (:meth:`_gated_query_parts`): ``{"q", "attn_gate"}``, its rows per head.
        """
        info = self.describe(name)
        if self._gated_query(info):
            return self._gated_query_parts(tensor)
        if info.module == "gate_up" and self.family in ("phi3", "glm4", "granite_moe", "granite_moe_swa"):
            if tensor.shape[0] % 2:
                return None
            h = tensor.shape[0] // 2
            return {"gate": tensor[:h], "up": tensor[h:]}
        if info.module != "qkv":
            return None
        if self.family == "gpt2":
            return self._gpt2_parts(tensor)
        if self.family == "gpt_neox" and self.num_heads:
            rows = tensor.shape[0]
            if rows % (3 * self.num_heads):
                return None
            hs = rows // (3 * self.num_heads)
            t = tensor.reshape(self.num_heads, 3, hs, *tensor.shape[1:])
            return {k: t[:, i] for i, k in enumerate("qkv")}
        if self.family in ("falcon", "gpt_bigcode"):
            return self._qkv_row_parts(tensor)
        if self.family == "phi3" and self.num_heads and self.hidden_size and self.num_kv_heads:
            hd = self.hidden_size // self.num_heads
            q, kv = self.num_heads * hd, self.num_kv_heads * hd
            if tensor.shape[0] != q + 2 * kv:
                return None
            return {"q": tensor[:q], "k": tensor[q : q + kv], "v": tensor[q + kv :]}
        return None

    def _gpt2_parts(self, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """GPT-2's ``c_attn`` in contiguous thirds of its last dim (Conv1D, stored (in, out)). GPT-BigCode writes
        the same names for an nn.Linear (H + 2·kv, H) whose rows are split, so where no config.json says gpt2 (the
        table was chosen by the names: :attr:`guessed`) only a 2-D weight shaped (H, 3H), which no GPT-BigCode
        c_attn is, is split: a 1-D tensor then (a bias, or the weight's column counts the update pass hands in,
        which no longer show its rows) is None here, and :meth:`part_counts`, which has the weight's shape, splits
        the weight's columns."""
        n = tensor.shape[-1]
        if n % 3:
            return None
        if self.guessed and not (tensor.dim() == 2 and tensor.shape[1] == 3 * tensor.shape[0]):
            return None
        d = n // 3
        return {k: tensor[..., i * d : (i + 1) * d] for i, k in enumerate("qkv")}

    def is_fused(self, info: TensorInfo) -> bool:
        """Whether the update analysis may split a tensor into parts (:meth:`fused_parts`, :meth:`part_counts`): a
        fused QKV or gate/up (packed experts' too), or a gated query."""
        return info.module in ("qkv", "gate_up") or self._gated_query(info)

    def _gated_query(self, info: TensorInfo) -> bool:
        """Whether a tensor is a ``q_proj`` holding the gate on attention's output beside the query (GATED_QUERY)."""
        return info.module == "q" and self.model_type in GATED_QUERY

    def _gated_query_parts(self, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Qwen3-Next's (and Qwen3.5's) full-attention ``q_proj``, weight (heads·2·hd, H) and bias: each head's
        rows are [query (hd); gate (hd)], as ``Qwen3NextAttention`` views its output (..., heads, 2·hd) and chunks it
        in two. None (counted whole as q) without the head count, or where the rows do not fit it."""
        heads, rows = self.num_heads, tensor.shape[0]
        if not heads or rows % (2 * heads):
            return None
        t = tensor.reshape(heads, 2, rows // (2 * heads), *tensor.shape[1:])
        return {"q": t[:, 0], "attn_gate": t[:, 1]}

    def _qkv_row_parts(self, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Falcon's (and BLOOM's) fused ``query_key_value`` rows split as transformers' ``FalconAttention``
        splits them (``_split_heads``), by :attr:`qkv_layout`: ``grouped`` (new_decoder_architecture): per KV
        group [q × heads/kv_heads, k, v], each head_dim rows; ``multi_query`` (Falcon-7B): [every q head, one k,
        one v]; ``per_head``: [q, k, v] of each head in turn, as GPT-NeoX (and BLOOM). GPT-BigCode's ``c_attn``
        rows are laid out alike (``GPTBigCodeAttention``: [q (H); k (hd); v (hd)] with multi_query, else per head
        [q, k, v]). None (counted whole) where the layout is unknown or the rows do not fit it."""
        heads, kv, rows = self.num_heads, self.num_kv_heads, tensor.shape[0]
        if not heads or self.qkv_layout is None:
            return None
        if self.qkv_layout == "grouped":
            if not kv or heads % kv or rows % (heads + 2 * kv):
                return None
            hd, per = rows // (heads + 2 * kv), heads // kv + 2
            t = tensor.reshape(kv, per, hd, *tensor.shape[1:])
            return {"q": t[:, :-2], "k": t[:, -2], "v": t[:, -1]}
        if self.qkv_layout == "multi_query":
            if rows % (heads + 2):
                return None
            hd = rows // (heads + 2)
            return {"q": tensor[: heads * hd], "k": tensor[heads * hd : (heads + 1) * hd], "v": tensor[-hd:]}
        if rows % (3 * heads):
            return None
        t = tensor.reshape(heads, 3, rows // (3 * heads), *tensor.shape[1:])
        return {k: t[:, i] for i, k in enumerate("qkv")}

    def packed_in_rows(self, rows: int, cols: int) -> bool:
        """Whether a packed 3-D expert tensor (E, rows, cols) is stored (E, in, out): the hidden size along
        its rows, as Llama-4, gpt-oss and Qwen's own Qwen3-VL-MoE releases store them (transformers 5 saves
        the same Qwen3-VL-MoE as (E, out, in)). Told by the config's hidden size where only one side has it,
        else by the family (Llama-4 and gpt-oss: (E, in, out))."""
        if self.hidden_size and (rows == self.hidden_size) != (cols == self.hidden_size):
            return rows == self.hidden_size
        return self.family in ("llama4", "gpt_oss")

    def part_counts(self, name: str, shape: tuple[int, ...], row_counts, col_counts) -> list[tuple[str, int, int]]:
        """(module, numel, changed) of each part of a fused tensor that :func:`fused_part_rows` does not
        split (Phi-3 ``qkv_proj`` / ``gate_up_proj``; Falcon's and GPT-BigCode's fused QKV; a gated ``q_proj``;
        packed 3-D ``gate_up_proj`` of every expert, and gpt-oss's packed ``gate_up_proj_bias``, gate and up
        interleaved along the last dim; a GPT-2 ``c_attn`` weight that only its shape shows to be GPT-2's, see
        :meth:`_gpt2_parts`), from the row/column counts of the (shape[0], rest) view: no extra pass. [] for any
        other tensor."""
        info = self.describe(name)
        if row_counts is None or not self.is_fused(info) or self.family == "gpt_neox":
            return []
        import torch

        if self.family == "gpt2":  # (H, 3H): the columns' thirds, each H rows tall
            if len(shape) != 2 or col_counts is None or shape[1] != 3 * shape[0]:
                return []
            cols, d = torch.as_tensor(col_counts), int(shape[0])
            return [(k, d * d, int(cols[i * d : (i + 1) * d].sum())) for i, k in enumerate("qkv")]

        if info.expert == "all" and len(shape) == 3:  # (E, 2I, H) v5 layout, or (E, H, 2I): see packed_in_rows
            e, r, c = shape
            cols = torch.as_tensor(col_counts).reshape(r, c)
            if self.family == "gpt_oss":  # interleaved: gate = [..., ::2], up = [..., 1::2]
                g, u = cols[:, 0::2], cols[:, 1::2]
            elif self.packed_in_rows(r, c):
                g, u = cols[:, : c // 2], cols[:, c // 2 :]
            else:
                g, u = cols[: r // 2], cols[r // 2 :]
            return [("gate", g.numel() * e, int(g.sum())), ("up", u.numel() * e, int(u.sum()))]
        if info.expert == "all" and len(shape) == 2 and self.family == "gpt_oss":  # its (E, 2I) bias, interleaved
            cols = torch.as_tensor(col_counts)
            g, u = cols[0::2], cols[1::2]
            return [("gate", g.numel() * shape[0], int(g.sum())), ("up", u.numel() * shape[0], int(u.sum()))]
        counts = torch.as_tensor(row_counts)
        width = shape[1] if len(shape) == 2 else 1
        parts = self.fused_parts(name, counts)
        if not parts:
            return []
        return [(k, int(v.numel()) * width, int(v.sum())) for k, v in parts.items()]


def language_config(config: dict) -> tuple[dict, str]:
    """The part of a config.json that describes the language model, and its path for messages: an omni model's
    ``thinker_config``, a multimodal model's ``text_config`` (``thinker_config.text_config.``), else the top."""
    thinker = config.get("thinker_config")  # an omni model's language model sits in its thinker
    outer, path = (thinker, "thinker_config.") if isinstance(thinker, dict) else (config, "")
    if isinstance(outer.get("text_config"), dict):
        return outer["text_config"], f"{path}text_config."
    return outer, path


# config.json's sizes the naming tables split fused tensors by: a whole number >= 1 where given (null: not given).
# (Falcon's num_kv_heads is taken only where it is one: OpenELM's, per layer, is a list.)
NAMING_COUNT_KEYS = ("num_attention_heads", "n_head", "num_key_value_heads", "hidden_size")
# its flags that choose Falcon's and GPT-BigCode's fused QKV layout (fused_qkv_layout)
NAMING_FLAG_KEYS = ("multi_query", "new_decoder_architecture")


def check_naming_keys(config: dict, where: str = "config.json") -> None:
    """Refuse, in one line naming ``where`` (e.g. "config.json in zoo/base") and the key, a value of a JSON type
    the tables cannot read: a model_type that is not a string, a head count or hidden size that is not a whole
    number >= 1, a layout flag that is not true or false. A list there ended in "unhashable type" from deep in
    the naming cache, a string flag "false" was read as True; transformers refuses all of these."""
    mt = config.get("model_type")
    if mt is not None and not isinstance(mt, str):
        raise CheckpointError(
            f"{where}: model_type is {json.dumps(mt, default=str)[:40]} ({json_type(mt)}); expected a string such "
            'as "llama".'
        )
    text, path = language_config(config)
    for key in NAMING_COUNT_KEYS:
        v = text.get(key)
        if v is not None and not (_whole(v) or (type(v) is list and v and all(_whole(x) for x in v))):
            raise CheckpointError(
                f"{where}: {path}{key} is {json.dumps(v, default=str)[:40]} ({json_type(v)}); expected a whole "
                "number of at least 1 (or a list of them, one per stage)."
            )
    for key in NAMING_FLAG_KEYS:
        said_bool(text, key, where, path)


def _whole(v) -> bool:
    return type(v) is int and v >= 1


def config_count(text: dict, key: str) -> int | None:
    """``text[key]`` where it is one whole number; None where absent or a list per stage or layer (SegFormer's,
    PVT's, LeViT's heads per stage: transformers accepts them, and no one number splits a fused tensor)."""
    v = text.get(key)
    return v if _whole(v) else None


def check_config(config: dict, where: str) -> None:
    """Every config.json value the naming tables and the tied-head rule read checked for its JSON type, where
    the config is read (``where``: "config.json in FOLDER"); a CheckpointError naming the folder and the key.
    Reads no more than the config (the tied-head rule's transformers config class is not consulted)."""
    check_naming_keys(config, where)
    check_tie_keys(config, where)


@functools.lru_cache(maxsize=1 << 16)
def _describe(table: NameTable, name: str) -> TensorInfo:
    return table._describe_name(name)


def fused_qkv_layout(text: dict, model_type: str | None) -> tuple[str | None, int | None]:
    """(layout, KV heads) of the fused QKV of a model read with the Falcon or the GPT-BigCode table, as
    transformers builds it: model_type ``falcon`` from its flags (FalconConfig's defaults where unset:
    new_decoder_architecture false, multi_query true; the new architecture wins), ``bloom`` per head,
    ``gpt_bigcode`` from multi_query (GPTBigCodeConfig's default: true); (None, None) for any other model_type (a
    layout no config tells), whose fused rows are then not split."""
    if model_type == "bloom":
        return "per_head", None
    if model_type == "gpt_bigcode":
        return ("multi_query", 1) if text.get("multi_query", True) else ("per_head", None)
    if model_type != "falcon":
        return None, None
    heads = config_count(text, "num_attention_heads")
    kv = text.get("num_kv_heads")
    kv = kv if isinstance(kv, int) and kv > 0 else heads
    if text.get("new_decoder_architecture", False):
        return "grouped", kv
    if text.get("multi_query", True):
        return "multi_query", 1
    return "per_head", heads


def module_sort_key(module: str) -> int:
    return MODULE_ORDER.index(module) if module in MODULE_ORDER else len(MODULE_ORDER)
