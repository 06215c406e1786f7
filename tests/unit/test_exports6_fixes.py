"""Exports review, sixth pass, finding 3 in the builder: :func:`model_spectra` of one model names it in its title
(its curves are named by matrix only: a figure file had no word of whose update); with several models the curves
say it ("model · matrix") and the title stays as it was. The page's titles: tests/app/test_exports6_fixes_app.py."""

from __future__ import annotations

import pandas as pd

from subnetviz import figures as F

NAMES = ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight")


def _frames(models: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sigma and shape frames of two matrices per model, each σ_i = scale / i."""
    rows, shapes = [], []
    for k, model in enumerate(models):
        for name in NAMES:
            rows += [{"model": model, "name": name, "index": i, "sigma": (k + 1) / i, "kind": "update"} for i in (1, 2)]
            rows += [{"model": model, "name": name, "index": i, "sigma": 0.5 / i, "kind": "random"} for i in (1, 2)]
            shapes.append({"model": model, "name": name, "rows": 4, "cols": 8, "module": name.split(".")[-2]})
    return pd.DataFrame(rows), pd.DataFrame(shapes)


def _head(fig) -> str:
    return fig.layout.title.text.split("<br>")[0]


def test_one_models_singular_values_name_it_in_the_title():
    fig = F.model_spectra(*_frames(["grpo-s0"]), ["grpo-s0"])
    assert _head(fig) == "Singular values of updates: grpo-s0"
    assert [t.name for t in fig.data if t.showlegend is not False] == list(NAMES)  # the curves: by matrix only
    assert "dashed: random sparse baseline" in fig.layout.title.text  # the subtitle as it was


def test_a_models_markup_and_direction_override_are_shown_as_text():
    model = "x<b>ft</b>&amp;\u202eA-lanif"
    head = _head(F.model_spectra(*_frames([model]), [model]))
    assert head == "Singular values of updates: x&lt;b&gt;ft&lt;/b&gt;&amp;amp;⟨U+202E⟩A-lanif", head


def test_several_models_keep_the_title_and_a_caller_s_title_is_used_as_given():
    fig = F.model_spectra(*_frames(["m1", "m2"]), ["m1", "m2"])
    assert _head(fig) == "Singular values of updates"
    assert {t.name.split(" · ")[0] for t in fig.data if t.showlegend is not False} == {"m1", "m2"}
    given = F.model_spectra(*_frames(["m1"]), ["m1"], title="Singular values of updates at bf16: m1")
    assert _head(given) == "Singular values of updates at bf16: m1"
