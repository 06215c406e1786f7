"""LoRA / PEFT adapters read as the finetuned model they stand for.

A folder with ``adapter_config.json`` + ``adapter_model.safetensors`` given as a finetune of
``base`` is the merged model: every target weight is W + s·B·A (s = α/r, or α/√r with rsLoRA;
``rank_pattern`` / ``alpha_pattern`` per module, the first key that matches as PEFT takes it; Δ transposed
for transformers' Conv1D, which PEFT decides per layer whatever ``fan_in_fan_out`` says; embedding adapters
use Δ = (B·A)ᵀ), with the roundings PEFT's merge makes on the base loaded in its stored dtype: a linear
layer's W + Δ computed in float32 and rounded once; an embedding's or a wrapped parameter's Δ rounded to the
base's dtype first and then added in it (round-to-nearest-even each time). ``modules_to_save`` replace their
base tensors (the copies PEFT saves beside them with ``save_embedding_layers`` read as its loader reads
them); every other tensor is the base's. LoRA on parameters (``target_parameters``: a model's packed
3-D experts, as gpt-oss is adapted) merges each expert's Δ[e] = s·B[:, :, e]·A[e] in the layout PEFT
picks, PEFT's nested wrappers assigned to the parameters they wrap; where the base stores its experts
one by one (Qwen-MoE, Mixtral), each expert's tensor takes its rows of that expert's Δ (transformers packs
gate_up = [gate; up]); a 2-D parameter (a router's weight, which PEFT under transformers 5 targets for an
``all-linear`` LoRA on Qwen-MoE or Mixtral) is one such matrix, Δ = s·B·A. A LoRA in transformers 4's layout (each
expert's Linear and the router adapted as linear layers) is merged as that layout's PEFT merged it, W + Δ rounded
once; today's PEFT converts it to parameters and rounds Δ first, which the merge note says on a 16-bit base. DoRA
scales each merged linear weight, per output feature, to its learned magnitude (W' = m / ‖W + s·B·A‖ · (W + s·B·A));
``lora_bias`` adds s·bias_B to the module's bias; trainable tokens
(``trainable_token_indices``) replace their rows of the embedding (where tokens were added and the vocabulary
resized, of the resized embedding PEFT saves whole beside them, ``<module>.token_adapter.base_layer.weight``, as its
loader loads it; on a tied base the head's token adapter is the embedding's, counted once); a module
``modules_to_save`` lists that the base
does not hold (a classifier's new head, ``score``) is a tensor of the merged model only, and where the adapter's
``task_type`` is a classifier's, the base's language head is left out, as PEFT's merged classifier has none. Where
the base ties its output head to its input embedding and stores one tensor for both, a LoRA on the head is merged
into that tensor (as PEFT's merge does), one tied to the embedding's (``ensure_weight_tying``) is counted once,
and a head trained whole (``modules_to_save``) is the merged model's own, untied head; an input embedding trained whole
unties the two as well (PEFT wraps the embedding alone), the head then the base's embedding values, a tensor of its own.
Merging happens per tensor
in :meth:`MergedAdapter.get`, so nothing but one tensor pair is ever in memory. Adapter types other than LoRA,
LoRA variants no merge reproduces (aLoRA, Arrow, KaSA, QA-LoRA, ...) and initialisations that change the base
before training (PiSSA, CorDA, OLoRA, LoftQ, LoRA-GA, unless converted) are refused by name. PEFT saves the
names a model has in memory; where the base stores the tensor under another (a vision-language model that
transformers 5 saves under its release names), the target is the base's tensor of the same name past its model
prefix (:meth:`MergedAdapter._to_base`), and rank_pattern / alpha_pattern / target_modules are matched, as PEFT
matches them, against the name in memory. A mixture of experts' router or packed experts saved whole under
transformers 5's names in memory (Mixtral's and PhiMoE's ``mlp.gate`` / ``mlp.router``, ``mlp.experts.gate_up_proj``)
replace the base tensors they load into (``block_sparse_moe.gate``, each expert's slice: :meth:`MergedAdapter._placed`).
Only the LoRA modules adapter_config.json selects are merged, as PEFT builds LoRA layers only there and its loader
drops the file's other tensors without a word (``target_modules``, ``exclude_modules``, ``modules_to_save``,
``layers_to_transform`` / ``layers_pattern``: :meth:`MergedAdapter._not_selected`): a file holding others (a config
copied from another run) is merged as PEFT merges it, with a note naming them, and one the config selects none of
is refused; modules the config selects that the file holds no factors for are named in a note (PEFT leaves them at
its initialisation, no update), refused where ``init_lora_weights`` is false (a random B in PEFT). A file holding the
factors of several adapters (a PeftModel's state_dict dumped) is the adapter ``default``, as PEFT's loader reads it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from subnetviz.checkpoints.header import ST_DTYPE_INFO, ST_DTYPES, ST_STORED_AS, TensorMeta, read_safetensors_header
from subnetviz.checkpoints.naming import NORM_MODULES, TIED_HEADS, strip_prefix
from subnetviz.checkpoints.sources import (
    Checkpoint,
    holds_adapter,
    holds_model_weights,
    open_checkpoint,
    path_identity,
    source_of,
    utf8_name,
)
from subnetviz.config import check_allowed, check_readable, enforce_roots, read_json, require_memory
from subnetviz.errors import CheckpointError, PathNotAllowedError, SubnetvizError, suggest

# a LoRA factor, the adapter's name after its kind where the file keeps it (older PEFT saved it; a dump of a
# PeftModel's state_dict holds every adapter's, ``.default.`` and ``.other.``): :meth:`MergedAdapter._one_adapter`
_LORA = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.(?P<adapter>[^.]+))??"
    r"(?:\.weight)?$"
)
# what PEFT saves beside A and B (the adapter's name may follow the kind, as above)
_EXTRAS = {
    "bias": re.compile(r"^(?P<module>.+)\.lora_B(?:\.(?P<adapter>[^.]+))?\.bias$"),
    "magnitude": re.compile(r"^(?P<module>.+)\.lora_magnitude_vector(?:\.(?P<adapter>[^.]+))??(?:\.weight)?$"),
    "tokens": re.compile(r"^(?P<module>.+)\.token_adapter\.trainable_tokens_delta(?:\.(?P<adapter>[^.]+))?$"),
}
# the adapter PEFT's loader reads (PeftModel.from_pretrained's adapter_name): factors saved without a name are its
_DEFAULT_ADAPTER = "default"
_PEFT_PREFIX = "base_model.model."
# PEFT task types whose merged model is a classifier (AutoModelFor<task>), with its own head and no language head
_CLASSIFIER_TASKS = ("SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS")
# the order transformers defines packed experts' parameters in (PEFT wraps them in it: the first innermost)
_PARAM_ORDER = ["gate_up_proj", "gate_proj", "up_proj", "down_proj"]
# families whose experts are stored (experts, in, out), which PEFT does not swap (their is_transposed)
_NOT_SWAPPED = ("gpt_oss",)
# transformers' Conv1D weights, stored (in, out): GPT-2's attention and MLP (OpenAI-GPT, ImageGPT and the Decision
# Transformer's GPT-2 use the same names). PEFT merges a Conv1D with Δ transposed and an nn.Linear without, per layer.
_CONV1D = re.compile(r"(?:^|\.)(?:(?:attn|crossattention)\.(?:c_attn|q_attn|c_proj)|mlp\.(?:c_fc|c_proj))\.weight$")
# a module PEFT saves whole (modules_to_save): its trained copy, under the adapter's name or (save_embedding_layers)
# without it; PEFT's loader reads <module>.weight, the copy without the infix, where both are saved
_MODULES_TO_SAVE = re.compile(r"\.modules_to_save(?:\.default)?\.")
# the layer a module's trainable tokens wrap, saved whole (save_embedding_layers: a resized vocabulary) as
# <module>.token_adapter.base_layer.weight; PEFT's loader loads it into that layer (the module's weight)
_TOKEN_LAYER = ".token_adapter.base_layer."
# dtypes PEFT rounds an embedding's or a wrapped parameter's Δ to before adding it (its merge casts Δ to W's dtype)
_HALF = (torch.float16, torch.bfloat16)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # weights, not codes


def adapter_folder(spec) -> Path | None:
    """The folder of the PEFT adapter ``spec`` names (a folder with ``adapter_config.json``, or a cached hub id
    whose snapshot is one), else None: a hub id was read as a model of ``lora_A`` / ``lora_B`` tensors. A folder
    that holds a full model's weights and no adapter weights beside its ``adapter_config.json`` (a merged model
    saved where its adapter was, or uploaded with it) is that model, not an adapter.

    Hub id or path as the checkpoint readers decide (:func:`~subnetviz.checkpoints.sources.reads_as_hub_id`), and
    while the roots are enforced a path outside them is None before anything asks what is there: opening it then
    refuses it in the readers' words, the same whether it names an adapter, another folder or nothing (an adapter
    folder outside the roots read "adapter_config.json in …: leads outside", a missing one "outside the folders")."""
    from subnetviz.checkpoints.sources import reads_as_hub_id, resolve_hub_id

    s = str(spec)
    if reads_as_hub_id(s):
        try:
            folder = resolve_hub_id(s)
        except SubnetvizError:  # not cached, or the cache outside the roots: opening it says so
            return None
    else:
        p = os.path.expanduser(s)
        if enforce_roots():
            try:
                check_allowed(p)
            except PathNotAllowedError:
                return None
        if not os.path.isdir(p):  # os.path: False for a name no file can have (Path.is_dir raises)
            return None
        folder = Path(p)
    return folder if holds_adapter(folder) else None


def is_adapter(spec) -> bool:
    return adapter_folder(spec) is not None


def open_finetune(spec, base: Checkpoint) -> Checkpoint:
    """A finetune given by path or hub id: a plain checkpoint, or a PEFT adapter merged onto ``base``."""
    if isinstance(spec, Checkpoint):
        return spec
    return MergedAdapter(str(spec), base) if is_adapter(spec) else open_checkpoint(spec)


def adapter_info(spec) -> dict:
    """What a workspace shows of an adapter folder (or cached hub id) on its own (headers only): it is no model,
    so no architecture of its own; the fingerprint follows the adapter's file and config."""
    folder = adapter_folder(spec) or Path(str(spec)).expanduser()
    cfg = read_json(folder / "adapter_config.json", CheckpointError)
    weights = _adapter_weights(folder)
    header, raw = read_safetensors_header(weights)
    dtypes: dict[str, int] = {}  # the file's stored dtypes, named as a model's row names them ("bfloat16", not "bf16")
    for name, info in header.items():
        if name != "__metadata__":
            n, st = math.prod(int(d) for d in info["shape"]), str(info["dtype"])
            key = ST_STORED_AS.get(st) or ST_DTYPE_INFO.get(st, (st.lower(),))[0]
            dtypes[key] = dtypes.get(key, 0) + n
    h = hashlib.sha256(raw)
    h.update(json.dumps(cfg, sort_keys=True).encode())
    h.update(path_identity(weights))  # (two adapters with one mtime; a folder name that is not UTF-8 taken too)
    kind = "DoRA" if cfg.get("use_dora") else str(cfg.get("peft_type", "LORA"))[:40]
    rank = f" (r={str(cfg['r'])[:20]})" if "r" in cfg else ""  # (IA3 and BOFT have no rank)
    return {
        "fingerprint": h.hexdigest()[:16],
        "architecture": f"{kind} adapter{rank}",
        "params": sum(dtypes.values()),
        "dtypes": dtypes,
        "family": None,
    }


class MergedAdapter(Checkpoint):
    """The base checkpoint with a LoRA adapter merged into its target weights, tensor by tensor."""

    computes_tensors = True  # (its tensors are computed: a packed one is viewed per expert by :meth:`unpack` only)

    def __init__(self, spec: str, base: Checkpoint):
        folder = adapter_folder(spec) or Path(spec).expanduser()
        cfg_path = check_readable(folder / "adapter_config.json")
        self.adapter_config = read_json(cfg_path, CheckpointError)
        ac = self.adapter_config
        peft_type = str(ac.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise CheckpointError(
                f"{cfg_path}: peft_type {peft_type!r} is not supported (expected 'LORA'); "
                "merge it with peft and give the merged folder."
            )
        unknown = _check_variant(ac, cfg_path)
        weights = _adapter_weights(folder)
        super().__init__(base.spec, base.files, base.root, base.config)
        self._whole: dict[str, TensorMeta] = {}  # a tensor read through views (:meth:`unpack`) -> its own meta
        self._merged_views: dict[str, tuple[str, tuple]] = {}  # a view of a merged tensor -> (that tensor, index)
        self.spec = spec
        self.source = source_of(spec, folder)  # (a hub id with the commit of the snapshot read)
        self.base = base
        self.adapter_file = weights
        r, alpha, self._rank_pattern, self._alpha_pattern = _settings(ac, cfg_path)
        self._r = r  # (each module's rank as PEFT builds it: rank_pattern first, then r; checked in _plan)
        header, self._adapter_raw = read_safetensors_header(weights)
        self._expert_scales: dict[str, float] = {}
        self.pairs, self.replaced = self._plan(header)
        self._refuse_codes(folder)
        for target, key in self.replaced.items():  # a replaced tensor's shape is the adapter's (a resized
            # vocabulary); every tensor is given in the base's stored dtype, as a merge of it would save it
            shape = self._replaced_shape(header, target, key)
            if target in self._untied:  # a trained head the base does not store: in its embedding's dtype
                self._meta[target] = TensorMeta(target, weights, self.base.meta(self._untied[target]).dtype, shape)
            elif target in self._new:  # a new head: as the adapter saves it (no base dtype to round it to)
                self._meta[target] = TensorMeta(target, weights, ST_DTYPES[header[key]["dtype"]], shape)
            else:
                self._meta[target] = replace(self._meta[target], file=weights, shape=shape)
        for head, emb in self._head_from.items():  # an untied head of the base's embedding values
            self._meta[head] = replace(self.base.meta(emb), name=head)
        if self._untied:  # the merged model has a head of its own (a copy of the base's config, which stays tied)
            self.config = {**self.config, "tie_word_embeddings": False}
        self._dropped = self._drop_language_head()
        require_memory(f"The adapter {folder.name} (held while it is merged)", weights.stat().st_size)
        self._adapter = _load(weights)
        self._check_tied_copies()
        rule = "α/√r (rsLoRA)" if ac.get("use_rslora") else "α/r"
        dora = (
            f"; DoRA: each of the {len(self.magnitudes)} merged weight(s) is then scaled, per output feature, to its "
            "learned magnitude m: W' = m / ‖W + s·B·A‖ · (W + s·B·A), so its Δ is not of rank ≤ r"
            if self.magnitudes
            else ": rank(s·B·A) ≤ r, and the rounding adds a floor below the r-th singular value of Δ (at most "
            "‖rounding error‖)"
        )
        rows = sum(len(r) for _, r in self.tokens.values())
        shown = folder.name if folder.name == Path(spec).name else spec  # (a hub id, not its snapshot's commit)
        self.notes = [
            f"{'DoRA' if self.magnitudes else 'LoRA'} adapter {shown} merged onto {base.spec}: W + s·B·A "
            f"with s = {rule} (r={r}, α={alpha}) for {len(self.pairs)} tensor(s), computed in float32 and rounded to "
            "the base's stored dtype (round-to-nearest-even) as PEFT's merge rounds it: a linear layer's W + Δ once, "
            f"an embedding's or a target parameter's (experts, a router's weight) Δ first and then W + Δ{dora}"
            + self._per_expert_note()
            + self._whole_note()
            + (f"; {len(self.biases)} bias(es) b + s·bias_B (lora_bias)" if self.biases else "")
            + (f"; {rows} embedding row(s) replaced by trainable tokens" if self.tokens else "")
            + ".",
            *self._fan_in_fan_out_notes(),
            *self._resized_notes(),
            *self._tied_notes,
            *self._target_notes,
            *self._unselected_notes(),
            *self._absent_notes(),
            *self._other_adapter_notes(),
            *self._new_notes(),
            *(
                [
                    f"{folder.name} also holds a full model's weights beside the adapter: the weight analyses read the "
                    f"adapter merged onto {base.spec}; Behaviour runs the model saved there, without the adapter."
                ]
                if holds_model_weights(folder)
                else []
            ),
            *_other_base_note(ac.get("base_model_name_or_path"), base),
            *unknown,
        ]

    def _drop_language_head(self) -> list[str]:
        """The base's output head, left out of the merged model where the adapter is a classifier's (``task_type``
        SEQ_CLS, TOKEN_CLS or QUESTION_ANS) that brings a new head: PEFT's merge of it is an
        AutoModelFor<task> model, which holds the new head and not the language model's (the analysis of that
        merged model finds the head only in the base)."""
        task = str(self.adapter_config.get("task_type") or "").upper()
        if not self._new or task not in _CLASSIFIER_TASKS:
            return []
        changed = {*self.pairs, *self.replaced, *self.biases, *self.tokens, *self._extra}
        dropped = [n for n in self._meta if strip_prefix(n) in TIED_HEADS and n not in changed]
        for n in dropped:
            del self._meta[n]
        return dropped

    def _new_notes(self) -> list[str]:
        """A note naming the new tensors the adapter brings (:meth:`_new_module`) and the head left out with them."""
        if not self._new:
            return []
        new = sorted(self._new)
        task = str(self.adapter_config.get("task_type") or "").upper()
        return [
            f"{len(new)} tensor(s) of a module the base does not hold ({', '.join(new[:3])}"
            f"{' …' if len(new) > 3 else ''}) are saved whole by the adapter (modules_to_save): a new head, in the "
            "merged model only (not compared)"
            + (
                f"; as PEFT's merge of a {task} adapter is a {task} model, the base's {', '.join(self._dropped)} is "
                "no part of it (only in the base)."
                if self._dropped
                else "."
            )
        ]

    def _per_expert_note(self) -> str:
        """Where the merge note's "as PEFT's merge rounds it" is not what today's PEFT does: a LoRA in the layout of
        transformers 4 (each expert's Linear adapted, ``experts.<e>.gate_proj`` / ``w1`` …, and the router ``gate``
        as a Linear) on a mixture of experts stored expert by expert in a 16-bit dtype. Those weights are merged
        here as the linear layers they were trained as: W + Δ rounded once, as PEFT merged them under transformers 4
        (the nearest 16-bit value to W + Δ). PEFT 0.21 under transformers 5 converts such an adapter into
        ``target_parameters`` on the packed experts and the router's weight and rounds Δ to the base's dtype
        before adding it, so its merge_and_unload is 1 ULP off this one in some of their entries (a float32 base:
        no difference)."""
        moe = {n[: m.start()] for n in self.base.names if (m := _EXPERT_TENSOR.search(n))}  # e.g. model.layers.0.mlp
        linear = [
            t
            for t, (_, _, emb) in self.pairs.items()
            if not emb
            and t not in self.experts
            and t not in self._slices
            and self.meta(t).dtype in _HALF
            and (_EXPERT_TENSOR.search(t) or (t.endswith(".gate.weight") and t[: -len(".gate.weight")] in moe))
        ]
        if not linear:
            return ""
        dtype = str(self.meta(linear[0]).dtype).replace("torch.", "")
        return (
            f"; but {len(linear)} expert or router weight(s) (e.g. {linear[0]}) carry a LoRA of transformers 4's "
            "layout, each expert's Linear and the router adapted as linear layers: they are merged as such, W + Δ "
            "rounded once, as PEFT merged them under transformers 4. PEFT 0.21 under transformers 5 converts such an "
            f"adapter to target_parameters on the packed experts and the router and rounds Δ to {dtype} first, so "
            "its merge_and_unload differs from this merge by 1 ULP in some entries of these weights"
        )

    def _whole_note(self) -> str:
        """What the tensors saved whole replace, for the merge note: the biases ``bias: all`` / ``lora_only``
        trains, the embedding weights ``save_embedding_layers`` saves beside their LoRA, the embedding layers it
        saves otherwise (a resized vocabulary: the layer trainable tokens wrap, a head no adapter wraps), and
        modules_to_save (a new head is noted apart, :meth:`_new_notes`)."""
        setting = self.adapter_config.get("bias")
        table = self.base.names_table
        biases, layers, embeddings, modules = [], [], [], []
        for target, key in self.replaced.items():
            if target in self._new:
                continue
            module = self._memory.get(target, target).rpartition(".")[0]
            listed = _MODULES_TO_SAVE.search(key) or _listed(self.adapter_config.get("modules_to_save"), module)
            if setting in ("all", "lora_only") and target.endswith(".bias") and not listed:
                biases.append(target)
            elif _TOKEN_LAYER in key:
                embeddings.append(target)
            elif ".base_layer." in key and not listed:
                layers.append(target)
            elif not listed and table.describe(self._untied.get(target, target)).module in ("embed", "lm_head"):
                embeddings.append(target)
            else:
                modules.append(target)
        return (
            (f"; {len(modules)} tensor(s) replaced by modules_to_save" if modules else "")
            + (f"; {len(biases)} bias(es) trained whole (bias = {setting!r})" if biases else "")
            + (f"; {len(layers)} embedding weight(s) saved whole beside their LoRA" if layers else "")
            + (f"; {len(embeddings)} embedding layer(s) saved whole (save_embedding_layers)" if embeddings else "")
        )

    def _resized_notes(self) -> list[str]:
        """A note where the tensors the adapter saves whole have another number of rows than the base's (tokens were
        added and the vocabulary resized before training): PEFT's loader loads them, so the merged model's are these
        (its embedding and head), and an analysis compares the rows they share with the base."""
        resized = {
            t: (self.base.meta(self._untied.get(t, t)).shape[0], self._meta[t].shape[0])
            for t in self.replaced
            if t not in self._new
            and len(self._meta[t].shape) == 2
            and self._meta[t].shape[0] != self.base.meta(self._untied.get(t, t)).shape[0]
        }
        if not resized:
            return []
        sizes = sorted(set(resized.values()))
        names = ", ".join(resized)
        said = (
            f"from {sizes[0][0]} to {sizes[0][1]} rows"
            if len(sizes) == 1
            else "; ".join(f"{t} from {n} to {m} rows" for t, (n, m) in resized.items())
        )
        return [
            f"the adapter's vocabulary was resized {said} (tokens added before training): it saves {names} whole at "
            "that size, which PEFT's loader loads into the resized base, so the merged model's are those tensors"
            + (
                f" (the trainable tokens' rows replaced in {', '.join(t for t in resized if t in self.tokens)})"
                if set(resized) & set(self.tokens)
                else ""
            )
            + f"; compared with the base {self.base.spec} over the rows they share."
        ]

    def _refuse_codes(self, folder: Path) -> None:
        """A LoRA merges W + s·B·A onto float weights: a target the base stores as quantized codes (FP8, int8,
        compressed-tensors' or bitsandbytes' 4-bit codes, listed in the weight's shape) would have had Δ added to
        its codes, so it is refused by name (QLoRA's adapter was trained against the dequantised weights; PEFT
        merges it by dequantising and quantising again)."""
        coded = [
            t
            for t in (*self.pairs, *self.biases, *self.replaced)  # (a modules_to_save copy would replace codes too)
            if t in self.base.names and self.base.meta(t).dtype not in _FLOATS
        ]
        if coded:
            m = self.base.meta(coded[0])
            form = m.stored or str(m.dtype).replace("torch.", "")
            raise CheckpointError(
                f"{folder}: the adapter targets {coded[0]}{f' (and {len(coded) - 1} more)' if len(coded) > 1 else ''}, "
                f"which the base {self.base.spec} stores as quantized codes ({form}); an adapter is merged here onto "
                "float weights: give the unquantized base the quantized one was made from."
            )

    def _plan(self, header: dict) -> tuple[dict[str, tuple[str, str, bool]], dict[str, str]]:
        base_names = set(self.base.names)
        self._memory: dict[str, str] = {}  # base's stored name -> the name in memory PEFT saved, where they differ
        self._by_short: dict[str, list[str]] | None = None  # the base's names by their name past the model prefix
        self._fifo: set[str] = set()  # targets PEFT merges as Conv1D (Δ transposed), decided per layer
        self._extra: dict[str, tuple[str, str, str]] = {}  # tied tensor -> its head's LoRA (A, B, module in memory)
        self._untied: dict[str, str] = {}  # a trained head the base ties and does not store -> the base's embedding
        # an untied head read from the base's embedding (the embedding trained whole, the head not): head -> embedding
        self._head_from: dict[str, str] = {}
        # a 16-bit weight PEFT merges as a DoRA module at its initialisation (selected, no tensors in the file) ->
        # whether it is a Conv1D's, stored (in, out)
        self._dora_init: dict[str, bool] = {}
        # (key, key it must equal, transposed, why): checked once loaded
        self._tied_copies: list[tuple[str, str, bool, str]] = []
        self._tied_notes: list[str] = []
        # a module the base does not hold, saved whole (a new task head): a tensor of the merged model only
        self._new: set[str] = set()
        # a base tensor that is a slice of a whole tensor the adapter saves (packed experts saved whole, the base's
        # stored one by one): (base name, adapter key) -> index into the adapter's tensor; then base name -> index
        self._slice_at: dict[tuple[str, str], tuple] = {}
        self._slice_of: dict[str, tuple] = {}
        pairs: dict[str, dict[str, str]] = {}
        full: dict[str, list[str]] = {}  # target -> the whole tensors saved for it
        heads: dict[str, dict[str, str]] = {}  # a tied head's LoRA: its weight in memory -> kind -> key
        head_copies: dict[str, str] = {}  # a tied head saved whole (modules_to_save): its weight in memory -> key
        wrapped = self._parameter_targets(base_names)  # LoRA on parameters (target_parameters)
        # a wrapped module named as in memory: past its model prefix, and (a router transformers 5 renames, Mixtral's
        # block_sparse_moe.gate held as mlp.gate) under its name in memory
        wrapped_short = {strip_prefix(w): w for w in wrapped}
        wrapped_short.update({strip_prefix(m): w for m, w in self._wrapped_in_memory.items() if w in wrapped})
        per_param: dict[str, dict[int, dict[str, str]]] = {}  # wrapped module -> depth -> kind -> key
        extras: dict[str, dict[str, str]] = {}  # "bias" / "magnitude" / "tokens" -> module -> key
        # a LoRA module adapter_config.json does not select -> (why, its tensors): left out, as PEFT leaves it
        self._unselected: dict[str, tuple[str, list[str]]] = {}
        head_layers: dict[str, str] = {}  # a tied head's weight saved beside its LoRA: its weight in memory -> key
        others = self._one_adapter(header)  # the keys of another adapter's than the one PEFT's loader reads
        for key in header:
            if key == "__metadata__" or key in others:
                continue
            short = key[len(_PEFT_PREFIX) :] if key.startswith(_PEFT_PREFIX) else key
            extra = next(((kind, m) for kind, rx in _EXTRAS.items() if (m := rx.match(short))), None)
            if extra is not None:  # LoRA's bias, DoRA's magnitudes, trainable tokens: checked in _plan_extras
                module = extra[1]["module"]
                self._put(extras.setdefault(extra[0], {}), module, key, f"the LoRA {extra[0]} of {module!r}")
                continue
            m = _LORA.match(short)
            module = m["module"].split(".base_layer")[0] if m is not None else None
            if module is not None and module not in wrapped and strip_prefix(module) in wrapped_short:
                stored = wrapped_short[strip_prefix(module)]
                for p in wrapped[stored]:
                    self._memory[f"{stored}.{p}"] = f"{module}.{p}"
                module = stored
            if module in wrapped:
                depth = m["module"].count(".base_layer")
                slots = per_param.setdefault(module, {}).setdefault(depth, {})
                self._put(slots, m["kind"], key, f"the {m['kind']} of {m['module']!r}")
                continue
            if self._dropped_key(key, short, m, wrapped_short):
                continue
            if m is None:  # modules_to_save, trainable biases, and the weight of a LoRA-adapted embedding PEFT saves
                # as <module>.base_layer.weight (its vocabulary may have been resized): a full tensor replacing
                # the base's, to which that module's B·A is then added
                target = _whole_target(short)
                placed = self._placed(key, target, tuple(header[key]["shape"]), base_names)
                if placed:  # a router or packed experts saved under their names in memory (transformers 5's)
                    for name, index in placed:
                        full.setdefault(name, []).append(key)
                        if index != ():
                            self._slice_at[name, key] = index
                    continue
                if self._new_module(key, target, base_names):
                    self._new.add(target)
                    full.setdefault(target, []).append(key)
                elif self._tied_embedding(target, base_names) is None:
                    full.setdefault(self._to_base(key, target, base_names), []).append(key)
                elif ".base_layer." in short:  # a LoRA-adapted tied head's weight: the tensor it shares
                    full.setdefault(self._tied_embedding(target, base_names), []).append(key)
                    head_layers[target] = key
                else:
                    head_copies[target] = key
                continue
            target = f"{m['module']}.weight"
            if self._tied_embedding(target, base_names) is not None:
                self._put(heads.setdefault(target, {}), m["kind"], key, f"the {m['kind']} of {target!r}")
                continue
            target = self._to_base(key, target, base_names)
            self._put(pairs.setdefault(target, {}), m["kind"], key, f"the {m['kind']} of {target!r}")
        selected = any((pairs, heads, per_param))  # (whether the config selects any of the file's LoRA modules)
        # of the copies saved for one tensor, the one PEFT's loader reads: <module>.weight before the copy under
        # modules_to_save, and a tied tensor's values as its embedding's own key saves them before its head's
        replaced = {
            t: min(keys, key=lambda k: (bool(_MODULES_TO_SAVE.search(k)), strip_prefix(_whole_target(k)) in TIED_HEADS))
            for t, keys in full.items()
        }
        self._slice_of = {t: self._slice_at[t, k] for t, k in replaced.items() if (t, k) in self._slice_at}
        self._plan_tied(heads, head_copies, head_layers, pairs, replaced, base_names)
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
            want = self._replaced_shape(header, target, replaced.get(target))
            if not emb and self._conv1d(target, header[a]["shape"], header[b]["shape"], want):
                self._fifo.add(target)
            self._check_shapes(target, header[a]["shape"], header[b]["shape"], emb, want)
            self._check_rank(target, a, header[a]["shape"][0])
            out[target] = (a, b, emb)
        for target, (a, b, module) in self._extra.items():
            want = self._replaced_shape(header, target, replaced.get(target))
            self._check_shapes(target, header[a]["shape"], header[b]["shape"], False, want)
            self._check_rank(target, a, header[a]["shape"][0], module=module)
        self._check_target_modules(base_names)
        self._leave_out_unselected(extras, selected)
        self.experts = self._plan_parameters(wrapped, per_param, header, out)
        self._plan_extras(extras, header, out, replaced, base_names)
        self._absent = self._selected_but_absent(base_names, out, replaced, wrapped)
        return out, replaced

    def _one_adapter(self, header: dict) -> set[str]:
        """The keys of ``header`` that belong to another adapter than the one PEFT's loader reads, left out.

        PEFT saves one adapter per file, without its name; a file dumped from a PeftModel's ``state_dict`` holding
        several (``add_adapter``) keeps each factor's adapter name (``…lora_A.default.weight``,
        ``…lora_A.other.weight``). ``PeftModel.from_pretrained`` loads the adapter named ``default`` (unnamed factors
        are its) and drops the others' tensors, so the merge is that adapter's: the others' factors, DoRA magnitudes,
        LoRA biases, trainable tokens and modules saved under their names are left out (:attr:`_other_adapters`,
        said in a note). A file of several adapters none of which is ``default`` is refused in one line naming them;
        a file of one adapter is read whatever its name."""
        named: dict[str, str] = {}  # a factor's key -> its adapter's name
        for key in header:
            if key == "__metadata__":
                continue
            short = key[len(_PEFT_PREFIX) :] if key.startswith(_PEFT_PREFIX) else key
            m = next((m for rx in _EXTRAS.values() if (m := rx.match(short))), None) or _LORA.match(short)
            if m is not None:
                named[key] = m["adapter"] or _DEFAULT_ADAPTER
        names = sorted(set(named.values()))
        self._other_adapters: tuple[list[str], int] | None = None
        if len(names) < 2:
            return set()
        shown = ", ".join(repr(n[:40]) for n in names[:4]) + (" …" if len(names) > 4 else "")
        if _DEFAULT_ADAPTER not in names:
            raise CheckpointError(
                f"{self.adapter_file}: holds the LoRA tensors of {len(names)} adapters ({shown}) and none of the "
                f"adapter {_DEFAULT_ADAPTER!r}, the one PEFT's loader reads from such a file; save the adapter to "
                "analyse on its own (peft's save_pretrained writes one adapter per folder) and give that folder."
            )
        others = set(names) - {_DEFAULT_ADAPTER}
        left = {k for k, n in named.items() if n in others}
        saved = re.compile(r"\.modules_to_save\.(?P<adapter>[^.]+)\.")  # (a module saved whole under its name)
        left |= {k for k in header if (m := saved.search(k)) and m["adapter"] in others}
        self._other_adapters = (sorted(others), len(left))
        return left

    def _other_adapter_notes(self) -> list[str]:
        """A note naming the adapters whose tensors the file holds beside the one merged (:meth:`_one_adapter`)."""
        if self._other_adapters is None:
            return []
        others, n = self._other_adapters
        shown = ", ".join(repr(o[:40]) for o in others[:4]) + (" …" if len(others) > 4 else "")
        return [
            f"{self.adapter_file.name} holds the LoRA tensors of {len(others) + 1} adapters: the merge is the adapter "
            f"{_DEFAULT_ADAPTER!r}, the one PEFT's loader (PeftModel.from_pretrained) reads from it; the {n} "
            f"tensor(s) of {shown} are left out, as that loader drops them. Save another adapter on its own to "
            "analyse it."
        ]

    def _put(self, slots: dict, slot: str, key: str, what: str) -> None:
        """``slots[slot] = key``, refused in one line where the slot is taken: two A (or B, magnitude, bias) tensors
        of one module would have one of them merged with the other's partner."""
        if slot in slots:
            raise CheckpointError(
                f"{self.adapter_file}: two tensors are {what} ({slots[slot]!r}, {key!r}); expected one, of one "
                "adapter. Save the adapter with peft's save_pretrained and give that folder."
            )
        slots[slot] = key

    def _placed(
        self, key: str, target: str, shape: tuple[int, ...], base_names: set[str]
    ) -> list[tuple[str, tuple]] | None:
        """Where the whole tensor ``key`` (``target``: its name in memory, of ``shape``) goes in a base that stores it
        under other names: PEFT under transformers 5 saves the names a model has in memory, and a mixture of
        experts' router and experts saved whole (modules_to_save, a packed parameter) are named there as transformers
        loads them, not as the release stores them (Mixtral's router ``mlp.gate`` is ``block_sparse_moe.gate``,
        PhiMoE's ``mlp.router`` too; Qwen-MoE's and Mixtral's ``mlp.experts.gate_up_proj`` (E, 2I, H) / ``down_proj``
        (E, H, I) are each expert's ``gate_proj`` / ``up_proj`` / ``down_proj`` (``w1`` / ``w3`` / ``w2``)), by
        :func:`~subnetviz.checkpoints.experts_layout.param_pieces`: ``[(base name, index into the adapter's
        tensor)]``, ``()`` for the whole of it. None where the base holds ``target`` by its name (or past its
        prefix), and where no base tensors of fitting shapes are there."""
        from subnetviz.checkpoints.experts_layout import param_pieces

        if ".base_layer." in key or target in base_names or self._short_hits(target, base_names):
            return None
        shapes = {strip_prefix(n): tuple(self.base.meta(n).shape) for n in sorted(base_names, reverse=True)}
        pieces = param_pieces(strip_prefix(target), shape, shapes)
        out = []
        for short, index in pieces or ():
            hits = self._short_hits(short, base_names)
            if len(hits) != 1:
                return None
            out.append((hits[0], index))
        for name, index in out:
            if index == ():  # (a router: the module in memory, as rank / alpha patterns and target_modules name it)
                self._memory[name] = target
        return out or None

    def _replaced_shape(self, header: dict, target: str, key: str | None) -> tuple[int, ...]:
        """The shape of base tensor ``target`` in the merged model where the adapter's tensor ``key`` replaces it:
        that tensor's (a resized vocabulary), or the base's where it is a slice of it (:meth:`_placed`) or none
        replaces it."""
        if key is None or target in self._slice_of:
            return tuple(self.base.meta(self._head_from.get(target, target)).shape)
        return tuple(header[key]["shape"])

    def _new_module(self, key: str, target: str, base_names: set[str]) -> bool:
        """Whether the whole tensor ``key`` (``target``: its name in memory) is of a module the merged model has and
        the base does not: one ``modules_to_save`` lists (as PEFT matches it: the name, or the end of one) of which
        the base holds no tensor under any name. PEFT adds a task's new head there (``score`` / ``classifier`` of a
        SEQ_CLS or TOKEN_CLS adapter, ``qa_outputs``) and saves it whole; the merged model's own, not compared."""
        if ".base_layer." in key or target in base_names or self._short_hits(target, base_names):
            return False
        if self._tied_embedding(target, base_names) is not None:  # a tied head: the embedding's (_plan_tied)
            return False
        return _listed(self.adapter_config.get("modules_to_save"), target.rpartition(".")[0])

    def _tied_embedding(self, target: str, base_names: set[str]) -> str | None:
        """The base's input embedding where ``target`` (a weight's name in memory) is an output head that the base
        ties to it (``tie_word_embeddings``) and does not store: in memory, the head's weight is that tensor.
        None for any other name, and where the base has no one input embedding."""
        if strip_prefix(target) not in TIED_HEADS or not self.base.tied_embeddings:
            return None
        if target in base_names or self._short_hits(target, base_names):
            return None
        return self._input_embedding

    @cached_property
    def _input_embedding(self) -> str | None:
        """The base's input embedding its tied head is (:attr:`Checkpoint.input_embedding`: Gemma-4's per-layer
        embedding beside it is not), else None."""
        return self.base.input_embedding

    def _plan_tied(
        self, heads: dict, head_copies: dict, head_layers: dict, pairs: dict, replaced: dict, base_names: set[str]
    ) -> None:
        """An output head the base ties to its input embedding and stores no tensor of (see :meth:`_tied_embedding`),
        as PEFT trains and merges it:

        - a LoRA on the head is merged into the tensor it shares with the embedding (PEFT's merge adds it to the
          shared weight, so the input embedding changes with the head); where the embedding has a LoRA too, the
          head's is added after it (:attr:`_extra`), as ``merge_and_unload`` merges the modules in order;
        - with ``ensure_weight_tying`` the head's LoRA factors are the embedding's own (transposed): checked equal
          and counted once, the tied model that was trained (PEFT 0.21's ``merge_and_unload`` adds that Δ a second
          time through the head, so its merge is not the model it trained);
        - a head saved whole (``modules_to_save``) is a trained copy that unties the two: the merged model's own
          ``lm_head.weight`` (:attr:`_untied`), the embedding left as it is; with ``ensure_weight_tying`` it is
          the embedding's trained copy, checked equal and counted once;
        - an input embedding saved whole (``modules_to_save``) unties the two too: PEFT wraps the embedding alone,
          so the head keeps the embedding's original values (and its LoRA merges into them), and its merged model
          has ``tie_word_embeddings`` false and saves both. The merged model's ``lm_head.weight`` is then the
          base's embedding, unchanged or with the head's LoRA merged into it (:attr:`_head_from`, :attr:`_untied`),
          a tensor of its own."""
        ensure = bool(self.adapter_config.get("ensure_weight_tying"))
        emb_key = replaced.get(self._input_embedding) if self._input_embedding else None
        task = str(self.adapter_config.get("task_type") or "").upper()
        whole = (  # the input embedding trained whole (not the weight PEFT saves beside its LoRA), the two untied
            not ensure
            and task not in _CLASSIFIER_TASKS
            and emb_key is not None
            and ".base_layer." not in emb_key
            and strip_prefix(_whole_target(emb_key)) not in TIED_HEADS
        )
        for head, kinds in heads.items():
            emb = self._tied_embedding(head, base_names)
            a, b = kinds.get("lora_A"), kinds.get("lora_B")
            if a is None or b is None or set(kinds) - {"lora_A", "lora_B"}:
                raise CheckpointError(
                    f"{self.adapter_file}: the tied head {head!r} has LoRA tensors {sorted(kinds.values())}; expected "
                    "one lora_A and one lora_B."
                )
            tied = f"the base ties {head} to {emb} (tie_word_embeddings) and stores one tensor for both"
            own = pairs.get(emb, {})
            if ensure and "lora_embedding_A" in own and "lora_embedding_B" in own:
                why = "ensure_weight_tying is set"
                self._tied_copies += [(a, own["lora_embedding_B"], True, why), (b, own["lora_embedding_A"], True, why)]
                self._tied_notes.append(
                    f"ensure_weight_tying: {tied}, and the LoRA factors saved for {head} are the embedding's own "
                    "(transposed), so the head's Δ is the embedding's: added once, the tied model that was trained "
                    "(PEFT's merge_and_unload adds it a second time through the head)."
                )
            elif whole:
                pairs[head] = {"lora_A": a, "lora_B": b}
                self._untie(head, emb, head_layers.get(head), replaced, lora=True)
            elif own:
                self._extra[emb] = (a, b, head[: -len(".weight")])
                self._tied_notes.append(
                    f"{tied}: the LoRA of {head} is merged into it after the embedding's own, as PEFT's merge_and_unload "
                    "merges both into the shared weight (unmerged, the embedding and the head each had only their own)."
                )
            else:
                pairs[emb] = {"lora_A": a, "lora_B": b}
                self._memory[emb] = head
                self._tied_notes.append(
                    f"{tied}: the LoRA of {head} is merged into it, as PEFT's merge_and_unload merges it into the "
                    "shared weight, so the merged model's input embedding changes with its head (unmerged, the "
                    "adapter left the input embedding as it was)."
                )
        for head, key in head_copies.items():
            emb = self._tied_embedding(head, base_names)
            if ensure and emb in replaced:
                self._tied_copies.append((key, replaced[emb], False, "ensure_weight_tying is set"))
                self._tied_notes.append(
                    f"ensure_weight_tying: the copy of {head} the adapter saves is the embedding's trained copy, "
                    f"tied to it: counted once, as {emb}."
                )
                continue
            self._untied[head] = emb
            replaced[head] = key
            embedding = "the adapter's trained copy" if emb in replaced else "the base's"
            self._tied_notes.append(
                f"the base ties {head} to {emb} (tie_word_embeddings) and stores no {head}; the adapter saves a trained "
                f"copy of it (modules_to_save), which unties the two as PEFT's merge does: the merged model's {head} "
                f"is that copy, and its input embedding is {embedding}. The base stores no {head}: the copy is compared "
                f"with the base's {emb}, the values it was trained from."
            )
        head = "lm_head.weight"  # (the head of a causal LM in memory, as PEFT's merged model saves it)
        emb = self._tied_embedding(head, base_names)
        if whole and emb is not None and head not in heads and head not in head_copies:
            self._untie(head, emb, None, replaced, lora=False)

    def _untie(self, head: str, emb: str, key: str | None, replaced: dict, *, lora: bool) -> None:
        """The head ``head`` the base ties to ``emb`` made a tensor of the merged model's own, where the adapter
        trains the input embedding whole and not the head (:meth:`_plan_tied`): the base's embedding values (or the
        copy of them PEFT saves beside the head's LoRA, ``key``), with the head's LoRA merged into them (``lora``)."""
        self._untied[head] = emb
        if key is not None:
            replaced[head] = key
        else:
            self._head_from[head] = emb
        self._tied_notes.append(
            f"the base ties {head} to {emb} (tie_word_embeddings) and stores one tensor for both; the adapter saves a "
            f"trained copy of the embedding (modules_to_save) and {'a LoRA' if lora else 'no copy'} of {head}, which "
            "unties the two as PEFT's merge does (its merged model has tie_word_embeddings false and saves both): the "
            f"merged model's input embedding is that copy, and its {head} is a tensor of its own, the base's {emb} "
            f"values {'with the LoRA of the head merged into them' if lora else 'unchanged'}. The base stores no "
            f"{head}: it is compared with the base's {emb}."
        )

    def _check_tied_copies(self) -> None:
        """A tied head's LoRA factors or trained copy, where ``ensure_weight_tying`` counts them once as the
        embedding's, and its trainable tokens, which PEFT ties to the embedding's (:meth:`_plan_tied_tokens`): equal
        to the embedding's, or the adapter is not the tied model it says it is."""
        for key, other, transposed, why in self._tied_copies:
            want = self._adapter[other].T if transposed else self._adapter[other]
            if not torch.equal(self._adapter[key], want):
                raise CheckpointError(
                    f"{self.adapter_file}: {why}, but {key!r} is not the embedding's "
                    f"{other!r}{' transposed' if transposed else ''}, which it is tied to. Merge it with peft and give "
                    "the merged folder."
                )

    def _conv1d(self, target: str, a: list[int], b: list[int], want: tuple[int, ...]) -> bool:
        """Whether PEFT merges the linear target ``target`` with Δ transposed. PEFT decides it per layer: True for
        transformers' Conv1D (GPT-2's attention and MLP weights, stored (in, out)), False for nn.Linear, whatever
        fan_in_fan_out says (it rewrites the config as it wraps each layer, so the saved value is the last
        layer's: false for a GPT-2 adapter whose targets include lm_head). The base's naming table tells which
        weights are Conv1D; where no config.json says gpt2 (GPT-BigCode writes GPT-2's names for nn.Linear), the
        shapes tell where only one orientation fits. An architecture no table knows keeps the config's value."""
        table = self.base.names_table
        saved = bool(self.adapter_config.get("fan_in_fan_out"))
        if table.family is None:
            return saved
        if table.family != "gpt2" or not _CONV1D.search(self._memory.get(target, target)):
            return False
        if not table.guessed or len(a) != 2 or len(b) != 2:
            return True
        linear, conv1d = (b[0], a[1]) == want, (a[1], b[0]) == want
        return conv1d if linear != conv1d else saved

    def _fan_in_fan_out_notes(self) -> list[str]:
        """A note where the saved fan_in_fan_out is not what PEFT used for some target (see :meth:`_conv1d`)."""
        saved = bool(self.adapter_config.get("fan_in_fan_out"))
        linear = [t for t, (_, _, emb) in self.pairs.items() if not (emb or t in self.experts or t in self._slices)]
        if all((t in self._fifo) == saved for t in linear):
            return []
        conv = [t for t in linear if t in self._fifo]
        said = (
            f"adapter_config.json says fan_in_fan_out = {str(saved).lower()}, but PEFT decides it per layer (true for "
            "transformers' Conv1D, false for nn.Linear): "
        )
        if not conv:
            return [
                said + f"none of the {len(linear)} linear target(s) is a Conv1D, so none is merged with Δ transposed."
            ]
        return [
            said + f"{len(conv)} of the {len(linear)} linear target(s) are Conv1D weights stored (in, out) (e.g. "
            f"{conv[0]}) and are merged with Δ transposed, the others without, as PEFT merges them."
        ]

    def _plan_extras(self, extras: dict, header: dict, pairs: dict, replaced: dict, base_names: set[str]) -> None:
        """What PEFT saves beside A and B, each checked against the base from the headers:

        - ``lora_B.bias`` (``lora_bias: true``): the module's bias becomes b + s·bias_B (:attr:`biases`);
        - ``lora_magnitude_vector`` (DoRA): the merged weight W + s·B·A is scaled, per output feature, to the
          learned magnitude m: W' = m / ‖W + s·B·A‖ · (W + s·B·A), the norm over each output feature's inputs
          as PEFT takes it (:attr:`magnitudes`);
        - ``token_adapter.trainable_tokens_delta`` (``trainable_token_indices``): the listed rows of the
          embedding are replaced by the stored ones (PEFT's "delta" holds the rows' new values) (:attr:`tokens`).
        """
        self.biases: dict[str, tuple[str, str]] = {}  # bias -> (adapter key, the module's weight)
        self.magnitudes: dict[str, str] = {}  # weight -> adapter key
        self.tokens: dict[str, tuple[str, list[int]]] = {}  # embedding weight -> (adapter key, rows)
        for module, key in extras.get("bias", {}).items():
            target = self._to_base(key, f"{module}.bias", base_names)
            weight = self._memory_to_base.get(f"{module}.weight", f"{module}.weight")
            if weight not in pairs or pairs[weight][2] or weight in self.experts:
                raise CheckpointError(
                    f"{self.adapter_file}: {key!r} is a LoRA bias (lora_bias) of {module!r}, which has no LoRA A/B "
                    "pair of a linear layer in the adapter; merge it with peft and give the merged folder."
                )
            self._check_vector(key, header, self.base.meta(target).shape)
            self.biases[target] = (key, weight)
        for module, key in extras.get("magnitude", {}).items():
            weight = self._memory_to_base.get(f"{module}.weight", f"{module}.weight")
            if weight not in pairs or pairs[weight][2] or weight in self.experts or weight in self._slices_of(pairs):
                what = "an embedding" if weight in pairs and pairs[weight][2] else "a module without a linear LoRA pair"
                raise CheckpointError(
                    f"{self.adapter_file}: DoRA magnitude {key!r} belongs to {what} ({module!r}); DoRA is merged here "
                    "for linear layers only. Merge it with peft and give the merged folder."
                )
            shape = self._replaced_shape(header, weight, replaced.get(weight))
            self._check_vector(key, header, (shape[1 if weight in self._fifo else 0],))
            self.magnitudes[weight] = key
        linear = len([t for t, (_, _, emb) in pairs.items() if not emb])
        if self.adapter_config.get("use_dora") and len(self.magnitudes) != linear:
            raise CheckpointError(
                f"{self.adapter_file}: use_dora is set but {len(self.magnitudes)} of its {linear} linear LoRA pairs "
                "have a lora_magnitude_vector; every DoRA module needs one."
            )
        if self.magnitudes and not self.adapter_config.get("use_dora"):
            raise CheckpointError(
                f"{self.adapter_file}: the adapter holds DoRA magnitudes (lora_magnitude_vector) but "
                "adapter_config.json does not set use_dora."
            )
        # the layers trainable tokens wrap, saved whole (a resized vocabulary): weight -> its key
        layers = {t: k for t, k in replaced.items() if _TOKEN_LAYER in k}
        tied: dict[str, tuple[str, str]] = {}  # a tied head's trainable tokens: module -> (key, the embedding)
        for module, key in extras.get("tokens", {}).items():
            emb = self._tied_embedding(f"{module}.weight", base_names)
            if emb is not None:  # the head's token adapter, tied to the embedding's: below
                tied[module] = (key, emb)
                continue
            weight = self._to_base(key, f"{module}.weight", base_names)
            if weight in pairs or (weight in replaced and weight not in layers):
                raise CheckpointError(
                    f"{self.adapter_file}: {module!r} has trainable tokens and is also adapted or saved whole by the "
                    "adapter; merge it with peft and give the merged folder."
                )
            rows = self._token_rows(module)
            shape = self._replaced_shape(header, weight, replaced.get(weight))  # (the resized one PEFT saved)
            got = tuple(header[key]["shape"])
            bad = next((i for i in rows if not 0 <= i < shape[0]), None)
            if len(shape) != 2 or got != (len(rows), shape[1]) or bad is not None or len(set(rows)) != len(rows):
                raise CheckpointError(
                    f"{self.adapter_file}: trainable tokens {key!r} {got} with {len(rows)} token indices from "
                    f"trainable_token_indices"
                    + (f" (index {bad} outside the {shape[0]} rows)" if bad is not None else "")
                    + f" do not fit {weight!r} {tuple(shape)}: expected ({len(rows)}, {shape[1] if shape else '?'})"
                    " distinct rows of it"
                    + (
                        "; a token added to a resized vocabulary needs the resized embedding beside it, which "
                        "peft's save_pretrained saves (save_embedding_layers)."
                        if bad is not None and bad >= shape[0] and weight not in layers
                        else "."
                    )
                )
            self.tokens[weight] = (key, rows)
        self._plan_tied_tokens(tied, header, replaced)
        missing = next((t for t in layers if t not in self.tokens), None)
        if missing is not None:
            raise CheckpointError(
                f"{self.adapter_file}: {layers[missing]!r} is the weight PEFT saves beside trainable tokens, but the "
                f"adapter holds no trainable_tokens_delta for {missing!r}; save the adapter with peft's "
                "save_pretrained and give that folder."
            )

    def _plan_tied_tokens(self, tied: dict, header: dict, replaced: dict) -> None:
        """The trainable tokens PEFT saves for an output head the base ties to its input embedding (with
        ``save_embedding_layers``, a resized vocabulary): PEFT ties the head's token adapter to the embedding's (the
        same rows, the same values, one shared weight), so they are checked equal to the embedding's once loaded and
        its rows are replaced once, in the tensor the two share. The head's own indices (a dict
        ``trainable_token_indices`` naming it with others) would have PEFT wrap it apart: refused in one line."""
        tti = self.adapter_config.get("trainable_token_indices")
        for module, (key, emb) in tied.items():
            own = self.tokens.get(emb)
            named = isinstance(tti, dict) and any(
                isinstance(k, str) and (module == k or module.endswith(f".{k}")) for k in tti
            )
            rows = self._token_rows(module) if named else own[1] if own else None
            if own is None or rows != own[1]:
                raise CheckpointError(
                    f"{self.adapter_file}: {key!r} holds trainable tokens of {module!r}, which the base ties to {emb} "
                    "(tie_word_embeddings) and stores one tensor for, "
                    + (
                        "but none of that embedding"
                        if own is None
                        else f"at other token indices ({str(rows)[:40]}) than the embedding's ({str(own[1])[:40]})"
                    )
                    + "; merge it with peft and give the merged folder."
                )
            why = f"the base ties {module}.weight to {emb} (tie_word_embeddings)"
            self._tied_copies.append((key, own[0], False, why))
            layer = key[: key.index(".token_adapter.")] + _TOKEN_LAYER + "weight"
            if layer in header and replaced.get(emb) not in (None, layer):
                self._tied_copies.append((layer, replaced[emb], False, why))
            self._tied_notes.append(
                f"{why} and stores one tensor for both: the trainable tokens the adapter saves for {module} are the "
                "embedding's (PEFT ties the head's token adapter to the embedding's), so their rows are replaced once, "
                f"in {emb}, which the merged model's head shares."
            )

    def _slices_of(self, pairs: dict) -> set[str]:
        return {t for u in getattr(self, "_unpacked", {}).values() for t in u.slices if t in pairs}

    def _check_vector(self, key: str, header: dict, want: tuple[int, ...]) -> None:
        got = tuple(header[key]["shape"])
        if got != tuple(want):
            raise CheckpointError(f"{self.adapter_file}: {key!r} has shape {got}; expected {tuple(want)}.")

    def _token_rows(self, module: str) -> list[int]:
        """The token indices ``trainable_token_indices`` gives ``module``: a list (the input embedding's) or
        {module name (its end): list}, as PEFT matches them."""
        tti = self.adapter_config.get("trainable_token_indices")
        where = f"{self.spec}: trainable_token_indices in adapter_config.json"
        if isinstance(tti, dict):
            hits = [v for k, v in tti.items() if isinstance(k, str) and (module == k or module.endswith(f".{k}"))]
            rows = hits[0] if len(hits) == 1 else None
            if rows is None:
                raise CheckpointError(f"{where} names {len(hits)} entries for {module!r}; expected one.")
        else:
            rows = tti
        if not (isinstance(rows, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in rows)):
            raise CheckpointError(
                f"{where} is {str(tti)[:60]!r}; expected a list of token indices (or of them per module)."
            )
        return rows

    def _parameter_targets(self, base_names: set[str]) -> dict[str, list[str]]:
        """``target_parameters`` (PEFT's LoRA on parameters, e.g. a model's packed 3-D experts): module ->
        the base's parameters under it that the list names, in the order PEFT wraps them (the experts'
        own: gate_up / gate / up before down), so that the innermost wrapper is the first. A 2-D parameter is
        read too: PEFT 0.21 under transformers 5 rewrites a LoRA on a mixture of experts (``all-linear``, or a list
        naming the router ``gate``) into ``target_parameters`` that name the router's weight (``gate.weight``,
        (experts, hidden)), which it wraps as one Linear-like parameter (:meth:`_plan_parameters`)."""
        tp = self.adapter_config.get("target_parameters") or []
        if not (isinstance(tp, list) and all(isinstance(t, str) for t in tp)):
            raise CheckpointError(
                f"{self.spec}: target_parameters in adapter_config.json is {str(tp)[:60]!r}; expected a list of "
                "parameter names."
            )
        out: dict[str, list[str]] = {}
        self._unpacked = _unpacked_experts(self.base) if tp else {}
        # the base's tensors by their names in memory where transformers 5 renames them (Mixtral's and PhiMoE's
        # block_sparse_moe. is mlp., PhiMoE's gate is its router), as PEFT names the target
        renamed = {
            n.replace(".block_sparse_moe.", ".mlp.").replace(".mlp.gate.weight", f".mlp.{r}.weight"): n
            for n in base_names
            if ".block_sparse_moe." in n
            for r in ("gate", "router")
        }
        # a wrapped module's name in memory -> its stored name, where transformers 5 renames it (Mixtral's router)
        self._wrapped_in_memory = {m.rpartition(".")[0]: n.rpartition(".")[0] for m, n in renamed.items() if m != n}
        for t in tp:
            hits = [n for n in [*base_names, *self._unpacked] if n == t or n.endswith(f".{t}")]
            hits = hits or [n for m, n in renamed.items() if m == t or m.endswith(f".{t}")]
            if not hits:
                raise CheckpointError(
                    f"{self.spec}: target parameter {t!r} (adapter_config.json target_parameters) matches no "
                    f"tensor of the base {self.base.spec}, packed or expert by expert.{suggest(t, base_names)}"
                )
            for n in hits:
                if n not in self._unpacked and len(self.base.meta(n).shape) not in (2, 3):
                    raise CheckpointError(
                        f"{self.spec}: target parameter {n!r} has shape {tuple(self.base.meta(n).shape)}; only 2-D "
                        "(out, in) and 3-D (experts, ·, ·) parameters are read as LoRA targets (as PEFT wraps them). "
                        "Merge it with peft and give the folder."
                    )
                module, _, param = n.rpartition(".")
                out.setdefault(module, []).append(param)
        rank = {p: i for i, p in enumerate(_PARAM_ORDER)}
        return {m: sorted(set(ps), key=lambda p: (rank.get(p, len(rank)), p)) for m, ps in out.items()}

    def _plan_parameters(self, wrapped: dict, per_param: dict, header: dict, pairs: dict) -> dict:
        """Each wrapped parameter's LoRA factors (A (r·E, in), B (out, r·E)) checked against its shape
        (E, d1, d2); Δ[e] = B[:, :, e] · A[e] as PEFT forms it, (d1, d2) = (in, out) or, for the
        experts PEFT swaps, (out, in). A 2-D parameter (out, in) (a router's weight) is one such matrix, as
        ``ParamWrapper`` takes it (E = 1, never swapped): A (r, in), B (out, r), Δ = B·A as a linear layer's.
        Returns name -> (E, swapped)."""
        experts: dict[str, tuple[int, bool]] = {}
        for module, params in wrapped.items():
            depths = per_param.get(module, {})
            if sorted(depths) != list(range(len(params))):
                raise CheckpointError(
                    f"{self.adapter_file}: {module!r} holds LoRA factors for {len(depths)} parameter(s) but "
                    f"target_parameters names {len(params)} there ({', '.join(params)})."
                )
            for depth, kinds in depths.items():
                name = f"{module}.{params[len(params) - 1 - depth]}"  # the outermost wrapper is the last
                a, b = kinds.get("lora_A"), kinds.get("lora_B")
                if a is None or b is None:
                    raise CheckpointError(f"{self.adapter_file}: {name!r} has only one of its LoRA A/B tensors.")
                (ra, d_in), (d_out, rb) = header[a]["shape"], header[b]["shape"]
                shape = tuple(self._unpacked[name].shape if name in self._unpacked else self.base.meta(name).shape)
                if len(shape) == 2:  # (out, in): PEFT's ParamWrapper with num_experts 1, Linear's Δ = s·B·A
                    if ra != rb or (d_out, d_in) != shape:
                        raise CheckpointError(
                            f"{self.adapter_file}: the LoRA tensors of {name!r} have shapes A {(ra, d_in)}, "
                            f"B {(d_out, rb)}; for a parameter of shape {shape} they must be A (r, {shape[1]}) and "
                            f"B ({shape[0]}, r)."
                        )
                    self._check_rank(name, a, ra, module=name)
                    experts[name] = (1, False)
                    pairs[name] = (a, b, False)
                    continue
                e, d1, d2 = shape
                square_rule = self.base.names_table.family not in _NOT_SWAPPED
                swapped = (d_in, d_out) == (d2, d1) and ((d1, d2) != (d2, d1) or square_rule)
                if ra != rb or ra % e or (d_in, d_out) != ((d2, d1) if swapped else (d1, d2)):
                    raise CheckpointError(
                        f"{self.adapter_file}: the LoRA tensors of {name!r} have shapes A {(ra, d_in)}, "
                        f"B {(d_out, rb)}; for a parameter of shape {(e, d1, d2)} they must be A (r·{e}, {d1}) and "
                        f"B ({d2}, r·{e}), or A (r·{e}, {d2}) and B ({d1}, r·{e}) for experts PEFT swaps."
                    )
                self._check_rank(name, a, ra // e, module=name, experts=e)
                experts[name] = (e, swapped)
                if name not in self._unpacked:
                    pairs[name] = (a, b, False)
                    continue
                for target in self._unpacked[name].slices:  # each expert's own tensors, merged one by one
                    pairs[target] = (a, b, False)
        return experts

    def _check_shapes(self, target: str, a: list[int], b: list[int], emb: bool, want: tuple[int, ...]) -> None:
        """B·A (transposed for embeddings and Conv1D) must have the base weight's shape: checked from the
        headers, before anything is multiplied (a B of 10^6 rows would make a 10^6-row product first)."""
        flip = emb or target in self._fifo
        got = (b[0], a[1]) if len(a) == 2 and len(b) == 2 else None
        if got is None or a[0] != b[1] or (got[::-1] if flip else got) != want:
            raise CheckpointError(
                f"{self.adapter_file}: the LoRA tensors of {target!r} have shapes A {tuple(a)}, B {tuple(b)}; "
                f"B·A{'ᵀ' if flip else ''} must have the base weight's shape {want}, with A's rows B's columns."
            )

    def _dropped_key(self, key: str, short: str, m, wrapped_short: dict) -> bool:
        """Whether the adapter tensor ``key`` (``short``: past PEFT's prefix; ``m``: its :data:`_LORA` match, or
        None; never a target parameter's) is none of the merged model's:

        - the base's own copy of a module saved whole (``.original_module.``, with ``save_embedding_layers``): no
          update, and PEFT's merge keeps the trained copy;
        - a tensor of a LoRA module adapter_config.json does not select (:meth:`_not_selected`): its factors, or the
          module's own weight or bias saved beside them (``<module>.base_layer.*``: an embedding's with
          ``save_embedding_layers``, a bias with ``bias: all``), which PEFT's loader drops with the LoRA layer it
          does not build; recorded in :attr:`_unselected`.

        The weight a module's trainable tokens wrap (``<module>.token_adapter.base_layer.weight``) is no LoRA
        module's: PEFT's loader loads it into that layer (checked with the tokens in :meth:`_plan_extras`)."""
        if m is not None:
            return self._left_out(m["module"], key, m["kind"].startswith("lora_embedding"))
        if ".original_module." in short:
            return True
        if _TOKEN_LAYER in short:
            return False
        owner = short.split(".base_layer.")[0]
        return ".base_layer." in short and strip_prefix(owner) not in wrapped_short and self._left_out(owner, key)

    def _left_out(self, module: str, key: str, embedding: bool = False) -> bool:
        """Whether the config selects no LoRA for ``module`` (its name in memory); if so, ``key`` is recorded."""
        if module in self._unselected:
            self._unselected[module][1].append(key)
            return True
        why = self._not_selected(module, embedding)
        if why is not None:
            self._unselected[module] = (why, [key])
        return why is not None

    def _leave_out_unselected(self, extras: dict, selected: bool) -> None:
        """The LoRA biases and DoRA magnitudes of modules adapter_config.json does not select taken out of
        ``extras`` (PEFT's loader drops them with the module's factors). A file whose LoRA modules the config
        selects none of (``selected``: whether it selects any) is refused: the config and the weights disagree
        (merged, the adapter would be no update at all), and the line names the first tensor and the key that
        rules it out."""
        for kind in ("bias", "magnitude"):
            extras[kind] = {module: k for module, k in extras.get(kind, {}).items() if not self._left_out(module, k)}
        if not self._unselected or selected:
            return
        _, (why, keys) = next(iter(self._unselected.items()))
        raise CheckpointError(
            f"{self.adapter_file.parent / 'adapter_config.json'} selects none of the {len(self._unselected)} "
            f"module(s) the adapter holds LoRA tensors for (first: {keys[0]!r}: {why}), so PEFT would load none "
            "of them: the config and the weights disagree. Give the adapter_config.json it was trained with."
        )

    def _not_selected(self, module: str, embedding: bool) -> str | None:
        """Why adapter_config.json gives ``module`` (a LoRA module's name in memory, as PEFT saves it; ``embedding``:
        its factors are an embedding's) no LoRA layer, as PEFT's ``check_target_module_exists`` decides it when it
        loads the adapter; None where it gives it one. In that order: ``exclude_modules`` (a regular expression
        matching the whole name, or names matching it or its end after a dot), ``modules_to_save`` (PEFT adapts no
        module it saves whole), ``target_modules`` (``all-linear``: every linear layer but the output head; another
        string: a regular expression matching the whole name; a list: the whole name, or its end after a dot),
        then, for a list entry matching the name's end, ``layers_to_transform``: the module's layer index (the first
        number after ``layers_pattern``, or after the name's second part) one of them. PEFT loads the adapter with
        ``strict=False``: the tensors of such a module are dropped without a word, so its merge leaves them out. A
        config of no ``target_modules`` (PEFT takes the family's defaults) selects by the other keys only."""
        ac = self.adapter_config
        cfg = self.adapter_file.parent / "adapter_config.json"
        tied = self.base.tied_embeddings and strip_prefix(f"{module}.weight") in TIED_HEADS
        if tied and ac.get("ensure_weight_tying"):
            return None  # (PEFT adapts a tied head with the embedding, whatever target_modules says: _plan_tied)
        ex = ac.get("exclude_modules")
        if isinstance(ex, str) and ex:
            where = f"{cfg}: exclude_modules {ex[:60]!r}"
            if _matches(_pattern(ex, where), module, where):
                return f"exclude_modules {ex[:60]!r} matches it"
        elif _listed(ex, module):
            return "exclude_modules lists it"
        saved = ac.get("modules_to_save")
        for m in saved if isinstance(saved, list) else ():
            if isinstance(m, str) and m:  # as PEFT matches them: re.match(rf"(^|.*\.){m}($|\..*)", module)
                where = f"{cfg}: modules_to_save {m[:60]!r}"
                if _matches(_pattern(rf"(^|.*\.){m}($|\..*)", where), module, where, how="match"):
                    return f"modules_to_save lists {m[:60]!r}, and PEFT adapts no module it saves whole"
        tm = ac.get("target_modules")
        if isinstance(tm, str):  # (layers_to_transform is not read with one: PEFT refuses it)
            if tm.lower() == "all-linear":
                if embedding:
                    return "target_modules is 'all-linear', and an embedding is no linear layer"
                if strip_prefix(f"{module}.weight") in TIED_HEADS:
                    return "target_modules is 'all-linear', which leaves out the output head"
                return None
            where = f"{cfg}: target_modules {tm[:80]!r}"
            return (
                None
                if _matches(_pattern(tm, where), module, where)
                else f"target_modules {tm[:60]!r} does not match it"
            )
        names = [t for t in tm if isinstance(t, str)] if isinstance(tm, list) else []
        if module in names:  # the whole name: PEFT reads no layers_to_transform for it
            return None
        if names and not any(module.endswith(f".{t}") for t in names):
            shown = ", ".join(repr(t[:40]) for t in names[:4]) + (" …" if len(names) > 4 else "")
            return f"target_modules [{shown}] does not list it"
        return self._layer_not_selected(module, str(cfg))

    def _layer_not_selected(self, module: str, cfg: str) -> str | None:
        """Why ``layers_to_transform`` (with ``layers_pattern``) leaves out ``module``, as PEFT reads them; None where
        it keeps it (or is not set)."""
        ac = self.adapter_config
        layers, pattern = ac.get("layers_to_transform"), ac.get("layers_pattern")
        if layers is None or layers == []:
            return None
        wanted = [layers] if isinstance(layers, int) else layers
        if not (isinstance(wanted, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in wanted)):
            raise CheckpointError(
                f"{cfg}: layers_to_transform is {str(layers)[:60]!r}; expected a layer index or a list of them."
            )
        patterns = [pattern] if isinstance(pattern, str) else pattern
        if not patterns:  # the first number after the name's second part
            found = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
        elif isinstance(patterns, list) and all(isinstance(p, str) for p in patterns):
            found = None
            for p in patterns:  # the first number after the first layers_pattern that has one
                where = f"{cfg}: layers_pattern {p[:60]!r}"
                if found := _matches(_pattern(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", where), module, where, how="match"):
                    break
        else:
            raise CheckpointError(
                f"{cfg}: layers_pattern is {str(pattern)[:60]!r}; expected a name or a list of names."
            )
        shown = str(layers)[:60]
        if not found:
            return f"layers_to_transform {shown} is set and its name has no layer index" + (
                f" after layers_pattern {str(pattern)[:60]!r}" if patterns else ""
            )
        index = found["idx"]
        if len(index) > 9 or int(index) not in wanted:
            return f"its layer {index[:12]} is not in layers_to_transform {shown}"
        return None

    def _unselected_notes(self) -> list[str]:
        """A note naming the LoRA modules adapter_config.json does not select, whose tensors are left out."""
        if not self._unselected:
            return []
        first, (why, _) = next(iter(self._unselected.items()))
        n = sum(len(keys) for _, keys in self._unselected.values())
        more = f" and {len(self._unselected) - 1} more" if len(self._unselected) > 1 else ""
        return [
            f"adapter_config.json does not select {len(self._unselected)} module(s) the adapter holds LoRA tensors "
            f"for: {first} ({why}){more}; PEFT builds no LoRA layer there and its loader drops their {n} tensor(s) "
            "without a word, so they are left out of the merge, as PEFT's merge_and_unload leaves them. If the config "
            "was copied from another run, give the one the adapter was trained with."
        ]

    def _selected_but_absent(self, base_names: set[str], pairs: dict, replaced: dict, wrapped: dict) -> list[str]:
        """The modules of the base (names in memory) that adapter_config.json selects for a LoRA but the file holds
        no LoRA tensors for: PEFT builds a LoRA layer on each and loads it at its initialisation ("Found missing
        adapter keys"), B = 0 (or B·A = 0) at every initialisation but ``init_lora_weights: false``, so their merge
        is no update (the reverse of :meth:`_not_selected`'s modules, whose tensors are left out). With ``false``,
        PEFT's B is random there: refused in one line. Read where ``target_modules`` is a list or a pattern (none:
        PEFT's defaults per family), over the base's 2-D weights but norms, experts and routers (PEFT 0.21 adapts
        those as target parameters) and the target parameters; with ``all-linear``, over the linear layers the
        naming table knows (attention and MLP projections). A name is matched as it is in memory: where PEFT saved
        the file's modules under another model prefix than the base stores, the others take the same prefix, and
        one of a prefix no tensor of the file shows is not read. With DoRA on a 16-bit base, PEFT's merge scales each
        such weight by its initial magnitude (its norm, rounded to the base's dtype when PEFT initialises it) over
        its norm in float32, which moves some entries by 1 ULP: merged so here (:attr:`_dora_init`,
        :func:`_dora_at_init`)."""
        ac = self.adapter_config
        tm = ac.get("target_modules")
        if not (isinstance(tm, str) and tm) and not (isinstance(tm, list) and tm):
            return []
        found: dict[str, tuple[str, bool]] = {}  # each such module's name in memory -> (stored name, embedding)
        linear_only = isinstance(tm, str) and tm.lower() == "all-linear"
        held = {*pairs, *self._extra, *replaced, *self.tokens, *(f"{m}.{p}" for m, ps in wrapped.items() for p in ps)}
        prefixes: dict[str, set[str]] = {}  # a stored model prefix -> the prefixes PEFT's names in memory have there
        for stored, memory in self._memory.items():
            short = strip_prefix(stored)
            if short == strip_prefix(memory) and stored != memory:
                prefixes.setdefault(stored[: -len(short)], set()).add(memory[: -len(strip_prefix(memory))])
        table = self.base.names_table
        moe = {n[: m.start()] for n in base_names if (m := _EXPERT_TENSOR.search(n))}
        absent = []
        for n in sorted(base_names):
            if not n.endswith(".weight") or n in held or _EXPERT_TENSOR.search(n) or len(self.base.meta(n).shape) != 2:
                continue
            info = table.describe(n)
            if info.module in NORM_MODULES or info.module == "router" or info.expert is not None:
                continue
            if n.endswith(".gate.weight") and n[: -len(".gate.weight")] in moe:
                continue
            if linear_only and info.module not in _LINEAR_KINDS:
                continue
            short = strip_prefix(n)
            prefix = n[: len(n) - len(short)]
            if prefixes and len(prefixes.get(prefix, ())) != 1:
                continue  # (where its name in memory is, no tensor of the file shows)
            memory = next(iter(prefixes[prefix])) + short if prefixes else n
            if self._not_selected(memory[: -len(".weight")], info.module in _EMBEDDING_KINDS) is None:
                absent.append(memory[: -len(".weight")])
                found[memory] = (n, info.module in _EMBEDDING_KINDS)
        if absent and ac.get("init_lora_weights") is False:
            raise CheckpointError(
                f"{self.adapter_file.parent / 'adapter_config.json'}: init_lora_weights is false, and the config "
                f"selects {len(absent)} module(s) of the base the adapter holds no LoRA tensors for "
                f"({_few(absent)}): PEFT initialises their LoRA factors at random there (B ≠ 0), so its merge adds an "
                "untrained, random update to them. Give the adapter_config.json the adapter was trained with."
            )
        if ac.get("use_dora"):  # PEFT's merge scales each by its initial magnitude over its norm
            for memory, (n, embedding) in found.items():
                if self.base.meta(n).dtype not in _HALF:
                    continue  # (in float32 that factor is 1: the weight as it is)
                if embedding:
                    raise CheckpointError(
                        f"{self.adapter_file}: use_dora is set and the config selects the embedding {memory!r}, which "
                        "the adapter holds no tensors for; DoRA is merged here for linear layers only. Merge it with "
                        "peft and give the merged folder."
                    )
                self._dora_init[n] = self._conv1d_layer(memory)
        return absent

    def _conv1d_layer(self, memory: str) -> bool:
        """Whether PEFT takes the module weight ``memory`` (its name in memory) as transformers' Conv1D, stored
        (in, out), where no LoRA tensors show it (:meth:`_conv1d` decides it from their shapes): GPT-2's names in a
        GPT-2 (where no config.json says so, as the file's other targets were taken), else fan_in_fan_out where no
        table knows the architecture."""
        table = self.base.names_table
        saved = bool(self.adapter_config.get("fan_in_fan_out"))
        if table.family is None:
            return saved
        if table.family != "gpt2" or not _CONV1D.search(memory):
            return False
        return not table.guessed or bool(self._fifo) or saved

    def _absent_notes(self) -> list[str]:
        """A note naming the modules the config selects that the file holds no LoRA tensors for
        (:meth:`_selected_but_absent`)."""
        if not self._absent:
            return []
        dora = (
            f"; with DoRA, PEFT initialises each one's magnitude m to its weight's norm rounded to the base's "
            f"{str(self.base.meta(next(iter(self._dora_init))).dtype).replace('torch.', '')}, and its merge_and_unload "
            f"scales the weight by m / ‖W‖, which moves some entries by 1 ULP: {len(self._dora_init)} weight(s) "
            "merged so here, as PEFT merges them"
            if self._dora_init
            else ", so they are the base's in the merge, as in PEFT's merge_and_unload"
        )
        return [
            f"adapter_config.json selects {len(self._absent)} module(s) of the base the adapter holds no LoRA tensors "
            f"for ({_few(self._absent)}): PEFT builds a LoRA layer on each and loads it at its initialisation (it "
            f"warns of missing adapter keys), where B·A = 0: no update{dora}. If the config was copied from another "
            "run, give the one the adapter was trained with."
        ]

    def _check_target_modules(self, base_names: set[str]) -> None:
        """``target_modules`` names modules of the base: a list of names, a regular expression matched
        against whole module names (as PEFT does with a string), or ``all-linear``. As PEFT, a list is refused only
        where none of its entries names a module of the base: scripts write one list for several families
        (``["q_proj", "v_proj", "query_key_value"]``), and PEFT adapts the modules the others name; the entries
        that name none are noted (:attr:`_target_notes`). A wrong base is still caught: every adapter tensor must
        land on a base tensor of its shape (:meth:`_to_base`, :meth:`_check_shapes`)."""
        self._target_notes: list[str] = []
        tm = self.adapter_config.get("target_modules") or []
        # the base's modules, under their stored names and, where PEFT saved others, under their names in memory
        stored = {*base_names, *self._memory.values()}
        if self.base.tied_embeddings:  # a head the base ties to its embedding is a module in memory, stored or not
            stored |= set(TIED_HEADS)
        modules = {n[: -len(".weight")] for n in stored if n.endswith(".weight")}
        if not isinstance(tm, str | list):
            raise CheckpointError(
                f"{self.spec}: target_modules in adapter_config.json is {str(tm)[:60]!r}; expected a list of module "
                "names, a regular expression or 'all-linear'."
            )
        if isinstance(tm, str):
            if tm.lower() == "all-linear":
                return
            where = f"{self.spec}: target_modules {tm[:80]!r} in adapter_config.json"
            pattern = _pattern(tm, where)
            missing = [] if any(_matches(pattern, m, where) for m in modules) else [tm]
        else:
            names = [t for t in tm if isinstance(t, str)]
            missing = [t for t in names if not any(m == t or m.endswith(f".{t}") for m in modules)]
            if missing and len(missing) < len(names):  # PEFT's rule: at least one entry names a module
                shown = ", ".join(repr(t[:40]) for t in missing[:4]) + (" …" if len(missing) > 4 else "")
                self._target_notes.append(
                    f"adapter_config.json's target_modules also lists {shown}, which name(s) no module of the base "
                    f"{self.base.spec}; as PEFT does, those entries are skipped: the adapter adapts the modules the "
                    "others name."
                )
                missing = []
        if missing:
            kinds = sorted(
                {
                    n.rsplit(".", 2)[-2]
                    for n in base_names
                    if n.endswith(".weight") and "." in n and len(self.base.meta(n).shape) == 2
                }
            )
            others = f" (nor do the other {len(missing) - 1} entries)" if len(missing) > 1 else ""
            raise CheckpointError(
                f"{self.spec}: target module {missing[0]!r} (adapter_config.json target_modules) matches no module "
                f"of the base {self.base.spec}{others}; its linear modules are {', '.join(kinds[:12])}."
            )

    def _to_base(self, key: str, target: str, base_names: set[str]) -> str:
        """The base's stored name of the tensor adapter tensor ``key`` targets (``target``: its name in memory,
        as PEFT saves it). Where transformers 5 stores a model under other names than it holds in memory (its
        conversion mapping: a vision-language model's ``model.language_model.layers.…`` saved as
        ``language_model.model.layers.…`` by Gemma-3 and LLaVA, as ``model.layers.…`` by Qwen2.5-VL, its tower
        ``model.visual.…`` as ``visual.…``; GPT-2's ``transformer.h.…`` released as ``h.…``), the target is the
        one stored tensor with the same name past its model prefix (:func:`strip_prefix`, as :func:`align` pairs
        checkpoints); none, or more than one, is a one-line error naming the adapter tensor."""
        if target in base_names:
            return target
        hits = self._short_hits(target, base_names)
        if len(hits) == 1:
            self._memory[hits[0]] = target
            return hits[0]
        raise CheckpointError(
            f"{self.spec}: adapter tensor {key!r} targets {target!r}, which the base {self.base.spec} does not "
            + (
                f"hold under that name, and {len(hits)} of its tensors could be it ({', '.join(hits[:3])})."
                if hits
                else f"hold.{suggest(target, base_names)}"
            )
        )

    def _short_hits(self, target: str, base_names: set[str]) -> list[str]:
        """The base's tensors with ``target``'s name past its model prefix (:func:`strip_prefix`), sorted."""
        if self._by_short is None:
            self._by_short = {}
            for n in base_names:
                self._by_short.setdefault(strip_prefix(n), []).append(n)
        return sorted(self._by_short.get(strip_prefix(target), []))

    @property
    def _memory_to_base(self) -> dict[str, str]:
        return {v: k for k, v in self._memory.items()}

    def _check_rank(self, target: str, key: str, rank: int, module: str | None = None, experts: int = 1) -> None:
        """The rank of the LoRA tensor ``key`` of ``target`` (A's rows, ``rank``; per expert of ``experts``) is the
        one adapter_config.json gives its module (:meth:`_config_rank`). PEFT builds each layer at the config's rank
        and refuses an adapter whose tensors have another ("size mismatch"); merged here, its scale was α over the
        tensors' rank while the note said α/r of the config's (a config copied from another run: 4× the Δ PEFT's
        scale would give, under a note stating the other scale)."""
        said, which = self._config_rank(target, module)
        if said == rank:
            return
        of = f" per expert ({experts} experts: A has {rank * experts} rows)" if experts > 1 else ""
        raise CheckpointError(
            f"{self.adapter_file.parent / 'adapter_config.json'}: {which} = {said} for {self._module(target, module)!r}, "
            f"but its LoRA tensor {key!r} has rank {rank}{of}; PEFT refuses to load this adapter (a size mismatch). "
            "Give the adapter_config.json it was trained with."
        )

    def _config_rank(self, target: str, module: str | None = None) -> tuple[int, str]:
        """The rank adapter_config.json gives ``target``'s module, as PEFT takes it: the first ``rank_pattern`` key
        that matches (:meth:`_scale`), else ``r``; and which entry said it."""
        name = self._module(target, module)
        where = f"{self.spec}: rank_pattern / alpha_pattern in adapter_config.json"
        keys = list(self.adapter_config.get("rank_pattern") or {})
        for i, (pattern, val) in enumerate(self._rank_pattern):
            if _matches(pattern, name, where):
                return val, f"rank_pattern[{keys[i]!r}]"
        return self._r, "r"

    def _module(self, target: str, module: str | None = None) -> str:
        """The name in memory that PEFT matches rank_pattern / alpha_pattern against: ``module``'s, else the module
        of the weight ``target``."""
        return self._memory.get(module, module) if module else self._memory.get(target, target)[: -len(".weight")]

    def _scale(self, target: str, r: int, module: str | None = None) -> float:
        # PEFT matches rank_pattern / alpha_pattern against the module's name in memory, and takes the first key
        # that matches, in the config's order (peft.utils.other.get_pattern_key)
        module = self._module(target, module)
        where = f"{self.spec}: rank_pattern / alpha_pattern in adapter_config.json"
        r = next((val for pattern, val in self._rank_pattern if _matches(pattern, module, where)), r)
        alpha = self.adapter_config.get("lora_alpha", 8)
        alpha = next((val for pattern, val in self._alpha_pattern if _matches(pattern, module, where)), alpha)
        return alpha / math.sqrt(r) if self.adapter_config.get("use_rslora") else alpha / r

    def unpack(self, views: dict[str, tuple[str, tuple, tuple[int, ...]]]) -> None:
        """Read its tensors through ``views`` (name -> (its tensor, index, shape)), the per-expert views its packed
        base is read by where another checkpoint of the comparison stores the experts one by one
        (:func:`~subnetviz.checkpoints.experts_layout.match_layouts`): a view of a merged tensor is computed where
        it is read (one expert's W[e] + s·Δ[e], :meth:`_merged_view`), any other is the base's bytes. Without this
        the adapter kept the packed names its base no longer had, and its expert updates fell outside the
        comparison whenever a per-expert checkpoint stood beside it."""
        for name, (src, index, _) in views.items():
            self._whole.setdefault(src, self.meta(src))
            if src in self._computed:
                self._merged_views[name] = (src, index)
        super().unpack(views)

    def get(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        if name in self._merged_views:
            return self._merged_view(name, device)
        if name in self._views:  # (a view of a tensor the adapter leaves as it is: the base's bytes)
            return super().get(name, device)
        return self._merged(name, device)

    def _merged_view(self, name: str, device: str | torch.device) -> torch.Tensor:
        """View ``name`` of a merged tensor (:meth:`unpack`). One expert's view of packed experts is that expert's
        merge alone, W[e] + s·Δ[e] (the values :meth:`_merge_experts` gives it), then indexed as the view says;
        any other view is read from the whole merged tensor."""
        src, index = self._merged_views[name]
        plain = not ({src} & {*self.replaced, *self.biases, *self.tokens, *self._dora_init})
        first = index[0] if index else None
        if not (plain and src in self.experts and self.experts[src][0] > 1 and isinstance(first, int | np.ndarray)):
            whole = self._merged(src, device)
            return whole[index] if index else whole
        e = first if isinstance(first, int) else int(first.reshape(-1)[0])
        m = self._whole[src]
        numel = math.prod(m.shape[1:])
        cpu = str(device) == "cpu"
        need = numel * m.dtype.itemsize + 4 * numel
        require_memory(f"Merging the adapter into {name}", need if cpu else 0, str(device), 0 if cpu else need)
        ka, kb, _ = self.pairs[src]
        s, a, b, swapped = self._factors(src, ka, kb)
        w = self._base_tensor(src, device)[e]
        one = _add_cast(w, _expert_delta(a, b, e, s, swapped, device), m.dtype).unsqueeze(0)
        return one[(0 if isinstance(first, int) else np.array([0]), *index[1:])]

    def _base_tensor(self, name: str, device: str | torch.device) -> torch.Tensor:
        """The base's tensor ``name`` (its stored bytes where the base is now read through views of it)."""
        if name in self._whole:
            return self.base.get_stored(self._whole[name]).to(device)
        return self.base.get(name, device)

    def _merged(self, name: str, device: str | torch.device) -> torch.Tensor:
        """Tensor ``name`` of the merged model, whole (also one now read through views: :meth:`unpack`)."""
        replaced = self.replaced.get(name)
        meta = self._whole[name] if name in self._whole else self.meta(name)
        stored = meta.dtype  # the base's (a trained head the base does not store: its embedding's)
        if replaced:  # (a slice of it where the adapter saved packed experts whole: _placed)
            w = self._adapter[replaced]
            w = (w[self._slice_of[name]] if name in self._slice_of else w).to(device)
        else:  # (an untied head: the base's embedding, which it was tied to)
            w = self._base_tensor(self._head_from.get(name, name), device)
        if name in self.biases:  # b + s·bias_B, in float32, rounded once
            key, weight = self.biases[name]
            s = self._scale(weight, self._adapter[self.pairs[weight][0]].shape[0])
            return self._adapter[key].to(device, torch.float32).mul(s).add_(w).to(stored)
        if name in self.tokens:  # the listed rows replaced by the stored ones, in the base's dtype
            key, rows = self.tokens[name]
            out = w.to(stored, copy=True)
            out[torch.tensor(rows, device=out.device)] = self._adapter[key].to(device, stored)
            return out
        if name in self._dora_init:  # a DoRA module at PEFT's initialisation: W · m / ‖W‖ (float32 temporaries)
            require_memory(f"Merging the adapter into {name}", 8 * w.numel() if str(device) == "cpu" else 0)
            return _dora_at_init(w, stored, self._dora_init[name])
        if name not in self.pairs:
            return w.to(stored)
        ka, kb, emb = self.pairs[name]
        # the merge's float32 product (one expert's, for packed experts) and the merged tensor: checked
        # against the memory available before either is allocated (a vocabulary-sized Δ is gigabytes)
        e = self.experts.get(name, (1,))[0]
        numel = math.prod(meta.shape)
        fifo = name in self._fifo
        two = (name in self.magnitudes and fifo) or name in self._extra  # a second float32 temporary
        need, cpu = numel * stored.itemsize + 4 * numel // e * (2 if two else 1), str(device) == "cpu"
        require_memory(f"Merging the adapter into {name}", need if cpu else 0, str(device), 0 if cpu else need)
        if name in self.experts:
            return self._merge_experts(name, w, ka, kb, stored, device)
        if name in self._slices:
            return self._merge_expert_slice(name, w, ka, kb, stored, device)
        a = self._adapter[ka].to(device, torch.float32)  # (r, in) or, for embeddings, (r, vocab)
        b = self._adapter[kb].to(device, torch.float32)  # (out, r) or (dim, r)
        delta = (b @ a).mul_(self._scale(name, a.shape[0]))  # in place: one float32 temporary per tensor
        if emb or fifo:
            delta = delta.T  # the shapes were checked against the base's when the adapter was opened
        if emb:  # PEFT's Embedding.merge adds Δ cast to the weight's dtype: rounded first in a 16-bit base
            merged = _add_cast(w, delta, stored)
        else:
            merged = delta.add_(w)  # w + Δ in float32 (w is exact in it), rounded once below
            if name in self.magnitudes:  # DoRA: m / ‖W + Δ‖ per output feature (a row; a column of Conv1D's (in, out))
                m = self._adapter[self.magnitudes[name]].to(device, torch.float32)
                if fifo:
                    # over the base's (in, out) layout, as PEFT takes it: the same sums in the same order
                    merged = merged.contiguous()
                    merged.mul_((m / torch.linalg.norm(merged.T, dim=1)).view(1, -1))
                else:
                    merged.mul_((m / torch.linalg.norm(merged, dim=1)).view(-1, 1))
            merged = merged.to(stored)
        if name in self._extra:  # the tied head's LoRA, merged after the embedding's into the tensor they share:
            # PEFT's linear merge, its float32 Δ added to the weight as it stands after the first (rounded once)
            ka, kb, module = self._extra[name]
            a = self._adapter[ka].to(device, torch.float32)
            b = self._adapter[kb].to(device, torch.float32)
            merged = (b @ a).mul_(self._scale(name, a.shape[0], module=module)).add_(merged).to(stored)
        return merged

    def stored_as_read(self, name: str) -> bool:
        return name not in self._computed and name not in self._views and self.base.stored_as_read(name)

    def _merge_experts(self, name: str, w, ka: str, kb: str, stored, device) -> torch.Tensor:
        """W[e] + s·Δ[e], expert by expert (float32 temporaries of one expert), with PEFT's roundings
        (:func:`_add_cast`). A 2-D parameter (a router's weight) is W + s·B·A: the product as PEFT's
        ``Linear.get_delta_weight`` forms it (B @ A, then times s), cast to W's dtype and added."""
        s, a, b, swapped = self._factors(name, ka, kb)  # A: experts × rank × in, B: out × rank × experts
        if w.dim() == 2:
            a2 = self._adapter[ka].to(device, torch.float32)  # (r, in)
            b2 = self._adapter[kb].to(device, torch.float32)  # (out, r)
            return _add_cast(w, (b2 @ a2).mul_(s), stored)
        out = torch.empty(w.shape, dtype=stored, device=device)
        for i in range(a.shape[0]):
            out[i] = _add_cast(w[i], _expert_delta(a, b, i, s, swapped, device), stored)
        return out

    def _factors(self, name: str, ka: str, kb: str):
        """(s, A (E, r, in), B (out, r, E), swapped) of the wrapped parameter ``name``: views of the adapter's
        tensors (each expert's slice is moved and cast where it is used), s matched once per parameter."""
        e, swapped = self.experts[name]
        a, b = self._adapter[ka], self._adapter[kb]
        r = a.shape[0] // e
        if name not in self._expert_scales:
            self._expert_scales[name] = self._scale(name, r, module=name)
        return self._expert_scales[name], a.reshape(e, r, a.shape[-1]), b.reshape(b.shape[0], r, e), swapped

    def _merge_expert_slice(self, name: str, w, ka: str, kb: str, stored, device) -> torch.Tensor:
        """One expert's own tensor of a packed parameter PEFT wrapped (the base stores experts one by one):
        its rows of that expert's Δ, in the base's (out, in) layout."""
        packed, i, r0, r1 = self._slices[name]
        s, a, b, swapped = self._factors(packed, ka, kb)
        # the whole expert's Δ, then its rows: the same product (and rounding) as PEFT's merge
        delta = _expert_delta(a, b, i, s, swapped, device)
        if not swapped:  # (E, in, out) in memory: the expert's (out, in) weight is its transpose
            delta = delta.T
        return _add_cast(w, delta[r0:r1], stored)

    @cached_property
    def _computed(self) -> set[str]:
        """The tensors that are not the base's bytes under their names: merged, replaced, with rows or a bias
        changed, or an untied head read from the embedding's (:attr:`_head_from`)."""
        return {*self.pairs, *self.replaced, *self.biases, *self.tokens, *self._head_from, *self._dora_init}

    @cached_property
    def _slices(self) -> dict:
        return {t: sl for u in self._unpacked.values() for t, sl in u.slices.items()}

    def array(self, name: str, view: np.dtype) -> np.ndarray | None:
        """The base's mapped bytes for a tensor the adapter leaves as it is; None (read through :meth:`get`)
        for a merged or replaced one, which exists only once computed."""
        if name in self._computed or name in self._merged_views:
            return None
        if name in self._views:  # (a view of a tensor the adapter leaves as it is: that part of the base's bytes)
            return super().array(name, view)
        return self.base.array(name, view)

    @cached_property
    def fingerprint(self) -> str:
        h = hashlib.sha256(self.base.fingerprint.encode())
        h.update(path_identity(self.adapter_file))
        h.update(self._adapter_raw)
        h.update(json.dumps(self.adapter_config, sort_keys=True).encode())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"MergedAdapter({self.spec!r} on {self.base.spec!r}, {len(self.pairs)} merged tensors)"


def _add_cast(w: torch.Tensor, delta: torch.Tensor, stored: torch.dtype) -> torch.Tensor:
    """W + Δ as PEFT merges an embedding (``Embedding.merge``: W += Δ.to(W.dtype)) and a wrapped parameter
    (``ParamWrapper.get_delta_weight`` casts Δ to the parameter's dtype): in a 16-bit base, the float32 Δ is
    rounded to the base's dtype first and the sum rounded again (two roundings, where a linear layer's W + Δ is
    rounded once); in float32 the sum is rounded once either way. ``delta`` (float32) may be used up."""
    if stored in _HALF:
        return w.to(stored) + delta.to(stored)
    return delta.add_(w).to(stored)


def _dora_at_init(w: torch.Tensor, stored: torch.dtype, conv1d: bool) -> torch.Tensor:
    """PEFT's merge of a DoRA module at its initialisation (B = 0) on a 16-bit base: the weight W (out, in), or (in,
    out) for a Conv1D's, scaled per output feature by m / ‖W‖, m its magnitude as PEFT initialises it (the norm taken
    in the base's dtype) and ‖W‖ the norm in float32 its merge takes, then rounded to the base's dtype."""
    rows = w.to(stored)
    rows = rows.T if conv1d else rows  # (out, in)
    m = torch.linalg.norm(rows, dim=1).float()
    merged = rows.float()
    merged.mul_((m / torch.linalg.norm(merged, dim=1)).view(-1, 1))
    return (merged.T if conv1d else merged).to(stored)


def _expert_delta(a, b, i: int, s: float, swapped: bool, device) -> torch.Tensor:
    """Expert ``i``'s float32 s·Δ from A (E, r, in) and B (out, r, E), in the packed parameter's layout: (out, in)
    where PEFT swaps the experts, else (in, out); only that expert's slices are moved and cast."""
    bi, ai = b[:, :, i].to(device, torch.float32), a[i].to(device, torch.float32)
    return torch.einsum("or,ri->oi" if swapped else "or,ri->io", bi, ai).mul_(s)


@dataclass(frozen=True)
class _Unpacked:
    """A packed expert parameter as transformers holds it in memory (``experts.gate_up_proj`` (E, 2I, H),
    ``experts.down_proj`` (E, H, I)) over a base that stores each expert's Linear weights: its shape, and
    each per-expert tensor's (packed name, expert, first row, end row) in the expert's Δ."""

    shape: tuple[int, int, int]
    slices: dict


# transformers' conversion of per-expert checkpoints (conversion_mapping: qwen2_moe and the families mapped
# to it, and Mixtral): gate_up = [gate; up] along the rows, down as it is; Mixtral's block_sparse_moe is mlp.
_PER_EXPERT = {
    "gate_up_proj": (("gate_proj", "up_proj"), ("w1", "w3")),
    "down_proj": (("down_proj",), ("w2",)),
}


def _unpacked_experts(base: Checkpoint) -> dict[str, _Unpacked]:
    """In-memory packed name -> :class:`_Unpacked`, for every expert block the base stores expert by expert."""
    found: dict[str, dict[int, dict[str, str]]] = {}
    for n in base.names:
        m = _EXPERT_TENSOR.search(n)
        if m:
            found.setdefault(n[: m.start()] + ".experts", {}).setdefault(int(m["e"]), {})[m["p"]] = n
    out: dict[str, _Unpacked] = {}
    for module, experts in found.items():
        n_e = len(experts)
        if sorted(experts) != list(range(n_e)):
            continue
        memory = module.replace(".block_sparse_moe.", ".mlp.")
        for packed, layouts in _PER_EXPERT.items():
            parts = next((ps for ps in layouts if all(p in experts[0] for p in ps)), None)
            if parts is None or not all(all(p in experts[e] for p in parts) for e in range(n_e)):
                continue
            rows = [base.meta(experts[0][p]).shape for p in parts]
            if any(len(r) != 2 or r[1] != rows[0][1] for r in rows):
                continue
            slices, r0 = {}, 0
            for p, (nr, _) in zip(parts, rows, strict=True):
                for e in range(n_e):
                    slices[experts[e][p]] = (f"{memory}.{packed}", e, r0, r0 + nr)
                r0 += nr
            out[f"{memory}.{packed}"] = _Unpacked((n_e, r0, rows[0][1]), slices)
    return out


_EXPERT_TENSOR = re.compile(r"\.experts\.(?P<e>\d{1,9})\.(?P<p>gate_proj|up_proj|down_proj|w1|w2|w3)\.weight$")


# LoRA variants under which no W + s·B·A (nor DoRA's renormalisation of it) is the model that was trained,
# each with why (PEFT 0.21's LoraConfig): refused by name where adapter_config.json sets them
_NOT_MERGED_HERE = {
    "alora_invocation_tokens": "Activated LoRA (aLoRA) acts only from its invocation tokens on, so no merged "
    "weight is the model it trained",
    "arrow_config": "Arrow routes each token among several LoRA experts, so no single merged weight is the model",
    "monteclora_config": "MonteCLoRA samples its update around the factors (variational Monte Carlo)",
    "kasa_config": "KaSA truncates the base weight's smallest singular components and puts a learned diagonal "
    "between A and B",
    "use_bdlora": "BD-LoRA stores block-diagonal factors",
    "use_qalora": "QA-LoRA's A acts on group-pooled inputs",
    "layer_replication": "layer replication repeats base layers, each with its own adapter, so the model has more "
    "layers than the base",
}
# initialisations that change the base before training (W − s·B₀·A₀, or a quantised W): such an adapter belongs
# to that changed base, and merged onto the release it is not the model that was trained
_BASE_CHANGING_INITS = ("pissa", "corda", "olora", "loftq", "lora_ga")
# every other key PEFT (0.4 to 0.21) writes in a LoRA adapter_config.json: what the merge reads (which modules are
# selected: target_modules, exclude_modules, layers_to_transform, layers_pattern, modules_to_save), or what does
# not change the merged weight (training-time settings, provenance)
_KNOWN_KEYS = {
    *("r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora", "fan_in_fan_out", "target_modules"),
    *("target_parameters", "modules_to_save", "bias", "lora_bias", "use_dora", "trainable_token_indices"),
    *("init_lora_weights", "peft_type", "task_type", "inference_mode", "base_model_name_or_path", "revision"),
    *("auto_mapping", "peft_version", "lora_dropout", "layers_to_transform", "layers_pattern", "exclude_modules"),
    *("megatron_config", "megatron_core", "loftq_config", "eva_config", "corda_config", "lora_ga_config"),
    *("qalora_group_size", "velora_config", "ensure_weight_tying", "use_qalora", "use_bdlora"),
    *_NOT_MERGED_HERE,
}


# module kinds (subnetviz.checkpoints.naming) that are linear layers in every family: what an ``all-linear`` LoRA
# selects, read for the modules it selects that the file holds no tensors for; and the embeddings' kinds
_LINEAR_KINDS = frozenset(
    {"q", "k", "v", "qkv", "o", "q_a", "q_b", "kv_a", "kv_b", "gate", "up", "gate_up", "mlp_in", "down", "mlp_out"}
)
_EMBEDDING_KINDS = ("embed", "pos_embed", "per_layer")


def _few(modules: list[str]) -> str:
    """What a note names of a list of modules: how many of each module name (the last part), in name order, and the
    first one's whole name (``o_proj ×2, v_proj ×2; e.g. model.layers.0.self_attn.o_proj``)."""
    kinds = sorted(Counter(m.rpartition(".")[2] for m in modules).items())
    by = ", ".join(f"{k[:40]} ×{n}" for k, n in kinds[:4]) + (" …" if len(kinds) > 4 else "")
    return f"{by}; e.g. {modules[0]}"


def _check_variant(ac: dict, cfg_path: Path) -> list[str]:
    """Refuse, by name, a LoRA whose merge onto the base is not the model that was trained (a variant in
    :data:`_NOT_MERGED_HERE`, an initialisation that changed the base); returns a note for each key this
    reader does not know that is set (a later PEFT's), which the merge does not read."""
    for key, why in _NOT_MERGED_HERE.items():
        if ac.get(key):
            raise CheckpointError(
                f"{cfg_path}: {key} is set: {why}; this reader merges plain LoRA and DoRA. Merge it with peft "
                "and give the merged folder."
            )
    init = ac.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        raise CheckpointError(
            f"{cfg_path}: init_lora_weights is {init[:40]!r}, which changes the base's weights before training "
            "(PiSSA, CorDA and OLoRA subtract their initial s·B₀·A₀; LoftQ and LoRA-GA change W too), so the "
            "adapter merged onto the release is not the model that was trained. Save it converted to a plain LoRA "
            "with peft (save_pretrained(..., path_initial_model_for_weight_conversion=...)), or merge it with "
            "peft onto the base it was trained on and give the merged folder."
        )
    unknown = sorted(k for k, v in ac.items() if k not in _KNOWN_KEYS and v not in (None, False, "", [], {}))
    return [
        f"adapter_config.json sets {k} = {str(ac[k])[:40]!r}, which this reader does not know; the merge does "
        "not read it (W + s·B·A as for a plain LoRA)."
        for k in unknown
    ]


# path components that name no model: a hub cache's snapshot folder and revision, a training run's checkpoint
# folders, weight files
_NO_MODEL_NAME = re.compile(
    r"^(?:snapshots|main|refs|[0-9a-f]{40}|(?:checkpoint|step|global_step|epoch)[-_]?\d*|final|latest|merged|"
    r".*\.(?:safetensors|bin|pt|pth|json))$",
    re.IGNORECASE,
)


# name endings that make no other model: a re-save in another dtype or format, a local copy, a quantized copy
# (QLoRA trains on one: "-bnb-4bit", "-GPTQ-Int4", "-AWQ"). Variant words (-Instruct, -Chat, -it, -Base, -Coder,
# -Math) are no such ending: such a model is another model of the same shapes.
_RESAVE_WORDS = frozenset(
    {
        *("bf16", "fp16", "fp32", "f16", "f32", "bfloat16", "float16", "float32", "half", "hf"),
        *("transformers", "safetensors", "st", "local", "copy", "backup", "bak", "orig", "original"),
        *("bnb", "4bit", "8bit", "nf4", "fp4", "int4", "int8", "gptq", "awq", "unsloth", "mlx"),
    }
)


# words that make another model of the same shapes where a name adds them to another's: a base release and its
# post-trained models (Qwen3-0.6B is the post-trained one, Qwen3-0.6B-Base the base)
_VARIANT_WORDS = frozenset(
    {
        *("instruct", "chat", "it", "base", "coder", "code", "math", "vl", "vision", "thinking", "reasoning"),
        *("distill", "sft", "dpo", "grpo", "rlhf", "rl", "reward", "rm", "guard", "tool", "function", "summarize"),
    }
)


def _model_names(spec) -> set[tuple[str, ...]]:
    """The names a path or hub id gives its model, as words, for telling two models apart loosely: the hub id's or
    the folder's last name (a hub cache's ``models--org--name`` for its snapshot folders), lower-cased, split into
    runs of letters and digits, without trailing re-save words (:data:`_RESAVE_WORDS`: ``Qwen2.5-0.5B-bf16`` is
    ``qwen2 5 0 5b``), and that name with the one before it (the hub id's organisation) in front, so that a folder
    named like the hub id (``Qwen--Qwen2.5-0.5B``, ``Qwen_Qwen2.5-0.5B``) is the same model; empty where no
    component names a model."""
    if not isinstance(spec, str):
        return set()

    def words(name: str) -> tuple[str, ...]:
        found = re.findall(r"[0-9a-z]+", name.lower())
        while found and found[-1] in _RESAVE_WORDS:
            found.pop()
        return tuple(found)

    parts = [p for p in re.split(r"[\\/]+", spec.strip()) if p and p not in (".", "..")]
    cached = next((p for p in reversed(parts) if p.startswith("models--")), None)
    named = cached.split("--")[1:] if cached else [p for p in parts if not _NO_MODEL_NAME.match(p)]
    named = [p for p in named if words(p)][-2:]  # (a folder named bf16 in the model's folder is a re-save of it)
    return {words(named[-1]), words("-".join(named))} if named else set()


def _same_model(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether two model names (:func:`_model_names`) may well name one model: equal, or one's letters and digits
    held in the other's with no variant word (:data:`_VARIANT_WORDS`) among the longer one's extra words. A folder
    that drops the publisher's prefix or a version (``llama-3-8b`` for ``meta-llama/Meta-Llama-3-8B``, ``mistral-7b``
    for ``mistralai/Mistral-7B-v0.1``) is the same model; ``Qwen2.5-0.5B`` and ``Qwen2.5-0.5B-Instruct`` are not."""
    short, long = sorted((a, b), key=lambda w: len("".join(w)))
    if "".join(short) not in "".join(long):
        return False
    extra = Counter(long) - Counter(short)
    return not any(w in _VARIANT_WORDS for w in extra)


def _other_base_note(said, base: Checkpoint) -> list[str]:
    """A note where adapter_config.json's ``base_model_name_or_path`` clearly names another model than the base
    the adapter is merged onto: no name of one (:func:`_model_names`) may be the other's (:func:`_same_model`). A
    local copy of the same model (its folder named without the publisher or the version), an ``-bf16`` re-save, a
    quantized copy QLoRA trained on, a folder named like the hub id are not flagged; the base release and its
    ``-Instruct`` / ``-Chat`` / ``-it`` / ``-Base`` / ``-Coder`` / ``-Math`` model are (same shapes, another model).
    Not refused: the adapter may well fit another base of its shapes."""
    ours = _model_names(base.spec) | _model_names(str(base.root) if base.root else None)
    theirs = _model_names(said)
    if not ours or not theirs or any(_same_model(a, b) for a in ours for b in theirs):
        return []
    return [
        f"adapter_config.json says it was trained on {str(said)[:120]!r}, but it is merged onto {base.spec}, which "
        "looks like another model; the merge is the adapter's Δ on the base given."
    ]


_NUMBER_LIMIT = 2**31  # a rank or alpha beyond it is no adapter's (a 10**400 made math.isfinite an OverflowError)


def _number(v, *, rank: bool) -> bool:
    """Whether ``v`` is a rank (a whole number from 1 to 2**31) or, without ``rank``, an alpha (a finite number
    of magnitude at most 2**31). JSON integers have any number of digits: bounded before any float of them."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    if isinstance(v, float) and not math.isfinite(v):
        return False
    if rank:
        return 0 < v <= _NUMBER_LIMIT and (isinstance(v, int) or v.is_integer())
    return -_NUMBER_LIMIT <= v <= _NUMBER_LIMIT


def _settings(ac: dict, cfg_path: Path) -> tuple[int, float, list, list]:
    """``r``, ``lora_alpha`` and the compiled ``rank_pattern`` / ``alpha_pattern`` of an adapter config
    someone else wrote, each checked (a rank of 0 or "8", an alpha "x", a pattern that is no regular
    expression: one line naming the key, not a ZeroDivisionError when merging)."""

    def bad(key: str, v, want: str) -> CheckpointError:
        return CheckpointError(f"{cfg_path}: {key} is {str(v)[:60]!r}; expected {want}.")

    r, alpha = ac.get("r", 8), ac.get("lora_alpha", 8)
    if not _number(r, rank=True):
        raise bad("r", r, "a rank >= 1 (at most 2**31)")
    if not _number(alpha, rank=False):
        raise bad("lora_alpha", alpha, "a number of magnitude at most 2**31")
    patterns = []
    for key, rank in (("rank_pattern", True), ("alpha_pattern", False)):
        given = ac.get(key) or {}
        if not isinstance(given, dict):
            raise bad(key, given, "an object {module pattern: value}")
        compiled = []
        for pattern, v in given.items():
            if not _number(v, rank=rank):
                raise bad(
                    f"{key}[{pattern[:40]!r}]",
                    v,
                    "a rank >= 1 (at most 2**31)" if rank else "a number of magnitude at most 2**31",
                )
            # as PEFT matches them (re.match(rf"(.*\.)?({key})$", module)): the pattern ends a module's name, in
            # PEFT's groups (a backreference in the key counts them as PEFT does)
            compiled.append(
                (_pattern(rf"(.*\.)?({pattern})", f"{cfg_path}: {key} {pattern[:60]!r}"), int(v) if rank else v)
            )
        patterns.append(compiled)
    return int(r), alpha, patterns[0], patterns[1]


# Module patterns come from someone else's adapter_config.json. They are compiled with the ``regex`` module
# (what transformers' tokenizers use): Python's ``re`` backtracks without bound on patterns such as
# (\w+\.?)+x against a module name (over 20 s for a 37-character name), holding a server thread; ``regex``
# answers those at once, and a match that still runs past the timeout is refused.
_MATCH_SECONDS = 1.0


def _pattern(text: str, where: str):
    import regex

    try:
        return regex.compile(text)
    except regex.error as exc:
        raise CheckpointError(f"{where} is not a valid regular expression ({exc}).") from None


def _matches(pattern, module: str, where: str, how: str = "fullmatch"):
    """``pattern``'s match of ``module`` (the whole name, or with ``how="match"`` its start), or None; within the
    time limit."""
    try:
        return getattr(pattern, how)(module, timeout=_MATCH_SECONDS)
    except TimeoutError:
        raise CheckpointError(
            f"{where}: matching a module name took over {_MATCH_SECONDS:g} s; give a simpler pattern."
        ) from None


def _listed(modules, module: str) -> bool:
    """Whether ``modules`` (``modules_to_save`` of an adapter config: names, or None) names ``module`` as PEFT
    matches it: the whole name, or its end after a dot."""
    if not isinstance(modules, list):
        return False
    return any(isinstance(m, str) and m and (module == m or module.endswith(f".{m}")) for m in modules)


def _whole_target(key: str) -> str:
    """The weight in memory that a whole tensor the adapter saves stands for: ``<module>.weight`` of a module saved
    whole (under ``modules_to_save``, with or without the adapter's name), of a LoRA-adapted module's
    ``base_layer``, or of the layer a module's trainable tokens wrap (``<module>.token_adapter.base_layer.weight``,
    which ``save_embedding_layers`` saves where the vocabulary was resized)."""
    short = key[len(_PEFT_PREFIX) :] if key.startswith(_PEFT_PREFIX) else key
    return _MODULES_TO_SAVE.sub(".", short).replace(_TOKEN_LAYER, ".").replace(".base_layer.", ".")


def _adapter_weights(folder: Path) -> Path:
    """The adapter's ``adapter_model.safetensors`` in ``folder``, checked readable; a one-line error naming what is
    there instead (PEFT before 0.6 saved ``adapter_model.bin``, a pickle, which is not read)."""
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise CheckpointError(
                f"{folder}: the adapter is saved as adapter_model.bin (a pickle), which is not read; only safetensors "
                "adapters are: load it with peft and save_pretrained it again (peft 0.6 and later write "
                "adapter_model.safetensors)."
            )
        raise CheckpointError(
            f"{folder}: adapter_config.json without adapter_model.safetensors (only safetensors adapters are read)."
        )
    check_readable(weights)
    return weights


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        with utf8_name(path) as name:  # (safetensors' torch reader takes a name only as UTF-8 text)
            return load_file(name)  # adapters are small (a few MB to a few hundred)
    except Exception as exc:  # safetensors' own error types
        raise CheckpointError(f"{path}: cannot read the adapter ({exc}).") from exc
