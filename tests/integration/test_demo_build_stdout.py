"""``demo build`` prints only its own lines on stdout: the zoo's folder and one row per member. The stages'
trainings printed their run lines ("training grpo on ...", "TensorBoard events: ...", "saved ... after 6 steps")
and DeepSpeed its "Setting accelerator to CPU" (through a handler it opens on the stdout of the moment it is
imported, inside the build) there, before the summary a script reads; they go to stderr."""

import logging
import sys
from pathlib import Path
from types import SimpleNamespace

from subnetviz.demo import build


def test_demo_build_stdout_is_the_summary_only(tmp_path, monkeypatch, capsys):
    root = tmp_path / "zoo"
    members = [
        SimpleNamespace(id="base", algorithm="pretrain", accuracy=0.05, sparsity=1.0),
        SimpleNamespace(id="grpo-s0", algorithm="grpo", accuracy=0.05, sparsity=0.22),
    ]

    def stages(root_arg, **kwargs):  # what the stages print while they train, as they print it
        print(f"training grpo on {root}/data/A_train.jsonl from {root}/base (full; strategy single)")
        handler = logging.StreamHandler(sys.stdout)  # DeepSpeed's, opened at its import inside the build
        log = logging.getLogger("fake-deepspeed")
        log.addHandler(handler)
        log.warning("Setting accelerator to CPU.")
        log.removeHandler(handler)
        return SimpleNamespace(root=Path(root_arg), members=members)

    monkeypatch.setattr(build, "build_zoo", stages)
    assert build.main(["build", "--preset", "micro", "--root", str(root), "--no-extras"]) == 0
    said = capsys.readouterr()
    lines = said.out.splitlines()
    assert lines[0].startswith(f"demo zoo at {root} (") and [x.split()[0] for x in lines[1:]] == ["base", "grpo-s0"]
    assert "training grpo on" in said.err and "Setting accelerator to CPU." in said.err  # kept, on stderr
