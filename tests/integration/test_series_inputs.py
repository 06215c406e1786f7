"""The checkpoint series takes its inputs as the update analysis does: a float32 base beside bf16 checkpoints is
compared at each checkpoint's stored dtype (not every rounded entry "changed"), a PEFT adapter folder is merged
onto the base, tensors not in every checkpoint and a resized vocabulary's extra rows are said in the notes, and
checkpoints that are not one run (the workspace's finetunes in sidebar order) are not captioned as a run.

References: hand counts, and an all-versions-at-once NumPy brute force on the integer views of the casts."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from subnetviz.analysis.series import checkpoint_series

W = "model.layers.0.mlp.up_proj.weight"
E = "model.embed_tokens.weight"
Q = "model.layers.0.self_attn.q_proj.weight"
VIEWS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _write(path, tensors, config=None):
    path.mkdir(parents=True, exist_ok=True)
    save_file({n: t.contiguous() for n, t in tensors.items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config or {"model_type": "llama"}))
    return str(path)


def _bits(x: torch.Tensor) -> np.ndarray:
    return x.contiguous().view(VIEWS[x.element_size()]).reshape(-1).numpy()


def _reference(versions: list[torch.Tensor]) -> dict:
    """Every count from its definition, all versions at once: version i at its stored dtype, the first and the
    previous version cast to it (torch's round-to-nearest-even), compared on the integer views; an entry counts
    as updated once it differs from the (cast) first or changed at a step."""
    k = len(versions) - 1
    ever = np.zeros(versions[0].numel(), bool)
    out = {"vs_first": [], "vs_prev": [], "ever_back": []}
    for i in range(1, k + 1):
        d = versions[i].dtype
        cur = _bits(versions[i])
        diff = cur != _bits(versions[0].to(d))
        step = cur != _bits(versions[i - 1].to(d))
        ever |= step | diff
        out["vs_first"].append(int(diff.sum()))
        out["vs_prev"].append(int(step.sum()))
        out["ever_back"].append(int((ever & ~diff).sum()))
    out["split"] = [int((~ever).sum()), int((ever & ~diff).sum()), int(diff.sum())]
    return out


# --- 1: mixed precision ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("read_ahead", [None, True])
def test_a_float32_base_with_bf16_checkpoints_counts_the_updates_not_the_rounding(tmp_path, loop, read_ahead):
    """The review's case: a float32 base, bf16 checkpoints (100 entries updated, then 50 more). Compared in float32
    every entry the bf16 copy rounded was "changed" (1024 of 1024 at both steps, no note); at the checkpoints'
    stored dtype, the base rounded to it as saving would, the counts are the hand counts, those of the update
    analysis, and a note says so. Both loops (the compiled one gets the rounded base as its first version)."""
    from subnetviz.analysis.updates import analyze_updates

    g = torch.Generator().manual_seed(0)
    w32 = torch.randn(32, 32, generator=g)
    s1 = w32.to(torch.bfloat16)
    s1.view(-1)[:100] += 1
    s2 = s1.clone()
    s2.view(-1)[100:150] += 1
    assert (_bits(w32.to(torch.bfloat16).float()) != _bits(w32)).sum() > 1000  # nearly every entry rounds
    paths = [_write(tmp_path / n, {W: x}) for n, x in (("base", w32), ("s1", s1), ("s2", s2))]
    res = checkpoint_series(paths, [0, 10, 20], read_ahead=read_ahead)
    assert res.steps["changed_vs_first"].tolist() == [100, 150]
    assert res.steps["changed_vs_previous"].tolist() == [100, 50]
    assert res.steps["back_to_start"].tolist() == [0.0, 0.0]
    assert res.split["count"].tolist() == [1024 - 150, 0, 150]
    (note,) = [n for n in res.notes if n.startswith("Mixed precision")]
    assert "float32 → bfloat16 ×2" in note and "layers.0.mlp.up_proj.weight" in note and "round-to-nearest" in note
    if loop == "numpy" and read_ahead is None:  # (once) the update analysis' counts of the same pairs
        an = analyze_updates(paths[0], paths[1:], spectra=None, device="cpu")
        assert [int(r.tensors["changed"].sum()) for r in an.reports] == [100, 150]


DTYPE_WALKS = {  # tensor -> (entries, the stored dtype of each of the 6 versions)
    "model.layers.0.mlp.up_proj.weight": (37, [torch.float32] + [torch.bfloat16] * 5),  # a float32 base
    "model.layers.0.mlp.down_proj.weight": (64 * 3 + 5, [torch.float32] + [torch.float16] * 5),
    "model.layers.0.mlp.gate_proj.weight": (70, [torch.float64] + [torch.float32] * 5),
    "model.layers.0.self_attn.q_proj.weight": (41, [torch.bfloat16] + [torch.float32] * 5),  # widened: exact
    # float32 and bf16 checkpoints in turn (the step by step NumPy blocks), and back
    "model.layers.0.self_attn.k_proj.weight": (90, [torch.float32, torch.bfloat16, torch.float32] * 2),
    "model.layers.0.self_attn.v_proj.weight": (23, [torch.bfloat16, torch.float32, torch.float16] * 2),
    "model.norm.weight": (130, [torch.bfloat16] * 6),  # one dtype: read by address where it can be
}


@pytest.mark.parametrize(("seed", "read_ahead"), [(0, None), (1, True), (2, False)])
def test_mixed_precision_walks_match_the_brute_force(tmp_path, monkeypatch, loop, seed, read_ahead):
    """Random walks whose tensors change dtype along the series (a wider or narrower first version, float32 and
    bf16 checkpoints in turn, steps that take an entry back to the rounded start, float32 steps holding a bf16
    value), in blocks of 10 entries and windows of 1-2 versions: every count against the brute force, each
    dtype pattern said once in the notes."""
    import subnetviz.analysis.series as series

    monkeypatch.setattr(series, "CHUNK_ELEMENTS", 10)
    monkeypatch.setattr(series, "WINDOW_BYTES", 300)
    rng = np.random.default_rng(seed)
    walks = {}
    for name, (n, dtypes) in DTYPE_WALKS.items():
        v0 = torch.from_numpy(rng.standard_normal(n)).to(dtypes[0])
        vs = [v0]
        for d in dtypes[1:]:
            nxt = vs[-1].to(d).clone()
            move = torch.from_numpy(rng.random(n) < 0.3)
            nxt[move] = (nxt[move].double() * 1.01 + 0.001).to(d)
            back = torch.from_numpy(rng.random(n) < 0.15)
            nxt[back] = v0.to(d)[back]  # back to the start, as this checkpoint stores it
            if d == torch.float32:  # a bf16 value kept in float32 (a float32 start differs from it)
                keep = torch.from_numpy(rng.random(n) < 0.1)
                nxt[keep] = nxt[keep].to(torch.bfloat16).float()
            vs.append(nxt)
        walks[name] = vs
    paths = [_write(tmp_path / f"c{i}", {n: vs[i] for n, vs in walks.items()}) for i in range(6)]
    res = checkpoint_series(paths, read_ahead=read_ahead)
    refs = [_reference(vs) for vs in walks.values()]
    total = {key: np.sum([r[key] for r in refs], axis=0).tolist() for key in ("vs_first", "vs_prev", "ever_back")}
    assert res.numel == sum(n for n, _ in DTYPE_WALKS.values())
    assert res.steps["changed_vs_first"].tolist() == total["vs_first"]
    assert res.steps["changed_vs_previous"].tolist() == total["vs_prev"]
    assert res.steps["back_to_start"].tolist() == pytest.approx([b / res.numel for b in total["ever_back"]])
    assert res.split["count"].tolist() == np.sum([r["split"] for r in refs], axis=0).tolist()
    assert sum(total["ever_back"]) > 0 and min(res.split["count"]) > 0
    mixed = [n for n in res.notes if n.startswith("Mixed precision")]
    assert len(mixed) == 6 and not any("norm.weight" in n for n in mixed)
    assert any("float32 → bfloat16 → float32 ×2 → bfloat16 → float32 along" in n for n in mixed)


def test_a_base_past_the_checkpoints_range_is_refused_by_both_loops(tmp_path, loop):
    """A float32 base value past float16's range, float16 checkpoints: rounded to float16 it is Inf, which the
    update analysis refuses; so does the series, naming the base (the compiled loop checked only the rounded
    copy, the NumPy loop nothing: a NaN-free base counted as changed against Inf)."""
    from subnetviz.errors import NonFiniteError

    w = torch.linspace(-2, 2, 200)
    w[5] = 1e5
    s1 = w.to(torch.float16)  # (Inf at 5: a finetune cannot store it)
    s1[5] = 0
    paths = [_write(tmp_path / n, {W: x}) for n, x in (("b", w), ("s1", s1), ("s2", s1))]
    with pytest.raises(NonFiniteError, match=r"/b :: model.layers.0.mlp.up_proj.weight: 1 value\(s\) beyond"):
        checkpoint_series(paths)


# --- 4: what is left out --------------------------------------------------------------------------------------
def test_tensors_not_in_every_checkpoint_and_a_resized_vocabulary_are_in_the_notes(tmp_path, loop):
    """A tensor only one checkpoint holds and two extra vocabulary rows: the series compares the rest (hand
    counts over the shared tensors and rows) and its notes carry the alignment's report of both."""
    from subnetviz.checkpoints import align, open_checkpoint

    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(8, 8, generator=g).to(torch.bfloat16)
    e0 = torch.randn(10, 8, generator=g).to(torch.bfloat16)
    w1 = w0.clone()
    w1[0] += 1  # 8 entries
    e_big = torch.cat([e0, torch.randn(2, 8, generator=g).to(torch.bfloat16)])
    e_big[1, :3] += 1  # 3 shared entries; the 16 new ones are not compared
    paths = [
        _write(tmp_path / "a", {W: w0, E: e0}),
        _write(tmp_path / "b", {W: w1, E: e_big, "model.layers.0.mlp.down_proj.weight": torch.ones(8, 8)}),
    ]
    res = checkpoint_series(paths)
    assert res.numel == 64 + 80 and res.steps["changed_vs_first"].tolist() == [8 + 3]
    report = align([open_checkpoint(p) for p in paths]).report()
    assert any("only in" in line and "down_proj" in line for line in report)
    assert any("vocabulary resized" in line and "[0, 2]" in line for line in report)
    assert all(line in res.notes for line in report)


# --- 5: a PEFT adapter ----------------------------------------------------------------------------------------
def _adapter(folder, base, rows: int, cols: int):
    """A LoRA adapter of ``base``'s q_proj whose B·A is 1 on rows × cols entries (s = α/r = 4)."""
    folder.mkdir()
    a, b = torch.zeros(2, 16), torch.zeros(16, 2)
    a[0, :cols] = 1
    b[:rows, 0] = 1
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": b}, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 8, "target_modules": ["q_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": base}))
    return str(folder)


def test_an_adapter_folder_is_merged_onto_the_base(tmp_path):
    """Adapters given by folder after the base (as the Series page gives the workspace's finetunes): merged onto
    it, not refused ("an adapter needs its base"). W + 4 on a 5 × 3, then a 5 × 4 block of q_proj (bf16 entries
    of |w| < 4: each one changes), the norm untouched: hand counts, and the merge named in the notes."""
    g = torch.Generator().manual_seed(0)
    q = (torch.rand(16, 16, generator=g) - 0.5).to(torch.bfloat16)
    base = _write(
        tmp_path / "base",
        {Q: q, "model.norm.weight": torch.ones(16, dtype=torch.bfloat16)},
        {"model_type": "llama", "num_hidden_layers": 1, "hidden_size": 16},
    )
    paths = [base, _adapter(tmp_path / "ad1", base, 5, 3), _adapter(tmp_path / "ad2", base, 5, 4)]
    res = checkpoint_series(paths)
    assert res.numel == 16 * 16 + 16
    assert res.steps["changed_vs_first"].tolist() == [15, 20]
    assert res.steps["changed_vs_previous"].tolist() == [15, 5]
    assert res.split["count"].tolist() == [res.numel - 20, 0, 20]
    assert sum("LoRA adapter ad1 merged onto" in n for n in res.notes) == 1
    assert sum("LoRA adapter ad2 merged onto" in n for n in res.notes) == 1


# --- 8: checkpoints that are not one run ----------------------------------------------------------------------
def test_the_figures_do_not_call_independent_checkpoints_a_run():
    """Named checkpoints (not one run): the back-to-start line is named for what it is, a frame without it draws
    no such line (the step-0 point added none), and the split's not-a-run parts keep the split's colours."""
    import pandas as pd

    from subnetviz import figures as F
    from subnetviz.figures.series import SPLIT_COLORS, SPLIT_NOT_RUN

    df = pd.DataFrame({"step": [1, 2], "vs_first": [0.6, 0.9], "vs_previous": [0.6, 0.5], "back_to_start": [0, 0.4]})
    named = F.series_lines(df, first="base", ticks=["base", "A", "B"])
    assert named.data[2].name == "changed in an earlier checkpoint, equal to the base in this one (share)"
    run = F.series_lines(df, first="base")
    assert run.data[2].name == "updated at some step, back to the start at this checkpoint (share)"
    lines = F.series_lines(df.drop(columns="back_to_start"), first="base", ticks=["base", "A", "B"])
    assert [t.name for t in lines.data] == ["sparsity vs base", "sparsity vs previous checkpoint"]
    split = pd.DataFrame({"part": list(SPLIT_NOT_RUN.values()), "count": [50, 40, 10]})
    bars = F.split_bar(split).data
    assert [t.marker.color for t in bars] == [SPLIT_COLORS[p] for p in SPLIT_NOT_RUN]
    # the legend of the narrow column: long names on lines of their own, not clipped at its edge
    assert bars[1].name == "changed in an<br>earlier checkpoint,<br>equal to the base in<br>the last"
    assert all(len(line) <= 20 for t in bars for line in t.name.split("<br>"))


def _texts(at) -> str:
    return " ".join(e.value for kind in ("markdown", "caption", "info", "warning") for e in getattr(at, kind))


def test_the_series_page_on_the_workspace_checkpoints(app_env):
    """The workspace's finetunes in sidebar order, one a PEFT adapter folder and one with a tensor the base lacks:
    the page opens (it said "an adapter needs its base"), shows the adapter merge and what was left out, and does
    not caption the checkpoints as a run (no "cancelled out", no back-to-start line, the split named for what it
    is). The demo zoo's run keeps the run's wording."""
    from safetensors import safe_open

    from subnetviz.figures.series import SPLIT_NOT_RUN
    from tests.app_fixtures import open_page, plotly_specs

    zoo = app_env / "zoo"
    with safe_open(str(zoo / "base" / "model.safetensors"), "pt") as f:
        q = next(n for n in f.keys() if n.endswith("layers.0.self_attn.q_proj.weight"))
        rows, cols = f.get_slice(q).get_shape()
    adapter = app_env / "tmp-series-adapter"
    extra = app_env / "tmp-series-extra"
    try:
        adapter.mkdir()
        prefix = f"base_model.model.{q.removesuffix('.weight')}"
        save_file(
            {f"{prefix}.lora_A.weight": torch.ones(2, cols) * 0.1, f"{prefix}.lora_B.weight": torch.ones(rows, 2)},
            str(adapter / "adapter_model.safetensors"),
        )
        (adapter / "adapter_config.json").write_text(
            json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]})
        )
        shutil.copytree((zoo / "grpo-s0").resolve(), extra)
        from safetensors.torch import load_file

        sd = load_file(str(extra / "model.safetensors"))
        sd["model.layers.0.mlp.extra_probe.weight"] = torch.ones(4, 4, dtype=torch.bfloat16)
        save_file(sd, str(extra / "model.safetensors"))
        at = open_page(
            "series", series_src="workspace: base → finetuned in sidebar order", ft=[str(adapter), str(extra)]
        )
        assert not at.exception and not at.error, [e.value for e in at.error]
        said = _texts(at).replace("\\", "")  # (the notes are shown as text: their punctuation escaped)
        assert "merged onto" in said and "only in" in said and "extra_probe" in said
        assert "cancelled out" not in said and "back to their initial value" not in said
        lines = next(s for s in plotly_specs(at) if "Checkpoint series" in s["layout"]["title"]["text"])
        assert [t["name"] for t in lines["data"]] == ["sparsity vs base", "sparsity vs previous checkpoint"]
        bar = next(
            s
            for s in plotly_specs(at)
            if s["layout"]["title"]["text"].split("<br><sup>")[0].replace("<br>", " ")
            == "Where the parameters ended up"
        )
        assert [t["name"].replace("<br>", " ") for t in bar["data"]] == list(SPLIT_NOT_RUN.values())
        split = next(d.value for d in at.dataframe if "part" in d.value.columns)
        assert list(split["part"]) == list(SPLIT_NOT_RUN.values())
        table = next(d.value for d in at.dataframe if "step" in d.value.columns)
        assert "back_to_start_share" not in table.columns and "changed_earlier_equal_to_base_share" in table.columns
    finally:
        shutil.rmtree(adapter, ignore_errors=True)
        shutil.rmtree(extra, ignore_errors=True)
    run = open_page("series", series_src="demo zoo: GRPO seed 0")
    assert not run.exception and not run.error, [e.value for e in run.error]
    assert "gradients that cancelled out" in _texts(run)
    lines = next(s for s in plotly_specs(run) if "Checkpoint series" in s["layout"]["title"]["text"])
    assert any("back to the start" in t["name"] for t in lines["data"])
    bar = next(
        s
        for s in plotly_specs(run)
        if s["layout"]["title"]["text"].split("<br><sup>")[0].replace("<br>", " ") == "Where the parameters ended up"
    )
    assert [t["name"].replace("<br>", " ") for t in bar["data"]] == list(SPLIT_NOT_RUN)


def _plant_tiny_gate_update(folder, value: float) -> None:
    """Entry 0 of ``folder``'s first gate projection set to ``value`` (bf16): a change fp16 cannot see."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    file = str(folder / "model.safetensors")
    with safe_open(file, "pt") as f:
        meta = f.metadata()
    sd = load_file(file)
    gate = sorted(n for n in sd if n.endswith("mlp.gate_proj.weight"))[0]
    sd[gate].view(-1)[0] = value
    save_file(sd, file, metadata=meta)


def test_the_series_pages_module_chart_is_bitwise_on_the_stored_dtype_whatever_the_sidebar_precision(
    app_env, micro_zoo, tmp_path, monkeypatch
):
    """The page's per-module chart sits beside series lines and under a caption that are bitwise on the stored
    dtype; with the sidebar's "Comparison precision" at fp16 it followed that precision (both sides cast to fp16)
    and no longer added up to the series line. Planted: a copy of the micro zoo whose base holds 1e-9 in one gate
    entry and every series checkpoint 2e-9 (bf16, both 0 in fp16): an update at the stored dtype, none in fp16.
    Reference: each checkpoint's gate projections against the base's on their stored bits (integer views)."""
    from safetensors.torch import load_file

    from tests.app_fixtures import app_roots, decode, open_page, plotly_specs

    home = tmp_path / "home"
    home.mkdir()
    shutil.copytree(Path(micro_zoo.root).resolve(), home / "zoo")
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", app_roots(home))
    zoo = home / "zoo"
    points = [(s, zoo / Path(p).resolve().relative_to(Path(micro_zoo.root).resolve())) for s, p in micro_zoo.series]
    _plant_tiny_gate_update(zoo / "base", 1e-9)
    for _, folder in points:
        _plant_tiny_gate_update(folder, 2e-9)

    def gate_bits(path) -> np.ndarray:
        sd = load_file(str(path / "model.safetensors"))
        gates = sorted(n for n in sd if n.endswith("mlp.gate_proj.weight"))
        assert gates
        return np.concatenate([_bits(sd[n]) for n in gates])

    base = gate_bits(zoo / "base")
    want = [100 * (1 - np.count_nonzero(gate_bits(p) != base) / base.size) for _, p in points]
    for precision in ("stored", "fp16"):
        at = open_page("series", series_src="demo zoo: GRPO seed 0", precision=precision)
        assert not at.exception and not at.error, [e.value for e in at.error]
        spec = next(s for s in plotly_specs(at) if "per module kind" in s["layout"]["title"]["text"])
        (gate,) = [t for t in spec["data"] if t["name"] == "gate"]
        assert decode(gate["x"]).tolist() == [0] + [s for s, _ in points]
        np.testing.assert_allclose(decode(gate["y"]), [100.0, *want], rtol=0, atol=1e-9, err_msg=precision)
