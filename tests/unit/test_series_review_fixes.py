"""Step labels of a checkpoint series: refused unless they increase strictly (the counts follow the checkpoints'
order, the chart draws by step), and the first checkpoint's own step is where the chart starts (a series labelled
100, 200, 300 drew a made-up point at 0 and never step 100). Planted counts: 100 entries, 10 then 50 changed."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from subnetviz import figures as F
from subnetviz.analysis.series import checkpoint_series
from subnetviz.errors import ConfigError
from subnetviz.figures.style import FigureDataError

W = "model.layers.0.mlp.up_proj.weight"


@pytest.fixture
def three(tmp_path) -> list[str]:
    """Three checkpoints of one 100-entry tensor: 10 entries changed at the second, 50 at the third."""
    paths = []
    for i, moved in enumerate([0, 10, 50]):
        w = torch.zeros(100)
        w[:moved] = 1.0
        path = tmp_path / f"c{i}"
        path.mkdir()
        save_file({W: w}, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("steps", [[0, 20, 10], [0, 10, 10], [5, 5, 6], [3, 2, 1]])
def test_steps_that_do_not_increase_strictly_are_refused_in_one_line(three, steps):
    with pytest.raises(ConfigError) as err:
        checkpoint_series(three, steps)
    said = str(err.value)
    assert "\n" not in said and "increase strictly" in said


def test_the_first_checkpoints_step_is_where_the_chart_starts(three):
    """[100, 200, 300]: the start point is drawn at 100 (100 % sparse), then 90 % and 50 % (hand counts);
    "vs previous" at 300 is the 40 entries changed from 200 to 300."""
    res = checkpoint_series(three, [100, 200, 300])
    assert res.first_step == 100 and res.steps["step"].tolist() == [200, 300]
    fig = F.series_lines(res.steps, first="first checkpoint", start=res.first_step)
    first, previous = fig.data[0], fig.data[1]
    assert list(first.x) == [100, 200, 300] and list(first.y) == pytest.approx([100.0, 90.0, 50.0])
    assert np.isnan(previous.y[0]) and list(previous.y[1:]) == pytest.approx([90.0, 60.0])
    assert checkpoint_series(three).first_step == 0  # default labels 0, 1, 2


def test_series_lines_refuses_steps_it_cannot_draw_in_order():
    """Two rows at one step, or a row before the first checkpoint's step: no "previous" point to draw against."""
    df = pd.DataFrame({"step": [10, 10], "vs_first": [0.9, 0.5], "vs_previous": [0.9, 0.6]})
    with pytest.raises(FigureDataError, match="distinct"):
        F.series_lines(df)
    with pytest.raises(FigureDataError, match="first checkpoint's step 100"):
        F.series_lines(df.assign(step=[50, 200]), start=100)


def test_module_series_starts_at_the_first_checkpoints_step():
    mods = pd.DataFrame({"step": [200, 300], "module": ["q", "q"], "changed": [1, 3], "numel": [10, 10]})
    tr = F.module_series(mods, start=100).data[0]
    assert list(tr.x) == [100, 200, 300] and list(tr.y) == pytest.approx([100.0, 90.0, 70.0])


def test_a_fan_out_merge_keeps_the_first_step_and_a_cluster_refuses_bad_steps_before_it_starts(tmp_path):
    """The Ray path's merged series starts at the first checkpoint's own step (it said 0), and steps that do not
    increase are refused by the local check before any driver is started."""
    from subnetviz.analysis.series import checkpoint_series
    from subnetviz.jobs import cluster
    from subnetviz.jobs.fanout import merge_series
    from tests.ckpt_fixtures import write_folder

    paths = [str(write_folder(tmp_path / f"v{i}", {"a.weight": torch.ones(4) * (1 + i)})) for i in range(3)]
    part = checkpoint_series(paths, [100, 200, 300], tensors={"a.weight"})
    assert merge_series([part], [100, 200, 300]).first_step == 100
    with pytest.raises(ConfigError, match="step labels must increase strictly"):
        cluster.checkpoint_series(paths, [0, 20, 10], address="ray://nowhere.invalid:1")
