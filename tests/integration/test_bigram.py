"""Bigram subnetworks: statistics, maskable blocks, mask training, ablation, overlap nulls and the
residual-stream metrics, each checked against an independent reference (planted chains, float64
NumPy/sklearn, hand-computed cases, HF's own attention split)."""

from __future__ import annotations

import copy
import json
import pickle
import types

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from bigram_fixtures import V, planted_transition, pretrain

from subnetviz.bigram import stats as stats_mod
from subnetviz.bigram.evaluate import (
    evaluate_subnetwork,
    fidelity,
    generate,
    random_mask,
    score_tokens,
    sparsity_fidelity_curve,
)
from subnetviz.bigram.locate import (
    attention_mlp_split,
    block_counts,
    compare_subnetworks,
    expected_overlap_uniform,
    subnetwork_shares,
)
from subnetviz.bigram.maskable import (
    apply_released_mask,
    blocks_of,
    full_mask,
    load_released_mask,
    maskable_names,
    masked_parameters,
    save_released_mask,
)
from subnetviz.bigram.residual import (
    ResidualStats,
    collect_stats,
    covariance_similarity,
    hidden_states,
    median_rotation_deg,
    ridge_map,
    rotation_profile,
)
from subnetviz.bigram.stats import (
    TokenCorpus,
    corpus_from_dataset,
    corpus_from_text,
    count_bigrams,
    table_from_transition,
)
from subnetviz.bigram.train import preset_config, train_bigram_mask
from subnetviz.errors import ConfigError, MaskError
from subnetviz.masks import MaskSet, load_mask_set
from tests.models import bigram_model

KINDS = ("gpt2", "gpt_neox", "llama")


@pytest.fixture(scope="module")
def chain():
    p = planted_transition()
    return p, table_from_transition(p, np.arange(V))


@pytest.fixture(scope="module")
def trained_gpt2(chain):
    _, table = chain
    data = table.sample(400, 32, seed=1)
    return pretrain(bigram_model("gpt2"), data.ids, steps=120), table


# ---------------------------------------------------------------- statistics


def test_counts_by_hand_with_bos_and_backoff():
    t = count_bigrams([np.array([0, 1, 1]), np.array([1, 0])], vocab_size=3)
    dense = t.dense_rows(np.arange(4))
    np.testing.assert_allclose(dense[0], [0, 1, 0])  # 0 -> 1
    np.testing.assert_allclose(dense[1], [0.5, 0.5, 0])  # 1 -> 1, 1 -> 0
    np.testing.assert_allclose(dense[3], [0.5, 0.5, 0])  # BOS -> 0, BOS -> 1
    np.testing.assert_allclose(dense[2], [0.4, 0.6, 0])  # unseen context: unigram of the 5 tokens
    assert t.surprisal(np.array([1, 2]), np.array([1, 2])).tolist() == [1.0, np.inf]


def test_counts_from_planted_chain_converge_to_exact(chain):
    p, exact = chain
    errs = []
    for n in (50, 2000):
        counted = count_bigrams(exact.sample(n, 64, seed=3).ids, V)
        errs.append(np.abs(counted.dense_rows(np.arange(V)) - p).max())
    assert errs[1] < 0.03 and errs[1] < errs[0] / 3  # error shrinks like 1/sqrt(n)
    # the exact table's entropy rate equals the chain's, computed directly in float64
    pi = exact.unigram
    h = -(pi[:, None] * p * np.log2(p)).sum()
    assert exact.entropy() == pytest.approx(h, rel=1e-9)


def test_probs_rows_sparse_and_dense_paths_agree(chain, monkeypatch):
    _, table = chain
    ctx = torch.tensor([[0, 5, 5], [V, 3, 0]])
    dense = table.probs_rows(ctx)
    assert dense.shape == (6, V) and dense.dtype == torch.float32
    monkeypatch.setattr(stats_mod, "DENSE_CACHE_BYTES", 0)
    fresh = table_from_transition(table.probs[:V].toarray(), np.arange(V))
    torch.testing.assert_close(fresh.probs_rows(ctx), dense)
    np.testing.assert_allclose(dense[1].numpy(), table.probs[5].toarray()[0], rtol=1e-6)
    # a sparse counted table with unseen contexts (back-off) and empty trailing rows, vs SciPy rows
    counted = count_bigrams([np.array([0, 3, 3, 1]), np.array([3, 0, 0])], vocab_size=10)
    ctx = torch.tensor([[9, 3, 0, 10, 7, 1, 3]])
    np.testing.assert_array_equal(counted.probs_rows(ctx).numpy(), counted.dense_rows(ctx.numpy().reshape(-1)))


def test_corpus_from_text_uses_tokenizer(tmp_path):
    vocab = {c: i for i, c in enumerate("abc \n")}

    def encode(text, add_special_tokens=False):
        return {"input_ids": [vocab[c] for c in text]}

    tok = encode
    f = tmp_path / "c.txt"
    f.write_text("abc\nab\n")
    c = corpus_from_text(f, tok, seq_len=3)
    assert c.ids.tolist() == [[0, 1, 2], [4, 0, 1]]
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(ConfigError, match="tokenizes to 0"):
        corpus_from_text(tmp_path / "empty.txt", tok)
    with pytest.raises(ConfigError, match="no tokens"):
        count_bigrams([np.array([], dtype=np.int64)], 4)


def _words(text, add_special_tokens=False):
    """GPT-2's pre-tokenizer in small (a word carries its leading space; a run of whitespace gives all but its
    last character to a token of its own): a cut inside a word, or one that moves a word's space to the
    previous piece, would change the tokens."""
    import re

    return {"input_ids": [sum(map(ord, w)) % 997 for w in re.findall(r" ?\S+|\s+(?!\S)|\s+", text)]}


def test_corpus_from_text_reads_a_piece_at_a_time_as_the_whole_text_reads(tmp_path, monkeypatch):
    """The file is read a piece at a time, cut before a line or word break: the same tokens as the whole text
    (before, a line at a time: a file with no newline was read whole), and only until ``max_tokens``."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefgh"), rng.integers(1, 9))) for _ in range(3000)]
    text = " ".join(words[:1500]) + "\n" + "  ".join(words[1500:])
    f = tmp_path / "c.txt"
    f.write_text(text)
    monkeypatch.setattr(stats_mod, "PIECE_CHARS", 97)
    whole = _words(text)["input_ids"]
    got = corpus_from_text(f, _words, seq_len=10, max_tokens=None).ids.reshape(-1).tolist()
    assert got == whole[: len(whole) // 10 * 10]
    pieces = []
    counted = lambda t, add_special_tokens=False: pieces.append(t) or _words(t)  # noqa: E731
    assert corpus_from_text(f, counted, seq_len=10, max_tokens=50).ids.numel() == 50
    assert len(pieces) < 10  # stopped reading once it had its tokens


def test_an_hf_corpus_is_read_from_the_datasets_cache_never_the_working_directory(tmp_path, monkeypatch):
    """``hf:<name>`` went to ``datasets.load_dataset(name)``, which reads a folder of that name in the server's
    working directory before the cache (outside SUBNETVIZ_ROOTS), and ``hf:text`` / ``hf:json`` read every such file
    there. Planted: a cached data set someorg/tiny ("cached ..." rows) and, in a scratch working directory,
    ``someorg/tiny/``, ``docs/`` and a ``.txt`` holding "secret". The cache's rows are read; nothing else is."""
    import json
    import shutil

    import datasets

    rows = [f"cached row {i} of the data set" for i in range(40)]
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    datasets.load_dataset("json", data_files=str(src), cache_dir=str(tmp_path / "work"), split="train")
    built = next(p for p in (tmp_path / "work").glob("json/*/*/*") if p.is_dir())
    dest = tmp_path / "cache" / "someorg___tiny" / "default" / built.parts[-2] / built.parts[-1]
    shutil.copytree(built, dest)  # as load_dataset leaves a hub data set in its cache
    info = json.loads((dest / "dataset_info.json").read_text())
    (dest / "dataset_info.json").write_text(json.dumps({**info, "config_name": "default", "dataset_name": "tiny"}))
    for f in dest.glob("json-*"):
        f.rename(dest / f.name.replace("json-", "tiny-"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    cwd = tmp_path / "cwd"
    for folder in (cwd / "someorg" / "tiny", cwd / "docs"):
        folder.mkdir(parents=True)
        (folder / "data.jsonl").write_text("".join(json.dumps({"text": f"secret {i} " * 4}) + "\n" for i in range(40)))
    (cwd / "notes.txt").write_text("secret words\n" * 40)
    monkeypatch.chdir(cwd)

    got = corpus_from_dataset("hf:someorg/tiny", _words, seq_len=4).ids.reshape(-1).tolist()
    whole = [i for t in rows for i in _words(t)["input_ids"]]
    assert got == whole[: len(whole) // 4 * 4]
    with pytest.raises(ConfigError, match=r"^hf:docs: not a local dataset"):  # not cached; docs/ is not read
        corpus_from_dataset("hf:docs", _words, seq_len=4)
    for loader in ("text", "json"):
        with pytest.raises(ConfigError, match="file-format loader of datasets"):
            corpus_from_dataset(f"hf:{loader}", _words, seq_len=4)


@pytest.mark.parametrize(
    "data, says",
    [
        (b"abc abc\x00\x01\x02 abc", r"not a UTF-8 text file \(a NUL byte near character 7\)"),
        (b"abc \xff\xfe abc", r"not a UTF-8 text file \(byte 0xff is not UTF-8"),
    ],
)
def test_a_corpus_that_is_not_text_is_refused(tmp_path, data, says):
    """A binary file under the roots (a shared library, a checkpoint) is refused as a corpus, naming where; before
    it was tokenized as text (errors replaced), a 17 MB binary taking 34 s and 600 MB of the server's memory."""
    f = tmp_path / "lib.so"
    f.write_bytes(data)
    with pytest.raises(ConfigError, match=says):
        corpus_from_text(f, _words)


# ---------------------------------------------------------------- maskable weights


@pytest.mark.parametrize("kind", KINDS)
def test_all_ones_is_full_model_and_all_zeros_leaves_only_kept(kind):
    model = bigram_model(kind)
    names = set(maskable_names(model))
    for n, p in model.named_parameters():  # always kept: embeddings, unembedding, norms, biases, wpe
        assert (n in names) == (
            p.ndim == 2 and "emb" not in n and "wte" not in n and "wpe" not in n and "lm_head" not in n
        ), n
    assert len(names) == (8 if kind == "gpt2" else 8 if kind == "gpt_neox" else 14)
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(0))
    ones = masked_parameters(model, full_mask(model, True), "keep")
    ref = model(ids).logits
    assert torch.equal(torch.func.functional_call(model, ones, (ids,)).logits, ref)
    zeros = masked_parameters(model, full_mask(model, False), "keep")
    zeroed = copy.deepcopy(model)  # independent reference: zero the matrices in place on a copy
    with torch.no_grad():
        for n, p in zeroed.named_parameters():
            if n in names:
                p.zero_()
    out = torch.func.functional_call(model, zeros, (ids,)).logits
    torch.testing.assert_close(out, zeroed(ids).logits, rtol=0, atol=0)
    assert not torch.allclose(out, ref)
    assert all(float(p.detach().abs().sum()) > 0 for n, p in model.named_parameters())  # model untouched


def _capture_qkv(monkeypatch, module, model, ids):
    """HF's own q, k, v of layer 0 (the first call of the attention function), (B, heads, T, s) each."""
    calls = []
    original = module.eager_attention_forward

    def spy(mod, q, k, v, *args, **kwargs):
        calls.append((q.detach().clone(), k.detach().clone(), v.detach().clone()))
        return original(mod, q, k, v, *args, **kwargs)

    monkeypatch.setattr(module, "eager_attention_forward", spy)
    model(ids)
    return calls[0]


@pytest.mark.parametrize("kind", ["gpt_neox", "gpt2"])
def test_fused_qkv_labels_match_how_hf_splits(kind, monkeypatch):
    """Perturb one output unit of the fused matrix and see which of HF's q/k/v (and which head) moves."""
    import transformers.models.gpt2.modeling_gpt2 as m_gpt2
    import transformers.models.gpt_neox.modeling_gpt_neox as m_neox

    model = bigram_model(kind)
    module = m_neox if kind == "gpt_neox" else m_gpt2
    x = torch.tensor([[1, 5, 2, 7, 3]])
    blocks = [b for b in blocks_of(model) if b.layer == 0 and b.label in "QKV"]
    assert [b.label for b in blocks] == ["Q", "K", "V"]
    base = _capture_qkv(monkeypatch, module, model, x)
    name = blocks[0].param
    w = dict(model.named_parameters())[name]
    for b in blocks:
        for unit in (b.indices[0], b.indices[9], b.indices[-1]):
            with torch.no_grad():
                sl = (unit, slice(None)) if kind == "gpt_neox" else (slice(None), unit)
                saved = w[sl].clone()
                w[sl] += 1.0
                moved = _capture_qkv(monkeypatch, module, model, x)
                w[sl] = saved  # exact restore (w + 1 - 1 is not w in float32)
            changed = ["QKV"[i] for i in range(3) if not torch.allclose(moved[i], base[i])]
            assert changed == [b.label], (unit, changed)
            head = b.indices.index(unit) // 8  # head_size 8: block indices run head by head
            heads = [
                h
                for h in range(4)
                if not torch.allclose(moved["QKV".index(b.label)][0, h], base["QKV".index(b.label)][0, h])
            ]
            assert heads == [head]


def test_block_partition_and_shares():
    for kind in KINDS:
        model = bigram_model(kind)
        ms = full_mask(model, True)
        counts = block_counts(ms, blocks_of(model))
        assert counts["n"].sum() == ms.numel  # blocks partition every maskable entry
    model = bigram_model("gpt2")
    ms = full_mask(model, False)
    ms.masks["transformer.h.0.mlp.c_fc.weight"][:] = True
    ms.masks["transformer.h.1.attn.c_attn.weight"][:, 64:70] = True  # 6 columns x 32 rows of V
    shares = subnetwork_shares(ms, blocks_of(model))
    assert len(shares) == 12
    cell = shares.set_index(["layer", "block"])["kept"]
    assert cell[(0, "MLP-in")] == 32 * 128 and cell[(1, "V")] == 6 * 32 and cell.sum() == 32 * 128 + 192
    split = attention_mlp_split(shares).set_index("group")["kept"]
    assert split["attention"] == 192 and split["V+O"] == 192 and split["Q+K"] == 0


def test_released_pickle_checks_architecture(tmp_path):
    gpt2, neox = bigram_model("gpt2"), bigram_model("gpt_neox")
    rng = np.random.default_rng(0)
    payload = {
        n[len("transformer.") :]: rng.random(tuple(s)) < 0.1
        for n, s in ((n, p.shape) for n, p in gpt2.named_parameters() if n in maskable_names(gpt2))
    }
    payload["orig_model_name"] = "gpt2"
    path = tmp_path / "subnetwork_dict_lambda1e1.pickle"
    path.write_bytes(pickle.dumps(payload))
    ms = load_released_mask(path, gpt2)  # names without the "transformer." prefix are aligned
    assert set(ms.masks) == set(maskable_names(gpt2)) and ms.metadata["orig_model_name"] == "gpt2"
    with pytest.raises(MaskError, match="gpt_neox"):
        load_released_mask(path, neox)
    with pytest.raises(MaskError):
        masked_parameters(neox, ms)
    gpt2.save_pretrained(tmp_path / "gpt2")
    loaded, ms2 = apply_released_mask(path, tmp_path / "gpt2")
    ids = torch.tensor([[1, 2, 3]])
    expect = torch.func.functional_call(gpt2, masked_parameters(gpt2, ms), (ids,)).logits
    got = torch.func.functional_call(loaded, masked_parameters(loaded, ms2), (ids,)).logits
    torch.testing.assert_close(got, expect)
    with pytest.raises(ConfigError, match="no config.json"):
        apply_released_mask(path, tmp_path / "nothing")
    saved = load_mask_set(save_released_mask(path, tmp_path / "gpt2", tmp_path / "released.safetensors"))
    assert all(torch.equal(saved.masks[n], ms.masks[n]) for n in ms.masks)


def test_importing_released_pickles_never_replaces_one_another(tmp_path, monkeypatch):
    """The Bigram page's import: two released pickles of the same file name (from two folders) are both kept,
    the same pickle for the same model is stored once, a path outside the roots is refused."""
    from subnetviz import selection
    from subnetviz.errors import PathNotAllowedError

    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    gpt2 = bigram_model("gpt2")
    gpt2.save_pretrained(tmp_path / "gpt2")
    names = [n for n in maskable_names(gpt2)]
    stored = []
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        payload = {n: rng.random(tuple(gpt2.get_parameter(n).shape)) < 0.1 for n in names}
        path = tmp_path / f"run{seed}" / "subnetwork_dict_lambda1e1.pickle"
        path.parent.mkdir()
        path.write_bytes(pickle.dumps(payload))
        stored.append(selection.import_released(str(path), str(tmp_path / "gpt2")))
        got = load_mask_set(stored[-1]).masks
        assert all(np.array_equal(got[n].numpy(), payload[n]) for n in names)
    assert stored[0] != stored[1] and all(p.exists() for p in stored)
    assert stored[1].name.startswith("subnetwork_dict_lambda1e1-") and stored[0].parent == tmp_path / "home" / "uploads"
    again = selection.import_released(str(path), str(tmp_path / "gpt2"))
    assert again == stored[1] and len(list(stored[0].parent.glob("*.safetensors"))) == 2
    with pytest.raises(PathNotAllowedError, match="outside the folders"):
        selection.import_released("/etc/passwd", str(tmp_path / "gpt2"))
    with pytest.raises(MaskError, match="no such pickle"):
        selection.import_released(str(tmp_path / "missing.pickle"), str(tmp_path / "gpt2"))


def test_unsupported_models_raise():
    with pytest.raises(ConfigError, match="bert"):
        maskable_names(types.SimpleNamespace(config=types.SimpleNamespace(model_type="bert")))
    odd = torch.nn.Linear(3, 3)
    odd.config = types.SimpleNamespace(model_type="gpt2")
    with pytest.raises(ConfigError, match="none of the expected"):
        maskable_names(odd)


# ---------------------------------------------------------------- random masks and overlap


def _random_set(model, density, seed):
    g = torch.Generator().manual_seed(seed)
    return MaskSet(
        {
            n: torch.rand(s, generator=g) < density
            for n, s in ((n, p.shape) for n, p in model.named_parameters() if n in maskable_names(model))
        }
    )


def test_random_masks_keep_block_counts_and_row_sums():
    model = bigram_model("gpt_neox")
    blocks = blocks_of(model)
    ms = _random_set(model, 0.2, 0)
    for null in ("uniform", "rows"):
        r = random_mask(ms, blocks, seed=1, null=null)
        assert block_counts(r, blocks)["kept"].tolist() == block_counts(ms, blocks)["kept"].tolist()
        assert not all(torch.equal(r.masks[n], ms.masks[n]) for n in ms.masks)
    r = random_mask(ms, blocks, seed=1, null="rows")
    for b in blocks:
        a, c = b.select(ms.masks[b.param]), b.select(r.masks[b.param])
        assert sorted(a.sum(1).tolist()) == sorted(c.sum(1).tolist())  # rows moved whole


def test_overlap_null_expectation_matches_formula():
    model = bigram_model("gpt2")
    blocks = blocks_of(model)
    m0, m1 = _random_set(model, 0.1, 0), _random_set(model, 0.3, 1)
    n = m0.numel
    c0, c1 = block_counts(m0, blocks), block_counts(m1, blocks)
    formula = float((c0["kept"] * c1["kept"] / c0["n"]).sum() / n)  # sum_b k0 k1 / n_b / N, by hand
    assert expected_overlap_uniform(m0, m1, blocks) == pytest.approx(formula, rel=1e-12)
    draws = (
        np.array(
            [sum(int((m0.masks[k] & v).sum()) for k, v in random_mask(m1, blocks, s).masks.items()) for s in range(300)]
        )
        / n
    )
    se = draws.std() / np.sqrt(len(draws))
    assert abs(draws.mean() - formula) < 4 * se
    rep = compare_subnetworks(m0, m1, blocks, draws=2000, seed=0)
    assert abs(rep.null_uniform.mean() - formula) < 4 * rep.null_uniform.std() / np.sqrt(2000)
    assert rep.shared == sum(int((m0.masks[k] & m1.masks[k]).sum()) for k in m0.masks)
    assert rep.share_of_0_in_1 == pytest.approx(rep.shared / m0.count)
    # the row-shuffle null by gathers agrees with explicit row shuffles of the mask
    rows = (
        np.array(
            [
                sum(int((m0.masks[k] & v).sum()) for k, v in random_mask(m1, blocks, s, "rows").masks.items())
                for s in range(300)
            ]
        )
        / n
    )
    assert abs(rows.mean() - rep.expected_rows) < 4 * np.hypot(
        rows.std() / np.sqrt(300), rep.null_rows.std() / np.sqrt(2000)
    )
    # a mask compared with itself is far above chance
    same = compare_subnetworks(m0, m0, blocks, draws=200, seed=0)
    assert same.ratio_uniform > 5 and same.p_uniform == pytest.approx(1 / 201)
    assert set(same.to_frame()["null"]) == {"uniform", "rows"}


# ---------------------------------------------------------------- residual stream


def _rotation(d: int, theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.kron(np.eye(d // 2), np.array([[c, -s], [s, c]]))


def test_rotation_metric_recovers_planted_angle():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    x_in = rng.normal(size=(3000, 8)) + 2.0
    layers = [x_in, x_in @ _rotation(8, np.radians(35)), x_in @ _rotation(8, np.radians(80))]
    coef = ridge_map(layers[1], x_in)
    np.testing.assert_allclose(coef, Ridge(alpha=1.0).fit(layers[1], x_in).coef_, atol=1e-10)
    assert median_rotation_deg(coef) == pytest.approx(35, abs=0.1)
    prof = rotation_profile(ResidualStats.from_arrays(x_in, layers)).set_index(["layer", "target"])["angle_deg"]
    assert prof[(0, "input")] == pytest.approx(0, abs=0.1)
    assert prof[(1, "input")] == pytest.approx(35, abs=0.1)
    assert prof[(2, "input")] == pytest.approx(80, abs=0.1)
    assert prof[(1, "output")] == pytest.approx(45, abs=0.1)  # from 35° to 80°
    assert prof[(2, "output")] == pytest.approx(0, abs=0.1)


def test_covariance_similarity_against_numpy_svd():
    rng = np.random.default_rng(1)
    x_in = rng.normal(size=(500, 6))
    layers = [x_in, x_in @ rng.normal(size=(6, 6)), rng.normal(size=(500, 6)) * np.arange(1, 7)]
    sim = covariance_similarity(ResidualStats.from_arrays(x_in, layers))
    mat = sim.pivot(index="layer_i", columns="layer_j", values="similarity").to_numpy()
    np.testing.assert_allclose(np.diag(mat), 1.0, atol=1e-12)
    covs = []
    for x in layers:  # reference: SVD of the centred activations, top direction dropped
        _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
        covs.append((vt[1:].T * s[1:] ** 2) @ vt[1:])
    ref = np.array([[np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b) for b in covs] for a in covs])
    np.testing.assert_allclose(mat, ref, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_last_hidden_state_is_before_final_norm(kind):
    model = bigram_model(kind)
    ids = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(0))
    last_layer = model.get_submodule(f"{model.base_model_prefix}.{'h' if kind == 'gpt2' else 'layers'}.1")
    got = {}
    h = last_layer.register_forward_hook(lambda m, a, o: got.setdefault("out", o[0] if isinstance(o, tuple) else o))
    hs = hidden_states(model, ids)
    h.remove()
    assert len(hs) == 3
    torch.testing.assert_close(hs[-1], got["out"])
    stats = collect_stats(model, TokenCorpus(ids), batch_size=1)
    # reference: the statistics' definitions as plain float64 matrix products of the hooked activations
    emb = model.get_input_embeddings().weight[ids.reshape(-1)].detach().double().numpy()
    xs = [x.reshape(-1, 32).double().numpy() for x in hs]
    assert stats.n == 14
    np.testing.assert_allclose(stats.sums, np.stack([x.sum(0) for x in xs]), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(stats.gram, np.stack([x.T @ x for x in xs]), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(stats.cross_in, np.stack([x.T @ emb for x in xs]), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(stats.cross_out, np.stack([x.T @ xs[-1] for x in xs]), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(stats.sum_in, emb.sum(0), rtol=1e-9, atol=1e-6)


# ---------------------------------------------------------------- training and evaluation


@pytest.mark.slow
def test_mask_training_lowers_loss_and_ends_binary(trained_gpt2):
    model, table = trained_gpt2
    before = {n: p.clone() for n, p in model.named_parameters()}
    data = table.sample(256, 32, seed=5)
    cfg = preset_config("fast", lam=1.0, beta_growth=1.03, max_steps=250, batch_size=16)
    res = train_bigram_mask(model, data, table, cfg, device="cpu")
    ce = res.curve["ce"].to_numpy()
    assert ce[-10:].mean() < ce[:10].mean() - 0.05
    assert res.stopped_by == "rule" and res.soft_final["undecided"] < 0.01
    assert all(m.dtype == torch.bool for m in res.mask_set.masks.values())
    # the binary mask is the last step's logits > 0: its density is the curve's last "kept" share
    kept = sum(int(m.sum()) for m in res.mask_set.masks.values())
    numel = sum(m.numel() for m in res.mask_set.masks.values())
    assert res.mask_set.density == pytest.approx(kept / numel, rel=1e-12)
    assert kept / numel == res.curve["kept"].iloc[-1] and 0 < kept < numel
    assert res.mask_set.metadata["lambda"] == 1.0 and res.mask_set.metadata["steps"] == res.steps == len(res.curve)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # base frozen, untouched
    # the subnetwork mimics the bigram model better than the full model and a random one
    rep = evaluate_subnetwork(model, res.mask_set, table, table.sample(60, 32, seed=9), seeds=(0, 1))
    s = rep.summary().set_index("setting")
    assert s.loc["subnetwork", "r_mean"] > s.loc["random subnetwork", "r_mean"]
    assert s.loc["subnetwork", "kl_bits_mean"] < s.loc["empty", "kl_bits_mean"]
    assert s.loc["bigram", "r_mean"] == pytest.approx(1.0)
    assert s.loc["random subnetwork", "n_seeds"] == 2


def test_evaluation_invariants(trained_gpt2):
    model, table = trained_gpt2
    data = table.sample(20, 16, seed=2)
    ones = full_mask(model, True)
    rep = evaluate_subnetwork(model, ones, table, data, seeds=(0,)).to_frame().set_index("setting")
    assert rep.loc["subnetwork", "bits"] == pytest.approx(rep.loc["full", "bits"], abs=1e-6)
    assert rep.loc["ablated", "bits"] == pytest.approx(rep.loc["empty", "bits"], abs=1e-6)
    sc = score_tokens(model, data, table)
    # soft cross-entropy and KL against the chain's rows, by hand in float64 over every scored position
    with torch.no_grad():
        lq_all = torch.log_softmax(model(data.ids).logits[:, :-1].double(), -1).reshape(-1, V).numpy() / np.log(2)
    p_all = table.dense_rows(data.ids[:, :-1].reshape(-1).numpy()).astype(np.float64)
    p_all /= p_all.sum(1, keepdims=True)
    ce_ref = -(p_all * lq_all).sum(1).mean()
    h_ref = -(p_all * np.log2(np.where(p_all > 0, p_all, 1))).sum(1).mean()
    assert sc.soft_ce_bits == pytest.approx(ce_ref, rel=1e-4) and sc.kl_bits == pytest.approx(ce_ref - h_ref, rel=1e-4)
    # KL by hand in float64 for the first sequence
    ids = data.ids[:1]
    logq = torch.log_softmax(model(ids).logits[0, :-1].double(), -1).numpy() / np.log(2)
    p = table.dense_rows(ids[0, :-1].numpy()).astype(np.float64)
    p /= p.sum(1, keepdims=True)
    kl = (p * (np.log2(np.where(p > 0, p, 1)) - logq)).sum(1).mean()
    assert score_tokens(model, TokenCorpus(ids), table).kl_bits == pytest.approx(kl, rel=1e-4)
    curve = sparsity_fidelity_curve(model, [ones, full_mask(model, False)], table, data)
    assert curve["density"].tolist() == [0.0, 1.0]


def test_fidelity_variants_by_hand():
    model_bits = np.array([1.0, 2.0, 3.0, 4.0])
    bigram = np.array([1.0, 2.0, np.inf, 4.5])
    r, r_drop = fidelity(model_bits, bigram)
    assert r == pytest.approx(np.corrcoef(model_bits, [1.0, 2.0, 4.5, 4.5])[0, 1])
    assert r_drop == pytest.approx(np.corrcoef([1.0, 2.0, 4.0], [1.0, 2.0, 4.5])[0, 1])


def test_generation_seeded_and_ablation_changes_it(trained_gpt2):
    model, _ = trained_gpt2
    prompt = torch.tensor([1, 2])
    a, b = generate(model, prompt, 12, seed=3), generate(model, prompt, 12, seed=3)
    assert torch.equal(a, b) and len(a) == 14
    ablated = masked_parameters(model, full_mask(model, True), "ablate")
    assert not torch.equal(generate(model, prompt, 12, seed=3, params=ablated), a)
    with pytest.raises(ConfigError):
        generate(model, prompt, 2, temperature=0)


@pytest.mark.slow
def test_generations_split_the_prompt_from_what_each_setting_sampled(micro_zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from subnetviz.bigram.evaluate import generations

    model = AutoModelForCausalLM.from_pretrained(micro_zoo.base, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(micro_zoo.base, local_files_only=True)
    prompt = "12+34="
    g = generations(model, tok, full_mask(model, True), prompt, n_new=6, seeds=(0, 1))
    assert list(g.columns) == ["setting", "seed", "prompt", "continuation"]
    assert list(zip(g["setting"], g["seed"], strict=True)) == [("full", 0), ("full", 1), ("ablated", 0), ("ablated", 1)]
    assert (g["prompt"] == prompt).all()
    ids = torch.tensor(tok(prompt, add_special_tokens=False)["input_ids"])
    ablated = masked_parameters(model, full_mask(model, True), "ablate")
    for row in g.itertuples():  # what generate() sampled after the prompt, decoded on its own
        out = generate(model, ids, 6, seed=row.seed, params=ablated if row.setting == "ablated" else None)
        assert torch.equal(out[: len(ids)], ids) and row.continuation == tok.decode(out[len(ids) :].tolist())


# ---------------------------------------------------------------- bad input and the job


def test_bad_training_input(trained_gpt2):
    model, table = trained_gpt2
    with pytest.raises(ConfigError, match="lambda"):
        preset_config("fast", lam=-1.0)
    with pytest.raises(ConfigError, match="preset"):
        preset_config("papr")
    big = count_bigrams([np.arange(40)], vocab_size=40)
    with pytest.raises(ConfigError, match="vocabulary of 40"):
        train_bigram_mask(model, TokenCorpus(torch.zeros(2, 4, dtype=torch.long)), big, device="cpu")


def _zoo_files(tmp_path, monkeypatch, model):
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    from subnetviz.config import zoo_dir

    zoo_dir().mkdir(parents=True, exist_ok=True)
    np.savez(zoo_dir() / "bigram.npz", transition=planted_transition(), token_ids=np.arange(V))
    model.save_pretrained(tmp_path / "model")


@pytest.mark.slow
def test_job_validates_and_writes_outputs(tmp_path, monkeypatch, trained_gpt2):
    from subnetviz.bigram.job import run_job, validate_config
    from subnetviz.jobs.context import JobContext

    model, _ = trained_gpt2
    _zoo_files(tmp_path, monkeypatch, model)
    cfg = {
        "model": str(tmp_path / "model"),
        "corpus": "zoo",
        "lambda": 1.0,
        "steps": 15,
        "seq_len": 16,
        "eval_sequences": 20,
        "device": "cpu",
    }
    validate_config(cfg)
    for bad, match in (
        ({"lambda": -1}, "lambda"),
        ({"corpus": str(tmp_path / "nope.txt")}, "corpus"),
        ({"target": "trigram"}, "target"),
        ({"stepz": 3}, "unknown"),
        ({"preset": "slow"}, "preset"),
        ({"model": str(tmp_path)}, "config.json"),
    ):
        with pytest.raises(ConfigError, match=match):
            validate_config({**cfg, **bad})
    ctx = JobContext.for_dir(tmp_path / "run")
    run_job(cfg, ctx)
    ms = load_mask_set(ctx.out_dir / "mask.safetensors")
    assert set(ms.masks) == set(maskable_names(model)) and ms.metadata["lambda"] == 1.0
    metrics = json.loads((ctx.out_dir / "metrics.json").read_text())
    curve = pd.read_csv(ctx.out_dir / "curve.csv")
    assert metrics["steps"] == len(curve) == curve["step"].iloc[-1] and metrics["kept"] == ms.count
    assert metrics["stopped_by"] == "rule" or (metrics["stopped_by"] == "max_steps" and metrics["steps"] == 15)
    # r_subnetwork recomputed in float64 on the job's held-out sequences (the chain sampled with seed
    # 0 + 10 000): the masked model's surprisal of each next token vs the planted chain's, Pearson by hand
    chain = planted_transition()
    held = table_from_transition(chain, np.arange(V), V).sample(20, 16, seed=10_000).ids
    sub = copy.deepcopy(model).double()
    with torch.no_grad():
        for name, p in sub.named_parameters():  # a tied head is the same tensor as the embedding
            if name in ms.masks:
                p.mul_(ms.masks[name].double())
        logp = torch.log_softmax(sub(held).logits[:, :-1].double(), -1)
    model_bits = (-logp.gather(-1, held[:, 1:, None])[..., 0] / np.log(2)).numpy().ravel()
    chain_bits = -np.log2(chain[held[:, :-1].numpy(), held[:, 1:].numpy()]).ravel()
    a, b = model_bits - model_bits.mean(), chain_bits - chain_bits.mean()
    assert metrics["r_subnetwork"] == pytest.approx((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()), abs=1e-4)
    status = json.loads((ctx.run_dir / "status.json").read_text())
    assert status["step"] == metrics["steps"]
    from subnetviz.bigram.job import analyse_mask_file

    mask = str(ctx.out_dir / "mask.safetensors")
    res, gens = analyse_mask_file(
        cfg["model"], mask, optimal=mask, eval_sequences=20, seeds=(0,), residual_tokens=64, seq_len=16
    )
    assert gens is None  # the saved tiny model has no tokenizer
    assert res.headline["kept"] == ms.count and res.overlap.shared == ms.count
    # same held-out sequences as the job's closing check -> the same fidelity
    assert res.headline["r_subnetwork"] == pytest.approx(metrics["r_subnetwork"], rel=1e-9, nan_ok=True)


def test_job_honours_cancel(tmp_path, monkeypatch, trained_gpt2):
    from subnetviz.bigram.job import run_job
    from subnetviz.jobs.context import CANCEL_FILE, JobContext

    model, _ = trained_gpt2
    _zoo_files(tmp_path, monkeypatch, model)
    ctx = JobContext.for_dir(tmp_path / "run")
    (ctx.run_dir / CANCEL_FILE).touch()
    run_job({"model": str(tmp_path / "model"), "steps": 50, "seq_len": 16, "device": "cpu"}, ctx)
    assert not (ctx.out_dir / "mask.safetensors").exists()


def test_job_config_reads_the_json_jobs_wrote_and_names_bad_keys():
    from subnetviz.bigram.config import BigramJobConfig

    written = {
        "kind": "bigram_mask",
        "model": "/m",
        "corpus": "zoo",
        "target": "optimal",
        "lambda": 3,
        "preset": "fast",
        "steps": 60,
        "seed": 1,
        "device": "cpu",
    }
    cfg = BigramJobConfig.from_dict(written)
    assert (cfg.lam, cfg.target, cfg.steps, cfg.eval_sequences) == (3, "optimal", 60, 200)
    d = cfg.to_dict()
    assert d["lambda"] == 3 and "lam" not in d and d["kind"] == "bigram_mask"
    assert BigramJobConfig.from_dict(json.loads(json.dumps(d))) == cfg
    for bad, match in (
        ({"lam": 1.0}, "unknown field 'lam'.*lambda"),
        ({"lambda": float("nan")}, "lambda"),
        ({"lambda": float("inf")}, "finite number"),  # (it "succeeded": loss NaN, no weight kept)
        ({"corpus": "hf:/etc/passwd-folder"}, "names a dataset of the hub by its id"),  # load_dataset reads paths
        ({"seq_len": 0}, "seq_len"),
        ({"steps": True}, "steps"),
        ({"model": ""}, "'model'"),
    ):
        with pytest.raises(ConfigError, match=match):
            BigramJobConfig.from_dict({**written, **bad})
    with pytest.raises(ConfigError, match="'model'"):
        BigramJobConfig.from_dict({"corpus": "zoo"})


def test_store_key_follows_the_files_the_corpus_and_the_version(tmp_path, monkeypatch):
    import os

    from subnetviz.bigram import store
    from subnetviz.config import zoo_dir

    _zoo_files(tmp_path, monkeypatch, bigram_model("gpt2"))
    model, mask = str(tmp_path / "model"), tmp_path / "mask.safetensors"
    mask.write_bytes(b"mask-v1!")
    key = store.analysis_key(model, str(mask))
    assert key == store.analysis_key(model, str(mask))  # stable while nothing changes
    mask.write_bytes(b"mask-v2!")  # same path and size, new content and mtime
    os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 1_000_000))
    key2 = store.analysis_key(model, str(mask))
    assert key2 != key
    assert store.analysis_key(model, str(mask), optimal=str(mask)) != key2
    table = zoo_dir() / "bigram.npz"
    os.utime(table, ns=(table.stat().st_atime_ns, table.stat().st_mtime_ns + 1_000_000))
    assert store.analysis_key(model, str(mask)) != key2  # the zoo's chain was rebuilt
    key3 = store.analysis_key(model, str(mask))
    monkeypatch.setattr(store, "BIGRAM_VERSION", store.BIGRAM_VERSION + 1)
    assert store.analysis_key(model, str(mask)) != key3  # a format change never serves old entries


def test_text_corpus_vocab_mismatch(tmp_path, monkeypatch):
    from subnetviz.bigram.job import prepare

    model = bigram_model("gpt2")
    _zoo_files(tmp_path, monkeypatch, model)
    np.savez(tmp_path / "big.npz", transition=np.eye(3)[[1, 2, 0]], token_ids=[0, 1, 40], vocab_size=41)
    with pytest.raises(ConfigError, match="vocabulary of 41"):
        prepare({"model": str(tmp_path / "model"), "bigram": str(tmp_path / "big.npz")})
    assert sp.issparse(count_bigrams([np.arange(5)], 5).probs)


def test_analyse_subnetwork_headline(trained_gpt2):
    from subnetviz.bigram.evaluate import analyse_subnetwork

    model, table = trained_gpt2
    data = table.sample(24, 16, seed=4)
    ms = full_mask(model, False)
    ms.masks["transformer.h.0.mlp.c_fc.weight"][:, :64] = True
    opt = full_mask(model, False)
    opt.masks["transformer.h.0.mlp.c_fc.weight"][:, 32:96] = True
    res = analyse_subnetwork(model, ms, table, data, optimal=opt, seeds=(0, 1), residual_tokens=200, overlap_draws=100)
    h = res.headline
    assert h["kept"] == 32 * 64 and h["first_mlp_share"] == 1.0 and h["mlp_share"] == 1.0
    assert h["share_in_optimal"] == pytest.approx(0.5)
    # uniform null within c_fc: expected = k0 k1 / n_block / N
    assert res.overlap.expected_uniform == pytest.approx((2048 * 2048 / 4096) / ms.numel)
    assert set(res.residual.rotation["model"]) == {"full", "bigram subnetwork", "random subnetwork"}
    assert len(res.residual.covariance) == 3 * 9
    cov = res.residual.covariance_matrix("full")
    assert cov.shape == (3, 3) and np.allclose(np.diag(cov.to_numpy()), 1.0)
    from subnetviz.bigram.locate import shares_heatmap_frame
    from subnetviz.figures import sparsity_heatmap

    fig = sparsity_heatmap(shares_heatmap_frame(res.shares), value="share")
    assert np.nanmax(np.asarray(fig.data[0].z, dtype=float)) == pytest.approx(100.0)  # all in layer-0 MLP-in


def test_row_null_sparse_path_equals_dense(monkeypatch):
    from subnetviz.bigram import locate

    model = bigram_model("gpt_neox")
    blocks = blocks_of(model)
    m0, m1 = _random_set(model, 0.05, 3), _random_set(model, 0.2, 4)
    dense = compare_subnetworks(m0, m1, blocks, draws=300, seed=7)
    monkeypatch.setattr(locate, "DENSE_ROWS_MAX", 0)
    sparse = compare_subnetworks(m0, m1, blocks, draws=300, seed=7)
    np.testing.assert_allclose(sparse.null_rows, dense.null_rows, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(sparse.null_uniform, dense.null_uniform)


def test_rotation_ignores_null_eigenvalues_of_rank_deficient_maps():
    """Few distinct tokens (< d): the map has exactly-zero eigenvalues whose angle is noise."""
    rng = np.random.default_rng(2)
    tokens = rng.normal(size=(4, 8)) * 3  # 4 distinct "embeddings" in d = 8: rank 3 after centring
    x_in = tokens[rng.integers(0, 4, 2000)]
    x_l = x_in @ _rotation(8, np.radians(50))
    prof = rotation_profile(ResidualStats.from_arrays(x_in, [x_in, x_l])).set_index(["layer", "target"])
    assert prof.loc[(1, "input"), "n_eigenvalues"] == 3
    assert prof.loc[(0, "input"), "angle_deg"] == pytest.approx(0, abs=0.5)
    # numerically-zero eigenvalues with a large argument must not move the median
    coef = np.zeros((8, 8))
    coef[:2, :2] = _rotation(2, np.radians(30))
    coef[2:, 2:] = 1e-13 * _rotation(6, np.radians(150))
    assert median_rotation_deg(coef) == pytest.approx(30)
    assert median_rotation_deg(coef, rel_tol=0) == pytest.approx(150)


def _text_model(folder):
    """A tiny Llama with the demo's 6-letter tokenizer saved beside it (a text corpus is tokenised with it)."""
    from subnetviz.demo.tokenizer import build_tokenizer

    tok = build_tokenizer(6)
    bigram_model("llama", vocab=len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok


def test_text_corpus_with_the_models_tokenizer(tmp_path, monkeypatch):
    from subnetviz.bigram.job import prepare

    tok = _text_model(tmp_path / "m")
    text = tmp_path / "corpus.txt"
    text.write_text("abcabd\n" * 50)
    net, train, evalc, table = prepare(
        {"model": str(tmp_path / "m"), "corpus": str(text), "seq_len": 8, "eval_sequences": 5}
    )
    assert table.vocab_size == len(tok) and train.ids.shape[1] == 8 and len(evalc.ids) == 5
    a, b, c = tok.convert_tokens_to_ids(["a", "b", "c"])
    rows = table.dense_rows(np.array([a, b]))
    assert rows[0, b] == pytest.approx(1.0)  # "a" is always followed by "b"
    assert rows[1, c] == pytest.approx(0.5, abs=0.05)  # "b" -> "c" or "d"
    (tmp_path / "blank.txt").write_text("")
    with pytest.raises(ConfigError, match="tokenizes to 0"):
        prepare({"model": str(tmp_path / "m"), "corpus": str(tmp_path / "blank.txt")})
    import datasets  # a saved dataset folder counts the same bigrams as the text file

    datasets.Dataset.from_dict({"text": ["abcabd\n"] * 50}).save_to_disk(str(tmp_path / "ds"))
    _, _, _, t2 = prepare(
        {"model": str(tmp_path / "m"), "corpus": str(tmp_path / "ds"), "seq_len": 8, "eval_sequences": 5}
    )
    np.testing.assert_allclose(t2.dense_rows(np.array([a, b])), rows, atol=0.05)
    with pytest.raises(ConfigError, match="no column"):
        corpus_from_dataset(str(tmp_path / "ds"), tok, text_field="body")


def test_a_padded_output_vocabulary_is_cut_to_the_tokenizer_s(tmp_path):
    """Pythia pads its output to 50304 rows for a 50277-token tokenizer, and the paper cuts the logits to the
    tokenizer's; the table of a text corpus had the model's padded size, so every surprisal, CE and KL took its
    softmax over the padding rows too. Scored here against a float64 NumPy softmax over the first V logits."""
    from subnetviz.bigram.evaluate import score_tokens
    from subnetviz.bigram.job import prepare
    from subnetviz.demo.tokenizer import build_tokenizer

    tok = build_tokenizer(6)
    net = bigram_model("llama", vocab=len(tok) + 10)  # 10 padding rows
    with torch.no_grad():
        net.get_output_embeddings().weight[len(tok) :] *= 8.0  # loud padding logits
    net.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    text = tmp_path / "corpus.txt"
    text.write_text("abcabd\n" * 50)
    model, _, evalc, table = prepare({"model": str(tmp_path / "m"), "corpus": str(text), "seq_len": 8})
    assert table.vocab_size == len(tok)
    got = score_tokens(model, evalc, table).surprisal_bits
    with torch.no_grad():
        logits = model(evalc.ids).logits.double().numpy()[:, :-1, : len(tok)]
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    nxt = evalc.ids[:, 1:].numpy()
    want = -np.take_along_axis(logp, nxt[..., None], -1)[..., 0] / np.log(2)
    np.testing.assert_allclose(np.sort(np.asarray(got).ravel()), np.sort(want.ravel()), rtol=1e-5)


def test_a_token_id_equal_to_the_vocabulary_size_is_refused():
    """Row V of a table is its start-of-sequence context, never a token: an id V was let through (> not >=)."""
    t = count_bigrams(np.array([list(range(10))] * 3), 10)
    t.check_ids(torch.tensor([[3, 9, 2]]))
    with pytest.raises(ConfigError, match="token id 10 outside"):
        t.check_ids(torch.tensor([[3, 10, 2]]))


def test_a_small_text_corpus_keeps_most_of_itself_to_train_on(tmp_path):
    """A 400-line text cut into 119 sequences held out 118 (the default 200 held-out sequences): the mask was
    trained, and the bigram table counted, on one sequence, and a one-sequence corpus was evaluated on its
    training text. At most a fifth is held out now; fewer than MIN_SEQUENCES sequences are refused."""
    from subnetviz.bigram.job import prepare
    from subnetviz.bigram.stats import EVAL_SHARE, MIN_SEQUENCES

    _text_model(tmp_path / "m")
    text = tmp_path / "corpus.txt"
    text.write_text("abcabd\n" * 60)
    _, train, evalc, _ = prepare({"model": str(tmp_path / "m"), "corpus": str(text), "seq_len": 8})
    n = len(train.ids) + len(evalc.ids)  # the default asks 200 held out, more than there are
    assert n > 40 and len(evalc.ids) == int(n * EVAL_SHARE) and len(train.ids) == n - int(n * EVAL_SHARE)
    text.write_text("abcabd\n" * 2)
    with pytest.raises(ConfigError, match=rf"sequence\(s\) of 8 tokens once tokenised; at least {MIN_SEQUENCES}"):
        prepare({"model": str(tmp_path / "m"), "corpus": str(text), "seq_len": 8})


@pytest.mark.parametrize("kind", ["gpt_neox", "llama"])
def test_training_runs_on_every_architecture(kind, chain):
    _, table = chain
    model = bigram_model(kind)
    res = train_bigram_mask(
        model, table.sample(64, 16, seed=0), table, preset_config("fast", max_steps=5), device="cpu"
    )
    assert res.steps == 5 and set(res.mask_set.masks) == set(maskable_names(model))
    opt = train_bigram_mask(
        model, table.sample(64, 16, seed=0), "optimal", preset_config("fast", max_steps=3), device="cpu"
    )
    assert opt.mask_set.metadata["target"] == "optimal" and len(opt.curve) == 3


def test_loss_stability_rule():
    from subnetviz.bigram.train import loss_is_stable

    flat = np.full(300, 2.0)
    assert loss_is_stable(flat)
    early = flat.copy()
    early[50] = 3.0  # a spike long before the end: recovered
    assert loss_is_stable(early)
    late = flat.copy()
    late[250] = 2.3  # +0.3 over the previous mean, within the last 100 steps
    assert not loss_is_stable(late)
    ratio = np.full(300, 0.1)
    ratio[290] = 0.2  # 2x the mean (relative rule), although only +0.1
    assert not loss_is_stable(ratio)
