"""Shared test set-up: one torch thread (2-core CI box), never the hub, an isolated SUBNETVIZ_HOME."""

import os
import tempfile

# 2-core CI box: torch's default 2 OpenMP threads thrash under any other load.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub in tests
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never touch the user's real cache: an isolated home, shared by the whole session.
os.environ["SUBNETVIZ_HOME"] = os.environ.get("SUBNETVIZ_TEST_HOME") or tempfile.mkdtemp(prefix="subnetviz-test-home-")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# The shared fixtures, registered once for the whole session: the checkpoint zoo and the micro demo
# zoo are built once per run (a test module that re-exported them used to build its own copy).
pytest_plugins = ["tests.zoo_fixtures", "tests.ckpt_fixtures", "tests.app_fixtures", "tests.browser"]


@pytest.fixture(autouse=True)
def _roots_enforced_only_where_set():
    """app.py enforces the read roots for its process (SUBNETVIZ_ENFORCE_ROOTS=1); an AppTest runs it in
    this process, so the flag is cleared after each test instead of leaking into the next one."""
    yield
    os.environ.pop("SUBNETVIZ_ENFORCE_ROOTS", None)
