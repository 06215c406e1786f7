"""Behaviour: teacher-forced KL against a float64 NumPy reference from the logits, planted finetunes that
differ from the base only inside a mask M (revert inside -> KL exactly 0; revert outside -> KL unchanged),
the random control's per-tensor counts, the revert curve's endpoints, the CLI files, the job and the page."""

import json
import re
import shutil

import numpy as np
import pytest
import torch

from subnetviz.analysis.behavior import Prompt, behavior, kl_terms, read_prompts
from subnetviz.analysis.revert import random_selector
from tests.ckpt_fixtures import bf16_step, read_state_dict, write_folder
from tests.models import make_tiny_llama
from tests.training_fixtures import write_addition_data

PROMPTS = [Prompt("12+30=", "42"), Prompt("7+8=", "15"), Prompt("40+2=")]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A base; ``ft`` differs from it only inside M (a random 20 % of two matrices, moved 40 ULPs)."""
    root = tmp_path_factory.mktemp("behavior")
    base = make_tiny_llama(root / "base", seed=0)
    sd = read_state_dict(base)
    g = torch.Generator().manual_seed(1)
    masks = {}
    for name in ("model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        m = torch.rand(sd[name].shape, generator=g) < 0.2
        sd[name] = torch.where(m, bf16_step(sd[name], 40), sd[name])
        masks[name] = m
    ft = write_folder(root / "ft", sd, config_from=base)
    for f in base.glob("tokenizer*"):
        shutil.copy(f, ft / f.name)
    for f in base.glob("special_tokens_map.json"):
        shutil.copy(f, ft / f.name)
    return base, ft, masks


def test_kl_terms_equal_a_numpy_float64_reference():
    rng = np.random.default_rng(0)
    p, q = rng.standard_normal((5, 11)) * 3, rng.standard_normal((5, 11)) * 3

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(p), log_softmax(q)
    fwd_ref = (np.exp(lp) * (lp - lq)).sum(-1)
    rev_ref = (np.exp(lq) * (lq - lp)).sum(-1)
    fwd, rev = kl_terms(torch.tensor(p, dtype=torch.float32), torch.tensor(q, dtype=torch.float32))
    lp32, lq32 = (
        log_softmax(p.astype(np.float32).astype(np.float64)),
        log_softmax(q.astype(np.float32).astype(np.float64)),
    )
    assert np.allclose(fwd.numpy(), (np.exp(lp32) * (lp32 - lq32)).sum(-1), rtol=1e-12, atol=1e-15)
    assert np.allclose(fwd.numpy(), fwd_ref, rtol=1e-5) and np.allclose(rev.numpy(), rev_ref, rtol=1e-5)
    assert (fwd.numpy() > 0).all() and (rev.numpy() > 0).all()


def test_report_kl_equals_numpy_reference_from_model_logits(planted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, ft, _ = planted
    rep = behavior(str(base), [str(ft)], PROMPTS, labels=["ft"], curve=None, device="cpu")
    tok = AutoTokenizer.from_pretrained(str(base))
    mb = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    mf = AutoModelForCausalLM.from_pretrained(str(ft), dtype=torch.float32).eval()
    fwd_all, rev_all = [], []
    for p in PROMPTS:
        ids = tok(p.text)["input_ids"] + (tok(p.answer, add_special_tokens=False)["input_ids"] if p.answer else [])
        with torch.no_grad():  # one sequence at a time, no padding: an independent path
            lb = mb(torch.tensor([ids])).logits[0].double().numpy()
            lf = mf(torch.tensor([ids])).logits[0].double().numpy()
        lb = lb - np.logaddexp.reduce(lb, axis=-1, keepdims=True)
        lf = lf - np.logaddexp.reduce(lf, axis=-1, keepdims=True)
        fwd_all.append((np.exp(lb) * (lb - lf)).sum(-1))
        rev_all.append((np.exp(lf) * (lf - lb)).sum(-1))
    tokens = rep.tokens[rep.tokens["experiment"] == "finetuned"]
    assert np.allclose(tokens["kl_forward"].to_numpy(), np.concatenate(fwd_all), rtol=1e-4, atol=1e-9)
    assert np.allclose(tokens["kl_reverse"].to_numpy(), np.concatenate(rev_all), rtol=1e-4, atol=1e-9)
    row = rep.summary.set_index("experiment").loc["finetuned"]
    assert row["kl_forward"] > 0 and abs(row["kl_forward"] - np.concatenate(fwd_all).mean()) < 1e-4 * row["kl_forward"]
    assert row["tokens"] == sum(len(f) for f in fwd_all)


def test_a_report_reads_back_labels_and_tokens_that_look_like_missing_values(planted, tmp_path):
    """A finetune labelled "nan" (its folder's name) and tokens such as "None": pandas' default CSV reader
    turned both into NaN, and the Behaviour page failed on a model it could no longer find."""
    from subnetviz.analysis.behavior import read_behavior, write_behavior

    base, ft, _ = planted
    rep = behavior(str(base), [str(ft)], PROMPTS, labels=["nan"], curve=None, device="cpu")
    rep.tokens.loc[rep.tokens.index[:3], "token"] = ["None", "NA", "null"]
    write_behavior(rep, tmp_path)
    back = read_behavior(tmp_path)
    assert set(back["summary"]["model"]) == set(back["tokens"]["model"]) == set(back["prompts"]["model"]) == {"nan"}
    assert list(back["tokens"]["token"][:3]) == ["None", "NA", "null"]
    assert back["tokens"]["kl_forward"].to_numpy() == pytest.approx(rep.tokens["kl_forward"].to_numpy())


def test_a_finetune_or_base_with_nan_weights_is_refused_by_name(planted, tmp_path):
    """One NaN in a finetune's q_proj: the page computed (finite) KLs for a broken model; now it says which
    tensor of which checkpoint, as every other analysis does; a NaN in the base is named too."""
    from subnetviz.errors import NonFiniteError

    base, ft, _ = planted
    for which, src in (("ft", ft), ("base", base)):
        sd = read_state_dict(src)
        sd["model.layers.1.self_attn.q_proj.weight"][0, 0] = float("nan")
        broken = write_folder(tmp_path / which, sd, config_from=base)
        for f in base.glob("tokenizer*"):
            shutil.copy(f, broken / f.name)
        pair = (str(base), [str(broken)]) if which == "ft" else (str(broken), [str(ft)])
        with pytest.raises(NonFiniteError, match=r"q_proj\.weight: 1 NaN/Inf value\(s\)"):
            behavior(*pair, PROMPTS, labels=["x"], curve=None, device="cpu")


def test_a_mask_of_another_shape_is_refused_with_its_name(planted):
    """A mask for another model (right tensor names, wrong shapes) is refused before any model is rewritten,
    naming the mask as the page lists it (the message named only the tensor)."""
    from subnetviz.errors import MaskError

    base, ft, masks = planted
    name = "model.layers.0.mlp.down_proj.weight"
    other = {**masks, name: torch.zeros(4, 4, dtype=torch.bool)}
    with pytest.raises(
        MaskError,
        match=r"mask 'uploads/other' does not fit the base: 'model\.layers\.0\.mlp\.down_proj\.weight' has shape \(4, 4\), the tensor \(",
    ):
        behavior(str(base), [str(ft)], PROMPTS, labels=["ft"], masks={"uploads/other": other}, curve=None, device="cpu")


def test_revert_inside_is_the_base_and_outside_is_the_finetune(planted):
    base, ft, masks = planted
    rep = behavior(str(base), [str(ft)], PROMPTS, labels=["ft"], masks={"M": masks}, curve=(0.0, 1.0), device="cpu")
    s = rep.summary.set_index("experiment")
    assert s.loc["M/inside", "kl_forward"] == 0.0 and s.loc["M/inside", "kl_reverse"] == 0.0  # exactly
    assert s.loc["M/inside", "fraction_reverted"] == 1.0 and s.loc["M/outside", "fraction_reverted"] == 0.0
    assert s.loc["M/outside", "kl_forward"] == s.loc["finetuned", "kl_forward"]  # bit-identical model
    assert s.loc["M/outside", "kl_reverse"] == s.loc["finetuned", "kl_reverse"]
    assert 0 < s.loc["random(M)/inside", "fraction_reverted"] < 1  # same count, mostly elsewhere
    c = rep.curves.set_index(["order", "fraction"])
    assert c.loc[("abs_delta", 1.0), "kl_forward"] == 0.0 and c.loc[("random", 1.0), "kl_forward"] == 0.0
    assert c.loc[("abs_delta", 0.0), "kl_forward"] == s.loc["finetuned", "kl_forward"]
    js = rep.to_json()["models"]["ft"]
    assert js["reverts"]["M"]["inside"]["kl_forward"] == 0.0 and js["kl_forward"] > 0


def test_random_control_keeps_each_tensors_count():
    masks = {"w": torch.tensor([[True, False, True], [False, False, True]])}
    sel = random_selector(masks, seed=3)
    a = torch.zeros(2, 3)
    out = sel(0, "w", a, a)
    assert out.sum() == 3 and out.shape == (2, 3)
    assert sel(0, "other", a, a).sum() == 0  # a tensor the mask does not hold: nothing


def test_accuracy_counts_answers_only(planted):
    base, ft, _ = planted
    rep = behavior(str(base), [str(ft)], PROMPTS, labels=["ft"], curve=None, device="cpu")
    per = rep.prompts[rep.prompts["experiment"] == "finetuned"]
    assert per["correct"].isna().sum() == 1  # the prompt without an answer
    acc = rep.summary.set_index("experiment").loc["finetuned", "accuracy"]
    answered = per["correct"].dropna().astype(float)
    assert len(answered) == len(per) - 1 and acc == pytest.approx(answered.mean())  # a share of answered prompts


def test_cli_writes_behavior_json_and_tokens(planted, tmp_path):
    import pandas as pd

    from subnetviz.__main__ import main
    from subnetviz.masks import MaskSet, save_mask_set

    base, ft, masks = planted
    data = write_addition_data(tmp_path / "data", n=4)
    save_mask_set(tmp_path / "m.safetensors", MaskSet(masks, {"method": "test"}))
    out = tmp_path / "out"
    rc = main(
        [
            "behavior",
            str(base),
            str(ft),
            "--prompts",
            str(data["eval"]),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--mask",
            f"planted={tmp_path / 'm.safetensors'}",
            "--curve",
            "0",
            "0.5",
            "1",
        ]
    )
    assert rc == 0
    js = json.loads((out / "behavior.json").read_text())
    model = js["models"]["ft"]
    assert model["kl_forward"] > 0 and model["reverts"]["planted"]["inside"]["kl_forward"] == 0.0
    assert set(model["reverts"]) == {"planted", "random(planted)"}
    tokens = pd.read_csv(out / "tokens.csv")
    assert {"kl_forward", "kl_reverse", "token", "prompt", "position"} <= set(tokens.columns)
    assert len(read_prompts(data["eval"])) == tokens[tokens["experiment"] == "finetuned"]["prompt"].nunique()


def test_masks_or_models_of_one_name_are_not_dropped(planted, tmp_path, capsys):
    """Two --mask files both named mask.safetensors: one was dropped with no word; two runs' outputs/model
    both labelled "model": one model's results replaced the other's; --limit 0 read every prompt and -1 one
    per file; --batch-size 0 ended in a traceback."""
    from subnetviz.__main__ import main
    from subnetviz.analysis.behavior import _labels, validate_config
    from subnetviz.errors import ConfigError
    from subnetviz.masks import MaskSet, save_mask_set

    base, ft, masks = planted
    for d in ("m1", "m2"):
        (tmp_path / d).mkdir()
        save_mask_set(tmp_path / d / "mask.safetensors", MaskSet(masks))
    args = ["behavior", str(base), str(ft), "--out", str(tmp_path / "out"), "--device", "cpu"]
    rc = main([*args, "--mask", str(tmp_path / "m1/mask.safetensors"), "--mask", str(tmp_path / "m2/mask.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and "two masks named 'mask'" in err and "--mask NAME=PATH" in err and "Traceback" not in err
    assert _labels(None, ["r1/outputs/model", "r2/outputs/model"], ["p"]) == ["model", "model-2"]
    with pytest.raises(ConfigError, match=r"the label\(s\) \['a'\] name two finetuned models"):
        _labels(["a", "a"], ["x", "y"], ["p"])
    for key, value in (("limit", 0), ("limit", -1), ("batch_size", 0), ("batch_size", -3), ("limit", 2.5)):
        with pytest.raises(ConfigError, match=f"{key} must be a whole number >= 1"):
            validate_config({"base": str(base), "finetuned": [str(ft)], key: value})


def test_job_writes_outputs(planted, tmp_path):
    from subnetviz.analysis.behavior import run_job, validate_config
    from subnetviz.errors import ConfigError
    from subnetviz.jobs.context import JOB_KINDS, JobContext

    base, ft, _ = planted
    data = write_addition_data(tmp_path / "data", n=3)
    cfg = {
        "kind": "behavior",
        "base": str(base),
        "finetuned": [str(ft)],
        "labels": ["ft"],
        "prompts": str(data["eval"]),
        "curve": [],
        "device": "cpu",
    }
    validate_config(cfg)
    with pytest.raises(ConfigError, match="finetuned"):
        validate_config({"kind": "behavior", "base": str(base)})
    assert JOB_KINDS["behavior"] == "subnetviz.analysis.behavior:run_job"
    ctx = JobContext.for_dir(tmp_path / "run")
    run_job(cfg, ctx)
    assert (ctx.out_dir / "behavior.json").exists() and (ctx.out_dir / "tokens.csv").exists()


def test_update_and_top_delta_masks_come_from_each_finetune(planted):
    from subnetviz.analysis.revert import mask_source

    base, ft, masks = planted
    rep = behavior(
        str(base),
        [str(ft)],
        PROMPTS,
        labels=["ft"],
        curve=None,
        random_control=False,
        device="cpu",
        masks={"upd": mask_source("update"), "top": mask_source("topk:0.5")},
    )
    s = rep.summary.set_index("experiment")
    assert s.loc["upd/inside", "kl_forward"] == 0.0 and s.loc["upd/inside", "fraction_reverted"] == 1.0
    assert s.loc["upd/outside", "kl_forward"] == s.loc["finetuned", "kl_forward"]
    assert abs(s.loc["top/inside", "fraction_reverted"] - 0.5) < 0.1  # ties at the threshold drawn, not all taken
    with pytest.raises(Exception, match="topk"):
        mask_source("topk:2")


def test_prompts_from_a_saved_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"question": ["1+1=", "2+2="], "answer": ["work #### 2", "4"]}).save_to_disk(
        str(tmp_path / "ds")
    )
    ps = read_prompts(tmp_path / "ds")
    assert ps == [Prompt("1+1=", "2"), Prompt("2+2=", "4")]
    assert read_prompts(tmp_path / "ds", limit=1) == [Prompt("1+1=", "2")]
    from subnetviz.errors import ConfigError

    with pytest.raises(ConfigError, match="hf:NAME"):
        read_prompts("hf:only-a-name")


def test_planned_passes_are_the_passes_the_analysis_runs(planted, tmp_path):
    """The page prices a behaviour analysis before it starts (a visitor could start hours of forward passes
    on a 7B model): the passes, builds and tokens counted from the headers and the tokenizer are what the
    analysis then runs (one summary or curve row per finetune and experiment)."""
    from subnetviz.analysis.behavior import planned_passes, run_config
    from subnetviz.analysis.behavior_data import encode
    from subnetviz.checkpoints.models import load_tokenizer

    base, ft, masks = planted
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p.text, "answer": p.answer}) + "\n" for p in PROMPTS))
    mask_file = tmp_path / "m.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.to(torch.uint8) for k, v in masks.items()}, str(mask_file))
    cfg = {
        "base": str(base),
        "finetuned": [str(ft), str(ft)],
        "labels": ["a", "b"],
        "prompts": [str(prompts)],
        "masks": {"M": str(mask_file)},
        "curve": [0.0, 0.5, 1.0],
        "device": "cpu",
    }
    passes, builds, tokens, params = planned_passes(cfg)
    assert builds == 2 * (1 + 3 + 2 * 3)  # the finetune, M inside / outside / random, the curves in two orders
    assert passes == builds + 1  # the base's logits are kept: one pass of the base
    assert tokens == sum(len(e.ids) for e in encode(load_tokenizer(str(base)), PROMPTS))
    assert params == sum(v.numel() for v in read_state_dict(base).values())
    rep = run_config(cfg)
    assert len(rep.summary) + len(rep.curves) == builds
    assert planned_passes({**cfg, "curve": [], "random_control": False})[1] == 2 * 3


def test_the_abs_delta_cut_of_a_large_model_holds_a_sample_not_every_change(planted):
    """The |Δ|-order revert curve kept every changed entry's |Δ| to find its threshold (8 GB for a 7B model
    with 30 % changed) and then drew its sample from them. Above ``sample`` parameters it now draws the
    sample tensor by tensor; the threshold stays the exact quantile of a uniform sample."""
    from subnetviz.analysis.revert import ModelBuilder, _delta_cut

    base, ft, _ = planted
    exact_builder = ModelBuilder(str(base), str(ft), "cpu")
    thr, _ = _delta_cut(exact_builder, 0.5, 10**9, 0)
    everything = exact_builder._abs_delta
    total = sum(p.numel() for _, p in exact_builder.params)
    sampled_builder = ModelBuilder(str(base), str(ft), "cpu")
    small = total // 4
    sthr, _ = _delta_cut(sampled_builder, 0.5, small, 0)
    held = sampled_builder._abs_delta.size
    assert held <= small and held < everything.size / 2  # a quarter of the changed entries (before: all)
    # the sampled median lands near the exact one (the rank of a median of n draws spreads by 0.5/√n)
    rank = np.count_nonzero(everything > sthr) / everything.size
    assert (
        abs(rank - 0.5) < 4 * 0.5 / np.sqrt(held)
        and thr == np.sort(everything)[::-1][int(np.ceil(0.5 * everything.size)) - 1]
    )


def _copy_tokenizer(src, dst):
    for f in list(src.glob("tokenizer*")) + list(src.glob("special_tokens_map.json")):
        shutil.copy(f, dst / f.name)
    return dst


def test_hf_prompts_read_the_local_cache_and_never_reach_the_network(tmp_path, monkeypatch):
    """``--prompts hf:NAME:SPLIT`` asked the hub for the data set by name (HF_DATASETS_OFFLINE was set after
    ``import datasets``, which reads it at import): with the offline flags off, as on a user's machine, nothing
    may open a connection or resolve a host; a data set that is not cached is one line, one that is loads, and
    the flags are put back. ``hf:::`` was an IndexError from inside datasets."""
    import socket

    import datasets
    from huggingface_hub import constants as hub

    from subnetviz.errors import ConfigError

    # a data set in a datasets cache, as load_dataset leaves it (built from local files, before the guard)
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in [("1+1=", "so #### 2")]))
    datasets.load_dataset("json", data_files=str(src), cache_dir=str(tmp_path / "work"), split="train")
    built = next(p for p in (tmp_path / "work").glob("json/*/*/*") if p.is_dir())
    dest = tmp_path / "cache" / "someorg___tiny" / "default" / built.parts[-2] / built.parts[-1]
    shutil.copytree(built, dest)
    info = json.loads((dest / "dataset_info.json").read_text())
    (dest / "dataset_info.json").write_text(json.dumps({**info, "config_name": "default", "dataset_name": "tiny"}))
    for f in dest.glob("json-*"):
        f.rename(dest / f.name.replace("json-", "tiny-"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))

    tried = []

    def refuse(*args, **kwargs):
        tried.append(args[1:2] or args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # (tests/conftest.py sets HF_HUB_OFFLINE for the suite)
        monkeypatch.setattr(datasets.config, flag, False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    with pytest.raises(ConfigError, match=r"^hf:someorg/not-cached:train: not a data set on this machine") as exc:
        read_prompts("hf:someorg/not-cached:train")
    assert tried == []  # (before: the hub was asked for README.md by the data set's name)
    assert "\n" not in str(exc.value) and "never downloaded" in str(exc.value)
    assert read_prompts("hf:someorg/tiny:train") == [Prompt("1+1=", "2")] and tried == []
    assert (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE) == (False,) * 3
    for spec in ("hf:::", "hf:a::train", "hf:../secret:train", "hf:/etc:train"):
        with pytest.raises(ConfigError, match="hf:NAME") as exc:
            read_prompts(spec)
        assert "\n" not in str(exc.value)
    assert tried == []


def test_a_mixed_precision_pair_reverts_to_the_base_cast_to_the_finetunes_dtype(planted, tmp_path):
    """A bf16 base and an fp32 finetune (and the other way round) ended in "bitwise comparison needs one dtype"
    with any mask or curve. The update analysis casts the base to the finetune's stored dtype
    (round-to-nearest-even); a reverted entry takes that value. Checked against models built by hand."""
    from subnetviz.analysis.revert import ModelBuilder, mask_selector, mask_source, update_masks

    base, ft, masks = planted
    # bf16 base, the finetune saved in fp32 (exact): reverting the update gives the base itself
    sd_ft = read_state_dict(ft)
    ft32 = _copy_tokenizer(ft, write_folder(tmp_path / "ft32", {k: v.float() for k, v in sd_ft.items()}, ft))
    rep = behavior(
        str(base),
        [str(ft32)],
        PROMPTS,
        labels=["ft"],
        curve=(1.0,),
        device="cpu",
        random_control=False,
        masks={"update": mask_source("update"), "M": masks},
    )
    s = rep.summary.set_index("experiment")
    assert s.loc["update/inside", "kl_forward"] == 0.0 and s.loc["M/inside", "kl_forward"] == 0.0
    assert s.loc["update/inside", "fraction_reverted"] == 1.0 and rep.curves["kl_forward"].tolist() == [0.0, 0.0]
    assert any("mixed precision" in n and "bfloat16 in the base and float32 in the finetune" in n for n in rep.notes)

    # fp32 base (values bf16 cannot hold), a bf16 finetune of it with some entries moved
    b32 = make_tiny_llama(tmp_path / "b32", seed=3, dtype=torch.float32)
    sd_b = read_state_dict(b32)
    name = "model.layers.0.mlp.down_proj.weight"
    sd_f = {k: v.to(torch.bfloat16) for k, v in sd_b.items()}
    half = torch.rand(sd_f[name].shape, generator=torch.Generator().manual_seed(5)) < 0.5
    sd_f[name] = torch.where(half, bf16_step(sd_f[name], 3), sd_f[name])
    f16 = _copy_tokenizer(b32, write_folder(tmp_path / "f16", sd_f, b32, dtype="bfloat16"))
    builder = ModelBuilder(str(b32), str(f16), "cpu")
    ups = update_masks(builder)
    cast = {k: v.to(torch.bfloat16) for k, v in sd_b.items()}
    want = {k: (cast[k].view(torch.int16) != sd_f[k].view(torch.int16)) for k in sd_b}  # an independent mask
    assert all(torch.equal(ups[k], want[k]) for k in sd_b) and int(want[name].sum()) == int(half.sum())
    assert builder.build(mask_selector(ups, True)) == 1.0
    params = {k: p for k, p in builder.model.named_parameters()}
    assert all(torch.equal(params[k], cast[k].float()) for k in sd_b)  # every entry: the base cast to bf16
    some = {name: half & (torch.arange(half.numel()).view(half.shape) % 2 == 0)}
    assert builder.build(mask_selector(some, True)) == pytest.approx(int(some[name].sum()) / int(half.sum()))
    assert torch.equal(params[name], torch.where(some[name], cast[name], sd_f[name]).float())
    # the behaviour of the reverted model is that of the base cast to bf16, saved by hand
    by_hand = _copy_tokenizer(b32, write_folder(tmp_path / "cast", cast, b32, dtype="bfloat16"))
    rep = behavior(
        str(b32),
        [str(f16)],
        PROMPTS,
        labels=["ft"],
        curve=(1.0,),
        device="cpu",
        random_control=False,
        masks={"update": mask_source("update")},
    )
    ref = behavior(str(b32), [str(by_hand)], PROMPTS, labels=["ft"], curve=None, device="cpu")
    want_kl = ref.summary.set_index("experiment").loc["finetuned", "kl_forward"]
    assert want_kl > 0 and rep.summary.set_index("experiment").loc["update/inside", "kl_forward"] == want_kl
    assert rep.curves.set_index("order").loc["abs_delta", "kl_forward"] == want_kl


def test_a_resized_vocabulary_is_refused_naming_the_tensor_and_both_shapes(planted, tmp_path, monkeypatch):
    """A finetune whose embedding and head have more or fewer rows than the base's ended in a RuntimeError
    traceback when the model was rewritten. The KL compares next-token distributions over one vocabulary: one
    line names the tensor and both shapes, from the headers, before any model is loaded."""
    from transformers import AutoModelForCausalLM

    from subnetviz.errors import AlignmentError

    base, ft, _ = planted
    sd = read_state_dict(ft)
    vocab = sd["model.embed_tokens.weight"].shape[0]

    def never(*a, **k):
        raise AssertionError("a model was loaded")

    for rows in (vocab + 2, vocab - 2):
        resized = dict(sd)
        for k in ("model.embed_tokens.weight", "lm_head.weight"):
            resized[k] = torch.cat([sd[k], sd[k][:2]])[:rows].clone()
        folder = _copy_tokenizer(ft, write_folder(tmp_path / f"v{rows}", resized, ft, vocab_size=rows))
        with monkeypatch.context() as m:
            m.setattr(AutoModelForCausalLM, "from_pretrained", never)
            with pytest.raises(AlignmentError) as exc:
                behavior(str(base), [str(folder)], PROMPTS, labels=["ft"], curve=(0.5,), device="cpu")
        msg = str(exc.value)
        tensor = r"'(model\.embed_tokens|lm_head)\.weight'"
        pattern = rf"^{re.escape(str(folder))}: {tensor} has shape \({rows}, 32\), in the base {re.escape(str(base))} "
        pattern += rf"\({vocab}, 32\): a resized vocabulary"
        assert "\n" not in msg and re.match(pattern, msg), msg


def test_prompts_longer_than_the_context_are_cut_to_it(planted, tmp_path):
    """A GPT-2 of 32 positions and a 41-token prompt: an IndexError traceback; a RoPE model ran past its context
    with no word. Prompts are cut to the models' context (a cut answer is not scored), with a note; the KLs of
    the cut prompt are those of its first 32 tokens given alone."""
    from tests.models import char_tokenizer, save_model, tiny_model

    tok = char_tokenizer()
    ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    g2 = save_model(tiny_model("gpt2", seed=0, vocab=len(tok), positions=32, **ids), tmp_path / "g2", tokenizer=tok)
    sd = read_state_dict(g2)
    sd["transformer.h.0.mlp.c_fc.weight"] = bf16_step(sd["transformer.h.0.mlp.c_fc.weight"], 30)
    g2ft = _copy_tokenizer(g2, write_folder(tmp_path / "g2ft", sd, g2))
    long = Prompt("1+" * 20 + "1=", "20")  # 41 + 2 tokens
    head = Prompt(long.text[:32])  # what is left of it
    base, ft, _ = planted  # a Llama (RoPE) of 32 positions
    for pair in ((g2, g2ft), (base, ft)):
        rep = behavior(str(pair[0]), [str(pair[1])], [PROMPTS[0], long], labels=["ft"], curve=None, device="cpu")
        ref = behavior(str(pair[0]), [str(pair[1])], [PROMPTS[0], head], labels=["ft"], curve=None, device="cpu")
        assert rep.notes[0] == (
            "1 of 2 prompt(s) longer than the model's context of 32 positions cut to their first 32 tokens; "
            "1 of them lost answer tokens (not scored for accuracy)."
        )
        assert (rep.tokens.groupby("prompt").size() == [len(tok("12+30=42")["input_ids"]), 32]).all()
        assert rep.tokens["kl_forward"].tolist() == ref.tokens["kl_forward"].tolist()
        assert rep.prompts["correct"].isna().tolist() == [False, True]


def test_a_prompt_of_absurd_length_is_refused_before_it_is_tokenized(tmp_path, monkeypatch):
    """A 400,000-character prompt ran for more than 10 CPU-minutes: a prompt and answer past MAX_PROMPT_CHARS
    is refused naming the file, the line and the cap, before anything is tokenized."""
    from subnetviz.analysis import behavior_data
    from subnetviz.errors import ConfigError

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "1+1="}) + "\n" + json.dumps({"prompt": "1+" * 300, "answer": "2"}) + "\n")
    monkeypatch.setattr(behavior_data, "MAX_PROMPT_CHARS", 500)
    with pytest.raises(ConfigError, match=r"p\.jsonl, line 2: a prompt and answer of 601 characters; at most 500"):
        read_prompts(path)


def test_update_and_topk_masks_are_named_by_their_spec(planted, tmp_path, capsys):
    """``--mask topk:0.5`` was labelled 'topk:0' (the spec's "stem"), and topk:0.5 with topk:0.25 was refused as
    two masks of one name; a file keeps its name."""
    from subnetviz.__main__ import main
    from subnetviz.masks import MaskSet, save_mask_set

    base, ft, masks = planted
    data = write_addition_data(tmp_path / "data", n=2)
    save_mask_set(tmp_path / "planted.safetensors", MaskSet(masks))
    out = tmp_path / "out"
    args = ["behavior", str(base), str(ft), "--prompts", str(data["eval"]), "--device", "cpu", "--no-random"]
    specs = ["topk:0.5", "topk:0.25", str(tmp_path / "planted.safetensors"), "update"]
    rc = main([*args, "--out", str(out), "--curve", *(x for spec in specs for x in ("--mask", spec))])
    assert rc == 0, capsys.readouterr().err
    model = json.loads((out / "behavior.json").read_text())["models"]["ft"]
    assert set(model["reverts"]) == {"topk:0.5", "topk:0.25", "planted", "update"}
    assert abs(model["reverts"]["topk:0.25"]["inside"]["fraction_reverted"] - 0.25) < 0.1
    assert abs(model["reverts"]["topk:0.5"]["inside"]["fraction_reverted"] - 0.5) < 0.1


def test_a_torch_save_mask_is_read_as_mask_import_reads_it(planted, tmp_path, capsys):
    """``--mask x=m.pt`` (a torch.save mask, which ``mask import`` reads) said "not a readable safetensors mask
    file ... header too large". It is read (nothing written beside it) and is the planted mask."""
    from subnetviz.__main__ import main

    base, ft, masks = planted
    data = write_addition_data(tmp_path / "data", n=2)
    (tmp_path / "m").mkdir()
    torch.save(dict(masks), tmp_path / "m" / "m.pt")
    out = tmp_path / "out"
    args = ["behavior", str(base), str(ft), "--prompts", str(data["eval"]), "--device", "cpu", "--no-random"]
    rc = main([*args, "--out", str(out), "--curve", "--mask", f"x={tmp_path / 'm' / 'm.pt'}"])
    assert rc == 0, capsys.readouterr().err
    model = json.loads((out / "behavior.json").read_text())["models"]["ft"]
    assert model["reverts"]["x"]["inside"]["kl_forward"] == 0.0 and model["kl_forward"] > 0
    assert model["reverts"]["x"]["inside"]["fraction_reverted"] == 1.0
    assert [f.name for f in (tmp_path / "m").iterdir()] == ["m.pt"]


def test_a_curve_fraction_given_twice_is_run_once(planted, tmp_path):
    """``--curve 0.5 0.5`` computed the point twice and wrote duplicate rows to curves.csv."""
    from subnetviz.analysis.behavior import planned_passes

    base, ft, _ = planted
    rep = behavior(str(base), [str(ft)], PROMPTS, labels=["ft"], curve=(0.5, 1.0, 0.5), device="cpu")
    assert rep.curves[["order", "fraction"]].values.tolist() == [
        ["abs_delta", 0.5],
        ["random", 0.5],
        ["abs_delta", 1.0],
        ["random", 1.0],
    ]
    prompts = write_addition_data(tmp_path, n=2)["eval"]
    cfg = {"base": str(base), "finetuned": [str(ft)], "prompts": str(prompts), "curve": [0.5, 0.5]}
    assert planned_passes(cfg)[1] == 1 + 2


def test_blank_labels_and_labels_of_one_mask_file_are_refused_before_any_work(planted, tmp_path, capsys, monkeypatch):
    """``analyze --labels '' b`` blamed the cache ('' has 0 parameters) or wrote ``masks/.safetensors``; labels
    'a/b' and 'a_b' (or 'x y' and 'x_y') wrote one mask file for two models. Refused in one line before any
    work; ``behavior --labels ' '`` too (a row with no name)."""
    from subnetviz.__main__ import main
    from subnetviz.analysis import behavior as bh
    from subnetviz.analysis import updates

    def never(*a, **k):
        raise AssertionError("the analysis started")

    for fn in ("analyze_updates", "cached_analysis"):
        monkeypatch.setattr(updates, fn, never)
    monkeypatch.setattr(bh, "run_config", never)
    base, ft, _ = planted
    for labels, said in (
        (["", "b"], "empty label(s) ['']"),
        (["  ", "b"], "empty label(s) [' "),
        (["a/b", "a_b"], "'a/b' and 'a_b' would write one mask file (masks/a_b.safetensors)"),
        (["x y", "x_y"], "'x y' and 'x_y' would write one mask file"),
    ):
        out = tmp_path / "out"
        rc = main(["analyze", str(base), str(ft), str(ft), "--out", str(out), "--labels", *labels])
        err = capsys.readouterr().err
        assert rc == 2 and said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    rc = main(["behavior", str(base), str(ft), "--out", str(tmp_path / "b"), "--labels", " "])
    err = capsys.readouterr().err
    assert rc == 2 and "empty label(s) [' ']" in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(Exception, match="empty label"):
        bh._labels(["", "x"], ["a", "b"], ["p"])


# Last in the module: the app sets SUBNETVIZ_ENFORCE_ROOTS for the rest of the module (app_env restores it).
@pytest.mark.slow
def test_behaviour_page_renders(app_env):
    from tests.app_fixtures import decode, open_page, plotly_specs

    at = open_page("behavior")
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    specs = plotly_specs(at)
    assert specs and all(s["data"] for s in specs)
    # The zoo's mask is grpo-s0's exact update mask: reverting inside it restores the base, KL exactly 0.
    bars = next(s for s in specs if s["data"][0]["type"] == "bar")
    grpo = next(t for t in bars["data"] if t["name"] == "grpo-s0")
    y = dict(zip(grpo["x"], decode(grpo["y"]).tolist(), strict=True))
    assert y["finetuned"] > 0 and y["masks/grpo-seed0/inside"] == 0.0, y
    # The measure is named on the radio as on the charts, and a shared URL carries it.
    from subnetviz.figures.behavior import MEASURE

    acc = open_page("behavior", bh_value=MEASURE["accuracy"])
    assert not acc.exception, [e.message for e in acc.exception]
    radio = acc.radio(key="bh_value")
    assert radio.value == "accuracy" and radio.options == list(MEASURE.values())
    bars = next(s for s in plotly_specs(acc) if s["data"][0]["type"] == "bar")
    assert bars["layout"]["title"]["text"].startswith(MEASURE["accuracy"])
    # Each tab has its own control: Per prompt spreads a KL (a prompt's accuracy is one right-or-wrong), and
    # Per token draws both KLs with no measure to choose.
    spread = open_page("behavior", bh_tab="Per prompt", bh_kl=MEASURE["kl_reverse"])
    assert not spread.exception, [e.message for e in spread.exception]
    (radio,) = spread.radio  # (the Results picker beside it is a select box)
    assert radio.key == "bh_kl" and radio.options == [MEASURE["kl_forward"], MEASURE["kl_reverse"]]
    (box,) = plotly_specs(spread)
    assert box["layout"]["title"]["text"] == "Per-prompt mean reverse KL(π ‖ π_base)"
    tokens = open_page("behavior", bh_tab="Per token")
    assert not tokens.exception and not tokens.radio


@pytest.mark.slow
def test_behaviour_page_names_a_finished_job_and_shows_its_results(app_env):
    """A behaviour job's results are offered by the run's name ("run name · id", not "run id"), and choosing
    it shows that run's numbers (its one model and prompt set, not the page's own computation)."""
    import shutil

    from subnetviz.analysis.behavior import run_config, write_behavior
    from subnetviz.analysis.behavior_data import zoo_prompt_files
    from subnetviz.demo import load_zoo
    from subnetviz.jobs.runner import JobRunner
    from tests.app_fixtures import add_finished_run, decode, open_page, plotly_specs

    zoo, runner = load_zoo(), JobRunner()
    cfg = {"kind": "behavior", "base": str(zoo.base), "finetuned": [str(zoo.member_path("dpo"))], "labels": ["dpo"]}
    report = run_config({**cfg, "prompts": [str(zoo_prompt_files()[0])], "limit": 4, "curve": []})
    run_id = "behaviour-job-of-dpo"
    run_dir = add_finished_run(runner, run_id, "behavior", "dpo on 4 prompts", cfg)
    (run_dir / "outputs").mkdir(parents=True)
    write_behavior(report, run_dir / "outputs")
    label = f"run dpo on 4 prompts · {run_id}"
    try:
        at = open_page("behavior", bh_source=label)
    finally:  # the app home is shared by the module's other tests
        with runner.registry.transaction() as con:
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        shutil.rmtree(run_dir)
    assert not at.exception and not at.error, [e.value for e in at.error]
    source = at.selectbox(key="bh_source")
    assert label in source.options and source.value == label
    bars = next(s for s in plotly_specs(at) if s["data"][0]["type"] == "bar")
    assert [t["name"] for t in bars["data"]] == ["dpo"]
    want = report.summary.set_index("experiment").loc["finetuned", "kl_forward"]
    got = dict(zip(bars["data"][0]["x"], decode(bars["data"][0]["y"]).tolist(), strict=True))["finetuned"]
    assert got == pytest.approx(want, rel=1e-6)


def test_models_too_large_for_memory_are_refused_before_loading(planted, monkeypatch, app_env, tmp_path):
    """Behaviour, the bigram analysis and the accuracy load whole models in float32, the pages' ones in the
    server's process: a model larger than the memory available would be killed with the server and every
    visitor's session. The need (from the headers alone) is checked against 80 % of MemAvailable first;
    nothing is loaded. The page says it in its main area."""
    from transformers import AutoModelForCausalLM

    from subnetviz import config
    from subnetviz.checkpoints.sources import float32_bytes
    from subnetviz.errors import ConfigError
    from subnetviz.training.evaluate import evaluate_accuracy
    from tests.app_fixtures import open_page

    base, ft, _ = planted
    assert float32_bytes(base) == 4 * sum(t.numel() for t in read_state_dict(base).values())

    def never(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", never)
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 2 * float32_bytes(base))  # < two models
    with pytest.raises(
        ConfigError, match=r"^Behaviour .* needs about [\d.]+ MiB of memory; this machine has [\d.]+ MiB available"
    ):
        behavior(str(base), [str(ft)], PROMPTS, labels=["ft"], curve=None, device="cpu")
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 8 * 2**30)  # a small model fits: it loads
    with pytest.raises(AssertionError, match="a model was loaded"):
        behavior(str(base), [str(ft)], PROMPTS, labels=["ft"], curve=None, device="cpu")
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 1000)
    data = write_addition_data(tmp_path, 4)["eval"]
    with pytest.raises(ConfigError, match=r"^Accuracy of ft \(the model in float32\) needs about [\d.]+ MiB of memory"):
        evaluate_accuracy(ft, data)
    from subnetviz.bigram.job import analyse_mask_file

    with pytest.raises(ConfigError, match=r"^The bigram analysis \(the model in float32, twice\) needs about"):
        analyse_mask_file(str(base), str(tmp_path / "never-read.safetensors"))
    at = open_page("behavior", bh_limit="256")  # not computed by any other test: no cached result to show
    assert not at.exception, [e.message for e in at.exception]
    assert any("Refused before loading" in e.value for e in at.error), [e.value for e in at.error]


def test_a_finished_run_whose_tables_are_gone_is_one_line(tmp_path):
    """A succeeded behaviour run whose outputs were deleted: the page showed the generic "a bug" notice
    (FileNotFoundError); now a one-line refusal naming what is missing."""
    from subnetviz.analysis.behavior import read_behavior
    from subnetviz.errors import ConfigError

    (tmp_path / "summary.csv").write_text("model\nx\n")
    with pytest.raises(ConfigError, match=r"no tokens\.csv, prompts\.csv, curves\.csv; this is not a finished"):
        read_behavior(tmp_path)


@pytest.mark.parametrize("kind", ["mixtral", "qwen3_moe", "qwen2_moe"])
def test_behaviour_reverts_each_stored_expert_into_its_place_in_the_packed_model(kind, tmp_path):
    """transformers 5 packs the experts a release stores one by one (Mixtral's block_sparse_moe.experts.N.w1/w3/w2,
    Qwen's mlp.experts.N.gate/up/down_proj) into one parameter per layer: behaviour refused every
    such model ('model parameters without a tensor in both checkpoints'). A finetune that moved every entry of
    one expert: reverting its update mask gives the base exactly (KL 0: each stored tensor went back into its
    own slice), reverting outside it the finetune."""
    from subnetviz.analysis.revert import mask_source
    from tests.models import char_tokenizer, save_model
    from tests.unit.test_families import _build

    base = save_model(_build(kind), tmp_path / "base", tokenizer=char_tokenizer())
    sd = read_state_dict(base)
    layer = max(int(n.split(".")[2]) for n in sd if ".experts.1." in n)
    moved = [n for n in sd if f"layers.{layer}." in n and ".experts.1." in n]
    assert len(moved) == 3, moved
    for n in moved:
        sd[n] = bf16_step(sd[n], 200)
    ft = write_folder(tmp_path / "ft", sd, config_from=base)
    for f in base.glob("tokenizer*"):
        (ft / f.name).write_bytes(f.read_bytes())
    rep = behavior(
        str(base),
        [str(ft)],
        PROMPTS,
        masks={"upd": mask_source("update")},
        random_control=False,
        curve=None,
        device="cpu",
    )
    s = rep.summary.set_index("experiment")
    assert s.loc["finetuned", "kl_forward"] > 0
    assert s.loc["upd/inside", "kl_forward"] == 0.0 and s.loc["upd/inside", "fraction_reverted"] == 1.0
    assert s.loc["upd/outside", "kl_forward"] == s.loc["finetuned", "kl_forward"]


def test_buffers_the_model_computes_are_not_written_from_an_older_checkpoint(planted, tmp_path):
    """Behaviour writes the buffers a checkpoint stores and the model loads (DeepSeek-V3's expert bias), not those
    the model computes: an older checkpoint storing its rotary inverse frequencies in bf16 (transformers never loads
    them) changed the finetune's logits from the model transformers builds."""
    from transformers import AutoModelForCausalLM

    from subnetviz.analysis.behavior_data import encode, logits_of
    from subnetviz.analysis.revert import ModelBuilder
    from subnetviz.checkpoints.models import load_tokenizer

    base, ft, _ = planted
    model = AutoModelForCausalLM.from_pretrained(str(ft), dtype=torch.float32).eval()
    inv = dict(model.named_buffers())["model.rotary_emb.inv_freq"]
    stored = {n: t for n, t in read_state_dict(ft).items()}
    stored["model.rotary_emb.inv_freq"] = inv.to(torch.bfloat16)  # as a conversion script kept it
    old_ft = write_folder(tmp_path / "ft", stored, config_from=ft)
    for f in ft.glob("tokenizer*"):
        shutil.copy(f, old_ft / f.name)
    old_base = write_folder(
        tmp_path / "base",
        {**read_state_dict(base), "model.rotary_emb.inv_freq": stored["model.rotary_emb.inv_freq"]},
        config_from=base,
    )
    assert not torch.equal(inv, stored["model.rotary_emb.inv_freq"].float())  # bf16 rounds them
    builder = ModelBuilder(str(old_base), str(old_ft), "cpu")
    builder.build(None)
    batch = encode(load_tokenizer(str(ft)), PROMPTS)
    assert torch.equal(logits_of(builder.model, batch, "cpu"), logits_of(model, batch, "cpu"))


def test_a_tied_finetune_of_an_untied_base_reverts_its_embedding_to_the_bases_embedding(tmp_path, monkeypatch):
    """A finetune that ties its head to its embedding, against a base that stores both: the finetune's one
    tensor is lined up twice (as the embedding, and as the base's head); reverting writes the base's embedding
    into it, whatever order the alignment lists the two in (the later one was taken: the base's head)."""
    from subnetviz.analysis import revert

    tok_base = make_tiny_llama(tmp_path / "src", hidden=16, intermediate=32)
    sd = read_state_dict(tok_base)
    emb = sd["model.embed_tokens.weight"]
    base = write_folder(
        tmp_path / "base", {**sd, "lm_head.weight": bf16_step(emb, 5)}, tok_base, tie_word_embeddings=False
    )
    tied = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    tied["model.embed_tokens.weight"] = bf16_step(emb, 2)
    ft = write_folder(tmp_path / "ft", tied, tok_base, tie_word_embeddings=True)
    for f in tok_base.glob("tokenizer*"):
        shutil.copy(f, ft / f.name)
    real = revert.aligned_pair
    for order in (1, -1):  # both orders of the alignment
        monkeypatch.setattr(
            revert, "aligned_pair", lambda b, f, o=order: (*real(b, f)[:2], dict(list(real(b, f)[2].items())[::o]))
        )
        builder = revert.ModelBuilder(str(base), str(ft), "cpu")
        assert builder.build(revert.mask_selector({}, False)) > 0  # everything reverted
        got = builder.model.get_input_embeddings().weight.detach().to(torch.bfloat16)
        assert torch.equal(got, emb), order


def test_a_finetune_with_a_tokenizer_of_its_own_is_noted(planted, tmp_path):
    """Every model is given the base's tokens. A finetune whose own tokenizer encodes the prompts otherwise (here
    the ids of "1" and "2" swapped) was scored on the base's encoding without a word (behaviour review 4); one whose
    tokenizer is the base's, or that has none, gets no note."""
    base, ft, _ = planted
    other = tmp_path / "swapped"
    shutil.copytree(ft, other)
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["1"], vocab["2"] = vocab["2"], vocab["1"]
    (other / "tokenizer.json").write_text(json.dumps(spec))
    bare = tmp_path / "bare"
    shutil.copytree(ft, bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    rep = behavior(
        str(base), [str(ft), str(other), str(bare)], PROMPTS, labels=["ft", "swapped", "bare"], curve=None,
        random_control=False, device="cpu",
    )  # fmt: skip
    n = sum(("1" in p.text + (p.answer or "")) or ("2" in p.text + (p.answer or "")) for p in PROMPTS)
    assert 0 < n
    notes = [x for x in rep.notes if "its own tokenizer" in x]
    assert notes == [
        f"swapped: its own tokenizer encodes {n} of {len(PROMPTS)} prompt(s) otherwise than the base's (first: prompt "
        f"{next(i for i, p in enumerate(PROMPTS) if set('12') & set(p.text + (p.answer or '')))}); every model is "
        "given the base's tokens, so its numbers are those of the base's encoding."
    ]


def test_a_finetune_saved_with_its_base_s_tokenizer_is_not_loaded_again(planted, tmp_path, monkeypatch):
    """The note's check read and encoded every prompt with each finetune's own tokenizer: 40 % more time for one
    demo-zoo finetune, whose files are the base's but for keys TRL's save adds (padding_side, ...). Files that are
    the base's, so, are not loaded; a real difference still is (the swapped vocabulary of the test above)."""
    import json

    from transformers import AutoTokenizer

    import subnetviz.checkpoints.models as models
    from subnetviz.analysis.behavior import encode, tokenizer_note

    base, ft, _ = planted
    saved = tmp_path / "saved"
    shutil.copytree(ft, saved)
    conf = json.loads((saved / "tokenizer_config.json").read_text())
    (saved / "tokenizer_config.json").write_text(json.dumps({**conf, "padding_side": "left", "is_local": True}))
    tok = AutoTokenizer.from_pretrained(str(base))
    encoded = encode(tok, PROMPTS)

    def no_load(spec):
        raise AssertionError(f"{spec}: loaded")

    monkeypatch.setattr(models, "load_tokenizer", no_load)
    for folder in (ft, saved):
        assert tokenizer_note(str(folder), tok, PROMPTS, encoded, base=str(base)) is None
    vocab = json.loads((saved / "tokenizer.json").read_text())
    vocab["model"]["vocab"]["1"], vocab["model"]["vocab"]["2"] = (
        vocab["model"]["vocab"]["2"],
        vocab["model"]["vocab"]["1"],
    )
    (saved / "tokenizer.json").write_text(json.dumps(vocab))
    with pytest.raises(AssertionError, match="loaded"):
        tokenizer_note(str(saved), tok, PROMPTS, encoded, base=str(base))
