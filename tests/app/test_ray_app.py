"""Pages served with ``SUBNETVIZ_RAY_ADDRESS`` set: their analyses run on the cluster (the session's local
head on 127.0.0.1, 2 CPUs: ``ray_head`` in tests/conftest.py), the pages render as they do locally; an unreachable
cluster is one clear message in the main area, not a traceback or a hang.

Each test starts from an empty home (its own disk cache) and empty Streamlit caches, so the page
really computes instead of finding an earlier test's result.
"""

from __future__ import annotations

import socket

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements-ray.txt)")

from subnetviz.jobs import cluster  # noqa: E402
from subnetviz.jobs.ray_backend import RAY_ADDRESS_ENV  # noqa: E402
from tests.app_fixtures import app_roots, open_page, plotly_specs  # noqa: E402
from tests.zoo_fixtures import micro_zoo  # noqa: E402, F401

pytestmark = pytest.mark.ray


@pytest.fixture
def fresh_home(micro_zoo, tmp_path, monkeypatch):  # noqa: F811
    import streamlit as st

    home = tmp_path / "home"
    home.mkdir()
    (home / "zoo").symlink_to(micro_zoo.root, target_is_directory=True)
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", app_roots(home))
    st.cache_resource.clear()  # the process-wide memo: no result of an earlier test
    st.cache_data.clear()
    drives: list[str] = []
    monkeypatch.setattr(cluster, "drive", lambda *a, _d=cluster.drive: drives.append(a[0]) or _d(*a))
    yield drives
    st.cache_resource.clear()


def _clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_pages_render_with_their_analyses_on_the_cluster(ray_head, fresh_home, monkeypatch):
    monkeypatch.setenv(RAY_ADDRESS_ENV, ray_head)
    at = open_page("sparsity")
    _clean(at)
    assert fresh_home == ["updates"] and plotly_specs(at)
    at = open_page("overlap")  # the same analysis (memo), its mask files overlapped on the cluster
    _clean(at)
    assert fresh_home == ["updates", "overlap"] and plotly_specs(at)
    at = open_page("series")
    _clean(at)
    assert fresh_home == ["updates", "overlap", "series"] and len(plotly_specs(at)) >= 3  # (modules: from the series)


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_unreachable_cluster_is_one_message_in_the_main_area(fresh_home, monkeypatch):
    address = _closed_port()
    monkeypatch.setenv(RAY_ADDRESS_ENV, address)
    at = open_page("sparsity")
    assert not at.exception
    assert [e.value for e in at.error] == [e.value for e in at.main.error]  # in the main area
    text = at.error[0].value.replace("\\", "").replace("\u200b", "")  # shown as plain text (ui.plain escapes)
    assert len(at.error) == 1 and f"No Ray cluster answers at {address} (Connection refused" in text
    assert "Traceback" not in text


# --- the sidebar's choice: this server or a cluster the operator named --------------------------------
def _random_mask(path, seed: int = 0) -> None:
    """A random mask of the micro zoo's base, saved as an upload (the Bigram page lists uploads)."""
    import torch

    from subnetviz import config
    from subnetviz.bigram.maskable import full_mask, load_local_model
    from subnetviz.masks import MaskSet, save_mask_set

    g = torch.Generator().manual_seed(seed)
    masks = full_mask(load_local_model(config.zoo_dir() / "base")).masks
    save_mask_set(path, MaskSet({n: torch.rand(m.shape, generator=g) < 0.3 for n, m in masks.items()}))


def _compute_on(at):
    return next(s for s in at.sidebar.selectbox if s.label == "Compute on")


def test_sidebar_offers_the_operators_clusters_only(ray_head, fresh_home, monkeypatch):
    """SUBNETVIZ_RAY_ADDRESSES names a cluster: the sidebar offers this server (the default: no
    SUBNETVIZ_RAY_ADDRESS) and it, by name; the URL keeps the name. An address typed into the URL is no
    choice: the session stays on this server and nothing connects anywhere."""
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    monkeypatch.setenv("SUBNETVIZ_RAY_ADDRESSES", f"lab={ray_head}")
    at = open_page("sparsity", cluster="127.0.0.1:1")
    _clean(at)
    box = _compute_on(at)
    assert box.options == ["this server", "lab"] and box.value == "this server"
    assert at.session_state["_cluster"] == "" and fresh_home == []  # computed here, no driver
    at = open_page("sparsity", precision="fp32", cluster="lab")  # another analysis: not in the cache yet
    _clean(at)
    assert _compute_on(at).value == "lab" and at.session_state["_cluster"] == ray_head
    assert fresh_home == ["updates"] and plotly_specs(at)
    at.sidebar.selectbox(key="cluster").select("this server").run()
    assert at.session_state["_cluster"] == ""  # back to this server for what this session computes next


def test_bigram_behaviour_overlap_pages_on_the_chosen_cluster(ray_head, fresh_home, monkeypatch):
    from subnetviz import config

    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    monkeypatch.setenv("SUBNETVIZ_RAY_ADDRESSES", f"lab={ray_head}")
    uploads = config.home() / "uploads"
    uploads.mkdir()
    _random_mask(uploads / "one.safetensors", 0)
    _random_mask(uploads / "two.safetensors", 1)
    at = open_page("bigram", bg_mask="uploads/one", cluster="lab")
    _clean(at)
    assert fresh_home == ["bigram"] and len(at.metric) >= 7
    chosen = ["uploads/one", "uploads/two"]
    at = open_page("overlap", masks=chosen, ov_masks=chosen, cluster="lab")
    _clean(at)
    assert fresh_home == ["bigram", "updates", "overlap"] and plotly_specs(at)
    assert at.multiselect(key="ov_masks").value == chosen
    at = open_page("behavior", bh_limit="16", cluster="lab")
    _clean(at)
    assert fresh_home == ["bigram", "updates", "overlap", "behavior"] and len(plotly_specs(at)) >= 2  # the open tab
    # a job this session launches goes to its cluster: the queued row's launch is the Ray proxy at that address
    next(b for b in at.button if "background job" in b.label).click().run()
    _clean(at)
    from subnetviz.jobs.runner import JobRunner

    runner = JobRunner(ray_address="")
    (row,) = [r for r in runner.list_runs().itertuples() if r.kind == "behavior"]
    rec = runner.get(row.id)
    assert rec.launch["command"][-3:] == ["subnetviz.jobs.ray_backend", "--address", ray_head], rec.launch
    runner.cancel(rec.id)
    assert runner.wait(rec.id, timeout=120).status in ("cancelled", "succeeded")


def test_training_form_asks_a_cluster_for_gpus(ray_head, fresh_home, monkeypatch):
    """On a cluster the Training form asks how many GPUs the job gets (Ray hands them out; the training
    processes take one each), refuses fewer GPUs than processes, and queues the count with the run; on
    this server there is no such field."""
    from subnetviz.jobs.runner import JobRunner

    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    monkeypatch.setenv("SUBNETVIZ_RAY_ADDRESSES", f"lab={ray_head}")
    queued: list[dict] = []

    at = open_page("training", tr_view="Launch")
    _clean(at)
    assert "GPUs" not in [n.label for n in at.number_input]
    at = open_page("training", tr_view="Launch", cluster="lab")
    _clean(at)
    assert "GPUs" in [n.label for n in at.number_input]
    # the job is recorded, not trained: the form's wiring is what is tested here
    monkeypatch.setattr(JobRunner, "submit", lambda self, cfg, name=None: queued.append(cfg) or "run-1")
    at.selectbox(key="tr_strategy").select("ddp")
    at.number_input(key="tr_nproc").set_value(2)
    at.number_input(key="tr_gpus").set_value(1)
    next(b for b in at.button if b.label == "Launch run").click().run()
    assert not at.exception and queued == []
    assert [e.value.replace("\\", "") for e in at.main.error] == [
        "2 processes need 2 GPUs (one each); the job asks for 1."
    ]
    at.number_input(key="tr_gpus").set_value(2)
    next(b for b in at.button if b.label == "Launch run").click().run()
    _clean(at)
    assert [(c["strategy"], c["num_processes"], c["num_gpus"]) for c in queued] == [("ddp", 2, 2)]
