"""The sixth command-line review's fixes, without a model: the drivers grid's seeds are bounded where a config is
validated (the command line, a job's config, ``run_drivers``) and the Drivers page offers no count they refuse; the
output-name check follows the file system's own limit on a name (eCryptfs' 143 bytes, not only 255)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from subnetviz.errors import ConfigError, SubnetvizError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("seeds", [10**11, 101, 0, -1, "x", 1.7, True, pytest.param(10**5000, id="5001 digits")])
def test_a_drivers_job_config_with_seeds_out_of_range_is_refused_in_one_line(seeds):
    """A job config's 'seeds' of 10**11 passed validation: the worker then planned 19 runs a seed before anything
    (18.8 GB in 20 s). A number past Python's 4300 digits is said without its digits."""
    from subnetviz.experiments.drivers import MAX_SEEDS, validate_config
    from subnetviz.jobs.kinds import validate_job_config

    if seeds != 10**5000:  # (not JSON: refused as that first)
        with pytest.raises(ConfigError, match="drivers seeds must be"):
            validate_job_config({"kind": "drivers", "preset": "micro", "seeds": seeds})
    with pytest.raises(ConfigError) as refused:
        validate_config({"preset": "micro", "seeds": seeds})
    text = str(refused.value)
    high = isinstance(seeds, int) and not isinstance(seeds, bool) and seeds > MAX_SEEDS
    said = f"at most {MAX_SEEDS} (each seed trains a whole grid)" if high else "a whole number >= 1"
    assert text.startswith(f"drivers seeds must be {said}, got ") and len(text) < 140, text
    assert "\n" not in text


def test_run_drivers_refuses_absurd_seeds_before_planning(monkeypatch, tmp_path):
    from subnetviz.experiments import drivers

    monkeypatch.setattr(drivers.DriversPreset, "plan", lambda *a, **k: pytest.fail("the grid was planned"))
    with pytest.raises(
        ConfigError, match=r"seeds must be at most 100 \(each seed trains a whole grid\), got 99999999999\."
    ):
        drivers.run_drivers(tmp_path, "micro", 99999999999)


def _page_seeds() -> tuple[int, int]:
    """The Drivers page's Seeds input's (min, max), read from its source (views/drivers.py)."""
    tree = ast.parse((ROOT / "views" / "drivers.py").read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "number_input"
            and node.args
            and getattr(node.args[0], "value", None) == "Seeds"
        ):
            given = dict(zip(("label", "min_value", "max_value"), node.args, strict=False))
            given |= {k.arg: k.value for k in node.keywords}
            return ast.literal_eval(given["min_value"]), ast.literal_eval(given["max_value"])
    raise AssertionError("no Seeds input on the Drivers page")


def test_every_seed_count_the_drivers_page_offers_is_one_its_job_takes():
    """The page's Seeds input and the config's bound agree: every count it offers passes, and the bound is no
    lower than the page's largest (a page whose job is refused at submission)."""
    from subnetviz.experiments.drivers import MAX_SEEDS, validate_config

    low, high = _page_seeds()
    assert 1 <= low <= high <= MAX_SEEDS
    for seeds in range(low, high + 1):
        validate_config({"preset": "quick", "seeds": seeds})
    validate_config({"preset": "quick", "seeds": MAX_SEEDS})
    with pytest.raises(ConfigError):
        validate_config({"preset": "quick", "seeds": MAX_SEEDS + 1})


def test_the_name_limit_is_the_file_systems_own(monkeypatch, tmp_path):
    """Where the file system takes 143 bytes a name (eCryptfs), the limit is 143 less the temporary name's."""
    from subnetviz.cli import common

    monkeypatch.setattr(common.os, "pathconf", lambda path, name: 143)
    added = len(f"..tmp-{4194304}-{2**64}")
    common.check_name_length(tmp_path / ("n" * (143 - added)), "--out N")
    with pytest.raises(SubnetvizError, match=rf"^--out N: its name is {144 - added} bytes long; at most {143 - added}"):
        common.check_name_length(tmp_path / ("n" * (144 - added)), "--out N")
    monkeypatch.setattr(common.os, "pathconf", lambda path, name: (_ for _ in ()).throw(OSError(22, "Invalid")))
    assert common.name_max(tmp_path) == 255  # (a file system that does not say: the usual 255)


def test_the_seeds_help_names_the_bound():
    from subnetviz.cli import build_parser
    from subnetviz.experiments.drivers import MAX_SEEDS

    experiment = build_parser()._subparsers._group_actions[0].choices["experiment"]
    (seeds,) = [a for a in experiment._actions if a.dest == "seeds"]
    assert f"at most {MAX_SEEDS})" in seeds.help
