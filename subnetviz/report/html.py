"""The static export of a dashboard: one self-contained HTML file, plus table downloads.

The file opens with no network: plotly.js is embedded exactly once in ``<head>`` and each figure
is a ``<div>`` drawn by it; there is no external ``<script src>`` or ``<link href>``. Every section
carries the parameters that made its figures, and the page says when and by which subnetviz
version it was generated. All user-supplied text (titles, notes, table cells, parameters) is
HTML-escaped, so a tensor or run name cannot inject markup.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.offline

from subnetviz.cache import atomic_write, file_in_the_way
from subnetviz.errors import ConfigError
from subnetviz.figures import PLOTLY_CONFIG
from subnetviz.report.formats import MISSING, formatted_frame
from subnetviz.text import visible_controls
from subnetviz.version import version_info, version_string

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header,main,footer{max-width:1200px;margin:0 auto;padding:0 24px}
header{padding-top:24px}h1{font-size:1.7em;margin:0 0 4px}h2{font-size:1.3em;margin:0 0 12px}
.meta{color:#666;font-size:.9em}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:18px 20px;margin:18px 0}
.figure{margin:12px 0}.notes{white-space:pre-wrap;line-height:1.45}
table{border-collapse:collapse;font-size:.88em;margin:6px 0 14px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;font-variant-numeric:tabular-nums}th{background:#f2f2f2}
.num{text-align:right}td.num{white-space:nowrap}caption{caption-side:top;text-align:left;font-weight:600;padding:4px 0;white-space:nowrap}
.params td{text-align:left;font-family:ui-monospace,monospace}
.tablewrap{overflow-x:auto}
"""


@dataclass(frozen=True)
class ReportSection:
    """One part of the report: figures, (caption, table) pairs, free-text notes and the parameters behind them."""

    title: str
    figures: Sequence[go.Figure] = ()
    tables: Sequence[tuple[str, pd.DataFrame]] = ()
    notes: str = ""
    params: Mapping[str, object] = field(default_factory=dict)


def _esc(text: object) -> str:
    """Text for the page: HTML-escaped, direction controls shown as code points (they reversed what followed)."""
    return html.escape(visible_controls(str(text)))


def _params_table(params: Mapping[str, object], caption: str) -> str:
    if not params:
        return ""
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(fmt_param(v))}</td></tr>" for k, v in params.items())
    return f'<table class="params"><caption>{_esc(caption)}</caption>{rows}</table>'


def fmt_param(v: object) -> str:
    if isinstance(v, str):
        return v
    try:
        return json.dumps(v, default=str, ensure_ascii=False)  # "Δ grpo-s0", not "\u0394 grpo-s0"
    except (TypeError, ValueError):
        return str(v)


def _table_html(caption: str, df: pd.DataFrame, max_rows: int) -> str:
    head = df.head(max_rows)
    shown = formatted_frame(head)  # numbers as the app shows them (separators, %, e-notation)
    # numbers right-aligned, as in the app's tables; text (names, kinds, sides) left-aligned
    cls = [
        "num" if pd.api.types.is_numeric_dtype(head[c]) and not pd.api.types.is_bool_dtype(head[c]) else "txt"
        for c in head.columns
    ]
    th = "".join(f'<th class="{k}">{_esc(c)}</th>' for k, c in zip(cls, shown.columns, strict=True))
    rows = "".join(
        "<tr>" + "".join(f'<td class="{k}">{_cell(v)}</td>' for k, v in zip(cls, row, strict=True)) + "</tr>"
        for row in shown.itertuples(index=False, name=None)
    )
    body = f'<table class="data"><thead><tr>{th}</tr></thead><tbody>{rows}</tbody></table>'
    more = f'<p class="meta">first {max_rows} of {len(df):,} rows</p>' if len(df) > max_rows else ""
    return f'<div class="tablewrap"><p><b>{_esc(caption)}</b></p>{body}{more}</div>'


def _cell(value: object) -> str:
    """One table cell's text, escaped; a missing value reads as the app's dash."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return MISSING
    return _esc(value)


def build_report(
    title: str,
    sections: Sequence[ReportSection],
    params: Mapping[str, object] | None = None,
    config: Mapping | None = None,
    max_table_rows: int = 2000,
) -> str:
    """The whole report as one HTML string (plotly.js embedded once, no network needed)."""
    config = dict(PLOTLY_CONFIG if config is None else config)
    # The day, not the minute, and numbered figure ids (Plotly draws a random one each time): one view exported
    # twice gives the same bytes, which the server keeps once per session, not once per click (~5 MB each).
    generated = datetime.now(UTC).strftime("%Y-%m-%d")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style>",
        # One copy of plotly.js for every figure; "</script" cannot occur inside it un-escaped.
        '<script type="text/javascript">'
        + plotly.offline.get_plotlyjs().replace("</script", "<\\/script")
        + "</script>",
        "</head><body>",
        f"<header><h1>{_esc(title)}</h1>",
        f'<p class="meta">Generated on {generated} by {html.escape(version_string())}</p>',
        _params_table({**(params or {}), **version_info()}, "Parameters"),
        "</header><main>",
    ]
    n_figures = 0
    for i, sec in enumerate(sections):
        if not isinstance(sec, ReportSection):
            raise ConfigError(f"build_report: section {i} is a {type(sec).__name__}, expected a ReportSection.")
        parts.append(f"<section><h2>{_esc(sec.title)}</h2>")
        if sec.notes:
            parts.append(f'<p class="notes">{_esc(sec.notes)}</p>')
        parts.append(_params_table(sec.params, "Parameters of this section"))
        for fig in sec.figures:
            div = fig.to_html(
                full_html=False,
                include_plotlyjs=False,
                config=config,
                default_width="100%",
                div_id=f"sv-figure-{n_figures}",
            )
            n_figures += 1
            parts.append(f'<div class="figure">{div}</div>')
        parts.extend(_table_html(caption, df, max_table_rows) for caption, df in sec.tables)
        parts.append("</section>")
    parts.append(f'</main><footer><p class="meta">{html.escape(version_string())} · {generated}</p></footer>')
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    path: str | Path, title: str, sections: Sequence[ReportSection], params: Mapping | None = None, **kw
) -> Path:
    """Write :func:`build_report` to ``path`` (UTF-8) and return the path."""
    path = Path(path)
    if (blocked := file_in_the_way(path)) is not None:
        raise ConfigError(f"Cannot write the report to {path}: {blocked} is a file, not a folder.")
    if not path.parent.is_dir():
        raise ConfigError(f"Cannot write the report to {path}: folder {path.parent} does not exist. Create it first.")
    page = build_report(title, sections, params, **kw)
    try:
        return atomic_write(path, page)  # a reader never sees half a report
    except OSError as exc:  # named by the file asked for, not the temporary one beside it
        raise ConfigError(f"Cannot write the report to {path}: {exc.strerror or exc}.") from None


_FORMULA = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as the start of a formula


def download_frame(df: pd.DataFrame, fmt: str = "csv") -> bytes:
    """A table as CSV (UTF-8, no index) or Parquet bytes, for ``st.download_button``. In the CSV, a text cell
    that a spreadsheet would run as a formula (a tensor or run name from someone else's checkpoint beginning with
    =, +, -, @ or a tab) is written with a leading apostrophe, which spreadsheets show as text; numbers and the
    Parquet file are the data as they are."""
    if fmt == "csv":
        out = df.copy()
        for c in out.columns:
            if out[c].dtype == object or pd.api.types.is_string_dtype(out[c]):
                out[c] = out[c].map(lambda v: f"'{v}" if isinstance(v, str) and v[:1] in _FORMULA else v)
        return out.to_csv(index=False).encode("utf-8")
    if fmt == "parquet":
        buf = io.BytesIO()
        # Parquet needs string column names; object columns holding tuples (e.g. UpSet members) become text.
        out = df.rename(columns=str)
        for c in out.columns:
            if out[c].dtype == object and out[c].map(lambda v: isinstance(v, tuple | list | set | frozenset)).any():
                out[c] = out[c].map(
                    lambda v: (
                        json.dumps(sorted(v) if isinstance(v, set | frozenset) else list(v), default=str)
                        if isinstance(v, tuple | list | set | frozenset)
                        else v
                    )
                )
        out.to_parquet(buf, index=False)
        return buf.getvalue()
    raise ConfigError(f"download_frame: unknown format {fmt!r}; expected 'csv' or 'parquet'.")
