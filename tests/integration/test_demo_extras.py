"""The demo zoo's text source (second order) and what the build adds beyond its models: the members'
training logs as registry runs, the cached Training comparison, the background jobs.

References are independent of the code under test: plug-in entropies and trigram counts of long
samples (float64 NumPy), the raw bf16 bytes of the saved models, the JSON lines the build's
training wrote.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from subnetviz.demo import PRESETS
from subnetviz.demo.corpus import make_chain, sample_chain
from subnetviz.demo.tokenizer import chain_letters

# ------------------------------------------------------------------------------ second-order source


def _counts(states: np.ndarray, k: int):
    """(trigram, bigram) count arrays of state sequences (N, T)."""
    a, b, c = states[:, :-2].ravel(), states[:, 1:-1].ravel(), states[:, 2:].ravel()
    tri = np.zeros((k, k, k))
    np.add.at(tri, (a, b, c), 1)
    bi = np.zeros((k, k))
    np.add.at(bi, (states[:, :-1].ravel(), states[:, 1:].ravel()), 1)
    return tri, bi


def _plugin_entropy(counts: np.ndarray) -> float:
    """H(last axis | other axes) in nats from counts, plug-in estimate."""
    flat = counts.reshape(-1, counts.shape[-1])
    n = flat.sum(axis=1, keepdims=True)
    p = np.divide(flat, n, out=np.zeros_like(flat), where=n > 0)
    logp = np.log(np.where(p > 0, p, 1.0))
    return float(-(flat * logp).sum() / flat.sum())


def test_second_order_source_depends_on_the_previous_two_letters():
    s = PRESETS["demo"]
    k = s.n_letters
    c = make_chain(
        chain_letters(k), concentration=s.concentration, seed=s.chain_seed, order=2, concentration2=s.concentration2
    )
    assert c.order == 2 and c.transition2.shape == (k, k, k)
    np.testing.assert_allclose(c.transition2.sum(axis=-1), 1.0, atol=1e-12)
    # The pair law is stationary: pairs (a, b) -> (b, c) keep it (checked by one step, float64).
    np.testing.assert_allclose(np.einsum("ab,abc->bc", c.pair_stationary, c.transition2), c.pair_stationary, atol=1e-12)
    states = sample_chain(c, 40_000, 24, np.random.default_rng(7))
    tri, bi = _counts(states, k)
    # The text's trigram frequencies follow transition2, its bigram frequencies the saved marginal.
    n2 = tri.sum(axis=-1, keepdims=True)
    se2 = np.sqrt(c.transition2 * (1 - c.transition2) / np.maximum(n2, 1))
    seen = n2[..., 0] > 200
    assert seen.sum() > k * k // 2
    assert np.all((np.abs(tri / np.maximum(n2, 1) - c.transition2) <= 6 * se2 + 2e-3)[seen])
    n1 = bi.sum(axis=1, keepdims=True)
    assert np.all(np.abs(bi / n1 - c.transition) <= 6 * np.sqrt(c.transition * (1 - c.transition) / n1) + 1e-3)
    # Entropy rates measured on the text: two letters back say much more than one.
    h2, h1 = _plugin_entropy(tri), _plugin_entropy(bi)
    assert h2 == pytest.approx(c.entropy_rate, abs=0.02)
    assert h1 == pytest.approx(c.bigram_entropy_rate, abs=0.02)
    assert h1 - h2 > 0.3  # a bigram model is far from the source (1.89 vs 1.41 nats planted)
    unigram = np.bincount(states.ravel(), minlength=k) / states.size
    assert -(unigram * np.log(unigram)).sum() - h1 > 0.3  # and the bigram law is still peaked


def test_first_order_chain_is_unchanged_by_the_order_option():
    a = make_chain(chain_letters(6), concentration=0.3, seed=3)
    b = make_chain(chain_letters(6), concentration=0.3, seed=3, order=1)
    np.testing.assert_array_equal(a.transition, b.transition)
    assert a.order == 1 and a.entropy_rate == a.bigram_entropy_rate


@pytest.mark.slow
def test_bigram_job_trains_on_the_zoo_text_not_on_the_bigram_table(micro_zoo):
    from subnetviz.bigram.job import sample_zoo_source

    z = np.load(micro_zoo.bigram_path)
    ids = z["token_ids"]
    assert int(z["order"]) == 2
    corpus = sample_zoo_source(micro_zoo.bigram_path, 20_000, 12, seed=1)
    index = np.full(int(ids.max()) + 1, -1)
    index[ids] = np.arange(len(ids))
    states = index[corpus.ids.numpy()]
    assert (states >= 0).all()
    tri, bi = _counts(states, len(ids))
    t2 = z["transition2"]
    n2 = tri.sum(axis=-1, keepdims=True)
    seen = n2[..., 0] > 300
    se = np.sqrt(t2 * (1 - t2) / np.maximum(n2, 1))
    assert seen.any() and np.all((np.abs(tri / np.maximum(n2, 1) - t2) <= 6 * se + 2e-3)[seen])
    n1 = bi.sum(axis=1, keepdims=True)
    p = z["transition"]
    assert np.all(np.abs(bi / n1 - p) <= 6 * np.sqrt(p * (1 - p) / n1) + 1e-3)


# ------------------------------------------------------------------------ registry runs and caches


@pytest.fixture(scope="module")
def zoo_with_extras(micro_zoo, tmp_path_factory):
    """A copy of the micro zoo finished with extras (no background jobs) into its own runs folder."""
    from subnetviz.demo.build import build_zoo

    tmp = tmp_path_factory.mktemp("zoo-extras")
    shutil.copytree(micro_zoo.root, tmp / "zoo")
    zoo = build_zoo(tmp / "zoo", preset="micro", extras=True, runs_root=tmp / "runs", background=False)
    return zoo, tmp / "runs"


@pytest.mark.slow
def test_members_training_logs_are_succeeded_train_runs(zoo_with_extras):
    from subnetviz.demo import MEMBERS
    from subnetviz.jobs.runner import JobRunner

    zoo, runs = zoo_with_extras
    ext = zoo.manifest.extras
    assert ext is not None and ext.runs_root == str(runs) and ext.jobs == {}
    assert set(ext.member_runs) == {m.id for m in MEMBERS}
    r = JobRunner(runs, max_concurrent=1, gpus=[])
    steps = PRESETS["micro"].ft_steps
    for recipe in MEMBERS:
        rec = r.get(ext.member_runs[recipe.id])
        assert (rec.kind, rec.status) == ("train", "succeeded")
        assert rec.config["algorithm"] == recipe.algorithm and rec.config["steps"] == steps
        assert (rec.outputs / "model").resolve() == zoo.member_path(recipe.id).resolve()
        assert json.loads((rec.outputs / "model" / "train_summary.json").read_text())["steps_done"] == steps
        # The curve is what the build's training logged, step by step (compare the JSON lines themselves).
        lines = [json.loads(x) for x in (zoo.root / "logs" / recipe.id / "metrics.jsonl").read_text().splitlines()]
        m = r.metrics(rec.id)
        assert list(m["step"]) == [x["step"] for x in lines] == list(range(1, steps + 1))
        assert list(m["loss"]) == [x["loss"] for x in lines]
        if recipe.algorithm == "grpo":
            assert "reward" in m and m["reward"].between(0, 1).all()
        assert rec.last_metrics["loss"] == lines[-1]["loss"]
    sub = r.get(ext.member_runs["grpo-sub"]).config
    assert sub["mask"] and sub["mask"].endswith("grpo-seed0.safetensors")


@pytest.mark.slow
def test_extras_are_made_once_and_the_manifest_left_alone_on_reuse(zoo_with_extras):
    from subnetviz.demo.build import build_zoo
    from subnetviz.jobs.runner import JobRunner

    zoo, runs = zoo_with_extras
    before = (zoo.root / "manifest.json").read_bytes()
    n = len(JobRunner(runs, max_concurrent=1, gpus=[]).list_runs())
    again = build_zoo(zoo.root, preset="micro", extras=True, runs_root=runs, background=False)
    assert again.manifest.extras == zoo.manifest.extras
    assert (zoo.root / "manifest.json").read_bytes() == before
    assert len(JobRunner(runs, max_concurrent=1, gpus=[]).list_runs()) == n


@pytest.mark.slow
def test_cached_comparison_matches_the_raw_bits(zoo_with_extras, tmp_path):
    from subnetviz.cache import entry
    from subnetviz.demo.comparison import KIND, cached_compare_runs
    from tests.zoo_fixtures import read_bits

    zoo, _ = zoo_with_extras
    full, sub = zoo.member_path("grpo-s0"), zoo.member_path("grpo-sub")
    assert entry(KIND, zoo.manifest.extras.comparison["key"]).ready  # the build filled the cache
    res = cached_compare_runs(full, sub, zoo.base)
    a, b = read_bits(full), read_bits(sub)
    same = sum(int((a[k] == b[k]).sum()) for k in a)
    assert res.share_identical == pytest.approx(same / sum(v.size for v in a.values()), abs=1e-12)
    fresh = cached_compare_runs(full, sub, zoo.base, cache_root=tmp_path)  # computed, not read
    assert fresh.to_frame().equals(res.to_frame())
    assert fresh.ulp_histogram.equals(res.ulp_histogram) and fresh.vs_base.equals(res.vs_base)


@pytest.mark.slow
def test_background_jobs_are_queued_once_with_estimates(zoo_with_extras, tmp_path):
    from subnetviz.demo.extras import job_configs, pending_jobs, start_background_jobs
    from subnetviz.jobs.kinds import validate_job_config
    from subnetviz.jobs.runner import JobRunner

    zoo, _ = zoo_with_extras
    configs = job_configs(zoo)
    assert configs["bigram"]["target"] == "bigram" and configs["optimal"]["target"] == "optimal"
    assert configs["bigram"]["lambda"] == 10.0 and configs["bigram"]["preset"] == "fast"
    assert configs["continual"]["methods"] == ["finetune", "supsup", "ssnet", "exssnet"]
    assert (configs["continual"]["tasks"], configs["continual"]["density"]) == (5, [0.05])
    # The drivers grid trains on this zoo's base (a micro zoo gets the micro grid), one seed.
    assert configs["drivers"]["kind"] == "drivers" and configs["drivers"]["zoo"] == str(zoo.root)
    assert (configs["drivers"]["preset"], configs["drivers"]["seeds"]) == ("micro", 1)
    for cfg in configs.values():
        validate_job_config(cfg)
    # A stand-in worker that only sleeps: the jobs stay queued / running while we look.
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    r = JobRunner(tmp_path / "runs", max_concurrent=1, command=sleeper, gpus=[], cancel_grace_s=1.0)
    ids: dict[str, str] = {}
    try:
        ids = start_background_jobs(zoo, r)
        assert start_background_jobs(zoo, r) == ids and len(r.list_runs()) == 4
        statuses = sorted(r.get(i).status for i in ids.values())
        assert statuses == ["queued", "queued", "queued", "running"]
        from dataclasses import replace

        z = replace(zoo, manifest=replace(zoo.manifest, extras=replace(zoo.manifest.extras, jobs=ids)))
        pend = pending_jobs(z, r)
        assert [p.run_id for p in pend] == [ids["bigram"], ids["optimal"], ids["continual"], ids["drivers"]]
        etas = [p.eta_s for p in pend]
        assert etas == sorted(etas) and etas[0] > 0
    finally:
        for i in ids.values():
            if not r.get(i).finished:
                r.cancel(i)


# ------------------------------------------------------------------------------------------ pages


@pytest.fixture(scope="module")
def home_with_pending_jobs(micro_zoo, tmp_path_factory):
    """An app home whose zoo has extras and whose background jobs are queued / running (stand-in
    workers that only sleep), the environment pointed at it for this module's AppTests."""
    import os
    from dataclasses import replace

    from subnetviz.demo.build import build_zoo
    from subnetviz.demo.extras import start_background_jobs
    from subnetviz.demo.stages import write_json
    from subnetviz.jobs.runner import JobRunner

    home = tmp_path_factory.mktemp("home-pending").resolve()
    shutil.copytree(micro_zoo.root, home / "zoo")
    zoo = build_zoo(home / "zoo", preset="micro", extras=True, runs_root=home / "runs", background=False)
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    r = JobRunner(home / "runs", max_concurrent=1, command=sleeper, gpus=[], cancel_grace_s=1.0)
    ids = start_background_jobs(zoo, r)
    man = replace(zoo.manifest, extras=replace(zoo.manifest.extras, jobs=ids))
    write_json(home / "zoo" / "manifest.json", man.to_dict())
    saved = {k: os.environ.get(k) for k in ("SUBNETVIZ_HOME", "SUBNETVIZ_ROOTS")}
    os.environ["SUBNETVIZ_HOME"] = str(home)
    os.environ["SUBNETVIZ_ROOTS"] = str(home)
    yield home, ids
    for i in ids.values():
        if not r.get(i).finished:
            r.cancel(i)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _open(name: str, **query):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=180)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    at.switch_page(f"views/{name}.py").run()
    assert not at.exception, at.exception
    return at


@pytest.mark.slow
def test_pages_say_what_is_being_built_and_show_the_members_runs(home_with_pending_jobs):
    home, ids = home_with_pending_jobs
    bigram = " ".join(e.value for e in _open("bigram").info)
    assert "bigram subnetwork mask of the base" in bigram and "ready in ~" in bigram
    continual = " ".join(e.value for e in _open("continual").info)
    assert "continual-learning demo" in continual and "queued" in continual
    drivers = " ".join(e.value for e in _open("drivers").info)
    assert "training grid of What drives sparsity" in drivers and "queued" in drivers
    assert "No finished drivers run yet" not in drivers  # it is on its way: no call to launch one
    at = _open("training", tr_view="Runs")
    names = " ".join(str(x) for x in at.dataframe[0].value["name"])
    assert all(f": {m} (" in names for m in ("grpo-s0", "grpo-sub", "dpo", "sft"))


@pytest.mark.slow
def test_a_runs_card_shows_the_outside_the_mask_check_only_when_there_is_a_mask(home_with_pending_jobs):
    from subnetviz.demo import load_zoo

    home, _ = home_with_pending_jobs
    runs = load_zoo(home / "zoo").manifest.extras.member_runs
    sub = _open("training", tr_view="Runs", tr_run=runs["grpo-sub"])
    assert [s.value for s in sub.success if s.value.startswith("Outside the mask: bit-identical")], sub.success
    full = _open("training", tr_view="Runs", tr_run=runs["sft"])
    assert not [s.value for s in full.success if "Outside the mask" in s.value]  # nothing lies outside
    assert any(c.value.startswith("Full finetune:") for c in full.caption)
    # The member trained without an eval set: its card shows the held-out accuracy the build measured.
    acc = load_zoo(home / "zoo").manifest.member("sft").accuracy
    metrics = {m.label: m.value for m in full.metric}
    # named by the set it is on (A_eval.jsonl: sft's), in a caption (in the label it was cut at 1024 px)
    assert metrics["accuracy"] == f"{100 * acc:.1f} %"
    assert "Accuracy on A_eval.jsonl." in [c.value.replace("\\", "") for c in full.caption]
