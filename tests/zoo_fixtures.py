"""Session fixture: the demo zoo's "micro" preset, built once per test session into a temp folder.

Other test files use it with ``from tests.zoo_fixtures import micro_zoo  # noqa: F401``. The
micro preset runs the same build code as the real demo zoo (pretraining, TRL finetunes, mask,
manifest) at toy sizes, in well under a minute.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def micro_zoo(tmp_path_factory):
    """A built micro zoo (:class:`subnetviz.demo.Zoo`); treat it as read-only."""
    from subnetviz.demo.build import build_zoo

    return build_zoo(tmp_path_factory.mktemp("micro-zoo"), preset="micro")


def copy_model_job(config: dict, ctx) -> None:
    """Test job (kind ``python``): a finished run whose model is a copy of ``config["source"]``."""
    import shutil

    shutil.copytree(config["source"], ctx.out_dir / "model")
