"""The app's test home: SUBNETVIZ_HOME/zoo is the session's micro demo zoo (shared with the zoo tests).

``SUBNETVIZ_E2E_HOME`` (a home that already holds a built zoo, e.g. the full demo zoo) is used
as is instead; the README's screenshots are taken that way.
"""

import os
from pathlib import Path

import pytest

from tests.zoo_fixtures import micro_zoo  # noqa: F401


@pytest.fixture(scope="session")
def app_home(micro_zoo) -> Path:  # noqa: F811
    from subnetviz import config

    if os.environ.get("SUBNETVIZ_E2E_HOME"):
        os.environ["SUBNETVIZ_HOME"] = os.environ["SUBNETVIZ_E2E_HOME"]
        home = config.home()
        os.environ["SUBNETVIZ_ROOTS"] = str(home)
        return home
    home = config.home()
    link = config.zoo_dir()
    if not link.exists():
        link.symlink_to(Path(micro_zoo.root).resolve(), target_is_directory=True)
    os.environ["SUBNETVIZ_ROOTS"] = os.pathsep.join([str(home), str(Path(micro_zoo.root).resolve())])
    return home
