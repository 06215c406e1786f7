"""Which weights a bigram-subnetwork mask covers, and how each one splits into labelled blocks.

Owns the per-architecture tables (keyed by ``config.model_type``, never by a name substring) of the
maskable weight matrices, as the paper does (Chang & Bergen 2025, ``select_layers``): every
attention and MLP weight matrix of every layer. Always kept (never masked): token embeddings,
unembedding, position embeddings, every norm and every bias.

Each maskable matrix is cut into :class:`Block` s labelled ``Q, K, V, O, MLP-in, MLP-out`` with the
layouts the models really use:

- GPT-2 ``attn.c_attn.weight`` is a Conv1D of shape ``(d, 3d)`` (in, out): columns in contiguous
  thirds ``q | k | v``.
- GPT-NeoX ``attention.query_key_value.weight`` is a Linear of shape ``(3d, d)`` (out, in) whose
  rows are interleaved per head: for head ``h`` rows ``[h*3s, h*3s+s)`` are q, the next ``s`` k, the
  next ``s`` v (``s = d / n_heads``), because ``GPTNeoXAttention`` views the output as
  ``(heads, 3*s)`` and chunks the last axis. The authors' code slices contiguous thirds instead.
- Llama-family models have separate ``q/k/v/o_proj``; ``gate_proj`` and ``up_proj`` are both MLP-in.

A block is (parameter, axis, indices); random subnetworks and overlap nulls are drawn within
blocks, so they keep every block's size. Masks are applied out of place
(:func:`masked_parameters`), for use with ``torch.func.functional_call``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from subnetviz.errors import ConfigError, MaskError, suggest
from subnetviz.masks import MaskSet, validate_mask_set

BLOCK_LABELS = ("Q", "K", "V", "O", "MLP-in", "MLP-out")
ATTENTION_LABELS = ("Q", "K", "V", "O")

# family -> [(regex over the parameter name with the layer as group 1, role)]. Roles: a block label,
# or a fused-QKV layout ("qkv_conv1d_thirds", "qkv_neox_interleaved").
_GPT2 = [
    (r"^(?:.+\.)?h\.(\d{1,9})\.attn\.c_attn\.weight$", "qkv_conv1d_thirds"),
    (r"^(?:.+\.)?h\.(\d{1,9})\.attn\.c_proj\.weight$", "O"),
    (r"^(?:.+\.)?h\.(\d{1,9})\.mlp\.c_fc\.weight$", "MLP-in"),
    (r"^(?:.+\.)?h\.(\d{1,9})\.mlp\.c_proj\.weight$", "MLP-out"),
]
_NEOX = [
    (r"^(?:.+\.)?layers\.(\d{1,9})\.attention\.query_key_value\.weight$", "qkv_neox_interleaved"),
    (r"^(?:.+\.)?layers\.(\d{1,9})\.attention\.dense\.weight$", "O"),
    (r"^(?:.+\.)?layers\.(\d{1,9})\.mlp\.dense_h_to_4h\.weight$", "MLP-in"),
    (r"^(?:.+\.)?layers\.(\d{1,9})\.mlp\.dense_4h_to_h\.weight$", "MLP-out"),
]
_LLAMA = [
    (r"^(?:.+\.)?layers\.(\d{1,9})\.self_attn\.q_proj\.weight$", "Q"),
    (r"^(?:.+\.)?layers\.(\d{1,9})\.self_attn\.k_proj\.weight$", "K"),
    (r"^(?:.+\.)?layers\.(\d{1,9})\.self_attn\.v_proj\.weight$", "V"),
    (r"^(?:.+\.)?layers\.(\d{1,9})\.self_attn\.o_proj\.weight$", "O"),
    (r"^(?:.+\.)?layers\.(\d{1,9})\.mlp\.gate_proj\.weight$", "MLP-in"),
    (r"^(?:.+\.)?layers\.(\d{1,9})\.mlp\.up_proj\.weight$", "MLP-in"),
    (r"^(?:.+\.)?layers\.(\d{1,9})\.mlp\.down_proj\.weight$", "MLP-out"),
]
FAMILIES: dict[str, list[tuple[str, str]]] = {"gpt2": _GPT2, "gpt_neox": _NEOX, "llama": _LLAMA}
# config.model_type -> family
MODEL_TYPES = {
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
}
# family -> module name (relative to the model) of the final norm, for pre-norm residual streams
FINAL_NORM = {"gpt2": "ln_f", "gpt_neox": "final_layer_norm", "llama": "norm"}


@dataclass(frozen=True)
class Block:
    """One labelled part of a maskable matrix: ``param[indices]`` along ``axis`` (None = all)."""

    param: str
    layer: int
    label: str  # one of BLOCK_LABELS
    axis: int | None = None
    indices: tuple[int, ...] | None = None
    # stored (in, out), as GPT-2's Conv1D: the block's output units are its columns. The row-shuffle null permutes
    # output units (the paper's code transposes GPT-2's blocks to (out, in) before it shuffles their rows)
    stored_in_out: bool = False

    def index(self) -> torch.Tensor | None:
        return None if self.indices is None else torch.tensor(self.indices, dtype=torch.long)

    def select(self, t: torch.Tensor) -> torch.Tensor:
        """The block's 2-D sub-matrix of ``t`` (a tensor of the parameter's shape), rows kept as rows."""
        if self.axis is None:
            return t
        return t.index_select(self.axis, self.index().to(t.device))

    def assign(self, t: torch.Tensor, sub: torch.Tensor) -> None:
        """Write ``sub`` (shape of :meth:`select`) back into ``t`` in place (``t`` is a fresh tensor)."""
        if self.axis is None:
            t.copy_(sub)
        else:
            t.index_copy_(self.axis, self.index().to(t.device), sub)

    def units(self, t: torch.Tensor) -> torch.Tensor:
        """The block's sub-matrix as (out, in): one row per output unit (an MLP neuron, an attention output
        dimension), whichever way the weight is stored (:attr:`stored_in_out`)."""
        sub = self.select(t)
        return sub.T if self.stored_in_out else sub

    def assign_units(self, t: torch.Tensor, sub: torch.Tensor) -> None:
        """Write ``sub`` (shape of :meth:`units`) back into ``t`` in place."""
        self.assign(t, sub.T if self.stored_in_out else sub)


def family_of(model) -> str:
    """The architecture family (``gpt2``, ``gpt_neox``, ``llama``) of a model or its config."""
    config = getattr(model, "config", model)
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_TYPES:
        raise ConfigError(
            f"model type {model_type!r} has no bigram-mask table; supported: {sorted(MODEL_TYPES)}."
            f"{suggest(str(model_type), MODEL_TYPES)}"
        )
    return MODEL_TYPES[model_type]


def _roles(model) -> dict[str, tuple[int, str]]:
    family = family_of(model)
    found: dict[str, tuple[int, str]] = {}
    for name, _ in model.named_parameters():
        for pattern, role in FAMILIES[family]:
            m = re.match(pattern, name)
            if m:
                found[name] = (int(m.group(1)), role)
                break
    if not found:
        raise ConfigError(
            f"{type(model).__name__} (model_type {model.config.model_type!r}) has none of the expected "
            f"{family} attention/MLP weight matrices (e.g. {FAMILIES[family][0][0]}); is it a {family} model?"
        )
    return found


def maskable_names(model) -> list[str]:
    """Names of the maskable weight matrices of ``model``, in parameter order."""
    return list(_roles(model))


def maskable_shapes(model) -> dict[str, tuple[int, ...]]:
    params = dict(model.named_parameters())
    return {n: tuple(params[n].shape) for n in maskable_names(model)}


def blocks_of(model) -> list[Block]:
    """Every labelled block of every maskable matrix (a partition of the mask's entries)."""
    params = dict(model.named_parameters())
    n_heads = getattr(model.config, "num_attention_heads", None) or getattr(model.config, "n_head", None)
    out: list[Block] = []
    for name, (layer, role) in _roles(model).items():
        shape = tuple(params[name].shape)
        in_out = type(model.get_submodule(name.rpartition(".")[0])).__name__ == "Conv1D"  # GPT-2's (in, out)
        if role == "qkv_conv1d_thirds":  # (d, 3d): columns q | k | v
            d = shape[1] // 3
            for i, lab in enumerate("QKV"):
                out.append(Block(name, layer, lab, 1, tuple(range(i * d, (i + 1) * d)), stored_in_out=in_out))
        elif role == "qkv_neox_interleaved":  # (3d, d): rows [q_h, k_h, v_h] per head h
            s = shape[0] // (3 * n_heads)
            for i, lab in enumerate("QKV"):
                rows = [h * 3 * s + i * s + j for h in range(n_heads) for j in range(s)]
                out.append(Block(name, layer, lab, 0, tuple(rows), stored_in_out=in_out))
        else:
            out.append(Block(name, layer, role, stored_in_out=in_out))
    return out


def full_mask(model, value: bool = True) -> MaskSet:
    """All-ones (the full model) or all-zeros (the empty subnetwork) mask over the maskable weights."""
    shapes = maskable_shapes(model)
    return MaskSet(
        {n: torch.full(s, value, dtype=torch.bool) for n, s in shapes.items()}, {"method": "full" if value else "empty"}
    )


def fitted_mask(model, mask_set: MaskSet, where: str = "mask") -> tuple[MaskSet, tuple[str, ...]]:
    """``mask_set`` as a subnetwork of ``model``: keyed by the model's parameter names and completed over every
    maskable matrix, with one-line notes on both (``(mask set, notes)``). MaskError where it does not fit.

    - Names are matched by the rule every page matches a mask's names by
      (:func:`~subnetviz.checkpoints.naming.match_names`: under another model prefix, or PEFT's
      ``base_model.model.`` and ``.base_layer.``).
    - A maskable matrix the mask does not list is outside the subnetwork (all False), the convention of every mask
      (1 = in the subnetwork, an unlisted tensor is not in it): it is zeroed in the subnetwork alone, kept when the
      subnetwork is ablated, and counted in the density. Left as it was, a mask listing layer 0's MLP kept every
      other matrix whole in "the subnetwork alone" and counted its density over those three matrices only.
    - A mask none of whose tensors is a parameter of the model (under any prefix) was made for another model:
      said once, with the model its metadata names, where the per-name refusal listed five names each with a
      "Did you mean" of another module (a Llama mask beside a GPT-2: ``gate_proj`` -> ``mlp.c_proj``)."""
    from subnetviz.checkpoints.naming import match_names
    from subnetviz.masks import renamed_masks

    shapes = maskable_shapes(model)
    params = [n for n, _ in model.named_parameters()]
    names = list(mask_set.masks)
    match = match_names(names, params)
    if names and len(match.unmatched) == len(names):
        made = next((str(mask_set.metadata[k]) for k in ("model", "base_path", "base") if mask_set.metadata.get(k)), "")
        raise MaskError(
            f"{where} was made for another model{f' ({made})' if made else ''}: none of its {len(names):,} tensors "
            f"is a parameter of this {model.config.model_type} model (it names e.g. {names[0]!r}, the model "
            f"{params[0]!r}). Choose a mask made on this model."
        )
    keyed = MaskSet(
        {**renamed_masks(mask_set.masks, match.to), **{n: mask_set.masks[n] for n in match.unmatched}},
        dict(mask_set.metadata),
    )
    kept = [n for n in keyed.masks if n not in shapes and n in set(params)]
    if kept:  # (it read "... is not a parameter of the model", of the model's own lm_head.weight)
        more = f" (and {len(kept) - 1:,} more)" if len(kept) > 1 else ""
        raise MaskError(
            f"{where}: {kept[0]!r}{more} is a parameter of the model but no attention or MLP weight matrix, and a "
            "bigram mask covers only those (embeddings, the head, norms and biases are always kept): a mask over "
            "the whole model, such as an update mask, is no bigram subnetwork."
        )
    validate_mask_set(keyed, shapes, where=f"{where} (a bigram mask covers only attention and MLP weight matrices)")
    notes = [n for n in [match.note("the model")] if n]
    missing = [n for n in shapes if n not in keyed.masks]
    if missing:
        notes.append(
            f"the mask lists {len(shapes) - len(missing):,} of the model's {len(shapes):,} maskable matrices; the "
            f"{len(missing):,} it does not list (e.g. {missing[0]!r}) are outside the subnetwork, as an unlisted "
            "tensor is: zeroed in the subnetwork alone, kept when it is ablated, and counted in the density."
        )
    full = {n: keyed.masks[n] if n in keyed.masks else torch.zeros(s, dtype=torch.bool) for n, s in shapes.items()}
    return MaskSet(full, dict(mask_set.metadata)), tuple(notes)


def check_mask_fits(model, mask_set: MaskSet, where: str = "mask") -> None:
    """MaskError unless every mask names a maskable matrix of ``model`` with its shape, under any model prefix
    (:func:`fitted_mask`, which says why)."""
    fitted_mask(model, mask_set, where)


def masked_parameters(model, mask_set: MaskSet, mode: str = "keep") -> dict[str, torch.Tensor]:
    """Out-of-place masked weights for ``functional_call``, one per maskable matrix: ``keep`` zeros the weights
    outside the mask (the subnetwork alone), ``ablate`` zeros the weights inside it (the complement). A maskable
    matrix the mask set does not list is outside it (:func:`fitted_mask`): zeroed by ``keep``, whole under
    ``ablate``. The model is never modified."""
    if mode not in ("keep", "ablate"):
        raise ConfigError(f"mask mode {mode!r}; expected 'keep' or 'ablate'.")
    fitted, _ = fitted_mask(model, mask_set)
    params = dict(model.named_parameters())
    out = {}
    for name, m in fitted.masks.items():
        w = params[name].detach()
        keep = m.to(w.device) if mode == "keep" else ~m.to(w.device)
        out[name] = w * keep.to(w.dtype)
    return out


def load_released_mask(path: str | Path, model) -> MaskSet:
    """Import a released ``subnetwork_dict_lambda*.pickle`` (restricted unpickler) and check it fits
    ``model``: names are aligned across the ``transformer.`` / ``gpt_neox.`` prefix, shapes must match,
    otherwise MaskError (e.g. a GPT-2 mask offered to a Pythia checkpoint)."""
    from subnetviz.masks import import_bigram_pickle

    ms = import_bigram_pickle(path)
    shapes = maskable_shapes(model)
    prefix = getattr(model, "base_model_prefix", "") + "."
    aligned: dict[str, torch.Tensor] = {}
    for name, m in ms.masks.items():
        cand = [name, prefix + name, name[len(prefix) :] if name.startswith(prefix) else name]
        target = next((c for c in cand if c in shapes), name)
        aligned[target] = m
    out = MaskSet(aligned, dict(ms.metadata))
    family = family_of(model)
    check_mask_fits(model, out, where=f"{path} (for a {family} model)")
    return out


def load_local_model(spec: str | Path):
    """A float32 ``AutoModelForCausalLM`` in eval mode from a local folder or a hub id already in the
    local Hugging Face cache (never downloads)."""
    from subnetviz.checkpoints.models import load_causal_lm

    return load_causal_lm(model_folder(spec)).eval()


def model_skeleton(spec: str | Path):
    """The model of ``spec`` built from its config on the meta device: its parameters' names and shapes, no
    weights read or memory allocated (for checking a mask before the model is loaded). A config transformers
    refuses is one CheckpointError naming ``spec`` (:func:`~subnetviz.checkpoints.models.model_config`)."""
    from subnetviz.checkpoints.models import meta_model

    model_folder(spec)  # (first: no config.json is a ConfigError here)
    return meta_model(spec)


def model_folder(spec: str | Path) -> Path:
    """The folder of a local model or of a hub id in the local HF cache
    (:func:`subnetviz.checkpoints.models.model_folder`); a ConfigError without config.json, as the bigram
    job's configuration reports it (a hub id not in the cache stays a NotCachedError)."""
    from subnetviz.checkpoints.models import model_folder as folder_of
    from subnetviz.errors import CheckpointError, NotCachedError

    try:
        return folder_of(spec)
    except NotCachedError:
        raise
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from None


def apply_released_mask(path: str | Path, model_spec: str | Path):
    """Load the local checkpoint ``model_spec`` (folder or cached hub id, e.g. ``EleutherAI/pythia-160m``)
    and the released mask ``path`` for it. Returns ``(model, mask_set)``; evaluate the subnetwork
    with :func:`masked_parameters` (the model itself is never modified)."""
    model = load_local_model(model_spec)
    return model, load_released_mask(path, model)


def save_released_mask(path: str | Path, model_spec: str | Path, out: str | Path) -> Path:
    """Convert a released pickle for the local checkpoint ``model_spec`` into a checked, bit-packed
    safetensors mask at ``out`` (so the app never unpickles it again)."""
    from subnetviz.masks import save_mask_set

    _, ms = apply_released_mask(path, model_spec)
    ms.metadata["model"] = str(model_spec)
    return save_mask_set(out, ms)
