"""LoRA / PEFT adapters analysed as the merged finetune.

Proves: an adapter folder next to a full finetune is analysed side by side; the merged weights are
W + (α/r)·B·A rounded once to the base's bf16 (checked against a float64 reference), only target
tensors change, and Δ's spectrum has r singular values above the bf16 rounding floor (Weyl's bound); rsLoRA uses α/√r; DoRA, lora_bias and trainable
tokens merge as PEFT merges them, variants no merge reproduces are refused by name; an
adapter whose target modules do not exist in the base, or whose tensor targets a missing weight,
is a one-line error naming it. Adapters PEFT writes equal PEFT's own merge of the saved folder bit for bit:
overlapping rank / alpha patterns (the first key wins), Conv1D and nn.Linear targets in one adapter (fan_in_fan_out
per layer), heads tied to the embedding (LoRA, ensure_weight_tying, modules_to_save), modules saved with their
embedding layers, and embeddings and experts on a bf16 base (Δ rounded to bf16 before it is added).
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from subnetviz.analysis.updates import SpectraOptions, analyze_updates
from subnetviz.errors import CheckpointError
from tests.ckpt_fixtures import bf16_step, gpt_oss_model, read_state_dict, write_folder

R, ALPHA = 2, 8
TARGETS = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


def _adapter(
    folder, base_sd, *, targets=TARGETS, rslora=False, dora=False, target_modules=("q_proj", "v_proj"), seed=0
):
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for t in targets:
        out_f, in_f = base_sd.get(f"{t}.weight", torch.zeros(16, 16)).shape
        tensors[f"base_model.model.{t}.lora_A.weight"] = torch.randn(R, in_f) * 0.1
        tensors[f"base_model.model.{t}.lora_B.weight"] = torch.randn(out_f, R) * 0.1
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {
        "peft_type": "LORA",
        "r": R,
        "lora_alpha": ALPHA,
        "target_modules": list(target_modules),
        "use_rslora": rslora,
        "use_dora": dora,
        "fan_in_fan_out": False,
    }
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder, tensors


def _reference(base_sd, tensors, scale):
    """float64 merge, rounded once to bf16: the expected merged weights."""
    out = {}
    for t in TARGETS:
        a = tensors[f"base_model.model.{t}.lora_A.weight"].double()
        b = tensors[f"base_model.model.{t}.lora_B.weight"].double()
        out[f"{t}.weight"] = (base_sd[f"{t}.weight"].double() + scale * (b @ a)).to(torch.bfloat16)
    return out


def test_adapter_is_the_merged_model_beside_a_full_finetune(ckpt_zoo, tmp_path):
    base_sd = read_state_dict(ckpt_zoo.llama)
    folder, tensors = _adapter(tmp_path / "lora", base_sd)
    full_sd = {k: v.clone() for k, v in base_sd.items()}
    w = "model.layers.0.mlp.up_proj.weight"
    full_sd[w][0, :4] = bf16_step(full_sd[w][0, :4], 1)
    full = write_folder(tmp_path / "full", full_sd, ckpt_zoo.llama)
    a = analyze_updates(
        str(ckpt_zoo.llama),
        [str(folder), str(full)],
        labels=["lora", "full"],
        spectra=SpectraOptions(enabled=True, baseline=False),
    )
    lora = a.report("lora")
    ref = _reference(base_sd, tensors, ALPHA / R)
    t = lora.tensors.set_index("name")
    for name, merged in ref.items():
        assert t.loc[name, "changed"] == int((merged.view(torch.int16) != base_sd[name].view(torch.int16)).sum())
        assert torch.equal(lora.masks[name], merged.view(torch.int16) != base_sd[name].view(torch.int16))
    assert lora.changed == sum(int(t.loc[n, "changed"]) for n in ref) > 0  # nothing else changed
    assert a.report("full").changed == 4
    # Δ = s·B·A (rank ≤ r) + the rounding to bf16 E: by Weyl, σ_{r+1}(Δ) ≤ ‖E‖₂ ≤ ‖E‖_F, and the top r
    # singular values stand far above that floor.
    sig = a.sigmas()
    for name, merged in ref.items():
        ka = f"base_model.model.{name.removesuffix('.weight')}"
        exact = ALPHA / R * (tensors[f"{ka}.lora_B.weight"].double() @ tensors[f"{ka}.lora_A.weight"].double())
        floor = float(torch.linalg.norm(merged.double() - base_sd[name].double() - exact))
        s = (
            sig[(sig["model"] == "lora") & (sig["name"] == name.removeprefix("model.")) & (sig["kind"] != "baseline")]
            .sort_values("index")["sigma"]
            .to_numpy()
        )
        assert s[R] <= floor * (1 + 1e-9) and s[R - 1] > 20 * floor
    assert any(n.startswith("LoRA adapter lora merged onto") and "rank(s·B·A) ≤ r" in n for n in lora.notes)


def test_a_merged_adapter_in_a_checkpoint_series(ckpt_zoo, tmp_path):
    """A merged adapter given to the series as a checkpoint: its merged weights are compared, not the base's
    bytes its tensors' entries point to (before: taken by address from the base file, so 0 changed)."""
    from subnetviz.analysis.series import checkpoint_series
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import MergedAdapter

    base_sd = read_state_dict(ckpt_zoo.llama)
    folder, tensors = _adapter(tmp_path / "lora", base_sd)
    ref = _reference(base_sd, tensors, ALPHA / R)
    want = sum(int((m.view(torch.int16) != base_sd[n].view(torch.int16)).sum()) for n, m in ref.items())
    base = open_checkpoint(ckpt_zoo.llama)
    s = checkpoint_series([base, MergedAdapter(str(folder), base)])
    assert want > 0 and list(s.steps["changed_vs_first"]) == [want]


def test_rslora_scales_by_sqrt_r(ckpt_zoo, tmp_path):
    base_sd = read_state_dict(ckpt_zoo.llama)
    folder, tensors = _adapter(tmp_path / "rs", base_sd, rslora=True)
    rep = analyze_updates(str(ckpt_zoo.llama), [str(folder)]).reports[0]
    ref = _reference(base_sd, tensors, ALPHA / R**0.5)
    t = rep.tensors.set_index("name")
    for name, merged in ref.items():
        assert t.loc[name, "changed"] == int((merged.view(torch.int16) != base_sd[name].view(torch.int16)).sum())
    assert any("α/√r (rsLoRA)" in n for n in rep.notes)


def _peft_saved(
    tmp_path, family: str, lora: dict, *, dtype=False, name: str = "adapter", size=None, save=None, tie=False
):
    """(base folder, adapter folder, PEFT's own merge_and_unload state dict) for a tiny ``family`` model
    adapted by PEFT with ``lora``: every trainable tensor of the adapter (A, B, DoRA's magnitudes, LoRA's
    bias, trainable tokens, the biases of ``bias: all``) moved off its initial value, as training moves it.
    ``tie``: the head tied to the input embedding (a Llama; GPT-2 ties its head unless ``size`` says
    otherwise); ``save``: save_pretrained's keyword arguments."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tests.models import INTER, save_model, tiny_model

    if size is None:
        size = {"intermediate": INTER, "kv_heads": 2, "tie": tie} if family == "llama" else {}
    base = save_model(tiny_model(family, seed=0, **size), tmp_path / "base", dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, **lora))
    torch.manual_seed(1)
    with torch.no_grad():
        for _, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    peft_model.save_pretrained(tmp_path / name, **(save or {}))
    return base, tmp_path / name, peft_model.merge_and_unload().state_dict()


def _peft_reloaded(base, folder, dtype, *, resize: int = 0, model_cls=None) -> dict:
    """PEFT's own merge of the adapter ``folder`` as anyone who loads it gets it: the base loaded in ``dtype`` (its
    stored one; ``resize``: its vocabulary grown by that many rows first), ``PeftModel.from_pretrained`` reading
    the saved adapter_config.json, then ``merge_and_unload``, with PEFT's roundings in that dtype."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = (model_cls or AutoModelForCausalLM).from_pretrained(str(base), dtype=dtype)
    if resize:
        model.resize_token_embeddings(model.config.vocab_size + resize)
    return PeftModel.from_pretrained(model, str(folder)).merge_and_unload().state_dict()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _assert_as_peft(ck, merged: dict, names=None) -> None:
    """Each tensor of the merged adapter ``ck`` (all, or ``names``) is PEFT's ``merged`` one bit for bit, in its dtype."""
    for name in names if names is not None else ck.names:
        got, want = ck.get(name), merged[name]
        assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, want.dtype)
        assert torch.equal(_bits(got), _bits(want)), name


@pytest.mark.parametrize(
    "family, lora, dtype",
    [
        ("llama", {"target_modules": ["q_proj", "down_proj", "v_proj"], "use_dora": True}, False),
        ("llama", {"target_modules": ["q_proj", "down_proj"], "use_dora": True}, None),  # a bf16 base
        ("gpt2", {"target_modules": ["c_attn", "c_fc"], "use_dora": True, "fan_in_fan_out": True}, False),
        ("gpt2", {"target_modules": ["c_attn", "c_proj"], "lora_bias": True, "fan_in_fan_out": True}, False),
        ("llama", {"target_modules": ["q_proj"], "trainable_token_indices": [3, 4]}, False),
        ("llama", {"target_modules": ["v_proj"], "trainable_token_indices": {"embed_tokens": [9, 0, 63]}}, None),
        ("gpt2", {"target_modules": ["c_attn"], "use_dora": True, "bias": "all", "fan_in_fan_out": True}, False),
    ],
)
def test_dora_lora_bias_and_trainable_tokens_merge_as_peft_merges_them(tmp_path, family, lora, dtype):
    """DoRA (each merged linear weight scaled per output feature to its learned magnitude, Conv1D's too),
    ``lora_bias`` (s·bias_B added to the module's bias) and trainable tokens (rows of the embedding replaced),
    as PEFT saves them, equal PEFT's own ``merge_and_unload`` bit for bit: a float32 base, or a bf16 base
    (PEFT's float32 merge rounded once). Before, DoRA was refused, and a ``lora_bias`` adapter merged with
    its biases left as the base's, silently; trainable tokens were 'a tensor the base does not hold'."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import adapter_info, open_finetune

    base, folder, merged = _peft_saved(tmp_path, family, lora, dtype=dtype)
    ck, plain = open_finetune(str(folder), open_checkpoint(base)), open_checkpoint(base)
    changed = 0
    for name in ck.names:
        got = ck.get(name)
        assert got.dtype == plain.meta(name).dtype and torch.equal(got, merged[name].to(got.dtype)), name
        changed += not torch.equal(got, plain.get(name))
    assert changed == len(ck._computed) > 0
    if lora.get("use_dora"):
        assert (
            any("DoRA: each of the" in n for n in ck.notes)
            and adapter_info(folder)["architecture"] == "DoRA adapter (r=4)"
        )
    rep = analyze_updates(str(base), [str(folder)], spectra=SpectraOptions(enabled=False)).reports[0]
    assert int(rep.tensors.set_index("name").loc[sorted(ck._computed), "changed"].gt(0).sum()) == changed


def test_trainable_tokens_change_only_their_rows(tmp_path):
    """Counted against NumPy: the embedding's changed entries are those of the listed rows."""
    base, folder, merged = _peft_saved(
        tmp_path, "llama", {"target_modules": ["q_proj"], "trainable_token_indices": [5]}
    )
    rep = analyze_updates(str(base), [str(folder)], spectra=SpectraOptions(enabled=False)).reports[0]
    emb = "model.embed_tokens.weight"
    want = (merged[emb].numpy() != read_state_dict(base)[emb].numpy()).sum()
    assert rep.tensors.set_index("name").loc[emb, "changed"] == want and 0 < want <= merged[emb].shape[1]


@pytest.mark.parametrize(
    "edit, says",
    [
        ({"init_lora_weights": "pissa"}, "init_lora_weights is 'pissa', which changes the base's weights"),
        ({"init_lora_weights": "pissa_niter_4"}, "init_lora_weights is 'pissa_niter_4'"),
        ({"init_lora_weights": "olora"}, "init_lora_weights is 'olora'"),
        ({"init_lora_weights": "corda"}, "init_lora_weights is 'corda'"),
        ({"init_lora_weights": "loftq"}, "init_lora_weights is 'loftq'"),
        ({"init_lora_weights": "lora_ga"}, "init_lora_weights is 'lora_ga'"),
        ({"alora_invocation_tokens": [5, 6]}, "alora_invocation_tokens is set: Activated LoRA"),
        ({"use_qalora": True}, "use_qalora is set: QA-LoRA"),
        ({"layer_replication": [[0, 2], [1, 2]]}, "layer_replication is set"),
        ({"kasa_config": {"r": 4}}, "kasa_config is set: KaSA"),
        ({"arrow_config": {"top_k": 2}}, "arrow_config is set: Arrow"),
        ({"use_dora": True}, "use_dora is set but 0 of its 2 linear LoRA pairs have a lora_magnitude_vector"),
        ({"trainable_token_indices": [1, 99]}, r"index 99 outside the 64 rows"),
        (
            {"trainable_token_indices": "1,2"},
            "trainable_token_indices in adapter_config.json is '1,2'; expected a list",
        ),
    ],
)
def test_adapters_no_merge_here_reproduces_are_refused_by_name(tmp_path, edit, says):
    """A LoRA whose W + s·B·A is not the model that was trained: initialisations that changed the base before
    training (PiSSA, CorDA, OLoRA, LoftQ, LoRA-GA; before, merged onto the release as if plain, silently),
    variants no merge reproduces, settings that contradict the tensors: one line naming the key."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    lora = {"target_modules": ["q_proj"]}
    if "trainable_token_indices" in edit:
        lora["trainable_token_indices"] = [1, 2]
    base, folder, _ = _peft_saved(tmp_path, "llama", lora)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, **edit}))
    with pytest.raises(CheckpointError, match=re.escape(says) if "(" in says else says) as err:
        open_finetune(str(folder), open_checkpoint(base))
    assert "\n" not in str(err.value)


def test_a_pissa_adapter_converted_by_peft_is_the_model_it_trained(tmp_path):
    """PiSSA trains on a changed base (W − s·B₀·A₀). Saved as it is, it is refused (above); converted by PEFT
    to a plain LoRA of rank 2r (``path_initial_model_for_weight_conversion``), it merges onto the release as
    the model PEFT trained: within float32 rounding of PEFT's own merge on its changed base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune
    from tests.models import INTER, save_model, tiny_model

    base = save_model(
        tiny_model("llama", seed=0, intermediate=INTER, kv_heads=2, tie=False), tmp_path / "base", dtype=False
    )
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=4, init_lora_weights="pissa", target_modules=["q_proj", "o_proj"])
    peft_model = get_peft_model(model, lora)
    peft_model.peft_config["default"].init_lora_weights = True  # the initial adapter, as PEFT's example saves it
    peft_model.save_pretrained(tmp_path / "initial")
    peft_model.peft_config["default"].init_lora_weights = "pissa"
    torch.manual_seed(1)
    with torch.no_grad():
        for _, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(tmp_path / "raw")
    peft_model.save_pretrained(
        tmp_path / "converted", path_initial_model_for_weight_conversion=str(tmp_path / "initial")
    )
    merged = peft_model.merge_and_unload().state_dict()
    with pytest.raises(CheckpointError, match="init_lora_weights is 'pissa'"):
        open_finetune(str(tmp_path / "raw"), open_checkpoint(base))
    ck, plain = open_finetune(str(tmp_path / "converted"), open_checkpoint(base)), open_checkpoint(base)
    assert len(ck.pairs) == 4
    for name in ck.names:
        assert torch.allclose(ck.get(name), merged[name], rtol=0, atol=1e-6), name
        assert (name in ck.pairs) != torch.equal(ck.get(name), plain.get(name)), name


def test_an_adapter_config_key_this_reader_does_not_know_is_noted(tmp_path):
    """A later PEFT's setting is not refused; the merge notes it, by name, so the reader sees what was not read."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    base, folder, merged = _peft_saved(tmp_path, "llama", {"target_modules": ["q_proj"]})
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "use_hyperlora": True, "unused_thing": None}))
    ck = open_finetune(str(folder), open_checkpoint(base))
    assert [n for n in ck.notes if "use_hyperlora = 'True'" in n and "does not know" in n]
    assert not [n for n in ck.notes if "unused_thing" in n]
    assert torch.equal(ck.get(f"{TARGETS[0]}.weight"), merged[f"{TARGETS[0]}.weight"])


def test_dora_on_an_embedding_is_refused_by_name(tmp_path):
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    lora = {"target_modules": ["q_proj", "embed_tokens"], "use_dora": True}
    base, folder, _ = _peft_saved(tmp_path, "llama", lora)
    with pytest.raises(CheckpointError, match=r"DoRA magnitude .*embed_tokens.* belongs to an embedding"):
        open_finetune(str(folder), open_checkpoint(base))


def test_an_adapter_alone_is_not_read_as_a_model(ckpt_zoo, tmp_path):
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.errors import SubnetvizError

    folder, tensors = _adapter(tmp_path / "lora", read_state_dict(ckpt_zoo.llama))
    for call in (
        lambda: open_checkpoint(folder),
        lambda: analyze_updates(str(folder), [str(ckpt_zoo.llama)]),  # given as the base
    ):
        with pytest.raises(SubnetvizError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and str(folder) in msg and "adapter needs its base" in msg
    # The workspace's checkpoint info of an adapter alone: its own parameters, no architecture.
    from subnetviz.checkpoints.adapters import adapter_info

    info = adapter_info(folder)
    assert info["params"] == sum(t.numel() for t in tensors.values()) and info["architecture"] == "LORA adapter (r=2)"
    # The same folder as a finetune of its base still works; a model folder that also holds an
    # adapter_config.json (a merged save) is read as the model it holds.
    assert analyze_updates(str(ckpt_zoo.llama), [str(folder)]).reports[0].changed > 0
    merged = write_folder(tmp_path / "merged", read_state_dict(ckpt_zoo.llama), ckpt_zoo.llama)
    (merged / "adapter_config.json").write_text((folder / "adapter_config.json").read_text())
    assert open_checkpoint(merged).files == [merged / "model.safetensors"]


def test_adapter_targets_that_do_not_exist_are_one_line_errors(ckpt_zoo, tmp_path):
    base_sd = read_state_dict(ckpt_zoo.llama)
    folder, _ = _adapter(tmp_path / "gpt2ish", base_sd, target_modules=("c_attn",))
    with pytest.raises(CheckpointError) as err:
        analyze_updates(str(ckpt_zoo.llama), [str(folder)])
    msg = str(err.value)
    assert "\n" not in msg and "target module 'c_attn'" in msg and "q_proj" in msg
    folder2, _ = _adapter(tmp_path / "missing", base_sd, targets=["model.layers.7.self_attn.q_proj"])
    with pytest.raises(CheckpointError) as err:
        analyze_updates(str(ckpt_zoo.llama), [str(folder2)])
    msg = str(err.value)
    assert "\n" not in msg and "model.layers.7.self_attn.q_proj.lora_A.weight" in msg and "does not hold" in msg


def test_cached_analysis_of_an_adapter_follows_the_adapter(ckpt_zoo, tmp_path):
    from subnetviz.analysis.updates import cached_analysis

    base_sd = read_state_dict(ckpt_zoo.llama)
    folder, _ = _adapter(tmp_path / "lora", base_sd)
    first = cached_analysis(str(ckpt_zoo.llama), [str(folder)], cache_root=tmp_path / "cache")
    again = cached_analysis(str(ckpt_zoo.llama), [str(folder)], cache_root=tmp_path / "cache")
    assert not first.cached and again.cached and first.reports[0].changed == again.reports[0].changed > 0
    _adapter(tmp_path / "lora", base_sd, seed=1)  # the adapter rewritten in place: a new key, new numbers
    third = cached_analysis(str(ckpt_zoo.llama), [str(folder)], cache_root=tmp_path / "cache")
    assert not third.cached and third.source_dir != first.source_dir


def test_two_adapters_with_one_mtime_are_two_cache_entries(ckpt_zoo, tmp_path):
    """Two adapters of one rank and targets whose files kept one mtime (cp -p, rsync -a): the adapter's
    fingerprint was its size, mtime, header and config, so the second was served the first's results."""
    import os

    from subnetviz.analysis.updates import cached_analysis
    from subnetviz.uilogic import checkpoint_info

    base_sd = read_state_dict(ckpt_zoo.llama)
    one, _ = _adapter(tmp_path / "one", base_sd, seed=0)
    two, _ = _adapter(tmp_path / "two", base_sd, seed=1)
    for f in (one, two):
        os.utime(f / "adapter_model.safetensors", ns=(10**18, 10**18))
    assert checkpoint_info(str(one))["fingerprint"] != checkpoint_info(str(two))["fingerprint"]
    first = cached_analysis(str(ckpt_zoo.llama), [str(one)], cache_root=tmp_path / "cache")
    second = cached_analysis(str(ckpt_zoo.llama), [str(two)], cache_root=tmp_path / "cache")
    assert not second.cached and second.source_dir != first.source_dir


@pytest.mark.parametrize(
    "target_modules", ["all-linear", r".*\.(q_proj|v_proj)", r"model\.layers\.[01]\.self_attn\.(q|v)_proj"]
)
def test_target_modules_given_as_peft_strings(ckpt_zoo, tmp_path, target_modules):
    """PEFT also takes ``target_modules`` as one string: ``all-linear`` or a regular expression matched
    against whole module names (released QLoRA adapters say ``all-linear``). Read as such, not as a list of
    one-letter module names."""
    base_sd = read_state_dict(ckpt_zoo.llama)
    folder, tensors = _adapter(tmp_path / "lora", base_sd)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": target_modules}))
    rep = analyze_updates(str(ckpt_zoo.llama), [str(folder)]).reports[0]
    t = rep.tensors.set_index("name")
    for name, merged in _reference(base_sd, tensors, ALPHA / R).items():
        assert t.loc[name, "changed"] == int((merged.view(torch.int16) != base_sd[name].view(torch.int16)).sum())


@pytest.mark.parametrize(
    "edit, says",
    [
        ({"target_modules": r".*\.c_attn"}, r"target module '\.\*\\\\\.c_attn' .*matches no module"),
        ({"target_modules": "(q_proj"}, "not a valid regular expression"),
        ({"target_modules": 5}, "target_modules in adapter_config.json is '5'; expected a list"),
        ({"r": 0}, "r is '0'; expected a rank >= 1"),
        ({"r": "8"}, "r is '8'; expected a rank >= 1"),
        ({"lora_alpha": "x"}, "lora_alpha is 'x'; expected a number"),
        ({"lora_alpha": None}, "lora_alpha is 'None'; expected a number"),
        ({"rank_pattern": ["q_proj"]}, "rank_pattern is .*expected an object"),
        ({"rank_pattern": {"q_proj": 0}}, r"rank_pattern\['q_proj'\] is '0'"),
        ({"alpha_pattern": {"(q": 4}}, r"alpha_pattern '\(q' is not a valid regular expression"),
        # Python's re backtracks for minutes on this pattern against a module name; regex answers at once
        (
            {"target_modules": r"([a-z_.0-9]+)+x"},
            r"target module '\(.*\)\+x' \(adapter_config.json target_modules\) matches no module",
        ),
    ],
)
def test_adapter_config_someone_else_wrote_is_checked(ckpt_zoo, tmp_path, edit, says):
    """Every value of adapter_config.json the merge uses, checked when the adapter is opened: one line
    naming the key, not a ZeroDivisionError / TypeError / re.error while merging."""
    folder, _ = _adapter(tmp_path / "lora", read_state_dict(ckpt_zoo.llama))
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, **edit}))
    with pytest.raises(CheckpointError, match=says) as err:
        analyze_updates(str(ckpt_zoo.llama), [str(folder)])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "[1, 2]", "{not json"])
def test_adapter_config_that_is_no_json_object(ckpt_zoo, tmp_path, text):
    from subnetviz.checkpoints.adapters import adapter_info

    folder, _ = _adapter(tmp_path / "lora", read_state_dict(ckpt_zoo.llama))
    (folder / "adapter_config.json").write_text(text)
    for call in (lambda: analyze_updates(str(ckpt_zoo.llama), [str(folder)]), lambda: adapter_info(folder)):
        with pytest.raises(
            CheckpointError, match="adapter_config.json: (JSON nested too deeply|expected a JSON object|not valid JSON)"
        ):
            call()


@pytest.mark.parametrize("how", ["rows", "rank", "transposed"])
def test_lora_shapes_are_checked_before_multiplying(ckpt_zoo, tmp_path, how):
    """B·A must have the base weight's shape, with A's rows B's columns: checked from the headers when the
    adapter is opened (before, a wrong B was multiplied first, a rank mismatch was torch's matmul error)."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    base_sd = read_state_dict(ckpt_zoo.llama)
    folder, tensors = _adapter(tmp_path / "lora", base_sd)
    key_a, key_b = (f"base_model.model.{TARGETS[1]}.lora_{k}.weight" for k in "AB")  # v_proj: not square (GQA)
    a, b = tensors[key_a], tensors[key_b]
    if how == "rows":
        tensors[key_b] = torch.zeros(b.shape[0] + 3, R)
    elif how == "rank":
        tensors[key_a] = torch.zeros(R + 1, a.shape[1])
    else:
        tensors[key_a], tensors[key_b] = b.T.contiguous(), a.T.contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"LoRA tensors of '{TARGETS[1]}.weight' have shapes") as err:
        open_finetune(str(folder), open_checkpoint(ckpt_zoo.llama))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "family, lora",
    [
        ("llama", {"target_modules": "all-linear", "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"q_proj": 3}}),
        ("llama", {"target_modules": r".*\.(q_proj|v_proj|embed_tokens)", "use_rslora": True}),
        ("gpt2", {"target_modules": ["c_attn", "c_proj"], "fan_in_fan_out": True}),  # Conv1D: Δ transposed
    ],
)
def test_adapters_written_by_peft_merge_as_peft_merges_them(tmp_path, family, lora):
    """Adapters saved by PEFT itself (the library that writes them: its tensor names, its config keys, the
    embedding's ``base_layer.weight`` it saves beside ``lora_embedding_A/B``), merged per tensor here, equal
    PEFT's own ``merge_and_unload`` bit for bit (float32 base: the same products and sums)."""
    from peft import LoraConfig, get_peft_model

    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune
    from tests.models import INTER, save_model, tiny_model

    size = {"intermediate": INTER, "kv_heads": 2, "tie": False} if family == "llama" else {}
    model = tiny_model(family, seed=0, **size)
    base = save_model(model, tmp_path / "base", dtype=False)
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, init_lora_weights=False, **lora))
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload().state_dict()
    ck = open_finetune(str(tmp_path / "adapter"), open_checkpoint(base))
    assert len(ck.pairs) >= 4
    for name in ck.names:
        assert torch.equal(ck.get(name), merged[name]), name


@pytest.mark.parametrize("resize", [0, 3])
def test_peft_embedding_adapter_on_a_bf16_base(tmp_path, resize):
    """The usual set-up: a bf16 release, loaded in float32 for training, an adapter on the embedding (its
    vocabulary perhaps resized for new tokens). PEFT saves the embedding it adapted in float32, with the
    new rows: the merged finetune is given in the base's bf16, with the adapter's shape, and the comparison runs
    (before: 'cannot reshape array of size 5760', the float32 bytes read as bf16). Each layer is rounded as PEFT's
    merge on the bf16 base rounds it: the embedding's Δ to bf16 first, then W + Δ (Embedding.merge), a linear
    layer's W + Δ once, so both equal that merge bit for bit (before, the embedding was rounded once: over a quarter
    of its entries differed from PEFT's)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune
    from tests.models import INTER, save_model, tiny_model

    base = save_model(tiny_model("llama", seed=0, intermediate=INTER, kv_heads=2, tie=False), tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    if resize:
        model.resize_token_embeddings(model.config.vocab_size + resize)
    torch.manual_seed(1)
    targets = r".*\.(q_proj|embed_tokens)"
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, init_lora_weights=False, target_modules=targets))
    peft_model.save_pretrained(tmp_path / "adapter")
    in_float32 = peft_model.merge_and_unload().state_dict()
    merged = _peft_reloaded(base, tmp_path / "adapter", torch.bfloat16, resize=resize)
    ck = open_finetune(str(tmp_path / "adapter"), open_checkpoint(base))
    emb, q = "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"
    assert ck.meta(emb).shape == tuple(merged[emb].shape) and ck.meta(emb).dtype == torch.bfloat16
    # (resized, the head has new rows the adapter does not save: its shared rows are the base's, as in PEFT's)
    _assert_as_peft(ck, merged, [n for n in ck.names if n != "lm_head.weight" or not resize])
    assert torch.equal(ck.get("lm_head.weight"), merged["lm_head.weight"][: ck.meta("lm_head.weight").shape[0]])
    # a linear layer is also PEFT's float32 merge rounded once; the embedding is not
    assert torch.equal(_bits(ck.get(q)), _bits(in_float32[q].to(torch.bfloat16)))
    assert not torch.equal(_bits(ck.get(emb)), _bits(in_float32[emb].to(torch.bfloat16)))
    rep = analyze_updates(str(base), [str(tmp_path / "adapter")]).reports[0]
    t = rep.tensors.set_index("name")
    assert t.loc[emb, "changed"] > 0 and t.loc["model.layers.0.mlp.up_proj.weight", "changed"] == 0


@pytest.mark.parametrize("specific_first", [True, False])
def test_rank_and_alpha_patterns_take_the_first_key_that_matches(tmp_path, specific_first):
    """Two rank_pattern (or alpha_pattern) keys matching one module: PEFT takes the first in adapter_config.json's
    order (get_pattern_key). The adapter trained with the keys in either order (PEFT saves them sorted: written
    back in the order it trained with) equals PEFT's merge of the saved folder bit for bit; before, the last key
    that matched won (layer 0's q_proj scaled by 16/2 where PEFT's rank is 8, or the reverse)."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    ranks, alphas = (
        {"model.layers.0.self_attn.q_proj": 8, "q_proj": 2},
        {r"layers\.1\.self_attn\.o_proj": 7, "o_proj": 5},
    )
    if not specific_first:
        ranks, alphas = dict(reversed(ranks.items())), dict(reversed(alphas.items()))
    lora = {"target_modules": ["q_proj", "o_proj"], "rank_pattern": ranks, "alpha_pattern": alphas}
    base, folder, _ = _peft_saved(tmp_path, "llama", lora)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(cfg | {"rank_pattern": ranks, "alpha_pattern": alphas}))
    ck = open_finetune(str(folder), open_checkpoint(base))
    _assert_as_peft(ck, _peft_reloaded(base, folder, torch.float32))


@pytest.mark.parametrize(
    "targets, tie",
    [(["c_attn", "lm_head"], False), (r".*(attn\.c_proj|lm_head)", False), (["c_attn", "c_fc", "lm_head"], True)],
    ids=["c_attn-and-head", "square-c_proj-and-head", "tied-head"],
)
def test_fan_in_fan_out_is_decided_per_layer_as_peft_decides_it(tmp_path, targets, tie):
    """PEFT merges transformers' Conv1D (GPT-2's attention and MLP, stored (in, out)) with Δ transposed and an
    nn.Linear without, whatever fan_in_fan_out says, and saves the value it set for the last layer it wrapped:
    false for a GPT-2 adapter whose targets include lm_head. Decided per layer here too, from the base's naming
    table: equal to PEFT's merge on the bf16 base bit for bit, with a note. Before, one flag for every layer: such an
    adapter was refused (c_attn's B·A did not fit), or its square c_proj weights merged transposed without a word."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    size = {"bos_token_id": 0, "eos_token_id": 0, "tie": tie}
    lora = {"target_modules": targets, "fan_in_fan_out": True}
    base, folder, _ = _peft_saved(tmp_path, "gpt2", lora, dtype=None, size=size)
    assert json.loads((folder / "adapter_config.json").read_text())["fan_in_fan_out"] is False
    ck = open_finetune(str(folder), open_checkpoint(base))
    _assert_as_peft(ck, _peft_reloaded(base, folder, torch.bfloat16))
    assert any("fan_in_fan_out = false, but PEFT decides it per layer" in n for n in ck.notes)
    assert all(n.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")) for n in ck._fifo) and ck._fifo


_TIED = "the base ties lm_head.weight to model.embed_tokens.weight (tie_word_embeddings)"


@pytest.mark.parametrize(
    "lora, says",
    [
        ({"target_modules": ["q_proj", "lm_head"]}, "the LoRA of lm_head.weight is merged into it, as PEFT's"),
        ({"target_modules": ["q_proj", "embed_tokens", "lm_head"]}, "merged into it after the embedding's own"),
        ({"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}, "input embedding is the base's"),
        ({"target_modules": ["q_proj"], "modules_to_save": ["embed_tokens", "lm_head"]}, "the adapter's trained"),
        (
            {"target_modules": ["q_proj"], "modules_to_save": ["embed_tokens"], "ensure_weight_tying": True},
            "ensure_weight_tying: the copy of lm_head.weight the adapter saves is the embedding's trained copy",
        ),
    ],
    ids=["lora-head", "lora-embedding-and-head", "head-saved", "both-saved", "saved-tied"],
)
def test_a_head_tied_to_the_embedding_merges_as_peft_merges_it(tmp_path, lora, says):
    """A base that ties lm_head to its input embedding stores one tensor for both. A LoRA on the head is merged into
    that tensor, as PEFT's merge_and_unload merges it (after the embedding's own LoRA where there is one); a head
    trained whole (modules_to_save) unties the two, and the merged model has its own lm_head.weight, listed as a
    tensor only the adapter holds; a head copy tied to the embedding's (ensure_weight_tying) is counted once. Equal
    to PEFT's merge on the bf16 base bit for bit, each case said in a note; before, all were refused ('targets
    lm_head.weight, which the base does not hold')."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    base, folder, _ = _peft_saved(tmp_path, "llama", lora, dtype=None, tie=True)
    plain = open_checkpoint(base)
    ck = open_finetune(str(folder), plain)
    merged = _peft_reloaded(base, folder, torch.bfloat16)
    _assert_as_peft(ck, merged)
    untied = "lm_head" in (lora.get("modules_to_save") or []) and not lora.get("ensure_weight_tying")
    assert ("lm_head.weight" in ck.names) == untied == (not ck.tied_embeddings) and plain.tied_embeddings
    assert any(says in n for n in ck.notes), ck.notes
    assert any(_TIED in n for n in ck.notes) or lora.get("ensure_weight_tying")
    rep = analyze_updates(str(base), [str(folder)], spectra=SpectraOptions(enabled=False)).reports[0]
    emb = "model.embed_tokens.weight"
    want = int((_bits(merged[emb]) != _bits(plain.get(emb))).sum())
    t = rep.tensors.set_index("key")
    assert t.loc["embed_tokens.weight", "changed"] == want
    assert (want > 0) == (lora.get("modules_to_save") != ["lm_head"])  # a trained head alone leaves it as it was
    assert not any("only in" in n for n in rep.notes)
    if untied:  # the trained head copy, compared with the base's tied embedding it was trained from
        head = int((_bits(merged["lm_head.weight"]) != _bits(plain.get(emb))).sum())
        assert t.loc["lm_head.weight", "changed"] == head > 0
    else:
        assert "lm_head.weight" not in t.index


@pytest.mark.parametrize("dtype", [False, None], ids=["fp32", "bf16"])
def test_ensure_weight_tying_adds_the_tied_delta_once(tmp_path, dtype):
    """ensure_weight_tying ties the head's LoRA factors to the embedding's (lm_head's A and B are the embedding's B
    and A transposed), so the model trained is W + Δ in the one tensor both use. PEFT 0.21's merge_and_unload merges
    the embedding and then the head, adding that Δ twice (its logits are not the trained model's). Here it is added
    once: equal bit for bit to PEFT's own merge of each adapted layer but the tied head, and (float32) the logits of
    the model PEFT trained; head factors that are not the embedding's are refused. Before: 'targets lm_head.weight,
    which the base does not hold'."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    lora = {"target_modules": ["q_proj", "embed_tokens", "lm_head"], "ensure_weight_tying": True}
    base, folder, _ = _peft_saved(tmp_path, "llama", lora, dtype=dtype, tie=True)
    ck = open_finetune(str(folder), open_checkpoint(base))
    assert any(n.startswith("ensure_weight_tying: ") and "added once" in n for n in ck.notes)
    model_dtype = torch.float32 if dtype is False else torch.bfloat16
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=model_dtype), folder)
    x = torch.arange(12).unsqueeze(0)
    with torch.no_grad():
        trained = peft_model(x).logits
        for name, module in peft_model.named_modules():
            if isinstance(module, LoraLayer) and not name.endswith("lm_head"):
                module.merge()
    sd = peft_model.state_dict()
    _assert_as_peft(ck, {k.removeprefix("base_model.model.").replace(".base_layer", ""): v for k, v in sd.items()})
    if dtype is False:
        ours = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        ours.load_state_dict({n: ck.get(n) for n in ck.names}, strict=False)  # (the head is the embedding's)
        with torch.no_grad():
            assert torch.allclose(ours(x).logits, trained, rtol=0, atol=1e-5)
        tensors = load_file(str(folder / "adapter_model.safetensors"))
        tensors["base_model.model.lm_head.lora_A.weight"][0, 0] += 1
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        with pytest.raises(CheckpointError, match=r"ensure_weight_tying is set, but .*lm_head.lora_A.* is not the emb"):
            open_finetune(str(folder), open_checkpoint(base))


def test_modules_saved_with_their_embedding_layers_read_as_peft_loads_them(tmp_path):
    """modules_to_save saved with save_embedding_layers=True: PEFT writes <m>.weight, <m>.modules_to_save.weight
    and <m>.original_module.weight. Read as PEFT's loader reads them, the trained copy replacing the base's tensor
    (the base's own copy beside it is no update): equal to PEFT's merge on the bf16 base bit for bit; before, 'targets
    lm_head.modules_to_save.weight, which the base does not hold'."""
    from safetensors import safe_open

    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    lora = {"target_modules": ["q_proj"], "modules_to_save": ["embed_tokens", "lm_head"]}
    base, folder, _ = _peft_saved(tmp_path, "llama", lora, dtype=None, save={"save_embedding_layers": True})
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    for m in ("model.embed_tokens", "lm_head"):
        assert {f"base_model.model.{m}.{k}weight" for k in ("", "modules_to_save.", "original_module.")} <= keys
    ck = open_finetune(str(folder), open_checkpoint(base))
    assert ck.replaced == {"model.embed_tokens.weight": "base_model.model.model.embed_tokens.weight"} | {
        "lm_head.weight": "base_model.model.lm_head.weight"
    }
    _assert_as_peft(ck, _peft_reloaded(base, folder, torch.bfloat16))


@pytest.mark.parametrize(
    "said, noted",
    [
        ("meta-llama/Llama-3.1-8B", True),
        ("{base}", False),
        ("someone/base", False),
        ("/hub/models--someone--base/snapshots/" + "0" * 40, False),
        ("/runs/base/checkpoint-500", False),
        ("", False),
    ],
)
def test_an_adapter_that_names_another_base_is_noted(tmp_path, said, noted):
    """adapter_config.json's base_model_name_or_path naming clearly another model than the base given (compared by
    name, loosely: a local copy or a hub cache folder of the same name is no other model): one note, not refused;
    the merge is PEFT's all the same."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    base, folder, _ = _peft_saved(tmp_path, "llama", {"target_modules": ["q_proj"]})
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(cfg | {"base_model_name_or_path": said.format(base=base)}))
    ck = open_finetune(str(folder), open_checkpoint(base))
    found = [n for n in ck.notes if "adapter_config.json says it was trained on" in n]
    assert len(found) == noted and (not noted or "'meta-llama/Llama-3.1-8B'" in found[0])
    _assert_as_peft(ck, _peft_reloaded(base, folder, torch.float32))


def test_a_pattern_that_runs_too_long_is_refused(ckpt_zoo, tmp_path, monkeypatch):
    """Module patterns are matched with a time limit: past it, one line naming the key (here the limit is
    made 0 s, so every match runs past it)."""
    from subnetviz.checkpoints import adapters

    folder, _ = _adapter(tmp_path / "lora", read_state_dict(ckpt_zoo.llama))
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "rank_pattern": {"q_proj": 2}}))
    monkeypatch.setattr(adapters, "_MATCH_SECONDS", 0)
    with pytest.raises(CheckpointError, match=r"rank_pattern / alpha_pattern .*took over 0 s; give a simpler"):
        analyze_updates(str(ckpt_zoo.llama), [str(folder)])


@pytest.mark.timeout(120)
def test_a_backtracking_pattern_is_answered_at_once(ckpt_zoo, tmp_path):
    """rank_pattern ([a-z_.0-9]+)+x: Python's re takes minutes on every module name (it held a server thread),
    the regex module answers at once; it matches no module, so every scale is α/r."""
    base_sd = read_state_dict(ckpt_zoo.llama)
    folder, tensors = _adapter(tmp_path / "lora", base_sd)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "rank_pattern": {r"([a-z_.0-9]+)+x": 1}}))
    rep = analyze_updates(str(ckpt_zoo.llama), [str(folder)]).reports[0]
    t = rep.tensors.set_index("name")
    for name, merged in _reference(base_sd, tensors, ALPHA / R).items():
        assert t.loc[name, "changed"] == int((merged.view(torch.int16) != base_sd[name].view(torch.int16)).sum())


def _moe(kind: str, inter: int = 96):
    import transformers as T

    T.logging.set_verbosity_error()
    if kind == "gpt_oss":
        return gpt_oss_model(inter=inter, vocab=64)
    common = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    if kind == "llama4":
        cfg = T.Llama4TextConfig(
            **common,
            intermediate_size=32,
            intermediate_size_mlp=32,
            num_local_experts=4,
            num_experts_per_tok=1,
            head_dim=4,
            interleave_moe_layer_step=1,
        )
        return T.Llama4ForCausalLM, cfg
    if kind == "mixtral":
        return T.MixtralForCausalLM, T.MixtralConfig(**common, intermediate_size=inter, num_local_experts=4)
    cfg = T.Qwen3MoeConfig(**common, num_experts=4, moe_intermediate_size=inter, num_experts_per_tok=2, head_dim=4)
    return T.Qwen3MoeForCausalLM, cfg


def _experts_adapter(tmp_path, kind: str, inter: int):
    """(base, the adapter read as its merged model, PEFT's own merge_and_unload state dict) for a tiny MoE
    of ``kind`` and a PEFT LoRA on q_proj and on the packed experts (target_parameters)."""
    from peft import LoraConfig, get_peft_model

    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    model_cls, cfg = _moe(kind, inter)
    torch.manual_seed(0)
    model_cls(cfg).save_pretrained(tmp_path / "base")
    params = ["experts.gate_up_proj", "experts.down_proj"]
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], target_parameters=params, init_lora_weights=False)
    peft_model = get_peft_model(model_cls.from_pretrained(tmp_path / "base"), lora)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload().state_dict()
    base = open_checkpoint(tmp_path / "base")
    return base, open_finetune(str(tmp_path / "adapter"), base), merged


@pytest.mark.parametrize(
    "kind, inter",
    [("gpt_oss", 96), ("gpt_oss", 64), ("llama4", 32)],
    ids=["gpt-oss", "gpt-oss-square-down", "llama4-swapped"],
)
def test_lora_on_packed_experts_merges_as_peft_merges_it(tmp_path, kind, inter):
    """PEFT's LoRA on parameters (target_parameters, the way gpt-oss's experts are adapted): each expert's
    Δ[e] = s·B[:, :, e]·A[e], in the layout PEFT picks (gpt-oss's experts are (E, in, out); Llama-4's are
    swapped), nested wrappers assigned to their parameters. Equal to PEFT's merge_and_unload bit for bit
    (float32 base), also where an expert's matrix is square (gpt-oss with intermediate = hidden); the analysis
    counts exactly the entries the merge changed (before: 'targets ...experts.base_layer.weight, which the
    base does not hold')."""
    base, ck, merged = _experts_adapter(tmp_path, kind, inter)
    assert len(ck.experts) == 4 and {n.rsplit(".", 1)[1] for n in ck.experts} == {"gate_up_proj", "down_proj"}
    for name in ck.names:
        assert torch.equal(ck.get(name).view(torch.int32), merged[name].view(torch.int32)), name
    rep = analyze_updates(str(tmp_path / "base"), [str(tmp_path / "adapter")], labels=["lora"]).reports[0]
    t = rep.tensors.set_index("name")
    for name in ck.experts:
        want = int((merged[name].view(torch.int32) != base.get(name).view(torch.int32)).sum())
        assert t.loc[name, "changed"] == want > 0.9 * merged[name].numel(), name


_PER_EXPERT = re.compile(
    r"^(.*)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w3|w2)\.weight$"
)


def _as_stored(merged: dict, name: str) -> torch.Tensor:
    """PEFT's merged tensor for the base's tensor ``name``: an expert's own Linear weight (Qwen-MoE, Mixtral) is its
    slice of the packed parameter transformers holds in memory (gate_up = [gate; up]; Mixtral's block_sparse_moe
    read as mlp)."""
    m = _PER_EXPERT.match(name)
    if m is None:
        return merged[name.replace(".block_sparse_moe.", ".mlp.")]
    pre, e, p = m[1], int(m[2]), m[3]
    down = p in ("down_proj", "w2")
    packed = merged[f"{pre}.mlp.experts.{'down_proj' if down else 'gate_up_proj'}"][e]
    half = packed.shape[0] // 2
    return packed if down else (packed[:half] if p in ("gate_proj", "w1") else packed[half:])


@pytest.mark.parametrize("kind, inter", [("qwen3_moe", 8), ("qwen3_moe", 16), ("mixtral", 32)])
def test_lora_on_packed_experts_over_a_base_stored_expert_by_expert(tmp_path, kind, inter):
    """Qwen3-MoE and Mixtral checkpoints store each expert's Linear weights (experts.N.gate_proj / w1 ...);
    transformers packs them in memory (gate_up = [gate; up], Mixtral's block_sparse_moe read as mlp), and
    PEFT's target_parameters wraps the packed tensors. Each expert's tensor is merged with its rows of that
    expert's Δ: equal to the matching slice of PEFT's merge_and_unload bit for bit, also with square
    experts (moe_intermediate = hidden); before: 'matches no tensor of the base'."""
    base, ck, merged = _experts_adapter(tmp_path, kind, inter)
    for name in ck.names:
        assert torch.equal(ck.get(name).view(torch.int32), _as_stored(merged, name).view(torch.int32)), name
    assert sum(bool(_PER_EXPERT.match(n)) for n in ck.names) == 2 * 4 * 3  # layers × experts × (gate, up, down)


@pytest.mark.parametrize("kind, inter", [("gpt_oss", 96), ("qwen3_moe", 8)], ids=["gpt-oss", "qwen3-moe-per-expert"])
def test_lora_on_experts_of_a_bf16_base_rounds_as_peft_merges_it(tmp_path, kind, inter):
    """PEFT's ParamWrapper casts an expert parameter's Δ to the parameter's dtype before adding it: on a bf16 base
    the merged experts are bf16(W + bf16(Δ)), where a linear layer is bf16(W + Δ). Both as PEFT's merge on the bf16
    base gives them, bit for bit, for packed experts (gpt-oss) and over a base that stores them expert by expert
    (Qwen3-MoE); before, every expert's Δ was added unrounded, over a quarter of the entries off PEFT's."""
    from peft import LoraConfig, get_peft_model

    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    model_cls, cfg = _moe(kind, inter)
    torch.manual_seed(0)
    model_cls(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "base")
    params = ["experts.gate_up_proj", "experts.down_proj"]
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], target_parameters=params, init_lora_weights=False)
    model = model_cls.from_pretrained(tmp_path / "base", dtype=torch.float32)
    get_peft_model(model, lora).save_pretrained(tmp_path / "adapter")
    merged = _peft_reloaded(tmp_path / "base", tmp_path / "adapter", torch.bfloat16, model_cls=model_cls)
    ck = open_finetune(str(tmp_path / "adapter"), open_checkpoint(tmp_path / "base"))
    assert {ck.meta(n).dtype for n in ck.names} == {torch.bfloat16} and ck.experts
    _assert_as_peft(ck, {n: _as_stored(merged, n) for n in ck.names})


def test_lora_on_experts_the_base_does_not_hold_is_one_line(tmp_path):
    """A target parameter the base holds neither packed nor expert by expert, and a target_parameters that is
    no list: one line each, naming it."""
    from peft import LoraConfig, get_peft_model

    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune

    model_cls, cfg = _moe("qwen3_moe")
    torch.manual_seed(0)
    model_cls(cfg).save_pretrained(tmp_path / "base")
    lora = LoraConfig(r=2, target_parameters=["experts.gate_up_proj"], init_lora_weights=False)
    get_peft_model(model_cls.from_pretrained(tmp_path / "base"), lora).save_pretrained(tmp_path / "adapter")
    base = open_checkpoint(tmp_path / "base")
    cfg_path = tmp_path / "adapter" / "adapter_config.json"
    adapter_cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**adapter_cfg, "target_parameters": ["experts.gate_proj_x"]}))
    with pytest.raises(CheckpointError, match="target parameter 'experts.gate_proj_x'.*packed or expert by expert"):
        open_finetune(str(tmp_path / "adapter"), base)
    cfg_path.write_text(json.dumps({**adapter_cfg, "target_parameters": "experts.gate_up_proj"}))
    with pytest.raises(CheckpointError, match="target_parameters in adapter_config.json is 'experts.gate_up_proj'"):
        open_finetune(str(tmp_path / "adapter"), base)


def test_a_merge_that_would_not_fit_in_memory_is_refused_before_allocating(ckpt_zoo, tmp_path, monkeypatch):
    """A merged tensor needs its float32 product and the merged copy: refused, naming it, where the memory
    available would not hold them (the server is not killed by the out-of-memory killer); the tensors the
    adapter leaves alone are still read."""
    from subnetviz import config
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune
    from subnetviz.errors import ConfigError

    base_sd = read_state_dict(ckpt_zoo.llama)
    folder, _ = _adapter(tmp_path / "lora", base_sd)
    ck = open_finetune(str(folder), open_checkpoint(ckpt_zoo.llama))
    target = f"{TARGETS[0]}.weight"
    need = base_sd[target].numel() * (2 + 4)  # bf16 result + the float32 product
    monkeypatch.setattr(config, "available_memory_bytes", lambda: need)  # less once only part of it is usable
    with pytest.raises(ConfigError, match=f"Merging the adapter into {target} needs about"):
        ck.get(target)
    assert torch.equal(ck.get("model.norm.weight"), base_sd["model.norm.weight"])
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 100 * need)
    assert ck.get(target).shape == base_sd[target].shape


def test_subspaces_of_an_adapter_are_those_of_the_merged_model(ckpt_zoo, tmp_path):
    """The Subspaces tab took an adapter folder for a model and stopped ("an adapter needs its base; give it as
    a finetuned model beside the base"), while the Spectra of Δ beside it merged it. Now both merge: the
    adapter's angles and σ ratios equal those of its float64 merge written out as a full checkpoint."""
    from subnetviz.analysis.subspaces import SubspaceOptions, analyze_subspaces, cached_subspaces

    base_sd = read_state_dict(ckpt_zoo.llama)
    folder, tensors = _adapter(tmp_path / "lora", base_sd)
    merged = write_folder(tmp_path / "merged", {**base_sd, **_reference(base_sd, tensors, ALPHA / R)}, ckpt_zoo.llama)
    options = SubspaceOptions(k=2)
    got = analyze_subspaces(str(ckpt_zoo.llama), [str(folder)], labels=["m"], options=options).to_frame()
    want = analyze_subspaces(str(ckpt_zoo.llama), [str(merged)], labels=["m"], options=options).to_frame()
    cols = ["name", "angle_left_max", "angle_right_max", "sv_ratio_mean", "principal_overlap"]
    pd.testing.assert_frame_equal(got[cols], want[cols])
    moved = got.set_index("name")["angle_left_max"]
    assert (moved[[f"{t}.weight" for t in TARGETS]] > 0).all() and (
        moved.drop([f"{t}.weight" for t in TARGETS]) == 0
    ).all()
    rows, _ = cached_subspaces(
        str(ckpt_zoo.llama), [str(folder)], labels=["m"], options=options, cache_root=tmp_path / "c"
    )
    assert len(rows) == len(got)
