"""AppTest: a visitor's click does not start an hour of decompositions. Above SUBNETVIZ_CONFIRM_ABOVE_S seconds
(estimated from the headers), the Spectra page's two tabs say what the work is and wait for an editor's click;
a viewer of a read-only server is told why not and nothing is computed; once computed, everyone sees it. Set to
0 here so that a tiny pair is "long"."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from subnetviz.analysis.subspaces import SubspaceOptions
from subnetviz.analysis.subspaces import is_cached as subspaces_cached
from subnetviz.analysis.updates import SpectraOptions, is_cached
from tests.ckpt_fixtures import bf16_llama_pair

APP = str(Path(__file__).resolve().parents[2] / "app.py")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("typed_options")]
EDITOR_TOKEN = "e" * 24


@pytest.fixture(scope="module")
def pair(app_env):
    """A bf16 Llama pair of its own (no other test has analysed it) inside the app's allowed roots."""
    home = bf16_llama_pair(app_env / "heavy-pages")
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def long_work(monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_CONFIRM_ABOVE_S", "0")


def _open(home: Path, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["base"] = str(home / "base")
    at.query_params["ft"] = [str(home / "ft")]
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    at.switch_page("views/spectra.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _spectra_cached(home: Path) -> bool:
    from subnetviz.analysis.sparsity import SparsityOptions

    return is_cached(
        str(home / "base"),
        [str(home / "ft")],
        labels=["ft"],
        options=SparsityOptions(precision=None, mask_tolerance=None),
        spectra=SpectraOptions(enabled=True),
    )


def _infos(at) -> str:
    return " ".join(i.value for i in at.info)


def _compute_buttons(at) -> list:
    return [b for b in at.button if b.label.startswith("Compute (about")]


def test_spectra_wait_for_an_editor_and_a_viewer_cannot_start_them(pair, monkeypatch):
    # a public read-only server: the visitor is a viewer, who may not launch jobs
    monkeypatch.setenv("SUBNETVIZ_EDITOR_TOKEN", EDITOR_TOKEN)
    at = _open(pair)
    text = _infos(at)
    assert "Spectra of Δ:" in text and "matrix decompositions, about" in text and "viewer may start" in text
    assert not _compute_buttons(at) and not at.get("plotly_chart") and not _spectra_cached(pair)

    # the server's owner (open server: an editor) is asked, and nothing starts before the click
    monkeypatch.delenv("SUBNETVIZ_EDITOR_TOKEN")
    at = _open(pair)
    assert "It starts when you ask" in _infos(at) and not at.get("plotly_chart") and not _spectra_cached(pair)
    (go,) = _compute_buttons(at)
    go.click().run()
    assert not at.exception and not at.error and at.get("plotly_chart") and _spectra_cached(pair)

    # computed once: every visitor sees it, a viewer too, with no question asked
    monkeypatch.setenv("SUBNETVIZ_EDITOR_TOKEN", EDITOR_TOKEN)
    at = _open(pair)
    assert not _compute_buttons(at) and "matrix decompositions" not in _infos(at) and at.get("plotly_chart")


def test_subspaces_wait_for_an_editor_and_show_progress(pair, monkeypatch):
    cached = lambda: subspaces_cached(  # noqa: E731
        str(pair / "base"), [str(pair / "ft")], labels=["ft"], options=SubspaceOptions(k=16)
    )
    monkeypatch.setenv("SUBNETVIZ_EDITOR_TOKEN", EDITOR_TOKEN)
    tab = {"spec_tab": "Subspaces of W_base vs W_ft"}
    at = _open(pair, **tab)
    assert "Subspaces of W_base vs W_ft:" in _infos(at) and "viewer may start" in _infos(at)
    assert not _compute_buttons(at) and not at.get("plotly_chart") and not cached()

    monkeypatch.delenv("SUBNETVIZ_EDITOR_TOKEN")
    at = _open(pair, **tab)
    (go,) = _compute_buttons(at)
    go.click().run()
    assert not at.exception and not at.error and len(at.get("plotly_chart")) == 3 and cached()


def test_under_the_limit_nothing_is_asked(pair, monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_CONFIRM_ABOVE_S", "60")
    monkeypatch.setenv("SUBNETVIZ_EDITOR_TOKEN", EDITOR_TOKEN)
    at = _open(pair, spec_tab="Subspaces of W_base vs W_ft", sub_k="4")  # K = 4: not computed yet
    assert not _compute_buttons(at) and len(at.get("plotly_chart")) == 3


def test_a_matrix_skipped_for_lack_of_memory_shows_as_a_row_saying_so(pair, monkeypatch):
    """The Subspaces tab draws the other matrices, and the table's method column says why one is missing."""
    from subnetviz.analysis import subspaces

    monkeypatch.setenv("SUBNETVIZ_CONFIRM_ABOVE_S", "60")
    monkeypatch.setattr(
        subspaces,
        "_memory_short",
        lambda ck_base, ck, at, *_: "needs about 9.00 GiB of memory" if "embed" in at.key else None,
    )
    at = _open(pair, spec_tab="Subspaces of W_base vs W_ft", sub_k="8")
    assert len(at.get("plotly_chart")) == 3
    table = next(df for df in (d.value for d in at.dataframe) if "method" in df.columns)
    skipped = table[table["method"].str.startswith("skipped")]
    assert list(skipped["name"]) == ["embed_tokens.weight"] and skipped["angle_left_max"].isna().all()


def test_behaviour_waits_for_an_editor_and_a_viewer_cannot_start_it(app_env, monkeypatch):
    """Behaviour teacher-forces every prompt through each finetune once per experiment: hours of forward passes
    for a 7B model on a CPU, started by opening the page. Priced first, as the spectra are (micro zoo,
    64 prompts: a configuration no other test computes)."""
    from tests.app_fixtures import open_page

    monkeypatch.setenv("SUBNETVIZ_EDITOR_TOKEN", EDITOR_TOKEN)
    at = open_page("behavior", bh_limit="64")
    assert not at.exception and not at.error
    text = _infos(at)
    assert "Behaviour:" in text and "forward passes, about" in text and "viewer may start" in text
    assert not _compute_buttons(at) and not at.get("plotly_chart")
    monkeypatch.delenv("SUBNETVIZ_EDITOR_TOKEN")
    at = open_page("behavior", bh_limit="64")
    (go,) = _compute_buttons(at)
    go.click().run()
    assert not at.exception and not at.error and at.get("plotly_chart")


def _in_flight(monkeypatch, *, fail: bool):
    """Slows Behaviour's computation down until a second session waits for it (its wait on the memo's flight
    is watched), then lets it finish, or fail as when the session computing it leaves the page. Returns
    (started: the computation holds its flight, calls: how many computations actually ran)."""
    import threading

    from subnetviz import ui
    from subnetviz.jobs import cluster_pages

    started, waiting, calls = threading.Event(), threading.Event(), []
    real = cluster_pages.cached_behavior

    def slow(*args, **kwargs):
        memo = ui._memo()
        (flight,) = [ev for key, ev in memo.flights.items() if key[0] == "heavy"]
        wait = flight.wait
        flight.wait = lambda timeout=None: (waiting.set(), wait(timeout))[1]
        started.set()
        assert waiting.wait(120), "the second session did not wait for the computation in flight"
        if fail:
            raise RuntimeError("the editor left the page")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cluster_pages, "cached_behavior", slow)
    return started, calls


def _editor_computes(query: dict) -> tuple:
    """An editor's session that opens Behaviour and clicks Compute, in a thread of its own."""
    import threading

    from tests.app_fixtures import open_page

    def run():
        at = open_page("behavior", **query)
        (go,) = _compute_buttons(at)
        go.click().run()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("fail", [False, True], ids=["finishes", "editor-leaves"])
def test_a_viewer_waits_for_a_computation_in_flight_and_never_takes_it_over(app_env, monkeypatch, fail):
    """A viewer who opens Behaviour while an editor's computation of it is running waits for that result (before:
    'not computed yet', although it was being computed; two editors computed it twice). If the editor leaves
    and the computation ends without a result, the viewer is told why not, and nothing starts on its behalf."""
    from tests.app_fixtures import open_page

    query = {"bh_limit": "16" if fail else "64", "bh_curve": "false"}  # configurations no other test computes
    started, calls = _in_flight(monkeypatch, fail=fail)
    editor = _editor_computes(query)
    assert started.wait(180), "the editor's computation did not start"
    monkeypatch.setenv("SUBNETVIZ_EDITOR_TOKEN", EDITOR_TOKEN)  # the next visitor is a viewer
    at = open_page("behavior", **query)
    editor.join(180)
    assert not at.exception and not at.error and not _compute_buttons(at)
    if fail:
        assert "viewer may start" in _infos(at) and not at.get("plotly_chart") and calls == []
    else:
        assert at.get("plotly_chart") and "not computed yet" not in _infos(at) and calls == [1]


def test_bigram_analysis_and_held_out_accuracy_wait_for_an_editor(app_env, monkeypatch):
    """The Bigram page's analysis (the model in float32 through the evaluation set ten times, the residual
    stream, generations) and the Training comparison's held-out accuracy (generation with three models) are
    forward passes like Behaviour's: priced and asked for (before, a viewer's URL started them at once)."""
    from subnetviz import config, ui
    from subnetviz.bigram import store
    from subnetviz.bigram.maskable import maskable_shapes, model_skeleton
    from subnetviz.demo import comparison
    from subnetviz.masks import MaskSet, save_mask_set
    from subnetviz.selection import uploads_dir
    from tests.app_fixtures import open_page

    ui._memo.clear()  # nothing computed in this process counts
    gen = torch.Generator().manual_seed(0)
    shapes = maskable_shapes(model_skeleton(str(config.zoo_dir() / "base")))
    masks = {n: torch.rand(s, generator=gen) < 0.1 for n, s in shapes.items()}
    save_mask_set(uploads_dir() / "heavy-random.safetensors", MaskSet(masks, {"target": "bigram"}))
    monkeypatch.setattr(store, "is_cached", lambda key, cache_root=None: False)  # (the zoo's build filled them)
    monkeypatch.setattr(comparison, "is_cached", lambda *args, **kwargs: False)
    monkeypatch.setenv("SUBNETVIZ_EDITOR_TOKEN", EDITOR_TOKEN)
    pages = {
        "bigram": ({"bg_mask": "uploads/heavy-random"}, "Bigram analysis:", "forward passes, about"),
        "training": ({"tr_view": "Subnetwork vs full", "cmp_acc": "true"}, "Held-out accuracy:", "generation steps"),
    }
    for page, (query, what, unit) in pages.items():
        at = open_page(page, **query)
        assert not at.exception and not at.error, page
        text = _infos(at)
        assert what in text and unit in text and "viewer may start" in text, (page, text)
        assert not _compute_buttons(at) and not at.get("plotly_chart"), page
    monkeypatch.delenv("SUBNETVIZ_EDITOR_TOKEN")
    for page, (query, _, _) in pages.items():
        at = open_page(page, **query)
        (go,) = _compute_buttons(at)
        go.click().run()
        assert not at.exception and not at.error and at.get("plotly_chart"), page


def test_computations_that_load_models_run_one_at_a_time(app_env, monkeypatch):
    """Behaviour, the bigram analysis and held-out accuracy each compare what they will hold with the memory
    available, then load whole models: two sessions checking at once could each pass and together exceed it.
    While one editor's Behaviour holds its models, another editor's bigram analysis waits for it."""
    import threading
    import time

    from subnetviz import config, ui
    from subnetviz.bigram.maskable import maskable_shapes, model_skeleton
    from subnetviz.jobs import cluster_pages
    from subnetviz.masks import MaskSet, save_mask_set
    from subnetviz.selection import uploads_dir
    from tests.app_fixtures import open_page

    ui._memo.clear()
    gen = torch.Generator().manual_seed(1)
    shapes = maskable_shapes(model_skeleton(str(config.zoo_dir() / "base")))
    save_mask_set(
        uploads_dir() / "one-at-a-time.safetensors",
        MaskSet({n: torch.rand(s, generator=gen) < 0.2 for n, s in shapes.items()}),
    )
    holding, release, order = threading.Event(), threading.Event(), []
    real_behavior, real_bigram = cluster_pages.cached_behavior, cluster_pages.cached_mask_analysis

    def behaviour(*args, **kwargs):
        order.append("behaviour starts")
        holding.set()
        release.wait(120)
        order.append("behaviour ends")
        return real_behavior(*args, **kwargs)

    def bigram(*args, **kwargs):
        order.append("bigram starts")
        return real_bigram(*args, **kwargs)

    monkeypatch.setattr(cluster_pages, "cached_behavior", behaviour)
    monkeypatch.setattr(cluster_pages, "cached_mask_analysis", bigram)

    def click(page, query):
        at = open_page(page, **query)
        (go,) = _compute_buttons(at)
        go.click().run()
        assert not at.exception and at.get("plotly_chart"), page

    first = threading.Thread(target=click, args=("behavior", {"bh_limit": "16", "bh_curve": "false", "bh_masks": []}))
    first.start()
    assert holding.wait(180), "the Behaviour computation did not start"
    second = threading.Thread(target=click, args=("bigram", {"bg_mask": "uploads/one-at-a-time", "bg_opt": "none"}))
    second.start()
    time.sleep(5)  # time enough for the bigram analysis to start, were it not waiting
    assert order == ["behaviour starts"]
    release.set()
    first.join(180)
    second.join(180)
    assert order == ["behaviour starts", "behaviour ends", "bigram starts"]
