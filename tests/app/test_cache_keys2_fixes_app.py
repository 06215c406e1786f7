"""Cache review, second pass, in the app (AppTest, one server process for the module: its runs share the process
memo): what a page answered while memory was short is not kept once memory is free, and a damaged cache entry is
said by the page that computes it again.

A busy machine is simulated at the lowest level, by replacing ``config.available_memory_bytes``.
"""

import json
import math

import pytest
import torch
from safetensors import safe_open

from tests.app_fixtures import home_of_its_own, open_page

pytestmark = pytest.mark.slow

FREE = 64 * 2**30
TABS = ["Spectra of Δ", "Subspaces of W_base vs W_ft"]


@pytest.fixture(scope="module")
def app_home(micro_zoo, tmp_path_factory):
    """A home of its own over the micro zoo: its cache holds results computed under memory pressure."""
    with home_of_its_own(micro_zoo, tmp_path_factory, "cache-keys2-app") as home:
        yield home


def memory(monkeypatch, n: int) -> None:
    from subnetviz import config

    monkeypatch.setattr(config, "available_memory_bytes", lambda: n)


def _texts(at) -> list[str]:
    return [str(e.value).replace("\\", "") for e in (*at.caption, *at.markdown, *at.info, *at.warning)]


def _ok(at):
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _spectra(tab: str):
    return _ok(open_page("spectra", ft=["grpo-s0"], spec_tab=tab))


def test_spectra_and_subspaces_skipped_for_memory_are_computed_again_once_it_is_free(app_home, monkeypatch):
    from subnetviz.config import MEMORY_USABLE

    busy = 80_000
    with safe_open(str(app_home / "zoo" / "base" / "model.safetensors"), "pt") as f:
        shapes = [tuple(f.get_slice(k).get_shape()) for k in f.keys()]
    # the reference: a spectrum holds the Δ, its random baseline and their copies (33 bytes an entry) and a Gram
    need = [33 * math.prod(s) + 8 * min(s) ** 2 for s in shapes if len(s) == 2]
    short = sum(n > MEMORY_USABLE * busy for n in need)
    assert 0 < short < len(need)  # (some matrices fit, some do not)

    memory(monkeypatch, busy)
    said = [t for t in _texts(_spectra(TABS[0])) if "got no spectrum" in t]
    assert len(said) == 1 and said[0].startswith(f"{short} matrices got no spectrum") and "not enough memory" in said[0]
    assert [t for t in _texts(_spectra(TABS[1])) if "skipped for lack of memory" in t]

    memory(monkeypatch, FREE)  # the same server, memory free: computed again, as the disk cache does
    spectra = _texts(_spectra(TABS[0]))
    assert not [t for t in spectra if "got no spectrum" in t]
    assert [t for t in spectra if f"skipped {short} spectrum(s) for lack of memory; {short} fit now" in t]
    subspaces = _texts(_spectra(TABS[1]))
    assert not [t for t in subspaces if "skipped for lack of memory" in t]
    assert [t for t in subspaces if "memory now allows a comparison the cached result had skipped" in t]


def test_a_damaged_subspaces_entry_is_said_on_the_tab_that_computes_it_again(app_home, monkeypatch):
    from subnetviz import ui

    memory(monkeypatch, FREE)
    _spectra(TABS[1])  # computed (or read) and cached
    (entry,) = [p for p in (app_home / "cache" / "subspaces").iterdir() if not p.name.startswith(".")]
    files = json.loads((entry / ".manifest.json").read_text())["files"]
    name = sorted(files)[0]
    raw = bytearray((entry / name).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (entry / name).write_bytes(bytes(raw))
    ui._memo.clear()  # a new server: its memo is empty, so the tab asks the disk cache
    said = [t for t in _texts(_spectra(TABS[1])) if "was damaged" in t]
    assert len(said) == 1 and name in said[0] and "computed again" in said[0]


def test_a_mask_that_could_not_be_checked_for_memory_is_offered_once_memory_is_free(app_home, monkeypatch):
    def page():
        at = open_page("behavior", ft=["grpo-s0"], bh_limit="16")
        assert not at.exception, [e.message for e in at.exception]
        return list(at.multiselect(key="bh_masks").options), [str(w.value).replace("\\", "") for w in at.warning]

    memory(monkeypatch, 1000)  # the mask cannot be read at this moment
    offered, warnings = page()
    assert offered == []
    said = [w for w in warnings if "could not be checked against this base at the moment" in w]
    assert len(said) == 1 and "masks/grpo-seed0" in said[0] and "memory" in said[0]
    memory(monkeypatch, FREE)  # the same server: checked again, and it fits
    offered, warnings = page()
    assert offered == ["masks/grpo-seed0"] and not [w for w in warnings if "could not be checked" in w]


def test_the_run_cards_dense_mask_warning_is_given_once_memory_is_free(app_home, finished_run, monkeypatch):
    from subnetviz import config
    from subnetviz.masks import MaskSet, save_mask_set

    mask = config.home() / "uploads" / "mostly-ones-busy.safetensors"
    mask.parent.mkdir(parents=True, exist_ok=True)
    masks = {n: torch.ones(64, 64, dtype=torch.bool) for n in ("a.weight", "b.weight")}
    masks["c.weight"] = torch.zeros(64, 64, dtype=torch.bool)  # two of three tensors denser than 50 %
    save_mask_set(mask, MaskSet(masks, {"method": "a freeze map"}))
    finished_run("in-a-dense-mask-busy", {"algorithm": "sft", "learning_rate": 1e-4, "steps": 3, "mask": str(mask)})

    def warnings():
        at = open_page("training", tr_view="Runs", tr_run="in-a-dense-mask-busy")
        assert not at.exception, [e.message for e in at.exception]
        return [str(w.value).replace("\\", "") for w in at.warning]

    memory(monkeypatch, 1000)  # (the mask, bit-packed: 1.5 KiB)
    said = [w for w in warnings() if "denser than 50 %" in w]
    assert len(said) == 1 and "cannot be checked now" in said[0] and "memory" in said[0]
    memory(monkeypatch, FREE)
    said = [w for w in warnings() if "denser than 50 %" in w]
    assert len(said) == 1 and "This mask is denser than 50 % in 2 of its 3 tensors" in said[0]
