"""Cache keys review fixes: every cached result is keyed by what it reads. The Bigram page's analysis by the model
folder's config and tokenizer, an ``hf:`` corpus by its cached files and a saved DatasetDict by its splits' files;
the Training comparison's held-out accuracy by each model's config and tokenizer; the behaviour, bigram, runs and
continual results by the code that computes them; and the app's checkpoint headers by every file the checkpoint
reads (an index json's shards, the config beside a weights file)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.bigram_fixtures import planted_transition
from tests.models import make_tiny_llama

REPO = Path(__file__).resolve().parents[2]


def _edit_json(path: Path, **edits) -> None:
    data = json.loads(path.read_text())
    data.update(edits)
    path.write_text(json.dumps(data))


def _tiny_mask(model: Path, path: Path) -> Path:
    from subnetviz.masks import MaskSet, save_mask_set

    g = torch.Generator().manual_seed(0)
    up = torch.rand(64, 32, generator=g) < 0.2  # the first MLP's up projection of make_tiny_llama (hidden 32)
    save_mask_set(path, MaskSet({"model.layers.0.mlp.up_proj.weight": up}))
    return path


@pytest.fixture
def bigram_home(tmp_path, monkeypatch):
    """A home whose zoo holds a planted bigram chain over the 15 tokens of make_tiny_llama's tokenizer, the model
    (float32) and a mask of its first up projection."""
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    from subnetviz.config import zoo_dir

    zoo_dir().mkdir(parents=True)
    np.savez(zoo_dir() / "bigram.npz", transition=planted_transition(15), token_ids=np.arange(15))
    model = make_tiny_llama(tmp_path / "model", dtype=torch.float32)
    return model, _tiny_mask(model, tmp_path / "mask.safetensors")


# --- 2. the Bigram page's analysis: the model folder's config and tokenizer, an hf: corpus's files ---------------
def test_the_bigram_cache_follows_the_model_s_config_and_tokenizer(bigram_home, tmp_path):
    from subnetviz.bigram.job import analyse_mask_file
    from subnetviz.bigram.store import PAGE_OPTIONS, cached_mask_analysis

    model, mask = bigram_home
    cache = tmp_path / "cache"
    first, gens = cached_mask_analysis(str(model), str(mask), cache_root=cache)
    assert gens is not None and len(gens) == 6  # full and ablated, three seeds each: the folder has a tokenizer

    _edit_json(model / "config.json", rms_norm_eps=1.0, hidden_act="relu")  # another forward pass, same weights
    again, _ = cached_mask_analysis(str(model), str(mask), cache_root=cache)
    fresh, _ = analyse_mask_file(str(model), str(mask), **PAGE_OPTIONS)
    assert again.headline["r_full"] == pytest.approx(fresh.headline["r_full"])
    assert again.headline["r_full"] != pytest.approx(first.headline["r_full"])

    for name in ("tokenizer.json", "tokenizer_config.json"):  # no tokenizer: the analysis has no generations
        (model / name).unlink()
    _, gens = cached_mask_analysis(str(model), str(mask), cache_root=cache)
    assert gens is None  # (was: the six rows generated with the tokenizer now gone)
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 3


def _cached_hf_dataset(cache: Path, build: Path, texts: list[str], snapshot: str) -> None:
    """``texts`` as the datasets cache holds a hub dataset ``org/toy`` (config default, version 0.0.0, hash
    ``snapshot``): what ``load_dataset('hf://datasets/org/toy')`` reads offline, the newest snapshot first."""
    import datasets

    src = build / f"{snapshot}.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    ds = datasets.load_dataset("json", data_files=str(src), split="train", cache_dir=str(build / snapshot))
    built = Path(ds.cache_files[0]["filename"]).parent
    folder = cache / "org___toy" / "default" / "0.0.0" / snapshot
    folder.mkdir(parents=True)
    (folder / "toy-train.arrow").write_bytes((built / "json-train.arrow").read_bytes())
    info = json.loads((built / "dataset_info.json").read_text())
    (folder / "dataset_info.json").write_text(json.dumps({**info, "config_name": "default", "dataset_name": "toy"}))


def test_an_hf_corpus_is_keyed_by_its_cached_files_not_its_name(bigram_home, tmp_path, monkeypatch):
    import datasets

    from subnetviz.bigram.stats import corpus_from_dataset
    from subnetviz.bigram.store import analysis_key

    model, mask = bigram_home
    cache, build = tmp_path / "datasets", tmp_path / "build"
    build.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    _cached_hf_dataset(cache, build, ["12+30=42", "7+8=15"] * 20, "aaa")
    key = analysis_key(str(model), str(mask), corpus="hf:org/toy")
    old = corpus_from_dataset("hf:org/toy", model, seq_len=8).ids
    assert analysis_key(str(model), str(mask), corpus="hf:org/toy") == key  # reading it changes nothing keyed

    time.sleep(0.01)  # a newer snapshot under the same name, which load_dataset now reads
    _cached_hf_dataset(cache, build, ["99+1=100", "3+4=7"] * 20, "bbb")
    new = corpus_from_dataset("hf:org/toy", model, seq_len=8).ids
    assert not torch.equal(old[: len(new)], new[: len(old)])  # another text is read...
    assert analysis_key(str(model), str(mask), corpus="hf:org/toy") != key  # ...so another key


def test_a_saved_dataset_dict_is_keyed_by_its_splits_files(bigram_home, tmp_path):
    import shutil

    import datasets

    from subnetviz.bigram.stats import corpus_from_dataset
    from subnetviz.bigram.store import analysis_key

    model, mask = bigram_home
    for name, texts in (("corpus", ["12+30=42", "7+8=15"]), ("other", ["99+1=100", "3+4=7"])):
        datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts * 20})}).save_to_disk(tmp_path / name)
    corpus = str(tmp_path / "corpus")
    key = analysis_key(str(model), str(mask), corpus=corpus)
    old = corpus_from_dataset(corpus, model, seq_len=8).ids
    (arrow,) = (tmp_path / "corpus" / "train").glob("*.arrow")  # the split's data rewritten, nothing else
    shutil.copyfile(next((tmp_path / "other" / "train").glob("*.arrow")), arrow)
    new = corpus_from_dataset(corpus, model, seq_len=8).ids
    assert not torch.equal(old[: len(new)], new[: len(old)])
    assert analysis_key(str(model), str(mask), corpus=corpus) != key


# --- 3. the Training page's held-out accuracy: each model's config and tokenizer ---------------------------------
def _planted_accuracy(model_dir, eval_jsonl, max_new_tokens=8, **_):
    """The accuracy a tokenizer gives, planted in its tokenizer_config.json (the real one decodes the answers)."""
    return json.loads((Path(model_dir) / "tokenizer_config.json").read_text())["planted_accuracy"]


@pytest.fixture
def twins(tmp_path, monkeypatch):
    import subnetviz.training.evaluate as evaluate

    monkeypatch.setattr(evaluate, "evaluate_accuracy", _planted_accuracy)
    models = [make_tiny_llama(tmp_path / name, seed=i) for i, name in enumerate(("full", "sub"))]
    for m in models:
        _edit_json(m / "tokenizer_config.json", planted_accuracy=0.25)
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    return *models, data


def test_the_comparison_s_accuracy_follows_a_model_s_tokenizer(twins, tmp_path):
    from subnetviz.demo.comparison import cached_compare_runs, comparison_key

    full, sub, data = twins
    cache = tmp_path / "cache"
    first = cached_compare_runs(full, sub, eval_data=data, cache_root=cache)
    assert dict(first.accuracy.itertuples(index=False)) == {"full": 0.25, "subnetwork": 0.25}
    weights_only = comparison_key(full, sub)

    _edit_json(sub / "tokenizer_config.json", planted_accuracy=0.75)  # same weights and config
    again = cached_compare_runs(full, sub, eval_data=data, cache_root=cache)
    assert dict(again.accuracy.itertuples(index=False)) == {"full": 0.25, "subnetwork": 0.75}
    assert comparison_key(full, sub) == weights_only  # the bitwise comparison reads no tokenizer: still cached


# --- 4. behaviour, bigram, runs and continual results: keyed by the code that computes them ---------------------
_KEYS = r"""
import json, sys
from pathlib import Path

code, work = Path(sys.argv[1]), Path(sys.argv[2])
import subnetviz
from subnetviz import version
from subnetviz.analysis.behavior import behavior_entry
from subnetviz.bigram.store import analysis_key
from subnetviz.demo.comparison import comparison_key
from subnetviz.supermask.config import ContinualConfig
from subnetviz.supermask.job import config_hash

assert Path(subnetviz.__file__).resolve().parent == (code / "subnetviz").resolve(), subnetviz.__file__
base, ft, prompts, mask = (str(work / n) for n in ("base", "ft", "p.jsonl", "mask.safetensors"))


def keys():
    version.code_fingerprint.cache_clear()  # (read once per process: an upgrade is a new process)
    cfg = {"base": base, "finetuned": [ft], "labels": ["ft"], "prompts": [prompts], "masks": {}, "curve": [],
           "limit": 4, "device": "cpu"}
    return {
        "behavior": behavior_entry(cfg, work / "cache")[0].key,
        "bigram": analysis_key(base, mask),
        "runs": comparison_key(ft, base, eval_data=prompts),
        "continual": config_hash(ContinualConfig(methods=("supsup",), tasks=2)),
    }


out = {"before": keys()}
for step, rel in json.loads(sys.argv[3]).items():
    path = code / "subnetviz" / rel
    path.write_text(path.read_text() + "\n# changed by an upgrade\n")
    out[step] = keys()
print(json.dumps(out))
"""


def test_results_are_keyed_by_the_code_that_computes_them(tmp_path):
    """Two code trees, the second an 'upgrade' editing one module at a time: each result's key changes with the
    modules it is computed by, and only with those (a figure's code computes no cached number)."""
    import shutil

    code, work = tmp_path / "code", tmp_path / "work"
    shutil.copytree(REPO / "subnetviz", code / "subnetviz", ignore=shutil.ignore_patterns("__pycache__"))
    work.mkdir()
    g = torch.Generator().manual_seed(0)
    sd = {"model.layers.0.mlp.up_proj.weight": torch.randn(8, 4, generator=g), "model.norm.weight": torch.ones(4)}
    for name, shift in (("base", 0.0), ("ft", 0.5)):
        (work / name).mkdir()
        save_file({k: v + shift for k, v in sd.items()}, str(work / name / "model.safetensors"))
        (work / name / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": False}))
    (work / "p.jsonl").write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    (work / "mask.safetensors").write_bytes(b"a mask")
    edits = {
        "revert": "analysis/revert.py",
        "bigram": "bigram/evaluate.py",
        "accuracy": "training/evaluate.py",
        "supermask": "supermask/methods.py",
        "figure": "figures/behavior.py",
    }
    env = {**os.environ, "PYTHONPATH": str(code), "SUBNETVIZ_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-c", _KEYS, str(code), str(work), json.dumps(edits)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    keys = json.loads(done.stdout.strip().splitlines()[-1])
    steps = ["before", *edits]
    changed = {
        step: {kind for kind in keys[step] if keys[step][kind] != keys[prev][kind]}
        for prev, step in zip(steps, steps[1:], strict=False)
    }
    assert changed == {
        "revert": {"behavior", "bigram", "runs"},  # reverts and the model readers are in all three
        "bigram": {"bigram"},
        "accuracy": {"runs"},
        "supermask": {"continual"},
        "figure": set(),
    }


# --- 5. the app's checkpoint headers: every file the checkpoint reads --------------------------------------------
def _sharded(folder: Path, dtypes: tuple[torch.dtype, torch.dtype], shards_only: bool = False) -> None:
    """Two shards: the embedding and head (64×16 each) in the first, the norm (16), a q projection (16×16) and an
    up projection (32×16) in the second, in ``dtypes``; their index and a config beside them (unless
    ``shards_only``: the shards rewritten in place, the index and config left as they are)."""
    g = torch.Generator().manual_seed(0)
    shards = {
        "model-00001-of-00002.safetensors": {
            "model.embed_tokens.weight": torch.randn(64, 16, generator=g),
            "lm_head.weight": torch.randn(64, 16, generator=g),
        },
        "model-00002-of-00002.safetensors": {
            "model.norm.weight": torch.ones(16),
            "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16, generator=g),
            "model.layers.0.mlp.up_proj.weight": torch.randn(32, 16, generator=g),
        },
    }
    folder.mkdir(exist_ok=True)
    for (file, tensors), dtype in zip(shards.items(), dtypes, strict=True):
        save_file({k: v.to(dtype) for k, v in tensors.items()}, str(folder / file))
    if shards_only:
        return
    weight_map = {k: file for file, tensors in shards.items() for k in tensors}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "tie_word_embeddings": False}
    (folder / "config.json").write_text(json.dumps(config))


def test_checkpoint_headers_follow_a_shard_rewritten_under_its_index(tmp_path):
    from subnetviz import ui

    folder = tmp_path / "ft"
    _sharded(folder, (torch.float32, torch.float32))
    index = str(folder / "model.safetensors.index.json")
    before = ui.checkpoint_info(index)
    assert before["dtypes"] == {"float32": 2 * 64 * 16 + 16 + 16 * 16 + 32 * 16}
    fp = ui.fingerprint(index)

    stamp = os.stat(index).st_mtime_ns
    _sharded(folder, (torch.float32, torch.bfloat16), shards_only=True)  # the second shard in bf16, in place
    assert os.stat(index).st_mtime_ns == stamp  # (the index, the path chosen, is not rewritten)
    after = ui.checkpoint_info(index)
    assert after["dtypes"] == {"float32": 2 * 64 * 16, "bfloat16": 16 + 16 * 16 + 32 * 16}
    assert after["fingerprint"] != before["fingerprint"]
    assert ui.fingerprint(index) != fp


def test_checkpoint_headers_of_a_weights_file_follow_the_config_beside_it(tmp_path):
    from subnetviz import ui

    folder = tmp_path / "ft"
    _sharded(folder, (torch.float32, torch.float32))
    shard = str(folder / "model-00001-of-00002.safetensors")
    assert ui.checkpoint_info(shard)["architecture"] == "LlamaForCausalLM"
    _edit_json(folder / "config.json", architectures=["MistralForCausalLM"], model_type="mistral")
    assert ui.checkpoint_info(shard)["architecture"] == "MistralForCausalLM"
