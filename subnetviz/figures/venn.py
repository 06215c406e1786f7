"""Area-proportional Venn layouts for 2 and 3 sets (the geometry only; drawing is in figures).

Input is the exclusive region counts in the canonical order: ``(10, 01, 11)`` for two sets and
``(100, 010, 110, 001, 101, 011, 111)`` for three, where the i-th character says whether set i
is in the region. Areas are in units of the union (the union of the target regions has area 1).

Two sets are exact: radii ``sqrt(A/pi)`` and the centre distance that makes the lens area equal
``|A∩B|`` (``scipy.optimize.brentq``; the lens area is monotone in the distance). Three sets:
each pairwise distance is exact for its pair, the third circle goes where the law of cosines puts
it, and when those distances cannot form a triangle (or a cheaper-error layout exists) the
centres are moved to minimise the region error. Region areas of the drawn layout are then
computed exactly from circle geometry (Green's theorem over the arcs bounding each
intersection), so the reported ``region_error`` is the layout's true error, not the target's.
The maths follows matplotlib-venn's layout split (MIT), re-derived here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from subnetviz.errors import SubnetvizError

REGIONS2 = ("10", "01", "11")
REGIONS3 = ("100", "010", "110", "001", "101", "011", "111")
_GAP = 0.04  # gap between disjoint circles, as a fraction of the sum of their radii (any gap is exact)


class VennInputError(SubnetvizError):
    """Region counts that cannot be drawn (wrong length, negative, all zero)."""


@dataclass(frozen=True)
class VennLayout:
    """Circles and region geometry of one Venn diagram.

    centers: (n, 2) circle centres; radii: (n,); regions: region codes in canonical order;
    target: (2**n - 1,) target region areas (counts / union); actual: the drawn layout's exact
    region areas in the same units; label_points: (2**n - 1, 2) where each region's label goes
    (NaN where the drawn region is empty); method: "exact", "pairwise" or "cost".
    """

    centers: np.ndarray
    radii: np.ndarray
    regions: tuple[str, ...]
    counts: np.ndarray
    target: np.ndarray
    actual: np.ndarray
    label_points: np.ndarray
    method: str

    @property
    def region_error(self) -> float:
        """Σ|actual − target| / Σ target over the regions: 0 is a perfect layout."""
        return float(np.abs(self.actual - self.target).sum() / self.target.sum())


# The page shows "layout accuracy" = 1 − region_error; the two-set layout is exact (error ~1e-12).
Venn2Layout = Venn3Layout = VennLayout


def lens_area(r1: float, r2: float, d: float) -> float:
    """Area of the intersection of two circles with radii r1, r2 and centre distance d."""
    if d >= r1 + r2:
        return 0.0
    if d <= abs(r1 - r2):
        return math.pi * min(r1, r2) ** 2
    a1 = math.acos(max(-1.0, min(1.0, (d * d + r1 * r1 - r2 * r2) / (2 * d * r1))))
    a2 = math.acos(max(-1.0, min(1.0, (d * d + r2 * r2 - r1 * r1) / (2 * d * r2))))
    # Each circular segment is r²(a − sin a cos a); their sum is the lens.
    return r1 * r1 * (a1 - math.sin(2 * a1) / 2) + r2 * r2 * (a2 - math.sin(2 * a2) / 2)


def distance_for_overlap(r1: float, r2: float, area: float) -> float:
    """Centre distance at which two circles overlap by exactly ``area``."""
    full = math.pi * min(r1, r2) ** 2
    if area <= 0 or min(r1, r2) == 0:
        return (r1 + r2) * (1 + _GAP)
    if area >= full * (1 - 1e-12):
        return abs(r1 - r2) / 2  # contained: any d ≤ |r1 − r2| is exact; the middle reads best
    from scipy.optimize import brentq  # here: scipy.optimize is ~0.8 s of a page's first import

    return brentq(lambda d: lens_area(r1, r2, d) - area, abs(r1 - r2), r1 + r2, xtol=1e-14, rtol=1e-14)


def intersection_area(centers: np.ndarray, radii: np.ndarray) -> float:
    """Exact area of the intersection of all the given circles (k ≥ 1).

    The boundary of an intersection of disks is made of arcs; each arc of circle i that lies
    inside every other circle contributes ½∮(x dy − y dx) along it.
    """
    c = np.asarray(centers, dtype=np.float64)
    r = np.asarray(radii, dtype=np.float64)
    if np.any(r <= 0):
        return 0.0
    k = len(r)
    total = 0.0
    for i in range(k):
        if any(np.array_equal(c[i], c[j]) and r[i] == r[j] for j in range(i)):
            continue  # a duplicate circle: its boundary is already counted once
        angles = [0.0, 2 * math.pi]
        for j in range(k):
            if j == i:
                continue
            dx, dy = c[j] - c[i]
            d = math.hypot(dx, dy)
            if d == 0 or d >= r[i] + r[j] or d <= abs(r[i] - r[j]):
                continue
            base = math.atan2(dy, dx)
            half = math.acos(max(-1.0, min(1.0, (d * d + r[i] ** 2 - r[j] ** 2) / (2 * d * r[i]))))
            angles += [(base - half) % (2 * math.pi), (base + half) % (2 * math.pi)]
        angles.sort()
        for t1, t2 in zip(angles[:-1], angles[1:], strict=True):
            if t2 - t1 < 1e-15:
                continue
            mid = (t1 + t2) / 2
            p = c[i] + r[i] * np.array([math.cos(mid), math.sin(mid)])
            inside = all(np.hypot(*(p - c[j])) <= r[j] * (1 + 1e-12) for j in range(k) if j != i)
            if inside:
                cx, cy = c[i]
                total += 0.5 * (
                    r[i] ** 2 * (t2 - t1)
                    + cx * r[i] * (math.sin(t2) - math.sin(t1))
                    - cy * r[i] * (math.cos(t2) - math.cos(t1))
                )
    return total


def region_areas(centers: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Exact exclusive region areas of n circles in canonical order (n = 2 or 3)."""
    n = len(radii)
    codes = REGIONS2 if n == 2 else REGIONS3
    inter = {}
    for size in range(1, n + 1):
        for subset in combinations(range(n), size):
            idx = list(subset)
            if size == 1:
                inter[subset] = math.pi * radii[idx[0]] ** 2
            elif size == 2:  # the closed-form lens; the arc integral is for the triple
                inter[subset] = lens_area(
                    radii[idx[0]], radii[idx[1]], float(np.hypot(*(centers[idx[0]] - centers[idx[1]])))
                )
            else:
                inter[subset] = intersection_area(centers[idx], radii[idx])
    out = []
    for code in codes:
        members = tuple(i for i, ch in enumerate(code) if ch == "1")
        others = [i for i in range(n) if i not in members]
        # Inclusion–exclusion: points in all members, minus those also in any other circle.
        area = 0.0
        for size in range(len(others) + 1):
            for extra in combinations(others, size):
                area += (-1) ** size * inter[tuple(sorted(members + extra))]
        out.append(area)
    return np.maximum(np.array(out), 0.0)


def _targets(counts, n: int) -> tuple[np.ndarray, np.ndarray]:
    codes = REGIONS2 if n == 2 else REGIONS3
    arr = np.asarray(counts, dtype=np.float64).ravel()
    if arr.shape != (len(codes),):
        raise VennInputError(
            f"A {n}-set Venn needs {len(codes)} exclusive region counts in the order {codes}; got {arr.size}."
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise VennInputError(f"Venn region counts must be finite and ≥ 0; got {arr.tolist()}.")
    if arr.sum() == 0:
        raise VennInputError("All Venn region counts are 0: there is nothing to draw (every mask is empty).")
    return arr, arr / arr.sum()


def _set_sizes(target: np.ndarray, n: int) -> np.ndarray:
    codes = REGIONS2 if n == 2 else REGIONS3
    return np.array([sum(t for t, code in zip(target, codes, strict=True) if code[i] == "1") for i in range(n)])


def _label_points(centers: np.ndarray, radii: np.ndarray, grid: int = 300) -> np.ndarray:
    """A point deep inside each region: the grid point farthest from every circle's edge."""
    n = len(radii)
    codes = REGIONS2 if n == 2 else REGIONS3
    lo = (centers - radii[:, None]).min(axis=0)
    hi = (centers + radii[:, None]).max(axis=0)
    xs = np.linspace(lo[0], hi[0], grid)
    ys = np.linspace(lo[1], hi[1], grid)
    px, py = np.meshgrid(xs, ys)
    dist = np.stack([np.hypot(px - cx, py - cy) for cx, cy in centers])  # (n, grid, grid)
    inside = dist <= radii[:, None, None]
    clearance = np.abs(dist - radii[:, None, None]).min(axis=0)
    points = np.full((len(codes), 2), np.nan)
    for k, code in enumerate(codes):
        sel = np.ones_like(clearance, dtype=bool)
        for i, ch in enumerate(code):
            sel &= inside[i] if ch == "1" else ~inside[i]
        if sel.any():
            flat = np.where(sel, clearance, -1.0).argmax()
            points[k] = px.flat[flat], py.flat[flat]
    return points


def _finish(counts, target, centers, radii, method) -> VennLayout:
    centers = np.asarray(centers, dtype=np.float64)
    # Centre the drawing on the origin so axes ranges are symmetric.
    mid = ((centers - radii[:, None]).min(axis=0) + (centers + radii[:, None]).max(axis=0)) / 2
    centers = centers - mid
    codes = REGIONS2 if len(radii) == 2 else REGIONS3
    return VennLayout(
        centers=centers,
        radii=radii,
        regions=codes,
        counts=counts,
        target=target,
        actual=region_areas(centers, radii),
        label_points=_label_points(centers, radii),
        method=method,
    )


def venn2_layout(counts) -> VennLayout:
    """Exact 2-set layout for region counts (10, 01, 11): circle areas and lens area match."""
    counts, target = _targets(counts, 2)
    radii = np.sqrt(_set_sizes(target, 2) / math.pi)
    d = distance_for_overlap(radii[0], radii[1], target[2])
    return _finish(counts, target, [[0.0, 0.0], [d, 0.0]], radii, "exact")


def _error(centers: np.ndarray, radii: np.ndarray, target: np.ndarray) -> float:
    return float(np.abs(region_areas(centers, radii) - target).sum() / target.sum())


def _triangle(ab: float, ac: float, bc: float, clip: bool) -> np.ndarray | None:
    """Centres with these pairwise distances (A at the origin, B on +x, C below), by the law of cosines.

    None when the distances break the triangle inequality, unless clip: then the offending
    distance is clipped to the nearest feasible value (a collinear layout).
    """
    if clip:
        ac = min(max(ac, abs(ab - bc)), ab + bc)
    if ab <= 0:
        return np.array([[0.0, 0.0], [0.0, 0.0], [0.0, -ac]]) if clip else None
    x = (ac**2 - bc**2 + ab**2) / (2 * ab)
    h2 = ac**2 - x**2
    if h2 < -1e-12 * max(1.0, ac**2):
        return None
    return np.array([[0.0, 0.0], [ab, 0.0], [x, -math.sqrt(max(h2, 0.0))]])


def venn3_layout(counts, method: str = "auto") -> VennLayout:
    """Best-effort 3-set layout for region counts (100, 010, 110, 001, 101, 011, 111).

    method "pairwise": circle areas and every pairwise overlap exact (when the three distances
    form a triangle); "cost": centres moved to minimise the region error; "auto": pairwise when
    it exists, unless the cost layout lowers the error by more than 1 % of the union.
    """
    if method not in ("auto", "pairwise", "cost"):
        raise VennInputError(f"Unknown Venn layout method {method!r}; expected 'auto', 'pairwise' or 'cost'.")
    counts, target = _targets(counts, 3)
    sizes = _set_sizes(target, 3)
    radii = np.sqrt(sizes / math.pi)
    t = dict(zip(REGIONS3, target, strict=True))
    pair = {
        (0, 1): t["110"] + t["111"],
        (0, 2): t["101"] + t["111"],
        (1, 2): t["011"] + t["111"],
    }
    d = {ij: distance_for_overlap(radii[ij[0]], radii[ij[1]], a) for ij, a in pair.items()}
    pairwise = _triangle(d[0, 1], d[0, 2], d[1, 2], clip=False)
    if method == "pairwise":
        if pairwise is None:
            raise VennInputError(
                "No 3-circle layout makes all three pairwise overlaps exact for these counts "
                "(the distances break the triangle inequality); use method='auto' or 'cost'."
            )
        return _finish(counts, target, pairwise, radii, "pairwise")

    def cost(p: np.ndarray) -> float:
        return _error(np.array([[0.0, 0.0], [p[0], 0.0], [p[1], p[2]]]), radii, target)

    # Nelder–Mead (the error is not smooth) from the pairwise layout, or from the nearest triangle
    # when there is none, and from a collinear start; the lowest error wins.
    from scipy.optimize import minimize

    scale = float(radii.max()) or 1.0
    starts = [pairwise if pairwise is not None else _triangle(d[0, 1], d[0, 2], d[1, 2], clip=True)]
    starts.append(np.array([[0.0, 0.0], [d[0, 1], 0.0], [d[0, 1] + d[1, 2], 0.0]]))
    best, best_err = None, np.inf
    for start in starts:
        p0 = np.array([start[1, 0], start[2, 0], start[2, 1]])
        simplex = np.vstack([p0, p0 + [0.2 * scale, 0, 0], p0 + [0, 0.2 * scale, 0], p0 + [0, 0, 0.2 * scale]])
        res = minimize(
            cost,
            p0,
            method="Nelder-Mead",
            options={"initial_simplex": simplex, "xatol": 1e-5 * scale, "fatol": 1e-5, "maxiter": 600},
        )
        if res.fun < best_err:
            best_err, best = res.fun, np.array([[0.0, 0.0], [res.x[0], 0.0], [res.x[1], res.x[2]]])
    if method == "cost" or pairwise is None:
        return _finish(counts, target, best, radii, "cost")
    if _error(best, radii, target) < _error(pairwise, radii, target) - 0.01:
        return _finish(counts, target, best, radii, "cost")
    return _finish(counts, target, pairwise, radii, "pairwise")
