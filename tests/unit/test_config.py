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


def test_require_memory_refuses_above_the_usable_share(monkeypatch):
    """80 % of what the machine has available may be planned for; one byte more is refused, with both figures."""
    from subnetviz import config

    monkeypatch.setattr(config, "available_memory_bytes", lambda: 10 * 2**30)
    monkeypatch.setattr(config, "cgroup_headroom", lambda: None)  # no container limit
    config.require_memory("Loading x", 8 * 2**30)  # exactly the usable share: allowed
    with pytest.raises(ConfigError, match=r"^Loading x needs about 8\.00 GiB of memory; this machine has 10\.00 GiB"):
        config.require_memory("Loading x", 8 * 2**30 + 1)


def test_a_refusal_under_a_container_limit_names_the_limit_not_the_machine(monkeypatch, tmp_path):
    """Under a cgroup limit tighter than the machine's free memory, the refusal said "this machine has 1.00 GiB
    available" on a machine with 64 GiB free: it names the container's (job's) limit now, and says to raise it."""
    from subnetviz import config

    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: {128 * 2**20} kB\nMemAvailable: {64 * 2**20} kB\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: real_open(meminfo if f == "/proc/meminfo" else f, *a, **k))
    monkeypatch.setattr(config, "cgroup_headroom", lambda: 2**30)
    assert config.available_memory_bytes() == 2**30
    with pytest.raises(ConfigError) as err:
        config.require_memory("Loading x", 2 * 2**30)
    text = str(err.value)
    assert "the memory limit of this container or job (cgroup) leaves 1.00 GiB available" in text
    assert "this machine" not in text and text.endswith("or raise that limit.")
    monkeypatch.setattr(config, "cgroup_headroom", lambda: 100 * 2**30)  # a limit looser than the machine
    with pytest.raises(ConfigError, match=r"this machine has 64\.00 GiB available .*or a GPU\.$"):
        config.require_memory("Loading x", 60 * 2**30)


def test_available_memory_is_the_kernels_estimate():
    from subnetviz import config

    with open("/proc/meminfo") as fh:
        line = next(x for x in fh if x.startswith("MemAvailable:"))
    kib = int(line.split()[1])
    assert abs(config.available_memory_bytes() - kib * 1024) < 512 * 2**20  # read a moment apart


def test_an_unusable_subnetviz_device_is_not_answered_with_auto(monkeypatch):
    """SUBNETVIZ_DEVICE=cuda on a machine without CUDA: 'auto' *is* that variable, so advising 'auto' went in a
    circle; the message says to set it to cpu or unset it."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    monkeypatch.setenv("SUBNETVIZ_DEVICE", "cuda")
    with pytest.raises(ConfigError) as caught:
        resolve_device("auto")
    message = str(caught.value)
    assert message.startswith("SUBNETVIZ_DEVICE='cuda' (the device 'auto' stands for): device 'cuda' asked for")
    assert "'auto'." not in message and "or 'auto'" not in message
    assert message.endswith("set it to cpu, or unset it for CUDA when present.")
