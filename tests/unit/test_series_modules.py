"""The Series page's per-module chart from the series pass's own counts: each checkpoint is read once for the whole
page (the chart used to run the update analysis of every checkpoint against the first: a second read of the run).

The counts per module kind are checked against each tensor's all-versions-at-once reference and against that update
analysis (an independent pass); a fused tensor (QKV, gate/up) is left to the update analysis, which splits it."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from subnetviz.analysis.series import checkpoint_series
from subnetviz.analysis.updates import analyze_updates

NAMES = {
    "model.layers.0.self_attn.q_proj.weight": (12, 8),
    "model.layers.0.self_attn.k_proj.weight": (4, 8),
    "model.layers.0.mlp.up_proj.weight": (30, 8),
    "model.layers.1.self_attn.q_proj.weight": (12, 8),
    "model.layers.1.mlp.down_proj.weight": (8, 30),
    "model.norm.weight": (8,),
}


def _write(path, tensors, model_type="llama"):
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return str(path)


def _walks(seed: int, names: dict, c: int) -> dict[str, list[np.ndarray]]:
    """Each tensor's c + 1 versions as bf16 bit patterns: moves and returns to the first version."""
    rng = np.random.default_rng(seed)
    walks = {}
    for name, shape in names.items():
        v = rng.integers(0x3800, 0x3F00, shape).astype(np.int16)
        vs = [v]
        for _ in range(c):
            nxt = vs[-1].copy()
            move = rng.random(shape) < 0.2
            nxt[move] += rng.integers(1, 3, int(move.sum())).astype(np.int16)
            back = rng.random(shape) < 0.1
            nxt[back] = v[back]  # back to the first version
            vs.append(nxt)
        walks[name] = vs
    return walks


def _checkpoints(tmp_path, walks: dict, c: int, model_type="llama", float32: str | None = None) -> list[str]:
    paths = []
    for i in range(c + 1):
        tensors = {n: torch.from_numpy(vs[i].copy()).view(torch.bfloat16) for n, vs in walks.items()}
        if float32:  # a tensor stored as float32 (exact for bf16 values)
            tensors[float32] = tensors[float32].float()
        paths.append(_write(tmp_path / f"c{i}", tensors, model_type))
    return paths


def _module_reference(walks: dict, steps: list[int]) -> pd.DataFrame:
    """(step, module) -> changed against the first version and entries, straight from the bit patterns."""
    rows = []
    for name, vs in walks.items():
        module = {"q_proj": "q", "k_proj": "k", "up_proj": "up", "down_proj": "down"}.get(
            name.split(".")[-2], "final_norm"
        )
        for i, s in enumerate(steps[1:], start=1):
            rows.append({"step": s, "module": module, "changed": int((vs[i] != vs[0]).sum()), "numel": vs[0].size})
    return _by_step_module(pd.DataFrame(rows))


def _by_step_module(frame: pd.DataFrame) -> pd.DataFrame:
    g = frame.groupby(["step", "module"], as_index=False)[["changed", "numel"]].sum()
    return g.sort_values(["step", "module"]).reset_index(drop=True).astype({"changed": "int64", "numel": "int64"})


@pytest.mark.parametrize("seed", [0, 1])
def test_module_counts_are_the_reference_and_the_update_analysis(tmp_path, loop, seed):
    """Both loops (compiled and NumPy): the series' counts per module kind equal the bit patterns' own and the
    update analysis's of each checkpoint against the first (the chart the page drew from a second read)."""
    c, steps = 4, [0, 10, 20, 30, 40]
    walks = _walks(seed, NAMES, c)
    paths = _checkpoints(tmp_path, walks, c, float32="model.layers.0.mlp.up_proj.weight")
    res = checkpoint_series(paths, steps)
    got = _by_step_module(res.modules)
    want = _module_reference(walks, steps)
    pd.testing.assert_frame_equal(got, want)
    assert got["changed"].sum() == res.steps["changed_vs_first"].sum()  # the series lines' own totals
    per = analyze_updates(paths[0], paths[1:], labels=[f"step {s}" for s in steps[1:]], spectra=None, device="cpu")
    frame = pd.concat([r.by_layer_module().assign(step=s) for r, s in zip(per.reports, steps[1:], strict=True)])
    mapped = frame.assign(module=frame["module"].astype(str))
    pd.testing.assert_frame_equal(got, _by_step_module(mapped[["step", "module", "changed", "numel"]]))


def test_a_fused_tensor_leaves_the_modules_to_the_update_analysis(tmp_path):
    """A Phi-3 ``qkv_proj`` (rows q; k; v) is split into parts by the update analysis, from row counts the series pass
    does not keep: no module counts, and the page reads the run's update analysis for its chart."""
    names = {"model.layers.0.self_attn.qkv_proj.weight": (24, 8), "model.layers.0.mlp.down_proj.weight": (8, 16)}
    walks = _walks(2, names, 2)
    paths = []
    for i in range(3):
        tensors = {n: torch.from_numpy(vs[i].copy()).view(torch.bfloat16) for n, vs in walks.items()}
        folder = tmp_path / f"p{i}"
        _write(folder, tensors, "phi3")
        (folder / "config.json").write_text(
            json.dumps({"model_type": "phi3", "num_attention_heads": 2, "num_key_value_heads": 1, "hidden_size": 8})
        )
        paths.append(str(folder))
    assert checkpoint_series(paths).modules is None


def test_a_fan_out_merges_the_module_counts(tmp_path):
    """Tensor groups on a cluster: the merged counts per module kind are the whole series'."""
    from subnetviz.jobs.fanout import merge_series

    walks = _walks(3, NAMES, 2)
    paths = _checkpoints(tmp_path, walks, 2)
    from subnetviz.checkpoints import align, open_checkpoint

    whole = checkpoint_series(paths)
    keys = [t.key for t in align([open_checkpoint(p) for p in paths]).tensors]
    assert len(keys) == len(NAMES)
    parts = [checkpoint_series(paths, tensors=set(keys[:2])), checkpoint_series(paths, tensors=set(keys[2:]))]
    merged = merge_series(parts, [0, 1, 2])
    pd.testing.assert_frame_equal(_by_step_module(merged.modules), _by_step_module(whole.modules))
    with_none = merge_series([parts[0], type(parts[1])(**{**parts[1].__dict__, "modules": None})], [0, 1, 2])
    assert with_none.modules is None  # a part without them (a fused tensor): the page asks the update analysis
