"""Fixes from review bigram6, without the page (the page's part: tests/app/test_bigram6_fixes_app.py).

2. A GPT-2 or GPT-NeoX folder without tokenizer files: transformers built an empty tokenizer (1 or 2 tokens) instead
   of raising, and the text corpus was blamed ("tokenizes to 0 tokens … is it empty?"), on the page and in a queued
   job. The folder is refused first, in one line naming it; a job for a text or dataset corpus is not queued.
4. ``train --config`` on a bigram-mask run's own config.json said "unknown field(s) ['model', 'corpus', …]" and
   never that ``train`` runs TRL training configs only.
Cosmetic: the Δ bits chart's setting names ran into one another at 30° in a chart half the page wide at 1024 px.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from subnetviz.errors import CheckpointError, ConfigError
from tests.browser import NEEDS_CHROMIUM
from tests.models import char_tokenizer, save_model, tiny_model

CORPUS = "0+1=1\n2+3=5\n4+4=8\n" * 40


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """family -> a tiny model saved with its tokenizer, and family + "_notok" -> the same without one (config.json
    and model.safetensors only); "corpus" -> a text file, "ds" -> a saved dataset folder of it."""
    root = tmp_path_factory.mktemp("bigram6")
    out = {}
    for family in ("gpt2", "gpt_neox"):
        out[family] = save_model(
            tiny_model(family, vocab=16, positions=32), root / family, dtype=torch.float32, tokenizer=char_tokenizer()
        )
        bare = root / f"{family}_notok"
        bare.mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy(out[family] / name, bare / name)
        out[f"{family}_notok"] = bare
    out["corpus"] = root / "corpus.txt"
    out["corpus"].write_text(CORPUS)
    from datasets import Dataset

    out["ds"] = root / "ds"
    Dataset.from_dict({"text": CORPUS.splitlines()}).save_to_disk(str(out["ds"]))
    return out


# --- 2. no tokenizer files ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_a_folder_without_tokenizer_files_is_refused_before_an_empty_tokenizer_is_built(folders, family):
    from subnetviz.checkpoints.models import load_tokenizer

    bare = folders[f"{family}_notok"]
    with pytest.raises(CheckpointError) as exc:
        load_tokenizer(str(bare))
    said = str(exc.value)
    assert said.startswith(f"{bare}: its tokenizer cannot be loaded (no tokenizer file there (none of tokenizer.json")
    assert "\n" not in said
    assert len(load_tokenizer(str(folders[family]))) == len(char_tokenizer())  # the model with its tokenizer loads


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_the_job_and_the_page_say_the_tokenizer_not_the_corpus(folders, family):
    """prepare() is what the page's analysis and the job both run: it said the corpus tokenized to 0 tokens."""
    from subnetviz.bigram.job import prepare

    bare = folders[f"{family}_notok"]
    with pytest.raises(CheckpointError, match="no tokenizer file there") as exc:
        prepare({"model": str(bare), "corpus": str(folders["corpus"]), "seq_len": 8})
    assert "tokenizes to 0 tokens" not in str(exc.value)


@pytest.mark.parametrize("corpus", ["corpus", "ds"])
@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_a_bigram_job_for_a_text_or_dataset_corpus_is_refused_before_it_is_queued(folders, family, corpus):
    from subnetviz.bigram.config import BigramJobConfig
    from subnetviz.jobs.kinds import validate_job_config

    bare = folders[f"{family}_notok"]
    cfg = BigramJobConfig(model=str(bare), corpus=str(folders[corpus]), device="cpu")
    with pytest.raises(ConfigError) as exc:
        cfg.validate()
    said = str(exc.value)
    assert said.startswith(f"{bare}: no tokenizer file there (none of tokenizer.json") and "\n" not in said
    assert str(folders[corpus]) in said and "tokenizer.save_pretrained" in said
    with pytest.raises(ConfigError, match="no tokenizer file there"):  # the runner's check before queueing
        validate_job_config(cfg.to_dict())
    BigramJobConfig(model=str(folders[family]), corpus=str(folders[corpus]), device="cpu").validate()  # has one


# --- 4. train --config on another job kind's config --------------------------------------------------------------
def _bigram_run_config(folders) -> dict:
    from subnetviz.bigram.config import BigramJobConfig

    return BigramJobConfig(model=str(folders["gpt2"]), corpus=str(folders["corpus"]), steps=5).to_dict()


def test_a_bigram_mask_config_is_refused_by_its_kind(folders):
    from subnetviz.training.config import TrainConfig

    with pytest.raises(ConfigError) as exc:
        TrainConfig.from_dict(_bigram_run_config(folders))
    said = str(exc.value)
    assert "kind 'bigram_mask'" in said and "Bigram subnetworks page" in said and "TRL training configs" in said
    assert "unknown field" not in said
    for kind in ("continual", "no-such-kind", 3):  # every other kind, by name
        with pytest.raises(ConfigError, match=f"kind '{kind}' is .*`train` runs TRL training configs"):
            TrainConfig.from_dict({"kind": kind, "algorithm": "sft"})
    with pytest.raises(ConfigError, match="missing required field"):  # the train kind (or none) reads on as before
        TrainConfig.from_dict({"kind": "train", "algorithm": "sft"})


def test_the_train_verb_names_the_kind(folders, tmp_path, capsys):
    from subnetviz.cli import main

    path = tmp_path / "config.json"
    path.write_text(json.dumps(_bigram_run_config(folders)))
    for extra in ([], ["--run-dir", str(tmp_path / "runs" / "r")]):  # (--run-dir set the train kind over it)
        assert main(["train", "--config", str(path), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: training config: kind 'bigram_mask' is a bigram-mask training job"), err
        assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "runs").exists()


# --- cosmetic: the Δ bits chart's setting names at 1024 px -------------------------------------------------------
HALF = 274  # px a chart half the main column wide takes at 1024 px with the sidebar open (tests/unit/test_walk6a)
TICKS = r"""() => Array.from(document.querySelectorAll('.xtick text')).map(t => {
  const b = t.getBoundingClientRect(); return {text: t.textContent, left: b.left, right: b.right, top: b.top,
  bottom: b.bottom}; })"""


def _tick_boxes(fig, width: int) -> list[dict]:
    """The x tick labels' boxes of ``fig`` drawn by plotly.js in Chromium in a div ``width`` px wide."""
    from tests.unit.test_walk6a_fixes import _drawn

    return _drawn([fig], width, probe=TICKS)


@NEEDS_CHROMIUM
def test_the_delta_bits_settings_do_not_run_into_one_another_at_1024_px():
    """The page's chart: the mask's lines under the title, as the Bigram page adds them (views/bigram.py)."""
    from subnetviz.figures import bigram as BG

    settings = ["bigram", "full", "subnetwork", "ablated", "random subnetwork", "random ablated", "empty"]
    summary = pd.DataFrame(
        {
            "setting": settings,
            "r_mean": [1, 0.749, 0.988, 0.695, 0.630, 0.748, 0.630],
            "delta_bits": [0.50, 0.0, 0.53, 0.0166, 1.79, -0.0004, 1.79],
            "bits_sd": [np.nan, np.nan, np.nan, np.nan, 0.0004, 0.0003, np.nan],
        }
    )
    fig = BG.delta_bits_bars(summary)
    BG.with_setting(
        fig, "bigram mask λ=10 · 20261206-192908-bigram_mask-af5699", "", "model base · corpus zoo", wrap=40
    )
    boxes = _tick_boxes(fig, HALF)
    assert sorted(b["text"] for b in boxes) == sorted(s for s in settings if s != "full")
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            w = min(a["right"], b["right"]) - max(a["left"], b["left"])
            h = min(a["bottom"], b["bottom"]) - max(a["top"], b["top"])
            assert w <= 0.5 or h <= 0.5, (a, b)  # (half a pixel of anti-aliasing)
