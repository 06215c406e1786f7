"""Bigram review 7, fix 1: a bigram-mask job's ``hf:NAME[:SPLIT]`` corpus is looked up in the local datasets cache
when the config is validated. The Train form (and ``train --config``) queued a mistyped name, which failed only when
the run started, minutes later, behind the queue. Now validation refuses it in one line, naming the data set and
saying it is not in the local cache (nothing is downloaded); a data set the cache holds passes. The lookup is the one
the run loads with (:func:`~subnetviz.bigram.stats.check_cached_hub_dataset`, also inside ``corpus_from_dataset``).
Also: a ``bigram`` table that does not exist, beside an ``hf:`` corpus, was not checked."""

from __future__ import annotations

import pytest
import torch

from subnetviz.bigram.config import BigramJobConfig
from subnetviz.errors import ConfigError
from tests.models import make_tiny_llama
from tests.unit.test_cache_keys_review import _cached_hf_dataset

TEXTS = ["12+30=42", "7+8=15"] * 20


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """A datasets cache of its own holding the hub data set ``org/toy`` (split train), as ``load_dataset`` leaves
    one there; built locally from a JSONL file, nothing asked of the hub."""
    import datasets

    cache, build = tmp_path / "hf-datasets", tmp_path / "build"
    build.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    _cached_hf_dataset(cache, build, TEXTS, "aaa")
    return cache


@pytest.fixture
def model(tmp_path):
    return str(make_tiny_llama(tmp_path / "model", dtype=torch.float32))


def _config(model: str, corpus: str, **more) -> BigramJobConfig:
    return BigramJobConfig(model=model, corpus=corpus, device="cpu", **more)


def test_an_hf_corpus_not_in_the_local_cache_is_refused_when_validated(hf_cache, model):
    for corpus, name in (("hf:nonexistent_ds", "nonexistent_ds"), ("hf:org/toyy:train", "org/toyy")):
        with pytest.raises(ConfigError) as exc:
            _config(model, corpus).validate()
        said = str(exc.value)
        assert said.startswith(f"{corpus}: not a local dataset: {name} is not in the local Hugging Face datasets cache")
        assert "nothing is downloaded" in said and "\n" not in said, said


def test_an_hf_corpus_in_the_local_cache_passes(hf_cache, model):
    _config(model, "hf:org/toy").validate()
    _config(model, "hf:org/toy:train").validate()
    with pytest.raises(ConfigError, match=r"^hf:org/toy:validation: .*org/toy has no split 'validation'.*\['train'\]"):
        _config(model, "hf:org/toy:validation").validate()  # (the run read split "validation": it failed then too)


def test_the_job_is_refused_before_it_is_queued(hf_cache, model, tmp_path):
    """The Train form's path (``JobRunner.submit``, through the kind's validator): no run is queued."""
    from subnetviz.jobs.runner import JobRunner

    runner = JobRunner(root=tmp_path / "runs")
    cfg = _config(model, "hf:nonexistent_ds").to_dict()
    with pytest.raises(ConfigError, match=r"^hf:nonexistent_ds: not a local dataset"):
        runner.submit(cfg, name="typo")
    assert not [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert runner.submit(_config(model, "hf:org/toy").to_dict(), name="cached")  # (the premise: one that is cached)


def test_the_run_reads_the_cached_data_set_the_check_passed(hf_cache, model):
    """The check and the load agree: the corpus the run builds from ``hf:org/toy`` is the cached rows' tokens."""
    from subnetviz.bigram.stats import corpus_from_dataset
    from subnetviz.checkpoints.models import load_tokenizer

    tok = load_tokenizer(model)
    got = corpus_from_dataset("hf:org/toy", tok, seq_len=4).ids.reshape(-1).tolist()
    whole = [i for t in TEXTS for i in tok(t, add_special_tokens=False)["input_ids"]]
    assert got == whole[: len(whole) // 4 * 4]


def test_a_missing_bigram_table_beside_an_hf_corpus_is_refused(hf_cache, model, tmp_path):
    with pytest.raises(ConfigError, match="bigram table .*does not exist"):
        _config(model, "hf:org/toy", bigram=str(tmp_path / "nosuch.npz")).validate()
