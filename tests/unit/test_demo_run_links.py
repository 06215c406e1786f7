"""The demo's member runs link their ``outputs/model`` to the zoo's member the relative way within one home (a
copied or moved home shows its own zoo), computed from where the link really lies: a home whose ``runs/`` is a link
to another disk got ``../../../zoo/sft`` there, which dangled (the run's card lost its training summary)."""

from __future__ import annotations

import os

from subnetviz.demo.extras import _link_to


def _link(target, folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model").symlink_to(_link_to(target, folder))
    return folder / "model"


def test_a_link_within_the_home_is_relative_and_leads_to_the_member(tmp_path):
    home = tmp_path / "home"
    (home / "zoo" / "sft").mkdir(parents=True)
    link = _link(home / "zoo" / "sft", home / "runs" / "r1" / "outputs")
    assert not os.path.isabs(os.readlink(link)) and link.resolve() == (home / "zoo" / "sft").resolve()


def test_a_link_under_runs_on_another_disk_leads_to_the_member(tmp_path):
    home, disk = tmp_path / "home", tmp_path / "disk"
    (home / "zoo" / "sft").mkdir(parents=True)
    (disk / "runs").mkdir(parents=True)
    (home / "runs").symlink_to(disk / "runs", target_is_directory=True)
    link = _link(home / "zoo" / "sft", home / "runs" / "r1" / "outputs")
    assert link.resolve() == (home / "zoo" / "sft").resolve() and (link / ".").is_dir()


def test_a_target_outside_the_home_stays_absolute(tmp_path):
    (tmp_path / "elsewhere" / "sft").mkdir(parents=True)
    link = _link(tmp_path / "elsewhere" / "sft", tmp_path / "home" / "runs" / "r1" / "outputs")
    assert os.readlink(link) == str(tmp_path / "elsewhere" / "sft")
