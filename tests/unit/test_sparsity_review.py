"""Review fixes of the update-sparsity numbers: One matrix counts as the analysis does (the chosen comparison
precision, float64 for 32-bit weights), its axes follow the weight's orientation and a 0-row matrix draws "no
data"; the per-tensor-mean heatmap's hover shows the cell's own value; the ULP axis names the compared dtype; a
share just short of 100 % never reads "100.00 %" (tables, hovers, the CLI). Every count is checked against an
independent float64 NumPy recount of planted pairs (bf16 rounding done by hand on the bits)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from subnetviz import figures as F
from subnetviz.analysis.drill import matrix_update
from subnetviz.figures.matrix import MatrixBlocks

TOLS = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4)


def _bf16(x32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 values rounded to bfloat16 (round to nearest, ties to even) by hand on their bits: (the bf16 bit
    patterns, the values in float64). Finite inputs that stay finite only."""
    b = x32.view(np.uint32).astype(np.uint64)
    top = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return top.astype(np.uint16), (top << 16).astype(np.uint32).view(np.float32).astype(np.float64)


def _reference(x32: np.ndarray, y32: np.ndarray, precision: str | None) -> dict[str, np.ndarray]:
    """The changed mask of each criterion, from the definitions, in float64 (exact: bit patterns differ)."""
    if precision == "bf16":
        (bx, x), (by, y) = _bf16(x32), _bf16(y32)
    else:
        bx, by, x, y = x32.view(np.uint32), y32.view(np.uint32), x32.astype(np.float64), y32.astype(np.float64)
    d = np.abs(y - x)
    out = {"exact": bx != by, **{f"{t:g}": d > t for t in TOLS}}
    for eta in (1e-3, 4e-3):
        out[f"relative@{eta:g}"] = d > eta * np.maximum(np.abs(x), np.abs(y))
    return out


@pytest.fixture(scope="module")
def planted_fp32(tmp_path_factory):
    """A 400 × 500 fp32 pair: rows 0–99 moved to the η boundary (η = 0.001, then 0.004: x / (1 − η), half of
    them one step back toward 0), rows 100–149 by one fp32 step (below bf16's resolution), rows 150–199 by ~1 %,
    row 200: 0 → float32(1e-7) (|Δ| = 1.0000000117e-07 > 1e-7, which float32 rounds the tolerance up to), row
    201: +0 → −0 (bits differ, Δ = 0)."""
    g = np.random.default_rng(0)
    x = g.standard_normal((400, 500)).astype(np.float32)
    y = x.copy()
    for rows, eta in ((slice(0, 50), 1e-3), (slice(50, 100), 4e-3)):
        edge = (x[rows].astype(np.float64) / (1 - eta)).astype(np.float32)
        back = g.random(edge.shape) < 0.5
        y[rows] = np.where(back, np.nextafter(edge, np.float32(0)), edge)
    y[100:150] = np.nextafter(x[100:150], np.float32(np.inf))
    y[150:200] = (x[150:200] * (1 + 0.01 * g.standard_normal((50, 500)))).astype(np.float32)
    x[200, :7], y[200, :7] = 0.0, np.float32(1e-7)
    x[201, :5], y[201, :5] = 0.0, -0.0
    root = tmp_path_factory.mktemp("planted-fp32")
    for name, a in (("base", x), ("ft", y)):
        (root / name).mkdir()
        save_file({"w": torch.from_numpy(a.copy())}, str(root / name / "model.safetensors"))
    return root, x, y


@pytest.mark.parametrize("precision", [None, "bf16"])
def test_one_matrix_counts_as_the_float64_definition_at_the_chosen_precision(planted_fp32, precision):
    """One matrix took no precision (an fp32 pair compared at bf16 read 100 of 128 changed where the analysis
    said 1) and compared fp32 weights in float32 (0 → float32(1e-7) read unchanged at 1e-7; 50,007 where the η
    boundary holds 50,064). Its total, row and column counts now equal the float64 recount for every criterion,
    at the stored precision and at bf16, and so equal the analysis' own count of the same pair."""
    from subnetviz.analysis.sparsity import SparsityOptions, compare_pair

    root, x, y = planted_fp32
    want = _reference(x, y, precision)
    assert want["exact"].sum() != _reference(x, y, None if precision else "bf16")["exact"].sum()  # it matters
    assert want["1e-07"][200, :7].all()  # the planted 1e-7 edge: changed by the definition
    stats = compare_pair(torch.from_numpy(x), torch.from_numpy(y), SparsityOptions(precision=precision))
    for crit, mask in want.items():
        criterion, eta = (crit.split("@")[0], float(crit.split("@")[1])) if "@" in crit else (crit, 1e-3)
        upd = matrix_update(
            str(root / "base"), str(root / "ft"), "w", criterion, eta=eta, precision=precision, band_entries=500 * 37
        )
        assert upd.n_changed == int(mask.sum()), (crit, precision)
        np.testing.assert_array_equal(upd.rows_changed, mask.sum(axis=1))
        np.testing.assert_array_equal(upd.cols_changed, mask.sum(axis=0))
        assert int(upd.changed.sums.sum()) == int(mask.sum())
        if crit == "exact":
            assert upd.n_changed == stats.changed
        elif crit.startswith("relative@0.001"):
            assert upd.n_changed == stats.changed_rel
        elif not crit.startswith("relative"):
            assert upd.n_changed == stats.changed_tol[TOLS.index(float(crit))]


def test_one_matrix_delta_is_the_compared_values_difference(planted_fp32):
    """The Δ image sums the Δ of the values compared: at bf16, the difference of the bf16-rounded values (the
    one fp32 step of rows 100–149 mostly vanishes), in float64 at fp32."""
    root, x, y = planted_fp32
    for precision in (None, "bf16"):
        upd = matrix_update(str(root / "base"), str(root / "ft"), "w", precision=precision)
        if precision:
            d = _bf16(y)[1] - _bf16(x)[1]
        else:
            d = y.astype(np.float64) - x.astype(np.float64)
        f = upd.delta.f
        for i in range(0, 400, f):
            assert upd.delta.sums[i // f, 0] == pytest.approx(d[i : i + f, :f].sum(), rel=1e-9, abs=1e-15)


def test_one_matrix_axes_follow_a_conv1d_weight(tmp_path):
    """GPT-2's Conv1D stores its weights [in, out] (mlp.c_fc: n_embd rows, 4·n_embd columns): its rows are input
    dims, and One matrix said "row (output dim)". An nn.Linear (Llama's q_proj, [out, in]) keeps those names."""
    import json

    from tests.models import make_gpt2, make_llama

    gpt2, llama = make_gpt2(tmp_path / "gpt2"), make_llama(tmp_path / "llama")
    n_embd = json.loads((gpt2 / "config.json").read_text())["n_embd"]
    conv = matrix_update(str(gpt2), str(gpt2), "transformer.h.0.mlp.c_fc.weight")
    assert conv.shape == (n_embd, 4 * n_embd) and conv.orientation == "in_out"
    linear = matrix_update(str(llama), str(llama), "model.layers.0.self_attn.q_proj.weight")
    assert linear.orientation == "out_in"
    for upd, rows, cols in ((conv, "input", "output"), (linear, "output", "input")):
        for fig in (
            F.matrix_image(upd.changed, orientation=upd.orientation),
            F.delta_image(upd.delta, orientation=upd.orientation),
        ):
            assert fig.layout.yaxis.title.text == f"row ({rows} dim)"
            assert fig.layout.xaxis.title.text == f"column ({cols} dim)"
        ratios = F.row_col_ratios(upd.row_share, upd.col_share, orientation=upd.orientation).layout
        assert ratios.xaxis.title.text.startswith(f"row index ({rows} dim")
        assert ratios.xaxis2.title.text.startswith(f"column index ({cols} dim")


def test_one_matrix_of_a_zero_row_matrix_draws_no_data(tmp_path):
    """A [0, 4] weight: the page's images (from MatrixBlocks) raised ValueError in np.nanmax of no blocks."""
    for name in ("a", "b"):
        save_file({"empty": torch.zeros(0, 4, dtype=torch.bfloat16)}, str(tmp_path / f"{name}.safetensors"))
    upd = matrix_update(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "empty")
    assert upd.n_changed == 0 and upd.shape == (0, 4)
    for fig in (F.matrix_image(upd.changed), F.delta_image(upd.delta), F.delta_image(MatrixBlocks.empty((0, 4), 8))):
        assert fig.layout.annotations[0].text == "no data" and not fig.data


def test_matrix_subtitle_names_the_real_block_and_both_images_centre_it():
    """A 512 × 3 matrix in 4-row blocks: each block is 4×3 (the subtitle said 4×4), and the Δ image put its one
    column of blocks at x = 1.5 where the changed image put it at 1 (the centre of columns 0–2)."""
    a = np.zeros((512, 3), np.float32)
    a[::7, 1] = 1.0
    image, delta = F.matrix_image(a > 0, max_side=128), F.delta_image(a, max_side=128)
    for fig in (image, delta):
        assert "each cell the mean of a 4×3 block" in fig.layout.title.text
        np.testing.assert_array_equal(np.asarray(fig.data[0].x, dtype=float), [1.0])
        np.testing.assert_array_equal(np.asarray(fig.data[0].y, dtype=float)[:2], [1.5, 5.5])
    ragged = F.matrix_image(np.zeros((10, 7), bool), max_side=3)  # blocks of 4: the last ones are 2 × 3
    assert "4×4 block (fewer at the edges)" in ragged.layout.title.text


def test_per_tensor_mean_heatmap_hover_shows_the_cells_own_value():
    """A cell of two tensors (4 of 256 and 5 of 16 changed) is coloured by its per-tensor mean, 83.594 %; its
    hover said "sparsity 96.691 %" (the parameter-weighted value) and no word of the mean."""
    df = pd.DataFrame(
        [
            dict(layer=0, module="q", changed=9, numel=272, tensors=2, mean_sparsity=1 - (4 / 256 + 5 / 16) / 2),
            dict(layer=0, module="k", changed=1, numel=256, tensors=1, mean_sparsity=1 - 1 / 256),
        ]
    ).assign(density=lambda d: d.changed / d.numel, sparsity=lambda d: 1 - d.changed / d.numel)
    tr = F.sparsity_heatmap(df, value="mean_sparsity").data[0]
    j = list(tr.x).index("q")
    hover = re.sub(r"%\{customdata\[(\d)\](:[^}]*)?\}", lambda m: str(tr.customdata[0, j, int(m[1])]), tr.hovertemplate)
    assert "per-tensor mean sparsity 83.594% (2.0 tensors)" in hover
    assert "parameter-weighted sparsity 96.691%" in hover and "<br>sparsity" not in hover
    assert tr.z[0, j] == pytest.approx(100 * (1 - (4 / 256 + 5 / 16) / 2))
    weighted = F.sparsity_heatmap(df).data[0]  # the weighted heatmap: its own value, named plainly
    assert "<br>sparsity %{customdata[4]}%" in weighted.hovertemplate and "mean" not in weighted.hovertemplate


def test_ulp_axis_names_the_compared_dtype():
    """ULPs of the compared dtype (bf16 chosen on fp32 weights: bf16 ULPs) were labelled "of the stored dtype"."""
    df = pd.DataFrame({"model": "m", "bin": ["1", "2"], "count": [3, 1]})
    assert F.ulp_histogram(df, dtype="bf16").layout.xaxis.title.text.endswith("of the compared dtype (bf16))")
    assert "stored" not in F.ulp_histogram(df).layout.xaxis.title.text


def test_a_share_short_of_100_never_reads_100_in_tables():
    """1 change in 65,536 (sparsity 99.9985 %) read "100.00 %" in the tables, as if nothing changed. Such a cell
    keeps the digits that tell it from 100, as the charts' cell labels do; an exact 100 % and ordinary shares keep
    two decimals."""
    from subnetviz.report.formats import SHOWN_SMALL_PERCENT, column_formats, display_frame, e_text, formatted_frame

    df = pd.DataFrame({"sparsity": [1 - 1 / 65536, 1.0, 0.6421, 1 - 1e-9, 0.99996]})
    assert list(formatted_frame(df)["sparsity"]) == ["99.998 %", "100.00 %", "64.21 %", ">99.9999 %", "99.996 %"]
    shown, fmts = display_frame(df)  # the app: the Styler's text for that column, cell by cell
    assert fmts["sparsity"] == SHOWN_SMALL_PERCENT
    assert [e_text(v, percent=True) for v in shown["sparsity"]] == list(formatted_frame(df)["sparsity"])
    assert column_formats(pd.DataFrame({"sparsity": [0.9999, 1.0]})) == {"sparsity": "percent"}  # 99.99 % reads so
    assert list(formatted_frame(pd.DataFrame({"sparsity": [0.99994999]}))["sparsity"]) == ["99.99 %"]


def test_a_share_short_of_100_never_reads_100_in_hovers():
    """The overall bar's hover said "100.00%" under its label "99.999 %"; the heatmap's said "100.000%". The
    hovers carry the share as text: two (bars) or three (cells) decimals, more where those would say 100 or 0."""
    from subnetviz.figures.updates import percent_text

    assert list(percent_text([99.99996, 100.0, 64.2, 0.0004, 0.0, 99.9999999])) == [
        "99.99996",
        "100.000",
        "64.200",
        "4.0e-04",
        "0.000",
        ">99.9999",
    ]
    bars = F.overall_bars(
        pd.DataFrame({"model": ["a"], "sparsity": [1 - 1 / 135760], "changed": [1], "numel": [135760]})
    )
    tr = bars.data[0]
    assert tr.customdata[0][0] == "99.999" and tr.hovertemplate.startswith("%{x}: %{customdata[0]}%")
    assert list(tr.customdata[0][1:]) == [1.0, 135760.0]
    heat = pd.DataFrame([dict(layer=0, module="q", changed=1, numel=10**6)]).assign(
        density=lambda d: d.changed / d.numel, sparsity=lambda d: 1 - d.changed / d.numel
    )
    cell = F.sparsity_heatmap(heat).data[0].customdata[0, 0]
    assert (cell[4], cell[5]) == ("99.9999", "1.0e-04")
    # the sweep, the norms / embeddings / head bars, the ULP shares and One matrix's row shares, the same way
    sweep = F.tolerance_sweep(pd.DataFrame({"model": "m", "tolerance": [0.0, 1e-5], "sparsity": [1 - 1e-6, 0.5]}))
    assert [list(t.text) for t in sweep.data] == [["50.000"], ["99.9999"]] and "%{text}%" in sweep.data[1].hovertemplate
    special = F.module_bars(pd.DataFrame({"model": "m", "name": ["embed"], "sparsity": [1 - 1e-6]})).data[0]
    assert list(special.text) == ["99.9999"] and special.textposition == "none" and "%{text}%" in special.hovertemplate
    ulp = F.ulp_histogram(pd.DataFrame({"model": "m", "bin": ["1", "2"], "count": [10**6 - 1, 1]})).data[0]
    assert list(ulp.text) == ["99.9999", "1.0e-04"] and ulp.textposition == "none"
    rows = F.row_col_ratios(np.array([1 / 150_000, 0.5]), np.array([0.25])).data[0]
    assert list(rows.text) == ["6.7e-04", "50.00"] and "%{text}%" in rows.hovertemplate


def test_cli_shares_never_round_a_change_away():
    """``analyze`` printed 1.000000 / 0.000000 for a 7B model with 3,000 changed entries. A share that six
    decimals would round onto 0 or 1 gets the digits that tell it apart, still a plain number."""
    from subnetviz.cli.analysis import share_text

    n = 7_000_000_000
    for changed in (1, 3_000, 10**6):
        sparsity, density = 1 - changed / n, changed / n
        s, d = share_text(sparsity), share_text(density)
        assert float(s) < 1.0 and float(d) > 0.0  # plain numbers a script reads back, on the right side of 1 / 0
        assert 1 - float(s) == pytest.approx(density, rel=0.5) and float(d) == pytest.approx(density, rel=1e-3)
    assert [share_text(v) for v in (1.0, 0.0, 0.5, 0.9876543)] == ["1.000000", "0.000000", "0.500000", "0.987654"]


def test_cli_prints_a_share_it_can_read_back(tmp_path, capsys):
    """One entry changed among 2,100,000: ``analyze`` printed sparsity 1.000000 and density 0.000000 beside
    changed 1. Its table now says 0.99999952 / 4.762e-07, columns still split on whitespace into numbers."""
    from subnetviz.__main__ import main

    w = torch.randn(2100, 1000, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    moved = w.clone()
    moved.view(torch.int16)[5, 7] += 1
    save_file({"w": w}, str(tmp_path / "base.safetensors"))
    save_file({"w": moved}, str(tmp_path / "ft.safetensors"))
    args = [str(tmp_path / "base.safetensors"), str(tmp_path / "ft.safetensors"), "--out", str(tmp_path / "out")]
    assert main(["analyze", *args, "--no-spectra", "--subspaces", "0", "--no-cache"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = lines.index(next(line for line in lines if line.split()[:2] == ["model", "sparsity"]))
    row = dict(zip(lines[head].split(), lines[head + 1].split(), strict=True))
    assert (int(row["numel"]), int(row["changed"])) == (2_100_000, 1)
    assert 0 < 1 - float(row["sparsity"]) < 1e-6 and float(row["density"]) == pytest.approx(1 / 2_100_000, rel=1e-3)


@pytest.mark.parametrize(("precision", "unit"), [("bf16", "(bf16)"), (None, "(fp32, as stored)")])
def test_the_reports_ulp_axis_names_the_dtype_compared(planted_fp32, precision, unit):
    """`report`'s dashboard drew the ULP histogram with no dtype ("units in the last place" of what?): an fp32 pair
    analysed at bf16 counts bf16 ULPs, and its axis says so, as the page's does."""
    from subnetviz.analysis.sparsity import SparsityOptions
    from subnetviz.analysis.updates import SpectraOptions, analyze_updates
    from subnetviz.report.dashboard import analysis_sections

    root, _, _ = planted_fp32
    analysis = analyze_updates(
        str(root / "base"),
        [str(root / "ft")],
        options=SparsityOptions(precision=precision),
        spectra=SpectraOptions(enabled=False),
    )
    figs = [f for s in analysis_sections(analysis) for f in s.figures]
    (ulp,) = [f for f in figs if "ULP" in (f.layout.title.text or "")]
    assert ulp.layout.xaxis.title.text.endswith(unit + ")"), ulp.layout.xaxis.title.text


def test_one_matrix_names_an_embeddings_rows_tokens(tmp_path):
    """An input embedding is stored [vocab, hidden]: its rows are tokens, and One matrix called them "row (output
    dim)" as if it were an nn.Linear; GPT-2's learned position embedding's rows are positions."""
    from tests.models import make_gpt2, make_llama

    gpt2, llama = make_gpt2(tmp_path / "gpt2"), make_llama(tmp_path / "llama")
    cases = (
        (llama, "model.embed_tokens.weight", "token"),
        (gpt2, "transformer.wte.weight", "token"),
        (gpt2, "transformer.wpe.weight", "position"),
    )
    for folder, name, rows in cases:
        upd = matrix_update(str(folder), str(folder), name)
        fig = F.matrix_image(upd.changed, orientation=upd.orientation)
        assert (fig.layout.yaxis.title.text, fig.layout.xaxis.title.text) == (f"row ({rows})", "column (hidden dim)")
        ratios = F.row_col_ratios(upd.row_share, upd.col_share, orientation=upd.orientation).layout
        assert ratios.xaxis.title.text.startswith(f"row index ({rows}")
