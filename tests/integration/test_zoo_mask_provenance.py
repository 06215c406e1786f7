"""The demo zoo's own update mask records what `analyze`'s masks record (README): base_path, model_path, the code."""

import shutil

from subnetviz.masks import load_mask_set
from tests.zoo_fixtures import micro_zoo  # noqa: F401


def test_the_zoo_mask_records_where_its_pair_was_read_and_the_code_that_wrote_it(micro_zoo, tmp_path):  # noqa: F811
    """It recorded `finetuned_path` and no version or git revision, where the README (and `analyze`) say
    `base_path`, `model_path` and the code that wrote it."""
    from subnetviz.demo.stages import stage_mask
    from subnetviz.version import version_info

    for member in ("base", "grpo-s0"):
        shutil.copytree(micro_zoo.root / member, tmp_path / member)
    out = stage_mask(tmp_path)
    meta = load_mask_set(str(tmp_path / "masks" / "grpo-seed0.safetensors")).metadata
    assert meta["base_path"] == str(tmp_path / "base") and meta["model_path"] == str(tmp_path / "grpo-s0")
    assert meta["model"] == "grpo-s0" and meta["base"] == "base"
    assert {k: meta[k] for k in version_info()} == version_info()
    assert 0 < out["density"] < 1
