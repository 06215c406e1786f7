"""Cache review, second pass: answers given under memory pressure are not kept as facts, and a damaged cache entry is
said by whoever computes it again.

A busy machine is simulated at the lowest level, by replacing ``config.available_memory_bytes`` (every memory check
reads it). The app's process memo is :class:`subnetviz.memo.Memo` (``ui.heavy`` and ``ui.shared`` run it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from subnetviz import config
from subnetviz.errors import ConfigError
from subnetviz.memo import Memo
from tests.ckpt_fixtures import bf16_step, write_folder

DOWN = "layers.0.mlp.down_proj.weight"
FREE = 64 * 2**30  # a machine with memory to spare


def memory(monkeypatch, n: int) -> None:
    monkeypatch.setattr(config, "available_memory_bytes", lambda: n)


@pytest.fixture
def pair(tmp_path):
    """A base and a finetune: an 8 x 8 and an 8 x 900 matrix, one entry moved in each."""
    g = torch.Generator().manual_seed(0)
    sd = {
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8, generator=g).to(torch.bfloat16),
        f"model.{DOWN}": torch.randn(8, 900, generator=g).to(torch.bfloat16),
    }
    base = write_folder(tmp_path / "base", sd)
    ft = {k: v.clone() for k, v in sd.items()}
    for v in ft.values():
        v[0, :1] = bf16_step(v[0, :1], 1)
    return str(base), str(write_folder(tmp_path / "ft", ft))


def skipped_of(value: dict) -> int:
    return value["skipped"]


# --- 1. the memo: a result that skipped work for memory stands only while memory is short -------------------------
def test_a_provisional_value_is_computed_again_once_its_check_says_no_and_what_derives_from_it_too():
    memo, computed, standing = Memo(), [], {"now": True}

    def compute():
        computed.append(len(computed))
        return {"skipped": 9 - 9 * (len(computed) - 1)}  # the first computation skips 9, the next none

    def recheck(value):
        return (lambda: standing["now"]) if value["skipped"] else None

    first = memo.get_or_compute("k", compute, "analysis", recheck=recheck)
    assert memo.get_or_compute("k", compute, "analysis", recheck=recheck) is first and computed == [0]
    assert memo.call(skipped_of, first) == 9  # something derived from it, keyed by its memo key
    standing["now"] = False  # memory is free: the skip no longer stands
    second = memo.get_or_compute("k", compute, "analysis", recheck=recheck)
    assert computed == [0, 1] and second == {"skipped": 0}
    assert memo.key_of(second) != memo.key_of(first)  # so nothing derived from the first is served for it
    assert memo.call(skipped_of, second) == 0
    # a final value is kept without asking: the check is gone with the value it was for
    assert memo.get_or_compute("k", compute, "analysis", recheck=recheck) is second and computed == [0, 1]


def test_the_update_analysis_memo_check_follows_the_memory_and_the_cache_entry(pair, tmp_path, monkeypatch):
    from subnetviz.analysis.update_pass import SpectraOptions, spectrum_bytes
    from subnetviz.analysis.updates import cached_analysis
    from subnetviz.selection import Workspace
    from subnetviz.uilogic import memory_skip_check

    base, ft = pair
    ws = Workspace(base, "base", (("ft", ft),), (), None, "cpu", None)
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    short = int(spectrum_bytes((8, 900), True) / config.MEMORY_USABLE) - 1024  # 8 x 900 does not fit, 8 x 8 does
    memory(monkeypatch, short)
    kw = dict(labels=["ft"], spectra=SpectraOptions(enabled=True), device="cpu")
    busy = cached_analysis(base, [ft], **kw)
    assert busy.spectra_table().set_index("name").loc[DOWN, "skipped"]
    stands = memory_skip_check(busy, ws)
    assert stands is not None and stands()  # still short: kept
    memory(monkeypatch, FREE)
    assert not stands()  # the 8 x 900 matrix fits now: computed again
    full = cached_analysis(base, [ft], **kw)  # (what a new server process gives)
    assert not full.spectra_table()["skipped"].any() and memory_skip_check(full, ws) is None

    memory(monkeypatch, short)  # the entry computed again elsewhere while this memo held the busy answer
    assert not stands()


# --- 2. a memory refusal is no misfit: raised, so that no memo keeps it ------------------------------------------
@pytest.fixture
def dense_mask(tmp_path):
    """A mask that is 1 in 90 % of each of its 3 tensors (a freeze map, 1 = frozen)."""
    from subnetviz.masks import MaskSet, save_mask_set

    g = torch.Generator().manual_seed(0)
    masks = {f"layers.{i}.w": torch.rand(64, 64, generator=g) < 0.9 for i in range(3)}
    path = tmp_path / "frozen_map.safetensors"
    save_mask_set(path, MaskSet(masks))
    return str(path), masks


def test_the_dense_mask_note_is_not_kept_as_none_when_memory_refused_the_read(dense_mask, monkeypatch):
    from subnetviz.training import mask_origin

    path, masks = dense_mask
    dense = sum(float(m.float().mean()) > 0.5 for m in masks.values())
    assert dense == 3  # (the planted reference: every tensor is denser than 50 %)
    memo = Memo()
    memory(monkeypatch, 1000)
    with pytest.raises(ConfigError, match="memory"):
        memo.call(mask_origin.dense_note_of, path, "stamp")
    memory(monkeypatch, FREE)
    note = memo.call(mask_origin.dense_note_of, path, "stamp")  # the same memo, once memory is free
    assert note is not None and "denser than 50 % in 3 of its 3 tensors" in note


def test_a_mask_refused_for_memory_is_no_misfit_of_the_base(micro_zoo, monkeypatch):
    from safetensors import safe_open

    from subnetviz.uilogic import mask_misfit

    base, mask = str(micro_zoo.root / "base"), str(micro_zoo.mask_path("grpo-s0"))
    with safe_open(f"{base}/model.safetensors", "pt") as b, safe_open(mask, "pt") as m:
        held = {k: tuple(b.get_slice(k).get_shape()) for k in b.keys()}
        names = list(m.keys())
    assert names and all(n in held for n in names)  # (the reference: every tensor of the mask is the base's)
    memo = Memo()
    memory(monkeypatch, 1000)
    with pytest.raises(ConfigError, match="memory"):
        memo.call(mask_misfit, mask, base, ("stamps",))
    memory(monkeypatch, FREE)
    assert memo.call(mask_misfit, mask, base, ("stamps",)) is None  # it fits, in the same memo


def test_has_routers_raises_a_memory_refusal_instead_of_answering_no(tmp_path, monkeypatch):
    """A legacy torch.save base (read whole, so its memory is checked) of a mixture of experts."""
    from tests.models import make_tiny_moe

    # (the view runs its page when imported: its function is taken from its source)
    source = (Path(__file__).resolve().parents[2] / "views" / "behavior.py").read_text()
    start = source.index("def has_routers(")
    namespace: dict = {}
    exec(source[start : source.index("\ndef ", start + 1)], namespace)  # noqa: S102 - the project's own code
    has_routers = namespace["has_routers"]

    from safetensors.torch import load_file

    folder = make_tiny_moe(tmp_path / "moe")
    state = load_file(str(folder / "model.safetensors"))
    routers = [k for k in state if k.endswith("mlp.gate.weight")]
    assert routers  # (the planted answer: a Qwen3-MoE's router is each layer's mlp.gate)
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    memo = Memo()
    memory(monkeypatch, 1000)
    with pytest.raises(ConfigError, match="memory"):
        memo.call(has_routers, str(folder), ("stamp",))
    memory(monkeypatch, FREE)
    assert memo.call(has_routers, str(folder), ("stamp",)) is True


# --- 3. a damaged entry: the notice is kept until the computation that replaces it ----------------------------------
def _damage(folder: Path) -> str:
    files = json.loads((folder / ".manifest.json").read_text())["files"]
    name = sorted(files)[0]
    raw = bytearray((folder / name).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (folder / name).write_bytes(bytes(raw))
    return name


def test_a_damaged_entry_removed_by_a_check_is_still_said_by_the_computation_after_it(pair, tmp_path):
    from subnetviz.analysis.update_pass import SpectraOptions
    from subnetviz.analysis.updates import cached_analysis, is_cached

    base, ft = pair
    kw = dict(labels=["ft"], spectra=SpectraOptions(enabled=True), device="cpu", cache_root=tmp_path / "cache")
    first = cached_analysis(base, [ft], **kw)
    name = _damage(first.source_dir)
    assert not is_cached(base, [ft], **kw)  # the page's check first: it removes the damaged entry
    again = cached_analysis(base, [ft], **kw)
    said = [n for n in again.notes if "was damaged" in n]
    assert len(said) == 1 and name in said[0] and "computed again" in said[0]
    pd.testing.assert_frame_equal(again.spectra_table(), first.spectra_table())  # (the same numbers)
    later = cached_analysis(base, [ft], **kw)  # a new copy is here: nothing more to say
    assert later.cached and not [n for n in later.notes if "was damaged" in n]


def test_a_cache_entry_keeps_the_notice_of_its_damage_until_a_new_copy_is_published(tmp_path):
    from subnetviz.cache import entry

    ent = entry("runs", "k" * 24, root=tmp_path)
    with ent.publish() as folder:
        (folder / "table.csv").write_text("a,b\n1,2\n")
    assert ent.status() == (True, None)
    _damage(ent.folder)
    assert not ent.ready and not ent.folder.exists()  # removed by the check
    ready, notice = ent.status()  # the caller that computes it again
    assert not ready and notice and "table.csv" in notice and "computed again" in notice
    with ent.publish() as folder:
        (folder / "table.csv").write_text("a,b\n1,2\n")
    assert ent.status() == (True, None) and ent.notice is None
