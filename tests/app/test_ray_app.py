"""Pages served with ``SUBNETVIZ_RAY_ADDRESS`` set: their analyses run on the cluster (a local head on
127.0.0.1, 2 CPUs, started and stopped here), the pages render as they do locally; an unreachable
cluster is one clear message in the main area, not a traceback or a hang.

Each test starts from an empty home (its own disk cache) and empty Streamlit caches, so the page
really computes instead of finding an earlier test's result.
"""

from __future__ import annotations

import socket

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements-ray.txt)")

from subnetviz.jobs import cluster  # noqa: E402
from subnetviz.jobs.ray_backend import RAY_ADDRESS_ENV, local_head  # noqa: E402
from tests.app_fixtures import app_roots, open_page, plotly_specs  # noqa: E402
from tests.zoo_fixtures import micro_zoo  # noqa: E402, F401

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_head():
    with local_head(num_cpus=2) as address:
        yield address


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
    at = open_page("overlap")  # the same analysis (memo), its masks overlapped here
    _clean(at)
    assert fresh_home == ["updates"] and plotly_specs(at)
    at = open_page("series")
    _clean(at)
    assert fresh_home == ["updates", "series", "updates"] and len(plotly_specs(at)) >= 3


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
