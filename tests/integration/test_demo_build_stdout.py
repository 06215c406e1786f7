"""``demo build`` prints only its own lines on stdout: the zoo's folder and one row per member. The stages'
trainings printed their run lines ("training grpo on ...", "TensorBoard events: ...", "saved ... after 6 steps")
and DeepSpeed its "Setting accelerator to CPU" there, before the summary a script reads; they go to stderr."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_build_stdout_is_the_summary_only(tmp_path):
    root = tmp_path / "zoo"
    env = {**os.environ, "SUBNETVIZ_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "subnetviz", "demo", "build", "--preset", "micro", "--root", str(root), "--no-extras"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    members = [m["id"] for m in json.loads((root / "manifest.json").read_text())["members"]]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"demo zoo at {root.resolve()} ("), lines[:3]
    assert [x.split()[0] for x in lines[1:]] == members, lines
    assert "training grpo on" in proc.stderr and "saved " in proc.stderr  # the run lines are kept, on stderr
