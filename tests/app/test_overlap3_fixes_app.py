"""The Overlap page with masks of another model's shapes (AppTest), checked against plain NumPy and Python sets:

- an MLP of another width (its first dimension alone differing) is left out, not compared over its leading rows
  as a "resized vocabulary"; the pairwise table counts the tensors of one shape (and a vocabulary's shared rows);
- masks of a model of another width (only norms' first dimension differing) are said to be of different models,
  with no chart (the page drew Venn, UpSet and matrices over the first entries of each norm);
- the empty-mask notes and the Sets caption count the tensors compared, not the names every mask holds.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from subnetviz.masks import MaskSet, save_mask_set
from tests.app_fixtures import open_page, plotly_specs
from tests.integration.test_overlap3_fixes import VOCAB, llama_shapes


def compared(a: dict, b: dict) -> list[str]:
    """The tensors two masks can be compared over, by hand: one shape in both, or a vocabulary's rows."""
    return [n for n in a if a[n].shape == b[n].shape or (n in VOCAB and a[n].shape[1:] == b[n].shape[1:])]


@pytest.fixture
def upload(tmp_path, monkeypatch):
    """Saves a mask into a fresh home's uploads; returns its label on the page."""
    home = tmp_path / "home"
    (home / "uploads").mkdir(parents=True)
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(home))

    def put(name: str, masks: dict[str, np.ndarray]) -> str:
        save_mask_set(
            home / "uploads" / f"{name}.safetensors", MaskSet({n: torch.from_numpy(v) for n, v in masks.items()})
        )
        return f"uploads/{name}"

    return put


def _texts(at) -> list[str]:
    # (punctuation shown escaped, a zero-width space after a label's colon)
    return [re.sub(r"\\(.)", r"\1", e.value).replace("\u200b", "") for e in [*at.caption, *at.info, *at.warning]]


def test_the_page_counts_the_tensors_compared(upload):
    """Entries only in the MLP, of another width in b: every name is in both masks, 15 of the 21 tensors are
    compared, and neither mask has an entry there. The notes said 21."""
    rng = np.random.default_rng(0)
    a, b = ({n: np.zeros(s, bool) for n, s in llama_shapes(inter=i).items()} for i in (16, 24))
    for m in (a, b):
        for n in m:
            if ".mlp." in n:
                m[n] = rng.random(m[n].shape) < 0.5
    chosen = [upload("a", a), upload("b", b)]
    at = open_page("overlap", masks=chosen, ov_masks=chosen, ov_tab="Sets")
    assert not at.exception and not at.error, [e.value for e in at.error]
    k = len(compared(a, b))
    assert (k, len(set(a) & set(b))) == (15, 21)
    texts = " ".join(_texts(at))
    assert f"{chosen[0]}, {chosen[1]}: no entry in the {k} tensors compared here" in texts, texts
    assert f"No chosen mask has any entry in the {k} tensors compared here" in texts, texts
    assert "Left out of the overlap" in texts and "6 tensor(s)" in texts


def test_an_mlp_of_another_width_is_not_compared_over_its_leading_rows(upload):
    rng = np.random.default_rng(1)
    a, b = ({n: rng.random(s) < 0.4 for n, s in llama_shapes(inter=i).items()} for i in (16, 24))
    chosen = [upload("a", a), upload("b", b)]
    at = open_page("overlap", masks=chosen, ov_masks=chosen, ov_tab="Pairwise")
    assert not at.exception and not at.error, [e.value for e in at.error]
    names = compared(a, b)
    fa, fb = (np.concatenate([m[n].reshape(-1) for n in names]) for m in (a, b))
    table = next(d.value for d in at.dataframe if {"count_a", "intersection"} <= set(d.value.columns))
    (row,) = table.itertuples()
    assert (row.count_a, row.count_b, row.numel, row.intersection) == (fa.sum(), fb.sum(), fa.size, (fa & fb).sum())


def test_masks_of_a_model_of_another_width_are_said_to_be_of_different_models(upload):
    rng = np.random.default_rng(2)
    a, b = ({n: rng.random(s) < 0.4 for n, s in llama_shapes(hidden=h).items()} for h in (8, 12))
    assert compared(a, b) == []
    chosen = [upload("a", a), upload("b", b)]
    at = open_page("overlap", masks=chosen, ov_masks=chosen, ov_tab="Sets")
    assert not at.exception and not at.error, [e.value for e in at.error]
    (info,) = [t for t in _texts(at) if t.startswith("No overlap to show")]
    assert "the masks are of different models" in info and "21 of their 21 tensors" in info
    assert plotly_specs(at) == []
