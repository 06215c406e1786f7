"""Bad checkpoint inputs, sixth pass (review inputs6): each finding's fix, proved on fixtures built here.

1. A ``config.json`` that is a link to nothing (a hub snapshot whose blob is gone, a local folder's broken link) was
   read as no config at all: a tied head counted untied, the numbers changed, nothing said; Behaviour called the
   cached hub id "not a cached hub id". Now one line naming the file and the missing link, everywhere.
2. Behaviour and Bigram built the model config.json describes, never compared with the weights: 10^30 layers built
   for good, 10^9 KV heads allocated 9 TB, torch's RuntimeErrors were tracebacks. Now the sizes are compared with
   the headers before anything is built, in one line naming the key and both numbers, and real checkpoints (tied,
   MoE, multimodal, quantized, GPT-2/NeoX) still load.
3. A ``.bin`` whose pickle asks for ``os.system`` was refused in torch's words cut at 200 characters, ending with
   "Re-running `torch.load` with `weights_only` set to `False`"; now the global is named, "nothing in it was run".
4. A shard index naming one shard ``./shard`` beside ``shard`` read that file twice, and noted its tensors as
   "stored in more than one file" naming the same file twice.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from subnetviz.errors import CheckpointError
from tests.ckpt_fixtures import Boom, fp8_folder, gpt_oss_model, gpt_oss_mxfp4, read_state_dict
from tests.integration.test_hub_ids_behaviour_series import add_snapshot, files_of, without_roots
from tests.models import make_gpt2, make_llama, make_neox, make_tiny_llama, make_tiny_moe

pytestmark = pytest.mark.timeout(600)

COMMIT = "4" * 40


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# --- 1. a config.json link to nothing -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tied(tmp_path_factory) -> Path:
    """A tiny Llama whose config ties its head and which stores the head beside the embedding, equal to it (as the
    review's acme/tiedft): without its config the head is counted as a weight of its own."""
    root = tmp_path_factory.mktemp("inputs6-tied")
    src = make_tiny_llama(root / "src")
    sd = read_state_dict(src)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    from safetensors.torch import save_file

    save_file(sd, str(src / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    return src


def _dangling_hub(tied: Path, cache: Path, repo_id: str) -> Path:
    """``tied`` as the hub caches ``repo_id``, the blob behind its config.json link deleted."""
    snap = add_snapshot(cache, repo_id, COMMIT, files_of(tied))
    os.unlink(os.path.realpath(snap / "config.json"))
    assert os.path.islink(snap / "config.json") and not (snap / "config.json").exists()
    return snap


def test_a_hub_snapshot_whose_config_blob_is_gone_is_refused_not_read_as_configless(tied, tmp_path, monkeypatch):
    """The weight pages (open_checkpoint) and every model reader (model_folder: Behaviour's and Bigram's first step)
    say the config.json link is to a missing file, in one line; Behaviour no longer says "nor a cached hub id". The
    same blobs with their config read the tied head once."""
    from subnetviz.checkpoints.models import load_causal_lm, load_tokenizer, model_folder
    from subnetviz.checkpoints.sources import open_checkpoint

    cache = tmp_path / "hub"
    without_roots(monkeypatch, cache)
    add_snapshot(cache, "acme/tied", COMMIT, files_of(tied))
    _dangling_hub(tied, cache, "acme/tied-dangcfg")
    assert open_checkpoint("acme/tied").config["tie_word_embeddings"] is True  # (the same blobs, config and all)
    for call in (
        lambda: open_checkpoint("acme/tied-dangcfg"),
        lambda: model_folder("acme/tied-dangcfg"),
        lambda: load_tokenizer("acme/tied-dangcfg"),
        lambda: load_causal_lm("acme/tied-dangcfg"),
    ):
        with pytest.raises(CheckpointError) as caught:
            call()
        line = _one_line(caught)
        assert "config.json" in line and "a link to a missing file" in line, line
        assert "Hugging Face cache" in line and "download the model again" in line, line
        assert "cached hub id" not in line, line


def test_a_local_folder_whose_config_json_is_a_broken_link_is_refused(tied, tmp_path):
    """A folder (not the hub cache) whose config.json links to a file since removed: refused on the weight pages and
    by the model readers alike, naming config.json; "not a model folder" was the model readers' word."""
    from subnetviz.checkpoints.models import meta_model, model_folder
    from subnetviz.checkpoints.sources import open_checkpoint

    folder = tmp_path / "cfg_dangling"
    shutil.copytree(tied, folder)
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to(tmp_path / "gone.json")
    for call in (lambda: open_checkpoint(folder), lambda: model_folder(folder), lambda: meta_model(folder)):
        with pytest.raises(CheckpointError) as caught:
            call()
        line = _one_line(caught)
        assert "config.json" in line and "a link to a missing file" in line, line
        assert "not a model folder" not in line, line


def test_the_cli_analyze_refuses_a_dangling_config_in_one_line(tied, tmp_path, monkeypatch, capsys):
    from subnetviz.__main__ import main

    cache = tmp_path / "hub"
    without_roots(monkeypatch, cache)
    add_snapshot(cache, "acme/tied", COMMIT, files_of(tied))
    _dangling_hub(tied, cache, "acme/tied-dangcfg")
    out = tmp_path / "out"
    rc = main(["analyze", "acme/tied", "acme/tied-dangcfg", "--out", str(out), "--no-spectra", "--subspaces", "0"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert rc == 2 and len(err) == 1 and "a link to a missing file" in err[0], err
    assert not (out / "summary.json").exists()


# --- 2. config.json sizes compared with the weights before anything is built --------------------------------------
@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    """A tiny Llama (32 wide, 2 layers, 2 heads of 16, vocabulary of the char tokenizer) with its tokenizer."""
    return make_tiny_llama(tmp_path_factory.mktemp("inputs6-sizes") / "good")


def _edited(good: Path, folder: Path, **edit) -> Path:
    shutil.copytree(good, folder)
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    return folder


NAMED = {  # config edit -> the key and numbers the one line names
    "layers": ({"num_hidden_layers": 10**30}, "num_hidden_layers is 1e+30, but they hold 2 layers"),
    "layers3000": ({"num_hidden_layers": 3000}, "num_hidden_layers is 3,000, but they hold 2 layers"),
    "vocab": ({"vocab_size": 10**18}, "vocab_size × hidden_size is 1e+18 × 32, but its embedding model.embed_tokens"),
    "hidden": ({"hidden_size": 10**12}, "vocab_size × hidden_size is 15 × 1,000,000,000,000, but its embedding"),
    "kv": (
        {"num_key_value_heads": 10**9},
        "num_key_value_heads × head_dim is 1,000,000,000 × 16 rows, but model.layers.",
    ),
}


@pytest.mark.parametrize("case", sorted(NAMED))
def test_a_size_the_weights_do_not_hold_is_refused_by_name_before_anything_is_built(llama, tmp_path, case):
    """The readers of the config say, in one line, the key, its value and what the weights hold: a layer count as
    soon as the config is read (transformers' config lists one entry per layer for some families), a width before
    the model is built (the meta-device skeleton, the model's load). Before: Behaviour's tracebacks (Storage size calculation
    overflowed; ignore_mismatched_sizes), 26 s and 2.5 GB for 3,000 layers, and 10^30 layers built for good."""
    from subnetviz.checkpoints.models import load_causal_lm, meta_model, model_config

    edit, said = NAMED[case]
    bad = _edited(llama, tmp_path / case, **edit)
    # (a count: before transformers reads the config; a width: before the model is built)
    for call in (
        (model_config, meta_model, load_causal_lm) if case.startswith("layers") else (meta_model, load_causal_lm)
    ):
        with pytest.raises(CheckpointError) as caught:
            call(str(bad))
        line = _one_line(caught)
        assert line.startswith(f"{bad}: config.json does not describe its weights: "), line
        assert said in line, line


def test_ten_to_the_thirty_layers_are_refused_at_once_with_no_memory_taken(llama, tmp_path):
    """Well under a second and no memory growth for each reader (transformers imported and warmed first)."""
    from subnetviz.checkpoints.models import load_causal_lm, meta_model, model_config
    from tests.memory_probe import peak_during

    meta_model(str(llama))  # (imports, caches)
    bad = _edited(llama, tmp_path / "layers", num_hidden_layers=10**30)
    for call in (model_config, meta_model, load_causal_lm):

        def refused(call=call):
            t0 = time.perf_counter()
            with pytest.raises(CheckpointError, match="num_hidden_layers is 1e"):
                call(str(bad))
            return time.perf_counter() - t0

        took, before, peak = peak_during(refused)
        assert took < 1.0, (call.__name__, took)  # (milliseconds alone; a loaded CI box)
        assert peak - before < 32 * 2**20, (call.__name__, peak - before)


RUNTIME = {  # edits no key check names: the model's count, torch's error, the first stored shape that differs
    "head_dim": ({"head_dim": -5}, "RuntimeError: Trying to create tensor with negative dimension"),
    "intermediate": ({"intermediate_size": 10**7}, "the model it describes has 1,920,"),
}


@pytest.mark.parametrize("case", sorted(RUNTIME))
def test_a_model_the_config_describes_but_torch_refuses_or_too_large_is_one_line(llama, tmp_path, case):
    from subnetviz.checkpoints.models import load_causal_lm, meta_model

    edit, said = RUNTIME[case]
    bad = _edited(llama, tmp_path / case, **edit)
    for call in (meta_model, load_causal_lm):
        with pytest.raises(CheckpointError) as caught:
            call(str(bad))
        line = _one_line(caught)
        assert line.startswith(f"{bad}: config.json does not describe its weights: ") and said in line, line


def test_a_shape_the_weights_store_otherwise_names_the_parameter_not_transformers_report(llama, tmp_path):
    """intermediate_size 80 for 64 stored: within the count's bound, so transformers loads and refuses it
    (RuntimeError "… look at the above report!", a traceback before); the line names the first parameter whose
    stored shape differs."""
    from subnetviz.checkpoints.models import load_causal_lm

    bad = _edited(llama, tmp_path / "inter80", intermediate_size=80)
    with pytest.raises(CheckpointError) as caught:
        load_causal_lm(str(bad))
    line = _one_line(caught)
    assert line.startswith(f"{bad}: config.json does not describe its weights: model.layers.0.mlp."), line
    assert "80 × 32 as config.json describes it, 64 × 32 in its weights" in line, line


def test_a_count_no_key_check_knows_is_stopped_while_building(llama, tmp_path, monkeypatch):
    """A module count under a key the checks do not list (a vision tower's depth, a list of experts) is built on the
    meta device only as far as the weights' tensors allow: with the layer keys unchecked, 10^30 layers stop at
    once."""
    from subnetviz.checkpoints import config_bounds, models

    monkeypatch.setattr(config_bounds, "LAYER_KEYS", ())
    bad = _edited(llama, tmp_path / "layers", num_hidden_layers=10**30)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="registered more than") as caught:
        models.meta_model(str(bad))
    assert time.perf_counter() - t0 < 10
    assert _one_line(caught).startswith(f"{bad}: config.json does not describe its weights: building the model")


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints whose config and weights agree but are not stored one tensor per parameter: GPT-2 (tied, Conv1D,
    fused QKV), GPT-NeoX (fused interleaved QKV), a sharded Llama with GQA, a tied Llama (head not stored), a
    Qwen3-MoE (experts), a Mistral-3 (text_config beside a vision tower), a gpt-oss with MXFP4 experts and an FP8
    Llama with block scales (quantization_config)."""
    from tests.integration.test_followups_review import _mistral3

    root = tmp_path_factory.mktemp("inputs6-real")
    cls, cfg = gpt_oss_model()
    torch.manual_seed(0)
    cls(cfg).to(torch.bfloat16).save_pretrained(root / "gpt_oss_bf16")
    return {
        "gpt2": make_gpt2(root / "gpt2"),
        "neox": make_neox(root / "neox"),
        "llama_sharded": make_llama(root / "llama", sharded=True),
        "llama_tied": make_llama(root / "tied", tie=True),
        "moe": make_tiny_moe(root / "moe"),
        "mistral3": _mistral3(root / "mistral3"),
        "mxfp4": gpt_oss_mxfp4(root / "mxfp4", root / "gpt_oss_bf16"),
        "fp8": fp8_folder(make_llama(root / "llama_bf16"), root / "fp8"),
    }


@pytest.mark.parametrize("kind", ["gpt2", "neox", "llama_sharded", "llama_tied", "moe", "mistral3", "mxfp4", "fp8"])
def test_real_checkpoints_still_build_and_load(real, kind):
    """Nothing that agrees with its weights is refused: the meta-device skeleton of each, and the load of those
    run in float32 here (the quantized ones are compared on the weight pages; their skeleton is built)."""
    from subnetviz.checkpoints.models import load_causal_lm, meta_model, model_config

    folder = str(real[kind])
    assert model_config(folder) is not None
    skeleton = meta_model(folder)
    assert next(skeleton.parameters()).device.type == "meta"
    if kind not in ("mxfp4", "fp8"):
        model = load_causal_lm(folder)
        assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in skeleton.parameters())


# --- 3. a .bin whose pickle asks for os.system --------------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "pre-1.6"])
def test_a_bin_asking_to_run_code_names_what_it_asks_for_and_that_nothing_ran(tmp_path, legacy):
    from subnetviz.checkpoints.sources import open_checkpoint

    sentinel = tmp_path / "PWNED"
    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save(
        {"w": torch.zeros(2), "x": Boom(sentinel)},
        folder / "pytorch_model.bin",
        _use_new_zipfile_serialization=not legacy,
    )
    with pytest.raises(CheckpointError) as caught:
        open_checkpoint(folder)
    line = _one_line(caught)
    assert line.startswith(f"{folder / 'pytorch_model.bin'}: its pickle asks for "), line
    assert f"asks for {os.system.__module__}.system" in line, line  # (posix.system on Linux)
    assert "Refused; nothing in it was run" in line and "Re-running" not in line, line
    assert not sentinel.exists()


# --- 4. a shard named "./shard" beside "shard" ----------------------------------------------------------------------
def test_a_shard_entry_written_dot_slash_beside_its_plain_name_is_one_file_read_once(tmp_path):
    """One of a shard's entries written ``./model-….safetensors``: the shard is listed (and its header read) once,
    and no "stored in more than one file" note names it twice; the tensors are the unsharded folder's."""
    from subnetviz.checkpoints.sources import open_checkpoint

    folder = make_llama(tmp_path / "sharded", sharded=True)
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    shards = sorted(set(data["weight_map"].values()))
    name = next(n for n, f in sorted(data["weight_map"].items()) if f == shards[1])
    data["weight_map"][name] = f"./{shards[1]}"
    index.write_text(json.dumps(data))
    ck = open_checkpoint(folder)
    assert [f.name for f in ck.files] == shards
    assert not [n for n in ck.notes if "more than one file" in n], ck.notes
    reference = read_state_dict(folder)
    assert sorted(ck.names) == sorted(reference)
    assert all(torch.equal(ck.get(n), reference[n]) for n in reference)
