"""The demo model zoo: what it holds (settings, presets, member recipes) and reading it back.

- this module: :class:`ZooSettings` and :data:`PRESETS` (what decides the zoo's contents),
  :data:`MEMBERS` (one :class:`MemberRecipe` per finetune), and the reading API re-exported
  from :mod:`~subnetviz.demo.zoo`: :func:`load_zoo`, :func:`zoo_is_built`, :class:`Zoo`,
  :class:`ZooManifest`, :class:`ZooMember` (``manifest.json`` as typed records);
- :mod:`~subnetviz.demo.build`: ``python -m subnetviz demo build`` (the build lock and the CLI);
  :mod:`~subnetviz.demo.stages`: the build's stages; :mod:`~subnetviz.demo.measure`: the
  manifest's figures, measured with :mod:`subnetviz.analysis`.

Importing this package does not import torch.

Member ids: ``base``, ``grpo-s0``, ``grpo-s1``, ``grpo-s2``, ``grpo-B``, ``dpo``, ``sft``,
``grpo-sub``; grpo-s0's checkpoint series as ``grpo-s0@<step>``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from subnetviz.demo.manifest import (
    MANIFEST,
    ZOO_FORMAT,
    BaseInfo,
    OverlapPair,
    SeriesPoint,
    ZooManifest,
    ZooMember,
)
from subnetviz.demo.pretrain import ModelShape
from subnetviz.demo.zoo import Zoo, load_zoo, zoo_is_built

__all__ = [
    "MANIFEST",
    "MASK_FILE",
    "MEMBERS",
    "MEMBER_IDS",
    "PRESETS",
    "ZOO_FORMAT",
    "BaseInfo",
    "MemberRecipe",
    "OverlapPair",
    "SeriesPoint",
    "Zoo",
    "ZooManifest",
    "ZooMember",
    "ZooSettings",
    "load_zoo",
    "zoo_is_built",
]


@dataclass(frozen=True)
class ZooSettings:
    """Everything that decides the zoo's contents; its hash keys the cache."""

    n_letters: int = 14
    concentration: float = 0.3
    # Second order: P[c | a, b] ∝ P1[b, c] · Q[a, b, c] (corpus.make_chain). For 14 letters, seed 0:
    # entropy rate 1.41 nats against 1.89 for the best bigram model (and 2.59 for letter frequencies).
    chain_order: int = 2
    concentration2: float = 0.5
    chain_len: int = 24
    chain_seed: int = 0
    pool: tuple[int, int] = (10, 99)
    range_a: tuple[int, int] = (10, 49)
    range_b: tuple[int, int] = (50, 99)
    n_eval: int = 200
    data_seed: int = 0
    shape: ModelShape = field(default_factory=ModelShape)
    pretrain_steps: int = 1500  # at most: it stops at pretrain_target
    batch_arith: int = 64
    batch_chain: int = 16
    pretrain_lr: float = 2e-3
    pretrain_seed: int = 0
    pretrain_target: float | None = 0.4  # stop at this held-out (dev) accuracy: RL needs room to learn
    pretrain_check_every: int = 25
    # Measured (bench_zoo): at 2e-6 x 100 steps GRPO leaves 66-68 % of weights bit-identical, its
    # seeds overlap at 2.4-2.5x chance, and SFT/DPO at the same lr and steps are denser (28 %/38 %).
    # The feasibility notes (another base) saw 1e-6: ~93 % sparse, accuracy unchanged; 1e-5: ~53 %
    # sparse, seed overlap only 1.45x chance.
    ft_steps: int = 100
    ft_lr: float = 2e-6
    batch_size: int = 32
    num_generations: int = 8
    max_completion_length: int = 4
    series_points: int = 8
    dpo_prompts: int = 256
    dpo_samples: int = 8

    def fingerprint(self) -> str:
        blob = json.dumps({"format": ZOO_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def series_steps(self) -> list[int]:
        """Evenly spaced intermediate checkpoints of grpo-s0 (the final model is the last point)."""
        k = self.series_points
        return sorted({max(1, round(self.ft_steps * i / k)) for i in range(1, k)} - {self.ft_steps})


PRESETS: dict[str, ZooSettings] = {
    "demo": ZooSettings(),
    # Same code, toy sizes: single-digit operands so a 2-layer model learns some of it in seconds.
    "micro": ZooSettings(
        n_letters=6,
        chain_len=12,
        pool=(0, 19),
        range_a=(0, 9),
        range_b=(10, 19),
        n_eval=20,
        shape=ModelShape(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        pretrain_steps=100,
        pretrain_target=None,
        batch_arith=32,
        batch_chain=8,
        pretrain_lr=1e-2,
        ft_steps=6,
        ft_lr=1e-4,
        batch_size=16,
        num_generations=4,
        series_points=6,
        dpo_prompts=48,
        dpo_samples=4,
    ),
}


@dataclass(frozen=True)
class MemberRecipe:
    """How one finetune of the base is made (its numbers are a :class:`ZooMember` of the manifest)."""

    id: str
    algorithm: str
    data: str  # "A" | "B"
    seed: int
    label: str
    series: bool = False
    masked: bool = False


MEMBERS: tuple[MemberRecipe, ...] = (
    MemberRecipe("grpo-s0", "grpo", "A", 0, "GRPO seed 0 on A (with checkpoint series)", series=True),
    MemberRecipe("grpo-s1", "grpo", "A", 1, "GRPO seed 1 on A"),
    MemberRecipe("grpo-s2", "grpo", "A", 2, "GRPO seed 2 on A"),
    MemberRecipe("grpo-B", "grpo", "B", 0, "GRPO seed 0 on B"),
    MemberRecipe("dpo", "dpo", "A", 0, "DPO on on-policy pairs from A"),
    MemberRecipe("sft", "sft", "A", 0, "SFT on gold answers the base gets wrong (A)"),
    MemberRecipe("grpo-sub", "grpo", "A", 0, "GRPO seed 0 on A inside grpo-s0's update mask", masked=True),
)
MEMBER_IDS = ("base", *(m.id for m in MEMBERS))
MASK_FILE = "masks/grpo-seed0.safetensors"
