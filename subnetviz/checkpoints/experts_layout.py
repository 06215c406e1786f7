"""Packed experts against experts stored one by one: one layout for the checkpoints of a comparison.

transformers 5 holds the experts of Qwen-MoE, Mixtral, OLMoE, DeepSeek-V3, GLM-4-MoE and the families it
converts alike packed (``mlp.experts.gate_up_proj`` (E, 2I, H), each expert's rows [gate; up], and
``mlp.experts.down_proj`` (E, H, I)), and ``save_pretrained`` writes them one by one, as their releases store
them (``mlp.experts.<e>.gate_proj.weight`` (I, H), ``up_proj``, ``down_proj``; Mixtral's
``block_sparse_moe.experts.<e>.w1`` / ``w3`` / ``w2``). A finetune saved from the in-memory state dict
(``model.state_dict()`` through safetensors, a consolidated FSDP or DeepSpeed checkpoint) is packed. By name it
shares no expert tensor with its release: every expert, most of an MoE's parameters and all of its update, fell
outside the comparison, listed only as "only in" one checkpoint.

Nemotron-H's (Nemotron-3 Nano / Super) experts have no gate: its releases store ``mixer.experts.<e>.up_proj.weight``
(I, H) and ``down_proj.weight`` (H, I), which transformers 5 packs (``MergeModulelist``) into ``mixer.experts.up_proj``
(E, I, H) and ``down_proj`` (E, H, I); expert e's up is ``up_proj[e]``, its down ``down_proj[e]``.

:func:`match_layouts` reads such a packed checkpoint, where another checkpoint of the comparison stores the same
layer's experts one by one, as that checkpoint's per-expert tensors: expert e's gate is ``gate_up[e, :I]``, its
up ``gate_up[e, I:]``, its down ``down[e]`` (how transformers packs them, checked on the models it builds), each
a view of the stored tensor, nothing copied. The layer's other tensors that transformers renames on load are
read by the names the other checkpoint stores (:func:`stored_forms`, from transformers' own conversion mapping:
Mixtral's router ``block_sparse_moe.gate`` is ``mlp.gate`` in memory, PhiMoE's ``mlp.router``). Shapes are
checked against the per-expert tensors; a layer whose shapes do not fit is left as it is (its tensors listed as
only in one checkpoint, as before: a release whose experts were pruned to other sizes), unless a packed tensor's
own shape is not the one its config.json implies, which is refused (:func:`_check_packed_dims`). gpt-oss's packed
layout (gate and up interleaved) has no per-expert form and is never touched. A merged LoRA adapter over a packed
base is read through the same views as its base (each view of a merged tensor computed when read), so that its
numbers do not depend on which other checkpoints stand beside it.

Llama 4 releases store their experts packed the other way round (``Llama4TextExperts``: ``feed_forward.experts.
gate_up_proj`` (E, H, 2I), split by ``chunk(2, -1)``, and ``down_proj`` (E, I, H)), while every quantized Llama 4
that llm-compressor, GPTQModel or auto-round writes (the compressed-tensors FP8 / W4A16 / NVFP4 releases) stores
them one by one (their ``SequentialLlama4TextExperts``: ``experts.<e>.gate_proj.weight`` = ``gate_up[e][:, :I]ᵀ``,
``up_proj`` = ``gate_up[e][:, I:]ᵀ``, ``down_proj`` = ``down[e]ᵀ``). Such a packed checkpoint is read in the
transposed layout: which of the two a checkpoint uses is its family's (the config's model_type), not a guess from
the shapes (a gate_up of Llama 4 (E, H, 2I) with H = 2I fits both). A checkpoint whose config names no model type is
read by the layout its shapes fit: its gate_up and down together fit one at most (both would need H = 2I and
H = I). fbgemm's FP8 Llama 4 (``FbgemmFp8Llama4TextExperts``) keeps one
scale per output feature beside the packed codes (``gate_up_proj_scale`` (E, 1, 2I), ``down_proj_scale``
(E, H, 1)); each expert's are viewed with its codes, as ``<weight>_scale`` (a scale per row).

FP8 experts keep their block scales packed: transformers 5's ``FP8Experts`` (``FineGrainedFP8Config``) holds
``experts.gate_up_proj_scale_inv`` (E, ⌈2I/bm⌉, ⌈H/bn⌉) and ``experts.down_proj_scale_inv`` (E, ⌈H/bm⌉, ⌈I/bn⌉)
beside the packed codes, and ``save_pretrained`` writes the codes one by one but these scales as they are.
:func:`read_packed_scales` reads them as each expert's ``<weight>_scale_inv`` (the names a DeepSeek-V3-style
release stores; the stored forms and every alignment call it first), and :func:`match_layouts` views a packed
checkpoint's scales with its codes.

Qwen's own Qwen3-VL-MoE releases store their packed experts (E, in, out), ``gate_up_proj`` (E, H, 2I) and
``down_proj`` (E, I, H), while transformers 5 holds and saves the same model (E, 2I, H) / (E, H, I) (its conversion
mapping transposes the release's on load). Where a comparison holds both, :func:`match_layouts` reads the release's
transposed (:func:`_transposed_stacks`), so the two compare entry by entry.

Granite-MoE's releases store their experts packed under names of their own (``block_sparse_moe.input_linear.weight``
(E, 2I, H), ``output_linear.weight`` (E, H, I), the router ``router.layer.weight``), which transformers 5 only renames
on load (``block_sparse_moe.experts.gate_up_proj`` / ``down_proj``, ``router.weight``: the names a state-dict save
stores), values and shapes as they are; Aria's ``mlp.experts.fc1`` / ``fc2`` alike. Where a comparison holds both,
:func:`match_layouts` reads the state-dict save's tensors by the release's names (:func:`_renamed_whole`), and masks
are matched by the same names (:func:`stored_forms`).

Masks come in these layouts too (an update mask of two state-dict saves names the packed tensors, one of two
releases each expert's): :func:`mask_layout` says how a mask is read in another's layout, by the same
:func:`param_pieces`, and :func:`relaid_masks` reads it so (Behaviour's mask placement, the Overlap page).
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from subnetviz.checkpoints.header import TensorMeta
from subnetviz.checkpoints.naming import config_count, language_config, mask_key, strip_prefix
from subnetviz.checkpoints.sources import Checkpoint
from subnetviz.errors import CheckpointError

# (mixer.: Nemotron-H's MoE layers, whose experts have no gate: packed up_proj (E, I, H) and down_proj (E, H, I))
_PACKED = re.compile(
    r"^(?P<layer>.*\.)(?:mlp|block_sparse_moe|feed_forward|mixer)\.experts\.(?P<p>gate_up_proj|up_proj|down_proj)$"
)
_ONE = re.compile(
    r"^(?P<layer>.*\.)(?:mlp|block_sparse_moe|feed_forward|mixer)\.experts\.(?P<e>\d{1,6})\."
    r"(?P<p>gate_proj|up_proj|down_proj|w1|w3|w2)\.weight$"
)
_ROLE = {"gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up", "down_proj": "down", "w2": "down"}


def _per_expert(ck: Checkpoint) -> dict[str, dict[int, dict[str, str]]]:
    """Layer (its name without the checkpoint's prefix) -> expert -> role (gate / up / down) -> tensor name."""
    out: dict[str, dict[int, dict[str, str]]] = {}
    for n in ck.names:
        m = _ONE.match(strip_prefix(n))
        if m:
            out.setdefault(m["layer"], {}).setdefault(int(m["e"]), {})[_ROLE[m["p"]]] = n
    return out


def _model_type(config: Mapping) -> str:
    text = config.get("text_config")
    return str(config.get("model_type") or (text.get("model_type") if isinstance(text, dict) else "") or "")


# model types whose releases store packed experts transposed (Llama4TextExperts: (E, H, 2I) and (E, I, H)), and
# those whose packed experts have no per-expert form (gpt-oss: gate and up interleaved)
_COLUMNS = ("llama4", "llama4_text")
_NO_PER_EXPERT = ("gpt_oss",)


def transposed_experts(config: Mapping) -> bool:
    """Whether the model ``config`` builds packs its experts the Llama 4 way (``gate_up_proj`` (E, H, 2I),
    ``down_proj`` (E, I, H)): the ``transposed`` of :func:`param_pieces` for its parameters. By its family."""
    return _model_type(config) in _COLUMNS


def _layouts(ck: Checkpoint, ref: Checkpoint) -> tuple[bool, ...]:
    """The layouts (``transposed`` of :func:`param_pieces`) a packed checkpoint ``ck`` may store its experts in:
    its family's one (Llama 4's transposed, the others' as transformers packs them), taken from its config's
    model_type or else ``ref``'s; both where neither config names a model type (the shapes then decide: a layer's
    gate_up and down fit one of them at most); none for gpt-oss."""
    kind = _model_type(ck.config) or _model_type(ref.config)
    if kind in _NO_PER_EXPERT:
        return ()
    if kind:
        return (kind in _COLUMNS,)
    return (False, True)


def _views(
    ck: Checkpoint,
    layer: str,
    packed: dict[str, str],
    experts: dict[int, dict[str, str]],
    ref: Checkpoint,
    transposed: bool = False,
):
    """The per-expert views of one layer's packed tensors (``packed``: gate_up_proj / down_proj -> name), named
    as ``ref`` names ``experts``: name -> (packed name, index, shape); None where the shapes do not fit
    (``transposed``: Llama 4's layout, :func:`param_pieces`). FP8 codes' packed scales beside them
    (``<packed>_scale_inv``) are viewed too, as each expert's ``<weight>_scale_inv`` (their row blocks, where not
    the config's, go to ``ck.scale_rows``); in the transposed layout fbgemm's per-row ones (``<packed>_scale``), as
    each expert's ``<weight>_scale``."""
    if set(packed) not in ({"gate_up_proj", "down_proj"}, {"up_proj", "down_proj"}):
        return None
    full = {strip_prefix(n): n for names in experts.values() for n in names.values()}
    shapes = {short: tuple(ref.meta(n).shape) for short, n in full.items()}
    out = {}
    for name in packed.values():  # each expert's slice, as the model packs them (param_pieces)
        pieces = param_pieces(strip_prefix(name), tuple(ck.meta(name).shape), shapes, transposed=transposed)
        if pieces is None:  # (experts of different sizes, a pruned release, have no packed form to read)
            return None
        out.update({full[short]: (name, index, shapes[short]) for short, index in pieces})
    if transposed:
        out.update(_row_scale_views(ck, packed, experts))
        return _with_renamed(out, ck, layer, ref)
    block = fp8_block(ck.config)
    gate = ref.meta(experts[0]["gate"]).shape if "gate" in experts.get(0, {}) else None
    for part, name in packed.items():
        scale = f"{name}_scale_inv"
        if scale not in ck.names or block is None or gate is None or len(gate) != 2:
            continue
        got = _scale_pieces(scale, tuple(ck.meta(scale).shape), part, experts, tuple(gate), block)
        if got is not None:
            out.update(got[0])
            ck.scale_rows.update(got[1])
    return _with_renamed(out, ck, layer, ref)


def _check_packed_dims(ck: Checkpoint, packed: Mapping[str, str], layouts: tuple[bool, ...]) -> None:
    """Refuse, in one line naming the checkpoint, the tensor, its shape and the one config.json implies, a packed
    experts tensor of layer ``packed`` (gate_up_proj / up_proj / down_proj -> name) whose own sizes are not its
    config's (hidden_size H; the experts' intermediate size I, moe_intermediate_size or else intermediate_size) in
    any of ``layouts`` (:func:`_layouts`; also (E, in, out) for the families transformers transposes on load,
    :func:`_transposing_types`): transformers would not load it, and left unread the layer's experts fell silently
    out of the comparison. The expert count along dim 0 is :meth:`NameTable.check_packed`'s to refuse. Only
    tensors stored as 16- or 32-bit floats are checked: quantized codes are shaped by their packing (FP4 experts two
    codes a byte: an int8 (E, 2I, H/2) was refused by size before its own one-line refusal)."""
    text, path = language_config(ck.config)
    hidden = config_count(text, "hidden_size")
    key = "moe_intermediate_size" if "moe_intermediate_size" in text else "intermediate_size"
    inter = config_count(text, key)
    if hidden is None or inter is None:  # (one per layer, a list, says nothing of this layer's: not checked)
        return
    want = {  # (part, transposed) -> its two inner sizes
        ("gate_up_proj", False): (2 * inter, hidden),
        ("up_proj", False): (inter, hidden),
        ("down_proj", False): (hidden, inter),
        ("gate_up_proj", True): (hidden, 2 * inter),
        ("down_proj", True): (inter, hidden),
    }
    kind = _model_type(ck.config)
    if {kind, kind.removesuffix("_text")} & _transposing_types():  # (Qwen3-VL-MoE's releases: (E, in, out))
        layouts = (*layouts, True)
    for part, name in packed.items():
        meta = ck.meta(name)
        if not meta.dtype.is_floating_point or meta.dtype.itemsize < 2 or meta.stored is not None:
            continue  # (codes: FP8, FP4 two a byte, int4 words... are shaped as their packing stores them)
        shape = tuple(meta.shape)
        fits = list(dict.fromkeys(want[part, t] for t in layouts if (part, t) in want))
        if fits and all(shape[1:] != w for w in fits):
            implied = " or ".join(str((shape[0], *w)) for w in fits)
            raise CheckpointError(
                f"{ck.spec}: packed experts tensor {name!r} has shape {shape}; config.json implies {implied} "
                f"({path}hidden_size {hidden}, {path}{key} {inter}). Is it a checkpoint of this model?"
            )


def _with_renamed(out: dict, ck: Checkpoint, layer: str, ref: Checkpoint) -> dict:
    """``out`` (a layer's expert views) with the tensors of ``layer`` that the packed checkpoint ``ck`` holds by
    the model's names and ``ref`` stores by the names transformers renames on load (:func:`stored_forms`:
    Mixtral's ``block_sparse_moe.gate`` router as ``mlp.gate``, PhiMoE's as ``mlp.router``, HunYuan's
    ``mlp.router.gate`` as ``mlp.gate``, ...), each viewed whole by ``ref``'s name: name -> (``ck``'s name, (),
    shape). Only where one stored name of the same shape fits: a router stored by a packed finetune under the
    model's name was listed as only in that checkpoint, and its change lost."""
    viewed = {src for src, _, _ in out.values()}
    mine = {strip_prefix(n): n for n in ck.names}
    theirs = {strip_prefix(n): n for n in ref.names}
    for short, n in mine.items():
        if not short.startswith(layer) or short in theirs or n in viewed or _PACKED.match(short):
            continue
        shape = tuple(ck.meta(n).shape)
        found = [s for s in stored_forms(short) if s in theirs and s not in mine]
        found = [s for s in found if tuple(ref.meta(theirs[s]).shape) == shape]
        if len(found) == 1:
            out[theirs[found[0]]] = (n, (), shape)
    return out


def match_layouts(checkpoints: Sequence[Checkpoint]) -> None:
    """Read every packed checkpoint of ``checkpoints`` whose layer another checkpoint stores expert by expert
    as that checkpoint's per-expert tensors (see the module docstring); each checkpoint so read says so in its
    ``notes``. Idempotent: a second call finds nothing packed left to match."""
    for ck in checkpoints:
        read_packed_scales(ck)
    stored = [_per_expert(ck) for ck in checkpoints]
    for ck in checkpoints:
        packed: dict[str, dict[str, str]] = {}
        for n in ck.names:
            m = _PACKED.match(strip_prefix(n))
            if m and len(ck.meta(n).shape) == 3:
                packed.setdefault(m["layer"], {})[m["p"]] = n
        if not packed:  # (a merged adapter too: its packed experts are viewed as its base's are)
            continue
        views, unfit, read, ungated = {}, [], set(), False
        for layer, names in packed.items():
            ref = next((i for i, s in enumerate(stored) if layer in s and checkpoints[i] is not ck), None)
            if ref is None:
                continue
            layouts = _layouts(ck, checkpoints[ref])
            if not layouts:
                continue
            got = {t: g for t in layouts if (g := _views(ck, layer, names, stored[ref][layer], checkpoints[ref], t))}
            if got:  # (one layout at most: see the module docstring)
                read |= set(got)
                ungated = ungated or "up_proj" in names
                views.update(next(iter(got.values())))
            else:
                _check_packed_dims(ck, names, layouts)
                unfit.append(layer)
        if views:
            ck.unpack(views)
            example = next(iter(views.values()))[0]
            how = (
                "expert e's gate = gate_up_proj[e, :, :I]ᵀ, up = gate_up_proj[e, :, I:]ᵀ, down = down_proj[e]ᵀ, as "
                "Llama 4 packs them (E, H, 2I) / (E, I, H) and llm-compressor, GPTQModel and auto-round unpack them"
                if read == {True}
                else "expert e's up = up_proj[e], down = down_proj[e], as transformers packs experts without a gate "
                "(Nemotron-H's)"
                if ungated
                else "expert e's gate = gate_up_proj[e, :I], up = gate_up_proj[e, I:], down = down_proj[e], as "
                "transformers packs them"
            )
            held = (
                "its merged experts are packed as its base stores them"
                if _computed(ck)
                else "its experts are stored packed"
            )
            ck.notes.append(
                f"{held} (e.g. {example}); they are read as the per-expert tensors the other "
                f"checkpoint stores ({how}): {len(views)} tensor(s)."
            )
        layout = {
            (True,): "Llama 4's packed layout, (E, H, 2I) / (E, I, H)",
            (False,): "the packed layout of its family, (E, 2I, H) / (E, H, I)",
        }.get(_layouts(ck, ck), "either packed layout, (E, 2I, H) / (E, H, I) or Llama 4's (E, H, 2I) / (E, I, H)")
        if unfit and "up_proj" in packed[unfit[0]]:
            layout = "the packed layout of experts without a gate, up_proj (E, I, H) / down_proj (E, H, I)"
        note = (
            f"packed experts of {len(unfit)} layer(s) (e.g. {unfit[0]}) do not fit the per-expert shapes of the "
            f"other checkpoint in {layout}; they are listed as only in this checkpoint, not compared."
            if unfit
            else None
        )
        if note and note not in ck.notes:  # (said once, however many alignments look again)
            ck.notes.append(note)
    _renamed_whole(checkpoints)
    _transposed_stacks(checkpoints)


def _renamed_whole(checkpoints: Sequence[Checkpoint]) -> None:
    """Tensors one checkpoint holds by the model's names and another by the names its release stores, where
    transformers renames them on load and leaves them as they are (:func:`stored_forms`): Granite-MoE's packed
    experts and router, ``block_sparse_moe.experts.gate_up_proj`` / ``down_proj`` / ``router.weight`` in memory and
    in a state-dict save, ``block_sparse_moe.input_linear.weight`` / ``output_linear.weight`` /
    ``router.layer.weight`` as released, same shapes; Aria's ``mlp.experts.fc1`` / ``fc2``. Each such tensor not in
    every checkpoint is read, whole, by the release's name (under its own checkpoint's prefix), where exactly one
    stored name of its shape fits, held by another checkpoint and not by this one; said in its notes. Without this,
    every expert and router of such a pair was listed as only in one checkpoint and its change lost. Idempotent: the
    names so read are the release's."""
    keys = [{strip_prefix(n): n for n in c.names} for c in checkpoints]
    held = Counter(k for km in keys for k in km)  # in how many checkpoints each name is
    for i, ck in enumerate(checkpoints):
        if _computed(ck):
            continue
        mine = keys[i]
        wanted: dict[str, list[tuple[str, str, tuple[int, ...]]]] = {}  # release name -> (my name, prefix, shape)
        for short, n in mine.items():
            forms = [s for s in stored_forms(short) if held[s] and s not in mine] if held[short] < len(keys) else []
            if not forms:
                continue
            shape = tuple(ck.meta(n).shape)
            found = {
                s
                for s in forms
                for j, other in enumerate(checkpoints)
                if j != i and s in keys[j] and tuple(other.meta(keys[j][s]).shape) == shape
            }
            if len(found) == 1:
                wanted.setdefault(found.pop(), []).append((n, n[: len(n) - len(short)], shape))
        views = {prefix + s: (n, (), shape) for s, got in wanted.items() if len(got) == 1 for n, prefix, shape in got}
        if not views:
            continue
        ck.unpack(views)
        held.subtract(strip_prefix(n) for n, _, _ in views.values())
        held.update(strip_prefix(v) for v in views)
        keys[i] = {strip_prefix(n): n for n in ck.names}
        (name, (src, _, _)) = next(iter(views.items()))
        ck.notes.append(
            f"{len(views)} of its tensors are stored by the names the model holds in memory (a state-dict save, e.g. "
            f"{src}), another checkpoint of the comparison by the names its release stores them under (e.g. {name}); "
            "transformers renames the latter into the former on load, as they are (its conversion mapping), so they "
            "are compared under the release's names."
        )


@functools.cache
def _transposing_types() -> frozenset[str]:
    """The model types whose packed experts transformers 5 transposes on load where a checkpoint stores them
    (E, in, out) (its conversion mapping's ``Transpose(1, 2)`` on ``experts.gate_up_proj`` / ``down_proj``: Qwen's
    own Qwen3-VL-MoE releases). ``qwen3_vl_moe`` where transformers cannot say."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
        from transformers.core_model_loading import Transpose, WeightConverter
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except Exception:  # noqa: BLE001 - another transformers' API: the one family known to store them so
        return frozenset({"qwen3_vl_moe"})
    out = set()
    for model_type in CONFIG_MAPPING_NAMES:
        try:
            for t in get_checkpoint_conversion_mapping(model_type) or []:
                sources = " ".join(getattr(t, "source_patterns", ()) or ())
                swaps = [op for op in getattr(t, "operations", ()) if isinstance(op, Transpose)]
                if isinstance(t, WeightConverter) and re.search(r"experts\.(gate_up|down)_proj", sources):
                    if any({op.dim0, op.dim1} == {1, 2} for op in swaps):
                        out.add(model_type)
        except Exception:  # noqa: BLE001 - a family whose mapping cannot be read: left out
            continue
    return frozenset(out)


def _stored_in_rows(ck: Checkpoint, short: str, shape: tuple[int, ...], layer: Mapping[str, tuple]) -> bool | None:
    """Whether packed expert tensor ``short`` (E, a, b) of ``ck`` is stored (E, in, out), Qwen's Qwen3-VL-MoE
    release layout (``gate_up_proj`` (E, H, 2I), ``down_proj`` (E, I, H)), not the model's (E, 2I, H) / (E, H, I):
    by the config's hidden size H (along dim 1 of a stored gate_up, dim 2 of a stored down), else by the layer's
    other packed tensor (``layer``: gate_up_proj / down_proj -> shape; in the model's layout gate_up's last dim is
    down's dim 1, in the stored one gate_up's dim 1 is down's last). None where neither tells."""
    part = _PACKED.match(short)["p"]
    a, b = shape[1:]
    hidden = ck.names_table.hidden_size
    if hidden and (a == hidden) != (b == hidden):
        return (a == hidden) if part == "gate_up_proj" else (b == hidden)
    gu, dn = layer.get("gate_up_proj"), layer.get("down_proj")
    if gu is None or dn is None or len(gu) != 3 or len(dn) != 3:
        return None
    model, stored = gu[2] == dn[1], gu[1] == dn[2]
    return stored if model != stored else None


def _transposed_stacks(checkpoints: Sequence[Checkpoint]) -> None:
    """Packed experts that one checkpoint stores (E, in, out), as Qwen's own Qwen3-VL-MoE releases do, and another
    (E, out, in), as transformers 5 saves the same model (and holds it in memory), read alike: the former's
    ``experts.gate_up_proj`` / ``down_proj`` transposed, ``[e]ᵀ`` for every expert (a copy, as transformers' loader
    makes one), under its own name. Only for the families whose conversion mapping transposes them on load
    (:func:`_transposing_types`), only where the two shapes are each other's transposes (a square one is loaded
    as stored, and compared so), and said in that checkpoint's notes. Idempotent: the views have the model's
    shape."""
    held: dict[str, list[tuple[int, str]]] = {}
    layers: list[dict[str, dict[str, tuple[int, ...]]]] = []  # per checkpoint: layer -> part -> its shape
    for i, ck in enumerate(checkpoints):
        layers.append({})
        if _computed(ck):
            continue
        for n in ck.names:
            m = _PACKED.match(short := strip_prefix(n))
            if m and len(ck.meta(n).shape) == 3:
                held.setdefault(short, []).append((i, n))
                layers[i].setdefault(m["layer"], {})[m["p"]] = tuple(ck.meta(n).shape)
    views: dict[int, dict[str, tuple[str, tuple, tuple[int, ...]]]] = {}
    for short, where in held.items():
        shapes = {tuple(checkpoints[i].meta(n).shape) for i, n in where}
        if len(shapes) != 2:
            continue
        a, b = shapes
        if (a[0], a[2], a[1]) != b or a[1] == a[2]:
            continue
        for i, n in where:
            ck = checkpoints[i]
            kind = _model_type(ck.config) or next((k for c in checkpoints if (k := _model_type(c.config))), "")
            if not {kind, kind.removesuffix("_text")} & _transposing_types():
                continue
            e, rows, cols = shape = tuple(ck.meta(n).shape)
            if _stored_in_rows(ck, short, shape, layers[i][_PACKED.match(short)["layer"]]):
                index = (np.arange(e)[:, None], slice(None), np.arange(cols)[None, :])  # [e]ᵀ of every e, (E, b, a)
                views.setdefault(i, {})[n] = (n, index, (e, cols, rows))
    for i, got in views.items():
        ck = checkpoints[i]
        ck.unpack(got)
        example, (e, cols, rows) = next((n, shape) for n, (_, _, shape) in got.items())
        ck.notes.append(
            f"its packed experts are stored (E, in, out), as Qwen's own Qwen3-VL-MoE releases store them (e.g. "
            f"{example} {(e, rows, cols)}), another checkpoint of the comparison (E, out, in) ({(e, cols, rows)}), as "
            "transformers 5 saves them; they are read transposed, expert e's gate_up_proj[e]ᵀ and "
            f"down_proj[e]ᵀ, as transformers loads them (its conversion mapping's Transpose(1, 2)): {len(got)} "
            "tensor(s)."
        )


# a renaming's target that names packed experts or a router (the model's names: Granite-MoE's
# block_sparse_moe.experts.gate_up_proj, its block_sparse_moe.router.weight; Aria's mlp.experts.gate_up_proj)
_EXPERT_TARGET = re.compile(r"experts\.(gate_up_proj|down_proj)\b|(^|\.)router\.")


@functools.cache
def _moe_renamings() -> tuple[tuple[tuple, tuple], ...]:
    """transformers 5's renamings of the families whose checkpoints store experts one by one (a conversion mapping
    that packs them, ``MergeModulelist``), and of those whose mapping only renames, as they are, tensors the model
    holds as packed experts or a router (Granite-MoE's ``block_sparse_moe.input_linear.weight`` /
    ``output_linear.weight`` / ``router.layer.weight`` as ``block_sparse_moe.experts.gate_up_proj`` / ``down_proj``
    / ``router.weight``; Aria's ``mlp.experts.fc1.weight`` / ``fc2.weight`` as ``mlp.experts.gate_up_proj`` /
    ``down_proj``), each family's once: (forward, as it loads, in order; backward, as it saves). Those name the
    tensors such a release stores and the model holds apart (Mixtral's, MiniMax's and Kimi-Linear's
    ``block_sparse_moe.`` as ``mlp.``; PhiMoE's ``block_sparse_moe.gate`` as ``mlp.router``; HunYuan-V3's
    ``mlp.router.gate`` as ``mlp.gate``; the expert-choosing biases of MiniMax-M3, Laguna, EXAONE-MoE, Kolibri,
    Bailing and Sarvam as ``mlp.gate.e_score_correction_bias``; ...). A mapping that converts values besides (a
    split, a transpose: Step-3.7's) is not one of them. () where transformers has no such mapping."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
        from transformers.core_model_loading import MergeModulelist, WeightConverter
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except Exception:  # noqa: BLE001 - another transformers' API: no renamings (the names as stored only)
        return ()
    out, seen = [], set()
    for model_type in CONFIG_MAPPING_NAMES:
        try:
            transforms = get_checkpoint_conversion_mapping(model_type) or []
            converters = [t for t in transforms if isinstance(t, WeightConverter)]
            forward = tuple(t for t in transforms if not isinstance(t, WeightConverter))
            packs = any(isinstance(op, MergeModulelist) for c in converters for op in c.operations)
            renames = not converters and any(
                _EXPERT_TARGET.search(" ".join(getattr(t, "target_patterns", ()) or ())) for t in forward
            )
            if not forward or not (packs or renames):
                continue
            key = tuple((tuple(t.source_patterns), tuple(t.target_patterns)) for t in forward)
            if key not in seen:
                seen.add(key)
                out.append((forward, tuple(t.reverse_transform() for t in forward[::-1])))
        except Exception:  # noqa: BLE001 - a family whose mapping cannot be read or reversed: left out
            continue
    return tuple(out)


def _renamed(name: str, renamings: tuple) -> str:
    """``name`` through each of ``renamings`` in turn, as transformers renames a key (every one that matches)."""
    for renaming in renamings:
        name, _ = renaming.rename_source_key(name)
    return name


@functools.lru_cache(maxsize=1 << 16)
def stored_forms(key: str) -> tuple[str, ...]:
    """The names a checkpoint that stores experts one by one may store the model's tensor ``key`` (a name without
    its prefix) under, where transformers renames it on load (:func:`_moe_renamings`, every such family's, each
    checked by loading it back into ``key``): ``layers.1.mlp.router.weight`` is PhiMoE's
    ``layers.1.block_sparse_moe.gate.weight``, ``layers.1.mlp.gate.weight`` Mixtral's
    ``layers.1.block_sparse_moe.gate.weight`` or HunYuan-V3's ``layers.1.mlp.router.gate.weight``. Which of them a
    checkpoint holds (its names and shapes) says which is meant: the one table for :func:`param_pieces` and the
    packed checkpoints :func:`match_layouts` reads."""
    out: list[str] = []
    for forward, backward in _moe_renamings():
        try:
            stored = _renamed(key, backward)
            if stored != key and stored not in out and _renamed(stored, forward) == key:
                out.append(stored)
        except Exception:  # noqa: BLE001 - a name its patterns cannot take
            continue
    return tuple(out)


# transformers' conversion ops that pack stored tensors as they are (the experts stored one by one): param_pieces
# writes them back; any other op (a transpose, an interleave, a rope permutation, a split) changes the values
_PACKING_OPS = {"MergeModulelist", "Concatenate"}


def loaded_into(model, stored: Mapping[str, str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The tensors ``stored`` (a checkpoint's name -> the caller's key for it) grouped by the parameter or buffer
    of ``model`` that transformers 5 loads them into, by its own conversion mapping (its renamings, PhiMoE's gate
    as router or Ernie's moe_statics under the gate, and the converters that pack experts): full parameter name
    -> keys; and the parameters a converter changes the values of on load (parameter name -> its ops), which no
    stored tensor can be written into as it is. ({}, {}) where transformers has no mapping or cannot say."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter

        transforms = get_model_conversion_mapping(model)
    except Exception:  # noqa: BLE001 - another transformers' API: the names' own rules only (param_pieces)
        return {}, {}
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    out: dict[str, list[str]] = {}
    changed: dict[str, str] = {}
    for name, key in stored.items():
        try:
            target = name
            for renaming in renamings:  # every renaming, then at most one converter: as transformers loads
                target, _ = renaming.rename_source_key(target)
            ops: list[str] = []
            for converter in converters:
                renamed, pattern = converter.rename_source_key(target)
                if pattern is not None:
                    target, ops = renamed, [type(op).__name__ for op in converter.operations]
                    break
        except Exception:  # noqa: BLE001 - a name its patterns cannot take
            continue
        out.setdefault(target, []).append(key)
        if set(ops) - _PACKING_OPS:
            changed[target] = ", ".join(ops)
    return out, changed


def param_pieces(
    key: str,
    shape: tuple[int, ...],
    shapes: Mapping[str, tuple[int, ...]],
    *,
    partial: bool = False,
    transposed: bool = False,
) -> list[tuple[str, tuple]] | None:
    """Where a checkpoint's tensors (prefix-stripped name -> shape, ``shapes``) go in the parameter ``key`` of the
    model transformers 5 builds from it: ``[(name, index into the parameter)]``, ``()`` for the whole of it. By the
    parameter's own name; by the one name of that shape a family storing experts one by one stores it under
    (:func:`stored_forms`: Mixtral's ``block_sparse_moe.gate`` for the model's ``mlp.gate``, PhiMoE's for its
    ``mlp.router``, as transformers renames them on load); or, for a packed expert parameter
    (``mlp.experts.gate_up_proj`` (E, 2I, H), ``down_proj`` (E, H, I)), from the per-expert tensors it is packed
    from, as :func:`match_layouts` reads them (expert e's gate is ``gate_up[e, :I]``, its up ``gate_up[e, I:]``,
    its down ``down[e]``). With ``transposed``, Llama 4's layout
    (``gate_up_proj`` (E, H, 2I), ``down_proj`` (E, I, H)): expert e's gate is ``gate_up[e, :, :I]ᵀ``, its up
    ``gate_up[e, :, I:]ᵀ``, its down ``down[e]ᵀ``, each index ``(array([e]), slice(None), columns)``, which
    torch and NumPy alike read as the (columns, rows) transpose of those columns (a copy, not a view). Experts
    without a gate (Nemotron-H's squared-ReLU ones, ``mixer.experts.up_proj`` (E, I, H) and ``down_proj``
    (E, H, I), which transformers packs from each expert's ``up_proj`` / ``down_proj`` by ``MergeModulelist``):
    expert e's up is ``up_proj[e]``, its down ``down_proj[e]``; never where the layer's experts have a gate, nor
    transposed. None where no tensors of fitting shapes are there; with ``partial`` (a mask naming some experts
    only) the experts present, if any."""
    if key in shapes:
        return [(key, ())]
    renamed = [s for s in stored_forms(key) if s in shapes and tuple(shapes[s]) == tuple(shape)]
    if len(renamed) == 1:
        return [(renamed[0], ())]
    packed = _PACKED.match(key)
    if packed is None or len(shape) != 3:
        return None
    experts: dict[int, dict[str, str]] = {}
    for n in shapes:
        one = _ONE.match(n)
        if one and one["layer"] == packed["layer"]:
            experts.setdefault(int(one["e"]), {})[_ROLE[one["p"]]] = n
    n_e, (d1, d2) = shape[0], shape[1:]
    rows = (d2 if transposed else d1) // 2  # I: half of gate_up's 2I
    if any(e >= n_e for e in experts) or (not partial and sorted(experts) != list(range(n_e))):
        return None
    ungated = packed["p"] == "up_proj"  # (Nemotron-H: each expert's up whole, where its experts have no gate)
    if ungated and (transposed or any("gate" in names for names in experts.values())):
        return None
    if packed["p"] == "gate_up_proj" and 2 * rows != (d2 if transposed else d1):
        return None
    if transposed:
        cols = {"down": np.arange(d2), "gate": np.arange(rows), "up": np.arange(rows, 2 * rows)}
        want = {"down": (d2, d1), "gate": (rows, d1), "up": (rows, d1)}
    else:
        where = {"down": (), "gate": (slice(0, rows),), "up": () if ungated else (slice(rows, 2 * rows),)}
        want = {"down": (d1, d2), "gate": (rows, d2), "up": (d1, d2) if ungated else (rows, d2)}
    roles = {"down_proj": ("down",), "up_proj": ("up",)}.get(packed["p"], ("gate", "up"))
    out: list[tuple[str, tuple]] = []
    for e in sorted(experts):
        names = experts[e]
        for r in roles:
            if r not in names and partial:
                continue
            if tuple(shapes.get(names.get(r, ""), ())) != want[r]:
                return None
            out.append((names[r], (np.array([e]), slice(None), cols[r]) if transposed else (e, *where[r])))
    return out or None


@dataclass(frozen=True)
class MaskLayout:
    """A mask's tensors read in the expert layout of another tensor set (a checkpoint's, another mask's):
    :func:`mask_layout`, applied by :func:`relaid_masks`. ``tensors``: each new tensor, named as the other set names
    it -> (its shape, its pieces: (the mask's name, the index into that mask tensor, the index into the new one;
    ``()`` the whole)); ``read``: the mask's names read into them (they leave the mask); ``split``, ``packed``,
    ``renamed``: the mask's packed tensors split per expert, the other's packed tensors built from the mask's
    per-expert ones, the mask's tensors taken whole under the name the other stores (Mixtral's ``mlp.gate`` router
    as ``block_sparse_moe.gate``); ``example``: (the mask's name, the other's) of the first; ``columns``: whether
    a layer was read in Llama 4's (E, H, 2I) / (E, I, H) layout; ``ungated``: whether a layer's experts have no gate
    (Nemotron-H's packed ``up_proj`` / ``down_proj``)."""

    tensors: dict[str, tuple[tuple[int, ...], tuple[tuple[str, tuple, tuple], ...]]] = field(default_factory=dict)
    read: tuple[str, ...] = ()
    split: int = 0
    packed: int = 0
    renamed: int = 0
    example: tuple[str, str] | None = None
    columns: bool = False
    ungated: bool = False

    def note(self, other: str = "the base") -> str | None:
        """One line saying how the mask's expert tensors were matched to ``other``'s layout (None: they were not)."""
        if not self.tensors:
            return None
        how = (
            "gate = gate_up_proj[e, :, :I]ᵀ, up = gate_up_proj[e, :, I:]ᵀ, down = down_proj[e]ᵀ, as Llama 4 packs them"
            if self.columns
            else "up = up_proj[e], down = down_proj[e], as transformers packs experts without a gate (Nemotron-H's)"
            if self.ungated
            else "gate = gate_up_proj[e, :I], up = gate_up_proj[e, I:], down = down_proj[e], as transformers packs them"
        )
        parts = []
        if self.split:
            parts.append(f"its {self.split} packed expert tensor(s) are read as the per-expert tensors {other} stores")
        if self.packed:
            parts.append(
                f"its per-expert tensors are packed into the {self.packed} packed expert tensor(s) {other} stores "
                "(an expert it does not name: all outside it)"
            )
        mask, theirs = self.example or ("", "")
        if not self.split and not self.packed:  # (names alone: Granite-MoE's experts and router, Mixtral's router)
            return (
                f"masks matched across names: {self.renamed} tensor(s) are taken under the name {other} stores them "
                "by, the model's names (as transformers holds them in memory and a state-dict save stores them) "
                "against a release's, which transformers renames on load, shapes and values as they are (e.g. "
                f"{mask!r} -> {theirs!r})."
            )
        if self.renamed:
            parts.append(
                f"{self.renamed} tensor(s) are taken under the name {other} stores them by (routers and their biases, "
                "as transformers renames them on load)"
            )
        return (
            f"masks matched across expert layouts (packed experts.{'up_proj' if self.ungated else 'gate_up_proj'} / "
            f"down_proj against experts stored one by one): {'; '.join(parts)} (expert e's {how}; e.g. {mask!r} -> {theirs!r})."
        )


def _groups(keys) -> list[list[str]]:
    """``keys`` (prefix-stripped names) grouped as :func:`mask_layout` decides their layout: a layer's packed
    expert tensors together (gate_up and down tell Llama 4's layout from transformers'), any other alone."""
    layers: dict[str, list[str]] = {}
    out: list[list[str]] = []
    for k in keys:
        m = _PACKED.match(k)
        if m:
            layers.setdefault(m["layer"], []).append(k)
        else:
            out.append([k])
    return list(layers.values()) + out


def _fitting(keys: list[str], pieces, transposed: bool | None) -> dict[str, list] | None:
    """``pieces(key, transposed)`` of every key of one group, in the one layout (transformers' or Llama 4's) all of
    them fit; where both fit and differ, ``transposed``'s (None: neither). None where none fits."""
    found = {}
    for t in (False, True):
        got = {k: pieces(k, t) for k in keys}
        if all(got.values()):
            found[t] = got
    alike = {t: {k: [(p, repr(i)) for p, i in v] for k, v in got.items()} for t, got in found.items()}
    if len(found) == 2 and alike[False] != alike[True]:
        return found.get(transposed) if transposed is not None else None
    return next(iter(found.values()), None)


def mask_layout(
    mask_shapes: Mapping[str, tuple[int, ...]],
    other_shapes: Mapping[str, tuple[int, ...]],
    *,
    pack: bool = True,
    transposed: bool | None = None,
) -> MaskLayout:
    """How a mask (its names -> shapes) is read in the expert layout of ``other_shapes`` (a checkpoint's tensors, or
    another mask's), names matched by :func:`~subnetviz.checkpoints.naming.mask_key` (any model prefix): the way
    checkpoints are matched (:func:`match_layouts`, :func:`param_pieces`). A packed ``experts.gate_up_proj`` /
    ``down_proj`` the other does not hold is split into the per-expert tensors it stores (expert e's gate =
    ``gate_up[e, :I]``, ...), and a router under the name the other stores it by is taken whole; with ``pack``, the
    reverse: the other's packed tensors the mask does not name are packed from the mask's per-expert ones (experts
    it does not name all False), as masked training packs a mask (``training.masking.packed_masks``). A layer's
    packed tensors are read in the one layout its shapes fit (transformers' (E, 2I, H) / (E, H, I), or Llama 4's
    (E, H, 2I) / (E, I, H)); where both fit (square shapes), in ``transposed``'s (None: not at all). Shapes only:
    nothing is read."""
    mine: dict[str, str] = {}
    for n in mask_shapes:
        mine.setdefault(mask_key(n), n)
    theirs: dict[str, str] = {}
    for n in other_shapes:
        theirs.setdefault(mask_key(n), n)
    free = {k: tuple(other_shapes[n]) for k, n in theirs.items() if k not in mine}
    lone = {k: tuple(mask_shapes[n]) for k, n in mine.items() if k not in theirs}
    if not lone or not free:  # (every tensor of the mask matched by name, or none of the other's left to take)
        return MaskLayout()
    tensors: dict[str, tuple[tuple[int, ...], tuple[tuple[str, tuple, tuple], ...]]] = {}
    read: list[str] = []
    count = {"split": 0, "packed": 0, "renamed": 0}
    example, columns, ungated, taken = None, False, False, set()
    for group in _groups(lone):  # the mask's tensors the other lacks, as the other's tensors the mask lacks
        got = _fitting(group, lambda k, t: param_pieces(k, lone[k], free, transposed=t), transposed)
        if got is None or any(p in taken for pieces in got.values() for p, _ in pieces):
            continue
        for k, pieces in got.items():
            for p, index in pieces:
                tensors[theirs[p]] = (free[p], ((mine[k], index, ()),))
                taken.add(p)
            read.append(mine[k])
            count["split" if _PACKED.match(k) and pieces[0][1] != () else "renamed"] += 1
            ungated = ungated or k.endswith("experts.up_proj")
            example = example or (mine[k], theirs[pieces[0][0]])
            columns = columns or any(isinstance(i[0], np.ndarray) for _, i in pieces if i)
    pool = {k: shape for k, shape in lone.items() if mine[k] not in read}
    want = [k for k in free if k not in taken] if pack else []
    used: set[str] = set()
    for group in _groups(want):  # the other's tensors the mask lacks, packed (or renamed) from the mask's
        got = _fitting(group, lambda k, t: param_pieces(k, free[k], pool, partial=True, transposed=t), transposed)
        if got is None or any(p in used for pieces in got.values() for p, _ in pieces):
            continue
        for k, pieces in got.items():
            tensors[theirs[k]] = (free[k], tuple((mine[p], (), index) for p, index in pieces))
            used |= {p for p, _ in pieces}
            read += [mine[p] for p, _ in pieces]
            count["packed" if _PACKED.match(k) and pieces[0][1] != () else "renamed"] += 1
            ungated = ungated or k.endswith("experts.up_proj")
            example = example or (mine[pieces[0][0]], theirs[k])
            columns = columns or any(isinstance(i[0], np.ndarray) for _, i in pieces if i)
    return MaskLayout(tensors, tuple(read), **count, example=example, columns=columns, ungated=ungated)


def relaid_masks(masks: Mapping, layout: MaskLayout) -> Mapping:
    """``masks`` (name -> bool tensor, bit-packed or not) with the tensors of ``layout`` (:func:`mask_layout`) in
    place of the ones it reads, each where the first it reads was; a bit-packed set stays bit-packed (one tensor
    unpacked at a time). ``masks`` itself where the layout changes nothing."""
    import torch

    from subnetviz.masks import PackedMasks

    if not layout.tensors:
        return masks
    bits = isinstance(masks, PackedMasks)
    at: dict[str, list[str]] = {}
    for name, (_, pieces) in layout.tensors.items():
        at.setdefault(pieces[0][0], []).append(name)
    read = set(layout.read)
    held: list = [None, None]  # (name, tensor): the last mask tensor read (a packed one is split piece by piece)

    def tensor(n: str):
        if held[0] != n:
            held[:] = [n, masks[n].to(torch.bool)]
        return held[1]

    out = PackedMasks() if bits else {}
    for n in masks:
        if n not in read:
            if bits:
                out.add_bits(n, *masks.packed(n))
            else:
                out[n] = masks[n]
        for name in at.get(n, ()):
            shape, pieces = layout.tensors[name]
            if len(pieces) == 1 and pieces[0][2] == ():
                made = tensor(pieces[0][0])[pieces[0][1]] if pieces[0][1] != () else tensor(pieces[0][0])
            else:
                made = torch.zeros(shape, dtype=torch.bool)
                for src, index, into in pieces:
                    made[into] = tensor(src)[index] if index != () else tensor(src)
            if bits:
                out.add(name, made)
            else:
                out[name] = made.contiguous()
    return out


def _row_scale_views(
    ck: Checkpoint, packed: Mapping[str, str], experts: Mapping[int, Mapping[str, str]]
) -> dict[str, tuple[str, tuple, tuple[int, ...]]]:
    """fbgemm's FP8 Llama 4 experts (``FbgemmFp8Llama4TextExperts``): codes packed (E, H, 2I) / (E, I, H) with
    one float32 scale per output feature, ``gate_up_proj_scale`` (E, 1, 2I) and ``down_proj_scale`` (E, H, 1). Each
    expert's scales as the per-row ``<weight>_scale`` (I, 1) / (H, 1) of its transposed views (the gate's: scales
    0 … I−1; the up's: I … 2I−1; the down's: the expert's H); none where the shapes are not those."""
    out: dict[str, tuple[str, tuple, tuple[int, ...]]] = {}
    for part, name in packed.items():
        scale = f"{name}_scale"
        if scale not in ck.names or str(ck.meta(name).dtype) not in _FP8:
            continue
        n_e, d1, d2 = ck.meta(name).shape
        got = tuple(ck.meta(scale).shape)
        if part == "down_proj" and got == (n_e, d2, 1):
            out.update({f"{r['down']}_scale": (scale, (e,), (d2, 1)) for e, r in experts.items()})
        elif part == "gate_up_proj" and got == (n_e, 1, d2) and d2 % 2 == 0:
            i = d2 // 2
            for e, r in experts.items():
                out[f"{r['gate']}_scale"] = (scale, (np.array([e]), slice(None), np.arange(i)), (i, 1))
                out[f"{r['up']}_scale"] = (scale, (np.array([e]), slice(None), np.arange(i, 2 * i)), (i, 1))
    return out


def _computed(ck: Checkpoint) -> bool:
    """A merged adapter computes its tensors: its scales, renamings and transposes are left as they are, and its
    packed experts are viewed only as :func:`match_layouts` views its base's (its ``unpack`` computes each view).
    (Told by its class's flag: the adapters module reads this one's layouts, so this one does not import it.)"""
    return bool(getattr(ck, "computes_tensors", False))


# transformers 5's FP8 experts: the codes stored one by one, the scales packed (FP8Experts' parameters, as they are)
_EXPERT_WEIGHT = re.compile(
    r"^(?P<stem>.*\.(?:mlp|block_sparse_moe|feed_forward)\.experts\.)(?P<e>\d{1,6})\."
    r"(?P<p>gate_proj|up_proj|down_proj|w1|w3|w2)\.weight$"
)
_PACKED_SCALE = re.compile(
    r"^(?P<stem>.*\.(?:mlp|block_sparse_moe|feed_forward)\.experts\.)(?P<p>gate_up_proj|down_proj)_scale_inv$"
)
_FP8 = ("torch.float8_e4m3fn", "torch.float8_e5m2")


def fp8_block(config: Mapping) -> tuple[int, int] | None:
    """The FP8 scale block (rows, columns) of ``config``'s ``quantization_config.weight_block_size`` (128 × 128,
    FineGrainedFP8Config's default, where it says none); None where it is not two whole numbers (the analysis
    names that itself)."""
    qc = config.get("quantization_config")
    bs = qc.get("weight_block_size", [128, 128]) if isinstance(qc, dict) else [128, 128]
    if isinstance(bs, list | tuple) and len(bs) == 2 and all(type(b) is int and b >= 1 for b in bs):
        return int(bs[0]), int(bs[1])
    return None


def packed_scale_of(name: str, names: Mapping) -> str | None:
    """The packed scale tensor (``experts.gate_up_proj_scale_inv`` / ``down_proj_scale_inv``) that holds expert
    weight ``name``'s block scales, where ``names`` has it; else None (a refusal names it)."""
    m = _EXPERT_WEIGHT.match(name)
    if m is None:
        return None
    part = "down_proj" if _ROLE[m["p"]] == "down" else "gate_up_proj"
    found = f"{m['stem']}{part}_scale_inv"
    return found if found in names else None


def read_packed_scales(ck: Checkpoint) -> None:
    """Read checkpoint ``ck``'s FP8 experts stored one by one with their block scales packed (transformers 5's
    FP8 save of a mixture of experts) with each expert's own scales, views of the packed ones
    (:func:`expert_scale_views`), said once in its notes; their rows per scale, where not the config's block,
    go to ``ck.scale_rows``. Idempotent: the packed scales so read leave its names."""
    if _computed(ck):
        return
    views, rows = expert_scale_views({n: ck.meta(n) for n in ck.names}, ck.config)
    if not views:
        return
    ck.unpack(views)
    ck.scale_rows.update(rows)
    packed = sorted({src for src, _, _ in views.values()})
    ck.notes.append(
        f"FP8 experts: {len(views)} expert weight(s) stored one by one with their block scales packed ({packed[0]}"
        f"{' ...' if len(packed) > 1 else ''}), as transformers 5 saves FP8 experts; each expert's scales are read "
        "as its rows of the packed ones (gate: the first ⌈I/bm⌉ row blocks; up: those of packed rows I … 2I − 1; "
        "down: the expert's), as transformers reloads and computes with them."
    )


def expert_scale_views(
    metas: Mapping[str, TensorMeta], config: Mapping
) -> tuple[dict[str, tuple[str, tuple, tuple[int, ...]]], dict[str, int]]:
    """transformers 5's FP8 save of a mixture of experts read as per-expert scales: each expert's FP8
    ``…experts.<e>.<gate|up|down>_proj.weight`` (Mixtral's ``w1`` / ``w3`` / ``w2``) with no scale of its own,
    whose scales are packed in ``…experts.gate_up_proj_scale_inv`` / ``down_proj_scale_inv``, gets the view
    ``<weight>_scale_inv`` of its rows (:func:`_scale_pieces`). Returns (view name -> (packed name, index, shape),
    for :meth:`~subnetviz.checkpoints.sources.Checkpoint.unpack`; view name -> its rows per scale where not the
    block's). Layers whose shapes do not fit the block are left as they are (the analysis refuses their codes,
    naming the packed scale)."""
    block = fp8_block(config)
    packed: dict[str, dict[str, str]] = {}
    for n, m in metas.items():
        s = _PACKED_SCALE.match(n)
        if s and len(m.shape) == 3:
            packed.setdefault(s["stem"], {})[s["p"]] = n
    if not packed or block is None:
        return {}, {}
    experts: dict[str, dict[int, dict[str, str]]] = {}
    for n, m in metas.items():
        o = _EXPERT_WEIGHT.match(n)
        if o and o["stem"] in packed and str(m.dtype) in _FP8 and len(m.shape) == 2:
            if f"{n}_scale_inv" not in metas and f"{n}_scale" not in metas:
                experts.setdefault(o["stem"], {}).setdefault(int(o["e"]), {})[_ROLE[o["p"]]] = n
    views: dict[str, tuple[str, tuple, tuple[int, ...]]] = {}
    rows: dict[str, int] = {}
    for stem, scales in packed.items():
        per = experts.get(stem, {})
        if not per or any(set(r) != {"gate", "up", "down"} for r in per.values()):
            continue
        gate = tuple(metas[per[min(per)]["gate"]].shape)
        fits = all(
            tuple(metas[r["gate"]].shape) == tuple(metas[r["up"]].shape) == gate
            and tuple(metas[r["down"]].shape) == gate[::-1]
            for r in per.values()
        )
        for part, scale in scales.items():
            got = _scale_pieces(scale, tuple(metas[scale].shape), part, per, gate, block) if fits else None
            if got is not None:
                views.update(got[0])
                rows.update(got[1])
    return views, rows


def _scale_pieces(
    scale: str,
    shape: tuple[int, ...],
    part: str,
    experts: Mapping[int, Mapping[str, str]],
    gate: tuple[int, int],
    block: tuple[int, int],
) -> tuple[dict[str, tuple[str, tuple, tuple[int, ...]]], dict[str, int]] | None:
    """Each expert's view of packed scale ``scale`` (``shape`` (E, R, C), of ``part`` gate_up_proj or down_proj),
    named ``<weight>_scale_inv`` after ``experts`` (expert -> role -> weight name; ``gate``: a gate's (I, H)),
    with ``block`` (bm, bn). As transformers packs and computes with them (row i of the packed (2I, H) gate_up uses
    scale row i // bm): the gate's scales are rows [e, :⌈I/bm⌉] (the usual blocks from its row 0); the up's, whose
    row r is packed row I + r, rows [e, I/bm : 2I/bm] where bm divides I, else where a block straddles gate and up
    one scale row per g = gcd(I, bm) rows of the up, (I + k·g) // bm for k < I/g (its row block g is returned);
    the down's [e]. None where the shape is not the one FP8Experts allocates (E, max(⌈2I/bm⌉, 2), ⌈H/bn⌉) /
    (E, ⌈H/bm⌉, ⌈I/bn⌉), or the experts are not 0 … E−1."""
    (i_dim, h_dim), (bm, bn) = gate, block
    n_e = len(experts)
    if sorted(experts) != list(range(n_e)) or len(shape) != 3 or shape[0] != n_e:
        return None
    views: dict[str, tuple[str, tuple, tuple[int, ...]]] = {}
    rows: dict[str, int] = {}
    if part == "down_proj":
        if tuple(shape[1:]) != (math.ceil(h_dim / bm), math.ceil(i_dim / bn)):
            return None
        for e, names in experts.items():
            views[f"{names['down']}_scale_inv"] = (scale, (e,), tuple(shape[1:]))
        return views, rows
    need = math.ceil(2 * i_dim / bm)
    if shape[1] not in (need, max(need, 2)) or shape[2] != math.ceil(h_dim / bn):
        return None
    g = math.gcd(i_dim, bm)
    for e, names in experts.items():
        views[f"{names['gate']}_scale_inv"] = (
            scale,
            (e, slice(0, math.ceil(i_dim / bm))),
            (math.ceil(i_dim / bm), shape[2]),
        )
        up = f"{names['up']}_scale_inv"
        if g == bm:
            views[up] = (scale, (e, slice(i_dim // bm, 2 * i_dim // bm)), (i_dim // bm, shape[2]))
        else:  # a block straddles the gate's last rows and the up's first: one scale row per g rows of the up
            views[up] = (scale, (e, [(i_dim + k * g) // bm for k in range(i_dim // g)]), (i_dim // g, shape[2]))
            rows[up] = g
    return views, rows
