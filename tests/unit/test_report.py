"""The HTML export is one self-contained file: plotly.js once, no network, data present, text escaped."""

import base64
import io
import json
import os
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from subnetviz import __version__, figures
from subnetviz.errors import ConfigError
from subnetviz.report.html import ReportSection, build_report, download_frame, write_report
from tests.browser import CHROMIUM, NEEDS_CHROMIUM

EVIL = "<script>alert('x')</script>"


def decode(v):
    """plotly>=6 serialises numpy arrays as {'dtype','bdata','shape'} (base64 typed arrays)."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(s) for s in v["shape"].split(",")]) if "shape" in v else a
    return np.asarray(v)


def figure_data(text):
    """The trace lists passed to every Plotly.newPlot("id", [...], ...) call in the page."""
    out = []
    for m in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', text):
        out.append(json.JSONDecoder().raw_decode(text, m.end())[0])
    return out


class _Cells(HTMLParser):
    """Text of every <td> in tables of class "data" (stdlib only: pandas.read_html needs lxml)."""

    def __init__(self):
        super().__init__()
        self.rows, self._in_data, self._cell = [], False, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._in_data = "data" in (dict(attrs).get("class") or "")
        elif tag == "tr" and self._in_data:
            self.rows.append([])
        elif tag == "td" and self._in_data:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1].append(self._cell)
            self._cell = None
        elif tag == "table":
            self._in_data = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def sections():
    z = np.arange(6, dtype=np.float64).reshape(2, 3) / 7
    heat = go.Figure(go.Heatmap(z=z))
    line = go.Figure(go.Scatter(x=np.arange(4), y=np.array([1.5, 2.5, 3.5, 4.5])))
    table = pd.DataFrame({"name": [EVIL, "model.layers.0.q"], "sparsity": [0.5, 0.25]})
    return (
        [
            ReportSection(
                "Heatmap & friends",
                figures=[heat, line],
                tables=[("Per tensor", table)],
                notes=f"tolerance 1e-5 {EVIL}",
                params={"tolerance": 1e-5, "models": ["a", EVIL]},
            ),
            ReportSection("Second", figures=[go.Figure(go.Bar(x=["a"], y=[3]))]),
        ],
        z,
    )


def test_report_embeds_plotlyjs_once_and_every_figure():
    secs, z = sections()
    text = build_report("Demo dashboard", secs, {"base": "demo/base"})
    assert text.count("* plotly.js v") == 1  # the banner of the one embedded copy
    assert text.index("* plotly.js v") < text.index("</head>")
    assert text.count("Plotly.newPlot(") == 3
    # Each figure's data is in the file: read the JSON handed to Plotly.newPlot and decode it.
    data = figure_data(text)
    assert [d[0]["type"] for d in data] == ["heatmap", "scatter", "bar"]
    np.testing.assert_array_equal(decode(data[0][0]["z"]), z)
    np.testing.assert_array_equal(decode(data[1][0]["y"]), [1.5, 2.5, 3.5, 4.5])
    assert f"subnetviz {__version__}" in text and "Generated on" in text


def test_report_needs_no_network():
    text = build_report("x", sections()[0], {})
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, flags=re.I)
    assert not re.search(r"<link[^>]*\bhref\s*=", text, flags=re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text.split("</head>", 1)[1], flags=re.I)
    assert '"showSendToCloud": false' in text  # no cloud "Share chart" button in the export


def test_report_escapes_user_text():
    secs, _ = sections()
    text = build_report(f"Title {EVIL}", secs, {"note": EVIL})
    assert EVIL not in text
    assert (
        text.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;")
        + text.count("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;")
        >= 5
    )  # title ×2, page params, notes, section params, table cell
    # Parameters are shown with the section that used them.
    assert "tolerance" in text and "1e-05" in text


def test_report_parses_and_keeps_the_table():
    secs, _ = sections()
    text = build_report("x", secs)
    parser = _Cells()
    parser.feed(text)
    rows = [r for r in parser.rows if r]
    assert rows == [[EVIL, "50.00 %"], ["model.layers.0.q", "25.00 %"]]  # escaped, intact once parsed; shares in %


def test_write_report_and_bad_input(tmp_path):
    secs, _ = sections()
    path = write_report(tmp_path / "r.html", "x", secs)
    assert path.read_text(encoding="utf-8").startswith("<!doctype html>")
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ConfigError, match="does not exist"):
        write_report(tmp_path / "missing" / "r.html", "x", secs)
    with pytest.raises(ConfigError, match="ReportSection"):
        build_report("x", [go.Figure()])
    # a folder that cannot be written: named as asked, not as the temporary file beside it (root writes anyway)
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match=r"Cannot write the report to .*locked/r.html: Permission denied"):
            write_report(locked / "r.html", "x", secs)
    with pytest.raises(ConfigError, match=r"Cannot write the report to /proc/r.html: "):
        write_report("/proc/r.html", "x", secs)


def test_download_frame_roundtrips():
    df = pd.DataFrame({"members": [("a", "b"), ("c",)], "count": [3, 4], "share": [0.1, np.nan]})
    back = pd.read_csv(io.BytesIO(download_frame(df, "csv")))
    assert list(back["count"]) == [3, 4] and np.isnan(back["share"][1])
    pq = pd.read_parquet(io.BytesIO(download_frame(df, "parquet")))
    assert [json.loads(v) for v in pq["members"]] == [["a", "b"], ["c"]]
    assert list(pq["count"]) == [3, 4]
    with pytest.raises(ConfigError, match="xlsx"):
        download_frame(df, "xlsx")


@pytest.mark.e2e
@pytest.mark.slow
@NEEDS_CHROMIUM
def test_report_renders_offline_in_chromium_with_hover(tmp_path):
    """The exported file draws every figure with the network off, and hover shows counts and percentages."""
    from playwright.sync_api import sync_playwright

    from subnetviz import figures as F

    heat = pd.DataFrame(
        {
            "layer": [0, 0, 1],
            "module": ["q", "k", "q"],
            "changed": [5, 7, 9],
            "numel": [10] * 3,
            "sparsity": [0.5, 0.3, 0.1],
            "density": [0.5, 0.7, 0.9],
        }
    )
    figs = [F.sparsity_heatmap(heat), F.venn2([3, 5, 2], ["a", "b"])]
    path = write_report(tmp_path / "r.html", "offline", [ReportSection("s", figures=figs)])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_context(offline=True, viewport={"width": 1200, "height": 900}).new_page()
            errors, requests = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri())
            page.wait_for_selector(".plotly-graph-div .main-svg")
            drawn = "Array.from(document.querySelectorAll('.plotly-graph-div')).filter(d => d._fullData && d._fullData.length).length"
            assert page.evaluate(drawn) == 2
            box = page.locator(".plotly-graph-div").first.locator(".nsewdrag").first.bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.75)  # layer 1 × q
            page.wait_for_selector(".hoverlayer .hovertext")
            hover = page.locator(".hoverlayer").first.text_content()
            assert "layer 1 · q" in hover and "changed 9 of 10" in hover and "sparsity 10.000%" in hover
        finally:
            browser.close()
    assert not errors
    assert all(u.startswith("file:") for u in requests)


@pytest.mark.skipif(not os.access("/usr/bin/chromium", os.X_OK), reason="needs Debian chromium for kaleido")
def test_publication_figures_render_server_side_as_svg_pdf_png():
    """Every chart downloads as a file for a paper: real SVG, PDF and PNG (scale multiplies the pixels)."""
    import struct

    import pandas as pd

    from subnetviz import figures
    from subnetviz.report.static import StaticExportError, figure_bytes

    fig = figures.overall_bars(pd.DataFrame({"model": ["grpo", "sft"], "sparsity": [0.68, 0.28]}))
    svg = figure_bytes(fig, "svg")
    assert svg.lstrip().startswith(b"<svg") and b"grpo" in svg  # text stays text: editable in a paper
    assert figure_bytes(fig, "pdf").startswith(b"%PDF")
    png = figure_bytes(fig, "png", scale=2, width=400, height=300)
    assert png.startswith(b"\x89PNG") and struct.unpack(">II", png[16:24]) == (800, 600)
    with pytest.raises(StaticExportError):
        figure_bytes(fig, "gif")


def test_table_numbers_read_as_in_the_app():
    """Counts with separators, shares in percent, ratios with ×, small numbers in e-notation; text kept."""
    from subnetviz.report.formats import (
        COUNT,
        PERCENT,
        RATIO,
        SCIENTIFIC,
        column_formats,
        display_frame,
        formatted_frame,
    )

    df = pd.DataFrame(
        {
            "a": ["x", "y"],
            "count_a": np.array([17144, 15682], dtype=np.int64),
            "o1": [0.8313, 0.92],
            "ratio_over_chance": [1.1687, 1.2],
            "max_abs_delta": [1.2e-6, 3e-2],
            "numel": [22048.0, 1e6],  # whole numbers in a float column (a NaN elsewhere made it float)
            "stable_rank": [4.7, 9.3],
            "delta_bits": [-0.5, 1.5],  # not a share: left to the default
        }
    )
    assert column_formats(df) == {
        "count_a": COUNT,
        "o1": PERCENT,
        "ratio_over_chance": RATIO,
        "max_abs_delta": SCIENTIFIC,
        "numel": COUNT,
    }
    out = formatted_frame(df)
    assert list(out.iloc[0]) == ["x", "17,144", "83.13 %", "1.17×", "1.200e-6", "22,048", "4.7", "-0.5"]
    assert list(out.iloc[1])[:6] == ["y", "15,682", "92.00 %", "1.20×", "3.000e-2", "1,000,000"]
    # a share below 0.01 % would read 0.00 % at two decimals: that column's percents in e-notation
    tiny = pd.DataFrame({"overlap": [7.5e-4, 2.453e-5], "expected_overlap": [2.453e-5, 0.0]})
    assert column_formats(tiny) == {"overlap": "small percent", "expected_overlap": "small percent"}
    assert list(formatted_frame(tiny)["expected_overlap"]) == [
        "2.453e-3 %",
        "0 %",
    ]  # as the app shows them: a zero is 0, not 0.000e+0
    # each cell on its own: two decimals from 1 %, three significant digits below (0.07 % read for 0.075 %),
    # e-notation only below 0.01 %
    assert list(formatted_frame(tiny)["overlap"]) == ["0.075 %", "2.453e-3 %"]
    consensus = pd.DataFrame({"fraction": [0.6421, 0.3571, 8.454e-4, 9.042e-6]})
    assert list(formatted_frame(consensus)["fraction"]) == ["64.21 %", "35.71 %", "0.0845 %", "9.042e-4 %"]
    shown_tiny, tiny_fmts = display_frame(tiny)
    assert tiny_fmts["overlap"] == "%.3e %%" and list(shown_tiny["overlap"]) == pytest.approx([0.075, 0.002453])
    # a large fractional number (an expected count) gets separators too, as the app's "localized" shows it
    expected = pd.DataFrame({"chance_count": [121119.3184, 19829.1003, 5.0], "loss": [1500.5, 0.25, 1.0]})
    assert column_formats(expected) == {"chance_count": COUNT}  # loss: 0.25 would be rounded by a grouped display
    assert list(formatted_frame(expected)["chance_count"]) == ["121,119.318", "19,829.1", "5"]
    assert column_formats(pd.DataFrame({"sparsity@1e-05": [0.2198]})) == {"sparsity@1e-05": PERCENT}  # per tolerance
    # a share-like name whose values leave [0, 1] is no share
    assert "o1" not in column_formats(pd.DataFrame({"o1": [0.5, 1.5]}))
    # the app's tables: shares × 100 under one two-decimal format (Streamlit's "percent" read 47% over 48.5%)
    shown, fmts = display_frame(df)
    assert fmts["o1"] == "%.2f %%" and fmts["count_a"] == COUNT and list(shown["o1"]) == [0.8313 * 100, 92.0]
    assert list(df["o1"]) == [0.8313, 0.92] and shown["numel"].equals(df["numel"])  # the caller's frame is kept
    kept, kept_fmts = display_frame(df, keep=("o1",))  # a column the caller configures itself (a progress bar)
    assert kept["o1"].equals(df["o1"]) and "o1" not in kept_fmts and kept_fmts["count_a"] == COUNT
    html = build_report("t", [ReportSection("s", tables=[("cap", df)])])
    assert "17,144" in html and "83.13 %" in html and "1.200e-6" in html


def test_app_tables_write_a_zero_in_e_notation_columns_as_0():
    """printf writes an exact zero 0.000e+0 (the tolerance of the exact criterion read so): a table with a zero
    in an e-notation column goes to Streamlit as a Styler whose text for those columns is the export's, the
    column left without a format (Streamlit's column format would win over the Styler's text)."""
    from subnetviz.report.formats import display_frame
    from subnetviz.ui import STYLED_CELLS, styled

    df = pd.DataFrame(
        {
            "criterion": ["exact", "|Δ|>1e-08", "relative"],
            "tolerance": [0.0, 1e-8, np.nan],
            "expected_overlap": [0.0, 2.453e-5, 1e-3],  # a small share: percent in e-notation
            "stable_rank": [4.7, 9.25, 1.0],  # a plain float column: Streamlit's default text
            "changed": np.array([154086, 1, 0], dtype=np.int64),
        }
    )
    shown, fmts = display_frame(df)
    data, texts = styled(shown, fmts)
    assert texts == {"tolerance", "expected_overlap"}
    cells = data._translate(False, False)["body"]  # the text Streamlit shows (pandas' own rendering of the cells)
    text = {(df.columns[j], i): cells[i][j + 1]["display_value"] for i in range(len(df)) for j in range(df.shape[1])}
    assert [text["tolerance", i] for i in range(3)] == ["0", "1.000e-8", "—"]
    assert [text["expected_overlap", i] for i in range(3)] == ["0 %", "2.453e-3 %", "0.10 %"]
    assert [text["stable_rank", i] for i in range(3)] == ["4.7", "9.25", "1"]
    assert data.data["tolerance"].iloc[1] == 1e-8  # the numbers stay numbers: sorting and downloads
    # no zero and no small shares, or a table too large for a Styler to be cheap: the frame, printf formats
    plain = shown[["criterion", "tolerance", "stable_rank", "changed"]].iloc[1:]
    frame, none = styled(plain, {c: f for c, f in fmts.items() if c in plain})
    assert isinstance(frame, pd.DataFrame) and none == set()
    big = pd.DataFrame({"tolerance": np.r_[0.0, np.full(STYLED_CELLS, 1e-8)]})
    assert styled(*display_frame(big))[1] == set()


def test_export_tables_align_text_left_and_numbers_right():
    """As in the app: names, kinds and sides read left-aligned, numbers right-aligned (the export right-aligned
    every column but the first, so 'zoo grpo-s0/inside' sat flush right); missing values read '—', text is
    escaped."""
    df = pd.DataFrame(
        {
            "model": ["grpo-s0", "<b>x</b>"],
            "experiment": ["finetuned", None],
            "kl_forward": [1.202e-4, np.nan],
            "tokens": np.array([128, 64], dtype=np.int64),
            "kkt": [True, False],
        }
    )
    html = build_report("t", [ReportSection("s", tables=[("cap", df)])])
    table = html[html.index('<table class="data">') : html.index("</table>", html.index('<table class="data">'))]
    heads = re.findall(r'<th class="(\w+)">([^<]*)</th>', table)
    assert heads == [("txt", "model"), ("txt", "experiment"), ("num", "kl_forward"), ("num", "tokens"), ("txt", "kkt")]
    rows = re.findall(r"<tr>(.*?)</tr>", table)[1:]
    cells = [re.findall(r'<td class="(\w+)">([^<]*)</td>', r) for r in rows]
    assert cells[0] == [("txt", "grpo-s0"), ("txt", "finetuned"), ("num", "1.202e-4"), ("num", "128"), ("txt", "True")]
    assert cells[1] == [("txt", "&lt;b&gt;x&lt;/b&gt;"), ("txt", "—"), ("num", "—"), ("num", "64"), ("txt", "False")]
    assert ".num{text-align:right}" in html


def test_run_names_fall_back_to_the_kind_for_a_nameless_run():
    """A run with no name reads "kind · id" in every picker, whether the frame holds its name as None, NaN (a
    column of nameless runs read back: a comparison picker showed "run nan · …") or ""."""
    from subnetviz.report.training import run_names

    runs = pd.DataFrame(
        {"id": ["a", "b", "c", "d"], "name": ["grid", None, np.nan, ""], "kind": ["drivers", "python", "train", "x"]}
    )
    assert run_names(runs) == {"a": "grid · a", "b": "python · b", "c": "train · c", "d": "x · d"}


@pytest.mark.parametrize(
    "error, says",
    [
        (ValueError("invalid literal for int() with base 10: '²'"), "an error inside subnetviz (ValueError)"),
        (ConfigError("/srv/secret/models/x: no such corpus file."), "…/x: no such corpus file."),
    ],
)
def test_an_export_whose_closed_tabs_fail_still_downloads_with_the_open_one(error, says):
    """The closed tabs are built in the click's own thread: an error there reached no one and nothing downloaded.
    The dashboard holds the open tab and says, as a visitor may read it, why the rest is missing."""
    from subnetviz import uilogic

    def more():
        raise error

    fig = go.Figure(go.Bar(x=[1], y=[2]), layout={"title": {"text": "The open tab's chart"}})
    page = uilogic.dashboard_html("Spectra", {"K": 16}, {"open": fig}, {}, ["open"], [], more)
    assert "The open tab&#x27;s chart" in page or "The open tab's chart" in page
    assert "The closed tabs could not be built" in page and says in page and "/srv/secret" not in page


def test_a_downloaded_csv_runs_no_formula():
    """A tensor named '=HYPERLINK(...)' in someone's checkpoint became a live formula in the table's CSV."""
    df = pd.DataFrame({"name": ['=HYPERLINK("http://x","y")', "@SUM(1)", "layers.0.q", "-1"], "changed": [1, -2, 3, 4]})
    text = download_frame(df).decode()
    assert "'=HYPERLINK" in text and "'@SUM(1)" in text and "'-1,4" in text and "\nlayers.0.q,3" in text
    assert pd.read_csv(io.BytesIO(download_frame(df)))["changed"].tolist() == [1, -2, 3, 4]  # numbers as they are


def test_one_view_exported_twice_is_the_same_file():
    """Plotly gave each figure a random div id and the page carried the minute: every click made a new ~5 MB
    file that the server kept for the session (a visitor clicking grew its memory without bound)."""
    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))
    sections = [ReportSection("S", [fig, fig], [("t", pd.DataFrame({"x": [1]}))])]
    one, two = build_report("T", sections, {"p": 1}), build_report("T", sections, {"p": 1})
    assert one == two and 'id="sv-figure-0"' in one and 'id="sv-figure-1"' in one


def test_direction_controls_missing_values_and_lists_read_as_text():
    """A name with U+202E read backwards ('ft\u202egnp.exe' showed as 'ftexe.png'); a nullable column's
    missing value read '<NA>' (the app shows a dash); list parameters were written as \\u escapes."""
    df = pd.DataFrame({"model": ["ft\u202egnp.exe"], "layer": pd.array([None], dtype="Int64")})
    page = build_report("T", [ReportSection("S", tables=[("t", df)])], {"models": ["Δ grpo-s0", "ft\u202egnp"]})
    assert "\u202e" not in page and "ft⟨U+202E⟩gnp.exe" in page
    assert "&lt;NA&gt;" not in page and '<td class="num">—</td>' in page
    assert "Δ grpo-s0" in page and "\\u0394" not in page
    assert figures.plain_label("a\u2067b") == "a⟨U+2067⟩b"


def test_the_training_export_shows_the_run_the_runs_view_shows():
    """The Runs view and the export share one default: the URL's run, else the newest training run not cancelled
    (the export fell back to the newest job of any kind: a continual job, its curves left out)."""
    from subnetviz.report.training import shown_run

    runs = pd.DataFrame(
        {
            "id": ["cont", "cancel", "train1", "train0"],
            "kind": ["continual", "train", "train", "train"],
            "status": ["succeeded", "cancelled", "succeeded", "succeeded"],
        }
    )
    assert shown_run(runs, None) == "train1" and shown_run(runs, "nope") == "train1"
    assert shown_run(runs, "train0") == "train0" and shown_run(runs, "cont") == "cont"
    others = runs.assign(kind=["continual", "bigram", "continual", "bigram"])  # no training run: the newest live one
    assert shown_run(others, None) == "cont"
    assert shown_run(runs.assign(status="cancelled"), None) == "cont"
