"""The update pass reads consecutive small tensors ahead in groups: same results whatever the group
size, a read error raised at its own tensor (after the tensors before it were compared)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from subnetviz.analysis import update_pass
from subnetviz.analysis.updates import analyze_updates
from subnetviz.errors import NonFiniteError

LAYERS = 3


def _pair(tmp_path, bad: str | None = None):
    g = torch.Generator().manual_seed(0)
    base, ft = {}, {}
    for i in range(LAYERS):
        for name, shape in (
            ("self_attn.q_proj.weight", (8, 8)),
            ("mlp.up_proj.weight", (16, 8)),
            ("input_layernorm.weight", (8,)),
        ):
            key = f"model.layers.{i}.{name}"
            x = (0.02 * torch.randn(shape, generator=g)).to(torch.bfloat16)
            y = x.view(torch.int16).clone()
            y[torch.rand(shape, generator=g) < 0.3] += 1
            base[key], ft[key] = x, y.view(torch.bfloat16)
    if bad is not None:
        ft[bad] = ft[bad].clone()
        ft[bad].view(-1)[0] = float("nan")
    paths = []
    for label, tensors in (("b", base), ("f", ft)):
        (tmp_path / label).mkdir()
        save_file(tensors, str(tmp_path / label / "model.safetensors"))
        (tmp_path / label / "config.json").write_text(json.dumps({"model_type": "llama"}))
        paths.append(str(tmp_path / label))
    return paths, base, ft


@pytest.mark.parametrize("entries", [1, 200, 1 << 23])  # one tensor per group, a few, all in one
def test_results_do_not_depend_on_the_group_size(tmp_path, monkeypatch, entries):
    monkeypatch.setattr(update_pass, "GROUP_ENTRIES", entries)
    (base_path, ft_path), base, ft = _pair(tmp_path)
    rep = analyze_updates(base_path, [ft_path]).reports[0]
    t = rep.tensors.set_index("name")
    for name, x in base.items():
        expected = x.view(torch.int16) != ft[name].view(torch.int16)
        assert t.loc[name, "changed"] == int(expected.sum())
        assert torch.equal(rep.masks[name], expected)
        if x.dim() == 2:
            rows, cols = rep.row_col[t.loc[name, "key"]]
            np.testing.assert_array_equal(rows, expected.sum(1).numpy())
            np.testing.assert_array_equal(cols, expected.sum(0).numpy())
    assert rep.changed == sum(int((x.view(torch.int16) != ft[n].view(torch.int16)).sum()) for n, x in base.items())


def test_groups_are_consecutive_and_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(update_pass, "GROUP_ENTRIES", 300)
    (base_path, ft_path), _, _ = _pair(tmp_path)
    walk = update_pass._Walk(base_path, [ft_path], None, update_pass.SparsityOptions(), None, "cpu")
    keys = walk.keys()
    groups = walk.groups(keys)
    assert [k for g in groups for k in g] == keys and len(groups) > 1
    for g in groups:  # both sides' entries, at most the budget unless one tensor alone is larger
        n = sum(2 * int(np.prod(walk.per_key[0][k].shape)) for k in g)
        assert n <= 300 or len(g) == 1


def test_a_non_finite_tensor_is_named_at_its_own_step(tmp_path, monkeypatch):
    monkeypatch.setattr(update_pass, "GROUP_ENTRIES", 1 << 23)  # the bad tensor in the middle of one group
    bad = "model.layers.1.mlp.up_proj.weight"
    (base_path, ft_path), _, _ = _pair(tmp_path, bad=bad)
    seen = []
    with pytest.raises(NonFiniteError, match="up_proj"):
        analyze_updates(base_path, [ft_path], progress=lambda step, total, key: seen.append(key))
    assert seen[-1] == "layers.1.mlp.up_proj.weight"  # the tensors before it were reached, none after


@pytest.mark.parametrize("first", [False, True])
@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_prefetched_hands_out_every_item_in_order_one_ahead(n, first):
    """The read-ahead gives every item's load in order with at most one item loaded ahead of the caller;
    with ``first``, the first item is loaded in the caller's thread and the rest of its loading runs in
    the background before the second item's load, while the caller holds the first."""
    import threading

    events, caller = [], threading.get_ident()

    def load(i):
        events.append(("load", i, threading.get_ident() == caller))
        return i * 10

    def load_first(i):
        events.append(("first", i, threading.get_ident() == caller))
        return i * 10, lambda: events.append(("rest", i, threading.get_ident() == caller))

    got = []
    for value in update_pass.prefetched(list(range(n)), load, first=load_first if first else None):
        got.append(value)
        loads = [e[1] for e in events if e[0] in ("load", "first")]
        assert max(loads) <= value // 10 + 1  # never more than one item ahead
    assert got == [10 * i for i in range(n)]
    if first and n:
        assert events[0] == ("first", 0, True) and ("rest", 0, False) in events
        assert n == 1 or events.index(("rest", 0, False)) < events.index(("load", 1, False))
    assert all(not here for kind, _, here in events if kind in ("load", "rest"))  # the background thread


@pytest.mark.parametrize("order", ["bf16 first", "fp32 first"])
def test_a_non_finite_base_is_refused_whichever_model_reads_it(tmp_path, order):
    """A base NaN at an entry no finetune changed, compared with two finetunes: one stored as the base is
    (its compiled pass checks the base) and one stored in fp32 (a cast pair: the base is checked when
    read). Whichever comes first, the analysis refuses it and names the base's file and tensor."""
    (base_path, ft_path), base, ft = _pair(tmp_path)
    bad = "model.layers.2.self_attn.q_proj.weight"
    base[bad] = base[bad].clone()
    base[bad].view(-1)[5] = float("nan")
    ft[bad] = ft[bad].clone()
    ft[bad].view(-1)[5] = float("nan")  # the same bits on both sides: unchanged
    save_file(base, str(tmp_path / "b" / "model.safetensors"))
    save_file(ft, str(tmp_path / "f" / "model.safetensors"))
    wide = tmp_path / "wide"
    wide.mkdir()
    save_file({k: v.float() for k, v in ft.items()}, str(wide / "model.safetensors"))
    (wide / "config.json").write_text(json.dumps({"model_type": "llama"}))
    models = [ft_path, str(wide)] if order == "bf16 first" else [str(wide), ft_path]
    with pytest.raises(NonFiniteError, match="q_proj") as err:
        analyze_updates(base_path, models, spectra=None)
    assert base_path in str(err.value)
