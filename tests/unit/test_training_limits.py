"""The integers of training, bigram and continual configs have upper bounds: 2**63 steps were accepted and then
overflowed the registry's SQLite INTEGER once the run reported its progress total. Refused in one line."""

from __future__ import annotations

import pytest

from subnetviz.errors import ConfigError
from subnetviz.training.config import TrainConfig, validate_config

HUGE = 2**63
GIANT = 10**5000  # Python refuses str() of it: the message must still be one line


def _train_problems(**kw) -> str:
    cfg = TrainConfig(algorithm="sft", base="/nonexistent/base", data="/nonexistent/d.jsonl", output_dir="/x/o", **kw)
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", HUGE, "steps must be at most 10000000, got 9223372036854775808"),
        ("steps", GIANT, "steps must be at most 10000000, got an integer of 16610 bits"),
        ("batch_size", HUGE, "batch_size must be at most 65536"),
        ("num_generations", HUGE, "num_generations must be at most 65536"),
        ("max_completion_length", HUGE, "max_completion_length must be at most 131072"),
        ("seed", GIANT, r"seed must be an integer in 0 .. 2\^32 - 1 \(NumPy's range\), got an integer of"),
        ("num_processes", GIANT, "num_processes must be at most 1024, got an integer of"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 30 else "",
)
def test_train_config_integers_have_upper_bounds(field, value, message):
    assert message.replace("\\", "") in _train_problems(**{field: value}).replace("\\", "")


def test_save_steps_beyond_the_bound_and_the_job_validator():
    msg = _train_problems(steps=HUGE, save_steps=[1, HUGE, GIANT, HUGE + 1, HUGE + 2])
    assert "save_steps [9223372036854775808, an integer of 16610 bits, 9223372036854775809] (and 1 more) lie" in msg
    with pytest.raises(ConfigError, match="steps must be at most 10000000"):
        validate_config({"kind": "train", "algorithm": "sft", "base": "/b", "data": "/d.jsonl", "steps": HUGE})


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"steps": HUGE}, "steps = 9223372036854775808; must be at most 10000000"),
        ({"seq_len": 2**40}, "seq_len = 1099511627776; must be at most 1048576"),
        ({"eval_sequences": 10**9}, "eval_sequences = 1000000000; must be at most 100000"),
        ({"seed": -1}, r"seed = -1; must be an integer in 0 .. 2\^32 - 1"),
        ({"seed": HUGE}, r"seed = 9223372036854775808; must be an integer in 0 .. 2\^32 - 1"),
        ({"seed": True}, "seed = True; must be an integer"),
    ],
)
def test_bigram_config_integers_have_upper_bounds(patch, message):
    from subnetviz.bigram.config import BigramJobConfig

    with pytest.raises(ConfigError, match=message) as e:
        BigramJobConfig.from_dict({"model": "/nonexistent/model", **patch})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"tasks": HUGE}, "tasks must be at most 10000000; got 9223372036854775808"),
        ({"seeds": [HUGE]}, r"seeds must be integers in 0 .. 2\^32 - 1 \(NumPy's range\); got 9223372036854775808"),
        ({"seeds": [-1]}, r"seeds must be integers in 0 .. 2\^32 - 1"),
        ({"seeds": list(range(1001))}, "seeds holds 1001 values; at most 1000"),
        ({"epochs": {"mask": HUGE}}, "mask_epochs must be at most 10000; got 9223372036854775808"),
        ({"epochs": {"finetune": True}}, "finetune_epochs must be an integer, not True"),
        ({"batch_size": HUGE}, "batch_size must be at most 65536"),
        ({"kkt_k": HUGE}, "kkt_k must be at most 10000"),
        ({"lr": {"mask": float("inf")}}, "mask_lr must be a finite number > 0; got inf"),
    ],
)
def test_continual_config_integers_have_upper_bounds(patch, message):
    from subnetviz.supermask.config import ContinualConfig

    ok = {"benchmark": "permuted-digits", "methods": ["supsup"], "tasks": 2, "seeds": [0]}
    ContinualConfig.from_dict(ok)
    with pytest.raises(ConfigError, match=message) as e:
        ContinualConfig.from_dict({**ok, **patch})
    assert "\n" not in str(e.value)
