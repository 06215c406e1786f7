"""Set figures of masks: area-proportional Venn (2–3 masks) and UpSet (any number). Pure Plotly;
inputs are the region counts of :class:`subnetviz.analysis.overlap.OverlapReport`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from subnetviz.figures.overlap import cut_labels
from subnetviz.figures.style import (
    FigureDataError,
    _require,
    _style,
    color_map,
    no_data_figure,
    percent_cells,
    takes_data,
)
from subnetviz.figures.venn import REGIONS2, REGIONS3, VennLayout, venn2_layout, venn3_layout

_NARROW_PX = 234  # the Venn's plot in a half-width column at 1024 px (274 px less the margins): names fit there
_CHAR_PX, _LINE_PX = 8.5, 18  # a name in bold 14 px: about 7.5 px a character (8.5 for room), 18 px a line
# A set's name at most this many characters a line on the chart (a name on a leader: two lines, split at " · "),
# else cut in the middle where names differ (cut_labels), whole in its hover and in a key under the plot: a name of
# 100 characters ran past the chart's and the file's edges, and two that differ only at their end ("…-variant-A",
# "…-variant-B") lost the part that tells them apart.
_NAME = 24
_KEY_LINE, _KEY_ROW = 42, 15  # the key: characters a line (11 px, within the 254 px of a half-width chart), px a row


def _on_leaders(radii: np.ndarray, ext: float) -> np.ndarray:
    """Which circles are too small to hold their name: named on a leader (a lone circle never is)."""
    return (radii < 0.12 * ext) & (len(radii) > 1)


def _lines(label: str, leader: bool) -> list[str]:
    """A name's lines as drawn (plain text): on a leader, a run's "name · id" on two lines."""
    return html.unescape(label).split(" · ") if leader else [html.unescape(label)]


def _shown_names(labels: Sequence[str], leaders: Sequence[bool]) -> tuple[list[str], list[str]]:
    """The names as the chart draws them, those with a line longer than :data:`_NAME` cut (told apart), and the
    key's lines naming the cut ones in full (none when nothing was cut)."""
    long = [
        i for i, (lab, lead) in enumerate(zip(labels, leaders, strict=True)) if max(map(len, _lines(lab, lead))) > _NAME
    ]
    cuts, key = cut_labels([labels[i] for i in long], _NAME, _KEY_LINE)
    shown = list(labels)
    for i, cut in zip(long, cuts, strict=True):
        shown[i] = cut
    return shown, key


def _names(
    centers: np.ndarray, radii: np.ndarray, labels: Sequence[str], shown: Sequence[str], colors: Mapping, ext: float
) -> list[dict]:
    """Each drawn circle's name: an annotation above or below it, never beside it (there a name ran off a half-width
    chart: "Δ grpo-s0" read "grpo-s0" at 1024 px). ``shown``: the names as drawn (cut short, :data:`_NAME`); each
    one's hover is its label in full, and ``colors`` are keyed by the labels. Circles side by side: each name
    centred on its circle. Else,
    and where a centred name would cross the chart's edge on the narrowest chart, the name runs from the circle's
    outer edge inwards. Names on one side whose spans would meet on the narrowest chart are stacked, the outer one
    a line further out. A circle too small to hold its name: the name on a leader, one above, one below, ..."""
    centroid = centers.mean(axis=0)
    per_px = 2 * ext / _NARROW_PX  # data units per pixel on the narrowest chart (its width binds the square axes)
    notes, placed, small = [], [], 0
    for (cx, cy), r, leader, full, lab in zip(centers, radii, _on_leaders(radii, ext), labels, shown, strict=True):
        lines = _lines(lab, leader)
        width = _CHAR_PX * per_px * max(len(line) for line in lines)
        d = np.array([cx, cy]) - centroid
        d = d / np.hypot(*d) if np.hypot(*d) > 1e-9 else np.array([0.0, 1.0])  # (a lone circle: named above)
        beside = abs(d[1]) < 0.3  # side by side with the others
        centred = beside or leader or abs(d[0]) < 0.3  # (else it lies to one side of the others, above or below)
        out = (1 if cx > 0 else -1) if centred else (1 if d[0] > 0 else -1)  # the chart's edge on its side
        inward = not centred or abs(cx) + width / 2 > ext - 4 * per_px  # (a centred name that would cross it too)
        xa = {1: "right", -1: "left"}[out] if inward else "center"
        font = {"color": colors[full], "size": 14}
        text = f"<b>{lab.replace(' · ', '<br>· ') if leader else lab}</b>"
        note = {"text": text, "font": font, "xanchor": xa} | ({"hovertext": full} if full != lab else {})
        if leader:
            up = small % 2 == 0
            rise = 36 + 44 * (small // 2)
            small += 1  # (the leader meets the name's inner end where it runs inwards)
            arrow = {"showarrow": True, "arrowhead": 0, "arrowcolor": font["color"], "ax": 0}
            notes.append(note | arrow | {"x": cx, "y": cy + (r if up else -r), "ay": -rise if up else rise})
            continue
        up = d[1] > -0.3  # side by side: above
        x, y = cx + r * out if inward else cx, cy + (r if up else -r)
        lo = x - width * {"right": 1.0, "left": 0.0, "center": 0.5}[xa]
        notes.append(note | {"x": x, "y": y, "showarrow": False, "yanchor": "bottom" if up else "top"})
        placed.append((up, y if up else -y, lo, lo + width, notes[-1]))  # (its base's distance out: y, or -y below)
    line, done = _LINE_PX * per_px, []
    for up, out, lo, hi, note in sorted(placed, key=lambda p: (p[0], p[1])):  # nearest the circles first
        base = max([out, *(b + line for u, b, a, z in done if u == up and a < hi and lo < z)])
        note["yshift"] = (base - out) / per_px * (1 if up else -1)
        done.append((up, base, lo, hi))
    return notes


def _venn_figure(layout: VennLayout, labels: Sequence[str], title: str, colors: Mapping | None) -> go.Figure:
    n = len(layout.radii)
    if len(labels) != n:
        raise FigureDataError(f"venn: {n} set labels expected; got {len(labels)}: {list(labels)}.")
    colors = colors or color_map(labels)
    fig = go.Figure()
    drawn = layout.radii > 0  # an empty set has no circle; the subtitle names it instead
    for (cx, cy), r, lab in zip(
        layout.centers[drawn], layout.radii[drawn], np.array(labels, dtype=object)[drawn], strict=True
    ):
        col = colors[str(lab)]
        fig.add_shape(
            type="circle",
            x0=cx - r,
            x1=cx + r,
            y0=cy - r,
            y1=cy + r,
            line={"color": col, "width": 2},
            fillcolor=col,
            opacity=0.25,
            layer="below",
        )
    ext = float(np.max(np.abs(layout.centers) + layout.radii[:, None])) * 1.25
    leaders = np.zeros(n, dtype=bool)
    leaders[drawn] = _on_leaders(layout.radii[drawn], ext)
    cuts, key = _shown_names([str(x) for x in labels], leaders)
    on = np.flatnonzero(drawn)
    for note in _names(
        layout.centers[drawn], layout.radii[drawn], [str(labels[i]) for i in on], [cuts[i] for i in on], colors, ext
    ):
        fig.add_annotation(note)
    if key:  # the names in full under the plot, for a file or a print (no hover there)
        fig.add_annotation(
            text="<br>".join(key),
            xref="paper",
            yref="paper",
            x=0,
            y=0,
            xanchor="left",
            yanchor="top",
            yshift=-8,
            align="left",
            showarrow=False,
            font={"size": 11},
        )
    empty = [cut for cut, ok in zip(cuts, drawn, strict=True) if not ok]  # (as drawn: the key names them in full)
    if empty:
        title += f"<br><sup>empty, not drawn: {', '.join(empty)}</sup>"
    total = layout.counts.sum()
    ok = ~np.isnan(layout.label_points[:, 0]) & (layout.counts > 0)
    names = [_region_name(code, labels) for code in layout.regions]  # (the hover: names in full)
    # a region with members but no drawn point (its drawn area is nil or a sliver): named with its count
    unseen = np.isnan(layout.label_points[:, 0]) & (layout.counts > 0)
    if unseen.any():
        missing = ", ".join(
            f"{_region_name(layout.regions[k], cuts)} ({layout.counts[k]:,.0f})" for k in np.flatnonzero(unseen)
        )
        title += f"<br><sup>too small to draw: {missing}</sup>"
    share = 100 * layout.counts / total
    custom = np.stack([layout.counts, share, 100 * layout.actual / layout.target.sum()], axis=-1)[ok]
    # a region's count printed only where the region is drawn large enough to hold it (about 8 % of the
    # chart's side, squared); the small ones' counts sat on top of each other. Every region keeps its hover.
    roomy = layout.actual[ok] >= (0.08 * 2 * ext) ** 2
    fig.add_trace(
        go.Scatter(
            x=layout.label_points[ok, 0],
            y=layout.label_points[ok, 1],
            mode="markers+text",
            text=[  # (a share as the heatmap cells write it: 99.97 % of the union is not "100.0%")
                f"{_compact(c)}<br>{s}" if big else ""
                for c, s, big in zip(layout.counts[ok], percent_cells(share[ok]), roomy, strict=True)
            ],
            customdata=custom,
            hovertext=np.array(names, dtype=object)[ok],
            marker={"size": 28, "opacity": 0},
            hovertemplate="%{hovertext}<br>%{customdata[0]:,.0f} parameters<br>%{customdata[1]:.2f}% of union"
            "<br>drawn area %{customdata[2]:.2f}% of union<extra></extra>",
            showlegend=False,
            textfont={"size": 12},
        )
    )
    fig.update_xaxes(visible=False, range=[-ext, ext])
    fig.update_yaxes(visible=False, range=[-ext, ext], scaleanchor="x", scaleratio=1)
    top = max(80, 56 + 18 * title.count("<br>"))  # the title and each of its subtitle lines
    below = 20 + (_KEY_ROW * len(key) + 8 if key else 0)  # the key's rows under the plot, which keeps its size
    return _style(fig, title, height=500 + below, margin={"l": 20, "r": 20, "t": top, "b": below})


def _region_name(code: str, labels: Sequence[str]) -> str:
    """A region by its members ("only a", "a ∩ b only", "a ∩ b ∩ c"); ``code``: bit i = labels[i]."""
    members = " ∩ ".join(str(labels[i]) for i, ch in enumerate(code) if ch == "1")
    if code.count("1") == 1:
        return f"only {members}"
    return members + (" only" if code.count("0") else "")


def _compact(v: float) -> str:
    """A count in three significant digits, its unit chosen after the rounding: 999,700 is "1M", not "1e+03k"."""
    units = (("G", 1e9), ("M", 1e6), ("k", 1e3))
    for i, (unit, div) in enumerate(units):
        if abs(v) >= div:
            shown = float(f"{v / div:.3g}")
            if abs(shown) >= 1000 and i:  # rounded up into the next unit
                unit, shown = units[i - 1][0], float(f"{v / units[i - 1][1]:.3g}")
            return f"{shown:g}{unit}"
    return f"{v:,.0f}"


def _region_counts(sizes_or_regions, n: int) -> np.ndarray:
    codes = REGIONS2 if n == 2 else REGIONS3
    if isinstance(sizes_or_regions, Mapping):
        return np.array([float(sizes_or_regions.get(c, 0)) for c in codes])
    return np.asarray(sizes_or_regions, dtype=np.float64)


EMPTY_UNION = "no mask has any entry: nothing to draw"


def _all_empty(counts: np.ndarray, n: int) -> bool:
    """Every region count is 0 (every mask empty): no circle to draw (the layout refuses it)."""
    return counts.shape == (2**n - 1,) and bool(np.all(counts == 0))


@takes_data()
def venn2(
    sizes_or_regions, labels: Sequence[str], title: str = "Overlap (area-proportional)", colors: Mapping | None = None
) -> go.Figure:
    """Exact area-proportional 2-set Venn; regions (10, 01, 11) as a sequence or {code: count}. Every
    region empty: a figure that says so (no circle)."""
    counts = _region_counts(sizes_or_regions, 2)
    if _all_empty(counts, 2):
        return no_data_figure(title, EMPTY_UNION)
    return _venn_figure(venn2_layout(counts), labels, title, colors)


@takes_data()
def venn3(
    sizes_or_regions,
    labels: Sequence[str],
    title: str = "Overlap (area-proportional)",
    colors: Mapping | None = None,
    method: str = "auto",
) -> go.Figure:
    """Best-effort 3-set Venn; regions (100, 010, 110, 001, 101, 011, 111). The subtitle states the layout error.
    Every region empty: a figure that says so (no circle)."""
    counts = _region_counts(sizes_or_regions, 3)
    if _all_empty(counts, 3):
        return no_data_figure(title, EMPTY_UNION)
    layout = venn3_layout(counts, method=method)
    # two short lines: one ran past a half-width chart at 1024 px (it stopped at "area = 5.0%")
    sub = (
        f"<br><sup>layout accuracy {100 * (1 - layout.region_error):.1f}% ({layout.method})</sup>"
        f"<br><sup>Σ|drawn − true| area = {100 * layout.region_error:.1f}% of union</sup>"
    )
    return _venn_figure(layout, labels, title + sub, colors)


def _members(v, labels: Sequence[str]) -> tuple[int, ...]:
    """Member indices from a tuple of labels, an int bit code (bit i = labels[i]) or a '101' string."""
    if isinstance(v, str) and set(v) <= {"0", "1"} and len(v) == len(labels):
        return tuple(i for i, ch in enumerate(v) if ch == "1")
    if isinstance(v, int | np.integer):
        return tuple(i for i in range(len(labels)) if int(v) >> i & 1)
    names = list(map(str, labels))
    items = [v] if isinstance(v, str) else list(v)
    bad = [x for x in items if str(x) not in names]
    if bad:
        raise FigureDataError(f"upset: members {bad} are not among the labels {names}.")
    return tuple(sorted(names.index(str(x)) for x in items))


@takes_data()
def upset(
    regions_df: pd.DataFrame,
    labels: Sequence[str],
    max_bars: int = 40,
    sort: str = "cardinality",
    title: str = "Intersections of masks (UpSet)",
    colors: Mapping | None = None,
) -> go.Figure:
    """UpSet view of exclusive intersections: columns members, count; N = len(labels) ≤ 8 or more.

    members is a tuple of labels, an int bit code (bit i = labels[i]) or a '0/1' string. Bars on
    top, the membership dot matrix below, set sizes (summed over every region) on the left.
    sort: "cardinality" (largest first), "degree" (fewest members first) or "input".
    """
    if regions_df.empty or not len(labels):
        return no_data_figure(title)
    _require(regions_df, ["members", "count"], "upset")
    if sort not in ("cardinality", "degree", "input"):
        raise FigureDataError(f"upset: sort must be 'cardinality', 'degree' or 'input'; got {sort!r}.")
    n = len(labels)
    rows = pd.DataFrame(
        {
            "members": [_members(v, labels) for v in regions_df["members"]],
            "count": pd.to_numeric(regions_df["count"]).to_numpy(dtype=np.float64, na_value=np.nan),
        }
    )
    rows = (
        rows[(rows["count"] > 0) & (rows["members"].map(len) > 0)]
        .groupby("members", sort=False, as_index=False)["count"]
        .sum()
    )
    if rows.empty:
        return no_data_figure(title, "every intersection is empty")
    union = rows["count"].sum()
    sizes = np.array([rows.loc[rows["members"].map(lambda m, i=i: i in m), "count"].sum() for i in range(n)])
    rows["degree"] = rows["members"].map(len)
    if sort == "cardinality":
        rows = rows.sort_values(["count", "degree"], ascending=[False, True], kind="stable")
    elif sort == "degree":
        rows = rows.sort_values(["degree", "count"], ascending=[True, False], kind="stable")
    shown = rows.head(max_bars)
    k = len(shown)
    x = np.arange(k)
    names = [" ∩ ".join(str(labels[i]) for i in m) for m in shown["members"]]
    colors = colors or color_map(labels)
    fig = make_subplots(
        rows=2,
        cols=2,
        column_widths=[0.22, 0.78],
        row_heights=[0.62, 0.38],
        specs=[[None, {}], [{}, {}]],
        horizontal_spacing=0.01,
        vertical_spacing=0.02,
    )
    cnt = shown["count"].to_numpy(dtype=np.float64, na_value=np.nan)
    fig.add_trace(
        go.Bar(
            x=x,
            y=cnt,
            marker_color="#333",
            customdata=np.stack([cnt, 100 * cnt / union], axis=-1),
            hovertext=names,
            text=[_compact(c) for c in cnt],
            textposition="outside",
            cliponaxis=False,
            textangle=-90 if k > 4 else 0,  # (side by side, five or more labels ran into each other at 1024 px)
            constraintext="none",
            hovertemplate="%{hovertext} (exclusive)<br>%{customdata[0]:,.0f} parameters"
            "<br>%{customdata[1]:.2f}% of union<extra></extra>",
        ),
        row=1,
        col=2,
    )
    gx, gy = np.meshgrid(x, np.arange(n))
    fig.add_trace(
        go.Scatter(x=gx.ravel(), y=gy.ravel(), mode="markers", marker={"color": "#ddd", "size": 11}, hoverinfo="skip"),
        row=2,
        col=2,
    )
    lx, ly = [], []
    for j, m in enumerate(shown["members"]):
        lx += [j] * len(m) + [None]
        ly += list(m) + [None]
    fig.add_trace(
        go.Scatter(
            x=lx,
            y=ly,
            mode="lines+markers",
            marker={"color": "#333", "size": 11},
            line={"color": "#333", "width": 2},
            hoverinfo="skip",
        ),
        row=2,
        col=2,
    )
    fig.add_trace(
        go.Bar(
            y=np.arange(n),
            x=sizes,
            orientation="h",
            marker_color=[colors[str(lab)] for lab in labels],
            customdata=np.stack([sizes, 100 * sizes / union], axis=-1),
            hovertext=list(map(str, labels)),
            hovertemplate="%{hovertext}<br>%{customdata[0]:,.0f} parameters<br>%{customdata[1]:.2f}% of union<extra></extra>",
        ),
        row=2,
        col=1,
    )
    # Axes: bars x/y, set sizes x2/y2, dots x3/y3. Bars and dots share x; dots and set sizes share y.
    fig.update_xaxes(matches="x3", visible=False, row=1, col=2)
    fig.update_yaxes(matches="y2", row=2, col=2)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, range=[-0.6, k - 0.4], row=2, col=2)
    fig.update_yaxes(title_text="intersection size", row=1, col=2)
    # long mask names (an upload's name and hash) cut in the middle, whole in the hover (as the pairwise matrix
    # does): one 74-character name took the chart's width and left the intersection bars a few pixels each
    # (cut apart where the names differ, and named in full under the chart: three runs that differ in their
    # middle read as one label, with no hover in a figure file); the key is the set-size axis's title, centred under
    # that narrow panel: lines of 90 characters ran past the chart's left edge at 1024 px, 42 fit (as the Venn's)
    cuts, key = cut_labels([str(lab) for lab in labels], line=_KEY_LINE)
    fig.update_yaxes(
        tickvals=np.arange(n),
        ticktext=cuts,
        range=[n - 0.5, -0.5],
        showgrid=False,
        row=2,
        col=1,
    )
    fig.update_yaxes(showgrid=False, zeroline=False, showticklabels=False, row=2, col=2)
    size_title = "set size" + "".join(f"<br><span style='font-size:11px'>{line}</span>" for line in key)
    fig.update_xaxes(autorange="reversed", title_text=size_title, row=2, col=1)
    sub = (
        f"{k} of {len(rows)} non-empty intersections, by {sort}"
        if len(rows) > k
        else f"{k} non-empty intersections, by {sort}"
    )
    return _style(
        fig, f"{title}<br><sup>{sub}</sup>", showlegend=False, bargap=0.25, height=420 + 24 * n + 15 * len(key)
    )
