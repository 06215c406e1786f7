"""Pointing subnetviz at the Hugging Face cache (review "hub inputs", defects 1-8) and the fingerprint covering
config.json (review "cache keys", defect 1).

The hub cache is laid out here as huggingface_hub 2.x writes it (nothing is downloaded):
``models--ORG--NAME/blobs/<etag>`` (sha256 for LFS files, git-sha1 for the others), ``snapshots/<commit>/<file>``
relative links to the blobs, ``refs/<branch or tag>`` holding the bare commit, and where ``hf download`` writes one
the tree listing ``trees/<commit>.json`` (the whole repository, even with ``--include``). An interrupted file leaves
only ``blobs/<etag>.incomplete``. The tiny model is Llama-shaped and float32 (a LoRA merge onto it is exact), with
changes planted at known entries: every count checked is known without subnetviz's help.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 8,
    "intermediate_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "vocab_size": 16,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
SHAPES = {
    "model.embed_tokens.weight": (16, 8),
    "model.layers.0.input_layernorm.weight": (8,),
    "model.layers.0.self_attn.q_proj.weight": (8, 8),
    "model.layers.0.self_attn.k_proj.weight": (8, 8),
    "model.layers.0.self_attn.v_proj.weight": (8, 8),
    "model.layers.0.self_attn.o_proj.weight": (8, 8),
    "model.layers.0.post_attention_layernorm.weight": (8,),
    "model.layers.0.mlp.gate_proj.weight": (16, 8),
    "model.layers.0.mlp.up_proj.weight": (16, 8),
    "model.layers.0.mlp.down_proj.weight": (8, 16),
    "model.norm.weight": (8,),
    "lm_head.weight": (16, 8),
}
NUMEL = sum(int(np.prod(s)) for s in SHAPES.values())  # 920
HEAD = 16 * 8
# Planted in the finetune: (tensor, flat entries moved by +0.5); 3 in q_proj, 2 in the head
PLANT = {"model.layers.0.self_attn.q_proj.weight": [0, 9, 63], "lm_head.weight": [5, 77]}
CHANGED = sum(len(v) for v in PLANT.values())  # 5

NEW = "2" * 40  # acme/tiny-base's refs/main
OLD = "1" * 40  # acme/tiny-base's tag v1: the finetune's weights
FT = "3" * 40
PARTIAL = "5" * 40
LORA = "7" * 40
PINNED = "d" * 40


def base_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}


def planted(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {n: w.copy() for n, w in weights.items()}
    for name, flat in PLANT.items():
        out[name].reshape(-1)[flat] += np.float32(0.5)
    return out


def st_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    """A safetensors file written by hand: 8-byte header length, JSON header, the tensors' bytes."""
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        data = np.ascontiguousarray(t).tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + b"".join(chunks)


def model_files(weights: dict[str, np.ndarray], config: dict | None = None) -> dict[str, bytes]:
    return {"config.json": json.dumps(config or CONFIG).encode(), "model.safetensors": st_bytes(weights)}


def sharded_files(weights: dict[str, np.ndarray]) -> dict[str, bytes]:
    names = list(weights)
    parts = (names[:6], names[6:])
    out = {"config.json": json.dumps(CONFIG).encode()}
    weight_map = {}
    for i, part in enumerate(parts):
        fn = f"model-{i + 1:05d}-of-00002.safetensors"
        out[fn] = st_bytes({n: weights[n] for n in part})
        weight_map.update({n: fn for n in part})
    out["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    return out


def lora_files(base_name: str = "acme/tiny-base") -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """A LoRA (r=4, α=8: s = 2) on q_proj and v_proj as PEFT saves it, and the Δ = s·B·A it plants: rows 1-3 of
    column 2 of q_proj, rows 4-7 of column 5 of v_proj (7 entries)."""
    r, alpha, tensors, deltas = 4, 8, {}, {}
    for module, col, rows in (("q_proj", 2, [1, 2, 3]), ("v_proj", 5, [4, 5, 6, 7])):
        a = np.zeros((r, 8), np.float32)
        b = np.zeros((8, r), np.float32)
        a[0, col] = 1.0
        b[rows, 0] = 0.25
        key = f"base_model.model.model.layers.0.self_attn.{module}"
        tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = a, b
        deltas[f"model.layers.0.self_attn.{module}.weight"] = (alpha / r) * (b.astype(np.float64) @ a)
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": base_name,
        "task_type": "CAUSAL_LM",
    }
    return {"adapter_config.json": json.dumps(config).encode(), "adapter_model.safetensors": st_bytes(tensors)}, deltas


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def add_snapshot(
    cache: Path,
    repo_id: str,
    commit: str,
    files: dict[str, bytes],
    refs=("main",),
    skip=(),
    tree_extra: dict[str, int] | None = None,
    tree: bool = False,
) -> Path:
    """``files`` (path in the repository -> bytes) as a snapshot of ``repo_id`` at ``commit``; the files in ``skip``
    only as ``blobs/<etag>.incomplete`` (an interrupted download); ``tree``: the tree listing, which also names
    ``tree_extra`` (files a ``--include`` download left out). Returns the snapshot folder."""
    org, name = repo_id.split("/")
    repo = cache / f"models--{org}--{name}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    listing = {}
    for rel, data in files.items():
        lfs = rel.endswith((".safetensors", ".bin", ".pth"))
        etag = hashlib.sha256(data).hexdigest() if lfs else _git_sha1(data)
        listing[rel] = {"size": len(data), "blob_id": _git_sha1(data)}
        if lfs:
            listing[rel].update(lfs_sha256=etag, lfs_size=len(data))
        if rel in skip:
            (repo / "blobs" / f"{etag}.incomplete").write_bytes(data[: len(data) // 3])
            continue
        blob = repo / "blobs" / etag
        if not blob.exists():
            blob.write_bytes(data)
        dst = snap / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, dst.parent), dst)
    for extra, size in (tree_extra or {}).items():
        listing[extra] = {"size": size, "blob_id": _git_sha1(extra.encode())}
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)  # the bare commit, no newline
    if tree:
        (repo / "trees").mkdir(exist_ok=True)
        (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": listing}))
    return snap


def build_hub(cache: Path) -> dict[str, Path]:
    """The repositories the tests read; name -> snapshot folder."""
    w = base_weights()
    ft = planted(w)
    lora, _ = lora_files()
    return {
        "old": add_snapshot(cache, "acme/tiny-base", OLD, model_files(ft), refs=("v1",)),
        "new": add_snapshot(cache, "acme/tiny-base", NEW, model_files(w)),
        # downloaded with --include "*.json" "*.safetensors": the listing names files never fetched
        "ft": add_snapshot(
            cache,
            "acme/tiny-ft",
            FT,
            sharded_files(ft),
            tree_extra={"README.md": 1200, "original/consolidated.00.pth": 90000},
            tree=True,
        ),
        "other-ft": add_snapshot(cache, "other/tiny-ft", FT, model_files(ft)),
        "partial": add_snapshot(
            cache,
            "acme/tiny-partial",
            PARTIAL,
            sharded_files(ft),
            skip=("model-00002-of-00002.safetensors",),
            tree=True,
        ),
        "lora": add_snapshot(cache, "acme/tiny-lora", LORA, lora),
        "pinned": add_snapshot(cache, "acme/tiny-pinned", PINNED, model_files(ft), refs=()),
    }


def torch_bin(weights: dict[str, np.ndarray]) -> bytes:
    """``weights`` as a ``torch.save`` state dict (a ``pytorch_model.bin``)."""
    import torch

    buf = io.BytesIO()
    torch.save({n: torch.from_numpy(w.copy()) for n, w in weights.items()}, buf)
    return buf.getvalue()


BAD = "9" * 40


# ---------------------------------------------------------------- fixtures and helpers
HF_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The hub cache of :func:`build_hub` as the one huggingface_hub uses (``HF_HUB_CACHE``), the roots their
    default (the home, the hub cache, the working folder: ``tmp_path``); (cache, name -> snapshot folder)."""
    cache = tmp_path / "hub"
    snaps = build_hub(cache)
    for var in (*HF_VARS, "SUBNETVIZ_ROOTS", "SUBNETVIZ_ENFORCE_ROOTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    return cache, snaps


def counts(base, ft, **kwargs) -> tuple[int, int]:
    """(changed, compared) entries of ``ft`` against ``base``, from the update analysis."""
    from subnetviz.analysis.updates import analyze_updates

    row = analyze_updates(base, [ft], device="cpu", **kwargs).summary().iloc[0]
    return int(row.changed), int(row.numel)


def folder(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


# ---------------------------------------------------------------- 1. snapshots missing files the hub listed
def test_a_snapshot_missing_files_the_hub_listed_is_read_when_its_weights_are_there(hub):
    """``hf download --include "*.json" "*.safetensors"`` leaves files of the tree listing unfetched: huggingface_hub
    calls the snapshot incomplete, and subnetviz said the model was "not in the local Hugging Face cache"."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache, _ = hub
    with pytest.raises(LocalEntryNotFoundError, match="incomplete"):  # the premise: the listing names README.md
        snapshot_download("acme/tiny-ft", local_files_only=True, cache_dir=str(cache))
    assert counts("acme/tiny-base", "acme/tiny-ft") == (CHANGED, NUMEL)


def test_a_snapshot_lacking_a_weights_shard_is_refused_naming_it(hub):
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.errors import CheckpointError, NotCachedError

    with pytest.raises(CheckpointError) as exc:
        open_checkpoint("acme/tiny-partial")
    assert not isinstance(exc.value, NotCachedError), str(exc.value)
    assert "shard(s) listed but missing: model-00002-of-00002.safetensors" in str(exc.value)
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------- 2. a LoRA adapter by its hub id
def test_a_lora_adapter_given_by_its_hub_id_is_merged_as_its_folder_is(hub, tmp_path):
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.adapters import open_finetune
    from subnetviz.checkpoints.models import model_folder
    from subnetviz.cli import main
    from subnetviz.errors import CheckpointError
    from subnetviz.uilogic import checkpoint_info

    _, snaps = hub
    _, deltas = lora_files()
    planted_entries = sum(int(np.count_nonzero(d)) for d in deltas.values())  # 7
    for ft in ("acme/tiny-lora", str(snaps["lora"])):
        assert counts("acme/tiny-base", ft) == (planted_entries, NUMEL), ft
    merged = open_finetune("acme/tiny-lora", open_checkpoint("acme/tiny-base"))
    w = base_weights()
    for name, d in deltas.items():  # W + s·B·A, in float64 and rounded once
        np.testing.assert_array_equal(merged.get(name).numpy(), (w[name].astype(np.float64) + d).astype(np.float32))
    # as a base, or to run (Behaviour): refused by what it is, as its folder is
    for reader in (open_checkpoint, model_folder):
        with pytest.raises(CheckpointError, match=r"^acme/tiny-lora: a LoRA/PEFT adapter"):
            reader("acme/tiny-lora")
    info = checkpoint_info("acme/tiny-lora")  # the Workspace's table: an adapter, not a model of lora_A/B tensors
    assert info["architecture"] == "LORA adapter (r=4)" and info["params"] == 2 * (4 * 8 + 8 * 4)
    out = tmp_path / "out"
    argv = ["analyze", "acme/tiny-base", "acme/tiny-lora", "--out", str(out), "--no-cache", "--device", "cpu"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"]["acme/tiny-lora"]["changed"] == planted_entries


# ---------------------------------------------------------------- 3. a typed path is opened as given
def test_the_app_opens_a_snapshot_file_as_given_and_checks_where_it_leads(hub, tmp_path, monkeypatch):
    from subnetviz.errors import PathNotAllowedError
    from subnetviz.selection import resolve_choice
    from subnetviz.uilogic import workspace_of

    cache, snaps = hub
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(cache))
    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    file, index = snaps["new"] / "model.safetensors", snaps["ft"] / "model.safetensors.index.json"
    assert resolve_choice(str(file), {}) == str(file)  # not blobs/<sha256>, which has no suffix
    ws, refused = workspace_of(str(file), [str(index)], [], "stored", "cpu", {}, {}, None)
    assert refused is None and ws.base == str(file) and ws.paths == [str(index)]
    assert counts(ws.base, ws.paths[0], labels=ws.labels) == (CHANGED, NUMEL)
    # a link inside the roots to weights outside them is refused as before
    outside = folder(tmp_path / "outside", model_files(base_weights()))
    link = cache / "linked.safetensors"
    link.symlink_to(outside / "model.safetensors")
    with pytest.raises(PathNotAllowedError, match="outside the folders"):
        resolve_choice(str(link), {})


# ---------------------------------------------------------------- 4. a pytorch_model.bin with a .safetensors beside
def test_a_bin_model_beside_another_safetensors_is_compared_as_transformers_loads_it(tmp_path):
    """The RL-subnetwork code keeps a 0/1 mask, of the model's names and shapes, beside its pytorch_model.bin: it was
    compared as the model (every entry "changed")."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.models import checked_weights

    w = base_weights()
    base = folder(tmp_path / "base", model_files(w))
    ft = folder(
        tmp_path / "ft", {"config.json": json.dumps(CONFIG).encode(), "pytorch_model.bin": torch_bin(planted(w))}
    )
    (ft / "subnetwork_mask.safetensors").write_bytes(st_bytes({n: np.ones(s, np.float32) for n, s in SHAPES.items()}))
    assert counts(base, ft) == (CHANGED, NUMEL)
    ck = open_checkpoint(ft)
    assert [f.name for f in ck.files] == ["pytorch_model.bin"]
    assert [n for n in ck.notes if "subnetwork_mask.safetensors" in n and "not read" in n], ck.notes
    assert [f.name for f in checked_weights(str(ft), ft)] == ["pytorch_model.bin"]  # Behaviour runs the same file
    (ft / "subnetwork_mask.safetensors").write_bytes(st_bytes({"x": np.ones(3, np.float32)}))  # other shapes
    assert counts(base, ft) == (CHANGED, NUMEL)


# ---------------------------------------------------------------- 5. the hub cache huggingface_hub uses
@pytest.mark.parametrize(
    "env",
    [
        {},
        {"XDG_CACHE_HOME": "{t}/xdg"},
        {"HUGGINGFACE_HUB_CACHE": "{t}/legacy", "XDG_CACHE_HOME": "{t}/xdg"},
        {"HF_HOME": "$SCRATCH_TEST/hf", "SCRATCH_TEST": "{t}/scratch"},
        {"HF_HOME": "{t}/home", "XDG_CACHE_HOME": "{t}/xdg"},
        {"HF_HUB_CACHE": "{t}/new", "HUGGINGFACE_HUB_CACHE": "{t}/legacy", "HF_HOME": "{t}/home"},
    ],
)
def test_the_hub_cache_is_the_one_huggingface_hub_uses(env, tmp_path, monkeypatch):
    """huggingface_hub's own constants, in a fresh process with the same environment, are the reference."""
    from subnetviz.config import allowed_roots, hf_cache_dir

    for var in (*HF_VARS, "SUBNETVIZ_ROOTS"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v.format(t=tmp_path))
    code = "from huggingface_hub import constants; print(constants.HF_HUB_CACHE)"
    ref = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=dict(os.environ))
    assert hf_cache_dir() == Path(ref.stdout.strip())
    assert Path(ref.stdout.strip()).resolve() in allowed_roots()  # the default read root too


def test_a_model_under_xdg_cache_home_is_found(tmp_path, monkeypatch):
    from subnetviz.checkpoints import open_checkpoint

    build_hub(tmp_path / "xdg" / "huggingface" / "hub")
    for var in HF_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert (
        open_checkpoint("acme/tiny-base").root
        == tmp_path / "xdg/huggingface/hub/models--acme--tiny-base/snapshots" / NEW
    )


# ---------------------------------------------------------------- 6. labels
def test_hub_inputs_are_labelled_by_their_ids_alike_in_the_app_and_the_library(hub, tmp_path):
    from subnetviz.analysis.update_pass import _label_for
    from subnetviz.uilogic import workspace_of

    _, snaps = hub
    w = base_weights()
    dpo = [folder(tmp_path / d / "dpo", model_files(w)) / "model.safetensors" for d in ("a", "b")]
    specs = ["acme/tiny-ft", "other/tiny-ft", str(snaps["old"]), f"{snaps['new']}/", str(dpo[0]), str(dpo[1])]
    expected = ["acme/tiny-ft", "other/tiny-ft", "acme/tiny-base@1111111", "acme/tiny-base", "dpo", "dpo-2"]
    used: set[str] = set()
    assert [_label_for(s, used) for s in specs] == expected
    ws, refused = workspace_of("acme/tiny-pinned@ddddddd", specs, [], "stored", "cpu", {}, {}, None)
    assert refused is None and ws.labels == expected and ws.base_label == "acme/tiny-pinned@ddddddd"


# ---------------------------------------------------------------- 7. where a hub input was read from
def test_messages_name_the_snapshot_file_and_records_name_the_commit(hub, tmp_path, monkeypatch):
    from subnetviz.analysis.updates import cached_analysis, mask_path
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.config import display_path, redact
    from subnetviz.errors import CheckpointError
    from subnetviz.selection import mask_info
    from subnetviz.uilogic import checkpoint_where

    cache, snaps = hub
    truncated = model_files(planted(base_weights()))
    truncated["model.safetensors"] = truncated["model.safetensors"][:-100]
    bad = add_snapshot(cache, "acme/tiny-bad", BAD, truncated)
    with pytest.raises(CheckpointError) as exc:
        counts("acme/tiny-base", "acme/tiny-bad")
    shown = redact(str(exc.value))
    assert shown.startswith(f"hub/models--acme--tiny-bad/snapshots/{BAD}/model.safetensors: ") and "blobs" not in shown
    with pytest.raises(CheckpointError) as exc:
        open_checkpoint("acme/tiny-partial")
    assert redact(str(exc.value)).startswith(
        f"hub/models--acme--tiny-partial/snapshots/{PARTIAL}/model.safetensors.index.json: "
    )
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path / "elsewhere"))  # the hub cache outside every root
    assert display_path(bad / "model.safetensors") == "acme/tiny-bad@9999999/model.safetensors (hub cache)"
    monkeypatch.delenv("SUBNETVIZ_ROOTS")
    assert checkpoint_where("acme/tiny-base") == "acme/tiny-base @ 2222222 (hub cache)"  # not ./acme/tiny-base
    a = cached_analysis("acme/tiny-base", ["acme/tiny-ft"], device="cpu", cache_root=tmp_path / "cache")
    summary = json.loads((a.source_dir / "summary.json").read_text())
    assert summary["base"] == f"acme/tiny-base@{NEW}"
    assert f"acme/tiny-ft: read from the local Hugging Face cache at commit {FT}." in summary["notes"]
    mask = mask_path(a.source_dir, "acme/tiny-ft")
    assert mask_info(str(mask), "stamp")["base"] == f"acme/tiny-base@{NEW}"


# ---------------------------------------------------------------- 8. revisions and "not cached"
@pytest.mark.parametrize(
    "base, changed",
    [
        ("acme/tiny-base", CHANGED),
        ("acme/tiny-base@main", CHANGED),
        ("acme/tiny-base@v1", 0),  # the tag names the finetune's weights
        (f"acme/tiny-base@{OLD}", 0),
        ("acme/tiny-base@1111111", 0),
        ("acme/tiny-pinned@ddddddd", 0),
    ],
)
def test_a_revision_is_resolved_through_the_cache(hub, base, changed):
    assert counts(base, "other/tiny-ft") == (changed, NUMEL)


@pytest.mark.parametrize(
    "spec, hint",
    [
        ("acme/tiny-pinned", "it holds no snapshot for main, but these: acme/tiny-pinned@ddddddd"),
        ("acme/tiny-base@v2", "it holds no snapshot for v2, but these: acme/tiny-base@v1, acme/tiny-base@main"),
        ("Acme/Tiny-Base", "the cache holds acme/tiny-base (hub ids are case-sensitive"),
        ("acme/nothing", "acme/nothing: no folder of that name, and not in the local Hugging Face cache"),
    ],
)
def test_an_id_not_cached_says_what_is_and_the_command_that_fetches(hub, spec, hint):
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.errors import NotCachedError

    with pytest.raises(NotCachedError) as exc:
        open_checkpoint(spec)
    text = str(exc.value)
    assert hint in text and "`hf download " in text and "huggingface-cli" not in text and "\n" not in text


# ---------------------------------------------------------------- cache keys 1: config.json in the fingerprint
def head_copies(weights: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """(base, finetune) weights of a tied model a conversion saved untied: the head stored as a copy of the input
    embedding in both, the finetune's planted head changes made to its embedding too (as training a tied model
    does). Untied, the head's changes count twice (CHANGED + 2 of NUMEL); tied, the equal copy is the embedding
    and counted once (CHANGED of NUMEL - HEAD)."""
    base = {**weights, "model.embed_tokens.weight": weights["lm_head.weight"].copy()}
    ft = planted(base)
    ft["model.embed_tokens.weight"] = ft["lm_head.weight"].copy()
    return base, ft


def test_a_config_edit_gives_fresh_numbers(tmp_path):
    """``tie_word_embeddings`` set after a conversion wrote it wrong (the head stored as an equal copy of the
    embedding): the copy is then the embedding's and counted once. The cache served the analysis from before the
    edit."""
    from subnetviz.analysis.updates import cached_analysis
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.sources import fingerprint

    wb, wf = head_copies(base_weights())
    base = folder(tmp_path / "base", model_files(wb))
    ft = folder(tmp_path / "ft", model_files(wf))

    def run():
        a = cached_analysis(str(base), [str(ft)], device="cpu", cache_root=tmp_path / "cache")
        row = a.summary().iloc[0]
        return a.cached, int(row.changed), int(row.numel)

    assert run() == (False, CHANGED + 2, NUMEL)
    assert run() == (True, CHANGED + 2, NUMEL)
    before = open_checkpoint(ft).fingerprint
    for f in (base, ft):  # the same values written again (another indent): nothing to compute
        (f / "config.json").write_text(json.dumps(CONFIG, indent=4))
    assert open_checkpoint(ft).fingerprint == before and run() == (True, CHANGED + 2, NUMEL)
    for f in (base, ft):
        (f / "config.json").write_text(json.dumps({**CONFIG, "tie_word_embeddings": True}))
    assert open_checkpoint(ft).fingerprint != before
    assert fingerprint(ft) == open_checkpoint(ft).fingerprint  # the torch-free key agrees
    assert run() == (False, CHANGED, NUMEL - HEAD)


def test_a_mistyped_relative_folder_is_said_to_be_no_folder_too(tmp_path, monkeypatch):
    """A relative folder that is not there (``ckpts/base``, the README's own form) reads as a hub id; the message
    said only that it was not in the Hugging Face cache and offered `hf download ckpts/base`."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.errors import NotCachedError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(NotCachedError, match=r"^ckpts/base: no folder of that name, and not in the local Hugging"):
        open_checkpoint("ckpts/base")
