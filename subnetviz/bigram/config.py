"""The ``bigram_mask`` job's configuration: :class:`BigramJobConfig`, validated in one place.

It is what the Bigram page's training form builds, what a job's ``config.json`` holds and what
:mod:`subnetviz.bigram.job` runs and analyses with. JSON form (``lambda`` is ``lam`` in Python)::

    model     local HF model folder, or a hub id already in the local HF cache (required)
    corpus    "zoo" (sequences sampled from the demo zoo's exact chain, zoo_dir()/bigram.npz,
              which is also the bigram table), a text file, a saved dataset folder
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
        table, a corpus or table that does not exist, or a device torch does not see. Reads only
        ``config.json`` of the model, never its weights."""
        from subnetviz.bigram.maskable import MODEL_TYPES, model_folder
        from subnetviz.config import resolve_device

        model = model_folder(self.model)
        model_type = read_json(model / "config.json", ConfigError).get("model_type")
        if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
            raise ConfigError(
                f"{model}: model_type {model_type!r} has no maskable-weight table; supported: {sorted(MODEL_TYPES)}."
            )
        if self.corpus == "zoo":
            if not self.table_path.is_file():
                raise ConfigError(f"{self.table_path}: the zoo's bigram table is missing; build the demo zoo first.")
        elif self.corpus.startswith("hf:"):
            pass  # a hub id (checked with the config's shape), read from the local datasets cache
        elif not Path(self.corpus).expanduser().exists():
            raise ConfigError(
                f"corpus {self.corpus!r}: not 'zoo', an existing text file, a saved dataset folder or hf:<name>."
            )
        elif self.bigram and not Path(self.bigram).is_file():
            raise ConfigError(f"bigram table {self.bigram!r} does not exist.")
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
