"""A run's name given only at submit (as every page gives it) survives a registry rebuilt from the run folders."""

import json

from tests.integration.test_jobs4_fixes import SLEEP, _cli, _lose_registry, _rows, _runner, allow_test_jobs  # noqa: F401


def test_a_name_given_at_submit_is_kept_by_a_rebuilt_registry(tmp_path):
    """Before: the name lived in the registry row only; a registry lost and rebuilt from the folders showed the run
    by its kind (the demo's member runs, every page-launched run)."""
    home = tmp_path / "home"
    root = home / "runs"
    r = _runner(root)
    run_id = r.submit({**SLEEP, "seconds": 0.1, "steps": 1}, name="grpo on the subnetwork, seed 1")
    r.wait(run_id, timeout=30)
    assert json.loads((root / run_id / "config.json").read_text())["name"] == "grpo on the subnetwork, seed 1"
    _lose_registry(root, "zero-bytes")
    out = _cli(home, "runs")
    assert out.returncode == 0, out.stderr
    assert _rows(root)[run_id]["name"] == "grpo on the subnetwork, seed 1"
    assert _rows(root)[run_id]["status"] == "succeeded"
