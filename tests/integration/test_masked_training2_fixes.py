"""Masked training, second review: fixes.

- Bases that store buffers (GPT-2's ``h.N.attn.bias``, Pythia's ``attention.bias`` / ``masked_bias``, Llama-2-era
  ``rotary_emb.inv_freq``): transformers 5 does not register them, so the model was saved without them (and, for
  GPT-2, under the model's ``transformer.`` names) and every run, masked or full, failed after training with "hold
  different tensors". Now the saved model (and each ``step-N`` checkpoint) holds exactly the base's names, the
  buffers byte for byte, every entry outside the mask bit-identical (read back here from the files), and it loads.
- ZeRO-2 / ZeRO-3 weight decay moved parameters no gradient reaches (a vision-language model's vision tower in a
  text run), which AdamW and the single-process run leave alone: tests/integration/test_sharded.py (the
  multi-process tests run together, on one worker).
- ``polynomial`` with a learning rate at or below transformers' lr_end (1e-7) ended in a traceback once the model
  had loaded; ``constant_with_warmup`` (no warmup field) ran as ``constant``; a DPO config's ``beta: 0`` was
  recorded as 0 while it trained at 0.1: now refused, refused, and recorded as 0.1.
- ``train --config`` with a byte that is not UTF-8 or an integer of more than 4300 digits was a traceback, and a
  folder read "no such config file": one line each.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from subnetviz.errors import ConfigError
from subnetviz.masks import MaskSet, save_mask_set
from subnetviz.training.config import TrainConfig
from subnetviz.training.run import train
from tests.models import char_tokenizer, tiny_model
from tests.training_fixtures import write_addition_data

ROOT = Path(__file__).resolve().parents[2]


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Entry by entry: the same stored bytes (a float's bit pattern; a bool's value)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype == torch.bool or a.element_size() == 1:
        return a == b
    as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return a.view(as_int) == b.view(as_int)


def _add_tensors(folder: Path, extra: dict[str, torch.Tensor], strip: str = "") -> None:
    """Rewrite ``folder``'s weights with ``extra`` added (and ``strip`` taken off every name), as older saves hold."""
    f = folder / "model.safetensors"
    sd = {k.removeprefix(strip): v for k, v in load_file(str(f)).items()}
    save_file({**sd, **extra}, str(f), metadata={"format": "pt"})


def _gpt2_hub_base(root: Path) -> tuple[Path, list[str]]:
    """A bf16 GPT-2 stored as openai-community/gpt2 is: no ``transformer.`` prefix, and each layer's float32 causal
    mask ``h.N.attn.bias`` (1, 1, P, P); returns the folder and the buffer names."""
    tok = char_tokenizer()
    model = tiny_model("gpt2", vocab=len(tok), tie=True)
    base = root / "gpt2"
    model.to(torch.bfloat16).save_pretrained(base)
    tok.save_pretrained(base)
    n = model.config.n_positions
    buffers = {f"h.{i}.attn.bias": torch.tril(torch.ones(1, 1, n, n)) for i in range(model.config.n_layer)}
    _add_tensors(base, buffers, strip="transformer.")
    return base, sorted(buffers)


def _check_saved_like_base(base: Path, out: Path, buffers: list[str], masks: dict | None) -> int:
    """The saved model holds the base's names and only those, every buffer byte for byte, and (with ``masks``,
    keyed by the base's names) no entry outside the mask changed; returns how many entries changed inside."""
    a, b = _tensors(base), _tensors(out)
    assert sorted(b) == sorted(a)
    for name in buffers:
        assert bool(_same_bits(a[name], b[name]).all()), name
    changed_in = 0
    for name in a:
        same = _same_bits(a[name], b[name])
        if masks is not None and name in masks:
            assert bool(same[~masks[name]].all()), name
            changed_in += int((~same[masks[name]]).sum())
        elif masks is not None or name in buffers:
            assert bool(same.all()), name
        else:
            changed_in += int((~same).sum())
    return changed_in


def test_a_gpt2_base_with_stored_causal_masks_trains_masked_and_is_saved_under_its_names(tmp_path):
    """Before: "MaskError ... hold different tensors, e.g. ['h.0.attn.bias', 'h.1.attn.bias']" after training, the
    model kept unpublished with ``transformer.``-prefixed names and no buffers. The step-1 checkpoint (the same
    save) is checked too, and the published model loads and runs."""
    from transformers import AutoModelForCausalLM

    base, buffers = _gpt2_hub_base(tmp_path)
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(t.shape, generator=g) < 0.5 for n, t in _tensors(base).items() if n not in buffers}
    mask_file = save_mask_set(tmp_path / "half.safetensors", MaskSet(masks, {"method": "test: random"}))
    data = write_addition_data(tmp_path / "data", n=8)
    out = tmp_path / "out"
    cfg = TrainConfig(
        algorithm="sft", base=str(base), data=str(data["sft"]), output_dir=str(out), mask=str(mask_file),
        steps=2, learning_rate=1e-2, batch_size=8, bf16=False, save_steps=[1],
    )  # fmt: skip
    res = train(cfg)
    assert res.mask_check["outside_mask_identical"] and res.mask_check["changed_outside"] == 0
    changed = _check_saved_like_base(base, out, buffers, masks)  # independent of the run's own check
    assert changed == res.mask_check["changed_inside"] > 0
    assert _check_saved_like_base(base, out / "checkpoints" / "step-1", buffers, masks) > 0
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_a_full_run_on_a_base_with_stored_buffers_is_published_with_them(tmp_path, family):
    """Pythia's bool ``attention.bias`` and 0-d ``masked_bias`` (a GPT-NeoX base is saved through transformers'
    own renaming, its ``embed_out.weight``), and a Llama-2-era ``rotary_emb.inv_freq``: every run on either
    failed after training."""
    tok = char_tokenizer()
    model = tiny_model(family, vocab=len(tok))
    base = tmp_path / family
    model.to(torch.bfloat16).save_pretrained(base)
    tok.save_pretrained(base)
    c = model.config
    if family == "gpt_neox":
        p = c.max_position_embeddings
        extra = {}
        for i in range(c.num_hidden_layers):
            extra[f"gpt_neox.layers.{i}.attention.bias"] = torch.tril(torch.ones(1, 1, p, p, dtype=torch.bool))
            extra[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
    else:
        hd = c.hidden_size // c.num_attention_heads
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        extra = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": inv.clone() for i in range(c.num_hidden_layers)}
    _add_tensors(base, extra)
    data = write_addition_data(tmp_path / "data", n=8)
    out = tmp_path / "out"
    cfg = TrainConfig(
        algorithm="sft", base=str(base), data=str(data["sft"]), output_dir=str(out),
        steps=1, learning_rate=1e-2, batch_size=4, bf16=False,
    )  # fmt: skip
    res = train(cfg)
    assert res.mask_check["outside_mask_identical"]
    assert _check_saved_like_base(base, out, sorted(extra), None) > 0


# --- config checks --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from tests.models import make_tiny_llama

    root = tmp_path_factory.mktemp("cfg")
    return {"base": make_tiny_llama(root / "base"), "data": write_addition_data(root / "data", n=8), "root": root}


def _cfg(tiny_base, out: Path, **kw) -> TrainConfig:
    algorithm = kw.pop("algorithm", "sft")
    return TrainConfig(
        algorithm=algorithm, base=str(tiny_base["base"]), data=str(tiny_base["data"][algorithm]),
        output_dir=str(out), steps=1, batch_size=4, bf16=False, **kw,
    )  # fmt: skip


def test_polynomial_with_a_learning_rate_at_or_below_lr_end_is_refused_in_one_line(tiny_base, tmp_path, capsys):
    """Before: the model loaded, then "ValueError: lr_end (1e-07) must be smaller than initial lr (5e-08)" in a
    20-line traceback, exit 1."""
    from subnetviz.jobs.worker import main_train

    for lr in (5e-8, 1e-7):
        with pytest.raises(ConfigError, match=r"'polynomial' decays to transformers' lr_end 1e-07.*got [0-9.e-]+;"):
            _cfg(tiny_base, tmp_path / "out", learning_rate=lr, lr_scheduler_type="polynomial").validate()
    _cfg(tiny_base, tmp_path / "out", learning_rate=2e-7, lr_scheduler_type="polynomial").validate()  # above it
    _cfg(tiny_base, tmp_path / "out", learning_rate=5e-8, lr_scheduler_type="linear").validate()  # decays to 0
    (tmp_path / "c.json").write_text(
        json.dumps(_cfg(tiny_base, tmp_path / "out", learning_rate=5e-8, lr_scheduler_type="polynomial").to_dict())
    )
    assert main_train(str(tmp_path / "c.json")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lr_end 1e-07" in err[0] and not (tmp_path / "out").exists()


def test_constant_with_warmup_is_refused_as_the_constant_it_would_run_as(tiny_base, tmp_path):
    with pytest.raises(ConfigError, match=r"'constant_with_warmup' is not supported: .* no warmup, .*'constant'"):
        _cfg(tiny_base, tmp_path / "out", lr_scheduler_type="constant_with_warmup").validate()


def test_a_dpo_beta_of_zero_is_recorded_as_the_point_one_it_trains_at(tiny_base, tmp_path):
    """TRL's DPO sigmoid loss at beta 0 is log 2 whatever the model (no gradient), so 0 stands for TRL's 0.1, the
    value passed to DPOConfig; train_config.json said 0.0. GRPO's 0 (no KL term) stays 0."""
    import trl

    seen = {}
    original = trl.DPOConfig.__post_init__

    def spy(self):
        seen["beta"] = self.beta
        original(self)

    out = tmp_path / "dpo"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trl.DPOConfig, "__post_init__", spy)
        train(_cfg(tiny_base, out, algorithm="dpo", beta=0, learning_rate=1e-3))
    recorded = json.loads((out / "train_config.json").read_text())["beta"]
    assert recorded == seen["beta"] == 0.1
    assert TrainConfig.from_dict(json.loads((out / "train_config.json").read_text())).beta == 0.1
    assert _cfg(tiny_base, tmp_path / "g", algorithm="grpo", beta=0).beta == 0
    with pytest.raises(ConfigError, match="beta must be a finite number"):  # a bool is no beta, not 0.1
        _cfg(tiny_base, tmp_path / "b", algorithm="dpo", beta=False).validate()


@pytest.mark.parametrize("run_dir", [False, True])
def test_an_unreadable_config_file_is_one_line(tmp_path, capsys, run_dir):
    """A byte that is not UTF-8 (UnicodeDecodeError) or an integer of more than 4300 digits (ValueError) was a
    traceback; a folder read "no such config file"."""
    from subnetviz.jobs.worker import main_train

    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"algorithm": "sft\xff"}')
    big = tmp_path / "big.json"
    big.write_text('{"steps": ' + "1" * 5000 + "}")
    folder = tmp_path / "folder.json"
    folder.mkdir()
    expected = {
        bad: r"bad\.json: not JSON: byte 0xff at offset 18 is not UTF-8\.",
        big: r"big\.json: holds an integer of more than 4,300 digits, which no training config needs\.",
        folder: r"folder\.json: a folder, not a training config file\.",
    }
    for path, said in expected.items():
        if not run_dir:
            with pytest.raises(ConfigError, match=said):
                TrainConfig.from_file(path)
        rd = tmp_path / f"rd-{path.stem}"
        assert main_train(str(path), run_dir=str(rd) if run_dir else None) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
        assert re.search(said, err[0]) and not rd.exists(), err
