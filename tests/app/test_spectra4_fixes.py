"""AppTest, Spectra fourth review fixes.

1. A base matrix that is all zero (a LLaMA-Pro-style block-expanded base) has no top-K subspace: its angles and
   principal overlap are NaN. The Subspaces tab said "no changed entries in any matrix" on the principal-weight chart
   while the matrix had changed, drew six unchanged matrices at 0° as "the six most rotated", and left the heatmap
   cell blank without a word. Now each chart says which changed matrices it cannot draw and why, the most rotated are
   taken among changed matrices, and a note (on the page and in its export) names the all-zero matrices.
2. One finetune with an Inf weight blanked Spectra and Update sparsity for every model (one page-wide line). Now
   that finetune is left out with one line, once (remembered, as the analysis is), and the others are drawn; a
   non-finite base still stops the page with one line.
"""

from __future__ import annotations

import html
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.linalg import subspace_angles
from streamlit.testing.v1 import AppTest

from subnetviz import uilogic
from subnetviz.errors import NonFiniteError
from tests.app_fixtures import APP, decode, plotly_specs
from tests.ckpt_fixtures import read_state_dict, write_folder
from tests.models import INTER, save_model, tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("typed_options")]
TAB = "Subspaces of W_base vs W_ft"
Q = "model.layers.0.self_attn.q_proj.weight"  # all zero in the base (a zero-initialised expanded block)
K = "model.layers.0.self_attn.k_proj.weight"  # rotated by a rank-2 update
O1 = "model.layers.1.self_attn.o_proj.weight"  # set to zero by one finetune
V0 = "model.layers.0.self_attn.v_proj.weight"  # the clean finetune's update
V1 = "model.layers.1.self_attn.v_proj.weight"  # one +Inf in the non-finite finetune


def short(name: str) -> str:
    return name.removeprefix("model.")  # the page names matrices without the checkpoint's "model." prefix


def _low_rank(w: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return w + 0.05 * torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w.shape[1], generator=g)


@pytest.fixture(scope="module")
def zero_base(app_env):
    """A float32 Llama base whose q_proj of layer 0 is all zero; ``only_q`` changes that matrix alone, ``mixed`` also
    rotates k_proj (rank 2) and sets o_proj of layer 1 to zero. Returns (home, base state, mixed state)."""
    home = app_env / "spectra4-zero-base"
    src = save_model(tiny_model("llama", intermediate=INTER, kv_heads=2), home / "src", dtype=False)
    base = read_state_dict(src)
    base[Q] = torch.zeros_like(base[Q])
    g = torch.Generator().manual_seed(4)
    only_q = {**base, Q: _low_rank(base[Q], g)}
    mixed = {**only_q, K: _low_rank(base[K], g), O1: torch.zeros_like(base[O1])}
    for name, sd in (("base", base), ("only_q", only_q), ("mixed", mixed)):
        write_folder(home / name, sd, src)
    yield home, base, mixed
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def inf_home(app_env):
    """A float32 Llama base, a clean finetune ``ok`` (v_proj of layer 0 moved) and, each in a folder of its own (no
    test meets another's remembered outcome), finetunes holding one +Inf in v_proj of layer 1, and a base with one."""
    home = app_env / "spectra4-inf"
    src = save_model(tiny_model("llama", intermediate=INTER, kv_heads=2), home / "src", dtype=False)
    base = read_state_dict(src)
    g = torch.Generator().manual_seed(7)
    ok = {**base, V0: _low_rank(base[V0], g)}
    bad = {**ok, V1: base[V1].clone()}
    bad[V1][3, 5] = float("inf")
    write_folder(home / "base", base, src)
    for name in ("ok", "ok_asked", "ok_asked_sub"):
        write_folder(home / name, ok, src)
    for name in ("bad", "bad_sub", "bad_asked", "bad_asked_sub", "bad_base"):
        write_folder(home / name, bad, src)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def _open(home, fts, page: str = "spectra", base: str = "base", ok: bool = True, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["base"] = str(home / base)
    at.query_params["ft"] = [str(home / f) for f in fts]
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.message for e in at.exception]
    if ok:
        assert not at.error, [e.value for e in at.error]
    return at


def _plain(text: str) -> str:
    """Text as the page shows it (plain() breaks links with zero-width spaces and escapes Markdown)."""
    return text.replace("\u200b", "").replace("\\", "")


def _captions(at) -> str:
    return " ".join(_plain(c.value) for c in at.caption)


def _errors(at) -> list[str]:
    return [_plain(e.value) for e in at.error]


def _spec(at, title: str) -> dict:
    (spec,) = [s for s in plotly_specs(at) if title in str(s["layout"].get("title", {}).get("text", ""))]
    return spec


def _annotations(spec) -> str:
    return " ".join(_plain(a.get("text", "").replace("<br>", " ")) for a in spec["layout"].get("annotations", []))


def _export_notes(page: str) -> str:
    m = re.search(r'<p class="notes">(.*?)</p>', page, re.S)
    return _plain(html.unescape(m.group(1))) if m else ""


ZERO_NOTE = f"The base matrix is all zero in 1 matrix ({short(Q)}; changed by a finetune)"


# ---------------------------------------------------------------- 1. a zero base matrix
def test_a_changed_zero_base_matrix_is_said_not_read_as_unchanged_or_unrotated(zero_base):
    home, _, _ = zero_base
    at = _open(home, ["only_q", "mixed"], spec_tab=TAB, sub_k="4", sub_model="only_q")
    shown = _captions(at)
    # the tab's note names it and says why its cell is blank: no word of it before
    assert ZERO_NOTE in shown and "undefined (blank on the heatmap" in shown
    # the principal-weight chart: the one matrix changed (256 entries) has no principal weights, said as such
    principal = _annotations(_spec(at, "principal weights vs chance"))
    assert "no changed entries" not in principal
    assert f"1 changed matrix whose base matrix is all zero ({short(Q)})" in principal
    # the most rotated: changed matrices only (six unchanged ones were drawn at 0°), the zero-base one said
    curves = _spec(at, "most rotated changed matrices")
    assert curves["data"] == []
    assert f"1 changed matrix whose base matrix is all zero ({short(Q)})" in _annotations(curves)
    # its heatmap cell is the blank the note speaks of
    heat = _spec(at, "Largest principal angle")["data"][0]
    z = decode(heat["z"]).astype(float)
    assert np.isnan(z[list(heat["y"]).index("0"), list(heat["x"]).index("q")])


def test_the_most_rotated_are_changed_matrices_and_their_angles_are_numpys(zero_base):
    home, base, mixed = zero_base
    at = _open(home, ["only_q", "mixed"], spec_tab=TAB, sub_k="4", sub_model="mixed")
    curves = _spec(at, "most rotated changed matrices")
    # k_proj alone has angles: q_proj's base and o_proj's finetune are all zero, each said with why
    assert [t["name"] for t in curves["data"]] == [short(K)]
    said = _annotations(curves)
    assert f"whose base matrix is all zero ({short(Q)})" in said
    assert f"whose finetuned matrix is all zero ({short(O1)})" in said
    # the drawn angles: float64 NumPy/SciPy principal angles between the top-4 left singular subspaces
    a, b = (np.asarray(sd[K], dtype=np.float64) for sd in (base, mixed))
    ua, ub = (np.linalg.svd(w)[0][:, :4] for w in (a, b))
    expected = np.sort(np.degrees(subspace_angles(ua, ub)))
    np.testing.assert_allclose(decode(curves["data"][0]["y"]).astype(float), expected, rtol=1e-7, atol=1e-7)
    # the principal-weight chart draws the two matrices that have principal weights, and says which it cannot
    principal = _spec(at, "principal weights vs chance")
    drawn = {str(n) for t in principal["data"] if t["name"] != "chance" for n in t["text"]}
    assert drawn == {short(K), short(O1)}
    assert f"1 changed matrix whose base matrix is all zero ({short(Q)})" in _annotations(principal)
    assert f"The finetuned matrix is all zero in 1 matrix (mixed · {short(O1)})" in _captions(at)


def test_the_export_says_it_too_from_either_tab(zero_base, exports):
    home, _, _ = zero_base
    for tab in (TAB, "Spectra of Δ"):  # (the open tab's notes, and the closed Subspaces tab built at export)
        _open(home, ["only_q", "mixed"], spec_tab=tab, sub_k="4", sub_model="only_q")
        page = exports["Spectra"]()
        assert ZERO_NOTE in _export_notes(page), tab
        assert "no changed entries in any matrix" not in page and "whose base matrix is all zero" in page, tab


def test_the_principal_weight_chart_still_says_no_change_where_nothing_changed():
    from subnetviz.figures.subspaces import principal_overlap_scatter

    rows = pd.DataFrame(
        {"name": ["a", "b"], "principal_overlap": [np.nan, np.nan], "principal_overlap_chance": [0.0, 0.0]}
    )
    fig = principal_overlap_scatter(rows.assign(changed=[0, 0]))
    assert [a.text for a in fig.layout.annotations] == ["no changed entries in any matrix"]
    fig = principal_overlap_scatter(rows.assign(changed=[0, 12]))  # b's base is all zero: no principal weights
    assert "1 changed matrix whose base matrix is all zero (b)" in fig.layout.annotations[0].text.replace("<br>", " ")


# ---------------------------------------------------------------- 2. a finetune holding Inf
def test_the_update_pass_names_the_finetune_that_holds_it(inf_home):
    from subnetviz.analysis.update_pass import analyze_updates

    with pytest.raises(NonFiniteError) as caught:
        analyze_updates(str(inf_home / "base"), [str(inf_home / "ok"), str(inf_home / "bad")], device="cpu")
    assert caught.value.checkpoint == str(inf_home / "bad")
    with pytest.raises(NonFiniteError) as caught:  # the base: named as the base
        analyze_updates(str(inf_home / "bad_base"), [str(inf_home / "ok")], device="cpu")
    assert caught.value.checkpoint == str(inf_home / "bad_base")


def test_the_subspaces_pass_names_the_finetune_that_holds_it(inf_home):
    """It named it only at the start of its message, which the page matched by prefix."""
    from subnetviz.analysis.subspaces import SubspaceOptions, analyze_subspaces

    with pytest.raises(NonFiniteError) as caught:
        analyze_subspaces(
            str(inf_home / "base"),
            [str(inf_home / "ok"), str(inf_home / "bad_sub")],
            options=SubspaceOptions(k=4),
            device="cpu",
        )
    assert caught.value.checkpoint == str(inf_home / "bad_sub")


def _left_out(at, label: str) -> None:
    """The page says, in one line and only there, that ``label`` is left out for its Inf."""
    (line,) = _errors(at)
    assert line.startswith(f"{label} is left out (its weights are not all finite)"), line
    assert f"{short(V1)}: 1 NaN/Inf value(s)" in line


def test_a_finetune_with_an_inf_is_left_out_once_and_the_others_drawn(inf_home, monkeypatch):
    seen: list[tuple] = []
    compute = uilogic.compute_updates
    monkeypatch.setattr(uilogic, "compute_updates", lambda ws, **kw: seen.append(tuple(ws.labels)) or compute(ws, **kw))
    at = _open(inf_home, ["ok", "bad"], ok=False)
    _left_out(at, "bad")
    assert at.multiselect(key="spec_models").options == ["ok"]  # the others drawn: the clean finetune's spectra
    spectra = _spec(at, "Singular values of updates")
    assert any(short(V0) in str(t.get("name", "")) for t in spectra["data"])
    for _ in range(2):  # Update sparsity, then Spectra again: the outcome remembered, no analysis of "bad" again
        at = _open(inf_home, ["ok", "bad"], page="sparsity", ok=False)
        _left_out(at, "bad")
        (bars,) = [s["data"][0] for s in plotly_specs(at) if s["data"][0]["type"] == "bar"]
        assert [str(x) for x in bars["x"]] == ["ok"]
    _left_out(_open(inf_home, ["ok", "bad"], ok=False), "bad")
    assert sum("bad" in labels for labels in seen) == 1, seen


def test_the_subspaces_tab_leaves_it_out_too(inf_home):
    at = _open(inf_home, ["ok", "bad_sub"], spec_tab=TAB, sub_k="4", ok=False)
    _left_out(at, "bad_sub")
    (table,) = [d.value for d in at.dataframe if "principal_overlap_chance" in d.value.columns]
    assert set(getattr(table, "data", table)["model"]) == {"ok"}


@pytest.mark.parametrize("tab", ["Spectra of Δ", TAB])
def test_the_compute_asked_for_holds_for_the_others(inf_home, monkeypatch, tab):
    """Above the confirmation limit the visitor asked for the work with the Inf finetune in it; the others are then
    computed without asking again."""
    monkeypatch.setenv("SUBNETVIZ_CONFIRM_ABOVE_S", "0")
    ok, bad = ("ok_asked", "bad_asked") if tab != TAB else ("ok_asked_sub", "bad_asked_sub")
    at = _open(inf_home, [ok, bad], spec_tab=tab, sub_k="4")
    (go,) = [b for b in at.button if b.label.startswith("Compute (about")]
    go.click().run()
    assert not at.exception, [e.message for e in at.exception]
    _left_out(at, bad)
    assert not [b for b in at.button if b.label.startswith("Compute (about")] and at.get("plotly_chart")


def test_a_base_with_an_inf_stays_one_line_for_the_page(inf_home):
    at = _open(inf_home, ["ok"], base="bad_base", ok=False)
    (line,) = _errors(at)
    assert "bad_base" in line and f"{short(V1)}: 1 NaN/Inf value(s)" in line and "left out" not in line
    assert not at.get("plotly_chart")
