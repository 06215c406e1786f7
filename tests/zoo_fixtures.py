"""Session fixture: the demo zoo's "micro" preset, built once per test session into a temp folder.

Other test files use it with ``from tests.zoo_fixtures import micro_zoo  # noqa: F401``. The
micro preset runs the same build code as the real demo zoo (pretraining, TRL finetunes, mask,
manifest) at toy sizes, in well under a minute.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def micro_zoo(tmp_path_factory):
    """A built micro zoo (:class:`subnetviz.demo.Zoo`); treat it as read-only."""
    from subnetviz.demo.build import build_zoo

    return build_zoo(tmp_path_factory.mktemp("micro-zoo"), preset="micro")


def copy_model_job(config: dict, ctx) -> None:
    """Test job (kind ``python``): a finished run whose model is a copy of ``config["source"]``."""
    import shutil

    shutil.copytree(config["source"], ctx.out_dir / "model")


def read_bits(folder: Path) -> dict[str, np.ndarray]:
    """name -> uint16 bit patterns of every bf16 tensor, parsed from the raw safetensors bytes."""
    raw = (Path(folder) / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "BF16", (name, info["dtype"])
        lo, hi = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + lo : 8 + n + hi], dtype="<u2").reshape(info["shape"])
    return out
