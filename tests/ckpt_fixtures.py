"""Tiny checkpoints on disk for the checkpoint, naming, sparsity, mask and CLI tests (no network).

- :func:`ckpt_zoo` (session fixture): random tiny Llama (untied head, *sharded*), GPT-2 (tied,
  Conv1D), GPT-NeoX (Pythia-like, fused interleaved QKV) and BERT folders (built by
  :mod:`tests.models`, written by ``save_pretrained`` in bf16); a single ``.safetensors`` file; a legacy ``.bin`` state dict; a
  malicious ``.bin`` whose pickle would create a sentinel file when unpickled freely.
- :func:`read_state_dict` / :func:`write_folder`: a folder's tensors as a dict, and back (one
  ``model.safetensors`` + the source's ``config.json``), for planting changes into a copy.
- :func:`bf16_step`: move bf16 values by a whole number of ULPs (the planted-change primitive).
- :func:`fake_hub_cache`: the local Hugging Face cache layout for one repo id.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.models import make_bert, make_gpt2, make_llama, make_neox


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's ``*.safetensors`` files (copies, stored dtype)."""
    from safetensors.torch import load_file

    sd: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        sd.update({k: v.clone() for k, v in load_file(str(f)).items()})
    return sd


def write_folder(folder: Path, sd: dict[str, torch.Tensor], config_from: Path | None = None, **config_edits) -> Path:
    """Write ``sd`` as one ``model.safetensors`` in ``folder`` (+ ``config.json`` copied and edited)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if config_from is not None:
        cfg = json.loads((Path(config_from) / "config.json").read_text())
        cfg.update(config_edits)
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def write_config_folder(folder: Path, sd: dict[str, torch.Tensor], config: dict) -> Path:
    """``sd`` and a final norm of ones (``model.norm.weight``, ``hidden_size`` wide, bf16) as one
    ``model.safetensors``, and ``config`` as ``config.json``: a checkpoint of a few hand-made matrices."""
    norm = {"model.norm.weight": torch.ones(config["hidden_size"], dtype=torch.bfloat16)}
    folder = write_folder(folder, {**sd, **norm})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def one_layer_llama_config(quant: dict | None = None) -> dict:
    """A one-layer Llama 64 wide (vocabulary 256, untied head, bf16), with ``quant`` as its quantization_config."""
    c = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    return {**c, "quantization_config": quant} if quant else c


def llama64(dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """A tiny Llama 64 wide (intermediate 128, 2 layers, 4 heads, 2 KV heads: every linear layer's inputs a multiple
    of 64, so quantization groups and blocks of 16, 32 and 64 fit its rows), seeded, in ``dtype``: what the
    quantization libraries' tests quantize."""
    import transformers as T

    torch.manual_seed(seed)
    cfg = T.LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return T.LlamaForCausalLM(cfg).to(dtype)


def bf16_step(x: torch.Tensor, ulps: int) -> torch.Tensor:
    """bf16 values moved ``ulps`` representable steps away from zero (same sign; |x| grows)."""
    assert x.dtype == torch.bfloat16
    bits = x.view(torch.int16).to(torch.int32)
    mag = (bits & 0x7FFF) + ulps
    out = torch.where(bits < 0, mag | 0x8000, mag)
    return _from_u16(out)


def bf16_llama_pair(home: Path) -> Path:
    """``home/base`` and ``home/ft``: a tiny bf16 Llama and the same with every tensor's first three entries one
    bf16 step up (a pair no other test has analysed, under ``home``); returns ``home``."""
    make_llama(home / "tmp")
    sd = {k: v.to(torch.bfloat16) for k, v in read_state_dict(home / "tmp").items()}
    write_folder(home / "base", sd, home / "tmp")
    for t in sd.values():
        t.view(-1)[:3] = bf16_step(t.view(-1)[:3], 1)
    write_folder(home / "ft", sd, home / "tmp")
    return home


def _from_u16(u: torch.Tensor) -> torch.Tensor:
    # int32 holding an unsigned 16-bit pattern -> bf16 with those bits
    s = torch.where(u >= 0x8000, u - 0x10000, u).to(torch.int16)
    return s.view(torch.bfloat16)


def fake_hub_cache(
    cache: Path, repo_id: str, source: Path, commit: str = "0123456789abcdef0123456789abcdef01234567"
) -> Path:
    """Lay out ``source``'s files as the local HF cache holds ``repo_id``; returns the snapshot folder."""
    org, name = repo_id.split("/")
    repo = cache / f"models--{org}--{name}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for f in Path(source).iterdir():
        if f.is_file():
            shutil.copy2(f, snap / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


class Boom:
    """Unpickling this runs ``touch <sentinel>``: the canonical malicious pickle."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@dataclass(frozen=True)
class Zoo:
    root: Path
    llama: Path  # sharded folder (model.safetensors.index.json)
    gpt2: Path
    neox: Path
    bert: Path
    single: Path  # one .safetensors file (no config next to it)
    legacy_bin: Path  # pytorch_model.bin holding a plain state dict
    malicious_bin: Path
    sentinel: Path  # must never exist


@pytest.fixture(scope="session")
def ckpt_zoo(tmp_path_factory) -> Zoo:
    root = tmp_path_factory.mktemp("ckpt_zoo")
    llama = make_llama(root / "llama", sharded=True)
    gpt2 = make_gpt2(root / "gpt2")
    neox = make_neox(root / "neox")
    bert = make_bert(root / "bert")
    sd = read_state_dict(llama)
    (root / "single").mkdir()
    from safetensors.torch import save_file

    single = root / "single" / "weights.safetensors"
    save_file(sd, str(single))
    (root / "legacy").mkdir()
    legacy = root / "legacy" / "pytorch_model.bin"
    torch.save(sd, legacy)
    sentinel = root / "PWNED"
    (root / "evil").mkdir()
    evil = root / "evil" / "pytorch_model.bin"
    torch.save({"w": torch.zeros(2), "x": Boom(sentinel)}, evil)
    return Zoo(root, llama, gpt2, neox, bert, single, legacy, evil, sentinel)


# --- quantized forms (FP8 with block scales, bitsandbytes int8) ----------------------------------
FP8_MAX = 448.0  # largest finite float8_e4m3fn


def fp8_quantize(w: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3-style block FP8: codes (e4m3fn, w's shape) and ``weight_scale_inv`` (⌈m/b0⌉ × ⌈n/b1⌉),
    with w ≈ code × scale_inv[i // b0, j // b1]."""
    m, n = w.shape
    b0, b1 = block
    w32 = w.float()
    scale = torch.zeros((m + b0 - 1) // b0, (n + b1 - 1) // b1)
    codes = torch.zeros(m, n)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            blk = w32[i * b0 : (i + 1) * b0, j * b1 : (j + 1) * b1]
            s = float(blk.abs().max()) / FP8_MAX or 1.0
            scale[i, j] = s
            codes[i * b0 : (i + 1) * b0, j * b1 : (j + 1) * b1] = blk / s
    return codes.to(torch.float8_e4m3fn), scale


def fp8_folder(
    src: Path, out: Path, block: tuple[int, int] = (8, 8), layer_marker: str = ".layers.", **config_edits
) -> Path:
    """``src``'s 2-D layer weights (names holding ``layer_marker``) as block FP8 + ``weight_scale_inv``
    (the rest kept), with the ``quantization_config`` a DeepSeek-V3 release carries."""
    sd = read_state_dict(src)
    out_sd: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if v.dim() == 2 and layer_marker in k:
            out_sd[k], out_sd[f"{k}_scale_inv"] = fp8_quantize(v, block)
        else:
            out_sd[k] = v
    qc = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": list(block)}
    return write_folder(out, out_sd, src, quantization_config=qc, **config_edits)


def bnb_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes LLM.int8 row-wise codes and ``SCB`` (row absmax): w ≈ code × SCB[i] / 127."""
    w32 = w.float()
    scb = w32.abs().amax(1).clamp_min(1e-8)
    return torch.round(w32 / scb[:, None] * 127).to(torch.int8), scb


def gpt_oss_model(*, hidden: int = 64, inter: int = 96, experts: int = 4, head_dim: int = 16, vocab: int = 96):
    """(GptOssForCausalLM, a tiny config: 2 layers, sliding then full attention) from transformers."""
    import logging

    import transformers as T

    T.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    cfg = T.GptOssConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        num_local_experts=experts,
        num_experts_per_tok=2,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
    )
    return T.GptOssForCausalLM, cfg


MXFP4_CONFIG = {
    "quant_method": "mxfp4",
    "modules_to_not_convert": [
        "model.layers.*.self_attn",
        "model.layers.*.mlp.router",
        "model.embed_tokens",
        "lm_head",
    ],
}


def gpt_oss_mxfp4(folder: Path, bf16: Path, scales: tuple[int, int] = (118, 134), seed: int = 1) -> Path:
    """``bf16`` (a gpt-oss folder saved by transformers) with its experts as the releases store them: random
    FP4 codes ``<proj>_blocks`` (E, out, in / 32, 16) and E8M0 exponents ``<proj>_scales`` in ``scales``."""
    sd = read_state_dict(bf16)
    g = torch.Generator().manual_seed(seed)
    for name in [n for n in sd if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        e, n_in, n_out = sd.pop(name).shape  # stored (E, in, out)
        sd[f"{name}_blocks"] = torch.randint(0, 256, (e, n_out, n_in // 32, 16), generator=g, dtype=torch.uint8)
        sd[f"{name}_scales"] = torch.randint(*scales, (e, n_out, n_in // 32), generator=g, dtype=torch.uint8)
    return write_folder(folder, sd, bf16, quantization_config=MXFP4_CONFIG)


# The series' two comparison loops (tests/unit/test_series.py, tests/integration/test_series_inputs.py)
@pytest.fixture(params=["jit", "numpy"])
def loop(request, monkeypatch):
    """Both comparison loops: the compiled one (where numba is installed) and the NumPy blocks."""
    from subnetviz.analysis import series_jit

    if request.param == "jit" and not series_jit.available():
        pytest.skip("numba not installed")
    monkeypatch.setenv("SUBNETVIZ_JIT", "1" if request.param == "jit" else "0")
    return request.param


def changed_jamba_pair(root: Path, **text) -> tuple[Path, Path]:
    """A bf16 Jamba (Mamba-1 mixers with a 2-D ``A_log``, attention every 2nd layer, 2 experts every 2nd) built
    from the text sizes ``text`` (transformers' JambaConfig keys) and its finetune with every tensor changed
    (x 1.01 + 0.01): ``(base, finetune)`` under ``root``."""
    import transformers as T
    from safetensors.torch import load_file, save_file

    cfg = T.JambaConfig(
        **text,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        num_experts=2,
        num_experts_per_tok=1,
        mamba_d_state=4,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_dt_rank=4,
    )
    base, ft = root / "base", root / "ft"
    T.JambaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(base)
    shutil.copytree(base, ft)
    sd = {k: (v.float() * 1.01 + 0.01).to(v.dtype) for k, v in load_file(ft / "model.safetensors").items()}
    save_file(sd, str(ft / "model.safetensors"), metadata={"format": "pt"})
    return base, ft


def tied_llama_pair(root: Path, seed: int) -> tuple[Path, Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A tied tiny Llama (16 wide, its tokenizer) and a tied finetune with 40 % of every tensor's entries moved by
    two bf16 steps (drawn with ``seed``): ``(base, finetune, base state dict, finetune state dict)`` under
    ``root``."""
    from tests.models import make_tiny_llama

    src = make_tiny_llama(root / "src", hidden=16, intermediate=32)
    sd = {k: v for k, v in read_state_dict(src).items() if k != "lm_head.weight"}
    base = write_folder(root / "base", sd, src, tie_word_embeddings=True)
    g = torch.Generator().manual_seed(seed)
    moved = {k: torch.where(torch.rand(v.shape, generator=g) < 0.4, bf16_step(v, 2), v) for k, v in sd.items()}
    ft = write_folder(root / "ft", moved, src, tie_word_embeddings=True)
    for f in [*src.glob("tokenizer*"), *src.glob("special_tokens_map.json")]:
        for dst in (base, ft):
            shutil.copy(f, dst / f.name)
    return base, ft, sd, moved


def mistral3_text_model(folder: Path):
    """A Mistral-3 checkpoint's language model built by hand, as an independent reference: MistralForCausalLM of
    its text config, the stored ``language_model.*`` tensors loaded by name (float32, strict), the vision tower
    ignored."""
    import transformers as T
    from safetensors.torch import load_file

    model = T.MistralForCausalLM(T.AutoConfig.from_pretrained(folder).text_config).float().eval()
    sd = load_file(folder / "model.safetensors")
    text = {k[len("language_model.") :]: v.float() for k, v in sd.items() if k.startswith("language_model.")}
    missing, unexpected = model.load_state_dict(text, strict=True)
    assert not missing and not unexpected
    return model
