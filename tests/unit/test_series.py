"""Checkpoint series on planted bit patterns: every count is known by construction."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from subnetviz.analysis.series import checkpoint_series
from subnetviz.errors import ConfigError
from subnetviz.report.dashboard import analysis_report


def _write(path, tensors):
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return str(path)


def test_series_planted(tmp_path):
    base = torch.zeros(10, 10, dtype=torch.bfloat16)
    bias = torch.zeros(5, dtype=torch.bfloat16)
    v1 = base.clone()
    v1.view(-1)[:30] = 1.0  # 30 entries move at step 1
    v2 = v1.clone()
    v2.view(-1)[:10] = 0.0  # 10 of them come back to the initial value at step 2
    v2.view(-1)[90:95] = 2.0  # 5 new ones move
    b2 = bias.clone()
    b2[0] = 1.0
    paths = [
        _write(tmp_path / "c0", {"model.layers.0.mlp.up_proj.weight": base, "model.norm.weight": bias}),
        _write(tmp_path / "c1", {"model.layers.0.mlp.up_proj.weight": v1, "model.norm.weight": bias}),
        _write(tmp_path / "c2", {"model.layers.0.mlp.up_proj.weight": v2, "model.norm.weight": b2}),
    ]
    res = checkpoint_series(paths, [0, 100, 200])
    n = 105
    s = res.steps
    assert list(s["step"]) == [100, 200]
    assert list(s["changed_vs_first"]) == [30, 20 + 5 + 1]
    assert list(s["changed_vs_previous"]) == [30, 10 + 5 + 1]
    assert s["vs_first"].tolist() == pytest.approx([1 - 30 / n, 1 - 26 / n])
    assert s["back_to_start"].tolist() == pytest.approx([0.0, 10 / n])
    split = dict(zip(res.split["part"], res.split["count"], strict=True))
    assert split == {"never updated": n - 36, "updated, unchanged at the end": 10, "final subnetwork": 26}
    assert res.split["share"].sum() == pytest.approx(1.0)


def test_series_needs_two(tmp_path):
    p = _write(tmp_path / "c0", {"w": torch.zeros(2, dtype=torch.bfloat16)})
    with pytest.raises(ConfigError, match="at least two"):
        checkpoint_series([p])


def test_report_cli_writes_self_contained_html(tmp_path):
    from subnetviz.analysis.updates import analyze_updates, write_analysis

    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.standard_normal((8, 6)).astype(np.float32)).to(torch.bfloat16)
    w2 = w.clone()
    w2.view(-1)[:7] += 0.25
    base = _write(tmp_path / "b", {"model.layers.0.self_attn.q_proj.weight": w})
    ft = _write(tmp_path / "f", {"model.layers.0.self_attn.q_proj.weight": w2})
    out = write_analysis(analyze_updates(base, [ft, ft], labels=["a", "b"]), tmp_path / "out")
    html = analysis_report(out, tmp_path / "dash.html").read_text()
    lib_end = html.index("</script>")  # the first script is plotly.js itself (URLs inside are string constants)
    rest = html[lib_end:]
    assert "<script src" not in html and 'href="http' not in rest and "<link" not in rest  # opens offline
    assert html.count('class="figure"') >= 5  # two heatmaps, sweep, ULPs, special tensors (+ spectra, overlap)
    assert "Overlap of update masks" in html and "q" in html
    # what changes the numbers is named (it was not: an --precision fp32 analysis never said fp32)
    for param in (
        "<th>precision</th><td>stored dtype</td>",
        "<th>relative η</th><td>0.001</td>",
        "<th>tolerances</th>",
    ):
        assert param in html
    with pytest.raises(ConfigError, match="not an analysis folder"):
        analysis_report(tmp_path, tmp_path / "x.html")


def _reference_series(versions: list[np.ndarray]) -> dict:
    """All K+1 versions at once, every count straight from its definition (int views as uint16)."""
    first, k = versions[0], len(versions) - 1
    ever = np.zeros(first.shape, bool)
    out = {"vs_first": [], "vs_prev": [], "ever_back": []}
    for i in range(1, k + 1):
        step = versions[i] != versions[i - 1]
        diff = versions[i] != first
        ever |= step
        out["vs_first"].append(int(diff.sum()))
        out["vs_prev"].append(int(step.sum()))
        out["ever_back"].append(int((ever & ~diff).sum()))
    final = versions[k] != first
    out["split"] = [int((~ever).sum()), int((ever & ~final).sum()), int(final.sum())]
    return out


@pytest.mark.parametrize(("seed", "window_bytes", "read_ahead"), [(0, 1 << 30, None), (1, 1, True), (2, 900, True)])
def test_series_random_walk_matches_reference_and_reads_each_checkpoint_once(
    tmp_path, monkeypatch, seed, window_bytes, read_ahead
):
    """Random bit-level walks (moves and returns to the initial value, a float32 tensor, a tensor
    stored as bf16 in some checkpoints and float32 in others, a -0/+0 flip) against the
    all-versions-at-once definition; every (checkpoint, tensor) is read once, by address (the
    compiled loop over runs of tensors) or as a tensor. With the read-ahead thread, tensor by
    tensor in windows of versions: all at once, one at a time, and a few (900 bytes: 1 to 2
    versions of the float32 tensor, ~2 of the bf16 one, all of the norm: windows end mid-series)."""
    import subnetviz.analysis.series as series
    from subnetviz.analysis.series_jit import FileMaps

    monkeypatch.setattr(series, "WINDOW_BYTES", window_bytes)

    rng = np.random.default_rng(seed)
    c = 6
    names = {
        "model.layers.0.mlp.up_proj.weight": (30, 7),
        "model.layers.0.mlp.down_proj.weight": (7, 30),
        "model.layers.0.mlp.gate_proj.weight": (5, 9),
        "model.norm.weight": (7,),
    }
    walks = {}
    for name, shape in names.items():
        v = rng.integers(0x3800, 0x3F00, shape).astype(np.int16)  # finite bf16 patterns
        v[rng.random(shape) < 0.5] |= np.int16(-32768)  # either sign
        vs = [v]
        for _ in range(c):
            nxt = vs[-1].copy()
            move = rng.random(shape) < 0.2
            nxt[move] += rng.integers(1, 3, int(move.sum())).astype(np.int16)
            back = rng.random(shape) < 0.1
            nxt[back] = v[back]  # cancelled out
            vs.append(nxt)
        walks[name] = vs
    for vs in walks["model.norm.weight"]:
        vs[0] = 0  # +0 ...
    walks["model.norm.weight"][2][0] = np.int16(-32768)  # ... and -0 at step 2 only: a bit change, back at 3
    paths = []
    for i in range(c + 1):
        tensors = {n: torch.from_numpy(vs[i].copy()).view(torch.bfloat16) for n, vs in walks.items()}
        tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"].float()
        if i % 2:  # compared in float32 (exact for bf16: the same changes)
            tensors["model.layers.0.mlp.gate_proj.weight"] = tensors["model.layers.0.mlp.gate_proj.weight"].float()
        paths.append(_write(tmp_path / f"c{i}", tensors))
    monkeypatch.setattr(series, "CHUNK_ELEMENTS", 17)  # several blocks per tensor, the last one partial
    reads = []
    real = series.read_aligned
    monkeypatch.setattr(
        series, "read_aligned", lambda ck, t, i, *a: reads.append((i, t.names[i])) or real(ck, t, i, *a)
    )
    by_address = FileMaps.address
    monkeypatch.setattr(
        FileMaps,
        "address",
        lambda self, meta, n: (
            reads.append((paths.index(str(meta.file.parent)), meta.name)) or by_address(self, meta, n)
        ),
    )
    res = checkpoint_series(paths, read_ahead=read_ahead)
    assert sorted(reads) == sorted({(i, k) for i in range(c + 1) for k in names}) and len(reads) == len(set(reads))
    refs = [_reference_series([vs[i] for i in range(c + 1)]) for vs in walks.values()]
    total = {key: np.sum([r[key] for r in refs], axis=0).tolist() for key in ("vs_first", "vs_prev", "ever_back")}
    assert res.steps["changed_vs_first"].tolist() == total["vs_first"]
    assert res.steps["changed_vs_previous"].tolist() == total["vs_prev"]
    n = sum(int(np.prod(s)) for s in names.values())
    assert res.steps["back_to_start"].tolist() == pytest.approx([b / n for b in total["ever_back"]])
    assert res.split["count"].tolist() == np.sum([r["split"] for r in refs], axis=0).tolist()
    assert sum(total["ever_back"]) > 0  # the walk did cancel out somewhere


@pytest.mark.parametrize(("seed", "read_ahead"), [(3, None), (4, True), (5, False)])
def test_both_loops_give_the_reference_counts(tmp_path, monkeypatch, loop, seed, read_ahead):
    """bf16, fp16, fp32 and fp64 random walks of sizes below, at and past the compiled loop's
    64-entry words (0-63 entries in the last partial word), blocks of 10 entries and windows of 1-2
    versions of the small tensors (several of the large ones: a window ends mid-series), read with
    and without the read-ahead thread: every count against the all-at-once reference."""
    import subnetviz.analysis.series as series

    monkeypatch.setattr(series, "CHUNK_ELEMENTS", 10)
    monkeypatch.setattr(series, "WINDOW_BYTES", 60)
    rng = np.random.default_rng(seed)
    specs = {"a": (torch.bfloat16, 37), "b": (torch.bfloat16, 40), "c": (torch.float16, 23), "d": (torch.float32, 18)}
    specs |= {"e": (torch.bfloat16, 64), "f": (torch.bfloat16, 64 * 5 + 3), "g": (torch.float16, 200)}
    specs |= {"h": (torch.float32, 130), "i": (torch.float64, 70)}
    walks = {}
    for name, (dtype, n) in specs.items():
        v = torch.randn(n).to(dtype)
        vs = [v]
        for _ in range(5):
            nxt = vs[-1].clone()
            move = torch.from_numpy(rng.random(n) < 0.3)
            nxt[move] = (nxt[move].float() * 1.01 + 0.001).to(dtype)
            back = torch.from_numpy(rng.random(n) < 0.15)
            nxt[back] = v[back]
            vs.append(nxt)
        walks[name] = vs
    paths = [
        _write(tmp_path / f"c{i}", {f"model.{n}.weight": vs[i].contiguous() for n, vs in walks.items()})
        for i in range(6)
    ]
    res = checkpoint_series(paths, read_ahead=read_ahead)
    views = {2: torch.int16, 4: torch.int32, 8: torch.int64}
    ints = {n: [x.view(views[x.element_size()]).numpy() for x in vs] for n, vs in walks.items()}
    refs = [_reference_series(v) for v in ints.values()]
    assert res.steps["changed_vs_first"].tolist() == np.sum([r["vs_first"] for r in refs], axis=0).tolist()
    assert res.steps["changed_vs_previous"].tolist() == np.sum([r["vs_prev"] for r in refs], axis=0).tolist()
    assert res.split["count"].tolist() == np.sum([r["split"] for r in refs], axis=0).tolist()
    assert res.steps["back_to_start"].tolist() == pytest.approx(
        [b / res.numel for b in np.sum([r["ever_back"] for r in refs], axis=0)]
    )


@pytest.mark.parametrize(
    ("dtype", "bad"), [(torch.bfloat16, float("nan")), (torch.float16, float("-inf")), (torch.float32, float("inf"))]
)
def test_non_finite_is_refused_at_the_same_checkpoint_by_both_loops(tmp_path, loop, dtype, bad):
    from subnetviz.errors import NonFiniteError

    base = torch.linspace(-2, 2, 41).to(dtype)
    later = base.clone()
    later[[3, 17]] = bad
    paths = [_write(tmp_path / f"c{i}", {"model.w.weight": x}) for i, x in enumerate([base, base, later, later])]
    with pytest.raises(NonFiniteError, match=r"/c2 :: model.w.weight: 2 NaN/Inf value\(s\)"):
        checkpoint_series(paths)


@pytest.mark.parametrize("size", [41, 200])
def test_non_finite_first_checkpoint_is_refused_by_both_loops(tmp_path, loop, size):
    """The first version's finite check rides in the compiled loop (as a version compared with
    itself): a NaN there is refused naming the first checkpoint, before any later one."""
    from subnetviz.errors import NonFiniteError

    base = torch.linspace(-2, 2, size).to(torch.bfloat16)
    bad = base.clone()
    bad[[0, size - 1]] = float("nan")
    paths = [_write(tmp_path / f"c{i}", {"model.w.weight": x}) for i, x in enumerate([bad, base, bad])]
    with pytest.raises(NonFiniteError, match=r"/c0 :: model.w.weight: 2 NaN/Inf value\(s\)"):
        checkpoint_series(paths)


def test_a_file_rewritten_after_its_header_was_read_is_refused(tmp_path):
    """Tensors read by address are found through the file's header as it is when mapped: a checkpoint
    rewritten after it was opened (another dtype) is refused, naming the file and tensor, not
    compared as whatever bytes sit there now."""
    from subnetviz.analysis import series_jit
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.errors import CheckpointError

    if not series_jit.available():
        pytest.skip("numba not installed: no reads by address")

    x = torch.linspace(-2, 2, 130).to(torch.bfloat16)
    paths = [_write(tmp_path / f"c{i}", {"model.w.weight": x}) for i in range(3)]
    cks = [open_checkpoint(p) for p in paths]
    _write(tmp_path / "c1", {"model.w.weight": x.to(torch.float16)})
    with pytest.raises(CheckpointError, match=r"c1/model.safetensors: tensor 'model.w.weight' changed"):
        checkpoint_series(cks)


def test_sharded_checkpoints_and_a_resized_vocabulary_match_the_reference(tmp_path, loop):
    """Tensors spread over two shard files per checkpoint (one map per file) and an embedding whose
    later checkpoints add rows (only the shared rows are compared: a prefix of each version)."""
    rng = np.random.default_rng(7)
    walks = {"model.embed_tokens.weight": (50, 9), "model.layers.0.mlp.up_proj.weight": (13, 9)}
    versions = {}
    for name, shape in walks.items():
        v = rng.integers(0x3800, 0x3F00, shape).astype(np.int16)
        vs = [v]
        for _ in range(4):
            nxt = vs[-1].copy()
            nxt[rng.random(shape) < 0.3] += 1
            back = rng.random(shape) < 0.1
            nxt[back] = v[back]
            vs.append(nxt)
        versions[name] = vs
    paths = []
    for i in range(5):
        emb = versions["model.embed_tokens.weight"][i]
        if i >= 2:  # three more vocabulary rows from here on
            emb = np.concatenate([emb, rng.integers(0x3800, 0x3F00, (3, 9)).astype(np.int16)])
        path = tmp_path / f"c{i}"
        path.mkdir()
        shards = {
            "model.embed_tokens.weight": emb,
            "model.layers.0.mlp.up_proj.weight": versions["model.layers.0.mlp.up_proj.weight"][i],
        }
        weight_map = {}
        for s, (name_s, arr) in enumerate(shards.items()):
            file = f"model-{s + 1:05d}-of-00002.safetensors"
            save_file({name_s: torch.from_numpy(arr.copy()).view(torch.bfloat16)}, str(path / file))
            weight_map[name_s] = file
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
        paths.append(str(path))
    res = checkpoint_series(paths)
    refs = [_reference_series(vs) for vs in versions.values()]
    assert res.numel == 50 * 9 + 13 * 9
    assert res.steps["changed_vs_first"].tolist() == np.sum([r["vs_first"] for r in refs], axis=0).tolist()
    assert res.steps["changed_vs_previous"].tolist() == np.sum([r["vs_prev"] for r in refs], axis=0).tolist()
    assert res.split["count"].tolist() == np.sum([r["split"] for r in refs], axis=0).tolist()


def test_a_fan_out_group_of_buffers_only_merges_into_the_whole(tmp_path):
    """A fan-out group may hold only buffers (not counted): its part has no parameters and merges into the
    whole series exactly (it divided by zero); a series with nothing but buffers is one line."""
    from subnetviz.jobs.fanout import merge_series

    paths = [
        _write(tmp_path / f"v{i}", {"a.weight": torch.ones(4) * (1 + i), "m.position_ids": torch.arange(4)})
        for i in range(3)
    ]
    whole = checkpoint_series(paths)
    parts = [checkpoint_series(paths, tensors={k}) for k in ("a.weight", "m.position_ids")]
    merged = merge_series(parts, [0, 1, 2])
    assert whole.numel == 4 and merged.steps.equals(whole.steps) and merged.split.equals(whole.split)
    assert merged.forms == whole.forms == {"buffer": ["m.position_ids"]}
    only = [_write(tmp_path / f"b{i}", {"m.position_ids": torch.arange(4) + i}) for i in range(2)]
    with pytest.raises(ConfigError, match="no parameters to compare"):
        checkpoint_series(only)
    with pytest.raises(ConfigError, match="no parameters to compare"):  # fanned out: each part has none
        merge_series([checkpoint_series(only, tensors={"m.position_ids"})], [0, 1])


def test_a_fan_out_keeps_how_the_checkpoints_were_read(tmp_path):
    """The merge of a fan-out's parts keeps the reading notes every part has (a tensor not in every checkpoint,
    left out): they were dropped, so a series on a cluster said nothing of what it left out."""
    from subnetviz.jobs.fanout import merge_series

    paths = [
        _write(
            tmp_path / f"v{i}",
            {
                "a.weight": torch.ones(4) * (1 + i),
                "b.weight": torch.ones(3),
                **({"c.weight": torch.ones(2)} if i else {}),
            },
        )
        for i in range(3)
    ]
    whole = checkpoint_series(paths)
    assert any("c.weight" in line for line in whole.reading)
    parts = [checkpoint_series(paths, tensors={k}) for k in ("a.weight", "b.weight")]
    merged = merge_series(parts, [0, 1, 2])
    assert merged.reading == whole.reading and merged.notes == whole.notes
