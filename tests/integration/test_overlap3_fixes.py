"""Overlap of update masks, third review: masks of another model's shapes, tensors some finetunes lack.

1. Only a vocabulary's rows (the embedding's, the LM head's: the update analysis's own rule) are compared over a
   shared prefix. A norm or an MLP matrix of another width (first dimension alone differing) was compared over its
   leading entries, as a "resized vocabulary"; it is now left out with a note naming it, and where nothing but a
   vocabulary's rows is left the masks are said to be of different models.
2. ``analyze`` left out tensors one finetune lacks without a word: the overlap's counts disagreed with the summary.
   summary.json, the CLI's notes and the report's overlap section now name them, how many, and their entries.

Every number is checked against plain NumPy and Python sets on planted masks.
"""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from subnetviz.analysis.overlap import held_by_every, mask_overlap, overlap_by_layer_module
from subnetviz.checkpoints.naming import NameTable
from subnetviz.errors import MaskError
from subnetviz.masks import MaskSet, PackedMasks, save_mask_set
from tests.ckpt_fixtures import write_folder

VOCAB = {"model.embed_tokens.weight", "lm_head.weight"}  # the tensors whose rows a resized vocabulary changes


def llama_shapes(hidden: int = 8, inter: int = 16, vocab: int = 16, layers: int = 2) -> dict[str, tuple]:
    """A tiny Llama's tensor shapes (untied head)."""
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + f"self_attn.{m}_proj.weight": (hidden, hidden) for m in "qkvo"})
        shapes.update({p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden)})
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
    return shapes


def planted(shapes: dict[str, tuple], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.random(s) < rng.choice([0.05, 0.3, 0.8]) for n, s in shapes.items()}


def reference(sets: list[dict[str, np.ndarray]]) -> tuple[list[str], np.ndarray]:
    """(the tensors compared, the (N, entries) flat masks compared), by hand: a tensor of one shape in every mask
    whole; a vocabulary tensor whose shapes differ only in the rows over the fewest rows; nothing else."""
    names, flat = [], []
    for n in sets[0]:
        shapes = [s[n].shape for s in sets]
        if len(set(shapes)) == 1:
            names.append(n)
            flat.append([s[n].reshape(-1) for s in sets])
        elif n in VOCAB and len({s[1:] for s in shapes}) == 1:
            rows = min(s[0] for s in shapes)
            names.append(n)
            flat.append([s[n][:rows].reshape(-1) for s in sets])
    if not names:
        return [], np.zeros((len(sets), 0), bool)
    return names, np.stack([np.concatenate(col) for col in zip(*flat, strict=True)])


def as_given(sets: list[dict[str, np.ndarray]], packed: bool) -> list:
    out = []
    for s in sets:
        t = {n: torch.from_numpy(v) for n, v in s.items()}
        if packed:
            p = PackedMasks()
            for n, v in t.items():
                p.add(n, v)
            t = p
        out.append(t)
    return out


def check_counts(rep, flat: np.ndarray, labels: list[str]) -> None:
    n_masks = flat.shape[0]
    codes = (flat.astype(np.int64) << np.arange(n_masks)[:, None]).sum(0)
    np.testing.assert_array_equal(rep.totals, np.bincount(codes, minlength=2**n_masks))
    np.testing.assert_array_equal(rep.sizes["count"], flat.sum(1))
    assert rep.numel == flat.shape[1]
    for (i, j), r in zip(itertools.combinations(range(n_masks), 2), rep.pairwise.itertuples(), strict=True):
        assert (r.a, r.b, r.intersection) == (labels[i], labels[j], int((flat[i] & flat[j]).sum()))


# --- 1: only a vocabulary's rows are compared over a prefix ----------------------------------------------------------
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("n_masks", [2, 3])
def test_an_mlp_of_another_width_is_left_out_and_a_resized_vocabulary_kept(packed, n_masks):
    """b: the FFN 24 wide (a's 16) and the vocabulary 20 (a's 16). gate_proj / up_proj differ in their first
    dimension alone: they were compared over their first 16 rows as a "resized vocabulary"; now only the embedding
    and the head are, and the MLP is left out with a note naming it."""
    shapes = [llama_shapes(inter=16, vocab=16), llama_shapes(inter=24, vocab=20), llama_shapes(inter=16, vocab=16)]
    sets = [planted(s, k) for k, s in enumerate(shapes[:n_masks])]
    labels = [f"m{k}" for k in range(n_masks)]
    names, flat = reference(sets)
    mlp = {n for n in sets[0] if ".mlp." in n}
    assert set(sets[0]) - set(names) == mlp and len(names) == 21 - 6  # (the reference itself: the MLP out)
    table = NameTable.from_config({"model_type": "llama"}, list(sets[0]))
    for rep in (
        mask_overlap(as_given(sets, packed), labels, other_shapes="skip"),  # the names' own table
        overlap_by_layer_module(as_given(sets, packed), labels, table, other_shapes="skip"),  # the page's grid
    ):
        check_counts(rep, flat, labels)
        assert set(rep.tensor_names) == set(names)
        rows, left = rep.notes[:2]
        assert "shared leading rows" in rows and all(n in rows for n in VOCAB) and ".mlp." not in rows
        assert "Left out" in left and "6 tensor(s)" in left and all(n in left for n in sorted(mlp)[:6])
        per_mask = {lbl: sum(sets[k][n].size for n in mlp) for k, lbl in enumerate(labels)}
        assert ", ".join(f"{lbl}: {v:,}" for lbl, v in per_mask.items()) in left
    with pytest.raises(MaskError, match=r"gate_proj.*only a vocabulary's rows"):
        mask_overlap(as_given(sets, packed), labels)


def test_the_page_backend_leaves_the_mlp_of_another_width_out(tmp_path):
    """The Overlap page's own backend (mask files, a naming table from their names)."""
    from subnetviz.jobs.cluster_pages import files_overlap_task

    sets = [planted(llama_shapes(inter=16, vocab=16), 0), planted(llama_shapes(inter=24, vocab=20), 1)]
    paths = [
        str(save_mask_set(tmp_path / f"m{k}.safetensors", MaskSet({n: torch.from_numpy(v) for n, v in s.items()})))
        for k, s in enumerate(sets)
    ]
    ov = files_overlap_task(paths, ["a", "b"])
    names, flat = reference(sets)
    check_counts(ov.report, flat, ["a", "b"])
    assert ov.common == 21 and len(ov.report.tensor_names) == len(names) == 15
    assert any("Left out" in n and "mlp.gate_proj" in n for n in ov.notes)


def test_masks_of_a_model_of_another_width_are_said_to_be_of_different_models(tmp_path):
    """Hidden 8 against hidden 12, the same names: only the norms' shapes differ in their first dimension alone.
    The overlap was computed over the first 8 entries of each norm; now there is none, and one line says why."""
    from subnetviz.jobs.cluster_pages import files_overlap_task

    sets = [planted(llama_shapes(hidden=8), 0), planted(llama_shapes(hidden=12), 1)]
    assert reference(sets)[0] == []  # no tensor of one shape, no vocabulary sharing its columns
    given = as_given(sets, packed=True)
    with pytest.raises(MaskError, match="different models") as err:
        mask_overlap(given, ["a", "b"], other_shapes="skip")
    assert "\n" not in str(err.value) and "21 of their 21 tensors" in str(err.value)
    q = "model.layers.0.self_attn.q_proj.weight"  # (the names tell a Llama)
    norms = [{q: sets[0][q], **{n: v for n, v in s.items() if n.endswith("norm.weight")}} for s in sets]
    with pytest.raises(MaskError, match=r"norm.weight.*\(12,\) but .* \(8,\); only a vocabulary's rows"):
        mask_overlap(as_given(norms, packed=False), ["a", "b"])
    paths = [
        str(save_mask_set(tmp_path / f"m{k}.safetensors", MaskSet({n: torch.from_numpy(v) for n, v in s.items()})))
        for k, s in enumerate(sets)
    ]
    ov = files_overlap_task(paths, ["a", "b"])
    assert ov.report is None and any("the masks are of different models" in n for n in ov.notes)


def test_only_a_vocabulary_s_rows_left_is_different_models_and_a_vocabulary_alone_is_compared():
    a = planted({"model.embed_tokens.weight": (16, 8), "model.layers.0.self_attn.q_proj.weight": (8, 8)}, 0)
    b = planted({"model.embed_tokens.weight": (20, 8), "model.layers.0.self_attn.q_proj.weight": (12, 8)}, 1)
    with pytest.raises(MaskError, match="different models.*only a vocabulary's shared rows"):
        mask_overlap(as_given([a, b], False), ["a", "b"], other_shapes="skip")
    # a resized vocabulary and nothing else: its shared rows are the overlap
    va, vb = ({n: m[n] for n in ("model.embed_tokens.weight",)} for m in (a, b))
    rep = mask_overlap(as_given([va, vb], False), ["a", "b"], other_shapes="skip")
    check_counts(rep, reference([va, vb])[1], ["a", "b"])


# --- 2: tensors some masks lack are said, with their entries -------------------------------------------------------
@pytest.mark.parametrize("packed", [False, True])
def test_held_by_every_names_the_tensors_left_out_and_counts_their_entries(packed):
    full = planted(llama_shapes(), 3)
    gone = {"b": {"model.layers.1.mlp.up_proj.weight"}, "c": {"model.layers.1.mlp.up_proj.weight", "lm_head.weight"}}
    sets = {"a": full}
    for seed, (label, left) in enumerate(gone.items(), start=4):
        sets[label] = {n: v for n, v in planted(llama_shapes(), seed).items() if n not in left}
    common, notes = held_by_every(as_given(list(sets.values()), packed), list(sets))
    assert common == set.intersection(*(set(s) for s in sets.values()))
    (note,) = notes
    others = set.union(*(set(s) for s in sets.values())) - common
    assert f"Compared over the {len(common)} tensors every mask holds" in note and f"{len(others)} tensor(s)" in note
    assert "model.layers.1.mlp.up_proj.weight (in a)" in note and "lm_head.weight (in a, b)" in note
    for lbl, s in sets.items():  # each mask's entries in the tensors left out: in the mask, of all
        held = [n for n in others if n in s]
        said = f"{sum(int(s[n].sum()) for n in held):,} of {sum(s[n].size for n in held):,}" if held else "none"
        assert f"{lbl}: {said}" in note
    assert held_by_every(as_given([full, full], packed), ["a", "b"]) == (set(full), [])


@pytest.fixture(scope="module")
def missing(tmp_path_factory):
    """A bf16 tiny Llama base, finetune A (every tensor) and Bmiss (B without layer 1's up_proj)."""
    root = tmp_path_factory.mktemp("overlap3-missing")
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 4,
        "vocab_size": 16,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    g = torch.Generator().manual_seed(0)
    base = {n: (torch.randn(s, generator=g) + 3).to(torch.bfloat16) for n, s in llama_shapes().items()}
    fts = {}
    for lbl in ("A", "B"):
        pick = {n: torch.rand(t.shape, generator=g) < (0.7 if "mlp" in n else 0.2) for n, t in base.items()}
        fts[lbl] = {n: torch.where(pick[n], (t.float() * 1.25).to(torch.bfloat16), t) for n, t in base.items()}
    gone = "model.layers.1.mlp.up_proj.weight"
    fts["Bmiss"] = {n: t for n, t in fts.pop("B").items() if n != gone}
    paths = {}
    for lbl, sd in {"base": base, **fts}.items():
        write_folder(root / lbl, sd)
        (root / lbl / "config.json").write_text(json.dumps(cfg))
        paths[lbl] = str(root / lbl)
    changed = {  # bit for bit, by NumPy
        lbl: {n: t.view(torch.int16).numpy() != base[n].view(torch.int16).numpy() for n, t in sd.items()}
        for lbl, sd in fts.items()
    }
    return root, paths, changed, gone


def test_analyze_and_report_say_the_tensors_one_finetune_lacks(missing, monkeypatch, capsys):
    from subnetviz.__main__ import main

    root, paths, changed, gone = missing
    monkeypatch.setenv("SUBNETVIZ_HOME", str(root / "home"))
    out = root / "out"
    args = ["analyze", paths["base"], paths["A"], paths["Bmiss"], "--labels", "A", "Bmiss", "--out", str(out)]
    assert main([*args, "--no-spectra", "--subspaces", "0"]) == 0
    printed = capsys.readouterr()
    a, b = changed["A"], changed["Bmiss"]
    common = set(a) & set(b)
    assert set(a) - common == {gone}
    # the overlap's numbers leave A's changed entries in the tensor out: against the hand count
    pair = pd.read_csv(out / "overlap_pairwise.csv").iloc[0]
    assert (
        pair["count_a"]
        == sum(int(a[n].sum()) for n in common)
        == sum(int(v.sum()) for v in a.values()) - int(a[gone].sum())
    )
    assert pair["numel"] == sum(a[n].size for n in common)
    want = (
        f"Compared over the {len(common)} tensors every mask holds; left out, not in every mask: 1 tensor(s): "
        f"{gone} (in A). Their entries (in the mask, of all), not compared: A: {int(a[gone].sum()):,} of "
        f"{a[gone].size:,}, Bmiss: none"
    )
    notes = json.loads((out / "summary.json").read_text())["notes"]
    assert any(n.startswith("Overlap of the update masks: " + want) for n in notes), notes
    assert want in printed.out + printed.err
    page = root / "report.html"
    assert main(["report", str(out), "--out", str(page)]) == 0
    text = page.read_text()
    section = re.search(r"Overlap of update masks</h2>(.*?)(<h2|$)", text, re.S).group(1)
    assert want in section.replace("&#x27;", "'")
