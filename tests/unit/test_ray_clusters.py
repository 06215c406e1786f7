"""Where a visitor may have the pages compute: only what the server's owner named (config.ray_clusters)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from subnetviz import config
from subnetviz.errors import ConfigError


def _clusters(monkeypatch, default: str | None, more: str | None) -> dict[str, str]:
    for env, value in (("SUBNETVIZ_RAY_ADDRESS", default), ("SUBNETVIZ_RAY_ADDRESSES", more)):
        if value is None:
            monkeypatch.delenv(env, raising=False)
        else:
            monkeypatch.setenv(env, value)
    return config.ray_clusters()


@pytest.mark.parametrize(
    ("default", "more", "expected"),
    [
        (None, None, {"this server": ""}),  # nothing configured: the server computes, no choice
        ("head:6379", None, {"head:6379": "head:6379"}),  # a default cluster and nothing else: no choice
        (None, "a:1, lab=ray://b.x:10001", {"this server": "", "a:1": "a:1", "lab": "ray://b.x:10001"}),
        ("h:1", "b=c:2,lab=h:1", {"lab": "h:1", "b": "c:2"}),  # the default first, under its name; no server
        ("h:1", "local,b=[::1]:2", {"h:1": "h:1", "this server": "", "b": "[::1]:2"}),  # the owner allows the server
        (None, "local,,a:1,a:1", {"this server": "", "a:1": "a:1"}),
    ],
)
def test_choices_are_the_operators(monkeypatch, default, more, expected):
    got = _clusters(monkeypatch, default, more)
    assert got == expected and list(got) == list(expected)  # the order too: the first is the default


@pytest.mark.parametrize(
    "more",
    ["lab=no-port", "=a:1", "a b:1", "x=a:1,x=b:2", "this server=a:1", "http://a:1", "a:1;rm -rf /"],
)
def test_malformed_lists_are_refused(monkeypatch, more):
    with pytest.raises(ConfigError, match="SUBNETVIZ_RAY_ADDRESSES"):
        _clusters(monkeypatch, None, more)


def test_a_name_that_is_the_defaults_address_is_refused(monkeypatch):
    """'h:1=10.0.0.6:2' beside the default h:1 replaced the default under its own name: the sidebar's "h:1"
    computed on another host while jobs went to h:1."""
    with pytest.raises(ConfigError, match="names another address after the default cluster 'h:1'"):
        _clusters(monkeypatch, "h:1", "h:1=10.0.0.6:2")


def test_an_infinite_connect_timeout_is_the_default(monkeypatch):
    """SUBNETVIZ_RAY_CONNECT_TIMEOUT=inf ended a probe in OverflowError (a traceback, not the one-line error)."""
    from subnetviz.jobs import cluster

    for raw in ("inf", "1e400", "nan"):
        monkeypatch.setenv("SUBNETVIZ_RAY_CONNECT_TIMEOUT", raw)
        assert cluster._seconds("SUBNETVIZ_RAY_CONNECT_TIMEOUT", 5.0) == 5.0


def test_work_sent_to_a_cluster_carries_the_roots_as_resolved_here(monkeypatch, tmp_path):
    """Without SUBNETVIZ_ROOTS a worker resolved the roots itself: its own current directory (/ for a head
    started there) became a root, and enforced roots stopped nothing on it."""
    from subnetviz import config

    monkeypatch.delenv("SUBNETVIZ_ROOTS", raising=False)
    monkeypatch.chdir(tmp_path)
    env = config.worker_env()
    assert env["SUBNETVIZ_ROOTS"].split(os.pathsep) == [str(r) for r in config.allowed_roots()]
    assert str(tmp_path.resolve()) in env["SUBNETVIZ_ROOTS"].split(os.pathsep)
    monkeypatch.chdir("/")  # the worker's own directory no longer decides
    monkeypatch.setenv("SUBNETVIZ_ROOTS", env["SUBNETVIZ_ROOTS"])
    assert Path("/") not in config.allowed_roots() and tmp_path.resolve() in config.allowed_roots()


def test_pages_name_a_named_cluster_by_its_name(monkeypatch):
    """An error or progress line a visitor sees names the cluster as its owner named it, not its address."""
    from subnetviz.errors import JobError
    from subnetviz.jobs import cluster

    _clusters(monkeypatch, "10.0.0.9:1", "lab=127.0.0.1:1")
    assert cluster.shown("127.0.0.1:1") == "'lab'" and cluster.shown("10.0.0.9:1") == "10.0.0.9:1"
    with pytest.raises(JobError, match="No Ray cluster answers at 'lab' ") as err:
        cluster.probe("127.0.0.1:1", timeout=1)
    assert "127.0.0.1" not in str(err.value)
