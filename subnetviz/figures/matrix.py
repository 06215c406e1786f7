"""Figures of one update matrix: which entries changed (block means), the signed Δ image and the
row / column shares of changed entries, downsampled for the browser.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from subnetviz.figures.style import (
    DIVERGING,
    PALETTE,
    SEQUENTIAL,
    FigureDataError,
    _style,
    no_data_figure,
    subtitle,
    takes_data,
    title_margin,
)
from subnetviz.figures.updates import percent_text

AXIS_TITLES = {
    "out_in": ("row (output dim)", "column (input dim)"),  # an nn.Linear's weight, [out, in]
    "in_out": ("row (input dim)", "column (output dim)"),  # transformers' Conv1D (GPT-2), stored [in, out]
    "token_dim": ("row (token)", "column (hidden dim)"),  # an input embedding, [vocab, hidden]
    "position_dim": ("row (position)", "column (hidden dim)"),  # a learned position embedding, [positions, hidden]
    "": ("row", "column"),  # not known which is which
}
"""(y title, x title) of a matrix image by the weight's orientation (:attr:`MatrixUpdate.orientation`)."""


# a block's hover: its rows and columns (customdata 0-3 of _block_custom)
_BLOCK_RANGES = "rows %{customdata[0]:.0f}–%{customdata[1]:.0f}, cols %{customdata[2]:.0f}–%{customdata[3]:.0f}"


def _block_custom(r0, rows_in, c0, cols_in, *more) -> np.ndarray:
    """Each block's first and last row, first and last column, then ``more`` (per block), as float32 customdata:
    a quarter of the bytes plotly would send for float64 stacks."""
    parts = (r0[:, None], (r0 + rows_in - 1)[:, None], c0[None, :], (c0 + cols_in - 1)[None, :], *more)
    return np.stack(np.broadcast_arrays(*parts), axis=-1).astype(np.float32)


@dataclass(frozen=True)
class MatrixBlocks:
    """An m × n matrix as its images draw it: the sum of each f×f block of the grid :func:`_blocks` makes for
    ``max_side`` (edge blocks ragged). Built from a whole array (:meth:`of`) or a band of rows at a time
    (:meth:`empty`, then :meth:`add` with bands that start on a block row): a matrix of 10^9 entries is
    drawn without being held. ``binary``: the values were a bool mask (0 / 1 at full resolution)."""

    shape: tuple[int, int]
    f: int
    sums: np.ndarray
    binary: bool = False

    @classmethod
    def empty(cls, shape: tuple[int, int], max_side: int, binary: bool = False) -> MatrixBlocks:
        f, r0, c0, _, _ = _blocks(shape, max_side)
        return cls((int(shape[0]), int(shape[1])), f, np.zeros((r0.size, c0.size)), binary)

    @classmethod
    def of(cls, a, max_side: int) -> MatrixBlocks:
        a = np.asarray(a)
        out = cls.empty(a.shape, max_side, binary=a.dtype == bool)
        out.add(0, a)
        return out

    def add(self, row: int, band: np.ndarray) -> None:
        """Add rows ``row`` … ``row + len(band) - 1``, anywhere: rows before the band's first block row are added to
        the block they end (bands of whole FP8 scale blocks or GPTQ words need not start on one: 128-row scale
        blocks in 56-row cells raised here)."""
        if head := min((-row) % self.f, len(band)):
            self.sums[row // self.f] += _block_sum(band[:head], self.f)[0]
            row, band = row + head, band[head:]
            if not len(band):
                return
        part = _block_sum(band, self.f)
        self.sums[row // self.f : row // self.f + part.shape[0]] += part


@takes_data("subject")
def delta_image(
    delta_2d,
    max_side: int = 256,
    title: str = "Signed update Δ = W_ft − W_base",
    subject: str = "",
    orientation: str = "out_in",
) -> go.Figure:
    """Downsampled signed Δ image (of a 2-D array or its :class:`MatrixBlocks`) on a diverging scale centred on 0
    (symmetric range, blocks as in :func:`matrix_image`).
    ``subject`` (e.g. "model · matrix") opens the subtitle; ``orientation`` names the axes (:data:`AXIS_TITLES`)."""
    blocks = delta_2d if isinstance(delta_2d, MatrixBlocks) else _as_blocks(delta_2d, max_side, "delta_image")
    if blocks is None or blocks.sums.size == 0:  # (a [0, N] weight: no block to draw)
        return no_data_figure(title)
    f, r0, c0, rows_in, cols_in = _grid(blocks)
    mean = blocks.sums / np.outer(rows_in, cols_in)
    span = float(np.nanmax(np.abs(mean))) or 1.0
    if f == 1:  # one cell per entry: its row, column and Δ
        trace = {"customdata": None, "hovertemplate": "row %{y:.0f}, col %{x:.0f}: Δ %{z:.3e}<extra></extra>"}
    else:  # a cell is a block's mean: its ranges, as matrix_image hovers them (the centre's entry may be 0)
        trace = {
            "customdata": _block_custom(r0, rows_in, c0, cols_in),
            "hovertemplate": _BLOCK_RANGES + "<br>mean Δ of the block %{z:.3e}<extra></extra>",
        }
    fig = go.Figure(
        go.Heatmap(
            # (float32 where it holds the values: a Δ past its range, bf16 weights from 3e38 to -3e38, stays finite)
            z=mean.astype(np.float32) if span <= float(np.finfo(np.float32).max) else mean,
            x=c0 + (cols_in - 1) / 2,  # each block's centre, as matrix_image places it (edge blocks ragged)
            y=r0 + (rows_in - 1) / 2,
            colorscale=DIVERGING,
            zmid=0,
            zmin=-span,
            zmax=span,
            colorbar={"title": {"text": "Δ"}, "exponentformat": "e"},  # on top: at the side it turns, and reads ◁
            **trace,
        )
    )
    return _matrix_layout(fig, title, blocks.shape, f, subject, orientation)


def _as_blocks(a, max_side: int, builder: str) -> MatrixBlocks | None:
    """A 2-D array (NumPy or torch, any device) as its :class:`MatrixBlocks`; None when it is empty."""
    if hasattr(a, "detach"):  # a torch tensor, possibly on the GPU
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.size == 0:
        return None
    if a.ndim != 2:
        raise FigureDataError(f"{builder}: expected a 2-D array (rows, cols); got shape {a.shape}.")
    return MatrixBlocks.of(a, max_side)


def _grid(blocks: MatrixBlocks):
    """(f, first row of each block, first column, rows per block, columns per block) of ``blocks``."""
    f, (m, n) = blocks.f, blocks.shape
    r0, c0 = np.arange(0, m, f), np.arange(0, n, f)
    return f, r0, c0, np.minimum(r0 + f, m) - r0, np.minimum(c0 + f, n) - c0


def _blocks(shape: tuple[int, int], max_side: int):
    """The block grid of an m × n matrix shown in at most ``max_side`` cells a side: block size
    f = ceil(max(m, n) / max_side) on both axes (aspect kept), each block's first row and column, and
    how many rows / columns each block holds (the last ones ragged)."""
    m, n = shape
    f = max(1, int(np.ceil(max(m, n) / max_side)))
    r0, c0 = np.arange(0, m, f), np.arange(0, n, f)
    return f, r0, c0, np.minimum(r0 + f, m) - r0, np.minimum(c0 + f, n) - c0


def _matrix_layout(
    fig: go.Figure, title: str, shape: tuple[int, int], f: int, subject: str = "", orientation: str = "out_in"
) -> go.Figure:
    """A matrix image's layout: what it shows (``subject``), its size and what a cell shows (an entry, or the mean
    of a block: f×f, or fewer rows / columns where the matrix has fewer than f) under the title, row 0 on top,
    square cells, the axes named by ``orientation`` (:data:`AXIS_TITLES`)."""
    m, n = shape
    block = f"{min(f, m)}×{min(f, n)}"  # a 4096 × 16 matrix in 32-row blocks: 32×16, not 32×32
    ragged = (m > f and m % f) or (n > f and n % f)
    sub = (
        f"{m}×{n} · each cell the mean of a {block} block" + (" (fewer at the edges)" if ragged else "")
        if f > 1
        else f"{m}×{n} · full resolution (a cell per entry)"
    )
    if orientation not in AXIS_TITLES:
        raise FigureDataError(f"matrix figures: orientation must be one of {sorted(AXIS_TITLES)}; got {orientation!r}.")
    y_title, x_title = AXIS_TITLES[orientation]
    # the model, matrix, size and cell on lines broken at their " · ": in one line they ran 130 px past a 274 px
    # chart (half the page at 1024 px)
    head = title + subtitle(f"{subject} · {sub}" if subject else sub)
    _style(fig, head, x_title, y_title, margin={"l": 70, "r": 30, "t": title_margin(head), "b": 60})
    fig.update_yaxes(autorange="reversed", scaleanchor="x", scaleratio=1, constrain="domain")
    fig.update_xaxes(constrain="domain")
    return fig


def _block_sum(a: np.ndarray, f: int) -> np.ndarray:
    """Sum of f×f blocks of a 2-D array (edge blocks are smaller), without a padded copy.

    Full blocks go through one reshape-sum (about 10× faster than ``np.add.reduceat`` on a bool
    matrix); the ragged last block row/column are summed on their own.
    """
    m, n = a.shape
    mb, nb = m // f, n // f
    dt = np.int64 if a.dtype == bool or np.issubdtype(a.dtype, np.integer) else np.float64
    out = np.zeros((-(-m // f), -(-n // f)), dtype=np.float64)
    out[:mb, :nb] = a[: mb * f, : nb * f].reshape(mb, f, nb, f).sum(axis=(1, 3), dtype=dt)
    # explicit sizes, no -1: with fewer rows (columns) than a block, -1 cannot be inferred from 0 entries
    if n % f:
        out[:mb, nb] = a[: mb * f, nb * f :].reshape(mb, f, n - nb * f).sum(axis=(1, 2), dtype=dt)
    if m % f:
        out[mb, :nb] = a[mb * f :, : nb * f].reshape(m - mb * f, nb, f).sum(axis=(0, 2), dtype=dt)
    if m % f and n % f:
        out[mb, nb] = a[mb * f :, nb * f :].sum(dtype=dt)
    return out


@takes_data("subject")
def matrix_image(
    mask_2d, max_side: int = 256, title: str = "Which entries changed", subject: str = "", orientation: str = "out_in"
) -> go.Figure:
    """Downsampled image of a 2-D mask (bool, or float in [0, 1]; or its :class:`MatrixBlocks`): share changed
    per block, in %.
    ``subject`` (e.g. "model · matrix") opens the subtitle; a bool mask at full resolution gets a two-colour
    key (unchanged / changed) instead of a 0–100 % scale; ``orientation`` names the axes (:data:`AXIS_TITLES`).

    The same block size f = ceil(max(m, n) / max_side) is used on both axes so the aspect ratio
    is kept; hover gives the original row/column ranges and the changed count of each block.
    """
    blocks = mask_2d if isinstance(mask_2d, MatrixBlocks) else _as_blocks(mask_2d, max_side, "matrix_image")
    if blocks is None or blocks.sums.size == 0:  # (a [0, N] weight: no block to draw)
        return no_data_figure(title)
    f, r0, c0, rows_in, cols_in = _grid(blocks)
    sums = blocks.sums
    counts = np.outer(rows_in, cols_in).astype(np.float64)
    share = 100 * sums / counts
    if f == 1:  # one cell per entry: row and column are the axes, nothing else to say (keeps the payload small)
        trace = {"customdata": None, "hovertemplate": "row %{y:.0f}, col %{x:.0f}: %{z:.0f}% changed<extra></extra>"}
    else:  # a block per cell: its ranges and counts
        trace = {
            "customdata": _block_custom(r0, rows_in, c0, cols_in, sums, counts),
            "hovertemplate": _BLOCK_RANGES
            + "<br>changed %{customdata[4]:,.0f} of %{customdata[5]:,.0f} (%{z:.2f}%)<extra></extra>",
        }
    binary = f == 1 and blocks.binary
    fig = go.Figure(
        go.Heatmap(
            z=share.astype(np.float32),
            x=c0 + (cols_in - 1) / 2,
            y=r0 + (rows_in - 1) / 2,
            # a bool mask a cell per entry is 0 or 100: two colours (Viridis' ends) and their names
            colorscale=[[0, "#440154"], [0.5, "#440154"], [0.5, "#fde725"], [1, "#fde725"]] if binary else SEQUENTIAL,
            zmin=0,
            zmax=100,
            colorbar=(
                {"tickvals": [25, 75], "ticktext": ["unchanged", "changed"]}
                if binary
                else {"title": {"text": "changed (%)"}}
            ),
            **trace,
        )
    )
    return _matrix_layout(fig, title, blocks.shape, f, subject, orientation)


def _downsample_1d(v: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray, int]:
    f = max(1, int(np.ceil(v.size / max_points)))
    starts = np.arange(0, v.size, f)
    means = np.add.reduceat(v, starts) / (np.minimum(starts + f, v.size) - starts)
    return starts + (np.minimum(starts + f, v.size) - starts - 1) / 2, means, f


@takes_data("subject")
def row_col_ratios(
    row_ratio,
    col_ratio,
    max_points: int = 2048,
    title: str = "Share of entries changed per row and per column",
    subject: str = "",
    orientation: str = "out_in",
) -> go.Figure:
    """Two panels: fraction changed per row and per column, in %, each axis named by ``orientation`` (an
    nn.Linear's rows are its output dims, a Conv1D's its input dims: :data:`AXIS_TITLES`); ``subject``
    (e.g. "model · matrix") under the title."""
    r, c = np.asarray(row_ratio, dtype=np.float64).ravel(), np.asarray(col_ratio, dtype=np.float64).ravel()
    if r.size == 0 and c.size == 0:
        return no_data_figure(title)
    # one y axis for both panels (they share a range): a y title on the column panel sat inside the row panel's
    # plotting area at 1024 px, over its line
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06)
    # One y range for both panels, fitted to the data: on a fixed 0-100 axis a matrix with 2 % changed
    # per row drew a flat line on the floor.
    finite = np.concatenate([r, c])
    finite = finite[np.isfinite(finite)]
    top = min(100.0, max(1.0, 115 * float(finite.max()))) if finite.size else 100.0
    if orientation not in AXIS_TITLES:
        raise FigureDataError(f"row_col_ratios: orientation must be one of {sorted(AXIS_TITLES)}; got {orientation!r}.")
    # what each index is ("output dim", "input dim"; nothing where not known), from the image's axis titles
    dims = {
        what: title.removeprefix(what).strip(" ()")
        for what, title in zip(("row", "column"), AXIS_TITLES[orientation], strict=True)
    }
    for k, (v, what) in enumerate(((r, "row"), (c, "column")), start=1):
        if v.size == 0:
            continue
        x, y, f = _downsample_1d(v, max_points)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=100 * y,
                mode="lines",
                name=what,
                line={"color": PALETTE[k - 1], "width": 1},
                text=percent_text(100 * y, decimals=2),  # in the hover: 1 of 150,000 entries is not 0.00 %
                hovertemplate=f"{what} %{{x:.0f}}<br>changed %{{text}}%<extra></extra>",
            ),
            row=1,
            col=k,
        )
        said = "; ".join(filter(None, (dims[what], f"mean of {f}" if f > 1 else "")))
        fig.update_xaxes(title_text=f"{what} index" + (f" ({said})" if said else ""), row=1, col=k)
        fig.update_yaxes(title_text="changed (%)" if k == 1 else None, range=[0, top], row=1, col=k)
    head = title + subtitle(subject)
    return _style(fig, head, showlegend=False, margin={"l": 70, "r": 30, "t": title_margin(head), "b": 60})
