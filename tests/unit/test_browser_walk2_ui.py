"""Browser walk 2, without a page: a finetune the base cannot be compared with is told from the headers (it blanked
every page of the workspace), and a table too large for a Styler writes its share column as a small one does (it
read "1.000e+2 %" beside "6.421e+1 %")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from subnetviz.selection import finetune_misfit
from tests.ckpt_fixtures import read_state_dict, write_folder
from tests.models import make_llama, save_model, tiny_model


# ---------------------------------------------------------------- a finetune of another architecture
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny Llama base (hidden 16, vocabulary 64) and checkpoints planted against it."""
    root = tmp_path_factory.mktemp("walk2-misfit")
    base = make_llama(root / "base")
    sd = read_state_dict(base)
    grown = {**sd, "model.layers.1.mlp.up_proj.weight": torch.zeros(48, 16, dtype=torch.bfloat16)}
    resized = {k: torch.zeros(72, 16, dtype=v.dtype) if v.shape == (64, 16) else v for k, v in sd.items()}
    return {
        "base": base,
        "finetune": make_llama(root / "finetune", seed=1),
        "grown": write_folder(root / "grown", grown, config_from=base),  # one tensor of another shape
        "resized": write_folder(root / "resized", resized, config_from=base, vocab_size=72),  # more tokens
        "gpt2": save_model(tiny_model("gpt2", hidden=24, bos_token_id=0, eos_token_id=0), root / "gpt2"),
    }


def test_a_finetune_that_fits_the_base_is_no_misfit(pair):
    """Same names and shapes, or a resized vocabulary (the update analysis compares the shared rows): None."""
    assert finetune_misfit(str(pair["base"]), str(pair["finetune"])) is None
    assert finetune_misfit(str(pair["base"]), str(pair["resized"])) is None


def test_a_tensor_of_another_shape_or_another_architecture_is_a_misfit_named_from_the_headers(pair):
    """The one planted tensor is named with both shapes; a GPT-2 24 wide beside the Llama 16 wide is refused."""
    why = finetune_misfit(str(pair["base"]), str(pair["grown"]))
    assert "'model.layers.1.mlp.up_proj.weight'" in why and "(32, 16)" in why and "(48, 16)" in why
    assert "same architecture" in why and "\n" not in why
    gpt2 = finetune_misfit(str(pair["base"]), str(pair["gpt2"]))
    assert gpt2 is not None and "models of different architectures" in gpt2 and "(gpt2)" in gpt2


def test_a_misfit_is_told_without_reading_any_weight(pair, monkeypatch):
    """Headers only: no tensor of either checkpoint is read (the page asks this of every finetune it shows)."""
    from subnetviz.checkpoints.sources import Checkpoint

    def no_read(self, *args, **kwargs):
        raise AssertionError("a weight was read")

    monkeypatch.setattr(Checkpoint, "get", no_read)
    assert finetune_misfit(str(pair["base"]), str(pair["grown"])) is not None
    assert finetune_misfit(str(pair["base"]), str(pair["finetune"])) is None


# ---------------------------------------------------------------- a large table's share column
@pytest.mark.parametrize(
    ("shares", "fmt"),
    [
        ([0.6421, 0.5, 1.0, 0.0, np.nan, -0.004], "%.2f %%"),  # ordinary shares: as a small table writes them
        ([0.6421, 0.99996], "%.3f %%"),  # 99.996 % reads 100.00 at two decimals, 99.996 at three
        ([0.6421, 1 - 1e-6, 2.453e-5], "%.4f %%"),  # 99.9999 %, and 0.0025 % (not 0.0000)
        ([0.6421, 2.4e-8], "%.6f %%"),  # 0.0000024 %: 6 decimals (0.000002)
        ([0.6421, 1e-12], "%.3e %%"),  # beyond 8 decimals: e-notation
        ([-(1 - 1e-5), 0.1], "%.3f %%"),  # (a negative share near -100 % alike)
    ],
)
def test_a_large_tables_share_column_gets_the_decimals_that_tell_it_from_0_and_100(shares, fmt):
    """Above STYLED_CELLS a share column went with printf's '%.3e %%': 99.9999 % read '1.000e+2 %' and 64.21 %
    read '6.421e+1 %'. One fixed-decimal format per column, as few decimals as tell every value from 0 % and
    100 % (worked out by hand above), keeps the column numbers that sort."""
    from subnetviz.report.formats import share_format

    assert share_format(100 * np.array(shares)) == fmt
    # the chosen decimals never print a value short of 100 % as 100, nor a non-zero one as 0
    decimals = int(fmt[2]) if fmt.endswith("f %%") else None
    for x in 100 * np.array(shares):
        if decimals is not None and np.isfinite(x) and x not in (0.0, 100.0):
            assert float(f"{abs(x):.{decimals}f}") not in (0.0, 100.0), (x, fmt)


def test_a_table_too_large_for_a_styler_keeps_numbers_and_formats_its_shares(monkeypatch):
    from subnetviz import ui
    from subnetviz.report.formats import COUNT, display_frame

    monkeypatch.setattr(ui, "shared", lambda fn, *a, **k: fn(*a, **k))  # (no server: no memo)
    rows = ui.STYLED_CELLS // 3 + 10
    df = pd.DataFrame(
        {
            "name": [f"layers.{i}.mlp.up_proj.weight" for i in range(rows)],
            "sparsity": np.r_[[1 - 1e-6, 0.6421], np.full(rows - 2, 0.5)],
            "numel": np.arange(rows, dtype=np.int64) * 1000,
        }
    )
    shown, fmts = display_frame(df)
    fmts = ui.large_share_formats(shown, fmts)
    data, texts = ui.styled(shown, fmts)
    assert texts == set() and isinstance(data, pd.DataFrame) and data.equals(shown)
    assert fmts["sparsity"] == "%.4f %%" and fmts["numel"] == COUNT
