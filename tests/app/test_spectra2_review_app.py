"""AppTest, Spectra & Subspaces second review: with the sidebar's comparison precision at bf16 the Subspaces tab
compares each pair at bf16, as the update mask and the Δ do, and says so; σ ratios read with their digits."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.app_fixtures import APP
from tests.ckpt_fixtures import read_state_dict, write_folder
from tests.models import INTER, save_model, tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("typed_options")]
Q = "model.layers.0.self_attn.q_proj.weight"
TAB = "Subspaces of W_base vs W_ft"


@pytest.fixture(scope="module")
def pair(app_env):
    """An fp32 Llama pair inside the app's roots: q_proj moves by 1e-4 relative (below half a bf16 step) and one
    entry by +0.5; returns (home, entries that differ once both sides are rounded to bf16)."""
    home = app_env / "spectra2-review"
    src = save_model(tiny_model("llama", intermediate=INTER, kv_heads=2), home / "src", dtype=False)
    sd = read_state_dict(src)
    ft = {k: v.clone() for k, v in sd.items()}
    ft[Q] = sd[Q] * (1 + 1e-4)
    ft[Q][3, 5] = sd[Q][3, 5] + 0.5
    write_folder(home / "base", sd, src)
    write_folder(home / "ft", ft, src)
    # bf16 by hand: round-to-nearest-even on the float32 bits
    bits = [x.numpy().view(np.uint32).astype(np.uint64) for x in (sd[Q], ft[Q])]
    a, b = (((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000) for u in bits)
    yield home, int((a != b).sum())
    shutil.rmtree(home, ignore_errors=True)


def _open(home, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["base"] = str(home / "base")
    at.query_params["ft"] = [str(home / "ft")]
    at.query_params["spec_tab"] = TAB
    at.query_params["sub_k"] = "4"
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    at.switch_page("views/spectra.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _q_row(at):
    (frame,) = [d.value for d in at.dataframe if "principal_overlap_chance" in d.value.columns]
    frame = getattr(frame, "data", frame)  # (a Styler where a column's text is written cell by cell)
    return frame[frame["name"] == Q.removeprefix("model.")].iloc[0]


def test_the_subspaces_tab_compares_at_the_sidebars_precision_and_says_so(pair):
    home, changed = pair
    assert 1 < changed < 64  # (at fp32 each of the 256 entries differs)
    at = _open(home, precision="bf16")
    said = " ".join(c.value for c in at.caption)
    assert "Compared at bf16 (sidebar › Compute)" in said  # the Δ tab said it, the Subspaces tab did not
    row = _q_row(at)
    assert int(row["changed"]) == changed  # it read 256 (the stored fp32) while the bf16 update mask held `changed`
    assert float(row["principal_overlap_chance"]) == pytest.approx(100 * changed / 256)  # shown in %
    # the stored dtypes: another cache entry, every entry changed, nothing said of a precision
    at = _open(home)
    assert int(_q_row(at)["changed"]) == 256
    assert not any("Compared at" in c.value for c in at.caption)


def test_sigma_ratios_are_no_ratios_against_chance_on_the_page(pair):
    home, _ = pair
    at = _open(home, precision="bf16")
    (table,) = [d for d in at.dataframe if "sv_ratio_mean" in d.value.columns]
    formats = {c: v.get("type_config", {}).get("format") for c, v in json.loads(table.proto.columns).items()}
    # "%.2f×" for both: every row read 1.00× and 0.00×, and a deviation read as a multiple of chance
    fmt = formats["sv_ratio_mean"]
    assert fmt and "×" not in fmt
    for v in table.value["sv_ratio_mean"].dropna():  # the σ ratio as the browser writes it, its distance from 1 kept
        assert fmt % v != fmt % 1.0 or v == pytest.approx(1.0, abs=1e-12)
    assert "×" not in str(formats.get("sv_ratio_maxdev"))
