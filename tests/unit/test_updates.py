"""analyze_updates end to end on planted tensors: resized vocabularies, packed masks, the cache flag."""

import json
import os
import subprocess
import sys

import numpy as np
import torch
from safetensors.torch import save_file

from subnetviz.analysis.updates import analyze_updates, cached_analysis, mask_path, write_analysis
from subnetviz.masks import PackedMasks, load_mask_set


def _write(path, tensors):
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": False}))
    return str(path)


def test_resized_vocabulary_compares_shared_rows_and_says_so(tmp_path):
    emb = torch.arange(40, dtype=torch.float32).reshape(10, 4).to(torch.bfloat16)
    q = torch.ones(4, 4, dtype=torch.bfloat16)
    emb2 = torch.cat([emb, torch.zeros(2, 4, dtype=torch.bfloat16)])  # two rows added by the finetune
    emb2[3, 1] += 1  # three changes inside the shared rows
    emb2[7, 0] += 1
    emb2[9, 3] += 1
    q2 = q.clone()
    q2[0, 0] = 2
    base = _write(tmp_path / "b", {"model.embed_tokens.weight": emb, "model.layers.0.self_attn.q_proj.weight": q})
    ft = _write(tmp_path / "f", {"model.embed_tokens.weight": emb2, "model.layers.0.self_attn.q_proj.weight": q2})
    a = analyze_updates(base, [ft], labels=["ft"])
    rep = a.reports[0]
    t = rep.tensors.set_index("key")
    assert t.loc["embed_tokens.weight", "numel"] == 40 and t.loc["embed_tokens.weight", "changed"] == 3
    assert t.loc["embed_tokens.weight", "rows_compared"] == 10
    assert rep.changed == 4 and rep.numel == 56
    assert any("vocabulary resized" in n for n in rep.notes)
    special = rep.special_by_module().set_index("group")
    assert list(special.index) == ["embed"] and special.loc["embed", "changed"] == 3
    assert special.loc["embed", "sparsity"] == 1 - 3 / 40
    assert isinstance(rep.masks, PackedMasks) and rep.masks.nbytes <= 5 + 2
    assert torch.equal(rep.masks["model.layers.0.self_attn.q_proj.weight"], q2 != q)
    out = write_analysis(a, tmp_path / "out")
    ms = load_mask_set(mask_path(out, "ft"))
    assert ms.metadata["shared_rows_only"] == {"model.embed_tokens.weight": 10}
    assert int(ms.masks["model.embed_tokens.weight"].sum()) == 3


def test_cached_analysis_reports_a_hit(tmp_path):
    w = torch.zeros(3, 3, dtype=torch.bfloat16)
    base = _write(tmp_path / "b", {"model.layers.0.mlp.up_proj.weight": w})
    ft = _write(tmp_path / "f", {"model.layers.0.mlp.up_proj.weight": w + 1})
    first = cached_analysis(base, [ft], cache_root=tmp_path / "cache")
    second = cached_analysis(base, [ft], cache_root=tmp_path / "cache")
    assert not first.cached and second.cached
    assert second.reports[0].changed == 9 and second.source_dir == first.source_dir


def test_cache_misses_when_a_checkpoint_an_option_or_the_version_changes(tmp_path, monkeypatch):
    from subnetviz.analysis import updates
    from subnetviz.analysis.sparsity import SparsityOptions

    name = "model.layers.0.mlp.up_proj.weight"
    w = torch.zeros(3, 3, dtype=torch.bfloat16)
    base = _write(tmp_path / "b", {name: w})
    ft = _write(tmp_path / "f", {name: w + 1})
    cache = tmp_path / "cache"
    first = cached_analysis(base, [ft], cache_root=cache)
    assert first.reports[0].changed == 9
    w2 = w.clone()
    w2[0, 0] = 1
    _write(tmp_path / "f", {name: w2})  # the same path, new weights: never the old result
    second = cached_analysis(base, [ft], cache_root=cache)
    assert not second.cached and second.reports[0].changed == 1
    assert cached_analysis(base, [ft], cache_root=cache).cached
    other = cached_analysis(base, [ft], cache_root=cache, options=SparsityOptions(precision="fp32"))
    assert not other.cached
    monkeypatch.setattr(updates, "UPDATES_VERSION", updates.UPDATES_VERSION + 1)
    assert not cached_analysis(base, [ft], cache_root=cache).cached
    assert len(list(cache.iterdir())) == 4  # one folder per distinct key, nothing half-written beside them


def test_warm_loads_what_a_first_analysis_would(tmp_path):
    """update_pass.warm loads the compiled kernels (where numba is installed) and pandas' string arrays,
    and an analysis after it gives the same numbers as ever (it changes no state the results depend on)."""
    from subnetviz.analysis import bits_jit
    from subnetviz.analysis.update_pass import warm

    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 10, generator=g).to(torch.bfloat16)
    v = w.clone()
    v[2, :4] += 0.5
    for name, t in (("base", w), ("ft", v)):
        (tmp_path / name).mkdir()
        save_file({"model.layers.0.mlp.up_proj.weight": t}, str(tmp_path / name / "model.safetensors"))
    assert warm() >= 0
    # in a fresh process (here other tests may have loaded them): warm() itself loads the kernels
    code = "import sys; from subnetviz.analysis.update_pass import warm; warm(); print('subnetviz.analysis._bits_numba' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.stdout.strip() == str(bits_jit.kernels() is not None), out.stderr
    an = analyze_updates(str(tmp_path / "base"), [str(tmp_path / "ft")])
    assert an.reports[0].changed == int((w.view(torch.int16) != v.view(torch.int16)).sum()) > 0


def test_views_of_the_maps_read_copies_and_the_numpy_kernels_agree(tmp_path, monkeypatch):
    """The update pass hands float pairs to the compiled pass as integer views of the mapped files; a tensor
    not read from a map (Checkpoint.array gives None: legacy or unaligned data, a merged adapter's tensor) is
    read and viewed instead, and with the compiled kernels off the torch tensors go through compare_pair's
    NumPy kernels. All three give the same table, row/column counts and masks, for every float dtype, a
    resized vocabulary (shared rows only), a 0-d and a 1-D tensor; the changed counts are the planted ones."""
    from subnetviz.checkpoints.sources import Checkpoint

    g = torch.Generator().manual_seed(3)
    base, ft, planted = {}, {}, 0
    for i, (dtype, shape) in enumerate(
        [
            (torch.bfloat16, (12, 5)),
            (torch.float16, (7,)),
            (torch.float32, (3, 4, 2)),
            (torch.float64, ()),
            (torch.bfloat16, (9,)),
        ]
    ):
        a = (0.1 * torch.randn(shape, generator=g)).to(dtype)
        move = torch.rand(shape, generator=g) < 0.4
        b = torch.where(move, a * 1.5 + 0.01, a).to(dtype)
        planted += int(
            (b.reshape(-1).view(torch.uint8) != a.reshape(-1).view(torch.uint8)).reshape(a.numel(), -1).any(1).sum()
        )
        base[f"model.layers.{i}.mlp.up_proj.weight"], ft[f"model.layers.{i}.mlp.up_proj.weight"] = a, b
    emb = torch.randn(10, 4, generator=g).to(torch.bfloat16)
    emb2 = torch.cat([emb, torch.zeros(3, 4, dtype=torch.bfloat16)])  # rows added by the finetune
    emb2[2, 1] += 1
    base["model.embed_tokens.weight"], ft["model.embed_tokens.weight"] = emb, emb2
    paths = _write(tmp_path / "b", base), _write(tmp_path / "f", ft)

    def run():
        an = analyze_updates(paths[0], [paths[1]], labels=["ft"])
        rep = an.reports[0]
        masks = {n: rep.masks[n].clone() for n in rep.masks}
        return rep.tensors.drop(columns=["max_abs_delta"]), rep.tensors["max_abs_delta"], rep.row_col, masks

    views = run()
    with monkeypatch.context() as m:
        m.setattr(Checkpoint, "array", lambda self, name, view: None)
        copies = run()
    with monkeypatch.context() as m:
        m.setenv("SUBNETVIZ_JIT", "0")
        numpy_kernels = run()
    assert int(views[0]["changed"].sum()) == planted + 1
    for other in (copies, numpy_kernels):
        assert views[0].equals(other[0])
        assert views[1].tolist() == other[1].tolist()
        assert views[2].keys() == other[2].keys()
        assert all(np.array_equal(views[2][k][j], other[2][k][j]) for k in views[2] for j in (0, 1))
        assert views[3].keys() == other[3].keys() and all(torch.equal(views[3][n], other[3][n]) for n in views[3])


def test_spectra_located_tells_an_experts_slice_from_a_name_ending_in_brackets():
    """key[e] is expert e of packed tensor key, unless a tensor is itself named so (a stranger's checkpoint may
    hold "a.weight[3]"): then it is that tensor, with its own layer and module, and no expert."""
    import pandas as pd

    from subnetviz.analysis.update_pass import UpdateAnalysis

    class Report:
        tensors = pd.DataFrame(
            {
                "key": ["a.weight[3]", "b.experts.gate_up_proj"],
                "layer": [0, 1],
                "module": ["q", "gate_up"],
                "expert": [None, "all"],
                "block": ["attention", "mtp"],
            }
        )

    names = ["a.weight[3]", "b.experts.gate_up_proj[2]", "c.unknown[1]"]
    got = UpdateAnalysis("base", ["m"], [Report()], spectra_frame=pd.DataFrame({"name": names, "model": "m"}))
    got = got.spectra_located().set_index("name")
    assert got.loc["a.weight[3]", "module"] == "q" and pd.isna(got.loc["a.weight[3]", "expert"])
    assert (
        got.loc["b.experts.gate_up_proj[2]", ["layer", "module", "expert", "mtp"]] == [1, "gate_up", "2", True]
    ).all()
    assert pd.isna(got.loc["c.unknown[1]", "layer"])


def test_a_weights_file_is_labelled_by_its_folder():
    """'…/dpo/model.safetensors' was labelled 'model.safetensors' (its mask file 'model.safetensors.safetensors')."""
    from subnetviz.analysis.update_pass import _label_for

    used: set[str] = set()
    specs = [
        "/a/dpo/model.safetensors",
        "/a/x/model-00001-of-00002.safetensors",
        "/a/ckpt/step100.safetensors",
        "/b/dpo",
    ]
    assert [_label_for(s, used) for s in specs] == ["dpo", "x", "step100", "dpo-2"]


def test_labels_that_read_as_one_file_name_keep_their_own_masks(tmp_path):
    """Labels 'a/b' and 'a_b' both made masks/a_b.safetensors: the second mask replaced the first and both
    labels pointed at it (so did 'A' and 'a' on a case-insensitive file system)."""
    w = torch.zeros(4, dtype=torch.bfloat16)
    base = _write(tmp_path / "b", {"model.layers.0.mlp.up_proj.weight": w})
    one = _write(tmp_path / "f1", {"model.layers.0.mlp.up_proj.weight": w + torch.tensor([1, 0, 0, 0])})
    two = _write(tmp_path / "f2", {"model.layers.0.mlp.up_proj.weight": w + torch.tensor([0, 1, 1, 0])})
    labels = ["a/b", "a_b", "A_B", ""]
    out = write_analysis(analyze_updates(base, [one, two, one, two], labels=labels), tmp_path / "out")
    files = json.loads((out / "summary.json").read_text())["mask_files"]
    assert len(set(files.values())) == 4 and files[""] == "masks/model.safetensors"
    for label, want in zip(labels, [1, 2, 1, 2], strict=True):
        assert load_mask_set(out / files[label]).count == want, label
