"""The ``bigram_mask`` job's configuration: :class:`BigramJobConfig`, validated in one place.

It is what the Bigram page's training form builds, what a job's ``config.json`` holds and what
:mod:`subnetviz.bigram.job` runs and analyses with. JSON form (``lambda`` is ``lam`` in Python)::

    model     local HF model folder, or a hub id already in the local HF cache (required)
    corpus    "zoo" (sequences sampled from the demo zoo's exact chain, zoo_dir()/bigram.npz,
              which is also the bigram table; in the zoo tokenizer's ids, so only for a model whose
              tokenizer gives the zoo's letters those ids), a text file, a saved dataset folder
              (``Dataset.save_to_disk``, column "text") or ``hf:<name>[:<split>]`` from the local
              HF datasets cache; tokenized with the model's own tokenizer
    target    "bigram" (default) | "optimal" (the full model's own distribution)
    lambda    sparsity weight >= 0 (default 10)
    preset    "fast" (default) | "paper"
    steps     optional cap on optimizer steps (default: the preset's max_steps)
    seed      int (default 0)
    device    "auto" (default) | "cpu" | "cuda[:i]"
    seq_len   sequence length (default: the zoo's doc_length for "zoo", else 128; capped at the
              model's context)
    bigram    optional path of a bigram.npz table to use instead of the corpus' own counts
    eval_sequences  held-out sequences for the closing fidelity check (default 200)
    name      a label for the run (shown in the registry)

Values are checked when the object is made (``__post_init__``); :meth:`BigramJobConfig.validate`
adds what needs the file system: the model folder and its architecture, the corpus, the table,
the device. Nothing here reads model weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from subnetviz.config import read_json
from subnetviz.errors import ConfigError, suggest

KIND = "bigram_mask"
_JSON_NAMES = {"lam": "lambda"}  # a Python keyword in JSON
_FIELD_NAMES = {v: k for k, v in _JSON_NAMES.items()}


def zoo_bigram_path() -> Path:
    from subnetviz.config import zoo_dir

    return zoo_dir() / "bigram.npz"


def model_family(model: str) -> str:
    """The bigram-mask family (``gpt2``, ``gpt_neox``, ``llama``) of a model folder or cached hub id, from its
    ``config.json`` alone; ConfigError for a folder without one or an architecture without a maskable-weight table."""
    from subnetviz.bigram.maskable import MODEL_TYPES, model_folder

    folder = model_folder(model)
    model_type = read_json(folder / "config.json", ConfigError).get("model_type")
    if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
        raise ConfigError(
            f"{folder}: model_type {model_type!r} has no maskable-weight table; supported: {sorted(MODEL_TYPES)}."
        )
    return MODEL_TYPES[model_type]


def check_zoo_tokenizer(model: str, table: str | Path) -> None:
    """Refuse the zoo corpus for a model whose tokenizer does not give the zoo's letters the zoo's token ids.

    The zoo corpus is the demo chain written in the zoo tokenizer's ids (``token_ids`` of bigram.npz, one per
    letter in ``letters``). Fed to a model of another tokenizer, those ids are other tokens of its own, and the
    analysis (or the training) ran on them with no word said. The model's tokenizer must map each letter to the
    table's id, as the zoo's own tokenizer does; a model without a tokenizer cannot be checked and is refused.
    A table that names no letters (one written by hand, in the model's own ids) has nothing to check.
    Reads the table and the model's tokenizer, never its weights."""
    import numpy as np

    from subnetviz.bigram.maskable import model_folder
    from subnetviz.checkpoints.models import TOKENIZER_FILES, load_tokenizer

    try:
        with np.load(table, allow_pickle=False) as z:
            if "letters" not in z.files:
                return
            letters, ids = [str(c) for c in z["letters"]], [int(i) for i in z["token_ids"]]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"{table}: the zoo's bigram table cannot be read ({exc}); build the demo zoo again."
        ) from None
    if len(letters) != len(ids):
        raise ConfigError(f"{table}: {len(letters)} letters but {len(ids)} token_ids; build the demo zoo again.")
    what = "the zoo corpus is the demo chain in the zoo tokenizer's ids; give a text corpus for this model"
    folder = model_folder(model)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"corpus 'zoo' for {folder}: it has no tokenizer to read the zoo's letters with ({what}).")
    got = load_tokenizer(folder).convert_tokens_to_ids(letters)
    for letter, want, have in zip(letters, ids, got, strict=True):
        if have != want:
            said = "does not know it" if have is None else f"gives it id {have}"
            raise ConfigError(
                f"corpus 'zoo' does not fit {folder}: the zoo's letter {letter!r} is token id {want}, and this "
                f"model's tokenizer {said} ({what})."
            )


def _check_has_tokenizer(model: str, corpus: str) -> None:
    """Refuse a text or dataset ``corpus`` for a model folder with none of the tokenizer files: the job was queued
    and then failed (for GPT-2 and GPT-NeoX, transformers built an empty tokenizer and the corpus "tokenized to 0
    tokens")."""
    from subnetviz.bigram.maskable import model_folder
    from subnetviz.checkpoints.models import TOKENIZER_FILES

    folder = model_folder(model)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(
            f"{folder}: no tokenizer file there (none of {', '.join(TOKENIZER_FILES)}) to cut corpus {corpus!r} "
            "with; save the model's tokenizer beside its weights (tokenizer.save_pretrained)."
        )


# Each preset's step cap, as bigram.train.PRESETS holds it (here for pages without torch; a test keeps them equal).
PRESET_MAX_STEPS = {"paper": 15000, "fast": 3000}
# Upper bounds (far above any real run): ``steps`` becomes the registry's progress total (2**63 overflowed SQLite's
# INTEGER), ``eval_sequences`` x ``seq_len`` tokens are sampled into memory, the seed goes to NumPy (0 .. 2^32 - 1).
MAX_STEPS = 10_000_000
MAX_SEQ_LEN = 1_048_576
MAX_EVAL_SEQUENCES = 100_000
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class BigramJobConfig:
    """One bigram-mask training run (and the corpus the page analyses a mask on)."""

    model: str
    corpus: str = "zoo"
    target: str = "bigram"
    lam: float = 10.0
    preset: str = "fast"
    steps: int | None = None
    seed: int = 0
    device: str = "auto"
    seq_len: int | None = None
    bigram: str | None = None
    eval_sequences: int = 200
    name: str | None = None

    def __post_init__(self) -> None:
        from subnetviz.bigram.train import PRESETS, TARGETS

        if self.eval_sequences is None:  # written as null: the default
            object.__setattr__(self, "eval_sequences", 200)

        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("bigram_mask config: 'model' (a local model folder) is required.")
        if not isinstance(self.corpus, str) or not self.corpus:
            raise ConfigError(f"corpus {self.corpus!r}: give 'zoo', a text file, a saved dataset folder or hf:<name>.")
        if self.corpus.startswith("hf:"):
            from subnetviz.bigram.stats import hub_dataset

            hub_dataset(self.corpus)  # a hub id, never a path (load_dataset reads any folder it is given)
        if self.target not in TARGETS:
            raise ConfigError(f"target {self.target!r}; choose one of {TARGETS}.")
        lam = self.lam
        if not isinstance(lam, int | float) or isinstance(lam, bool) or not math.isfinite(lam) or lam < 0:
            raise ConfigError(f"lambda = {lam!r}; the sparsity weight must be a finite number >= 0.")
        if self.preset not in PRESETS:
            raise ConfigError(
                f"preset {self.preset!r}; choose one of {sorted(PRESETS)}.{suggest(str(self.preset), PRESETS)}"
            )
        from subnetviz.training.config import shown

        for key, hi in (("steps", MAX_STEPS), ("seq_len", MAX_SEQ_LEN), ("eval_sequences", MAX_EVAL_SEQUENCES)):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(f"{key} = {shown(v)}; must be a positive integer.")
            if v is not None and v > hi:
                raise ConfigError(f"{key} = {shown(v)}; must be at most {hi}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed = {shown(self.seed)}; must be an integer in 0 .. 2^32 - 1 (NumPy's range).")
        if not isinstance(self.device, str):
            raise ConfigError(f"device = {self.device!r}; use 'auto', 'cpu' or 'cuda[:i]'.")

    @property
    def table_path(self) -> Path | None:
        """The bigram table file: ``bigram``, else the zoo's for the zoo corpus, else None (counted)."""
        if self.bigram:
            return Path(self.bigram)
        return zoo_bigram_path() if self.corpus == "zoo" else None

    def validate(self) -> None:
        """ConfigError for a model folder without config.json, an architecture without a maskable-weight
        table, a corpus or table that does not exist (an ``hf:`` data set or split the local datasets cache lacks:
        :func:`~subnetviz.bigram.stats.check_cached_hub_dataset`), the zoo corpus for a model whose tokenizer does not
        read the zoo's ids (:func:`check_zoo_tokenizer`), a text or dataset corpus for a model folder without a
        tokenizer file, or a device torch does not see. Reads the model's ``config.json`` (and, for the zoo corpus,
        its tokenizer), never its weights."""
        from subnetviz.config import resolve_device

        model_family(self.model)
        if self.corpus == "zoo":
            if not self.table_path.is_file():
                raise ConfigError(f"{self.table_path}: the zoo's bigram table is missing; build the demo zoo first.")
            check_zoo_tokenizer(self.model, self.table_path)
        elif self.corpus.startswith("hf:"):  # in the local datasets cache, as the run will load it (a lookup)
            from subnetviz.bigram.stats import check_cached_hub_dataset

            check_cached_hub_dataset(self.corpus)
        elif not Path(self.corpus).expanduser().exists():
            raise ConfigError(
                f"corpus {self.corpus!r}: not 'zoo', an existing text file, a saved dataset folder or hf:<name>."
            )
        if self.corpus != "zoo" and self.bigram and not Path(self.bigram).is_file():  # (hf: corpora too)
            raise ConfigError(f"bigram table {self.bigram!r} does not exist.")
        if self.corpus != "zoo":  # (the zoo corpus' own check says it): the model's tokenizer cuts the corpus
            _check_has_tokenizer(self.model, self.corpus)
        resolve_device(self.device)

    # --- JSON ------------------------------------------------------------------------------------
    def to_dict(self, *, kind: bool = True) -> dict:
        """The JSON form (``lambda``, not ``lam``); with ``"kind": "bigram_mask"`` unless ``kind=False``."""
        d = {_JSON_NAMES.get(k, k): v for k, v in asdict(self).items()}
        return {"kind": KIND, **d} if kind else d

    @classmethod
    def from_dict(cls, d: dict) -> BigramJobConfig:
        """Build from a JSON object; an unknown key is refused by name (``kind`` is allowed and ignored)."""
        if not isinstance(d, dict):
            raise ConfigError(f"bigram_mask config must be a dict, got {type(d).__name__}.")
        known = [_JSON_NAMES.get(f.name, f.name) for f in fields(cls)]
        unknown = sorted(k for k in d if k not in known and k != "kind")
        if unknown:
            raise ConfigError(f"bigram_mask config: unknown field {unknown[0]!r}.{suggest(unknown[0], known)}")
        if "model" not in d:
            raise ConfigError("bigram_mask config: 'model' (a local model folder) is required.")
        kwargs = {_FIELD_NAMES.get(k, k): v for k, v in d.items() if k != "kind"}
        if kwargs.get("model") is not None:
            kwargs["model"] = str(kwargs["model"])
        return cls(**kwargs)
