"""Bigram review 7, on the page:

2. The headline's "overlap × chance" was rounded to one decimal ("0.2×" where the Overlap table read 0.17×; any ratio
   under 0.05 read "0.0×"). It is written with three significant digits, as the other headline values.
3. A link's ``bg_tab`` or ``bg_view`` that names no tab or view on offer was dropped with no word (Streamlit removes
   a bound entry it does not know), where every other entry of a link that cannot be used gets a warning line.

Planted (removed afterwards: the home is shared): bigram6's GPT-2 of the zoo's vocabulary and two masks of it with a
known overlap. Every maskable matrix has R rows (16 or 64, each block a set of columns): the bigram mask keeps rows
[0, R/2), the optimal mask rows [7R/16, R). In every block of n entries, kept k0 = n/2 and k1 = 9n/16 with R/16 rows
(n/16 entries) shared, so overlap / (k0 k1 / n) = (1/16) / (1/2 · 9/16) = 2/9 in each block and over all of them."""

from __future__ import annotations

import pytest
import torch

from tests.app.test_bigram6_fixes_app import _read, planted  # noqa: F401 - planted is a fixture
from tests.app_fixtures import open_page

pytestmark = pytest.mark.slow

BIGRAM, OPTIMAL = "uploads/bigram7-bigram", "uploads/bigram7-optimal"
X_CHANCE = 2 / 9  # the planted overlap over the uniform null's expectation (the module's docstring)


@pytest.fixture(scope="module")
def rows_masks(app_env, planted):  # noqa: F811
    from subnetviz.bigram.maskable import full_mask, load_local_model
    from subnetviz.masks import MaskSet, save_mask_set

    shapes = {n: m.shape for n, m in full_mask(load_local_model(planted["gpt2"])).masks.items()}
    assert {s[0] for s in shapes.values()} <= {16, 64}  # (the premise: R/16 rows is a whole number)
    for label, target, (lo, hi) in ((BIGRAM, "bigram", (0, 8)), (OPTIMAL, "optimal", (7, 16))):
        masks = {}
        for name, shape in shapes.items():
            m = torch.zeros(shape, dtype=torch.bool)
            m[lo * shape[0] // 16 : hi * shape[0] // 16] = True
            masks[name] = m
        save_mask_set(app_env / f"{label}.safetensors", MaskSet(masks, {"target": target, "lambda": 10.0}))
    yield planted["gpt2"]
    for label in (BIGRAM, OPTIMAL):
        (app_env / f"{label}.safetensors").unlink()


def _warnings(at) -> list[str]:
    return [_read(w.value) for w in at.warning]


# --- 2. the headline's overlap × chance ---------------------------------------------------------------------------
def test_the_headline_overlap_x_chance_has_three_significant_digits(app_env, rows_masks):
    at = open_page("bigram", bg_model=str(rows_masks), bg_mask=BIGRAM, bg_opt=OPTIMAL)
    assert not at.exception and not at.error, [e.value for e in at.error]
    (value,) = [m.value for m in at.metric if m.label.startswith("overlap × chance")]
    assert value == "0.222×" == f"{X_CHANCE:.3f}×", value  # (it read "0.2×")


# --- 3. a link's tab or view that is not on offer -----------------------------------------------------------------
def test_a_link_s_unknown_tab_is_said_and_the_first_tab_shown(app_env, rows_masks):
    at = open_page("bigram", bg_model=str(rows_masks), bg_mask=BIGRAM, bg_opt=OPTIMAL, bg_tab="Bogus")
    assert not at.exception and not at.error, [e.value for e in at.error]
    line = "The link's tab Bogus is not among this analysis's tabs; Ablation is shown instead."
    assert _warnings(at) == [line]
    assert "bg_tab" not in at.query_params  # (the URL shows what is shown)
    at.run()  # the line stays while the first tab is shown (a rerun of the page)
    assert _warnings(at) == [line]


def test_a_link_s_tab_not_offered_for_this_analysis_is_said(app_env, rows_masks):
    """ "Overlap" is a tab only when an optimal mask is chosen: a link with none names a tab not on offer."""
    at = open_page("bigram", bg_model=str(rows_masks), bg_mask=BIGRAM, bg_opt="none", bg_tab="Overlap")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "The link's tab Overlap is not among this analysis's tabs; Ablation is shown instead." in _warnings(at)


def test_a_link_s_known_tab_says_nothing(app_env, rows_masks):
    at = open_page("bigram", bg_model=str(rows_masks), bg_mask=BIGRAM, bg_opt=OPTIMAL, bg_tab="Overlap")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert not _warnings(at)
    assert at.query_params.get("bg_tab") in ("Overlap", ["Overlap"])  # (the premise: the link's tab is open)


def test_a_link_s_unknown_view_is_said_and_the_analysis_shown(app_env):
    at = open_page("bigram", bg_view="Bogus")
    assert not at.exception, [e.message for e in at.exception]
    line = "The link's view Bogus is not among this page's views; Analyse a mask is shown instead."
    assert line in _warnings(at)
    assert "bg_view" not in at.query_params
    assert not [w for w in _warnings(at) if "view" in w and w != line]
    ok = open_page("bigram", bg_view="Train a mask")
    assert not [w for w in _warnings(ok) if "The link's view" in w]
    empty = open_page("bigram", bg_view="")  # (an empty entry names nothing: no line with a blank name)
    assert not empty.exception and not [w for w in _warnings(empty) if "The link's" in w], _warnings(empty)


# --- 1. on the page: the Train form refuses an hf: name the local cache lacks, and queues nothing ------------------
def test_the_train_form_refuses_an_hf_corpus_not_in_the_local_cache(app_env, monkeypatch):
    import datasets

    from subnetviz.jobs.runner import JobRunner

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(app_env / "hf-datasets"))  # (under the roots)
    runner = JobRunner()
    before = set(runner.list_runs()["id"]) if len(runner.list_runs()) else set()
    at = open_page("bigram", bg_view="Train a mask", bg_corpus="hf:nonexistent_ds")
    next(b for b in at.button if b.label == "Train mask").click().run()
    assert not at.exception, [e.message for e in at.exception]
    new = [r.id for r in runner.list_runs().itertuples() if r.id not in before]
    for run_id in new:  # (queued by a page without the fix: cancelled, not left in the shared home)
        runner.cancel(run_id)
    assert not new
    errors = [_read(e.value) for e in at.main.error]
    assert [e for e in errors if e.startswith("hf:nonexistent_ds: not a local dataset: nonexistent_ds is not in")]
    assert not [s for s in at.success if "Queued run" in s.value]
