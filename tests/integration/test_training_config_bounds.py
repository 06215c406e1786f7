"""A training run's base is bounded by its weights before the trainer builds what its config.json describes."""

import json
import shutil
import time

import pytest

from subnetviz.errors import CheckpointError
from subnetviz.training.run import train
from tests.integration.test_training_trust import _cfg, tiny  # noqa: F401


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ({"num_hidden_layers": 10**30}, "num_hidden_layers is 1e+30, but they hold 2 layers"),
        ({"num_key_value_heads": 10**9}, "num_key_value_heads × head_dim is 1,000,000,000 × 8 rows"),
    ],
)
def test_a_base_whose_config_describes_far_more_than_its_weights_is_refused_in_one_line(tiny, tmp_path, edit, said):  # noqa: F811
    """Before: the trainer's from_pretrained tried to allocate 512 GB for 10^9 key/value heads (torch's allocator
    error, then transformers' "look at the above report!"); now the run fails at once with the config bounds' line.
    (The layer count was already refused as the run's config was validated: kept here as the other key.)"""
    base = tmp_path / "base"
    shutil.copytree(tiny["base"], base)
    path = base / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as caught:
        train(_cfg(tiny, tmp_path, base=str(base)))
    assert time.perf_counter() - t0 < 30
    line = str(caught.value)
    assert "\n" not in line and line.startswith(f"{base}: config.json does not describe its weights: "), line
    assert said in line, line
    assert not (tmp_path / "out").exists()  # nothing written where the run would have saved
