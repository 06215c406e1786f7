"""``mask info`` on a continual run's task mask (contcli9 review): the file ``task2.safetensors``, which the Continual
page and the sidebar's *Saved masks* call "task 3", printed only ``"task": 2`` (files count tasks from 0 by design).
It now also says the task as the app counts it; the file's own ``"task": 2`` is kept for scripts."""

from __future__ import annotations

import json

import numpy as np
import torch

from subnetviz.cli import main
from subnetviz.supermask.job import mask_path, save_result
from subnetviz.supermask.metrics import ContinualResult, RunResult

AS_SHOWN = "task (counted from 1, as the app shows it)"


def _info(path, capsys) -> dict:
    assert main(["mask", "info", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def test_mask_info_says_the_task_as_the_page_counts_it(tmp_path, capsys):
    gen = torch.Generator().manual_seed(0)
    masks = tuple({"layer1.weight": torch.rand(4, 4, generator=gen) < 0.3} for _ in range(3))
    acc = np.tril(np.full((3, 3), 0.8)) + np.triu(np.full((3, 3), 0.1), 1)
    run = RunResult("split-digits", "exssnet", "ExSSNeT", False, 0.05, 0, acc, np.full(3, 0.1), masks)
    save_result(ContinualResult("split-digits", (run,)), tmp_path)
    for t in range(3):  # the files count from 0: task0, task1, task2; the page says task 1, 2, 3
        path = mask_path(tmp_path, "ExSSNeT", 0.05, 0, t)
        assert path.name == f"task{t}.safetensors"
        info = _info(path, capsys)
        assert info["metadata"]["task"] == t  # kept for scripts that read the stored task
        assert info[AS_SHOWN] == t + 1
        assert info["count"] == int(masks[t]["layer1.weight"].sum())  # (the rest of the output as before)


def test_a_mask_of_no_continual_run_gets_no_such_line(tmp_path, capsys):
    path = tmp_path / "m.npz"
    np.savez(path, w=np.eye(4, dtype=bool), task=np.array("2"))  # a "task" of someone else's: not re-counted
    info = _info(path, capsys)
    assert AS_SHOWN not in info and info["count"] == 4
