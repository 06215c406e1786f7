"""In the app (AppTest): a damaged disk-cache entry that a page computes again is said once, in a caption, on the
Bigram page, the Behaviour page and the Training page's "Subnetwork vs full" comparison (the page's check removed
the entry, and the computation after it said nothing). A new server is simulated by clearing the process memo.
"""

import json
import os
from pathlib import Path

import pytest
import torch

from tests.app_fixtures import home_of_its_own, open_page

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app_home(micro_zoo, tmp_path_factory):
    """A home of its own over the micro zoo, with an empty cache."""
    with home_of_its_own(micro_zoo, tmp_path_factory, "damaged-notes-app") as home:
        yield home


def _texts(at) -> list[str]:
    return [str(e.value).replace("\\", "") for e in (*at.caption, *at.markdown, *at.info, *at.warning)]


def _ok(at):
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _damage(home: Path, kind: str) -> str:
    """One byte flipped in the largest file of the one ``kind`` entry of the cache: the file's name."""
    (entry,) = [p for p in (home / "cache" / kind).iterdir() if not p.name.startswith(".")]
    files = json.loads((entry / ".manifest.json").read_text())["files"]
    name = max(files, key=lambda f: files[f]["size"])
    raw = bytearray((entry / name).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (entry / name).write_bytes(bytes(raw))
    return name


def _said_once(at, name: str, kind: str) -> None:
    said = [t for t in _texts(at) if "was damaged" in t]
    assert len(said) == 1, said
    assert f"the cached {kind} result" in said[0] and name in said[0] and "computed again" in said[0]
    assert str(os.environ["SUBNETVIZ_HOME"]) not in said[0]  # (no path)


def _page_again(page: str, **query):
    import streamlit as st

    from subnetviz import ui

    ui._memo.clear()  # a new server: its memos are empty, so the page asks the disk cache
    st.cache_data.clear()  # (the Training comparison's)
    return _ok(open_page(page, **query))


def _sound_again(home: Path, kind: str) -> None:
    from subnetviz.cache import verify_manifest

    (entry,) = [p for p in (home / "cache" / kind).iterdir() if not p.name.startswith(".")]
    assert verify_manifest(entry) is None  # (computed again and published)


def _bigram_mask() -> dict:
    """A 10 % bigram mask of the zoo's base saved as an upload (each test that needs it saves it: under xdist the
    tests of this module may run in different processes, each with its own home); the page's query for it."""
    from subnetviz import config
    from subnetviz.bigram.maskable import maskable_shapes, model_skeleton
    from subnetviz.masks import MaskSet, save_mask_set
    from subnetviz.selection import uploads_dir

    path = uploads_dir() / "damaged-notes.safetensors"
    if not path.is_file():
        gen = torch.Generator().manual_seed(0)
        shapes = maskable_shapes(model_skeleton(str(config.zoo_dir() / "base")))
        masks = {n: torch.rand(s, generator=gen) < 0.1 for n, s in shapes.items()}
        save_mask_set(path, MaskSet(masks, {"target": "bigram"}))
    return {"bg_mask": "uploads/damaged-notes"}


def test_bigram_says_a_damaged_analysis_it_computes_again(app_home):
    query = _bigram_mask()
    first = _ok(open_page("bigram", **query))
    assert first.get("plotly_chart") and not [t for t in _texts(first) if "was damaged" in t]
    name = _damage(app_home, "bigram")
    at = _page_again("bigram", **query)
    _said_once(at, name, "bigram")
    assert at.get("plotly_chart")
    _sound_again(app_home, "bigram")


def test_behaviour_says_a_damaged_analysis_it_computes_again(app_home):
    query = {"ft": ["grpo-s0"], "bh_limit": "16", "bh_curve": "false", "bh_masks": []}
    first = _ok(open_page("behavior", **query))
    assert first.get("plotly_chart") and not [t for t in _texts(first) if "was damaged" in t]
    name = _damage(app_home, "behavior")
    at = _page_again("behavior", **query)
    _said_once(at, name, "behavior")
    assert at.get("plotly_chart")
    _sound_again(app_home, "behavior")
    later = _ok(open_page("behavior", **query))  # the same server: a sound copy, nothing more to say
    assert not [t for t in _texts(later) if "was damaged" in t]


def test_the_training_comparison_says_a_damaged_comparison_it_computes_again(app_home):
    first = _ok(open_page("training", tr_view="Subnetwork vs full"))
    assert "parameters bitwise identical" in {m.label for m in first.metric}
    shown = [m.value for m in first.metric]
    name = _damage(app_home, "runs")
    at = _page_again("training", tr_view="Subnetwork vs full")
    _said_once(at, name, "runs")
    assert [m.value for m in at.metric] == shown  # (the same numbers)
    _sound_again(app_home, "runs")
    later = _ok(open_page("training", tr_view="Subnetwork vs full"))  # the same server: said once, not replayed
    assert not [t for t in _texts(later) if "was damaged" in t]


def test_bigram_on_a_cluster_says_a_damaged_analysis_it_computes_again(app_home, monkeypatch):
    """On a Ray cluster the server only checks the entry and the driver publishes the new copy: the page says it."""
    from subnetviz.jobs import cluster, cluster_pages, fanout

    calls = []

    def drive(kind, request, address, progress, total, module=None):  # the driver's work, in this process
        calls.append(kind)
        return cluster_pages.run_kind({**request, "kind": kind}, {})

    monkeypatch.setattr(cluster, "resolve_address", lambda address: "ray://head:10001")
    monkeypatch.setattr(cluster, "drive", drive)
    monkeypatch.setattr(fanout, "ray_map", lambda fn, args, **kw: [fn(*a) for a in args])
    query = _bigram_mask()
    _page_again("bigram", **query)  # (from the disk cache, or computed)
    calls.clear()
    name = _damage(app_home, "bigram")
    at = _page_again("bigram", **query)
    _said_once(at, name, "bigram")
    assert at.get("plotly_chart") and calls == ["bigram"]
    _sound_again(app_home, "bigram")
