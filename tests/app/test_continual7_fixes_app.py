"""The Continual page's Summary table, its CSV and its HTML export on a mean over seeds that cancels (continual7
review): SSNeT's forward transfer of +0.6 and -0.6 (0.7 - 0.1 and 0.3 - 0.9, each rounded its own way) read
"-5.551e-15 %" beside "0 %", as the review's run read "3.469e-16 %". Each now reads 0, and the three agree."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
import torch

from subnetviz.report.html import download_frame
from subnetviz.supermask.metrics import ContinualResult, RunResult
from tests.app_fixtures import finished_continual_run, open_page

pytestmark = pytest.mark.slow

RUN = "cl7-cancel"
# seed -> (A[0, 1], A_rand[1]): forward transfer 0.7 - 0.1 = 0.6 and 0.3 - 0.9 = -0.6000000000000001
SEEDS = {0: (0.7, 0.1), 1: (0.3, 0.9)}


def _result() -> ContinualResult:
    runs = []
    for seed, (before, rand) in SEEDS.items():
        gen = torch.Generator().manual_seed(seed)
        masks = tuple({"layer1.weight": torch.rand(4, 4, generator=gen) < 0.3} for _ in range(2))
        acc = np.array([[0.8, before], [0.75, 0.8]])
        runs.append(
            RunResult("permuted-digits", "ssnet", "SSNeT", False, 0.05, seed, acc, np.array([0.1, rand]), masks)
        )
    return ContinualResult("permuted-digits", tuple(runs))


def _exported_cell(page: str, label: str, column: str) -> str:
    """The text of ``column`` in the row of ``label`` of the export's Summary table."""
    table = page[page.index("Final accuracy, forgetting, capacity") :]
    table = table[: table.index("</table>")]
    head = re.findall(r"<th(?: [^>]*)?>(.*?)</th>", table[: table.index("</thead>")])
    for row in re.findall(r"<tr>(.*?)</tr>", table[table.index("<tbody>") :]):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        if cells[head.index("label")] == label:
            return cells[head.index(column)]
    raise AssertionError(f"no row {label!r} in the exported Summary table")


def test_a_forward_transfer_that_cancels_reads_zero_on_the_page_and_in_its_exports(app_env, exports):
    assert np.mean([b - r for b, r in SEEDS.values()]) != 0  # (-5.55e-17: what the page showed before)
    with finished_continual_run(RUN, "seeds that cancel", _result()):
        at = open_page("continual", cl_run=RUN)
        assert not at.exception and not at.error, [e.value for e in at.error]
        _, table = at.session_state["_tables"]["cl-summary"]
        row = table.set_index("label").loc["SSNeT"]
        assert row["forward_transfer_mean"] == 0.0 and row["seeds"] == 2
        csv = pd.read_csv(io.BytesIO(download_frame(table, "csv"))).set_index("label")
        assert csv.loc["SSNeT", "forward_transfer_mean"] == 0.0
        cell = _exported_cell(exports["Continual learning"](), "SSNeT", "forward_transfer_mean")
        assert cell in ("0 %", "0.00 %"), cell  # not "-5.551e-15 %"
