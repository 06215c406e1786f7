"""Checkpoints loaded as transformers models (Behaviour, revert experiments, accuracy, the bigram analysis):
the same files the weight comparison reads, and nothing else.

- **Local files only.** A cached hub id loads from its snapshot folder with ``local_files_only``, so a
  page never reaches the hub (not even to check for a newer revision or a missing optional file).
- **No adapter on top.** With PEFT installed, ``from_pretrained`` of a folder that holds a full model
  *and* an ``adapter_config.json`` (a merged model saved where its adapter was) loads the model and
  applies the adapter again, so the model run would differ from the weights compared. Such a folder is
  loaded through a view without the adapter's files (a temporary folder of links to the rest).
- **Inside the roots.** ``from_pretrained`` opens more than the weights (tokenizer files, generation
  config, chat template): every file of the folder is put through
  :func:`~subnetviz.config.check_readable` first, so a ``tokenizer.json`` linking outside the folders the
  server may read is refused, not opened.
- **The weights the pages compare, checked.** transformers picks the weights file itself; a folder where it
  would pick other files than the weight pages read (a ``pytorch_model.bin`` beside another ``.safetensors``)
  is refused, and a ``torch.save`` file it reads has its pickles walked first
  (:func:`~subnetviz.pickles.check_torch_file`), as the weight pages' reader does.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from subnetviz.checkpoints.config_bounds import (
    DESCRIBED_FACTOR,
    DESCRIBED_SLACK,
    Stored,
    Unbounded,
    bounded_build,
    check_config_counts,
    check_config_sizes,
    mismatch,
)
from subnetviz.errors import CheckpointError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
# The config keys that give the positions a model takes, in the order read: Llama's, GPT-2's, older families'
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def model_folder(spec: str | os.PathLike) -> Path:
    """The folder of a local model, or the snapshot folder of a hub id (``org/name[@rev]``) in the local cache
    (never downloaded); CheckpointError where there is no ``config.json`` to build the model from (a LoRA
    adapter's folder or hub id said so by name: it was "not a model folder nor a cached hub id"). While the roots
    are enforced, a path outside them is refused first (:func:`_check_within_roots`)."""
    from subnetviz.checkpoints.sources import check_config_link, local_folder

    _check_within_roots(spec)
    refuse_adapter(spec)
    path = local_folder(spec) or Path(spec).expanduser()
    if not (path / "config.json").is_file():
        check_config_link(path / "config.json", f"{spec}: config.json")  # (a cached id: it was "no cached hub id")
        raise CheckpointError(f"{spec}: not a model folder (no config.json) nor a cached hub id.")
    return path


def _check_within_roots(spec: str | os.PathLike) -> None:
    """While the roots are enforced (:func:`~subnetviz.config.enforce_roots`), refuse a path ``spec`` (hub id or
    path as :func:`~subnetviz.checkpoints.sources.reads_as_hub_id` says) that lies outside them, before anything
    asks what is there: in the words the weight readers use, the same whether a model folder, another file or
    nothing is there (a model folder there was returned and one missing read "not a model folder")."""
    from subnetviz.checkpoints.sources import reads_as_hub_id
    from subnetviz.config import check_allowed, enforce_roots

    if enforce_roots() and not reads_as_hub_id(spec):
        check_allowed(Path(spec).expanduser())


def refuse_adapter(spec: str | os.PathLike) -> None:
    """CheckpointError where ``spec`` names a PEFT adapter (its folder, or a cached hub id's snapshot) that holds no
    full model beside it: a model is run from a full model's folder. Said before anything else reads ``spec``, so
    that a run (Behaviour) given an adapter as a finetune says why, not that the adapter is no model to compare.
    Nothing is asked of a path outside the roots while they are enforced (reading it refuses it)."""
    from subnetviz.checkpoints.sources import holds_model_weights, local_folder
    from subnetviz.errors import SubnetvizError

    try:
        _check_within_roots(spec)
        folder = local_folder(spec)
    except SubnetvizError:  # a hub id not cached, a path outside the roots, no name a file can have: reading says so
        return
    if folder is not None and (folder / "adapter_config.json").is_file() and not holds_model_weights(folder):
        raise CheckpointError(
            f"{spec}: a LoRA/PEFT adapter (adapter_config.json), not a model: a model is run here (Behaviour, Bigram, "
            "training) from a full model's folder; the weight analyses merge an adapter onto its base, but to run "
            "it, merge it with peft (merge_and_unload, then save_pretrained) and give that folder."
        )


FOLDER_ENTRIES = 100_000  # entries under a model folder checked at most (a release holds tens, a few hundred shards)


def folder_entries(folder: Path) -> Iterator[tuple[str, Path]]:
    """``(name relative to folder, path)`` of everything under ``folder``, its subfolders walked too: transformers
    reads more than the top level (``additional_chat_templates/*.jinja``). A subfolder (a link to one included) is
    listed, then walked once (a link back to a folder already walked is not walked again); one that lies outside
    the roots while they are enforced (:func:`leads_outside`) is listed but not walked (a link to ``/`` would walk
    the whole disk). A link that leads back to itself is left out (it names no file, and was "linked as it is" by
    :func:`without_adapter`). A subfolder this process cannot search (``lost+found`` at a volume's root, another
    user's folder) is listed but not walked: nothing in it can be opened, by transformers either. One it can search
    but not list is skipped too, except while the roots are enforced: a file in it could be opened by name but not
    checked. CheckpointError, one line, for that subfolder (roots enforced) or ``folder`` itself not listed, and past
    :data:`FOLDER_ENTRIES` entries (a link to a disk's worth of data in a folder, with the roots not enforced, would
    walk it all before every load)."""
    from subnetviz.config import PRIVATE_FOLDERS, display_path, enforce_roots

    seen: set[str] = set()
    pending = [(folder, "")]
    count = 0
    while pending:
        here, prefix = pending.pop(0)  # (breadth first: a folder's own files, then its subfolders')
        real = os.path.realpath(here)
        if real in seen:
            continue
        seen.add(real)
        if prefix and not os.access(here, os.X_OK):  # a subfolder none of whose files can be opened
            continue
        try:
            entries = sorted(here.iterdir())
        except OSError as exc:
            if prefix and not enforce_roots():  # (transformers reaches a subfolder's files by listing it)
                continue
            raise CheckpointError(
                f"{prefix.rstrip('/') or '.'} in {display_path(folder)}: cannot be listed ({exc.strerror or exc})."
            ) from None
        for entry in entries:
            try:
                entry.resolve()
            except (OSError, RuntimeError):  # a loop of links names no file: opening it fails at once, reads nothing
                continue
            name = prefix + entry.name
            count += 1
            if count > FOLDER_ENTRIES:
                raise CheckpointError(
                    f"{display_path(folder)}: more than {FOLDER_ENTRIES:,} files and folders under it (its subfolders "
                    "and the folders they link to), all of which a model's loader may open and are checked first; a "
                    "model folder holds a few dozen: move the rest out."
                )
            if entry.name.lower() in PRIVATE_FOLDERS:  # a clone's .git/ (and .streamlit/): never read, by
                continue  # transformers either; a weight file linked into .git/annex/objects is checked as a file
            yield name, entry
            if _is_folder(entry) and not leads_outside(entry):
                pending.append((entry, name + "/"))


def _is_folder(path: Path) -> bool:
    """Whether ``path`` (its links followed) is a folder; False where it cannot be asked (a link into a folder this
    process cannot search), which is then checked as a file (:func:`~subnetviz.config.check_readable`: where it
    leads)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def leads_outside(path: Path) -> bool:
    """Whether ``path`` (its links followed) lies outside the roots while they are enforced. False for a path that
    names no file (a loop of links): :func:`~subnetviz.config.check_readable` says what that is."""
    from subnetviz.config import check_allowed, enforce_roots
    from subnetviz.errors import PathNotAllowedError

    if not enforce_roots():
        return False
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    try:
        check_allowed(resolved)
    except PathNotAllowedError:
        return True
    return False


def check_folder_files(folder: Path) -> Path:
    """``folder``, once everything under it (subfolders too, :func:`folder_entries`) passed
    :func:`~subnetviz.config.check_readable`, which refuses a file outside the roots and anything that is not a
    regular file (a named pipe's open waits for good): transformers opens whichever files it looks for (tokenizer
    files, generation config, chat templates in ``additional_chat_templates/``). A subfolder that leads outside
    the roots is refused too."""
    from subnetviz.config import check_readable, display_path
    from subnetviz.errors import PathNotAllowedError

    shown = display_path(folder)
    for name, entry in folder_entries(folder):
        what = f"{name} in {shown}"
        if not _is_folder(entry):
            check_readable(entry, what=what)
        elif leads_outside(entry):
            raise PathNotAllowedError(f"{what}: leads outside the folders this server may read; refused.")
    return folder


@contextmanager
def without_adapter(folder: Path) -> Iterator[Path]:
    """``folder``, or where it holds an adapter's files beside a full model, a temporary folder of links
    to everything else in it (for as long as the block runs); every file in it inside the roots."""
    check_folder_files(folder)
    if not any((folder / f).exists() for f in ADAPTER_FILES):
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="subnetviz-model-") as tmp:
        for entry in folder.iterdir():
            if entry.name not in ADAPTER_FILES:
                os.symlink(os.path.realpath(entry), Path(tmp) / entry.name)  # (a link loop: linked as it is)
        yield Path(tmp)


def load_causal_lm(spec: str | os.PathLike, **kwargs):
    """The model of checkpoint ``spec`` that returns next-token logits of a text prompt, in float32 (``kwargs`` go to
    ``from_pretrained``), from local files only and without an adapter stored beside it (see the module docstring):
    ``AutoModelForCausalLM``, or for a vision-language model it cannot build ``AutoModelForImageTextToText``
    (:func:`text_model_class`). A config or a load transformers refuses is one CheckpointError naming ``spec``."""
    import torch

    kwargs.setdefault("dtype", torch.float32)
    with without_adapter(model_folder(spec)) as folder:
        check_not_quantized(spec, folder)
        files = checked_weights(spec, folder)
        config, stored = _sized_config(spec, folder)
        auto = text_model_class(config, spec)
        # built on the meta device first (no memory): transformers allocates every parameter the config describes
        # that the weights lack or store in another shape before it refuses the load (9 TB for 10^9 KV heads)
        skeleton = built_on_meta(spec, auto, config, stored)
        # use_safetensors: transformers reads the safetensors checked, never a .bin beside them (nor the reverse)
        kwargs["use_safetensors"] = all(f.suffix == ".safetensors" for f in files)
        try:
            model = auto.from_pretrained(str(folder), config=config, local_files_only=True, **kwargs)
        except ValueError as exc:  # transformers' refusals of a config or a weight it cannot load: its first line
            raise CheckpointError(
                f"{spec}: transformers cannot load it as {auto.__name__} ({_first_line(exc)})."
            ) from None
        except (RuntimeError, OverflowError) as exc:  # torch's: a size it cannot allocate, shapes that do not match
            why = mismatch(skeleton, stored) or _first_line(exc)  # (transformers': "look at the above report!")
            raise CheckpointError(f"{spec}: config.json does not describe its weights: {why}") from None
    return model


def model_config(spec, folder: Path | None = None):
    """transformers' config of checkpoint ``spec``, read from ``folder`` (default its :func:`model_folder`) from local
    files only: every config subnetviz builds is read here (a model's load, its meta-device skeleton, Behaviour's
    context length and room, the revert experiments' config difference, a run's model class). CheckpointError, one
    line naming ``spec``, where transformers does not know its model type (a checkpoint that brings its own code,
    such as Kimi-K2's ``kimi_k2``: such code is never run here) or refuses the config: ``<spec>: config.json: <the
    validator's message>`` (:func:`config_problem`). transformers 5 validates a config as a strict dataclass, whose
    errors are no ValueError: a hidden size no multiple of the heads, ``"hidden_act": 5``, ended in a traceback."""
    return _sized_config(spec, folder)[0]


def _sized_config(spec, folder: Path | None = None):
    """(:func:`model_config` of ``spec``, the :class:`~subnetviz.checkpoints.config_bounds.Stored` weights it was checked against): its layer and expert
    counts are compared with the weights' headers (:func:`~subnetviz.checkpoints.config_bounds.check_config_counts`) before transformers reads it, whose
    config classes build lists over the layers (Qwen3's ``layer_types``: seconds per million layers)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    from subnetviz.config import read_json

    folder = model_folder(spec) if folder is None else folder
    raw = read_json(folder / "config.json", CheckpointError)
    model_type = raw.get("model_type")
    if isinstance(model_type, str) and model_type not in CONFIG_MAPPING_NAMES:
        raise CheckpointError(
            f"{spec}: model type {model_type!r} is unknown to transformers {_transformers_version()} (its checkpoint "
            "would need code of its own, which is never run here), so it cannot be run; its weights are compared on "
            "the weight pages."
        )
    stored = check_config_counts(spec, folder, raw)
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True), stored
    except (*CONFIG_ERRORS, *_strict_errors()) as exc:
        raise CheckpointError(f"{spec}: config.json: {config_problem(exc)}") from None


# What transformers' config classes raise, besides the strict validation's errors (:func:`_strict_errors`), for a
# value they cannot build from: an unknown model type (ValueError), rope_parameters missing a key (KeyError),
# "layer_types": 5 (TypeError), "quantization_config": 5 (AttributeError), 0 attention heads (ZeroDivisionError)
CONFIG_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, KeyError, AttributeError, ArithmeticError)


def _strict_errors() -> tuple[type[Exception], ...]:
    """huggingface_hub's StrictDataclassError family (a field of the wrong type, a class validator refusing the
    config), which transformers 5 raises for a config.json it refuses: an Exception, no ValueError. Empty with a
    huggingface_hub too old to have it (whose transformers raised ValueError)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return ()
    return (StrictDataclassError,)


def config_problem(exc: Exception) -> str:
    """Why transformers refused a config, in one line of at most 300 characters: a strict-dataclass error's cause,
    which is the validator's own message ("The hidden size (97) is not a multiple of the number of attention heads
    (4)."; the error's own text is "Class validation error for validator '...':" with it on the next line), a
    ValueError's text, and the type before the text of anything else ("ZeroDivisionError: integer modulo by
    zero")."""
    strict = isinstance(exc, _strict_errors())
    cause = exc.__cause__ if strict and exc.__cause__ is not None else exc
    text = " ".join(str(cause).split())
    if not (strict or isinstance(exc, ValueError)) or not text:
        text = f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    text = text if len(text) <= 300 else text[:297] + "..."
    return text if text.endswith(".") else text + "."


def meta_model(spec: str | os.PathLike):
    """The model of ``spec`` (a folder, or a hub id in the local cache) built from its config.json on the meta
    device, with the class a run builds (:func:`text_model_class`): its parameters' names and shapes, no weight
    read, no memory taken, nothing downloaded (for checking a mask before a model is loaded or a run queued). A
    config transformers refuses is one CheckpointError naming ``spec`` (:func:`model_config`)."""
    config, stored = _sized_config(spec)
    return built_on_meta(spec, text_model_class(config, spec), config, stored)


def built_on_meta(spec, cls, config, stored: Stored):
    """``cls`` (a transformers auto class) built from ``config`` on the meta device (no memory taken), once its
    size was bounded: refused, one line naming ``spec``, where its widths exceed the weights' by name
    (:func:`~subnetviz.checkpoints.config_bounds.check_config_sizes`), where the model described holds more than
    :data:`~subnetviz.checkpoints.config_bounds.DESCRIBED_FACTOR` times the parameters ``stored`` (plus its slack), where building it
    registers far more modules than the weights hold tensors (a count no key check knows, :func:`~subnetviz.checkpoints.config_bounds.bounded_build`),
    and where torch cannot build it (a negative head_dim, a size past what it counts: RuntimeError,
    OverflowError)."""
    import torch

    check_config_sizes(spec, stored)
    limit = DESCRIBED_FACTOR * stored.params + DESCRIBED_SLACK
    try:
        with bounded_build(64 * stored.tensors + 4096), torch.device("meta"):
            model = cls.from_config(config)
    except Unbounded as exc:
        raise CheckpointError(
            f"{spec}: config.json does not describe its weights: building the model it describes registered more "
            f"than {exc.limit:,} modules and parameters for the {stored.tensors:,} tensors its weights hold; refused."
        ) from None
    except (RuntimeError, OverflowError) as exc:  # (OverflowError is an ArithmeticError: said here, not below)
        raise CheckpointError(f"{spec}: config.json does not describe its weights: {config_problem(exc)}") from None
    except CONFIG_ERRORS as exc:  # a config transformers reads but cannot build (GPT-2's n_embd 32 over 5 heads)
        raise CheckpointError(
            f"{spec}: config.json: the model cannot be built from it: {config_problem(exc)}"
        ) from None
    described = sum(p.numel() for p in model.parameters())  # (a tied head once)
    if described > limit:
        raise CheckpointError(
            f"{spec}: config.json does not describe its weights: the model it describes has {described:,} "
            f"parameters, its weights {stored.params:,}; refused before loading it."
        )
    return model


def text_model_class(config, spec=None):
    """The transformers auto class that builds, from ``config``, a model returning next-token logits of a text prompt:
    ``AutoModelForCausalLM`` where it knows the config (Llama-4 builds its text model, Gemma-3 the whole of it), else
    ``AutoModelForImageTextToText`` for a vision-language model (Mistral-3, Qwen2/2.5/3-VL, LLaVA), whose forward of
    token ids alone runs the language model and its head. ConfigError, one line naming ``spec``, where neither
    builds it: the Qwen omni models (thinker and talker, no forward of their own)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
    )

    from subnetviz.errors import ConfigError

    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
        return AutoModelForCausalLM
    if type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        return AutoModelForImageTextToText
    architecture = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    raise ConfigError(
        f"{spec if spec is not None else 'model'}: {getattr(config, 'model_type', '?')} ({architecture}) has no class "
        f"in transformers {_transformers_version()} that returns next-token logits of a text prompt (neither a "
        "causal LM nor an image-text-to-text model), so it cannot be run (Behaviour, Bigram, training); its weights "
        "are compared on the weight pages."
    )


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0].strip() if text else type(exc).__name__)[:200]


def transformers_weights(folder: Path, spec=None) -> list[Path]:
    """The weight files ``from_pretrained`` reads from ``folder`` (:func:`~subnetviz.checkpoints.sources.
    transformers_choice`: ``config.json``'s ``transformers_weights``, else the first of
    :data:`~subnetviz.checkpoints.sources.SAFE_NAMES` and :data:`~subnetviz.checkpoints.sources.TORCH_NAMES`; an
    index: its shards). CheckpointError, naming ``spec`` (default the folder), where there is none."""
    from subnetviz.checkpoints.sources import SAFE_NAMES, TORCH_NAMES, _index_files, transformers_choice
    from subnetviz.config import display_path

    where = spec if spec is not None else display_path(folder)
    first = transformers_choice(folder, where)
    if first is None:
        raise CheckpointError(
            f"{where}: no weights transformers can load (expected {', '.join(SAFE_NAMES + TORCH_NAMES)})."
        )
    return _index_files(first) if first.name.endswith(".index.json") else [first]


def checked_weights(spec, folder: Path) -> list[Path]:
    """:func:`transformers_weights` of ``folder``, once they are the files the weight pages read of it
    (``sources._folder_files``) and each passed :func:`~subnetviz.config.check_readable`, a ``torch.save`` one
    also :func:`~subnetviz.pickles.check_torch_file` (a pickle walked before torch unpickles it: a tuple 150,000
    deep crashed the process). A folder where the two differ is refused: the model run would not be the one
    compared, and a ``.bin`` beside another ``.safetensors`` was loaded with its pickle never walked."""
    from subnetviz.checkpoints.header import check_not_lfs_pointer
    from subnetviz.checkpoints.sources import _folder_files
    from subnetviz.config import check_readable
    from subnetviz.errors import MaskError
    from subnetviz.pickles import check_torch_file

    loads, read = transformers_weights(folder, spec), _folder_files(folder)
    if sorted(os.path.realpath(f) for f in loads) != sorted(os.path.realpath(f) for f in read):
        raise CheckpointError(
            f"{spec}: transformers would run {_names(loads)} but the weight pages read {_names(read)}; keep one "
            "model's weights in the folder (move the other files out)."
        )
    for f in loads:
        check_readable(f, what=f"{f.name} of {spec}")
        check_not_lfs_pointer(f)  # (transformers' own error named no cause)
        if f.suffix != ".safetensors":
            try:
                check_torch_file(f)
            except MaskError as exc:  # (the mask reader's errors; here the checkpoint's)
                raise CheckpointError(str(exc)) from None
    return loads


def _names(files: list[Path]) -> str:
    names = sorted(f.name for f in files)
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


# quantization methods whose models transformers runs only through another library's modules and kernels (the
# weights they store are codes, read as weights by the update analysis alone: subnetviz.analysis.quant)
KERNEL_METHODS = {
    "compressed-tensors": "compressed-tensors",
    "gptq": "GPTQ",
    "awq": "AWQ",
    "bitsandbytes": "bitsandbytes",
    "modelopt": "NVIDIA ModelOpt",
}


def check_not_quantized(spec, folder: Path) -> None:
    """Refuse, in one line, a checkpoint transformers would build from another library's quantized modules
    (:data:`KERNEL_METHODS`): a model run here is a float32 model whose parameters are the stored tensors, and
    such a checkpoint's are codes (transformers' own error named a size mismatch of packed zero points, or a
    missing library)."""
    from subnetviz.analysis.quant import quant_method
    from subnetviz.config import read_json

    try:
        method = quant_method(read_json(folder / "config.json", CheckpointError))
    except CheckpointError:
        return  # (an unknown method or an unreadable config: transformers' own loading says what it is)
    if method in KERNEL_METHODS:
        raise CheckpointError(
            f"{spec}: {'an' if KERNEL_METHODS[method][0] in 'AEIOU' else 'a'} {KERNEL_METHODS[method]}-quantized "
            "checkpoint; models are run here in float32 from their "
            "stored weights, and this one stores integer codes that need its library's modules. Its weights are "
            "compared on the weight pages (Update sparsity, Spectra, Overlap, Series); to run it, give the "
            "unquantized model."
        )


# The JSON files a tokenizer is read from: each holds one object (a list there was an AttributeError traceback)
TOKENIZER_JSON = (
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "vocab.json",
)
# Any of these is a tokenizer (the training config's list; AutoTokenizer reads the one the model type needs)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)


def load_tokenizer(spec: str | os.PathLike):
    """``AutoTokenizer`` of checkpoint ``spec``, from local files only, every file of its folder checked first
    (:func:`check_folder_files`); any failure of loading it is one CheckpointError (:func:`folder_tokenizer`)."""
    with without_adapter(model_folder(spec)) as folder:
        return folder_tokenizer(folder, str(spec))


def folder_tokenizer(folder: Path, spec: str | None = None):
    """``AutoTokenizer`` of the files in ``folder`` (checked by the caller: :func:`check_folder_files`), from local
    files only. Whatever transformers raises becomes one CheckpointError naming ``spec`` (default the folder) and,
    where it can be told, the file: a tokenizer file of the wrong JSON type ended in an AttributeError or
    TypeError traceback from inside transformers (CLI and Behaviour page alike). A config.json transformers' strict
    validation refuses (the tokenizer's loader reads it) is said as :func:`model_config` says it, not as the
    tokenizer's fault. A folder with none of :data:`TOKENIZER_FILES` is refused before transformers is asked: for a
    GPT-2 or GPT-NeoX config it built an empty tokenizer (1 or 2 tokens) instead of raising, and a text corpus then
    "tokenized to 0 tokens"."""
    from transformers import AutoTokenizer

    from subnetviz.config import display_path

    where = spec if spec is not None else display_path(folder)
    if not any((folder / f).exists() for f in TOKENIZER_FILES):  # (a folder in a file's place: said below)
        said = f"no tokenizer file there (none of {', '.join(TOKENIZER_FILES)})"  # (as _tokenizer_problem says it)
        raise CheckpointError(f"{where}: its tokenizer cannot be loaded ({said}).")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one line naming the folder and file
        if isinstance(exc, _strict_errors()):  # (AutoTokenizer reads config.json too: the config is refused)
            raise CheckpointError(f"{where}: config.json: {config_problem(exc)}") from None
        raise CheckpointError(f"{where}: its tokenizer cannot be loaded ({_tokenizer_problem(folder, exc)}).") from None


def _tokenizer_problem(folder: Path, exc: Exception) -> str:
    """Why ``folder``'s tokenizer failed to load with ``exc``: no tokenizer file at all, a folder where one should
    be, a JSON file of it that is no JSON object (or not JSON), a tokenizer_class that is not a name; else
    transformers' first line."""
    from subnetviz.checkpoints.families import json_type
    from subnetviz.config import not_a_file, read_json
    from subnetviz.errors import SubnetvizError

    if not any((folder / f).exists() for f in TOKENIZER_FILES):
        return f"no tokenizer file there (none of {', '.join(TOKENIZER_FILES)})"
    for name in dict.fromkeys(TOKENIZER_FILES + TOKENIZER_JSON):
        if kind := not_a_file(folder / name):
            return f"{name}: {kind}, not a regular file"
    for name in TOKENIZER_JSON:
        if (folder / name).is_file():
            try:
                value = read_json(folder / name, CheckpointError, what=name)
            except SubnetvizError as problem:
                return str(problem).rstrip(".")
            except OSError as problem:
                return f"{name}: cannot be read ({problem.strerror or problem})"
            cls = value.get("tokenizer_class") if name == "tokenizer_config.json" else None
            if cls is not None and not isinstance(cls, str):
                return f'{name}: tokenizer_class is {json_type(cls)}; expected a class name such as "LlamaTokenizer"'
    text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else ""
    if isinstance(exc, OSError | ValueError):  # transformers' own messages
        return first[:200] or type(exc).__name__
    return f"{type(exc).__name__} inside transformers: {first[:200]}"
