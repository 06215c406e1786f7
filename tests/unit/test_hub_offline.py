"""``hf:`` data sets are read from the local cache only: datasets' and huggingface_hub's offline flags are set while
a load runs. Two loads in one process (a Bigram corpus and Behaviour prompts) each saved the flags and put them back
when done, so the first to end turned the hub back on while the other still loaded. :func:`hub_offline` keeps them
on until the last load ends, and then puts back what was there before the first."""

from __future__ import annotations

import threading

import datasets
from huggingface_hub import constants as hub

from subnetviz.bigram.stats import hub_offline


def _flags():
    return datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE


def test_the_flags_stay_on_until_the_last_load_ends_then_are_put_back(monkeypatch):
    for module, name in ((datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE")):
        monkeypatch.setattr(module, name, False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    first_in, second_done, seen = threading.Event(), threading.Event(), {}

    def first():
        with hub_offline():
            first_in.set()
            second_done.wait(10)
            seen["first, after the second ended"] = _flags()

    t = threading.Thread(target=first)
    t.start()
    first_in.wait(10)
    with hub_offline():
        seen["second"] = _flags()
    second_done.set()
    t.join(10)
    assert seen == {"second": (True, True, True), "first, after the second ended": (True, True, True)}
    assert _flags() == (False, False, False)  # the last one out put back what was there


def test_an_error_inside_puts_the_flags_back(monkeypatch):
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    try:
        with hub_offline():
            assert hub.HF_HUB_OFFLINE is True
            raise OSError("not in the cache")
    except OSError:
        pass
    assert hub.HF_HUB_OFFLINE is False
