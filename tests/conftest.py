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


# `make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadfile`), scheduled here: each
# test file is one unit of work, so its module fixtures are built once, on one worker, and the files whose
# tests start several processes at once (2-rank training, Ray heads, drivers and workers) are one unit
# together. They run one after another on one worker, beside the single-process tests on the other,
# instead of two of them competing for the 2 cores (and for their connect and start timeouts) at once.
# (xdist's own `--dist loadgroup` does not group under pytest 9: it rewrites a test id pytest no longer reads.)
MULTIPROCESS = {"test_sharded.py", "test_ray.py", "test_ray_pages.py", "test_ray_app.py", "test_cli_review_launch.py"}


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, called only where it runs the suite
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FilesAndMultiprocessGroup(LoadScopeScheduling):
        """Units: each file, and the multi-process files together, sent first (the longest unit)."""

        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return "multiprocess" if file.rsplit("/", 1)[-1] in MULTIPROCESS else file

        def schedule(self) -> None:
            self.config.option.loadscopereorder = False  # units in collection order (below), not by test count
            super().schedule()

    return FilesAndMultiprocessGroup(config, log)


def pytest_collection_modifyitems(config, items):
    """The multi-process tests are contiguous, so the one Ray head below serves its files in one stretch:
    first on an xdist worker (their unit, the longest, starts at once), last in a single process."""
    first = bool(os.environ.get("PYTEST_XDIST_WORKER"))
    items.sort(key=lambda item: (item.path.name in MULTIPROCESS) != first)  # stable: files keep their order


@pytest.fixture(scope="session")
def ray_head():
    """One local Ray head on 127.0.0.1 (2 CPUs) for every test file that needs one, started once (a start
    takes 7 s on the idle 2-core box, 14-27 s under the suite), its own process session killed at the end."""
    pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements-ray.txt)")
    from subnetviz.jobs.ray_backend import local_head

    with local_head(num_cpus=2) as address:
        yield address


@pytest.fixture(autouse=True)
def _roots_enforced_only_where_set():
    """app.py enforces the read roots for its process (SUBNETVIZ_ENFORCE_ROOTS=1); an AppTest runs it in
    this process, so the flag is cleared after each test instead of leaking into the next one."""
    yield
    os.environ.pop("SUBNETVIZ_ENFORCE_ROOTS", None)


@pytest.fixture
def terminal_sigint():
    """Ctrl-C as a terminal delivers it: Python's default SIGINT handler for the test, the earlier one put back after.
    A test process started with SIGINT ignored (a background job of a non-interactive shell: `(cmd &)`) inherits
    SIG_IGN, and the CLI rightly leaves an ignored Ctrl-C ignored, so the tests of what Ctrl-C does need it set."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
