"""Workspace / uploads review (wsexp9), findings 1-3, on the pages (the micro zoo); finding 4 is in
tests/unit/test_wsexp9_fixes.py.

1. The Series export never named the base: its parameters said "series=workspace: base → finetuned in sidebar order,
   finetunes=dpo, grpo-s0", every number of its tables "vs base", and a reader took the zoo's base for one the sidebar
   had set to sft. The caption on the page and the export's parameters now name the base, for a sidebar's finetunes
   and for one run's checkpoints.
2. Update sparsity's "Every norm, embedding and head tensor" table (and its chart) counted bitwise whatever the
   criterion, under an export whose parameters said criterion=1e-05 (grpo-s0's embed_tokens 563 changed where
   |Δ| > 1e-05 gives 557, in the review's zoo). They are now counted under the page's criterion, which their caption
   and title name (in the micro zoo, 1e-05 changes none of these counts: 1e-04 and relative η = 0.1 are tested).
3. The Workspace page had no HTML export. It has one now: its checkpoints, sparsity summary, masks and zoo manifest
   tables, with the base, finetunes, masks and precision as parameters.
"""

from __future__ import annotations

import html
import re
import shutil

import numpy as np
import pytest

from subnetviz import config
from tests.app.test_exports6_fixes_app import _params
from tests.app_fixtures import decode, home_of_its_own, open_page, plotly_specs
from tests.zoo_fixtures import read_bits

pytestmark = pytest.mark.slow

RUN_SRC = "workspace: one training run, by step"
NOT_RUN_SRC = "workspace: base → finetuned in sidebar order"


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _said(at) -> str:
    return " ".join(c.value.replace("\\", "") for c in at.caption)


def _f64(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns -> float64, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _changed(a: dict, b: dict) -> tuple[int, int]:
    """(entries whose bits differ between two checkpoints' bf16 tensors, entries), over every tensor."""
    return sum(int((a[k] != b[k]).sum()) for k in a), sum(a[k].size for k in a)


def _exported_table(page: str, caption: str) -> list[dict[str, str]]:
    """The rows of the export's table under ``caption`` (column -> cell text)."""
    block = re.search(rf"<b>{re.escape(html.escape(caption))}</b>(.*?)</table>", page, re.S)
    assert block, f"no table {caption!r} in the export"
    heads = [html.unescape(h) for h in re.findall(r"<th class=[^>]*>(.*?)</th>", block.group(1))]
    rows = re.findall(r"<tr>(.*?)</tr>", block.group(1)[block.group(1).index("<tbody>") :])
    return [dict(zip(heads, map(html.unescape, re.findall(r"<td[^>]*>(.*?)</td>", r)), strict=True)) for r in rows]


# --- 1. the Series export names its base ----------------------------------------------------------------------------
def test_a_series_of_the_sidebars_finetunes_names_its_base(app_env, exports, micro_zoo):
    at = _ok(open_page("series", base="sft", ft=["dpo", "grpo-s0"], series_src=NOT_RUN_SRC))
    assert at.selectbox(key="series_src").value == NOT_RUN_SRC
    where = config.display_path(micro_zoo.member_path("sft"))
    assert not where.startswith("/") and where.endswith("sft")
    params = _params(exports["Series"]())
    assert params["base"] == f"sft ({where})", params
    assert params["finetunes"] == "dpo, grpo-s0"
    assert f"Base: sft ({where})." in _said(at)
    # the numbers are against that base, not the zoo's: sparsity vs base from the raw bits, by hand
    sft = read_bits(micro_zoo.member_path("sft"))
    zoo_base = read_bits(micro_zoo.member_path("base"))
    _, table = at.session_state["_tables"]["series-table"]
    for label in ("dpo", "grpo-s0"):
        changed, n = _changed(sft, read_bits(micro_zoo.member_path(label)))
        row = table.set_index("checkpoint").loc[label]
        assert row["sparsity_vs_base"] == pytest.approx(1 - changed / n, abs=1e-12), label
        assert changed != _changed(zoo_base, read_bits(micro_zoo.member_path(label)))[0]  # (another base: others)


@pytest.fixture(scope="module")
def one_run(micro_zoo, tmp_path_factory):
    """A copy of the zoo's GRPO seed-0 run in a home of its own: (the zoo's base, the run's checkpoints)."""
    import streamlit as st

    st.cache_resource.clear()
    with home_of_its_own(micro_zoo, tmp_path_factory, "wsexp9-run") as home:
        run = shutil.copytree(micro_zoo.member_path("grpo-s0"), home / "runs" / "r9")
        yield home / "zoo" / "base", sorted((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
    st.cache_resource.clear()


def test_a_runs_series_names_its_base(one_run, exports, typed_options, micro_zoo):
    base, checkpoints = one_run
    at = _ok(open_page("series", base=str(base), ft=[str(c) for c in checkpoints], series_src=RUN_SRC))
    assert at.selectbox(key="series_src").value == RUN_SRC
    where = config.display_path(base)
    assert not where.startswith("/") and where.endswith("/base")
    params = _params(exports["Series"]())
    assert params["base"] == f"base ({where})", params
    assert params["run"].endswith("runs/r9/checkpoints")
    assert f"Base: base ({where})." in _said(at)
    first = read_bits(base)
    _, table = at.session_state["_tables"]["series-table"]
    last = table.iloc[-1]
    changed, n = _changed(first, read_bits(checkpoints[-1]))
    assert last["sparsity_vs_base"] == pytest.approx(1 - changed / n, abs=1e-12)


# --- 2. norms, embeddings and head under the page's criterion ------------------------------------------------------
def _counts(model: str, zoo, crit: str, eta: float) -> dict[str, int]:
    """tensor name -> entries changed between the base and ``model`` under ``crit``, from the raw bits: bitwise,
    |Δ| > tol, or |Δ| > η·max(|w|, |w'|), in float64."""
    base, ft = read_bits(zoo.member_path("base")), read_bits(zoo.member_path(model))
    if crit == "exact":
        return {k: int((base[k] != ft[k]).sum()) for k in base}
    w, w2 = ({k: _f64(v[k]) for k in base} for v in (base, ft))
    if crit == "relative":
        return {k: int((np.abs(w2[k] - w[k]) > eta * np.maximum(np.abs(w[k]), np.abs(w2[k]))).sum()) for k in base}
    return {k: int((np.abs(w2[k] - w[k]) > float(crit)).sum()) for k in base}


def _name(key: str, names) -> str:
    (name,) = [n for n in names if n == key or n.endswith("." + key)]  # (the table's key drops "model.")
    return name


@pytest.mark.parametrize(
    ("crit", "eta", "named"),
    [("0.0001", None, "tol = 0.0001"), ("relative", "0.1", "relative η = 0.1"), ("exact", None, "exact")],
)
def test_norms_embeddings_and_head_are_counted_under_the_criterion(app_env, exports, micro_zoo, crit, eta, named):
    models = ["grpo-s0", "dpo"]
    query = {"sp_crit": crit, "sp_tab": "Norms, embeddings, head", **({"sp_eta": eta} if eta else {})}
    at = _ok(open_page("sparsity", ft=models, sp_models=models, **query))
    caption, table = at.session_state["_tables"]["special-table"]
    assert caption == f"Every norm, embedding and head tensor ({named})"
    want = {m: _counts(m, micro_zoo, crit, float(eta or 0)) for m in models}
    exact = {m: _counts(m, micro_zoo, "exact", 0) for m in models}
    assert len(table) and set(table["model"]) == set(models)
    for row in table.itertuples():
        name = _name(row.key, want[row.model])
        assert row.changed == want[row.model][name], (row.model, row.key)
        assert row.sparsity == pytest.approx(1 - want[row.model][name] / row.numel, abs=1e-12)
    if crit != "exact":  # (the test tells the criteria apart: some tensor counts fewer under this one)
        assert any(want[m][k] < exact[m][k] for m in models for k in (_name(r, want[m]) for r in table["key"]))
    # the chart beside it: per module kind, under the same criterion, as its title says
    (spec,) = [s for s in plotly_specs(at) if s["layout"]["title"]["text"].startswith("Norms, embeddings and head")]
    assert f"({named})" in spec["layout"]["title"]["text"]
    for trace in spec["data"]:
        rows = table[table["model"] == trace["name"]]
        for group, x in zip(trace["y"], decode(trace["x"]), strict=True):
            part = rows[rows["module"] == group]
            changed = sum(want[trace["name"]][_name(k, want[trace["name"]])] for k in part["key"])
            assert x == pytest.approx(100 * (1 - changed / part["numel"].sum()), abs=1e-9), (trace["name"], group)
    # the export: its caption names the criterion, its counts are the criterion's
    page = exports["Update sparsity"]()
    assert _params(page)["criterion"] == crit
    for cell in _exported_table(page, f"Every norm, embedding and head tensor ({named})"):
        assert cell["changed"] == f"{want[cell['model']][_name(cell['key'], want[cell['model']])]:,}", cell


# --- 3. the Workspace page's export ----------------------------------------------------------------------------------
def test_the_workspace_page_exports_its_tables(app_env, exports, micro_zoo):
    saved = "masks/grpo-seed0"
    _ok(open_page("workspace", ft=["grpo-s0", "dpo"], masks=[saved]))
    assert "Workspace" in exports, list(exports)
    page = exports["Workspace"]()
    params = _params(page)
    assert params["base"] == config.display_path(micro_zoo.member_path("base")) and not params["base"].startswith("/")
    assert params["finetunes"] == '["grpo-s0", "dpo"]' and params["masks"] == f'["{saved}"]'
    assert params["precision"] == "stored dtype"
    checkpoints = _exported_table(page, "Checkpoints in the workspace")
    assert [r["label"] for r in checkpoints] == ["base", "grpo-s0", "dpo"]
    summary = {r["model"]: r for r in _exported_table(page, "Exact (bitwise) update sparsity, parameter-weighted")}
    masks = {r["mask"]: r for r in _exported_table(page, "Mask sets")}
    base = read_bits(micro_zoo.member_path("base"))
    for m in ("grpo-s0", "dpo"):
        changed, n = _changed(base, read_bits(micro_zoo.member_path(m)))
        assert summary[m]["changed"] == f"{changed:,}" and summary[m]["numel"] == f"{n:,}", summary[m]
        assert masks[f"update mask of {m}"]["in mask"] == f"{changed:,}", masks[f"update mask of {m}"]
    assert saved in masks
    members = _exported_table(page, "Demo zoo members")
    assert {"base", "grpo-s0", "dpo", "sft"} <= {r["id"] for r in members}
    assert "/" + str(micro_zoo.root).strip("/") not in html.unescape(page)  # no server path
