"""How each numeric column of a table reads, the same in the app and in the HTML export.

One rule set (no Streamlit here; :func:`subnetviz.ui.table` turns it into column configs):

- counts (integer columns, or float columns holding only whole numbers ≥ 1000): thousands separators;
- shares (a column named like sparsity, density, share, o1, Jaccard, accuracy, ``*_frac``, forgetting…
  whose values all lie in [-1, 1]: a share or a difference of shares): percent, as the charts draw them;
  a share column holding a non-zero share below 1 % (which two decimals write with fewer than three digits:
  0.09 % for 0.0854 %, 0.00 % below 0.005 %) or one just short of 100 % (which they round to 100.00 %: one
  change among 65,536 entries): each cell on its own, two decimals from 1 % (``64.21 %``), three significant
  digits below (``0.0854 %``, trailing zeros down to two decimals: ``0.10 %``), scientific notation below
  0.01 % (``2.453e-3 %``) and, just below 100 %, the decimals the charts' cell labels use (``99.998 %``):
  never a rounding that hides a number;
- ratios against chance (``ratio*``, ``*_x_chance``): ``1.23×``;
- singular-value ratios σ_i(W_ft)/σ_i(W_base) (``sv_ratio``, ``sv_ratio_mean``): no ratio against chance but a
  number near 1 whose distance from 1 is the finding (RL moves σ by about 1e-4): as many fixed decimals as show
  that distance (``1.000500``); their deviations (``sv_ratio_maxdev``) take the rules of other floats;
- other floats with a non-zero magnitude below 10⁻³: scientific notation (``1.234e-5``), so a small
  number never reads as ``0.0000``; a KL (``kl``, ``kl_*``, ``*_kl``: nats or bits per token, usually in
  [10⁻³, 10⁻²] after finetuning) below 10⁻² too, so that it keeps four significant digits (``5.312e-3``, where
  the default four decimals wrote ``0.0053`` on the page and the export ``0.00531234``).

Formats are Streamlit ``NumberColumn`` format names or printf strings; :func:`format_value` writes
the same text in Python for the export.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from subnetviz.text import has_controls, visible_controls

COUNT, PERCENT, RATIO, SCIENTIFIC = "localized", "percent", "%.2f×", "%.3e"
SMALL_PERCENT = "small percent"  # a share column with a share below FEW_DIGITS or near 1: each cell on its own
FEW_DIGITS = 1e-2  # a share below 1 %: two decimals of a percent keep fewer than three significant digits
SMALL_SHARE = 1e-4  # a share below 0.01 %: in e-notation
NEAR_FULL = 99.995  # a share (in %) at or above this, below 100, reads 100.00 at two decimals
_SHARE = re.compile(
    r"(^|_)(sparsity|density|share|frac|fraction|o1|o2|jaccard|acc|accuracy|identical|kept|chance|progress|"
    r"capacity|exclusive|vs_first|vs_previous|vs_base|back_to_start|used|overlap|trained|forgetting|transfer)"
    r"($|_|@)",
    re.IGNORECASE,
)
_RATIO = re.compile(r"(^|_)(ratio|x_chance|times_chance)($|_)", re.IGNORECASE)
# σ ratios (their ``_ratio_`` matched _RATIO: 1.0005 and a deviation of 0.0025 read "1.00×" and "0.00×")
_SIGMA_RATIO = re.compile(r"(^|_)sv_ratio($|_)", re.IGNORECASE)
_DEVIATION = re.compile(r"(^|_)(maxdev|dev|std)$", re.IGNORECASE)
SMALL = 1e-3
_KL = re.compile(r"(^|_)kl($|_)", re.IGNORECASE)
KL_SMALL = 1e-2  # a KL column with a non-zero value below this: e-notation (four decimals kept one or two digits)
MISSING = "—"  # a missing value, in the app's tables (their placeholder) and in the export


def column_format(name: object, values: pd.Series) -> str | None:
    """The format of one column (``None``: the default, for text, booleans and ordinary floats)."""
    if values.dtype == bool or not pd.api.types.is_numeric_dtype(values):
        return None
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    v = v[np.isfinite(v)]
    text = str(name)
    if pd.api.types.is_integer_dtype(values):
        return COUNT
    if not len(v):
        return None
    if _SIGMA_RATIO.search(text):
        if not _DEVIATION.search(text):
            return near_one_format(v)
    elif _RATIO.search(text):
        return RATIO
    nonzero = np.abs(v[v != 0])
    if _SHARE.search(text) and v.min() >= -1 and v.max() <= 1:  # a share, or a difference of shares
        near_full = bool(np.any((nonzero < 1) & (100 * nonzero >= NEAR_FULL)))  # two decimals would say 100.00 %
        return SMALL_PERCENT if (len(nonzero) and nonzero.min() < FEW_DIGITS) or near_full else PERCENT
    # thousands separators for large numbers: whole ones (counts), and fractional ones with nothing below 1 that a
    # grouped display would round away (an expected count, 121,119.318)
    if np.abs(v).max() >= 1000 and (np.all(v == np.round(v)) or nonzero.min() >= 1):
        return COUNT
    if len(nonzero) and nonzero.min() < (KL_SMALL if _KL.search(text) else SMALL):
        return SCIENTIFIC
    return None


def near_one_format(values: np.ndarray) -> str:
    """The printf format of a column of numbers near 1 (finite ``values``): fixed decimals, two more than the
    place of the smallest non-zero distance from 1, so that distance reads with three digits (4 to 12
    decimals: ``1.000500``, ``0.999817``; ``1.0000`` where every value is exactly 1)."""
    dev = np.abs(np.asarray(values, dtype=np.float64) - 1.0)
    dev = dev[dev > 0]
    place = math.ceil(-math.log10(dev.min()) - 1e-9) if dev.size else 0  # (1 - 0.9999 is 1.0000000000000286e-4)
    decimals = int(np.clip(place + 2, 4, 12))
    return f"%.{decimals}f"


_FIXED = re.compile(r"%\.(\d+)f")  # a fixed-decimal printf format (:func:`near_one_format`)


def column_formats(df: pd.DataFrame) -> dict[str, str]:
    """Column -> format for every numeric column of ``df`` that has one."""
    out = {}
    for c in df.columns:
        f = column_format(c, df[c])
        if f is not None:
            out[str(c)] = f
    return out


def format_value(value: object, fmt: str | None) -> str:
    """``value`` as the app shows it under ``fmt`` (for the HTML export); missing values read '—'."""
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return MISSING  # (a nullable column's <NA> too, as the app shows it)
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        return str(value)
    x = float(value)
    if fmt == COUNT:  # as the browser's "localized" shows it: separators, at most three decimals, none trailing
        return f"{x:,.0f}" if x == round(x) else f"{x:,.3f}".rstrip("0").rstrip(".")
    if fmt == PERCENT:
        return f"{100 * x:,.2f} %"
    if fmt == SMALL_PERCENT:
        return _small_percent(100 * x)
    if fmt == RATIO:
        return f"{x:.2f}×"
    if fmt == SCIENTIFIC:
        return _e(x)
    if fmt is not None and (fixed := _FIXED.fullmatch(fmt)):
        return f"{x:.{int(fixed.group(1))}f}"
    return f"{x:.6g}"


def _e(x: float) -> str:
    """``x`` in e-notation with three decimals as the app's tables write it (no zero padding of the exponent,
    1.200e-6 where Python writes 1.200e-06); an exact zero reads ``0``, not ``0.000e+0``."""
    return "0" if x == 0 else re.sub(r"e([+-])0(\d)$", r"e\1\2", f"{x:.3e}")


def _small_percent(v: float) -> str:
    """A share (already in percent) of a column that holds shares below 1 % or just short of 100 %: two
    decimals from 1 %, three significant digits below (``0.0854 %``, where two decimals read 0.09 % beside a
    "6.35× chance" that says 0.0854 against 0.01345), e-notation below 0.01 %, and just short of 100 % as many
    decimals as tell it from 100, as the charts' cell labels write it (``99.9985 %``; past six, ``>99.9999 %``),
    never ``100.00 %`` for a share where something changed."""
    if abs(v) < 100 * SMALL_SHARE:  # (an exact zero: 0)
        return f"{_e(v)} %"
    if 0 < abs(v) < 100 * FEW_DIGITS:
        return f"{_three_digits(v)} %"
    if NEAR_FULL <= abs(v) < 100:
        digits = next((d for d in range(2, 7) if abs(float(f"{v:.{d}f}")) < 100), None)
        return f"{v:.{digits}f} %" if digits else (">99.9999 %" if v > 0 else "<-99.9999 %")
    return f"{v:,.2f} %"


def _three_digits(v: float) -> str:
    """``v`` (0 < |v| < 1) with three significant digits, its trailing zeros dropped down to two decimals
    (``0.0854``, ``0.10``): the digits Streamlit's "percent" format showed on the page."""
    decimals = 2 - math.floor(math.log10(abs(v)))
    text = f"{v:.{decimals}f}"
    if abs(float(text)) >= 1:  # (0.99951 rounds up to 1.000)
        return f"{v:.2f}"
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


def e_text(value: object, percent: bool = False) -> str:
    """One cell of an e-notation column as the app's tables show it (``percent``: a small-share column's
    value, already × 100, as :func:`_small_percent` writes it); a missing value reads as the tables' dash."""
    if value is None or not isinstance(value, int | float | np.integer | np.floating) or math.isnan(value):
        return MISSING
    return _small_percent(float(value)) if percent else _e(float(value))


def share_format(values) -> str:
    """The printf format of a whole small-share column (values already × 100) of a table too large for a Styler
    (:data:`SHOWN_SMALL_PERCENT` cell by cell costs seconds there): fixed decimals, as few as tell every value from
    0 % and 100 % (2 to 8: ``99.9999 %`` beside ``64.2100 %``), so the column still sorts by its numbers; printf's
    e-notation only where 8 decimals do not. ``%.3e`` for the whole column wrote 99.9999 % as ``1.000e+2 %`` and
    64.21 % as ``6.421e+1 %``."""
    v = np.abs(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v)]
    for decimals in range(2, 9):
        half = 0.5 * 10.0**-decimals  # a value nearer 0 or 100 than this reads 0 or 100 at these decimals
        if not np.any(((v > 0) & (v < half)) | ((v < 100) & (v >= 100 - half))):
            return f"%.{decimals}f %%"
    return SHOWN_SMALL_PERCENT


def formatted_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every numeric column written as text by :func:`format_value` (for the export)."""
    formats = column_formats(df)
    out = df.copy()
    for c in df.columns:
        if str(c) in formats or pd.api.types.is_float_dtype(df[c]):
            out[c] = [format_value(v, formats.get(str(c))) for v in df[c]]
    return out


SHOWN_PERCENT = "%.2f %%"  # a share column in the app's tables: its values × 100 (display_frame)
SHOWN_SMALL_PERCENT = "%.3e %%"
E_NOTATION = (SCIENTIFIC, SHOWN_SMALL_PERCENT)  # the app's e-notation formats (printf writes a zero 0.000e+0)


def display_frame(df: pd.DataFrame, keep: tuple[str, ...] = ()) -> tuple[pd.DataFrame, dict[str, str]]:
    """``df`` as the app's tables show it, and each column's format there: shares in percent with two
    decimals, as the export writes them (Streamlit's own "percent" drops trailing zeros, so one column
    read "47%" above "48.5%"); other columns as :func:`column_formats` says. The values of a share
    column are multiplied by 100 for the view only: downloads hold the fractions. Columns in ``keep``
    (the caller configures them itself, e.g. a progress bar over [0, 1]) are left as they are."""
    formats = {c: f for c, f in column_formats(df).items() if c not in keep}
    shares = [c for c in df.columns if formats.get(str(c)) in (PERCENT, SMALL_PERCENT)]
    if shares:
        df = df.copy()
        for c in shares:
            df[c] = pd.to_numeric(df[c]) * 100
    texts = [c for c in df.columns if df[c].dtype == object or isinstance(df[c].dtype, pd.StringDtype)]
    marked = [c for c in texts if df[c].map(lambda v: isinstance(v, str) and has_controls(v)).any()]
    if marked:  # a U+202E in a name reversed the rest of its cell on screen: shown as its code point
        df = df.copy()
        for c in marked:
            df[c] = df[c].map(lambda v: visible_controls(v) if isinstance(v, str) else v)
    shown = {PERCENT: SHOWN_PERCENT, SMALL_PERCENT: SHOWN_SMALL_PERCENT}
    return df, {c: shown.get(f, f) for c, f in formats.items()}
