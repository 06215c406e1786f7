"""A micro demo zoo under the test session's SUBNETVIZ_HOME, shared by the AppTest and e2e tests.

``SUBNETVIZ_E2E_HOME`` (a home that already holds a built zoo, e.g. the full demo zoo) skips the
build; the README's screenshots are taken that way.
"""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def app_home() -> Path:
    from subnetviz import config
    from subnetviz.demo.build import build_zoo, zoo_is_built

    home = config.home()
    if not zoo_is_built(config.zoo_dir()):
        build_zoo(config.zoo_dir(), preset="micro")
    os.environ["SUBNETVIZ_ROOTS"] = str(home)
    return home
