"""The training runs review, second pass (backend): a GRPO run on fewer prompts than one step takes, a mask that does
not fit the base (refused at submit, from headers), the base of the "Subnetwork vs full" comparison, the saved
weights a run's check read, the curves of a continual job and of a run that went NaN, and the colours past eight
series. Each planted case has its answer written out here (row counts, shapes, digests by hashlib, steps)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from subnetviz.errors import ConfigError, JobError, MaskError
from subnetviz.masks import MaskSet, save_mask_set
from subnetviz.training.config import TrainConfig
from tests.models import make_tiny_llama
from tests.training_fixtures import write_addition_data, write_half_mask

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs2")
    base = make_tiny_llama(root / "base", hidden=16, intermediate=32)
    return {
        "base": base,
        "other": make_tiny_llama(root / "other", hidden=32, intermediate=64),  # another width, same names
        "data": write_addition_data(root / "data", n=8),
        "mask": write_half_mask(root / "half.safetensors", base),
    }


def _rows(path: Path, n: int, folder: Path) -> Path:
    out = folder / f"{n}-rows.jsonl"
    out.write_text("".join(Path(path).read_text().splitlines(keepends=True)[:n]))
    return out


def _grpo(tiny, tmp_path, rows: int, **kw) -> TrainConfig:
    return TrainConfig(
        algorithm="grpo",
        base=str(tiny["base"]),
        data=str(_rows(tiny["data"]["grpo"], rows, tmp_path)),
        output_dir=str(tmp_path / "out"),
        max_completion_length=2,
        **kw,
    )


# --- D1: GRPO on fewer prompts than one step ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "batch", "gens", "procs", "need"),
    [(3, 32, 8, 1, 4), (1, 16, 8, 1, 2), (4, 32, 8, 2, 8)],
)
def test_grpo_data_with_fewer_prompts_than_one_step_is_refused(tiny, tmp_path, rows, batch, gens, procs, need):
    """3 prompts at batch 32 / 8 generations (4 distinct prompts a step) trained 0 steps and were reported as
    succeeded. A step takes batch_size x processes / num_generations prompts (the numbers here by hand)."""
    strategy = "ddp" if procs > 1 else "single"
    cfg = _grpo(tiny, tmp_path, rows, batch_size=batch, num_generations=gens, strategy=strategy, num_processes=procs)
    with pytest.raises(ConfigError) as exc:
        cfg.validate()
    msg = str(exc.value)
    assert "\n" not in msg and f"holds {rows} prompt(s)" in msg and f"takes {need} distinct prompts" in msg


def test_grpo_data_of_exactly_one_step_and_short_sft_data_pass(tiny, tmp_path):
    """The boundary is exact (4 rows at 32 / 8 trained 3 steps), and SFT / DPO cycle a short file: not refused."""
    _grpo(tiny, tmp_path, 4, batch_size=32, num_generations=8).validate()
    for algorithm in ("sft", "dpo"):
        short = _rows(tiny["data"][algorithm], 3, tmp_path)
        TrainConfig(algorithm, str(tiny["base"]), str(short), str(tmp_path / algorithm), batch_size=32).validate()


def test_a_run_that_trains_no_step_fails_and_publishes_nothing(tiny, tmp_path, monkeypatch):
    """With the data check bypassed (what any other empty epoch looks like), the trainer returns at step 0: the run
    saved the base as its model, wrote steps_done 0 and published it. Now it fails and leaves no folder."""
    from subnetviz.training.run import train

    monkeypatch.setattr(TrainConfig, "_enough_prompts", lambda self, n: None, raising=False)
    cfg = _grpo(tiny, tmp_path, 1, batch_size=8, num_generations=4, steps=2)  # 2 prompts a step, 1 row
    with pytest.raises(JobError, match="trained 0 of 2 steps"):
        train(cfg)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


# --- D2: a mask that does not fit the base, refused at submit from headers ---------------------------------------


def _job(tiny, mask: str, **kw) -> dict:
    return {"kind": "train", "algorithm": "sft", "base": str(tiny["other"]), "data": str(tiny["data"]["sft"]),
            "mask": mask, **kw}  # fmt: skip


@pytest.mark.parametrize(
    ("strategy", "procs", "random"),
    [("single", 1, False), ("ddp", 2, False), ("fsdp2", 2, True), ("zero2", 2, False)],
)
def test_a_mask_of_another_width_is_refused_at_submit_for_every_strategy(
    tiny, tmp_path, monkeypatch, strategy, procs, random
):
    """The Launch form queued a 16-wide model's mask for a 32-wide base; the run failed seconds later in the
    worker (single-process runs once the model had loaded). Refused by the runner's submit, nothing queued, in one
    line naming the tensor and both shapes, without reading the mask's values (headers only)."""
    import subnetviz.masks
    import subnetviz.training.masking
    from subnetviz.jobs.runner import JobRunner

    def no_values(*a, **k):
        raise AssertionError("the submit check read the mask's values")

    monkeypatch.setattr(subnetviz.masks, "load_mask_set", no_values)
    monkeypatch.setattr(subnetviz.training.masking, "load_mask_set", no_values)
    runner = JobRunner(tmp_path / "runs", max_concurrent=1)
    spec = f"random:{tiny['mask']}" if random else str(tiny["mask"])
    with pytest.raises(MaskError) as exc:
        runner.submit(_job(tiny, spec, strategy=strategy, num_processes=procs))
    msg = str(exc.value)
    assert msg.startswith(f"mask {tiny['mask']} does not fit the model: ") and "\n" not in msg
    # the base's embedding is 15 x 32 (15 characters of the test tokenizer), the mask's 15 x 16
    assert "'model.embed_tokens.weight' has shape (15, 16); the model's parameter has (15, 32)" in msg
    assert ".;" not in msg  # (the problems were joined as ".; ")
    assert len(runner.list_runs()) == 0


def test_masks_that_fit_pass_the_submit_check(tmp_path):
    """Names matched as the run matches them: a tied head merged into the embedding, experts stored one by one
    packed into the model's parameters, a GPT-2 mask named without ``transformer.``; a misnamed tensor refused."""
    import transformers as T

    from subnetviz.training.mask_fit import check_mask_fits
    from tests.models import make_tiny_moe

    def saved(name: str, masks: dict) -> str:
        return str(save_mask_set(tmp_path / f"{name}.safetensors", MaskSet(masks, {})))

    tied = tmp_path / "tied"  # (saved with its weights: the model a config describes is bounded by them)
    T.LlamaForCausalLM(T.LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     vocab_size=12, tie_word_embeddings=True)).save_pretrained(tied)  # fmt: skip
    head = {"model.embed_tokens.weight": torch.ones(12, 8, dtype=torch.bool), "lm_head.weight": torch.ones(12, 8)}
    check_mask_fits(str(tied), saved("head", {k: v.bool() for k, v in head.items()}))
    into_embedding = r"'model.embed_tokens.weight' has shape \(13, 8\); the model's parameter has \(12, 8\)"
    with pytest.raises(MaskError, match=into_embedding):  # (the tied head is read into the embedding)
        check_mask_fits(str(tied), saved("head13", {"lm_head.weight": torch.ones(13, 8, dtype=torch.bool)}))

    # a release's vision tower the text model does not build: its values decide (the run leaves all-zero entries
    # out, refuses the others), so the headers do not refuse it
    vision = {**head, "vision_model.model.layers.0.mlp.fc1.weight": torch.zeros(4, 4)}
    check_mask_fits(str(tied), saved("vision", {k: v.bool() for k, v in vision.items()}))

    moe = make_tiny_moe(tmp_path / "moe")
    check_mask_fits(str(moe), str(write_half_mask(tmp_path / "moe-half.safetensors", moe)))  # stored experts

    gpt2 = tmp_path / "gpt2"
    T.GPT2LMHeadModel(T.GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=16, n_positions=8)).save_pretrained(gpt2)
    check_mask_fits(str(gpt2), saved("c_attn", {"h.0.attn.c_attn.weight": torch.ones(8, 24, dtype=torch.bool)}))
    with pytest.raises(MaskError, match="'h.0.attn.c_atn.weight' is not a parameter of the model"):
        check_mask_fits(str(gpt2), saved("typo", {"h.0.attn.c_atn.weight": torch.ones(8, 24, dtype=torch.bool)}))


def test_a_file_that_is_no_mask_is_one_line_at_submit(tiny, tmp_path):
    from subnetviz.training.mask_fit import validate_config

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(MaskError) as exc:
        validate_config(_job(tiny, str(junk)))
    assert str(exc.value).startswith(f"{junk}: not a readable safetensors mask file") and "\n" not in str(exc.value)


# --- D6: the weights the check read, recorded beside it ------------------------------------------------------


def test_the_check_records_the_weights_it_read_and_a_later_change_shows(tiny, tmp_path):
    """The card's 'bit-identical outside the mask' stayed green after one bf16 entry outside the mask was
    flipped in the saved model. The check now records each weights file's size, mtime and sha256 (compared here
    with hashlib's digest of the published file), and changed_weights names a file whose bytes differ, not one
    merely copied (new mtime, same bytes)."""
    from subnetviz.training.run import SUMMARY_FILE, train

    cfg = TrainConfig("sft", str(tiny["base"]), str(tiny["data"]["sft"]), str(tmp_path / "out"),
                      mask=str(tiny["mask"]), steps=2, batch_size=4, learning_rate=1e-2)  # fmt: skip
    out = Path(train(cfg).output_dir)
    record = json.loads((out / SUMMARY_FILE).read_text())["mask_check"]["weights"]
    weights = out / "model.safetensors"
    assert list(record) == ["model.safetensors"]  # not the run's subnetwork_mask.safetensors
    assert record["model.safetensors"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["model.safetensors"]["size"] == weights.stat().st_size
    from subnetviz.training.config import changed_weights

    assert changed_weights(out, record) == []

    copy = tmp_path / "copy"
    shutil.copytree(out, copy, copy_function=shutil.copyfile)  # new mtimes, same bytes
    assert os.stat(copy / "model.safetensors").st_mtime_ns != os.stat(weights).st_mtime_ns
    assert changed_weights(copy, record) == []
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01  # one bit of the last tensor's last entry
    (copy / "model.safetensors").write_bytes(bytes(raw))
    assert changed_weights(copy, record) == ["model.safetensors"]
    (copy / "model.safetensors").unlink()
    assert changed_weights(copy, record) == ["model.safetensors"]  # gone


# --- D3: the comparison's base ---------------------------------------------------------------------------------


def test_the_comparison_base_is_the_one_both_runs_were_trained_from(tmp_path):
    """The base row was the sidebar's base (the demo zoo's) for two runs trained from another base."""
    from subnetviz.report.training import comparison_base

    runs_base, zoo_base = tmp_path / "tied" / "base", tmp_path / "zoo" / "base"
    runs_base.mkdir(parents=True)
    (tmp_path / "link").symlink_to(runs_base)
    assert comparison_base(str(runs_base), str(tmp_path / "link"), str(zoo_base)) == (str(runs_base), "")
    base, note = comparison_base(str(runs_base), str(zoo_base), str(zoo_base))
    assert base == str(zoo_base) and "different bases" in note
    base, note = comparison_base(None, str(runs_base), str(zoo_base))
    assert base == str(zoo_base) and "not known" in note
    assert comparison_base(None, None, None) == (None, "")


# --- D4 / D8 / D7: curves ------------------------------------------------------------------------------------


def _run(runner, run_id: str, kind: str, rows: list[str]) -> None:
    from tests.app_fixtures import add_finished_run

    run_dir = add_finished_run(runner, run_id, kind, run_id, {"kind": kind})
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(r + "\n" for r in rows))


def _row(step: int, **metrics) -> str:
    return json.dumps({"time": 1.0, "step": step, "total": 8, **metrics})  # NaN and inf as json writes them


@pytest.fixture
def runner(tmp_path):
    from subnetviz.jobs.runner import JobRunner

    return JobRunner(tmp_path / "runs", max_concurrent=1)


def test_a_continual_jobs_log_is_no_training_curve(runner):
    """A continual job logs one row per (method, seed, task) with a loss: it was drawn as one "loss" curve over
    step 1..60, smoothed across methods and offered as an overlay on train runs."""
    from subnetviz.report.training import curves_figure, has_curves, overlay_options

    _run(runner, "cont", "continual", [_row(i, loss=0.04, method="SupSup") for i in range(1, 7)])
    _run(runner, "sft", "train", [_row(i, loss=1.0 / i) for i in range(1, 4)])
    _run(runner, "sft2", "train", [_row(i, loss=2.0 / i) for i in range(1, 4)])
    _run(runner, "mask", "bigram_mask", [_row(i, loss=0.5, kept=0.5) for i in range(1, 4)])
    df = runner.list_runs()
    assert not has_curves(runner, "cont") and has_curves(runner, "sft") and has_curves(runner, "mask")
    assert overlay_options(runner, df, "sft") == ["sft2"] and overlay_options(runner, df, "cont") == []
    names = {i: i for i in df["id"]}
    fig = curves_figure(runner, ["sft", "cont"], names)
    assert {t.name for t in fig.data if t.mode == "lines+markers"} == {"sft"}


def test_nonfinite_steps_are_marked_not_dropped(runner):
    """A run whose loss and grad_norm went NaN / Inf from step 5 of 8: its curves just ended at step 4 beside an
    entropy that ran to 8. Each non-finite step is an x at the top of its panel, the legend says where it
    diverged, and a metric a row does not log (a bigram job's last row has no loss) is no mark."""
    from subnetviz.report.training import curves_figure

    nan, inf = float("nan"), float("inf")
    rows = [_row(s, loss=1.0 / s, grad_norm=2.0, entropy=0.5) for s in range(1, 5)]
    rows += [_row(s, loss=nan if s % 2 else inf, grad_norm=nan, entropy=0.5) for s in range(5, 9)]
    _run(runner, "nan", "train", rows)
    _run(
        runner,
        "ok",
        "train",
        [_row(s, loss=0.9, grad_norm=1.0, entropy=0.4) for s in range(1, 9)] + [_row(9, kept=0.5)],
    )
    fig = curves_figure(runner, ["ok", "nan"], {"ok": "ok", "nan": "nan"})
    label = "nan (diverged at step 5)"
    lines = {(t.name, t.xaxis): list(t.x) for t in fig.data if t.mode == "lines+markers"}
    assert lines[(label, "x")] == [1, 2, 3, 4] and lines[(label, "x3")] == list(range(1, 9))  # loss, entropy
    marks = [t for t in fig.data if t.mode == "markers"]
    assert sorted((t.xaxis, tuple(t.x)) for t in marks) == [("x", (5, 6, 7, 8)), ("x2", (5, 6, 7, 8))]
    loss = next(t for t in marks if t.xaxis == "x")
    assert "loss NaN/Inf at step %{x}" in loss.hovertemplate and loss.legendgroup == label
    assert list(loss.y) == [1.0] * 4  # the top of the loss panel: its largest finite value, step 1's 1/1
    assert "ok" in {t.name for t in fig.data}  # the other run's legend entry says nothing of divergence


def test_every_step_nonfinite_still_has_its_panel(runner):
    from subnetviz.report.training import curves_figure

    _run(runner, "all", "train", [_row(s, loss=float("nan"), entropy=0.5) for s in range(1, 4)])
    fig = curves_figure(runner, ["all"], {"all": "all"})
    assert [a.text for a in fig.layout.annotations][:2] == ["entropy", "loss"]
    assert [tuple(t.x) for t in fig.data if t.mode == "markers"] == [(1, 2, 3)]


def test_colours_past_eight_series_are_new_and_the_first_eight_unchanged(runner):
    """Past 8 overlaid runs the colours cycled: runs 1 and 9 were one colour and width. The first eight stay the
    Okabe-Ito palette (written out here); 40 labels get 40 colours; a training chart's runs past the eighth are
    dashed too."""
    from subnetviz.figures.style import color_map
    from subnetviz.report.training import curves_figure

    okabe_ito = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442"]
    colours = list(color_map([f"run {i}" for i in range(40)]).values())
    assert colours[:8] == okabe_ito and len(set(colours)) == 40
    ids = [f"r{i:02d}" for i in range(12)]
    for i in ids:
        _run(runner, i, "train", [_row(1, loss=1.0), _row(2, loss=0.5)])
    fig = curves_figure(runner, ids, {i: i for i in ids})
    styles = [(t.line.color, t.line.dash) for t in fig.data if t.mode == "lines+markers"]
    assert len(styles) == 12 and len(set(styles)) == 12
    assert [d for _, d in styles[:8]] == [None] * 8 and all(d for _, d in styles[8:])
