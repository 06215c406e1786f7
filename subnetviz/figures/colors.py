"""Colours that mean the same thing on every chart: one colour per module kind, and masks coloured by their model.

Charts coloured by module kind (Spectra's singular values, the subspaces scatter, Series' per-module lines) each
took palette colours in their own order, so down_proj was blue on one, green on the next and yellow on a third.
:func:`module_colors` gives a kind the same colour wherever it is drawn. :func:`colors_after` colours models as
:func:`~subnetviz.figures.style.color_map` does (by their place in the workspace) and other things after them,
in colours no model there has.
"""

from __future__ import annotations

from collections.abc import Sequence

from subnetviz.figures.style import MODULE_ORDER, _natural, color_map, series_color

# The kinds of nearly every decoder, each a colour of its own: attention in blues, green and pink, the MLP in
# orange, vermillion and black, the embedding and head in dark colours of Tol's scheme, the norms in his light or
# muted ones. Yellow (#F0E442) is left out: a thin yellow line is hard to see on white.
_FIXED = {
    "q": "#0072B2",
    "k": "#56B4E9",
    "v": "#009E73",
    "o": "#CC79A7",
    "gate": "#E69F00",
    "up": "#D55E00",
    "down": "#000000",
    "embed": "#882255",
    "lm_head": "#332288",
    "qkv": "#44AA99",
    "gate_up": "#999933",
    "attn_norm": "#DDCC77",
    "mlp_norm": "#A0522D",
    "post_attn_norm": "#EE8866",
    "post_mlp_norm": "#77AADD",
    "norm": "#BBCC33",
    "final_norm": "#708090",
}


def _known_colors() -> tuple[dict[str, str], int]:
    """Every kind of MODULE_ORDER -> its colour: the fixed ones above, the others in that order taking the
    :func:`series_color` colours no fixed kind has (so a kind's colour never depends on what else is drawn); and
    the index of the first series_color past them (where kinds no list names start)."""
    used, out, i = set(_FIXED.values()), dict(_FIXED), 0
    for kind in [*MODULE_ORDER, "other"]:
        if kind in out:
            continue
        while series_color(i) in used:
            i += 1
        out[kind] = series_color(i)
        i += 1
    return out, i


_KNOWN, _FIRST_SPARE = _known_colors()


def module_colors(modules: Sequence[str]) -> dict[str, str]:
    """Module kind -> colour, the same for a kind on every chart. Kinds no list names (an MoE's "E12") take
    colours after every known kind's, in natural order of the ``modules`` given, each one of its own."""
    kinds = list(dict.fromkeys(str(m) for m in modules))
    out = {m: _KNOWN[m] for m in kinds if m in _KNOWN}
    rest = sorted((m for m in kinds if m not in _KNOWN), key=_natural)
    return out | {m: series_color(_FIRST_SPARE + i) for i, m in enumerate(rest)}


def colors_after(models: Sequence[str], others: Sequence[str]) -> dict[str, str]:
    """``models`` in their colours of :func:`~subnetviz.figures.style.color_map` (their place in the workspace,
    as on every page), then each of ``others`` (masks that are no model's update mask) a colour after them, one
    no model has."""
    models = [str(m) for m in models]
    out = color_map(models)
    out |= {str(o): series_color(len(models) + i) for i, o in enumerate(others)}
    return out
