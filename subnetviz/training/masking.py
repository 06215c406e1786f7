"""Subnetwork-only training: gradient masks, masked weight decay, and the after-the-fact proof.

How a masked run keeps every parameter outside the mask *bit-identical* with AdamW:

1. A gradient hook on each parameter (``param.register_hook``, the same place as the paper's
   released verl code) zeroes the incoming gradient outside the mask before it is accumulated, so
   ``.grad`` is exactly 0 outside the mask from the first backward pass on. Under DDP the hook
   runs before the all-reduce, so the reduced gradient is 0 there on every rank too.
2. With zero gradients from step 0, AdamW's ``exp_avg`` and ``exp_avg_sq`` stay exactly 0 on those
   entries, so the update is ``-lr * 0 / (sqrt(0) + eps) = -0.0`` and ``w + (-0.0) == w`` bitwise.
   Gradient clipping multiplies the zeros by its factor, which is NaN when a gradient inside the
   mask is NaN or Inf (transformers always computes the total norm, with ``max_norm=inf`` when
   clipping is off): 0 x NaN = NaN. So :class:`MaskedUpdateCallback` zeroes the gradients outside
   the mask once more right before each optimizer step (``on_pre_optimizer_step``, after the
   clipping): whatever happens inside, AdamW sees exact zeros outside.
3. AdamW's decoupled weight decay (``w *= 1 - lr*wd``) would move masked-out weights, so the
   optimizer runs with ``weight_decay=0`` and :class:`MaskedUpdateCallback` applies the same
   decoupled decay itself just before each optimizer step, only where the mask is 1 (and only on
   the parameters transformers decays, not biases or norms, and that have a gradient, as AdamW
   steps only those). A full run uses the same callback with no mask, so both runs follow one recipe.
4. :func:`check_outside_mask` compares the saved model with the base bitwise, in the stored dtype,
   tensor by tensor, and counts changed entries inside and outside the mask.

Parameters that a mask file does not list are frozen (outside the subnetwork). Mask names are the model's
``named_parameters()`` names or the names the checkpoint stores them under (transformers' renamings on load,
such as GPT-NeoX's ``embed_out.weight`` for ``lm_head.weight``), under any model prefix or PEFT's, by the rule
every page matches a mask's names by (:func:`model_names`); a mask that does not fit is refused before
training with the closest names suggested.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor
from transformers import TrainerCallback

from subnetviz.analysis.bits import bits_differ
from subnetviz.checkpoints import align, open_checkpoint
from subnetviz.checkpoints.experts_layout import loaded_into, param_pieces
from subnetviz.checkpoints.naming import TIED_HEADS, _tower, by_short_name, mask_key, match_names, strip_prefix
from subnetviz.errors import AlignmentError, MaskError
from subnetviz.masks import MaskSet, load_mask_set, validate_mask_set
from subnetviz.training.mask_origin import random_provenance
from subnetviz.training.sharded import local_mask


class StoredNames(dict):
    """What :func:`tied_heads` says of a model: each stored tensor name that is no parameter of the model but loads
    into one -> that parameter's name (the mapping), and ``buffers``: the names of the tensors the model holds that
    are no parameter (its buffers, persistent or not, and any other entry of its state dict: the router's
    ``mlp.gate.e_score_correction_bias`` of DeepSeek-V3, GLM-4.5-MoE, dots1, MiniMax-M2), under the model's names and
    the ones a checkpoint stores them by where transformers renames them on load (Step-3.5's ``moe.router_bias``).
    Training changes no buffer. ``heads``: the stored names of the mapping that are an output head the model ties to
    its input embedding (no tensor a tied model stores), apart from the names it only renames on load (GPT-NeoX's
    ``embed_out.weight``, which the model stores as it is)."""

    def __init__(self, loads: dict[str, str] | None = None, buffers=(), heads=()):
        super().__init__(loads or {})
        self.buffers = frozenset(buffers)
        self.heads = frozenset(heads)


def tied_heads(model) -> StoredNames:
    """The stored tensor names that are no parameter of ``model`` -> the parameter transformers loads each into:
    the output heads it ties to its input embedding (a tied head is no parameter of its own: ``named_parameters``
    lists the one tensor under the embedding's name), and the names its conversion mapping renames on load
    (:func:`renamed_on_load`: GPT-NeoX stores its head as ``embed_out.weight``, the parameter is
    ``lm_head.weight``). A mask names tensors as the checkpoint stores them; these are folded into the
    parameters they load into (:func:`fold_tied_heads`). Its ``buffers``: the model's tensors that are no parameter
    (:func:`model_buffers`), whose entries a mask may hold and training leaves out (:func:`without_buffers`)."""
    out = StoredNames(renamed_on_load(model), model_buffers(model))
    try:
        inp, out_emb = model.get_input_embeddings(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return out
    if inp is None or out_emb is None or getattr(out_emb, "weight", None) is not getattr(inp, "weight", None):
        return out
    name = next((n for n, p in model.named_parameters() if p is inp.weight), None)
    if name is not None:
        out.update({head: name for head in TIED_HEADS})
        out.heads = frozenset(TIED_HEADS)
    return out


def model_buffers(model) -> frozenset[str]:
    """The names of the tensors ``model`` holds that are no parameter: its buffers (``named_buffers``) and whatever
    else its state dict holds beside the parameters, each also under the name a checkpoint stores it by where
    transformers renames it on load (:func:`_stored_names`). An update mask lists every tensor the two checkpoints
    store: a persistent buffer (DeepSeek-V3's ``e_score_correction_bias``) is among them."""
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    held = {n for n, _ in model.named_buffers(remove_duplicate=False)} | set(model.state_dict(keep_vars=True))
    held -= params
    return frozenset(held | set(_stored_names(model, held, held | params)))


def renamed_on_load(model) -> dict[str, str]:
    """The name a checkpoint stores each parameter of ``model`` under, where transformers 5 renames it on load
    (stored name -> parameter name): its conversion mapping's renamings run backwards, as ``save_pretrained``
    writes them, and kept only where the forward mapping (:func:`~subnetviz.checkpoints.experts_layout
    .loaded_into`, the one the Behaviour page writes weights back by) loads that name into that parameter again.
    Converters (experts packed on load) are left to :func:`packed_masks`. {} where transformers has no mapping."""
    params = dict(model.named_parameters())
    return _stored_names(model, params, set(params))


def _stored_names(model, names, own: set[str]) -> dict[str, str]:
    """Of ``names`` (tensors of ``model``), the ones transformers 5 renames on load, by the name a checkpoint stores
    each under (stored name -> the model's name), as :func:`renamed_on_load` finds them; ``own``: the model's names,
    which no stored name of another tensor can be. {} where transformers has no mapping."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter

        backwards = [t.reverse_transform() for t in get_model_conversion_mapping(model)[::-1]]
    except Exception:  # noqa: BLE001 - another transformers' API: masks by the parameters' own names only
        return {}
    renamings = [t for t in backwards if not isinstance(t, WeightConverter)]
    stored: dict[str, str] = {}
    for name in names:
        try:
            target = name
            for renaming in renamings:
                target, _ = renaming.rename_source_key(target)
        except Exception:  # noqa: BLE001 - a name its patterns cannot take: stored as it is
            continue
        if target != name and target not in own:
            stored[target] = name
    loaded, _ = loaded_into(model, {s: s for s in stored})
    return {keys[0]: param for param, keys in loaded.items() if len(keys) == 1 and stored.get(keys[0]) == param}


def stored_renamings(ck) -> dict[str, str]:
    """The tensors of checkpoint ``ck`` that transformers 5 loads into a parameter of another name and the same
    shape (stored name -> parameter name), by the conversion mapping of the model ``ck``'s config builds (on the
    meta device: no weights). A mask keyed by the model's parameters (the one a run trains with) names GPT-NeoX's
    stored ``embed_out.weight`` as ``lm_head.weight``. {} where transformers cannot build the model."""
    config = dict(ck.config or {})
    try:
        from transformers import AutoConfig

        from subnetviz.checkpoints.models import text_model_class

        model_type = config.pop("model_type")
        built = AutoConfig.for_model(model_type, **config)
        with torch.device("meta"):  # (the class a run's model is loaded with: a vision-language model's too)
            model = text_model_class(built).from_config(built)
    except Exception:  # noqa: BLE001 - a config transformers cannot build: the names as stored only
        return {}
    params = {n: tuple(p.shape) for n, p in model.named_parameters()}
    loaded, _ = loaded_into(model, {n: n for n in ck.names if n not in params})
    out = {}
    for param, keys in loaded.items():
        if len(keys) == 1 and keys[0] != param and param in params and tuple(ck.meta(keys[0]).shape) == params[param]:
            out[keys[0]] = param
    return out


def fold_tied_heads(masks: dict[str, torch.Tensor], tied: dict[str, str]) -> dict[str, torch.Tensor]:
    """``masks`` with an entry for a stored name that loads into another parameter (``tied``: stored name -> that
    parameter's name, :func:`tied_heads`) merged into that parameter's entry: an output head the model ties to its
    input embedding (either mask's entries may change: the model computes both with the one tensor), or a name
    transformers renames on load (GPT-NeoX's ``embed_out.weight``). An update mask of a tied base against a
    finetune that untied its head lists the head apart, under its own name; an update mask of a GPT-NeoX names
    the head as stored; training refused both as no parameter. A stored name is looked up as it is, else by its
    :func:`~subnetviz.checkpoints.naming.mask_key` (PEFT's ``base_model.model.lm_head.weight`` is the head)."""
    out = dict(masks)
    # (by mask_key: a head under another model prefix or PEFT's, base_model.model.lm_head.weight, folds too)
    for key in [k for k in masks if k in tied or mask_key(k) in tied]:
        embed = tied[key] if key in tied else tied[mask_key(key)]
        target = next((k for k in out if mask_key(k) == mask_key(embed)), embed)
        head = out.pop(key).to(torch.bool)
        if target in out and tuple(out[target].shape) != tuple(head.shape):
            raise MaskError(
                f"mask {key}: {tuple(head.shape)}, the model loads it into {embed} whose mask is "
                f"{tuple(out[target].shape)}."
            )
        out[target] = head if target not in out else out[target].to(torch.bool) | head
    return out


def model_names(
    masks: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], notes: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """``masks`` keyed by the model's parameter names (``shapes``' keys) by the rule every page matches a mask's
    names by (:func:`~subnetviz.checkpoints.naming.match_names`): a name the model has as it is is itself, another
    is the parameter with the same name without its model prefix or PEFT's wrapping (GPT-2's hub release stores
    ``h.0.attn.c_attn.weight``, the model's parameter is ``transformer.h.0.attn.c_attn.weight``; PEFT's
    ``named_parameters()`` give ``base_model.model.model.layers.0.mlp.up_proj.base_layer.weight``). The names
    that match no parameter are kept as they are, for the folds after this one (tied heads, experts stored one by
    one) or the refusal that names them. Where names were matched across prefixes, one line is appended to
    ``notes``. Without it a base's own update mask was refused as naming no parameter of the model, and a PEFT
    model's mask everywhere."""
    match = match_names(masks, shapes)
    note = match.note("the model trained")
    if note and notes is not None:
        notes.append(note)
    return {match.to.get(key, key): m for key, m in masks.items()}


def load_training_mask(
    spec: str,
    shapes: dict[str, tuple[int, ...]],
    *,
    seed: int = 0,
    tied: StoredNames | dict[str, str] | None = None,
    notes: list[str] | None = None,
) -> tuple[dict[str, torch.Tensor], MaskSet]:
    """Read the mask of a config's ``mask`` field and check it against ``shapes`` (name -> shape).

    ``spec`` is a mask file or ``"random:<mask file>"``: then every tensor gets a uniformly random
    mask with exactly as many ones as the file's tensor (same per-tensor density), drawn from a
    generator seeded with ``seed``. Returns ``(name -> bool tensor for every parameter, the mask
    set actually used)`` (a tied head's entry merged into the embedding's there too: :func:`with_tied_heads_merged`);
    parameters the file does not list come back all False (frozen). ``tied``: the model's
    tied heads (:func:`tied_heads`), whose own mask entries are merged into the embedding's, and its buffers, whose
    entries are left out with a line appended to ``notes`` (:func:`without_buffers`: an update mask of a DeepSeek-V3
    holds its routers' ``e_score_correction_bias``, which the model keeps as a buffer). A mask written for a
    mixture of experts stored one expert at a time (an update mask of a Qwen-MoE, Mixtral, DeepSeek release) is
    packed into the parameters transformers 5 holds those experts in (:func:`packed_masks`). Entries of a vision or
    audio tower the model does not build (Llama-4's text model, trained from a release that stores its vision
    tower) are left out where they select nothing, with a line appended to ``notes`` (:func:`without_unbuilt_towers`);
    so is a line saying that the file's names were matched to the model's across prefixes (:func:`model_names`).
    """
    is_random = spec.startswith("random:")
    path = spec[len("random:") :] if is_random else spec
    source = load_mask_set(path)
    # A tied head's entry merged into the embedding's first: a random control then draws the merged tensor's own
    # count (drawn apart and merged after, two independent draws overlapped by chance only, and the control
    # trained 66 % more embedding entries than the real mask whose head and embedding changes coincide).
    ms = with_tied_heads_merged(source, tied or {})
    if is_random:  # per tensor of the file (each stored expert apart, before they are packed)
        # Drawn under the file's names, as the run saves it: drawn under the model's, the saved control named
        # GPT-NeoX's head lm_head.weight, which no tensor of the saved model (embed_out.weight) is.
        drawn = {}
        gen = torch.Generator().manual_seed(int(seed))
        # Sorted names: the draw must not depend on the file's tensor order.
        for name in sorted(ms.masks):
            m = ms.masks[name]
            k = int(m.sum())
            flat = torch.zeros(m.numel(), dtype=torch.bool)
            flat[torch.randperm(m.numel(), generator=gen)[:k]] = True
            drawn[name] = flat.reshape(m.shape)
        # Its own provenance, the source's under density_source_meta: it is no finetune's subnetwork. Drawn at the
        # merged tensor's count where a tied head was merged, which it says (the file's embedding count is not it).
        meta = random_provenance(str(path), source.metadata, seed)
        if "merged_tied_heads" in ms.metadata:
            meta["merged_tied_heads"] = ms.metadata["merged_tied_heads"]
        ms = MaskSet(drawn, meta)
    matched: list[str] = []
    masks = fold_tied_heads(model_names(dict(ms.masks), shapes, matched), tied or {})
    kept, note = without_unbuilt_towers(packed_masks(masks, shapes), shapes, path)
    kept, held = without_buffers(kept, shapes, getattr(tied, "buffers", ()), path)
    packed = MaskSet(kept, ms.metadata)
    validate_mask_set(packed, shapes, where=f"mask {path}")
    if notes is not None:  # (said of a mask that fits: a refusal says why it does not)
        notes += [f"mask {path}: {n}" for n in matched] + [n for n in [note, held] if n]
    masks = dict(packed.masks)
    full = {n: masks.get(n, torch.zeros(s, dtype=torch.bool)) for n, s in shapes.items()}
    if not any(bool(m.any()) for m in full.values()):
        raise MaskError(f"mask {path}: selects no parameter entries; training it would change nothing.")
    return full, ms


def with_tied_heads_merged(ms: MaskSet, tied: StoredNames | dict[str, str]) -> MaskSet:
    """The mask set a run saves as the mask it used (``subnetwork_mask.safetensors``): the file as read (``ms``),
    with each entry of an output head the model ties to its input embedding (``tied``' ``heads``; every name of a
    plain dict) merged into the embedding's entry, as the run enforces it (:func:`fold_tied_heads`), the file's
    names kept otherwise. A tied model stores no head: read as written, the head's entry named no tensor of the
    saved model and the embedding's left out the entries trained for the head, so the saved model had changed
    entries outside its own mask. ``ms`` itself where nothing is merged; else the file's provenance, its counts
    (``density``, ``count``, ``numel``) left to the merged mask's and ``merged_tied_heads`` saying what was merged."""
    heads = getattr(tied, "heads", None)
    ties = {k: v for k, v in tied.items() if heads is None or k in heads}
    merged = [k for k in ms.masks if k in ties or mask_key(k) in ties]
    if not merged:
        return ms
    meta = {k: v for k, v in ms.metadata.items() if k not in ("density", "count", "numel")}
    embed = ", ".join(sorted({ties.get(k, ties.get(mask_key(k))) for k in merged}))
    meta["merged_tied_heads"] = f"{', '.join(merged)} merged into the entry of the tied input embedding {embed}"
    return MaskSet(fold_tied_heads(dict(ms.masks), ties), meta)


def without_unbuilt_towers(
    masks: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], path: str
) -> tuple[dict[str, torch.Tensor], str | None]:
    """``masks`` without its entries for the tensors outside the language model (a vision or audio tower, the
    projector, an omni model's speech side: the naming's tower blocks) that name no parameter of ``shapes``, and
    the note saying so (None where there were none). An update mask lists every compared tensor, an untouched
    vision tower's all zeros included, while transformers' causal-LM class of a Llama-4 release builds the text
    model only: those zeros freeze nothing there. MaskError, one line, where such an entry selects anything: the
    model trained has no such tensor to train."""
    unbuilt = [k for k in masks if k not in shapes and _tower(strip_prefix(k))]
    if not unbuilt:
        return masks, None
    held = [k for k in unbuilt if bool(masks[k].any())]
    if held:
        count = sum(int(masks[k].sum()) for k in held)
        raise MaskError(
            f"mask {path}: {count:,} entries in {len(held)} tensor(s) outside the language model ({_listed(held)}) are "
            "in the subnetwork, but the model trained is the text model only and builds no vision or audio tower; "
            "train a mask of the language model's tensors."
        )
    gone = set(unbuilt)
    note = (
        f"mask {path}: {len(unbuilt)} tensor(s) outside the language model ({_listed(unbuilt)}), none of whose "
        "entries is in the subnetwork, are left out: the model trained is the text model only."
    )
    return {k: m for k, m in masks.items() if k not in gone}, note


def buffer_entries(masks, shapes: dict[str, tuple[int, ...]], buffers) -> list[str]:
    """The names of ``masks`` that name no parameter of ``shapes`` but a buffer of the model (``buffers``:
    :attr:`StoredNames.buffers`), as it is or under another model prefix or PEFT's (:func:`~subnetviz.checkpoints
    .naming.mask_key`)."""
    keys = {mask_key(b) for b in buffers}
    return [k for k in masks if k not in shapes and (k in buffers or mask_key(k) in keys)]


def without_buffers(
    masks: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], buffers, path: str
) -> tuple[dict[str, torch.Tensor], str | None]:
    """``masks`` without its entries for tensors the model holds as buffers, not parameters (``buffers``:
    :func:`buffer_entries`), and the one line saying which and how many of their entries the mask selected (None
    where there were none). An update mask lists every tensor its checkpoints store: DeepSeek-V3's, GLM-4.5-MoE's
    and MiniMax-M2's routers keep ``e_score_correction_bias`` as a persistent buffer, and training refused the mask
    as naming no parameter. No optimizer step changes a buffer, so leaving the entries out keeps the run's
    outside-the-mask check exact: the buffer is compared as outside the mask, and unchanged. Names that are neither
    a parameter nor a buffer are left for the refusal."""
    held = buffer_entries(masks, shapes, buffers)
    if not held:
        return masks, None
    selected = sum(int(masks[k].sum()) for k in held)
    note = (
        f"mask {path}: {len(held)} tensor(s) the model holds as buffers, not parameters ({_listed(held)}), are left "
        f"out ({selected:,} of their entries in the mask): training changes no buffer, they stay as the base has them."
    )
    gone = set(held)
    return {k: m for k, m in masks.items() if k not in gone}, note


def _listed(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def packed_masks(masks: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """``masks`` with the tensors a checkpoint stores one by one written into the model parameter they are packed
    into (expert e's gate and up into ``mlp.experts.gate_up_proj[e]``, its down into ``down_proj[e]``, Mixtral's
    ``block_sparse_moe.`` router as the model's ``mlp.gate``: :func:`~subnetviz.checkpoints.experts_layout
    .param_pieces`), for each parameter of ``shapes`` the mask does not name itself; the rest as it is. Experts the
    mask does not name are frozen there (all False), as any parameter it does not name."""
    short = {strip_prefix(k): k for k in masks}
    mask_shapes = {s: tuple(masks[k].shape) for s, k in short.items()}
    out, used = dict(masks), set()
    for name, shape in shapes.items():
        if name in masks or strip_prefix(name) in short:
            continue
        pieces = param_pieces(strip_prefix(name), tuple(shape), mask_shapes, partial=True)
        if not pieces:
            continue
        full = torch.zeros(tuple(shape), dtype=torch.bool)
        for piece, index in pieces:
            full[index] = masks[short[piece]].to(torch.bool)
            used.add(short[piece])
        out[name] = full
    return {k: m for k, m in out.items() if k not in used}


class GradientMask:
    """Gradient hooks ``g -> where(mask, g, 0)`` on a model's parameters; :meth:`remove` takes them off.

    ``masks``: name -> bool tensor of the parameter's (full) shape. All-True masks get no hook
    (nothing to do); parameters not in ``masks`` are left alone. A DTensor parameter (FSDP2) gets a
    ``register_post_accumulate_grad_hook`` that masks its local gradient shard (after the
    reduce-scatter) with the mask sharded like the parameter; ``register_hook`` never fires there.
    """

    def __init__(self, model: torch.nn.Module, masks: dict[str, torch.Tensor]):
        self._handles = []
        self.pairs: list[tuple[torch.nn.Parameter, torch.Tensor]] = []  # (parameter, its local mask), hooked
        params = dict(model.named_parameters())
        missing = [n for n in masks if n not in params]
        if missing:
            raise MaskError(f"mask names not among the model's parameters: {missing[:3]}")
        for name, mask in masks.items():
            p = params[name]
            if bool(mask.all()):
                continue
            m = local_mask(mask, p)
            self.pairs.append((p, m))
            if isinstance(p, DTensor):
                self._handles.append(p.register_post_accumulate_grad_hook(lambda q, m=m: _mask_local_grad(q, m)))
                continue
            # where(), not g * m: a NaN or Inf gradient must still become exactly 0 outside the mask.
            self._handles.append(p.register_hook(lambda g, m=m: torch.where(m, g, 0.0)))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _mask_local_grad(param: torch.Tensor, m: torch.Tensor) -> None:
    if param.grad is not None:
        g = param.grad.to_local()
        g.copy_(torch.where(m, g, 0.0))


class MaskedUpdateCallback(TrainerCallback):
    """Masks gradients and applies decoupled weight decay only inside the mask.

    ``masks`` None = full finetune (decay applies everywhere transformers would decay). The
    trainer's own ``weight_decay`` must be 0 (:func:`subnetviz.training.trainers.build_trainer`
    sets it); this callback does the decay so it can respect the mask.
    """

    def __init__(
        self, masks: dict[str, torch.Tensor] | None, weight_decay: float, decay_names: set[str], *, zero: bool = False
    ):
        self.masks = masks
        self.zero = zero  # DeepSpeed ZeRO: masks and decay go through zero.ZeroGradientMask instead
        self.weight_decay = float(weight_decay)
        self.decay_names = set(decay_names)
        self._hooks: GradientMask | None = None
        self._decay: list[tuple[torch.nn.Parameter, torch.Tensor | None]] = []
        self._checked = False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise RuntimeError("MaskedUpdateCallback needs the model in on_train_begin")
        if self.zero:
            return  # installed by train() on the DeepSpeed engine (zero.ZeroGradientMask)
        if self.masks is not None and self._hooks is None:
            self._hooks = GradientMask(model, self.masks)
        if self.weight_decay > 0:
            self._decay = []
            for name, p in model.named_parameters():
                if name not in self.decay_names or not p.requires_grad:
                    continue
                if self.masks is None or bool(self.masks[name].all()):
                    self._decay.append((p, None))
                elif bool(self.masks[name].any()):
                    self._decay.append((p, local_mask(self.masks[name], p)))

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is None:
            return
        if not self._checked:
            # The optimizer's own decoupled decay would move masked-out weights: it must be off.
            wds = {float(g.get("weight_decay", 0.0)) for g in optimizer.param_groups}
            if wds != {0.0}:
                raise RuntimeError(f"optimizer weight_decay must be 0 under MaskedUpdateCallback, found {wds}")
            self._checked = True
        with torch.no_grad():
            for p, m in self._hooks.pairs if self._hooks is not None else ():
                # After clipping: a NaN total norm (NaN or Inf inside the mask) scaled the zeros to NaN. (The
                # hook's own mask: a second, inverted copy of every mask would double their memory.)
                g = p.grad
                if g is not None:
                    (g.to_local() if isinstance(g, DTensor) else g).masked_fill_(m.logical_not(), 0.0)
        if not self._decay:
            return
        lr = float(optimizer.param_groups[0]["lr"])
        factor = 1.0 - lr * self.weight_decay
        with torch.no_grad():
            for p, m in self._decay:
                if p.grad is None:
                    # AdamW steps (and decays) only the parameters with a gradient: a vision-language model's
                    # vision tower, which a text run never reaches, was decayed here and changed.
                    continue
                if isinstance(p, DTensor):  # FSDP2: decay this process's shard with its part of the mask
                    p = p.to_local()
                if m is None:
                    p.mul_(factor)
                else:
                    # torch.where keeps a factor of exactly 1.0 outside the mask: w * 1.0 == w bitwise.
                    p.mul_(torch.where(m, torch.tensor(factor, dtype=p.dtype, device=p.device), 1.0))

    def on_train_end(self, args, state, control, **kwargs):
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None


@dataclass(frozen=True)
class MaskCheck:
    """Bitwise comparison of a trained model with its base, split by the mask."""

    outside_mask_identical: bool
    changed_inside: int
    changed_outside: int
    numel_inside: int
    numel_outside: int
    tensors_compared: int

    def to_dict(self) -> dict:
        return {
            "outside_mask_identical": self.outside_mask_identical,
            "changed_inside": self.changed_inside,
            "changed_outside": self.changed_outside,
            "numel_inside": self.numel_inside,
            "numel_outside": self.numel_outside,
            "tensors_compared": self.tensors_compared,
        }


class _Counts:
    """Entries inside / outside a mask and how many of each changed, summed over tensors."""

    def __init__(self):
        self.inside = self.outside = self.changed_in = self.changed_out = 0

    def add(self, diff: torch.Tensor, mask: torch.Tensor | bool | None) -> None:
        """``diff``: the tensor's changed entries; ``mask``: its mask, True (no masks: all inside) or
        None (a tensor the masks do not cover: all outside)."""
        m = torch.full_like(diff, mask is True) if mask is None or mask is True else mask.to(torch.bool)
        n_in = int(m.sum())
        self.inside += n_in
        self.outside += diff.numel() - n_in
        self.changed_in += int((diff & m).sum())
        self.changed_out += int((diff & ~m).sum())

    def check(self, tensors: int) -> MaskCheck:
        """The verdict; with no tensor compared nothing shows the entries outside unchanged: not identical."""
        ok = self.changed_out == 0 and tensors > 0
        return MaskCheck(ok, self.changed_in, self.changed_out, self.inside, self.outside, tensors)


class _MaskOf:
    """The mask of a checkpoint's tensor: by its name, else by the name without a ``model.``-style prefix (a GPT-2
    base stored without ``transformer.``, masks named like the model's parameters); a head tied to the input
    embedding (not a parameter of its own, so no mask lists it) has the embedding's mask: it changes exactly
    where the embedding changes; a tensor transformers renames on load (GPT-NeoX's stored ``embed_out.weight``)
    has the mask of the parameter it loads into (``lm_head.weight``: :func:`stored_renamings`). ``masks`` None:
    everything inside (True)."""

    def __init__(self, masks: dict[str, torch.Tensor] | None, ck):
        self.masks = masks
        self.param_of = stored_renamings(ck)  # stored name -> the parameter it loads into, where they differ
        self.keyed = {k: masks[n] for k, n in by_short_name(masks or {}).items()}
        # a parameter packing experts the checkpoint stores one by one: each stored tensor's slice of its mask
        stored = {strip_prefix(n): tuple(ck.meta(n).shape) for n in ck.names}
        for key, m in (masks or {}).items():
            if strip_prefix(key) not in stored:
                for piece, index in param_pieces(strip_prefix(key), tuple(m.shape), stored) or ():
                    self.keyed.setdefault(piece, m[index] if index else m)
        self.embedding: str | None = None
        if ck.tied_embeddings:  # (the one a tied head is: Gemma-4's per-layer embedding beside it is not)
            self.embedding = ck.input_embedding

    def __call__(self, *names: str) -> torch.Tensor | bool | None:
        if self.masks is None:
            return True
        for name in names:
            m = self.masks.get(name)
            if m is None and name in self.param_of:
                m = self.masks.get(self.param_of[name])
            if m is None:
                m = self.keyed.get(strip_prefix(name))
            if m is not None:
                return m
        if self.embedding is not None and any(strip_prefix(n) in TIED_HEADS for n in names):
            return self(self.embedding)
        return None


def check_outside_mask(
    base_dir: str | os.PathLike, trained_dir: str | os.PathLike, masks: dict[str, torch.Tensor] | None
) -> MaskCheck:
    """Count entries that differ bitwise between two saved models, inside vs outside ``masks``.

    Streams one tensor pair at a time through :mod:`subnetviz.checkpoints`. Tensors are lined up as
    :func:`subnetviz.checkpoints.align` lines them up (``model.``-style prefixes ignored, a head tied to the
    embedding counted with it; one both store is compared too, under the embedding's mask). Tensors present in
    only one folder, or with different dtypes or shapes, are refused (a masked run never changes either), and so
    are folders with no tensor in common. ``masks`` None counts everything as inside.
    """
    ck_base, ck_new = open_checkpoint(base_dir), open_checkpoint(trained_dir)
    try:
        try:
            al = align([ck_base, ck_new])
        except AlignmentError as exc:
            raise MaskError(f"{base_dir} vs {trained_dir}: {exc}") from None
        only = [n for i in sorted(al.only_in) for n in al.only_in[i]]
        if only:
            raise MaskError(f"{base_dir} and {trained_dir} hold different tensors, e.g. {only[:3]}.")
        pairs = [t.names for t in al.tensors]
        if ck_base.tied_embeddings and ck_new.tied_embeddings:  # a tied head both store: compared too
            pairs += [(h, h) for h in TIED_HEADS if h in ck_base.names and h in ck_new.names]
        for a_name, b_name in pairs:  # from the headers: refused before any tensor is read
            a, b = ck_base.meta(a_name), ck_new.meta(b_name)
            if a.dtype != b.dtype or a.shape != b.shape:
                raise MaskError(f"{a_name}: base {a.dtype}{tuple(a.shape)} vs trained {b.dtype}{tuple(b.shape)}.")
        mask_of = _MaskOf(masks, ck_base)
        counts = _Counts()
        for a_name, b_name in sorted(pairs):
            diff = bits_differ(ck_base.get(a_name), ck_new.get(b_name))
            counts.add(diff, mask_of(a_name, b_name))
    finally:
        ck_base.close()
        ck_new.close()
    return counts.check(len(pairs))


def check_state_outside_mask(
    base_dir: str | os.PathLike, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None
) -> MaskCheck:
    """Like :func:`check_outside_mask`, on a trained model's gathered full state dict (fp32 master
    weights, before the bf16 save) against the base read in its stored dtype and widened exactly.

    The base's tensors are lined up with the state's names as :func:`check_outside_mask` lines them up
    (``model.``-style prefixes ignored; a tied head under the embedding's mask; a tensor transformers renames on
    load, GPT-NeoX's ``embed_out.weight``, against the parameter it loads into); the state's other entries
    (buffers such as rotary tables are not in checkpoints) are not compared, nor base tensors the live model
    names otherwise (experts transformers fuses on load; the saved model's check compares those). A base tensor
    of another shape is refused; with no tensor compared the check is not identical.
    """
    ck = open_checkpoint(base_dir)
    try:
        keyed = by_short_name(state)
        mask_of = _MaskOf(masks, ck)
        counts, n = _Counts(), 0
        for name in sorted(ck.names):
            renamed = mask_of.param_of.get(name)
            key = name if name in state else renamed if renamed in state else keyed.get(strip_prefix(name))
            if key is None:
                continue
            new = state[key].detach().cpu()
            base = ck.get(name)
            if tuple(base.shape) != tuple(new.shape):
                raise MaskError(f"{name}: base {tuple(base.shape)} vs trained {tuple(new.shape)}.")
            diff = bits_differ(base.to(new.dtype), new)
            counts.add(diff, mask_of(key, name))
            n += 1
    finally:
        ck.close()
    return counts.check(n)
