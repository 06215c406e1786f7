"""Configuration read in one place: devices a user may name, and the refusal of the others."""

import pytest

from subnetviz.config import resolve_device
from subnetviz.errors import ConfigError


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cpu:1", "gpu", ""])
def test_unknown_device_is_one_line(device, monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "cpu")
    if device == "":  # empty falls back to SUBNETVIZ_DEVICE
        assert resolve_device(device) == "cpu"
        return
    with pytest.raises(ConfigError, match=rf"device {device!r} is not one subnetviz can use"):
        resolve_device(device)


def test_known_devices():
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA GPU"):
            resolve_device("cuda:0")
