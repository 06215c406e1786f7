"""The What-drives-sparsity page after the third review, on a planted grid in the app's registry: its "bf16 vs fp32"
tab drew a run that trained nothing as an ordinary 100 % / 100 % pair; it is now drawn as × and named in the
chart's subtitle, as the "By factor" tab marks it, beside the page's warning that says why."""

import numpy as np
import pandas as pd
import pytest

from tests.app_fixtures import decode, open_page, plotly_specs

pytestmark = pytest.mark.slow

BASE = {"algorithm": "grpo", "accuracy": 0.5, "kl_forward": 0.004, "learning_rate": 1e-4, "steps": 2, "beta": 0.0}
BASE |= {"max_grad_norm": 1.0, "optimizer": "adamw_torch", "data": "task", "train_seconds": 1.0, "status": "done"}
BASE |= {"note": "", "grid_version": 2}


def test_the_bf16_vs_fp32_tab_marks_a_run_that_trained_nothing(planted_grid):
    from subnetviz.experiments.drivers import COLUMNS

    # steps=1 seed 1 trained nothing: both its saves equal the base (100 %); the other runs trained
    bf16 = {("1", 0): 0.368, ("1", 1): 1.0, ("2", 0): 0.23, ("2", 1): 0.19}
    fp32 = {("1", 0): 0.0043, ("1", 1): 1.0, ("2", 0): 0.0038, ("2", 1): 0.0039}
    rows = [
        {**BASE, "factor": "steps", "value": v, "seed": k, "precision": p, "sparsity": x[(v, k)]}
        for k in (0, 1)
        for v in ("1", "2")
        for p, x in (("bf16", bf16), ("fp32", fp32))
    ]
    label = planted_grid(pd.DataFrame(rows, columns=COLUMNS))
    at = open_page("drivers", dr_run=label, dr_tab="bf16 vs fp32")
    assert not at.exception and not at.error, [e.value for e in at.error]
    (warning,) = [w.value.replace("\\", "") for w in at.warning]
    assert warning.startswith("steps=1 seed 1 trained nothing") and "drawn as × in the charts" in warning
    (spec,) = plotly_specs(at)
    traces = {t.get("name"): t for t in spec["data"] if t.get("name")}
    assert list(traces["bf16 save"]["x"]) == ["steps=1 s0", "steps=2 s0", "steps=2 s1"]
    assert np.allclose(decode(traces["fp32 save"]["y"]).astype(float), [0.43, 0.38, 0.39])
    still = traces["trained nothing"]
    assert list(still["x"]) == ["steps=1 s1", "steps=1 s1"]
    assert np.allclose(decode(still["y"]).astype(float), [100, 100])
    assert still["marker"]["symbol"] == "x-thin-open"
    title = spec["layout"]["title"]["text"]
    assert "× trained nothing: steps=1 s1 (its fp32 save equals the base bit for bit" in title
