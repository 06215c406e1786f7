"""Job kinds: which function runs a config's ``kind``, and its validation before anything starts.

Test jobs: with ``SUBNETVIZ_ALLOW_TEST_JOBS=1`` in the environment, ``{"kind": "python",
"target": "module:function"}`` runs any importable job function (the runner tests use
``tests.training_fixtures:sleep_job``). Without that variable the kind is refused.
"""

from __future__ import annotations

import importlib
import json
import os

from subnetviz.errors import ConfigError, JobError, suggest
from subnetviz.jobs.context import JOB_KINDS

TEST_KIND = "python"
TEST_ENV = "SUBNETVIZ_ALLOW_TEST_JOBS"
VALIDATORS = {"train": "subnetviz.training.mask_fit:validate_config"}
# what a kind checks of the machine that runs it, where the runner knows that it is this one (the local backend): a
# train job's processes against its CPUs or GPUs. Its validator cannot tell where a job goes on a server that also
# offers a Ray cluster, and left the check to the launch: a 64-process config was queued, then failed.
LOCAL_CHECKS = {"train": "subnetviz.training.mask_fit:check_runs_here"}


def _import(target: str):
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def job_function(config: dict):
    """The ``function(config, ctx)`` for ``config["kind"]`` (ConfigError for an unknown kind)."""
    kind = config.get("kind")
    if kind == TEST_KIND:
        if os.environ.get(TEST_ENV) != "1":
            raise ConfigError(f"job kind {TEST_KIND!r} is for tests only (set {TEST_ENV}=1).")
        return _import(str(config.get("target", "")))
    if kind not in JOB_KINDS:
        raise ConfigError(
            f"job kind {kind!r} is unknown; expected one of {sorted(JOB_KINDS)}.{suggest(str(kind), JOB_KINDS)}"
        )
    return _import(JOB_KINDS[kind])


def validate_job_config(config: dict) -> None:
    """Check a job config before anything starts, with the kind's own validator when it has one."""
    if not isinstance(config, dict):
        raise ConfigError(f"a job config must be a dict, got {type(config).__name__}.")
    try:
        json.dumps(config)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"a job config must be plain JSON (str paths, numbers, lists, dicts): {exc}.") from None
    kind = config.get("kind")
    if kind == TEST_KIND:
        job_function(config)
        return
    if kind not in JOB_KINDS:
        job_function(config)  # raises the unknown-kind error
    target = VALIDATORS.get(kind) or JOB_KINDS[kind].split(":")[0] + ":validate_config"
    module, _, func = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise JobError(f"job kind {kind!r} is not available in this installation ({exc}).") from None
    validator = getattr(mod, func, None)
    if validator is not None:
        validator(config)


def check_runs_here(config: dict) -> None:
    """The checks of ``config`` (already validated) against this machine, for a job the local backend runs
    (:data:`LOCAL_CHECKS`; nothing for the other kinds)."""
    if (target := LOCAL_CHECKS.get(config.get("kind"))) is not None:
        _import(target)(config)
