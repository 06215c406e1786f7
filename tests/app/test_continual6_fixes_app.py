"""The Continual page on damaged results and at 1024 px (continual6 review), through AppTest.

- A run whose ``frames/accuracy.parquet`` is cut off showed only "Something went wrong inside subnetviz
  (ArrowInvalid). This is a bug"; now one error line naming the file, and the Run picker still opens another run.
- The owner image's title, "SupSup: owner task of layer1.weight (5 %, seed 1)", ran 81 px past its half-width chart
  at 1024 px, cutting the density and seed off; they are on a second line now.
- A NaN final accuracy made the SupSup note read "… vs nan % …"; its cell below the diagonal was grey, the colour of
  "not trained yet", and is now marked "n/a".
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.app_fixtures import finished_continual_run, open_page, plotly_specs
from tests.integration.test_continual6_fixes import FT, SUBTITLE_CHARS, TITLE_CHARS, _result

pytestmark = pytest.mark.slow


def _read(text: str) -> str:
    """An element's text as a visitor reads it (Markdown escapes and zero-width breaks removed)."""
    return text.replace("\\", "").replace("\u200b", "")


def _texts(at) -> list[str]:
    return [_read(e.value) for kind in ("markdown", "caption", "info", "warning", "error") for e in at.get(kind)]


def test_a_cut_off_frame_file_is_one_line_and_the_run_picker_still_works(app_env):
    with (
        finished_continual_run("cl6-whole", "whole run", _result()),
        finished_continual_run("cl6-trunc", "cut-off run", _result()) as trunc,
    ):
        path = trunc / "outputs" / "frames" / "accuracy.parquet"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        at = open_page("continual", cl_run="cl6-trunc")
        assert not at.exception, [e.value for e in at.exception]
        errors = [_read(e.value) for e in at.error]
        assert len(errors) == 1 and "cl6-trunc/outputs/frames/accuracy.parquet: unreadable" in errors[0], errors
        assert "bug" not in errors[0] and "\n" not in errors[0].strip()
        at.selectbox(key="cl_run").select("cl6-whole").run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert plotly_specs(at)  # the other run's charts


def test_the_owner_image_title_fits_with_its_setting_on_a_second_line(app_env):
    with finished_continual_run("cl6-owner", "owner title", _result()):
        at = open_page("continual", cl_run="cl6-owner", cl_tab="Capacity", cl_seed="1")
        assert not at.exception and not at.error, [e.value for e in at.error]
        titles = [s["layout"]["title"]["text"] for s in plotly_specs(at)]
        owner = [t for t in titles if "owner task" in t]
        assert owner == ["owner task of l.weight<br><sup>SupSup, 20 %, seed 1</sup>"], titles
        lines = [re.sub(r"<[^>]+>", "", line) for line in owner[0].split("<br>")]
        assert len(lines[0]) <= TITLE_CHARS and len(lines[1]) <= SUBTITLE_CHARS, lines


def test_a_nan_accuracy_says_no_order_and_is_marked_n_a(app_env):
    ft = FT.copy()
    ft[2, 0] = np.nan
    with finished_continual_run("cl6-nan", "NaN accuracy", _result(ft=ft)):
        at = open_page("continual", cl_run="cl6-nan")
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert not [t for t in _texts(at) if "SupSup ends below" in t or "nan %" in t]
        at = open_page("continual", cl_run="cl6-nan", cl_tab="After each task", cl_seed="0")
        assert not at.exception and not at.error, [e.value for e in at.error]
        (spec,) = [s for s in plotly_specs(at) if s["layout"]["title"]["text"].startswith("finetune")]
        marked = [t for t in spec["data"] if "n/a" in str(t.get("text"))]
        assert len(marked) == 1 and marked[0]["text"][2][0] == "n/a", spec["data"]
