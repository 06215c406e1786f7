"""Masked training: entries outside the mask stay bit-identical, entries inside move; bad input refused.

Every check is against the bf16 base on disk, compared on the integer view of the stored bits
(independent of :func:`check_outside_mask`, which is also checked against it).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from pandas import testing as pd_testing
from safetensors import safe_open

from subnetviz.errors import ConfigError, MaskError
from subnetviz.masks import MaskSet, load_mask_set, save_mask_set
from subnetviz.training.config import TrainConfig
from subnetviz.training.data import exact_match_reward, read_jsonl
from subnetviz.training.evaluate import evaluate_accuracy
from subnetviz.training.masking import check_outside_mask, load_training_mask
from subnetviz.training.run import SUMMARY_FILE, train
from tests.models import make_tiny_llama
from tests.training_fixtures import write_addition_data, write_half_mask


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    base = make_tiny_llama(root / "base")
    data = write_addition_data(root / "data")
    # GRPO needs reward variance from a random model: one-digit answers, one-token completions.
    rows = [{"prompt": f"{a}+{b}=", "answer": str((a + b) % 10)} for a in range(4) for b in range(4)]
    data["grpo1"] = root / "data" / "grpo1.jsonl"
    data["grpo1"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    mask = write_half_mask(root / "half.safetensors", base, p=0.5, seed=1)
    return {"root": root, "base": base, "data": data, "mask": mask}


def _bits(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k).view(torch.int16) for k in f.keys()}


def _changed(base: Path, out: Path, masks: dict[str, torch.Tensor]) -> tuple[int, int]:
    a, b = _bits(base), _bits(out)
    assert set(a) == set(b)
    inside = outside = 0
    for k in a:
        d = a[k] != b[k]
        inside += int((d & masks[k]).sum())
        outside += int((d & ~masks[k]).sum())
    return inside, outside


def _cfg(tiny, tmp_path, algorithm, **kw):
    data = {"sft": "sft", "dpo": "dpo", "grpo": "grpo1"}[algorithm]
    base = dict(
        algorithm=algorithm,
        base=str(tiny["base"]),
        data=str(tiny["data"][data]),
        output_dir=str(tmp_path / f"out-{algorithm}"),
        steps=4,
        learning_rate=1e-2,
        batch_size=16,
        num_generations=8,
        max_completion_length=1,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("algorithm", "extra"),
    [
        ("sft", {"weight_decay": 0.1}),  # the masked decay path
        ("dpo", {"weight_decay": 0.1}),
        ("grpo", {}),  # no decay: every change inside comes from the policy gradient
        ("grpo", {"beta": 0.04, "bf16": False}),  # KL to a reference model, all fp32
    ],
)
def test_masked_run_leaves_outside_bit_identical(tiny, tmp_path, algorithm, extra):
    cfg = _cfg(tiny, tmp_path, algorithm, mask=str(tiny["mask"]), save_steps=[2], **extra)
    res = train(cfg)
    out = Path(res.output_dir)
    masks = load_mask_set(tiny["mask"]).masks
    inside, outside = _changed(tiny["base"], out, masks)
    assert outside == 0
    assert inside > 100, f"{algorithm}: only {inside} entries inside the mask changed"
    # The recorded check agrees with the independent count.
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["mask_check"]["outside_mask_identical"] is True
    assert summary["mask_check"]["changed_inside"] == inside
    assert summary["mask_check"]["changed_outside"] == 0
    assert res.steps_done == 4 and (out / "checkpoints" / "step-2" / "model.safetensors").is_file()
    assert _changed(tiny["base"], out / "checkpoints" / "step-2", masks)[1] == 0
    assert json.loads((out / "train_config.json").read_text())["mask"] == str(tiny["mask"])
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())
    assert not list(tmp_path.glob(".*.partial"))


@pytest.mark.slow
def test_full_run_changes_entries_everywhere_and_decay_moves_all(tiny, tmp_path):
    res = train(_cfg(tiny, tmp_path, "sft", eval_data=str(tiny["data"]["eval"])))
    masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in _bits(tiny["base"]).items()}
    inside, outside = _changed(tiny["base"], Path(res.output_dir), masks)
    assert inside > 0.5 * sum(m.numel() for m in masks.values())  # lr 1e-2: most bf16 weights move
    n_eval = len(Path(tiny["data"]["eval"]).read_text().splitlines())  # accuracy: a count of the eval rows
    assert res.accuracy * n_eval == pytest.approx(round(res.accuracy * n_eval), abs=1e-9)
    assert res.mask_check["changed_outside"] == 0


@pytest.mark.slow
def test_random_mask_has_same_per_tensor_counts(tiny, tmp_path):
    res = train(_cfg(tiny, tmp_path, "sft", mask=f"random:{tiny['mask']}", steps=2, seed=3))
    used = load_mask_set(Path(res.output_dir) / "subnetwork_mask.safetensors").masks
    src = load_mask_set(tiny["mask"]).masks
    assert all(int(used[k].sum()) == int(src[k].sum()) for k in src)
    assert any(not torch.equal(used[k], src[k]) for k in src)
    assert _changed(tiny["base"], Path(res.output_dir), used)[1] == 0


def test_unfitting_mask_refused_before_training(tiny, tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_mask_set(bad, MaskSet({"model.layers.0.self_attn.q_proj.weight": torch.ones(3, 3, dtype=torch.bool)}))
    with pytest.raises(MaskError, match=r"q_proj.weight.*shape \(3, 3\)"):
        train(_cfg(tiny, tmp_path, "sft", mask=str(bad)))
    typo = tmp_path / "typo.safetensors"
    save_mask_set(typo, MaskSet({"model.layers.0.self_attn.q_prj.weight": torch.ones(32, 32, dtype=torch.bool)}))
    with pytest.raises(MaskError, match="Did you mean"):
        train(_cfg(tiny, tmp_path, "sft", mask=str(typo)))
    assert not (tmp_path / "out-sft").exists() and not list(tmp_path.glob(".*.partial"))


def test_load_training_mask_fills_unlisted_params_with_false(tiny):
    shapes = {"a": (2, 3), "b": (4,)}
    path = tiny["root"] / "ab.safetensors"
    save_mask_set(path, MaskSet({"a": torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.bool)}))
    full, _ = load_training_mask(str(path), shapes)
    assert full["b"].dtype == torch.bool and not full["b"].any()
    rnd, ms = load_training_mask(f"random:{path}", shapes, seed=0)
    assert int(rnd["a"].sum()) == 3 and ms.metadata["seed"] == 0


def test_check_outside_mask_planted(tmp_path):
    from safetensors.torch import save_file

    a = torch.zeros(10, dtype=torch.bfloat16)
    b = a.clone()
    b[[1, 7]] = 1.0
    b[8] = -0.0  # a sign-bit flip is a bitwise change
    for name, t in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        save_file({"w": t}, str(tmp_path / name / "model.safetensors"))
    m = torch.zeros(10, dtype=torch.bool)
    m[[1, 2]] = True
    chk = check_outside_mask(tmp_path / "a", tmp_path / "b", {"w": m})
    assert (chk.changed_inside, chk.changed_outside, chk.numel_inside, chk.outside_mask_identical) == (1, 2, 2, False)


def test_check_state_outside_mask_planted(tmp_path):
    """The gathered fp32 state against a bf16 base: an fp32 change below bf16's resolution counts."""
    from safetensors.torch import save_file

    from subnetviz.training.masking import check_state_outside_mask

    base = torch.ones(6, dtype=torch.bfloat16)
    (tmp_path / "base").mkdir()
    save_file({"w": base}, str(tmp_path / "base" / "model.safetensors"))
    state = {"w": base.float(), "rotary.inv_freq": torch.ones(3)}  # a buffer the checkpoint lacks: skipped
    state["w"][0] = 1.0 + 2**-20  # invisible in bf16, a bit change in the fp32 master weight
    state["w"][4] = 2.0
    m = torch.tensor([False, False, False, False, True, True])
    chk = check_state_outside_mask(tmp_path / "base", state, {"w": m})
    assert (chk.changed_inside, chk.changed_outside, chk.tensors_compared, chk.outside_mask_identical) == (
        1,
        1,
        1,
        False,
    )
    assert check_state_outside_mask(tmp_path / "base", {"w": base.float()}, {"w": m}).outside_mask_identical


def test_config_validation(tiny, tmp_path):
    ok = _cfg(tiny, tmp_path, "grpo")
    ok.validate()
    cases = [
        (dict(algorithm="ppo"), "algorithm 'ppo' is unknown"),
        (dict(base=str(tmp_path / "nope")), "not a Hugging Face model folder"),
        (dict(output_dir=str(tmp_path)), "already exists"),
        (dict(steps=0), "steps must be an integer >= 1"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(batch_size=12, num_generations=8), "multiple of num_generations"),
        (dict(save_steps=[9]), r"save_steps \[9\] lie outside"),
        (dict(mask=str(tmp_path / "m.safetensors")), "no such mask file"),
        # each of these ended in a traceback (an AttributeError, a TypeError, NumPy's or transformers' ValueError
        # once the model had loaded) instead of one line before anything starts
        (dict(mask=5), "mask must be a string or null, got '5'"),
        (dict(eval_data=5), "eval_data must be a string or null"),
        (dict(name={"a": 1}), "name must be a string or null"),
        (dict(seed=2**70), r"seed must be an integer in 0 \.\. 2\^32 - 1"),
        (dict(lr_scheduler_type="nope"), "lr_scheduler_type 'nope' is unknown; expected one of .*cosine"),
        (dict(strategy="ddp", num_processes=100_000), "num_processes must be at most 1024"),
    ]
    for kw, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            dataclasses.replace(ok, **kw).validate()
    bad_rows = tmp_path / "bad.jsonl"
    bad_rows.write_text('{"prompt": "1+1=", "completion": "2"}\n')  # SFT rows given to GRPO
    with pytest.raises(ConfigError, match=r"bad.jsonl, line 1: missing field\(s\) \['answer'\]"):
        dataclasses.replace(ok, data=str(bad_rows)).validate()
    with pytest.raises(ConfigError, match="unknown field.*Did you mean 'learning_rate'"):
        TrainConfig.from_dict({**ok.to_dict(), "learning_rat": 1.0})
    with pytest.raises(ConfigError, match="missing required"):
        TrainConfig.from_dict({"algorithm": "sft"})
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested too deep"):
        TrainConfig.from_file(deep)
    assert TrainConfig.from_dict(ok.to_dict()) == ok
    assert _cfg(tiny, tmp_path, "dpo").effective_beta == 0.1 and ok.effective_beta == 0.0


def test_a_base_folder_the_trainer_would_read_wrongly_is_refused(tiny, tmp_path, monkeypatch):
    """A PEFT adapter beside the base model (from_pretrained applies it on top when PEFT is installed), and
    on a server enforcing its roots a tokenizer file linking outside them: named before training starts."""
    import shutil

    base = shutil.copytree(tiny["base"], tmp_path / "base")
    ok = _cfg(tiny, tmp_path, "grpo", base=str(base))
    ok.validate()
    (base / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds a PEFT adapter \(adapter_config.json\) beside the model"):
        ok.validate()
    (base / "adapter_config.json").unlink()
    outside = tmp_path / "elsewhere.json"
    (base / "tokenizer.json").rename(outside)
    (base / "tokenizer.json").symlink_to(outside)
    ok.validate()  # the CLI and library read what they are given
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(base))
    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    with pytest.raises(ConfigError, match="tokenizer.json leads outside the folders this server may read"):
        ok.validate()


def test_bad_data_names_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "1+1=", "answer": "2"}\n\n{"prompt": "2+2="}\n')
    with pytest.raises(ConfigError, match=r"d.jsonl, line 3: missing field\(s\) \['answer'\]"):
        read_jsonl(p, "grpo")
    p.write_text('{"prompt": "1+1=", "answer": "2"}\nnot json\n')
    with pytest.raises(ConfigError, match="line 2: not valid JSON"):
        read_jsonl(p, "grpo")
    # nested too deeply for the parser (a RecursionError before), not UTF-8 (a UnicodeDecodeError before)
    for line, says in (
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"prompt": "\xff"}', "not valid JSON"),
    ):
        p.write_bytes(b'{"prompt": "1+1=", "answer": "2"}\n' + line + b"\n")
        with pytest.raises(ConfigError, match=f"d.jsonl, line 2: (JSON )?{says}"):
            read_jsonl(p, "grpo")


def test_conversational_rows_accepted_but_not_for_answers(tmp_path):
    p = tmp_path / "c.jsonl"
    msgs = [{"role": "user", "content": "1+1="}]
    p.write_text(json.dumps({"prompt": msgs, "completion": [{"role": "assistant", "content": "2"}]}) + "\n")
    assert read_jsonl(p, "sft")[0]["prompt"] == msgs
    p.write_text(json.dumps({"prompt": msgs, "answer": ["2"]}) + "\n")
    with pytest.raises(ConfigError, match=r"\['answer'\] must be strings"):
        read_jsonl(p, "grpo")


def test_exact_match_reward_strips():
    assert exact_match_reward(["46", " 46\n", "47", ""], ["46", "46", "46", "46"]) == [1.0, 1.0, 0.0, 0.0]


def test_evaluate_accuracy_against_hand_count(tiny, tmp_path):
    """Accuracy = share of greedy completions equal to the answer, checked with answers built from the model's own output."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["base"])
    model = AutoModelForCausalLM.from_pretrained(tiny["base"], dtype=torch.float32).eval()
    rows = read_jsonl(tiny["data"]["eval"], "eval")[:4]
    outs = []
    for r in rows:
        ids = tok(r["prompt"], return_tensors="pt")["input_ids"]
        g = model.generate(
            ids, do_sample=False, max_new_tokens=3, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
        )
        outs.append(tok.decode(g[0, ids.shape[1] :], skip_special_tokens=True).strip())
    # Rows 0 and 2 get the model's own greedy answer (correct), rows 1 and 3 a wrong one.
    ev = tmp_path / "ev.jsonl"
    ev.write_text(
        "".join(
            json.dumps({"prompt": r["prompt"], "answer": o if i % 2 == 0 else o + "x"}) + "\n"
            for i, (r, o) in enumerate(zip(rows, outs, strict=True))
        )
    )
    assert evaluate_accuracy(tiny["base"], ev, max_new_tokens=3) == 0.5


# --- compare_runs -------------------------------------------------------------------------------


def _bf16_plus_ulps(value: float, offsets: list[int]) -> torch.Tensor:
    """bf16 tensor: ``value`` moved up by each offset in ULPs (adds to the bit pattern; same binade)."""
    base = torch.full((len(offsets),), value, dtype=torch.bfloat16).view(torch.int16)
    return (base + torch.tensor(offsets, dtype=torch.int16)).view(torch.bfloat16)


def test_compare_runs_planted(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from subnetviz.analysis.runs import compare_runs

    big_off = [0] * 60 + [1] * 10 + [2] * 5 + [3] * 4 + [4] * 3 + [8] * 2 + [12, 16] + [17] * 2 + [100] * 12
    small = torch.full((10,), 2.0**-20, dtype=torch.bfloat16)
    small_sub = _bf16_plus_ulps(2.0**-20, [0] * 4 + [1] * 3 + [2] * 2 + [0])
    small_sub[9] = -(2.0**-20)  # sign crossing: |diff| = 2^-19 ~ 1.9e-6
    full = {
        "big": torch.ones(100, dtype=torch.bfloat16),
        "small": small,
        "zeros": torch.tensor([0.0, 1.0], dtype=torch.bfloat16),
    }
    sub = {
        "big": _bf16_plus_ulps(1.0, big_off),
        "small": small_sub,
        "zeros": torch.tensor([-0.0, 1.0], dtype=torch.bfloat16),
    }
    base = {k: v.clone() for k, v in full.items()}
    base["big"][:5] = _bf16_plus_ulps(1.0, [1] * 5)  # the full run changed entries 0..4
    for name, d in (("full", full), ("sub", sub), ("base", base)):
        (tmp_path / name).mkdir()
        save_file(d, str(tmp_path / name / "model.safetensors"))
    cmp = compare_runs(tmp_path / "full", tmp_path / "sub", tmp_path / "base")
    pt = cmp.per_tensor.set_index(["name", "criterion", "tolerance"])["identical"]
    assert pt[("big", "exact", 0.0)] == 60 and all(pt[("big", "atol", t)] == 60 for t in (1e-8, 1e-4))
    assert [pt[("small", "atol", t)] for t in (1e-8, 1e-7, 1e-6, 1e-5, 1e-4)] == [7, 9, 9, 10, 10]
    assert pt[("small", "exact", 0.0)] == 4 and pt[("zeros", "exact", 0.0)] == 1 and pt[("zeros", "atol", 1e-8)] == 2
    hist = dict(zip(cmp.ulp_histogram["bin"], cmp.ulp_histogram["count"], strict=True))
    # "0" = bitwise identical; the -0/+0 flip of "zeros" is a bit change at distance 0, binned in "1"
    # as on the Update sparsity page; the sign crossing of "small" is 2 x 13696 ULP (> 256).
    assert hist == {
        "0": 60 + 4 + 1,
        "1": 10 + 3 + 1,
        "2": 5 + 2,
        "3-4": 7,
        "5-8": 2,
        "9-16": 2,
        "17-256": 14,
        ">256": 1,
    }
    summary = cmp.to_frame().set_index(["criterion", "tolerance"])
    assert summary.loc[("exact", 0.0), "identical"] == 65 and summary.loc[("exact", 0.0), "numel"] == 112
    assert summary.loc[("exact", 0.0), "mean_tensor_share"] == pytest.approx((0.6 + 0.4 + 0.5) / 3)
    assert cmp.share_identical == pytest.approx(65 / 112)
    vb = cmp.vs_base.set_index("name").loc["big"]
    assert (vb.changed_full, vb.changed_sub, vb.changed_both, vb.sub_outside_full) == (5, 45, 5, 40)
    assert cmp.unmatched == () and cmp.accuracy is None and cmp.base_unmatched == ()
    # Slicing large tensors gives the same counts as one pass.
    monkeypatch.setattr("subnetviz.analysis.runs.CHUNK", 7)
    monkeypatch.setattr("subnetviz.analysis.sparsity.CHUNK_ELEMENTS", 7)
    sliced = compare_runs(tmp_path / "full", tmp_path / "sub", tmp_path / "base")
    pd_testing.assert_frame_equal(sliced.per_tensor, cmp.per_tensor)
    pd_testing.assert_frame_equal(sliced.ulp_histogram, cmp.ulp_histogram)
    pd_testing.assert_frame_equal(sliced.vs_base, cmp.vs_base)


def test_compare_refuses_mismatched_runs(tmp_path):
    from safetensors.torch import save_file

    from subnetviz.analysis.runs import compare_runs
    from subnetviz.errors import AlignmentError

    for name, t in (("a", torch.zeros(3, dtype=torch.bfloat16)), ("b", torch.zeros(4, dtype=torch.bfloat16))):
        (tmp_path / name).mkdir()
        save_file({"w": t, f"only_{name}": t.clone()}, str(tmp_path / name / "model.safetensors"))
    with pytest.raises(AlignmentError, match=r"w: full run stores torch.bfloat16\(3,\)"):
        compare_runs(tmp_path / "a", tmp_path / "b")


@pytest.mark.slow
def test_subnetwork_of_full_update_stays_inside_it(tiny, tmp_path):
    """The paper's experiment in miniature: mask = entries the full run changed; retrain only those."""
    from subnetviz.analysis.runs import compare_runs

    full = train(_cfg(tiny, tmp_path, "sft", output_dir=str(tmp_path / "full"), steps=3))
    a, b = _bits(tiny["base"]), _bits(Path(full.output_dir))
    save_mask_set(tmp_path / "upd.safetensors", MaskSet({k: a[k] != b[k] for k in a}))
    sub = train(
        _cfg(tiny, tmp_path, "sft", output_dir=str(tmp_path / "sub"), steps=3, mask=str(tmp_path / "upd.safetensors"))
    )
    cmp = compare_runs(full.output_dir, sub.output_dir, tiny["base"], eval_data=tiny["data"]["eval"])
    assert int(cmp.vs_base["sub_outside_full"].sum()) == 0
    assert list(cmp.accuracy["model"]) == ["base", "full", "subnetwork"]
    f = cmp.to_frame()
    assert f["share"].is_monotonic_increasing  # exact <= atol 1e-8 <= ... <= atol 1e-4
    # the bitwise-identical share, recounted from the two saved folders' int16 views
    fa, fb = _bits(Path(full.output_dir)), _bits(Path(sub.output_dir))
    same = sum(int((fa[k] == fb[k]).sum()) for k in fa)
    assert cmp.share_identical == pytest.approx(same / sum(v.numel() for v in fa.values()), rel=1e-12)
    assert cmp.to_frame()["identical"].iloc[0] == same


@pytest.mark.slow
def test_run_job_reports_progress_and_honours_stop(tiny, tmp_path):
    from subnetviz.jobs.context import JobContext
    from subnetviz.training.run import run_job

    job = {"kind": "train", **_cfg(tiny, tmp_path, "sft", steps=3, eval_data=str(tiny["data"]["eval"])).to_dict()}
    del job["output_dir"]  # a job's model always goes to outputs/model
    ctx = JobContext.for_dir(tmp_path / "run")
    run_job(job, ctx)
    assert (ctx.out_dir / "model" / "model.safetensors").is_file()
    summary = json.loads((ctx.out_dir / "summary.json").read_text())
    assert summary["output_dir"] == str(tmp_path / "run" / "outputs" / "model") and summary["steps_done"] == 3
    for name in ("train_config.json", "train_summary.json"):
        assert json.loads((ctx.out_dir / "model" / name).read_text())["output_dir"] == summary["output_dir"]
    recs = [json.loads(line) for line in (ctx.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3] and all("loss" in r for r in recs)  # each step once
    status = json.loads((ctx.run_dir / "status.json").read_text())
    assert status["step"] == 3 and status["metrics"]["accuracy"] == summary["accuracy"]
    # A cancel flag stops training after the current step and saves nothing.
    stop = JobContext.for_dir(tmp_path / "run2")
    (stop.run_dir / "cancel").write_text("")
    run_job(job, stop)
    assert not (stop.out_dir / "model").exists() and not list(stop.out_dir.glob(".*partial"))
    assert [json.loads(line)["step"] for line in (stop.run_dir / "metrics.jsonl").read_text().splitlines()] == [1]


def test_gradient_mask_zeroes_nan_gradients_outside():
    from subnetviz.training.masking import GradientMask

    lin = torch.nn.Linear(3, 2, bias=False)
    m = torch.tensor([[True, False, True], [False, False, True]])
    hooks = GradientMask(lin, {"weight": m})
    (lin(torch.tensor([[1.0, float("nan"), 2.0]])).sum()).backward()
    g = lin.weight.grad
    assert torch.equal(g[~m], torch.zeros(int((~m).sum())))  # exactly 0, even where the raw grad is NaN
    assert torch.equal(g[m], torch.tensor([1.0, 2.0, 2.0]))
    hooks.remove()
    lin.weight.grad = None
    (lin(torch.ones(1, 3)).sum()).backward()
    assert torch.equal(lin.weight.grad, torch.ones(2, 3))


@pytest.mark.slow
def test_a_mixture_of_experts_trains_inside_a_mask_written_for_its_stored_experts(tmp_path):
    """A mask names the experts as the checkpoint stores them (one tensor per expert and projection, the update
    masks analyze writes); transformers 5 trains them packed (mlp.experts.gate_up_proj / down_proj). Such a mask
    was refused ('not a parameter of the model'): it is packed into the parameters, the run changes entries
    inside it only (counted here on the stored bits, independently of the run's own check), and that check
    compares every stored tensor."""
    from tests.models import make_tiny_moe

    base = make_tiny_moe(tmp_path / "base", seed=0)
    data = write_addition_data(tmp_path / "data")
    mask = write_half_mask(tmp_path / "half.safetensors", base, p=0.5, seed=1)
    cfg = TrainConfig(
        algorithm="sft",
        base=str(base),
        data=str(data["sft"]),
        output_dir=str(tmp_path / "out"),
        steps=3,
        learning_rate=1e-2,
        batch_size=16,
        seed=0,
        mask=str(mask),
    )
    out = Path(train(cfg).output_dir)
    masks = load_mask_set(mask).masks
    inside, outside = _changed(base, out, masks)
    assert outside == 0 and inside > 1000
    expert = [k for k in masks if ".experts." in k]
    a, b = _bits(base), _bits(out)
    assert sum(int((a[k] != b[k]).sum()) for k in expert) > 0  # the experts themselves trained
    check = json.loads((out / SUMMARY_FILE).read_text())["mask_check"]
    assert check["outside_mask_identical"] is True and check["changed_inside"] == inside
    assert check["tensors_compared"] == len(masks)


def test_an_moe_mask_naming_some_experts_and_its_random_control_keep_each_stored_experts_count(tmp_path):
    """A mask of the experts as stored, naming only some of them, packs into the model's parameters with the
    others frozen (it was refused); its random control draws each stored expert's entries within that expert
    (drawn over the packed parameter, experts the file leaves empty were trained in the control)."""
    from subnetviz.masks import MaskSet, save_mask_set
    from tests.models import make_tiny_moe

    base = make_tiny_moe(tmp_path / "base", seed=0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base))
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    name = "model.layers.0.mlp.experts.{}.{}_proj.weight"
    masks = {
        name.format(1, "gate"): torch.rand(8, 16, generator=g) < 0.3,
        name.format(2, "down"): torch.rand(16, 8, generator=g) < 0.5,
    }
    path = save_mask_set(tmp_path / "some.safetensors", MaskSet(masks, {"method": "test"}))
    for spec in (str(path), f"random:{path}"):
        full, used = load_training_mask(spec, shapes, seed=3)
        gate_up, down = full["model.layers.0.mlp.experts.gate_up_proj"], full["model.layers.0.mlp.experts.down_proj"]
        assert int(gate_up[1, :8].sum()) == int(masks[name.format(1, "gate")].sum())  # expert 1's gate rows
        assert int(down[2].sum()) == int(masks[name.format(2, "down")].sum())
        assert int(gate_up.sum()) + int(down.sum()) == sum(int(m.sum()) for m in masks.values())  # nothing else
        assert set(used.masks) == set(masks)  # the mask used, as the checkpoint names its tensors
        if spec == str(path):
            assert torch.equal(gate_up[1, :8], masks[name.format(1, "gate")])


def test_a_head_mask_is_merged_into_a_tied_models_embedding(tmp_path):
    """An update mask of a tied base against a finetune that untied its head lists the head apart, under
    ``lm_head.weight`` (its changes against the base's embedding). Training the tied base with it refused the
    head as no parameter of the model; it is merged into the embedding's mask (the one tensor computes both), and
    an untied model keeps the head's own entry."""
    import transformers as T

    from subnetviz.masks import MaskSet, save_mask_set
    from subnetviz.training.masking import load_training_mask, tied_heads

    def model(tie: bool):
        cfg = T.LlamaConfig(
            hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=12,
            tie_word_embeddings=tie,
        )  # fmt: skip
        return T.LlamaForCausalLM(cfg)

    gen = torch.Generator().manual_seed(0)
    embed, head = torch.rand(12, 8, generator=gen) < 0.3, torch.rand(12, 8, generator=gen) < 0.3
    path = tmp_path / "m.safetensors"
    save_mask_set(path, MaskSet({"model.embed_tokens.weight": embed, "lm_head.weight": head}, {}))

    tied = model(True)
    shapes = {n: tuple(p.shape) for n, p in tied.named_parameters()}
    assert "lm_head.weight" not in shapes
    with pytest.raises(MaskError, match="lm_head.weight"):
        load_training_mask(str(path), shapes)
    full, _ = load_training_mask(str(path), shapes, tied=tied_heads(tied))
    assert torch.equal(full["model.embed_tokens.weight"], embed | head) and "lm_head.weight" not in full

    untied = model(False)
    assert tied_heads(untied) == {}
    full, _ = load_training_mask(str(path), {n: tuple(p.shape) for n, p in untied.named_parameters()})
    assert torch.equal(full["model.embed_tokens.weight"], embed) and torch.equal(full["lm_head.weight"], head)


def test_the_random_control_of_a_tied_head_mask_draws_the_merged_count(tmp_path):
    """The random control keeps each tensor's count; with a tied head's entry merged into the embedding's, that is
    the merged tensor's count (the embedding and head drawn apart and merged after trained 66 % more entries than
    the real mask when their changes coincide, as an update mask's of an untied finetune do)."""
    import transformers as T

    from subnetviz.training.masking import load_training_mask, tied_heads

    cfg = T.LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                        vocab_size=32, tie_word_embeddings=True)  # fmt: skip
    tied = T.LlamaForCausalLM(cfg)
    same = torch.rand(32, 8, generator=torch.Generator().manual_seed(1)) < 0.3
    path = tmp_path / "m.safetensors"
    save_mask_set(path, MaskSet({"model.embed_tokens.weight": same, "lm_head.weight": same.clone()}, {}))
    shapes = {n: tuple(p.shape) for n, p in tied.named_parameters()}
    real, _ = load_training_mask(str(path), shapes, tied=tied_heads(tied))
    control, _ = load_training_mask(f"random:{path}", shapes, seed=0, tied=tied_heads(tied))
    assert int(real["model.embed_tokens.weight"].sum()) == int(same.sum())
    assert int(control["model.embed_tokens.weight"].sum()) == int(same.sum())


def test_a_mask_named_as_a_base_stores_without_the_model_prefix_is_read(tmp_path):
    """GPT-2's hub release stores ``h.0.attn.c_attn.weight`` (no ``transformer.``), and the update mask of such a
    base names its tensors so: training the same base inside it was refused ("is not a parameter of the model")."""
    import transformers as T

    from subnetviz.training.masking import load_training_mask

    model = T.GPT2LMHeadModel(T.GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=16, n_positions=8))
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    inside = torch.rand(shapes["transformer.h.0.attn.c_attn.weight"], generator=torch.Generator().manual_seed(0)) < 0.5
    path = tmp_path / "m.safetensors"
    save_mask_set(path, MaskSet({"h.0.attn.c_attn.weight": inside}, {}))
    full, _ = load_training_mask(str(path), shapes)
    assert torch.equal(full["transformer.h.0.attn.c_attn.weight"], inside)
    assert sum(int(m.sum()) for m in full.values()) == int(inside.sum())
